//! SQS: the fleet's request queue with its dead-letter queue, and the
//! operations the operator and the agent need on them, behind [`Queues`].
//!
//! Everything here holds on moto and AWS alike; moto answers the queue
//! attributes, redrive and batch calls with AWS's wire format. (moto's
//! `ApproximateNumberOf*` counts are exact where AWS's are approximate, which
//! the scaling policy must tolerate anyway.)

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use thiserror::Error;

use super::error::{AwsFault, FaultKind, Service};
use super::fleet_tags::FleetId;
use super::recorder::CallRecorder;
use super::settings::{Aws, observe};
use crate::api::fleet::QueueSpec;

/// Most entries SQS takes in one batch call, and most messages one receive
/// returns.
pub const MAX_BATCH: usize = 10;
/// Longest long-poll wait SQS allows.
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// Longest queue name SQS allows.
pub const MAX_QUEUE_NAME_LEN: usize = 80;

/// A queue URL.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QueueUrl(String);

impl QueueUrl {
    /// Wraps a queue URL.
    pub fn new(url: impl Into<String>) -> Self {
        QueueUrl(url.into())
    }

    /// The URL as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The handle that deletes or re-times one received message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ReceiptHandle(String);

impl ReceiptHandle {
    /// Wraps a receipt handle.
    pub fn new(handle: impl Into<String>) -> Self {
        ReceiptHandle(handle.into())
    }

    /// The handle as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A queue to create or converge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueDefinition {
    /// Queue name (at most 80 characters: letters, digits, `-`, `_`).
    pub name: String,
    /// How long a received message stays invisible.
    pub visibility_timeout: Duration,
    /// Default long-poll wait of a receive (0 to 20 s).
    pub receive_wait: Duration,
    /// How long a message is kept.
    pub message_retention: Duration,
    pub tags: BTreeMap<String, String>,
    /// The dead-letter queue, if any.
    pub dead_letter: Option<DeadLetterDefinition>,
}

/// The dead-letter queue of a [`QueueDefinition`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterDefinition {
    pub name: String,
    /// Receives after which a message moves there.
    pub max_receive_count: u32,
    /// How long it keeps messages.
    pub message_retention: Duration,
}

impl QueueDefinition {
    /// The request queue (and its dead-letter queue) of a fleet.
    pub fn requests_for(fleet: &FleetId, spec: &QueueSpec) -> Self {
        let tags = fleet.tags(&BTreeMap::new());
        QueueDefinition {
            name: queue_name(fleet, "requests"),
            visibility_timeout: seconds(spec.visibility_timeout_seconds),
            receive_wait: MAX_WAIT,
            message_retention: seconds(spec.message_retention_seconds),
            tags,
            dead_letter: Some(DeadLetterDefinition {
                name: queue_name(fleet, "requests-dlq"),
                max_receive_count: u32::try_from(spec.max_receive_count).unwrap_or(1).max(1),
                // Dead letters are kept as long as SQS allows, for inspection.
                message_retention: Duration::from_secs(1_209_600),
            }),
        }
    }

    /// The events queue of a fleet (replies and forwarded deletes, read by the
    /// operator).
    pub fn events_for(fleet: &FleetId) -> Self {
        QueueDefinition {
            name: queue_name(fleet, "events"),
            visibility_timeout: Duration::from_secs(30),
            receive_wait: MAX_WAIT,
            message_retention: Duration::from_secs(86_400),
            tags: fleet.tags(&BTreeMap::new()),
            dead_letter: None,
        }
    }
}

fn seconds(value: i32) -> Duration {
    Duration::from_secs(u64::try_from(value).unwrap_or(0))
}

/// `bf-<namespace>-<name>-<uid prefix>-<purpose>`, cut to SQS's limits. The
/// uid prefix keeps two fleets whose long names share a prefix apart.
pub fn queue_name(fleet: &FleetId, purpose: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    let uid: String = fleet
        .uid()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    let suffix = format!("-{uid}-{}", clean(purpose));
    let mut stem = format!("bf-{}-{}", clean(fleet.namespace()), clean(fleet.name()));
    stem.truncate(MAX_QUEUE_NAME_LEN.saturating_sub(suffix.len()));
    stem + &suffix
}

