//! Process control for the node agent: start a browser, tell whether it still
//! runs, find the browsers a previous agent left behind, and kill a browser
//! with its whole process tree.
//!
//! Everything OS-specific sits behind the narrow [`ProcessControl`] trait, with
//! one implementation per OS: [`UnixProcesses`] (`/proc`, process groups,
//! signals) and `WindowsProcesses` (creation flags, `GetProcessTimes`,
//! `taskkill`, PowerShell). The Windows command lines are built by pure
//! functions in [`windows_commands`], compiled and tested on every OS.
//!
//! A process is always named by its [`ProcessIdentity`], the PID together
//! with its start time, so that a PID reused by an unrelated process is never
//! mistaken for our browser, let alone killed.

mod discovery;
#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;
pub mod windows_commands;

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::sync::watch;

pub use crate::agent::browser_user::RunAs;
pub use discovery::{
    browser_candidates, discover_browser, native_platform, windows_system_browsers,
};
#[cfg(unix)]
pub use unix::{Signal, UnixProcesses};
#[cfg(windows)]
pub use windows::WindowsProcesses;

/// One process, named so that a reused PID never matches: the PID plus the
/// process's start time in the OS's own units (on Linux the clock ticks since
/// boot from field 22 of `/proc/PID/stat`; on Windows the creation time as a
/// FILETIME, 100 ns intervals since 1601). Stored in the agent's session
/// table, so it survives an agent restart.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcessIdentity {
    /// The OS process id.
    pub pid: u32,
    /// When the process started, in the OS's own units (see the type's docs);
    /// only ever compared for equality.
    pub start_time: u64,
}

/// What to start and how.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LaunchSpec {
    /// The executable (a browser, or a launcher command).
    pub program: PathBuf,
    /// The arguments, passed as they are (already sanitized by the caller).
    pub args: Vec<String>,
    /// Variables added to (or overriding) the agent's own environment.
    pub env: Vec<(String, String)>,
    /// The working directory; the agent's own when `None`.
    pub working_dir: Option<PathBuf>,
    /// A file that receives both stdout and stderr, appended to and created if
    /// missing; output is discarded when `None`.
    pub log_file: Option<PathBuf>,
    /// The user and group it runs as, with no supplementary group and no
    /// capability; the agent's own when `None`. Unix only.
    pub run_as: Option<RunAs>,
}

/// How a process ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessExit {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal (Unix only).
    Signal(i32),
    /// It ended, but its status could not be read.
    Unknown,
}

impl ProcessExit {
    /// Whether the process exited by itself with code 0 (a browser closed
    /// normally, as opposed to a crash or a kill).
    pub fn is_success(self) -> bool {
        self == ProcessExit::Code(0)
    }
}

/// Watches for the exit of a process this agent started. Clones watch the same
/// process; the process is reaped as soon as it exits, whether anyone watches
/// or not.
#[derive(Clone, Debug)]
pub struct ExitWatch {
    exit: watch::Receiver<Option<ProcessExit>>,
}

impl ExitWatch {
    /// How the process ended, or `None` while it runs.
    pub fn exited(&self) -> Option<ProcessExit> {
        *self.exit.borrow()
    }

    /// Waits until the process ends. Returns [`ProcessExit::Unknown`] if the
    /// runtime that reaps it shuts down first.
    pub async fn wait(&mut self) -> ProcessExit {
        match self.exit.wait_for(Option::is_some).await {
            Ok(exit) => exit.unwrap_or(ProcessExit::Unknown),
            Err(_) => ProcessExit::Unknown,
        }
    }
}

/// A process this agent just started.
#[derive(Clone, Debug)]
pub struct Spawned {
    /// Who it is; store this to find it again after an agent restart.
    pub identity: ProcessIdentity,
    /// Its exit, observed by the task that reaps it.
    pub exit: ExitWatch,
}

