//! An in-place upgrade that cuts no DevTools connection (Linux): the agent
//! hands its node over to the binary now installed at its path, and keeps
//! relaying the websockets its clients already have open until they close.
//!
//! A plain restart would end every open relay with the process, though the
//! browsers behind them live on. Instead, on SIGHUP (`systemctl reload`,
//! the unit's `ExecReload=`) the agent stops as for a restart — intake,
//! supervision, listeners — and then [`hand_over`]:
//! 1. saves its session table and closes the chained proxies' listeners,
//!    so the successor finds every session on disk and every port free;
//! 2. starts its successor: the same command line, which now names the new
//!    file, in the same environment;
//! 3. tells systemd that the successor is the unit's main process
//!    (`MAINPID=`, accepted with `NotifyAccess=main`), so that the unit's
//!    restart-on-failure, stop and reload now concern the successor.
//!
//! The successor re-adopts the browsers as after any restart and serves
//! every new connection; this process only relays the open ones, each as it
//! was, lets a long poll its stop interrupted end and gives its messages
//! back to the queue at once (an abandoned poll could keep them invisible
//! for a whole visibility timeout), and exits when the last connection
//! closes — at the latest when its session ends and the successor stops
//! its browser. It runs the old code until then, as the browsers do;
//! `KillMode=process` leaves it alone on a later stop of the unit, as it
//! leaves the browsers.
//!
//! Windows has no such hand-over: its upgrade restarts the agent's task,
//! which cuts open connections (`docs/nodes.md`).

use std::ffi::OsString;
use std::process::Stdio;

use thiserror::Error;

use super::runtime::Agent;
use crate::cloud::queues::Queues;

/// Why the agent could not hand over; it then exits with a failure, so
/// that systemd restarts the unit with the new file (open connections are
/// cut, as by a restart).
#[derive(Debug, Error)]
pub enum HandOverError {
    /// The successor could not be started.
    #[error("cannot start the successor {program:?}: {source}")]
    Spawn {
        /// What was started.
        program: OsString,
        /// Why it failed.
        source: std::io::Error,
    },
    /// systemd could not be told; the successor was stopped again.
    #[error("cannot tell systemd the successor's PID: {0}")]
    Notify(std::io::Error),
}

/// The successor's command line: this process's own, whose first word names
/// the installed file (systemd's `ExecStart=` path, looked up as a shell
/// would when it has no slash). `/proc/self/exe` would name the replaced
/// file instead.
pub fn successor_command_line(
    mut own: impl Iterator<Item = OsString>,
) -> Option<(OsString, Vec<OsString>)> {
    let program = own.next().filter(|p| !p.is_empty())?;
    Some((program, own.collect()))
}

/// Hands the node over to a successor (see the module's docs) once this
/// agent has stopped; returns the successor's PID. The open relays go on:
/// [`finish_lingering`].
pub async fn hand_over<Q: Queues + 'static>(agent: &Agent<Q>) -> Result<u32, HandOverError> {
    agent.release_to_successor();
    let (program, args) = successor_command_line(std::env::args_os())
        .or_else(|| Some((std::env::current_exe().ok()?.into_os_string(), Vec::new())))
        .ok_or_else(|| HandOverError::Spawn {
            program: OsString::new(),
            source: std::io::Error::other("this process has no command line"),
        })?;
    let mut successor = tokio::process::Command::new(&program)
        .args(&args)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|source| HandOverError::Spawn {
            program: program.clone(),
            source,
        })?;
    let pid = successor.id().unwrap_or_default();
    if let Err(error) = tell_service_manager(pid) {
        let _ = successor.start_kill();
        let _ = successor.wait().await;
        return Err(HandOverError::Notify(error));
    }
    // Reaped here should it end while this process still relays.
    tokio::spawn(async move {
        let exit = successor.wait().await;
        tracing::warn!(?exit, "the successor agent exited");
    });
    Ok(pid)
}

/// Waits until the last DevTools connection this agent relays has closed,
/// and a long poll its stop interrupted has ended and given back what it
/// received.
pub async fn finish_lingering<Q: Queues + 'static>(agent: &Agent<Q>) {
    let lingering = agent.lingering();
    lingering.close();
    tracing::info!(
        tasks = lingering.len(),
        "relaying the open DevTools connections until they close"
    );
    lingering.wait().await;
    tracing::info!("the last relayed connection closed");
}

/// `MAINPID=` to systemd, when it runs this agent (`NOTIFY_SOCKET` set).
#[cfg(unix)]
fn tell_service_manager(pid: u32) -> std::io::Result<()> {
    sd_notify::notify(&[sd_notify::NotifyState::MainPid(pid)])
}

#[cfg(not(unix))]
fn tell_service_manager(_pid: u32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_successor_runs_the_same_command_line_from_its_first_word() {
        let words = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
        let own = words(&[
            "/usr/local/bin/browserfleet",
            "agent",
            "--state-dir",
            "/var/lib/browserfleet",
        ]);
        let (program, args) = successor_command_line(own.into_iter()).expect("a command line");
        assert_eq!(program, "/usr/local/bin/browserfleet");
        assert_eq!(
            args,
            words(&["agent", "--state-dir", "/var/lib/browserfleet"])
        );
        assert!(successor_command_line(std::iter::empty()).is_none());
        assert!(successor_command_line(words(&[""]).into_iter()).is_none());
    }
}
