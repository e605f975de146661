//! kubectl (installed into .venv/ by scripts/install-kubectl.sh, which
//! `make test` runs) against the development API server, or the cluster
//! named by `BROWSERFLEET_TEST_KUBECONFIG` (`make test` runs this file again
//! against kube-apiserver v1.20.2): the commands a platform team runs on our
//! manifests. Each test works in a namespace of its own.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use devcluster::apiserver::DevApiServer;

fn kubectl_binary() -> PathBuf {
    let path = std::env::var_os("BROWSERFLEET_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/kubectl"));
    assert!(
        path.exists(),
        "{} is missing: run `bash scripts/install-kubectl.sh` (make test does)",
        path.display()
    );
    path
}

/// A server, a namespace of the test's own, and a kubeconfig whose context
/// points at both.
struct Cluster {
    /// The dev server when the test started one; `None` on a real cluster.
    server: Option<DevApiServer>,
    kubeconfig: PathBuf,
    ns: String,
}

impl Cluster {
    async fn start(name: &str) -> Self {
        let ns = format!(
            "bf-kubectl-{name}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let dir = std::env::temp_dir().join(&ns);
        std::fs::create_dir_all(&dir).unwrap();
        let (server, config) = match std::env::var_os("BROWSERFLEET_TEST_KUBECONFIG") {
            Some(path) => (
                None,
                std::fs::read_to_string(path).expect("kubeconfig readable"),
            ),
            None => {
                let server = DevApiServer::start().await.expect("server starts");
                let config = server.kubeconfig();
                (Some(server), config)
            }
        };
        // The same kubeconfig, its contexts set to the test's namespace.
        let mut config: serde_json::Value =
            serde_saphyr::from_str(&config).expect("kubeconfig is YAML");
        for context in config["contexts"].as_array_mut().into_iter().flatten() {
            context["context"]["namespace"] = ns.clone().into();
        }
        let kubeconfig = dir.join("config");
        std::fs::write(&kubeconfig, config.to_string()).unwrap();
        let cluster = Self {
            server,
            kubeconfig,
            ns,
        };
        // `kubectl create namespace` would send protobuf, which the dev
        // server does not speak (docs/dev-apiserver.md); apply sends JSON.
        let manifest = dir.join("namespace.yaml");
        std::fs::write(
            &manifest,
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n",
                cluster.ns
            ),
        )
        .unwrap();
        cluster
            .ok(&["apply", "-f", manifest.to_str().unwrap()])
            .await;
        cluster
    }

    async fn kubectl(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(kubectl_binary())
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.kubeconfig.parent().unwrap())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .await
            .expect("kubectl runs")
    }

    /// Runs kubectl and returns its standard output; fails the test on error.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// A cluster with our CRDs applied, as a user applies them.
    async fn with_crds(name: &str) -> Self {
        let cluster = Self::start(name).await;
        let mut flags: Vec<&str> = Vec::new();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let args: Vec<&str> = ["apply"]
                .into_iter()
                .chain(flags.iter().copied())
                .chain(["-f", "crds/"])
                .collect();
            let out = cluster.kubectl(&args).await;
            if out.status.success() {
                break;
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains(r#"unknown field "x-kubernetes-validations""#) && flags.is_empty() {
                // kubectl checks manifests against the server's OpenAPI,
                // and servers before 1.25 have no x-kubernetes-validations
                // there: on those, and only there, CRDs with CEL rules need
                // --validate=false (the server then drops the rules).
                assert!(cluster.server_minor().await < 25, "{stderr}");
                flags.push("--validate=false");
            } else if (stderr.contains("AlreadyExists") || stderr.contains("modified"))
                && attempts < 5
            {
                // Tests sharing a real cluster apply the CRDs at once.
            } else {
                panic!("kubectl apply -f crds/ failed: {stderr}");
            }
        }
        cluster
            .ok(&[
                "wait",
                "--for=condition=Established",
                "crd/browserfleets.browserfleet.io",
                "crd/browsersessions.browserfleet.io",
                "--timeout=60s",
            ])
            .await;
        cluster
    }

    /// The server's minor version.
    async fn server_minor(&self) -> u32 {
        let out = self.ok(&["version", "-o", "json"]).await;
        let version: serde_json::Value = serde_json::from_str(&out).expect("version JSON");
        version["serverVersion"]["minor"]
            .as_str()
            .and_then(|m| m.trim_end_matches('+').parse().ok())
            .expect("server minor version")
    }

    /// Whether the server kept, and so enforces, our CRDs' CEL rules.
    async fn enforces_cel(&self) -> bool {
        let rules = self
            .ok(&[
                "get",
                "crd",
                "browserfleets.browserfleet.io",
                "-o",
                "jsonpath={.spec.versions[0].schema.openAPIV3Schema.properties.spec.x-kubernetes-validations}",
            ])
            .await;
        !rules.trim().is_empty()
    }
}

