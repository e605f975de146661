//! The agent process killed with SIGKILL and started again: its browsers
//! live on, are re-adopted from the session table and stay supervised, and a
//! browser that no session owns is killed. And the agent handing over on
//! SIGHUP: its successor takes the node, the open connections stay. And
//! SIGTERM ends a draining or drained agent at once.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use testkit::agent_world::{
    AgentWorld, CHROMIUM, Cdp, TEST_BROWSER_ARGS, attach_new_page, evaluate_in,
    evaluate_in_new_page, eventually, processes_with,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts `browserfleet agent` as its own process; returns it and the
/// address it listens on. Without `identity` the agent asks the instance
/// metadata service, which moto serves.
async fn spawn_agent(
    world: &AgentWorld,
    config: &std::path::Path,
    identity: Option<(&str, &str)>,
) -> (Child, String) {
    let (child, address, _) = spawn_agent_with(world, config, identity, &[]).await;
    (child, address)
}

/// [`spawn_agent`] with more environment; also returns the lines the agent
/// (and any successor it starts, which shares its stdout) prints later.
async fn spawn_agent_with(
    world: &AgentWorld,
    config: &std::path::Path,
    identity: Option<(&str, &str)>,
    env: &[(&str, &str)],
) -> (Child, String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let moto = testkit::moto::moto();
    let mut command = Command::new(env!("CARGO_BIN_EXE_browserfleet"));
    command.args(["agent", "--config"]).arg(config);
    if let Some((instance_id, advertise)) = identity {
        command.args([
            "--instance-id",
            instance_id,
            "--advertise-address",
            advertise,
        ]);
    }
    let mut child = command
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &moto.endpoint)
        .env("AWS_ENDPOINT_URL", &moto.endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("agent binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("agent prints its address")
        .expect("stdout readable")
        .expect("a line");
    let address = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    // Read on, so that a later line is never written into a closed pipe.
    let (later, later_lines) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = later.send(line);
        }
    });
    let _ = world;
    (child, address, later_lines)
}

