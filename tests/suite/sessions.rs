//! The BrowserSession reconciler end to end: a Kubernetes API (the
//! development API server, or a real cluster through
//! `BROWSERFLEET_TEST_KUBECONFIG`), moto, the operator in this process, and
//! the node simulator running a real agent and real Chromium per instance.

use std::time::Duration;

use browserfleet::api::session::{SessionEndReason, SessionPhase};
use browserfleet::api::{BrowserFleet, BrowserSession};
use browserfleet::cloud::{Queues, Sqs};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use serde_json::{Value, json};

use testkit::agent_world::{Cdp, evaluate_in_new_page, eventually, processes_with, receive_batch};
use testkit::operator_world::{OperatorWorld, WAIT, phase, test_settings};

fn reason(session: &BrowserSession) -> Option<SessionEndReason> {
    session.status.as_ref().and_then(|s| s.reason)
}

fn session_id(session: &BrowserSession) -> String {
    format!("bs-{}", session.uid().expect("uid"))
}

/// A fleet of one instance with one slot: a second session waits on the
/// queue while the first runs.
fn one_slot_fleet(world: &OperatorWorld) -> Value {
    let mut fleet = world.fleet(1, 1);
    fleet["spec"]["capacity"]["sessionsPerInstance"] = json!(1);
    fleet
}

/// Applies the one-slot fleet and a session `first` that takes its slot.
async fn take_the_only_slot(world: &OperatorWorld) {
    world.apply(&one_slot_fleet(world)).await;
    world
        .apply_session(&world.session("first", json!({})))
        .await;
    world.wait_for_phase("first", SessionPhase::Ready).await;
}

async fn token_of(world: &OperatorWorld, session: &BrowserSession) -> String {
    let name = session
        .status
        .as_ref()
        .and_then(|s| s.credentials_secret.clone())
        .expect("credentialsSecret");
    let secrets: Api<Secret> = world.cluster.api();
    let secret = secrets.get(&name).await.expect("credentials Secret");
    String::from_utf8(secret.data.expect("data")["token"].0.clone()).expect("UTF-8")
}

async fn requests_left(world: &OperatorWorld) -> u64 {
    let depth = Sqs::new(&world.aws)
        .depth(&world.request_queue().await)
        .await
        .expect("depth");
    depth.visible + depth.in_flight
}

/// Watches that no browser process of session `id` exists until the request
/// queue is empty (an agent has taken the request and decided) and once more
/// after: a browser the agent started would still be running then.
async fn taken_and_never_started(world: &OperatorWorld, id: &str) {
    let settled = eventually("the request was taken off the queue", WAIT, || async {
        requests_left(world).await == 0
    });
    let mut settled = std::pin::pin!(settled);
    loop {
        assert_no_browser_of(id);
        tokio::select! {
            () = &mut settled => break,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    assert_no_browser_of(id);
}

fn assert_no_browser_of(id: &str) {
    let found = processes_with(id);
    let commands: Vec<String> = found
        .iter()
        .map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&raw).replace('\0', " ")
        })
        .collect();
    assert!(found.is_empty(), "a browser of {id} started: {commands:?}");
}

