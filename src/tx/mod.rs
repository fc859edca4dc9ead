//! A database transaction per request where one is needed, committed or rolled back from the
//! response, with retry on serialization failures, deadlocks, busy errors and connections lost
//! before `COMMIT`.
//!
//! [`TxLayer`] holds a `sqlx` pool. Each request gets a [`TxHandle`] in its extensions (an
//! axum extractor too) whose transaction begins on first use, so a request that never touches
//! the database costs no round trip.
//!
//! # Modes: no transaction, read-only, read-write
//!
//! Each request runs in a [`TxMode`] chosen from its method, per layer (so per route):
//!
//! - `GET`, `HEAD` and `OPTIONS` run without a transaction by default
//!   ([`TxMode::Autocommit`]): each [`TxHandle::conn`] borrows a pooled connection for as long
//!   as its guard lives, and each statement commits on its own. A read that is one statement
//!   pays one round trip instead of three (`BEGIN`, the query, `COMMIT`) and holds a connection
//!   only while it runs.
//! - every other method runs in a read-write transaction ([`TxMode::ReadWrite`]) at the
//!   configured [`isolation`](TxConfig::isolation). gRPC calls are all `POST`, so each one gets
//!   a read-write transaction unless its layer says otherwise.
//! - [`TxMode::ReadOnly`] begins `BEGIN READ ONLY` (`START TRANSACTION READ ONLY`): one
//!   snapshot for several statements, and a write fails with the database's error.
//!
//! [`TxConfig::mode`] sets one mode for every method of a layer, [`TxConfig::mode_for`] one
//! method's: a `GET` that locks what it reads (`SELECT .. FOR UPDATE`) or needs one consistent
//! snapshot across statements gets `mode_for(Method::GET, TxMode::ReadOnly)` or `ReadWrite`.
//! [`TxConfig::read_only`]`(true)` is `mode(TxMode::ReadOnly)`. The handler code is the same in
//! every mode; [`TxHandle::mode`] tells which one it got. The table on [`TxMode`] lists how
//! retries, timeouts, hooks and stats behave in each. In short, without a transaction:
//!
//! - a retryable error or a lost connection replays a `GET`, `HEAD` or `OPTIONS` request (its
//!   body buffered) like a transaction's, since such a request is not supposed to write; a
//!   request of another method is never replayed (what it wrote before the error stays
//!   committed): the handler's own answer goes out.
//! - statement and lock timeouts are not applied: they are `SET LOCAL`, scoped to a
//!   transaction, and a session-wide `SET` would outlive the request on the pooled connection.
//!   Set them for the role or database (`ALTER ROLE .. SET statement_timeout = ..`) if reads
//!   need them; [`TxConfig::transaction_timeout`] still bounds the handler.
//! - after-commit hooks run once the response is decided a success ([`AfterCommit`]).
//! - the work is counted in [`TxStatsSnapshot::autocommit`], not as transactions.
//! - the [`TxConfig::adaptive_concurrency`] limit applies to read-write transactions only:
//!   reads do not conflict on hot rows.
//!
//! # Replica
//!
//! [`TxLayer::replica`] adds a second pool: read-only and autocommit work goes there,
//! read-write work to the primary. The layer does not measure replication lag.
//!
//! # Behind PgBouncer
//!
//! The layer leaves no session state behind in any mode: isolation is part of `BEGIN`,
//! timeouts are `SET LOCAL`. Behind PgBouncer in transaction pooling mode set
//! [`TxConfig::transaction_pooling`]: statements are then prepared unnamed (sqlx's named
//! statements outlive their transaction on a server connection the next client may get), and
//! reads default to read-only transactions (outside a transaction, the pooler may send a
//! statement's parse and execute to different server connections).
//!
//! # Ending the request
//!
//! When the inner service answers:
//!
//! - a retryable error seen by the handle (PostgreSQL `40001`/`40P01`, MySQL/MariaDB 1213 and
//!   optionally 1205, SQLite busy/locked, decided by code, never by message), or a connection
//!   lost before `COMMIT` was sent (the backend terminated: SQLSTATE class `08`, `57P01`, a
//!   broken pipe or another I/O error; nothing was committed) rolls back and
//!   **replays the request** with a new transaction, after an exponential backoff with
//!   jitter, up to [`TxConfig::max_attempts`] (3) within [`TxConfig::retry_deadline`]. The
//!   handler may simply `?` the `sqlx::Error` into a `500`: the layer ignores that answer.
//!   Only bodies of known length up to [`TxConfig::max_body_size`] (1 MiB) are buffered
//!   for replay; other requests are not retried. When retries run out: `503` with
//!   `Retry-After`.
//! - otherwise the [`CommitPolicy`] decides: by default commit below `400`, and for gRPC
//!   when `grpc-status` is `0` in the headers or, once the body is sent, the trailers. A
//!   [`Verdict`] in the response extensions overrides it.
//! - a failed `COMMIT` never shows success: `500`, or `503` + `Retry-After` for a
//!   retryable failure that cannot be replayed. A commit whose connection was lost is
//!   **ambiguous** and never retried: `502` (gRPC `UNKNOWN`). A PostgreSQL transaction
//!   aborted by an earlier failed statement is not reported as committed either.
//! - a panic, an error from the inner service, a cancelled request (the future dropped) or
//!   the [`TxConfig::transaction_timeout`] rolls back; the timeout also ends a gRPC
//!   transaction whose commit is still waiting for the end of its response body. A connection whose session state is
//!   unknown (cancelled during `BEGIN`, a statement or `COMMIT`) is closed, never returned
//!   to the pool.
//! - no connection within the pool's acquire timeout: `503` with `Retry-After`.
//! - with [`TxConfig::adaptive_concurrency`], at most a limit of transactions run at once,
//!   the limit cut by each conflict and raised by clean commits: on hot rows fewer at once
//!   commit more.
//!
//! The layer's own answers carry a [`TX_ERROR_HEADER`] naming the cause; for gRPC requests
//! they are gRPC statuses (`UNAVAILABLE`, `INTERNAL`, `UNKNOWN`).
//!
//! Nested transactions: [`TxConn::savepoint`]. Work after commit (cache purge, events):
//! [`TxHandle::after_commit`], or [`AfterCommit`] from the request extensions in a layer that
//! does not know the database type. Statistics: [`TxLayer::stats`] gives a [`TxStats`] whose
//! [`TxStatsSnapshot`] (serde-serializable) counts transactions, retries by reason, commit
//! failures, and times each statement run through the handle.
//!
//! # Cancellation and concurrency
//!
//! A request cancelled before `COMMIT` is sent writes nothing: its connection is closed, so
//! the server rolls back, and the pool opens a fresh one. Once the layer decides to commit,
//! `COMMIT` and the after-commit hooks run in a task of their own that the response awaits:
//! a request dropped from then on (a client reset, an outer timeout) is committed all the same
//! and its hooks run, as they also do when the commit's outcome is unknown (a purge is harmless
//! if nothing was committed); they never run after a rollback or before a retry.
//!
//! Each attempt has its own [`TxHandle`]; clones of it share one transaction and take turns
//! on its connection. Retried attempts run one after another, never concurrently, and only
//! the last attempt's [`AfterCommit`] hooks can run.
//!
//! # Example with axum
//!
//! ```no_run
//! # #[cfg(all(feature = "axum", feature = "postgres"))]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, http::{Method, StatusCode}, routing::{get, post}};
//! use sqlx::Postgres;
//! use tower_strata::tx::{IsolationLevel, TxConfig, TxHandle, TxLayer, TxMode};
//!
//! async fn balance(tx: TxHandle<Postgres>) -> Result<String, StatusCode> {
//!     let mut conn = tx.conn().await.map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
//!     let cents: i64 = sqlx::query_scalar("SELECT balance FROM accounts WHERE id = 1")
//!         .fetch_one(&mut conn)
//!         .await
//!         .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
//!     Ok(cents.to_string())
//! }
//!
//! async fn deposit(tx: TxHandle<Postgres>) -> Result<StatusCode, StatusCode> {
//!     let mut conn = tx.conn().await.map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
//!     sqlx::query("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
//!         .execute(&mut conn)
//!         .await
//!         .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
//!     Ok(StatusCode::NO_CONTENT)
//! }
//!
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/test").await?;
//! // The defaults: GET without a transaction, POST in a read-write one.
//! let layer = TxLayer::try_new(pool.clone(), TxConfig::default())?;
//! let stats = layer.stats();
//! // Customised: this route's GET reads in a serializable read-only snapshot, and its
//! // reads go to a replica.
//! let replica = sqlx::PgPool::connect("postgres://postgres@replica/test").await?;
//! let audited = TxLayer::try_new(
//!     pool,
//!     TxConfig::default()
//!         .isolation(IsolationLevel::Serializable)
//!         .mode_for(Method::GET, TxMode::ReadOnly),
//! )?
//! .replica(replica)
//! .stats_from(&layer);
//! let app: Router = Router::new()
//!     .route("/deposit", post(deposit))
//!     .layer(layer)
//!     .merge(Router::new().route("/balance", get(balance)).layer(audited));
//! # let _ = (app, stats); Ok(()) }
//! ```
//!
//! # Example with `ServiceBuilder` (SQLite, no server)
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use sqlx::Sqlite;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_strata::tx::{TxBody, TxConfig, TxHandle, TxLayer};
//!
//! let pool = sqlx::sqlite::SqlitePoolOptions::new()
//!     .max_connections(1)
//!     .connect("sqlite::memory:")
//!     .await?;
//! sqlx::query("CREATE TABLE t (x INTEGER)").execute(&pool).await?;
//!
//! let layer = TxLayer::try_new(pool.clone(), TxConfig::default())?;
//! let svc = ServiceBuilder::new().layer(layer).service_fn(
//!     |req: Request<TxBody<String>>| async move {
//!         let tx = req.extensions().get::<TxHandle<Sqlite>>().unwrap().clone();
//!         let mut conn = tx.conn().await.unwrap();
//!         sqlx::query("INSERT INTO t VALUES (1)").execute(&mut conn).await.unwrap();
//!         Ok::<_, Infallible>(Response::new(String::from("ok")))
//!     },
//! );
//! // A POST: a read-write transaction, committed on the 200.
//! let response = svc.oneshot(Request::post("/").body(String::new())?).await?;
//! assert_eq!(response.status(), 200);
//! let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t").fetch_one(&pool).await?;
//! assert_eq!(n, 1);
//! # Ok(()) }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```

