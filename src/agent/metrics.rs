//! The agent's Prometheus metrics, served on `/metrics` (OpenMetrics text).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::sessions::Occupancy;
use crate::cloud::CallRecorder;
use crate::telemetry::aws_calls::AwsCallsCollector;
use std::sync::Arc;

/// Every metric of the agent, registered once.
pub struct AgentMetrics {
    registry: Registry,
    /// Sessions by state (`starting`, `active`).
    pub sessions: Family<Vec<(String, String)>, Gauge>,
    /// Browsers launched.
    pub launches: Counter,
    /// Failed requests and launches by reason.
    pub failures: Family<Vec<(String, String)>, Counter>,
    /// Sessions ended, by termination reason.
    pub terminations: Family<Vec<(String, String)>, Counter>,
    /// Seconds from a request's receipt to its browser answering DevTools.
    pub launch_seconds: Histogram,
    /// Browser ports by state (`free`, `reserved`, `active`).
    pub ports: Family<Vec<(String, String)>, Gauge>,
    /// Failed receives from the request queue.
    pub queue_receive_errors: Counter,
    /// Creates received while every slot was taken and put back as copies.
    pub requests_requeued: Counter,
    /// Creates of sessions this agent already served and ended, dropped.
    pub creates_already_served: Counter,
    /// Callbacks given up undelivered.
    pub callbacks_abandoned: Counter,
    /// Browsers found running without a session after a restart, and killed.
    pub orphans_killed: Counter,
    /// Request-queue messages received and not yet deleted or given back
    /// (`/v1/state`'s `heldRequests`).
    pub requests_held: Gauge,
    /// Connections the egress proxy refused, by reason.
    pub egress_refused: Family<Vec<(String, String)>, Counter>,
    /// CDP commands the gateway's filter refused, by method.
    pub cdp_refused: CdpRefusals,
}

/// The counter of CDP commands the gateway's filter refused, by method; the
/// narrow part of the metrics a gateway connection holds on to.
#[derive(Clone, Debug, Default)]
pub struct CdpRefusals(Family<Vec<(String, String)>, Counter>);

impl CdpRefusals {
    /// Counts one refusal. `method` is one of the filter's own labels
    /// ([`super::cdp_filter::metric_method`]), never a client's string, so
    /// the series stay few.
    pub fn count(&self, method: &'static str) {
        self.0.get_or_create(&labels("method", method)).inc();
    }
}

