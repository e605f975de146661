//! The patch flavours of kube-apiserver, applied to JSON objects.
//!
//! * JSON Patch (RFC 6902) and JSON merge patch (RFC 7386) as specified.
//! * Strategic merge patch, for built-in kinds only (custom resources refuse
//!   it, as kube-apiserver does): a merge patch that understands the
//!   directives kubectl sends (`$patch: delete|replace`, `$retainKeys`,
//!   `$setElementOrder/…`, `$deleteFromPrimitiveList/…`) and merges the one
//!   keyed list our built-in kinds carry, `metadata.ownerReferences` (by
//!   `uid`), and the set `metadata.finalizers`. Other lists are replaced.
//! * Server-side apply, simplified: the applied configuration is merged into
//!   the live object (objects field by field, lists replaced whole) and the
//!   manager is recorded in `managedFields` with operation `Apply` but without
//!   `fieldsV1`. Because field ownership is not tracked, a field that a
//!   manager stops applying is kept rather than removed (a field applied as
//!   `null` is removed, as kube-apiserver does), and no conflicts are
//!   reported (so `force` changes nothing).

use serde_json::{Map, Value, json};

use super::status::ApiError;

/// The media types of PATCH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`
    Json,
    /// `application/merge-patch+json`
    Merge,
    /// `application/strategic-merge-patch+json`
    Strategic,
    /// `application/apply-patch+yaml`
    Apply,
}

impl PatchType {
    /// Reads the Content-Type of a PATCH.
    pub fn from_content_type(content_type: &str) -> Result<Self, ApiError> {
        let media = content_type.split(';').next().unwrap_or_default().trim();
        match media {
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchType::Apply),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }
}

/// Applies an RFC 6902 JSON Patch.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let operations: json_patch::Patch = serde_json::from_value(patch.clone()).map_err(|e| {
        ApiError::bad_request(format!(
            "the server rejected our request due to an error in our request: {e}"
        ))
    })?;
    json_patch::patch(target, &operations.0).map_err(|e| {
        ApiError::invalid_patch(format!(
            "the server rejected our request due to an error in our request: {e}"
        ))
    })
}

/// Applies an RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// Applies a strategic merge patch to a built-in kind.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    strategic_node(target, patch, "");
}

fn strategic_node(target: &mut Value, patch: &Value, path: &str) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch.clone();
        if let Some(m) = replacement.as_object_mut() {
            m.remove("$patch");
        }
        *target = replacement;
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(target_map) = target.as_object_mut() else {
        return;
    };
    if let Some(retain) = patch_map.get("$retainKeys").and_then(Value::as_array) {
        target_map.retain(|k, _| retain.iter().any(|r| r == k));
    }
    for (key, value) in patch_map {
        if let Some(list) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(items), Some(remove)) = (
                target_map.get_mut(list).and_then(Value::as_array_mut),
                value.as_array(),
            ) {
                items.retain(|i| !remove.contains(i));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        let child = format!("{path}.{key}");
        match value {
            Value::Null => {
                target_map.remove(key);
            }
            Value::Object(inner)
                if inner.get("$patch").and_then(Value::as_str) == Some("delete") =>
            {
                target_map.remove(key);
            }
            Value::Object(_) => strategic_node(
                target_map.entry(key.clone()).or_insert(Value::Null),
                value,
                &child,
            ),
            Value::Array(items) => {
                let merged = merge_list(&child, target_map.get(key), items);
                target_map.insert(key.clone(), merged);
            }
            other => {
                target_map.insert(key.clone(), other.clone());
            }
        }
    }
}

