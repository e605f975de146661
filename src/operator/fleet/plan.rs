//! The fleet reconciler's decide step: from what was observed (EC2's
//! instances, the queue, the agents' registrations and states) and the
//! fleet's last status, what to do (launch, drain, terminate) and the status
//! that results. Pure: no I/O, no clock; tested without servers.
//!
//! An instance's life as the operator sees it:
//! `Pending` (EC2 boots it) → `Bootstrapping` (running, its agent has not
//! registered) → `Ready` (registered, takes sessions) → `Draining` (takes no
//! new sessions) → `Terminating`. The rules that move it:
//! * not registered within `readyTimeoutSeconds` of its launch: terminated
//!   and replaced; launches back off while this keeps happening;
//! * a drained instance is terminated when its agent reports no session, or
//!   at `drainTimeoutSeconds` — never earlier while a session lives on it;
//! * a registered agent that has not answered for `unresponsive_after` is
//!   terminated and replaced; one that does not answer now counts as
//!   *unknown*: its last known sessions, never idle;
//! * an instance stopped outside the operator is terminated and replaced;
//! * a drifted or expired instance is replaced, replacement first
//!   ([`disruption`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::BrowserFleetSpec;
use crate::api::disruption::{DisruptionReason, ReplacementWaiting};
use crate::api::fleet::{InstanceInterruption, InstanceState, InstanceStatus, LaunchIntent};
use crate::cloud::{Ec2State, FleetInstance, InstanceId, LaunchHash, QueueDepth};
use crate::operator::fleet::launch::{self, LaunchProgress};
use crate::protocol::AgentState;
use crate::scaling::policy::{
    self, Decision, InstanceView, Observation, PolicyConfig, PolicyMemory,
};

/// At most this many instances are listed in status: the CRD's bound, the
/// largest `maxInstances`, so that every instance's state survives a restart.
pub const MAX_LISTED_INSTANCES: usize = 1000;

/// `lastSeen` moves only when it is older than this, so that a steady
/// fleet's status changes at most once a minute (heartbeats, kept in
/// memory, are the finer record).
pub const LAST_SEEN_RESOLUTION: Duration = Duration::from_secs(60);

/// EC2's listing may lag a launch by seconds: an instance launched this
/// recently that status records and the listing does not show still
/// counts, as `Pending`.
pub const LISTING_LAG: Duration = Duration::from_secs(120);

/// A recorded launch that the listing shows unfinished is completed only
/// once it is this old, so that the listing's lag is not taken for a
/// launch cut short.
pub const INTENT_SETTLE: Duration = Duration::from_secs(15);

/// Where an agent said it listens, from its last announcement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// `host:port` to dial.
    pub address: String,
    /// The agent's build.
    pub agent_version: String,
    /// When the operator last heard the announcement.
    pub heard: Timestamp,
    /// It said it is draining and hosts no session: its drain is over. A
    /// drained agent says so as it stops, since the operator may not ask it
    /// in the moment between its last session's end and its exit.
    pub drained: bool,
}

/// What the operator learned of one agent in this observation.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentAnswer {
    /// It answered `GET /v1/state`.
    State(Box<AgentState>),
    /// It was asked and did not answer (in time, or with an error).
    Silent,
}

/// One look at the fleet.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub now: Timestamp,
    /// EC2's non-terminated instances of the fleet.
    pub instances: Vec<FleetInstance>,
    /// The request queue.
    pub depth: QueueDepth,
    /// Registrations heard on the events queue, by instance.
    pub registrations: BTreeMap<InstanceId, Registration>,
    /// Answers of the agents that were asked, by instance.
    pub answers: BTreeMap<InstanceId, AgentAnswer>,
    /// Since when this operator has watched the fleet: silence is judged
    /// only from then (and from the last answer or announcement), so a
    /// restarted operator does not replace agents it has not heard yet.
    pub watching_since: Timestamp,
    /// BrowserSessions of the fleet whose request is not on its queue yet.
    pub pending_sessions: u32,
    /// BrowserSessions of the fleet that have not ended, by the instance
    /// their status names.
    pub session_hosts: BTreeMap<InstanceId, u32>,
    /// The hash instances launched now are tagged with; `None` when the
    /// image could not be resolved (drift is then not judged by it).
    pub launch_hash: Option<LaunchHash>,
}

