//! Taking requests off the fleet's queue: as many as there are free slots
//! while there are some, and, while every slot is taken, a paced receive of
//! up to ten so that deletes are served at once (the creates among them are
//! put back as copies, see [`super::requeue`]).
//!
//! A received message stays invisible while its browser starts and is
//! deleted only after its reply is on the requester's queue, so an agent
//! that dies mid-launch loses nothing: the message reappears and another
//! agent takes it. A request that cannot be served now (no slot, a browser
//! that failed to start) is given back with a delay; one that can never be
//! served is answered with `session.failed`, or dead-lettered when it names
//! no one to answer. A create nobody waits for any more — its session was
//! deleted first, or its start deadline has passed — is answered before a
//! slot is reserved, and never started.

mod request_queue;

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use tokio::task::JoinSet;

use super::end::{DeleteOutcome, NotHostedDelete};
use super::launch::LaunchFailure;
use super::metrics::AgentMetrics;
use super::outbox::Outbox;
use super::replies::{CallbackOutcome, ReplyTargets};
use super::requeue::{self, WhileFull};
use super::runtime::Agent;
use super::sessions::Sessions;
use super::slots::SlotError;
use super::tombstones::CANCELLED_MESSAGE;
use crate::cloud::queues::{MAX_BATCH, OutgoingMessage, Queues, ReceivedMessage};
use crate::protocol::signing::{self, RESERVED_SESSION_PREFIX};
use crate::protocol::{
    CreateRequest, Failed, FailureReason, Inbound, Reply, ReplyKind, SessionId, TerminationReason,
    parse_message,
};

pub use request_queue::{OperatorTrust, RequestQueue};

/// Delay before a request given back becomes visible again.
const GIVE_BACK_DELAY: Duration = Duration::from_secs(5);
/// How much longer than its long-poll wait a receive may take before the
/// intake gives up on it.
const RECEIVE_SLACK: Duration = Duration::from_secs(5);
/// Receives of one message after which a launch failure is final.
const MAX_LAUNCH_ATTEMPTS: u32 = 3;

/// The intake's pacing; shorter in tests so a stop is quick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntakeOptions {
    /// Long-poll wait of every receive.
    pub wait: Duration,
    /// Least time from the start of one receive to the start of the next
    /// while every slot is taken: a delete waits at most about this long
    /// behind a backlog of up to ten creates, and a backlog costs one
    /// receive and one send and one delete batch per interval.
    pub full_interval: Duration,
    /// Longest a create may wait for a slot, put back by full agents, before
    /// it is answered `session.failed` (`noCapacity`).
    pub max_slot_wait: Duration,
}

impl Default for IntakeOptions {
    fn default() -> Self {
        IntakeOptions {
            wait: Duration::from_secs(20),
            full_interval: Duration::from_secs(3),
            // As long as the operator's longest start deadline and a cancel
            // tombstone: nobody waits longer for a browser.
            max_slot_wait: Duration::from_secs(3600),
        }
    }
}

/// What the next receive asks for, and when it may start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ReceivePlan {
    max_messages: usize,
    not_before: Option<Instant>,
}

/// With free slots, a receive takes at most that many, at once; with none, it
/// takes a full batch (deletes hide among the creates) and starts no sooner
/// than `full_interval` after the previous one, so a backlog of creates
/// (returned at once by the long poll, and put back) is no busy loop.
fn plan_receive(
    free: usize,
    previous: Option<Instant>,
    full_interval: Duration,
    now: Instant,
) -> ReceivePlan {
    if free > 0 {
        return ReceivePlan {
            max_messages: free.min(MAX_BATCH),
            not_before: None,
        };
    }
    ReceivePlan {
        max_messages: MAX_BATCH,
        not_before: previous.map(|at| at + full_interval).filter(|at| *at > now),
    }
}

/// The intake of one agent: it owns the request queue and answers what it
/// takes through the agent's outbox; sessions are launched and deleted by
/// the agent.
pub struct Intake<Q> {
    agent: Arc<Agent<Q>>,
    sessions: Arc<Sessions>,
    outbox: Arc<Outbox<Q>>,
    requests: RequestQueue<Q>,
    metrics: Arc<AgentMetrics>,
    /// Where the replies of a request that names no target go.
    default_targets: ReplyTargets,
    options: IntakeOptions,
}

