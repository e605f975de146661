//! The fleet's request queue as the intake uses it: receiving, and what
//! becomes of a received message — deleted once answered, given back with a
//! delay, returned at once, moved to the dead-letter queue, or put back as a
//! copy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::GIVE_BACK_DELAY;
use crate::cloud::SecretValue;
use crate::cloud::queues::{
    BatchOutcome, OutgoingMessage, QueueError, QueueUrl, Queues, ReceiptHandle, ReceiveOptions,
    ReceivedMessage,
};
use crate::protocol::signing::{self, Purpose};

/// What tells the operator's requests from producers': the fleet's message
/// key, and the events queue a producer's request must not name.
pub struct OperatorTrust {
    /// The fleet's message key.
    pub message_key: SecretValue,
    /// The fleet's events queue.
    pub events: String,
}

impl OperatorTrust {
    /// Whether the operator signed `message` (within the signature's
    /// tolerance).
    fn signed(&self, message: &ReceivedMessage) -> bool {
        signing::verify(
            self.message_key.expose().as_bytes(),
            Purpose::Request,
            &message.body,
            &message.attributes,
            jiff::Timestamp::now().as_second(),
        )
        .is_ok()
    }

    /// The attributes of a copy of `original` with body `body`: signed
    /// again when the original was.
    fn copy_attributes(&self, original: &ReceivedMessage, body: &str) -> BTreeMap<String, String> {
        if !self.signed(original) {
            return BTreeMap::new();
        }
        signing::sign(
            self.message_key.expose().as_bytes(),
            Purpose::Request,
            body,
            jiff::Timestamp::now().as_second(),
        )
    }
}

/// The request queue and its dead-letter queue.
pub struct RequestQueue<Q> {
    queues: Arc<Q>,
    url: QueueUrl,
    dead_letter: Option<QueueUrl>,
    /// How long a received message stays invisible while it is handled.
    visibility: Duration,
    /// What tells the operator's requests on it from producers'.
    trust: OperatorTrust,
}

impl<Q: Queues> RequestQueue<Q> {
    /// The queue at `url` with its dead-letter queue, when configured.
    pub fn new(
        queues: Arc<Q>,
        url: QueueUrl,
        dead_letter: Option<QueueUrl>,
        visibility: Duration,
        trust: OperatorTrust,
    ) -> Self {
        RequestQueue {
            queues,
            url,
            dead_letter,
            visibility,
            trust,
        }
    }

    /// Whether the operator signed `message`: only then may it ask for what
    /// only the operator may (`protocol::signing::reserved_use`).
    pub fn from_operator(&self, message: &ReceivedMessage) -> bool {
        self.trust.signed(message)
    }

    /// The attributes of a copy of `original` whose body is `body`.
    pub fn copy_attributes(
        &self,
        original: &ReceivedMessage,
        body: &str,
    ) -> BTreeMap<String, String> {
        self.trust.copy_attributes(original, body)
    }

    /// The fleet's events queue, which a producer's request may not name.
    pub fn events(&self) -> &str {
        &self.trust.events
    }

    /// Receives up to `max_messages`, long-polling for `wait`.
    pub async fn receive(
        &self,
        max_messages: usize,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let options = ReceiveOptions {
            max_messages: max_messages as u32,
            wait,
            visibility: Some(self.visibility),
        };
        self.queues.receive(&self.url, options).await
    }

    /// Runs `work` while keeping `message` invisible: its visibility timeout
    /// is renewed every third of it, so that no other agent receives it
    /// while its browser starts, however slow the start (issue #28 item 1:
    /// a start that outlived the timeout let a second agent take the
    /// create, and on SQS the first agent's delete with its stale receipt
    /// then deleted nothing). A renewal that fails is logged; the work goes
    /// on.
    pub async fn hold_while<T>(
        &self,
        message: &ReceivedMessage,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let every = (self.visibility / 3).max(Duration::from_secs(1));
        let renew = async {
            loop {
                tokio::time::sleep(every).await;
                if let Err(error) = self
                    .queues
                    .change_visibility(&self.url, &message.receipt, self.visibility)
                    .await
                {
                    tracing::warn!(message_id = %message.message_id, %error, "cannot keep a request invisible while it starts");
                }
            }
        };
        tokio::select! {
            done = work => done,
            never = renew => never,
        }
    }

    /// Makes a message visible again at once (one received as the agent
    /// began to drain or stop).
    pub async fn return_now(&self, message: &ReceivedMessage) {
        let _ = self
            .queues
            .change_visibility(&self.url, &message.receipt, Duration::ZERO)
            .await;
    }

    /// Makes a message visible again after a short delay, for another try
    /// here or elsewhere.
    pub async fn give_back(&self, message: &ReceivedMessage) {
        if let Err(error) = self
            .queues
            .change_visibility(&self.url, &message.receipt, GIVE_BACK_DELAY)
            .await
        {
            tracing::warn!(%error, "could not give a request back; it reappears after its visibility timeout");
        }
    }

    /// Deletes an answered message.
    pub async fn finish(&self, message: &ReceivedMessage) {
        if let Err(error) = self.queues.delete(&self.url, &message.receipt).await {
            tracing::warn!(%error, "answered request not deleted; it may be answered twice");
        }
    }

    /// Moves a message to the dead-letter queue; without one, makes it
    /// visible again so the queue's redrive policy moves it after
    /// maxReceiveCount receives.
    pub async fn dead_letter(&self, message: &ReceivedMessage) {
        let Some(dlq) = &self.dead_letter else {
            self.return_now(message).await;
            return;
        };
        let moved = OutgoingMessage {
            body: message.body.clone(),
            delay: Duration::ZERO,
            attributes: message.attributes.clone(),
        };
        match self.queues.send(dlq, &moved).await {
            Ok(_) => self.finish(message).await,
            Err(error) => tracing::warn!(%error, "dead-lettering failed; the message stays queued"),
        }
    }

    /// Sends copies of messages to the queue.
    pub async fn send_copies(
        &self,
        copies: &[OutgoingMessage],
    ) -> Result<BatchOutcome, QueueError> {
        self.queues.send_batch(&self.url, copies).await
    }

    /// Deletes the originals of copies that are on the queue; returns how
    /// many were not deleted.
    pub async fn delete_originals(&self, receipts: &[ReceiptHandle]) -> usize {
        match self.queues.delete_batch(&self.url, receipts).await {
            Ok(outcome) => outcome.failed.len(),
            Err(_) => receipts.len(),
        }
    }
}
