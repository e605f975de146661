//! The CRD manifests in `crds/` are what the Rust types generate, and they are
//! structural schemas that kube-apiserver accepts.

use std::path::PathBuf;

use browserfleet::api;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Map, Value};

fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crds")
}

#[test]
fn crds_directory_matches_the_rust_types() {
    let manifests = api::crd_manifests().expect("CRDs render as YAML");
    let mut expected_files: Vec<String> = manifests.iter().map(|m| m.file_name.clone()).collect();
    expected_files.sort();
    for manifest in &manifests {
        let path = crds_dir().join(&manifest.file_name);
        let on_disk = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{} is missing ({e}); run `make crds`", path.display()));
        assert!(
            on_disk == manifest.yaml,
            "{} differs from the Rust types; run `make crds` and commit the result",
            path.display()
        );
    }
    let mut files_on_disk: Vec<String> = std::fs::read_dir(crds_dir())
        .expect("crds/ exists")
        .map(|e| {
            e.expect("readable entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    files_on_disk.sort();
    assert_eq!(files_on_disk, expected_files, "crds/ holds stray files");
}

#[test]
fn crd_yaml_reads_back_as_the_same_definition() {
    // Guards against a YAML emitter that quotes or folds a CEL rule, pattern or
    // description into something else.
    for (crd, manifest) in api::crds().iter().zip(api::crd_manifests().unwrap()) {
        let parsed: CustomResourceDefinition =
            serde_saphyr::from_str(&manifest.yaml).expect("generated YAML parses");
        assert_eq!(&parsed, crd, "{} does not round-trip", manifest.file_name);
    }
}

#[test]
fn every_cel_rule_compiles() {
    for crd in api::crds() {
        let schema = open_api_schema(&crd);
        let compiled = kube::core::cel::compile_schema(&schema);
        assert!(
            !compiled.has_errors(),
            "{}: {:?}",
            crd.metadata.name.unwrap_or_default(),
            compiled.compilation_errors()
        );
    }
}

#[test]
fn generated_schemas_are_structural() {
    for crd in api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let schema = open_api_schema(&crd);
        let mut problems = Vec::new();
        check_root(&schema, &mut problems);
        check_node(&schema, "", &mut problems);
        assert!(
            problems.is_empty(),
            "{name} is not structural:\n{}",
            problems.join("\n")
        );
    }
}

#[test]
fn structural_check_catches_what_kube_apiserver_refuses() {
    // The checker itself must fail on each shape kube-apiserver rejects, or the
    // test above proves nothing.
    let broken = [
        serde_json::json!({"type": "object", "properties": {"a": {"$ref": "#/definitions/A"}}}),
        serde_json::json!({"type": "object", "properties": {"a": {"description": "no type"}}}),
        serde_json::json!({"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}),
        serde_json::json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "string"}}),
        serde_json::json!({"type": "object", "properties": {"a": {"type": "string", "x-kubernetes-list-type": "set"}}}),
        serde_json::json!({"type": "object", "properties": {"a": {"type": "integer", "exclusiveMinimum": 0}}}),
        serde_json::json!({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "string"}, "uniqueItems": true}}}),
        serde_json::json!({"type": "object", "properties": {"a": {"type": "string", "const": "x"}}}),
        serde_json::json!({"type": "object", "required": ["b"], "properties": {"a": {"type": "string"}}}),
    ];
    for schema in broken {
        let mut problems = Vec::new();
        check_node(&schema, "", &mut problems);
        assert!(!problems.is_empty(), "accepted {schema}");
    }
}

fn open_api_schema(crd: &CustomResourceDefinition) -> Value {
    let version = &crd.spec.versions[0];
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("CRD has an openAPIV3Schema");
    serde_json::to_value(schema).expect("schema serializes")
}

