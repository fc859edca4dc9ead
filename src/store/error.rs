//! The store's error type.

use std::time::Duration;

/// An error from a [`Store`](super::Store) operation.
///
/// Limits and patterns are checked before any I/O, so those variants never mean that a backend
/// is in trouble; [`StoreError::Timeout`] and [`StoreError::Backend`] do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The key is longer than the store's [`Limits::max_key_len`](super::Limits::max_key_len).
    #[error("key is {len} bytes long, over the limit of {max} bytes")]
    KeyTooLong {
        /// Length of the rejected key in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The key is empty or contains a control character.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The rejected key (cut to 64 characters).
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The value is larger than [`Limits::max_value_size`](super::Limits::max_value_size); it
    /// was refused, not truncated.
    #[error("value of {len} bytes is over the entry size limit of {max} bytes")]
    ValueTooLarge {
        /// Size of the rejected value in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// A tag is empty, too long, or there are too many tags on one entry.
    #[error("invalid tag {tag:?}: {reason}")]
    InvalidTag {
        /// The rejected tag (cut to 64 characters).
        tag: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A glob pattern could not be parsed.
    #[error("invalid pattern {pattern:?}: {reason}")]
    InvalidPattern {
        /// The rejected pattern.
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The key lies in a space reserved for the crate's layers (a response cache's entries,
    /// leases or stamps: see [`KeySpace`](super::KeySpace)); application access refuses it.
    #[error("key {key:?} is in the reserved space {space:?}")]
    ReservedKey {
        /// The rejected key, cut to 64 characters.
        key: String,
        /// The space it lies in.
        space: super::KeySpace,
    },
    /// The key holds a different kind of value (a counter read as an entry, say).
    #[error("key {key:?} holds a {found}, not a {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// What the operation expected.
        expected: &'static str,
        /// What the key holds.
        found: &'static str,
    },
    /// A counter would overflow `i64`.
    #[error("counter {key:?} would overflow")]
    Overflow {
        /// The counter's key.
        key: String,
    },
    /// A stored value could not be decoded: it was not written by this crate, or by an
    /// incompatible version of its entry format.
    #[error("stored entry is corrupt: {reason}")]
    Corrupt {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The backend did not answer within the configured bound.
    #[error("{op} timed out after {after:?}")]
    Timeout {
        /// The operation that timed out.
        op: &'static str,
        /// The bound that was exceeded.
        after: Duration,
    },
    /// The backend answered with an error, or the connection failed.
    #[error("{op} failed: {source}")]
    Backend {
        /// The operation that failed.
        op: &'static str,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The call was not sent: the circuit breaker to the backend is open after a run of
    /// timeouts or connection failures (see [`BreakerSettings`](super::BreakerSettings)).
    #[error("{op} not sent: the circuit to the backend is open")]
    CircuitOpen {
        /// The operation refused.
        op: &'static str,
    },
    /// The store cannot do this (a regular-expression purge on a store that cannot list its
    /// keys, say).
    #[error("{op} is not supported by this store")]
    Unsupported {
        /// The operation.
        op: &'static str,
    },
    /// The server cannot run this store (a Redis older than 7.0, say): found by
    /// [`RedisStore::check_server`](super::RedisStore::check_server).
    #[error("incompatible server: {0}")]
    Incompatible(String),
}

/// A store configuration that cannot work: a [`ConfigError`](crate::ConfigError) of
/// [`StoreConfigErrorKind`], from [`StoreConfig::from_env`](super::StoreConfig::from_env),
/// [`StoreConfig::build`](super::StoreConfig::build) and the stores' `build`.
pub type StoreConfigError = crate::ConfigError<StoreConfigErrorKind>;

/// What is wrong with a store's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreConfigErrorKind {
    /// This environment variable holds a value that cannot be used (or, for
    /// `ENABLE_LOCAL_CACHE`, both tiers are turned off).
    Variable(&'static str),
    /// The Redis URL cannot be parsed or names no node.
    Url,
    /// The namespace is empty or holds a control character.
    Namespace,
    /// A timeout is zero, or a breaker would never open.
    Setting,
    /// Built outside a Tokio runtime.
    NoRuntime,
    /// A tiered store over a Redis store built without its backplane: instances could not
    /// stay coherent.
    NoBackplane,
    /// The configuration needs a cargo feature of this crate that is not enabled.
    FeatureDisabled,
}

impl crate::ConfigErrorKind for StoreConfigErrorKind {
    const COMPONENT: &'static str = "store";
}

impl StoreError {
    /// True for errors that say the backend is unavailable or slow (timeouts, connection and
    /// server errors), as opposed to errors in the caller's input.
    pub fn is_backend(&self) -> bool {
        matches!(
            self,
            StoreError::Timeout { .. }
                | StoreError::Backend { .. }
                | StoreError::CircuitOpen { .. }
        )
    }

    #[cfg(feature = "redis")]
    pub(crate) fn backend(
        op: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError::Backend {
            op,
            source: source.into(),
        }
    }
}

/// Cuts a string for an error message so a hostile key cannot flood logs.
pub(crate) fn cut(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}
