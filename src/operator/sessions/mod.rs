//! The `BrowserSession` reconciler: one session asked for the Kubernetes way.
//!
//! A session moves `Pending` → `Starting` (its request is on the fleet's
//! queue) → `Ready` (a `session.ready` reply arrived) → `Terminated`, or
//! ends `Failed` when the fleet refuses it, an agent answers
//! `session.failed` or no agent starts it before its start deadline. Phase
//! changes that follow a reply are made by [`replies`], which the fleet's
//! events-queue consumer calls; everything else is made here.
//!
//! Every status write is a replace guarded by the resourceVersion the
//! decision was made on: the reconciler and the reply handler never
//! overwrite each other's newer phase, and the loser decides again from the
//! object it now sees.
//!
//! The request is written to status (`Starting`, `requestedAt`,
//! `startDeadline`) *before* it is enqueued, so a restarted operator never
//! enqueues a session twice. An operator that dies between the two leaves a
//! session that fails at its start deadline; one that dies after both finds
//! the reply waiting on the events queue.

pub mod reasons;
pub mod replies;
pub mod request;

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};

use crate::api::BrowserFleet;
use crate::api::session::{
    BrowserSession, BrowserSessionStatus, CONDITION_READY, SessionEndReason, SessionPhase,
};
use crate::cloud::SecretValue;
use crate::cloud::{OutgoingMessage, QueueError, QueueUrl, Queues};
use crate::operator::agent_client::{AgentCallError, SessionEnd};
use crate::operator::agent_config::FleetSecrets;
use crate::operator::conditions::{self, Wanted};
use crate::operator::context::Context;
use crate::operator::events_queue::Registrations;
use crate::operator::finalizers;
use crate::operator::fleet::FleetMemories;
use crate::operator::secrets::SecretsError;
use crate::operator::trigger::FleetTrigger;
use crate::protocol::signing::{self, Purpose};
use crate::protocol::{Inbound, SessionId};

/// Keeps a session until its browser is gone.
pub const FINALIZER: &str = "browserfleet.io/session";

/// A `Ready` session whose agent sent no end this long after its TTL is
/// taken as ended: agents end sessions at their TTL, so its end reply was
/// lost (or its agent died with it).
const END_REPLY_GRACE: Duration = Duration::from_secs(120);

/// How long a new session waits for a fleet that does not exist before it
/// fails: a fleet applied together with it may be created a moment later.
const MISSING_FLEET_GRACE: Duration = Duration::from_secs(30);

/// Why a session reconcile failed; each is retried.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API failed (a conflict included: decided again).
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The fleet's request queue.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The fleet's Secret (its token, to call agents).
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// The hosting agent could not end the browser.
    #[error(transparent)]
    Agent(#[from] AgentCallError),
    /// The request could not be serialized.
    #[error("serializing the request: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl Error {
    fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(status)) if status.code == 409)
    }
}

/// What the session controller reconciles with.
pub struct SessionController {
    pub ctx: Arc<Context>,
    pub fleets: FleetLink,
    pub memories: SessionMemories,
}

/// What the session side knows of fleets beyond the cache: the token their
/// agents accept, where those agents listen, and how to ask for a fleet's
/// reconcile.
#[derive(Clone)]
pub struct FleetLink {
    memories: Arc<FleetMemories>,
    registrations: Arc<Registrations>,
    trigger: FleetTrigger,
}

impl FleetLink {
    pub fn new(
        memories: Arc<FleetMemories>,
        registrations: Arc<Registrations>,
        trigger: FleetTrigger,
    ) -> Self {
        FleetLink {
            memories,
            registrations,
            trigger,
        }
    }

    /// The fleet's secrets: those the fleet reconciler ensured in this
    /// process, else read from the fleet's Secret.
    pub async fn secrets(
        &self,
        ctx: &Context,
        fleet: &BrowserFleet,
    ) -> Result<FleetSecrets, SecretsError> {
        match self.memories.secrets(&fleet.uid().unwrap_or_default()) {
            Some(secrets) => Ok(secrets),
            None => crate::operator::secrets::ensure(&ctx.client, fleet).await,
        }
    }

