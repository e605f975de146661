//! `browserfleet operator`: the fleet and session controllers, their health
//! and metrics listener, and leader election.
//!
//! The controller reconciles a fleet when its spec or lifecycle changes
//! (generation, finalizers, deletion), on the resync timer, and when its
//! watches see a registration or a change of queue depth. Status writes do
//! not trigger a reconcile: decisions run on the policy's cadence.
//!
//! With leader election, every replica serves health and metrics, and only
//! the holder of the Lease reconciles. A replica that loses the Lease drops
//! its controller at once, reconciles in flight included, and exits (its
//! Deployment restarts it as a standby).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::PredicateConfig;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};

use crate::api::{BrowserFleet, BrowserSession};
use crate::cloud::Aws;
use crate::operator::context::{Caches, Context, Settings};
use crate::operator::events_queue::{Inbox, Registrations};
use crate::operator::fleet::{FleetController, FleetMemories, error_policy, reconcile};
use crate::operator::metrics::Metrics;
use crate::operator::sessions::{self, FleetLink, SessionController, SessionMemories};
use crate::operator::watches::{FleetWatches, WatchTiming};

/// Completes once this replica can no longer show that it holds the Lease:
/// another holder, or the Lease may expire before the next read (its last
/// confirmed renewal plus its duration is less than `poll` away). The lease
/// manager only logs API errors and keeps believing it leads, so a leader
/// cut off from the API server would go on acting after another replica
/// took over (issue #28 item 6); this reads the Lease itself every `poll`.
async fn lease_watchdog(
    leases: Api<k8s_openapi::api::coordination::v1::Lease>,
    election: LeaderElection,
    poll: Duration,
) {
    let margin = poll;
    // Just acquired: held for a whole duration from now at least.
    let mut trusted_until = std::time::Instant::now() + election.duration;
    loop {
        tokio::time::sleep(margin).await;
        // Bounded: a partition that swallows packets would hold a read for
        // the client's whole timeout, past the Lease's expiry.
        match tokio::time::timeout(poll, leases.get(&election.lease)).await {
            Ok(Ok(lease)) => match held_for(&lease, &election.identity, election.duration) {
                Some(left) => trusted_until = std::time::Instant::now() + left,
                None => {
                    tracing::warn!("the Lease names another holder");
                    return;
                }
            },
            Ok(Err(error)) => tracing::warn!(%error, "cannot read the leader Lease"),
            Err(_) => tracing::warn!("no answer reading the leader Lease"),
        }
        if std::time::Instant::now() + margin >= trusted_until {
            tracing::error!(
                "the leader Lease could not be confirmed before it may expire; stopping"
            );
            return;
        }
    }
}

/// How much longer `lease` holds for `identity` from now: its last renewal
/// plus `duration` (the Lease's own when it names one); `None` when
/// another identity holds it.
fn held_for(
    lease: &k8s_openapi::api::coordination::v1::Lease,
    identity: &str,
    duration: Duration,
) -> Option<Duration> {
    let spec = lease.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(identity) {
        return None;
    }
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(duration, Duration::from_secs);
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return Some(duration);
    };
    let until = renewed
        .0
        .checked_add(jiff::SignedDuration::try_from(duration).unwrap_or_default())
        .ok()?;
    let left = jiff::Timestamp::now().duration_until(until);
    Some(Duration::try_from(left).unwrap_or(Duration::ZERO))
}

/// How long a graceful stop waits for reconciles in flight: under the 30 s
/// a pod is given by default between SIGTERM and SIGKILL.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Leader election on a `coordination.k8s.io/v1` Lease.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Its name.
    pub lease: String,
    /// This replica's identity (the pod name in a cluster).
    pub identity: String,
    /// How long a lease holds without renewal: the takeover time when the
    /// leader dies.
    pub duration: Duration,
}

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct OperatorOptions {
    /// Only fleets in this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    pub settings: Settings,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub listen: Option<SocketAddr>,
    /// Leader election; `None` runs as the only replica.
    pub leader_election: Option<LeaderElection>,
    /// This cluster's name, tagged on every instance it launches; the
    /// orphan sweep takes only instances tagged with it, since an AWS
    /// account may hold the fleets of several clusters. `None`: the uid of
    /// the `kube-system` namespace ([`cluster_identity`]).
    pub cluster: Option<String>,
}

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The health listener could not bind.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    /// Leader election failed.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    /// Another replica took the Lease: this one stopped reconciling.
    #[error("lost the leader Lease; exiting so that this replica restarts as a standby")]
    LostLeadership,
}

