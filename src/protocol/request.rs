//! Session requests as they arrive on a fleet's request queue.
//!
//! Two shapes are accepted and normalized into one [`Inbound`]:
//!
//! * **Protocol v1** (`"version": 1`), camelCase:
//!   `{"version":1,"action":"create","sessionId"?,"requestId"?,"ttlSeconds"?,
//!   "profile"?,"proxy"?,"args"?,"extensions"?,"startUrl"?,"replyTo"?,
//!   "callbackUrl"?,"labels"?,"startDeadline"?}` or
//!   `{"version":1,"action":"delete","sessionId","requestId"?,"replyTo"?,
//!   "callbackUrl"?}`.
//! * **The legacy Browser Automation Launcher shape**, snake_case and without
//!   `version`; see [`legacy`] for how its fields map.
//!
//! A message with `version` is v1 (or refused as an unsupported version). A
//! message without `version` is legacy when it has any of the legacy-only
//! fields `id`, `requester_id`, `session_id`, `ttl_minutes`, `proxy_config` or
//! `chrome_args`, and refused otherwise. `action` and `extensions` exist in
//! both shapes and decide nothing.
//!
//! `extensions` items are names of unpacked extensions in the agent's
//! extensions directory; in both shapes an item may also be a Unix or
//! Windows path, read as the name its last component gives
//! ([`extension_name`]), since the launcher's producers send paths. Only the
//! name is kept, and the agent refuses one its directory does not have.
//!
//! Fields this agent does not know are ignored in both shapes, so producers
//! can add fields before every agent understands them. A field set to `null`
//! counts as absent.

pub mod legacy;

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use super::MAX_MESSAGE_BYTES;
use super::error::{MessageError, ReplyTarget, excerpt};
use super::ids::{InvalidValue, ProfileName, RequestId, SessionId};
use super::proxy::ProxyConfig;
use super::urls::{CallbackUrl, ReplyQueueUrl, check_start_url};

/// Longest session lifetime a request may ask for (7 days). The agent clamps
/// it further to the fleet's hard maximum.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Most browser arguments in one request.
pub const MAX_ARGS: usize = 64;
/// Longest browser argument, in bytes.
pub const MAX_ARG_LEN: usize = 4096;
/// Most extensions in one request.
pub const MAX_EXTENSIONS: usize = 32;
/// Longest extension name.
pub const MAX_EXTENSION_NAME_LEN: usize = 128;
/// Longest `extensions` item given as a path, in bytes.
pub const MAX_EXTENSION_PATH_LEN: usize = 4096;
/// Most labels in one request.
pub const MAX_LABELS: usize = 64;
/// Longest label key, in bytes.
pub const MAX_LABEL_KEY_LEN: usize = 128;
/// Longest label value, in characters.
pub const MAX_LABEL_VALUE_CHARS: usize = 256;

/// A request taken off the queue.
// One exists per message being handled, so the size difference between the
// variants costs nothing worth a Box in every match.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Start a browser session.
    Create(CreateRequest),
    /// End a browser session.
    Delete(DeleteRequest),
}

impl Inbound {
    /// Where replies to this request go and the ids to put in them.
    pub fn reply_target(&self) -> ReplyTarget {
        match self {
            Inbound::Create(create) => ReplyTarget {
                reply_to: create.reply_to.clone(),
                callback_url: create.callback_url.clone(),
                request_id: create.request_id.clone(),
                session_id: create.session_id.clone(),
                labels: create.labels.clone(),
            },
            Inbound::Delete(delete) => ReplyTarget {
                reply_to: delete.reply_to.clone(),
                callback_url: delete.callback_url.clone(),
                request_id: delete.request_id.clone(),
                session_id: Some(delete.session_id.clone()),
                labels: Default::default(),
            },
        }
    }
}

/// A request for a browser session, whichever shape it came in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateRequest {
    /// The id the session gets; the agent generates one when absent.
    pub session_id: Option<SessionId>,
    /// The producer's id for this request, echoed in replies.
    pub request_id: Option<RequestId>,
    /// How long the session may live; the fleet's default when absent. Whole
    /// seconds from 1 s to [`MAX_TTL`].
    pub ttl: Option<Duration>,
    /// A named profile to use instead of a temporary one.
    pub profile: Option<ProfileName>,
    /// Proxy for the browser's traffic.
    pub proxy: Option<ProxyConfig>,
    /// Browser switches as requested; the agent sanitizes them before launch
    /// (see `agent::args`). Only their number and length are checked here.
    pub args: Vec<String>,
    /// Names of unpacked extensions from the agent's extensions directory:
    /// 1 to 128 characters of `A-Z a-z 0-9 . _ -`, starting with a letter or
    /// digit. A request may give a path instead (the launcher's producers
    /// do); only its last component is kept here ([`extension_name`]). The
    /// agent refuses a name with no directory of that name in its extensions
    /// directory.
    pub extensions: Vec<String>,
    /// Page the browser opens first (`http(s)`, `about:` or `data:`).
    pub start_url: Option<String>,
    /// SQS queue for replies.
    pub reply_to: Option<ReplyQueueUrl>,
    /// HTTP callback for replies.
    pub callback_url: Option<CallbackUrl>,
    /// Free-form labels, echoed in replies. Keys are 1 to 128 characters of
    /// `A-Z a-z 0-9 . _ / -`; values at most 256 characters without control
    /// characters.
    pub labels: BTreeMap<String, String>,
    /// When the requester stops waiting (RFC 3339, whole seconds on the wire):
    /// an agent that takes the request later answers `session.failed`
    /// (`startTimeout`) instead of starting a browser nobody waits for.
    /// Agents that predate the field ignore it.
    pub start_deadline: Option<Timestamp>,
}

