//! Process control on Windows: the few calls that need Windows. The command
//! lines and their parsing are in [`super::windows_commands`], tested on every
//! OS; this file cannot be compiled on the Linux build machines, so it is kept
//! to glue.

use std::time::Duration;

use futures::future::BoxFuture;
use windows_sys::Win32::Foundation::{CloseHandle, FILETIME, STILL_ACTIVE};
use windows_sys::Win32::System::Threading::{
    GetExitCodeProcess, GetProcessTimes, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
};

use super::windows_commands::{
    self, ERROR_ACCESS_DENIED, creation_flags, filetime, parse_process_list, taskkill_outcome,
};
use super::{
    KillOutcome, LaunchSpec, ProcessControl, ProcessError, ProcessIdentity, Spawned, command_for,
    launch_roots, watch_exit,
};

/// How long `taskkill` and the PowerShell process query may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// Process control through the Win32 API, `taskkill` and PowerShell.
#[derive(Clone, Copy, Debug, Default)]
pub struct WindowsProcesses;

impl WindowsProcesses {
    /// The process control of this machine.
    pub fn new() -> Self {
        WindowsProcesses
    }
}

impl ProcessControl for WindowsProcesses {
    fn spawn(&self, spec: &LaunchSpec) -> Result<Spawned, ProcessError> {
        let spawn = |breakaway| {
            let mut command = command_for(spec)?;
            command.creation_flags(creation_flags(breakaway));
            command.spawn().map_err(|source| ProcessError::Spawn {
                program: spec.program.clone(),
                source,
            })
        };
        let child = match spawn(true) {
            Err(ProcessError::Spawn { source, .. })
                if source.raw_os_error() == Some(ERROR_ACCESS_DENIED) =>
            {
                tracing::warn!("the agent's job refuses breakaway; browsers stay in it");
                spawn(false)?
            }
            other => other?,
        };
        // Our handle keeps the PID from being reused, even after an exit.
        let pid = child.id().unwrap_or(0);
        let Some(start_time) = creation_time(pid) else {
            return Err(ProcessError::NoIdentity { pid });
        };
        Ok(Spawned {
            identity: ProcessIdentity { pid, start_time },
            exit: watch_exit(child),
        })
    }

    fn identity(&self, pid: u32) -> Option<ProcessIdentity> {
        let start_time = creation_time(pid)?;
        Some(ProcessIdentity { pid, start_time })
    }

    fn kill_tree(&self, id: ProcessIdentity) -> BoxFuture<'_, Result<KillOutcome, ProcessError>> {
        Box::pin(async move {
            match self.identity(id.pid) {
                None => return Ok(KillOutcome::AlreadyGone),
                Some(current) if current != id => return Ok(KillOutcome::PidReused),
                Some(_) => {}
            }
            let command = windows_commands::taskkill_tree(id.pid);
            let output = command.output(HELPER_TIMEOUT).await?;
            taskkill_outcome(output.status.code()).ok_or_else(|| command.failure(&output))
        })
    }

    fn find_by_marker<'a>(
        &'a self,
        marker: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ProcessIdentity>, ProcessError>> {
        Box::pin(async move {
            let command = windows_commands::find_processes(marker);
            let output = command.output(HELPER_TIMEOUT).await?;
            if !output.status.success() {
                return Err(command.failure(&output));
            }
            let own = std::process::id();
            let mut matches = parse_process_list(&String::from_utf8_lossy(&output.stdout));
            matches.retain(|&(pid, _)| pid != own);
            Ok(launch_roots(&matches)
                .into_iter()
                .filter_map(|pid| self.identity(pid))
                .collect())
        })
    }
}

/// The creation time of a running process, or `None` if there is no such
/// process, it has exited, or it cannot be opened.
fn creation_time(pid: u32) -> Option<u64> {
    let mut exit_code = 0u32;
    let mut created = FILETIME::default();
    let mut exited = FILETIME::default();
    let mut kernel = FILETIME::default();
    let mut user = FILETIME::default();
    // SAFETY: the handle is checked before use and closed once; every pointer
    // is to a live local of the type the API expects.
    let (running, timed) = unsafe {
        let handle = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
        if handle.is_null() {
            return None;
        }
        // A process that exits with code 259 looks running; Windows documents
        // that ambiguity, and browsers do not use that code.
        let running =
            GetExitCodeProcess(handle, &mut exit_code) != 0 && exit_code == STILL_ACTIVE as u32;
        let timed = GetProcessTimes(handle, &mut created, &mut exited, &mut kernel, &mut user) != 0;
        CloseHandle(handle);
        (running, timed)
    };
    (running && timed).then(|| filetime(created.dwLowDateTime, created.dwHighDateTime))
}
