use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::*;
use crate::cloud::fleet_tags::{LAUNCH_HASH_TAG, LAUNCH_SEQUENCE_TAG};
use crate::protocol::SessionId;
use crate::protocol::state::{HostedPhase, STATE_VERSION, SessionState};

const T0: i64 = 1_800_000_000;

fn at(offset: i64) -> Timestamp {
    Timestamp::from_second(T0 + offset).unwrap()
}

fn spec(min: i32, max: i32) -> BrowserFleetSpec {
    let mut spec: BrowserFleetSpec = serde_json::from_value(serde_json::json!({
        "instance": {
            "platform": "Linux",
            "image": {"imageId": "ami-0123456789abcdef0"},
            "instanceTypes": ["m6i.large"],
            "subnetIds": ["subnet-01234567"],
            "securityGroupIds": ["sg-01234567"],
            "instanceProfile": "node",
        },
        "capacity": {"minInstances": 0, "maxInstances": 10},
    }))
    .unwrap();
    spec.capacity.min_instances = min;
    spec.capacity.max_instances = max;
    spec.capacity.warm_instances = 0;
    spec.capacity.sessions_per_instance = 2;
    spec.scaling.ready_timeout_seconds = 300;
    spec.scaling.drain_timeout_seconds = 600;
    spec
}

fn instance(id: &str, launched: i64, state: Ec2State) -> FleetInstance {
    FleetInstance {
        id: InstanceId::new(id),
        state,
        instance_type: Some("m6i.large".into()),
        image_id: None,
        subnet_id: Some("subnet-01234567".into()),
        availability_zone: None,
        private_ip: Some("10.0.0.1".parse().unwrap()),
        launch_time: Some(SystemTime::from(at(launched))),
        tags: BTreeMap::from([(LAUNCH_SEQUENCE_TAG.to_owned(), "1".to_owned())]),
    }
}

fn agent(id: &str, sessions: usize, draining: bool) -> AgentAnswer {
    AgentAnswer::State(Box::new(AgentState {
        held_requests: 0,
        version: STATE_VERSION,
        instance_id: id.into(),
        fleet: "qa/web".into(),
        agent_version: "0.1.0".into(),
        artifact_sha256: None,
        draining,
        interruption: None,
        slots: 2,
        free_slots: 2 - sessions as u32,
        ready_since: at(10),
        idle_since: (sessions == 0).then(|| at(10)),
        sessions: (0..sessions)
            .map(|n| SessionState {
                id: SessionId::new(format!("s-{id}-{n}")).unwrap(),
                phase: HostedPhase::Active,
                port: 9300 + n as u16,
                pid: 100 + n as u32,
                started: at(20),
                expires: at(4000),
                used: true,
            })
            .collect(),
    }))
}

fn registration(address: &str, heard: i64) -> Registration {
    Registration {
        address: address.into(),
        agent_version: "0.1.0".into(),
        heard: at(heard),
        drained: false,
    }
}

struct World {
    spec: BrowserFleetSpec,
    previous: Previous,
    observed: Observed,
}

impl World {
    fn new(spec: BrowserFleetSpec, now: i64) -> Self {
        World {
            spec,
            previous: Previous::default(),
            observed: Observed {
                now: at(now),
                instances: Vec::new(),
                depth: QueueDepth::default(),
                registrations: BTreeMap::new(),
                answers: BTreeMap::new(),
                watching_since: at(0),
                pending_sessions: 0,
                session_hosts: BTreeMap::new(),
                launch_hash: None,
            },
        }
    }

    fn ready(mut self, id: &str, sessions: usize) -> Self {
        self.observed
            .instances
            .push(instance(id, 0, Ec2State::Running));
        self.observed
            .registrations
            .insert(InstanceId::new(id), registration("127.0.0.1:1", 5));
        self.observed
            .answers
            .insert(InstanceId::new(id), agent(id, sessions, false));
        self
    }

    fn plan(&self) -> Plan {
        plan(
            &self.spec,
            &self.previous,
            &self.observed,
            None,
            &Rules::default(),
        )
        .0
    }

    /// The plan, then the status it leaves as the next plan's previous.
    fn advance(&mut self) -> Plan {
        let plan = self.plan();
        self.previous.instances = plan.instances.clone();
        self.previous.boot_failures = plan.boot_failures;
        self.previous.backoff_until = plan.backoff_until;
        plan
    }
}

