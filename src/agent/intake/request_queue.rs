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

/// The attribute of a message the agent moved to the dead-letter queue
/// that says why, when the reason is not the message itself.
pub const DEAD_LETTER_REASON_ATTRIBUTE: &str = "browserfleet-dead-lettered-because";
/// SQS's limit of attributes on one message.
const MAX_MESSAGE_ATTRIBUTES: usize = 10;

/// How long a message that belongs on a dead-letter queue is hidden when
/// there is none, at its `receive_count`th receive: 30 s, doubling with each
/// receive up to SQS's longest visibility timeout, 12 h.
pub fn hidden_without_dead_letter_queue(receive_count: u32) -> Duration {
    const FIRST: Duration = Duration::from_secs(30);
    const LONGEST: Duration = Duration::from_secs(12 * 3600);
    let doublings = receive_count.saturating_sub(1).min(16);
    FIRST.saturating_mul(1 << doublings).min(LONGEST)
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

    /// Gives a create back that is no failure of its own (its session is
    /// still starting here, or the agent has a free slot but no usable
    /// port) as a copy with `body` that appears after a short delay, and
    /// deletes the original once the copy is on the queue: a give-back
    /// would count towards the queue's `maxReceiveCount`, and the redrive
    /// policy would move a create that only waited to the dead-letter
    /// queue, where nobody answers it (issue #28 item 7). Falls back to a
    /// plain give-back when the copy cannot be sent.
    pub async fn give_back_as_copy(&self, message: &ReceivedMessage, body: String) {
        let copy = OutgoingMessage {
            attributes: self.copy_attributes(message, &body),
            body,
            delay: GIVE_BACK_DELAY,
        };
        if let Err(error) = self.queues.send(&self.url, &copy).await {
            tracing::warn!(%error, "create not copied; giving it back");
            self.give_back(message).await;
            return;
        }
        if let Err(error) = self.queues.delete(&self.url, &message.receipt).await {
            // The original comes back beside its copy: one session's
            // duplicate deliveries, both naming it.
            tracing::warn!(%error, "original of a create given back not deleted; it will be delivered twice");
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
        self.move_to_dead_letter(message, None).await;
    }

    /// [`RequestQueue::dead_letter`], saying why in the moved message's
    /// attribute [`DEAD_LETTER_REASON_ATTRIBUTE`] (when the message has room
    /// for one more attribute).
    pub async fn dead_letter_because(&self, message: &ReceivedMessage, why: &str) {
        self.move_to_dead_letter(message, Some(why)).await;
    }

    async fn move_to_dead_letter(&self, message: &ReceivedMessage, why: Option<&str>) {
        let Some(dlq) = &self.dead_letter else {
            // No dead-letter queue of ours (an adopted request queue): the
            // message is hidden longer at each receive, so that it does not
            // circle through every poll (issue #28 item 7); the queue's own
            // redrive policy, when it has one, moves it after its
            // maxReceiveCount receives, else it stays until its retention
            // ends.
            let hidden = hidden_without_dead_letter_queue(message.receive_count);
            tracing::warn!(
                message_id = %message.message_id,
                receive_count = message.receive_count,
                hidden_seconds = hidden.as_secs(),
                "no dead-letter queue configured; the message is hidden instead"
            );
            if let Err(error) = self
                .queues
                .change_visibility(&self.url, &message.receipt, hidden)
                .await
            {
                tracing::warn!(%error, "could not hide the message; it reappears after its visibility timeout");
            }
            return;
        };
        let mut attributes = message.attributes.clone();
        if let Some(why) = why
            && attributes.len() < MAX_MESSAGE_ATTRIBUTES
        {
            let why: String = why.chars().take(500).collect();
            attributes.insert(DEAD_LETTER_REASON_ATTRIBUTE.to_owned(), why);
        }
        let moved = OutgoingMessage {
            body: message.body.clone(),
            delay: Duration::ZERO,
            attributes,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_dead_letter_queue_a_message_hides_longer_at_each_receive_up_to_twelve_hours() {
        let seconds: Vec<u64> = [0, 1, 2, 3, 5, 11, 12, 40, u32::MAX]
            .into_iter()
            .map(|n| hidden_without_dead_letter_queue(n).as_secs())
            .collect();
        assert_eq!(seconds, [30, 30, 60, 120, 480, 30720, 43200, 43200, 43200]);
    }
}
