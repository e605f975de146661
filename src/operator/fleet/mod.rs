//! The fleet reconciler: one `BrowserFleet` to queues, a Secret, the agent
//! configuration in SSM, and EC2 instances whose agents registered. Each
//! reconcile loads the fleet's [`FleetMemory`], runs one pipeline,
//! level-triggered and idempotent, a module per step, and stores the memory
//! once at its end:
//!
//! 1. **finalizer** on the fleet before anything exists in AWS;
//! 2. **validate** the spec: violations are reported (`Ready=False`,
//!    `InvalidSpec`, a Warning Event) and nothing is launched;
//! 3. [`ensure`] queues, Secret and agent configuration, once per
//!    generation and operator process (a steady reconcile makes no call for
//!    them);
//! 4. [`observe`] EC2 (one listing), the queue (one call) and every
//!    registered agent (`GET /v1/state`, bounded and short), and the
//!    [`blueprint`] instances are launched with now (its hash tells
//!    drifted instances apart);
//! 5. [`plan`] the lifecycle, size and replacements (pure);
//! 6. [`act`]: launch (the intent is in status before EC2 is called), drain,
//!    terminate;
//! 7. [`upgrade`]: a changed agent artifact rolled out to running
//!    instances in place, through SSM Run Command, in bounded batches;
//! 8. [`report`] status by server-side apply, only when it changed.
//!
//! Deleting a fleet ([`delete`]) drains and terminates its instances (for at
//! most `drainTimeoutSeconds`), deletes what the operator created in AWS,
//! and then removes the finalizer.

mod act;
mod blueprint;
mod delete;
mod ensure;
pub mod launch;
mod memory;
mod observe;
pub mod plan;
mod report;
pub mod upgrade;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};

use crate::api::BrowserFleet;
use crate::api::fleet::LaunchIntent;
use crate::cloud::{
    AwsFault, ComputeError, FaultKind, FleetId, FleetIdError, FleetInstance, InstanceId,
    QueueError, SsmError,
};
use crate::operator::agent_config::RenderError;
use crate::operator::context::Context;
use crate::operator::events_queue::Registrations;
use crate::operator::finalizers;
use crate::operator::secrets::SecretsError;
use crate::operator::watches::{FleetWatches, WatchedQueues};