/// A received message's share of the `requests_held` gauge, which
/// `/v1/state` reports: taken when the message is, released when its
/// handling ends (deleted, given back or refused). A create that finds
/// every slot taken is held until its original is deleted: while it is put
/// back, the copy on the queue is what the operator counts as waiting, and
/// the original must not be counted a second time (the burst test saw the
/// fleet scale past its demand).
struct Held(Gauge);

impl Held {
    fn new(gauge: &Gauge) -> Held {
        gauge.inc();
        Held(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What became of the creates of one receive that were not started at once.
#[derive(Default)]
struct Deferred {
    /// Creates that found every slot taken.
    no_slot: Vec<(ReceivedMessage, CreateRequest)>,
    /// Their shares of `requests_held`, released once they are put back.
    no_slot_held: Vec<Held>,
    /// Whether free slots had no usable port (another program holds them).
    port_trouble: bool,
}

impl<Q: Queues + 'static> Intake<Q> {
    /// An intake over the agent's parts.
    pub fn new(
        agent: Arc<Agent<Q>>,
        sessions: Arc<Sessions>,
        outbox: Arc<Outbox<Q>>,
        requests: RequestQueue<Q>,
        metrics: Arc<AgentMetrics>,
        default_targets: ReplyTargets,
        options: IntakeOptions,
    ) -> Self {
        Intake {
            agent,
            sessions,
            outbox,
            requests,
            metrics,
            default_targets,
            options,
        }
    }

    /// Runs the intake until the agent stops or drains.
    pub async fn run(self) {
        let intake = Arc::new(self);
        let options = intake.options;
        let agent = &intake.agent;
        let mut stopping = agent.stopping();
        let mut handlers = JoinSet::new();
        let mut backoff = Duration::from_millis(500);
        let mut previous_receive = None;
        loop {
            while handlers.try_join_next().is_some() {}
            if *stopping.borrow() || agent.is_draining() {
                break;
            }
            let plan = plan_receive(
                intake.sessions.free_slots(),
                previous_receive,
                options.full_interval,
                Instant::now(),
            );
            if let Some(at) = plan.not_before {
                // Full, and the last receive was a moment ago. A slot freeing
                // (checked at least every second) ends the wait early.
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = intake.sessions.slot_freed() => {}
                    _ = stopping.changed() => {}
                }
                continue;
            }
            previous_receive = Some(Instant::now());
            let mut receive = {
                let intake = intake.clone();
                Box::pin(async move {
                    tokio::time::timeout(
                        options.wait + RECEIVE_SLACK,
                        intake.requests.receive(plan.max_messages, options.wait),
                    )
                    .await
                })
            };
            // The end of a drain does not cut a long poll short: SQS may still
            // hand the abandoned poll a message, which would then stay invisible
            // for its whole visibility timeout. The poll ends within its wait
            // and what it got goes back below. A stop asked from outside
            // (SIGTERM, also during or after a drain) does cut it, so the
            // process exits at once; a stop that hands over lets it end in the
            // background instead, since the process lives on.
            let interrupted = agent.cut_short_asked();
            let messages = tokio::select! {
                received = &mut receive => match received {
                    Ok(received) => received,
                    Err(_) => continue,
                },
                () = interrupted => {
                    if agent.is_handing_over() {
                        let intake = intake.clone();
                        agent.lingering().spawn(async move {
                            if let Ok(Ok(messages)) = receive.await {
                                for message in &messages {
                                    intake.requests.return_now(message).await;
                                }
                            }
                        });
                    }
                    break;
                }
            };
            let messages = match messages {
                Ok(messages) if agent.is_draining() || *stopping.borrow() => {
                    // A drain or stop began during the long poll: these go back.
                    for message in &messages {
                        intake.requests.return_now(message).await;
                    }
                    break;
                }
                Ok(messages) => {
                    backoff = Duration::from_millis(500);
                    messages
                }
                Err(error) => {
                    intake.metrics.queue_receive_errors.inc();
                    tracing::warn!(%error, "receive from the request queue failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            let mut deferred = Deferred::default();
            for message in messages {
                intake.take(message, &mut handlers, &mut deferred).await;
            }
            if !deferred.no_slot.is_empty() {
                intake.put_back(deferred.no_slot).await;
            }
            drop(deferred.no_slot_held);
            if deferred.port_trouble {
                tokio::select! {
                    _ = tokio::time::sleep(GIVE_BACK_DELAY) => {}
                    _ = stopping.changed() => {}
                }
            }
        }
        // Launches under way finish (their messages are answered or given back).
        while handlers.join_next().await.is_some() {}
    }

    /// Handles one received message: a task of its own for anything that
    /// waits (a launch, a reply, a delete); creates that cannot start now
    /// are left in `deferred`.
    async fn take(
        self: &Arc<Self>,
        message: ReceivedMessage,
        handlers: &mut JoinSet<()>,
        deferred: &mut Deferred,
    ) {
        let received = Instant::now();
        let held = Held::new(&self.metrics.requests_held);
        match parse_message(message.body.as_bytes()) {
            Err(error) => {
                let intake = self.clone();
                handlers.spawn(async move {
                    intake.refuse(&message, error).await;
                    drop(held);
                });
            }
            Ok(Inbound::Delete(delete))
                if (delete
                    .session_id
                    .as_str()
                    .starts_with(RESERVED_SESSION_PREFIX)
                    || delete
                        .reply_to
                        .as_ref()
                        .is_some_and(|q| q.as_str() == self.requests.events()))
                    && !self.requests.from_operator(&message) =>
            {
                // Only the operator may end a BrowserSession, and it does so
                // through the agents' control API, never on the queue.
                let intake = self.clone();
                handlers.spawn(async move {
                    intake.metrics.failed("invalidRequest");
                    tracing::warn!(
                        message_id = %message.message_id,
                        session = %delete.session_id,
                        "a delete speaking for the operator, unsigned; dead-lettered"
                    );
                    intake.requests.dead_letter(&message).await;
                    drop(held);
                });
            }
            Ok(Inbound::Delete(delete)) => {
                let intake = self.clone();
                handlers.spawn(async move {
                    // A delete naming no target is answered at the
                    // fleet's defaults, like a create naming none.
                    let targets =
                        ReplyTargets::new(delete.reply_to.as_ref(), delete.callback_url.as_ref())
                            .or_defaults(&intake.default_targets);
                    let outcome = intake
                        .agent
                        .delete_session(
                            &delete.session_id,
                            delete.request_id.clone(),
                            targets,
                            NotHostedDelete::Forward,
                        )
                        .await;
                    match outcome {
                        DeleteOutcome::ForwardFailed(error) => {
                            tracing::warn!(%error, "delete not forwarded; giving it back");
                            intake.requests.give_back(&message).await;
                        }
                        DeleteOutcome::Ended
                        | DeleteOutcome::Forwarded
                        | DeleteOutcome::NotHosted => intake.requests.finish(&message).await,
                    }
                    drop(held);
                });
            }
            Ok(Inbound::Create(request)) => {
                if let Some(why) = signing::reserved_use(&request, self.requests.events())
                    && !self.requests.from_operator(&message)
                {
                    let intake = self.clone();
                    handlers.spawn(async move {
                        intake.refuse_reserved(&request, &message, why).await;
                        drop(held);
                    });
                    return;
                }
                let request = with_default_targets(request, &self.default_targets);
                // A create that names no session is named after its message,
                // the same on every delivery, so that a redelivery is known
                // for what it is.
                let id = request
                    .session_id
                    .clone()
                    .unwrap_or_else(|| requeue::session_for(&message.message_id));
                if self.sessions.hosts(&id) {
                    let intake = self.clone();
                    handlers.spawn(async move {
                        intake.redelivered(&id, &request, &message).await;
                        drop(held);
                    });
                    return;
                }
                if self.sessions.was_served(&id) {
                    // Its requester has had `session.ready` and
                    // `session.terminated`: a second browser, or a third
                    // answer, would serve nobody.
                    let intake = self.clone();
                    handlers.spawn(async move {
                        intake.metrics.creates_already_served.inc();
                        tracing::info!(session = %id, message_id = %message.message_id, "a create of a session already served and ended; dropped");
                        intake.requests.finish(&message).await;
                        drop(held);
                    });
                    return;
                }
                let refusal = refusal_before_start(
                    self.sessions.is_cancelled(&id),
                    request.start_deadline,
                    jiff::Timestamp::now(),
                );
                if let Some((reason, why)) = refusal {
                    let intake = self.clone();
                    handlers.spawn(async move {
                        intake
                            .refuse_create(&id, &request, &message, reason, why)
                            .await;
                        drop(held);
                    });
                    return;
                }
                // Reserved here, before the next receive counts free slots.
                let port = match self.sessions.reserve(&id) {
                    Ok(port) => port,
                    Err(SlotError::NoSlot { .. }) => {
                        // Held until its original is deleted: its copy
                        // is what the operator counts as waiting.
                        deferred.no_slot.push((message, request));
                        deferred.no_slot_held.push(held);
                        return;
                    }
                    Err(error) => {
                        tracing::info!(%error, "no slot for a request; giving it back");
                        self.give_back_create(&message, &id).await;
                        // Free slots but no usable port: wait before
                        // receiving again, so requests do not cycle towards
                        // the DLQ.
                        deferred.port_trouble = true;
                        return;
                    }
                };
                let intake = self.clone();
                handlers.spawn(async move {
                    let launched = intake
                        .requests
                        .hold_while(
                            &message,
                            intake.agent.launch(id.clone(), port, &request, received),
                        )
                        .await;
                    intake.answer_launch(id, &request, &message, launched).await;
                    drop(held);
                });
            }
        }
    }

    /// Creates received while every slot is taken: each is put back as a copy
    /// (sent first, the original deleted only once its copy is on the queue), or
    /// given up when it has waited for a slot longer than `max_slot_wait`.
    async fn put_back(&self, received: Vec<(ReceivedMessage, CreateRequest)>) {
        let now = jiff::Timestamp::now();
        let mut originals = Vec::new();
        let mut copies = Vec::new();
        for (message, request) in received {
            let record = requeue::requeued(&message.body);
            match requeue::while_full(record, now, self.options.max_slot_wait) {
                WhileFull::GiveUp { waited } => {
                    self.give_up(&message, &request, record, waited).await;
                }
                WhileFull::Requeue(record) => {
                    let id = requeue::session_for(&message.message_id);
                    match requeue::copy_body(&message.body, &id, record) {
                        Ok(body) => {
                            let attributes = self.requests.copy_attributes(&message, &body);
                            copies.push(OutgoingMessage {
                                body,
                                delay: Duration::ZERO,
                                attributes,
                            });
                            originals.push(message);
                        }
                        Err(error) => {
                            tracing::warn!(message_id = %message.message_id, %error, "create not copied; giving it back");
                            self.requests.give_back(&message).await;
                        }
                    }
                }
            }
        }
        if copies.is_empty() {
            return;
        }
        // Copies go out visible at once: the operator's scaling counts visible
        // requests, not delayed ones, and another agent may have room now.
        let sent = match self.requests.send_copies(&copies).await {
            Ok(outcome) => outcome,
            Err(error) => {
                tracing::warn!(%error, "creates not put back; giving them back");
                for message in &originals {
                    self.requests.give_back(message).await;
                }
                return;
            }
        };
        for failure in &sent.failed {
            if let Some(message) = originals.get(failure.index) {
                tracing::warn!(message_id = %message.message_id, code = %failure.code, "create not put back; giving it back");
                self.requests.give_back(message).await;
            }
        }
        let receipts: Vec<_> = sent
            .succeeded
            .iter()
            .filter_map(|(index, _)| originals.get(*index))
            .map(|message| message.receipt.clone())
            .collect();
        self.metrics.requests_requeued.inc_by(receipts.len() as u64);
        tracing::debug!(
            count = receipts.len(),
            "creates put back while every slot is taken"
        );
        let failed = self.requests.delete_originals(&receipts).await;
        if failed > 0 {
            // The originals come back after their visibility timeout beside
            // their copies: duplicates of one session each (the copy names the
            // session), which a hosting agent answers with the running session.
            tracing::warn!(
                failed,
                "originals of creates put back not deleted; they will be delivered twice"
            );
        }
    }

    /// A create that waited for a slot longer than the agent's limit: answered
    /// `session.failed` (`noCapacity`) when it names a reply target,
    /// dead-lettered otherwise.
    async fn give_up(
        &self,
        message: &ReceivedMessage,
        request: &CreateRequest,
        record: Option<requeue::Requeued>,
        waited: Duration,
    ) {
        let id = request
            .session_id
            .clone()
            .unwrap_or_else(|| requeue::session_for(&message.message_id));
        let times = record.map_or(0, |r| r.count);
        let why = format!(
            "no agent of the fleet had a free slot for {} s (the create was put back {times} times); \
             no browser was started",
            waited.as_secs()
        );
        if request.reply_to.is_some() || request.callback_url.is_some() {
            self.refuse_create(&id, request, message, FailureReason::NoCapacity, why)
                .await;
        } else {
            self.metrics.failed(&FailureReason::NoCapacity.to_string());
            tracing::warn!(session = %id, "{why}; dead-lettering it");
            self.requests.dead_letter(message).await;
        }
    }

    async fn answer_launch(
        &self,
        id: SessionId,
        request: &CreateRequest,
        message: &ReceivedMessage,
        launched: Result<Reply, LaunchFailure>,
    ) {
        let reply = match launched {
            Ok(ready) => ready,
            Err(LaunchFailure::Retry(why)) if message.receive_count < MAX_LAUNCH_ATTEMPTS => {
                tracing::warn!(session = %id, %why, "launch failed; giving the request back");
                self.requests.give_back(message).await;
                return;
            }
            Err(LaunchFailure::Retry(why)) => {
                self.outbox
                    .failed(&id, request, FailureReason::FailedToStart, why)
            }
            Err(LaunchFailure::Ended) => {
                self.requests.finish(message).await;
                return;
            }
            Err(LaunchFailure::Rejected {
                reason,
                message: why,
            }) => {
                self.refuse_create(&id, request, message, reason, why).await;
                return;
            }
        };
        // When the reply does not reach the requester's queue the request stays
        // and becomes visible again after its visibility timeout; a ready browser
        // is kept too: the redelivered request finds it.
        let answered = self
            .answer_with(&request_targets(request), &reply, message)
            .await;
        if answered == Answered::CutOffByStop && matches!(reply.kind, ReplyKind::Ready(_)) {
            // Nobody heard of this browser, and the create goes back to
            // the queue, where any node's agent may take it: it goes, so
            // that the create's next start is its only browser.
            tracing::info!(session = %id, "ending a session whose ready callback was not delivered before the stop");
            self.sessions.set_answered(&id, false);
            self.agent
                .end(&id, TerminationReason::FailedToStart, false)
                .await;
        }
    }

    /// Answers a create that will not run with `session.failed` and, once the
    /// answer is out, deletes it (and the tombstone that cancelled it).
    async fn refuse_create(
        &self,
        id: &SessionId,
        request: &CreateRequest,
        message: &ReceivedMessage,
        reason: FailureReason,
        why: String,
    ) {
        self.metrics.failed(&reason.to_string());
        tracing::info!(session = %id, %reason, "create refused");
        let reply = self.outbox.failed(id, request, reason, why);
        let answered = self
            .answer(&request_targets(request), &reply, message)
            .await;
        if answered && reason == FailureReason::Cancelled {
            self.sessions.forget_cancel(id);
        }
    }

    /// A producer's create that asks for what only the operator may: answered
    /// `session.failed` (`invalidRequest`) on its own targets, never on the
    /// events queue (that answer would reach a BrowserSession), or
    /// dead-lettered when it names no other target.
    async fn refuse_reserved(
        &self,
        request: &CreateRequest,
        message: &ReceivedMessage,
        why: String,
    ) {
        self.metrics.failed("invalidRequest");
        tracing::warn!(message_id = %message.message_id, %why, "create refused");
        let reply_to = request
            .reply_to
            .as_ref()
            .filter(|q| q.as_str() != self.requests.events());
        let targets = ReplyTargets::new(reply_to, request.callback_url.as_ref());
        if !targets.is_empty() {
            let id = request
                .session_id
                .clone()
                .unwrap_or_else(SessionId::generate);
            let reply = self
                .outbox
                .failed(&id, request, FailureReason::InvalidRequest, why);
            if self.answer(&targets, &reply, message).await {
                return;
            }
        }
        self.requests.dead_letter(message).await;
    }

    /// Sends `reply` and, once it is on the requester's queue, deletes the
    /// request. Returns whether it did.
    ///
    /// A request whose only target is its callback is deleted once the
    /// callback was delivered, and kept invisible while it is retried (issue
    /// #28 item 7: it was deleted as soon as the callback was scheduled, and
    /// the answer lost when every attempt failed or the agent stopped). A
    /// callback given up moves the request to the dead-letter queue, its one
    /// outcome; a stop meanwhile gives it back to be answered again.
    async fn answer(
        &self,
        targets: &ReplyTargets,
        reply: &Reply,
        message: &ReceivedMessage,
    ) -> bool {
        self.answer_with(targets, reply, message).await == Answered::Yes
    }

    /// [`Intake::answer`], telling how it went.
    async fn answer_with(
        &self,
        targets: &ReplyTargets,
        reply: &Reply,
        message: &ReceivedMessage,
    ) -> Answered {
        // Noted before the send: an agent killed while sending leaves a
        // successor that counts the session as answered, and answers the
        // create again if it comes back (with the running browser).
        self.noted_as_answered(reply);
        let delivery = match self.outbox.send(targets, reply).await {
            Ok(delivery) => delivery,
            Err(error) => {
                tracing::warn!(session = %reply.session_id, %error, "reply not sent; the request stays queued");
                return Answered::NotSent;
            }
        };
        let Some(delivery) = delivery.filter(|_| targets.reply_to.is_none()) else {
            self.requests.finish(message).await;
            return Answered::Yes;
        };
        let mut stopping = self.agent.stopping();
        let ended = self
            .requests
            .hold_while(message, async {
                tokio::select! {
                    outcome = delivery => outcome.ok(),
                    _ = stopping.wait_for(|stopping| *stopping) => None,
                }
            })
            .await;
        match ended {
            Some(CallbackOutcome::Delivered) => {
                self.requests.finish(message).await;
                Answered::Yes
            }
            Some(CallbackOutcome::Abandoned(why)) => {
                tracing::warn!(session = %reply.session_id, kind = reply.kind.type_name(), %why, "the request's only answer, its callback, could not be delivered; dead-lettering the request");
                self.requests
                    .dead_letter_because(message, &format!("callback not delivered: {why}"))
                    .await;
                Answered::Yes
            }
            None => {
                tracing::info!(session = %reply.session_id, "stopping before the request's callback was delivered; it goes back to the queue");
                self.requests.return_now(message).await;
                Answered::CutOffByStop
            }
        }
    }

    /// A ready reply goes out: noted in the table, so that a successor
    /// counts the session as served.
    fn noted_as_answered(&self, reply: &Reply) {
        if matches!(reply.kind, ReplyKind::Ready(_)) {
            self.sessions.set_answered(&reply.session_id, true);
        }
    }

    async fn redelivered(
        &self,
        id: &SessionId,
        request: &CreateRequest,
        message: &ReceivedMessage,
    ) {
        // The same create again (its first reply was lost, or a producer
        // retried): answer with the running session instead of a second browser.
        match self.sessions.with_token(id) {
            Some(session) => {
                let reply = self.outbox.ready(&session);
                self.answer(&request_targets(request), &reply, message)
                    .await;
            }
            // Still starting: the first delivery will answer.
            None => self.give_back_create(message, id).await,
        }
    }

    /// Gives back a create of session `id` that waits for nothing of its
    /// own, as a copy whose receive count starts afresh.
    async fn give_back_create(&self, message: &ReceivedMessage, id: &SessionId) {
        match requeue::same_session_body(&message.body, id) {
            Ok(body) => self.requests.give_back_as_copy(message, body).await,
            Err(error) => {
                tracing::warn!(message_id = %message.message_id, %error, "create not copied; giving it back");
                self.requests.give_back(message).await;
            }
        }
    }

    /// A message that is not a valid request: answered with `session.failed`
    /// when it names a reply target, dead-lettered otherwise.
    async fn refuse(&self, message: &ReceivedMessage, error: crate::protocol::MessageError) {
        self.metrics.failed("invalidRequest");
        tracing::warn!(message_id = %message.message_id, %error, "invalid request");
        // A message with no shape at all names no one and is dead-lettered; one
        // that broke a rule is answered where it asked, else at the fleet's
        // default targets.
        // Never on the events queue: what is not a request is not the
        // operator's, and an answer there could reach a BrowserSession.
        let target = error.reply_target().map(|target| {
            let reply_to = target
                .reply_to
                .as_ref()
                .filter(|q| q.as_str() != self.requests.events());
            let targets = ReplyTargets::new(reply_to, target.callback_url.as_ref())
                .or_defaults(&self.default_targets);
            (target, targets)
        });
        if let Some((target, targets)) = target.filter(|(_, targets)| !targets.is_empty()) {
            let reply = self.outbox.reply(
                target
                    .session_id
                    .clone()
                    .unwrap_or_else(SessionId::generate),
                target.request_id.clone(),
                target.labels.clone(),
                ReplyKind::Failed(Failed {
                    reason: FailureReason::InvalidRequest,
                    message: error.to_string(),
                }),
            );
            if self.answer(&targets, &reply, message).await {
                return;
            }
        }
        self.requests.dead_letter(message).await;
    }
}

/// How [`Intake::answer_with`] went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answered {
    /// The answer is out (or, for a callback given up, the request is on
    /// the dead-letter queue) and the request deleted.
    Yes,
    /// The reply did not reach the requester's queue: the request stays.
    NotSent,
    /// The agent stopped while the request's only answer, its callback,
    /// was being tried: the request went back to the queue.
    CutOffByStop,
}

/// Why a create must not start, decided before a slot is reserved: a delete
/// of its session came first (`cancelled`), or its requester stopped waiting
/// at its start deadline (`startTimeout`).
fn refusal_before_start(
    cancelled: bool,
    start_deadline: Option<jiff::Timestamp>,
    now: jiff::Timestamp,
) -> Option<(FailureReason, String)> {
    if cancelled {
        return Some((FailureReason::Cancelled, CANCELLED_MESSAGE.to_owned()));
    }
    match start_deadline {
        Some(deadline) if deadline <= now => Some((
            FailureReason::StartTimeout,
            format!(
                "the start deadline {deadline} had passed when this agent took the request \
                 (at {now}): the requester stopped waiting, so no browser was started"
            ),
        )),
        _ => None,
    }
}

/// `request` with the fleet's default reply targets when it names none, so
/// that every answer about it, up to its session's end, goes there.
fn with_default_targets(mut request: CreateRequest, defaults: &ReplyTargets) -> CreateRequest {
    if request.reply_to.is_none() && request.callback_url.is_none() {
        request.reply_to = defaults.reply_to.clone();
        request.callback_url = defaults.callback_url.clone();
    }
    request
}

fn request_targets(request: &CreateRequest) -> ReplyTargets {
    ReplyTargets::new(request.reply_to.as_ref(), request.callback_url.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> jiff::Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn with_free_slots_a_receive_takes_that_many_at_once() {
        let now = Instant::now();
        let interval = Duration::from_secs(3);
        for (free, max) in [(1, 1), (4, 4), (10, 10), (25, MAX_BATCH)] {
            let plan = plan_receive(free, Some(now), interval, now);
            assert_eq!(plan.max_messages, max);
            assert_eq!(plan.not_before, None);
        }
    }

    #[test]
    fn a_full_agent_receives_a_full_batch_no_sooner_than_the_interval() {
        let interval = Duration::from_secs(3);
        let start = Instant::now();
        // The first receive of a full agent starts at once.
        assert_eq!(
            plan_receive(0, None, interval, start),
            ReceivePlan {
                max_messages: MAX_BATCH,
                not_before: None
            }
        );
        // One a second after the last waits out the rest of the interval.
        let plan = plan_receive(0, Some(start), interval, start + Duration::from_secs(1));
        assert_eq!(plan.max_messages, MAX_BATCH);
        assert_eq!(plan.not_before, Some(start + interval));
        // A long poll that took longer than the interval is followed at once.
        for later in [interval, Duration::from_secs(20)] {
            assert_eq!(
                plan_receive(0, Some(start), interval, start + later).not_before,
                None
            );
        }
    }

    #[test]
    fn a_create_past_its_start_deadline_is_refused_as_start_timeout() {
        let now = at("2025-01-02T03:04:05Z");
        for deadline in ["2025-01-02T03:04:04Z", "2025-01-02T03:04:05Z"] {
            let (reason, message) = refusal_before_start(false, Some(at(deadline)), now).unwrap();
            assert_eq!(reason, FailureReason::StartTimeout);
            assert!(message.contains(deadline), "{message}");
            assert!(message.contains("stopped waiting"), "{message}");
        }
    }

    #[test]
    fn a_create_before_its_start_deadline_or_without_one_may_start() {
        let now = at("2025-01-02T03:04:05Z");
        assert_eq!(
            refusal_before_start(false, Some(at("2025-01-02T03:04:06Z")), now),
            None
        );
        assert_eq!(refusal_before_start(false, None, now), None);
    }

    #[test]
    fn a_cancelled_create_is_refused_as_cancelled_whatever_its_deadline() {
        let now = at("2025-01-02T03:04:05Z");
        for deadline in [
            None,
            Some(at("2025-01-02T03:04:04Z")),
            Some(at("2026-01-01T00:00:00Z")),
        ] {
            let (reason, _) = refusal_before_start(true, deadline, now).unwrap();
            assert_eq!(reason, FailureReason::Cancelled);
        }
    }
}
