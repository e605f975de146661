//! Answering requesters: a reply on the requester's SQS queue and a signed
//! HTTP callback. The queue reply is sent before the request message is
//! deleted (so a request is never lost without an answer); callbacks are
//! retried with backoff in the background and never hold up a launch. Each
//! callback reports how it ended ([`Delivery`]): a request whose only
//! target is its callback is deleted only once the callback was delivered
//! (issue #28 item 7).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::api::fleet::ReplyFormat;
use crate::cloud::queues::{OutgoingMessage, QueueError, QueueUrl, Queues};
use crate::protocol::callback::{self, RetrySchedule};
use crate::protocol::reply::legacy;
use crate::protocol::signing::{self, Purpose};
use crate::protocol::{CallbackUrl, Reply, ReplyQueueUrl};

/// Most callbacks in flight at once; more wait for a free place.
const MAX_CALLBACKS_IN_FLIGHT: usize = 64;
/// Deadline of one callback attempt.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);

/// How a callback ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// Every attempt failed, or the receiver refused it for good (a 4xx
    /// other than those worth a retry): why the last attempt failed.
    Abandoned(String),
}

/// The end of one callback, once it comes; an error when the callback was
/// cut off unfinished (the agent stopped).
pub type Delivery = oneshot::Receiver<CallbackOutcome>;

/// Where a reply goes.
#[derive(Clone, Debug, Default)]
pub struct ReplyTargets {
    /// The requester's queue.
    pub reply_to: Option<ReplyQueueUrl>,
    /// The requester's callback.
    pub callback_url: Option<CallbackUrl>,
}

impl ReplyTargets {
    /// The targets a request or session named.
    pub fn new(reply_to: Option<&ReplyQueueUrl>, callback_url: Option<&CallbackUrl>) -> Self {
        ReplyTargets {
            reply_to: reply_to.cloned(),
            callback_url: callback_url.cloned(),
        }
    }

    /// Whether there is anywhere to send a reply.
    pub fn is_empty(&self) -> bool {
        self.reply_to.is_none() && self.callback_url.is_none()
    }

    /// These targets, or the fleet's `defaults` when a request named none:
    /// a request that names either target keeps exactly what it named.
    pub fn or_defaults(self, defaults: &ReplyTargets) -> ReplyTargets {
        if self.is_empty() {
            defaults.clone()
        } else {
            self
        }
    }
}

/// Sends replies and callbacks.
pub struct Replier {
    secret: Vec<u8>,
    /// Signs what goes on the events queue (`protocol::signing`).
    message_key: Vec<u8>,
    format: ReplyFormat,
    /// The fleet's events queue: the operator reads protocol v1 there,
    /// whatever the fleet's reply format.
    events: String,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    callbacks: Mutex<JoinSet<()>>,
    permits: Arc<tokio::sync::Semaphore>,
    schedule: RetrySchedule,
    /// Callbacks that ended without delivery.
    abandoned: Counter,
}

impl Replier {
    /// A replier signing callbacks with `secret` and writing replies to
    /// requesters in `format` (those on the fleet's `events` queue always
    /// in protocol v1, signed with `message_key`).
    /// Callbacks are tried on `schedule`; those abandoned are counted in
    /// `abandoned`.
    pub fn new(
        secret: &str,
        message_key: &str,
        format: ReplyFormat,
        events: &str,
        schedule: RetrySchedule,
        abandoned: Counter,
    ) -> Self {
        // The system's roots (corporate CAs included); Mozilla's bundled roots
        // on an image that has none.
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match builder.with_native_roots() {
            Ok(builder) => builder,
            Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots(),
        };
        let connector = builder.https_or_http().enable_http1().build();
        Replier {
            secret: secret.as_bytes().to_vec(),
            message_key: message_key.as_bytes().to_vec(),
            format,
            events: events.to_owned(),
            http: Client::builder(TokioExecutor::new()).build(connector),
            callbacks: Mutex::new(JoinSet::new()),
            permits: Arc::new(tokio::sync::Semaphore::new(MAX_CALLBACKS_IN_FLIGHT)),
            schedule,
            abandoned,
        }
    }

