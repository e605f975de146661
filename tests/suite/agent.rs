//! The node agent end to end: real Chromium, moto SQS, the agent's own HTTP
//! listener, a CDP client connecting through the gateway.

use std::time::Duration;

use browserfleet::agent::RunningAgent;
use browserfleet::agent::intake::IntakeOptions;
use browserfleet::cloud::queues::{OutgoingMessage, ReceivedMessage};
use browserfleet::cloud::{Queues, Service, Sqs};
use browserfleet::protocol::callback;
use serde_json::{Value, json};
use testkit::agent_world::{
    AgentWorld, CallbackReceiver, Cdp, assert_no_message, end_and_stop, end_session,
    evaluate_in_new_page, eventually, metric, processes_with, wait_put_back,
};
use testkit::http;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_gets_a_ready_reply_a_signed_callback_and_a_working_gateway() {
    let world = AgentWorld::new("agent-ready", 2).await;
    let callbacks = CallbackReceiver::start().await;
    let running = world.start_agent().await;
    world
        .request(
            "s-ready",
            json!({"callbackUrl": callbacks.url, "labels": {"team": "qa"}}),
        )
        .await;
    let ready = world.reply("session.ready", "s-ready").await;
    assert_eq!(ready["requestId"], "req-s-ready");
    assert_eq!(ready["labels"]["team"], "qa");
    let token = ready["token"].as_str().expect("token").to_owned();
    let ws = ready["endpoints"]["webSocketDebuggerUrl"]
        .as_str()
        .expect("websocket URL")
        .to_owned();
    assert!(ws.contains(&running.address.to_string()), "{ws}");

    // The callback carries a valid signature over its body.
    eventually("callback received", Duration::from_secs(10), || async {
        !callbacks.received.lock().unwrap().is_empty()
    })
    .await;
    let callback = callbacks.received.lock().unwrap()[0].clone();
    let body: Value = serde_json::from_str(&callback.body).unwrap();
    assert_eq!(body["type"], "session.ready");
    callback::verify(
        b"ssssssssssssssssssssssssssssssssssssssss",
        &callback.headers[&callback::TIMESTAMP_HEADER.to_ascii_lowercase()],
        &callback.headers[&callback::SIGNATURE_HEADER.to_ascii_lowercase()],
        callback.body.as_bytes(),
        jiff::Timestamp::now().as_second(),
        Duration::from_secs(300),
    )
    .expect("callback signature verifies");

    // A CDP client through the gateway with the token.
    let mut cdp = Cdp::connect(&format!("{ws}?token={token}"))
        .await
        .expect("gateway admits the token");
    assert_eq!(evaluate_in_new_page(&mut cdp, "6 * 7").await, json!(42));
    assert_eq!(
        evaluate_in_new_page(
            &mut cdp,
            "new Promise(r => document.readyState === 'complete' ? r(document.title) \
             : addEventListener('load', () => r(document.title)))"
        )
        .await,
        json!("browserfleet")
    );

    // json/list through the gateway points back at the gateway.
    let base = format!("http://{}/sessions/s-ready", running.address);
    let (code, list) = http::call("GET", &format!("{base}/json/list?token={token}"), None).await;
    assert_eq!(code, 200, "{list}");
    let list: Value = serde_json::from_str(&list).unwrap();
    let page = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "page")
        .expect("a page target")
        .clone();
    let page_ws = page["webSocketDebuggerUrl"].as_str().unwrap();
    assert!(
        page_ws.starts_with(&format!(
            "ws://{}/sessions/s-ready/devtools/page/",
            running.address
        )),
        "{page_ws}"
    );
    let mut page_cdp = Cdp::connect(page_ws)
        .await
        .expect("page websocket via the gateway");
    let evaluated = page_cdp
        .call("Runtime.evaluate", json!({"expression": "1 + 1"}), None)
        .await;
    assert_eq!(evaluated["result"]["value"], 2);

    // Without a token: 401; with another session's token: 403; unknown: 404.
    assert_eq!(
        http::call("GET", &format!("{base}/json/version"), None)
            .await
            .0,
        401
    );
    assert!(
        Cdp::connect(&ws)
            .await
            .err()
            .expect("refused")
            .contains("401")
    );
    world.request("s-other", json!({})).await;
    let other = world.reply("session.ready", "s-other").await;
    let other_token = other["token"].as_str().unwrap();
    assert_eq!(
        http::call("GET", &format!("{base}/json/version"), Some(other_token))
            .await
            .0,
        403
    );
    assert!(
        Cdp::connect(&format!("{ws}?token={other_token}"))
            .await
            .err()
            .expect("refused")
            .contains("403")
    );
    assert_eq!(
        http::call(
            "GET",
            &format!("http://{}/sessions/nope/json/version", running.address),
            Some(&token)
        )
        .await
        .0,
        404
    );
    // The browser's own DevTools port is bound to 127.0.0.1 only.
    let state = world.state(&running).await;
    for session in state["sessions"].as_array().unwrap() {
        let port = session["port"].as_u64().unwrap();
        let listeners = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let hex_port = format!(":{port:04X} ");
        for line in listeners.lines().filter(|l| l.contains(&hex_port)) {
            let local = line.split_whitespace().nth(1).unwrap();
            if local.ends_with(&format!(":{port:04X}"))
                && line.split_whitespace().nth(3) == Some("0A")
            {
                assert!(
                    local.starts_with("0100007F"),
                    "port {port} listens on {local}"
                );
            }
        }
    }
    end_and_stop(running, &["s-ready", "s-other"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_n_slots_n_requests_run_and_the_rest_wait_in_the_queue() {
    let world = AgentWorld::new("agent-slots", 2).await;
    let running = world.start_agent().await;
    for i in 0..4 {
        world.request(&format!("s-slot-{i}"), json!({})).await;
    }
    let first = world
        .next_message(&world.replies, Duration::from_secs(45), |v| {
            v["type"] == "session.ready"
        })
        .await;
    let second = world
        .next_message(&world.replies, Duration::from_secs(45), |v| {
            v["type"] == "session.ready"
        })
        .await;
    // Two run; two stay on the queue, neither deleted nor failed (the full
    // agent puts copies back: for a moment after a copy is sent and before
    // its original is deleted, the queue holds one more). Checked once the
    // agent has passed over each of them.
    wait_put_back(&[running.address.to_string()], 2).await;
    assert_eq!(
        world.state(&running).await["sessions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    eventually("two requests wait", Duration::from_secs(5), || async {
        world.queued_requests().await == 2
    })
    .await;
    // As slots free, the waiting requests run.
    for ready in [first, second] {
        let id = ready["sessionId"].as_str().unwrap().to_owned();
        let (code, _) = http::call(
            "DELETE",
            &format!("http://{}/v1/sessions/{id}", running.address),
            Some(&world.fleet_token()),
        )
        .await;
        assert_eq!(code, 200);
    }
    for _ in 0..2 {
        world
            .next_message(&world.replies, Duration::from_secs(45), |v| {
                v["type"] == "session.ready"
            })
            .await;
    }
    eventually("queue empty", Duration::from_secs(10), || async {
        world.queued_requests().await == 0
    })
    .await;
    // Two sessions are left running; ending them all (the first two are
    // gone already) leaves the agent empty.
    end_and_stop(running, &["s-slot-0", "s-slot-1", "s-slot-2", "s-slot-3"]).await;
}

/// Starts a session, returns its ready reply.
async fn ready_session(world: &AgentWorld, id: &str, extra: Value) -> Value {
    world.request(id, extra).await;
    world.reply("session.ready", id).await
}

/// Checks that a session left nothing behind: port free, temporary profile
/// gone, no Chromium process with its profile.
async fn assert_cleaned_up(world: &AgentWorld, running: &RunningAgent<Sqs>, id: &str, port: u16) {
    let profile = world.profiles_root().join("tmp").join(id);
    eventually("session cleaned up", Duration::from_secs(10), || async {
        running
            .agent
            .port_state(browserfleet::agent::slots::Port(port))
            == Some("free")
            && !profile.exists()
            && processes_with(&profile.display().to_string()).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_with_their_reason_and_leave_nothing_behind() {
    let mut world = AgentWorld::new("agent-reasons", 5).await;
    world.config["sessions"] = json!({
        "defaultTtlSeconds": 8, "maxTtlSeconds": 8, "neverUsedTimeoutSeconds": 10
    });
    let running = world.start_agent().await;
    // TTL: 2 s requested, used by a client.
    let ttl = ready_session(&world, "s-ttl", json!({"ttlSeconds": 2})).await;
    let ttl_port = world.port_of(&running, "s-ttl").await;
    let mut cdp = Cdp::connect(&format!(
        "{}?token={}",
        ttl["endpoints"]["webSocketDebuggerUrl"].as_str().unwrap(),
        ttl["token"].as_str().unwrap()
    ))
    .await
    .unwrap();
    let _ = cdp.call("Browser.getVersion", json!({}), None).await;
    // Hard TTL: 60 s requested, cut to the fleet's 8 s.
    let hard = ready_session(
        &world,
        "s-hard",
        json!({"ttlSeconds": 60, "startUrl": "data:text/html,x"}),
    )
    .await;
    assert!(hard["expiresAt"].is_string());
    let hard_port = world.port_of(&running, "s-hard").await;
    // Killed with SIGKILL.
    ready_session(&world, "s-kill", json!({"startUrl": "data:text/html,k"})).await;
    let kill_port = world.port_of(&running, "s-kill").await;
    let pid = world.state(&running).await["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "s-kill")
        .unwrap()["pid"]
        .as_u64()
        .unwrap();
    // Closed through CDP.
    let close = ready_session(&world, "s-close", json!({"startUrl": "data:text/html,c"})).await;
    let close_port = world.port_of(&running, "s-close").await;

    // SAFETY: a plain kill(2) of the browser process this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let mut closer = Cdp::connect(&format!(
        "{}?token={}",
        close["endpoints"]["webSocketDebuggerUrl"].as_str().unwrap(),
        close["token"].as_str().unwrap()
    ))
    .await
    .unwrap();
    closer.send("Browser.close").await;

    for (id, reason, port) in [
        ("s-kill", "crashed", kill_port),
        ("s-close", "closed", close_port),
        ("s-ttl", "expired", ttl_port),
        ("s-hard", "hardTtlExceeded", hard_port),
    ] {
        let ended = world.reply("session.terminated", id).await;
        assert_eq!(ended["reason"], reason, "{id}: {ended}");
        assert_cleaned_up(&world, &running, id, port).await;
    }
    drop(cdp);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_nobody_uses_ends_as_never_used() {
    let mut world = AgentWorld::new("agent-unused", 1).await;
    world.config["sessions"] = json!({
        "defaultTtlSeconds": 300, "maxTtlSeconds": 600, "neverUsedTimeoutSeconds": 10
    });
    let running = world.start_agent().await;
    ready_session(&world, "s-unused", json!({})).await;
    let port = world.port_of(&running, "s-unused").await;
    let ended = world.reply("session.terminated", "s-unused").await;
    assert_eq!(ended["reason"], "neverUsed");
    assert_cleaned_up(&world, &running, "s-unused", port).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_arrive_by_queue_and_api_and_unknown_ones_go_to_the_events_queue() {
    let world = AgentWorld::new("agent-delete", 3).await;
    let running = world.start_agent().await;
    ready_session(&world, "s-del-queue", json!({})).await;
    ready_session(&world, "s-del-api", json!({})).await;
    let queue_port = world.port_of(&running, "s-del-queue").await;
    let api_port = world.port_of(&running, "s-del-api").await;
    world
        .send_raw(
            &json!({"version": 1, "action": "delete", "sessionId": "s-del-queue"}).to_string(),
        )
        .await;
    let ended = world.reply("session.terminated", "s-del-queue").await;
    assert_eq!(ended["reason"], "deleted");
    assert_cleaned_up(&world, &running, "s-del-queue", queue_port).await;

    let url = format!("http://{}/v1/sessions/s-del-api", running.address);
    assert_eq!(http::call("DELETE", &url, None).await.0, 401);
    assert_eq!(
        http::call("DELETE", &url, Some(&world.fleet_token()))
            .await
            .0,
        200
    );
    assert_eq!(
        world.reply("session.terminated", "s-del-api").await["reason"],
        "deleted"
    );
    assert_cleaned_up(&world, &running, "s-del-api", api_port).await;

    // Unknown here: through the queue and through the API, forwarded.
    world
        .send_raw(
            &json!({"version": 1, "action": "delete", "sessionId": "s-elsewhere"}).to_string(),
        )
        .await;
    let forwarded = world
        .next_message(&world.events, Duration::from_secs(30), |v| {
            v["sessionId"] == "s-elsewhere"
        })
        .await;
    assert_eq!(forwarded["type"], "session.delete");
    let url = format!("http://{}/v1/sessions/s-elsewhere-too", running.address);
    assert_eq!(
        http::call("DELETE", &url, Some(&world.fleet_token()))
            .await
            .0,
        202
    );
    world
        .next_message(&world.events, Duration::from_secs(30), |v| {
            v["sessionId"] == "s-elsewhere-too"
        })
        .await;
    eventually("request queue empty", Duration::from_secs(10), || async {
        world.queued_requests().await == 0
    })
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_answered_or_dead_lettered_and_the_agent_keeps_serving() {
    let world = AgentWorld::new("agent-bad", 1).await;
    let running = world.start_agent().await;
    let reply_to = world.replies.as_str().to_owned();
    // No reply target: dead-lettered.
    world.send_raw("{not json").await;
    world
        .send_raw(&json!({"version": 7, "action": "create"}).to_string())
        .await;
    world
        .send_raw(
            &json!({"version": 1, "action": "create", "args": ["x".repeat(300_000)]}).to_string()
                [..200_000],
        )
        .await;
    for _ in 0..3 {
        world
            .next_message(&world.dead_letter, Duration::from_secs(30), |_| true)
            .await;
    }
    // With a reply target: session.failed.
    world
        .send_raw(
            &json!({"version": 2, "action": "create", "sessionId": "s-v2", "replyTo": reply_to})
                .to_string(),
        )
        .await;
    let failed = world.reply("session.failed", "s-v2").await;
    assert_eq!(failed["reason"], "invalidRequest");
    // Oversized: one argument of 250,000 characters, in a message just under
    // SQS's own 256 KiB cap (a larger body cannot travel through SQS; the
    // parser's size limit is unit-tested).
    world
        .request(
            "s-huge",
            json!({"args": [format!("--x={}", "y".repeat(250_000))]}),
        )
        .await;
    let failed = world.reply("session.failed", "s-huge").await;
    assert_eq!(failed["reason"], "invalidRequest", "{failed}");
    for (id, arg) in [
        ("s-port", "--remote-debugging-port=9999"),
        ("s-dir", "--user-data-dir=/tmp/x"),
        ("s-addr", "--remote-debugging-address=0.0.0.0"),
        ("s-web", "--disable-web-security"),
    ] {
        world.request(id, json!({"args": [arg]})).await;
        let failed = world.reply("session.failed", id).await;
        assert_eq!(failed["reason"], "forbiddenArgument", "{id}: {failed}");
    }
    // Still serving.
    ready_session(&world, "s-after", json!({})).await;
    let (code, _) = http::call("GET", &format!("http://{}/healthz", running.address), None).await;
    assert_eq!(code, 200);
    let (_, metrics) =
        http::call("GET", &format!("http://{}/metrics", running.address), None).await;
    assert!(
        metrics.contains("browserfleet_agent_failures_total{reason=\"forbiddenArgument\"} 4"),
        "{metrics}"
    );
    end_and_stop(running, &["s-after"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_may_allow_a_blocked_switch() {
    let mut world = AgentWorld::new("agent-allow", 1).await;
    world.config["browser"]["allowedArgs"] = json!(["--disable-web-security"]);
    let running = world.start_agent().await;
    ready_session(
        &world,
        "s-allowed",
        json!({"args": ["--disable-web-security"]}),
    )
    .await;
    end_and_stop(running, &["s-allowed"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_stops_intake_and_exits_when_the_last_session_ends() {
    let world = AgentWorld::new("agent-drain", 2).await;
    let running = world.start_agent().await;
    ready_session(&world, "s-drain", json!({})).await;
    let (code, _) = http::call(
        "POST",
        &format!("http://{}/v1/drain", running.address),
        Some(&world.fleet_token()),
    )
    .await;
    assert_eq!(code, 202);
    world.request("s-late", json!({})).await;
    let agent = running.agent.clone();
    let waiting = tokio::spawn(running.wait());
    assert!(!waiting.is_finished(), "the agent waits for its session");
    agent
        .end(
            &"s-drain".parse().unwrap(),
            browserfleet::protocol::TerminationReason::Closed,
            true,
        )
        .await;
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("agent exits once the last session ended")
        .unwrap();
    // Checked once the agent has exited, when nothing can take the request any
    // more, so no window has to pass: the drained agent launched nothing after
    // s-drain (had it launched s-late, it would not have exited), and s-late
    // is still on the queue for another agent.
    let metrics = agent.render_metrics();
    assert!(
        metrics.contains("browserfleet_agent_launches_total 1\n"),
        "{metrics}"
    );
    assert_eq!(world.queued_requests().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launcher_command_starts_the_browser() {
    let mut world = AgentWorld::new("agent-launcher", 1).await;
    world.config["browser"] = json!({
        "launcherCommand": ["/bin/sh", "-c", "exec /usr/bin/chromium \"$@\"", "launcher"],
        "extraArgs": testkit::agent_world::TEST_BROWSER_ARGS,
    });
    let running = world.start_agent().await;
    let ready = ready_session(&world, "s-launched", json!({})).await;
    let mut cdp = Cdp::connect(&format!(
        "{}?token={}",
        ready["endpoints"]["webSocketDebuggerUrl"].as_str().unwrap(),
        ready["token"].as_str().unwrap()
    ))
    .await
    .unwrap();
    assert_eq!(
        evaluate_in_new_page(&mut cdp, "'via ' + 'launcher'").await,
        json!("via launcher")
    );
    end_and_stop(running, &["s-launched"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_never_starts_is_retried_then_failed_and_leaves_nothing() {
    let mut world = AgentWorld::new("agent-nostart", 1).await;
    world.config["browser"]["executable"] = "/bin/false".into();
    let running = world.start_agent().await;
    world.request("s-nostart", json!({})).await;
    let failed = world.reply("session.failed", "s-nostart").await;
    assert_eq!(failed["reason"], "failedToStart");
    eventually(
        "request answered and deleted",
        Duration::from_secs(10),
        || async { world.queued_requests().await == 0 },
    )
    .await;
    let state = world.state(&running).await;
    assert_eq!(state["sessions"].as_array().unwrap().len(), 0);
    assert_eq!(state["freeSlots"], 1);
    assert!(!world.profiles_root().join("tmp").join("s-nostart").exists());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_timeout_ends_sessions_as_drained() {
    let mut world = AgentWorld::new("agent-draintimeout", 1).await;
    world.config["drainTimeoutSeconds"] = 2.into();
    let running = world.start_agent().await;
    ready_session(&world, "s-drained", json!({})).await;
    running.agent.start_drain();
    let ended = world.reply("session.terminated", "s-drained").await;
    assert_eq!(ended["reason"], "drained");
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .expect("agent exits after its drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_reads_the_agents_state_through_its_typed_client() {
    use browserfleet::operator::agent_client::{AgentCallError, AgentClient};
    use browserfleet::protocol::HostedPhase;

    let world = AgentWorld::new("agent-typed-state", 2).await;
    let running = world.start_agent().await;
    let client = AgentClient::new(Duration::from_secs(2));
    let address = running.address.to_string();
    let token = world.fleet_token();

    let idle = client.state(&address, &token).await.expect("state");
    assert_eq!((idle.slots, idle.free_slots), (2, 2));
    assert_eq!(idle.fleet, "tests/agent");
    assert_eq!(idle.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(idle.sessions.is_empty() && !idle.draining);
    assert!(idle.idle_since.is_some_and(|t| t >= idle.ready_since));

    ready_session(&world, "s-typed", json!({})).await;
    let busy = client.state(&address, &token).await.expect("state");
    assert_eq!(busy.free_slots, 1);
    assert_eq!(busy.idle_since, None, "a node with a session is not idle");
    let session = &busy.sessions[0];
    assert_eq!(session.id.as_str(), "s-typed");
    assert_eq!(session.phase, HostedPhase::Active);
    assert!(session.expires > session.started);

    // Refusals and silence are errors, never an empty (idle-looking) state.
    assert!(matches!(
        client.state(&address, &"x".repeat(token.len())).await,
        Err(AgentCallError::Unauthorized { .. })
    ));
    let nobody = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = nobody.local_addr().unwrap().to_string();
    let started = std::time::Instant::now();
    assert!(matches!(
        client.state(&silent, &token).await,
        Err(AgentCallError::Unreachable { .. })
    ));
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(nobody);

    end_session(&running, "s-typed").await;
    let emptied = client.state(&address, &token).await.expect("state");
    assert!(emptied.idle_since.is_some_and(|t| t >= session.started));
    client.drain(&address, &token).await.expect("drain");
    eventually(
        "the agent exits once drained and empty",
        Duration::from_secs(10),
        || {
            let client = client.clone();
            let (address, token) = (address.clone(), token.clone());
            async move { client.state(&address, &token).await.is_err() }
        },
    )
    .await;
    running.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_registers_and_heartbeats_on_the_events_queue() {
    use browserfleet::protocol::{AnnouncementKind, FleetEvent};

    let mut world = AgentWorld::new("agent-announce", 2).await;
    world.config["heartbeatIntervalSeconds"] = json!(1);
    let running = world.start_agent().await;
    let announcement = |kind: AnnouncementKind| {
        let world = &world;
        async move {
            let message = world
                .next_message(&world.events, Duration::from_secs(15), |v| {
                    v["type"] == kind.type_name()
                })
                .await;
            match serde_json::from_value::<FleetEvent>(message) {
                Ok(FleetEvent::Node(node)) => node,
                other => panic!("not an announcement: {other:?}"),
            }
        }
    };
    let registered = announcement(AnnouncementKind::Registered).await;
    // Where the agent listens, as the operator must dial it: the bound port,
    // not the configured 0.
    assert_eq!(registered.address, running.address.to_string());
    assert_eq!(registered.fleet, "tests/agent");
    assert_eq!((registered.slots, registered.sessions), (2, 0));
    assert!(!registered.draining);

    ready_session(&world, "s-announced", json!({})).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let heartbeat = announcement(AnnouncementKind::Heartbeat).await;
        assert_eq!(heartbeat.instance_id, registered.instance_id);
        if heartbeat.sessions == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no heartbeat counted the session"
        );
    }
    end_and_stop(running, &["s-announced"]).await;
}

/// A start deadline `seconds` from now (negative: in the past), in whole
/// seconds as on the wire.
fn deadline_in(seconds: i64) -> String {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + seconds)
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_past_its_start_deadline_fails_as_start_timeout_and_one_before_it_starts() {
    let world = AgentWorld::new("agent-deadline", 1).await;
    let running = world.start_agent().await;
    let passed = deadline_in(-60);
    world
        .request("s-too-late", json!({"startDeadline": passed}))
        .await;
    let failed = world.reply("session.failed", "s-too-late").await;
    assert_eq!(failed["reason"], "startTimeout", "{failed}");
    assert_eq!(failed["requestId"], "req-s-too-late");
    assert!(
        failed["message"].as_str().unwrap().contains(&passed),
        "{failed}"
    );
    eventually(
        "the stale request deleted",
        Duration::from_secs(10),
        || async { world.queued_requests().await == 0 },
    )
    .await;
    // No browser: no session, the slot free, nothing launched, no profile.
    let state = world.state(&running).await;
    assert_eq!(state["sessions"].as_array().unwrap().len(), 0, "{state}");
    assert_eq!(state["freeSlots"], 1);
    assert_eq!(
        metric(&running, "browserfleet_agent_launches_total").await,
        Some(0.0)
    );
    assert_eq!(
        metric(
            &running,
            "browserfleet_agent_failures_total{reason=\"startTimeout\"}"
        )
        .await,
        Some(1.0)
    );
    assert!(
        !world
            .profiles_root()
            .join("tmp")
            .join("s-too-late")
            .exists()
    );

    // A deadline still ahead: started as usual.
    ready_session(
        &world,
        "s-in-time",
        json!({"startDeadline": deadline_in(600)}),
    )
    .await;
    assert_eq!(
        metric(&running, "browserfleet_agent_launches_total").await,
        Some(1.0)
    );
    end_and_stop(running, &["s-in-time"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_before_the_create_cancels_it_and_forward_false_stays_off_the_events_queue() {
    let world = AgentWorld::new("agent-cancel", 2).await;
    let running = world.start_agent().await;
    let token = world.fleet_token();
    let sessions = format!("http://{}/v1/sessions", running.address);

    // forward=false, not hosted: 404, and a tombstone.
    let (code, body) = http::call(
        "DELETE",
        &format!("{sessions}/s-x?forward=false"),
        Some(&token),
    )
    .await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("not hosted here"), "{body}");
    assert!(body.contains("refused"), "{body}");
    // The token is still required, and forward takes only true or false.
    assert_eq!(
        http::call("DELETE", &format!("{sessions}/s-x?forward=false"), None)
            .await
            .0,
        401
    );
    assert_eq!(
        http::call(
            "DELETE",
            &format!("{sessions}/s-x?forward=maybe"),
            Some(&token)
        )
        .await
        .0,
        400
    );
    // The default still forwards (202). Its forward arrives on the events
    // queue after any forward of s-x would have: none came.
    let (code, body) = http::call("DELETE", &format!("{sessions}/s-marker"), Some(&token)).await;
    assert_eq!(code, 202, "{body}");
    let saw_s_x = std::sync::atomic::AtomicBool::new(false);
    world
        .next_message(&world.events, Duration::from_secs(30), |v| {
            if v["sessionId"] == "s-x" {
                saw_s_x.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            v["sessionId"] == "s-marker"
        })
        .await;
    assert!(
        !saw_s_x.load(std::sync::atomic::Ordering::Relaxed),
        "a delete with forward=false reached the events queue"
    );

    // The create that comes later: answered cancelled, never started.
    world.request("s-x", json!({})).await;
    let failed = world.reply("session.failed", "s-x").await;
    assert_eq!(failed["reason"], "cancelled", "{failed}");
    assert_eq!(failed["requestId"], "req-s-x");
    eventually(
        "the cancelled request deleted",
        Duration::from_secs(10),
        || async { world.queued_requests().await == 0 },
    )
    .await;
    let state = world.state(&running).await;
    assert_eq!(state["sessions"].as_array().unwrap().len(), 0, "{state}");
    assert_eq!(
        metric(&running, "browserfleet_agent_launches_total").await,
        Some(0.0)
    );
    assert_eq!(
        metric(
            &running,
            "browserfleet_agent_failures_total{reason=\"cancelled\"}"
        )
        .await,
        Some(1.0)
    );

    // A delete from the request queue leaves a tombstone too.
    world
        .send_raw(&json!({"version": 1, "action": "delete", "sessionId": "s-y"}).to_string())
        .await;
    world
        .next_message(&world.events, Duration::from_secs(30), |v| {
            v["sessionId"] == "s-y"
        })
        .await;
    world.request("s-y", json!({})).await;
    assert_eq!(
        world.reply("session.failed", "s-y").await["reason"],
        "cancelled"
    );

    // A tombstone refuses one create: the next create of s-x starts.
    ready_session(&world, "s-x", json!({})).await;
    end_and_stop(running, &["s-x"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_extension_path_loads_that_extension_and_a_missing_one_is_refused() {
    let world = AgentWorld::new("agent-extensions", 2).await;
    let extensions = world.install_extensions(&["recorder"]);
    let running = world.start_agent().await;
    let reply_to = world.replies.as_str().to_owned();
    // The launcher's own shape: a path, whose last component is installed.
    world
        .send_raw(
            &json!({"id": "job-ext", "session_id": "s-ext", "extensions": ["/path/to/recorder"],
                    "replyTo": reply_to})
            .to_string(),
        )
        .await;
    let ready = world.reply("session.ready", "s-ext").await;
    assert_eq!(ready["requestId"], "job-ext");
    let loaded = format!("--load-extension={}", extensions.join("recorder").display());
    assert!(
        !processes_with(&loaded).is_empty(),
        "no browser runs with {loaded}"
    );

    // A Windows path whose name is not installed: refused, no browser.
    world
        .send_raw(
            &json!({"id": "job-missing", "session_id": "s-ext-missing",
                    "extensions": ["recorder", "C:\\ext\\adblock\\"], "replyTo": reply_to})
            .to_string(),
        )
        .await;
    let failed = world.reply("session.failed", "s-ext-missing").await;
    assert_eq!(failed["reason"], "invalidRequest", "{failed}");
    assert_eq!(failed["requestId"], "job-missing");
    let message = failed["message"].as_str().unwrap_or_default();
    for said in [
        "no unpacked extension adblock ",
        "last component",
        "manifest.json",
        "it has recorder",
    ] {
        assert!(message.contains(said), "{said:?} not in {message}");
    }
    // A path naming no extension at all: refused by the parser, saying why.
    world
        .send_raw(
            &json!({"id": "job-dots", "session_id": "s-ext-dots",
                    "extensions": ["/opt/ext/.."], "replyTo": reply_to})
            .to_string(),
        )
        .await;
    let refused = world.reply("session.failed", "s-ext-dots").await;
    assert_eq!(refused["reason"], "invalidRequest", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("extensions[0]") && m.contains("last component")),
        "{refused}"
    );
    eventually("requests answered", Duration::from_secs(10), || async {
        world.queued_requests().await == 0
    })
    .await;
    let state = world.state(&running).await;
    assert_eq!(state["sessions"].as_array().unwrap().len(), 1, "{state}");
    assert_eq!(
        metric(&running, "browserfleet_agent_launches_total").await,
        Some(1.0)
    );
    assert!(
        !world
            .profiles_root()
            .join("tmp")
            .join("s-ext-missing")
            .exists()
    );
    end_and_stop(running, &["s-ext"]).await;
}

/// How long a test watches a queue for a second, duplicate reply.
const NO_DUPLICATE_WINDOW: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_delete_answers_its_own_reply_queue_and_the_creates_each_once() {
    // Three slots: deletes are received while a slot is free.
    let world = AgentWorld::new("agent-delete-own", 3).await;
    let deleter = world.another_reply_queue("del").await;
    let running = world.start_agent().await;
    let creator = world.replies.as_str().to_owned();
    for (session, id) in [("s-own", "job-own"), ("s-shared", "job-shared")] {
        world
            .send_raw(&json!({"id": id, "session_id": session, "replyTo": creator}).to_string())
            .await;
        world.reply("session.ready", session).await;
    }

    // Its own queue: one reply there with its id, one on the create's.
    world
        .send_raw(
            &json!({"action": "delete", "session_id": "s-own", "id": "job-del-own",
                    "replyTo": deleter.as_str()})
            .to_string(),
        )
        .await;
    let own = world
        .next_message(&deleter, Duration::from_secs(30), |v| {
            v["type"] == "session.terminated" && v["sessionId"] == "s-own"
        })
        .await;
    assert_eq!(own["requestId"], "job-del-own", "{own}");
    assert_eq!(own["reason"], "deleted", "{own}");
    let creates = world.reply("session.terminated", "s-own").await;
    assert_eq!(creates["requestId"], "job-own", "{creates}");
    assert_eq!(creates["reason"], "deleted", "{creates}");

    // The create's queue: one reply, carrying the delete's id.
    world
        .send_raw(
            &json!({"action": "delete", "session_id": "s-shared", "id": 42, "replyTo": creator})
                .to_string(),
        )
        .await;
    let shared = world.reply("session.terminated", "s-shared").await;
    assert_eq!(shared["requestId"], "42", "{shared}");

    let terminated = |v: &Value| v["type"] == "session.terminated";
    assert_no_message(&world.sqs, &world.replies, NO_DUPLICATE_WINDOW, terminated).await;
    assert_no_message(&world.sqs, &deleter, NO_DUPLICATE_WINDOW, terminated).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_delete_is_answered_once_by_the_agent_that_hosts_the_session() {
    use browserfleet::operator::agent_client::{AgentClient, SessionEnd};
    use browserfleet::protocol::{DeleteRequester, EventsMessage};

    // Agent A does not host the session; agent B (a fleet of its own
    // queues) does.
    let world_a = AgentWorld::new("agent-forward-a", 2).await;
    let world_b = AgentWorld::new("agent-forward-b", 2).await;
    let deleter = world_a.another_reply_queue("del").await;
    let (a, b) = (world_a.start_agent().await, world_b.start_agent().await);
    ready_session(&world_b, "s-fwd", json!({})).await;

    // A forwards a legacy delete with its requester to its events queue.
    world_a
        .send_raw(
            &json!({"action": "delete", "session_id": "s-fwd", "id": "job-fwd",
                    "replyTo": deleter.as_str()})
            .to_string(),
        )
        .await;
    let forwarded = world_a
        .next_message(&world_a.events, Duration::from_secs(30), |v| {
            v["type"] == "session.delete" && v["sessionId"] == "s-fwd"
        })
        .await;
    let forwarded: EventsMessage = serde_json::from_value(forwarded).expect("a forwarded delete");
    let requester = DeleteRequester::from(&forwarded);
    assert_eq!(
        requester.reply_to.as_ref().map(|q| q.as_str()),
        Some(deleter.as_str())
    );

    // Passed on to every agent as the operator does: the host answers.
    let client = AgentClient::new(Duration::from_secs(5));
    let token = world_a.fleet_token();
    let id = forwarded.session_id.clone();
    for (running, expected) in [(&a, SessionEnd::NotHosted), (&b, SessionEnd::Ended)] {
        let ended = client
            .end_session_for(&running.address.to_string(), &token, &id, &requester)
            .await
            .expect("the agent answers");
        assert_eq!(ended, expected);
    }
    let answer = world_a
        .next_message(&deleter, Duration::from_secs(30), |v| {
            v["type"] == "session.terminated" && v["sessionId"] == "s-fwd"
        })
        .await;
    assert_eq!(answer["requestId"], "job-fwd", "{answer}");
    assert_eq!(answer["reason"], "deleted", "{answer}");
    let creates = world_b.reply("session.terminated", "s-fwd").await;
    assert_eq!(creates["requestId"], "req-s-fwd", "{creates}");
    // Routed again (an operator that read the forward twice): nothing more.
    let again = client
        .end_session_for(&b.address.to_string(), &token, &id, &requester)
        .await
        .expect("the agent answers");
    assert_eq!(again, SessionEnd::NotHosted);
    let terminated = |v: &Value| v["type"] == "session.terminated";
    assert_no_message(&world_a.sqs, &deleter, NO_DUPLICATE_WINDOW, terminated).await;

    // A requester the agent cannot answer is refused.
    let (code, body) = http::call(
        "DELETE",
        &format!(
            "http://{}/v1/sessions/s-fwd?forward=false&replyTo=https%3A%2F%2Fexample.com%2Fx",
            b.address
        ),
        Some(&token),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    a.stop().await;
    b.stop().await;
}

/// The fleet's default `maxReceiveCount` (`QueueSpec`), which the test
/// worlds' request queues have.
const MAX_RECEIVE_COUNT: u64 = 5;

/// Sends a v1 delete of `id` to the request queue and returns how long its
/// `session.terminated` took to arrive.
async fn delete_by_queue(world: &AgentWorld, id: &str) -> Duration {
    let sent = std::time::Instant::now();
    world
        .send_raw(&json!({"version": 1, "action": "delete", "sessionId": id}).to_string())
        .await;
    let ended = world.reply("session.terminated", id).await;
    assert_eq!(ended["reason"], "deleted", "{ended}");
    sent.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_agent_serves_queued_deletes_at_once_and_keeps_waiting_creates_off_the_dead_letter_queue()
 {
    let world = AgentWorld::new("agent-full", 1).await;
    // The agent's own SQS client, so that its recorder counts only the
    // agent's calls.
    let aws = testkit::aws().await;
    let calls = aws.recorder().clone();
    let count = |operation: &str| calls.count(Service::Sqs, operation);
    let intake = AgentWorld::test_intake();
    let running = world.start_agent_with(Sqs::new(&aws), intake).await;
    ready_session(&world, "s-busy", json!({})).await;

    // Three creates wait for the one slot; one in the launcher's shape,
    // naming no session.
    world.request("s-wait-0", json!({})).await;
    world.request("s-wait-1", json!({})).await;
    world
        .send_raw(
            &json!({"id": "legacy-1", "requester_id": "team-a", "ttl_minutes": 5,
                    "replyTo": world.replies.as_str()})
            .to_string(),
        )
        .await;
    let (receives, sends, deletes) = (
        count("ReceiveMessage"),
        count("SendMessageBatch"),
        count("DeleteMessageBatch"),
    );
    let window = std::time::Instant::now();
    // Each receive of the full agent takes all three and puts them back:
    // more receives of each than the redrive policy allows.
    let cycles = MAX_RECEIVE_COUNT + 2;
    eventually(
        "creates put back redrive limit + 2 times",
        Duration::from_secs(30),
        || async {
            metric(&running, "browserfleet_agent_requests_requeued_total")
                .await
                .is_some_and(|n| n >= (3 * cycles) as f64)
        },
    )
    .await;
    let elapsed = window.elapsed();
    let receives = count("ReceiveMessage") - receives;
    let sends = count("SendMessageBatch") - sends;
    let deletes = count("DeleteMessageBatch") - deletes;
    println!(
        "full with a backlog: {receives} receives, {sends} send batches, {deletes} delete \
         batches in {elapsed:.1?}"
    );
    assert!(receives >= cycles, "{receives} receives");
    // Paced: no more receives than one per interval (and one in progress).
    let most = elapsed.as_secs_f64() / intake.full_interval.as_secs_f64() + 2.0;
    assert!(
        (receives as f64) <= most,
        "{receives} receives in {elapsed:?}"
    );
    // One send and one delete batch per receive that had creates.
    assert!(sends.abs_diff(receives) <= 1 && deletes.abs_diff(sends) <= 1);
    assert_eq!(count("ChangeMessageVisibility"), 0, "nothing given back");
    assert_eq!(world.dead_lettered().await, 0);
    assert_eq!(world.state(&running).await["sessions"][0]["id"], "s-busy");

    // A delete on the queue ends the running session within seconds.
    let latency = delete_by_queue(&world, "s-busy").await;
    println!("delete of s-busy behind the backlog: {latency:.1?}");
    assert!(latency < Duration::from_secs(10), "{latency:?}");

    // The freed slot takes the waiting creates in turn; each, deleted from
    // the queue while the other creates wait, ends within seconds too.
    let mut started = Vec::new();
    for _ in 0..3 {
        let ready = world
            .next_message(&world.replies, Duration::from_secs(45), |v| {
                v["type"] == "session.ready"
            })
            .await;
        let id = ready["sessionId"].as_str().expect("session id").to_owned();
        if ready["requestId"] == "legacy-1" {
            // The launcher-shaped create kept its shape and got the session
            // id its copy carries.
            assert_eq!(ready["labels"]["requester"], "team-a", "{ready}");
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        }
        started.push(ready["requestId"].as_str().unwrap_or_default().to_owned());
        let latency = delete_by_queue(&world, &id).await;
        println!("delete of {id}: {latency:.1?}");
        assert!(latency < Duration::from_secs(10), "{latency:?}");
    }
    started.sort();
    assert_eq!(started, ["legacy-1", "req-s-wait-0", "req-s-wait-1"]);
    eventually("request queue empty", Duration::from_secs(10), || async {
        world.queued_requests().await == 0
    })
    .await;
    assert_eq!(world.dead_lettered().await, 0);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_waits_for_a_slot_too_long_is_answered_no_capacity_or_dead_lettered() {
    let world = AgentWorld::new("agent-no-capacity", 1).await;
    let intake = IntakeOptions {
        max_slot_wait: Duration::from_secs(2),
        ..AgentWorld::test_intake()
    };
    let running = world.start_agent_with(world.sqs.clone(), intake).await;
    ready_session(&world, "s-busy", json!({})).await;
    world.request("s-never", json!({})).await;
    // No one to answer: dead-lettered, as the copy a full agent last made.
    world
        .send_raw(&json!({"id": "no-reply", "ttl_minutes": 5}).to_string())
        .await;

    let failed = world.reply("session.failed", "s-never").await;
    assert_eq!(failed["reason"], "noCapacity", "{failed}");
    assert_eq!(failed["requestId"], "req-s-never");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("no agent of the fleet had a free slot"),
        "{failed}"
    );
    let dead = world
        .next_message(&world.dead_letter, Duration::from_secs(20), |v| {
            v["id"] == "no-reply"
        })
        .await;
    assert!(dead.get("version").is_none(), "{dead}");
    assert!(dead["session_id"].is_string(), "{dead}");
    assert!(dead["requeued"]["count"].as_u64().unwrap() >= 1, "{dead}");
    eventually("request queue empty", Duration::from_secs(10), || async {
        world.queued_requests().await == 0
    })
    .await;
    assert_eq!(
        metric(
            &running,
            "browserfleet_agent_failures_total{reason=\"noCapacity\"}"
        )
        .await,
        Some(2.0)
    );
    assert_eq!(
        metric(&running, "browserfleet_agent_launches_total").await,
        Some(1.0)
    );
    end_and_stop(running, &["s-busy"]).await;
}

/// `/v1/state`'s `heldRequests` is how the operator tells a request in
/// flight at a known agent from one held by an agent it cannot see: it
/// must count the message from its receipt until it is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_counts_a_request_as_held_from_its_receipt_until_its_message_is_deleted() {
    use std::os::unix::fs::PermissionsExt;
    let mut world = AgentWorld::new("agent-held", 1).await;
    // A browser that takes two seconds to start leaves time to look.
    let bin = tempfile::tempdir().expect("bin dir");
    let slow = bin.path().join("slow-chromium");
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh\nsleep 2\nexec {} \"$@\"\n",
            testkit::agent_world::CHROMIUM
        ),
    )
    .unwrap();
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    world.config["browser"]["executable"] = json!(slow);
    let running = world.start_agent().await;
    assert_eq!(world.state(&running).await["heldRequests"], 0);

    world.request("s-held", json!({})).await;
    eventually(
        "held while its browser starts",
        Duration::from_secs(10),
        || async {
            let state = world.state(&running).await;
            state["heldRequests"] == 1 && state["sessions"][0]["phase"] == "starting"
        },
    )
    .await;
    world.reply("session.ready", "s-held").await;
    eventually(
        "released once its message is deleted",
        Duration::from_secs(10),
        || async { world.state(&running).await["heldRequests"] == 0 },
    )
    .await;
    assert_eq!(world.queued_requests().await, 0, "the message is deleted");
    assert_eq!(
        metric(&running, "browserfleet_agent_requests_held").await,
        Some(0.0)
    );
    end_and_stop(running, &["s-held"]).await;
}

/// The agent's messages on the events queue, as received, until one for
/// which `pick` holds (given back: other tests of the world may read it).
async fn signed_event(world: &AgentWorld, pick: impl Fn(&Value) -> bool) -> ReceivedMessage {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(std::time::Instant::now() < deadline, "no such event");
        for message in testkit::agent_world::receive_batch(&world.sqs, &world.events, None).await {
            let value: Value = serde_json::from_str(&message.body).unwrap_or(Value::Null);
            if pick(&value) {
                return message;
            }
        }
    }
}

/// Producers may ask for sessions, not speak for the operator: a request
/// with a reserved label or session id is refused on its own reply queue,
/// one naming the events queue is never answered there; the operator's
/// signed request with the same label is served, and what the agent puts on
/// the events queue is signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_speaking_for_the_operator_is_refused_and_never_answered_on_the_events_queue() {
    use browserfleet::protocol::signing::{self, Purpose};
    use testkit::agent_world::MESSAGE_KEY;
    let world = AgentWorld::new("agent-reserved", 2).await;
    let running = world.start_agent().await;
    let registration = signed_event(&world, |v| v["type"] == "node.registered").await;
    let now = jiff::Timestamp::now().as_second();
    let verify = |message: &ReceivedMessage| {
        signing::verify(
            MESSAGE_KEY.as_bytes(),
            Purpose::Event,
            &message.body,
            &message.attributes,
            now,
        )
    };
    assert_eq!(verify(&registration), Ok(()));

    world
        .request(
            "s-label",
            json!({"labels": {"browserfleet.io/session-uid": "u"}}),
        )
        .await;
    let refused = world.reply("session.failed", "s-label").await;
    assert_eq!(refused["reason"], "invalidRequest");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("browserfleet.io/session-uid"),
        "{refused}"
    );
    world.request("bs-forged", json!({})).await;
    let refused = world.reply("session.failed", "bs-forged").await;
    assert!(
        refused["message"].as_str().unwrap().contains("reserved"),
        "{refused}"
    );

    // Naming the events queue, and nothing else: dead-lettered, unanswered.
    world
        .send_raw(
            &json!({"version": 1, "action": "create", "sessionId": "s-events",
                    "replyTo": world.events.as_str()})
            .to_string(),
        )
        .await;
    eventually("dead-lettered", Duration::from_secs(20), || async {
        world.dead_lettered().await == 1
    })
    .await;
    assert_no_message(&world.sqs, &world.events, Duration::from_secs(2), |v| {
        v["sessionId"] == "s-events"
    })
    .await;
    assert_eq!(
        metric(
            &running,
            "browserfleet_agent_failures_total{reason=\"invalidRequest\"}"
        )
        .await,
        Some(3.0)
    );

    // The operator's request, signed with the fleet's key, may do all that.
    let body = json!({"version": 1, "action": "create", "sessionId": "bs-signed",
                      "replyTo": world.events.as_str(),
                      "labels": {"browserfleet.io/session-uid": "u"}})
    .to_string();
    world
        .sqs
        .send(
            &world.requests,
            &OutgoingMessage {
                attributes: signing::sign(MESSAGE_KEY.as_bytes(), Purpose::Request, &body, now),
                body,
                delay: Duration::ZERO,
            },
        )
        .await
        .unwrap();
    let ready = signed_event(&world, |v| {
        v["type"] == "session.ready" && v["sessionId"] == "bs-signed"
    })
    .await;
    assert_eq!(verify(&ready), Ok(()));
    end_and_stop(running, &["bs-signed"]).await;
}

/// Issue #28, item 2: a create delivered again after its session was served
/// and ended (SQS's at-least-once delivery, a producer's retry) is dropped;
/// it used to start a second browser and answer `session.ready` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_delivered_again_after_its_session_ended_is_dropped_not_started_again() {
    let world = AgentWorld::new("agent-served", 2).await;
    let running = world.start_agent().await;
    ready_session(&world, "s-once", json!({})).await;
    let port = world.port_of(&running, "s-once").await;
    delete_by_queue(&world, "s-once").await;
    assert_cleaned_up(&world, &running, "s-once", port).await;
    assert_eq!(
        metric(&running, "browserfleet_agent_launches_total").await,
        Some(1.0)
    );

    // The same create again, then another session's, taken after it.
    world.request("s-once", json!({})).await;
    ready_session(&world, "s-next", json!({})).await;
    assert_eq!(
        metric(&running, "browserfleet_agent_launches_total").await,
        Some(2.0),
        "only s-next started"
    );
    let state = world.state(&running).await;
    let hosted: Vec<&str> = state["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(hosted, ["s-next"], "{state}");
    eventually(
        "the second delivery dropped",
        Duration::from_secs(30),
        || async {
            metric(&running, "browserfleet_agent_creates_already_served_total").await == Some(1.0)
        },
    )
    .await;
    // The message is gone from the queue, not waiting to be delivered again.
    let depth = world.sqs.depth(&world.requests).await.expect("depth");
    assert_eq!((depth.visible, depth.in_flight), (0, 0));
    running.stop().await;
}

/// Issue #28, item 1: a create stays invisible for as long as its browser
/// takes to start. Without renewal, a start longer than the visibility
/// timeout let another agent receive the same create (and start it twice);
/// the control below shows that is what a plain wait does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_stays_invisible_however_long_its_start_takes() {
    use browserfleet::agent::intake::{OperatorTrust, RequestQueue};
    use browserfleet::cloud::queues::ReceiveOptions;
    let world = AgentWorld::new("agent-hold", 1).await;
    let visibility = Duration::from_secs(2);
    let queue = RequestQueue::new(
        std::sync::Arc::new(world.sqs.clone()),
        world.requests.clone(),
        None,
        visibility,
        OperatorTrust {
            message_key: browserfleet::cloud::SecretValue::new(testkit::agent_world::MESSAGE_KEY),
            events: world.events.as_str().to_owned(),
        },
    );
    // Another agent polling the same queue all along.
    let other_agent = || async {
        let options = ReceiveOptions {
            max_messages: 1,
            wait: Duration::from_secs(1),
            visibility: Some(Duration::from_secs(30)),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            let got = world
                .sqs
                .receive(&world.requests, options)
                .await
                .expect("receive");
            if !got.is_empty() {
                return true;
            }
        }
        false
    };

    world.request("s-held", json!({})).await;
    let message = queue
        .receive(1, Duration::from_secs(5))
        .await
        .expect("receive")
        .pop()
        .expect("the create");
    // A start of 5 s, more than twice the visibility timeout.
    let seen_elsewhere = queue.hold_while(&message, other_agent()).await;
    assert!(
        !seen_elsewhere,
        "another agent received the create while it started"
    );
    queue.finish(&message).await;
    let depth = world.sqs.depth(&world.requests).await.expect("depth");
    assert_eq!(
        (depth.visible, depth.in_flight),
        (0, 0),
        "deleted with its receipt"
    );

    // The control: the same wait without renewal lets the other agent in.
    world.request("s-unheld", json!({})).await;
    let _unheld = queue
        .receive(1, Duration::from_secs(5))
        .await
        .expect("receive")
        .pop()
        .expect("the create");
    assert!(
        other_agent().await,
        "the create reappears after its visibility timeout"
    );
}

/// Issue #28, item 8: heartbeats keep their pace while supervision is slow.
/// Two unused sessions whose browsers are stopped (SIGSTOP) make every
/// use check wait for its DevTools timeout, so a supervision pass takes
/// seconds; heartbeats shared that loop and fell far behind their interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_their_pace_while_supervision_is_slow() {
    let mut world = AgentWorld::new("agent-busy", 2).await;
    world.config["heartbeatIntervalSeconds"] = json!(1);
    world.config["sessions"] = json!({
        "defaultTtlSeconds": 300, "maxTtlSeconds": 600, "neverUsedTimeoutSeconds": 600
    });
    let running = world.start_agent().await;
    let mut pids = Vec::new();
    for id in ["s-stuck-1", "s-stuck-2"] {
        ready_session(&world, id, json!({})).await;
    }
    let state = world.state(&running).await;
    for session in state["sessions"].as_array().expect("sessions") {
        pids.push(session["pid"].as_i64().expect("pid") as i32);
    }
    assert_eq!(pids.len(), 2);
    for &pid in &pids {
        // SAFETY: a plain kill(2) of a browser this test's agent started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
    }
    // Heartbeats sent from now on, over twelve seconds.
    let since = jiff::Timestamp::now();
    let started = std::time::Instant::now();
    let mut heartbeats = 0;
    while started.elapsed() < Duration::from_secs(12) {
        let options = browserfleet::cloud::queues::ReceiveOptions {
            max_messages: 10,
            wait: Duration::from_secs(1),
            visibility: None,
        };
        for message in world
            .sqs
            .receive(&world.events, options)
            .await
            .expect("receive")
        {
            let body: Value = serde_json::from_str(&message.body).unwrap_or_default();
            let at = body["at"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok());
            if body["type"] == "node.heartbeat" && at.is_some_and(|at| at >= since) {
                heartbeats += 1;
            }
            world.sqs.delete(&world.events, &message.receipt).await.ok();
        }
    }
    for &pid in &pids {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
    }
    assert!(
        heartbeats >= 8,
        "{heartbeats} heartbeats in 12 s at an interval of 1 s"
    );
    end_and_stop(running, &["s-stuck-1", "s-stuck-2"]).await;
}

/// A create whose only target is its callback (issue #28 item 7).
fn callback_only_create(id: &str, callback_url: &str) -> String {
    json!({
        "version": 1,
        "action": "create",
        "sessionId": id,
        "requestId": format!("req-{id}"),
        "callbackUrl": callback_url,
    })
    .to_string()
}

/// Callback retries a test waits out in seconds, not minutes.
fn quick_callback_retries(max_attempts: u32) -> callback::RetrySchedule {
    callback::RetrySchedule {
        first_delay: Duration::from_millis(300),
        multiplier: 1,
        max_delay: Duration::from_millis(300),
        max_attempts,
    }
}

/// Issue #28 item 7: a create whose only target is its callback was deleted
/// as soon as the callback was scheduled, so a receiver that refused every
/// attempt left its producer with no answer anywhere. Now the create ends on
/// the dead-letter queue, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_only_callback_cannot_be_delivered_ends_on_the_dead_letter_queue() {
    let world = AgentWorld::new("agent-callback-dlq", 1).await;
    let callbacks = CallbackReceiver::start().await;
    callbacks.refuse(true);
    let mut settings = world.settings();
    settings.callback_retries = quick_callback_retries(3);
    let running = world.start_agent_on(settings).await;
    world
        .send_raw(&callback_only_create("s-unheard", &callbacks.url))
        .await;
    eventually(
        "the create dead-lettered",
        Duration::from_secs(60),
        || async { world.dead_lettered().await == 1 },
    )
    .await;
    assert_eq!(callbacks.attempts(), 3, "every attempt was made");
    assert_eq!(
        world.queued_requests().await,
        0,
        "nothing left on the queue"
    );
    let moved = testkit::agent_world::receive_batch(&world.sqs, &world.dead_letter, None).await;
    assert_eq!(moved.len(), 1);
    let why = &moved[0].attributes["browserfleet-dead-lettered-because"];
    assert!(why.contains("503"), "{why}");
    let body: Value = serde_json::from_str(&moved[0].body).unwrap();
    assert_eq!(body["sessionId"], "s-unheard", "the create itself");
    assert_eq!(
        metric(&running, "browserfleet_agent_callbacks_abandoned_total").await,
        Some(1.0)
    );
    end_and_stop(running, &["s-unheard"]).await;
}

/// Issue #28 item 7: a callback still being retried when the agent stopped
/// was abandoned, and its create already deleted. Now the create stays on
/// the queue, invisible, until its callback is delivered; a stop gives it
/// back, and the next agent answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_answered_only_by_callback_stays_queued_until_delivered_and_survives_a_stop() {
    let world = AgentWorld::new("agent-callback-stop", 1).await;
    let callbacks = CallbackReceiver::start().await;
    callbacks.refuse(true);
    let mut settings = world.settings();
    settings.callback_retries = quick_callback_retries(100);
    let running = world.start_agent_on(settings.clone()).await;
    world
        .send_raw(&callback_only_create("s-retried", &callbacks.url))
        .await;
    eventually("the callback retried", Duration::from_secs(60), || async {
        callbacks.attempts() >= 3
    })
    .await;
    assert_eq!(
        world.queued_requests().await,
        1,
        "the create stays queued while its answer is not delivered"
    );
    running.stop().await;
    let depth = world.sqs.depth(&world.requests).await.unwrap();
    assert_eq!(depth.visible, 1, "the stop gave the create back: {depth:?}");
    callbacks.refuse(false);
    let running = world.start_agent_on(settings).await;
    eventually(
        "answered by the next agent",
        Duration::from_secs(60),
        || async { world.queued_requests().await == 0 },
    )
    .await;
    let delivered: Vec<Value> = callbacks
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|c| serde_json::from_str(&c.body).unwrap())
        .collect();
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0]["type"], "session.ready");
    assert_eq!(delivered[0]["sessionId"], "s-retried");
    assert_eq!(world.dead_lettered().await, 0);
    end_and_stop(running, &["s-retried"]).await;
}

/// Issue #28 item 7: on a request queue without a dead-letter queue the
/// agent knows (an adopted queue), a message that belongs there was made
/// visible again at once and went round every poll. Now it is hidden,
/// longer at each receive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_dead_letter_queue_an_unreadable_message_is_hidden_not_received_at_every_poll() {
    let mut world = AgentWorld::new("agent-no-dlq", 1).await;
    world
        .config
        .as_object_mut()
        .unwrap()
        .remove("deadLetterQueueUrl");
    let running = world.start_agent().await;
    world.send_raw("this is not a request").await;
    eventually("the message refused", Duration::from_secs(20), || async {
        metric(
            &running,
            "browserfleet_agent_failures_total{reason=\"invalidRequest\"}",
        )
        .await
        .is_some()
    })
    .await;
    // The test agent polls every second.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        metric(
            &running,
            "browserfleet_agent_failures_total{reason=\"invalidRequest\"}"
        )
        .await,
        Some(1.0),
        "received once, then hidden"
    );
    let depth = world.sqs.depth(&world.requests).await.unwrap();
    assert_eq!(
        (depth.visible, depth.in_flight),
        (0, 1),
        "still on the queue, hidden"
    );
    assert_eq!(world.dead_lettered().await, 0);
    running.stop().await;
}

/// Issue #28 item 7: a create given back for no fault of its own (free
/// slots, but every browser port busy at the OS) counted towards the
/// queue's `maxReceiveCount`, and the redrive policy moved it to the
/// dead-letter queue, where nobody answers. Now it goes back as a copy
/// whose count starts afresh, and is served once a port frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_given_back_while_no_port_is_free_is_not_dead_lettered_and_is_served_later() {
    let queue = browserfleet::api::fleet::QueueSpec {
        max_receive_count: 1,
        ..Default::default()
    };
    let world = AgentWorld::with_queue("agent-no-port", 1, &queue).await;
    let range = &world.config["browserPortRange"];
    let (first, last) = (
        range["start"].as_u64().unwrap() as u16,
        range["end"].as_u64().unwrap() as u16,
    );
    let busy: Vec<std::net::TcpListener> = (first..=last)
        .filter_map(|port| std::net::TcpListener::bind(("127.0.0.1", port)).ok())
        .collect();
    assert_eq!(busy.len(), usize::from(last - first) + 1, "every port held");
    let running = world.start_agent().await;
    world.request("s-portless", json!({})).await;
    // Received at once and given back for 5 s, twice at least in 14 s: the
    // second receive of the original would have moved it to the dead-letter
    // queue.
    tokio::time::sleep(Duration::from_secs(14)).await;
    assert_eq!(world.dead_lettered().await, 0, "nothing dead-lettered");
    assert_eq!(world.queued_requests().await, 1, "the create waits");
    drop(busy);
    let ready = world.reply("session.ready", "s-portless").await;
    assert_eq!(ready["requestId"], "req-s-portless");
    assert_eq!(world.dead_lettered().await, 0);
    end_and_stop(running, &["s-portless"]).await;
}
