//! `browserfleet agent`: the node agent's configuration sources (file, SSM,
//! overrides) and identity (flags or IMDSv2), then [`crate::agent::start`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::shutdown_signal;
use crate::agent::{self, config::AgentConfig, config::ConfigOverrides, runtime::NodeIdentity};
use crate::api::fleet::PortRange;
use crate::cloud::{Aws, AwsSettings, Parameters, Sqs, Ssm};

/// What a signal asked of the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Asked {
    /// Nothing yet.
    Run,
    /// SIGTERM or Ctrl-C: stop, leaving the browsers to the next agent.
    Stop,
    /// SIGHUP: stop and hand the node over to the installed binary
    /// ([`agent::handover`]).
    HandOver,
}

/// Completes on SIGHUP (Unix; never elsewhere). Listens from the call on.
fn hangup_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        let mut signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("listening for SIGHUP")?;
        Ok(async move {
            signal.recv().await;
        })
    }
    #[cfg(not(unix))]
    Ok(std::future::pending())
}

#[derive(clap::Args, Debug)]
pub(super) struct AgentArgs {
    /// The configuration JSON file.
    #[arg(
        long,
        conflicts_with = "config_ssm_parameter",
        required_unless_present = "config_ssm_parameter"
    )]
    config: Option<PathBuf>,
    /// Name of the SSM parameter holding the configuration (String or
    /// SecureString), as the operator writes it.
    #[arg(long)]
    config_ssm_parameter: Option<String>,
    /// Instance id to report, instead of asking the metadata service.
    #[arg(long, requires = "advertise_address")]
    instance_id: Option<String>,
    /// host:port clients reach the gateway at, instead of the instance's
    /// private address and the gateway port.
    #[arg(long, requires = "instance_id")]
    advertise_address: Option<String>,
    /// IP address the listener binds to, instead of the configuration's
    /// listenAddress (several agents on one host).
    #[arg(long, value_name = "IP")]
    listen_address: Option<String>,
    /// Port of the listener, instead of the configuration's gatewayPort; 0
    /// picks a free port.
    #[arg(long, value_name = "PORT")]
    gateway_port: Option<u16>,
    /// DevTools ports of the browsers, instead of the configuration's
    /// browserPortRange.
    #[arg(long, value_name = "START-END", value_parser = crate::agent::config::parse_port_range)]
    browser_ports: Option<PortRange>,
    /// Directory of the session table and profiles, instead of the
    /// configuration's stateDir.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Port of the egress proxy, instead of the configuration's
    /// egress.proxyPort; 0 picks a free port.
    #[arg(long, value_name = "PORT")]
    egress_proxy_port: Option<u16>,
    /// Start browsers as this unprivileged user (Linux; the node's user
    /// data creates it and grants the agent the capabilities it needs):
    /// with Chromium's sandbox, under the node's egress rule, away from the
    /// agent's state.
    #[arg(long, value_name = "USER")]
    browser_user: Option<String>,
    /// Log as JSON lines (production) instead of human-readable text.
    #[arg(long)]
    json_logs: bool,
}

pub(super) fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    crate::telemetry::init_logs(args.json_logs);
    let overrides = ConfigOverrides {
        listen_address: args.listen_address,
        gateway_port: args.gateway_port,
        browser_port_range: args.browser_ports,
        state_dir: args.state_dir,
        egress_proxy_port: args.egress_proxy_port,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        // SIGHUP's default would end the process: caught from the start.
        let hangup = hangup_signal()?;
        let aws = Aws::load(AwsSettings::default()).await?;
        let json = match (&args.config, &args.config_ssm_parameter) {
            (Some(path), _) => std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
            (None, Some(name)) => {
                Ssm::new(&aws)
                    .get_parameter(name)
                    .await
                    .with_context(|| format!("reading SSM parameter {name}"))?
                    .value
            }
            (None, None) => anyhow::bail!("--config or --config-ssm-parameter is required"),
        };
        let mut settings = AgentConfig::parse_with(&json, &overrides)?;
        settings.browser_user = args
            .browser_user
            .as_deref()
            .map(agent::browser_user::BrowserUser::lookup)
            .transpose()?;
        let metadata = agent::imds::client(&aws);
        // On EC2 the identity comes from the metadata service, which then
        // also gives EC2's notices; off EC2 it answers only where named.
        let (identity, notices) = match args.instance_id.zip(args.advertise_address) {
            Some((instance_id, advertise)) => (
                NodeIdentity {
                    instance_id,
                    advertise,
                },
                agent::imds::endpoint_named().then_some(metadata),
            ),
            None => {
                let found = agent::imds::read(&metadata).await?;
                let identity = NodeIdentity {
                    advertise: format!("{}:{}", found.private_ip, settings.config.gateway_port),
                    instance_id: found.instance_id,
                };
                (identity, Some(metadata))
            }
        };
        // Listening for SIGTERM and SIGHUP before the start, which re-adopts
        // browsers and may take a while: a signal then stops the agent right
        // after.
        let (asked, mut on_signal) = tokio::sync::watch::channel(Asked::Run);
        tokio::spawn(async move {
            let asked_for = tokio::select! {
                () = shutdown_signal() => Asked::Stop,
                () = hangup => Asked::HandOver,
            };
            asked.send_replace(asked_for);
        });
        let running = agent::start(
            settings,
            Some(identity),
            Sqs::new(&aws),
            agent::RunOptions {
                aws_calls: Some(aws.recorder().clone()),
                notices,
                ..Default::default()
            },
        )
        .await?;
        println!("listening on {}", running.address);
        let agent = running.agent.clone();
        let mut stop_on_signal = on_signal.clone();
        tokio::spawn(async move {
            if let Ok(asked) = stop_on_signal.wait_for(|a| *a != Asked::Run).await {
                if *asked == Asked::HandOver {
                    agent.stop_to_hand_over();
                } else {
                    agent.stop();
                }
            }
        });
        let agent = running.agent.clone();
        running.wait().await;
        if *on_signal.borrow_and_update() != Asked::HandOver {
            return Ok(ExitCode::SUCCESS);
        }
        match agent::handover::hand_over(&agent).await {
            Ok(successor) => tracing::info!(successor, "handed the node over"),
            Err(error) => {
                tracing::error!(%error, "cannot hand the node over; exiting for a restart");
                return Ok(ExitCode::FAILURE);
            }
        }
        tokio::select! {
            () = agent::handover::finish_lingering(&agent) => {}
            () = shutdown_signal() => tracing::info!("stopped while relaying"),
        }
        Ok(ExitCode::SUCCESS)
    })
}