    /// The token the fleet's agents accept.
    pub async fn token(
        &self,
        ctx: &Context,
        fleet: &BrowserFleet,
    ) -> Result<SecretValue, SecretsError> {
        Ok(self.secrets(ctx, fleet).await?.fleet_token)
    }

    /// Where the agent of `instance` said it listens, if it registered.
    pub fn registered_address(&self, fleet: &BrowserFleet, instance: &str) -> Option<String> {
        let uid = fleet.uid().unwrap_or_default();
        self.registrations
            .of(&uid)
            .get(&crate::cloud::InstanceId::new(instance))
            .map(|r| r.address.clone())
    }

    /// Where every registered agent of the fleet listens.
    pub fn registered_addresses(&self, fleet: &BrowserFleet) -> Vec<String> {
        let uid = fleet.uid().unwrap_or_default();
        self.registrations
            .of(&uid)
            .into_values()
            .map(|r| r.address)
            .collect()
    }

    /// Asks for a reconcile of the fleet now.
    pub fn reconcile(&self, fleet: &BrowserFleet) {
        self.trigger.reconcile(&ObjectRef::from_obj(fleet));
    }
}

/// What the session reconciler remembers of a session between reconciles,
/// in this process only: the back-off of a request that could not be sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionMemory {
    /// Sends that failed in a row.
    pub send_failures: u32,
    /// No send before this.
    pub retry_at: Option<std::time::Instant>,
    /// When last seen, the session's instance had EC2's notice that it is
    /// taken back: once the instance is gone, the session was interrupted,
    /// not crashed.
    pub instance_reclaimed: bool,
}

impl SessionMemory {
    /// How long until a send may be tried again; `None` when it may now.
    fn retry_in(&self) -> Option<Duration> {
        self.retry_at?
            .checked_duration_since(std::time::Instant::now())
    }

    /// Counts a failed send; the back-off before the next (1 s doubling to
    /// 1 min).
    fn send_failed(&mut self) -> Duration {
        self.send_failures = self.send_failures.saturating_add(1);
        let wait = Duration::from_secs(1 << self.send_failures.saturating_sub(1).min(6))
            .min(Duration::from_secs(60));
        self.retry_at = Some(std::time::Instant::now() + wait);
        wait
    }
}

/// Every session's memory, by uid; only sessions with something to remember
/// hold an entry.
#[derive(Debug, Default)]
pub struct SessionMemories {
    by_uid: std::sync::Mutex<std::collections::HashMap<String, SessionMemory>>,
}

impl SessionMemories {
    pub fn load(&self, uid: &str) -> SessionMemory {
        let by_uid = self.by_uid.lock().unwrap_or_else(|e| e.into_inner());
        by_uid.get(uid).cloned().unwrap_or_default()
    }

    /// Keeps the memory; an empty one is forgotten.
    pub fn store(&self, uid: &str, memory: SessionMemory) {
        let mut by_uid = self.by_uid.lock().unwrap_or_else(|e| e.into_inner());
        if memory == SessionMemory::default() {
            by_uid.remove(uid);
        } else {
            by_uid.insert(uid.to_owned(), memory);
        }
    }
}

/// Reconciles one session.
pub async fn reconcile(
    session: Arc<BrowserSession>,
    controller: Arc<SessionController>,
) -> Result<Action, Error> {
    let span = tracing::info_span!(
        "session",
        session = %format!("{}/{}", session.namespace().unwrap_or_default(), session.name_any())
    );
    let uid = session.uid().unwrap_or_default();
    let mut memory = controller.memories.load(&uid);
    let result = tracing::Instrument::instrument(
        reconcile_session(&session, &controller, &mut memory),
        span,
    )
    .await;
    controller.memories.store(&uid, memory);
    if let Err(error) = &result
        && !error.is_conflict()
    {
        tracing::warn!(session = %session.name_any(), %error, "session reconcile failed");
    }
    result
}