/// Operator-wide knobs of the rules above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// A registered agent silent for this long is replaced.
    pub unresponsive_after: Duration,
    /// First launch back-off after an instance failed to register.
    pub backoff_base: Duration,
    /// Longest launch back-off.
    pub backoff_cap: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            unresponsive_after: Duration::from_secs(90),
            backoff_base: Duration::from_secs(30),
            backoff_cap: Duration::from_secs(600),
        }
    }
}

/// Why an instance is terminated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TerminateReason {
    /// Drained, and its agent reports no session.
    Drained,
    /// Drained for `drainTimeoutSeconds`.
    DrainTimeout,
    /// Booting, and the policy no longer needs it.
    NotNeeded,
    /// Its agent never registered within `readyTimeoutSeconds`.
    NeverRegistered,
    /// Its agent stopped answering.
    Unresponsive,
    /// Stopped outside the operator.
    StoppedOutside,
}

impl TerminateReason {
    /// The Event reason.
    pub fn event_reason(self) -> &'static str {
        match self {
            TerminateReason::Drained
            | TerminateReason::DrainTimeout
            | TerminateReason::NotNeeded => "Terminating",
            TerminateReason::NeverRegistered
            | TerminateReason::Unresponsive
            | TerminateReason::StoppedOutside => "Replacing",
        }
    }

    /// For humans.
    pub fn describe(self) -> &'static str {
        match self {
            TerminateReason::Drained => "drained and empty",
            TerminateReason::DrainTimeout => "drain timeout reached",
            TerminateReason::NotNeeded => "booting and no longer needed",
            TerminateReason::NeverRegistered => {
                "its agent did not register within the ready timeout"
            }
            TerminateReason::Unresponsive => "its agent stopped answering",
            TerminateReason::StoppedOutside => "stopped outside the operator",
        }
    }

    /// Whether the fleet is unhealthy because of it.
    pub fn degrades(self) -> bool {
        self.event_reason() == "Replacing"
    }
}

/// An agent to drain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drain {
    pub instance: InstanceId,
    /// Where its agent listens.
    pub address: String,
    pub why: DrainReason,
}

/// Why an instance is drained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrainReason {
    /// The scaling policy retires it: idle, and the fleet is larger than
    /// demand needs.
    NotNeeded,
    /// It is drifted or expired, and its replacement is ready.
    Replaced {
        by: InstanceId,
        because: DisruptionReason,
    },
}

impl DrainReason {
    /// For Events and logs.
    pub fn describe(&self) -> String {
        match self {
            DrainReason::NotNeeded => "not needed".to_owned(),
            DrainReason::Replaced { by, because } => {
                format!("{}, replaced by {by}", because.describe())
            }
        }
    }
}

/// A launch to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    /// Its sequence (the client tokens derive from it).
    pub sequence: u64,
    /// Instances to launch now.
    pub count: u32,
    /// The intent to record before calling EC2 (the whole launch, of which
    /// `count` may be the missing part).
    pub intent_count: u32,
    /// Completing a launch an earlier reconcile recorded and the listing
    /// shows cut short (with a new sequence: fresh client tokens).
    pub resumed: bool,
}

