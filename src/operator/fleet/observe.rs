//! The observe step: one look at the fleet — its instances in EC2 (one
//! listing), its request queue (one call) and every registered agent
//! (`GET /v1/state`, bounded and short).

use std::collections::BTreeMap;

use futures::StreamExt;
use jiff::Timestamp;

use super::Error;
use super::memory::Ensured;
use super::plan::{self, AgentAnswer, Observed, Previous};
use crate::api::BrowserFleet;
use crate::api::fleet::BrowserFleetStatus;
use crate::cloud::{Compute, Ec2State, FleetId, FleetInstance, InstanceId, Queues};
use crate::operator::context::Context;
use crate::operator::events_queue::Registrations;

/// One look at the fleet: EC2, the queue, the agents.
pub(super) async fn observe(
    fleet: &BrowserFleet,
    id: &FleetId,
    ensured: &Ensured,
    ctx: &Context,
    registrations: &Registrations,
    watching_since: &mut Option<Timestamp>,
) -> Result<Observed, Error> {
    let instances = ctx.compute.list_instances(id).await?;
    registrations.retain(id.uid(), |i| instances.iter().any(|x| &x.id == i));
    let registrations = registrations.of(id.uid());
    let answers = ask_agents(fleet, &instances, &registrations, ensured, ctx).await;
    // The depth after the agents' answers: a request an agent took since
    // it answered is then in flight and not among what it said it holds
    // (counted once, as waiting); one it finished is gone from both. Read
    // before, a request finished in between was counted twice.
    let depth = ctx.sqs.depth(&ensured.queues.requests).await?;
    Ok(Observed {
        now: Timestamp::now(),
        instances,
        depth,
        registrations,
        answers,
        // Set by the first observation that reached EC2 and the queue.
        watching_since: *watching_since.get_or_insert_with(Timestamp::now),
        pending_sessions: ctx.caches.pending_sessions(fleet),
        session_hosts: ctx.caches.sessions_by_instance(fleet),
        launch_hash: None,
    })
}

/// The address to dial for each running instance: its registration, or
/// the one status recorded (before its next heartbeat after a restart).
pub(super) fn addresses(
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
        .filter(|i| i.state == Ec2State::Running)
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
    let token = ensured.secrets.fleet_token.expose();
    futures::stream::iter(addresses(fleet, instances, registrations))
        .map(|(id, address)| async move {
            let answer = match ctx.agents.state(&address, token).await {
                // An address that now answers for another instance (reused
                // by a new agent) says nothing about this one.
                Ok(state) if state.instance_id == id.as_str() => AgentAnswer::State(Box::new(state)),
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

pub(super) fn previous_of(status: Option<&BrowserFleetStatus>) -> Previous {
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
