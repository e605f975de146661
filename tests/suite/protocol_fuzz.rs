//! Property tests for the two parsers that take input from outside the fleet:
//! queue messages (`protocol::parse_message`) and requested browser arguments
//! (`agent::args::sanitize`). Each property runs 100,000 cases: arbitrary
//! bytes, and structured near-valid input that reaches the deep checks.
//!
//! Proptest picks the structure of each case (which fields, how many
//! arguments); the contents come from a seeded generator ([`Rng`]). Proptest's
//! own element-by-element generation (regex strategies, collections of
//! options) costs 100–2,000 µs a case in an unoptimized test build, minutes
//! per property at 100,000 cases; a seed costs one value. A failing case still
//! reproduces: its seeds are in the failure output, and every assertion prints
//! the input.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use browserfleet::agent::args::{
    AGENT_OWNED, AGENT_OWNED_PREFIXES, ArgPolicy, DEFAULT_BLOCKED, sanitize,
};
use browserfleet::protocol::request::{MAX_ARGS, MAX_EXTENSIONS, MAX_LABELS, extension_name};
use browserfleet::protocol::{
    CallbackUrl, CreateRequest, Inbound, MAX_MESSAGE_BYTES, MAX_TTL, MessageError, ProfileName,
    ProxyConfig, ReplyQueueUrl, RequestId, SessionId, parse_message,
};
use proptest::prelude::*;
use serde_json::{Map, Number, Value, json};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 100_000,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// A seeded generator for contents

/// SplitMix64: small, fast and good enough to spread test inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Mostly short lengths up to `max`, sometimes near `max`.
    fn len(&mut self, max: usize) -> usize {
        if self.chance(90) {
            self.below(max.min(12) + 1)
        } else {
            self.below(max + 1)
        }
    }

    fn text(&mut self, alphabet: &[char], max: usize) -> String {
        let len = self.len(max);
        (0..len).map(|_| *self.pick(alphabet)).collect()
    }
}

const WORD: &[char] = &[
    'a', 'b', 'c', 'x', 'y', 'z', 'A', 'Z', '0', '1', '9', '-', '_', '.',
];
const ID_CHARS: &[char] = &['a', 'Z', '0', '9', '.', '_', ':', '-'];
/// Characters that break things: controls, Unicode whitespace, quotes,
/// separators and multi-byte characters.
const NASTY: &[char] = &[
    'a', 'Z', '0', '-', '=', '/', ':', '@', '.', ' ', '"', '\\', '%', '?', '#', '[', ']', ';', ',',
    '\0', '\n', '\t', '\r', '\u{7}', '\u{1b}', '\u{7f}', '\u{85}', '\u{a0}', '\u{200b}',
    '\u{2028}', '\u{3000}', '\u{feff}', 'é', 'ß', 'İ', '中', '😀', '\u{2212}',
];

fn nasty_text(rng: &mut Rng, max: usize) -> String {
    rng.text(NASTY, max)
}

/// Any JSON value, up to `depth` levels deep.
fn any_json(rng: &mut Rng, depth: u32) -> Value {
    match rng.below(if depth == 0 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(50)),
        2 => Value::from(rng.next() as i64),
        3 => Value::from(rng.next()),
        4 => Number::from_f64(f64::from_bits(rng.next())).map_or(Value::Null, Value::Number),
        5 => Value::from(nasty_text(rng, 16)),
        6 => Value::Array(
            (0..rng.below(4))
                .map(|_| any_json(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.below(4))
                .map(|_| (rng.text(WORD, 6), any_json(rng, depth - 1)))
                .collect(),
        ),
    }
}

// ---------------------------------------------------------------------------
// Near-valid messages

