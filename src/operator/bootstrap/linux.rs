//! The Linux node's boot script (cloud-init runs it as root, once).
//!
//! What it leaves behind:
//! * two system users that cannot log in: `browserfleet` runs the agent,
//!   `browserfleet-browser` runs every browser (with Chromium's sandbox: it
//!   is not root);
//! * the agent at [`AGENT_PATH`], downloaded and installed only when its
//!   SHA-256 matches, or the image's own when the fleet names no artifact;
//! * the OS egress rule: an nftables table that drops the browsers' user's
//!   packets to the metadata and link-local ranges and the fleet's blocked
//!   ones, loaded by a oneshot unit ordered before the agent's;
//! * the agent's systemd unit: the agent user with exactly the capabilities
//!   it needs to run and stop browsers as the other user, `KillMode=process`
//!   (browsers outlive an agent restart and are re-adopted), restarted on
//!   failure, reloaded by SIGHUP (an in-place upgrade: the agent hands over
//!   to the new file and tells systemd its PID, `NotifyAccess=main`), and
//!   the usual hardening.
//!
//! Every path is written under `$root`, which is empty on an instance. The
//! node simulator runs this very script with `BROWSERFLEET_NODE_ROOT` set to
//! a directory of its own and a `systemctl` of its own (`docs/nodes.md`,
//! "The node simulator").

use crate::api::BrowserFleetSpec;
use crate::api::fleet::AgentArtifact;

/// Where the agent is installed.
pub const AGENT_PATH: &str = "/usr/local/bin/browserfleet";
/// The user the agent runs as.
pub const AGENT_USER: &str = "browserfleet";
/// The user every browser runs as.
pub const BROWSER_USER: &str = "browserfleet-browser";
/// The agent's state: session table and profiles.
pub const STATE_DIR: &str = "/var/lib/browserfleet";
/// The agent's unit.
pub const AGENT_UNIT: &str = "browserfleet-agent.service";
/// The unit that loads the egress rule.
pub const EGRESS_UNIT: &str = "browserfleet-egress.service";
/// The egress rule's file.
pub const EGRESS_RULES: &str = "/etc/browserfleet/egress.nft";
/// What the agent may do beyond an ordinary user: start browsers as
/// [`BROWSER_USER`] (setuid, setgid), stop them (kill), and hand them their
/// profiles and clean up after them (chown, dac_override, fowner).
pub const AGENT_CAPABILITIES: &str =
    "CAP_SETUID CAP_SETGID CAP_KILL CAP_CHOWN CAP_DAC_OVERRIDE CAP_FOWNER";

/// A string as one single-quoted shell word.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// The boot script of the fleet `namespace/name`'s Linux instances.
pub fn script(
    namespace: &str,
    name: &str,
    spec: &BrowserFleetSpec,
    parameter: &str,
    os_ranges: &[String],
) -> String {
    let install = install(spec.agent.artifact.as_ref());
    let rules = egress_rules(
        &egress_table(namespace, name),
        os_ranges,
        &node_ports(spec),
        BROWSER_USER,
    );
    let agent_unit = agent_unit(parameter);
    let append = spec.instance.user_data_append.as_deref().unwrap_or("");
    format!(
        "#!/bin/bash\n\
         # browserfleet node of fleet {namespace}/{name}: installs the agent, its\n\
         # users and egress rule, and starts it (docs/nodes.md).\n\
         set -euo pipefail\n\
         # Empty on an instance; the node simulator's own directory there.\n\
         root=\"${{BROWSERFLEET_NODE_ROOT:-}}\"\n\
         \n\
         for user in {AGENT_USER} {BROWSER_USER}; do\n\
         \x20 id -u \"$user\" >/dev/null 2>&1 ||\n\
         \x20   useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \"$user\"\n\
         done\n\
         install -d -m 0711 -o {AGENT_USER} -g {AGENT_USER} \"$root{STATE_DIR}\"\n\
         \n\
         {install}\
         \n\
         if ! command -v nft >/dev/null; then\n\
         \x20 if command -v dnf >/dev/null; then dnf install -y nftables; else apt-get install -y nftables; fi\n\
         fi\n\
         mkdir -p \"$root/etc/browserfleet\" \"$root/etc/systemd/system\"\n\
         cat > \"$root{EGRESS_RULES}\" <<'RULES'\n\
         {rules}\
         RULES\n\
         cat > \"$root/etc/systemd/system/{EGRESS_UNIT}\" <<'UNIT'\n\
         [Unit]\n\
         Description=browserfleet: browsers may not reach the metadata service or blocked ranges\n\
         Before={AGENT_UNIT}\n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart=/usr/sbin/nft -f {EGRESS_RULES}\n\
         [Install]\n\
         WantedBy=multi-user.target\n\
         UNIT\n\
         cat > \"$root/etc/systemd/system/{AGENT_UNIT}\" <<'UNIT'\n\
         {agent_unit}\
         UNIT\n\
         systemctl daemon-reload\n\
         systemctl enable --now {EGRESS_UNIT}\n\
         systemctl enable --now {AGENT_UNIT}\n\
         {append}",
    )
}

/// The commands that upgrade a running node's agent in place (SSM's
/// `AWS-RunShellScript` runs them with `sh`): the boot script's download and
/// digest check, then a reload of the agent's unit: the running agent hands
/// the node over to the new file and keeps relaying the open DevTools
/// connections until they close (`agent::handover`); the browsers run on
/// and the new agent re-adopts them. An agent that does not run (or a unit
/// written before reloads existed) is restarted instead, which
/// `KillMode=process` also leaves the browsers to.
pub fn upgrade_commands(artifact: &AgentArtifact) -> Vec<String> {
    let script = format!(
        "set -euo pipefail\n\
         root=\"${{BROWSERFLEET_NODE_ROOT:-}}\"\n\
         {install}\
         systemctl reload-or-restart {AGENT_UNIT}\n",
        install = install(Some(artifact)),
    );
    let mut lines = vec!["bash -s <<'UPGRADE'".to_owned()];
    lines.extend(script.lines().map(str::to_owned));
    lines.push("UPGRADE".to_owned());
    lines
}

