//! The request's transaction: [`TxHandle`], the connection guard [`TxConn`], nested
//! [`Savepoint`](super::Savepoint)s and [`AfterCommit`] hooks.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::{Pool, SqlStr};
use sqlx_core::transaction::TransactionManager;

use super::backend::{TxDatabase, classify, is_connection_loss};
use super::config::{TxConfig, TxMode};
use super::conn::TxConn;
use super::error::RetryReason;
use super::stats::StatsInner;

pub(super) type Hook = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

pub(super) const NOT_ABORTED: usize = usize::MAX;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// State of one attempt shared by the handle, its guards and the layer.
pub(crate) struct Shared {
    pub(crate) config: Arc<TxConfig>,
    pub(crate) stats: Arc<StatsInner>,
    /// The attempt's mode, from the request's method.
    pub(crate) mode: TxMode,
    /// Whether this attempt has borrowed a connection without a transaction yet: counted once.
    pub(super) autocommit_used: AtomicBool,
    pub(super) retry: Mutex<Option<RetryReason>>,
    pub(super) pool_exhausted: AtomicBool,
    /// Savepoint depth: 0 is the outer transaction.
    pub(super) depth: AtomicUsize,
    /// Lowest depth at which a statement failed, on databases where that aborts the
    /// transaction.
    pub(super) aborted_at: AtomicUsize,
    /// `None` once the attempt ended: registering then is refused.
    pub(super) hooks: Mutex<Option<Vec<(usize, Hook)>>>,
}

impl Shared {
    pub(crate) fn new(config: Arc<TxConfig>, stats: Arc<StatsInner>, mode: TxMode) -> Self {
        Self {
            config,
            stats,
            mode,
            autocommit_used: AtomicBool::new(false),
            retry: Mutex::new(None),
            pool_exhausted: AtomicBool::new(false),
            depth: AtomicUsize::new(0),
            aborted_at: AtomicUsize::new(NOT_ABORTED),
            hooks: Mutex::new(Some(Vec::new())),
        }
    }

    /// Watches an error of `BEGIN` or of a statement: a retryable one (or a lost connection:
    /// before `COMMIT` nothing was committed) makes the layer replay the attempt.
    pub(super) fn note_error<DB: TxDatabase>(&self, err: &sqlx::Error) {
        let reason = classify::<DB>(err, &self.config)
            .or_else(|| is_connection_loss(err).then_some(RetryReason::ConnectionLost));
        if let Some(reason) = reason {
            lock(&self.retry).get_or_insert(reason);
        }
        // Without a transaction a failed statement aborts nothing but itself.
        if DB::ERROR_ABORTS_TRANSACTION
            && self.mode.is_transaction()
            && matches!(err, sqlx::Error::Database(_))
        {
            self.aborted_at
                .fetch_min(self.depth.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    pub(super) fn finish_statement<DB: TxDatabase>(
        &self,
        sql: &OnceLock<SqlStr>,
        start: Instant,
        err: Option<&sqlx::Error>,
    ) {
        let text = sql
            .get()
            .map(|s| s.as_str())
            .unwrap_or("<unknown statement>");
        self.stats.statement(
            text,
            start.elapsed(),
            err.is_some(),
            self.config.slow_statement,
        );
        if let Some(err) = err {
            self.note_error::<DB>(err);
        }
    }

    pub(super) fn register(&self, hook: Hook) {
        let depth = self.depth.load(Ordering::Relaxed);
        match lock(&self.hooks).as_mut() {
            Some(hooks) => hooks.push((depth, hook)),
            None => tracing::warn!(
                target: "tower_strata::tx",
                "after_commit registered after the transaction ended; dropped"
            ),
        }
    }

    /// A savepoint at `depth` ended: released (its hooks move to the parent) or rolled back
    /// (its hooks and its failed statements are forgotten).
    pub(super) fn savepoint_ended(&self, depth: usize, released: bool) {
        if let Some(hooks) = lock(&self.hooks).as_mut() {
            if released {
                for (d, _) in hooks.iter_mut() {
                    if *d >= depth {
                        *d = depth - 1;
                    }
                }
            } else {
                hooks.retain(|(d, _)| *d < depth);
            }
        }
        if !released {
            let _ = self
                .aborted_at
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                    (a != NOT_ABORTED && a >= depth).then_some(NOT_ABORTED)
                });
        }
        self.depth.store(depth - 1, Ordering::Relaxed);
    }

    pub(crate) fn retry_reason(&self) -> Option<RetryReason> {
        *lock(&self.retry)
    }

    pub(crate) fn pool_exhausted(&self) -> bool {
        self.pool_exhausted.load(Ordering::Relaxed)
    }

    /// Closes registration and returns the hooks to run (empty when `committed` is false).
    pub(crate) fn take_hooks(&self, committed: bool) -> Vec<Hook> {
        let hooks = lock(&self.hooks).take().unwrap_or_default();
        if committed {
            hooks.into_iter().map(|(_, h)| h).collect()
        } else {
            Vec::new()
        }
    }
}

/// Runs after-commit hooks in registration order. A panicking hook is logged and does not
/// stop the others.
pub(crate) async fn run_hooks(hooks: Vec<Hook>) {
    for hook in hooks {
        let run = AssertUnwindSafe(async move { hook().await }).catch_unwind();
        if run.await.is_err() {
            tracing::error!(target: "tower_strata::tx", "after_commit hook panicked");
        }
    }
}

pub(super) fn boxed_hook<F, Fut>(f: F) -> Hook
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Box::new(move || Box::pin(f()))
}

