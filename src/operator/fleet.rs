//! The fleet reconciler: one `BrowserFleet` to queues, a Secret, the agent
//! configuration in SSM, and EC2 instances whose agents registered. Each
//! reconcile runs one pipeline, level-triggered and idempotent:
//!
//! 1. **finalizer** on the fleet before anything exists in AWS;
//! 2. **validate** the spec: violations are reported (`Ready=False`,
//!    `InvalidSpec`, a Warning Event) and nothing is launched;
//! 3. **ensure** queues, Secret and agent configuration, once per
//!    generation and operator process (a steady reconcile makes no call for
//!    them);
//! 4. **observe** EC2 (one listing), the queue (one call) and every
//!    registered agent (`GET /v1/state`, bounded and short);
//! 5. **decide** ([`plan::plan`], pure);
//! 6. **act**: launch (the intent is in status before EC2 is called), drain,
//!    terminate;
//! 7. **report** status by server-side apply, only when it changed.
//!
//! Deleting a fleet drains and terminates its instances (for at most
//! `drainTimeoutSeconds`), deletes what the operator created in AWS, and
//! then removes the finalizer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};

use crate::api::BrowserFleet;
use crate::api::fleet::{
    BrowserFleetStatus, CONDITION_DEGRADED, CONDITION_READY, CONDITION_SCALING, LaunchIntent,
    QueueUrls, ScaleDecision,
};
use crate::cloud::{
    AwsFault, Compute, ComputeError, FaultKind, FleetId, FleetIdError, FleetInstance,
    InstanceBlueprint, InstanceId, InstanceState, LaunchRequest, ParameterKind, ParameterWrite,
    Parameters, QueueDefinition, QueueError, QueueUrl, Queues, SsmError,
};
use crate::operator::agent_config::{self, FleetQueues, RenderError};
use crate::operator::bootstrap;
use crate::operator::conditions::{self, Wanted};
use crate::operator::context::{Context, Ensured};
use crate::operator::finalizers;
use crate::operator::plan::{self, AgentAnswer, Observed, Plan, Previous};
use crate::operator::secrets::{self, SecretsError};
use crate::operator::watches::WatchedQueues;

/// The fleet's finalizer: AWS resources exist while it is on.
pub const FINALIZER: &str = "browserfleet.io/cleanup";

/// The field manager of the status the operator applies.
pub const FIELD_MANAGER: &str = "browserfleet-operator";

/// Why a reconcile failed. Every variant is a normal state to recover from
/// (requeue with backoff, a condition), never a crash.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The fleet lacks a namespace, name or uid.
    #[error(transparent)]
    Identity(#[from] FleetIdError),
    /// The Kubernetes API failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The fleet's Secret.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// The spec cannot be rendered into an agent configuration.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// EC2.
    #[error(transparent)]
    Compute(#[from] ComputeError),
    /// SQS.
    #[error(transparent)]
    Queues(#[from] QueueError),
    /// SSM.
    #[error(transparent)]
    Ssm(#[from] SsmError),
    /// The agent configuration could not be serialized.
    #[error("serializing the agent configuration: {0}")]
    Serialize(serde_json::Error),
}

impl Error {
    /// The AWS fault behind it, if any.
    fn fault(&self) -> Option<&AwsFault> {
        match self {
            Error::Compute(e) => e.fault(),
            Error::Queues(e) => e.fault(),
            Error::Ssm(e) => e.fault(),
            _ => None,
        }
    }

    /// The kind, for metrics and the `Degraded` condition's reason.
    pub fn reason(&self) -> &'static str {
        if let Error::Compute(ComputeError::NoCapacity { .. }) = self {
            return "InsufficientCapacity";
        }
        match self.fault().map(|f| f.kind) {
            Some(FaultKind::Throttled) => "AwsThrottled",
            Some(FaultKind::AccessDenied) => "AccessDenied",
            Some(FaultKind::Capacity) => "InsufficientCapacity",
            Some(FaultKind::Timeout | FaultKind::Unavailable) => "AwsUnavailable",
            Some(FaultKind::InvalidRequest | FaultKind::NotFound) => "AwsRefused",
            None => match self {
                Error::Kube(_) => "KubernetesApi",
                Error::Secrets(_) => "FleetSecret",
                Error::Render(_) => "InvalidSpec",
                Error::Identity(_) => "InvalidObject",
                Error::Serialize(_) => "AgentConfiguration",
                _ => "AwsError",
            },
        }
    }

    /// For the condition's message: an access-denied error names the IAM
    /// action that is missing.
    pub fn describe(&self) -> String {
        match self.fault() {
            Some(fault) if fault.kind == FaultKind::AccessDenied => format!(
                "access denied: the operator's IAM role lacks {}:{} ({self})",
                fault.service.as_str().to_ascii_lowercase(),
                fault.operation
            ),
            _ => self.to_string(),
        }
    }

    /// Whether retrying later may succeed without a change.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Compute(e) => e.is_retryable(),
            Error::Queues(e) => e.is_retryable(),
            Error::Ssm(e) => e.is_retryable(),
            // Refusals (forbidden, invalid) need a change; conflicts,
            // throttling and server or transport errors pass.
            Error::Kube(kube::Error::Api(status)) => {
                !(400..500).contains(&status.code) || matches!(status.code, 409 | 429)
            }
            Error::Kube(_) => true,
            Error::Secrets(SecretsError::Api { .. }) => true,
            Error::Secrets(SecretsError::Malformed { .. })
            | Error::Render(_)
            | Error::Identity(_)
            | Error::Serialize(_) => false,
        }
    }
}

