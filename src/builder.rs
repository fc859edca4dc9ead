//! [`ServiceBuilderExt`]: tower-strata's layers as `ServiceBuilder` methods, as tower-http's
//! `ServiceBuilderExt` does for its own.

use tower::ServiceBuilder;
#[cfg(any(feature = "cache", feature = "metrics", feature = "sqlx"))]
use tower::layer::util::Stack;

#[cfg(feature = "cache")]
use crate::cache::CacheLayer;
#[cfg(feature = "purge")]
use crate::purge::{InvalidateLayer, Purger};
#[cfg(feature = "cache")]
use crate::store::Store;

/// Adds tower-strata's layers to a [`ServiceBuilder`] with their defaults. Each method is
/// `.layer(X::new(..))`; build the layer yourself to configure it, and add it with `.layer`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::convert::Infallible;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_strata::ServiceBuilderExt;
/// use tower_strata::store::MemoryStore;
///
/// let svc = ServiceBuilder::new()
///     .cache(MemoryStore::new(16 << 20))
///     .service_fn(|_: http::Request<String>| async {
///         Ok::<_, Infallible>(http::Response::new(String::from("hello")))
///     });
/// let response = svc.oneshot(http::Request::new(String::new())).await?;
/// assert_eq!(response.status(), 200);
/// # Ok(())
/// # }
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed<L> + Sized {
    /// The response cache over `store`, with its defaults: [`CacheLayer::new`].
    #[cfg(feature = "cache")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cache")))]
    fn cache<St: Store>(self, store: St) -> ServiceBuilder<Stack<CacheLayer<St>, L>>;

    /// Invalidation after commit through `purger`, with no rules yet (responses name what
    /// they invalidate with [`Invalidation`](crate::purge::Invalidation) or the
    /// `Cache-Group-Invalidation` header): [`InvalidateLayer::new`].
    #[cfg(feature = "purge")]
    #[cfg_attr(docsrs, doc(cfg(feature = "purge")))]
    fn invalidate(self, purger: Purger) -> ServiceBuilder<Stack<InvalidateLayer, L>>;

    /// Latency metrics into `registry`: [`MetricsLayer::new`](crate::metrics::MetricsLayer::new).
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    fn metrics(
        self,
        registry: crate::metrics::MetricsRegistry,
    ) -> ServiceBuilder<Stack<crate::metrics::MetricsLayer, L>>;

    /// A transaction per request on `pool` with the default [`TxConfig`](crate::tx::TxConfig)
    /// (reads without a transaction, writes in a read-write one):
    /// [`TxLayer::try_new`](crate::tx::TxLayer::try_new), which never refuses the default.
    #[cfg(feature = "sqlx")]
    #[cfg_attr(
        docsrs,
        doc(cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite")))
    )]
    fn transactions<DB: crate::tx::TxDatabase>(
        self,
        pool: sqlx::Pool<DB>,
    ) -> ServiceBuilder<Stack<crate::tx::TxLayer<DB>, L>>;
}

impl<L> sealed::Sealed<L> for ServiceBuilder<L> {}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    #[cfg(feature = "cache")]
    fn cache<St: Store>(self, store: St) -> ServiceBuilder<Stack<CacheLayer<St>, L>> {
        self.layer(CacheLayer::new(store))
    }

    #[cfg(feature = "purge")]
    fn invalidate(self, purger: Purger) -> ServiceBuilder<Stack<InvalidateLayer, L>> {
        self.layer(InvalidateLayer::new(purger))
    }

    #[cfg(feature = "metrics")]
    fn metrics(
        self,
        registry: crate::metrics::MetricsRegistry,
    ) -> ServiceBuilder<Stack<crate::metrics::MetricsLayer, L>> {
        self.layer(crate::metrics::MetricsLayer::new(registry))
    }

    #[cfg(feature = "sqlx")]
    fn transactions<DB: crate::tx::TxDatabase>(
        self,
        pool: sqlx::Pool<DB>,
    ) -> ServiceBuilder<Stack<crate::tx::TxLayer<DB>, L>> {
        let layer = crate::tx::TxLayer::try_new(pool, crate::tx::TxConfig::default())
            // Only settings a database cannot honour are refused (a timeout SQLite lacks,
            // pooling options MySQL has no use for), and the default sets none of them.
            .expect("every database accepts the default TxConfig");
        self.layer(layer)
    }
}

mod sealed {
    pub trait Sealed<T> {}
}

#[cfg(all(
    test,
    feature = "sqlite",
    feature = "memory",
    feature = "metrics",
    feature = "purge"
))]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use tower::{ServiceBuilder, ServiceExt};

    use super::ServiceBuilderExt;
    use crate::metrics::MetricsRegistry;
    use crate::purge::Purger;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn every_shortcut_stacks() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        let store = MemoryStore::new(1 << 20);
        let registry = MetricsRegistry::builder().export(false).build().unwrap();
        let svc = ServiceBuilder::new()
            .metrics(registry.clone())
            .cache(store.clone())
            .transactions(pool)
            .invalidate(Purger::new(store))
            .service_fn(|_: http::Request<_>| async {
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
        let response = svc
            .oneshot(http::Request::new(Full::<Bytes>::default()))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        // A request is counted once its response body has ended.
        response.into_body().collect().await.unwrap();
        let counted: u64 = registry.report().last_minute.iter().map(|r| r.count).sum();
        assert_eq!(counted, 1, "the metrics layer saw the request");
    }
}
