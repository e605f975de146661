//! The world an operator end-to-end test runs in: a Kubernetes API (the
//! development API server, or the cluster `BROWSERFLEET_TEST_KUBECONFIG`
//! names) with our CRDs in a namespace of its own, moto, the operator
//! running in this process, and the node simulator starting a real agent
//! (and real Chromium) for each instance the operator launches.

use std::collections::BTreeSet;
use std::time::Duration;

use browserfleet::api::session::SessionPhase;
use browserfleet::api::{BrowserFleet, BrowserSession};
use browserfleet::cloud::{
    Aws, Compute, Ec2Compute, FleetId, FleetInstance, OutgoingMessage, QueueDefinition, QueueUrl,
    Queues, Sqs,
};
use browserfleet::operator::context::Settings;
use browserfleet::operator::fleet::plan::Rules;
use browserfleet::operator::metrics::Metrics;
use browserfleet::operator::run::{LeaderElection, OperatorOptions, RunError, Running, run};
use devcluster::nodes::{BootMode, NodeOptions, NodeSimulator, PortPool};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::agent_world::{CHROMIUM, TEST_BROWSER_ARGS, port_range, receive_batch};
use crate::cluster::TestCluster;
use crate::launch_world;
use crate::moto::INSTANCE_PROFILE;

/// How long an end-to-end wait may take: agents boot, Chromium starts.
pub const WAIT: Duration = Duration::from_secs(90);

/// Operator settings for tests: quick resync, quick back-off.
pub fn test_settings() -> Settings {
    Settings {
        resync: Duration::from_secs(2),
        depth_poll: Duration::from_millis(500),
        events_wait: Duration::from_secs(1),
        agent_timeout: Duration::from_secs(2),
        rules: Rules {
            unresponsive_after: Duration::from_secs(20),
            backoff_base: Duration::from_secs(2),
            backoff_cap: Duration::from_secs(8),
        },
        ..Settings::default()
    }
}

/// Logs of the operator in this process go to the test's output when
/// `RUST_LOG` is set (say `RUST_LOG=browserfleet=debug` with
/// `--nocapture`); agents log to files in the work dir.
fn log_when_asked() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// The world's scratch directory (agents' state and logs). Kept, and its
/// path printed, when `BROWSERFLEET_KEEP_WORK` is set: a failed run's agent
/// logs are the record of what the nodes did.
fn work_dir() -> tempfile::TempDir {
    let keep = std::env::var_os("BROWSERFLEET_KEEP_WORK").is_some();
    let dir = tempfile::Builder::new()
        .prefix("browserfleet-world-")
        .disable_cleanup(keep)
        .tempdir()
        .expect("work dir");
    if keep {
        eprintln!("keeping the work dir {}", dir.path().display());
    }
    dir
}

/// One operator, running in this process.
pub struct OperatorHandle {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), RunError>>,
    pub metrics: std::sync::Arc<Metrics>,
    /// Where it serves health and metrics.
    pub address: std::net::SocketAddr,
}

impl OperatorHandle {
    /// Stops it gracefully and waits.
    pub async fn stop(mut self) -> Result<(), RunError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.expect("operator task")
    }

    /// Kills it: the task is aborted mid-flight, as a crash would.
    pub fn kill(self) {
        self.task.abort();
    }

    /// Waits until it has finished `more` fleet reconciles after this call.
    /// A test that something does *not* happen waits for this rather than
    /// for a time: each of those reconciles would have done it.
    pub async fn reconciled(&self, more: u32) {
        let count = || async { crate::bench::reconciles_in(&self.metrics.render()) };
        crate::agent_world::wait_grown("reconciles", more, count).await;
    }
}

