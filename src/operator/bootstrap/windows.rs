//! The Windows node's boot script (EC2Launch v2 runs it once, as SYSTEM).
//!
//! A headful fleet (`windowsAutoLogon` set; the CRD requires it for headful
//! Windows) gets a desktop: the configured local user is created or updated
//! with the password read *at boot* from the fleet's SSM SecureString (never
//! in this script, a log, the registry's `DefaultPassword`, status or
//! Events: Winlogon's copy is an LSA secret, as Sysinternals Autologon
//! stores it), Windows logs it on at every boot, no lock screen or
//! screensaver interrupts it, and the agent starts from a scheduled task at
//! that user's logon, in its interactive session (not session 0, where a
//! headful browser has no desktop), restarted on failure. A second task puts
//! a disconnected RDP session back on the console (`tscon`), so the desktop
//! keeps rendering after someone looked at it over RDP. The script ends by
//! restarting the instance, which performs the first auto-logon.
//!
//! A headless fleet needs no desktop: its agent starts at boot as SYSTEM,
//! like a service, restarted on failure.
//!
//! Nothing here runs on the development machine (no PowerShell): the tests
//! check the text, rule by rule (`docs/nodes.md` lists what).

use crate::api::BrowserFleetSpec;
use crate::api::fleet::{AgentArtifact, WindowsAutoLogon};

/// Where the agent is installed.
pub const AGENT_PATH: &str = r"C:\Program Files\browserfleet\browserfleet.exe";
/// The agent's state: session table and profiles.
pub const STATE_DIR: &str = r"C:\ProgramData\browserfleet";
/// The scheduled task that runs the agent.
pub const AGENT_TASK: &str = "browserfleet-agent";
/// The scheduled task that moves a disconnected RDP session to the console.
pub const CONSOLE_TASK: &str = "browserfleet-console";

/// A string as one single-quoted PowerShell literal.
pub fn powershell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The boot script of the fleet `namespace/name`'s Windows instances;
/// `firewall` is the browsers' egress rule (see `super::windows_egress_rules`).
pub fn script(
    namespace: &str,
    name: &str,
    spec: &BrowserFleetSpec,
    parameter: &str,
    firewall: &str,
) -> String {
    let agent = powershell_quote(AGENT_PATH);
    let install = install(&agent, spec.agent.artifact.as_ref());
    let arguments = powershell_quote(&format!(
        "agent --config-ssm-parameter {parameter} --json-logs"
    ));
    let start = match &spec.agent.windows_auto_logon {
        Some(logon) => desktop(logon, &agent, &arguments),
        None => headless(&agent, &arguments),
    };
    let append = spec.instance.user_data_append.as_deref().unwrap_or("");
    format!(
        "<powershell>\n\
         # browserfleet node of fleet {namespace}/{name}: installs the agent and\n\
         # starts it (docs/nodes.md).\n\
         $ErrorActionPreference = 'Stop'\n\
         {install}\
         {firewall}\
         New-Item -ItemType Directory -Force -Path {state} | Out-Null\n\
         {start}\
         {append}\n\
         {finish}\
         </powershell>\n\
         <persist>false</persist>\n",
        state = powershell_quote(STATE_DIR),
        finish = if spec.agent.windows_auto_logon.is_some() {
            // After everything, the appended script included: the restart
            // performs the first auto-logon, whose logon starts the agent.
            "shutdown.exe /r /t 10 /c 'browserfleet: logging the desktop user on'\n"
        } else {
            ""
        },
    )
}

/// The commands that upgrade a running node's agent in place
/// (`AWS-RunPowerShellScript`): download and digest check, then the running
/// executable is renamed aside (Windows will not overwrite it), the new one
/// put in its place, and the agent's task restarted.
pub fn upgrade_commands(artifact: &AgentArtifact) -> Vec<String> {
    let agent = powershell_quote(AGENT_PATH);
    let old = powershell_quote(&format!("{AGENT_PATH}.old"));
    let download = download(&agent, artifact);
    let script = format!(
        "$ErrorActionPreference = 'Stop'\n\
         {download}\
         Remove-Item -Force {old} -ErrorAction SilentlyContinue\n\
         Rename-Item -Path {agent} -NewName (Split-Path -Leaf {old})\n\
         Move-Item -Force $tmp.FullName {agent}\n\
         Stop-ScheduledTask -TaskName '{AGENT_TASK}'\n\
         Start-ScheduledTask -TaskName '{AGENT_TASK}'\n"
    );
    script.lines().map(str::to_owned).collect()
}

