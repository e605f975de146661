//! Counts AWS calls by service, operation and outcome, with their latency, so
//! the operator can export them on `/metrics` and benchmarks can count calls.
//! One logical SDK call (including the SDK's own retries) is one count; a
//! paginated listing counts one call per page.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::error::{FaultKind, Service};

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    Success,
    Failed(FaultKind),
}

impl Outcome {
    /// Lower-case label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failed(kind) => kind.as_str(),
        }
    }
}

/// The key a call is counted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallKey {
    /// Service called.
    pub service: Service,
    /// API operation, e.g. `DescribeInstances`.
    pub operation: &'static str,
    /// How the call ended.
    pub outcome: Outcome,
}

/// Count and latency of the calls under one key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Number of calls.
    pub count: u64,
    /// Sum of their latencies.
    pub total_latency: Duration,
    /// The slowest one.
    pub max_latency: Duration,
}

/// Thread-safe call counter shared by every cloud client of one process.
#[derive(Debug, Default)]
pub struct CallRecorder {
    calls: Mutex<BTreeMap<CallKey, CallStats>>,
}

impl CallRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one call.
    pub fn record(
        &self,
        service: Service,
        operation: &'static str,
        outcome: Outcome,
        latency: Duration,
    ) {
        // A panic while holding this lock cannot leave the map inconsistent, so
        // a poisoned lock is still usable.
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        let stats = calls
            .entry(CallKey {
                service,
                operation,
                outcome,
            })
            .or_default();
        stats.count += 1;
        stats.total_latency += latency;
        stats.max_latency = stats.max_latency.max(latency);
    }

    /// Every key counted so far with its stats, in a stable order.
    pub fn snapshot(&self) -> BTreeMap<CallKey, CallStats> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Calls of one operation, whatever their outcome.
    pub fn count(&self, service: Service, operation: &str) -> u64 {
        self.snapshot()
            .iter()
            .filter(|(key, _)| key.service == service && key.operation == operation)
            .map(|(_, stats)| stats.count)
            .sum()
    }

    /// Calls of one service, whatever the operation and outcome.
    pub fn count_service(&self, service: Service) -> u64 {
        self.snapshot()
            .iter()
            .filter(|(key, _)| key.service == service)
            .map(|(_, stats)| stats.count)
            .sum()
    }

    /// All calls counted.
    pub fn total(&self) -> u64 {
        self.snapshot().values().map(|stats| stats.count).sum()
    }

    /// Forgets every count (benchmarks measure one phase at a time).
    pub fn reset(&self) {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_operation_and_outcome_and_keeps_max_latency() {
        let recorder = CallRecorder::new();
        recorder.record(
            Service::Ec2,
            "DescribeInstances",
            Outcome::Success,
            Duration::from_millis(5),
        );
        recorder.record(
            Service::Ec2,
            "DescribeInstances",
            Outcome::Success,
            Duration::from_millis(9),
        );
        recorder.record(
            Service::Ec2,
            "DescribeInstances",
            Outcome::Failed(crate::cloud::FaultKind::Throttled),
            Duration::from_millis(1),
        );
        recorder.record(
            Service::Sqs,
            "GetQueueAttributes",
            Outcome::Success,
            Duration::from_millis(2),
        );

        assert_eq!(recorder.count(Service::Ec2, "DescribeInstances"), 3);
        assert_eq!(recorder.count_service(Service::Sqs), 1);
        assert_eq!(recorder.total(), 4);
        let snapshot = recorder.snapshot();
        let ok = snapshot[&CallKey {
            service: Service::Ec2,
            operation: "DescribeInstances",
            outcome: Outcome::Success,
        }];
        assert_eq!(ok.count, 2);
        assert_eq!(ok.total_latency, Duration::from_millis(14));
        assert_eq!(ok.max_latency, Duration::from_millis(9));
        recorder.reset();
        assert_eq!(recorder.total(), 0);
    }
}