/// What the reconcile does and reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The policy's decision.
    pub decision: Decision,
    /// The launch to make, if any.
    pub launch: Option<Launch>,
    /// Whether a recorded intent is complete and is cleared.
    pub clear_intent: bool,
    /// Agents to drain.
    pub drain: Vec<Drain>,
    /// Instances to terminate.
    pub terminate: Vec<(InstanceId, TerminateReason)>,
    /// Instances in status after the plan is carried out.
    pub instances: Vec<InstanceStatus>,
    /// Non-terminated instances, all of them (status lists at most 250).
    pub current: u32,
    /// Ready instances.
    pub ready: u32,
    /// Draining instances.
    pub draining: u32,
    /// Live sessions.
    pub sessions: u32,
    /// Slots of ready instances.
    pub capacity: u32,
    /// `status.bootFailures` after the plan.
    pub boot_failures: u32,
    /// `status.launchBackoffUntil` after the plan.
    pub backoff_until: Option<Timestamp>,
    /// Launches were wanted and held back by the back-off.
    pub backed_off: bool,
    /// Drifted or expired instances this launch replaces, in order: the
    /// first launched instances replace them.
    pub replacing: Vec<InstanceId>,
    /// Drifted instances not yet terminated.
    pub drifted: u32,
    /// Expired instances not yet terminated.
    pub expired: u32,
    /// What holds a replacement back, if anything does.
    pub replacement_waiting: Option<ReplacementWaiting>,
}

/// What the last status says, as the plan needs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Previous {
    /// Its instance list.
    pub instances: Vec<InstanceStatus>,
    /// Its launch sequence.
    pub launch_sequence: u64,
    /// Its launch intent.
    pub intent: Option<LaunchIntent>,
    /// Its boot failures.
    pub boot_failures: u32,
    /// Its back-off.
    pub backoff_until: Option<Timestamp>,
}

/// The state each instance is in after this observation, before the policy
/// acts on it.
struct Assessed {
    status: InstanceStatus,
    view: Option<InstanceView>,
    terminate: Option<TerminateReason>,
    newly_registered: bool,
}

fn seconds(value: i32) -> Duration {
    Duration::from_secs(u64::try_from(value).unwrap_or(0))
}

/// Time from `earlier` to `now`; zero when `earlier` is later.
pub(super) fn since(now: Timestamp, earlier: Timestamp) -> Duration {
    now.duration_since(earlier)
        .try_into()
        .unwrap_or(Duration::ZERO)
}

fn policy_time(at: Timestamp) -> policy::Timestamp {
    let nanos = u64::try_from(at.as_nanosecond()).unwrap_or(0);
    policy::Timestamp::from_epoch(Duration::from_nanos(nanos))
}

fn system_time(at: std::time::SystemTime) -> Option<Timestamp> {
    Timestamp::try_from(at).ok()
}

