//! Configuration of the transaction layer, validated when built.

use std::fmt;
use std::time::Duration;

use http::Method;

use super::error::{TxConfigError, TxConfigErrorKind};

/// How a request works with the database: without a transaction, in a read-only one, or in a
/// read-write one. Chosen per layer (so per route) and per method: see [`TxConfig::mode`] and
/// [`TxConfig::mode_for`]. The handler code is the same in all three: it borrows a connection
/// with [`TxHandle::conn`](super::TxHandle::conn) and runs its queries on it.
///
/// | | `Autocommit` | `ReadOnly` | `ReadWrite` |
/// |---|---|---|---|
/// | default for | `GET`, `HEAD`, `OPTIONS` | - | every other method (gRPC calls are all `POST`) |
/// | what is sent | the statements alone, each committed on its own | `BEGIN READ ONLY` / `START TRANSACTION READ ONLY` .. `COMMIT` | `BEGIN` / `START TRANSACTION` .. `COMMIT` |
/// | connection held | only while a [`TxConn`](super::TxConn) lives | from the first statement to the commit | same |
/// | pool | the replica, when the layer has one | the replica, when the layer has one | the primary |
/// | isolation, statement and lock timeouts | not applied (no transaction to scope them to) | applied | applied |
/// | replayed on a retryable error or a lost connection | `GET`, `HEAD`, `OPTIONS` with a buffered body only | yes | yes |
/// | after-commit hooks | run once the response is decided a success | after `COMMIT` | after `COMMIT` |
/// | counted in [`TxStatsSnapshot`](super::TxStatsSnapshot) as | `autocommit` | `begun`, `read_only`, `committed` | `begun`, `committed` |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TxMode {
    /// No transaction: each [`TxHandle::conn`](super::TxHandle::conn) borrows a pooled
    /// connection for as long as its guard lives, and each statement commits on its own. No
    /// `BEGIN`, no `COMMIT`: one round trip per statement, and the connection goes back to the
    /// pool between borrows. Statements that succeeded stay, whatever the response.
    Autocommit,
    /// A read-only transaction (`BEGIN READ ONLY`, `START TRANSACTION READ ONLY`): one
    /// consistent snapshot at the configured isolation; a write fails with the database's
    /// read-only error (PostgreSQL `25006`, MySQL/MariaDB 1792). Not on SQLite.
    ReadOnly,
    /// A read-write transaction at the configured [`isolation`](TxConfig::isolation),
    /// committed or rolled back from the response.
    ReadWrite,
}

impl TxMode {
    /// Whether the mode begins a transaction.
    pub fn is_transaction(self) -> bool {
        !matches!(self, Self::Autocommit)
    }

    /// `autocommit`, `read-only` or `read-write`: the spans' `tx.mode`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Autocommit => "autocommit",
            Self::ReadOnly => "read-only",
            Self::ReadWrite => "read-write",
        }
    }
}

