//! Replies about BrowserSessions, and deletes forwarded by agents, as the
//! fleet's events-queue consumer hands them over.
//!
//! The consumer deletes a message only once it was applied here, so a reply
//! read by an operator that dies before writing status is read again by the
//! next one. Replies of one session are applied in the order read.
//!
//! A `session.ready` that nobody waits for any more (the session was
//! deleted, failed at its deadline, or already runs elsewhere) ends that
//! browser at once: a request never leaves a browser behind.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};

use super::request::labels;
use super::{FleetLink, Transition, fleet_of, reasons, transition};
use crate::api::BrowserFleet;
use crate::api::session::{BrowserSession, BrowserSessionStatus, SessionEndpoints, SessionPhase};
use crate::operator::agent_client::SessionEnd;
use crate::operator::context::Context;
use crate::operator::events_queue::inbox::{Delivery, InboxReceiver};
use crate::operator::fleet::FIELD_MANAGER;
use crate::operator::secrets::SecretsError;
use crate::protocol::{DeleteRequester, EventsMessage, FailureReason, Reply, ReplyKind, SessionId};

/// The key of the token in a session's credentials Secret.
pub const TOKEN_KEY: &str = "token";

/// Replies and forwarded deletes handled at once, over every fleet.
const CONCURRENCY: usize = 64;

/// Applies deliveries until the inbox closes.
pub async fn serve(receiver: InboxReceiver, ctx: Arc<Context>, fleets: FleetLink) {
    let routed = RoutedDeletes::default();
    let (ctx, fleets, routed) = (ctx.as_ref(), &fleets, &routed);
    receiver
        .0
        .for_each_concurrent(CONCURRENCY, |envelope| async move {
            let applied = match envelope.delivery {
                Delivery::Reply(reply) => apply(ctx, fleets, &envelope.fleet_uid, &reply).await,
                Delivery::Delete(delete) => {
                    route_delete(ctx, fleets, routed, &envelope.fleet_uid, &delete).await
                }
            };
            let _ = envelope.applied.send(applied);
        })
        .await;
}

/// How long a forwarded delete of a session is not routed again: the
/// agents' tombstone lifetime.
const ROUTED_DELETE_MEMORY: Duration = Duration::from_secs(3600);
/// Most forwarded deletes remembered.
const MAX_ROUTED_DELETES: usize = 10_000;

/// The forwarded deletes routed, by session id, and when.
#[derive(Default)]
struct RoutedDeletes {
    at: Mutex<HashMap<SessionId, Instant>>,
}

impl RoutedDeletes {
    /// Whether a forwarded delete of `id` is to be routed: not when one was
    /// within the last hour. Remembered, bounded (the oldest go first).
    fn first_route_of(&self, id: &SessionId) -> bool {
        let now = Instant::now();
        let mut routed = self.at.lock().unwrap_or_else(|e| e.into_inner());
        routed.retain(|_, at| now.duration_since(*at) < ROUTED_DELETE_MEMORY);
        if routed.contains_key(id) {
            return false;
        }
        if routed.len() >= MAX_ROUTED_DELETES
            && let Some(oldest) = routed
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| k.clone())
        {
            routed.remove(&oldest);
        }
        routed.insert(id.clone(), now);
        true
    }

    /// Forgets a routed delete that did not go out.
    fn forget(&self, id: &SessionId) {
        let mut routed = self.at.lock().unwrap_or_else(|e| e.into_inner());
        routed.remove(id);
    }
}

fn fleet_by_uid(ctx: &Context, uid: &str) -> Option<Arc<BrowserFleet>> {
    ctx.caches
        .fleets
        .state()
        .into_iter()
        .find(|f| f.uid().as_deref() == Some(uid))
}