/// Keys of apiextensions.k8s.io/v1 JSONSchemaProps; anything else is refused or
/// silently dropped by kube-apiserver.
const ALLOWED_KEYS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "default",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "multipleOf",
    "enum",
    "maxProperties",
    "minProperties",
    "required",
    "items",
    "allOf",
    "oneOf",
    "anyOf",
    "not",
    "properties",
    "additionalProperties",
    "nullable",
    "example",
    "externalDocs",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-list-type",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
];

const TYPES: &[&str] = &["object", "array", "string", "integer", "number", "boolean"];

fn check_root(schema: &Value, problems: &mut Vec<String>) {
    if schema.get("type") != Some(&Value::from("object")) {
        problems.push("root: must be of type object".into());
    }
    let metadata = schema.pointer("/properties/metadata");
    if let Some(props) = metadata
        .and_then(|m| m.get("properties"))
        .and_then(Value::as_object)
    {
        // At the root, only metadata.name and metadata.generateName may be constrained.
        for key in props.keys() {
            if key != "name" && key != "generateName" {
                problems.push(format!("root: metadata.{key} may not be specified"));
            }
        }
    }
}

fn check_node(node: &Value, path: &str, problems: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        problems.push(format!("{path}: schema node is not an object"));
        return;
    };
    check_keys(obj, path, problems);
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let ty = obj.get("type").and_then(Value::as_str);
    match ty {
        Some(t) if TYPES.contains(&t) => {}
        Some(t) => problems.push(format!("{path}: unknown type {t}")),
        None if int_or_string || preserve => {}
        None => problems.push(format!("{path}: missing type")),
    }
    for junctor in ["allOf", "anyOf", "oneOf", "not"] {
        if let Some(value) = obj.get(junctor) {
            let branches: Vec<&Value> = match value {
                Value::Array(items) => items.iter().collect(),
                other => vec![other],
            };
            for branch in branches {
                check_junctor_branch(
                    branch,
                    int_or_string,
                    &format!("{path}.{junctor}"),
                    problems,
                );
            }
        }
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        problems.push(format!(
            "{path}: properties and additionalProperties are exclusive"
        ));
    }
    if obj.get("additionalProperties") == Some(&Value::Bool(false)) {
        problems.push(format!(
            "{path}: additionalProperties: false is not allowed"
        ));
    }
    for bound in ["exclusiveMinimum", "exclusiveMaximum"] {
        if obj.get(bound).is_some_and(|v| !v.is_boolean()) {
            problems.push(format!("{path}: {bound} must be a boolean (OpenAPI v3.0)"));
        }
    }
    if obj.get("uniqueItems") == Some(&Value::Bool(true)) {
        problems.push(format!("{path}: uniqueItems: true is not allowed"));
    }
    if obj.get("nullable").is_some_and(|v| !v.is_boolean()) {
        problems.push(format!("{path}: nullable must be a boolean"));
    }
    check_extensions(obj, ty, path, problems);
    check_children(obj, ty, path, problems);
}

fn check_keys(obj: &Map<String, Value>, path: &str, problems: &mut Vec<String>) {
    for key in obj.keys() {
        if !ALLOWED_KEYS.contains(&key.as_str()) {
            problems.push(format!(
                "{path}: key {key} is not allowed in a structural schema"
            ));
        }
    }
}

fn check_junctor_branch(
    branch: &Value,
    int_or_string: bool,
    path: &str,
    problems: &mut Vec<String>,
) {
    let Some(obj) = branch.as_object() else {
        problems.push(format!("{path}: branch is not an object"));
        return;
    };
    check_keys(obj, path, problems);
    if obj.get("type") == Some(&Value::from("null")) {
        problems.push(format!("{path}: use nullable instead of a null type"));
    }
    for forbidden in [
        "description",
        "default",
        "additionalProperties",
        "nullable",
        "title",
    ] {
        if obj.contains_key(forbidden) {
            problems.push(format!("{path}: {forbidden} not allowed inside a junctor"));
        }
    }
    if obj.contains_key("type") && !int_or_string {
        problems.push(format!("{path}: type not allowed inside a junctor"));
    }
}

