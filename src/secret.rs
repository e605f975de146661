//! The one type every secret a process holds lives in from the moment it is
//! read or made (fleet tokens, callback secrets, proxy passwords, the
//! presented tokens of requests): `secrecy`'s `SecretString` underneath, so
//! its `Debug` never shows it and its memory is zeroed when dropped.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subtle::ConstantTimeEq;

/// A secret. It serializes as the plain string, for the documents that must
/// carry it (the agent configuration, a reply to its requester); equality
/// is compared in constant time.
#[derive(Clone)]
pub struct SecretValue(SecretString);

impl SecretValue {
    pub fn new(secret: impl Into<String>) -> Self {
        SecretValue(SecretString::from(secret.into()))
    }

    /// The secret itself, for the one place that needs it; never logged.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // secrecy's own `Debug`: `SecretBox<str>([REDACTED])`.
        f.debug_tuple("SecretValue").field(&self.0).finish()
    }
}

impl PartialEq for SecretValue {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.expose().as_bytes(), other.expose().as_bytes());
        a.len() == b.len() && bool::from(a.ct_eq(b))
    }
}

impl Eq for SecretValue {}

impl Serialize for SecretValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.expose())
    }
}

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(SecretValue(SecretString::deserialize(deserializer)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_never_shown_but_round_trips() {
        let secret = SecretValue::new("hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
        let json = serde_json::to_string(&secret).unwrap();
        assert_eq!(json, "\"hunter2\"");
        let back: SecretValue = serde_json::from_str(&json).unwrap();
        assert_eq!(back, secret);
        assert_ne!(back, SecretValue::new("hunter3"));
    }

    /// Every type that holds a secret, formatted with `{:?}` as a log line
    /// or an error would: the agent's configuration (file and settings), the
    /// configuration the operator renders, the fleet's Secret and its memory
    /// of it, a create with a proxy password, a reply with a session token,
    /// an SSM write.
    #[test]
    fn no_config_or_state_type_shows_a_secret_in_debug() {
        use crate::agent::config::AgentConfig;
        use crate::api::fleet::BrowserFleetSpec;
        use crate::cloud::{ParameterKind, ParameterWrite, QueueUrl};
        use crate::operator::agent_config::{FleetQueues, FleetSecrets, render};
        use crate::operator::fleet::{Ensured, FleetMemories};
        use crate::protocol::SessionToken;

        let fleet_token = "F".repeat(40);
        let callback_secret = "C".repeat(40);
        let message_key = "M".repeat(40);
        let password = "P".repeat(24);
        let session_token = "T".repeat(40);
        let secrets = [
            &fleet_token,
            &callback_secret,
            &message_key,
            &password,
            &session_token,
        ];

        let config_json = serde_json::json!({
            "fleet": "team/fleet",
            "requestQueueUrl": "http://localhost:5000/123/requests",
            "eventsQueueUrl": "http://localhost:5000/123/events",
            "slots": 2,
            "gatewayPort": 9222,
            "browserPortRange": {"start": 9300, "end": 9309},
            "fleetToken": fleet_token,
            "callbackSecret": callback_secret,
            "messageKey": message_key,
        });
        let settings = AgentConfig::parse(&config_json.to_string()).expect("valid config");

        let manifest: serde_json::Value =
            serde_saphyr::from_str(include_str!("../examples/fleet-minimal.yaml"))
                .expect("example is YAML");
        let spec: BrowserFleetSpec =
            serde_json::from_value(manifest["spec"].clone()).expect("example is a fleet");
        let fleet_secrets = FleetSecrets {
            fleet_token: SecretValue::new(fleet_token.clone()),
            callback_secret: SecretValue::new(callback_secret.clone()),
            message_key: SecretValue::new(message_key.clone()),
        };
        let queues = FleetQueues {
            requests: QueueUrl::new("http://localhost:5000/123/requests"),
            dead_letter: None,
            events: QueueUrl::new("http://localhost:5000/123/events"),
        };
        let rendered = render("team", "fleet", &spec, &queues, &fleet_secrets).expect("renders");
        let memories = FleetMemories::default();
        let mut memory = memories.load("uid");
        memory.ensured = Some(Ensured {
            generation: 1,
            queues,
            parameter: "/browserfleet/team/fleet/agent-config".into(),
            secrets: fleet_secrets.clone(),
        });
        let create = crate::protocol::parse_message(
            serde_json::json!({
                "version": 1,
                "action": "create",
                "proxy": {"server": "http://proxy:3128", "username": "u", "password": password},
            })
            .to_string()
            .as_bytes(),
        )
        .expect("a valid create");
        let write = ParameterWrite {
            name: "/browserfleet/team/fleet/agent-config".into(),
            value: config_json.to_string(),
            kind: ParameterKind::SecureString { kms_key_id: None },
            description: None,
            tags: Default::default(),
        };
        let shown = [
            format!("{settings:?}"),
            format!("{:?}", settings.config),
            format!("{rendered:?}"),
            format!("{fleet_secrets:?}"),
            format!("{memory:?}"),
            format!("{create:?}"),
            format!("{:?}", SessionToken::new(session_token.clone())),
            format!("{write:?}"),
        ];
        for text in &shown {
            for secret in secrets {
                assert!(!text.contains(secret.as_str()), "a secret in {text}");
            }
        }
        assert!(shown[0].contains("REDACTED"), "{}", shown[0]);
        assert!(shown[5].contains("REDACTED"), "{}", shown[5]);
    }
}
