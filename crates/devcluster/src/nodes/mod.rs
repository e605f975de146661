//! The node simulator: makes the instances moto reports behave like nodes.
//!
//! moto's instances never boot anything. For every `Running` instance
//! tagged as ours ([`Compute::list_managed`]) the simulator starts a real
//! agent process (`browserfleet agent`, the same binary) once the instance's
//! launch time plus the boot delay has passed and its fleet's configuration
//! parameter exists. The agent reads that parameter from SSM as on EC2, and
//! gets from the command line what many agents on one host must not share:
//! the instance id, a loopback address to advertise, its own listener port,
//! browser ports and state directory (`<work dir>/<instance id>`). Each node
//! also serves its own instance metadata ([`metadata`]), where EC2's spot
//! interruption and rebalance notices are posted
//! ([`NodeSimulator::interrupt`], [`NodeSimulator::recommend_rebalance`]).
//!
//! When the instance stops, terminates or leaves the listing, the agent is
//! stopped (SIGTERM, then SIGKILL after a grace period) and every browser it
//! started is killed: an agent on SIGTERM leaves its browsers running for
//! the next agent to re-adopt, which on EC2 ends with the instance anyway.
//!
//! An agent that exits by itself (a drain that finished, a crash) is not
//! started again while its instance runs, like a node whose service stays
//! down; [`NodeSimulator::crash`] kills an agent as a crash would, and with
//! [`NodeOptions::restart_crashed`] it comes back after the boot delay, like
//! a service manager restarting it. Unix only: it stops agents by signal.
//!
//! With [`BootMode::UserData`] a node boots as an instance does: it runs its
//! instance's user data, the operator's real boot script, and starts the
//! agent its systemd unit names, as the unit's user ([`user_data`] says what
//! is real and what is shimmed). [`BootMode::Direct`], the default, starts
//! the agent as root without a script: most tests need nodes, not boots,
//! and a boot copies the agent and creates users.

mod metadata;
mod notify;
mod run_command;
pub mod user_data;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures::{FutureExt, StreamExt};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use browserfleet::agent::process::{
    KillOutcome, LaunchSpec, ProcessControl, ProcessError, ProcessIdentity, Signal, Spawned,
    UnixProcesses, watch_from_outside,
};
use browserfleet::agent::profiles::{browser_marker, profiles_root};
use browserfleet::cloud::fleet_tags::FLEET_TAG;
use browserfleet::cloud::{
    Aws, Compute, Ec2Compute, Ec2State, FleetInstance, InstanceId, ManagedFilter, Parameters, Ssm,
    SsmError,
};
use browserfleet::operator::agent_config::parameter_name;
use browserfleet::operator::bootstrap::linux::STATE_DIR as LINUX_STATE_DIR;
use notify::NotifySocket;
use user_data::{AgentUnit, BootError};

/// How often instances are listed unless told otherwise.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Shortest poll interval used, whatever the options say.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How long a stopping agent has between SIGTERM and SIGKILL.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(5);
/// Longest a boot script may run.
const BOOT_SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// Agents stopped at once.
const STOP_CONCURRENCY: usize = 8;
/// How long the browsers of a stopped agent may take to disappear.
const BROWSER_KILL_DEADLINE: Duration = Duration::from_secs(10);
/// How often a unit's main process the simulator did not start (named by
/// `MAINPID=`) is looked at, to see it end.
const MAIN_PROCESS_WATCH: Duration = Duration::from_millis(200);

/// The browser ports of the simulated nodes: one block of `per_node` ports
/// per instance, disjoint, out of `first..=last`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPool {
    /// First port of the pool.
    pub first: u16,
    /// Last port of the pool (inclusive).
    pub last: u16,
    /// Ports per node: at least the fleet's `sessionsPerInstance`, or its
    /// agent refuses the range.
    pub per_node: u16,
}

impl Default for PortPool {
    /// Below Linux's ephemeral ports (32768–60999 by default): every
    /// connection here is on loopback, and one that took a browser port as
    /// its local port would keep that browser from starting.
    fn default() -> Self {
        PortPool {
            first: 24_000,
            last: 28_999,
            per_node: 16,
        }
    }
}

impl PortPool {
    /// The first and last port of block `index`, if the pool holds it.
    pub fn block(&self, index: usize) -> Option<(u16, u16)> {
        let per_node = u32::from(self.per_node.max(1));
        let start = u32::from(self.first) + u32::try_from(index).ok()?.checked_mul(per_node)?;
        let end = u16::try_from(start + per_node - 1).ok()?;
        let start = u16::try_from(start).ok()?;
        (end <= self.last).then_some((start, end))
    }

    /// The lowest block not in `taken`, if any is left.
    pub fn free_block(&self, taken: &BTreeSet<usize>) -> Option<usize> {
        (0..)
            .take_while(|index| self.block(*index).is_some())
            .find(|index| !taken.contains(index))
    }
}

/// How a node starts its agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BootMode {
    /// The simulator starts the agent itself, as root, in `<work dir>/<instance id>`.
    #[default]
    Direct,
    /// The node runs its instance's user data in `<work dir>/<instance id>`
    /// and starts the agent its unit names ([`user_data`]). Needs root, and
    /// a work directory other users may pass through.
    UserData,
}

/// How the simulator behaves.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// How nodes start their agents.
    pub boot: BootMode,
    /// Time from an instance's launch (or an agent's crash, with
    /// `restart_crashed`) to its agent's start.
    pub boot_delay: Duration,
    /// How often instances are listed (at least [`MIN_POLL_INTERVAL`]).
    pub poll_interval: Duration,
    /// The `browserfleet` binary the agents run.
    pub agent_binary: PathBuf,
    /// Where agents keep their state (`<work dir>/<instance id>`) and logs
    /// (`<work dir>/<instance id>.log`).
    pub work_dir: PathBuf,
    /// Fleets (`namespace/name`) whose instances never register: their
    /// agents are never started.
    pub never_register: BTreeSet<String>,
    /// When set, only instances of these fleets (`namespace/name`) are
    /// listed and played, so that several simulators share one moto
    /// (parallel tests); every fleet's when `None`.
    pub only_fleets: Option<BTreeSet<String>>,
    /// Start an agent killed by [`NodeSimulator::crash`] again after the
    /// boot delay. An agent that exits by itself is never restarted.
    pub restart_crashed: bool,
    /// Browser ports, one disjoint block per instance.
    pub browser_ports: PortPool,
    /// Time between SIGTERM and SIGKILL when an agent is stopped.
    pub stop_grace: Duration,
}

