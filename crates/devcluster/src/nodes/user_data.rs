//! A simulated node that boots from its instance's user data, as cloud-init
//! would: the operator's real Linux boot script runs as root on this host,
//! against a node directory of its own.
//!
//! What is real: the script itself (bash, `set -euo pipefail`), its
//! download over loopback HTTP and SHA-256 check, `useradd` of the agent's
//! and the browsers' users (on this host: they are system users that cannot
//! log in, created once), the files it writes, and the oneshot units it
//! enables (`nft -f` loads the browsers' egress rule into this host's
//! nftables). The agent then runs from the installed file, as the unit's
//! `User=` with the unit's `AmbientCapabilities=` (through `setpriv`), with
//! the unit's own command line.
//!
//! What is shimmed, and how:
//! * **Paths.** The script writes every path under `$BROWSERFLEET_NODE_ROOT`
//!   (empty on an instance), set here to `<node>/root`. A unit's command
//!   line names host paths; an absolute path that exists under the node's
//!   root is taken from there (`/usr/local/bin/browserfleet`,
//!   `/var/lib/browserfleet`, `/etc/browserfleet/egress.nft`), any other
//!   (`/usr/sbin/nft`) is the host's.
//! * **`systemctl`.** A shim first on the script's `PATH` records its
//!   arguments; once the script has finished, the simulator starts every
//!   unit it enabled with `--now`, in order: a `Type=oneshot` unit's
//!   `ExecStart=` runs to its end as root, the one long-running unit is the
//!   agent. A command sent through Run Command that `restart`s the agent's
//!   unit restarts the agent (SIGTERM to it alone, as `KillMode=process`);
//!   one that `reload`s it sends the unit's main process SIGHUP when its
//!   `ExecReload=` is `kill -HUP $MAINPID` (`reload-or-restart` restarts
//!   it otherwise). With `NotifyAccess=main` the agent gets a
//!   `NOTIFY_SOCKET` of its node, and a `MAINPID=` on it makes that process
//!   the unit's main one, as systemd does (the sender's credentials are not
//!   checked); the former main process is left running, and killed with
//!   the node. `Restart=`, the rest of `KillMode=` and the sandboxing
//!   directives are not played: the simulator stops and restarts agents
//!   itself.
//! * **The image.** `/usr/local/bin/browserfleet` under the node's root is a
//!   link to the agent binary under test, as an image that carries the agent
//!   would have it; an artifact the script installs replaces it.
//! * **Identity.** What the metadata service tells an instance (its id, its
//!   address) and what many nodes on one host must not share (listener and
//!   browser ports) are appended to the agent's command line.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use thiserror::Error;

/// The shim `systemctl`: records what the boot script asks of it.
const SYSTEMCTL_SHIM: &str = "#!/bin/bash\n\
# systemctl of a node of the node simulator (docs/nodes.md): records what\n\
# the boot script asks; the simulator starts the units once it has ended.\n\
mkdir -p \"$BROWSERFLEET_NODE_ROOT/run\"\n\
echo \"$*\" >> \"$BROWSERFLEET_NODE_ROOT/run/systemctl.log\"\n";

/// Longest a oneshot unit may run.
const ONESHOT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a node did not boot: the instance never registers, as on EC2.
#[derive(Debug, Error)]
pub enum BootError {
    /// The instance's user data could not be read.
    #[error("cannot read the instance's user data: {0}")]
    UserData(String),
    /// The node directory could not be prepared.
    #[error("cannot prepare the node directory {path}: {source}")]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The boot script failed or ran too long.
    #[error("the boot script failed ({outcome}); its output is in {log}")]
    Script { outcome: String, log: PathBuf },
    /// A unit the script enabled is unreadable, or could not run.
    #[error("unit {unit}: {problem}")]
    Unit { unit: String, problem: String },
    /// The script enabled no long-running unit: nothing runs the agent.
    #[error("the boot script started no agent")]
    NoAgent,
}

