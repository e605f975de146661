//! A moto server for this test binary (or benchmark): started once, on an
//! ephemeral port, from the project's `.venv` (`scripts/install-moto.sh`, run
//! by `make test`). It stops when the process exits, because it exits when its
//! standard input closes.
//!
//! A binary that cannot start moto fails loudly: the cloud tests never skip.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

/// The instance profile that exists in every moto this module starts.
pub const INSTANCE_PROFILE: &str = "browserfleet-test-node";

/// A running moto server.
pub struct Moto {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    _child: Child,
    // Held open for the life of the process; moto exits when it closes.
    _stdin: ChildStdin,
}

static MOTO: OnceLock<Moto> = OnceLock::new();

/// The moto server of this process, started on first use.
pub fn moto() -> &'static Moto {
    MOTO.get_or_init(|| match start() {
        Ok(moto) => moto,
        Err(reason) => panic!(
            "cannot start moto: {reason}\n\
             run `make test` or `bash scripts/install-moto.sh` to install it into .venv/ \
             (or point MOTO_PYTHON at a Python that has moto[server])"
        ),
    })
}

fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("MOTO_PYTHON") {
        return PathBuf::from(python);
    }
    crate::tools::root().join(".venv/bin/python")
}

fn start() -> Result<Moto, String> {
    let python = python();
    if !python.exists() {
        return Err(format!("{} does not exist", python.display()));
    }
    let script = crate::tools::root().join("scripts/moto-server.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .args(["--instance-profile", INSTANCE_PROFILE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", python.display()))?;
    let stdin = child.stdin.take().ok_or("no stdin pipe")?;
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let result = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(result);
    });
    let line = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(line)) => line,
        Ok(Err(e)) => return Err(format!("reading moto's port: {e}")),
        Err(_) => {
            let _ = child.kill();
            return Err("moto did not report its port within 60 s".to_owned());
        }
    };
    let port: u16 = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("moto printed {line:?} instead of its port"))?;
    Ok(Moto {
        endpoint: format!("http://127.0.0.1:{port}"),
        _child: child,
        _stdin: stdin,
    })
}

/// Points the SDK's default chains at `endpoint` with dummy credentials, the
/// way a user would: `AWS_ENDPOINT_URL` and the standard credential variables.
/// Called once per process, before any client is built.
pub fn use_endpoint(endpoint: &str) {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // SAFETY: runs once, inside a OnceLock that every test passes through
        // before it builds a client or reads the environment, so no other
        // thread of ours reads the environment while it is written.
        unsafe {
            std::env::set_var("AWS_ENDPOINT_URL", endpoint);
            std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
            std::env::set_var("AWS_REGION", "us-east-1");
            std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
            std::env::remove_var("AWS_PROFILE");
            std::env::remove_var("AWS_SESSION_TOKEN");
        }
    });
}
