//! The scaling policy: how many instances a fleet should have right now.
//!
//! [`decide`] is a pure function of the fleet's capacity and scaling spec, one
//! observation of the fleet and its queue, and the policy's own short memory.
//! The operator calls it on every reconcile; the simulator calls it on the same
//! cadence against a replayed trace. Nothing here does I/O or reads a clock.
//!
//! The rule, from DESIGN.md §5:
//!
//! * demand = active sessions + queued requests (visible and in flight) +
//!   pending BrowserSessions;
//! * required = ceil(demand / sessionsPerInstance), at least `minInstances`,
//!   plus `warmInstances`, at most `maxInstances`;
//! * instances still booting count as capacity that is on its way, so a slow
//!   Windows boot does not trigger a second launch for the same demand;
//! * scale up at once, within `maxLaunchesPerMinute`;
//! * scale down only to the highest requirement seen over the stabilization
//!   window: first cancel launches EC2 has not started (newest first; a
//!   running one not yet heard from waits for its registration), then retire
//!   instances that have been idle for `idleTimeoutSeconds`. An idle instance
//!   is drained first (its agent stops taking requests) and terminated on a
//!   later decision if it is still empty, so a request taken in between is
//!   never cut off;
//! * a paused fleet decides nothing.
//!
//! Two refinements make it cheaper and faster than the reactive rule alone.
//!
//! It does not launch for a queue that session churn will serve first: the
//! requests that sessions ending in the next few seconds will take (known from
//! the agents' reported mean session duration) are left out of demand.
//!
//! And it forecasts a burst. Windows instances take minutes to boot; a purely reactive policy launches for the queue it sees,
//! and every request that arrives while those instances boot waits for a second
//! wave. When demand has been rising faster than noise explains, the policy adds
//! the rise it expects during one boot (the observed rate of increase times the
//! observed boot time) to demand, so one wave of launches meets the burst.

use std::collections::VecDeque;
use std::time::Duration;

use crate::api::BrowserFleetSpec;
use crate::api::fleet::{CapacitySpec, ScalingSpec};

/// A point in time, as the time elapsed since an epoch the caller chooses (the
/// Unix epoch in the operator, the trace start in the simulator).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(Duration);

impl Timestamp {
    /// The moment `offset` after the epoch.
    pub const fn from_epoch(offset: Duration) -> Self {
        Self(offset)
    }

    /// Time since the epoch.
    pub const fn since_epoch(self) -> Duration {
        self.0
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// The moment `d` later.
    pub fn after(self, d: Duration) -> Timestamp {
        Timestamp(self.0 + d)
    }
}

pub use crate::api::fleet::InstanceState;
pub use crate::cloud::InstanceId;

/// The part of a fleet spec the policy reads.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyConfig {
    /// Floor of the fleet.
    pub min_instances: u32,
    /// Ceiling of the fleet.
    pub max_instances: u32,
    /// Sessions one instance hosts.
    pub sessions_per_instance: u32,
    /// Idle instances kept on top of demand.
    pub warm_instances: u32,
    /// How long lower demand must last before the fleet shrinks.
    pub scale_down_stabilization: Duration,
    /// Launches allowed in any 60-second window.
    pub max_launches_per_minute: u32,
    /// How long an instance must be empty before it may be retired.
    pub idle_timeout: Duration,
    /// Decide nothing.
    pub paused: bool,
    /// Boot time assumed until the policy has seen an instance become ready.
    pub boot_time_prior: Duration,
}

/// Boot time assumed before any instance of the fleet has been seen booting:
/// Windows Server on EC2 typically needs four to six minutes to run its user
/// data and start the agent.
pub const DEFAULT_BOOT_TIME_PRIOR: Duration = Duration::from_secs(300);

impl PolicyConfig {
    /// Reads the policy's inputs from a fleet spec. Negative numbers, which the
    /// CRD schema refuses, are read as zero.
    pub fn from_spec(spec: &BrowserFleetSpec) -> Self {
        Self::from_parts(&spec.capacity, &spec.scaling, spec.paused)
    }

    /// Reads the policy's inputs from the capacity and scaling parts of a spec.
    pub fn from_parts(capacity: &CapacitySpec, scaling: &ScalingSpec, paused: bool) -> Self {
        let count = |v: i32| u32::try_from(v).unwrap_or(0);
        let seconds = |v: i32| Duration::from_secs(u64::try_from(v).unwrap_or(0));
        Self {
            min_instances: count(capacity.min_instances),
            max_instances: count(capacity.max_instances),
            sessions_per_instance: count(capacity.sessions_per_instance).max(1),
            warm_instances: count(capacity.warm_instances),
            scale_down_stabilization: seconds(scaling.scale_down_stabilization_seconds),
            max_launches_per_minute: count(scaling.max_launches_per_minute),
            idle_timeout: seconds(scaling.idle_timeout_seconds),
            paused,
            boot_time_prior: DEFAULT_BOOT_TIME_PRIOR,
        }
    }
}

