//! The message shape of the Browser Automation Launcher, accepted so its
//! producers can move to browserfleet without changing anything.
//!
//! A message is read in this shape when it has no `version` and has at least
//! one of [`LEGACY_FIELDS`]. Its fields map as follows:
//!
//! | legacy field    | becomes                                              |
//! |-----------------|------------------------------------------------------|
//! | `action`        | `"delete"` deletes; absent (or `"create"`) creates   |
//! | `id`            | `request_id` (a string or a whole number)            |
//! | `session_id`    | `session_id` (a string or a whole number)            |
//! | `requester_id`  | the label `requester` (a string or a whole number)   |
//! | `ttl_minutes`   | `ttl`, in minutes: 1 to 10080 (7 days)               |
//! | `proxy_config`  | `proxy`: `"host:port"`, `"scheme://user:pw@host:port"`, `{"server", "username", "password", "bypass"}` or `{"host", "port", …}` |
//! | `chrome_args`   | `args` (sanitized later like any other request's)    |
//! | `extensions`    | `extensions`: names, or paths kept as their last component (below) |
//!
//! The shape has no profile, start URL or labels. It may carry the v1
//! `replyTo` and `callbackUrl` fields, so a legacy producer can opt into
//! replies without changing anything else. A delete reads `session_id`
//! (required), `id`, `replyTo` and `callbackUrl`; other fields are ignored,
//! as are unknown fields in both actions. The agent that ends the session
//! answers a delete's `replyTo`/`callbackUrl` with `session.terminated`
//! echoing its `id`, besides the create's targets (one reply to a target
//! both name).
//!
//! The launcher loaded `extensions` from paths (`["/path/to/extension"]`);
//! the agent loads only unpacked extensions of its own extensions directory.
//! An item that is a path is read as the extension named by its last
//! component (`/opt/ext/adblock`, `C:\ext\adblock` and `./adblock/` all
//! name `adblock`; see [`super::extension_name`]), and only that name is
//! kept: the rest of the path is never used. An item whose last component is
//! no extension name (`..`, `.`, empty, control characters) is refused with
//! a message saying what is accepted, and the agent refuses a name that its
//! extensions directory has no unpacked extension of (`session.failed`,
//! `invalidRequest`). v1 requests read `extensions` the same way.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{CreateRequest, DeleteRequest, Fields, Inbound, Refusal};
use crate::protocol::error::excerpt;
use crate::protocol::ids::{InvalidValue, RequestId, SessionId};
use crate::protocol::urls::{CallbackUrl, ReplyQueueUrl};

/// Fields only the legacy shape has; any of them (with no `version`) marks a
/// message as legacy.
pub const LEGACY_FIELDS: [&str; 6] = [
    "id",
    "requester_id",
    "session_id",
    "ttl_minutes",
    "proxy_config",
    "chrome_args",
];

/// The label that keeps the legacy `requester_id`.
pub const REQUESTER_LABEL: &str = "requester";

pub(super) fn read(f: &Fields<'_>) -> Result<Inbound, Refusal> {
    let delete = match f.get("action") {
        None => false,
        Some(Value::String(action)) => match action.as_str() {
            "create" => false,
            "delete" => true,
            other => return Err(Refusal::Action(excerpt(other, 64))),
        },
        Some(_) => return Err(Refusal::field("action", "must be a string")),
    };
    if delete {
        return Ok(Inbound::Delete(DeleteRequest {
            session_id: f
                .parsed_id("session_id", SessionId::new)?
                .ok_or_else(|| Refusal::field("session_id", "is required to delete a session"))?,
            request_id: f.parsed_id("id", RequestId::new)?,
            reply_to: f.parsed("replyTo", ReplyQueueUrl::new)?,
            callback_url: f.parsed("callbackUrl", CallbackUrl::new)?,
        }));
    }
    let mut labels = BTreeMap::new();
    if let Some(requester) = f.parsed_id("requester_id", requester)? {
        labels.insert(REQUESTER_LABEL.to_owned(), requester);
    }
    Ok(Inbound::Create(CreateRequest {
        session_id: f.parsed_id("session_id", SessionId::new)?,
        request_id: f.parsed_id("id", RequestId::new)?,
        ttl: f.ttl("ttl_minutes", 60)?,
        profile: None,
        proxy: f.proxy("proxy_config")?,
        args: f.args("chrome_args")?,
        extensions: f.extensions("extensions")?,
        start_url: None,
        reply_to: f.parsed("replyTo", ReplyQueueUrl::new)?,
        callback_url: f.parsed("callbackUrl", CallbackUrl::new)?,
        labels,
        start_deadline: None,
    }))
}

/// A requester id must fit in a label value.
fn requester(id: String) -> Result<String, InvalidValue> {
    if super::is_label_value(&id) && !id.is_empty() {
        Ok(id)
    } else {
        Err(InvalidValue {
            reason: "must be 1 to 256 characters without control characters",
        })
    }
}