#[test]
fn an_empty_fleet_launches_its_minimum_as_one_new_sequence() {
    let world = World::new(spec(2, 10), 0);
    let plan = world.plan();
    assert_eq!(
        plan.launch,
        Some(Launch {
            sequence: 1,
            count: 2,
            intent_count: 2,
            resumed: false
        })
    );
    assert!(plan.terminate.is_empty() && plan.drain.is_empty());
}

#[test]
fn an_unfinished_intent_launches_only_what_is_missing_once_the_listing_settled() {
    let mut world = World::new(spec(3, 10), 5);
    world.previous.launch_sequence = 1;
    world.previous.intent = Some(LaunchIntent {
        sequence: 1,
        count: 3,
        decided_at: Time(at(0)),
    });
    world
        .observed
        .instances
        .push(instance("i-1", 0, Ec2State::Pending));
    assert_eq!(world.plan().launch, None, "the listing may still lag");
    world.observed.now = at(20);
    assert_eq!(
        world.plan().launch,
        Some(Launch {
            sequence: 2,
            count: 2,
            intent_count: 2,
            resumed: true
        }),
        "a new sequence: the cut-short launch's tokens are not reused"
    );
}

#[test]
fn a_just_launched_instance_the_listing_does_not_show_yet_still_counts() {
    let mut world = World::new(spec(1, 10), 30);
    world.previous.launch_sequence = 1;
    world.previous.instances = vec![InstanceStatus {
        instance_id: "i-new".into(),
        state: InstanceState::Pending,
        subnet_id: None,
        private_ip: None,
        launch_time: Some(Time(at(25))),
        sessions: 0,
        address: None,
        agent_version: None,
        agent_artifact_sha256: None,
        last_seen: None,
        draining_since: None,
        bootstrap: None,
        disruption: None,
        replaces: None,
        interruption: None,
    }];
    let plan = world.plan();
    assert_eq!(plan.launch, None, "{}", plan.decision.reason);
    assert_eq!(plan.current, 1);
    world.observed.now = at(25 + 121);
    assert!(
        world.plan().launch.is_some(),
        "gone after the listing's lag"
    );
}

/// An instance draining since 50 s whose last answer said no session.
fn draining_world(now: i64) -> World {
    let mut world = World::new(spec(0, 10), now).ready("i-1", 0);
    world.previous.instances = vec![InstanceStatus {
        instance_id: "i-1".into(),
        state: InstanceState::Draining,
        subnet_id: None,
        private_ip: None,
        launch_time: None,
        sessions: 0,
        address: Some("127.0.0.1:1".into()),
        agent_version: None,
        agent_artifact_sha256: None,
        last_seen: Some(Time(at(55))),
        draining_since: Some(Time(at(50))),
        bootstrap: None,
        disruption: None,
        replaces: None,
        interruption: None,
    }];
    world
}

/// Issue #28, item 4: the empty answer may predate the drain (an idle agent
/// whose long poll took a create just before it), so silence alone never
/// terminates a draining instance; its drained announcement or the drain
/// timeout does.
#[test]
fn a_draining_agent_that_went_silent_has_drained_only_once_it_said_so() {
    let mut world = draining_world(60);
    world
        .observed
        .answers
        .insert(InstanceId::new("i-1"), AgentAnswer::Silent);
    assert!(
        world.plan().terminate.is_empty(),
        "silence after an empty answer"
    );

    world
        .observed
        .registrations
        .get_mut(&InstanceId::new("i-1"))
        .expect("registered")
        .drained = true;
    assert_eq!(
        world.plan().terminate,
        vec![(InstanceId::new("i-1"), TerminateReason::Drained)]
    );

    let mut world = draining_world(50 + 600);
    world
        .observed
        .answers
        .insert(InstanceId::new("i-1"), AgentAnswer::Silent);
    assert_eq!(
        world.plan().terminate,
        vec![(InstanceId::new("i-1"), TerminateReason::DrainTimeout)]
    );
}

/// Issue #28, item 4: a draining agent that hosts no session yet but holds
/// a slot for a create it is starting, or a request it has not yet given
/// back, is not empty.
#[test]
fn a_draining_agent_holding_a_reserved_slot_or_a_request_is_not_drained() {
    let holding = |reserved: bool| {
        let AgentAnswer::State(mut state) = agent("i-1", 0, true) else {
            unreachable!()
        };
        if reserved {
            state.free_slots -= 1;
        } else {
            state.held_requests = 1;
        }
        AgentAnswer::State(state)
    };
    for reserved in [true, false] {
        let mut world = draining_world(60);
        world
            .observed
            .answers
            .insert(InstanceId::new("i-1"), holding(reserved));
        assert!(world.plan().terminate.is_empty(), "reserved: {reserved}");
    }
    let mut world = draining_world(60);
    world
        .observed
        .answers
        .insert(InstanceId::new("i-1"), agent("i-1", 0, true));
    assert_eq!(
        world.plan().terminate,
        vec![(InstanceId::new("i-1"), TerminateReason::Drained)]
    );
}

