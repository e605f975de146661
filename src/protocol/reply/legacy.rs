//! Replies in the shape the Browser Automation Launcher's consumers read,
//! for fleets whose `spec.agent.replies.format` is `launcher`.
//!
//! ```json
//! {"status":"ready","type":"session.ready","session_id":"s-1","id":"job-8",
//!  "requester_id":"team-a","worker_id":"i-0abc","timestamp":"2025-01-02T03:04:05Z",
//!  "debug_port":9000,
//!  "websocket_url":"ws://10.0.0.5:9000/sessions/s-1/devtools/browser/…?token=…",
//!  "debug_url":"http://10.0.0.5:9000/sessions/s-1/?token=…",
//!  "expires_at":"2025-01-02T04:04:05Z","token":"…"}
//! {"status":"failed","type":"session.failed",…,"reason":"noCapacity","error":"…"}
//! {"status":"terminated","type":"session.terminated",…,"reason":"expired","message"?:"…"}
//! ```
//!
//! | v1 field (`crate::protocol::reply`) | launcher field |
//! |-------------------------------------|----------------|
//! | `type` `session.ready` / `.failed` / `.terminated` | `status` `ready` / `failed` / `terminated` (and `type` unchanged) |
//! | `sessionId`                          | `session_id`   |
//! | `requestId`                          | `id`           |
//! | `labels.requester`                   | `requester_id` |
//! | `instanceId`                         | `worker_id`    |
//! | `at`                                 | `timestamp`    |
//! | the gateway's port                   | `debug_port`   |
//! | `endpoints.webSocketDebuggerUrl` + `?token=` | `websocket_url` |
//! | `endpoints.httpBase` + `?token=`     | `debug_url`    |
//! | `expiresAt`                          | `expires_at`   |
//! | `token`                              | `token`        |
//! | `reason`, `message` (failed)         | `reason`, `error` |
//! | `reason`, `message` (terminated)     | `reason`, `message` |
//! | `labels`                             | `labels`       |
//!
//! Both URLs carry the session token in their query, so a client that knows
//! nothing of tokens connects with the URL alone: the gateway takes the
//! `token` query parameter and carries it into every URL it hands back.
//! `debug_url` is the base of the session's DevTools HTTP endpoints:
//! Playwright's `connectOverCDP(debug_url)` puts `json/version/` in front
//! of the query; a client building URLs by hand does the same.

use serde_json::{Map, Value};

use super::{Reply, ReplyKind};
use crate::protocol::request::legacy::REQUESTER_LABEL;

/// `reply` in the launcher's field names.
pub fn to_json(reply: &Reply) -> Value {
    let mut body = Map::new();
    let status = match &reply.kind {
        ReplyKind::Ready(_) => "ready",
        ReplyKind::Failed(_) => "failed",
        ReplyKind::Terminated(_) => "terminated",
    };
    body.insert("status".into(), status.into());
    body.insert("type".into(), reply.kind.type_name().into());
    body.insert("session_id".into(), reply.session_id.to_string().into());
    if let Some(id) = &reply.request_id {
        body.insert("id".into(), id.to_string().into());
    }
    if let Some(requester) = reply.labels.get(REQUESTER_LABEL) {
        body.insert("requester_id".into(), requester.clone().into());
    }
    body.insert("worker_id".into(), reply.instance_id.as_str().into());
    body.insert("timestamp".into(), reply.at.to_string().into());
    match &reply.kind {
        ReplyKind::Ready(ready) => {
            let token = ready.token.expose();
            let endpoints = &ready.endpoints;
            if let Some(port) = port_of(&endpoints.http_base) {
                body.insert("debug_port".into(), port.into());
            }
            body.insert(
                "websocket_url".into(),
                with_token(&endpoints.web_socket_debugger_url, token).into(),
            );
            body.insert(
                "debug_url".into(),
                with_token(&endpoints.http_base, token).into(),
            );
            body.insert("expires_at".into(), ready.expires_at.to_string().into());
            body.insert("token".into(), token.into());
        }
        ReplyKind::Failed(failed) => {
            body.insert("reason".into(), failed.reason.as_str().into());
            body.insert("error".into(), failed.message.clone().into());
        }
        ReplyKind::Terminated(terminated) => {
            body.insert("reason".into(), terminated.reason.as_str().into());
            if let Some(message) = &terminated.message {
                body.insert("message".into(), message.clone().into());
            }
        }
    }
    if !reply.labels.is_empty() {
        let labels = reply
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect();
        body.insert("labels".into(), Value::Object(labels));
    }
    Value::Object(body)
}