/// Downloads the artifact and installs it only when its digest matches; or
/// checks that the image carries an agent.
fn install(artifact: Option<&AgentArtifact>) -> String {
    let Some(artifact) = artifact else {
        return format!("test -x \"$root{AGENT_PATH}\"\n");
    };
    format!(
        "url={url}\n\
         tmp=$(mktemp)\n\
         trap 'rm -f \"$tmp\"' EXIT\n\
         case \"$url\" in\n\
         \x20 s3://*) aws s3 cp \"$url\" \"$tmp\" ;;\n\
         \x20 *) curl --fail --silent --show-error --location --retry 5 -o \"$tmp\" \"$url\" ;;\n\
         esac\n\
         if ! echo {sha}'  '\"$tmp\" | sha256sum --check --status; then\n\
         \x20 echo 'browserfleet: the agent artifact does not match its SHA-256; not installed' >&2\n\
         \x20 exit 1\n\
         fi\n\
         install -D -m 0755 \"$tmp\" \"$root{AGENT_PATH}\"\n",
        url = shell_quote(&artifact.url),
        sha = shell_quote(&artifact.sha256),
    )
}

/// The agent's unit. The state directory is the script's, mode 0711 (the
/// browsers' user may pass through to its profiles and list nothing), not
/// `StateDirectory=`'s: systemd would hand back to the agent's user every
/// profile it finds owned by the browsers' user.
fn agent_unit(parameter: &str) -> String {
    // systemd splits ExecStart like a shell: single quotes keep the
    // parameter one word (the CRD's pattern admits no quote in it).
    format!(
        "[Unit]\n\
         Description=browserfleet agent\n\
         After=network-online.target {EGRESS_UNIT}\n\
         Wants=network-online.target\n\
         Requires={EGRESS_UNIT}\n\
         [Service]\n\
         User={AGENT_USER}\n\
         Group={AGENT_USER}\n\
         ExecStart={AGENT_PATH} agent --config-ssm-parameter {parameter} --state-dir {STATE_DIR} --browser-user {BROWSER_USER} --json-logs\n\
         Restart=on-failure\n\
         RestartSec=2\n\
         KillMode=process\n\
         ExecReload=/bin/kill -HUP $MAINPID\n\
         NotifyAccess=main\n\
         AmbientCapabilities={AGENT_CAPABILITIES}\n\
         CapabilityBoundingSet={AGENT_CAPABILITIES}\n\
         ProtectSystem=full\n\
         ProtectHome=yes\n\
         PrivateTmp=yes\n\
         ProtectKernelTunables=yes\n\
         ProtectKernelModules=yes\n\
         ProtectControlGroups=yes\n\
         RestrictSUIDSGID=yes\n\
         LockPersonality=yes\n\
         LimitNOFILE=65536\n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        parameter = shell_quote(parameter),
    )
}

/// The nftables table of fleet `namespace/name`'s rule: one per fleet, so
/// that nodes of several fleets sharing one kernel (the node simulator) do
/// not replace each other's.
pub fn egress_table(namespace: &str, name: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{namespace}/{name}").as_bytes());
    format!("browserfleet_egress_{}", &hex::encode(digest)[..8])
}

/// The node's own loopback ports a browser must not reach by itself: the
/// agent's listener and the DevTools ports (its own and other sessions'):
/// the agent reaches them for it. The egress proxy's port stays open.
fn node_ports(spec: &BrowserFleetSpec) -> Vec<(i32, i32)> {
    let range = &spec.agent.browser_port_range;
    vec![
        (spec.agent.gateway_port, spec.agent.gateway_port),
        (range.start, range.end),
    ]
}

/// The OS egress rule: an nftables table that drops `user`'s packets to
/// `ranges`, and to the node's own `ports` on loopback, whatever opens the
/// socket. Loading the file replaces the table
/// as a whole (declare, delete, define), so a node's rule is always the
/// fleet's latest and loading it twice is harmless.
pub fn egress_rules(table: &str, ranges: &[String], ports: &[(i32, i32)], user: &str) -> String {
    let (v6, v4): (Vec<&String>, Vec<&String>) = ranges.iter().partition(|r| r.contains(':'));
    let set = |list: &[&String]| {
        list.iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let user = user.replace(['"', '\\', '\n'], "");
    let mut rules = format!(
        "table inet {table}\n\
         delete table inet {table}\n\
         table inet {table} {{\n  chain output {{\n    type filter hook output priority 0; policy accept;\n",
    );
    if !v4.is_empty() {
        rules.push_str(&format!(
            "    meta skuid \"{user}\" ip daddr {{ {} }} drop\n",
            set(&v4)
        ));
    }
    if !v6.is_empty() {
        rules.push_str(&format!(
            "    meta skuid \"{user}\" ip6 daddr {{ {} }} drop\n",
            set(&v6)
        ));
    }
    if !ports.is_empty() {
        let ports = ports
            .iter()
            .map(|(first, last)| match first == last {
                true => first.to_string(),
                false => format!("{first}-{last}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        rules.push_str(&format!(
            "    meta skuid \"{user}\" ip daddr 127.0.0.0/8 tcp dport {{ {ports} }} drop\n\
             \x20   meta skuid \"{user}\" ip6 daddr ::1 tcp dport {{ {ports} }} drop\n"
        ));
    }
    rules.push_str("  }\n}\n");
    rules
}
