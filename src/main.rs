//! The `browserfleet` command: one binary, one subcommand per role.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use browserfleet::api;
use browserfleet::scaling::{self, PolicyName, simulator::BootDistribution, trace};

/// browserfleet runs fleets of browsers on EC2 instances for Chrome DevTools
/// Protocol clients, described by BrowserFleet and BrowserSession resources.
#[derive(Parser, Debug)]
#[command(
    name = "browserfleet",
    version,
    about,
    long_about,
    after_help = "Examples:\n  browserfleet crdgen                 write crds/*.yaml\n  browserfleet crdgen --check         fail if crds/ is stale\n  kubectl apply -f crds/              install the CRDs in a cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write the CustomResourceDefinitions generated from the Rust types.
    ///
    /// Writes one YAML file per resource (browserfleets.browserfleet.io.yaml,
    /// browsersessions.browserfleet.io.yaml) into the output directory. With
    /// --check nothing is written; the command fails when a file differs.
    Crdgen {
        /// Directory the CRD files are written to.
        #[arg(long, default_value = "crds")]
        out_dir: PathBuf,
        /// Compare instead of writing; exit with status 1 when a file is
        /// missing or differs.
        #[arg(long)]
        check: bool,
    },
    /// Replay request traces against scaling policies and report queue waits
    /// and instance-hours.
    ///
    /// Every trace is run against every policy named (all when none is), on
    /// the fleet of docs/scaling.md (0 to 100 instances, 4 sessions each).
    /// The same seed gives the same report.
    Simulate {
        /// Trace files (CSV: arrival_seconds,duration_seconds), e.g.
        /// benches/traces/bursty.csv.
        #[arg(long = "trace", required = true)]
        traces: Vec<PathBuf>,
        /// Policies to run; all of them when omitted.
        #[arg(long = "policy", value_enum)]
        policies: Vec<PolicyName>,
        /// Instance boot delay: fixed:SECONDS, uniform:LOW-HIGH or
        /// normal:MEAN,SD.
        #[arg(long, default_value_t = BootDistribution::default())]
        boot_seconds: BootDistribution,
        /// Seed for the boot delays.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Run the node agent: take session requests off the fleet's queue, start
    /// and guard one browser per session, serve the control API and the
    /// authenticated DevTools gateway.
    ///
    /// Identity (instance id, address to advertise) comes from the EC2
    /// instance metadata service (IMDSv2) unless both --instance-id and
    /// --advertise-address are given. Stops on SIGTERM or Ctrl-C (browsers
    /// keep running for the next agent to re-adopt), or after a drain.
    Agent {
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
        /// Port of the listener, instead of the configuration's gatewayPort;
        /// 0 picks a free port.
        #[arg(long, value_name = "PORT")]
        gateway_port: Option<u16>,
        /// DevTools ports of the browsers, instead of the configuration's
        /// browserPortRange.
        #[arg(long, value_name = "START-END", value_parser = browserfleet::agent::config::parse_port_range)]
        browser_ports: Option<browserfleet::api::fleet::PortRange>,
        /// Directory of the session table and profiles, instead of the
        /// configuration's stateDir.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Log as JSON lines (production) instead of human-readable text.
        #[arg(long)]
        json_logs: bool,
    },
    /// Run the operator: reconcile BrowserFleets into queues, agent
    /// configuration and EC2 instances, sized from their request queues, and
    /// BrowserSessions into one browser each on their fleet.
    ///
    /// Uses the kubeconfig (or in-cluster config) and the AWS SDK's usual
    /// configuration (AWS_REGION, AWS_ENDPOINT_URL, credentials). Serves
    /// /healthz, /readyz and /metrics on --listen. Stops gracefully on SIGTERM
    /// or Ctrl-C: reconciles in flight get 20 s to finish.
    Operator(OperatorArgs),
    /// Development tools that stand in for a cluster.
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
    /// Generate a request trace of a given shape from a fixed seed.
    Trace {
        /// Workload shape.
        #[arg(long, value_enum)]
        shape: trace::TraceShape,
        /// Seed; the shape's checked-in seed when omitted.
        #[arg(long)]
        seed: Option<u64>,
        /// File to write; standard output when omitted.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum DevCommand {
    /// Serve a Kubernetes-compatible API in memory, for local runs and tests.
    ///
    /// Prints `listening on URL` once ready, writes a kubeconfig for kubectl
    /// and kube-rs, and serves until SIGTERM or Ctrl-C. State is lost on exit.
    Apiserver {
        /// Address to listen on; port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Where to write the kubeconfig.
        #[arg(long)]
        kubeconfig: PathBuf,
    },
    /// Play the nodes of the instances moto (or EC2) reports running: start
    /// a real agent for each after the boot delay, advertising a loopback
    /// address, and stop it and its browsers when the instance stops or
    /// terminates.
    ///
    /// AWS endpoint, region and credentials come from the environment
    /// (AWS_ENDPOINT_URL, AWS_REGION, ...) and are passed on to the agents.
    /// Runs until SIGTERM or Ctrl-C, then stops every agent and browser.
    #[cfg(unix)]
    Nodes {
        /// Time from an instance's launch to its agent's start (2s, 500ms,
        /// 1m).
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        boot_delay: std::time::Duration,
        /// Where agents keep their state (<dir>/<instance id>) and logs
        /// (<dir>/<instance id>.log).
        #[arg(long, value_name = "DIR")]
        work_dir: PathBuf,
        /// A fleet whose instances never register (no agent is started); may
        /// be repeated.
        #[arg(long = "never-register", value_name = "NAMESPACE/NAME", value_parser = parse_fleet_key)]
        never_register: Vec<String>,
        /// Play only the instances of this fleet; may be repeated (every
        /// fleet's when omitted).
        #[arg(long = "fleet", value_name = "NAMESPACE/NAME", value_parser = parse_fleet_key)]
        fleets: Vec<String>,
        /// How often instances are listed.
        #[arg(long, default_value = "500ms", value_parser = parse_duration)]
        poll_interval: std::time::Duration,
        /// Ports the browsers of all nodes share, in disjoint blocks.
        #[arg(long, value_name = "START-END", default_value = "40000-44999", value_parser = browserfleet::agent::config::parse_port_range)]
        browser_ports: browserfleet::api::fleet::PortRange,
        /// Browser ports per node: at least the fleet's sessionsPerInstance.
        #[arg(long, default_value_t = 16)]
        ports_per_node: u16,
        /// The browserfleet binary the agents run; this one when omitted.
        #[arg(long, value_name = "PATH")]
        agent_binary: Option<PathBuf>,
        /// Log as JSON lines instead of human-readable text.
        #[arg(long)]
        json_logs: bool,
    },
}

/// `browserfleet operator`.
#[derive(clap::Args, Debug)]
struct OperatorArgs {
    /// Reconcile only the fleets of this namespace (all namespaces when
    /// omitted).
    #[arg(long)]
    namespace: Option<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: std::net::SocketAddr,
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
    lease_duration: std::time::Duration,
    /// Every fleet is reconciled at least this often.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    resync: std::time::Duration,
    /// How often each fleet's request queue depth is polled between
    /// reconciles (a burst is acted on within about this time).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    queue_poll: std::time::Duration,
    /// Long-poll wait on each fleet's events queue (at most 20s).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    events_wait: std::time::Duration,
    /// A registered agent silent this long is replaced.
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    unresponsive_after: std::time::Duration,
    /// First launch back-off after an instance did not register.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    backoff_base: std::time::Duration,
    /// Longest launch back-off.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    backoff_cap: std::time::Duration,
    /// Fleets reconciled at once.
    #[arg(long, default_value_t = 8)]
    concurrency: u16,
    /// This cluster's name, tagged on every instance it launches
    /// (`browserfleet.io/cluster`). The orphan sweep runs only with it and
    /// terminates only instances tagged with it, so clusters sharing an AWS
    /// account never sweep each other's instances.
    #[arg(long, env = "BROWSERFLEET_CLUSTER_NAME")]
    cluster_name: Option<String>,
    /// The AWS SDK's retry strategy: `standard`, or `adaptive` (which also
    /// slows down after throttling, for accounts shared with busy tools).
    #[arg(long, value_enum, default_value = "standard")]
    aws_retry_mode: AwsRetryMode,
    /// Attempts per AWS call, the first included (1 disables retries).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    aws_max_attempts: u32,
    /// Log as JSON lines (production) instead of human-readable text.
    #[arg(long)]
    json_logs: bool,
}

/// `--aws-retry-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum AwsRetryMode {
    Standard,
    Adaptive,
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

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen { out_dir, check } => crdgen(&out_dir, check),
        Command::Simulate {
            traces,
            policies,
            boot_seconds,
            seed,
            format,
        } => simulate(&traces, &policies, boot_seconds, seed, format),
        Command::Trace { shape, seed, out } => write_trace(shape, seed, out.as_deref()),
        Command::Dev {
            command: DevCommand::Apiserver { listen, kubeconfig },
        } => dev_apiserver(&listen, &kubeconfig),
        Command::Operator(args) => run_operator(args),
        #[cfg(unix)]
        Command::Dev {
            command:
                DevCommand::Nodes {
                    boot_delay,
                    work_dir,
                    never_register,
                    fleets,
                    poll_interval,
                    browser_ports,
                    ports_per_node,
                    agent_binary,
                    json_logs,
                },
        } => {
            let agent_binary = match agent_binary {
                Some(path) => path,
                None => std::env::current_exe().context("finding this binary")?,
            };
            let mut options = browserfleet::local::nodes::NodeOptions::new(agent_binary, work_dir);
            options.boot_delay = boot_delay;
            options.poll_interval = poll_interval;
            options.never_register = never_register.into_iter().collect();
            options.only_fleets = (!fleets.is_empty()).then(|| fleets.into_iter().collect());
            options.browser_ports = browserfleet::local::nodes::PortPool {
                first: u16::try_from(browser_ports.start).context("--browser-ports start")?,
                last: u16::try_from(browser_ports.end).context("--browser-ports end")?,
                per_node: ports_per_node,
            };
            dev_nodes(options, json_logs)
        }
        Command::Agent {
            config,
            config_ssm_parameter,
            instance_id,
            advertise_address,
            listen_address,
            gateway_port,
            browser_ports,
            state_dir,
            json_logs,
        } => run_agent(
            config.as_deref(),
            config_ssm_parameter.as_deref(),
            instance_id.zip(advertise_address),
            &browserfleet::agent::config::ConfigOverrides {
                listen_address,
                gateway_port,
                browser_port_range: browser_ports,
                state_dir,
            },
            json_logs,
        ),
    }
}