/// `GET`, `HEAD` and `OPTIONS`: the methods that default to [`TxMode::Autocommit`] and whose
/// requests are replayed without a transaction (RFC 9110 safe methods, minus `TRACE`, which
/// applications do not route).
pub(crate) fn is_read_method(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The modes of a layer by method: explicit ones, then the defaults.
#[derive(Debug, Clone, Default)]
struct Modes {
    /// Set by [`TxConfig::mode`]: every method not overridden.
    all: Option<TxMode>,
    /// Set by [`TxConfig::mode_for`]; the last one set for a method wins.
    by_method: Vec<(Method, TxMode)>,
}

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
/// Build it with [`TxConfig::default`] and the setters; [`TxLayer::try_new`](super::TxLayer::try_new)
/// validates it against the database (a setting the database cannot honour is an error, not
/// silently ignored).
#[derive(Debug, Clone)]
pub struct TxConfig {
    pub(crate) isolation: Option<IsolationLevel>,
    modes: Modes,
    pub(crate) transaction_pooling: bool,
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
            modes: Modes::default(),
            transaction_pooling: false,
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
    /// Isolation level of each transaction, read-only or read-write (default: the database's
    /// default). It does not choose the [`TxMode`]: a `GET` still runs without a transaction
    /// unless its mode says otherwise, so a route whose reads must be, say, serializable sets
    /// [`mode_for`](Self::mode_for)`(Method::GET, TxMode::ReadOnly)` as well.
    pub fn isolation(mut self, level: IsolationLevel) -> Self {
        self.isolation = Some(level);
        self
    }

    /// The same [`TxMode`] for every method, replacing the defaults and any earlier
    /// [`mode_for`](Self::mode_for). Give each route its own layer to mix modes per route.
    ///
    /// ```
    /// use http::Method;
    /// use tower_strata::tx::{TxConfig, TxMode};
    ///
    /// // A report route: every request in one read-only snapshot.
    /// let config = TxConfig::default().mode(TxMode::ReadOnly);
    /// assert_eq!(config.mode_of(&Method::POST), TxMode::ReadOnly);
    /// ```
    pub fn mode(mut self, mode: TxMode) -> Self {
        self.modes = Modes {
            all: Some(mode),
            by_method: Vec::new(),
        };
        self
    }

    /// The [`TxMode`] of requests with `method`, over the defaults and [`mode`](Self::mode).
    /// For a `GET` that must read its own row under a lock (`SELECT .. FOR UPDATE`) or see one
    /// snapshot across several statements, say.
    ///
    /// ```
    /// use http::Method;
    /// use tower_strata::tx::{TxConfig, TxMode};
    ///
    /// let config = TxConfig::default().mode_for(Method::GET, TxMode::ReadOnly);
    /// assert_eq!(config.mode_of(&Method::GET), TxMode::ReadOnly);
    /// assert_eq!(config.mode_of(&Method::HEAD), TxMode::Autocommit);
    /// ```
    pub fn mode_for(mut self, method: Method, mode: TxMode) -> Self {
        self.modes.by_method.retain(|(m, _)| *m != method);
        self.modes.by_method.push((method, mode));
        self
    }

    /// The [`TxMode`] a request with `method` runs in: its [`mode_for`](Self::mode_for), else
    /// the [`mode`](Self::mode), else the default: [`TxMode::Autocommit`] for `GET`, `HEAD`
    /// and `OPTIONS` ([`TxMode::ReadOnly`] under
    /// [`transaction_pooling`](Self::transaction_pooling)), [`TxMode::ReadWrite`] for the rest.
    pub fn mode_of(&self, method: &Method) -> TxMode {
        if let Some((_, mode)) = self.modes.by_method.iter().find(|(m, _)| m == method) {
            return *mode;
        }
        if let Some(mode) = self.modes.all {
            return mode;
        }
        match (is_read_method(method), self.transaction_pooling) {
            (true, false) => TxMode::Autocommit,
            (true, true) => TxMode::ReadOnly,
            (false, _) => TxMode::ReadWrite,
        }
    }

    /// Shorthand kept from before [`TxMode`]: `true` is [`mode`](Self::mode)`(TxMode::ReadOnly)`
    /// (every request in a read-only transaction), `false` restores the default modes.
    pub fn read_only(self, read_only: bool) -> Self {
        if read_only {
            self.mode(TxMode::ReadOnly)
        } else {
            Self {
                modes: Modes::default(),
                ..self
            }
        }
    }

    setters! {
        /// The pool reaches PostgreSQL through a pooler in transaction mode (PgBouncer's
        /// `pool_mode = transaction`), which may hand each transaction, and each statement
        /// outside one, a different server connection (default `false`). PostgreSQL only.
        ///
        /// The layer keeps no session state on a server connection in any case: isolation is
        /// set by `BEGIN`, timeouts by `SET LOCAL`, so they end with the transaction. This
        /// setting adds two things:
        ///
        /// - statements run through the handle are prepared unnamed, never under a name kept in
        ///   sqlx's per-connection statement cache (as with `.persistent(false)` on each query): a
        ///   named statement outlives its transaction on one server connection, so the next
        ///   transaction, on another, fails with "prepared statement does not exist", or another
        ///   client's identically numbered one fails with "already exists". sqlx's
        ///   `PgConnectOptions::statement_cache_capacity(0)` does not avoid it in sqlx 0.9: with
        ///   the cache off, each query is still prepared under a new name, never closed.
        ///   (PgBouncer 1.21 and later can carry named statements with `max_prepared_statements`;
        ///   1.18, Debian 12's, cannot.)
        /// - `GET`, `HEAD` and `OPTIONS` default to [`TxMode::ReadOnly`], and
        ///   [`TxMode::Autocommit`] is refused ([`TxLayer::try_new`](super::TxLayer::try_new) fails): sqlx
        ///   sends a statement with parameters in two round trips (parse, then bind and execute),
        ///   and outside a transaction the pooler may send them to two different server
        ///   connections. Inside one, the server connection stays the same from `BEGIN` to
        ///   `COMMIT`.
        ///
        /// Queries run on the pool directly, not through the handle, need `.persistent(false)`
        /// themselves (or, outside a transaction, no parameters).
        fn transaction_pooling(on: bool) => set transaction_pooling;

        /// Per-statement timeout (`SET LOCAL statement_timeout` on PostgreSQL). PostgreSQL only.
        fn statement_timeout(timeout: Duration) => some statement_timeout;

        /// Lock wait timeout: `SET LOCAL lock_timeout` on PostgreSQL; on MySQL/MariaDB the
        /// session's `innodb_lock_wait_timeout`, set before each transaction in whole seconds
        /// (rounded up) and left on the pooled connection afterwards. Not on SQLite (use its
        /// `busy_timeout`).
        fn lock_timeout(timeout: Duration) => some lock_timeout;

        /// Time limit of one attempt's handler. When it passes the handler is cancelled, its
        /// connection closed (so the server rolls back) and the client gets `503`. A statement
        /// already running keeps running on the server until it ends: pair this with
        /// [`statement_timeout`](Self::statement_timeout) on PostgreSQL.
        fn transaction_timeout(timeout: Duration) => some transaction_timeout;

        /// Time limit of `COMMIT` and of `ROLLBACK` (default 5 s). Past it the connection is
        /// closed, never pooled: a `COMMIT` that timed out is ambiguous (`502`), a `ROLLBACK` that
        /// timed out leaves the server to roll back when it sees the connection gone.
        fn end_timeout(timeout: Duration) => set end_timeout;

        /// Limits the transactions this layer runs at once, adapting the limit to their
        /// conflicts (default off): each conflict that forces a retry cuts it by a quarter, each
        /// clean commit raises it by one over the limit, between 1 and `max`. Meant for hot rows
        /// under `SERIALIZABLE` (many requests writing the same few rows), where fewer at once
        /// commit more and fewer run out of retries. Only [`TxMode::ReadWrite`] requests count
        /// and wait: reads do not take the rows' write locks. Waiting for room counts against
        /// [`retry_deadline`](Self::retry_deadline); past it the request gets `503`.
        fn adaptive_concurrency(max: Option<usize>) => set adaptive_concurrency;

        /// Maximum number of attempts of one request, the first included (default 3; 1 disables
        /// retry).
        fn max_attempts(attempts: u32) => set max_attempts;

        /// Total time within which a retry may still start (default 10 s).
        fn retry_deadline(deadline: Duration) => set retry_deadline;
    }

    /// Backoff before the first retry, doubled each time up to `max` (defaults 10 ms and
    /// 500 ms). Each wait is drawn uniformly from its upper half (jitter).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }

    setters! {
        /// Largest request body buffered for replay (default 1 MiB). Bodies of unknown length or
        /// above the limit are streamed to the handler and their request is never retried.
        fn max_body_size(bytes: usize) => set max_body_size;

        /// The `Retry-After` sent with `503` answers (default 1 s, rounded up to whole seconds).
        fn retry_after(after: Duration) => set retry_after;

        /// How SQLite begins transactions (default [`SqliteBegin::Deferred`]).
        fn sqlite_begin(begin: SqliteBegin) => set sqlite_begin;

        /// Retry MySQL/MariaDB error 1205 (lock wait timeout). Turn it on only when the server
        /// runs with `innodb_rollback_on_timeout=ON`: otherwise only the statement is rolled back
        /// and replaying the request is wrong, so the default is `false`.
        fn mysql_retry_lock_wait_timeout(retry: bool) => set mysql_retry_lock_wait_timeout;

        /// Statements slower than this through the handle are logged with `tracing` and kept in
        /// the stats' slow list (default 100 ms).
        fn slow_statement(threshold: Duration) => set slow_statement;
    }

    pub(crate) fn validate_common(&self) -> Result<(), TxConfigError> {
        if self.max_attempts == 0 {
            return Err(TxConfigError::new(
                TxConfigErrorKind::Retry,
                "max_attempts must be at least 1",
            ));
        }
        if self.backoff_base > self.backoff_max {
            return Err(TxConfigError::new(
                TxConfigErrorKind::Retry,
                "backoff base must not exceed its maximum",
            ));
        }
        if self.transaction_pooling && self.explicit_modes().any(|m| m == TxMode::Autocommit) {
            return Err(TxConfigError::new(
                TxConfigErrorKind::Conflict,
                "TxMode::Autocommit cannot run through a transaction pooler (transaction_pooling): \
                 a statement's parse and execute may reach different server connections",
            ));
        }
        for (name, d) in [
            ("statement_timeout", self.statement_timeout),
            ("lock_timeout", self.lock_timeout),
            ("transaction_timeout", self.transaction_timeout),
            ("end_timeout", Some(self.end_timeout)),
        ] {
            if d == Some(Duration::ZERO) {
                return Err(TxConfigError::new(
                    TxConfigErrorKind::ZeroTimeout,
                    format!("{name} must be positive"),
                ));
            }
        }
        Ok(())
    }

    /// Every mode set explicitly, for validation.
    pub(crate) fn explicit_modes(&self) -> impl Iterator<Item = TxMode> + '_ {
        self.modes
            .all
            .into_iter()
            .chain(self.modes.by_method.iter().map(|(_, m)| *m))
    }

    /// The `Retry-After` header value in whole seconds (at least 1).
    pub(crate) fn retry_after_secs(&self) -> u64 {
        let s = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        s.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(
            TxConfig::default()
                .transaction_pooling(true)
                .mode_for(Method::GET, TxMode::Autocommit)
                .validate_common()
                .is_err()
        );
        assert!(
            TxConfig::default()
                .transaction_pooling(true)
                .validate_common()
                .is_ok()
        );
    }

    #[test]
    fn modes_default_by_method_and_are_overridden() {
        let c = TxConfig::default();
        for m in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert_eq!(c.mode_of(&m), TxMode::Autocommit);
        }
        for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert_eq!(c.mode_of(&m), TxMode::ReadWrite);
        }
        let c = TxConfig::default().transaction_pooling(true);
        assert_eq!(c.mode_of(&Method::GET), TxMode::ReadOnly);

        let c = TxConfig::default()
            .mode_for(Method::GET, TxMode::ReadWrite)
            .mode_for(Method::GET, TxMode::ReadOnly);
        assert_eq!(c.mode_of(&Method::GET), TxMode::ReadOnly);
        assert_eq!(c.mode_of(&Method::POST), TxMode::ReadWrite);

        // `mode` replaces earlier overrides; later ones win over it.
        let c = TxConfig::default()
            .mode_for(Method::GET, TxMode::ReadWrite)
            .mode(TxMode::Autocommit)
            .mode_for(Method::DELETE, TxMode::ReadWrite);
        assert_eq!(c.mode_of(&Method::GET), TxMode::Autocommit);
        assert_eq!(c.mode_of(&Method::POST), TxMode::Autocommit);
        assert_eq!(c.mode_of(&Method::DELETE), TxMode::ReadWrite);
    }

    #[test]
    fn read_only_maps_onto_modes() {
        let c = TxConfig::default().read_only(true);
        assert_eq!(c.mode_of(&Method::GET), TxMode::ReadOnly);
        assert_eq!(c.mode_of(&Method::POST), TxMode::ReadOnly);
        let c = c.read_only(false);
        assert_eq!(c.mode_of(&Method::GET), TxMode::Autocommit);
        assert_eq!(c.mode_of(&Method::POST), TxMode::ReadWrite);
    }

    #[test]
    fn retry_after_rounds_up() {
        let c = TxConfig::default().retry_after(Duration::from_millis(1500));
        assert_eq!(c.retry_after_secs(), 2);
        let c = TxConfig::default().retry_after(Duration::ZERO);
        assert_eq!(c.retry_after_secs(), 1);
    }
}
