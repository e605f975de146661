//! `browserfleet-dev`: the development cluster's command. It stands in for a
//! Kubernetes API server and for EC2 nodes on this machine (`make demo`, the
//! tests); it is never part of the product image.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use browserfleet::api::fleet::PortRange;
use browserfleet::commands::{parse_duration, shutdown_signal};

/// Development stand-ins for a cluster and its nodes.
#[derive(Parser, Debug)]
#[command(name = "browserfleet-dev", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve a Kubernetes-compatible API in memory, for local runs and tests.
    ///
    /// Prints `listening on URL` once ready, writes a kubeconfig for kubectl
    /// and kube-rs, and serves until SIGTERM or Ctrl-C. State is lost on exit.
    Apiserver {
        /// Address to listen on; port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Where to write the kubeconfig.
        #[arg(long)]
        kubeconfig: PathBuf,
    },
    /// Play the nodes of the instances moto (or EC2) reports running: start
    /// a real agent for each after the boot delay, advertising a loopback
    /// address, and stop it and its browsers when the instance stops or
    /// terminates.
    ///
    /// AWS endpoint, region and credentials come from the environment
    /// (AWS_ENDPOINT_URL, AWS_REGION, ...) and are passed on to the agents.
    /// Runs until SIGTERM or Ctrl-C, then stops every agent and browser.
    #[cfg(unix)]
    Nodes(NodesArgs),
}

#[cfg(unix)]
#[derive(clap::Args, Debug)]
struct NodesArgs {
    /// Time from an instance's launch to its agent's start (2s, 500ms, 1m).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    boot_delay: Duration,
    /// Where agents keep their state (<dir>/<instance id>) and logs
    /// (<dir>/<instance id>.log).
    #[arg(long, value_name = "DIR")]
    work_dir: PathBuf,
    /// A fleet whose instances never register (no agent is started); may be
    /// repeated.
    #[arg(long = "never-register", value_name = "NAMESPACE/NAME", value_parser = parse_fleet_key)]
    never_register: Vec<String>,
    /// Play only the instances of this fleet; may be repeated (every fleet's
    /// when omitted).
    #[arg(long = "fleet", value_name = "NAMESPACE/NAME", value_parser = parse_fleet_key)]
    fleets: Vec<String>,
    /// How often instances are listed.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    poll_interval: Duration,
    /// Ports the browsers of all nodes share, in disjoint blocks (below the
    /// ephemeral ports, which loopback connections take at random).
    #[arg(long, value_name = "START-END", default_value = "24000-28999", value_parser = browserfleet::agent::config::parse_port_range)]
    browser_ports: PortRange,
    /// Browser ports per node: at least the fleet's sessionsPerInstance.
    #[arg(long, default_value_t = 16)]
    ports_per_node: u16,
    /// The browserfleet binary the agents run; the `browserfleet` beside
    /// this command when omitted.
    #[arg(long, value_name = "PATH")]
    agent_binary: Option<PathBuf>,
    /// How nodes start their agents: `direct` (as this user, no script) or
    /// `user-data` (each instance's real boot script, as root: the agent
    /// and its browsers run as the users it creates).
    #[arg(long, value_enum, default_value = "direct")]
    boot: Boot,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long)]
    json_logs: bool,
}

/// `--boot`'s values.
#[cfg(unix)]
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Boot {
    Direct,
    UserData,
}

fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Apiserver { listen, kubeconfig } => apiserver(&listen, &kubeconfig),
        #[cfg(unix)]
        Command::Nodes(args) => nodes(args),
    }
}

fn apiserver(listen: &str, kubeconfig: &Path) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let url = format!("http://{}", listener.local_addr()?);
        std::fs::write(kubeconfig, devcluster::apiserver::kubeconfig(&url))
            .with_context(|| format!("writing {}", kubeconfig.display()))?;
        println!("listening on {url}");
        devcluster::apiserver::serve(listener, shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(unix)]
fn nodes(args: NodesArgs) -> anyhow::Result<ExitCode> {
    use browserfleet::cloud::{Aws, AwsSettings};
    use devcluster::nodes::{BootMode, NodeOptions, NodeSimulator, PortPool};
    browserfleet::telemetry::init_logs(args.json_logs);
    let agent_binary = match args.agent_binary {
        Some(path) => path,
        None => sibling_browserfleet()?,
    };
    let mut options = NodeOptions::new(agent_binary, args.work_dir);
    options.boot = match args.boot {
        Boot::Direct => BootMode::Direct,
        Boot::UserData => BootMode::UserData,
    };
    options.boot_delay = args.boot_delay;
    options.poll_interval = args.poll_interval;
    options.never_register = args.never_register.into_iter().collect();
    options.only_fleets = (!args.fleets.is_empty()).then(|| args.fleets.into_iter().collect());
    options.browser_ports = PortPool {
        first: u16::try_from(args.browser_ports.start).context("--browser-ports start")?,
        last: u16::try_from(args.browser_ports.end).context("--browser-ports end")?,
        per_node: args.ports_per_node,
    };
    if options.browser_ports.block(0).is_none() {
        anyhow::bail!("--browser-ports holds fewer ports than --ports-per-node");
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let aws = Aws::load(AwsSettings::default()).await?;
        let work_dir = options.work_dir.clone();
        let simulator = NodeSimulator::start(&aws, options)?;
        println!("simulating nodes in {}", work_dir.display());
        shutdown_signal().await;
        simulator.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// The product binary built beside this one (`cargo build` puts both in
/// `target/<profile>/`).
#[cfg(unix)]
fn sibling_browserfleet() -> anyhow::Result<PathBuf> {
    let this = std::env::current_exe().context("finding this binary")?;
    let agent = this.with_file_name("browserfleet");
    anyhow::ensure!(
        agent.exists(),
        "{} does not exist: build it (cargo build) or pass --agent-binary",
        agent.display()
    );
    Ok(agent)
}

/// A fleet named `namespace/name`.
fn parse_fleet_key(text: &str) -> Result<String, String> {
    match text.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok(text.to_owned())
        }
        _ => Err(format!("{text:?} is not namespace/name")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleets_are_namespace_slash_name() {
        assert_eq!(parse_fleet_key("team/web"), Ok("team/web".to_owned()));
        for bad in ["team", "team/", "/web", "a/b/c"] {
            assert!(parse_fleet_key(bad).is_err(), "{bad}");
        }
    }
}
