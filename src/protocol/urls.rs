//! The URLs a request names: where replies go (an SQS queue, an HTTP
//! callback) and the page the browser opens first. Checked by shape only; no
//! name is resolved here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ids::{InvalidValue, string_newtype};

/// Longest reply queue or callback URL.
pub const MAX_URL_LEN: usize = 2048;
/// Longest start URL. `data:` pages can be long, but the URL ends up on the
/// browser's command line, which Windows limits to 32,767 characters in all.
pub const MAX_START_URL_LEN: usize = 8192;

/// An SQS queue URL to send replies to:
/// `http(s)://HOST[:PORT]/ACCOUNT/QUEUE`, with a 12-digit account and a queue
/// name of 1 to 80 characters of `A-Z a-z 0-9 _ -` (a FIFO queue's name ends
/// in `.fifo`). `http` is accepted for local endpoints such as moto.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ReplyQueueUrl(String);

impl ReplyQueueUrl {
    /// Checks `url` and wraps it.
    pub fn new(url: impl Into<String>) -> Result<Self, InvalidValue> {
        let url = url.into();
        if is_queue_url(&url) {
            Ok(ReplyQueueUrl(url))
        } else {
            Err(InvalidValue {
                reason: "must be an SQS queue URL: http(s)://host/123456789012/queue-name",
            })
        }
    }

    /// The URL as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An HTTP(S) URL that replies are POSTed to, signed (see
/// [`super::callback`]). It may not carry credentials (`user:pass@`): the
/// signature authenticates the sender, and a URL without secrets can be
/// logged.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CallbackUrl(String);

impl CallbackUrl {
    /// Checks `url` and wraps it.
    pub fn new(url: impl Into<String>) -> Result<Self, InvalidValue> {
        let url = url.into();
        match split_http_url(&url) {
            Some(parts) if url.len() <= MAX_URL_LEN && !parts.authority.contains('@') => {
                Ok(CallbackUrl(url))
            }
            _ => Err(InvalidValue {
                reason: "must be an http or https URL with a host and without user:password@",
            }),
        }
    }

    /// The URL as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

string_newtype!(ReplyQueueUrl, CallbackUrl);

/// Checks a start URL: `http(s)://` with a host, `about:…` or `data:…,…`, at
/// most [`MAX_START_URL_LEN`] bytes, without whitespace or control characters.
/// `file:`, `javascript:`, `chrome:` and every other scheme are refused.
pub fn check_start_url(url: &str) -> Result<(), InvalidValue> {
    let refused = InvalidValue {
        reason: "must be an http(s), about: or data: URL without spaces, at most 8192 bytes",
    };
    if url.len() > MAX_START_URL_LEN || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(refused);
    }
    let shaped = if split_http_url(url).is_some() {
        true
    } else if let Some(rest) = strip_prefix_ignore_case(url, "about:") {
        !rest.is_empty()
    } else if let Some(rest) = strip_prefix_ignore_case(url, "data:") {
        rest.contains(',')
    } else {
        false
    };
    if shaped { Ok(()) } else { Err(refused) }
}

/// The parts of an `http(s)://` URL this module looks at.
struct HttpUrl<'a> {
    /// `host[:port]`, possibly with `user:pass@` in front.
    authority: &'a str,
    /// Everything after the authority: path, query and fragment.
    rest: &'a str,
}

/// Splits an `http://` or `https://` URL (scheme in any case) with a
/// non-empty authority and a valid port, if any; `None` for anything else,
/// including whitespace and control characters.
fn split_http_url(url: &str) -> Option<HttpUrl<'_>> {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let after_scheme = strip_prefix_ignore_case(url, "https://")
        .or_else(|| strip_prefix_ignore_case(url, "http://"))?;
    let end = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    let (authority, rest) = after_scheme.split_at(end);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.is_empty() || !has_valid_port(host_port) {
        return None;
    }
    Some(HttpUrl { authority, rest })
}

