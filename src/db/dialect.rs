//! What the helpers need to know about each database, and the executors they run on.

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::{Database, IntoArguments, QueryBuilder};

mod sealed {
    pub trait Sealed {}
    pub trait Target {}
}

/// A sort key or filter value: the types keyset cursors carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// An integer (`BIGINT`, `INTEGER`).
    Int(i64),
    /// A string (`TEXT`, `VARCHAR`).
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Self::Int(v.into())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Self::Text(v.to_owned())
    }
}

/// The SQL type of a sort key column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyKind {
    /// Decoded as `i64`; a 32-bit column is widened.
    Int,
    /// Decoded as `String`.
    Text,
}

impl KeyKind {
    pub(crate) fn matches(self, value: &Value) -> bool {
        matches!(
            (self, value),
            (KeyKind::Int, Value::Int(_)) | (KeyKind::Text, Value::Text(_))
        )
    }
}

/// A database the helpers support: [`sqlx::Postgres`], [`sqlx::MySql`] (MySQL and MariaDB)
/// or [`sqlx::Sqlite`], each behind its crate feature. Sealed.
pub trait Dialect: Database<Arguments: IntoArguments<Self>> + sealed::Sealed {
    /// The most bind parameters one statement may carry: 65,535 on PostgreSQL and
    /// MySQL/MariaDB, 32,766 on SQLite 3.32 and later (the bundled SQLite is newer).
    const MAX_BIND_PARAMS: usize;

    /// The identifier quote character.
    #[doc(hidden)]
    const QUOTE: char;

    /// Whether row-value comparisons `(a, b) > (?, ?)` are used for keyset seeks (they use a
    /// composite index on PostgreSQL and SQLite; MySQL/MariaDB get the expanded form).
    #[doc(hidden)]
    const ROW_VALUES: bool;

    /// Whether upserts are `ON DUPLICATE KEY UPDATE` (MySQL/MariaDB) rather than
    /// `ON CONFLICT (..) DO UPDATE`, and bulk updates join a `UNION ALL` derived table rather
    /// than a `VALUES` common table expression.
    #[doc(hidden)]
    const MYSQL_SYNTAX: bool;

    /// Whether PostgreSQL full-text search (`to_tsvector`, `plainto_tsquery`) is available.
    #[doc(hidden)]
    const FULL_TEXT: bool;

    /// The case-insensitive pattern operator.
    #[doc(hidden)]
    const ILIKE: &'static str;

    #[doc(hidden)]
    fn push_value(qb: &mut QueryBuilder<Self>, value: &Value);

    #[doc(hidden)]
    fn read_key(row: &Self::Row, column: &str, kind: KeyKind) -> Result<Value, sqlx::Error>;

    #[doc(hidden)]
    fn rows_affected(result: &Self::QueryResult) -> u64;

    #[doc(hidden)]
    fn read_opt_i64(row: &Self::Row, column: &str) -> Result<Option<i64>, sqlx::Error>;

    #[doc(hidden)]
    fn set_statement_cache(
        options: <Self::Connection as sqlx::Connection>::Options,
        capacity: usize,
    ) -> <Self::Connection as sqlx::Connection>::Options;

    #[doc(hidden)]
    fn read_i64(row: &Self::Row, column: &str) -> Result<i64, sqlx::Error>;

    /// `expr` cast to a 64-bit integer (`SUM` returns `NUMERIC`/`DECIMAL` on PostgreSQL and
    /// MySQL).
    #[doc(hidden)]
    fn cast_i64(expr: &str) -> String;
}

