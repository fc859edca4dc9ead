//! Opaque, tamper-evident cursor tokens: base64url(payload ‖ HMAC-SHA256(key, payload)).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::dialect::Value;
use super::error::DbError;

const MAC_LEN: usize = 32;
/// Tokens longer than this are refused before any decoding work. Sort key values must be
/// short enough for their tokens to fit (a few kilobytes of text at most).
const MAX_TOKEN_LEN: usize = 16 * 1024;
const VERSION: u8 = 1;

/// The application key that signs cursor tokens (HMAC-SHA256), at least 32 bytes.
///
/// Tokens are opaque to clients and tamper-evident: a token edited, truncated, made up, or
/// signed with another key is refused with
/// [`DbErrorKind::InvalidCursor`](super::DbErrorKind::InvalidCursor) before any SQL runs. Tokens are not encrypted: the
/// sort key values of the row at the page edge can be read by whoever holds the token, so
/// do not sort by secrets. Rotating the key invalidates outstanding cursors.
#[derive(Clone)]
pub struct CursorKey {
    key: Vec<u8>,
}

impl CursorKey {
    /// The shortest key accepted, in bytes.
    pub const MIN_LEN: usize = 32;

    /// A key from secret bytes (load them from the app's secret store).
    ///
    /// # Errors
    ///
    /// [`DbErrorKind::InvalidConfig`](super::DbErrorKind::InvalidConfig) when shorter than
    /// [`CursorKey::MIN_LEN`].
    pub fn new(key: impl Into<Vec<u8>>) -> Result<Self, DbError> {
        let key = key.into();
        if key.len() < Self::MIN_LEN {
            return Err(DbError::config(format!(
                "cursor key must be at least {} bytes, got {}",
                Self::MIN_LEN,
                key.len()
            )));
        }
        Ok(Self { key })
    }

    /// A random key, for tests and single-process apps (cursors die with the process).
    pub fn random() -> Self {
        let key: [u8; 32] = rand::random();
        Self { key: key.to_vec() }
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes any key length")
    }

    pub(crate) fn seal(&self, cursor: &Cursor) -> String {
        let payload = serde_json::to_vec(cursor).expect("cursor payload serializes");
        let mut mac = self.mac();
        mac.update(&[VERSION]);
        mac.update(&payload);
        let tag = mac.finalize().into_bytes();
        let mut bytes = Vec::with_capacity(1 + payload.len() + MAC_LEN);
        bytes.push(VERSION);
        bytes.extend_from_slice(&payload);
        bytes.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub(crate) fn open(&self, token: &str) -> Result<Cursor, DbError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(DbError::cursor("invalid cursor: bad length"));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| DbError::cursor("invalid cursor: not base64url"))?;
        if bytes.len() < 1 + MAC_LEN || bytes[0] != VERSION {
            return Err(DbError::cursor("invalid cursor: malformed token"));
        }
        let (body, tag) = bytes.split_at(bytes.len() - MAC_LEN);
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_slice(tag)
            .map_err(|_| DbError::cursor("invalid cursor: signature mismatch"))?;
        serde_json::from_slice(&body[1..])
            .map_err(|_| DbError::cursor("invalid cursor: malformed payload"))
    }
}

impl fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CursorKey(<redacted>)")
    }
}

/// Which side of the key the next page lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Direction {
    #[serde(rename = "a")]
    After,
    #[serde(rename = "b")]
    Before,
}

/// The signed content of a token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Cursor {
    /// Table and sort the cursor was issued for.
    #[serde(rename = "s")]
    pub(crate) scope: String,
    #[serde(rename = "d")]
    pub(crate) direction: Direction,
    #[serde(rename = "k")]
    pub(crate) keys: Vec<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::DbErrorKind;

    fn cursor() -> Cursor {
        Cursor {
            scope: "items|name|asc".into(),
            direction: Direction::After,
            keys: vec![Value::Text("bob".into()), Value::Int(42)],
        }
    }

    #[test]
    fn round_trips() {
        let key = CursorKey::random();
        let token = key.seal(&cursor());
        assert!(!token.contains("bob"), "opaque: not plain text");
        assert_eq!(key.open(&token).unwrap(), cursor());
    }

    #[test]
    fn refuses_tampering_and_garbage() {
        let key = CursorKey::random();
        let token = key.seal(&cursor());
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        // Flip one bit of the payload, then of the tag.
        for i in [5, bytes.len() - 1] {
            bytes[i] ^= 1;
            let forged = URL_SAFE_NO_PAD.encode(&bytes);
            assert_eq!(
                key.open(&forged).unwrap_err().kind(),
                DbErrorKind::InvalidCursor
            );
            bytes[i] ^= 1;
        }
        // A payload re-signed by another key.
        let other = CursorKey::random().seal(&cursor());
        let err = key.open(&other).unwrap_err();
        assert!(err.to_string().contains("signature"), "{err}");
        // Truncated, empty, not base64, huge.
        for bad in [
            &token[..token.len() - 2],
            "",
            "!!!",
            "AAAA",
            &"A".repeat(17_000),
        ] {
            let err = key.open(bad).unwrap_err();
            assert_eq!(err.kind(), DbErrorKind::InvalidCursor, "{bad}");
            assert!(err.is_client_error());
        }
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(CursorKey::new(vec![0u8; 31]).is_err());
        assert!(CursorKey::new(vec![0u8; 32]).is_ok());
        assert_eq!(
            format!("{:?}", CursorKey::random()),
            "CursorKey(<redacted>)"
        );
    }
}