/// A queue as ensured: its URL and ARN, and its dead-letter queue's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnsuredQueue {
    /// Queue URL.
    pub url: QueueUrl,
    /// Queue ARN.
    pub arn: String,
    /// Dead-letter queue URL, when there is one.
    pub dead_letter_url: Option<QueueUrl>,
    /// Dead-letter queue ARN, when there is one.
    pub dead_letter_arn: Option<String>,
}

/// How many messages a queue holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Waiting to be received.
    pub visible: u64,
    /// Received and not yet deleted.
    pub in_flight: u64,
    /// Sent with a delay that has not passed.
    pub delayed: u64,
}

/// A message to send.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The body (JSON for our protocol).
    pub body: String,
    /// Delay before it becomes visible (at most 15 minutes).
    pub delay: Duration,
    /// String message attributes (a signature: `protocol::signing`).
    pub attributes: BTreeMap<String, String>,
}

/// The SDK's form of string message attributes.
fn sdk_attributes(
    attributes: &BTreeMap<String, String>,
) -> Option<HashMap<String, MessageAttributeValue>> {
    if attributes.is_empty() {
        return None;
    }
    let mut sdk = HashMap::with_capacity(attributes.len());
    for (name, value) in attributes {
        let value = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .ok()?;
        sdk.insert(name.clone(), value);
    }
    Some(sdk)
}

/// A received message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// SQS message id.
    pub message_id: String,
    /// Handle to delete or re-time it.
    pub receipt: ReceiptHandle,
    pub body: String,
    /// How many times it has been received, this time included.
    pub receive_count: u32,
    /// Its string message attributes.
    pub attributes: BTreeMap<String, String>,
}

/// How to receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiveOptions {
    /// At most this many messages (1..=10).
    pub max_messages: u32,
    /// Long-poll wait (0..=20 s).
    pub wait: Duration,
    /// Invisibility of the received messages; the queue's default when `None`.
    pub visibility: Option<Duration>,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        ReceiveOptions {
            max_messages: MAX_BATCH as u32,
            wait: MAX_WAIT,
            visibility: None,
        }
    }
}

/// One entry of a batch that SQS refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchFailure {
    /// Index of the entry in the caller's slice.
    pub index: usize,
    /// SQS error code.
    pub code: String,
    /// SQS message.
    pub message: String,
    /// Whether the entry itself was at fault (retrying it unchanged won't help).
    pub sender_fault: bool,
}

/// What a batch call did, entry by entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Indexes (into the caller's slice) that succeeded, with the message id
    /// for sends.
    pub succeeded: Vec<(usize, Option<String>)>,
    /// Entries that failed.
    pub failed: Vec<BatchFailure>,
}

/// What went wrong with an SQS call.
#[derive(Debug, Error)]
pub enum QueueError {
    /// SQS throttled the call beyond the retry budget: retry later.
    #[error("SQS is throttling ({0}); retry later")]
    Throttled(AwsFault),
    /// The queue does not exist (or the receipt handle is stale).
    #[error("not found: {0}")]
    NotFound(AwsFault),
    /// SQS refused the request as invalid.
    #[error("invalid SQS request: {0}")]
    InvalidRequest(AwsFault),
    /// Credentials lack a permission or are invalid.
    #[error("access denied: {0}; check the operator's IAM role")]
    AccessDenied(AwsFault),
    /// The call timed out; retry later.
    #[error("timed out: {0}")]
    Timeout(AwsFault),
    /// Server error or broken connection after retries; retry later.
    #[error("SQS unavailable: {0}")]
    Unavailable(AwsFault),
    /// SQS answered without something it always sends.
    #[error("SQS {operation} answered without {what}")]
    MalformedResponse {
        /// Operation called.
        operation: &'static str,
        /// What was missing.
        what: &'static str,
    },
}

impl QueueError {
    /// Whether the same call may succeed later unchanged.
    pub fn is_retryable(&self) -> bool {
        match self {
            QueueError::Throttled(_) | QueueError::Timeout(_) | QueueError::Unavailable(_) => true,
            QueueError::NotFound(_)
            | QueueError::InvalidRequest(_)
            | QueueError::AccessDenied(_)
            | QueueError::MalformedResponse { .. } => false,
        }
    }

