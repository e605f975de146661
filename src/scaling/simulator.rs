//! A deterministic discrete-event simulator of one fleet.
//!
//! Requests arrive as the trace says and wait in one FIFO queue; each needs one
//! session slot for its duration. Instances become ready a boot delay after
//! launch, drawn from a seeded distribution. The autoscaler under test runs on
//! its own cadence, sees what the operator would see (an [`Observation`]) and
//! answers with a [`Decision`]. Instance-hours are counted from launch to
//! termination, or to the end of the run.
//!
//! Simplifications, the same for every autoscaler: a browser starts the moment
//! a slot takes a request (launch latency is seconds against minutes of boot);
//! free slots take the oldest request at once (agents long-poll the queue);
//! requests go to the oldest ready instance with a free slot, which packs
//! sessions so that idle instances can be retired; no autoscaler may terminate
//! an instance that hosts sessions (the operator drains first, and the
//! baselines are granted the same scale-in protection so that the comparison
//! is about sizing, not about killing sessions).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::Serialize;

use super::policy::{
    Decision, InstanceId, InstanceState, InstanceView, Observation, PolicyConfig, Timestamp,
};
use super::trace::Trace;

/// A scaling policy under simulation.
pub trait Autoscaler {
    /// How often it runs.
    fn cadence(&self) -> Duration;
    /// Instances that are already ready when the run starts.
    fn initial_instances(&self) -> u32 {
        0
    }
    /// One run of the policy.
    fn tick(&mut self, observation: &Observation) -> Decision;
}

/// How long an instance takes from launch to a ready agent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BootDistribution {
    /// Always the same.
    Fixed(Duration),
    /// Uniform between two bounds.
    Uniform(Duration, Duration),
    /// Normal with a mean and a standard deviation, never below a quarter of
    /// the mean.
    Normal(Duration, Duration),
}

impl Default for BootDistribution {
    /// Windows Server on EC2: about five minutes from RunInstances to a
    /// running agent, give or take a minute.
    fn default() -> Self {
        BootDistribution::Normal(Duration::from_secs(300), Duration::from_secs(60))
    }
}

impl BootDistribution {
    fn sample(&self, rng: &mut ChaCha8Rng) -> Duration {
        match *self {
            BootDistribution::Fixed(d) => d,
            BootDistribution::Uniform(low, high) => {
                low + (high.saturating_sub(low)).mul_f64(rng.random::<f64>())
            }
            BootDistribution::Normal(mean, sd) => {
                let floor = mean.as_secs_f64() / 4.0;
                let drawn = Normal::new(mean.as_secs_f64(), sd.as_secs_f64())
                    .map_or(mean.as_secs_f64(), |n| n.sample(rng));
                Duration::from_secs_f64(drawn.max(floor))
            }
        }
    }
}

impl fmt::Display for BootDistribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootDistribution::Fixed(d) => write!(f, "fixed:{}", d.as_secs()),
            BootDistribution::Uniform(a, b) => write!(f, "uniform:{}-{}", a.as_secs(), b.as_secs()),
            BootDistribution::Normal(m, s) => write!(f, "normal:{},{}", m.as_secs(), s.as_secs()),
        }
    }
}

/// Why a boot distribution could not be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "boot distribution {0:?} is not one of fixed:SECONDS, uniform:LOW-HIGH or normal:MEAN,SD (whole seconds, LOW <= HIGH)"
)]
pub struct BootDistributionError(String);

impl FromStr for BootDistribution {
    type Err = BootDistributionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BootDistributionError(text.to_owned());
        let secs = |s: &str| {
            s.trim()
                .parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|_| bad())
        };
        let (kind, args) = text.split_once(':').ok_or_else(bad)?;
        match kind {
            "fixed" => Ok(BootDistribution::Fixed(secs(args)?)),
            "uniform" => {
                let (low, high) = args.split_once('-').ok_or_else(bad)?;
                let (low, high) = (secs(low)?, secs(high)?);
                if low > high {
                    return Err(bad());
                }
                Ok(BootDistribution::Uniform(low, high))
            }
            "normal" => {
                let (mean, sd) = args.split_once(',').ok_or_else(bad)?;
                Ok(BootDistribution::Normal(secs(mean)?, secs(sd)?))
            }
            _ => Err(bad()),
        }
    }
}

