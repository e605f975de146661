//! The consumer of a fleet's events queue, the one way agents speak to the
//! operator: their announcements (`node.registered`, `node.heartbeat`) go
//! into [`Registrations`] and ask for a reconcile when they tell something
//! new; replies and forwarded deletes for BrowserSessions go through the
//! [`inbox`] to the session reconciler's reply handler, and their message is
//! deleted only once it applied them. The per-fleet watches run one
//! consumer per fleet.

pub mod inbox;
mod registrations;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;

use crate::api::BrowserFleet;
use crate::cloud::queues::ReceiptHandle;
use crate::cloud::{QueueUrl, Queues, ReceiveOptions, Sqs};
use crate::operator::trigger::FleetTrigger;
use crate::protocol::FleetEvent;
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
        } = self;
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
