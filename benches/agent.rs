//! Agent benchmarks, each against a baseline on the same machine:
//!
//! 1. **Launch latency**: from a request in hand to DevTools ready (a CDP
//!    `Browser.getVersion` round trip), through the agent's whole launch
//!    path (sanitizing, profile, spawn, readiness, table write) against raw
//!    Chromium started with the same flags and waited for the same way.
//! 2. **Gateway**: 10,000 sequential CDP `Runtime.evaluate` round trips on a
//!    page target, directly on the browser's port and through the gateway.
//! 3. **Agent footprint**: resident memory and CPU of an idle agent process
//!    with 8 live sessions (browsers excluded), from /proc.
//! 4. **Intake calls**: SQS calls per minute of one agent, free and full,
//!    with and without waiting creates and deletes (see [`intake_calls`]).
//!
//! Run with `make agent-bench` (release build; installs moto and Chromium
//! when missing).

use testkit::bench::{proc_stat_ticks, status_kib};
use testkit::moto;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use browserfleet::agent::config::AgentConfig;
use browserfleet::agent::devtools::DevTools;
use browserfleet::agent::intake::IntakeOptions;
use browserfleet::agent::launch::{SessionLaunch, browser_command};
use browserfleet::agent::process::{self, LaunchSpec};
use browserfleet::agent::slots::Port;
use browserfleet::agent::{self as agent_mod, RunOptions};
use browserfleet::cloud::{
    Aws, AwsSettings, CallRecorder, FleetId, OutgoingMessage, QueueDefinition, QueueUrl, Queues,
    Service, Sqs,
};
use browserfleet::protocol::{Inbound, SessionId, TerminationReason, parse_message};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

const CHROMIUM: &str = "/usr/bin/chromium";
const LAUNCHES: usize = 10;
const ROUND_TRIPS: usize = 10_000;
const FOOTPRINT_SESSIONS: usize = 8;
/// Commands in flight in the pipelined gateway measurement.
const WINDOW: usize = 16;
const EXTRA_ARGS: [&str; 2] = ["--no-sandbox", "--disable-gpu"];

fn config(dir: &Path, first_port: u16, slots: u16, queues: &(String, String)) -> Value {
    json!({
        "fleet": "bench/agent",
        "requestQueueUrl": queues.0,
        "eventsQueueUrl": queues.1,
        "slots": slots,
        "gatewayPort": 0,
        "egress": {"proxyPort": 0},
        "listenAddress": "127.0.0.1",
        "browserPortRange": {"start": first_port, "end": first_port + 40},
        "browser": {"executable": CHROMIUM, "headless": true, "extraArgs": EXTRA_ARGS},
        "sessions": {"defaultTtlSeconds": 3600, "maxTtlSeconds": 3600, "neverUsedTimeoutSeconds": 3600},
        "stateDir": dir,
        "fleetToken": "f".repeat(40),
        "callbackSecret": "s".repeat(40),
        "messageKey": "m".repeat(40),
    })
}

