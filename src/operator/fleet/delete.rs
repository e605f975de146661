//! A fleet being deleted: its instances drained and terminated (for at most
//! `drainTimeoutSeconds`), its queues and agent configuration deleted, then
//! its finalizer removed.
//!
//! EC2's listing may omit instances for a while after `RunInstances`, so the
//! listing alone never proves a fleet has no instance: instances status
//! records as launched but the listing does not show are terminated by id,
//! and a launch still in doubt (recorded, its instances not all listed) is
//! waited for, each within [`LISTING_LAG`] of its launch.

use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::launch::{LaunchProgress, progress};
use super::observe::addresses;
use super::plan::{LISTING_LAG, since};
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
    let now = Timestamp::now();
    let unlisted = launched_but_unlisted(fleet, &instances, now);
    // A terminate EC2 accepts settles an unlisted instance (the listing
    // leaves terminated ones out, so it may never show it); one EC2 does
    // not know yet is asked again at the next pass. Nothing runs on an
    // instance whose agent was never listed, so there is nothing to drain.
    let unsettled = !unlisted.is_empty()
        && match ctx.compute.terminate(&unlisted).await {
            Ok(()) => false,
            Err(error) => {
                tracing::info!(%error, "instances launched but not listed yet: not terminated yet");
                true
            }
        };
    let in_doubt = launch_in_doubt(fleet, &instances, now);
    if in_doubt {
        tracing::info!("a launch is in doubt; waiting for EC2's listing to show it");
    }
    if !live.is_empty() {
        retire_for_deletion(fleet, id, &instances, controller, memory).await?;
    }
    if !live.is_empty() || unsettled || in_doubt {
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

/// Instances status records as launched, within [`LISTING_LAG`] of their
/// launch, that EC2's listing does not show in any state.
fn launched_but_unlisted(
    fleet: &BrowserFleet,
    listed: &[FleetInstance],
    now: Timestamp,
) -> Vec<InstanceId> {
    let Some(status) = fleet.status.as_ref() else {
        return Vec::new();
    };
    status
        .instances
        .iter()
        .filter(|s| !listed.iter().any(|i| i.id.as_str() == s.instance_id))
        .filter(|s| {
            s.launch_time
                .as_ref()
                .is_some_and(|t| since(now, t.0) < LISTING_LAG)
        })
        .map(|s| InstanceId::new(&s.instance_id))
        .collect()
}

/// Whether a recorded launch may have instances nobody knows: decided
/// within [`LISTING_LAG`], and fewer of its instances listed (by their
/// launch's tag) or recorded in status (launched since the decision) than
/// it launches — the operator stopped between `RunInstances` and the status
/// write, or the deletion came in between.
fn launch_in_doubt(fleet: &BrowserFleet, listed: &[FleetInstance], now: Timestamp) -> bool {
    let Some(status) = fleet.status.as_ref() else {
        return false;
    };
    let Some(intent) = status.launch_intent.as_ref() else {
        return false;
    };
    if since(now, intent.decided_at.0) >= LISTING_LAG {
        return false;
    }
    matches!(
        progress(Some(intent), listed, &status.instances),
        LaunchProgress::Unfinished { .. }
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::api::fleet::{BrowserFleetStatus, InstanceStatus, LaunchIntent};
    use crate::cloud::fleet_tags::LAUNCH_SEQUENCE_TAG;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    fn recorded(id: &str, launched: i64) -> InstanceStatus {
        let mut status: InstanceStatus = serde_json::from_value(serde_json::json!({
            "instanceId": id,
            "state": "Pending",
        }))
        .expect("status");
        status.launch_time = Some(Time(at(launched)));
        status
    }

    fn listed(id: &str, sequence: u64, state: Ec2State) -> FleetInstance {
        FleetInstance {
            id: InstanceId::new(id),
            state,
            instance_type: None,
            image_id: None,
            subnet_id: None,
            availability_zone: None,
            private_ip: None,
            launch_time: None,
            tags: BTreeMap::from([(LAUNCH_SEQUENCE_TAG.to_owned(), sequence.to_string())]),
        }
    }

    fn fleet(instances: Vec<InstanceStatus>, intent: Option<LaunchIntent>) -> BrowserFleet {
        let spec = serde_json::from_value(serde_json::json!({
            "instance": {
                "platform": "Linux",
                "image": {"id": "ami-12345678"},
                "instanceTypes": ["m6i.large"],
                "subnetIds": ["subnet-01234567"],
                "securityGroupIds": ["sg-01234567"],
                "instanceProfile": "node",
            },
            "capacity": {"minInstances": 0, "maxInstances": 10},
        }))
        .expect("spec");
        let mut fleet = BrowserFleet::new("web", spec);
        fleet.status = Some(BrowserFleetStatus {
            instances,
            launch_intent: intent,
            ..Default::default()
        });
        fleet
    }

    #[test]
    fn recorded_instances_the_listing_omits_are_unlisted_until_the_lag_has_passed() {
        let fleet = fleet(vec![recorded("i-new", 100), recorded("i-shown", 100)], None);
        let shown = [listed("i-shown", 1, Ec2State::Terminated)];
        assert_eq!(
            launched_but_unlisted(&fleet, &shown, at(110)),
            [InstanceId::new("i-new")]
        );
        assert!(launched_but_unlisted(&fleet, &shown, at(100 + 120)).is_empty());
    }

    #[test]
    fn a_launch_whose_instances_are_not_all_listed_is_in_doubt_until_the_lag_has_passed() {
        let intent = LaunchIntent {
            sequence: 3,
            count: 2,
            decided_at: Time(at(100)),
        };
        let fleet = fleet(Vec::new(), Some(intent));
        let one = [listed("i-1", 3, Ec2State::Pending)];
        assert!(launch_in_doubt(&fleet, &one, at(110)));
        assert!(!launch_in_doubt(&fleet, &one, at(100 + 120)));
        let both = [
            listed("i-1", 3, Ec2State::Pending),
            listed("i-2", 3, Ec2State::ShuttingDown),
        ];
        assert!(!launch_in_doubt(&fleet, &both, at(110)));
        // The other one recorded in status (launched after the decision),
        // though the listing leaves it out: known.
        let mut known = fleet.clone();
        known.status.as_mut().unwrap().instances = vec![recorded("i-2", 101)];
        assert!(!launch_in_doubt(&known, &one, at(110)));
        // One recorded from before the decision is another launch's.
        known.status.as_mut().unwrap().instances = vec![recorded("i-0", 90)];
        assert!(launch_in_doubt(&known, &one, at(110)));
    }
}