/// Decides what to do with the fleet. `memory` is the policy's memory;
/// `None` when this operator has not decided for the fleet before (a
/// restart, a new leader), which resumes it from the observation.
pub fn plan(
    spec: &BrowserFleetSpec,
    previous: &Previous,
    observed: &Observed,
    memory: Option<&PolicyMemory>,
    rules: &Rules,
) -> (Plan, PolicyMemory) {
    let now = observed.now;
    let mut assessed: Vec<Assessed> = observed
        .instances
        .iter()
        .map(|instance| assess(spec, previous, observed, instance, rules))
        .collect();
    disruption::mark(spec, observed, &mut assessed);
    assessed.extend(not_yet_listed(previous, observed));
    // A replacement beside its still-ready original is not shown to the
    // policy (the original is): its sessions are, below.
    let standing_in = disruption::standing_in(&assessed);

    let config = PolicyConfig::from_spec(spec);
    let held: u32 = assessed
        .iter()
        .filter_map(|a| a.view.as_ref())
        .map(|v| v.sessions)
        .sum();
    // A request is counted once: an agent that answered says how many of
    // the queue's in-flight messages it holds (each also a slot counted in
    // `held`, until it is deleted). The rest are held by agents the
    // operator cannot see yet (registration not heard) or that died with
    // them: demand of their own.
    let explained: u32 = observed
        .answers
        .values()
        .map(|answer| match answer {
            AgentAnswer::State(state) => state.held_requests,
            AgentAnswer::Silent => 0,
        })
        .fold(0, u32::saturating_add);
    let in_flight = u32::try_from(observed.depth.in_flight).unwrap_or(u32::MAX);
    let observation = Observation {
        now: policy_time(now),
        active_sessions: held,
        queued_visible: u32::try_from(observed.depth.visible).unwrap_or(u32::MAX),
        queued_in_flight: in_flight.saturating_sub(explained),
        pending_sessions: observed.pending_sessions,
        mean_session_duration: None,
        instances: assessed
            .iter()
            .filter(|a| !standing_in.contains(&a.status.instance_id))
            .filter_map(|a| a.view.clone())
            .collect(),
    };
    let memory = match memory {
        Some(memory) => memory.clone(),
        None => PolicyMemory::resume(&config, &observation),
    };
    let (decision, memory) = policy::decide(&config, &observation, &memory);
    tracing::debug!(reason = %decision.reason, "scaling decision");

    if spec.paused {
        // Observe and report only: nothing launched, drained or terminated.
        for a in &mut assessed {
            a.terminate = None;
        }
    }
    let mut terminate: Vec<(InstanceId, TerminateReason)> = assessed
        .iter()
        .filter_map(|a| Some((InstanceId::new(&a.status.instance_id), a.terminate?)))
        .collect();
    // The policy cancels booting instances it no longer needs; draining ones
    // go by the rules above, which know whether their agent answered.
    for id in &decision.terminate {
        let booting = assessed.iter().any(|a| {
            a.status.instance_id == id.as_str()
                && matches!(
                    a.status.state,
                    InstanceState::Pending | InstanceState::Bootstrapping
                )
                && a.terminate.is_none()
        });
        if booting {
            terminate.push((id.clone(), TerminateReason::NotNeeded));
        }
    }
    let mut drain = Vec::new();
    for id in &decision.drain {
        let found = assessed
            .iter()
            .find(|a| a.status.instance_id == id.as_str() && a.terminate.is_none());
        if let Some(address) = found.and_then(|a| a.status.address.clone()) {
            drain.push(Drain {
                instance: id.clone(),
                address,
                why: DrainReason::NotNeeded,
            });
        }
    }

    let registered_now = assessed.iter().any(|a| a.newly_registered);
    let failed_now = terminate
        .iter()
        .filter(|(_, r)| *r == TerminateReason::NeverRegistered)
        .count();
    let mut boot_failures = if registered_now {
        0
    } else {
        previous.boot_failures
    };
    let mut backoff_until = if registered_now {
        None
    } else {
        previous.backoff_until
    };
    if failed_now > 0 {
        boot_failures = boot_failures.saturating_add(u32::try_from(failed_now).unwrap_or(u32::MAX));
        backoff_until = Some(backoff_end(now, boot_failures, rules));
    }

    // Everything EC2 lists (or has just launched) counts towards
    // maxInstances until it is gone, also what this reconcile terminates:
    // its replacement is launched once it has left the listing. Not an
    // instance EC2 takes back within minutes: its replacement is needed
    // before it goes.
    let reclaimed = assessed.iter().filter(|a| a.status.reclaimed()).count();
    let existing = u32::try_from(assessed.len()).unwrap_or(u32::MAX);
    let counted_for_max = u32::try_from(assessed.len() - reclaimed).unwrap_or(u32::MAX);
    // Nor past what status can list, so that every instance's state
    // survives a restart.
    let listable = u32::try_from(MAX_LISTED_INSTANCES)
        .unwrap_or(u32::MAX)
        .saturating_sub(existing);
    let room = u32::try_from(spec.capacity.max_instances)
        .unwrap_or(0)
        .saturating_sub(counted_for_max)
        .min(listable);
    let backing_off = backoff_until.is_some_and(|until| now < until);

    let progress = launch::progress(
        previous.intent.as_ref(),
        &observed.instances,
        &previous.instances,
    );
    let policy_launch = match progress {
        LaunchProgress::Unfinished { .. } => 0,
        _ => decision.launch.min(room),
    };
    let launches_held = if matches!(progress, LaunchProgress::Unfinished { .. }) {
        Some("an earlier launch is being completed first")
    } else if backing_off {
        Some("launches back off while instances fail to register")
    } else {
        None
    };
    let replacements = disruption::replace(
        spec,
        &disruption::Fleet {
            assessed: &assessed,
            retiring: &decision.drain,
            demand: observation.demand(),
            existing: counted_for_max,
            policy_launch,
            launches_held,
        },
    );
    drain.extend(replacements.drain);
    let replacing = u32::try_from(replacements.launch_for.len()).unwrap_or(u32::MAX);

    let mut clear_intent = false;
    let mut backed_off = false;
    let launch = match progress {
        _ if spec.paused => None,
        LaunchProgress::Unfinished { missing, .. } => {
            let settled = previous
                .intent
                .as_ref()
                .is_some_and(|i| since(now, i.decided_at.0) >= INTENT_SETTLE);
            let count = missing.min(room);
            // A new sequence: the cut-short launch's client tokens were
            // used with other counts, which EC2 refuses to reuse.
            (settled && count > 0).then_some(Launch {
                sequence: previous.launch_sequence + 1,
                count,
                intent_count: count,
                resumed: true,
            })
        }
        progress => {
            clear_intent = progress == LaunchProgress::Complete;
            // Instances being terminated are not in the policy's view, so
            // their replacements are part of its launch.
            // Replacements are launched with them, within maxInstances and
            // the budget's surge (never while backing off: `replace` knew).
            let wanted = policy_launch;
            if wanted > 0 && backing_off {
                backed_off = true;
                None
            } else {
                let count = wanted.saturating_add(replacing);
                (count > 0).then_some(Launch {
                    sequence: previous.launch_sequence + 1,
                    count,
                    intent_count: count,
                    resumed: false,
                })
            }
        }
    };

    let mut statuses: Vec<InstanceStatus> = assessed.into_iter().map(|a| a.status).collect();
    for status in &mut statuses {
        if terminate
            .iter()
            .any(|(id, _)| id.as_str() == status.instance_id)
        {
            status.state = InstanceState::Terminating;
        } else if drain
            .iter()
            .any(|d| d.instance.as_str() == status.instance_id)
        {
            status.state = InstanceState::Draining;
            status.draining_since = Some(Time(now));
        }
    }
    // A replacement stands in for its original only while that one exists.
    let listed_ids: BTreeSet<String> = statuses.iter().map(|s| s.instance_id.clone()).collect();
    for status in &mut statuses {
        if status
            .replaces
            .as_ref()
            .is_some_and(|original| !listed_ids.contains(original))
        {
            status.replaces = None;
        }
    }
    statuses.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    let disrupted = |reason: DisruptionReason| {
        let found = statuses
            .iter()
            .filter(|s| s.state != InstanceState::Terminating && s.disruption == Some(reason));
        u32::try_from(found.count()).unwrap_or(u32::MAX)
    };
    let (drifted, expired) = (
        disrupted(DisruptionReason::Drifted),
        disrupted(DisruptionReason::Expired),
    );
    let count = |state: InstanceState| {
        u32::try_from(statuses.iter().filter(|s| s.state == state).count()).unwrap_or(u32::MAX)
    };
    let ready = count(InstanceState::Ready);
    let draining = count(InstanceState::Draining);
    let sessions = statuses.iter().map(live_sessions).sum();
    let slots = u32::try_from(spec.capacity.sessions_per_instance).unwrap_or(0);
    let mut listed = statuses;
    listed.truncate(MAX_LISTED_INSTANCES);

    let plan = Plan {
        decision,
        launch,
        clear_intent,
        drain,
        terminate,
        instances: listed,
        current: existing,
        ready,
        draining,
        sessions,
        capacity: ready.saturating_mul(slots),
        boot_failures,
        backoff_until,
        backed_off,
        replacing: if launch.is_some_and(|l| !l.resumed) {
            replacements.launch_for
        } else {
            Vec::new()
        },
        drifted,
        expired,
        replacement_waiting: replacements.waiting,
    };
    (plan, memory)
}

