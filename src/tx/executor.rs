//! sqlx's `Executor` for the guards, through which every statement is timed and its errors
//! watched for retryable codes.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use futures_util::Stream;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use sqlx::{Database, Execute, SqlStr};

use super::backend::TxDatabase;

use super::conn::{Savepoint, TxConn};
use super::handle::Shared;

/// Captures the SQL text of a query as sqlx reads it.
pub(super) struct Recorded<E> {
    pub(super) inner: E,
    pub(super) sql: Arc<OnceLock<SqlStr>>,
    /// `false` under [`TxConfig::transaction_pooling`]: prepare unnamed, cache nothing.
    pub(super) persistent: bool,
}

impl<E> Recorded<E> {
    /// Wraps a query, and returns the cell its SQL text will be recorded in.
    pub(super) fn new(inner: E, shared: &Shared) -> (Self, Arc<OnceLock<SqlStr>>) {
        let sql = Arc::new(OnceLock::new());
        let recorded = Recorded {
            inner,
            sql: sql.clone(),
            persistent: !shared.config.transaction_pooling,
        };
        (recorded, sql)
    }
}

impl<'q, DB: Database, E: Execute<'q, DB>> Execute<'q, DB> for Recorded<E> {
    fn sql(self) -> SqlStr {
        let sql = self.inner.sql();
        let _ = self.sql.set(sql.clone());
        sql
    }

    fn statement(&self) -> Option<&DB::Statement> {
        self.inner.statement()
    }

    fn take_arguments(
        &mut self,
    ) -> Result<Option<<DB as Database>::Arguments>, sqlx::error::BoxDynError> {
        self.inner.take_arguments()
    }

    fn persistent(&self) -> bool {
        self.persistent && self.inner.persistent()
    }
}

/// A statement's stream, timed until it ends or is dropped.
pub(super) struct Observed<'e, T, DB: TxDatabase> {
    pub(super) inner: BoxStream<'e, Result<T, sqlx::Error>>,
    pub(super) shared: Arc<Shared>,
    pub(super) sql: Arc<OnceLock<SqlStr>>,
    pub(super) start: Instant,
    pub(super) done: bool,
    pub(super) db: std::marker::PhantomData<fn() -> DB>,
}

impl<T, DB: TxDatabase> Stream for Observed<'_, T, DB> {
    type Item = Result<T, sqlx::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = &mut *self;
        let item = std::task::ready!(this.inner.as_mut().poll_next(cx));
        match &item {
            Some(Err(err)) if !this.done => {
                this.done = true;
                this.shared
                    .finish_statement::<DB>(&this.sql, this.start, Some(err));
            }
            None if !this.done => {
                this.done = true;
                this.shared
                    .finish_statement::<DB>(&this.sql, this.start, None);
            }
            _ => {}
        }
        std::task::Poll::Ready(item)
    }
}

impl<T, DB: TxDatabase> Drop for Observed<'_, T, DB> {
    fn drop(&mut self) {
        if !self.done {
            // Dropped early (fetch_one takes the first row): still one execution.
            self.shared
                .finish_statement::<DB>(&self.sql, self.start, None);
        }
    }
}

pub(super) fn observe_stream<'e, DB, T>(
    shared: &Arc<Shared>,
    sql: Arc<OnceLock<SqlStr>>,
    stream: BoxStream<'e, Result<T, sqlx::Error>>,
) -> BoxStream<'e, Result<T, sqlx::Error>>
where
    DB: TxDatabase,
    T: Send + 'e,
{
    Box::pin(Observed::<T, DB> {
        inner: stream,
        shared: shared.clone(),
        sql,
        start: Instant::now(),
        done: false,
        db: std::marker::PhantomData,
    })
}

pub(super) fn observe_future<'e, DB, T>(
    shared: &Arc<Shared>,
    sql: Arc<OnceLock<SqlStr>>,
    fut: BoxFuture<'e, Result<T, sqlx::Error>>,
) -> BoxFuture<'e, Result<T, sqlx::Error>>
where
    DB: TxDatabase,
    T: Send + 'e,
{
    let shared = shared.clone();
    let start = Instant::now();
    Box::pin(async move {
        let result = fut.await;
        shared.finish_statement::<DB>(&sql, start, result.as_ref().err());
        result
    })
}

macro_rules! impl_executor {
    ($feature:literal, $db:ty, $wrapper:ident) => {
        #[cfg(feature = $feature)]
        impl<'c, 'w> sqlx::Executor<'c> for &'c mut $wrapper<'w, $db> {
            type Database = $db;

            fn fetch_many<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> BoxStream<
                'e,
                Result<
                    sqlx::Either<<$db as Database>::QueryResult, <$db as Database>::Row>,
                    sqlx::Error,
                >,
            >
            where
                'c: 'e,
                E: 'q + Execute<'q, $db>,
            {
                let (conn, shared) = self.parts();
                let (query, sql) = Recorded::new(query, shared);
                observe_stream::<$db, _>(shared, sql, conn.fetch_many(query))
            }

            fn fetch_optional<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> BoxFuture<'e, Result<Option<<$db as Database>::Row>, sqlx::Error>>
            where
                'c: 'e,
                E: 'q + Execute<'q, $db>,
            {
                let (conn, shared) = self.parts();
                let (query, sql) = Recorded::new(query, shared);
                observe_future::<$db, _>(shared, sql, conn.fetch_optional(query))
            }

            fn prepare_with<'e>(
                self,
                sql: SqlStr,
                parameters: &'e [<$db as Database>::TypeInfo],
            ) -> BoxFuture<'e, Result<<$db as Database>::Statement, sqlx::Error>>
            where
                'c: 'e,
            {
                let (conn, _) = self.parts();
                conn.prepare_with(sql, parameters)
            }

            fn describe<'e>(
                self,
                sql: SqlStr,
            ) -> BoxFuture<'e, Result<sqlx::Describe<$db>, sqlx::Error>>
            where
                'c: 'e,
            {
                let (conn, _) = self.parts();
                conn.describe(sql)
            }
        }
    };
}

impl_executor!("postgres", sqlx::Postgres, TxConn);
impl_executor!("postgres", sqlx::Postgres, Savepoint);
impl_executor!("mysql", sqlx::MySql, TxConn);
impl_executor!("mysql", sqlx::MySql, Savepoint);
impl_executor!("sqlite", sqlx::Sqlite, TxConn);
impl_executor!("sqlite", sqlx::Sqlite, Savepoint);
