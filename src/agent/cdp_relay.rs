//! One DevTools websocket of the gateway, relayed message by message once
//! both handshakes are done: each message from the client goes through the
//! [CDP filter](super::cdp_filter) and reaches the browser as judged, or is
//! answered with a CDP error while the connection stays up; every message
//! from the browser goes to the client as it came. Close frames cross in
//! both directions; tungstenite answers pings on each side itself.

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::cdp_filter::{Filtered, filter_message};
use super::metrics::CdpRefusals;
use super::session_files::SessionFiles;
use crate::protocol::SessionId;

/// Largest message or frame either side may send: a full-page screenshot of
/// a large page is tens of MiB of base64, far over tungstenite's defaults.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// Refusal answers waiting for the client; the filter waits when it is full,
/// as a command waits for the browser.
const ANSWER_QUEUE: usize = 64;
/// Longest wait for the last close frames once one side has gone.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// What one relayed connection needs besides its two sockets.
pub struct RelayContext {
    /// The session, for logs.
    pub session: SessionId,
    /// The files its client is confined to.
    pub files: SessionFiles,
    /// Counts refusals.
    pub refusals: CdpRefusals,
}

/// Relays a websocket between `client` (the gateway's side of the
/// client's connection) and `browser` (the connection to the browser's
/// DevTools), both past their handshakes, until either side closes.
pub async fn relay<C, B>(client: C, browser: B, context: RelayContext)
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let client = WebSocketStream::from_raw_socket(client, Role::Server, Some(config)).await;
    let browser = WebSocketStream::from_raw_socket(browser, Role::Client, Some(config)).await;
    let (mut to_client, mut from_client) = client.split();
    let (mut to_browser, mut from_browser) = browser.split();
    let (answers, mut answered) = mpsc::channel::<Message>(ANSWER_QUEUE);

    let upward = async {
        while let Some(Ok(message)) = from_client.next().await {
            let filtered = match &message {
                Message::Text(text) => filter_message(text.as_str(), &context.files),
                // Chromium reads a binary message as a command too: judged
                // the same way (invalid UTF-8 replaced, so what is judged is
                // what is sent).
                Message::Binary(bytes) => {
                    filter_message(&String::from_utf8_lossy(bytes), &context.files)
                }
                Message::Close(frame) => {
                    let _ = to_browser.send(Message::Close(frame.clone())).await;
                    break;
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            match filtered {
                Filtered::Forward(text) => {
                    if to_browser.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
                Filtered::Answer { text, method } => {
                    context.refusals.count(method);
                    tracing::info!(session = %context.session, method, "CDP command refused by the session policy");
                    if answers.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let downward = async {
        loop {
            let message = tokio::select! {
                message = from_browser.next() => match message {
                    Some(Ok(message)) => message,
                    _ => break,
                },
                Some(answer) = answered.recv() => answer,
            };
            match message {
                Message::Close(frame) => {
                    let _ = to_client.send(Message::Close(frame)).await;
                    break;
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                message => {
                    if to_client.send(message).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    tokio::select! {
        () = upward => {}
        () = downward => {}
    }
    // Flushes a close answer tungstenite queued, or sends a close to the
    // side still open.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = to_client.close().await;
        let _ = to_browser.close().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::time::Duration;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// The next data message of `socket`, as JSON.
    async fn next_json<S>(
        socket: &mut WebSocketStream<S>,
    ) -> Result<Value, Box<dyn std::error::Error>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
                .await?
                .ok_or("closed")??;
            if let Message::Text(text) = message {
                return Ok(serde_json::from_str(text.as_str())?);
            }
        }
    }

    #[tokio::test]
    async fn refused_commands_are_answered_others_pass_and_a_close_crosses() -> TestResult {
        let (client_far, client_near) = tokio::io::duplex(64 * 1024);
        let (browser_near, browser_far) = tokio::io::duplex(64 * 1024);
        let context = RelayContext {
            session: "s-1".parse()?,
            files: SessionFiles {
                downloads: std::env::temp_dir().join("s-1/Downloads"),
            },
            refusals: CdpRefusals::default(),
        };
        let relayed = tokio::spawn(relay(client_near, browser_near, context));
        let mut client = WebSocketStream::from_raw_socket(client_far, Role::Client, None).await;
        let mut browser = WebSocketStream::from_raw_socket(browser_far, Role::Server, None).await;

        client
            .send(Message::text(
                r#"{"id":1,"sessionId":"P","method":"Page.navigate","params":{"url":"file:///etc"}}"#,
            ))
            .await?;
        let answer = next_json(&mut client).await?;
        assert_eq!(answer["id"], 1);
        assert_eq!(answer["sessionId"], "P");
        assert_eq!(answer["error"]["code"], -32000);

        client
            .send(Message::text(
                r#"{"id":2,"method":"Browser.setDownloadBehavior","params":{"behavior":"allow","downloadPath":"/tmp"}}"#,
            ))
            .await?;
        let command = next_json(&mut browser).await?;
        assert_eq!(command["id"], 2);
        assert_ne!(command["params"]["downloadPath"], "/tmp");
        browser
            .send(Message::text(r#"{"id":2,"result":{}}"#))
            .await?;
        assert_eq!(next_json(&mut client).await?["id"], 2);

        client.close(None).await?;
        let closing = tokio::time::timeout(Duration::from_secs(5), browser.next())
            .await?
            .ok_or("closed without a close frame")??;
        assert!(matches!(closing, Message::Close(_)), "{closing:?}");
        tokio::time::timeout(Duration::from_secs(5), relayed).await??;
        Ok(())
    }
}
