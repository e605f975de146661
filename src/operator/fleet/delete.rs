//! A fleet being deleted: its instances drained and terminated (for at most
//! `drainTimeoutSeconds`), its queues and agent configuration deleted, then
//! its finalizer removed.

use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::observe::addresses;
use super::{Error, FINALIZER, FleetController, FleetMemory, Reconciled, api};
use crate::api::BrowserFleet;
use crate::cloud::{
    Compute, Ec2State, FleetId, FleetInstance, InstanceId, Parameters, QueueDefinition, QueueError,
    Queues,
};
use crate::operator::{agent_config, finalizers, secrets};

/// A fleet being deleted: drain, terminate, delete what was created, then
/// let it go.
pub(super) async fn delete_fleet(
    fleet: &BrowserFleet,
    id: &FleetId,
    controller: &FleetController,
    memory: &FleetMemory,
) -> Result<Reconciled, Error> {
    let ctx = &controller.ctx;
    if !fleet.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Reconciled::Gone);
    }
    let instances = ctx.compute.list_instances(id).await?;
    let live: Vec<&FleetInstance> = instances
        .iter()
        .filter(|i| !matches!(i.state, Ec2State::ShuttingDown | Ec2State::Terminated))
        .collect();
    if !live.is_empty() {
        retire_for_deletion(fleet, id, &instances, controller, memory).await?;
        return Ok(Reconciled::Live(Action::requeue(Duration::from_secs(2))));
    }
    // Its watches stop before its queues go.
    controller.watches.stop(id.uid());
    controller.registrations.forget(id.uid());
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
    Ok(Reconciled::Gone)
}

/// Drains every agent that still hosts sessions and terminates the others;
/// at `drainTimeoutSeconds` after the deletion everything goes.
async fn retire_for_deletion(
    fleet: &BrowserFleet,
    id: &FleetId,
    instances: &[FleetInstance],
    controller: &FleetController,
    memory: &FleetMemory,
) -> Result<(), Error> {
    let ctx = &controller.ctx;
    let deleted_at = fleet
        .meta()
        .deletion_timestamp
        .as_ref()
        .map_or_else(Timestamp::now, |t| t.0);
    let timeout =
        Duration::from_secs(u64::try_from(fleet.spec.scaling.drain_timeout_seconds).unwrap_or(0));
    let expired = Timestamp::now().duration_since(deleted_at)
        >= jiff::SignedDuration::try_from(timeout).unwrap_or_default();
    let token = memory
        .ensured
        .as_ref()
        .map(|e| e.secrets.fleet_token.clone());
    let token = match token {
        Some(token) => Some(token),
        None => secrets::ensure(&ctx.client, fleet)
            .await
            .ok()
            .map(|s| s.fleet_token),
    };
    let registrations = controller.registrations.of(id.uid());
    let addresses = addresses(fleet, instances, &registrations);
    let mut terminate = Vec::new();
    for instance in instances {
        if matches!(
            instance.state,
            Ec2State::ShuttingDown | Ec2State::Terminated
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
                Ok(state) if state.is_empty() => true,
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
            _ => instance.state != Ec2State::Running || address.is_none(),
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
