//! The programmatic purger: dependencies and URL purges through the response cache, over the
//! memory store and a real Redis.
#![cfg(all(feature = "memory", feature = "redis"))]

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use support::{eventually, redis_url, unique};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_strata::cache::{CacheBody, CacheLayer};
use tower_strata::purge::{PurgeError, Purger, Target};
use tower_strata::store::{MemoryStore, RedisStore, SetOptions, Store, StoreExt};

type Req = Request<Full<Bytes>>;

fn redis() -> RedisStore {
    RedisStore::builder(redis_url())
        .namespace(unique("purge"))
        .timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

/// The same store on the three-master cluster this binary shares.
#[cfg(feature = "redis-cluster")]
fn cluster() -> RedisStore {
    RedisStore::builder(support::cluster::shared().url())
        .namespace(unique("purge"))
        .timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

fn memory() -> MemoryStore {
    MemoryStore::new(16 << 20)
}

async fn present(store: &impl Store, key: &str) -> bool {
    store.get(key).await.unwrap().is_some()
}

async fn dependencies(store: impl StoreExt + Clone) {
    let tagged = |tag: &str| SetOptions::new().tags([tag.to_owned()]);
    store
        .set(
            "/products",
            Bytes::from_static(b"list"),
            &tagged("products"),
        )
        .await
        .unwrap();
    store
        .set(
            "/categories/3",
            Bytes::from_static(b"c3"),
            &tagged("category:3"),
        )
        .await
        .unwrap();
    store
        .set("/home", Bytes::from_static(b"home"), &SetOptions::new())
        .await
        .unwrap();
    store
        .set("/other", Bytes::from_static(b"o"), &tagged("other"))
        .await
        .unwrap();
    let purger = Purger::new(store.clone());
    // category:3 -> products -> /home -> category:3 (a cycle).
    purger.depend(Target::tag("products"), Target::tag("category:3"));
    purger.depend(Target::key("/home"), Target::tag("products"));
    purger.depend(Target::tag("category:3"), Target::key("/home"));
    assert_eq!(purger.purge_tags(["category:3"]).await.unwrap(), 3);
    for key in ["/products", "/categories/3", "/home"] {
        assert!(!present(&store, key).await, "{key} purged");
    }
    assert!(present(&store, "/other").await);
    assert_eq!(purger.stats().dependency_expansions, 2);

    let bounded = purger.clone().max_dependants(1);
    let err = bounded.purge_key("/home").await.unwrap_err();
    assert!(matches!(err, PurgeError::TooManyDependants { limit: 1 }));
}

#[tokio::test]
async fn dependencies_purge_dependants_transitively_memory() {
    dependencies(memory()).await;
}

#[tokio::test]
async fn dependencies_purge_dependants_transitively_redis() {
    dependencies(redis()).await;
}

#[cfg(feature = "redis-cluster")]
#[tokio::test]
async fn dependencies_purge_dependants_transitively_on_a_cluster() {
    dependencies(cluster()).await;
}

/// An upstream answering with `Vary: Accept-Language` and `{lang}:{call}`.
fn upstream() -> (
    impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future = impl Send>
    + Clone
    + Send
    + 'static,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let svc = tower::service_fn(move |req: Req| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let lang = req
            .headers()
            .get("accept-language")
            .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned());
        let vary = req.uri().path() != "/plain";
        let mut response = Response::new(Full::new(Bytes::from(format!("{lang}:{n}"))));
        response
            .headers_mut()
            .insert("cache-control", "max-age=300".parse().unwrap());
        if vary {
            response
                .headers_mut()
                .insert("vary", "accept-language".parse().unwrap());
        }
        async move { Ok::<_, Infallible>(response) }
    });
    (svc, calls)
}

fn get(uri: &str, lang: Option<&str>) -> Req {
    let mut builder = Request::get(uri);
    if let Some(lang) = lang {
        builder = builder.header("accept-language", lang);
    }
    builder.body(Full::default()).unwrap()
}