/// Applies one reply; false when it should be read again.
async fn apply(ctx: &Context, fleets: &FleetLink, fleet_uid: &str, reply: &Reply) -> bool {
    let (Some(namespace), Some(name)) = (
        reply.labels.get(labels::NAMESPACE),
        reply.labels.get(labels::NAME),
    ) else {
        tracing::debug!(session = %reply.session_id, "a reply for no BrowserSession on the events queue; dropped");
        return true;
    };
    if namespace.is_empty() || name.is_empty() {
        tracing::warn!(session = %reply.session_id, "a reply naming an empty namespace or name; dropped");
        return true;
    }
    let api: Api<BrowserSession> = Api::namespaced(ctx.client.clone(), namespace);
    // A conflict means the session changed meanwhile: decide again.
    for _ in 0..5 {
        let session = match api.get_opt(name).await {
            Ok(session) => session,
            Err(kube::Error::Api(status))
                if (400..500).contains(&status.code) && status.code != 429 =>
            {
                tracing::warn!(code = status.code, session = %name, "the session a reply names cannot be read; dropped");
                return true;
            }
            Err(error) => {
                tracing::warn!(%error, session = %name, "cannot read the session of a reply");
                return false;
            }
        };
        // Only a reply for the very session the operator asked for: the
        // labels route it, the session id (`bs-<uid>`) must match.
        let wanted = session.filter(|s| {
            s.uid().as_deref() == reply.labels.get(labels::UID).map(String::as_str)
                && super::request::session_id(s) == reply.session_id
                && s.meta().deletion_timestamp.is_none()
        });
        let outcome = match wanted {
            Some(session)
                if fleet_of(&session, ctx)
                    .and_then(|f| f.uid())
                    .is_some_and(|uid| uid != fleet_uid) =>
            {
                tracing::warn!(session = %name, "a reply on the events queue of another fleet than the session's; dropped");
                Ok(true)
            }
            Some(session) => apply_to(ctx, fleets, &session, reply).await,
            None if matches!(reply.kind, ReplyKind::Ready(_)) => {
                Ok(end_unwanted(ctx, fleets, fleet_uid, reply, "its session was deleted").await)
            }
            None => Ok(true),
        };
        match outcome {
            Ok(applied) => return applied,
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            // Refused for good (a name that is no name, a namespace out of
            // reach): reading it again would not change that.
            Err(kube::Error::Api(status))
                if (400..500).contains(&status.code) && status.code != 429 =>
            {
                tracing::warn!(code = status.code, message = %status.message, session = %name, "a reply that cannot be applied; dropped");
                return true;
            }
            Err(error) => {
                tracing::warn!(%error, session = %name, "cannot apply a reply");
                return false;
            }
        }
    }
    false
}

/// Applies a reply to its session; `Ok(false)` when it should be read again
/// (a browser to end whose agent did not answer).
async fn apply_to(
    ctx: &Context,
    fleets: &FleetLink,
    session: &BrowserSession,
    reply: &Reply,
) -> Result<bool, kube::Error> {
    let status = session.status.clone().unwrap_or_default();
    let waiting = matches!(status.phase, SessionPhase::Pending | SessionPhase::Starting);
    let here = status.instance_id.as_deref() == Some(reply.instance_id.as_str());
    match &reply.kind {
        ReplyKind::Ready(ready) if waiting => {
            let secret = write_credentials(ctx, session, ready.token.expose()).await?;
            let next = BrowserSessionStatus {
                phase: SessionPhase::Ready,
                session_id: Some(reply.session_id.to_string()),
                instance_id: Some(reply.instance_id.as_str().to_owned()),
                endpoints: Some(SessionEndpoints {
                    web_socket_debugger_url: ready.endpoints.web_socket_debugger_url.clone(),
                    http_url: ready.endpoints.http_base.clone(),
                }),
                credentials_secret: Some(secret),
                started_at: Some(Time(reply.at)),
                expires_at: Some(Time(ready.expires_at)),
                message: Some(format!("running on {}", reply.instance_id.as_str())),
                ..status
            };
            let event = Transition {
                status: next,
                event: Some("Ready"),
                warning: false,
            };
            transition(ctx, session, event).await?;
        }
        // The same reply again (an agent's retry), or a ready browser that
        // nobody waits for: the session failed at its deadline, or runs on
        // another instance.
        ReplyKind::Ready(_) if status.phase == SessionPhase::Ready && here => {}
        ReplyKind::Ready(_) => {
            let uid = fleet_of(session, ctx)
                .and_then(|f| f.uid())
                .unwrap_or_default();
            return Ok(end_unwanted(
                ctx,
                fleets,
                &uid,
                reply,
                "its session is no longer waiting for it",
            )
            .await);
        }
        ReplyKind::Failed(failure) if waiting => {
            if failure.reason == FailureReason::SessionExists {
                // The agent runs a browser of this id whose token it lost
                // (it restarted): nobody can use it.
                let uid = fleet_of(session, ctx)
                    .and_then(|f| f.uid())
                    .unwrap_or_default();
                if !end_unwanted(ctx, fleets, &uid, reply, "its token was lost").await {
                    return Ok(false);
                }
            }
            let next = BrowserSessionStatus {
                phase: SessionPhase::Failed,
                reason: Some(reasons::of_failure(failure.reason)),
                message: Some(format!("{}: {}", failure.reason, failure.message)),
                finished_at: Some(Time(reply.at)),
                ..status
            };
            let event = Transition {
                status: next,
                event: Some("Failed"),
                warning: true,
            };
            transition(ctx, session, event).await?;
        }
        // From its instance once Ready; from any while Starting (replies
        // may arrive out of order, the end before the start).
        ReplyKind::Terminated(end) if (here && status.phase == SessionPhase::Ready) || waiting => {
            let next = BrowserSessionStatus {
                phase: SessionPhase::Terminated,
                instance_id: Some(reply.instance_id.as_str().to_owned()),
                reason: Some(reasons::of_termination(end.reason)),
                message: Some(match &end.message {
                    Some(message) => format!("{}: {message}", end.reason),
                    None => end.reason.to_string(),
                }),
                finished_at: Some(Time(reply.at)),
                ..status
            };
            let event = Transition {
                status: next,
                event: Some("Terminated"),
                warning: false,
            };
            transition(ctx, session, event).await?;
        }
        // Late news about an end already recorded, or about a browser that
        // was never this session's.
        ReplyKind::Failed(_) | ReplyKind::Terminated(_) => {}
    }
    Ok(true)
}

