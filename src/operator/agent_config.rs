//! The agent configuration the operator writes to a fleet's SSM parameter:
//! the fleet's spec, queues and secrets rendered into [`AgentConfig`], a pure
//! function so that it is tested without AWS.
//!
//! What a fleet may configure is checked by the CRD (schema and CEL) and by
//! `BrowserFleetSpec::validate()`; the agent checks its configuration again
//! when it starts. Both take their rules from one definition (the fleet's
//! `rules`, `PortRange`, `crate::api::switches`), and a property test
//! (`tests/fleet_agent_config.rs`) shows that every spec the CRD and
//! `validate()` accept renders into a configuration the agent accepts.

use std::fmt;

use crate::agent::config::{AgentConfig, DEFAULT_HEARTBEAT_INTERVAL_SECONDS};
use crate::api::fleet::{BROWSER_START_TIMEOUT_SECONDS, BrowserFleetSpec};
use crate::cloud::QueueUrl;

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
#[derive(Clone, PartialEq, Eq)]
pub struct FleetSecrets {
    /// Token of the agents' control API.
    pub fleet_token: String,
    /// Key of the HMAC signature on callbacks.
    pub callback_secret: String,
}

impl fmt::Debug for FleetSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FleetSecrets(<redacted>)")
    }
}

/// Address agents on EC2 listen on: every interface, so that clients in the
/// VPC reach the gateway (DevTools itself stays on 127.0.0.1).
pub const EC2_LISTEN_ADDRESS: &str = "0.0.0.0";

/// The configuration of the agents of fleet `namespace/name` with `spec`.
pub fn render(
    namespace: &str,
    name: &str,
    spec: &BrowserFleetSpec,
    queues: &FleetQueues,
    secrets: &FleetSecrets,
) -> AgentConfig {
    let agent = &spec.agent;
    // The CRD bounds every number below to the agent's types; a value out of
    // range (an object stored before a bound existed) becomes 0, which the
    // agent's own check refuses and names.
    let unsigned = |v: i32| u32::try_from(v).unwrap_or(0);
    AgentConfig {
        fleet: format!("{namespace}/{name}"),
        request_queue_url: queues.requests.as_str().to_owned(),
        dead_letter_queue_url: queues.dead_letter.as_ref().map(|u| u.as_str().to_owned()),
        events_queue_url: queues.events.as_str().to_owned(),
        slots: u16::try_from(spec.capacity.sessions_per_instance).unwrap_or(0),
        gateway_port: u16::try_from(agent.gateway_port).unwrap_or(0),
        listen_address: EC2_LISTEN_ADDRESS.to_owned(),
        browser_port_range: agent.browser_port_range.clone(),
        browser: agent.browser.clone(),
        sessions: agent.sessions.clone(),
        profiles: agent.profiles.clone(),
        launch_timeout_seconds: unsigned(BROWSER_START_TIMEOUT_SECONDS),
        drain_timeout_seconds: unsigned(spec.scaling.drain_timeout_seconds),
        visibility_timeout_seconds: unsigned(spec.queue.visibility_timeout_seconds),
        heartbeat_interval_seconds: DEFAULT_HEARTBEAT_INTERVAL_SECONDS,
        state_dir: None,
        extensions_dir: None,
        fleet_token: secrets.fleet_token.clone(),
        callback_secret: secrets.callback_secret.clone(),
    }
}