fn run_agent(
    config_file: Option<&Path>,
    ssm_parameter: Option<&str>,
    identity: Option<(String, String)>,
    overrides: &browserfleet::agent::config::ConfigOverrides,
    json_logs: bool,
) -> anyhow::Result<ExitCode> {
    use browserfleet::agent::{self, config::AgentConfig, runtime::NodeIdentity};
    use browserfleet::cloud::{Aws, AwsSettings, Parameters, Sqs, Ssm};
    browserfleet::telemetry::init_logs(json_logs);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let aws = Aws::load(AwsSettings::default()).await?;
        let json = match (config_file, ssm_parameter) {
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
        let settings = AgentConfig::parse_with(&json, overrides)?;
        let identity = match identity {
            Some((instance_id, advertise)) => NodeIdentity {
                instance_id,
                advertise,
            },
            None => {
                let metadata = agent::imds::read().await?;
                NodeIdentity {
                    advertise: format!("{}:{}", metadata.private_ip, settings.config.gateway_port),
                    instance_id: metadata.instance_id,
                }
            }
        };
        // Listening for SIGTERM before the start, which re-adopts browsers
        // and may take a while: a signal then stops the agent right after.
        let (signalled, mut on_signal) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            signalled.send_replace(true);
        });
        let running = agent::start(
            settings,
            Some(identity),
            Sqs::new(&aws),
            agent::RunOptions {
                aws_calls: Some(aws.recorder().clone()),
                ..Default::default()
            },
        )
        .await?;
        println!("listening on {}", running.address);
        let agent = running.agent.clone();
        tokio::spawn(async move {
            if on_signal.wait_for(|s| *s).await.is_ok() {
                agent.stop();
            }
        });
        running.wait().await;
        Ok(ExitCode::SUCCESS)
    })
}

