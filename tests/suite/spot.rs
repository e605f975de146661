//! Spot notices end to end: the node simulator posts EC2's rebalance
//! recommendation, then its interruption notice, on a node's metadata
//! service, and takes the instance back when the notice says; the agent
//! reads each, takes no more work and tells the operator, which launches a
//! replacement at once — on a full fleet too, since an instance EC2 takes
//! back no longer counts against `maxInstances`; the node's sessions end
//! `Interrupted`, reported by their agent before the instance goes.

use std::time::Duration;

use browserfleet::api::BrowserFleet;
use browserfleet::api::fleet::{InstanceState, InterruptionKind};
use browserfleet::api::session::{SessionEndReason, SessionPhase};
use browserfleet::cloud::InstanceId;
use serde_json::json;

use testkit::agent_world::eventually;
use testkit::operator_world::{OperatorWorld, WAIT, test_settings};

/// How long before the reclaim the notice comes: shorter than EC2's two
/// minutes, and 30 s longer than the agent's end-of-sessions margin (15 s),
/// so that a loaded machine still shows the notice in status while the
/// session runs, and the session ending before its instance.
const WARNING: Duration = Duration::from_secs(45);

/// Whether status shows `id` draining with a notice of `kind`.
fn noticed(fleet: &BrowserFleet, id: &str, kind: InterruptionKind) -> bool {
    fleet.instance_status(id).is_some_and(|i| {
        i.state == InstanceState::Draining
            && i.interruption.as_ref().is_some_and(|n| n.kind == kind)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn spot_notices_stop_intake_launch_a_replacement_and_end_sessions_interrupted() {
    let world = OperatorWorld::new("spot-notice").await;
    let _operator = world.start_operator(test_settings(), None).await;
    let nodes = world.start_nodes(|_| {});
    let mut fleet = world.fleet(1, 2);
    fleet["spec"]["instance"]["capacityType"] = json!("spot");
    // The rebalance drain must not end the session before the interruption
    // does, however long the replacement takes to boot.
    fleet["spec"]["scaling"]["drainTimeoutSeconds"] = json!(600);
    world.apply(&fleet).await;
    world
        .apply_session(&world.session("before", json!({})))
        .await;
    let before = world.wait_for_phase("before", SessionPhase::Ready).await;
    let doomed = before.status.clone().unwrap().instance_id.unwrap();
    assert_eq!(world.instances().await.len(), 1);

    // A rebalance recommendation first: the agent takes no new sessions,
    // status shows it, and a replacement is launched; the session runs on.
    nodes
        .recommend_rebalance(&InstanceId::new(&doomed))
        .expect("a node to warn");
    world
        .wait_for("the recommendation in status", |f| {
            noticed(f, &doomed, InterruptionKind::RebalanceRecommendation)
        })
        .await;
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
    assert_ne!(host, doomed, "the warned node took no new session");

    // Then EC2's interruption notice.
    nodes
        .interrupt(&InstanceId::new(&doomed), WARNING)
        .expect("a node to interrupt");
    let fleet = world
        .wait_for("the interruption in status", |f| {
            noticed(f, &doomed, InterruptionKind::SpotInterruption)
        })
        .await;
    let notice = fleet
        .instance_status(&doomed)
        .and_then(|i| i.interruption.clone())
        .expect("notice");
    assert_eq!(notice.action.as_deref(), Some("terminate"));
    let live = world.sessions().get("before").await.expect("session");
    assert_eq!(
        live.status.map(|s| s.phase),
        Some(SessionPhase::Ready),
        "a notice alone ends nothing"
    );

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

#[tokio::test(flavor = "multi_thread")]
async fn a_full_fleet_replaces_an_interrupted_instance_before_ec2_takes_it() {
    let world = OperatorWorld::new("spot-full").await;
    let _operator = world.start_operator(test_settings(), None).await;
    let nodes = world.start_nodes(|_| {});
    // Full at one instance: only a reclaimed instance's exemption from
    // maxInstances lets its replacement in before it goes.
    let mut fleet = world.fleet(1, 1);
    fleet["spec"]["instance"]["capacityType"] = json!("spot");
    world.apply(&fleet).await;
    world.apply_session(&world.session("only", json!({}))).await;
    let only = world.wait_for_phase("only", SessionPhase::Ready).await;
    let doomed = only.status.clone().unwrap().instance_id.unwrap();

    nodes
        .interrupt(&InstanceId::new(&doomed), WARNING)
        .expect("a node to interrupt");
    world
        .wait_for("the interruption in status", |f| {
            noticed(f, &doomed, InterruptionKind::SpotInterruption)
        })
        .await;
    eventually(
        "a replacement beside the interrupted instance",
        WAIT,
        || async {
            let ids: Vec<String> = world
                .instances()
                .await
                .iter()
                .map(|i| i.id.as_str().to_owned())
                .collect();
            ids.len() == 2 && ids.contains(&doomed)
        },
    )
    .await;
    let ended = world.wait_for_phase("only", SessionPhase::Terminated).await;
    assert_eq!(
        ended.status.and_then(|s| s.reason),
        Some(SessionEndReason::Interrupted)
    );
    // Once EC2 has taken it, the fleet is back at its maximum of one.
    eventually("the interrupted instance gone", WAIT, || async {
        let instances = world.instances().await;
        instances.len() == 1 && instances[0].id.as_str() != doomed
    })
    .await;
    nodes.shutdown().await;
}