/// Reconciles one fleet.
pub async fn reconcile(fleet: Arc<BrowserFleet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let span = tracing::info_span!("reconcile", fleet = %format!("{}/{}", fleet.namespace().unwrap_or_default(), fleet.name_any()));
    let result = tracing::Instrument::instrument(reconcile_fleet(&fleet, &ctx), span).await;
    if result.is_ok() {
        ctx.succeeded(&fleet.uid().unwrap_or_default());
    }
    let kind = result.as_ref().err().map(Error::reason);
    ctx.metrics
        .reconciled(started.elapsed().as_secs_f64(), kind);
    if let Err(error) = &result {
        tracing::warn!(fleet = %fleet.name_any(), %error, "reconcile failed");
        report_error(&fleet, &ctx, error).await;
    }
    result
}

/// Requeues a failed fleet with a capped exponential back-off over its
/// failures in a row: from 1 s (up to 1 min) for errors that may pass, from
/// 30 s (up to 5 min) for the ones that need a change.
pub fn error_policy(fleet: Arc<BrowserFleet>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.failed(&fleet.uid().unwrap_or_default());
    let (base, cap) = if error.is_retryable() {
        (Duration::from_secs(1), Duration::from_secs(60))
    } else {
        (Duration::from_secs(30), Duration::from_secs(300))
    };
    let exponent = failures.saturating_sub(1).min(16);
    Action::requeue(base.saturating_mul(1 << exponent).min(cap))
}

fn fleet_id(fleet: &BrowserFleet) -> Result<FleetId, Error> {
    Ok(FleetId::new(
        fleet.namespace().unwrap_or_default(),
        fleet.name_any(),
        fleet.uid().unwrap_or_default(),
    )?)
}

fn api(ctx: &Context, fleet: &BrowserFleet) -> Api<BrowserFleet> {
    Api::namespaced(ctx.client.clone(), &fleet.namespace().unwrap_or_default())
}

