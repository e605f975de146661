//! The AWS calls a process made, from its [`CallRecorder`], as Prometheus
//! metrics read at each scrape: no second set of counters beside the
//! recorder's.
//!
//! * `browserfleet_aws_calls_total{service,operation,outcome}`: calls;
//! * `browserfleet_aws_call_seconds_total{service,operation,outcome}`: the
//!   time they took, summed (divide by the count for the mean).
//!
//! Labels are bounded: services and outcomes are enums, operations are the
//! SDK operations the cloud layer names.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

use crate::cloud::{CallKey, CallRecorder};

/// Exports a [`CallRecorder`]; register it with
/// `Registry::register_collector`.
#[derive(Debug)]
pub struct AwsCallsCollector {
    recorder: Arc<CallRecorder>,
}

impl AwsCallsCollector {
    /// A collector reading `recorder` at every scrape.
    pub fn new(recorder: Arc<CallRecorder>) -> Self {
        Self { recorder }
    }
}

impl Collector for AwsCallsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let calls = self.recorder.snapshot();
        let mut counts = encoder.encode_descriptor(
            "browserfleet_aws_calls",
            "AWS API calls by service, operation and outcome (SDK retries included in one call)",
            None,
            MetricType::Counter,
        )?;
        for (key, stats) in &calls {
            ConstCounter::new(stats.count).encode(counts.encode_family(&labels(key))?)?;
        }
        let mut seconds = encoder.encode_descriptor(
            "browserfleet_aws_call_seconds",
            "Time spent in AWS API calls by service, operation and outcome",
            None,
            MetricType::Counter,
        )?;
        for (key, stats) in &calls {
            ConstCounter::new(stats.total_latency.as_secs_f64())
                .encode(seconds.encode_family(&labels(key))?)?;
        }
        Ok(())
    }
}

fn labels(key: &CallKey) -> [(&'static str, &'static str); 3] {
    [
        ("service", key.service.as_str()),
        ("operation", key.operation),
        ("outcome", key.outcome.as_str()),
    ]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::cloud::{Outcome, Service};

    #[test]
    fn recorded_calls_appear_at_each_scrape() {
        let recorder = Arc::new(CallRecorder::new());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(AwsCallsCollector::new(recorder.clone())));
        let scrape = |registry: &Registry| {
            let mut text = String::new();
            encode(&mut text, registry).unwrap();
            text
        };
        assert!(!scrape(&registry).contains("operation="));
        recorder.record(
            Service::Ec2,
            "DescribeInstances",
            Outcome::Success,
            Duration::from_millis(250),
        );
        recorder.record(
            Service::Ec2,
            "DescribeInstances",
            Outcome::Success,
            Duration::from_millis(250),
        );
        recorder.record(
            Service::Sqs,
            "GetQueueAttributes",
            Outcome::Failed(crate::cloud::FaultKind::Throttled),
            Duration::from_millis(10),
        );
        let text = scrape(&registry);
        assert!(
            text.contains(
                r#"browserfleet_aws_calls_total{service="ec2",operation="DescribeInstances",outcome="success"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"browserfleet_aws_calls_total{service="sqs",operation="GetQueueAttributes",outcome="throttled"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"browserfleet_aws_call_seconds_total{service="ec2",operation="DescribeInstances",outcome="success"} 0.5"#
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE browserfleet_aws_calls counter"),
            "{text}"
        );
    }
}
