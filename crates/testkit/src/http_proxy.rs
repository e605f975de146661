//! An http proxy for tests that requires credentials, as a session's own
//! authenticated proxy would (issue #21, item 6).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a test proxy that requires credentials saw: each request's first
/// line and its `Proxy-Authorization`.
pub type Seen = Arc<std::sync::Mutex<Vec<(String, Option<String>)>>>;

/// An http proxy on `ip` that answers `407` without the right credentials,
/// serves every absolute-form GET itself (a page titled `via proxy`) and
/// accepts a CONNECT, then closes it.
pub async fn authenticating_proxy(ip: &str, expected: &'static str) -> (SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
    let address = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0; 8192];
                let Ok(n) = stream.read(&mut buffer).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&buffer[..n]).to_string();
                let first = head.lines().next().unwrap_or_default().to_owned();
                let authorization = head.lines().find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("proxy-authorization")
                        .then(|| value.trim().to_owned())
                });
                let admitted = authorization.as_deref() == Some(expected);
                record.lock().unwrap().push((first.clone(), authorization));
                let answer = if !admitted {
                    "HTTP/1.1 407 Proxy Authentication Required\r\n\
                     Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n"
                        .to_owned()
                } else if first.starts_with("CONNECT ") {
                    "HTTP/1.1 200 Connection established\r\n\r\n".to_owned()
                } else {
                    let body = "<title>via proxy</title>";
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (address, seen)
}