/// The agent as its unit starts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentUnit {
    /// The unit's name (`browserfleet-agent.service`).
    pub name: String,
    /// The unit's command line, its paths taken from the node's root.
    pub command: Vec<String>,
    /// `User=`, if any.
    pub user: Option<String>,
    /// `Group=`, if any.
    pub group: Option<String>,
    /// `AmbientCapabilities=`, as systemd names them (`CAP_KILL`).
    pub capabilities: Vec<String>,
    /// `ExecReload=kill -HUP $MAINPID`: a reload sends the main process
    /// SIGHUP. Any other `ExecReload=` is not played (the unit cannot
    /// reload).
    pub reload_by_hangup: bool,
    /// `NotifyAccess=main` or `all`: the agent gets `NOTIFY_SOCKET`, and a
    /// `MAINPID=` it sends names the unit's new main process.
    pub notify_access: bool,
}

impl AgentUnit {
    /// The program and arguments that start it: through `setpriv` when it
    /// runs as a user of its own, with exactly its capabilities.
    pub fn launch(&self, extra: &[String]) -> (PathBuf, Vec<String>) {
        let mut command = self.command.clone();
        command.extend_from_slice(extra);
        let Some(user) = &self.user else {
            let program = PathBuf::from(command.remove(0));
            return (program, command);
        };
        let caps = self
            .capabilities
            .iter()
            .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase()))
            .collect::<Vec<_>>()
            .join(",");
        let mut args = vec![
            format!("--reuid={user}"),
            format!("--regid={}", self.group.as_deref().unwrap_or(user)),
            "--init-groups".to_owned(),
        ];
        if !caps.is_empty() {
            args.push(format!("--inh-caps={caps}"));
            args.push(format!("--ambient-caps={caps}"));
            args.push(format!("--bounding-set=-all,{caps}"));
        }
        args.push("--".to_owned());
        args.extend(command);
        (PathBuf::from("setpriv"), args)
    }
}

/// The user data of instance `id`, decoded.
pub async fn read(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<String, BootError> {
    use base64::Engine;
    let out = ec2
        .describe_instance_attribute()
        .instance_id(id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .map_err(|e| BootError::UserData(aws_sdk_ec2::error::DisplayErrorContext(e).to_string()))?;
    let encoded = out
        .user_data()
        .and_then(|value| value.value())
        .ok_or_else(|| BootError::UserData("the instance has none".into()))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| BootError::UserData(e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| BootError::UserData(e.to_string()))
}

/// What a command run on the node as root finds in its environment: the
/// node's root and the `systemctl` shim first on its `PATH`.
pub fn environment(node_dir: &Path) -> [(String, String); 2] {
    let path = format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        node_dir.join("shims").display()
    );
    [
        ("PATH".to_owned(), path),
        (
            "BROWSERFLEET_NODE_ROOT".to_owned(),
            root_of(node_dir).display().to_string(),
        ),
    ]
}

/// Where the `systemctl` shim records what it was asked.
pub fn systemctl_log(node_dir: &Path) -> PathBuf {
    root_of(node_dir).join("run/systemctl.log")
}

/// The node's root: where its script writes what it would write on `/`.
pub fn root_of(node_dir: &Path) -> PathBuf {
    node_dir.join("root")
}

/// Runs `script` as the node `node_dir`'s boot script and starts the oneshot
/// units it enabled; returns the agent's unit. `image_agent` is the agent
/// the image carries.
pub async fn boot(
    node_dir: &Path,
    script: &str,
    image_agent: &Path,
    timeout: Duration,
) -> Result<AgentUnit, BootError> {
    let root = root_of(node_dir);
    let shims = node_dir.join("shims");
    prepare(node_dir, &root, &shims, script, image_agent).map_err(|source| BootError::Prepare {
        path: node_dir.to_path_buf(),
        source,
    })?;
    let log = node_dir.join("boot.log");
    let outcome = run(
        tokio::process::Command::new("bash")
            .arg(node_dir.join("user-data"))
            .envs(environment(node_dir)),
        &log,
        timeout,
    )
    .await
    .map_err(|source| BootError::Prepare {
        path: log.clone(),
        source,
    })?;
    if let Some(outcome) = outcome {
        return Err(BootError::Script { outcome, log });
    }
    let enabled = std::fs::read_to_string(systemctl_log(node_dir)).unwrap_or_default();
    let mut agent = None;
    for unit in started_units(&enabled) {
        let text =
            std::fs::read_to_string(root.join("etc/systemd/system").join(&unit)).map_err(|e| {
                BootError::Unit {
                    unit: unit.clone(),
                    problem: e.to_string(),
                }
            })?;
        let service = parse_service(&text, &root).map_err(|problem| BootError::Unit {
            unit: unit.clone(),
            problem,
        })?;
        if service.oneshot {
            let (program, args) = service.agent.launch(&[]);
            let outcome = run(
                tokio::process::Command::new(program).args(args),
                &log,
                ONESHOT_TIMEOUT,
            )
            .await
            .map_err(|e| BootError::Unit {
                unit: unit.clone(),
                problem: e.to_string(),
            })?;
            if let Some(outcome) = outcome {
                return Err(BootError::Unit {
                    unit,
                    problem: format!("{outcome}; see {}", log.display()),
                });
            }
        } else {
            agent = Some(AgentUnit {
                name: unit,
                ..service.agent
            });
        }
    }
    agent.ok_or(BootError::NoAgent)
}

/// The node directory, open to the node's users (they pass through it to
/// their state), the image's agent, the shim, and the script.
fn prepare(
    node_dir: &Path,
    root: &Path,
    shims: &Path,
    script: &str,
    image_agent: &Path,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let bin = root.join("usr/local/bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(shims)?;
    for dir in [
        node_dir,
        root,
        &root.join("usr"),
        &root.join("usr/local"),
        &bin,
    ] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    let agent = bin.join("browserfleet");
    if std::fs::symlink_metadata(&agent).is_err() {
        std::os::unix::fs::symlink(image_agent, &agent)?;
    }
    let systemctl = shims.join("systemctl");
    std::fs::write(&systemctl, SYSTEMCTL_SHIM)?;
    std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(node_dir.join("user-data"), script)?;
    Ok(())
}

/// Runs `command` with its output appended to `log`; `None` when it exited
/// 0, else what happened.
async fn run(
    command: &mut tokio::process::Command,
    log: &Path,
    timeout: Duration,
) -> std::io::Result<Option<String>> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true)
        .spawn()?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => {
            let status = status?;
            Ok((!status.success()).then(|| status.to_string()))
        }
        Err(_) => Ok(Some(format!("still running after {timeout:?}"))),
    }
}

