//! Two instances of the cache on one Redis (two `RedisStore`s on one namespace, as two
//! processes would have): a write or a purge on one hides a fill that began before it on the
//! other.
#![cfg(all(feature = "memory", feature = "redis", feature = "purge"))]

use crate::support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_strata::cache::{Cache, CacheLayer};
use tower_strata::store::RedisStore;

type Origin = tower::util::BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

/// One origin for both instances: `GET` reads the value when it starts and answers it
/// `delay` later (a read that began before a write); `PUT` replaces it.
fn origin(delay: Duration) -> (Origin, Arc<AtomicUsize>) {
    let value = Arc::new(Mutex::new("old"));
    let gets = Arc::new(AtomicUsize::new(0));
    let counter = gets.clone();
    let svc = tower::service_fn(move |request: Request<Full<Bytes>>| {
        let value = value.clone();
        let counter = counter.clone();
        async move {
            if request.method() == Method::PUT {
                *value.lock().unwrap() = "new";
                return Ok(Response::new(Full::new(Bytes::from_static(b"written"))));
            }
            counter.fetch_add(1, Ordering::SeqCst);
            let read = *value.lock().unwrap();
            tokio::time::sleep(delay).await;
            let mut response = Response::new(Full::new(Bytes::from(read)));
            response
                .headers_mut()
                .insert("cache-control", "max-age=60".parse().unwrap());
            Ok(response)
        }
    });
    (tower::util::BoxCloneService::new(svc), gets)
}

fn instance(
    namespace: &str,
    origin: Origin,
) -> (Cache<Origin, RedisStore>, CacheLayer<RedisStore>) {
    let store = RedisStore::builder(support::redis_url())
        .namespace(namespace)
        .build()
        .unwrap();
    let layer = CacheLayer::new(store);
    (
        ServiceBuilder::new().layer(layer.clone()).service(origin),
        layer,
    )
}

async fn body(svc: Cache<Origin, RedisStore>, method: Method) -> Bytes {
    let request = Request::builder()
        .method(method)
        .uri("http://h/lw")
        .body(Full::default())
        .unwrap();
    let response = svc.oneshot(request).await.unwrap();
    response.into_body().collect().await.unwrap().to_bytes()
}

/// B starts a slow GET; A changes the page (by `change`) while it runs; then neither may
/// serve B's pre-change body.
async fn a_late_fill_on_one_instance_does_not_undo(change: &str) {
    let namespace = support::unique("instances");
    let (origin, gets) = origin(Duration::from_millis(400));
    let (a, a_layer) = instance(&namespace, origin.clone());
    let (b, _) = instance(&namespace, origin.clone());

    let fill = tokio::spawn({
        let b = b.clone();
        async move { body(b, Method::GET).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    match change {
        "PUT" => assert_eq!(body(a.clone(), Method::PUT).await, Bytes::from("written")),
        "PURGE" => {
            // The data changes behind the cache (another service, a migration), and the app
            // purges the page.
            let put = Request::put("http://h/lw").body(Full::default()).unwrap();
            origin.oneshot(put).await.unwrap();
            let purged = a_layer
                .purger()
                .purge_url(&"http://h/lw".parse().unwrap(), &http::HeaderMap::new())
                .await;
            assert!(purged.is_ok(), "{purged:?}");
        }
        _ => unreachable!(),
    }
    assert_eq!(fill.await.unwrap(), Bytes::from("old"), "B's own answer");
    // B's background write has had time to land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        body(a.clone(), Method::GET).await,
        Bytes::from("new"),
        "after {change}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        body(b.clone(), Method::GET).await,
        Bytes::from("new"),
        "after {change}"
    );
    assert_eq!(gets.load(Ordering::SeqCst), 2, "the second fill is shared");
}

#[tokio::test]
async fn a_late_fill_on_one_instance_does_not_undo_a_write_on_another() {
    a_late_fill_on_one_instance_does_not_undo("PUT").await;
}

#[tokio::test]
async fn a_late_fill_on_one_instance_does_not_undo_a_purge_on_another() {
    a_late_fill_on_one_instance_does_not_undo("PURGE").await;
}