#[test]
fn a_restarted_operator_judges_silence_from_when_it_started_watching() {
    let mut world = World::new(spec(1, 10), 1000).ready("i-1", 1);
    world.previous.instances = vec![InstanceStatus {
        instance_id: "i-1".into(),
        state: InstanceState::Ready,
        subnet_id: None,
        private_ip: None,
        launch_time: None,
        sessions: 1,
        address: Some("127.0.0.1:1".into()),
        agent_version: None,
        agent_artifact_sha256: None,
        last_seen: Some(Time(at(100))),
        draining_since: None,
        bootstrap: None,
        disruption: None,
        replaces: None,
        interruption: None,
    }];
    world.observed.registrations.clear();
    world
        .observed
        .answers
        .insert(InstanceId::new("i-1"), AgentAnswer::Silent);
    world.observed.watching_since = at(990);
    assert!(world.plan().terminate.is_empty());
    world.observed.now = at(990 + 91);
    assert_eq!(
        world.plan().terminate,
        vec![(InstanceId::new("i-1"), TerminateReason::Unresponsive)]
    );
}

#[test]
fn a_complete_intent_is_cleared() {
    let mut world = World::new(spec(1, 10), 0);
    world.previous.launch_sequence = 1;
    world.previous.intent = Some(LaunchIntent {
        sequence: 1,
        count: 1,
        decided_at: Time(at(0)),
    });
    world
        .observed
        .instances
        .push(instance("i-1", 0, Ec2State::Pending));
    let plan = world.plan();
    assert!(plan.clear_intent);
    assert_eq!(plan.launch, None);
}

#[test]
fn a_registered_answering_agent_is_ready_and_counted() {
    let world = World::new(spec(1, 10), 60).ready("i-1", 1);
    let plan = world.plan();
    assert_eq!(plan.ready, 1);
    assert_eq!(plan.sessions, 1);
    assert_eq!(plan.capacity, 2);
    let status = &plan.instances[0];
    assert_eq!(status.state, InstanceState::Ready);
    assert_eq!(status.address.as_deref(), Some("127.0.0.1:1"));
    assert_eq!(status.last_seen, Some(Time(at(60))));
}

#[test]
fn last_seen_moves_only_after_its_resolution() {
    let mut world = World::new(spec(1, 10), 60).ready("i-1", 0);
    world.advance();
    world.observed.now = at(110);
    assert_eq!(world.advance().instances[0].last_seen, Some(Time(at(60))));
    world.observed.now = at(120);
    assert_eq!(world.advance().instances[0].last_seen, Some(Time(at(120))));
}

#[test]
fn a_silent_agent_is_unknown_not_idle_and_replaced_when_silent_too_long() {
    let mut world = World::new(spec(1, 10), 60).ready("i-1", 1);
    world.advance();
    world
        .observed
        .answers
        .insert(InstanceId::new("i-1"), AgentAnswer::Silent);
    world.observed.now = at(100);
    let plan = world.advance();
    assert_eq!(plan.instances[0].state, InstanceState::Ready);
    assert_eq!(plan.sessions, 1, "last known sessions are kept");
    assert!(plan.terminate.is_empty());
    world.observed.now = at(60 + 91);
    let plan = world.advance();
    assert_eq!(
        plan.terminate,
        vec![(InstanceId::new("i-1"), TerminateReason::Unresponsive)]
    );
    assert!(plan.launch.is_some(), "the replacement is launched");
}

#[test]
fn an_instance_that_never_registers_is_replaced_and_launches_back_off() {
    let mut world = World::new(spec(1, 10), 301);
    world
        .observed
        .instances
        .push(instance("i-1", 0, Ec2State::Running));
    let plan = world.advance();
    assert_eq!(
        plan.terminate,
        vec![(InstanceId::new("i-1"), TerminateReason::NeverRegistered)]
    );
    assert_eq!(plan.boot_failures, 1);
    assert_eq!(plan.backoff_until, Some(at(301 + 30)));
    assert!(plan.backed_off, "the replacement waits for the back-off");
    assert_eq!(plan.launch, None);

    // After the back-off: launched again; a second failure doubles it.
    world.observed.instances.clear();
    world.observed.now = at(332);
    assert!(world.advance().launch.is_some());
    world.observed.instances = vec![instance("i-2", 332, Ec2State::Running)];
    world.observed.now = at(332 + 301);
    let plan = world.advance();
    assert_eq!(plan.boot_failures, 2);
    assert_eq!(plan.backoff_until, Some(at(332 + 301 + 60)));
}

