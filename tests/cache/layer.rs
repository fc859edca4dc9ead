//! The response cache layer over the memory store: every RFC 9111 rule and layer feature.
#![cfg(feature = "memory")]

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tower::{ServiceBuilder, ServiceExt};
use tower_strata::cache::{CacheLayer, CacheOverride, CacheTags, KeyPart};
use tower_strata::store::{MemoryStore, PurgeMode, Store};

use support::cache_http::*;

#[tokio::test]
async fn miss_then_hit_with_age_and_cache_status() {
    let (up, calls) =
        upstream(|n, _| response(200, &[("cache-control", "max-age=60")], format!("v{n}")));
    let svc = layered(CacheLayer::new(store()), up);
    let (r1, b1) = send(&svc, get("http://h/a")).await;
    assert_eq!(status(&r1), "tower-strata; fwd=miss; stored");
    let (r2, b2) = send(&svc, get("http://h/a")).await;
    assert_eq!((b1, b2.clone()), (Bytes::from("v1"), Bytes::from("v1")));
    assert!(
        status(&r2).starts_with("tower-strata; hit"),
        "{}",
        status(&r2)
    );
    assert!(r2.headers().contains_key("age"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn upstream_age_counts_in_age_and_freshness() {
    let (up, calls) =
        upstream(|_, _| response(200, &[("cache-control", "max-age=60"), ("age", "30")], "x"));
    let svc = layered(CacheLayer::new(store()), up);
    send(&svc, get("http://h/a")).await;
    let (r, _) = send(&svc, get("http://h/a")).await;
    let age: u64 = r.headers()["age"].to_str().unwrap().parse().unwrap();
    assert!((30..35).contains(&age), "age {age}");
    // Arrived older than its max-age: stored stale, never served fresh.
    let (up, calls2) =
        upstream(|_, _| response(200, &[("cache-control", "max-age=10"), ("age", "20")], "x"));
    let svc = layered(CacheLayer::new(store()), up);
    send(&svc, get("http://h/a")).await;
    send(&svc, get("http://h/a")).await;
    assert_eq!(calls2.load(Ordering::SeqCst), 2);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

async fn stored_twice(
    headers: &'static [(&'static str, &'static str)],
    layer: CacheLayer<MemoryStore>,
) -> usize {
    let (up, calls) = upstream(move |n, _| response(200, headers, format!("v{n}")));
    let svc = layered(layer, up);
    send(&svc, get("http://h/a")).await;
    let (_, b) = send(&svc, get("http://h/a")).await;
    let n = calls.load(Ordering::SeqCst);
    if n == 2 {
        assert_eq!(b, "v2", "a request that went upstream got its own response");
    }
    n
}

#[tokio::test]
async fn directives_that_forbid_storing() {
    let l = || CacheLayer::new(store());
    assert_eq!(
        stored_twice(&[("cache-control", "no-store, max-age=60")], l()).await,
        2
    );
    assert_eq!(
        stored_twice(&[("cache-control", "private, max-age=60")], l()).await,
        2
    );
    assert_eq!(
        stored_twice(
            &[("cache-control", "max-age=60"), ("set-cookie", "s=1")],
            l()
        )
        .await,
        2
    );
    assert_eq!(
        stored_twice(&[("cache-control", "max-age=60"), ("vary", "*")], l()).await,
        2
    );
    // A targeted field cannot make private data shared.
    assert_eq!(
        stored_twice(
            &[
                ("cache-control", "private"),
                ("cdn-cache-control", "max-age=60")
            ],
            l()
        )
        .await,
        2
    );
    // Nothing said and no Last-Modified: nothing to go on.
    assert_eq!(stored_twice(&[], l()).await, 2);
    // no-cache without validators: cannot be revalidated, so not kept.
    assert_eq!(stored_twice(&[("cache-control", "no-cache")], l()).await, 2);
    // max-age=0 / Expires in the past: stale at once.
    assert_eq!(
        stored_twice(&[("cache-control", "max-age=0")], l()).await,
        2
    );
    assert_eq!(stored_twice(&[("expires", "0")], l()).await, 2);
}

#[tokio::test]
async fn freshness_sources() {
    let l = || CacheLayer::new(store());
    assert_eq!(
        stored_twice(&[("cache-control", "max-age=60")], l()).await,
        1
    );
    assert_eq!(
        stored_twice(&[("cache-control", "s-maxage=60")], l()).await,
        1
    );
    assert_eq!(
        stored_twice(&[("cache-control", "max-age=0, s-maxage=60")], l()).await,
        1
    );
    assert_eq!(
        stored_twice(
            &[
                ("cache-control", "max-age=0"),
                ("cdn-cache-control", "max-age=60")
            ],
            l()
        )
        .await,
        1
    );
    assert_eq!(
        stored_twice(
            &[
                ("cache-control", "max-age=0"),
                ("surrogate-control", "max-age=60")
            ],
            l()
        )
        .await,
        1
    );
    let expires: &'static str = Box::leak(
        httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120))
            .into_boxed_str(),
    );
    let leaked: &'static [(&'static str, &'static str)] =
        Box::leak(Box::new([("expires", expires)]));
    assert_eq!(stored_twice(leaked, l()).await, 1);
    // Heuristic freshness from Last-Modified, on a cacheable-by-default status.
    let lm: &'static str = Box::leak(
        httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(86_400))
            .into_boxed_str(),
    );
    let leaked: &'static [(&'static str, &'static str)] =
        Box::leak(Box::new([("last-modified", lm)]));
    assert_eq!(stored_twice(leaked, l()).await, 1);
    assert_eq!(
        stored_twice(leaked, l().heuristic_freshness(false)).await,
        2
    );
    // Layer policy.
    assert_eq!(
        stored_twice(&[], l().default_ttl(Duration::from_secs(60))).await,
        1
    );
    assert_eq!(
        stored_twice(
            &[("cache-control", "max-age=0")],
            l().override_ttl(Duration::from_secs(60))
        )
        .await,
        1
    );
    assert_eq!(
        stored_twice(
            &[("cache-control", "max-age=60")],
            l().path_prefixes(["/other"]).unwrap()
        )
        .await,
        2
    );
    assert_eq!(
        stored_twice(
            &[("cache-control", "max-age=60")],
            l().path_prefixes(["/a"]).unwrap()
        )
        .await,
        1
    );
}

