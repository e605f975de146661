//! Least privilege, proven: the operator's Kubernetes permissions in the
//! Helm chart are exactly what it uses. The chart is rendered by real Helm
//! (tests/python/helm_chart.py, on the throw-away kube-apiserver of
//! scripts/with-kube-apiserver.sh, as tests/suite/chart.rs renders it: helm-sdkpy
//! has no `helm template`); the operator runs end to end against the
//! development API server, which logs every request in RBAC terms (and the
//! checks the OwnerReferencesPermissionEnforcement admission plugin would
//! make), with a user agent of its own; the test fails if the rendered RBAC
//! rules refuse any of its requests, or grant a verb nothing used.

use std::collections::BTreeMap;
use std::time::Duration;

use browserfleet::api::session::SessionPhase;
use browserfleet::operator::run::LeaderElection;
use devcluster::apiserver::requests::{RecordedRequest, RequestTarget};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::api::Api;
use serde_json::{Value, json};
use testkit::rbac::{self, Grant, Scope};

use testkit::operator_world::{OperatorWorld, WAIT, test_settings};
use testkit::tools::{self, RenderCase};

/// The user agent of the operator's client in this test.
const OPERATOR_AGENT: &str = "browserfleet-operator/rbac-test";

/// The chart's release name: its objects are named `browserfleet`.
const RELEASE: &str = "browserfleet";

/// The chart rendered by Helm as release [`RELEASE`] in namespace `ns`,
/// with `values` (YAML) over its defaults; `watched`, a namespace the
/// values name, is created first (the chart does not create it).
fn render_chart(ns: &str, values: &str, watched: Option<&str>) -> Vec<Value> {
    let run = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let values_file = std::env::temp_dir().join(format!("bf-rbac-values-{run}.yaml"));
    std::fs::write(&values_file, values).expect("values file");
    let case = RenderCase {
        name: format!("rbac-{run}"),
        release: Some(format!("{ns}/{RELEASE}")),
        values: Some(values_file),
    };
    let kubectl = tools::kubectl().display().to_string();
    let create = watched.map_or_else(String::new, |watched| {
        format!("{kubectl} create namespace {watched} --dry-run=client -o yaml | {kubectl} apply -f - >&2\n")
    });
    // Rendered on a throw-away kube-apiserver even under
    // BROWSERFLEET_TEST_KUBECONFIG: this test needs the development API
    // server's request log, so it never touches that cluster.
    let result = tools::render_chart(&create, [&case], None);
    let rendered = &result["cases"][&case.name];
    assert!(rendered["error"].is_null(), "Helm refused: {rendered}");
    tools::objects(rendered["manifest"].as_str().expect("a manifest"))
}

/// What every authenticated user may read by kube-apiserver's bootstrap
/// policy (`system:discovery`, `system:public-info-viewer`): not the chart's
/// to grant, so never reported unused.
fn bootstrap_discovery() -> Grant {
    let urls = [
        "/api",
        "/api/*",
        "/apis",
        "/apis/*",
        "/healthz",
        "/livez",
        "/openapi",
        "/openapi/*",
        "/readyz",
        "/version",
        "/version/",
    ];
    Grant {
        source: "ClusterRole/system:discovery".into(),
        scope: Scope::Cluster,
        rule: PolicyRule {
            non_resource_urls: Some(urls.iter().map(|u| (*u).to_owned()).collect()),
            verbs: vec!["get".into()],
            ..PolicyRule::default()
        },
    }
}

/// The distinct requests of `log` made by the operator, with their counts.
fn operator_requests(log: &[RecordedRequest]) -> BTreeMap<String, (RequestTarget, usize)> {
    let mut distinct: BTreeMap<String, (RequestTarget, usize)> = BTreeMap::new();
    for entry in log
        .iter()
        .filter(|e| e.user_agent.as_deref() == Some(OPERATOR_AGENT))
    {
        let shown = match &entry.target {
            RequestTarget::Resource(attributes) => format!("{attributes} [{:?}]", entry.origin),
            RequestTarget::NonResource { verb, path } => format!("{verb} {path}"),
        };
        distinct
            .entry(shown)
            .or_insert_with(|| (entry.target.clone(), 0))
            .1 += 1;
    }
    distinct
}

