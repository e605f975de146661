//! The instance's identity (and, for [`super::interruptions`], EC2's notices)
//! from the EC2 instance metadata service, through
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

/// A metadata client over the HTTP client of the process's other AWS calls.
pub fn client(aws: &Aws) -> imds::Client {
    let mut provider = ProviderConfig::without_region();
    if let Some(http) = aws.sdk_config().http_client() {
        provider = provider.with_http_client(http);
    }
    imds::Client::builder()
        .configure(&provider)
        .connect_timeout(CALL_TIMEOUT)
        .read_timeout(CALL_TIMEOUT)
        .operation_timeout(CALL_TIMEOUT * 2)
        .build()
}

/// Whether an endpoint for the metadata service was named explicitly
/// (`AWS_EC2_METADATA_SERVICE_ENDPOINT`): off EC2, only then does one answer.
pub fn endpoint_named() -> bool {
    std::env::var_os("AWS_EC2_METADATA_SERVICE_ENDPOINT").is_some_and(|v| !v.is_empty())
}

/// Reads the instance id and private address.
pub async fn read(client: &imds::Client) -> Result<InstanceMetadata, ImdsError> {
    Ok(InstanceMetadata {
        instance_id: get(client, "instance-id").await?,
        private_ip: get(client, "local-ipv4").await?,
    })
}

/// `/latest/meta-data/<what>`, trimmed.
pub async fn get(client: &imds::Client, what: &'static str) -> Result<String, ImdsError> {
    let value = client
        .get(format!("/latest/meta-data/{what}"))
        .await
        .map_err(|source| ImdsError { what, source })?;
    Ok(String::from(value).trim().to_owned())
}

/// [`get`], with `None` when the service has no such item (a 404: how it
/// says that no notice is pending).
pub async fn get_optional(
    client: &imds::Client,
    what: &'static str,
) -> Result<Option<String>, ImdsError> {
    match get(client, what).await {
        Ok(value) => Ok(Some(value)),
        Err(ImdsError {
            source: imds::client::error::ImdsError::ErrorResponse(response),
            ..
        }) if response.response().status().as_u16() == 404 => Ok(None),
        Err(error) => Err(error),
    }
}