/// A conflict is decided again at once; anything else after a few seconds.
pub fn error_policy(
    _session: Arc<BrowserSession>,
    error: &Error,
    _controller: Arc<SessionController>,
) -> Action {
    if error.is_conflict() {
        Action::requeue(Duration::from_millis(100))
    } else {
        Action::requeue(Duration::from_secs(5))
    }
}

fn api(ctx: &Context, session: &BrowserSession) -> Api<BrowserSession> {
    Api::namespaced(ctx.client.clone(), &session.namespace().unwrap_or_default())
}

fn finished(phase: SessionPhase) -> bool {
    matches!(phase, SessionPhase::Terminated | SessionPhase::Failed)
}

/// How long ago the session was created.
fn age(session: &BrowserSession) -> Duration {
    session
        .meta()
        .creation_timestamp
        .as_ref()
        .and_then(|t| Duration::try_from(Timestamp::now().duration_since(t.0)).ok())
        .unwrap_or(Duration::ZERO)
}

/// `at + by`, or the end of time past it (a reply's times come from an
/// agent and are not trusted to be sane).
fn later(at: Timestamp, by: Duration) -> Timestamp {
    SignedDuration::try_from(by)
        .ok()
        .and_then(|by| at.checked_add(by).ok())
        .unwrap_or(Timestamp::MAX)
}

fn until(at: Timestamp, now: Timestamp) -> Duration {
    at.duration_since(now)
        .try_into()
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_millis(100))
}

async fn reconcile_session(
    session: &BrowserSession,
    controller: &SessionController,
    memory: &mut SessionMemory,
) -> Result<Action, Error> {
    let (ctx, fleets) = (controller.ctx.as_ref(), &controller.fleets);
    if session.meta().deletion_timestamp.is_some() {
        return delete(session, ctx, fleets, memory).await;
    }
    let status = session.status.clone().unwrap_or_default();
    if finished(status.phase) {
        memory.instance_reclaimed = false;
        return collect_when_due(session, &status, ctx).await;
    }
    let session = &if session.finalizers().iter().any(|f| f == FINALIZER) {
        session.clone()
    } else {
        finalizers::add(&api(ctx, session), session, FINALIZER).await?
    };
    match status.phase {
        SessionPhase::Pending if status.requested_at.is_none() => {
            admit(session, &status, ctx, fleets, memory).await
        }
        SessionPhase::Pending | SessionPhase::Starting => {
            give_up_when_due(session, &status, ctx).await
        }
        SessionPhase::Ready => check_ready(session, &status, ctx, fleets, memory).await,
        // Only set while the resource is being deleted.
        SessionPhase::Terminating => Ok(Action::requeue(Duration::from_secs(30))),
        SessionPhase::Terminated | SessionPhase::Failed => Ok(Action::await_change()),
    }
}

/// The fleet a session names, from the operator's fleet cache.
pub fn fleet_of(session: &BrowserSession, ctx: &Context) -> Option<Arc<BrowserFleet>> {
    ctx.caches.fleets.get(
        &ObjectRef::new(&session.spec.fleet_ref.name)
            .within(&session.namespace().unwrap_or_default()),
    )
}

/// A new status with a phase, its `Ready` condition and an Event.
pub struct Transition {
    /// The status to write.
    pub status: BrowserSessionStatus,
    /// The Event's reason; `None` writes without an Event.
    pub event: Option<&'static str>,
    /// A Warning rather than a Normal Event.
    pub warning: bool,
}

