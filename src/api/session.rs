//! `BrowserSession`: one browser session asked for the Kubernetes way.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::fleet::patterns::BROWSER_SWITCH;
use super::switches::sets_agent_owned_switch;
use super::validation::{CrossFieldRule, Violations};

/// Condition type: the session's browser is reachable through its endpoints.
pub const CONDITION_READY: &str = "Ready";

/// Schema patterns of session fields.
pub mod patterns {
    /// A Kubernetes object name (DNS-1123 subdomain).
    pub const OBJECT_NAME: &str =
        "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
    /// A profile or extension name: letters, digits, `.`, `_` and `-`.
    pub const SIMPLE_NAME: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$";
    /// A proxy server: scheme, host and optional port.
    pub const PROXY_SERVER: &str = "^(http|https|socks4|socks5)://[^\\s/]+$";
    /// A page the browser opens first.
    pub const START_URL: &str = "^(https?://|about:|data:)[^\\s]*$";
}

/// The cross-field rules of [`BrowserSessionSpec`], enforced by CEL in the CRD
/// and by [`BrowserSessionSpec::validate`].
pub mod rules {
    use std::sync::LazyLock;

    use super::CrossFieldRule;
    use crate::api::switches::no_agent_owned_switch_rule;

    /// A session must live for some time.
    pub const TTL_POSITIVE: CrossFieldRule = CrossFieldRule {
        cel: "!has(self.ttlSeconds) || self.ttlSeconds > 0",
        message: "ttlSeconds must be positive",
        field_path: ".ttlSeconds",
    };
    /// DevTools wiring and profile placement belong to the agent alone, whatever
    /// the fleet's blocklist says.
    /// The switches are those the agent refuses in every request.
    pub static ARGS_NOT_RESERVED: LazyLock<CrossFieldRule> =
        LazyLock::new(|| no_agent_owned_switch_rule("args", "args cannot set", ".args"));

    /// Every rule, in the order the CRD lists them.
    pub fn all() -> [CrossFieldRule; 2] {
        [TTL_POSITIVE, *ARGS_NOT_RESERVED]
    }
}

/// A request for one browser session on a fleet.
// kube's printcolumn(...) lists repeat `type_ = ...`, which clippy mistakes
// for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "browserfleet.io",
    version = "v1alpha1",
    kind = "BrowserSession",
    plural = "browsersessions",
    singular = "browsersession",
    namespaced,
    status = "BrowserSessionStatus",
    shortname = "bsess",
    category = "browserfleet",
    derive = "PartialEq",
    doc = "One browser session on a BrowserFleet, reachable through the hosting node's authenticated DevTools gateway.",
    printcolumn(
        name = "Fleet",
        type_ = "string",
        json_path = ".spec.fleetRef.name",
        description = "Fleet hosting the session"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Lifecycle phase"
    ),
    printcolumn(
        name = "Instance",
        type_ = "string",
        json_path = ".status.instanceId",
        description = "EC2 instance hosting the browser"
    ),
    // A string, not a date: kubectl shows a date as the time since, which
    // for a time to come is `<invalid>`.
    printcolumn(
        name = "Expires",
        type_ = "string",
        json_path = ".status.expiresAt",
        description = "When the session's TTL ends (UTC)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = rules::TTL_POSITIVE.to_cel(),
    validation = rules::ARGS_NOT_RESERVED.to_cel()
)]
#[serde(rename_all = "camelCase")]
pub struct BrowserSessionSpec {
    /// The BrowserFleet, in the same namespace, that hosts the session.
    pub fleet_ref: FleetRef,
    /// Lifetime in seconds; the fleet's `agent.sessions.defaultTtlSeconds` when
    /// omitted, and never more than its `maxTtlSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 604800))]
    pub ttl_seconds: Option<i64>,
    /// A browser profile to use instead of a fresh temporary one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<ProfileRef>,
    /// Proxy the browser sends its traffic through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySpec>,
    /// Extra browser switches, checked against the fleet's blocklist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 1024), pattern(BROWSER_SWITCH)))]
    pub args: Vec<String>,
    /// Names of unpacked extensions, installed in the agent's extensions
    /// directory on the node, to load into the browser.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(pattern(patterns::SIMPLE_NAME)))]
    pub extensions: Vec<String>,
    /// Page the browser opens first; `about:blank` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), pattern(patterns::START_URL))]
    pub start_url: Option<String>,
    /// Give up when no agent has started the session this many seconds after
    /// its request was enqueued (phase `Failed`, reason `StartTimeout`); the
    /// fleet's `agent.sessions.startTimeoutSeconds` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub start_timeout_seconds: Option<i64>,
    /// Delete this resource that many seconds after the session ended, like a
    /// Job's field of the same name; kept until deleted when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31536000))]
    pub ttl_seconds_after_finished: Option<i64>,
}

impl BrowserSessionSpec {
    /// Checks the cross-field rules the CRD enforces with CEL and returns every
    /// one that is broken.
    pub fn validate(&self) -> Result<(), Violations> {
        let mut found = Violations::default();
        found.check(
            &rules::TTL_POSITIVE,
            self.ttl_seconds.is_none_or(|ttl| ttl > 0),
        );
        found.check(
            &rules::ARGS_NOT_RESERVED,
            !self.args.iter().any(|a| sets_agent_owned_switch(a)),
        );
        found.into_result()
    }
}

/// A BrowserFleet in the session's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetRef {
    /// Name of the BrowserFleet.
    #[schemars(length(min = 1, max = 253), pattern(patterns::OBJECT_NAME))]
    pub name: String,
}

