//! The Windows side of process control as plain data: creation flags, the
//! `taskkill` and PowerShell command lines with the parsing of their results,
//! and the `schtasks` command lines that install the agent as a scheduled task
//! in the logged-on desktop session. Compiled and tested on every OS; only the
//! few calls that need Windows live in the `windows` module.
//!
//! # The agent's scheduled task
//!
//! A headful browser needs the interactive desktop, so on Windows the agent
//! runs in the auto-logged-on user's session, started by a scheduled task at
//! logon ([`schtasks_create`]: `/SC ONLOGON /IT /RU <user>`, highest run
//! level). `/IT` ("run only when the user is logged on") uses the user's
//! interactive token, so no password is stored; `/RU` must name the auto-logon
//! user, because SSM Run Command runs as SYSTEM and a task created there
//! without `/RU` would run as SYSTEM in session 0, with no desktop.
//!
//! `schtasks /Create` cannot set restart-on-failure, the execution time limit
//! (it defaults to 72 hours, after which Task Scheduler stops the agent!), or
//! a repetition on a logon trigger (`/RI` does not apply to `ONLOGON`). The
//! PowerShell step from [`agent_task_settings`] does, on the created task:
//! no time limit; `RestartCount`/`RestartInterval`, which only cover a task
//! that fails to *start* (Task Scheduler does not treat a non-zero exit code
//! as a failure); and, for the agent crashing later, a repetition of the logon
//! trigger every minute with `MultipleInstances = IgnoreNew`: while the agent
//! runs each repetition is ignored, and within a minute of a crash it starts
//! again. [`schtasks_run`] starts it at once, [`schtasks_end`] stops it.
//!
//! These command lines are unit-tested as text here; they have not been run on
//! a Windows machine yet.

use std::io;
use std::process::{Output, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::process::Command;

use super::{KillOutcome, ProcessError};

/// `CREATE_NEW_PROCESS_GROUP`: the browser roots a console process group of
/// its own, so a Ctrl+C/Ctrl+Break meant for the agent never reaches it.
pub const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
/// `CREATE_NO_WINDOW`: a console program (a launcher command) gets no console
/// window. Ignored for GUI programs such as chrome.exe, so a headful
/// browser's own windows still appear on the desktop.
pub const CREATE_NO_WINDOW: u32 = 0x0800_0000;
/// `CREATE_BREAKAWAY_FROM_JOB`: the browser leaves the job object the agent
/// runs in (Task Scheduler runs tasks in one), so ending or restarting the
/// agent's task does not kill the browsers it re-adopts. Refused with
/// `ERROR_ACCESS_DENIED` when the job does not allow breakaway.
pub const CREATE_BREAKAWAY_FROM_JOB: u32 = 0x0100_0000;
/// `ERROR_ACCESS_DENIED`, the error `CreateProcess` gives when breakaway from
/// the job is not allowed.
pub const ERROR_ACCESS_DENIED: i32 = 5;

/// `taskkill`'s exit code when no process has the PID.
const TASKKILL_NOT_FOUND: i32 = 128;
/// The name of the agent's scheduled task.
pub const AGENT_TASK_NAME: &str = "browserfleet-agent";
/// Longest `/TR` value `schtasks` accepts.
const MAX_TASK_RUN_LENGTH: usize = 261;
/// How much of a failed helper's output goes into the error.
const MAX_ERROR_OUTPUT: usize = 2000;

/// The creation flags for a browser (or launcher) started by the agent:
/// [`CREATE_NEW_PROCESS_GROUP`] | [`CREATE_NO_WINDOW`], plus
/// [`CREATE_BREAKAWAY_FROM_JOB`] when `breakaway`. The agent tries with
/// breakaway first and, if the job refuses it, starts the browser inside the
/// job rather than not at all. `DETACHED_PROCESS` is not used: it would give a
/// console launcher no console at all rather than a hidden one.
pub fn creation_flags(breakaway: bool) -> u32 {
    let flags = CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW;
    if breakaway {
        flags | CREATE_BREAKAWAY_FROM_JOB
    } else {
        flags
    }
}

/// A FILETIME (two 32-bit halves of 100 ns intervals since 1601) as one
/// number, the start time in a Windows
/// [`ProcessIdentity`](super::ProcessIdentity).
pub fn filetime(low: u32, high: u32) -> u64 {
    (u64::from(high) << 32) | u64::from(low)
}

/// A Windows command: a program and its arguments, exactly as they are passed
/// to `CreateProcess` (Rust quotes them by the Microsoft C runtime rules, the
/// rules `schtasks` and `taskkill` parse by).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowsCommand {
    /// The program, found on `PATH` (System32).
    pub program: String,
    /// The arguments, unquoted.
    pub args: Vec<String>,
}

