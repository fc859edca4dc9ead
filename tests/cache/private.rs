//! The private scope: per-principal entries, never served to another principal or to an
//! anonymous request, their own store, purged by principal.
#![cfg(all(feature = "memory", feature = "cache", feature = "purge"))]

#[allow(unused_imports)] // only its `redis` test uses it
use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use rand::Rng as _;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_strata::cache::{CacheLayer, CacheScope, principal_tag};
use tower_strata::store::{MemoryStore, Store};

type Req = Request<Full<Bytes>>;

/// The origin: a per-user page (`private`) for requests with `Authorization`, a public page
/// for the others; the body names whom it was made for.
fn origin(
    calls: Arc<AtomicUsize>,
    cache_control: &'static str,
) -> impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future = impl Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(move |request: Req| {
        calls.fetch_add(1, Ordering::SeqCst);
        let owner = request
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().trim_start_matches("Bearer ").to_owned());
        let path = request.uri().path().to_owned();
        async move {
            // A little work, so concurrent misses overlap.
            tokio::task::yield_now().await;
            let (cc, owner) = match owner {
                Some(owner) => (cache_control, owner),
                None => ("public, max-age=60", "anonymous".to_owned()),
            };
            let mut response = Response::new(Full::new(Bytes::from(format!("{owner} {path}"))));
            response
                .headers_mut()
                .insert("cache-control", cc.parse().unwrap());
            Ok::<_, Infallible>(response)
        }
    })
}

/// What an auth layer in front of the cache does: the bearer token names the principal.
fn authenticate(mut request: Req) -> Req {
    let user = request
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap().trim_start_matches("Bearer ").to_owned());
    if let Some(user) = user {
        request.extensions_mut().insert(CacheScope::private(user));
    }
    request
}

fn get(path: &str, user: Option<&str>) -> Req {
    let mut builder = Request::get(format!("http://api.example{path}"));
    if let Some(user) = user {
        builder = builder.header("authorization", format!("Bearer {user}"));
    }
    builder.body(Full::default()).unwrap()
}

async fn text(response: Response<tower_strata::cache::CacheBody<Full<Bytes>>>) -> (String, String) {
    let status = response
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (String::from_utf8(body.to_vec()).unwrap(), status)
}

/// Sends `request` to `svc` and returns the body and `Cache-Status` of its answer.
async fn ask<S>(svc: &S, request: Req) -> (String, String)
where
    S: Service<Req, Response = Response<tower_strata::cache::CacheBody<Full<Bytes>>>> + Clone,
    S::Error: std::fmt::Debug,
{
    text(svc.clone().oneshot(request).await.unwrap()).await
}

/// 100 principals and anonymous clients read 30 URLs at random from 16 tasks on a
/// multi-threaded runtime: every body is its requester's, and most are hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_private_entry_is_only_ever_served_to_its_principal() {
    const PRINCIPALS: usize = 100;
    const TASKS: usize = 16;
    const REQUESTS_PER_TASK: usize = 1_000;
    let calls = Arc::new(AtomicUsize::new(0));
    let layer =
        CacheLayer::new(MemoryStore::new(64 << 20)).private_store(MemoryStore::new(64 << 20));
    let stats = layer.stats();
    let svc = ServiceBuilder::new()
        .map_request(authenticate)
        .layer(layer)
        .service(origin(calls.clone(), "private, max-age=60"));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let mut checked = 0;
            for _ in 0..REQUESTS_PER_TASK {
                let (user, path) = {
                    let mut rng = rand::rng();
                    let user = rng.random_range(0..=PRINCIPALS);
                    // One in 101 is anonymous.
                    let user = (user < PRINCIPALS).then(|| format!("user-{user}"));
                    (user, format!("/items/{}", rng.random_range(0..30)))
                };
                let response = svc
                    .clone()
                    .oneshot(get(&path, user.as_deref()))
                    .await
                    .unwrap();
                let (body, status) = text(response).await;
                let owner = user.as_deref().unwrap_or("anonymous");
                assert_eq!(body, format!("{owner} {path}"), "{status}");
                checked += 1;
            }
            checked
        }));
    }
    let mut checked = 0;
    for task in tasks {
        checked += task.await.unwrap();
    }
    assert_eq!(checked, TASKS * REQUESTS_PER_TASK);
    let origin_calls = calls.load(Ordering::SeqCst);
    // At most one fill per (principal or anonymous, URL), and the rest served from the cache.
    assert!(origin_calls <= (PRINCIPALS + 1) * 30, "{origin_calls}");
    assert!(stats.hits() + stats.coalesced() >= (checked - origin_calls) as u64);
    println!(
        "privacy: {checked} requests, {PRINCIPALS} principals + anonymous, 30 URLs, {TASKS} tasks: \
         every body its requester's; {origin_calls} origin calls, {} hits, {} coalesced",
        stats.hits(),
        stats.coalesced()
    );
}