fn live_sessions(status: &InstanceStatus) -> u32 {
    u32::try_from(status.sessions).unwrap_or(0)
}

fn backoff_end(now: Timestamp, failures: u32, rules: &Rules) -> Timestamp {
    let exponent = failures.saturating_sub(1).min(20);
    let delay = rules
        .backoff_base
        .saturating_mul(1u32 << exponent)
        .min(rules.backoff_cap);
    now.checked_add(jiff::SignedDuration::try_from(delay).unwrap_or_default())
        .unwrap_or(now)
}

/// Instances status records as just launched that EC2's listing does not
/// show yet: they count, as booting, until [`LISTING_LAG`] has passed.
fn not_yet_listed(previous: &Previous, observed: &Observed) -> Vec<Assessed> {
    previous
        .instances
        .iter()
        .filter(|s| matches!(s.state, InstanceState::Pending))
        .filter(|s| {
            !observed
                .instances
                .iter()
                .any(|i| i.id.as_str() == s.instance_id)
        })
        .filter(|s| {
            s.launch_time
                .as_ref()
                .is_some_and(|t| since(observed.now, t.0) < LISTING_LAG)
        })
        .map(|s| Assessed {
            status: s.clone(),
            view: Some(InstanceView {
                id: InstanceId::new(&s.instance_id),
                phase: InstanceState::Pending,
                sessions: 0,
                idle_since: None,
                launched_at: s
                    .launch_time
                    .as_ref()
                    .map(|t| policy_time(t.0))
                    .unwrap_or_default(),
                ready_at: None,
                disrupted: false,
            }),
            terminate: None,
            newly_registered: false,
        })
        .collect()
}

