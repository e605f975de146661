//! The hand-over of session replies and forwarded deletes from the events
//! queue's consumer to the session reconciler's reply handler
//! (`sessions::replies::serve`). The consumer deletes a
//! message only once the handler says it applied it.

use futures::channel::{mpsc, oneshot};

use crate::protocol::{EventsMessage, Reply};

/// What the consumer hands over.
pub enum Delivery {
    /// A reply to a request the operator enqueued.
    Reply(Reply),
    /// A delete an agent could not serve.
    Delete(EventsMessage),
}

pub(crate) struct Envelope {
    pub(crate) fleet_uid: String,
    pub(crate) delivery: Delivery,
    pub(crate) applied: oneshot::Sender<bool>,
}

/// The consumer's side: hands a delivery over and learns whether it was
/// applied (and its message may go).
#[derive(Clone)]
pub struct Inbox {
    sender: mpsc::Sender<Envelope>,
}

impl Inbox {
    /// An inbox and the receiver [`serve`] reads.
    pub fn new() -> (Inbox, InboxReceiver) {
        let (sender, receiver) = mpsc::channel(1024);
        (Inbox { sender }, InboxReceiver(receiver))
    }

    /// Applies `delivery` of the fleet `fleet_uid`; whether it was (false
    /// keeps the message for another read).
    pub async fn deliver(&self, fleet_uid: &str, delivery: Delivery) -> bool {
        let (applied, done) = oneshot::channel();
        let envelope = Envelope {
            fleet_uid: fleet_uid.to_owned(),
            delivery,
            applied,
        };
        let mut sender = self.sender.clone();
        if futures::SinkExt::send(&mut sender, envelope).await.is_err() {
            return false;
        }
        done.await.unwrap_or(false)
    }
}

/// What [`serve`] reads.
pub struct InboxReceiver(pub(crate) mpsc::Receiver<Envelope>);
