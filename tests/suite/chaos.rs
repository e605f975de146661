//! Chaos (issue #28): the operator, a process of its own, SIGKILLed at
//! random moments while bursts of requests scale its fleet out and in, on
//! the development API server, moto, the node simulator and Chromium; now
//! and then an agent SIGKILLed too (the simulator starts it again, and it
//! re-adopts its browsers), a browser or one of its renderers. After the run
//! every request has ended exactly once, a served session by its TTL (or as
//! `crashed`, when the chaos killed its browser), except in the two windows
//! an agent kill opens (docs/reliability.md), which are counted and bounded;
//! the fleet never had more instances than `maxInstances`, and deleting it
//! leaves no instance and no process behind.
//!
//! `BROWSERFLEET_CHAOS_KILLS` sets the number of kills (20 here, in
//! `make test`; `make chaos` runs 100) and `BROWSERFLEET_CHAOS_SEED` the
//! seed of the moments and bursts, which the test prints with its figures.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use browserfleet::cloud::compute::Ec2State;
use browserfleet::cloud::queues::queue_name;
use browserfleet::cloud::{Compute, Ec2Compute, FleetId, Queues, Sqs};
use proptest::prelude::Rng;
use proptest::test_runner::{RngAlgorithm, TestRng};
use serde_json::Value;
use testkit::agent_world::{processes_with, receive_batch};
use testkit::operator_world::OperatorWorld;

const MAX_INSTANCES: usize = 4;

fn from_env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the requester heard about one session, in order.
type Heard = BTreeMap<String, Vec<Value>>;

