//! The policies users would otherwise pick, modelled from their documentation
//! so the simulator can compare browserfleet's policy against them.
//!
//! Each baseline decides a desired instance count the way its system does;
//! [`converge`] then moves the simulated fleet towards it the way a
//! ReplicaSet or an Auto Scaling group would: launch the difference, or remove
//! instances that are still booting (newest first) and then idle ones. None of
//! them removes an instance with sessions: they get the same scale-in
//! protection the operator gives itself.
//!
//! All baselines count a running session as a message in flight. That is the
//! most favourable reading for them: with KEDA or target tracking, a consumer
//! that deletes a request when the browser starts makes running sessions
//! invisible to the metric, and the fleet would shrink under live sessions.

use std::collections::VecDeque;
use std::time::Duration;

use super::policy::{
    Decision, DecisionKind, InstanceId, InstanceState, Observation, PolicyConfig, Timestamp,
};
use super::simulator::Autoscaler;

/// Session requests per replica as KEDA and target tracking see them: waiting,
/// in flight, and (see the module docs) running.
fn backlog(observation: &Observation) -> u32 {
    observation.demand()
}

/// Moves the fleet towards `desired` instances.
pub fn converge(observation: &Observation, desired: u32, reason: String) -> Decision {
    let live: Vec<_> = observation
        .instances
        .iter()
        .filter(|i| i.phase.is_capacity())
        .collect();
    let counted = u32::try_from(live.len()).unwrap_or(u32::MAX);
    if desired >= counted {
        return Decision {
            kind: DecisionKind::of(desired - counted, desired - counted, 0),
            desired,
            launch: desired - counted,
            drain: Vec::new(),
            terminate: Vec::new(),
            reason,
        };
    }
    let mut booting: Vec<_> = live.iter().filter(|i| i.phase.is_booting()).collect();
    booting.sort_by_key(|i| std::cmp::Reverse(i.launched_at));
    let mut idle: Vec<_> = live
        .iter()
        .filter(|i| i.phase == InstanceState::Ready && i.sessions == 0)
        .collect();
    idle.sort_by_key(|i| i.idle_since);
    let remove = usize::try_from(counted - desired).unwrap_or(usize::MAX);
    let terminate: Vec<InstanceId> = booting
        .into_iter()
        .chain(idle)
        .take(remove)
        .map(|i| i.id.clone())
        .collect();
    Decision {
        kind: DecisionKind::of(0, 0, terminate.len()),
        desired,
        launch: 0,
        drain: Vec::new(),
        terminate,
        reason,
    }
}

/// KEDA's `aws-sqs-queue` scaler feeding a HorizontalPodAutoscaler, one
/// replica per instance.
///
/// From the KEDA documentation (scalers/aws-sqs, concepts/scaling-deployments)
/// and the Kubernetes HPA documentation (horizontal-pod-autoscale):
/// * the metric is ApproximateNumberOfMessages plus, with the default
///   `scaleOnInFlight: true`, ApproximateNumberOfMessagesNotVisible;
/// * `queueLength` (messages per replica) is the HPA's AverageValue target;
///   here it is the fleet's sessions per instance;
/// * KEDA polls every `pollingInterval` (30 s) and alone scales between zero and
///   one replica: to one when the metric exceeds `activationQueueLength` (0),
///   to zero once the metric has been zero for `cooldownPeriod` (300 s);
/// * above zero the HPA syncs every 15 s: desired = ceil(metric / target),
///   unchanged when metric / (target × replicas) is within the 10 % tolerance;
///   scale-up is limited to max(4 pods, 100 %) per 15 s; scale-down takes the
///   highest recommendation of the 300 s stabilization window.
#[derive(Clone, Debug)]
pub struct KedaHpa {
    target: f64,
    min_replicas: u32,
    max_replicas: u32,
    replicas: u32,
    last_poll: Option<Timestamp>,
    last_active: Option<Timestamp>,
    recommendations: VecDeque<(Timestamp, u32)>,
}

const KEDA_POLLING_INTERVAL: Duration = Duration::from_secs(30);
const KEDA_COOLDOWN: Duration = Duration::from_secs(300);
const HPA_SYNC_PERIOD: Duration = Duration::from_secs(15);
const HPA_TOLERANCE: f64 = 0.1;
const HPA_SCALE_UP_PODS: u32 = 4;
const HPA_SCALE_DOWN_WINDOW: Duration = Duration::from_secs(300);

impl KedaHpa {
    /// A ScaledObject for `fleet`: `queueLength` = sessions per instance,
    /// `minReplicaCount`/`maxReplicaCount` = the fleet's bounds.
    pub fn new(fleet: &PolicyConfig) -> Self {
        Self {
            target: f64::from(fleet.sessions_per_instance.max(1)),
            min_replicas: fleet.min_instances,
            max_replicas: fleet.max_instances,
            replicas: fleet.min_instances,
            last_poll: None,
            last_active: None,
            recommendations: VecDeque::new(),
        }
    }

