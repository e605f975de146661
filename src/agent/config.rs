//! The agent's configuration: the JSON document the operator writes to the
//! fleet's SSM parameter (or a file, for local runs), and its validation.
//!
//! The browser, session and profile sections are the fleet's own
//! `spec.agent` types, so what a platform team writes in the manifest reaches
//! the agent unchanged. Durations are seconds on the wire and
//! [`Duration`]s inside ([`AgentSettings`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::api::fleet::{
    BROWSER_START_TIMEOUT_SECONDS, BrowserSpec, EgressSpec, PortRange, ProfilePolicy, ReplyPolicy,
    SessionLimits,
};

use crate::api::switches::{SWITCH_PATTERN, sets_agent_owned_switch};
use crate::cloud::SecretValue;

use super::args::ArgPolicy;
use super::replies::ReplyTargets;
use super::slots::Port;
use crate::protocol::{CallbackUrl, ReplyQueueUrl};

/// Shortest fleet token or callback secret accepted: 32 characters, at least
/// 128 bits of randomness in hex.
pub const MIN_SECRET_LEN: usize = 32;

/// The configuration document, as written by the operator. Its `Debug`
/// leaves the two secrets out ([`SecretValue`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    /// The fleet, as `namespace/name` (for logs and replies).
    pub fleet: String,
    /// Queue the agent takes session requests from.
    pub request_queue_url: String,
    /// The request queue's dead-letter queue: a message that cannot be parsed
    /// and names no reply target is moved there at once. Without it such a
    /// message is made visible again and reaches the dead-letter queue
    /// through the queue's redrive policy.
    #[serde(default)]
    pub dead_letter_queue_url: Option<String>,
    /// The fleet's events queue (deletes for sessions hosted elsewhere).
    pub events_queue_url: String,
    /// Sessions this instance hosts at once (the fleet's
    /// `capacity.sessionsPerInstance`).
    pub slots: u16,
    /// Port of the agent's one HTTP listener; 0 picks a free one (local runs
    /// and tests).
    pub gateway_port: u16,
    /// Address the listener binds to.
    #[serde(default = "default_listen_address")]
    pub listen_address: String,
    /// Ports the browsers' DevTools endpoints use, on 127.0.0.1.
    pub browser_port_range: PortRange,
    /// Which browser, how.
    #[serde(default)]
    pub browser: BrowserSpec,
    /// Session lifetimes.
    #[serde(default)]
    pub sessions: SessionLimits,
    /// Profiles kept on the instance.
    #[serde(default)]
    pub profiles: ProfilePolicy,
    /// Reply targets of requests that name none, and the reply format.
    /// Left out when unset, so that agents older than the field accept the
    /// configuration of a fleet that does not use it.
    #[serde(default, skip_serializing_if = "ReplyPolicy::is_default")]
    pub replies: ReplyPolicy,
    /// Where the browsers may connect, through the agent's egress proxy.
    /// Left out when unset, like `replies`.
    #[serde(default, skip_serializing_if = "EgressSpec::is_default")]
    pub egress: EgressSpec,
    /// How long a browser may take to answer DevTools after its start.
    #[serde(default = "default_launch_timeout_seconds")]
    pub launch_timeout_seconds: u32,
    /// How long a drain waits for sessions to end before ending them.
    #[serde(default = "default_drain_timeout_seconds")]
    pub drain_timeout_seconds: u32,
    /// Visibility of a received request while its browser starts.
    #[serde(default = "default_visibility_timeout_seconds")]
    pub visibility_timeout_seconds: u32,
    /// How often the agent announces itself on the events queue
    /// (`node.heartbeat`, after one `node.registered` at start).
    #[serde(default = "default_heartbeat_interval_seconds")]
    pub heartbeat_interval_seconds: u32,
    /// Where the session table and profiles live; an OS default when absent.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Directory of unpacked extensions a request may name;
    /// `<stateDir>/extensions` when absent.
    #[serde(default)]
    pub extensions_dir: Option<PathBuf>,
    /// SHA-256 of the agent artifact the fleet names. When set, the agent
    /// reports the digest of its own executable (`/v1/state`'s
    /// `artifactSha256`), which tells the operator whether this node still
    /// has to be upgraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_sha256: Option<String>,
    /// Token of the control API (`/v1/state`, `/v1/drain`, session delete).
    pub fleet_token: SecretValue,
    /// Key of the HMAC signature on callbacks.
    pub callback_secret: SecretValue,
    /// Key of the HMAC signature on events-queue messages and on the
    /// operator's requests (`protocol::signing`).
    pub message_key: SecretValue,
}

