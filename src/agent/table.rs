//! The session table on disk, so that an agent restarted after a crash or an
//! upgrade finds its browsers again.
//!
//! The file is replaced atomically (write a temporary file beside it, flush
//! it to disk, rename over the old one), so a crash mid-write leaves the old
//! table or the new one, never half of either.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::process::ProcessIdentity;
use super::slots::Port;
use crate::protocol::{CallbackUrl, ReplyQueueUrl, RequestId, SessionId, TerminationReason};

/// Format version of the file; a newer agent reads older versions.
const TABLE_VERSION: u32 = 1;

/// One session as persisted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SessionRecord {
    /// Session id.
    pub id: SessionId,
    /// Request id of the create, echoed in replies.
    pub request_id: Option<RequestId>,
    /// The browser's DevTools port.
    pub port: u16,
    /// SHA-256 (hex) of the session's gateway token. The token itself is
    /// never written to disk: a browser can read local files, and the table
    /// would hand every session's token to any of them.
    pub token_sha256: String,
    /// The browser process, guarded by its start time.
    pub process: ProcessIdentity,
    /// The browser's profile directory.
    pub profile_dir: PathBuf,
    /// Whether the profile is deleted at the session's end.
    pub profile_temporary: bool,
    /// Path of the browser target (`/devtools/browser/<id>`).
    pub browser_path: String,
    /// When the browser started.
    pub started: SystemTime,
    /// End of the TTL (cut to the fleet maximum).
    pub expires: SystemTime,
    /// Whether the requested TTL was cut.
    pub ttl_was_cut: bool,
    /// Ended as never used if still unused then.
    pub use_by: SystemTime,
    /// Whether a client has used it.
    pub used: bool,
    /// The start URL the request asked for.
    pub start_url: Option<String>,
    /// Reply queue of the requester.
    pub reply_to: Option<ReplyQueueUrl>,
    /// Callback of the requester.
    pub callback_url: Option<CallbackUrl>,
    /// Labels from the request, echoed in replies.
    pub labels: BTreeMap<String, String>,
    /// The session's authenticated proxy, chained through a listener of the
    /// agent's (`agent::egress`), its credentials sealed with the fleet key:
    /// after a restart the agent listens on the same port again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chained_proxy: Option<ChainedProxy>,
    /// Why it ends, once its end began: an agent killed while ending it
    /// leaves the reason to its successor, which finishes the end with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ending: Option<TerminationReason>,
    /// Its requester has not been sent `session.ready` yet (cleared just
    /// before the send). A successor takes such a browser back all the same
    /// (its create was not deleted and comes back, to be answered then), but
    /// does not count it as served, and ends it unannounced when it is
    /// gone. (Absent, false, in tables written before issue #28, whose
    /// sessions count as answered once they have a browser path.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unanswered: bool,
    /// Digests of tokens given out after a restart, when a create of the
    /// session came again and the first token was gone with the agent that
    /// made it (only digests are kept); each opens the session as the first
    /// one does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_token_sha256: Vec<String>,
}

/// Where a session's chained proxy listens and what it chains to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainedProxy {
    /// The listener's port on 127.0.0.1, which the browser was given.
    pub port: u16,
    /// The upstream proxy (`http://host:port`).
    pub server: String,
    /// Its user name and password, sealed with the fleet key for this
    /// session ([`crate::protocol::sealing`]): the table never holds them in
    /// clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_credentials: Option<String>,
    /// Hosts reached directly, in Chromium's syntax.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bypass: Option<String>,
}

impl ChainedProxy {
    /// The upstream proxy, its credentials still sealed.
    pub fn proxy(&self) -> crate::protocol::ProxyConfig {
        crate::protocol::ProxyConfig {
            server: self.server.clone(),
            bypass: self.bypass.clone(),
            username: None,
            password: None,
            sealed_credentials: self.sealed_credentials.clone(),
        }
    }
}

impl SessionRecord {
    /// The port as its type.
    pub fn port(&self) -> Port {
        Port(self.port)
    }
}

/// The hex SHA-256 of a token, as the table keeps it.
pub fn token_digest(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// A session served here (it became active) that has ended, and when: a
/// create of it delivered again is dropped, by a restarted agent too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServedSession {
    pub id: SessionId,
    /// Unix seconds.
    pub ended_at: i64,
}

/// What the table file holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SavedTable {
    /// The sessions hosted.
    pub sessions: Vec<SessionRecord>,
    /// Sessions served and ended, newest first.
    pub served: Vec<ServedSession>,
}

#[derive(Serialize, Deserialize)]
struct TableFile {
    version: u32,
    sessions: Vec<SessionRecord>,
    /// Absent in tables written before issue #28 (an agent that predates it
    /// ignores the field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    served: Vec<ServedSession>,
}

/// Why the table could not be read or written.
#[derive(Debug, Error)]
pub enum TableError {
    /// File system trouble.
    #[error("session table {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not a session table this agent understands.
    #[error("session table {path} is unreadable: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
}

/// The table's file.
#[derive(Clone, Debug)]
pub struct TableFileStore {
    path: PathBuf,
}

impl TableFileStore {
    /// The table at `state_dir/sessions.json`.
    pub fn new(state_dir: &Path) -> Self {
        TableFileStore {
            path: state_dir.join("sessions.json"),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the table; an absent file is an empty table.
    pub fn load(&self) -> Result<SavedTable, TableError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(SavedTable::default());
            }
            Err(source) => {
                return Err(TableError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let file: TableFile = serde_json::from_slice(&bytes).map_err(|e| TableError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        if file.version > TABLE_VERSION {
            return Err(TableError::Corrupt {
                path: self.path.clone(),
                message: format!("version {} is newer than this agent", file.version),
            });
        }
        Ok(SavedTable {
            sessions: file.sessions,
            served: file.served,
        })
    }

    /// Replaces the table atomically.
    pub fn save(&self, table: &SavedTable) -> Result<(), TableError> {
        let io = |source| TableError::Io {
            path: self.path.clone(),
            source,
        };
        let file = TableFile {
            version: TABLE_VERSION,
            sessions: table.sessions.clone(),
            served: table.served.clone(),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| TableError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let temporary = self.path.with_extension("json.tmp");
        let mut out = std::fs::File::create(&temporary).map_err(io)?;
        out.write_all(&json).map_err(io)?;
        out.sync_all().map_err(io)?;
        drop(out);
        std::fs::rename(&temporary, &self.path).map_err(io)?;
        Ok(())
    }
}