const QUEUE_URLS: &[&str] = &[
    "https://sqs.us-east-1.amazonaws.com/123456789012/bf-events",
    "https://sqs.eu-west-1.amazonaws.com/123456789012/replies.fifo",
    "http://localhost:5000/123456789012/q",
    "https://sqs.us-east-1.amazonaws.com/12345678901/q",
    "https://sqs.us-east-1.amazonaws.com/123456789012/",
    "https://user:pw@sqs.amazonaws.com/123456789012/q",
];
const WEB_URLS: &[&str] = &[
    "https://hooks.example.com/bf",
    "http://10.0.0.5:8080/cb?x=1",
    "https://[::1]:8443/",
    "https://",
    "https://:80/",
    "https://u:secret@example.com/",
    "about:blank",
    "about:",
    "data:text/html,<b>x</b>",
    "data:text/html",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "chrome://settings",
    "HTTPS://EXAMPLE.COM",
    "example.com",
];
const ARGS: &[&str] = &[
    "--lang=de-DE",
    "--window-size=1280,800",
    "--user-agent=Mozilla/5.0 (X11)",
    "--remote-debugging-port=9222",
    "--user-data-dir=/tmp/x",
    "--no-sandbox",
    "-no-sandbox",
    "/no-sandbox",
    "https://example.com",
    "--",
    "",
];
const NUMBERS: &[f64] = &[
    0.0, 1.0, -1.0, 60.0, 1.5, 604_800.0, 604_801.0, 10_080.0, 10_081.0, 1e300,
];

fn queue_or_web_url(rng: &mut Rng) -> Value {
    let base = if rng.chance(50) {
        *rng.pick(QUEUE_URLS)
    } else {
        *rng.pick(WEB_URLS)
    };
    let mut url = base.to_owned();
    if rng.chance(30) {
        url.push_str(&nasty_text(rng, 8));
    }
    if rng.chance(10) {
        url = nasty_text(rng, 30);
    }
    Value::from(url)
}

fn id_value(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 => Value::from(rng.text(ID_CHARS, 130)),
        1 => Value::from(nasty_text(rng, 20)),
        2 => Value::from(rng.next() as i64),
        3 => Value::from(*rng.pick(&["..", ".", "", "s-1", "tenant:42", "a/b"])),
        4 => Value::from("x".repeat(126 + rng.below(5))),
        _ => Value::from(rng.text(WORD, 20)),
    }
}

fn number_value(rng: &mut Rng) -> Value {
    match rng.below(5) {
        0 => Number::from_f64(*rng.pick(NUMBERS)).map_or(Value::Null, Value::Number),
        1 => Value::from(rng.below(700_010) as i64 - 10),
        2 => Value::from(rng.next() as i64),
        3 => Value::from(rng.next()),
        _ => Value::from(rng.below(100).to_string()),
    }
}

fn proxy_server_text(rng: &mut Rng) -> String {
    let scheme = *rng.pick(&[
        "",
        "http://",
        "https://",
        "socks4://",
        "SOCKS5://",
        "ftp://",
        "://",
    ]);
    let userinfo = match rng.below(4) {
        0 => format!("{}:{}@", rng.text(WORD, 5), nasty_text(rng, 5)),
        1 => format!("{}@", rng.text(WORD, 5)),
        _ => String::new(),
    };
    let host = match rng.below(4) {
        0 => format!("[{}]", rng.text(&['0', 'f', ':', '.', 'z'], 8)),
        1 => nasty_text(rng, 10),
        _ => rng.text(WORD, 12),
    };
    let port = match rng.below(4) {
        0 => format!(":{}", rng.below(70_000)),
        1 => format!(":{}", rng.text(WORD, 3)),
        _ => String::new(),
    };
    let slash = if rng.chance(10) { "/" } else { "" };
    format!("{scheme}{userinfo}{host}{port}{slash}")
}

