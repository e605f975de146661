//! The report step: the fleet's status (applied whole, only when it
//! changed), its conditions and Events, and the errors of a failed
//! reconcile in `Degraded`.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::memory::Ensured;
use super::plan::{self, Observed, Plan, Previous};
use super::{Acted, Error, FIELD_MANAGER, api};
use crate::api::BrowserFleet;
use crate::api::fleet::{
    BrowserFleetStatus, CONDITION_DEGRADED, CONDITION_READY, CONDITION_SCALING, QueueUrls,
    ScaleDecision,
};
use crate::operator::conditions::{self, Wanted};
use crate::operator::context::Context;

fn count(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// The status after this reconcile.
pub(super) fn status_of(
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
    for (n, instance) in acted.launched.iter().enumerate() {
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
            agent_artifact_sha256: None,
            last_seen: None,
            draining_since: None,
            bootstrap: None,
            disruption: None,
            replaces: plan.replacing.get(n).map(|i| i.as_str().to_owned()),
            interruption: None,
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
        // Counted by the upgrade step.
        up_to_date_instances: 0,
        draining_instances: count(plan.draining),
        active_sessions: count(plan.sessions),
        session_capacity: count(plan.capacity),
        queue_visible: i32::try_from(observed.depth.visible).unwrap_or(i32::MAX),
        queue_in_flight: i32::try_from(observed.depth.in_flight).unwrap_or(i32::MAX),
        drifted_instances: count(plan.drifted),
        expired_instances: count(plan.expired),
        launch_hash: observed
            .launch_hash
            .as_ref()
            .map(|h| h.as_str().to_owned())
            .or(old.launch_hash.clone()),
        replacement_waiting: plan.replacement_waiting.clone(),
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
pub(super) async fn write_status(
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
            "launchHash",
            "replacementWaiting",
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

pub(super) async fn emit_scale_event(
    fleet: &BrowserFleet,
    ctx: &Context,
    previous: &Previous,
    plan: &Plan,
) {
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

/// Why a drifted or expired instance is not replaced yet: an Event when the
/// reason changes (a budget in use for an hour-long drain says so once, not
/// on every reconcile).
pub(super) async fn emit_replacement_event(fleet: &BrowserFleet, ctx: &Context, plan: &Plan) {
    let Some(waiting) = &plan.replacement_waiting else {
        return;
    };
    let before = fleet
        .status
        .as_ref()
        .and_then(|s| s.replacement_waiting.as_ref())
        .map(|w| w.reason.as_str());
    if before != Some(waiting.reason.as_str()) {
        ctx.event(
            fleet,
            false,
            "ReplacementWaiting",
            format!("{}: {}", waiting.reason, waiting.message),
        )
        .await;
    }
}

/// An invalid spec: reported, nothing launched; the Event once per
/// generation.
pub(super) async fn report_invalid(
    fleet: &BrowserFleet,
    ctx: &Context,
    message: &str,
) -> Result<(), Error> {
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
pub(super) async fn report_error(fleet: &BrowserFleet, ctx: &Context, error: &Error) {
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