/// The cells of a session's row in the server's Table (what `kubectl get
/// bsess` prints): Name, Fleet, Phase, Instance, Expires, Age.
async fn printed_row(world: &OperatorWorld, name: &str) -> Vec<String> {
    let path = format!(
        "/apis/browserfleet.io/v1alpha1/namespaces/{}/browsersessions/{name}",
        world.cluster.ns
    );
    let request = http::Request::get(path)
        .header(
            "accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .body(Vec::new())
        .expect("request");
    let table: Value = world.cluster.client.request(request).await.expect("table");
    table["rows"][0]["cells"]
        .as_array()
        .expect("cells")
        .iter()
        .map(|c| {
            c.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| c.to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_becomes_ready_and_serves_devtools_with_the_token_from_its_secret() {
    let world = OperatorWorld::new("session-ready").await;
    let _operator = world.start_operator(test_settings(), None).await;
    let nodes = world.start_nodes(|_| {});
    world.apply(&world.fleet(1, 2)).await;
    world
        .apply_session(&world.session("smoke", json!({})))
        .await;

    let session = world.wait_for_phase("smoke", SessionPhase::Ready).await;
    assert!(
        session
            .finalizers()
            .contains(&"browserfleet.io/session".to_owned())
    );
    let status = session.status.clone().unwrap();
    assert_eq!(
        status.session_id.as_deref(),
        Some(session_id(&session).as_str())
    );
    assert!(status.instance_id.as_deref().unwrap().starts_with("i-"));
    assert!(status.requested_at.is_some() && status.started_at.is_some());
    assert!(status.expires_at.is_some());
    let endpoints = status.endpoints.clone().expect("endpoints");
    assert!(
        endpoints
            .web_socket_debugger_url
            .starts_with("ws://127.0.0.1:"),
        "{endpoints:?}"
    );
    assert!(
        endpoints.http_url.starts_with("http://127.0.0.1:"),
        "{endpoints:?}"
    );

    // `kubectl get bsess` columns, as the server prints them.
    let table = printed_row(&world, "smoke").await;
    assert_eq!(table[1], "fleet", "{table:?}");
    assert_eq!(table[2], "Ready", "{table:?}");
    assert_eq!(table[3], status.instance_id.clone().unwrap(), "{table:?}");
    let expires: jiff::Timestamp = table[4].parse().expect("Expires is a time");
    assert!(expires > jiff::Timestamp::now(), "{table:?}");
    assert!(!table[5].is_empty() && table[5] != "<invalid>", "{table:?}");

    // The token is in the session's own Secret, never in status.
    let token = token_of(&world, &session).await;
    assert!(token.len() >= 32);
    assert!(!serde_json::to_string(&status).unwrap().contains(&token));
    let secrets: Api<Secret> = world.cluster.api();
    let secret = secrets
        .get(status.credentials_secret.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(secret.owner_references()[0].uid, session.uid().unwrap());

    // A CDP client connects with the token and evaluates JavaScript.
    let url = format!("{}?token={token}", endpoints.web_socket_debugger_url);
    let mut cdp = Cdp::connect(&url).await.expect("gateway admits the token");
    assert_eq!(evaluate_in_new_page(&mut cdp, "6 * 7").await, json!(42));
    drop(cdp);
    // Without the token: 401.
    let version = format!("{}json/version", endpoints.http_url);
    assert_eq!(testkit::http::call("GET", &version, None).await.0, 401);
    assert_eq!(
        testkit::http::call("GET", &version, Some(&token)).await.0,
        200
    );

    world.delete_session("smoke").await;
    world.wait_session_gone("smoke").await;
    nodes.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_ends_at_its_ttl_and_goes_with_its_secret_after_ttl_seconds_after_finished() {
    let world = OperatorWorld::new("session-ttl").await;
    let _operator = world.start_operator(test_settings(), None).await;
    let nodes = world.start_nodes(|_| {});
    world.apply(&world.fleet(1, 1)).await;
    let manifest = world.session(
        "brief",
        json!({"ttlSeconds": 6, "ttlSecondsAfterFinished": 3}),
    );
    world.apply_session(&manifest).await;

    let ready = world.wait_for_phase("brief", SessionPhase::Ready).await;
    let id = session_id(&ready);
    let secret = ready.status.clone().unwrap().credentials_secret.unwrap();
    assert!(!processes_with(&id).is_empty(), "its browser runs");

    let ended = world
        .wait_for_phase("brief", SessionPhase::Terminated)
        .await;
    assert_eq!(reason(&ended), Some(SessionEndReason::Expired));
    assert!(ended.status.clone().unwrap().finished_at.is_some());
    eventually("browser gone", WAIT, || async {
        processes_with(&id).is_empty()
    })
    .await;

    world.wait_session_gone("brief").await;
    let secrets: Api<Secret> = world.cluster.api();
    eventually("its Secret went with it", WAIT, || async {
        matches!(secrets.get_opt(&secret).await, Ok(None))
    })
    .await;
    nodes.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_ready_session_ends_its_browser_before_the_finalizer_goes() {
    let world = OperatorWorld::new("session-delete").await;
    let _operator = world.start_operator(test_settings(), None).await;
    let nodes = world.start_nodes(|_| {});
    world.apply(&world.fleet(1, 1)).await;
    world
        .apply_session(&world.session("doomed", json!({})))
        .await;
    let ready = world.wait_for_phase("doomed", SessionPhase::Ready).await;
    let id = session_id(&ready);
    assert!(!processes_with(&id).is_empty(), "its browser runs");

    world.delete_session("doomed").await;
    // Watched: the moment the resource is gone, its browser is too.
    world.wait_session_gone("doomed").await;
    assert_eq!(
        processes_with(&id),
        Vec::<u32>::new(),
        "browser outlived its session"
    );
    nodes.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_deleted_while_queued_is_never_started_when_capacity_appears() {
    let world = OperatorWorld::new("session-cancel").await;
    let _operator = world.start_operator(test_settings(), None).await;
    let nodes = world.start_nodes(|_| {});
    take_the_only_slot(&world).await;

    // The only slot is taken: the second waits on the queue.
    world
        .apply_session(&world.session("queued", json!({})))
        .await;
    let queued = world.wait_for_phase("queued", SessionPhase::Starting).await;
    let id = session_id(&queued);
    world.wait_put_back(2).await;
    assert_eq!(
        phase(&world.sessions().get("queued").await.unwrap()),
        SessionPhase::Starting
    );
    world.delete_session("queued").await;
    world.wait_session_gone("queued").await;

    // Capacity appears: the agent takes the cancelled request and refuses it.
    world.delete_session("first").await;
    world.wait_session_gone("first").await;
    taken_and_never_started(&world, &id).await;
    nodes.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_no_agent_starts_in_time_fails_and_is_never_started_later() {
    let world = OperatorWorld::new("session-timeout").await;
    let _operator = world.start_operator(test_settings(), None).await;
    let nodes = world.start_nodes(|_| {});
    take_the_only_slot(&world).await;

    world
        .apply_session(&world.session("impatient", json!({"startTimeoutSeconds": 3})))
        .await;
    let failed = world
        .wait_for_phase("impatient", SessionPhase::Failed)
        .await;
    assert_eq!(reason(&failed), Some(SessionEndReason::StartTimeout));
    let id = session_id(&failed);

    // A slot frees: the agent takes the stale request and refuses it.
    world.delete_session("first").await;
    taken_and_never_started(&world, &id).await;
    assert_eq!(
        phase(&world.sessions().get("impatient").await.unwrap()),
        SessionPhase::Failed
    );
    nodes.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn what_the_fleet_forbids_fails_without_a_message_on_the_queue() {
    let world = OperatorWorld::new("session-forbidden").await;
    let _operator = world.start_operator(test_settings(), None).await;
    let mut fleet = world.fleet(0, 1);
    fleet["spec"]["agent"]["browser"]["blockedArgs"] = json!(["--disable-web-security"]);
    fleet["spec"]["agent"]["sessions"] = json!({"defaultTtlSeconds": 300, "maxTtlSeconds": 600});
    world.apply(&fleet).await;
    world
        .wait_for("queues created", |f| {
            f.status.as_ref().and_then(|s| s.queues.as_ref()).is_some()
        })
        .await;

    let cases = [
        (
            "blocked-arg",
            json!({"args": ["--disable-web-security"]}),
            "forbids",
        ),
        ("too-long", json!({"ttlSeconds": 601}), "hard maximum"),
        (
            "kept-profile",
            json!({"profile": {"name": "p", "persistent": true}}),
            "allowPersistent",
        ),
        (
            "no-fleet",
            json!({"fleetRef": {"name": "nowhere"}}),
            "no BrowserFleet nowhere",
        ),
    ];
    for (name, spec, _) in &cases {
        world
            .apply_session(&world.session(name, spec.clone()))
            .await;
    }
    for (name, _, says) in &cases {
        let failed = world.wait_for_phase(name, SessionPhase::Failed).await;
        assert_eq!(reason(&failed), Some(SessionEndReason::Rejected), "{name}");
        let message = failed.status.clone().unwrap().message.unwrap_or_default();
        assert!(message.contains(says), "{name}: {message}");
        assert!(
            failed.status.clone().unwrap().requested_at.is_none(),
            "{name}"
        );
    }
    let messages = receive_batch(&Sqs::new(&world.aws), &world.request_queue().await, None).await;
    assert!(messages.is_empty(), "nothing enqueued: {messages:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_restarted_between_enqueue_and_reply_makes_the_session_ready_once() {
    let world = OperatorWorld::new("session-restart").await;
    let operator = world.start_operator(test_settings(), None).await;
    let nodes = world.start_nodes(|_| {});
    world.apply(&one_slot_fleet(&world)).await;
    world
        .apply_session(&world.session("first", json!({})))
        .await;
    let first = world.wait_for_phase("first", SessionPhase::Ready).await;
    world
        .apply_session(&world.session("second", json!({})))
        .await;
    let second = world.wait_for_phase("second", SessionPhase::Starting).await;
    let id = session_id(&second);

    // The agent's address comes from the fleet's status, which the fleet
    // reconciler writes on its own schedule: a session can be Ready before
    // the status names the address of the instance that serves it.
    let instance = first.status.clone().unwrap().instance_id.unwrap();
    let address_of = |fleet: &BrowserFleet| fleet.instance_status(&instance)?.address.clone();
    let fleet = world
        .wait_for("the instance's registered address", |f| {
            address_of(f).is_some()
        })
        .await;
    let address = address_of(&fleet).expect("registered address");
    // The operator dies with the request on the queue (`Starting` is
    // written just before the send).
    eventually("the request on the queue", WAIT, || async {
        requests_left(&world).await == 1
    })
    .await;
    operator.kill();
    // The slot frees behind its back (through the agent itself): the agent
    // starts the second session and replies to the events queue, where the
    // reply waits.
    let end = format!("http://{address}/v1/sessions/{}", session_id(&first));
    let token = world.fleet_token().await;
    assert_eq!(
        testkit::http::call("DELETE", &end, Some(&token)).await.0,
        200
    );
    eventually("the second browser started", WAIT, || async {
        !processes_with(&id).is_empty()
    })
    .await;
    assert_eq!(
        phase(&world.sessions().get("second").await.unwrap()),
        SessionPhase::Starting
    );

    let _operator = world.start_operator(test_settings(), None).await;
    let ready = world.wait_for_phase("second", SessionPhase::Ready).await;
    assert_eq!(
        ready.status.clone().unwrap().instance_id.as_deref(),
        Some(instance.as_str())
    );
    let first = world
        .wait_for_phase("first", SessionPhase::Terminated)
        .await;
    assert_eq!(reason(&first), Some(SessionEndReason::Deleted));
    // Exactly one browser: one agent session on the one instance.
    let state =
        testkit::http::call("GET", &format!("http://{address}/v1/state"), Some(&token)).await;
    let state: Value = serde_json::from_str(&state.1).expect("state");
    let sessions: Vec<&str> = state["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(sessions, vec![id.as_str()], "{state:#}");
    assert_eq!(world.instances().await.len(), 1);
    assert_eq!(requests_left(&world).await, 0);
    nodes.shutdown().await;
}

/// What goes on the events queue in the name of an agent, as `sign` signs
/// it (nothing: unsigned), `copies` times: one message signed once, so the
/// copies carry the same signature.
async fn forge(world: &OperatorWorld, body: &Value, sign: Option<&str>, copies: usize) {
    use browserfleet::protocol::signing::{self, Purpose};
    let body = body.to_string();
    let attributes = sign
        .map(|key| {
            signing::sign(
                key.as_bytes(),
                Purpose::Event,
                &body,
                jiff::Timestamp::now().as_second(),
            )
        })
        .unwrap_or_default();
    let message = browserfleet::cloud::OutgoingMessage {
        body,
        delay: Duration::ZERO,
        attributes,
    };
    let events = world.events_queue().await;
    for _ in 0..copies {
        Sqs::new(&world.aws)
            .send(&events, &message)
            .await
            .expect("send");
    }
}

/// The operator's count of refused events for `reason`.
fn refused(operator: &testkit::operator_world::OperatorHandle, reason: &str) -> u64 {
    let needle = format!("browserfleet_operator_events_refused_total{{reason=\"{reason}\"}} ");
    operator
        .metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&needle)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_registrations_and_replies_are_refused_and_the_token_goes_nowhere() {
    let world = OperatorWorld::new("session-forged").await;
    let operator = world.start_operator(test_settings(), None).await;
    // No nodes: the session waits, its instance boots for ever.
    world.apply(&world.fleet(0, 1)).await;
    world
        .apply_session(&world.session("target", json!({})))
        .await;
    let target = world.wait_for_phase("target", SessionPhase::Starting).await;
    let key = world.fleet_secret("messageKey").await;

    // Where a forger listens, hoping for the fleet token.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trap = listener.local_addr().unwrap().to_string();
    let dialled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = dialled.clone();
    let trap_task = tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let instance = loop {
        if let Some(instance) = world.instances().await.first() {
            break instance.id.as_str().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let fleet = world.fleet_key();
    let registration = |kind: &str, instance: &str| {
        json!({"version": 1, "type": kind, "fleet": fleet, "instanceId": instance,
               "address": trap, "agentVersion": "0.1.0", "slots": 2, "sessions": 0,
               "draining": false, "at": jiff::Timestamp::now().to_string()})
    };
    forge(&world, &registration("node.registered", &instance), None, 1).await;
    forge(
        &world,
        &registration("node.registered", &instance),
        Some(&"x".repeat(40)),
        1,
    )
    .await;
    // Validly signed (a copy of an agent's message), sent twice: the copy
    // is a replay. For an instance that does not exist, so the first one is
    // harmless.
    let heartbeat = registration("node.heartbeat", "i-0000000000000dead");
    forge(&world, &heartbeat, Some(&key), 2).await;

    // A ready reply for the session on a browser the forger controls.
    let uid = target.uid().unwrap();
    let ready = |session_id: &str| {
        json!({"version": 1, "type": "session.ready", "sessionId": session_id,
               "instanceId": instance,
               "labels": {"browserfleet.io/namespace": world.cluster.ns,
                          "browserfleet.io/session": "target", "browserfleet.io/uid": uid},
               "at": jiff::Timestamp::now().to_string(),
               "endpoints": {"webSocketDebuggerUrl": format!("ws://{trap}/devtools/browser/x"),
                             "httpBase": format!("http://{trap}/"),
                             "jsonVersion": format!("http://{trap}/json/version")},
               "token": "t".repeat(40),
               "expiresAt": "2099-01-01T00:00:00Z"})
    };
    forge(&world, &ready(&session_id(&target)), None, 1).await;
    // Signed (an agent's), but for another session id than the operator
    // asked for.
    forge(&world, &ready("bs-someone-else"), Some(&key), 1).await;

    eventually("refusals counted", WAIT, || async {
        refused(&operator, "unsigned") >= 2
            && refused(&operator, "invalid") >= 1
            && refused(&operator, "replayed") >= 1
    })
    .await;
    let events = world.events_queue().await;
    // Read at least once: the signed reply for another session id may stay
    // in flight, kept to end a browser on an instance that has no address
    // yet, like any ready reply nobody waits for.
    eventually("every forged event read", WAIT, || async {
        let depth = Sqs::new(&world.aws).depth(&events).await.expect("depth");
        depth.visible == 0
    })
    .await;
    // Three reconciles of the fleet later (resyncs, 2 s apart here),
    // still nothing.
    let reconciles = || {
        operator
            .metrics
            .render()
            .lines()
            .find_map(|l| {
                l.strip_prefix("browserfleet_operator_reconciles_total{outcome=\"ok\"} ")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    let before = reconciles();
    eventually("three more reconciles", WAIT, || async {
        reconciles() >= before + 3
    })
    .await;
    assert_eq!(
        dialled.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the operator dialled a forged address"
    );
    let after = world.sessions().get("target").await.unwrap();
    assert_eq!(phase(&after), SessionPhase::Starting, "{:?}", after.status);

    // The control: the same reply, signed by the fleet's key and for the
    // session id the operator asked for, is applied.
    forge(&world, &ready(&session_id(&target)), Some(&key), 1).await;
    world.wait_for_phase("target", SessionPhase::Ready).await;
    trap_task.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_secret_from_before_signed_messages_gets_a_message_key_and_keeps_its_token() {
    use k8s_openapi::ByteString;
    let world = OperatorWorld::new("session-old-secret").await;
    let secrets: Api<Secret> = world.cluster.api();
    let name = browserfleet::operator::secrets::secret_name(&world.name);
    let old = |value: char| ByteString(value.to_string().repeat(40).into_bytes());
    secrets
        .create(
            &Default::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": name},
                "data": {"fleetToken": old('f'), "callbackSecret": old('c')},
            }))
            .unwrap(),
        )
        .await
        .expect("an old fleet Secret");
    let _operator = world.start_operator(test_settings(), None).await;
    let nodes = world.start_nodes(|_| {});
    world.apply(&world.fleet(0, 1)).await;
    // The agent needs the key to answer a BrowserSession.
    world
        .apply_session(&world.session("after-upgrade", json!({})))
        .await;
    world
        .wait_for_phase("after-upgrade", SessionPhase::Ready)
        .await;
    assert_eq!(world.fleet_secret("fleetToken").await, "f".repeat(40));
    assert!(world.fleet_secret("messageKey").await.len() >= 32);
    world.delete_session("after-upgrade").await;
    world.wait_session_gone("after-upgrade").await;
    nodes.shutdown().await;
}