    fn poll_due(&mut self, now: Timestamp) -> bool {
        let due = self
            .last_poll
            .is_none_or(|at| now.saturating_since(at) >= KEDA_POLLING_INTERVAL);
        if due {
            self.last_poll = Some(now);
        }
        due
    }

    fn hpa_recommendation(&self, metric: f64) -> u32 {
        let current = f64::from(self.replicas.max(1));
        let ratio = metric / (self.target * current);
        let wanted = if (ratio - 1.0).abs() <= HPA_TOLERANCE {
            self.replicas
        } else {
            // Non-negative and bounded by the queue depth, so it fits in u32.
            (metric / self.target).ceil() as u32
        };
        wanted.clamp(self.min_replicas.max(1), self.max_replicas.max(1))
    }
}

impl Autoscaler for KedaHpa {
    fn cadence(&self) -> Duration {
        HPA_SYNC_PERIOD
    }

    fn tick(&mut self, observation: &Observation) -> Decision {
        let now = observation.now;
        let metric = backlog(observation);
        if metric > 0 {
            self.last_active = Some(now);
        }
        let poll = self.poll_due(now);
        if self.replicas == 0 {
            if poll && metric > 0 && self.max_replicas > 0 {
                self.replicas = 1;
            }
            return converge(observation, self.replicas, format!("keda: metric {metric}"));
        }
        let idle_long = self
            .last_active
            .is_none_or(|at| now.saturating_since(at) >= KEDA_COOLDOWN);
        if poll && metric == 0 && idle_long && self.min_replicas == 0 {
            self.replicas = 0;
            self.recommendations.clear();
            return converge(
                observation,
                0,
                "keda: cooldown over, scaling to zero".into(),
            );
        }
        let recommendation = self.hpa_recommendation(f64::from(metric));
        self.recommendations.push_back((now, recommendation));
        while self
            .recommendations
            .front()
            .is_some_and(|(at, _)| now.saturating_since(*at) > HPA_SCALE_DOWN_WINDOW)
        {
            self.recommendations.pop_front();
        }
        self.replicas = if recommendation > self.replicas {
            let limit = self.replicas + HPA_SCALE_UP_PODS.max(self.replicas);
            recommendation.min(limit)
        } else {
            let stabilized = self.recommendations.iter().map(|(_, r)| *r).max();
            stabilized.unwrap_or(recommendation).min(self.replicas)
        };
        converge(observation, self.replicas, format!("hpa: metric {metric}"))
    }
}

/// An EC2 Auto Scaling group with a target tracking policy on backlog per
/// instance, as in the EC2 Auto Scaling guide "Scaling policy based on Amazon
/// SQS" and "Target tracking scaling policies":
/// * the metric, backlog per instance = messages / InService instances, is
///   published once a minute;
/// * the target is the acceptable backlog per instance, here the fleet's
///   sessions per instance;
/// * the scale-out alarm fires after 3 consecutive one-minute datapoints above
///   the target, the scale-in alarm after 15 consecutive datapoints below 90 %
///   of it (the alarms target tracking creates);
/// * new capacity = ceil(backlog / target); while instances warm up (300 s by
///   default) they are not InService, and a scale-out only happens when it asks
///   for more than the capacity already including them;
/// * the group keeps at least one instance even on a fleet with
///   `minInstances: 0`: with zero InService instances backlog per instance is
///   undefined, and the guide's set-up cannot start from zero.
#[derive(Clone, Debug)]
pub struct TargetTracking {
    target: f64,
    min: u32,
    max: u32,
    desired: u32,
    datapoints: VecDeque<f64>,
}

const METRIC_PERIOD: Duration = Duration::from_secs(60);
const SCALE_OUT_DATAPOINTS: usize = 3;
const SCALE_IN_DATAPOINTS: usize = 15;
const SCALE_IN_THRESHOLD: f64 = 0.9;

impl TargetTracking {
    /// A group for `fleet`, its target the fleet's sessions per instance.
    pub fn new(fleet: &PolicyConfig) -> Self {
        let min = fleet.min_instances.max(1).min(fleet.max_instances);
        Self {
            target: f64::from(fleet.sessions_per_instance.max(1)),
            min,
            max: fleet.max_instances,
            desired: min,
            datapoints: VecDeque::new(),
        }
    }
}

impl Autoscaler for TargetTracking {
    fn cadence(&self) -> Duration {
        METRIC_PERIOD
    }