async fn reconcile_fleet(fleet: &BrowserFleet, ctx: &Context) -> Result<Action, Error> {
    let id = fleet_id(fleet)?;
    if fleet.meta().deletion_timestamp.is_some() {
        return delete_fleet(fleet, &id, ctx).await;
    }
    if !fleet.finalizers().iter().any(|f| f == FINALIZER) {
        finalizers::add(&api(ctx, fleet), fleet, FINALIZER).await?;
    }
    if let Err(violations) = fleet.spec.validate() {
        report_invalid(fleet, ctx, &violations.to_string()).await?;
        return Ok(Action::await_change());
    }
    let ensured = match ensure(fleet, &id, ctx).await {
        Ok(ensured) => ensured,
        Err(Error::Render(error)) => {
            report_invalid(fleet, ctx, &error.to_string()).await?;
            return Ok(Action::await_change());
        }
        Err(error) => return Err(error),
    };
    ctx.watches.ensure(
        &ObjectRef::from_obj(fleet),
        id.uid(),
        &WatchedQueues {
            requests: ensured.queues.requests.clone(),
            events: ensured.queues.events.clone(),
        },
    );
    let observed = observe(fleet, &id, &ensured, ctx).await?;
    let previous = previous_of(fleet.status.as_ref());
    let memory = ctx.memory_of(id.uid());
    let (plan, memory) = plan::plan(
        &fleet.spec,
        &previous,
        &observed,
        memory.as_ref(),
        &ctx.settings.rules,
    );
    ctx.remember(id.uid(), memory);
    let (acted, failure) = act(fleet, &id, &ensured, &previous, &plan, &observed, ctx).await;
    let status = status_of(fleet, &ensured, &plan, &observed, &acted, failure.as_ref());
    ctx.metrics.fleet(
        &id.to_string(),
        plan.decision.desired,
        plan.current,
        plan.ready,
        plan.sessions,
        observed.depth.visible,
    );
    write_status(fleet, ctx, &status).await?;
    emit_scale_event(fleet, ctx, &previous, &plan).await;
    match failure {
        Some(error) => Err(error),
        None => Ok(Action::requeue(ctx.settings.resync)),
    }
}

/// Queues, Secret and agent configuration, converged once per generation.
async fn ensure(fleet: &BrowserFleet, id: &FleetId, ctx: &Context) -> Result<Ensured, Error> {
    let generation = fleet.meta().generation.unwrap_or_default();
    if let Some(ensured) = ctx.ensured_at(id.uid(), generation) {
        return Ok(ensured);
    }
    let spec = &fleet.spec;
    let (requests, dead_letter) = match &spec.queue.request_queue_url {
        Some(url) => (QueueUrl::new(url), None),
        None => {
            let queue = ctx
                .sqs
                .ensure_queue(&QueueDefinition::requests_for(id, &spec.queue))
                .await?;
            (queue.url, queue.dead_letter_url)
        }
    };
    let events = ctx
        .sqs
        .ensure_queue(&QueueDefinition::events_for(id))
        .await?
        .url;
    let queues = FleetQueues {
        requests,
        dead_letter,
        events,
    };
    let fleet_secrets = secrets::ensure(&ctx.client, fleet).await?;
    let config = agent_config::render(id.namespace(), id.name(), spec, &queues, &fleet_secrets)?;
    // Compact: a standard SSM parameter holds 4 KB.
    let value = serde_json::to_string(&config).map_err(Error::Serialize)?;
    let parameter = agent_config::parameter_name(id.namespace(), id.name());
    let current = match ctx.ssm.get_parameter(&parameter).await {
        Ok(current) => Some(current),
        Err(SsmError::NotFound(_)) => None,
        Err(error) => return Err(error.into()),
    };
    if current.is_none_or(|c| c.value != value || !c.secure) {
        ctx.ssm
            .put_parameter(&ParameterWrite {
                name: parameter.clone(),
                value,
                kind: ParameterKind::SecureString { kms_key_id: None },
                description: Some(format!("browserfleet agent configuration of fleet {id}")),
                tags: id.tags(&BTreeMap::new()),
            })
            .await?;
        tracing::info!(%parameter, "agent configuration written");
    }
    let ensured = Ensured {
        generation,
        queues,
        parameter,
        fleet_token: fleet_secrets.fleet_token,
    };
    ctx.record_ensured(id.uid(), ensured.clone());
    Ok(ensured)
}

/// One look at the fleet: EC2, the queue, the agents.
async fn observe(
    fleet: &BrowserFleet,
    id: &FleetId,
    ensured: &Ensured,
    ctx: &Context,
) -> Result<Observed, Error> {
    let (instances, depth) = tokio::join!(
        ctx.compute.list_instances(id),
        ctx.sqs.depth(&ensured.queues.requests)
    );
    let instances = instances?;
    let depth = depth?;
    ctx.registrations
        .retain(id.uid(), |i| instances.iter().any(|x| &x.id == i));
    let registrations = ctx.registrations.of(id.uid());
    let answers = ask_agents(fleet, &instances, &registrations, ensured, ctx).await;
    Ok(Observed {
        now: Timestamp::now(),
        instances,
        depth,
        registrations,
        answers,
        watching_since: ctx.watching_since(id.uid()),
        pending_sessions: ctx.pending_sessions(fleet),
    })
}