/// Writes `next` over `session`'s status, guarded by its resourceVersion,
/// and emits the Event of the change. Returns the updated object.
pub async fn transition(
    ctx: &Context,
    session: &BrowserSession,
    next: Transition,
) -> Result<BrowserSession, kube::Error> {
    let now = Time(Timestamp::now());
    let mut status = next.status;
    let (ready, reason) = match status.phase {
        SessionPhase::Ready => (true, "Ready".to_owned()),
        phase => (false, format!("{phase:?}")),
    };
    let message = status.message.clone().unwrap_or_default();
    status.conditions = conditions::merge(
        &status.conditions,
        &[Wanted::new(CONDITION_READY, ready, reason, message.clone())],
        session.meta().generation,
        &now,
    );
    status.observed_generation = session.meta().generation;
    let phase = status.phase;
    let mut updated = session.clone();
    updated.status = Some(status);
    let written = api(ctx, session)
        .replace_status(&session.name_any(), &PostParams::default(), &updated)
        .await?;
    tracing::info!(session = %session.name_any(), ?phase, "session phase");
    if let Some(reason) = next.event {
        let note = if message.is_empty() {
            format!("{phase:?}")
        } else {
            format!("{phase:?}: {message}")
        };
        ctx.event(&written, next.warning, reason, note).await;
    }
    Ok(written)
}

/// A status that ends the session `Failed` for `reason`.
fn failed(status: &BrowserSessionStatus, reason: SessionEndReason, message: String) -> Transition {
    Transition {
        status: BrowserSessionStatus {
            phase: SessionPhase::Failed,
            reason: Some(reason),
            message: Some(message),
            finished_at: Some(Time(Timestamp::now())),
            ..status.clone()
        },
        event: Some("Failed"),
        warning: true,
    }
}

