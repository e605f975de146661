//! The Helm chart in charts/browserfleet, through Helm's own Go library
//! (helm-sdkpy, installed by scripts/install-helm.sh; driven by
//! tests/python/helm_chart.py).
//!
//! Lint needs no cluster. helm-sdkpy has no `template` (nor a dry run), so the
//! chart is rendered the way `helm install` renders it: installed (without
//! waiting for pods) into a real, throw-away kube-apiserver v1.20.2 started by
//! scripts/with-kube-apiserver.sh (RBAC on; `make test` builds it), its
//! manifest read back from the release, and uninstalled. Under
//! `BROWSERFLEET_TEST_KUBECONFIG` that cluster is used instead. One control
//! plane serves every test of this file: the cases render once, together.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{Value, json};
use testkit::tools::{
    self, RenderCase, chart_dir, find, helm_chart_py, objects, render_chart, stdout_json,
};

/// `helm lint` of the chart, with `values` merged over its own.
fn lint(values: Option<&Path>) -> (bool, Value) {
    let mut command = Command::new(tools::python_with_helm());
    command.arg(helm_chart_py()).arg("lint").arg(chart_dir());
    if let Some(values) = values {
        command.arg("--values").arg(values);
    }
    let output = command.output().expect("helm_chart.py runs");
    (output.status.success(), stdout_json(&output, "helm lint"))
}

/// What Helm made of one set of values: the release's manifest and notes,
/// or Helm's refusal.
#[derive(Debug)]
struct Rendered {
    objects: Vec<Value>,
    notes: String,
    status: String,
    error: Option<String>,
}

/// The namespace the examples values watch (charts/browserfleet/ci/examples-values.yaml).
const WATCHED: &str = "browser-fleets";

/// Renders the default, examples and invalid values once for every test of
/// this file; keyed by case (`default`, `examples`, `invalid`, and
/// `kustomize`: the defaults as release `browserfleet` in namespace
/// `browserfleet-system`, which config/default reproduces).
fn rendered() -> &'static HashMap<String, Rendered> {
    static RENDERED: OnceLock<HashMap<String, Rendered>> = OnceLock::new();
    RENDERED.get_or_init(render_cases)
}

fn render_cases() -> HashMap<String, Rendered> {
    let root = tools::root();
    // Names of this run's own: a shared cluster may see several at once.
    let run = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let case = |name: &str, release: Option<&str>, values: Option<PathBuf>| RenderCase {
        name: format!("{name}-{run}"),
        release: release.map(str::to_owned),
        values,
    };
    let cases = [
        ("default", case("default", None, None)),
        (
            "kustomize",
            case("kustomize", Some("browserfleet-system/browserfleet"), None),
        ),
        (
            "examples",
            case(
                "examples",
                None,
                Some(chart_dir().join("ci/examples-values.yaml")),
            ),
        ),
        (
            "invalid",
            case(
                "invalid",
                None,
                Some(root.join("tests/fixtures/chart/invalid-values.yaml")),
            ),
        ),
    ];
    // The examples values name a ServiceMonitor (the Prometheus Operator's
    // kind, stood in for by a CRD of our own) and a watched namespace, which
    // the chart does not create.
    let kubectl = tools::kubectl().display().to_string();
    let setup = format!(
        "{kubectl} apply -f {crd} >&2
{kubectl} wait --for condition=established --timeout=60s crd/servicemonitors.monitoring.coreos.com >&2
{kubectl} create namespace {WATCHED} --dry-run=client -o yaml | {kubectl} apply -f - >&2
",
        crd = root
            .join("tests/fixtures/chart/servicemonitor-crd.yaml")
            .display(),
    );
    let result = render_chart(
        &setup,
        cases.iter().map(|(_, case)| case),
        std::env::var_os("BROWSERFLEET_TEST_KUBECONFIG").as_deref(),
    );
    cases
        .iter()
        .map(|(name, case)| {
            let case = &result["cases"][&case.name];
            let rendered = Rendered {
                objects: objects(case["manifest"].as_str().unwrap_or("")),
                notes: case["notes"].as_str().unwrap_or("").to_owned(),
                status: case["status"].as_str().unwrap_or("").to_owned(),
                error: case["error"].as_str().map(str::to_owned),
            };
            ((*name).to_owned(), rendered)
        })
        .collect()
}