/// A request to end a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteRequest {
    /// The session to end.
    pub session_id: SessionId,
    /// The producer's id for this request, echoed in replies.
    pub request_id: Option<RequestId>,
    /// SQS queue for the `session.terminated` reply, which echoes
    /// `request_id`. The create's targets are answered too; a target both
    /// name gets one reply (see `agent::requesters`).
    pub reply_to: Option<ReplyQueueUrl>,
    /// HTTP callback for the `session.terminated` reply.
    pub callback_url: Option<CallbackUrl>,
}

/// Parses and validates one queue message (see the [module docs](self) for
/// the shapes). Never panics, whatever the bytes.
pub fn parse_message(body: &[u8]) -> Result<Inbound, MessageError> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(MessageError::TooLarge { size: body.len() });
    }
    // Some producers (PowerShell among them) write a UTF-8 byte order mark.
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let value: Value =
        serde_json::from_slice(body).map_err(|e| MessageError::InvalidJson(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(MessageError::NotAnObject {
            found: json_kind(&value),
        });
    };
    let fields = Fields::new(&map);
    let parsed = match fields.get("version") {
        Some(version) => match whole_number(version) {
            Some(1) => read_v1(&fields),
            Some(n) if n >= 0 => Err(Refusal::Version(u64::try_from(n).unwrap_or(u64::MAX))),
            _ => Err(Refusal::field("version", "must be the number 1")),
        },
        None if legacy::LEGACY_FIELDS.iter().any(|k| map.contains_key(*k)) => legacy::read(&fields),
        None => Err(Refusal::field(
            "version",
            "is required (1), unless the message has the legacy launcher shape",
        )),
    };
    parsed.map_err(|refusal| refusal.into_error(reply_target(&fields)))
}

fn read_v1(f: &Fields<'_>) -> Result<Inbound, Refusal> {
    let action = match f.get("action") {
        None => return Err(Refusal::field("action", "is required: create or delete")),
        Some(Value::String(action)) => action.as_str(),
        Some(_) => return Err(Refusal::field("action", "must be a string")),
    };
    match action {
        "create" => Ok(Inbound::Create(CreateRequest {
            session_id: f.parsed("sessionId", SessionId::new)?,
            request_id: f.parsed("requestId", RequestId::new)?,
            ttl: f.ttl("ttlSeconds", 1)?,
            profile: f.parsed("profile", ProfileName::new)?,
            proxy: f.proxy("proxy")?,
            args: f.args("args")?,
            extensions: f.extensions("extensions")?,
            start_url: f.start_url("startUrl")?,
            reply_to: f.parsed("replyTo", ReplyQueueUrl::new)?,
            callback_url: f.parsed("callbackUrl", CallbackUrl::new)?,
            labels: f.labels("labels")?,
            start_deadline: f.timestamp("startDeadline")?,
        })),
        "delete" => Ok(Inbound::Delete(DeleteRequest {
            session_id: f
                .parsed("sessionId", SessionId::new)?
                .ok_or_else(|| Refusal::field("sessionId", "is required to delete a session"))?,
            request_id: f.parsed("requestId", RequestId::new)?,
            reply_to: f.parsed("replyTo", ReplyQueueUrl::new)?,
            callback_url: f.parsed("callbackUrl", CallbackUrl::new)?,
        })),
        other => Err(Refusal::Action(excerpt(other, 64))),
    }
}

/// Reads the reply target of a message best-effort, from either shape.
fn reply_target(f: &Fields<'_>) -> Option<Box<ReplyTarget>> {
    let valid = |key: &str| f.get(key).and_then(Value::as_str);
    let target = ReplyTarget {
        reply_to: valid("replyTo").and_then(|s| ReplyQueueUrl::new(s).ok()),
        callback_url: valid("callbackUrl").and_then(|s| CallbackUrl::new(s).ok()),
        request_id: valid("requestId")
            .and_then(|s| RequestId::new(s).ok())
            .or_else(|| f.text_or_integer("id").and_then(|s| RequestId::new(s).ok())),
        session_id: valid("sessionId")
            .and_then(|s| SessionId::new(s).ok())
            .or_else(|| {
                f.text_or_integer("session_id")
                    .and_then(|s| SessionId::new(s).ok())
            }),
        labels: f
            .text_or_integer("requester_id")
            .filter(|r| !r.is_empty() && is_label_value(r))
            .map(|r| (legacy::REQUESTER_LABEL.to_owned(), r))
            .into_iter()
            .collect(),
    };
    // A destination named but malformed is no one to answer; none named at
    // all leaves the answer to the fleet's default targets, if it has any.
    let names_none = f.get("replyTo").is_none() && f.get("callbackUrl").is_none();
    (target.has_destination() || names_none).then(|| Box::new(target))
}

/// Why a message was refused, before its reply target is attached.
#[derive(Debug)]
enum Refusal {
    Version(u64),
    Action(String),
    Field { field: String, message: String },
}

impl Refusal {
    fn field(field: impl Into<String>, message: impl Into<String>) -> Refusal {
        Refusal::Field {
            field: field.into(),
            message: message.into(),
        }
    }

    fn into_error(self, target: Option<Box<ReplyTarget>>) -> MessageError {
        match self {
            Refusal::Version(version) => MessageError::UnsupportedVersion { version, target },
            Refusal::Action(action) => MessageError::UnknownAction { action, target },
            Refusal::Field { field, message } => MessageError::Invalid {
                field,
                message,
                target,
            },
        }
    }
}