/// Watches object `name` with kube-runtime's `await_condition` until
/// `condition` holds, within `limit`; a watch that fails is started again.
/// `None` on timeout, else the object the condition held for (`None` if it
/// held for no object).
async fn watch<K>(
    api: Api<K>,
    name: &str,
    limit: Duration,
    condition: impl Fn(Option<&K>) -> bool,
) -> Option<Option<K>>
where
    K: kube::Resource + Clone + std::fmt::Debug + Send + serde::de::DeserializeOwned + 'static,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let watched = tokio::time::timeout_at(
            deadline,
            kube::runtime::wait::await_condition(api.clone(), name, &condition),
        )
        .await;
        match watched {
            Ok(Ok(object)) => return Some(object),
            // A watch error (a restarted API server, a dropped connection):
            // watch again, after a pause that keeps a lasting fault from
            // spinning.
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(_elapsed) => return None,
        }
    }
}

/// Watches object `name` until `check` holds for it, within [`WAIT`]. On
/// timeout, the last version seen.
async fn watch_until<K>(api: Api<K>, name: &str, check: impl Fn(&K) -> bool) -> Result<K, Option<K>>
where
    K: kube::Resource + Clone + std::fmt::Debug + Send + serde::de::DeserializeOwned + 'static,
{
    let last = std::sync::Mutex::new(None);
    let condition = |object: Option<&K>| {
        let Some(object) = object else {
            return false;
        };
        if let Ok(mut last) = last.lock() {
            *last = Some(object.clone());
        }
        check(object)
    };
    match watch(api, name, WAIT, condition).await {
        Some(Some(object)) => Ok(object),
        _ => Err(last
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())),
    }
}

/// Watches object `name` until it does not exist, within `limit`; whether
/// it went.
async fn watch_gone<K>(api: Api<K>, name: &str, limit: Duration) -> bool
where
    K: kube::Resource + Clone + std::fmt::Debug + Send + serde::de::DeserializeOwned + 'static,
{
    watch(api, name, limit, |object| object.is_none())
        .await
        .is_some()
}

/// Waits until the operator process serving metrics at `address` has
/// finished `more` fleet reconciles after this call (see
/// [`OperatorHandle::reconciled`]).
pub async fn process_reconciled(address: &str, more: u32) {
    let count = || async {
        crate::bench::reconciles_in(&crate::bench::scrape(address).await.unwrap_or_default())
    };
    crate::agent_world::wait_grown("reconciles", more, count).await;
}

/// A test's world.
pub struct OperatorWorld {
    pub cluster: TestCluster,
    pub aws: Aws,
    pub launch: launch_world::World,
    pub work: tempfile::TempDir,
    /// The fleet's name in `cluster.ns`.
    pub name: String,
}

impl OperatorWorld {
    /// A world named after the test.
    pub async fn new(test: &str) -> Self {
        log_when_asked();
        let cluster = TestCluster::new(test, true).await;
        let aws = super::aws().await;
        let launch = launch_world::world(&aws, test).await;
        OperatorWorld {
            cluster,
            aws,
            launch,
            work: work_dir(),
            name: "fleet".to_owned(),
        }
    }

    /// The operator cluster's name in this world: its namespace, unique,
    /// so that parallel tests' orphan sweeps never meet.
    pub fn cluster_name(&self) -> String {
        self.cluster.ns.clone()
    }

    /// `namespace/name` of the fleet.
    pub fn fleet_key(&self) -> String {
        format!("{}/{}", self.cluster.ns, self.name)
    }

    /// Starts an operator for this world's namespace.
    pub async fn start_operator(
        &self,
        settings: Settings,
        election: Option<LeaderElection>,
    ) -> OperatorHandle {
        let namespace = Some(self.cluster.ns.clone());
        self.launch_operator(
            self.cluster.client.clone(),
            namespace,
            settings,
            election,
            self.aws.clone(),
            Some(self.cluster_name()),
        )
        .await
    }

    /// Starts an operator with a client of the caller's (another user
    /// agent, say) watching `namespace` (`None`: every namespace), naming
    /// its cluster `cluster` (`None`: by the kube-system namespace's uid, as
    /// the chart runs it by default).
    pub async fn start_operator_with(
        &self,
        client: kube::Client,
        namespace: Option<String>,
        settings: Settings,
        election: Option<LeaderElection>,
        cluster: Option<String>,
    ) -> OperatorHandle {
        self.launch_operator(
            client,
            namespace,
            settings,
            election,
            self.aws.clone(),
            cluster,
        )
        .await
    }