/// A browser profile kept on the node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfileRef {
    /// Profile name, unique within the fleet.
    #[schemars(pattern(patterns::SIMPLE_NAME))]
    pub name: String,
    /// Keep the profile after the session and place later sessions naming it on
    /// the node that holds it. Needs the fleet's
    /// `agent.profiles.allowPersistent`.
    #[serde(default)]
    pub persistent: bool,
}

/// A proxy for the browser's traffic.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxySpec {
    /// Proxy server, e.g. `http://proxy.internal:3128` or `socks5://10.0.0.5:1080`.
    #[schemars(length(max = 512), pattern(patterns::PROXY_SERVER))]
    pub server: String,
    /// Hosts reached directly, in Chromium's `--proxy-bypass-list` syntax.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub bypass: Vec<String>,
    /// A Secret in the session's namespace with `username` and `password` keys
    /// for proxy authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

/// A Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), pattern(patterns::OBJECT_NAME))]
    pub name: String,
}

/// Lifecycle phase of a session.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SessionPhase {
    /// Requested; waiting for an agent to take the request.
    #[default]
    Pending,
    /// An agent took the request and is starting the browser.
    Starting,
    /// The browser is reachable through `status.endpoints`.
    Ready,
    /// The browser is being stopped.
    Terminating,
    /// The browser is gone; `status.reason` says why.
    Terminated,
    /// The session never started; `status.reason` and `status.message` say why.
    Failed,
}

/// Why a session ended or failed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SessionEndReason {
    /// Its TTL passed.
    Expired,
    /// The fleet's hard maximum lifetime passed.
    HardTtlExceeded,
    /// No client used it within the fleet's never-used timeout.
    NeverUsed,
    /// The browser exited with an error.
    Crashed,
    /// The browser exited normally, e.g. after `Browser.close`.
    Closed,
    /// It was deleted.
    Deleted,
    /// Its instance was drained and the drain timeout passed.
    Drained,
    /// The browser could not be started.
    FailedToStart,
    /// The request was refused (invalid arguments, unknown fleet, over limits).
    Rejected,
    /// No agent started it within its start timeout.
    StartTimeout,
    /// EC2 took its instance back (a spot interruption); the agent had
    /// announced it and taken no new sessions since.
    Interrupted,
}

/// Where clients reach the session; both go through the node's gateway and
/// need the token from `status.credentialsSecret`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionEndpoints {
    /// Browser-level DevTools websocket URL (Puppeteer `browserWSEndpoint`,
    /// Playwright `connectOverCDP`).
    pub web_socket_debugger_url: String,
    /// HTTP base of the session's DevTools endpoints (`…/json/version`,
    /// `…/json/list`).
    pub http_url: String,
}

/// Observed state of a session, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrowserSessionStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: SessionPhase,
    /// Session id in the queue protocol and on the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// EC2 instance hosting the browser.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// DevTools endpoints through the node gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<SessionEndpoints>,
    /// Name of the Secret, owned by this session, that holds its gateway token
    /// under the key `token`. The token never appears in status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// When the request was sent to the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<Time>,
    /// When the session gives up waiting for an agent; the request carries
    /// it, so no agent starts it later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_deadline: Option<Time>,
    /// When the browser became reachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the session's TTL ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// When the session ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Why the session ended or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<SessionEndReason>,
    /// Details for a human.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_spec() -> BrowserSessionSpec {
        BrowserSessionSpec {
            fleet_ref: FleetRef {
                name: "minimal".into(),
            },
            ttl_seconds: Some(600),
            profile: None,
            proxy: None,
            args: vec!["--lang=de-DE".into()],
            extensions: Vec::new(),
            start_url: None,
            start_timeout_seconds: None,
            ttl_seconds_after_finished: None,
        }
    }

    #[test]
    fn valid_spec_has_no_violations() {
        assert_eq!(valid_spec().validate(), Ok(()));
        let mut no_ttl = valid_spec();
        no_ttl.ttl_seconds = None;
        assert_eq!(no_ttl.validate(), Ok(()));
    }

    #[test]
    fn zero_or_negative_ttl_is_a_violation() {
        for ttl in [0, -1, i64::MIN] {
            let mut spec = valid_spec();
            spec.ttl_seconds = Some(ttl);
            let violations = spec.validate().expect_err("invalid");
            assert_eq!(violations.messages(), vec![rules::TTL_POSITIVE.message]);
            assert_eq!(violations.as_slice()[0].field, "spec.ttlSeconds");
        }
    }

    #[test]
    fn devtools_and_profile_switches_are_violations() {
        for arg in [
            "--remote-debugging-port=9222",
            "--remote-debugging-address=0.0.0.0",
            "--user-data-dir=/tmp/x",
        ] {
            let mut spec = valid_spec();
            spec.args.push(arg.into());
            let violations = spec.validate().expect_err("invalid");
            assert_eq!(
                violations.messages(),
                vec![rules::ARGS_NOT_RESERVED.message],
                "{arg}"
            );
        }
    }

    #[test]
    fn every_violation_is_reported_at_once() {
        let mut spec = valid_spec();
        spec.ttl_seconds = Some(0);
        spec.args.push("--user-data-dir=/".into());
        assert_eq!(spec.validate().expect_err("invalid").as_slice().len(), 2);
    }

    #[test]
    fn crd_carries_exactly_the_rust_rules() {
        let (in_crd, expected) =
            crate::api::validation::spec_rules_in_crd::<BrowserSession>(&rules::all());
        assert_eq!(in_crd, expected);
    }
}
