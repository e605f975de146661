//! The node agent: takes session requests off the fleet's queue into its
//! free slots (a full agent still serves deletes), launches and supervises one browser per session, and serves
//! the control API and the authenticated DevTools gateway on one port.
//!
//! [`start`] builds a [`runtime::Agent`], which owns the parts and lends
//! each concept the narrow view it needs: the session table
//! ([`sessions`]), launching ([`launch`], its decision in
//! [`launch::plan`]), ending and deleting ([`end`]), supervision
//! ([`supervise`]), re-adoption after a restart ([`recover`]), the
//! intake from the queue ([`intake`]) and the replies and announcements
//! it sends ([`outbox`]); [`http`] serves the listener, whose DevTools
//! gateway relays each client command ([`cdp_relay`]) through the session
//! policy ([`cdp_filter`]), which keeps a client to its own files
//! ([`session_files`]) and its proxy.

pub mod args;
pub mod browser_user;
pub mod cdp_filter;
pub mod cdp_relay;
pub mod config;
pub mod devtools;
pub mod egress;
pub mod end;
pub mod handover;
pub mod http;
pub mod imds;
pub mod intake;
pub mod interruptions;
pub mod launch;
pub mod metrics;
pub mod outbox;
pub mod process;
pub mod profiles;
pub mod recover;
pub mod replies;
pub mod requesters;
pub mod requeue;
pub mod runtime;
pub mod session_files;
pub mod sessions;
pub mod slots;
pub mod supervise;
pub mod table;
pub mod tombstones;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use thiserror::Error;

use crate::cloud::queues::Queues;
use crate::protocol::AnnouncementKind;
use config::AgentSettings;
use runtime::{Agent, NodeIdentity};

/// How often sessions are checked.
pub const SUPERVISION_INTERVAL: Duration = Duration::from_millis(500);

/// Why the agent could not start or had to stop.
#[derive(Debug, Error)]
pub enum AgentError {
    /// No browser to start.
    #[error("no browser found: set browser.executable or install Chrome or Chromium")]
    NoBrowser,
    /// The listener could not bind.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The saved session table is unreadable.
    #[error(transparent)]
    Table(#[from] table::TableError),
    /// The browsers' user cannot reach its profiles.
    #[error(transparent)]
    BrowserUser(#[from] browser_user::BrowserUserError),
}

/// Options of a run that are not part of the fleet's configuration.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The intake's long-poll wait and pacing (production values by default;
    /// tests shorten them).
    pub intake: intake::IntakeOptions,
    /// The process's AWS call counts, exported on `/metrics` when given.
    pub aws_calls: Option<std::sync::Arc<crate::cloud::CallRecorder>>,
    /// The metadata service to read EC2's interruption and rebalance notices
    /// from ([`interruptions`]); none off EC2.
    pub notices: Option<aws_config::imds::Client>,
}

/// A running agent.
pub struct RunningAgent<Q> {
    /// The agent.
    pub agent: Arc<Agent<Q>>,
    /// The listener's address.
    pub address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl<Q: Queues + 'static> RunningAgent<Q> {
    /// Waits until the agent has stopped (SIGTERM via [`Agent::stop`], or the
    /// end of a drain).
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// Stops it and waits: intake ends, sessions stay alive for the next
    /// agent to re-adopt.
    pub async fn stop(self) {
        self.agent.stop();
        self.wait().await;
    }
}

/// Starts an agent: re-adopts browsers of the saved table, then serves the
/// listener, the intake and supervision until it is stopped or drained.
pub async fn start<Q: Queues + 'static>(
    settings: AgentSettings,
    identity: Option<NodeIdentity>,
    queues: Q,
    options: RunOptions,
) -> Result<RunningAgent<Q>, AgentError> {
    let executable = match &settings.config.browser.executable {
        Some(path) => PathBuf::from(path),
        None if settings.config.browser.launcher_command.is_some() => PathBuf::new(),
        None => process::discover_browser().ok_or(AgentError::NoBrowser)?,
    };
    if let Some(user) = &settings.browser_user {
        // Before anything is written: the browsers' user must read nothing
        // of the agent's but the way to its profiles.
        browser_user::private_umask();
        let root = profiles::profiles_root(&settings.state_dir);
        let mut path = vec![settings.state_dir.clone(), root.clone()];
        path.extend(profiles::profile_parents(&root));
        user.open_path_to_profiles(&path)?;
    }
    let address: SocketAddr = SocketAddr::new(
        settings
            .config
            .listen_address
            .parse()
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
        settings.config.gateway_port,
    );
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| AgentError::Listen { address, source })?;
    let address = listener
        .local_addr()
        .map_err(|source| AgentError::Listen { address, source })?;
    let mut identity = identity.unwrap_or_else(|| NodeIdentity {
        instance_id: "local".into(),
        advertise: address.to_string(),
    });
    // An advertised port 0 (a listener on a port picked at start) is the
    // port actually bound.
    if let Some(host) = identity.advertise.strip_suffix(":0") {
        identity.advertise = format!("{host}:{}", address.port());
    }
    let egress_listener =
        egress::bind(u16::try_from(settings.config.egress.proxy_port).unwrap_or(0))
            .await
            .map_err(|source| AgentError::Listen {
                address: SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
                source,
            })?;
    let egress_port = egress_listener
        .local_addr()
        .map_err(|source| AgentError::Listen { address, source })?
        .port();
    let egress_policy = egress::EgressPolicy::new(
        settings.egress_blocked.clone(),
        settings.egress_allowed.clone(),
        vec![
            address.port()..=address.port(),
            settings.first_port.0..=settings.last_port.0,
            egress_port..=egress_port,
        ],
    );
    let names_artifact = settings.config.artifact_sha256.is_some();
    let agent = Arc::new(Agent::new(
        settings,
        identity,
        (egress_port, egress_policy),
        queues,
        process::native(),
        executable,
        options.aws_calls.clone(),
    ));
    if names_artifact {
        agent.report_artifact_digest();
    }
    let report = agent.recover().await?;
    tracing::info!(
        adopted = report.adopted.len(),
        ended = report.ended.len(),
        orphans_killed = report.orphans_killed.len(),
        "agent started"
    );
    let task = tokio::spawn(serve(agent.clone(), listener, egress_listener, options));
    Ok(RunningAgent {
        agent,
        address,
        task,
    })
}