impl WindowsCommand {
    fn new(program: &str, args: &[&str]) -> Self {
        WindowsCommand {
            program: program.to_owned(),
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
        }
    }

    /// The command as one line, quoted by the Microsoft C runtime rules, for
    /// logs and for `cmd.exe` scripts.
    pub fn command_line(&self) -> String {
        let mut line = quote_argument(&self.program);
        for arg in &self.args {
            line.push(' ');
            line.push_str(&quote_argument(arg));
        }
        line
    }

    /// Runs the command to completion with stdin empty, capturing its output;
    /// it is killed if it outlives `timeout`.
    pub async fn output(&self, timeout: Duration) -> Result<Output, ProcessError> {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let error = |source| ProcessError::Command {
            program: self.program.clone(),
            source,
        };
        match tokio::time::timeout(timeout, command.output()).await {
            Ok(output) => output.map_err(error),
            Err(_) => Err(error(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            ))),
        }
    }

    /// The error for a run of this command that reported a failure.
    pub fn failure(&self, output: &Output) -> ProcessError {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        let text = text.trim();
        let end = text
            .char_indices()
            .nth(MAX_ERROR_OUTPUT)
            .map_or(text.len(), |(at, _)| at);
        ProcessError::CommandFailed {
            program: self.program.clone(),
            code: output.status.code(),
            output: text[..end].to_owned(),
        }
    }
}

/// Quotes one argument by the Microsoft C runtime rules: unchanged if it has
/// no space, tab or quote; otherwise in quotes, with each quote escaped and
/// the backslashes before a quote (or the closing quote) doubled.
fn quote_argument(arg: &str) -> String {
    if !arg.is_empty() && !arg.contains([' ', '\t', '"']) {
        return arg.to_owned();
    }
    let mut quoted = String::from('"');
    let mut backslashes = 0;
    for c in arg.chars() {
        match c {
            '\\' => backslashes += 1,
            '"' => {
                quoted.extend(std::iter::repeat_n('\\', backslashes * 2 + 1));
                backslashes = 0;
            }
            _ => {
                quoted.extend(std::iter::repeat_n('\\', backslashes));
                backslashes = 0;
            }
        }
        if c != '\\' {
            quoted.push(c);
        }
    }
    quoted.extend(std::iter::repeat_n('\\', backslashes * 2));
    quoted.push('"');
    quoted
}

/// `taskkill /T /F /PID <pid>`: kills the process and its descendants (found
/// by parent PID at that moment, so a descendant whose parent already exited
/// is missed; the orphan scan finds it later).
pub fn taskkill_tree(pid: u32) -> WindowsCommand {
    WindowsCommand::new("taskkill.exe", &["/T", "/F", "/PID", &pid.to_string()])
}

/// What a `taskkill` exit code means: 0 killed, 128 no such process; `None`
/// for a failure (access denied, part of the tree survived). The text of
/// `taskkill`'s output is localized, so only the code is read.
pub fn taskkill_outcome(code: Option<i32>) -> Option<KillOutcome> {
    match code {
        Some(0) => Some(KillOutcome::Killed),
        Some(TASKKILL_NOT_FOUND) => Some(KillOutcome::AlreadyGone),
        _ => None,
    }
}

/// Runs a PowerShell script through `-EncodedCommand` (base64 of UTF-16LE),
/// so that no quoting of `cmd`, the C runtime or PowerShell applies to it,
/// and its text (a marker) never appears in PowerShell's own command line.
pub fn powershell(script: &str) -> WindowsCommand {
    let utf16: Vec<u8> = script.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let encoded = BASE64.encode(utf16);
    WindowsCommand::new(
        "powershell.exe",
        &[
            "-NoLogo",
            "-NoProfile",
            "-NonInteractive",
            "-EncodedCommand",
            &encoded,
        ],
    )
}

