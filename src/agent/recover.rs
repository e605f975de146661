//! Re-adoption after an agent restart: the browsers of the saved table that
//! still run and answer DevTools are taken back; the others are ended and
//! reported; browsers of ours that no session owns are killed.

use std::time::{Duration, SystemTime};

use super::devtools::DevTools;
use super::egress::{ChainGuard, Egress, Upstream};
use super::end::Ends;
use super::metrics::AgentMetrics;
use super::process::ProcessControl;
use super::profiles::{ProfileStore, browser_marker};
use super::sessions::{Adoption, Sessions};
use super::table::{ChainedProxy, SessionRecord, TableError};
use crate::cloud::queues::Queues;
use crate::protocol::{SessionId, TerminationReason};

/// What [`Recovery::recover`] found.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    /// Sessions whose browsers run on.
    pub adopted: Vec<SessionId>,
    /// Sessions whose browsers were gone or unreachable.
    pub ended: Vec<SessionId>,
    /// Browsers without a session, killed.
    pub orphans_killed: Vec<u32>,
}

/// What re-adoption takes.
pub struct Recovery<'a, Q> {
    /// The table, saved by the previous agent and filled again.
    pub sessions: &'a Sessions,
    /// Checks, finds and kills browsers.
    pub processes: &'a dyn ProcessControl,
    /// Asks a browser whether DevTools answers.
    pub devtools: &'a DevTools,
    /// Takes profiles back, then removes old ones.
    pub profiles: &'a ProfileStore,
    /// Unused named profiles older than this are removed.
    pub profile_max_age: Duration,
    /// Counts killed orphans.
    pub metrics: &'a AgentMetrics,
    /// Listens again for sessions with a chained proxy.
    pub egress: &'a Egress,
    /// Opens their sealed credentials.
    pub fleet_key: &'a [u8],
    /// Ends sessions whose browsers are gone.
    pub ends: Ends<'a, Q>,
}

impl<Q: Queues> Recovery<'_, Q> {
    /// Re-adopts, ends and kills (see the module); fails only when an
    /// unreadable table cannot be moved aside.
    pub async fn recover(&self) -> Result<RecoveryReport, TableError> {
        let records = self.sessions.saved()?;
        let mut report = RecoveryReport::default();
        for mut record in records {
            let version = if self.processes.is_alive(&record.process) {
                self.devtools.version(record.port()).await.ok()
            } else {
                None
            };
            // A browser whose chained proxy cannot listen again on its port
            // would have no network: it is ended like a dead one.
            let chain = match (&version, &record.chained_proxy) {
                (Some(_), Some(chained)) => self.rechain(&record.id, chained).await,
                _ => None,
            };
            let alive = version.is_some() && (record.chained_proxy.is_none() || chain.is_some());
            if let Some(version) = &version
                && record.browser_path.is_empty()
            {
                // The agent died while this browser started: its ready reply
                // was never sent, and the redelivered request will ask for it.
                record.browser_path = version.browser_path().unwrap_or_default().to_owned();
            }
            let profile = self.profiles.adopt(&record.profile_dir);
            let adopted = match self.sessions.adopt(record.clone(), alive, profile, chain) {
                Adoption::Adopted => true,
                Adoption::ToEnd => false,
                Adoption::ProfileUnusable(error) => {
                    tracing::warn!(session = %record.id, %error, "profile not adoptable");
                    continue;
                }
            };
            if adopted {
                tracing::info!(session = %record.id, port = record.port, "session re-adopted");
                report.adopted.push(record.id);
            } else {
                // One never answered ends unheard of (`Claimed::unheard_of`).
                self.ends
                    .end(&record.id, reason_gone(&record, SystemTime::now()), true)
                    .await;
                report.ended.push(record.id);
            }
        }
        self.sessions.save();
        report.orphans_killed = self.kill_orphans().await;
        self.profiles.remove_old(self.profile_max_age).await;
        Ok(report)
    }

    /// The chained proxy of an adopted session, on the port its browser
    /// was given.
    async fn rechain(&self, id: &SessionId, chained: &ChainedProxy) -> Option<ChainGuard> {
        let mut proxy = chained.proxy();
        let upstream = proxy
            .open_credentials(self.fleet_key, id.as_str())
            .map_err(|e| e.to_string())
            .and_then(|()| Upstream::of(&proxy))
            .ok()
            .flatten();
        let Some(upstream) = upstream else {
            tracing::warn!(session = %id, "the chained proxy's credentials do not open");
            return None;
        };
        match self.egress.start_chain(chained.port, upstream).await {
            Ok(guard) => Some(guard),
            Err(error) => {
                tracing::warn!(session = %id, port = chained.port, %error, "cannot listen for the chained proxy again");
                None
            }
        }
    }

    /// Kills the browsers started from our profiles that no session owns;
    /// returns their PIDs.
    async fn kill_orphans(&self) -> Vec<u32> {
        let marker = browser_marker(self.profiles.root());
        let known = self.sessions.processes();
        let mut killed = Vec::new();
        match self.processes.find_by_marker(&marker).await {
            Ok(found) => {
                for orphan in found.into_iter().filter(|p| !known.contains(p)) {
                    tracing::warn!(pid = orphan.pid, "killing a browser no session owns");
                    if self.processes.kill_tree(orphan).await.is_ok() {
                        self.metrics.orphans_killed.inc();
                        killed.push(orphan.pid);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "could not look for orphaned browsers"),
        }
        killed
    }
}

/// Why a saved session whose browser is gone ended: for the reason its end
/// began with, when the previous agent was killed while ending it; at its
/// TTL, when that had passed (the agent died before it could end it);
/// otherwise its browser crashed.
fn reason_gone(record: &SessionRecord, now: SystemTime) -> TerminationReason {
    match record.ending {
        Some(reason) => reason,
        None if record.expires <= now => TerminationReason::Expired,
        None => TerminationReason::Crashed,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;
    use crate::agent::process::ProcessIdentity;

    fn record(expires: SystemTime, ending: Option<TerminationReason>) -> SessionRecord {
        SessionRecord {
            id: SessionId::new("s-gone").unwrap(),
            request_id: None,
            port: 9300,
            token_sha256: "0".repeat(64),
            process: ProcessIdentity {
                pid: 4242,
                start_time: 1,
            },
            profile_dir: PathBuf::from("/state/profiles/tmp/s-gone"),
            profile_temporary: true,
            browser_path: "/devtools/browser/x".into(),
            started: expires - Duration::from_secs(60),
            expires,
            ttl_was_cut: false,
            use_by: expires,
            used: true,
            start_url: None,
            reply_to: None,
            callback_url: None,
            labels: BTreeMap::new(),
            chained_proxy: None,
            ending,
            unanswered: false,
            more_token_sha256: Vec::new(),
        }
    }

    #[test]
    fn a_session_found_gone_ends_for_the_reason_its_end_began_with_else_its_ttl_else_a_crash() {
        let now = SystemTime::now();
        let later = now + Duration::from_secs(30);
        let earlier = now - Duration::from_secs(1);
        assert_eq!(
            reason_gone(&record(later, Some(TerminationReason::Deleted)), now),
            TerminationReason::Deleted
        );
        assert_eq!(
            reason_gone(&record(earlier, None), now),
            TerminationReason::Expired
        );
        assert_eq!(
            reason_gone(&record(later, None), now),
            TerminationReason::Crashed
        );
    }
}
