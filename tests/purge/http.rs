//! Purging over HTTP: `PURGE <url>` and `POST /_cache/purge` through `PurgeLayer`, over the
//! memory store and a real Redis, and across two app instances sharing one Redis.
#![cfg(all(feature = "memory", feature = "redis", feature = "axum"))]

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use support::{SilentServer, eventually, redis_url, unique};
use tower::ServiceExt;
use tower_strata::cache::CacheLayer;
use tower_strata::purge::{
    Authorization, BearerToken, PurgeConfigErrorKind, PurgeLayer, Purger, RateLimit,
};
use tower_strata::store::{MemoryStore, RedisStore, Store, StoreExt, TieredStore};

const TOKEN: &str = "s3cret-token";

fn redis_on(url: &str, namespace: &str) -> RedisStore {
    RedisStore::builder(url)
        .namespace(namespace)
        .timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

fn redis() -> RedisStore {
    redis_on(&redis_url(), &unique("purge_http"))
}

/// The same store on the three-master cluster this binary shares.
#[cfg(feature = "redis-cluster")]
fn cluster() -> RedisStore {
    redis_on(&support::cluster::shared().url(), &unique("purge_http"))
}

fn memory() -> MemoryStore {
    MemoryStore::new(16 << 20)
}

/// The app behind the layers: tagged product pages, a page varying on `Accept-Language`, and
/// a GET on the purge path, each answer numbered by the upstream call count.
fn routes(calls: Arc<AtomicUsize>) -> Router {
    let product = {
        let calls = calls.clone();
        move |Path(id): Path<u32>| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                (
                    [
                        ("cache-control", "max-age=300".to_owned()),
                        ("surrogate-key", format!("products product:{id}")),
                    ],
                    format!("p{id}:{n}"),
                )
            }
        }
    };
    let page = {
        let calls = calls.clone();
        move |headers: HeaderMap| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let lang = headers
                .get("accept-language")
                .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned());
            async move {
                (
                    [
                        ("cache-control", "max-age=300"),
                        ("vary", "accept-language"),
                    ],
                    format!("{lang}:{n}"),
                )
            }
        }
    };
    Router::new()
        .route("/products/{id}", get(product))
        .route("/page", get(page))
        .route(
            "/_cache/purge",
            get(|| async { "the app's own GET" }).post(|| async { "the app's own POST" }),
        )
        .route("/echo", axum::routing::post(|| async { "echoed" }))
}

struct App {
    router: Router,
    calls: Arc<AtomicUsize>,
    purger: Purger,
}

fn app_with<St: StoreExt>(store: St, layer: impl FnOnce(PurgeLayer) -> PurgeLayer) -> App {
    app_full(store, |c| c, layer)
}

fn app_full<St: StoreExt>(
    store: St,
    cache: impl FnOnce(CacheLayer<St>) -> CacheLayer<St>,
    layer: impl FnOnce(PurgeLayer) -> PurgeLayer,
) -> App {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = cache(CacheLayer::new(store));
    let purger = cache.purger();
    let stats = purger.purger().clone();
    let purge = layer(PurgeLayer::new(purger, BearerToken::new(TOKEN).unwrap()));
    let router = routes(calls.clone()).layer(cache).layer(purge);
    App {
        router,
        calls,
        purger: stats,
    }
}

fn app<St: StoreExt>(store: St) -> App {
    app_with(store, |l| l.rate_limit(None))
}

fn get_req(uri: &str, lang: Option<&str>) -> Request<Body> {
    let mut builder = Request::get(uri);
    if let Some(lang) = lang {
        builder = builder.header("accept-language", lang);
    }
    builder.body(Body::empty()).unwrap()
}

fn purge_json(body: &str, auth: Option<&str>) -> Request<Body> {
    let mut builder =
        Request::post("http://h/_cache/purge").header("content-type", "application/json");
    if let Some(auth) = auth {
        builder = builder.header("authorization", auth);
    }
    builder.body(Body::from(body.to_owned())).unwrap()
}