fn proxy_value(rng: &mut Rng) -> Value {
    match rng.below(3) {
        0 => Value::from(proxy_server_text(rng)),
        1 => {
            let mut map = Map::new();
            let fields: [(&str, Value); 6] = [
                ("server", Value::from(proxy_server_text(rng))),
                ("host", Value::from(rng.text(WORD, 10))),
                ("port", number_value(rng)),
                ("username", Value::from(nasty_text(rng, 6))),
                ("password", Value::from(nasty_text(rng, 6))),
                (
                    "bypass",
                    if rng.chance(50) {
                        Value::from(nasty_text(rng, 10))
                    } else {
                        Value::from(vec![rng.text(WORD, 6), rng.text(WORD, 6)])
                    },
                ),
            ];
            for (key, value) in fields {
                if rng.chance(50) {
                    let value = if rng.chance(10) {
                        any_json(rng, 1)
                    } else {
                        value
                    };
                    map.insert(key.to_owned(), value);
                }
            }
            Value::Object(map)
        }
        _ => any_json(rng, 2),
    }
}

fn string_array(rng: &mut Rng, max: usize, item: impl Fn(&mut Rng) -> String) -> Value {
    let len = if rng.chance(95) {
        rng.below(9)
    } else {
        rng.below(max + 1)
    };
    let items = (0..len)
        .map(|_| {
            if rng.chance(3) {
                any_json(rng, 1)
            } else {
                Value::from(item(rng))
            }
        })
        .collect();
    Value::Array(items)
}

fn arg_text(rng: &mut Rng) -> String {
    match rng.below(3) {
        0 => (*rng.pick(ARGS)).to_owned(),
        1 => format!("--{}={}", rng.text(WORD, 10), nasty_text(rng, 8)),
        _ => nasty_text(rng, 20),
    }
}

fn labels_value(rng: &mut Rng) -> Value {
    let len = if rng.chance(95) {
        rng.below(6)
    } else {
        rng.below(70)
    };
    let mut map = Map::new();
    for _ in 0..len {
        let key = if rng.chance(80) {
            rng.text(&['a', 'z', '0', '.', '/', '_', '-'], 10)
        } else {
            nasty_text(rng, 10)
        };
        let value = if rng.chance(90) {
            Value::from(nasty_text(rng, 12))
        } else {
            any_json(rng, 1)
        };
        map.insert(key, value);
    }
    Value::Object(map)
}

/// A valid value for the field `key`.
fn valid_field_value(key: &str, rng: &mut Rng) -> Value {
    match key {
        "version" => json!(1),
        "action" => json!(if rng.chance(80) { "create" } else { "delete" }),
        "sessionId" | "session_id" => json!(format!("s{}", rng.text(ID_CHARS, 100))),
        "requestId" | "id" | "requester_id" => json!(format!("r{}", rng.text(FREE_TEXT, 200))),
        "profile" => json!(format!("p{}", rng.text(WORD, 60))),
        "ttlSeconds" => json!(1 + rng.next() % MAX_TTL.as_secs()),
        "ttl_minutes" => json!(1 + rng.next() % 10_080),
        "proxy" | "proxy_config" => {
            let proxy = valid_proxy(rng);
            if rng.chance(50) {
                serde_json::to_value(&proxy).unwrap_or_default()
            } else {
                Value::from(proxy.server)
            }
        }
        "args" | "chrome_args" => Value::from(
            (0..rng.below(9))
                .map(|_| nasty_text(rng, 30))
                .collect::<Vec<_>>(),
        ),
        "extensions" => Value::from(
            (0..rng.below(5))
                .map(|_| format!("e{}", rng.text(WORD, 20)))
                .collect::<Vec<_>>(),
        ),
        "startUrl" => json!(*rng.pick(&["about:blank", "https://example.com/", "data:,x"])),
        "replyTo" => json!(QUEUE_URLS[0]),
        "callbackUrl" => json!(WEB_URLS[0]),
        "labels" => Value::Object(
            (0..rng.below(6))
                .map(|_| {
                    (
                        format!("k{}", rng.text(&['a', '0', '.', '/', '_', '-'], 20)),
                        Value::from(rng.text(FREE_TEXT, 30)),
                    )
                })
                .collect(),
        ),
        _ => any_json(rng, 2),
    }
}

