//! Nodes for real: the operator's generated Linux boot script, checked by
//! shellcheck and run by the node simulator as cloud-init would run it
//! (`BootMode::UserData`): artifact download and digest check, the agent's
//! and browsers' users, the nftables egress rule, the systemd unit's user
//! and capabilities; then a session whose browser runs as the unprivileged
//! browser user with Chromium's sandbox on.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use browserfleet::api::BrowserFleetSpec;
use browserfleet::api::fleet::{AgentArtifact, Platform};
use browserfleet::api::session::{BrowserSessionStatus, SessionPhase};
use browserfleet::operator::bootstrap::{self, linux};
use devcluster::nodes::{BootMode, NodeSimulator, PortPool};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::{Value, json};

use testkit::agent_world::{Cdp, attach_new_page, evaluate_in, evaluate_in_new_page, eventually};
use testkit::artifact::Artifact;
use testkit::operator_world::{OperatorHandle, OperatorWorld, test_settings};

/// A fleet of one node booted from its user data: the agent from `artifact`,
/// browsers without `--no-sandbox`, and a blocked loopback range the OS rule
/// can be seen to enforce; its DevTools ports are the simulator's
/// `devtools` ports, so that the rule's port set covers the real ones.
fn booted_fleet(world: &OperatorWorld, url: &str, sha256: &str, devtools: (u16, u16)) -> Value {
    let mut fleet = world.fleet(1, 1);
    let agent = &mut fleet["spec"]["agent"];
    agent["browserPortRange"] = json!({"start": devtools.0, "end": devtools.1});
    agent["artifact"] = json!({"url": url, "sha256": sha256});
    agent["browser"]["extraArgs"] = json!(["--disable-gpu"]);
    agent["egress"] = json!({"blocked": ["127.0.0.2/32"]});
    fleet
}

/// `uid` of a user of this host.
fn uid_of(user: &str) -> u32 {
    let out = std::process::Command::new("id")
        .args(["-u", user])
        .output()
        .expect("id runs");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no user {user}"))
}

/// Owner of process `pid`.
fn owner(pid: u32) -> u32 {
    std::fs::metadata(format!("/proc/{pid}"))
        .expect("process exists")
        .uid()
}

fn field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .unwrap_or("")
        .trim()
        .to_owned()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Processes whose command line contains `needle`.
fn processes(needle: &str) -> Vec<u32> {
    testkit::agent_world::processes_with(needle)
}

/// Whether `user` can open a TCP connection to `address` (bash's
/// `/dev/tcp`, one second at most).
fn connects_as(user: Option<&str>, address: &str) -> bool {
    let (host, port) = address.rsplit_once(':').expect("host:port");
    let probe = format!("exec 3<>/dev/tcp/{host}/{port}");
    let mut command = match user {
        Some(user) => {
            let mut c = std::process::Command::new("timeout");
            c.args([
                "1",
                "setpriv",
                &format!("--reuid={user}"),
                &format!("--regid={user}"),
            ])
            .args(["--clear-groups", "bash", "-c", &probe]);
            c
        }
        None => {
            let mut c = std::process::Command::new("timeout");
            c.args(["1", "bash", "-c", &probe]);
            c
        }
    };
    command.status().map(|s| s.success()).unwrap_or(false)
}

fn node_dir(world: &OperatorWorld, instance: &str) -> PathBuf {
    world.work.path().join("nodes").join(instance)
}

/// The agent's state directory on a booted node.
fn state_dir(world: &OperatorWorld, instance: &str) -> PathBuf {
    node_dir(world, instance)
        .join("root")
        .join(linux::STATE_DIR.trim_start_matches('/'))
}

/// The browsers started on the node's profiles, by PID.
fn browsers_on(world: &OperatorWorld, instance: &str) -> Vec<u32> {
    let marker = state_dir(world, instance).join("profiles");
    let mut pids = processes(&marker.display().to_string());
    pids.sort_unstable();
    pids
}