/// Checks the session against its fleet and enqueues its request.
async fn admit(
    session: &BrowserSession,
    status: &BrowserSessionStatus,
    ctx: &Context,
    fleets: &FleetLink,
    memory: &mut SessionMemory,
) -> Result<Action, Error> {
    if !ctx.caches.fleets_synced() {
        // An empty cache would refuse every session as naming no fleet.
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    if let Some(wait) = memory.retry_in() {
        // A failed send backs off; its own status writes must not make the
        // next attempt come at once.
        return Ok(Action::requeue(wait));
    }
    let fleet_name = &session.spec.fleet_ref.name;
    let namespace = session.namespace().unwrap_or_default();
    let fleet = match fleet_of(session, ctx) {
        Some(fleet) => Some(fleet),
        // The cache may not have seen a fleet created just before: ask.
        None => {
            let fleets: Api<BrowserFleet> = Api::namespaced(ctx.client.clone(), &namespace);
            fleets.get_opt(fleet_name).await?.map(Arc::new)
        }
    };
    let Some(fleet) = fleet.filter(|f| f.meta().deletion_timestamp.is_none()) else {
        let message = format!("no BrowserFleet {fleet_name} in namespace {namespace}");
        if age(session) < MISSING_FLEET_GRACE {
            // Applied together with its fleet (GitOps, `kubectl apply` of a
            // directory): the fleet may be created a moment later.
            wait_pending(session, status, ctx, format!("waiting: {message}")).await?;
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        transition(
            ctx,
            session,
            failed(status, SessionEndReason::Rejected, message),
        )
        .await?;
        return Ok(Action::await_change());
    };
    let queues = fleet.status.as_ref().and_then(|s| s.queues.as_ref());
    let (Some(requests), Some(events)) = (
        queues.and_then(|q| q.requests.clone()),
        queues.and_then(|q| q.events.clone()),
    ) else {
        // Counted as demand of the fleet meanwhile (see `pending_sessions`);
        // its reconcile is asked for once, when the session starts waiting.
        let started_waiting = wait_pending(
            session,
            status,
            ctx,
            format!("waiting for fleet {fleet_name} to create its queues"),
        )
        .await?;
        if started_waiting {
            fleets.reconcile(&fleet);
        }
        return Ok(Action::requeue(Duration::from_secs(2)));
    };
    let credentials = match proxy_credentials(session, ctx).await? {
        Ok(credentials) => credentials,
        Err(message) => {
            wait_pending(session, status, ctx, message).await?;
            return Ok(Action::requeue(Duration::from_secs(10)));
        }
    };
    let now = Timestamp::now();
    let timeout = request::start_timeout(session, &fleet);
    // Whole seconds, as status keeps times: the agents and this reconciler
    // give up at the same instant.
    let deadline = later(now, timeout);
    let deadline = Timestamp::from_second(deadline.as_second()).unwrap_or(deadline);
    let key = fleets.secrets(ctx, &fleet).await?.message_key;
    let built = request::build(
        session,
        &fleet,
        &events,
        credentials,
        key.expose().as_bytes(),
        deadline,
    );
    let create = match built {
        Ok(create) => create,
        Err(refused) => {
            transition(
                ctx,
                session,
                failed(status, SessionEndReason::Rejected, refused.0),
            )
            .await?;
            return Ok(Action::await_change());
        }
    };
    let body = serde_json::to_string(&Inbound::Create(create))?;
    // Signed: it asks for what only the operator may (a `bs-` session id,
    // reserved labels, replies on the events queue).
    let attributes = signing::sign(
        key.expose().as_bytes(),
        Purpose::Request,
        &body,
        now.as_second(),
    );
    let id = request::session_id(session);
    // The record first: a restarted operator sees the request as made and
    // never makes it twice.
    let starting = BrowserSessionStatus {
        phase: SessionPhase::Starting,
        session_id: Some(id.to_string()),
        requested_at: Some(Time(now)),
        start_deadline: Some(Time(deadline)),
        message: Some(format!("waiting for an agent of fleet {fleet_name}")),
        ..status.clone()
    };
    let written = transition(
        ctx,
        session,
        Transition {
            status: starting,
            event: None,
            warning: false,
        },
    )
    .await?;
    let sent = ctx
        .sqs
        .send(
            &QueueUrl::new(&requests),
            &OutgoingMessage {
                body,
                delay: Duration::ZERO,
                attributes,
            },
        )
        .await;
    if let Err(error) = sent {
        // Not on the queue: back to Pending, so the next attempt sends it.
        let back = BrowserSessionStatus {
            phase: SessionPhase::Pending,
            requested_at: None,
            start_deadline: None,
            message: Some(format!("cannot enqueue the request: {error}")),
            ..written.status.clone().unwrap_or_default()
        };
        let reverted = Transition {
            status: back,
            event: None,
            warning: false,
        };
        if let Err(revert) = transition(ctx, &written, reverted).await {
            tracing::warn!(%revert, "cannot take back a request that was not enqueued; it fails at its start deadline");
        }
        let wait = memory.send_failed();
        tracing::warn!(session = %session.name_any(), %error, ?wait, "cannot enqueue the request; retrying");
        return Ok(Action::requeue(wait));
    }
    *memory = SessionMemory::default();
    ctx.event(
        &written,
        false,
        "Requested",
        format!("request enqueued on fleet {fleet_name}, start deadline {deadline}"),
    )
    .await;
    Ok(Action::requeue(timeout))
}

/// Stays `Pending` with `message`, written only when it changes; whether it
/// was written.
async fn wait_pending(
    session: &BrowserSession,
    status: &BrowserSessionStatus,
    ctx: &Context,
    message: String,
) -> Result<bool, Error> {
    if status.message.as_deref() == Some(message.as_str()) && session.status.is_some() {
        return Ok(false);
    }
    let pending = Transition {
        status: BrowserSessionStatus {
            phase: SessionPhase::Pending,
            message: Some(message),
            ..status.clone()
        },
        event: Some("Waiting"),
        warning: false,
    };
    transition(ctx, session, pending).await?;
    Ok(true)
}

/// The proxy credentials the session names: `Ok(Err(why))` while the Secret
/// is missing or lacks a key (the session waits for it).
async fn proxy_credentials(
    session: &BrowserSession,
    ctx: &Context,
) -> Result<Result<request::ProxyCredentials, String>, Error> {
    let Some(reference) = session
        .spec
        .proxy
        .as_ref()
        .and_then(|p| p.credentials_secret_ref.as_ref())
    else {
        return Ok(Ok(request::ProxyCredentials::default()));
    };
    let secrets: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &session.namespace().unwrap_or_default());
    let Some(secret) = secrets.get_opt(&reference.name).await? else {
        return Ok(Err(format!(
            "waiting for the proxy credentials Secret {}",
            reference.name
        )));
    };
    let key = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
    };
    match (key("username"), key("password")) {
        (Some(username), Some(password)) => Ok(Ok(request::ProxyCredentials {
            username: Some(username),
            password: Some(SecretValue::new(password)),
        })),
        _ => Ok(Err(format!(
            "the proxy credentials Secret {} needs the keys username and password",
            reference.name
        ))),
    }
}

