//! `browserfleet operator`: its flags, mapped onto the operator's settings,
//! then [`crate::operator::run::run`].

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::{parse_duration, shutdown_signal};
use crate::cloud::{Aws, AwsSettings, RetryMode};
use crate::operator::context::Settings;
use crate::operator::fleet::plan::Rules;
use crate::operator::run::{LeaderElection, OperatorOptions, Running};

#[derive(clap::Args, Debug)]
pub(super) struct OperatorArgs {
    /// Reconcile only the fleets of this namespace (all namespaces when
    /// omitted).
    #[arg(long)]
    namespace: Option<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Take part in leader election: only the holder of the Lease acts.
    #[arg(long)]
    leader_election: bool,
    /// Namespace of the Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the Lease.
    #[arg(long, default_value = "browserfleet-operator")]
    lease_name: String,
    /// This replica's identity in the Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long the Lease holds without renewal: the takeover time when the
    /// leader dies.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
    /// Every fleet is reconciled at least this often.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    resync: Duration,
    /// How often each fleet's request queue depth is polled between
    /// reconciles (a burst is acted on within about this time).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    queue_poll: Duration,
    /// Long-poll wait on each fleet's events queue (at most 20s).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    events_wait: Duration,
    /// A registered agent silent this long is replaced.
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    unresponsive_after: Duration,
    /// First launch back-off after an instance did not register.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    backoff_base: Duration,
    /// Longest launch back-off.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    backoff_cap: Duration,
    /// Fleets reconciled at once.
    #[arg(long, default_value_t = 8)]
    concurrency: u16,
    /// This cluster's name, tagged on every instance it launches
    /// (`browserfleet.io/cluster`). The orphan sweep terminates only
    /// instances tagged with it, so clusters sharing an AWS account never
    /// sweep each other's instances. Default: the uid of the `kube-system`
    /// namespace (without read access to it, no tag and no sweep).
    #[arg(long, env = "BROWSERFLEET_CLUSTER_NAME")]
    cluster_name: Option<String>,
    /// The AWS SDK's retry strategy: `standard`, or `adaptive` (which also
    /// slows down after throttling, for accounts shared with busy tools).
    #[arg(long, value_enum, default_value = "standard")]
    pub(super) aws_retry_mode: RetryMode,
    /// Attempts per AWS call, the first included (1 disables retries).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub(super) aws_max_attempts: u32,
    /// Log as JSON lines (production) instead of human-readable text.
    #[arg(long)]
    json_logs: bool,
}

impl OperatorArgs {
    fn options(self) -> OperatorOptions {
        let identity = self.identity.unwrap_or_else(|| {
            format!(
                "{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "operator".into()),
                std::process::id()
            )
        });
        OperatorOptions {
            namespace: self.namespace,
            settings: Settings {
                resync: self.resync,
                depth_poll: self.queue_poll,
                events_wait: self.events_wait.min(Duration::from_secs(20)),
                concurrency: self.concurrency.max(1),
                rules: Rules {
                    unresponsive_after: self.unresponsive_after,
                    backoff_base: self.backoff_base,
                    backoff_cap: self.backoff_cap,
                },
                ..Settings::default()
            },
            listen: Some(self.listen),
            cluster: self.cluster_name,
            leader_election: self.leader_election.then_some(LeaderElection {
                namespace: self.lease_namespace,
                lease: self.lease_name,
                identity,
                duration: self.lease_duration,
            }),
        }
    }
}

pub(super) fn run(args: OperatorArgs) -> anyhow::Result<ExitCode> {
    crate::telemetry::init_logs(args.json_logs);
    let aws_settings = AwsSettings {
        retry_mode: args.aws_retry_mode,
        max_attempts: args.aws_max_attempts,
        ..AwsSettings::default()
    };
    let options = args.options();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("connecting to Kubernetes (kubeconfig or in-cluster configuration)")?;
        let aws = Aws::load(aws_settings).await?;
        let (started, running) = tokio::sync::oneshot::channel::<Running>();
        tokio::spawn(async move {
            if let Ok(running) = running.await
                && let Some(address) = running.address
            {
                println!("listening on {address}");
            }
        });
        crate::operator::run::run(client, aws, options, shutdown_signal(), Some(started)).await?;
        Ok(ExitCode::SUCCESS)
    })
}