    /// Starts an operator for this world's namespace with AWS clients of
    /// its own (so that its `CallRecorder` counts its calls alone).
    pub async fn start_operator_with_aws(
        &self,
        settings: Settings,
        election: Option<LeaderElection>,
        aws: Aws,
    ) -> OperatorHandle {
        let namespace = Some(self.cluster.ns.clone());
        self.launch_operator(
            self.cluster.client.clone(),
            namespace,
            settings,
            election,
            aws,
            Some(self.cluster_name()),
        )
        .await
    }

    async fn launch_operator(
        &self,
        client: kube::Client,
        namespace: Option<String>,
        settings: Settings,
        election: Option<LeaderElection>,
        aws: Aws,
        cluster: Option<String>,
    ) -> OperatorHandle {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (started, running) = tokio::sync::oneshot::channel::<Running>();
        let options = OperatorOptions {
            namespace,
            settings,
            listen: Some("127.0.0.1:0".parse().unwrap()),
            leader_election: election,
            cluster,
        };
        let task = tokio::spawn(run(
            client,
            aws,
            options,
            async move {
                let _ = stopped.await;
            },
            Some(started),
        ));
        let running = running.await.expect("operator starts");
        OperatorHandle {
            stop: Some(stop),
            task,
            metrics: running.metrics,
            address: running.address.expect("health listener"),
        }
    }

    /// The cluster's kubeconfig as a file in the work dir, for operator
    /// processes: the real cluster's when the tests run against one
    /// (`BROWSERFLEET_TEST_KUBECONFIG`), else the development API server's.
    pub fn kubeconfig_text(&self) -> String {
        match std::env::var_os("BROWSERFLEET_TEST_KUBECONFIG") {
            Some(path) => std::fs::read_to_string(path).expect("kubeconfig"),
            None => self
                .cluster
                .dev
                .as_ref()
                .expect("a development API server")
                .kubeconfig(),
        }
    }

    /// `browserfleet operator` as a process of its own, so that a test can
    /// kill it: this world's namespace, the test settings' timers, the
    /// cluster reached through `kubeconfig`, and `extra` arguments. Returns
    /// it and the address of its health and metrics listener.
    pub fn spawn_operator_process(
        &self,
        kubeconfig: &std::path::Path,
        extra: &[&str],
    ) -> (tokio::process::Child, String) {
        // A port the kernel just handed out and took back: free for the
        // operator to bind a moment later.
        let address = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .to_string();
        let child = tokio::process::Command::new(crate::tools::browserfleet_binary())
            .args([
                "operator",
                "--namespace",
                &self.cluster.ns,
                "--listen",
                &address,
                "--resync",
                "2s",
                "--queue-poll",
                "500ms",
                "--events-wait",
                "1s",
            ])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("operator process");
        (child, address)
    }

    /// Starts the node simulator for this world's fleet.
    pub fn start_nodes(&self, tune: impl FnOnce(&mut NodeOptions)) -> NodeSimulator {
        let mut options = NodeOptions::new(
            crate::tools::browserfleet_binary(),
            self.work.path().join("nodes"),
        );
        options.only_fleets = Some(BTreeSet::from([self.fleet_key()]));
        options.poll_interval = Duration::from_millis(200);
        let (first, last) = port_range(40);
        options.browser_ports = PortPool {
            first,
            last,
            per_node: 4,
        };
        tune(&mut options);
        if options.boot == BootMode::UserData {
            // The nodes' users pass through it to their state.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(self.work.path(), std::fs::Permissions::from_mode(0o755))
                .expect("work dir opened");
        }
        NodeSimulator::start(&self.aws, options).expect("node simulator starts")
    }

