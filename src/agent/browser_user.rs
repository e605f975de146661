//! The OS user browsers run as, when it is not the agent's own.
//!
//! On a Linux node the agent runs as `browserfleet` and starts every browser
//! as a second unprivileged user (`browserfleet-browser`, created by the
//! node's user data and named with `--browser-user`). Two users, not one:
//! * the node's egress rule (nftables, by socket owner) refuses the
//!   browsers' user the metadata service, which the agent itself needs for
//!   the node role's credentials;
//! * the agent's state directory (session table, fleet secrets in memory
//!   only, but token digests and records on disk) is the agent user's and
//!   private; a browser reaches only its own profile, so a way to read files
//!   the CDP filter does not know of finds nothing of the agent's.
//!
//! A browser that is not root runs with Chromium's sandbox; no
//! `--no-sandbox` is needed. The agent holds the capabilities to start and
//! signal processes of that user and to hand it a profile (`CAP_SETUID`,
//! `CAP_SETGID`, `CAP_KILL`, `CAP_CHOWN`, `CAP_DAC_OVERRIDE`, `CAP_FOWNER`:
//! the node's systemd unit grants them as ambient capabilities); the browser
//! is started with none (`docs/nodes.md`).

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Owner and group a process runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunAs {
    /// User id.
    pub uid: u32,
    /// Primary group id; supplementary groups are dropped.
    pub gid: u32,
}

/// The browsers' user, resolved once at the agent's start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrowserUser {
    /// Its login name.
    pub name: String,
    /// Its ids.
    pub ids: RunAs,
}

/// Why the browsers' user cannot be used.
#[derive(Debug, Error)]
pub enum BrowserUserError {
    /// No such user in the system's user database.
    #[error("browser user {0:?} does not exist (the node's user data creates it)")]
    Unknown(String),
    /// The user database could not be read.
    #[error("cannot look up browser user {name:?}: {source}")]
    Lookup { name: String, source: io::Error },
    /// Root defeats the point: Chromium would need `--no-sandbox`.
    #[error("browser user {0:?} is root; browsers must run unprivileged")]
    Root(String),
    /// Not available on this OS (Windows browsers run as the logged-on user).
    #[error("--browser-user is supported on Linux only")]
    Unsupported,
    /// A profile or directory could not be handed to the user.
    #[error("cannot hand {path} to the browser user: {source}")]
    HandOver { path: PathBuf, source: io::Error },
}

impl BrowserUser {
    /// Looks `name` up in the user database (`getpwnam_r`).
    #[cfg(unix)]
    pub fn lookup(name: &str) -> Result<Self, BrowserUserError> {
        let c_name =
            std::ffi::CString::new(name).map_err(|_| BrowserUserError::Unknown(name.to_owned()))?;
        let mut buffer = vec![0 as libc::c_char; 16 * 1024];
        // SAFETY: every pointer refers to a live local of the right type and
        // `buffer`'s length is the one passed; getpwnam_r writes only there.
        let (status, found, ids) = unsafe {
            let mut entry: libc::passwd = std::mem::zeroed();
            let mut found: *mut libc::passwd = std::ptr::null_mut();
            let status = libc::getpwnam_r(
                c_name.as_ptr(),
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut found,
            );
            (status, !found.is_null(), (entry.pw_uid, entry.pw_gid))
        };
        if status != 0 {
            return Err(BrowserUserError::Lookup {
                name: name.to_owned(),
                source: io::Error::from_raw_os_error(status),
            });
        }
        if !found {
            return Err(BrowserUserError::Unknown(name.to_owned()));
        }
        if ids.0 == 0 {
            return Err(BrowserUserError::Root(name.to_owned()));
        }
        Ok(BrowserUser {
            name: name.to_owned(),
            ids: RunAs {
                uid: ids.0,
                gid: ids.1,
            },
        })
    }

    /// Looks `name` up: not available here.
    #[cfg(not(unix))]
    pub fn lookup(_name: &str) -> Result<Self, BrowserUserError> {
        Err(BrowserUserError::Unsupported)
    }

    /// Gives the user everything under `profile` the agent created or a
    /// previous holder left (a named profile), without following links, so
    /// that the browser can write its profile and nothing else changes
    /// hands.
    pub fn hand_over(&self, profile: &Path) -> Result<(), BrowserUserError> {
        hand_over(profile, self.ids).map_err(|source| BrowserUserError::HandOver {
            path: profile.to_path_buf(),
            source,
        })
    }

    /// Opens the way down to the profiles for the user: `path`, every
    /// directory from the state directory to the ones profiles are made in,
    /// gets search permission only (0711), so that the user reaches a
    /// profile whose name it is given and lists nothing. Everything else the
    /// agent writes is private: the agent sets its umask to 077 at start.
    pub fn open_path_to_profiles(&self, path: &[PathBuf]) -> Result<(), BrowserUserError> {
        for dir in path {
            traversable(dir).map_err(|source| BrowserUserError::HandOver {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        Ok(())
    }
}

/// Makes files the agent creates from now on private to it.
#[cfg(unix)]
pub fn private_umask() {
    // SAFETY: umask only sets the process's file mode mask.
    unsafe {
        libc::umask(0o077);
    }
}

/// Makes files the agent creates from now on private to it.
#[cfg(not(unix))]
pub fn private_umask() {}

#[cfg(unix)]
fn traversable(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
}

#[cfg(not(unix))]
fn traversable(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn hand_over(path: &Path, ids: RunAs) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::symlink_metadata(path)?;
    if metadata.uid() != ids.uid || metadata.gid() != ids.gid {
        std::os::unix::fs::lchown(path, Some(ids.uid), Some(ids.gid))?;
    }
    if metadata.is_dir() {
        for entry in std::fs::read_dir(path)? {
            hand_over(&entry?.path(), ids)?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn hand_over(_path: &Path, _ids: RunAs) -> io::Result<()> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn root_and_unknown_users_are_refused() {
        assert!(matches!(
            BrowserUser::lookup("root"),
            Err(BrowserUserError::Root(_))
        ));
        assert!(matches!(
            BrowserUser::lookup("no-such-user-browserfleet"),
            Err(BrowserUserError::Unknown(_))
        ));
        let nobody = BrowserUser::lookup("nobody").expect("nobody exists");
        assert_ne!(nobody.ids.uid, 0);
    }

    #[test]
    fn a_profile_changes_hands_whole_and_the_path_to_it_only_opens() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let state = dir.path().join("state");
        let root = state.join("profiles");
        let profile = root.join("s1");
        std::fs::create_dir_all(profile.join("Default"))?;
        std::fs::write(profile.join("Default/Preferences"), "{}")?;
        std::os::unix::fs::symlink("/etc/passwd", profile.join("link"))?;
        let user = BrowserUser {
            name: "nobody".into(),
            ids: RunAs {
                uid: 65534,
                gid: 65534,
            },
        };
        user.hand_over(&profile).expect("handed over");
        for path in ["", "Default", "Default/Preferences", "link"] {
            let meta = std::fs::symlink_metadata(profile.join(path))?;
            assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{path}");
        }
        // The link's target kept its owner.
        assert_eq!(std::fs::metadata("/etc/passwd")?.uid(), 0);
        user.open_path_to_profiles(&[state.clone(), root.clone()])
            .expect("traversable");
        for dir in [&state, &root] {
            assert_eq!(std::fs::metadata(dir)?.permissions().mode() & 0o777, 0o711);
        }
        Ok(())
    }
}
