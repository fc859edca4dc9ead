//! [`TxLayer`], which makes [`Tx`] services.

use std::fmt;
use std::sync::Arc;

use sqlx::Pool;
use tower_layer::Layer;

use super::backend::TxDatabase;
use super::config::TxConfig;
use super::error::ConfigError;
use super::limit::AdaptiveLimit;
use super::policy::{CommitPolicy, DefaultPolicy};
use super::service::Tx;
use super::stats::TxStats;

/// Gives each request a lazily-begun transaction on `pool`, commits or rolls it back from the
/// response and replays the request on retryable errors. See the [module docs](super).
pub struct TxLayer<DB: TxDatabase, P = DefaultPolicy> {
    pub(crate) pool: Pool<DB>,
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
    /// [`ConfigError`] when `config` is nonsensical or asks for what the database cannot do
    /// (a statement timeout on SQLite, say).
    pub fn new(pool: Pool<DB>, config: TxConfig) -> Result<Self, ConfigError> {
        config.validate_common()?;
        DB::validate(&config)?;
        Ok(Self {
            pool,
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
            config: self.config,
            policy: Arc::new(policy),
            stats: self.stats,
            limit: self.limit,
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

    /// The pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }
}

impl<DB: TxDatabase, P> Clone for TxLayer<DB, P> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
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
