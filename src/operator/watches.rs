//! What the operator keeps watching per fleet between reconciles, so that it
//! notices a change within a second instead of at the next timer: two tasks
//! per fleet, started when its reconcile has ensured its queues and stopped
//! when it is deleted:
//! * the **events queue**'s consumer ([`EventsConsumer`]):
//!   agents' registrations and heartbeats, session replies and forwarded
//!   deletes;
//! * the **request queue's depth**, polled: a burst triggers a reconcile (and
//!   so a launch) at once.
//!
//! Either asks for a reconcile of its fleet through a [`FleetTrigger`] on the
//! channel the fleet controller reads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use kube::runtime::reflector::ObjectRef;
use tracing::Instrument;

use crate::api::BrowserFleet;
use crate::cloud::{QueueDepth, QueueUrl, Queues, SecretValue, Sqs};
use crate::operator::events_queue::{EventsConsumer, Inbox, Registrations};
use crate::operator::metrics::Metrics;
use crate::operator::trigger::FleetTrigger;

/// How often the watches run.
#[derive(Clone, Copy, Debug)]
pub struct WatchTiming {
    /// Interval of the request queue's depth poll.
    pub depth_poll: Duration,
    /// Long-poll wait on the events queue (at most 20 s).
    pub events_wait: Duration,
}

/// The queues one fleet's watches read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchedQueues {
    /// Requests, whose depth is polled.
    pub requests: QueueUrl,
    /// Events, consumed.
    pub events: QueueUrl,
    /// The key agents sign events with.
    pub message_key: SecretValue,
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
    metrics: Arc<Metrics>,
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
        metrics: Arc<Metrics>,
    ) -> Self {
        FleetWatches {
            sqs,
            metrics,
            registrations,
            trigger,
            timing,
            inbox,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// A handle that asks for reconciles of fleets, for those who need
    /// nothing else of the watches.
    pub fn trigger(&self) -> FleetTrigger {
        FleetTrigger::new(self.trigger.clone())
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
                trigger: self.trigger(),
                inbox: self.inbox.clone(),
                wait: self.timing.events_wait,
                message_key: queues.message_key.clone(),
                metrics: self.metrics.clone(),
            }
            .run()
            .instrument(span.clone()),
        );
        tasks.spawn(
            poll_depth(
                self.sqs.clone(),
                queues.requests.clone(),
                fleet.clone(),
                self.trigger(),
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

/// Polls the request queue's depth until aborted; a change asks for a
/// reconcile.
async fn poll_depth(
    sqs: Sqs,
    requests: QueueUrl,
    fleet: ObjectRef<BrowserFleet>,
    trigger: FleetTrigger,
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
                    trigger.reconcile(&fleet);
                }
            }
            Err(error) => tracing::debug!(%error, "cannot read the request queue's depth"),
        }
    }
}
