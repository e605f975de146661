//! The agent's sessions: launching a browser for a request, supervising it,
//! ending it with a reason, draining, and finding browsers again after a
//! restart. Everything that must not leak — slots, ports, processes,
//! profiles — is taken and given back here, under one lock.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, watch};

use super::args::sanitize;
use super::config::AgentSettings;
use super::devtools::DevTools;
use super::launch::{
    SessionLaunch, browser_command, installed_extensions, missing_extensions,
    missing_extensions_message, new_token,
};
use super::metrics::AgentMetrics;
use super::process::{ExitWatch, LaunchSpec, ProcessControl, ProcessExit};
use super::profiles::{Profile, ProfileKind, ProfileStore, browser_marker, profiles_root};
use super::replies::{Replier, ReplyTargets};
use super::requesters::{Requester, termination_replies};
use super::slots::{Port, PortState, SlotError, SlotPool};
use super::supervise::{BrowserHealth, Deadlines, shows_use, verdict};
use super::table::{SessionRecord, TableFileStore, token_digest};
use super::tombstones::{CANCELLED_MESSAGE, Tombstones};
use crate::cloud::queues::{OutgoingMessage, QueueUrl, Queues};
use crate::protocol::InstanceId;
use crate::protocol::state::STATE_VERSION;
use crate::protocol::{
    AgentState, AnnouncementKind, CreateRequest, Endpoints, EventsMessage, Failed, FailureReason,
    HostedPhase, NodeAnnouncement, Ready, Reply, ReplyKind, SessionId, SessionState, SessionToken,
    Terminated, TerminationReason,
};

/// Longest wait for one announcement to reach the events queue.
pub const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(5);

/// Who this agent is.
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    /// EC2 instance id (or a name for local runs).
    pub instance_id: String,
    /// Address clients reach the gateway at (`host:port`).
    pub advertise: String,
}

/// A session hosted here.
struct LiveSession {
    record: SessionRecord,
    phase: HostedPhase,
    /// The gateway token; `None` for a session adopted after a restart (the
    /// table keeps only its digest).
    token: Option<SessionToken>,
    /// Set by the gateway when a client connects.
    used: Arc<AtomicBool>,
    /// The exit of a browser this agent process started; `None` for a
    /// browser adopted after a restart (watched through its identity).
    exit: Option<ExitWatch>,
    profile: Profile,
    /// Requesters of deletes that reached the session, answered when it
    /// ends (whoever ends it) besides the create's. Kept in memory only.
    deleters: Vec<Requester>,
}

struct State {
    pool: SlotPool<SessionId>,
    sessions: BTreeMap<SessionId, LiveSession>,
    /// Deletes of sessions not hosted here, which refuse a later create of
    /// the same id. Under the same lock as `sessions`: a delete decides
    /// "not hosted" and records its tombstone in one step, so a launch that
    /// adds its session afterwards finds the tombstone.
    tombstones: Tombstones,
    /// When the last session ended (or the agent started, before any).
    emptied: SystemTime,
}

/// What the gateway needs to reach one session's browser.
#[derive(Clone, Debug)]
pub struct GatewayRoute {
    /// The session.
    pub id: SessionId,
    /// Its browser's DevTools port.
    pub port: Port,
    /// SHA-256 (hex) of its token.
    pub token_sha256: String,
    used: Arc<AtomicBool>,
}

impl GatewayRoute {
    /// Records that a client used the session.
    pub fn mark_used(&self) {
        self.used.store(true, Ordering::Relaxed);
    }
}

struct TableSnapshot {
    sequence: u64,
    records: Vec<SessionRecord>,
}

struct Housekeeping {
    use_checked: Instant,
    profiles_cleaned: Instant,
}

/// How often unused sessions' pages are read for signs of use.
const USE_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// How often old profiles are looked for.
const PROFILE_CLEANUP_INTERVAL: Duration = Duration::from_secs(600);

/// What [`Agent::end`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The session was ended.
    Ended,
    /// Another caller is ending it.
    AlreadyEnding,
    /// No such session here.
    NotHosted,
}

/// What a delete of a session not hosted here does besides recording its
/// tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotHostedDelete {
    /// Forward it to the fleet's events queue, for the agent that hosts it
    /// (a delete from the request queue, or from a client of the API).
    Forward,
    /// Only record the tombstone: the caller (the operator) sends the delete
    /// to every agent itself, and a forward would come back to it.
    RecordOnly,
}

/// What a delete did.
#[derive(Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The session was here and has ended.
    Ended,
    /// Not here: tombstoned and forwarded to the fleet's events queue.
    Forwarded,
    /// Not here: tombstoned, not forwarded ([`NotHostedDelete::RecordOnly`]).
    NotHosted,
    /// Not here (tombstoned), and the events queue refused the forward.
    ForwardFailed(String),
}