impl NodeOptions {
    /// Defaults: no boot delay, a 500 ms poll, every fleet registers,
    /// crashed agents stay down.
    pub fn new(agent_binary: impl Into<PathBuf>, work_dir: impl Into<PathBuf>) -> Self {
        NodeOptions {
            boot: BootMode::Direct,
            boot_delay: Duration::ZERO,
            poll_interval: DEFAULT_POLL_INTERVAL,
            agent_binary: agent_binary.into(),
            work_dir: work_dir.into(),
            never_register: BTreeSet::new(),
            only_fleets: None,
            restart_crashed: false,
            browser_ports: PortPool::default(),
            stop_grace: DEFAULT_STOP_GRACE,
        }
    }
}

/// An agent process the simulator runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentProcess {
    /// The instance it stands in for.
    pub instance: InstanceId,
    /// Its process id.
    pub pid: u32,
    /// When it was started.
    pub started_at: SystemTime,
}

/// What the simulator could not do.
#[derive(Debug, Error)]
pub enum NodeError {
    /// The work directory cannot be created.
    #[error("cannot create the work directory {path}: {source}")]
    WorkDir {
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Other users cannot pass through the work directory to their node's
    /// state ([`BootMode::UserData`]).
    #[error(
        "{0} must be searchable by other users (mode o+x): the nodes' agent and browser users pass through it"
    )]
    Closed(PathBuf),
    /// No agent runs for this instance (not booted, never registers, or
    /// already exited).
    #[error("no agent runs for instance {0}")]
    NoAgent(InstanceId),
    /// A signal could not be sent.
    #[error(transparent)]
    Process(#[from] ProcessError),
}

/// Where a simulated node is in its life.
#[derive(Debug)]
enum Phase {
    /// Booting: the agent starts once `due` has passed and the fleet's
    /// parameter exists.
    Booting { due: SystemTime },
    /// The boot script runs ([`BootMode::UserData`]).
    Installing {
        script: JoinHandle<Result<AgentUnit, BootError>>,
    },
    /// The agent runs. `crashed` is set by [`NodeSimulator::crash`] just
    /// before it kills the agent.
    Running {
        agent: Spawned,
        started_at: SystemTime,
        crashed: bool,
    },
    /// The agent exited by itself; it stays down while the instance runs.
    Down,
    /// The agent is being stopped to be started again (a unit restart by
    /// Run Command); the poll loop leaves the node alone meanwhile.
    Restarting,
}

/// One running instance the simulator plays a node for.
#[derive(Debug)]
struct Node {
    /// `(namespace, name)` of its fleet.
    fleet: (String, String),
    /// Index of its browser port block.
    block: usize,
    phase: Phase,
    /// The agent's unit, once its boot script ran: a restart starts it
    /// again without booting again.
    unit: Option<AgentUnit>,
    /// The agent's listener and egress proxy ports ([`BootMode::UserData`]):
    /// picked at its first start and kept, as an instance's fixed ports are,
    /// so that a restarted agent is found where its sessions' clients and
    /// browsers look for it.
    listen_ports: Option<(u16, u16)>,
    /// Its instance metadata service ([`metadata`]).
    metadata: metadata::Metadata,
    /// Its agent unit's `NOTIFY_SOCKET`, once the unit asks for one.
    notify: Option<NotifySocket>,
    /// Former main processes of the agent's unit that still run (an agent
    /// that handed over and still relays open connections): not the unit's
    /// concern any more, killed with the node.
    former: Vec<Spawned>,
}

/// What one listing means for the nodes, decided by [`plan`].
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Running instances not yet tracked: id, fleet, when the agent is due.
    boot: Vec<(InstanceId, (String, String), SystemTime)>,
    /// Tracked instances that no longer run.
    stop: Vec<(InstanceId, Removal)>,
}

/// Whether a stopped node's disk goes with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Removal {
    /// Stopped or stopping: its disk (the state directory) stays.
    KeepState,
    /// Terminated or gone from the listing: its disk goes.
    RemoveState,
}

/// The namespace and name in an instance's [`FLEET_TAG`].
fn fleet_of(instance: &FleetInstance) -> Option<(String, String)> {
    let (namespace, name) = instance.tags.get(FLEET_TAG)?.split_once('/')?;
    let valid = !namespace.is_empty() && !name.is_empty() && !name.contains('/');
    valid.then(|| (namespace.to_owned(), name.to_owned()))
}

/// Compares a listing with the tracked nodes: running instances of fleets
/// that register and are not tracked boot; tracked ones that no longer run
/// stop. An instance without a readable fleet tag is left alone.
fn plan(
    listing: &[FleetInstance],
    tracked: &BTreeSet<InstanceId>,
    options: &NodeOptions,
    now: SystemTime,
) -> Plan {
    let mut plan = Plan::default();
    let mut running = BTreeSet::new();
    for instance in listing {
        if instance.state != Ec2State::Running {
            continue;
        }
        let Some(fleet) = fleet_of(instance) else {
            continue;
        };
        let key = format!("{}/{}", fleet.0, fleet.1);
        let played = options
            .only_fleets
            .as_ref()
            .is_none_or(|only| only.contains(&key));
        if !played || options.never_register.contains(&key) {
            continue;
        }
        running.insert(instance.id.clone());
        if !tracked.contains(&instance.id) {
            let launched = instance.launch_time.unwrap_or(now);
            plan.boot
                .push((instance.id.clone(), fleet, launched + options.boot_delay));
        }
    }
    for id in tracked.difference(&running) {
        let state = listing.iter().find(|i| &i.id == id).map(|i| &i.state);
        let removal = match state {
            Some(Ec2State::Stopping | Ec2State::Stopped) => Removal::KeepState,
            _ => Removal::RemoveState,
        };
        plan.stop.push((id.clone(), removal));
    }
    plan
}