macro_rules! common {
    ($db:ty) => {
        fn push_value(qb: &mut QueryBuilder<Self>, value: &Value) {
            match value {
                Value::Int(v) => qb.push_bind(*v),
                Value::Text(v) => qb.push_bind(v.clone()),
            };
        }

        fn read_key(
            row: &<$db as Database>::Row,
            column: &str,
            kind: KeyKind,
        ) -> Result<Value, sqlx::Error> {
            use sqlx::Row;
            Ok(match kind {
                KeyKind::Int => match row.try_get::<i64, _>(column) {
                    Ok(v) => Value::Int(v),
                    Err(sqlx::Error::ColumnDecode { .. }) => {
                        Value::Int(row.try_get::<i32, _>(column)?.into())
                    }
                    Err(e) => return Err(e),
                },
                KeyKind::Text => Value::Text(row.try_get::<String, _>(column)?),
            })
        }

        fn rows_affected(result: &<$db as Database>::QueryResult) -> u64 {
            result.rows_affected()
        }

        fn read_opt_i64(
            row: &<$db as Database>::Row,
            column: &str,
        ) -> Result<Option<i64>, sqlx::Error> {
            use sqlx::Row;
            row.try_get::<Option<i64>, _>(column)
        }

        fn set_statement_cache(
            options: <<$db as Database>::Connection as sqlx::Connection>::Options,
            capacity: usize,
        ) -> <<$db as Database>::Connection as sqlx::Connection>::Options {
            options.statement_cache_capacity(capacity)
        }

        fn read_i64(row: &<$db as Database>::Row, column: &str) -> Result<i64, sqlx::Error> {
            use sqlx::Row;
            row.try_get::<i64, _>(column)
        }
    };
}

#[cfg(feature = "postgres")]
impl sealed::Sealed for sqlx::Postgres {}

#[cfg(feature = "postgres")]
impl Dialect for sqlx::Postgres {
    const MAX_BIND_PARAMS: usize = 65_535;
    const QUOTE: char = '"';
    const ROW_VALUES: bool = true;
    const MYSQL_SYNTAX: bool = false;
    const FULL_TEXT: bool = true;
    const ILIKE: &'static str = "ILIKE";
    common!(sqlx::Postgres);

    fn cast_i64(expr: &str) -> String {
        format!("CAST({expr} AS BIGINT)")
    }
}

#[cfg(feature = "mysql")]
impl sealed::Sealed for sqlx::MySql {}

#[cfg(feature = "mysql")]
impl Dialect for sqlx::MySql {
    const MAX_BIND_PARAMS: usize = 65_535;
    const QUOTE: char = '`';
    const ROW_VALUES: bool = false;
    const MYSQL_SYNTAX: bool = true;
    const FULL_TEXT: bool = false;
    const ILIKE: &'static str = "LIKE";
    common!(sqlx::MySql);

    fn cast_i64(expr: &str) -> String {
        format!("CAST({expr} AS SIGNED)")
    }
}

#[cfg(feature = "sqlite")]
impl sealed::Sealed for sqlx::Sqlite {}

#[cfg(feature = "sqlite")]
impl Dialect for sqlx::Sqlite {
    const MAX_BIND_PARAMS: usize = 32_766;
    const QUOTE: char = '"';
    const ROW_VALUES: bool = true;
    const MYSQL_SYNTAX: bool = false;
    const FULL_TEXT: bool = false;
    const ILIKE: &'static str = "LIKE";
    common!(sqlx::Sqlite);

    fn cast_i64(expr: &str) -> String {
        format!("CAST({expr} AS INTEGER)")
    }
}

/// A query the helpers built, ready to run.
pub(crate) type Built<'q, DB> = sqlx::query::Query<'q, DB, <DB as Database>::Arguments>;

/// Something the helpers can run statements on, one after another: a pool (`&pool`), a
/// connection (`&mut conn`), an sqlx transaction (`&mut tx`), or the request's transaction
/// from the transaction layer (`&mut tx_conn` from
/// [`TxHandle::conn`](crate::tx::TxHandle::conn), or a [`Savepoint`](crate::tx::Savepoint)).
/// Sealed: implemented for those types on each enabled database.
///
/// Helpers that run several statements (bulk chunks, an offset page past the end) are
/// all-or-nothing only on a transaction; on a pool each statement commits on its own.
///
/// Each statement's future is boxed (as sqlx's own executors do), which keeps the helpers'
/// futures `Send` in handlers and spawned tasks.
pub trait QueryTarget: Send + sealed::Target {
    /// The database.
    type Database: Dialect;

