//! Process control on Linux: `/proc` for identities and the process tree,
//! process groups and `kill(2)` for stopping.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::io;

use futures::future::BoxFuture;

use super::{
    KillOutcome, LaunchSpec, ProcessControl, ProcessError, ProcessIdentity, Spawned, command_for,
    launch_roots, watch_exit,
};

/// How many times the tree is re-read while freezing it, at most. Each round
/// stops the processes found in the previous one, so a round finds only
/// processes forked before their parent was stopped; two rounds are normal.
const FREEZE_ROUNDS: usize = 8;

/// Process control through `/proc` and signals (Linux).
#[derive(Clone, Copy, Debug, Default)]
pub struct UnixProcesses;

/// A signal for one process alone: [`UnixProcesses::signal_alone`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: asks it to end.
    Terminate,
    /// SIGKILL: ends it at once, as a crash would.
    Kill,
    /// SIGHUP: asks it to reload (an agent hands its node over to the
    /// binary installed at its path).
    Hangup,
}

impl UnixProcesses {
    /// The process control of this machine.
    pub fn new() -> Self {
        UnixProcesses
    }

    /// Sends `which` to this process alone (neither its group nor its
    /// children: an agent's browsers outlive it, as on a real node), but only
    /// while the PID still belongs to it.
    pub fn signal_alone(
        &self,
        id: ProcessIdentity,
        which: Signal,
    ) -> Result<KillOutcome, ProcessError> {
        match read_stat(id.pid) {
            Ok(stat) if stat.start_time != id.start_time => return Ok(KillOutcome::PidReused),
            Ok(stat) if stat.is_running() => {}
            _ => return Ok(KillOutcome::AlreadyGone),
        }
        let number = match which {
            Signal::Terminate => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Hangup => libc::SIGHUP,
        };
        Ok(if signal(id.pid.into(), number)? {
            KillOutcome::Killed
        } else {
            KillOutcome::AlreadyGone
        })
    }
}

impl ProcessControl for UnixProcesses {
    fn spawn(&self, spec: &LaunchSpec) -> Result<Spawned, ProcessError> {
        let mut command = command_for(spec)?;
        // Its own process group, so that one signal reaches the browser and
        // every helper it forks, and a Ctrl-C at the agent's terminal does not.
        command.process_group(0);
        let mut child = command.spawn().map_err(|source| ProcessError::Spawn {
            program: spec.program.clone(),
            source,
        })?;
        // Not yet waited for, so even if it already exited the PID is still
        // ours (a zombie) and its start time readable.
        let stat = child.id().and_then(|pid| read_stat(pid).ok());
        let Some(stat) = stat else {
            let pid = child.id().unwrap_or(0);
            let _ = child.start_kill();
            return Err(ProcessError::NoIdentity { pid });
        };
        Ok(Spawned {
            identity: stat.identity(),
            exit: watch_exit(child),
        })
    }

    fn identity(&self, pid: u32) -> Option<ProcessIdentity> {
        let stat = read_stat(pid).ok()?;
        stat.is_running().then(|| stat.identity())
    }

    fn kill_tree(&self, id: ProcessIdentity) -> BoxFuture<'_, Result<KillOutcome, ProcessError>> {
        Box::pin(async move { kill_tree(id) })
    }

    fn find_by_marker<'a>(
        &'a self,
        marker: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ProcessIdentity>, ProcessError>> {
        Box::pin(async move { Ok(find_by_marker(marker)) })
    }
}

/// The fields of `/proc/PID/stat` we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProcStat {
    pid: u32,
    /// R, S, D, Z (zombie), X (dead), T (stopped)...
    state: char,
    parent: u32,
    group: u32,
    /// Clock ticks since boot.
    start_time: u64,
}

impl ProcStat {
    fn identity(&self) -> ProcessIdentity {
        ProcessIdentity {
            pid: self.pid,
            start_time: self.start_time,
        }
    }

