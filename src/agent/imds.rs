//! The instance's identity from the EC2 instance metadata service, through
//! the AWS SDK's IMDSv2 client (`aws_config::imds`): a session token first
//! (the operator launches instances with IMDSv1 disabled), the endpoint from
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT` or the profile as in every AWS SDK,
//! retries and timeouts included.

use std::time::Duration;

use aws_config::imds;
use aws_config::provider_config::ProviderConfig;
use thiserror::Error;

use crate::cloud::Aws;

/// Short: off EC2 nothing answers, and the agent should say so quickly.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the identity could not be read.
#[derive(Debug, Error)]
#[error("instance metadata {what}: {source} (pass --instance-id and --advertise-address off EC2)")]
pub struct ImdsError {
    what: &'static str,
    source: imds::client::error::ImdsError,
}

/// What the agent needs from the metadata service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceMetadata {
    /// `i-…`.
    pub instance_id: String,
    /// The private IPv4 address.
    pub private_ip: String,
}

/// Reads the instance id and private address, over the HTTP client of the
/// process's other AWS calls.
pub async fn read(aws: &Aws) -> Result<InstanceMetadata, ImdsError> {
    let mut provider = ProviderConfig::without_region();
    if let Some(http) = aws.sdk_config().http_client() {
        provider = provider.with_http_client(http);
    }
    let client = imds::Client::builder()
        .configure(&provider)
        .connect_timeout(CALL_TIMEOUT)
        .read_timeout(CALL_TIMEOUT)
        .operation_timeout(CALL_TIMEOUT * 2)
        .build();
    let get = |what: &'static str| {
        let client = client.clone();
        async move {
            let value = client
                .get(format!("/latest/meta-data/{what}"))
                .await
                .map_err(|source| ImdsError { what, source })?;
            Ok::<_, ImdsError>(String::from(value).trim().to_owned())
        }
    };
    Ok(InstanceMetadata {
        instance_id: get("instance-id").await?,
        private_ip: get("local-ipv4").await?,
    })
}