/// The scenario: a fleet scales up from nothing with the node simulator, a
/// session becomes Ready and is deleted, one waits for a fleet that is not
/// there, a brief one ends at its TTL and is collected, the fleet scales
/// up to two and down to zero, and is deleted.
async fn run_the_fleet_through_its_life(world: &OperatorWorld) {
    let nodes = world.start_nodes(|_| {});
    world.apply(&world.fleet(1, 2)).await;
    world
        .wait_for("one ready instance", |f| {
            f.status.as_ref().is_some_and(|s| s.ready_instances == 1)
        })
        .await;
    world.apply_session(&world.session("kept", json!({}))).await;
    world
        .apply_session(&world.session(
            "brief",
            json!({"ttlSeconds": 4, "ttlSecondsAfterFinished": 1}),
        ))
        .await;
    world.wait_for_phase("kept", SessionPhase::Ready).await;
    // A session on a fleet the operator's cache has not seen: it asks the
    // API for the fleet, and waits.
    let mut orphan = world.session("orphan", json!({}));
    orphan["spec"]["fleetRef"]["name"] = json!("not-yet");
    world.apply_session(&orphan).await;
    world
        .wait_for_session("orphan", "waiting for its fleet", |s| {
            s.status
                .as_ref()
                .and_then(|s| s.message.as_deref())
                .is_some_and(|m| m.contains("no BrowserFleet not-yet"))
        })
        .await;
    world.delete_session("orphan").await;
    world.wait_session_gone("orphan").await;
    world.delete_session("kept").await;
    world.wait_session_gone("kept").await;
    world.wait_session_gone("brief").await;
    // A second launch: its Event repeats the first one's reason, so the
    // recorder patches that Event's series.
    world.apply(&world.fleet(2, 2)).await;
    world
        .wait_for("two ready instances", |f| {
            f.status.as_ref().is_some_and(|s| s.ready_instances == 2)
        })
        .await;
    world.apply(&world.fleet(0, 2)).await;
    world
        .wait_for("scaled down to zero", |f| {
            f.status
                .as_ref()
                .is_some_and(|s| s.current_instances == 0 && s.desired_instances == 0)
        })
        .await;
    world.delete().await;
    world.wait_fleet_gone(WAIT).await;
    nodes.shutdown().await;
}

/// Renders the chart as release [`RELEASE`] in a namespace of its own,
/// watching every namespace or (`watch_own_namespace`) only the fleets'
/// namespace, runs the operator as the chart configures it through the
/// scenario, and fails unless the release's RBAC allows every request it
/// made and grants nothing unused.
async fn prove_least_privilege(test: &str, watch_own_namespace: bool) {
    let world = OperatorWorld::new(test).await;
    let dev = world
        .cluster
        .dev
        .as_ref()
        .expect("this test reads the development API server's request log");
    let ns = world.cluster.ns.clone();
    // The release (and its Lease) in a namespace apart from the fleets'.
    let release_ns = format!("{ns}-system");
    let namespaces: Api<Namespace> = Api::all(world.cluster.client.clone());
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some(release_ns.clone());
    namespaces
        .create(&Default::default(), &namespace)
        .await
        .expect("release namespace");
    let values = if watch_own_namespace {
        format!("watchNamespace: {ns}\n")
    } else {
        "{}\n".to_owned()
    };
    let objects = render_chart(&release_ns, &values, watch_own_namespace.then_some(&*ns));
    let deployment = tools::find(&objects, "Deployment", RELEASE);
    let args: Vec<String> = serde_json::from_value(
        deployment["spec"]["template"]["spec"]["containers"][0]["args"].clone(),
    )
    .expect("container args");
    let lease = args
        .iter()
        .find_map(|a| a.strip_prefix("--lease-name="))
        .expect("the chart runs the operator with leader election")
        .to_owned();
    let watched = args
        .iter()
        .find_map(|a| a.strip_prefix("--namespace="))
        .map(str::to_owned);
    assert_eq!(
        watched.is_some(),
        watch_own_namespace,
        "the operator's --namespace: {args:?}"
    );
    let service_account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .expect("serviceAccountName")
        .to_owned();
    let mut grants = rbac::service_account_grants(&objects, &release_ns, &service_account)
        .expect("RBAC objects");
    assert!(
        !grants.is_empty(),
        "the chart binds no rule to {service_account}"
    );

    // The operator as the chart runs it: the namespaces it watches, leader
    // election on the Lease in the release namespace.
    let mut config = world.cluster.config.clone();
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(OPERATOR_AGENT),
    ));
    let client = kube::Client::try_from(config).expect("operator client");
    let election = LeaderElection {
        namespace: release_ns.clone(),
        lease: lease.clone(),
        identity: "rbac-test".into(),
        duration: Duration::from_secs(15),
    };
    dev.clear_requests();
    let operator = world
        .start_operator_with(client, watched, test_settings(), Some(election), None)
        .await;
    run_the_fleet_through_its_life(&world).await;
    operator.stop().await.expect("graceful stop");
    assert_eq!(dev.requests_dropped(), 0, "the request log overflowed");

    let requests = operator_requests(&dev.requests());
    assert!(!requests.is_empty(), "no request carried {OPERATOR_AGENT}");
    println!("the operator's requests (count):");
    for (shown, (_, count)) in &requests {
        println!("  {shown} ({count})");
    }
    grants.push(bootstrap_discovery());
    let refused: Vec<&String> = requests
        .iter()
        .filter(|(_, (target, _))| !rbac::allowed(&grants, target))
        .map(|(shown, _)| shown)
        .collect();
    let targets: Vec<RequestTarget> = requests.values().map(|(t, _)| t.clone()).collect();
    let unused: Vec<String> = rbac::unused_grants(&grants, &targets)
        .iter()
        .filter(|u| u.source != bootstrap_discovery().source)
        .map(ToString::to_string)
        .collect();
    println!("requests the chart's rules refuse: {refused:#?}");
    println!("grants no request used: {unused:#?}");
    assert!(
        refused.is_empty() && unused.is_empty(),
        "the chart's RBAC is not exactly what the operator uses:\nrefused: {refused:#?}\nunused: {unused:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_charts_cluster_wide_rbac_is_exactly_what_the_operator_uses() {
    prove_least_privilege("rbac-all", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_charts_one_namespace_rbac_is_exactly_what_the_operator_uses() {
    prove_least_privilege("rbac-one", true).await;
}
