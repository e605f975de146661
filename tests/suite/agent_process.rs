//! Process control against real processes: Chromium started headless with a
//! profile of its own, and small shell commands. Linux only.
#![cfg(target_os = "linux")]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use browserfleet::agent::process::{
    KillOutcome, LaunchSpec, ProcessControl, ProcessExit, ProcessIdentity, Spawned, UnixProcesses,
};
use tokio::time::Instant;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Polls `condition` every 20 ms until it holds, or fails after `limit`.
async fn wait_until<F, Fut>(limit: Duration, what: &str, mut condition: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !condition().await {
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// PIDs of the live processes whose command line contains `marker`.
fn pids_with(marker: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&raw)
            .replace('\0', " ")
            .contains(marker)
        {
            pids.push(pid);
        }
    }
    pids
}

/// Fields 3 (state), 4 (parent) and 5 (group) of `/proc/PID/stat`.
fn stat_of(pid: u32) -> Option<(char, u32, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = text.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((
        state,
        fields.next()?.parse().ok()?,
        fields.next()?.parse().ok()?,
    ))
}

fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| stat_of(child).is_some_and(|(_, parent, _)| parent == pid))
        .collect()
}

fn shell(script: &str) -> LaunchSpec {
    LaunchSpec {
        program: PathBuf::from("/bin/sh"),
        args: vec!["-c".to_owned(), script.to_owned()],
        ..LaunchSpec::default()
    }
}

fn chromium(profile: &Path) -> LaunchSpec {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--remote-debugging-port=0",
        "--remote-debugging-address=127.0.0.1",
    ];
    let mut args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    LaunchSpec {
        program: PathBuf::from(CHROMIUM),
        args,
        ..LaunchSpec::default()
    }
}

/// Kills what a test started if it failed half-way.
async fn cleanup(control: &UnixProcesses, spawned: &Spawned) {
    let _ = control.kill_tree(spawned.identity).await;
}

#[tokio::test]
async fn chromium_is_found_by_its_profile_and_killed_with_every_child() -> Result<()> {
    let control = UnixProcesses::new();
    let dir = tempfile::tempdir()?;
    let profile = dir.path().join("profiles/tmp/session-1");
    std::fs::create_dir_all(&profile)?;
    let marker = format!("--user-data-dir={}", dir.path().join("profiles").display());

    let mut spawned = control.spawn(&chromium(&profile))?;
    let id = spawned.identity;
    let result = async {
        // Started once its renderers and zygotes repeat the marker.
        wait_until(Duration::from_secs(20), "chromium's helpers", || async {
            pids_with(&marker).len() >= 3
        })
        .await?;
        ensure!(control.identity(id.pid) == Some(id));
        ensure!(control.is_alive(&id));
        ensure!(stat_of(id.pid).map(|(_, _, group)| group) == Some(id.pid));

        let found = control.find_by_marker(&marker).await?;
        ensure!(found == vec![id], "found {found:?}, expected only {id:?}");

        ensure!(control.kill_tree(id).await? == KillOutcome::Killed);
        wait_until(
            Duration::from_secs(10),
            "no process on the profile",
            || async { pids_with(&marker).is_empty() },
        )
        .await?;
        let exit = tokio::time::timeout(Duration::from_secs(10), spawned.exit.wait())
            .await
            .context("no exit observed")?;
        ensure!(exit == ProcessExit::Signal(9), "exit {exit:?}");
        ensure!(!control.is_alive(&id));
        ensure!(control.kill_tree(id).await? == KillOutcome::AlreadyGone);
        ensure!(control.find_by_marker(&marker).await?.is_empty());
        Ok(())
    }
    .await;
    cleanup(&control, &spawned).await;
    result
}

#[tokio::test]
async fn a_forged_identity_kills_nothing() -> Result<()> {
    let control = UnixProcesses::new();
    let spawned = control.spawn(&shell("sleep 30"))?;
    let real = spawned.identity;
    let forged = ProcessIdentity {
        pid: real.pid,
        start_time: real.start_time + 1,
    };
    let result = async {
        ensure!(!control.is_alive(&forged));
        ensure!(control.kill_tree(forged).await? == KillOutcome::PidReused);
        ensure!(control.is_alive(&real));
        ensure!(spawned.exit.exited().is_none());
        Ok(())
    }
    .await;
    cleanup(&control, &spawned).await;
    result
}

