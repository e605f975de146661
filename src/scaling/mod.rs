//! Fleet sizing: the policy the operator runs ([`policy`]), and a simulator
//! that replays request traces ([`trace`]) against it and against the
//! policies users would otherwise pick ([`baselines`]).

pub mod baselines;
pub mod policy;
pub mod simulator;
pub mod trace;

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::api::fleet::{CapacitySpec, ScalingSpec};

use self::policy::{Decision, Observation, PolicyConfig, PolicyMemory};
use self::simulator::{Autoscaler, BootDistribution, RunReport};
use self::trace::Trace;

/// How often the operator reconciles a fleet, and so runs the policy.
pub const OPERATOR_CADENCE: Duration = Duration::from_secs(10);

/// The policies the simulator knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyName {
    /// browserfleet's policy ([`policy::decide`]).
    Browserfleet,
    /// KEDA's SQS scaler feeding a HorizontalPodAutoscaler.
    Keda,
    /// EC2 Auto Scaling target tracking on backlog per instance.
    TargetTracking,
    /// A fixed fleet sized for the trace's peak.
    Static,
}

impl PolicyName {
    /// Every policy, ours first.
    pub const ALL: [PolicyName; 4] = [
        PolicyName::Browserfleet,
        PolicyName::Keda,
        PolicyName::TargetTracking,
        PolicyName::Static,
    ];

    /// Name as given on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyName::Browserfleet => "browserfleet",
            PolicyName::Keda => "keda",
            PolicyName::TargetTracking => "target-tracking",
            PolicyName::Static => "static",
        }
    }

    fn build(self, fleet: &PolicyConfig, trace: &Trace) -> Box<dyn Autoscaler> {
        match self {
            PolicyName::Browserfleet => Box::new(BrowserfleetAutoscaler {
                config: fleet.clone(),
                memory: PolicyMemory::default(),
            }),
            PolicyName::Keda => Box::new(baselines::KedaHpa::new(fleet)),
            PolicyName::TargetTracking => Box::new(baselines::TargetTracking::new(fleet)),
            PolicyName::Static => {
                Box::new(baselines::StaticPeak::new(fleet, trace.peak_concurrency()))
            }
        }
    }
}

/// browserfleet's policy on the operator's cadence.
struct BrowserfleetAutoscaler {
    config: PolicyConfig,
    memory: PolicyMemory,
}

impl Autoscaler for BrowserfleetAutoscaler {
    fn cadence(&self) -> Duration {
        OPERATOR_CADENCE
    }

    fn tick(&mut self, observation: &Observation) -> Decision {
        let (decision, memory) = policy::decide(&self.config, observation, &self.memory);
        self.memory = memory;
        decision
    }
}

/// The fleet every policy is compared on: up to 100 instances of 4 sessions,
/// scaling to zero, with the CRD's default scaling settings.
pub fn report_fleet() -> PolicyConfig {
    let capacity = CapacitySpec {
        min_instances: 0,
        max_instances: 100,
        sessions_per_instance: 4,
        warm_instances: 0,
    };
    PolicyConfig::from_parts(&capacity, &ScalingSpec::default(), false)
}

/// One policy on one trace.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    /// Trace name.
    pub trace: String,
    pub policy: PolicyName,
    /// Its results.
    #[serde(flatten)]
    pub report: RunReport,
}

/// Replays `trace` against `policy` on `fleet`.
pub fn simulate(
    trace: &Trace,
    policy: PolicyName,
    fleet: &PolicyConfig,
    boot: BootDistribution,
    seed: u64,
) -> RunReport {
    let mut autoscaler = policy.build(fleet, trace);
    simulator::run(trace, fleet, autoscaler.as_mut(), boot, seed)
}

/// Renders results as an aligned text table (`markdown` = a Markdown table).
pub fn render_table(rows: &[Comparison], markdown: bool) -> String {
    let header = [
        "trace",
        "policy",
        "requests",
        "p50 s",
        "p95 s",
        "p99 s",
        "max s",
        ">60s %",
        "peak queue",
        "inst-h",
        "launches",
        "terminations",
    ];
    let cells: Vec<[String; 12]> = rows
        .iter()
        .map(|c| {
            let r = &c.report;
            [
                c.trace.clone(),
                c.policy.as_str().to_owned(),
                r.requests.to_string(),
                format!("{:.1}", r.wait_p50_s),
                format!("{:.1}", r.wait_p95_s),
                format!("{:.1}", r.wait_p99_s),
                format!("{:.1}", r.wait_max_s),
                format!("{:.2}", r.waited_over_60s * 100.0),
                r.peak_queue.to_string(),
                format!("{:.1}", r.instance_hours),
                r.launches.to_string(),
                r.terminations.to_string(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cols: Vec<&str>| -> String {
        let padded: Vec<String> = cols
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i < 2 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        if markdown {
            format!("| {} |\n", padded.join(" | "))
        } else {
            format!("{}\n", padded.join("  ").trim_end())
        }
    };
    let mut out = line(header.to_vec());
    if markdown {
        let rule: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i < 2 {
                    "-".repeat(*w)
                } else {
                    format!("{}:", "-".repeat(w - 1))
                }
            })
            .collect();
        let _ = writeln!(out, "| {} |", rule.join(" | "));
    }
    for row in &cells {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// For every trace run with browserfleet and both autoscaling baselines: how
/// browserfleet's p95 wait and instance-hours compare, and whether it meets
/// the bar of the scaling issue (p95 no worse and instance-hours no more than
/// either baseline).
pub fn render_verdicts(rows: &[Comparison]) -> String {
    let find = |trace: &str, policy: PolicyName| {
        rows.iter()
            .find(|c| c.trace == trace && c.policy == policy)
            .map(|c| &c.report)
    };
    let change = |ours: f64, theirs: f64| {
        if theirs == 0.0 {
            if ours == 0.0 {
                "±0%".to_owned()
            } else {
                "+∞".to_owned()
            }
        } else {
            format!("{:+.1}%", (ours - theirs) / theirs * 100.0)
        }
    };
    let mut out = String::from(
        "| trace | p95 vs keda | inst-h vs keda | p95 vs target-tracking | inst-h vs target-tracking | meets the bar |\n|---|---:|---:|---:|---:|---|\n",
    );
    let mut traces: Vec<&str> = rows.iter().map(|c| c.trace.as_str()).collect();
    traces.dedup();
    for trace in traces {
        let (Some(ours), Some(keda), Some(tt)) = (
            find(trace, PolicyName::Browserfleet),
            find(trace, PolicyName::Keda),
            find(trace, PolicyName::TargetTracking),
        ) else {
            continue;
        };
        let meets = ours.wait_p95_s <= keda.wait_p95_s
            && ours.wait_p95_s <= tt.wait_p95_s
            && ours.instance_hours <= keda.instance_hours
            && ours.instance_hours <= tt.instance_hours;
        let _ = writeln!(
            out,
            "| {trace} | {} | {} | {} | {} | {} |",
            change(ours.wait_p95_s, keda.wait_p95_s),
            change(ours.instance_hours, keda.instance_hours),
            change(ours.wait_p95_s, tt.wait_p95_s),
            change(ours.instance_hours, tt.instance_hours),
            if meets { "yes" } else { "no" }
        );
    }
    out
}
