//! The simulator replays the checked-in traces deterministically, and the
//! claims docs/scaling.md makes about browserfleet's policy hold.

use std::path::PathBuf;

use browserfleet::scaling::{
    self, Comparison, PolicyName, report_fleet, simulator::BootDistribution, trace::Trace,
};

const REPORT_SEEDS: [u64; 2] = [42, 7];
const TRACES: [&str; 5] = [
    "bursty",
    "diurnal",
    "long-sessions",
    "spike-then-silence",
    "steady",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load(name: &str) -> Trace {
    let path = root().join("benches/traces").join(format!("{name}.csv"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Trace::parse(&text).expect("checked-in trace parses")
}

fn run_all(seed: u64) -> Vec<Comparison> {
    let fleet = report_fleet();
    let mut rows = Vec::new();
    for name in TRACES {
        let trace = load(name);
        for policy in PolicyName::ALL {
            let report =
                scaling::simulate(&trace, policy, &fleet, BootDistribution::default(), seed);
            rows.push(Comparison {
                trace: name.to_owned(),
                policy,
                report,
            });
        }
    }
    rows
}

fn find<'a>(
    rows: &'a [Comparison],
    trace: &str,
    policy: PolicyName,
) -> &'a scaling::simulator::RunReport {
    &rows
        .iter()
        .find(|c| c.trace == trace && c.policy == policy)
        .expect("row")
        .report
}

#[test]
fn same_seed_gives_the_same_report() {
    let trace = load("bursty");
    let fleet = report_fleet();
    for policy in PolicyName::ALL {
        let a = scaling::simulate(&trace, policy, &fleet, BootDistribution::default(), 42);
        let b = scaling::simulate(&trace, policy, &fleet, BootDistribution::default(), 42);
        assert_eq!(a, b, "{policy:?}");
    }
    let other = scaling::simulate(
        &trace,
        PolicyName::Browserfleet,
        &fleet,
        BootDistribution::default(),
        43,
    );
    let first = scaling::simulate(
        &trace,
        PolicyName::Browserfleet,
        &fleet,
        BootDistribution::default(),
        42,
    );
    assert_ne!(first, other, "the seed drives the boot delays");
}

#[test]
fn every_request_is_served_by_every_policy() {
    for row in run_all(42) {
        assert_eq!(
            row.report.served, row.report.requests,
            "{} {:?}",
            row.trace, row.policy
        );
    }
}

#[test]
fn a_static_fleet_sized_for_the_peak_never_queues() {
    for row in run_all(42)
        .iter()
        .filter(|c| c.policy == PolicyName::Static)
    {
        assert_eq!(row.report.wait_max_s, 0.0, "{}", row.trace);
    }
}

#[test]
fn browserfleet_is_strictly_better_on_the_bursty_trace() {
    for seed in REPORT_SEEDS {
        let rows = run_all(seed);
        let ours = find(&rows, "bursty", PolicyName::Browserfleet);
        for baseline in [PolicyName::Keda, PolicyName::TargetTracking] {
            let theirs = find(&rows, "bursty", baseline);
            assert!(
                ours.wait_p95_s < theirs.wait_p95_s,
                "seed {seed}: p95 vs {baseline:?}"
            );
            assert!(
                ours.instance_hours <= theirs.instance_hours,
                "seed {seed}: hours vs {baseline:?}"
            );
        }
    }
}

#[test]
fn scaling_report_is_up_to_date() {
    // docs/scaling.md holds the output of `make scaling-report`; regenerate it
    // when the policy, the simulator or the traces change.
    let doc = std::fs::read_to_string(root().join("docs/scaling.md")).expect("docs/scaling.md");
    for seed in REPORT_SEEDS {
        let rows = run_all(seed);
        let tables = format!(
            "{}\n{}",
            scaling::render_table(&rows, true),
            scaling::render_verdicts(&rows)
        );
        assert!(
            doc.contains(&tables),
            "docs/scaling.md is stale for seed {seed}; run `make scaling-report`"
        );
    }
}