/// The session's DevTools websocket URL with its token, from its Secret.
async fn devtools_url(world: &OperatorWorld, status: &BrowserSessionStatus) -> String {
    let secrets: Api<Secret> = world.cluster.api();
    let secret = secrets
        .get(status.credentials_secret.as_deref().expect("secret"))
        .await
        .expect("credentials");
    let token = String::from_utf8(secret.data.expect("data")["token"].0.clone()).unwrap();
    let endpoints = status.endpoints.as_ref().expect("endpoints");
    format!("{}?token={token}", endpoints.web_socket_debugger_url)
}

/// A CDP client of the session at `url`, once its agent admits one.
async fn reconnect(url: &str) -> Cdp {
    let connected = || async { Cdp::connect(url).await.ok() };
    eventually("the session answers", Duration::from_secs(30), || async {
        connected().await.is_some()
    })
    .await;
    connected().await.expect("connects")
}

/// A world whose nodes boot from their user data, its operator running, and
/// an agent artifact (the binary under test, `trailer` appended) served.
struct Booted {
    world: OperatorWorld,
    artifact: Artifact,
    operator: OperatorHandle,
    nodes: NodeSimulator,
    /// The simulator's browser ports.
    devtools: (u16, u16),
}

async fn booted_world(test: &str, trailer: &[u8]) -> Booted {
    let world = OperatorWorld::new(test).await;
    let artifact = serve_agent(&world, trailer).await;
    let operator = world.start_operator(test_settings(), None).await;
    let (nodes, devtools) = user_data_nodes(&world);
    Booted {
        world,
        artifact,
        operator,
        nodes,
        devtools,
    }
}

/// Nodes that boot from their user data, and their browser ports.
fn user_data_nodes(world: &OperatorWorld) -> (NodeSimulator, (u16, u16)) {
    let (first, last) = testkit::agent_world::port_range(40);
    let nodes = world.start_nodes(|options| {
        options.boot = BootMode::UserData;
        options.browser_ports = PortPool {
            first,
            last,
            per_node: 4,
        };
    });
    (nodes, (first, last))
}

