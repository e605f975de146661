//! The fleet reconciler end to end: a Kubernetes API (the development API
//! server, or a real cluster through `BROWSERFLEET_TEST_KUBECONFIG`), moto,
//! the operator in this process, and the node simulator running a real
//! agent and real Chromium per instance.

use browserfleet::api::fleet::{CONDITION_DEGRADED, CONDITION_READY, InstanceState as Lifecycle};
use browserfleet::cloud::{CallRecorder, Parameters, QueueUrl, Queues, Service, Sqs, Ssm};
use browserfleet::operator::agent_config::parameter_name;
use browserfleet::operator::secrets::secret_name;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::{Value, json};

use testkit::agent_world::{Cdp, evaluate_in_new_page, eventually};
use testkit::operator_world::{OperatorWorld, WAIT, condition, has_condition, test_settings};

fn writes(calls: &CallRecorder) -> Vec<String> {
    calls
        .snapshot()
        .into_iter()
        .filter(|(key, _)| {
            !["Describe", "Get", "List", "Receive"]
                .iter()
                .any(|read| key.operation.starts_with(read))
        })
        .map(|(key, stats)| format!("{}:{} ×{}", key.service, key.operation, stats.count))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_gets_queues_secret_config_and_its_minimum_of_registered_instances() {
    let world = OperatorWorld::new("apply").await;
    let operator = world.start_operator(test_settings(), None).await;
    let nodes = world.start_nodes(|_| {});
    world.apply(&world.fleet(2, 4)).await;

    let fleet = world
        .wait_for("Ready with two registered instances", |f| {
            has_condition(f, CONDITION_READY, "True")
                && f.status.as_ref().is_some_and(|s| s.ready_instances == 2)
        })
        .await;
    assert!(
        fleet
            .metadata
            .finalizers
            .clone()
            .unwrap_or_default()
            .contains(&"browserfleet.io/cleanup".to_owned())
    );
    let status = fleet.status.clone().unwrap();
    assert_eq!(status.desired_instances, 2);
    assert_eq!(status.current_instances, 2);
    assert_eq!(status.session_capacity, 4);
    assert_eq!(status.observed_generation, fleet.metadata.generation);
    assert_eq!(condition(&fleet, CONDITION_DEGRADED).unwrap().0, "False");
    for instance in &status.instances {
        assert_eq!(instance.state, Lifecycle::Ready, "{instance:?}");
        let address = instance.address.as_deref().expect("registered address");
        assert!(
            address.starts_with("127.0.0.1:"),
            "agents advertise loopback: {address}"
        );
    }
    assert_eq!(world.instances().await.len(), 2);

    // Queues with a dead-letter queue, the Secret, the SecureString config.
    let queues = status.queues.clone().unwrap();
    assert!(queues.requests.is_some() && queues.dead_letter.is_some() && queues.events.is_some());
    let secrets: Api<Secret> = world.cluster.api();
    let secret = secrets
        .get(&secret_name(&world.name))
        .await
        .expect("fleet Secret");
    assert_eq!(
        secret.metadata.owner_references.unwrap()[0].uid,
        fleet.metadata.uid.clone().unwrap()
    );
    let token = String::from_utf8(secret.data.unwrap()["fleetToken"].0.clone()).unwrap();
    assert!(token.len() >= 32);
    let parameter = Ssm::new(&world.aws)
        .get_parameter(&parameter_name(&world.cluster.ns, &world.name))
        .await
        .expect("agent config parameter");
    assert!(
        parameter.secure,
        "the agent configuration is a SecureString"
    );
    let config: Value = serde_json::from_str(&parameter.value).unwrap();
    assert_eq!(config["fleetToken"], token.as_str());
    assert_eq!(config["requestQueueUrl"], queues.requests.unwrap().as_str());
    // No secret in status.
    let status_text = serde_json::to_string(&status).unwrap();
    assert!(!status_text.contains(&token));

    // A steady fleet: repeated reconciles write nothing to AWS.
    world.aws.recorder().reset();
    let before = operator.metrics.render();
    eventually("two more reconciles", WAIT, || {
        let metrics = operator.metrics.render();
        let before = before.clone();
        async move { reconciles(&metrics) >= reconciles(&before) + 2 }
    })
    .await;
    assert_eq!(
        writes(world.aws.recorder()),
        Vec::<String>::new(),
        "a steady reconcile writes nothing"
    );
    assert_eq!(world.aws.recorder().count(Service::Ssm, "GetParameter"), 0);

    // Health and metrics.
    let base = format!("http://{}", operator.address);
    assert_eq!(
        testkit::http::call("GET", &format!("{base}/healthz"), None)
            .await
            .0,
        200
    );
    assert_eq!(
        testkit::http::call("GET", &format!("{base}/readyz"), None)
            .await
            .0,
        200
    );
    let (code, metrics) = testkit::http::call("GET", &format!("{base}/metrics"), None).await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("browserfleet_aws_calls_total{"),
        "{metrics}"
    );
    let gauge = format!(
        "browserfleet_operator_fleet_ready_instances{{fleet=\"{}\"}} 2",
        world.fleet_key()
    );
    assert!(metrics.contains(&gauge), "{metrics}");

    nodes.shutdown().await;
    operator.stop().await.expect("graceful stop");
}