fn sigkill(child: &Child) {
    let pid = child.id().expect("agent pid");
    // SAFETY: a plain kill(2) of the agent process this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_readopts_its_browsers_and_kills_strangers() {
    let mut world = AgentWorld::new("agent-restart", 3).await;
    world.config["sessions"] = json!({
        "defaultTtlSeconds": 300, "maxTtlSeconds": 600, "neverUsedTimeoutSeconds": 600
    });
    let config_path = world.state_dir.path().join("config.json");
    std::fs::write(&config_path, world.config.to_string()).unwrap();
    // The first agent takes its identity from the metadata service (moto's:
    // instance i-fake at 127.0.0.1), the second from the command line.
    let (mut agent, address) = spawn_agent(&world, &config_path, None).await;
    // s-keep-2 browses through an authenticated proxy, chained by the agent
    // on a port of its own: the restarted agent must listen there again,
    // with the credentials it sealed into its table.
    let (proxy, seen) =
        testkit::http_proxy::authenticating_proxy("127.0.0.6", "Basic YWxpY2U6czNjcmV0").await;
    let mut sessions: Vec<(String, Value)> = Vec::new();
    for id in ["s-keep-1", "s-keep-2"] {
        let mut request = json!({"ttlSeconds": 8});
        if id == "s-keep-2" {
            request["proxy"] = json!({"server": format!("http://{proxy}"), "username": "alice", "password": "s3cret"});
        }
        world.request(id, request).await;
        let ready = world.reply("session.ready", id).await;
        assert_eq!(ready["instanceId"], "i-fake", "identity from IMDSv2");
        sessions.push((id.to_owned(), ready));
    }
    sigkill(&agent);
    let _ = agent.wait().await;
    // The browsers outlive their agent.
    for (id, _) in &sessions {
        let profile = world.profiles_root().join("tmp").join(id);
        assert!(
            !processes_with(&profile.display().to_string()).is_empty(),
            "{id} browser alive"
        );
    }
    // A browser started from the agent's profiles that no session owns.
    let stranger_dir = world.profiles_root().join("tmp").join("stranger");
    std::fs::create_dir_all(&stranger_dir).unwrap();
    let mut stranger = Command::new(CHROMIUM)
        .args(TEST_BROWSER_ARGS)
        .args([
            "--headless=new",
            "--remote-debugging-port=0",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", stranger_dir.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("stranger browser");
    let stranger_marker = stranger_dir.display().to_string();
    eventually("stranger running", Duration::from_secs(10), || async {
        !processes_with(&stranger_marker).is_empty()
    })
    .await;

    let (mut restarted, new_address) =
        spawn_agent(&world, &config_path, Some(("i-restart", "127.0.0.1:0"))).await;
    eventually("stranger killed", Duration::from_secs(15), || async {
        processes_with(&stranger_marker).is_empty()
    })
    .await;
    let _ = stranger.wait().await;
    // Both sessions are reachable through the new agent's gateway...
    for (id, ready) in &sessions {
        let old_ws = ready["endpoints"]["webSocketDebuggerUrl"].as_str().unwrap();
        let ws = old_ws.replace(&address, &new_address);
        let mut cdp = Cdp::connect(&format!("{ws}?token={}", ready["token"].as_str().unwrap()))
            .await
            .unwrap_or_else(|e| panic!("{id} reachable after the restart: {e}"));
        assert_eq!(evaluate_in_new_page(&mut cdp, "2 + 3").await, json!(5));
        if id == "s-keep-2" {
            let (_, title) =
                testkit::agent_world::open_titled_page(&mut cdp, "http://site.example/").await;
            assert_eq!(title, "via proxy", "the chained proxy listens again");
        }
    }
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|(line, auth)| line.starts_with("GET http://site.example/")
                && auth.as_deref() == Some("Basic YWxpY2U6czNjcmV0")),
        "the proxy saw the session's credentials after the restart"
    );
    let table = std::fs::read_to_string(world.state_dir.path().join("sessions.json")).unwrap();
    assert!(
        !table.contains("s3cret"),
        "no clear credential on disk: {table}"
    );
    // ...and still supervised: their TTL ends them.
    for (id, _) in &sessions {
        let ended = world.reply("session.terminated", id).await;
        assert_eq!(ended["reason"], "expired", "{id}");
        let profile = world.profiles_root().join("tmp").join(id);
        eventually("browser gone", Duration::from_secs(10), || async {
            processes_with(&profile.display().to_string()).is_empty()
        })
        .await;
    }
    // SIGTERM: a prompt, clean exit.
    let pid = restarted.id().expect("agent pid");
    // SAFETY: a plain kill(2) of the agent process this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(10), restarted.wait())
        .await
        .expect("agent exits on SIGTERM")
        .expect("exit status");
    assert!(status.success(), "{status}");
}

