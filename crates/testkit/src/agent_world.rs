//! The world an agent test runs in: moto queues of its own (requests with a
//! dead-letter queue, events, a requester's reply queue), a state directory,
//! a port range no other test uses, real Chromium, a callback receiver, and
//! a CDP client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use browserfleet::agent::config::{AgentConfig, AgentSettings};
use browserfleet::agent::intake::IntakeOptions;
use browserfleet::agent::{RunOptions, RunningAgent};
use browserfleet::cloud::{
    OutgoingMessage, QueueDefinition, QueueUrl, Queues, ReceiveOptions, ReceivedMessage, Sqs,
};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Chromium as the project's script installs it.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The message key of agent worlds' fleets (`protocol::signing`).
pub const MESSAGE_KEY: &str = "mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm";

/// Flags the sandboxed test machine needs: Chromium refuses to run as root
/// with its sandbox on, and has no GPU.
pub const TEST_BROWSER_ARGS: &[&str] = &["--no-sandbox", "--disable-gpu"];

static NEXT_RANGE: AtomicU16 = AtomicU16::new(0);

/// Where test port ranges are taken: below Linux's ephemeral ports
/// (32768–60999 by default), which outgoing connections take as their local
/// ports. A browser port in there is busy at the OS now and then; an agent
/// gives the request back each time, and after `maxReceiveCount` give-backs
/// it lands in the dead-letter queue (seen in CI as sessions that never
/// started).
const PORTS_FIRST: u32 = 10_000;
const PORTS_END: u32 = 32_000;

/// A port range of its own for each world: tests run in parallel.
pub fn port_range(size: u16) -> (u16, u16) {
    let span = PORTS_END - PORTS_FIRST - u32::from(size);
    let offset =
        (std::process::id() % 100) * 200 + u32::from(NEXT_RANGE.fetch_add(size, Ordering::Relaxed));
    let start = PORTS_FIRST + offset % span;
    let start = u16::try_from(start).expect("below 32000");
    (start, start + size - 1)
}

/// Queues and configuration for one agent.
pub struct AgentWorld {
    pub sqs: Sqs,
    pub requests: QueueUrl,
    pub dead_letter: QueueUrl,
    pub events: QueueUrl,
    pub replies: QueueUrl,
    pub state_dir: tempfile::TempDir,
    pub config: Value,
    /// The reply queue's definition, for other requesters' queues.
    reply_definition: QueueDefinition,
}

impl AgentWorld {
    /// Queues named after `name`, and a configuration with `slots` slots.
    pub async fn new(name: &str, slots: u16) -> Self {
        Self::with_queue(name, slots, &Default::default()).await
    }

    /// [`AgentWorld::new`] with its request queue made from `queue` (say,
    /// a lower `maxReceiveCount`).
    pub async fn with_queue(
        name: &str,
        slots: u16,
        queue: &browserfleet::api::fleet::QueueSpec,
    ) -> Self {
        let aws = super::aws().await;
        let sqs = Sqs::new(&aws);
        let fleet = super::unique_fleet(name);
        let mut requests = QueueDefinition::requests_for(&fleet, queue);
        requests.visibility_timeout = Duration::from_secs(60);
        let ensured = sqs.ensure_queue(&requests).await.expect("request queue");
        let events = sqs
            .ensure_queue(&QueueDefinition::events_for(&fleet))
            .await
            .expect("events queue");
        let mut reply = QueueDefinition::events_for(&fleet);
        reply.name = format!("{}-replies", reply.name.trim_end_matches("-events"));
        let replies = sqs.ensure_queue(&reply).await.expect("reply queue");
        let reply_definition = reply;
        let (first, last) = port_range(slots + 4);
        let state_dir = tempfile::tempdir().expect("state dir");
        let config = json!({
            "fleet": "tests/agent",
            "requestQueueUrl": ensured.url.as_str(),
            "deadLetterQueueUrl": ensured.dead_letter_url.as_ref().map(|u| u.as_str().to_owned()),
            "eventsQueueUrl": events.url.as_str(),
            "slots": slots,
            "gatewayPort": 0,
            "listenAddress": "127.0.0.1",
            "browserPortRange": {"start": first, "end": last},
            "browser": {
                "executable": CHROMIUM,
                "headless": true,
                "extraArgs": TEST_BROWSER_ARGS,
            },
            "sessions": {"defaultTtlSeconds": 300, "maxTtlSeconds": 600, "neverUsedTimeoutSeconds": 120},
            // Tests serve their pages on loopback; the node's own ports stay
            // refused (tests/suite/session_policy.rs checks the rest).
            "egress": {"proxyPort": 0, "allowed": ["127.0.0.0/8", "::1"]},
            "launchTimeoutSeconds": 30,
            "visibilityTimeoutSeconds": 60,
            "stateDir": state_dir.path(),
            "fleetToken": "f".repeat(40),
            "callbackSecret": "s".repeat(40),
            "messageKey": MESSAGE_KEY,
        });
        AgentWorld {
            sqs,
            requests: ensured.url,
            dead_letter: ensured.dead_letter_url.expect("dead-letter queue"),
            events: events.url,
            replies: replies.url,
            state_dir,
            config,
            reply_definition,
        }
    }

