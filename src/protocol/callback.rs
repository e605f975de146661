//! Signed HTTP callbacks: how a receiver knows a reply comes from the fleet
//! and is fresh, and when the agent tries a failed callback again.
//!
//! The agent POSTs the reply body with two headers:
//!
//! * `X-Browserfleet-Timestamp: <unix seconds>`
//! * `X-Browserfleet-Signature: sha256=<lowercase hex>`, the HMAC-SHA256,
//!   keyed with the fleet's callback secret, of `"{timestamp}.{body}"`.
//!
//! Signing the timestamp with the body lets a receiver refuse replays: it
//! checks the signature, then that the timestamp is within its tolerance of
//! its own clock ([`verify`] does both). An empty secret signs too, but then
//! anyone can forge a signature; the agent should refuse to start with one.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use thiserror::Error;

/// Header carrying the signing time in Unix seconds.
pub const TIMESTAMP_HEADER: &str = "X-Browserfleet-Timestamp";
/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Browserfleet-Signature";
/// Prefix of the signature header's value, naming the algorithm.
pub const SIGNATURE_PREFIX: &str = "sha256=";
/// A sensible default for [`verify`]'s `tolerance`.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// The two headers that sign one callback body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallbackSignature {
    /// Signing time in Unix seconds; the value of [`TIMESTAMP_HEADER`].
    pub timestamp: i64,
    /// `sha256=<64 lowercase hex digits>`; the value of [`SIGNATURE_HEADER`].
    pub signature: String,
}

impl CallbackSignature {
    /// Header names and values, ready to add to a request.
    pub fn headers(&self) -> [(&'static str, String); 2] {
        [
            (TIMESTAMP_HEADER, self.timestamp.to_string()),
            (SIGNATURE_HEADER, self.signature.clone()),
        ]
    }
}

/// Why [`verify`] refused a callback.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum VerifyError {
    /// The timestamp header is missing or not a number of seconds.
    #[error("the {TIMESTAMP_HEADER} header must be Unix seconds")]
    MalformedTimestamp,
    /// The signature header is missing or not `sha256=<64 hex digits>`.
    #[error("the {SIGNATURE_HEADER} header must be sha256=<64 hex digits>")]
    MalformedSignature,
    /// The signature does not match the body, timestamp and secret.
    #[error("the signature does not match")]
    Mismatch,
    /// The signature matches, but the timestamp is too far from now: a
    /// replay, or clocks far apart.
    #[error("the timestamp is {skew_seconds} s away from now, more than the tolerance")]
    OutsideTolerance {
        /// `now - timestamp`: positive for a message from the past.
        skew_seconds: i64,
    },
}

/// Signs `body` as sent at `timestamp` (Unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> CallbackSignature {
    let tag = mac(secret, timestamp.to_string().as_bytes(), body).finalize();
    CallbackSignature {
        timestamp,
        signature: format!("{SIGNATURE_PREFIX}{}", hex::encode(tag.into_bytes())),
    }
}

/// Checks a received callback: the header values as received (surrounding
/// whitespace is ignored), the raw body, the receiver's clock `now` in Unix
/// seconds and how far the timestamp may be from it in either direction. The
/// signature is compared in constant time.
pub fn verify(
    secret: &[u8],
    timestamp_header: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let timestamp_text = timestamp_header.trim();
    // Digits only: the signed text is the header as sent, so `+5` or `05`
    // would verify against a different number than the one checked below.
    if timestamp_text.is_empty()
        || timestamp_text.len() > 18
        || !timestamp_text.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(VerifyError::MalformedTimestamp);
    }
    let timestamp: i64 = timestamp_text
        .parse()
        .map_err(|_| VerifyError::MalformedTimestamp)?;
    let tag = signature_header
        .trim()
        .strip_prefix(SIGNATURE_PREFIX)
        .filter(|hex| hex.len() == 64)
        .and_then(|hex| hex::decode(hex).ok())
        .ok_or(VerifyError::MalformedSignature)?;
    mac(secret, timestamp_text.as_bytes(), body)
        .verify_slice(&tag)
        .map_err(|_| VerifyError::Mismatch)?;
    let skew_seconds = now.saturating_sub(timestamp);
    let allowed = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if skew_seconds.unsigned_abs() > allowed.unsigned_abs() {
        return Err(VerifyError::OutsideTolerance { skew_seconds });
    }
    Ok(())
}

