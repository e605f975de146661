//! The egress proxy: every browser the agent starts sends all its traffic —
//! pages, `fetch`, XHR, websockets, service workers, loopback included
//! (`--proxy-bypass-list=<-loopback>`) — through this HTTP proxy on
//! 127.0.0.1, which lets a connection through only to an address
//! [`policy::EgressPolicy`] allows.
//!
//! The proxy resolves names itself and connects to the very address it
//! judged, so a name that resolves to a refused address (or changes its
//! answer between a check and a connect) never reaches it. A client that
//! controls the browser through CDP cannot take its traffic elsewhere: the
//! proxy flags come from the agent, after every other argument, and the
//! gateway's CDP filter refuses a browser context with its own proxy. What
//! a proxy cannot stop (UDP from WebRTC, which the flags confine; raw
//! sockets of a compromised renderer) is what an OS rule on a real node
//! must: see docs/security.md.

pub mod bypass;
pub mod policy;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use policy::{BadRange, Denial, EgressPolicy, os_rule_ranges, parse_ranges};

use crate::protocol::ProxyConfig;

/// Longest a name lookup may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection to a destination may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Buffer of each direction of a tunnel.
const TUNNEL_BUFFER: usize = 64 * 1024;

/// Headers that belong to one hop and are not passed on.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
];

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Refusals counted by reason (`nodeService`, `blocked`, `defaultDenied`).
pub type RefusalCounter = Family<Vec<(String, String)>, Counter>;

/// The egress proxy of an agent: its port, its rules, and the counter of
/// what it refused, which its session chains share.
#[derive(Clone, Debug)]
pub struct Egress {
    /// The proxy's port on 127.0.0.1.
    pub port: u16,
    /// Its rules, also applied to a session's own proxy before launch.
    pub policy: EgressPolicy,
    /// Refusals by reason (the agent's `egress_refused` metric).
    pub refused: RefusalCounter,
}

impl Egress {
    /// Serves the proxy on `listener` until `stopping` turns true; then
    /// every open connection is dropped.
    pub async fn serve(&self, listener: TcpListener, stopping: watch::Receiver<bool>) {
        accept_loop(listener, self.shared(None), stopping).await;
    }

    /// Starts a session's chained listener on 127.0.0.1:`port` (0 picks
    /// one) that sends its traffic to `upstream` under the same rules.
    pub async fn start_chain(&self, port: u16, upstream: Upstream) -> std::io::Result<ChainGuard> {
        let listener = bind(port).await?;
        let port = listener.local_addr()?.port();
        let shared = self.shared(Some(upstream));
        let task = tokio::spawn(async move {
            // Never stopped: the guard aborts the task instead.
            let (_keep_open, stopping) = watch::channel(false);
            accept_loop(listener, shared, stopping).await;
        })
        .abort_handle();
        Ok(ChainGuard { port, task })
    }

    fn shared(&self, upstream: Option<Upstream>) -> Arc<Shared> {
        Arc::new(Shared {
            policy: self.policy.clone(),
            refused: self.refused.clone(),
            upstream,
        })
    }

    /// Whether a session's own proxy may be used: its address must pass
    /// the policy. The message never repeats the proxy (it may hold
    /// credentials).
    pub async fn check_session_proxy(&self, proxy: &ProxyConfig) -> Result<(), String> {
        let Some((host, port)) = proxy.host_port() else {
            return Err("proxy.server has no host".into());
        };
        // The failure's text names the host, which may be the proxy's: not
        // repeated.
        let addresses = resolve(&host, port)
            .await
            .map_err(|_| "proxy.server does not resolve".to_owned())?;
        self.policy.judge_all(&addresses).map_err(|denial| {
            format!("proxy.server is refused by the fleet's egress policy: {denial}")
        })
    }
}

/// A session's http proxy its traffic is chained to, when the browser alone
/// cannot use it under the policy: Chromium cannot answer a proxy's
/// challenge by itself (issue #21, item 6), and the hosts of a bypass list
/// would be reached around the egress proxy. The browser then talks to a
/// listener of the agent's own, which adds the credentials and honours the
/// bypass list (those hosts go direct, under the policy).
#[derive(Clone)]
pub struct Upstream {
    host: String,
    port: u16,
    /// `Basic <base64(user:password)>`.
    authorization: Option<crate::secret::SecretValue>,
    bypass: bypass::BypassList,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Upstream({}:{}, credentials hidden)",
            self.host, self.port
        )
    }
}

