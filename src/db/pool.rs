//! Pool presets, a validated builder, and pool statistics for the health report.

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::pool::PoolOptions;
use sqlx::{Connection, Pool};

use super::dialect::Dialect;
use super::error::DbError;

type ConnOptions<DB> = <<DB as sqlx::Database>::Connection as Connection>::Options;

/// Starting points for [`PoolBuilder`]; every value can be overridden.
///
/// | preset | max | min idle | acquire timeout | idle timeout | max lifetime | statement cache | ping at checkout |
/// |---|---|---|---|---|---|---|---|
/// | `Web` | 10 | 2 | 5 s | 10 min | 30 min | 100 | only after 60 s idle |
/// | `Worker` | 4 | 0 | 30 s | 5 min | 30 min | 100 | every checkout |
/// | `Test` | 5 | 0 | 10 s | 30 s | 5 min | 20 | never |
///
/// `Web` keeps a couple of warm connections and fails fast when the pool is exhausted (the
/// transaction layer then answers `503`); `Worker` waits longer for fewer connections;
/// `Test` keeps nothing idle so parallel test suites do not hold server slots.
///
/// A ping is one round trip to the database before the connection is handed out. Under load a
/// `Web` pool hands out connections that were idle for microseconds, so it pings none and a
/// one-statement read costs one round trip, not two; a connection idle for over a minute (one a
/// firewall or a pooler may have cut) is pinged first. `docs/db.md` has what each preset costs
/// per checkout and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PoolPreset {
    /// Request-serving processes.
    #[default]
    Web,
    /// Background jobs and batch work.
    Worker,
    /// Test suites sharing a server.
    Test,
}

/// Builds a sqlx pool with sane defaults, validated before any connection is made.
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// # async fn demo() -> Result<(), tower_strata::db::DbError> {
/// use std::time::Duration;
/// use tower_strata::db::{PoolBuilder, PoolPreset, PoolStats};
///
/// let pool: sqlx::PgPool = PoolBuilder::new(PoolPreset::Web)
///     .max_connections(20)
///     .acquire_timeout(Duration::from_secs(2))
///     .connect("postgres://postgres@127.0.0.1/test")
///     .await?;
/// let stats = PoolStats::of(&pool);
/// # let _ = stats; Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolBuilder {
    max_connections: u32,
    min_idle: u32,
    acquire_timeout: Duration,
    idle_timeout: Option<Duration>,
    max_lifetime: Option<Duration>,
    statement_cache: usize,
    test_before_acquire: bool,
    test_after_idle: Option<Duration>,
}

impl Default for PoolBuilder {
    fn default() -> Self {
        Self::new(PoolPreset::Web)
    }
}

impl PoolBuilder {
    /// The preset's values.
    pub fn new(preset: PoolPreset) -> Self {
        let min = Duration::from_secs(60);
        // The web preset in full; the others say how they differ from it.
        let web = Self {
            max_connections: 10,
            min_idle: 2,
            acquire_timeout: Duration::from_secs(5),
            idle_timeout: Some(10 * min),
            max_lifetime: Some(30 * min),
            statement_cache: 100,
            // A ping per checkout doubles the round trips of a one-statement read; a
            // connection that dies in use fails its statement, which the transaction layer
            // replays (reads) or retries (transactions).
            test_before_acquire: false,
            test_after_idle: Some(min),
        };
        match preset {
            PoolPreset::Web => web,
            // Few, long jobs: fewer connections, none kept idle, a longer wait for one; a
            // ping per checkout is noise against a job that may not be safe to replay.
            PoolPreset::Worker => Self {
                max_connections: 4,
                min_idle: 0,
                acquire_timeout: Duration::from_secs(30),
                idle_timeout: Some(5 * min),
                test_before_acquire: true,
                ..web
            },
            // Short-lived pools: idle connections and old ones go quickly, no ping per acquire.
            PoolPreset::Test => Self {
                max_connections: 5,
                min_idle: 0,
                acquire_timeout: Duration::from_secs(10),
                idle_timeout: Some(Duration::from_secs(30)),
                max_lifetime: Some(5 * min),
                statement_cache: 20,
                test_after_idle: None,
                ..web
            },
        }
    }

    setters! {
        /// Most open connections.
        fn max_connections(n: u32) => set max_connections;

        /// Connections kept open even when idle.
        fn min_idle(n: u32) => set min_idle;

        /// Longest wait for a connection before `PoolTimedOut`.
        fn acquire_timeout(d: Duration) => set acquire_timeout;

        /// Idle connections above `min_idle` are closed after this long (`None`: never).
        fn idle_timeout(d: Option<Duration>) => set idle_timeout;

        /// Connections are closed after this age (`None`: never), to pick up server-side
        /// changes and spread reconnects.
        fn max_lifetime(d: Option<Duration>) => set max_lifetime;

        /// Prepared statements cached per connection (`0` turns the cache off).
        fn statement_cache(n: usize) => set statement_cache;

        /// Whether every connection is pinged (one round trip) before it is handed out.
        fn test_before_acquire(yes: bool) => set test_before_acquire;

        /// Without [`test_before_acquire`](Self::test_before_acquire), pings only the
        /// connections that sat idle in the pool at least this long (`None`: never).
        fn test_after_idle(idle: Option<Duration>) => set test_after_idle;
    }

