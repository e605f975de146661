//! The HTTP surface: discovery, resource paths and verbs, bodies and query
//! parameters, watch streams. Every failure becomes a `metav1.Status`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::Server;
use super::patch::{self, PatchType};
use super::resources::ResourceType;
use super::selectors::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::{Change, DeleteOptions, Part};
use super::{openapi, schema, table};
use super::{protobuf, requests};

/// kube-apiserver refuses bodies over 3 MiB.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// How often a watch that allows bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);

/// Longest watch a client can ask for; longer requests are cut to it.
const MAX_WATCH_SECONDS: u64 = 24 * 3600;

/// The version this server claims to be.
const SERVER_VERSION: (&str, &str) = ("1", "33");

/// Entry point for every request: routes it and records it in the
/// server's request log.
pub async fn handle(State(server): State<Arc<Server>>, request: Request) -> Response {
    let user_agent = request
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let path = request.uri().path().trim_end_matches('/');
    let query = parse_query(request.uri().query().unwrap_or_default()).unwrap_or_default();
    let target = requests::request_target(request.method(), path, &query);
    let mut writes = Vec::new();
    let response = match route(server.clone(), request, &mut writes).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    server.record(user_agent, target, &writes, response.status().as_u16());
    response
}

/// An object a request wrote, and what it replaced (`None` for a create),
/// for the admission checks the request log holds.
pub type Written = (Value, Option<Value>);

fn json_response(code: StatusCode, value: &Value) -> Response {
    (code, axum::Json(value.clone())).into_response()
}

fn ok(value: Value) -> Result<Response, ApiError> {
    Ok(json_response(StatusCode::OK, &value))
}

/// A parsed resource path.
struct Target {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

/// kube-apiserver's answer to a path no API handler serves.
fn page_not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "404 page not found\n",
    )
        .into_response()
}