/// The agent under test, `trailer` appended, served to the world's nodes.
async fn serve_agent(world: &OperatorWorld, trailer: &[u8]) -> Artifact {
    testkit::artifact::serve(
        &testkit::tools::browserfleet_binary(),
        trailer,
        world.work.path(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_linux_node_boots_from_its_user_data_and_runs_sandboxed_browsers_as_their_own_user() {
    let Booted {
        world,
        artifact,
        operator: _operator,
        nodes,
        devtools,
    } = booted_world("node-boot", b"").await;
    world
        .apply(&booted_fleet(
            &world,
            &artifact.url,
            &artifact.sha256,
            devtools,
        ))
        .await;
    world
        .apply_session(&world.session("sandboxed", json!({})))
        .await;
    let session = world.wait_for_phase("sandboxed", SessionPhase::Ready).await;
    let status = session.status.clone().expect("status");
    let instance = status.instance_id.clone().expect("instance");
    let root = node_dir(&world, &instance).join("root");

    // The artifact was installed, not the image's agent: a file, not a link.
    let installed = root.join("usr/local/bin/browserfleet");
    let meta = std::fs::symlink_metadata(&installed).expect("agent installed");
    assert!(meta.is_file() && meta.len() == std::fs::metadata(&artifact.path).unwrap().len());

    // The agent runs as its user, with only its capabilities.
    let agent_uid = uid_of(linux::AGENT_USER);
    let browser_uid = uid_of(linux::BROWSER_USER);
    let agents = nodes.agents();
    assert_eq!(agents.len(), 1, "{agents:?}");
    let agent = agents[0].pid;
    assert_eq!(owner(agent), agent_uid);
    assert_eq!(
        field(agent, "CapEff"),
        "00000000000000eb",
        "setuid, setgid, kill, chown, dac_override, fowner"
    );

    // Its browsers run as the browser user, with no capability, no
    // --no-sandbox, and the renderers under seccomp-bpf (the sandbox).
    let state = state_dir(&world, &instance);
    let browsers = browsers_on(&world, &instance);
    assert!(!browsers.is_empty(), "no browser on {instance}");
    for pid in &browsers {
        assert_eq!(owner(*pid), browser_uid, "{}", cmdline(*pid));
        assert!(!cmdline(*pid).contains("--no-sandbox"), "{}", cmdline(*pid));
        // The browser process itself holds no capability (its sandboxed
        // children hold some inside user namespaces of their own).
        if !cmdline(*pid).contains("--type=") {
            assert_eq!(field(*pid, "CapEff"), "0000000000000000");
        }
    }
    let renderers: Vec<u32> = browsers
        .iter()
        .copied()
        .filter(|pid| cmdline(*pid).contains("--type=renderer"))
        .collect();
    assert!(!renderers.is_empty(), "no renderer among {browsers:?}");
    for pid in renderers {
        assert_eq!(
            field(pid, "Seccomp"),
            "2",
            "renderer {pid} is not sandboxed"
        );
    }

    // The session works through the gateway.
    let url = devtools_url(&world, &status).await;
    let mut cdp = Cdp::connect(&url).await.expect("gateway admits the token");
    assert_eq!(evaluate_in_new_page(&mut cdp, "6 * 7").await, json!(42));
    drop(cdp);

    // The browser user reads nothing of the agent's state.
    let table = state.join("sessions.json");
    assert!(table.exists());
    let read = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={}", linux::BROWSER_USER),
            "--regid=nogroup",
            "--clear-groups",
            "cat",
        ])
        .arg(&table)
        .output()
        .expect("setpriv runs");
    assert!(
        !read.status.success(),
        "the browser user read the session table"
    );

    // The OS rule: the browser user's packets to a blocked range are
    // dropped, whoever else may connect.
    let listener = std::net::TcpListener::bind("127.0.0.2:0").expect("listen on 127.0.0.2");
    let blocked = listener.local_addr().unwrap().to_string();
    assert!(connects_as(None, &blocked));
    assert!(connects_as(Some(linux::AGENT_USER), &blocked));
    assert!(!connects_as(Some(linux::BROWSER_USER), &blocked));
    // And the node's own DevTools ports on loopback: the agent reaches the
    // session's browser there, the browser user does not.
    let port = browsers
        .iter()
        .find_map(|pid| {
            cmdline(*pid)
                .split(' ')
                .find_map(|arg| arg.strip_prefix("--remote-debugging-port="))
                .map(str::to_owned)
        })
        .expect("a DevTools port");
    let devtools_port = format!("127.0.0.1:{port}");
    assert!(connects_as(Some(linux::AGENT_USER), &devtools_port));
    assert!(!connects_as(Some(linux::BROWSER_USER), &devtools_port));

    world.delete_session("sandboxed").await;
    world.wait_session_gone("sandboxed").await;
    nodes.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_sha256_installs_nothing_and_the_node_never_registers() {
    let Booted {
        world,
        artifact,
        operator: _operator,
        nodes,
        devtools,
    } = booted_world("node-bad-digest", b"tampered").await;
    let wrong = "0".repeat(64);
    world
        .apply(&booted_fleet(&world, &artifact.url, &wrong, devtools))
        .await;
    let refused = || async {
        let instance = world.instances().await.into_iter().next()?;
        let log = std::fs::read_to_string(node_dir(&world, instance.id.as_str()).join("boot.log"))
            .ok()?;
        log.contains("does not match its SHA-256")
            .then_some((instance, log))
    };
    eventually(
        "the boot script refuses the artifact",
        Duration::from_secs(60),
        || async { refused().await.is_some() },
    )
    .await;
    let (instance, log) = refused().await.expect("refused");
    assert!(log.contains("not installed"), "{log}");
    // Nothing was installed: the image's agent is still the link the
    // simulator put there, and no agent ever ran.
    let root = node_dir(&world, instance.id.as_str()).join("root");
    assert!(
        std::fs::symlink_metadata(root.join("usr/local/bin/browserfleet"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        !root
            .join("etc/systemd/system")
            .join(linux::AGENT_UNIT)
            .exists()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(nodes.agents().is_empty());
    let fleet = world.get().await;
    assert_eq!(fleet.status.expect("status").ready_instances, 0);
    nodes.shutdown().await;
}

fn spec_with(artifact: Option<AgentArtifact>, append: Option<&str>) -> BrowserFleetSpec {
    let mut spec: BrowserFleetSpec = serde_json::from_value(json!({
        "instance": {
            "image": {"imageId": "ami-0123456789abcdef0"},
            "instanceTypes": ["m6i.large"],
            "subnetIds": ["subnet-01234567"],
            "securityGroupIds": ["sg-01234567"],
            "instanceProfile": "node",
        },
        "capacity": {"minInstances": 0, "maxInstances": 10},
        "agent": {"egress": {"blocked": ["10.0.0.0/8", "fd12::/16"]}},
    }))
    .expect("spec");
    spec.instance.platform = Platform::Linux;
    spec.agent.artifact = artifact;
    spec.instance.user_data_append = append.map(str::to_owned);
    spec
}

#[test]
fn generated_linux_boot_scripts_pass_shellcheck() {
    let dir = tempfile::tempdir().expect("dir");
    let variants = [
        ("image-agent", spec_with(None, None)),
        (
            "artifact",
            spec_with(
                Some(AgentArtifact {
                    url: "https://releases.example.com/it's/agent".into(),
                    sha256: "ab".repeat(32),
                }),
                Some("echo appended"),
            ),
        ),
        (
            "s3-artifact",
            spec_with(
                Some(AgentArtifact {
                    url: "s3://bucket/agent".into(),
                    sha256: "cd".repeat(32),
                }),
                None,
            ),
        ),
    ];
    for (name, spec) in variants {
        let script =
            bootstrap::user_data("team", "web", &spec, "/browserfleet/team/web/agent-config");
        let path: PathBuf = dir.path().join(name);
        std::fs::write(&path, &script).expect("written");
        let out = std::process::Command::new("shellcheck")
            .args(["--shell=bash", "--severity=style"])
            .arg(Path::new(&path))
            .output()
            .expect("shellcheck runs (make node-tools installs it)");
        assert!(
            out.status.success(),
            "{name}:\n{}\n{script}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// Waits for a command's invocation on `instance` to end; its status,
/// response code and output.
async fn invocation_end(
    ssm: &browserfleet::cloud::Ssm,
    command: &browserfleet::cloud::CommandId,
    instance: &browserfleet::cloud::InstanceId,
) -> browserfleet::cloud::CommandInvocation {
    use browserfleet::cloud::Commands;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let invocation = ssm.invocation(command, instance).await.expect("invocation");
        if invocation.status.is_final() {
            return invocation;
        }
        assert!(std::time::Instant::now() < deadline, "{invocation:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn run_command_runs_shell_on_the_node_and_restarts_its_agent_without_ending_sessions() {
    use browserfleet::cloud::{CommandDocument, CommandRequest, CommandStatus, Commands, Ssm};
    let Booted {
        world,
        artifact,
        operator: _operator,
        nodes,
        devtools,
    } = booted_world("node-run-command", b"").await;
    let moto = world
        .aws
        .sdk_config()
        .endpoint_url()
        .expect("moto endpoint")
        .to_owned();
    let ssm = Ssm::new(
        &world.aws.with_endpoint(
            &nodes
                .serve_run_command(&moto)
                .await
                .expect("stand-in serves"),
        ),
    );
    world
        .apply(&booted_fleet(
            &world,
            &artifact.url,
            &artifact.sha256,
            devtools,
        ))
        .await;
    world.apply_session(&world.session("kept", json!({}))).await;
    let session = world.wait_for_phase("kept", SessionPhase::Ready).await;
    let status = session.status.clone().expect("status");
    let instance =
        browserfleet::cloud::InstanceId::new(status.instance_id.clone().expect("instance"));
    let url = devtools_url(&world, &status).await;
    let mut cdp = Cdp::connect(&url).await.expect("connects");
    assert_eq!(evaluate_in_new_page(&mut cdp, "1 + 1").await, json!(2));
    let before = nodes.agents()[0].pid;
    let browsers = browsers_on(&world, instance.as_str());
    assert!(!browsers.is_empty());

    // Output and exit codes come back as SSM reports them.
    let failing = ssm
        .send_command(&CommandRequest {
            document: CommandDocument::Shell(vec!["echo on the node".into(), "exit 3".into()]),
            instance_ids: vec![instance.clone()],
            comment: None,
            delivery_timeout: None,
            max_concurrency: None,
            max_errors: None,
        })
        .await
        .expect("sent");
    let ended = invocation_end(&ssm, &failing, &instance).await;
    assert_eq!(ended.status, CommandStatus::Failed, "{ended:?}");
    assert_eq!(ended.response_code, Some(3));
    assert_eq!(ended.stdout, "on the node\n");

    // A restart of the agent's unit restarts the agent; its browser lives on.
    let restart = ssm
        .send_command(&CommandRequest {
            document: CommandDocument::Shell(vec![
                "test -n \"$BROWSERFLEET_NODE_ROOT\"".into(),
                "systemctl restart browserfleet-agent.service".into(),
            ]),
            instance_ids: vec![instance.clone()],
            comment: Some("restart".into()),
            delivery_timeout: None,
            max_concurrency: None,
            max_errors: None,
        })
        .await
        .expect("sent");
    let ended = invocation_end(&ssm, &restart, &instance).await;
    assert_eq!(ended.status, CommandStatus::Success, "{ended:?}");
    eventually("a new agent runs", Duration::from_secs(30), || async {
        nodes.agents().first().is_some_and(|a| a.pid != before)
    })
    .await;
    // The browser is the one from before; the client's connection, which
    // went through the old agent, is reopened at the same endpoint with the
    // same token once the new agent has adopted it.
    assert_eq!(browsers_on(&world, instance.as_str()), browsers);
    drop(cdp);
    let mut cdp = reconnect(&url).await;
    assert_eq!(evaluate_in_new_page(&mut cdp, "2 + 2").await, json!(4));

    // Not a node of the simulator: refused, as SSM refuses an unmanaged one.
    let refused = ssm
        .send_command(&CommandRequest {
            document: CommandDocument::Shell(vec!["true".into()]),
            instance_ids: vec![browserfleet::cloud::InstanceId::new("i-0000000000000000")],
            comment: None,
            delivery_timeout: None,
            max_concurrency: None,
            max_errors: None,
        })
        .await;
    assert!(refused.is_err(), "{refused:?}");

    drop(cdp);
    world.delete_session("kept").await;
    world.wait_session_gone("kept").await;
    nodes.shutdown().await;
}

fn up_to_date(fleet: &browserfleet::api::BrowserFleet, sha256: &str, count: i32) -> bool {
    let Some(status) = fleet.status.as_ref() else {
        return false;
    };
    let ready = status
        .instances
        .iter()
        .filter(|i| i.state == browserfleet::api::fleet::InstanceState::Ready);
    status.up_to_date_instances == count
        && ready
            .clone()
            .all(|i| i.agent_artifact_sha256.as_deref() == Some(sha256))
        && ready.count() == usize::try_from(count).unwrap()
        && testkit::operator_world::has_condition(fleet, "AgentsUpToDate", "True")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_artifact_reaches_every_node_in_place_one_at_a_time_without_ending_a_session() {
    let world = OperatorWorld::new("node-upgrade").await;
    let v1 = serve_agent(&world, b"").await;
    let v2 = serve_agent(&world, b"\nbrowserfleet v2\n").await;
    assert_ne!(v1.sha256, v2.sha256);
    let (nodes, devtools) = user_data_nodes(&world);
    let moto = world
        .aws
        .sdk_config()
        .endpoint_url()
        .expect("moto endpoint")
        .to_owned();
    let run_command = nodes
        .serve_run_command(&moto)
        .await
        .expect("stand-in serves");
    let _operator = world
        .start_operator_with_aws(test_settings(), None, world.aws.with_endpoint(&run_command))
        .await;
    let mut fleet = booted_fleet(&world, &v1.url, &v1.sha256, devtools);
    fleet["spec"]["capacity"]["minInstances"] = json!(2);
    fleet["spec"]["capacity"]["maxInstances"] = json!(2);
    fleet["spec"]["agent"]["upgrade"] = json!({"maxConcurrency": 1, "maxErrors": 0});
    world.apply(&fleet).await;
    world
        .wait_for("two agents run v1", |f| up_to_date(f, &v1.sha256, 2))
        .await;
    world
        .apply_session(&world.session("through", json!({})))
        .await;
    let session = world.wait_for_phase("through", SessionPhase::Ready).await;
    let status = session.status.clone().expect("status");
    let host = status.instance_id.clone().expect("host");
    let url = devtools_url(&world, &status).await;
    // A client connected before the upgrade, with a page attached: its
    // connection must answer all through the upgrade.
    let mut cdp = Cdp::connect(&url).await.expect("connects");
    let page = attach_new_page(&mut cdp, "about:blank").await;
    assert_eq!(evaluate_in(&mut cdp, &page, "1 + 1").await, json!(2));
    let browsers = browsers_on(&world, &host);
    let mut asked = 0;
    let host_agents = format!("--instance-id\0{host}\0");
    let mut instances: Vec<String> = world
        .instances()
        .await
        .into_iter()
        .map(|i| i.id.to_string())
        .collect();
    instances.sort();

    // v2: one node at a time, in place.
    fleet["spec"]["agent"]["artifact"] = json!({"url": v2.url, "sha256": v2.sha256});
    world.apply(&fleet).await;
    let started = std::time::Instant::now();
    let mut most_at_once = 0;
    loop {
        asked += 1;
        assert_eq!(
            evaluate_in(&mut cdp, &page, &format!("{asked} * 2")).await,
            json!(asked * 2),
            "the open connection stopped answering"
        );
        let now = world.get().await;
        if up_to_date(&now, &v2.sha256, 2) {
            break;
        }
        let upgrading = now
            .status
            .as_ref()
            .map(|s| {
                s.instances
                    .iter()
                    .filter_map(|i| i.bootstrap.as_ref())
                    .filter(|b| {
                        b.artifact_sha256.as_deref() == Some(v2.sha256.as_str())
                            && matches!(
                                b.state,
                                browserfleet::api::fleet::CommandState::Pending
                                    | browserfleet::api::fleet::CommandState::InProgress
                            )
                    })
                    .count()
            })
            .unwrap_or(0);
        most_at_once = most_at_once.max(upgrading);
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not upgraded: {:#?}",
            now.status
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(most_at_once <= 1, "{most_at_once} upgrades ran at once");
    // The connection from before the upgrade still answers, relayed by the
    // agent that handed over, which runs beside the new one until the
    // connection closes.
    assert_eq!(
        evaluate_in(&mut cdp, &page, "document.readyState").await,
        json!("complete")
    );
    // The former agent relays beside the new one (a reload repeated by a
    // lagging reconcile would leave one more former agent for a moment).
    assert!(
        processes(&host_agents).len() >= 2,
        "the former agent relays"
    );
    // No instance was replaced, the session lives on its browser, and a
    // new client connects at the same endpoint with the same token.
    let mut after: Vec<String> = world
        .instances()
        .await
        .into_iter()
        .map(|i| i.id.to_string())
        .collect();
    after.sort();
    assert_eq!(after, instances);
    assert_eq!(browsers_on(&world, &host), browsers);
    assert_eq!(
        world
            .wait_for_phase("through", SessionPhase::Ready)
            .await
            .status
            .unwrap()
            .instance_id
            .as_deref(),
        Some(host.as_str())
    );
    let mut second = reconnect(&url).await;
    assert_eq!(evaluate_in_new_page(&mut second, "3 * 3").await, json!(9));
    drop(second);
    // Once its last connection closes (and the long poll its hand-over
    // interrupted has ended, within its 20 s wait), the former agent exits.
    drop(cdp);
    eventually(
        "the former agent exits",
        Duration::from_secs(40),
        || async { processes(&host_agents).len() == 1 },
    )
    .await;
    // What the nodes run now is the v2 file.
    for instance in &instances {
        let installed = node_dir(&world, instance).join("root/usr/local/bin/browserfleet");
        assert_eq!(
            std::fs::metadata(&installed).unwrap().len(),
            std::fs::metadata(&v2.path).unwrap().len()
        );
    }
    world.delete_session("through").await;
    world.wait_session_gone("through").await;
    nodes.shutdown().await;
}
