//! The agent's one HTTP listener: health, the control API (fleet token),
//! metrics, and the DevTools gateway (session token).
//!
//! The gateway is the only way to a browser: each browser's DevTools listens
//! on 127.0.0.1. `json/*` answers are fetched from the browser and their
//! websocket URLs rewritten to point back at the gateway; a websocket is
//! relayed message by message after the handshake ([`super::cdp_relay`]),
//! each command from the client judged by the session policy
//! ([`super::cdp_filter`]).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio::net::TcpStream;

use super::cdp_relay::{self, RelayContext};
use super::end::{DeleteOutcome, NotHostedDelete};
use super::replies::ReplyTargets;
use super::runtime::Agent;
use super::sessions::GatewayRoute;
use super::table::token_digest;
use super::tombstones::TOMBSTONE_TTL;
use crate::cloud::queues::Queues;
use crate::protocol::{DeleteRequester, SessionId};
use crate::secret::SecretValue;

/// Largest handshake answer read from a browser.
const MAX_HANDSHAKE_BYTES: usize = 16 * 1024;

/// The router of the agent's listener.
pub fn router<Q: Queues + 'static>(agent: Arc<Agent<Q>>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics::<Q>))
        .route("/v1/state", get(state::<Q>))
        .route("/v1/drain", post(drain::<Q>))
        .route("/v1/sessions/{id}", delete(delete_session::<Q>))
        // The discovery paths Chromium answers, and as it does: with and
        // without a trailing slash, except `json/` itself (404 there too).
        // Playwright's connectOverCDP asks for `json/version/`.
        .route("/sessions/{id}/json", get(json_list::<Q>))
        .route("/sessions/{id}/json/list", get(json_list::<Q>))
        .route("/sessions/{id}/json/list/", get(json_list::<Q>))
        .route("/sessions/{id}/json/version", get(json_version::<Q>))
        .route("/sessions/{id}/json/version/", get(json_version::<Q>))
        .route("/sessions/{id}/devtools/{*target}", get(websocket::<Q>))
        .with_state(agent)
}

fn status(code: StatusCode, message: &str) -> Response {
    (code, format!("{message}\n")).into_response()
}

/// The token of a request: `Authorization: Bearer …`, or the `token` query
/// parameter (for websocket clients that cannot set headers).
fn presented_token<'a>(headers: &'a HeaderMap, query: &'a TokenQuery) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or(query.token.as_ref().map(SecretValue::expose))
}

pub(crate) fn same_secret(presented: &str, expected: &str) -> bool {
    // Length is not secret (all tokens have the same); the bytes are.
    presented.len() == expected.len() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// The `token` query parameter.
#[derive(Deserialize, Default)]
pub struct TokenQuery {
    token: Option<SecretValue>,
}

/// The query of `DELETE /v1/sessions/{id}` besides the token, read with a
/// `Query` extractor of its own (both ignore the other's parameters).
#[derive(Deserialize)]
pub struct DeleteQuery {
    /// `forward=false`: a delete of a session not hosted here only records
    /// its tombstone and answers 404, instead of forwarding it to the
    /// events queue (202). The operator, which sends the delete to every
    /// agent of the fleet, asks for this.
    #[serde(default = "forward_by_default")]
    forward: bool,
}

fn forward_by_default() -> bool {
    true
}

impl DeleteQuery {
    fn not_hosted(&self) -> NotHostedDelete {
        if self.forward {
            NotHostedDelete::Forward
        } else {
            NotHostedDelete::RecordOnly
        }
    }
}

fn fleet_authorized<Q: Queues + 'static>(
    agent: &Agent<Q>,
    headers: &HeaderMap,
    query: &TokenQuery,
) -> bool {
    presented_token(headers, query).is_some_and(|t| same_secret(t, agent.fleet_token()))
}

async fn metrics<Q: Queues + 'static>(State(agent): State<Arc<Agent<Q>>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        agent.render_metrics(),
    )
        .into_response()
}