#[tokio::test(flavor = "multi_thread")]
async fn operator_kills_during_bursts_lose_no_request_and_leave_nothing_behind() {
    let kills = from_env("BROWSERFLEET_CHAOS_KILLS", 20);
    let seed = from_env("BROWSERFLEET_CHAOS_SEED", 28);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);

    let world = OperatorWorld::new("chaos").await;
    let nodes = world.start_nodes(|options| options.restart_crashed = true);
    let nodes_dir = world.work.path().join("nodes").display().to_string();
    let kubeconfig = world.work.path().join("kubeconfig");
    std::fs::write(&kubeconfig, world.kubeconfig_text()).expect("kubeconfig");
    let cluster = world.cluster_name();
    let operator_args = ["--cluster-name", cluster.as_str()];
    let (mut operator, _) = world.spawn_operator_process(&kubeconfig, &operator_args);
    let mut manifest = world.fleet(1, MAX_INSTANCES as i32);
    // The shortest visibility timeout a fleet takes: a create whose agent
    // was killed before its delete comes back, and the run ends, that much
    // sooner.
    manifest["spec"]["queue"] = serde_json::json!({"visibilityTimeoutSeconds": 31});
    world.apply(&manifest).await;
    world
        .wait_for("one ready instance", |f| {
            f.status.as_ref().is_some_and(|s| s.ready_instances == 1)
        })
        .await;
    let fleet = world.fleet_id().await;
    let replies_to = world.reply_queue().await;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(sample_instances(
        Ec2Compute::new(&world.aws),
        fleet.clone(),
        stopped.clone(),
    ));
    let heard: Arc<Mutex<Heard>> = Arc::default();
    let listener = tokio::spawn(listen(
        Sqs::new(&world.aws),
        replies_to.clone(),
        heard.clone(),
        stopped,
    ));

    let started = tokio::time::Instant::now();
    let mut sent = Vec::new();
    let mut agents_killed = 0;
    let mut browsers_killed: Vec<String> = Vec::new();
    let mut renderers_killed = 0;
    for kill in 0..kills {
        let burst = rng.next_u32() % 4;
        if burst > 0 {
            let prefix = format!("chaos-{kill}");
            let ttl = 3 + rng.next_u32() % 6;
            world
                .send_requests(&prefix, burst as usize, &replies_to, ttl)
                .await;
            sent.extend((0..burst).map(|n| format!("{prefix}-{n}")));
        }
        let pause = 300 + u64::from(rng.next_u32() % 2700);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        match rng.next_u32() % 10 {
            0 => {
                let agents = nodes.agents();
                if !agents.is_empty() {
                    let agent = &agents[rng.next_u32() as usize % agents.len()];
                    if nodes.crash(&agent.instance).await.is_ok() {
                        agents_killed += 1;
                    }
                }
            }
            1 => {
                if let Some(session) = kill_one(&nodes_dir, Chromium::Browser, &mut rng) {
                    browsers_killed.push(session);
                }
            }
            2 if kill_one(&nodes_dir, Chromium::Renderer, &mut rng).is_some() => {
                renderers_killed += 1;
            }
            _ => {}
        }
        operator.start_kill().expect("SIGKILL the operator");
        let _ = operator.wait().await;
        (operator, _) = world.spawn_operator_process(&kubeconfig, &operator_args);
    }
    let chaos_took = started.elapsed();

    // Every request ends: served (ready, then terminated) or refused. A
    // create whose agent was killed before deleting it comes back after its
    // visibility timeout, so the request queue must be empty too.
    let requests = world.request_queue().await;
    let sqs = Sqs::new(&world.aws);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let open: Vec<(String, Vec<Value>)> = {
            let heard = heard.lock().unwrap();
            sent.iter()
                .filter(|id| !heard.get(*id).is_some_and(|h| has_ended(h)))
                .map(|id| (id.clone(), heard.get(id).cloned().unwrap_or_default()))
                .collect()
        };
        let queued = sqs
            .depth(&requests)
            .await
            .map_or(1, |d| d.visible + d.in_flight + d.delayed);
        if open.is_empty() && queued == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{queued} requests queued, and {} of {} have not ended; what their requesters \
             heard: {open:#?}",
            open.len(),
            sent.len()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop.send(true);
    listener.await.expect("listener");
    let (most, over) = sampler.await.expect("sampler");
    let heard = std::mem::take(&mut *heard.lock().unwrap());

    let mut served = 0;
    let mut refused = 0;
    // The windows docs/reliability.md names, each opened by an agent killed
    // between a reply and the delete of its request: the create comes back
    // and is answered again with the same browser (on the node that took
    // it back), or started a second time (on another node).
    let mut ready_again = 0;
    let mut started_twice = 0;
    for id in &sent {
        let all = heard.get(id).cloned().unwrap_or_default();
        let failures = all.iter().filter(|r| r["type"] == "session.failed").count();
        // What each node said: (ready replies, terminated replies).
        let mut by_node: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for reply in &all {
            let node = by_node
                .entry(reply["instanceId"].as_str().unwrap_or_default())
                .or_default();
            match reply["type"].as_str() {
                Some("session.ready") => node.0 += 1,
                Some("session.terminated") => {
                    node.1 += 1;
                    let reason = reply["reason"].as_str().unwrap_or_default();
                    assert!(
                        reason == "expired"
                            || (reason == "crashed" && browsers_killed.contains(id)),
                        "{id}: a served session ends at its TTL, or crashed when the chaos \
                         killed its browser: {all:#?}"
                    );
                }
                _ => {}
            }
        }
        let nodes: Vec<(usize, usize)> = by_node.values().copied().collect();
        let readies: usize = nodes.iter().map(|n| n.0).sum();
        match (nodes.as_slice(), failures) {
            ([], 1) => refused += 1,
            ([(1, 1)], 0) => served += 1,
            ([(n, 1)], 0) if *n > 1 => ready_again += 1,
            // A browser on each of several nodes, each ended once.
            (several, 0)
                if several.len() > 1 && readies > 0 && several.iter().all(|n| n.1 == 1) =>
            {
                started_twice += 1;
            }
            _ => panic!("{id}: not exactly one outcome: {all:#?}"),
        }
    }
    // Each agent kill cuts at most the replies of its two slots.
    assert!(
        ready_again + started_twice <= 2 * agents_killed,
        "{ready_again} answered again and {started_twice} started twice after {agents_killed} agent kills"
    );
    let strangers: Vec<&String> = heard.keys().filter(|id| !sent.contains(id)).collect();
    assert!(
        strangers.is_empty(),
        "replies for sessions never asked: {strangers:?}"
    );
    let dead_letter = sqs
        .find_queue(&queue_name(&fleet, "requests-dlq"))
        .await
        .expect("find the dead-letter queue")
        .expect("the dead-letter queue");
    let depth = sqs.depth(&dead_letter).await.expect("DLQ depth");
    let dead_lettered = depth.visible + depth.in_flight + depth.delayed;
    assert_eq!(dead_lettered, 0, "nothing dead-lettered");
    assert!(
        over.is_empty(),
        "more than {MAX_INSTANCES} instances at {} samples: {over:?}",
        over.len()
    );

    // Deleting the fleet leaves nothing: no instance, no agent, no browser.
    world.delete().await;
    world.wait_fleet_gone(Duration::from_secs(180)).await;
    let left: Vec<_> = Ec2Compute::new(&world.aws)
        .list_instances(&fleet)
        .await
        .expect("list instances")
        .into_iter()
        .filter(|i| !matches!(i.state, Ec2State::Terminated | Ec2State::ShuttingDown))
        .collect();
    assert!(left.is_empty(), "instances left: {left:#?}");
    testkit::agent_world::eventually(
        "no agent or browser process left",
        Duration::from_secs(30),
        || async { processes_with(&nodes_dir).is_empty() },
    )
    .await;
    let _ = operator.start_kill();
    eprintln!(
        "chaos (seed {seed}): {kills} operator kills, {agents_killed} agents, {} browsers and \
         {renderers_killed} renderers killed in {:.0} s; {} requests: {served} served, \
         {refused} refused, {dead_lettered} dead-lettered, {ready_again} answered ready again \
         (same browser), {started_twice} started twice; at most {most} instances (max {MAX_INSTANCES})",
        browsers_killed.len(),
        chaos_took.as_secs_f64(),
        sent.len()
    );
}

