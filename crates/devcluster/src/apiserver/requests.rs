//! What the server was asked, in Kubernetes' authorization terms: every
//! request as kube-apiserver's `RequestInfo` sees it (verb, group, resource,
//! subresource, namespace, name), with the client's `User-Agent`, so a test
//! can hold a client's requests against RBAC rules (the test kit's `rbac` module).
//!
//! Besides the requests themselves the log holds the checks the
//! `OwnerReferencesPermissionEnforcement` admission plugin makes for them
//! (see [`owner_reference_checks`]): a role must allow those too where the
//! plugin is on.

use std::collections::{HashMap, VecDeque};

use axum::http::Method;
use serde_json::Value;

use super::resources::ResourceType;

/// How many requests the log keeps; older ones are dropped and counted.
pub const LOG_LIMIT: usize = 200_000;

/// A verb of a resource request, as RBAC rules name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verb {
    /// GET of one object.
    Get,
    /// GET of a collection.
    List,
    /// GET of a collection with `watch`, or under `/watch/`.
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH.
    Patch,
    /// DELETE of one object.
    Delete,
    /// DELETE of a collection.
    DeleteCollection,
    /// A method no resource verb stands for (kube-apiserver: the empty verb).
    Unknown,
}

impl Verb {
    /// The verb as RBAC rules spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
            Verb::Unknown => "",
        }
    }
}

impl std::fmt::Display for Verb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The attributes RBAC decides a resource request on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceAttributes {
    pub verb: Verb,
    /// API group; empty for the core group.
    pub group: String,
    /// API version.
    pub version: String,
    /// Plural resource name.
    pub resource: String,
    /// Subresource (`status`, `finalizers`), if any.
    pub subresource: Option<String>,
    /// Namespace; `None` for cluster-scoped requests and requests across
    /// all namespaces.
    pub namespace: Option<String>,
    /// Object name; for list and watch, the name a `metadata.name` field
    /// selector requires, as kube-apiserver sets it.
    pub name: Option<String>,
}

impl std::fmt::Display for ResourceAttributes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {group}/{}", self.verb, self.resource)?;
        if let Some(sub) = &self.subresource {
            write!(f, "/{sub}")?;
        }
        match &self.namespace {
            Some(ns) => write!(f, " in {ns}")?,
            None => write!(f, " (cluster)")?,
        }
        if let Some(name) = &self.name {
            write!(f, " name={name}")?;
        }
        Ok(())
    }
}

/// What a request asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestTarget {
    /// A request under `/api` or `/apis/{group}` naming a resource.
    Resource(ResourceAttributes),
    /// Anything else (`/version`, discovery, `/openapi/v3`): RBAC rules match
    /// these by `nonResourceURLs`; the verb is the lowercase HTTP method.
    NonResource {
        /// Lowercase HTTP method.
        verb: String,
        path: String,
    },
}

/// Why a check is in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// The request itself.
    Request,
    /// A check the `OwnerReferencesPermissionEnforcement` admission plugin
    /// makes for the request before it.
    OwnerReferenceAdmission,
}

/// One entry of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// The `User-Agent` header, if sent.
    pub user_agent: Option<String>,
    /// What was asked.
    pub target: RequestTarget,
    /// A request, or a check made for one.
    pub origin: Origin,
    /// The response's status code (of the request the check was made for).
    pub code: u16,
}

/// The log: the last [`LOG_LIMIT`] entries, and how many were dropped.
#[derive(Debug, Default)]
pub struct RequestLog {
    entries: VecDeque<RecordedRequest>,
    dropped: u64,
}

impl RequestLog {
    /// Adds an entry, dropping the oldest past the limit.
    pub fn push(&mut self, entry: RecordedRequest) {
        self.entries.push_back(entry);
        while self.entries.len() > LOG_LIMIT {
            self.entries.pop_front();
            self.dropped += 1;
        }
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> Vec<RecordedRequest> {
        self.entries.iter().cloned().collect()
    }

    /// How many entries were dropped since the last clear.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Forgets every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.dropped = 0;
    }
}

/// The name a field selector requires exactly of `metadata.name`
/// (`metadata.name=x` or `metadata.name==x` among its terms).
fn required_name(field_selector: &str) -> Option<String> {
    field_selector.split(',').find_map(|term| {
        let value = term.trim().strip_prefix("metadata.name")?;
        let value = value
            .strip_prefix("==")
            .or_else(|| value.strip_prefix('='))?;
        (!value.is_empty() && !value.contains(['/', '%'])).then(|| value.to_owned())
    })
}