/// A PowerShell single-quoted string literal: nothing inside is expanded; a
/// quote is written twice (PowerShell also takes the typographic quotes
/// U+2018/U+2019 as quotes, so those are doubled too).
fn powershell_literal(text: &str) -> String {
    let mut literal = String::from('\'');
    for c in text.chars() {
        if matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}') {
            literal.push(c);
        }
        literal.push(c);
    }
    literal.push('\'');
    literal
}

/// The PowerShell script listing processes whose command line contains
/// `marker` (case-insensitively, as Windows paths are), one `PID PARENTPID`
/// line each. Start times are then read with `GetProcessTimes`, the same
/// source as every other identity, rather than from CIM's `CreationDate`,
/// which has only microsecond precision.
pub fn find_processes_script(marker: &str) -> String {
    format!(
        "$ErrorActionPreference = 'Stop'\n\
         $marker = {}\n\
         Get-CimInstance -ClassName Win32_Process |\n\
         \x20 Where-Object {{ $_.CommandLine -and $_.CommandLine.IndexOf($marker, [System.StringComparison]::OrdinalIgnoreCase) -ge 0 }} |\n\
         \x20 ForEach-Object {{ '{{0}} {{1}}' -f $_.ProcessId, $_.ParentProcessId }}\n",
        powershell_literal(marker)
    )
}

/// The command running [`find_processes_script`].
pub fn find_processes(marker: &str) -> WindowsCommand {
    powershell(&find_processes_script(marker))
}

/// Parses the output of [`find_processes_script`] into `(pid, parent pid)`
/// pairs, skipping any line that is not two numbers.
pub fn parse_process_list(output: &str) -> Vec<(u32, u32)> {
    output
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let pid = fields.next()?.parse().ok()?;
            let parent = fields.next()?.parse().ok()?;
            fields.next().is_none().then_some((pid, parent))
        })
        .collect()
}

/// Why an agent task command could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TaskError {
    /// A value holds characters that cannot be passed safely.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// Which value (task name, agent path, parameter, user).
        what: &'static str,
        /// The value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The command the task runs is longer than `schtasks` accepts.
    #[error(
        "the task command is {length} characters; schtasks accepts at most {MAX_TASK_RUN_LENGTH}"
    )]
    TooLong {
        /// Its length.
        length: usize,
    },
}

/// The agent's scheduled task, as the operator's bootstrap installs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentTask {
    /// Task name, normally [`AGENT_TASK_NAME`].
    pub name: String,
    /// Full path of the agent executable, e.g.
    /// `C:\Program Files\browserfleet\browserfleet.exe`.
    pub agent_exe: String,
    /// The SSM parameter holding the agent's configuration.
    pub config_ssm_parameter: String,
    /// The auto-logon user the task runs as (`.\Administrator`); see the
    /// module docs for why it must be set when installing from SSM.
    pub run_as: Option<String>,
}

impl AgentTask {
    /// The command the task runs: `"<agent exe>" agent --config-ssm-parameter
    /// <name>`.
    pub fn task_run(&self) -> Result<String, TaskError> {
        check(
            "agent path",
            &self.agent_exe,
            |c| c != '"' && !c.is_control(),
            "must be non-empty, without quotes",
        )?;
        check(
            "SSM parameter",
            &self.config_ssm_parameter,
            |c| c.is_ascii_alphanumeric() || "_.-/".contains(c),
            "must be non-empty, of letters, digits and _.-/",
        )?;
        let run = format!(
            "\"{}\" agent --config-ssm-parameter {}",
            self.agent_exe, self.config_ssm_parameter
        );
        let length = run.chars().count();
        if length > MAX_TASK_RUN_LENGTH {
            return Err(TaskError::TooLong { length });
        }
        Ok(run)
    }
}

fn check(
    what: &'static str,
    value: &str,
    allowed: impl Fn(char) -> bool,
    reason: &'static str,
) -> Result<(), TaskError> {
    if value.is_empty() || !value.chars().all(allowed) {
        return Err(TaskError::Invalid {
            what,
            value: value.to_owned(),
            reason,
        });
    }
    Ok(())
}

fn check_task_name(name: &str) -> Result<(), TaskError> {
    check(
        "task name",
        name,
        |c| c.is_ascii_alphanumeric() || "_.-".contains(c),
        "must be non-empty, of letters, digits and _.-",
    )
}

fn check_user(user: &str) -> Result<(), TaskError> {
    check(
        "user",
        user,
        |c| c != '"' && c != '\'' && !c.is_control(),
        "must be non-empty, without quotes",
    )
}