#[tokio::test]
async fn surrogate_control_is_not_replayed() {
    let (up, _) = upstream(|_, _| response(200, &[("surrogate-control", "max-age=60")], "x"));
    let svc = layered(CacheLayer::new(store()), up);
    send(&svc, get("http://h/a")).await;
    let (r, _) = send(&svc, get("http://h/a")).await;
    assert!(status(&r).contains("hit"));
    assert!(!r.headers().contains_key("surrogate-control"));
}

#[tokio::test]
async fn cacheable_by_default_statuses_only_with_default_ttl() {
    for (code, expected) in [(404, 1), (410, 1), (500, 2), (302, 2)] {
        let (up, calls) = upstream(move |_, _| response(code, &[], "x"));
        let svc = layered(
            CacheLayer::new(store()).default_ttl(Duration::from_secs(60)),
            up,
        );
        send(&svc, get("http://h/a")).await;
        send(&svc, get("http://h/a")).await;
        assert_eq!(calls.load(Ordering::SeqCst), expected, "status {code}");
    }
}

#[tokio::test]
async fn per_response_override() {
    let (up, calls) = upstream(|n, req| {
        let mut r = response(200, &[("cache-control", "no-cache")], format!("v{n}"));
        if req.uri().path() == "/ttl" {
            r.extensions_mut()
                .insert(CacheOverride::ttl(Duration::from_secs(60)));
        } else {
            *r.headers_mut() = HeaderMap::new();
            r.headers_mut()
                .insert("cache-control", "max-age=60".parse().unwrap());
            r.extensions_mut().insert(CacheOverride::no_store());
        }
        r
    });
    let svc = layered(CacheLayer::new(store()), up);
    send(&svc, get("http://h/ttl")).await;
    send(&svc, get("http://h/ttl")).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    send(&svc, get("http://h/none")).await;
    send(&svc, get("http://h/none")).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn authorization_responses_are_never_served_to_another_request() {
    let (up, calls) = upstream(|n, req| {
        let who = req
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        response(
            200,
            &[("cache-control", "max-age=60")],
            format!("{who}:{n}"),
        )
    });
    let svc = layered(CacheLayer::new(store()), up);
    let (_, b) = send(
        &svc,
        with(get("http://h/me"), "authorization", "Bearer alice"),
    )
    .await;
    assert_eq!(b, "Bearer alice:1");
    let (_, b) = send(&svc, get("http://h/me")).await;
    assert_eq!(b, ":2");
    // Bob may get the anonymous (stored) response, never Alice's.
    let (_, b) = send(
        &svc,
        with(get("http://h/me"), "authorization", "Bearer bob"),
    )
    .await;
    assert_eq!(b, ":2");
    // Allowed when public / s-maxage / must-revalidate say so (RFC 9111 §3.5).
    for cc in [
        "public, max-age=60",
        "s-maxage=60",
        "must-revalidate, max-age=60",
    ] {
        let (up, calls) = upstream(move |_, _| response(200, &[("cache-control", cc)], "shared"));
        let svc = layered(CacheLayer::new(store()), up);
        send(&svc, with(get("http://h/p"), "authorization", "Bearer a")).await;
        send(&svc, get("http://h/p")).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{cc}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn set_cookie_responses_are_never_served_to_another_request() {
    let (up, calls) = upstream(|n, _| {
        response(
            200,
            &[
                ("cache-control", "public, max-age=60"),
                ("set-cookie", format!("session={n}").as_str()),
            ],
            format!("{n}"),
        )
    });
    let svc = layered(CacheLayer::new(store()), up);
    let mut seen = Vec::new();
    for _ in 0..5 {
        let (r, b) = send(&svc, get("http://h/login")).await;
        seen.push((r.headers()["set-cookie"].to_str().unwrap().to_owned(), b));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    for (i, (cookie, b)) in seen.iter().enumerate() {
        assert_eq!(cookie, &format!("session={}", i + 1));
        assert_eq!(b, &format!("{}", i + 1));
    }
}

#[tokio::test]
async fn cookies_bypass_unless_the_route_opts_in() {
    let (up, calls) = upstream(|n, req| {
        let c = req
            .headers()
            .get("cookie")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        response(200, &[("cache-control", "max-age=60")], format!("{c}|{n}"))
    });
    let svc = layered(
        CacheLayer::new(store())
            .key_cookies("/i18n/", ["lang"])
            .unwrap(),
        up,
    );
    send(&svc, with(get("http://h/x"), "cookie", "session=a")).await;
    let (r, _) = send(&svc, with(get("http://h/x"), "cookie", "session=a")).await;
    assert_eq!(status(&r), "tower-strata; fwd=bypass");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let (_, fr) = send(
        &svc,
        with(get("http://h/i18n/p"), "cookie", "lang=fr; session=a"),
    )
    .await;
    let (_, fr2) = send(
        &svc,
        with(get("http://h/i18n/p"), "cookie", "session=b; lang=fr"),
    )
    .await;
    let (_, de) = send(&svc, with(get("http://h/i18n/p"), "cookie", "lang=de")).await;
    assert_eq!(fr, fr2);
    assert_ne!(fr, de);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn vary_accept_encoding_keeps_gzip_and_identity_apart() {
    let (up, calls) = upstream(|n, req| {
        let enc = req
            .headers()
            .get("accept-encoding")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or("identity".into());
        response(
            200,
            &[("cache-control", "max-age=60"), ("vary", "Accept-Encoding")],
            format!("{enc}:{n}"),
        )
    });
    let svc = layered(CacheLayer::new(store()), up);
    let gz = || with(get("http://h/a"), "accept-encoding", "gzip");
    let (_, b) = send(&svc, gz()).await;
    assert_eq!(b, "gzip:1");
    let (_, b) = send(&svc, get("http://h/a")).await;
    assert_eq!(b, "identity:2");
    let (r, b) = send(&svc, gz()).await;
    assert_eq!(b, "gzip:1");
    assert!(status(&r).contains("hit"));
    let (_, b) = send(&svc, get("http://h/a")).await;
    assert_eq!(b, "identity:2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn head_is_served_from_a_stored_get() {
    let (up, calls) = upstream(|_, _| response(200, &[("cache-control", "max-age=60")], "hello"));
    let svc = layered(CacheLayer::new(store()), up);
    send(&svc, get("http://h/a")).await;
    let head = Request::head("http://h/a").body(Full::default()).unwrap();
    let (r, b) = send(&svc, head).await;
    assert!(status(&r).contains("hit"));
    assert!(b.is_empty());
    assert_eq!(r.headers()["content-length"], "5");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn conditional_requests_get_304_from_a_hit() {
    let (up, calls) = upstream(|_, _| {
        response(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("etag", "\"v1\""),
                ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ],
            "hello",
        )
    });
    let svc = layered(CacheLayer::new(store()), up);
    send(&svc, get("http://h/a")).await;
    let (r, b) = send(&svc, with(get("http://h/a"), "if-none-match", "\"v1\"")).await;
    assert_eq!(r.status(), 304);
    assert!(b.is_empty());
    assert_eq!(r.headers()["etag"], "\"v1\"");
    let (r, b) = send(&svc, with(get("http://h/a"), "if-none-match", "\"v0\"")).await;
    assert_eq!((r.status().as_u16(), b), (200, Bytes::from("hello")));
    let (r, _) = send(
        &svc,
        with(
            get("http://h/a"),
            "if-modified-since",
            "Tue, 02 Jan 2024 00:00:00 GMT",
        ),
    )
    .await;
    assert_eq!(r.status(), 304);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn range_requests_get_206_from_a_stored_complete_response() {
    let (up, calls) =
        upstream(|_, _| response(200, &[("cache-control", "max-age=60")], "0123456789"));
    let svc = layered(CacheLayer::new(store()), up);
    send(&svc, get("http://h/a")).await;
    let (r, b) = send(&svc, with(get("http://h/a"), "range", "bytes=2-5")).await;
    assert_eq!(r.status(), 206);
    assert_eq!(b, "2345");
    assert_eq!(r.headers()["content-range"], "bytes 2-5/10");
    assert_eq!(r.headers()["content-length"], "4");
    let (r, _) = send(&svc, with(get("http://h/a"), "range", "bytes=20-")).await;
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */10");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn stale_entries_are_revalidated_and_a_304_refreshes_them() {
    let (up, calls) = upstream(|n, req| {
        if n == 1 {
            // Arrives already stale (Age > max-age): the next request must revalidate.
            response(
                200,
                &[
                    ("cache-control", "max-age=1"),
                    ("age", "5"),
                    ("etag", "\"e\""),
                    ("x-version", "1"),
                ],
                "body",
            )
        } else {
            assert_eq!(req.headers()["if-none-match"], "\"e\"");
            response(
                304,
                &[
                    ("cache-control", "max-age=60"),
                    ("etag", "\"e\""),
                    ("x-version", "2"),
                ],
                "",
            )
        }
    });
    let layer = CacheLayer::new(store());
    let stats = layer.stats();
    let svc = layered(layer, up);
    send(&svc, get("http://h/a")).await;
    let (r, b) = send(&svc, get("http://h/a")).await;
    assert_eq!((r.status().as_u16(), b), (200, Bytes::from("body")));
    assert_eq!(status(&r), "tower-strata; fwd=stale; fwd-status=304");
    assert_eq!(r.headers()["x-version"], "2");
    assert_eq!(stats.revalidated(), 1);
    let (r, b) = send(&svc, get("http://h/a")).await;
    assert!(status(&r).contains("hit; ttl="), "{}", status(&r));
    assert_eq!(b, "body");
    assert_eq!(r.headers()["x-version"], "2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // A client's own If-None-Match during revalidation is answered from the refreshed entry.
}

#[tokio::test]
async fn unsafe_methods_invalidate_uri_location_and_content_location_on_the_same_host() {
    let (up, calls) = upstream(|n, req| {
        if req.method() == http::Method::POST {
            response(
                201,
                &[("location", "/b"), ("content-location", "http://other/c")],
                "",
            )
        } else {
            response(200, &[("cache-control", "max-age=60")], format!("{n}"))
        }
    });
    let layer = CacheLayer::new(store());
    let stats = layer.stats();
    let svc = layered(layer, up);
    for p in ["/a", "/b", "/c"] {
        send(&svc, get(&format!("http://h{p}"))).await;
        send(&svc, get(&format!("http://other{p}"))).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    let post = Request::post("http://h/a").body(Full::default()).unwrap();
    send(&svc, post).await;
    assert_eq!(stats.invalidations(), 2);
    let before = calls.load(Ordering::SeqCst);
    send(&svc, get("http://h/a")).await; // invalidated
    send(&svc, get("http://h/b")).await; // Location, same host: invalidated
    send(&svc, get("http://other/c")).await; // other host: kept
    send(&svc, get("http://h/c")).await; // not named: kept
    assert_eq!(calls.load(Ordering::SeqCst) - before, 2);
    // A failed unsafe request invalidates nothing.
    let (up, calls) = upstream(|_, req| {
        if req.method() == http::Method::DELETE {
            response(500, &[], "")
        } else {
            response(200, &[("cache-control", "max-age=60")], "x")
        }
    });
    let svc = layered(CacheLayer::new(store()), up);
    send(&svc, get("http://h/a")).await;
    send(
        &svc,
        Request::delete("http://h/a").body(Full::default()).unwrap(),
    )
    .await;
    send(&svc, get("http://h/a")).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_replayed() {
    let (up, _) = upstream(|_, _| {
        response(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("connection", "x-hop"),
                ("x-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("x-end", "1"),
            ],
            "x",
        )
    });
    let svc = layered(CacheLayer::new(store()), up);
    send(&svc, get("http://h/a")).await;
    let (r, _) = send(&svc, get("http://h/a")).await;
    assert!(status(&r).contains("hit"));
    for h in ["connection", "x-hop", "keep-alive"] {
        assert!(!r.headers().contains_key(h), "{h} replayed");
    }
    assert_eq!(r.headers()["x-end"], "1");
}

#[tokio::test]
async fn keys_separate_hosts_and_normalise_queries() {
    let (up, calls) =
        upstream(|n, _| response(200, &[("cache-control", "max-age=60")], format!("{n}")));
    let svc = layered(
        CacheLayer::new(store())
            .sort_query(true)
            .ignore_query_params(["utm_*"]),
        up,
    );
    let (_, a) = send(&svc, get("http://one/p?b=2&a=1")).await;
    let (_, b) = send(&svc, get("http://two/p?b=2&a=1")).await;
    assert_ne!(a, b);
    let (_, c) = send(&svc, get("http://one/p?a=1&utm_source=x&b=2")).await;
    assert_eq!(a, c);
    // The Host header is used for origin-form URIs.
    let (_, d) = send(&svc, with(get("/p?a=1&b=2"), "host", "two")).await;
    assert_eq!(b, d);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn app_key_part_separates_entries() {
    let (up, calls) =
        upstream(|n, _| response(200, &[("cache-control", "max-age=60")], format!("{n}")));
    let svc = layered(CacheLayer::new(store()), up);
    let tenant = |t: &str| {
        let mut r = get("http://h/a");
        r.extensions_mut().insert(KeyPart::new(t));
        r
    };
    let (_, a) = send(&svc, tenant("a")).await;
    let (_, b) = send(&svc, tenant("b")).await;
    let (_, a2) = send(&svc, tenant("a")).await;
    assert_ne!(a, b);
    assert_eq!(a, a2);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_misses_make_one_upstream_call() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let up = tower::service_fn(move |_req: Req| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, Infallible>(response(200, &[("cache-control", "max-age=60")], "shared"))
        }
    });
    let layer = CacheLayer::new(store());
    let stats = layer.stats();
    let svc = layered(layer, up);
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let svc = svc.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let r = svc.oneshot(get("http://h/cold")).await.unwrap();
            body(r).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "shared");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(stats.coalesced() + stats.hits() >= 999, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_are_released_when_the_response_is_not_storable() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let up = tower::service_fn(move |_req: Req| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, Infallible>(response(
                200,
                &[("cache-control", "private, max-age=60")],
                format!("user{n}"),
            ))
        }
    });
    let svc = layered(CacheLayer::new(store()), up);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            body(svc.oneshot(get("http://h/me")).await.unwrap()).await
        }));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        bodies.push(t.await.unwrap());
    }
    bodies.sort();
    bodies.dedup();
    assert_eq!(
        bodies.len(),
        20,
        "every request got its own private response"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 20);
}

#[tokio::test(start_paused = true)]
async fn coalesced_waiters_give_up_after_the_timeout() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let up = tower::service_fn(move |_req: Req| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n == 1 {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Ok::<_, Infallible>(response(
                200,
                &[("cache-control", "max-age=60")],
                format!("{n}"),
            ))
        }
    });
    let svc = layered(
        CacheLayer::new(store())
            .coalesce_timeout(Duration::from_secs(2))
            .unwrap(),
        up,
    );
    let leader = tokio::spawn(svc.clone().oneshot(get("http://h/slow")));
    tokio::task::yield_now().await;
    let started = tokio::time::Instant::now();
    let r = svc.clone().oneshot(get("http://h/slow")).await.unwrap();
    assert_eq!(body(r).await, "2");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    leader.abort();
}

#[tokio::test(start_paused = true)]
async fn hit_for_pass_sends_later_requests_straight_upstream() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let up = tower::service_fn(move |_req: Req| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n > 1 {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            Ok::<_, Infallible>(response(
                200,
                &[("cache-control", "no-store")],
                format!("{n}"),
            ))
        }
    });
    let svc = layered(
        CacheLayer::new(store())
            .hit_for_pass(Some(Duration::from_secs(60)))
            .unwrap()
            .coalesce_timeout(Duration::from_secs(30))
            .unwrap(),
        up,
    );
    send(&svc, get("http://h/p")).await;
    // Two slow requests at once: with hit-for-pass neither waits behind the other.
    let started = tokio::time::Instant::now();
    let (a, b) = tokio::join!(
        svc.clone().oneshot(get("http://h/p")),
        svc.clone().oneshot(get("http://h/p"))
    );
    let (a, b) = (body(a.unwrap()).await, body(b.unwrap()).await);
    assert_ne!(a, b);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let (counter, gate) = (calls.clone(), release.clone());
    let up = tower::service_fn(move |_req: Req| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let gate = gate.clone();
        async move {
            if n == 1 {
                // Stale on arrival, inside its stale-while-revalidate window.
                return Ok::<_, Infallible>(response(
                    200,
                    &[
                        ("cache-control", "max-age=1, stale-while-revalidate=600"),
                        ("age", "2"),
                    ],
                    "old",
                ));
            }
            // The refresh blocks until the test has sent its requests.
            let _permit = gate.acquire().await.unwrap();
            Ok(response(200, &[("cache-control", "max-age=600")], "new"))
        }
    });
    let layer = CacheLayer::new(store());
    let stats = layer.stats();
    let svc = layered(layer, up);
    send(&svc, get("http://h/a")).await;
    // The store write runs on a worker of its own: let it land before the stale reads.
    let stored =
        support::eventually(Duration::from_secs(5), || async { stats.stores() == 1 }).await;
    assert!(stored.is_some());
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let r = svc.oneshot(get("http://h/a")).await.unwrap();
            (status(&r), body(r).await)
        }));
    }
    for t in tasks {
        let (s, b) = t.await.unwrap();
        assert_eq!(
            b, "old",
            "served stale at once while the refresh is blocked"
        );
        assert_eq!(s, "tower-strata; hit; detail=stale-while-revalidate");
    }
    // The refresh runs on a worker of its own: wait for it to reach upstream.
    support::eventually(Duration::from_secs(5), || async {
        calls.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one background refresh");
    assert_eq!(stats.stale_hits(), 50);
    release.add_permits(100);
    let refreshed = support::eventually(Duration::from_secs(5), || {
        let svc = svc.clone();
        async move { body(svc.oneshot(get("http://h/a")).await.unwrap()).await == "new" }
    })
    .await;
    assert!(refreshed.is_some());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn stale_if_error_serves_stale_on_failure_and_errors_past_the_window() {
    #[derive(Debug)]
    struct Down;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let up = tower::service_fn(move |req: Req| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let path = req.uri().path().to_owned();
        async move {
            match (n, path.as_str()) {
                (1, _) => Ok(response(
                    200,
                    &[
                        ("cache-control", "max-age=1, stale-if-error=600"),
                        ("age", "2"),
                    ],
                    "old",
                )),
                (2, _) => Err(Down),
                (3, _) => Ok(response(503, &[], "down")),
                (4, "/a") => Ok(response(
                    200,
                    &[
                        ("cache-control", "max-age=1, stale-if-error=5"),
                        ("age", "60"),
                        ("etag", "\"x\""),
                    ],
                    "older",
                )),
                _ => Err(Down),
            }
        }
    });
    let svc = ServiceBuilder::new()
        .layer(CacheLayer::new(store()))
        .service(up);
    let first = svc.clone().oneshot(get("http://h/a")).await.unwrap();
    assert_eq!(body(first).await, "old");
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let r = svc.clone().oneshot(get("http://h/a")).await.unwrap();
    assert_eq!(status(&r), "tower-strata; hit; detail=stale-if-error");
    assert_eq!(body(r).await, "old");
    let r = svc.clone().oneshot(get("http://h/a")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(body(r).await, "old");
    // Now stored 55 s past its 5 s stale-if-error window (kept for revalidation by its ETag).
    let r = svc
        .clone()
        .oneshot(with(get("http://h/a"), "cache-control", "no-cache"))
        .await
        .unwrap();
    assert_eq!(body(r).await, "older");
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(svc.clone().oneshot(get("http://h/a")).await.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_covers_upstream_timeouts() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let up = tower::service_fn(move |_req: Req| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n > 1 {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            Ok::<_, Infallible>(response(
                200,
                &[
                    ("cache-control", "max-age=1, stale-if-error=600"),
                    ("age", "2"),
                ],
                "old",
            ))
        }
    });
    let svc = layered(
        CacheLayer::new(store())
            .upstream_timeout(Duration::from_secs(1))
            .unwrap(),
        up,
    );
    send(&svc, get("http://h/a")).await;
    let (r, b) = send(&svc, get("http://h/a")).await;
    assert_eq!(
        (status(&r).as_str(), b),
        (
            "tower-strata; hit; detail=stale-if-error",
            Bytes::from("old")
        )
    );
    // Nothing stale to fall back on: 504.
    let (r, _) = send(&svc, get("http://h/never")).await;
    assert_eq!(r.status(), 504);
}

#[tokio::test(start_paused = true)]
async fn the_upstream_timeout_bounds_every_path_bypasses_and_unsafe_methods_too() {
    let writes = Arc::new(AtomicUsize::new(0));
    let counter = writes.clone();
    // An origin that takes a minute to answer anything.
    let up = tower::service_fn(move |req: Req| {
        let counter = counter.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            if req.method() == http::Method::POST {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            Ok::<_, Infallible>(response(200, &[("cache-control", "max-age=60")], "late"))
        }
    });
    let layer = CacheLayer::new(store())
        .upstream_timeout(Duration::from_secs(1))
        .unwrap();
    let stats = layer.stats();
    let svc = layered(layer, up);
    let bypass = with(get("http://h/a"), "cookie", "session=1");
    let post = Request::post("http://h/a").body(Full::default()).unwrap();
    for (request, what) in [
        (get("http://h/a"), "a miss"),
        (bypass, "a bypass"),
        (post, "an unsafe method"),
    ] {
        let started = tokio::time::Instant::now();
        let (r, _) = send(&svc, request).await;
        assert_eq!(r.status(), 504, "{what}");
        assert_eq!(
            status(&r),
            "tower-strata; fwd=miss; detail=timeout",
            "{what}"
        );
        assert!(started.elapsed() < Duration::from_secs(2), "{what}");
    }
    assert_eq!(stats.misses(), 3, "each counted once");
    // The unsafe request's call still ran to its end.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(writes.load(Ordering::SeqCst), 1);
}

/// Live bytes of chunks the upstream produced and someone still holds.
struct Tracked {
    data: Vec<u8>,
    live: Arc<std::sync::atomic::AtomicUsize>,
}
impl AsRef<[u8]> for Tracked {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}
impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.fetch_sub(self.data.len(), Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_50_mib_streamed_body_passes_through_without_being_buffered_or_stored() {
    const CHUNK: usize = 64 * 1024;
    const TOTAL: usize = 50 * 1024 * 1024;
    let live = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let (l, p, c) = (live.clone(), peak.clone(), calls.clone());
    let up = tower::service_fn(move |_req: Req| {
        c.fetch_add(1, Ordering::SeqCst);
        let (live, peak) = (l.clone(), p.clone());
        let chunks = futures_util::stream::iter(0..TOTAL / CHUNK).map(move |_| {
            let now = live.fetch_add(CHUNK, Ordering::SeqCst) + CHUNK;
            peak.fetch_max(now, Ordering::SeqCst);
            Ok::<_, Infallible>(Frame::data(Bytes::from_owner(Tracked {
                data: vec![7u8; CHUNK],
                live: live.clone(),
            })))
        });
        let mut r = Response::new(StreamBody::new(chunks));
        r.headers_mut()
            .insert("cache-control", "max-age=60".parse().unwrap());
        async move { Ok::<_, Infallible>(r) }
    });
    use futures_util::StreamExt;
    let svc = ServiceBuilder::new()
        .layer(CacheLayer::new(store()))
        .service(up);
    let r = svc.clone().oneshot(get("http://h/big")).await.unwrap();
    let mut b = r.into_body();
    let mut total = 0;
    while let Some(frame) = b.frame().await {
        total += frame.unwrap().into_data().unwrap().len();
    }
    assert_eq!(total, TOTAL);
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        peak <= 2 * 1024 * 1024,
        "the layer held {peak} bytes of a {TOTAL}-byte body"
    );
    assert_eq!(live.load(Ordering::SeqCst), 0);
    tokio::task::yield_now().await;
    let r = svc.clone().oneshot(get("http://h/big")).await.unwrap();
    assert!(!status(&r).contains("hit"));
    drop(r);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "not stored");
}

#[tokio::test]
async fn bodies_over_the_limit_are_not_stored_and_within_it_are() {
    let (up, calls) = upstream(|_, req| {
        let size = if req.uri().path() == "/big" {
            2000
        } else {
            500
        };
        response(200, &[("cache-control", "max-age=60")], vec![1u8; size])
    });
    let svc = layered(CacheLayer::new(store()).max_body_size(1000), up);
    for _ in 0..2 {
        let (_, b) = send(&svc, get("http://h/big")).await;
        assert_eq!(b.len(), 2000);
        let (_, b) = send(&svc, get("http://h/small")).await;
        assert_eq!(b.len(), 500);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn trailers_are_preserved_on_hits() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let up = tower::service_fn(move |_req: Req| {
        c.fetch_add(1, Ordering::SeqCst);
        let mut t = HeaderMap::new();
        t.insert("x-checksum", "abc".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"data"))),
            Ok(Frame::trailers(t)),
        ];
        let mut r = Response::new(StreamBody::new(futures_util::stream::iter(frames)));
        r.headers_mut()
            .insert("cache-control", "max-age=60".parse().unwrap());
        async move { Ok::<_, Infallible>(r) }
    });
    let svc = ServiceBuilder::new()
        .layer(CacheLayer::new(store()))
        .service(up);
    for _ in 0..2 {
        let r = svc.clone().oneshot(get("http://h/t")).await.unwrap();
        let collected = r.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-checksum"], "abc");
        assert_eq!(collected.to_bytes(), "data");
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn tags_come_from_headers_and_extensions_with_limits() {
    let long = "x".repeat(1025);
    let (up, _) = upstream(move |_, _| {
        let mut r = response(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("surrogate-key", format!("a b {long}").as_str()),
                ("cache-tag", "c, d"),
            ],
            "x",
        );
        r.extensions_mut().insert(CacheTags::new(["e"]));
        r
    });
    let mem = store();
    let layer = CacheLayer::new(mem.clone());
    let stats = layer.stats();
    let svc = layered(layer, up);
    let (r, _) = send(&svc, get("http://h/tagged")).await;
    assert_eq!(r.status(), 200, "over-limit tag: response still served");
    assert!(!r.headers().contains_key("surrogate-key") && !r.headers().contains_key("cache-tag"));
    assert_eq!(stats.dropped_tags(), 1);
    let entry = mem.get("c:GET http://h/tagged").await.unwrap().unwrap();
    let mut tags = entry.tags().to_vec();
    tags.sort();
    assert_eq!(tags, ["a", "b", "c", "d", "e"]);
    let (r, _) = send(&svc, get("http://h/tagged")).await;
    assert!(status(&r).contains("hit"));
    assert!(!r.headers().contains_key("surrogate-key"));
    mem.purge_tag("c", PurgeMode::Hard).await.unwrap();
    let (r, _) = send(&svc, get("http://h/tagged")).await;
    assert!(status(&r).contains("miss"));
    // Kept when configured.
    let (up, _) = upstream(|_, _| {
        response(
            200,
            &[("cache-control", "max-age=60"), ("surrogate-key", "a")],
            "x",
        )
    });
    let svc = layered(CacheLayer::new(store()).strip_tag_headers(false), up);
    send(&svc, get("http://h/t")).await;
    let (r, _) = send(&svc, get("http://h/t")).await;
    assert_eq!(r.headers()["surrogate-key"], "a");
}

