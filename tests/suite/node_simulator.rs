//! The node simulator against moto, the real agent binary and Chromium:
//! instances moto reports running boot real agents after the boot delay,
//! which register loopback addresses and serve sessions; a terminated
//! instance takes its agent and browsers with it; a fleet that never
//! registers gets no agent; a crashed agent comes back and re-adopts.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use browserfleet::cloud::{Compute, Queues};
use browserfleet::operator::agent_client::AgentClient;
use testkit::agent_world::{eventually, processes_with};
use testkit::node_world::{NodeWorld, SLOTS, boot_due, is_running};

/// Long enough for moto, the agent's start and a browser's.
const DEADLINE: Duration = Duration::from_secs(60);

fn client() -> AgentClient {
    AgentClient::new(Duration::from_secs(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_instance_boots_an_agent_that_registers_a_loopback_address() {
    let mut world = NodeWorld::new("nodes-boot").await;
    let fleet = world.fleet("nodes-boot").await;
    world.publish(&fleet).await;
    let boot_delay = Duration::from_secs(2);
    let simulator = world.start(world.options(boot_delay));
    let instance = world.launch(&fleet).await;

    let registered = world.registration(&fleet, &instance.id, DEADLINE).await;
    assert_eq!(registered.fleet, fleet.key());
    let address: SocketAddr = registered.address.parse().expect("host:port");
    assert!(address.ip().is_loopback(), "{address}");
    assert_ne!(address.port(), 0, "the bound port is advertised");
    let agents = simulator.agents();
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert_eq!(agents[0].instance, instance.id);
    assert!(
        agents[0].started_at >= boot_due(&instance, boot_delay),
        "started before launch + boot delay"
    );
    assert!(is_running(agents[0].pid));

    let state = client()
        .state(&registered.address, fleet.token())
        .await
        .expect("the agent answers on its loopback address");
    assert_eq!(state.instance_id, instance.id.as_str());
    assert_eq!(state.fleet, fleet.key());
    assert_eq!(state.slots, u32::from(SLOTS));
    assert!(state.sessions.is_empty());

    let pid = agents[0].pid;
    simulator.shutdown().await;
    assert!(!is_running(pid), "shutdown stops the agent");
    let work = world.work.path().display().to_string();
    assert_eq!(
        processes_with(&work),
        Vec::<u32>::new(),
        "nothing left running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_the_instance_stops_its_agent_and_kills_its_browsers() {
    let mut world = NodeWorld::new("nodes-term").await;
    let fleet = world.fleet("nodes-term").await;
    world.publish(&fleet).await;
    let simulator = world.start(world.options(Duration::from_secs(1)));
    let instance = world.launch(&fleet).await;
    world.registration(&fleet, &instance.id, DEADLINE).await;

    let ready = world.ready_session(&fleet, "s-node-term").await;
    assert_eq!(ready["instanceId"], instance.id.as_str());
    let state_dir = world.state_dir(&instance.id);
    let profile = state_dir.join("profiles").join("tmp").join("s-node-term");
    let browser = format!("--user-data-dir={}", profile.display());
    assert!(
        !processes_with(&browser).is_empty(),
        "the session's browser runs"
    );
    let pid = simulator.agents()[0].pid;

    world
        .compute
        .terminate(std::slice::from_ref(&instance.id))
        .await
        .expect("terminate");
    let marker = state_dir.display().to_string();
    eventually(
        "agent and browsers of the terminated instance gone",
        Duration::from_secs(30),
        || async { !is_running(pid) && processes_with(&marker).is_empty() },
    )
    .await;
    assert!(simulator.agents().is_empty());
    eventually(
        "the terminated instance's disk removed",
        Duration::from_secs(10),
        || async { !state_dir.exists() },
    )
    .await;
    simulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_registering_fleet_gets_no_agent_and_a_missing_configuration_delays_the_boot() {
    let mut world = NodeWorld::new("nodes-silent").await;
    let silent = world.fleet("nodes-silent").await;
    let late = world.fleet("nodes-late").await;
    let loud = world.fleet("nodes-loud").await;
    world.publish(&silent).await;
    world.publish(&loud).await;
    let mut options = world.options(Duration::from_secs(1));
    options.never_register.insert(silent.key());
    let simulator = world.start(options);
    let silent_instance = world.launch(&silent).await;
    let late_instance = world.launch(&late).await;
    let loud_instance = world.launch(&loud).await;

    // Launched last with the same boot delay: once its agent registered, the
    // other two were due for a while.
    world.registration(&loud, &loud_instance.id, DEADLINE).await;
    let running: Vec<_> = simulator.agents().into_iter().map(|a| a.instance).collect();
    assert_eq!(running, vec![loud_instance.id.clone()]);
    let log = |id: &browserfleet::cloud::InstanceId| world.work.path().join(format!("{id}.log"));
    assert!(!log(&silent_instance.id).exists(), "never started");
    assert!(
        !log(&late_instance.id).exists(),
        "not started without its configuration"
    );

    // The configuration arrives: the late instance's agent starts.
    world.publish(&late).await;
    world.registration(&late, &late_instance.id, DEADLINE).await;
    assert!(
        simulator
            .agents()
            .iter()
            .all(|a| a.instance != silent_instance.id)
    );
    assert!(!log(&silent_instance.id).exists(), "still never started");
    let depth = world.sqs.depth(&silent.queues.events).await.expect("depth");
    assert_eq!(depth.visible + depth.in_flight, 0, "no announcement");
    simulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_agent_comes_back_after_the_boot_delay_and_readopts_its_session() {
    let mut world = NodeWorld::new("nodes-crash").await;
    let fleet = world.fleet("nodes-crash").await;
    world.publish(&fleet).await;
    let boot_delay = Duration::from_secs(1);
    let mut options = world.options(boot_delay);
    options.restart_crashed = true;
    let simulator = world.start(options);
    let instance = world.launch(&fleet).await;
    world.registration(&fleet, &instance.id, DEADLINE).await;
    world.ready_session(&fleet, "s-node-crash").await;
    let before = simulator.agents();
    assert_eq!(before.len(), 1);
    let profile = world
        .state_dir(&instance.id)
        .join("profiles")
        .join("tmp")
        .join("s-node-crash");
    let browser = format!("--user-data-dir={}", profile.display());

    let crashed_at = SystemTime::now();
    simulator.crash(&instance.id).await.expect("crash");
    assert!(!is_running(before[0].pid), "the agent is gone");
    assert!(
        !processes_with(&browser).is_empty(),
        "its browser outlives it"
    );

    let registered = world.registration(&fleet, &instance.id, DEADLINE).await;
    let after = simulator.agents();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after[0].pid, before[0].pid, "a new agent");
    assert!(after[0].started_at >= crashed_at + boot_delay);
    let state = client()
        .state(&registered.address, fleet.token())
        .await
        .expect("the new agent answers");
    assert!(
        state
            .sessions
            .iter()
            .any(|s| s.id.as_str() == "s-node-crash"),
        "re-adopted: {state:?}"
    );
    assert!(!processes_with(&browser).is_empty());

    simulator.shutdown().await;
    let work = world.work.path().display().to_string();
    assert_eq!(
        processes_with(&work),
        Vec::<u32>::new(),
        "shutdown kills agents and browsers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_nodes_plays_nodes_until_sigterm_and_leaves_nothing_running() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut world = NodeWorld::new("nodes-cli").await;
    let fleet = world.fleet("nodes-cli").await;
    world.publish(&fleet).await;
    let pool = world.options(Duration::ZERO).browser_ports;
    // The AWS variables testkit::aws() set for this process are inherited.
    let mut cli = tokio::process::Command::new(testkit::tools::dev_binary())
        .args(["nodes", "--boot-delay", "1s", "--poll-interval", "200ms"])
        .args(["--fleet", &fleet.key()])
        .args(["--browser-ports", &format!("{}-{}", pool.first, pool.last)])
        .args(["--ports-per-node", &pool.per_node.to_string()])
        .arg("--work-dir")
        .arg(world.work.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("browserfleet-dev nodes starts");
    let stdout = cli.stdout.take().expect("stdout");
    let line = tokio::time::timeout(DEADLINE, BufReader::new(stdout).lines().next_line())
        .await
        .expect("it reports its start")
        .expect("stdout readable")
        .expect("a line");
    assert!(line.starts_with("simulating nodes in "), "{line}");

    let instance = world.launch(&fleet).await;
    let registered = world.registration(&fleet, &instance.id, DEADLINE).await;
    client()
        .state(&registered.address, fleet.token())
        .await
        .expect("its agent answers");

    let pid = cli.id().expect("pid");
    // SAFETY: a plain kill(2) of the process this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(30), cli.wait())
        .await
        .expect("it exits on SIGTERM")
        .expect("exit status");
    assert!(status.success(), "{status}");
    let work = world.work.path().display().to_string();
    assert_eq!(
        processes_with(&work),
        Vec::<u32>::new(),
        "no agent, no browser"
    );
}
