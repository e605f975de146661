//! The server's state: resource types, objects, one global resourceVersion
//! and a bounded history of changes that watches resume from.
//!
//! Every operation runs under one lock and is synchronous, so resourceVersions
//! are strictly increasing and a watch sees changes in the order they happened.
//! Objects of all versions of a CRD share one table; an object is served with
//! the apiVersion it is requested under (no conversion: our CRDs have one
//! version).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use kube::core::cel::Validator;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::resources::{self, ResourceType};
use super::schema::{self, CelRules};
use super::status::{ApiError, Cause};

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// Created.
    Added,
    /// Updated, including a deletion that waits for finalizers.
    Modified,
    Deleted,
}

impl ChangeKind {
    /// The watch event type.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "ADDED",
            ChangeKind::Modified => "MODIFIED",
            ChangeKind::Deleted => "DELETED",
        }
    }
}

/// One change, as watches deliver it.
#[derive(Debug)]
pub struct Change {
    /// resourceVersion of the change.
    pub rv: u64,
    /// What happened.
    pub kind: ChangeKind,
    /// Group of the object's resource.
    pub group: String,
    /// Plural of the object's resource.
    pub plural: String,
    /// The object after the change (before it, for a deletion, with the new rv).
    pub object: Value,
    /// The watch event line, rendered once for every watcher that wants it in
    /// the object's own apiVersion.
    pub line: std::sync::OnceLock<axum::body::Bytes>,
}

/// Options of a delete (`DeleteOptions` and the query).
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    /// `Orphan` keeps dependents; anything else deletes them.
    pub orphan: bool,
    /// Precondition on the uid.
    pub uid: Option<String>,
    /// Precondition on the resourceVersion.
    pub resource_version: Option<String>,
    /// Validate only.
    pub dry_run: bool,
}

/// Which part of an object a write replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The object, except status when status is a subresource.
    Main,
    /// Only status.
    Status,
}

type Key = (String, String);

/// A resource type a CRD defines, with its compiled CEL rules.
type CompiledType = (ResourceType, Arc<CelRules>);

/// Where a watch starts: the changes to send first, and the live feed.
pub type WatchStart = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>);
type Table = BTreeMap<(String, String), Value>;

/// The whole state of the server.
pub struct Store {
    rv: u64,
    types: Vec<ResourceType>,
    cel: HashMap<(String, String, String), Arc<CelRules>>,
    validator: Validator,
    tables: HashMap<Key, Table>,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// Watches from before this resourceVersion get 410 Gone.
    compacted: u64,
    changes: broadcast::Sender<Arc<Change>>,
}

