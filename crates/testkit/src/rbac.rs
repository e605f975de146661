//! RBAC as kube-apiserver evaluates it, over rendered manifests and the dev
//! API server's request log: which rules a service account is bound to,
//! whether they allow a request, and which of their grants no request used.
//! It is how a test proves a chart's roles are exactly what a client uses.
//!
//! The rules follow `k8s.io/kubernetes/pkg/apis/rbac/v1/evaluation_helpers.go`:
//! a rule allows a request when its verbs, apiGroups, resources
//! (`resource/subresource`, `*`, `*/subresource`) and resourceNames (empty:
//! any) all match; `nonResourceURLs` match paths exactly or by a trailing `*`.
//! A ClusterRoleBinding grants its ClusterRole everywhere; a RoleBinding
//! grants its Role or ClusterRole in its own namespace only, and never
//! cluster-scoped or all-namespace requests or non-resource URLs.

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject,
};
use serde_json::Value;

use devcluster::apiserver::requests::{RequestTarget, ResourceAttributes};

/// Where a grant holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace and cluster-scoped resources (a ClusterRoleBinding).
    Cluster,
    /// Only requests in this namespace (a RoleBinding).
    Namespace(String),
}

/// One rule a subject holds through one binding.
#[derive(Clone, Debug)]
pub struct Grant {
    /// `Kind/[namespace/]name` of the role the rule is in, and its index.
    pub source: String,
    /// Where the binding grants it.
    pub scope: Scope,
    pub rule: PolicyRule,
}

/// Why manifests could not be read as RBAC objects.
#[derive(Debug, thiserror::Error)]
#[error("{kind} {name}: {message}")]
pub struct RbacError {
    kind: String,
    name: String,
    message: String,
}

fn parse<T: serde::de::DeserializeOwned>(object: &Value) -> Result<T, RbacError> {
    serde_json::from_value(object.clone()).map_err(|e| RbacError {
        kind: object["kind"].as_str().unwrap_or_default().to_owned(),
        name: object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        message: e.to_string(),
    })
}

fn is_rbac(object: &Value, kind: &str) -> bool {
    object["apiVersion"] == "rbac.authorization.k8s.io/v1" && object["kind"] == kind
}

fn names_service_account(subjects: Option<&Vec<Subject>>, namespace: &str, name: &str) -> bool {
    subjects.into_iter().flatten().any(|s| {
        s.kind == "ServiceAccount" && s.name == name && s.namespace.as_deref() == Some(namespace)
    })
}

/// The rules service account `namespace/name` holds through the bindings
/// among `objects` (rendered manifests), each with its scope. A binding to a
/// role that is not among `objects` grants nothing.
pub fn service_account_grants(
    objects: &[Value],
    namespace: &str,
    name: &str,
) -> Result<Vec<Grant>, RbacError> {
    let mut cluster_roles = Vec::new();
    let mut roles = Vec::new();
    for object in objects {
        if is_rbac(object, "ClusterRole") {
            cluster_roles.push(parse::<ClusterRole>(object)?);
        } else if is_rbac(object, "Role") {
            roles.push(parse::<Role>(object)?);
        }
    }
    let cluster_role = |role: &str, scope: Scope| -> Vec<Grant> {
        cluster_roles
            .iter()
            .filter(|r| r.metadata.name.as_deref() == Some(role))
            .flat_map(|r| r.rules.iter().flatten().enumerate())
            .map(|(i, rule)| Grant {
                source: format!("ClusterRole/{role} rule {i}"),
                scope: scope.clone(),
                rule: rule.clone(),
            })
            .collect()
    };
    let mut grants = Vec::new();
    for object in objects {
        if is_rbac(object, "ClusterRoleBinding") {
            let binding: ClusterRoleBinding = parse(object)?;
            if names_service_account(binding.subjects.as_ref(), namespace, name)
                && binding.role_ref.kind == "ClusterRole"
            {
                grants.extend(cluster_role(&binding.role_ref.name, Scope::Cluster));
            }
        } else if is_rbac(object, "RoleBinding") {
            let binding: RoleBinding = parse(object)?;
            let binding_ns = binding.metadata.namespace.clone().unwrap_or_default();
            if !names_service_account(binding.subjects.as_ref(), namespace, name) {
                continue;
            }
            let scope = Scope::Namespace(binding_ns.clone());
            match binding.role_ref.kind.as_str() {
                "ClusterRole" => grants.extend(cluster_role(&binding.role_ref.name, scope)),
                "Role" => {
                    let role = roles.iter().find(|r| {
                        r.metadata.name.as_deref() == Some(binding.role_ref.name.as_str())
                            && r.metadata.namespace.as_deref() == Some(binding_ns.as_str())
                    });
                    for (i, rule) in role
                        .into_iter()
                        .flat_map(|r| r.rules.iter().flatten().enumerate())
                    {
                        grants.push(Grant {
                            source: format!("Role/{binding_ns}/{} rule {i}", binding.role_ref.name),
                            scope: scope.clone(),
                            rule: rule.clone(),
                        });
                    }
                }
                _ => {}
            }
        }
    }
    Ok(grants)
}

