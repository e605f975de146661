//! The world a node simulator test runs in: fleets of its own (queues, and
//! the agent configuration the operator's `render` makes of a Linux fleet
//! fixture, in SSM as a SecureString), somewhere to launch instances in
//! moto, a work directory, browser ports no other test uses, and a
//! simulator that plays this world's fleets only.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use browserfleet::api::fleet::{BrowserFleetSpec, Platform};
use browserfleet::cloud::{
    Aws, Compute, Ec2Compute, FleetId, FleetInstance, InstanceId, LaunchRequest, OutgoingMessage,
    ParameterKind, ParameterWrite, Parameters, QueueDefinition, QueueUrl, Queues, SecretValue, Sqs,
    Ssm,
};
use browserfleet::operator::agent_config::{FleetQueues, FleetSecrets, parameter_name, render};
use browserfleet::protocol::{AnnouncementKind, FleetEvent, NodeAnnouncement};
use devcluster::nodes::{NodeOptions, NodeSimulator, PortPool};
use serde_json::{Value, json};

use crate::agent_world::{CHROMIUM, TEST_BROWSER_ARGS, next_message, port_range};
use crate::launch_world::{self, blueprint};

/// Sessions per simulated instance.
pub const SLOTS: u16 = 2;
/// Browser ports per simulated instance.
const PORTS_PER_NODE: u16 = 4;

/// A Linux, headless fleet on this machine's Chromium, from the minimal
/// example manifest.
pub fn linux_spec() -> BrowserFleetSpec {
    let path = crate::tools::root().join("examples/fleet-minimal.yaml");
    let text = std::fs::read_to_string(path).expect("example manifest");
    let fleet: Value = serde_saphyr::from_str(&text).expect("example is YAML");
    let mut spec: BrowserFleetSpec =
        serde_json::from_value(fleet["spec"].clone()).expect("example is a fleet");
    spec.instance.platform = Platform::Linux;
    spec.capacity.sessions_per_instance = i32::from(SLOTS);
    spec.agent.browser.executable = Some(CHROMIUM.to_owned());
    spec.agent.browser.headless = true;
    spec.agent.browser.extra_args = TEST_BROWSER_ARGS.iter().map(|a| a.to_string()).collect();
    spec.agent.sessions.default_ttl_seconds = 300;
    spec.agent.sessions.max_ttl_seconds = 600;
    spec.agent.sessions.never_used_timeout_seconds = 300;
    spec
}

/// One fleet of a world: its queues, a requester's reply queue, its token.
pub struct Fleet {
    pub id: FleetId,
    pub queues: FleetQueues,
    pub replies: QueueUrl,
    pub secrets: FleetSecrets,
}

impl Fleet {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        self.id.to_string()
    }

    pub fn token(&self) -> &str {
        self.secrets.fleet_token.expose()
    }
}

/// Clients, a launch world in moto and a work directory.
pub struct NodeWorld {
    pub aws: Aws,
    pub sqs: Sqs,
    pub ssm: Ssm,
    pub compute: Ec2Compute,
    pub launch: launch_world::World,
    pub work: tempfile::TempDir,
    fleets: BTreeSet<String>,
    pool: (u16, u16),
}

impl NodeWorld {
    pub async fn new(name: &str) -> Self {
        let aws = super::aws().await;
        let launch = launch_world::world(&aws, name).await;
        NodeWorld {
            sqs: Sqs::new(&aws),
            ssm: Ssm::new(&aws),
            compute: Ec2Compute::new(&aws),
            launch,
            work: tempfile::tempdir().expect("work dir"),
            fleets: BTreeSet::new(),
            pool: port_range(PORTS_PER_NODE * 4),
            aws,
        }
    }

    /// A fleet of this world, with its queues; its configuration is not
    /// published yet.
    pub async fn fleet(&mut self, name: &str) -> Fleet {
        let id = super::unique_fleet(name);
        let requests = self
            .sqs
            .ensure_queue(&QueueDefinition::requests_for(&id, &Default::default()))
            .await
            .expect("request queue");
        let events = self
            .sqs
            .ensure_queue(&QueueDefinition::events_for(&id))
            .await
            .expect("events queue");
        let mut reply = QueueDefinition::events_for(&id);
        reply.name = format!("{}-replies", reply.name.trim_end_matches("-events"));
        let replies = self.sqs.ensure_queue(&reply).await.expect("reply queue");
        let secret = || SecretValue::new(format!("{}", uuid::Uuid::new_v4().simple()));
        self.fleets.insert(id.to_string());
        Fleet {
            id,
            queues: FleetQueues {
                requests: requests.url,
                dead_letter: requests.dead_letter_url,
                events: events.url,
            },
            replies: replies.url,
            secrets: FleetSecrets {
                fleet_token: secret(),
                callback_secret: secret(),
                message_key: secret(),
            },
        }
    }

