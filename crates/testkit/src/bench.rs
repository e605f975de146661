//! What the operator and session benchmarks share: the cluster they run
//! against (the development API server in this process with our CRDs, and
//! in moto an AMI, two default subnets and a security group), an operator
//! in this process, and the readers of `/proc` and `/metrics` their tables
//! are made of.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use browserfleet::cloud::{Aws, AwsSettings, CallStats};
use browserfleet::operator::context::Settings;
use browserfleet::operator::metrics::Metrics;
use browserfleet::operator::run::{OperatorOptions, RunError, Running, run};
use devcluster::apiserver::DevApiServer;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, PostParams};

/// The development API server with our CRDs served, and what a fleet
/// launches into in moto.
pub struct Cluster {
    _server: DevApiServer,
    pub kubeconfig: String,
    pub client: Client,
    /// The benchmark's own AWS clients; each operator gets its own, so that
    /// its call recorder counts only the operator's calls.
    pub aws: Aws,
    pub image_id: String,
    pub subnets: Vec<String>,
    pub security_group: String,
}

impl Cluster {
    /// Starts the server and finds or makes the launch targets; `bench`
    /// names the security group (`browserfleet-{bench}-bench`).
    pub async fn start(bench: &str) -> anyhow::Result<Cluster> {
        let server = DevApiServer::start().await?;
        let client = server.client.clone();
        crate::cluster::install_crds(&client).await?;
        let aws = Aws::load(AwsSettings::default()).await?;
        let ec2 = aws_sdk_ec2::Client::new(aws.sdk_config());
        let (image_id, subnets) = crate::launch_world::moto_image_and_subnets(&ec2).await?;
        let image_id = image_id.as_str().to_owned();
        let group = ec2
            .create_security_group()
            .group_name(format!("browserfleet-{bench}-bench"))
            .description(format!("browserfleet {bench} benchmark"))
            .send()
            .await?;
        Ok(Cluster {
            kubeconfig: server.kubeconfig(),
            _server: server,
            client,
            aws,
            image_id,
            subnets,
            security_group: group.group_id().context("group id")?.to_owned(),
        })
    }

    pub async fn create_namespace(&self, name: &str) -> anyhow::Result<()> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let mut namespace = Namespace::default();
        namespace.metadata.name = Some(name.to_owned());
        namespaces
            .create(&PostParams::default(), &namespace)
            .await?;
        Ok(())
    }
}

/// An operator running in this process, with AWS clients of its own.
pub struct InProcess {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), RunError>>,
    pub metrics: Arc<Metrics>,
    pub aws: Aws,
    pub started: Instant,
}

impl InProcess {
    /// Runs the operator on `namespace`, without leader election, a
    /// listener or the orphan sweep (so only reconciles call AWS).
    pub async fn start(
        client: &Client,
        namespace: &str,
        settings: Settings,
    ) -> anyhow::Result<Self> {
        let aws = Aws::load(AwsSettings::default()).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<Running>();
        let options = OperatorOptions {
            namespace: Some(namespace.to_owned()),
            settings,
            listen: None,
            leader_election: None,
            cluster: None,
        };
        let started = Instant::now();
        let task = tokio::spawn(run(
            client.clone(),
            aws.clone(),
            options,
            async move {
                let _ = stopped.await;
            },
            Some(started_tx),
        ));
        let running = started_rx.await.context("operator did not start")?;
        Ok(InProcess {
            stop,
            task,
            metrics: running.metrics,
            aws,
            started,
        })
    }

    pub fn reconciles(&self) -> f64 {
        reconciles_in(&self.metrics.render())
    }

    /// The operator's `SendMessage` calls so far.
    pub fn sends(&self) -> CallStats {
        let mut total = CallStats::default();
        for (key, stats) in self.aws.recorder().snapshot() {
            if key.operation == "SendMessage" {
                total.count += stats.count;
                total.total_latency += stats.total_latency;
            }
        }
        total
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

/// Waits until `check` holds, polling every 200 ms, for at most `deadline`.
pub async fn until<F, Fut>(what: &str, deadline: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        if started.elapsed() > deadline {
            bail!("{what}: not within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// `/proc/loadavg`'s three load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// The sum of a metric's samples whose labels contain every `labels` pair
/// (OpenMetrics text); no pairs: whatever their labels.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Fleet reconciles finished, successful or not, in an operator's
/// `/metrics` text.
pub fn reconciles_in(metrics: &str) -> f64 {
    metric_sum(metrics, "browserfleet_operator_reconciles_total", &[])
}

/// The `/metrics` text of the process serving at `address`.
pub async fn scrape(address: &str) -> anyhow::Result<String> {
    use http_body_util::{BodyExt, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let uri: hyper::Uri = format!("http://{address}/metrics").parse()?;
    let response = tokio::time::timeout(Duration::from_secs(10), client.get(uri)).await??;
    let body = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await??
        .to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// User plus system CPU ticks of process `pid`.
pub fn proc_stat_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("stat")?
        .1
        .split_whitespace()
        .collect();
    // utime and stime: fields 14 and 15 of stat, 12 and 13 after the name.
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

/// A kB field (`VmRSS:`, `VmHWM:`) of `/proc/{pid}/status`.
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    kib_field(&status, field)
}

/// A kB field (`MemAvailable:`) of `/proc/meminfo`.
pub fn meminfo_kib(field: &str) -> anyhow::Result<u64> {
    kib_field(&std::fs::read_to_string("/proc/meminfo")?, field)
}

fn kib_field(text: &str, field: &str) -> anyhow::Result<u64> {
    let line = text
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| field.to_owned())?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}