/// Concurrent misses of one URL by different principals are never coalesced together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_of_principals_are_not_coalesced_together() {
    let calls = Arc::new(AtomicUsize::new(0));
    let slow = {
        let inner = origin(calls.clone(), "private, max-age=60");
        tower::service_fn(move |request: Req| {
            let inner = inner.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                inner.oneshot(request).await
            }
        })
    };
    let svc = ServiceBuilder::new()
        .map_request(authenticate)
        .layer(CacheLayer::new(MemoryStore::new(1 << 20)))
        .service(slow);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let user = format!("u{}", i % 10);
            let (body, _) = ask(&svc, get("/me", Some(&user))).await;
            assert_eq!(body, format!("{user} /me"));
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Ten principals, ten fills at most (two requests of one principal may coalesce).
    assert!(calls.load(Ordering::SeqCst) <= 20);
    assert!(calls.load(Ordering::SeqCst) >= 10);
}

#[tokio::test]
async fn what_the_private_scope_stores_and_what_it_never_does() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = CacheLayer::new(MemoryStore::new(1 << 20));
    let scoped = ServiceBuilder::new()
        .map_request(authenticate)
        .layer(layer.clone())
        .service(origin(calls.clone(), "private, max-age=60"));
    // Without the scope (the route did not opt in): a request with credentials is not stored.
    let unscoped = ServiceBuilder::new()
        .layer(layer.clone())
        .service(origin(calls.clone(), "private, max-age=60"));
    for _ in 0..2 {
        let (body, status) = ask(&unscoped, get("/a", Some("eve"))).await;
        assert_eq!(body, "eve /a");
        assert!(status.contains("fwd=miss"), "{status}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // In the scope: `private` with `Authorization` is stored, and served to its principal.
    let (_, first) = ask(&scoped, get("/a", Some("eve"))).await;
    assert!(first.contains("stored"), "{first}");
    let (body, second) = ask(&scoped, get("/a", Some("eve"))).await;
    assert_eq!(body, "eve /a");
    assert!(second.contains("hit"), "{second}");
    // Not to the same principal's request without the scope (no principal in its key).
    let (body, status) = ask(&unscoped, get("/a", Some("eve"))).await;
    assert_eq!(body, "eve /a");
    assert!(status.contains("fwd=miss"), "{status}");
    // A cookie does not bypass the scope: the principal keys it.
    let mut with_cookie = get("/c", Some("eve"));
    with_cookie
        .headers_mut()
        .insert("cookie", "session=abc".parse().unwrap());
    let _ = ask(&scoped, with_cookie).await;
    let mut with_cookie = get("/c", Some("eve"));
    with_cookie
        .headers_mut()
        .insert("cookie", "session=abc".parse().unwrap());
    let (_, status) = ask(&scoped, with_cookie).await;
    assert!(status.contains("hit"), "{status}");

    // `no-store` and `Set-Cookie` are never stored, in the scope too.
    for cc in ["private, no-store", "no-store, max-age=60"] {
        let svc = ServiceBuilder::new()
            .map_request(authenticate)
            .layer(CacheLayer::new(MemoryStore::new(1 << 20)))
            .service(origin(calls.clone(), cc));
        for _ in 0..2 {
            let (_, status) = ask(&svc, get("/n", Some("eve"))).await;
            assert!(
                !status.contains("hit") && !status.contains("stored"),
                "{cc}: {status}"
            );
        }
    }
    let cookie_setter = tower::service_fn(|_request: Req| async {
        let mut response = Response::new(Full::new(Bytes::from_static(b"x")));
        response
            .headers_mut()
            .insert("cache-control", "private, max-age=60".parse().unwrap());
        response
            .headers_mut()
            .insert("set-cookie", "s=1".parse().unwrap());
        Ok::<_, Infallible>(response)
    });
    let svc = ServiceBuilder::new()
        .map_request(authenticate)
        .layer(CacheLayer::new(MemoryStore::new(1 << 20)))
        .service(cookie_setter);
    for _ in 0..2 {
        let (_, status) = ask(&svc, get("/s", Some("eve"))).await;
        assert!(
            !status.contains("hit") && !status.contains("stored"),
            "{status}"
        );
    }
}

/// With a private store, private entries live there: filling it never evicts a shared entry.
#[tokio::test]
async fn the_private_store_is_a_budget_of_its_own() {
    let calls = Arc::new(AtomicUsize::new(0));
    let shared = MemoryStore::new(256 << 10);
    let private = MemoryStore::new(256 << 10);
    let layer = CacheLayer::new(shared.clone()).private_store(private.clone());
    let svc = ServiceBuilder::new()
        .map_request(authenticate)
        .layer(layer)
        .service(origin(calls.clone(), "private, max-age=60"));
    let _ = ask(&svc, get("/home", None)).await;
    // Far more private bytes than either store holds.
    for user in 0..2_000 {
        let path = format!("/big/{user}");
        let _ = text(
            svc.clone()
                .oneshot(get(&path, Some(&format!("u{user}"))))
                .await
                .unwrap(),
        )
        .await;
    }
    tokio::task::yield_now().await;
    let (body, status) = ask(&svc, get("/home", None)).await;
    assert_eq!(body, "anonymous /home");
    assert!(
        status.contains("hit"),
        "the shared entry survived: {status}"
    );
    assert_eq!(
        shared.stats().entries,
        Some(1),
        "no private entry in the shared store"
    );
    assert!(private.stats().entries.unwrap_or(0) > 0);
}

#[tokio::test]
async fn purging_a_principal_removes_its_entries_only() {
    let calls = Arc::new(AtomicUsize::new(0));
    let private = MemoryStore::new(1 << 20);
    let layer = CacheLayer::new(MemoryStore::new(1 << 20)).private_store(private.clone());
    let purger = layer.purger();
    let svc = ServiceBuilder::new()
        .map_request(authenticate)
        .layer(layer)
        .service(origin(calls.clone(), "private, max-age=60"));
    for user in ["alice", "bob"] {
        for path in ["/a", "/b"] {
            let _ = ask(&svc, get(path, Some(user))).await;
        }
    }
    assert_eq!(purger.purge_principal("alice").await.unwrap(), 2);
    let status = |user: &'static str| {
        let svc = svc.clone();
        async move { ask(&svc, get("/a", Some(user))).await.1 }
    };
    assert!(status("alice").await.contains("fwd=miss"));
    assert!(status("bob").await.contains("hit"));
    // The same with a plain tag purge over the store that holds them.
    let purged = tower_strata::purge::Purger::new(private)
        .purge_tags([principal_tag("bob")])
        .await
        .unwrap();
    assert_eq!(purged, 2);
    assert!(status("bob").await.contains("fwd=miss"));
}

