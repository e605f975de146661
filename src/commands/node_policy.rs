//! `browserfleet node-policy`: the IAM policy of one fleet's nodes, printed
//! as JSON (see `operator::node_policy`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

use crate::cloud::FleetId;
use crate::operator::node_policy::{NodePolicyScope, node_policy};

#[derive(clap::Args, Debug)]
pub(super) struct NodePolicyArgs {
    /// The fleet's namespace.
    #[arg(long)]
    namespace: String,
    /// The fleet's name.
    #[arg(long)]
    fleet: String,
    /// The fleet's uid (`kubectl get bfleet NAME -o jsonpath='{.metadata.uid}'`):
    /// its queue names carry a prefix of it.
    #[arg(long)]
    uid: String,
    /// The region, or `*`.
    #[arg(long, default_value = "*")]
    region: String,
    /// The account, or `*`.
    #[arg(long, default_value = "*")]
    account: String,
    /// The AWS partition.
    #[arg(long, default_value = "aws")]
    partition: String,
    /// A customer managed KMS key encrypting the agent configuration.
    #[arg(long)]
    kms_key_arn: Option<String>,
}

pub(super) fn run(args: &NodePolicyArgs) -> anyhow::Result<ExitCode> {
    let fleet = FleetId::new(&args.namespace, &args.fleet, &args.uid)
        .context("the fleet's namespace, name and uid")?;
    let policy = node_policy(&NodePolicyScope {
        fleet,
        partition: args.partition.clone(),
        region: args.region.clone(),
        account: args.account.clone(),
        kms_key_arn: args.kms_key_arn.clone(),
    });
    let text = serde_json::to_string_pretty(&policy)?;
    // A reader that closed the pipe (`| head`) is no error of ours.
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}
