//! How the AWS clients behave: region, retries, timeouts, and the shared SDK
//! configuration every service client is built from.
//!
//! Endpoints and credentials are deliberately *not* configured here: the SDK's
//! default chains handle them. `AWS_ENDPOINT_URL` (and per-service variants
//! such as `AWS_ENDPOINT_URL_SQS`) point the clients at moto or a VPC endpoint;
//! credentials come from the environment, a profile, web identity (IRSA) or the
//! instance role.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_config::Region;
use aws_config::SdkConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use thiserror::Error;

use super::error::{AwsFault, Service};
use super::recorder::{CallRecorder, Outcome};

/// The SDK's retry strategy (also the operator's `--aws-retry-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RetryMode {
    /// Exponential backoff with jitter and a retry quota.
    #[default]
    Standard,
    /// Standard plus client-side rate limiting that slows down after throttling.
    Adaptive,
}

/// Retry and timeout settings for every AWS call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsSettings {
    /// Region to use; `None` takes it from the environment (`AWS_REGION`, the
    /// profile, or instance metadata).
    pub region: Option<String>,
    /// Retry strategy.
    pub retry_mode: RetryMode,
    /// Attempts per call, the first included (1 disables retries).
    pub max_attempts: u32,
    /// Backoff before the first retry (grows exponentially, with jitter).
    pub initial_backoff: Duration,
    /// Upper bound of one backoff.
    pub max_backoff: Duration,
    /// Deadline for a whole call, retries included.
    pub operation_timeout: Duration,
    /// Deadline for one attempt.
    pub attempt_timeout: Duration,
    /// Deadline for opening a connection.
    pub connect_timeout: Duration,
}

impl Default for AwsSettings {
    fn default() -> Self {
        AwsSettings {
            region: None,
            retry_mode: RetryMode::Standard,
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(20),
            operation_timeout: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl AwsSettings {
    fn retry_config(&self) -> RetryConfig {
        let config = match self.retry_mode {
            RetryMode::Standard => RetryConfig::standard(),
            RetryMode::Adaptive => RetryConfig::adaptive(),
        };
        config
            .with_max_attempts(self.max_attempts.max(1))
            .with_initial_backoff(self.initial_backoff)
            .with_max_backoff(self.max_backoff)
    }

    fn timeout_config(&self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(self.connect_timeout)
            .operation_timeout(self.operation_timeout)
            .operation_attempt_timeout(self.attempt_timeout)
            .build()
    }
}

/// The AWS configuration could not be loaded.
#[derive(Debug, Error)]
pub enum SettingsError {
    /// No region was given and none is set in the environment.
    #[error("no AWS region: set the fleet's region or AWS_REGION")]
    NoRegion,
}

/// Loaded AWS configuration and the call recorder shared by every client
/// built from it.
#[derive(Clone, Debug)]
pub struct Aws {
    config: SdkConfig,
    settings: AwsSettings,
    recorder: Arc<CallRecorder>,
}

impl Aws {
    /// Loads the SDK configuration: region (given, or from the environment),
    /// credentials and endpoint through the SDK's default chains, our retry
    /// and timeout settings, and an HTTPS client on rustls with ring.
    pub async fn load(settings: AwsSettings) -> Result<Self, SettingsError> {
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client)
            .retry_config(settings.retry_config())
            .timeout_config(settings.timeout_config());
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let config = loader.load().await;
        if config.region().is_none() {
            return Err(SettingsError::NoRegion);
        }
        Ok(Aws {
            config,
            settings,
            recorder: Arc::new(CallRecorder::new()),
        })
    }

    /// The same configuration with every service at `endpoint` (a VPC
    /// endpoint, or a stand-in in front of moto in tests), and a recorder
    /// of its own.
    pub fn with_endpoint(&self, endpoint: &str) -> Aws {
        let mut config = self.config.to_builder().endpoint_url(endpoint);
        // Set in code: it wins over `AWS_ENDPOINT_URL` and its per-service
        // forms, which each client would otherwise read again.
        config.insert_origin("endpoint_url", aws_types::origin::Origin::shared_config());
        Aws {
            config: config.build(),
            settings: self.settings.clone(),
            recorder: Arc::new(CallRecorder::new()),
        }
    }

    /// The SDK configuration (for building service clients).
    pub fn sdk_config(&self) -> &SdkConfig {
        &self.config
    }

    /// The settings this was loaded with.
    pub fn settings(&self) -> &AwsSettings {
        &self.settings
    }

    /// The region in use.
    pub fn region(&self) -> Option<&str> {
        self.config.region().map(Region::as_ref)
    }

    /// The recorder counting every call made through clients built from this.
    pub fn recorder(&self) -> &Arc<CallRecorder> {
        &self.recorder
    }
}

/// Runs one SDK call, records it, and turns a failure into an [`AwsFault`].
pub(crate) async fn observe<T, E>(
    recorder: &CallRecorder,
    service: Service,
    operation: &'static str,
    call: impl Future<Output = Result<T, SdkError<E, HttpResponse>>>,
) -> Result<T, AwsFault>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let started = Instant::now();
    let result = call.await;
    let latency = started.elapsed();
    match result {
        Ok(value) => {
            recorder.record(service, operation, Outcome::Success, latency);
            tracing::trace!(%service, operation, ?latency, "aws call succeeded");
            Ok(value)
        }
        Err(err) => {
            let fault = AwsFault::from_sdk(service, operation, err);
            recorder.record(service, operation, Outcome::Failed(fault.kind), latency);
            tracing::debug!(%service, operation, ?latency, kind = ?fault.kind, code = ?fault.code, "aws call failed: {}", fault.message);
            Err(fault)
        }
    }
}