/// The case's release as Helm installed it.
fn installed(case: &str) -> &'static Rendered {
    let rendered = &rendered()[case];
    assert!(
        rendered.error.is_none(),
        "Helm refused the {case} values: {}",
        rendered.error.as_deref().unwrap_or("")
    );
    assert_eq!(rendered.status, "deployed", "the {case} release");
    rendered
}

/// The one object of `kind` in a release.
fn only<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} in the release");
    found[0]
}

fn count(objects: &[Value], kind: &str) -> usize {
    objects.iter().filter(|o| o["kind"] == kind).count()
}

fn container(deployment: &Value) -> &Value {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 1, "one container: the operator");
    &containers[0]
}

fn args(deployment: &Value) -> Vec<String> {
    container(deployment)["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_owned())
        .collect()
}

/// The container's environment, name → its entry.
fn env(deployment: &Value) -> HashMap<String, Value> {
    container(deployment)["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (e["name"].as_str().expect("env name").to_owned(), e.clone()))
        .collect()
}

/// Exactly what the operator calls (charts/browserfleet/templates/rbac.yaml
/// says where); config/ grants the same.
fn operator_rules() -> Value {
    json!([
        {"apiGroups": ["browserfleet.io"], "resources": ["browserfleets"], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": ["browserfleet.io"], "resources": ["browserfleets/status"], "verbs": ["patch"]},
        {"apiGroups": ["browserfleet.io"], "resources": ["browsersessions"], "verbs": ["get", "list", "watch", "patch", "delete"]},
        {"apiGroups": ["browserfleet.io"], "resources": ["browsersessions/status"], "verbs": ["update"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "patch"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ])
}

fn lease_rules(lease: &str) -> Value {
    json!([
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [lease], "verbs": ["get", "patch"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    ])
}

#[test]
fn lint_passes_with_no_errors() {
    for values in [None, Some(chart_dir().join("ci/examples-values.yaml"))] {
        let (ok, result) = lint(values.as_deref());
        assert!(ok, "helm lint with {values:?}: {result}");
        assert_eq!(result["charts"], 1, "{result}");
        assert_eq!(result["errors"], json!([]), "{result}");
    }
}

#[test]
fn the_gitops_examples_values_pass_the_chart_schema() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (file, path) in [
        (
            "argocd-application.yaml",
            "/spec/sources/0/helm/valuesObject",
        ),
        ("flux-helmrelease.yaml", "/spec/values"),
    ] {
        let text = std::fs::read_to_string(tools::root().join("examples/gitops").join(file))
            .expect("example");
        let values = text
            .split("\n---\n")
            .filter_map(|doc| serde_saphyr::from_str::<Value>(doc).ok())
            .find_map(|doc| doc.pointer(path).cloned())
            .unwrap_or_else(|| panic!("{file} has values at {path}"));
        let values_file = dir.path().join(file);
        std::fs::write(&values_file, serde_json::to_string(&values).expect("JSON"))
            .expect("values written");
        let (ok, result) = lint(Some(&values_file));
        assert!(ok, "{file}: {result}");
    }
}

#[test]
fn lint_refuses_invalid_values_at_the_values_file() {
    let invalid = tools::root().join("tests/fixtures/chart/invalid-values.yaml");
    let (ok, result) = lint(Some(&invalid));
    assert!(!ok, "helm lint passed invalid values: {result}");
    let errors = result["errors"].as_array().expect("errors");
    assert!(
        errors.iter().any(|e| e["path"] == "values.yaml"),
        "an error at values.yaml: {result}"
    );
}

#[test]
fn invalid_values_are_refused_by_the_schema_with_a_clear_message() {
    let rendered = &rendered()["invalid"];
    let error = rendered
        .error
        .as_deref()
        .unwrap_or_else(|| panic!("Helm installed invalid values: {rendered:?}"));
    assert!(
        error.contains("values don't meet the specifications of the schema"),
        "{error}"
    );
    // One line per mistake in tests/fixtures/chart/invalid-values.yaml,
    // each naming the value.
    for wanted in [
        "'/replicaCount': got string, want integer",
        "'/runAsUser': minimum: got 0, want 1",
        "'/logs/format': value must be one of 'json', 'text'",
        "'/serviceMonitor': additional properties 'enable' not allowed",
    ] {
        assert!(error.contains(wanted), "no {wanted:?} in:\n{error}");
    }
    assert!(rendered.objects.is_empty(), "nothing was installed");
}

#[test]
fn default_deployment_runs_two_hardened_replicas_with_leader_election_and_probes() {
    let release = installed("default");
    let deployment = only(&release.objects, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);

    let args = args(deployment);
    assert_eq!(args[0], "operator");
    for wanted in [
        "--listen=0.0.0.0:8080",
        "--leader-election",
        "--lease-name=browserfleet-operator",
        "--lease-duration=15s",
        "--json-logs",
    ] {
        assert!(args.iter().any(|a| a == wanted), "{wanted} in {args:?}");
    }
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--namespace") || a.starts_with("--aws-")),
        "watches every namespace, with the default AWS retries: {args:?}"
    );
    let env = env(deployment);
    assert_eq!(
        env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    for unset in [
        "AWS_REGION",
        "AWS_ENDPOINT_URL",
        "BROWSERFLEET_CLUSTER_NAME",
    ] {
        assert!(
            !env.contains_key(unset),
            "{unset} is left to the environment"
        );
    }

    let container = container(deployment);
    assert_eq!(
        container["image"],
        format!("browserfleet:{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        container["ports"],
        json!([{"name": "http-metrics", "containerPort": 8080, "protocol": "TCP"}])
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "http-metrics"})
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "http-metrics"})
    );
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());

    let pod = &deployment["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(pod["runAsNonRoot"], true);
    assert_eq!(pod["seccompProfile"]["type"], "RuntimeDefault");
    let user = pod["runAsUser"].as_u64().expect("numeric runAsUser");
    assert!(user > 0, "runAsUser {user} is root");
    let security = &container["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["runAsUser"], user);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
}

#[test]
fn default_release_grants_cluster_wide_rules_and_the_lease_in_its_namespace() {
    let release = installed("default");
    let deployment = only(&release.objects, "Deployment");
    let namespace = deployment["metadata"]["namespace"]
        .as_str()
        .expect("namespace");
    let name = deployment["metadata"]["name"].as_str().expect("name");
    let account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .expect("serviceAccountName");
    let service_account = find(&release.objects, "ServiceAccount", account);
    assert_eq!(service_account["metadata"]["namespace"], namespace);
    let subject = json!([{"kind": "ServiceAccount", "name": account, "namespace": namespace}]);

    let cluster_role = find(&release.objects, "ClusterRole", name);
    assert_eq!(cluster_role["rules"], operator_rules());
    let binding = find(&release.objects, "ClusterRoleBinding", name);
    assert_eq!(binding["roleRef"]["name"], cluster_role["metadata"]["name"]);
    assert_eq!(binding["subjects"], subject);
    // No clusterName: the operator reads the kube-system namespace's uid,
    // and nothing else of the Namespaces.
    let identity = find(
        &release.objects,
        "ClusterRole",
        &format!("{name}-cluster-identity"),
    );
    assert_eq!(
        identity["rules"],
        json!([{"apiGroups": [""], "resources": ["namespaces"], "resourceNames": ["kube-system"], "verbs": ["get"]}])
    );
    let identity_binding = find(
        &release.objects,
        "ClusterRoleBinding",
        &format!("{name}-cluster-identity"),
    );
    assert_eq!(
        identity_binding["roleRef"]["name"],
        identity["metadata"]["name"]
    );
    assert_eq!(identity_binding["subjects"], subject);
    assert_eq!(count(&release.objects, "ClusterRole"), 2);

    let lease_role = find(&release.objects, "Role", &format!("{name}-leader-election"));
    assert_eq!(lease_role["metadata"]["namespace"], namespace);
    assert_eq!(lease_role["rules"], lease_rules("browserfleet-operator"));
    let lease_binding = find(
        &release.objects,
        "RoleBinding",
        &format!("{name}-leader-election"),
    );
    assert_eq!(lease_binding["metadata"]["namespace"], namespace);
    assert_eq!(lease_binding["subjects"], subject);
    assert_eq!(count(&release.objects, "Role"), 1, "only the Lease Role");
}

#[test]
fn default_release_serves_metrics_and_keeps_a_standby_through_drains() {
    let release = installed("default");
    let deployment = only(&release.objects, "Deployment");
    let selector = &deployment["spec"]["selector"]["matchLabels"];
    let service = only(&release.objects, "Service");
    assert_eq!(&service["spec"]["selector"], selector);
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "http-metrics", "port": 8080, "targetPort": "http-metrics", "protocol": "TCP"}])
    );
    let budget = only(&release.objects, "PodDisruptionBudget");
    // policy/v1 where the server has it (1.21 on), v1beta1 on older ones.
    assert!(
        ["policy/v1", "policy/v1beta1"].contains(&budget["apiVersion"].as_str().unwrap_or("")),
        "{budget}"
    );
    assert_eq!(budget["spec"]["minAvailable"], 1);
    assert_eq!(&budget["spec"]["selector"]["matchLabels"], selector);
    assert_eq!(
        count(&release.objects, "ServiceMonitor"),
        0,
        "off by default"
    );
    for wanted in [
        "kubectl get bfleet",
        "/metrics",
        "eks.amazonaws.com/role-arn",
        "Pod Identity",
        "crds/",
    ] {
        assert!(
            release.notes.contains(wanted),
            "NOTES.txt tells {wanted:?}:\n{}",
            release.notes
        );
    }
}

