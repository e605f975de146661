//! What a fleet may configure is one set of rules: every `BrowserFleetSpec`
//! that the CRD's schema, its CEL rules and `validate()` accept renders
//! (`operator::agent_config::render`) into an agent configuration that
//! `AgentConfig` accepts, so no fleet the cluster admits boots agents that
//! refuse their configuration and exit.

use std::cell::Cell;

use browserfleet::api::BrowserFleet;
use browserfleet::api::fleet::{BrowserFleetSpec, Platform, PortRange, WindowsAutoLogon};
use browserfleet::cloud::{QueueUrl, SecretValue};
use browserfleet::operator::agent_config::{FleetQueues, FleetSecrets, render};
use kube::CustomResourceExt;
use kube::core::cel::{CompiledSchema, Validator, compile_schema};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

/// The CRD's checks: schema, then CEL, then `validate()`.
struct Crd {
    schema: jsonschema::Validator,
    cel: CompiledSchema,
}

impl Crd {
    fn new() -> Self {
        let crd = BrowserFleet::crd();
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .clone()
                .and_then(|s| s.open_api_v3_schema)
                .expect("openAPIV3Schema"),
        )
        .unwrap();
        Self {
            schema: jsonschema::draft4::new(&schema).expect("schema compiles"),
            cel: compile_schema(&schema),
        }
    }

    /// Why the cluster or the operator would refuse `spec`, if it would.
    fn refusal(&self, spec: &BrowserFleetSpec) -> Option<String> {
        let object = serde_json::to_value(BrowserFleet::new("f", spec.clone())).unwrap();
        if let Some(error) = self.schema.iter_errors(&object).next() {
            return Some(format!("schema: {error}"));
        }
        if let Err(errors) = Validator::new().validate_compiled(&self.cel, &object, None) {
            return Some(format!("CEL: {:?}", errors.into_vec()));
        }
        spec.validate().err().map(|v| format!("validate(): {v}"))
    }
}

fn queues() -> FleetQueues {
    FleetQueues {
        requests: QueueUrl::new("https://sqs.eu-west-1.amazonaws.com/123456789012/bf-requests"),
        dead_letter: Some(QueueUrl::new(
            "https://sqs.eu-west-1.amazonaws.com/123456789012/bf-requests-dlq",
        )),
        events: QueueUrl::new("https://sqs.eu-west-1.amazonaws.com/123456789012/bf-events"),
    }
}

fn secrets() -> FleetSecrets {
    FleetSecrets {
        fleet_token: SecretValue::new("f".repeat(64)),
        callback_secret: SecretValue::new("c".repeat(64)),
        message_key: SecretValue::new("m".repeat(64)),
    }
}

fn minimal_spec() -> BrowserFleetSpec {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/fleet-minimal.yaml"
    ))
    .unwrap();
    let fleet: Value = serde_saphyr::from_str(&text).unwrap();
    serde_json::from_value(fleet["spec"].clone()).unwrap()
}

/// The agent's verdict on what the operator renders for `spec`.
fn agent_refusal(spec: &BrowserFleetSpec) -> Option<String> {
    match render("team", "fleet", spec, &queues(), &secrets()) {
        Ok(config) => config.validate().err().map(|e| e.to_string()),
        Err(error) => Some(format!("not rendered: {error}")),
    }
}

/// Switches as platform teams write them.
const SWITCHES: &[&str] = &[
    "--no-sandbox",
    "--lang=de-DE",
    "--window-size=1280,800",
    "--disable-web-security",
    "--proxy-server=http://p:3128",
    "--remote-allow-originsx",
    "--profile-directory-x",
    "--x=a b \"c\"",
];

/// And as they should not be: switches the agent sets, other spellings.
const BAD_SWITCHES: &[&str] = &[
    "--remote-allow-origins=*",
    "--remote-allow-origins",
    "--remote-debugging-port=9222",
    "--remote-debugging-address=0.0.0.0",
    "--user-data-dir=/tmp/p",
    "--profile-directory=Default",
    "--single-argument",
    "--Remote-Debugging-Port=1",
    "--No-Sandbox",
    "no-sandbox",
    "-x",
    "--",
    "--=x",
    "--a b",
    "--x=\u{0}",
    "--x=\n",
    "/remote-debugging-port=1",
];

/// Mostly what a platform team writes, sometimes what it must not: each
/// generated spec is near the edge of the rules, on either side.
fn mostly<T: std::fmt::Debug + Clone + 'static>(
    good: impl Strategy<Value = T> + 'static,
    bad: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    prop_oneof![12 => good, 1 => bad].boxed()
}

fn switches() -> impl Strategy<Value = Vec<String>> {
    let one = mostly(
        prop::sample::select(SWITCHES),
        prop::sample::select(BAD_SWITCHES),
    );
    prop::collection::vec(one.prop_map(str::to_owned), 0..3)
}

fn port() -> impl Strategy<Value = i32> {
    prop_oneof![
        Just(1023),
        1024..1034i32,
        9295..9310i32,
        Just(65535),
        Just(65536),
    ]
}