fn labels(key: &str, value: &str) -> Vec<(String, String)> {
    vec![(key.to_owned(), value.to_owned())]
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        Self::with_aws_calls(None)
    }

    /// Every metric, and the AWS calls `calls` records (this process's SQS
    /// and SSM calls, as `browserfleet_aws_calls` like the operator's).
    pub fn with_aws_calls(calls: Option<Arc<CallRecorder>>) -> Self {
        let mut root = Registry::default();
        if let Some(calls) = calls {
            root.register_collector(Box::new(AwsCallsCollector::new(calls)));
        }
        let registry = root.sub_registry_with_prefix("browserfleet_agent");
        let sessions = Family::default();
        let launches = Counter::default();
        let failures = Family::default();
        let terminations = Family::default();
        // 0.1 s to ~100 s: a warm Linux Chromium starts in well under a
        // second, a cold Windows Chrome in several.
        let launch_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.1, 2.0, 11),
        );
        let ports = Family::default();
        let queue_receive_errors = Counter::default();
        let requests_requeued = Counter::default();
        let creates_already_served = Counter::default();
        let callbacks_abandoned = Counter::default();
        let orphans_killed = Counter::default();
        let requests_held = Gauge::default();
        let egress_refused: Family<Vec<(String, String)>, Counter> = Family::default();
        // Every reason from zero, so that an alert's rate() sees the first one.
        for reason in ["nodeService", "blocked", "defaultDenied"] {
            let _ = egress_refused.get_or_create(&labels("reason", reason));
        }
        let cdp_refused = CdpRefusals::default();
        registry.register("sessions", "Sessions by state", sessions.clone());
        registry.register("launches", "Browsers launched", launches.clone());
        registry.register("failures", "Failed requests by reason", failures.clone());
        registry.register(
            "terminations",
            "Sessions ended, by reason",
            terminations.clone(),
        );
        registry.register(
            "launch_seconds",
            "From request receipt to DevTools ready",
            launch_seconds.clone(),
        );
        registry.register("ports", "Browser ports by state", ports.clone());
        registry.register(
            "queue_receive_errors",
            "Failed receives from the request queue",
            queue_receive_errors.clone(),
        );
        registry.register(
            "requests_requeued",
            "Creates received while every slot was taken, put back on the request queue",
            requests_requeued.clone(),
        );
        registry.register(
            "creates_already_served",
            "Creates of a session this agent already served and ended (a redelivery), dropped unanswered",
            creates_already_served.clone(),
        );
        registry.register(
            "callbacks_abandoned",
            "Callbacks given up undelivered (every attempt failed, or the receiver refused one for good)",
            callbacks_abandoned.clone(),
        );
        registry.register(
            "orphans_killed",
            "Browsers without a session killed after a restart",
            orphans_killed.clone(),
        );
        registry.register(
            "requests_held",
            "Request-queue messages received and not yet deleted or given back",
            requests_held.clone(),
        );
        registry.register(
            "egress_refused",
            "Browser connections the egress proxy refused, by reason",
            egress_refused.clone(),
        );
        registry.register(
            "cdp_refused",
            "CDP commands the DevTools gateway refused by the session policy, by method",
            cdp_refused.0.clone(),
        );
        AgentMetrics {
            registry: root,
            sessions,
            launches,
            failures,
            terminations,
            launch_seconds,
            ports,
            queue_receive_errors,
            requests_requeued,
            creates_already_served,
            callbacks_abandoned,
            orphans_killed,
            requests_held,
            egress_refused,
            cdp_refused,
        }
    }

    /// Counts one failure.
    pub fn failed(&self, reason: &str) {
        self.failures.get_or_create(&labels("reason", reason)).inc();
    }

    /// Counts one ended session.
    pub fn terminated(&self, reason: &str) {
        self.terminations
            .get_or_create(&labels("reason", reason))
            .inc();
    }

    /// Sets the session and port gauges.
    pub fn set_usage(&self, starting: usize, active: usize, free: usize, reserved: usize) {
        let set = |family: &Family<Vec<(String, String)>, Gauge>, state: &str, value: usize| {
            family
                .get_or_create(&labels("state", state))
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        set(&self.sessions, "starting", starting);
        set(&self.sessions, "active", active);
        set(&self.ports, "free", free);
        set(&self.ports, "reserved", reserved);
        set(&self.ports, "active", active);
    }

    /// Sets the session and port gauges from the table's occupancy.
    pub fn set_occupancy(&self, occupancy: &Occupancy) {
        let usage = occupancy.pool;
        self.set_usage(
            occupancy.starting,
            usage.active,
            usage.ports - usage.reserved - usage.active,
            usage.reserved,
        );
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_text_names_every_metric() {
        let metrics = AgentMetrics::new();
        metrics.failed("failedToStart");
        metrics.set_usage(1, 2, 3, 1);
        metrics.launch_seconds.observe(0.4);
        metrics.cdp_refused.count("Page.navigate");
        let text = metrics.render();
        for name in [
            "browserfleet_agent_sessions{state=\"active\"} 2",
            "browserfleet_agent_failures_total{reason=\"failedToStart\"} 1",
            "browserfleet_agent_launch_seconds_bucket",
            "browserfleet_agent_ports{state=\"free\"} 3",
            "browserfleet_agent_queue_receive_errors_total 0",
            "browserfleet_agent_requests_requeued_total 0",
            "browserfleet_agent_cdp_refused_total{method=\"Page.navigate\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }

    #[test]
    fn the_processes_aws_calls_are_exported_when_given() {
        let calls = Arc::new(CallRecorder::new());
        calls.record(
            crate::cloud::Service::Sqs,
            "ReceiveMessage",
            crate::cloud::Outcome::Success,
            std::time::Duration::from_millis(3),
        );
        let text = AgentMetrics::with_aws_calls(Some(calls)).render();
        assert!(
            text.contains(
                "browserfleet_aws_calls_total{service=\"sqs\",operation=\"ReceiveMessage\",outcome=\"success\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("browserfleet_agent_launches_total 0"),
            "{text}"
        );
        assert!(
            !AgentMetrics::new()
                .render()
                .contains("browserfleet_aws_calls")
        );
    }
}