/// The units a `systemctl` log started, in order: `enable --now`, `start`
/// and `restart` start; `daemon-reload` and plain `enable` do not.
pub fn started_units(log: &str) -> Vec<String> {
    let mut units = Vec::new();
    for line in log.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let named: &[&str] = match words.as_slice() {
            ["enable", "--now", rest @ ..] | ["start" | "restart", rest @ ..] => rest,
            _ => &[],
        };
        for unit in named {
            if !units.iter().any(|u| u == unit) {
                units.push((*unit).to_owned());
            }
        }
    }
    units
}

/// The units a `systemctl` log reloaded, in order: `reload`, and
/// `reload-or-restart` (`true`: restarted when it cannot reload or does
/// not run).
pub fn reloaded_units(log: &str) -> Vec<(String, bool)> {
    let mut units: Vec<(String, bool)> = Vec::new();
    for line in log.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (named, or_restart): (&[&str], bool) = match words.as_slice() {
            ["reload", rest @ ..] => (rest, false),
            ["reload-or-restart" | "try-reload-or-restart", rest @ ..] => (rest, true),
            _ => (&[], false),
        };
        for unit in named {
            if !units.iter().any(|(u, _)| u == unit) {
                units.push(((*unit).to_owned(), or_restart));
            }
        }
    }
    units
}

/// Whether an `ExecReload=` line sends the main process SIGHUP.
fn is_hangup_of_main(exec: &str) -> bool {
    let words = shlex::split(exec).unwrap_or_default();
    matches!(
        words.iter().map(String::as_str).collect::<Vec<_>>().as_slice(),
        [kill, "-HUP" | "-SIGHUP" | "-1", "$MAINPID" | "${MAINPID}"]
            if Path::new(kill).file_name().is_some_and(|n| n == "kill")
    )
}

/// What the simulator reads of a service unit.
#[derive(Debug, PartialEq, Eq)]
struct Service {
    oneshot: bool,
    agent: AgentUnit,
}

