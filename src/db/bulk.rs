//! Insert, upsert, update and delete many rows in chunks under the bind-parameter limit.

use sqlx::query_builder::Separated;
use sqlx::{Encode, QueryBuilder, Type};

use super::dialect::{Dialect, QueryTarget};
use super::error::DbError;
use super::ident::{Ident, idents};

const T_ALIAS: &str = "strata_t";
const V_ALIAS: &str = "strata_v";

/// What a bulk call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BulkResult {
    /// Rows affected, summed over the statements as each database counts them (MySQL and
    /// MariaDB count an upsert that updated a row as 2).
    pub affected: u64,
    /// Statements run: one per chunk.
    pub statements: usize,
}

/// Bulk statements over one table and a list of columns, cut into chunks so that no
/// statement carries more bind parameters than the database accepts
/// ([`Dialect::MAX_BIND_PARAMS`]: 65,535 on PostgreSQL and MySQL/MariaDB, 32,766 on
/// SQLite), or fewer if [`Bulk::max_params`] says so.
///
/// Values are bound by a closure given each row and a [`Separated`] list (as in
/// [`QueryBuilder::push_values`]), pushing one value per column in order.
///
/// **All-or-nothing inside a transaction**: pass an sqlx transaction or the request's
/// [`TxConn`](crate::tx::TxConn), and a failing chunk fails the call and leaves the
/// transaction to roll back. On a bare pool each chunk commits on its own.
///
/// On PostgreSQL, [`PgUnnest`](super::PgUnnest) inserts with one array parameter per
/// column instead, with no parameter limit and less parsing.
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), tower_strata::db::DbError> {
/// use tower_strata::db::Bulk;
///
/// let rows: Vec<(i64, String)> = (0..100_000).map(|i| (i, format!("item {i}"))).collect();
/// let bulk = Bulk::new("items", &["id", "name"])?;
/// let mut tx = pool.begin().await?;
/// let done = bulk
///     .insert(&mut tx, &rows, |mut b, (id, name)| {
///         b.push_bind(*id).push_bind(name.clone());
///     })
///     .await?;
/// tx.commit().await?;
/// assert_eq!(done.affected, 100_000);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Bulk {
    table: Ident,
    columns: Vec<Ident>,
    max_params: Option<usize>,
}

impl Bulk {
    /// Bulk statements over `columns` of `table`. For [`Bulk::update`] and
    /// [`Bulk::delete`] the first column is the key.
    ///
    /// # Errors
    ///
    /// A bad identifier, or no columns.
    pub fn new(table: &str, columns: &[&str]) -> Result<Self, DbError> {
        if columns.is_empty() {
            return Err(DbError::config("bulk statements need at least one column"));
        }
        Ok(Self {
            table: Ident::new(table)?,
            columns: idents(columns)?,
            max_params: None,
        })
    }

    /// Caps the bind parameters per statement below the database's limit (smaller
    /// statements, shorter locks).
    ///
    /// # Errors
    ///
    /// [`DbErrorKind::InvalidConfig`](super::DbErrorKind::InvalidConfig) when smaller than
    /// one row's parameters.
    pub fn max_params(mut self, max: usize) -> Result<Self, DbError> {
        if max < self.columns.len() {
            return Err(DbError::config(format!(
                "max_params {max} is below one row ({} columns)",
                self.columns.len()
            )));
        }
        self.max_params = Some(max);
        Ok(self)
    }

    /// Rows per statement on `DB`: the parameter limit divided by the columns per row.
    pub fn rows_per_statement<DB: Dialect>(&self) -> usize {
        let max = self
            .max_params
            .map_or(DB::MAX_BIND_PARAMS, |m| m.min(DB::MAX_BIND_PARAMS));
        (max / self.columns.len()).max(1)
    }

    fn column_list<DB: Dialect>(&self, qb: &mut QueryBuilder<DB>) {
        qb.push("(");
        let mut list = qb.separated(", ");
        for c in &self.columns {
            list.push(c.quoted::<DB>());
        }
        qb.push(")");
    }

