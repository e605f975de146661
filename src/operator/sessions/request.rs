//! From a `BrowserSession` to the create request its fleet's agents take:
//! what the fleet forbids is refused here, before anything is enqueued, with
//! the same rules the agent applies (`agent::args::sanitize`, the fleet's
//! session limits and profile policy).

use crate::secret::SecretValue;
use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;

use crate::agent::args::{ArgPolicy, sanitize};
use crate::api::session::BrowserSession;
use crate::api::{BrowserFleet, Violations};
use crate::protocol::{CreateRequest, ProfileName, ProxyConfig, ReplyQueueUrl, SessionId};

/// Label keys the operator puts in every request it enqueues; agents echo
/// them in replies, which is how a reply finds its resource.
pub mod labels {
    /// The session's namespace.
    pub const NAMESPACE: &str = "browserfleet.io/namespace";
    /// The session's name.
    pub const NAME: &str = "browserfleet.io/session";
    /// The session's uid: a reply for a deleted and re-created session of
    /// the same name is not applied to the new one.
    pub const UID: &str = "browserfleet.io/uid";
}

/// The queue-protocol id of a session: derived from its uid, so it is the
/// same across operator restarts and a re-sent request is recognised by the
/// agent that already runs it.
pub fn session_id(session: &BrowserSession) -> SessionId {
    let uid = session.uid().unwrap_or_default();
    SessionId::new(format!("bs-{uid}")).unwrap_or_else(|_| SessionId::generate())
}

/// Why a session cannot be asked for on its fleet; the message is the
/// session's `status.message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Proxy credentials read from the Secret the session names.
#[derive(Clone, Default)]
pub struct ProxyCredentials {
    /// `username` key.
    pub username: Option<String>,
    /// `password` key.
    pub password: Option<SecretValue>,
}

/// How long the session waits for an agent: its own start timeout, else the
/// fleet's.
pub fn start_timeout(session: &BrowserSession, fleet: &BrowserFleet) -> Duration {
    let seconds = session
        .spec
        .start_timeout_seconds
        .unwrap_or(i64::from(fleet.spec.agent.sessions.start_timeout_seconds));
    Duration::from_secs(u64::try_from(seconds).unwrap_or(1).max(1))
}

