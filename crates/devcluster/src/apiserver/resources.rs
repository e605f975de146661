//! The resource types the server serves: a few built-in kinds the operator and
//! kubectl use, and every version of every registered CRD.

use serde_json::{Value, json};

use super::go_regexp::go_regexp_error;
use super::status::Cause;

/// One served resource type (one group, version and plural).
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: String,
    /// API version within the group.
    pub version: String,
    /// Plural name used in paths.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Kind of its objects.
    pub kind: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// `kubectl` short names.
    pub short_names: Vec<String>,
    /// Categories such as `all`.
    pub categories: Vec<String>,
    /// Whether `/status` is a subresource (and the main resource ignores status).
    pub status_subresource: bool,
    /// Whether objects carry a `metadata.generation` that changes with
    /// everything outside metadata and status (custom resources, CRDs, and
    /// built-in kinds whose controllers report an `observedGeneration`).
    pub generation: bool,
    /// The structural schema of a CRD version; `None` for built-in kinds.
    pub schema: Option<Value>,
    /// `additionalPrinterColumns` of a CRD version.
    pub printer_columns: Vec<Value>,
}

impl ResourceType {
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// True for custom resources, whose objects get a `metadata.generation`.
    pub fn is_custom(&self) -> bool {
        self.schema.is_some()
    }

    /// Entries of an `APIResourceList` for this type and its subresources.
    pub fn discovery_entries(&self) -> Vec<Value> {
        let mut entry = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        });
        if !self.short_names.is_empty() {
            entry["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            entry["categories"] = json!(self.categories);
        }
        let mut entries = vec![entry];
        if self.status_subresource {
            entries.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        entries
    }
}

fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    short_names: &[&str],
) -> ResourceType {
    ResourceType {
        group: group.to_owned(),
        version: version.to_owned(),
        plural: plural.to_owned(),
        singular: kind.to_lowercase(),
        kind: kind.to_owned(),
        namespaced,
        short_names: short_names.iter().map(|s| (*s).to_owned()).collect(),
        categories: Vec::new(),
        status_subresource: false,
        generation: false,
        schema: None,
        printer_columns: Vec::new(),
    }
}

/// A built-in kind with a status subresource and a generation, in the
/// `all` category when `in_all` (what `kubectl get all` shows).
fn workload(
    group: &str,
    plural: &str,
    kind: &str,
    short_names: &[&str],
    in_all: bool,
) -> ResourceType {
    let mut rt = builtin(group, "v1", plural, kind, true, short_names);
    rt.status_subresource = true;
    rt.generation = true;
    if in_all {
        rt.categories = vec!["all".to_owned()];
    }
    rt
}

/// The built-in kinds the operator, kubectl and Helm (for our chart) need,
/// with kube-apiserver's short names, categories and scopes.
pub fn builtins() -> Vec<ResourceType> {
    let mut namespaces = builtin("", "v1", "namespaces", "Namespace", false, &["ns"]);
    namespaces.status_subresource = true;
    let mut services = workload("", "services", "Service", &["svc"], true);
    // kube-apiserver bumps no generation for Services.
    services.generation = false;
    let mut crds = builtin(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
    );
    crds.generation = true;
    let rbac = "rbac.authorization.k8s.io";
    vec![
        namespaces,
        builtin("", "v1", "secrets", "Secret", true, &[]),
        builtin("", "v1", "configmaps", "ConfigMap", true, &["cm"]),
        builtin("", "v1", "serviceaccounts", "ServiceAccount", true, &["sa"]),
        services,
        workload("apps", "deployments", "Deployment", &["deploy"], true),
        workload(
            "policy",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            &["pdb"],
            false,
        ),
        builtin(rbac, "v1", "clusterroles", "ClusterRole", false, &[]),
        builtin(
            rbac,
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            &[],
        ),
        builtin(rbac, "v1", "roles", "Role", true, &[]),
        builtin(rbac, "v1", "rolebindings", "RoleBinding", true, &[]),
        builtin("", "v1", "events", "Event", true, &["ev"]),
        builtin("events.k8s.io", "v1", "events", "Event", true, &["ev"]),
        builtin("coordination.k8s.io", "v1", "leases", "Lease", true, &[]),
        crds,
    ]
}