/// Sends `node.registered` until it is on the events queue or the agent
/// stops, backing off up to [`REGISTER_RETRY_CAP`] between tries.
async fn register<Q: Queues + 'static>(
    agent: &Agent<Q>,
    stopping: &mut tokio::sync::watch::Receiver<bool>,
) {
    let mut delay = Duration::from_millis(500);
    while !agent.announce(AnnouncementKind::Registered).await {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopping.changed() => {}
        }
        if *stopping.borrow() {
            return;
        }
        delay = (delay * 2).min(REGISTER_RETRY_CAP);
    }
}

/// Longest wait between two tries of `node.registered`.
const REGISTER_RETRY_CAP: Duration = Duration::from_secs(10);

/// Sends `node.heartbeat` every heartbeat interval until the agent stops,
/// in a task of its own: a slow supervision pass (DevTools calls to
/// browsers that do not answer, each up to its timeout) must not hold the
/// heartbeats back, or the operator takes a busy agent for a dead one
/// (issue #28 item 8).
async fn heartbeats<Q: Queues + 'static>(agent: Arc<Agent<Q>>) {
    let mut stopping = agent.stopping();
    let period = agent.heartbeat_interval();
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *stopping.borrow_and_update() {
            return;
        }
        tokio::select! {
            _ = heartbeat.tick() => {
                agent.announce(AnnouncementKind::Heartbeat).await;
            }
            changed = stopping.changed() => if changed.is_err() { return },
        }
    }
}

async fn serve<Q: Queues + 'static>(
    agent: Arc<Agent<Q>>,
    listener: tokio::net::TcpListener,
    egress_listener: tokio::net::TcpListener,
    options: RunOptions,
) {
    let mut stopping = agent.stopping();
    let egress = agent.egress().clone();
    let egress_stop = agent.stopping();
    let egress_proxy =
        tokio::spawn(async move { egress.serve(egress_listener, egress_stop).await });
    let router = http::router(agent.clone());
    let mut server_stop = agent.stopping();
    let server = tokio::spawn(async move {
        // Small DevTools frames must not wait for Nagle's algorithm.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = server_stop.wait_for(|s| *s).await;
            })
            .await;
    });
    // The listener serves now: tell the operator where, before taking any
    // request. An agent that hosts sessions the operator cannot see would
    // look like an empty booting instance, which scaling may cancel.
    register(&agent, &mut stopping).await;
    // A notice already posted (an agent restarted during an interruption)
    // is taken before the first request.
    let notices = match options.notices {
        Some(client) => {
            if let Err(error) = interruptions::look_once(&agent, &client).await {
                tracing::warn!(%error, "cannot read EC2's notices before taking requests");
            }
            Some(tokio::spawn(interruptions::watch(agent.clone(), client)))
        }
        None => None,
    };
    let intake = tokio::spawn(agent.intake(options.intake).run());
    let heartbeats = tokio::spawn(heartbeats(agent.clone()));
    let mut supervisor = agent.supervisor();
    let mut tick = tokio::time::interval(SUPERVISION_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if supervisor.pass().await == supervise::Pass::Drained {
                    tracing::info!("drain finished");
                    // Said before the listener closes: the operator may not
                    // have asked since the last session ended.
                    agent.announce(AnnouncementKind::Heartbeat).await;
                    agent.stop_after_drain();
                }
            }
            _ = stopping.changed() => {}
        }
        if *stopping.borrow() {
            break;
        }
    }
    let _ = intake.await;
    let _ = heartbeats.await;
    if let Some(notices) = notices {
        // It ends at the stop too, after a metadata call in flight.
        notices.abort();
    }
    // Websocket clients keep their connections to the browsers open; the
    // listener's graceful shutdown would wait for them, so it gets a moment.
    // A SIGTERM cuts both waits short.
    let _ = agent
        .unless_cut_short(tokio::time::timeout(Duration::from_secs(2), server))
        .await;
    let _ = egress_proxy.await;
    let _ = agent
        .unless_cut_short(agent.finish_replies(Duration::from_secs(5)))
        .await;
}
