//! Helm (helm-sdkpy, through tests/python/helm_chart.py) installs, upgrades
//! and uninstalls the chart on the development API server: every object of
//! the release is served as rendered, an upgrade changes what its values
//! change, and an uninstall removes the release's objects (the CRDs from the
//! chart's crds/ stay, as Helm leaves them). tests/suite/chart.rs does the same on
//! a real kube-apiserver.

use std::path::Path;
use std::process::Command;

use devcluster::apiserver::DevApiServer;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

use testkit::tools;

const RELEASE: &str = "bf";
/// The release's objects' name (the chart's fullname: release-chart).
const FULLNAME: &str = "bf-browserfleet";
const NAMESPACE: &str = "bf-install";

/// Runs `helm_chart.py ARGS --kubeconfig KUBECONFIG` and returns its JSON.
fn helm(kubeconfig: &Path, args: &[&str]) -> Value {
    let root = tools::root();
    let output = Command::new(tools::python_with_helm())
        .arg(tools::helm_chart_py())
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .current_dir(root)
        .output()
        .expect("helm_chart.py runs");
    let result: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "helm_chart.py {args:?} printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert!(output.status.success(), "helm_chart.py {args:?}: {result}");
    result
}

/// The live object for a rendered one; `None` when it is gone.
async fn live(client: &kube::Client, rendered: &Value) -> Option<DynamicObject> {
    let (group, version) = rendered["apiVersion"]
        .as_str()
        .and_then(|v| v.rsplit_once('/'))
        .unwrap_or(("", rendered["apiVersion"].as_str().unwrap_or_default()));
    let gvk = GroupVersionKind::gvk(group, version, rendered["kind"].as_str().unwrap());
    // Only this group: parallel tests create and delete CRD groups of their
    // own, and one deleted mid-discovery would fail a discovery of them all.
    let discovery = kube::Discovery::new(client.clone())
        .filter(&[group])
        .run()
        .await
        .expect("discovery");
    let (resource, caps): (ApiResource, _) = discovery
        .resolve_gvk(&gvk)
        .unwrap_or_else(|| panic!("{gvk:?} is not served"));
    let name = rendered["metadata"]["name"].as_str().unwrap();
    let api: Api<DynamicObject> = match caps.scope {
        kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &resource),
        kube::discovery::Scope::Namespaced => {
            Api::namespaced_with(client.clone(), NAMESPACE, &resource)
        }
    };
    api.get_opt(name).await.expect("get")
}

fn manifest(release: &Value) -> Vec<Value> {
    tools::objects(
        release["manifest"]
            .as_str()
            .expect("the release's manifest"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn helm_installs_upgrades_and_uninstalls_the_chart_on_the_dev_server() {
    let server = DevApiServer::start().await.expect("dev API server");
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig()).unwrap();
    let chart = tools::root().join("charts/browserfleet");
    let chart = chart.to_str().unwrap();

    let installed = helm(
        &kubeconfig,
        &[
            "install",
            chart,
            "--release",
            RELEASE,
            "--namespace",
            NAMESPACE,
        ],
    );
    assert_eq!(installed["info"]["status"], "deployed", "{installed}");
    let objects = manifest(&installed);
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains(&kind), "no {kind} in the release: {kinds:?}");
    }
    for rendered in &objects {
        let object = live(&server.client, rendered).await.unwrap_or_else(|| {
            panic!(
                "{} {} not created",
                rendered["kind"], rendered["metadata"]["name"]
            )
        });
        let served = serde_json::to_value(&object).unwrap();
        for field in ["spec", "rules", "roleRef", "subjects"] {
            if !rendered[field].is_null() {
                assert_eq!(
                    served[field], rendered[field],
                    "{} {field}",
                    rendered["kind"]
                );
            }
        }
        assert_eq!(
            object
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app.kubernetes.io/managed-by")),
            Some(&"Helm".to_owned()),
            "{} {}",
            rendered["kind"],
            rendered["metadata"]["name"]
        );
    }
    // The chart's crds/ are installed with the release.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(server.client.clone());
    for crd in [
        "browserfleets.browserfleet.io",
        "browsersessions.browserfleet.io",
    ] {
        assert!(crds.get_opt(crd).await.expect("get CRD").is_some(), "{crd}");
    }

    let values = dir.path().join("values.yaml");
    std::fs::write(&values, "replicaCount: 3\n").unwrap();
    let upgraded = helm(
        &kubeconfig,
        &[
            "upgrade",
            chart,
            "--release",
            RELEASE,
            "--namespace",
            NAMESPACE,
            "--values",
            values.to_str().unwrap(),
        ],
    );
    assert_eq!(upgraded["version"], 2, "{upgraded}");
    let deployment = tools::find(&manifest(&upgraded), "Deployment", FULLNAME).clone();
    assert_eq!(deployment["spec"]["replicas"], 3);
    let served = live(&server.client, &deployment).await.expect("Deployment");
    assert_eq!(served.data["spec"]["replicas"], 3);
    assert_eq!(served.metadata.generation, Some(2), "the spec changed once");
    let status = helm(
        &kubeconfig,
        &["status", "--release", RELEASE, "--namespace", NAMESPACE],
    );
    assert_eq!(status["version"], 2);
    assert_eq!(status["info"]["status"], "deployed");

    let uninstalled = helm(
        &kubeconfig,
        &["uninstall", "--release", RELEASE, "--namespace", NAMESPACE],
    );
    assert_eq!(
        uninstalled["info"]["status"], "uninstalled",
        "{uninstalled}"
    );
    for rendered in &objects {
        assert!(
            live(&server.client, rendered).await.is_none(),
            "{} {} outlived the release",
            rendered["kind"],
            rendered["metadata"]["name"]
        );
    }
    // Helm's release records went with it; the CRDs stay.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(server.client.clone(), NAMESPACE);
    let records = secrets
        .list(&kube::api::ListParams::default().labels("owner=helm"))
        .await
        .expect("list");
    assert!(
        records.items.is_empty(),
        "release records left: {}",
        records.items.len()
    );
    assert!(
        crds.get_opt("browserfleets.browserfleet.io")
            .await
            .unwrap()
            .is_some()
    );
    server.stop().await;
}