/// Why a request was not launched.
#[derive(Debug)]
pub enum LaunchFailure {
    /// The request can never succeed here: answer `session.failed`.
    Rejected {
        /// Machine reason.
        reason: FailureReason,
        /// For humans.
        message: String,
    },
    /// Something that may work on a retry (here or elsewhere): give the
    /// message back.
    Retry(String),
    /// The session was ended (deleted, drained) while it started; its end
    /// was announced: the request is done.
    Ended,
}

fn timestamp(t: SystemTime) -> jiff::Timestamp {
    jiff::Timestamp::try_from(t).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// The agent.
pub struct Agent<Q> {
    settings: AgentSettings,
    identity: NodeIdentity,
    queues: Q,
    requests: QueueUrl,
    events: QueueUrl,
    dead_letter: Option<QueueUrl>,
    processes: Arc<dyn ProcessControl>,
    profiles: ProfileStore,
    devtools: DevTools,
    table: TableFileStore,
    metrics: AgentMetrics,
    replier: Replier,
    executable: PathBuf,
    state: Mutex<State>,
    /// When the agent was made; reported as `readySince`.
    ready_since: SystemTime,
    /// Wakes the intake when a slot frees.
    slot_freed: Notify,
    /// Numbers table snapshots, and the last one written.
    table_sequence: std::sync::atomic::AtomicU64,
    table_written: Mutex<u64>,
    /// When page URLs were last read to detect use, and when old profiles
    /// were last cleaned up: both are slower than the supervision tick.
    housekeeping: Mutex<Housekeeping>,
    draining: watch::Sender<Option<Instant>>,
    /// Set when the agent should stop (SIGTERM, or the end of a drain).
    stopping: watch::Sender<bool>,
}

impl<Q: Queues + 'static> Agent<Q> {
    /// An agent over its settings and parts. Call [`Agent::recover`] before
    /// serving.
    pub fn new(
        settings: AgentSettings,
        identity: NodeIdentity,
        queues: Q,
        processes: Arc<dyn ProcessControl>,
        executable: PathBuf,
        aws_calls: Option<Arc<crate::cloud::CallRecorder>>,
    ) -> Self {
        let config = &settings.config;
        let made = SystemTime::now();
        let pool = SlotPool::new(
            usize::from(config.slots),
            settings.first_port,
            settings.last_port,
        );
        Agent {
            requests: QueueUrl::new(&config.request_queue_url),
            events: QueueUrl::new(&config.events_queue_url),
            dead_letter: config.dead_letter_queue_url.as_deref().map(QueueUrl::new),
            profiles: ProfileStore::new(profiles_root(&settings.state_dir)),
            table: TableFileStore::new(&settings.state_dir),
            replier: Replier::new(
                config.callback_secret.expose(),
                config.replies.format,
                &config.events_queue_url,
            ),
            devtools: DevTools::new(),
            metrics: AgentMetrics::with_aws_calls(aws_calls),
            state: Mutex::new(State {
                pool,
                sessions: BTreeMap::new(),
                tombstones: Tombstones::default(),
                emptied: made,
            }),
            ready_since: made,
            slot_freed: Notify::new(),
            table_sequence: std::sync::atomic::AtomicU64::new(0),
            table_written: Mutex::new(0),
            housekeeping: Mutex::new(Housekeeping {
                use_checked: Instant::now(),
                profiles_cleaned: Instant::now(),
            }),
            draining: watch::Sender::new(None),
            stopping: watch::Sender::new(false),
            settings,
            identity,
            queues,
            processes,
            executable,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data behind (every
        // change is a single assignment), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The settings.
    pub fn settings(&self) -> &AgentSettings {
        &self.settings
    }
    /// The metrics.
    pub fn metrics(&self) -> &AgentMetrics {
        &self.metrics
    }
    /// The DevTools client.
    pub fn devtools(&self) -> &DevTools {
        &self.devtools
    }
    /// The queues.
    pub fn queues(&self) -> &Q {
        &self.queues
    }
    /// The request queue.
    pub fn request_queue(&self) -> &QueueUrl {
        &self.requests
    }
    /// The dead-letter queue, when configured.
    pub fn dead_letter_queue(&self) -> Option<&QueueUrl> {
        self.dead_letter.as_ref()
    }
    /// The fleet token.
    pub fn fleet_token(&self) -> &str {
        self.settings.config.fleet_token.expose()
    }
    /// The replier.
    pub fn replier(&self) -> &Replier {
        &self.replier
    }
    /// The instance.
    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }
    /// Where clients reach the gateway.
    pub fn advertised_gateway(&self) -> String {
        self.identity.advertise.clone()
    }

    /// Free slots now.
    pub fn free_slots(&self) -> usize {
        self.lock().pool.usage().free_slots()
    }

    /// Waits until a slot may have freed (or a short while passed).
    pub async fn slot_freed(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.slot_freed.notified()).await;
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.borrow().is_some()
    }

    /// A receiver that turns true when the agent should stop.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Asks the agent to stop (SIGTERM): intake ends, sessions stay alive for
    /// the next agent to re-adopt.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Starts a drain: no more intake; sessions run to their end, and those
    /// still running at the drain timeout end as `drained`; then the agent
    /// stops.
    pub fn start_drain(&self) {
        self.draining.send_if_modified(|deadline| {
            if deadline.is_none() {
                *deadline = Some(Instant::now() + self.settings.drain_timeout);
                tracing::info!("drain started");
                true
            } else {
                false
            }
        });
    }

    /// The gateway's view of a session.
    pub fn route(&self, id: &SessionId) -> Option<GatewayRoute> {
        let state = self.lock();
        let session = state.sessions.get(id)?;
        (session.phase == HostedPhase::Active).then(|| GatewayRoute {
            id: id.clone(),
            port: session.record.port(),
            token_sha256: session.record.token_sha256.clone(),
            used: session.used.clone(),
        })
    }

    /// Whether a session is hosted here.
    pub fn hosts(&self, id: &SessionId) -> bool {
        self.lock().sessions.contains_key(id)
    }

    /// Whether a delete of `id` came while it was not hosted here, within
    /// the tombstone TTL: a create of it must be refused as `cancelled`.
    pub fn is_cancelled(&self, id: &SessionId) -> bool {
        self.lock().tombstones.contains(id, Instant::now())
    }

    /// Removes `id`'s tombstone once a create of it has been answered as
    /// `cancelled` (kept until then, so a create whose answer did not go
    /// out is refused again when it reappears).
    pub fn forget_cancel(&self, id: &SessionId) {
        self.lock().tombstones.forget(id);
    }

    /// `/v1/state`.
    pub fn state_view(&self) -> AgentState {
        let state = self.lock();
        let usage = state.pool.usage();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        AgentState {
            version: STATE_VERSION,
            instance_id: self.identity.instance_id.clone(),
            fleet: self.settings.config.fleet.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            draining: self.is_draining(),
            slots: count(usage.slots),
            free_slots: count(usage.free_slots()),
            ready_since: timestamp(self.ready_since),
            idle_since: state.sessions.is_empty().then(|| timestamp(state.emptied)),
            sessions: state
                .sessions
                .values()
                .map(|s| SessionState {
                    id: s.record.id.clone(),
                    phase: s.phase,
                    port: s.record.port,
                    pid: s.record.process.pid,
                    started: timestamp(s.record.started),
                    expires: timestamp(s.record.expires),
                    used: s.record.used || s.used.load(Ordering::Relaxed),
                })
                .collect(),
        }
    }

    /// This agent's `node.registered` or `node.heartbeat`.
    pub fn announcement(&self, kind: AnnouncementKind) -> NodeAnnouncement {
        let state = self.state_view();
        NodeAnnouncement {
            version: 1,
            kind,
            fleet: state.fleet,
            instance_id: state.instance_id,
            address: self.identity.advertise.clone(),
            agent_version: state.agent_version,
            slots: state.slots,
            sessions: u32::try_from(state.sessions.len()).unwrap_or(u32::MAX),
            draining: state.draining,
            at: jiff::Timestamp::now(),
        }
    }

    /// Sends an announcement to the fleet's events queue. A failure is
    /// logged and left for the next heartbeat: the operator tolerates a
    /// missed one. The send is cut short after [`ANNOUNCE_TIMEOUT`], since
    /// the supervision loop waits for it.
    pub async fn announce(&self, kind: AnnouncementKind) {
        let body = match serde_json::to_string(&self.announcement(kind)) {
            Ok(body) => body,
            Err(error) => {
                tracing::warn!(%error, "announcement not serializable");
                return;
            }
        };
        let message = OutgoingMessage {
            body,
            delay: Duration::ZERO,
        };
        match tokio::time::timeout(ANNOUNCE_TIMEOUT, self.queues.send(&self.events, &message)).await
        {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, kind = kind.type_name(), "announcement not sent");
            }
            Err(_) => tracing::warn!(kind = kind.type_name(), "announcement timed out"),
        }
    }

    /// Updates the session and port gauges.
    pub fn refresh_usage_metrics(&self) {
        let state = self.lock();
        let usage = state.pool.usage();
        let starting = state
            .sessions
            .values()
            .filter(|s| s.phase == HostedPhase::Starting)
            .count();
        self.metrics.set_usage(
            starting,
            usage.active,
            usage.ports - usage.reserved - usage.active,
            usage.reserved,
        );
    }

    /// A copy of the table to persist, numbered so that a later copy is
    /// never overwritten by an earlier one.
    fn snapshot(&self, state: &State) -> TableSnapshot {
        let records = state
            .sessions
            .values()
            .map(|s| {
                let mut record = s.record.clone();
                record.used |= s.used.load(Ordering::Relaxed);
                record
            })
            .collect();
        TableSnapshot {
            sequence: self.table_sequence.fetch_add(1, Ordering::Relaxed) + 1,
            records,
        }
    }

    /// Writes a snapshot unless a later one is already on disk. The file is
    /// written outside the state lock: gateway lookups never wait for disk.
    fn persist(&self, snapshot: TableSnapshot) {
        let mut written = self.table_written.lock().unwrap_or_else(|p| p.into_inner());
        if snapshot.sequence <= *written {
            return;
        }
        match self.table.save(&snapshot.records) {
            Ok(()) => *written = snapshot.sequence,
            // The sessions still run; only a restart would lose track of them.
            Err(error) => tracing::error!(%error, "session table not saved"),
        }
    }

    /// Reserves a slot and port for a request about to launch. `None` when
    /// no slot is free.
    pub fn reserve(&self, owner: &SessionId) -> Result<Port, SlotError> {
        let deadline = Instant::now() + self.settings.launch_timeout + Duration::from_secs(10);
        let mut state = self.lock();
        state.pool.reserve(owner.clone(), deadline, port_is_free)
    }

    /// Gives back a reservation that will not be launched.
    pub fn unreserve(&self, owner: &SessionId, port: Port) {
        let _ = self.lock().pool.release(owner, port);
        self.slot_freed.notify_waiters();
    }

    /// The ready reply of a hosted, active session (a redelivered create).
    pub fn ready_reply(&self, id: &SessionId) -> Option<Reply> {
        let state = self.lock();
        let session = state.sessions.get(id)?;
        (session.phase == HostedPhase::Active).then(|| self.ready(session))
    }

    /// `session.ready` for an active session; `session.failed`
    /// (`sessionExists`) for one adopted after a restart, whose token the
    /// agent no longer knows.
    fn ready(&self, session: &LiveSession) -> Reply {
        let record = &session.record;
        let Some(token) = &session.token else {
            return self.reply(
                record,
                ReplyKind::Failed(Failed {
                    reason: FailureReason::SessionExists,
                    message: "the session runs on this instance, but its token is not kept \
                              across agent restarts"
                        .into(),
                }),
            );
        };
        self.reply(
            record,
            ReplyKind::Ready(Ready {
                endpoints: Endpoints::through_gateway(
                    &self.identity.advertise,
                    &record.id,
                    &record.browser_path,
                ),
                token: token.clone(),
                expires_at: timestamp(record.expires),
            }),
        )
    }

    fn reply(&self, record: &SessionRecord, kind: ReplyKind) -> Reply {
        self.compose_reply(
            record.id.clone(),
            record.request_id.clone(),
            record.labels.clone(),
            kind,
        )
    }

    /// A reply from this instance, written now.
    pub fn compose_reply(
        &self,
        session_id: SessionId,
        request_id: Option<crate::protocol::RequestId>,
        labels: BTreeMap<String, String>,
        kind: ReplyKind,
    ) -> Reply {
        Reply {
            kind,
            session_id,
            request_id,
            instance_id: self.instance_id(),
            labels,
            at: jiff::Timestamp::now(),
        }
    }

    /// The instance id, as replies carry it.
    pub fn instance_id(&self) -> InstanceId {
        InstanceId::new(self.identity.instance_id.clone())
    }

    /// Launches the browser of `request` on the reserved `port`, waits until
    /// it answers DevTools, and returns the `session.ready` reply. On failure
    /// everything taken is given back (port, profile, process).
    pub async fn launch(
        &self,
        id: SessionId,
        port: Port,
        request: &CreateRequest,
        received: Instant,
    ) -> Result<Reply, LaunchFailure> {
        let rejected = |reason, message: String| {
            self.unreserve(&id, port);
            LaunchFailure::Rejected { reason, message }
        };
        let browser = &self.settings.config.browser;
        let args = match sanitize(&request.args, &self.settings.arg_policy) {
            Ok(args) => args,
            Err(violations) => {
                let message = violations
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(rejected(FailureReason::ForbiddenArgument, message));
            }
        };
        let extensions_dir = &self.settings.extensions_dir;
        let missing = missing_extensions(extensions_dir, &request.extensions).await;
        if !missing.is_empty() {
            let installed = installed_extensions(extensions_dir).await;
            return Err(rejected(
                FailureReason::InvalidRequest,
                missing_extensions_message(&missing, &installed),
            ));
        }
        let profile = match &request.profile {
            Some(_) if !self.settings.config.profiles.allow_persistent => {
                return Err(rejected(
                    FailureReason::InvalidRequest,
                    "this fleet does not keep named profiles (profiles.allowPersistent is off)"
                        .into(),
                ));
            }
            Some(name) => self.profiles.open_named(name.as_str()).await,
            None => self.profiles.create_temporary(&profile_dir_name(&id)).await,
        };
        let profile = match profile {
            Ok(profile) => profile,
            Err(error) => {
                // In use by another session, or not creatable on disk.
                return Err(rejected(
                    FailureReason::ProfileUnavailable,
                    format!("profile: {error}"),
                ));
            }
        };
        let command = browser_command(
            browser,
            &self.executable,
            &SessionLaunch {
                port,
                profile_dir: profile.path(),
                session_args: &args,
                proxy: request.proxy.as_ref(),
                extensions: &request.extensions,
                extensions_dir: &self.settings.extensions_dir,
                start_url: request.start_url.as_deref(),
            },
        );
        let spec = LaunchSpec {
            program: command.program,
            args: command.args,
            env: Vec::new(),
            working_dir: None,
            log_file: None,
        };
        let spawned = match self.processes.spawn(&spec) {
            Ok(spawned) => spawned,
            Err(error) => {
                self.release_profile(&profile).await;
                self.unreserve(&id, port);
                self.metrics.failed("failedToStart");
                return Err(LaunchFailure::Retry(format!(
                    "browser did not start: {error}"
                )));
            }
        };
        self.metrics.launches.inc();
        let started = SystemTime::now();
        let limits = &self.settings;
        let requested = request.ttl.unwrap_or(limits.default_ttl);
        let ttl = requested.min(limits.max_ttl);
        let token = new_token();
        let record = SessionRecord {
            id: id.clone(),
            request_id: request.request_id.clone(),
            port: port.0,
            token_sha256: token_digest(&token),
            process: spawned.identity,
            profile_dir: profile.path().to_path_buf(),
            profile_temporary: profile.kind() == ProfileKind::Temporary,
            browser_path: String::new(),
            started,
            expires: started + ttl,
            ttl_was_cut: requested > limits.max_ttl,
            use_by: started + limits.never_used_timeout,
            used: false,
            start_url: request.start_url.clone(),
            reply_to: request.reply_to.clone(),
            callback_url: request.callback_url.clone(),
            labels: request.labels.clone(),
        };
        let (snapshot, cancelled) = {
            let mut state = self.lock();
            // A delete between the intake's check and here found the
            // session not hosted and left a tombstone.
            let cancelled = state.tombstones.contains(&id, Instant::now());
            state.sessions.insert(
                id.clone(),
                LiveSession {
                    record,
                    phase: HostedPhase::Starting,
                    token: Some(SessionToken::new(token)),
                    used: Arc::new(AtomicBool::new(false)),
                    exit: Some(spawned.exit.clone()),
                    profile,
                    deleters: Vec::new(),
                },
            );
            (self.snapshot(&state), cancelled)
        };
        // Persisted before the wait, so an agent that dies now still knows
        // this browser after its restart.
        self.persist(snapshot);
        if cancelled {
            // Added above all the same, so that `end` releases everything.
            self.end(&id, TerminationReason::Deleted, false).await;
            return Err(LaunchFailure::Rejected {
                reason: FailureReason::Cancelled,
                message: CANCELLED_MESSAGE.into(),
            });
        }
        let mut exit = spawned.exit;
        let ready = tokio::select! {
            ready = self.devtools.wait_ready(port, self.settings.launch_timeout) => ready.map_err(|e| e.to_string()),
            code = exit.wait() => Err(format!("browser exited during start: {code:?}")),
        };
        let activated = match ready {
            Ok(version) => self.activate(&id, port, &version),
            Err(message) => Err(message),
        };
        let reply = match activated {
            Ok(reply) => reply,
            Err(message) => {
                // Ended by a delete or a drain while it started: that end
                // answered the requester, and the request must not run again.
                if self.end(&id, TerminationReason::FailedToStart, false).await != Ending::Ended {
                    return Err(LaunchFailure::Ended);
                }
                self.metrics.failed("failedToStart");
                return Err(LaunchFailure::Retry(message));
            }
        };
        self.metrics
            .launch_seconds
            .observe(received.elapsed().as_secs_f64());
        tracing::info!(session = %id, %port, "session ready");
        Ok(reply)
    }

    /// Marks a started session active and builds its ready reply.
    fn activate(
        &self,
        id: &SessionId,
        port: Port,
        version: &super::devtools::BrowserVersion,
    ) -> Result<Reply, String> {
        let mut state = self.lock();
        state
            .pool
            .activate(id, port, Instant::now())
            .map_err(|e| e.to_string())?;
        let session = state
            .sessions
            .get_mut(id)
            .ok_or("session ended during its start")?;
        if session.phase != HostedPhase::Starting {
            return Err("session ended during its start".into());
        }
        session.phase = HostedPhase::Active;
        session.record.browser_path = version.browser_path().unwrap_or_default().to_owned();
        let reply = self.ready(session);
        let snapshot = self.snapshot(&state);
        drop(state);
        self.persist(snapshot);
        Ok(reply)
    }

    /// Ends a session: kills its browser's process tree, frees its port,
    /// releases its profile (deleting a temporary one), saves the table and,
    /// when `announce`, sends `session.terminated` to its requester. The
    /// requesters of deletes that reached the session get `session.terminated`
    /// with `reason` too, announced or not (see [`super::requesters`]): the
    /// delete asked for it, and `announce` is about the create's requester,
    /// whom a caller that passes false answers itself.
    ///
    /// The session stays in the table as `Ending` until everything is
    /// released, so a drain does not finish early and a second `end` (a
    /// delete racing the supervisor) sees it is already ending. The deletes'
    /// requesters are taken with the session, under the lock, so each is
    /// answered once, by the `end` that removes it. Callers that may be
    /// cancelled (an HTTP handler) run it in a task of its own.
    pub async fn end(&self, id: &SessionId, reason: TerminationReason, announce: bool) -> Ending {
        let (record, profile) = {
            let mut state = self.lock();
            let Some(session) = state.sessions.get_mut(id) else {
                return Ending::NotHosted;
            };
            if session.phase == HostedPhase::Ending {
                return Ending::AlreadyEnding;
            }
            session.phase = HostedPhase::Ending;
            (session.record.clone(), session.profile.clone())
        };
        match self.processes.kill_tree(record.process).await {
            Ok(outcome) => tracing::debug!(session = %id, ?outcome, "browser killed"),
            Err(error) => tracing::warn!(session = %id, %error, "browser kill failed"),
        }
        self.release_profile(&profile).await;
        let (snapshot, deleters) = {
            let mut state = self.lock();
            if let Err(error) = state.pool.release(id, record.port()) {
                tracing::warn!(session = %id, %error, "port was not held");
            }
            let deleters = state
                .sessions
                .remove(id)
                .map(|s| s.deleters)
                .unwrap_or_default();
            if state.sessions.is_empty() {
                state.emptied = SystemTime::now();
            }
            (self.snapshot(&state), deleters)
        };
        self.persist(snapshot);
        self.slot_freed.notify_waiters();
        self.metrics.terminated(&reason.to_string());
        tracing::info!(session = %id, %reason, "session ended");
        let mut requesters = Vec::with_capacity(1 + deleters.len());
        if announce {
            requesters.push(Requester {
                request_id: record.request_id.clone(),
                targets: ReplyTargets::new(record.reply_to.as_ref(), record.callback_url.as_ref()),
            });
        }
        requesters.extend(deleters);
        self.announce_end(&record, reason, &requesters).await;
        Ending::Ended
    }

    /// Sends `session.terminated` to `requesters`, each target once.
    async fn announce_end(
        &self,
        record: &SessionRecord,
        reason: TerminationReason,
        requesters: &[Requester],
    ) {
        for requester in termination_replies(requesters) {
            let reply = self.compose_reply(
                record.id.clone(),
                requester.request_id,
                record.labels.clone(),
                ReplyKind::Terminated(Terminated {
                    reason,
                    message: None,
                }),
            );
            let sent = self
                .replier
                .send(&self.queues, &requester.targets, &reply)
                .await;
            if let Err(error) = sent {
                tracing::warn!(session = %record.id, %error, "termination reply not sent");
            }
        }
    }

    /// A delete: ends the session if hosted here, answering the create's
    /// requester and the delete's own (`request_id` at `targets`) with
    /// `session.terminated`, each target once. Otherwise records a
    /// tombstone, so that a create of the session taken later is refused
    /// (`cancelled`), and, with [`NotHostedDelete::Forward`], forwards the
    /// delete with its requester to the fleet's events queue for the agent
    /// that hosts it; with [`NotHostedDelete::RecordOnly`] its requester is
    /// not answered here (the agent that hosts the session does that).
    pub async fn delete_session(
        &self,
        id: &SessionId,
        request_id: Option<crate::protocol::RequestId>,
        targets: ReplyTargets,
        not_hosted: NotHostedDelete,
    ) -> DeleteOutcome {
        let deleter = Requester {
            request_id,
            targets,
        };
        let hosted = {
            let mut state = self.lock();
            match state.sessions.get_mut(id) {
                Some(session) => {
                    // Answered by whichever end removes the session: this
                    // delete's, or one racing it (the supervisor's, say).
                    if deleter.has_targets() {
                        session.deleters.push(deleter.clone());
                    }
                    true
                }
                None => {
                    state.tombstones.record(id, Instant::now());
                    false
                }
            }
        };
        if hosted {
            // Ended by this delete, or by another end racing it.
            self.end(id, TerminationReason::Deleted, true).await;
            return DeleteOutcome::Ended;
        }
        let Requester {
            request_id,
            targets,
        } = deleter;
        tracing::info!(session = %id, "delete of a session not hosted here; a create of it will be refused");
        if not_hosted == NotHostedDelete::RecordOnly {
            return DeleteOutcome::NotHosted;
        }
        let forward = EventsMessage {
            session_id: id.clone(),
            request_id,
            from_instance: self.instance_id(),
            reply_to: targets.reply_to,
            callback_url: targets.callback_url,
        };
        let body = match serde_json::to_string(&forward) {
            Ok(body) => body,
            Err(error) => return DeleteOutcome::ForwardFailed(error.to_string()),
        };
        let message = OutgoingMessage {
            body,
            delay: Duration::ZERO,
        };
        match self.queues.send(&self.events, &message).await {
            Ok(_) => DeleteOutcome::Forwarded,
            Err(error) => DeleteOutcome::ForwardFailed(error.to_string()),
        }
    }

    /// One supervision pass: ends sessions whose browser exited, whose TTL
    /// passed or that nobody used; expires stale reservations; advances a
    /// drain. Returns true when a drain has finished and the agent should
    /// exit.
    pub async fn supervise_once(&self) -> bool {
        let now = SystemTime::now();
        let expired = {
            let mut state = self.lock();
            state.tombstones.prune(Instant::now());
            state.pool.expire(Instant::now())
        };
        for (port, owner) in expired {
            tracing::warn!(session = %owner, %port, "reservation expired");
        }
        let checks: Vec<(
            SessionId,
            Deadlines,
            BrowserHealth,
            bool,
            Port,
            Option<String>,
        )> = {
            let state = self.lock();
            state
                .sessions
                .values()
                .filter(|s| s.phase == HostedPhase::Active)
                .map(|s| {
                    let health = match &s.exit {
                        Some(exit) => match exit.exited() {
                            None => BrowserHealth::Running,
                            Some(ProcessExit::Code(code)) => BrowserHealth::Exited(Some(code)),
                            Some(_) => BrowserHealth::Exited(None),
                        },
                        None if self.processes.is_alive(&s.record.process) => {
                            BrowserHealth::Running
                        }
                        None => BrowserHealth::Exited(None),
                    };
                    let r = &s.record;
                    (
                        r.id.clone(),
                        Deadlines {
                            started: r.started,
                            expires: r.expires,
                            ttl_was_cut: r.ttl_was_cut,
                            use_by: r.use_by,
                        },
                        health,
                        r.used || s.used.load(Ordering::Relaxed),
                        r.port(),
                        r.start_url.clone(),
                    )
                })
                .collect()
        };
        let check_use = {
            let mut housekeeping = self.housekeeping.lock().unwrap_or_else(|p| p.into_inner());
            let due = housekeeping.use_checked.elapsed() >= USE_CHECK_INTERVAL;
            if due {
                housekeeping.use_checked = Instant::now();
            }
            due
        };
        for (id, deadlines, health, mut used, port, start_url) in checks {
            if check_use && !used && health == BrowserHealth::Running {
                // A client may drive the browser without the gateway knowing
                // (a connection opened before a restart): its pages tell.
                if let Ok(urls) = self.devtools.page_urls(port).await
                    && urls.iter().any(|u| shows_use(u, start_url.as_deref()))
                {
                    used = true;
                    if let Some(session) = self.lock().sessions.get(&id) {
                        session.used.store(true, Ordering::Relaxed);
                    }
                }
            }
            if let Some(reason) = verdict(&deadlines, health, used, now) {
                self.end(&id, reason, true).await;
            }
        }
        self.refresh_usage_metrics();
        self.clean_profiles_when_due().await;
        let deadline = *self.draining.borrow();
        if let Some(deadline) = deadline {
            let (remaining, launching) = {
                let state = self.lock();
                let ids: Vec<SessionId> = state.sessions.keys().cloned().collect();
                (ids, state.pool.usage().reserved)
            };
            // A reservation is a launch whose session is not in the map yet.
            if remaining.is_empty() && launching == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                for id in remaining {
                    self.end(&id, TerminationReason::Drained, true).await;
                }
                return true;
            }
        }
        false
    }

    /// After a restart: re-adopts the browsers of the saved table that still
    /// run and answer DevTools, ends the others (reporting them), and kills
    /// browsers found running from our profiles that no session owns.
    pub async fn recover(&self) -> Result<RecoveryReport, super::table::TableError> {
        let records = match self.table.load() {
            Ok(records) => records,
            Err(error) => {
                // Unreadable: kept aside for a person to look at. Every
                // browser of ours still running becomes an orphan below.
                tracing::error!(%error, "session table unreadable; moving it aside");
                let aside = self.table.path().with_extension("json.unreadable");
                if let Err(error) = std::fs::rename(self.table.path(), &aside) {
                    tracing::error!(%error, "could not move the session table aside");
                    return Err(super::table::TableError::Io {
                        path: self.table.path().to_path_buf(),
                        source: error,
                    });
                }
                Vec::new()
            }
        };
        let mut report = RecoveryReport::default();
        for record in records {
            let mut record = record;
            let version = if self.processes.is_alive(&record.process) {
                self.devtools.version(record.port()).await.ok()
            } else {
                None
            };
            let alive = version.is_some();
            if let Some(version) = &version
                && record.browser_path.is_empty()
            {
                // The agent died while this browser started: its ready reply
                // was never sent, and the redelivered request will ask for it.
                record.browser_path = version.browser_path().unwrap_or_default().to_owned();
            }
            let profile = self.profiles.adopt(&record.profile_dir);
            let adopted = {
                let mut state = self.lock();
                let taken = alive && state.pool.adopt(record.id.clone(), record.port()).is_ok();
                let profile = match profile {
                    Ok(profile) => profile,
                    Err(error) => {
                        tracing::warn!(session = %record.id, %error, "profile not adoptable");
                        continue;
                    }
                };
                if taken {
                    state.sessions.insert(
                        record.id.clone(),
                        LiveSession {
                            used: Arc::new(AtomicBool::new(record.used)),
                            record: record.clone(),
                            phase: HostedPhase::Active,
                            token: None,
                            exit: None,
                            profile,
                            deleters: Vec::new(),
                        },
                    );
                } else {
                    // Kept in the table only long enough to be ended below.
                    state.sessions.insert(
                        record.id.clone(),
                        LiveSession {
                            used: Arc::new(AtomicBool::new(record.used)),
                            record: record.clone(),
                            phase: HostedPhase::Starting,
                            token: None,
                            exit: None,
                            profile,
                            deleters: Vec::new(),
                        },
                    );
                }
                taken
            };
            if adopted {
                tracing::info!(session = %record.id, port = record.port, "session re-adopted");
                report.adopted.push(record.id);
            } else {
                self.end(&record.id, TerminationReason::Crashed, true).await;
                report.ended.push(record.id);
            }
        }
        let snapshot = self.snapshot(&self.lock());
        self.persist(snapshot);
        let marker = browser_marker(self.profiles.root());
        let known: Vec<_> = self
            .lock()
            .sessions
            .values()
            .map(|s| s.record.process)
            .collect();
        match self.processes.find_by_marker(&marker).await {
            Ok(found) => {
                for orphan in found.into_iter().filter(|p| !known.contains(p)) {
                    tracing::warn!(pid = orphan.pid, "killing a browser no session owns");
                    if self.processes.kill_tree(orphan).await.is_ok() {
                        self.metrics.orphans_killed.inc();
                        report.orphans_killed.push(orphan.pid);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "could not look for orphaned browsers"),
        }
        self.clean_profiles().await;
        Ok(report)
    }

    async fn clean_profiles_when_due(&self) {
        {
            let mut housekeeping = self.housekeeping.lock().unwrap_or_else(|p| p.into_inner());
            if housekeeping.profiles_cleaned.elapsed() < PROFILE_CLEANUP_INTERVAL {
                return;
            }
            housekeeping.profiles_cleaned = Instant::now();
        }
        self.clean_profiles().await;
    }

    /// Removes leftover temporary profiles and named ones unused for longer
    /// than the fleet's maximum age; profiles in use are never touched (the
    /// store knows which are).
    async fn clean_profiles(&self) {
        match self
            .profiles
            .cleanup(self.settings.profile_max_age, SystemTime::now())
            .await
        {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(count = removed.len(), "old profiles removed")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "profile cleanup failed"),
        }
    }

    async fn release_profile(&self, profile: &Profile) {
        if let Err(error) = self.profiles.release(profile).await {
            tracing::warn!(%error, "profile not released");
        }
    }

    /// Whether the port is held by anyone, for tests and `/v1/state`.
    pub fn port_state(&self, port: Port) -> Option<&'static str> {
        self.lock().pool.state(port).map(|s| match s {
            PortState::Free => "free",
            PortState::Reserved { .. } => "reserved",
            PortState::Active { .. } => "active",
        })
    }
}