/// What a running operator exposes to its caller (tests, `main`).
pub struct Running {
    pub metrics: Arc<Metrics>,
    /// Where health and metrics are served.
    pub address: Option<SocketAddr>,
}

/// Aborts its task when dropped: tasks owned by a scope.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Stops every per-fleet watch when dropped: a watch holds no reference
/// back, so without this one would outlive an operator whose future was
/// dropped.
struct StopWatchesOnDrop(Arc<FleetWatches>);

impl Drop for StopWatchesOnDrop {
    fn drop(&mut self) {
        self.0.stop_all();
    }
}

/// A fleet's reconcile is triggered by changes of what the user or the
/// lifecycle controls, not by the operator's own status writes.
fn spec_or_lifecycle(fleet: &BrowserFleet) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    fleet.meta().generation.hash(&mut hasher);
    fleet.meta().deletion_timestamp.is_some().hash(&mut hasher);
    fleet.finalizers().hash(&mut hasher);
    Some(hasher.finish())
}

/// Runs the operator until `shutdown` resolves (graceful: reconciles in
/// flight finish) or, with leader election, the Lease is lost.
/// `started` receives what the caller may observe once it serves.
pub async fn run(
    client: kube::Client,
    aws: Aws,
    options: OperatorOptions,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    started: Option<tokio::sync::oneshot::Sender<Running>>,
) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::new(aws.recorder().clone()));
    let api: Api<BrowserFleet> = match &options.namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let (reader, writer) = reflector::store();
    // Set once the fleet watch has listed everything. The store's own
    // readiness future wakes only its last waiter (the controller waits on
    // it), so nothing else may poll it.
    let synced = Arc::new(AtomicBool::new(false));
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(options.leader_election.is_none());
    // The listener lives as long as this call (the guard aborts it).
    let (address, _health) = match options.listen {
        Some(address) => {
            let (bound, task) =
                serve_health(address, metrics.clone(), synced.clone(), leader_rx.clone()).await?;
            (Some(bound), Some(AbortOnDrop(task)))
        }
        None => (None, None),
    };
    if let Some(started) = started {
        let _ = started.send(Running {
            metrics: metrics.clone(),
            address,
        });
    }
    let shutdown = shutdown.shared();

    if let Some(election) = &options.leader_election {
        // The lease manager needs 0 < grace < duration.
        let duration = election.duration.as_secs().max(2);
        let grace = (duration / 3).max(1);
        let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &election.lease)
            .with_namespace(&election.namespace)
            .with_identity(&election.identity)
            .with_duration(duration)
            .with_grace(grace)
            .build()
            .await?;
        let (mut state, lease_task) = manager.watch().await;
        tracing::info!(identity = %election.identity, lease = %election.lease, "waiting for the leader Lease");
        loop {
            if *state.borrow_and_update() {
                break;
            }
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return Err(RunError::LostLeadership) },
                () = shutdown.clone() => return Ok(()),
            }
        }
        tracing::info!(identity = %election.identity, "leading");
        let _ = leader_tx.send(true);
        // Stop reconciling when the Lease goes to another replica, or can no
        // longer be shown to be this one's.
        let lost = {
            let mut state = state.clone();
            // Twice per renewal lead: the manager renews `grace` before
            // expiry, so a healthy Lease always has more than one poll left.
            let watchdog = lease_watchdog(
                Api::namespaced(client.clone(), &election.namespace),
                election.clone(),
                Duration::from_secs(grace) / 2,
            );
            async move {
                tokio::select! {
                    _ = state.wait_for(|leading| !*leading) => {}
                    () = watchdog => {}
                }
            }
        };
        let outcome = run_controller(
            client,
            aws,
            &options,
            api,
            reader,
            writer,
            synced,
            metrics,
            shutdown.clone(),
            Some(lost),
        )
        .await;
        // Closing the channel ends the lease task, which releases the Lease.
        drop(state);
        let _ = lease_task.await;
        return outcome;
    }
    run_controller(
        client,
        aws,
        &options,
        api,
        reader,
        writer,
        synced,
        metrics,
        shutdown,
        None::<futures::future::Pending<()>>,
    )
    .await
}

