//! Purging and invalidation: a [`Purger`] over any store, hard and soft.
//!
//! A [`Purger`] is a cloneable handle that removes (hard) or marks stale (soft) cached entries by
//! key, by tag, by glob or regular-expression pattern, or all of them, and reports how many
//! entries went. On a [`TieredStore`](crate::store::TieredStore) a purge made on one instance
//! reaches every instance's L1 through the store's Redis backplane.

mod purger;

pub use purger::{PurgeError, PurgeReport, PurgeRequest, PurgeStats, Purger};

mod warm;
pub use warm::{
    DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT, IntoWarmRequests, WarmError, WarmHandle, WarmReport,
    WarmRequest, WarmStats, Warmer, WarmerBuilder,
};
mod bus;
pub mod invalidate;
mod rules;
pub use bus::{BusError, InvalidationBus, InvalidationBusBuilder};
pub use invalidate::{
    CACHE_GROUP_INVALIDATION, Invalidate, InvalidateLayer, InvalidateStats, Invalidation,
    ResponseFuture as InvalidateFuture,
};
pub use rules::{EventRule, Rule, RuleError};