fn merge_list(path: &str, current: Option<&Value>, patch: &[Value]) -> Value {
    let current: Vec<Value> = current
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    match path {
        ".metadata.finalizers" => {
            let mut merged = current;
            for item in patch {
                if !merged.contains(item) {
                    merged.push(item.clone());
                }
            }
            Value::Array(merged)
        }
        ".metadata.ownerReferences" => {
            let mut merged = current;
            for item in patch {
                let deleting = item["$patch"] == "delete";
                merged.retain(|m| m["uid"] != item["uid"]);
                if !deleting {
                    merged.push(item.clone());
                }
            }
            Value::Array(merged)
        }
        _ => Value::Array(
            patch
                .iter()
                .filter(|i| i["$patch"] != "delete")
                .cloned()
                .collect(),
        ),
    }
}

/// Merges an applied configuration into the live object (see the module
/// documentation for what is simplified) and records the manager.
pub fn apply(live: &mut Value, applied: &Value, manager: &str, now: &str) {
    apply_node(live, applied);
    let entry = json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": applied["apiVersion"],
        "time": now,
        "fieldsType": "FieldsV1",
    });
    let managed = live["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut managed: Vec<Value> = managed
        .into_iter()
        .filter(|m| !(m["manager"] == manager && m["operation"] == "Apply"))
        .collect();
    managed.push(entry);
    live["metadata"]["managedFields"] = Value::Array(managed);
}

fn apply_node(live: &mut Value, applied: &Value) {
    match (live, applied) {
        (Value::Object(live_map), Value::Object(applied_map)) => {
            for (key, value) in applied_map {
                match live_map.get_mut(key) {
                    // kube-apiserver removes a field an apply sets to null.
                    _ if value.is_null() => {
                        live_map.remove(key);
                    }
                    Some(existing) if existing.is_object() && value.is_object() => {
                        apply_node(existing, value)
                    }
                    _ => {
                        live_map.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (live, applied) => *live = applied.clone(),
    }
}

impl ApiError {
    /// 422 for a patch that cannot be applied (a failed `test`, a missing
    /// path).
    pub fn invalid_patch(message: String) -> Self {
        ApiError {
            code: axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            reason: "Invalid",
            message,
            details: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategic_merge_unions_finalizers_and_keys_owner_references() {
        let mut live = json!({"metadata": {"finalizers": ["a"], "ownerReferences": [{"uid": "1", "name": "x"}]}, "data": {"k": "v", "gone": "x"}});
        let patch = json!({"metadata": {"finalizers": ["b"], "ownerReferences": [{"uid": "2", "name": "y"}]}, "data": {"gone": null, "new": "n"}});
        strategic_merge(&mut live, &patch);
        assert_eq!(live["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(
            live["metadata"]["ownerReferences"].as_array().map(Vec::len),
            Some(2)
        );
        assert_eq!(live["data"], json!({"k": "v", "new": "n"}));
    }

    #[test]
    fn strategic_merge_directives() {
        let mut live = json!({"metadata": {"finalizers": ["a", "b"]}, "data": {"k": "v"}});
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}, "data": {"$patch": "replace", "only": "1"}});
        strategic_merge(&mut live, &patch);
        assert_eq!(live["metadata"]["finalizers"], json!(["b"]));
        assert_eq!(live["data"], json!({"only": "1"}));
    }

    #[test]
    fn apply_merges_and_records_the_manager() {
        let mut live =
            json!({"apiVersion": "v1", "metadata": {"name": "a"}, "spec": {"x": 1, "y": [1, 2]}});
        let applied =
            json!({"apiVersion": "v1", "metadata": {"name": "a"}, "spec": {"y": [3], "z": true}});
        apply(&mut live, &applied, "kubectl", "2026-01-01T00:00:00Z");
        assert_eq!(live["spec"], json!({"x": 1, "y": [3], "z": true}));
        assert_eq!(live["metadata"]["managedFields"][0]["manager"], "kubectl");
    }

    #[test]
    fn apply_removes_a_field_set_to_null() {
        let mut live = json!({"apiVersion": "v1", "status": {"a": 1, "b": {"c": 2}}});
        let applied = json!({"apiVersion": "v1", "status": {"b": null}});
        apply(&mut live, &applied, "op", "2026-01-01T00:00:00Z");
        assert_eq!(live["status"], json!({"a": 1}));
    }
}