#[tokio::test]
async fn tag_header_over_16_kib_drops_the_excess_tags() {
    let header: String = (0..3000)
        .map(|i| format!("tag{i:05}"))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(header.len() > 16 * 1024);
    let (up, _) = upstream(move |_, _| {
        response(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("surrogate-key", header.as_str()),
            ],
            "x",
        )
    });
    let mem = MemoryStore::builder()
        .capacity_bytes(64 << 20)
        .limits(tower_strata::store::Limits {
            max_tags: 10_000,
            ..Default::default()
        })
        .build();
    let layer = CacheLayer::new(mem.clone());
    let stats = layer.stats();
    let svc = layered(layer, up);
    let (r, _) = send(&svc, get("http://h/t")).await;
    assert_eq!(r.status(), 200);
    let entry = mem.get("c:GET http://h/t").await.unwrap().unwrap();
    let kept: usize = entry.tags().iter().map(|t| t.len() + 1).sum();
    assert!(kept <= 16 * 1024 + 1 && entry.tags().len() > 1000, "{kept}");
    assert!(stats.dropped_tags() > 0);
}

#[tokio::test]
async fn ttl_jitter_spreads_expiry() {
    let (up, _) = upstream(|_, _| response(200, &[("cache-control", "max-age=100")], "x"));
    let mem = store();
    let svc = layered(
        CacheLayer::new(mem.clone()).ttl_jitter(Duration::from_secs(40)),
        up,
    );
    let mut ttls = std::collections::BTreeSet::new();
    for i in 0..20 {
        send(&svc, get(&format!("http://h/{i}"))).await;
        let e = mem
            .get(&format!("c:GET http://h/{i}"))
            .await
            .unwrap()
            .unwrap();
        let ttl = e.ttl().unwrap();
        assert!(
            ttl > Duration::from_secs(60) && ttl <= Duration::from_secs(100),
            "{ttl:?}"
        );
        ttls.insert(ttl);
    }
    assert!(ttls.len() > 10);
}