/// The cache's purger reaches the private store with every purge of its own: tags, a whole
/// JSON request, everything.
#[tokio::test]
async fn the_cache_purger_purges_the_private_store_too() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = CacheLayer::new(MemoryStore::new(1 << 20)).private_store(MemoryStore::new(1 << 20));
    let purger = layer.purger();
    let svc = ServiceBuilder::new()
        .map_request(authenticate)
        .layer(layer)
        .service(origin(calls.clone(), "private, max-age=60"));
    let status = |path: &'static str, user: Option<&'static str>| {
        let svc = svc.clone();
        async move { ask(&svc, get(path, user)).await.1 }
    };
    for user in [Some("alice"), Some("bob"), None] {
        status("/a", user).await;
        assert!(status("/a", user).await.contains("hit"), "{user:?}");
    }

    assert_eq!(
        purger.purge_tags([principal_tag("alice")]).await.unwrap(),
        1
    );
    assert!(status("/a", Some("alice")).await.contains("fwd=miss"));
    assert!(status("/a", Some("bob")).await.contains("hit"));

    let everything = tower_strata::purge::PurgeRequest {
        all: true,
        ..Default::default()
    };
    let report = purger.purge(&everything).await.unwrap();
    assert!(report.all >= 3, "{report:?}");
    for user in [Some("alice"), Some("bob"), None] {
        assert!(status("/a", user).await.contains("fwd=miss"), "{user:?}");
    }

    assert!(purger.purge_all().await.unwrap() >= 3);
    assert!(status("/a", Some("bob")).await.contains("fwd=miss"));
}

