//! The cloud layer: EC2, SSM and SQS behind narrow traits that speak the
//! fleet's domain ([`Compute`], [`Parameters`], [`Commands`], [`Queues`]),
//! each with one implementation on the AWS SDK ([`Ec2Compute`], [`Ssm`],
//! [`Sqs`]). The operator and the agent never call the SDK directly.
//!
//! All clients are built from one [`Aws`], which loads the SDK configuration
//! (region, credentials and endpoint through the SDK's default chains; our
//! retry and timeout [`AwsSettings`]) and owns the [`CallRecorder`] that counts
//! every call by service, operation and outcome.
//!
//! Failures become [`AwsFault`]s classified by [`FaultKind`] and are returned
//! as one error enum per service area ([`ComputeError`], [`SsmError`],
//! [`QueueError`]) that says whether to retry, fix the spec, or check
//! permissions, and keeps the AWS error code.

pub mod compute;
pub mod error;
pub mod fleet_tags;
pub mod queues;
pub mod recorder;
pub mod settings;
pub mod ssm;

/// Secrets read from SSM are held in the crate's one secret type.
pub use crate::secret::SecretValue;
pub use compute::{
    CapacityMiss, ClientToken, Compute, ComputeError, Ec2Compute, Ec2State, FleetInstance, ImageId,
    InstanceBlueprint, InstanceId, LaunchHash, LaunchOutcome, LaunchRequest, ManagedFilter,
    RootVolume,
};
pub use error::{AwsFault, FaultKind, Service};
pub use fleet_tags::{FleetId, FleetIdError};
pub use queues::{
    BatchFailure, BatchOutcome, DeadLetterDefinition, EnsuredQueue, OutgoingMessage,
    QueueDefinition, QueueDepth, QueueError, QueueUrl, Queues, ReceiptHandle, ReceiveOptions,
    ReceivedMessage, Sqs,
};
pub use recorder::{CallKey, CallRecorder, CallStats, Outcome};
pub use settings::{Aws, AwsSettings, RetryMode, SettingsError};
pub use ssm::{
    CommandDocument, CommandId, CommandInvocation, CommandRequest, CommandStatus, Commands,
    Parameter, ParameterKind, ParameterWrite, Parameters, Ssm, SsmError,
};