/// Where a node goes when its agent exited: back to booting only after a
/// [`NodeSimulator::crash`] with [`NodeOptions::restart_crashed`], as a
/// service manager would; down otherwise.
fn after_exit(crashed: bool, options: &NodeOptions, now: SystemTime) -> Phase {
    if crashed && options.restart_crashed {
        Phase::Booting {
            due: now + options.boot_delay,
        }
    } else {
        Phase::Down
    }
}

/// What the simulator shares with its polling task.
struct Shared {
    options: NodeOptions,
    compute: Ec2Compute,
    /// Reads instances' user data.
    ec2: aws_sdk_ec2::Client,
    ssm: Ssm,
    processes: UnixProcesses,
    /// AWS variables the agents get: the simulator's own endpoint and region
    /// (credentials come through the inherited environment, as they came to
    /// the simulator).
    aws_env: Vec<(String, String)>,
    nodes: Mutex<BTreeMap<InstanceId, Node>>,
}

/// Plays EC2 and the node's service manager for the instances moto reports.
pub struct NodeSimulator {
    shared: Arc<Shared>,
    /// The Run Command stand-ins serving, and reclaims of interrupted spot
    /// instances to come.
    stand_ins: Mutex<Vec<JoinHandle<()>>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl NodeSimulator {
    /// Starts polling the instances of `aws`'s EC2 (must run inside a tokio
    /// runtime). Agents get the same endpoint and region.
    pub fn start(aws: &Aws, options: NodeOptions) -> Result<Self, NodeError> {
        std::fs::create_dir_all(&options.work_dir).map_err(|source| NodeError::WorkDir {
            path: options.work_dir.clone(),
            source,
        })?;
        if options.boot == BootMode::UserData {
            open_to_node_users(&options.work_dir)?;
        }
        let mut aws_env = Vec::new();
        if let Some(region) = aws.region() {
            aws_env.push(("AWS_REGION".to_owned(), region.to_owned()));
        }
        if let Some(endpoint) = aws.sdk_config().endpoint_url() {
            aws_env.push(("AWS_ENDPOINT_URL".to_owned(), endpoint.to_owned()));
        }
        let shared = Arc::new(Shared {
            options,
            compute: Ec2Compute::new(aws),
            ec2: aws_sdk_ec2::Client::new(aws.sdk_config()),
            ssm: Ssm::new(aws),
            processes: UnixProcesses::new(),
            aws_env,
            nodes: Mutex::new(BTreeMap::new()),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(poll_loop(shared.clone(), stopped));
        Ok(NodeSimulator {
            shared,
            stand_ins: Mutex::default(),
            stop,
            task: Some(task),
        })
    }

    /// Serves SSM Run Command for the nodes on a loopback port, in front of
    /// moto at `moto` ([`run_command`]'s stand-in); returns its endpoint URL,
    /// for the AWS clients that should see commands run.
    pub async fn serve_run_command(&self, moto: &str) -> io::Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let stand_in = run_command::RunCommand::new(self.shared.clone(), moto.to_owned());
        let task = tokio::spawn(stand_in.serve(listener));
        self.stand_ins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
        Ok(url)
    }

    /// The agents running now.
    pub fn agents(&self) -> Vec<AgentProcess> {
        let nodes = self.shared.lock();
        let mut agents = Vec::new();
        for (id, node) in nodes.iter() {
            if let Phase::Running {
                agent, started_at, ..
            } = &node.phase
                && agent.exit.exited().is_none()
            {
                agents.push(AgentProcess {
                    instance: id.clone(),
                    pid: agent.identity.pid,
                    started_at: *started_at,
                });
            }
        }
        agents
    }

    /// Kills the agent of `instance` with SIGKILL, as a crash would: its
    /// browsers keep running. Returns once it is gone. With
    /// [`NodeOptions::restart_crashed`] a new agent starts after the boot
    /// delay and re-adopts them.
    pub async fn crash(&self, instance: &InstanceId) -> Result<(), NodeError> {
        let mut exit = {
            let mut nodes = self.shared.lock();
            let Some(Node {
                phase: Phase::Running { agent, crashed, .. },
                ..
            }) = nodes.get_mut(instance)
            else {
                return Err(NodeError::NoAgent(instance.clone()));
            };
            if agent.exit.exited().is_some() {
                return Err(NodeError::NoAgent(instance.clone()));
            }
            *crashed = true;
            self.shared
                .processes
                .signal_alone(agent.identity, Signal::Kill)?;
            agent.exit.clone()
        };
        tracing::info!(instance = %instance, "agent crashed on purpose");
        // SIGKILL cannot be caught; the bound only guards against a runtime
        // that no longer reaps.
        let _ = tokio::time::timeout(self.shared.options.stop_grace, exit.wait()).await;
        Ok(())
    }

    /// Gives the node of `instance` EC2's spot interruption notice, as AWS
    /// does about two minutes ahead: its metadata service shows the
    /// instance terminated `warning` from now, and then the simulator
    /// terminates the instance in EC2. Must run inside a tokio runtime.
    pub fn interrupt(&self, instance: &InstanceId, warning: Duration) -> Result<(), NodeError> {
        let at = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::try_from(warning).unwrap_or_default())
            .unwrap_or_else(|_| jiff::Timestamp::now());
        self.post(instance, |metadata| metadata.post_interruption(at))?;
        tracing::info!(instance = %instance, ?warning, "spot interruption notice posted");
        let shared = self.shared.clone();
        let id = instance.clone();
        let reclaim = tokio::spawn(async move {
            tokio::time::sleep(warning).await;
            match shared.compute.terminate(std::slice::from_ref(&id)).await {
                Ok(()) => tracing::info!(instance = %id, "spot instance taken back"),
                Err(error) => {
                    tracing::warn!(instance = %id, %error, "cannot take the spot instance back")
                }
            }
        });
        self.stand_ins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(reclaim);
        Ok(())
    }

    /// Gives the node of `instance` EC2's rebalance recommendation; nothing
    /// happens to the instance by itself.
    pub fn recommend_rebalance(&self, instance: &InstanceId) -> Result<(), NodeError> {
        self.post(instance, |metadata| {
            metadata.post_rebalance(jiff::Timestamp::now())
        })
    }

    /// Posts a notice on the metadata service of `instance`'s node.
    fn post(
        &self,
        instance: &InstanceId,
        notice: impl FnOnce(&metadata::Metadata),
    ) -> Result<(), NodeError> {
        let nodes = self.shared.lock();
        let node = nodes
            .get(instance)
            .ok_or_else(|| NodeError::NoAgent(instance.clone()))?;
        notice(&node.metadata);
        Ok(())
    }

    /// Stops polling, then every agent and every browser they started.
    /// Nothing outside the work directory is removed; state directories
    /// stay.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        for task in std::mem::take(&mut *self.stand_ins.lock().unwrap_or_else(|p| p.into_inner())) {
            task.abort();
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let nodes = std::mem::take(&mut *self.shared.lock());
        let shared = &self.shared;
        futures::stream::iter(nodes)
            .for_each_concurrent(STOP_CONCURRENCY, |(id, node)| async move {
                let span = tracing::info_span!("node", instance = %id);
                shared
                    .stop_node(&id, node, Removal::KeepState)
                    .instrument(span)
                    .await;
            })
            .await;
        tracing::info!("node simulator stopped");
    }
}

