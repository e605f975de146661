//! What agents send back: replies to requesters (to a `replyTo` queue and/or
//! a signed `callbackUrl`) and delete requests forwarded to the fleet's
//! events queue.
//!
//! Every message is a JSON object with `"version": 1` and a `"type"`:
//!
//! ```json
//! {"version":1,"type":"session.ready","sessionId":"s-1","requestId":"r-1",
//!  "instanceId":"i-0abc","labels":{"team":"a"},"at":"2025-01-02T03:04:05Z",
//!  "endpoints":{"webSocketDebuggerUrl":"ws://10.0.0.5:9000/sessions/s-1/devtools/browser/…",
//!               "httpBase":"http://10.0.0.5:9000/sessions/s-1/",
//!               "jsonVersion":"http://10.0.0.5:9000/sessions/s-1/json/version"},
//!  "token":"…","expiresAt":"2025-01-02T04:04:05Z"}
//! {"version":1,"type":"session.failed",…,"reason":"noCapacity","message":"…"}
//! {"version":1,"type":"session.terminated",…,"reason":"expired","message"?:"…"}
//! {"version":1,"type":"session.delete","sessionId":"s-1","requestId"?:"r-1",
//!  "fromInstance":"i-0abc","replyTo"?:"…","callbackUrl"?:"…"}
//! ```
//!
//! Readers ignore fields they do not know, so later versions of the agent can
//! add fields without breaking the operator.

pub mod legacy;

use crate::secret::SecretValue;
use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use serde::de::Error as _;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::ids::{RequestId, SessionId};
use super::state::NodeAnnouncement;
use super::urls::{CallbackUrl, ReplyQueueUrl};
use crate::protocol::InstanceId;

/// `type` of a reply for a session that is ready.
pub const TYPE_READY: &str = "session.ready";
/// `type` of a reply for a session that could not be started.
pub const TYPE_FAILED: &str = "session.failed";
/// `type` of a reply for a session that ended.
pub const TYPE_TERMINATED: &str = "session.terminated";
/// `type` of a delete request forwarded to the fleet's events queue.
pub const TYPE_DELETE: &str = "session.delete";

/// A reply about one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// What happened, with what only that outcome carries.
    pub kind: ReplyKind,
    /// The session. For a request that named none it is the id the agent
    /// assigned; a refused request that never got one gets a fresh id, and the
    /// requester matches the reply by `request_id`.
    pub session_id: SessionId,
    /// The requester's id for the request, if it gave one.
    pub request_id: Option<RequestId>,
    /// The instance whose agent sends the reply.
    pub instance_id: InstanceId,
    /// The request's labels, echoed.
    pub labels: BTreeMap<String, String>,
    /// When the agent wrote the reply.
    pub at: Timestamp,
}

/// The outcome a [`Reply`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    /// `session.ready`: the browser is reachable through the gateway.
    Ready(Ready),
    /// `session.failed`: the session was never started.
    Failed(Failed),
    /// `session.terminated`: the session ended.
    Terminated(Terminated),
}

impl ReplyKind {
    /// The reply's `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            ReplyKind::Ready(_) => TYPE_READY,
            ReplyKind::Failed(_) => TYPE_FAILED,
            ReplyKind::Terminated(_) => TYPE_TERMINATED,
        }
    }
}

/// What a `session.ready` reply carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    /// Where clients connect, all through the node's gateway.
    pub endpoints: Endpoints,
    /// The session token the gateway asks for.
    pub token: SessionToken,
    /// When the session's TTL ends.
    pub expires_at: Timestamp,
}

/// What a `session.failed` reply carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failed {
    /// Why, for programs.
    pub reason: FailureReason,
    /// Why, for people.
    pub message: String,
}

/// What a `session.terminated` reply carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terminated {
    /// Why the session ended.
    pub reason: TerminationReason,
    /// Details for people, e.g. the browser's exit status.
    pub message: Option<String>,
}

/// The DevTools endpoints of a session, all through the node's gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// Browser-level DevTools websocket URL (Puppeteer `browserWSEndpoint`,
    /// Playwright `connectOverCDP`).
    pub web_socket_debugger_url: String,
    /// Base of the session's HTTP endpoints, ending in `/`:
    /// `http://ADDR:PORT/sessions/ID/`.
    pub http_base: String,
    /// The session's `json/version` endpoint.
    pub json_version: String,
}

