//! SSM: the fleet's agent-config parameter and secrets in Parameter Store
//! ([`Parameters`]), and Run Command to install or upgrade the agent on
//! running instances ([`Commands`]).
//!
//! Moto gaps met while testing [`Ssm`] against moto, and why the design holds
//! on real AWS anyway:
//! * moto does not run commands: every invocation reports `Success` at once
//!   with empty output, and `SendCommand` accepts instance ids that are not
//!   managed nodes. On AWS an invocation moves through `Pending`/`InProgress`
//!   and may end `Failed`, `TimedOut` or `Cancelled`, which is why
//!   [`CommandStatus`] is an enum the operator polls until
//!   [`CommandStatus::is_final`].
//! * moto has no `DescribeInstanceInformation`, so whether an instance's SSM
//!   agent is online cannot be checked there; the operator treats a command
//!   on an instance that is not yet registered (`InvalidInstanceId` on AWS,
//!   reported as [`SsmError::NotFound`]) as "retry later", not as a failure.
//! * moto sends a command without `Targets` to every instance of the region
//!   as well as to the ones named; AWS sends it only to the named instances,
//!   which is all [`Commands::send_command`] ever names.
//! * moto has no `ListCommandInvocations`; invocations are read one instance
//!   at a time with `GetCommandInvocation`, which AWS supports too.

use crate::secret::SecretValue;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ssm::types::{CommandInvocationStatus, ParameterType, ResourceTypeForTagging, Tag};
use thiserror::Error;

use super::compute::InstanceId;
use super::error::{AwsFault, FaultKind, Service};
use super::recorder::CallRecorder;
use super::settings::{Aws, observe};

/// How a parameter's value is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParameterKind {
    /// Plain text.
    String,
    /// Encrypted with KMS; `None` uses the account's `aws/ssm` key.
    SecureString {
        /// KMS key id, ARN or alias.
        kms_key_id: Option<String>,
    },
}

/// A parameter to write; its `Debug` never shows the value (the agent
/// configuration carries the fleet's secrets).
#[derive(Clone, PartialEq, Eq)]
pub struct ParameterWrite {
    /// Full name, e.g. `/browserfleet/ns/name/agent-config`.
    pub name: String,
    /// The value (JSON for the agent config).
    pub value: String,
    /// Plain or encrypted.
    pub kind: ParameterKind,
    /// Description shown in the console.
    pub description: Option<String>,
    /// Tags (the fleet's tags, usually).
    pub tags: BTreeMap<String, String>,
}

impl fmt::Debug for ParameterWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParameterWrite")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .field("kind", &self.kind)
            .field("description", &self.description)
            .field("tags", &self.tags)
            .finish()
    }
}

/// A parameter as read back.
#[derive(Clone, PartialEq, Eq)]
pub struct Parameter {
    /// Full name.
    pub name: String,
    /// The value (decrypted for a SecureString).
    pub value: String,
    /// Version, incremented by every overwrite.
    pub version: i64,
    /// Whether it is a SecureString.
    pub secure: bool,
}

impl fmt::Debug for Parameter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A SecureString's value never reaches a log line.
        let value: &str = if self.secure {
            "<redacted>"
        } else {
            &self.value
        };
        f.debug_struct("Parameter")
            .field("name", &self.name)
            .field("value", &value)
            .field("version", &self.version)
            .field("secure", &self.secure)
            .finish()
    }
}

/// An SSM Run Command id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CommandId(String);