impl Upstream {
    /// The upstream of a proxy with a user name or a bypass list;
    /// `Ok(None)` for a proxy the browser can use by itself. Only `http://`
    /// proxies are chained.
    pub fn of(proxy: &ProxyConfig) -> Result<Option<Upstream>, String> {
        if proxy.username.is_none() && proxy.bypass.is_none() {
            return Ok(None);
        }
        if !proxy.server.starts_with("http://") {
            return Err(
                "proxy credentials and a bypass list are applied to http:// proxies only".into(),
            );
        }
        let Some((host, port)) = proxy.host_port() else {
            return Err("proxy.server has no host".into());
        };
        let authorization = proxy.username.as_ref().map(|username| {
            use base64::Engine;
            let password = proxy.password.as_ref().map_or("", |p| p.expose());
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            crate::secret::SecretValue::new(format!("Basic {basic}"))
        });
        Ok(Some(Upstream {
            host,
            port,
            authorization,
            bypass: bypass::BypassList::parse(proxy.bypass.as_deref().unwrap_or_default()),
        }))
    }

    /// The upstream to use for `host`: `None` when the bypass list sends it
    /// direct.
    fn for_host(&self, host: &str) -> Option<&Upstream> {
        (!self.bypass.matches(host)).then_some(self)
    }
}

/// A session's chained proxy listener; dropping it stops the listener and
/// every connection it serves.
#[derive(Debug)]
pub struct ChainGuard {
    /// Its port on 127.0.0.1.
    pub port: u16,
    task: tokio::task::AbortHandle,
}

impl Drop for ChainGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What every connection of the proxy shares.
struct Shared {
    policy: EgressPolicy,
    refused: RefusalCounter,
    /// Where the traffic goes instead of straight to its destination.
    upstream: Option<Upstream>,
}

/// Binds the proxy's listener on 127.0.0.1 (`port` 0 picks a free one).
pub async fn bind(port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)).await
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                connections.spawn(serve_connection(stream, shared.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let service = hyper::service::service_fn(move |request| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(request, &shared).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .preserve_header_case(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
}

async fn handle(request: Request<Incoming>, shared: &Shared) -> Response<ProxyBody> {
    if request.method() == Method::CONNECT {
        tunnel(request, shared).await
    } else {
        forward(request, shared).await
    }
}

/// Where a request wants to go, as written: `host` and `port`.
fn destination(request: &Request<Incoming>) -> Option<(String, u16)> {
    let uri = request.uri();
    let authority = uri.authority()?;
    let default_port = match (request.method(), uri.scheme_str()) {
        (&Method::CONNECT, _) => 443,
        (_, Some("http")) => 80,
        _ => return None,
    };
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((
        host.to_owned(),
        authority.port_u16().unwrap_or(default_port),
    ))
}

/// Why the proxy did not connect: the status and text the browser gets.
struct Failure {
    status: StatusCode,
    message: String,
}

fn failure(status: StatusCode, message: String) -> Failure {
    Failure { status, message }
}

impl Failure {
    fn into_response(self) -> Response<ProxyBody> {
        answer(self.status, self.message)
    }
}

/// A refusal or a failure, as the browser sees it.
fn answer(status: StatusCode, message: String) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(message + "\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Refuses a destination written as an address the policy refuses; a name
/// is for the upstream proxy to resolve on its own network.
fn judge_literal(shared: &Shared, host: &str, port: u16) -> Result<(), Failure> {
    match host.parse::<IpAddr>() {
        Ok(ip) => shared
            .policy
            .judge(SocketAddr::new(ip, port))
            .map_err(|denial| refuse(shared, host, port, &denial)),
        Err(_) => Ok(()),
    }
}

fn refuse(shared: &Shared, host: &str, port: u16, denial: &Denial) -> Failure {
    shared
        .refused
        .get_or_create(&vec![("reason".to_owned(), denial.kind().to_owned())])
        .inc();
    tracing::info!(%host, port, %denial, "egress refused");
    failure(
        StatusCode::FORBIDDEN,
        format!("refused by browserfleet's egress policy: {host}:{port}: {denial}"),
    )
}

/// Every address of `host` (itself when it is one), within
/// [`RESOLVE_TIMEOUT`].
async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, Failure> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| {
            failure(
                StatusCode::GATEWAY_TIMEOUT,
                format!("resolving {host} timed out"),
            )
        })?
        .map_err(|e| {
            failure(
                StatusCode::BAD_GATEWAY,
                format!("cannot resolve {host}: {e}"),
            )
        })?;
    let addresses: Vec<SocketAddr> = found.collect();
    if addresses.is_empty() {
        return Err(failure(
            StatusCode::BAD_GATEWAY,
            format!("{host} resolves to nothing"),
        ));
    }
    Ok(addresses)
}

/// Resolves `host`, judges every address, and connects to one of them.
async fn connect(shared: &Shared, host: &str, port: u16) -> Result<TcpStream, Failure> {
    let addresses = resolve(host, port).await?;
    if let Err(denial) = shared.policy.judge_all(&addresses) {
        return Err(refuse(shared, host, port, &denial));
    }
    let mut last = String::new();
    for address in addresses {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(error)) => last = error.to_string(),
            Err(_) => last = "timed out".into(),
        }
    }
    Err(failure(
        StatusCode::BAD_GATEWAY,
        format!("cannot connect to {host}:{port}: {last}"),
    ))
}