/// One instance as the policy sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceView {
    pub id: InstanceId,
    /// Never `Terminating`: the policy does not see instances on their way out.
    pub phase: InstanceState,
    /// Live sessions on it.
    pub sessions: u32,
    /// Since when it has had no session; `None` while it has one (or boots).
    pub idle_since: Option<Timestamp>,
    /// When it was launched.
    pub launched_at: Timestamp,
    /// When its agent first reported ready.
    pub ready_at: Option<Timestamp>,
    /// To be replaced (drifted or expired): the first to go when the fleet
    /// shrinks, since it would be replaced anyway.
    pub disrupted: bool,
}

/// One look at the fleet and its queue.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// When it was taken.
    pub now: Timestamp,
    /// Sessions running on instances.
    pub active_sessions: u32,
    /// Requests waiting in the request queue.
    pub queued_visible: u32,
    /// Requests an agent has received and not yet answered.
    pub queued_in_flight: u32,
    /// BrowserSessions not yet sent to the queue.
    pub pending_sessions: u32,
    /// Mean lifetime of the sessions that ended recently, as the agents report
    /// it; `None` until one has ended.
    pub mean_session_duration: Option<Duration>,
    /// Every instance that is not terminated.
    pub instances: Vec<InstanceView>,
}

impl Observation {
    /// Sessions the fleet must host now or soon.
    pub fn demand(&self) -> u32 {
        self.active_sessions
            .saturating_add(self.queued_visible)
            .saturating_add(self.queued_in_flight)
            .saturating_add(self.pending_sessions)
    }
}

/// What the policy remembers between decisions; small and bounded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyMemory {
    /// Recent (time, demand, required) samples, oldest first, covering the
    /// stabilization window and the trend window.
    samples: VecDeque<Sample>,
    /// When the launches of the last minute were decided.
    launches: VecDeque<Timestamp>,
    /// Smoothed boot time of the instances seen becoming ready.
    boot_time: Option<Duration>,
    /// The latest `ready_at` already folded into `boot_time`.
    boot_learned_until: Option<Timestamp>,
    /// No scale-in before this: set by [`PolicyMemory::resume`], since the
    /// demand samples a stabilization window needs are gone.
    hold_scale_in_until: Option<Timestamp>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Sample {
    at: Timestamp,
    demand: u32,
    required: u32,
}

impl PolicyMemory {
    /// The memory of a policy taking over a fleet it has not decided for
    /// (after an operator restart or a leader change), rebuilt from what the
    /// fleet shows; nothing of it is kept in status:
    /// * launches of the last minute are the instances launched in it, so
    ///   the launch rate limit still holds;
    /// * the boot time is learned again from the instances that became
    ///   ready (their launch and ready times), at the next decision;
    /// * demand samples cannot be rebuilt, so the fleet does not scale in
    ///   before one stabilization window has passed.
    pub fn resume(config: &PolicyConfig, observation: &Observation) -> PolicyMemory {
        let now = observation.now;
        let mut launches: Vec<Timestamp> = observation
            .instances
            .iter()
            .map(|i| i.launched_at)
            .filter(|at| now.saturating_since(*at) < LAUNCH_RATE_WINDOW)
            .collect();
        launches.sort();
        PolicyMemory {
            launches: launches.into(),
            hold_scale_in_until: Some(now.after(config.scale_down_stabilization)),
            ..PolicyMemory::default()
        }
    }

    /// The boot time the policy currently expects.
    pub fn expected_boot_time(&self, config: &PolicyConfig) -> Duration {
        self.boot_time.unwrap_or(config.boot_time_prior)
    }
}

/// What a decision does, for machines: the reason of the fleet's `Scaling`
/// condition and of the Events the operator emits. The prose is in
/// [`Decision::reason`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecisionKind {
    /// `paused: true`: nothing launched or retired.
    Paused,
    /// Launching everything demand needs.
    ScaleUp,
    /// Launching, but fewer than demand needs: the launch rate limit holds
    /// the rest back.
    LaunchRateLimited,
    /// Draining idle instances or cancelling booting ones.
    ScaleDown,
    /// The fleet has the size it needs (terminating drained instances that
    /// emptied is part of holding).
    Hold,
}

impl DecisionKind {
    /// The CamelCase reason for conditions and Events.
    pub fn reason(self) -> &'static str {
        match self {
            DecisionKind::Paused => "Paused",
            DecisionKind::ScaleUp => "ScalingUp",
            DecisionKind::LaunchRateLimited => "LaunchRateLimited",
            DecisionKind::ScaleDown => "ScalingDown",
            DecisionKind::Hold => "Steady",
        }
    }

    /// Whether the fleet is changing size.
    pub fn is_scaling(self) -> bool {
        matches!(
            self,
            DecisionKind::ScaleUp | DecisionKind::LaunchRateLimited | DecisionKind::ScaleDown
        )
    }

    /// The kind of a decision that launches `launch` of the `wanted`
    /// instances demand needs beyond those it has, and retires `retired`.
    pub fn of(launch: u32, wanted: u32, retired: usize) -> Self {
        if launch < wanted {
            DecisionKind::LaunchRateLimited
        } else if launch > 0 {
            DecisionKind::ScaleUp
        } else if retired > 0 {
            DecisionKind::ScaleDown
        } else {
            DecisionKind::Hold
        }
    }
}

