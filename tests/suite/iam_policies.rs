//! The IAM policies in `docs/iam/` against what the code calls: every AWS
//! operation the operator and the agents made in an end-to-end run (moto,
//! the development API server, the node simulator, Chromium), as their
//! `CallRecorder`s counted them, must be allowed by the policy of who made
//! it; and a policy allows no action the code never calls.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use browserfleet::api::session::SessionPhase;
use browserfleet::cloud::Service;
use serde_json::{Value, json};

use testkit::operator_world::{OperatorWorld, has_condition, replies, test_settings};

/// Actions AWS requires beside a call rather than for one: tags given to
/// `RunInstances` need `ec2:CreateTags`, its instance profile `iam:PassRole`.
const IMPLIED: [&str; 2] = ["ec2:CreateTags", "iam:PassRole"];

/// The IAM action an SDK operation needs. Batch operations are authorized
/// as their single-message action.
fn action(service: Service, operation: &str) -> String {
    let prefix = match service {
        Service::Ec2 => "ec2",
        Service::Ssm => "ssm",
        Service::Sqs => "sqs",
    };
    let operation = operation.strip_suffix("Batch").unwrap_or(operation);
    format!("{prefix}:{operation}")
}

/// Every action a policy's Allow statements name.
fn allowed(policy: &str) -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/iam")
        .join(policy);
    let document: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("policy")).expect("JSON");
    assert_eq!(document["Version"], "2012-10-17", "{policy}");
    let mut actions = BTreeSet::new();
    for statement in document["Statement"].as_array().expect("statements") {
        assert_eq!(statement["Effect"], "Allow", "{policy}: {statement}");
        assert!(statement.get("Resource").is_some(), "{policy}: {statement}");
        match &statement["Action"] {
            Value::String(one) => {
                actions.insert(one.clone());
            }
            Value::Array(many) => {
                actions.extend(many.iter().map(|a| a.as_str().expect("action").to_owned()))
            }
            other => panic!("{policy}: Action {other}"),
        }
    }
    assert!(
        actions.iter().all(|a| !a.contains('*')),
        "{policy}: no wildcard actions: {actions:?}"
    );
    actions
}

/// Every operation the cloud layer can call, as IAM actions: each
/// `observe(&self.recorder, Service::…, "Operation", …)` in `src/cloud/`.
fn callable() -> BTreeSet<String> {
    let mut actions = BTreeSet::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cloud");
    let pattern = regex::Regex::new(r#"Service::(Ec2|Ssm|Sqs),\s*"([A-Za-z]+)""#).expect("regex");
    for entry in std::fs::read_dir(dir).expect("src/cloud") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).unwrap_or_default();
        for found in pattern.captures_iter(&text) {
            let service = match &found[1] {
                "Ec2" => Service::Ec2,
                "Ssm" => Service::Ssm,
                _ => Service::Sqs,
            };
            actions.insert(action(service, &found[2]));
        }
    }
    actions
}

/// The AWS calls an agent exported on its `/metrics`, as IAM actions.
async fn agent_calls(address: &str) -> BTreeSet<String> {
    let (code, text) = testkit::http::call("GET", &format!("http://{address}/metrics"), None).await;
    assert_eq!(code, 200, "{text}");
    let pattern = regex::Regex::new(
        r#"^browserfleet_aws_calls_total\{service="([a-z0-9]+)",operation="([A-Za-z]+)",outcome="[a-z_]+"\} [1-9]"#,
    )
    .expect("regex");
    text.lines()
        .filter_map(|line| pattern.captures(line))
        .map(|found| {
            let service = match &found[1] {
                "ec2" => Service::Ec2,
                "ssm" => Service::Ssm,
                _ => Service::Sqs,
            };
            action(service, &found[2])
        })
        .collect()
}

