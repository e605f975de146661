//! The agent's sessions: launching a browser for a request, supervising it,
//! ending it with a reason, draining, and finding browsers again after a
//! restart. Everything that must not leak — slots, ports, processes,
//! profiles — is taken here and given back here; the session table
//! ([`super::sessions`]) keeps track of them under its one lock.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::args::sanitize;
use super::config::AgentSettings;
use super::devtools::DevTools;
use super::intake::{Intake, IntakeOptions, RequestQueue};
use super::launch::{
    SessionLaunch, browser_command, installed_extensions, missing_extensions,
    missing_extensions_message, new_token,
};
use super::metrics::AgentMetrics;
use super::outbox::{ANNOUNCE_TIMEOUT, Outbox};
use super::process::{LaunchSpec, ProcessControl};
use super::profiles::{Profile, ProfileKind, ProfileStore, browser_marker, profiles_root};
use super::replies::{Replier, ReplyTargets};
use super::requesters::Requester;
use super::sessions::{Adoption, Claimed, Sessions, Unclaimed, timestamp};
use super::slots::{Port, SlotError, SlotPool};
use super::supervise::{BrowserHealth, shows_use, verdict};
use super::table::{SessionRecord, TableFileStore, token_digest};
use super::tombstones::CANCELLED_MESSAGE;
use crate::cloud::queues::{QueueUrl, Queues};
use crate::protocol::InstanceId;
use crate::protocol::state::STATE_VERSION;
use crate::protocol::{
    AgentState, AnnouncementKind, CreateRequest, EventsMessage, FailureReason, NodeAnnouncement,
    Reply, SessionId, SessionToken, TerminationReason,
};

pub use super::sessions::GatewayRoute;

/// Who this agent is.
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    /// EC2 instance id (or a name for local runs).
    pub instance_id: String,
    /// Address clients reach the gateway at (`host:port`).
    pub advertise: String,
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

/// The agent.
pub struct Agent<Q> {
    settings: AgentSettings,
    identity: NodeIdentity,
    queues: Arc<Q>,
    sessions: Arc<Sessions>,
    outbox: Arc<Outbox<Q>>,
    processes: Arc<dyn ProcessControl>,
    profiles: ProfileStore,
    devtools: DevTools,
    metrics: Arc<AgentMetrics>,
    executable: PathBuf,
    /// When the agent was made; reported as `readySince`.
    ready_since: SystemTime,
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
        let queues = Arc::new(queues);
        let outbox = Outbox::new(
            queues.clone(),
            Replier::new(
                config.callback_secret.expose(),
                config.replies.format,
                &config.events_queue_url,
            ),
            InstanceId::new(identity.instance_id.clone()),
            identity.advertise.clone(),
            QueueUrl::new(&config.events_queue_url),
        );
        // A launch reports back within its timeout; the slack covers the
        // steps around the wait.
        let reservation_ttl = settings.launch_timeout + Duration::from_secs(10);
        Agent {
            sessions: Arc::new(Sessions::new(
                pool,
                TableFileStore::new(&settings.state_dir),
                reservation_ttl,
                made,
            )),
            outbox: Arc::new(outbox),
            profiles: ProfileStore::new(profiles_root(&settings.state_dir)),
            devtools: DevTools::new(),
            metrics: Arc::new(AgentMetrics::with_aws_calls(aws_calls)),
            ready_since: made,
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

    /// The intake of this agent: it takes requests off the fleet's queue
    /// and hands them to [`Agent::launch`] and [`Agent::delete_session`].
    pub fn intake(self: &Arc<Self>, options: IntakeOptions) -> Intake<Q> {
        let config = &self.settings.config;
        Intake::new(
            self.clone(),
            self.sessions.clone(),
            self.outbox.clone(),
            RequestQueue::new(
                self.queues.clone(),
                QueueUrl::new(&config.request_queue_url),
                config.dead_letter_queue_url.as_deref().map(QueueUrl::new),
                self.settings.visibility_timeout,
            ),
            self.metrics.clone(),
            self.settings.default_targets.clone(),
            options,
        )
    }

    /// The fleet token, which opens the control API.
    pub fn fleet_token(&self) -> &str {
        self.settings.config.fleet_token.expose()
    }

    /// How often this agent announces itself.
    pub fn heartbeat_interval(&self) -> Duration {
        self.settings.heartbeat_interval
    }

    /// The DevTools client the gateway fetches `json/*` documents with.
    pub fn devtools(&self) -> &DevTools {
        &self.devtools
    }

    /// Where clients reach the gateway.
    pub fn advertised_gateway(&self) -> String {
        self.identity.advertise.clone()
    }

    /// Free slots now.
    pub fn free_slots(&self) -> usize {
        self.sessions.free_slots()
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

    /// Waits up to `deadline` for callbacks in flight, then abandons the rest.
    pub async fn finish_replies(&self, deadline: Duration) {
        self.outbox.finish(deadline).await;
    }

    /// The gateway's view of a session.
    pub fn route(&self, id: &SessionId) -> Option<GatewayRoute> {
        self.sessions.route(id)
    }

    /// Whether a session is hosted here.
    pub fn hosts(&self, id: &SessionId) -> bool {
        self.sessions.hosts(id)
    }

    /// Whether the port is held by anyone, for tests and `/v1/state`.
    pub fn port_state(&self, port: Port) -> Option<&'static str> {
        self.sessions.port_state(port)
    }

    /// Reserves a slot and port for a request about to launch.
    pub fn reserve(&self, owner: &SessionId) -> Result<Port, SlotError> {
        self.sessions.reserve(owner)
    }

    /// `/v1/state`.
    pub fn state_view(&self) -> AgentState {
        let table = self.sessions.view();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        AgentState {
            version: STATE_VERSION,
            instance_id: self.identity.instance_id.clone(),
            fleet: self.settings.config.fleet.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            draining: self.is_draining(),
            slots: count(table.pool.slots),
            free_slots: count(table.pool.free_slots()),
            ready_since: timestamp(self.ready_since),
            idle_since: table.idle_since.map(timestamp),
            sessions: table.sessions,
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
        let announcement = self.announcement(kind);
        match tokio::time::timeout(ANNOUNCE_TIMEOUT, self.outbox.to_events(&announcement)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, kind = kind.type_name(), "announcement not sent");
            }
            Err(_) => tracing::warn!(kind = kind.type_name(), "announcement timed out"),
        }
    }