async fn state<Q: Queues + 'static>(
    State(agent): State<Arc<Agent<Q>>>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Response {
    if !fleet_authorized(&agent, &headers, &query) {
        return status(StatusCode::UNAUTHORIZED, "fleet token required");
    }
    axum::Json(agent.state_view()).into_response()
}

async fn drain<Q: Queues + 'static>(
    State(agent): State<Arc<Agent<Q>>>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Response {
    if !fleet_authorized(&agent, &headers, &query) {
        return status(StatusCode::UNAUTHORIZED, "fleet token required");
    }
    agent.start_drain();
    status(StatusCode::ACCEPTED, "draining")
}

async fn delete_session<Q: Queues + 'static>(
    State(agent): State<Arc<Agent<Q>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    Query(options): Query<DeleteQuery>,
    Query(requester): Query<DeleteRequester>,
) -> Response {
    if !fleet_authorized(&agent, &headers, &query) {
        return status(StatusCode::UNAUTHORIZED, "fleet token required");
    }
    let Ok(id) = id.parse::<SessionId>() else {
        return status(StatusCode::BAD_REQUEST, "invalid session id");
    };
    // In a task of its own: a client that hangs up must not cancel the end
    // of a session half-way.
    let ending = {
        let agent = agent.clone();
        let not_hosted = options.not_hosted();
        // The requester of a delete the operator passes on: answered here
        // when the session ends here.
        let targets =
            ReplyTargets::new(requester.reply_to.as_ref(), requester.callback_url.as_ref());
        tokio::spawn(async move {
            agent
                .delete_session(&id, requester.request_id, targets, not_hosted)
                .await
        })
    };
    let Ok(outcome) = ending.await else {
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ending the session failed",
        );
    };
    match outcome {
        DeleteOutcome::Ended => status(StatusCode::OK, "session ended"),
        DeleteOutcome::Forwarded => status(
            StatusCode::ACCEPTED,
            "session not hosted here; forwarded to the fleet's events queue",
        ),
        DeleteOutcome::NotHosted => status(
            StatusCode::NOT_FOUND,
            &format!(
                "session not hosted here; a create for it will be refused here for the next {} minutes",
                TOMBSTONE_TTL.as_secs() / 60
            ),
        ),
        DeleteOutcome::ForwardFailed(message) => status(StatusCode::BAD_GATEWAY, &message),
    }
}

/// Why the gateway refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No such session here: 404.
    UnknownSession,
    /// No token: 401.
    NoToken,
    /// A token, but not this session's (another session's, say): 403.
    WrongToken,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::UnknownSession => {
                status(StatusCode::NOT_FOUND, "no such session on this instance")
            }
            Refusal::NoToken => status(StatusCode::UNAUTHORIZED, "session token required"),
            Refusal::WrongToken => {
                status(StatusCode::FORBIDDEN, "token does not open this session")
            }
        }
    }
}

/// Finds the session and checks its token.
fn authorize<Q: Queues + 'static>(
    agent: &Agent<Q>,
    id: &str,
    headers: &HeaderMap,
    query: &TokenQuery,
) -> Result<GatewayRoute, Refusal> {
    let route = id
        .parse::<SessionId>()
        .ok()
        .and_then(|id| agent.route(&id))
        .ok_or(Refusal::UnknownSession)?;
    match presented_token(headers, query) {
        None => Err(Refusal::NoToken),
        Some(token) if route.admits(&token_digest(token)) => Ok(route),
        Some(_) => Err(Refusal::WrongToken),
    }
}

/// The gateway's own address as the client reached it, for rewritten URLs.
fn gateway_host<Q: Queues + 'static>(agent: &Agent<Q>, headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| agent.advertised_gateway())
}

