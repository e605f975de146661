//! What crosses the wire between producers, agents and requesters: queue
//! messages (protocol v1 and the legacy launcher shape), replies, and signed
//! callbacks. Pure data and parsing; no I/O.
//!
//! * [`parse_message`] turns a request-queue message into an [`Inbound`]
//!   request, or a [`MessageError`] that still says where to answer.
//! * [`reply`] holds what agents send back ([`Reply`]) and what they forward
//!   to the fleet's events queue ([`EventsMessage`]).
//! * [`callback`] signs and verifies HTTP callbacks and schedules their
//!   retries; [`signing`] signs and verifies the agents' events-queue
//!   messages and the operator's requests.
//! * [`control`] is what the operator passes on to an agent's control API
//!   with a forwarded delete ([`DeleteRequester`]).
//! * [`state`] is the agent's state as its control API reports it to the
//!   operator ([`AgentState`]).

pub mod callback;
pub mod control;
pub mod error;
pub mod ids;
pub mod proxy;
pub mod reply;
pub mod request;
pub mod sealing;
pub mod signing;
pub mod state;
pub mod urls;

pub use callback::{CallbackSignature, RetrySchedule, VerifyError, sign, verify};
pub use control::DeleteRequester;
pub use error::{MessageError, ReplyTarget};
pub use ids::{InstanceId, InvalidValue, ProfileName, RequestId, SessionId};
pub use proxy::ProxyConfig;
pub use reply::{
    Endpoints, EventsMessage, Failed, FailureReason, FleetEvent, Ready, Reply, ReplyKind,
    SessionToken, Terminated, TerminationReason,
};
pub use request::{CreateRequest, DeleteRequest, Inbound, MAX_TTL, parse_message};
pub use state::{
    AgentState, AnnouncementKind, HostedPhase, InterruptionKind, InterruptionNotice,
    NodeAnnouncement, SessionState, StateError,
};
pub use urls::{CallbackUrl, ReplyQueueUrl};

/// Largest message accepted: the SQS maximum of 256 KiB.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
