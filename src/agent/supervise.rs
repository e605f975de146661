//! Supervision: on every tick, the facts about each active session are
//! gathered ([`Supervisor`]) and judged by a pure decision ([`verdict`]);
//! stale reservations expire, a drain advances, and, more slowly, unused
//! sessions' pages are read for signs of use and old profiles removed.

use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::devtools::DevTools;
use super::end::Ends;
use super::metrics::AgentMetrics;
use super::process::ProcessControl;
use super::profiles::ProfileStore;
use super::sessions::Sessions;
use crate::cloud::queues::Queues;
use crate::protocol::TerminationReason;

/// How often unused sessions' pages are read for signs of use.
const USE_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// How often old profiles are looked for.
const PROFILE_CLEANUP_INTERVAL: Duration = Duration::from_secs(600);

/// What a supervision pass found about the agent as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Keep going.
    Continue,
    /// A drain has finished: the agent should stop.
    Drained,
}

/// The supervisor of one agent's sessions.
pub struct Supervisor<'a, Q> {
    /// The table it reads and expires.
    pub sessions: &'a Sessions,
    /// Tells whether an adopted browser still runs.
    pub processes: &'a dyn ProcessControl,
    /// Reads page URLs.
    pub devtools: &'a DevTools,
    /// Cleaned of old profiles.
    pub profiles: &'a ProfileStore,
    /// Unused named profiles older than this are removed.
    pub profile_max_age: Duration,
    /// Session and port gauges, refreshed every pass.
    pub metrics: &'a AgentMetrics,
    /// Ends what the verdict or the drain says to end.
    pub ends: Ends<'a, Q>,
    /// The drain's deadline, once a drain has started.
    pub draining: watch::Receiver<Option<super::runtime::DrainDeadline>>,
    /// When page URLs were last read, and when old profiles were last
    /// looked for: both are slower than the tick.
    pub use_checked: Instant,
    /// See `use_checked`.
    pub profiles_cleaned: Instant,
}

impl<Q: Queues> Supervisor<'_, Q> {
    /// One supervision pass: ends sessions whose browser exited, whose TTL
    /// passed or that nobody used; expires stale reservations; advances a
    /// drain.
    pub async fn pass(&mut self) -> Pass {
        let now = SystemTime::now();
        for (port, owner) in self.sessions.expire(Instant::now()) {
            tracing::warn!(session = %owner, %port, "reservation expired");
        }
        let checks = self
            .sessions
            .checks(|process| self.processes.is_alive(process));
        let check_use = self.use_checked.elapsed() >= USE_CHECK_INTERVAL;
        if check_use {
            self.use_checked = Instant::now();
        }
        for check in checks {
            let mut used = check.used;
            if check_use && !used && check.health == BrowserHealth::Running {
                // A client may drive the browser without the gateway knowing
                // (a connection opened before a restart): its pages tell.
                if let Ok(urls) = self.devtools.page_urls(check.port).await
                    && urls
                        .iter()
                        .any(|u| shows_use(u, check.start_url.as_deref()))
                {
                    used = true;
                    self.sessions.mark_used(&check.id);
                }
            }
            if let Some(reason) = verdict(&check.deadlines, check.health, used, now) {
                self.ends.end(&check.id, reason, true).await;
            }
        }
        self.metrics.set_occupancy(&self.sessions.occupancy());
        if self.profiles_cleaned.elapsed() >= PROFILE_CLEANUP_INTERVAL {
            self.profiles_cleaned = Instant::now();
            self.profiles.remove_old(self.profile_max_age).await;
        }
        let deadline = *self.draining.borrow();
        let Some(deadline) = deadline else {
            return Pass::Continue;
        };
        let (remaining, launching) = self.sessions.remaining();
        if remaining.is_empty() && launching == 0 {
            return Pass::Drained;
        }
        if Instant::now() >= deadline.at {
            self.ends.drain(remaining, deadline.ends_as).await;
            return Pass::Drained;
        }
        Pass::Continue
    }
}