/// The policy's answer for one observation.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// What it does, for conditions and Events.
    pub kind: DecisionKind,
    /// Instances the fleet should have (booting and ready, not draining).
    pub desired: u32,
    /// Instances to launch now.
    pub launch: u32,
    /// Idle instances to stop taking sessions; they are terminated by a later
    /// decision if still empty.
    pub drain: Vec<InstanceId>,
    /// Draining instances that are empty and can go.
    pub terminate: Vec<InstanceId>,
    /// Why, for status and Events.
    pub reason: String,
}

/// How far back the trend of demand is measured. Long enough to see a burst
/// through Poisson noise, short enough to act within the first minute of it.
const TREND_WINDOW: Duration = Duration::from_secs(60);

/// How far ahead session churn is trusted to serve the queue. Short sessions
/// end every few seconds on a busy fleet, so a queue of a few requests clears
/// long before a new instance could boot; long sessions end rarely, so the same
/// rule launches at once for them. Six seconds is what the simulator found best
/// on the report's traces (docs/scaling.md); longer horizons save a little more
/// instance time at a visible cost in p95 wait.
const CHURN_HORIZON: Duration = Duration::from_secs(6);

/// The launch rate limit counts launches over this window.
const LAUNCH_RATE_WINDOW: Duration = Duration::from_secs(60);

/// Weight of a new boot-time observation in the smoothed boot time.
const BOOT_TIME_SMOOTHING: f64 = 0.3;

/// Decides the fleet's size for one observation and returns the decision with
/// the memory to pass to the next call.
pub fn decide(
    config: &PolicyConfig,
    observation: &Observation,
    memory: &PolicyMemory,
) -> (Decision, PolicyMemory) {
    let now = observation.now;
    let mut memory = memory.clone();
    forget_old(&mut memory, config, now);
    learn_boot_times(&mut memory, observation);

    let counted = observation
        .instances
        .iter()
        .filter(|i| i.phase.is_capacity())
        .count();
    let counted = u32::try_from(counted).unwrap_or(u32::MAX);

    if config.paused {
        let decision = Decision {
            kind: DecisionKind::Paused,
            desired: counted,
            launch: 0,
            drain: Vec::new(),
            terminate: Vec::new(),
            reason: "paused: launching and retiring nothing".to_owned(),
        };
        return (decision, memory);
    }

    let demand = observation.demand();
    let forecast = forecast_rise(&memory, config, now, demand);
    let absorbed = absorbed_by_churn(observation);
    let required = required_instances(
        config,
        demand.saturating_sub(absorbed).saturating_add(forecast),
    );
    memory.samples.push_back(Sample {
        at: now,
        demand,
        required,
    });

    // `waiting`: excess instances not yet heard from, left to go once they
    // register and idle; the fleet's desired size already leaves them out.
    let (launch, drain, cancel, waiting, action) = if required > counted {
        let launch = scale_up(&mut memory, config, now, required - counted);
        let limited = if launch < required - counted {
            format!(", launch rate limit {}/min", config.max_launches_per_minute)
        } else {
            String::new()
        };
        (
            launch,
            Vec::new(),
            Vec::new(),
            0,
            format!("launching {launch}{limited}"),
        )
    } else {
        let needed = stabilized_requirement(&memory, config, now).max(required);
        let held = memory.hold_scale_in_until.is_some_and(|until| now < until) && counted > needed;
        let keep = if held { counted } else { needed };
        let excess = counted.saturating_sub(keep);
        let cancel = pick_booting_to_cancel(observation, excess);
        // A running instance not yet heard from is excess too, though it is
        // not cancelled: it is drained once it registers and idles, so a
        // ready one is not drained in its place now.
        let unheard = observation
            .instances
            .iter()
            .filter(|i| i.phase == InstanceState::Bootstrapping && i.sessions == 0)
            .count();
        let uncancelled = excess.saturating_sub(u32::try_from(cancel.len()).unwrap_or(u32::MAX));
        let waiting = uncancelled.min(u32::try_from(unheard).unwrap_or(u32::MAX));
        let drain = pick_idle_to_drain(observation, config, uncancelled - waiting);
        let action = if held {
            "holding: no scale-in within one stabilization window of taking over".to_owned()
        } else if cancel.is_empty() && drain.is_empty() {
            "holding".to_owned()
        } else {
            format!(
                "{keep} needed over the last {}s: cancelling {} booting, draining {} idle",
                config.scale_down_stabilization.as_secs(),
                cancel.len(),
                drain.len()
            )
        };
        (0, drain, cancel, waiting, action)
    };
    let kind = DecisionKind::of(
        launch,
        required.saturating_sub(counted),
        drain.len() + cancel.len(),
    );
    let removed = u32::try_from(drain.len() + cancel.len())
        .unwrap_or(u32::MAX)
        .saturating_add(waiting);
    let mut terminate = draining_and_empty(observation);
    terminate.extend(cancel);
    let decision = Decision {
        kind,
        desired: if launch > 0 {
            required
        } else {
            counted.saturating_sub(removed)
        },
        launch,
        drain,
        terminate,
        reason: format!(
            "{}: needs {required} instances, {counted} running or booting: {action}",
            explain_demand(observation, forecast)
        ),
    };
    (decision, memory)
}