/// What [`ProcessControl::kill_tree`] did.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillOutcome {
    /// The process (and its tree) was killed.
    Killed,
    /// The process had already ended (or is a zombie waiting to be reaped).
    AlreadyGone,
    /// The PID now belongs to another process (its start time differs): it
    /// was left alone. Our process is gone.
    PidReused,
}

/// Why a process operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program could not be started (missing, not executable, bad working
    /// directory): a permanent error for this launch spec.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program that failed to start.
        program: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The log file could not be opened.
    #[error("cannot open log file {path}: {source}")]
    LogFile {
        /// The log file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The process started but its identity could not be read; it was killed.
    #[error("started process {pid} but could not read its start time")]
    NoIdentity {
        /// The PID of the process.
        pid: u32,
    },
    /// A signal could not be sent (for example, permission denied).
    #[error("cannot signal process {pid}: {source}")]
    Signal {
        /// The target PID (negative for a process group).
        pid: i64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A helper command (`taskkill`, PowerShell) could not be run or timed
    /// out: may succeed when retried.
    #[error("cannot run {program}: {source}")]
    Command {
        /// The helper program.
        program: String,
        /// The OS error, or `TimedOut`.
        #[source]
        source: io::Error,
    },
    /// A helper command ran but reported a failure.
    #[error("{program} failed with exit code {code:?}: {output}")]
    CommandFailed {
        /// The helper program.
        program: String,
        /// Its exit code, if it exited normally.
        code: Option<i32>,
        /// The start of what it wrote to stdout and stderr.
        output: String,
    },
}

/// Starting, finding and killing browser processes: the agent's only access to
/// the OS process table. Used as `Arc<dyn ProcessControl>`; see [`native`].
pub trait ProcessControl: Send + Sync {
    /// Starts the program detached from the agent: in a process group of its
    /// own, stdin empty, output to the log file or discarded. The process is
    /// not killed when the agent exits (the next agent re-adopts it); it is
    /// reaped by a background task as soon as it exits, so it never lingers as
    /// a zombie. Must be called within a tokio runtime.
    fn spawn(&self, spec: &LaunchSpec) -> Result<Spawned, ProcessError>;

    /// The identity of the running process with this PID, or `None` if there
    /// is none (a zombie counts as ended).
    fn identity(&self, pid: u32) -> Option<ProcessIdentity>;

    /// Whether this exact process still runs: same PID and same start time.
    fn is_alive(&self, id: &ProcessIdentity) -> bool {
        self.identity(id.pid).as_ref() == Some(id)
    }

    /// Kills the process and all its descendants, but only if the PID still
    /// belongs to the same process (same start time). Returns once the kill is
    /// sent: the processes end a moment later (see [`Spawned::exit`] or
    /// [`ProcessControl::is_alive`]).
    fn kill_tree(&self, id: ProcessIdentity) -> BoxFuture<'_, Result<KillOutcome, ProcessError>>;

    /// The running processes whose command line contains `marker`, except the
    /// agent itself, keeping only the roots: a match whose parent also matches
    /// (a browser's renderer, GPU, zygote processes, which repeat the
    /// browser's `--user-data-dir`) is left out, since killing the root's tree
    /// takes it too. The agent passes `--user-data-dir=<profiles root>` to
    /// find browsers it started that are missing from its session table.
    fn find_by_marker<'a>(
        &'a self,
        marker: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ProcessIdentity>, ProcessError>>;
}

/// The real process control of the OS this agent runs on.
pub fn native() -> Arc<dyn ProcessControl> {
    #[cfg(unix)]
    let control = Arc::new(UnixProcesses::new());
    #[cfg(windows)]
    let control = Arc::new(WindowsProcesses::new());
    control
}

/// The command for a launch spec, with everything but the OS-specific
/// detaching flags: arguments, environment, working directory, and stdio.
fn command_for(spec: &LaunchSpec) -> Result<Command, ProcessError> {
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::null());
    if let Some(dir) = &spec.working_dir {
        command.current_dir(dir);
    }
    #[cfg(unix)]
    if let Some(run_as) = spec.run_as {
        unix::run_as(&mut command, run_as);
    }
    match &spec.log_file {
        Some(path) => {
            let log_error = |source| ProcessError::LogFile {
                path: path.clone(),
                source,
            };
            let stdout = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(log_error)?;
            let stderr = stdout.try_clone().map_err(log_error)?;
            command.stdout(stdout).stderr(stderr);
        }
        None => {
            command.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    Ok(command)
}

/// Hands the child to a task that waits for it (so it is reaped the moment it
/// exits) and publishes its exit. The task ends with the process; if the
/// runtime shuts down first, the process keeps running (the next agent
/// re-adopts it) and watchers see [`ProcessExit::Unknown`].
/// Watches for the exit of a process this one did not start and so cannot
/// reap (a node's agent that another one started): asks `is_alive` every
/// `every`; how it ended is [`ProcessExit::Unknown`]. Must be called
/// within a tokio runtime.
pub fn watch_from_outside(
    id: ProcessIdentity,
    is_alive: impl Fn(&ProcessIdentity) -> bool + Send + 'static,
    every: std::time::Duration,
) -> ExitWatch {
    let (publish, exit) = watch::channel(None);
    tokio::spawn(async move {
        while is_alive(&id) {
            tokio::time::sleep(every).await;
            if publish.is_closed() {
                return;
            }
        }
        let _ = publish.send(Some(ProcessExit::Unknown));
    });
    ExitWatch { exit }
}

fn watch_exit(mut child: Child) -> ExitWatch {
    let (publish, exit) = watch::channel(None);
    tokio::spawn(async move {
        let exit = exit_of(child.wait().await);
        // Nobody watching is fine: the point of the task is the reaping.
        let _ = publish.send(Some(exit));
    });
    ExitWatch { exit }
}

fn exit_of(status: io::Result<ExitStatus>) -> ProcessExit {
    let Ok(status) = status else {
        return ProcessExit::Unknown;
    };
    if let Some(code) = status.code() {
        return ProcessExit::Code(code);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return ProcessExit::Signal(signal);
        }
    }
    ProcessExit::Unknown
}

/// The roots among matching processes, given as `(pid, parent pid)`: those
/// whose parent is not itself a match. Order is kept.
pub fn launch_roots(matches: &[(u32, u32)]) -> Vec<u32> {
    let pids: HashSet<u32> = matches.iter().map(|&(pid, _)| pid).collect();
    matches
        .iter()
        .filter(|&&(pid, parent)| parent == pid || !pids.contains(&parent))
        .map(|&(pid, _)| pid)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_roots_drops_processes_whose_parent_matched() {
        // 10 is a browser with a zygote 11 and a renderer 12 (child of the
        // zygote); 20 is an orphaned renderer whose browser died (parent 1).
        let matches = [(10, 5), (11, 10), (12, 11), (20, 1)];
        assert_eq!(launch_roots(&matches), vec![10, 20]);
    }

    #[test]
    fn launch_roots_of_nothing_is_nothing() {
        assert!(launch_roots(&[]).is_empty());
    }

    #[test]
    fn launch_roots_keeps_a_process_that_is_its_own_parent() {
        // Windows reports PID 0 (idle) as its own parent; never loop on it.
        assert_eq!(launch_roots(&[(0, 0)]), vec![0]);
    }

    #[test]
    fn only_code_zero_is_success() {
        assert!(ProcessExit::Code(0).is_success());
        assert!(!ProcessExit::Code(3).is_success());
        assert!(!ProcessExit::Signal(9).is_success());
        assert!(!ProcessExit::Unknown.is_success());
    }

    #[test]
    fn identity_round_trips_through_json() -> Result<(), serde_json::Error> {
        let id = ProcessIdentity {
            pid: 4242,
            start_time: 133_000_000_000_000_000,
        };
        let json = serde_json::to_string(&id)?;
        assert_eq!(json, r#"{"pid":4242,"start_time":133000000000000000}"#);
        assert_eq!(serde_json::from_str::<ProcessIdentity>(&json)?, id);
        Ok(())
    }
}