fn check_extensions(
    obj: &Map<String, Value>,
    ty: Option<&str>,
    path: &str,
    problems: &mut Vec<String>,
) {
    if let Some(list_type) = obj.get("x-kubernetes-list-type") {
        if ty != Some("array") {
            problems.push(format!("{path}: x-kubernetes-list-type on a non-array"));
        }
        if !["atomic", "set", "map"].contains(&list_type.as_str().unwrap_or_default()) {
            problems.push(format!(
                "{path}: unknown x-kubernetes-list-type {list_type}"
            ));
        }
    }
    if let Some(keys) = obj.get("x-kubernetes-list-map-keys") {
        if obj.get("x-kubernetes-list-type") != Some(&Value::from("map")) {
            problems.push(format!("{path}: list-map-keys without list-type map"));
        }
        let required = obj
            .get("items")
            .and_then(|i| i.get("required"))
            .and_then(Value::as_array);
        for key in keys.as_array().into_iter().flatten() {
            let defaulted = key
                .as_str()
                .and_then(|k| obj.get("items")?.get("properties")?.get(k)?.get("default"))
                .is_some();
            if !required.is_some_and(|r| r.contains(key)) && !defaulted {
                problems.push(format!(
                    "{path}: list map key {key} must be required or defaulted"
                ));
            }
        }
    }
    if obj.contains_key("x-kubernetes-map-type") && ty != Some("object") {
        problems.push(format!("{path}: x-kubernetes-map-type on a non-object"));
    }
    for rule in obj
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if !rule.get("rule").is_some_and(Value::is_string) {
            problems.push(format!("{path}: validation without a rule: {rule}"));
        }
        for key in rule.as_object().into_iter().flat_map(|r| r.keys()) {
            let known = [
                "rule",
                "message",
                "messageExpression",
                "fieldPath",
                "reason",
                "optionalOldSelf",
            ];
            if !known.contains(&key.as_str()) {
                problems.push(format!("{path}: unknown validation key {key}"));
            }
        }
    }
}

fn check_children(
    obj: &Map<String, Value>,
    ty: Option<&str>,
    path: &str,
    problems: &mut Vec<String>,
) {
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        if ty != Some("object") {
            problems.push(format!("{path}: properties on a non-object"));
        }
        for (name, child) in props {
            check_node(child, &format!("{path}.{name}"), problems);
        }
        for required in obj
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !required.as_str().is_some_and(|r| props.contains_key(r)) {
                problems.push(format!("{path}: required {required} is not a property"));
            }
        }
    } else if obj.contains_key("required") {
        problems.push(format!("{path}: required without properties"));
    }
    if let Some(extra) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        check_node(extra, &format!("{path}.*"), problems);
    }
    match obj.get("items") {
        Some(items @ Value::Object(_)) => check_node(items, &format!("{path}[]"), problems),
        Some(_) => problems.push(format!("{path}: items must be a single schema")),
        None if ty == Some("array") => problems.push(format!("{path}: array without items")),
        None => {}
    }
}

/// Runs `tests/go/regexp_check.go` with the machine's Go (installed by
/// scripts/install-kube-apiserver.sh, which `make test` runs): for each
/// pattern, Go's `regexp.Compile` error or `None`.
fn go_regexp_errors(patterns: &[String]) -> Vec<Option<String>> {
    use std::io::Write;
    let program = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/go/regexp_check.go");
    let cache = std::env::temp_dir().join("bf-go-cache");
    let mut child = std::process::Command::new("go")
        .arg("run")
        .arg(&program)
        .env("GOCACHE", &cache)
        .env("GO111MODULE", "off")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect(
            "`go` runs: install it with `bash scripts/install-kube-apiserver.sh` (make test does)",
        );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(patterns).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "go run {} failed", program.display());
    serde_json::from_slice(&out.stdout).expect("the Go program prints a JSON array")
}

