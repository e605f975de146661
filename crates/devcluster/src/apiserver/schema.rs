//! What kube-apiserver does to a custom resource before it stores it, in its
//! order: prune unknown fields, apply schema defaults, validate against the
//! structural schema, evaluate the `x-kubernetes-validations` CEL rules.
//!
//! Error causes use kube-apiserver's field paths, reasons and message shapes,
//! so a client (or a test) sees the same text from this server and from a
//! cluster.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use kube::core::cel::{CompiledSchema, Validator, compile_schema};
use regex::Regex;
use serde_json::{Map, Value};

use super::status::Cause;

/// Removes every field the schema does not declare, unless a node says
/// `x-kubernetes-preserve-unknown-fields`. `apiVersion`, `kind` and `metadata`
/// at the root are always kept.
pub fn prune(schema: &Value, value: &mut Value) {
    prune_node(schema, value, true);
}

fn prune_node(schema: &Value, value: &mut Value, root: bool) {
    let preserve = schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true);
    match value {
        Value::Object(map) => {
            if let Some(props) = schema["properties"].as_object() {
                if !preserve {
                    map.retain(|k, _| {
                        props.contains_key(k)
                            || (root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
                    });
                }
                for (k, v) in map.iter_mut() {
                    if let Some(child) = props.get(k)
                        && !(root && k == "metadata")
                    {
                        prune_node(child, v, false);
                    }
                }
            } else if schema["additionalProperties"].is_object() {
                for v in map.values_mut() {
                    prune_node(&schema["additionalProperties"], v, false);
                }
            } else if !preserve && schema["type"] == "object" && !root {
                map.clear();
            }
        }
        Value::Array(items) => {
            for item in items {
                prune_node(&schema["items"], item, false);
            }
        }
        _ => {}
    }
}

/// Paths of the fields pruning would remove: what `fieldValidation=Strict`
/// refuses.
pub fn unknown_fields(schema: &Value, value: &Value) -> Vec<String> {
    let mut found = Vec::new();
    unknown_node(schema, value, "", true, &mut found);
    found
}

fn unknown_node(schema: &Value, value: &Value, path: &str, root: bool, found: &mut Vec<String>) {
    if schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true) {
        return;
    }
    match value {
        Value::Object(map) => {
            let props = schema["properties"].as_object();
            for (k, v) in map {
                let child = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                match props.and_then(|p| p.get(k)) {
                    Some(child_schema) => unknown_node(child_schema, v, &child, false, found),
                    None if schema["additionalProperties"].is_object() => {
                        unknown_node(&schema["additionalProperties"], v, &child, false, found);
                    }
                    None => found.push(child),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                unknown_node(
                    &schema["items"],
                    item,
                    &format!("{path}[{i}]"),
                    false,
                    found,
                );
            }
        }
        _ => {}
    }
}

/// Fills in schema defaults, as kube-apiserver does when it decodes an object.
pub fn apply_defaults(schema: &Value, value: &Value) -> Value {
    kube::core::cel::apply_defaults(schema, value)
}

/// Checks `value` against the structural schema (types, required, enum,
/// bounds, lengths, patterns, item and property counts).
pub fn validate(schema: &Value, value: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    // The root's metadata is validated as ObjectMeta, not by the CRD schema.
    if let (Some(props), Some(obj)) = (schema["properties"].as_object(), value.as_object()) {
        check_required(schema, obj, "", &mut causes);
        for (k, v) in obj {
            if let Some(child) = props.get(k).filter(|_| k != "metadata") {
                validate_node(child, v, k, &mut causes);
            }
        }
    }
    causes
}

fn invalid(field: &str, message: String) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        message,
        field: field.to_owned(),
    }
}

fn shown(value: &Value) -> String {
    match value {
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn validate_node(schema: &Value, value: &Value, path: &str, causes: &mut Vec<Cause>) {
    if value.is_null() {
        if schema["nullable"] != Value::Bool(true) {
            causes.push(invalid(
                path,
                format!(
                    "Invalid value: \"null\": {path} in body must be of type {}: \"null\"",
                    schema["type"].as_str().unwrap_or("object")
                ),
            ));
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"] == Value::Bool(true) {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            causes.push(invalid(
                path,
                format!(
                    "Invalid value: {}: {path} in body must be of type int-or-string",
                    shown(value)
                ),
            ));
        }
        return;
    }
    if let Some(expected) = schema["type"].as_str() {
        let actual = type_name(value);
        let matches = actual == expected || (expected == "number" && actual == "integer");
        if !matches {
            causes.push(Cause {
                reason: "FieldValueTypeInvalid",
                message: format!("Invalid value: \"{actual}\": {path} in body must be of type {expected}: \"{actual}\""),
                field: path.to_owned(),
            });
            return;
        }
    }
    check_enum(schema, value, path, causes);
    match value {
        Value::Number(n) => check_number(schema, n.as_f64().unwrap_or(0.0), value, path, causes),
        Value::String(s) => check_string(schema, s, path, causes),
        Value::Array(items) => {
            check_items(schema, items.len(), path, causes);
            for (i, item) in items.iter().enumerate() {
                validate_node(&schema["items"], item, &format!("{path}[{i}]"), causes);
            }
        }
        Value::Object(map) => check_object(schema, map, path, causes),
        _ => {}
    }
}

fn check_enum(schema: &Value, value: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {value}: supported values: {}",
                list.join(", ")
            ),
            field: path.to_owned(),
        });
    }
}

