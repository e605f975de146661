//! The endpoints a session hands out work with CDP clients no one here wrote:
//! Playwright for Python's `connect_over_cdp` (installed into .venv/ by
//! scripts/install-playwright.sh, which `make test` runs) through the HTTP
//! base and the websocket URL, with the token in the header and in the query;
//! and the gateway answers Chromium's discovery paths the way Chromium does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use testkit::agent_world::{AgentWorld, end_and_stop};
use testkit::http;

fn python() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        path.exists(),
        "{} is missing: run `bash scripts/install-playwright.sh` (make test does)",
        path.display()
    );
    path
}

/// Runs tests/python/playwright_cdp.py against `endpoint`, the token in the
/// header when given; its exit and output, within 90 seconds.
async fn run_playwright(endpoint: &str, header_token: Option<&str>) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/playwright_cdp.py");
    let mut command = tokio::process::Command::new(python());
    command.arg(&script).arg(endpoint);
    if let Some(token) = header_token {
        command.arg(token);
    }
    tokio::time::timeout(Duration::from_secs(90), command.output())
        .await
        .expect("Playwright finishes in time")
        .expect("Python runs")
}

/// What the page answered Playwright through `endpoint`; fails the test when
/// Playwright fails.
async fn playwright(endpoint: &str, header_token: Option<&str>) -> Value {
    let out = run_playwright(endpoint, header_token).await;
    assert!(
        out.status.success(),
        "Playwright failed on {endpoint}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playwright_connects_through_both_endpoints_with_the_token_in_header_or_query() {
    let world = AgentWorld::new("gateway-playwright", 1).await;
    let running = world.start_agent().await;
    world.request("s-pw", json!({})).await;
    let ready = world.reply("session.ready", "s-pw").await;
    let token = ready["token"].as_str().expect("token").to_owned();
    let http_base = ready["endpoints"]["httpBase"].as_str().unwrap().to_owned();
    let ws = ready["endpoints"]["webSocketDebuggerUrl"]
        .as_str()
        .unwrap()
        .to_owned();

    let cases = [
        (
            "HTTP base, token in header",
            http_base.clone(),
            Some(token.as_str()),
        ),
        (
            "HTTP base, token in query",
            format!("{http_base}?token={token}"),
            None,
        ),
        (
            "websocket, token in header",
            ws.clone(),
            Some(token.as_str()),
        ),
        (
            "websocket, token in query",
            format!("{ws}?token={token}"),
            None,
        ),
    ];
    for (what, endpoint, header_token) in cases {
        let answer = playwright(&endpoint, header_token).await;
        assert_eq!(answer["evaluate"], 42, "{what}: {answer}");
        assert_eq!(
            answer["text"], "hello from browserfleet",
            "{what}: {answer}"
        );
        assert!(
            answer["version"].as_str().is_some_and(|v| !v.is_empty()),
            "{what}: {answer}"
        );
    }
    // A client without the token gets nowhere, through either endpoint.
    for endpoint in [&http_base, &ws] {
        let out = run_playwright(endpoint, None).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("401"),
            "{endpoint}: expected the gateway's 401, got: {stderr}"
        );
    }
    // The clients disconnected; the session's browser is still there.
    world.port_of(&running, "s-pw").await;
    end_and_stop(running, &["s-pw"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_answers_every_discovery_path_as_chromium_does() {
    let world = AgentWorld::new("gateway-discovery", 1).await;
    let running = world.start_agent().await;
    world.request("s-paths", json!({})).await;
    let ready = world.reply("session.ready", "s-paths").await;
    let token = ready["token"].as_str().unwrap().to_owned();
    let port = world.port_of(&running, "s-paths").await;
    let gateway = format!("http://{}/sessions/s-paths", running.address);
    let browser = format!("http://127.0.0.1:{port}");
    for path in [
        "/json/version",
        "/json/version/",
        "/json",
        "/json/",
        "/json/list",
        "/json/list/",
    ] {
        let (direct, direct_body) = http::call("GET", &format!("{browser}{path}"), None).await;
        let (through, through_body) =
            http::call("GET", &format!("{gateway}{path}"), Some(&token)).await;
        assert_eq!(
            through, direct,
            "{path}: Chromium answers {direct} ({direct_body}), the gateway {through} ({through_body})"
        );
        if direct == 200 {
            let direct: Value = serde_json::from_str(&direct_body).unwrap();
            let through: Value = serde_json::from_str(&through_body).unwrap();
            assert_eq!(
                direct.is_array(),
                through.is_array(),
                "{path}: the same kind of document"
            );
            if let Some(browser) = direct.get("Browser") {
                assert_eq!(&through["Browser"], browser, "{path}");
                // The one URL a client follows leads back through the gateway.
                let ws = through["webSocketDebuggerUrl"].as_str().unwrap_or_default();
                assert!(
                    ws.starts_with(&format!(
                        "ws://{}/sessions/s-paths/devtools/browser/",
                        running.address
                    )),
                    "{path}: {ws}"
                );
            }
        }
    }
    end_and_stop(running, &["s-paths"]).await;
}