    fn is_running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses `/proc/PID/stat`. The second field, the command name in
/// parentheses, may itself hold spaces and parentheses, so the fields are
/// counted from the last `)`.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let (head, tail) = text.rsplit_once(')')?;
    let pid = head.split_once('(')?.0.trim().parse().ok()?;
    // Fields from the third on: state is field 3, so field n is at n - 3.
    let fields: Vec<&str> = tail.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).copied();
    Some(ProcStat {
        pid,
        state: field(3)?.chars().next()?,
        parent: field(4)?.parse().ok()?,
        group: field(5)?.parse().ok()?,
        start_time: field(22)?.parse().ok()?,
    })
}

fn read_stat(pid: u32) -> io::Result<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad stat line"))
}

/// Every process in `/proc`; processes that end while we read are skipped.
fn process_table() -> Vec<ProcStat> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| read_stat(pid).ok())
        .collect()
}

/// The processes to kill with `root` besides itself: its descendants by
/// parent links, and the members of its process group if it leads one.
fn tree_members(table: &[ProcStat], root: u32, group: Option<u32>) -> Vec<ProcStat> {
    let mut children: HashMap<u32, Vec<&ProcStat>> = HashMap::new();
    for stat in table {
        children.entry(stat.parent).or_default().push(stat);
    }
    let mut members: Vec<ProcStat> = Vec::new();
    let mut seen = HashSet::from([root]);
    let mut queue = VecDeque::from([root]);
    while let Some(pid) = queue.pop_front() {
        for child in children.get(&pid).into_iter().flatten() {
            if seen.insert(child.pid) {
                members.push(**child);
                queue.push_back(child.pid);
            }
        }
    }
    if let Some(group) = group {
        for stat in table {
            if stat.group == group && seen.insert(stat.pid) {
                members.push(*stat);
            }
        }
    }
    members
}

