//! When a session ends: the pure decision the supervisor takes for every
//! session on every tick, separate from how the facts were gathered.

use std::time::SystemTime;

use crate::protocol::TerminationReason;

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
