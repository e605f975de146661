//! The agent process killed with SIGKILL and started again: its browsers
//! live on, are re-adopted from the session table and stay supervised, and a
//! browser that no session owns is killed.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use testkit::agent_world::{
    AgentWorld, CHROMIUM, Cdp, TEST_BROWSER_ARGS, evaluate_in_new_page, eventually, processes_with,
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
    let _ = world;
    (child, address)
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
