//! The act step: carries out a plan — drains, terminations, and a launch
//! whose intent is in status before EC2 is called.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::memory::Ensured;
use super::plan::{self, Observed, Plan, Previous};
use super::report::{status_of, write_status};
use super::{Acted, Error};
use crate::api::BrowserFleet;
use crate::api::fleet::LaunchIntent;
use crate::cloud::{Compute, FleetId, InstanceBlueprint, InstanceId, LaunchRequest};
use crate::operator::context::Context;

/// Carries out the plan. What was done is returned with the error that
/// stopped it, if any: a launch's intent, once in status, is never taken back
/// by a failure after it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn act(
    fleet: &BrowserFleet,
    id: &FleetId,
    ensured: &Ensured,
    blueprint: Result<InstanceBlueprint, Error>,
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
    for drain in &plan.drain {
        let instance = &drain.instance;
        match ctx
            .agents
            .drain(&drain.address, ensured.secrets.fleet_token.expose())
            .await
        {
            Ok(()) => {
                ctx.event(
                    fleet,
                    false,
                    "Draining",
                    format!("draining {instance}: {}", drain.why.describe()),
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
            tracing::info!(%instance, reason = reason.describe(), "instance terminated");
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
    let blueprint = match blueprint {
        Ok(blueprint) => blueprint,
        // Nothing recorded, nothing launched: the next reconcile decides
        // again.
        Err(error) => return (acted, Some(error)),
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
    match launch_instances(fleet, id, &blueprint, launch, ctx).await {
        Ok(launched) => {
            acted.capacity_misses = launched
                .misses
                .iter()
                .map(|m| format!("{} in {}", m.instance_type, m.subnet_id))
                .collect();
            let ids: Vec<&str> = launched.instances.iter().map(|i| i.id.as_str()).collect();
            let replacing = if plan.replacing.is_empty() {
                String::new()
            } else {
                let originals: Vec<&str> = plan.replacing.iter().map(InstanceId::as_str).collect();
                format!(", the first replacing {}", originals.join(", "))
            };
            ctx.event(
                fleet,
                false,
                "Launched",
                format!(
                    "launched {} of {} (launch {}): {}{replacing}",
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
    blueprint: &InstanceBlueprint,
    launch: plan::Launch,
    ctx: &Context,
) -> Result<crate::cloud::LaunchOutcome, Error> {
    let spec = &fleet.spec;
    let subnets = spec.instance.subnet_ids.len().max(1);
    let request = LaunchRequest {
        count: launch.count,
        sequence: launch.sequence,
        first_subnet: usize::try_from(launch.sequence).unwrap_or(0) % subnets,
    };
    Ok(ctx.compute.launch(id, blueprint, request).await?)
}