/// Where kube-apiserver reports an error in version `i`'s schema: in its
/// internal form a schema all versions share is the CRD's one
/// `spec.validation`, checked once (`None` for the other versions).
fn schema_path(versions: &[Value], i: usize) -> Option<String> {
    fn schema(version: &Value) -> &Value {
        &version["schema"]["openAPIV3Schema"]
    }
    if !versions.iter().all(|v| schema(v) == schema(&versions[0])) {
        Some(format!("spec.versions[{i}].schema.openAPIV3Schema"))
    } else if i == 0 {
        Some("spec.validation.openAPIV3Schema".into())
    } else {
        None
    }
}

/// Refuses every `pattern` in `schema` that Go's `regexp` would refuse, as
/// kube-apiserver does (see [`super::go_regexp`]).
fn check_patterns(schema: &Value, path: &str, causes: &mut Vec<Cause>) {
    let Some(node) = schema.as_object() else {
        return;
    };
    if let Some(pattern) = node.get("pattern").and_then(Value::as_str)
        && let Some(error) = go_regexp_error(pattern)
    {
        causes.push(Cause {
            reason: "FieldValueInvalid",
            message: format!(
                "Invalid value: {pattern:?}: must be a valid regular expression, but isn't: {error}"
            ),
            field: format!("{path}.pattern"),
        });
    }
    for key in ["properties", "patternProperties", "definitions"] {
        for (name, child) in node
            .get(key)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            check_patterns(child, &format!("{path}.{key}[{name}]"), causes);
        }
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(child) = node.get(key) {
            check_patterns(child, &format!("{path}.{key}"), causes);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        for (i, child) in node
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            check_patterns(child, &format!("{path}.{key}[{i}]"), causes);
        }
    }
}

/// The resource types a CRD object defines, one per served version, or why
/// the CRD is invalid.
pub fn from_crd(crd: &Value) -> Result<Vec<ResourceType>, Vec<Cause>> {
    let spec = &crd["spec"];
    let mut causes = Vec::new();
    let text = |v: &Value, field: &str, causes: &mut Vec<Cause>| -> String {
        match v.as_str().filter(|s| !s.is_empty()) {
            Some(s) => s.to_owned(),
            None => {
                causes.push(Cause {
                    reason: "FieldValueRequired",
                    message: "Required value".into(),
                    field: field.into(),
                });
                String::new()
            }
        }
    };
    let group = text(&spec["group"], "spec.group", &mut causes);
    let plural = text(&spec["names"]["plural"], "spec.names.plural", &mut causes);
    let kind = text(&spec["names"]["kind"], "spec.names.kind", &mut causes);
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        causes.push(Cause {
            reason: "FieldValueInvalid",
            message: format!("must be spec.names.plural+\".\"+spec.group ({plural}.{group})"),
            field: "metadata.name".into(),
        });
    }
    let namespaced = match spec["scope"].as_str() {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        _ => {
            causes.push(Cause {
                reason: "FieldValueNotSupported",
                message: "supported values: \"Cluster\", \"Namespaced\"".into(),
                field: "spec.scope".into(),
            });
            false
        }
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause {
            reason: "FieldValueRequired",
            message: "must have exactly one version marked as storage version".into(),
            field: "spec.versions".into(),
        });
    }
    let mut types = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let version = text(&v["name"], &format!("spec.versions[{i}].name"), &mut causes);
        let schema = v["schema"]["openAPIV3Schema"].clone();
        if !schema.is_object() {
            causes.push(Cause {
                reason: "FieldValueRequired",
                message: "schemas are required".into(),
                field: format!("spec.versions[{i}].schema.openAPIV3Schema"),
            });
        }
        if let Some(path) = schema_path(&versions, i) {
            check_patterns(&schema, &path, &mut causes);
        }
        if v["served"].as_bool() == Some(false) {
            continue;
        }
        types.push(ResourceType {
            group: group.clone(),
            version,
            plural: plural.clone(),
            singular: spec["names"]["singular"]
                .as_str()
                .map_or_else(|| kind.to_lowercase(), str::to_owned),
            kind: kind.clone(),
            namespaced,
            short_names: strings(&spec["names"]["shortNames"]),
            categories: strings(&spec["names"]["categories"]),
            status_subresource: v["subresources"]["status"].is_object(),
            generation: true,
            schema: Some(schema),
            printer_columns: v["additionalPrinterColumns"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        });
    }
    if causes.is_empty() {
        Ok(types)
    } else {
        Err(causes)
    }
}
