//! The gRPC example's stack (`examples/grpc/stack.rs`) in a real tonic server: a cached read is
//! a miss then a hit that opens no transaction, a write commits and purges the product, a refused
//! write rolls back and purges nothing, and the metrics layer sees every call.
#![cfg(all(
    feature = "tonic",
    feature = "sqlite",
    feature = "memory",
    feature = "metrics"
))]

#[allow(dead_code)]
#[path = "../../examples/grpc/stack.rs"]
mod stack;

use std::time::Duration;

use stack::{CatalogServer, Step};
use tonic::Code;
use tower_strata::metrics::Window;

async fn sqlite_pool() -> sqlx::SqlitePool {
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(Duration::from_secs(10))
        .connect("sqlite::memory:")
        .await
        .unwrap()
}

fn row(s: &Step) -> (Result<i64, Code>, u64, u64, u64, u64, u64) {
    (
        s.outcome,
        s.db_reads,
        s.hits,
        s.misses,
        s.committed,
        s.rolled_back,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_shows_miss_hit_commit_purge_and_rollback() {
    let server = CatalogServer::new(sqlite_pool().await).await.unwrap();
    let handles = server.handles();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));

    let steps = tokio::time::timeout(Duration::from_secs(30), stack::demo(addr, &handles))
        .await
        .expect("demo within 30 s")
        .unwrap();
    let rows: Vec<_> = steps.iter().map(row).collect();
    assert_eq!(
        rows,
        [
            // (answer, db reads, hits, misses, committed, rolled back)
            (Ok(12_999), 1, 0, 1, 1, 0), // miss: read in a committed transaction
            (Ok(12_999), 0, 1, 0, 0, 0), // hit: no database, no transaction
            (Ok(9_999), 0, 0, 0, 1, 0),  // write commits, then purges product:1
            (Ok(9_999), 1, 0, 1, 1, 0),  // miss again, with the new price
            (Err(Code::InvalidArgument), 0, 0, 0, 0, 1), // refused: rolled back, no purge
            (Ok(9_999), 0, 1, 0, 0, 0),  // still cached, still the committed price
        ],
        "{steps:#?}"
    );

    let routes = handles.metrics.snapshot(Window::OneMinute);
    let count = |route: &str| {
        routes
            .iter()
            .find(|r| r.route == route)
            .map(|r| (r.count, r.errors))
    };
    assert_eq!(count(stack::GET_PRODUCT), Some((4, 0)), "{routes:#?}");
    assert_eq!(
        count(stack::SET_PRICE),
        Some((2, 0)),
        "INVALID_ARGUMENT is a client error, not a server error"
    );
    let summary = stack::summary(&steps, &handles);
    assert!(summary.contains("GetProduct(1)"), "{summary}");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn missing_products_are_not_found_and_roll_back() {
    let server = CatalogServer::new(sqlite_pool().await).await.unwrap();
    let handles = server.handles();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    let mut client = stack::Client::connect(addr).await.unwrap();
    assert_eq!(
        client.get_product(404).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        client.set_price(404, 1).await.unwrap_err().code(),
        Code::NotFound
    );
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
    let tx = handles.tx.snapshot();
    assert_eq!((tx.committed, tx.rolled_back), (0, 2), "errors roll back");
    assert_eq!(handles.cache.hits(), 0);
}
