//! [`TxLayer`], which makes [`Tx`] services.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use sqlx::Pool;
use tower_layer::Layer;

use super::attempt::TxRequest;
use super::backend::TxDatabase;
use super::config::{TxConfig, TxMode};
use super::error::TxConfigError;
use super::limit::AdaptiveLimit;
use super::policy::{CommitPolicy, DefaultPolicy, RetryPolicy};
use super::service::Tx;
use super::stats::TxStats;

/// Gives each request a lazily-begun transaction on `pool` (or, for `GET`, `HEAD` and
/// `OPTIONS` by default, pooled connections without one: see [`TxMode`]), commits or rolls it
/// back from the response and replays the request on retryable errors. With a
/// [`replica`](TxLayer::replica), read-only and autocommit work goes there. See the
/// [module docs](super).
pub struct TxLayer<DB: TxDatabase, P = DefaultPolicy> {
    pub(crate) pool: Pool<DB>,
    /// Where read-only and autocommit work goes, when set.
    pub(crate) replica: Option<Pool<DB>>,
    pub(crate) config: Arc<TxConfig>,
    pub(crate) policy: Arc<P>,
    pub(crate) stats: TxStats,
    /// The adaptive limit on transactions at once, when configured; shared by the layer's
    /// services.
    pub(crate) limit: Option<Arc<AdaptiveLimit>>,
}

impl<DB: TxDatabase> TxLayer<DB> {
    /// A layer over `pool` with `config` and the [`DefaultPolicy`].
    ///
    /// # Errors
    ///
    /// [`TxConfigError`] when `config` is nonsensical or asks for what the database cannot do
    /// (a statement timeout on SQLite, say).
    pub fn try_new(pool: Pool<DB>, config: TxConfig) -> Result<Self, TxConfigError> {
        config.validate_common()?;
        DB::validate(&config)?;
        Ok(Self {
            pool,
            replica: None,
            limit: config
                .adaptive_concurrency
                .map(|max| Arc::new(AdaptiveLimit::new(max))),
            config: Arc::new(config),
            policy: Arc::new(DefaultPolicy),
            stats: TxStats::default(),
        })
    }
}

impl<DB: TxDatabase, P> TxLayer<DB, P> {
    /// Replaces the commit policy; settings and stats are kept.
    pub fn policy<Q: CommitPolicy>(self, policy: Q) -> TxLayer<DB, Q> {
        TxLayer {
            pool: self.pool,
            replica: self.replica,
            config: self.config,
            policy: Arc::new(policy),
            stats: self.stats,
            limit: self.limit,
        }
    }

    /// Sends [`TxMode::ReadOnly`] and [`TxMode::Autocommit`] work to `replica`;
    /// [`TxMode::ReadWrite`] work stays on the primary pool given to [`try_new`](TxLayer::try_new).
    ///
    /// The layer does not know how far the replica lags: a request that reads right after its
    /// client's write may read the state before it. Routes that must read their own writes
    /// get a layer without a replica, or a [`mode_for`](TxConfig::mode_for) of
    /// [`TxMode::ReadWrite`] for their reads. A route that writes without a transaction
    /// ([`TxMode::Autocommit`] for a `POST`, say) must not have a replica either: its writes
    /// would go to it.
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")]
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use tower_strata::tx::{TxConfig, TxLayer};
    ///
    /// let primary = sqlx::PgPool::connect("postgres://postgres@primary/shop").await?;
    /// let replica = sqlx::PgPool::connect("postgres://postgres@replica/shop").await?;
    /// let layer = TxLayer::try_new(primary, TxConfig::default())?.replica(replica);
    /// # let _ = layer; Ok(()) }
    /// ```
    pub fn replica(mut self, replica: Pool<DB>) -> Self {
        self.replica = Some(replica);
        self
    }

    /// The pool that work in `mode` runs on.
    pub(crate) fn pool_for(&self, mode: TxMode) -> &Pool<DB> {
        match (mode, &self.replica) {
            (TxMode::ReadOnly | TxMode::Autocommit, Some(replica)) => replica,
            _ => &self.pool,
        }
    }

    /// A request, from its head, as each of its attempts sees it; its retry deadline starts
    /// now.
    pub(super) fn request(&self, parts: http::request::Parts) -> TxRequest<DB, P> {
        let mode = self.config.mode_of(&parts.method);
        TxRequest {
            replayable: RetryPolicy::may_replay(mode, &parts.method),
            pool: self.pool_for(mode).clone(),
            config: self.config.clone(),
            stats: self.stats.inner.clone(),
            // Only read-write transactions conflict on the rows they write; reads pass.
            limit: self.limit.clone().filter(|_| mode == TxMode::ReadWrite),
            commit_policy: self.policy.clone(),
            retry_policy: RetryPolicy::new(&self.config),
            parts,
            mode,
            started: Instant::now(),
        }
    }

    /// Shares the stats of `other`, so several layers (one per route, say) count together.
    pub fn stats_from<Q>(mut self, other: &TxLayer<DB, Q>) -> Self {
        self.stats = other.stats.clone();
        self
    }

    /// The layer's statistics handle (shared by every service the layer makes).
    pub fn stats(&self) -> TxStats {
        self.stats.clone()
    }

    /// The settings.
    pub fn config(&self) -> &TxConfig {
        &self.config
    }

    /// The primary pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// The replica pool, if [`replica`](TxLayer::replica) set one.
    pub fn replica_pool(&self) -> Option<&Pool<DB>> {
        self.replica.as_ref()
    }
}

impl<DB: TxDatabase, P> Clone for TxLayer<DB, P> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            replica: self.replica.clone(),
            config: self.config.clone(),
            policy: self.policy.clone(),
            stats: self.stats.clone(),
            limit: self.limit.clone(),
        }
    }
}

impl<DB: TxDatabase, P> fmt::Debug for TxLayer<DB, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxLayer")
            .field("config", &self.config)
            .field("replica", &self.replica.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, DB: TxDatabase, P> Layer<S> for TxLayer<DB, P> {
    type Service = Tx<S, DB, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Tx {
            inner,
            layer: self.clone(),
        }
    }
}