/// Downloads the artifact to `$tmp` and refuses it unless its digest
/// matches; the caller puts it in place.
fn download(agent: &str, artifact: &AgentArtifact) -> String {
    format!(
        "New-Item -ItemType Directory -Force -Path (Split-Path {agent}) | Out-Null\n\
         $tmp = New-TemporaryFile\n\
         if ({url}.StartsWith('s3://')) {{ Read-S3Object -S3Uri {url} -File $tmp.FullName | Out-Null }}\n\
         else {{ Invoke-WebRequest -UseBasicParsing -Uri {url} -OutFile $tmp.FullName }}\n\
         if ((Get-FileHash -Algorithm SHA256 $tmp.FullName).Hash.ToLower() -ne {sha}) {{\n\
         \x20 Remove-Item -Force $tmp.FullName\n\
         \x20 throw 'browserfleet: the agent artifact does not match its SHA-256; not installed'\n\
         }}\n",
        url = powershell_quote(&artifact.url),
        sha = powershell_quote(&artifact.sha256.to_ascii_lowercase()),
    )
}

fn install(agent: &str, artifact: Option<&AgentArtifact>) -> String {
    match artifact {
        Some(artifact) => format!(
            "{}Move-Item -Force $tmp.FullName {agent}\n",
            download(agent, artifact)
        ),
        None => format!(
            "if (-not (Test-Path {agent})) {{ throw 'the image has no browserfleet agent' }}\n"
        ),
    }
}

/// Restarted every minute after a failure, for ever, never stopped for
/// running long, one at a time.
const TASK_SETTINGS: &str = "$settings = New-ScheduledTaskSettingsSet -RestartCount 9999 \
     -RestartInterval (New-TimeSpan -Minutes 1) -ExecutionTimeLimit ([TimeSpan]::Zero) \
     -MultipleInstances IgnoreNew -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries -StartWhenAvailable\n";

/// Stores Winlogon's `DefaultPassword` as an LSA secret.
const LSA_SECRET: &str = r#"Add-Type -TypeDefinition @'
using System;
using System.ComponentModel;
using System.Runtime.InteropServices;
public static class BrowserfleetLsa {
  [StructLayout(LayoutKind.Sequential)]
  struct Text { public ushort Length; public ushort MaximumLength; public IntPtr Buffer; }
  [StructLayout(LayoutKind.Sequential)]
  struct Attributes { public int Length; public IntPtr Root; public IntPtr Name; public uint Flags; public IntPtr Descriptor; public IntPtr Quality; }
  [DllImport("advapi32.dll")] static extern uint LsaOpenPolicy(IntPtr system, ref Attributes attributes, uint access, out IntPtr policy);
  [DllImport("advapi32.dll")] static extern uint LsaStorePrivateData(IntPtr policy, ref Text key, ref Text data);
  [DllImport("advapi32.dll")] static extern uint LsaClose(IntPtr policy);
  [DllImport("advapi32.dll")] static extern int LsaNtStatusToWinError(uint status);
  static Text Of(string value) {
    var text = new Text();
    text.Buffer = Marshal.StringToHGlobalUni(value);
    text.Length = (ushort)(value.Length * 2);
    text.MaximumLength = (ushort)(text.Length + 2);
    return text;
  }
  public static void Store(string key, string value) {
    var attributes = new Attributes();
    attributes.Length = Marshal.SizeOf(attributes);
    IntPtr policy;
    uint status = LsaOpenPolicy(IntPtr.Zero, ref attributes, 0x20, out policy);
    if (status != 0) { throw new Win32Exception(LsaNtStatusToWinError(status)); }
    var name = Of(key);
    var data = Of(value);
    try {
      status = LsaStorePrivateData(policy, ref name, ref data);
      if (status != 0) { throw new Win32Exception(LsaNtStatusToWinError(status)); }
    } finally {
      Marshal.FreeHGlobal(name.Buffer);
      Marshal.ZeroFreeGlobalAllocUnicode(data.Buffer);
      LsaClose(policy);
    }
  }
}
'@
"#;

