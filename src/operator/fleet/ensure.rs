//! The ensure step: the fleet's queues (with dead-letter queue and
//! redrive), its Secret and the agent configuration in SSM, converged once
//! per generation and operator process.

use std::collections::BTreeMap;

use kube::Resource;

use super::{Ensured, Error, FleetMemory};
use crate::api::BrowserFleet;
use crate::cloud::{
    FleetId, ParameterKind, ParameterWrite, Parameters, QueueDefinition, QueueUrl, Queues, SsmError,
};
use crate::operator::agent_config::{self, FleetQueues};
use crate::operator::context::Context;
use crate::operator::secrets;

/// Queues, Secret and agent configuration, converged once per generation.
pub(super) async fn ensure(
    fleet: &BrowserFleet,
    id: &FleetId,
    ctx: &Context,
    memory: &mut FleetMemory,
) -> Result<Ensured, Error> {
    let generation = fleet.meta().generation.unwrap_or_default();
    if let Some(ensured) = memory.ensured_at(generation) {
        return Ok(ensured.clone());
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
        secrets: fleet_secrets,
    };
    memory.ensured = Some(ensured.clone());
    Ok(ensured)
}
