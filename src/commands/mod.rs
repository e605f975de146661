//! The `browserfleet` command line: one subcommand per role, each with its
//! arguments and entry point in a module of its own. `main.rs` only calls
//! [`run`].

mod agent;
mod crdgen;
mod node_policy;
mod operator;
mod simulate;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// browserfleet runs fleets of browsers on EC2 instances for Chrome DevTools
/// Protocol clients, described by BrowserFleet and BrowserSession resources.
#[derive(Parser, Debug)]
#[command(
    name = "browserfleet",
    version,
    about,
    long_about,
    after_help = "Examples:\n  browserfleet crdgen                 write crds/*.yaml\n  browserfleet crdgen --check         fail if crds/ is stale\n  kubectl apply -f crds/              install the CRDs in a cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write the CustomResourceDefinitions generated from the Rust types.
    ///
    /// Writes one YAML file per resource (browserfleets.browserfleet.io.yaml,
    /// browsersessions.browserfleet.io.yaml) into the output directory. With
    /// --check nothing is written; the command fails when a file differs.
    Crdgen(crdgen::CrdgenArgs),
    /// Replay request traces against scaling policies and report queue waits
    /// and instance-hours.
    ///
    /// Every trace is run against every policy named (all when none is), on
    /// the fleet of docs/scaling.md (0 to 100 instances, 4 sessions each).
    /// The same seed gives the same report.
    Simulate(simulate::SimulateArgs),
    /// Run the node agent: take session requests off the fleet's queue, start
    /// and guard one browser per session, serve the control API and the
    /// authenticated DevTools gateway.
    ///
    /// Identity (instance id, address to advertise) comes from the EC2
    /// instance metadata service (IMDSv2) unless both --instance-id and
    /// --advertise-address are given. Stops on SIGTERM or Ctrl-C (browsers
    /// keep running for the next agent to re-adopt), or after a drain.
    Agent(agent::AgentArgs),
    /// Run the operator: reconcile BrowserFleets into queues, agent
    /// configuration and EC2 instances, sized from their request queues, and
    /// BrowserSessions into one browser each on their fleet.
    ///
    /// Uses the kubeconfig (or in-cluster configuration) and the AWS SDK's
    /// usual configuration (AWS_REGION, AWS_ENDPOINT_URL, credentials).
    /// Serves /healthz, /readyz and /metrics on --listen. Stops gracefully on
    /// SIGTERM or Ctrl-C: reconciles in flight get 20 s to finish.
    Operator(operator::OperatorArgs),
    /// Generate a request trace of a given shape from a fixed seed.
    Trace(simulate::TraceArgs),
    /// Print the IAM policy of one fleet's nodes: its own queues and agent
    /// configuration, nothing of another fleet's.
    ///
    /// Attach it to the instance profile the fleet names in
    /// spec.instance.instanceProfile, one profile per fleet.
    NodePolicy(node_policy::NodePolicyArgs),
}

/// Parses the command line and runs the subcommand it names.
pub fn run() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Crdgen(args) => crdgen::run(&args),
        Command::Simulate(args) => simulate::run(&args),
        Command::Trace(args) => simulate::write_trace(&args),
        Command::Agent(args) => agent::run(args),
        Command::Operator(args) => operator::run(args),
        Command::NodePolicy(args) => node_policy::run(&args),
    }
}

/// A duration as people write it on a command line: `2s`, `500ms`, `1m 30s`
/// (or ISO 8601).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let signed: jiff::SignedDuration = text
        .parse()
        .map_err(|e| format!("{text:?} is not a duration like 2s or 500ms: {e}"))?;
    Duration::try_from(signed).map_err(|_| format!("{text:?} is negative"))
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_people_write_them() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("-2s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn the_product_has_no_development_subcommand() {
        assert!(Cli::try_parse_from(["browserfleet", "dev", "apiserver"]).is_err());
    }

    /// The development cluster and the test kit are dev-dependencies only:
    /// the binary the image ships (`cargo build -p browserfleet`) never
    /// links them.
    #[test]
    fn the_product_does_not_depend_on_the_development_crates() {
        let manifest = include_str!("../../Cargo.toml");
        let mut section = "";
        for line in manifest.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                section = line;
                continue;
            }
            if section != "[dev-dependencies]" && !section.starts_with("[workspace") {
                assert!(
                    !line.starts_with("browserfleet-devcluster")
                        && !line.starts_with("browserfleet-testkit"),
                    "{section} names {line}"
                );
            }
        }
    }

    #[test]
    fn the_charts_aws_flags_parse() {
        let cli = Cli::try_parse_from([
            "browserfleet",
            "operator",
            "--aws-retry-mode=adaptive",
            "--aws-max-attempts=8",
        ])
        .expect("flags parse");
        let Command::Operator(args) = cli.command else {
            panic!("the operator subcommand");
        };
        assert_eq!(args.aws_retry_mode, crate::cloud::RetryMode::Adaptive);
        assert_eq!(args.aws_max_attempts, 8);
        assert!(Cli::try_parse_from(["browserfleet", "operator", "--aws-max-attempts=0"]).is_err());
    }
}