/// A value for the field `key`: valid most of the time when `careful`
/// (so a message has one or two faults and the checks behind the first
/// field are reached), otherwise mostly plausible, sometimes `null` or any
/// JSON at all.
fn field_value(key: &str, careful: bool, rng: &mut Rng) -> Value {
    if careful && rng.chance(90) {
        return valid_field_value(key, rng);
    }
    match rng.below(10) {
        0 => return Value::Null,
        1 => return any_json(rng, 2),
        _ => {}
    }
    match key {
        "version" => match rng.below(8) {
            0 => json!(2),
            1 => json!("1"),
            2 => json!(1.0),
            3 => json!(-1),
            _ => json!(1),
        },
        "action" => Value::from(*rng.pick(&["create", "create", "delete", "Create", "launch", ""])),
        "sessionId" | "requestId" | "session_id" | "id" | "requester_id" | "profile" => {
            id_value(rng)
        }
        "ttlSeconds" | "ttl_minutes" => number_value(rng),
        "proxy" | "proxy_config" => proxy_value(rng),
        "args" | "chrome_args" => string_array(rng, 70, arg_text),
        "extensions" => string_array(rng, 36, |rng| {
            rng.text(&['a', '0', '.', '_', '-', '/', '\\'], 10)
        }),
        "startUrl" | "replyTo" | "callbackUrl" => queue_or_web_url(rng),
        "labels" => labels_value(rng),
        _ => any_json(rng, 2),
    }
}

const KEYS: [&str; 21] = [
    "version",
    "action",
    "sessionId",
    "requestId",
    "ttlSeconds",
    "profile",
    "proxy",
    "args",
    "extensions",
    "startUrl",
    "replyTo",
    "callbackUrl",
    "labels",
    "id",
    "requester_id",
    "session_id",
    "ttl_minutes",
    "proxy_config",
    "chrome_args",
    "somethingNew",
    "priority",
];

/// A JSON object with a random selection of the protocol's fields (both
/// shapes, and unknown ones), each with a mostly plausible value. Proptest
/// chooses the fields (one bit of `fields` each, so shrinking drops fields)
/// and whether the values are careful; the seed chooses the values.
fn near_valid_message() -> impl Strategy<Value = Value> {
    (any::<u32>(), any::<bool>(), any::<u64>()).prop_map(|(fields, careful, seed)| {
        let rng = &mut Rng(seed);
        let mut map = Map::new();
        for (bit, key) in KEYS.iter().enumerate() {
            // A careful message mostly has version and action.
            let forced = careful && bit < 2 && rng.chance(80);
            if forced || fields & (1 << bit) != 0 {
                map.insert((*key).to_owned(), field_value(key, careful, rng));
            }
        }
        Value::Object(map)
    })
}

/// Bytes JSON is made of, so random bodies get past the first character.
const JSON_BYTES: &[u8] = b"{}[]\":,.-+0123456789eEtrufalsn \\/\x00\x7f\xc3\xa9\xff";

/// Arbitrary bytes: uniformly random, or random JSON punctuation and words.
fn arbitrary_body() -> impl Strategy<Value = Vec<u8>> {
    (0usize..512, any::<bool>(), any::<u64>()).prop_map(|(len, json_like, seed)| {
        let rng = &mut Rng(seed);
        (0..len)
            .map(|_| {
                if json_like {
                    *rng.pick(JSON_BYTES)
                } else {
                    rng.next() as u8
                }
            })
            .collect()
    })
}