fn collect_patterns(node: &Value, path: &str, found: &mut Vec<(String, String)>) {
    match node {
        Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("pattern", Value::String(p)) => found.push((path.to_owned(), p.clone())),
                    _ => collect_patterns(child, &format!("{path}.{key}"), found),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_patterns(item, &format!("{path}[{i}]"), found);
            }
        }
        _ => {}
    }
}

#[test]
fn every_pattern_in_crds_compiles_with_gos_regexp() {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(crds_dir()).expect("crds/ exists") {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let crd: Value = serde_saphyr::from_str(&text).expect("CRD is YAML");
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        collect_patterns(&crd, &name, &mut found);
    }
    assert!(
        found.len() >= 10,
        "expected the CRDs' patterns, found {found:?}"
    );
    let patterns: Vec<String> = found.iter().map(|(_, p)| p.clone()).collect();
    let refused: Vec<String> = found
        .iter()
        .zip(go_regexp_errors(&patterns))
        .filter_map(|((path, _), error)| error.map(|e| format!("{path}: {e}")))
        .collect();
    assert!(
        refused.is_empty(),
        "kube-apiserver would refuse: {refused:#?}"
    );
}

#[test]
fn dev_apiserver_refuses_the_patterns_go_refuses() {
    // Patterns Rust's regex accepts; Go refuses some of them. The development
    // API server's check must reach Go's verdict on each.
    let patterns: Vec<String> = [
        "^[A-Za-z0-9_.\\-/]{1,2048}$",
        "^[a-z]{1,1000}$",
        "a{1001}",
        "a{1001,}",
        "(a{2}){1000}",
        "(a{2}){500}",
        "((ab){10}c){101}",
        "((ab){10}c){100}",
        "(a{0}){5000}",
        "a**",
        "a{2}{3}",
        "a{2}*",
        "(a*)+",
        "\\u00e9",
        "\\u{e9}",
        "\\x{e9}",
        "\\p{Letter}",
        "\\p{Uppercase}",
        "\\p{ASCII}",
        "\\p{Script=Greek}",
        "\\p{Lu}",
        "\\pL",
        "\\p{Old_Italic}",
        "[\\p{Han}a-z]",
        "[a--b]",
        "(?P<a.b>x)",
        "(?P<a_1>x)",
        "(?<name>a)",
        "(?P<name>a)",
        "(?x)a b",
        "(?i)abc",
        "(?ms:^a.$)",
        "(?u:\\w)",
        "(?U)a+",
        "\\p{Greek}+",
        "[[:alpha:]]",
        "^https?://[^\\s]+/[0-9]{12}/[A-Za-z0-9_-]{1,80}(\\.fifo)?$",
    ]
    .map(str::to_owned)
    .to_vec();
    let go = go_regexp_errors(&patterns);
    for (pattern, go_error) in patterns.iter().zip(go) {
        let ours = devcluster::apiserver::go_regexp_error(pattern);
        assert_eq!(
            ours.is_some(),
            go_error.is_some(),
            "{pattern:?}: Go says {go_error:?}, the dev server says {ours:?}"
        );
        if let (Some(ours), Some(go)) = (&ours, &go_error)
            && go.contains("invalid repeat count")
        {
            assert_eq!(ours, go, "{pattern:?}");
        }
    }
    // Stricter on purpose: Go reads these as plain characters, Rust as set
    // operations, so a CRD using them would match differently on the two
    // servers; the dev server refuses them.
    let stricter: Vec<String> = ["[a&&b]", "[a~~b]"].map(str::to_owned).to_vec();
    for (pattern, go_error) in stricter.iter().zip(go_regexp_errors(&stricter)) {
        assert_eq!(go_error, None, "{pattern:?}");
        assert!(
            devcluster::apiserver::go_regexp_error(pattern).is_some(),
            "{pattern:?}"
        );
    }
}