impl CommandId {
    /// Wraps a command id as SSM reported it.
    pub fn new(id: impl Into<String>) -> Self {
        CommandId(id.into())
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a command runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandDocument {
    /// `AWS-RunPowerShellScript` with these lines (Windows).
    PowerShell(Vec<String>),
    /// `AWS-RunShellScript` with these lines (Linux).
    Shell(Vec<String>),
    /// Any other SSM document, with its parameters.
    Named {
        /// Document name or ARN.
        name: String,
        /// Document parameters.
        parameters: BTreeMap<String, Vec<String>>,
    },
}

impl CommandDocument {
    /// The SSM document name.
    pub fn document_name(&self) -> &str {
        match self {
            CommandDocument::PowerShell(_) => "AWS-RunPowerShellScript",
            CommandDocument::Shell(_) => "AWS-RunShellScript",
            CommandDocument::Named { name, .. } => name,
        }
    }

    fn parameters(&self) -> BTreeMap<String, Vec<String>> {
        match self {
            CommandDocument::PowerShell(lines) | CommandDocument::Shell(lines) => {
                BTreeMap::from([("commands".to_owned(), lines.clone())])
            }
            CommandDocument::Named { parameters, .. } => parameters.clone(),
        }
    }
}

/// A command to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandRequest {
    /// What to run.
    pub document: CommandDocument,
    /// Where to run it.
    pub instance_ids: Vec<InstanceId>,
    /// Free text shown in the console (e.g. `install agent 1.2.3`).
    pub comment: Option<String>,
    /// How long an instance may take to start running it.
    pub delivery_timeout: Option<Duration>,
    /// Instances running it at once (SSM's default, 50, when `None`).
    pub max_concurrency: Option<u32>,
    /// Failures after which it is sent to no more instances (SSM's
    /// default, 0, when `None`).
    pub max_errors: Option<u32>,
}

/// Status of one command invocation on one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandStatus {
    /// Not yet delivered.
    Pending,
    /// Running.
    InProgress,
    /// Waiting to retry delivery.
    Delayed,
    /// Finished with exit code 0.
    Success,
    /// Finished with a non-zero exit code.
    Failed,
    /// Ran out of time.
    TimedOut,
    /// Being cancelled.
    Cancelling,
    Cancelled,
    /// A status this code does not know.
    Other(String),
}

impl CommandStatus {
    /// Whether the invocation will not change any more.
    pub fn is_final(&self) -> bool {
        match self {
            CommandStatus::Success
            | CommandStatus::Failed
            | CommandStatus::TimedOut
            | CommandStatus::Cancelled => true,
            CommandStatus::Pending
            | CommandStatus::InProgress
            | CommandStatus::Delayed
            | CommandStatus::Cancelling
            | CommandStatus::Other(_) => false,
        }
    }
}

impl From<&CommandInvocationStatus> for CommandStatus {
    fn from(status: &CommandInvocationStatus) -> Self {
        match status {
            CommandInvocationStatus::Pending => CommandStatus::Pending,
            CommandInvocationStatus::InProgress => CommandStatus::InProgress,
            CommandInvocationStatus::Delayed => CommandStatus::Delayed,
            CommandInvocationStatus::Success => CommandStatus::Success,
            CommandInvocationStatus::Failed => CommandStatus::Failed,
            CommandInvocationStatus::TimedOut => CommandStatus::TimedOut,
            CommandInvocationStatus::Cancelling => CommandStatus::Cancelling,
            CommandInvocationStatus::Cancelled => CommandStatus::Cancelled,
            other => CommandStatus::Other(other.as_str().to_owned()),
        }
    }
}

/// One command's run on one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandInvocation {
    pub command_id: CommandId,
    pub instance_id: InstanceId,
    /// Where it stands.
    pub status: CommandStatus,
    /// SSM's finer status, e.g. `Undeliverable`.
    pub status_details: Option<String>,
    /// Exit code, once finished (-1 while running).
    pub response_code: Option<i32>,
    /// Standard output (SSM keeps the first 24,000 characters).
    pub stdout: String,
    /// Standard error (first 8,000 characters).
    pub stderr: String,
}

/// What went wrong with an SSM call.
#[derive(Debug, Error)]
pub enum SsmError {
    /// SSM throttled the call beyond the retry budget: retry later.
    #[error("SSM is throttling ({0}); retry later")]
    Throttled(AwsFault),
    /// The parameter, document, command or invocation does not exist (or the
    /// instance is not a managed node yet).
    #[error("not found: {0}")]
    NotFound(AwsFault),
    /// SSM refused the request as invalid.
    #[error("invalid SSM request: {0}")]
    InvalidRequest(AwsFault),
    /// Credentials lack a permission (e.g. `kms:Decrypt`) or are invalid.
    #[error("access denied: {0}; check the operator's IAM role")]
    AccessDenied(AwsFault),
    /// The call timed out; retry later.
    #[error("timed out: {0}")]
    Timeout(AwsFault),
    /// Server error or broken connection after retries; retry later.
    #[error("SSM unavailable: {0}")]
    Unavailable(AwsFault),
    /// SSM answered without something it always sends.
    #[error("SSM {operation} answered without {what}")]
    MalformedResponse {
        /// Operation called.
        operation: &'static str,
        /// What was missing.
        what: &'static str,
    },
    /// A SecureString was asked for but the parameter is plain text.
    #[error("parameter {name} is not a SecureString; secrets must be encrypted")]
    NotSecure {
        /// Parameter name.
        name: String,
    },
}

