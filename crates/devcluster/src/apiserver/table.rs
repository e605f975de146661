//! `meta.k8s.io/v1` Table output, which `kubectl get` asks for: a Name
//! column, then a CRD's `additionalPrinterColumns` (or Age for built-ins).

use serde_json::{Value, json};

use super::resources::ResourceType;

/// Whether the client asked for a Table (`Accept: …;as=Table;…`).
pub fn wanted(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

fn columns(rt: &ResourceType) -> Vec<Value> {
    let mut columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    if rt.printer_columns.is_empty() {
        columns.push(json!({"name": "Age", "type": "date", "format": "", "description": "CreationTimestamp", "priority": 0}));
    }
    for c in &rt.printer_columns {
        columns.push(json!({
            "name": c["name"],
            "type": c["type"],
            "format": c["format"].as_str().unwrap_or_default(),
            "description": c["description"].as_str().unwrap_or_default(),
            "priority": c["priority"].as_i64().unwrap_or(0),
        }));
    }
    columns
}

/// Evaluates the simple JSONPaths printer columns use (`.a.b.c`).
fn lookup<'a>(object: &'a Value, path: &str) -> &'a Value {
    path.trim_start_matches('.')
        .split('.')
        .filter(|s| !s.is_empty())
        .fold(object, |v, key| &v[key])
}

/// "5m2s"-style age of an RFC 3339 timestamp, as kube-apiserver prints dates.
fn age(timestamp: &Value) -> Value {
    let Some(then) = timestamp
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    else {
        return Value::Null;
    };
    let seconds = jiff::Timestamp::now()
        .as_second()
        .saturating_sub(then.as_second())
        .max(0);
    let text = match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    };
    json!(text)
}

fn row(rt: &ResourceType, object: &Value) -> Value {
    let mut cells = vec![object["metadata"]["name"].clone()];
    if rt.printer_columns.is_empty() {
        cells.push(age(&object["metadata"]["creationTimestamp"]));
    }
    for c in &rt.printer_columns {
        let value = lookup(object, c["jsonPath"].as_str().unwrap_or_default());
        cells.push(if c["type"] == "date" {
            age(value)
        } else {
            value.clone()
        });
    }
    let partial = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"]});
    json!({"cells": cells, "object": partial})
}

/// A Table of `objects`.
pub fn table(rt: &ResourceType, objects: &[Value], metadata: Value) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns(rt),
        "rows": objects.iter().map(|o| row(rt, o)).collect::<Vec<_>>(),
    })
}
