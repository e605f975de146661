//! A producer of the Browser Automation Launcher, moved over unchanged: its
//! configuration expressed as a fleet (`spec.agent.replies`), its own
//! example request with an extension path, its reply fields, its delete,
//! and a delete while every slot of the fleet is taken. Real operator, dev
//! API server (or `BROWSERFLEET_TEST_KUBECONFIG`), moto, node simulator and
//! Chromium.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use browserfleet::api::fleet::InstanceState;
use browserfleet::cloud::{DeadLetterDefinition, QueueDefinition, QueueUrl, Queues, Sqs};
use browserfleet::protocol::callback::{SIGNATURE_HEADER, TIMESTAMP_HEADER};
use serde_json::{Value, json};

use testkit::agent_world::{
    CallbackReceiver, Cdp, evaluate_in_new_page, eventually, next_message, processes_with,
    receive_batch,
};
use testkit::operator_world::{OperatorWorld, WAIT, test_settings};

/// The extension the launcher's example request names, by path.
const EXTENSION: &str = "hello-extension";

/// Every message on `queue` until none came for `quiet`, each deleted.
async fn drain(sqs: &Sqs, queue: &QueueUrl, quiet: Duration) -> Vec<Value> {
    let mut found = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < quiet {
        let messages = receive_batch(sqs, queue, None).await;
        for message in messages {
            sqs.delete(queue, &message.receipt).await.expect("delete");
            found.push(serde_json::from_str(&message.body).expect("a reply is JSON"));
            last = Instant::now();
        }
    }
    found
}