async fn fetch<S>(svc: &S, req: Req) -> (String, String)
where
    S: Service<Req, Response = Response<CacheBody<Full<Bytes>>>> + Clone,
    S::Error: std::fmt::Debug,
{
    let r = svc.clone().oneshot(req).await.unwrap();
    let status = r
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (String::from_utf8(body.to_vec()).unwrap(), status)
}

/// Sends until the request is a hit (the background store write landed).
async fn cached<S>(svc: &S, uri: &str, lang: Option<&str>)
where
    S: Service<Req, Response = Response<CacheBody<Full<Bytes>>>> + Clone,
    S::Error: std::fmt::Debug,
{
    let hit = eventually(Duration::from_secs(2), || async {
        let status = fetch(svc, get(uri, lang)).await.1;
        // A coalesced hit is served before the store write landed.
        status.contains("hit") && !status.contains("coalesced")
    })
    .await;
    assert!(hit.is_some(), "{uri} {lang:?} cached");
}

async fn url_purge_reaches_every_variant<St: StoreExt + Clone>(store: St) {
    let layer = CacheLayer::new(store).sort_query(true);
    let purger = layer.purger();
    let (up, calls) = upstream();
    let svc = ServiceBuilder::new().layer(layer).service(up);
    let langs = [Some("fr"), Some("de"), None];
    for lang in langs {
        cached(&svc, "http://h/page?b=2&a=1", lang).await;
    }
    cached(&svc, "http://h/plain", None).await;
    cached(&svc, "http://h/keep", Some("fr")).await;
    let before = calls.load(Ordering::SeqCst);

    // Origin-form URI with a Host header and the other query order: the same key.
    let mut headers = HeaderMap::new();
    headers.insert("host", "H".parse().unwrap());
    let uri = "/page?a=1&b=2".parse().unwrap();
    let purged = purger.purge_url(&uri, &headers).await.unwrap();
    assert_eq!(purged, 4, "the variant index and three variants");
    for lang in langs {
        let (_, status) = fetch(&svc, get("http://h/page?a=1&b=2", lang)).await;
        assert!(status.contains("fwd=miss"), "{lang:?}: {status}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), before + 3);

    let purged = purger
        .purge_url(&"http://h/plain".parse().unwrap(), &HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(purged, 1);
    assert!(
        fetch(&svc, get("http://h/plain", None))
            .await
            .1
            .contains("miss")
    );
    // Another URL is untouched.
    assert!(
        fetch(&svc, get("http://h/keep", Some("fr")))
            .await
            .1
            .contains("hit")
    );
}

#[tokio::test]
async fn purge_url_removes_every_vary_variant_memory() {
    url_purge_reaches_every_variant(memory()).await;
}

#[tokio::test]
async fn purge_url_removes_every_vary_variant_redis() {
    url_purge_reaches_every_variant(redis()).await;
}

#[cfg(feature = "redis-cluster")]
#[tokio::test]
async fn purge_url_removes_every_vary_variant_on_a_cluster() {
    url_purge_reaches_every_variant(cluster()).await;
}

/// Without the internal tag, a hard purge of the variant index alone would leave old variants
/// behind, to be found again once another variant rewrites the index.
#[tokio::test]
async fn purged_variants_do_not_come_back_when_the_index_is_rewritten() {
    let layer = CacheLayer::new(memory());
    let purger = layer.purger();
    let (up, calls) = upstream();
    let svc = ServiceBuilder::new().layer(layer).service(up);
    cached(&svc, "http://h/p", Some("fr")).await;
    cached(&svc, "http://h/p", Some("de")).await;
    purger
        .purge_url(&"http://h/p".parse().unwrap(), &HeaderMap::new())
        .await
        .unwrap();
    // de is fetched and stored again, rewriting the index; fr must still be a miss.
    cached(&svc, "http://h/p", Some("de")).await;
    let (body, status) = fetch(&svc, get("http://h/p", Some("fr"))).await;
    assert!(status.contains("miss"), "{status}");
    assert_eq!(body, format!("fr:{}", calls.load(Ordering::SeqCst)));
}
