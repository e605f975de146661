//! Scenario: the BrowserSession reconciler's performance numbers, in a world
//! of its own: moto, the development API server in this process with the
//! CRDs, an AMI, two subnets and a security group in moto, the real
//! operator, and (where browsers run) the node simulator starting the real
//! `browserfleet agent` binary per moto instance with real headless
//! Chromium. Every address dialled is on 127.0.0.1.
//!
//! 1. **enqueue**: a `BrowserSession` created → its request on the fleet's
//!    request queue, with production settings (`Settings::default()`), on a
//!    paused fleet of 0 to 1 instances (nothing launches, no agent takes the
//!    message). The clock starts just before `Api::create` and stops when a
//!    long-poll receiver of the benchmark's own, open on the request queue
//!    the whole time, gets the message whose `sessionId` is `bs-<uid>`; so
//!    it includes moto's long-poll wake-up. Sequential trials.
//! 2. **ready**: created → `Ready` on a fleet of one instance of four slots
//!    (so its agent always has a free slot and always polls the queue), one
//!    session at a time; compared with the agent's own launch time (the
//!    growth of its `browserfleet_agent_launch_seconds` histogram across
//!    each trial). Each session is deleted, and gone, before the next.
//! 3. **thousand**: the release operator as its own process. 1,000 sessions
//!    created at once on a paused fleet: time until all are `Starting`, the
//!    messages on the request queue, the operator's resident memory. Then
//!    the sessions that do run browsers: 50 on a fleet of 0 to 5 instances
//!    of 10 slots, scaling from zero, until all are `Ready` (100 overload
//!    this machine: see [`BROWSER_SESSIONS`]).
//!
//! Run with `make sessions-bench`, or `cargo bench --bench sessions --
//! enqueue` (or `ready`, `thousand`) for one part; no argument runs all
//! three; `browsers` runs the second half of part 3 alone. The operator in
//! parts 1 and 2 logs warnings to standard error (`RUST_LOG` overrides);
//! part 3's operator and agent logs are summarised.

use testkit::moto;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use browserfleet::api::session::SessionPhase;
use browserfleet::api::{BrowserFleet, BrowserSession};
use browserfleet::cloud::{Aws, QueueUrl, Queues, ReceiveOptions, Sqs};
use browserfleet::operator::context::Settings;
use devcluster::nodes::{NodeOptions, NodeSimulator, PortPool};
use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use testkit::bench::{
    Cluster, InProcess, loadavg, meminfo_kib, metric_sum, ms, percentile, scrape, status_kib, until,
};
use tokio::io::AsyncBufReadExt;
use tokio::sync::Notify;

const CHROMIUM: &str = "/usr/bin/chromium";
/// What Chromium needs on this machine: it runs as root (no sandbox) and
/// has no GPU.
const BROWSER_ARGS: [&str; 2] = ["--no-sandbox", "--disable-gpu"];
/// The agent binary the node simulator runs and the operator binary of
/// part 3: the one `cargo bench` builds beside this benchmark (release).
const BINARY: &str = env!("CARGO_BIN_EXE_browserfleet");

/// Sessions enqueued one after another: enough for a p90 that is not the
/// maximum, and a few seconds in all.
const ENQUEUE_TRIALS: usize = 30;
/// Pause after each enqueue trial, so that a trial's follow-up work (its
/// `Requested` Event, the reconcile its own status write triggers) is not
/// in the next trial's time.
const ENQUEUE_GAP: Duration = Duration::from_millis(200);
/// Sessions made `Ready` one after another; each starts one Chromium.
const READY_TRIALS: usize = 20;
/// Slots of the ready part's one instance: a session at a time takes one,
/// so the agent always has a free slot and its queue poll is always open.
const READY_SLOTS: i32 = 4;
/// Pause after a ready trial's session is gone, so that the ended browser's
/// teardown does not compete with the next launch for the two cores.
const READY_GAP: Duration = Duration::from_millis(500);
/// Sessions created at once on the paused fleet: the scale a busy
/// namespace reaches. None of them gets a browser: 1,000 Chromium
/// processes (150 MB and more each) do not fit in 24 GiB, nor on 2 cores.
const THOUSAND: usize = 1_000;
/// Creates in flight at once, as a batch client with a connection pool
/// would send them.
const CREATES_IN_FLIGHT: usize = 50;
/// Sessions that do get browsers, all created at once: 50, what this
/// machine (2 cores, 24 GiB) starts cleanly. 100 were tried first (twice):
/// memory held (90 browsers left 8 GB free), but 100 Chromium starts at once
/// drove the load average past 100, moto stalled for over 60 s, one
/// agent's configuration read timed out at boot so it exited (and the node
/// simulator keeps it down), agents' replies timed out and their requests
/// were started again elsewhere; 90 sessions were Ready after about 140 s
/// and the last 10 only once the first ones' 300 s TTL freed slots.
const BROWSER_SESSIONS: usize = 50;
/// The browser fleet's ceiling; with [`BROWSER_SLOTS`] it holds exactly
/// [`BROWSER_SESSIONS`].
const BROWSER_INSTANCES: i32 = 5;
/// Slots per instance of the browser fleet.
const BROWSER_SLOTS: i32 = 10;
/// How long the browser sessions may take to be Ready: launches, agent
/// starts and as many Chromium starts on two cores; short of their 300 s
/// TTL, so that no slot is freed by an expiry.
const BROWSER_DEADLINE: Duration = Duration::from_secs(280);