/// Runs tests/python/playwright_cdp.py against `endpoint` with no token of
/// its own: the URL carries it.
fn playwright(endpoint: &str) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/playwright_cdp.py");
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let output = Command::new(python)
        .arg(script)
        .arg(endpoint)
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "playwright: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("playwright prints JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_launcher_producer_moves_over_unchanged() {
    let world = OperatorWorld::new("launcher-producer").await;
    let sqs = Sqs::new(&world.aws);
    // The launcher's SQS_RESPONSE_QUEUE_URL and BROWSER_API_CALLBACK_URL.
    let responses = sqs
        .ensure_queue(&QueueDefinition {
            name: format!("{}-launcher-responses", world.cluster.ns),
            visibility_timeout: Duration::from_secs(30),
            receive_wait: Duration::ZERO,
            message_retention: Duration::from_secs(3600),
            tags: Default::default(),
            dead_letter: None,
        })
        .await
        .expect("response queue")
        .url;
    // The launcher's SQS_QUEUE_URL, with the dead-letter queue its
    // producers set up: the fleet adopts it, so producers keep sending there.
    let launcher_queue = sqs
        .ensure_queue(&QueueDefinition {
            name: format!("{}-launcher-requests", world.cluster.ns),
            visibility_timeout: Duration::from_secs(60),
            receive_wait: Duration::ZERO,
            message_retention: Duration::from_secs(3600),
            tags: Default::default(),
            dead_letter: Some(DeadLetterDefinition {
                name: format!("{}-launcher-requests-dlq", world.cluster.ns),
                max_receive_count: 5,
                message_retention: Duration::from_secs(3600),
            }),
        })
        .await
        .expect("launcher request queue");
    let requests = launcher_queue.url;
    let dead_letters = launcher_queue.dead_letter_url.expect("dead-letter queue");
    let callbacks = CallbackReceiver::start().await;
    let _operator = world.start_operator(test_settings(), None).await;
    let nodes = world.start_nodes(|_| {});
    // One instance of one slot: the second session waits for the first.
    let mut fleet = world.fleet(1, 1);
    fleet["spec"]["capacity"]["sessionsPerInstance"] = json!(1);
    fleet["spec"]["queue"] = json!({"requestQueueUrl": requests.as_str()});
    fleet["spec"]["agent"]["replies"] = json!({
        "defaultReplyTo": responses.as_str(),
        "defaultCallbackUrl": callbacks.url,
        "format": "launcher",
    });
    world.apply(&fleet).await;
    let fleet = world
        .wait_for("an instance ready", |f| {
            f.status.as_ref().is_some_and(|s| {
                s.queues.is_some() && s.instances.iter().any(|i| i.state == InstanceState::Ready)
            })
        })
        .await;
    let status = fleet.status.expect("status");
    let instance = status.instances[0].instance_id.clone();
    assert_eq!(
        status.queues.and_then(|q| q.requests).as_deref(),
        Some(requests.as_str()),
        "the fleet takes requests from the launcher's queue"
    );
    // An unpacked extension in the instance's extensions directory.
    let extensions = world
        .work
        .path()
        .join("nodes")
        .join(&instance)
        .join("extensions");
    std::fs::create_dir_all(extensions.join(EXTENSION)).expect("extension dir");
    std::fs::write(
        extensions.join(EXTENSION).join("manifest.json"),
        json!({"manifest_version": 3, "name": "hello", "version": "1.0"}).to_string(),
    )
    .expect("manifest");
    let send = |body: Value| {
        let sqs = &sqs;
        let requests = &requests;
        async move {
            sqs.send(
                requests,
                &browserfleet::cloud::OutgoingMessage {
                    body: body.to_string(),
                    delay: Duration::ZERO,
                    attributes: Default::default(),
                },
            )
            .await
            .expect("request sent");
        }
    };

    // An extension path whose last component is no extension here: refused,
    // at the default target, in the launcher's fields.
    send(json!({
        "id": "job-1000",
        "requester_id": "crawler-7",
        "ttl_minutes": 10,
        "extensions": ["/opt/launcher/extensions/not-installed"],
    }))
    .await;
    let refused = next_message(&sqs, &responses, WAIT, |_| true).await;
    assert_eq!(refused["status"], "failed", "{refused}");
    assert_eq!(refused["id"], "job-1000", "{refused}");
    assert_eq!(refused["requester_id"], "crawler-7", "{refused}");
    let error = refused["error"].as_str().expect("error");
    assert!(error.contains("not-installed"), "{error}");

    // The launcher's example request, unchanged.
    send(json!({
        "id": "job-1001",
        "requester_id": "crawler-7",
        "ttl_minutes": 10,
        "chrome_args": ["--window-size=1280,800"],
        "extensions": [format!("/path/to/{EXTENSION}")],
    }))
    .await;
    let ready = next_message(&sqs, &responses, WAIT, |_| true).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["id"], "job-1001");
    assert_eq!(ready["requester_id"], "crawler-7");
    assert_eq!(ready["worker_id"], instance.as_str());
    let session = ready["session_id"].as_str().expect("session_id").to_owned();
    let websocket_url = ready["websocket_url"].as_str().expect("websocket_url");
    let debug_url = ready["debug_url"].as_str().expect("debug_url");
    let token = ready["token"].as_str().expect("token");
    assert!(
        websocket_url.starts_with("ws://127.0.0.1:"),
        "{websocket_url}"
    );
    assert!(
        websocket_url.ends_with(&format!("?token={token}")),
        "{websocket_url}"
    );
    assert!(
        debug_url.ends_with(&format!("/sessions/{session}/?token={token}")),
        "{debug_url}"
    );
    let port = ready["debug_port"].as_u64().expect("debug_port");
    assert!(
        debug_url.starts_with(&format!("http://127.0.0.1:{port}/")),
        "{debug_url}"
    );
    let expires: jiff::Timestamp = ready["expires_at"]
        .as_str()
        .expect("expires_at")
        .parse()
        .expect("time");
    let left = expires.duration_since(jiff::Timestamp::now()).as_secs();
    assert!((500..=600).contains(&left), "ttl_minutes 10, {left} s left");

    // The browser loaded the extension from the extensions directory, not
    // from the path the request named.
    let loaded = format!("--load-extension={}", extensions.join(EXTENSION).display());
    assert!(
        !processes_with(&loaded).is_empty(),
        "no browser with {loaded}"
    );
    assert!(processes_with("/path/to/").is_empty());

    // A client that knows nothing of tokens connects with the URLs alone.
    let mut cdp = Cdp::connect(websocket_url)
        .await
        .expect("CDP over websocket_url");
    assert_eq!(evaluate_in_new_page(&mut cdp, "6 * 7").await, json!(42));
    drop(cdp);
    let page = tokio::task::spawn_blocking({
        let debug_url = debug_url.to_owned();
        move || playwright(&debug_url)
    })
    .await
    .expect("playwright");
    assert_eq!(page["evaluate"], 42, "{page}");

    // The same reply reached the callback, signed with the fleet's secret.
    let secret = world.fleet_secret("callbackSecret").await;
    eventually("callbacks for the refusal and the start", WAIT, || async {
        callbacks.received.lock().unwrap().len() >= 2
    })
    .await;
    let received = callbacks.received.lock().unwrap().clone();
    let ready_callback = received
        .iter()
        .find(|c| c.body.contains("\"ready\""))
        .expect("the ready callback");
    let body: Value = serde_json::from_str(&ready_callback.body).expect("JSON");
    assert_eq!(body["session_id"], session.as_str());
    assert_eq!(body["websocket_url"], websocket_url);
    browserfleet::protocol::verify(
        secret.as_bytes(),
        &ready_callback.headers[&TIMESTAMP_HEADER.to_ascii_lowercase()],
        &ready_callback.headers[&SIGNATURE_HEADER.to_ascii_lowercase()],
        ready_callback.body.as_bytes(),
        jiff::Timestamp::now().as_second(),
        Duration::from_secs(300),
    )
    .expect("the callback is signed with the fleet's callback secret");

    // Every slot is taken: the next request waits for one.
    send(json!({"id": "job-1002", "requester_id": "crawler-7", "ttl_minutes": 5})).await;
    world.wait_put_back(2).await;
    // The launcher's delete, served while the fleet is full.
    let asked = Instant::now();
    send(json!({"action": "delete", "session_id": session, "id": "job-1001-delete"})).await;
    let ended = next_message(&sqs, &responses, WAIT, |_| true).await;
    let served_in = asked.elapsed();
    assert_eq!(ended["status"], "terminated", "{ended}");
    assert_eq!(ended["session_id"], session.as_str());
    assert_eq!(ended["reason"], "deleted");
    assert_eq!(ended["id"], "job-1001-delete", "the delete's id is echoed");
    assert!(
        served_in < Duration::from_secs(15),
        "a delete on a full fleet took {served_in:?}"
    );
    eventually("the deleted browser is gone", WAIT, || async {
        processes_with(&loaded).is_empty()
    })
    .await;
    // The waiting request gets the slot.
    let second = next_message(&sqs, &responses, WAIT, |_| true).await;
    assert_eq!(second["status"], "ready", "{second}");
    assert_eq!(second["id"], "job-1002");
    let second_session = second["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned();
    send(json!({"action": "delete", "session_id": second_session, "id": "job-1002-delete"})).await;
    // Exactly one reply per event, nothing else: the delete's target and
    // the create's are the same default queue.
    let rest = drain(&sqs, &responses, Duration::from_secs(5)).await;
    assert_eq!(rest.len(), 1, "{rest:#?}");
    assert_eq!(rest[0]["status"], "terminated");
    assert_eq!(rest[0]["id"], "job-1002-delete");
    let dead = sqs.depth(&dead_letters).await.expect("depth");
    assert_eq!(
        dead.visible + dead.in_flight + dead.delayed,
        0,
        "nothing was dead-lettered"
    );
    nodes.shutdown().await;
}