    /// `INSERT INTO table (columns) VALUES (..), ..` for `rows`: an insert, and the head of an
    /// upsert.
    fn push_insert<DB: Dialect, R>(
        &self,
        qb: &mut QueryBuilder<DB>,
        rows: &[R],
        bind: impl FnMut(Separated<'_, DB, &'static str>, &R),
    ) {
        qb.push("INSERT INTO ")
            .push(self.table.quoted::<DB>())
            .push(" ");
        self.column_list(qb);
        qb.push(" ");
        qb.push_values(rows, bind);
    }

    async fn chunked<Q, R, B>(
        &self,
        mut target: Q,
        rows: &[R],
        mut build: B,
    ) -> Result<BulkResult, DbError>
    where
        Q: QueryTarget,
        B: FnMut(&mut QueryBuilder<Q::Database>, &[R]),
    {
        let mut done = BulkResult::default();
        for chunk in rows.chunks(self.rows_per_statement::<Q::Database>()) {
            let mut qb = QueryBuilder::<Q::Database>::new("");
            build(&mut qb, chunk);
            let result = target.execute(qb.build()).await?;
            done.affected += <Q::Database as Dialect>::rows_affected(&result);
            done.statements += 1;
        }
        Ok(done)
    }

    /// `INSERT INTO table (columns) VALUES ...`, chunked.
    ///
    /// # Errors
    ///
    /// The first failing chunk's database error (earlier chunks stay unless inside a
    /// transaction that then rolls back).
    pub async fn insert<Q, R, F>(
        &self,
        target: Q,
        rows: &[R],
        mut bind: F,
    ) -> Result<BulkResult, DbError>
    where
        Q: QueryTarget,
        R: Sync,
        F: FnMut(Separated<'_, Q::Database, &'static str>, &R) + Send,
    {
        self.chunked(target, rows, |qb, chunk| {
            self.push_insert(qb, chunk, &mut bind)
        })
        .await
    }

    /// Inserts, or on a conflict over `conflict` (a unique key) updates the other columns
    /// from the new row: `ON CONFLICT (..) DO UPDATE SET c = EXCLUDED.c` on PostgreSQL and
    /// SQLite, `ON DUPLICATE KEY UPDATE c = VALUES(c)` on MySQL/MariaDB (which use any
    /// unique key and ignore `conflict`). With no other column, conflicting rows are left
    /// as they are.
    ///
    /// # Errors
    ///
    /// A bad identifier in `conflict`; database errors as [`Bulk::insert`].
    pub async fn upsert<Q, R, F>(
        &self,
        target: Q,
        rows: &[R],
        conflict: &[&str],
        mut bind: F,
    ) -> Result<BulkResult, DbError>
    where
        Q: QueryTarget,
        R: Sync,
        F: FnMut(Separated<'_, Q::Database, &'static str>, &R) + Send,
    {
        let conflict = idents(conflict)?;
        if conflict.is_empty() {
            return Err(DbError::config("upsert needs the conflict key columns"));
        }
        let updated: Vec<&Ident> = self
            .columns
            .iter()
            .filter(|c| !conflict.contains(c))
            .collect();
        self.chunked(target, rows, |qb, chunk| {
            type D<Q> = <Q as QueryTarget>::Database;
            self.push_insert(qb, chunk, &mut bind);
            if <D<Q> as Dialect>::MYSQL_SYNTAX {
                qb.push(" ON DUPLICATE KEY UPDATE ");
                let cols = if updated.is_empty() {
                    vec![&conflict[0]]
                } else {
                    updated.clone()
                };
                let mut list = qb.separated(", ");
                for c in cols {
                    let q = c.quoted::<D<Q>>();
                    list.push(format_args!("{q} = VALUES({q})"));
                }
            } else {
                qb.push(" ON CONFLICT (");
                let mut list = qb.separated(", ");
                for c in &conflict {
                    list.push(c.quoted::<D<Q>>());
                }
                if updated.is_empty() {
                    qb.push(") DO NOTHING");
                } else {
                    qb.push(") DO UPDATE SET ");
                    let mut list = qb.separated(", ");
                    for c in &updated {
                        let q = c.quoted::<D<Q>>();
                        list.push(format_args!("{q} = EXCLUDED.{q}"));
                    }
                }
            }
        })
        .await
    }

