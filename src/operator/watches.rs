//! What the operator keeps watching per fleet between reconciles, so that it
//! notices a change within a second instead of at the next timer:
//! * the **events queue**, read by one long-poll consumer per fleet: agents
//!   announce themselves there (`node.registered`, `node.heartbeat`), which is
//!   how the operator learns the address to dial for each instance — it never
//!   assumes it can reach an instance's private IP;
//! * the **request queue's depth**, polled: a burst triggers a reconcile (and
//!   so a launch) at once.
//!
//! Either asks for a reconcile of its fleet through the trigger channel the
//! controller reads. Replies and forwarded deletes for BrowserSessions also
//! arrive on the events queue: they are handed to the session reconciler's
//! [`Inbox`], and their message is deleted only once it applied them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use tracing::Instrument;

use crate::api::BrowserFleet;
use crate::cloud::queues::ReceiptHandle;
use crate::cloud::{InstanceId, QueueDepth, QueueUrl, Queues, ReceiveOptions, Sqs};
use crate::operator::plan::Registration;
use crate::operator::sessions::replies::{Delivery, Inbox};
use crate::protocol::{FleetEvent, NodeAnnouncement};

/// How often the watches run.
#[derive(Clone, Copy, Debug)]
pub struct WatchTiming {
    /// Interval of the request queue's depth poll.
    pub depth_poll: Duration,
    /// Long-poll wait on the events queue (at most 20 s).
    pub events_wait: Duration,
}

/// The registrations heard, per fleet uid.
#[derive(Debug, Default)]
pub struct Registrations {
    by_fleet: Mutex<HashMap<String, BTreeMap<InstanceId, Registration>>>,
}

impl Registrations {
    /// Records an announcement; whether it told something new (an instance,
    /// an address or a draining state not known before).
    pub fn record(
        &self,
        fleet_uid: &str,
        announcement: &NodeAnnouncement,
        heard: Timestamp,
    ) -> bool {
        let mut by_fleet = self.by_fleet.lock().unwrap_or_else(|e| e.into_inner());
        let fleet = by_fleet.entry(fleet_uid.to_owned()).or_default();
        let id = InstanceId::new(&announcement.instance_id);
        let new = Registration {
            address: announcement.address.clone(),
            agent_version: announcement.agent_version.clone(),
            heard,
        };
        let changed = fleet
            .get(&id)
            .is_none_or(|old| old.address != new.address || announcement.draining);
        fleet.insert(id, new);
        changed
    }

    /// The fleet's registrations now.
    pub fn of(&self, fleet_uid: &str) -> BTreeMap<InstanceId, Registration> {
        let by_fleet = self.by_fleet.lock().unwrap_or_else(|e| e.into_inner());
        by_fleet.get(fleet_uid).cloned().unwrap_or_default()
    }

    /// Drops the registrations of instances that no longer exist.
    pub fn retain(&self, fleet_uid: &str, keep: impl Fn(&InstanceId) -> bool) {
        let mut by_fleet = self.by_fleet.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fleet) = by_fleet.get_mut(fleet_uid) {
            fleet.retain(|id, _| keep(id));
        }
    }

    /// Forgets a deleted fleet.
    pub fn forget(&self, fleet_uid: &str) {
        let mut by_fleet = self.by_fleet.lock().unwrap_or_else(|e| e.into_inner());
        by_fleet.remove(fleet_uid);
    }
}

/// The queues one fleet's watches read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchedQueues {
    /// Requests, whose depth is polled.
    pub requests: QueueUrl,
    /// Events, consumed.
    pub events: QueueUrl,
}

struct Running {
    queues: WatchedQueues,
    tasks: tokio::task::JoinSet<()>,
}

