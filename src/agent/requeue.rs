//! Creates that a full agent took off the queue and puts back, and the pure
//! decisions about them.
//!
//! A full agent keeps receiving so that deletes on the request queue are
//! served at once. A create it receives meanwhile cannot simply be given
//! back: every receive counts towards the queue's `maxReceiveCount`, and the
//! redrive policy would move a create that only waited for a slot to the
//! dead-letter queue. So the agent sends a *copy* (whose receive count starts
//! at zero) and deletes the original only once the copy is on the queue.
//!
//! The copy is the original body with two changes, so that it keeps its shape
//! (a launcher-shaped create stays launcher-shaped) and stays readable by
//! agents that predate this module (both shapes ignore unknown fields):
//!
//! * a field [`REQUEUED_FIELD`] `{"count": n, "since": "RFC 3339"}`: how many
//!   times full agents put the create back, and since when it waits for a
//!   slot. A create that waited longer than the agent's limit is answered
//!   `session.failed` (`noCapacity`) instead, or dead-lettered when it names
//!   no one to answer, so a create no fleet can serve does not circle forever
//!   (each copy starts a new retention period);
//! * a create that names no session gets one (`sessionId`, or `session_id` in
//!   the launcher shape), derived from the SQS id of the first message put
//!   back. Should the delete of an original fail after its copy was sent, the
//!   original comes back and is copied again under the same session id, so
//!   the two are one session's duplicate deliveries (answered with the
//!   running session where it runs), not two sessions.

use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Map, Value, json};
use thiserror::Error;

use crate::protocol::MAX_MESSAGE_BYTES;
use crate::protocol::SessionId;

/// The body field a copy carries.
pub const REQUEUED_FIELD: &str = "requeued";

/// How often and since when full agents have put a create back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requeued {
    /// Times it was put back.
    pub count: u32,
    /// When it was first put back (whole seconds).
    pub since: Timestamp,
}

/// What a full agent does with a create it received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhileFull {
    /// Put a copy back with this record.
    Requeue(Requeued),
    /// Stop: it waited for a slot this long, beyond the limit.
    GiveUp {
        /// Time since it was first put back.
        waited: Duration,
    },
}

/// Decides about a create a full agent received, from the record its body
/// carries (`None` when it was never put back) and the longest a create may
/// wait for a slot.
pub fn while_full(previous: Option<Requeued>, now: Timestamp, max_wait: Duration) -> WhileFull {
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let Some(previous) = previous else {
        return WhileFull::Requeue(Requeued {
            count: 1,
            since: now,
        });
    };
    // A `since` in the future (a clock ahead, or a producer's own field)
    // counts as now: the wait never goes negative.
    let since = previous.since.min(now);
    let waited = Duration::try_from(now.duration_since(since)).unwrap_or_default();
    if waited >= max_wait {
        return WhileFull::GiveUp { waited };
    }
    WhileFull::Requeue(Requeued {
        count: previous.count.saturating_add(1),
        since,
    })
}

/// The record a body carries; `None` when it has none or a malformed one
/// (which is then replaced by a fresh one).
pub fn requeued(body: &str) -> Option<Requeued> {
    let value: Value = serde_json::from_str(strip_bom(body)).ok()?;
    let record = value.get(REQUEUED_FIELD)?;
    let count = u32::try_from(record.get("count")?.as_u64()?).ok()?;
    let since = record.get("since")?.as_str()?.parse().ok()?;
    Some(Requeued { count, since })
}

/// Why a copy could not be written.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CopyError {
    /// The body is not a JSON object (it parsed as a create, so this is a bug).
    #[error("the request is not a JSON object")]
    NotAnObject,
    /// The copy would exceed the SQS message size.
    #[error("the copy would be {size} bytes, more than SQS takes")]
    TooLarge {
        /// Its size.
        size: usize,
    },
}

