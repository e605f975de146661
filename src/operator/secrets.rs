//! The fleet's secrets (the agents' fleet token, the callback signing key
//! and the key that signs queue messages): generated once, 244 random bits
//! each, and kept in a Secret the fleet owns, so they survive operator
//! restarts and go with the fleet. They
//! reach the agents only inside the SecureString agent configuration; never
//! status, Events, logs or user data.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};

use crate::agent::launch::new_token;
use crate::api::BrowserFleet;
use crate::cloud::SecretValue;
use crate::operator::agent_config::FleetSecrets;

const FLEET_TOKEN_KEY: &str = "fleetToken";
const CALLBACK_SECRET_KEY: &str = "callbackSecret";
const MESSAGE_KEY_KEY: &str = "messageKey";

/// Why the fleet's secrets cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The API refused or failed.
    #[error("fleet Secret {name}: {source}")]
    Api {
        /// The Secret.
        name: String,
        /// What the API said.
        source: kube::Error,
    },
    /// The Secret exists but lacks a key or holds something unreadable
    /// (edited by hand); the operator does not overwrite it.
    #[error(
        "fleet Secret {name} has no valid {key}; delete the Secret to have new secrets generated"
    )]
    Malformed {
        /// The Secret.
        name: String,
        /// The key.
        key: &'static str,
    },
}

/// The Secret's name: the fleet's, with a suffix.
pub fn secret_name(fleet: &str) -> String {
    format!("{fleet}-browserfleet")
}

/// Reads the fleet's secrets, creating the Secret (owned by the fleet) on
/// first use.
pub async fn ensure(
    client: &kube::Client,
    fleet: &BrowserFleet,
) -> Result<FleetSecrets, SecretsError> {
    let namespace = fleet.namespace().unwrap_or_default();
    let name = secret_name(&fleet.name_any());
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let api_error = |source| SecretsError::Api {
        name: name.clone(),
        source,
    };
    if let Some(mut secret) = api.get_opt(&name).await.map_err(api_error)? {
        if secret
            .data
            .as_ref()
            .is_some_and(|d| !d.contains_key(MESSAGE_KEY_KEY))
        {
            // A Secret from before signed messages: the key is added once.
            // The patch carries the resourceVersion read, so of two
            // reconciles adding one, the second gets a conflict and reads
            // the first one's key instead of replacing it.
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": secret.resource_version()},
                "data": {MESSAGE_KEY_KEY: ByteString(new_token().into_bytes())},
            });
            secret = match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(secret) => secret,
                Err(kube::Error::Api(status)) if status.is_conflict() => {
                    api.get(&name).await.map_err(api_error)?
                }
                Err(source) => return Err(api_error(source)),
            };
        }
        return read(&name, &secret);
    }
    let secrets = FleetSecrets {
        fleet_token: SecretValue::new(new_token()),
        callback_secret: SecretValue::new(new_token()),
        message_key: SecretValue::new(new_token()),
    };
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            owner_references: fleet.controller_owner_ref(&()).map(|o| vec![o]),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "browserfleet".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([
            (
                FLEET_TOKEN_KEY.to_owned(),
                ByteString(secrets.fleet_token.expose().as_bytes().to_vec()),
            ),
            (
                CALLBACK_SECRET_KEY.to_owned(),
                ByteString(secrets.callback_secret.expose().as_bytes().to_vec()),
            ),
            (
                MESSAGE_KEY_KEY.to_owned(),
                ByteString(secrets.message_key.expose().as_bytes().to_vec()),
            ),
        ])),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(secrets),
        // Another reconcile (a new leader) created it first: use its.
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            let secret = api.get(&name).await.map_err(api_error)?;
            read(&name, &secret)
        }
        Err(source) => Err(api_error(source)),
    }
}

fn read(name: &str, secret: &Secret) -> Result<FleetSecrets, SecretsError> {
    let value = |key: &'static str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .filter(|s| s.len() >= 32)
            .map(SecretValue::new)
            .ok_or(SecretsError::Malformed {
                name: name.to_owned(),
                key,
            })
    };
    Ok(FleetSecrets {
        fleet_token: value(FLEET_TOKEN_KEY)?,
        callback_secret: value(CALLBACK_SECRET_KEY)?,
        message_key: value(MESSAGE_KEY_KEY)?,
    })
}