#[test]
fn a_registration_resets_the_back_off() {
    let mut world = World::new(spec(1, 10), 60).ready("i-1", 0);
    world.previous.boot_failures = 3;
    world.previous.backoff_until = Some(at(1000));
    world.previous.instances = vec![InstanceStatus {
        instance_id: "i-1".into(),
        state: InstanceState::Bootstrapping,
        subnet_id: None,
        private_ip: None,
        launch_time: None,
        sessions: 0,
        address: None,
        agent_version: None,
        agent_artifact_sha256: None,
        last_seen: None,
        draining_since: None,
        bootstrap: None,
        disruption: None,
        replaces: None,
        interruption: None,
    }];
    let plan = world.plan();
    assert_eq!(plan.boot_failures, 0);
    assert_eq!(plan.backoff_until, None);
}

#[test]
fn launches_never_exceed_max_instances() {
    let mut world = World::new(spec(1, 3), 60).ready("i-1", 2).ready("i-2", 2);
    world.observed.depth.visible = 40;
    let plan = world.plan();
    assert_eq!(plan.launch.map(|l| l.count), Some(1));
}

#[test]
fn a_draining_instance_with_a_session_stays_until_it_ends_or_the_timeout() {
    let mut world = World::new(spec(0, 10), 60).ready("i-1", 1);
    world.previous.instances = vec![InstanceStatus {
        instance_id: "i-1".into(),
        state: InstanceState::Draining,
        subnet_id: None,
        private_ip: None,
        launch_time: None,
        sessions: 1,
        address: Some("127.0.0.1:1".into()),
        agent_version: None,
        agent_artifact_sha256: None,
        last_seen: None,
        draining_since: Some(Time(at(50))),
        bootstrap: None,
        disruption: None,
        replaces: None,
        interruption: None,
    }];
    world
        .observed
        .answers
        .insert(InstanceId::new("i-1"), agent("i-1", 1, true));
    let plan = world.advance();
    assert!(plan.terminate.is_empty(), "{:?}", plan.terminate);
    assert_eq!(plan.draining, 1);

    world.observed.now = at(50 + 600);
    let plan = world.advance();
    assert_eq!(
        plan.terminate,
        vec![(InstanceId::new("i-1"), TerminateReason::DrainTimeout)]
    );
}

#[test]
fn a_draining_instance_whose_agent_is_silent_is_not_terminated_as_empty() {
    let mut world = World::new(spec(0, 10), 60).ready("i-1", 0);
    world.previous.instances = vec![InstanceStatus {
        instance_id: "i-1".into(),
        state: InstanceState::Draining,
        subnet_id: None,
        private_ip: None,
        launch_time: None,
        sessions: 1,
        address: Some("127.0.0.1:1".into()),
        agent_version: None,
        agent_artifact_sha256: None,
        last_seen: Some(Time(at(55))),
        draining_since: Some(Time(at(50))),
        bootstrap: None,
        disruption: None,
        replaces: None,
        interruption: None,
    }];
    world
        .observed
        .answers
        .insert(InstanceId::new("i-1"), AgentAnswer::Silent);
    assert!(world.plan().terminate.is_empty());
    world
        .observed
        .answers
        .insert(InstanceId::new("i-1"), agent("i-1", 0, true));
    assert_eq!(
        world.plan().terminate,
        vec![(InstanceId::new("i-1"), TerminateReason::Drained)]
    );
}

#[test]
fn a_draining_agent_that_said_it_drained_as_it_stopped_is_terminated() {
    // Its last session ended and it exited between two looks: its last
    // announcement is the only word of it.
    let mut world = World::new(spec(0, 10), 60).ready("i-1", 0);
    world.previous.instances = vec![InstanceStatus {
        instance_id: "i-1".into(),
        state: InstanceState::Draining,
        subnet_id: None,
        private_ip: None,
        launch_time: None,
        sessions: 1,
        address: Some("127.0.0.1:1".into()),
        agent_version: None,
        agent_artifact_sha256: None,
        last_seen: Some(Time(at(55))),
        draining_since: Some(Time(at(50))),
        bootstrap: None,
        disruption: None,
        replaces: None,
        interruption: None,
    }];
    world
        .observed
        .answers
        .insert(InstanceId::new("i-1"), AgentAnswer::Silent);
    let mut drained = registration("127.0.0.1:1", 58);
    drained.drained = true;
    world
        .observed
        .registrations
        .insert(InstanceId::new("i-1"), drained);
    assert_eq!(
        world.plan().terminate,
        vec![(InstanceId::new("i-1"), TerminateReason::Drained)]
    );
}