impl Endpoints {
    /// The endpoints of session `id` on the gateway at `authority`
    /// (`host:port`, an IPv6 host in brackets), for a browser whose own
    /// websocket URL has the path `browser_path`
    /// (`/devtools/browser/<uuid>`).
    pub fn through_gateway(authority: &str, id: &SessionId, browser_path: &str) -> Endpoints {
        let http_base = format!("http://{authority}/sessions/{id}/");
        let browser_path = browser_path.trim_start_matches('/');
        Endpoints {
            web_socket_debugger_url: format!("ws://{authority}/sessions/{id}/{browser_path}"),
            json_version: format!("{http_base}json/version"),
            http_base,
        }
    }
}

/// A session's gateway token. `Debug` never shows it, so a reply can be
/// logged with `{:?}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionToken(SecretValue);

impl SessionToken {
    pub fn new(token: impl Into<String>) -> Self {
        SessionToken(SecretValue::new(token))
    }

    /// The token, for the gateway and for the reply body only.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

/// Why a session could not be started (`session.failed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FailureReason {
    /// The message could not be parsed or broke a rule; `message` says which.
    InvalidRequest,
    /// A browser argument is not allowed on this fleet.
    ForbiddenArgument,
    /// The named profile is in use or not allowed on this fleet.
    ProfileUnavailable,
    /// A session with this id already exists.
    SessionExists,
    /// No slot was free for longer than the agent waits.
    NoCapacity,
    /// The browser did not start or never answered on DevTools.
    FailedToStart,
    /// The request's `startDeadline` had passed when an agent took it.
    StartTimeout,
    /// A delete for the session arrived before the session started.
    Cancelled,
    /// Anything else; a bug or an unexpected error on the node.
    Internal,
}

/// Why a session ended (`session.terminated`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TerminationReason {
    /// Its TTL passed.
    Expired,
    /// The fleet's hard maximum lifetime passed.
    HardTtlExceeded,
    /// No client used it within the fleet's never-used timeout.
    NeverUsed,
    /// The browser exited with an error.
    Crashed,
    /// The browser exited normally, e.g. after `Browser.close`.
    Closed,
    /// A delete request ended it.
    Deleted,
    /// Its instance was drained and the drain timeout passed.
    Drained,
    /// The browser stopped while it was still starting.
    FailedToStart,
    /// The agent found it after a restart without a record it could adopt,
    /// and stopped it.
    Orphaned,
    /// EC2 took its instance back (a spot interruption).
    Interrupted,
}

/// `Display` and `as_str` give the wire spelling of a reason enum.
macro_rules! wire_names {
    ($ty:ident { $($variant:ident => $name:literal),* $(,)? }) => {
        impl $ty {
            /// The reason as it is written on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),*
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_names!(FailureReason {
    InvalidRequest => "invalidRequest",
    ForbiddenArgument => "forbiddenArgument",
    ProfileUnavailable => "profileUnavailable",
    SessionExists => "sessionExists",
    NoCapacity => "noCapacity",
    FailedToStart => "failedToStart",
    StartTimeout => "startTimeout",
    Cancelled => "cancelled",
    Internal => "internal",
});

wire_names!(TerminationReason {
    Expired => "expired",
    HardTtlExceeded => "hardTtlExceeded",
    NeverUsed => "neverUsed",
    Crashed => "crashed",
    Closed => "closed",
    Deleted => "deleted",
    Drained => "drained",
    FailedToStart => "failedToStart",
    Orphaned => "orphaned",
    Interrupted => "interrupted",
});

/// A delete request an agent could not serve because it does not host the
/// session, forwarded to the fleet's events queue so the operator can pass it
/// to the agent that does. The requester's reply target travels with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventsMessage {
    /// The session to end.
    pub session_id: SessionId,
    /// The requester's id for the delete request.
    pub request_id: Option<RequestId>,
    /// The instance whose agent received the delete request.
    pub from_instance: InstanceId,
    /// The requester's reply queue, if it named one.
    pub reply_to: Option<ReplyQueueUrl>,
    /// The requester's callback, if it named one.
    pub callback_url: Option<CallbackUrl>,
}

/// A message on a fleet's events queue: a reply for a session the operator
/// asked for, a forwarded delete request, or an agent's announcement.
/// Deserialize it from the body; the `type` decides which.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FleetEvent {
    /// `session.ready`, `session.failed` or `session.terminated`.
    Reply(Reply),
    /// `session.delete`.
    Delete(EventsMessage),
    /// `node.registered` or `node.heartbeat`.
    Node(NodeAnnouncement),
}

impl Serialize for Reply {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("version", &1)?;
        map.serialize_entry("type", self.kind.type_name())?;
        map.serialize_entry("sessionId", &self.session_id)?;
        if let Some(request_id) = &self.request_id {
            map.serialize_entry("requestId", request_id)?;
        }
        map.serialize_entry("instanceId", self.instance_id.as_str())?;
        if !self.labels.is_empty() {
            map.serialize_entry("labels", &self.labels)?;
        }
        map.serialize_entry("at", &self.at.to_string())?;
        match &self.kind {
            ReplyKind::Ready(ready) => {
                map.serialize_entry("endpoints", &ready.endpoints)?;
                map.serialize_entry("token", &ready.token)?;
                map.serialize_entry("expiresAt", &ready.expires_at.to_string())?;
            }
            ReplyKind::Failed(failed) => {
                map.serialize_entry("reason", &failed.reason)?;
                map.serialize_entry("message", &failed.message)?;
            }
            ReplyKind::Terminated(terminated) => {
                map.serialize_entry("reason", &terminated.reason)?;
                if let Some(message) = &terminated.message {
                    map.serialize_entry("message", message)?;
                }
            }
        }
        map.end()
    }
}