pub use memory::{Ensured, FleetMemories, FleetMemory};

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
    /// An EC2 call failed.
    #[error(transparent)]
    Compute(#[from] ComputeError),
    /// An SQS call failed.
    #[error(transparent)]
    Queues(#[from] QueueError),
    /// An SSM call failed.
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

/// What the fleet controller reconciles with: the shared clients, the
/// fleets' memory, and the per-fleet watches it starts and stops.
pub struct FleetController {
    pub ctx: Arc<Context>,
    pub memories: Arc<FleetMemories>,
    pub watches: Arc<FleetWatches>,
    /// The agents heard on the events queues (the watches record them).
    pub registrations: Arc<Registrations>,
}

/// Reconciles one fleet.
pub async fn reconcile(
    fleet: Arc<BrowserFleet>,
    controller: Arc<FleetController>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let span = tracing::info_span!("reconcile", fleet = %format!("{}/{}", fleet.namespace().unwrap_or_default(), fleet.name_any()));
    let uid = fleet.uid().unwrap_or_default();
    let mut memory = controller.memories.load(&uid);
    let outcome =
        tracing::Instrument::instrument(reconcile_fleet(&fleet, &controller, &mut memory), span)
            .await;
    let ctx = &controller.ctx;
    let result = match outcome {
        Ok(Reconciled::Live(action)) => {
            memory.failures = 0;
            controller.memories.store(&uid, memory);
            Ok(action)
        }
        Ok(Reconciled::Gone) => {
            controller.memories.forget(&uid);
            Ok(Action::await_change())
        }
        Err(error) => {
            memory.failures = memory.failures.saturating_add(1);
            controller.memories.store(&uid, memory);
            Err(error)
        }
    };
    let kind = result.as_ref().err().map(Error::reason);
    ctx.metrics
        .reconciled(started.elapsed().as_secs_f64(), kind);
    if let Err(error) = &result {
        tracing::warn!(fleet = %fleet.name_any(), %error, "reconcile failed");
        report::report_error(&fleet, ctx, error).await;
    }
    result
}

/// Requeues a failed fleet with a capped exponential back-off over its
/// failures in a row: from 1 s (up to 1 min) for errors that may pass, from
/// 30 s (up to 5 min) for the ones that need a change.
pub fn error_policy(
    fleet: Arc<BrowserFleet>,
    error: &Error,
    controller: Arc<FleetController>,
) -> Action {
    let failures = controller
        .memories
        .failures(&fleet.uid().unwrap_or_default())
        .max(1);
    let (base, cap) = if error.is_retryable() {
        (Duration::from_secs(1), Duration::from_secs(60))
    } else {
        (Duration::from_secs(30), Duration::from_secs(300))
    };
    let exponent = failures.saturating_sub(1).min(16);
    Action::requeue(base.saturating_mul(1 << exponent).min(cap))
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

/// How a reconcile left the fleet.
enum Reconciled {
    /// It lives on: come back after this.
    Live(Action),
    /// Deleted, with everything it had in AWS: forget it.
    Gone,
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

async fn reconcile_fleet(
    fleet: &BrowserFleet,
    controller: &FleetController,
    memory: &mut FleetMemory,
) -> Result<Reconciled, Error> {
    let ctx = &controller.ctx;
    let id = fleet_id(fleet)?;
    if fleet.meta().deletion_timestamp.is_some() {
        return delete::delete_fleet(fleet, &id, controller, memory).await;
    }
    if !fleet.finalizers().iter().any(|f| f == FINALIZER) {
        finalizers::add(&api(ctx, fleet), fleet, FINALIZER).await?;
    }
    if let Err(violations) = fleet.spec.validate() {
        report::report_invalid(fleet, ctx, &violations.to_string()).await?;
        return Ok(Reconciled::Live(Action::await_change()));
    }
    let ensured = match ensure::ensure(fleet, &id, ctx, memory).await {
        Ok(ensured) => ensured,
        Err(Error::Render(error)) => {
            report::report_invalid(fleet, ctx, &error.to_string()).await?;
            return Ok(Reconciled::Live(Action::await_change()));
        }
        Err(error) => return Err(error),
    };
    controller.watches.ensure(
        &ObjectRef::from_obj(fleet),
        id.uid(),
        &WatchedQueues {
            requests: ensured.queues.requests.clone(),
            events: ensured.queues.events.clone(),
            message_key: ensured.secrets.message_key.clone(),
        },
    );
    let mut observed = observe::observe(
        fleet,
        &id,
        &ensured,
        ctx,
        &controller.registrations,
        &mut memory.watching_since,
    )
    .await?;
    let blueprint = blueprint::blueprint(fleet, &id, &ensured, ctx, memory).await;
    match &blueprint {
        Ok(blueprint) => observed.launch_hash = Some(blueprint.launch_hash()),
        // A launch reports it; until then only drift by the hash waits.
        Err(error) => tracing::warn!(%error, "what instances launch with is unknown"),
    }
    let previous = observe::previous_of(fleet.status.as_ref());
    let (plan, policy) = plan::plan(
        &fleet.spec,
        &previous,
        &observed,
        memory.policy.as_ref(),
        &ctx.settings.rules,
    );
    memory.policy = Some(policy);
    let (acted, failure) = act::act(
        fleet, &id, &ensured, blueprint, &previous, &plan, &observed, ctx,
    )
    .await;
    let mut status = report::status_of(fleet, &ensured, &plan, &observed, &acted, failure.as_ref());
    upgrade::roll_out(fleet, &mut status, ctx, &mut memory.upgrades).await;
    ctx.metrics.fleet(
        &id.to_string(),
        plan.decision.desired,
        plan.current,
        plan.ready,
        plan.sessions,
        observed.depth.visible,
    );
    report::write_status(fleet, ctx, &status).await?;
    report::emit_scale_event(fleet, ctx, &previous, &plan).await;
    report::emit_replacement_event(fleet, ctx, &plan).await;
    match failure {
        Some(error) => Err(error),
        None => Ok(Reconciled::Live(Action::requeue(ctx.settings.resync))),
    }
}