    /// The AWS error code, when the failure came from AWS.
    pub fn aws_code(&self) -> Option<&str> {
        self.fault().and_then(|f| f.code.as_deref())
    }

    /// The underlying AWS fault, when there is one.
    pub fn fault(&self) -> Option<&AwsFault> {
        match self {
            QueueError::Throttled(f)
            | QueueError::NotFound(f)
            | QueueError::InvalidRequest(f)
            | QueueError::AccessDenied(f)
            | QueueError::Timeout(f)
            | QueueError::Unavailable(f) => Some(f),
            QueueError::MalformedResponse { .. } => None,
        }
    }
}

impl From<AwsFault> for QueueError {
    fn from(fault: AwsFault) -> Self {
        match fault.kind {
            FaultKind::Throttled => QueueError::Throttled(fault),
            FaultKind::NotFound => QueueError::NotFound(fault),
            FaultKind::InvalidRequest => QueueError::InvalidRequest(fault),
            FaultKind::AccessDenied => QueueError::AccessDenied(fault),
            FaultKind::Timeout => QueueError::Timeout(fault),
            FaultKind::Capacity | FaultKind::Unavailable => QueueError::Unavailable(fault),
        }
    }
}

/// SQS, in our domain's terms.
pub trait Queues: Send + Sync {
    /// Creates the queue (and its dead-letter queue, with the redrive policy)
    /// or, when it exists, converges its attributes and tags. Idempotent.
    fn ensure_queue(
        &self,
        definition: &QueueDefinition,
    ) -> impl Future<Output = Result<EnsuredQueue, QueueError>> + Send;

    /// Visible, in-flight and delayed counts, in one call.
    fn depth(
        &self,
        queue: &QueueUrl,
    ) -> impl Future<Output = Result<QueueDepth, QueueError>> + Send;

    /// Sends one message; returns its id.
    fn send(
        &self,
        queue: &QueueUrl,
        message: &OutgoingMessage,
    ) -> impl Future<Output = Result<String, QueueError>> + Send;

    /// Sends messages in batches of ten.
    fn send_batch(
        &self,
        queue: &QueueUrl,
        messages: &[OutgoingMessage],
    ) -> impl Future<Output = Result<BatchOutcome, QueueError>> + Send;

    /// Receives up to ten messages, long-polling.
    fn receive(
        &self,
        queue: &QueueUrl,
        options: ReceiveOptions,
    ) -> impl Future<Output = Result<Vec<ReceivedMessage>, QueueError>> + Send;