/// Draining instances whose sessions have all ended: they can go.
fn draining_and_empty(observation: &Observation) -> Vec<InstanceId> {
    observation
        .instances
        .iter()
        .filter(|i| i.phase == InstanceState::Draining && i.sessions == 0)
        .map(|i| i.id.clone())
        .collect()
}

fn explain_demand(observation: &Observation, forecast: u32) -> String {
    let forecast = if forecast > 0 {
        format!(" + forecast {forecast}")
    } else {
        String::new()
    };
    format!(
        "demand {} ({} active, {} queued, {} in flight, {} pending){forecast}",
        observation.demand(),
        observation.active_sessions,
        observation.queued_visible,
        observation.queued_in_flight,
        observation.pending_sessions,
    )
}

/// Queued requests that sessions ending within [`CHURN_HORIZON`] will take:
/// active sessions × horizon / mean session duration, at most the queue.
/// Launching for them would buy an instance that boots minutes after they
/// have started.
fn absorbed_by_churn(observation: &Observation) -> u32 {
    let Some(mean) = observation.mean_session_duration.filter(|d| !d.is_zero()) else {
        return 0;
    };
    let ends =
        f64::from(observation.active_sessions) * CHURN_HORIZON.as_secs_f64() / mean.as_secs_f64();
    // Non-negative and capped by the queue, so it fits in u32.
    (ends.floor() as u32).min(observation.queued_visible)
}

/// required = ceil(sessions / sessionsPerInstance), at least `minInstances`,
/// plus `warmInstances`, at most `maxInstances`. The warm instances sit on top
/// of the floor, so an idle fleet keeps `minInstances + warmInstances`.
pub fn required_instances(config: &PolicyConfig, sessions: u32) -> u32 {
    let per = config.sessions_per_instance.max(1);
    sessions
        .div_ceil(per)
        .max(config.min_instances)
        .saturating_add(config.warm_instances)
        .min(config.max_instances)
}

fn forget_old(memory: &mut PolicyMemory, config: &PolicyConfig, now: Timestamp) {
    let keep_for = config.scale_down_stabilization.max(TREND_WINDOW);
    // The newest sample older than that stays: it is what was in force when
    // the window began (see `stabilized_requirement`).
    while memory
        .samples
        .get(1)
        .is_some_and(|s| now.saturating_since(s.at) > keep_for)
    {
        memory.samples.pop_front();
    }
    while memory
        .launches
        .front()
        .is_some_and(|t| now.saturating_since(*t) >= LAUNCH_RATE_WINDOW)
    {
        memory.launches.pop_front();
    }
}

/// Folds the boot times of instances that became ready since the last call
/// into an exponentially smoothed estimate.
fn learn_boot_times(memory: &mut PolicyMemory, observation: &Observation) {
    let mut newly_ready: Vec<(Timestamp, Duration)> = observation
        .instances
        .iter()
        .filter_map(|i| {
            let ready = i.ready_at?;
            let new = memory.boot_learned_until.is_none_or(|seen| ready > seen);
            new.then(|| (ready, ready.saturating_since(i.launched_at)))
        })
        .collect();
    newly_ready.sort_by_key(|(ready, _)| *ready);
    for (ready, boot) in newly_ready {
        memory.boot_time = Some(match memory.boot_time {
            None => boot,
            Some(old) => old.mul_f64(1.0 - BOOT_TIME_SMOOTHING) + boot.mul_f64(BOOT_TIME_SMOOTHING),
        });
        memory.boot_learned_until = Some(ready);
    }
}

/// The rise of demand expected while a new instance boots, or zero when demand
/// is not clearly rising.
///
/// The rate is the change of demand over the last [`TREND_WINDOW`]. Arrivals
/// are bursty even at a steady rate, so a rise counts only when it exceeds
/// three standard deviations of Poisson noise on the earlier demand plus one
/// instance's worth of sessions; otherwise a steady fleet would keep buying
/// headroom it never uses.
fn forecast_rise(memory: &PolicyMemory, config: &PolicyConfig, now: Timestamp, demand: u32) -> u32 {
    let Some(earlier) = memory
        .samples
        .iter()
        .find(|s| now.saturating_since(s.at) <= TREND_WINDOW)
    else {
        return 0;
    };
    let elapsed = now.saturating_since(earlier.at).as_secs_f64();
    if elapsed < TREND_WINDOW.as_secs_f64() / 2.0 {
        return 0;
    }
    let rise = f64::from(demand) - f64::from(earlier.demand);
    let noise =
        3.0 * f64::from(earlier.demand.max(1)).sqrt() + f64::from(config.sessions_per_instance);
    if rise <= noise {
        return 0;
    }
    let rate = rise / elapsed;
    let boot = memory.expected_boot_time(config).as_secs_f64();
    // Capped at the current demand: a forecast may double the fleet's target,
    // never more, so one odd sample cannot launch the whole ceiling.
    let expected = (rate * boot).ceil().min(f64::from(demand));
    // The value is non-negative and at most `demand`, so it fits in u32.
    expected as u32
}

/// Launches `wanted` instances as far as the rate limit allows and records them.
fn scale_up(memory: &mut PolicyMemory, config: &PolicyConfig, now: Timestamp, wanted: u32) -> u32 {
    let used = u32::try_from(memory.launches.len()).unwrap_or(u32::MAX);
    let launch = wanted.min(config.max_launches_per_minute.saturating_sub(used));
    for _ in 0..launch {
        memory.launches.push_back(now);
    }
    launch
}