async fn route(
    server: Arc<Server>,
    request: Request,
    writes: &mut Vec<Written>,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().trim_end_matches('/').to_owned();
    let query = parse_query(parts.uri.query().unwrap_or_default())?;
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["version"] => {
            let (major, minor) = SERVER_VERSION;
            return ok(
                json!({"major": major, "minor": minor, "gitVersion": format!("v{major}.{minor}.0-browserfleet-dev"), "platform": "linux/amd64"}),
            );
        }
        ["healthz"] | ["readyz"] | ["livez"] => return Ok((StatusCode::OK, "ok").into_response()),
        ["api"] => {
            return ok(
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
            );
        }
        ["apis"] => return ok(server.group_list()),
        ["api", "v1"] => return ok(server.resource_list("", "v1")),
        // A group or version nothing serves has no handler at all in
        // kube-apiserver: its mux answers a plain-text 404, not a Status.
        ["apis", group, version, ..] if !server.serves(group, version) => {
            return Ok(page_not_found());
        }
        ["api", version, ..] if *version != "v1" => return Ok(page_not_found()),
        ["apis", group] => {
            return Ok(server
                .group(group)
                .map_or_else(page_not_found, |g| json_response(StatusCode::OK, &g)));
        }
        ["openapi", "v3"] => return ok(openapi::root(server.lock().types())),
        ["openapi", "v3", "api", version] => {
            return ok(openapi::document(server.lock().types(), "", version));
        }
        ["openapi", "v3", "apis", group, version] => {
            return ok(openapi::document(server.lock().types(), group, version));
        }
        // Served: the guard above answered the others.
        ["apis", group, version] => return ok(server.resource_list(group, version)),
        _ => {}
    }
    let target = server
        .target(&segments)
        .ok_or_else(|| ApiError::no_route(&path))?;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let body = if matches!(
        parts.method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        axum::body::to_bytes(body, MAX_BODY_BYTES)
            .await
            .map_err(|_| ApiError::too_large(MAX_BODY_BYTES))?
    } else {
        Bytes::new()
    };
    let dry_run = query.get("dryRun").is_some_and(|v| v == "All");
    let as_table = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(table::wanted);
    let strict = query.get("fieldValidation").is_some_and(|v| v == "Strict");
    match (&parts.method, &target.name) {
        (&Method::GET, None) if is_true(&query, "watch")? => {
            watch(server, target, &query, as_table)
        }
        (&Method::GET, None) => list(&server, &target, &query, as_table),
        (&Method::GET, Some(name)) if is_true(&query, "watch")? => {
            let mut query = query.clone();
            query.insert("fieldSelector".into(), format!("metadata.name={name}"));
            watch(
                server,
                Target {
                    name: None,
                    ..target
                },
                &query,
                as_table,
            )
        }
        (&Method::GET, Some(name)) => {
            let object = server
                .lock()
                .get(&target.rt, target.namespace.as_deref(), name)?;
            if as_table {
                let rv = object["metadata"]["resourceVersion"].clone();
                return ok(table::table(
                    &target.rt,
                    &[object],
                    json!({"resourceVersion": rv}),
                ));
            }
            ok(object)
        }
        (&Method::POST, None) => {
            let object = decode(&body, &content_type, &target.rt)?;
            check_strict(strict, &target.rt, &object)?;
            let created =
                server
                    .lock()
                    .create(&target.rt, target.namespace.as_deref(), object, dry_run)?;
            let response = json_response(StatusCode::CREATED, &created);
            writes.push((created, None));
            Ok(response)
        }
        (&Method::PUT, Some(name)) => {
            let object = decode(&body, &content_type, &target.rt)?;
            check_strict(strict, &target.rt, &object)?;
            let part = part_of(&target)?;
            let mut store = server.lock();
            let old = store
                .get(&target.rt, target.namespace.as_deref(), name)
                .ok();
            let updated = store.replace(
                &target.rt,
                target.namespace.as_deref(),
                name,
                object,
                part,
                dry_run,
            )?;
            drop(store);
            let response = json_response(StatusCode::OK, &updated);
            writes.push((updated, old));
            Ok(response)
        }
        (&Method::PATCH, Some(name)) => {
            let patch_type = PatchType::from_content_type(&content_type)?;
            let flags = PatchFlags { dry_run, strict };
            let (code, object, old) =
                apply_patch(&server, &target, name, patch_type, &body, &query, flags)?;
            let response = json_response(code, &object);
            writes.push((object, old));
            Ok(response)
        }
        (&Method::DELETE, Some(name)) => {
            let options = delete_options(&body, &content_type, &query)?;
            let deleted =
                server
                    .lock()
                    .delete(&target.rt, target.namespace.as_deref(), name, &options)?;
            ok(deleted)
        }
        (&Method::DELETE, None) => {
            delete_collection(&server, &target, &body, &content_type, &query)
        }
        (method, _) => Err(ApiError::method_not_allowed(method.as_str())),
    }
}

/// `fieldValidation=Strict`: unknown fields are an error instead of being
/// pruned.
fn check_strict(strict: bool, rt: &ResourceType, object: &Value) -> Result<(), ApiError> {
    let Some(schema) = rt.schema.as_ref().filter(|_| strict) else {
        return Ok(());
    };
    let unknown = schema::unknown_fields(schema, object);
    if unknown.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    Err(ApiError::bad_request(format!(
        "strict decoding error: {}",
        listed.join(", ")
    )))
}

/// Flags of a PATCH from its query.
#[derive(Clone, Copy)]
struct PatchFlags {
    dry_run: bool,
    strict: bool,
}

fn part_of(target: &Target) -> Result<Part, ApiError> {
    match target.subresource.as_deref() {
        None => Ok(Part::Main),
        Some("status") if target.rt.status_subresource => Ok(Part::Status),
        Some(other) => Err(ApiError::no_route(other)),
    }
}