    /// Deletes one received message.
    fn delete(
        &self,
        queue: &QueueUrl,
        receipt: &ReceiptHandle,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Deletes received messages in batches of ten.
    fn delete_batch(
        &self,
        queue: &QueueUrl,
        receipts: &[ReceiptHandle],
    ) -> impl Future<Output = Result<BatchOutcome, QueueError>> + Send;

    /// Changes how long a received message stays invisible (0 makes it
    /// visible again at once).
    fn change_visibility(
        &self,
        queue: &QueueUrl,
        receipt: &ReceiptHandle,
        visibility: Duration,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Deletes a queue.
    fn delete_queue(&self, queue: &QueueUrl)
    -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// [`Queues`] on the AWS SDK.
#[derive(Clone, Debug)]
pub struct Sqs {
    client: aws_sdk_sqs::Client,
    recorder: Arc<CallRecorder>,
    attempt_timeout: Duration,
}

impl Sqs {
    /// A client using the loaded AWS configuration.
    pub fn new(aws: &Aws) -> Self {
        Sqs {
            client: aws_sdk_sqs::Client::new(aws.sdk_config()),
            recorder: Arc::clone(aws.recorder()),
            attempt_timeout: aws.settings().attempt_timeout,
        }
    }

    /// The URL of the queue named `name`; `None` when there is none.
    pub async fn find_queue(&self, name: &str) -> Result<Option<QueueUrl>, QueueError> {
        let call = self.client.get_queue_url().queue_name(name).send();
        match observe(&self.recorder, Service::Sqs, "GetQueueUrl", call).await {
            Ok(out) => Ok(out.queue_url().map(QueueUrl::new)),
            Err(fault) if fault.kind == FaultKind::NotFound => Ok(None),
            Err(fault) => Err(fault.into()),
        }
    }

    /// Creates the named queue, or sets the attributes and tags of the existing one.
    async fn converge(
        &self,
        name: &str,
        attributes: HashMap<QueueAttributeName, String>,
        tags: &BTreeMap<String, String>,
    ) -> Result<(QueueUrl, String), QueueError> {
        let tags: HashMap<String, String> =
            tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let url = match self.find_queue(name).await? {
            Some(url) => {
                let call = self
                    .client
                    .set_queue_attributes()
                    .queue_url(url.as_str())
                    .set_attributes(Some(attributes))
                    .send();
                observe(&self.recorder, Service::Sqs, "SetQueueAttributes", call).await?;
                if !tags.is_empty() {
                    let call = self
                        .client
                        .tag_queue()
                        .queue_url(url.as_str())
                        .set_tags(Some(tags))
                        .send();
                    observe(&self.recorder, Service::Sqs, "TagQueue", call).await?;
                }
                url
            }
            None => {
                tracing::info!(queue = name, "creating queue");
                let call = self
                    .client
                    .create_queue()
                    .queue_name(name)
                    .set_attributes(Some(attributes))
                    .set_tags(Some(tags).filter(|t| !t.is_empty()))
                    .send();
                let out = observe(&self.recorder, Service::Sqs, "CreateQueue", call).await?;
                out.queue_url()
                    .map(QueueUrl::new)
                    .ok_or(QueueError::MalformedResponse {
                        operation: "CreateQueue",
                        what: "a queue URL",
                    })?
            }
        };
        let arn = self.queue_arn(&url).await?;
        Ok((url, arn))
    }

    async fn queue_arn(&self, url: &QueueUrl) -> Result<String, QueueError> {
        let call = self
            .client
            .get_queue_attributes()
            .queue_url(url.as_str())
            .attribute_names(QueueAttributeName::QueueArn)
            .send();
        let out = observe(&self.recorder, Service::Sqs, "GetQueueAttributes", call).await?;
        out.attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .ok_or(QueueError::MalformedResponse {
                operation: "GetQueueAttributes",
                what: "the queue ARN",
            })
    }
}

fn secs(d: Duration) -> String {
    d.as_secs().to_string()
}

fn count_attribute(
    attributes: Option<&HashMap<QueueAttributeName, String>>,
    name: &QueueAttributeName,
) -> u64 {
    attributes
        .and_then(|a| a.get(name))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Queues for Sqs {
    #[tracing::instrument(skip_all, fields(queue = %definition.name))]
    async fn ensure_queue(&self, definition: &QueueDefinition) -> Result<EnsuredQueue, QueueError> {
        let mut attributes = HashMap::from([
            (
                QueueAttributeName::VisibilityTimeout,
                secs(definition.visibility_timeout),
            ),
            (
                QueueAttributeName::ReceiveMessageWaitTimeSeconds,
                secs(definition.receive_wait.min(MAX_WAIT)),
            ),
            (
                QueueAttributeName::MessageRetentionPeriod,
                secs(definition.message_retention),
            ),
        ]);
        let mut dead_letter = None;
        if let Some(dlq) = &definition.dead_letter {
            let dlq_attributes = HashMap::from([(
                QueueAttributeName::MessageRetentionPeriod,
                secs(dlq.message_retention),
            )]);
            let (url, arn) = self
                .converge(&dlq.name, dlq_attributes, &definition.tags)
                .await?;
            let policy = serde_json::json!({
                "deadLetterTargetArn": arn,
                "maxReceiveCount": dlq.max_receive_count,
            });
            attributes.insert(QueueAttributeName::RedrivePolicy, policy.to_string());
            dead_letter = Some((url, arn));
        }
        let (url, arn) = self
            .converge(&definition.name, attributes, &definition.tags)
            .await?;
        let (dead_letter_url, dead_letter_arn) = dead_letter.unzip();
        Ok(EnsuredQueue {
            url,
            arn,
            dead_letter_url,
            dead_letter_arn,
        })
    }

    async fn depth(&self, queue: &QueueUrl) -> Result<QueueDepth, QueueError> {
        let call = self
            .client
            .get_queue_attributes()
            .queue_url(queue.as_str())
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send();
        let out = observe(&self.recorder, Service::Sqs, "GetQueueAttributes", call).await?;
        let attributes = out.attributes();
        Ok(QueueDepth {
            visible: count_attribute(attributes, &QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: count_attribute(
                attributes,
                &QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            ),
            delayed: count_attribute(
                attributes,
                &QueueAttributeName::ApproximateNumberOfMessagesDelayed,
            ),
        })
    }

    async fn send(
        &self,
        queue: &QueueUrl,
        message: &OutgoingMessage,
    ) -> Result<String, QueueError> {
        let call = self
            .client
            .send_message()
            .queue_url(queue.as_str())
            .message_body(&message.body)
            .delay_seconds(message.delay.as_secs().min(900) as i32)
            .set_message_attributes(sdk_attributes(&message.attributes))
            .send();
        let out = observe(&self.recorder, Service::Sqs, "SendMessage", call).await?;
        out.message_id()
            .map(str::to_owned)
            .ok_or(QueueError::MalformedResponse {
                operation: "SendMessage",
                what: "a message id",
            })
    }

    async fn send_batch(
        &self,
        queue: &QueueUrl,
        messages: &[OutgoingMessage],
    ) -> Result<BatchOutcome, QueueError> {
        let mut outcome = BatchOutcome::default();
        for (chunk_index, chunk) in messages.chunks(MAX_BATCH).enumerate() {
            let base = chunk_index * MAX_BATCH;
            let mut entries = Vec::with_capacity(chunk.len());
            for (i, message) in chunk.iter().enumerate() {
                let entry = SendMessageBatchRequestEntry::builder()
                    .id((base + i).to_string())
                    .message_body(&message.body)
                    .delay_seconds(message.delay.as_secs().min(900) as i32)
                    .set_message_attributes(sdk_attributes(&message.attributes))
                    .build()
                    .map_err(|_| QueueError::MalformedResponse {
                        operation: "SendMessageBatch",
                        what: "a buildable entry",
                    })?;
                entries.push(entry);
            }
            let call = self
                .client
                .send_message_batch()
                .queue_url(queue.as_str())
                .set_entries(Some(entries))
                .send();
            let out = observe(&self.recorder, Service::Sqs, "SendMessageBatch", call).await?;
            for ok in out.successful() {
                if let Ok(index) = ok.id().parse() {
                    outcome
                        .succeeded
                        .push((index, Some(ok.message_id().to_owned())));
                }
            }
            outcome.failed.extend(batch_failures(out.failed()));
        }
        Ok(outcome)
    }

    async fn receive(
        &self,
        queue: &QueueUrl,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let wait = options.wait.min(MAX_WAIT);
        // A long poll legitimately takes `wait`: give each attempt that much
        // more than the usual attempt timeout.
        let attempt_timeout = self.attempt_timeout + wait;
        let overrides = aws_sdk_sqs::config::Builder::default().timeout_config(
            aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(attempt_timeout)
                .operation_timeout(attempt_timeout * 3)
                .build(),
        );
        let call = self
            .client
            .receive_message()
            .queue_url(queue.as_str())
            .max_number_of_messages(options.max_messages.clamp(1, MAX_BATCH as u32) as i32)
            .wait_time_seconds(wait.as_secs() as i32)
            .set_visibility_timeout(options.visibility.map(|v| v.as_secs() as i32))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_attribute_names("All")
            .customize()
            .config_override(overrides)
            .send();
        let out = observe(&self.recorder, Service::Sqs, "ReceiveMessage", call).await?;
        let mut received = Vec::new();
        for message in out.messages() {
            let (Some(id), Some(receipt)) = (message.message_id(), message.receipt_handle()) else {
                return Err(QueueError::MalformedResponse {
                    operation: "ReceiveMessage",
                    what: "a message id and receipt handle",
                });
            };
            let receive_count = message
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            let attributes = message
                .message_attributes()
                .into_iter()
                .flatten()
                .filter_map(|(name, value)| Some((name.clone(), value.string_value()?.to_owned())))
                .collect();
            received.push(ReceivedMessage {
                message_id: id.to_owned(),
                receipt: ReceiptHandle::new(receipt),
                body: message.body().unwrap_or_default().to_owned(),
                receive_count,
                attributes,
            });
        }
        Ok(received)
    }

    async fn delete(&self, queue: &QueueUrl, receipt: &ReceiptHandle) -> Result<(), QueueError> {
        let call = self
            .client
            .delete_message()
            .queue_url(queue.as_str())
            .receipt_handle(receipt.as_str())
            .send();
        observe(&self.recorder, Service::Sqs, "DeleteMessage", call).await?;
        Ok(())
    }

    async fn delete_batch(
        &self,
        queue: &QueueUrl,
        receipts: &[ReceiptHandle],
    ) -> Result<BatchOutcome, QueueError> {
        let mut outcome = BatchOutcome::default();
        for (chunk_index, chunk) in receipts.chunks(MAX_BATCH).enumerate() {
            let base = chunk_index * MAX_BATCH;
            let mut entries = Vec::with_capacity(chunk.len());
            for (i, receipt) in chunk.iter().enumerate() {
                let entry = DeleteMessageBatchRequestEntry::builder()
                    .id((base + i).to_string())
                    .receipt_handle(receipt.as_str())
                    .build()
                    .map_err(|_| QueueError::MalformedResponse {
                        operation: "DeleteMessageBatch",
                        what: "a buildable entry",
                    })?;
                entries.push(entry);
            }
            let call = self
                .client
                .delete_message_batch()
                .queue_url(queue.as_str())
                .set_entries(Some(entries))
                .send();
            let out = observe(&self.recorder, Service::Sqs, "DeleteMessageBatch", call).await?;
            for ok in out.successful() {
                if let Ok(index) = ok.id().parse() {
                    outcome.succeeded.push((index, None));
                }
            }
            outcome.failed.extend(batch_failures(out.failed()));
        }
        Ok(outcome)
    }

    async fn change_visibility(
        &self,
        queue: &QueueUrl,
        receipt: &ReceiptHandle,
        visibility: Duration,
    ) -> Result<(), QueueError> {
        let call = self
            .client
            .change_message_visibility()
            .queue_url(queue.as_str())
            .receipt_handle(receipt.as_str())
            .visibility_timeout(visibility.as_secs().min(43_200) as i32)
            .send();
        observe(
            &self.recorder,
            Service::Sqs,
            "ChangeMessageVisibility",
            call,
        )
        .await?;
        Ok(())
    }

    async fn delete_queue(&self, queue: &QueueUrl) -> Result<(), QueueError> {
        tracing::info!(queue = %queue, "deleting queue");
        let call = self.client.delete_queue().queue_url(queue.as_str()).send();
        observe(&self.recorder, Service::Sqs, "DeleteQueue", call).await?;
        Ok(())
    }
}

/// The entries SQS refused in a batch call, by their index in the batch (the
/// entry ids are the indexes as strings).
fn batch_failures(failed: &[aws_sdk_sqs::types::BatchResultErrorEntry]) -> Vec<BatchFailure> {
    failed
        .iter()
        .filter_map(|f| {
            let index = f.id().parse().ok()?;
            Some(BatchFailure {
                index,
                code: f.code().to_owned(),
                message: f.message().unwrap_or_default().to_owned(),
                sender_fault: f.sender_fault(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_fit_sqs_limits() {
        let long = "x".repeat(200);
        let fleet = FleetId::new("team.a", long, "0b6c4f1e-3b4a-4e8d").unwrap();
        let name = queue_name(&fleet, "requests-dlq");
        assert!(name.len() <= MAX_QUEUE_NAME_LEN, "{name}");
        assert!(name.ends_with("-0b6c4f1e-requests-dlq"), "{name}");
        assert!(name.starts_with("bf-team-a-xxx"), "{name}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }

    #[test]
    fn request_queue_follows_the_fleet_spec() {
        let fleet = FleetId::new("ns", "web", "abcdef12-0000").unwrap();
        let spec = QueueSpec {
            max_receive_count: 4,
            visibility_timeout_seconds: 90,
            ..QueueSpec::default()
        };
        let definition = QueueDefinition::requests_for(&fleet, &spec);
        assert_eq!(definition.visibility_timeout, Duration::from_secs(90));
        assert_eq!(
            definition.dead_letter.as_ref().map(|d| d.max_receive_count),
            Some(4)
        );
        assert_eq!(definition.name, "bf-ns-web-abcdef12-requests");
    }
}
