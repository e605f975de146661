//! What this agent says: replies to requesters, composed here from what the
//! session table knows and sent here (through [`Replier`], which owns the
//! wire formats and the callbacks), and the messages it puts on the fleet's
//! events queue (announcements, forwarded deletes).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::replies::{Delivery, Replier, ReplyTargets};
use super::requesters::{Requester, termination_replies};
use super::sessions::{ActiveSession, timestamp};
use super::table::SessionRecord;
use crate::cloud::queues::{QueueError, QueueUrl, Queues};
use crate::protocol::{
    CreateRequest, Endpoints, Failed, FailureReason, InstanceId, Ready, Reply, ReplyKind,
    RequestId, SessionId, Terminated, TerminationReason,
};

/// Longest wait for one announcement to reach the events queue.
pub const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(5);

/// The agent's outgoing messages.
pub struct Outbox<Q> {
    queues: Arc<Q>,
    replier: Replier,
    instance: InstanceId,
    /// Where clients reach the gateway (`host:port`), for ready replies.
    gateway: String,
    events: QueueUrl,
}

impl<Q: Queues> Outbox<Q> {
    /// An outbox of `instance`, whose gateway clients reach at `gateway`,
    /// sending through `queues` and `replier` and announcing on `events`.
    pub fn new(
        queues: Arc<Q>,
        replier: Replier,
        instance: InstanceId,
        gateway: String,
        events: QueueUrl,
    ) -> Self {
        Outbox {
            queues,
            replier,
            instance,
            gateway,
            events,
        }
    }

    /// The instance replies and forwards name.
    pub fn instance_id(&self) -> InstanceId {
        self.instance.clone()
    }

    /// A reply from this instance, written now.
    pub fn reply(
        &self,
        session_id: SessionId,
        request_id: Option<RequestId>,
        labels: BTreeMap<String, String>,
        kind: ReplyKind,
    ) -> Reply {
        Reply {
            kind,
            session_id,
            request_id,
            instance_id: self.instance_id(),
            labels,
            at: jiff::Timestamp::now(),
        }
    }

    /// `session.ready` for an active session; `session.failed`
    /// (`sessionExists`) for one adopted after a restart, whose token the
    /// agent no longer knows.
    pub fn ready(&self, session: &ActiveSession) -> Reply {
        let record = &session.record;
        let kind = match &session.token {
            Some(token) => ReplyKind::Ready(Ready {
                endpoints: Endpoints::through_gateway(
                    &self.gateway,
                    &record.id,
                    &record.browser_path,
                ),
                token: token.clone(),
                expires_at: timestamp(record.expires),
            }),
            None => ReplyKind::Failed(Failed {
                reason: FailureReason::SessionExists,
                message: "the session runs on this instance, but its token is not kept \
                          across agent restarts"
                    .into(),
            }),
        };
        self.reply(
            record.id.clone(),
            record.request_id.clone(),
            record.labels.clone(),
            kind,
        )
    }

    /// `session.failed` for a create that will not run.
    pub fn failed(
        &self,
        id: &SessionId,
        request: &CreateRequest,
        reason: FailureReason,
        message: String,
    ) -> Reply {
        self.reply(
            id.clone(),
            request.request_id.clone(),
            request.labels.clone(),
            ReplyKind::Failed(Failed { reason, message }),
        )
    }

    /// Sends `reply` to the queue target (waiting for SQS to take it) and
    /// starts its callback in the background; returns how the callback
    /// ends, when there is one.
    pub async fn send(
        &self,
        targets: &ReplyTargets,
        reply: &Reply,
    ) -> Result<Option<Delivery>, QueueError> {
        self.replier.send(&*self.queues, targets, reply).await
    }

    /// Sends `session.terminated` for the session of `record` to
    /// `requesters`, each target once; a failure is logged.
    pub async fn terminated(
        &self,
        record: &SessionRecord,
        reason: TerminationReason,
        requesters: &[Requester],
    ) {
        for requester in termination_replies(requesters) {
            let reply = self.reply(
                record.id.clone(),
                requester.request_id,
                record.labels.clone(),
                ReplyKind::Terminated(Terminated {
                    reason,
                    message: None,
                }),
            );
            if let Err(error) = self.send(&requester.targets, &reply).await {
                tracing::warn!(session = %record.id, %error, "termination reply not sent");
            }
        }
    }

    /// Puts `message` on the fleet's events queue.
    pub async fn to_events(&self, message: &impl Serialize) -> Result<(), String> {
        let body = serde_json::to_string(message).map_err(|e| e.to_string())?;
        let message = self.replier.event_message(body);
        self.queues
            .send(&self.events, &message)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Waits up to `deadline` for callbacks in flight, then abandons the rest.
    pub async fn finish(&self, deadline: Duration) {
        self.replier.finish(deadline).await;
    }
}