/// Registers work to run once the request's transaction has committed; found in the request
/// extensions by layers inside the [`TxLayer`](super::TxLayer) (a purge layer, say), with no
/// need to know the database type.
///
/// Hooks run in registration order after a successful `COMMIT` and before the response is
/// returned (for gRPC, before the trailers are sent). They never run when the transaction
/// rolls back, they are discarded with the attempt when the request is retried (the replayed
/// attempt registers its own), and a hook registered inside a [`Savepoint`](super::Savepoint) that is rolled
/// back is dropped with it. A request that never touched the database has nothing to
/// commit, so its hooks run when the response is a success.
///
/// Without a transaction ([`TxMode::Autocommit`](super::TxMode::Autocommit)) each statement
/// committed as it ran, so "after commit" means after the response is decided: the hooks run
/// when the [`CommitPolicy`](super::CommitPolicy) (or a [`Verdict`](super::Verdict)) would
/// commit, that is when the response is a success, at the same point as a transaction's
/// `COMMIT` (for gRPC, once the trailers are seen). On a failure response they are dropped,
/// as with a transaction, although a statement that succeeded before the failure stays
/// written: work whose side effects must follow every write belongs in a transaction.
///
/// ```
/// # #[cfg(feature = "sqlite")] {
/// use tower_strata::tx::AfterCommit;
///
/// fn purge_later<B>(req: &http::Request<B>) {
///     if let Some(after_commit) = req.extensions().get::<AfterCommit>() {
///         after_commit.register(|| async { /* purge cache keys */ });
///     }
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct AfterCommit {
    pub(super) shared: Arc<Shared>,
}

impl AfterCommit {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Adds `f` to run after the commit. Registering after the transaction ended logs a
    /// warning and drops `f`.
    pub fn register<F, Fut>(&self, f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.shared.register(boxed_hook(f));
    }
}

impl fmt::Debug for AfterCommit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AfterCommit").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Idle,
    /// `BEGIN` was sent and its answer not seen: a `conn()` cut short here leaves the
    /// connection in an unknown state (maybe inside a transaction), so it is closed, never
    /// pooled.
    Beginning,
    Open,
    Done,
    /// Ended by the transaction timeout while its commit waited for the end of a response
    /// body: rolled back (its connection closed), and never to be reported as committed.
    Expired,
}

pub(super) struct Slot<DB: TxDatabase> {
    pub(super) conn: Option<PoolConnection<DB>>,
    pub(super) state: State,
    pub(super) began: Instant,
    /// Whether the open transaction is read-only (the figures' `mode`).
    pub(super) read_only: bool,
    pub(super) stats: Arc<StatsInner>,
}

