//! PostgreSQL bulk insert with one array parameter per column (`UNNEST`).

use sqlx::postgres::PgArguments;
use sqlx::{Arguments, Encode, Postgres, QueryBuilder, Type};

use super::dialect::QueryTarget;
use super::error::{DbError, DbErrorKind};
use super::ident::Ident;

/// Inserts many rows on PostgreSQL as `INSERT INTO t (a, b) SELECT * FROM UNNEST($1::int8[],
/// $2::text[])`: one bind parameter per **column**, so any row count fits one statement and
/// the server parses one short statement instead of one tuple per row.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), tower_strata::db::DbError> {
/// use tower_strata::db::PgUnnest;
///
/// let ids: Vec<i64> = (0..100_000).collect();
/// let names: Vec<String> = ids.iter().map(|i| format!("item {i}")).collect();
/// let inserted = PgUnnest::new("items")?
///     .column("id", "int8", ids)?
///     .column("name", "text", names)?
///     .insert(&pool)
///     .await?;
/// assert_eq!(inserted, 100_000);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PgUnnest {
    table: Ident,
    columns: Vec<(Ident, String)>,
    rows: Option<usize>,
    args: PgArguments,
}

impl PgUnnest {
    /// An insert into `table`.
    ///
    /// # Errors
    ///
    /// A bad identifier.
    pub fn new(table: &str) -> Result<Self, DbError> {
        Ok(Self {
            table: Ident::new(table)?,
            columns: Vec::new(),
            rows: None,
            args: PgArguments::default(),
        })
    }

    /// Adds a column with its element SQL type (`int8`, `text`, `timestamptz`,
    /// `double precision`...) and its values.
    ///
    /// # Errors
    ///
    /// A bad column name; a type name that is not letters, digits, `_` and spaces; a value
    /// count that differs from the earlier columns'; an encoding error.
    pub fn column<T>(mut self, name: &str, sql_type: &str, values: Vec<T>) -> Result<Self, DbError>
    where
        Vec<T>: for<'q> Encode<'q, Postgres> + Type<Postgres>,
    {
        let ident = Ident::new(name)?;
        let type_ok = sql_type.len() <= 64
            && sql_type.starts_with(|c: char| c.is_ascii_alphabetic())
            && sql_type
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ' ');
        if !type_ok {
            return Err(DbError::new(
                DbErrorKind::InvalidIdentifier,
                format!("{sql_type:?} is not a plain SQL type name"),
            ));
        }
        match self.rows {
            Some(n) if n != values.len() => {
                return Err(DbError::config(format!(
                    "column {name} has {} values, earlier columns {n}",
                    values.len()
                )));
            }
            _ => self.rows = Some(values.len()),
        }
        self.args
            .add(values)
            .map_err(|e| DbError::config(format!("cannot encode column {name}: {e}")))?;
        self.columns.push((ident, sql_type.to_owned()));
        Ok(self)
    }

    /// Runs the insert; returns the rows inserted.
    ///
    /// # Errors
    ///
    /// No columns; database errors.
    pub async fn insert<Q>(self, mut target: Q) -> Result<u64, DbError>
    where
        Q: QueryTarget<Database = Postgres>,
    {
        if self.columns.is_empty() {
            return Err(DbError::config("PgUnnest needs at least one column"));
        }
        let mut sql = format!("INSERT INTO {} (", self.table.quoted::<Postgres>());
        for (i, (c, _)) in self.columns.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&c.quoted::<Postgres>());
        }
        sql.push_str(") SELECT * FROM UNNEST(");
        for (i, (_, ty)) in self.columns.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}::{ty}[]", i + 1));
        }
        sql.push(')');
        let mut qb = QueryBuilder::<Postgres>::with_arguments(sql, self.args);
        let result = target.execute(qb.build()).await?;
        Ok(result.rows_affected())
    }
}
