//! Drift and lifetime end to end (issue #22 item 4): a fleet whose image
//! changes, or whose instances outlive `expireAfter`, has its instances
//! replaced — replacement first, within the budget, never cutting a
//! session and never leaving less capacity than the sessions use.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use browserfleet::api::BrowserFleetStatus;
use browserfleet::api::fleet::InstanceState;
use browserfleet::api::session::SessionPhase;
use serde_json::json;
use testkit::agent_world::{Cdp, evaluate_in_new_page, eventually};
use testkit::launch_world::another_image;
use testkit::operator_world::{OperatorWorld, WAIT, test_settings};

fn listed(status: &BrowserFleetStatus) -> BTreeSet<String> {
    status
        .instances
        .iter()
        .filter(|i| i.state != InstanceState::Terminating)
        .map(|i| i.instance_id.clone())
        .collect()
}

/// Replacements whose original is still there: instances being replaced.
fn being_replaced(status: &BrowserFleetStatus) -> usize {
    let present = listed(status);
    status
        .instances
        .iter()
        .filter(|i| i.state != InstanceState::Terminating)
        .filter(|i| i.replaces.as_ref().is_some_and(|o| present.contains(o)))
        .count()
}

/// What the issue promises at every moment of a replacement with budget 1
/// and `max` instances: at most one instance being replaced, at most one
/// above `max`, and ready slots for every live session.
fn assert_within_the_budget(status: &BrowserFleetStatus, max: i32) {
    assert!(being_replaced(status) <= 1, "{status:#?}");
    assert!(status.current_instances <= max + 1, "{status:#?}");
    let serving = status
        .instances
        .iter()
        .filter(|i| i.state == InstanceState::Ready)
        .count();
    assert!(
        i32::try_from(serving).unwrap() * 2 >= status.active_sessions,
        "{status:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_image_replaces_instances_within_the_budget_without_cutting_a_session() {
    let world = OperatorWorld::new("drift").await;
    let _operator = world.start_operator(test_settings(), None).await;
    let nodes = world.start_nodes(|_| {});
    let mut manifest = world.fleet(2, 2);
    manifest["spec"]["disruption"] = json!({"budget": "1"});
    world.apply(&manifest).await;
    let fleet = world
        .wait_for("two ready instances", |f| {
            f.status.as_ref().is_some_and(|s| s.ready_instances == 2)
        })
        .await;
    let originals = listed(fleet.status.as_ref().unwrap());
    let first_hash = fleet.status.unwrap().launch_hash.expect("launch hash");

    // A live session with a CDP client attached.
    world.apply_session(&world.session("held", json!({}))).await;
    let session = world.wait_for_phase("held", SessionPhase::Ready).await;
    let status = session.status.clone().unwrap();
    let host = status.instance_id.clone().expect("hosting instance");
    let token = world.session_token(&session).await;
    let url = format!(
        "{}?token={token}",
        status.endpoints.expect("endpoints").web_socket_debugger_url
    );
    let mut cdp = Cdp::connect(&url).await.expect("gateway admits the token");
    assert_eq!(evaluate_in_new_page(&mut cdp, "1 + 1").await, json!(2));

    let image = another_image(&world.aws, &world.launch.image_id).await;
    manifest["spec"]["instance"]["image"]["imageId"] = json!(image.as_str());
    world.apply(&manifest).await;

    // Replacements come one at a time until the host drains: it keeps its
    // session (a replaced instance is drained, never terminated with one).
    let saw_waiting = Cell::new(false);
    eventually("the session's host drains", WAIT, || async {
        let status = world.get().await.status.unwrap_or_default();
        assert_within_the_budget(&status, 2);
        saw_waiting.set(saw_waiting.get() || status.replacement_waiting.is_some());
        status
            .instances
            .iter()
            .any(|i| i.instance_id == host && i.state == InstanceState::Draining)
    })
    .await;
    let drifted = world.get().await.status.unwrap();
    assert_ne!(drifted.launch_hash.as_deref(), Some(first_hash.as_str()));
    assert!(drifted.drifted_instances >= 1, "{drifted:#?}");
    assert_eq!(
        evaluate_in_new_page(&mut cdp, "6 * 7").await,
        json!(42),
        "the session outlives its host's drain"
    );
    assert_eq!(
        testkit::operator_world::phase(&world.sessions().get("held").await.unwrap()),
        SessionPhase::Ready
    );

    // Its session ends: the host goes, and the rest is replaced.
    drop(cdp);
    world.delete_session("held").await;
    world.wait_session_gone("held").await;
    eventually("every instance replaced", WAIT, || async {
        let status = world.get().await.status.unwrap_or_default();
        assert_within_the_budget(&status, 2);
        saw_waiting.set(saw_waiting.get() || status.replacement_waiting.is_some());
        status.drifted_instances == 0
            && status.ready_instances == 2
            && status.current_instances == 2
            && listed(&status).is_disjoint(&originals)
    })
    .await;
    let instances = world.instances().await;
    assert!(
        instances
            .iter()
            .all(|i| i.image_id.as_deref() == Some(image.as_str())),
        "{instances:#?}"
    );
    assert!(
        saw_waiting.get(),
        "status said why the second replacement waited"
    );
    assert!(
        world
            .fleet_event_reasons()
            .await
            .contains(&"ReplacementWaiting".to_owned()),
        "{:?}",
        world.fleet_event_reasons().await
    );
    nodes.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_past_expire_after_is_replaced_the_same_way() {
    let started = Instant::now();
    let world = OperatorWorld::new("expire").await;
    let _operator = world.start_operator(test_settings(), None).await;
    let nodes = world.start_nodes(|_| {});
    let mut manifest = world.fleet(1, 1);
    manifest["spec"]["disruption"] = json!({"budget": "1", "expireAfter": "15s"});
    world.apply(&manifest).await;
    let fleet = world
        .wait_for("one ready instance", |f| {
            f.status.as_ref().is_some_and(|s| s.ready_instances == 1)
        })
        .await;
    let original = listed(fleet.status.as_ref().unwrap());
    assert_eq!(original.len(), 1);

    let saw_expired = Cell::new(false);
    eventually("the expired instance replaced", WAIT, || async {
        let status = world.get().await.status.unwrap_or_default();
        assert_within_the_budget(&status, 1);
        saw_expired.set(saw_expired.get() || status.expired_instances > 0);
        let now = listed(&status);
        status.ready_instances == 1 && now.len() == 1 && now.is_disjoint(&original)
    })
    .await;
    assert!(saw_expired.get(), "status counted the expired instance");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(15),
        "not before it expired: {elapsed:?}"
    );
    nodes.shutdown().await;
}
