//! Signed queue messages: how the operator knows that a message on a
//! fleet's events queue comes from one of that fleet's agents, and how an
//! agent knows that a request speaking for the operator (reserved labels,
//! session ids or reply target, see [`reserved_use`]) comes from it.
//! Producers may send requests; they may not speak for agents or for the
//! operator.
//!
//! A signed message carries two string message attributes:
//! [`TIMESTAMP_ATTRIBUTE`] (Unix seconds) and [`SIGNATURE_ATTRIBUTE`]
//! (`sha256=<hex>`), the HMAC-SHA256, keyed with the fleet's message key, of
//! `"{timestamp}.{purpose}.{body}"` — the callback scheme
//! ([`super::callback`]) with the [`Purpose`] inside the signed text, so a
//! signed request is never accepted as an event or the other way round.
//! The body stays as it was: readers that know nothing of signatures (a
//! producer's tools) read it as before.

use std::collections::BTreeMap;
use std::time::Duration;

use super::callback::{self, VerifyError};
use super::request::CreateRequest;

/// Attribute carrying the signing time in Unix seconds.
pub const TIMESTAMP_ATTRIBUTE: &str = "browserfleet-timestamp";
/// Attribute carrying the signature, `sha256=<64 lowercase hex digits>`.
pub const SIGNATURE_ATTRIBUTE: &str = "browserfleet-signature";
/// How far a signed event's time may be from the reader's clock. An event
/// older than this is refused as a replay; within it, the operator also
/// refuses a signature it has already accepted.
pub const TOLERANCE: Duration = Duration::from_secs(300);
/// How old a signed request may be: as old as SQS keeps a message (14
/// days). A request legitimately waits on the queue while instances boot
/// (minutes on Windows) or every slot is taken; its own `startDeadline`
/// bounds its life, and a replayed request only asks again for a session the
/// operator already asked for.
pub const REQUEST_TOLERANCE: Duration = Duration::from_secs(14 * 24 * 3600);
/// Label prefix only the operator may set on a request.
pub const RESERVED_LABEL_PREFIX: &str = "browserfleet.io/";
/// Session id prefix of BrowserSessions (`bs-<uid>`); only the operator may
/// ask for such a session.
pub const RESERVED_SESSION_PREFIX: &str = "bs-";

/// What a signature vouches for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// An agent's message on its fleet's events queue.
    Event,
    /// The operator's request on its fleet's request queue.
    Request,
}

impl Purpose {
    fn text(self) -> &'static str {
        match self {
            Purpose::Event => "event",
            Purpose::Request => "request",
        }
    }

    /// How far from the reader's clock a signature of this purpose holds.
    pub fn tolerance(self) -> Duration {
        match self {
            Purpose::Event => TOLERANCE,
            Purpose::Request => REQUEST_TOLERANCE,
        }
    }
}

/// Why a message's signature is not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature attributes.
    #[error("the message is not signed")]
    Unsigned,
    /// Signed, but not by this fleet's key, or altered, or malformed.
    #[error("the signature is not valid: {0}")]
    Invalid(VerifyError),
    /// Validly signed, but too old (or too far ahead): a replay.
    #[error("the signature is stale: {0}")]
    Stale(VerifyError),
}

impl SignatureError {
    /// A short label for metrics: `unsigned`, `invalid`, `stale` (and
    /// `replayed`, which only the reader's memory can tell).
    pub fn label(&self) -> &'static str {
        match self {
            SignatureError::Unsigned => "unsigned",
            SignatureError::Invalid(_) => "invalid",
            SignatureError::Stale(_) => "stale",
        }
    }
}

fn signed_text(purpose: Purpose, body: &str) -> String {
    format!("{}.{body}", purpose.text())
}

/// The attributes that sign `body` for `purpose` at `now` (Unix seconds).
pub fn sign(key: &[u8], purpose: Purpose, body: &str, now: i64) -> BTreeMap<String, String> {
    let signature = callback::sign(key, now, signed_text(purpose, body).as_bytes());
    BTreeMap::from([
        (
            TIMESTAMP_ATTRIBUTE.to_owned(),
            signature.timestamp.to_string(),
        ),
        (SIGNATURE_ATTRIBUTE.to_owned(), signature.signature),
    ])
}