/// Reads `[Service]`'s `Type=`, `ExecStart=`, `User=`, `Group=` and
/// `AmbientCapabilities=`; paths in the command line that exist under
/// `root` are taken from there.
fn parse_service(text: &str, root: &Path) -> Result<Service, String> {
    let mut section = "";
    let mut oneshot = false;
    let mut exec = None;
    let mut unit = AgentUnit {
        name: String::new(),
        command: Vec::new(),
        user: None,
        group: None,
        capabilities: Vec::new(),
        reload_by_hangup: false,
        notify_access: false,
    };
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if section != "[Service]" {
            continue;
        }
        match key {
            "Type" => oneshot = value == "oneshot",
            "ExecStart" => exec = Some(value.to_owned()),
            "User" => unit.user = Some(value.to_owned()),
            "Group" => unit.group = Some(value.to_owned()),
            "AmbientCapabilities" => {
                unit.capabilities = value.split_whitespace().map(str::to_owned).collect()
            }
            "ExecReload" => unit.reload_by_hangup = is_hangup_of_main(value),
            "NotifyAccess" => unit.notify_access = matches!(value, "main" | "exec" | "all"),
            _ => {}
        }
    }
    let exec = exec.ok_or("no ExecStart=")?;
    let words =
        shlex::split(&exec).ok_or_else(|| format!("ExecStart={exec}: unbalanced quotes"))?;
    if words.is_empty() {
        return Err("an empty ExecStart=".into());
    }
    unit.command = words
        .into_iter()
        .map(|word| match word.strip_prefix('/') {
            Some(relative) if root.join(relative).exists() => {
                root.join(relative).display().to_string()
            }
            _ => word,
        })
        .collect();
    Ok(Service {
        oneshot,
        agent: unit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloads_name_their_units_and_whether_a_restart_may_replace_them() {
        let log =
            "restart a.service\nreload b.service\nreload-or-restart c.service\nreload b.service\n";
        assert_eq!(
            reloaded_units(log),
            [
                ("b.service".to_owned(), false),
                ("c.service".to_owned(), true)
            ]
        );
        assert!(is_hangup_of_main("/bin/kill -HUP $MAINPID"));
        assert!(is_hangup_of_main("kill -HUP ${MAINPID}"));
        assert!(!is_hangup_of_main("/bin/kill -TERM $MAINPID"));
        assert!(!is_hangup_of_main("/usr/bin/reload-it"));
    }

    #[test]
    fn units_started_now_count_in_order_and_once() {
        let log = "daemon-reload\nenable --now a.service\nenable b.service\nenable --now c.service\nrestart a.service\n";
        assert_eq!(started_units(log), ["a.service", "c.service"]);
    }

    #[test]
    fn a_units_paths_come_from_the_node_root_when_there() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("usr/local/bin"))?;
        std::fs::write(dir.path().join("usr/local/bin/browserfleet"), "")?;
        let unit = "[Unit]\nDescription=x\nUser=ignored\n[Service]\nUser=browserfleet\nGroup=browserfleet\n\
                    ExecStart=/usr/local/bin/browserfleet agent --config-ssm-parameter '/a b' --state-dir /nowhere\n\
                    AmbientCapabilities=CAP_SETUID CAP_KILL\n";
        let service = parse_service(unit, dir.path()).expect("parses");
        assert!(!service.oneshot);
        let bin = dir
            .path()
            .join("usr/local/bin/browserfleet")
            .display()
            .to_string();
        assert_eq!(
            service.agent.command,
            [
                &bin,
                "agent",
                "--config-ssm-parameter",
                "/a b",
                "--state-dir",
                "/nowhere"
            ]
        );
        let (program, args) = service
            .agent
            .launch(&["--instance-id".into(), "i-1".into()]);
        assert_eq!(program, PathBuf::from("setpriv"));
        assert_eq!(
            args[..7],
            [
                "--reuid=browserfleet",
                "--regid=browserfleet",
                "--init-groups",
                "--inh-caps=+setuid,+kill",
                "--ambient-caps=+setuid,+kill",
                "--bounding-set=-all,+setuid,+kill",
                "--",
            ]
        );
        assert_eq!(args.last().map(String::as_str), Some("i-1"));
        let oneshot = parse_service(
            "[Service]\nType=oneshot\nExecStart=/usr/sbin/nft -f /etc/x\n",
            dir.path(),
        )
        .expect("parses");
        assert!(oneshot.oneshot);
        assert_eq!(
            oneshot.agent.launch(&[]),
            (
                PathBuf::from("/usr/sbin/nft"),
                vec!["-f".into(), "/etc/x".into()]
            )
        );
        Ok(())
    }
}