/// A create of a session the restarted agent took back comes again (the
/// killed agent's delete of it never happened, or a producer retried): it
/// is answered `session.ready` with the running browser and a token of its
/// own, the first token still valid. Before issue #28 it was answered
/// `session.failed` (`sessionExists`) while the browser ran on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_of_a_readopted_session_that_comes_again_is_answered_with_the_running_browser() {
    let world = AgentWorld::new("agent-readopted-again", 1).await;
    let config_path = world.state_dir.path().join("config.json");
    std::fs::write(&config_path, world.config.to_string()).unwrap();
    let identity = Some(("i-again", "127.0.0.1:0"));
    let (agent, _) = spawn_agent(&world, &config_path, identity).await;
    world.request("s-again", json!({"ttlSeconds": 300})).await;
    let first = world.reply("session.ready", "s-again").await;
    sigkill(&agent);
    let (mut restarted, address) = spawn_agent(&world, &config_path, identity).await;
    world.request("s-again", json!({"ttlSeconds": 300})).await;
    let again = world.reply("session.ready", "s-again").await;
    assert_ne!(again["token"], first["token"], "a token of its own");
    for token in [&again["token"], &first["token"]] {
        let ws = again["endpoints"]["webSocketDebuggerUrl"].as_str().unwrap();
        let mut cdp = Cdp::connect(&format!("{ws}?token={}", token.as_str().unwrap()))
            .await
            .expect("both tokens open the running session");
        assert_eq!(evaluate_in_new_page(&mut cdp, "1 + 1").await, json!(2));
    }
    let (code, _) = testkit::http::call(
        "DELETE",
        &format!("http://{address}/v1/sessions/s-again"),
        Some(&world.fleet_token()),
    )
    .await;
    assert!(code < 300, "{code}");
    world.reply("session.terminated", "s-again").await;
    let pid = restarted.id().expect("agent pid");
    // SAFETY: a plain kill(2) of the agent process this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = restarted.wait().await;
}

/// Issue #28 item 9: a drained agent lets its long poll in flight run to
/// its end (up to 20 s) so that SQS hands nothing to a dead poll; a SIGTERM
/// then went unheard for that long, while the docs promise it exits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_drained_agent_at_once() {
    let world = AgentWorld::new("agent-drained-sigterm", 1).await;
    let config_path = world.state_dir.path().join("config.json");
    std::fs::write(&config_path, world.config.to_string()).unwrap();
    let (mut agent, address) =
        spawn_agent(&world, &config_path, Some(("i-drained", "127.0.0.1:0"))).await;
    // A session served and ended: the intake runs, and its next long poll
    // (20 s) is under way.
    world
        .request("s-before-the-drain", json!({"ttlSeconds": 2}))
        .await;
    world.reply("session.ready", "s-before-the-drain").await;
    world
        .reply("session.terminated", "s-before-the-drain")
        .await;
    let (code, _) = testkit::http::call(
        "POST",
        &format!("http://{address}/v1/drain"),
        Some(&world.fleet_token()),
    )
    .await;
    assert_eq!(code, 202);
    // No session: the drain ends at the next supervision pass (0.5 s).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        agent.try_wait().unwrap().is_none(),
        "a drained agent waits for its long poll unless told to stop"
    );
    let pid = agent.id().expect("agent pid");
    let signalled = std::time::Instant::now();
    // SAFETY: a plain kill(2) of the agent process this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(15), agent.wait())
        .await
        .expect("agent exits on SIGTERM")
        .expect("exit status");
    let took = signalled.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took < Duration::from_secs(3),
        "exited {took:?} after SIGTERM; at once expected"
    );
}

/// A loopback port free now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Kills a process this test did not start (and so cannot `kill_on_drop`)
/// when the test ends, passed or not.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if runs(self.0) {
            // SAFETY: a plain kill(2) of a process the test caused.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