#[test]
fn examples_values_set_irsa_one_watched_namespace_and_a_service_monitor() {
    let release = installed("examples");
    let deployment = only(&release.objects, "Deployment");
    let namespace = deployment["metadata"]["namespace"]
        .as_str()
        .expect("namespace");
    let account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .expect("serviceAccountName");
    let service_account = find(&release.objects, "ServiceAccount", account);
    assert_eq!(
        service_account["metadata"]["annotations"],
        json!({"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/browserfleet-operator"})
    );

    let args = args(deployment);
    assert!(
        args.iter().any(|a| *a == format!("--namespace={WATCHED}")),
        "{args:?}"
    );
    for wanted in ["--aws-retry-mode=adaptive", "--aws-max-attempts=8"] {
        assert!(args.iter().any(|a| a == wanted), "{wanted} in {args:?}");
    }
    let env = env(deployment);
    assert_eq!(env["AWS_REGION"]["value"], "eu-west-1");
    assert_eq!(env["BROWSERFLEET_CLUSTER_NAME"]["value"], "prod-eu-west-1");
    assert_eq!(env["RUST_LOG"]["value"], "info,browserfleet=debug");
    assert_eq!(
        container(deployment)["resources"]["limits"]["memory"],
        "1Gi"
    );

    // One namespace watched: its rules are a Role there, nothing cluster-wide.
    assert_eq!(count(&release.objects, "ClusterRole"), 0);
    assert_eq!(count(&release.objects, "ClusterRoleBinding"), 0);
    let name = deployment["metadata"]["name"].as_str().expect("name");
    let role = find(&release.objects, "Role", name);
    assert_eq!(role["metadata"]["namespace"], WATCHED);
    assert_eq!(role["rules"], operator_rules());
    let binding = find(&release.objects, "RoleBinding", name);
    assert_eq!(binding["metadata"]["namespace"], WATCHED);
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": account, "namespace": namespace}])
    );
    let lease_role = find(&release.objects, "Role", &format!("{name}-leader-election"));
    assert_eq!(lease_role["metadata"]["namespace"], namespace);

    let monitor = only(&release.objects, "ServiceMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http-metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    assert!(
        release
            .notes
            .contains("arn:aws:iam::111122223333:role/browserfleet-operator"),
        "{}",
        release.notes
    );
}