fn parse_query(raw: &str) -> Result<HashMap<String, String>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded_pairs(raw)?;
    Ok(pairs.into_iter().collect())
}

fn serde_urlencoded_pairs(raw: &str) -> Result<Vec<(String, String)>, ApiError> {
    let uri: axum::http::Uri = format!("/?{raw}")
        .parse()
        .map_err(|_| ApiError::bad_request("malformed query string"))?;
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))
}

fn is_true(query: &HashMap<String, String>, key: &str) -> Result<bool, ApiError> {
    match query.get(key).map(String::as_str) {
        None | Some("false") | Some("0") | Some("") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "invalid value for {key}: {other:?}"
        ))),
    }
}

fn number<T: std::str::FromStr>(
    query: &HashMap<String, String>,
    key: &str,
) -> Result<Option<T>, ApiError> {
    query
        .get(key)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<T>()
                .map_err(|_| ApiError::bad_request(format!("invalid value for {key}: {v:?}")))
        })
        .transpose()
}

/// Decodes a JSON or YAML body into one object of the target's kind.
fn decode(body: &[u8], content_type: &str, rt: &ResourceType) -> Result<Value, ApiError> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    let value: Value = match media {
        "application/yaml" | "application/apply-patch+yaml" => {
            let text = std::str::from_utf8(body)
                .map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
            serde_saphyr::from_str(text)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
        }
        "application/json" | "" | "*/*" => serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the object provided is unrecognized (must be of type {}): {e}",
                rt.kind
            ))
        })?,
        protobuf::MEDIA_TYPE => match protobuf::decode(body, &rt.kind) {
            Ok(Some(value)) => value,
            Ok(None) => return Err(ApiError::unsupported_media_type(media)),
            Err(e) => return Err(ApiError::bad_request(e.to_string())),
        },
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {})",
            rt.kind
        )));
    }
    if !(value["metadata"].is_object() || value["metadata"].is_null()) {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    if let Some(api_version) = value["apiVersion"].as_str()
        && api_version != rt.api_version()
        && !api_version.is_empty()
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            rt.api_version()
        )));
    }
    if let Some(kind) = value["kind"].as_str()
        && kind != rt.kind
        && !kind.is_empty()
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            rt.kind
        )));
    }
    Ok(value)
}

fn delete_options(
    body: &[u8],
    content_type: &str,
    query: &HashMap<String, String>,
) -> Result<DeleteOptions, ApiError> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    let from_body: Value = if body.is_empty() {
        json!({})
    } else if media == protobuf::MEDIA_TYPE {
        protobuf::decode(body, "DeleteOptions")
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
            .unwrap_or_else(|| json!({}))
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let policy = query
        .get("propagationPolicy")
        .cloned()
        .or_else(|| from_body["propagationPolicy"].as_str().map(str::to_owned));
    if let Some(p) = &policy
        && !["Orphan", "Background", "Foreground"].contains(&p.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "invalid propagationPolicy {p:?}"
        )));
    }
    let dry_run = query.get("dryRun").is_some_and(|v| v == "All")
        || from_body["dryRun"]
            .as_array()
            .is_some_and(|d| d.iter().any(|v| v == "All"));
    Ok(DeleteOptions {
        orphan: policy.as_deref() == Some("Orphan")
            || from_body["orphanDependents"] == Value::Bool(true),
        uid: from_body["preconditions"]["uid"]
            .as_str()
            .map(str::to_owned),
        resource_version: from_body["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_owned),
        dry_run,
    })
}

fn selectors(query: &HashMap<String, String>) -> Result<(LabelSelector, FieldSelector), ApiError> {
    Ok((
        LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))?,
        FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))?,
    ))
}