/// A session's deadlines, fixed at its start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    /// When the browser was started.
    pub started: SystemTime,
    /// End of the session's TTL (already cut to the fleet's maximum).
    pub expires: SystemTime,
    /// Whether the requested TTL was longer than the fleet's maximum, so
    /// that reaching `expires` is reported as `hardTtlExceeded`.
    pub ttl_was_cut: bool,
    /// A session no client has used by then is ended as `neverUsed`.
    pub use_by: SystemTime,
}

/// What the supervisor saw of the browser on this tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrowserHealth {
    /// Its process is alive.
    Running,
    /// It exited with this code (None: killed by a signal, or an adopted
    /// browser whose exit status the agent cannot read).
    Exited(Option<i32>),
}

/// The reason to end the session now, or `None` to let it run.
///
/// An exit is reported before any deadline: a browser that exited on its
/// own ended for that reason, whatever the clock says. A zero exit is a
/// browser closed on purpose (`Browser.close`, the last window closed); any
/// other exit is a crash.
pub fn verdict(
    deadlines: &Deadlines,
    health: BrowserHealth,
    used: bool,
    now: SystemTime,
) -> Option<TerminationReason> {
    match health {
        BrowserHealth::Exited(Some(0)) => return Some(TerminationReason::Closed),
        BrowserHealth::Exited(_) => return Some(TerminationReason::Crashed),
        BrowserHealth::Running => {}
    }
    if now >= deadlines.expires {
        return Some(if deadlines.ttl_was_cut {
            TerminationReason::HardTtlExceeded
        } else {
            TerminationReason::Expired
        });
    }
    if !used && now >= deadlines.use_by {
        return Some(TerminationReason::NeverUsed);
    }
    None
}

/// Whether a page URL shows that a client used the browser: anything but
/// the blank start page and the new-tab page.
pub fn shows_use(url: &str, start_url: Option<&str>) -> bool {
    !(url.is_empty()
        || url == "about:blank"
        || url.starts_with("chrome://newtab")
        || url.starts_with("chrome://new-tab-page")
        || start_url.is_some_and(|start| start == url))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn deadlines(cut: bool) -> (Deadlines, SystemTime) {
        let started = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        (
            Deadlines {
                started,
                expires: started + Duration::from_secs(60),
                ttl_was_cut: cut,
                use_by: started + Duration::from_secs(20),
            },
            started,
        )
    }

    #[test]
    fn exits_come_first_zero_is_closed_anything_else_crashed() {
        let (d, start) = deadlines(false);
        let late = start + Duration::from_secs(500);
        assert_eq!(
            verdict(&d, BrowserHealth::Exited(Some(0)), true, late),
            Some(TerminationReason::Closed)
        );
        assert_eq!(
            verdict(&d, BrowserHealth::Exited(Some(21)), true, start),
            Some(TerminationReason::Crashed)
        );
        assert_eq!(
            verdict(&d, BrowserHealth::Exited(None), true, start),
            Some(TerminationReason::Crashed)
        );
    }

    #[test]
    fn ttl_ends_as_expired_or_hard_ttl_when_cut() {
        let (d, start) = deadlines(false);
        let at = start + Duration::from_secs(60);
        assert_eq!(
            verdict(
                &d,
                BrowserHealth::Running,
                true,
                at - Duration::from_millis(1)
            ),
            None
        );
        assert_eq!(
            verdict(&d, BrowserHealth::Running, true, at),
            Some(TerminationReason::Expired)
        );
        let (d, _) = deadlines(true);
        assert_eq!(
            verdict(&d, BrowserHealth::Running, true, at),
            Some(TerminationReason::HardTtlExceeded)
        );
    }

    #[test]
    fn an_unused_session_ends_at_its_use_by_time_a_used_one_does_not() {
        let (d, start) = deadlines(false);
        let at = start + Duration::from_secs(20);
        assert_eq!(
            verdict(&d, BrowserHealth::Running, false, at),
            Some(TerminationReason::NeverUsed)
        );
        assert_eq!(verdict(&d, BrowserHealth::Running, true, at), None);
    }

    #[test]
    fn blank_and_start_pages_do_not_count_as_use() {
        assert!(!shows_use("about:blank", None));
        assert!(!shows_use("chrome://newtab/", None));
        assert!(!shows_use(
            "https://start.example/",
            Some("https://start.example/")
        ));
        assert!(shows_use("data:text/html,hi", None));
    }
}