async fn queues(aws: &Aws) -> anyhow::Result<(String, String)> {
    let sqs = Sqs::new(aws);
    let fleet = FleetId::new("bench", "agent", "00000000-0000-4000-8000-000000000001")?;
    let requests = sqs
        .ensure_queue(&QueueDefinition::requests_for(&fleet, &Default::default()))
        .await?;
    let events = sqs
        .ensure_queue(&QueueDefinition::events_for(&fleet))
        .await?;
    Ok((
        requests.url.as_str().to_owned(),
        events.url.as_str().to_owned(),
    ))
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

/// Raw Chromium: the agent's command line, spawned and waited for by hand.
async fn raw_launch(dir: &Path, port: u16) -> anyhow::Result<f64> {
    let settings = AgentConfig::parse(
        &config(dir, port, 1, &("http://x".into(), "http://x".into())).to_string(),
    )?;
    let profile = dir.join(format!("raw-{port}"));
    std::fs::create_dir_all(&profile)?;
    let command = browser_command(
        &settings.config.browser,
        Path::new(CHROMIUM),
        &SessionLaunch {
            port: Port(port),
            profile_dir: &profile,
            session_args: &[],
            proxy: None,
            extensions: &[],
            extensions_dir: dir,
            start_url: None,
            egress_proxy: None,
        },
    );
    let processes = process::native();
    let started = Instant::now();
    let spawned = processes.spawn(&LaunchSpec {
        program: command.program,
        args: command.args,
        env: Vec::new(),
        working_dir: None,
        log_file: None,
        run_as: None,
    })?;
    DevTools::new()
        .wait_ready(Port(port), Duration::from_secs(30))
        .await?;
    let elapsed = started.elapsed().as_secs_f64();
    processes.kill_tree(spawned.identity).await?;
    let _ = std::fs::remove_dir_all(&profile);
    Ok(elapsed)
}

async fn launch_latency(aws: &Aws, queues: &(String, String)) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let settings = AgentConfig::parse(&config(dir.path(), 31_000, 2, queues).to_string())?;
    let running = agent_mod::start(
        settings,
        None,
        Sqs::new(aws),
        RunOptions {
            intake: IntakeOptions {
                wait: Duration::from_secs(1),
                ..IntakeOptions::default()
            },
            ..RunOptions::default()
        },
    )
    .await?;
    let agent = running.agent.clone();
    // One warm-up each, so both sides start from a warm page cache.
    raw_launch(dir.path(), 31_100).await?;
    let mut raw = Vec::new();
    let mut through_agent = Vec::new();
    for i in 0..=LAUNCHES {
        raw.push(raw_launch(dir.path(), 31_100 + i as u16).await?);
        let body = json!({"version": 1, "action": "create", "sessionId": format!("bench-{i}")});
        let Ok(Inbound::Create(request)) = parse_message(body.to_string().as_bytes()) else {
            bail!("bench request does not parse");
        };
        let id: SessionId = format!("bench-{i}").parse()?;
        let received = Instant::now();
        let port = agent.reserve(&id)?;
        match agent.launch(id.clone(), port, &request, received).await {
            Ok(_) => through_agent.push(received.elapsed().as_secs_f64()),
            Err(failure) => bail!("launch failed: {failure:?}"),
        }
        agent.end(&id, TerminationReason::Deleted, false).await;
    }
    // The first of each is a warm-up.
    raw.remove(0);
    through_agent.remove(0);
    let raw_median = median(&mut raw) * 1000.0;
    let agent_median = median(&mut through_agent) * 1000.0;
    println!("launch latency, {LAUNCHES} launches each (ms)");
    println!("| path | median | p90 |");
    println!("|---|---:|---:|");
    println!(
        "| raw Chromium, same flags | {raw_median:.0} | {:.0} |",
        percentile(&mut raw, 0.9) * 1000.0
    );
    println!(
        "| through the agent | {agent_median:.0} | {:.0} |",
        percentile(&mut through_agent, 0.9) * 1000.0
    );
    println!(
        "median overhead: {:.0} ms ({:+.1} %)\n",
        agent_median - raw_median,
        (agent_median / raw_median - 1.0) * 100.0
    );
    running.stop().await;
    Ok(())
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn round_trips(socket: &mut Socket, count: usize) -> anyhow::Result<(f64, Vec<f64>)> {
    let mut latencies = Vec::with_capacity(count);
    let started = Instant::now();
    for id in 0..count {
        let sent = Instant::now();
        let command =
            json!({"id": id, "method": "Runtime.evaluate", "params": {"expression": "1+1"}});
        socket.send(Message::text(command.to_string())).await?;
        loop {
            let Some(frame) = socket.next().await else {
                bail!("socket closed");
            };
            if let Message::Text(text) = frame? {
                let value: Value = serde_json::from_str(&text)?;
                if value["id"] == id {
                    break;
                }
            }
        }
        latencies.push(sent.elapsed().as_secs_f64() * 1e3);
    }
    Ok((count as f64 / started.elapsed().as_secs_f64(), latencies))
}

/// Throughput with `window` commands in flight: the gateway's added latency
/// overlaps with the browser's work, as for a client that does not wait for
/// each answer (event streams, parallel evaluations).
async fn pipelined(socket: &mut Socket, count: usize, window: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let (mut sent, mut answered) = (0usize, 0usize);
    let command = |id: usize| {
        Message::text(
            json!({"id": id, "method": "Runtime.evaluate", "params": {"expression": "1+1"}})
                .to_string(),
        )
    };
    while sent < window.min(count) {
        socket.send(command(sent)).await?;
        sent += 1;
    }
    while answered < count {
        let Some(frame) = socket.next().await else {
            bail!("socket closed");
        };
        if let Message::Text(text) = frame? {
            let value: Value = serde_json::from_str(&text)?;
            if value.get("id").is_some() {
                answered += 1;
                if sent < count {
                    socket.send(command(sent)).await?;
                    sent += 1;
                }
            }
        }
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

async fn gateway(aws: &Aws, queues: &(String, String)) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let settings = AgentConfig::parse(&config(dir.path(), 32_000, 1, queues).to_string())?;
    let running = agent_mod::start(settings, None, Sqs::new(aws), RunOptions::default()).await?;
    let agent = running.agent.clone();
    let body = json!({"version": 1, "action": "create", "sessionId": "gw"});
    let Ok(Inbound::Create(request)) = parse_message(body.to_string().as_bytes()) else {
        bail!("bench request does not parse");
    };
    let id: SessionId = "gw".parse()?;
    let port = agent.reserve(&id)?;
    let token = match agent
        .launch(id.clone(), port, &request, Instant::now())
        .await
    {
        Ok(reply) => serde_json::to_value(&reply)?["token"]
            .as_str()
            .context("token")?
            .to_owned(),
        Err(failure) => bail!("launch failed: {failure:?}"),
    };
    let targets: Value = serde_json::from_slice(&DevTools::new().get(port, "/json/list").await?)?;
    let page = targets
        .as_array()
        .and_then(|t| t.iter().find(|t| t["type"] == "page"))
        .context("a page target")?;
    let direct_url = page["webSocketDebuggerUrl"]
        .as_str()
        .context("page url")?
        .to_owned();
    let path = direct_url.split_once("/devtools/").context("page path")?.1;
    let gateway_url = format!(
        "ws://{}/sessions/gw/devtools/{path}?token={token}",
        running.address
    );
    let (mut direct, _) = tokio_tungstenite::connect_async(&direct_url).await?;
    let (mut through, _) = tokio_tungstenite::connect_async(&gateway_url).await?;
    // Warm both paths, then alternate halves so drift hits both alike.
    round_trips(&mut direct, 500).await?;
    round_trips(&mut through, 500).await?;
    let mut direct_lat = Vec::new();
    let mut gateway_lat = Vec::new();
    let (mut direct_time, mut gateway_time) = (0.0, 0.0);
    for _ in 0..2 {
        let (rate, lat) = round_trips(&mut direct, ROUND_TRIPS / 2).await?;
        direct_time += (ROUND_TRIPS / 2) as f64 / rate;
        direct_lat.extend(lat);
        let (rate, lat) = round_trips(&mut through, ROUND_TRIPS / 2).await?;
        gateway_time += (ROUND_TRIPS / 2) as f64 / rate;
        gateway_lat.extend(lat);
    }
    let direct_rate = ROUND_TRIPS as f64 / direct_time;
    let gateway_rate = ROUND_TRIPS as f64 / gateway_time;
    let direct_median = median(&mut direct_lat);
    let gateway_median = median(&mut gateway_lat);
    println!("gateway, {ROUND_TRIPS} sequential Runtime.evaluate round trips");
    println!("| path | round trips/s | median ms | p99 ms |");
    println!("|---|---:|---:|---:|");
    println!(
        "| direct to 127.0.0.1 | {direct_rate:.0} | {direct_median:.3} | {:.3} |",
        percentile(&mut direct_lat, 0.99)
    );
    println!(
        "| through the gateway | {gateway_rate:.0} | {gateway_median:.3} | {:.3} |",
        percentile(&mut gateway_lat, 0.99)
    );
    println!(
        "sequential gateway throughput {:.1} % of direct; added median latency {:.3} ms",
        gateway_rate / direct_rate * 100.0,
        gateway_median - direct_median
    );
    let (mut direct_rate, mut gateway_rate) = (0.0, 0.0);
    for _ in 0..2 {
        direct_rate += pipelined(&mut direct, ROUND_TRIPS / 2, WINDOW).await?;
        gateway_rate += pipelined(&mut through, ROUND_TRIPS / 2, WINDOW).await?;
    }
    println!("\ngateway, {ROUND_TRIPS} Runtime.evaluate round trips, {WINDOW} in flight");
    println!("| path | round trips/s |");
    println!("|---|---:|");
    println!("| direct to 127.0.0.1 | {:.0} |", direct_rate / 2.0);
    println!("| through the gateway | {:.0} |", gateway_rate / 2.0);
    println!(
        "pipelined gateway throughput {:.1} % of direct\n",
        gateway_rate / direct_rate * 100.0
    );
    agent.end(&id, TerminationReason::Deleted, false).await;
    running.stop().await;
    Ok(())
}

async fn footprint(aws: &Aws, queues: &(String, String), endpoint: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("config.json");
    std::fs::write(
        &config_path,
        config(dir.path(), 33_000, FOOTPRINT_SESSIONS as u16, queues).to_string(),
    )?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_browserfleet"))
        .args(["agent", "--config"])
        .arg(&config_path)
        .args([
            "--instance-id",
            "i-bench",
            "--advertise-address",
            "127.0.0.1:0",
        ])
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    lines.next_line().await?.context("listening line")?;
    let pid = child.id().context("pid")?;
    let sqs = Sqs::new(aws);
    let url = browserfleet::cloud::QueueUrl::new(&queues.0);
    for i in 0..FOOTPRINT_SESSIONS {
        let body = json!({"version": 1, "action": "create", "sessionId": format!("fp-{i}")});
        sqs.send(
            &url,
            &browserfleet::cloud::OutgoingMessage {
                body: body.to_string(),
                delay: Duration::ZERO,
                attributes: Default::default(),
            },
        )
        .await?;
    }
    let state_file = dir.path().join("sessions.json");
    let started = Instant::now();
    loop {
        let active = std::fs::read_to_string(&state_file)
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .map(|v| {
                v["sessions"]
                    .as_array()
                    .map_or(0, |s| s.iter().filter(|s| s["browserPath"] != "").count())
            })
            .unwrap_or(0);
        if active == FOOTPRINT_SESSIONS {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("only {active} of {FOOTPRINT_SESSIONS} sessions started");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Settle, then measure an idle minute: supervision and long polling only.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let window = Duration::from_secs(30);
    let before = proc_stat_ticks(pid)?;
    let mut peak_rss = 0;
    let measured = Instant::now();
    while measured.elapsed() < window {
        peak_rss = peak_rss.max(status_kib(pid, "VmRSS:")?);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let cpu = (proc_stat_ticks(pid)? - before) as f64 / ticks_per_second / window.as_secs_f64();
    println!(
        "agent footprint with {FOOTPRINT_SESSIONS} live sessions (browsers excluded), {window:?} idle"
    );
    println!("| measure | value | target |");
    println!("|---|---:|---:|");
    println!(
        "| resident memory (peak VmRSS) | {:.1} MB | <= 30 MB |",
        peak_rss as f64 / 1024.0
    );
    println!("| CPU | {:.2} % of one core | <= 1 % |", cpu * 100.0);
    // Leave no browsers behind: kill the agent, then the browsers it started.
    child.kill().await?;
    let processes = process::native();
    let marker = format!("--user-data-dir={}", dir.path().join("profiles").display());
    for browser in processes.find_by_marker(&marker).await? {
        processes.kill_tree(browser).await?;
    }
    Ok(())
}

/// SQS calls of `recorder` by operation during `window`, while `load` runs.
async fn calls_during(
    recorder: &CallRecorder,
    window: Duration,
    load: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<BTreeMap<&'static str, u64>> {
    let count = || {
        let mut counts = BTreeMap::new();
        for (key, stats) in recorder.snapshot() {
            if key.service == Service::Sqs {
                *counts.entry(key.operation).or_insert(0) += stats.count;
            }
        }
        counts
    };
    let before = count();
    let (loaded, ()) = tokio::join!(
        tokio::time::timeout(window, load),
        tokio::time::sleep(window)
    );
    if let Ok(result) = loaded {
        result?;
    }
    let mut after = count();
    for (operation, n) in before {
        if let Some(now) = after.get_mut(operation) {
            *now -= n;
        }
    }
    after.retain(|_, n| *n > 0);
    Ok(after)
}

/// Sends a delete of a session hosted nowhere every `every` (a full agent
/// forwards each to the events queue), until cancelled.
async fn deletes_every(producer: &Sqs, queue: &QueueUrl, every: Duration) -> anyhow::Result<()> {
    for i in 0.. {
        let body = json!({"version": 1, "action": "delete", "sessionId": format!("elsewhere-{i}")});
        let message = OutgoingMessage {
            body: body.to_string(),
            delay: Duration::ZERO,
            attributes: Default::default(),
        };
        producer.send(queue, &message).await?;
        tokio::time::sleep(every).await;
    }
    Ok(())
}

/// 4. **Intake calls**: SQS calls per minute of one agent with the
///    production pacing (`IntakeOptions::default()`: 20 s long polls, a full
///    agent's receives at least 3 s apart), counted by the agent's own
///    `CallRecorder` over a window in each state. Heartbeats are turned off
///    (one `SendMessage` per `heartbeatIntervalSeconds` on top).
async fn intake_calls(producer: &Aws) -> anyhow::Result<()> {
    let producer = Sqs::new(producer);
    let fleet = FleetId::new("bench", "intake", "00000000-0000-4000-8000-000000000002")?;
    let requests = producer
        .ensure_queue(&QueueDefinition::requests_for(&fleet, &Default::default()))
        .await?;
    let events = producer
        .ensure_queue(&QueueDefinition::events_for(&fleet))
        .await?;
    let queues = (
        requests.url.as_str().to_owned(),
        events.url.as_str().to_owned(),
    );
    let dir = tempfile::tempdir()?;
    let mut config = config(dir.path(), 33_000, 1, &queues);
    config["heartbeatIntervalSeconds"] = json!(3600);
    let settings = AgentConfig::parse(&config.to_string())?;
    // The agent's own AWS configuration: its recorder counts only its calls.
    let aws = Aws::load(AwsSettings::default()).await?;
    let recorder = aws.recorder().clone();
    let running = agent_mod::start(settings, None, Sqs::new(&aws), RunOptions::default()).await?;
    let agent = running.agent.clone();
    let mut rows = Vec::new();
    let idle = async { Ok(()) };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window = Duration::from_secs(60);
    rows.push((
        "free, empty queue",
        window,
        calls_during(&recorder, window, idle).await?,
    ));

    // The one slot taken by a session started by hand (no queue message).
    let body = json!({"version": 1, "action": "create", "sessionId": "busy"});
    let Ok(Inbound::Create(request)) = parse_message(body.to_string().as_bytes()) else {
        bail!("bench request does not parse");
    };
    let id: SessionId = "busy".parse()?;
    let port = agent.reserve(&id)?;
    if agent
        .launch(id.clone(), port, &request, Instant::now())
        .await
        .is_err()
    {
        bail!("the busy session did not start");
    }
    // The free agent's long poll in progress ends first.
    tokio::time::sleep(Duration::from_secs(21)).await;
    let idle = async { Ok(()) };
    rows.push((
        "full, empty queue",
        window,
        calls_during(&recorder, window, idle).await?,
    ));
    let every = Duration::from_secs(5);
    let window = Duration::from_secs(30);
    let deletes = deletes_every(&producer, &requests.url, every);
    rows.push((
        "full, empty queue, a delete every 5 s",
        window,
        calls_during(&recorder, window, deletes).await?,
    ));
    for i in 0..5 {
        let body = json!({"version": 1, "action": "create", "sessionId": format!("waiting-{i}")});
        let message = OutgoingMessage {
            body: body.to_string(),
            delay: Duration::ZERO,
            attributes: Default::default(),
        };
        producer.send(&requests.url, &message).await?;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let idle = async { Ok(()) };
    rows.push((
        "full, 5 creates waiting",
        window,
        calls_during(&recorder, window, idle).await?,
    ));
    let deletes = deletes_every(&producer, &requests.url, every);
    rows.push((
        "full, 5 creates waiting, a delete every 5 s",
        window,
        calls_during(&recorder, window, deletes).await?,
    ));
    agent.end(&id, TerminationReason::Deleted, false).await;
    running.stop().await;

    println!("\n## Intake: SQS calls per minute of one agent (production pacing)\n");
    println!("| state | window | calls in the window, by operation | calls per minute |");
    println!("|---|---|---|---|");
    for (state, window, calls) in rows {
        let total: u64 = calls.values().sum();
        let by_operation: Vec<String> = calls.iter().map(|(op, n)| format!("{op} {n}")).collect();
        println!(
            "| {state} | {} s | {} | {:.0} |",
            window.as_secs(),
            by_operation.join(", "),
            total as f64 * 60.0 / window.as_secs_f64()
        );
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let moto = moto::moto();
    moto::use_endpoint(&moto.endpoint);
    let aws = Aws::load(AwsSettings::default()).await?;
    let queues = queues(&aws).await?;
    // `cargo bench --bench agent -- gateway` runs one part (launch, gateway,
    // footprint, intake); no argument runs all four.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |part: &str| only.is_empty() || only.iter().any(|o| o == part);
    if wanted("launch") {
        launch_latency(&aws, &queues).await?;
    }
    if wanted("gateway") {
        gateway(&aws, &queues).await?;
    }
    if wanted("footprint") {
        footprint(&aws, &queues, &moto.endpoint).await?;
    }
    if wanted("intake") {
        intake_calls(&aws).await?;
    }
    Ok(())
}