impl Serialize for EventsMessage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("version", &1)?;
        map.serialize_entry("type", TYPE_DELETE)?;
        map.serialize_entry("sessionId", &self.session_id)?;
        if let Some(request_id) = &self.request_id {
            map.serialize_entry("requestId", request_id)?;
        }
        map.serialize_entry("fromInstance", self.from_instance.as_str())?;
        if let Some(reply_to) = &self.reply_to {
            map.serialize_entry("replyTo", reply_to)?;
        }
        if let Some(callback_url) = &self.callback_url {
            map.serialize_entry("callbackUrl", callback_url)?;
        }
        map.end()
    }
}

impl Serialize for FleetEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            FleetEvent::Reply(reply) => reply.serialize(serializer),
            FleetEvent::Delete(delete) => delete.serialize(serializer),
            FleetEvent::Node(announcement) => announcement.serialize(serializer),
        }
    }
}

/// The fields every reply has.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CommonWire {
    session_id: SessionId,
    #[serde(default)]
    request_id: Option<RequestId>,
    instance_id: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(with = "rfc3339")]
    at: Timestamp,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReadyWire {
    endpoints: Endpoints,
    token: SessionToken,
    #[serde(with = "rfc3339")]
    expires_at: Timestamp,
}

#[derive(Deserialize)]
struct FailedWire {
    reason: FailureReason,
    message: String,
}

#[derive(Deserialize)]
struct TerminatedWire {
    reason: TerminationReason,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeleteWire {
    session_id: SessionId,
    #[serde(default)]
    request_id: Option<RequestId>,
    from_instance: String,
    #[serde(default)]
    reply_to: Option<ReplyQueueUrl>,
    #[serde(default)]
    callback_url: Option<CallbackUrl>,
}

/// Reads `version` (which must be 1) and `type` of a message object.
fn version_and_type<E: serde::de::Error>(value: &Value) -> Result<&str, E> {
    let version = value.get("version").and_then(Value::as_u64);
    if version != Some(1) {
        return Err(E::custom("expected \"version\": 1"));
    }
    value
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| E::custom("missing \"type\""))
}

fn reply_from_value<E: serde::de::Error>(kind: &str, value: &Value) -> Result<Reply, E> {
    let common = CommonWire::deserialize(value).map_err(E::custom)?;
    let kind = match kind {
        TYPE_READY => {
            let ready = ReadyWire::deserialize(value).map_err(E::custom)?;
            ReplyKind::Ready(Ready {
                endpoints: ready.endpoints,
                token: ready.token,
                expires_at: ready.expires_at,
            })
        }
        TYPE_FAILED => {
            let failed = FailedWire::deserialize(value).map_err(E::custom)?;
            ReplyKind::Failed(Failed {
                reason: failed.reason,
                message: failed.message,
            })
        }
        TYPE_TERMINATED => {
            let terminated = TerminatedWire::deserialize(value).map_err(E::custom)?;
            ReplyKind::Terminated(Terminated {
                reason: terminated.reason,
                message: terminated.message,
            })
        }
        other => return Err(E::custom(format!("unknown reply type {other:?}"))),
    };
    Ok(Reply {
        kind,
        session_id: common.session_id,
        request_id: common.request_id,
        instance_id: InstanceId::new(common.instance_id),
        labels: common.labels,
        at: common.at,
    })
}

fn delete_from_value<E: serde::de::Error>(value: &Value) -> Result<EventsMessage, E> {
    let wire = DeleteWire::deserialize(value).map_err(E::custom)?;
    Ok(EventsMessage {
        session_id: wire.session_id,
        request_id: wire.request_id,
        from_instance: InstanceId::new(wire.from_instance),
        reply_to: wire.reply_to,
        callback_url: wire.callback_url,
    })
}