#[tokio::test]
async fn apply_crds_and_valid_examples() {
    let cluster = Cluster::with_crds("apply").await;
    let out = cluster.ok(&["apply", "-f", "examples/"]).await;
    for created in [
        "browserfleet.browserfleet.io/minimal created",
        "browserfleet.browserfleet.io/checkout-tests created",
        "browsersession.browserfleet.io/checkout-smoke created",
    ] {
        assert!(out.contains(created), "{out}");
    }
    // A second apply changes nothing.
    let again = cluster.ok(&["apply", "-f", "examples/"]).await;
    assert!(
        again.contains("browserfleet.browserfleet.io/minimal unchanged"),
        "{again}"
    );
}

#[tokio::test]
async fn invalid_examples_are_refused_with_their_message() {
    let cluster = Cluster::with_crds("invalid").await;
    let enforces_cel = cluster.enforces_cel().await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let expected = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap();
        let out = cluster
            .kubectl(&["apply", "-f", path.to_str().unwrap()])
            .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if text
            .lines()
            .next()
            .is_some_and(|l| l.contains("(CEL rule)"))
            && !enforces_cel
        {
            // The known gap of servers without CEL (before 1.25): the
            // operator's validate() reports these in the fleet's conditions.
            assert!(out.status.success(), "{}: {stderr}", path.display());
            continue;
        }
        assert!(!out.status.success(), "{} was accepted", path.display());
        // The server's refusal, or kubectl's own check against the
        // server's OpenAPI, which servers before field validation (1.25)
        // leave to kubectl.
        assert!(
            stderr.contains("is invalid")
                || (cluster.server.is_none() && stderr.contains("error validating data")),
            "{}: {stderr}",
            path.display()
        );
        // CEL rules print their message; schema errors name their field
        // (kube-apiserver 1.20 names the array, not the item).
        let field = expected.split(':').next().unwrap_or(expected);
        let array = field.split('[').next().unwrap_or(field);
        assert!(
            stderr.contains(expected)
                || stderr.contains(field)
                || (cluster.server.is_none() && stderr.contains(&format!("{array}: "))),
            "{}: {stderr} does not mention {expected:?}",
            path.display()
        );
    }
}

#[tokio::test]
async fn get_shows_the_printer_columns() {
    let cluster = Cluster::with_crds("get").await;
    cluster
        .ok(&["apply", "-f", "examples/fleet-minimal.yaml"])
        .await;
    let fleets = cluster.ok(&["get", "bfleet"]).await;
    let header: Vec<&str> = fleets.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "DESIRED", "READY", "SESSIONS", "CAPACITY", "QUEUE", "AGE"
        ]
    );
    assert!(
        fleets.lines().nth(1).unwrap().starts_with("minimal"),
        "{fleets}"
    );
    cluster.ok(&["apply", "-f", "examples/session.yaml"]).await;
    let sessions = cluster.ok(&["get", "bsess"]).await;
    let header: Vec<&str> = sessions
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "FLEET", "PHASE", "INSTANCE", "EXPIRES", "AGE"]
    );
    assert!(sessions.contains("checkout-smoke   minimal"), "{sessions}");
}