impl SsmError {
    /// Whether the same call may succeed later unchanged.
    pub fn is_retryable(&self) -> bool {
        match self {
            SsmError::Throttled(_) | SsmError::Timeout(_) | SsmError::Unavailable(_) => true,
            SsmError::NotFound(_)
            | SsmError::InvalidRequest(_)
            | SsmError::AccessDenied(_)
            | SsmError::MalformedResponse { .. }
            | SsmError::NotSecure { .. } => false,
        }
    }

    /// The AWS error code, when the failure came from AWS.
    pub fn aws_code(&self) -> Option<&str> {
        self.fault().and_then(|f| f.code.as_deref())
    }

    /// The underlying AWS fault, when there is one.
    pub fn fault(&self) -> Option<&AwsFault> {
        match self {
            SsmError::Throttled(f)
            | SsmError::NotFound(f)
            | SsmError::InvalidRequest(f)
            | SsmError::AccessDenied(f)
            | SsmError::Timeout(f)
            | SsmError::Unavailable(f) => Some(f),
            SsmError::MalformedResponse { .. } | SsmError::NotSecure { .. } => None,
        }
    }
}

impl From<AwsFault> for SsmError {
    fn from(fault: AwsFault) -> Self {
        match fault.kind {
            FaultKind::Throttled => SsmError::Throttled(fault),
            FaultKind::NotFound => SsmError::NotFound(fault),
            // SSM has no capacity errors; treat one as a server-side problem.
            FaultKind::Capacity | FaultKind::Unavailable => SsmError::Unavailable(fault),
            FaultKind::InvalidRequest => SsmError::InvalidRequest(fault),
            FaultKind::AccessDenied => SsmError::AccessDenied(fault),
            FaultKind::Timeout => SsmError::Timeout(fault),
        }
    }
}

/// Parameter Store, in our domain's terms.
pub trait Parameters: Send + Sync {
    /// Creates or overwrites a parameter and sets its tags; returns its version.
    fn put_parameter(
        &self,
        write: &ParameterWrite,
    ) -> impl Future<Output = Result<i64, SsmError>> + Send;

    /// Reads a parameter (decrypting a SecureString).
    fn get_parameter(&self, name: &str)
    -> impl Future<Output = Result<Parameter, SsmError>> + Send;

    /// Reads a secret; refuses a parameter that is not a SecureString.
    fn read_secret(&self, name: &str)
    -> impl Future<Output = Result<SecretValue, SsmError>> + Send;

    /// Deletes a parameter; one that does not exist is already deleted.
    fn delete_parameter(&self, name: &str) -> impl Future<Output = Result<(), SsmError>> + Send;
}

/// Run Command, in our domain's terms.
pub trait Commands: Send + Sync {
    /// Sends a command to instances; returns its id.
    fn send_command(
        &self,
        request: &CommandRequest,
    ) -> impl Future<Output = Result<CommandId, SsmError>> + Send;

    /// The status and output of a command on one instance.
    fn invocation(
        &self,
        command: &CommandId,
        instance: &InstanceId,
    ) -> impl Future<Output = Result<CommandInvocation, SsmError>> + Send;
}

/// [`Parameters`] and [`Commands`] on the AWS SDK.
#[derive(Clone, Debug)]
pub struct Ssm {
    client: aws_sdk_ssm::Client,
    recorder: Arc<CallRecorder>,
}

impl Ssm {
    /// A client using the loaded AWS configuration.
    pub fn new(aws: &Aws) -> Self {
        Ssm {
            client: aws_sdk_ssm::Client::new(aws.sdk_config()),
            recorder: Arc::clone(aws.recorder()),
        }
    }
}