#[test]
fn an_instance_stopped_outside_is_replaced() {
    let mut world = World::new(spec(1, 10), 60);
    world
        .observed
        .instances
        .push(instance("i-1", 0, Ec2State::Stopped));
    let plan = world.plan();
    assert_eq!(
        plan.terminate,
        vec![(InstanceId::new("i-1"), TerminateReason::StoppedOutside)]
    );
    assert!(plan.launch.is_some());
}

#[test]
fn a_paused_fleet_launches_and_retires_nothing() {
    let mut spec = spec(3, 10);
    spec.paused = true;
    let mut world = World::new(spec, 400).ready("i-1", 0);
    world
        .observed
        .instances
        .push(instance("i-2", 0, Ec2State::Running));
    world.previous.intent = Some(LaunchIntent {
        sequence: 1,
        count: 3,
        decided_at: Time(at(0)),
    });
    let plan = world.plan();
    assert_eq!(plan.launch, None, "not even an unfinished launch");
    assert!(
        plan.drain.is_empty() && plan.terminate.is_empty(),
        "not even an instance past its ready timeout: {:?}",
        plan.terminate
    );
}

#[test]
fn no_scale_in_right_after_taking_over() {
    let world = World::new(spec(0, 10), 600).ready("i-1", 0).ready("i-2", 0);
    let plan = world.plan();
    assert!(plan.drain.is_empty(), "{:?}", plan.decision);
}

#[test]
fn idle_instances_beyond_the_minimum_are_drained_after_the_window() {
    let mut world = World::new(spec(1, 10), 600).ready("i-1", 0).ready("i-2", 0);
    let plan = plan_after_the_window(&mut world, 1);
    assert_eq!(plan.drain.len(), 1, "{:?}", plan.decision);
    let drained = &plan.drain[0].instance;
    let status = plan
        .instances
        .iter()
        .find(|s| s.instance_id == drained.as_str())
        .unwrap();
    assert_eq!(status.state, InstanceState::Draining);
    assert!(status.draining_since.is_some());
}

#[test]
fn a_request_in_flight_is_counted_once_not_as_well_as_its_reserved_slot() {
    let mut world = World::new(spec(0, 10), 60).ready("i-1", 1).ready("i-2", 1);
    for id in ["i-1", "i-2"] {
        if let Some(AgentAnswer::State(state)) =
            world.observed.answers.get_mut(&InstanceId::new(id))
        {
            // One session live, one slot reserved for a request being
            // started, whose message the agent holds.
            state.free_slots = 0;
            state.held_requests = 1;
        }
    }
    world.observed.depth.in_flight = 2;
    let plan = world.plan();
    assert_eq!(plan.launch, None, "{}", plan.decision.reason);
    assert_eq!(plan.sessions, 2, "status reports live sessions");
}

/// The plan of `world` once the policy has watched it for longer than its
/// scale-down window (no hold after taking over), as the cluster sees it
/// `after` seconds later.
fn plan_after_the_window(world: &mut World, after: u64) -> Plan {
    let config = PolicyConfig::from_spec(&world.spec);
    let (_, memory) = plan(
        &world.spec,
        &world.previous,
        &world.observed,
        None,
        &Rules::default(),
    );
    world.observed.now =
        world.observed.now + config.scale_down_stabilization + Duration::from_secs(after);
    plan(
        &world.spec,
        &world.previous,
        &world.observed,
        Some(&memory),
        &Rules::default(),
    )
    .0
}

/// An agent whose registration the operator has not heard yet, on an
/// instance launched a moment ago: the operator sees only a booting
/// instance.
fn unheard(mut world: World, id: &str) -> World {
    world
        .observed
        .instances
        .push(instance(id, 590, Ec2State::Running));
    world
}

#[test]
fn requests_an_unheard_agent_holds_are_demand_and_its_instance_is_not_cancelled() {
    // Two full agents that hold no message (their sessions are started and
    // their requests deleted), and one the operator has not heard from that
    // took the last two requests: the queue shows them in flight.
    let world = World::new(spec(0, 10), 600).ready("i-1", 2).ready("i-2", 2);
    let mut world = unheard(world, "i-3");
    world.observed.depth.in_flight = 2;
    let plan = plan_after_the_window(&mut world, 1);
    assert!(
        plan.terminate.is_empty(),
        "{:?}: {}",
        plan.terminate,
        plan.decision.reason
    );
    assert!(
        plan.decision.reason.starts_with("demand 6 "),
        "{}",
        plan.decision.reason
    );
}