/// The name of a cluster that was given none: the uid of its `kube-system`
/// namespace, which lives as long as the cluster, differs between clusters,
/// and is what tools that need a cluster id commonly take (issue #28 item
/// 3: without a name the orphan sweep did not run, and the chart named
/// none). `None`, logged, when it cannot be read (RBAC without the chart's
/// `cluster-identity` rule): then instances are launched untagged and the
/// sweep stays off, as before.
pub async fn cluster_identity(client: &kube::Client) -> Option<String> {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    match namespaces.get("kube-system").await {
        Ok(namespace) => {
            let uid = namespace.metadata.uid.filter(|uid| !uid.is_empty());
            match &uid {
                Some(uid) => tracing::info!(
                    cluster = %uid,
                    "no --cluster-name: this cluster is named by its kube-system namespace's uid"
                ),
                None => tracing::warn!(
                    "no --cluster-name, and the kube-system namespace has no uid: no orphan sweep"
                ),
            }
            uid
        }
        Err(error) => {
            tracing::warn!(
                %error,
                "no --cluster-name, and the kube-system namespace cannot be read: no orphan sweep"
            );
            None
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_controller(
    client: kube::Client,
    aws: Aws,
    options: &OperatorOptions,
    api: Api<BrowserFleet>,
    reader: Store<BrowserFleet>,
    writer: reflector::store::Writer<BrowserFleet>,
    synced: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
    lost: Option<impl Future<Output = ()> + Send + 'static>,
) -> Result<(), RunError> {
    let settings = options.settings;
    let (trigger, triggers) = futures::channel::mpsc::unbounded();
    let registrations = Arc::new(Registrations::default());
    let (inbox, inbox_receiver) = Inbox::new();
    let watches = Arc::new(FleetWatches::new(
        crate::cloud::Sqs::new(&aws),
        registrations.clone(),
        trigger,
        WatchTiming {
            depth_poll: settings.depth_poll,
            events_wait: settings.events_wait,
        },
        inbox,
        metrics.clone(),
    ));
    let session_api: Api<BrowserSession> = match &options.namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let (session_reader, session_writer) = reflector::store();
    let sessions_listed = Arc::new(AtomicBool::new(false));
    let caches = Caches {
        fleets: reader.clone(),
        fleets_listed: synced.clone(),
        sessions: session_reader.clone(),
    };
    let cluster = match &options.cluster {
        Some(name) => Some(name.clone()),
        None => cluster_identity(&client).await,
    };
    let mut ctx = Context::new(client, &aws, settings, metrics, caches);
    ctx.cluster = cluster.clone();
    let ctx = Arc::new(ctx);
    let fleet_memories = Arc::new(FleetMemories::default());
    let fleet_link = FleetLink::new(
        fleet_memories.clone(),
        registrations.clone(),
        watches.trigger(),
    );
    let fleet_controller = Arc::new(FleetController {
        ctx: ctx.clone(),
        memories: fleet_memories,
        watches: watches.clone(),
        registrations,
    });
    let session_controller = Arc::new(SessionController {
        ctx: ctx.clone(),
        fleets: fleet_link.clone(),
        memories: SessionMemories::default(),
    });
    let _replies = AbortOnDrop(tokio::spawn(sessions::replies::serve(
        inbox_receiver,
        ctx.clone(),
        fleet_link,
    )));
    // Every task below is owned by this call: when it returns, or its
    // future is dropped (a lost Lease, a caller that gives up), they end
    // with it, and so do the per-fleet watches.
    let _watches = StopWatchesOnDrop(watches.clone());
    let _sweep = cluster.map(|cluster| {
        AbortOnDrop(tokio::spawn(crate::operator::orphans::sweep_forever(
            ctx.compute.clone(),
            reader.clone(),
            synced.clone(),
            crate::operator::orphans::Scope {
                cluster,
                namespace: options.namespace.clone(),
            },
            settings.orphan_grace,
            settings.orphan_sweep,
        )))
    });
    let fleets = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .inspect(move |event| {
            if matches!(event, Ok(watcher::Event::InitDone)) {
                synced.store(true, Ordering::SeqCst);
            }
        })
        .applied_objects()
        .predicate_filter(spec_or_lifecycle, PredicateConfig::default());
    // Watches of fleets that left without our deletion path stop too.
    let _prune = {
        let watches = watches.clone();
        let fleets = reader.clone();
        AbortOnDrop(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(30));
            loop {
                ticker.tick().await;
                let uids: std::collections::HashSet<String> =
                    fleets.state().iter().filter_map(|f| f.uid()).collect();
                watches.retain(|uid| uids.contains(uid));
            }
        }))
    };
    // The controllers want a `Sync` future for their graceful shutdown: a
    // task waits for the signal and fires a oneshot to each.
    let (stop_tx, stop_rx) = futures::channel::oneshot::channel::<()>();
    let (stop_sessions_tx, stop_sessions_rx) = futures::channel::oneshot::channel::<()>();
    let stopping = shutdown.clone();
    let _waiter = AbortOnDrop(tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(());
        let _ = stop_sessions_tx.send(());
    }));
    // A controller whose cache has not listed everything yet never ends
    // its graceful shutdown (kube-runtime 5 holds its runner until the
    // cache is ready, and stops feeding the cache when the shutdown
    // begins). Nothing has been reconciled then, so it is dropped at once;
    // otherwise reconciles in flight get SHUTDOWN_GRACE to finish.
    let sessions_done = sessions_listed.clone();
    let fleets_listed = ctx.caches.fleets_listed.clone();
    let cut_short = async move {
        stopping.await;
        let listed = fleets_listed.load(Ordering::SeqCst) && sessions_done.load(Ordering::SeqCst);
        if listed {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            tracing::info!("stopping before the caches listed: nothing is in flight");
        }
    };
    // Sessions react to every change, their status included: a reconcile
    // of a session makes no call unless its phase has something to do.
    let session_objects = {
        let listed = sessions_listed.clone();
        watcher(session_api, watcher::Config::default())
            .default_backoff()
            .reflect(session_writer)
            .inspect(move |event| {
                if matches!(event, Ok(watcher::Event::InitDone)) {
                    listed.store(true, Ordering::SeqCst);
                }
            })
            .applied_objects()
    };
    let session_controller = Controller::for_stream(session_objects, session_reader)
        .with_config(controller::Config::default().concurrency(settings.concurrency.max(32)))
        .graceful_shutdown_on(stop_sessions_rx.map(|_| ()))
        .run(
            sessions::reconcile,
            sessions::error_policy,
            session_controller,
        )
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "session reconcile not run");
            }
        });
    let controller = Controller::for_stream(fleets, reader)
        .with_config(
            controller::Config::default()
                .concurrency(settings.concurrency)
                .debounce(Duration::from_millis(50)),
        )
        .reconcile_on(triggers)
        .graceful_shutdown_on(stop_rx.map(|_| ()))
        .run(reconcile, error_policy, fleet_controller)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile not run");
            }
        });
    let controllers = async {
        tokio::select! {
            _ = async { futures::join!(controller, session_controller) } => {}
            () = cut_short => tracing::warn!("stopped with reconciles still in flight"),
        }
    };
    // A lost Lease drops the controller at once, reconciles in flight
    // included: the new leader acts from now on, and this replica must not.
    let lost_leadership = match lost {
        Some(lost) => tokio::select! {
            () = controllers => false,
            () = lost => true,
        },
        None => {
            controllers.await;
            false
        }
    };
    if lost_leadership {
        return Err(RunError::LostLeadership);
    }
    tracing::info!("operator stopped");
    Ok(())
}