    /// Updates existing rows matched by the first column (the key), setting the other
    /// columns from each row, in one statement per chunk: a `VALUES` common table expression
    /// joined with `UPDATE .. FROM` on PostgreSQL and SQLite, a `UNION ALL` derived table
    /// joined with `UPDATE .. JOIN` on MySQL/MariaDB. Rows whose key matches nothing are
    /// skipped; `affected` counts the rows matched.
    ///
    /// # Errors
    ///
    /// Fewer than two columns; database errors as [`Bulk::insert`].
    pub async fn update<Q, R, F>(
        &self,
        target: Q,
        rows: &[R],
        mut bind: F,
    ) -> Result<BulkResult, DbError>
    where
        Q: QueryTarget,
        R: Sync,
        F: FnMut(Separated<'_, Q::Database, &'static str>, &R) + Send,
    {
        if self.columns.len() < 2 {
            return Err(DbError::config(
                "bulk update needs a key column and a column to set",
            ));
        }
        self.chunked(target, rows, |qb, chunk| {
            type D<Q> = <Q as QueryTarget>::Database;
            let table = self.table.quoted::<D<Q>>();
            let key = self.columns[0].quoted::<D<Q>>();
            if <D<Q> as Dialect>::MYSQL_SYNTAX {
                qb.push(format_args!("UPDATE {table} AS {T_ALIAS} JOIN (SELECT "));
                let mut list = qb.separated(", ");
                for c in &self.columns {
                    list.push(format_args!("NULL AS {}", c.quoted::<D<Q>>()));
                }
                qb.push(" FROM DUAL WHERE FALSE");
                for r in chunk {
                    qb.push(" UNION ALL SELECT ");
                    bind(qb.separated(", "), r);
                }
                qb.push(format_args!(
                    ") AS {V_ALIAS} ON {T_ALIAS}.{key} = {V_ALIAS}.{key} SET "
                ));
                let mut list = qb.separated(", ");
                for c in &self.columns[1..] {
                    let q = c.quoted::<D<Q>>();
                    list.push(format_args!("{T_ALIAS}.{q} = {V_ALIAS}.{q}"));
                }
            } else {
                qb.push(format_args!("WITH {V_ALIAS} "));
                self.column_list(qb);
                qb.push(" AS (");
                qb.push_values(chunk, &mut bind);
                qb.push(format_args!(") UPDATE {table} AS {T_ALIAS} SET "));
                let mut list = qb.separated(", ");
                for c in &self.columns[1..] {
                    let q = c.quoted::<D<Q>>();
                    list.push(format_args!("{q} = {V_ALIAS}.{q}"));
                }
                qb.push(format_args!(
                    " FROM {V_ALIAS} WHERE {T_ALIAS}.{key} = {V_ALIAS}.{key}"
                ));
            }
        })
        .await
    }

    /// `DELETE FROM table WHERE key IN (...)` over the first column, chunked.
    ///
    /// # Errors
    ///
    /// Database errors as [`Bulk::insert`].
    pub async fn delete<Q, V>(&self, target: Q, keys: &[V]) -> Result<BulkResult, DbError>
    where
        Q: QueryTarget,
        V: for<'q> Encode<'q, Q::Database> + Type<Q::Database> + Clone + Sync,
    {
        // One parameter per key, whatever the column count.
        let per = self
            .max_params
            .map_or(<Q::Database as Dialect>::MAX_BIND_PARAMS, |m| {
                m.min(<Q::Database as Dialect>::MAX_BIND_PARAMS)
            });
        let key_only = Bulk {
            table: self.table.clone(),
            columns: vec![self.columns[0].clone()],
            max_params: Some(per),
        };
        key_only
            .chunked(target, keys, |qb, chunk| {
                type D<Q> = <Q as QueryTarget>::Database;
                qb.push("DELETE FROM ").push(self.table.quoted::<D<Q>>());
                qb.push(" WHERE ")
                    .push(self.columns[0].quoted::<D<Q>>())
                    .push(" IN (");
                let mut list = qb.separated(", ");
                for k in chunk {
                    list.push_bind(k.clone());
                }
                qb.push(")");
            })
            .await
    }
}