/// The highest requirement over the stabilization window: the fleet shrinks
/// only to what it would have needed at any moment of that window. A sample
/// holds until the next one, so the window also covers the last sample taken
/// before it began: under load reconciles come seconds apart, and one low
/// sample after a gap longer than the window must not count as a whole
/// window of low demand.
fn stabilized_requirement(memory: &PolicyMemory, config: &PolicyConfig, now: Timestamp) -> u32 {
    let window = config.scale_down_stabilization;
    let in_window = memory
        .samples
        .iter()
        .filter(|s| now.saturating_since(s.at) <= window);
    let in_force_at_start = memory
        .samples
        .iter()
        .rev()
        .find(|s| now.saturating_since(s.at) >= window);
    in_window
        .chain(in_force_at_start)
        .map(|s| s.required)
        .max()
        .unwrap_or(0)
}

/// Up to `excess` instances EC2 has not started yet, disrupted ones
/// first, then newest first: a launch no longer needed costs nothing more
/// once cancelled, and the newest has the longest boot still ahead of it.
fn pick_booting_to_cancel(observation: &Observation, excess: u32) -> Vec<InstanceId> {
    let mut booting: Vec<&InstanceView> = observation
        .instances
        .iter()
        // Only one EC2 has not started: once it runs, its agent may take
        // requests before the operator hears its registration, and its
        // sessions are then counted nowhere yet (their requests gone from
        // the queue, their Ready replies not read). One that runs either
        // registers (and, idle, is drained by the rule below) or is
        // replaced at the ready timeout.
        .filter(|i| i.phase == InstanceState::Pending && i.sessions == 0)
        .collect();
    booting.sort_by_key(|i| (!i.disrupted, std::cmp::Reverse(i.launched_at), i.id.clone()));
    booting
        .into_iter()
        .take(usize::try_from(excess).unwrap_or(usize::MAX))
        .map(|i| i.id.clone())
        .collect()
}