#[tokio::test]
async fn kill_tree_reaches_descendants_that_left_the_group() -> Result<()> {
    let control = UnixProcesses::new();
    // The shell's child becomes a session (and group) leader of its own.
    let spawned = control.spawn(&shell("setsid sleep 30 & sleep 30"))?;
    let root = spawned.identity;
    let result = async {
        let outside_group = |children: &[u32]| {
            children
                .iter()
                .filter(|&&child| stat_of(child).is_some_and(|(_, _, group)| group != root.pid))
                .count()
        };
        wait_until(
            Duration::from_secs(5),
            "two children, one in a new group",
            || async {
                let children = children_of(root.pid);
                children.len() == 2 && outside_group(&children) == 1
            },
        )
        .await?;
        let children = children_of(root.pid);
        let identities: Vec<ProcessIdentity> = children
            .iter()
            .filter_map(|&child| control.identity(child))
            .collect();
        ensure!(identities.len() == 2);

        ensure!(control.kill_tree(root).await? == KillOutcome::Killed);
        // Signals are sent when kill_tree returns; death follows at once.
        wait_until(Duration::from_secs(5), "the whole tree dead", || async {
            identities.iter().all(|id| !control.is_alive(id)) && !control.is_alive(&root)
        })
        .await?;
        Ok(())
    }
    .await;
    cleanup(&control, &spawned).await;
    result
}

#[tokio::test]
async fn exit_codes_of_processes_that_end_by_themselves_are_observed() -> Result<()> {
    let control = UnixProcesses::new();
    let mut failed = control.spawn(&shell("exit 3"))?;
    let mut closed = control.spawn(&shell("exit 0"))?;
    let limit = Duration::from_secs(5);
    let failed_exit = tokio::time::timeout(limit, failed.exit.wait()).await?;
    ensure!(failed_exit == ProcessExit::Code(3), "{failed_exit:?}");
    ensure!(!failed_exit.is_success());
    let closed_exit = tokio::time::timeout(limit, closed.exit.wait()).await?;
    ensure!(closed_exit.is_success(), "{closed_exit:?}");
    ensure!(failed.exit.exited() == Some(ProcessExit::Code(3)));
    ensure!(!control.is_alive(&failed.identity));
    Ok(())
}

#[tokio::test]
async fn a_process_nobody_watches_outlives_its_handle_and_is_reaped() -> Result<()> {
    let control = UnixProcesses::new();
    let dir = tempfile::tempdir()?;
    let release = dir.path().join("release");
    let done = dir.path().join("done");
    let script = format!(
        "while [ ! -e '{}' ]; do sleep 0.02; done; touch '{}'",
        release.display(),
        done.display()
    );
    let spawned = control.spawn(&shell(&script))?;
    let id = spawned.identity;
    drop(spawned);

    let result = async {
        std::fs::write(&release, "")?;
        // Only a process that survived the drop of its handle gets this far.
        wait_until(Duration::from_secs(5), "the process to finish", || async {
            done.exists()
        })
        .await?;
        // Reaped: gone from /proc, not lingering as a zombie.
        wait_until(
            Duration::from_secs(5),
            "the process to be reaped",
            || async { !Path::new(&format!("/proc/{}", id.pid)).exists() },
        )
        .await
    }
    .await;
    let _ = control.kill_tree(id).await;
    result
}

#[tokio::test]
async fn output_environment_and_directory_follow_the_spec() -> Result<()> {
    let control = UnixProcesses::new();
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("browser.log");
    std::fs::write(&log, "earlier\n")?;
    let spec = LaunchSpec {
        env: vec![("BF_TEST_VALUE".to_owned(), "42".to_owned())],
        working_dir: Some(dir.path().to_owned()),
        log_file: Some(log.clone()),
        ..shell("echo out; echo err >&2; echo \"$BF_TEST_VALUE\"; pwd; read line || echo no-stdin")
    };
    let mut spawned = control.spawn(&spec)?;
    let exit = tokio::time::timeout(Duration::from_secs(5), spawned.exit.wait()).await?;
    ensure!(exit.is_success(), "{exit:?}");
    let text = std::fs::read_to_string(&log)?;
    let expected = format!(
        "earlier\nout\nerr\n42\n{}\nno-stdin\n",
        dir.path().canonicalize()?.display()
    );
    ensure!(text == expected, "log was {text:?}");
    Ok(())
}

#[tokio::test]
async fn a_missing_program_is_a_spawn_error() {
    let control = UnixProcesses::new();
    let spec = LaunchSpec {
        program: PathBuf::from("/nonexistent/chrome"),
        ..LaunchSpec::default()
    };
    assert!(matches!(
        control.spawn(&spec),
        Err(browserfleet::agent::process::ProcessError::Spawn { .. })
    ));
}

#[tokio::test]
async fn processes_that_do_not_exist_have_no_identity() {
    let control = UnixProcesses::new();
    // PIDs above pid_max (at most 2^22) are never used.
    assert_eq!(control.identity(4_194_304 + 17), None);
    let id = ProcessIdentity {
        pid: 4_194_304 + 17,
        start_time: 1,
    };
    assert!(!control.is_alive(&id));
    assert!(matches!(
        control.kill_tree(id).await,
        Ok(KillOutcome::AlreadyGone)
    ));
}
