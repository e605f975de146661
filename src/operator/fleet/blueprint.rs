//! The blueprint step: what an instance launched now is launched with (the
//! resolved image, the user data the operator renders, the rest of the
//! instance spec), and so the launch hash that tells drifted instances
//! apart (`plan::disruption`).

use std::time::{Duration, Instant};

use super::memory::{Ensured, ResolvedImage};
use super::{Error, FleetMemory};
use crate::api::BrowserFleet;
use crate::api::fleet::ImageSource;
use crate::cloud::{Compute, FleetId, ImageId, InstanceBlueprint};
use crate::operator::bootstrap;
use crate::operator::context::Context;

/// An image named by an SSM parameter (`/aws/service/ami-windows-latest/…`)
/// is read again this often: a new AMI behind it drifts the fleet within
/// this long, and a steady fleet reads the parameter a dozen times an hour
/// rather than on every reconcile.
pub const IMAGE_REFRESH: Duration = Duration::from_secs(300);

/// What an instance launched now is launched with.
pub(super) async fn blueprint(
    fleet: &BrowserFleet,
    id: &FleetId,
    ensured: &Ensured,
    ctx: &Context,
    memory: &mut FleetMemory,
) -> Result<InstanceBlueprint, Error> {
    let spec = &fleet.spec;
    let image = resolve_image(&spec.instance.image, ctx, memory).await?;
    let user_data = bootstrap::user_data(id.namespace(), id.name(), spec, &ensured.parameter);
    // A new artifact is rolled out in place (the upgrade step); alone it
    // drifts nothing.
    let mut unversioned = spec.clone();
    unversioned.agent.artifact = None;
    let drift_user_data =
        bootstrap::user_data(id.namespace(), id.name(), &unversioned, &ensured.parameter);
    Ok(InstanceBlueprint {
        cluster: ctx.cluster.clone(),
        drift_user_data: Some(drift_user_data),
        ..InstanceBlueprint::from_spec(&spec.instance, image, Some(user_data))
    })
}

/// The AMI `source` names now: an `imageId` as it is, a parameter's value
/// as read within [`IMAGE_REFRESH`].
async fn resolve_image(
    source: &ImageSource,
    ctx: &Context,
    memory: &mut FleetMemory,
) -> Result<ImageId, Error> {
    let fresh = memory
        .image
        .as_ref()
        .filter(|cached| cached.source == *source && cached.resolved_at.elapsed() < IMAGE_REFRESH);
    if let Some(cached) = fresh {
        return Ok(cached.id.clone());
    }
    let id = ctx.compute.resolve_image(source).await?;
    memory.image = Some(ResolvedImage {
        source: source.clone(),
        id: id.clone(),
        resolved_at: Instant::now(),
    });
    Ok(id)
}