/// The body of the copy of `body` (a create, in either shape) that carries
/// `record` and, when the create names no session, `session_id`.
pub fn copy_body(
    body: &str,
    session_id: &SessionId,
    record: Requeued,
) -> Result<String, CopyError> {
    copy_with(body, session_id, Some(record))
}

/// The body of a copy of `body` (a create, in either shape) that names
/// `session_id` when the create names no session, and is otherwise the same:
/// a create given back as a copy, its receive count starting afresh.
pub fn same_session_body(body: &str, session_id: &SessionId) -> Result<String, CopyError> {
    copy_with(body, session_id, None)
}

fn copy_with(
    body: &str,
    session_id: &SessionId,
    record: Option<Requeued>,
) -> Result<String, CopyError> {
    let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(strip_bom(body)) else {
        return Err(CopyError::NotAnObject);
    };
    let key = session_key(&map);
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(
            key.to_owned(),
            Value::String(session_id.as_str().to_owned()),
        );
    }
    if let Some(record) = record {
        map.insert(
            REQUEUED_FIELD.to_owned(),
            json!({"count": record.count, "since": record.since.to_string()}),
        );
    }
    let copy = Value::Object(map).to_string();
    if copy.len() > MAX_MESSAGE_BYTES {
        return Err(CopyError::TooLarge { size: copy.len() });
    }
    Ok(copy)
}

/// The session a copy of an id-less create is given: the SQS id of the
/// message first put back (a UUID, like a generated session id).
pub fn session_for(message_id: &str) -> SessionId {
    SessionId::new(message_id).unwrap_or_else(|_| SessionId::generate())
}

/// `sessionId` in protocol v1 (which has `version`), `session_id` in the
/// launcher shape.
fn session_key(map: &Map<String, Value>) -> &'static str {
    if map.get("version").is_some_and(|v| !v.is_null()) {
        "sessionId"
    } else {
        "session_id"
    }
}

