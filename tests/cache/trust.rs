//! Trust at the edge: what a client spells cannot choose another URL's entry, and ordinary
//! origin behaviour (a `304` naming a new `ETag`) never gives an error. Over real sockets where
//! the client's bytes matter (raw `Host` lines).
#![cfg(all(feature = "memory", feature = "purge", feature = "axum"))]

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{ServiceBuilder, ServiceExt};
use tower_strata::cache::CacheLayer;
use tower_strata::purge::{BearerToken, PurgeLayer};
use tower_strata::store::MemoryStore;

use support::cache_http::{get, response, send, status, upstream, with};

/// An origin that answers every request with its path (cacheable for a minute) and counts
/// its calls.
fn path_origin() -> (
    impl tower::Service<
        Request<Body>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + Sync
    + 'static,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let origin = tower::service_fn(move |request: Request<Body>| {
        counter.fetch_add(1, Ordering::SeqCst);
        let mut response = Response::new(Body::from(request.uri().path().to_owned()));
        response
            .headers_mut()
            .insert("cache-control", "max-age=60".parse().unwrap());
        async move { Ok::<_, Infallible>(response) }
    });
    (origin, calls)
}

/// Serves `service` on a loopback port with axum's server (hyper underneath).
async fn serve<S>(service: S) -> SocketAddr
where
    S: tower::Service<Request<Body>, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Response: axum::response::IntoResponse,
    S::Future: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback_service(service);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Sends `head` (request line and fields, without the final empty line) on a fresh
