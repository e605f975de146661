//! Every manifest in `examples/` is checked the way kube-apiserver and the
//! operator check it: against the generated OpenAPI schema (with a JSON-schema
//! validator), against the CRD's CEL rules, and against `validate()`. Valid
//! examples pass all three; each one in `examples/invalid/` breaks exactly one
//! rule and fails with the message its `# expect:` line names.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use browserfleet::api::{self, BrowserFleet, BrowserSession};
use kube::core::cel::Validator;
use serde_json::Value;

/// What checking one manifest found.
#[derive(Debug)]
struct Findings {
    /// JSON-schema errors, as `path: message`.
    schema: Vec<String>,
    /// Messages of failed CEL rules (empty when the schema already failed).
    cel: BTreeSet<String>,
    /// Messages from `validate()` (empty when the schema already failed).
    rust: BTreeSet<String>,
}

impl Findings {
    /// What a user sees first: schema errors, else the rule errors.
    fn reported(&self) -> Vec<String> {
        if self.schema.is_empty() {
            self.cel.iter().cloned().collect()
        } else {
            self.schema.clone()
        }
    }
}

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn schema_of(kind: &str) -> Value {
    let crd = api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for kind {kind}"));
    let schema = crd.spec.versions[0]
        .schema
        .clone()
        .and_then(|s| s.open_api_v3_schema)
        .expect("openAPIV3Schema");
    serde_json::to_value(schema).expect("schema serializes")
}

/// `/spec/instance/subnetIds/0` → `spec.instance.subnetIds[0]`, as kubectl shows it.
fn field_path(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').filter(|s| !s.is_empty()) {
        if segment.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    out
}

fn check(manifest: &Value) -> Findings {
    let kind = manifest["kind"].as_str().expect("manifest has a kind");
    let schema = schema_of(kind);
    let validator = jsonschema::draft4::new(&schema).expect("schema compiles as JSON schema");
    let schema_errors: Vec<String> = validator
        .iter_errors(manifest)
        .map(|e| format!("{}: {e}", field_path(e.instance_path().as_str())))
        .collect();
    if !schema_errors.is_empty() {
        return Findings {
            schema: schema_errors,
            cel: BTreeSet::new(),
            rust: BTreeSet::new(),
        };
    }
    let cel = match Validator::new().validate(&schema, manifest, None) {
        Ok(()) => BTreeSet::new(),
        Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
    };
    let rust = match kind {
        "BrowserFleet" => {
            let fleet: BrowserFleet =
                serde_json::from_value(manifest.clone()).expect("typed fleet");
            fleet.spec.validate().err()
        }
        "BrowserSession" => {
            let session: BrowserSession =
                serde_json::from_value(manifest.clone()).expect("typed session");
            session.spec.validate().err()
        }
        other => panic!("unexpected kind {other}"),
    };
    let rust = rust
        .map(|v| v.messages().into_iter().map(str::to_owned).collect())
        .unwrap_or_default();
    Findings {
        schema: Vec::new(),
        cel,
        rust,
    }
}

fn load(path: &Path) -> (String, Value) {
    let text = std::fs::read_to_string(path).expect("readable example");
    let value: Value = serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
    (text, value)
}

#[test]
fn valid_examples_pass_schema_cel_and_validate() {
    let files = yaml_files(&examples_dir());
    assert!(
        files.len() >= 3,
        "expected fleet-minimal, fleet-full and session"
    );
    for path in files {
        let (_, manifest) = load(&path);
        let findings = check(&manifest);
        assert!(
            findings.schema.is_empty() && findings.cel.is_empty() && findings.rust.is_empty(),
            "{} should be valid: {findings:?}",
            path.display()
        );
    }
}