/// Serves `/healthz` (the process runs), `/readyz` (the fleet watch has
/// synced; a standby replica is ready too, so a rollout does not wait for
/// the Lease) and `/metrics`.
async fn serve_health(
    address: SocketAddr,
    metrics: Arc<Metrics>,
    synced: Arc<AtomicBool>,
    leading: tokio::sync::watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), RunError> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| RunError::Listen { address, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| RunError::Listen { address, source })?;
    let router = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let synced = synced.load(Ordering::SeqCst);
                let leading = *leading.borrow();
                async move {
                    if synced || !leading {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "fleet watch not synced")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        );
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "health listener stopped");
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    use super::*;

    fn lease(holder: &str, renewed_ago: i64, seconds: i32) -> Lease {
        let renewed = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(renewed_ago);
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(seconds),
                renew_time: Some(MicroTime(renewed)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_holds_for_its_holder_until_its_renewal_plus_its_duration() {
        let six = Duration::from_secs(6);
        let left = held_for(&lease("one", 2, 6), "one", six).expect("held");
        assert!(
            left <= Duration::from_secs(4) && left > Duration::from_secs(3),
            "{left:?}"
        );
        assert_eq!(
            held_for(&lease("one", 9, 6), "one", six),
            Some(Duration::ZERO)
        );
        assert_eq!(held_for(&lease("two", 0, 6), "one", six), None);
    }
}
