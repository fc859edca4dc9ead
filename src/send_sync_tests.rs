//! Crate-wide checks: every public layer, service, future and body is `Send` (and `Sync`
//! where a server shares it), so it works under multi-threaded Tokio, hyper and tonic.

fn assert_send_sync<T: Send + Sync>() {}
fn assert_send<T: Send>() {}

#[cfg(all(feature = "cache", feature = "memory"))]
#[test]
fn cache_types_are_send_and_sync() {
    use crate::cache::*;
    use crate::store::MemoryStore;
    assert_send_sync::<CacheLayer<MemoryStore>>();
    assert_send_sync::<Cache<tower::util::BoxCloneSyncService<(), (), ()>, MemoryStore>>();
    assert_send::<ResponseFuture<http_body_util::Full<bytes::Bytes>, std::io::Error>>();
    assert_send::<CacheBody<http_body_util::Full<bytes::Bytes>>>();
    assert_send_sync::<CacheStats>();
}

#[cfg(all(feature = "purge", feature = "memory"))]
#[test]
fn purge_types_are_send_and_sync() {
    use crate::purge::*;
    type Inner = tower::util::BoxCloneSyncService<(), (), ()>;
    assert_send_sync::<PurgeLayer>();
    assert_send_sync::<Purge<Inner>>();
    assert_send_sync::<Purger>();
    assert_send_sync::<CachePurger>();
    assert_send::<ResponseFuture<std::future::Ready<()>>>();
    assert_send::<PurgeBody<http_body_util::Full<bytes::Bytes>>>();
}

#[cfg(feature = "sqlite")]
#[test]
fn tx_types_are_send_and_sync() {
    use crate::tx::*;
    type Svc = tower::util::BoxCloneSyncService<
        http::Request<TxBody<String>>,
        http::Response<String>,
        std::convert::Infallible,
    >;
    assert_send_sync::<TxLayer<sqlx::Sqlite>>();
    assert_send_sync::<Tx<Svc, sqlx::Sqlite, DefaultPolicy>>();
    assert_send_sync::<TxHandle<sqlx::Sqlite>>();
    assert_send_sync::<AfterCommit>();
    assert_send_sync::<TxStats>();
    assert_send::<ResponseFuture<String, std::convert::Infallible>>();
    assert_send::<TxResponseBody<String>>();
    assert_send::<TxConn<'static, sqlx::Sqlite>>();
    assert_send_sync::<TxStatsSnapshot>();
}