fn mac(secret: &[u8], timestamp: &[u8], body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length (long ones are hashed first), so this
    // never fails whatever the secret.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .expect("HMAC-SHA256 accepts keys of any length");
    mac.update(timestamp);
    mac.update(b".");
    mac.update(body);
    mac
}

/// When to try a failed callback again: exponential backoff from
/// `first_delay`, multiplied by `multiplier` each time and capped at
/// `max_delay`, for at most `max_attempts` attempts in all (the first one
/// included). Callbacks run beside the session and never hold up a launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetrySchedule {
    /// Wait before the second attempt.
    pub first_delay: Duration,
    /// Growth factor of the wait from one retry to the next; 0 and 1 keep it
    /// constant.
    pub multiplier: u32,
    /// Longest wait between two attempts.
    pub max_delay: Duration,
    /// Most attempts, the first one included.
    pub max_attempts: u32,
}

impl Default for RetrySchedule {
    /// 1 s, 2 s, 4 s, … up to 60 s, 8 attempts: about two minutes in all.
    fn default() -> Self {
        RetrySchedule {
            first_delay: Duration::from_secs(1),
            multiplier: 2,
            max_delay: Duration::from_secs(60),
            max_attempts: 8,
        }
    }
}

impl RetrySchedule {
    /// How long to wait before attempt number `attempt` (counting from 1):
    /// zero for the first, the backoff for later ones, and `None` once the
    /// attempts are used up.
    pub fn delay_before(&self, attempt: u32) -> Option<Duration> {
        if attempt == 0 || attempt > self.max_attempts {
            return None;
        }
        if attempt == 1 {
            return Some(Duration::ZERO);
        }
        // The loop ends after at most ~100 rounds: the delay at least doubles
        // each round until it saturates, or it can never grow.
        let mut delay = self.first_delay;
        for _ in 2..attempt {
            if delay >= self.max_delay || delay.is_zero() || self.multiplier <= 1 {
                break;
            }
            delay = delay.saturating_mul(self.multiplier);
        }
        Some(delay.min(self.max_delay))
    }

    /// `delay` with "equal jitter": half of it fixed and the other half
    /// scaled by `unit`, a random number in `[0, 1]` the caller draws (values
    /// outside are clamped). Spreads the retries of many agents apart.
    pub fn jittered(delay: Duration, unit: f64) -> Duration {
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        let half = delay / 2;
        half + half.mul_f64(unit)
    }
}