/// Continue tokens name the last key returned and the list's resourceVersion.
fn encode_continue(key: &(String, String), rv: u64) -> String {
    let raw = json!([key.0, key.1, rv]).to_string();
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str) -> Result<((String, String), u64), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid");
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    let value: Value = serde_json::from_slice(&bytes.ok_or_else(bad)?).map_err(|_| bad())?;
    let ns = value[0].as_str().ok_or_else(bad)?.to_owned();
    let name = value[1].as_str().ok_or_else(bad)?.to_owned();
    let rv = value[2].as_u64().ok_or_else(bad)?;
    Ok(((ns, name), rv))
}

fn list(
    server: &Server,
    target: &Target,
    query: &HashMap<String, String>,
    as_table: bool,
) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(query)?;
    let limit: Option<usize> = number(query, "limit")?.filter(|l| *l > 0);
    let store = server.lock();
    let (after, list_rv) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let (key, rv) = decode_continue(token)?;
            (Some(key), rv)
        }
        None => (None, store.resource_version()),
    };
    let keep = |o: &Value| labels.matches(o) && fields.matches(o);
    let (items, next) = store.list_refs(
        &target.rt,
        target.namespace.as_deref(),
        after.as_ref(),
        limit,
        keep,
    );
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if let Some(next) = next {
        metadata["continue"] = json!(encode_continue(&next, list_rv));
    }
    let api_version = target.rt.api_version();
    if as_table
        || items
            .iter()
            .any(|o| o["apiVersion"] != api_version.as_str())
    {
        // Rare paths (kubectl tables, objects stored under another version of
        // the CRD) copy the objects.
        let mut owned: Vec<Value> = items.into_iter().cloned().collect();
        for o in &mut owned {
            o["apiVersion"] = json!(api_version);
        }
        if as_table {
            return ok(table::table(&target.rt, &owned, metadata));
        }
        return ok(
            json!({"kind": format!("{}List", target.rt.kind), "apiVersion": api_version, "metadata": metadata, "items": owned}),
        );
    }
    // The common path serializes the stored objects in place, under the lock.
    let body = ListBody {
        kind: format!("{}List", target.rt.kind),
        api_version,
        metadata,
        items,
    };
    let bytes = serde_json::to_vec(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    drop(store);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response())
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ListBody<'a> {
    kind: String,
    api_version: String,
    metadata: Value,
    items: Vec<&'a Value>,
}