/// `schtasks /Create /TN <name> /SC ONLOGON /RL HIGHEST /IT [/RU <user>] /F
/// /TR "<agent exe>" agent --config-ssm-parameter <name>`: creates (or
/// replaces, `/F`) the task that starts the agent in the desktop session at
/// logon. Follow it with [`agent_task_settings`].
pub fn schtasks_create(task: &AgentTask) -> Result<WindowsCommand, TaskError> {
    check_task_name(&task.name)?;
    let run = task.task_run()?;
    let mut args = vec!["/Create", "/TN", &task.name, "/SC", "ONLOGON"];
    args.extend(["/RL", "HIGHEST", "/IT"]);
    if let Some(user) = &task.run_as {
        check_user(user)?;
        args.extend(["/RU", user]);
    }
    args.extend(["/F", "/TR", &run]);
    Ok(WindowsCommand::new("schtasks.exe", &args))
}

/// The PowerShell script that sets what `schtasks` cannot (see the module
/// docs): no execution time limit, restart when the start fails, a logon
/// trigger repeated every minute so a crashed agent comes back, and one
/// instance at a time.
pub fn agent_task_settings_script(task: &AgentTask) -> Result<String, TaskError> {
    check_task_name(&task.name)?;
    let user = match &task.run_as {
        Some(user) => {
            check_user(user)?;
            format!(" -User {}", powershell_literal(user))
        }
        None => String::new(),
    };
    Ok(format!(
        "$ErrorActionPreference = 'Stop'\n\
         $trigger = New-ScheduledTaskTrigger -AtLogOn{user}\n\
         $trigger.Repetition = (New-ScheduledTaskTrigger -Once -At (Get-Date) -RepetitionInterval (New-TimeSpan -Minutes 1)).Repetition\n\
         $settings = New-ScheduledTaskSettingsSet -ExecutionTimeLimit ([TimeSpan]::Zero) -MultipleInstances IgnoreNew \
         -RestartCount 999 -RestartInterval (New-TimeSpan -Minutes 1) -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries\n\
         Set-ScheduledTask -TaskName {} -Trigger $trigger -Settings $settings | Out-Null\n",
        powershell_literal(&task.name)
    ))
}

/// The command running [`agent_task_settings_script`].
pub fn agent_task_settings(task: &AgentTask) -> Result<WindowsCommand, TaskError> {
    Ok(powershell(&agent_task_settings_script(task)?))
}

/// `schtasks /Run /TN <name>`: starts the task now (as its user, in that
/// user's session, if logged on).
pub fn schtasks_run(name: &str) -> Result<WindowsCommand, TaskError> {
    check_task_name(name)?;
    Ok(WindowsCommand::new("schtasks.exe", &["/Run", "/TN", name]))
}

/// `schtasks /End /TN <name>`: stops the running agent. Browsers that broke
/// away from the task's job keep running and are re-adopted.
pub fn schtasks_end(name: &str) -> Result<WindowsCommand, TaskError> {
    check_task_name(name)?;
    Ok(WindowsCommand::new("schtasks.exe", &["/End", "/TN", name]))
}