/// A requested session that no agent started by its deadline fails; agents
/// refuse its request from then on.
async fn give_up_when_due(
    session: &BrowserSession,
    status: &BrowserSessionStatus,
    ctx: &Context,
) -> Result<Action, Error> {
    let now = Timestamp::now();
    let deadline = status.start_deadline.as_ref().map_or(now, |t| t.0);
    if now < deadline {
        return Ok(Action::requeue(until(deadline, now)));
    }
    let seconds = status
        .requested_at
        .as_ref()
        .map(|r| deadline.duration_since(r.0).as_secs())
        .unwrap_or_default();
    let message = format!(
        "no agent of fleet {} started the session within {seconds} s",
        session.spec.fleet_ref.name
    );
    transition(
        ctx,
        session,
        failed(status, SessionEndReason::StartTimeout, message),
    )
    .await?;
    Ok(Action::await_change())
}

/// How often a ready session whose instance EC2 takes back is looked at:
/// its end is reported by its agent, or found when the instance is gone.
const RECLAIM_CHECK: Duration = Duration::from_secs(5);

/// A ready session whose instance is gone, or whose end reply never came,
/// has ended.
async fn check_ready(
    session: &BrowserSession,
    status: &BrowserSessionStatus,
    ctx: &Context,
    fleets: &FleetLink,
    memory: &mut SessionMemory,
) -> Result<Action, Error> {
    let now = Timestamp::now();
    let instance = status.instance_id.clone().unwrap_or_default();
    let fleet = fleet_of(session, ctx);
    // Gone means unknown to both the fleet's status and its registrations:
    // either may lag on its own.
    let hosted = fleet.as_ref().is_some_and(|f| {
        f.status
            .as_ref()
            .is_none_or(|s| s.instances.iter().any(|i| i.instance_id == instance))
            || replies::address_of(fleets, f, &instance).is_some()
    });
    if fleet
        .as_ref()
        .is_some_and(|f| replies::instance_reclaimed(f, &instance))
    {
        memory.instance_reclaimed = true;
    }
    let overdue = status
        .expires_at
        .as_ref()
        .map(|e| later(e.0, END_REPLY_GRACE));
    let ended = if ctx.caches.fleets_synced() && !hosted {
        Some(if memory.instance_reclaimed {
            (
                SessionEndReason::Interrupted,
                format!("instance {instance} was taken back by EC2 (spot interruption)"),
            )
        } else {
            (
                SessionEndReason::Crashed,
                format!("instance {instance} is gone"),
            )
        })
    } else if overdue.is_some_and(|o| now >= o) {
        Some((
            SessionEndReason::Expired,
            "its TTL passed and its agent sent no end".to_owned(),
        ))
    } else {
        None
    };
    let Some((reason, message)) = ended else {
        let next = overdue.map_or(Duration::from_secs(60), |o| until(o, now));
        let longest = if memory.instance_reclaimed {
            RECLAIM_CHECK
        } else {
            Duration::from_secs(60)
        };
        return Ok(Action::requeue(next.min(longest)));
    };
    let terminated = Transition {
        status: BrowserSessionStatus {
            phase: SessionPhase::Terminated,
            reason: Some(reason),
            message: Some(message),
            finished_at: Some(Time(now)),
            ..status.clone()
        },
        event: Some("Terminated"),
        warning: true,
    };
    transition(ctx, session, terminated).await?;
    Ok(Action::await_change())
}

