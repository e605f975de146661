//! What the binaries tell operators about themselves: logs ([`init_logs`])
//! and the Prometheus metrics shared by every part of a process
//! ([`aws_calls`]: the cloud layer's `CallRecorder` as metrics).

pub mod aws_calls;

/// Installs the process's log subscriber: human-readable lines on stderr
/// (coloured on a terminal) or JSON lines for log collectors, filtered by
/// `RUST_LOG` (default `info`). Call once, first thing.
pub fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
}