impl<'de> Deserialize<'de> for Reply {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let kind = version_and_type::<D::Error>(&value)?;
        reply_from_value(kind, &value)
    }
}

impl<'de> Deserialize<'de> for EventsMessage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        match version_and_type::<D::Error>(&value)? {
            TYPE_DELETE => delete_from_value(&value),
            other => Err(D::Error::custom(format!(
                "expected type {TYPE_DELETE:?}, found {other:?}"
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for FleetEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        match version_and_type::<D::Error>(&value)? {
            TYPE_DELETE => delete_from_value(&value).map(FleetEvent::Delete),
            "node.registered" | "node.heartbeat" => NodeAnnouncement::deserialize(&value)
                .map(FleetEvent::Node)
                .map_err(D::Error::custom),
            kind => reply_from_value(kind, &value).map(FleetEvent::Reply),
        }
    }
}

/// RFC 3339 timestamps (`2025-01-02T03:04:05Z`) as strings.
mod rfc3339 {
    use jiff::Timestamp;
    use serde::{Deserialize, Deserializer, de::Error as _};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|_| D::Error::custom("expected an RFC 3339 timestamp"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("valid timestamp")
    }

    fn session() -> SessionId {
        SessionId::new("s-1").expect("valid")
    }

    fn reply(kind: ReplyKind) -> Reply {
        Reply {
            kind,
            session_id: session(),
            request_id: Some(RequestId::new("r-1").expect("valid")),
            instance_id: InstanceId::new("i-0abc1234def567890"),
            labels: BTreeMap::from([("team".to_owned(), "a".to_owned())]),
            at: at("2025-01-02T03:04:05Z"),
        }
    }

    fn ready() -> Reply {
        reply(ReplyKind::Ready(Ready {
            endpoints: Endpoints::through_gateway(
                "10.0.0.5:9000",
                &session(),
                "/devtools/browser/6f1c",
            ),
            token: SessionToken::new("tok-123"),
            expires_at: at("2025-01-02T04:04:05Z"),
        }))
    }

    #[test]
    fn ready_reply_has_the_exact_wire_form() {
        assert_eq!(
            serde_json::to_string(&ready()).ok(),
            Some(
                concat!(
                    r#"{"version":1,"type":"session.ready","sessionId":"s-1","requestId":"r-1","#,
                    r#""instanceId":"i-0abc1234def567890","labels":{"team":"a"},"#,
                    r#""at":"2025-01-02T03:04:05Z","endpoints":{"#,
                    r#""webSocketDebuggerUrl":"ws://10.0.0.5:9000/sessions/s-1/devtools/browser/6f1c","#,
                    r#""httpBase":"http://10.0.0.5:9000/sessions/s-1/","#,
                    r#""jsonVersion":"http://10.0.0.5:9000/sessions/s-1/json/version"},"#,
                    r#""token":"tok-123","expiresAt":"2025-01-02T04:04:05Z"}"#
                )
                .to_owned()
            )
        );
    }

    #[test]
    fn failed_reply_has_the_exact_wire_form() {
        let mut failed = reply(ReplyKind::Failed(Failed {
            reason: FailureReason::ForbiddenArgument,
            message: "args[0] \"--no-sandbox\": blocked".into(),
        }));
        failed.request_id = None;
        failed.labels.clear();
        assert_eq!(
            serde_json::to_value(&failed).ok(),
            Some(json!({
                "version": 1,
                "type": "session.failed",
                "sessionId": "s-1",
                "instanceId": "i-0abc1234def567890",
                "at": "2025-01-02T03:04:05Z",
                "reason": "forbiddenArgument",
                "message": "args[0] \"--no-sandbox\": blocked",
            }))
        );
    }

    #[test]
    fn terminated_reply_has_the_exact_wire_form() {
        let with_message = reply(ReplyKind::Terminated(Terminated {
            reason: TerminationReason::Crashed,
            message: Some("exit status 139".into()),
        }));
        assert_eq!(
            serde_json::to_value(&with_message).ok(),
            Some(json!({
                "version": 1,
                "type": "session.terminated",
                "sessionId": "s-1",
                "requestId": "r-1",
                "instanceId": "i-0abc1234def567890",
                "labels": {"team": "a"},
                "at": "2025-01-02T03:04:05Z",
                "reason": "crashed",
                "message": "exit status 139",
            }))
        );
        let bare = reply(ReplyKind::Terminated(Terminated {
            reason: TerminationReason::HardTtlExceeded,
            message: None,
        }));
        let value = serde_json::to_value(&bare).expect("serializable");
        assert_eq!(value.get("reason"), Some(&json!("hardTtlExceeded")));
        assert_eq!(value.get("message"), None);
    }

    #[test]
    fn replies_read_back_as_written() {
        let samples = [
            ready(),
            reply(ReplyKind::Failed(Failed {
                reason: FailureReason::NoCapacity,
                message: "all 4 slots busy".into(),
            })),
            reply(ReplyKind::Terminated(Terminated {
                reason: TerminationReason::Orphaned,
                message: None,
            })),
        ];
        for sample in samples {
            let text = serde_json::to_string(&sample).expect("serializable");
            let back: Reply = serde_json::from_str(&text).expect("readable");
            assert_eq!(back, sample);
            let event: FleetEvent = serde_json::from_str(&text).expect("readable");
            assert_eq!(event, FleetEvent::Reply(sample));
        }
    }

    #[test]
    fn readers_ignore_unknown_fields_and_refuse_other_versions() {
        let mut value = serde_json::to_value(ready()).expect("serializable");
        value["addedLater"] = json!({"x": 1});
        assert!(serde_json::from_value::<Reply>(value.clone()).is_ok());
        value["version"] = json!(2);
        assert!(serde_json::from_value::<Reply>(value.clone()).is_err());
        value["version"] = json!(1);
        value["type"] = json!("session.paused");
        assert!(serde_json::from_value::<Reply>(value).is_err());
    }

    #[test]
    fn every_termination_reason_has_its_camel_case_name() {
        let all = [
            (TerminationReason::Expired, "expired"),
            (TerminationReason::HardTtlExceeded, "hardTtlExceeded"),
            (TerminationReason::NeverUsed, "neverUsed"),
            (TerminationReason::Crashed, "crashed"),
            (TerminationReason::Closed, "closed"),
            (TerminationReason::Deleted, "deleted"),
            (TerminationReason::Drained, "drained"),
            (TerminationReason::FailedToStart, "failedToStart"),
            (TerminationReason::Orphaned, "orphaned"),
            (TerminationReason::Interrupted, "interrupted"),
        ];
        for (reason, name) in all {
            assert_eq!(reason.to_string(), name);
            assert_eq!(serde_json::to_value(reason).ok(), Some(json!(name)));
            assert_eq!(serde_json::from_value(json!(name)).ok(), Some(reason));
        }
    }

    #[test]
    fn every_failure_reason_serializes_as_its_display_name() {
        for reason in [
            FailureReason::InvalidRequest,
            FailureReason::ForbiddenArgument,
            FailureReason::ProfileUnavailable,
            FailureReason::SessionExists,
            FailureReason::NoCapacity,
            FailureReason::FailedToStart,
            FailureReason::StartTimeout,
            FailureReason::Cancelled,
            FailureReason::Internal,
        ] {
            assert_eq!(
                serde_json::to_value(reason).ok(),
                Some(json!(reason.to_string()))
            );
        }
    }

    #[test]
    fn forwarded_delete_has_the_exact_wire_form_and_reads_back() {
        let delete = EventsMessage {
            session_id: session(),
            request_id: Some(RequestId::new("r-9").expect("valid")),
            from_instance: InstanceId::new("i-0123456789abcdef0"),
            reply_to: None,
            callback_url: Some(CallbackUrl::new("https://hooks.example.com/bf").expect("valid")),
        };
        let text = serde_json::to_string(&delete).expect("serializable");
        assert_eq!(
            text,
            concat!(
                r#"{"version":1,"type":"session.delete","sessionId":"s-1","requestId":"r-9","#,
                r#""fromInstance":"i-0123456789abcdef0","callbackUrl":"https://hooks.example.com/bf"}"#
            )
        );
        assert_eq!(
            serde_json::from_str::<EventsMessage>(&text).ok(),
            Some(delete.clone())
        );
        assert_eq!(
            serde_json::from_str::<FleetEvent>(&text).ok(),
            Some(FleetEvent::Delete(delete))
        );
        assert!(
            serde_json::from_str::<EventsMessage>(&serde_json::to_string(&ready()).expect("ok"))
                .is_err()
        );
    }

    #[test]
    fn debug_output_hides_the_token() {
        let shown = format!("{:?}", ready());
        assert!(!shown.contains("tok-123"), "{shown}");
    }

    #[test]
    fn gateway_endpoints_accept_a_browser_path_with_or_without_slash() {
        let id = session();
        assert_eq!(
            Endpoints::through_gateway("h:1", &id, "devtools/browser/x"),
            Endpoints::through_gateway("h:1", &id, "/devtools/browser/x")
        );
    }
}