#[tokio::test]
async fn explain_reads_the_field_documentation() {
    let cluster = Cluster::with_crds("explain").await;
    // A real server publishes a new CRD's OpenAPI a little after it is
    // Established (1.20: within seconds); explain fails until then.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let out = loop {
        let out = cluster
            .kubectl(&["explain", "browserfleet.spec.capacity"])
            .await;
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            cluster.server.is_none() && std::time::Instant::now() < deadline,
            "kubectl explain failed: {stderr}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        out.contains("maxInstances") && out.contains("-required-"),
        "{out}"
    );
    assert!(out.contains("ceiling on what the fleet can cost"), "{out}");
}

#[tokio::test]
async fn server_side_apply_and_delete() {
    let cluster = Cluster::with_crds("ssa").await;
    let out = cluster
        .ok(&["apply", "--server-side", "-f", "examples/fleet-full.yaml"])
        .await;
    assert!(out.contains("serverside-applied"), "{out}");
    let yaml = cluster
        .ok(&[
            "get",
            "bfleet",
            "checkout-tests",
            "-o",
            "yaml",
            "--show-managed-fields",
        ])
        .await;
    assert!(yaml.contains("manager: kubectl"), "{yaml}");
    let deleted = cluster
        .ok(&["delete", "-f", "examples/fleet-full.yaml"])
        .await;
    assert!(deleted.contains("deleted"), "{deleted}");
    let gone = cluster.kubectl(&["get", "bfleet", "checkout-tests"]).await;
    assert!(String::from_utf8_lossy(&gone.stderr).contains("NotFound"));
}

#[tokio::test]
async fn get_watch_streams_changes() {
    let cluster = Cluster::with_crds("watch").await;
    cluster
        .ok(&["apply", "-f", "examples/fleet-minimal.yaml"])
        .await;
    let mut watcher = tokio::process::Command::new(kubectl_binary())
        .args([
            "get",
            "bfleet",
            "-w",
            "--output-watch-events",
            "--request-timeout=8s",
        ])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("HOME", cluster.kubeconfig.parent().unwrap())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl get -w starts");
    // kubectl lists, prints what it listed, then watches from the list's
    // resourceVersion: a change made after the first line is in the watch.
    let stdout = watcher.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut text = String::new();
    while !text.contains("ADDED") {
        let line = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
            .await
            .expect("the watch prints the fleet it listed")
            .expect("kubectl's output")
            .expect("a line before the watch ends");
        text.push_str(&line);
        text.push('\n');
    }
    cluster
        .ok(&[
            "patch",
            "bfleet",
            "minimal",
            "--type=merge",
            "-p",
            r#"{"spec":{"paused":true}}"#,
        ])
        .await;
    cluster.ok(&["delete", "bfleet", "minimal"]).await;
    let rest = async {
        while let Some(line) = lines.next_line().await.expect("kubectl's output") {
            text.push_str(&line);
            text.push('\n');
        }
    };
    tokio::time::timeout(Duration::from_secs(15), rest)
        .await
        .expect("watch ends by its request timeout");
    let _ = watcher.wait().await;
    for event in ["ADDED", "MODIFIED", "DELETED"] {
        assert!(text.contains(event), "no {event} in:\n{text}");
    }
    drop(cluster.server);
}

/// The built-in kinds our Helm chart creates, as a manifest for namespace
/// `ns` (cluster-scoped objects named after it); PodDisruptionBudget only
/// when `with_pdb` (policy/v1 came with 1.21).
fn chart_kinds_manifest(ns: &str, with_pdb: bool) -> String {
    let mut manifest = format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata:
  name: operator
---
apiVersion: v1
kind: Service
metadata:
  name: operator-metrics
spec:
  selector:
    app: operator
  ports:
  - name: metrics
    port: 8080
    targetPort: metrics
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: operator
spec:
  replicas: 2
  selector:
    matchLabels:
      app: operator
  template:
    metadata:
      labels:
        app: operator
    spec:
      serviceAccountName: operator
      containers:
      - name: operator
        image: browserfleet:dev
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {ns}-operator
rules:
- apiGroups: [browserfleet.io]
  resources: [browserfleets]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {ns}-operator
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {ns}-operator
subjects:
- kind: ServiceAccount
  name: operator
  namespace: {ns}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: leader-election
rules:
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: leader-election
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: leader-election
subjects:
- kind: ServiceAccount
  name: operator
  namespace: {ns}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: operator-settings
data:
  resync: 2s
"#
    );
    if with_pdb {
        manifest.push_str(
            "---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: operator\nspec:\n  maxUnavailable: 1\n  selector:\n    matchLabels:\n      app: operator\n",
        );
    }
    manifest
}

