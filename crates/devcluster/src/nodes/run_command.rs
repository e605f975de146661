//! SSM Run Command, played for the simulated nodes: moto records a
//! `SendCommand` and reports every invocation `Success` at once without
//! running anything. This stand-in sits in front of moto on the same wire
//! protocol (AWS JSON 1.1, `X-Amz-Target`), answers `SendCommand` and
//! `GetCommandInvocation` itself and forwards every other request to moto
//! untouched, so a client pointed at it (the operator) sees one AWS.
//!
//! What it models of SSM (the documented behaviour, not more):
//! * `AWS-RunShellScript` only: the `commands` lines, joined, run with `sh`
//!   on the node as root, as the SSM agent runs them (on a
//!   [`BootMode::UserData`](super::BootMode::UserData) node: the node's
//!   root and `systemctl` shim are in the environment, and a unit the
//!   commands restart is restarted by the simulator);
//! * an invocation goes `Pending` → `InProgress` → `Success` (exit 0) or
//!   `Failed` (`ResponseCode` the exit code), or `TimedOut` after the
//!   command's `TimeoutSeconds` (default 3600);
//! * `MaxConcurrency` (a count or a percentage of the targets, default 50)
//!   bounds the invocations running at once; once more than `MaxErrors`
//!   (a count or percentage, default 0) have failed, the ones not started
//!   end `Cancelled`;
//! * an instance the simulator does not play is refused with
//!   `InvalidInstanceId`, as SSM refuses an instance that is not a managed
//!   node; an unknown invocation with `InvocationDoesNotExist`;
//! * output is cut at 24,000 characters, as `GetCommandInvocation` cuts it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{self, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use browserfleet::cloud::InstanceId;

use super::Shared;

/// Output kept per stream, as `GetCommandInvocation` returns it.
const OUTPUT_LIMIT: usize = 24_000;
/// A command's default `TimeoutSeconds`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

/// One invocation's record.
#[derive(Clone, Debug)]
struct Invocation {
    status: &'static str,
    response_code: i32,
    stdout: String,
    stderr: String,
}

impl Invocation {
    fn pending() -> Self {
        Invocation {
            status: "Pending",
            response_code: -1,
            stdout: String::new(),
            stderr: String::new(),
        }
    }
}

/// What the stand-in serves with.
#[derive(Clone)]
pub(super) struct RunCommand {
    nodes: Arc<Shared>,
    moto: String,
    client: Client<HttpConnector, Body>,
    invocations: Arc<Mutex<BTreeMap<(String, String), Invocation>>>,
}

impl RunCommand {
    pub(super) fn new(nodes: Arc<Shared>, moto: String) -> Self {
        RunCommand {
            nodes,
            moto: moto.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            invocations: Arc::default(),
        }
    }

    /// Serves on `listener` until the task is aborted.
    pub(super) async fn serve(self, listener: tokio::net::TcpListener) {
        let app = axum::Router::new().fallback(handle).with_state(self);
        if let Err(error) = axum::serve(listener, app).await {
            tracing::warn!(%error, "the Run Command stand-in stopped");
        }
    }

    fn record(&self, command: &str, instance: &str, invocation: Invocation) {
        self.invocations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((command.to_owned(), instance.to_owned()), invocation);
    }

    fn get(&self, command: &str, instance: &str) -> Option<Invocation> {
        self.invocations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(command.to_owned(), instance.to_owned()))
            .cloned()
    }
}

async fn handle(State(stand_in): State<RunCommand>, request: Request) -> Response {
    let target = request
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    match target.as_str() {
        "AmazonSSM.SendCommand" | "AmazonSSM.GetCommandInvocation" => {
            let body = match axum::body::to_bytes(request.into_body(), 1 << 20).await {
                Ok(body) => body,
                Err(_) => return error(400, "ValidationException", "unreadable body"),
            };
            let input: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if target == "AmazonSSM.SendCommand" {
                send_command(&stand_in, &input)
            } else {
                get_invocation(&stand_in, &input)
            }
        }
        _ => forward(&stand_in, request).await,
    }
}

async fn forward(stand_in: &RunCommand, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let Ok(uri) = format!("{}{path}", stand_in.moto).parse() else {
        return error(500, "InternalServerError", "bad forward address");
    };
    parts.uri = uri;
    parts.headers.remove(http::header::HOST);
    match stand_in
        .client
        .request(Request::from_parts(parts, body))
        .await
    {
        Ok(response) => response.map(Body::new).into_response(),
        Err(e) => error(502, "InternalServerError", &format!("moto: {e}")),
    }
}

fn error(status: u16, code: &str, message: &str) -> Response {
    let body = json!({"__type": code, "message": message}).to_string();
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        [(http::header::CONTENT_TYPE, "application/x-amz-json-1.1")],
        body,
    )
        .into_response()
}

fn ok(body: Value) -> Response {
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, "application/x-amz-json-1.1")],
        body.to_string(),
    )
        .into_response()
}

/// A `MaxConcurrency`/`MaxErrors` value: a count, or a percentage of
/// `targets` (rounded up, at least 1 for a non-zero percentage).
fn limit(value: Option<&str>, default: &str, targets: usize) -> Option<usize> {
    let value = value.unwrap_or(default);
    match value.strip_suffix('%') {
        Some(percent) => {
            let percent: usize = percent.parse().ok().filter(|p| *p <= 100)?;
            Some(
                (targets * percent)
                    .div_ceil(100)
                    .max(usize::from(percent > 0)),
            )
        }
        None => value.parse().ok(),
    }
}

