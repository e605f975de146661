//! Spot interruptions end to end: the node simulator posts EC2's notice on
//! a node's metadata service and takes the instance back when the notice
//! says; the agent reads the notice, takes no more work and tells the
//! operator, which launches a replacement at once; the node's sessions end
//! `Interrupted`, reported by their agent before the instance goes.

use std::time::Duration;

use browserfleet::api::BrowserFleet;
use browserfleet::api::fleet::{InstanceState, InstanceStatus, InterruptionKind};
use browserfleet::api::session::{SessionEndReason, SessionPhase};
use browserfleet::cloud::InstanceId;
use serde_json::json;

use testkit::agent_world::eventually;
use testkit::operator_world::{OperatorWorld, WAIT, test_settings};

/// How long before the reclaim the notice comes: shorter than EC2's two
/// minutes, longer than the agent's end-of-sessions margin (15 s) plus its
/// 5 s poll, so that the sessions are seen to end before their instance.
const WARNING: Duration = Duration::from_secs(30);

fn instance<'a>(fleet: &'a BrowserFleet, id: &str) -> Option<&'a InstanceStatus> {
    fleet
        .status
        .as_ref()?
        .instances
        .iter()
        .find(|i| i.instance_id == id)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spot_notice_stops_intake_launches_a_replacement_and_ends_sessions_interrupted() {
    let world = OperatorWorld::new("spot-notice").await;
    let _operator = world.start_operator(test_settings(), None).await;
    let nodes = world.start_nodes(|_| {});
    let mut fleet = world.fleet(1, 2);
    fleet["spec"]["instance"]["capacityType"] = json!("spot");
    world.apply(&fleet).await;
    world
        .apply_session(&world.session("before", json!({})))
        .await;
    let before = world.wait_for_phase("before", SessionPhase::Ready).await;
    let doomed = before.status.clone().unwrap().instance_id.unwrap();
    assert_eq!(world.instances().await.len(), 1);

    nodes
        .interrupt(&InstanceId::new(&doomed), WARNING)
        .expect("a node to interrupt");
    // The agent tells the operator: status shows the notice, the instance
    // takes no new sessions, and a replacement is launched beside it
    // (maxInstances 2 has room for it even if the fleet were full, since
    // the reclaimed instance no longer counts).
    let noticed = world
        .wait_for("the notice in status", |f| {
            instance(f, &doomed).is_some_and(|i| {
                i.state == InstanceState::Draining
                    && i.interruption
                        .as_ref()
                        .is_some_and(|n| n.kind == InterruptionKind::SpotInterruption)
            })
        })
        .await;
    let notice = instance(&noticed, &doomed)
        .and_then(|i| i.interruption.clone())
        .expect("notice");
    assert_eq!(notice.action.as_deref(), Some("terminate"));
    eventually("a replacement launched", WAIT, || async {
        world.instances().await.len() == 2
    })
    .await;

    // A session asked for now starts on the replacement.
    world
        .apply_session(&world.session("after", json!({})))
        .await;
    let after = world.wait_for_phase("after", SessionPhase::Ready).await;
    let host = after.status.clone().unwrap().instance_id.unwrap();
    assert_ne!(host, doomed, "the interrupted node took no new session");

    // The interrupted node's session ends as such, before EC2 takes the
    // instance back.
    let ended = world
        .wait_for_phase("before", SessionPhase::Terminated)
        .await;
    let status = ended.status.clone().unwrap();
    assert_eq!(
        status.reason,
        Some(SessionEndReason::Interrupted),
        "{status:?}"
    );
    let reclaim_at = notice.time.0;
    let finished = status.finished_at.expect("finished").0;
    assert!(
        finished < reclaim_at,
        "{finished} is not before {reclaim_at}"
    );

    // Then EC2 takes it back; the fleet goes on with its replacement.
    eventually("the interrupted instance gone", WAIT, || async {
        world
            .instances()
            .await
            .iter()
            .all(|i| i.id.as_str() != doomed)
    })
    .await;
    let after = world.sessions().get("after").await.expect("session");
    assert_eq!(after.status.map(|s| s.phase), Some(SessionPhase::Ready));
    nodes.shutdown().await;
}