#[test]
fn chart_crds_are_byte_identical_to_crds() {
    let names = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let top = tools::root().join("crds");
    let chart = chart_dir().join("crds");
    assert_eq!(names(&chart), names(&top), "run `make chart-crds`");
    for name in names(&top) {
        let want = std::fs::read(top.join(&name)).expect("readable");
        let have = std::fs::read(chart.join(&name)).expect("readable");
        assert!(
            want == have,
            "charts/browserfleet/crds/{name} differs from crds/{name}: run `make chart-crds`"
        );
    }
}

#[test]
fn chart_app_version_is_the_crate_version() {
    let text = std::fs::read_to_string(chart_dir().join("Chart.yaml")).expect("Chart.yaml");
    let chart: Value = serde_saphyr::from_str(&text).expect("Chart.yaml is YAML");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
}

/// An object as config/default has it: without the labels only Helm sets.
fn without_helm_labels(mut object: Value) -> Value {
    for pointer in ["/metadata/labels", "/spec/template/metadata/labels"] {
        if let Some(labels) = object.pointer_mut(pointer).and_then(Value::as_object_mut) {
            labels.remove("helm.sh/chart");
            labels.remove("app.kubernetes.io/managed-by");
        }
    }
    object
}

#[test]
fn kustomize_base_is_the_chart_with_its_default_values() {
    let release = installed("kustomize");
    let output = Command::new(tools::kubectl())
        .args(["kustomize", "config/default"])
        .current_dir(tools::root())
        .output()
        .expect("kubectl runs");
    assert!(
        output.status.success(),
        "kubectl kustomize config/default: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let key = |o: &Value| {
        format!(
            "{}/{}",
            o["kind"].as_str().unwrap_or(""),
            o["metadata"]["name"].as_str().unwrap_or("")
        )
    };
    // The namespace and the CRDs are not templates of the chart (Helm
    // installs crds/ apart; tests/suite/kustomize.rs checks config/'s).
    let mut kustomized: Vec<Value> = objects(&String::from_utf8_lossy(&output.stdout))
        .into_iter()
        .filter(|o| o["kind"] != "Namespace" && o["kind"] != "CustomResourceDefinition")
        .collect();
    let mut charted: Vec<Value> = release
        .objects
        .iter()
        .cloned()
        .map(without_helm_labels)
        .collect();
    for objects in [&mut kustomized, &mut charted] {
        objects.sort_by_key(key);
    }
    assert_eq!(
        kustomized.iter().map(key).collect::<Vec<_>>(),
        charted.iter().map(key).collect::<Vec<_>>(),
        "the same objects"
    );
    for (mut kustomized, charted) in kustomized.into_iter().zip(charted) {
        if kustomized["kind"] == "PodDisruptionBudget" {
            // config/ has policy/v1; the chart picks what the server serves.
            kustomized["apiVersion"] = charted["apiVersion"].clone();
        }
        assert_eq!(
            kustomized,
            charted,
            "config/default's {} differs from the chart's",
            key(&charted)
        );
    }
}
