//! The egress policy holds against a client that controls the page through
//! CDP (issue #21, item 1): real Chromium behind the real agent's egress
//! proxy. A loopback server on 127.0.0.2 stands in for the instance
//! metadata service (the fleet blocks it, as link-local is blocked by
//! default), one on 127.0.0.1 is reached by the name `localhost`, and an
//! ordinary page on 127.0.0.3 is allowed. Each stand-in counts every TCP
//! connection it accepts: a refused route must leave the count at zero, not
//! merely fail in the page.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use browserfleet::protocol::ProxyConfig;
use browserfleet::secret::SecretValue;
use serde_json::{Value, json};
use testkit::agent_world::{
    AgentWorld, Cdp, end_and_stop, evaluate_in, eventually, metric, open_titled_page,
};
use testkit::http_proxy::authenticating_proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback HTTP server that counts the connections it accepts and
/// answers every request with `body` (and `sw.js` with a service worker
/// that fetches `sw_fetch`).
struct Counting {
    address: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Counting {
    async fn start(ip: &str, body: &'static str, sw_fetch: Option<String>) -> Counting {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
        let address = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let sw_fetch = sw_fetch.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0; 8192];
                    let Ok(n) = stream.read(&mut buffer).await else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&buffer[..n]);
                    let (kind, content) = match &sw_fetch {
                        Some(target) if head.starts_with("GET /sw.js") => (
                            "text/javascript",
                            format!(
                                "self.addEventListener('install', e => e.waitUntil(\
                                 fetch('{target}').catch(() => null)));"
                            ),
                        ),
                        _ => ("text/html", body.to_owned()),
                    };
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\n\
                         Access-Control-Allow-Origin: *\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n{content}",
                        content.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        Counting {
            address,
            connections,
        }
    }

    fn count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Runs `expression` in the page and returns what it resolved to.
