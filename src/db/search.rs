//! Bounded text search and small aggregation helpers.

use sqlx::{Decode, FromRow, QueryBuilder, Type};

use super::dialect::{Dialect, QueryTarget, Value};
use super::error::DbError;
use super::ident::{Ident, idents};

/// Most rows a search returns unless [`Search::max_limit`] says otherwise.
pub const DEFAULT_SEARCH_LIMIT: u32 = 50;

/// How a [`Search`] matches.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SearchMode {
    /// Substring match, case-insensitive: `ILIKE '%term%'` on PostgreSQL, `LIKE '%term%'` on
    /// MySQL/MariaDB (case-insensitive under the default collations) and SQLite
    /// (case-insensitive for ASCII). `%`, `_` and `!` in the term match themselves.
    ///
    /// Index: on PostgreSQL a trigram index, `CREATE EXTENSION pg_trgm; CREATE INDEX ON
    /// items USING gin (name gin_trgm_ops);` per column. A B-tree index cannot serve a
    /// leading `%` on MySQL/MariaDB or SQLite: the scan is bounded by the limit only, so
    /// use MySQL `FULLTEXT` or SQLite FTS5 for large tables.
    Contains,
    /// PostgreSQL full-text search: `to_tsvector(config, a || ' ' || b) @@
    /// plainto_tsquery(config, term)`, with `config` such as `"english"` or `"simple"`.
    ///
    /// Index, with the same expression: `CREATE INDEX ON items USING gin
    /// (to_tsvector('english', coalesce("name", '') || ' ' || coalesce("body", '')));`.
    /// Falls back to [`SearchMode::Contains`] on other databases.
    FullText(String),
}

/// A text search over some columns of a table that always carries a bounded limit.
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), tower_strata::db::DbError> {
/// use tower_strata::db::{Search, SearchMode};
///
/// #[derive(sqlx::FromRow)]
/// struct Item { id: i64, name: String }
///
/// let search = Search::new("items", &["name"], "id")?.mode(SearchMode::Contains);
/// let hits: Vec<Item> = search.run(&pool, "blue wid", 20).await?;
/// # let _ = hits; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Search {
    table: Ident,
    columns: Vec<Ident>,
    order: Ident,
    mode: SearchMode,
    max_limit: u32,
}

impl Search {
    /// Searches `columns` of `table`, results ordered by `order_by` (a unique column keeps
    /// results stable).
    ///
    /// # Errors
    ///
    /// A bad identifier, or no columns.
    pub fn new(table: &str, columns: &[&str], order_by: &str) -> Result<Self, DbError> {
        if columns.is_empty() {
            return Err(DbError::config("search needs at least one column"));
        }
        Ok(Self {
            table: Ident::new(table)?,
            columns: idents(columns)?,
            order: Ident::new(order_by)?,
            mode: SearchMode::Contains,
            max_limit: DEFAULT_SEARCH_LIMIT,
        })
    }

    /// The match mode (default [`SearchMode::Contains`]).
    pub fn mode(mut self, mode: SearchMode) -> Self {
        self.mode = mode;
        self
    }

    /// The largest limit accepted (default [`DEFAULT_SEARCH_LIMIT`]); larger ones are
    /// refused.
    pub fn max_limit(mut self, max: u32) -> Self {
        self.max_limit = max.max(1);
        self
    }

