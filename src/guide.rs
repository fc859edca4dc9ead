//! Guides: how each capability works and what it costs, beyond the API reference. The same
//! texts are in the repository's `docs/` folder; their examples run as doctests.

#[doc = include_str!("../docs/conventions.md")]
pub mod conventions {}

#[doc = include_str!("../docs/store.md")]
pub mod store {}

#[doc = include_str!("../docs/transactions.md")]
pub mod transactions {}

#[doc = include_str!("../docs/cache.md")]
pub mod cache {}

#[doc = include_str!("../docs/purging.md")]
pub mod purging {}

#[doc = include_str!("../docs/warming.md")]
pub mod warming {}

#[doc = include_str!("../docs/metrics.md")]
pub mod metrics {}

#[doc = include_str!("../docs/health.md")]
pub mod health {}

#[doc = include_str!("../docs/dashboard.md")]
pub mod dashboard {}

#[doc = include_str!("../docs/db.md")]
pub mod db {}

#[doc = include_str!("../docs/shop.md")]
pub mod shop {}

#[doc = include_str!("../docs/performance.md")]
pub mod performance {}
