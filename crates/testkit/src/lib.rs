//! The test kit: the worlds the tests and benchmarks build (a moto server
//! and AWS clients pointed at it, the development cluster, agents, nodes and
//! operators in this process), the waits, process and `/proc` readers, the
//! RBAC evaluator and the tools in `.venv/` they run.

pub mod agent_world;
pub mod artifact;
pub mod bench;
pub mod cluster;
pub mod fault_proxy;
pub mod http;
pub mod http_proxy;
pub mod launch_world;
pub mod moto;
pub mod node_world;
pub mod operator_world;
pub mod rbac;
pub mod tools;

use std::time::Duration;

use browserfleet::cloud::{Aws, AwsSettings, FleetId, RetryMode};

/// Settings for tests: quick backoff so retries do not slow the suite.
pub fn fast_settings() -> AwsSettings {
    AwsSettings {
        region: None,
        retry_mode: RetryMode::Standard,
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        operation_timeout: Duration::from_secs(60),
        attempt_timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(5),
    }
}

/// AWS configuration pointed at this binary's moto.
pub async fn aws() -> Aws {
    aws_with(fast_settings()).await
}

/// AWS configuration pointed at this binary's moto, with these settings.
pub async fn aws_with(settings: AwsSettings) -> Aws {
    let moto = moto::moto();
    moto::use_endpoint(&moto.endpoint);
    load(settings).await
}

/// AWS configuration from the environment as it is (the caller has pointed it
/// at moto or at the fault proxy).
pub async fn load(settings: AwsSettings) -> Aws {
    match Aws::load(settings).await {
        Ok(aws) => aws,
        Err(e) => panic!("loading AWS config: {e}"),
    }
}

/// A fleet of its own for one test, so tests never see each other's resources.
pub fn unique_fleet(name: &str) -> FleetId {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let uid = format!(
        "{:08x}-{n:04x}-4000-8000-{:012x}",
        std::process::id(),
        nanos % (1 << 48)
    );
    match FleetId::new("tests", name, uid) {
        Ok(fleet) => fleet,
        Err(e) => panic!("fleet id: {e}"),
    }
}
