//! The agent as one value: it owns the parts — the session table
//! ([`super::sessions`]), the outbox, the browser machinery, the drain and
//! stop signals — and hands each concept the narrow view it needs: a
//! [`Launcher`] for a launch, [`Ends`] for an end or a delete, a
//! [`Supervisor`] for the supervision loop, a [`Recovery`] after a restart,
//! an [`Intake`] for the request queue. The HTTP listener and the tests call
//! its few methods.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use super::config::AgentSettings;
use bytes::Bytes;

use super::devtools::{DevTools, DevToolsError};
use super::egress::{Egress, EgressPolicy};
use super::end::{DeleteOutcome, Ending, Ends, NotHostedDelete};
use super::intake::{Intake, IntakeOptions, OperatorTrust, RequestQueue};
use super::launch::{LaunchFailure, Launcher};
use super::metrics::AgentMetrics;
use super::outbox::{ANNOUNCE_TIMEOUT, Outbox};
use super::process::ProcessControl;
use super::profiles::{ProfileStore, profiles_root};
use super::recover::{Recovery, RecoveryReport};
use super::replies::{Replier, ReplyTargets};
use super::sessions::{Sessions, timestamp};
use super::slots::{Port, SlotError, SlotPool};
use super::supervise::Supervisor;
use super::table::{TableError, TableFileStore};
use crate::cloud::queues::{QueueUrl, Queues};
use crate::protocol::state::STATE_VERSION;
use crate::protocol::{
    AgentState, AnnouncementKind, CreateRequest, InstanceId, InterruptionKind, InterruptionNotice,
    NodeAnnouncement, Reply, RequestId, SessionId, TerminationReason,
};

pub use super::sessions::GatewayRoute;

/// Sessions on an instance EC2 takes back end this long before it does:
/// their end is then reported while the agent still can.
pub const INTERRUPTION_MARGIN: Duration = Duration::from_secs(15);

/// When a drain ends the sessions still running, and as what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainDeadline {
    /// The deadline.
    pub at: Instant,
    /// The reason the sessions still running then end with.
    pub ends_as: TerminationReason,
}

impl DrainDeadline {
    /// The deadline EC2's interruption at `time` sets: [`INTERRUPTION_MARGIN`]
    /// before it, or now when that has passed. `now` is the present on both
    /// clocks.
    pub fn before_interruption(time: jiff::Timestamp, now: (Instant, jiff::Timestamp)) -> Self {
        let left: Duration = time
            .duration_since(now.1)
            .try_into()
            .unwrap_or(Duration::ZERO);
        DrainDeadline {
            at: now.0 + left.saturating_sub(INTERRUPTION_MARGIN),
            ends_as: TerminationReason::Interrupted,
        }
    }

    /// Whether this deadline takes the place of `current`: the earlier one
    /// holds.
    fn replaces(&self, current: Option<&DrainDeadline>) -> bool {
        current.is_none_or(|current| self.at < current.at)
    }
}

/// Whether `notice` tells more than `known`: a first notice does, and an
/// interruption after a rebalance recommendation.
fn is_news(known: Option<&InterruptionNotice>, notice: &InterruptionNotice) -> bool {
    known.is_none_or(|old| {
        old.kind == InterruptionKind::RebalanceRecommendation
            && notice.kind == InterruptionKind::SpotInterruption
    })
}

/// Who this agent is.
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    /// EC2 instance id (or a name for local runs).
    pub instance_id: String,
    /// Address clients reach the gateway at (`host:port`).
    pub advertise: String,
}

/// The agent.
pub struct Agent<Q> {
    settings: AgentSettings,
    /// SHA-256 of this agent's executable, once computed.
    artifact_sha256: std::sync::OnceLock<String>,
    identity: NodeIdentity,
    queues: Arc<Q>,
    sessions: Arc<Sessions>,
    outbox: Arc<Outbox<Q>>,
    processes: Arc<dyn ProcessControl>,
    profiles: ProfileStore,
    devtools: DevTools,
    metrics: Arc<AgentMetrics>,
    executable: PathBuf,
    egress: Egress,
    /// When the agent was made; reported as `readySince`.
    ready_since: SystemTime,
    draining: watch::Sender<Option<DrainDeadline>>,
    /// The notice EC2 gave about this instance's end, once read.
    interruption: std::sync::Mutex<Option<InterruptionNotice>>,
    /// Set when the agent should stop (SIGTERM, or the end of a drain).
    stopping: watch::Sender<bool>,
    /// Set with `stopping` by a stop asked from outside (SIGTERM, a
    /// hand-over): work a drain's end lets finish (the long poll in flight,
    /// callbacks, the listener's goodbyes) is cut short instead, however
    /// late in the drain the signal comes (issue #28 item 9).
    cut_short: std::sync::atomic::AtomicBool,
    /// Set with `stopping` when the stop is a hand-over to a successor
    /// ([`super::handover`]): the process outlives the stop.
    handing_over: std::sync::atomic::AtomicBool,
    /// Work an agent that hands over finishes after its stop: the gateway's
    /// open DevTools relays, and a long poll the stop interrupted, whose
    /// messages go back to the queue.
    lingering: TaskTracker,
}