impl<DB: TxDatabase> Drop for Slot<DB> {
    fn drop(&mut self) {
        // Still holding a connection here means the attempt was cancelled or panicked during
        // BEGIN, a statement or COMMIT: its session state is unknown, so it is closed rather
        // than returned to the pool (sqlx 0.9.0 can return a connection still inside a
        // transaction when BEGIN is cancelled).
        if let Some(mut conn) = self.conn.take() {
            conn.close_on_drop();
        }
        if self.state == State::Open {
            self.stats
                .ended(self.read_only, false, self.began.elapsed());
        }
    }
}

pub(super) struct HandleInner<DB: TxDatabase> {
    /// The attempt's pool: the primary, or the replica for read-only and autocommit work.
    pub(super) pool: Pool<DB>,
    pub(super) shared: Arc<Shared>,
    pub(super) slot: tokio::sync::Mutex<Slot<DB>>,
}

/// The request's database access: its transaction, begun lazily on the first
/// [`conn`](TxHandle::conn), or, in [`TxMode::Autocommit`], a pooled connection borrowed for
/// each `conn()`.
///
/// The [`TxLayer`](super::TxLayer) puts one in the request extensions of each attempt (clone
/// it out, or use it as an axum extractor). Queries must run through the [`TxConn`] guard so
/// the handle sees their errors: a retryable one (serialization failure, deadlock, busy)
/// makes the layer roll back and replay the request whatever the handler answered. The code
/// is the same in every [`TxMode`]; [`mode`](TxHandle::mode) says which one the request got.
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// # async fn demo(tx: tower_strata::tx::TxHandle<sqlx::Postgres>) -> Result<(), sqlx::Error> {
/// let mut conn = tx.conn().await?;
/// sqlx::query("UPDATE accounts SET balance = balance - $1 WHERE id = $2")
///     .bind(10_i64)
///     .bind(1_i64)
///     .execute(&mut conn)
///     .await?;
/// tx.after_commit(|| async { /* publish an event */ });
/// # Ok(()) }
/// ```
///
/// # Concurrency
///
/// Clones share one transaction. [`conn`](TxHandle::conn) holds an async lock for as long as
/// its guard lives, so two tasks of one request take turns; the layer's commit waits for the
/// guard, so do not move a guard into a task that outlives the handler.
pub struct TxHandle<DB: TxDatabase> {
    pub(super) inner: Arc<HandleInner<DB>>,
}

impl<DB: TxDatabase> Clone for TxHandle<DB> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<DB: TxDatabase> fmt::Debug for TxHandle<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxHandle")
            .field("retry_reason", &self.inner.shared.retry_reason())
            .finish_non_exhaustive()
    }
}

/// How the layer's end of an attempt went.
pub(crate) enum Finished {
    NotBegun,
    Committed,
    RolledBack,
    /// A statement failed earlier and the database aborted the transaction: nothing was
    /// committed.
    Aborted,
    CommitFailed(sqlx::Error),
    /// The transaction timeout ended it before the commit (see [`TxHandle::expire`]).
    Expired,
}

impl<DB: TxDatabase> TxHandle<DB> {
    pub(crate) fn new(pool: Pool<DB>, shared: Arc<Shared>) -> Self {
        let stats = shared.stats.clone();
        Self {
            inner: Arc::new(HandleInner {
                pool,
                shared,
                slot: tokio::sync::Mutex::new(Slot {
                    conn: None,
                    state: State::Idle,
                    began: Instant::now(),
                    read_only: false,
                    stats,
                }),
            }),
        }
    }

