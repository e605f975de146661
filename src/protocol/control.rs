//! What the operator sends along to an agent's control API besides a path.
//!
//! A delete an agent could not serve reaches the operator on the fleet's
//! events queue ([`super::EventsMessage`]), with its requester. The operator
//! passes it on to every agent of the fleet as `DELETE /v1/sessions/{id}`,
//! and the one that hosts the session answers that requester: the query
//! parameters `requestId`, `replyTo` and `callbackUrl` carry it
//! ([`DeleteRequester`]). Agents that predate them ignore them.

use serde::{Deserialize, Serialize};

use super::ids::RequestId;
use super::reply::EventsMessage;
use super::urls::{CallbackUrl, ReplyQueueUrl};

/// The requester of a delete, as the query of `DELETE /v1/sessions/{id}`
/// carries it: answered with `session.terminated` by the agent that ends the
/// session, its `requestId` echoed. Each value is checked as in a request; a
/// query that breaks a rule is refused (400).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteRequester {
    /// The id of the delete request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
    /// The requester's SQS queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyQueueUrl>,
    /// The requester's callback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<CallbackUrl>,
}

impl DeleteRequester {
    /// The query parameters (`requestId=…&replyTo=…`, form-encoded); empty
    /// when there is nothing to carry.
    pub fn query(&self) -> String {
        // Plain strings in a flat struct always encode.
        serde_urlencoded::to_string(self).unwrap_or_default()
    }
}

impl From<&EventsMessage> for DeleteRequester {
    fn from(delete: &EventsMessage) -> Self {
        DeleteRequester {
            request_id: delete.request_id.clone(),
            reply_to: delete.reply_to.clone(),
            callback_url: delete.callback_url.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::InstanceId;
    use crate::protocol::SessionId;

    const QUEUE: &str = "http://127.0.0.1:5000/123456789012/bf-replies";
    const HOOK: &str = "https://hooks.example.com/bf?team=a&x=1";

    #[test]
    fn a_forwarded_deletes_requester_travels_as_a_query_and_reads_back() {
        let forwarded = EventsMessage {
            session_id: SessionId::new("s-1").expect("valid"),
            request_id: RequestId::new("job 17 & more").ok(),
            from_instance: InstanceId::new("i-1".to_owned()),
            reply_to: ReplyQueueUrl::new(QUEUE).ok(),
            callback_url: CallbackUrl::new(HOOK).ok(),
        };
        let requester = DeleteRequester::from(&forwarded);
        let query = requester.query();
        assert!(!query.contains(' ') && !query.contains("a&x"), "{query}");
        let read: DeleteRequester = serde_urlencoded::from_str(&query).expect("reads back");
        assert_eq!(read, requester);
        // Beside other parameters, as the agent reads it.
        let read: DeleteRequester =
            serde_urlencoded::from_str(&format!("forward=false&{query}")).expect("reads back");
        assert_eq!(read, requester);
    }

    #[test]
    fn nothing_to_carry_is_an_empty_query_and_bad_values_are_refused() {
        assert_eq!(DeleteRequester::default().query(), "");
        let read: DeleteRequester = serde_urlencoded::from_str("forward=false").expect("reads");
        assert_eq!(read, DeleteRequester::default());
        for bad in [
            "replyTo=https%3A%2F%2Fexample.com%2Fhook",
            "callbackUrl=ftp%3A%2F%2Fx%2F",
            "requestId=a%07b",
        ] {
            assert!(
                serde_urlencoded::from_str::<DeleteRequester>(bad).is_err(),
                "{bad}"
            );
        }
    }
}