/// Checks what every successful parse guarantees.
fn assert_parsed_invariants(body: &[u8], inbound: &Inbound) -> Result<(), TestCaseError> {
    let shown = String::from_utf8_lossy(body);
    if let Inbound::Create(create) = inbound {
        prop_assert!(create.args.len() <= MAX_ARGS, "{}", shown);
        prop_assert!(create.extensions.len() <= MAX_EXTENSIONS, "{}", shown);
        // Paths are kept as their last component: a plain name, never a path.
        for name in &create.extensions {
            prop_assert_eq!(extension_name(name), Some(name.as_str()), "{}", shown);
            prop_assert!(!name.contains(['/', '\\']), "{}", shown);
        }
        prop_assert!(create.labels.len() <= MAX_LABELS, "{}", shown);
        if let Some(ttl) = create.ttl {
            prop_assert!(ttl >= Duration::from_secs(1) && ttl <= MAX_TTL, "{}", shown);
            prop_assert_eq!(ttl.subsec_nanos(), 0);
        }
        if let Some(proxy) = &create.proxy {
            prop_assert!(
                proxy.password.is_none() || proxy.username.is_some(),
                "{}",
                shown
            );
            prop_assert!(
                ["http://", "https://", "socks4://", "socks5://"]
                    .iter()
                    .any(|scheme| proxy.server.starts_with(scheme)),
                "{}",
                shown
            );
        }
    }
    // A parsed request, written back as v1, reads back unchanged.
    let written = serde_json::to_vec(inbound).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let reread = parse_message(&written);
    prop_assert_eq!(reread.as_ref(), Ok(inbound), "{}", shown);
    Ok(())
}

fn assert_error_invariants(body: &[u8], error: &MessageError) -> Result<(), TestCaseError> {
    let shown = String::from_utf8_lossy(body);
    // A target without a destination is one that named none (absent or
    // null; the fleet's defaults answer it), never one that named a
    // malformed destination.
    if let Some(target) = error.reply_target()
        && !target.has_destination()
    {
        let object = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.as_object().cloned());
        prop_assert!(
            object.is_some_and(|o| ["replyTo", "callbackUrl"]
                .iter()
                .all(|k| o.get(*k).is_none_or(serde_json::Value::is_null))),
            "{}",
            shown
        );
    }
    // Display works and stays short enough for a reply message.
    prop_assert!(error.to_string().len() < 1024, "{}: {}", error, shown);
    Ok(())
}