/// Whether a callback that got HTTP `status` should be tried again: on
/// timeouts (408), `425 Too Early`, throttling (429) and server errors (5xx).
/// Other 4xx answers will not change on a retry, and 2xx/3xx mean delivered.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 425 | 429 | 500..=599)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_browserfleet_test";
    const BODY: &[u8] = br#"{"version":1,"type":"session.failed","sessionId":"s-1"}"#;
    const AT: i64 = 1_700_000_000;
    /// Computed independently with Python:
    /// `hmac.new(SECRET, b"1700000000." + BODY, hashlib.sha256).hexdigest()`.
    const EXPECTED: &str =
        "sha256=f3cadd34f800b4e27d71e9b78301f0e9cf9e4e1f22142d96972bc5036a1dd002";

    #[test]
    fn signature_matches_an_independently_computed_vector() {
        let signed = sign(SECRET, AT, BODY);
        assert_eq!(signed.signature, EXPECTED);
        assert_eq!(
            signed.headers(),
            [
                ("X-Browserfleet-Timestamp", "1700000000".to_owned()),
                ("X-Browserfleet-Signature", EXPECTED.to_owned()),
            ]
        );
    }

    #[test]
    fn a_fresh_genuine_callback_verifies() {
        let tolerance = DEFAULT_TOLERANCE;
        assert_eq!(
            verify(SECRET, "1700000000", EXPECTED, BODY, AT, tolerance),
            Ok(())
        );
        assert_eq!(
            verify(
                SECRET,
                " 1700000000 ",
                &EXPECTED.to_uppercase().replace("SHA256=", "sha256="),
                BODY,
                AT + 300,
                tolerance
            ),
            Ok(())
        );
        assert_eq!(
            verify(SECRET, "1700000000", EXPECTED, BODY, AT - 300, tolerance),
            Ok(())
        );
    }

    #[test]
    fn a_tampered_body_or_timestamp_fails() {
        let mut body = BODY.to_vec();
        body[10] ^= 1;
        assert_eq!(
            verify(SECRET, "1700000000", EXPECTED, &body, AT, DEFAULT_TOLERANCE),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(SECRET, "1700000001", EXPECTED, BODY, AT, DEFAULT_TOLERANCE),
            Err(VerifyError::Mismatch)
        );
        let mut flipped = EXPECTED.to_owned();
        flipped.replace_range(7..8, "0");
        assert_eq!(
            verify(SECRET, "1700000000", &flipped, BODY, AT, DEFAULT_TOLERANCE),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn the_wrong_secret_fails() {
        assert_eq!(
            verify(
                b"another secret",
                "1700000000",
                EXPECTED,
                BODY,
                AT,
                DEFAULT_TOLERANCE
            ),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn an_old_or_future_timestamp_fails_even_when_genuine() {
        assert_eq!(
            verify(
                SECRET,
                "1700000000",
                EXPECTED,
                BODY,
                AT + 301,
                DEFAULT_TOLERANCE
            ),
            Err(VerifyError::OutsideTolerance { skew_seconds: 301 })
        );
        assert_eq!(
            verify(
                SECRET,
                "1700000000",
                EXPECTED,
                BODY,
                AT - 301,
                DEFAULT_TOLERANCE
            ),
            Err(VerifyError::OutsideTolerance { skew_seconds: -301 })
        );
    }

    #[test]
    fn malformed_headers_are_told_apart() {
        for timestamp in [
            "",
            "abc",
            "-1700000000",
            "+1700000000",
            "1.5",
            "9999999999999999999",
        ] {
            assert_eq!(
                verify(SECRET, timestamp, EXPECTED, BODY, AT, DEFAULT_TOLERANCE),
                Err(VerifyError::MalformedTimestamp),
                "{timestamp:?}"
            );
        }
        for signature in [
            "",
            "f3cadd34f800b4e27d71e9b78301f0e9cf9e4e1f22142d96972bc5036a1dd002",
            "sha1=f3cadd34f800b4e27d71e9b78301f0e9cf9e4e1f22142d96972bc5036a1dd002",
            "sha256=f3cadd34",
            "sha256=zzcadd34f800b4e27d71e9b78301f0e9cf9e4e1f22142d96972bc5036a1dd002",
            "sha256=é3cadd34f800b4e27d71e9b78301f0e9cf9e4e1f22142d96972bc5036a1dd0",
        ] {
            assert_eq!(
                verify(SECRET, "1700000000", signature, BODY, AT, DEFAULT_TOLERANCE),
                Err(VerifyError::MalformedSignature),
                "{signature:?}"
            );
        }
    }

    #[test]
    fn default_schedule_doubles_up_to_a_minute_for_eight_attempts() {
        let schedule = RetrySchedule::default();
        let delays: Vec<Option<u64>> = (0..=9)
            .map(|n| schedule.delay_before(n).map(|d| d.as_secs()))
            .collect();
        assert_eq!(
            delays,
            vec![
                None,
                Some(0),
                Some(1),
                Some(2),
                Some(4),
                Some(8),
                Some(16),
                Some(32),
                Some(60),
                None
            ]
        );
    }

    #[test]
    fn huge_schedules_saturate_instead_of_overflowing() {
        let schedule = RetrySchedule {
            first_delay: Duration::from_secs(u64::MAX / 2),
            multiplier: u32::MAX,
            max_delay: Duration::MAX,
            max_attempts: u32::MAX,
        };
        assert_eq!(schedule.delay_before(u32::MAX), Some(Duration::MAX));
        let none = RetrySchedule {
            max_attempts: 0,
            ..RetrySchedule::default()
        };
        assert_eq!(none.delay_before(1), None);
    }

    #[test]
    fn jitter_keeps_at_least_half_the_delay() {
        let delay = Duration::from_secs(10);
        assert_eq!(RetrySchedule::jittered(delay, 0.0), Duration::from_secs(5));
        assert_eq!(RetrySchedule::jittered(delay, 1.0), Duration::from_secs(10));
        assert_eq!(RetrySchedule::jittered(delay, 7.0), Duration::from_secs(10));
        assert_eq!(
            RetrySchedule::jittered(delay, f64::NAN),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn only_transient_statuses_are_retried() {
        for status in [408, 425, 429, 500, 502, 503, 504, 599] {
            assert!(is_retryable_status(status), "{status}");
        }
        for status in [200, 204, 301, 400, 401, 403, 404, 410, 413, 422] {
            assert!(!is_retryable_status(status), "{status}");
        }
    }
}