/// A purge the shared purger refuses whole (too many dependants) purges nothing in the
/// private store either: "nothing purged" holds across both stores.
#[tokio::test]
async fn a_purge_refused_whole_leaves_the_private_store_alone() {
    use tower_strata::purge::{PurgeError, Target};

    let calls = Arc::new(AtomicUsize::new(0));
    let layer = CacheLayer::new(MemoryStore::new(1 << 20)).private_store(MemoryStore::new(1 << 20));
    let purger = layer.purger();
    let _ = purger.purger().clone().max_dependants(1);
    purger.purger().depend(Target::tag("a"), Target::tag("x"));
    purger.purger().depend(Target::tag("b"), Target::tag("x"));
    let svc = ServiceBuilder::new()
        .map_request(authenticate)
        .layer(layer)
        .service(origin(calls.clone(), "private, max-age=60"));
    let status = |user: &'static str| {
        let svc = svc.clone();
        async move { ask(&svc, get("/a", Some(user))).await.1 }
    };
    status("alice").await;
    assert!(status("alice").await.contains("hit"));

    let refused = purger
        .purge_tags(["x".to_owned(), principal_tag("alice")])
        .await;
    assert!(
        matches!(refused, Err(PurgeError::TooManyDependants { limit: 1 })),
        "{refused:?}"
    );
    assert!(status("alice").await.contains("hit"), "nothing was purged");
}

/// An unsafe request by a principal invalidates its private entry of the URL and the shared
/// one.
#[tokio::test]
async fn a_principals_write_invalidates_its_entry() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .map_request(authenticate)
        .layer(CacheLayer::new(MemoryStore::new(1 << 20)).private_store(MemoryStore::new(1 << 20)))
        .service(origin(calls.clone(), "private, max-age=60"));
    let _ = ask(&svc, get("/p", Some("alice"))).await;
    let mut post = Request::post("http://api.example/p")
        .header("authorization", "Bearer alice")
        .body(Full::default())
        .unwrap();
    post = authenticate(post);
    let _ = svc.clone().oneshot(post).await.unwrap();
    let (_, status) = ask(&svc, get("/p", Some("alice"))).await;
    assert!(status.contains("fwd=miss"), "{status}");
}

/// On Redis: private entries tagged by principal, purged with a plain tag purge.
#[cfg(feature = "redis")]
#[tokio::test]
async fn a_principal_purges_on_redis() {
    use tower_strata::store::RedisStore;
    let namespace = support::unique("private");
    let store = || {
        RedisStore::builder(support::redis_url())
            .namespace(&namespace)
            .build()
            .unwrap()
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = CacheLayer::new(store());
    let svc = ServiceBuilder::new()
        .map_request(authenticate)
        .layer(layer.clone())
        .service(origin(calls.clone(), "private, max-age=60"));
    for user in ["alice", "bob"] {
        let _ = ask(&svc, get("/r", Some(user))).await;
    }
    let (body, status) = ask(&svc, get("/r", Some("alice"))).await;
    assert_eq!(body, "alice /r");
    assert!(status.contains("hit"), "{status}");
    let (body, _) = ask(&svc, get("/r", None)).await;
    assert_eq!(body, "anonymous /r");
    assert_eq!(layer.purger().purge_principal("alice").await.unwrap(), 1);
    let (_, status) = ask(&svc, get("/r", Some("alice"))).await;
    assert!(status.contains("fwd=miss"), "{status}");
    let (_, status) = ask(&svc, get("/r", Some("bob"))).await;
    assert!(status.contains("hit"), "{status}");
}
