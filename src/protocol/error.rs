//! Why a queue message was refused, and whom to tell.

use thiserror::Error;

use super::MAX_MESSAGE_BYTES;
use super::ids::{RequestId, SessionId};
use super::urls::{CallbackUrl, ReplyQueueUrl};

/// Where a `session.failed` reply for a refused message can go, and the ids
/// to put in it, read best-effort from the message.
///
/// A value that is itself malformed (a `replyTo` that is no queue URL) is left
/// out: the agent never sends to an address it would refuse in a valid
/// request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplyTarget {
    /// SQS queue for the reply (`replyTo`).
    pub reply_to: Option<ReplyQueueUrl>,
    /// HTTP callback for the reply (`callbackUrl`).
    pub callback_url: Option<CallbackUrl>,
    /// The producer's request id (`requestId`, or the legacy `id`).
    pub request_id: Option<RequestId>,
    /// The session the message named (`sessionId`, or the legacy
    /// `session_id`).
    pub session_id: Option<SessionId>,
    /// Labels to echo: the legacy `requester_id` as `requester`, when it is
    /// a valid label value (a v1 message's own `labels` are not trusted
    /// from a message that broke a rule).
    pub labels: std::collections::BTreeMap<String, String>,
}

impl ReplyTarget {
    /// Whether there is anywhere to send a reply.
    pub fn has_destination(&self) -> bool {
        self.reply_to.is_some() || self.callback_url.is_some()
    }
}

/// Why [`super::parse_message`] refused a message.
///
/// `TooLarge`, `InvalidJson` and `NotAnObject` messages cannot be answered:
/// they go to the dead-letter queue. The other variants come from a JSON
/// object, so they carry whatever reply target it named (see
/// [`MessageError::reply_target`]) and the agent can answer
/// `session.failed` with reason `invalidRequest` instead.
///
/// Display texts are meant for the requester; they name fields and limits
/// but never repeat a proxy, a URL or a credential.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum MessageError {
    /// The body is larger than SQS allows.
    #[error("message is {size} bytes; at most {MAX_MESSAGE_BYTES} are accepted")]
    TooLarge {
        /// Size of the body in bytes.
        size: usize,
    },
    /// The body is not JSON (or not UTF-8).
    #[error("message is not valid JSON: {0}")]
    InvalidJson(String),
    /// The body is JSON but not an object.
    #[error("message must be a JSON object, not {found}")]
    NotAnObject {
        /// What it is instead: `an array`, `a string`, ….
        found: &'static str,
    },
    /// `version` names a protocol version this agent does not speak.
    #[error("protocol version {version} is not supported; this agent speaks version 1")]
    UnsupportedVersion {
        /// The version the message named.
        version: u64,
        /// Where to answer, if the message said.
        target: Option<Box<ReplyTarget>>,
    },
    /// `action` is neither `create` nor `delete`.
    #[error("unknown action {action:?}; expected \"create\" or \"delete\"")]
    UnknownAction {
        /// The action, cut to 64 characters.
        action: String,
        /// Where to answer, if the message said.
        target: Option<Box<ReplyTarget>>,
    },
    /// A field is missing, has the wrong type or breaks a rule.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// Path of the field as the message spelled it: `ttlSeconds`,
        /// `args[3]`, `proxy.server`, `labels["team"]`.
        field: String,
        /// What the field must look like.
        message: String,
        /// Where to answer, if the message said.
        target: Option<Box<ReplyTarget>>,
    },
}

impl MessageError {
    /// Where to send `session.failed` for this message, whatever else was
    /// wrong with it: `Some` when the message was a JSON object naming a
    /// well-formed `replyTo` or `callbackUrl`, or naming neither (then
    /// without a destination, for the fleet's default targets to fill);
    /// `None` when it named one that is malformed.
    pub fn reply_target(&self) -> Option<&ReplyTarget> {
        match self {
            MessageError::TooLarge { .. }
            | MessageError::InvalidJson(_)
            | MessageError::NotAnObject { .. } => None,
            MessageError::UnsupportedVersion { target, .. }
            | MessageError::UnknownAction { target, .. }
            | MessageError::Invalid { target, .. } => target.as_deref(),
        }
    }

    /// The field at fault, for `Invalid`.
    pub fn field(&self) -> Option<&str> {
        match self {
            MessageError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// At most `max` characters of `s`, with `…` when cut: for echoing
/// caller-chosen text in error messages.
pub(crate) fn excerpt(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_cuts_on_character_boundaries() {
        assert_eq!(excerpt("abc", 3), "abc");
        assert_eq!(excerpt("abcd", 3), "abc…");
        assert_eq!(excerpt("ééé", 2), "éé…");
        assert_eq!(excerpt("", 2), "");
    }

    #[test]
    fn errors_without_an_object_have_no_reply_target() {
        assert_eq!(MessageError::TooLarge { size: 1 }.reply_target(), None);
        assert_eq!(MessageError::InvalidJson("x".into()).reply_target(), None);
        assert_eq!(
            MessageError::NotAnObject { found: "an array" }.reply_target(),
            None
        );
    }

    #[test]
    fn display_names_the_field_and_the_rule() {
        let error = MessageError::Invalid {
            field: "args[3]".into(),
            message: "must be a string".into(),
            target: None,
        };
        assert_eq!(error.to_string(), "invalid args[3]: must be a string");
        assert_eq!(error.field(), Some("args[3]"));
        assert_eq!(
            MessageError::TooLarge { size: 300_000 }.to_string(),
            "message is 300000 bytes; at most 262144 are accepted"
        );
        assert_eq!(
            MessageError::UnknownAction {
                action: "launch".into(),
                target: None
            }
            .to_string(),
            "unknown action \"launch\"; expected \"create\" or \"delete\""
        );
    }
}
