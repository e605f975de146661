//! The orphan sweep: instances carrying our managed tag whose fleet no
//! longer exists (deleted while the operator was down, or its finalizer
//! removed by hand), or exists under another uid (deleted and created
//! again), are terminated once they are older than a grace period. The grace
//! period covers an instance launched a moment before its fleet was seen.
//!
//! The sweep takes only instances tagged with its operator's cluster name
//! (`--cluster-name`; without one there is no sweep), since one AWS account
//! may hold the fleets of several clusters; and an operator that watches one
//! namespace sweeps only that namespace's instances: it cannot see the fleets
//! of the others.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use kube::ResourceExt;
use kube::runtime::reflector::Store;

use crate::api::BrowserFleet;
use crate::cloud::fleet_tags::{CLUSTER_TAG, FLEET_TAG, FLEET_UID_TAG};
use crate::cloud::{Compute, Ec2Compute, Ec2State, FleetInstance, InstanceId, ManagedFilter};

/// A fleet as the sweep knows it: `namespace/name` and uid.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KnownFleet {
    /// `namespace/name`.
    pub key: String,
    pub uid: String,
}

/// Whose instances a sweep may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// Only instances tagged with this cluster name.
    pub cluster: String,
    /// Only fleets of this namespace; every namespace's when `None`.
    pub namespace: Option<String>,
}

/// The instances to terminate: in scope, older than `grace`, and of no
/// known fleet.
pub fn orphans(
    instances: &[FleetInstance],
    fleets: &BTreeSet<KnownFleet>,
    scope: &Scope,
    now: SystemTime,
    grace: Duration,
) -> Vec<InstanceId> {
    let namespace = scope.namespace.as_deref();
    instances
        .iter()
        .filter(|i| !matches!(i.state, Ec2State::ShuttingDown | Ec2State::Terminated))
        .filter(|i| i.tags.get(CLUSTER_TAG) == Some(&scope.cluster))
        .filter(|i| {
            let Some(key) = i.tags.get(FLEET_TAG) else {
                // Ours, but of no fleet: nothing will ever manage it. Only
                // an operator of every namespace may take it.
                return namespace.is_none();
            };
            let in_scope =
                namespace.is_none_or(|ns| key.split_once('/').is_some_and(|(n, _)| n == ns));
            let uid = i.tags.get(FLEET_UID_TAG).cloned().unwrap_or_default();
            in_scope
                && !fleets.contains(&KnownFleet {
                    key: key.clone(),
                    uid,
                })
        })
        .filter(|i| {
            i.launch_time
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= grace)
        })
        .map(|i| i.id.clone())
        .collect()
}

/// Sweeps every `interval` once the fleet watch has `synced` (before that,
/// every instance would look orphaned), until dropped.
pub async fn sweep_forever(
    compute: Ec2Compute,
    fleets: Store<BrowserFleet>,
    synced: Arc<AtomicBool>,
    scope: Scope,
    grace: Duration,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if !synced.load(Ordering::SeqCst) {
            continue;
        }
        let known: BTreeSet<KnownFleet> = fleets
            .state()
            .iter()
            .map(|f| KnownFleet {
                key: format!("{}/{}", f.namespace().unwrap_or_default(), f.name_any()),
                uid: f.uid().unwrap_or_default(),
            })
            .collect();
        // EC2 leaves out other clusters' instances; `orphans` checks again.
        let mine = ManagedFilter {
            cluster: Some(scope.cluster.clone()),
            fleets: None,
        };
        let instances = match compute.list_managed(&mine).await {
            Ok(instances) => instances,
            Err(error) => {
                tracing::warn!(%error, "orphan sweep cannot list instances");
                continue;
            }
        };
        let orphans = orphans(&instances, &known, &scope, SystemTime::now(), grace);
        if orphans.is_empty() {
            continue;
        }
        let names: Vec<&str> = orphans.iter().map(InstanceId::as_str).collect();
        tracing::warn!(instances = %names.join(","), "terminating instances whose fleet is gone");
        if let Err(error) = compute.terminate(&orphans).await {
            tracing::warn!(%error, "orphan sweep cannot terminate");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn scope(namespace: Option<&str>) -> Scope {
        Scope {
            cluster: "here".into(),
            namespace: namespace.map(str::to_owned),
        }
    }

    fn instance(id: &str, fleet: Option<(&str, &str)>, age: u64) -> FleetInstance {
        let mut tags = BTreeMap::from([(CLUSTER_TAG.to_owned(), "here".to_owned())]);
        if let Some((key, uid)) = fleet {
            tags.insert(FLEET_TAG.to_owned(), key.to_owned());
            tags.insert(FLEET_UID_TAG.to_owned(), uid.to_owned());
        }
        FleetInstance {
            id: InstanceId::new(id),
            state: Ec2State::Running,
            instance_type: None,
            image_id: None,
            subnet_id: None,
            availability_zone: None,
            private_ip: None,
            launch_time: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1000 - age)),
            tags,
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1000)
    }

    fn known(key: &str, uid: &str) -> KnownFleet {
        KnownFleet {
            key: key.into(),
            uid: uid.into(),
        }
    }

    #[test]
    fn instances_of_a_gone_or_recreated_fleet_are_orphans_after_the_grace() {
        let fleets = BTreeSet::from([known("qa/web", "u1")]);
        let instances = [
            instance("i-live", Some(("qa/web", "u1")), 500),
            instance("i-gone", Some(("qa/old", "u2")), 500),
            instance("i-recreated", Some(("qa/web", "u0")), 500),
            instance("i-young", Some(("qa/old", "u2")), 10),
            instance("i-untagged-fleet", None, 500),
        ];
        let found = orphans(
            &instances,
            &fleets,
            &scope(None),
            now(),
            Duration::from_secs(300),
        );
        let ids: Vec<&str> = found.iter().map(InstanceId::as_str).collect();
        assert_eq!(ids, ["i-gone", "i-recreated", "i-untagged-fleet"]);
    }

    #[test]
    fn another_clusters_instances_are_never_swept() {
        let mut theirs = instance("i-theirs", Some(("qa/old", "u2")), 500);
        theirs
            .tags
            .insert(CLUSTER_TAG.to_owned(), "there".to_owned());
        let mut untagged = instance("i-untagged", Some(("qa/old", "u2")), 500);
        untagged.tags.remove(CLUSTER_TAG);
        let found = orphans(
            &[theirs, untagged],
            &BTreeSet::new(),
            &scope(None),
            now(),
            Duration::from_secs(300),
        );
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn a_namespaced_operator_sweeps_only_its_namespace() {
        let instances = [
            instance("i-mine", Some(("qa/old", "u2")), 500),
            instance("i-theirs", Some(("prod/old", "u3")), 500),
        ];
        let found = orphans(
            &instances,
            &BTreeSet::new(),
            &scope(Some("qa")),
            now(),
            Duration::from_secs(300),
        );
        assert_eq!(found, vec![InstanceId::new("i-mine")]);
    }
}
