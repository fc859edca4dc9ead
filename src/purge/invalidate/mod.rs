//! [`InvalidateLayer`] and its parts; documented in the [purge module](super#invalidation-after-writes).

mod future;
mod header;
mod layer;
mod service;

pub use future::InvalidateFuture;
pub use header::{CACHE_GROUP_INVALIDATION, Invalidation};
pub(crate) use layer::{Counters, run};
pub use layer::{InvalidateLayer, InvalidateStats};
pub use service::Invalidate;
