//! Taking requests off the fleet's queue, only as many as there are free
//! slots.
//!
//! A received message stays invisible while its browser starts and is
//! deleted only after its reply is on the requester's queue, so an agent
//! that dies mid-launch loses nothing: the message reappears and another
//! agent takes it. A request that cannot be served now (no slot, a browser
//! that failed to start) is given back with a delay; one that can never be
//! served is answered with `session.failed`, or dead-lettered when it names
//! no one to answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::replies::ReplyTargets;
use super::runtime::{Agent, DeleteOutcome, LaunchFailure};
use crate::cloud::queues::{
    MAX_BATCH, OutgoingMessage, QueueUrl, Queues, ReceiveOptions, ReceivedMessage,
};
use crate::protocol::{
    CreateRequest, Failed, FailureReason, Inbound, Reply, ReplyKind, SessionId, parse_message,
};

/// Delay before a request given back becomes visible again.
const GIVE_BACK_DELAY: Duration = Duration::from_secs(5);
/// Receives of one message after which a launch failure is final.
const MAX_LAUNCH_ATTEMPTS: u32 = 3;

/// Long-poll wait of a receive; shorter in tests so a stop is quick.
#[derive(Clone, Copy, Debug)]
pub struct IntakeOptions {
    /// Long-poll wait.
    pub wait: Duration,
}

impl Default for IntakeOptions {
    fn default() -> Self {
        IntakeOptions {
            wait: Duration::from_secs(20),
        }
    }
}

/// Runs the intake until the agent stops or drains.
pub async fn run<Q: Queues + 'static>(agent: Arc<Agent<Q>>, options: IntakeOptions) {
    let mut stopping = agent.stopping();
    let mut handlers = JoinSet::new();
    let mut backoff = Duration::from_millis(500);
    loop {
        while handlers.try_join_next().is_some() {}
        if *stopping.borrow() || agent.is_draining() {
            break;
        }
        let free = agent.free_slots();
        if free == 0 {
            tokio::select! {
                _ = agent.slot_freed() => {}
                _ = stopping.changed() => {}
            }
            continue;
        }
        let receive = agent.queues().receive(
            agent.request_queue(),
            ReceiveOptions {
                max_messages: free.min(MAX_BATCH) as u32,
                wait: options.wait,
                visibility: Some(agent.settings().visibility_timeout),
            },
        );
        let messages = tokio::select! {
            received = receive => received,
            _ = stopping.changed() => break,
        };
        let messages = match messages {
            Ok(messages) if agent.is_draining() || *stopping.borrow() => {
                // A drain or stop began during the long poll: these go back.
                for message in &messages {
                    let _ = agent
                        .queues()
                        .change_visibility(agent.request_queue(), &message.receipt, Duration::ZERO)
                        .await;
                }
                break;
            }
            Ok(messages) => {
                backoff = Duration::from_millis(500);
                messages
            }
            Err(error) => {
                agent.metrics().queue_receive_errors.inc();
                tracing::warn!(%error, "receive from the request queue failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        let mut port_trouble = false;
        for message in messages {
            let received = Instant::now();
            match parse_message(message.body.as_bytes()) {
                Err(error) => {
                    let agent = agent.clone();
                    handlers.spawn(async move { refuse(&agent, &message, error).await });
                }
                Ok(Inbound::Delete(delete)) => {
                    let agent = agent.clone();
                    handlers.spawn(async move {
                        let targets = ReplyTargets::new(
                            delete.reply_to.as_ref(),
                            delete.callback_url.as_ref(),
                        );
                        let outcome = agent
                            .delete_session(&delete.session_id, delete.request_id.clone(), targets)
                            .await;
                        match outcome {
                            DeleteOutcome::ForwardFailed(error) => {
                                tracing::warn!(%error, "delete not forwarded; giving it back");
                                give_back(&agent, &message).await;
                            }
                            DeleteOutcome::Ended | DeleteOutcome::Forwarded => {
                                finish(&agent, &message).await
                            }
                        }
                    });
                }
                Ok(Inbound::Create(request)) => {
                    let id = request
                        .session_id
                        .clone()
                        .unwrap_or_else(SessionId::generate);
                    if agent.hosts(&id) {
                        let agent = agent.clone();
                        handlers.spawn(async move {
                            redelivered(&agent, &id, &request, &message).await
                        });
                        continue;
                    }
                    // Reserved here, before the next receive counts free slots.
                    let port = match agent.reserve(&id) {
                        Ok(port) => port,
                        Err(error) => {
                            tracing::info!(%error, "no slot for a request; giving it back");
                            give_back(&agent, &message).await;
                            // Free slots but no usable port (another program
                            // holds them): wait before receiving again, so
                            // requests do not cycle towards the DLQ.
                            port_trouble = true;
                            continue;
                        }
                    };
                    let agent = agent.clone();
                    handlers.spawn(async move {
                        let launched = agent.launch(id.clone(), port, &request, received).await;
                        answer_launch(&agent, id, &request, &message, launched).await;
                    });
                }
            }
        }
        if port_trouble {
            tokio::select! {
                _ = tokio::time::sleep(GIVE_BACK_DELAY) => {}
                _ = stopping.changed() => {}
            }
        }
    }
    // Launches under way finish (their messages are answered or given back).
    while handlers.join_next().await.is_some() {}
}

async fn answer_launch<Q: Queues + 'static>(
    agent: &Agent<Q>,
    id: SessionId,
    request: &CreateRequest,
    message: &ReceivedMessage,
    launched: Result<Reply, LaunchFailure>,
) {
    let reply = match launched {
        Ok(ready) => ready,
        Err(LaunchFailure::Retry(why)) if message.receive_count < MAX_LAUNCH_ATTEMPTS => {
            tracing::warn!(session = %id, %why, "launch failed; giving the request back");
            give_back(agent, message).await;
            return;
        }
        Err(LaunchFailure::Retry(why)) => {
            failed(agent, &id, request, FailureReason::FailedToStart, why)
        }
        Err(LaunchFailure::Ended) => {
            finish(agent, message).await;
            return;
        }
        Err(LaunchFailure::Rejected {
            reason,
            message: why,
        }) => {
            agent.metrics().failed(&reason.to_string());
            failed(agent, &id, request, reason, why)
        }
    };
    // When the reply does not reach the requester's queue the request stays
    // and becomes visible again after its visibility timeout; a ready browser
    // is kept too: the redelivered request finds it.
    answer(agent, &request_targets(request), &reply, message).await;
}

fn request_targets(request: &CreateRequest) -> ReplyTargets {
    ReplyTargets::new(request.reply_to.as_ref(), request.callback_url.as_ref())
}

/// Sends `reply` and, once it is on the requester's queue, deletes the
/// request. Returns whether it did.
async fn answer<Q: Queues + 'static>(
    agent: &Agent<Q>,
    targets: &ReplyTargets,
    reply: &Reply,
    message: &ReceivedMessage,
) -> bool {
    match agent.replier().send(agent.queues(), targets, reply).await {
        Ok(()) => {
            finish(agent, message).await;
            true
        }
        Err(error) => {
            tracing::warn!(session = %reply.session_id, %error, "reply not sent; the request stays queued");
            false
        }
    }
}

