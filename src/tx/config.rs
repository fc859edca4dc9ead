//! Configuration of the transaction layer, validated when built.

use std::fmt;
use std::time::Duration;

use super::error::ConfigError;

/// SQL isolation level of the request's transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IsolationLevel {
    /// `READ UNCOMMITTED`.
    ReadUncommitted,
    /// `READ COMMITTED`.
    ReadCommitted,
    /// `REPEATABLE READ`.
    RepeatableRead,
    /// `SERIALIZABLE`.
    Serializable,
}

impl IsolationLevel {
    /// The SQL spelling, as used in `SET TRANSACTION ISOLATION LEVEL ..`.
    pub fn as_sql(self) -> &'static str {
        match self {
            Self::ReadUncommitted => "READ UNCOMMITTED",
            Self::ReadCommitted => "READ COMMITTED",
            Self::RepeatableRead => "REPEATABLE READ",
            Self::Serializable => "SERIALIZABLE",
        }
    }
}

impl fmt::Display for IsolationLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_sql())
    }
}

/// How SQLite starts its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SqliteBegin {
    /// `BEGIN` (deferred): the write lock is taken by the first write, which may then fail
    /// with `SQLITE_BUSY_SNAPSHOT` (retried by the layer).
    #[default]
    Deferred,
    /// `BEGIN IMMEDIATE`: the write lock is taken at once, so writers queue on the busy
    /// timeout instead of failing halfway.
    Immediate,
}

/// Settings of a [`TxLayer`](super::TxLayer).
///
/// Build it with [`TxConfig::default`] and the setters; [`TxLayer::new`](super::TxLayer::new)
/// validates it against the database (a setting the database cannot honour is an error, not
/// silently ignored).
#[derive(Debug, Clone)]
pub struct TxConfig {
    pub(crate) isolation: Option<IsolationLevel>,
    pub(crate) read_only: bool,
    pub(crate) statement_timeout: Option<Duration>,
    pub(crate) lock_timeout: Option<Duration>,
    pub(crate) transaction_timeout: Option<Duration>,
    pub(crate) max_attempts: u32,
    pub(crate) retry_deadline: Duration,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) max_body_size: usize,
    pub(crate) retry_after: Duration,
    pub(crate) sqlite_begin: SqliteBegin,
    pub(crate) mysql_retry_lock_wait_timeout: bool,
    pub(crate) slow_statement: Duration,
    pub(crate) end_timeout: Duration,
    pub(crate) adaptive_concurrency: Option<usize>,
}

/// Default of [`TxConfig::end_timeout`]: the time limit of `COMMIT` and `ROLLBACK`.
pub const DEFAULT_END_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for TxConfig {
    fn default() -> Self {
        Self {
            isolation: None,
            read_only: false,
            statement_timeout: None,
            lock_timeout: None,
            transaction_timeout: None,
            max_attempts: 3,
            retry_deadline: Duration::from_secs(10),
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(500),
            max_body_size: 1024 * 1024,
            retry_after: Duration::from_secs(1),
            sqlite_begin: SqliteBegin::Deferred,
            mysql_retry_lock_wait_timeout: false,
            slow_statement: Duration::from_millis(100),
            end_timeout: DEFAULT_END_TIMEOUT,
            adaptive_concurrency: None,
        }
    }
}

impl TxConfig {
    /// Isolation level of each transaction (default: the database's default).
    pub fn isolation(mut self, level: IsolationLevel) -> Self {
        self.isolation = Some(level);
        self
    }