impl<Q: Queues + 'static> Agent<Q> {
    /// An agent over its settings and parts. Call [`Agent::recover`] before
    /// serving.
    pub fn new(
        settings: AgentSettings,
        identity: NodeIdentity,
        (egress_port, egress_policy): (u16, EgressPolicy),
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
        let metrics = Arc::new(AgentMetrics::with_aws_calls(aws_calls));
        let outbox = Outbox::new(
            queues.clone(),
            Replier::new(
                config.callback_secret.expose(),
                config.message_key.expose(),
                config.replies.format,
                &config.events_queue_url,
                settings.callback_retries,
                metrics.callbacks_abandoned.clone(),
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
            egress: Egress {
                port: egress_port,
                policy: egress_policy,
                refused: metrics.egress_refused.clone(),
            },
            metrics,
            ready_since: made,
            artifact_sha256: std::sync::OnceLock::new(),
            draining: watch::Sender::new(None),
            interruption: std::sync::Mutex::new(None),
            stopping: watch::Sender::new(false),
            cut_short: std::sync::atomic::AtomicBool::new(false),
            handing_over: std::sync::atomic::AtomicBool::new(false),
            lingering: TaskTracker::new(),
            settings,
            identity,
            queues,
            processes,
            executable,
        }
    }

    /// The egress proxy the agent's browsers go through.
    pub fn egress(&self) -> &Egress {
        &self.egress
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
                OperatorTrust {
                    message_key: config.message_key.clone(),
                    events: config.events_queue_url.clone(),
                },
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

    /// A DevTools document (`/json/list`, `/json/version`) of the browser
    /// behind `route`, as the browser wrote it.
    pub async fn devtools_document(
        &self,
        route: &GatewayRoute,
        path: &str,
    ) -> Result<Bytes, DevToolsError> {
        self.devtools.get(route.port, path).await
    }

    /// The counter of the gateway's CDP refusals, for a gateway connection.
    pub fn cdp_refusals(&self) -> super::metrics::CdpRefusals {
        self.metrics.cdp_refused.clone()
    }

    /// Where clients reach the gateway.
    pub fn advertised_gateway(&self) -> String {
        self.identity.advertise.clone()
    }

    /// Work that outlives a stop that hands over (see the field).
    pub fn lingering(&self) -> &TaskTracker {
        &self.lingering
    }

    /// Asks the agent to stop and hand over to a successor (SIGHUP): as
    /// [`Agent::stop`], but the work in [`Agent::lingering`] goes on.
    pub fn stop_to_hand_over(&self) {
        self.handing_over
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.stop();
    }

    /// Whether the stop under way hands over.
    pub fn is_handing_over(&self) -> bool {
        self.handing_over.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Leaves the session table to an agent taking over in place: see
    /// [`Sessions::release_to_successor`].
    pub fn release_to_successor(&self) {
        self.sessions.release_to_successor();
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.borrow().is_some()
    }

    /// A receiver that turns true when the agent should stop.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Asks the agent to stop (SIGTERM): intake ends at once, a long poll
    /// in flight is cut, sessions stay alive for the next agent to re-adopt.
    /// Also during or after a drain, which then ends here.
    pub fn stop(&self) {
        self.cut_short
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // Sent even when already stopping (a drain's end): the waits of the
        // drained stop are woken to see the cut.
        self.stopping.send_replace(true);
    }

    /// Stops once a drain has finished: the long poll in flight runs to its
    /// end, so that nothing SQS hands it stays invisible in a dead poll.
    pub(super) fn stop_after_drain(&self) {
        self.stopping
            .send_if_modified(|stopping| !std::mem::replace(stopping, true));
    }

    /// Whether a stop asked from outside cuts short what a drain's end would
    /// let finish.
    pub fn is_cut_short(&self) -> bool {
        self.cut_short.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Completes once the agent is asked to stop at once (never, should
    /// the agent go first).
    pub async fn cut_short_asked(&self) {
        let mut stopping = self.stopping();
        while !self.is_cut_short() {
            if stopping.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Runs `work` to its end, or until the agent is asked to stop at once
    /// (then `None`).
    pub async fn unless_cut_short<T>(
        &self,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        tokio::select! {
            done = work => Some(done),
            () = self.cut_short_asked() => None,
        }
    }

    /// Starts a drain: no more intake; sessions run to their end, and those
    /// still running at the drain timeout end as `drained`; then the agent
    /// stops.
    pub fn start_drain(&self) {
        self.drain_until(DrainDeadline {
            at: Instant::now() + self.settings.drain_timeout,
            ends_as: TerminationReason::Drained,
        });
    }

    /// Drains by `deadline` at the latest: one earlier than the drain's (if
    /// one runs) takes its place, with the reason the sessions still running
    /// then end with.
    fn drain_until(&self, deadline: DrainDeadline) {
        self.draining.send_if_modified(|current| {
            if !deadline.replaces(current.as_ref()) {
                return false;
            }
            tracing::info!(
                in_seconds = deadline
                    .at
                    .saturating_duration_since(Instant::now())
                    .as_secs(),
                ends_as = %deadline.ends_as,
                "drain deadline set"
            );
            *current = Some(deadline);
            true
        });
    }

    /// Acts on a notice EC2 gave about this instance: no more intake from
    /// now, and on an interruption the sessions still running shortly before
    /// EC2 takes the instance end as `interrupted` (so their clients hear it
    /// from the agent rather than from a dead connection). Whether the notice
    /// was news, which the operator is then to be told.
    pub fn take_notice(&self, notice: InterruptionNotice) -> bool {
        {
            let mut known = self.interruption.lock().unwrap_or_else(|e| e.into_inner());
            if !is_news(known.as_ref(), &notice) {
                return false;
            }
            tracing::warn!(?notice, "EC2 gave notice about this instance");
            *known = Some(notice.clone());
        }
        match notice.kind {
            InterruptionKind::SpotInterruption => {
                self.drain_until(DrainDeadline::before_interruption(
                    notice.time,
                    (Instant::now(), jiff::Timestamp::now()),
                ))
            }
            InterruptionKind::RebalanceRecommendation => self.start_drain(),
        }
        true
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

    /// Computes the SHA-256 of this agent's executable off the runtime's
    /// threads and reports it from then on.
    pub fn report_artifact_digest(self: &Arc<Self>) {
        let agent = self.clone();
        tokio::task::spawn_blocking(move || match own_digest() {
            Ok(digest) => {
                tracing::info!(sha256 = %digest, "agent artifact digest");
                let _ = agent.artifact_sha256.set(digest);
            }
            Err(error) => tracing::warn!(%error, "cannot read the agent's own executable"),
        });
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
            artifact_sha256: self.artifact_sha256.get().cloned(),
            draining: self.is_draining(),
            interruption: self
                .interruption
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            slots: count(table.pool.slots),
            free_slots: count(table.pool.free_slots()),
            ready_since: timestamp(self.ready_since),
            idle_since: table.idle_since.map(timestamp),
            sessions: table.sessions,
            held_requests: u32::try_from(self.metrics.requests_held.get()).unwrap_or(0),
        }
    }

    /// This agent's `node.registered` or `node.heartbeat`.
    fn announcement(&self, kind: AnnouncementKind) -> NodeAnnouncement {
        let state = self.state_view();
        NodeAnnouncement {
            version: 1,
            kind,
            fleet: state.fleet,
            instance_id: state.instance_id,
            address: self.identity.advertise.clone(),
            agent_version: state.agent_version,
            slots: state.slots,
            // Slots held: a slot reserved for a create being started counts,
            // so that a draining agent never reads as drained while one is.
            sessions: u32::try_from(state.sessions.len())
                .unwrap_or(u32::MAX)
                .max(state.slots.saturating_sub(state.free_slots)),
            draining: state.draining,
            at: jiff::Timestamp::now(),
        }
    }

    /// Sends an announcement to the fleet's events queue; whether it was
    /// sent. A failure is logged; a missed heartbeat is left for the next
    /// one (the operator tolerates one). The send is cut short after
    /// [`ANNOUNCE_TIMEOUT`], since the supervision loop waits for it.
    pub async fn announce(&self, kind: AnnouncementKind) -> bool {
        let announcement = self.announcement(kind);
        match tokio::time::timeout(ANNOUNCE_TIMEOUT, self.outbox.to_events(&announcement)).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::warn!(%error, kind = kind.type_name(), "announcement not sent");
                false
            }
            Err(_) => {
                tracing::warn!(kind = kind.type_name(), "announcement timed out");
                false
            }
        }
    }

    /// The metrics in the OpenMetrics text format, gauges refreshed.
    pub fn render_metrics(&self) -> String {
        self.metrics.set_occupancy(&self.sessions.occupancy());
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
        let launcher = Launcher {
            settings: &self.settings,
            executable: &self.executable,
            sessions: &self.sessions,
            processes: &*self.processes,
            profiles: &self.profiles,
            devtools: &self.devtools,
            metrics: &self.metrics,
            outbox: &self.outbox,
            egress: &self.egress,
            ends: self.ends(),
        };
        launcher.launch(id, port, request, received).await
    }

    /// Ends a session (see [`Ends::end`]).
    pub async fn end(&self, id: &SessionId, reason: TerminationReason, announce: bool) -> Ending {
        self.ends().end(id, reason, announce).await
    }

    /// A delete of a session, hosted here or not (see [`Ends::delete`]).
    pub async fn delete_session(
        &self,
        id: &SessionId,
        request_id: Option<RequestId>,
        targets: ReplyTargets,
        not_hosted: NotHostedDelete,
    ) -> DeleteOutcome {
        self.ends()
            .delete(id, request_id, targets, not_hosted)
            .await
    }

    /// After a restart: re-adopts the browsers of the saved table that still
    /// run and answer DevTools, ends the others (reporting them), and kills
    /// browsers found running from our profiles that no session owns.
    pub async fn recover(&self) -> Result<RecoveryReport, TableError> {
        let recovery = Recovery {
            sessions: &self.sessions,
            processes: &*self.processes,
            devtools: &self.devtools,
            profiles: &self.profiles,
            profile_max_age: self.settings.profile_max_age,
            metrics: &self.metrics,
            egress: &self.egress,
            fleet_key: self.settings.config.message_key.expose().as_bytes(),
            ends: self.ends(),
        };
        recovery.recover().await
    }

    /// The supervisor of this agent's sessions, for the supervision loop.
    pub fn supervisor(&self) -> Supervisor<'_, Q> {
        Supervisor {
            sessions: &self.sessions,
            processes: &*self.processes,
            devtools: &self.devtools,
            profiles: &self.profiles,
            profile_max_age: self.settings.profile_max_age,
            metrics: &self.metrics,
            ends: self.ends(),
            draining: self.draining.subscribe(),
            use_checked: Instant::now(),
            profiles_cleaned: Instant::now(),
        }
    }

    fn ends(&self) -> Ends<'_, Q> {
        Ends {
            sessions: &self.sessions,
            processes: &*self.processes,
            profiles: &self.profiles,
            metrics: &self.metrics,
            outbox: &self.outbox,
        }
    }
}

/// SHA-256 of the running executable, lower-case hex.
fn own_digest() -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(std::env::current_exe()?)?;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        context.update(&buffer[..read]);
    }
    Ok(hex::encode(context.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(kind: InterruptionKind, time: &str) -> InterruptionNotice {
        InterruptionNotice {
            kind,
            action: None,
            time: time.parse().unwrap(),
        }
    }

    #[test]
    fn an_interruption_ends_sessions_a_margin_before_it_or_now() {
        let now = (Instant::now(), "2026-12-07T10:00:00Z".parse().unwrap());
        let two_minutes =
            DrainDeadline::before_interruption("2026-12-07T10:02:00Z".parse().unwrap(), now);
        assert_eq!(two_minutes.at, now.0 + Duration::from_secs(105));
        assert_eq!(two_minutes.ends_as, TerminationReason::Interrupted);
        for passed in ["2026-12-07T10:00:10Z", "2026-12-07T09:59:00Z"] {
            let deadline = DrainDeadline::before_interruption(passed.parse().unwrap(), now);
            assert_eq!(deadline.at, now.0, "{passed}");
        }
    }

    #[test]
    fn the_earlier_deadline_holds() {
        let now = Instant::now();
        let drain = DrainDeadline {
            at: now + Duration::from_secs(3600),
            ends_as: TerminationReason::Drained,
        };
        let interruption = DrainDeadline {
            at: now + Duration::from_secs(105),
            ends_as: TerminationReason::Interrupted,
        };
        assert!(drain.replaces(None));
        assert!(interruption.replaces(Some(&drain)));
        assert!(!drain.replaces(Some(&interruption)));
        assert!(!interruption.replaces(Some(&interruption)));
    }

    #[test]
    fn an_interruption_after_a_recommendation_is_news_and_nothing_else_is() {
        let rebalance = notice(
            InterruptionKind::RebalanceRecommendation,
            "2026-12-07T10:00:00Z",
        );
        let interruption = notice(InterruptionKind::SpotInterruption, "2026-12-07T10:02:00Z");
        assert!(is_news(None, &rebalance));
        assert!(is_news(None, &interruption));
        assert!(is_news(Some(&rebalance), &interruption));
        assert!(!is_news(Some(&interruption), &rebalance));
        assert!(!is_news(Some(&interruption), &interruption));
        assert!(!is_news(Some(&rebalance), &rebalance));
    }
}