fn strip_bom(body: &str) -> &str {
    body.strip_prefix('\u{feff}').unwrap_or(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{CreateRequest, Inbound, parse_message};

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn create(body: &str) -> CreateRequest {
        match parse_message(body.as_bytes()) {
            Ok(Inbound::Create(create)) => create,
            other => panic!("not a create: {other:?}"),
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_create_put_back_the_first_time_starts_its_wait_now() {
        let now = at("2025-01-02T03:04:05.678Z");
        assert_eq!(
            while_full(None, now, HOUR),
            WhileFull::Requeue(Requeued {
                count: 1,
                since: at("2025-01-02T03:04:05Z"),
            })
        );
    }

    #[test]
    fn a_create_put_back_again_keeps_its_start_and_counts_up() {
        let since = at("2025-01-02T03:00:00Z");
        let previous = Requeued { count: 7, since };
        assert_eq!(
            while_full(Some(previous), at("2025-01-02T03:59:59Z"), HOUR),
            WhileFull::Requeue(Requeued { count: 8, since })
        );
    }

    #[test]
    fn a_create_that_waited_the_limit_is_given_up() {
        let previous = Requeued {
            count: 700,
            since: at("2025-01-02T03:00:00Z"),
        };
        assert_eq!(
            while_full(Some(previous), at("2025-01-02T04:00:00Z"), HOUR),
            WhileFull::GiveUp { waited: HOUR }
        );
    }

    #[test]
    fn a_start_in_the_future_counts_as_now() {
        let now = at("2025-01-02T03:00:00Z");
        let previous = Requeued {
            count: u32::MAX,
            since: at("2030-01-01T00:00:00Z"),
        };
        assert_eq!(
            while_full(Some(previous), now, HOUR),
            WhileFull::Requeue(Requeued {
                count: u32::MAX,
                since: now
            })
        );
    }

    #[test]
    fn a_v1_copy_reads_back_as_the_same_create_with_its_record() {
        let body = r#"{"version":1,"action":"create","requestId":"r-1","ttlSeconds":30.0,
            "replyTo":"https://sqs.us-east-1.amazonaws.com/123456789012/replies",
            "labels":{"team":"qa"},"startDeadline":"2025-01-02T03:04:05Z","future":{"x":1}}"#;
        let record = Requeued {
            count: 1,
            since: at("2025-01-02T03:00:00Z"),
        };
        let id = session_for("0b6c4f1e-3b4a-4e8d-9f00-000000000001");
        let copy = copy_body(body, &id, record).unwrap();
        let mut expected = create(body);
        expected.session_id = Some(id.clone());
        assert_eq!(create(&copy), expected);
        assert_eq!(requeued(&copy), Some(record));
        // Fields this agent does not know travel along.
        let value: Value = serde_json::from_str(&copy).unwrap();
        assert_eq!(value["future"], json!({"x": 1}));

        // Put back again: the record is replaced, the session id kept.
        let again = Requeued { count: 2, ..record };
        let other = SessionId::new("other").unwrap();
        let copy = copy_body(&copy, &other, again).unwrap();
        assert_eq!(create(&copy), expected);
        assert_eq!(requeued(&copy), Some(again));
    }

    #[test]
    fn a_launcher_copy_keeps_the_launcher_shape() {
        let body = "\u{feff}{\"id\":17,\"requester_id\":\"team-a\",\"ttl_minutes\":5,\
                    \"chrome_args\":[\"--lang=de\"],\"proxy_config\":\"proxy.local:3128\"}";
        let record = Requeued {
            count: 3,
            since: at("2025-01-02T03:00:00Z"),
        };
        let id = session_for("9d2e3c54-1111-4e8d-9f00-000000000002");
        let copy = copy_body(body, &id, record).unwrap();
        let value: Value = serde_json::from_str(&copy).unwrap();
        assert!(value.get("version").is_none(), "{copy}");
        assert!(value.get("sessionId").is_none(), "{copy}");
        assert_eq!(value["session_id"], id.as_str());
        let mut expected = create(body);
        expected.session_id = Some(id);
        assert_eq!(create(&copy), expected);
        assert_eq!(requeued(&copy), Some(record));
    }

    #[test]
    fn a_create_that_names_its_session_keeps_it() {
        let body = r#"{"version":1,"action":"create","sessionId":"s-1"}"#;
        let record = Requeued {
            count: 1,
            since: at("2025-01-02T03:00:00Z"),
        };
        let copy = copy_body(body, &session_for("m-1"), record).unwrap();
        assert_eq!(
            create(&copy).session_id,
            Some(SessionId::new("s-1").unwrap())
        );
        // A null session id counts as absent, as in the parser.
        let body = r#"{"session_id":null,"ttl_minutes":5}"#;
        let copy = copy_body(body, &session_for("m-2"), record).unwrap();
        assert_eq!(
            create(&copy).session_id,
            Some(SessionId::new("m-2").unwrap())
        );
    }

    #[test]
    fn a_malformed_record_counts_as_none() {
        for body in [
            r#"{"version":1,"action":"create"}"#,
            r#"{"version":1,"action":"create","requeued":3}"#,
            r#"{"version":1,"action":"create","requeued":{"count":-1,"since":"2025-01-02T03:00:00Z"}}"#,
            r#"{"version":1,"action":"create","requeued":{"count":1,"since":"yesterday"}}"#,
            "not json",
        ] {
            assert_eq!(requeued(body), None, "{body}");
        }
    }

    #[test]
    fn a_copy_too_large_for_sqs_is_refused() {
        let padding = "a".repeat(MAX_MESSAGE_BYTES - 60);
        let body = format!(r#"{{"version":1,"action":"create","x":"{padding}"}}"#);
        let record = Requeued {
            count: 1,
            since: at("2025-01-02T03:00:00Z"),
        };
        assert!(matches!(
            copy_body(&body, &session_for("m"), record),
            Err(CopyError::TooLarge { .. })
        ));
    }
}