    /// Start read-only transactions (default `false`).
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Per-statement timeout (`SET LOCAL statement_timeout` on PostgreSQL). PostgreSQL only.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = Some(timeout);
        self
    }

    /// Lock wait timeout: `SET LOCAL lock_timeout` on PostgreSQL; on MySQL/MariaDB the
    /// session's `innodb_lock_wait_timeout`, set before each transaction in whole seconds
    /// (rounded up) and left on the pooled connection afterwards. Not on SQLite (use its
    /// `busy_timeout`).
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = Some(timeout);
        self
    }

    /// Time limit of one attempt's handler. When it passes the handler is cancelled, its
    /// connection closed (so the server rolls back) and the client gets `503`. A statement
    /// already running keeps running on the server until it ends: pair this with
    /// [`statement_timeout`](Self::statement_timeout) on PostgreSQL.
    pub fn transaction_timeout(mut self, timeout: Duration) -> Self {
        self.transaction_timeout = Some(timeout);
        self
    }

    /// Time limit of `COMMIT` and of `ROLLBACK` (default 5 s). Past it the connection is
    /// closed, never pooled: a `COMMIT` that timed out is ambiguous (`502`), a `ROLLBACK` that
    /// timed out leaves the server to roll back when it sees the connection gone.
    pub fn end_timeout(mut self, timeout: Duration) -> Self {
        self.end_timeout = timeout;
        self
    }

    /// Limits the transactions this layer runs at once, adapting the limit to their
    /// conflicts (default off): each conflict that forces a retry cuts it by a quarter, each
    /// clean commit raises it by one over the limit, between 1 and `max`. Meant for hot rows
    /// under `SERIALIZABLE` (many requests writing the same few rows), where fewer at once
    /// commit more and fewer run out of retries. Waiting for room counts against
    /// [`retry_deadline`](Self::retry_deadline); past it the request gets `503`.
    pub fn adaptive_concurrency(mut self, max: Option<usize>) -> Self {
        self.adaptive_concurrency = max;
        self
    }

    /// Maximum number of attempts of one request, the first included (default 3; 1 disables
    /// retry).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Total time within which a retry may still start (default 10 s).
    pub fn retry_deadline(mut self, deadline: Duration) -> Self {
        self.retry_deadline = deadline;
        self
    }

    /// Backoff before the first retry, doubled each time up to `max` (defaults 10 ms and
    /// 500 ms). Each wait is drawn uniformly from its upper half (jitter).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }

    /// Largest request body buffered for replay (default 1 MiB). Bodies of unknown length or
    /// above the limit are streamed to the handler and their request is never retried.
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.max_body_size = bytes;
        self
    }

    /// The `Retry-After` sent with `503` answers (default 1 s, rounded up to whole seconds).
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = after;
        self
    }

    /// How SQLite begins transactions (default [`SqliteBegin::Deferred`]).
    pub fn sqlite_begin(mut self, begin: SqliteBegin) -> Self {
        self.sqlite_begin = begin;
        self
    }

    /// Retry MySQL/MariaDB error 1205 (lock wait timeout). Turn it on only when the server
    /// runs with `innodb_rollback_on_timeout=ON`: otherwise only the statement is rolled back
    /// and replaying the request is wrong, so the default is `false`.
    pub fn mysql_retry_lock_wait_timeout(mut self, retry: bool) -> Self {
        self.mysql_retry_lock_wait_timeout = retry;
        self
    }

    /// Statements slower than this through the handle are logged with `tracing` and kept in
    /// the stats' slow list (default 100 ms).
    pub fn slow_statement(mut self, threshold: Duration) -> Self {
        self.slow_statement = threshold;
        self
    }

    pub(crate) fn validate_common(&self) -> Result<(), ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::new("max_attempts must be at least 1"));
        }
        if self.backoff_base > self.backoff_max {
            return Err(ConfigError::new("backoff base must not exceed its maximum"));
        }
        for (name, d) in [
            ("statement_timeout", self.statement_timeout),
            ("lock_timeout", self.lock_timeout),
            ("transaction_timeout", self.transaction_timeout),
            ("end_timeout", Some(self.end_timeout)),
        ] {
            if d == Some(Duration::ZERO) {
                return Err(ConfigError::new(format!("{name} must be positive")));
            }
        }
        Ok(())
    }

    /// The `Retry-After` header value in whole seconds (at least 1).
    pub(crate) fn retry_after_secs(&self) -> u64 {
        let s = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        s.max(1)
    }

    /// Backoff before attempt `attempt + 1` (attempt counts from 1).
    pub(crate) fn backoff_for(&self, attempt: u32) -> Duration {
        let exp = self
            .backoff_base
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.backoff_max);
        // Full jitter: anywhere up to the exponential bound, so retries that conflicted
        // together do not come back together.
        Duration::from_micros(rand::random_range(0..=exp.as_micros() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_fully_jittered_under_a_growing_capped_bound() {
        let c = TxConfig::default().backoff(Duration::from_millis(10), Duration::from_millis(40));
        let (mut low, mut high) = (Duration::MAX, Duration::ZERO);
        for _ in 0..1000 {
            let b1 = c.backoff_for(1);
            assert!(b1 <= Duration::from_millis(10));
            let b3 = c.backoff_for(3);
            assert!(b3 <= Duration::from_millis(40));
            low = low.min(b3);
            high = high.max(b3);
            let b9 = c.backoff_for(9);
            assert!(b9 <= Duration::from_millis(40));
        }
        // Full jitter: the whole range is used, not only its upper half.
        assert!(low < Duration::from_millis(10) && high > Duration::from_millis(30));
    }

    #[test]
    fn validation_rejects_nonsense() {
        assert!(
            TxConfig::default()
                .max_attempts(0)
                .validate_common()
                .is_err()
        );
        assert!(
            TxConfig::default()
                .backoff(Duration::from_secs(2), Duration::from_secs(1))
                .validate_common()
                .is_err()
        );
        assert!(
            TxConfig::default()
                .statement_timeout(Duration::ZERO)
                .validate_common()
                .is_err()
        );
        assert!(TxConfig::default().validate_common().is_ok());
    }

    #[test]
    fn retry_after_rounds_up() {
        let c = TxConfig::default().retry_after(Duration::from_millis(1500));
        assert_eq!(c.retry_after_secs(), 2);
        let c = TxConfig::default().retry_after(Duration::ZERO);
        assert_eq!(c.retry_after_secs(), 1);
    }
}