/// The name of a session's credentials Secret.
pub fn credentials_secret_name(session: &BrowserSession) -> String {
    let name = format!("{}-devtools", session.name_any());
    if name.len() <= 253 {
        name
    } else {
        format!("browsersession-{}", session.uid().unwrap_or_default())
    }
}

/// Writes the session's token into its Secret, owned by the session so it
/// goes with it. Server-side apply: a retried reply writes the same.
async fn write_credentials(
    ctx: &Context,
    session: &BrowserSession,
    token: &str,
) -> Result<String, kube::Error> {
    let api: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &session.namespace().unwrap_or_default());
    let uid = session.uid().unwrap_or_default();
    let mut name = credentials_secret_name(session);
    // A Secret of that name that is not this session's is left alone.
    if let Some(existing) = api.get_opt(&name).await?
        && !existing.owner_references().iter().any(|o| o.uid == uid)
    {
        name = format!("browsersession-{uid}");
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: session.namespace(),
            owner_references: session.controller_owner_ref(&()).map(|o| vec![o]),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "browserfleet".to_owned(),
                ),
                // The uid, not the name: a name may be longer than a
                // label value can be.
                (labels::UID.to_owned(), uid.clone()),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            TOKEN_KEY.to_owned(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    };
    let mut body = serde_json::to_value(&secret).unwrap_or_default();
    body["apiVersion"] = "v1".into();
    body["kind"] = "Secret".into();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(name)
}

/// Ends a browser that started for a session nobody waits for. Whether it
/// is done: ended, not there, or gone with its instance or fleet; false
/// when its agent should be asked again (the reply is read again).
async fn end_unwanted(
    ctx: &Context,
    fleets: &FleetLink,
    fleet_uid: &str,
    reply: &Reply,
    why: &str,
) -> bool {
    let Some(fleet) = fleet_by_uid(ctx, fleet_uid) else {
        // The fleet is gone; its instances go with it.
        return true;
    };
    let instance = reply.instance_id.as_str();
    let Some(address) = address_of(fleets, &fleet, instance) else {
        tracing::warn!(session = %reply.session_id, %instance, "a browser nobody waits for, on an instance without an address yet");
        return !instance_alive(&fleet, instance);
    };
    let token = match fleets.token(ctx, &fleet).await {
        Ok(token) => token,
        Err(error) => {
            tracing::warn!(%error, "cannot read the fleet token to end a browser");
            return false;
        }
    };
    match ctx
        .agents
        .end_session(&address, token.expose(), &reply.session_id)
        .await
    {
        Ok(_) => {
            tracing::info!(session = %reply.session_id, %instance, why, "ended a browser nobody waits for");
            true
        }
        Err(error) => {
            tracing::warn!(session = %reply.session_id, %instance, %error, "cannot end a browser nobody waits for; trying again");
            !instance_alive(&fleet, instance)
        }
    }
}

