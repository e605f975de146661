//! Scenario benchmark of the development API server (`make apiserver-bench`):
//! 10,000 BrowserSession creates, full lists of them and resident memory per
//! stored object; then 50 watchers and 10,000 more creates they must all see. Prints one table; numbers go to
//! docs/performance.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use browserfleet::api::{self, BrowserSession};
use devcluster::apiserver::DevApiServer;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};

const OBJECTS: usize = 10_000;
const WATCHERS: usize = 50;
const CONCURRENCY: usize = 32;

/// Resident set size of this process, from /proc/self/statm.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn session(i: usize) -> BrowserSession {
    let value = serde_json::json!({
        "apiVersion": "browserfleet.io/v1alpha1",
        "kind": "BrowserSession",
        "metadata": {"name": format!("session-{i:05}"), "labels": {"bench": "apiserver"}},
        "spec": {"fleetRef": {"name": "bench"}, "ttlSeconds": 600, "args": ["--lang=en-US"], "startUrl": "https://example.com/"},
    });
    serde_json::from_value(value).expect("valid session")
}

/// Creates sessions `first..first + OBJECTS`, `CONCURRENCY` at a time.
async fn create_all(sessions: &Api<BrowserSession>, first: usize) -> Duration {
    let started = Instant::now();
    futures::stream::iter(first..first + OBJECTS)
        .map(|i| {
            let sessions = sessions.clone();
            async move {
                sessions
                    .create(&PostParams::default(), &session(i))
                    .await
                    .expect("create")
            }
        })
        .buffer_unordered(CONCURRENCY)
        .for_each(|_| async {})
        .await;
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let server = DevApiServer::start().await.expect("server starts");
    let crds: Api<CustomResourceDefinition> = Api::all(server.client.clone());
    for crd in api::crds() {
        crds.create(&PostParams::default(), &crd)
            .await
            .expect("CRD");
    }
    let sessions: Api<BrowserSession> = Api::namespaced(server.client.clone(), "default");

    // Phase 1: creates alone, then lists, then memory.
    let memory_before = resident_bytes();
    let create_time = create_all(&sessions, 0).await;
    let mut list_times = Vec::new();
    let mut raw_list_times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let list = sessions.list(&ListParams::default()).await.expect("list");
        assert_eq!(list.items.len(), OBJECTS);
        list_times.push(t.elapsed());
        let t = Instant::now();
        let request =
            http::Request::get("/apis/browserfleet.io/v1alpha1/namespaces/default/browsersessions")
                .body(Vec::new())
                .unwrap();
        let body = server.client.request_text(request).await.expect("raw list");
        assert!(body.len() > OBJECTS * 100);
        raw_list_times.push(t.elapsed());
    }
    list_times.sort();
    raw_list_times.sort();
    let memory_after = resident_bytes();

    // Phase 2: 50 watchers, then another 10,000 creates they must all see.
    let start_rv = sessions
        .list(&ListParams::default().limit(1))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let stream = sessions
            .watch(&WatchParams::default().timeout(600), &start_rv)
            .await
            .expect("watch starts");
        let seen = seen.clone();
        watchers.push(tokio::spawn(async move {
            let mut added = 0usize;
            let mut stream = stream.boxed();
            while let Ok(Some(event)) = stream.try_next().await {
                if let WatchEvent::Added(_) = event {
                    added += 1;
                    seen.fetch_add(1, Ordering::Relaxed);
                    if added == OBJECTS {
                        break;
                    }
                }
            }
            added
        }));
    }
    let started = Instant::now();
    let watched_create_time = create_all(&sessions, OBJECTS).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen.load(Ordering::Relaxed) < OBJECTS * WATCHERS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fan_out_time = started.elapsed();
    let mut complete = 0;
    for w in watchers {
        if w.await.unwrap_or(0) == OBJECTS {
            complete += 1;
        }
    }

    println!("| measure | value |");
    println!("|---|---:|");
    println!("| creates | {OBJECTS} BrowserSessions, {CONCURRENCY} in flight |");
    println!(
        "| creates/s | {:.0} |",
        OBJECTS as f64 / create_time.as_secs_f64()
    );
    println!(
        "| full list of {OBJECTS}, HTTP only, median of 5 | {:.0} ms |",
        raw_list_times[2].as_secs_f64() * 1000.0
    );
    println!(
        "| full list of {OBJECTS}, kube-rs typed (HTTP + decoding), median of 5 | {:.0} ms |",
        list_times[2].as_secs_f64() * 1000.0
    );
    println!(
        "| creates/s with {WATCHERS} watchers streaming in the same process | {:.0} |",
        OBJECTS as f64 / watched_create_time.as_secs_f64()
    );
    println!("| watchers that saw all {OBJECTS} ADDED events | {complete} of {WATCHERS} |");
    println!(
        "| time from first create to the last watcher's last event | {:.2} s |",
        fan_out_time.as_secs_f64()
    );
    println!(
        "| resident memory per stored object (server, history and client in one process) | {:.1} KiB |",
        memory_after.saturating_sub(memory_before) as f64 / OBJECTS as f64 / 1024.0
    );
}