#[test]
fn each_invalid_example_breaks_exactly_its_rule() {
    let files = yaml_files(&examples_dir().join("invalid"));
    assert!(
        files.len() >= 4,
        "the issue asks for at least four invalid examples"
    );
    for path in files {
        let (text, manifest) = load(&path);
        let expected = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", path.display()));
        let findings = check(&manifest);
        let reported = findings.reported();
        assert!(
            reported.len() == 1 && reported[0].contains(expected),
            "{}: expected exactly one error containing {expected:?}, got {reported:?}",
            path.display()
        );
    }
}

#[test]
fn cel_rules_and_validate_agree_on_every_example() {
    let mut files = yaml_files(&examples_dir());
    files.extend(yaml_files(&examples_dir().join("invalid")));
    for path in files {
        let (_, manifest) = load(&path);
        let findings = check(&manifest);
        assert_eq!(
            findings.cel,
            findings.rust,
            "{}: CEL and validate() disagree",
            path.display()
        );
    }
}

#[test]
fn schema_defaults_agree_with_serde_defaults() {
    // kube-apiserver fills in schema defaults; the operator deserializes with
    // serde defaults. Both must produce the same spec.
    for path in yaml_files(&examples_dir()) {
        let (_, manifest) = load(&path);
        let kind = manifest["kind"].as_str().expect("kind").to_owned();
        let defaulted = kube::core::cel::apply_defaults(&schema_of(&kind), &manifest);
        match kind.as_str() {
            "BrowserFleet" => {
                let raw: BrowserFleet = serde_json::from_value(manifest).unwrap();
                let by_schema: BrowserFleet = serde_json::from_value(defaulted).unwrap();
                assert_eq!(raw, by_schema, "{}", path.display());
            }
            _ => {
                let raw: BrowserSession = serde_json::from_value(manifest).unwrap();
                let by_schema: BrowserSession = serde_json::from_value(defaulted).unwrap();
                assert_eq!(raw, by_schema, "{}", path.display());
            }
        }
    }
}

/// Paths of object keys in `manifest` that `typed` (the manifest read into the
/// Rust type and written back) does not have: fields the schema would prune.
fn unknown_fields(manifest: &Value, typed: &Value, path: &str, found: &mut Vec<String>) {
    match (manifest, typed) {
        (Value::Object(m), Value::Object(t)) => {
            for (k, v) in m {
                let child = format!("{path}.{k}");
                match t.get(k) {
                    Some(tv) => unknown_fields(v, tv, &child, found),
                    None => found.push(child),
                }
            }
        }
        (Value::Array(m), Value::Array(t)) => {
            for (i, (mv, tv)) in m.iter().zip(t).enumerate() {
                unknown_fields(mv, tv, &format!("{path}[{i}]"), found);
            }
        }
        _ => {}
    }
}

#[test]
fn examples_use_only_fields_the_schema_knows() {
    // kube-apiserver silently prunes unknown fields, so a misspelt field in an
    // example would teach users a setting that does nothing.
    let mut files = yaml_files(&examples_dir());
    files.extend(yaml_files(&examples_dir().join("invalid")));
    for path in files {
        let (_, manifest) = load(&path);
        let kind = manifest["kind"].as_str().expect("kind").to_owned();
        let defaulted = kube::core::cel::apply_defaults(&schema_of(&kind), &manifest);
        let typed = match kind.as_str() {
            "BrowserFleet" => serde_json::from_value::<BrowserFleet>(defaulted.clone())
                .map(|f| serde_json::to_value(f).unwrap()),
            _ => serde_json::from_value::<BrowserSession>(defaulted.clone())
                .map(|s| serde_json::to_value(s).unwrap()),
        };
        // Invalid examples that miss a required field do not deserialize.
        let Ok(typed) = typed else { continue };
        let mut found = Vec::new();
        unknown_fields(&defaulted, &typed, "", &mut found);
        found.retain(|f| !f.starts_with(".metadata") && f != ".apiVersion" && f != ".kind");
        assert!(
            found.is_empty(),
            "{}: unknown fields {found:?}",
            path.display()
        );
    }
}