fn delete_collection(
    server: &Server,
    target: &Target,
    body: &[u8],
    content_type: &str,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(query)?;
    let options = delete_options(body, content_type, query)?;
    let mut store = server.lock();
    let (items, _) = store.list(&target.rt, target.namespace.as_deref(), None, None, |o| {
        labels.matches(o) && fields.matches(o)
    });
    let mut deleted = Vec::new();
    for item in items {
        let name = item["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let ns = item["metadata"]["namespace"].as_str().map(str::to_owned);
        // An earlier deletion may have collected this one as a dependent.
        match store.delete(&target.rt, ns.as_deref(), &name, &options) {
            Ok(object) => deleted.push(object),
            Err(e) if e.code == StatusCode::NOT_FOUND => {}
            Err(e) => return Err(e),
        }
    }
    ok(json!({
        "kind": format!("{}List", target.rt.kind),
        "apiVersion": target.rt.api_version(),
        "metadata": {"resourceVersion": store.resource_version().to_string()},
        "items": deleted,
    }))
}

fn apply_patch(
    server: &Server,
    target: &Target,
    name: &str,
    patch_type: PatchType,
    body: &[u8],
    query: &HashMap<String, String>,
    flags: PatchFlags,
) -> Result<(StatusCode, Value, Option<Value>), ApiError> {
    let PatchFlags { dry_run, strict } = flags;
    let part = part_of(target)?;
    let rt = &target.rt;
    let ns = target.namespace.as_deref();
    let mut store = server.lock();
    if patch_type == PatchType::Apply {
        let manager = query
            .get("fieldManager")
            .filter(|m| !m.is_empty())
            .ok_or_else(|| {
                ApiError::bad_request("PATCH apply requests must set the fieldManager parameter")
            })?;
        let applied = decode(body, "application/apply-patch+yaml", rt)?;
        check_strict(strict, rt, &applied)?;
        let now = jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .map(|t| t.to_string())
            .unwrap_or_default();
        return match store.get(rt, ns, name) {
            Err(e) if e.code == StatusCode::NOT_FOUND && part == Part::Main => {
                let mut object = json!({});
                patch::apply(&mut object, &applied, manager, &now);
                object["metadata"]["name"] = json!(name);
                store
                    .create(rt, ns, object, dry_run)
                    .map(|o| (StatusCode::CREATED, o, None))
            }
            Err(e) => Err(e),
            Ok(mut live) => {
                let old = live.clone();
                // Unconditional unless the configuration names a resourceVersion.
                patch::apply(&mut live, &applied, manager, &now);
                store
                    .replace(rt, ns, name, live, part, dry_run)
                    .map(|o| (StatusCode::OK, o, Some(old)))
            }
        };
    }
    let patch_doc: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let mut object = store.get(rt, ns, name)?;
    let old = object.clone();
    let current_rv = object["metadata"]["resourceVersion"].clone();
    match patch_type {
        PatchType::Json => patch::json_patch(&mut object, &patch_doc)?,
        PatchType::Merge => patch::merge_patch(&mut object, &patch_doc),
        PatchType::Strategic if rt.is_custom() => {
            return Err(ApiError::unsupported_media_type(
                "application/strategic-merge-patch+json is not supported for custom resources",
            ));
        }
        PatchType::Strategic => patch::strategic_merge(&mut object, &patch_doc),
        PatchType::Apply => {}
    }
    check_strict(strict, rt, &object)?;
    if !object.is_object() || !(object["metadata"].is_object() || object["metadata"].is_null()) {
        return Err(ApiError::invalid_patch(
            "the patched object is not a JSON object with object metadata".into(),
        ));
    }
    // A patch is unconditional unless it sets a resourceVersion itself.
    if object["metadata"]["resourceVersion"].is_null() || !object["metadata"].is_object() {
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        object["metadata"]["resourceVersion"] = current_rv;
    }
    store
        .replace(rt, ns, name, object, part, dry_run)
        .map(|o| (StatusCode::OK, o, Some(old)))
}

fn watch(
    server: Arc<Server>,
    target: Target,
    query: &HashMap<String, String>,
    as_table: bool,
) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(query)?;
    let timeout: Option<u64> = number(query, "timeoutSeconds")?;
    let bookmarks = is_true(query, "allowWatchBookmarks")?;
    let initial_events = is_true(query, "sendInitialEvents")?;
    let since = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) if initial_events => {
            let _: u64 = rv
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?;
            None
        }
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let started = {
        let store = server.lock();
        store
            .watch_from(&target.rt, since)
            .map(|(backlog, receiver)| (backlog, receiver, store.resource_version()))
    };
    let (backlog, receiver, start_rv) = match started {
        Ok(started) => started,
        // Like kube-apiserver, a watch from a compacted resourceVersion is
        // answered with 200 and a single ERROR event carrying the 410 Status.
        Err(gone) if gone.code == StatusCode::GONE => {
            let event = json!({"type": "ERROR", "object": gone.to_status()});
            return Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                line(&event),
            )
                .into_response());
        }
        Err(other) => return Err(other),
    };
    let rt = target.rt.clone();
    let namespace = target.namespace.clone();
    let matches = move |c: &Change| {
        c.group == rt.group
            && c.plural == rt.plural
            && (!rt.namespaced
                || namespace
                    .as_deref()
                    .is_none_or(|ns| c.object["metadata"]["namespace"] == ns))
            && labels.matches(&c.object)
            && fields.matches(&c.object)
    };
    let rt = target.rt.clone();
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(timeout.unwrap_or(1800).min(MAX_WATCH_SECONDS));
    let mut initial: Vec<Bytes> = backlog
        .iter()
        .filter(|c| matches(c))
        .map(|c| event_line(c, &rt, as_table))
        .collect();
    if initial_events {
        initial.push(line(&bookmark(&rt, start_rv, true)));
    }
    let state = WatchState {
        server,
        receiver,
        matches: Box::new(matches),
        rt,
        pending: initial.into(),
        deadline,
        bookmark_every: bookmarks.then_some(BOOKMARK_EVERY),
        next_bookmark: bookmarks.then(|| tokio::time::Instant::now() + BOOKMARK_EVERY),
        last_rv: since.unwrap_or(start_rv),
        done: false,
        as_table,
    };
    let stream =
        futures::stream::unfold(state, next_watch_line).map(Ok::<_, std::convert::Infallible>);
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::TRANSFER_ENCODING, "chunked")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

