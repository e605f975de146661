//! Who the end of a session answers: the create's requester and the
//! requester of every delete that reached the session, each reply target
//! exactly once.
//!
//! A delete names reply targets of its own (`replyTo`, `callbackUrl`) and an
//! id of its own; the create named others. A target both name (the same
//! queue URL, the same callback URL, compared as written) gets one reply,
//! carrying the id of the latest request naming it that has one: the delete
//! is the request that asked for this reply, and the reply's `sessionId`
//! still names the session the create asked for. A delete without an id
//! leaves the create's id on a target they share.

use super::replies::ReplyTargets;
use crate::protocol::RequestId;

/// One requester of a session: where it wants replies and the id to echo.
#[derive(Clone, Debug, Default)]
pub struct Requester {
    /// The id of its request, echoed as `requestId`.
    pub request_id: Option<RequestId>,
    /// Where its replies go.
    pub targets: ReplyTargets,
}

impl Requester {
    /// Whether it named anywhere to answer.
    pub fn has_targets(&self) -> bool {
        !self.targets.is_empty()
    }
}

/// The replies to send for `requesters` (the create's first, then the
/// deletes' in the order they arrived): every distinct target once, grouped
/// by the request id its reply carries. Requesters without targets drop out.
pub fn termination_replies(requesters: &[Requester]) -> Vec<Requester> {
    let mut replies: Vec<Requester> = Vec::new();
    let queues = requesters
        .iter()
        .filter_map(|r| r.targets.reply_to.as_ref());
    for (i, queue) in queues.clone().enumerate() {
        if queues.clone().take(i).any(|earlier| earlier == queue) {
            continue;
        }
        let id = latest_id(requesters, |t| t.reply_to.as_ref() == Some(queue));
        let slot = place(&mut replies, id, |t| t.reply_to.is_none());
        slot.reply_to = Some(queue.clone());
    }
    let callbacks = requesters
        .iter()
        .filter_map(|r| r.targets.callback_url.as_ref());
    for (i, callback) in callbacks.clone().enumerate() {
        if callbacks.clone().take(i).any(|earlier| earlier == callback) {
            continue;
        }
        let id = latest_id(requesters, |t| t.callback_url.as_ref() == Some(callback));
        let slot = place(&mut replies, id, |t| t.callback_url.is_none());
        slot.callback_url = Some(callback.clone());
    }
    replies
}

/// The id of the latest requester naming a target that has an id.
fn latest_id(requesters: &[Requester], names: impl Fn(&ReplyTargets) -> bool) -> Option<RequestId> {
    requesters
        .iter()
        .rev()
        .filter(|r| names(&r.targets))
        .find_map(|r| r.request_id.clone())
}