#[tokio::test]
async fn cache_status_can_be_turned_off() {
    let (up, _) = upstream(|_, _| response(200, &[("cache-control", "max-age=60")], "x"));
    let svc = layered(CacheLayer::new(store()).cache_status(false), up);
    let (r, _) = send(&svc, get("http://h/a")).await;
    assert!(!r.headers().contains_key("cache-status"));
}

#[tokio::test]
async fn request_no_cache_goes_upstream_and_no_store_is_not_stored() {
    let (up, calls) =
        upstream(|n, _| response(200, &[("cache-control", "max-age=60")], format!("{n}")));
    let svc = layered(CacheLayer::new(store()), up);
    send(&svc, with(get("http://h/a"), "cache-control", "no-store")).await;
    send(&svc, get("http://h/a")).await;
    send(&svc, with(get("http://h/a"), "cache-control", "no-cache")).await;
    let (_, b) = send(&svc, get("http://h/a")).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(b, "3");
}

mod axum_router {
    use super::*;
    use axum::routing::get as get_route;

    #[tokio::test]
    async fn works_in_an_axum_router() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let app = axum::Router::new()
            .route(
                "/p",
                get_route(move || {
                    let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                    async move { ([("cache-control", "max-age=60")], format!("{n}")) }
                }),
            )
            .layer(CacheLayer::new(store()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let mut bodies = Vec::new();
        for _ in 0..3 {
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                client.get(format!("http://{addr}/p").parse().unwrap()),
            )
            .await
            .unwrap()
            .unwrap();
            bodies.push((status(&r), body(r).await));
        }
        assert!(bodies.iter().all(|(_, b)| b == "1"), "{bodies:?}");
        assert!(bodies[2].0.contains("hit"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn router_layer_and_service_builder_accept_the_layer() {
        let layer = CacheLayer::new(store());
        let _router: axum::Router = axum::Router::new()
            .route("/", get_route(|| async { "x" }))
            .layer(layer.clone());
        let _svc =
            ServiceBuilder::new()
                .layer(layer)
                .service_fn(|_r: Request<axum::body::Body>| async {
                    Ok::<_, Infallible>(Response::new(axum::body::Body::empty()))
                });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_writes_land_on_a_multi_thread_runtime() {
    let (up, _) = upstream(|_, _| {
        response(
            200,
            &[("cache-control", "max-age=60"), ("surrogate-key", "a b")],
            "x",
        )
    });
    let layer = CacheLayer::new(store());
    let stats = layer.stats();
    let svc = layered(layer, up);
    send(&svc, get("http://h/a")).await;
    let landed =
        support::eventually(Duration::from_secs(5), || async { stats.stores() == 1 }).await;
    assert!(landed.is_some(), "{stats:?}");
}

#[tokio::test]
async fn invalidation_wins_over_a_store_write_still_in_flight() {
    for coalesce in [true, false] {
        let (up, calls) = upstream(|n, req| {
            if req.method() == http::Method::PUT {
                response(204, &[], "")
            } else {
                response(200, &[("cache-control", "max-age=60")], format!("v{n}"))
            }
        });
        let svc = layered(CacheLayer::new(store()).coalesce(coalesce), up);
        // Read the whole body (the write is spawned but has not run), then invalidate at once.
        let r = svc.clone().oneshot(get("http://h/a")).await.unwrap();
        assert_eq!(body(r).await, "v1");
        let put = Request::put("http://h/a").body(Full::default()).unwrap();
        svc.clone().oneshot(put).await.unwrap();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let (_, b) = send(&svc, get("http://h/a")).await;
        assert_eq!(
            b, "v3",
            "coalesce {coalesce}: the invalidated response came back"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