/// What [`Agent::recover`] found.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    /// Sessions whose browsers run on.
    pub adopted: Vec<SessionId>,
    /// Sessions whose browsers were gone or unreachable.
    pub ended: Vec<SessionId>,
    /// Browsers without a session, killed.
    pub orphans_killed: Vec<u32>,
}

/// The directory name of a session's temporary profile: the session id when
/// it is a valid profile name, otherwise a digest of it (ids may be longer
/// and use characters a directory name should not).
pub fn profile_dir_name(id: &SessionId) -> String {
    if super::profiles::validate_name(id.as_str()).is_ok() {
        id.as_str().to_owned()
    } else {
        format!("s-{}", &token_digest(id.as_str())[..32])
    }
}

/// Whether nothing listens on the port on 127.0.0.1 (the browser's bind
/// would fail otherwise).
fn port_is_free(port: Port) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port.0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_directories_are_safe_names_for_any_session_id() {
        let plain: SessionId = "s-1".parse().unwrap();
        assert_eq!(profile_dir_name(&plain), "s-1");
        let odd: SessionId = "team:job:42".parse().unwrap();
        let name = profile_dir_name(&odd);
        assert!(
            super::super::profiles::validate_name(&name).is_ok(),
            "{name}"
        );
        assert_ne!(name, profile_dir_name(&"team:job:43".parse().unwrap()));
    }
}
