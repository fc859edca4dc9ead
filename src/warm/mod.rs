//! Cache warming: [`Warmer`] sends registered requests through the app's own service (the one
//! with the [`CacheLayer`](crate::cache::CacheLayer) inside it) to fill its cache, at start-up,
//! on an interval and on demand.
//!
//! - `request.rs`: what to warm ([`WarmRequest`], [`IntoWarmRequests`]);
//! - `builder.rs`: [`WarmerBuilder`] and [`WarmConfigError`];
//! - `run.rs`: one run over the service;
//! - `warmer.rs`: [`Warmer`] and its [`WarmHandle`];
//! - `report.rs`: [`WarmReport`] and [`WarmStats`].

use std::time::Duration;

mod builder;
mod report;
mod request;
mod run;
mod warmer;

pub use builder::{WarmConfigError, WarmConfigErrorKind, WarmerBuilder};
pub use report::{WarmReport, WarmStats};
pub use request::{IntoWarmRequests, WarmRequest};
pub use warmer::{WarmHandle, Warmer};

/// Requests in flight at once when [`WarmerBuilder::concurrency`] is not set.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// How long one warm request (until its body has been drained) or one source may take when
/// [`WarmerBuilder::timeout`] is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[cfg(test)]
mod tests;