/// The port after the last `:` outside IPv6 brackets, if any, is a number
/// from 1 to 65535; the host in front of it is not empty.
fn has_valid_port(host_port: &str) -> bool {
    let (host, port) = match host_port.rfind(':') {
        Some(i) if !host_port[i..].contains(']') => (&host_port[..i], Some(&host_port[i + 1..])),
        _ => (host_port, None),
    };
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n))
    });
    !host.is_empty() && port_ok
}

/// `http(s)://authority/ACCOUNT/QUEUE` as AWS and local SQS endpoints write it.
fn is_queue_url(url: &str) -> bool {
    let Some(parts) = split_http_url(url) else {
        return false;
    };
    if url.len() > MAX_URL_LEN || parts.authority.contains('@') {
        return false;
    }
    let Some(path) = parts.rest.strip_prefix('/') else {
        return false;
    };
    let Some((account, queue)) = path.split_once('/') else {
        return false;
    };
    let stem = queue.strip_suffix(".fifo").unwrap_or(queue);
    account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && (1..=80).contains(&queue.len())
        && !stem.is_empty()
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `s` without `prefix`, compared ASCII case-insensitively.
fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_urls_of_aws_and_local_endpoints_are_accepted() {
        for url in [
            "https://sqs.us-east-1.amazonaws.com/123456789012/replies",
            "https://sqs.eu-west-1.amazonaws.com/123456789012/replies.fifo",
            "http://localhost:5000/123456789012/bf-events_1",
            "http://127.0.0.1:4566/000000000000/q",
            "HTTPS://queue.amazonaws.com/123456789012/Q",
        ] {
            assert!(ReplyQueueUrl::new(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn other_urls_are_not_queue_urls() {
        for url in [
            "",
            "sqs.us-east-1.amazonaws.com/123456789012/q",
            "ftp://host/123456789012/q",
            "https:///123456789012/q",
            "https://host/12345678901/q",
            "https://host/123456789012/",
            "https://host/123456789012/a/b",
            "https://host/123456789012/q?x=1",
            "https://host/123456789012/q q",
            "https://host/123456789012/.fifo",
            "https://user:pw@host/123456789012/q",
            "https://host:0/123456789012/q",
            "https://host:99999/123456789012/q",
            "https://host/prefix/123456789012/q",
            &format!("https://host/123456789012/{}", "q".repeat(81)),
        ] {
            assert!(ReplyQueueUrl::new(url).is_err(), "{url}");
        }
    }

    #[test]
    fn callback_urls_are_http_with_a_host_and_no_credentials() {
        for url in [
            "https://hooks.example.com/browserfleet",
            "http://10.0.0.5:8080/cb?tenant=a#x",
            "https://[::1]:8443/",
            "https://example.com",
        ] {
            assert!(CallbackUrl::new(url).is_ok(), "{url}");
        }
        for url in [
            "example.com/cb",
            "file:///etc/passwd",
            "https://",
            "https://:80/",
            "https://user:secret@example.com/",
            "https://example.com/a b",
            "https://example.com:/",
            "https://example.com:http/",
            &format!("https://example.com/{}", "a".repeat(MAX_URL_LEN)),
        ] {
            assert!(CallbackUrl::new(url).is_err(), "{url}");
        }
    }

    #[test]
    fn start_urls_are_web_about_or_data_urls() {
        for url in [
            "https://example.com/",
            "http://localhost:3000/login?next=%2F",
            "about:blank",
            "ABOUT:blank",
            "data:text/html,<h1>hi</h1>",
        ] {
            assert_eq!(check_start_url(url), Ok(()), "{url}");
        }
        for url in [
            "",
            "example.com",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "chrome://settings",
            "about:",
            "data:text/html",
            "https://example.com/a b",
            "https://example.com/\n",
            "--remote-debugging-port=1",
            &format!("data:,{}", "a".repeat(MAX_START_URL_LEN)),
        ] {
            assert!(check_start_url(url).is_err(), "{url}");
        }
    }
}
