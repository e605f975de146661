//! The instance's identity from the EC2 instance metadata service, IMDSv2
//! only (a session token first; the operator launches instances with
//! IMDSv1 disabled).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use thiserror::Error;

/// The metadata service; `AWS_EC2_METADATA_SERVICE_ENDPOINT` overrides it,
/// as in the AWS SDKs.
const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// Short: off EC2 nothing answers, and the agent should say so quickly.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the identity could not be read.
#[derive(Debug, Error)]
#[error("instance metadata {what}: {message} (pass --instance-id and --advertise-address off EC2)")]
pub struct ImdsError {
    what: &'static str,
    message: String,
}

/// What the agent needs from the metadata service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceMetadata {
    /// `i-…`.
    pub instance_id: String,
    /// The private IPv4 address.
    pub private_ip: String,
}

/// Reads the instance id and private address.
pub async fn read() -> Result<InstanceMetadata, ImdsError> {
    let endpoint = std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .unwrap_or_else(|_| DEFAULT_ENDPOINT.to_owned());
    read_from(&endpoint).await
}

/// Reads the instance id and private address from the metadata service at
/// `endpoint` (`http://host[:port]`).
pub async fn read_from(endpoint: &str) -> Result<InstanceMetadata, ImdsError> {
    let endpoint = endpoint.trim_end_matches('/');
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CALL_TIMEOUT));
    let http: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let call = |what: &'static str, request: hyper::Request<Empty<Bytes>>| {
        let http = http.clone();
        async move {
            let error = |message: String| ImdsError { what, message };
            let response = tokio::time::timeout(CALL_TIMEOUT, http.request(request))
                .await
                .map_err(|_| error("timed out".into()))?
                .map_err(|e| error(e.to_string()))?;
            if !response.status().is_success() {
                return Err(error(format!("HTTP {}", response.status())));
            }
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| error(e.to_string()))?
                .to_bytes();
            String::from_utf8(body.to_vec())
                .map(|s| s.trim().to_owned())
                .map_err(|e| error(e.to_string()))
        }
    };
    let build = |what: &'static str, r: hyper::http::request::Builder| {
        r.body(Empty::new()).map_err(|e| ImdsError {
            what,
            message: e.to_string(),
        })
    };
    let token = call(
        "token",
        build(
            "token",
            hyper::Request::put(format!("{endpoint}/latest/api/token"))
                .header("X-aws-ec2-metadata-token-ttl-seconds", "300"),
        )?,
    )
    .await?;
    let get = |path: &'static str| {
        build(
            path,
            hyper::Request::get(format!("{endpoint}/latest/meta-data/{path}"))
                .header("X-aws-ec2-metadata-token", token.as_str()),
        )
    };
    Ok(InstanceMetadata {
        instance_id: call("instance-id", get("instance-id")?).await?,
        private_ip: call("local-ipv4", get("local-ipv4")?).await?,
    })
}