/// The address to dial for an instance's agent: its registration, else the
/// one recorded in fleet status.
pub fn address_of(fleets: &FleetLink, fleet: &BrowserFleet, instance: &str) -> Option<String> {
    fleets
        .registered_address(fleet, instance)
        .or_else(|| fleet.instance_status(instance)?.address.clone())
}

/// Whether the fleet still lists the instance as one that may run a
/// browser.
pub fn instance_alive(fleet: &BrowserFleet, instance: &str) -> bool {
    fleet
        .instance_status(instance)
        .is_some_and(|i| !matches!(i.state, crate::api::fleet::InstanceState::Terminating))
}

/// Whether the fleet's status says that EC2 takes the instance back (its
/// agent reported a spot interruption notice).
pub fn instance_reclaimed(fleet: &BrowserFleet, instance: &str) -> bool {
    fleet
        .instance_status(instance)
        .is_some_and(|i| i.reclaimed())
}

/// Every agent address of the fleet.
fn all_addresses(fleets: &FleetLink, fleet: &BrowserFleet) -> Vec<String> {
    let mut addresses = fleets.registered_addresses(fleet);
    if let Some(status) = &fleet.status {
        addresses.extend(status.instances.iter().filter_map(|i| i.address.clone()));
    }
    addresses.sort();
    addresses.dedup();
    addresses
}

/// Tells every agent of the fleet that session `id` is cancelled: the one
/// that runs it ends it, the others refuse its request if it reaches them
/// later. Best effort: a browser started anyway is ended when its ready
/// reply arrives (see the module docs). The agent that ends the session
/// answers `requester` (a forwarded delete's; the default names nobody);
/// the others ignore it, so it gets one reply.
pub async fn cancel_everywhere(
    ctx: &Context,
    fleets: &FleetLink,
    fleet: &BrowserFleet,
    id: &SessionId,
    requester: &DeleteRequester,
) -> Result<(), SecretsError> {
    let token = fleets.token(ctx, fleet).await?;
    let token = token.expose();
    futures::stream::iter(all_addresses(fleets, fleet))
        .for_each_concurrent(ctx.settings.agent_concurrency.max(1), |address| async move {
            match ctx
                .agents
                .end_session_for(&address, token, id, requester)
                .await
            {
                Ok(SessionEnd::Ended) => {
                    tracing::info!(session = %id, %address, "cancelled session had started; ended")
                }
                Ok(SessionEnd::NotHosted) => {}
                Err(error) => tracing::info!(session = %id, %error, "cancel not delivered"),
            }
        })
        .await;
    Ok(())
}

/// A delete an agent could not serve (its session runs elsewhere): passed
/// to every agent of the fleet, with its requester, so the one that hosts
/// it ends it and answers the create's requester and the delete's.
///
/// A delete whose session no agent hosts is answered by nobody: "no agent
/// hosts it" cannot be told from "its agent did not answer" (cancels are
/// best effort), a delete that came before its create still cancels that
/// create when it arrives (whose requester is answered `cancelled`), and a
/// `session.terminated` would report an end that did not happen.
///
/// Each session's delete is routed once an hour at most: an agent older
/// than `forward=false` would forward the routed delete back here, forever.
async fn route_delete(
    ctx: &Context,
    fleets: &FleetLink,
    routed: &RoutedDeletes,
    fleet_uid: &str,
    delete: &EventsMessage,
) -> bool {
    let Some(fleet) = fleet_by_uid(ctx, fleet_uid) else {
        return true;
    };
    if !routed.first_route_of(&delete.session_id) {
        return true;
    }
    let requester = DeleteRequester::from(delete);
    match cancel_everywhere(ctx, fleets, &fleet, &delete.session_id, &requester).await {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, "cannot route a forwarded delete; it is read again");
            routed.forget(&delete.session_id);
            false
        }
    }
}
