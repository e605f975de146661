//! `browserfleet simulate` and `browserfleet trace`: the scaling simulator
//! and the request traces it replays.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::scaling::{self, PolicyName, simulator::BootDistribution, trace};

#[derive(clap::Args, Debug)]
pub(super) struct SimulateArgs {
    /// Trace files (CSV: arrival_seconds,duration_seconds), e.g.
    /// benches/traces/bursty.csv.
    #[arg(long = "trace", required = true)]
    traces: Vec<PathBuf>,
    /// Policies to run; all of them when omitted.
    #[arg(long = "policy", value_enum)]
    policies: Vec<PolicyName>,
    /// Instance boot delay: fixed:SECONDS, uniform:LOW-HIGH or normal:MEAN,SD.
    #[arg(long, default_value_t = BootDistribution::default())]
    boot_seconds: BootDistribution,
    /// Seed for the boot delays.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    format: OutputFormat,
}

#[derive(clap::Args, Debug)]
pub(super) struct TraceArgs {
    /// Workload shape.
    #[arg(long, value_enum)]
    shape: trace::TraceShape,
    /// Seed; the shape's checked-in seed when omitted.
    #[arg(long)]
    seed: Option<u64>,
    /// File to write; standard output when omitted.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// How `simulate` prints its results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum OutputFormat {
    /// Aligned columns.
    Table,
    /// One JSON array of results.
    Json,
    /// A Markdown table, as in docs/scaling.md.
    Markdown,
}

pub(super) fn run(args: &SimulateArgs) -> anyhow::Result<ExitCode> {
    let policies = if args.policies.is_empty() {
        &PolicyName::ALL[..]
    } else {
        &args.policies[..]
    };
    let fleet = scaling::report_fleet();
    let mut rows = Vec::new();
    for path in &args.traces {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let trace =
            trace::Trace::parse(&text).with_context(|| format!("parsing {}", path.display()))?;
        let name = path.file_stem().map_or_else(
            || path.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        for &policy in policies {
            let started = std::time::Instant::now();
            let report = scaling::simulate(&trace, policy, &fleet, args.boot_seconds, args.seed);
            // Wall time goes to stderr: the report itself stays deterministic.
            eprintln!(
                "simulated {name} with {} in {:.3} s ({} requests)",
                policy.as_str(),
                started.elapsed().as_secs_f64(),
                report.requests
            );
            rows.push(scaling::Comparison {
                trace: name.clone(),
                policy,
                report,
            });
        }
    }
    match args.format {
        OutputFormat::Table => print!("{}", scaling::render_table(&rows, false)),
        OutputFormat::Markdown => {
            print!("{}", scaling::render_table(&rows, true));
            println!();
            print!("{}", scaling::render_verdicts(&rows));
        }
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn write_trace(args: &TraceArgs) -> anyhow::Result<ExitCode> {
    let shape = args.shape;
    let seed = args.seed.unwrap_or(shape.default_seed());
    let generated = trace::generate(shape, seed);
    let csv = generated.to_csv(&format!(
        "browserfleet trace v1 shape={} seed={seed}",
        shape.name()
    ));
    match &args.out {
        Some(path) => {
            std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{csv}"),
    }
    Ok(ExitCode::SUCCESS)
}