/// What every part runs against.
struct World {
    cluster: Cluster,
    work: tempfile::TempDir,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |part: &str| only.is_empty() || only.iter().any(|o| o == part);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let moto = moto::moto();
    moto::use_endpoint(&moto.endpoint);
    let world = World::build().await?;
    println!("binary: {BINARY}");
    println!("machine load at start: {}", loadavg());
    if wanted("enqueue") {
        enqueue(&world).await?;
    }
    if wanted("ready") {
        ready(&world).await?;
    }
    if wanted("thousand") {
        thousand(&world).await?;
    }
    if wanted("thousand") || wanted("browsers") {
        browsers(&world).await?;
    }
    println!("machine load at end: {}", loadavg());
    Ok(())
}

impl World {
    async fn build() -> anyhow::Result<World> {
        Ok(World {
            cluster: Cluster::start("sessions").await?,
            work: tempfile::tempdir()?,
        })
    }

    /// A Linux fleet of headless Chromium with the default scaling timers.
    fn fleet(&self, name: &str, min: i32, max: i32, slots: i32, paused: bool) -> Value {
        json!({
            "apiVersion": "browserfleet.io/v1alpha1",
            "kind": "BrowserFleet",
            "metadata": {"name": name},
            "spec": {
                "instance": {
                    "platform": "Linux",
                    "image": {"imageId": self.cluster.image_id},
                    "instanceTypes": ["m6i.large"],
                    "subnetIds": self.cluster.subnets,
                    "securityGroupIds": [self.cluster.security_group],
                    "instanceProfile": moto::INSTANCE_PROFILE,
                },
                "capacity": {
                    "minInstances": min,
                    "maxInstances": max,
                    "sessionsPerInstance": slots,
                    "warmInstances": 0,
                },
                "paused": paused,
                "agent": {
                    "browserPortRange": {"start": 9300, "end": 9399},
                    "browser": {
                        "executable": CHROMIUM,
                        "headless": true,
                        "extraArgs": BROWSER_ARGS,
                    },
                },
            },
        })
    }

    /// A namespace of its own, with the fleet `manifest` applied in it.
    async fn namespace_with(
        &self,
        name: &str,
        manifest: &Value,
    ) -> anyhow::Result<(Api<BrowserFleet>, Api<BrowserSession>)> {
        self.cluster.create_namespace(name).await?;
        let fleets: Api<BrowserFleet> = Api::namespaced(self.cluster.client.clone(), name);
        let fleet = manifest["metadata"]["name"].as_str().unwrap_or_default();
        fleets
            .patch(
                fleet,
                &PatchParams::apply("sessions-bench").force(),
                &Patch::Apply(manifest),
            )
            .await?;
        Ok((fleets, Api::namespaced(self.cluster.client.clone(), name)))
    }

    /// The node simulator for fleet `namespace/name`, with `blocks` blocks
    /// of `per_node` browser ports, out of a range of this process's own.
    fn nodes(
        &self,
        namespace: &str,
        name: &str,
        blocks: u16,
        per_node: u16,
    ) -> anyhow::Result<NodeSimulator> {
        let mut options = NodeOptions::new(BINARY, self.work.path().join(namespace));
        options.only_fleets = Some(BTreeSet::from([format!("{namespace}/{name}")]));
        options.poll_interval = Duration::from_millis(200);
        // Below Linux's ephemeral range (32768–60999 here): a browser port
        // that an outgoing connection holds leaves its slot unusable (the
        // agent gives the request back, "no slot for a request"), which
        // left sessions Starting in a first run. Above what the demo (19000…)
        // and the tests (20000…) take.
        let first = 10_000 + (std::process::id() % 40) as u16 * 200;
        options.browser_ports = PortPool {
            first,
            last: first + blocks * per_node - 1,
            per_node,
        };
        Ok(NodeSimulator::start(&self.cluster.aws, options)?)
    }
}

/// A BrowserSession on `fleet`, as a user writes it.
fn session(name: &str, fleet: &str) -> anyhow::Result<BrowserSession> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "browserfleet.io/v1alpha1",
        "kind": "BrowserSession",
        "metadata": {"name": name},
        "spec": {"fleetRef": {"name": fleet}, "ttlSeconds": 300},
    }))?)
}