fn check_parse(body: &[u8]) -> Result<(), TestCaseError> {
    match parse_message(body) {
        Ok(inbound) => assert_parsed_invariants(body, &inbound),
        Err(error) => assert_error_invariants(body, &error),
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_message_survives_arbitrary_bytes(body in arbitrary_body()) {
        check_parse(&body)?;
    }

    #[test]
    fn parse_message_survives_near_valid_objects(message in near_valid_message()) {
        let body = message.to_string();
        prop_assume!(body.len() <= MAX_MESSAGE_BYTES);
        check_parse(body.as_bytes())?;
    }

    #[test]
    fn parse_message_survives_damaged_valid_messages(
        message in near_valid_message(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut body = message.to_string().into_bytes();
        let at = flip.index(body.len());
        body[at] = byte;
        body.truncate(cut.index(body.len() + 1));
        check_parse(&body)?;
    }
}

// ---------------------------------------------------------------------------
// Round trips of valid requests

/// A valid proxy in normalized form.
fn valid_proxy(rng: &mut Rng) -> ProxyConfig {
    let scheme = *rng.pick(&["http", "https", "socks4", "socks5"]);
    let host = if rng.chance(20) {
        format!("[fd00::{}]", rng.below(0xffff))
    } else {
        format!("h{}", rng.text(&['a', 'z', '0', '.', '-', '_'], 20))
    };
    let port = if rng.chance(80) {
        format!(":{}", 1 + rng.below(65_535))
    } else {
        String::new()
    };
    let username = rng
        .chance(50)
        .then(|| format!("u{}", rng.text(&['a', '@', ':', ' ', 'é'], 10)));
    let password = username
        .is_some()
        .then(|| format!("p{}", rng.text(&['a', '@', ':', '"', '%'], 10)))
        .filter(|_| rng.chance(70));
    let bypass = rng.chance(40).then(|| {
        format!(
            "b{}",
            rng.text(&['a', '.', '*', ';', ',', '<', '>', '-'], 20)
        )
    });
    ProxyConfig {
        server: format!("{scheme}://{host}{port}"),
        bypass,
        username,
        password: password.map(browserfleet::secret::SecretValue::new),
        sealed_credentials: None,
    }
}

/// Text without control characters, as request ids and label values allow.
const FREE_TEXT: &[char] = &[
    'a', 'Z', ' ', '"', '\\', '/', 'é', '中', '😀', '\u{a0}', '\u{2028}',
];

fn valid_create(rng: &mut Rng) -> CreateRequest {
    let start_url = match rng.below(4) {
        0 => Some(format!(
            "https://x{}.com/{}",
            rng.text(&['a', 'z'], 8),
            rng.text(&['a', '/', '?', '=', '%'], 10)
        )),
        1 => Some(format!("about:blank{}", rng.text(&['a', 'z'], 8))),
        2 => Some(format!("data:text/plain,{}", rng.text(&['a', '%', '<'], 8))),
        _ => None,
    };
    CreateRequest {
        session_id: rng
            .chance(60)
            .then(|| SessionId::new(format!("s{}", rng.text(ID_CHARS, 100))).ok())
            .flatten(),
        request_id: rng
            .chance(60)
            .then(|| RequestId::new(format!("r{}", rng.text(FREE_TEXT, 200))).ok())
            .flatten(),
        ttl: rng
            .chance(60)
            .then(|| Duration::from_secs(1 + rng.next() % MAX_TTL.as_secs())),
        profile: rng
            .chance(40)
            .then(|| ProfileName::new(format!("p{}", rng.text(WORD, 60))).ok())
            .flatten(),
        proxy: rng.chance(40).then(|| valid_proxy(rng)),
        args: (0..rng.below(9)).map(|_| nasty_text(rng, 30)).collect(),
        extensions: (0..rng.below(5))
            .map(|_| format!("e{}", rng.text(WORD, 20)))
            .collect(),
        start_url,
        reply_to: rng
            .chance(50)
            .then(|| {
                ReplyQueueUrl::new(format!(
                    "https://sqs.us-east-1.amazonaws.com/123456789012/q{}",
                    rng.text(&['a', '_', '-'], 40)
                ))
                .ok()
            })
            .flatten(),
        callback_url: rng
            .chance(50)
            .then(|| {
                CallbackUrl::new(format!(
                    "https://hooks.example:{}/{}",
                    1 + rng.below(65_535),
                    rng.text(&['a', '/', '?', '='], 20)
                ))
                .ok()
            })
            .flatten(),
        labels: (0..rng.below(6))
            .map(|_| {
                (
                    format!("k{}", rng.text(&['a', '0', '.', '/', '_', '-'], 20)),
                    rng.text(FREE_TEXT, 30),
                )
            })
            .collect(),
        // Whole seconds: the wire carries no fraction.
        start_deadline: rng.chance(50).then(|| {
            jiff::Timestamp::from_second(1_700_000_000 + (rng.next() % 100_000_000) as i64)
                .expect("in range")
        }),
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn valid_requests_round_trip_through_v1(seed in any::<u64>()) {
        let inbound = Inbound::Create(valid_create(&mut Rng(seed)));
        let body = serde_json::to_vec(&inbound).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parse_message(&body), Ok(inbound));
    }

    #[test]
    fn legacy_requests_map_their_fields(
        numeric_id in any::<bool>(),
        present in prop::collection::vec(any::<bool>(), 4),
        seed in any::<u64>(),
    ) {
        let rng = &mut Rng(seed);
        let id = if numeric_id { json!(rng.next() as u32) } else { json!(format!("j{}", rng.text(FREE_TEXT, 60))) };
        let requester = present[0].then(|| format!("q{}", rng.text(FREE_TEXT, 60)));
        let session = present[1].then(|| format!("s{}", rng.text(ID_CHARS, 60)));
        let minutes = present[2].then(|| 1 + rng.next() % 10_080);
        let proxy = present[3].then(|| (format!("h{}", rng.text(&['a', '0', '.', '-'], 15)), 1 + rng.below(65_535)));
        let chrome_args: Vec<String> = (0..rng.below(8)).map(|_| nasty_text(rng, 30)).collect();
        let extensions: Vec<String> = (0..rng.below(5)).map(|_| format!("e{}", rng.text(WORD, 20))).collect();

        let mut message = json!({"id": id, "chrome_args": chrome_args, "extensions": extensions});
        if let Some(requester) = &requester { message["requester_id"] = json!(requester); }
        if let Some(session) = &session { message["session_id"] = json!(session); }
        if let Some(minutes) = minutes { message["ttl_minutes"] = json!(minutes); }
        if let Some((host, port)) = &proxy { message["proxy_config"] = json!(format!("{host}:{port}")); }
        let expected = CreateRequest {
            session_id: session.and_then(|s| SessionId::new(s).ok()),
            request_id: RequestId::new(match &id { Value::String(s) => s.clone(), other => other.to_string() }).ok(),
            ttl: minutes.map(|m| Duration::from_secs(m * 60)),
            proxy: proxy.map(|(host, port)| ProxyConfig {
                server: format!("http://{host}:{port}"),
                bypass: None,
                username: None,
                password: None,
                sealed_credentials: None,
            }),
            args: chrome_args,
            extensions,
            labels: requester.into_iter().map(|r| ("requester".to_owned(), r)).collect::<BTreeMap<_, _>>(),
            ..CreateRequest::default()
        };
        prop_assert_eq!(parse_message(message.to_string().as_bytes()), Ok(Inbound::Create(expected)), "{}", message);
    }
}

// ---------------------------------------------------------------------------
// Browser arguments

/// How Chromium reads one argument (`base/command_line.cc`), on Linux and
/// Windows at once: trim whitespace, accept `--`, `-` or `/` as a switch
/// prefix, cut the name at `=`, compare in lower case. `None` for a
/// positional argument or the `--` terminator. Written independently of the
/// sanitizer, as the oracle it is checked against.
fn chromium_switch_name(arg: &str) -> Option<String> {
    let trimmed = arg.trim();
    for prefix in ["--", "-", "/"] {
        if let Some(rest) = trimmed.strip_prefix(prefix) {
            if rest.is_empty() {
                return None;
            }
            let name = rest.split('=').next().unwrap_or(rest);
            return Some(name.to_ascii_lowercase());
        }
    }
    None
}

fn forbidden_names() -> Vec<&'static str> {
    DEFAULT_BLOCKED
        .iter()
        .map(|(name, _)| *name)
        .chain(AGENT_OWNED)
        .chain(AGENT_OWNED_PREFIXES)
        .chain([
            "remote-debugging-port",
            "remote-debugging-address",
            "remote-debugging-pipe",
        ])
        .collect()
}

fn is_agent_owned(name: &str) -> bool {
    AGENT_OWNED.contains(&name) || AGENT_OWNED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// A forbidden switch spelled in one of the ways Chromium (or a sloppy
/// producer) might write it: other prefixes, whitespace around it, mixed
/// case, with or without a value.
fn forbidden_spelling(rng: &mut Rng, names: &[&str]) -> String {
    let name = *rng.pick(names);
    let prefix = *rng.pick(&[
        "--",
        "--",
        "--",
        "-",
        "/",
        "---",
        " --",
        "\t--",
        "\u{a0}--",
        "\u{3000}--",
        "\u{2212}\u{2212}",
        "",
        "--\u{200b}",
    ]);
    let cased: String = name
        .chars()
        .map(|c| {
            if rng.chance(30) {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    let suffix = *rng.pick(&[
        "", "", "", " ", "\t", "\u{a0}", "\u{2028}", "\u{0}", "\n", "\u{feff}",
    ]);
    let value = if rng.chance(50) {
        format!("={}", nasty_text(rng, 12))
    } else {
        String::new()
    };
    format!("{prefix}{cased}{value}{suffix}")
}

fn any_arg(rng: &mut Rng, names: &[&str]) -> String {
    match rng.below(7) {
        0..=2 => format!(
            "--{}{}",
            rng.text(&['a', 'z', '0', '-', 'A'], 15),
            if rng.chance(50) {
                format!("={}", nasty_text(rng, 12))
            } else {
                String::new()
            }
        ),
        3 | 4 => forbidden_spelling(rng, names),
        5 => nasty_text(rng, 20),
        _ => format!("{}{}", rng.text(&['-', '/', ' '], 3), rng.text(WORD, 10)),
    }
}

fn any_policy(rng: &mut Rng) -> ArgPolicy {
    let allowed: Vec<String> = (0..rng.below(6))
        .map(|_| format!("--{}", rng.pick(&DEFAULT_BLOCKED).0))
        .collect();
    let blocked: Vec<String> = (0..rng.below(4))
        .map(|_| {
            format!(
                "--{}",
                rng.pick(&["lang", "incognito", "mute-audio", "app", "no-sandbox"])
            )
        })
        .collect();
    ArgPolicy::new(allowed, blocked).unwrap_or_default()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn sanitize_output_never_carries_a_forbidden_switch(count in 0usize..12, seed in any::<u64>()) {
        let names = forbidden_names();
        let rng = &mut Rng(seed);
        let requested: Vec<String> = (0..count).map(|_| any_arg(rng, &names)).collect();
        let policy = any_policy(rng);
        match sanitize(&requested, &policy) {
            Ok(accepted) => {
                prop_assert!(accepted.len() <= requested.len());
                let mut seen = BTreeSet::new();
                for arg in &accepted {
                    prop_assert!(arg.starts_with("--") && arg.len() > 2, "{:?} from {:?}", arg, requested);
                    prop_assert!(!arg.chars().any(char::is_control), "{:?}", arg);
                    let name = chromium_switch_name(arg);
                    prop_assert!(name.is_some(), "{:?} is not a switch to Chromium", arg);
                    let name = name.unwrap_or_default();
                    prop_assert!(!is_agent_owned(&name), "{:?}", arg);
                    prop_assert!(!policy.blocked().any(|b| b == name), "{:?}", arg);
                    if DEFAULT_BLOCKED.iter().any(|(blocked, _)| *blocked == name) {
                        prop_assert!(policy.allowed().any(|a| a == name), "{:?} with {:?}", arg, policy);
                    }
                    prop_assert!(seen.insert(name), "{:?} repeated", arg);
                }
            }
            Err(violations) => {
                prop_assert!(!violations.is_empty());
                let mut last = None;
                for violation in &violations {
                    prop_assert!(last < Some(violation.index));
                    last = Some(violation.index);
                    prop_assert_eq!(&requested[violation.index], &violation.arg);
                    let prefix = format!("args[{}] ", violation.index);
                    prop_assert!(violation.to_string().starts_with(&prefix), "{}", violation);
                }
            }
        }
    }

    #[test]
    fn no_spelling_of_a_forbidden_switch_is_accepted(before in 0usize..4, seed in any::<u64>()) {
        let names = forbidden_names();
        let rng = &mut Rng(seed);
        let mut requested: Vec<String> = (0..before)
            .map(|_| format!("--{}", rng.text(&['a', 'z', '0', '-'], 12)))
            .collect();
        let forbidden = forbidden_spelling(rng, &names);
        requested.push(forbidden.clone());
        let refused = match sanitize(&requested, &ArgPolicy::default()) {
            Ok(_) => false,
            Err(violations) => violations.iter().any(|v| v.index == before),
        };
        prop_assert!(refused, "{:?} was accepted", forbidden);
    }
}
