//! User data: the script an instance runs at its first boot to install and
//! start its agent ([`linux`], [`windows`]). It names the SSM parameter the
//! agent reads its configuration from and holds no secret: user data is
//! readable from inside the instance and by anyone allowed
//! `ec2:DescribeInstanceAttribute`. This is the one place boot scripts are
//! generated; `docs/nodes.md` tells a node's life around them.

pub mod linux;
pub mod windows;

use crate::agent::egress::{os_rule_ranges, parse_ranges};
use crate::agent::process::windows_system_browsers;
use crate::api::BrowserFleetSpec;
use crate::api::fleet::Platform;
use crate::cloud::CommandDocument;
use windows::powershell_quote;

/// The user data of the instances of fleet `namespace/name`, whose agents
/// read their configuration from SSM parameter `parameter`.
pub fn user_data(namespace: &str, name: &str, spec: &BrowserFleetSpec, parameter: &str) -> String {
    match spec.instance.platform {
        Platform::Linux => linux::script(namespace, name, spec, parameter, &os_ranges(spec)),
        Platform::Windows => {
            let firewall = windows_egress_rules(spec);
            windows::script(namespace, name, spec, parameter, &firewall)
        }
    }
}

/// The Run Command that upgrades a running instance's agent to the fleet's
/// artifact; `None` when the fleet names none (its image carries the agent).
pub fn upgrade_commands(spec: &BrowserFleetSpec) -> Option<CommandDocument> {
    let artifact = spec.agent.artifact.as_ref()?;
    Some(match spec.instance.platform {
        Platform::Linux => CommandDocument::Shell(linux::upgrade_commands(artifact)),
        Platform::Windows => CommandDocument::PowerShell(windows::upgrade_commands(artifact)),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::fleet::{AgentArtifact, WindowsAutoLogon};
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

    fn headful_windows() -> BrowserFleetSpec {
        let mut spec = spec(Platform::Windows);
        spec.agent.browser.headless = false;
        spec.agent.windows_auto_logon = Some(WindowsAutoLogon {
            user_name: "robot's desk".into(),
            password_parameter: "/team/desktop-password".into(),
        });
        spec
    }

    fn position(script: &str, what: &str) -> usize {
        script
            .find(what)
            .unwrap_or_else(|| panic!("{what:?} not in:\n{script}"))
    }

    #[test]
    fn linux_user_data_starts_the_agent_as_its_user_on_the_fleets_parameter() {
        let parameter = parameter_name("qa", "web");
        let script = user_data("qa", "web", &spec(Platform::Linux), &parameter);
        assert!(script.starts_with("#!/bin/bash\n"), "{script}");
        assert!(script.contains("set -euo pipefail\n"));
        assert!(
            script.contains(&format!(
                "ExecStart=/usr/local/bin/browserfleet agent --config-ssm-parameter '{parameter}' \
                 --state-dir /var/lib/browserfleet --browser-user browserfleet-browser --json-logs\n"
            )),
            "{script}"
        );
        for line in [
            "User=browserfleet\n",
            "KillMode=process\n",
            "ExecReload=/bin/kill -HUP $MAINPID\n",
            "NotifyAccess=main\n",
            "Restart=on-failure\n",
            "AmbientCapabilities=CAP_SETUID CAP_SETGID CAP_KILL CAP_CHOWN CAP_DAC_OVERRIDE CAP_FOWNER\n",
            "CapabilityBoundingSet=CAP_SETUID CAP_SETGID CAP_KILL CAP_CHOWN CAP_DAC_OVERRIDE CAP_FOWNER\n",
            "ProtectSystem=full\n",
            "PrivateTmp=yes\n",
            "Requires=browserfleet-egress.service\n",
            "systemctl enable --now browserfleet-agent.service\n",
            "install -d -m 0711 -o browserfleet -g browserfleet \"$root/var/lib/browserfleet\"\n",
        ] {
            assert!(script.contains(line), "{line:?} not in:\n{script}");
        }
        // Both users exist before anything runs as them, and neither logs in.
        assert!(script.contains("for user in browserfleet browserfleet-browser; do"));
        assert!(script.contains("--shell /usr/sbin/nologin"));
        assert!(position(&script, "useradd") < position(&script, "install -d"));
        // No artifact: the image's agent must be there.
        assert!(script.contains("test -x \"$root/usr/local/bin/browserfleet\"\n"));
        assert!(!script.contains("no-sandbox"));
    }

    #[test]
    fn an_artifact_is_installed_only_when_its_digest_matches() {
        let mut spec = spec(Platform::Linux);
        spec.agent.artifact = Some(AgentArtifact {
            url: "https://example.com/agent".into(),
            sha256: "ab".repeat(32),
        });
        let script = user_data("qa", "web", &spec, "/p");
        let check = position(&script, "sha256sum --check --status; then");
        assert!(check < position(&script, "exit 1\n"), "{script}");
        assert!(check < position(&script, "install -D -m 0755"), "{script}");
        assert!(script.contains("'https://example.com/agent'"));
        // Installed before the unit that starts it.
        assert!(position(&script, "install -D -m 0755") < position(&script, "systemctl enable"));
    }

    #[test]
    fn the_linux_rule_drops_the_browser_users_packets_and_loads_before_the_agent() {
        let mut spec = spec(Platform::Linux);
        spec.agent.egress.blocked = vec!["10.0.0.0/8".into()];
        spec.agent.egress.allowed = vec!["fe80::1".into()];
        assert_eq!(
            linux::egress_rules(
                "bf_t",
                &os_ranges(&spec),
                &[(9222, 9222), (9300, 9399)],
                "bfbrowser"
            ),
            "table inet bf_t\n\
             delete table inet bf_t\n\
             table inet bf_t {\n  chain output {\n    \
             type filter hook output priority 0; policy accept;\n    \
             meta skuid \"bfbrowser\" ip daddr { 169.254.0.0/16, 10.0.0.0/8 } drop\n    \
             meta skuid \"bfbrowser\" ip6 daddr { fd00:ec2::/64 } drop\n    \
             meta skuid \"bfbrowser\" ip daddr 127.0.0.0/8 tcp dport { 9222, 9300-9399 } drop\n    \
             meta skuid \"bfbrowser\" ip6 daddr ::1 tcp dport { 9222, 9300-9399 } drop\n  }\n}\n"
        );
        let script = user_data("qa", "web", &spec, "/p");
        // A table per fleet: several fleets' nodes on one kernel keep theirs.
        assert_eq!(
            linux::egress_table("qa", "web"),
            linux::egress_table("qa", "web")
        );
        assert_ne!(
            linux::egress_table("qa", "web"),
            linux::egress_table("qa", "webb")
        );
        assert!(script.contains(&format!(
            "table inet {} {{",
            linux::egress_table("qa", "web")
        )));
        assert!(
            script.contains(
                "meta skuid \"browserfleet-browser\" ip daddr { 169.254.0.0/16, 10.0.0.0/8 } drop"
            ),
            "{script}"
        );
        assert!(script.contains("ExecStart=/usr/sbin/nft -f /etc/browserfleet/egress.nft\n"));
        assert!(
            position(&script, "enable --now browserfleet-egress.service")
                < position(&script, "enable --now browserfleet-agent.service")
        );
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
            position(&script, "New-NetFirewallRule") < position(&script, "Register-ScheduledTask")
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
    fn a_headful_windows_node_logs_its_user_on_and_starts_the_agent_in_that_session() {
        let mut spec = headful_windows();
        spec.agent.artifact = Some(AgentArtifact {
            url: "https://example.com/agent.exe".into(),
            sha256: "AB".repeat(32),
        });
        spec.instance.user_data_append = Some("Write-Output 'extra'".into());
        let script = user_data("qa", "web", &spec, "/browserfleet/qa/web/agent-config");
        assert!(script.starts_with("<powershell>\n"), "{script}");
        assert!(script.ends_with("</powershell>\n<persist>false</persist>\n"));
        // The artifact: refused unless its digest matches, compared in lower case.
        let check = position(
            &script,
            "(Get-FileHash -Algorithm SHA256 $tmp.FullName).Hash.ToLower() -ne 'abab",
        );
        assert!(check < position(&script, "Move-Item -Force $tmp.FullName"));
        assert!(script.contains(
            "throw 'browserfleet: the agent artifact does not match its SHA-256; not installed'"
        ));
        // The user, quoted as one literal; its password read from SSM at boot.
        assert!(script.contains("$user = 'robot''s desk'\n"), "{script}");
        assert!(script.contains(
            "$password = (Get-SSMParameter -Name '/team/desktop-password' -WithDecryption $true).Value\n"
        ));
        // Auto-logon with the password as an LSA secret, never the registry value.
        let winlogon = position(&script, "-Name AutoAdminLogon -Value '1'");
        assert!(
            position(
                &script,
                "[BrowserfleetLsa]::Store('DefaultPassword', $password)"
            ) < winlogon
        );
        assert!(script.contains("-Name DefaultUserName -Value $user\n"));
        assert!(script.contains("Remove-ItemProperty -Path $winlogon -Name DefaultPassword"));
        assert!(!script.contains("-Name DefaultPassword -Value"));
        assert!(script.contains("LsaStorePrivateData"));
        // No lock screen, no screensaver, no blanking.
        for line in [
            "-Name NoLockScreen -Value 1 -Type DWord",
            "-Name ScreenSaveActive -Value '0'",
            "-Name InactivityTimeoutSecs -Value 0",
            "powercfg.exe /change monitor-timeout-ac 0",
        ] {
            assert!(script.contains(line), "{line}");
        }
        // The agent at the user's logon, in its interactive session, restarted.
        assert!(script.contains(
            "$action = New-ScheduledTaskAction -Execute 'C:\\Program Files\\browserfleet\\browserfleet.exe' \
             -Argument 'agent --config-ssm-parameter /browserfleet/qa/web/agent-config --json-logs'\n"
        ), "{script}");
        assert!(script.contains("$trigger = New-ScheduledTaskTrigger -AtLogOn -User $user\n"));
        assert!(script.contains(
            "$principal = New-ScheduledTaskPrincipal -UserId $user -LogonType Interactive -RunLevel Limited\n"
        ));
        assert!(script.contains("-RestartCount 9999 -RestartInterval (New-TimeSpan -Minutes 1)"));
        assert!(script.contains(
            "Register-ScheduledTask -TaskName 'browserfleet-agent' -Action $action -Trigger $trigger -Principal $principal -Settings $settings -Force"
        ));
        // The agent task is not SYSTEM's and not at startup (session 0).
        let agent_task = &script[position(&script, "# The agent: at the user's logon")
            ..position(&script, "# A disconnected RDP session")];
        assert!(
            !agent_task.contains("SYSTEM") && !agent_task.contains("AtStartup"),
            "{agent_task}"
        );
        // The console task: disconnected sessions back to the console.
        assert!(script.contains("tscon.exe $Matches[2] /dest:console"));
        assert!(script.contains("*[System[EventID=24]]"));
        assert!(script.contains("Register-ScheduledTask -TaskName 'browserfleet-console'"));
        // The appended script runs inside, before the restart that logs on.
        let append = position(&script, "Write-Output 'extra'");
        assert!(append < position(&script, "shutdown.exe /r"));
        assert!(position(&script, "shutdown.exe /r") < position(&script, "</powershell>"));
    }

    #[test]
    fn no_script_holds_a_secret_or_runs_a_headful_browser_as_system() {
        let spec = headful_windows();
        let script = user_data("qa", "web", &spec, "/p");
        // Only the parameter's name: the value is read at boot.
        assert_eq!(script.matches("/team/desktop-password").count(), 1);
        let assigned: Vec<&str> = script
            .lines()
            .filter(|line| line.starts_with("$password ="))
            .collect();
        assert_eq!(
            assigned,
            [
                "$password = (Get-SSMParameter -Name '/team/desktop-password' -WithDecryption $true).Value",
                "$password = $null"
            ]
        );
        // A headless Windows fleet runs its agent at boot like a service.
        let script = user_data("qa", "web", &spec_headless_windows(), "/p");
        assert!(script.contains("New-ScheduledTaskTrigger -AtStartup"));
        assert!(script.contains("-UserId 'SYSTEM' -LogonType ServiceAccount"));
        assert!(!script.contains("AutoAdminLogon") && !script.contains("shutdown.exe"));
    }

    fn spec_headless_windows() -> BrowserFleetSpec {
        spec(Platform::Windows)
    }

    #[test]
    fn an_upgrade_checks_the_digest_before_it_installs_and_then_restarts_the_agent() {
        let mut spec = spec(Platform::Linux);
        assert_eq!(
            upgrade_commands(&spec),
            None,
            "no artifact, nothing to upgrade"
        );
        spec.agent.artifact = Some(AgentArtifact {
            url: "https://example.com/agent".into(),
            sha256: "ab".repeat(32),
        });
        let Some(CommandDocument::Shell(lines)) = upgrade_commands(&spec) else {
            panic!("a shell command for Linux");
        };
        let script = lines.join("\n");
        assert!(
            script.starts_with("bash -s <<'UPGRADE'\nset -euo pipefail\n"),
            "{script}"
        );
        assert!(script.ends_with("\nUPGRADE"), "{script}");
        let check = position(&script, "sha256sum --check --status; then");
        let install = position(&script, "install -D -m 0755");
        let reload = position(
            &script,
            "systemctl reload-or-restart browserfleet-agent.service",
        );
        assert!(check < install && install < reload, "{script}");

        let mut spec = headful_windows();
        spec.agent.artifact = Some(AgentArtifact {
            url: "https://example.com/agent.exe".into(),
            sha256: "cd".repeat(32),
        });
        let Some(CommandDocument::PowerShell(lines)) = upgrade_commands(&spec) else {
            panic!("a PowerShell command for Windows");
        };
        let script = lines.join("\n");
        assert!(
            script.starts_with("$ErrorActionPreference = 'Stop'\n"),
            "{script}"
        );
        let check = position(&script, ".Hash.ToLower() -ne 'cdcd");
        let aside = position(
            &script,
            "Rename-Item -Path 'C:\\Program Files\\browserfleet\\browserfleet.exe'",
        );
        let moved = position(
            &script,
            "Move-Item -Force $tmp.FullName 'C:\\Program Files\\browserfleet\\browserfleet.exe'",
        );
        let stop = position(&script, "Stop-ScheduledTask -TaskName 'browserfleet-agent'");
        let start = position(
            &script,
            "Start-ScheduledTask -TaskName 'browserfleet-agent'",
        );
        assert!(
            check < aside && aside < moved && moved < stop && stop < start,
            "{script}"
        );
    }

    #[test]
    fn quoting_keeps_a_hostile_value_one_word() {
        assert_eq!(linux::shell_quote("a'b; rm -rf /"), r"'a'\''b; rm -rf /'");
        assert_eq!(powershell_quote("a'b"), "'a''b'");
    }
}