/// What a request asks for, by kube-apiserver's rules
/// (`k8s.io/apiserver/pkg/endpoints/request.RequestInfoFactory`): resource
/// requests are `/api/{version}/…` and `/apis/{group}/{version}/…`; a GET or
/// DELETE without a name is on the collection (list or watch by the `watch`
/// parameter, deletecollection); `namespaces/{ns}/{resource}/…` scopes the
/// rest, except the namespace's own `status` and `finalize`.
pub fn request_target(
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
) -> RequestTarget {
    let non_resource = || RequestTarget::NonResource {
        verb: method.as_str().to_lowercase(),
        path: path.to_owned(),
    };
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, mut rest) = match parts.as_slice() {
        ["api", version, rest @ ..] if !rest.is_empty() => ("", *version, rest),
        ["apis", group, version, rest @ ..] if !rest.is_empty() => (*group, *version, rest),
        _ => return non_resource(),
    };
    let mut verb = match *method {
        Method::POST => Verb::Create,
        Method::GET | Method::HEAD => Verb::Get,
        Method::PUT => Verb::Update,
        Method::PATCH => Verb::Patch,
        Method::DELETE => Verb::Delete,
        _ => Verb::Unknown,
    };
    if rest.first() == Some(&"watch") && rest.len() >= 2 {
        verb = Verb::Watch;
        rest = &rest[1..];
    }
    let mut namespace = None;
    if rest[0] == "namespaces" && rest.len() > 1 {
        namespace = Some(rest[1].to_owned());
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    let resource = rest[0].to_owned();
    let mut name = rest.get(1).map(|s| (*s).to_owned());
    let subresource = rest.get(2).map(|s| (*s).to_owned());
    if name.is_none() && verb == Verb::Get {
        let watch = query
            .get("watch")
            .is_some_and(|w| matches!(w.as_str(), "true" | "1"));
        verb = if watch { Verb::Watch } else { Verb::List };
    }
    if name.is_none() && matches!(verb, Verb::List | Verb::Watch) {
        name = query.get("fieldSelector").and_then(|s| required_name(s));
    }
    if name.is_none() && verb == Verb::Delete {
        verb = Verb::DeleteCollection;
    }
    RequestTarget::Resource(ResourceAttributes {
        verb,
        group: group.to_owned(),
        version: version.to_owned(),
        resource,
        subresource,
        namespace,
        name,
    })
}

fn owner_refs(object: Option<&Value>) -> Vec<&Value> {
    object
        .and_then(|o| o["metadata"]["ownerReferences"].as_array())
        .map(|refs| refs.iter().collect())
        .unwrap_or_default()
}

fn blocks(reference: &Value) -> bool {
    reference["blockOwnerDeletion"] == Value::Bool(true)
}