async fn run(cdp: &mut Cdp, session: &str, expression: &str) -> Value {
    evaluate_in(cdp, session, expression).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_a_cdp_client_controls_reaches_a_blocked_address() {
    let metadata = Counting::start("127.0.0.2", "SECRET-CREDENTIALS", None).await;
    let named = Counting::start("127.0.0.1", "SECRET-LOCAL", None).await;
    let meta = format!("http://{}", metadata.address);
    let page = Counting::start(
        "127.0.0.3",
        "<title>allowed</title><p>an ordinary page</p>",
        Some(format!("{meta}/from-a-service-worker")),
    )
    .await;
    let mut world = AgentWorld::new("egress", 1).await;
    world.config["egress"] = json!({
        "proxyPort": 0,
        "allowed": ["127.0.0.0/8"],
        "blocked": ["127.0.0.2/32", "127.0.0.1/32", "::1"],
    });
    let running = world.start_agent().await;
    world.request("s-egress", json!({})).await;
    let ready = world.reply("session.ready", "s-egress").await;
    let token = ready["token"].as_str().unwrap();
    let ws = ready["endpoints"]["webSocketDebuggerUrl"].as_str().unwrap();
    let mut cdp = Cdp::connect(&format!("{ws}?token={token}"))
        .await
        .expect("gateway admits the token");

    // An ordinary page on an allowed address loads through the proxy.
    let page_url = format!("http://{}/", page.address);
    let (session, title) = open_titled_page(&mut cdp, &page_url).await;
    assert_eq!(title, "allowed");

    // fetch (a PUT, as for an IMDSv2 token), XHR, a websocket, and a name
    // that resolves to a blocked address: none reads a secret.
    let fetched = run(
        &mut cdp,
        &session,
        &format!(
            "fetch('{meta}/latest/api/token', {{method: 'PUT'}})\
             .then(r => r.text()).catch(e => 'failed: ' + e)"
        ),
    )
    .await;
    assert!(!fetched.to_string().contains("SECRET"), "{fetched}");
    let xhr = run(
        &mut cdp,
        &session,
        &format!(
            "new Promise(r => {{ const x = new XMLHttpRequest(); \
             x.open('GET', '{meta}/latest/meta-data/iam/'); \
             x.onload = () => r(x.responseText); x.onerror = () => r('failed'); x.send(); }})"
        ),
    )
    .await;
    assert!(!xhr.to_string().contains("SECRET"), "{xhr}");
    let socket = run(
        &mut cdp,
        &session,
        &format!(
            "new Promise(r => {{ const s = new WebSocket('ws://{}/'); \
             s.onopen = () => r('open'); s.onerror = () => r('failed'); }})",
            metadata.address
        ),
    )
    .await;
    assert_eq!(socket, json!("failed"));
    let by_name = run(
        &mut cdp,
        &session,
        &format!(
            "fetch('http://localhost:{}/').then(r => r.text()).catch(e => 'failed: ' + e)",
            named.address.port()
        ),
    )
    .await;
    assert!(!by_name.to_string().contains("SECRET"), "{by_name}");

    // A service worker of the allowed origin fetches the blocked address.
    let worker = run(
        &mut cdp,
        &session,
        "Promise.race([\
           navigator.serviceWorker.register('/sw.js').then(() => navigator.serviceWorker.ready)\
             .then(() => 'installed'),\
           new Promise(r => setTimeout(() => r('timeout'), 10000))])\
         .catch(e => 'failed: ' + e)",
    )
    .await;
    assert_eq!(
        worker,
        json!("installed"),
        "the service worker installs (its fetch fails)"
    );

    // Fetch interception: the client continues an allowed request with the
    // blocked address as its URL.
    cdp.call(
        "Fetch.enable",
        json!({"patterns": [{"urlPattern": "*intercept-me*"}]}),
        Some(&session),
    )
    .await;
    cdp.call(
        "Runtime.evaluate",
        json!({"expression": format!(
            "window.intercepted = fetch('{page_url}intercept-me')\
             .then(r => r.text()).catch(e => 'failed: ' + e); 0"
        )}),
        Some(&session),
    )
    .await;
    let paused = cdp.event("Fetch.requestPaused").await;
    cdp.call(
        "Fetch.continueRequest",
        json!({
            "requestId": paused["params"]["requestId"],
            "url": format!("{meta}/latest/meta-data/"),
        }),
        Some(&session),
    )
    .await;
    let intercepted = run(&mut cdp, &session, "window.intercepted").await;
    assert!(!intercepted.to_string().contains("SECRET"), "{intercepted}");
    cdp.call("Fetch.disable", json!({}), Some(&session)).await;

    // A navigation shows the proxy's refusal, naming the policy.
    cdp.call(
        "Page.navigate",
        json!({"url": format!("{meta}/latest/meta-data/")}),
        Some(&session),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = run(
            &mut cdp,
            &session,
            "document.body ? document.body.innerText : ''",
        )
        .await;
        assert!(!text.to_string().contains("SECRET"), "{text}");
        if text.to_string().contains("egress policy") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refusal page: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(metadata.count(), 0, "nothing reached the metadata stand-in");
    assert_eq!(
        named.count(),
        0,
        "nothing reached the address behind localhost"
    );
    assert!(page.count() >= 2, "the allowed server was reached");
    eventually("refusals are counted", Duration::from_secs(5), || async {
        metric(
            &running,
            "browserfleet_agent_egress_refused_total{reason=\"blocked\"}",
        )
        .await
        .is_some_and(|n| n >= 5.0)
    })
    .await;
    end_and_stop(running, &["s-egress"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_browses_through_its_authenticated_proxy_with_sealed_credentials() {
    // alice:s3cret
    let (proxy, seen) = authenticating_proxy("127.0.0.4", "Basic YWxpY2U6czNjcmV0").await;
    let direct = Counting::start("127.0.0.5", "<title>direct</title>", None).await;
    let world = AgentWorld::new("egress-proxy", 1).await;
    let running = world.start_agent().await;
    let mut proxy_config = ProxyConfig {
        server: format!("http://{proxy}"),
        bypass: Some("127.0.0.5;*.bypassed.example".into()),
        username: Some("alice".into()),
        password: Some(SecretValue::new("s3cret")),
        sealed_credentials: None,
    };
    proxy_config
        .seal_credentials(testkit::agent_world::MESSAGE_KEY.as_bytes(), "s-proxied")
        .unwrap();
    let proxy_json = serde_json::to_value(&proxy_config).unwrap();
    assert!(!proxy_json.to_string().contains("s3cret"), "{proxy_json}");
    assert!(proxy_json.get("username").is_none(), "{proxy_json}");
    world
        .request("s-proxied", json!({"proxy": proxy_json}))
        .await;
    let ready = world.reply("session.ready", "s-proxied").await;
    let token = ready["token"].as_str().unwrap();
    let ws = ready["endpoints"]["webSocketDebuggerUrl"].as_str().unwrap();
    let mut cdp = Cdp::connect(&format!("{ws}?token={token}")).await.unwrap();

    // A name only the proxy knows: the page comes from the proxy, asked
    // with the session's credentials.
    let (session, title) = open_titled_page(&mut cdp, "http://site.example/").await;
    assert_eq!(title, "via proxy");
    // A host of the bypass list is reached directly (under the policy).
    let bypassed = run(
        &mut cdp,
        &session,
        &format!(
            "fetch('http://{}/').then(r => r.text()).catch(e => 'failed: ' + e)",
            direct.address
        ),
    )
    .await;
    assert!(bypassed.to_string().contains("direct"), "{bypassed}");
    assert_eq!(direct.count(), 1);
    // An https request is tunnelled through the proxy, credentials and all.
    let _ = run(
        &mut cdp,
        &session,
        "fetch('https://secure.example/').then(() => 'ok').catch(() => 'failed')",
    )
    .await;
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|(line, auth)| line.starts_with("GET http://site.example/")
                && auth.as_deref() == Some("Basic YWxpY2U6czNjcmV0")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(line, auth)| line.starts_with("CONNECT secure.example:443") && auth.is_some()),
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|(_, auth)| auth.is_some()),
        "every request carried the credentials: {seen:?}"
    );
    assert!(
        !seen.iter().any(|(line, _)| line.contains("127.0.0.5")),
        "the bypassed host never reached the proxy: {seen:?}"
    );
    // The session table on disk holds them sealed only.
    let table = std::fs::read_to_string(world.state_dir.path().join("sessions.json")).unwrap();
    assert!(table.contains("sealedCredentials"), "{table}");
    assert!(
        !table.contains("s3cret") && !table.contains("YWxpY2U6czNjcmV0"),
        "{table}"
    );
    end_and_stop(running, &["s-proxied"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_sealed_for_another_session_or_fleet_are_refused() {
    let world = AgentWorld::new("egress-sealed", 1).await;
    let running = world.start_agent().await;
    let sealed_for = |key: &[u8], session: &str| {
        let mut proxy = ProxyConfig {
            server: "http://127.0.0.4:3128".into(),
            bypass: None,
            username: Some("alice".into()),
            password: Some(SecretValue::new("s3cret")),
            sealed_credentials: None,
        };
        proxy.seal_credentials(key, session).unwrap();
        serde_json::to_value(&proxy).unwrap()
    };
    let key = testkit::agent_world::MESSAGE_KEY.as_bytes();
    world
        .request("s-moved", json!({"proxy": sealed_for(key, "s-original")}))
        .await;
    let failed = world.reply("session.failed", "s-moved").await;
    assert_eq!(failed["reason"], "invalidRequest", "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("sealedCredentials"),
        "{failed}"
    );
    world
        .request(
            "s-foreign",
            json!({"proxy": sealed_for(b"another fleet's message key......", "s-foreign")}),
        )
        .await;
    let failed = world.reply("session.failed", "s-foreign").await;
    assert_eq!(failed["reason"], "invalidRequest", "{failed}");
    end_and_stop(running, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playwright_cannot_leave_the_egress_policy_either() {
    let metadata = Counting::start("127.0.0.7", "SECRET-CREDENTIALS", None).await;
    let page = Counting::start("127.0.0.8", "<title>allowed</title>", None).await;
    let mut world = AgentWorld::new("egress-playwright", 1).await;
    world.config["egress"] = json!({
        "proxyPort": 0,
        "allowed": ["127.0.0.0/8"],
        "blocked": ["127.0.0.7/32"],
    });
    let running = world.start_agent().await;
    world.request("s-pw-egress", json!({})).await;
    let ready = world.reply("session.ready", "s-pw-egress").await;
    let ws = format!(
        "{}?token={}",
        ready["endpoints"]["webSocketDebuggerUrl"].as_str().unwrap(),
        ready["token"].as_str().unwrap()
    );
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/playwright_egress.py");
    let output = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(python)
            .arg(script)
            .arg(&ws)
            .arg(format!("http://{}/", page.address))
            .arg(format!("http://{}/latest/meta-data/", metadata.address))
            .output(),
    )
    .await
    .expect("Playwright finishes in time")
    .expect("Python runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(result["allowedTitle"], "allowed", "{result}");
    assert!(!result.to_string().contains("SECRET"), "{result}");
    assert!(
        result["contextWithProxy"]
            .as_str()
            .is_some_and(|e| e.contains("session policy")),
        "{result}"
    );
    assert_eq!(
        metadata.count(),
        0,
        "nothing reached the blocked server: {result}"
    );
    end_and_stop(running, &["s-pw-egress"]).await;
}
