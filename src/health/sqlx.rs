//! The sqlx pool check (features `postgres`, `mysql`, `sqlite`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::{Database, Executor, Pool};
use tokio::time::Instant;

use super::check::{CheckFuture, CheckOutput, HealthCheck};

/// Checks a sqlx pool: size, idle and in-use connections, utilisation, the time we waited to
/// acquire a connection (sqlx exposes none), acquire timeouts so far, and a `SELECT 1` round
/// trip, each step under a timeout.
///
/// Unhealthy when no connection can be acquired or the query fails; degraded when utilisation
/// reaches [`PoolCheck::degraded_utilisation`].
pub struct PoolCheck<DB: Database> {
    pool: Pool<DB>,
    timeout: Duration,
    degraded_utilisation: f64,
    acquire_timeouts: AtomicU64,
    failures: AtomicU64,
}

impl<DB: Database> std::fmt::Debug for PoolCheck<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolCheck")
            .field("timeout", &self.timeout)
            .field("degraded_utilisation", &self.degraded_utilisation)
            .finish_non_exhaustive()
    }
}

impl<DB: Database> PoolCheck<DB> {
    /// A check of `pool` with a 1 s timeout per step and degraded at 90 % utilisation.
    pub fn new(pool: Pool<DB>) -> Self {
        Self {
            pool,
            timeout: Duration::from_secs(1),
            degraded_utilisation: 0.9,
            acquire_timeouts: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }
    setters! {
        /// Timeout of the acquire and of the `SELECT 1` (each).
        fn timeout(timeout: Duration) => set timeout;

        /// Utilisation (in use / max connections, `0.0..=1.0`) from which the pool is degraded.
        /// Values above 1 never degrade.
        fn degraded_utilisation(ratio: f64) => set degraded_utilisation;
    }
}

impl<DB> HealthCheck for PoolCheck<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let size = self.pool.size();
            let idle = self.pool.num_idle() as u32;
            let in_use = size.saturating_sub(idle);
            let max = self.pool.options().get_max_connections().max(1);
            let utilisation = f64::from(in_use) / f64::from(max);
            let mut details = serde_json::json!({
                "size": size,
                "idle": idle,
                "in_use": in_use,
                "max_connections": max,
                "utilisation": utilisation,
                "closed": self.pool.is_closed(),
            });
            let fail = |details: &mut serde_json::Value, error: String| {
                details["acquire_timeouts"] = self.acquire_timeouts.load(Ordering::Relaxed).into();
                details["failures"] = (self.failures.fetch_add(1, Ordering::Relaxed) + 1).into();
                CheckOutput::unhealthy(error).details(details.take())
            };

            let start = Instant::now();
            let acquired = tokio::time::timeout(self.timeout, self.pool.acquire()).await;
            let acquire_wait = start.elapsed();
            details["acquire_wait_ms"] = (acquire_wait.as_secs_f64() * 1e3).into();
            let mut conn = match acquired {
                Ok(Ok(conn)) => conn,
                Ok(Err(sqlx::Error::PoolTimedOut)) | Err(_) => {
                    self.acquire_timeouts.fetch_add(1, Ordering::Relaxed);
                    let error = format!(
                        "no connection within {} ms",
                        acquire_wait.as_millis().max(self.timeout.as_millis())
                    );
                    return fail(&mut details, error);
                }
                Ok(Err(e)) => return fail(&mut details, format!("acquire failed: {e}")),
            };

            let start = Instant::now();
            let query = sqlx::raw_sql("SELECT 1").execute(&mut *conn);
            let result = tokio::time::timeout(self.timeout, query).await;
            let round_trip = start.elapsed();
            details["round_trip_ms"] = (round_trip.as_secs_f64() * 1e3).into();
            details["acquire_timeouts"] = self.acquire_timeouts.load(Ordering::Relaxed).into();
            details["failures"] = self.failures.load(Ordering::Relaxed).into();
            match result {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return fail(&mut details, format!("SELECT 1 failed: {e}")),
                Err(_) => {
                    // The connection may be stuck mid-query: do not return it to the pool.
                    conn.close_on_drop();
                    return fail(
                        &mut details,
                        format!("SELECT 1 timed out after {} ms", self.timeout.as_millis()),
                    );
                }
            }
            if utilisation >= self.degraded_utilisation {
                return CheckOutput::degraded(
                    details,
                    format!(
                        "pool utilisation {:.0} % at or above {:.0} %",
                        utilisation * 100.0,
                        self.degraded_utilisation * 100.0
                    ),
                );
            }
            CheckOutput::healthy(details)
        })
    }
}