fn has(list: &[String], wanted: &str) -> bool {
    list.iter().any(|entry| entry == "*" || entry == wanted)
}

fn resource_matches(rule: &[String], attributes: &ResourceAttributes) -> bool {
    let combined = match &attributes.subresource {
        Some(sub) => format!("{}/{sub}", attributes.resource),
        None => attributes.resource.clone(),
    };
    rule.iter().any(|entry| {
        entry == "*"
            || *entry == combined
            || attributes
                .subresource
                .as_ref()
                .is_some_and(|sub| entry.strip_prefix("*/") == Some(sub.as_str()))
    })
}

fn url_matches(rule: &[String], path: &str) -> bool {
    rule.iter().any(|entry| {
        entry == "*"
            || entry == path
            || entry
                .strip_suffix('*')
                .is_some_and(|prefix| path.starts_with(prefix))
    })
}

/// Whether `rule` allows `target`, scope aside.
pub fn rule_allows(rule: &PolicyRule, target: &RequestTarget) -> bool {
    match target {
        RequestTarget::Resource(attributes) => {
            has(&rule.verbs, attributes.verb.as_str())
                && has(
                    rule.api_groups.as_deref().unwrap_or_default(),
                    &attributes.group,
                )
                && resource_matches(rule.resources.as_deref().unwrap_or_default(), attributes)
                && match rule.resource_names.as_deref() {
                    None | Some([]) => true,
                    Some(names) => attributes
                        .name
                        .as_ref()
                        .is_some_and(|name| names.contains(name)),
                }
        }
        RequestTarget::NonResource { verb, path } => {
            has(&rule.verbs, verb)
                && url_matches(rule.non_resource_urls.as_deref().unwrap_or_default(), path)
        }
    }
}

/// Whether `grant` holds for `target`'s scope.
fn in_scope(scope: &Scope, target: &RequestTarget) -> bool {
    match (scope, target) {
        (Scope::Cluster, _) => true,
        (Scope::Namespace(ns), RequestTarget::Resource(attributes)) => {
            attributes.namespace.as_deref() == Some(ns.as_str())
        }
        (Scope::Namespace(_), RequestTarget::NonResource { .. }) => false,
    }
}

/// Whether `grant` allows `target`.
pub fn grant_allows(grant: &Grant, target: &RequestTarget) -> bool {
    in_scope(&grant.scope, target) && rule_allows(&grant.rule, target)
}

/// Whether any of `grants` allows `target`.
pub fn allowed(grants: &[Grant], target: &RequestTarget) -> bool {
    grants.iter().any(|g| grant_allows(g, target))
}

/// One (apiGroup, resource or URL, verb) a rule grants that no request used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnusedGrant {
    /// The rule's source (see [`Grant::source`]).
    pub source: String,
    /// The API group (empty for core), or `None` for a non-resource URL.
    pub api_group: Option<String>,
    /// The resource (`plural[/subresource]`) or URL.
    pub resource: String,
    pub verb: String,
}

impl std::fmt::Display for UnusedGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.api_group {
            Some(group) if group.is_empty() => {
                write!(f, "{}: {} core/{}", self.source, self.verb, self.resource)
            }
            Some(group) => write!(
                f,
                "{}: {} {group}/{}",
                self.source, self.verb, self.resource
            ),
            None => write!(f, "{}: {} {}", self.source, self.verb, self.resource),
        }
    }
}

/// Every verb on every apiGroup and resource (or URL) of every grant that
/// none of `targets` used: the rule narrowed to that one combination, in
/// the grant's scope, allows none of them.
pub fn unused_grants(grants: &[Grant], targets: &[RequestTarget]) -> Vec<UnusedGrant> {
    let mut unused = Vec::new();
    for grant in grants {
        let rule = &grant.rule;
        let used = |narrowed: PolicyRule| {
            targets
                .iter()
                .any(|t| in_scope(&grant.scope, t) && rule_allows(&narrowed, t))
        };
        for verb in &rule.verbs {
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    let narrowed = PolicyRule {
                        api_groups: Some(vec![group.clone()]),
                        resources: Some(vec![resource.clone()]),
                        verbs: vec![verb.clone()],
                        ..rule.clone()
                    };
                    if !used(narrowed) {
                        unused.push(UnusedGrant {
                            source: grant.source.clone(),
                            api_group: Some(group.clone()),
                            resource: resource.clone(),
                            verb: verb.clone(),
                        });
                    }
                }
            }
            for url in rule.non_resource_urls.iter().flatten() {
                let narrowed = PolicyRule {
                    non_resource_urls: Some(vec![url.clone()]),
                    verbs: vec![verb.clone()],
                    ..rule.clone()
                };
                if !used(narrowed) {
                    unused.push(UnusedGrant {
                        source: grant.source.clone(),
                        api_group: None,
                        resource: url.clone(),
                        verb: verb.clone(),
                    });
                }
            }
        }
    }
    unused
}

