//! Error types of the transaction layer.

use std::fmt;

/// A [`TxConfig`](super::TxConfig) the database cannot honour, or a nonsensical one: a
/// [`ConfigError`](crate::ConfigError) of [`TxConfigErrorKind`], from
/// [`TxLayer::try_new`](super::TxLayer::try_new).
pub type TxConfigError = crate::ConfigError<TxConfigErrorKind>;

/// What is wrong with a [`TxConfig`](super::TxConfig).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TxConfigErrorKind {
    /// The retry settings contradict themselves (no attempt at all, a back-off base above its
    /// maximum).
    Retry,
    /// A timeout is zero: a timeout is turned off with `None`, not with zero.
    ZeroTimeout,
    /// The setting exists, but not on this database (a statement timeout on MySQL, a read-only
    /// transaction on SQLite, an isolation level SQLite does not have).
    Unsupported,
    /// Two settings that cannot go together (autocommit through a transaction pooler).
    Conflict,
}

impl crate::ConfigErrorKind for TxConfigErrorKind {
    const COMPONENT: &'static str = "transaction layer";
}

/// Why an attempt was retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RetryReason {
    /// PostgreSQL `40001` serialization_failure.
    SerializationFailure,
    /// PostgreSQL `40P01` or MySQL/MariaDB 1213.
    Deadlock,
    /// MySQL/MariaDB 1205 (only when configured as retryable).
    LockWaitTimeout,
    /// SQLite `SQLITE_BUSY`, `SQLITE_BUSY_SNAPSHOT` or `SQLITE_LOCKED`.
    Busy,
    /// The connection was lost before `COMMIT` was sent (the backend terminated, SQLSTATE
    /// class `08` or `57P01`-`57P03`, a broken pipe or another I/O error): nothing was
    /// committed, so the attempt is replayed on a fresh connection. A connection lost during
    /// `COMMIT` is never retried: its outcome is unknown (`502`).
    ConnectionLost,
}

impl RetryReason {
    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SerializationFailure => "serialization_failure",
            Self::Deadlock => "deadlock",
            Self::LockWaitTimeout => "lock_wait_timeout",
            Self::Busy => "busy",
            Self::ConnectionLost => "connection_lost",
        }
    }
}

impl fmt::Display for RetryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