mod attempt;
mod backend;
mod body;
mod commit;
mod config;
mod conn;
mod error;
mod executor;
mod future;
mod handle;
mod layer;
mod limit;
mod outcome;
mod policy;
mod service;
mod stats;

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
mod axum;

#[cfg(feature = "axum")]
pub use self::axum::MissingTxLayer;
pub use backend::TxDatabase;
pub use body::{TxBody, TxResponseBody};
pub use config::{DEFAULT_END_TIMEOUT, IsolationLevel, SqliteBegin, TxConfig, TxMode};
pub use conn::{Savepoint, TxConn};
pub use error::{RetryReason, TxConfigError, TxConfigErrorKind};
pub use future::ResponseFuture;
pub use handle::{AfterCommit, TxHandle};
pub use layer::TxLayer;
pub use outcome::TX_ERROR_HEADER;
pub use policy::{CommitPolicy, DefaultPolicy, Verdict};
pub use service::Tx;
pub use stats::{
    DurationSummary, MAX_STATEMENTS, OTHER_STATEMENTS, RetriedByReason, SLOW_KEPT, SlowStatement,
    StatementStats, TxStats, TxStatsSnapshot,
};

/// Turns on sqlx's own slow-statement logging (`ConnectOptions::log_slow_statements`, at
/// `WARN` through the `log` facade) for code that does not run its queries through a
/// [`TxHandle`].
///
/// ```
/// # #[cfg(feature = "sqlite")] {
/// use std::time::Duration;
/// let options = tower_strata::tx::log_slow_statements(
///     sqlx::sqlite::SqliteConnectOptions::new(),
///     Duration::from_millis(200),
/// );
/// # let _ = options; }
/// ```
pub fn log_slow_statements<O: sqlx::ConnectOptions>(
    options: O,
    threshold: std::time::Duration,
) -> O {
    options.log_slow_statements(log::LevelFilter::Warn, threshold)
}
