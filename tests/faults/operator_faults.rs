//! The fleet reconciler when AWS fails (through `testkit::fault_proxy`
//! between the SDK and moto): no capacity anywhere, a missing permission and
//! throttling beyond the SDK's retries are reported in `Degraded` with their
//! reason, never crash the operator, and the fleet recovers once they pass.

use browserfleet::api::fleet::CONDITION_DEGRADED;
use kube::ResourceExt;

use browserfleet::cloud::Compute;
use testkit::fault_proxy::{Fault, proxy};
use testkit::operator_world::{OperatorWorld, condition, test_settings};

/// A world whose AWS calls go through the fault proxy.
async fn world(test: &str) -> OperatorWorld {
    // The first endpoint set wins for this binary: the proxy's.
    proxy();
    OperatorWorld::new(test).await
}

/// Waits until the operator has seen the (paused) fleet, so that the faults
/// installed next meet the launch, not the first reconcile's retry; its uid.
async fn paused_and_observed(world: &OperatorWorld) -> String {
    let fleet = world
        .wait_for("the paused fleet observed", |f| {
            f.status.as_ref().is_some_and(|s| s.queues.is_some())
        })
        .await;
    fleet.uid().expect("uid")
}

/// Whether `Degraded` is true with `reason` and a message containing `says`.
fn degraded_with(fleet: &browserfleet::api::BrowserFleet, reason: &str, says: &str) -> bool {
    condition(fleet, CONDITION_DEGRADED).is_some_and(|(s, r)| s == "True" && r == reason)
        && fleet.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == CONDITION_DEGRADED && c.message.contains(says))
        })
}

fn healthy_with(fleet: &browserfleet::api::BrowserFleet, instances: i32) -> bool {
    condition(fleet, CONDITION_DEGRADED).is_some_and(|(s, _)| s == "False")
        && fleet
            .status
            .as_ref()
            .is_some_and(|s| s.current_instances == instances)
}

#[tokio::test(flavor = "multi_thread")]
async fn no_capacity_anywhere_is_reported_and_the_launch_completes_when_capacity_returns() {
    let world = world("capacity").await;
    let operator = world.start_operator(test_settings(), None).await;
    let mut manifest = world.fleet(1, 2);
    // Paused while the fault is installed: the fleet's uid is the needle.
    manifest["spec"]["paused"] = serde_json::json!(true);
    world.apply(&manifest).await;
    let uid = paused_and_observed(&world).await;
    // One type in two subnets, three attempts each (the SDK retries a 500):
    // twelve faults fail two launches.
    let ice = Fault::ec2_error(
        500,
        "InsufficientInstanceCapacity",
        "We currently do not have sufficient capacity.",
    );
    let rule = proxy().inject("RunInstances", &uid, vec![ice; 12]);
    manifest["spec"]["paused"] = serde_json::json!(false);
    world.apply(&manifest).await;

    world
        .wait_for("Degraded: InsufficientCapacity", |f| {
            degraded_with(f, "InsufficientCapacity", "no capacity")
        })
        .await;
    world
        .wait_for("launched once capacity returned", |f| healthy_with(f, 1))
        .await;
    assert!(rule.seen() >= 12);
    assert_eq!(
        world.instances().await.len(),
        1,
        "the retried launch did not double"
    );
    operator.stop().await.expect("graceful stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_permission_names_the_iam_action() {
    let world = world("denied").await;
    let operator = world.start_operator(test_settings(), None).await;
    let mut manifest = world.fleet(1, 2);
    manifest["spec"]["paused"] = serde_json::json!(true);
    world.apply(&manifest).await;
    let uid = paused_and_observed(&world).await;
    proxy().inject(
        "RunInstances",
        &uid,
        vec![Fault::ec2_error(
            403,
            "UnauthorizedOperation",
            "You are not authorized to perform this operation.",
        )],
    );
    manifest["spec"]["paused"] = serde_json::json!(false);
    world.apply(&manifest).await;
    world
        .wait_for("Degraded: AccessDenied naming the action", |f| {
            degraded_with(f, "AccessDenied", "ec2:RunInstances")
        })
        .await;
    world
        .wait_for("recovered once allowed", |f| healthy_with(f, 1))
        .await;
    operator.stop().await.expect("graceful stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_beyond_the_retries_is_a_condition_and_passes() {
    let world = world("throttled").await;
    let operator = world.start_operator(test_settings(), None).await;
    let mut manifest = world.fleet(1, 2);
    manifest["spec"]["paused"] = serde_json::json!(true);
    world.apply(&manifest).await;
    let uid = paused_and_observed(&world).await;
    let throttle = Fault::ec2_error(503, "RequestLimitExceeded", "Request limit exceeded.");
    let rule = proxy().inject("DescribeInstances", &uid, vec![throttle; 6]);
    manifest["spec"]["paused"] = serde_json::json!(false);
    world.apply(&manifest).await;
    world
        .wait_for("Degraded: AwsThrottled", |f| {
            degraded_with(f, "AwsThrottled", "DescribeInstances")
        })
        .await;
    world.wait_for("recovered", |f| healthy_with(f, 1)).await;
    assert!(rule.seen() >= 6);
    operator.stop().await.expect("graceful stop");
}

/// An empty `DescribeInstances` answer: EC2's listing right after
/// `RunInstances`, which may omit the instances just launched (EC2's
/// documented eventual consistency).
fn empty_listing() -> Fault {
    Fault::Respond {
        status: 200,
        content_type: "text/xml;charset=UTF-8",
        body: "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeInstancesResponse \
               xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>fault-proxy</requestId>\
               <reservationSet/></DescribeInstancesResponse>"
            .into(),
    }
}

/// Issue #28, item 3: a fleet deleted while EC2's listing does not show
/// its new instance yet terminates that instance (recorded in its status)
/// before it lets go; the deletion used to trust the empty listing and
/// leave the instance running, with no fleet, queue or finalizer left.
#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_deleted_while_the_listing_lags_terminates_its_new_instance() {
    let world = world("deleted-lagging").await;
    let operator = world.start_operator(test_settings(), None).await;
    world.apply(&world.fleet(1, 2)).await;
    let fleet = world
        .wait_for("the launch recorded", |f| {
            f.status.as_ref().is_some_and(|s| s.instances.len() == 1)
        })
        .await;
    let id = world.fleet_id().await;
    let instance = fleet.status.expect("status").instances[0]
        .instance_id
        .clone();
    let faults = 4;
    let lag = proxy().inject("DescribeInstances", id.uid(), vec![empty_listing(); faults]);
    world.delete().await;
    world
        .wait_fleet_gone(std::time::Duration::from_secs(60))
        .await;
    // The listing shows what EC2 has again once the lag has passed.
    let compute = browserfleet::cloud::Ec2Compute::new(&world.aws);
    let mut listed = Vec::new();
    for _ in 0..=faults {
        if lag.seen() >= faults {
            listed = compute.list_instances(&id).await.expect("listing");
            break;
        }
        let _ = compute.list_instances(&id).await;
    }
    assert!(lag.seen() >= faults, "the lag lasted: {}", lag.seen());
    let running: Vec<_> = listed
        .iter()
        .filter(|i| !matches!(i.state, browserfleet::cloud::Ec2State::ShuttingDown))
        .collect();
    assert!(
        running.is_empty(),
        "{instance} orphaned by the deletion: {running:?}"
    );
    operator.stop().await.expect("graceful stop");
}
