//! User data: the script an instance runs at its first boot to install and
//! start its agent. It names the SSM parameter the agent reads its
//! configuration from and holds no secret: user data is readable from inside
//! the instance and by anyone allowed `ec2:DescribeInstanceAttribute`.
//!
//! This is the one place the boot script is generated. It installs the agent
//! when the fleet names an artifact (checked against its SHA-256) and starts
//! it as a service; the full Windows node (auto-logon, the agent in the
//! interactive session, upgrades through Run Command) grows here.

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
        Platform::Windows => windows(namespace, name, artifact, parameter, append),
    }
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