/// The watches of every fleet, owned: dropped (aborted) when their fleet is
/// deleted or the operator stops.
pub struct FleetWatches {
    sqs: Sqs,
    registrations: Arc<Registrations>,
    trigger: UnboundedSender<ObjectRef<BrowserFleet>>,
    timing: WatchTiming,
    inbox: Inbox,
    running: Mutex<HashMap<String, Running>>,
}

impl FleetWatches {
    /// Watches that ask for reconciles on `trigger` and hand session
    /// replies to `inbox`.
    pub fn new(
        sqs: Sqs,
        registrations: Arc<Registrations>,
        trigger: UnboundedSender<ObjectRef<BrowserFleet>>,
        timing: WatchTiming,
        inbox: Inbox,
    ) -> Self {
        FleetWatches {
            sqs,
            registrations,
            trigger,
            timing,
            inbox,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Asks for a reconcile of `fleet` now.
    pub fn trigger(&self, fleet: &ObjectRef<BrowserFleet>) {
        let _ = self.trigger.unbounded_send(fleet.clone());
    }

    /// Starts the watches of a fleet, or restarts them when its queues
    /// changed; a no-op when they run on these queues.
    pub fn ensure(&self, fleet: &ObjectRef<BrowserFleet>, uid: &str, queues: &WatchedQueues) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(current) = running.get_mut(uid) {
            // A watch that ended (it never returns but by a panic) is
            // started again with the others.
            let ended = current.tasks.try_join_next().is_some();
            if &current.queues == queues && !ended {
                return;
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        let span = tracing::info_span!("fleet_watch", fleet = %fleet);
        tasks.spawn(
            EventsConsumer {
                sqs: self.sqs.clone(),
                events: queues.events.clone(),
                fleet: fleet.clone(),
                uid: uid.to_owned(),
                registrations: self.registrations.clone(),
                trigger: self.trigger.clone(),
                inbox: self.inbox.clone(),
                wait: self.timing.events_wait,
            }
            .run()
            .instrument(span.clone()),
        );
        tasks.spawn(
            poll_depth(
                self.sqs.clone(),
                queues.requests.clone(),
                fleet.clone(),
                self.trigger.clone(),
                self.timing.depth_poll,
            )
            .instrument(span),
        );
        running.insert(
            uid.to_owned(),
            Running {
                queues: queues.clone(),
                tasks,
            },
        );
    }

    /// Stops the watches of a fleet.
    pub fn stop(&self, uid: &str) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.remove(uid);
    }

    /// Stops the watches of fleets for which `keep` is false: fleets that
    /// went away without the operator's deletion (a finalizer removed by
    /// hand).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|uid, _| keep(uid));
    }

    /// Stops every watch.
    pub fn stop_all(&self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.clear();
    }
}

/// The reader of one fleet's events queue.
struct EventsConsumer {
    sqs: Sqs,
    events: QueueUrl,
    fleet: ObjectRef<BrowserFleet>,
    uid: String,
    registrations: Arc<Registrations>,
    trigger: UnboundedSender<ObjectRef<BrowserFleet>>,
    inbox: Inbox,
    wait: Duration,
}

impl EventsConsumer {
    /// Reads the events queue until aborted.
    async fn run(self) {
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
                let _ = trigger.unbounded_send(fleet.clone());
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

/// Polls the request queue's depth until aborted; a change asks for a
/// reconcile.
async fn poll_depth(
    sqs: Sqs,
    requests: QueueUrl,
    fleet: ObjectRef<BrowserFleet>,
    trigger: UnboundedSender<ObjectRef<BrowserFleet>>,
    interval: Duration,
) {
    let mut last: Option<QueueDepth> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match sqs.depth(&requests).await {
            Ok(depth) => {
                let moved = last
                    .is_some_and(|l| l.visible != depth.visible || l.in_flight != depth.in_flight);
                last = Some(depth);
                if moved {
                    let _ = trigger.unbounded_send(fleet.clone());
                }
            }
            Err(error) => tracing::debug!(%error, "cannot read the request queue's depth"),
        }
    }
}
