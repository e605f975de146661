//! A batch of BrowserSessions scales a fleet the way a queue burst does.
//! Alone in its test binary: fifty Chromium processes on two cores leave
//! no room for other tests beside them.

use std::time::Duration;

use browserfleet::api::session::SessionPhase;
use kube::ResourceExt;
use serde_json::{Value, json};

use testkit::operator_world::{OperatorWorld, phase, test_settings};

#[tokio::test(flavor = "multi_thread")]
async fn fifty_sessions_scale_a_fleet_from_zero_and_all_become_ready() {
    const SESSIONS: usize = 50;
    let world = OperatorWorld::new("session-batch").await;
    // Fifty browsers starting on two cores keep agents from answering
    // `/v1/state` within its 2 s for a while: the test world's 20 s
    // unresponsive limit (shorter than the agents' 30 s heartbeat) then
    // replaced busy instances and crashed their sessions (seen in CI). The
    // production limit, 90 s, spans three heartbeats.
    let mut settings = test_settings();
    settings.rules.unresponsive_after =
        browserfleet::operator::fleet::plan::Rules::default().unresponsive_after;
    let _operator = world.start_operator(settings, None).await;
    let nodes = world.start_nodes(|options| {
        let (first, last) = testkit::agent_world::port_range(60);
        options.browser_ports = devcluster::nodes::PortPool {
            first,
            last,
            per_node: 10,
        };
    });
    let mut fleet = world.fleet(0, 5);
    fleet["spec"]["capacity"]["sessionsPerInstance"] = json!(10);
    world.apply(&fleet).await;
    world
        .wait_for("queues created", |f| {
            f.status.as_ref().and_then(|s| s.queues.as_ref()).is_some()
        })
        .await;
    assert!(
        world.instances().await.is_empty(),
        "nothing runs at minInstances 0"
    );

    let names: Vec<String> = (0..SESSIONS).map(|n| format!("batch-{n}")).collect();
    let manifests: Vec<Value> = names.iter().map(|n| world.session(n, json!({}))).collect();
    futures::future::join_all(manifests.iter().map(|m| world.apply_session(m))).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        let list = world
            .sessions()
            .list(&Default::default())
            .await
            .expect("list");
        let ready = list
            .items
            .iter()
            .filter(|s| phase(s) == SessionPhase::Ready)
            .count();
        let ended: Vec<_> = list
            .items
            .iter()
            .filter(|s| matches!(phase(s), SessionPhase::Failed | SessionPhase::Terminated))
            .map(|s| (s.name_any(), s.status.clone()))
            .collect();
        assert!(ended.is_empty(), "ended before their test did: {ended:#?}");
        if ready == SESSIONS {
            break;
        }
        let waiting: Vec<_> = list
            .items
            .iter()
            .filter(|s| phase(s) != SessionPhase::Ready)
            .map(|s| (s.name_any(), s.status.clone()))
            .collect();
        assert!(
            tokio::time::Instant::now() < deadline,
            "{ready} of {SESSIONS} Ready; not Ready: {waiting:#?}; fleet {:#?}",
            world.get().await.status
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let instances = world.instances().await.len();
    assert!(
        (5..=5).contains(&instances),
        "{instances} instances for {SESSIONS} sessions of 10 per instance"
    );
    for name in &names {
        world.delete_session(name).await;
    }
    for name in &names {
        world.wait_session_gone(name).await;
    }
    nodes.shutdown().await;
}