    /// Sends `reply` to the queue target (waiting for SQS to take it) and
    /// starts its callback in the background; returns how the callback
    /// ends, when there is one.
    pub async fn send<Q: Queues>(
        &self,
        queues: &Q,
        targets: &ReplyTargets,
        reply: &Reply,
    ) -> Result<Option<Delivery>, QueueError> {
        let encode = |format: ReplyFormat| {
            let body = match format {
                ReplyFormat::V1 => serde_json::to_string(reply),
                ReplyFormat::Launcher => serde_json::to_string(&legacy::to_json(reply)),
            };
            body.inspect_err(|error| tracing::error!(%error, "reply could not be encoded"))
        };
        let delivery = targets
            .callback_url
            .as_ref()
            .map(|url| match encode(self.format) {
                Ok(body) => self.start_callback(url.as_str().to_owned(), body),
                Err(error) => {
                    let (done, delivery) = oneshot::channel();
                    let _ = done.send(CallbackOutcome::Abandoned(format!(
                        "the reply could not be encoded: {error}"
                    )));
                    delivery
                }
            });
        if let Some(queue) = &targets.reply_to {
            let to_events = queue.as_str() == self.events;
            let format = if to_events {
                ReplyFormat::V1
            } else {
                self.format
            };
            let Ok(body) = encode(format) else {
                return Ok(delivery);
            };
            let message = if to_events {
                self.event_message(body)
            } else {
                OutgoingMessage {
                    body,
                    ..OutgoingMessage::default()
                }
            };
            queues
                .send(&QueueUrl::new(queue.as_str()), &message)
                .await?;
        }
        Ok(delivery)
    }

    /// `body` as a message for the events queue, signed: the operator
    /// reads nothing there that no agent of the fleet signed.
    pub fn event_message(&self, body: String) -> OutgoingMessage {
        let attributes = signing::sign(
            &self.message_key,
            Purpose::Event,
            &body,
            jiff::Timestamp::now().as_second(),
        );
        OutgoingMessage {
            body,
            delay: Duration::ZERO,
            attributes,
        }
    }

    fn start_callback(&self, url: String, body: String) -> Delivery {
        let (done, delivery) = oneshot::channel();
        let http = self.http.clone();
        let secret = self.secret.clone();
        let permits = self.permits.clone();
        let schedule = self.schedule;
        let abandoned = self.abandoned.clone();
        let mut callbacks = self.callbacks.lock().unwrap_or_else(|p| p.into_inner());
        // Reap finished callbacks so the set does not grow.
        while callbacks.try_join_next().is_some() {}
        callbacks.spawn(async move {
            let mut attempt = 1;
            let mut last_error = String::from("never tried");
            while let Some(delay) = schedule.delay_before(attempt) {
                // Jitter spreads the retries of many callbacks to one
                // receiver that came back.
                let unit = f64::from(uuid::Uuid::new_v4().as_bytes()[0]) / 255.0;
                tokio::time::sleep(RetrySchedule::jittered(delay, unit)).await;
                // A place is held per attempt, not across the waits, so a dead
                // receiver does not hold up everyone else's callbacks.
                let Ok(_permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                match post_signed(&http, &url, &secret, &body).await {
                    Ok(()) => {
                        let _ = done.send(CallbackOutcome::Delivered);
                        return;
                    }
                    Err(failure) => {
                        tracing::warn!(attempt, error = %failure.error, "callback failed");
                        last_error = failure.error;
                        if !failure.retryable {
                            break;
                        }
                    }
                }
                attempt += 1;
            }
            tracing::warn!(%last_error, "callback abandoned");
            abandoned.inc();
            let _ = done.send(CallbackOutcome::Abandoned(last_error));
        });
        delivery
    }

    /// Waits up to `deadline` for callbacks in flight, then abandons the rest.
    pub async fn finish(&self, deadline: Duration) {
        let mut callbacks =
            std::mem::take(&mut *self.callbacks.lock().unwrap_or_else(|p| p.into_inner()));
        let drained = tokio::time::timeout(deadline, async {
            while callbacks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            callbacks.abort_all();
        }
    }
}

/// Why one callback attempt failed, and whether another may succeed.
struct AttemptFailure {
    error: String,
    retryable: bool,
}

impl AttemptFailure {
    fn retryable(error: impl Into<String>) -> Self {
        AttemptFailure {
            error: error.into(),
            retryable: true,
        }
    }
}

async fn post_signed(
    http: &Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: &str,
    secret: &[u8],
    body: &str,
) -> Result<(), AttemptFailure> {
    let timestamp = jiff::Timestamp::now().as_second();
    let signature = callback::sign(secret, timestamp, body.as_bytes());
    let mut request =
        hyper::Request::post(url).header(hyper::header::CONTENT_TYPE, "application/json");
    for (name, value) in signature.headers() {
        request = request.header(name, value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .map_err(|e| AttemptFailure {
            error: e.to_string(),
            retryable: false,
        })?;
    let response = tokio::time::timeout(CALLBACK_TIMEOUT, http.request(request))
        .await
        .map_err(|_| AttemptFailure::retryable("timed out"))?
        .map_err(|e| AttemptFailure::retryable(e.to_string()))?;
    let status = response.status();
    // As `protocol::callback` documents: a redirect is not followed, and
    // counts as delivered.
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(AttemptFailure {
            error: format!("HTTP {status}"),
            retryable: callback::is_retryable_status(status.as_u16()),
        })
    }
}