/// The fleet's request queue, once its reconcile created its queues.
async fn request_queue(fleets: &Api<BrowserFleet>, name: &str) -> anyhow::Result<QueueUrl> {
    let queues = |fleet: &BrowserFleet| {
        let queues = fleet.status.as_ref()?.queues.as_ref()?;
        queues.events.as_ref()?;
        queues.requests.clone()
    };
    until(
        "fleet queues in status",
        Duration::from_secs(60),
        || async {
            fleets
                .get(name)
                .await
                .ok()
                .as_ref()
                .and_then(queues)
                .is_some()
        },
    )
    .await?;
    let fleet = fleets.get(name).await?;
    queues(&fleet)
        .map(QueueUrl::new)
        .context("request queue in status")
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn mean(samples: &[Duration]) -> Duration {
    samples.iter().sum::<Duration>() / u32::try_from(samples.len().max(1)).unwrap_or(1)
}

/// A table row of p50, p90 and max of `samples`.
fn row(what: &str, samples: &[Duration]) {
    let mut sorted = samples.to_vec();
    sorted.sort();
    println!(
        "| {what} | {} | {} | {} | {} |",
        ms(percentile(&sorted, 0.5)),
        ms(percentile(&sorted, 0.9)),
        ms(percentile(&sorted, 1.0)),
        ms(mean(&sorted)),
    );
}

/// The launch histogram of the agent at `address`: (sum of seconds, count).
async fn launch_seconds(address: &str) -> anyhow::Result<(f64, f64)> {
    let text = scrape(address).await?;
    Ok((
        metric_sum(&text, "browserfleet_agent_launch_seconds_sum", &[]),
        metric_sum(&text, "browserfleet_agent_launch_seconds_count", &[]),
    ))
}

// ---------------------------------------------------------------------------
// What the benchmark watches.

/// When a watch on one namespace's sessions first saw each session in each
/// phase, and its deletion. The instants include the watch's delivery from
/// the development API server (in this process).
struct PhaseLog {
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Seen {
    phases: Vec<(SessionPhase, Instant)>,
    gone: Option<Instant>,
}

impl Seen {
    fn at(&self, phase: SessionPhase) -> Option<Instant> {
        self.phases
            .iter()
            .find(|(p, _)| *p == phase)
            .map(|(_, at)| *at)
    }

    /// Whether its request was recorded: any phase after `Pending`.
    fn requested(&self) -> bool {
        self.phases.iter().any(|(p, _)| *p != SessionPhase::Pending)
    }

    fn current(&self) -> Option<SessionPhase> {
        self.phases.last().map(|(p, _)| *p)
    }
}

impl PhaseLog {
    fn watch(sessions: Api<BrowserSession>) -> PhaseLog {
        let seen: Arc<Mutex<HashMap<String, Seen>>> = Arc::default();
        let changed = Arc::new(Notify::new());
        let (log, notify) = (seen.clone(), changed.clone());
        let task = tokio::spawn(async move {
            let mut events = watcher(sessions, watcher::Config::default()).boxed();
            while let Some(event) = events.next().await {
                let at = Instant::now();
                let (session, gone) = match event {
                    Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => (s, false),
                    Ok(watcher::Event::Delete(s)) => (s, true),
                    _ => continue,
                };
                let phase = session.status.as_ref().map(|s| s.phase).unwrap_or_default();
                {
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    let entry = log.entry(session.name_any()).or_default();
                    if entry.current() != Some(phase) {
                        entry.phases.push((phase, at));
                    }
                    if gone {
                        entry.gone = Some(at);
                    }
                }
                notify.notify_waiters();
            }
        });
        PhaseLog {
            seen,
            changed,
            task,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Seen>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many sessions `count` counts.
    fn count(&self, count: impl Fn(&Seen) -> bool) -> usize {
        self.lock().values().filter(|s| count(s)).count()
    }

    /// Waits until `check` holds for what was seen, for at most `deadline`.
    async fn wait(
        &self,
        what: &str,
        deadline: Duration,
        check: impl Fn(&HashMap<String, Seen>) -> bool,
    ) -> anyhow::Result<()> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            // Registered before the check: a change between the two wakes it.
            let changed = self.changed.notified();
            if check(&self.lock()) {
                return Ok(());
            }
            if tokio::time::timeout_at(until, changed).await.is_err() {
                bail!("{what}: not within {deadline:?}");
            }
        }
    }
}

impl Drop for PhaseLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A receiver long-polling a queue the whole time: each message's
/// `sessionId` with the instant its `ReceiveMessage` returned; every message
/// is deleted after reading.
struct QueueReceiver {
    received: tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>,
    task: tokio::task::JoinHandle<()>,
}

impl QueueReceiver {
    fn start(aws: &Aws, queue: QueueUrl) -> QueueReceiver {
        let sqs = Sqs::new(aws);
        let (tx, received) = tokio::sync::mpsc::unbounded_channel();
        let options = ReceiveOptions {
            max_messages: 10,
            wait: Duration::from_secs(20),
            visibility: Some(Duration::from_secs(5)),
        };
        let task = tokio::spawn(async move {
            loop {
                let messages = match sqs.receive(&queue, options).await {
                    Ok(messages) => messages,
                    Err(error) => {
                        eprintln!("request queue receive failed: {error}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let at = Instant::now();
                for message in messages {
                    let id = serde_json::from_str::<Value>(&message.body)
                        .ok()
                        .and_then(|b| b["sessionId"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    if let Err(error) = sqs.delete(&queue, &message.receipt).await {
                        eprintln!("deleting a request failed: {error}");
                    }
                    if tx.send((id, at)).is_err() {
                        return;
                    }
                }
            }
        });
        QueueReceiver { received, task }
    }

    /// When the message of session `id` was received.
    async fn received(&mut self, id: &str, deadline: Duration) -> anyhow::Result<Instant> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            match tokio::time::timeout_at(until, self.received.recv()).await {
                Ok(Some((got, at))) if got == id => return Ok(at),
                Ok(Some((got, _))) => eprintln!("an unexpected request on the queue: {got}"),
                Ok(None) => bail!("the receiver stopped"),
                Err(_) => bail!("request of {id}: not received within {deadline:?}"),
            }
        }
    }
}

impl Drop for QueueReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The highest `VmRSS` of a process, sampled every 200 ms, and the lowest
/// `MemAvailable` of the machine meanwhile.
struct Sampler {
    rss_max: Arc<AtomicU64>,
    available_min: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let rss_max = Arc::new(AtomicU64::new(0));
        let available_min = Arc::new(AtomicU64::new(u64::MAX));
        let (rss, available) = (rss_max.clone(), available_min.clone());
        let task = tokio::spawn(async move {
            loop {
                if let Ok(kib) = status_kib(pid, "VmRSS:") {
                    rss.fetch_max(kib, Ordering::SeqCst);
                }
                if let Ok(kib) = meminfo_kib("MemAvailable:") {
                    available.fetch_min(kib, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Sampler {
            rss_max,
            available_min,
            task,
        }
    }

    fn rss_max_kib(&self) -> u64 {
        self.rss_max.load(Ordering::SeqCst)
    }

    fn available_min_kib(&self) -> u64 {
        self.available_min.load(Ordering::SeqCst)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn mb(kib: u64) -> String {
    format!("{:.1} MB", kib as f64 / 1024.0)
}

// ---------------------------------------------------------------------------
// The operators.

/// The release operator as its own process, production settings, its log
/// in a file.
struct OperatorProcess {
    child: tokio::process::Child,
    pid: u32,
    /// Where it serves `/metrics`.
    address: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl OperatorProcess {
    async fn start(world: &World, namespace: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, &world.cluster.kubeconfig)?;
        let log = dir.path().join("operator.log");
        // The moto environment (AWS_ENDPOINT_URL, credentials, region) is
        // this process's, set by moto::use_endpoint, and inherited.
        let mut child = tokio::process::Command::new(BINARY)
            .args(["operator", "--namespace", namespace])
            .args(["--listen", "127.0.0.1:0"])
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {BINARY}"))?;
        let pid = child.id().context("operator pid")?;
        // `listening on ADDR` once it serves.
        let stdout = child.stdout.take().context("operator stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("operator did not report its address")??
            .context("operator exited")?;
        let address = line
            .strip_prefix("listening on ")
            .with_context(|| format!("operator printed {line:?}"))?
            .to_owned();
        Ok(OperatorProcess {
            child,
            pid,
            address,
            log,
            _dir: dir,
        })
    }

    fn kib(&self, field: &str) -> anyhow::Result<u64> {
        status_kib(self.pid, field)
    }

    /// Its AWS calls of `operation` so far: (count, seconds in all).
    async fn calls(&self, operation: &str) -> anyhow::Result<(f64, f64)> {
        let text = scrape(&self.address).await?;
        let label = format!("operation=\"{operation}\"");
        let sum = |name: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(name) && l.contains(&label))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        Ok((
            sum("browserfleet_aws_calls_total"),
            sum("browserfleet_aws_call_seconds_total"),
        ))
    }

    /// Stops it and prints what its log holds beyond `INFO`.
    async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let notable = notable_lines(&log);
        println!(
            "operator log: {} lines, {} WARN/ERROR",
            log.lines().count(),
            notable.iter().map(|(_, n)| n).sum::<usize>()
        );
        for (message, count) in notable.iter().take(8) {
            println!("    {count} × {message}");
        }
        Ok(())
    }
}

/// The WARN and ERROR lines of a log in tracing's text format, counted by
/// level, target and message (spans and fields left out), most frequent
/// first, each with the fields of its first line.
fn notable_lines(text: &str) -> Vec<(String, usize)> {
    let mut counts: HashMap<String, (usize, String)> = HashMap::new();
    for line in text.lines() {
        let Some(level) = ["WARN", "ERROR"].into_iter().find(|l| line.contains(l)) else {
            continue;
        };
        // `… LEVEL spans: target: message field=value …`
        let rest = line.find("browserfleet::").map_or(line, |at| &line[at..]);
        let (target, message) = rest.split_once(": ").unwrap_or(("", rest));
        let words: Vec<&str> = message
            .split_whitespace()
            .take_while(|w| !w.contains('='))
            .collect();
        let fields = message
            .split_whitespace()
            .skip(words.len())
            .collect::<Vec<_>>()
            .join(" ");
        let entry = counts
            .entry(format!("{level} {target}: {}", words.join(" ")))
            .or_insert_with(|| {
                let at = line.split_whitespace().next().unwrap_or_default();
                (
                    0,
                    format!("{at} {}", fields.chars().take(240).collect::<String>()),
                )
            });
        entry.0 += 1;
    }
    let mut sorted: Vec<(String, usize)> = counts
        .into_iter()
        .map(|(message, (count, first))| (format!("{message} [first: {first}]"), count))
        .collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sorted
}

/// Creates `names` on `fleet` with [`CREATES_IN_FLIGHT`] creates in flight.
async fn create_all(
    sessions: &Api<BrowserSession>,
    names: &[String],
    fleet: &str,
) -> anyhow::Result<()> {
    let mut manifests = Vec::with_capacity(names.len());
    for name in names {
        manifests.push(session(name, fleet)?);
    }
    let results: Vec<Result<BrowserSession, kube::Error>> = futures::stream::iter(manifests)
        .map(|manifest| {
            let sessions = sessions.clone();
            async move { sessions.create(&PostParams::default(), &manifest).await }
        })
        .buffer_unordered(CREATES_IN_FLIGHT)
        .collect()
        .await;
    for result in results {
        result?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 1. Created → on the request queue.

async fn enqueue(world: &World) -> anyhow::Result<()> {
    let namespace = "bench-enqueue";
    let fleet = world.fleet("paused", 0, 1, 4, true);
    let (fleets, sessions) = world.namespace_with(namespace, &fleet).await?;
    let operator = InProcess::start(&world.cluster.client, namespace, Settings::default()).await?;
    let requests = request_queue(&fleets, "paused").await?;
    let mut receiver = QueueReceiver::start(&world.cluster.aws, requests);
    let load_before = loadavg();
    let mut latencies = Vec::new();
    let mut creates = Vec::new();
    let mut sends = Vec::new();
    // Trial 0 warms the connections and the controller up; not counted.
    for trial in 0..=ENQUEUE_TRIALS {
        let sent_before = operator.sends();
        let manifest = session(&format!("enqueue-{trial}"), "paused")?;
        let t0 = Instant::now();
        let created = sessions.create(&PostParams::default(), &manifest).await?;
        let create = t0.elapsed();
        let id = format!("bs-{}", created.uid().context("uid")?);
        let at = receiver.received(&id, Duration::from_secs(30)).await?;
        let sent = operator.sends();
        if trial == 0 {
            println!("warm-up trial (not counted): {}", ms(at - t0));
        } else {
            latencies.push(at - t0);
            creates.push(create);
            sends.push(sent.total_latency - sent_before.total_latency);
        }
        tokio::time::sleep(ENQUEUE_GAP).await;
    }
    let load_after = loadavg();
    drop(receiver);
    operator.stop().await?;
    println!();
    println!(
        "BrowserSession created → its request received from the request queue; operator in \
         process, Settings::default(); paused fleet 0..1; {ENQUEUE_TRIALS} trials, one at a time"
    );
    println!("command: cargo bench --bench sessions -- enqueue; load {load_before} → {load_after}");
    println!();
    println!("| measure | p50 | p90 | max | mean |");
    println!("|---|---:|---:|---:|---:|");
    row(
        "created → received (incl. moto's long-poll wake-up)",
        &latencies,
    );
    row("of which: the create call", &creates);
    row("of which: the operator's SendMessage in moto", &sends);
    let each: Vec<String> = latencies.iter().map(|d| ms(*d)).collect();
    println!();
    println!("trials: {}", each.join(", "));
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. Created → Ready with a free slot.

async fn ready(world: &World) -> anyhow::Result<()> {
    let namespace = "bench-ready";
    let fleet = world.fleet("ready", 1, 1, READY_SLOTS, false);
    let nodes = world.nodes(namespace, "ready", 4, READY_SLOTS as u16)?;
    let (fleets, sessions) = world.namespace_with(namespace, &fleet).await?;
    let operator = InProcess::start(&world.cluster.client, namespace, Settings::default()).await?;
    let log = PhaseLog::watch(sessions.clone());
    let started = Instant::now();
    let address = loop {
        let status = fleets.get("ready").await?.status.unwrap_or_default();
        let address = status.instances.iter().find_map(|i| i.address.clone());
        if let Some(address) = address.filter(|_| status.ready_instances == 1) {
            break address;
        }
        if started.elapsed() > Duration::from_secs(180) {
            bail!("no ready instance within 180 s: {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "ready part: the fleet's instance was ready {} after the fleet was applied",
        seconds(started.elapsed())
    );
    // Trial 0 is the instance's first browser (cold caches); not counted.
    let mut trials = Vec::new();
    let mut load_before = loadavg();
    for trial in 0..=READY_TRIALS {
        if trial == 1 {
            load_before = loadavg();
        }
        let name = format!("ready-{trial}");
        let measured = ready_trial(&sessions, &log, &address, &name).await?;
        if trial == 0 {
            println!("warm-up trial (not counted): {}", ms(measured.to_ready));
        } else {
            trials.push(measured);
        }
        sessions.delete(&name, &DeleteParams::default()).await?;
        log.wait("session gone", Duration::from_secs(60), |seen| {
            seen.get(&name).is_some_and(|s| s.gone.is_some())
        })
        .await?;
        tokio::time::sleep(READY_GAP).await;
    }
    let load_after = loadavg();
    drop(log);
    operator.stop().await?;
    nodes.shutdown().await;
    print_ready(&trials, &load_before, &load_after);
    Ok(())
}

/// One session from create to Ready, and the agent's own launch time for
/// it (the growth of its launch histogram's sum across the trial).
struct ReadyTrial {
    to_starting: Duration,
    to_ready: Duration,
    launch: Duration,
}

async fn ready_trial(
    sessions: &Api<BrowserSession>,
    log: &PhaseLog,
    address: &str,
    name: &str,
) -> anyhow::Result<ReadyTrial> {
    let (sum_before, count_before) = launch_seconds(address).await?;
    let manifest = session(name, "ready")?;
    let t0 = Instant::now();
    sessions.create(&PostParams::default(), &manifest).await?;
    log.wait(name, Duration::from_secs(60), |seen| {
        seen.get(name)
            .is_some_and(|s| s.current() == Some(SessionPhase::Ready) || s.gone.is_some())
    })
    .await?;
    let (starting, ready) = {
        let seen = log.lock();
        let entry = seen.get(name).context("seen")?;
        (
            entry.at(SessionPhase::Starting),
            entry.at(SessionPhase::Ready),
        )
    };
    let ready = ready.with_context(|| format!("{name} ended before it was Ready"))?;
    // The agent observes the histogram before it replies, so by Ready it
    // holds this launch.
    let (sum, count) = launch_seconds(address).await?;
    if count - count_before != 1.0 {
        bail!("{name}: {} launches counted", count - count_before);
    }
    Ok(ReadyTrial {
        to_starting: starting.map_or(Duration::ZERO, |s| s - t0),
        to_ready: ready - t0,
        launch: Duration::from_secs_f64((sum - sum_before).max(0.0)),
    })
}

fn print_ready(trials: &[ReadyTrial], load_before: &str, load_after: &str) {
    let to_starting: Vec<Duration> = trials.iter().map(|t| t.to_starting).collect();
    let to_ready: Vec<Duration> = trials.iter().map(|t| t.to_ready).collect();
    let launches: Vec<Duration> = trials.iter().map(|t| t.launch).collect();
    let overheads: Vec<Duration> = trials
        .iter()
        .map(|t| t.to_ready.saturating_sub(t.launch))
        .collect();
    let mut sorted = to_ready.clone();
    sorted.sort();
    let launch_mean = mean(&launches);
    println!();
    println!(
        "BrowserSession created → Ready, one at a time, on a fleet of 1 ready instance with \
         {READY_SLOTS} slots (real agent, headless Chromium); operator in process, \
         Settings::default(); {} trials",
        trials.len()
    );
    println!("command: cargo bench --bench sessions -- ready; load {load_before} → {load_after}");
    println!();
    println!("| measure | p50 | p90 | max | mean |");
    println!("|---|---:|---:|---:|---:|");
    row("created → Starting (watch)", &to_starting);
    row("created → Ready (watch)", &to_ready);
    row(
        "the agent's launch (browserfleet_agent_launch_seconds)",
        &launches,
    );
    row(
        "created → Ready − the agent's launch, per trial",
        &overheads,
    );
    println!();
    println!(
        "created → Ready p50 {} − agent launch mean {} = {} (operator, queues, watch)",
        ms(percentile(&sorted, 0.5)),
        ms(launch_mean),
        ms(percentile(&sorted, 0.5).saturating_sub(launch_mean))
    );
    let each: Vec<String> = trials
        .iter()
        .map(|t| format!("{} ({})", ms(t.to_ready), ms(t.launch)))
        .collect();
    println!(
        "trials, created → Ready (agent launch): {}",
        each.join(", ")
    );
}

// ---------------------------------------------------------------------------
// 3. A thousand at once (no browsers), then a hundred with browsers.

async fn thousand(world: &World) -> anyhow::Result<()> {
    let namespace = "bench-thousand";
    let fleet = world.fleet("paused", 0, 1, 4, true);
    let (fleets, sessions) = world.namespace_with(namespace, &fleet).await?;
    let operator = OperatorProcess::start(world, namespace).await?;
    let requests = request_queue(&fleets, "paused").await?;
    let log = PhaseLog::watch(sessions.clone());
    // Let the first reconciles settle before the baseline is read.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_idle = operator.kib("VmRSS:")?;
    let sends_before = operator.calls("SendMessage").await?;
    let sampler = Sampler::start(operator.pid);
    let load_before = loadavg();
    let names: Vec<String> = (0..THOUSAND).map(|n| format!("many-{n}")).collect();
    println!(
        "thousand part: sessions created at {}",
        jiff::Timestamp::now()
    );
    let started = Instant::now();
    create_all(&sessions, &names, "paused").await?;
    let created_in = started.elapsed();
    let all_starting = log
        .wait("all Starting", Duration::from_secs(600), |seen| {
            seen.values().filter(|s| s.requested()).count() == THOUSAND
        })
        .await;
    let starting_in = started.elapsed();
    if let Err(error) = &all_starting {
        println!(
            "NOT REACHED: {error}; {} of {THOUSAND} Starting",
            log.count(Seen::requested)
        );
    }
    let failed = log.count(|s| s.current() == Some(SessionPhase::Failed));
    let mut starting: Vec<Duration> = log
        .lock()
        .values()
        .filter_map(|s| s.at(SessionPhase::Starting))
        .map(|at| at - started)
        .collect();
    starting.sort();
    // moto's counts are exact; a few seconds for the last sends to land.
    let sqs = Sqs::new(&world.cluster.aws);
    let mut depth = sqs.depth(&requests).await?;
    let counting = Instant::now();
    while depth.visible + depth.in_flight + depth.delayed < THOUSAND as u64
        && counting.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        depth = sqs.depth(&requests).await?;
    }
    let sends_after = operator.calls("SendMessage").await?;
    let sends = sends_after.0 - sends_before.0;
    let send_mean =
        Duration::from_secs_f64(((sends_after.1 - sends_before.1) / sends.max(1.0)).max(0.0));
    // The operator with 1,000 sessions in its cache, settled.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_after = operator.kib("VmRSS:")?;
    let hwm = operator.kib("VmHWM:")?;
    let load_after = loadavg();
    println!();
    println!(
        "{THOUSAND} BrowserSessions created at once ({CREATES_IN_FLIGHT} creates in flight) on a \
         paused fleet: no browsers (1,000 Chromium processes do not fit this machine); release \
         operator as its own process, production settings"
    );
    println!(
        "command: cargo bench --bench sessions -- thousand ({BINARY} operator --namespace \
         {namespace} --listen 127.0.0.1:0); load {load_before} → {load_after}"
    );
    println!();
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| {THOUSAND} creates done | {} |", seconds(created_in));
    println!(
        "| first create → all Starting (watch) | {} |",
        seconds(starting_in)
    );
    if !starting.is_empty() {
        println!(
            "| first create → 10 % / 50 % / 90 % Starting | {} / {} / {} |",
            seconds(percentile(&starting, 0.1)),
            seconds(percentile(&starting, 0.5)),
            seconds(percentile(&starting, 0.9))
        );
        println!(
            "| Starting per second, 10 % → 90 % | {:.0} |",
            0.8 * THOUSAND as f64
                / (percentile(&starting, 0.9) - percentile(&starting, 0.1))
                    .as_secs_f64()
                    .max(0.001)
        );
    }
    println!("| sessions Failed | {failed} |");
    println!(
        "| the operator's SendMessage calls / mean latency (moto) | {sends:.0} / {} |",
        ms(send_mean)
    );
    println!(
        "| request queue: visible / in flight / delayed | {} / {} / {} |",
        depth.visible, depth.in_flight, depth.delayed
    );
    println!(
        "| operator VmRSS idle (fleet only) / max during / after | {} / {} / {} |",
        mb(rss_idle),
        mb(sampler.rss_max_kib()),
        mb(rss_after)
    );
    println!("| operator VmHWM | {} |", mb(hwm));
    drop(sampler);
    drop(log);
    operator.stop().await?;
    Ok(())
}

async fn browsers(world: &World) -> anyhow::Result<()> {
    let namespace = "bench-browsers";
    let fleet = world.fleet("browsers", 0, BROWSER_INSTANCES, BROWSER_SLOTS, false);
    // Spare port blocks for instances that replace failed ones.
    let nodes = world.nodes(
        namespace,
        "browsers",
        BROWSER_INSTANCES as u16 * 2,
        BROWSER_SLOTS as u16,
    )?;
    let (fleets, sessions) = world.namespace_with(namespace, &fleet).await?;
    let operator = OperatorProcess::start(world, namespace).await?;
    let requests = request_queue(&fleets, "browsers").await?;
    let log = PhaseLog::watch(sessions.clone());
    let sampler = Sampler::start(operator.pid);
    let load_before = loadavg();
    let names: Vec<String> = (0..BROWSER_SESSIONS)
        .map(|n| format!("browser-{n}"))
        .collect();
    println!(
        "browsers part: sessions created at {}",
        jiff::Timestamp::now()
    );
    let started = Instant::now();
    let timeline = Timeline::start(
        fleets.clone(),
        log.seen.clone(),
        world.work.path().join(namespace),
        started,
    );
    create_all(&sessions, &names, "browsers").await?;
    let created_in = started.elapsed();
    // Ever Ready: a session nobody connects to ends after the fleet's
    // neverUsedTimeoutSeconds (300 s), which a slow run could reach.
    let all_ready = log
        .wait("all Ready", BROWSER_DEADLINE, |seen| {
            let ready = seen
                .values()
                .filter(|s| s.at(SessionPhase::Ready).is_some())
                .count();
            let failed = seen
                .values()
                .any(|s| s.current() == Some(SessionPhase::Failed));
            ready == BROWSER_SESSIONS || failed
        })
        .await;
    let ready_in = started.elapsed();
    drop(timeline);
    let load_after = loadavg();
    let (ready_count, first_ready) = {
        let seen = log.lock();
        let ready: Vec<Instant> = seen
            .values()
            .filter_map(|s| s.at(SessionPhase::Ready))
            .collect();
        (ready.len(), ready.iter().min().map(|f| *f - started))
    };
    if let Err(error) = &all_ready {
        println!("NOT REACHED: {error}; {ready_count} of {BROWSER_SESSIONS} Ready");
        let depth = Sqs::new(&world.cluster.aws).depth(&requests).await?;
        println!(
            "request queue: visible {} / in flight {} / delayed {}",
            depth.visible, depth.in_flight, depth.delayed
        );
    }
    print_ended(&sessions).await?;
    let fleet_status = fleets.get("browsers").await?.status.unwrap_or_default();
    let (mut launch_sum, mut launch_count) = (0.0, 0.0);
    for instance in &fleet_status.instances {
        if let Some(address) = &instance.address
            && let Ok((sum, count)) = launch_seconds(address).await
        {
            launch_sum += sum;
            launch_count += count;
        }
    }
    let rss_max = sampler.rss_max_kib();
    let available_min = sampler.available_min_kib();
    let hwm = operator.kib("VmHWM:")?;
    drop(sampler);
    println!();
    println!(
        "{BROWSER_SESSIONS} BrowserSessions created at once on a fleet of 0..{BROWSER_INSTANCES} \
         instances × {BROWSER_SLOTS} slots, scaling from zero (node simulator: agents start as soon \
         as moto reports the instance running, no boot delay); release operator as its own process"
    );
    println!(
        "command: cargo bench --bench sessions -- browsers (or thousand); load {load_before} → {load_after}"
    );
    println!();
    println!("| measure | value |");
    println!("|---|---:|");
    println!(
        "| {BROWSER_SESSIONS} creates done | {} |",
        seconds(created_in)
    );
    println!(
        "| first create → first Ready | {} |",
        first_ready.map_or("none".to_owned(), seconds)
    );
    println!(
        "| first create → all {BROWSER_SESSIONS} Ready | {} |",
        if all_ready.is_ok() && ready_count == BROWSER_SESSIONS {
            seconds(ready_in)
        } else {
            format!("not reached ({ready_count} Ready at {})", seconds(ready_in))
        }
    );
    println!(
        "| instances current / ready | {} / {} |",
        fleet_status.current_instances, fleet_status.ready_instances
    );
    println!(
        "| agent launch time, mean over {launch_count:.0} launches | {} |",
        ms(Duration::from_secs_f64(
            (launch_sum / launch_count.max(1.0)).max(0.0)
        ))
    );
    println!(
        "| operator VmRSS max during / VmHWM | {} / {} |",
        mb(rss_max),
        mb(hwm)
    );
    println!(
        "| machine MemAvailable, lowest during | {} |",
        mb(available_min)
    );
    // Sessions are deleted (their browsers ended by the operator) before the
    // nodes stop; the simulator then kills whatever is left.
    println!("deleting the sessions at {}", jiff::Timestamp::now());
    let deleting = Instant::now();
    for name in &names {
        let _ = sessions.delete(name, &DeleteParams::default()).await;
    }
    let gone = log
        .wait("sessions gone", Duration::from_secs(300), |seen| {
            names
                .iter()
                .all(|n| seen.get(n).is_none_or(|s| s.gone.is_some()))
        })
        .await;
    match gone {
        Ok(()) => println!(
            "deleted → all {BROWSER_SESSIONS} gone (browsers ended by the operator): {}",
            seconds(deleting.elapsed())
        ),
        Err(error) => println!("cleanup: {error}"),
    }
    print_agent_logs(&world.work.path().join(namespace));
    drop(log);
    operator.stop().await?;
    nodes.shutdown().await;
    Ok(())
}

/// Sessions by phase, as `Pending 0, Starting 3, …`.
fn phase_counts(seen: &HashMap<String, Seen>) -> String {
    let mut counts: Vec<(SessionPhase, usize)> = Vec::new();
    for phase in seen.values().filter_map(Seen::current) {
        match counts.iter_mut().find(|(p, _)| *p == phase) {
            Some((_, n)) => *n += 1,
            None => counts.push((phase, 1)),
        }
    }
    let ever_ready = seen
        .values()
        .filter(|s| s.at(SessionPhase::Ready).is_some())
        .count();
    let mut parts: Vec<String> = counts.iter().map(|(p, n)| format!("{p:?} {n}")).collect();
    parts.sort();
    format!("{} (ever Ready {ever_ready})", parts.join(", "))
}

/// Prints, every 10 s, the fleet's instances, the sessions by phase, the
/// browsers running under `work`, the load and the memory left.
struct Timeline {
    task: tokio::task::JoinHandle<()>,
}

impl Timeline {
    fn start(
        fleets: Api<BrowserFleet>,
        seen: Arc<Mutex<HashMap<String, Seen>>>,
        work: PathBuf,
        started: Instant,
    ) -> Timeline {
        let marker = format!("--user-data-dir={}", work.display());
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let status = fleets
                    .get("browsers")
                    .await
                    .ok()
                    .and_then(|f| f.status)
                    .unwrap_or_default();
                let phases = phase_counts(&seen.lock().unwrap_or_else(|e| e.into_inner()));
                println!(
                    "  {:>5.0} s: instances {} ({} ready); {phases}; browsers {}; load {}; \
                     MemAvailable {}",
                    started.elapsed().as_secs_f64(),
                    status.current_instances,
                    status.ready_instances,
                    browser_processes(&marker),
                    loadavg(),
                    meminfo_kib("MemAvailable:").map_or("?".to_owned(), mb),
                );
            }
        });
        Timeline { task }
    }
}

impl Drop for Timeline {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Main browser processes (not their renderers, GPU or utility processes)
/// whose command line holds `marker`.
fn browser_processes(marker: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut count = 0;
    for entry in entries.flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains(marker) && !cmdline.contains("--type=") {
            count += 1;
        }
    }
    count
}

/// What ended sessions say: reasons and messages, counted.
async fn print_ended(sessions: &Api<BrowserSession>) -> anyhow::Result<()> {
    let mut ended: HashMap<String, usize> = HashMap::new();
    for session in sessions.list(&Default::default()).await?.items {
        let Some(status) = session.status else {
            continue;
        };
        if matches!(
            status.phase,
            SessionPhase::Terminated | SessionPhase::Failed
        ) {
            let key = format!(
                "{:?} {:?}: {}",
                status.phase,
                status.reason,
                status.message.unwrap_or_default()
            );
            *ended.entry(key).or_default() += 1;
        }
    }
    for (what, count) in ended {
        println!("ended: {count} × {what}");
    }
    Ok(())
}

/// The WARN and ERROR lines of the agents' logs (`<work>/<instance>.log`),
/// counted by message.
fn print_agent_logs(work: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(work) else {
        return;
    };
    let mut all = String::new();
    let mut agents = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            agents += 1;
            all.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
        }
    }
    let notable = notable_lines(&all);
    println!(
        "agent logs: {agents} agents, {} WARN/ERROR lines; {} requests given back for want of a \
         usable port (\"no slot for a request\", INFO)",
        notable.iter().map(|(_, n)| n).sum::<usize>(),
        all.lines()
            .filter(|l| l.contains("no slot for a request"))
            .count()
    );
    for (message, count) in notable.iter().take(8) {
        println!("    {count} × {message}");
    }
}
