//! Sealing: AES-256-GCM encryption of one personal field with its owner's [`UserKey`].
//!
//! A sealed value is a string, so it fits the events' existing Avro `string` fields unchanged:
//!
//! ```text
//! SEALED_PREFIX + base64url-no-pad(nonce (12 bytes) || ciphertext || tag (16 bytes))
//! ```
//!
//! The additional authenticated data is the owner's 16 UUID bytes: a value sealed for one user
//! does not open as another user's, even under the same key, so it cannot be moved between
//! users. Nonces are random (96 bits, from the system generator); a key may seal about 2^32
//! values before the chance of a repeated nonce stops being negligible, far beyond what one
//! user writes.
//!
//! Values without [`SEALED_PREFIX`] are plaintext written before sealing existed (or by a
//! deployment that does not seal): [`unseal`] returns them unchanged, so callers read old and
//! new events alike. [`is_sealed`] tells the two apart.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use uuid::Uuid;

use crate::VaultError;

/// What starts every sealed value (`\u{1}` keeps it apart from anything a user would type).
pub const SEALED_PREFIX: &str = "\u{1}sealed:v1:";

/// Length of a [`UserKey`] in bytes (AES-256).
pub const KEY_LEN: usize = 32;

/// Length of the authentication tag appended to the ciphertext.
const TAG_LEN: usize = 16;

/// One user's data key: 32 random bytes, AES-256-GCM.
///
/// Cloning is cheap (the key is shared, with its expanded AES schedule). `Debug` never shows
/// the bytes. When the last clone is dropped the raw bytes are overwritten with zeros; this is
/// best effort (the compiler may have left copies where the bytes were moved, and the
/// expanded key schedule inside `ring` is not wiped).
#[derive(Clone)]
pub struct UserKey(Arc<Material>);

struct Material {
    bytes: [u8; KEY_LEN],
    aead: LessSafeKey,
}

impl Drop for Material {
    fn drop(&mut self) {
        self.bytes.fill(0);
        // Keeps the write from being optimised away as a dead store.
        std::hint::black_box(&mut self.bytes);
    }
}

impl UserKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, VaultError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new().fill(&mut bytes).map_err(|_| {
            VaultError::Unavailable("the system random number generator failed".into())
        })?;
        Ok(Self::from_array(bytes))
    }

    /// A key from its stored bytes; `None` unless there are exactly [`KEY_LEN`] of them.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let array: [u8; KEY_LEN] = bytes.try_into().ok()?;
        Some(Self::from_array(array))
    }

    fn from_array(bytes: [u8; KEY_LEN]) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes).expect("a 32-byte AES-256 key");
        UserKey(Arc::new(Material {
            bytes,
            aead: LessSafeKey::new(unbound),
        }))
    }

    /// The raw key bytes, for a vault adapter to store. Nothing else should need them.
    pub fn expose_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0.bytes
    }

    fn aead(&self) -> &LessSafeKey {
        &self.0.aead
    }
}

impl PartialEq for UserKey {
    /// Compares in constant time.
    fn eq(&self, other: &Self) -> bool {
        self.expose_bytes()
            .iter()
            .zip(other.expose_bytes().iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Eq for UserKey {}

impl std::fmt::Debug for UserKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserKey(<redacted>)")
    }
}

/// Why a sealed value did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The value has the sealed prefix but is not valid base64url, or is too short to hold a
    /// nonce and a tag.
    #[error("the sealed value is malformed (bad encoding or truncated)")]
    Malformed,
    /// The value does not authenticate: another key (the owner's key was destroyed and is not
    /// this one), another owner, or the value was altered.
    #[error(
        "the sealed value does not open with this key and owner (another key or owner, or the \
         value was altered)"
    )]
    Authentication,
}

/// Whether `value` is sealed (carries [`SEALED_PREFIX`]); otherwise it is plaintext.
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(SEALED_PREFIX)
}

/// Seals `plaintext` for `owner` with `key`: `SEALED_PREFIX + base64url(nonce || ct || tag)`.
///
/// # Panics
/// If the operating system's random number generator fails (`getrandom` on Linux), which it
/// does not once the system has booted.
pub fn seal(key: &UserKey, owner: Uuid, plaintext: &str) -> String {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .expect("the system random number generator failed");
    let mut raw = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    raw.extend_from_slice(&nonce);
    raw.extend_from_slice(plaintext.as_bytes());
    let tag = key
        .aead()
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(owner.as_bytes()),
            &mut raw[NONCE_LEN..],
        )
        .expect("AES-GCM seals any input shorter than 64 GiB");
    raw.extend_from_slice(tag.as_ref());
    let mut out = String::with_capacity(SEALED_PREFIX.len() + (raw.len() * 4).div_ceil(3));
    out.push_str(SEALED_PREFIX);
    URL_SAFE_NO_PAD.encode_string(&raw, &mut out);
    out
}

