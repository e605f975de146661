//! The agent configuration the operator writes to a fleet's SSM parameter:
//! the fleet's spec, queues and secrets rendered into [`AgentConfig`], a pure
//! function so that it is tested without AWS.
//!
//! What a fleet may configure is checked by the CRD (schema and CEL) and by
//! `BrowserFleetSpec::validate()`; the agent checks its configuration again
//! when it starts. Both take their rules from one definition (the fleet's
//! `rules`, `PortRange`, `crate::api::switches`), and a property test
//! (`tests/suite/fleet_agent_config.rs`) shows that every spec the CRD and
//! `validate()` accept renders into a configuration the agent accepts.

use crate::agent::config::{AgentConfig, DEFAULT_HEARTBEAT_INTERVAL_SECONDS};
use crate::api::fleet::{BROWSER_START_TIMEOUT_SECONDS, BrowserFleetSpec};
use crate::cloud::{QueueUrl, SecretValue};

/// The queues of a fleet, as the operator ensured them.
#[derive(Clone, Debug)]
pub struct FleetQueues {
    /// Where session requests arrive.
    pub requests: QueueUrl,
    /// The request queue's dead-letter queue, when the operator created one.
    pub dead_letter: Option<QueueUrl>,
    /// Replies for BrowserSessions, forwarded deletes, registrations.
    pub events: QueueUrl,
}

/// The fleet's secrets, generated once and kept in a Secret it owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetSecrets {
    /// Token of the agents' control API.
    pub fleet_token: SecretValue,
    /// Key of the HMAC signature on callbacks.
    pub callback_secret: SecretValue,
    /// Key of the HMAC signature on the agents' events-queue messages and
    /// the operator's requests (`protocol::signing`).
    pub message_key: SecretValue,
}

/// Address agents on EC2 listen on: every interface, so that clients in the
/// VPC reach the gateway (DevTools itself stays on 127.0.0.1).
pub const EC2_LISTEN_ADDRESS: &str = "0.0.0.0";

/// The SSM parameter holding the agent configuration of fleet
/// `namespace/name`. Both are DNS labels or subdomains, which are valid
/// parameter-name characters; the name is derived, not configured, so that
/// the operator, the bootstrap script and the node simulator agree on it.
pub fn parameter_name(namespace: &str, name: &str) -> String {
    format!("/browserfleet/{namespace}/{name}/agent-config")
}

/// A spec value the agent's configuration cannot hold. The CRD's bounds
/// keep every value in range; an object stored before a bound existed (or
/// written where the schema is not enforced) can still carry one, and the
/// fleet reconciler reports it as an invalid spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.{field}: {value} is out of range for the agent")]
pub struct RenderError {
    /// Path of the field below `spec`.
    pub field: &'static str,
    /// The value found.
    pub value: i64,
}

/// The configuration of the agents of fleet `namespace/name` with `spec`.
pub fn render(
    namespace: &str,
    name: &str,
    spec: &BrowserFleetSpec,
    queues: &FleetQueues,
    secrets: &FleetSecrets,
) -> Result<AgentConfig, RenderError> {
    let agent = &spec.agent;
    fn fit<T: TryFrom<i32>>(field: &'static str, value: i32) -> Result<T, RenderError> {
        T::try_from(value).map_err(|_| RenderError {
            field,
            value: value.into(),
        })
    }
    let gateway_port: u16 = fit("agent.gatewayPort", agent.gateway_port)?;
    if gateway_port < 1024 {
        // The agent takes 0 as "pick a port", which is for local runs only.
        return Err(RenderError {
            field: "agent.gatewayPort",
            value: agent.gateway_port.into(),
        });
    }
    Ok(AgentConfig {
        fleet: format!("{namespace}/{name}"),
        request_queue_url: queues.requests.as_str().to_owned(),
        dead_letter_queue_url: queues.dead_letter.as_ref().map(|u| u.as_str().to_owned()),
        events_queue_url: queues.events.as_str().to_owned(),
        slots: fit(
            "capacity.sessionsPerInstance",
            spec.capacity.sessions_per_instance,
        )?,
        gateway_port,
        listen_address: EC2_LISTEN_ADDRESS.to_owned(),
        browser_port_range: agent.browser_port_range.clone(),
        browser: agent.browser.clone(),
        sessions: agent.sessions.clone(),
        profiles: agent.profiles.clone(),
        replies: agent.replies.clone(),
        egress: agent.egress.clone(),
        launch_timeout_seconds: fit("(browser start timeout)", BROWSER_START_TIMEOUT_SECONDS)?,
        drain_timeout_seconds: fit(
            "scaling.drainTimeoutSeconds",
            spec.scaling.drain_timeout_seconds,
        )?,
        visibility_timeout_seconds: fit(
            "queue.visibilityTimeoutSeconds",
            spec.queue.visibility_timeout_seconds,
        )?,
        heartbeat_interval_seconds: DEFAULT_HEARTBEAT_INTERVAL_SECONDS,
        state_dir: None,
        extensions_dir: None,
        artifact_sha256: agent
            .artifact
            .as_ref()
            .map(|a| a.sha256.to_ascii_lowercase()),
        fleet_token: secrets.fleet_token.clone(),
        callback_secret: secrets.callback_secret.clone(),
        message_key: secrets.message_key.clone(),
    })
}