/// Rewrites the browser's own DevTools URLs in a `json/*` document to the
/// gateway's. A token given in the query is carried into the websocket URLs,
/// so clients that simply follow `webSocketDebuggerUrl` get in.
fn rewrite_urls(
    value: &mut serde_json::Value,
    port: u16,
    gateway: &str,
    id: &SessionId,
    token: Option<&str>,
) {
    let local = format!("127.0.0.1:{port}/");
    let public = format!("{gateway}/sessions/{id}/");
    let rewrite_one = |target: &mut serde_json::Map<String, serde_json::Value>| {
        if let Some(serde_json::Value::String(url)) = target.get_mut("webSocketDebuggerUrl") {
            *url = url.replace(&local, &public);
            if let Some(token) = token {
                url.push_str("?token=");
                url.push_str(token);
            }
        }
        if let Some(serde_json::Value::String(url)) = target.get_mut("devtoolsFrontendUrl") {
            *url = url.replace(&local, &public);
        }
    };
    match value {
        serde_json::Value::Array(targets) => {
            for target in targets {
                if let serde_json::Value::Object(target) = target {
                    rewrite_one(target);
                }
            }
        }
        serde_json::Value::Object(target) => rewrite_one(target),
        _ => {}
    }
}

async fn json_document<Q: Queues + 'static>(
    agent: &Agent<Q>,
    id: &str,
    path: &str,
    headers: &HeaderMap,
    query: &TokenQuery,
) -> Response {
    let route = match authorize(agent, id, headers, query) {
        Ok(route) => route,
        Err(refusal) => return refusal.into_response(),
    };
    route.mark_used();
    let body = match agent.devtools_document(&route, path).await {
        Ok(body) => body,
        Err(error) => return status(StatusCode::BAD_GATEWAY, &error.to_string()),
    };
    let Ok(mut document) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return status(
            StatusCode::BAD_GATEWAY,
            "the browser answered something that is not JSON",
        );
    };
    let gateway = gateway_host(agent, headers);
    rewrite_urls(
        &mut document,
        route.port.0,
        &gateway,
        &route.id,
        query.token.as_ref().map(SecretValue::expose),
    );
    axum::Json(document).into_response()
}

async fn json_list<Q: Queues + 'static>(
    State(agent): State<Arc<Agent<Q>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Response {
    json_document(&agent, &id, "/json/list", &headers, &query).await
}

async fn json_version<Q: Queues + 'static>(
    State(agent): State<Arc<Agent<Q>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Response {
    json_document(&agent, &id, "/json/version", &headers, &query).await
}