#[cfg(test)]
mod tests {
    use super::*;
    use devcluster::apiserver::requests::Verb;
    use serde_json::json;

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str], names: &[&str]) -> PolicyRule {
        let strings = |s: &[&str]| s.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        PolicyRule {
            api_groups: Some(strings(groups)),
            resources: Some(strings(resources)),
            verbs: strings(verbs),
            resource_names: (!names.is_empty()).then(|| strings(names)),
            non_resource_urls: None,
        }
    }

    fn request(
        verb: Verb,
        group: &str,
        resource: &str,
        ns: Option<&str>,
        name: Option<&str>,
    ) -> RequestTarget {
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, s)) => (r.to_owned(), Some(s.to_owned())),
            None => (resource.to_owned(), None),
        };
        RequestTarget::Resource(ResourceAttributes {
            verb,
            group: group.to_owned(),
            version: "v1".into(),
            resource,
            subresource,
            namespace: ns.map(str::to_owned),
            name: name.map(str::to_owned),
        })
    }

    #[test]
    fn verbs_groups_and_resources_must_all_match() {
        let r = rule(
            &["browserfleet.io"],
            &["browserfleets"],
            &["get", "list"],
            &[],
        );
        assert!(rule_allows(
            &r,
            &request(
                Verb::Get,
                "browserfleet.io",
                "browserfleets",
                Some("a"),
                Some("f")
            )
        ));
        assert!(rule_allows(
            &r,
            &request(Verb::List, "browserfleet.io", "browserfleets", None, None)
        ));
        assert!(!rule_allows(
            &r,
            &request(Verb::Watch, "browserfleet.io", "browserfleets", None, None)
        ));
        assert!(!rule_allows(
            &r,
            &request(Verb::Get, "", "browserfleets", None, None)
        ));
        assert!(!rule_allows(
            &r,
            &request(Verb::Get, "browserfleet.io", "browsersessions", None, None)
        ));
    }

    #[test]
    fn a_subresource_needs_its_own_entry_or_a_star_slash_entry() {
        let main = rule(&["browserfleet.io"], &["browserfleets"], &["patch"], &[]);
        let status = request(
            Verb::Patch,
            "browserfleet.io",
            "browserfleets/status",
            Some("a"),
            Some("f"),
        );
        assert!(!rule_allows(&main, &status));
        assert!(rule_allows(
            &rule(
                &["browserfleet.io"],
                &["browserfleets/status"],
                &["patch"],
                &[]
            ),
            &status
        ));
        assert!(rule_allows(
            &rule(&["browserfleet.io"], &["*/status"], &["patch"], &[]),
            &status
        ));
        assert!(!rule_allows(
            &rule(&["browserfleet.io"], &["*/scale"], &["patch"], &[]),
            &status
        ));
        // `*` covers subresources too, and `resource/status` not the resource.
        assert!(rule_allows(&rule(&["*"], &["*"], &["*"], &[]), &status));
        let object = request(
            Verb::Patch,
            "browserfleet.io",
            "browserfleets",
            Some("a"),
            Some("f"),
        );
        assert!(!rule_allows(
            &rule(
                &["browserfleet.io"],
                &["browserfleets/status"],
                &["patch"],
                &[]
            ),
            &object
        ));
    }

    #[test]
    fn resource_names_need_a_named_request() {
        let r = rule(
            &["coordination.k8s.io"],
            &["leases"],
            &["get", "create", "list"],
            &["leader"],
        );
        assert!(rule_allows(
            &r,
            &request(
                Verb::Get,
                "coordination.k8s.io",
                "leases",
                Some("a"),
                Some("leader")
            )
        ));
        assert!(!rule_allows(
            &r,
            &request(
                Verb::Get,
                "coordination.k8s.io",
                "leases",
                Some("a"),
                Some("other")
            )
        ));
        // A create names nothing (the name is in the body), nor does a plain list.
        assert!(!rule_allows(
            &r,
            &request(
                Verb::Create,
                "coordination.k8s.io",
                "leases",
                Some("a"),
                None
            )
        ));
        assert!(!rule_allows(
            &r,
            &request(Verb::List, "coordination.k8s.io", "leases", Some("a"), None)
        ));
    }

    #[test]
    fn non_resource_urls_match_exactly_or_by_prefix() {
        let r = PolicyRule {
            non_resource_urls: Some(vec!["/version".into(), "/apis/*".into()]),
            verbs: vec!["get".into()],
            ..PolicyRule::default()
        };
        let get = |path: &str| RequestTarget::NonResource {
            verb: "get".into(),
            path: path.into(),
        };
        assert!(rule_allows(&r, &get("/version")));
        assert!(rule_allows(&r, &get("/apis/apps/v1")));
        assert!(!rule_allows(&r, &get("/api")));
        assert!(!rule_allows(
            &r,
            &RequestTarget::NonResource {
                verb: "post".into(),
                path: "/version".into()
            }
        ));
        // A resource rule never allows a non-resource request.
        assert!(!rule_allows(
            &rule(&["*"], &["*"], &["*"], &[]),
            &get("/version")
        ));
    }

    fn manifests() -> Vec<Value> {
        vec![
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "op"},
                "rules": [{"apiGroups": ["browserfleet.io"], "resources": ["browserfleets"], "verbs": ["get", "list", "watch"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "op"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "op"},
                "subjects": [{"kind": "ServiceAccount", "name": "op", "namespace": "system"}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "lease", "namespace": "system"},
                "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "lease", "namespace": "system"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lease"},
                "subjects": [{"kind": "ServiceAccount", "name": "op", "namespace": "system"}]}),
            // Bound to someone else: grants the operator nothing.
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "other"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "op"},
                "subjects": [{"kind": "ServiceAccount", "name": "op", "namespace": "elsewhere"}]}),
            // A RoleBinding of a ClusterRole grants it in its namespace only.
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "secrets"},
                "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "secrets", "namespace": "team"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "secrets"},
                "subjects": [{"kind": "ServiceAccount", "name": "op", "namespace": "system"}]}),
        ]
    }

    #[test]
    fn bindings_scope_their_roles() {
        let grants = service_account_grants(&manifests(), "system", "op").expect("RBAC objects");
        let sources: Vec<&str> = grants.iter().map(|g| g.source.as_str()).collect();
        assert_eq!(
            sources,
            [
                "ClusterRole/op rule 0",
                "Role/system/lease rule 0",
                "ClusterRole/secrets rule 0"
            ]
        );
        // The ClusterRoleBinding: in every namespace and across all of them.
        assert!(allowed(
            &grants,
            &request(Verb::Watch, "browserfleet.io", "browserfleets", None, None)
        ));
        assert!(allowed(
            &grants,
            &request(
                Verb::Get,
                "browserfleet.io",
                "browserfleets",
                Some("team"),
                Some("f")
            )
        ));
        // The RoleBindings: only in their namespace.
        assert!(allowed(
            &grants,
            &request(
                Verb::Create,
                "coordination.k8s.io",
                "leases",
                Some("system"),
                None
            )
        ));
        assert!(!allowed(
            &grants,
            &request(
                Verb::Create,
                "coordination.k8s.io",
                "leases",
                Some("team"),
                None
            )
        ));
        assert!(!allowed(
            &grants,
            &request(Verb::Create, "coordination.k8s.io", "leases", None, None)
        ));
        assert!(allowed(
            &grants,
            &request(Verb::Get, "", "secrets", Some("team"), Some("s"))
        ));
        assert!(!allowed(
            &grants,
            &request(Verb::Get, "", "secrets", Some("system"), Some("s"))
        ));
        assert!(
            service_account_grants(&manifests(), "elsewhere", "nobody")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn unused_grants_name_each_verb_and_resource_nothing_used() {
        let grants = service_account_grants(&manifests(), "system", "op").expect("RBAC objects");
        let used = [
            request(Verb::List, "browserfleet.io", "browserfleets", None, None),
            request(Verb::Watch, "browserfleet.io", "browserfleets", None, None),
            // Outside the RoleBinding's namespace: does not use its grant.
            request(Verb::Get, "", "secrets", Some("system"), Some("s")),
        ];
        let unused: Vec<String> = unused_grants(&grants, &used)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            unused,
            [
                "ClusterRole/op rule 0: get browserfleet.io/browserfleets",
                "Role/system/lease rule 0: create coordination.k8s.io/leases",
                "ClusterRole/secrets rule 0: get core/secrets",
            ]
        );
    }
}