/// One instance's state and what its observation says must happen to it.
fn assess(
    spec: &BrowserFleetSpec,
    previous: &Previous,
    observed: &Observed,
    instance: &FleetInstance,
    rules: &Rules,
) -> Assessed {
    let now = observed.now;
    let before = previous
        .instances
        .iter()
        .find(|s| s.instance_id == instance.id.as_str());
    let registration = observed.registrations.get(&instance.id);
    let answer = observed.answers.get(&instance.id);
    let launched = instance.launch_time.and_then(system_time);

    let mut status = InstanceStatus {
        instance_id: instance.id.as_str().to_owned(),
        state: InstanceState::Pending,
        subnet_id: instance.subnet_id.clone(),
        private_ip: instance.private_ip.map(|ip| ip.to_string()),
        launch_time: launched.map(Time),
        sessions: before.map_or(0, |b| b.sessions),
        address: registration
            .map(|r| r.address.clone())
            .or_else(|| before.and_then(|b| b.address.clone())),
        agent_version: registration
            .map(|r| r.agent_version.clone())
            .or_else(|| before.and_then(|b| b.agent_version.clone())),
        agent_artifact_sha256: before.and_then(|b| b.agent_artifact_sha256.clone()),
        last_seen: before.and_then(|b| b.last_seen.clone()),
        draining_since: before.and_then(|b| b.draining_since.clone()),
        bootstrap: before.and_then(|b| b.bootstrap.clone()),
        // Judged after the assessment, from the listing.
        disruption: None,
        replaces: before.and_then(|b| b.replaces.clone()),
        interruption: before.and_then(|b| b.interruption.clone()),
    };
    let was = before.map(|b| b.state);
    let newly_registered = status.address.is_some()
        && matches!(
            was,
            None | Some(InstanceState::Pending | InstanceState::Bootstrapping)
        );

    let mut terminate = None;
    let mut idle_since = None;
    let mut ready_at = None;
    match instance.state {
        Ec2State::ShuttingDown | Ec2State::Terminated => {
            status.state = InstanceState::Terminating;
        }
        Ec2State::Stopping | Ec2State::Stopped => {
            status.state = InstanceState::Terminating;
            if was != Some(InstanceState::Terminating) {
                terminate = Some(TerminateReason::StoppedOutside);
            }
        }
        _ if was == Some(InstanceState::Terminating) => {
            // Asked to terminate before; EC2 has not caught up. Asking again
            // is harmless and covers a lost call.
            status.state = InstanceState::Terminating;
            terminate = Some(TerminateReason::Drained);
        }
        Ec2State::Pending | Ec2State::Other(_) => {
            status.state = InstanceState::Pending;
            if let Some(launched) = launched
                && since(now, launched) > seconds(spec.scaling.ready_timeout_seconds)
            {
                terminate = Some(TerminateReason::NeverRegistered);
            }
        }
        Ec2State::Running => {
            // An agent with EC2's notice drains itself.
            let draining = was == Some(InstanceState::Draining)
                || matches!(answer, Some(AgentAnswer::State(s)) if s.draining || s.interruption.is_some());
            match (&status.address, answer) {
                (None, _) => {
                    status.state = InstanceState::Bootstrapping;
                    if let Some(launched) = launched
                        && since(now, launched) > seconds(spec.scaling.ready_timeout_seconds)
                    {
                        terminate = Some(TerminateReason::NeverRegistered);
                    }
                }
                (Some(_), Some(AgentAnswer::State(state))) => {
                    status.sessions = i32::try_from(state.live_sessions()).unwrap_or(i32::MAX);
                    status.agent_version = Some(state.agent_version.clone());
                    if state.artifact_sha256.is_some() {
                        status.agent_artifact_sha256 = state.artifact_sha256.clone();
                    }
                    if let Some(notice) = &state.interruption {
                        status.interruption = Some(InstanceInterruption::from(notice));
                    }
                    let stale = status
                        .last_seen
                        .as_ref()
                        .is_none_or(|seen| since(now, seen.0) >= LAST_SEEN_RESOLUTION);
                    if stale {
                        status.last_seen = Some(Time(now));
                    }
                    idle_since = state.idle_since.map(policy_time);
                    ready_at = Some(policy_time(state.ready_since));
                    status.state = if draining {
                        InstanceState::Draining
                    } else {
                        InstanceState::Ready
                    };
                }
                (Some(_), _) if draining => {
                    // A draining agent exits once its last session ended,
                    // and says so first (its last heartbeat: draining, no
                    // session). Silence alone says nothing: the last answer
                    // may predate the drain — an idle agent whose long poll
                    // took a create just before it, then slow to answer,
                    // hosts a session now. It waits for that announcement
                    // or the drain timeout, below.
                    status.state = InstanceState::Draining;
                    if registration.is_some_and(|r| r.drained) {
                        terminate = Some(TerminateReason::Drained);
                    }
                }
                (Some(_), _) => {
                    // Unknown: keep what was known, never idle.
                    status.state = InstanceState::Ready;
                    let heard = [
                        status.last_seen.as_ref().map(|t| t.0),
                        registration.map(|r| r.heard),
                        Some(observed.watching_since),
                    ]
                    .into_iter()
                    .flatten()
                    .max()
                    .unwrap_or(observed.watching_since);
                    if since(now, heard) > rules.unresponsive_after {
                        terminate = Some(TerminateReason::Unresponsive);
                    }
                }
            }
            if status.state == InstanceState::Draining {
                let from = status.draining_since.get_or_insert(Time(now)).0;
                let empty = matches!(answer, Some(AgentAnswer::State(s)) if s.is_empty());
                if terminate.is_none() {
                    if empty {
                        terminate = Some(TerminateReason::Drained);
                    } else if since(now, from) >= seconds(spec.scaling.drain_timeout_seconds) {
                        terminate = Some(TerminateReason::DrainTimeout);
                    }
                }
            } else if status.state == InstanceState::Ready {
                status.draining_since = None;
            }
        }
    }

    // The policy counts held slots: sessions, and slots reserved for a
    // request being started.
    let hosted = observed
        .session_hosts
        .get(&instance.id)
        .copied()
        .unwrap_or(0);
    let held = match answer {
        Some(AgentAnswer::State(state)) => state
            .slots
            .saturating_sub(state.free_slots)
            .max(live_sessions(&status)),
        _ => live_sessions(&status).max(hosted),
    };
    let view = match (status.state, terminate) {
        (InstanceState::Terminating, _) | (_, Some(_)) => None,
        (phase, None) => Some(InstanceView {
            id: instance.id.clone(),
            phase,
            sessions: held,
            idle_since,
            launched_at: launched.map(policy_time).unwrap_or_default(),
            ready_at,
            disrupted: false,
        }),
    };
    Assessed {
        status,
        view,
        terminate,
        newly_registered,
    }
}

mod disruption;

#[cfg(test)]
mod tests;
