//! The consumer of a fleet's events queue, the one way agents speak to the
//! operator: their announcements (`node.registered`, `node.heartbeat`) go
//! into [`Registrations`] and ask for a reconcile when they tell something
//! new; replies and forwarded deletes for BrowserSessions go through the
//! [`inbox`] to the session reconciler's reply handler, and their message is
//! deleted only once it applied them. The per-fleet watches run one
//! consumer per fleet.

pub mod inbox;
mod registrations;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;

use crate::api::BrowserFleet;
use crate::cloud::queues::{ReceiptHandle, ReceivedMessage};
use crate::cloud::{QueueUrl, Queues, ReceiveOptions, SecretValue, Sqs};
use crate::operator::metrics::Metrics;
use crate::operator::trigger::FleetTrigger;
use crate::protocol::FleetEvent;
use crate::protocol::signing::{self, Purpose};
pub use inbox::{Delivery, Inbox};
pub use registrations::Registrations;

/// The reader of one fleet's events queue.
pub struct EventsConsumer {
    pub sqs: Sqs,
    pub events: QueueUrl,
    pub fleet: ObjectRef<BrowserFleet>,
    pub uid: String,
    pub registrations: Arc<Registrations>,
    pub trigger: FleetTrigger,
    pub inbox: Inbox,
    /// Long-poll wait (at most 20 s).
    pub wait: Duration,
    /// The key the fleet's agents sign their messages with.
    pub message_key: SecretValue,
    pub metrics: Arc<Metrics>,
}

/// Signatures accepted within their tolerance, with the SQS message that
/// carried each: a copy sent again by someone who read the queue is
/// refused, while the same message delivered again (one not applied is
/// left for the next read) is not.
#[derive(Default)]
struct Accepted {
    by_signature: HashMap<String, (String, i64)>,
}

impl Accepted {
    /// Whether `message` is a fresh, valid message of the fleet's agents;
    /// the reason to refuse it if not.
    fn check(
        &mut self,
        key: &[u8],
        message: &ReceivedMessage,
        now: i64,
    ) -> Result<(), &'static str> {
        signing::verify(key, Purpose::Event, &message.body, &message.attributes, now)
            .map_err(|error| error.label())?;
        let signature = message
            .attributes
            .get(signing::SIGNATURE_ATTRIBUTE)
            .cloned()
            .unwrap_or_default();
        let window = i64::try_from(signing::TOLERANCE.as_secs()).unwrap_or(i64::MAX);
        self.by_signature
            .retain(|_, (_, at)| now.saturating_sub(*at) <= window.saturating_mul(2));
        match self.by_signature.get(&signature) {
            Some((id, _)) if *id != message.message_id => Err("replayed"),
            _ => {
                self.by_signature
                    .insert(signature, (message.message_id.clone(), now));
                Ok(())
            }
        }
    }
}

impl EventsConsumer {
    /// Reads the events queue until aborted.
    pub async fn run(self) {
        let EventsConsumer {
            sqs,
            events,
            fleet,
            uid,
            registrations,
            trigger,
            inbox,
            wait,
            message_key,
            metrics,
        } = self;
        let mut accepted = Accepted::default();
        let name = format!(
            "{}/{}",
            fleet.namespace.as_deref().unwrap_or_default(),
            fleet.name
        );
        let options = ReceiveOptions {
            max_messages: 10,
            wait,
            visibility: None,
        };
        loop {
            let messages = match sqs.receive(&events, options).await {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the events queue; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
            };
            let mut changed = false;
            let mut done = Vec::with_capacity(messages.len());
            // Session deliveries by session, each session's in the order read.
            let mut deliveries: BTreeMap<String, Vec<(ReceiptHandle, Delivery)>> = BTreeMap::new();
            for message in messages {
                let now = Timestamp::now().as_second();
                if let Err(reason) = accepted.check(message_key.expose().as_bytes(), &message, now)
                {
                    // Not from an agent of this fleet: whoever may send to
                    // the queue must not register an address (the operator
                    // would dial it with the fleet token) or answer for a
                    // session.
                    metrics.event_refused(reason);
                    tracing::warn!(
                        message_id = %message.message_id,
                        reason,
                        "a message on the events queue not signed by an agent of the fleet; dropped"
                    );
                    done.push(message.receipt);
                    continue;
                }
                match serde_json::from_str::<FleetEvent>(&message.body) {
                    Ok(FleetEvent::Node(announcement)) if announcement.fleet == name => {
                        changed |= registrations.record(&uid, &announcement, Timestamp::now());
                    }
                    Ok(FleetEvent::Node(announcement)) => {
                        tracing::warn!(
                            from = %announcement.fleet,
                            instance = %announcement.instance_id,
                            "an announcement of another fleet on this fleet's events queue; dropped"
                        );
                    }
                    Ok(FleetEvent::Reply(reply)) => {
                        deliveries
                            .entry(reply.session_id.to_string())
                            .or_default()
                            .push((message.receipt, Delivery::Reply(reply)));
                        continue;
                    }
                    Ok(FleetEvent::Delete(delete)) => {
                        deliveries
                            .entry(delete.session_id.to_string())
                            .or_default()
                            .push((message.receipt, Delivery::Delete(delete)));
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "unreadable message on the events queue; dropped");
                    }
                }
                done.push(message.receipt);
            }
            // A registration is acted on without waiting for the sessions.
            if changed {
                trigger.reconcile(&fleet);
            }
            let applied = futures::future::join_all(deliveries.into_values().map(|session| {
                let inbox = &inbox;
                let uid = &uid;
                async move {
                    let mut applied = Vec::new();
                    for (receipt, delivery) in session {
                        // One not applied keeps it and the later ones of its
                        // session for the next read, in order.
                        if !inbox.deliver(uid, delivery).await {
                            break;
                        }
                        applied.push(receipt);
                    }
                    applied
                }
            }))
            .await;
            done.extend(applied.into_iter().flatten());
            if !done.is_empty()
                && let Err(error) = sqs.delete_batch(&events, &done).await
            {
                tracing::warn!(%error, "cannot delete read events; they will be read again");
            }
        }
    }
}