    /// Rows matching `term`, at most `limit`.
    ///
    /// # Errors
    ///
    /// [`DbErrorKind::InvalidPage`](super::DbErrorKind::InvalidPage) for a limit of `0` or
    /// above the maximum, or an empty term or one over 256 characters; for
    /// [`SearchMode::FullText`], a configuration name that is not a plain identifier;
    /// database errors.
    pub async fn run<T, Q>(&self, mut target: Q, term: &str, limit: u32) -> Result<Vec<T>, DbError>
    where
        Q: QueryTarget,
        T: for<'r> FromRow<'r, <Q::Database as sqlx::Database>::Row> + Send + Unpin,
    {
        type D<Q> = <Q as QueryTarget>::Database;
        if limit == 0 || limit > self.max_limit {
            return Err(DbError::page(format!(
                "limit must be between 1 and {}, got {limit}",
                self.max_limit
            )));
        }
        let term = term.trim();
        if term.is_empty() || term.chars().count() > 256 {
            return Err(DbError::page("search term must be 1 to 256 characters"));
        }
        let mut qb = QueryBuilder::<D<Q>>::new("SELECT * FROM ");
        qb.push(self.table.quoted::<D<Q>>()).push(" WHERE ");
        match &self.mode {
            SearchMode::FullText(config) if <D<Q> as Dialect>::FULL_TEXT => {
                let config = Ident::new(config)?;
                let document = self
                    .columns
                    .iter()
                    .map(|c| format!("coalesce({}, '')", c.quoted::<D<Q>>()))
                    .collect::<Vec<_>>()
                    .join(" || ' ' || ");
                qb.push(format_args!(
                    "to_tsvector('{config}', {document}) @@ plainto_tsquery('{config}', "
                ));
                <D<Q> as Dialect>::push_value(&mut qb, &Value::Text(term.to_owned()));
                qb.push(")");
            }
            _ => {
                let pattern = format!("%{}%", escape_like(term));
                for (i, c) in self.columns.iter().enumerate() {
                    if i > 0 {
                        qb.push(" OR ");
                    }
                    qb.push(c.quoted::<D<Q>>())
                        .push(" ")
                        .push(<D<Q> as Dialect>::ILIKE)
                        .push(" ");
                    <D<Q> as Dialect>::push_value(&mut qb, &Value::Text(pattern.clone()));
                    qb.push(" ESCAPE '!'");
                }
            }
        }
        qb.push(" ORDER BY ").push(self.order.quoted::<D<Q>>());
        qb.push(" LIMIT ");
        <D<Q> as Dialect>::push_value(&mut qb, &Value::Int(limit.into()));
        let rows = target.fetch_all(qb.build()).await?;
        Ok(rows
            .iter()
            .map(|r| T::from_row(r))
            .collect::<Result<Vec<_>, _>>()?)
    }
}

fn escape_like(term: &str) -> String {
    let mut out = String::with_capacity(term.len());
    for c in term.chars() {
        if matches!(c, '!' | '%' | '_') {
            out.push('!');
        }
        out.push(c);
    }
    out
}

/// One group of [`Aggregate::group_by`]: the group's key, its row count and, when asked, the
/// sum of a column over the group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Group<K> {
    /// The grouped column's value.
    pub key: K,
    /// Rows in the group.
    pub count: i64,
    /// Sum of the summed column over the group (`None` when every value is `NULL` or no
    /// column was given).
    pub sum: Option<i64>,
}

/// `COUNT`, `SUM` and `GROUP BY` over one table with optional equality filters, returning
/// typed values. Sums are of integer columns, cast to `BIGINT`.
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), tower_strata::db::DbError> {
/// use tower_strata::db::Aggregate;
///
/// let orders = Aggregate::new("orders")?.filter_eq("status", "paid")?;
/// let n: i64 = orders.count(&pool).await?;
/// let revenue: Option<i64> = orders.sum(&pool, "amount_cents").await?;
/// let by_customer = orders.group_by::<i64, _>(&pool, "customer_id", Some("amount_cents")).await?;
/// # let _ = (n, revenue, by_customer); Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Aggregate {
    table: Ident,
    filters: Vec<(Ident, Value)>,
}

impl Aggregate {
    /// Aggregates over `table`.
    ///
    /// # Errors
    ///
    /// A bad identifier.
    pub fn new(table: &str) -> Result<Self, DbError> {
        Ok(Self {
            table: Ident::new(table)?,
            filters: Vec::new(),
        })
    }