/// The address to dial for each running instance: its registration, or
/// the one status recorded (before its next heartbeat after a restart).
fn addresses(
    fleet: &BrowserFleet,
    instances: &[FleetInstance],
    registrations: &BTreeMap<InstanceId, plan::Registration>,
) -> Vec<(InstanceId, String)> {
    let recorded = fleet
        .status
        .as_ref()
        .map(|s| s.instances.as_slice())
        .unwrap_or_default();
    instances
        .iter()
        .filter(|i| i.state == InstanceState::Running)
        .filter_map(|i| {
            let address = registrations
                .get(&i.id)
                .map(|r| r.address.clone())
                .or_else(|| {
                    recorded
                        .iter()
                        .find(|s| s.instance_id == i.id.as_str())
                        .and_then(|s| s.address.clone())
                })?;
            Some((i.id.clone(), address))
        })
        .collect()
}

async fn ask_agents(
    fleet: &BrowserFleet,
    instances: &[FleetInstance],
    registrations: &BTreeMap<InstanceId, plan::Registration>,
    ensured: &Ensured,
    ctx: &Context,
) -> BTreeMap<InstanceId, AgentAnswer> {
    let token = ensured.fleet_token.expose();
    futures::stream::iter(addresses(fleet, instances, registrations))
        .map(|(id, address)| async move {
            let answer = match ctx.agents.state(&address, token).await {
                // An address that now answers for another instance (reused
                // by a new agent) says nothing about this one.
                Ok(state) if state.instance_id == id.as_str() => AgentAnswer::State(state),
                Ok(state) => {
                    tracing::warn!(instance = %id, %address, answered_for = %state.instance_id, "an agent of another instance answers at this address");
                    AgentAnswer::Silent
                }
                Err(error) => {
                    tracing::debug!(instance = %id, %error, "agent did not answer");
                    AgentAnswer::Silent
                }
            };
            (id, answer)
        })
        .buffer_unordered(ctx.settings.agent_concurrency.max(1))
        .collect()
        .await
}

fn previous_of(status: Option<&BrowserFleetStatus>) -> Previous {
    let Some(status) = status else {
        return Previous::default();
    };
    Previous {
        instances: status.instances.clone(),
        launch_sequence: u64::try_from(status.launch_sequence).unwrap_or(0),
        intent: status.launch_intent.clone(),
        boot_failures: u32::try_from(status.boot_failures).unwrap_or(0),
        backoff_until: status.launch_backoff_until.as_ref().map(|t| t.0),
    }
}

/// What acting achieved, for the status.
#[derive(Debug, Default)]
struct Acted {
    launched: Vec<FleetInstance>,
    /// The launch intent left in status.
    intent: Option<LaunchIntent>,
    launch_sequence: u64,
    /// Placements without capacity, as text.
    capacity_misses: Vec<String>,
    /// Drains that failed, to be tried again.
    drain_failed: Vec<InstanceId>,
}

