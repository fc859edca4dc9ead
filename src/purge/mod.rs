//! Purging and invalidation: a [`Purger`] over any store, hard and soft.
//!
//! A [`Purger`] is a cloneable handle that removes (hard) or marks stale (soft) cached entries by
//! key, by tag, by glob or regular-expression pattern, or all of them, and reports how many
//! entries went. On a [`TieredStore`](crate::store::TieredStore) a purge made on one instance
//! reaches every instance's L1 through the store's Redis backplane.

mod purger;

pub use purger::{
    DEFAULT_MAX_DEPENDANTS, PurgeError, PurgeReport, PurgeRequest, PurgeStats, Purger, Target,
};

mod cache;

pub use cache::CachePurger;