fn run_operator(args: OperatorArgs) -> anyhow::Result<ExitCode> {
    use browserfleet::cloud::{Aws, AwsSettings};
    use browserfleet::operator::context::Settings;
    use browserfleet::operator::plan::Rules;
    use browserfleet::operator::run::{LeaderElection, OperatorOptions, run};
    browserfleet::telemetry::init_logs(args.json_logs);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("connecting to Kubernetes (kubeconfig or in-cluster configuration)")?;
        let aws = Aws::load(AwsSettings {
            retry_mode: match args.aws_retry_mode {
                AwsRetryMode::Standard => browserfleet::cloud::RetryMode::Standard,
                AwsRetryMode::Adaptive => browserfleet::cloud::RetryMode::Adaptive,
            },
            max_attempts: args.aws_max_attempts,
            ..AwsSettings::default()
        })
        .await?;
        let identity = args.identity.clone().unwrap_or_else(|| {
            format!(
                "{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "operator".into()),
                std::process::id()
            )
        });
        let options = OperatorOptions {
            namespace: args.namespace,
            settings: Settings {
                resync: args.resync,
                depth_poll: args.queue_poll,
                events_wait: args.events_wait.min(std::time::Duration::from_secs(20)),
                concurrency: args.concurrency.max(1),
                rules: Rules {
                    unresponsive_after: args.unresponsive_after,
                    backoff_base: args.backoff_base,
                    backoff_cap: args.backoff_cap,
                },
                ..Settings::default()
            },
            listen: Some(args.listen),
            cluster: args.cluster_name,
            leader_election: args.leader_election.then_some(LeaderElection {
                namespace: args.lease_namespace,
                lease: args.lease_name,
                identity,
                duration: args.lease_duration,
            }),
        };
        let (started, running) =
            tokio::sync::oneshot::channel::<browserfleet::operator::run::Running>();
        tokio::spawn(async move {
            if let Ok(running) = running.await
                && let Some(address) = running.address
            {
                println!("listening on {address}");
            }
        });
        run(client, aws, options, shutdown_signal(), Some(started)).await?;
        Ok(ExitCode::SUCCESS)
    })
}