#[test]
fn a_booting_instance_that_browser_sessions_name_is_not_cancelled() {
    // The requests of the unheard agent are started and deleted: only the
    // BrowserSessions' status says where they run.
    let world = World::new(spec(0, 10), 600).ready("i-1", 2).ready("i-2", 2);
    let mut world = unheard(world, "i-3");
    world
        .observed
        .session_hosts
        .insert(InstanceId::new("i-3"), 2);
    let plan = plan_after_the_window(&mut world, 1);
    assert!(
        plan.terminate.is_empty(),
        "{:?}: {}",
        plan.terminate,
        plan.decision.reason
    );
    // Without them nothing says it serves, yet it runs: its agent may have
    // taken requests whose sessions no status names yet (their Ready
    // replies unread). It is not cancelled either.
    world.observed.session_hosts.clear();
    world.observed.now = at(600);
    let plan = plan_after_the_window(&mut world, 1);
    assert!(
        plan.terminate.is_empty(),
        "{:?}: {}",
        plan.terminate,
        plan.decision.reason
    );
    // One EC2 has not started runs no agent: it is cancelled as no longer
    // needed.
    world.observed.instances.last_mut().expect("i-3").state = Ec2State::Pending;
    world.observed.now = at(600);
    let plan = plan_after_the_window(&mut world, 1);
    assert_eq!(
        plan.terminate,
        vec![(InstanceId::new("i-3"), TerminateReason::NotNeeded)],
        "{}",
        plan.decision.reason
    );
}

// Drift and lifetime (`disruption`).

const CURRENT: &str = "c0ffee0000000001";
const OLD: &str = "c0ffee0000000000";

/// A fleet of `min` to `max` whose instances are launched with [`CURRENT`]
/// now, replacing `budget` at once.
fn drifting(min: i32, max: i32, budget: &str, now: i64) -> World {
    let mut spec = spec(min, max);
    spec.disruption.budget = budget.into();
    let mut world = World::new(spec, now);
    world.observed.launch_hash = Some(LaunchHash::from_tag(CURRENT));
    world
}

impl World {
    /// Tags instance `id` with launch hash `hash`.
    fn hashed(mut self, id: &str, hash: &str) -> Self {
        let found = self
            .observed
            .instances
            .iter_mut()
            .find(|i| i.id.as_str() == id);
        found
            .expect("listed")
            .tags
            .insert(LAUNCH_HASH_TAG.to_owned(), hash.to_owned());
        self
    }

    /// A replacement `id` of `original`, launched at `launched`, as status
    /// records it after the launch, booting or (`registered`) ready.
    fn replacement(mut self, id: &str, original: &str, launched: i64, registered: bool) -> Self {
        let mut listed = instance(id, launched, Ec2State::Running);
        listed
            .tags
            .insert(LAUNCH_HASH_TAG.to_owned(), CURRENT.to_owned());
        self.observed.instances.push(listed);
        self.previous.instances.push(InstanceStatus {
            instance_id: id.into(),
            state: InstanceState::Pending,
            subnet_id: None,
            private_ip: None,
            launch_time: Some(Time(at(launched))),
            sessions: 0,
            address: None,
            agent_version: None,
            agent_artifact_sha256: None,
            last_seen: None,
            draining_since: None,
            bootstrap: None,
            disruption: None,
            replaces: Some(original.into()),
            interruption: None,
        });
        if registered {
            self.observed
                .registrations
                .insert(InstanceId::new(id), registration("127.0.0.1:2", launched));
            self.observed
                .answers
                .insert(InstanceId::new(id), agent(id, 0, false));
        }
        self
    }

    fn status_of(&self, plan: &Plan, id: &str) -> InstanceStatus {
        let found = plan.instances.iter().find(|s| s.instance_id == id);
        found.cloned().unwrap_or_else(|| panic!("{id} in status"))
    }
}

fn waiting_reason(plan: &Plan) -> Option<&str> {
    plan.replacement_waiting.as_ref().map(|w| w.reason.as_str())
}

#[test]
fn an_instance_with_another_launch_hash_is_drifted_and_one_without_the_tag_is_not() {
    let world = drifting(2, 4, "1", 60)
        .ready("i-1", 0)
        .hashed("i-1", OLD)
        .ready("i-2", 0)
        .ready("i-3", 0)
        .hashed("i-3", CURRENT);
    let plan = world.plan();
    assert_eq!(
        world.status_of(&plan, "i-1").disruption,
        Some(DisruptionReason::Drifted)
    );
    assert_eq!(world.status_of(&plan, "i-2").disruption, None, "no tag");
    assert_eq!(world.status_of(&plan, "i-3").disruption, None);
    assert_eq!((plan.drifted, plan.expired), (1, 0));
}