fn reconciles(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("browserfleet_operator_reconciles_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_burst_scales_out_is_served_and_idle_scales_back_to_the_minimum() {
    let world = OperatorWorld::new("burst").await;
    let operator = world.start_operator(test_settings(), None).await;
    let nodes = world.start_nodes(|_| {});
    world.apply(&world.fleet(1, 4)).await;
    world
        .wait_for("one ready instance", |f| {
            f.status.as_ref().is_some_and(|s| s.ready_instances == 1)
        })
        .await;

    // Five requests of two sessions per instance: three instances.
    let replies_to = world.reply_queue().await;
    world.send_requests("burst", 5, &replies_to, 120).await;
    let fleet = world
        .wait_for("scaled out to three", |f| {
            f.status.as_ref().is_some_and(|s| s.ready_instances == 3)
        })
        .await;
    assert!(
        fleet.status.unwrap().desired_instances <= 3,
        "no more instances than demand needs"
    );
    let ready = testkit::operator_world::replies(&world, &replies_to, "session.ready", 5).await;
    let instances = world.instances().await;
    assert!(
        instances.len() <= 3,
        "{} instances: {:#?}",
        instances.len(),
        world.get().await.status
    );

    // A CDP round trip through a gateway.
    let session = &ready[0];
    let url = format!(
        "{}?token={}",
        session["endpoints"]["webSocketDebuggerUrl"]
            .as_str()
            .unwrap(),
        session["token"].as_str().unwrap()
    );
    let mut cdp = Cdp::connect(&url).await.expect("gateway admits the token");
    assert_eq!(evaluate_in_new_page(&mut cdp, "6 * 7").await, json!(42));
    drop(cdp);

    // End every session: the fleet goes back to its minimum.
    // The fleet's status names an agent's address on the fleet
    // reconciler's schedule, which may come after the agent's reply.
    let hosts: Vec<&str> = ready
        .iter()
        .map(|s| s["instanceId"].as_str().unwrap())
        .collect();
    let fleet = world
        .wait_for("the hosting instances' addresses", |f| {
            hosts
                .iter()
                .all(|id| f.instance_status(id).is_some_and(|i| i.address.is_some()))
        })
        .await;
    let token = world.fleet_token().await;
    for session in &ready {
        let instance = session["instanceId"].as_str().unwrap();
        let address = fleet
            .instance_status(instance)
            .and_then(|i| i.address.clone())
            .expect("address of the hosting instance");
        let (code, body) = testkit::http::call(
            "DELETE",
            &format!(
                "http://{address}/v1/sessions/{}",
                session["sessionId"].as_str().unwrap()
            ),
            Some(&token),
        )
        .await;
        assert!(code == 200 || code == 202 || code == 204, "{code} {body}");
    }
    world
        .wait_for("back to one instance", |f| {
            f.status
                .as_ref()
                .is_some_and(|s| s.current_instances == 1 && s.ready_instances == 1)
        })
        .await;
    eventually("EC2 has one instance left", WAIT, || async {
        world.instances().await.len() == 1
    })
    .await;

    nodes.shutdown().await;
    operator.stop().await.expect("graceful stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_spec_is_reported_launches_nothing_and_recovers_when_fixed() {
    let world = OperatorWorld::new("invalid").await;
    let operator = world.start_operator(test_settings(), None).await;
    // Valid for the schema, refused by validate(): the CEL rules are the
    // same, so this spec is written past them with a server that has none
    // (1.20) or refused by the CRD (then validate() cannot be reached).
    let mut manifest = world.fleet(1, 2);
    manifest["spec"]["agent"]["browserPortRange"] = json!({"start": 9300, "end": 9300});
    let applied = world
        .fleets()
        .patch(
            &world.name,
            &kube::api::PatchParams::apply("e2e-test").force(),
            &kube::api::Patch::Apply(&manifest),
        )
        .await;
    if applied.is_err() {
        // The CRD refused it (CEL): that is the first line of defence.
        assert!(world.cluster.enforces_cel().await);
        operator.stop().await.expect("graceful stop");
        return;
    }
    let fleet = world
        .wait_for("InvalidSpec", |f| {
            condition(f, CONDITION_READY).is_some_and(|(s, r)| s == "False" && r == "InvalidSpec")
        })
        .await;
    assert!(
        fleet
            .status
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.message.contains("browserPortRange"))
    );
    // The reconcile that refused the spec returned before the launch step
    // and waits for the spec to change; nothing else launches.
    assert!(
        world.instances().await.is_empty(),
        "nothing launched for an invalid spec"
    );

    world.apply(&world.fleet(1, 2)).await;
    world
        .wait_for("recovered: an instance launched", |f| {
            f.status.as_ref().is_some_and(|s| s.current_instances == 1)
        })
        .await;
    operator.stop().await.expect("graceful stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_fleet_leaves_no_instance_queue_parameter_agent_or_browser() {
    let world = OperatorWorld::new("delete").await;
    let operator = world.start_operator(test_settings(), None).await;
    let nodes = world.start_nodes(|_| {});
    world.apply(&world.fleet(1, 2)).await;
    let fleet = world
        .wait_for("one ready instance", |f| {
            f.status.as_ref().is_some_and(|s| s.ready_instances == 1)
        })
        .await;
    let queues = fleet.status.unwrap().queues.unwrap();
    let id = world.fleet_id().await;
    world.delete().await;
    world.wait_fleet_gone(WAIT).await;
    let compute = browserfleet::cloud::Ec2Compute::new(&world.aws);
    assert!(
        browserfleet::cloud::Compute::list_instances(&compute, &id)
            .await
            .unwrap()
            .is_empty()
    );
    let sqs = Sqs::new(&world.aws);
    for url in [queues.requests, queues.dead_letter, queues.events]
        .into_iter()
        .flatten()
    {
        let gone = sqs.depth(&QueueUrl::new(&url)).await;
        assert!(gone.is_err(), "queue {url} still exists");
    }
    let parameter = Ssm::new(&world.aws)
        .get_parameter(&parameter_name(&world.cluster.ns, &world.name))
        .await;
    assert!(parameter.is_err(), "the parameter is deleted");
    eventually("no agent left", WAIT, || async {
        nodes.agents().is_empty()
    })
    .await;
    let work = world.work.path().to_string_lossy().to_string();
    eventually("no browser left", WAIT, || {
        let work = work.clone();
        async move { testkit::agent_world::processes_with(&work).is_empty() }
    })
    .await;
    nodes.shutdown().await;
    operator.stop().await.expect("graceful stop");
}