/// Whether a session's replies include its last one.
/// Whether a session's requester heard its last word: a failure, or an end
/// from every instance that said it was ready.
fn has_ended(heard: &[Value]) -> bool {
    let of = |kind: &str, node: &Value| {
        heard
            .iter()
            .any(|r| r["type"] == kind && &r["instanceId"] == node)
    };
    heard.iter().any(|r| r["type"] == "session.failed")
        || (heard.iter().any(|r| r["type"] == "session.terminated")
            && heard
                .iter()
                .filter(|r| r["type"] == "session.ready")
                .all(|r| of("session.terminated", &r["instanceId"])))
}

/// Reads the requester's queue until stopped, keeping every reply by
/// session.
async fn listen(
    sqs: Sqs,
    queue: browserfleet::cloud::QueueUrl,
    heard: Arc<Mutex<Heard>>,
    stopped: tokio::sync::watch::Receiver<bool>,
) {
    while !*stopped.borrow() {
        for message in receive_batch(&sqs, &queue, None).await {
            let reply: Value = serde_json::from_str(&message.body).expect("a reply is JSON");
            sqs.delete(&queue, &message.receipt)
                .await
                .expect("delete a reply");
            let session = reply["sessionId"].as_str().unwrap_or_default().to_owned();
            heard
                .lock()
                .unwrap()
                .entry(session)
                .or_default()
                .push(reply);
        }
    }
}

/// Counts the fleet's pending and running instances every 300 ms until
/// stopped; returns the most seen and the samples above the maximum.
async fn sample_instances(
    compute: Ec2Compute,
    fleet: FleetId,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> (usize, Vec<Vec<String>>) {
    let mut most = 0;
    let mut over = Vec::new();
    while !*stopped.borrow() {
        if let Ok(instances) = compute.list_instances(&fleet).await {
            let live: Vec<String> = instances
                .iter()
                .filter(|i| matches!(i.state, Ec2State::Pending | Ec2State::Running))
                .map(|i| i.id.to_string())
                .collect();
            most = most.max(live.len());
            if live.len() > MAX_INSTANCES {
                over.push(live);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    (most, over)
}

/// Which Chromium process [`kill_one`] kills.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Chromium {
    /// A browser's main process: its session ends as `crashed`.
    Browser,
    /// One of its renderers: the browser lives on.
    Renderer,
}

/// SIGKILLs one Chromium process of the nodes, picked by `rng`; returns
/// the session whose browser it was (its profile is named after it).
fn kill_one(nodes_dir: &str, which: Chromium, rng: &mut TestRng) -> Option<String> {
    let candidates: Vec<(u32, String)> = processes_with(nodes_dir)
        .into_iter()
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            // Chromium's child processes rewrite their command line into one
            // string, separated by spaces.
            let args: Vec<String> = cmdline
                .split(|b| *b == 0 || *b == b' ')
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let kind = args.iter().find_map(|a| a.strip_prefix("--type="));
            let wanted = match which {
                Chromium::Browser => kind.is_none(),
                Chromium::Renderer => kind == Some("renderer"),
            };
            let session = args
                .iter()
                .find_map(|a| a.strip_prefix("--user-data-dir="))?
                .rsplit('/')
                .next()?
                .to_owned();
            (wanted && args.iter().any(|a| a.contains("chrom"))).then_some((pid, session))
        })
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let (pid, session) = candidates[rng.next_u32() as usize % candidates.len()].clone();
    // SAFETY: a plain kill(2) of a browser process this test's nodes started.
    let killed = unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0;
    killed.then_some(session)
}