/// The create request of `session` on `fleet`, replying to the fleet's
/// events queue `events`, or why the fleet refuses it. Proxy credentials
/// are sealed with the fleet's message key `fleet_key`: they cross the
/// queue as ciphertext only (docs/security.md).
pub fn build(
    session: &BrowserSession,
    fleet: &BrowserFleet,
    events: &str,
    proxy_credentials: ProxyCredentials,
    fleet_key: &[u8],
    start_deadline: Timestamp,
) -> Result<CreateRequest, Refused> {
    let spec = &session.spec;
    spec.validate()
        .map_err(|v: Violations| Refused(v.to_string()))?;
    let limits = &fleet.spec.agent.sessions;
    if let Some(ttl) = spec.ttl_seconds
        && ttl > i64::from(limits.max_ttl_seconds)
    {
        return Err(Refused(format!(
            "ttlSeconds {ttl} is above the fleet's hard maximum of {} (agent.sessions.maxTtlSeconds)",
            limits.max_ttl_seconds
        )));
    }
    let browser = &fleet.spec.agent.browser;
    let policy = ArgPolicy::new(
        browser.allowed_args.iter().cloned(),
        browser.blocked_args.iter().cloned(),
    )
    .map_err(|e| Refused(format!("the fleet's browser arguments are unusable: {e}")))?;
    if let Err(violations) = sanitize(&spec.args, &policy) {
        let list: Vec<String> = violations.iter().map(ToString::to_string).collect();
        return Err(Refused(format!(
            "browser arguments the fleet forbids: {}",
            list.join("; ")
        )));
    }
    let profile = match &spec.profile {
        Some(profile) if profile.persistent => {
            if !fleet.spec.agent.profiles.allow_persistent {
                return Err(Refused(format!(
                    "profile {:?} is persistent, but fleet {} does not keep profiles (agent.profiles.allowPersistent)",
                    profile.name,
                    fleet.name_any()
                )));
            }
            Some(
                ProfileName::new(profile.name.clone())
                    .map_err(|e| Refused(format!("profile.name {}", e.reason)))?,
            )
        }
        // A profile that is not kept is the temporary one every session gets.
        _ => None,
    };
    let mut proxy = spec.proxy.as_ref().map(|proxy| ProxyConfig {
        server: proxy.server.clone(),
        bypass: (!proxy.bypass.is_empty()).then(|| proxy.bypass.join(";")),
        username: proxy_credentials.username.clone(),
        password: proxy_credentials.password.clone(),
        sealed_credentials: None,
    });
    if let Some(proxy) = proxy.as_mut() {
        proxy
            .seal_credentials(fleet_key, session_id(session).as_str())
            .map_err(|e| Refused(format!("the proxy credentials cannot be sealed: {e}")))?;
    }
    let reply_to = ReplyQueueUrl::new(events)
        .map_err(|e| Refused(format!("the fleet's events queue URL {}", e.reason)))?;
    Ok(CreateRequest {
        session_id: Some(session_id(session)),
        request_id: None,
        ttl: spec
            .ttl_seconds
            .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(1))),
        profile,
        proxy,
        args: spec.args.clone(),
        extensions: spec.extensions.clone(),
        start_url: spec.start_url.clone(),
        reply_to: Some(reply_to),
        callback_url: None,
        labels: BTreeMap::from([
            (
                labels::NAMESPACE.to_owned(),
                session.namespace().unwrap_or_default(),
            ),
            (labels::NAME.to_owned(), session.name_any()),
            (labels::UID.to_owned(), session.uid().unwrap_or_default()),
        ]),
        start_deadline: Some(start_deadline),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::session::{BrowserSessionSpec, FleetRef, ProfileRef};

    const EVENTS: &str = "http://127.0.0.1:5000/123456789012/bf-events";

    fn fleet(yaml_patch: impl FnOnce(&mut BrowserFleet)) -> BrowserFleet {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/fleet-minimal.yaml"
        ))
        .expect("example");
        let mut fleet: BrowserFleet = serde_saphyr::from_str(&text).expect("fleet");
        yaml_patch(&mut fleet);
        fleet
    }

    fn session(patch: impl FnOnce(&mut BrowserSessionSpec)) -> BrowserSession {
        let mut spec = BrowserSessionSpec {
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
        };
        patch(&mut spec);
        let mut session = BrowserSession::new("s", spec);
        session.metadata.namespace = Some("team-a".into());
        session.metadata.uid = Some("0b7c1f0e-5a39-4d4e-9d0e-6f5f1d2c3b4a".into());
        session
    }

    fn built(session: &BrowserSession, fleet: &BrowserFleet) -> Result<CreateRequest, Refused> {
        build(
            session,
            fleet,
            EVENTS,
            ProxyCredentials::default(),
            KEY,
            Timestamp::UNIX_EPOCH,
        )
    }

    const KEY: &[u8] = b"a fleet's message key of 32 chars";

    #[test]
    fn proxy_credentials_leave_sealed_for_this_session_only() {
        let proxied = session(|s| {
            s.proxy = Some(crate::api::session::ProxySpec {
                server: "http://proxy.internal:3128".into(),
                bypass: Vec::new(),
                credentials_secret_ref: None,
            })
        });
        let request = build(
            &proxied,
            &fleet(|_| {}),
            EVENTS,
            ProxyCredentials {
                username: Some("alice".into()),
                password: Some(SecretValue::new("s3cret")),
            },
            KEY,
            Timestamp::UNIX_EPOCH,
        )
        .expect("built");
        let body = serde_json::to_string(&crate::protocol::Inbound::Create(request.clone()))
            .expect("serializes");
        assert!(
            !body.contains("s3cret") && !body.contains("alice"),
            "{body}"
        );
        assert!(body.contains("sealedCredentials"), "{body}");
        let mut proxy = request.proxy.expect("a proxy");
        let id = request.session_id.expect("an id");
        assert!(proxy.clone().open_credentials(KEY, "bs-another").is_err());
        proxy.open_credentials(KEY, id.as_str()).expect("opens");
        assert_eq!(proxy.username.as_deref(), Some("alice"));
        assert_eq!(proxy.password.as_ref().map(|p| p.expose()), Some("s3cret"));
    }

    #[test]
    fn a_session_becomes_a_request_labelled_with_its_resource() {
        let request = built(&session(|_| {}), &fleet(|_| {})).expect("built");
        assert_eq!(
            request.session_id.as_ref().map(|s| s.as_str()),
            Some("bs-0b7c1f0e-5a39-4d4e-9d0e-6f5f1d2c3b4a")
        );
        assert_eq!(request.reply_to.as_ref().map(|r| r.as_str()), Some(EVENTS));
        assert_eq!(request.labels[labels::NAMESPACE], "team-a");
        assert_eq!(request.labels[labels::NAME], "s");
        assert_eq!(request.ttl, Some(Duration::from_secs(600)));
        assert_eq!(request.start_deadline, Some(Timestamp::UNIX_EPOCH));
    }

    #[test]
    fn what_the_fleet_forbids_is_refused() {
        let over = session(|s| s.ttl_seconds = Some(10_000_000));
        let limited = fleet(|f| f.spec.agent.sessions.max_ttl_seconds = 3600);
        assert!(
            built(&over, &limited)
                .unwrap_err()
                .0
                .contains("hard maximum")
        );

        let blocked = fleet(|f| f.spec.agent.browser.blocked_args = vec!["--lang".into()]);
        let refused = built(&session(|_| {}), &blocked).unwrap_err();
        assert!(refused.0.contains("forbids"), "{refused}");

        let persistent = session(|s| {
            s.profile = Some(ProfileRef {
                name: "p".into(),
                persistent: true,
            })
        });
        let refused = built(&persistent, &fleet(|_| {})).unwrap_err();
        assert!(refused.0.contains("allowPersistent"), "{refused}");
        let allowing = fleet(|f| f.spec.agent.profiles.allow_persistent = true);
        assert!(built(&persistent, &allowing).is_ok());
    }

    #[test]
    fn the_start_timeout_is_the_sessions_else_the_fleets() {
        let fleet = fleet(|f| f.spec.agent.sessions.start_timeout_seconds = 90);
        assert_eq!(
            start_timeout(&session(|_| {}), &fleet),
            Duration::from_secs(90)
        );
        assert_eq!(
            start_timeout(&session(|s| s.start_timeout_seconds = Some(5)), &fleet),
            Duration::from_secs(5)
        );
    }
}