/// Whether process `pid` runs (a zombie does not).
fn runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_handed_over_by_sighup_keeps_open_connections_and_its_successor_takes_the_node() {
    let mut world = AgentWorld::new("agent-handover", 3).await;
    world.config["sessions"] = json!({
        "defaultTtlSeconds": 300, "maxTtlSeconds": 600, "neverUsedTimeoutSeconds": 600
    });
    // A node's ports are fixed: the successor listens where the agent did.
    world.config["gatewayPort"] = json!(free_port());
    world.config["egress"]["proxyPort"] = json!(free_port());
    let config_path = world.state_dir.path().join("config.json");
    std::fs::write(&config_path, world.config.to_string()).unwrap();
    // systemd's notification socket, as `NotifyAccess=main` gives one.
    let notify_path = world.state_dir.path().join("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    let (mut agent, address, mut later) = spawn_agent_with(
        &world,
        &config_path,
        Some(("i-handover", "127.0.0.1:0")),
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    )
    .await;
    let (proxy, seen) =
        testkit::http_proxy::authenticating_proxy("127.0.0.7", "Basic Ym9iOmgwcA==").await;
    world.request("s-open", json!({})).await;
    let open = world.reply("session.ready", "s-open").await;
    world
        .request(
            "s-chained",
            json!({"proxy": {"server": format!("http://{proxy}"), "username": "bob", "password": "h0p"}}),
        )
        .await;
    let chained = world.reply("session.ready", "s-chained").await;
    let url = |ready: &Value| {
        format!(
            "{}?token={}",
            ready["endpoints"]["webSocketDebuggerUrl"].as_str().unwrap(),
            ready["token"].as_str().unwrap()
        )
    };
    let mut cdp = Cdp::connect(&url(&open)).await.expect("connects");
    let page = attach_new_page(&mut cdp, "about:blank").await;
    assert_eq!(evaluate_in(&mut cdp, &page, "1 + 1").await, json!(2));

    let old = agent.id().expect("agent pid");
    // SAFETY: a plain kill(2) of the agent process this test started.
    unsafe { libc::kill(old as i32, libc::SIGHUP) };
    let mut message = [0u8; 256];
    let length = tokio::time::timeout(Duration::from_secs(30), notify.recv(&mut message))
        .await
        .expect("MAINPID= in time")
        .expect("a notification");
    let text = String::from_utf8_lossy(&message[..length]).into_owned();
    let successor: u32 = text
        .trim()
        .strip_prefix("MAINPID=")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("not a MAINPID=: {text:?}"));
    assert_ne!(successor, old);
    let _successor_killed_at_the_end = KillOnDrop(successor);
    let line = tokio::time::timeout(Duration::from_secs(30), later.recv())
        .await
        .expect("the successor listens in time")
        .expect("a line");
    assert_eq!(line, format!("listening on {address}"), "the same listener");

    // The open connection is still relayed by the old agent...
    assert_eq!(evaluate_in(&mut cdp, &page, "6 * 7").await, json!(42));
    assert!(
        runs(old),
        "the old agent relays until its connections close"
    );
    // ...while the successor serves new ones: the chained proxy listens
    // again on its port, which the old agent gave up.
    let mut fresh = Cdp::connect(&url(&chained))
        .await
        .expect("the successor admits a client");
    let (_, title) =
        testkit::agent_world::open_titled_page(&mut fresh, "http://site.example/").await;
    assert_eq!(title, "via proxy", "the chained proxy listens again");
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|(line, auth)| line.starts_with("GET http://site.example/")
                && auth.as_deref() == Some("Basic Ym9iOmgwcA==")),
        "the proxy saw the session's credentials through the successor"
    );
    drop(fresh);
    // The last open connection closes, and the long poll the hand-over
    // interrupted ends within its 20 s wait: the old agent exits, cleanly.
    drop(cdp);
    let status = tokio::time::timeout(Duration::from_secs(40), agent.wait())
        .await
        .expect("the old agent exits once its connections closed")
        .expect("exit status");
    assert!(status.success(), "{status}");

    // The successor ends both sessions as the owner of the node...
    for id in ["s-open", "s-chained"] {
        world
            .send_raw(&json!({"version": 1, "action": "delete", "sessionId": id}).to_string())
            .await;
    }
    for id in ["s-open", "s-chained"] {
        let ended = world.reply("session.terminated", id).await;
        assert_eq!(ended["sessionId"], id);
        let profile = world.profiles_root().join("tmp").join(id);
        eventually("browser gone", Duration::from_secs(10), || async {
            processes_with(&profile.display().to_string()).is_empty()
        })
        .await;
    }
    // ...and stops on SIGTERM.
    // SAFETY: a plain kill(2) of the successor this test caused.
    unsafe { libc::kill(successor as i32, libc::SIGTERM) };
    eventually("the successor exits", Duration::from_secs(10), || async {
        !runs(successor)
    })
    .await;
}