/// Typed, validated access to the fields of a message object. Every reader
/// treats `null` as absent and names the field as the message spelled it.
struct Fields<'a> {
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn new(map: &'a Map<String, Value>) -> Self {
        Fields { map }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, Refusal> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Refusal::field(key, "must be a string")),
        }
    }

    /// A string (or, for legacy ids, an integer) turned into a checked type.
    fn parsed<T>(
        &self,
        key: &str,
        make: impl FnOnce(String) -> Result<T, InvalidValue>,
    ) -> Result<Option<T>, Refusal> {
        self.string(key)?
            .map(|s| make(s.to_owned()).map_err(|e| Refusal::field(key, e.reason)))
            .transpose()
    }

    /// Legacy producers sometimes send ids as numbers: `"id": 17`.
    fn text_or_integer(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            _ => None,
        }
    }

    fn parsed_id<T>(
        &self,
        key: &str,
        make: impl FnOnce(String) -> Result<T, InvalidValue>,
    ) -> Result<Option<T>, Refusal> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(_) | Value::Number(_)) => match self.text_or_integer(key) {
                Some(text) => make(text)
                    .map(Some)
                    .map_err(|e| Refusal::field(key, e.reason)),
                None => Err(Refusal::field(key, "must be a string or a whole number")),
            },
            Some(_) => Err(Refusal::field(key, "must be a string or a whole number")),
        }
    }

    /// A lifetime in whole `unit_seconds` (1 for seconds, 60 for minutes),
    /// from one unit to [`MAX_TTL`].
    fn ttl(&self, key: &str, unit_seconds: u64) -> Result<Option<Duration>, Refusal> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let max = MAX_TTL.as_secs() / unit_seconds;
        let refused = || Refusal::field(key, format!("must be a whole number from 1 to {max}"));
        let n = whole_number(value).ok_or_else(refused)?;
        let n = u64::try_from(n).map_err(|_| refused())?;
        if !(1..=max).contains(&n) {
            return Err(refused());
        }
        Ok(Some(Duration::from_secs(n * unit_seconds)))
    }

    fn proxy(&self, key: &str) -> Result<Option<ProxyConfig>, Refusal> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        ProxyConfig::from_value(value).map(Some).map_err(|e| {
            let field = if e.field.is_empty() {
                key.to_owned()
            } else {
                format!("{key}.{}", e.field)
            };
            Refusal::field(field, e.message)
        })
    }

    /// An array of strings, at most `max_items`, each passing `check`.
    fn strings(
        &self,
        key: &str,
        max_items: usize,
        check: impl Fn(&str) -> Result<(), String>,
    ) -> Result<Vec<String>, Refusal> {
        let items = match self.get(key) {
            None => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(_) => return Err(Refusal::field(key, "must be an array of strings")),
        };
        if items.len() > max_items {
            return Err(Refusal::field(
                key,
                format!("has {} items; at most {max_items} are allowed", items.len()),
            ));
        }
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let Value::String(s) = item else {
                return Err(Refusal::field(format!("{key}[{i}]"), "must be a string"));
            };
            check(s).map_err(|message| Refusal::field(format!("{key}[{i}]"), message))?;
            out.push(s.clone());
        }
        Ok(out)
    }

    fn args(&self, key: &str) -> Result<Vec<String>, Refusal> {
        self.strings(key, MAX_ARGS, |arg| {
            if arg.len() > MAX_ARG_LEN {
                Err(format!("is longer than {MAX_ARG_LEN} bytes"))
            } else {
                Ok(())
            }
        })
    }

    /// Extension names, each given as a name or as a path whose last
    /// component is one (see [`extension_name`]); only the names are kept.
    fn extensions(&self, key: &str) -> Result<Vec<String>, Refusal> {
        let given = self.strings(key, MAX_EXTENSIONS, |item| {
            extension_name(item)
                .map(|_| ())
                .ok_or_else(|| EXTENSION_RULE.to_owned())
        })?;
        Ok(given
            .iter()
            .filter_map(|item| extension_name(item))
            .map(str::to_owned)
            .collect())
    }

    fn start_url(&self, key: &str) -> Result<Option<String>, Refusal> {
        self.parsed(key, |url| {
            check_start_url(&url)?;
            Ok(url)
        })
    }

    fn timestamp(&self, key: &str) -> Result<Option<Timestamp>, Refusal> {
        self.parsed(key, |text| {
            text.parse::<Timestamp>().map_err(|_| InvalidValue {
                reason: "must be an RFC 3339 time, e.g. 2025-01-02T03:04:05Z",
            })
        })
    }

    fn labels(&self, key: &str) -> Result<BTreeMap<String, String>, Refusal> {
        let map = match self.get(key) {
            None => return Ok(BTreeMap::new()),
            Some(Value::Object(map)) => map,
            Some(_) => return Err(Refusal::field(key, "must be an object of strings")),
        };
        if map.len() > MAX_LABELS {
            return Err(Refusal::field(
                key,
                format!("has {} labels; at most {MAX_LABELS} are allowed", map.len()),
            ));
        }
        let mut labels = BTreeMap::new();
        for (name, value) in map {
            let field = || format!("{key}[{:?}]", excerpt(name, 64));
            if !is_label_key(name) {
                return Err(Refusal::field(
                    field(),
                    "keys must be 1 to 128 characters of A-Z a-z 0-9 . _ / -",
                ));
            }
            match value {
                Value::String(v) if is_label_value(v) => {
                    labels.insert(name.clone(), v.clone());
                }
                _ => {
                    return Err(Refusal::field(
                        field(),
                        "must be a string of at most 256 characters without control characters",
                    ));
                }
            }
        }
        Ok(labels)
    }
}