fn send_command(stand_in: &RunCommand, input: &Value) -> Response {
    let document = input["DocumentName"].as_str().unwrap_or("");
    if document != "AWS-RunShellScript" {
        return error(
            400,
            "InvalidDocument",
            &format!("the node simulator runs AWS-RunShellScript only, not {document:?}"),
        );
    }
    let instances: Vec<String> = input["InstanceIds"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if instances.is_empty() {
        return error(400, "ValidationException", "InstanceIds is required");
    }
    for instance in &instances {
        if !stand_in.nodes.plays(&InstanceId::new(instance.as_str())) {
            return error(
                400,
                "InvalidInstanceId",
                &format!("{instance} is not a managed node"),
            );
        }
    }
    let script = input["Parameters"]["commands"]
        .as_array()
        .map(|lines| {
            lines
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    let (Some(concurrency), Some(max_errors)) = (
        limit(input["MaxConcurrency"].as_str(), "50", instances.len()),
        limit(input["MaxErrors"].as_str(), "0", instances.len()),
    ) else {
        return error(
            400,
            "ValidationException",
            "MaxConcurrency or MaxErrors is malformed",
        );
    };
    let timeout = input["TimeoutSeconds"]
        .as_u64()
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    let command_id = uuid::Uuid::new_v4().to_string();
    for instance in &instances {
        stand_in.record(&command_id, instance, Invocation::pending());
    }
    tracing::info!(command = %command_id, ?instances, concurrency, max_errors, "Run Command");
    tokio::spawn(run(
        stand_in.clone(),
        command_id.clone(),
        instances.clone(),
        script,
        (concurrency.max(1), max_errors, timeout),
    ));
    ok(json!({"Command": {
        "CommandId": command_id,
        "DocumentName": document,
        "InstanceIds": instances,
        "Status": "Pending",
        "MaxConcurrency": input["MaxConcurrency"].as_str().unwrap_or("50"),
        "MaxErrors": input["MaxErrors"].as_str().unwrap_or("0"),
    }}))
}

/// Runs the command on its instances, at most `concurrency` at once,
/// cancelling what is left once more than `max_errors` failed.
async fn run(
    stand_in: RunCommand,
    command: String,
    instances: Vec<String>,
    script: String,
    (concurrency, max_errors, timeout): (usize, usize, Duration),
) {
    let mut failed = 0;
    for batch in instances.chunks(concurrency) {
        if failed > max_errors {
            for instance in batch {
                let mut cancelled = Invocation::pending();
                cancelled.status = "Cancelled";
                stand_in.record(&command, instance, cancelled);
            }
            continue;
        }
        let runs = batch.iter().map(|instance| {
            let stand_in = stand_in.clone();
            let command = command.clone();
            let script = script.clone();
            async move {
                let mut running = Invocation::pending();
                running.status = "InProgress";
                stand_in.record(&command, instance, running);
                let id = InstanceId::new(instance.as_str());
                let outcome = stand_in.nodes.run_commands(&id, &command, &script, timeout).await;
                let invocation = match outcome {
                    Ok((code, stdout, stderr)) => Invocation {
                        status: if code == 0 { "Success" } else { "Failed" },
                        response_code: code,
                        stdout: cut(stdout),
                        stderr: cut(stderr),
                    },
                    Err(problem) => Invocation {
                        status: if problem.timed_out { "TimedOut" } else { "Failed" },
                        response_code: -1,
                        stdout: String::new(),
                        stderr: cut(problem.message),
                    },
                };
                let success = invocation.status == "Success";
                tracing::info!(command = %command, instance = %instance, status = invocation.status, "invocation ended");
                stand_in.record(&command, instance, invocation);
                success
            }
        });
        failed += futures::future::join_all(runs)
            .await
            .into_iter()
            .filter(|success| !success)
            .count();
    }
}

fn cut(mut text: String) -> String {
    text.truncate(text.floor_char_boundary(OUTPUT_LIMIT));
    text
}

fn get_invocation(stand_in: &RunCommand, input: &Value) -> Response {
    let command = input["CommandId"].as_str().unwrap_or("");
    let instance = input["InstanceId"].as_str().unwrap_or("");
    let Some(invocation) = stand_in.get(command, instance) else {
        return error(
            400,
            "InvocationDoesNotExist",
            &format!("no invocation of {command} on {instance}"),
        );
    };
    ok(json!({
        "CommandId": command,
        "InstanceId": instance,
        "DocumentName": "AWS-RunShellScript",
        "Status": invocation.status,
        "StatusDetails": invocation.status,
        "ResponseCode": invocation.response_code,
        "StandardOutputContent": invocation.stdout,
        "StandardErrorContent": invocation.stderr,
    }))
}

/// Why commands could not run on a node.
#[derive(Debug)]
pub(super) struct CommandProblem {
    pub(super) message: String,
    pub(super) timed_out: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_counts_or_percentages_of_the_targets() {
        assert_eq!(limit(None, "50", 3), Some(50));
        assert_eq!(limit(Some("2"), "50", 3), Some(2));
        assert_eq!(limit(Some("50%"), "50", 3), Some(2));
        assert_eq!(limit(Some("10%"), "50", 3), Some(1));
        assert_eq!(limit(Some("0%"), "0", 3), Some(0));
        assert_eq!(limit(Some("150%"), "0", 3), None);
        assert_eq!(limit(Some("x"), "0", 3), None);
    }
}