impl Parameters for Ssm {
    #[tracing::instrument(skip_all, fields(parameter = %write.name))]
    async fn put_parameter(&self, write: &ParameterWrite) -> Result<i64, SsmError> {
        let (kind, key) = match &write.kind {
            ParameterKind::String => (ParameterType::String, None),
            ParameterKind::SecureString { kms_key_id } => {
                (ParameterType::SecureString, kms_key_id.clone())
            }
        };
        // AWS refuses Tags together with Overwrite, so tags are a second call.
        let call = self
            .client
            .put_parameter()
            .name(&write.name)
            .value(&write.value)
            .r#type(kind)
            .set_key_id(key)
            .set_description(write.description.clone())
            .overwrite(true)
            .send();
        let out = observe(&self.recorder, Service::Ssm, "PutParameter", call).await?;
        if !write.tags.is_empty() {
            let mut tags = Vec::with_capacity(write.tags.len());
            for (key, value) in &write.tags {
                let tag = Tag::builder().key(key).value(value).build().map_err(|_| {
                    SsmError::MalformedResponse {
                        operation: "AddTagsToResource",
                        what: "a buildable tag",
                    }
                })?;
                tags.push(tag);
            }
            let call = self
                .client
                .add_tags_to_resource()
                .resource_type(ResourceTypeForTagging::Parameter)
                .resource_id(&write.name)
                .set_tags(Some(tags))
                .send();
            observe(&self.recorder, Service::Ssm, "AddTagsToResource", call).await?;
        }
        Ok(out.version())
    }

    async fn get_parameter(&self, name: &str) -> Result<Parameter, SsmError> {
        let call = self
            .client
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send();
        let out = observe(&self.recorder, Service::Ssm, "GetParameter", call).await?;
        let parameter = out.parameter().ok_or(SsmError::MalformedResponse {
            operation: "GetParameter",
            what: "a parameter",
        })?;
        Ok(Parameter {
            name: parameter.name().unwrap_or(name).to_owned(),
            value: parameter.value().unwrap_or_default().to_owned(),
            version: parameter.version(),
            secure: parameter.r#type() == Some(&ParameterType::SecureString),
        })
    }

    async fn read_secret(&self, name: &str) -> Result<SecretValue, SsmError> {
        let parameter = self.get_parameter(name).await?;
        if !parameter.secure {
            return Err(SsmError::NotSecure {
                name: name.to_owned(),
            });
        }
        Ok(SecretValue::new(parameter.value))
    }

    async fn delete_parameter(&self, name: &str) -> Result<(), SsmError> {
        let call = self.client.delete_parameter().name(name).send();
        match observe(&self.recorder, Service::Ssm, "DeleteParameter", call)
            .await
            .map_err(SsmError::from)
        {
            Ok(_) | Err(SsmError::NotFound(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }
}

impl Commands for Ssm {
    #[tracing::instrument(skip_all, fields(document = request.document.document_name(), instances = request.instance_ids.len()))]
    async fn send_command(&self, request: &CommandRequest) -> Result<CommandId, SsmError> {
        let instance_ids = request
            .instance_ids
            .iter()
            .map(|i| i.as_str().to_owned())
            .collect();
        let parameters = request.document.parameters().into_iter().collect();
        let call = self
            .client
            .send_command()
            .document_name(request.document.document_name())
            .set_instance_ids(Some(instance_ids))
            .set_parameters(Some(parameters))
            .set_comment(request.comment.clone())
            .set_max_concurrency(request.max_concurrency.map(|n| n.to_string()))
            .set_max_errors(request.max_errors.map(|n| n.to_string()))
            .set_timeout_seconds(
                request
                    .delivery_timeout
                    .map(|d| d.as_secs().clamp(30, 2_592_000) as i32),
            )
            .send();
        let out = observe(&self.recorder, Service::Ssm, "SendCommand", call).await?;
        out.command()
            .and_then(|c| c.command_id())
            .map(CommandId::new)
            .ok_or(SsmError::MalformedResponse {
                operation: "SendCommand",
                what: "a command id",
            })
    }

    async fn invocation(
        &self,
        command: &CommandId,
        instance: &InstanceId,
    ) -> Result<CommandInvocation, SsmError> {
        let call = self
            .client
            .get_command_invocation()
            .command_id(command.as_str())
            .instance_id(instance.as_str())
            .send();
        let out = observe(&self.recorder, Service::Ssm, "GetCommandInvocation", call).await?;
        Ok(CommandInvocation {
            command_id: command.clone(),
            instance_id: instance.clone(),
            status: out
                .status()
                .map(CommandStatus::from)
                .unwrap_or(CommandStatus::Other("missing".to_owned())),
            status_details: out.status_details().map(str::to_owned),
            response_code: Some(out.response_code()).filter(|code| *code >= 0),
            stdout: out.standard_output_content().unwrap_or_default().to_owned(),
            stderr: out.standard_error_content().unwrap_or_default().to_owned(),
        })
    }
}
