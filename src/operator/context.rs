//! What every reconcile shares: the clients, the operator's settings, the
//! watches and registrations, and the per-fleet memory that does not live
//! in status (see docs/operator.md for what survives a restart).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};

use crate::api::{BrowserFleet, BrowserSession};
use crate::cloud::SecretValue;
use crate::cloud::{Aws, CallRecorder, Ec2Compute, Sqs, Ssm};
use crate::operator::agent_client::AgentClient;
use crate::operator::agent_config::FleetQueues;
use crate::operator::metrics::Metrics;
use crate::operator::plan::Rules;
use crate::operator::secrets::{self, SecretsError};
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
    /// Every fleet the operator watches.
    pub fleets: Store<BrowserFleet>,
    /// Set once `fleets` has listed everything.
    pub fleets_listed: Arc<AtomicBool>,
    /// Every session the operator watches.
    pub sessions: Store<BrowserSession>,
    /// Sessions whose request could not be sent: failures in a row and when
    /// to try again, by session uid.
    pub session_retries: Mutex<HashMap<String, (u32, std::time::Instant)>>,
    /// Forwarded deletes routed, by session id, and when.
    pub routed_deletes: Mutex<HashMap<crate::protocol::SessionId, std::time::Instant>>,
}

/// How long a forwarded delete of a session is not routed again: the
/// agents' tombstone lifetime.
const ROUTED_DELETE_MEMORY: Duration = Duration::from_secs(3600);
/// Most forwarded deletes remembered.
const MAX_ROUTED_DELETES: usize = 10_000;

/// The caches the reconcilers read beside their own object.
pub struct Caches {
    /// Fleets.
    pub fleets: Store<BrowserFleet>,
    /// Set once the fleet watch has listed everything.
    pub fleets_listed: Arc<AtomicBool>,
    /// Sessions.
    pub sessions: Store<BrowserSession>,
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
        caches: Caches,
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
            fleets: caches.fleets,
            fleets_listed: caches.fleets_listed,
            sessions: caches.sessions,
            session_retries: Mutex::new(HashMap::new()),
            routed_deletes: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a forwarded delete of `id` is to be routed: not when one was
    /// within the last hour. Remembered, bounded (the oldest go first).
    pub fn first_route_of(&self, id: &crate::protocol::SessionId) -> bool {
        let now = std::time::Instant::now();
        let mut routed = self
            .routed_deletes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
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
    pub fn forget_route(&self, id: &crate::protocol::SessionId) {
        let mut routed = self
            .routed_deletes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        routed.remove(id);
    }

    /// How long until a session whose send failed may try again; `None`
    /// when it may now.
    pub fn session_retry_in(&self, uid: &str) -> Option<Duration> {
        let retries = self
            .session_retries
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (_, at) = retries.get(uid)?;
        at.checked_duration_since(std::time::Instant::now())
    }

    /// Counts a failed send of a session's request; the back-off before the
    /// next (1 s doubling to 1 min).
    pub fn session_send_failed(&self, uid: &str) -> Duration {
        let mut retries = self
            .session_retries
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let failures = retries.get(uid).map_or(0, |(n, _)| *n).saturating_add(1);
        let wait = Duration::from_secs(1 << failures.saturating_sub(1).min(6))
            .min(Duration::from_secs(60));
        retries.insert(uid.to_owned(), (failures, std::time::Instant::now() + wait));
        wait
    }

    /// A session's request was sent: its failures are forgotten.
    pub fn session_sent(&self, uid: &str) {
        let mut retries = self
            .session_retries
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        retries.remove(uid);
    }

    /// Whether the fleet cache has listed everything: until then a fleet
    /// missing from it may exist.
    pub fn fleets_synced(&self) -> bool {
        self.fleets_listed.load(Ordering::SeqCst)
    }

    /// The token the fleet's agents accept: the one ensured by this
    /// process, else read from the fleet's Secret.
    pub async fn fleet_token(&self, fleet: &BrowserFleet) -> Result<SecretValue, SecretsError> {
        let uid = fleet.uid().unwrap_or_default();
        let known = {
            let ensured = self.ensured.lock().unwrap_or_else(|e| e.into_inner());
            ensured.get(&uid).map(|e| e.fleet_token.clone())
        };
        match known {
            Some(token) => Ok(token),
            None => Ok(secrets::ensure(&self.client, fleet).await?.fleet_token),
        }
    }

    /// BrowserSessions of `fleet` that are not on its queue yet: demand the
    /// queue does not show.
    pub fn pending_sessions(&self, fleet: &BrowserFleet) -> u32 {
        let namespace = fleet.namespace();
        let name = fleet.name_any();
        let count = self
            .sessions
            .state()
            .iter()
            .filter(|s| s.namespace() == namespace && s.spec.fleet_ref.name == name)
            .filter(|s| s.meta().deletion_timestamp.is_none())
            .filter(|s| {
                s.status.as_ref().is_none_or(|st| {
                    st.phase == crate::api::session::SessionPhase::Pending
                        && st.requested_at.is_none()
                })
            })
            .count();
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// Emits an Event on a fleet or session; a failure to emit is logged,
    /// never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
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
        if let Err(error) = self.events.publish(&event, &object.object_ref(&())).await {
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
