//! The operator's client of the agents' control API: one typed call per
//! endpoint, each bounded by a timeout, so that observing a fleet never
//! waits on a node that does not answer.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::protocol::state::{AgentState, StateError};
use crate::protocol::{DeleteRequester, SessionId};

/// Largest state document read: a full node's is a few KiB.
const MAX_STATE_BYTES: usize = 1024 * 1024;

/// Why an agent's answer could not be had. Every variant means "unknown",
/// never "idle": the caller must not retire a node it cannot see.
#[derive(Debug, thiserror::Error)]
pub enum AgentCallError {
    /// No answer within the timeout, or no connection.
    #[error("agent at {address} did not answer: {reason}")]
    Unreachable {
        /// `host:port` called.
        address: String,
        /// What went wrong.
        reason: String,
    },
    /// The agent refused the fleet token (wrong fleet, or rotated secret).
    #[error("agent at {address} refused the fleet token")]
    Unauthorized {
        /// `host:port` called.
        address: String,
    },
    /// Any other status.
    #[error("agent at {address} answered {status}")]
    Unexpected {
        /// `host:port` called.
        address: String,
        /// The HTTP status.
        status: u16,
    },
    /// A body that is not a state document this build reads.
    #[error("agent at {address}: {source}")]
    Malformed {
        /// `host:port` called.
        address: String,
        /// Why it cannot be read.
        source: StateError,
    },
}

/// What ending a session on an agent found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The agent hosted it and ended it.
    Ended,
    /// The agent does not host it.
    NotHosted,
}

/// Calls agents' control APIs.
#[derive(Clone)]
pub struct AgentClient {
    http: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl AgentClient {
    /// A client whose every call ends within `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        Self {
            http: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }

    /// `GET /v1/state` of the agent at `address` (`host:port`).
    pub async fn state(&self, address: &str, token: &str) -> Result<AgentState, AgentCallError> {
        let (status, body) = self.call("GET", address, "/v1/state", token).await?;
        match status {
            200 => AgentState::parse(&body).map_err(|source| AgentCallError::Malformed {
                address: address.to_owned(),
                source,
            }),
            other => Err(refused(address, other)),
        }
    }

    /// `POST /v1/drain`: the agent takes no new sessions and exits once the
    /// last one ends or its drain timeout passes. Draining twice is fine.
    pub async fn drain(&self, address: &str, token: &str) -> Result<(), AgentCallError> {
        match self.call("POST", address, "/v1/drain", token).await?.0 {
            200..=299 => Ok(()),
            other => Err(refused(address, other)),
        }
    }

    /// `DELETE /v1/sessions/{id}?forward=false`: ends the session if the
    /// agent hosts it; otherwise the agent refuses a later create of it
    /// (and, unlike a requester's delete, does not forward it).
    pub async fn end_session(
        &self,
        address: &str,
        token: &str,
        id: &SessionId,
    ) -> Result<SessionEnd, AgentCallError> {
        self.end_session_for(address, token, id, &DeleteRequester::default())
            .await
    }

    /// [`AgentClient::end_session`] for a requester's delete: the agent that
    /// ends the session answers `requester` too (`session.terminated`, its
    /// request id echoed); one that does not host it ignores it.
    pub async fn end_session_for(
        &self,
        address: &str,
        token: &str,
        id: &SessionId,
        requester: &DeleteRequester,
    ) -> Result<SessionEnd, AgentCallError> {
        let mut path = format!("/v1/sessions/{id}?forward=false");
        let query = requester.query();
        if !query.is_empty() {
            path.push('&');
            path.push_str(&query);
        }
        match self.call("DELETE", address, &path, token).await?.0 {
            200 | 204 => Ok(SessionEnd::Ended),
            // 202: an agent that predates `forward=false` forwarded it.
            202 | 404 => Ok(SessionEnd::NotHosted),
            other => Err(refused(address, other)),
        }
    }

    async fn call(
        &self,
        method: &str,
        address: &str,
        path: &str,
        token: &str,
    ) -> Result<(u16, Bytes), AgentCallError> {
        let unreachable = |reason: String| AgentCallError::Unreachable {
            address: address.to_owned(),
            reason,
        };
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{address}{path}"))
            .header("authorization", format!("Bearer {token}"))
            .body(Empty::new())
            .map_err(|e| unreachable(format!("invalid address: {e}")))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_STATE_BYTES)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(reason)) => Err(unreachable(reason)),
            Err(_) => Err(unreachable(format!("no answer within {:?}", self.timeout))),
        }
    }
}

fn refused(address: &str, status: u16) -> AgentCallError {
    match status {
        401 | 403 => AgentCallError::Unauthorized {
            address: address.to_owned(),
        },
        status => AgentCallError::Unexpected {
            address: address.to_owned(),
            status,
        },
    }
}