fn dev_apiserver(listen: &str, kubeconfig: &Path) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let url = format!("http://{}", listener.local_addr()?);
        std::fs::write(kubeconfig, browserfleet::local::apiserver::kubeconfig(&url))
            .with_context(|| format!("writing {}", kubeconfig.display()))?;
        println!("listening on {url}");
        browserfleet::local::apiserver::serve(listener, shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(unix)]
fn dev_nodes(
    options: browserfleet::local::nodes::NodeOptions,
    json_logs: bool,
) -> anyhow::Result<ExitCode> {
    use browserfleet::cloud::{Aws, AwsSettings};
    browserfleet::telemetry::init_logs(json_logs);
    if options.browser_ports.block(0).is_none() {
        anyhow::bail!("--browser-ports holds fewer ports than --ports-per-node");
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let aws = Aws::load(AwsSettings::default()).await?;
        let work_dir = options.work_dir.clone();
        let simulator = browserfleet::local::nodes::NodeSimulator::start(&aws, options)?;
        println!("simulating nodes in {}", work_dir.display());
        shutdown_signal().await;
        simulator.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// A duration as people write it: `2s`, `500ms`, `1m 30s` (or ISO 8601).
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let signed: jiff::SignedDuration = text
        .parse()
        .map_err(|e| format!("{text:?} is not a duration like 2s or 500ms: {e}"))?;
    std::time::Duration::try_from(signed).map_err(|_| format!("{text:?} is negative"))
}

/// A fleet named `namespace/name`.
fn parse_fleet_key(text: &str) -> Result<String, String> {
    match text.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok(text.to_owned())
        }
        _ => Err(format!("{text:?} is not namespace/name")),
    }
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

fn simulate(
    paths: &[PathBuf],
    policies: &[PolicyName],
    boot: BootDistribution,
    seed: u64,
    format: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let policies = if policies.is_empty() {
        &PolicyName::ALL[..]
    } else {
        policies
    };
    let fleet = scaling::report_fleet();
    let mut rows = Vec::new();
    for path in paths {
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
            let report = scaling::simulate(&trace, policy, &fleet, boot, seed);
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
    match format {
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

fn write_trace(
    shape: trace::TraceShape,
    seed: Option<u64>,
    out: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let seed = seed.unwrap_or(shape.default_seed());
    let generated = trace::generate(shape, seed);
    let csv = generated.to_csv(&format!(
        "browserfleet trace v1 shape={} seed={seed}",
        shape.name()
    ));
    match out {
        Some(path) => {
            std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{csv}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn crdgen(out_dir: &Path, check: bool) -> anyhow::Result<ExitCode> {
    let manifests = api::crd_manifests().context("rendering the CRDs as YAML")?;
    if check {
        let mut stale = Vec::new();
        for manifest in &manifests {
            let path = out_dir.join(&manifest.file_name);
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current != manifest.yaml {
                stale.push(path.display().to_string());
            }
        }
        if stale.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!(
            "out of date (run `browserfleet crdgen`): {}",
            stale.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    for manifest in &manifests {
        let path = out_dir.join(&manifest.file_name);
        std::fs::write(&path, &manifest.yaml)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_people_write_them() {
        use std::time::Duration;
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("-2s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn the_charts_aws_flags_parse() {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "browserfleet",
            "operator",
            "--aws-retry-mode=adaptive",
            "--aws-max-attempts=8",
        ])
        .expect("flags parse");
        let Command::Operator(args) = cli.command else {
            panic!("the operator subcommand");
        };
        assert_eq!(args.aws_retry_mode, AwsRetryMode::Adaptive);
        assert_eq!(args.aws_max_attempts, 8);
        assert!(Cli::try_parse_from(["browserfleet", "operator", "--aws-max-attempts=0"]).is_err());
    }

    #[test]
    fn fleets_are_namespace_slash_name() {
        assert_eq!(parse_fleet_key("team/web"), Ok("team/web".to_owned()));
        for bad in ["team", "team/", "/web", "a/b/c"] {
            assert!(parse_fleet_key(bad).is_err(), "{bad}");
        }
    }
}