prop_compose! {
    fn spec()(
        (per, min, max, warm) in (
            mostly(1..9i32, 0..70i32),
            mostly(0..2i32, 0..9i32),
            mostly(2..6i32, 0..3i32),
            mostly(0..2i32, 0..9i32),
        ),
        (start, width, gateway) in (
            mostly(9300..9304i32, port()),
            // A range's edges: one port, exactly as many as sessions, one
            // short, reversed.
            mostly(0..12i32, prop_oneof![-3..0i32, Just(70_000)]),
            mostly(Just(9900), prop_oneof![port(), 9300..9320i32]),
        ),
        (visibility, drain) in (
            mostly(31..120i32, prop_oneof![0..40i32, Just(43200), Just(43201)]),
            mostly(0..86400i32, prop_oneof![Just(-1), Just(86401)]),
        ),
        (ttl, max_ttl, never_used, profile_age) in (
            mostly(1..1800i32, prop_oneof![-1..3i32, Just(604801)]),
            mostly(1800..14400i32, 0..3i32),
            mostly(10..300i32, 0..12i32),
            mostly(3600..604800i32, prop_oneof![Just(0), Just(3599)]),
        ),
        (extra, allowed, blocked) in (switches(), switches(), switches()),
        (executable, launcher) in (
            mostly(Just(None), prop_oneof![Just(Some(String::new())), Just(Some("/usr/bin/chromium".to_owned()))]),
            mostly(Just(None), prop_oneof![
                Just(Some(Vec::new())),
                Just(Some(vec![String::new()])),
                Just(Some(vec!["/opt/launch".to_owned(), "--flag".to_owned()])),
            ]),
        ),
        (linux, headless, logon, persistent) in (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
    ) -> BrowserFleetSpec {
        let mut spec = minimal_spec();
        spec.capacity.sessions_per_instance = per;
        spec.capacity.min_instances = min;
        spec.capacity.max_instances = max;
        spec.capacity.warm_instances = warm;
        spec.agent.browser_port_range = PortRange { start, end: start.saturating_add(width) };
        spec.agent.gateway_port = gateway;
        spec.queue.visibility_timeout_seconds = visibility;
        spec.scaling.drain_timeout_seconds = drain;
        spec.agent.sessions.default_ttl_seconds = ttl;
        spec.agent.sessions.max_ttl_seconds = max_ttl;
        spec.agent.sessions.never_used_timeout_seconds = never_used;
        spec.agent.profiles.max_age_seconds = profile_age;
        spec.agent.profiles.allow_persistent = persistent;
        spec.agent.browser.extra_args = extra;
        spec.agent.browser.allowed_args = allowed;
        spec.agent.browser.blocked_args = blocked;
        spec.agent.browser.executable = executable;
        spec.agent.browser.launcher_command = launcher;
        spec.agent.browser.headless = headless;
        spec.instance.platform = if linux { Platform::Linux } else { Platform::Windows };
        spec.agent.windows_auto_logon = logon.then(|| WindowsAutoLogon {
            user_name: "browser".into(),
            password_parameter: "/browserfleet/autologon".into(),
        });
        spec
    }
}

#[test]
fn every_spec_the_crd_accepts_renders_a_configuration_the_agent_accepts() {
    let crd = Crd::new();
    let accepted = Cell::new(0u32);
    let refused = Cell::new(0u32);
    let mut runner = TestRunner::new(Config {
        cases: 4000,
        ..Config::default()
    });
    runner
        .run(&spec(), |spec| {
            if crd.refusal(&spec).is_some() {
                refused.set(refused.get() + 1);
                return Ok(());
            }
            accepted.set(accepted.get() + 1);
            let agent = agent_refusal(&spec);
            prop_assert!(
                agent.is_none(),
                "the CRD accepts a fleet whose agents refuse their configuration: {:?}\n{:#?}",
                agent,
                spec.agent
            );
            Ok(())
        })
        .unwrap();
    // The generator must reach both sides of the rules for the property to
    // say anything.
    assert!(
        accepted.get() >= 200 && refused.get() >= 200,
        "accepted {}, refused {}",
        accepted.get(),
        refused.get()
    );
}

#[test]
fn the_mismatches_once_found_are_gone() {
    let crd = Crd::new();
    // A fleet argument the agent sets itself: refused by the CRD now.
    let mut spec = minimal_spec();
    spec.agent.browser.extra_args = vec!["--remote-allow-origins=*".into()];
    let refusal = crd.refusal(&spec).expect("refused");
    assert!(refusal.contains("extraArgs cannot set"), "{refusal}");
    assert!(agent_refusal(&spec).is_some());
    // A one-port range for a fleet of one session per instance: accepted by
    // both.
    let mut spec = minimal_spec();
    spec.capacity.sessions_per_instance = 1;
    spec.agent.browser_port_range = PortRange {
        start: 9300,
        end: 9300,
    };
    assert_eq!(crd.refusal(&spec), None);
    assert_eq!(agent_refusal(&spec), None);
    // A visibility timeout shorter than a browser's start: refused by both.
    let mut spec = minimal_spec();
    spec.queue.visibility_timeout_seconds = 10;
    assert!(crd.refusal(&spec).is_some());
    assert!(agent_refusal(&spec).is_some());
}