/// Checks the signature `attributes` carry over `body` for `purpose`
/// against the reader's clock `now` (Unix seconds).
pub fn verify(
    key: &[u8],
    purpose: Purpose,
    body: &str,
    attributes: &BTreeMap<String, String>,
    now: i64,
) -> Result<(), SignatureError> {
    let (Some(timestamp), Some(signature)) = (
        attributes.get(TIMESTAMP_ATTRIBUTE),
        attributes.get(SIGNATURE_ATTRIBUTE),
    ) else {
        return Err(SignatureError::Unsigned);
    };
    callback::verify(
        key,
        timestamp,
        signature,
        signed_text(purpose, body).as_bytes(),
        now,
        purpose.tolerance(),
    )
    .map_err(|error| match error {
        VerifyError::OutsideTolerance { .. } => SignatureError::Stale(error),
        other => SignatureError::Invalid(other),
    })
}

/// What in a create only the operator may ask for, if anything: a label
/// under [`RESERVED_LABEL_PREFIX`], a session id under
/// [`RESERVED_SESSION_PREFIX`], or the fleet's events queue (`events`) as
/// the reply target. A producer that could, would route an agent's reply to
/// a BrowserSession and make it `Ready` on a browser it controls.
pub fn reserved_use(request: &CreateRequest, events: &str) -> Option<String> {
    if let Some(label) = request
        .labels
        .keys()
        .find(|k| k.starts_with(RESERVED_LABEL_PREFIX))
    {
        return Some(format!(
            "the label {label} is reserved: labels under {RESERVED_LABEL_PREFIX} are set only by the operator"
        ));
    }
    if let Some(id) = &request.session_id
        && id.as_str().starts_with(RESERVED_SESSION_PREFIX)
    {
        return Some(format!(
            "the session id {id} is reserved: ids starting with {RESERVED_SESSION_PREFIX} belong to BrowserSessions"
        ));
    }
    if request
        .reply_to
        .as_ref()
        .is_some_and(|queue| queue.as_str() == events)
    {
        return Some(
            "replies to the fleet's events queue are reserved for the operator's requests".into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk";
    const BODY: &str = r#"{"version":1,"type":"node.registered"}"#;

    #[test]
    fn a_signed_message_verifies_for_its_purpose_only() {
        let attributes = sign(KEY, Purpose::Event, BODY, 1_000);
        assert_eq!(
            verify(KEY, Purpose::Event, BODY, &attributes, 1_010),
            Ok(())
        );
        assert!(matches!(
            verify(KEY, Purpose::Request, BODY, &attributes, 1_010),
            Err(SignatureError::Invalid(VerifyError::Mismatch))
        ));
    }

    #[test]
    fn another_key_an_altered_body_no_signature_and_an_old_one_are_refused() {
        let attributes = sign(KEY, Purpose::Event, BODY, 1_000);
        let other_key = b"oooooooooooooooooooooooooooooooooooooooo";
        assert!(matches!(
            verify(other_key, Purpose::Event, BODY, &attributes, 1_000),
            Err(SignatureError::Invalid(_))
        ));
        assert!(matches!(
            verify(
                KEY,
                Purpose::Event,
                &BODY.replace("1", "2"),
                &attributes,
                1_000
            ),
            Err(SignatureError::Invalid(_))
        ));
        assert_eq!(
            verify(KEY, Purpose::Event, BODY, &BTreeMap::new(), 1_000),
            Err(SignatureError::Unsigned)
        );
        let late = 1_000 + TOLERANCE.as_secs() as i64 + 1;
        let stale = verify(KEY, Purpose::Event, BODY, &attributes, late).unwrap_err();
        assert_eq!(stale.label(), "stale");
        // A request waits on the queue far longer than an event travels.
        let request = sign(KEY, Purpose::Request, BODY, 1_000);
        assert_eq!(
            verify(KEY, Purpose::Request, BODY, &request, 1_000 + 3 * 3600),
            Ok(())
        );
    }

    #[test]
    fn reserved_labels_session_ids_and_the_events_queue_are_named() {
        let events = "http://127.0.0.1:5000/000000000000/bf-events";
        let request = |json: serde_json::Value| -> CreateRequest {
            let mut message = serde_json::json!({"version": 1, "action": "create"});
            message
                .as_object_mut()
                .unwrap()
                .extend(json.as_object().unwrap().clone());
            match crate::protocol::parse_message(message.to_string().as_bytes()) {
                Ok(crate::protocol::Inbound::Create(request)) => request,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            reserved_use(
                &request(serde_json::json!({"labels": {"team": "qa"}})),
                events
            ),
            None
        );
        let label = reserved_use(
            &request(serde_json::json!({"labels": {"browserfleet.io/session-uid": "u"}})),
            events,
        );
        assert!(label.unwrap().contains("browserfleet.io/session-uid"));
        let id = reserved_use(&request(serde_json::json!({"sessionId": "bs-123"})), events);
        assert!(id.unwrap().contains("bs-123"));
        let target = reserved_use(&request(serde_json::json!({"replyTo": events})), events);
        assert!(target.unwrap().contains("events queue"));
    }
}
