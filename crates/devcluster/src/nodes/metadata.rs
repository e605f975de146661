//! The EC2 instance metadata service, played for each simulated node on a
//! loopback port of its own (one per node, since the service tells a node
//! about itself); the node's agent finds it through
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT`, as every AWS SDK does.
//!
//! What it models (IMDSv2 only, as the operator launches instances):
//! * `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`
//!   (1–21600) gives a token; every `GET` without a valid token is refused
//!   with 401;
//! * `meta-data/instance-id`, and `meta-data/local-ipv4` as `127.0.0.1` (a
//!   simulated node is reached on loopback only);
//! * `meta-data/spot/instance-action` and
//!   `meta-data/events/recommendations/rebalance`: 404 until a notice is
//!   posted ([`NodeSimulator::interrupt`](super::NodeSimulator::interrupt),
//!   [`NodeSimulator::recommend_rebalance`](super::NodeSimulator::recommend_rebalance)),
//!   then the JSON document AWS documents;
//! * anything else: 404.

use std::io;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use jiff::Timestamp;
use tokio::task::JoinHandle;

use browserfleet::cloud::InstanceId;

const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// The longest token IMDS hands out, in seconds.
const MAX_TOKEN_TTL: u64 = 21_600;

/// What the service tells one node.
#[derive(Debug)]
struct Document {
    instance_id: String,
    /// The one token it hands out (a node's tokens need not differ here).
    token: String,
    instance_action: Option<String>,
    rebalance: Option<String>,
}

/// One node's metadata service, serving until dropped.
#[derive(Debug)]
pub struct Metadata {
    /// `http://127.0.0.1:<port>`, for `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
    pub endpoint: String,
    document: Arc<Mutex<Document>>,
    task: JoinHandle<()>,
}

impl Metadata {
    /// Serves the metadata of `instance` on a free loopback port (must run
    /// inside a tokio runtime).
    pub fn serve(instance: &InstanceId) -> io::Result<Metadata> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let document = Arc::new(Mutex::new(Document {
            instance_id: instance.as_str().to_owned(),
            token: uuid::Uuid::new_v4().to_string(),
            instance_action: None,
            rebalance: None,
        }));
        let router = Router::new()
            .route("/latest/api/token", put(token))
            .route("/latest/meta-data/{*item}", get(item))
            .with_state(document.clone());
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::warn!(%error, "the metadata service stopped");
            }
        });
        Ok(Metadata {
            endpoint,
            document,
            task,
        })
    }

    /// Posts EC2's spot interruption notice: the instance is terminated at
    /// `time`.
    pub fn post_interruption(&self, time: Timestamp) {
        let notice = serde_json::json!({"action": "terminate", "time": imds_time(time)});
        self.lock().instance_action = Some(notice.to_string());
    }

    /// Posts EC2's rebalance recommendation, made at `time`.
    pub fn post_rebalance(&self, time: Timestamp) {
        let notice = serde_json::json!({"noticeTime": imds_time(time)});
        self.lock().rebalance = Some(notice.to_string());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Document> {
        self.document.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Metadata {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// IMDS writes times to the second, in UTC.
fn imds_time(time: Timestamp) -> String {
    time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

async fn token(State(document): State<Arc<Mutex<Document>>>, headers: HeaderMap) -> Response {
    let ttl = headers
        .get(TOKEN_TTL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ttl| (1..=MAX_TOKEN_TTL).contains(ttl));
    let Some(ttl) = ttl else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let token = document
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .token
        .clone();
    ([(TOKEN_TTL_HEADER, ttl.to_string())], token).into_response()
}

async fn item(
    State(document): State<Arc<Mutex<Document>>>,
    Path(item): Path<String>,
    headers: HeaderMap,
) -> Response {
    let document = document.lock().unwrap_or_else(|p| p.into_inner());
    let authorized = headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t == document.token);
    if !authorized {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let value = match item.as_str() {
        "instance-id" => Some(document.instance_id.clone()),
        "local-ipv4" => Some("127.0.0.1".to_owned()),
        "spot/instance-action" => document.instance_action.clone(),
        "events/recommendations/rebalance" => document.rebalance.clone(),
        _ => None,
    };
    match value {
        Some(value) => value.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// One HTTP/1.1 exchange: the status code and the body.
    async fn call(
        endpoint: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        let address = endpoint.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: 0\r\n"
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let code = response[9..12].parse().unwrap();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (code, body)
    }

    #[tokio::test]
    async fn it_answers_as_imdsv2_does() {
        let metadata = Metadata::serve(&InstanceId::new("i-0abc")).unwrap();
        let endpoint = metadata.endpoint.clone();
        let get = |path: &'static str, token: Option<String>| {
            let endpoint = endpoint.clone();
            async move {
                let headers: Vec<(&str, &str)> = token
                    .as_deref()
                    .map(|t| vec![(TOKEN_HEADER, t)])
                    .unwrap_or_default();
                call(&endpoint, "GET", path, &headers).await
            }
        };
        for ttl in ["0", "21601", "soon"] {
            let (code, _) = call(
                &endpoint,
                "PUT",
                "/latest/api/token",
                &[(TOKEN_TTL_HEADER, ttl)],
            )
            .await;
            assert_eq!(code, 400, "ttl {ttl}");
        }
        let (code, token) = call(
            &endpoint,
            "PUT",
            "/latest/api/token",
            &[(TOKEN_TTL_HEADER, "21600")],
        )
        .await;
        assert_eq!(code, 200);
        assert_eq!(get("/latest/meta-data/instance-id", None).await.0, 401);
        assert_eq!(
            get("/latest/meta-data/instance-id", Some("forged".into()))
                .await
                .0,
            401
        );
        let token = Some(token);
        assert_eq!(
            get("/latest/meta-data/instance-id", token.clone()).await,
            (200, "i-0abc".to_owned())
        );
        assert_eq!(
            get("/latest/meta-data/local-ipv4", token.clone()).await,
            (200, "127.0.0.1".to_owned())
        );
        let action = "/latest/meta-data/spot/instance-action";
        let rebalance = "/latest/meta-data/events/recommendations/rebalance";
        assert_eq!(get(action, token.clone()).await.0, 404);
        assert_eq!(get(rebalance, token.clone()).await.0, 404);

        let at: Timestamp = "2026-12-07T10:02:00.5Z".parse().unwrap();
        metadata.post_rebalance(at);
        metadata.post_interruption(at);
        let (code, body) = get(action, token.clone()).await;
        assert_eq!(code, 200);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"action": "terminate", "time": "2026-12-07T10:02:00Z"})
        );
        let (code, body) = get(rebalance, token).await;
        assert_eq!(code, 200);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"noticeTime": "2026-12-07T10:02:00Z"})
        );
    }
}
