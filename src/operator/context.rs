//! What every reconcile shares: the clients, the operator's settings and
//! the caches of fleets and sessions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};

use crate::api::{BrowserFleet, BrowserSession};
use crate::cloud::{Aws, CallRecorder, Ec2Compute, InstanceId, Sqs, Ssm};
use crate::operator::agent_client::AgentClient;
use crate::operator::fleet::plan::Rules;
use crate::operator::metrics::Metrics;

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

/// The clients and settings every reconcile shares. State that belongs to
/// one fleet or one session lives with its reconciler (the fleet and
/// session memories), not here.
pub struct Context {
    pub client: kube::Client,
    pub compute: Ec2Compute,
    pub ssm: Ssm,
    pub sqs: Sqs,
    /// The agents' control API.
    pub agents: AgentClient,
    /// Every AWS call made.
    pub calls: Arc<CallRecorder>,
    /// Kubernetes Events, through [`Context::event`].
    recorder: Recorder,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    /// This cluster's name, tagged on the instances it launches.
    pub cluster: Option<String>,
    /// The fleets and sessions the operator watches.
    pub caches: Caches,
}

/// The caches the reconcilers read beside their own object.
pub struct Caches {
    pub fleets: Store<BrowserFleet>,
    /// Set once the fleet watch has listed everything.
    pub fleets_listed: Arc<AtomicBool>,
    pub sessions: Store<BrowserSession>,
}

/// Name the operator reports Events and writes status as.
pub const CONTROLLER_NAME: &str = "browserfleet-operator";

impl Context {
    pub fn new(
        client: kube::Client,
        aws: &Aws,
        settings: Settings,
        metrics: Arc<Metrics>,
        caches: Caches,
    ) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER_NAME.to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            compute: Ec2Compute::new(aws),
            ssm: Ssm::new(aws),
            sqs: Sqs::new(aws),
            agents: AgentClient::new(settings.agent_timeout),
            calls: aws.recorder().clone(),
            settings,
            metrics,
            cluster: None,
            caches,
        }
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
        if let Err(error) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(%error, reason, "cannot publish an Event");
        }
    }
}

impl Caches {
    /// Whether the fleet cache has listed everything: until then a fleet
    /// missing from it may exist.
    pub fn fleets_synced(&self) -> bool {
        self.fleets_listed.load(Ordering::SeqCst)
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

    /// How many BrowserSessions of `fleet` that have not ended each
    /// instance hosts, as their status says. An agent may start sessions
    /// before the operator has heard its registration (and so before it can
    /// ask the agent): these keep such an instance from being taken for an
    /// empty booting one.
    pub fn sessions_by_instance(&self, fleet: &BrowserFleet) -> BTreeMap<InstanceId, u32> {
        use crate::api::session::SessionPhase;
        let namespace = fleet.namespace();
        let name = fleet.name_any();
        let mut hosted = BTreeMap::new();
        for session in self.sessions.state() {
            if session.namespace() != namespace || session.spec.fleet_ref.name != name {
                continue;
            }
            let Some(status) = session.status.as_ref() else {
                continue;
            };
            if matches!(
                status.phase,
                SessionPhase::Failed | SessionPhase::Terminated
            ) {
                continue;
            }
            if let Some(instance) = status.instance_id.as_deref() {
                *hosted.entry(InstanceId::new(instance)).or_insert(0u32) += 1;
            }
        }
        hosted
    }
}
