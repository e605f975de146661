//! `docs/operations.md` lists every metric the operator and the agent
//! export, with their labels, and the Grafana dashboard in
//! `config/grafana/` queries no metric that does not exist. The metrics are
//! the real registries, rendered after one sample of each labelled family.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use browserfleet::agent::metrics::AgentMetrics;
use browserfleet::cloud::{CallRecorder, Outcome, Service};
use browserfleet::operator::metrics::Metrics;
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The OpenMetrics text of both processes, every family with a sample.
fn rendered() -> String {
    let calls = Arc::new(CallRecorder::new());
    calls.record(
        Service::Sqs,
        "ReceiveMessage",
        Outcome::Success,
        Duration::from_millis(2),
    );
    let operator = Metrics::new(calls.clone());
    operator.reconciled(0.2, Some("AwsThrottled"));
    operator.fleet("team/web", 2, 2, 1, 3, 4);
    operator.event_refused("unsigned");
    let agent = AgentMetrics::with_aws_calls(Some(calls));
    agent.failed("failedToStart");
    agent.terminated("expired");
    agent.set_usage(1, 2, 3, 1);
    agent.launch_seconds.observe(0.4);
    agent.cdp_refused.count("Page.navigate");
    format!("{}{}", operator.render(), agent.render())
}

/// Family name → label names of its samples (`le` aside), from the text.
fn families(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut families: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_whitespace().next().expect("a name");
            families.entry(name.to_owned()).or_default();
        }
    }
    let sample = regex::Regex::new(r"^([a-z_]+)\{([^}]*)\}").expect("regex");
    for line in text.lines() {
        let Some(found) = sample.captures(line) else {
            continue;
        };
        let family = families
            .keys()
            .filter(|f| found[1].starts_with(f.as_str()))
            .max_by_key(|f| f.len())
            .cloned()
            .expect("a sample of a declared family");
        let labels = families.get_mut(&family).expect("family");
        for pair in found[2].split(',') {
            let key = pair.split('=').next().expect("key");
            if key != "le" {
                labels.insert(key.to_owned());
            }
        }
    }
    families
}

/// Metric name → label names, from the tables of `docs/operations.md`.
fn documented() -> BTreeMap<String, Option<BTreeSet<String>>> {
    let text = std::fs::read_to_string(root().join("docs/operations.md")).expect("docs");
    let names = regex::Regex::new(r"`(browserfleet_[a-z_]+)`").expect("regex");
    let backticked = regex::Regex::new(r"`([a-z_]+)`").expect("regex");
    let values = regex::Regex::new(r"\([^)]*\)").expect("regex");
    let mut metrics = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("| `browserfleet_")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | metric(s) | type | labels | meaning |
        let labels_cell = cells[3];
        let labels = if labels_cell.starts_with("as ") {
            None
        } else {
            let names_only = values.replace_all(labels_cell, "");
            Some(
                backticked
                    .captures_iter(&names_only)
                    .map(|c| c[1].to_owned())
                    .collect(),
            )
        };
        for found in names.captures_iter(cells[1]) {
            let name = found[1].to_owned();
            let family = name.strip_suffix("_total").unwrap_or(&name).to_owned();
            metrics.insert(family, labels.clone());
        }
    }
    metrics
}

#[test]
fn every_metric_is_documented_with_its_labels_and_nothing_else_is() {
    let families = families(&rendered());
    let documented = documented();
    let exported: BTreeSet<&String> = families.keys().collect();
    let listed: BTreeSet<&String> = documented.keys().collect();
    assert_eq!(
        exported, listed,
        "docs/operations.md lists other metrics than the code exports"
    );
    for (name, labels) in &documented {
        if let Some(labels) = labels {
            assert_eq!(&families[name], labels, "labels of {name}");
        }
    }
}

#[test]
fn the_dashboard_queries_only_metrics_that_exist() {
    let text = rendered();
    let samples: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let path = root().join("config/grafana/browserfleet-dashboard.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("JSON");
    let mut expressions = Vec::new();
    fn collect(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    match (key.as_str(), child) {
                        ("expr", Value::String(expr)) => found.push(expr.clone()),
                        ("definition", Value::String(expr)) => found.push(expr.clone()),
                        _ => collect(child, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| collect(i, found)),
            _ => {}
        }
    }
    collect(&dashboard, &mut expressions);
    assert!(expressions.len() > 10, "{expressions:?}");
    let metric = regex::Regex::new(r"browserfleet_[a-z_]+").expect("regex");
    let mut used = BTreeSet::new();
    for expr in &expressions {
        for found in metric.find_iter(expr) {
            assert!(
                samples.contains(found.as_str()),
                "the dashboard queries {} ({expr}), which nothing exports",
                found.as_str()
            );
            used.insert(found.as_str().to_owned());
        }
    }
    // Every family is on the dashboard.
    for family in families(&text).keys() {
        assert!(
            used.iter().any(|u| u.starts_with(family.as_str())),
            "{family} is on no panel"
        );
    }
}