/// Up to `excess` ready instances that have been idle for the idle timeout,
/// disrupted ones first, then longest idle first.
fn pick_idle_to_drain(
    observation: &Observation,
    config: &PolicyConfig,
    excess: u32,
) -> Vec<InstanceId> {
    let now = observation.now;
    let mut idle: Vec<&InstanceView> = observation
        .instances
        .iter()
        .filter(|i| {
            i.phase == InstanceState::Ready
                && i.sessions == 0
                && i.idle_since
                    .is_some_and(|since| now.saturating_since(since) >= config.idle_timeout)
        })
        .collect();
    idle.sort_by_key(|i| (!i.disrupted, i.idle_since, i.id.clone()));
    idle.into_iter()
        .take(usize::try_from(excess).unwrap_or(usize::MAX))
        .map(|i| i.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn config() -> PolicyConfig {
        PolicyConfig {
            min_instances: 1,
            max_instances: 20,
            sessions_per_instance: 4,
            warm_instances: 1,
            scale_down_stabilization: Duration::from_secs(180),
            max_launches_per_minute: 5,
            idle_timeout: Duration::from_secs(60),
            paused: false,
            boot_time_prior: Duration::from_secs(300),
        }
    }

    fn at(s: u64) -> Timestamp {
        Timestamp::from_epoch(Duration::from_secs(s))
    }

    fn ready(n: u32, sessions: u32, idle_since: Option<u64>) -> InstanceView {
        InstanceView {
            id: InstanceId::new(format!("i-{n}")),
            phase: InstanceState::Ready,
            sessions,
            idle_since: idle_since.map(at),
            launched_at: at(0),
            ready_at: Some(at(300)),
            disrupted: false,
        }
    }

    fn observe(now: u64, active: u32, queued: u32, instances: Vec<InstanceView>) -> Observation {
        Observation {
            now: at(now),
            active_sessions: active,
            queued_visible: queued,
            queued_in_flight: 0,
            pending_sessions: 0,
            mean_session_duration: None,
            instances,
        }
    }

    #[test]
    fn required_is_demand_over_slots_plus_warm_within_bounds() {
        let c = config();
        assert_eq!(required_instances(&c, 0), 2, "floor is min + warm");
        assert_eq!(required_instances(&c, 9), 4, "ceil(9 / 4) + 1");
        assert_eq!(required_instances(&c, 1000), 20, "capped at max");
    }

    #[test]
    fn queue_launches_at_once_within_the_rate_limit() {
        let (d, memory) = decide(
            &config(),
            &observe(0, 0, 40, vec![]),
            &PolicyMemory::default(),
        );
        assert_eq!(d.desired, 11);
        assert_eq!(d.launch, 5, "rate limit 5/min");
        assert_eq!(d.kind, DecisionKind::LaunchRateLimited);
        assert_eq!(d.kind.reason(), "LaunchRateLimited");
        let (d, _) = decide(&config(), &observe(30, 0, 40, vec![]), &memory);
        assert_eq!(d.launch, 0, "still within the same minute");
        assert_eq!(d.kind, DecisionKind::LaunchRateLimited);
    }

    #[test]
    fn booting_instances_count_as_coming_capacity() {
        let booting = |n: u32| InstanceView {
            id: InstanceId::new(format!("b-{n}")),
            phase: InstanceState::Pending,
            sessions: 0,
            idle_since: None,
            launched_at: at(0),
            ready_at: None,
            disrupted: false,
        };
        let obs = observe(10, 0, 8, vec![booting(1), booting(2), booting(3)]);
        let (d, _) = decide(&config(), &obs, &PolicyMemory::default());
        assert_eq!(d.launch, 0, "ceil(8 / 4) + 1 = 3 already booting");
        assert_eq!(d.kind, DecisionKind::Hold);
        assert!(!d.kind.is_scaling());
    }

    #[test]
    fn shrinks_only_after_the_stabilization_window_and_only_idle_instances() {
        let c = config();
        let busy_then_idle = |now: u64| {
            vec![
                ready(1, 4, None),
                ready(2, 0, Some(0)),
                ready(3, 0, Some(0)),
                ready(4, 0, Some(0)),
            ]
            .into_iter()
            .map(|mut i| {
                i.idle_since = i.idle_since.map(|_| at(now.min(100)));
                i
            })
            .collect::<Vec<_>>()
        };
        let mut memory = PolicyMemory::default();
        let (d, m) = decide(&c, &observe(0, 12, 0, busy_then_idle(0)), &memory);
        assert!(d.drain.is_empty());
        memory = m;
        // Demand drops to 4 sessions: required 2, but the window still holds 4.
        for now in (10..=180).step_by(10) {
            let (d, m) = decide(&c, &observe(now, 4, 0, busy_then_idle(now)), &memory);
            memory = m;
            assert!(d.drain.is_empty(), "drained at {now}s, inside the window");
        }
        let (d, _) = decide(&c, &observe(190, 4, 0, busy_then_idle(190)), &memory);
        assert_eq!(d.drain.len(), 2, "4 running, 2 required");
        assert_eq!(d.kind, DecisionKind::ScaleDown);
        assert!(
            !d.drain.contains(&InstanceId::new("i-1")),
            "busy instance kept"
        );
    }

    #[test]
    fn a_running_instance_not_yet_heard_from_is_neither_cancelled_nor_drained_for() {
        let c = config();
        let unheard = InstanceView {
            id: InstanceId::new("b-1"),
            phase: InstanceState::Bootstrapping,
            sessions: 0,
            idle_since: None,
            launched_at: at(400),
            ready_at: None,
            disrupted: false,
        };
        // min 1 + warm 1 = 2 needed; three instances, all idle long enough.
        let fleet = vec![ready(1, 0, Some(0)), ready(2, 0, Some(0)), unheard.clone()];
        let memory = PolicyMemory::default();
        let (d, _) = decide(&c, &observe(1000, 0, 0, fleet), &memory);
        assert!(d.terminate.is_empty(), "{d:?}");
        assert!(
            d.drain.is_empty(),
            "the unheard one is the excess, not a ready one: {d:?}"
        );
        assert_eq!(d.desired, 2, "the unheard one is not wanted: {d:?}");
        // EC2 has not started it: it is cancelled.
        let mut pending = unheard;
        pending.phase = InstanceState::Pending;
        let fleet = vec![ready(1, 0, Some(0)), ready(2, 0, Some(0)), pending];
        let (d, _) = decide(&c, &observe(1000, 0, 0, fleet), &memory);
        assert_eq!(d.terminate, vec![InstanceId::new("b-1")], "{d:?}");
        assert!(d.drain.is_empty(), "{d:?}");
    }

    #[test]
    fn a_disrupted_instance_is_the_first_to_go_when_the_fleet_shrinks() {
        let c = config();
        // i-3 idled last, but would be replaced anyway.
        let mut fleet = vec![
            ready(1, 0, Some(0)),
            ready(2, 0, Some(10)),
            ready(3, 0, Some(20)),
        ];
        fleet[2].disrupted = true;
        assert_eq!(
            pick_idle_to_drain(&observe(500, 0, 0, fleet.clone()), &c, 1),
            vec![InstanceId::new("i-3")]
        );
        fleet[2].disrupted = false;
        assert_eq!(
            pick_idle_to_drain(&observe(500, 0, 0, fleet), &c, 1),
            vec![InstanceId::new("i-1")]
        );
    }

    #[test]
    fn one_low_sample_after_a_gap_longer_than_the_window_does_not_shrink() {
        let c = config();
        let window = c.scale_down_stabilization.as_secs();
        let idle = |now: u64| {
            (1..=4)
                .map(|n| {
                    let mut i = ready(n, 0, Some(0));
                    i.idle_since = Some(at(now.saturating_sub(1000)));
                    i
                })
                .collect::<Vec<_>>()
        };
        let (_, memory) = decide(
            &c,
            &observe(1000, 16, 0, idle(1000)),
            &PolicyMemory::default(),
        );
        // Under load the next reconcile comes only after the whole window:
        // demand was 16 until a moment ago, for all the policy knows.
        let later = 1000 + window + 5;
        let (d, memory) = decide(&c, &observe(later, 0, 0, idle(later)), &memory);
        assert!(d.drain.is_empty(), "{}", d.reason);
        // A window after the low sample, it has held for a whole window.
        let (d, _) = decide(
            &c,
            &observe(later + window, 0, 0, idle(later + window)),
            &memory,
        );
        assert!(!d.drain.is_empty(), "{}", d.reason);
    }

    #[test]
    fn drained_empty_instances_are_terminated_next() {
        let mut draining = ready(7, 0, Some(0));
        draining.phase = InstanceState::Draining;
        let mut busy_draining = ready(8, 1, None);
        busy_draining.phase = InstanceState::Draining;
        let obs = observe(
            500,
            1,
            0,
            vec![
                ready(1, 0, Some(0)),
                ready(2, 0, Some(0)),
                draining,
                busy_draining,
            ],
        );
        let (d, _) = decide(&config(), &obs, &PolicyMemory::default());
        assert_eq!(d.terminate, vec![InstanceId::new("i-7")]);
    }

    #[test]
    fn a_burst_is_forecast_and_noise_is_not() {
        let c = PolicyConfig {
            max_launches_per_minute: 100,
            max_instances: 100,
            ..config()
        };
        let full = |n: u32| (0..n).map(|i| ready(i, 4, None)).collect::<Vec<_>>();
        // Steady demand around 40 with noise: no forecast.
        let mut memory = PolicyMemory::default();
        for (step, demand) in [40, 44, 37, 42, 39, 43, 41].into_iter().enumerate() {
            let now = 1000 + step as u64 * 10;
            let (d, m) = decide(
                &c,
                &observe(now, 40, demand - 40.min(demand), full(10)),
                &memory,
            );
            memory = m;
            assert!(!d.reason.contains("forecast"), "{}", d.reason);
        }
        // Demand climbing by 10 sessions every 10 s: a burst.
        let mut memory = PolicyMemory::default();
        let mut last = None;
        for step in 0..7u32 {
            let queued = step * 10;
            let now = 1000 + u64::from(step) * 10;
            let (d, m) = decide(&c, &observe(now, 40, queued, full(10)), &memory);
            memory = m;
            last = Some(d);
        }
        let d = last.expect("decided");
        assert!(d.reason.contains("forecast"), "{}", d.reason);
        // 100 sessions now, rising 1/s for a 300 s boot: capped at doubling.
        assert!(d.desired > 26, "{}", d.reason);
    }

    #[test]
    fn churn_serves_a_short_queue_of_short_sessions() {
        let c = config();
        let mut obs = observe(0, 40, 3, (0..10).map(|i| ready(i, 4, None)).collect());
        obs.mean_session_duration = Some(Duration::from_secs(60));
        // 40 sessions of 60 s end at 0.67/s: 4 in 6 s, more than the 3 queued.
        let (d, _) = decide(&c, &obs, &PolicyMemory::default());
        assert_eq!(d.launch, 1, "only the warm instance: {}", d.reason);
        obs.mean_session_duration = Some(Duration::from_secs(3600));
        let (d, _) = decide(&c, &obs, &PolicyMemory::default());
        assert_eq!(
            d.launch, 2,
            "long sessions: the queue needs an instance: {}",
            d.reason
        );
    }

    #[test]
    fn boot_time_is_learned_from_instances_that_became_ready() {
        let mut i = ready(1, 0, Some(200));
        i.ready_at = Some(at(200));
        let (_, memory) = decide(
            &config(),
            &observe(210, 0, 0, vec![i.clone()]),
            &PolicyMemory::default(),
        );
        assert_eq!(
            memory.expected_boot_time(&config()),
            Duration::from_secs(200)
        );
        // The same instance seen again does not count twice.
        let (_, again) = decide(&config(), &observe(220, 0, 0, vec![i]), &memory);
        assert_eq!(
            again.expected_boot_time(&config()),
            Duration::from_secs(200)
        );
    }

    #[test]
    fn a_policy_taking_over_scales_in_only_after_a_stabilization_window() {
        let c = config();
        // Six idle instances, demand for none: a fresh memory would drain at
        // once; a resumed one waits out the window first.
        let idle = |now: u64| observe(now, 0, 0, (1..=6).map(|n| ready(n, 0, Some(0))).collect());
        let (fresh, _) = decide(&c, &idle(1000), &PolicyMemory::default());
        assert!(!fresh.drain.is_empty(), "{}", fresh.reason);
        let mut memory = PolicyMemory::resume(&c, &idle(1000));
        for now in [1000, 1090, 1179] {
            let (d, m) = decide(&c, &idle(now), &memory);
            assert!(
                d.drain.is_empty() && d.terminate.is_empty(),
                "at {now}: {}",
                d.reason
            );
            assert!(d.reason.contains("taking over"), "{}", d.reason);
            memory = m;
        }
        let (d, _) = decide(&c, &idle(1181), &memory);
        assert!(!d.drain.is_empty(), "after the window: {}", d.reason);
        assert_eq!(d.kind, DecisionKind::ScaleDown);
    }

    #[test]
    fn a_policy_taking_over_counts_the_last_minutes_launches() {
        let c = config();
        let booting = |n: u32, launched: u64| InstanceView {
            id: InstanceId::new(format!("b-{n}")),
            phase: InstanceState::Pending,
            sessions: 0,
            idle_since: None,
            launched_at: at(launched),
            ready_at: None,
            disrupted: false,
        };
        // Four launched in the last minute, one long ago; the limit is 5/min.
        let instances = vec![
            booting(1, 10),
            booting(2, 950),
            booting(3, 960),
            booting(4, 970),
            booting(5, 980),
        ];
        let obs = observe(1000, 0, 100, instances);
        let (d, _) = decide(&c, &obs, &PolicyMemory::resume(&c, &obs));
        assert_eq!(
            d.launch, 1,
            "5/min minus the 4 of the last minute: {}",
            d.reason
        );
        let (unlimited, _) = decide(&c, &obs, &PolicyMemory::default());
        assert_eq!(unlimited.launch, 5);
    }

    #[test]
    fn paused_fleet_decides_nothing() {
        let c = PolicyConfig {
            paused: true,
            ..config()
        };
        let (d, _) = decide(
            &c,
            &observe(0, 0, 100, vec![ready(1, 0, Some(0))]),
            &PolicyMemory::default(),
        );
        assert_eq!((d.launch, d.drain.len(), d.terminate.len()), (0, 0, 0));
        assert!(d.reason.starts_with("paused"));
        assert_eq!(d.kind, DecisionKind::Paused);
    }

    fn arb_instance(n: u32) -> impl Strategy<Value = InstanceView> {
        (0..3u8, 0..5u32, 0..400u64, 0..400u64, any::<bool>()).prop_map(
            move |(phase, sessions, idle, launched, learned)| {
                let phase = [
                    InstanceState::Pending,
                    InstanceState::Ready,
                    InstanceState::Draining,
                ][usize::from(phase)];
                // Booting instances may host sessions too: an agent serves
                // before the operator has heard its registration.
                InstanceView {
                    id: InstanceId::new(format!("i-{n}")),
                    phase,
                    sessions,
                    idle_since: (sessions == 0 && !phase.is_booting()).then(|| at(idle)),
                    launched_at: at(launched),
                    ready_at: (!phase.is_booting() && learned).then(|| at(launched + 100)),
                    disrupted: false,
                }
            },
        )
    }

    fn arb_step() -> impl Strategy<Value = (u64, u32, u32, u32, Vec<InstanceView>)> {
        (
            1..40u64,
            0..80u32,
            0..200u32,
            0..20u32,
            prop::collection::vec(0..1u32, 0..30),
        )
            .prop_flat_map(|(dt, active, queued, pending, slots)| {
                let instances: Vec<_> = (0..slots.len() as u32).map(arb_instance).collect();
                (
                    Just(dt),
                    Just(active),
                    Just(queued),
                    Just(pending),
                    instances,
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Over any sequence of observations: the fleet is never sized above
        /// max or below min + warm by the policy, no busy instance is drained
        /// or terminated, and launches respect the per-minute limit.
        #[test]
        fn decisions_keep_the_invariants(
            min in 0..6u32, extra in 0..20u32, warm in 0..4u32, per in 1..8u32,
            rate in 1..10u32, stabilization in 0..300u64, idle in 0..300u64,
            steps in prop::collection::vec(arb_step(), 1..25),
        ) {
            let c = PolicyConfig {
                min_instances: min,
                max_instances: min + extra,
                sessions_per_instance: per,
                warm_instances: warm,
                scale_down_stabilization: Duration::from_secs(stabilization),
                max_launches_per_minute: rate,
                idle_timeout: Duration::from_secs(idle),
                paused: false,
                boot_time_prior: Duration::from_secs(300),
            };
            let floor = (min + warm).min(c.max_instances);
            let mut memory = PolicyMemory::default();
            let mut now = 400;
            let mut launches: Vec<(u64, u32)> = Vec::new();
            for (dt, active, queued, pending, instances) in steps {
                now += dt;
                let mut obs = observe(now, active, queued, instances);
                obs.pending_sessions = pending;
                let (d, m) = decide(&c, &obs, &memory);
                memory = m;
                let counted = obs.instances.iter().filter(|i| i.phase.is_capacity()).count() as u32;
                prop_assert!(d.launch == 0 || counted + d.launch <= c.max_instances, "above max: {d:?}");
                let removed = d.drain.len() as u32
                    + d.terminate.iter().filter(|id| obs.instances.iter().any(|i| &i.id == *id && i.phase.is_booting())).count() as u32;
                prop_assert!(removed == 0 || counted - removed >= floor, "below min + warm: {d:?}");
                for id in d.drain.iter().chain(&d.terminate) {
                    let i = obs.instances.iter().find(|i| &i.id == id).expect("known instance");
                    prop_assert_eq!(i.sessions, 0, "busy instance retired: {:?}", d);
                }
                for id in &d.drain {
                    let i = obs.instances.iter().find(|i| &i.id == id).expect("known instance");
                    prop_assert_eq!(i.phase, InstanceState::Ready);
                    prop_assert!(i.idle_since.is_some_and(|s| now - s.since_epoch().as_secs() >= idle));
                }
                launches.push((now, d.launch));
                let last_minute: u32 = launches.iter().filter(|(t, _)| now - t < 60).map(|(_, n)| n).sum();
                prop_assert!(last_minute <= rate, "{last_minute} launches within a minute, limit {rate}");
            }
        }
    }
}
