//! `make demo` end to end: `scripts/demo.sh` in its non-interactive mode
//! (`DEMO_EXIT_WHEN_DONE=1`) goes through every phase, exits 0, and leaves
//! no process and no temporary directory behind.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::agent_world::{processes_with, processes_with_env};

/// The whole demo (about 90 s), well within the time it may take.
const DEADLINE: Duration = Duration::from_secs(200);

/// What the script printed, both streams.
struct Run {
    status: Option<std::process::ExitStatus>,
    stdout: String,
    stderr: String,
}

fn drain(mut stream: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text
    })
}

/// Waits for the script until the deadline; past it the script gets
/// SIGTERM, which makes it stop what it started, and the run has no status.
fn wait_with_deadline(child: &mut Child) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < DEADLINE {
        if let Some(status) = child.try_wait().expect("waiting for the demo") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let stopping = Instant::now();
    while stopping.elapsed() < Duration::from_secs(60) {
        if child.try_wait().expect("waiting for the demo").is_some() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn run_demo() -> Run {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("bash")
        .arg(root.join("scripts/demo.sh"))
        .current_dir(&root)
        .env("DEMO_EXIT_WHEN_DONE", "1")
        .env("DEMO_BINARY", env!("CARGO_BIN_EXE_browserfleet"))
        .env("DEMO_DEV_BINARY", testkit::tools::dev_binary())
        .env_remove("TERM")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash runs scripts/demo.sh");
    let stdout = drain(child.stdout.take().expect("stdout pipe"));
    let stderr = drain(child.stderr.take().expect("stderr pipe"));
    let status = wait_with_deadline(&mut child);
    Run {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

#[test]
fn the_demo_scales_out_and_back_in_uses_a_browser_session_and_leaves_nothing_behind() {
    let run = run_demo();
    let output = format!("{}\n--- stderr ---\n{}", run.stdout, run.stderr);
    assert!(
        run.status.is_some_and(|s| s.success()),
        "demo.sh ended with {:?} (None: past {DEADLINE:?}):\n{output}",
        run.status
    );

    let phases = [
        "phase 1/4: fleet Ready with its minimum of 1 instance",
        "sent 6 session requests",
        "phase 2/4: scaled out: 6 sessions ready",
        "phase 3/4: scaled back in to the minimum of 1 instance",
        "applied examples/session-demo.yaml",
        "kubectl get bsess: demo-session demo Ready i-",
        "a CDP client connected with the token: Chrome/",
        "opened a page titled 'hello from a BrowserSession'",
        "phase 4/4: deleted the BrowserSession",
        "demo complete",
    ];
    let mut rest = run.stdout.as_str();
    for phase in phases {
        let at = rest
            .find(phase)
            .unwrap_or_else(|| panic!("{phase:?} missing or out of order:\n{output}"));
        rest = &rest[at..];
    }
    let ready = run.stdout.matches("reply  session.ready ").count();
    assert_eq!(ready, 6, "one session.ready reply per request:\n{output}");
    assert!(
        run.stdout.contains("table  demo "),
        "the live view shows the fleet's table:\n{output}"
    );

    let work = run
        .stdout
        .lines()
        .find_map(|l| {
            l.split_once("logs in ")
                .map(|(_, dir)| dir.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("the demo names its temporary directory:\n{output}"));
    assert!(work.contains("browserfleet-demo."), "{work}");
    assert!(!Path::new(&work).exists(), "{work} was not removed");
    let left: Vec<u32> = processes_with(&work)
        .into_iter()
        .chain(processes_with_env(&format!("BROWSERFLEET_DEMO_RUN={work}")))
        .collect();
    assert!(
        left.is_empty(),
        "processes of the demo left behind: {left:?}\n{output}"
    );
}
