//! The guards a handler runs its queries on: [`TxConn`], the request's connection, and
//! [`Savepoint`], a nested transaction on it.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::backend::TxDatabase;
use super::config::TxMode;

use super::handle::{Shared, Slot, boxed_hook};

/// Exclusive use of the request's transaction connection (in
/// [`TxMode::Autocommit`], of a pooled connection, given back when the guard drops); run
/// queries with `&mut conn` as the executor. Statements are timed and their errors watched for
/// retryable codes.
pub struct TxConn<'h, DB: TxDatabase> {
    pub(super) guard: tokio::sync::MutexGuard<'h, Slot<DB>>,
    pub(super) shared: &'h Arc<Shared>,
}

impl<DB: TxDatabase> Drop for TxConn<'_, DB> {
    fn drop(&mut self) {
        // Without a transaction nothing ties the connection to the request: back to the pool.
        if self.shared.mode == TxMode::Autocommit {
            drop(self.guard.conn.take());
        }
    }
}

impl<DB: TxDatabase> fmt::Debug for TxConn<'_, DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxConn").finish_non_exhaustive()
    }
}

impl<'h, DB: TxDatabase> TxConn<'h, DB> {
    pub(super) fn parts(&mut self) -> (&mut DB::Connection, &Arc<Shared>) {
        let conn = self
            .guard
            .conn
            .as_mut()
            .expect("a TxConn exists only while its transaction is open");
        (&mut **conn, self.shared)
    }

    /// Opens a nested transaction (`SAVEPOINT`). Roll it back on its own with
    /// [`Savepoint::rollback`] (or by dropping it) and the outer transaction's work stays.
    /// In [`TxMode::Autocommit`] there is no outer transaction: it is a transaction of its own
    /// (`BEGIN`) on the borrowed connection, committed by [`Savepoint::release`].
    ///
    /// # Errors
    ///
    /// The error of the `SAVEPOINT` statement.
    pub async fn savepoint(&mut self) -> Result<Savepoint<'_, DB>, sqlx::Error> {
        let (conn, shared) = self.parts();
        Savepoint::begin(conn, shared).await
    }

    /// Same as [`TxHandle::after_commit`](super::TxHandle::after_commit).
    pub fn after_commit<F, Fut>(&self, f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.shared.register(boxed_hook(f));
    }
}

/// A nested transaction (`SAVEPOINT`) inside the request's transaction; run queries with
/// `&mut savepoint` as the executor.
///
/// Dropping it without [`release`](Savepoint::release) rolls it back, with the
/// [`after_commit`](Savepoint::after_commit) hooks registered inside it.
pub struct Savepoint<'a, DB: TxDatabase> {
    pub(super) tx: Option<sqlx::Transaction<'a, DB>>,
    pub(super) shared: &'a Arc<Shared>,
    pub(super) depth: usize,
}

impl<DB: TxDatabase> fmt::Debug for Savepoint<'_, DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Savepoint")
            .field("depth", &self.depth)
            .finish_non_exhaustive()
    }
}

impl<'a, DB: TxDatabase> Savepoint<'a, DB> {
    pub(super) async fn begin(
        conn: &'a mut DB::Connection,
        shared: &'a Arc<Shared>,
    ) -> Result<Self, sqlx::Error> {
        let tx = sqlx::Connection::begin(conn).await?;
        let depth = shared.depth.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Self {
            tx: Some(tx),
            shared,
            depth,
        })
    }

    pub(super) fn parts(&mut self) -> (&mut DB::Connection, &Arc<Shared>) {
        let tx = self
            .tx
            .as_mut()
            .expect("a Savepoint is open until consumed");
        (&mut **tx, self.shared)
    }

    /// A savepoint inside this one.
    ///
    /// # Errors
    ///
    /// The error of the `SAVEPOINT` statement.
    pub async fn savepoint(&mut self) -> Result<Savepoint<'_, DB>, sqlx::Error> {
        let (conn, shared) = self.parts();
        Savepoint::begin(conn, shared).await
    }

    /// Keeps the savepoint's work in the outer transaction (`RELEASE SAVEPOINT`).
    ///
    /// # Errors
    ///
    /// The error of `RELEASE`; the savepoint is then rolled back.
    pub async fn release(mut self) -> Result<(), sqlx::Error> {
        let Some(tx) = self.tx.take() else {
            return Ok(());
        };
        let result = tx.commit().await;
        self.shared.savepoint_ended(self.depth, result.is_ok());
        result
    }

    /// Undoes the savepoint's work (`ROLLBACK TO SAVEPOINT`) and drops its hooks.
    ///
    /// # Errors
    ///
    /// The error of the rollback statement.
    pub async fn rollback(mut self) -> Result<(), sqlx::Error> {
        let Some(tx) = self.tx.take() else {
            return Ok(());
        };
        let result = tx.rollback().await;
        self.shared.savepoint_ended(self.depth, false);
        result
    }

    /// Runs `f` after the outer transaction commits, unless this savepoint is rolled back.
    pub fn after_commit<F, Fut>(&self, f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.shared.register(boxed_hook(f));
    }
}

impl<DB: TxDatabase> Drop for Savepoint<'_, DB> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            // sqlx queues `ROLLBACK TO SAVEPOINT` for the connection's next use.
            drop(tx);
            self.shared.savepoint_ended(self.depth, false);
        }
    }
}
