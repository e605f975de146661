//! What every reconcile shares: the clients, the operator's settings, the
//! watches and registrations, and the per-fleet memory that does not live
//! in status (see docs/operator.md for what survives a restart).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::api::BrowserFleet;
use crate::cloud::{Aws, CallRecorder, Ec2Compute, Sqs, Ssm};
use crate::operator::agent_client::AgentClient;
use crate::operator::agent_config::FleetQueues;
use crate::operator::metrics::Metrics;
use crate::operator::plan::Rules;
use crate::operator::watches::{FleetWatches, Registrations};
use crate::scaling::policy::PolicyMemory;

/// The operator's knobs. Defaults suit production; tests shorten them.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// A fleet is reconciled at least this often.
    pub resync: Duration,
    /// The request queue's depth is polled this often between reconciles.
    pub depth_poll: Duration,
    /// Long-poll wait on the events queue.
    pub events_wait: Duration,
    /// Timeout of each call to an agent.
    pub agent_timeout: Duration,
    /// Agents asked at once per fleet.
    pub agent_concurrency: usize,
    /// Fleets reconciled at once.
    pub concurrency: u16,
    /// Rules of the instance lifecycle.
    pub rules: Rules,
    /// Grace period before an instance whose fleet is gone is terminated.
    pub orphan_grace: Duration,
    /// How often the orphan sweep runs.
    pub orphan_sweep: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            resync: Duration::from_secs(15),
            depth_poll: Duration::from_secs(1),
            events_wait: Duration::from_secs(20),
            agent_timeout: Duration::from_secs(2),
            agent_concurrency: 16,
            concurrency: 8,
            rules: Rules::default(),
            orphan_grace: Duration::from_secs(300),
            orphan_sweep: Duration::from_secs(60),
        }
    }
}

/// What was created for a fleet at a generation: rebuilt once per operator
/// process and generation (that is when queues and the agent configuration
/// are converged), so a steady reconcile makes no call for them.
#[derive(Clone, Debug)]
pub struct Ensured {
    /// The fleet generation they were ensured for.
    pub generation: i64,
    /// Its queues.
    pub queues: FleetQueues,
    /// The agent-config parameter.
    pub parameter: String,
    /// The fleet token agents accept.
    pub fleet_token: crate::cloud::SecretValue,
}

/// Shared by every reconcile.
pub struct Context {
    /// Kubernetes.
    pub client: kube::Client,
    /// EC2.
    pub compute: Ec2Compute,
    /// SSM.
    pub ssm: Ssm,
    /// SQS.
    pub sqs: Sqs,
    /// The agents' control API.
    pub agents: AgentClient,
    /// Every AWS call made.
    pub calls: Arc<CallRecorder>,
    /// Kubernetes Events.
    pub events: Recorder,
    /// Knobs.
    pub settings: Settings,
    /// Registrations heard on the events queues.
    pub registrations: Arc<Registrations>,
    /// Per-fleet watches.
    pub watches: FleetWatches,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The scaling policy's memory, by fleet uid.
    pub memory: Mutex<HashMap<String, PolicyMemory>>,
    /// What was ensured, by fleet uid.
    pub ensured: Mutex<HashMap<String, Ensured>>,
    /// Reconciles that failed in a row, by fleet uid (the error back-off).
    pub failures: Mutex<HashMap<String, u32>>,
    /// When this process first observed each fleet, by uid.
    pub watching: Mutex<HashMap<String, jiff::Timestamp>>,
    /// This cluster's name, tagged on the instances it launches.
    pub cluster: Option<String>,
}

/// Name the operator reports Events and writes status as.
pub const CONTROLLER_NAME: &str = "browserfleet-operator";

impl Context {
    /// A context on these clients.
    pub fn new(
        client: kube::Client,
        aws: &Aws,
        settings: Settings,
        watches: FleetWatches,
        registrations: Arc<Registrations>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER_NAME.to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            events: Recorder::new(client.clone(), reporter),
            client,
            compute: Ec2Compute::new(aws),
            ssm: Ssm::new(aws),
            sqs: Sqs::new(aws),
            agents: AgentClient::new(settings.agent_timeout),
            calls: aws.recorder().clone(),
            settings,
            registrations,
            watches,
            metrics,
            memory: Mutex::new(HashMap::new()),
            ensured: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            watching: Mutex::new(HashMap::new()),
            cluster: None,
        }
    }

    /// Emits an Event on the fleet; a failure to emit is logged, never
    /// fatal.
    pub async fn event(&self, fleet: &BrowserFleet, warning: bool, reason: &str, note: String) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(note),
            action: reason.to_owned(),
            secondary: None,
        };
        if let Err(error) = self.events.publish(&event, &fleet.object_ref(&())).await {
            tracing::warn!(%error, reason, "cannot publish an Event");
        }
    }

    /// The policy memory of a fleet, `None` when this process has not
    /// decided for it yet.
    pub fn memory_of(&self, uid: &str) -> Option<PolicyMemory> {
        let memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        memory.get(uid).cloned()
    }

    /// Keeps the policy memory of a fleet.
    pub fn remember(&self, uid: &str, memory: PolicyMemory) {
        let mut memories = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        memories.insert(uid.to_owned(), memory);
    }

    /// What was ensured for a fleet at `generation`.
    pub fn ensured_at(&self, uid: &str, generation: i64) -> Option<Ensured> {
        let ensured = self.ensured.lock().unwrap_or_else(|e| e.into_inner());
        ensured
            .get(uid)
            .filter(|e| e.generation == generation)
            .cloned()
    }

    /// Records what was ensured for a fleet.
    pub fn record_ensured(&self, uid: &str, ensured: Ensured) {
        let mut all = self.ensured.lock().unwrap_or_else(|e| e.into_inner());
        all.insert(uid.to_owned(), ensured);
    }

    /// Since when this process has watched a fleet (now, the first time).
    pub fn watching_since(&self, uid: &str) -> jiff::Timestamp {
        let mut watching = self.watching.lock().unwrap_or_else(|e| e.into_inner());
        *watching
            .entry(uid.to_owned())
            .or_insert_with(jiff::Timestamp::now)
    }

    /// Counts a failed reconcile of a fleet; the failures in a row.
    pub fn failed(&self, uid: &str) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(uid.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    /// A fleet reconciled: its failures in a row start again.
    pub fn succeeded(&self, uid: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(uid);
    }

    /// Forgets a deleted fleet.
    pub fn forget(&self, uid: &str) {
        self.succeeded(uid);
        let mut watching = self.watching.lock().unwrap_or_else(|e| e.into_inner());
        watching.remove(uid);
        drop(watching);
        self.watches.stop(uid);
        self.registrations.forget(uid);
        let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        memory.remove(uid);
        drop(memory);
        let mut ensured = self.ensured.lock().unwrap_or_else(|e| e.into_inner());
        ensured.remove(uid);
    }
}