#[test]
fn an_instance_type_or_subnet_the_fleet_no_longer_lists_is_drift() {
    let mut world = drifting(2, 4, "1", 60).ready("i-1", 0).ready("i-2", 0);
    world.observed.instances[0].instance_type = Some("m5.large".into());
    world.observed.instances[1].subnet_id = Some("subnet-89abcdef".into());
    let plan = world.plan();
    assert_eq!(plan.drifted, 2);
}

#[test]
fn drifted_instances_get_a_replacement_first_as_many_as_the_budget_allows() {
    let world = drifting(2, 2, "1", 60)
        .ready("i-1", 1)
        .hashed("i-1", OLD)
        .ready("i-2", 0)
        .hashed("i-2", OLD);
    let plan = world.plan();
    // Above maxInstances by the budget: replacement first.
    assert_eq!(plan.launch.map(|l| l.count), Some(1));
    assert_eq!(plan.replacing, vec![InstanceId::new("i-1")]);
    assert!(plan.drain.is_empty() && plan.terminate.is_empty());
    assert_eq!(plan.decision.desired, 2, "the fleet's size is unchanged");
    assert_eq!(waiting_reason(&plan), Some("BudgetExhausted"));
}

#[test]
fn a_percentage_budget_replaces_its_share_of_the_fleet_at_once() {
    let mut world = drifting(5, 5, "20%", 60);
    for n in 1..=5 {
        let id = format!("i-{n}");
        world = world.ready(&id, 0).hashed(&id, OLD);
    }
    let plan = world.plan();
    assert_eq!(
        plan.replacing,
        vec![InstanceId::new("i-1")],
        "20% of 5 is one"
    );
    world.spec.disruption.budget = "21%".into();
    assert_eq!(world.plan().replacing.len(), 2, "rounded up");
}

#[test]
fn a_replacement_stands_in_until_ready_then_its_original_drains() {
    let world = drifting(2, 2, "1", 60)
        .ready("i-1", 1)
        .hashed("i-1", OLD)
        .ready("i-2", 0)
        .hashed("i-2", OLD)
        .replacement("i-3", "i-1", 50, false);
    let plan = world.plan();
    assert_eq!(plan.launch, None, "one replacement at a time");
    assert!(plan.drain.is_empty() && plan.terminate.is_empty());
    assert_eq!(waiting_reason(&plan), Some("ReplacementNotReady"));
    assert_eq!(
        world.status_of(&plan, "i-3").replaces.as_deref(),
        Some("i-1")
    );
    assert_eq!(plan.decision.desired, 2, "{}", plan.decision.reason);

    let world = drifting(2, 2, "1", 60)
        .ready("i-1", 1)
        .hashed("i-1", OLD)
        .ready("i-2", 0)
        .hashed("i-2", OLD)
        .replacement("i-3", "i-1", 50, true);
    let plan = world.plan();
    assert_eq!(
        plan.drain,
        vec![Drain {
            instance: InstanceId::new("i-1"),
            address: "127.0.0.1:1".into(),
            why: DrainReason::Replaced {
                by: InstanceId::new("i-3"),
                because: DisruptionReason::Drifted
            },
        }]
    );
    assert_eq!(world.status_of(&plan, "i-1").state, InstanceState::Draining);
    assert_eq!(
        plan.launch, None,
        "i-1 drains: its replacement is in progress"
    );
    assert_eq!(waiting_reason(&plan), Some("BudgetExhausted"));
}

#[test]
fn the_policy_never_cancels_a_replacement_standing_in() {
    // The fleet needs one instance and has two: the policy retires what
    // is idle, and sees the original, not its booting replacement.
    let mut world = drifting(1, 4, "1", 600)
        .ready("i-1", 1)
        .hashed("i-1", OLD)
        .ready("i-2", 0)
        .replacement("i-3", "i-1", 590, false);
    let plan = plan_after_the_window(&mut world, 1);
    assert!(
        !plan.terminate.iter().any(|(i, _)| i.as_str() == "i-3"),
        "{:?}: {}",
        plan.terminate,
        plan.decision.reason
    );
}