/// Sends a signal to a PID (or, negative, a process group). `Ok(false)` when
/// there is no such process.
fn signal(target: i64, signal: libc::c_int) -> Result<bool, ProcessError> {
    let Ok(raw) = libc::pid_t::try_from(target) else {
        return Ok(false);
    };
    // Never signal the agent itself or "every process" (0 and -1 are special).
    if raw == 0 || raw == -1 || raw.unsigned_abs() == std::process::id() {
        return Ok(false);
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let result = unsafe { libc::kill(raw, signal) };
    if result == 0 {
        return Ok(true);
    }
    let source = io::Error::last_os_error();
    if source.raw_os_error() == Some(libc::ESRCH) {
        return Ok(false);
    }
    Err(ProcessError::Signal {
        pid: target,
        source,
    })
}

/// Kills a process tree: first stops every member (so none can fork, or exit
/// and free its PID for reuse, while we look), re-reading the tree until no
/// new member appears, then kills the group and every stopped member.
fn kill_tree(id: ProcessIdentity) -> Result<KillOutcome, ProcessError> {
    let Ok(root) = read_stat(id.pid) else {
        return Ok(KillOutcome::AlreadyGone);
    };
    if root.start_time != id.start_time {
        return Ok(KillOutcome::PidReused);
    }
    // Only a group the process leads is signalled as a whole, and never the
    // agent's own group.
    let own_group = read_stat(std::process::id()).ok().map(|own| own.group);
    let group = (root.group == id.pid && own_group != Some(id.pid)).then_some(id.pid);
    let target = group.map_or(i64::from(id.pid), |group| -i64::from(group));
    signal(target, libc::SIGSTOP)?;
    let mut frozen: HashMap<u32, ProcStat> = HashMap::from([(root.pid, root)]);
    for _ in 0..FREEZE_ROUNDS {
        let mut found_new = false;
        for member in tree_members(&process_table(), id.pid, group) {
            if frozen.contains_key(&member.pid) || !signal(member.pid.into(), libc::SIGSTOP)? {
                continue;
            }
            // The PID may have changed hands between reading and stopping.
            match read_stat(member.pid) {
                Ok(now) if now.start_time == member.start_time => {
                    frozen.insert(member.pid, member);
                    found_new = true;
                }
                _ => {
                    signal(member.pid.into(), libc::SIGCONT)?;
                }
            }
        }
        if !found_new {
            break;
        }
    }
    signal(target, libc::SIGKILL)?;
    for member in frozen.values() {
        signal(member.pid.into(), libc::SIGKILL)?;
    }
    let any_running = frozen.values().any(ProcStat::is_running);
    Ok(if any_running {
        KillOutcome::Killed
    } else {
        KillOutcome::AlreadyGone
    })
}

fn find_by_marker(marker: &str) -> Vec<ProcessIdentity> {
    let own = std::process::id();
    let mut matches: Vec<ProcStat> = Vec::new();
    for stat in process_table() {
        if stat.pid == own || !stat.is_running() {
            continue;
        }
        let Ok(raw) = fs::read(format!("/proc/{}/cmdline", stat.pid)) else {
            continue;
        };
        // Arguments are NUL-separated; a marker may span two of them.
        let line = String::from_utf8_lossy(&raw).replace('\0', " ");
        if line.contains(marker) {
            matches.push(stat);
        }
    }
    let pairs: Vec<(u32, u32)> = matches.iter().map(|s| (s.pid, s.parent)).collect();
    let roots: HashSet<u32> = launch_roots(&pairs).into_iter().collect();
    matches
        .iter()
        .filter(|stat| roots.contains(&stat.pid))
        .map(ProcStat::identity)
        .collect()
}

/// Makes `command`'s process run as `run_as`: no supplementary group, then
/// the group, then the user, then no ambient capability, so that the program
/// it runs starts with none (it has no file capabilities). From an agent that
/// is root, the change of user drops every capability anyway.
pub(super) fn run_as(command: &mut tokio::process::Command, run_as: super::RunAs) {
    let super::RunAs { uid, gid } = run_as;
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe system calls, touching no memory of the parent's.
    unsafe {
        command.pre_exec(move || {
            let check = |result: libc::c_int| {
                if result == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            };
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))?;
            check(libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(pid: u32, parent: u32, group: u32) -> ProcStat {
        ProcStat {
            pid,
            state: 'S',
            parent,
            group,
            start_time: u64::from(pid) * 100,
        }
    }

    #[test]
    fn stat_line_with_spaces_and_parentheses_in_the_name_parses() {
        let line = "4242 (Web Content (x)) S 4200 4242 4242 0 -1 4194560 1 0 0 0 \
                    3 4 0 0 20 0 12 0 987654 1000 200 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                pid: 4242,
                state: 'S',
                parent: 4200,
                group: 4242,
                start_time: 987654,
            })
        );
    }

    #[test]
    fn truncated_stat_line_is_rejected() {
        assert_eq!(parse_stat("42 (sh) S 1 42 42 0"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_stat_is_readable_and_running() -> io::Result<()> {
        let own = read_stat(std::process::id())?;
        assert_eq!(own.pid, std::process::id());
        assert!(own.is_running());
        Ok(())
    }

    #[test]
    fn tree_follows_parents_and_adds_the_group() {
        // 10 leads group 10: 11 and 12 descend from it; 13 left the group
        // (setsid) but is still a child of 11; 14 is in the group but was
        // reparented to init; 99 is unrelated.
        let table = [
            stat(1, 0, 1),
            stat(10, 1, 10),
            stat(11, 10, 10),
            stat(12, 11, 10),
            stat(13, 11, 13),
            stat(14, 1, 10),
            stat(99, 1, 99),
        ];
        let mut pids: Vec<u32> = tree_members(&table, 10, Some(10))
            .iter()
            .map(|s| s.pid)
            .collect();
        pids.sort_unstable();
        assert_eq!(pids, vec![11, 12, 13, 14]);

        let mut without_group: Vec<u32> = tree_members(&table, 10, None)
            .iter()
            .map(|s| s.pid)
            .collect();
        without_group.sort_unstable();
        assert_eq!(without_group, vec![11, 12, 13]);
    }

    #[test]
    fn signalling_the_agent_itself_or_everyone_is_refused() -> Result<(), ProcessError> {
        assert!(!signal(i64::from(std::process::id()), 0)?);
        assert!(!signal(0, 0)?);
        assert!(!signal(-1, 0)?);
        Ok(())
    }
}