/// What one run produced.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunReport {
    /// Requests in the trace.
    pub requests: usize,
    /// Requests that got a session by the end of the run.
    pub served: usize,
    /// Median wait from arrival to a started session, seconds.
    pub wait_p50_s: f64,
    /// 95th percentile wait, seconds.
    pub wait_p95_s: f64,
    /// 99th percentile wait, seconds.
    pub wait_p99_s: f64,
    /// Longest wait, seconds.
    pub wait_max_s: f64,
    /// Share of requests that waited more than 60 seconds.
    pub waited_over_60s: f64,
    /// Most requests waiting at once.
    pub peak_queue: usize,
    /// Instance-hours paid for.
    pub instance_hours: f64,
    /// Instances launched.
    pub launches: u32,
    /// Instances terminated.
    pub terminations: u32,
    /// Most instances (booting, ready or draining) at once.
    pub peak_instances: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A free slot or a new request; ordered first so that a session ending
    /// and a request arriving at the same millisecond meet.
    SessionEnd(usize, usize),
    InstanceReady(usize),
    Arrival(usize),
    Tick,
}

#[derive(Clone, Debug)]
struct SimInstance {
    id: InstanceId,
    phase: InstanceState,
    sessions: u32,
    launched_at: Duration,
    ready_at: Option<Duration>,
    idle_since: Option<Duration>,
    terminated_at: Option<Duration>,
}

struct Fleet<'a> {
    trace: &'a Trace,
    slots: u32,
    instances: Vec<SimInstance>,
    queue: VecDeque<usize>,
    waits: Vec<Duration>,
    events: BinaryHeap<Reverse<(Duration, u64, Event)>>,
    sequence: u64,
    rng: ChaCha8Rng,
    boot: BootDistribution,
    active: u32,
    mean_session_duration: Option<Duration>,
    peak_queue: usize,
    peak_instances: usize,
    launches: u32,
    terminations: u32,
}

/// Replays `trace` against `autoscaler` on a fleet shaped by `fleet` (its
/// sessions per instance) with boot delays from `boot`, seeded by `seed`.
pub fn run(
    trace: &Trace,
    fleet: &PolicyConfig,
    autoscaler: &mut dyn Autoscaler,
    boot: BootDistribution,
    seed: u64,
) -> RunReport {
    let mut sim = Fleet {
        trace,
        slots: fleet.sessions_per_instance.max(1),
        instances: Vec::new(),
        queue: VecDeque::new(),
        waits: Vec::with_capacity(trace.requests.len()),
        events: BinaryHeap::new(),
        sequence: 0,
        rng: ChaCha8Rng::seed_from_u64(seed),
        boot,
        active: 0,
        mean_session_duration: None,
        peak_queue: 0,
        peak_instances: 0,
        launches: 0,
        terminations: 0,
    };
    for _ in 0..autoscaler.initial_instances() {
        let index = sim.add_instance(Duration::ZERO);
        sim.instances[index].phase = InstanceState::Ready;
        sim.instances[index].ready_at = Some(Duration::ZERO);
        sim.instances[index].idle_since = Some(Duration::ZERO);
    }
    for (index, request) in trace.requests.iter().enumerate() {
        sim.schedule(request.arrival, Event::Arrival(index));
    }
    sim.schedule(Duration::ZERO, Event::Tick);
    let mut end = trace.horizon;
    while let Some(Reverse((now, _, event))) = sim.events.pop() {
        match event {
            Event::Arrival(request) => {
                sim.queue.push_back(request);
                sim.peak_queue = sim.peak_queue.max(sim.queue.len());
            }
            Event::SessionEnd(instance, request) => {
                sim.end_session(instance, now);
                sim.learn_duration(trace.requests[request].duration);
            }
            Event::InstanceReady(instance) => sim.mark_ready(instance, now),
            Event::Tick => {
                let decision = autoscaler.tick(&sim.observe(now));
                sim.apply(&decision, now);
                if now < trace.horizon || sim.has_work() {
                    sim.schedule(now + autoscaler.cadence(), Event::Tick);
                }
            }
        }
        sim.dispatch(now);
        end = end.max(now);
    }
    sim.report(end)
}