#[test]
fn an_original_stays_while_the_other_ready_instances_cannot_hold_the_demand() {
    let mut world = drifting(1, 2, "1", 60)
        .ready("i-1", 2)
        .hashed("i-1", OLD)
        .replacement("i-3", "i-1", 50, true);
    world.observed.depth.visible = 1;
    let plan = world.plan();
    assert!(plan.drain.is_empty(), "{:?}", plan.drain);
    assert_eq!(waiting_reason(&plan), Some("CapacityInUse"));
    world.observed.depth.visible = 0;
    assert_eq!(world.plan().drain.len(), 1, "two sessions fit on i-3");
}

#[test]
fn an_instance_older_than_expire_after_is_replaced() {
    let mut world = drifting(1, 1, "1", 3599)
        .ready("i-1", 0)
        .hashed("i-1", CURRENT);
    world.spec.disruption.expire_after = Some("1h".into());
    assert_eq!(world.plan().expired, 0);
    world.observed.now = at(3600);
    let plan = world.plan();
    assert_eq!(
        world.status_of(&plan, "i-1").disruption,
        Some(DisruptionReason::Expired)
    );
    assert_eq!(plan.expired, 1);
    assert_eq!(plan.replacing, vec![InstanceId::new("i-1")]);
}

#[test]
fn a_zero_budget_replaces_nothing_and_says_so() {
    let world = drifting(1, 2, "0", 60).ready("i-1", 0).hashed("i-1", OLD);
    let plan = world.plan();
    assert_eq!(plan.launch, None);
    assert_eq!(plan.drifted, 1);
    assert_eq!(waiting_reason(&plan), Some("BudgetZero"));
}

#[test]
fn no_replacement_beyond_max_instances_plus_the_budget() {
    // i-2 is draining (for scale-in) and still counts towards the ceiling.
    let mut world = drifting(1, 1, "1", 60)
        .ready("i-1", 0)
        .hashed("i-1", OLD)
        .ready("i-2", 1);
    world
        .observed
        .answers
        .insert(InstanceId::new("i-2"), agent("i-2", 1, true));
    let plan = world.plan();
    assert_eq!(plan.launch, None, "{:?}", plan.launch);
    assert_eq!(waiting_reason(&plan), Some("InstanceLimit"));
}

#[test]
fn replacements_wait_while_launches_back_off() {
    let mut world = drifting(1, 2, "1", 60).ready("i-1", 0).hashed("i-1", OLD);
    world.advance();
    world.previous.backoff_until = Some(at(100));
    let plan = world.plan();
    assert_eq!(plan.launch, None);
    assert_eq!(waiting_reason(&plan), Some("LaunchesHeld"));
}

#[test]
fn a_paused_fleet_replaces_nothing() {
    let mut world = drifting(1, 2, "1", 60).ready("i-1", 0).hashed("i-1", OLD);
    world.spec.paused = true;
    let plan = world.plan();
    assert_eq!((plan.launch, plan.drifted), (None, 1));
    assert!(plan.drain.is_empty() && plan.replacement_waiting.is_none());
}

#[test]
fn a_replacement_forgets_its_original_once_that_one_is_gone() {
    let world = drifting(1, 2, "1", 60).replacement("i-3", "i-1", 50, true);
    let plan = world.plan();
    assert_eq!(world.status_of(&plan, "i-3").replaces, None);
}

#[test]
fn a_spot_notice_drains_its_instance_and_launches_a_replacement_beyond_a_full_fleet() {
    // A full fleet (maxInstances 2) whose busy instance gets EC2's notice.
    let mut world = World::new(spec(2, 2), 100).ready("i-1", 1).ready("i-2", 1);
    if let Some(AgentAnswer::State(state)) = world.observed.answers.get_mut(&InstanceId::new("i-1"))
    {
        // What its agent reports besides `draining`, which it also sets.
        state.interruption = Some(crate::protocol::InterruptionNotice {
            kind: crate::protocol::InterruptionKind::SpotInterruption,
            action: Some("terminate".into()),
            time: at(220),
        });
    }
    let plan = world.plan();
    let noticed = plan
        .instances
        .iter()
        .find(|i| i.instance_id == "i-1")
        .expect("listed");
    assert_eq!(noticed.state, InstanceState::Draining);
    let interruption = noticed.interruption.as_ref().expect("shown");
    assert_eq!(
        interruption.kind,
        crate::api::fleet::InterruptionKind::SpotInterruption
    );
    assert_eq!(interruption.time, Time(at(220)));
    assert!(plan.terminate.is_empty(), "its session still runs");
    assert_eq!(
        plan.launch.map(|l| l.count),
        Some(1),
        "a replacement, though the fleet is at maxInstances"
    );
    assert_eq!(plan.current, 2, "status still counts the instance");
}