    /// Updates the session and port gauges.
    pub fn refresh_usage_metrics(&self) {
        self.metrics.set_occupancy(&self.sessions.occupancy());
    }

    /// The metrics in the OpenMetrics text format, gauges refreshed.
    pub fn render_metrics(&self) -> String {
        self.refresh_usage_metrics();
        self.metrics.render()
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
            self.sessions.unreserve(&id, port);
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
                self.sessions.unreserve(&id, port);
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
        // Saved before the wait, so an agent that dies now still knows
        // this browser after its restart.
        let cancelled = self.sessions.add_starting(
            record,
            SessionToken::new(token),
            spawned.exit.clone(),
            profile,
        );
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
            Ok(version) => {
                let browser_path = version.browser_path().unwrap_or_default().to_owned();
                self.sessions
                    .activate(&id, port, browser_path)
                    .map(|session| self.outbox.ready(&session))
            }
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
        let (record, profile) = match self.sessions.claim_end(id) {
            Ok(Claimed { record, profile }) => (record, profile),
            Err(Unclaimed::AlreadyEnding) => return Ending::AlreadyEnding,
            Err(Unclaimed::NotHosted) => return Ending::NotHosted,
        };
        match self.processes.kill_tree(record.process).await {
            Ok(outcome) => tracing::debug!(session = %id, ?outcome, "browser killed"),
            Err(error) => tracing::warn!(session = %id, %error, "browser kill failed"),
        }
        self.release_profile(&profile).await;
        let deleters = self.sessions.remove(id, record.port());
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
        self.outbox.terminated(&record, reason, &requesters).await;
        Ending::Ended
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
        let hosted = self.sessions.note_delete(id, &deleter);
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
            from_instance: self.outbox.instance_id(),
            reply_to: targets.reply_to,
            callback_url: targets.callback_url,
        };
        match self.outbox.to_events(&forward).await {
            Ok(()) => DeleteOutcome::Forwarded,
            Err(error) => DeleteOutcome::ForwardFailed(error),
        }
    }

    /// One supervision pass: ends sessions whose browser exited, whose TTL
    /// passed or that nobody used; expires stale reservations; advances a
    /// drain. Returns true when a drain has finished and the agent should
    /// exit.
    pub async fn supervise_once(&self) -> bool {
        let now = SystemTime::now();
        let expired = self.sessions.expire(Instant::now());
        for (port, owner) in expired {
            tracing::warn!(session = %owner, %port, "reservation expired");
        }
        let checks = self
            .sessions
            .checks(|process| self.processes.is_alive(process));
        let check_use = {
            let mut housekeeping = self.housekeeping.lock().unwrap_or_else(|p| p.into_inner());
            let due = housekeeping.use_checked.elapsed() >= USE_CHECK_INTERVAL;
            if due {
                housekeeping.use_checked = Instant::now();
            }
            due
        };
        for check in checks {
            let mut used = check.used;
            if check_use && !used && check.health == BrowserHealth::Running {
                // A client may drive the browser without the gateway knowing
                // (a connection opened before a restart): its pages tell.
                if let Ok(urls) = self.devtools.page_urls(check.port).await
                    && urls
                        .iter()
                        .any(|u| shows_use(u, check.start_url.as_deref()))
                {
                    used = true;
                    self.sessions.mark_used(&check.id);
                }
            }
            if let Some(reason) = verdict(&check.deadlines, check.health, used, now) {
                self.end(&check.id, reason, true).await;
            }
        }
        self.refresh_usage_metrics();
        self.clean_profiles_when_due().await;
        let deadline = *self.draining.borrow();
        if let Some(deadline) = deadline {
            let (remaining, launching) = self.sessions.remaining();
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
        let records = self.sessions.saved()?;
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
            let adopted = match self.sessions.adopt(record.clone(), alive, profile) {
                Adoption::Adopted => true,
                Adoption::ToEnd => false,
                Adoption::ProfileUnusable(error) => {
                    tracing::warn!(session = %record.id, %error, "profile not adoptable");
                    continue;
                }
            };
            if adopted {
                tracing::info!(session = %record.id, port = record.port, "session re-adopted");
                report.adopted.push(record.id);
            } else {
                self.end(&record.id, TerminationReason::Crashed, true).await;
                report.ended.push(record.id);
            }
        }
        self.sessions.save();
        let marker = browser_marker(self.profiles.root());
        let known = self.sessions.processes();
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