/// `url` with the token as its query. Tokens are hex digits
/// (`crate::agent::launch::new_token`), which need no escaping; gateway URLs
/// have no query of their own.
fn with_token(url: &str, token: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}token={token}")
}

/// The port of an `http://host:port/…` URL (80 when it names none).
fn port_of(url: &str) -> Option<u16> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') && !host.is_empty() => port.parse().ok(),
        _ => Some(80),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::protocol::InstanceId;
    use crate::protocol::reply::{
        Endpoints, Failed, FailureReason, Ready, SessionToken, Terminated, TerminationReason,
    };
    use crate::protocol::{RequestId, SessionId};

    fn reply(kind: ReplyKind) -> Reply {
        Reply {
            kind,
            session_id: SessionId::new("s-1").expect("valid"),
            request_id: RequestId::new("job-8").ok(),
            instance_id: InstanceId::new("i-0abc"),
            labels: BTreeMap::from([(REQUESTER_LABEL.to_owned(), "team-a".to_owned())]),
            at: "2025-01-02T03:04:05Z".parse().expect("time"),
        }
    }

    #[test]
    fn a_ready_reply_has_the_launcher_fields_with_the_token_in_the_urls() {
        let ready = reply(ReplyKind::Ready(Ready {
            endpoints: Endpoints::through_gateway(
                "10.0.0.5:9000",
                &SessionId::new("s-1").expect("valid"),
                "/devtools/browser/abc",
            ),
            token: SessionToken::new("0123abcd"),
            expires_at: "2025-01-02T04:04:05Z".parse().expect("time"),
        }));
        assert_eq!(
            to_json(&ready),
            json!({
                "status": "ready",
                "type": "session.ready",
                "session_id": "s-1",
                "id": "job-8",
                "requester_id": "team-a",
                "worker_id": "i-0abc",
                "timestamp": "2025-01-02T03:04:05Z",
                "debug_port": 9000,
                "websocket_url": "ws://10.0.0.5:9000/sessions/s-1/devtools/browser/abc?token=0123abcd",
                "debug_url": "http://10.0.0.5:9000/sessions/s-1/?token=0123abcd",
                "expires_at": "2025-01-02T04:04:05Z",
                "token": "0123abcd",
                "labels": {"requester": "team-a"},
            })
        );
    }

    #[test]
    fn failures_and_ends_carry_their_reason() {
        let failed = to_json(&reply(ReplyKind::Failed(Failed {
            reason: FailureReason::NoCapacity,
            message: "full".into(),
        })));
        assert_eq!(failed["status"], "failed");
        assert_eq!(failed["reason"], "noCapacity");
        assert_eq!(failed["error"], "full");
        assert!(failed.get("websocket_url").is_none());
        let ended = to_json(&reply(ReplyKind::Terminated(Terminated {
            reason: TerminationReason::Deleted,
            message: None,
        })));
        assert_eq!(ended["status"], "terminated");
        assert_eq!(ended["reason"], "deleted");
        assert_eq!(ended["id"], "job-8");
    }

    #[test]
    fn ports_come_from_the_authority() {
        assert_eq!(port_of("http://10.0.0.5:9000/sessions/s/"), Some(9000));
        assert_eq!(port_of("http://[::1]:9001/sessions/s/"), Some(9001));
        assert_eq!(port_of("http://[::1]/sessions/s/"), Some(80));
        assert_eq!(port_of("http://host/sessions/s/"), Some(80));
        assert_eq!(port_of("no url"), None);
    }
}