impl Drop for NodeSimulator {
    /// Without [`NodeSimulator::shutdown`] (a panicking test), agents and
    /// browsers are still killed, at once and without grace.
    fn drop(&mut self) {
        self.stop.send_replace(true);
        for task in self
            .stand_ins
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let nodes = std::mem::take(&mut *self.shared.lock());
        for (id, node) in nodes {
            if let Phase::Running { agent, .. } = &node.phase {
                let _ = self
                    .shared
                    .processes
                    .signal_alone(agent.identity, Signal::Kill);
            }
            for former in &node.former {
                let _ = self
                    .shared
                    .processes
                    .signal_alone(former.identity, Signal::Kill);
            }
            // UnixProcesses answers at once; nothing here waits on the runtime.
            let marker = browser_marker(&profiles_root(&self.shared.state_dir(&id)));
            let found = futures::executor::block_on(self.shared.processes.find_by_marker(&marker));
            for browser in found.unwrap_or_default() {
                let _ = futures::executor::block_on(self.shared.processes.kill_tree(browser));
            }
        }
    }
}

async fn poll_loop(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    // A zero period would make the interval panic.
    let period = shared.options.poll_interval.max(MIN_POLL_INTERVAL);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = stopped.changed() => if changed.is_err() { break },
        }
        if *stopped.borrow() {
            break;
        }
        shared.poll_once().await;
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<InstanceId, Node>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a poll lists: only the played fleets' instances when they are
    /// named, so that simulators sharing one moto (parallel tests) do not
    /// each list, and moto serialize, every other simulator's instances.
    fn listed(&self) -> ManagedFilter {
        ManagedFilter {
            cluster: None,
            fleets: self.options.only_fleets.clone(),
        }
    }

    /// Everything of one node: its state, or with [`BootMode::UserData`]
    /// its root, script and boot log.
    fn node_dir(&self, id: &InstanceId) -> PathBuf {
        self.options.work_dir.join(id.as_str())
    }

    /// Where the node's agent keeps its state.
    fn state_dir(&self, id: &InstanceId) -> PathBuf {
        match self.options.boot {
            BootMode::Direct => self.node_dir(id),
            BootMode::UserData => {
                user_data::root_of(&self.node_dir(id)).join(LINUX_STATE_DIR.trim_start_matches('/'))
            }
        }
    }

    /// Whether commands can run on `id`: a node booted from its user data.
    fn plays(&self, id: &InstanceId) -> bool {
        self.options.boot == BootMode::UserData && self.lock().contains_key(id)
    }

    /// Runs `script` on node `id` with `sh`, as root, as the SSM agent runs
    /// `AWS-RunShellScript`; restarts the agent when the script restarted
    /// its unit. Returns the exit code and output.
    async fn run_commands(
        &self,
        id: &InstanceId,
        command: &str,
        script: &str,
        timeout: Duration,
    ) -> Result<(i32, String, String), run_command::CommandProblem> {
        let problem = |message: String| run_command::CommandProblem {
            message,
            timed_out: false,
        };
        let node_dir = self.node_dir(id);
        let file = node_dir.join(format!("command-{command}.sh"));
        std::fs::write(&file, script).map_err(|e| problem(e.to_string()))?;
        let log = user_data::systemctl_log(&node_dir);
        let before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let run = tokio::process::Command::new("sh")
            .arg(&file)
            .envs(user_data::environment(&node_dir))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = match tokio::time::timeout(timeout, run).await {
            Ok(output) => output.map_err(|e| problem(e.to_string()))?,
            Err(_) => {
                return Err(run_command::CommandProblem {
                    message: format!("still running after {timeout:?}"),
                    timed_out: true,
                });
            }
        };
        let asked = std::fs::read(&log).unwrap_or_default();
        let asked = String::from_utf8_lossy(asked.get(before as usize..).unwrap_or_default());
        let agent_unit = self
            .lock()
            .get(id)
            .and_then(|n| n.unit.as_ref().map(|u| u.name.clone()));
        if let Some(unit) = agent_unit {
            let reload = user_data::reloaded_units(&asked)
                .into_iter()
                .find(|(reloaded, _)| *reloaded == unit);
            if user_data::started_units(&asked).contains(&unit) {
                self.restart_agent(id).await;
            } else if let Some((_, or_restart)) = reload {
                self.reload_agent(id, or_restart).await;
            }
        }
        Ok((
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    /// Restarts node `id`'s agent as `systemctl restart` would with
    /// `KillMode=process`: SIGTERM to the agent alone (its browsers stay, to
    /// be re-adopted), then its unit's command again, which now runs
    /// whatever file is installed.
    async fn restart_agent(&self, id: &InstanceId) {
        let agent = {
            let mut nodes = self.lock();
            let Some(node) = nodes.get_mut(id) else {
                return;
            };
            match std::mem::replace(&mut node.phase, Phase::Restarting) {
                Phase::Running { agent, .. } => Some(agent),
                Phase::Installing { script } => {
                    node.phase = Phase::Installing { script };
                    return;
                }
                Phase::Booting { .. } | Phase::Down | Phase::Restarting => None,
            }
        };
        if let Some(agent) = agent {
            tracing::info!(
                pid = agent.identity.pid,
                "restarting the agent (Run Command)"
            );
            self.stop_agent(agent).await;
        }
        if let Some(node) = self.lock().get_mut(id)
            && matches!(node.phase, Phase::Restarting)
        {
            node.phase = Phase::Booting {
                due: SystemTime::now(),
            };
        }
    }

    /// Reloads node `id`'s agent unit as `systemctl reload` would: SIGHUP to
    /// its main process when its `ExecReload=` says so; a restart instead
    /// when `or_restart` (`reload-or-restart`) and it cannot reload or does
    /// not run.
    async fn reload_agent(&self, id: &InstanceId, or_restart: bool) {
        let main = {
            let nodes = self.lock();
            let Some(node) = nodes.get(id) else {
                return;
            };
            match (&node.phase, &node.unit) {
                (Phase::Running { agent, .. }, Some(unit))
                    if unit.reload_by_hangup && agent.exit.exited().is_none() =>
                {
                    Some(agent.identity)
                }
                _ => None,
            }
        };
        match main {
            Some(main) => {
                tracing::info!(pid = main.pid, "reloading the agent (Run Command): SIGHUP");
                if let Err(error) = self.processes.signal_alone(main, Signal::Hangup) {
                    tracing::warn!(%error, "cannot send SIGHUP to the agent");
                }
            }
            None if or_restart => self.restart_agent(id).await,
            None => tracing::warn!("the agent's unit cannot reload now; nothing done"),
        }
    }

    /// Makes the process a `MAINPID=` named the main process of `node`'s
    /// agent unit, as systemd does; the former one goes on running.
    fn follow_main_process(&self, node: &mut Node) {
        node.former.retain(|former| former.exit.exited().is_none());
        let Some(pid) = node.notify.as_ref().and_then(NotifySocket::main_pid) else {
            return;
        };
        let Phase::Running {
            agent, started_at, ..
        } = &mut node.phase
        else {
            return;
        };
        if agent.identity.pid == pid {
            return;
        }
        let Some(identity) = self.processes.identity(pid) else {
            tracing::warn!(pid, "MAINPID= names no running process; ignored");
            return;
        };
        let processes = self.processes;
        let successor = Spawned {
            identity,
            exit: watch_from_outside(
                identity,
                move |id| processes.is_alive(id),
                MAIN_PROCESS_WATCH,
            ),
        };
        let former = std::mem::replace(agent, successor);
        *started_at = SystemTime::now();
        tracing::info!(
            former = former.identity.pid,
            main = pid,
            "the agent's unit has a new main process (MAINPID=)"
        );
        node.former.push(former);
    }

    /// Reads the instance's user data and runs it, in a task of its own.
    fn install(&self, id: &InstanceId) -> JoinHandle<Result<AgentUnit, BootError>> {
        let ec2 = self.ec2.clone();
        let node_dir = self.node_dir(id);
        let image = self.options.agent_binary.clone();
        let id = id.clone();
        tokio::spawn(
            async move {
                let script = user_data::read(&ec2, id.as_str()).await?;
                user_data::boot(&node_dir, &script, &image, BOOT_SCRIPT_TIMEOUT).await
            }
            .instrument(tracing::info_span!("boot script")),
        )
    }

    /// One round: list, stop the nodes whose instance no longer runs, track
    /// new ones, and move every tracked node on.
    async fn poll_once(&self) {
        let listing = match self.compute.list_managed(&self.listed()).await {
            Ok(listing) => listing,
            Err(error) => {
                // Unknown is not gone: nothing is stopped on a failed listing.
                tracing::warn!(%error, "cannot list instances; trying again at the next poll");
                return;
            }
        };
        let now = SystemTime::now();
        let tracked: BTreeSet<InstanceId> = self.lock().keys().cloned().collect();
        let plan = plan(&listing, &tracked, &self.options, now);
        let mut leaving = Vec::new();
        {
            let mut nodes = self.lock();
            for (id, removal) in plan.stop {
                if let Some(node) = nodes.remove(&id) {
                    leaving.push((id, node, removal));
                }
            }
            for (id, fleet, due) in plan.boot {
                let taken: BTreeSet<usize> = nodes.values().map(|n| n.block).collect();
                let Some(block) = self.options.browser_ports.free_block(&taken) else {
                    tracing::warn!(instance = %id, "no browser ports left for another node");
                    continue;
                };
                let metadata = match metadata::Metadata::serve(&id) {
                    Ok(metadata) => metadata,
                    Err(error) => {
                        tracing::warn!(instance = %id, %error, "cannot serve the node's metadata; trying again at the next poll");
                        continue;
                    }
                };
                tracing::info!(instance = %id, fleet = %format!("{}/{}", fleet.0, fleet.1), "instance running; booting");
                let phase = Phase::Booting { due };
                nodes.insert(
                    id,
                    Node {
                        fleet,
                        block,
                        phase,
                        unit: None,
                        listen_ports: None,
                        metadata,
                        notify: None,
                        former: Vec::new(),
                    },
                );
            }
        }
        futures::stream::iter(leaving)
            .for_each_concurrent(STOP_CONCURRENCY, |(id, node, removal)| async move {
                let span = tracing::info_span!("node", instance = %id);
                self.stop_node(&id, node, removal).instrument(span).await;
            })
            .await;
        let ids: Vec<InstanceId> = self.lock().keys().cloned().collect();
        for id in ids {
            let span = tracing::info_span!("node", instance = %id);
            self.advance(&id, now).instrument(span).await;
        }
    }

    /// Moves one node on: notices an agent's exit, and starts a due agent.
    async fn advance(&self, id: &InstanceId, now: SystemTime) {
        let fleet = {
            let mut nodes = self.lock();
            let Some(node) = nodes.get_mut(id) else {
                return;
            };
            self.follow_main_process(node);
            match &node.phase {
                Phase::Running { agent, crashed, .. } => {
                    let Some(exit) = agent.exit.exited() else {
                        return;
                    };
                    node.phase = after_exit(*crashed, &self.options, now);
                    match node.phase {
                        Phase::Booting { .. } => {
                            tracing::info!(?exit, "agent crashed; restarting after the boot delay")
                        }
                        _ => tracing::warn!(
                            ?exit,
                            "agent exited; it stays down while the instance runs"
                        ),
                    }
                    return;
                }
                Phase::Installing { script } => {
                    if !script.is_finished() {
                        return;
                    }
                    let Phase::Installing { script } =
                        std::mem::replace(&mut node.phase, Phase::Down)
                    else {
                        return;
                    };
                    match script.now_or_never() {
                        Some(Ok(Ok(unit))) => {
                            tracing::info!(agent = ?unit.command, "boot script ran");
                            node.unit = Some(unit);
                            node.phase = Phase::Booting { due: now };
                        }
                        Some(Ok(Err(error))) => {
                            tracing::warn!(%error, "the node did not boot; it stays down")
                        }
                        Some(Err(error)) => {
                            tracing::warn!(%error, "the boot script's task failed")
                        }
                        None => {}
                    }
                    return;
                }
                Phase::Down | Phase::Restarting => return,
                Phase::Booting { due } if *due > now => return,
                Phase::Booting { .. } => node.fleet.clone(),
            }
        };
        let parameter = parameter_name(&fleet.0, &fleet.1);
        match self.ssm.get_parameter(&parameter).await {
            Ok(_) => {}
            Err(SsmError::NotFound(_)) => {
                tracing::debug!(parameter, "no agent configuration yet; booting longer");
                return;
            }
            Err(error) => {
                tracing::warn!(parameter, %error, "cannot read the agent configuration; booting longer");
                return;
            }
        }
        let mut nodes = self.lock();
        let Some(node) = nodes.get_mut(id) else {
            return;
        };
        if !matches!(node.phase, Phase::Booting { .. }) {
            return;
        }
        let spawned = match (self.options.boot, &node.unit) {
            (BootMode::Direct, _) => {
                self.spawn_agent(id, &parameter, node.block, &node.metadata.endpoint)
            }
            (BootMode::UserData, Some(unit)) => {
                let ports = match node.listen_ports {
                    Some(ports) => ports,
                    None => match two_free_ports() {
                        Ok(ports) => *node.listen_ports.insert(ports),
                        Err(error) => {
                            tracing::warn!(%error, "no free ports for the agent; trying again at the next poll");
                            return;
                        }
                    },
                };
                if unit.notify_access && node.notify.is_none() {
                    match NotifySocket::bind(&self.node_dir(id)) {
                        Ok(socket) => node.notify = Some(socket),
                        Err(error) => {
                            tracing::warn!(%error, "cannot bind the unit's notification socket; the agent runs without one")
                        }
                    }
                }
                let notify = node.notify.as_ref().map(NotifySocket::path);
                self.spawn_unit(id, unit, node.block, ports, &node.metadata.endpoint, notify)
            }
            (BootMode::UserData, None) => {
                tracing::info!("running the instance's user data");
                node.phase = Phase::Installing {
                    script: self.install(id),
                };
                return;
            }
        };
        match spawned {
            Ok(agent) => {
                tracing::info!(pid = agent.identity.pid, "agent started");
                node.phase = Phase::Running {
                    agent,
                    started_at: SystemTime::now(),
                    crashed: false,
                };
            }
            Err(error) => {
                tracing::warn!(%error, "cannot start the agent; trying again at the next poll")
            }
        }
    }

    fn spawn_agent(
        &self,
        id: &InstanceId,
        parameter: &str,
        block: usize,
        metadata: &str,
    ) -> Result<Spawned, NodeStartError> {
        let (first, last) = self
            .options
            .browser_ports
            .block(block)
            .ok_or(NodeStartError::NoPorts)?;
        let state_dir = self.state_dir(id);
        std::fs::create_dir_all(&state_dir).map_err(|source| NodeStartError::StateDir {
            path: state_dir.clone(),
            source,
        })?;
        let spec = LaunchSpec {
            program: self.options.agent_binary.clone(),
            args: agent_args(id, parameter, (first, last), &state_dir),
            env: self.agent_env(metadata),
            working_dir: Some(self.options.work_dir.clone()),
            log_file: Some(self.options.work_dir.join(format!("{id}.log"))),
            run_as: None,
        };
        Ok(self.processes.spawn(&spec)?)
    }

    /// The agent's environment: the simulator's AWS endpoint and region, and
    /// its node's metadata service.
    fn agent_env(&self, metadata: &str) -> Vec<(String, String)> {
        let mut env = self.aws_env.clone();
        env.push((
            "AWS_EC2_METADATA_SERVICE_ENDPOINT".to_owned(),
            metadata.to_owned(),
        ));
        env
    }

    /// Starts the agent as its unit says, with the node's identity and ports.
    fn spawn_unit(
        &self,
        id: &InstanceId,
        unit: &AgentUnit,
        block: usize,
        listen_ports: (u16, u16),
        metadata: &str,
        notify: Option<&Path>,
    ) -> Result<Spawned, NodeStartError> {
        let ports = self
            .options
            .browser_ports
            .block(block)
            .ok_or(NodeStartError::NoPorts)?;
        let (program, args) = unit.launch(&identity_args(id, ports, listen_ports));
        let mut env = self.agent_env(metadata);
        if let Some(socket) = notify {
            env.push(("NOTIFY_SOCKET".to_owned(), socket.display().to_string()));
        }
        let spec = LaunchSpec {
            program,
            args,
            env,
            working_dir: Some(self.options.work_dir.clone()),
            log_file: Some(self.options.work_dir.join(format!("{id}.log"))),
            run_as: None,
        };
        Ok(self.processes.spawn(&spec)?)
    }

    /// Stops a node's agent (SIGTERM, SIGKILL after the grace period), kills
    /// every browser started on its profiles, and removes its state when its
    /// instance is gone.
    async fn stop_node(&self, id: &InstanceId, node: Node, removal: Removal) {
        match node.phase {
            Phase::Running { agent, .. } => self.stop_agent(agent).await,
            Phase::Installing { script } => script.abort(),
            Phase::Booting { .. } | Phase::Down | Phase::Restarting => {}
        }
        for former in node.former {
            if let Err(error) = self.processes.signal_alone(former.identity, Signal::Kill) {
                tracing::warn!(%error, pid = former.identity.pid, "cannot kill a former agent");
            }
        }
        self.kill_browsers(&self.state_dir(id)).await;
        let node_dir = self.node_dir(id);
        if removal == Removal::RemoveState
            && let Err(error) = tokio::fs::remove_dir_all(&node_dir).await
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(%error, dir = %node_dir.display(), "cannot remove the node directory");
        }
        tracing::info!(?removal, "node stopped");
    }

    async fn stop_agent(&self, mut agent: Spawned) {
        if agent.exit.exited().is_some() {
            return;
        }
        if let Err(error) = self
            .processes
            .signal_alone(agent.identity, Signal::Terminate)
        {
            tracing::warn!(%error, "cannot send SIGTERM to the agent");
        }
        let grace = self.options.stop_grace;
        if tokio::time::timeout(grace, agent.exit.wait()).await.is_ok() {
            return;
        }
        tracing::warn!(?grace, "agent ignored SIGTERM; killing it");
        if let Err(error) = self.processes.signal_alone(agent.identity, Signal::Kill) {
            tracing::warn!(%error, "cannot kill the agent");
        }
        let _ = tokio::time::timeout(grace, agent.exit.wait()).await;
    }

    /// Kills the browsers started on profiles under `state_dir`, until none
    /// is left or the deadline passes.
    async fn kill_browsers(&self, state_dir: &Path) {
        let marker = browser_marker(&profiles_root(state_dir));
        let deadline = tokio::time::Instant::now() + BROWSER_KILL_DEADLINE;
        loop {
            let found = match self.processes.find_by_marker(&marker).await {
                Ok(found) => found,
                Err(error) => {
                    tracing::warn!(%error, "cannot look for the node's browsers");
                    return;
                }
            };
            if found.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    left = found.len(),
                    "browsers of the node survived their kill"
                );
                return;
            }
            for browser in found {
                self.kill_browser(browser).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn kill_browser(&self, browser: ProcessIdentity) {
        match self.processes.kill_tree(browser).await {
            Ok(KillOutcome::Killed) => tracing::info!(pid = browser.pid, "browser killed"),
            Ok(_) => {}
            Err(error) => tracing::warn!(pid = browser.pid, %error, "cannot kill a browser"),
        }
    }
}

/// Two loopback ports free now (the OS's pick; a port taken between this
/// and the agent's bind makes that start fail and the next poll retry).
fn two_free_ports() -> io::Result<(u16, u16)> {
    let first = std::net::TcpListener::bind("127.0.0.1:0")?;
    let second = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok((first.local_addr()?.port(), second.local_addr()?.port()))
}

/// Makes `work_dir` searchable by the nodes' users, after checking that its
/// ancestors are.
fn open_to_node_users(work_dir: &Path) -> Result<(), NodeError> {
    use std::os::unix::fs::PermissionsExt;
    let work_dir = work_dir
        .canonicalize()
        .map_err(|source| NodeError::WorkDir {
            path: work_dir.to_path_buf(),
            source,
        })?;
    for ancestor in work_dir.ancestors().skip(1) {
        let searchable = std::fs::metadata(ancestor)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false);
        if !searchable {
            return Err(NodeError::Closed(ancestor.to_path_buf()));
        }
    }
    std::fs::set_permissions(&work_dir, std::fs::Permissions::from_mode(0o755)).map_err(|source| {
        NodeError::WorkDir {
            path: work_dir.clone(),
            source,
        }
    })
}

/// Why an agent could not be started (retried at the next poll).
#[derive(Debug, Error)]
enum NodeStartError {
    #[error("the node has no browser ports")]
    NoPorts,
    #[error("cannot create the state directory {path}: {source}")]
    StateDir { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Spawn(#[from] ProcessError),
}

/// The agent's command line on a simulated node: identity and a loopback
/// address instead of the metadata service, and a listener, browser ports
/// and state of its own.
fn agent_args(
    id: &InstanceId,
    parameter: &str,
    ports: (u16, u16),
    state_dir: &Path,
) -> Vec<String> {
    let mut args: Vec<String> = ["agent", "--config-ssm-parameter", parameter]
        .map(str::to_owned)
        .to_vec();
    args.extend(identity_args(id, ports, (0, 0)));
    args.extend(["--state-dir".to_owned(), state_dir.display().to_string()]);
    args
}

/// What EC2's metadata service would tell the agent, and what agents
/// sharing a host must not share: identity, a loopback address, listener,
/// browser and proxy ports of its own.
/// `(gateway, egress)` 0 picks free ports at each start.
fn identity_args(
    id: &InstanceId,
    (first, last): (u16, u16),
    (gateway, egress): (u16, u16),
) -> Vec<String> {
    [
        "--instance-id",
        id.as_str(),
        "--advertise-address",
        "127.0.0.1:0",
        "--listen-address",
        "127.0.0.1",
        "--gateway-port",
        &gateway.to_string(),
        "--browser-ports",
        &format!("{first}-{last}"),
        "--egress-proxy-port",
        &egress.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, state: Ec2State, fleet: Option<&str>) -> FleetInstance {
        FleetInstance {
            id: InstanceId::new(id),
            state,
            instance_type: None,
            image_id: None,
            subnet_id: None,
            availability_zone: None,
            private_ip: None,
            launch_time: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(100)),
            tags: fleet
                .map(|f| BTreeMap::from([(FLEET_TAG.to_owned(), f.to_owned())]))
                .unwrap_or_default(),
        }
    }

    fn options(boot_delay: Duration) -> NodeOptions {
        let mut options = NodeOptions::new("/bin/browserfleet", "/work");
        options.boot_delay = boot_delay;
        options
    }

    fn ids(list: &[&str]) -> BTreeSet<InstanceId> {
        list.iter().map(|id| InstanceId::new(*id)).collect()
    }

    #[test]
    fn running_instances_boot_after_their_launch_plus_the_delay() {
        let listing = [
            instance("i-new", Ec2State::Running, Some("team/web")),
            instance("i-known", Ec2State::Running, Some("team/web")),
            instance("i-pending", Ec2State::Pending, Some("team/web")),
            instance("i-untagged", Ec2State::Running, None),
            instance("i-bad-tag", Ec2State::Running, Some("team/")),
        ];
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(101);
        let plan = plan(
            &listing,
            &ids(&["i-known"]),
            &options(Duration::from_secs(2)),
            now,
        );
        assert_eq!(
            plan.boot,
            vec![(
                InstanceId::new("i-new"),
                ("team".to_owned(), "web".to_owned()),
                SystemTime::UNIX_EPOCH + Duration::from_secs(102)
            )]
        );
        assert!(plan.stop.is_empty());
    }

    #[test]
    fn instances_that_no_longer_run_stop_and_only_gone_ones_lose_their_disk() {
        let listing = [
            instance("i-stopped", Ec2State::Stopped, Some("team/web")),
            instance("i-stopping", Ec2State::Stopping, Some("team/web")),
            instance("i-ending", Ec2State::ShuttingDown, Some("team/web")),
        ];
        let tracked = ids(&["i-stopped", "i-stopping", "i-ending", "i-vanished"]);
        let plan = plan(
            &listing,
            &tracked,
            &options(Duration::ZERO),
            SystemTime::now(),
        );
        assert_eq!(
            plan.stop,
            vec![
                (InstanceId::new("i-ending"), Removal::RemoveState),
                (InstanceId::new("i-stopped"), Removal::KeepState),
                (InstanceId::new("i-stopping"), Removal::KeepState),
                (InstanceId::new("i-vanished"), Removal::RemoveState),
            ]
        );
        assert!(plan.boot.is_empty());
    }

    #[test]
    fn fleets_that_never_register_or_are_not_played_never_boot() {
        let listing = [
            instance("i-silent", Ec2State::Running, Some("team/silent")),
            instance("i-loud", Ec2State::Running, Some("team/loud")),
            instance("i-other", Ec2State::Running, Some("team/other")),
        ];
        let mut options = options(Duration::ZERO);
        options.never_register = BTreeSet::from(["team/silent".to_owned()]);
        let booted = |options: &NodeOptions| -> Vec<String> {
            plan(&listing, &BTreeSet::new(), options, SystemTime::now())
                .boot
                .iter()
                .map(|(id, ..)| id.to_string())
                .collect()
        };
        assert_eq!(booted(&options), vec!["i-loud", "i-other"]);
        options.only_fleets = Some(BTreeSet::from([
            "team/loud".to_owned(),
            "team/silent".to_owned(),
        ]));
        assert_eq!(booted(&options), vec!["i-loud"]);
    }

    #[test]
    fn only_a_requested_crash_with_restart_crashed_boots_again() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(50);
        let mut options = options(Duration::from_secs(3));
        assert!(matches!(after_exit(true, &options, now), Phase::Down));
        assert!(matches!(after_exit(false, &options, now), Phase::Down));
        options.restart_crashed = true;
        assert!(matches!(after_exit(false, &options, now), Phase::Down));
        assert!(matches!(
            after_exit(true, &options, now),
            Phase::Booting { due } if due == now + Duration::from_secs(3)
        ));
    }

    #[test]
    fn port_blocks_are_disjoint_and_the_lowest_free_one_is_handed_out() {
        let pool = PortPool {
            first: 40_000,
            last: 40_009,
            per_node: 4,
        };
        assert_eq!(pool.block(0), Some((40_000, 40_003)));
        assert_eq!(pool.block(1), Some((40_004, 40_007)));
        assert_eq!(pool.block(2), None, "40008..=40011 leaves the pool");
        assert_eq!(pool.free_block(&BTreeSet::new()), Some(0));
        assert_eq!(pool.free_block(&BTreeSet::from([0])), Some(1));
        assert_eq!(pool.free_block(&BTreeSet::from([1])), Some(0));
        assert_eq!(pool.free_block(&BTreeSet::from([0, 1])), None);
    }

    #[test]
    fn agents_get_identity_loopback_and_ports_of_their_own() {
        let args = agent_args(
            &InstanceId::new("i-1"),
            "/browserfleet/team/web/agent-config",
            (40_000, 40_015),
            Path::new("/work/nodes/i-1"),
        );
        assert_eq!(
            args.join(" "),
            "agent --config-ssm-parameter /browserfleet/team/web/agent-config \
             --instance-id i-1 --advertise-address 127.0.0.1:0 --listen-address 127.0.0.1 \
             --gateway-port 0 --browser-ports 40000-40015 --egress-proxy-port 0 --state-dir /work/nodes/i-1"
        );
    }
}
