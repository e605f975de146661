//! Secrets sealed to a fleet for a trip over its queue: the operator seals
//! a BrowserSession's proxy credentials with the fleet's message key (which
//! only the operator and that fleet's agents hold), and the agent opens them
//! just before it needs them. Anyone who reads the queue sees ciphertext.
//!
//! AES-256-GCM with a fresh random 96-bit nonce per seal, under a key
//! derived from the fleet key with HKDF-SHA256 for this one use, so the
//! signing key and the sealing key are never the same bytes. The session id
//! is the associated data: a sealed value copied into another session's
//! request does not open. Written `bfs1.<base64url(nonce ‖ ciphertext ‖ tag)>`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Salt};
use ring::rand::{SecureRandom, SystemRandom};

/// What a sealed value starts with (its format's version).
pub const SEALED_PREFIX: &str = "bfs1.";
/// Longest sealed value accepted (credentials are far smaller).
pub const MAX_SEALED_LEN: usize = 4096;

/// Why a value could not be sealed or opened. Never carries the secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Not `bfs1.` and base64, or too short or too long.
    #[error("is not a sealed value (bfs1.…)")]
    Malformed,
    /// Sealed with another key, for another session, or altered.
    #[error("does not open with this fleet's key for this session")]
    WrongKeyOrSession,
    /// The system's random source failed.
    #[error("no randomness for a nonce")]
    Random,
}

fn key(fleet_key: &[u8]) -> LessSafeKey {
    let salt = Salt::new(HKDF_SHA256, b"browserfleet sealed values v1");
    let prk = salt.extract(fleet_key);
    let okm = prk
        .expand(&[b"proxy credentials"], &AES_256_GCM)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    LessSafeKey::new(UnboundKey::from(okm))
}

/// Seals `plaintext` for session `session` of the fleet with `fleet_key`.
pub fn seal(fleet_key: &[u8], session: &str, plaintext: &[u8]) -> Result<String, SealError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| SealError::Random)?;
    let mut sealed = plaintext.to_vec();
    key(fleet_key)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(session.as_bytes()),
            &mut sealed,
        )
        .map_err(|_| SealError::Random)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(format!("{SEALED_PREFIX}{}", URL_SAFE_NO_PAD.encode(out)))
}

/// Opens a value [`seal`] made for `session` with `fleet_key`.
pub fn open(fleet_key: &[u8], session: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
    if sealed.len() > MAX_SEALED_LEN {
        return Err(SealError::Malformed);
    }
    let encoded = sealed
        .strip_prefix(SEALED_PREFIX)
        .ok_or(SealError::Malformed)?;
    let mut bytes = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| SealError::Malformed)?;
    if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() {
        return Err(SealError::Malformed);
    }
    let mut ciphertext = bytes.split_off(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| SealError::Malformed)?;
    let plaintext = key(fleet_key)
        .open_in_place(nonce, Aad::from(session.as_bytes()), &mut ciphertext)
        .map_err(|_| SealError::WrongKeyOrSession)?;
    Ok(plaintext.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_sealed_value_opens_for_its_session_only() {
        let sealed = seal(KEY, "bs-1", b"user:secret").unwrap();
        assert!(sealed.starts_with(SEALED_PREFIX));
        assert!(!sealed.contains("secret"));
        assert_eq!(open(KEY, "bs-1", &sealed).unwrap(), b"user:secret");
        assert_eq!(
            open(KEY, "bs-2", &sealed),
            Err(SealError::WrongKeyOrSession)
        );
        assert_eq!(
            open(b"another fleet's key, 32 bytes!!!", "bs-1", &sealed),
            Err(SealError::WrongKeyOrSession)
        );
    }

    #[test]
    fn two_seals_of_the_same_secret_differ() {
        assert_ne!(
            seal(KEY, "bs-1", b"x").unwrap(),
            seal(KEY, "bs-1", b"x").unwrap()
        );
    }

    #[test]
    fn altered_or_malformed_values_do_not_open() {
        let sealed = seal(KEY, "bs-1", b"user:secret").unwrap();
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 1;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        assert!(open(KEY, "bs-1", &altered).is_err());
        for bad in ["", "bfs1.", "bfs1.!!", "bfs0.AAAA", "bfs1.AAAA"] {
            assert_eq!(open(KEY, "bs-1", bad), Err(SealError::Malformed), "{bad}");
        }
    }
}
