//! The operator's Prometheus metrics, served on `/metrics`. Per-fleet gauges
//! carry one label, `fleet="namespace/name"`, and are removed when the fleet
//! is deleted, so their number is bounded by the fleets that exist.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::cloud::CallRecorder;
use crate::telemetry::aws_calls::AwsCallsCollector;

type Labels = Vec<(String, String)>;

/// Every metric of the operator, registered once.
pub struct Metrics {
    registry: Registry,
    /// Reconciles by outcome (`ok`, `error`).
    pub reconciles: Family<Labels, Counter>,
    /// Reconcile errors by kind.
    pub errors: Family<Labels, Counter>,
    /// Seconds a reconcile took.
    pub reconcile_seconds: Histogram,
    /// Instances wanted, per fleet.
    pub desired: Family<Labels, Gauge>,
    /// Instances that exist, per fleet.
    pub current: Family<Labels, Gauge>,
    /// Instances whose agent takes sessions, per fleet.
    pub ready: Family<Labels, Gauge>,
    /// Live sessions, per fleet.
    pub sessions: Family<Labels, Gauge>,
    /// Requests waiting in the request queue, per fleet.
    pub queue: Family<Labels, Gauge>,
    /// Events-queue messages refused, by reason (`unsigned`, `invalid`,
    /// `stale`, `replayed`): not from an agent of the fleet.
    pub events_refused: Family<Labels, Counter>,
}

/// The label set of one fleet.
pub fn fleet_label(fleet: &str) -> Labels {
    vec![("fleet".to_owned(), fleet.to_owned())]
}

fn one(key: &str, value: &str) -> Labels {
    vec![(key.to_owned(), value.to_owned())]
}

impl Metrics {
    /// Creates and registers every metric, and the AWS calls `calls` records.
    pub fn new(calls: Arc<CallRecorder>) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(AwsCallsCollector::new(calls)));
        let operator = registry.sub_registry_with_prefix("browserfleet_operator");
        let reconciles = Family::default();
        let errors = Family::default();
        let reconcile_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.0, 12),
        );
        let (desired, current, ready, sessions, queue) = Default::default();
        let events_refused = Family::default();
        operator.register(
            "events_refused",
            "Events-queue messages refused as not signed by an agent of the fleet, by reason",
            Family::<Labels, Counter>::clone(&events_refused),
        );
        operator.register(
            "reconciles",
            "Fleet reconciles by outcome",
            Family::<Labels, Counter>::clone(&reconciles),
        );
        operator.register(
            "errors",
            "Reconcile errors by kind",
            Family::<Labels, Counter>::clone(&errors),
        );
        operator.register(
            "reconcile_seconds",
            "Time a fleet reconcile took",
            reconcile_seconds.clone(),
        );
        let gauges: [(&str, &str, &Family<Labels, Gauge>); 5] = [
            (
                "fleet_desired_instances",
                "Instances the operator wants",
                &desired,
            ),
            ("fleet_current_instances", "Instances that exist", &current),
            (
                "fleet_ready_instances",
                "Instances whose agent takes sessions",
                &ready,
            ),
            ("fleet_sessions", "Live browser sessions", &sessions),
            (
                "fleet_queue_visible",
                "Requests waiting in the request queue",
                &queue,
            ),
        ];
        for (name, help, family) in gauges {
            operator.register(name, help, family.clone());
        }
        Metrics {
            registry,
            reconciles,
            errors,
            reconcile_seconds,
            desired,
            current,
            ready,
            sessions,
            queue,
            events_refused,
        }
    }

    /// Counts an events-queue message refused for `reason`.
    pub fn event_refused(&self, reason: &str) {
        self.events_refused
            .get_or_create(&one("reason", reason))
            .inc();
    }

    /// Counts a reconcile.
    pub fn reconciled(&self, seconds: f64, error: Option<&str>) {
        self.reconcile_seconds.observe(seconds);
        let outcome = if error.is_some() { "error" } else { "ok" };
        self.reconciles
            .get_or_create(&one("outcome", outcome))
            .inc();
        if let Some(kind) = error {
            self.errors.get_or_create(&one("kind", kind)).inc();
        }
    }

    /// Sets a fleet's gauges.
    pub fn fleet(
        &self,
        fleet: &str,
        desired: u32,
        current: u32,
        ready: u32,
        sessions: u32,
        queue: u64,
    ) {
        let labels = fleet_label(fleet);
        self.desired.get_or_create(&labels).set(desired.into());
        self.current.get_or_create(&labels).set(current.into());
        self.ready.get_or_create(&labels).set(ready.into());
        self.sessions.get_or_create(&labels).set(sessions.into());
        self.queue
            .get_or_create(&labels)
            .set(i64::try_from(queue).unwrap_or(i64::MAX));
    }

    /// Removes a deleted fleet's gauges.
    pub fn forget_fleet(&self, fleet: &str) {
        let labels = fleet_label(fleet);
        for family in [
            &self.desired,
            &self.current,
            &self.ready,
            &self.sessions,
            &self.queue,
        ] {
            family.remove(&labels);
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