    /// Checks the values.
    ///
    /// # Errors
    ///
    /// [`DbErrorKind::InvalidConfig`](super::DbErrorKind::InvalidConfig) for no connections,
    /// `min_idle` above `max_connections`, a zero acquire timeout, or an idle timeout longer
    /// than the max lifetime.
    pub fn validate(&self) -> Result<(), DbError> {
        if self.max_connections == 0 {
            return Err(DbError::config("max_connections must be at least 1"));
        }
        if self.min_idle > self.max_connections {
            return Err(DbError::config(format!(
                "min_idle ({}) exceeds max_connections ({})",
                self.min_idle, self.max_connections
            )));
        }
        if self.acquire_timeout.is_zero() {
            return Err(DbError::config("acquire_timeout must be above zero"));
        }
        if let (Some(idle), Some(life)) = (self.idle_timeout, self.max_lifetime)
            && idle > life
        {
            return Err(DbError::config("idle_timeout exceeds max_lifetime"));
        }
        Ok(())
    }

    /// The sqlx pool options (without the statement cache, which lives on the connect
    /// options).
    ///
    /// # Errors
    ///
    /// As [`PoolBuilder::validate`].
    pub fn pool_options<DB: Dialect>(&self) -> Result<PoolOptions<DB>, DbError> {
        self.validate()?;
        let options = PoolOptions::<DB>::new()
            .max_connections(self.max_connections)
            .min_connections(self.min_idle)
            .acquire_timeout(self.acquire_timeout)
            .idle_timeout(self.idle_timeout)
            .max_lifetime(self.max_lifetime)
            .test_before_acquire(self.test_before_acquire);
        Ok(match self.test_after_idle {
            Some(after) if !self.test_before_acquire => {
                options.before_acquire(move |conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for >= after {
                            // An error closes the connection; the pool hands out another.
                            conn.ping().await?;
                        }
                        Ok(true)
                    })
                })
            }
            _ => options,
        })
    }

    /// Opens a pool to `url`, with one connection made to check it.
    ///
    /// # Errors
    ///
    /// As [`PoolBuilder::validate`]; a malformed URL; the connection error (bounded by the
    /// acquire timeout).
    pub async fn connect<DB: Dialect>(&self, url: &str) -> Result<Pool<DB>, DbError> {
        self.validate()?;
        let options = <ConnOptions<DB> as FromStr>::from_str(url).map_err(DbError::from)?;
        self.connect_with::<DB>(options).await
    }

    /// Opens a pool with the given connect options (the statement cache size is set on
    /// them).
    ///
    /// # Errors
    ///
    /// As [`PoolBuilder::connect`].
    pub async fn connect_with<DB: Dialect>(
        &self,
        options: ConnOptions<DB>,
    ) -> Result<Pool<DB>, DbError> {
        let options = DB::set_statement_cache(options, self.statement_cache);
        Ok(self.pool_options::<DB>()?.connect_with(options).await?)
    }

    /// A pool that connects on first use.
    ///
    /// # Errors
    ///
    /// As [`PoolBuilder::validate`].
    pub fn connect_lazy_with<DB: Dialect>(
        &self,
        options: ConnOptions<DB>,
    ) -> Result<Pool<DB>, DbError> {
        let options = DB::set_statement_cache(options, self.statement_cache);
        Ok(self.pool_options::<DB>()?.connect_lazy_with(options))
    }
}

/// A snapshot of a pool for the health report (serde-serializable).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PoolStats {
    /// Open connections.
    pub size: u32,
    /// Open connections waiting in the pool.
    pub idle: u32,
    /// Open connections lent out.
    pub in_use: u32,
    /// The most connections the pool opens.
    pub max_connections: u32,
    /// `in_use / max_connections`, from `0.0` to `1.0`.
    pub utilisation: f64,
    /// Whether [`Pool::close`] was called.
    pub closed: bool,
}

impl PoolStats {
    /// Reads `pool`'s counters (no round trip).
    pub fn of<DB: sqlx::Database>(pool: &Pool<DB>) -> Self {
        let size = pool.size();
        let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX).min(size);
        let in_use = size - idle;
        let max_connections = pool.options().get_max_connections();
        Self {
            size,
            idle,
            in_use,
            max_connections,
            utilisation: if max_connections == 0 {
                0.0
            } else {
                f64::from(in_use) / f64::from(max_connections)
            },
            closed: pool.is_closed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_bad_values_are_refused() {
        for p in [PoolPreset::Web, PoolPreset::Worker, PoolPreset::Test] {
            PoolBuilder::new(p).validate().unwrap();
        }
        let b = PoolBuilder::default();
        assert!(b.clone().max_connections(0).validate().is_err());
        assert!(b.clone().max_connections(2).min_idle(3).validate().is_err());
        assert!(
            b.clone()
                .acquire_timeout(Duration::ZERO)
                .validate()
                .is_err()
        );
        assert!(
            b.clone()
                .idle_timeout(Some(Duration::from_secs(100)))
                .max_lifetime(Some(Duration::from_secs(10)))
                .validate()
                .is_err()
        );
    }
}