    /// A Linux fleet of headless Chromium in moto's default network: `min`
    /// to `max` instances of two sessions each, with short timers.
    pub fn fleet(&self, min: i32, max: i32) -> Value {
        json!({
            "apiVersion": "browserfleet.io/v1alpha1",
            "kind": "BrowserFleet",
            "metadata": {"name": self.name},
            "spec": {
                "instance": {
                    "platform": "Linux",
                    "image": {"imageId": self.launch.image_id.as_str()},
                    "instanceTypes": ["m6i.large"],
                    "subnetIds": self.launch.subnets,
                    "securityGroupIds": [self.launch.security_group],
                    "instanceProfile": INSTANCE_PROFILE,
                },
                "capacity": {
                    "minInstances": min,
                    "maxInstances": max,
                    "sessionsPerInstance": 2,
                    "warmInstances": 0,
                },
                "scaling": {
                    "scaleDownStabilizationSeconds": 5,
                    "idleTimeoutSeconds": 2,
                    "drainTimeoutSeconds": 60,
                    "readyTimeoutSeconds": 60,
                    "maxLaunchesPerMinute": 30,
                },
                "agent": {
                    "browserPortRange": {"start": 9300, "end": 9399},
                    "browser": {
                        "executable": CHROMIUM,
                        "headless": true,
                        "extraArgs": TEST_BROWSER_ARGS,
                    },
                },
            },
        })
    }

    /// The fleet API of this world's namespace.
    pub fn fleets(&self) -> Api<BrowserFleet> {
        self.cluster.api()
    }

    /// Creates or updates the fleet by server-side apply (as kubectl
    /// --server-side does).
    pub async fn apply(&self, manifest: &Value) {
        self.fleets()
            .patch(
                &self.name,
                &PatchParams::apply("e2e-test").force(),
                &Patch::Apply(manifest),
            )
            .await
            .expect("fleet applied");
    }

    /// Deletes the fleet.
    pub async fn delete(&self) {
        self.fleets()
            .delete(&self.name, &DeleteParams::default())
            .await
            .expect("fleet deleted");
    }

    /// The fleet now.
    pub async fn get(&self) -> BrowserFleet {
        self.fleets().get(&self.name).await.expect("fleet exists")
    }

    /// Waits until `check` holds for the fleet, and returns the fleet it
    /// held for; on timeout, fails showing the fleet's last status.
    pub async fn wait_for(
        &self,
        what: &str,
        check: impl Fn(&BrowserFleet) -> bool,
    ) -> BrowserFleet {
        match watch_until(self.fleets(), &self.name, check).await {
            Ok(fleet) => fleet,
            Err(last) => panic!(
                "{what}: not within {WAIT:?}; the fleet's status was {:#?}",
                last.and_then(|f| f.status)
            ),
        }
    }

    /// A BrowserSession manifest on this world's fleet; `spec` adds to (or
    /// replaces) the fields of its spec.
    pub fn session(&self, name: &str, spec: Value) -> Value {
        let mut manifest = json!({
            "apiVersion": "browserfleet.io/v1alpha1",
            "kind": "BrowserSession",
            "metadata": {"name": name},
            "spec": {"fleetRef": {"name": self.name}, "ttlSeconds": 300},
        });
        if let (Some(base), Value::Object(extra)) = (manifest["spec"].as_object_mut(), spec) {
            base.extend(extra);
        }
        manifest
    }

    /// The session API of this world's namespace.
    pub fn sessions(&self) -> Api<BrowserSession> {
        self.cluster.api()
    }

    /// Creates or updates a session by server-side apply.
    pub async fn apply_session(&self, manifest: &Value) {
        let name = manifest["metadata"]["name"].as_str().expect("named");
        self.sessions()
            .patch(
                name,
                &PatchParams::apply("e2e-test").force(),
                &Patch::Apply(manifest),
            )
            .await
            .expect("session applied");
    }