    /// The reply queue of another requester, named after this world's and
    /// `suffix`.
    pub async fn another_reply_queue(&self, suffix: &str) -> QueueUrl {
        let mut definition = self.reply_definition.clone();
        let base: String = definition.name.chars().take(79 - suffix.len()).collect();
        definition.name = format!("{base}-{suffix}");
        self.sqs
            .ensure_queue(&definition)
            .await
            .expect("another reply queue")
            .url
    }

    /// The agent's extensions directory (the default, `<stateDir>/extensions`),
    /// with an unpacked Manifest V3 extension of each of `names` in it.
    pub fn install_extensions(&self, names: &[&str]) -> PathBuf {
        let dir = self.state_dir.path().join("extensions");
        for name in names {
            let extension = dir.join(name);
            std::fs::create_dir_all(&extension).expect("extension directory");
            let manifest = json!({
                "manifest_version": 3,
                "name": format!("browserfleet test {name}"),
                "version": "1.0",
            });
            std::fs::write(extension.join("manifest.json"), manifest.to_string())
                .expect("manifest");
        }
        dir
    }

    /// Starts an agent on this world's configuration, polling the request
    /// queue every second so that tests do not wait out long polls.
    pub async fn start_agent(&self) -> RunningAgent<Sqs> {
        self.start_agent_with(self.sqs.clone(), Self::test_intake())
            .await
    }

    /// Starts an agent on this world's configuration with its own SQS client
    /// (say, one whose `CallRecorder` counts only the agent's calls) and
    /// intake pacing.
    pub async fn start_agent_with(&self, sqs: Sqs, intake: IntakeOptions) -> RunningAgent<Sqs> {
        browserfleet::agent::start(
            self.settings(),
            None,
            sqs,
            RunOptions {
                intake,
                ..Default::default()
            },
        )
        .await
        .expect("agent starts")
    }

    /// Starts an agent on `settings` (this world's, changed by the test).
    pub async fn start_agent_on(&self, settings: AgentSettings) -> RunningAgent<Sqs> {
        browserfleet::agent::start(
            settings,
            None,
            self.sqs.clone(),
            RunOptions {
                intake: Self::test_intake(),
                ..Default::default()
            },
        )
        .await
        .expect("agent starts")
    }

    /// The intake of test agents: one-second long polls, and a full agent
    /// receiving every second.
    pub fn test_intake() -> IntakeOptions {
        IntakeOptions {
            wait: Duration::from_secs(1),
            full_interval: Duration::from_secs(1),
            ..IntakeOptions::default()
        }
    }

    /// The agent's `GET /v1/state`, with the fleet token.
    pub async fn state(&self, running: &RunningAgent<Sqs>) -> Value {
        let (code, body) = super::http::call(
            "GET",
            &format!("http://{}/v1/state", running.address),
            Some(&self.fleet_token()),
        )
        .await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("state is JSON")
    }

