//! The bank workload shared by the bank test and the benchmark (PostgreSQL).
#![allow(dead_code)] // the bench and the test use different parts

use sqlx::{AssertSqlSafe, PgPool, Postgres};
use tower_strata::tx::TxHandle;

pub struct Bank {
    pub pool: PgPool,
    pub table: String,
    transfer_sql: (String, String, String),
}

fn sql(s: &str) -> AssertSqlSafe<String> {
    AssertSqlSafe(s.to_owned())
}

impl Bank {
    pub async fn create(pool: &PgPool, accounts: i64, balance: i64) -> Self {
        let table = format!("tx_bank_{:08x}", rand::random::<u32>());
        sqlx::query(sql(&format!(
            "CREATE TABLE {table} (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)"
        )))
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(sql(&format!(
            "INSERT INTO {table} SELECT g, $1 FROM generate_series(1, $2) g"
        )))
        .bind(balance)
        .bind(accounts)
        .execute(pool)
        .await
        .unwrap();
        Self {
            pool: pool.clone(),
            transfer_sql: (
                format!("SELECT balance FROM {table} WHERE id = $1"),
                format!("UPDATE {table} SET balance = balance - $1 WHERE id = $2"),
                format!("UPDATE {table} SET balance = balance + $1 WHERE id = $2"),
            ),
            table,
        }
    }

    /// One transfer through the request's transaction: 200, 404 (no account), 409
    /// (insufficient funds) or 500 (any database error, mapped like a plain handler does).
    pub async fn transfer(&self, tx: &TxHandle<Postgres>, from: i64, to: i64, amount: i64) -> u16 {
        self.try_transfer(tx, from, to, amount).await.unwrap_or(500)
    }

    async fn try_transfer(
        &self,
        tx: &TxHandle<Postgres>,
        from: i64,
        to: i64,
        amount: i64,
    ) -> Result<u16, sqlx::Error> {
        let (select, debit, credit) = &self.transfer_sql;
        let mut conn = tx.conn().await?;
        let balance: Option<i64> = sqlx::query_scalar(sql(select))
            .bind(from)
            .fetch_optional(&mut conn)
            .await?;
        let Some(balance) = balance else {
            return Ok(404);
        };
        if balance < amount {
            return Ok(409);
        }
        sqlx::query(sql(debit))
            .bind(amount)
            .bind(from)
            .execute(&mut conn)
            .await?;
        sqlx::query(sql(credit))
            .bind(amount)
            .bind(to)
            .execute(&mut conn)
            .await?;
        Ok(200)
    }

    /// The same transfer with a hand-written SERIALIZABLE transaction and no retry.
    pub async fn transfer_by_hand(
        &self,
        from: i64,
        to: i64,
        amount: i64,
    ) -> Result<u16, sqlx::Error> {
        let (select, debit, credit) = &self.transfer_sql;
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE")
            .await?;
        let balance: Option<i64> = sqlx::query_scalar(sql(select))
            .bind(from)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(balance) = balance else {
            return Ok(404);
        };
        if balance < amount {
            return Ok(409);
        }
        sqlx::query(sql(debit))
            .bind(amount)
            .bind(from)
            .execute(&mut *tx)
            .await?;
        sqlx::query(sql(credit))
            .bind(amount)
            .bind(to)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(200)
    }

    pub async fn total(&self) -> i64 {
        sqlx::query_scalar(sql(&format!(
            "SELECT SUM(balance)::int8 FROM {}",
            self.table
        )))
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    pub async fn drop(self) {
        sqlx::query(sql(&format!("DROP TABLE IF EXISTS {}", self.table)))
            .execute(&self.pool)
            .await
            .unwrap();
    }
}

/// A random transfer among `accounts` accounts.
pub fn random_transfer(accounts: i64) -> (i64, i64, i64) {
    let from = rand::random_range(1..=accounts);
    let mut to = rand::random_range(1..=accounts);
    while to == from {
        to = rand::random_range(1..=accounts);
    }
    (from, to, rand::random_range(1..=100))
}