impl Fleet<'_> {
    fn schedule(&mut self, at: Duration, event: Event) {
        self.sequence += 1;
        self.events.push(Reverse((at, self.sequence, event)));
    }

    fn has_work(&self) -> bool {
        !self.queue.is_empty() || self.active > 0 || self.waits.len() < self.trace.requests.len()
    }

    fn add_instance(&mut self, now: Duration) -> usize {
        let index = self.instances.len();
        self.instances.push(SimInstance {
            id: InstanceId::new(format!("i-{index:05}")),
            phase: InstanceState::Pending,
            sessions: 0,
            launched_at: now,
            ready_at: None,
            idle_since: None,
            terminated_at: None,
        });
        let alive = self
            .instances
            .iter()
            .filter(|i| i.terminated_at.is_none())
            .count();
        self.peak_instances = self.peak_instances.max(alive);
        index
    }

    fn index_of(id: &InstanceId) -> Option<usize> {
        id.as_str().strip_prefix("i-")?.parse().ok()
    }

    fn mark_ready(&mut self, index: usize, now: Duration) {
        let instance = &mut self.instances[index];
        if instance.terminated_at.is_none() && instance.phase.is_booting() {
            instance.phase = InstanceState::Ready;
            instance.ready_at = Some(now);
            instance.idle_since = Some(now);
        }
    }

    /// Agents report how long sessions lasted; the operator smooths it.
    fn learn_duration(&mut self, lasted: Duration) {
        self.mean_session_duration = Some(match self.mean_session_duration {
            None => lasted,
            Some(mean) => mean.mul_f64(0.95) + lasted.mul_f64(0.05),
        });
    }

    fn end_session(&mut self, index: usize, now: Duration) {
        let instance = &mut self.instances[index];
        instance.sessions -= 1;
        if instance.sessions == 0 {
            instance.idle_since = Some(now);
        }
        self.active -= 1;
    }

    /// Free slots take waiting requests, oldest request to oldest instance.
    fn dispatch(&mut self, now: Duration) {
        while let Some(&request) = self.queue.front() {
            let slots = self.slots;
            let Some(index) = self.instances.iter().position(|i| {
                i.phase == InstanceState::Ready && i.terminated_at.is_none() && i.sessions < slots
            }) else {
                return;
            };
            self.queue.pop_front();
            let spec = self.trace.requests[request];
            self.waits.push(now.saturating_sub(spec.arrival));
            let instance = &mut self.instances[index];
            instance.sessions += 1;
            instance.idle_since = None;
            self.active += 1;
            self.schedule(now + spec.duration, Event::SessionEnd(index, request));
        }
    }

    fn observe(&self, now: Duration) -> Observation {
        let at = Timestamp::from_epoch;
        Observation {
            now: at(now),
            active_sessions: self.active,
            queued_visible: u32::try_from(self.queue.len()).unwrap_or(u32::MAX),
            queued_in_flight: 0,
            pending_sessions: 0,
            mean_session_duration: self.mean_session_duration,
            instances: self
                .instances
                .iter()
                .filter(|i| i.terminated_at.is_none())
                .map(|i| InstanceView {
                    id: i.id.clone(),
                    phase: i.phase,
                    sessions: i.sessions,
                    idle_since: i.idle_since.map(at),
                    launched_at: at(i.launched_at),
                    ready_at: i.ready_at.map(at),
                    disrupted: false,
                })
                .collect(),
        }
    }

    fn apply(&mut self, decision: &Decision, now: Duration) {
        for _ in 0..decision.launch {
            let index = self.add_instance(now);
            self.launches += 1;
            let boot = self.boot.sample(&mut self.rng);
            self.schedule(now + boot, Event::InstanceReady(index));
        }
        for id in &decision.drain {
            if let Some(instance) = Self::index_of(id).and_then(|i| self.instances.get_mut(i))
                && instance.terminated_at.is_none()
            {
                instance.phase = InstanceState::Draining;
            }
        }
        for id in &decision.terminate {
            let Some(instance) = Self::index_of(id).and_then(|i| self.instances.get_mut(i)) else {
                continue;
            };
            // Scale-in protection: an instance with sessions is never cut off.
            if instance.terminated_at.is_none() && instance.sessions == 0 {
                instance.terminated_at = Some(now);
                self.terminations += 1;
            }
        }
    }

    fn report(mut self, end: Duration) -> RunReport {
        let instance_seconds: f64 = self
            .instances
            .iter()
            .map(|i| {
                i.terminated_at
                    .unwrap_or(end)
                    .saturating_sub(i.launched_at)
                    .as_secs_f64()
            })
            .sum();
        self.waits.sort();
        let over_60 = self.waits.iter().filter(|w| w.as_secs_f64() > 60.0).count();
        let served = self.waits.len().max(1) as f64;
        RunReport {
            requests: self.trace.requests.len(),
            served: self.waits.len(),
            wait_p50_s: percentile(&self.waits, 0.50),
            wait_p95_s: percentile(&self.waits, 0.95),
            wait_p99_s: percentile(&self.waits, 0.99),
            wait_max_s: self.waits.last().map_or(0.0, Duration::as_secs_f64),
            waited_over_60s: over_60 as f64 / served,
            peak_queue: self.peak_queue,
            instance_hours: instance_seconds / 3600.0,
            launches: self.launches,
            terminations: self.terminations,
            peak_instances: self.peak_instances,
        }
    }
}

/// Nearest-rank percentile of sorted values, in seconds.
fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_distributions_parse_and_print() {
        for text in ["fixed:240", "uniform:180-420", "normal:300,60"] {
            let parsed: BootDistribution = text.parse().expect(text);
            assert_eq!(parsed.to_string(), text);
        }
        for bad in [
            "fixed",
            "fixed:-1",
            "uniform:400-100",
            "normal:300",
            "gamma:1,2",
            "",
        ] {
            assert!(bad.parse::<BootDistribution>().is_err(), "{bad}");
        }
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_secs).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.95), 95.0);
        assert_eq!(percentile(&values, 1.0), 100.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