    fn tick(&mut self, observation: &Observation) -> Decision {
        let in_service = observation
            .instances
            .iter()
            .filter(|i| i.phase == InstanceState::Ready)
            .count()
            .max(1) as f64;
        let backlog = f64::from(backlog(observation));
        let per_instance = backlog / in_service;
        self.datapoints.push_back(per_instance);
        while self.datapoints.len() > SCALE_IN_DATAPOINTS {
            self.datapoints.pop_front();
        }
        let recent = |n: usize| self.datapoints.iter().rev().take(n);
        let full = |n: usize| self.datapoints.len() >= n;
        // Non-negative and bounded by the queue depth, so it fits in u32.
        let wanted = ((backlog / self.target).ceil() as u32).clamp(self.min, self.max);
        if full(SCALE_OUT_DATAPOINTS) && recent(SCALE_OUT_DATAPOINTS).all(|&v| v > self.target) {
            if wanted > self.desired {
                self.desired = wanted;
            }
        } else if full(SCALE_IN_DATAPOINTS)
            && recent(SCALE_IN_DATAPOINTS).all(|&v| v < SCALE_IN_THRESHOLD * self.target)
            && wanted < self.desired
        {
            self.desired = wanted;
        }
        converge(
            observation,
            self.desired,
            format!("target tracking: backlog per instance {per_instance:.2}"),
        )
    }
}

/// A fleet sized once for the trace's peak concurrency and never changed; its
/// instances are ready when the run starts.
#[derive(Clone, Debug)]
pub struct StaticPeak {
    instances: u32,
}

impl StaticPeak {
    /// Enough instances for `peak_sessions` at once, within the fleet's bounds.
    pub fn new(fleet: &PolicyConfig, peak_sessions: u32) -> Self {
        let per = fleet.sessions_per_instance.max(1);
        Self {
            instances: peak_sessions
                .div_ceil(per)
                .clamp(fleet.min_instances, fleet.max_instances),
        }
    }
}

impl Autoscaler for StaticPeak {
    fn cadence(&self) -> Duration {
        Duration::from_secs(3600)
    }

    fn initial_instances(&self) -> u32 {
        self.instances
    }

    fn tick(&mut self, observation: &Observation) -> Decision {
        converge(observation, self.instances, "static fleet".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::policy::InstanceView;

    fn fleet() -> PolicyConfig {
        PolicyConfig {
            min_instances: 0,
            max_instances: 50,
            sessions_per_instance: 4,
            warm_instances: 0,
            scale_down_stabilization: Duration::from_secs(300),
            max_launches_per_minute: 60,
            idle_timeout: Duration::from_secs(300),
            paused: false,
            boot_time_prior: Duration::from_secs(300),
        }
    }

    fn at(s: u64) -> Timestamp {
        Timestamp::from_epoch(Duration::from_secs(s))
    }

    fn observation(now: u64, queued: u32, instances: Vec<InstanceView>) -> Observation {
        Observation {
            now: at(now),
            active_sessions: instances.iter().map(|i| i.sessions).sum(),
            queued_visible: queued,
            queued_in_flight: 0,
            pending_sessions: 0,
            mean_session_duration: None,
            instances,
        }
    }

    fn instance(n: u32, phase: InstanceState, sessions: u32) -> InstanceView {
        InstanceView {
            id: InstanceId::new(format!("i-{n:05}")),
            phase,
            sessions,
            idle_since: (sessions == 0).then(|| at(0)),
            launched_at: at(u64::from(n)),
            ready_at: (!phase.is_booting()).then(|| at(0)),
            disrupted: false,
        }
    }

    #[test]
    fn converge_removes_booting_then_idle_never_busy() {
        let obs = observation(
            100,
            0,
            vec![
                instance(1, InstanceState::Ready, 2),
                instance(2, InstanceState::Ready, 0),
                instance(3, InstanceState::Pending, 0),
            ],
        );
        let d = converge(&obs, 0, String::new());
        assert_eq!(
            d.terminate,
            vec![InstanceId::new("i-00003"), InstanceId::new("i-00002")]
        );
    }

    #[test]
    fn keda_wakes_from_zero_then_hpa_limits_scale_up() {
        let mut keda = KedaHpa::new(&fleet());
        let first = keda.tick(&observation(0, 100, vec![]));
        assert_eq!(first.launch, 1, "KEDA activates 0 -> 1 only");
        let booting = vec![instance(0, InstanceState::Pending, 0)];
        let second = keda.tick(&observation(15, 100, booting));
        // ceil(100 / 4) = 25 wanted; HPA adds at most max(4, 100 %) = 4.
        assert_eq!(second.desired, 5);
    }

    #[test]
    fn target_tracking_waits_for_three_datapoints() {
        let mut tt = TargetTracking::new(&fleet());
        let ready = || vec![instance(0, InstanceState::Ready, 4)];
        assert_eq!(tt.tick(&observation(0, 40, ready())).desired, 1);
        assert_eq!(tt.tick(&observation(60, 40, ready())).desired, 1);
        assert_eq!(tt.tick(&observation(120, 40, ready())).desired, 11);
    }
}