/// The targets of the reply carrying `id` that still has room (`free`), or
/// a new reply's.
fn place(
    replies: &mut Vec<Requester>,
    id: Option<RequestId>,
    free: impl Fn(&ReplyTargets) -> bool,
) -> &mut ReplyTargets {
    let index = match replies
        .iter()
        .position(|r| r.request_id == id && free(&r.targets))
    {
        Some(index) => index,
        None => {
            replies.push(Requester {
                request_id: id,
                targets: ReplyTargets::default(),
            });
            replies.len() - 1
        }
    };
    &mut replies[index].targets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{CallbackUrl, ReplyQueueUrl};

    fn queue(name: &str) -> Option<ReplyQueueUrl> {
        ReplyQueueUrl::new(format!("http://127.0.0.1:5000/123456789012/{name}")).ok()
    }

    fn hook(name: &str) -> Option<CallbackUrl> {
        CallbackUrl::new(format!("http://127.0.0.1:9/{name}")).ok()
    }

    fn requester(
        id: Option<&str>,
        reply_to: Option<ReplyQueueUrl>,
        callback_url: Option<CallbackUrl>,
    ) -> Requester {
        Requester {
            request_id: id.and_then(|id| RequestId::new(id).ok()),
            targets: ReplyTargets {
                reply_to,
                callback_url,
            },
        }
    }

    /// (request id, queue, callback) of each reply, for comparing.
    fn shown(replies: &[Requester]) -> Vec<(Option<String>, Option<String>, Option<String>)> {
        replies
            .iter()
            .map(|r| {
                (
                    r.request_id.as_ref().map(|i| i.as_str().to_owned()),
                    r.targets.reply_to.as_ref().map(|q| q.as_str().to_owned()),
                    r.targets
                        .callback_url
                        .as_ref()
                        .map(|c| c.as_str().to_owned()),
                )
            })
            .collect()
    }

    fn s(text: &str) -> Option<String> {
        Some(text.to_owned())
    }

    const Q: &str = "http://127.0.0.1:5000/123456789012/";
    const H: &str = "http://127.0.0.1:9/";

    #[test]
    fn a_delete_with_targets_of_its_own_gets_its_own_reply_with_its_id() {
        let replies = termination_replies(&[
            requester(Some("create-1"), queue("creator"), hook("creator")),
            requester(Some("delete-1"), queue("deleter"), None),
        ]);
        assert_eq!(
            shown(&replies),
            [
                (
                    s("create-1"),
                    s(&format!("{Q}creator")),
                    s(&format!("{H}creator"))
                ),
                (s("delete-1"), s(&format!("{Q}deleter")), None),
            ]
        );
    }

    #[test]
    fn a_target_both_name_gets_one_reply_with_the_deletes_id() {
        let replies = termination_replies(&[
            requester(Some("create-1"), queue("shared"), hook("creator")),
            requester(Some("delete-1"), queue("shared"), None),
        ]);
        assert_eq!(
            shown(&replies),
            [
                (s("delete-1"), s(&format!("{Q}shared")), None),
                (s("create-1"), None, s(&format!("{H}creator"))),
            ]
        );
        let same = termination_replies(&[
            requester(Some("c"), queue("q"), hook("h")),
            requester(Some("d"), queue("q"), hook("h")),
        ]);
        assert_eq!(
            shown(&same),
            [(s("d"), s(&format!("{Q}q")), s(&format!("{H}h")))]
        );
    }

    #[test]
    fn a_delete_without_an_id_leaves_the_creates_id_on_a_shared_target() {
        let replies = termination_replies(&[
            requester(Some("create-1"), queue("shared"), None),
            requester(None, queue("shared"), hook("deleter")),
        ]);
        assert_eq!(
            shown(&replies),
            [
                (s("create-1"), s(&format!("{Q}shared")), None),
                (None, None, s(&format!("{H}deleter"))),
            ]
        );
    }

    #[test]
    fn no_targets_no_replies_and_the_create_alone_is_answered_as_before() {
        assert!(termination_replies(&[]).is_empty());
        assert!(termination_replies(&[requester(Some("c"), None, None)]).is_empty());
        let replies = termination_replies(&[
            requester(Some("c"), queue("q"), hook("h")),
            requester(Some("d"), None, None),
        ]);
        assert_eq!(
            shown(&replies),
            [(s("c"), s(&format!("{Q}q")), s(&format!("{H}h")))]
        );
        assert!(!requester(Some("d"), None, None).has_targets());
    }

    #[test]
    fn two_deletes_and_a_create_answer_every_target_exactly_once() {
        let requesters = [
            requester(Some("c"), queue("a"), hook("a")),
            requester(Some("d1"), queue("b"), hook("a")),
            requester(Some("d2"), queue("a"), None),
            requester(None, queue("b"), hook("c")),
        ];
        assert_eq!(
            shown(&termination_replies(&requesters)),
            [
                (s("d2"), s(&format!("{Q}a")), None),
                (s("d1"), s(&format!("{Q}b")), s(&format!("{H}a"))),
                (None, None, s(&format!("{H}c"))),
            ]
        );
    }
}