    /// The DevTools port of live session `id`.
    pub async fn port_of(&self, running: &RunningAgent<Sqs>, id: &str) -> u16 {
        let state = self.state(running).await;
        state["sessions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["id"] == id)
            .and_then(|s| s["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("session {id} is not live: {state}"))
    }

    /// The validated settings of the current configuration.
    pub fn settings(&self) -> AgentSettings {
        AgentConfig::parse(&self.config.to_string()).expect("valid test configuration")
    }

    pub fn fleet_token(&self) -> String {
        self.config["fleetToken"].as_str().unwrap().to_owned()
    }

    pub fn profiles_root(&self) -> PathBuf {
        self.state_dir.path().join("profiles")
    }

    /// Sends a raw message to the request queue.
    pub async fn send_raw(&self, body: &str) {
        self.sqs
            .send(
                &self.requests,
                &OutgoingMessage {
                    body: body.to_owned(),
                    delay: Duration::ZERO,
                    attributes: Default::default(),
                },
            )
            .await
            .expect("send request");
    }

    /// Sends a v1 create that replies to this world's reply queue.
    pub async fn request(&self, session_id: &str, extra: Value) {
        let mut body = json!({
            "version": 1,
            "action": "create",
            "sessionId": session_id,
            "requestId": format!("req-{session_id}"),
            "replyTo": self.replies.as_str(),
        });
        if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
            body.extend(extra);
        }
        self.send_raw(&body.to_string()).await;
    }

    /// Waits for the next reply on `queue` for which `pick` holds.
    pub async fn next_message(
        &self,
        queue: &QueueUrl,
        deadline: Duration,
        pick: impl Fn(&Value) -> bool,
    ) -> Value {
        next_message(&self.sqs, queue, deadline, pick).await
    }

    /// The next reply of `type` for `session`.
    pub async fn reply(&self, kind: &str, session: &str) -> Value {
        self.next_message(&self.replies, Duration::from_secs(45), |v| {
            v["type"] == kind && v["sessionId"] == session
        })
        .await
    }

    /// Messages now on the dead-letter queue, visible or not.
    pub async fn dead_lettered(&self) -> u64 {
        let depth = self.sqs.depth(&self.dead_letter).await.expect("DLQ depth");
        depth.visible + depth.in_flight + depth.delayed
    }

    /// Messages now on the request queue, visible or not.
    pub async fn queued_requests(&self) -> u64 {
        let depth = self.sqs.depth(&self.requests).await.expect("depth");
        depth.visible + depth.in_flight + depth.delayed
    }
}

/// One receive of up to ten messages on `queue`, waiting up to a second;
/// `visibility` hides them from other receivers that long (`None`: the
/// queue's own timeout).
pub async fn receive_batch(
    sqs: &Sqs,
    queue: &QueueUrl,
    visibility: Option<Duration>,
) -> Vec<ReceivedMessage> {
    sqs.receive(
        queue,
        ReceiveOptions {
            max_messages: 10,
            wait: Duration::from_secs(1),
            visibility,
        },
    )
    .await
    .expect("receive")
}

/// Waits for the next message on `queue` for which `pick` holds, deletes
/// it and gives every other message back at once.
pub async fn next_message(
    sqs: &Sqs,
    queue: &QueueUrl,
    deadline: Duration,
    pick: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    while started.elapsed() < deadline {
        let messages = receive_batch(sqs, queue, Some(Duration::from_secs(30))).await;
        let mut found = None;
        for message in messages {
            let value: Value = serde_json::from_str(&message.body).unwrap_or(Value::Null);
            if found.is_none() && pick(&value) {
                sqs.delete(queue, &message.receipt).await.expect("delete");
                found = Some(value);
            } else {
                sqs.change_visibility(queue, &message.receipt, Duration::ZERO)
                    .await
                    .expect("give back");
            }
        }
        if let Some(value) = found {
            return value;
        }
    }
    panic!("no matching message on {queue} within {deadline:?}");
}

/// Asserts that no message on `queue` for which `pick` holds arrives within
/// `window` (messages seen are given back at once).
pub async fn assert_no_message(
    sqs: &Sqs,
    queue: &QueueUrl,
    window: Duration,
    pick: impl Fn(&Value) -> bool,
) {
    let started = Instant::now();
    while started.elapsed() < window {
        let messages = receive_batch(sqs, queue, Some(Duration::from_secs(30))).await;
        for message in messages {
            let value: Value = serde_json::from_str(&message.body).unwrap_or(Value::Null);
            assert!(!pick(&value), "unexpected message on {queue}: {value}");
            sqs.change_visibility(queue, &message.receipt, Duration::ZERO)
                .await
                .expect("give back");
        }
    }
}

/// Ends `sessions` (a stopped agent leaves its browsers for the next agent
/// to re-adopt) and stops the agent.
pub async fn end_and_stop(running: RunningAgent<Sqs>, sessions: &[&str]) {
    for id in sessions {
        end_session(&running, id).await;
    }
    running.stop().await;
}

/// Ends session `id` as a delete would, without announcing it.
pub async fn end_session(running: &RunningAgent<Sqs>, id: &str) {
    running
        .agent
        .end(
            &id.parse().expect("a valid session id"),
            browserfleet::protocol::TerminationReason::Deleted,
            false,
        )
        .await;
}

/// The value of one series on the agent's `/metrics`, named as the text
/// writes it (`browserfleet_agent_failures_total{reason="cancelled"}`);
/// `None` when the agent does not show it.
pub async fn metric(running: &RunningAgent<Sqs>, series: &str) -> Option<f64> {
    let (_, text) =
        super::http::call("GET", &format!("http://{}/metrics", running.address), None).await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until `condition` holds, or panics with `what` at the deadline.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < deadline {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within {deadline:?}");
}

/// Creates the agents serving at `addresses` have put back on the request
/// queue because every slot was taken (their `requests_requeued` metric).
pub async fn requests_put_back(addresses: &[String]) -> f64 {
    let mut total = 0.0;
    for address in addresses {
        let text = crate::bench::scrape(address).await.unwrap_or_default();
        total += crate::bench::metric_sum(&text, "browserfleet_agent_requests_requeued_total", &[]);
    }
    total
}

/// Waits until the agents at `addresses` have put `more` creates back after
/// this call: a request passed over that many times waits for a slot rather
/// than starting or failing.
pub async fn wait_put_back(addresses: &[String], more: u32) {
    wait_grown("creates put back", more, || requests_put_back(addresses)).await;
}

/// Waits until the counter `count` reads has grown by `more` from what it
/// reads now, within 90 s: the way a test waits for work to have happened
/// (reconciles, passes of an agent) rather than for a time.
pub async fn wait_grown<F, Fut>(what: &str, more: u32, count: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let from = count().await;
    eventually(
        &format!("{more} more {what}"),
        Duration::from_secs(90),
        || async { count().await >= from + f64::from(more) },
    )
    .await;
}

/// PIDs of processes whose command line contains `needle`.
pub fn processes_with(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if !zombie && String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// PIDs of processes whose environment holds `entry` (`NAME=value`).
pub fn processes_with_env(entry: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for dir in entries.flatten() {
        let Some(pid) = dir.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(environ) = std::fs::read(dir.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|e| e == entry.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// A signed callback as the receiver got it.
#[derive(Clone, Debug)]
pub struct ReceivedCallback {
    pub headers: HashMap<String, String>,
    pub body: String,
}

/// A local HTTP server that records callbacks.
pub struct CallbackReceiver {
    pub url: String,
    /// Callbacks accepted (answered 200).
    pub received: Arc<Mutex<Vec<ReceivedCallback>>>,
    /// While set, every callback is answered 503 Service Unavailable.
    pub refusing: Arc<std::sync::atomic::AtomicBool>,
    /// Callbacks that arrived, accepted or refused.
    pub attempts: Arc<std::sync::atomic::AtomicUsize>,
}

impl CallbackReceiver {
    pub async fn start() -> Self {
        let received: Arc<Mutex<Vec<ReceivedCallback>>> = Arc::default();
        let refusing: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let attempts: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let sink = received.clone();
        let refuse = refusing.clone();
        let count = attempts.clone();
        let app = axum::Router::new().route(
            "/callback",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let sink = sink.clone();
                let refuse = refuse.clone();
                let count = count.clone();
                async move {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if refuse.load(std::sync::atomic::Ordering::SeqCst) {
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let headers = headers
                        .iter()
                        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                        .collect();
                    sink.lock()
                        .unwrap()
                        .push(ReceivedCallback { headers, body });
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        CallbackReceiver {
            url: format!("http://{address}/callback"),
            received,
            refusing,
            attempts,
        }
    }

    /// Callbacks that arrived so far, accepted or refused.
    pub fn attempts(&self) -> usize {
        self.attempts.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Answers every callback from now on 503 (`true`) or 200 (`false`).
    pub fn refuse(&self, refusing: bool) {
        self.refusing
            .store(refusing, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A minimal CDP client over one websocket.
pub struct Cdp {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    /// Events read while waiting for an answer, for [`Cdp::event`].
    events: std::collections::VecDeque<Value>,
}

impl Cdp {
    pub async fn connect(url: &str) -> Result<Self, String> {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Cdp {
            socket,
            next_id: 0,
            events: Default::default(),
        })
    }

    /// Sends a command (on a flattened target session when given) and
    /// returns its result, skipping events.
    pub async fn call(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        let answer = self.answer(method, params, session).await;
        assert!(answer.get("error").is_none(), "{method} failed: {answer}");
        answer["result"].clone()
    }

    /// Sends a command and returns its whole answer (`result` or `error`,
    /// with its `id` and `sessionId`), skipping events.
    pub async fn answer(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = session.into();
        }
        self.socket
            .send(Message::text(command.to_string()))
            .await
            .expect("CDP send");
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(15), self.socket.next())
                .await
                .expect("CDP answer in time")
                .expect("CDP socket open")
                .expect("CDP frame");
            if let Message::Text(text) = frame {
                let value: Value = serde_json::from_str(&text).expect("CDP JSON");
                if value["id"] == id {
                    return value;
                }
                if value.get("method").is_some() {
                    self.events.push_back(value);
                }
            }
        }
    }

    /// The next event named `method` (with its `sessionId`, if any), within
    /// 15 seconds; events of other names are dropped.
    pub async fn event(&mut self, method: &str) -> Value {
        if let Some(at) = self.events.iter().position(|e| e["method"] == method) {
            return self.events.remove(at).expect("position is in range");
        }
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(15), self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no {method} event in time"))
                .expect("CDP socket open")
                .expect("CDP frame");
            if let Message::Text(text) = frame {
                let value: Value = serde_json::from_str(&text).expect("CDP JSON");
                if value["method"] == method {
                    return value;
                }
            }
        }
    }

    /// Sends a command without waiting for its answer.
    pub async fn send(&mut self, method: &str) {
        self.next_id += 1;
        let command = json!({"id": self.next_id, "method": method});
        let _ = self.socket.send(Message::text(command.to_string())).await;
    }
}

/// Opens a page on `url` through `cdp` and attaches to it (flattened);
/// returns its CDP session id.
pub async fn attach_new_page(cdp: &mut Cdp, url: &str) -> String {
    let target = cdp
        .call("Target.createTarget", json!({"url": url}), None)
        .await;
    let attached = cdp
        .call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
            None,
        )
        .await;
    attached["sessionId"]
        .as_str()
        .expect("CDP session")
        .to_owned()
}

/// Opens a `data:` page through `cdp` and evaluates `expression` in it.
pub async fn evaluate_in_new_page(cdp: &mut Cdp, expression: &str) -> Value {
    let session = attach_new_page(
        cdp,
        "data:text/html,<title>browserfleet</title><p>hello</p>",
    )
    .await;
    // A new target starts on about:blank and commits the data: URL a moment
    // later; an expression evaluated before the commit runs in the blank page.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let href = evaluate_in(cdp, &session, "location.href").await;
        if href.as_str().is_some_and(|h| h.starts_with("data:")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new page never left about:blank: {href}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    evaluate_in(cdp, &session, expression).await
}

/// Opens `url` in a new page through `cdp` and waits until it has a
/// title (within 15 seconds): the page's CDP session and its title.
pub async fn open_titled_page(cdp: &mut Cdp, url: &str) -> (String, String) {
    let session = attach_new_page(cdp, url).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let title = evaluate_in(cdp, &session, "document.title").await;
        if let Some(title) = title.as_str().filter(|t| !t.is_empty()) {
            return (session, title.to_owned());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} never got a title"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Evaluates `expression` (awaiting a promise) in the page of `session`.
pub async fn evaluate_in(cdp: &mut Cdp, session: &str, expression: &str) -> Value {
    let evaluated = cdp
        .call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            Some(session),
        )
        .await;
    evaluated["result"]["value"].clone()
}

/// Whether a directory exists.
pub fn exists(path: &Path) -> bool {
    path.exists()
}