    /// Writes the fleet's agent configuration to its SSM parameter, as the
    /// operator does.
    pub async fn publish(&self, fleet: &Fleet) {
        let (namespace, name) = (fleet.id.namespace(), fleet.id.name());
        let config = render(
            namespace,
            name,
            &linux_spec(),
            &fleet.queues,
            &fleet.secrets,
        )
        .expect("the fixture renders");
        let write = ParameterWrite {
            name: parameter_name(namespace, name),
            value: serde_json::to_string(&config).expect("config is JSON"),
            kind: ParameterKind::SecureString { kms_key_id: None },
            description: Some(format!("agent configuration of fleet {}", fleet.id)),
            tags: fleet.id.tags(&Default::default()),
        };
        self.ssm.put_parameter(&write).await.expect("put parameter");
    }

    /// Launches one instance of `fleet`.
    pub async fn launch(&self, fleet: &Fleet) -> FleetInstance {
        let request = LaunchRequest {
            count: 1,
            sequence: 1,
            first_subnet: 0,
        };
        let outcome = self
            .compute
            .launch(&fleet.id, &blueprint(&self.launch), request)
            .await
            .expect("launch");
        outcome.instances.into_iter().next().expect("one instance")
    }

    /// Options for a simulator of this world's fleets.
    pub fn options(&self, boot_delay: Duration) -> NodeOptions {
        let mut options = NodeOptions::new(crate::tools::browserfleet_binary(), self.work.path());
        options.boot_delay = boot_delay;
        options.poll_interval = Duration::from_millis(200);
        options.only_fleets = Some(self.fleets.clone());
        options.browser_ports = PortPool {
            first: self.pool.0,
            last: self.pool.1,
            per_node: PORTS_PER_NODE,
        };
        options
    }

    /// Where the simulator keeps the state of `instance`'s agent.
    pub fn state_dir(&self, instance: &InstanceId) -> PathBuf {
        self.work.path().join(instance.as_str())
    }

    pub fn start(&self, options: NodeOptions) -> NodeSimulator {
        NodeSimulator::start(&self.aws, options).expect("simulator starts")
    }

    /// The next `node.registered` of `instance` on the fleet's events queue.
    pub async fn registration(
        &self,
        fleet: &Fleet,
        instance: &InstanceId,
        deadline: Duration,
    ) -> NodeAnnouncement {
        let id = instance.as_str().to_owned();
        let message = next_message(&self.sqs, &fleet.queues.events, deadline, |v| {
            v["type"] == "node.registered" && v["instanceId"] == id.as_str()
        })
        .await;
        match serde_json::from_value::<FleetEvent>(message) {
            Ok(FleetEvent::Node(announcement)) => {
                assert_eq!(announcement.kind, AnnouncementKind::Registered);
                announcement
            }
            other => panic!("not an announcement: {other:?}"),
        }
    }

    /// Asks for session `id` on the fleet's request queue; returns its
    /// `session.ready`.
    pub async fn ready_session(&self, fleet: &Fleet, id: &str) -> Value {
        let body = json!({
            "version": 1,
            "action": "create",
            "sessionId": id,
            "replyTo": fleet.replies.as_str(),
        });
        self.sqs
            .send(
                &fleet.queues.requests,
                &OutgoingMessage {
                    body: body.to_string(),
                    delay: Duration::ZERO,
                    attributes: Default::default(),
                },
            )
            .await
            .expect("send request");
        let reply = next_message(&self.sqs, &fleet.replies, Duration::from_secs(60), |v| {
            v["sessionId"] == id
        })
        .await;
        assert_eq!(reply["type"], "session.ready", "{reply}");
        reply
    }
}

/// Whether process `pid` runs (a zombie does not).
pub fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    stat.rsplit_once(')')
        .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
}

/// The boot deadline of an instance: its launch time plus the delay.
pub fn boot_due(instance: &FleetInstance, boot_delay: Duration) -> SystemTime {
    instance.launch_time.expect("moto reports launch times") + boot_delay
}