/// The checks kube-apiserver's `OwnerReferencesPermissionEnforcement`
/// admission plugin (`plugin/pkg/admission/gc`) makes for a write of `new`
/// over `old` (`None` for a create) of resource `written` by the same user:
/// `delete` of the object itself when an update changes its owner
/// references, and `update` of `{owner's resource}/finalizers` for every
/// reference that newly blocks its owner's deletion. The plugin is off in
/// upstream kube-apiserver by default and on in OpenShift.
pub fn owner_reference_checks(
    written: &ResourceAttributes,
    new: &Value,
    old: Option<&Value>,
    types: &[ResourceType],
) -> Vec<ResourceAttributes> {
    let new_refs = owner_refs(Some(new));
    let old_refs = owner_refs(old);
    let mut checks = Vec::new();
    if old.is_some() && new_refs != old_refs {
        checks.push(ResourceAttributes {
            verb: Verb::Delete,
            subresource: None,
            ..written.clone()
        });
    }
    for reference in new_refs.iter().filter(|r| blocks(r)) {
        let already = old_refs
            .iter()
            .any(|o| o["uid"] == reference["uid"] && blocks(o));
        if already {
            continue;
        }
        let api_version = reference["apiVersion"].as_str().unwrap_or_default();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let kind = reference["kind"].as_str().unwrap_or_default();
        let owner_types = types
            .iter()
            .filter(|t| t.group == group && t.version == version && t.kind == kind);
        for owner in owner_types {
            checks.push(ResourceAttributes {
                verb: Verb::Update,
                group: owner.group.clone(),
                version: owner.version.clone(),
                resource: owner.plural.clone(),
                subresource: Some("finalizers".to_owned()),
                namespace: written.namespace.clone(),
                name: reference["name"].as_str().map(str::to_owned),
            });
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target(method: Method, path_and_query: &str) -> RequestTarget {
        let (path, raw) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let query: HashMap<String, String> = raw
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.replace("%3D", "=")))
            .collect();
        request_target(&method, path, &query)
    }

    fn resource(method: Method, path: &str) -> ResourceAttributes {
        match target(method, path) {
            RequestTarget::Resource(attributes) => attributes,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn get_on_an_object_is_get_and_on_a_collection_list() {
        let get = resource(Method::GET, "/api/v1/namespaces/ns/secrets/s");
        assert_eq!(get.verb, Verb::Get);
        assert_eq!(get.namespace.as_deref(), Some("ns"));
        assert_eq!(get.name.as_deref(), Some("s"));
        assert_eq!(get.group, "");
        let list = resource(Method::GET, "/apis/browserfleet.io/v1alpha1/browserfleets");
        assert_eq!(list.verb, Verb::List);
        assert_eq!(
            (list.group.as_str(), list.namespace),
            ("browserfleet.io", None)
        );
    }

    #[test]
    fn watch_parameter_or_prefix_makes_a_watch() {
        for path in [
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases?watch=1",
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases?watch=true",
            "/apis/coordination.k8s.io/v1/watch/namespaces/ns/leases",
        ] {
            let watch = resource(Method::GET, path);
            assert_eq!(watch.verb, Verb::Watch, "{path}");
            assert_eq!(watch.resource, "leases", "{path}");
        }
        // A named GET stays a get, watch or not, as in kube-apiserver.
        let named = resource(
            Method::GET,
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l?watch=1",
        );
        assert_eq!(named.verb, Verb::Get);
        let off = resource(Method::GET, "/api/v1/configmaps?watch=false");
        assert_eq!(off.verb, Verb::List);
    }

    #[test]
    fn a_name_field_selector_names_the_list_or_watch() {
        let watch = resource(
            Method::GET,
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases?fieldSelector=metadata.name%3Dleader&watch=1",
        );
        assert_eq!(
            (watch.verb, watch.name.as_deref()),
            (Verb::Watch, Some("leader"))
        );
        assert_eq!(required_name("a=b,metadata.name==x"), Some("x".into()));
        assert_eq!(required_name("metadata.name!=x"), None);
        assert_eq!(required_name("metadata.namespace=x"), None);
    }

    #[test]
    fn writes_map_to_create_update_patch_delete_and_deletecollection() {
        let path = "/apis/browserfleet.io/v1alpha1/namespaces/ns/browsersessions";
        assert_eq!(resource(Method::POST, path).verb, Verb::Create);
        assert_eq!(
            resource(Method::PUT, &format!("{path}/s")).verb,
            Verb::Update
        );
        assert_eq!(
            resource(Method::PATCH, &format!("{path}/s")).verb,
            Verb::Patch
        );
        assert_eq!(
            resource(Method::DELETE, &format!("{path}/s")).verb,
            Verb::Delete
        );
        assert_eq!(resource(Method::DELETE, path).verb, Verb::DeleteCollection);
        assert_eq!(resource(Method::OPTIONS, path).verb, Verb::Unknown);
        let status = resource(Method::PUT, &format!("{path}/s/status"));
        assert_eq!(
            (status.resource.as_str(), status.subresource.as_deref()),
            ("browsersessions", Some("status"))
        );
    }

    #[test]
    fn namespaces_are_their_own_namespace_and_keep_status_and_finalize() {
        let ns = resource(Method::GET, "/api/v1/namespaces/team");
        assert_eq!(
            (
                ns.resource.as_str(),
                ns.name.as_deref(),
                ns.namespace.as_deref()
            ),
            ("namespaces", Some("team"), Some("team"))
        );
        let finalize = resource(Method::PUT, "/api/v1/namespaces/team/finalize");
        assert_eq!(
            (finalize.resource.as_str(), finalize.subresource.as_deref()),
            ("namespaces", Some("finalize"))
        );
        let all = resource(Method::GET, "/api/v1/namespaces");
        assert_eq!((all.verb, all.namespace), (Verb::List, None));
    }

    #[test]
    fn discovery_and_version_are_non_resource_requests() {
        for path in [
            "/version",
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/openapi/v3",
        ] {
            assert_eq!(
                target(Method::GET, path),
                RequestTarget::NonResource {
                    verb: "get".into(),
                    path: path.into()
                }
            );
        }
    }

    #[test]
    fn blocking_owner_references_need_update_of_the_owners_finalizers() {
        let types = super::super::resources::builtins();
        let secret = ResourceAttributes {
            verb: Verb::Create,
            group: String::new(),
            version: "v1".into(),
            resource: "secrets".into(),
            subresource: None,
            namespace: Some("ns".into()),
            name: None,
        };
        let owned = |block: bool| {
            json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap",
                "name": "owner", "uid": "u1", "blockOwnerDeletion": block}]}})
        };
        let checks = owner_reference_checks(&secret, &owned(true), None, &types);
        assert_eq!(checks.len(), 1);
        assert_eq!(
            checks[0].to_string(),
            "update core/configmaps/finalizers in ns name=owner"
        );
        assert!(owner_reference_checks(&secret, &owned(false), None, &types).is_empty());
        // An update that keeps the references needs nothing more.
        let update = ResourceAttributes {
            verb: Verb::Patch,
            name: Some("s".into()),
            ..secret.clone()
        };
        assert!(
            owner_reference_checks(&update, &owned(true), Some(&owned(true)), &types).is_empty()
        );
        // One that starts blocking changes the references: delete of the
        // object, and update of the owner's finalizers.
        let checks = owner_reference_checks(&update, &owned(true), Some(&owned(false)), &types);
        let shown: Vec<String> = checks.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "delete core/secrets in ns name=s",
                "update core/configmaps/finalizers in ns name=owner"
            ]
        );
    }
}
