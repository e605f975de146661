//! User data: the script an instance runs at its first boot to install and
//! start its agent. It names the SSM parameter the agent reads its
//! configuration from and holds no secret: user data is readable from inside
//! the instance and by anyone allowed `ec2:DescribeInstanceAttribute`.
//!
//! This is the one place the boot script is generated. It installs the agent
//! when the fleet names an artifact (checked against its SHA-256) and starts
//! it as a service; the full Windows node (auto-logon, the agent in the
//! interactive session, upgrades through Run Command) grows here.

use crate::agent::egress::{os_rule_ranges, parse_ranges};
use crate::agent::process::windows_system_browsers;
use crate::api::BrowserFleetSpec;
use crate::api::fleet::{AgentArtifact, Platform};

/// Where the agent is installed on Linux.
const LINUX_AGENT: &str = "/usr/local/bin/browserfleet";
/// Where the agent is installed on Windows.
const WINDOWS_AGENT: &str = r"C:\Program Files\browserfleet\browserfleet.exe";

/// The user data of the instances of fleet `namespace/name`, whose agents
/// read their configuration from SSM parameter `parameter`.
pub fn user_data(namespace: &str, name: &str, spec: &BrowserFleetSpec, parameter: &str) -> String {
    let append = spec.instance.user_data_append.as_deref().unwrap_or("");
    let artifact = spec.agent.artifact.as_ref();
    match spec.instance.platform {
        Platform::Linux => linux(namespace, name, artifact, parameter, append),
        Platform::Windows => {
            let firewall = windows_egress_rules(spec);
            windows(namespace, name, artifact, parameter, &firewall, append)
        }
    }
}