    /// The transaction's connection, beginning the transaction on first use. In
    /// [`TxMode::Autocommit`], a connection borrowed from the pool for as long as the guard
    /// lives, each statement committed on its own: drop the guard between statements that
    /// need no connection in between, so the pool gets it back.
    ///
    /// # Errors
    ///
    /// [`sqlx::Error::PoolTimedOut`] when no connection came within the pool's acquire
    /// timeout (the layer then answers `503`), the error of `BEGIN`, or
    /// [`sqlx::Error::InvalidArgument`] once the layer has ended the transaction.
    pub async fn conn(&self) -> Result<TxConn<'_, DB>, sqlx::Error> {
        let shared = &self.inner.shared;
        let mut slot = self.inner.slot.lock().await;
        if shared.mode == TxMode::Autocommit {
            return self.borrow(slot).await;
        }
        match slot.state {
            State::Open => {}
            State::Done | State::Expired => {
                return Err(sqlx::Error::InvalidArgument(
                    "the request's transaction has already ended".into(),
                ));
            }
            State::Idle | State::Beginning => {
                if let Some(mut unknown) = slot.conn.take() {
                    unknown.close_on_drop();
                }
                slot.state = State::Idle;
                let conn = self.acquire().await?;
                slot.state = State::Beginning;
                let conn = slot.conn.insert(conn);
                let read_only = shared.mode == TxMode::ReadOnly;
                if let Err(err) = DB::begin(conn, &shared.config, read_only).await {
                    shared.note_error::<DB>(&err);
                    if let Some(mut conn) = slot.conn.take() {
                        conn.close_on_drop();
                    }
                    slot.state = State::Idle;
                    return Err(err);
                }
                slot.state = State::Open;
                slot.began = Instant::now();
                slot.read_only = read_only;
                shared.stats.begun(read_only);
            }
        }
        Ok(TxConn {
            guard: slot,
            shared,
        })
    }

    /// [`TxMode::Autocommit`]: a pooled connection for one guard's life, no `BEGIN`. The
    /// guard gives it back to the pool when dropped (sqlx pings it first, which also drains
    /// a statement cut short).
    pub(super) async fn borrow<'h>(
        &'h self,
        mut slot: tokio::sync::MutexGuard<'h, Slot<DB>>,
    ) -> Result<TxConn<'h, DB>, sqlx::Error> {
        let shared = &self.inner.shared;
        if matches!(slot.state, State::Done | State::Expired) {
            return Err(sqlx::Error::InvalidArgument(
                "the request's database work has already ended".into(),
            ));
        }
        slot.conn = Some(self.acquire().await?);
        if !shared.autocommit_used.swap(true, Ordering::Relaxed) {
            shared.stats.autocommit();
        }
        Ok(TxConn {
            guard: slot,
            shared,
        })
    }

    /// A connection from the attempt's pool. A timeout is remembered, so the layer answers
    /// `503` for an exhausted pool rather than treating it as the handler's error.
    async fn acquire(&self) -> Result<PoolConnection<DB>, sqlx::Error> {
        self.inner.pool.acquire().await.inspect_err(|err| {
            if matches!(err, sqlx::Error::PoolTimedOut) {
                self.inner
                    .shared
                    .pool_exhausted
                    .store(true, Ordering::Relaxed);
            }
        })
    }

    /// The mode of this request: chosen by the layer from its method and
    /// [`TxConfig::mode_of`].
    pub fn mode(&self) -> TxMode {
        self.inner.shared.mode
    }

    /// Runs `f` once the transaction has committed; see [`AfterCommit`] for the rules.
    pub fn after_commit<F, Fut>(&self, f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.inner.shared.register(boxed_hook(f));
    }

    /// The DB-independent registry of after-commit hooks for this attempt.
    pub fn after_commit_registry(&self) -> AfterCommit {
        AfterCommit::new(self.inner.shared.clone())
    }

    /// The retryable error this attempt has met, if any: the layer will roll back and replay
    /// the request (or answer `503` when it cannot).
    pub fn retry_reason(&self) -> Option<RetryReason> {
        self.inner.shared.retry_reason()
    }

    /// Ends an attempt that does not commit: rolls back, and closes its after-commit hooks
    /// with nothing to run. Every such end of an attempt goes through here (or
    /// [`abandon`](Self::abandon)), so none can leave its hooks open.
    pub(crate) async fn roll_back(&self) {
        self.finish(false).await;
        self.inner.shared.take_hooks(false);
    }

    /// Ends an attempt whose handler was cut short (timeout, panic): a statement may still be
    /// in flight on the connection, so it is closed (the server rolls back) rather than
    /// waited for. Its after-commit hooks are closed with nothing to run.
    pub(crate) async fn abandon(&self) {
        let mut slot = self.inner.slot.lock().await;
        if let Some(mut conn) = slot.conn.take() {
            conn.close_on_drop();
        }
        if slot.state == State::Open {
            self.inner
                .shared
                .stats
                .ended(slot.read_only, false, slot.began.elapsed());
        }
        slot.state = State::Done;
        drop(slot);
        self.inner.shared.take_hooks(false);
    }

    /// Ends a transaction still open at its deadline (a deferred gRPC commit waiting for a
    /// slow client to read the body): the connection is closed, so the server rolls back and
    /// the pool gets its slot back. The later `finish` answers [`Finished::Expired`].
    /// Returns whether it ended one.
    pub(crate) async fn expire(&self) -> bool {
        let mut slot = self.inner.slot.lock().await;
        if !matches!(slot.state, State::Open | State::Beginning) {
            return false;
        }
        if let Some(mut conn) = slot.conn.take() {
            conn.close_on_drop();
        }
        if slot.state == State::Open {
            self.inner
                .shared
                .stats
                .ended(slot.read_only, false, slot.began.elapsed());
        }
        slot.state = State::Expired;
        true
    }

    /// Commits (or rolls back) the transaction, if begun. The connection goes back to the pool
    /// only after a clean end; otherwise it is closed.
    pub(crate) async fn finish(&self, commit: bool) -> Finished {
        let shared = &self.inner.shared;
        let mut slot = self.inner.slot.lock().await;
        if slot.state == State::Expired {
            return Finished::Expired;
        }
        if slot.state != State::Open {
            // Cut short mid-`BEGIN`: close, never pool, a connection in an unknown state.
            if let Some(mut unknown) = slot.conn.take() {
                unknown.close_on_drop();
            }
            slot.state = State::Done;
            return Finished::NotBegun;
        }
        let aborted = DB::ERROR_ABORTS_TRANSACTION
            && shared.aborted_at.load(Ordering::Relaxed) != NOT_ABORTED;
        let commit = commit && !aborted;
        let Some(conn) = slot.conn.as_mut() else {
            slot.state = State::Done;
            return Finished::NotBegun;
        };
        // Bounded: a server that stops answering must not hold the connection (and the
        // request) past the end timeout. A timed-out end is an I/O failure: the connection is
        // closed below, and a timed-out `COMMIT` is ambiguous.
        let end = async {
            if commit {
                DB::TransactionManager::commit(conn).await
            } else {
                DB::TransactionManager::rollback(conn).await
            }
        };
        let result = match tokio::time::timeout(shared.config.end_timeout, end).await {
            Ok(result) => result,
            Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                if commit {
                    "COMMIT timed out"
                } else {
                    "ROLLBACK timed out"
                },
            ))),
        };
        slot.state = State::Done;
        let took = slot.began.elapsed();
        let conn = slot.conn.take();
        match result {
            Ok(()) => drop(conn),
            Err(_) => {
                if let Some(mut conn) = conn {
                    conn.close_on_drop();
                }
            }
        }
        shared
            .stats
            .ended(slot.read_only, commit && result.is_ok(), took);
        match (commit, result) {
            (true, Ok(())) => Finished::Committed,
            (false, _) if aborted => Finished::Aborted,
            (false, _) => Finished::RolledBack,
            (true, Err(err)) => {
                // A lost connection here is the ambiguous case, never a retry: the layer
                // classifies a failed `COMMIT` itself.
                if !is_connection_loss(&err) {
                    shared.note_error::<DB>(&err);
                }
                Finished::CommitFailed(err)
            }
        }
    }
}

pub(crate) fn commit_error_is_ambiguous(err: &sqlx::Error) -> bool {
    is_connection_loss(err)
}
