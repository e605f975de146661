//! OpenAPI v3 as far as kubectl needs it: `kubectl apply` checks that the
//! PATCH operation of a kind takes the `fieldValidation` parameter (and then
//! leaves validation to the server), and `kubectl explain` reads a kind's
//! schema with its descriptions. Built-in kinds get an open schema.

use serde_json::{Value, json};

use super::resources::ResourceType;

/// The group-version path of an OpenAPI v3 document: `api/v1` or
/// `apis/{group}/{version}`.
pub fn group_version_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `GET /openapi/v3`: where each group version's document is.
pub fn root(types: &[ResourceType]) -> Value {
    let mut paths = serde_json::Map::new();
    for t in types {
        let path = group_version_path(&t.group, &t.version);
        let url = format!(
            "/openapi/v3/{path}?hash={}",
            document_hash(types, &t.group, &t.version)
        );
        paths.insert(path, json!({"serverRelativeURL": url}));
    }
    json!({"paths": paths})
}

/// Changes whenever the types of a group version do, so that kubectl's
/// cache of documents is refreshed when a CRD changes.
fn document_hash(types: &[ResourceType], group: &str, version: &str) -> String {
    let text = document(types, group, version).to_string();
    // FNV-1a: stable across runs, unlike std's hasher.
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016X}")
}

fn schema_name(t: &ResourceType) -> String {
    let reversed: Vec<&str> = t.group.split('.').rev().collect();
    let prefix = if t.group.is_empty() {
        "io.k8s.api.core".to_owned()
    } else {
        reversed.join(".")
    };
    format!("{prefix}.{}.{}", t.version, t.kind)
}

/// The OpenAPI v3 document of one group version.
pub fn document(types: &[ResourceType], group: &str, version: &str) -> Value {
    let mut schemas = serde_json::Map::new();
    let mut paths = serde_json::Map::new();
    for t in types
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        let gvk = json!([{"group": t.group, "version": t.version, "kind": t.kind}]);
        let mut schema = t.schema.clone().unwrap_or_else(
            || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        );
        schema["x-kubernetes-group-version-kind"] = gvk.clone();
        let name = schema_name(t);
        schemas.insert(name.clone(), schema);
        let reference = json!({"$ref": format!("#/components/schemas/{name}")});
        let body = json!({"content": {"application/json": {"schema": reference}}});
        let item_path = if t.namespaced {
            format!(
                "/{}/namespaces/{{namespace}}/{}/{{name}}",
                group_version_path(group, version),
                t.plural
            )
        } else {
            format!(
                "/{}/{}/{{name}}",
                group_version_path(group, version),
                t.plural
            )
        };
        let query = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string"}, "uniqueItems": true});
        let operation = |verb: &str| {
            json!({
                "operationId": format!("{verb}{}", t.kind),
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": {"group": t.group, "version": t.version, "kind": t.kind},
                "parameters": [query("dryRun"), query("fieldManager"), query("fieldValidation")],
                "responses": {"200": body},
            })
        };
        paths.insert(
            item_path,
            json!({"get": operation("get"), "put": operation("put"), "patch": operation("patch"), "delete": operation("delete")}),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.36.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}