/// Relays a DevTools websocket (`/sessions/{id}/devtools/browser/…` or
/// `…/page/…`) to the browser, every client command through the CDP filter
/// ([`cdp_relay::relay`]).
///
/// The gateway does the handshake with the browser first, with the client's
/// key, and answers the client with the browser's accept value only once the
/// browser agreed, so a refused target is a clean HTTP error to the client.
/// The client's Origin is not forwarded: the token, not the origin, is what
/// admits a client, and Chromium refuses websocket clients with an origin it
/// was not told to allow.
async fn websocket<Q: Queues + 'static>(
    State(agent): State<Arc<Agent<Q>>>,
    Path((id, target)): Path<(String, String)>,
    Query(query): Query<TokenQuery>,
    mut request: Request,
) -> Response {
    let route = match authorize(&agent, &id, request.headers(), &query) {
        Ok(route) => route,
        Err(refusal) => return refusal.into_response(),
    };
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrade {
        return status(StatusCode::BAD_REQUEST, "a websocket upgrade is required");
    }
    let protocol = request
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 256 && v.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        .map(str::to_owned);
    let Some(key) = request
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|k| k.to_str().ok())
        .filter(|k| k.len() <= 64 && k.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
    else {
        return status(StatusCode::BAD_REQUEST, "a websocket upgrade is required");
    };
    if !target
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_/.".contains(&b))
    {
        return status(StatusCode::BAD_REQUEST, "invalid DevTools target path");
    }
    let path = format!("/devtools/{target}");
    let handshake = browser_handshake(route.port.0, &path, &key, protocol.as_deref()).await;
    let (upstream, accept) = match handshake {
        Ok(connected) => connected,
        Err(message) => return status(StatusCode::BAD_GATEWAY, &message),
    };
    route.mark_used();
    let on_upgrade = hyper::upgrade::on(&mut request);
    let context = RelayContext {
        session: route.id.clone(),
        files: route.files.clone(),
        refusals: agent.cdp_refusals(),
    };
    agent.lingering().spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        cdp_relay::relay(TokioIo::new(upgraded), upstream, context).await;
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept.accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(Ok(protocol)) = accept.protocol.as_deref().map(HeaderValue::from_str) {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response
}

/// The browser's answer to the websocket handshake.
struct Accepted {
    /// `Sec-WebSocket-Accept`.
    accept: String,
    /// `Sec-WebSocket-Protocol`, when the browser chose one.
    protocol: Option<String>,
}

/// Opens the websocket to the browser through hyper's HTTP/1 client, which
/// hands the connection over after the browser's 101 (with any bytes it
/// read past the answer): returns that connection and the browser's answer.
async fn browser_handshake(
    port: u16,
    path: &str,
    key: &str,
    protocol: Option<&str>,
) -> Result<(TokioIo<hyper::upgrade::Upgraded>, Accepted), String> {
    let connect = async {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("browser unreachable: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(MAX_HANDSHAKE_BYTES)
            .handshake::<_, Body>(TokioIo::new(stream))
            .await
            .map_err(|e| format!("browser handshake: {e}"))?;
        tokio::spawn(connection.with_upgrades());
        let mut request = axum::http::Request::get(path)
            .header(header::HOST, format!("127.0.0.1:{port}"))
            .header(header::UPGRADE, "websocket")
            .header(header::CONNECTION, "Upgrade")
            .header(header::SEC_WEBSOCKET_KEY, key)
            .header(header::SEC_WEBSOCKET_VERSION, "13");
        if let Some(protocol) = protocol {
            request = request.header(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        let request = request
            .body(Body::empty())
            .map_err(|e| format!("browser handshake: {e}"))?;
        let mut response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("browser handshake: {e}"))?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(format!(
                "browser refused the websocket: {}",
                response.status()
            ));
        }
        let header = |name: header::HeaderName| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let accepted = Accepted {
            accept: header(header::SEC_WEBSOCKET_ACCEPT)
                .ok_or("browser handshake without Sec-WebSocket-Accept")?,
            protocol: header(header::SEC_WEBSOCKET_PROTOCOL),
        };
        let upgraded = hyper::upgrade::on(&mut response)
            .await
            .map_err(|e| format!("browser handshake: {e}"))?;
        Ok((TokioIo::new(upgraded), accepted))
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), connect)
        .await
        .map_err(|_| "browser handshake timed out".to_owned())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_urls_point_back_at_the_gateway_with_the_query_token() {
        let id: SessionId = "s-1".parse().unwrap();
        let mut list = serde_json::json!([{
            "type": "page",
            "webSocketDebuggerUrl": "ws://127.0.0.1:9301/devtools/page/AB",
            "devtoolsFrontendUrl": "/devtools/inspector.html?ws=127.0.0.1:9301/devtools/page/AB"
        }]);
        rewrite_urls(&mut list, 9301, "10.0.0.5:9222", &id, Some("tok"));
        assert_eq!(
            list[0]["webSocketDebuggerUrl"],
            "ws://10.0.0.5:9222/sessions/s-1/devtools/page/AB?token=tok"
        );
        assert_eq!(
            list[0]["devtoolsFrontendUrl"],
            "/devtools/inspector.html?ws=10.0.0.5:9222/sessions/s-1/devtools/page/AB"
        );
    }

    #[test]
    fn secrets_compare_by_content_and_length() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abd", "abc"));
        assert!(!same_secret("ab", "abc"));
    }
}
