//! The one mapping from the queue protocol's reasons to the
//! `BrowserSession` API's end reasons.

use crate::api::session::SessionEndReason;
use crate::protocol::{FailureReason, TerminationReason};

/// Why a session that never started failed, as its status says.
pub fn of_failure(reason: FailureReason) -> SessionEndReason {
    match reason {
        FailureReason::InvalidRequest
        | FailureReason::ForbiddenArgument
        | FailureReason::ProfileUnavailable => SessionEndReason::Rejected,
        FailureReason::NoCapacity | FailureReason::StartTimeout => SessionEndReason::StartTimeout,
        // An agent that restarted runs the browser but lost its token.
        FailureReason::SessionExists | FailureReason::FailedToStart | FailureReason::Internal => {
            SessionEndReason::FailedToStart
        }
        FailureReason::Cancelled => SessionEndReason::Deleted,
    }
}

/// Why a session ended, as its status says.
pub fn of_termination(reason: TerminationReason) -> SessionEndReason {
    match reason {
        TerminationReason::Expired => SessionEndReason::Expired,
        TerminationReason::HardTtlExceeded => SessionEndReason::HardTtlExceeded,
        TerminationReason::NeverUsed => SessionEndReason::NeverUsed,
        TerminationReason::Crashed | TerminationReason::Orphaned => SessionEndReason::Crashed,
        TerminationReason::Closed => SessionEndReason::Closed,
        TerminationReason::Deleted => SessionEndReason::Deleted,
        TerminationReason::Drained => SessionEndReason::Drained,
        TerminationReason::FailedToStart => SessionEndReason::FailedToStart,
        TerminationReason::Interrupted => SessionEndReason::Interrupted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wire_reason_has_an_api_reason() {
        // Exhaustive matches above make a new wire reason a compile error;
        // these pin the mappings a user reads in `kubectl get bsess`.
        assert_eq!(
            of_termination(TerminationReason::Expired),
            SessionEndReason::Expired
        );
        assert_eq!(
            of_failure(FailureReason::ForbiddenArgument),
            SessionEndReason::Rejected
        );
        assert_eq!(
            of_failure(FailureReason::StartTimeout),
            SessionEndReason::StartTimeout
        );
        assert_eq!(
            of_failure(FailureReason::Cancelled),
            SessionEndReason::Deleted
        );
        assert_eq!(
            of_termination(TerminationReason::Orphaned),
            SessionEndReason::Crashed
        );
        assert_eq!(
            of_termination(TerminationReason::Interrupted),
            SessionEndReason::Interrupted
        );
    }
}