fn purge_url(uri: &str, auth: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder().method("PURGE").uri(uri);
    if let Some(auth) = auth {
        builder = builder.header("authorization", auth);
    }
    builder.body(Body::empty()).unwrap()
}

fn bearer() -> Option<&'static str> {
    Some("Bearer s3cret-token")
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
    fn cache_status(&self) -> &str {
        self.headers
            .get("cache-status")
            .map_or("", |v| v.to_str().unwrap())
    }
    /// Served from the store (not from a miss still in flight, whose write may not have
    /// landed).
    fn is_stored_hit(&self) -> bool {
        let status = self.cache_status();
        status.contains("hit") && !status.contains("coalesced")
    }
}

async fn send(app: &App, request: Request<Body>) -> Answer {
    let response =
        tokio::time::timeout(Duration::from_secs(10), app.router.clone().oneshot(request))
            .await
            .expect("answered in time")
            .unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// Requests `uri` until it is a hit (the store write landed).
async fn cached(app: &App, uri: &str, lang: Option<&str>) {
    let hit = eventually(Duration::from_secs(3), || async {
        send(app, get_req(uri, lang)).await.is_stored_hit()
    })
    .await;
    assert!(hit.is_some(), "{uri} {lang:?} got cached");
}

async fn is_hit(app: &App, uri: &str, lang: Option<&str>) -> bool {
    send(app, get_req(uri, lang)).await.is_stored_hit()
}

/// Fills the cache: two products, the page in two languages.
async fn fill(app: &App) {
    cached(app, "http://h/products/1", None).await;
    cached(app, "http://h/products/2", None).await;
    cached(app, "http://h/page", Some("fr")).await;
    cached(app, "http://h/page", Some("de")).await;
}

async fn all_still_cached(app: &App) {
    assert!(is_hit(app, "http://h/products/1", None).await);
    assert!(is_hit(app, "http://h/products/2", None).await);
    assert!(is_hit(app, "http://h/page", Some("fr")).await);
    assert!(is_hit(app, "http://h/page", Some("de")).await);
    assert_eq!(app.purger.stats().entries_purged, 0);
}

macro_rules! on_both_stores {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn memory() {
                super::$name(super::memory()).await;
            }
            #[tokio::test]
            async fn redis() {
                super::$name(super::redis()).await;
            }
            #[cfg(feature = "redis-cluster")]
            #[tokio::test]
            async fn cluster() {
                super::$name(super::cluster()).await;
            }
        }
    };
}

async fn unauthorized_attempts_change_nothing<St: StoreExt>(store: St) {
    let app = app(store);
    fill(&app).await;
    let everything = r#"{"all":true,"tags":["products"]}"#;
    for (auth, status) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("Bearer wrong-token"), StatusCode::FORBIDDEN),
        (Some("Bearer s3cret-toke"), StatusCode::FORBIDDEN),
        (Some("Bearer s3cret-token-and-more"), StatusCode::FORBIDDEN),
        (Some("Basic czNjcmV0LXRva2Vu"), StatusCode::UNAUTHORIZED),
        (Some("s3cret-token"), StatusCode::UNAUTHORIZED),
    ] {
        let answer = send(&app, purge_json(everything, auth)).await;
        assert_eq!(answer.status, status, "{auth:?}: {}", answer.body);
        assert!(answer.json()["error"].is_string());
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(answer.headers["www-authenticate"], "Bearer realm=\"purge\"");
        }
        let answer = send(&app, purge_url("http://h/page", auth)).await;
        assert_eq!(answer.status, status, "PURGE {auth:?}");
    }
    all_still_cached(&app).await;
}
on_both_stores!(unauthorized_attempts_change_nothing);