/// Carries out the plan. What was done is returned with the error that
/// stopped it, if any: a launch's intent, once in status, is never taken back
/// by a failure after it.
async fn act(
    fleet: &BrowserFleet,
    id: &FleetId,
    ensured: &Ensured,
    previous: &Previous,
    plan: &Plan,
    observed: &Observed,
    ctx: &Context,
) -> (Acted, Option<Error>) {
    let mut acted = Acted {
        intent: if plan.clear_intent {
            None
        } else {
            previous.intent.clone()
        },
        launch_sequence: previous.launch_sequence,
        ..Acted::default()
    };
    for (instance, address) in &plan.drain {
        match ctx
            .agents
            .drain(address, ensured.fleet_token.expose())
            .await
        {
            Ok(()) => {
                ctx.event(
                    fleet,
                    false,
                    "Draining",
                    format!("draining {instance}: not needed"),
                )
                .await;
            }
            Err(error) => {
                tracing::warn!(%instance, %error, "drain failed; trying again next time");
                acted.drain_failed.push(instance.clone());
            }
        }
    }
    if !plan.terminate.is_empty() {
        let ids: Vec<InstanceId> = plan.terminate.iter().map(|(i, _)| i.clone()).collect();
        if let Err(error) = ctx.compute.terminate(&ids).await {
            return (acted, Some(error.into()));
        }
        for (instance, reason) in &plan.terminate {
            ctx.event(
                fleet,
                reason.degrades(),
                reason.event_reason(),
                format!("terminating {instance}: {}", reason.describe()),
            )
            .await;
        }
    }
    let Some(launch) = plan.launch else {
        return (acted, None);
    };
    // The intent is in status before EC2 is called: whatever happens next
    // (a crash, a lost answer, a new leader), the next reconcile completes
    // this launch from the listing instead of deciding it again.
    acted.intent = Some(LaunchIntent {
        sequence: i64::try_from(launch.sequence).unwrap_or(i64::MAX),
        count: i32::try_from(launch.intent_count).unwrap_or(i32::MAX),
        decided_at: Time(observed.now),
    });
    acted.launch_sequence = launch.sequence;
    let status = status_of(fleet, ensured, plan, observed, &acted, None);
    if let Err(error) = write_status(fleet, ctx, &status).await {
        // Not recorded, so not launched: the next reconcile decides again.
        acted.intent = previous.intent.clone();
        acted.launch_sequence = previous.launch_sequence;
        return (acted, Some(error));
    }
    match launch_instances(fleet, id, ensured, launch, ctx).await {
        Ok(launched) => {
            acted.capacity_misses = launched
                .misses
                .iter()
                .map(|m| format!("{} in {}", m.instance_type, m.subnet_id))
                .collect();
            let ids: Vec<&str> = launched.instances.iter().map(|i| i.id.as_str()).collect();
            ctx.event(
                fleet,
                false,
                "Launched",
                format!(
                    "launched {} of {} (launch {}): {}",
                    ids.len(),
                    launch.count,
                    launch.sequence,
                    ids.join(", ")
                ),
            )
            .await;
            // Every instance is known by id now (status lists them even
            // while EC2's listing lags), so the intent is done; a launch
            // cut short by capacity stays recorded for the next reconcile.
            if u32::try_from(launched.instances.len()).unwrap_or(0) >= launch.count {
                acted.intent = None;
            }
            acted.launched = launched.instances;
            (acted, None)
        }
        Err(error) => (acted, Some(error)),
    }
}

async fn launch_instances(
    fleet: &BrowserFleet,
    id: &FleetId,
    ensured: &Ensured,
    launch: plan::Launch,
    ctx: &Context,
) -> Result<crate::cloud::LaunchOutcome, Error> {
    let spec = &fleet.spec;
    let image = ctx.compute.resolve_image(&spec.instance.image).await?;
    let user_data = bootstrap::user_data(id.namespace(), id.name(), spec, &ensured.parameter);
    let blueprint = InstanceBlueprint {
        cluster: ctx.cluster.clone(),
        ..InstanceBlueprint::from_spec(&spec.instance, image, Some(user_data))
    };
    let subnets = spec.instance.subnet_ids.len().max(1);
    let request = LaunchRequest {
        count: launch.count,
        sequence: launch.sequence,
        first_subnet: usize::try_from(launch.sequence).unwrap_or(0) % subnets,
    };
    Ok(ctx.compute.launch(id, &blueprint, request).await?)
}