fn check_number(schema: &Value, n: f64, value: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(min) = schema["minimum"].as_f64() {
        let exclusive = schema["exclusiveMinimum"] == Value::Bool(true);
        if n < min || (exclusive && n == min) {
            let word = if exclusive {
                "greater than"
            } else {
                "greater than or equal to"
            };
            causes.push(invalid(
                path,
                format!(
                    "Invalid value: {value}: {path} in body should be {word} {}",
                    schema["minimum"]
                ),
            ));
        }
    }
    if let Some(max) = schema["maximum"].as_f64() {
        let exclusive = schema["exclusiveMaximum"] == Value::Bool(true);
        if n > max || (exclusive && n == max) {
            let word = if exclusive {
                "less than"
            } else {
                "less than or equal to"
            };
            causes.push(invalid(
                path,
                format!(
                    "Invalid value: {value}: {path} in body should be {word} {}",
                    schema["maximum"]
                ),
            ));
        }
    }
}

fn check_string(schema: &Value, s: &str, path: &str, causes: &mut Vec<Cause>) {
    let chars = s.chars().count() as u64;
    if let Some(max) = schema["maxLength"].as_u64()
        && chars > max
    {
        causes.push(Cause {
            reason: "FieldValueTooLong",
            message: format!("Too long: may not be more than {max} bytes"),
            field: path.to_owned(),
        });
    }
    if let Some(min) = schema["minLength"].as_u64()
        && chars < min
    {
        causes.push(invalid(
            path,
            format!("Invalid value: \"{s}\": {path} in body should be at least {min} chars long"),
        ));
    }
    if let Some(pattern) = schema["pattern"].as_str()
        && !pattern_matches(pattern, s)
    {
        causes.push(invalid(
            path,
            format!("Invalid value: \"{s}\": {path} in body should match '{pattern}'"),
        ));
    }
}

fn check_items(schema: &Value, len: usize, path: &str, causes: &mut Vec<Cause>) {
    if let Some(max) = schema["maxItems"].as_u64()
        && len as u64 > max
    {
        causes.push(Cause {
            reason: "FieldValueTooMany",
            message: format!("Too many: {len}: must have at most {max} items"),
            field: path.to_owned(),
        });
    }
    if let Some(min) = schema["minItems"].as_u64()
        && (len as u64) < min
    {
        causes.push(invalid(
            path,
            format!("Invalid value: {len}: {path} in body should have at least {min} items"),
        ));
    }
}

fn check_required(schema: &Value, map: &Map<String, Value>, path: &str, causes: &mut Vec<Cause>) {
    for required in schema["required"].as_array().into_iter().flatten() {
        if let Some(name) = required.as_str()
            && !map.contains_key(name)
        {
            let field = if path.is_empty() {
                name.to_owned()
            } else {
                format!("{path}.{name}")
            };
            causes.push(Cause {
                reason: "FieldValueRequired",
                message: "Required value".into(),
                field,
            });
        }
    }
}

fn check_object(schema: &Value, map: &Map<String, Value>, path: &str, causes: &mut Vec<Cause>) {
    check_required(schema, map, path, causes);
    if let Some(max) = schema["maxProperties"].as_u64()
        && map.len() as u64 > max
    {
        causes.push(Cause {
            reason: "FieldValueTooMany",
            message: format!("Too many: {}: must have at most {max} items", map.len()),
            field: path.to_owned(),
        });
    }
    if let Some(props) = schema["properties"].as_object() {
        for (k, v) in map {
            if let Some(child) = props.get(k) {
                validate_node(child, v, &format!("{path}.{k}"), causes);
            }
        }
    } else if schema["additionalProperties"].is_object() {
        for (k, v) in map {
            validate_node(
                &schema["additionalProperties"],
                v,
                &format!("{path}[{k}]"),
                causes,
            );
        }
    }
}

/// Patterns are compiled once per process; an invalid pattern never matches,
/// as kube-apiserver refuses such a CRD.
fn pattern_matches(pattern: &str, s: &str) -> bool {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = match cache.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    cache
        .entry(pattern.to_owned())
        .or_insert_with(|| Regex::new(pattern).ok())
        .as_ref()
        .is_some_and(|re| re.is_match(s))
}

/// The CEL rules of one schema, compiled once.
pub struct CelRules {
    compiled: CompiledSchema,
}

impl CelRules {
    /// Compiles every `x-kubernetes-validations` rule of `schema`; a rule that
    /// does not compile is reported as a cause against the CRD.
    pub fn compile(schema: &Value) -> Result<CelRules, Vec<Cause>> {
        let compiled = compile_schema(schema);
        if compiled.has_errors() {
            let causes = compiled
                .compilation_errors()
                .iter()
                .map(|e| {
                    invalid(
                        "spec.versions[0].schema.openAPIV3Schema",
                        format!("Invalid value: \"object\": compilation failed: {e}"),
                    )
                })
                .collect();
            return Err(causes);
        }
        Ok(CelRules { compiled })
    }

    /// Evaluates the rules on `value` (and transition rules against `old`).
    pub fn evaluate(
        &self,
        validator: &Validator,
        value: &Value,
        old: Option<&Value>,
    ) -> Vec<Cause> {
        match validator.validate_compiled(&self.compiled, value, old) {
            Ok(()) => Vec::new(),
            Err(errors) => errors
                .into_vec()
                .into_iter()
                .map(|e| {
                    let field = e.field_path.trim_start_matches('.').to_owned();
                    invalid(&field, format!("Invalid value: \"object\": {}", e.message))
                })
                .collect(),
        }
    }
}