/// connection, exactly as written, and returns the status and body.
async fn raw(addr: SocketAddr, head: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("{head}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("the server answers")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let code = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test]
async fn a_host_that_spells_a_path_is_refused_and_never_keyed() {
    let (origin, calls) = path_origin();
    let cached = ServiceBuilder::new()
        .layer(CacheLayer::new(MemoryStore::new(1 << 20)))
        .service(origin)
        .map_response(|r| r.map(Body::new));
    let addr = serve(cached).await;
    let port = addr.port();

    // Each of these would be keyed as the client spells it; none may reach the origin.
    for host in [
        format!("Host: 127.0.0.1:{port}/static"),
        format!("Host: 127.0.0.1:{port}?x"),
        format!("Host: 127.0.0.1:{port}#x"),
        format!("Host: evil@127.0.0.1:{port}"),
        "Host: a b".to_owned(),
        "Host: ".to_owned(),
        format!("Host: 127.0.0.1:{port}\r\nHost: other.example"),
    ] {
        let (code, _) = raw(addr, &format!("GET /app.js HTTP/1.1\r\n{host}")).await;
        assert_eq!(code, 400, "{host:?}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the origin saw a bad Host");

    // The URL the first one spelled is the origin's own.
    let (code, body) = raw(
        addr,
        &format!("GET /static/app.js HTTP/1.1\r\nHost: 127.0.0.1:{port}"),
    )
    .await;
    assert_eq!((code, body.as_str()), (200, "/static/app.js"));
    // And a valid spelling of one host shares its entry.
    let (code, body) = raw(
        addr,
        &format!("GET /static/app.js HTTP/1.1\r\nHost: 127.0.0.1.:{port}"),
    )
    .await;
    assert_eq!((code, body.as_str()), (200, "/static/app.js"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn purges_and_invalidations_name_the_normalised_host() {
    let (origin, calls) = path_origin();
    let cache = CacheLayer::new(MemoryStore::new(1 << 20));
    let purge = PurgeLayer::new(cache.purger(), BearerToken::new("t0ken").unwrap());
    let app = ServiceBuilder::new()
        .layer(purge)
        .layer(cache)
        .service(origin);
    let at = |method: &str, host: &str| {
        Request::builder()
            .method(method)
            .uri("/page")
            .header("host", host)
            .header("authorization", "Bearer t0ken")
            .body(Body::empty())
            .unwrap()
    };
    let get = |host: &str| {
        Request::get("/page")
            .header("host", host)
            .body(Body::empty())
            .unwrap()
    };
    let call = |request| {
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let _ = response.into_body().collect().await;
            status
        }
    };
    call(get("example.com")).await;
    call(get("example.com")).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "stored, then a hit");

    // An unsafe request on another spelling of the host invalidates the entry.
    assert_eq!(call(at("POST", "EXAMPLE.com:80")).await, StatusCode::OK);
    let before = calls.load(Ordering::SeqCst);
    call(get("example.com")).await;
    assert_eq!(calls.load(Ordering::SeqCst), before + 1, "invalidated");

    // So does a PURGE.
    call(get("example.com")).await;
    let before = calls.load(Ordering::SeqCst);
    assert_eq!(call(at("PURGE", "Example.COM.:80")).await, StatusCode::OK);
    call(get("example.com")).await;
    assert_eq!(calls.load(Ordering::SeqCst), before + 1, "purged");

    // A PURGE naming no valid host purges nothing and says so.
    assert_eq!(
        call(at("PURGE", "example.com/other")).await,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn a_304_naming_a_new_etag_fetches_the_whole_response_once() {
    // v1 is stored with `ETag: "a"` and is stale at once; the revalidation gets a `304` for
    // `"b"`, which validates nothing: the cache asks again, unconditionally.
    let (origin, calls) = upstream(|n, request| {
        let conditional = request.headers().contains_key("if-none-match");
        match (n, conditional) {
            (1, _) => response(
                200,
                &[("cache-control", "max-age=0"), ("etag", "\"a\"")],
                "v1",
            ),
            (_, true) => response(
                304,
                &[("cache-control", "max-age=60"), ("etag", "\"b\"")],
                "",
            ),
            (_, false) => response(
                200,
                &[("cache-control", "max-age=60"), ("etag", "\"b\"")],
                "v2",
            ),
        }
    });
    let svc = ServiceBuilder::new()
        .layer(CacheLayer::new(MemoryStore::new(1 << 20)))
        .service(origin);
    let (first, body) = send(&svc, get("http://h/e")).await;
    assert_eq!((first.status(), body), (StatusCode::OK, Bytes::from("v1")));

    let (second, body) = send(&svc, get("http://h/e")).await;
    assert_eq!(second.status(), StatusCode::OK, "{}", status(&second));
    assert_eq!(body, Bytes::from("v2"));
    assert_eq!(second.headers()["etag"], "\"b\"");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "stored, 304, then the retry"
    );

    // The retry's answer was stored.
    let (third, body) = send(&svc, get("http://h/e")).await;
    assert!(status(&third).contains("hit"), "{}", status(&third));
    assert_eq!(body, Bytes::from("v2"));
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // A client's own conditional for the new tag is answered from the new entry.
    let (conditional, _) = send(&svc, with(get("http://h/e"), "if-none-match", "\"b\"")).await;
    assert_eq!(conditional.status(), StatusCode::NOT_MODIFIED);
}

/// An origin whose `PUT /d` changes `/d` on a task of its own (as a separate server would: it
/// does not stop when its client leaves) after `delay`; `GET /d` answers the current value,
/// cacheable for a minute, tagged `d`. The flag says the write happened.
fn writing_origin(
    delay: std::time::Duration,
) -> (
    impl tower::Service<
        Request<Body>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + Sync
    + 'static,
    Arc<std::sync::atomic::AtomicBool>,
) {
    let value = Arc::new(std::sync::Mutex::new("old"));
    let written = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = written.clone();
    let origin = tower::service_fn(move |request: Request<Body>| {
        let value = value.clone();
        let flag = flag.clone();
        async move {
            if request.method() == http::Method::PUT {
                let write = tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    *value.lock().unwrap() = "new";
                    flag.store(true, Ordering::SeqCst);
                });
                let _ = write.await;
                return Ok::<_, Infallible>(Response::new(Body::from("written")));
            }
            let mut response = Response::new(Body::from(*value.lock().unwrap()));
            let headers = response.headers_mut();
            headers.insert("cache-control", "max-age=60".parse().unwrap());
            headers.insert("cache-tag", "d".parse().unwrap());
            Ok(response)
        }
    });
    (origin, written)
}

/// Sends `PUT /d` on a raw connection and closes it before the answer.
async fn put_and_hang_up(addr: SocketAddr) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"PUT /d HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    drop(stream);
}

async fn wait_for(flag: &std::sync::atomic::AtomicBool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !flag.load(Ordering::SeqCst) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the write never ran"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The invalidation follows the origin's answer.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_write_whose_client_hangs_up_still_invalidates() {
    let (origin, written) = writing_origin(std::time::Duration::from_millis(300));
    let cached = ServiceBuilder::new()
        .layer(CacheLayer::new(MemoryStore::new(1 << 20)))
        .service(origin)
        .map_response(|r| r.map(Body::new));
    let addr = serve(cached).await;
    let get = || raw(addr, "GET /d HTTP/1.1\r\nHost: h");
    assert_eq!(get().await, (200, "old".to_owned()));
    assert_eq!(get().await, (200, "old".to_owned()), "a hit");

    put_and_hang_up(addr).await;
    wait_for(&written).await;
    assert_eq!(get().await, (200, "new".to_owned()));
}

#[tokio::test]
async fn an_invalidation_rule_fires_when_its_client_hangs_up() {
    use tower_strata::purge::{InvalidateLayer, Purger, Rule};
    let (origin, written) = writing_origin(std::time::Duration::from_millis(300));
    let store = Arc::new(MemoryStore::new(1 << 20));
    // The rule purges the tag `d`; the cache's own invalidation of `PUT /d`'s URL is kept
    // out of the way by putting the write on another path the rule names.
    let invalidate = InvalidateLayer::new(Purger::new(store.clone()))
        .rule(Rule::on([http::Method::PUT], "/d").purge_tags(["d"]))
        .unwrap();
    let stats = invalidate.clone();
    let app = ServiceBuilder::new()
        .map_response(|r: Response<Body>| r)
        .layer(invalidate)
        .service(origin);
    // The cache in front answers GETs; PUTs bypass it to reach only the rule.
    let cache = ServiceBuilder::new()
        .layer(CacheLayer::new(store.clone()))
        .service(app.clone())
        .map_response(|r| r.map(Body::new));
    let front = tower::service_fn(move |request: Request<Body>| {
        let (cache, app) = (cache.clone(), app.clone());
        async move {
            if request.method() == http::Method::PUT {
                app.oneshot(request).await
            } else {
                cache.oneshot(request).await
            }
        }
    });
    let addr = serve(front).await;
    let get = || raw(addr, "GET /d HTTP/1.1\r\nHost: h");
    assert_eq!(get().await, (200, "old".to_owned()));
    assert_eq!(get().await, (200, "old".to_owned()), "a hit");

    put_and_hang_up(addr).await;
    wait_for(&written).await;
    assert_eq!(stats.stats().rule_firings, 1);
    assert_eq!(get().await, (200, "new".to_owned()));
}

#[tokio::test]
async fn a_flood_of_invalidations_neither_stops_storing_nor_leaves_marks() {
    // One slow fill of /slow, and 12,000 successful POSTs to other URLs while it runs: more
    // than the invalidation memory used to hold, after which every fill in flight was
    // silently dropped.
    let release = Arc::new(tokio::sync::Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let (gate, counter) = (release.clone(), calls.clone());
    let origin = tower::service_fn(move |request: Request<Body>| {
        let (gate, counter) = (gate.clone(), counter.clone());
        async move {
            if request.uri().path() == "/slow" {
                counter.fetch_add(1, Ordering::SeqCst);
                gate.notified().await;
            }
            let mut response = Response::new(Body::from("ok"));
            response
                .headers_mut()
                .insert("cache-control", "max-age=60".parse().unwrap());
            Ok::<_, Infallible>(response)
        }
    });
    let store = MemoryStore::new(1 << 20);
    let cache = CacheLayer::new(store.clone());
    let stats = cache.stats();
    let svc = ServiceBuilder::new().layer(cache).service(origin);
    let slow = tokio::spawn({
        let svc = svc.clone();
        async move {
            let request = Request::get("http://h/slow").body(Body::empty()).unwrap();
            let response = svc.oneshot(request).await.unwrap();
            let status = status(&response);
            let _ = response.into_body().collect().await;
            status
        }
    });
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    for i in 0..12_000 {
        let post = Request::post(format!("http://h/posts/{i}"))
            .body(Body::empty())
            .unwrap();
        let response = svc.clone().oneshot(post).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    release.notify_one();
    let answered = slow.await.unwrap();
    assert!(answered.contains("stored"), "{answered}");
    // The write lands in the background.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while stats.stores() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fill was never stored"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let again = Request::get("http://h/slow").body(Body::empty()).unwrap();
    let response = svc.clone().oneshot(again).await.unwrap();
    assert!(status(&response).contains("hit"), "{}", status(&response));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(stats.invalidations(), 12_000);
    // Nothing was stored under those URLs: nothing to hide, so no mark.
    assert_eq!(store.mark_count(), 0);
}

#[tokio::test]
async fn memory_marks_stay_within_their_bound() {
    use tower_strata::store::{PurgeMode, SetOptions, Store};
    // A 1 MiB store keeps at most 1,024 marks.
    let store = MemoryStore::new(1 << 20);
    let old = SetOptions::new()
        .ttl(std::time::Duration::from_secs(60))
        .tags(["t-old"]);
    store
        .set("old", Bytes::from_static(b"o"), &old)
        .await
        .unwrap();
    for i in 0..5_000 {
        store
            .purge_tag(&format!("t{i}"), PurgeMode::Hard)
            .await
            .unwrap();
    }
    assert!(store.mark_count() <= 1_024, "{}", store.mark_count());
    // Entries older than the marks that were folded away count as purged (a miss, never a
    // stale hit); entries written after are kept.
    assert!(store.get("old").await.unwrap().is_none());
    let new = SetOptions::new()
        .ttl(std::time::Duration::from_secs(60))
        .tags(["t0"]);
    store
        .set("new", Bytes::from_static(b"n"), &new)
        .await
        .unwrap();
    assert!(store.get("new").await.unwrap().is_some());
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_marks_live_as_long_as_what_they_hide() {
    use std::time::{Duration, SystemTime};
    use tower_strata::store::{PurgeMode, RedisStore, SetOptions, Store};
    let namespace = support::unique("marks");
    let store = RedisStore::builder(support::redis_url())
        .namespace(&namespace)
        .mark_retention(Duration::from_secs(3))
        .build()
        .unwrap();
    let client = redis::Client::open(support::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pttl = |key: String| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("PTTL")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
                .unwrap()
        }
    };
    let mark = |tag: &str| format!("{namespace}:m:{tag}");

    // A tag with nothing stored: its mark only covers fetches in flight.
    store.purge_tag("empty", PurgeMode::Hard).await.unwrap();
    let ttl = pttl(mark("empty")).await;
    assert!((1..=3_000).contains(&ttl), "{ttl}");

    // A tag with an entry of a minute: the mark hides it for as long as it can live.
    let minute = SetOptions::new()
        .ttl(Duration::from_secs(60))
        .tags(["full"]);
    store
        .set("k", Bytes::from_static(b"v"), &minute)
        .await
        .unwrap();
    store.purge_tag("full", PurgeMode::Hard).await.unwrap();
    let ttl = pttl(mark("full")).await;
    assert!((50_000..=60_000).contains(&ttl), "{ttl}");

    // A fill that began before the purge and lands after it extends the mark to its own
    // lifetime, and stays hidden.
    let before = SystemTime::now() - Duration::from_secs(1);
    let late = SetOptions::new()
        .ttl(Duration::from_secs(120))
        .tags(["empty"])
        .as_of(before);
    store
        .set("late", Bytes::from_static(b"old"), &late)
        .await
        .unwrap();
    let ttl = pttl(mark("empty")).await;
    assert!(ttl > 100_000, "{ttl}");
    assert!(store.get("late").await.unwrap().is_none());
    let _ = redis::cmd("EVAL")
        .arg("for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end")
        .arg(0)
        .arg(format!("{namespace}:*"))
        .query_async::<()>(&mut conn)
        .await;
}

#[tokio::test]
async fn the_service_sees_the_host_the_key_took() {
    // An absolute-form target and another `Host`: the key takes the target's authority
    // (RFC 9112 §3.2.2), so the service must see it too, not the client's `Host`.
    let origin = tower::service_fn(|request: Request<Body>| async move {
        let host = request.headers()["host"].to_str().unwrap().to_owned();
        let mut response = Response::new(Body::from(host));
        response
            .headers_mut()
            .insert("cache-control", "max-age=60".parse().unwrap());
        Ok::<_, Infallible>(response)
    });
    let svc = ServiceBuilder::new()
        .layer(CacheLayer::new(MemoryStore::new(1 << 20)))
        .service(origin);
    let request = Request::get("http://Shop.example:80/x")
        .header("host", "evil.example")
        .body(Body::empty())
        .unwrap();
    let response = svc.clone().oneshot(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, Bytes::from("shop.example"));
}

/// An application sharing the cache's store (its `TypedCache` and `KeyBuilder` keys, the tags
/// its origin sends) never meets the cache's reserved key and tag spaces: it cannot overwrite a
/// cached response, read one as its own value, or tag a response into a user's private space.
#[tokio::test]
async fn an_application_key_is_never_taken_for_a_cache_entry() {
    use tower_strata::store::{KeyBuilder, KeySpace, StoreError, TypedCache, TypedCacheError};

    let store = Arc::new(MemoryStore::new(1 << 20));
    let cache = CacheLayer::new(store.clone());
    let purger = cache.purger();
    let (origin, calls) = upstream(|n, _| {
        response(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("surrogate-key", "products ~principal:alice ~url:0"),
            ],
            format!("origin {n}"),
        )
    });
    let app = ServiceBuilder::new().layer(cache).service(origin);
    let page = "http://h/p";
    let (first, _) = send(&app, get(page)).await;
    assert!(status(&first).contains("stored"), "{}", status(&first));

    // The application's typed access refuses the cache's spaces outright...
    let values = TypedCache::new(store.clone());
    let entry = format!("c:GET {page}");
    assert_eq!(KeySpace::of(&entry), KeySpace::CacheEntry);
    for key in [entry.as_str(), "c#0123", "l:x", "i:x"] {
        assert!(
            matches!(
                values.set(key, &"forged", &Default::default()).await,
                Err(TypedCacheError::Store(StoreError::ReservedKey { .. }))
            ),
            "{key}"
        );
        assert!(values.get::<String>(key).await.is_err(), "{key}");
        assert!(values.delete(key).await.is_err(), "{key}");
    }
    // ...and a key it builds from parts that spell one (`c`, `GET http`, `//h/p` would
    // join into `c:GET http://h/p`) lands in its own space.
    let built = KeyBuilder::new("c").part("GET http").part("//h/p").build();
    assert_eq!(KeySpace::of(&built), KeySpace::Application);
    values
        .set(&built, &"the app's value", &Default::default())
        .await
        .unwrap();
    assert_eq!(
        values.get::<String>(&built).await.unwrap().as_deref(),
        Some("the app's value")
    );
    let (again, body) = send(&app, get(page)).await;
    assert!(status(&again).contains("hit"), "{}", status(&again));
    assert_eq!(
        &body[..],
        b"origin 1",
        "the cached response is the origin's"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // The origin's reserved tags were dropped: purging a user's private entries leaves this
    // shared page alone, while its own tag purges it.
    assert_eq!(purger.purge_principal("alice").await.unwrap(), 0);
    let (still, _) = send(&app, get(page)).await;
    assert!(status(&still).contains("hit"), "{}", status(&still));
    assert_eq!(purger.purge_tags(["products"]).await.unwrap(), 1);
    let (gone, _) = send(&app, get(page)).await;
    assert!(status(&gone).contains("fwd=miss"), "{}", status(&gone));
}
