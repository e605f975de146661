//! A small HTTP client for tests: one request, its status and body.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Sends `method url` (with `Authorization: Bearer token` when given) and
/// returns the status and the body; fails the test when no answer comes
/// within ten seconds.
pub async fn call(method: &str, url: &str, token: Option<&str>) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut request = hyper::Request::builder().method(method).uri(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(request.body(Empty::new()).expect("request builds")),
    )
    .await
    .unwrap_or_else(|_| panic!("{method} {url}: no answer within 10 s"))
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body readable")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