fn key(rt: &ResourceType) -> Key {
    (rt.group.clone(), rt.plural.clone())
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object["metadata"][field].as_str()
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Names must be DNS subdomains for every kind we serve.
fn name_causes(name: &str) -> Vec<Cause> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if ok {
        Vec::new()
    } else {
        vec![Cause {
            reason: "FieldValueInvalid",
            message: format!(
                "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
            field: "metadata.name".into(),
        }]
    }
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes[..5]
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// The part of an object whose change bumps `metadata.generation`.
/// Without a status subresource, a status change is a change like any other.
fn generation_relevant(rt: &ResourceType, object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(map) = copy.as_object_mut() {
        map.remove("metadata");
        if rt.status_subresource {
            map.remove("status");
        }
    }
    copy
}

impl Store {
    /// A store with the built-in kinds and the namespaces every cluster has.
    pub fn new(history_limit: usize) -> Self {
        let (changes, _) = broadcast::channel(history_limit.max(1024));
        let mut store = Self {
            rv: 0,
            types: resources::builtins(),
            cel: HashMap::new(),
            validator: Validator::new(),
            tables: HashMap::new(),
            history: VecDeque::new(),
            history_limit,
            compacted: 0,
            changes,
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let namespace =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            if let Some(rt) = store.find("", "v1", "namespaces").cloned() {
                // Creating the initial namespaces cannot fail.
                let _ = store.create(&rt, None, namespace, false);
            }
        }
        store
    }

    /// Every served resource type.
    pub fn types(&self) -> &[ResourceType] {
        &self.types
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// A resource type by group, version and plural.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    fn record(&mut self, kind: ChangeKind, rt: &ResourceType, object: &Value) {
        let change = Arc::new(Change {
            rv: self.rv,
            kind,
            group: rt.group.clone(),
            plural: rt.plural.clone(),
            object: object.clone(),
            line: std::sync::OnceLock::new(),
        });
        self.history.push_back(change.clone());
        while self.history.len() > self.history_limit {
            self.history.pop_front();
        }
        // No receiver is fine: nobody watches.
        let _ = self.changes.send(change);
    }

    fn bump(&mut self, object: &mut Value) {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
    }

    fn namespace_state(&self, ns: &str) -> Result<bool, ApiError> {
        let table = self.tables.get(&(String::new(), "namespaces".to_owned()));
        match table.and_then(|t| t.get(&(String::new(), ns.to_owned()))) {
            None => Err(ApiError::not_found("namespaces", "", ns)),
            Some(obj) => Ok(obj["metadata"]["deletionTimestamp"].is_string()),
        }
    }

    /// Runs a custom resource through pruning, defaulting, the schema and CEL.
    fn admit(
        &self,
        rt: &ResourceType,
        object: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        let Some(schema) = &rt.schema else {
            return Ok(());
        };
        schema::prune(schema, object);
        *object = schema::apply_defaults(schema, object);
        let name = meta_str(object, "name").unwrap_or_default().to_owned();
        let mut causes = schema::validate(schema, object);
        if causes.is_empty()
            && let Some(rules) =
                self.cel
                    .get(&(rt.group.clone(), rt.version.clone(), rt.plural.clone()))
        {
            causes = rules.evaluate(&self.validator, object, old);
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(&rt.kind, &rt.group, &name, causes))
        }
    }

    fn place(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        object: &mut Value,
    ) -> Result<String, ApiError> {
        if !rt.namespaced {
            if let Some(map) = object["metadata"].as_object_mut() {
                map.remove("namespace");
            }
            return Ok(String::new());
        }
        let Some(ns) = ns else {
            return Err(ApiError::bad_request(
                "the namespace is required for namespaced resources",
            ));
        };
        match meta_str(object, "namespace") {
            Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => object["metadata"]["namespace"] = json!(ns),
        }
        Ok(ns.to_owned())
    }

    /// Creates an object.
    pub fn create(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        mut object: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        object["apiVersion"] = json!(rt.api_version());
        object["kind"] = json!(rt.kind);
        let ns = self.place(rt, ns, &mut object)?;
        let name = match (meta_str(&object, "name"), meta_str(&object, "generateName")) {
            (Some(name), _) if !name.is_empty() => name.to_owned(),
            (_, Some(prefix)) if !prefix.is_empty() => format!("{prefix}{}", random_suffix()),
            _ => {
                return Err(ApiError::invalid(
                    &rt.kind,
                    &rt.group,
                    "",
                    vec![Cause {
                        reason: "FieldValueRequired",
                        message: "Required value: name or generateName is required".into(),
                        field: "metadata.name".into(),
                    }],
                ));
            }
        };
        let causes = name_causes(&name);
        if !causes.is_empty() {
            return Err(ApiError::invalid(&rt.kind, &rt.group, &name, causes));
        }
        object["metadata"]["name"] = json!(name);
        if rt.namespaced && self.namespace_state(&ns)? {
            return Err(ApiError::forbidden(format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                rt.plural
            )));
        }
        let requested_version = meta_str(&object, "resourceVersion")
            .and_then(|rv| rv.parse::<u64>().ok())
            .unwrap_or(0);
        if let Some(meta) = object["metadata"].as_object_mut() {
            for field in [
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
                "resourceVersion",
                "generation",
            ] {
                meta.remove(field);
            }
        }
        // Like kube-apiserver's PrepareForCreate: status is the server's.
        if rt.status_subresource
            && let Some(map) = object.as_object_mut()
        {
            map.remove("status");
        }
        self.admit(rt, &mut object, None)?;
        let new_types = self.crd_types(rt, &object)?;
        // Past validation, kube-apiserver's storage (1.20) refuses a create
        // that carries a resourceVersion before it looks for the name (a 500,
        // even for a taken name); its dry-run path does not check.
        if requested_version != 0 && !dry_run {
            return Err(ApiError::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        if self.table(rt).contains_key(&(ns.clone(), name.clone())) {
            return Err(ApiError::already_exists(&rt.plural, &rt.group, &name));
        }
        object["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
        object["metadata"]["creationTimestamp"] = json!(now_rfc3339());
        if rt.generation {
            object["metadata"]["generation"] = json!(1);
        }
        if rt.plural == "namespaces" && rt.group.is_empty() {
            object["status"] = json!({"phase": "Active"});
        }
        if new_types.is_some() {
            object["status"] = crd_status(&object);
        }
        if dry_run {
            return Ok(object);
        }
        if let Some(types) = new_types {
            self.register(types);
        }
        self.bump(&mut object);
        self.table_mut(rt).insert((ns, name), object.clone());
        self.record(ChangeKind::Added, rt, &object);
        Ok(object)
    }

    fn table(&self, rt: &ResourceType) -> &Table {
        static EMPTY: Table = BTreeMap::new();
        self.tables.get(&key(rt)).unwrap_or(&EMPTY)
    }

    fn table_mut(&mut self, rt: &ResourceType) -> &mut Table {
        self.tables.entry(key(rt)).or_default()
    }

    /// One object, as served under `rt`'s version.
    pub fn get(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let ns = if rt.namespaced {
            ns.unwrap_or_default()
        } else {
            ""
        };
        let mut object = self
            .table(rt)
            .get(&(ns.to_owned(), name.to_owned()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.plural, &rt.group, name))?;
        object["apiVersion"] = json!(rt.api_version());
        Ok(object)
    }

    /// Like [`Store::list`], without copying the objects: for serializing a
    /// page under the lock.
    pub fn list_refs(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        after: Option<&(String, String)>,
        limit: Option<usize>,
        keep: impl Fn(&Value) -> bool,
    ) -> (Vec<&Value>, Option<(String, String)>) {
        let mut items: Vec<&Value> = Vec::new();
        let mut more = false;
        let range = self.table(rt).iter().filter(|(k, _)| {
            after.is_none_or(|a| *k > a) && ns.is_none_or(|ns| !rt.namespaced || k.0 == ns)
        });
        for (_, object) in range {
            if !keep(object) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                more = true;
                break;
            }
            items.push(object);
        }
        let cont = more
            .then(|| {
                items.last().map(|o| {
                    (
                        meta_str(o, "namespace").unwrap_or_default().to_owned(),
                        meta_str(o, "name").unwrap_or_default().to_owned(),
                    )
                })
            })
            .flatten();
        (items, cont)
    }

    /// Objects of `rt`, in `ns` or in every namespace, from `after` on (the
    /// continue position), filtered by `keep`, at most `limit`. Returns the
    /// page and the key to continue after, if more remain.
    pub fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        after: Option<&(String, String)>,
        limit: Option<usize>,
        keep: impl Fn(&Value) -> bool,
    ) -> (Vec<Value>, Option<(String, String)>) {
        let mut items = Vec::new();
        let mut next = None;
        let range = self.table(rt).iter().filter(|(k, _)| {
            after.is_none_or(|a| *k > a) && ns.is_none_or(|ns| !rt.namespaced || k.0 == ns)
        });
        for (k, object) in range {
            if !keep(object) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                next = Some(k.clone());
                break;
            }
            let mut object = object.clone();
            object["apiVersion"] = json!(rt.api_version());
            items.push(object);
        }
        // `next` is the first key not returned; continue after the last returned.
        let cont = next.and(items.last().map(|o: &Value| {
            (
                meta_str(o, "namespace").unwrap_or_default().to_owned(),
                meta_str(o, "name").unwrap_or_default().to_owned(),
            )
        }));
        (items, cont)
    }

    /// Replaces an object (or its status) with optimistic concurrency.
    pub fn replace(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        mut object: Value,
        part: Part,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let old = self.get(rt, ns, name)?;
        if meta_str(&object, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        match meta_str(&object, "resourceVersion") {
            // Most built-in kinds allow an unconditional update; custom
            // resources, CRDs and leases do not.
            None | Some("")
                if !rt.is_custom()
                    && !matches!(rt.plural.as_str(), "customresourcedefinitions" | "leases") => {}
            None | Some("") => {
                return Err(ApiError::invalid(
                    &rt.kind,
                    &rt.group,
                    name,
                    vec![Cause {
                        reason: "FieldValueInvalid",
                        message: "Invalid value: 0x0: must be specified for an update".into(),
                        field: "metadata.resourceVersion".into(),
                    }],
                ));
            }
            Some(rv) if Some(rv) != meta_str(&old, "resourceVersion") => {
                return Err(ApiError::conflict(
                    &rt.plural,
                    &rt.group,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
            _ => {}
        }
        object["apiVersion"] = json!(rt.api_version());
        object["kind"] = json!(rt.kind);
        object = match part {
            Part::Status => {
                let mut merged = old.clone();
                merged["status"] = object["status"].clone();
                merged
            }
            Part::Main => {
                for field in [
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                    "namespace",
                ] {
                    match old["metadata"].get(field) {
                        Some(v) => object["metadata"][field] = v.clone(),
                        None => {
                            if let Some(m) = object["metadata"].as_object_mut() {
                                m.remove(field);
                            }
                        }
                    }
                }
                if rt.status_subresource {
                    match old.get("status") {
                        Some(status) => object["status"] = status.clone(),
                        None => {
                            if let Some(m) = object.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
                object
            }
        };
        self.check_finalizers(rt, &old, &object)?;
        self.admit(rt, &mut object, Some(&old))?;
        if rt.generation && generation_relevant(rt, &object) != generation_relevant(rt, &old) {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            object["metadata"]["generation"] = json!(generation);
        }
        let crd_update = self.crd_types(rt, &object)?;
        if crd_update.is_some() {
            object["status"] = crd_status(&object);
        }
        if object == old || dry_run {
            return Ok(if dry_run { object } else { old });
        }
        if let Some(types) = crd_update {
            self.register(types);
        }
        let deleting = old["metadata"]["deletionTimestamp"].is_string();
        let finalizers_left = object["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        let is_namespace = rt.group.is_empty() && rt.plural == "namespaces";
        if deleting && !finalizers_left && !is_namespace {
            self.table_mut(rt)
                .insert((ns_of(rt, ns), name.to_owned()), object);
            return self.remove(rt, ns, name, false);
        }
        self.bump(&mut object);
        self.table_mut(rt)
            .insert((ns_of(rt, ns), name.to_owned()), object.clone());
        self.record(ChangeKind::Modified, rt, &object);
        if is_namespace && deleting {
            // Its last finalizer may just have gone.
            if let Some(gone) = self.finish_namespace(name)? {
                return Ok(gone);
            }
        }
        Ok(object)
    }

    fn check_finalizers(
        &self,
        rt: &ResourceType,
        old: &Value,
        new: &Value,
    ) -> Result<(), ApiError> {
        if !old["metadata"]["deletionTimestamp"].is_string() {
            return Ok(());
        }
        let before: Vec<&Value> = old["metadata"]["finalizers"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        let added = new["metadata"]["finalizers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| !before.contains(&f));
        if added {
            let name = meta_str(old, "name").unwrap_or_default();
            return Err(ApiError::invalid(
                &rt.kind,
                &rt.group,
                name,
                vec![Cause {
                    reason: "FieldValueForbidden",
                    message:
                        "Forbidden: no new finalizers can be added if the object is being deleted"
                            .into(),
                    field: "metadata.finalizers".into(),
                }],
            ));
        }
        Ok(())
    }

    /// Deletes an object: at once when it has no finalizers, otherwise by
    /// setting `deletionTimestamp` and waiting for the finalizers to go.
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let mut object = self.get(rt, ns, name)?;
        if options
            .uid
            .as_deref()
            .is_some_and(|uid| Some(uid) != meta_str(&object, "uid"))
        {
            return Err(ApiError::conflict(
                &rt.plural,
                &rt.group,
                name,
                "Precondition failed: UID in precondition does not match the UID in the object",
            ));
        }
        if options
            .resource_version
            .as_deref()
            .is_some_and(|rv| Some(rv) != meta_str(&object, "resourceVersion"))
        {
            return Err(ApiError::conflict(
                &rt.plural,
                &rt.group,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        if options.dry_run {
            return Ok(object);
        }
        let is_namespace = rt.group.is_empty() && rt.plural == "namespaces";
        let has_finalizers = object["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if !has_finalizers && !is_namespace {
            return self.remove(rt, ns, name, options.orphan);
        }
        if !object["metadata"]["deletionTimestamp"].is_string() {
            object["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            // kube-apiserver bumps generation when it marks an object deleting.
            if let Some(generation) = object["metadata"]["generation"].as_i64() {
                object["metadata"]["generation"] = json!(generation + 1);
            }
            if is_namespace {
                object["status"] = json!({"phase": "Terminating"});
            }
            self.bump(&mut object);
            self.table_mut(rt)
                .insert((ns_of(rt, ns), name.to_owned()), object.clone());
            self.record(ChangeKind::Modified, rt, &object);
        }
        if is_namespace {
            self.empty_namespace(name);
            return self
                .finish_namespace(name)
                .map(|gone| gone.unwrap_or(object));
        }
        Ok(object)
    }

    /// Removes an object for good, then its dependents (or their owner
    /// references, when orphaning) and, for a CRD, its resource type.
    fn remove(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        orphan: bool,
    ) -> Result<Value, ApiError> {
        let ns = ns_of(rt, ns);
        let Some(mut object) = self.table_mut(rt).remove(&(ns.clone(), name.to_owned())) else {
            return Err(ApiError::not_found(&rt.plural, &rt.group, name));
        };
        self.bump(&mut object);
        self.record(ChangeKind::Deleted, rt, &object);
        if rt.plural == "customresourcedefinitions" {
            self.unregister(&object);
        }
        if let Some(uid) = meta_str(&object, "uid").map(str::to_owned) {
            self.collect_dependents(&uid, orphan);
        }
        if rt.namespaced && !ns.is_empty() {
            // A terminating namespace goes once its last object has.
            let _ = self.finish_namespace(&ns);
        }
        Ok(object)
    }

    /// Garbage collection: dependents of a removed owner lose the owner
    /// reference and, when none is left and not orphaning, are deleted.
    fn collect_dependents(&mut self, owner_uid: &str, orphan: bool) {
        let mut dependents = Vec::new();
        for ((group, plural), table) in &self.tables {
            for (k, object) in table {
                let owned = object["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == owner_uid));
                if owned {
                    dependents.push((group.clone(), plural.clone(), k.clone()));
                }
            }
        }
        for (group, plural, (ns, name)) in dependents {
            let Some(rt) = self
                .types
                .iter()
                .find(|t| t.group == group && t.plural == plural)
                .cloned()
            else {
                continue;
            };
            let Some(mut object) = self.table(&rt).get(&(ns.clone(), name.clone())).cloned() else {
                continue;
            };
            if let Some(refs) = object["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|r| r["uid"] != owner_uid);
            }
            let orphaned_all = object["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(Vec::is_empty);
            let ns_arg = (!ns.is_empty()).then_some(ns.as_str());
            if orphan || !orphaned_all {
                if orphaned_all && let Some(m) = object["metadata"].as_object_mut() {
                    m.remove("ownerReferences");
                }
                self.bump(&mut object);
                self.table_mut(&rt)
                    .insert((ns.clone(), name.clone()), object.clone());
                self.record(ChangeKind::Modified, &rt, &object);
            } else {
                let _ = self.delete(&rt, ns_arg, &name, &DeleteOptions::default());
            }
        }
    }

    fn empty_namespace(&mut self, ns: &str) {
        let namespaced: Vec<ResourceType> = self
            .types
            .iter()
            .filter(|t| t.namespaced)
            .cloned()
            .collect();
        for rt in namespaced {
            let names: Vec<String> = self
                .table(&rt)
                .keys()
                .filter(|(n, _)| n == ns)
                .map(|(_, name)| name.clone())
                .collect();
            for name in names {
                let _ = self.delete(&rt, Some(ns), &name, &DeleteOptions::default());
            }
        }
    }

    /// Removes a terminating namespace once it holds nothing; returns it then.
    fn finish_namespace(&mut self, ns: &str) -> Result<Option<Value>, ApiError> {
        let Some(rt) = self.find("", "v1", "namespaces").cloned() else {
            return Ok(None);
        };
        let terminating = self
            .table(&rt)
            .get(&(String::new(), ns.to_owned()))
            .is_some_and(|n| {
                n["metadata"]["deletionTimestamp"].is_string()
                    && n["metadata"]["finalizers"]
                        .as_array()
                        .is_none_or(Vec::is_empty)
            });
        let empty = self
            .tables
            .iter()
            .filter(|((g, p), _)| {
                self.types
                    .iter()
                    .any(|t| &t.group == g && &t.plural == p && t.namespaced)
            })
            .all(|(_, table)| table.keys().all(|(n, _)| n != ns));
        if terminating && empty {
            let Some(mut object) = self.table_mut(&rt).remove(&(String::new(), ns.to_owned()))
            else {
                return Ok(None);
            };
            self.bump(&mut object);
            self.record(ChangeKind::Deleted, &rt, &object);
            return Ok(Some(object));
        }
        Ok(None)
    }

    /// For a CRD object: the resource types it defines, or why it is invalid.
    fn crd_types(
        &self,
        rt: &ResourceType,
        object: &Value,
    ) -> Result<Option<Vec<CompiledType>>, ApiError> {
        if !(rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions") {
            return Ok(None);
        }
        let name = meta_str(object, "name").unwrap_or_default();
        let invalid = |causes| {
            ApiError::invalid(
                "CustomResourceDefinition",
                "apiextensions.k8s.io",
                name,
                causes,
            )
        };
        let types = resources::from_crd(object).map_err(invalid)?;
        let mut compiled = Vec::new();
        for t in types {
            let rules =
                CelRules::compile(t.schema.as_ref().unwrap_or(&Value::Null)).map_err(invalid)?;
            compiled.push((t, Arc::new(rules)));
        }
        Ok(Some(compiled))
    }

    fn register(&mut self, types: Vec<CompiledType>) {
        for (t, rules) in types {
            self.types.retain(|x| {
                !(x.group == t.group && x.version == t.version && x.plural == t.plural)
            });
            self.cel.insert(
                (t.group.clone(), t.version.clone(), t.plural.clone()),
                rules,
            );
            self.types.push(t);
        }
    }

    fn unregister(&mut self, crd: &Value) {
        let group = crd["spec"]["group"].as_str().unwrap_or_default().to_owned();
        let plural = crd["spec"]["names"]["plural"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let Some(rt) = self
            .types
            .iter()
            .find(|t| t.group == group && t.plural == plural)
            .cloned()
        else {
            return;
        };
        let keys: Vec<(String, String)> = self.table(&rt).keys().cloned().collect();
        for (ns, name) in keys {
            let ns = (!ns.is_empty()).then_some(ns);
            let _ = self.remove(&rt, ns.as_deref(), &name, false);
        }
        self.types
            .retain(|t| !(t.group == group && t.plural == plural));
        self.cel
            .retain(|(g, _, p), _| !(g == &group && p == &plural));
    }

    /// Starts a watch: the retained changes after `since` (or, without one,
    /// synthetic ADDED events for what exists now) and a receiver for what
    /// comes next. `Err(Gone)` when `since` is older than the history.
    pub fn watch_from(
        &self,
        rt: &ResourceType,
        since: Option<u64>,
    ) -> Result<WatchStart, ApiError> {
        let receiver = self.changes.subscribe();
        let Some(since) = since else {
            let current = self
                .table(rt)
                .values()
                .map(|object| {
                    Arc::new(Change {
                        rv: self.rv,
                        kind: ChangeKind::Added,
                        group: rt.group.clone(),
                        plural: rt.plural.clone(),
                        object: object.clone(),
                        line: std::sync::OnceLock::new(),
                    })
                })
                .collect();
            return Ok((current, receiver));
        };
        let oldest = self.history.front().map_or(self.rv + 1, |c| c.rv);
        if since > self.rv {
            return Err(ApiError::too_large_resource_version(since, self.rv));
        }
        if (since.saturating_add(1) < oldest && since < self.rv) || since < self.compacted {
            return Err(ApiError::gone(format!(
                "too old resource version: {since} ({})",
                oldest - 1
            )));
        }
        let backlog = self
            .history
            .iter()
            .filter(|c| c.rv > since && c.group == rt.group && c.plural == rt.plural)
            .cloned()
            .collect();
        Ok((backlog, receiver))
    }

    /// Drops all history and ends every open watch, as an etcd compaction
    /// followed by an API server restart would: clients reconnect, resume from
    /// their last resourceVersion, get 410 Gone and list again.
    pub fn compact_and_drop_watches(&mut self) {
        // The compaction takes a revision of its own, so that even a watch
        // that had seen every change must list again.
        self.rv += 1;
        self.compacted = self.rv;
        self.history.clear();
        self.end_watches();
    }

    /// Ends every open watch (their streams close; clients reconnect).
    pub fn end_watches(&mut self) {
        let (changes, _) = broadcast::channel(self.history_limit.max(1024));
        // Dropping the old sender closes every receiver.
        self.changes = changes;
    }
}

fn ns_of(rt: &ResourceType, ns: Option<&str>) -> String {
    if rt.namespaced {
        ns.unwrap_or_default().to_owned()
    } else {
        String::new()
    }
}

/// The status kube-apiserver gives an accepted CRD.
fn crd_status(crd: &Value) -> Value {
    let now = now_rfc3339();
    let condition = |kind: &str, reason: &str, message: &str| json!({"type": kind, "status": "True", "lastTransitionTime": now, "reason": reason, "message": message});
    let stored: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == Value::Bool(true))
        .map(|v| v["name"].clone())
        .collect();
    json!({
        "acceptedNames": crd["spec"]["names"],
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": stored,
    })
}