/// [`SWITCH_PATTERN`], compiled once.
fn switch_pattern() -> &'static regex::Regex {
    static PATTERN: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(SWITCH_PATTERN).expect("SWITCH_PATTERN is a valid regex")
    });
    &PATTERN
}

fn default_listen_address() -> String {
    "0.0.0.0".into()
}
fn default_launch_timeout_seconds() -> u32 {
    BROWSER_START_TIMEOUT_SECONDS.unsigned_abs()
}
/// Heartbeats come this often unless the configuration says otherwise.
pub const DEFAULT_HEARTBEAT_INTERVAL_SECONDS: u32 = 30;

fn default_heartbeat_interval_seconds() -> u32 {
    DEFAULT_HEARTBEAT_INTERVAL_SECONDS
}
fn default_drain_timeout_seconds() -> u32 {
    900
}
fn default_visibility_timeout_seconds() -> u32 {
    60
}

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigViolation {
    /// JSON path of the field.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

/// Why a configuration cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The document is not JSON of the expected shape.
    #[error("agent configuration is not valid JSON of the expected shape: {0}")]
    Parse(#[from] serde_json::Error),
    /// The document parsed, but some values are unusable.
    #[error("agent configuration is invalid: {}", list(.0))]
    Invalid(Vec<ConfigViolation>),
}

fn list(violations: &[ConfigViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A validated configuration, with durations and ports in their types.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    /// The document it came from.
    pub config: AgentConfig,
    /// First browser port.
    pub first_port: Port,
    /// Last browser port (inclusive).
    pub last_port: Port,
    /// TTL of a request that names none.
    pub default_ttl: Duration,
    /// Longest TTL; longer requests are cut to it.
    pub max_ttl: Duration,
    /// A session still unused after this is ended (`neverUsed`).
    pub never_used_timeout: Duration,
    /// Deadline for a browser to answer DevTools.
    pub launch_timeout: Duration,
    /// Deadline of a drain.
    pub drain_timeout: Duration,
    /// Invisibility of a request while it is handled.
    pub visibility_timeout: Duration,
    /// Time between two `node.heartbeat` announcements.
    pub heartbeat_interval: Duration,
    /// Age after which an unused named profile is removed.
    pub profile_max_age: Duration,
    /// Where the session table and profiles live.
    pub state_dir: PathBuf,
    /// Unpacked extensions requests may name.
    pub extensions_dir: PathBuf,
    /// The fleet's allowed and blocked browser switches.
    pub arg_policy: ArgPolicy,
    /// Where the replies of a request that names no target go.
    pub default_targets: ReplyTargets,
    /// The fleet's blocked egress ranges, parsed.
    pub egress_blocked: Vec<ipnet::IpNet>,
    /// The fleet's allowed egress ranges, parsed.
    pub egress_allowed: Vec<ipnet::IpNet>,
    /// The user browsers run as, when not the agent's own (`--browser-user`,
    /// set by the node, not by the fleet's configuration).
    pub browser_user: Option<crate::agent::browser_user::BrowserUser>,
    /// When a failed callback is tried again (about two minutes in all);
    /// tests shorten it.
    pub callback_retries: crate::protocol::callback::RetrySchedule,
}

/// Values from the agent's command line that replace the configuration's,
/// so that several agents of one fleet share a host (the node simulator
/// runs one per simulated instance): each its own listener, browser ports
/// and state. Applied before validation, so they obey the same rules.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigOverrides {
    /// Replaces `listenAddress`.
    pub listen_address: Option<String>,
    /// Replaces `gatewayPort` (0 picks a free port).
    pub gateway_port: Option<u16>,
    /// Replaces `browserPortRange`.
    pub browser_port_range: Option<PortRange>,
    /// Replaces `stateDir`.
    pub state_dir: Option<PathBuf>,
    /// Replaces `egress.proxyPort` (0 picks a free port).
    pub egress_proxy_port: Option<u16>,
}

impl ConfigOverrides {
    /// Writes every given value into `config`.
    pub fn apply(&self, config: &mut AgentConfig) {
        if let Some(address) = &self.listen_address {
            config.listen_address = address.clone();
        }
        if let Some(port) = self.gateway_port {
            config.gateway_port = port;
        }
        if let Some(range) = &self.browser_port_range {
            config.browser_port_range = range.clone();
        }
        if let Some(dir) = &self.state_dir {
            config.state_dir = Some(dir.clone());
        }
        if let Some(port) = self.egress_proxy_port {
            config.egress.proxy_port = i32::from(port);
        }
    }
}

/// Parses a port range written `START-END` (or one port, `PORT`); whether
/// the ports are usable is the configuration's check.
pub fn parse_port_range(text: &str) -> Result<PortRange, String> {
    let port = |part: &str| {
        part.trim()
            .parse::<u16>()
            .map(i32::from)
            .map_err(|_| format!("{part:?} is not a port number (0 to 65535)"))
    };
    let (start, end) = match text.split_once('-') {
        Some((start, end)) => (port(start)?, port(end)?),
        None => {
            let single = port(text)?;
            (single, single)
        }
    };
    Ok(PortRange { start, end })
}

impl AgentConfig {
    /// Parses and validates a configuration document.
    pub fn parse(json: &str) -> Result<AgentSettings, ConfigError> {
        Self::parse_with(json, &ConfigOverrides::default())
    }

    /// Parses a configuration document, applies `overrides`, and validates
    /// the result.
    pub fn parse_with(
        json: &str,
        overrides: &ConfigOverrides,
    ) -> Result<AgentSettings, ConfigError> {
        let mut config: AgentConfig = serde_json::from_str(json)?;
        overrides.apply(&mut config);
        config.validate()
    }

    /// Checks every value and returns all violations at once.
    pub fn validate(self) -> Result<AgentSettings, ConfigError> {
        let mut errors = Vec::new();
        let mut bad =
            |field: &'static str, message: String| errors.push(ConfigViolation { field, message });
        if self.fleet.split('/').filter(|p| !p.is_empty()).count() != 2 {
            bad("fleet", format!("{:?} is not namespace/name", self.fleet));
        }
        for (field, url) in [
            ("requestQueueUrl", Some(&self.request_queue_url)),
            ("eventsQueueUrl", Some(&self.events_queue_url)),
            ("deadLetterQueueUrl", self.dead_letter_queue_url.as_ref()),
        ] {
            if let Some(url) = url
                && !(url.starts_with("https://") || url.starts_with("http://"))
            {
                bad(field, format!("{url:?} is not an http(s) queue URL"));
            }
        }
        if !(1..=256).contains(&self.slots) {
            bad("slots", format!("{} is not within 1..=256", self.slots));
        }
        // The fleet's own rules (crate::api::fleet::rules), so that a fleet
        // the CRD accepts never boots agents that refuse their configuration.
        let range = &self.browser_port_range;
        let ports = |v: i32| u16::try_from(v).ok().filter(|p| *p >= 1024);
        let (first, last) = (ports(range.start), ports(range.end));
        match (first, last) {
            (Some(first), Some(last)) if range.is_ordered() => {
                if range.len() < i64::from(self.slots) {
                    bad(
                        "browserPortRange",
                        format!(
                            "{}..={} has fewer ports than the {} slots",
                            first, last, self.slots
                        ),
                    );
                }
                if (first..=last).contains(&self.gateway_port) {
                    bad(
                        "gatewayPort",
                        format!("{} is inside browserPortRange", self.gateway_port),
                    );
                }
            }
            _ => bad(
                "browserPortRange",
                format!(
                    "{}..={} is not an ordered range of ports from 1024 to 65535",
                    range.start, range.end
                ),
            ),
        }
        if self.gateway_port != 0 && self.gateway_port < 1024 {
            bad(
                "gatewayPort",
                format!("{} is below 1024", self.gateway_port),
            );
        }
        if self.listen_address.parse::<std::net::IpAddr>().is_err() {
            bad(
                "listenAddress",
                format!("{:?} is not an IP address", self.listen_address),
            );
        }
        if self.browser.executable.is_some() && self.browser.launcher_command.is_some() {
            bad(
                "browser",
                "set either executable or launcherCommand, not both".into(),
            );
        }
        let browser = &self.browser;
        for (field, args) in [
            ("browser.extraArgs", &browser.extra_args),
            ("browser.allowedArgs", &browser.allowed_args),
            ("browser.blockedArgs", &browser.blocked_args),
        ] {
            for arg in args {
                if !switch_pattern().is_match(arg) {
                    bad(
                        field,
                        format!(
                            "{arg:?} is not a switch written --name or --name=value in lower case"
                        ),
                    );
                }
            }
        }
        for arg in &browser.extra_args {
            // Chromium lets the last repeat of a switch win: a fleet argument
            // must not move DevTools off 127.0.0.1 or onto another profile.
            if sets_agent_owned_switch(arg) {
                bad(
                    "browser.extraArgs",
                    format!("{arg:?} is chosen by the agent for every browser"),
                );
            }
        }
        if matches!(&self.browser.launcher_command, Some(c) if c.is_empty()) {
            bad("browser.launcherCommand", "is empty".into());
        }
        let limits = &self.sessions;
        if limits.default_ttl_seconds < 1 {
            bad("sessions.defaultTtlSeconds", "must be positive".into());
        }
        if limits.max_ttl_seconds < limits.default_ttl_seconds {
            bad(
                "sessions.maxTtlSeconds",
                "must not be below defaultTtlSeconds".into(),
            );
        }
        if limits.never_used_timeout_seconds < 1 {
            bad(
                "sessions.neverUsedTimeoutSeconds",
                "must be positive".into(),
            );
        }
        if self.profiles.max_age_seconds < 1 {
            bad("profiles.maxAgeSeconds", "must be positive".into());
        }
        if self.launch_timeout_seconds == 0 {
            bad("launchTimeoutSeconds", "must be positive".into());
        }
        if self.visibility_timeout_seconds <= self.launch_timeout_seconds {
            bad(
                "visibilityTimeoutSeconds",
                "must exceed launchTimeoutSeconds, or a request reappears while its browser starts"
                    .into(),
            );
        }
        if !(1..=3600).contains(&self.heartbeat_interval_seconds) {
            bad(
                "heartbeatIntervalSeconds",
                format!("{} is not within 1..=3600", self.heartbeat_interval_seconds),
            );
        }
        if self.visibility_timeout_seconds > 43_200 {
            bad(
                "visibilityTimeoutSeconds",
                "SQS allows at most 43200".into(),
            );
        }
        for (field, secret) in [
            ("fleetToken", &self.fleet_token),
            ("callbackSecret", &self.callback_secret),
            ("messageKey", &self.message_key),
        ] {
            // Never echo the secret itself.
            if secret.expose().len() < MIN_SECRET_LEN {
                bad(
                    field,
                    format!("must be at least {MIN_SECRET_LEN} characters"),
                );
            }
        }
        let replies = &self.replies;
        let default_reply_to = replies.default_reply_to.as_ref().and_then(|url| {
            ReplyQueueUrl::new(url.as_str())
                .map_err(|e| bad("replies.defaultReplyTo", e.reason.to_owned()))
                .ok()
        });
        let default_callback_url = replies.default_callback_url.as_ref().and_then(|url| {
            CallbackUrl::new(url.as_str())
                .map_err(|e| bad("replies.defaultCallbackUrl", e.reason.to_owned()))
                .ok()
        });
        if u16::try_from(self.egress.proxy_port).is_err() {
            bad(
                "egress.proxyPort",
                format!("{} is not a port number", self.egress.proxy_port),
            );
        }
        let egress_blocked = super::egress::parse_ranges(&self.egress.blocked)
            .map_err(|e| bad("egress.blocked", e.to_string()))
            .unwrap_or_default();
        let egress_allowed = super::egress::parse_ranges(&self.egress.allowed)
            .map_err(|e| bad("egress.allowed", e.to_string()))
            .unwrap_or_default();
        let arg_policy = ArgPolicy::new(
            self.browser.allowed_args.iter().cloned(),
            self.browser.blocked_args.iter().cloned(),
        );
        if let Err(error) = &arg_policy {
            bad("browser", error.to_string());
        }
        let (Ok(arg_policy), true) = (arg_policy, errors.is_empty()) else {
            return Err(ConfigError::Invalid(errors));
        };
        let seconds = |s: i32| Duration::from_secs(u64::try_from(s).unwrap_or(1));
        Ok(AgentSettings {
            first_port: Port(first.unwrap_or_default()),
            last_port: Port(last.unwrap_or_default()),
            default_ttl: seconds(limits.default_ttl_seconds),
            max_ttl: seconds(limits.max_ttl_seconds),
            never_used_timeout: seconds(limits.never_used_timeout_seconds),
            launch_timeout: Duration::from_secs(self.launch_timeout_seconds.into()),
            drain_timeout: Duration::from_secs(self.drain_timeout_seconds.into()),
            visibility_timeout: Duration::from_secs(self.visibility_timeout_seconds.into()),
            heartbeat_interval: Duration::from_secs(self.heartbeat_interval_seconds.into()),
            profile_max_age: seconds(self.profiles.max_age_seconds),
            state_dir: self.state_dir.clone().unwrap_or_else(default_state_dir),
            extensions_dir: self.extensions_dir.clone().unwrap_or_else(|| {
                self.state_dir
                    .clone()
                    .unwrap_or_else(default_state_dir)
                    .join("extensions")
            }),
            arg_policy,
            default_targets: ReplyTargets {
                reply_to: default_reply_to,
                callback_url: default_callback_url,
            },
            egress_blocked,
            egress_allowed,
            browser_user: None,
            callback_retries: crate::protocol::callback::RetrySchedule::default(),
            config: self,
        })
    }
}

/// Where the agent keeps its state when the configuration names no place.
pub fn default_state_dir() -> PathBuf {
    if cfg!(windows) {
        PathBuf::from(r"C:\ProgramData\browserfleet")
    } else {
        PathBuf::from("/var/lib/browserfleet")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> serde_json::Value {
        serde_json::json!({
            "fleet": "team/fleet",
            "requestQueueUrl": "http://localhost:5000/123/requests",
            "eventsQueueUrl": "http://localhost:5000/123/events",
            "slots": 2,
            "gatewayPort": 9222,
            "browserPortRange": {"start": 9300, "end": 9309},
            "fleetToken": "f".repeat(32),
            "callbackSecret": "c".repeat(32),
            "messageKey": "m".repeat(32),
        })
    }

    fn violations(json: serde_json::Value) -> Vec<&'static str> {
        match AgentConfig::parse(&json.to_string()) {
            Err(ConfigError::Invalid(v)) => v.into_iter().map(|v| v.field).collect(),
            other => panic!("expected violations, got {other:?}"),
        }
    }

    #[test]
    fn a_minimal_config_gets_defaults() {
        let settings = AgentConfig::parse(&valid().to_string()).unwrap();
        assert_eq!(settings.first_port, Port(9300));
        assert_eq!(settings.launch_timeout, Duration::from_secs(30));
        assert!(settings.config.browser.headless);
    }

    #[test]
    fn every_violation_is_reported_at_once() {
        let mut json = valid();
        json["slots"] = 20.into();
        json["gatewayPort"] = 9305.into();
        json["fleetToken"] = "short".into();
        json["sessions"] = serde_json::json!({"defaultTtlSeconds": 600, "maxTtlSeconds": 60});
        assert_eq!(
            violations(json),
            vec![
                "browserPortRange",
                "gatewayPort",
                "sessions.maxTtlSeconds",
                "fleetToken"
            ]
        );
    }

    #[test]
    fn reversed_ports_and_bad_urls_are_refused() {
        let mut json = valid();
        json["browserPortRange"] = serde_json::json!({"start": 9400, "end": 9300});
        json["requestQueueUrl"] = "queue".into();
        assert_eq!(
            violations(json),
            vec!["requestQueueUrl", "browserPortRange"]
        );
    }

    #[test]
    fn fleet_arguments_cannot_take_the_agents_switches() {
        let mut json = valid();
        json["browser"] = serde_json::json!({
            "extraArgs": ["--no-sandbox", "--Remote-Debugging-Address=0.0.0.0"]
        });
        assert_eq!(violations(json), vec!["browser.extraArgs"]);
    }

    #[test]
    fn overrides_replace_the_document_and_are_validated_like_it() {
        let overrides = ConfigOverrides {
            listen_address: Some("127.0.0.1".into()),
            gateway_port: Some(0),
            browser_port_range: Some(parse_port_range("41000-41003").unwrap()),
            state_dir: Some(PathBuf::from("/tmp/bf/i-1")),
            egress_proxy_port: Some(0),
        };
        let settings = AgentConfig::parse_with(&valid().to_string(), &overrides).unwrap();
        assert_eq!(settings.config.egress.proxy_port, 0);
        assert_eq!(settings.config.listen_address, "127.0.0.1");
        assert_eq!(settings.config.gateway_port, 0);
        assert_eq!(
            (settings.first_port, settings.last_port),
            (Port(41000), Port(41003))
        );
        assert_eq!(settings.state_dir, PathBuf::from("/tmp/bf/i-1"));
        assert_eq!(
            settings.extensions_dir,
            PathBuf::from("/tmp/bf/i-1/extensions")
        );

        let bad = ConfigOverrides {
            listen_address: Some("localhost".into()),
            gateway_port: Some(41000),
            browser_port_range: Some(parse_port_range("41000-41000").unwrap()),
            state_dir: None,
            egress_proxy_port: None,
        };
        let fields = match AgentConfig::parse_with(&valid().to_string(), &bad) {
            Err(ConfigError::Invalid(v)) => v.into_iter().map(|v| v.field).collect::<Vec<_>>(),
            other => panic!("expected violations, got {other:?}"),
        };
        // One port for two slots, the gateway on it, and no IP address.
        assert_eq!(
            fields,
            vec!["browserPortRange", "gatewayPort", "listenAddress"]
        );
    }

    #[test]
    fn port_ranges_parse_from_start_dash_end_or_one_port() {
        assert_eq!(
            parse_port_range("9300-9309"),
            Ok(PortRange {
                start: 9300,
                end: 9309
            })
        );
        assert_eq!(
            parse_port_range("9300"),
            Ok(PortRange {
                start: 9300,
                end: 9300
            })
        );
        assert!(parse_port_range("9300-").is_err());
        assert!(parse_port_range("a-b").is_err());
        assert!(parse_port_range("9300-70000").is_err());
    }

    #[test]
    fn debug_output_leaves_the_secrets_out() {
        let settings = AgentConfig::parse(&valid().to_string()).unwrap();
        for shown in [format!("{:?}", settings.config), format!("{settings:?}")] {
            assert!(!shown.contains(&"f".repeat(32)), "{shown}");
            assert!(!shown.contains(&"c".repeat(32)), "{shown}");
            assert!(shown.contains("REDACTED"), "{shown}");
        }
    }

    #[test]
    fn unknown_fields_are_refused_and_secrets_never_echoed() {
        let mut json = valid();
        json["slotz"] = 3.into();
        let error = AgentConfig::parse(&json.to_string())
            .unwrap_err()
            .to_string();
        assert!(error.contains("slotz"), "{error}");
        let mut json = valid();
        json["callbackSecret"] = "hunter2".into();
        let error = AgentConfig::parse(&json.to_string())
            .unwrap_err()
            .to_string();
        assert!(!error.contains("hunter2"), "{error}");
    }
}