/// Opens a value sealed for `owner` with `key`. A value without [`SEALED_PREFIX`] is plaintext
/// from before sealing existed and comes back unchanged.
pub fn unseal(key: &UserKey, owner: Uuid, value: &str) -> Result<String, SealError> {
    let Some(encoded) = value.strip_prefix(SEALED_PREFIX) else {
        return Ok(value.to_owned());
    };
    let mut raw = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| SealError::Malformed)?;
    if raw.len() < NONCE_LEN + TAG_LEN {
        return Err(SealError::Malformed);
    }
    let nonce =
        Nonce::try_assume_unique_for_key(&raw[..NONCE_LEN]).map_err(|_| SealError::Malformed)?;
    let plain = key
        .aead()
        .open_in_place(nonce, Aad::from(owner.as_bytes()), &mut raw[NONCE_LEN..])
        .map_err(|_| SealError::Authentication)?;
    // Only `seal` (which takes a &str) makes values that authenticate.
    String::from_utf8(plain.to_vec()).map_err(|_| SealError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> UserKey {
        UserKey::generate().expect("random key")
    }

    fn owner() -> Uuid {
        Uuid::from_u128(0x0195_0000_0000_7000_8000_0000_0000_0001)
    }

    /// The decoded bytes of a sealed value.
    fn decoded(sealed: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD
            .decode(sealed.strip_prefix(SEALED_PREFIX).expect("sealed"))
            .expect("base64url")
    }

    fn encoded(raw: &[u8]) -> String {
        format!("{SEALED_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
    }

    #[test]
    fn a_sealed_value_opens_with_its_key_and_owner() {
        let key = key();
        for plain in [
            "",
            "alice",
            "Zoë 🦀 \u{1}sealed:v1:not really",
            &"x".repeat(10_000),
        ] {
            let sealed = seal(&key, owner(), plain);
            assert!(is_sealed(&sealed));
            assert_eq!(unseal(&key, owner(), &sealed).as_deref(), Ok(plain));
            assert_eq!(decoded(&sealed).len(), NONCE_LEN + plain.len() + TAG_LEN);
        }
    }

    #[test]
    fn the_format_is_prefix_and_base64url_without_padding() {
        let sealed = seal(&key(), owner(), "hello");
        let body = sealed.strip_prefix(SEALED_PREFIX).expect("prefix");
        assert!(
            body.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{body}"
        );
        assert_eq!(body.len(), ((NONCE_LEN + 5 + TAG_LEN) * 4).div_ceil(3));
    }

    #[test]
    fn each_seal_uses_a_fresh_nonce() {
        let key = key();
        let a = seal(&key, owner(), "same");
        let b = seal(&key, owner(), "same");
        assert_ne!(a, b);
        assert_ne!(decoded(&a)[..NONCE_LEN], decoded(&b)[..NONCE_LEN]);
    }

    #[test]
    fn another_owner_key_or_a_change_does_not_open() {
        let key = key();
        let sealed = seal(&key, owner(), "private");
        assert_eq!(
            unseal(&key, Uuid::from_u128(2), &sealed),
            Err(SealError::Authentication)
        );
        assert_eq!(
            unseal(&self::key(), owner(), &sealed),
            Err(SealError::Authentication)
        );
        let raw = decoded(&sealed);
        for i in 0..raw.len() {
            let mut tampered = raw.clone();
            tampered[i] ^= 0x01;
            assert_eq!(
                unseal(&key, owner(), &encoded(&tampered)),
                Err(SealError::Authentication),
                "byte {i} flipped"
            );
        }
        // Truncated or extended.
        assert_eq!(
            unseal(&key, owner(), &encoded(&raw[..raw.len() - 1])),
            Err(SealError::Authentication)
        );
        let mut longer = raw.clone();
        longer.push(0);
        assert_eq!(
            unseal(&key, owner(), &encoded(&longer)),
            Err(SealError::Authentication)
        );
    }

    #[test]
    fn malformed_values_are_told_apart() {
        let key = key();
        for bad in [
            SEALED_PREFIX.to_owned(),
            format!("{SEALED_PREFIX}not base64!"),
            format!("{SEALED_PREFIX}AAAA="),
            encoded(&[0u8; NONCE_LEN + TAG_LEN - 1]),
        ] {
            assert_eq!(
                unseal(&key, owner(), &bad),
                Err(SealError::Malformed),
                "{bad:?}"
            );
        }
        // The shortest well-formed value (empty plaintext) under another key.
        assert_eq!(
            unseal(&key, owner(), &encoded(&[0u8; NONCE_LEN + TAG_LEN])),
            Err(SealError::Authentication)
        );
    }

    #[test]
    fn plaintext_passes_through() {
        let key = key();
        for plain in ["", "alice", "sealed:v1:abc", " \u{1}sealed:v1:abc"] {
            assert!(!is_sealed(plain));
            assert_eq!(unseal(&key, owner(), plain).as_deref(), Ok(plain));
        }
    }

    #[test]
    fn keys_compare_debug_redacted_and_round_trip_their_bytes() {
        let a = key();
        let b = key();
        assert_ne!(a, b);
        let copy = UserKey::from_bytes(a.expose_bytes()).expect("32 bytes");
        assert_eq!(a, copy);
        assert_eq!(
            seal(&a, owner(), "x").len(),
            seal(&copy, owner(), "x").len()
        );
        assert_eq!(
            unseal(&copy, owner(), &seal(&a, owner(), "x")).as_deref(),
            Ok("x")
        );
        assert!(UserKey::from_bytes(&[0u8; 31]).is_none());
        assert!(UserKey::from_bytes(&[0u8; 33]).is_none());
        let shown = format!("{a:?} {:?}", Some(&a));
        assert_eq!(shown, "UserKey(<redacted>) Some(UserKey(<redacted>))");
    }
}
