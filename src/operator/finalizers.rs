//! Adding and removing the operator's finalizer on any of its resources,
//! the same way for fleets and sessions.
//!
//! Not `kube::runtime::finalizer`: it removes the finalizer as soon as its
//! cleanup returns `Ok`, so a deletion that takes several reconciles (a
//! fleet drains its agents and waits for EC2 to terminate its instances; a
//! session waits for its agent's reply) would have to report "not done yet"
//! as a reconcile error, counted in the error metrics, backed off by the
//! error policy and logged as a failure. It also ends the reconcile that
//! adds the finalizer (`await_change`), which would cost every new fleet
//! and session a second round trip before its first real work.

use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

/// Adds `finalizer` to `object` and returns the object as patched. The
/// resourceVersion makes the patch fail rather than drop a finalizer
/// someone else added meanwhile.
pub async fn add<K>(api: &Api<K>, object: &K, finalizer: &str) -> Result<K, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let mut finalizers = object.finalizers().to_vec();
    finalizers.push(finalizer.to_owned());
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": object.resource_version(),
    }});
    api.patch(
        &object.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
}

/// Removes `finalizer` from `object`; an object already gone is fine.
pub async fn remove<K>(api: &Api<K>, object: &K, finalizer: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let finalizers: Vec<&String> = object
        .finalizers()
        .iter()
        .filter(|f| *f != finalizer)
        .collect();
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": object.resource_version(),
    }});
    match api
        .patch(
            &object.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(error) => Err(error),
    }
}
