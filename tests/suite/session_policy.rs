//! The session policy of the DevTools gateway (issue #21, items 2 and 3)
//! against real Chromium: raw CDP through the gateway, refused commands
//! answered with the policy's CDP error on a connection that keeps working,
//! and downloads and uploads confined to the session's downloads directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use testkit::agent_world::{
    AgentWorld, Cdp, attach_new_page, end_and_stop, evaluate_in, eventually, metric,
};

/// The start of every refusal the gateway answers.
const POLICY: &str = "refused by browserfleet's session policy";

/// Asserts `answer` is the gateway's policy error for command `id`.
fn assert_refused(answer: &Value, id_of: &str) {
    assert_eq!(answer["error"]["code"], -32000, "{id_of}: {answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with(POLICY), "{id_of}: {answer}");
    assert!(answer.get("result").is_none(), "{id_of}: {answer}");
}

/// Connects a raw CDP client to the browser websocket of ready session
/// `id`, through the gateway.
async fn connect(world: &AgentWorld, id: &str) -> Cdp {
    let ready = world.reply("session.ready", id).await;
    let token = ready["token"].as_str().expect("token");
    let ws = ready["endpoints"]["webSocketDebuggerUrl"]
        .as_str()
        .expect("websocket URL");
    Cdp::connect(&format!("{ws}?token={token}"))
        .await
        .expect("the gateway admits the token")
}

fn file_url(path: &Path) -> String {
    format!("file://{}", path.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_files_and_own_proxies_are_refused_and_the_connection_keeps_working() {
    let world = AgentWorld::new("policy-urls", 2).await;
    let running = world.start_agent().await;
    world.request("s-own", json!({})).await;
    world.request("s-other", json!({})).await;
    let mut cdp = connect(&world, "s-own").await;
    let page = attach_new_page(&mut cdp, "about:blank").await;
    let other_profile = world.profiles_root().join("tmp/s-other");

    for target in [world.state_dir.path().to_path_buf(), other_profile] {
        let url = file_url(&target);
        let answer = cdp
            .answer("Page.navigate", json!({"url": url}), Some(&page))
            .await;
        assert_refused(&answer, &url);
        // The answer goes back on the flattened session it came on.
        assert_eq!(answer["sessionId"], page.as_str(), "{answer}");
        let answer = cdp
            .answer("Target.createTarget", json!({"url": url}), None)
            .await;
        assert_refused(&answer, &url);
    }
    let answer = cdp
        .answer(
            "Target.createBrowserContext",
            json!({"proxyServer": "http://127.0.0.1:9"}),
            None,
        )
        .await;
    assert_refused(&answer, "createBrowserContext with proxyServer");

    // The same connection still works, for the browser and for the page.
    let version = cdp.call("Browser.getVersion", json!({}), None).await;
    assert!(version["product"].as_str().is_some(), "{version}");
    assert_eq!(
        evaluate_in(&mut cdp, &page, "location.href").await,
        "about:blank"
    );
    assert_eq!(
        metric(
            &running,
            "browserfleet_agent_cdp_refused_total{method=\"Page.navigate\"}"
        )
        .await,
        Some(2.0)
    );
    end_and_stop(running, &["s-own", "s-other"]).await;
}

/// Serves `GET /{name}` as an attachment named `name`, on loopback.
async fn attachment_server() -> String {
    let app = axum::Router::new().route(
        "/{name}",
        axum::routing::get(
            |axum::extract::Path(name): axum::extract::Path<String>| async move {
                (
                    [
                        ("content-type", "application/octet-stream".to_owned()),
                        (
                            "content-disposition",
                            format!("attachment; filename=\"{name}\""),
                        ),
                    ],
                    "browserfleet download",
                )
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{address}")
}

/// Waits until `dir/name` is a complete download.
async fn wait_downloaded(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    eventually(
        &format!("{} downloaded", path.display()),
        Duration::from_secs(10),
        || async { std::fs::read_to_string(&path).is_ok_and(|s| s == "browserfleet download") },
    )
    .await;
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_land_in_the_session_and_uploads_come_only_from_there() {
    let world = AgentWorld::new("policy-files", 1).await;
    let running = world.start_agent().await;
    world.request("s-files", json!({})).await;
    let mut cdp = connect(&world, "s-files").await;
    let downloads = world.profiles_root().join("tmp/s-files/Downloads");
    let server = attachment_server().await;
    let unique = format!("bf-{}-{}", std::process::id(), running.address.port());

    // No download behaviour set: the profile's preference decides.
    let first = format!("{unique}-preference.bin");
    cdp.call(
        "Target.createTarget",
        json!({"url": format!("{server}/{first}")}),
        None,
    )
    .await;
    wait_downloaded(&downloads, &first).await;

    // A behaviour pointing elsewhere is pointed back at the session.
    cdp.call(
        "Browser.setDownloadBehavior",
        json!({"behavior": "allow", "downloadPath": "/tmp"}),
        None,
    )
    .await;
    let second = format!("{unique}-default-context.bin");
    cdp.call(
        "Target.createTarget",
        json!({"url": format!("{server}/{second}")}),
        None,
    )
    .await;
    let downloaded = wait_downloaded(&downloads, &second).await;
    assert!(!Path::new("/tmp").join(&second).exists());

    // So is one for a new browser context.
    let context = cdp
        .call("Target.createBrowserContext", json!({}), None)
        .await;
    let context = context["browserContextId"].clone();
    cdp.call(
        "Browser.setDownloadBehavior",
        json!({"behavior": "allow", "downloadPath": "/tmp", "browserContextId": context}),
        None,
    )
    .await;
    let third = format!("{unique}-new-context.bin");
    cdp.call(
        "Target.createTarget",
        json!({"url": format!("{server}/{third}"), "browserContextId": context}),
        None,
    )
    .await;
    wait_downloaded(&downloads, &third).await;
    assert!(!Path::new("/tmp").join(&third).exists());

    // A file input takes a downloaded file, and nothing from elsewhere.
    let page = attach_new_page(&mut cdp, "data:text/html,<input type=file id=f>").await;
    // A new target commits its data: URL a moment after it opens.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while evaluate_in(&mut cdp, &page, "!!document.getElementById('f')").await != json!(true) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page never showed its input"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let document = cdp.call("DOM.getDocument", json!({}), Some(&page)).await;
    let input = cdp
        .call(
            "DOM.querySelector",
            json!({"nodeId": document["root"]["nodeId"], "selector": "#f"}),
            Some(&page),
        )
        .await;
    let node = input["nodeId"].clone();
    for outside in ["/etc/passwd", "Downloads/x.bin"] {
        let answer = cdp
            .answer(
                "DOM.setFileInputFiles",
                json!({"files": [outside], "nodeId": node}),
                Some(&page),
            )
            .await;
        assert_refused(&answer, outside);
    }
    cdp.call(
        "DOM.setFileInputFiles",
        json!({"files": [downloaded], "nodeId": node}),
        Some(&page),
    )
    .await;
    assert_eq!(
        evaluate_in(
            &mut cdp,
            &page,
            "document.getElementById('f').files[0].name"
        )
        .await,
        json!(second)
    );
    end_and_stop(running, &["s-files"]).await;
}