/// A finished session is deleted `ttlSecondsAfterFinished` after its end,
/// like a Job; its Secret goes with it (owner reference).
async fn collect_when_due(
    session: &BrowserSession,
    status: &BrowserSessionStatus,
    ctx: &Context,
) -> Result<Action, Error> {
    let Some(keep) = session.spec.ttl_seconds_after_finished else {
        return Ok(Action::await_change());
    };
    let now = Timestamp::now();
    let ended = status.finished_at.as_ref().map_or(now, |t| t.0);
    let due = later(ended, Duration::from_secs(u64::try_from(keep).unwrap_or(0)));
    if now < due {
        return Ok(Action::requeue(until(due, now)));
    }
    // Only this session, not a namesake created since.
    let mut params = DeleteParams::background();
    params.preconditions = Some(Preconditions {
        uid: session.uid(),
        resource_version: None,
    });
    match api(ctx, session).delete(&session.name_any(), &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_not_found() => {}
        Err(error) => return Err(error.into()),
    }
    tracing::info!(session = %session.name_any(), "finished session removed (ttlSecondsAfterFinished)");
    Ok(Action::await_change())
}

/// A deleted session: its browser is ended on its agent before the
/// finalizer goes; a request not yet started is cancelled on every agent.
async fn delete(
    session: &BrowserSession,
    ctx: &Context,
    fleets: &FleetLink,
    memory: &mut SessionMemory,
) -> Result<Action, Error> {
    if !session.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let status = session.status.clone().unwrap_or_default();
    let id = request::session_id(session);
    let fleet = fleet_of(session, ctx);
    match status.phase {
        // Never sent (a failed send is taken back, but may have reached the
        // queue: a session id says a send was tried).
        SessionPhase::Pending if status.session_id.is_none() => {}
        SessionPhase::Terminated | SessionPhase::Failed => {}
        SessionPhase::Pending | SessionPhase::Starting => {
            if let Some(fleet) = &fleet {
                replies::cancel_everywhere(ctx, fleets, fleet, &id, &Default::default()).await?;
            }
        }
        SessionPhase::Ready | SessionPhase::Terminating => {
            let session = if status.phase == SessionPhase::Ready {
                let terminating = Transition {
                    status: BrowserSessionStatus {
                        phase: SessionPhase::Terminating,
                        message: Some("deleted: ending the browser".into()),
                        ..status.clone()
                    },
                    event: Some("Terminating"),
                    warning: false,
                };
                transition(ctx, session, terminating).await?
            } else {
                session.clone()
            };
            let instance = status.instance_id.clone().unwrap_or_default();
            if let Some(fleet) = &fleet {
                end_hosted(ctx, fleets, fleet, &instance, &id).await?;
            }
            return finish_deletion(&session, ctx, memory).await;
        }
    }
    finish_deletion(session, ctx, memory).await
}

async fn finish_deletion(
    session: &BrowserSession,
    ctx: &Context,
    memory: &mut SessionMemory,
) -> Result<Action, Error> {
    finalizers::remove(&api(ctx, session), session, FINALIZER).await?;
    *memory = SessionMemory::default();
    Ok(Action::await_change())
}

/// Ends session `id` on the agent of `instance`. Done when the agent ended
/// it or does not host it, or when the instance is gone; an agent that does
/// not answer on a live instance is an error (retried).
async fn end_hosted(
    ctx: &Context,
    fleets: &FleetLink,
    fleet: &BrowserFleet,
    instance: &str,
    id: &SessionId,
) -> Result<(), Error> {
    let Some(address) = replies::address_of(fleets, fleet, instance) else {
        tracing::info!(%instance, session = %id, "instance unknown to its fleet; its browser went with it");
        return Ok(());
    };
    let token = fleets.token(ctx, fleet).await?;
    match ctx.agents.end_session(&address, token.expose(), id).await {
        Ok(SessionEnd::Ended | SessionEnd::NotHosted) => Ok(()),
        Err(error) if !replies::instance_alive(fleet, instance) => {
            tracing::info!(%instance, %error, "agent gone with its instance");
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}