    /// Keeps only rows where `column = value` (bound).
    ///
    /// # Errors
    ///
    /// A bad identifier.
    pub fn filter_eq(mut self, column: &str, value: impl Into<Value>) -> Result<Self, DbError> {
        self.filters.push((Ident::new(column)?, value.into()));
        Ok(self)
    }

    fn push_from_where<DB: Dialect>(&self, qb: &mut QueryBuilder<DB>) {
        qb.push(" FROM ").push(self.table.quoted::<DB>());
        for (i, (c, v)) in self.filters.iter().enumerate() {
            qb.push(if i == 0 { " WHERE " } else { " AND " });
            qb.push(c.quoted::<DB>()).push(" = ");
            DB::push_value(qb, v);
        }
    }

    /// `SELECT COUNT(*)`.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn count<Q: QueryTarget>(&self, mut target: Q) -> Result<i64, DbError> {
        let mut qb = QueryBuilder::<Q::Database>::new("SELECT COUNT(*) AS n");
        self.push_from_where(&mut qb);
        let row = target.fetch_one(qb.build()).await?;
        Ok(<Q::Database as Dialect>::read_i64(&row, "n")?)
    }

    /// `SELECT SUM(column)` as `BIGINT`; `None` over no rows.
    ///
    /// # Errors
    ///
    /// A bad identifier; database errors (an overflow of `BIGINT` among them).
    pub async fn sum<Q: QueryTarget>(
        &self,
        mut target: Q,
        column: &str,
    ) -> Result<Option<i64>, DbError> {
        let column = Ident::new(column)?;
        let sum =
            <Q::Database as Dialect>::cast_i64(&format!("SUM({})", column.quoted::<Q::Database>()));
        let mut qb = QueryBuilder::<Q::Database>::new(format!("SELECT {sum} AS s"));
        self.push_from_where(&mut qb);
        let row = target.fetch_one(qb.build()).await?;
        Ok(<Q::Database as Dialect>::read_opt_i64(&row, "s")?)
    }

    /// `SELECT column, COUNT(*), SUM(sum) .. GROUP BY column ORDER BY column`, each group
    /// decoded as a [`Group<K>`].
    ///
    /// # Errors
    ///
    /// A bad identifier; database errors, among them a `K` that does not decode the
    /// column.
    pub async fn group_by<K, Q>(
        &self,
        mut target: Q,
        column: &str,
        sum: Option<&str>,
    ) -> Result<Vec<Group<K>>, DbError>
    where
        Q: QueryTarget,
        K: for<'r> Decode<'r, Q::Database> + Type<Q::Database> + Send + Unpin,
        for<'r> &'r str: sqlx::ColumnIndex<<Q::Database as sqlx::Database>::Row>,
    {
        type D<Q> = <Q as QueryTarget>::Database;
        let column = Ident::new(column)?;
        let sum = sum.map(Ident::new).transpose()?;
        let c = column.quoted::<D<Q>>();
        let mut qb =
            QueryBuilder::<D<Q>>::new(format_args!("SELECT {c} AS k, COUNT(*) AS n, ").to_string());
        match &sum {
            Some(s) => {
                qb.push(<D<Q> as Dialect>::cast_i64(&format!(
                    "SUM({})",
                    s.quoted::<D<Q>>()
                )));
            }
            None => {
                qb.push(<D<Q> as Dialect>::cast_i64("NULL"));
            }
        }
        qb.push(" AS s");
        self.push_from_where(&mut qb);
        qb.push(format_args!(" GROUP BY {c} ORDER BY {c}"));
        let rows = target.fetch_all(qb.build()).await?;
        rows.iter()
            .map(|row| {
                use sqlx::Row;
                Ok(Group {
                    key: row.try_get::<K, _>("k")?,
                    count: <D<Q> as Dialect>::read_i64(row, "n")?,
                    sum: <D<Q> as Dialect>::read_opt_i64(row, "s")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::escape_like;

    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(escape_like("50%_off!"), "50!%!_off!!");
        assert_eq!(escape_like("plain"), "plain");
    }
}
