//! Ending sessions: for a reason the supervisor found, for a delete, for a
//! drain or for a launch that failed. An end releases everything the session
//! holds — its browser's process tree, its profile (a temporary one is
//! deleted), its port — before the session leaves the table, and answers its
//! requesters.

use super::metrics::AgentMetrics;
use super::outbox::Outbox;
use super::process::ProcessControl;
use super::profiles::{Profile, ProfileStore};
use super::replies::ReplyTargets;
use super::requesters::Requester;
use super::sessions::{Claimed, Sessions, Unclaimed};
use crate::cloud::queues::Queues;
use crate::protocol::{EventsMessage, RequestId, SessionId, TerminationReason};

/// What [`Ends::end`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The session was ended.
    Ended,
    /// Another caller is ending it.
    AlreadyEnding,
    /// No such session here.
    NotHosted,
}

/// What a delete of a session not hosted here does besides recording its
/// tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotHostedDelete {
    /// Forward it to the fleet's events queue, for the agent that hosts it
    /// (a delete from the request queue, or from a client of the API).
    Forward,
    /// Only record the tombstone: the caller (the operator) sends the delete
    /// to every agent itself, and a forward would come back to it.
    RecordOnly,
}

/// What a delete did.
#[derive(Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The session was here and has ended.
    Ended,
    /// Not here: tombstoned and forwarded to the fleet's events queue.
    Forwarded,
    /// Not here: tombstoned, not forwarded ([`NotHostedDelete::RecordOnly`]).
    NotHosted,
    /// Not here (tombstoned), and the events queue refused the forward.
    ForwardFailed(String),
}

/// What ending a session takes.
pub struct Ends<'a, Q> {
    /// The table the session leaves.
    pub sessions: &'a Sessions,
    /// Kills the browser.
    pub processes: &'a dyn ProcessControl,
    /// Takes the profile back.
    pub profiles: &'a ProfileStore,
    /// Counts terminations.
    pub metrics: &'a AgentMetrics,
    /// Answers the requesters and forwards deletes.
    pub outbox: &'a Outbox<Q>,
}

impl<Q> Clone for Ends<'_, Q> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Q> Copy for Ends<'_, Q> {}

impl<Q: Queues> Ends<'_, Q> {
    /// Ends a session: kills its browser's process tree, frees its port,
    /// releases its profile (deleting a temporary one), saves the table and,
    /// when `announce`, sends `session.terminated` to its requester. The
    /// requesters of deletes that reached the session get `session.terminated`
    /// with `reason` too, announced or not (see [`super::requesters`]): the
    /// delete asked for it, and `announce` is about the create's requester,
    /// whom a caller that passes false answers itself.
    ///
    /// The session stays in the table as `Ending` until everything is
    /// released, so a drain does not finish early and a second `end` (a
    /// delete racing the supervisor) sees it is already ending. The deletes'
    /// requesters are taken with the session, under the lock, so each is
    /// answered once, by the `end` that removes it. Callers that may be
    /// cancelled (an HTTP handler) run it in a task of its own.
    pub async fn end(&self, id: &SessionId, reason: TerminationReason, announce: bool) -> Ending {
        let (record, profile, unheard_of) = match self.sessions.claim_end(id, reason) {
            Ok(Claimed {
                record,
                profile,
                unheard_of,
            }) => (record, profile, unheard_of),
            Err(Unclaimed::AlreadyEnding) => return Ending::AlreadyEnding,
            Err(Unclaimed::NotHosted) => return Ending::NotHosted,
        };
        match self.processes.kill_tree(record.process).await {
            Ok(outcome) => tracing::debug!(session = %id, ?outcome, "browser killed"),
            Err(error) => tracing::warn!(session = %id, %error, "browser kill failed"),
        }
        release_profile(self.profiles, &profile).await;
        let deleters = self.sessions.remove(id, record.port());
        self.metrics.terminated(&reason.to_string());
        tracing::info!(session = %id, %reason, "session ended");
        let mut requesters = Vec::with_capacity(1 + deleters.len());
        // A requester never sent `session.ready` by a killed agent (whose
        // successor took the browser back) hears nothing of its end: its
        // create comes back and starts afresh.
        if announce && !unheard_of {
            requesters.push(Requester {
                request_id: record.request_id.clone(),
                targets: ReplyTargets::new(record.reply_to.as_ref(), record.callback_url.as_ref()),
            });
        }
        requesters.extend(deleters);
        self.outbox.terminated(&record, reason, &requesters).await;
        Ending::Ended
    }

    /// A delete: ends the session if hosted here, answering the create's
    /// requester and the delete's own (`request_id` at `targets`) with
    /// `session.terminated`, each target once. Otherwise records a
    /// tombstone, so that a create of the session taken later is refused
    /// (`cancelled`), and, with [`NotHostedDelete::Forward`], forwards the
    /// delete with its requester to the fleet's events queue for the agent
    /// that hosts it; with [`NotHostedDelete::RecordOnly`] its requester is
    /// not answered here (the agent that hosts the session does that).
    pub async fn delete(
        &self,
        id: &SessionId,
        request_id: Option<RequestId>,
        targets: ReplyTargets,
        not_hosted: NotHostedDelete,
    ) -> DeleteOutcome {
        let deleter = Requester {
            request_id,
            targets,
        };
        if self.sessions.note_delete(id, &deleter) {
            // Ended by this delete, or by another end racing it.
            self.end(id, TerminationReason::Deleted, true).await;
            return DeleteOutcome::Ended;
        }
        let Requester {
            request_id,
            targets,
        } = deleter;
        tracing::info!(session = %id, "delete of a session not hosted here; a create of it will be refused");
        if not_hosted == NotHostedDelete::RecordOnly {
            return DeleteOutcome::NotHosted;
        }
        let forward = EventsMessage {
            session_id: id.clone(),
            request_id,
            from_instance: self.outbox.instance_id(),
            reply_to: targets.reply_to,
            callback_url: targets.callback_url,
        };
        match self.outbox.to_events(&forward).await {
            Ok(()) => DeleteOutcome::Forwarded,
            Err(error) => DeleteOutcome::ForwardFailed(error),
        }
    }

    /// Ends every session still hosted at a drain's deadline, as `reason`.
    pub async fn drain(&self, remaining: Vec<SessionId>, reason: TerminationReason) {
        for id in remaining {
            self.end(&id, reason, true).await;
        }
    }
}

/// Gives a profile back to the store (a temporary one is deleted, a named
/// one marked as used now); a failure is only logged.
pub async fn release_profile(profiles: &ProfileStore, profile: &Profile) {
    if let Err(error) = profiles.release(profile).await {
        tracing::warn!(%error, "profile not released");
    }
}
