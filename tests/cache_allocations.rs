//! Allocations per memory hit, counted by a global allocator: deterministic, so a regression
//! in the hit path fails here rather than hiding in a noisy benchmark.
#![cfg(feature = "memory")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_strata::cache::CacheLayer;
use tower_strata::store::MemoryStore;

/// Counts the allocations this thread makes while `COUNTING` is on.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; the counters are
// thread-local cells, which allocate nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn count() {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
    });
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The most allocations a plain memory hit may make: the response's header map (its index
/// table and its entries). The key, the decoded record, `Age` and `Cache-Status`, the body
/// and the future cost none.
const MAX_ALLOCATIONS_PER_HIT: usize = 2;

fn request(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri)
        .header("host", "example.com")
        .header("accept", "*/*")
        .body(Full::default())
        .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn a_memory_hit_allocates_at_most_twice() {
    let origin = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .header("cache-control", "max-age=600")
                .header("content-type", "text/html; charset=utf-8")
                .header("etag", "\"v1\"")
                .body(Full::new(Bytes::from_static(b"<p>hello</p>")))
                .unwrap(),
        )
    });
    let layer = CacheLayer::new(MemoryStore::new(16 << 20));
    let stats = layer.stats();
    let mut svc = ServiceBuilder::new().layer(layer).service(origin);
    // The miss stores; the first hits decode the record and make the second's header values.
    for _ in 0..3 {
        let r = svc.clone().oneshot(request("/products/7")).await.unwrap();
        let _ = r.into_body().collect().await.unwrap();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }
    let mut counts = Vec::new();
    for _ in 0..20 {
        let req = request("/products/7");
        svc.ready().await.unwrap();
        ALLOCATIONS.with(|n| n.set(0));
        COUNTING.with(|on| on.set(true));
        let response = svc.call(req).await.unwrap();
        COUNTING.with(|on| on.set(false));
        counts.push(ALLOCATIONS.with(Cell::get));
        assert!(
            response.headers()["cache-status"]
                .to_str()
                .unwrap()
                .starts_with("tower-strata; hit"),
            "{response:?}"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "<p>hello</p>");
    }
    assert!(stats.hits() >= 22, "{stats:?}");
    let most = *counts.iter().max().unwrap();
    println!("allocations per memory hit: {counts:?}");
    assert!(
        most <= MAX_ALLOCATIONS_PER_HIT,
        "a memory hit allocated {most} times (at most {MAX_ALLOCATIONS_PER_HIT}): {counts:?}"
    );
}
