//! Identifiers and names that cross the wire: session ids, request ids and
//! profile names. Each is validated once, when it is made, so code that holds
//! one never checks it again.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

/// Longest session id.
pub const MAX_SESSION_ID_LEN: usize = 128;
/// Longest request id, in characters.
pub const MAX_REQUEST_ID_CHARS: usize = 256;
/// Longest profile name.
pub const MAX_PROFILE_NAME_LEN: usize = 64;

/// A value that does not have the shape its type requires. `reason` says what
/// the shape is; it never repeats the value, which may be long or sensitive.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{reason}")]
pub struct InvalidValue {
    /// What the value must look like.
    pub reason: &'static str,
}

/// The id of one browser session: 1 to 128 characters of `A-Z a-z 0-9 . _ : -`,
/// and not `.` or `..`.
///
/// It appears in gateway URL paths (`/sessions/{id}/…`) and in the agent's
/// state file, so it is limited to characters that need no escaping there and
/// can never name a parent directory. `:` is allowed for producers that use
/// prefixed ids (`tenant:1234`), so it must not be used as a Windows file
/// name as it is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SessionId(String);

impl SessionId {
    /// Checks `id` and wraps it.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidValue> {
        let id = id.into();
        let valid_chars = id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if id.is_empty() || id.len() > MAX_SESSION_ID_LEN || !valid_chars || id == "." || id == ".."
        {
            return Err(InvalidValue {
                reason: "must be 1 to 128 characters of A-Z a-z 0-9 . _ : - (and not . or ..)",
            });
        }
        Ok(SessionId(id))
    }

    /// A fresh random id (a UUID v4), for requests that name none.
    pub fn generate() -> Self {
        SessionId(Uuid::new_v4().to_string())
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The id a producer gave its request, echoed in every reply so the producer
/// can match them: free text of 1 to 256 characters without control
/// characters.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestId(String);

impl RequestId {
    /// Checks `id` and wraps it.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidValue> {
        let id = id.into();
        let chars = id.chars().count();
        if chars == 0 || chars > MAX_REQUEST_ID_CHARS || id.chars().any(char::is_control) {
            return Err(InvalidValue {
                reason: "must be 1 to 256 characters without control characters",
            });
        }
        Ok(RequestId(id))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The name of a browser profile kept on a node: 1 to 64 characters of
/// `A-Z a-z 0-9 . _ -`, and not `.` or `..`, because it becomes a directory
/// name under the agent's profile root.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProfileName(String);

impl ProfileName {
    /// Checks `name` and wraps it.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidValue> {
        let name = name.into();
        let valid_chars = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if name.is_empty()
            || name.len() > MAX_PROFILE_NAME_LEN
            || !valid_chars
            || name == "."
            || name == ".."
        {
            return Err(InvalidValue {
                reason: "must be 1 to 64 characters of A-Z a-z 0-9 . _ - (and not . or ..)",
            });
        }
        Ok(ProfileName(name))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Display, `FromStr` and the `String` conversions serde uses, the same for
/// every validated string newtype of the protocol.
macro_rules! string_newtype {
    ($($name:ident),* $(,)?) => {$(
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = InvalidValue;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;

            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    )*};
}

pub(crate) use string_newtype;

string_newtype!(SessionId, RequestId, ProfileName);

/// An EC2 instance id, `i-…`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(String);

impl InstanceId {
    /// Wraps an instance id as EC2 reported it.
    pub fn new(id: impl Into<String>) -> Self {
        InstanceId(id.into())
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_id_accepts_its_alphabet_up_to_128_characters() {
        for id in ["a", "s-1", "tenant:42", "A.b_c-d:e", &"x".repeat(128)] {
            assert_eq!(SessionId::new(id).map(|s| s.to_string()), Ok(id.to_owned()));
        }
    }

    #[test]
    fn session_id_refuses_other_characters_lengths_and_dot_names() {
        for id in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "ä",
            "a\n",
            "%2e",
            &"x".repeat(129),
        ] {
            assert!(SessionId::new(id).is_err(), "{id:?}");
        }
    }

    #[test]
    fn generated_session_ids_are_valid_and_distinct() {
        let a = SessionId::generate();
        let b = SessionId::generate();
        assert_ne!(a, b);
        assert_eq!(SessionId::new(a.as_str()), Ok(a.clone()));
        assert_eq!(a.as_str().len(), 36);
    }

    #[test]
    fn session_id_parses_and_serializes_as_a_plain_string() {
        let id: SessionId = "s-1".parse().expect("valid");
        assert_eq!(serde_json::to_string(&id).ok(), Some("\"s-1\"".to_owned()));
        let back: Result<SessionId, _> = serde_json::from_str("\"s-1\"");
        assert_eq!(back.ok(), Some(id));
        assert!(serde_json::from_str::<SessionId>("\"../x\"").is_err());
    }

    #[test]
    fn request_id_is_free_text_without_control_characters() {
        for id in ["r", "order 17 / retry #2", "Łódź ✓", &"é".repeat(256)] {
            assert!(RequestId::new(id).is_ok(), "{id:?}");
        }
        for id in ["", "a\tb", "a\u{0}", "a\u{85}", &"é".repeat(257)] {
            assert!(RequestId::new(id).is_err(), "{id:?}");
        }
    }

    #[test]
    fn profile_name_is_a_safe_directory_name() {
        for name in ["default", "team-a.v2", "_x", &"p".repeat(64)] {
            assert!(ProfileName::new(name).is_ok(), "{name:?}");
        }
        for name in ["", ".", "..", "a/b", "a\\b", "a:b", "a b", &"p".repeat(65)] {
            assert!(ProfileName::new(name).is_err(), "{name:?}");
        }
    }
}