#[tokio::test]
async fn apply_get_and_delete_the_builtin_kinds_a_chart_creates() {
    let cluster = Cluster::start("builtins").await;
    let with_pdb = cluster.server_minor().await >= 21;
    let manifest = cluster.kubeconfig.with_file_name("chart-kinds.yaml");
    std::fs::write(&manifest, chart_kinds_manifest(&cluster.ns, with_pdb)).unwrap();
    let file = manifest.to_str().unwrap();
    let out = cluster.ok(&["apply", "-f", file]).await;
    let ns = &cluster.ns;
    let mut expected = vec![
        "serviceaccount/operator created".to_owned(),
        "service/operator-metrics created".to_owned(),
        "deployment.apps/operator created".to_owned(),
        format!("clusterrole.rbac.authorization.k8s.io/{ns}-operator created"),
        format!("clusterrolebinding.rbac.authorization.k8s.io/{ns}-operator created"),
        "role.rbac.authorization.k8s.io/leader-election created".to_owned(),
        "rolebinding.rbac.authorization.k8s.io/leader-election created".to_owned(),
        "configmap/operator-settings created".to_owned(),
    ];
    if with_pdb {
        expected.push("poddisruptionbudget.policy/operator created".to_owned());
    }
    for line in &expected {
        assert!(out.contains(line.as_str()), "{line} not in {out}");
    }
    let again = cluster.ok(&["apply", "-f", file]).await;
    assert!(
        again.contains("deployment.apps/operator unchanged"),
        "{again}"
    );
    // Short names resolve through discovery.
    let mut kinds = "deploy,sa,svc,cm,role,rolebinding".to_owned();
    if with_pdb {
        kinds.push_str(",pdb");
    }
    let names = cluster.ok(&["get", &kinds, "-o", "name"]).await;
    for name in [
        "deployment.apps/operator",
        "serviceaccount/operator",
        "service/operator-metrics",
        "configmap/operator-settings",
        "role.rbac.authorization.k8s.io/leader-election",
        "rolebinding.rbac.authorization.k8s.io/leader-election",
    ] {
        assert!(names.contains(name), "{name} not in {names}");
    }
    if with_pdb {
        assert!(
            names.contains("poddisruptionbudget.policy/operator"),
            "{names}"
        );
    }
    let role = cluster
        .ok(&[
            "get",
            "clusterrole",
            &format!("{ns}-operator"),
            "-o",
            "jsonpath={.rules[0].verbs}",
        ])
        .await;
    assert!(role.contains("watch"), "{role}");
    // `kubectl get all` shows the kinds in the `all` category.
    let all = cluster.ok(&["get", "all", "-o", "name"]).await;
    assert!(all.contains("deployment.apps/operator"), "{all}");
    assert!(all.contains("service/operator-metrics"), "{all}");
    let replicas = cluster
        .ok(&[
            "get",
            "deploy",
            "operator",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .await;
    assert_eq!(replicas, "2");
    let deleted = cluster.ok(&["delete", "-f", file]).await;
    for line in &expected {
        // `kind/name created` is reported as `kind "name" deleted`.
        let (kind, name) = line.trim_end_matches(" created").split_once('/').unwrap();
        let line = format!("{kind} \"{name}\" deleted");
        assert!(deleted.contains(&line), "{line} not in {deleted}");
    }
    let gone = cluster.kubectl(&["get", "deploy", "operator"]).await;
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("NotFound"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
}