struct WatchState {
    server: Arc<Server>,
    receiver: tokio::sync::broadcast::Receiver<Arc<Change>>,
    matches: Box<dyn Fn(&Change) -> bool + Send>,
    rt: ResourceType,
    pending: std::collections::VecDeque<Bytes>,
    deadline: tokio::time::Instant,
    bookmark_every: Option<Duration>,
    next_bookmark: Option<tokio::time::Instant>,
    last_rv: u64,
    done: bool,
    as_table: bool,
}

/// The watch line of a change, rendered once and shared when the watcher
/// wants the object as stored.
fn event_line(change: &Change, rt: &ResourceType, as_table: bool) -> Bytes {
    if as_table || change.object["apiVersion"] != rt.api_version().as_str() {
        return line(&event_json(change, rt, as_table));
    }
    change
        .line
        .get_or_init(|| line(&json!({"type": change.kind.as_str(), "object": change.object})))
        .clone()
}

fn event_json(change: &Change, rt: &ResourceType, as_table: bool) -> Value {
    let mut object = change.object.clone();
    object["apiVersion"] = json!(rt.api_version());
    if as_table {
        let rv = object["metadata"]["resourceVersion"].clone();
        object = table::table(rt, &[object], json!({"resourceVersion": rv}));
    }
    json!({"type": change.kind.as_str(), "object": object})
}

fn bookmark(rt: &ResourceType, rv: u64, initial_events_end: bool) -> Value {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": metadata}})
}

fn line(event: &Value) -> Bytes {
    let mut text = event.to_string();
    text.push('\n');
    Bytes::from(text)
}

async fn next_watch_line(mut state: WatchState) -> Option<(Bytes, WatchState)> {
    loop {
        if let Some(event) = state.pending.pop_front() {
            return Some((event, state));
        }
        if state.done {
            return None;
        }
        let next_bookmark = state.next_bookmark;
        tokio::select! {
            received = state.receiver.recv() => match received {
                Ok(change) => {
                    state.last_rv = state.last_rv.max(change.rv);
                    if (state.matches)(&change) {
                        return Some((event_line(&change, &state.rt, state.as_table), state));
                    }
                }
                Err(RecvError::Lagged(_)) => return Some(fell_behind(state)),
                Err(RecvError::Closed) => return None,
            },
            () = tokio::time::sleep_until(state.deadline) => return None,
            () = sleep_until_some(next_bookmark) => {
                if let Some(every) = state.bookmark_every {
                    state.next_bookmark = Some(tokio::time::Instant::now() + every);
                }
                // Every change up to the store's version is already in the
                // receiver (changes are sent under the lock), so draining it
                // first makes the bookmark safe to resume from.
                let current = state.server.lock().resource_version();
                loop {
                    match state.receiver.try_recv() {
                        Ok(change) => {
                            state.last_rv = state.last_rv.max(change.rv);
                            if (state.matches)(&change) {
                                state.pending.push_back(event_line(&change, &state.rt, state.as_table));
                            }
                        }
                        Err(TryRecvError::Lagged(_)) => return Some(fell_behind(state)),
                        Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                    }
                }
                state.last_rv = state.last_rv.max(current);
                let mark = bookmark(&state.rt, state.last_rv, false);
                state.pending.push_back(line(&mark));
            }
        }
    }
}