/// The ranges of the fleet's OS egress rule, as text.
fn os_ranges(spec: &BrowserFleetSpec) -> Vec<String> {
    let egress = &spec.agent.egress;
    // The CRD's patterns let only parseable ranges through; one that still
    // does not parse is left to the agent, which refuses the configuration.
    let blocked = parse_ranges(&egress.blocked).unwrap_or_default();
    let allowed = parse_ranges(&egress.allowed).unwrap_or_default();
    os_rule_ranges(&blocked, &allowed)
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Windows Firewall rules that refuse the browser programs the
/// link-local/metadata ranges and the fleet's blocked ones, whatever opens
/// the socket (docs/security.md, "What only an OS rule gives"). Rules are by
/// program, so they hold with the browsers running as the agent's user.
/// The fleet's `browser.executable` when set, else the system-wide Chrome
/// and Edge paths the agent looks for.
fn windows_egress_rules(spec: &BrowserFleetSpec) -> String {
    let ranges = os_ranges(spec);
    if ranges.is_empty() {
        return String::new();
    }
    let programs = match &spec.agent.browser.executable {
        Some(path) => vec![path.clone()],
        None => windows_system_browsers(),
    };
    let addresses = ranges
        .iter()
        .map(|r| powershell_quote(r))
        .collect::<Vec<_>>()
        .join(", ");
    let mut script = format!("$blocked = @({addresses})\n");
    for (index, program) in programs.iter().enumerate() {
        let rule = format!("browserfleet-browser-egress-{}", index + 1);
        script.push_str(&format!(
            "Remove-NetFirewallRule -Name '{rule}' -ErrorAction SilentlyContinue\n\
             New-NetFirewallRule -Name '{rule}' -DisplayName 'browserfleet: browsers may not reach metadata or blocked ranges' \
             -Direction Outbound -Action Block -Program {program} -RemoteAddress $blocked | Out-Null\n",
            program = powershell_quote(program),
        ));
    }
    script
}

/// The Linux form of the OS rule: an nftables table that refuses the
/// browsers' user `user` the same ranges. Browsers run as the agent's user
/// today, which needs the metadata service for its own credentials, so no
/// node applies it yet: it is what the unprivileged browser user of issue
/// #22 gets.
pub fn linux_egress_rules(spec: &BrowserFleetSpec, user: &str) -> String {
    let ranges = os_ranges(spec);
    let (v6, v4): (Vec<&String>, Vec<&String>) = ranges.iter().partition(|r| r.contains(':'));
    let set = |list: &[&String]| {
        list.iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let user = user.replace(['"', '\\', '\n'], "");
    let mut rules = String::from(
        "table inet browserfleet_egress {\n  chain output {\n    type filter hook output priority 0; policy accept;\n",
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
    rules.push_str("  }\n}\n");
    rules
}

/// A string as one single-quoted shell word.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// A string as one single-quoted PowerShell literal.
fn powershell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn linux(
    namespace: &str,
    name: &str,
    artifact: Option<&AgentArtifact>,
    parameter: &str,
    append: &str,
) -> String {
    let install = match artifact {
        Some(artifact) => format!(
            "tmp=$(mktemp)\n\
             case {url} in\n\
             \x20 s3://*) aws s3 cp {url} \"$tmp\" ;;\n\
             \x20 *) curl --fail --silent --show-error --location --retry 5 -o \"$tmp\" {url} ;;\n\
             esac\n\
             echo {sha}'  '\"$tmp\" | sha256sum --check --status\n\
             install -m 0755 \"$tmp\" {LINUX_AGENT}\n\
             rm -f \"$tmp\"\n",
            url = shell_quote(&artifact.url),
            sha = shell_quote(&artifact.sha256),
        ),
        None => format!("test -x {LINUX_AGENT}\n"),
    };
    format!(
        "#!/bin/bash\n\
         # browserfleet node of fleet {namespace}/{name}: installs and starts the agent.\n\
         set -euo pipefail\n\
         {install}\
         cat > /etc/systemd/system/browserfleet-agent.service <<'UNIT'\n\
         [Unit]\n\
         Description=browserfleet agent\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         [Service]\n\
         ExecStart={LINUX_AGENT} agent --config-ssm-parameter {parameter} --json-logs\n\
         Restart=on-failure\n\
         KillMode=process\n\
         [Install]\n\
         WantedBy=multi-user.target\n\
         UNIT\n\
         systemctl daemon-reload\n\
         systemctl enable --now browserfleet-agent.service\n\
         {append}",
        parameter = shell_quote(parameter),
    )
}

fn windows(
    namespace: &str,
    name: &str,
    artifact: Option<&AgentArtifact>,
    parameter: &str,
    firewall: &str,
    append: &str,
) -> String {
    let agent = powershell_quote(WINDOWS_AGENT);
    let install = match artifact {
        Some(artifact) => format!(
            "New-Item -ItemType Directory -Force -Path (Split-Path {agent}) | Out-Null\n\
             $tmp = New-TemporaryFile\n\
             if ({url}.StartsWith('s3://')) {{ Read-S3Object -S3Uri {url} -File $tmp.FullName | Out-Null }}\n\
             else {{ Invoke-WebRequest -UseBasicParsing -Uri {url} -OutFile $tmp.FullName }}\n\
             if ((Get-FileHash -Algorithm SHA256 $tmp.FullName).Hash.ToLower() -ne {sha}) {{ throw 'agent artifact digest mismatch' }}\n\
             Move-Item -Force $tmp.FullName {agent}\n",
            url = powershell_quote(&artifact.url),
            sha = powershell_quote(&artifact.sha256),
        ),
        None => format!(
            "if (-not (Test-Path {agent})) {{ throw 'the image has no browserfleet agent' }}\n"
        ),
    };
    format!(
        "<powershell>\n\
         # browserfleet node of fleet {namespace}/{name}: installs and starts the agent.\n\
         $ErrorActionPreference = 'Stop'\n\
         {install}\
         {firewall}\
         $action = New-ScheduledTaskAction -Execute {agent} -Argument ('agent --config-ssm-parameter ' + {parameter} + ' --json-logs')\n\
         $trigger = New-ScheduledTaskTrigger -AtStartup\n\
         Register-ScheduledTask -TaskName 'browserfleet-agent' -Action $action -Trigger $trigger -User 'SYSTEM' -RunLevel Highest -Force | Out-Null\n\
         Start-ScheduledTask -TaskName 'browserfleet-agent'\n\
         {append}\n\
         </powershell>\n\
         <persist>false</persist>\n",
        parameter = powershell_quote(parameter),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::agent_config::parameter_name;

    fn spec(platform: Platform) -> BrowserFleetSpec {
        let mut spec: BrowserFleetSpec = serde_json::from_value(serde_json::json!({
            "instance": {
                "image": {"imageId": "ami-0123456789abcdef0"},
                "instanceTypes": ["m6i.large"],
                "subnetIds": ["subnet-01234567"],
                "securityGroupIds": ["sg-01234567"],
                "instanceProfile": "node",
            },
            "capacity": {"minInstances": 0, "maxInstances": 10},
        }))
        .expect("minimal spec");
        spec.instance.platform = platform;
        spec
    }

    #[test]
    fn linux_user_data_starts_the_agent_on_the_fleets_parameter() {
        let parameter = parameter_name("qa", "web");
        let script = user_data("qa", "web", &spec(Platform::Linux), &parameter);
        assert!(script.starts_with("#!/bin/bash\n"), "{script}");
        assert!(
            script.contains(&format!(
                "{LINUX_AGENT} agent --config-ssm-parameter '{parameter}' --json-logs"
            )),
            "{script}"
        );
        assert!(script.contains("systemctl enable --now browserfleet-agent.service"));
        assert!(script.contains(&format!("test -x {LINUX_AGENT}")));
    }

    #[test]
    fn an_artifact_is_installed_only_when_its_digest_matches() {
        let mut spec = spec(Platform::Linux);
        spec.agent.artifact = Some(AgentArtifact {
            url: "https://example.com/agent".into(),
            sha256: "ab".repeat(32),
        });
        let script = user_data("qa", "web", &spec, "/p");
        let check = script.find("sha256sum --check").expect("digest check");
        let install = script.find("install -m 0755").expect("install");
        assert!(check < install, "{script}");
        assert!(script.contains("'https://example.com/agent'"));
    }

    #[test]
    fn windows_nodes_refuse_the_browser_programs_metadata_and_blocked_ranges() {
        let mut spec = spec(Platform::Windows);
        spec.agent.egress.blocked = vec!["10.0.0.0/8".into()];
        let script = user_data("qa", "web", &spec, "/p");
        assert!(
            script.contains(
                "$blocked = @('169.254.0.0/16', 'fe80::/10', 'fd00:ec2::/64', '10.0.0.0/8')\n"
            ),
            "{script}"
        );
        for program in [
            r"'%ProgramFiles%\Google\Chrome\Application\chrome.exe'",
            r"'%ProgramFiles(x86)%\Google\Chrome\Application\chrome.exe'",
            r"'%ProgramFiles%\Microsoft\Edge\Application\msedge.exe'",
        ] {
            assert!(
                script.contains(&format!(
                    "-Direction Outbound -Action Block -Program {program} -RemoteAddress $blocked"
                )),
                "{program}: {script}"
            );
        }
        // Before the agent starts, so no browser ever runs without it.
        assert!(
            script.find("New-NetFirewallRule").unwrap()
                < script.find("Register-ScheduledTask").unwrap()
        );
        // A fleet's own browser is the one program, quoted as one literal.
        spec.agent.browser.executable = Some(r"C:\it's\chrome.exe".into());
        let script = user_data("qa", "web", &spec, "/p");
        assert!(
            script.contains(r"-Program 'C:\it''s\chrome.exe' "),
            "{script}"
        );
        assert_eq!(script.matches("New-NetFirewallRule").count(), 1);
    }

    #[test]
    fn the_linux_rule_for_a_browser_user_drops_the_same_ranges_per_family() {
        let mut spec = spec(Platform::Linux);
        spec.agent.egress.blocked = vec!["10.0.0.0/8".into()];
        spec.agent.egress.allowed = vec!["fe80::1".into()];
        assert_eq!(
            linux_egress_rules(&spec, "bfbrowser"),
            "table inet browserfleet_egress {\n  chain output {\n    \
             type filter hook output priority 0; policy accept;\n    \
             meta skuid \"bfbrowser\" ip daddr { 169.254.0.0/16, 10.0.0.0/8 } drop\n    \
             meta skuid \"bfbrowser\" ip6 daddr { fd00:ec2::/64 } drop\n  }\n}\n"
        );
        // Not applied on Linux nodes yet (browsers run as the agent's user).
        assert!(!user_data("qa", "web", &spec, "/p").contains("nft"));
    }

    #[test]
    fn windows_user_data_is_powershell_with_a_scheduled_task() {
        let mut spec = spec(Platform::Windows);
        spec.instance.user_data_append = Some("Write-Output 'extra'".into());
        let script = user_data("qa", "web", &spec, "/browserfleet/qa/web/agent-config");
        assert!(script.starts_with("<powershell>\n"), "{script}");
        assert!(script.contains("'/browserfleet/qa/web/agent-config'"));
        assert!(script.contains("Register-ScheduledTask -TaskName 'browserfleet-agent'"));
        let append = script.find("Write-Output 'extra'").expect("appended");
        assert!(append < script.find("</powershell>").unwrap());
    }

    #[test]
    fn quoting_keeps_a_hostile_value_one_word() {
        assert_eq!(shell_quote("a'b; rm -rf /"), r"'a'\''b; rm -rf /'");
        assert_eq!(powershell_quote("a'b"), "'a''b'");
    }
}