/// `CONNECT host:port`: https, wss, and anything else a browser tunnels.
async fn tunnel(request: Request<Incoming>, shared: &Shared) -> Response<ProxyBody> {
    let Some((host, port)) = destination(&request) else {
        return answer(StatusCode::BAD_REQUEST, "CONNECT needs host:port".into());
    };
    let upstream = shared.upstream.as_ref().and_then(|u| u.for_host(&host));
    let connected = match upstream {
        None => connect(shared, &host, port).await,
        Some(upstream) => match judge_literal(shared, &host, port) {
            Ok(()) => connect_through(shared, upstream, &host, port).await,
            Err(refusal) => Err(refusal),
        },
    };
    let mut upstream = match connected {
        Ok(stream) => stream,
        Err(failed) => return failed.into_response(),
    };
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(request).await else {
            return;
        };
        let mut client = TokioIo::new(upgraded);
        let _ = tokio::io::copy_bidirectional_with_sizes(
            &mut client,
            &mut upstream,
            TUNNEL_BUFFER,
            TUNNEL_BUFFER,
        )
        .await;
    });
    Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    )
}

/// Largest answer head an upstream proxy may send to a `CONNECT`.
const MAX_UPSTREAM_HEAD: usize = 16 * 1024;

/// Opens a tunnel to `host:port` through an upstream proxy, with its
/// credentials: the connection, past the proxy's `200`.
async fn connect_through(
    shared: &Shared,
    upstream: &Upstream,
    host: &str,
    port: u16,
) -> Result<TcpStream, Failure> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = connect(shared, &upstream.host, upstream.port).await?;
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let credentials = upstream
        .authorization
        .as_ref()
        .map(|a| format!("Proxy-Authorization: {}\r\n", a.expose()))
        .unwrap_or_default();
    let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{credentials}\r\n");
    let failed = |message: String| failure(StatusCode::BAD_GATEWAY, message);
    let handshake = async {
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| failed(format!("upstream proxy: {e}")))?;
        // Byte by byte up to the blank line, so that nothing of the tunnel
        // is read into a buffer here.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= MAX_UPSTREAM_HEAD {
                return Err(failed("upstream proxy: answer head too long".into()));
            }
            let byte = stream
                .read_u8()
                .await
                .map_err(|e| failed(format!("upstream proxy: {e}")))?;
            head.push(byte);
        }
        let status_line = String::from_utf8_lossy(&head);
        let status_line = status_line.lines().next().unwrap_or_default().to_owned();
        let code = status_line.split_whitespace().nth(1).unwrap_or_default();
        if code == "200" {
            Ok(())
        } else {
            Err(failed(format!("upstream proxy answered: {status_line}")))
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| failed("upstream proxy: no answer in time".into()))??;
    Ok(stream)
}

/// A plain-http request in absolute form (`GET http://host/path`), sent on
/// its own connection to the judged address.
async fn forward(request: Request<Incoming>, shared: &Shared) -> Response<ProxyBody> {
    let Some((host, port)) = destination(&request) else {
        return answer(
            StatusCode::BAD_REQUEST,
            "the egress proxy takes http://host/… requests and CONNECT".into(),
        );
    };
    let upstream = shared.upstream.as_ref().and_then(|u| u.for_host(&host));
    let connected = match upstream {
        None => connect(shared, &host, port).await,
        Some(upstream) => match judge_literal(shared, &host, port) {
            Ok(()) => connect(shared, &upstream.host, upstream.port).await,
            Err(refusal) => Err(refusal),
        },
    };
    let stream = match connected {
        Ok(stream) => stream,
        Err(failed) => return failed.into_response(),
    };
    let (mut parts, body) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    match upstream {
        // To a proxy: the absolute form, with the credentials.
        Some(upstream) => {
            if let Some(Ok(value)) = upstream
                .authorization
                .as_ref()
                .map(|a| HeaderValue::from_str(a.expose()))
            {
                parts.headers.insert(header::PROXY_AUTHORIZATION, value);
            }
        }
        None => {
            parts.uri = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .parse()
                .unwrap_or_else(|_| hyper::Uri::from_static("/"));
        }
    }
    let sent = async {
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .preserve_header_case(true)
            .handshake::<_, Incoming>(TokioIo::new(stream))
            .await?;
        tokio::spawn(connection);
        sender.send_request(Request::from_parts(parts, body)).await
    };
    match sent.await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.boxed())
        }
        Err(error) => answer(StatusCode::BAD_GATEWAY, format!("{host}:{port}: {error}")),
    }
}

fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}