/// Ends a watch whose receiver fell behind the change feed: the client must
/// list again, as after any 410.
fn fell_behind(mut state: WatchState) -> (Bytes, WatchState) {
    state.done = true;
    state.pending.clear();
    let gone = ApiError::gone("the watch fell behind; list again").to_status();
    (line(&json!({"type": "ERROR", "object": gone})), state)
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Server {
    fn group_list(&self) -> Value {
        let store = self.lock();
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for t in store.types().iter().filter(|t| !t.group.is_empty()) {
            match groups.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, versions)) if !versions.contains(&t.version) => {
                    versions.push(t.version.clone())
                }
                Some(_) => {}
                None => groups.push((t.group.clone(), vec![t.version.clone()])),
            }
        }
        let groups: Vec<Value> = groups
            .into_iter()
            .map(|(g, v)| group_json(&g, &v))
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// Whether any resource type is served in `group`/`version`.
    fn serves(&self, group: &str, version: &str) -> bool {
        self.lock()
            .types()
            .iter()
            .any(|t| t.group == group && t.version == version)
    }

    /// The `APIGroup` of `group`; `None` when nothing is served in it.
    fn group(&self, group: &str) -> Option<Value> {
        let store = self.lock();
        let versions: Vec<String> = store
            .types()
            .iter()
            .filter(|t| t.group == group)
            .map(|t| t.version.clone())
            .fold(Vec::new(), |mut acc, v| {
                if !acc.contains(&v) {
                    acc.push(v);
                }
                acc
            });
        if versions.is_empty() {
            return None;
        }
        let mut g = group_json(group, &versions);
        g["kind"] = json!("APIGroup");
        g["apiVersion"] = json!("v1");
        Some(g)
    }

    fn resource_list(&self, group: &str, version: &str) -> Value {
        let store = self.lock();
        let resources: Vec<Value> = store
            .types()
            .iter()
            .filter(|t| t.group == group && t.version == version)
            .flat_map(ResourceType::discovery_entries)
            .collect();
        let group_version = if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        };
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
    }

    fn target(&self, segments: &[&str]) -> Option<Target> {
        let (group, version, rest) = match segments {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return None,
        };
        let store = self.lock();
        let find = |plural: &str| store.find(group, version, plural).cloned();
        let namespaced_path = |ns: &str, rest: &[&str]| -> Option<Target> {
            let rt = find(rest.first()?)?;
            if !rt.namespaced {
                return None;
            }
            Some(Target {
                rt,
                namespace: Some(ns.to_owned()),
                name: rest.get(1).map(|s| (*s).to_owned()),
                subresource: rest.get(2).map(|s| (*s).to_owned()),
            })
        };
        match rest {
            ["namespaces", ns, plural, tail @ ..]
                if group.is_empty() && !matches!(*plural, "status" | "finalize") =>
            {
                let mut path = vec![*plural];
                path.extend_from_slice(tail);
                namespaced_path(ns, &path)
            }
            ["namespaces", ns, plural, tail @ ..] if !group.is_empty() => {
                let mut path = vec![*plural];
                path.extend_from_slice(tail);
                namespaced_path(ns, &path)
            }
            [plural, tail @ ..] if tail.len() <= 2 => Some(Target {
                rt: find(plural)?,
                namespace: None,
                name: tail.first().map(|s| (*s).to_owned()),
                subresource: tail.get(1).map(|s| (*s).to_owned()),
            })
            .filter(|t| !t.rt.namespaced || t.name.is_none()),
            _ => None,
        }
    }
}

fn group_json(group: &str, versions: &[String]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": versions, "preferredVersion": versions.first().cloned().unwrap_or(Value::Null)})
}