    /// Waits until `check` holds for session `name`, and returns it; on
    /// timeout, fails showing its last status.
    pub async fn wait_for_session(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&BrowserSession) -> bool,
    ) -> BrowserSession {
        match watch_until(self.sessions(), name, check).await {
            Ok(session) => session,
            Err(last) => panic!(
                "session {name}: {what}: not within {WAIT:?}; its status was {:#?}",
                last.and_then(|s| s.status)
            ),
        }
    }

    /// Waits until session `name` is in `wanted`.
    pub async fn wait_for_phase(&self, name: &str, wanted: SessionPhase) -> BrowserSession {
        self.wait_for_session(name, &format!("{wanted:?}"), in_phase(wanted))
            .await
    }

    /// The token the fleet's agents accept, from the fleet's Secret.
    pub async fn fleet_token(&self) -> String {
        self.fleet_secret("fleetToken").await
    }

    /// Key `key` of the fleet's Secret (`fleetToken`, `callbackSecret`).
    pub async fn fleet_secret(&self, key: &str) -> String {
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = self.cluster.api();
        let secret = secrets
            .get(&browserfleet::operator::secrets::secret_name(&self.name))
            .await
            .expect("fleet Secret");
        String::from_utf8(secret.data.expect("data")[key].0.clone()).expect("UTF-8")
    }

    /// The token of a ready session, from its credentials Secret.
    pub async fn session_token(&self, session: &BrowserSession) -> String {
        let name = session
            .status
            .as_ref()
            .and_then(|s| s.credentials_secret.clone())
            .expect("credentialsSecret");
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = self.cluster.api();
        let secret = secrets.get(&name).await.expect("credentials Secret");
        String::from_utf8(secret.data.expect("data")["token"].0.clone()).expect("UTF-8")
    }

    /// The reasons of the Events about the fleet, as they are now.
    pub async fn fleet_event_reasons(&self) -> Vec<String> {
        let events: Api<k8s_openapi::api::events::v1::Event> = self.cluster.api();
        let listed = events.list(&Default::default()).await.expect("list Events");
        listed
            .items
            .into_iter()
            .filter(|e| {
                e.regarding
                    .as_ref()
                    .is_some_and(|r| r.kind.as_deref() == Some("BrowserFleet"))
            })
            .filter_map(|e| e.reason)
            .collect()
    }

    /// Deletes session `name`.
    pub async fn delete_session(&self, name: &str) {
        self.sessions()
            .delete(name, &DeleteParams::default())
            .await
            .expect("session deleted");
    }

    /// Waits until the agents the fleet's status lists have put `more`
    /// creates back after this call (see [`crate::agent_world::wait_put_back`]).
    ///
    /// The addresses are read again on every poll: under load the fleet's
    /// status may list an agent's address only after the call (CI once saw
    /// none at the call and waited for a count that could never grow).
    pub async fn wait_put_back(&self, more: u32) {
        let addresses = || async {
            self.get()
                .await
                .status
                .map(|s| {
                    s.instances
                        .into_iter()
                        .filter_map(|i| i.address)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        crate::agent_world::eventually(
            "the fleet's status lists its agents' addresses",
            Duration::from_secs(90),
            || async { !addresses().await.is_empty() },
        )
        .await;
        crate::agent_world::wait_grown("creates put back", more, || async {
            crate::agent_world::requests_put_back(&addresses().await).await
        })
        .await;
    }

    /// Waits until the fleet is gone (its finalizer removed, the object
    /// deleted), within `limit`.
    pub async fn wait_fleet_gone(&self, limit: Duration) {
        if !watch_gone(self.fleets(), &self.name, limit).await {
            panic!("fleet {}: not gone within {limit:?}", self.name);
        }
    }

    /// Waits until session `name` is gone, within [`WAIT`].
    pub async fn wait_session_gone(&self, name: &str) {
        if !watch_gone(self.sessions(), name, WAIT).await {
            panic!("session {name}: not gone within {WAIT:?}");
        }
    }

    /// The fleet's identity in AWS.
    pub async fn fleet_id(&self) -> FleetId {
        let fleet = self.get().await;
        FleetId::new(&self.cluster.ns, &self.name, fleet.uid().expect("uid")).expect("fleet id")
    }

    /// The fleet's non-terminated instances, as EC2 lists them.
    pub async fn instances(&self) -> Vec<FleetInstance> {
        let id = self.fleet_id().await;
        Ec2Compute::new(&self.aws)
            .list_instances(&id)
            .await
            .expect("list instances")
    }

    /// A queue of this world's own that replies are sent to.
    pub async fn reply_queue(&self) -> QueueUrl {
        let id = self.fleet_id().await;
        let mut definition = QueueDefinition::events_for(&id);
        // Not `bf-…`: a fleet's own node policy lets its agents reply to any
        // queue of the account except browserfleet's (`node-policy`).
        let stem = definition.name.trim_start_matches("bf-");
        definition.name = format!("replies-{}", stem.trim_end_matches("-events"));
        Sqs::new(&self.aws)
            .ensure_queue(&definition)
            .await
            .expect("reply queue")
            .url
    }

    /// The request queue in status.
    pub async fn request_queue(&self) -> QueueUrl {
        let fleet = self.get().await;
        let url = fleet
            .status
            .and_then(|s| s.queues)
            .and_then(|q| q.requests)
            .expect("request queue in status");
        QueueUrl::new(url)
    }

    /// The events queue in status.
    pub async fn events_queue(&self) -> QueueUrl {
        let fleet = self.get().await;
        let url = fleet
            .status
            .and_then(|s| s.queues)
            .and_then(|q| q.events)
            .expect("events queue in status");
        QueueUrl::new(url)
    }

    /// Sends `count` session requests replying to `reply_to`.
    pub async fn send_requests(
        &self,
        prefix: &str,
        count: usize,
        reply_to: &QueueUrl,
        ttl_seconds: u32,
    ) {
        let sqs = Sqs::new(&self.aws);
        let requests = self.request_queue().await;
        let messages: Vec<OutgoingMessage> = (0..count)
            .map(|n| OutgoingMessage {
                body: json!({
                    "version": 1,
                    "action": "create",
                    "sessionId": format!("{prefix}-{n}"),
                    "ttlSeconds": ttl_seconds,
                    "replyTo": reply_to.as_str(),
                })
                .to_string(),
                delay: Duration::ZERO,
                attributes: Default::default(),
            })
            .collect();
        let outcome = sqs
            .send_batch(&requests, &messages)
            .await
            .expect("send requests");
        assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    }
}

/// A session's phase (`Pending` before it has a status).
pub fn phase(session: &BrowserSession) -> SessionPhase {
    session.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// A check that a session is in `wanted`.
pub fn in_phase(wanted: SessionPhase) -> impl Fn(&BrowserSession) -> bool {
    move |s| phase(s) == wanted
}

/// The fleet's condition `type_`, as (status, reason).
pub fn condition(fleet: &BrowserFleet, type_: &str) -> Option<(String, String)> {
    fleet
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Whether the fleet's condition `type_` has `status`.
pub fn has_condition(fleet: &BrowserFleet, type_: &str, status: &str) -> bool {
    condition(fleet, type_).is_some_and(|(s, _)| s == status)
}

/// Reads replies until `count` of `kind` arrived.
pub async fn replies(
    world: &OperatorWorld,
    queue: &QueueUrl,
    kind: &str,
    count: usize,
) -> Vec<Value> {
    let sqs = Sqs::new(&world.aws);
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while found.len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {count} {kind} replies arrived",
            found.len()
        );
        let messages = receive_batch(&sqs, queue, None).await;
        for message in messages {
            let body: Value = serde_json::from_str(&message.body).expect("reply is JSON");
            sqs.delete(queue, &message.receipt)
                .await
                .expect("delete reply");
            assert_ne!(body["type"], "session.failed", "{body}");
            if body["type"] == kind {
                found.push(body);
            }
        }
    }
    found
}