/// The headful node: user, auto-logon, no lock, the agent at logon in the
/// interactive session, and the console task.
fn desktop(logon: &WindowsAutoLogon, agent: &str, arguments: &str) -> String {
    let user = powershell_quote(&logon.user_name);
    let parameter = powershell_quote(&logon.password_parameter);
    let state = powershell_quote(STATE_DIR);
    format!(
        "# The desktop user. Its password is read here, at boot, and kept only\n\
         # in memory and as Winlogon's LSA secret.\n\
         $user = {user}\n\
         $password = (Get-SSMParameter -Name {parameter} -WithDecryption $true).Value\n\
         $secure = ConvertTo-SecureString -String $password -AsPlainText -Force\n\
         if (Get-LocalUser -Name $user -ErrorAction SilentlyContinue) {{\n\
         \x20 Set-LocalUser -Name $user -Password $secure -PasswordNeverExpires $true\n\
         }} else {{\n\
         \x20 New-LocalUser -Name $user -Password $secure -PasswordNeverExpires -AccountNeverExpires -Description 'browserfleet desktop' | Out-Null\n\
         \x20 Add-LocalGroupMember -Group 'Users' -Member $user\n\
         }}\n\
         {LSA_SECRET}\
         [BrowserfleetLsa]::Store('DefaultPassword', $password)\n\
         $password = $null\n\
         $secure = $null\n\
         $winlogon = 'HKLM:\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\Winlogon'\n\
         Set-ItemProperty -Path $winlogon -Name AutoAdminLogon -Value '1'\n\
         Set-ItemProperty -Path $winlogon -Name DefaultUserName -Value $user\n\
         Set-ItemProperty -Path $winlogon -Name DefaultDomainName -Value $env:COMPUTERNAME\n\
         Remove-ItemProperty -Path $winlogon -Name DefaultPassword -ErrorAction SilentlyContinue\n\
         Remove-ItemProperty -Path $winlogon -Name AutoLogonCount -ErrorAction SilentlyContinue\n\
         # Nothing locks or blanks the desktop.\n\
         $personalization = 'HKLM:\\SOFTWARE\\Policies\\Microsoft\\Windows\\Personalization'\n\
         New-Item -Path $personalization -Force | Out-Null\n\
         Set-ItemProperty -Path $personalization -Name NoLockScreen -Value 1 -Type DWord\n\
         $desktop = 'HKLM:\\SOFTWARE\\Policies\\Microsoft\\Windows\\Control Panel\\Desktop'\n\
         New-Item -Path $desktop -Force | Out-Null\n\
         Set-ItemProperty -Path $desktop -Name ScreenSaveActive -Value '0'\n\
         Set-ItemProperty -Path $desktop -Name ScreenSaverIsSecure -Value '0'\n\
         Set-ItemProperty -Path 'HKLM:\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Policies\\System' -Name InactivityTimeoutSecs -Value 0 -Type DWord\n\
         powercfg.exe /change monitor-timeout-ac 0\n\
         powercfg.exe /change standby-timeout-ac 0\n\
         # The agent keeps its state where the desktop user may write.\n\
         icacls.exe {state} /grant (\"${{user}}:(OI)(CI)M\") | Out-Null\n\
         # The agent: at the user's logon, in its interactive session, as that\n\
         # user.\n\
         $action = New-ScheduledTaskAction -Execute {agent} -Argument {arguments}\n\
         $trigger = New-ScheduledTaskTrigger -AtLogOn -User $user\n\
         $principal = New-ScheduledTaskPrincipal -UserId $user -LogonType Interactive -RunLevel Limited\n\
         {TASK_SETTINGS}\
         Register-ScheduledTask -TaskName '{AGENT_TASK}' -Action $action -Trigger $trigger -Principal $principal -Settings $settings -Force | Out-Null\n\
         # A disconnected RDP session goes back to the console, so the desktop\n\
         # keeps rendering (event 24: a session was disconnected).\n\
         $console = Join-Path {state} 'to-console.ps1'\n\
         Set-Content -Path $console -Value @'\n\
         foreach ($line in (query.exe session)) {{\n\
         \x20 if ($line -match '^\\s*(\\S+)?\\s+(\\d+)\\s+Disc\\b') {{ tscon.exe $Matches[2] /dest:console }}\n\
         }}\n\
         '@\n\
         $class = Get-CimClass -ClassName MSFT_TaskEventTrigger -Namespace Root/Microsoft/Windows/TaskScheduler\n\
         $disconnected = New-CimInstance -CimClass $class -ClientOnly\n\
         $disconnected.Enabled = $true\n\
         $disconnected.Subscription = '<QueryList><Query Id=\"0\" Path=\"Microsoft-Windows-TerminalServices-LocalSessionManager/Operational\"><Select Path=\"Microsoft-Windows-TerminalServices-LocalSessionManager/Operational\">*[System[EventID=24]]</Select></Query></QueryList>'\n\
         $consoleAction = New-ScheduledTaskAction -Execute 'powershell.exe' -Argument ('-NoProfile -ExecutionPolicy Bypass -File \"' + $console + '\"')\n\
         $system = New-ScheduledTaskPrincipal -UserId 'SYSTEM' -LogonType ServiceAccount -RunLevel Highest\n\
         Register-ScheduledTask -TaskName '{CONSOLE_TASK}' -Action $consoleAction -Trigger $disconnected -Principal $system -Force | Out-Null\n",
    )
}

/// The headless node: the agent at boot as SYSTEM, like a service.
fn headless(agent: &str, arguments: &str) -> String {
    format!(
        "# Headless: no desktop needed; the agent runs at boot, like a service.\n\
         $action = New-ScheduledTaskAction -Execute {agent} -Argument {arguments}\n\
         $trigger = New-ScheduledTaskTrigger -AtStartup\n\
         $principal = New-ScheduledTaskPrincipal -UserId 'SYSTEM' -LogonType ServiceAccount -RunLevel Highest\n\
         {TASK_SETTINGS}\
         Register-ScheduledTask -TaskName '{AGENT_TASK}' -Action $action -Trigger $trigger -Principal $principal -Settings $settings -Force | Out-Null\n\
         Start-ScheduledTask -TaskName '{AGENT_TASK}'\n",
    )
}