async fn json_purges_by_tag_key_and_pattern<St: StoreExt>(store: St) {
    let app = app(store);
    fill(&app).await;
    let answer = send(&app, purge_json(r#"{"tags":["product:1"]}"#, bearer())).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let json = answer.json();
    assert_eq!(json["tags"], 1);
    assert_eq!(json["total"], 1);
    assert_eq!(json["soft"], false);
    assert_eq!(answer.headers["content-type"], "application/json");
    assert!(!is_hit(&app, "http://h/products/1", None).await);
    assert!(is_hit(&app, "http://h/products/2", None).await);
    assert!(is_hit(&app, "http://h/page", Some("fr")).await);

    // Store keys as the cache writes them (`c:` + identity), by key and by glob.
    let answer = send(
        &app,
        purge_json(r#"{"keys":["c:GET http://h/products/2"]}"#, bearer()),
    )
    .await;
    assert_eq!(answer.json()["keys"], 1, "{}", answer.body);
    assert!(!is_hit(&app, "http://h/products/2", None).await);

    cached(&app, "http://h/products/1", None).await;
    cached(&app, "http://h/products/2", None).await;
    let answer = send(
        &app,
        purge_json(
            r#"{"patterns":["c:GET http://h/products/*"],"regexes":["^c:GET http://h/none$"]}"#,
            bearer(),
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.json()["patterns"], 2, "{}", answer.body);
    assert!(!is_hit(&app, "http://h/products/1", None).await);
    assert!(!is_hit(&app, "http://h/products/2", None).await);
    assert!(is_hit(&app, "http://h/page", Some("de")).await);
    let stats = app.purger.stats();
    assert_eq!(stats.tag_purges, 1);
    assert_eq!(stats.key_purges, 1);
    assert_eq!(stats.pattern_purges, 2);

    // A regular expression reaches both variants of the page (and nothing else).
    let answer = send(
        &app,
        purge_json(
            r#"{"regexes":["^c:GET http://h/page v:.*=2:(fr|de)$"]}"#,
            bearer(),
        ),
    )
    .await;
    assert_eq!(answer.json()["patterns"], 2, "{}", answer.body);
    assert!(!is_hit(&app, "http://h/page", Some("fr")).await);
}
on_both_stores!(json_purges_by_tag_key_and_pattern);

async fn purge_of_a_url_removes_every_vary_variant<St: StoreExt>(store: St) {
    let app = app(store);
    fill(&app).await;
    cached(&app, "http://h/page", None).await;
    let before = app.calls.load(Ordering::SeqCst);
    let answer = send(&app, purge_url("http://h/page", bearer())).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let json = answer.json();
    assert_eq!(json["purged"], 4, "index and three variants: {json}");
    assert_eq!(json["url"], "http://h/page");
    for lang in [Some("fr"), Some("de"), None] {
        let answer = send(&app, get_req("http://h/page", lang)).await;
        assert!(answer.cache_status().contains("miss"), "{lang:?}");
    }
    assert_eq!(app.calls.load(Ordering::SeqCst), before + 3);
    assert!(is_hit(&app, "http://h/products/1", None).await);

    // Origin-form, with Host: the same key.
    cached(&app, "http://h/products/1", None).await;
    let request = Request::builder()
        .method("PURGE")
        .uri("/products/1")
        .header("host", "h")
        .header("authorization", bearer().unwrap())
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, request).await.json()["purged"], 1);
    assert!(!is_hit(&app, "http://h/products/1", None).await);
}
on_both_stores!(purge_of_a_url_removes_every_vary_variant);

async fn malformed_bodies_get_400_and_purge_nothing<St: StoreExt>(store: St) {
    let app = app(store);
    fill(&app).await;
    for (body, needle) in [
        ("not json", "invalid purge request"),
        (r#"{"tags":"products"}"#, "invalid type"),
        (r#"{"tags":["products"],"flush":true}"#, "unknown field"),
        (r#"{"regexes":["("]}"#, "invalid pattern"),
        (
            r#"{"patterns":["[unclosed"],"tags":["products"]}"#,
            "invalid pattern",
        ),
        (r#"{"soft":true}"#, "names no keys"),
        ("", "invalid purge request"),
    ] {
        let answer = send(&app, purge_json(body, bearer())).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            answer.body
        );
        let message = answer.json()["error"].as_str().unwrap().to_owned();
        assert!(message.contains(needle), "{body}: {message}");
    }
    all_still_cached(&app).await;
}
on_both_stores!(malformed_bodies_get_400_and_purge_nothing);

#[tokio::test]
async fn oversized_bodies_get_413() {
    let app = app_with(memory(), |l| l.rate_limit(None).max_body_size(100));
    fill(&app).await;
    let big = format!(r#"{{"tags":["{}"]}}"#, "x".repeat(200));
    let answer = send(&app, purge_json(&big, bearer())).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Without Content-Length: a streamed body cut at the limit.
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from(big[..60].to_owned())),
        Ok(Bytes::from(big[60..].to_owned())),
    ];
    let streamed = Request::post("http://h/_cache/purge")
        .header("authorization", bearer().unwrap())
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    assert_eq!(
        send(&app, streamed).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    all_still_cached(&app).await;
}

#[tokio::test]
async fn a_body_that_never_comes_gets_408() {
    let app = app_with(memory(), |l| {
        l.rate_limit(None).body_timeout(Duration::from_millis(50))
    });
    let never = futures_util::stream::pending::<Result<Bytes, std::io::Error>>();
    let request = Request::post("http://h/_cache/purge")
        .header("authorization", bearer().unwrap())
        .body(Body::from_stream(never))
        .unwrap();
    assert_eq!(
        send(&app, request).await.status,
        StatusCode::REQUEST_TIMEOUT
    );
}

async fn rate_limited_purges_get_429<St: StoreExt>(store: St) {
    let limit = RateLimit::new(2, 0.01).unwrap();
    let app = app_with(store, |l| l.rate_limit(Some(limit)));
    fill(&app).await;
    for _ in 0..2 {
        let answer = send(&app, purge_json(r#"{"tags":["nothing"]}"#, bearer())).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let answer = send(&app, purge_json(r#"{"tags":["products"]}"#, bearer())).await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = answer.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((90..=100).contains(&retry), "{retry}");
    let answer = send(&app, purge_url("http://h/page", bearer())).await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    // Unauthorized requests are refused before the bucket: they do not use it up, and the
    // limited ones purged nothing.
    let answer = send(&app, purge_json(r#"{"all":true}"#, Some("Bearer nope"))).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    all_still_cached(&app).await;
}
on_both_stores!(rate_limited_purges_get_429);

#[tokio::test(start_paused = true)]
async fn the_bucket_refills() {
    let limit = RateLimit::new(1, 1.0).unwrap();
    let app = app_with(memory(), |l| l.rate_limit(Some(limit)));
    let ok = || purge_json(r#"{"tags":["x"]}"#, bearer());
    assert_eq!(send(&app, ok()).await.status, StatusCode::OK);
    assert_eq!(send(&app, ok()).await.status, StatusCode::TOO_MANY_REQUESTS);
    tokio::time::advance(Duration::from_millis(1001)).await;
    assert_eq!(send(&app, ok()).await.status, StatusCode::OK);
}

#[tokio::test]
async fn everything_else_passes_through_untouched() {
    let app = app(memory());
    let answer = send(&app, get_req("http://h/_cache/purge", None)).await;
    assert_eq!(answer.body, "the app's own GET");
    let request = Request::post("http://h/echo")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(send(&app, request).await.body, "echoed");
    // With the PURGE method off and another path, both reach the app.
    let app = app_with(memory(), |l| l.purge_method(false).path("/admin/purge"));
    let answer = send(&app, purge_json(r#"{"all":true}"#, None)).await;
    assert_eq!(answer.body, "the app's own POST");
    let answer = send(&app, purge_url("http://h/page", bearer())).await;
    assert_eq!(
        answer.status,
        StatusCode::METHOD_NOT_ALLOWED,
        "{}",
        answer.body
    );
}

#[tokio::test]
async fn an_authorizer_decides_and_names_the_principal() {
    let cache = CacheLayer::new(memory());
    let purger = cache.purger();
    let policy = |parts: &http::request::Parts| match parts.headers.get("x-role") {
        Some(role) if role == "editor" => Authorization::allow("editor"),
        Some(_) => Authorization::Forbidden,
        None => Authorization::Unauthenticated,
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let app = App {
        router: routes(calls.clone())
            .layer(cache)
            .layer(PurgeLayer::new(purger.clone(), policy)),
        calls,
        purger: purger.purger().clone(),
    };
    fill(&app).await;
    let with_role = |role: &str| {
        Request::post("http://h/_cache/purge")
            .header("x-role", role)
            .body(Body::from(r#"{"tags":["products"]}"#))
            .unwrap()
    };
    assert_eq!(
        send(&app, with_role("viewer")).await.status,
        StatusCode::FORBIDDEN
    );
    // A valid bearer token means nothing to this policy.
    let answer = send(&app, purge_json(r#"{"tags":["products"]}"#, bearer())).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    all_still_cached(&app).await;
    let answer = send(&app, with_role("editor")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["tags"], 2);
}

#[test]
fn a_bearer_token_that_no_header_could_carry_is_refused() {
    for bad in ["", "two words", "tab\there", "caf\u{e9}"] {
        let err = BearerToken::new(bad).unwrap_err();
        assert_eq!(err.kind(), PurgeConfigErrorKind::Token, "{bad:?}");
    }
    let purger = CacheLayer::new(memory()).purger();
    let _layer = PurgeLayer::new(purger, BearerToken::new("ok").unwrap());
}

#[tokio::test]
async fn a_plain_purger_answers_purge_of_a_url_with_501() {
    let store = Arc::new(memory());
    let layer = PurgeLayer::with_purger(Purger::new(store), BearerToken::new(TOKEN).unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let app = App {
        router: routes(calls.clone()).layer(layer),
        calls,
        purger: Purger::new(memory()),
    };
    let answer = send(&app, purge_url("http://h/page", bearer())).await;
    assert_eq!(answer.status, StatusCode::NOT_IMPLEMENTED);
    let answer = send(&app, purge_json(r#"{"tags":["a"]}"#, bearer())).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn a_failing_store_gets_503_without_panicking() {
    let silent = SilentServer::start();
    let store = RedisStore::builder(silent.url())
        .namespace(unique("silent"))
        .timeout(Duration::from_millis(100))
        .connect_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let app = app(store);
    for request in [
        purge_json(r#"{"tags":["products"]}"#, bearer()),
        purge_url("http://h/page", bearer()),
    ] {
        let answer = send(&app, request).await;
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            answer.body
        );
        assert!(
            answer.json()["error"]
                .as_str()
                .unwrap()
                .contains("unavailable")
        );
    }
    assert!(app.purger.stats().failures >= 1);
}

/// A soft-purged entry is served stale once while one refresh goes upstream, then the
/// refreshed response is served fresh.
async fn served_stale_once_then_refreshed(app: &App, uri: &str, lang: Option<&str>, old: &str) {
    let calls = app.calls.load(Ordering::SeqCst);
    let answer = send(app, get_req(uri, lang)).await;
    assert_eq!(
        answer.cache_status(),
        "tower-strata; hit; detail=stale-while-revalidate",
        "{uri} {lang:?}"
    );
    assert_eq!(answer.body, old, "the stale copy");
    let refreshed = eventually(Duration::from_secs(3), || async {
        let answer = send(app, get_req(uri, lang)).await;
        eprintln!(
            "DEBUG {uri} {lang:?} {} {} calls={}",
            answer.cache_status(),
            answer.body,
            app.calls.load(Ordering::SeqCst)
        );
        answer.is_stored_hit() && !answer.cache_status().contains("stale") && answer.body != old
    })
    .await;
    assert!(refreshed.is_some(), "{uri} {lang:?} refreshed");
    // One refresh at a time per key. A request whose lookup read the stale entry just before
    // the first refresh's write landed, and claims the refresh just after it ended, starts a
    // second one (seen on Redis, whose round trip widens that window); never more.
    let refreshes = app.calls.load(Ordering::SeqCst) - calls;
    assert!(
        (1..=2).contains(&refreshes),
        "{refreshes} refreshes upstream"
    );
}

async fn soft_purge_through_the_endpoint<St: StoreExt>(store: St) {
    let app = app_full(
        store,
        |c| c.stale_while_revalidate(Duration::from_secs(60)),
        |l| l.rate_limit(None),
    );
    fill(&app).await;
    let mut old = Vec::new();
    for (uri, lang) in [
        ("http://h/products/1", None),
        ("http://h/page", Some("fr")),
        ("http://h/page", Some("de")),
    ] {
        old.push(send(&app, get_req(uri, lang)).await.body);
    }

    let answer = send(
        &app,
        purge_json(r#"{"tags":["product:1"],"soft":true}"#, bearer()),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.json()["soft"], true);
    assert_eq!(answer.json()["tags"], 1);
    assert_eq!(app.purger.stats().soft_purges, 1);
    served_stale_once_then_refreshed(&app, "http://h/products/1", None, &old[0]).await;
    assert!(is_hit(&app, "http://h/products/2", None).await, "untouched");

    let request = Request::builder()
        .method("PURGE")
        .uri("http://h/page")
        .header("authorization", bearer().unwrap())
        .header("soft-purge", "1")
        .body(Body::empty())
        .unwrap();
    let answer = send(&app, request).await;
    assert_eq!(answer.json()["soft"], true, "{}", answer.body);
    assert_eq!(answer.json()["purged"], 3, "the index and two variants");
    served_stale_once_then_refreshed(&app, "http://h/page", Some("fr"), &old[1]).await;
    served_stale_once_then_refreshed(&app, "http://h/page", Some("de"), &old[2]).await;
}
on_both_stores!(soft_purge_through_the_endpoint);

// Two app instances, each with its own tiered store (L1 memory + the shared Redis).

fn tiered(namespace: &str) -> TieredStore {
    let l2 = RedisStore::builder(redis_url())
        .namespace(namespace)
        .timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .ping_interval(Duration::from_millis(200))
        .build()
        .unwrap();
    TieredStore::builder(MemoryStore::new(16 << 20), l2)
        .l1_ttl(Some(Duration::from_secs(300)))
        .build()
        .unwrap()
}

async fn serve(router: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });
    addr
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<Bytes>,
>;

async fn call(
    client: &Client,
    request: Request<http_body_util::Full<Bytes>>,
) -> (StatusCode, String, String) {
    let response = tokio::time::timeout(Duration::from_secs(5), client.request(request))
        .await
        .expect("answered in time")
        .unwrap();
    let status = response.status();
    let cache_status = response
        .headers()
        .get("cache-status")
        .map_or(String::new(), |v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        cache_status,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> Request<http_body_util::Full<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .header("host", "shop.test")
        .body(Default::default())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_sent_to_one_instance_reaches_the_other_within_100ms() {
    let ns = unique("two_apps");
    let (store_a, store_b) = (tiered(&ns), tiered(&ns));
    let ok = eventually(Duration::from_secs(10), || async {
        store_a.l1_in_use() && store_b.l1_in_use()
    })
    .await;
    assert!(ok.is_some(), "backplanes subscribed");
    let (a, b) = (app(store_a), app(store_b.clone()));
    let (addr_a, addr_b) = (serve(a.router.clone()).await, serve(b.router.clone()).await);
    let client: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();

    for (path, tag) in [("/products/1", "product:1"), ("/products/2", "product:2")] {
        // B caches the page (in Redis and its own L1) and serves hits.
        let hit = eventually(Duration::from_secs(3), || async {
            let status = call(&client, http_get(addr_b, path)).await.1;
            status.contains("hit") && !status.contains("coalesced")
        })
        .await;
        assert!(hit.is_some(), "B caches {path}");
        let key = format!("c:GET http://shop.test{path}");
        let in_l1 = eventually(Duration::from_secs(2), || async {
            store_b.l1().get(&key).await.unwrap().is_some()
        })
        .await;
        assert!(in_l1.is_some(), "B's L1 holds {key}");

        let purge = if tag == "product:1" {
            Request::post(format!("http://{addr_a}/_cache/purge"))
                .header("authorization", bearer().unwrap())
                .body(http_body_util::Full::new(Bytes::from(format!(
                    r#"{{"tags":["{tag}"]}}"#
                ))))
                .unwrap()
        } else {
            Request::builder()
                .method("PURGE")
                .uri(format!("http://{addr_a}{path}"))
                .header("host", "shop.test")
                .header("authorization", bearer().unwrap())
                .body(Default::default())
                .unwrap()
        };
        let (status, _, body) = call(&client, purge).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains(r#":1"#), "one entry purged: {body}");
        let seen = eventually(Duration::from_millis(100), || async {
            store_b.l1().get(&key).await.unwrap().is_none()
                && !call(&client, http_get(addr_b, path))
                    .await
                    .1
                    .contains("hit")
        })
        .await;
        assert!(seen.is_some(), "B misses {path} within 100 ms of A's purge");
    }
}

/// Collects formatted log lines.
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn every_purge_and_refusal_is_logged_with_who_what_and_how_many() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let app = app(memory());
    fill(&app).await;
    let mut request = purge_json(r#"{"tags":["products"],"soft":true}"#, bearer());
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [192, 0, 2, 7],
            4242,
        ))));
    assert_eq!(send(&app, request).await.status, StatusCode::OK);
    assert_eq!(
        send(&app, purge_url("http://h/page", bearer()))
            .await
            .status,
        StatusCode::OK
    );
    send(&app, purge_json(r#"{"all":true}"#, Some("Bearer nope"))).await;
    let text = logs.text();
    let lines: Vec<&str> = text.lines().collect();
    let tag_line = lines
        .iter()
        .find(|l| l.contains("cache purge") && l.contains("tags=products"))
        .unwrap_or_else(|| panic!("{text}"));
    for needle in [
        "principal=\"bearer\"",
        "peer=\"192.0.2.7:4242\"",
        "purged=2",
        "soft=true",
    ] {
        assert!(tag_line.contains(needle), "{needle} in {tag_line}");
    }
    let url_line = lines
        .iter()
        .find(|l| l.contains("cache purge by URL"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(url_line.contains("url=\"http://h/page\"") && url_line.contains("purged=3"));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("purge refused: forbidden")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_all_with_redis_hung_answers_503_and_the_old_body_never_comes_back() {
    use tower_strata::store::BreakerSettings;
    let redis = support::PrivateRedis::start();
    let l2 = RedisStore::builder(redis.url())
        .namespace(unique("purge_hung"))
        .timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(200))
        .ping_interval(Duration::from_millis(100))
        .breaker(Some(BreakerSettings {
            failures: 3,
            cool_down: Duration::from_millis(300),
        }))
        .build()
        .unwrap();
    let store = TieredStore::try_new(MemoryStore::new(16 << 20), l2).unwrap();
    let up = eventually(Duration::from_secs(5), || async { store.l1_in_use() }).await;
    assert!(up.is_some());
    let app = app(store.clone());
    let old = send(&app, get_req("http://h/products/1", None)).await.body;
    let stored = eventually(Duration::from_secs(5), || async {
        send(&app, get_req("http://h/products/1", None))
            .await
            .is_stored_hit()
    })
    .await;
    assert!(stored.is_some());

    redis.pause();
    let answer = send(&app, purge_json(r#"{"all":true}"#, bearer())).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a purge-all that did not reach Redis is not a success: {}",
        answer.body
    );
    let during = send(&app, get_req("http://h/products/1", None)).await;
    assert_ne!(during.body, old, "the old body is served while Redis hangs");
    redis.resume();
    let replayed = eventually(Duration::from_secs(5), || async {
        store.pending_invalidations().0 == 0
    })
    .await;
    assert!(replayed.is_some(), "the purge-all was never replayed");
    let after = send(&app, get_req("http://h/products/1", None)).await;
    assert_ne!(
        after.body, old,
        "the old body came back once Redis answered"
    );
}
