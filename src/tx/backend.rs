//! What the layer needs to know about each database: how to begin, which errors are
//! retryable. Decided by SQLSTATE / vendor code, never by message text.

use futures_util::future::BoxFuture;
use sqlx::error::DatabaseError;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
use sqlx::{AssertSqlSafe, SqlSafeStr};
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
use sqlx_core::transaction::TransactionManager;

use super::config::TxConfig;
#[cfg(any(feature = "mysql", feature = "sqlite"))]
use super::error::TxConfigErrorKind;
use super::error::{RetryReason, TxConfigError};

mod sealed {
    pub trait Sealed {}
}

/// A database the transaction layer supports: [`sqlx::Postgres`], [`sqlx::MySql`] or
/// [`sqlx::Sqlite`], each behind its crate feature. Sealed.
pub trait TxDatabase: sqlx::Database + sealed::Sealed {
    /// Whether any failed statement aborts the whole transaction (PostgreSQL), so that a
    /// later `COMMIT` silently rolls back.
    #[doc(hidden)]
    const ERROR_ABORTS_TRANSACTION: bool;

    #[doc(hidden)]
    fn validate(config: &TxConfig) -> Result<(), TxConfigError>;

    /// Begins the request's transaction, read-only when `read_only`, with the isolation and
    /// the transaction-scoped timeouts of `config`.
    #[doc(hidden)]
    fn begin<'c>(
        conn: &'c mut Self::Connection,
        config: &'c TxConfig,
        read_only: bool,
    ) -> BoxFuture<'c, Result<(), sqlx::Error>>;

    #[doc(hidden)]
    fn run<'c>(
        conn: &'c mut Self::Connection,
        sql: String,
    ) -> BoxFuture<'c, Result<(), sqlx::Error>>;

    #[doc(hidden)]
    fn retry_reason(err: &dyn DatabaseError, config: &TxConfig) -> Option<RetryReason>;
}

/// Begins the outer transaction through sqlx's transaction manager, so sqlx tracks the depth
/// (savepoints, queued rollbacks) as with its own `begin`.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
fn begin_with<DB: sqlx::Database>(
    conn: &mut DB::Connection,
    sql: String,
) -> BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(DB::TransactionManager::begin(
        conn,
        Some(AssertSqlSafe(sql).into_sql_str()),
    ))
}

/// Runs SQL the layer wrote itself (`SET ...`) as one unprepared statement.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
fn run_raw<DB: sqlx::Database>(
    conn: &mut DB::Connection,
    sql: String,
) -> BoxFuture<'_, Result<(), sqlx::Error>>
where
    for<'e> &'e mut DB::Connection: sqlx::Executor<'e, Database = DB>,
{
    Box::pin(async move {
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn).await?;
        Ok(())
    })
}

/// The retry reason of any `sqlx::Error`, if retryable.
pub(crate) fn classify<DB: TxDatabase>(
    err: &sqlx::Error,
    config: &TxConfig,
) -> Option<RetryReason> {
    match err {
        sqlx::Error::Database(db) => DB::retry_reason(db.as_ref(), config),
        _ => None,
    }
}

/// Whether an error means the connection itself failed, so the outcome of a statement in
/// flight (a `COMMIT`) is unknown.
pub(crate) fn is_connection_loss(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::PoolClosed => true,
        // SQLSTATE class 08 (connection exception) and 57P01-57P03 (the server is shutting
        // down or terminated the session): the session is gone.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

/// `transaction_pooling` describes PostgreSQL behind a pooler: another database refuses it.
#[cfg(any(feature = "mysql", feature = "sqlite"))]
fn refuse_transaction_pooling(config: &TxConfig) -> Result<(), TxConfigError> {
    if config.transaction_pooling {
        return Err(TxConfigError::new(
            TxConfigErrorKind::Unsupported,
            "transaction_pooling is for PostgreSQL behind a pooler such as PgBouncer",
        ));
    }
    Ok(())
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
fn millis(d: std::time::Duration) -> u128 {
    d.as_millis().max(1)
}

#[cfg(feature = "postgres")]
impl sealed::Sealed for sqlx::Postgres {}

#[cfg(feature = "postgres")]
impl TxDatabase for sqlx::Postgres {
    const ERROR_ABORTS_TRANSACTION: bool = true;

    fn validate(_config: &TxConfig) -> Result<(), TxConfigError> {
        Ok(())
    }

    fn begin<'c>(
        conn: &'c mut sqlx::PgConnection,
        config: &'c TxConfig,
        read_only: bool,
    ) -> BoxFuture<'c, Result<(), sqlx::Error>> {
        use std::fmt::Write;
        let mut sql = String::from("BEGIN");
        if let Some(level) = config.isolation {
            let _ = write!(sql, " ISOLATION LEVEL {level}");
        }
        if read_only {
            sql.push_str(" READ ONLY");
        }
        // `SET LOCAL`, never `SET`: the settings end with the transaction, so they cannot
        // outlive it on a pooled connection or on a server connection a pooler hands to
        // another client.
        if let Some(t) = config.statement_timeout {
            let _ = write!(sql, "; SET LOCAL statement_timeout = {}", millis(t));
        }
        if let Some(t) = config.lock_timeout {
            let _ = write!(sql, "; SET LOCAL lock_timeout = {}", millis(t));
        }
        begin_with::<Self>(conn, sql)
    }

    fn run<'c>(
        conn: &'c mut sqlx::PgConnection,
        sql: String,
    ) -> BoxFuture<'c, Result<(), sqlx::Error>> {
        run_raw::<Self>(conn, sql)
    }

    fn retry_reason(err: &dyn DatabaseError, _config: &TxConfig) -> Option<RetryReason> {
        match err.code().as_deref() {
            Some("40001") => Some(RetryReason::SerializationFailure),
            Some("40P01") => Some(RetryReason::Deadlock),
            _ => None,
        }
    }
}