/// `schtasks /Delete /TN <name> /F`: removes the task without asking.
pub fn schtasks_delete(name: &str) -> Result<WindowsCommand, TaskError> {
    check_task_name(name)?;
    Ok(WindowsCommand::new(
        "schtasks.exe",
        &["/Delete", "/TN", name, "/F"],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> AgentTask {
        AgentTask {
            name: AGENT_TASK_NAME.to_owned(),
            agent_exe: r"C:\Program Files\browserfleet\browserfleet.exe".to_owned(),
            config_ssm_parameter: "/browserfleet/prod/web/agent".to_owned(),
            run_as: Some(r".\Administrator".to_owned()),
        }
    }

    fn decode_powershell(command: &WindowsCommand) -> Option<String> {
        let encoded = command.args.last()?;
        let bytes = BASE64.decode(encoded).ok()?;
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
            .collect();
        String::from_utf16(&units).ok()
    }

    #[test]
    fn browser_flags_break_away_only_when_asked() {
        assert_eq!(creation_flags(true), 0x0900_0200);
        assert_eq!(creation_flags(false), 0x0800_0200);
    }

    #[test]
    fn filetime_halves_join() {
        assert_eq!(filetime(0x89AB_CDEF, 0x0123_4567), 0x0123_4567_89AB_CDEF);
    }

    #[test]
    fn taskkill_kills_the_tree_by_force() {
        let command = taskkill_tree(4242);
        assert_eq!(command.command_line(), "taskkill.exe /T /F /PID 4242");
    }

    #[test]
    fn taskkill_codes_map_to_outcomes() {
        assert_eq!(taskkill_outcome(Some(0)), Some(KillOutcome::Killed));
        assert_eq!(taskkill_outcome(Some(128)), Some(KillOutcome::AlreadyGone));
        assert_eq!(taskkill_outcome(Some(1)), None);
        assert_eq!(taskkill_outcome(Some(255)), None);
        assert_eq!(taskkill_outcome(None), None);
    }

    #[test]
    fn agent_task_is_created_at_logon_in_the_desktop_session() -> Result<(), TaskError> {
        let command = schtasks_create(&task())?;
        assert_eq!(command.program, "schtasks.exe");
        assert_eq!(
            command.args,
            [
                "/Create",
                "/TN",
                "browserfleet-agent",
                "/SC",
                "ONLOGON",
                "/RL",
                "HIGHEST",
                "/IT",
                "/RU",
                r".\Administrator",
                "/F",
                "/TR",
                r#""C:\Program Files\browserfleet\browserfleet.exe" agent --config-ssm-parameter /browserfleet/prod/web/agent"#,
            ]
        );
        assert_eq!(
            command.command_line(),
            r#"schtasks.exe /Create /TN browserfleet-agent /SC ONLOGON /RL HIGHEST /IT /RU .\Administrator /F /TR "\"C:\Program Files\browserfleet\browserfleet.exe\" agent --config-ssm-parameter /browserfleet/prod/web/agent""#
        );
        Ok(())
    }

    #[test]
    fn agent_task_without_user_runs_as_its_creator() -> Result<(), TaskError> {
        let command = schtasks_create(&AgentTask {
            run_as: None,
            ..task()
        })?;
        assert!(!command.args.iter().any(|arg| arg == "/RU"));
        assert_eq!(command.args[7], "/IT");
        Ok(())
    }

    #[test]
    fn agent_task_refuses_values_that_would_break_the_command() {
        let quoted_exe = AgentTask {
            agent_exe: r#"C:\x" /F "y.exe"#.to_owned(),
            ..task()
        };
        assert!(matches!(
            schtasks_create(&quoted_exe),
            Err(TaskError::Invalid {
                what: "agent path",
                ..
            })
        ));
        let spaced_parameter = AgentTask {
            config_ssm_parameter: "/a b".to_owned(),
            ..task()
        };
        assert!(matches!(
            schtasks_create(&spaced_parameter),
            Err(TaskError::Invalid {
                what: "SSM parameter",
                ..
            })
        ));
        let bad_name = AgentTask {
            name: "agent & calc".to_owned(),
            ..task()
        };
        assert!(schtasks_create(&bad_name).is_err());
        let quoted_user = AgentTask {
            run_as: Some("a\"b".to_owned()),
            ..task()
        };
        assert!(schtasks_create(&quoted_user).is_err());
        assert!(schtasks_run("").is_err());
    }

    #[test]
    fn agent_task_command_over_261_characters_is_refused() {
        let long = AgentTask {
            agent_exe: format!(r"C:\{}\browserfleet.exe", "d".repeat(250)),
            ..task()
        };
        assert!(matches!(
            schtasks_create(&long),
            Err(TaskError::TooLong { .. })
        ));
    }

    #[test]
    fn agent_task_run_end_and_delete() -> Result<(), TaskError> {
        assert_eq!(
            schtasks_run(AGENT_TASK_NAME)?.command_line(),
            "schtasks.exe /Run /TN browserfleet-agent"
        );
        assert_eq!(
            schtasks_end(AGENT_TASK_NAME)?.command_line(),
            "schtasks.exe /End /TN browserfleet-agent"
        );
        assert_eq!(
            schtasks_delete(AGENT_TASK_NAME)?.command_line(),
            "schtasks.exe /Delete /TN browserfleet-agent /F"
        );
        Ok(())
    }

    #[test]
    fn agent_task_settings_remove_the_time_limit_and_repeat_the_trigger() -> Result<(), TaskError> {
        let command = agent_task_settings(&task())?;
        assert_eq!(
            command.args[..4],
            [
                "-NoLogo",
                "-NoProfile",
                "-NonInteractive",
                "-EncodedCommand"
            ]
        );
        assert_eq!(
            decode_powershell(&command).as_deref(),
            Some(
                "$ErrorActionPreference = 'Stop'\n\
                 $trigger = New-ScheduledTaskTrigger -AtLogOn -User '.\\Administrator'\n\
                 $trigger.Repetition = (New-ScheduledTaskTrigger -Once -At (Get-Date) -RepetitionInterval (New-TimeSpan -Minutes 1)).Repetition\n\
                 $settings = New-ScheduledTaskSettingsSet -ExecutionTimeLimit ([TimeSpan]::Zero) -MultipleInstances IgnoreNew \
                 -RestartCount 999 -RestartInterval (New-TimeSpan -Minutes 1) -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries\n\
                 Set-ScheduledTask -TaskName 'browserfleet-agent' -Trigger $trigger -Settings $settings | Out-Null\n"
            )
        );
        Ok(())
    }

    #[test]
    fn find_script_quotes_the_marker_as_a_literal() {
        let script = find_processes_script(r"--user-data-dir=C:\bf\it's $(calc)");
        assert_eq!(
            script,
            "$ErrorActionPreference = 'Stop'\n\
             $marker = '--user-data-dir=C:\\bf\\it''s $(calc)'\n\
             Get-CimInstance -ClassName Win32_Process |\n\
             \x20 Where-Object { $_.CommandLine -and $_.CommandLine.IndexOf($marker, [System.StringComparison]::OrdinalIgnoreCase) -ge 0 } |\n\
             \x20 ForEach-Object { '{0} {1}' -f $_.ProcessId, $_.ParentProcessId }\n"
        );
        assert_eq!(powershell_literal("a\u{2019}b"), "'a\u{2019}\u{2019}b'");
    }

    #[test]
    fn find_command_carries_the_script_encoded() {
        let marker = r"--user-data-dir=C:\browserfleet\profiles";
        let command = find_processes(marker);
        assert_eq!(command.program, "powershell.exe");
        assert!(!command.command_line().contains("browserfleet"));
        assert_eq!(
            decode_powershell(&command),
            Some(find_processes_script(marker))
        );
    }

    #[test]
    fn process_list_output_parses() {
        let output =
            "\r\n4242 1000\r\n4250 4242\r\n  4251   4250  \r\nWARNING: x\r\n12 x\r\n1 2 3\r\n";
        assert_eq!(
            parse_process_list(output),
            vec![(4242, 1000), (4250, 4242), (4251, 4250)]
        );
        assert!(parse_process_list("").is_empty());
    }

    #[test]
    fn arguments_are_quoted_by_the_c_runtime_rules() {
        assert_eq!(quote_argument("plain"), "plain");
        assert_eq!(quote_argument(""), r#""""#);
        assert_eq!(quote_argument("a b"), r#""a b""#);
        assert_eq!(quote_argument(r#"say "hi""#), r#""say \"hi\"""#);
        assert_eq!(
            quote_argument(r"C:\dir with space\"),
            r#""C:\dir with space\\""#
        );
        assert_eq!(quote_argument(r#"a\"b c"#), r#""a\\\"b c""#);
        assert_eq!(quote_argument(r"C:\no\space"), r"C:\no\space");
    }

    #[tokio::test]
    async fn helper_output_is_captured_and_failures_carry_it() -> Result<(), ProcessError> {
        let command = WindowsCommand::new("sh", &["-c", "echo out; echo err >&2; exit 7"]);
        let output = command.output(Duration::from_secs(10)).await?;
        assert_eq!(output.status.code(), Some(7));
        match command.failure(&output) {
            ProcessError::CommandFailed { code, output, .. } => {
                assert_eq!(code, Some(7));
                assert_eq!(output, "out\nerr");
            }
            other => panic!("unexpected error {other:?}"),
        }
        Ok(())
    }

    #[tokio::test]
    async fn helper_that_hangs_times_out() {
        let command = WindowsCommand::new("sleep", &["30"]);
        let started = std::time::Instant::now();
        let result = command.output(Duration::from_millis(200)).await;
        assert!(matches!(
            result,
            Err(ProcessError::Command { ref source, .. }) if source.kind() == io::ErrorKind::TimedOut
        ));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