#[test]
fn the_policies_allow_nothing_the_code_never_calls() {
    let callable = callable();
    assert!(callable.contains("ec2:RunInstances") && callable.contains("sqs:ReceiveMessage"));
    for policy in ["operator-policy.json", "node-policy.json"] {
        let extra: Vec<String> = allowed(policy)
            .into_iter()
            .filter(|a| !callable.contains(a) && !IMPLIED.contains(&a.as_str()))
            .collect();
        assert!(
            extra.is_empty(),
            "{policy} allows actions nothing calls: {extra:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_call_of_an_end_to_end_run_is_allowed_by_its_policy() {
    let world = OperatorWorld::new("iam-policies").await;
    // The operator's own clients: its recorder counts its calls alone.
    let operator_aws = testkit::aws().await;
    let recorder = operator_aws.recorder().clone();
    let _operator = world
        .start_operator_with_aws(test_settings(), None, operator_aws)
        .await;
    let nodes = world.start_nodes(|_| {});
    world.apply(&world.fleet(1, 3)).await;
    world
        .wait_for("ready", |f| has_condition(f, "Ready", "True"))
        .await;

    // A BrowserSession, then a burst that scales out and replies elsewhere.
    world
        .apply_session(&world.session("iam", json!({"ttlSeconds": 60})))
        .await;
    world.wait_for_phase("iam", SessionPhase::Ready).await;
    let reply_queue = world.reply_queue().await;
    world.send_requests("iam-burst", 4, &reply_queue, 60).await;
    replies(&world, &reply_queue, "session.ready", 4).await;
    world.delete_session("iam").await;
    world.wait_session_gone("iam").await;

    // Every agent's calls, while they run. The fleet's status names the
    // agents' addresses on the fleet reconciler's schedule, which may come
    // after their replies.
    let addresses_in = |fleet: &browserfleet::api::BrowserFleet| -> Vec<String> {
        fleet
            .status
            .iter()
            .flat_map(|s| s.instances.iter())
            .filter_map(|i| i.address.clone())
            .collect()
    };
    let fleet = world
        .wait_for("the burst scaled out to two agents with addresses", |f| {
            addresses_in(f).len() >= 2
        })
        .await;
    let addresses = addresses_in(&fleet);
    let mut node_calls = BTreeSet::new();
    for address in &addresses {
        node_calls.extend(agent_calls(address).await);
    }
    let fleet_policy = fleet_node_policy(&fleet, &reply_queue);

    // Deleting the fleet drains, terminates and deletes queues and
    // parameters.
    world.delete().await;
    world.wait_fleet_gone(Duration::from_secs(120)).await;
    nodes.shutdown().await;

    let operator_calls: BTreeSet<String> = recorder
        .snapshot()
        .keys()
        .map(|key| action(key.service, key.operation))
        .collect();
    for (who, calls, policy) in [
        ("operator", &operator_calls, "operator-policy.json"),
        ("node", &node_calls, "node-policy.json"),
    ] {
        let allowed = allowed(policy);
        let missing: Vec<&String> = calls.iter().filter(|a| !allowed.contains(*a)).collect();
        assert!(
            missing.is_empty(),
            "the {who} called {missing:?}, which docs/iam/{policy} does not allow (it called {calls:?})"
        );
    }
    // The run covered what each identity does.
    for expected in [
        "ec2:RunInstances",
        "ec2:TerminateInstances",
        "sqs:CreateQueue",
        "sqs:DeleteQueue",
        "ssm:PutParameter",
        "ssm:DeleteParameter",
    ] {
        assert!(
            operator_calls.contains(expected),
            "{expected} not in {operator_calls:?}"
        );
    }
    for expected in [
        "sqs:ReceiveMessage",
        "sqs:SendMessage",
        "sqs:DeleteMessage",
        "ssm:GetParameter",
    ] {
        assert!(
            node_calls.contains(expected),
            "{expected} not in {node_calls:?}"
        );
    }
    // The fleet's own node policy (`browserfleet node-policy`) allows every
    // call the agents made on every resource of the fleet it applies to:
    // the queues the operator created (their names as the policy predicts
    // them) and the agent configuration.
    let (policy, uses) = fleet_policy;
    for action in &node_calls {
        for resource in uses.iter().filter(|(a, _)| a == action).map(|(_, r)| r) {
            assert!(
                browserfleet::operator::node_policy::may_allow(&policy, action, resource),
                "the fleet's node policy does not allow {action} on {resource}: {policy:#}"
            );
        }
    }
}

/// The rendered node policy of `fleet`, and the (action, resource) pairs
/// its agents use: the queues in its status, as ARNs, and its parameter.
fn fleet_node_policy(
    fleet: &browserfleet::api::BrowserFleet,
    reply_queue: &browserfleet::cloud::QueueUrl,
) -> (Value, Vec<(String, String)>) {
    use browserfleet::operator::node_policy::{NodePolicyScope, node_policy};
    use kube::ResourceExt;
    let scope = NodePolicyScope {
        fleet: browserfleet::cloud::FleetId::new(
            fleet.namespace().unwrap(),
            fleet.name_any(),
            fleet.uid().unwrap(),
        )
        .unwrap(),
        partition: "aws".into(),
        region: "*".into(),
        account: "*".into(),
        kms_key_arn: None,
    };
    // moto's queue URLs end in `/<account>/<name>`.
    let arn = |url: &str| {
        let mut parts = url.rsplit('/');
        let name = parts.next().unwrap().to_owned();
        let account = parts.next().unwrap().to_owned();
        format!("arn:aws:sqs:us-east-1:{account}:{name}")
    };
    let queues = fleet
        .status
        .as_ref()
        .and_then(|s| s.queues.clone())
        .expect("queues in status");
    let requests = arn(queues.requests.as_deref().unwrap());
    let events = arn(queues.events.as_deref().unwrap());
    let dead_letter = arn(queues.dead_letter.as_deref().unwrap());
    let parameter = scope
        .parameter_arn()
        .replace("ssm:*:*:", "ssm:us-east-1:123456789012:");
    let mut uses: Vec<(String, String)> = [
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
    ]
    .iter()
    .map(|a| (a.to_string(), requests.clone()))
    .collect();
    for queue in [&requests, &events, &dead_letter, &arn(reply_queue.as_str())] {
        uses.push(("sqs:SendMessage".into(), queue.clone()));
    }
    uses.push(("ssm:GetParameter".into(), parameter));
    (node_policy(&scope), uses)
}