    #[doc(hidden)]
    fn fetch_all<'a, 'q: 'a>(
        &'a mut self,
        query: Built<'q, Self::Database>,
    ) -> BoxFuture<'a, Result<Vec<<Self::Database as Database>::Row>, sqlx::Error>>;

    #[doc(hidden)]
    fn fetch_one<'a, 'q: 'a>(
        &'a mut self,
        query: Built<'q, Self::Database>,
    ) -> BoxFuture<'a, Result<<Self::Database as Database>::Row, sqlx::Error>>;

    #[doc(hidden)]
    fn execute<'a, 'q: 'a>(
        &'a mut self,
        query: Built<'q, Self::Database>,
    ) -> BoxFuture<'a, Result<<Self::Database as Database>::QueryResult, sqlx::Error>>;
}

macro_rules! target_body {
    ($db:ty, |$this:ident| $exec:expr) => {
        type Database = $db;

        fn fetch_all<'a, 'q: 'a>(
            &'a mut self,
            query: Built<'q, $db>,
        ) -> BoxFuture<'a, Result<Vec<<$db as Database>::Row>, sqlx::Error>> {
            let $this = self;
            Box::pin(query.fetch_all($exec))
        }

        fn fetch_one<'a, 'q: 'a>(
            &'a mut self,
            query: Built<'q, $db>,
        ) -> BoxFuture<'a, Result<<$db as Database>::Row, sqlx::Error>> {
            let $this = self;
            Box::pin(query.fetch_one($exec))
        }

        fn execute<'a, 'q: 'a>(
            &'a mut self,
            query: Built<'q, $db>,
        ) -> BoxFuture<'a, Result<<$db as Database>::QueryResult, sqlx::Error>> {
            let $this = self;
            Box::pin(query.execute($exec))
        }
    };
}

macro_rules! targets {
    ($feature:literal, $db:ty, $conn:ty) => {
        #[cfg(feature = $feature)]
        impl sealed::Target for &sqlx::Pool<$db> {}
        #[cfg(feature = $feature)]
        impl QueryTarget for &sqlx::Pool<$db> {
            target_body!($db, |this| *this);
        }

        #[cfg(feature = $feature)]
        impl sealed::Target for &mut $conn {}
        #[cfg(feature = $feature)]
        impl QueryTarget for &mut $conn {
            target_body!($db, |this| &mut **this);
        }

        #[cfg(feature = $feature)]
        impl sealed::Target for &mut sqlx::pool::PoolConnection<$db> {}
        #[cfg(feature = $feature)]
        impl QueryTarget for &mut sqlx::pool::PoolConnection<$db> {
            target_body!($db, |this| &mut ***this);
        }

        #[cfg(feature = $feature)]
        impl sealed::Target for &mut sqlx::Transaction<'_, $db> {}
        #[cfg(feature = $feature)]
        impl QueryTarget for &mut sqlx::Transaction<'_, $db> {
            target_body!($db, |this| &mut ***this);
        }

        #[cfg(feature = $feature)]
        impl sealed::Target for &mut crate::tx::TxConn<'_, $db> {}
        #[cfg(feature = $feature)]
        impl QueryTarget for &mut crate::tx::TxConn<'_, $db> {
            target_body!($db, |this| &mut **this);
        }

        #[cfg(feature = $feature)]
        impl sealed::Target for &mut crate::tx::Savepoint<'_, $db> {}
        #[cfg(feature = $feature)]
        impl QueryTarget for &mut crate::tx::Savepoint<'_, $db> {
            target_body!($db, |this| &mut **this);
        }
    };
}

targets!("postgres", sqlx::Postgres, sqlx::PgConnection);
targets!("mysql", sqlx::MySql, sqlx::MySqlConnection);
targets!("sqlite", sqlx::Sqlite, sqlx::SqliteConnection);