#[cfg(feature = "mysql")]
impl sealed::Sealed for sqlx::MySql {}

#[cfg(feature = "mysql")]
impl TxDatabase for sqlx::MySql {
    const ERROR_ABORTS_TRANSACTION: bool = false;

    fn validate(config: &TxConfig) -> Result<(), TxConfigError> {
        if config.statement_timeout.is_some() {
            return Err(TxConfigError::new(
                TxConfigErrorKind::Unsupported,
                "statement_timeout is only supported on PostgreSQL",
            ));
        }
        refuse_transaction_pooling(config)?;
        Ok(())
    }

    fn begin<'c>(
        conn: &'c mut sqlx::MySqlConnection,
        config: &'c TxConfig,
        read_only: bool,
    ) -> BoxFuture<'c, Result<(), sqlx::Error>> {
        Box::pin(async move {
            if let Some(t) = config.lock_timeout {
                // Session scoped on MySQL/MariaDB: set before every transaction of this layer.
                let secs = millis(t).div_ceil(1000);
                Self::run(
                    conn,
                    format!("SET SESSION innodb_lock_wait_timeout = {secs}"),
                )
                .await?;
            }
            if let Some(level) = config.isolation {
                // Applies to the next transaction only.
                Self::run(conn, format!("SET TRANSACTION ISOLATION LEVEL {level}")).await?;
            }
            let begin = if read_only {
                "START TRANSACTION READ ONLY"
            } else {
                "START TRANSACTION"
            };
            begin_with::<Self>(conn, begin.to_owned()).await
        })
    }

    fn run<'c>(
        conn: &'c mut sqlx::MySqlConnection,
        sql: String,
    ) -> BoxFuture<'c, Result<(), sqlx::Error>> {
        run_raw::<Self>(conn, sql)
    }

    fn retry_reason(err: &dyn DatabaseError, config: &TxConfig) -> Option<RetryReason> {
        let err = err.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()?;
        match err.number() {
            1213 => Some(RetryReason::Deadlock),
            1205 if config.mysql_retry_lock_wait_timeout => Some(RetryReason::LockWaitTimeout),
            _ => None,
        }
    }
}

#[cfg(feature = "sqlite")]
impl sealed::Sealed for sqlx::Sqlite {}

#[cfg(feature = "sqlite")]
impl TxDatabase for sqlx::Sqlite {
    const ERROR_ABORTS_TRANSACTION: bool = false;

    fn validate(config: &TxConfig) -> Result<(), TxConfigError> {
        use super::config::IsolationLevel;
        if !matches!(config.isolation, None | Some(IsolationLevel::Serializable)) {
            return Err(TxConfigError::new(
                TxConfigErrorKind::Unsupported,
                "SQLite transactions are always SERIALIZABLE",
            ));
        }
        if config
            .explicit_modes()
            .any(|m| m == super::config::TxMode::ReadOnly)
        {
            return Err(TxConfigError::new(
                TxConfigErrorKind::Unsupported,
                "TxMode::ReadOnly (read_only) is not supported on SQLite (open the pool read-only instead)",
            ));
        }
        refuse_transaction_pooling(config)?;
        if config.statement_timeout.is_some() || config.lock_timeout.is_some() {
            return Err(TxConfigError::new(
                TxConfigErrorKind::Unsupported,
                "statement and lock timeouts are not supported on SQLite (use busy_timeout on the connect options)",
            ));
        }
        Ok(())
    }

    fn begin<'c>(
        conn: &'c mut sqlx::SqliteConnection,
        config: &'c TxConfig,
        _read_only: bool,
    ) -> BoxFuture<'c, Result<(), sqlx::Error>> {
        let sql = match config.sqlite_begin {
            super::config::SqliteBegin::Deferred => "BEGIN",
            super::config::SqliteBegin::Immediate => "BEGIN IMMEDIATE",
        };
        begin_with::<Self>(conn, sql.to_owned())
    }

    fn run<'c>(
        conn: &'c mut sqlx::SqliteConnection,
        sql: String,
    ) -> BoxFuture<'c, Result<(), sqlx::Error>> {
        run_raw::<Self>(conn, sql)
    }

    fn retry_reason(err: &dyn DatabaseError, _config: &TxConfig) -> Option<RetryReason> {
        let code: i32 = err.code()?.parse().ok()?;
        // Primary result codes: SQLITE_BUSY = 5 (extended: BUSY_SNAPSHOT 517, BUSY_RECOVERY
        // 261, BUSY_TIMEOUT 773), SQLITE_LOCKED = 6.
        match code & 0xff {
            5 | 6 => Some(RetryReason::Busy),
            _ => None,
        }
    }
}
