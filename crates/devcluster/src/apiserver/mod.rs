//! A small Kubernetes-compatible API server (`browserfleet dev apiserver`).
//!
//! No cluster or container engine can be had on our machines or in CI, and
//! the one real kube-apiserver we can build (v1.20.2, which `make test` also
//! runs the conformance suites against) lacks what current clusters have, so
//! the operator's end-to-end tests run against this server over real HTTP,
//! through kube-rs and kubectl. It keeps everything in
//! memory and behaves like kube-apiserver on what the operator and kubectl
//! use: discovery, CRD registration with structural-schema validation,
//! defaulting, pruning and CEL rules, CRUD with resourceVersion conflicts,
//! generation, the status subresource, finalizers, owner-reference garbage
//! collection, namespaces, patches, and watches with bookmarks and 410 Gone.
//! What it simplifies is said where it happens (server-side apply in
//! [`patch`], list snapshots in [`http`], storage versions in [`store`]).
//! It authorizes nothing, but logs every request in RBAC terms
//! ([`requests`]), so tests can hold a client's requests against roles.

mod go_regexp;
mod http;
mod openapi;
mod patch;
mod protobuf;
pub mod requests;
mod resources;
mod schema;
mod selectors;
mod status;
mod store;
mod table;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use self::go_regexp::go_regexp_error;
use self::http::Written;
use self::requests::{Origin, RecordedRequest, RequestLog, RequestTarget};
use self::store::Store;

/// How many changes watches can resume from; older resourceVersions get
/// 410 Gone.
pub const HISTORY_LIMIT: usize = 20_000;

/// Shared state of a running server.
pub struct Server {
    store: Mutex<Store>,
    requests: Mutex<RequestLog>,
}

impl Server {
    fn new() -> Self {
        Self {
            store: Mutex::new(Store::new(HISTORY_LIMIT)),
            requests: Mutex::new(RequestLog::default()),
        }
    }

    fn request_log(&self) -> MutexGuard<'_, RequestLog> {
        match self.requests.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Logs a served request and the admission checks for what it wrote.
    fn record(
        &self,
        user_agent: Option<String>,
        target: RequestTarget,
        writes: &[Written],
        code: u16,
    ) {
        let mut checks = Vec::new();
        if let RequestTarget::Resource(attributes) = &target {
            let store = self.lock();
            for (new, old) in writes {
                checks.extend(requests::owner_reference_checks(
                    attributes,
                    new,
                    old.as_ref(),
                    store.types(),
                ));
            }
        }
        let mut log = self.request_log();
        for check in checks {
            log.push(RecordedRequest {
                user_agent: user_agent.clone(),
                target: RequestTarget::Resource(check),
                origin: Origin::OwnerReferenceAdmission,
                code,
            });
        }
        log.push(RecordedRequest {
            user_agent,
            target,
            origin: Origin::Request,
            code,
        });
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves a store that is still
        // consistent per operation; keep serving.
        match self.store.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    /// The kube client for the server could not be built.
    #[error("cannot build a client for {url}: {message}")]
    Client {
        /// The server URL.
        url: String,
        message: String,
    },
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_state(Arc::new(Server::new()), listener, shutdown).await
}

async fn serve_state(
    server: Arc<Server>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let for_shutdown = server.clone();
    let app = axum::Router::new()
        .fallback(http::handle)
        .with_state(server);
    // Graceful shutdown waits for open responses; watches would hold it for
    // their whole timeout, so they are ended first.
    let shutdown = async move {
        shutdown.await;
        for_shutdown.lock().end_watches();
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// A kubeconfig that points kubectl and kube-rs at `url`.
pub fn kubeconfig(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: browserfleet-dev\n  cluster:\n    server: {url}\ncontexts:\n- name: browserfleet-dev\n  context:\n    cluster: browserfleet-dev\n    user: browserfleet-dev\n    namespace: default\ncurrent-context: browserfleet-dev\nusers:\n- name: browserfleet-dev\n  user: {{}}\n"
    )
}

/// A server running inside the current process on an ephemeral port, for
/// tests. Dropping it stops the server.
pub struct DevApiServer {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// A client for it, default namespace `default`.
    pub client: kube::Client,
    server: Arc<Server>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl DevApiServer {
    /// Starts a server on 127.0.0.1 with an ephemeral port.
    pub async fn start() -> Result<Self, ApiServerError> {
        let listener =
            TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|source| ApiServerError::Bind {
                    address: "127.0.0.1:0".into(),
                    source,
                })?;
        let address: SocketAddr = listener
            .local_addr()
            .map_err(|source| ApiServerError::Bind {
                address: "127.0.0.1:0".into(),
                source,
            })?;
        let url = format!("http://{address}");
        let client_error = |message: String| ApiServerError::Client {
            url: url.clone(),
            message,
        };
        let uri = url
            .parse()
            .map_err(|e: axum::http::uri::InvalidUri| client_error(e.to_string()))?;
        let client = kube::Client::try_from(kube::Config::new(uri))
            .map_err(|e| client_error(e.to_string()))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = Arc::new(Server::new());
        let task = tokio::spawn(serve_state(server.clone(), listener, async {
            let _ = stopped.await;
        }));
        Ok(Self {
            url,
            client,
            server,
            stop: Some(stop),
            task,
        })
    }

    /// Forgets every retained change and ends every open watch: a watch
    /// resuming from any earlier resourceVersion gets 410 Gone, as after an
    /// etcd compaction and an API server restart.
    pub fn forget_history(&self) {
        self.server.lock().compact_and_drop_watches();
    }

    /// Every request served since the start or the last
    /// [`DevApiServer::clear_requests`], oldest first, with the admission
    /// checks made for them (see [`requests`]); at most
    /// [`requests::LOG_LIMIT`] (see [`DevApiServer::requests_dropped`]).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.server.request_log().entries()
    }

    /// How many requests the log dropped past its limit.
    pub fn requests_dropped(&self) -> u64 {
        self.server.request_log().dropped()
    }

    /// Forgets the logged requests.
    pub fn clear_requests(&self) {
        self.server.request_log().clear();
    }

    /// A kubeconfig for this server.
    pub fn kubeconfig(&self) -> String {
        kubeconfig(&self.url)
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for DevApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
