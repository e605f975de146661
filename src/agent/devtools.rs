//! Talking to a browser's own DevTools endpoint on 127.0.0.1: the HTTP
//! `json/*` documents and the readiness check.
//!
//! A browser is ready when a CDP command round-trips over its browser
//! websocket (`Browser.getVersion`). An open port, or even an answer on
//! `/json/version`, comes earlier than that: Chromium serves the HTTP
//! endpoints before its browser target accepts commands, and a client handed
//! the endpoint then fails on its first call.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use thiserror::Error;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::slots::Port;

/// Longest a single DevTools HTTP call or websocket step may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest `json/*` answer read (a browser with hundreds of targets stays far
/// below it).
const MAX_JSON_BYTES: usize = 4 * 1024 * 1024;

/// What went wrong talking to a browser's DevTools.
#[derive(Debug, Error)]
pub enum DevToolsError {
    /// Nothing answered, or the answer was cut off.
    #[error("DevTools on port {port} did not answer: {message}")]
    Unreachable {
        /// The browser's port.
        port: Port,
        /// What happened.
        message: String,
    },
    /// It answered something that is not DevTools.
    #[error("DevTools on port {port} answered unexpectedly: {message}")]
    Unexpected {
        /// The browser's port.
        port: Port,
        /// What was wrong.
        message: String,
    },
    /// The deadline passed before the browser was ready.
    #[error("DevTools on port {port} not ready after {waited:?}: {last}")]
    NotReady {
        /// The browser's port.
        port: Port,
        /// How long the agent waited.
        waited: Duration,
        /// The last failure seen.
        last: String,
    },
}

/// `/json/version` of a browser.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct BrowserVersion {
    /// Product and version, e.g. `Chrome/148.0.7778.167`.
    #[serde(rename = "Browser")]
    pub browser: String,
    /// The browser target's websocket URL.
    #[serde(rename = "webSocketDebuggerUrl")]
    pub web_socket_debugger_url: String,
}

impl BrowserVersion {
    /// The path of the browser target (`/devtools/browser/<id>`).
    pub fn browser_path(&self) -> Option<&str> {
        let rest = self.web_socket_debugger_url.strip_prefix("ws://")?;
        rest.find('/').map(|i| &rest[i..])
    }
}

/// A client for the DevTools HTTP endpoints of local browsers.
#[derive(Clone)]
pub struct DevTools {
    http: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for DevTools {
    fn default() -> Self {
        Self::new()
    }
}

impl DevTools {
    /// A client with pooled connections.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CALL_TIMEOUT));
        connector.set_nodelay(true);
        DevTools {
            http: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// GETs `path` (e.g. `/json/list`) from the browser on `port`.
    pub async fn get(&self, port: Port, path: &str) -> Result<Bytes, DevToolsError> {
        let unreachable = |message: String| DevToolsError::Unreachable { port, message };
        let uri: hyper::Uri = format!("http://127.0.0.1:{port}{path}")
            .parse()
            .map_err(|e| unreachable(format!("bad path {path:?}: {e}")))?;
        let call = async {
            let response = self
                .http
                .get(uri)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            if !response.status().is_success() {
                return Err(DevToolsError::Unexpected {
                    port,
                    message: format!("HTTP {}", response.status()),
                });
            }
            let body = http_body_util::Limited::new(response.into_body(), MAX_JSON_BYTES)
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            Ok(body.to_bytes())
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| unreachable("timed out".into()))?
    }

    /// The browser's `/json/version`.
    pub async fn version(&self, port: Port) -> Result<BrowserVersion, DevToolsError> {
        let body = self.get(port, "/json/version").await?;
        serde_json::from_slice(&body).map_err(|e| DevToolsError::Unexpected {
            port,
            message: format!("/json/version: {e}"),
        })
    }

    /// The URLs of the browser's page targets (`/json/list`).
    pub async fn page_urls(&self, port: Port) -> Result<Vec<String>, DevToolsError> {
        #[derive(Deserialize)]
        struct Target {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            url: String,
        }
        let body = self.get(port, "/json/list").await?;
        let targets: Vec<Target> =
            serde_json::from_slice(&body).map_err(|e| DevToolsError::Unexpected {
                port,
                message: format!("/json/list: {e}"),
            })?;
        Ok(targets
            .into_iter()
            .filter(|t| t.kind == "page")
            .map(|t| t.url)
            .collect())
    }

    /// Waits until the browser on `port` answers `Browser.getVersion` over its
    /// browser websocket, retrying with backoff (50 ms doubling to 500 ms)
    /// until `deadline`. Returns its `/json/version`.
    pub async fn wait_ready(
        &self,
        port: Port,
        deadline: Duration,
    ) -> Result<BrowserVersion, DevToolsError> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            let attempt = async {
                let version = self.version(port).await?;
                browser_get_version(port, &version.web_socket_debugger_url).await?;
                Ok::<_, DevToolsError>(version)
            };
            let last = match attempt.await {
                Ok(version) => return Ok(version),
                Err(error) => error.to_string(),
            };
            let waited = started.elapsed();
            if waited + delay >= deadline {
                return Err(DevToolsError::NotReady { port, waited, last });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }
}

/// One `Browser.getVersion` round trip over the websocket at `url`.
pub async fn browser_get_version(port: Port, url: &str) -> Result<String, DevToolsError> {
    let unreachable = |message: String| DevToolsError::Unreachable { port, message };
    let round_trip = async {
        let (mut socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        socket
            .send(Message::text(r#"{"id":1,"method":"Browser.getVersion"}"#))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        while let Some(frame) = socket.next().await {
            let frame = frame.map_err(|e| unreachable(e.to_string()))?;
            let Message::Text(text) = frame else { continue };
            let reply: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| DevToolsError::Unexpected {
                    port,
                    message: e.to_string(),
                })?;
            if reply["id"] != 1 {
                continue; // an event, not our answer
            }
            let _ = socket.close(None).await;
            return reply["result"]["product"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| DevToolsError::Unexpected {
                    port,
                    message: format!("Browser.getVersion answered {reply}"),
                });
        }
        Err(unreachable("websocket closed before the answer".into()))
    };
    tokio::time::timeout(CALL_TIMEOUT, round_trip)
        .await
        .map_err(|_| unreachable("Browser.getVersion timed out".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_browser_path_is_cut_from_the_websocket_url() {
        let version = BrowserVersion {
            browser: "Chrome/148".into(),
            web_socket_debugger_url: "ws://127.0.0.1:9300/devtools/browser/ab-cd".into(),
        };
        assert_eq!(version.browser_path(), Some("/devtools/browser/ab-cd"));
    }
}
