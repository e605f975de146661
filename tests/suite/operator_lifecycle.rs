//! The fleet reconciler through an instance's life and the operator's:
//! sessions outlive a fleet's deletion until they end, instances that never
//! register are replaced with back-off and never above the maximum, a
//! paused fleet launches nothing, orphans are swept, and of two operators
//! with leader election one acts and the other takes over when it is killed,
//! without a duplicate launch.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use browserfleet::api::fleet::CONDITION_DEGRADED;
use browserfleet::cloud::{Compute, Ec2Compute, FleetId, LaunchRequest};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::json;

use testkit::agent_world::{eventually, processes_with};
use testkit::operator_world::{OperatorWorld, WAIT, condition, process_reconciled, test_settings};

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_fleet_keeps_an_instance_with_a_live_session_until_the_session_ends() {
    let world = OperatorWorld::new("drain").await;
    let operator = world.start_operator(test_settings(), None).await;
    let nodes = world.start_nodes(|_| {});
    world.apply(&world.fleet(1, 1)).await;
    world
        .wait_for("one ready instance", |f| {
            f.status.as_ref().is_some_and(|s| s.ready_instances == 1)
        })
        .await;
    let id = world.fleet_id().await;
    let replies = world.reply_queue().await;
    world.send_requests("outlives-fleet", 1, &replies, 25).await;
    world
        .wait_for("the session runs", |f| {
            f.status.as_ref().is_some_and(|s| s.active_sessions == 1)
        })
        .await;

    world.delete().await;
    // The instance stays while its session lives (TTL 25 s, drain timeout
    // 60 s): watched until the session's browser is gone. The count is read
    // first, so a browser still there afterwards was there when it was read.
    loop {
        let instances = world.instances().await.len();
        if processes_with("outlives-fleet-0").is_empty() {
            break;
        }
        assert_eq!(instances, 1, "terminated under a live session");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let compute = Ec2Compute::new(&world.aws);
    eventually("terminated once the session ended", WAIT, || {
        let compute = compute.clone();
        let id = id.clone();
        async move {
            compute
                .list_instances(&id)
                .await
                .is_ok_and(|i| i.is_empty())
        }
    })
    .await;
    world.wait_fleet_gone(WAIT).await;
    nodes.shutdown().await;
    operator.stop().await.expect("graceful stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn scale_in_retires_the_idle_instance_and_a_long_session_keeps_running() {
    let world = OperatorWorld::new("scalein").await;
    let operator = world.start_operator(test_settings(), None).await;
    let nodes = world.start_nodes(|_| {});
    world.apply(&world.fleet(1, 2)).await;
    world
        .wait_for("one ready instance", |f| {
            f.status.as_ref().is_some_and(|s| s.ready_instances == 1)
        })
        .await;
    let replies = world.reply_queue().await;
    // Three sessions on two slots per instance: the fleet grows to two.
    world.send_requests("long", 1, &replies, 90).await;
    world.send_requests("short", 2, &replies, 12).await;
    let ready = testkit::operator_world::replies(&world, &replies, "session.ready", 3).await;
    let long = ready
        .iter()
        .find(|r| r["sessionId"] == "long-0")
        .expect("long session ready");
    let host = long["instanceId"].as_str().unwrap().to_owned();
    let url = format!(
        "{}?token={}",
        long["endpoints"]["webSocketDebuggerUrl"].as_str().unwrap(),
        long["token"].as_str().unwrap()
    );

    // The short sessions end; the idle instance goes, the long one's stays.
    let fleet = world
        .wait_for("scaled in to one instance", |f| {
            f.status
                .as_ref()
                .is_some_and(|s| s.current_instances == 1 && s.active_sessions == 1)
        })
        .await;
    let left: Vec<String> = fleet
        .status
        .unwrap()
        .instances
        .iter()
        .map(|i| i.instance_id.clone())
        .collect();
    assert_eq!(
        left,
        vec![host.clone()],
        "the instance hosting the long session stays"
    );
    assert_eq!(
        condition(&world.get().await, CONDITION_DEGRADED).map(|(s, _)| s),
        Some("False".to_owned()),
        "a scale-in is no replacement"
    );
    let mut cdp = testkit::agent_world::Cdp::connect(&url)
        .await
        .expect("the long session still serves");
    assert_eq!(
        testkit::agent_world::evaluate_in_new_page(&mut cdp, "1 + 1").await,
        json!(2)
    );
    nodes.shutdown().await;
    operator.stop().await.expect("graceful stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_that_never_register_are_replaced_with_back_off_and_never_above_max() {
    let world = OperatorWorld::new("never").await;
    let operator = world.start_operator(test_settings(), None).await;
    let key = world.fleet_key();
    let nodes = world.start_nodes(|options| {
        options.never_register = BTreeSet::from([key.clone()]);
    });
    world.apply(&world.fleet(2, 2)).await;
    let id = world.fleet_id().await;

    // Watch the instance count all along: never above maxInstances.
    let most = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let most = most.clone();
        let compute = Ec2Compute::new(&world.aws);
        let id = id.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(instances) = compute.list_instances(&id).await {
                    most.fetch_max(instances.len(), Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let fleet = world
        .wait_for("Degraded by instances failing to register", |f| {
            condition(f, CONDITION_DEGRADED)
                .is_some_and(|(s, r)| s == "True" && r == "InstancesFailingToRegister")
        })
        .await;
    let status = fleet.status.unwrap();
    assert!(status.boot_failures >= 2, "{status:?}");
    assert!(status.launch_backoff_until.is_some());
    world
        .wait_for("replacements launched after the back-off", |f| {
            f.status
                .as_ref()
                .is_some_and(|s| s.launch_sequence >= 2 && s.current_instances == 2)
        })
        .await;
    watcher.abort();
    assert!(
        most.load(Ordering::SeqCst) <= 2,
        "saw {} instances",
        most.load(Ordering::SeqCst)
    );
    nodes.shutdown().await;
    operator.stop().await.expect("graceful stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_fleet_is_observed_and_launches_nothing_until_resumed() {
    let world = OperatorWorld::new("paused").await;
    let operator = world.start_operator(test_settings(), None).await;
    let mut manifest = world.fleet(2, 3);
    manifest["spec"]["paused"] = json!(true);
    world.apply(&manifest).await;
    let fleet = world
        .wait_for("observed", |f| {
            f.status.as_ref().is_some_and(|s| s.queues.is_some())
        })
        .await;
    assert_eq!(fleet.status.unwrap().current_instances, 0);
    operator.reconciled(2).await;
    assert!(
        world.instances().await.is_empty(),
        "a paused fleet launches nothing"
    );
    manifest["spec"]["paused"] = json!(false);
    world.apply(&manifest).await;
    world
        .wait_for("resumed: minimum launched", |f| {
            f.status.as_ref().is_some_and(|s| s.current_instances == 2)
        })
        .await;
    operator.stop().await.expect("graceful stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_of_a_fleet_that_is_gone_are_swept_after_the_grace_period() {
    sweep_orphans("orphan", true).await;
}

/// Issue #28 item 3: without `--cluster-name` (the chart's default) there
/// was no sweep at all. The operator now names its cluster by the uid of
/// the kube-system namespace, tags its instances with it, and sweeps.
#[tokio::test(flavor = "multi_thread")]
async fn without_a_cluster_name_the_kube_system_uid_names_the_cluster_and_orphans_are_swept() {
    sweep_orphans("orphan-unnamed", false).await;
}

/// A fleet's instance tagged with the cluster's name, and an instance of a
/// fleet that is gone terminated after the grace period, while the live
/// fleet's stays; with `named`, the operator is given the cluster's name.
async fn sweep_orphans(test: &str, named: bool) {
    let world = OperatorWorld::new(test).await;
    let mut settings = test_settings();
    settings.orphan_grace = Duration::from_secs(1);
    settings.orphan_sweep = Duration::from_millis(500);
    let cluster = if named {
        world.cluster_name()
    } else {
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> =
            Api::all(world.cluster.client.clone());
        namespaces
            .get("kube-system")
            .await
            .expect("kube-system")
            .metadata
            .uid
            .expect("kube-system's uid")
    };
    let operator = world
        .start_operator_with(
            world.cluster.client.clone(),
            Some(world.cluster.ns.clone()),
            settings,
            None,
            named.then(|| world.cluster_name()),
        )
        .await;
    world.apply(&world.fleet(1, 1)).await;
    world
        .wait_for("the live fleet launched", |f| {
            f.status.as_ref().is_some_and(|s| s.current_instances == 1)
        })
        .await;
    let live = world.instances().await;
    assert_eq!(
        live[0]
            .tags
            .get(browserfleet::cloud::fleet_tags::CLUSTER_TAG),
        Some(&cluster),
        "the cluster's name on its instance"
    );
    // An instance of a fleet that no longer exists in this namespace.
    let ghost = FleetId::new(&world.cluster.ns, "ghost", uuid::Uuid::new_v4().to_string()).unwrap();
    let compute = Ec2Compute::new(&world.aws);
    let launched = compute
        .launch(
            &ghost,
            &browserfleet::cloud::InstanceBlueprint {
                cluster: Some(cluster.clone()),
                ..testkit::launch_world::blueprint(&world.launch)
            },
            LaunchRequest {
                count: 1,
                sequence: 1,
                first_subnet: 0,
            },
        )
        .await
        .expect("ghost instance");
    assert_eq!(launched.instances.len(), 1);
    eventually("the orphan is terminated", WAIT, || {
        let compute = compute.clone();
        let ghost = ghost.clone();
        async move {
            compute
                .list_instances(&ghost)
                .await
                .is_ok_and(|i| i.is_empty())
        }
    })
    .await;
    assert_eq!(
        world.instances().await.len(),
        1,
        "the live fleet's instance stays"
    );
    operator.stop().await.expect("graceful stop");
}

/// `browserfleet operator` as a process with leader election, so that it
/// can be killed, serving its metrics at the address returned.
fn spawn_operator(
    world: &OperatorWorld,
    kubeconfig: &std::path::Path,
    identity: &str,
) -> (tokio::process::Child, String) {
    let ns = world.cluster.ns.clone();
    world.spawn_operator_process(
        kubeconfig,
        &[
            "--leader-election",
            "--lease-namespace",
            &ns,
            "--identity",
            identity,
            "--lease-duration",
            "6s",
        ],
    )
}

async fn holder(world: &OperatorWorld) -> Option<String> {
    let leases: Api<Lease> = world.cluster.api();
    leases
        .get_opt("browserfleet-operator")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

#[tokio::test(flavor = "multi_thread")]
async fn with_leader_election_one_operator_acts_and_a_killed_leader_is_replaced_without_a_duplicate()
 {
    let world = OperatorWorld::new("leader").await;
    let kubeconfig = world.work.path().join("kubeconfig");
    std::fs::write(&kubeconfig, world.kubeconfig_text()).expect("kubeconfig");
    let (mut one, one_address) = spawn_operator(&world, &kubeconfig, "one");
    let (mut two, two_address) = spawn_operator(&world, &kubeconfig, "two");
    world.apply(&world.fleet(1, 6)).await;
    world
        .wait_for("the first launch", |f| {
            f.status.as_ref().is_some_and(|s| s.current_instances == 1)
        })
        .await;
    let leader = holder(&world).await.expect("a leader holds the Lease");

    // Scale out, and kill the leader as soon as it has decided the launch.
    let mut manifest = world.fleet(4, 6);
    manifest["spec"]["capacity"]["minInstances"] = json!(4);
    world.apply(&manifest).await;
    world
        .wait_for("the scale-out decided", |f| {
            f.status.as_ref().is_some_and(|s| s.launch_sequence >= 2)
        })
        .await;
    let (leader_process, survivor, survivor_address) = if leader == "one" {
        (&mut one, "two", &two_address)
    } else {
        (&mut two, "one", &one_address)
    };
    leader_process.start_kill().expect("kill the leader");
    let _ = leader_process.wait().await;
    let killed = tokio::time::Instant::now();

    eventually(
        "the other operator takes the Lease",
        Duration::from_secs(30),
        || async { holder(&world).await.as_deref() == Some(survivor) },
    )
    .await;
    assert!(
        killed.elapsed() < Duration::from_secs(6 + 5),
        "took {:?}",
        killed.elapsed()
    );
    world
        .wait_for("four instances", |f| {
            f.status.as_ref().is_some_and(|s| s.current_instances == 4)
        })
        .await;
    // Two more of the new leader's reconciles, each of which would launch a
    // duplicate if it were going to; then count what EC2 has.
    process_reconciled(survivor_address, 2).await;
    assert_eq!(world.instances().await.len(), 4);
    let _ = one.start_kill();
    let _ = two.start_kill();
}

/// The one instance of a ready single-instance fleet.
async fn ready_single_instance(world: &OperatorWorld) -> String {
    let fleet = world
        .wait_for("one ready instance", |f| {
            f.status
                .as_ref()
                .is_some_and(|s| s.ready_instances == 1 && s.current_instances == 1)
        })
        .await;
    fleet.status.unwrap().instances[0].instance_id.clone()
}

/// Waits for a ready instance other than `gone`.
async fn replaced(world: &OperatorWorld, gone: &str) {
    world
        .wait_for("a ready replacement", |f| {
            f.status.as_ref().is_some_and(|s| {
                s.ready_instances == 1 && s.instances.iter().all(|i| i.instance_id != gone)
            })
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_terminated_outside_the_operator_is_replaced() {
    let world = OperatorWorld::new("outside").await;
    let operator = world.start_operator(test_settings(), None).await;
    let nodes = world.start_nodes(|_| {});
    world.apply(&world.fleet(1, 2)).await;
    let first = ready_single_instance(&world).await;
    Ec2Compute::new(&world.aws)
        .terminate(&[browserfleet::cloud::InstanceId::new(&first)])
        .await
        .expect("terminate outside the operator");
    replaced(&world, &first).await;
    nodes.shutdown().await;
    operator.stop().await.expect("graceful stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_stops_answering_is_replaced() {
    let world = OperatorWorld::new("silent").await;
    let operator = world.start_operator(test_settings(), None).await;
    let nodes = world.start_nodes(|_| {});
    world.apply(&world.fleet(1, 2)).await;
    let first = ready_single_instance(&world).await;
    nodes
        .crash(&browserfleet::cloud::InstanceId::new(&first))
        .await
        .expect("crash the agent");
    // Unknown, not idle, while silent; replaced after `unresponsive_after`.
    replaced(&world, &first).await;
    let compute = Ec2Compute::new(&world.aws);
    let id = world.fleet_id().await;
    eventually("the silent instance is terminated", WAIT, || {
        let compute = compute.clone();
        let id = id.clone();
        let first = first.clone();
        async move {
            compute
                .list_instances(&id)
                .await
                .is_ok_and(|i| i.iter().all(|x| x.id.as_str() != first))
        }
    })
    .await;
    nodes.shutdown().await;
    operator.stop().await.expect("graceful stop");
}

/// A TCP relay to `upstream` (`host:port`) on a loopback port of its own;
/// sending `true` on the returned channel cuts every relayed connection
/// and refuses new ones, as a network partition would.
async fn cuttable_relay(upstream: String) -> (String, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("relay listens");
    let address = listener.local_addr().expect("address").to_string();
    let (cut, _) = tokio::sync::watch::channel(false);
    let mut cut_seen = cut.subscribe();
    let cuts = cut.clone();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = cut_seen.wait_for(|c| *c) => return,
            };
            let Ok((mut client, _)) = accepted else {
                continue;
            };
            let upstream = upstream.clone();
            let mut cut = cuts.subscribe();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = cut.wait_for(|c| *c) => {}
                }
            });
        }
    });
    (address, cut)
}

/// Issue #28, item 6: a leader cut off from the API server stops acting
/// before its Lease can expire, so that the replica that takes the Lease is
/// the only one acting. The lease manager only logged the API errors, and
/// the cut-off leader went on reconciling (and could drain and terminate)
/// from its stale cache.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_cut_off_from_the_api_server_stops_before_another_takes_over() {
    let world = OperatorWorld::new("partition").await;
    let direct = world.kubeconfig_text();
    let server = direct
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("server")
        .to_owned();
    let upstream = server
        .split_once("://")
        .map_or(server.as_str(), |(_, rest)| rest)
        .trim_end_matches('/')
        .to_owned();
    let (relay, cut) = cuttable_relay(upstream.clone()).await;
    let relayed = world.work.path().join("kubeconfig-relayed");
    std::fs::write(&relayed, direct.replace(&upstream, &relay)).expect("kubeconfig");
    let direct_path = world.work.path().join("kubeconfig");
    std::fs::write(&direct_path, &direct).expect("kubeconfig");

    let (mut one, _) = spawn_operator(&world, &relayed, "one");
    eventually("one holds the Lease", Duration::from_secs(30), || async {
        holder(&world).await.as_deref() == Some("one")
    })
    .await;
    let (_two, _) = spawn_operator(&world, &direct_path, "two");
    cut.send_replace(true);
    let cut_at = tokio::time::Instant::now();
    // The Lease lasts 6 s from its last renewal: the cut-off leader stops
    // within that, before the other replica may take it.
    let stopped = tokio::time::timeout(Duration::from_secs(15), one.wait()).await;
    assert!(
        stopped.is_ok(),
        "the cut-off leader was still running {:?} after the cut",
        cut_at.elapsed()
    );
    eventually("two takes the Lease", Duration::from_secs(30), || async {
        holder(&world).await.as_deref() == Some("two")
    })
    .await;
}