/// An integral JSON number, also when written with a zero fraction (`30.0`).
fn whole_number(value: &Value) -> Option<i128> {
    let Value::Number(n) = value else {
        return None;
    };
    if let Some(i) = n.as_i64() {
        return Some(i128::from(i));
    }
    if let Some(u) = n.as_u64() {
        return Some(i128::from(u));
    }
    // Only floats are left; 2^63 bounds them well inside i128.
    let f = n.as_f64()?;
    (f.is_finite() && f.fract() == 0.0 && f.abs() < 9.2e18).then_some(f as i128)
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What an `extensions` item may be, as refusals say it (the agent's
/// refusal of a name missing from its extensions directory says it too).
pub const EXTENSION_RULE: &str = "must name an unpacked extension in the fleet's extensions \
    directory: a name of 1 to 128 characters of A-Z a-z 0-9 . _ - starting with a letter or \
    digit (adblock), or a path whose last component is one (/opt/ext/adblock, \
    C:\\ext\\adblock); the agent loads only <extensionsDir>/<name>";

/// The extension an `extensions` item names: the item itself when it is an
/// extension name, or the last component of a Unix or Windows path (`/` and
/// `\` both separate; trailing separators are dropped), when that is one.
/// The rest of a path is never used: nothing outside the agent's extensions
/// directory is loaded. `.`, `..`, an empty last component, control
/// characters anywhere (NUL among them) and items longer than
/// [`MAX_EXTENSION_PATH_LEN`] name nothing.
pub fn extension_name(item: &str) -> Option<&str> {
    if item.len() > MAX_EXTENSION_PATH_LEN || item.chars().any(char::is_control) {
        return None;
    }
    let trimmed = item.trim_end_matches(['/', '\\']);
    let name = trimmed.rsplit(['/', '\\']).next().unwrap_or(trimmed);
    is_extension_name(name).then_some(name)
}

fn is_extension_name(name: &str) -> bool {
    name.len() <= MAX_EXTENSION_NAME_LEN
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn is_label_key(key: &str) -> bool {
    (1..=MAX_LABEL_KEY_LEN).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
}

fn is_label_value(value: &str) -> bool {
    value.chars().count() <= MAX_LABEL_VALUE_CHARS && !value.chars().any(char::is_control)
}

/// A request written as a protocol v1 message, the way the operator enqueues
/// one. [`parse_message`] reads it back unchanged; a TTL with a fraction of a
/// second is rounded up.
impl Serialize for Inbound {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Inbound::Create(create) => CreateWire::from(create).serialize(serializer),
            Inbound::Delete(delete) => DeleteWire::from(delete).serialize(serializer),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreateWire<'a> {
    version: u8,
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<&'a SessionId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a RequestId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<&'a ProfileName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy: Option<&'a ProxyConfig>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    args: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    extensions: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    start_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<&'a ReplyQueueUrl>,
    #[serde(skip_serializing_if = "Option::is_none")]
    callback_url: Option<&'a CallbackUrl>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_deadline: Option<String>,
}

impl<'a> From<&'a CreateRequest> for CreateWire<'a> {
    fn from(c: &'a CreateRequest) -> Self {
        CreateWire {
            version: 1,
            action: "create",
            session_id: c.session_id.as_ref(),
            request_id: c.request_id.as_ref(),
            ttl_seconds: c
                .ttl
                .map(|ttl| ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)),
            profile: c.profile.as_ref(),
            proxy: c.proxy.as_ref(),
            args: &c.args,
            extensions: &c.extensions,
            start_url: c.start_url.as_deref(),
            reply_to: c.reply_to.as_ref(),
            callback_url: c.callback_url.as_ref(),
            labels: &c.labels,
            start_deadline: c.start_deadline.map(|t| t.to_string()),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeleteWire<'a> {
    version: u8,
    action: &'static str,
    session_id: &'a SessionId,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a RequestId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<&'a ReplyQueueUrl>,
    #[serde(skip_serializing_if = "Option::is_none")]
    callback_url: Option<&'a CallbackUrl>,
}

impl<'a> From<&'a DeleteRequest> for DeleteWire<'a> {
    fn from(d: &'a DeleteRequest) -> Self {
        DeleteWire {
            version: 1,
            action: "delete",
            session_id: &d.session_id,
            request_id: d.request_id.as_ref(),
            reply_to: d.reply_to.as_ref(),
            callback_url: d.callback_url.as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(value: Value) -> Result<Inbound, MessageError> {
        parse_message(value.to_string().as_bytes())
    }

    fn create(value: Value) -> CreateRequest {
        match parse(value) {
            Ok(Inbound::Create(create)) => create,
            other => panic!("expected a create request, got {other:?}"),
        }
    }

    fn delete(value: Value) -> DeleteRequest {
        match parse(value) {
            Ok(Inbound::Delete(delete)) => delete,
            other => panic!("expected a delete request, got {other:?}"),
        }
    }

    /// The field an `Invalid` error names, or a description of another error.
    fn refused_field(value: Value) -> String {
        match parse(value) {
            Err(MessageError::Invalid { field, .. }) => field,
            other => format!("not an Invalid error: {other:?}"),
        }
    }

    const QUEUE: &str = "https://sqs.us-east-1.amazonaws.com/123456789012/bf-events";
    const HOOK: &str = "https://hooks.example.com/browserfleet";

    fn full_v1() -> Value {
        json!({
            "version": 1,
            "action": "create",
            "sessionId": "s-1",
            "requestId": "order 17",
            "ttlSeconds": 900,
            "profile": "team-a",
            "proxy": {"server": "socks5://10.0.0.5:1080", "bypass": "localhost", "username": "u", "password": "p"},
            "args": ["--lang=de-DE", "--window-size=1280,800"],
            "extensions": ["adblock", "recorder.v2"],
            "startUrl": "https://example.com/",
            "replyTo": QUEUE,
            "callbackUrl": HOOK,
            "labels": {"team": "a", "example.com/run": "42"},
            "startDeadline": "2025-01-02T03:04:05Z",
        })
    }

    fn full_create() -> CreateRequest {
        CreateRequest {
            session_id: SessionId::new("s-1").ok(),
            request_id: RequestId::new("order 17").ok(),
            ttl: Some(Duration::from_secs(900)),
            profile: ProfileName::new("team-a").ok(),
            proxy: Some(ProxyConfig {
                server: "socks5://10.0.0.5:1080".into(),
                bypass: Some("localhost".into()),
                username: Some("u".into()),
                password: Some(crate::secret::SecretValue::new("p")),
                sealed_credentials: None,
            }),
            args: vec!["--lang=de-DE".into(), "--window-size=1280,800".into()],
            extensions: vec!["adblock".into(), "recorder.v2".into()],
            start_url: Some("https://example.com/".into()),
            reply_to: ReplyQueueUrl::new(QUEUE).ok(),
            callback_url: CallbackUrl::new(HOOK).ok(),
            labels: BTreeMap::from([
                ("example.com/run".to_owned(), "42".to_owned()),
                ("team".to_owned(), "a".to_owned()),
            ]),
            start_deadline: "2025-01-02T03:04:05Z".parse().ok(),
        }
    }

    #[test]
    fn v1_create_reads_every_field() {
        assert_eq!(create(full_v1()), full_create());
    }

    #[test]
    fn v1_create_needs_only_version_and_action() {
        assert_eq!(
            create(json!({"version": 1, "action": "create"})),
            CreateRequest::default()
        );
    }

    #[test]
    fn unknown_fields_are_ignored_and_null_means_absent() {
        let mut message = full_v1();
        message["priority"] = json!("high");
        message["nested"] = json!({"anything": [1, 2]});
        assert_eq!(create(message), full_create());
        let nulls = json!({
            "version": 1, "action": "create", "sessionId": null, "ttlSeconds": null,
            "proxy": null, "args": null, "labels": null,
        });
        assert_eq!(create(nulls), CreateRequest::default());
    }

    #[test]
    fn v1_delete_reads_its_fields_and_needs_a_session() {
        assert_eq!(
            delete(json!({
                "version": 1, "action": "delete", "sessionId": "s-1",
                "requestId": "r-2", "replyTo": QUEUE, "callbackUrl": HOOK,
                "ttlSeconds": "ignored on delete",
            })),
            DeleteRequest {
                session_id: SessionId::new("s-1").expect("valid"),
                request_id: RequestId::new("r-2").ok(),
                reply_to: ReplyQueueUrl::new(QUEUE).ok(),
                callback_url: CallbackUrl::new(HOOK).ok(),
            }
        );
        assert_eq!(
            refused_field(json!({"version": 1, "action": "delete"})),
            "sessionId"
        );
    }

    #[test]
    fn legacy_create_maps_every_field() {
        let parsed = create(json!({
            "id": "job-7",
            "requester_id": "billing-bot",
            "session_id": "legacy-1",
            "ttl_minutes": 30,
            "proxy_config": "user:pw@proxy.internal:3128",
            "chrome_args": ["--lang=fr"],
            "extensions": ["adblock"],
            "replyTo": QUEUE,
        }));
        assert_eq!(
            parsed,
            CreateRequest {
                session_id: SessionId::new("legacy-1").ok(),
                request_id: RequestId::new("job-7").ok(),
                ttl: Some(Duration::from_secs(30 * 60)),
                proxy: Some(ProxyConfig {
                    server: "http://proxy.internal:3128".into(),
                    bypass: None,
                    username: Some("user".into()),
                    password: Some(crate::secret::SecretValue::new("pw")),
                    sealed_credentials: None,
                }),
                args: vec!["--lang=fr".into()],
                extensions: vec!["adblock".into()],
                reply_to: ReplyQueueUrl::new(QUEUE).ok(),
                labels: BTreeMap::from([("requester".to_owned(), "billing-bot".to_owned())]),
                ..CreateRequest::default()
            }
        );
    }

    #[test]
    fn legacy_ids_may_be_numbers_and_proxy_an_object() {
        let parsed = create(json!({
            "id": 17,
            "requester_id": 4,
            "session_id": 99,
            "proxy_config": {"host": "10.1.2.3", "port": 8080, "username": "u", "password": "p"},
        }));
        assert_eq!(parsed.request_id, RequestId::new("17").ok());
        assert_eq!(parsed.session_id, SessionId::new("99").ok());
        assert_eq!(
            parsed.labels.get("requester").map(String::as_str),
            Some("4")
        );
        assert_eq!(
            parsed.proxy.map(|p| (p.server, p.username)),
            Some(("http://10.1.2.3:8080".to_owned(), Some("u".to_owned())))
        );
    }

    #[test]
    fn legacy_action_delete_deletes_and_absent_action_creates() {
        assert_eq!(
            delete(json!({"action": "delete", "session_id": "legacy-1", "id": "job-8"})),
            DeleteRequest {
                session_id: SessionId::new("legacy-1").expect("valid"),
                request_id: RequestId::new("job-8").ok(),
                reply_to: None,
                callback_url: None,
            }
        );
        assert_eq!(
            refused_field(json!({"action": "delete", "id": "job-8"})),
            "session_id"
        );
        assert_eq!(
            create(json!({"id": "job-9", "action": "create"})).request_id,
            RequestId::new("job-9").ok()
        );
    }

    #[test]
    fn legacy_fields_in_a_v1_message_are_ignored() {
        let parsed = create(
            json!({"version": 1, "action": "create", "ttl_minutes": 5, "chrome_args": ["x"]}),
        );
        assert_eq!(parsed, CreateRequest::default());
    }

    #[test]
    fn a_message_without_version_or_legacy_fields_is_refused() {
        assert_eq!(
            refused_field(json!({"action": "create", "sessionId": "s"})),
            "version"
        );
        assert_eq!(refused_field(json!({})), "version");
        assert_eq!(refused_field(json!({"extensions": ["a"]})), "version");
    }

    #[test]
    fn other_versions_are_unsupported_and_odd_ones_invalid() {
        for (version, expected) in [(json!(2), 2), (json!(0), 0), (json!(2.0), 2)] {
            match parse(json!({"version": version, "action": "create"})) {
                Err(MessageError::UnsupportedVersion { version, .. }) => {
                    assert_eq!(version, expected)
                }
                other => panic!("{other:?}"),
            }
        }
        for version in [json!("1"), json!(-1), json!(1.5), json!(true), json!([1])] {
            assert_eq!(
                refused_field(json!({"version": version, "action": "create"})),
                "version"
            );
        }
        assert!(matches!(
            parse(json!({"version": 1.0, "action": "create"})),
            Ok(Inbound::Create(_))
        ));
    }

    #[test]
    fn unknown_or_missing_actions_are_refused() {
        for message in [
            json!({"version": 1, "action": "launch"}),
            json!({"version": 1, "action": "CREATE"}),
            json!({"id": "x", "action": "restart"}),
        ] {
            assert!(
                matches!(
                    parse(message.clone()),
                    Err(MessageError::UnknownAction { .. })
                ),
                "{message}"
            );
        }
        assert_eq!(refused_field(json!({"version": 1})), "action");
        assert_eq!(refused_field(json!({"version": 1, "action": 1})), "action");
        let long = "x".repeat(1000);
        match parse(json!({"version": 1, "action": long})) {
            Err(MessageError::UnknownAction { action, .. }) => {
                assert_eq!(action.chars().count(), 65)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bodies_that_are_not_json_objects_are_refused() {
        for body in [
            &b""[..],
            b"{",
            b"not json",
            b"{\"a\":1}}",
            b"\xff\xfe{}",
            b"{\"a\":\"\xc3\x28\"}",
        ] {
            assert!(
                matches!(parse_message(body), Err(MessageError::InvalidJson(_))),
                "{body:?}"
            );
        }
        assert_eq!(
            parse_message(b"[1]"),
            Err(MessageError::NotAnObject { found: "an array" })
        );
        assert_eq!(
            parse_message(b"null"),
            Err(MessageError::NotAnObject { found: "null" })
        );
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let mut body = b"\xEF\xBB\xBF".to_vec();
        body.extend_from_slice(br#"{"version":1,"action":"create"}"#);
        assert!(matches!(parse_message(&body), Ok(Inbound::Create(_))));
    }

    #[test]
    fn messages_over_256_kib_are_too_large() {
        let padding = |len: usize| {
            let frame = r#"{"version":1,"action":"create","pad":""}"#.len();
            format!(
                r#"{{"version":1,"action":"create","pad":"{}"}}"#,
                "x".repeat(len - frame)
            )
        };
        assert!(parse_message(padding(MAX_MESSAGE_BYTES).as_bytes()).is_ok());
        assert_eq!(
            parse_message(padding(MAX_MESSAGE_BYTES + 1).as_bytes()),
            Err(MessageError::TooLarge {
                size: MAX_MESSAGE_BYTES + 1
            })
        );
    }

    #[test]
    fn ttl_must_be_a_whole_positive_number_within_seven_days() {
        for (ttl, ok) in [
            (json!(1), true),
            (json!(604_800), true),
            (json!(60.0), true),
            (json!(0), false),
            (json!(-5), false),
            (json!(604_801), false),
            (json!(1.5), false),
            (json!("60"), false),
            (json!(u64::MAX), false),
            (json!(1e300), false),
        ] {
            let result = parse(json!({"version": 1, "action": "create", "ttlSeconds": ttl}));
            assert_eq!(result.is_ok(), ok, "{ttl}: {result:?}");
            if !ok {
                assert_eq!(
                    result.err().and_then(|e| e.field().map(str::to_owned)),
                    Some("ttlSeconds".into())
                );
            }
        }
        assert_eq!(
            create(json!({"id": "j", "ttl_minutes": 10_080})).ttl,
            Some(MAX_TTL)
        );
        assert_eq!(
            refused_field(json!({"id": "j", "ttl_minutes": 10_081})),
            "ttl_minutes"
        );
    }

    #[test]
    fn every_field_rule_names_its_field() {
        let cases = [
            (json!({"sessionId": "../x"}), "sessionId"),
            (json!({"sessionId": 5}), "sessionId"),
            (json!({"requestId": "a\u{7}b"}), "requestId"),
            (json!({"profile": ".."}), "profile"),
            (json!({"profile": "a/b"}), "profile"),
            (json!({"startUrl": "file:///etc/passwd"}), "startUrl"),
            (json!({"replyTo": "https://example.com/hook"}), "replyTo"),
            (json!({"callbackUrl": "ftp://example.com/"}), "callbackUrl"),
            (json!({"proxy": {"server": "ftp://p:1"}}), "proxy.server"),
            (json!({"proxy": 7}), "proxy"),
            (json!({"args": "--lang=de"}), "args"),
            (json!({"args": vec!["--a"; 65]}), "args"),
            (json!({"args": ["--a", "--b", "--c", 4]}), "args[3]"),
            (json!({"args": ["x".repeat(4097)]}), "args[0]"),
            (json!({"extensions": vec!["e"; 33]}), "extensions"),
            (json!({"extensions": ["ok", "evil/.."]}), "extensions[1]"),
            (json!({"extensions": [".hidden"]}), "extensions[0]"),
            (json!({"labels": ["a"]}), "labels"),
            (json!({"labels": {"bad key": "v"}}), "labels[\"bad key\"]"),
            (json!({"labels": {"k": 1}}), "labels[\"k\"]"),
            (json!({"labels": {"k": "x".repeat(257)}}), "labels[\"k\"]"),
        ];
        for (fields, expected) in cases {
            let mut message = json!({"version": 1, "action": "create"});
            if let (Some(target), Value::Object(extra)) = (message.as_object_mut(), fields.clone())
            {
                target.extend(extra);
            }
            assert_eq!(refused_field(message), expected, "{fields}");
        }
        let too_many: Map<String, Value> = (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert_eq!(
            refused_field(json!({"version": 1, "action": "create", "labels": too_many})),
            "labels"
        );
        assert_eq!(
            refused_field(json!({"id": "j", "chrome_args": [1]})),
            "chrome_args[0]"
        );
        assert_eq!(
            refused_field(json!({"id": "j", "proxy_config": "bad host:1"})),
            "proxy_config.server"
        );
        assert_eq!(
            refused_field(json!({"id": "j", "requester_id": ""})),
            "requester_id"
        );
        assert_eq!(refused_field(json!({"id": [1]})), "id");
    }

    #[test]
    fn an_extension_path_is_kept_as_its_last_component_in_either_shape() {
        let given = json!([
            "adblock",
            "/opt/ext/recorder.v2",
            "C:\\ext\\win_ext",
            "./rel-ext/",
            "ext\\trailing\\",
            "/mixed\\sep/last",
            "~/Extensions/a//b",
        ]);
        let names = [
            "adblock",
            "recorder.v2",
            "win_ext",
            "rel-ext",
            "trailing",
            "last",
            "b",
        ];
        let v1 = create(json!({"version": 1, "action": "create", "extensions": given}));
        assert_eq!(v1.extensions, names);
        let legacy = create(json!({"id": "job-1", "extensions": given}));
        assert_eq!(legacy.extensions, names);
        // The launcher's own example request.
        assert_eq!(
            create(json!({"id": "job-2", "extensions": ["/path/to/extension"]})).extensions,
            ["extension"]
        );
    }

    #[test]
    fn an_extension_item_naming_no_extension_is_refused_saying_what_is_accepted() {
        for item in [
            "",
            "/",
            "\\",
            ".",
            "..",
            "/opt/ext/..",
            "C:\\ext\\.",
            "/opt/ext/.hidden",
            "C:adblock",
            "/opt/ext/ad block",
            "/opt/ext/ad\u{0}block",
            "/opt/\u{0}/adblock",
            "/opt/ext/\u{e9}t\u{e9}",
        ] {
            for message in [
                json!({"version": 1, "action": "create", "extensions": ["ok", item]}),
                json!({"id": "j", "extensions": ["ok", item]}),
            ] {
                match parse(message) {
                    Err(MessageError::Invalid { field, message, .. }) => {
                        assert_eq!(field, "extensions[1]", "{item:?}");
                        assert_eq!(message, EXTENSION_RULE, "{item:?}");
                    }
                    other => panic!("{item:?}: {other:?}"),
                }
            }
        }
        assert!(EXTENSION_RULE.contains("/opt/ext/adblock"));
        assert!(EXTENSION_RULE.contains("extensions directory"));
        let long_path = format!("/{}/adblock", "d".repeat(MAX_EXTENSION_PATH_LEN));
        assert_eq!(extension_name(&long_path), None);
        let longest_name = "e".repeat(MAX_EXTENSION_NAME_LEN);
        assert_eq!(
            extension_name(&format!("/x/{longest_name}")),
            Some(longest_name.as_str())
        );
        assert_eq!(extension_name(&format!("/x/{longest_name}e")), None);
    }

    #[test]
    fn limits_themselves_are_accepted() {
        let parsed = create(json!({
            "version": 1, "action": "create",
            // 64 arguments of the longest length alone would fill a message.
            "args": vec!["y".repeat(MAX_ARG_LEN / 2); MAX_ARGS],
            "extensions": vec!["e".repeat(MAX_EXTENSION_NAME_LEN); MAX_EXTENSIONS],
            "labels": (0..MAX_LABELS).map(|i| (format!("k{i}"), json!("v".repeat(MAX_LABEL_VALUE_CHARS)))).collect::<Map<String, Value>>(),
        }));
        assert_eq!(parsed.args.len(), MAX_ARGS);
        assert_eq!(parsed.extensions.len(), MAX_EXTENSIONS);
        assert_eq!(parsed.labels.len(), MAX_LABELS);
        let longest =
            create(json!({"version": 1, "action": "create", "args": ["z".repeat(MAX_ARG_LEN)]}));
        assert_eq!(longest.args[0].len(), MAX_ARG_LEN);
    }

    #[test]
    fn an_invalid_message_still_names_its_reply_target() {
        let error = parse(json!({
            "version": 1, "action": "create", "ttlSeconds": 0,
            "sessionId": "s-1", "requestId": "r-1", "replyTo": QUEUE, "callbackUrl": HOOK,
        }))
        .expect_err("invalid ttl");
        assert_eq!(
            error.reply_target(),
            Some(&ReplyTarget {
                reply_to: ReplyQueueUrl::new(QUEUE).ok(),
                callback_url: CallbackUrl::new(HOOK).ok(),
                request_id: RequestId::new("r-1").ok(),
                session_id: SessionId::new("s-1").ok(),
                labels: Default::default(),
            })
        );
    }

    #[test]
    fn reply_targets_come_from_either_shape_and_any_refusal() {
        let legacy =
            parse(json!({"id": 12, "session_id": "l-1", "requester_id": 7, "ttl_minutes": -1, "callbackUrl": HOOK}))
                .expect_err("invalid ttl");
        assert_eq!(
            legacy.reply_target(),
            Some(&ReplyTarget {
                reply_to: None,
                callback_url: CallbackUrl::new(HOOK).ok(),
                request_id: RequestId::new("12").ok(),
                session_id: SessionId::new("l-1").ok(),
                labels: [("requester".to_owned(), "7".to_owned())].into(),
            })
        );
        let version = parse(json!({"version": 3, "replyTo": QUEUE})).expect_err("v3");
        assert!(version.reply_target().is_some_and(|t| t.reply_to.is_some()));
        let action =
            parse(json!({"version": 1, "action": "stop", "replyTo": QUEUE})).expect_err("stop");
        assert!(action.reply_target().is_some());
        let missing_version =
            parse(json!({"action": "create", "callbackUrl": HOOK})).expect_err("no version");
        assert!(missing_version.reply_target().is_some());
    }

    #[test]
    fn a_message_naming_no_destination_leaves_it_to_the_fleet_defaults() {
        let error =
            parse(json!({"version": 1, "action": "create", "ttlSeconds": 0, "requestId": "r"}))
                .expect_err("invalid ttl");
        let target = error.reply_target().expect("the ids, for a default target");
        assert!(!target.has_destination());
        assert_eq!(target.request_id, RequestId::new("r").ok());
    }

    #[test]
    fn no_reply_target_when_the_destination_named_is_malformed() {
        for message in [
            json!({"version": 1, "action": "create", "replyTo": "https://example.com/x"}),
            json!({"version": 1, "action": "create", "ttlSeconds": 0, "callbackUrl": "javascript:x"}),
        ] {
            let error = parse(message.clone()).expect_err("invalid");
            assert_eq!(error.reply_target(), None, "{message}");
        }
    }

    #[test]
    fn errors_never_repeat_proxy_credentials_or_urls() {
        let secret = "hunter2-SECRET";
        let messages = [
            json!({"version": 1, "action": "create", "proxy": format!("http://u:{secret}@bad host:1")}),
            json!({"version": 1, "action": "create", "proxy": {"server": format!("ftp://u:{secret}@p:1")}}),
            json!({"version": 1, "action": "create", "proxy": {"server": "p:1", "password": format!("{secret}\n")}}),
            json!({"version": 1, "action": "create", "callbackUrl": format!("https://u:{secret}@h/")}),
            json!({"id": "j", "proxy_config": format!("socks9://u:{secret}@p:1")}),
        ];
        for message in messages {
            let error = parse(message.clone()).expect_err("invalid");
            assert!(!error.to_string().contains(secret), "{error}");
            assert!(!format!("{error:?}").contains(secret), "{error:?}");
        }
    }

    #[test]
    fn a_request_written_by_the_operator_reads_back_unchanged() {
        let original = Inbound::Create(full_create());
        let body = serde_json::to_vec(&original).expect("serializable");
        assert_eq!(parse_message(&body), Ok(original));
        let minimal = Inbound::Create(CreateRequest::default());
        assert_eq!(
            serde_json::to_value(&minimal).ok(),
            Some(json!({"version": 1, "action": "create"}))
        );
        let delete = Inbound::Delete(DeleteRequest {
            session_id: SessionId::new("s-1").expect("valid"),
            request_id: None,
            reply_to: ReplyQueueUrl::new(QUEUE).ok(),
            callback_url: None,
        });
        assert_eq!(
            serde_json::to_value(&delete).ok(),
            Some(json!({"version": 1, "action": "delete", "sessionId": "s-1", "replyTo": QUEUE}))
        );
        let body = serde_json::to_vec(&delete).expect("serializable");
        assert_eq!(parse_message(&body), Ok(delete));
    }

    #[test]
    fn a_fractional_ttl_is_written_rounded_up() {
        let request = Inbound::Create(CreateRequest {
            ttl: Some(Duration::from_millis(1500)),
            ..CreateRequest::default()
        });
        let value = serde_json::to_value(&request).expect("serializable");
        assert_eq!(value.get("ttlSeconds"), Some(&json!(2)));
    }

    #[test]
    fn reply_target_of_a_request_carries_its_ids() {
        let target = Inbound::Create(full_create()).reply_target();
        assert!(target.has_destination());
        assert_eq!(target.session_id, SessionId::new("s-1").ok());
        let delete = Inbound::Delete(DeleteRequest {
            session_id: SessionId::new("s-2").expect("valid"),
            request_id: None,
            reply_to: None,
            callback_url: None,
        });
        assert!(!delete.reply_target().has_destination());
    }
}