fn count(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// The status after this reconcile.
fn status_of(
    fleet: &BrowserFleet,
    ensured: &Ensured,
    plan: &Plan,
    observed: &Observed,
    acted: &Acted,
    failure: Option<&Error>,
) -> BrowserFleetStatus {
    let old = fleet.status.clone().unwrap_or_default();
    let now = Time(observed.now);
    let mut instances = plan.instances.clone();
    for failed in &acted.drain_failed {
        if let Some(s) = instances
            .iter_mut()
            .find(|s| s.instance_id == failed.as_str())
        {
            s.state = crate::api::fleet::InstanceState::Ready;
            s.draining_since = None;
        }
    }
    let launched = u32::try_from(acted.launched.len()).unwrap_or(u32::MAX);
    for instance in &acted.launched {
        instances.push(crate::api::fleet::InstanceStatus {
            instance_id: instance.id.as_str().to_owned(),
            state: crate::api::fleet::InstanceState::Pending,
            subnet_id: instance.subnet_id.clone(),
            private_ip: instance.private_ip.map(|ip| ip.to_string()),
            launch_time: instance
                .launch_time
                .and_then(|t| Timestamp::try_from(t).ok())
                .map(Time),
            sessions: 0,
            address: None,
            agent_version: None,
            last_seen: None,
            draining_since: None,
            bootstrap: None,
        });
    }
    instances.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    instances.truncate(plan::MAX_LISTED_INSTANCES);
    let desired = plan.decision.desired;
    let last_scale_decision =
        if i64::from(desired) != i64::from(old.desired_instances) && fleet.status.is_some() {
            Some(ScaleDecision {
                from: old.desired_instances,
                to: count(desired),
                reason: plan.decision.reason.clone(),
                time: now.clone(),
            })
        } else {
            old.last_scale_decision.clone()
        };
    let (intent, sequence) = (acted.intent.clone(), acted.launch_sequence);
    let wanted = wanted_conditions(fleet, plan, acted, failure);
    BrowserFleetStatus {
        observed_generation: fleet.meta().generation,
        desired_instances: count(desired),
        current_instances: count(plan.current + launched),
        ready_instances: count(plan.ready),
        draining_instances: count(plan.draining),
        active_sessions: count(plan.sessions),
        session_capacity: count(plan.capacity),
        queue_visible: i32::try_from(observed.depth.visible).unwrap_or(i32::MAX),
        queue_in_flight: i32::try_from(observed.depth.in_flight).unwrap_or(i32::MAX),
        last_scale_decision,
        launch_sequence: i64::try_from(sequence).unwrap_or(i64::MAX),
        launch_intent: intent,
        boot_failures: count(plan.boot_failures),
        launch_backoff_until: plan.backoff_until.map(Time),
        instances,
        queues: Some(QueueUrls {
            requests: Some(ensured.queues.requests.as_str().to_owned()),
            dead_letter: ensured
                .queues
                .dead_letter
                .as_ref()
                .map(|u| u.as_str().to_owned()),
            events: Some(ensured.queues.events.as_str().to_owned()),
        }),
        agent_config_parameter: Some(ensured.parameter.clone()),
        conditions: conditions::merge(&old.conditions, &wanted, fleet.meta().generation, &now),
    }
}

fn wanted_conditions(
    fleet: &BrowserFleet,
    plan: &Plan,
    acted: &Acted,
    failure: Option<&Error>,
) -> Vec<Wanted> {
    let desired = plan.decision.desired;
    let ready = if fleet.spec.paused {
        Wanted::new(
            CONDITION_READY,
            plan.ready > 0 || desired == 0,
            "Paused",
            format!("paused; {} of {desired} instances ready", plan.ready),
        )
    } else if plan.ready >= desired {
        Wanted::new(
            CONDITION_READY,
            true,
            "AtDesiredSize",
            format!("{} of {desired} instances ready", plan.ready),
        )
    } else {
        Wanted::new(
            CONDITION_READY,
            false,
            "WaitingForInstances",
            format!("{} of {desired} instances ready", plan.ready),
        )
    };
    let kind = plan.decision.kind;
    let scaling = Wanted::new(
        CONDITION_SCALING,
        kind.is_scaling() || plan.launch.is_some() || plan.draining > 0,
        kind.reason(),
        plan.decision.reason.clone(),
    );
    let replaced: Vec<String> = plan
        .terminate
        .iter()
        .filter(|(_, r)| r.degrades())
        .map(|(i, r)| format!("{i}: {}", r.describe()))
        .collect();
    let degraded = match failure {
        Some(error) => Wanted::new(CONDITION_DEGRADED, true, error.reason(), error.describe()),
        None if !acted.capacity_misses.is_empty() => Wanted::new(
            CONDITION_DEGRADED,
            true,
            "InsufficientCapacity",
            format!("no capacity for {}", acted.capacity_misses.join(", ")),
        ),
        None if !replaced.is_empty() => Wanted::new(
            CONDITION_DEGRADED,
            true,
            "InstancesReplaced",
            format!("replacing {}", replaced.join("; ")),
        ),
        None if plan.boot_failures > 0 => Wanted::new(
            CONDITION_DEGRADED,
            true,
            "InstancesFailingToRegister",
            format!(
                "{} instances in a row did not register within {}s; launches back off{}",
                plan.boot_failures,
                fleet.spec.scaling.ready_timeout_seconds,
                plan.backoff_until
                    .map(|t| format!(" until {t}"))
                    .unwrap_or_default()
            ),
        ),
        None => Wanted::new(CONDITION_DEGRADED, false, "Healthy", "no problem seen"),
    };
    vec![ready, scaling, degraded]
}

/// Applies the whole status; fields cleared are applied as `null` or `[]`
/// so that they are removed (a partial apply would keep stale values on
/// servers that do not track field ownership).
async fn write_status(
    fleet: &BrowserFleet,
    ctx: &Context,
    status: &BrowserFleetStatus,
) -> Result<(), Error> {
    if fleet.status.as_ref() == Some(status) {
        return Ok(());
    }
    let mut body = serde_json::to_value(status).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut body {
        for key in [
            "observedGeneration",
            "lastScaleDecision",
            "launchIntent",
            "launchBackoffUntil",
            "queues",
            "agentConfigParameter",
        ] {
            map.entry(key).or_insert(Value::Null);
        }
        for key in ["instances", "conditions"] {
            map.entry(key).or_insert(Value::Array(Vec::new()));
        }
    }
    let patch = json!({
        "apiVersion": BrowserFleet::api_version(&()),
        "kind": BrowserFleet::kind(&()),
        "status": body,
    });
    api(ctx, fleet)
        .patch_status(
            &fleet.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}

async fn emit_scale_event(fleet: &BrowserFleet, ctx: &Context, previous: &Previous, plan: &Plan) {
    let old = fleet.status.as_ref().map_or(0, |s| s.desired_instances);
    if plan.decision.kind.is_scaling()
        && count(plan.decision.desired) != old
        && !previous.instances.is_empty()
    {
        ctx.event(
            fleet,
            false,
            plan.decision.kind.reason(),
            format!(
                "desired {old} → {}: {}",
                plan.decision.desired, plan.decision.reason
            ),
        )
        .await;
    }
}

/// An invalid spec: reported, nothing launched; the Event once per
/// generation.
async fn report_invalid(fleet: &BrowserFleet, ctx: &Context, message: &str) -> Result<(), Error> {
    let old = fleet.status.clone().unwrap_or_default();
    let generation = fleet.meta().generation;
    let already = old.conditions.iter().any(|c| {
        c.type_ == CONDITION_READY
            && c.reason == "InvalidSpec"
            && c.observed_generation == generation
            && c.message == message
    });
    if already {
        return Ok(());
    }
    let now = Time(Timestamp::now());
    let mut status = old.clone();
    status.observed_generation = generation;
    status.conditions = conditions::merge(
        &old.conditions,
        &[
            Wanted::new(CONDITION_READY, false, "InvalidSpec", message),
            Wanted::new(CONDITION_DEGRADED, true, "InvalidSpec", message),
            Wanted::new(
                CONDITION_SCALING,
                false,
                "InvalidSpec",
                "nothing is launched while the spec is invalid",
            ),
        ],
        generation,
        &now,
    );
    write_status(fleet, ctx, &status).await?;
    ctx.event(fleet, true, "InvalidSpec", message.to_owned())
        .await;
    Ok(())
}

/// Puts an error into the `Degraded` condition (best effort), on the
/// fleet as it is now: the reconcile may have written status (a launch
/// intent) that the object it started from does not show.
async fn report_error(fleet: &BrowserFleet, ctx: &Context, error: &Error) {
    if fleet.meta().deletion_timestamp.is_some() {
        return;
    }
    let current = match api(ctx, fleet).get_opt(&fleet.name_any()).await {
        Ok(Some(current)) => current,
        Ok(None) => return,
        Err(get) => {
            tracing::warn!(error = %get, "cannot read the fleet to report an error");
            return;
        }
    };
    let old = current.status.clone().unwrap_or_default();
    let now = Time(Timestamp::now());
    let mut status = old.clone();
    status.conditions = conditions::merge(
        &old.conditions,
        &[Wanted::new(
            CONDITION_DEGRADED,
            true,
            error.reason(),
            error.describe(),
        )],
        current.meta().generation,
        &now,
    );
    if status != old {
        if let Err(write) = write_status(&current, ctx, &status).await {
            tracing::warn!(error = %write, "cannot report the error in status");
        }
        ctx.event(fleet, true, error.reason(), error.describe())
            .await;
    }
}

/// A fleet being deleted: drain, terminate, delete what was created, then
/// let it go.
async fn delete_fleet(fleet: &BrowserFleet, id: &FleetId, ctx: &Context) -> Result<Action, Error> {
    if !fleet.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let instances = ctx.compute.list_instances(id).await?;
    let live: Vec<&FleetInstance> = instances
        .iter()
        .filter(|i| {
            !matches!(
                i.state,
                InstanceState::ShuttingDown | InstanceState::Terminated
            )
        })
        .collect();
    if !live.is_empty() {
        retire_for_deletion(fleet, id, &instances, ctx).await?;
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    ctx.forget(id.uid());
    ctx.metrics.forget_fleet(&id.to_string());
    // The queues are found by the names the operator gives them, not from
    // status, which may never have recorded them (a spec that could not be
    // rendered, a deletion before the first status write) or no longer does
    // (`requestQueueUrl` set later). A queue the user named is never ours.
    let requests = QueueDefinition::requests_for(id, &fleet.spec.queue);
    let mut names = vec![QueueDefinition::events_for(id).name, requests.name];
    names.extend(requests.dead_letter.map(|d| d.name));
    for name in &names {
        let Some(queue) = ctx.sqs.find_queue(name).await? else {
            continue;
        };
        match ctx.sqs.delete_queue(&queue).await {
            Ok(()) | Err(QueueError::NotFound(_)) => {}
            Err(error) => return Err(error.into()),
        }
    }
    ctx.ssm
        .delete_parameter(&agent_config::parameter_name(id.namespace(), id.name()))
        .await?;
    finalizers::remove(&api(ctx, fleet), fleet, FINALIZER).await?;
    tracing::info!("fleet deleted: instances terminated, queues and parameter deleted");
    Ok(Action::await_change())
}

/// Drains every agent that still hosts sessions and terminates the others;
/// at `drainTimeoutSeconds` after the deletion everything goes.
async fn retire_for_deletion(
    fleet: &BrowserFleet,
    id: &FleetId,
    instances: &[FleetInstance],
    ctx: &Context,
) -> Result<(), Error> {
    let deleted_at = fleet
        .meta()
        .deletion_timestamp
        .as_ref()
        .map_or_else(Timestamp::now, |t| t.0);
    let timeout =
        Duration::from_secs(u64::try_from(fleet.spec.scaling.drain_timeout_seconds).unwrap_or(0));
    let expired = Timestamp::now().duration_since(deleted_at)
        >= jiff::SignedDuration::try_from(timeout).unwrap_or_default();
    let token = ctx
        .ensured
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(id.uid())
        .map(|e| e.fleet_token.clone());
    let token = match token {
        Some(token) => Some(token),
        None => secrets::ensure(&ctx.client, fleet)
            .await
            .ok()
            .map(|s| s.fleet_token),
    };
    let registrations = ctx.registrations.of(id.uid());
    let addresses = addresses(fleet, instances, &registrations);
    let mut terminate = Vec::new();
    for instance in instances {
        if matches!(
            instance.state,
            InstanceState::ShuttingDown | InstanceState::Terminated
        ) {
            continue;
        }
        let address = addresses
            .iter()
            .find(|(i, _)| i == &instance.id)
            .map(|(_, a)| a);
        let empty_or_gone = match (address, &token) {
            _ if expired => true,
            (Some(address), Some(token)) => match ctx.agents.state(address, token.expose()).await {
                // Another instance's agent at a reused address says nothing
                // about this one: wait for the drain timeout.
                Ok(state) if state.instance_id != instance.id.as_str() => false,
                Ok(state) if state.live_sessions() == 0 => true,
                Ok(state) => {
                    if !state.draining
                        && let Err(error) = ctx.agents.drain(address, token.expose()).await
                    {
                        tracing::warn!(instance = %instance.id, %error, "drain failed");
                    }
                    false
                }
                // Silent agents wait for the drain timeout.
                Err(_) => false,
            },
            // Never registered: nothing can live on it.
            _ => instance.state != InstanceState::Running || address.is_none(),
        };
        if empty_or_gone {
            terminate.push(instance.id.clone());
        }
    }
    if !terminate.is_empty() {
        ctx.compute.terminate(&terminate).await?;
        let names: Vec<&str> = terminate.iter().map(InstanceId::as_str).collect();
        ctx.event(
            fleet,
            false,
            "Terminating",
            format!("fleet deleted: terminating {}", names.join(", ")),
        )
        .await;
    }
    Ok(())
}