fn failed<Q: Queues + 'static>(
    agent: &Agent<Q>,
    id: &SessionId,
    request: &CreateRequest,
    reason: FailureReason,
    message: String,
) -> Reply {
    agent.compose_reply(
        id.clone(),
        request.request_id.clone(),
        request.labels.clone(),
        ReplyKind::Failed(Failed { reason, message }),
    )
}

async fn redelivered<Q: Queues + 'static>(
    agent: &Agent<Q>,
    id: &SessionId,
    request: &CreateRequest,
    message: &ReceivedMessage,
) {
    // The same create again (its first reply was lost, or a producer
    // retried): answer with the running session instead of a second browser.
    match agent.ready_reply(id) {
        Some(reply) => {
            answer(agent, &request_targets(request), &reply, message).await;
        }
        // Still starting: the first delivery will answer.
        None => give_back(agent, message).await,
    }
}

/// A message that is not a valid request: answered with `session.failed`
/// when it names a reply target, dead-lettered otherwise.
async fn refuse<Q: Queues + 'static>(
    agent: &Agent<Q>,
    message: &ReceivedMessage,
    error: crate::protocol::MessageError,
) {
    agent.metrics().failed("invalidRequest");
    tracing::warn!(message_id = %message.message_id, %error, "invalid request");
    if let Some(target) = error.reply_target().filter(|t| t.has_destination()) {
        let targets = ReplyTargets::new(target.reply_to.as_ref(), target.callback_url.as_ref());
        let reply = agent.compose_reply(
            target
                .session_id
                .clone()
                .unwrap_or_else(SessionId::generate),
            target.request_id.clone(),
            Default::default(),
            ReplyKind::Failed(Failed {
                reason: FailureReason::InvalidRequest,
                message: error.to_string(),
            }),
        );
        if answer(agent, &targets, &reply, message).await {
            return;
        }
    }
    dead_letter(agent, message).await;
}

async fn dead_letter<Q: Queues + 'static>(agent: &Agent<Q>, message: &ReceivedMessage) {
    let Some(dlq) = agent.dead_letter_queue() else {
        // No dead-letter queue configured: make the message visible again so
        // the queue's redrive policy moves it after maxReceiveCount receives.
        let _ = agent
            .queues()
            .change_visibility(agent.request_queue(), &message.receipt, Duration::ZERO)
            .await;
        return;
    };
    let moved = OutgoingMessage {
        body: message.body.clone(),
        delay: Duration::ZERO,
    };
    match agent
        .queues()
        .send(&QueueUrl::new(dlq.as_str()), &moved)
        .await
    {
        Ok(_) => finish(agent, message).await,
        Err(error) => tracing::warn!(%error, "dead-lettering failed; the message stays queued"),
    }
}

async fn give_back<Q: Queues + 'static>(agent: &Agent<Q>, message: &ReceivedMessage) {
    if let Err(error) = agent
        .queues()
        .change_visibility(agent.request_queue(), &message.receipt, GIVE_BACK_DELAY)
        .await
    {
        tracing::warn!(%error, "could not give a request back; it reappears after its visibility timeout");
    }
}

async fn finish<Q: Queues + 'static>(agent: &Agent<Q>, message: &ReceivedMessage) {
    if let Err(error) = agent
        .queues()
        .delete(agent.request_queue(), &message.receipt)
        .await
    {
        tracing::warn!(%error, "answered request not deleted; it may be answered twice");
    }
}
