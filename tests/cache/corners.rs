//! The response cache in the corners: writes and every `Vary` variant, revalidation that the
//! client did not ask for, malformed and absurd headers, credentials on refreshes and gRPC,
//! coalescing per variant, and the RFC 9111 details a plain test suite misses.
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
use tower_strata::cache::{CacheLayer, CacheOverride, GrpcMessage};

use support::cache_http::*;

fn encoding(req: &Req) -> String {
    req.headers()
        .get("accept-encoding")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_else(|| "identity".into())
}

/// An origin for `/p` that varies on `Accept-Encoding`; a successful `method` bumps the
/// version, and GETs answer `version:encoding:call`.
fn versioned_origin(
    method: http::Method,
) -> (
    impl tower::Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future = impl Send>
    + Clone
    + Send
    + 'static,
    Arc<AtomicUsize>,
) {
    let version = Arc::new(AtomicUsize::new(1));
    upstream(move |n, req| {
        if req.method() == method {
            version.fetch_add(1, Ordering::SeqCst);
            return response(200, &[], "");
        }
        let v = version.load(Ordering::SeqCst);
        response(
            200,
            &[
                ("cache-control", "max-age=600"),
                ("vary", "Accept-Encoding"),
            ],
            format!("v{v}:{}:{n}", encoding(req)),
        )
    })
}

fn gz() -> Req {
    with(get("http://h/p"), "accept-encoding", "gzip")
}

fn br() -> Req {
    with(get("http://h/p"), "accept-encoding", "br")
}

/// Fills both variants, runs `write`, then reads gzip (which refills the `Vary` index) and br:
/// neither may be the pre-write body.
async fn assert_write_reaches_every_variant<S, F, Fut>(svc: &S, write: F)
where
    S: tower::Service<Req, Response = Response<tower_strata::cache::CacheBody<Full<Bytes>>>>
        + Clone,
    S::Error: std::fmt::Debug,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (_, b) = send(svc, gz()).await;
    assert!(b.starts_with(b"v1:gzip"), "{b:?}");
    let (_, b) = send(svc, br()).await;
    assert!(b.starts_with(b"v1:br"), "{b:?}");
    let (r, _) = send(svc, br()).await;
    assert!(status(&r).contains("hit"), "both variants are stored");
    write().await;
    let (_, b) = send(svc, gz()).await;
    assert!(!b.starts_with(b"v1:"), "gzip after the write: {b:?}");
    let (r, b) = send(svc, br()).await;
    assert!(
        !b.starts_with(b"v1:"),
        "br after the write was served the old body ({}): {b:?}",
        status(&r)
    );
}

#[tokio::test]
async fn a_put_removes_every_vary_variant_of_the_url() {
    let (up, _) = versioned_origin(http::Method::PUT);
    let svc = layered(CacheLayer::new(store()), up);
    assert_write_reaches_every_variant(&svc, || async {
        let put = Request::put("http://h/p").body(Full::default()).unwrap();
        let (r, _) = send(&svc, put).await;
        assert_eq!(r.status(), 200);
    })
    .await;
}

#[tokio::test]
async fn an_unknown_method_invalidates_like_post() {
    let method = http::Method::from_bytes(b"M-SEARCH").unwrap();
    let (up, _) = versioned_origin(method.clone());
    let svc = layered(CacheLayer::new(store()), up);
    assert_write_reaches_every_variant(&svc, || async {
        let req = Request::builder()
            .method(method.clone())
            .uri("http://h/p")
            .body(Full::default())
            .unwrap();
        send(&svc, req).await;
    })
    .await;
}

#[tokio::test]
async fn a_location_on_the_same_host_removes_every_variant_too() {
    let version = Arc::new(AtomicUsize::new(1));
    let (up, _) = upstream(move |n, req| {
        if req.method() == http::Method::POST {
            version.fetch_add(1, Ordering::SeqCst);
            return response(201, &[("location", "/p")], "");
        }
        let v = version.load(Ordering::SeqCst);
        response(
            200,
            &[
                ("cache-control", "max-age=600"),
                ("vary", "Accept-Encoding"),
            ],
            format!("v{v}:{}:{n}", encoding(req)),
        )
    });
    let svc = layered(CacheLayer::new(store()), up);
    assert_write_reaches_every_variant(&svc, || async {
        let post = Request::post("http://h/collection")
            .body(Full::default())
            .unwrap();
        send(&svc, post).await;
    })
    .await;
}

#[tokio::test]
async fn purger_purge_key_and_the_url_purge_remove_every_variant() {
    for how in ["purge_key", "purge_url", "json keys"] {
        let (up, _) = versioned_origin(http::Method::PUT);
        let layer = CacheLayer::new(store());
        let purger = layer.purger();
        let svc = layered(layer, up);
        // The origin's data changes without the cache seeing the write; the app purges.
        let bump = || {
            let svc = svc.clone();
            async move {
                let put = Request::put("http://other/p")
                    .body(Full::default())
                    .unwrap();
                send(&svc, put).await;
            }
        };
        assert_write_reaches_every_variant(&svc, || async {
            bump().await;
            match how {
                "purge_key" => {
                    purger.purge_key("c:GET http://h/p").await.unwrap();
                }
                "purge_url" => {
                    let uri: http::Uri = "http://h/p".parse().unwrap();
                    purger.purge_url(&uri, &HeaderMap::new()).await.unwrap();
                }
                _ => {
                    let request = tower_strata::purge::PurgeRequest {
                        keys: vec!["c:GET http://h/p".into()],
                        ..Default::default()
                    };
                    purger.purge(&request).await.unwrap();
                }
            }
        })
        .await;
    }
}

#[tokio::test]
async fn a_refresh_that_finds_the_page_uncacheable_removes_every_variant() {
    // Calls 1 and 2 store both variants stale on arrival (inside stale-while-revalidate); call
    // 3 is the background refresh of gzip and finds `no-store`; later calls are cacheable
    // again with a new body.
    let (up, _) = upstream(move |n, req| match n {
        1 | 2 => response(
            200,
            &[
                ("cache-control", "max-age=1, stale-while-revalidate=600"),
                ("age", "2"),
                ("vary", "Accept-Encoding"),
            ],
            format!("v1:{}:{n}", encoding(req)),
        ),
        3 => response(200, &[("cache-control", "no-store")], "private now"),
        _ => response(
            200,
            &[
                ("cache-control", "max-age=600"),
                ("vary", "Accept-Encoding"),
            ],
            format!("v2:{}:{n}", encoding(req)),
        ),
    });
    let svc = layered(CacheLayer::new(store()), up);
    send(&svc, gz()).await;
    send(&svc, br()).await;
    let (r, b) = send(&svc, gz()).await;
    assert!(status(&r).contains("stale-while-revalidate"), "{r:?}");
    assert!(b.starts_with(b"v1:gzip"));
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    // gzip refills the `Vary` index; br must not find its old variant through it.
    let (_, b) = send(&svc, gz()).await;
    assert!(b.starts_with(b"v2:gzip"), "{b:?}");
    let (r, b) = send(&svc, br()).await;
    assert!(
        b.starts_with(b"v2:br"),
        "br was served the old page after it became uncacheable ({}): {b:?}",
        status(&r)
    );
}

#[tokio::test]
async fn a_cancelled_miss_does_not_leave_its_variant_behind() {
    // The gzip miss is in flight (its body not yet read) when a PUT invalidates the URL; its
    // late write must not make the old body readable through the refilled `Vary` index.
    let (up, _) = versioned_origin(http::Method::PUT);
    let svc = layered(CacheLayer::new(store()), up);
    let r = svc.clone().oneshot(gz()).await.unwrap();
    let put = Request::put("http://h/p").body(Full::default()).unwrap();
    send(&svc, put).await;
    assert!(body(r).await.starts_with(b"v1:gzip"));
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    let (_, b) = send(&svc, br()).await;
    assert!(b.starts_with(b"v2:br"), "{b:?}");
    let (r, b) = send(&svc, gz()).await;
    assert!(
        !b.starts_with(b"v1:"),
        "the cancelled miss's late write came back ({})",
        status(&r)
    );
}

/// An origin whose first answer is a stale-on-arrival `200` with an `ETag`, and whose later
/// answers are `304` with `extra` headers.
fn revalidating_origin(
    extra: &'static [(&'static str, &'static str)],
    first: &'static [(&'static str, &'static str)],
) -> (
    impl tower::Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future = impl Send>
    + Clone
    + Send
    + 'static,
    Arc<AtomicUsize>,
) {
    upstream(move |n, req| {
        if n == 1 {
            let mut headers = vec![("etag", "\"e1\"")];
            headers.extend_from_slice(first);
            return response(200, &headers, "the body");
        }
        if req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"e1\"")
        {
            let mut headers = vec![("etag", "\"e1\"")];
            // Only the first revalidation sets a cookie (a sticky-session load balancer).
            headers.extend(extra.iter().filter(|(k, _)| n == 2 || *k != "set-cookie"));
            return response(304, &headers, "");
        }
        response(200, &[("etag", "\"e1\"")], "the body, refetched")
    })
}

#[tokio::test]
async fn an_unconditional_client_never_gets_the_caches_own_304() {
    let stale = &[("cache-control", "max-age=1"), ("age", "5")][..];
    let cases: [(&str, &'static [(&str, &str)]); 3] = [
        (
            "set-cookie",
            &[("cache-control", "max-age=60"), ("set-cookie", "lb=node7")],
        ),
        ("no-store", &[("cache-control", "no-store")]),
        ("private", &[("cache-control", "private, max-age=60")]),
    ];
    for (name, extra) in cases {
        let (up, _) = revalidating_origin(extra, stale);
        let svc = layered(CacheLayer::new(store()), up);
        send(&svc, get("http://h/a")).await;
        let (r, b) = send(&svc, get("http://h/a")).await;
        assert_eq!(r.status(), 200, "{name}: {r:?}");
        assert!(b.starts_with(b"the body"), "{name}: {b:?}");
        if name == "set-cookie" {
            assert_eq!(
                r.headers()["set-cookie"],
                "lb=node7",
                "passed to this client"
            );
            // Never stored: the next client gets no cookie (the origin sends none this time).
            let (r, b) = send(&svc, get("http://h/a")).await;
            assert!(b.starts_with(b"the body"));
            assert!(!r.headers().contains_key("set-cookie"), "{r:?}");
        }
        // A conditional client still gets its 304.
        let conditional = with(get("http://h/a"), "if-none-match", "\"e1\"");
        let (r, _) = send(&svc, conditional).await;
        assert_eq!(r.status(), 304, "{name}");
    }
}

#[tokio::test]
async fn a_304_for_an_override_entry_serves_the_stored_body() {
    let (up, calls) = upstream(|n, req| {
        if n == 1 {
            let mut r = response(200, &[("etag", "\"e1\"")], "overridden");
            r.extensions_mut()
                .insert(CacheOverride::ttl(Duration::ZERO));
            return r;
        }
        assert_eq!(req.headers()["if-none-match"], "\"e1\"");
        response(304, &[("etag", "\"e1\"")], "")
    });
    let svc = layered(CacheLayer::new(store()), up);
    // Stored stale at once (kept for revalidation by its validator), then revalidated.
    send(&svc, get("http://h/a")).await;
    let (r, b) = send(&svc, get("http://h/a")).await;
    assert_eq!(
        (r.status().as_u16(), b),
        (200, Bytes::from("overridden")),
        "{r:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_malformed_cache_control_forbids_storing() {
    let fields = [
        ("cache-control", "max-age=60, x=\"a, private"),
        ("cache-control", "max-age=60, \"private\""),
        ("cache-control", "max-age=60, pri vate"),
        ("cdn-cache-control", "max-age=60, x=\"a, private"),
        ("surrogate-control", "max-age=60, x=\"a"),
    ];
    for (name, value) in fields {
        let (up, calls) = upstream(move |n, _| response(200, &[(name, value)], format!("{n}")));
        let svc = layered(CacheLayer::new(store()), up);
        send(&svc, get("http://h/a")).await;
        let (r, _) = send(&svc, get("http://h/a")).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "{name}: {value} was stored: {r:?}"
        );
    }
    // A well-formed quoted string with commas is fine.
    let (up, calls) = upstream(|n, _| {
        response(
            200,
            &[("cache-control", "max-age=60, x=\"a, \\\"b\\\"\"")],
            format!("{n}"),
        )
    });
    let svc = layered(CacheLayer::new(store()), up);
    send(&svc, get("http://h/a")).await;
    send(&svc, get("http://h/a")).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_malformed_request_cache_control_bypasses() {
    let (up, calls) =
        upstream(|n, _| response(200, &[("cache-control", "max-age=60")], format!("{n}")));
    let layer = CacheLayer::new(store());
    let stats = layer.stats();
    let svc = layered(layer, up);
    send(&svc, get("http://h/a")).await;
    let bad = with(get("http://h/a"), "cache-control", "max-stale=\"1");
    let (r, b) = send(&svc, bad).await;
    assert_eq!(b, "2", "{r:?}");
    assert!(status(&r).contains("bypass"), "{}", status(&r));
    assert_eq!(stats.bypasses(), 1);
    let (_, b) = send(&svc, get("http://h/a")).await;
    assert_eq!(b, "1", "the bypass stored nothing");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn absurd_numbers_in_headers_panic_nothing() {
    // The store write runs in a spawned task, whose panic the runtime would swallow: count the
    // panics of this test's thread (the current-thread runtime polls its tasks here).
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    let this = std::thread::current().name().map(str::to_owned);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name().map(str::to_owned) == this {
            PANICS.fetch_add(1, Ordering::SeqCst);
        }
        previous(info);
    }));
    let cases: [&[(&str, &str)]; 5] = [
        &[
            ("cache-control", "max-age=18446744073709551615"),
            ("vary", "accept"),
            ("etag", "\"x\""),
        ],
        &[
            (
                "cache-control",
                "max-age=99999999999999999999999, stale-while-revalidate=18446744073709551615, stale-if-error=18446744073709551615",
            ),
            ("etag", "\"x\""),
        ],
        &[
            ("cache-control", "max-age=60"),
            ("age", "18446744073709551615"),
        ],
        &[
            ("cache-control", "s-maxage=18446744073709551615"),
            ("age", "18446744073709551615"),
        ],
        &[("expires", "Fri, 31 Dec 9999 23:59:59 GMT")],
    ];
    for headers in cases {
        let (up, _) = upstream(move |_, _| response(200, headers, "x"));
        let svc = layered(
            CacheLayer::new(store())
                .stale_while_revalidate(Duration::MAX)
                .stale_if_error(Duration::MAX)
                .stale_retention(Duration::MAX)
                .ttl_jitter(Duration::MAX),
            up,
        );
        for _ in 0..3 {
            let (r, b) = send(&svc, with(get("http://h/a"), "accept", "text/html")).await;
            assert_eq!(
                (r.status().as_u16(), b),
                (200, Bytes::from("x")),
                "{headers:?}"
            );
        }
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert_eq!(PANICS.load(Ordering::SeqCst), 0, "{headers:?} panicked");
    }
}

#[tokio::test]
async fn delta_seconds_above_2_pow_31_count_as_2_pow_31() {
    let (up, calls) = upstream(|n, _| {
        response(
            200,
            &[("cache-control", "max-age=18446744073709551615")],
            format!("{n}"),
        )
    });
    let svc = layered(CacheLayer::new(store()), up);
    send(&svc, get("http://h/a")).await;
    let (r, b) = send(&svc, get("http://h/a")).await;
    assert_eq!(b, "1", "stored as fresh for 2^31 s: {r:?}");
    let ttl: u64 = status(&r)
        .rsplit("ttl=")
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap();
    assert!(ttl <= 1 << 31 && ttl > (1 << 31) - 10, "{ttl}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn age_is_its_first_member_and_an_invalid_one_is_ignored() {
    // (Age lines, stale at once?) under max-age=600, as the http-tests cache-tests read it.
    let cases: &[(&[&str], bool)] = &[
        (&["abc"], false),
        (&["-1"], false),
        (&["1.5"], false),
        (&["5, 6"], false),
        (&["0, 7200"], false),
        (&["7200, 0"], true),
        (&["0", "7200"], false),
        (&["7200", "0"], true),
        (&["7200;foo=bar"], true),
        (&["2147483648"], true),
    ];
    for &(lines, stale) in cases {
        let (up, calls) = upstream(move |n, _| {
            let mut r = response(200, &[("cache-control", "max-age=600")], format!("{n}"));
            for line in lines {
                r.headers_mut().append("age", line.parse().unwrap());
            }
            r
        });
        let svc = layered(CacheLayer::new(store()), up);
        send(&svc, get("http://h/a")).await;
        send(&svc, get("http://h/a")).await;
        let expected = if stale { 2 } else { 1 };
        assert_eq!(calls.load(Ordering::SeqCst), expected, "Age: {lines:?}");
    }
}

#[tokio::test]
async fn the_background_refresh_sends_no_credentials_and_does_not_evict() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let (up, calls) = upstream(move |n, req| {
        log.lock().unwrap().push(req.headers().clone());
        if req.headers().contains_key("authorization") {
            return response(401, &[], "who are you");
        }
        // The first answer arrives stale, inside its stale-while-revalidate window.
        let age = if n == 1 { "2" } else { "0" };
        response(
            200,
            &[
                ("cache-control", "max-age=1, stale-while-revalidate=600"),
                ("age", age),
                ("vary", "accept-language"),
            ],
            format!("v{n}"),
        )
    });
    let svc = layered(CacheLayer::new(store()), up);
    let fr = || with(get("http://h/a"), "accept-language", "fr");
    send(&svc, fr()).await;
    let junk = with(fr(), "authorization", "Bearer junk");
    let junk = with(junk, "x-forwarded-for", "10.9.9.9");
    let junk = with(junk, "if-none-match", "\"nope\"");
    let (r, b) = send(&svc, junk).await;
    assert_eq!(b, "v1", "{r:?}");
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one refresh went upstream");
    let refresh = seen.lock().unwrap()[1].clone();
    assert!(!refresh.contains_key("authorization"), "{refresh:?}");
    assert_ne!(
        refresh.get("if-none-match").map(|v| v.as_bytes()),
        Some(&b"\"nope\""[..])
    );
    assert!(!refresh.contains_key("x-forwarded-for"), "{refresh:?}");
    assert_eq!(
        refresh["accept-language"], "fr",
        "the variant's selecting header"
    );
    let (r, b) = send(&svc, fr()).await;
    assert_eq!(
        b, "v2",
        "the refresh stored the new page for everyone: {r:?}"
    );
    assert!(status(&r).contains("hit"));
}

#[tokio::test]
async fn waiters_on_another_variant_coalesce_among_themselves() {
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (counter, g) = (calls.clone(), gate.clone());
    let up = tower::service_fn(move |req: Req| {
        counter.fetch_add(1, Ordering::SeqCst);
        let g = g.clone();
        let enc = encoding(&req);
        async move {
            let _permit = g.acquire().await.unwrap();
            Ok::<_, Infallible>(response(
                200,
                &[("cache-control", "max-age=60"), ("vary", "accept-encoding")],
                enc,
            ))
        }
    });
    let svc = layered(CacheLayer::new(store()), up);
    let leader = tokio::spawn({
        let svc = svc.clone();
        async move { body(svc.oneshot(gz()).await.unwrap()).await }
    });
    tokio::task::yield_now().await;
    let mut waiters = Vec::new();
    for _ in 0..40 {
        let svc = svc.clone();
        waiters.push(tokio::spawn(async move {
            body(svc.oneshot(br()).await.unwrap()).await
        }));
    }
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    gate.add_permits(1000);
    assert_eq!(leader.await.unwrap(), "gzip");
    for w in waiters {
        assert_eq!(w.await.unwrap(), "br");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one call for gzip, one for every br waiter"
    );
}

#[tokio::test]
async fn a_fresh_cdn_cache_control_governs_over_cache_control_no_store() {
    let (up, calls) = upstream(|n, _| {
        response(
            200,
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=60"),
            ],
            format!("{n}"),
        )
    });
    let svc = layered(CacheLayer::new(store()), up);
    send(&svc, get("http://h/a")).await;
    let (r, b) = send(&svc, get("http://h/a")).await;
    assert_eq!(b, "1", "{r:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // `private` still forbids sharing, whatever the targeted field says.
    let (up, calls) = upstream(|n, _| {
        response(
            200,
            &[
                ("cache-control", "private"),
                ("cdn-cache-control", "max-age=60"),
            ],
            format!("{n}"),
        )
    });
    let svc = layered(CacheLayer::new(store()), up);
    send(&svc, get("http://h/a")).await;
    send(&svc, get("http://h/a")).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn expires_in_every_http_date_format_and_case() {
    let in_an_hour = std::time::SystemTime::now() + Duration::from_secs(3600);
    let imf = httpdate::fmt_http_date(in_an_hour);
    // Build the obsolete forms from the IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT".
    let parts: Vec<&str> = imf.split(' ').collect();
    let (wd, day, mon, year, time) = (parts[0], parts[1], parts[2], parts[3], parts[4]);
    let full_day = match wd.trim_end_matches(',') {
        "Mon" => "Monday",
        "Tue" => "Tuesday",
        "Wed" => "Wednesday",
        "Thu" => "Thursday",
        "Fri" => "Friday",
        "Sat" => "Saturday",
        _ => "Sunday",
    };
    let rfc850 = format!("{full_day}, {day}-{mon}-{} {time} GMT", &year[2..]);
    let asctime = format!(
        "{} {mon} {:>2} {time} {year}",
        wd.trim_end_matches(','),
        day.trim_start_matches('0')
    );
    for expires in [
        imf.clone(),
        imf.to_uppercase(),
        rfc850.clone(),
        rfc850.to_lowercase(),
        asctime.clone(),
        asctime.to_uppercase(),
    ] {
        let value = expires.clone();
        let (up, calls) =
            upstream(move |n, _| response(200, &[("expires", value.as_str())], format!("{n}")));
        let svc = layered(CacheLayer::new(store()), up);
        send(&svc, get("http://h/a")).await;
        send(&svc, get("http://h/a")).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "Expires: {expires}");
    }
}

#[tokio::test]
async fn varied_header_values_are_normalised_before_keying() {
    let (up, calls) = upstream(|n, _| {
        response(
            200,
            &[("cache-control", "max-age=60"), ("vary", "accept-encoding")],
            format!("{n}"),
        )
    });
    let svc = layered(CacheLayer::new(store()), up);
    send(&svc, with(get("http://h/a"), "accept-encoding", "gzip, br")).await;
    for same in ["gzip,br", "GZIP, BR", "  gzip ,  br  "] {
        let (r, b) = send(&svc, with(get("http://h/a"), "accept-encoding", same)).await;
        assert_eq!(b, "1", "{same:?}: {r:?}");
    }
    // Two field lines are the same as one combined line.
    let two = with(
        with(get("http://h/a"), "accept-encoding", "gzip"),
        "accept-encoding",
        "br",
    );
    let (_, b) = send(&svc, two).await;
    assert_eq!(b, "1");
    let (_, b) = send(&svc, with(get("http://h/a"), "accept-encoding", "br, gzip")).await;
    assert_eq!(b, "2", "order is meaningful");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn no_content_is_heuristically_cacheable() {
    let lm = httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(10_000));
    let (up, calls) = upstream(move |_, _| response(204, &[("last-modified", lm.as_str())], ""));
    let svc = layered(CacheLayer::new(store()), up);
    // A server does not poll the body of a 204 (hyper does not): it is complete as it is.
    let r = svc.clone().oneshot(get("http://h/a")).await.unwrap();
    assert!(http_body::Body::is_end_stream(r.body()));
    drop(r);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let (r, _) = send(&svc, get("http://h/a")).await;
    assert_eq!(r.status(), 204);
    assert!(status(&r).contains("hit"), "{r:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A gRPC-shaped request with its message attached, as `GrpcKeyLayer` would.
fn grpc(metadata: &[(&'static str, &str)]) -> Req {
    let mut req = Request::post("http://h/test.Echo/Say")
        .header("content-type", "application/grpc")
        .body(Full::default())
        .unwrap();
    for (k, v) in metadata {
        req.headers_mut().append(*k, v.parse().unwrap());
    }
    req.extensions_mut()
        .insert(GrpcMessage(Bytes::from_static(b"\0\0\0\0\x02hi")));
    req
}

#[tokio::test]
async fn grpc_calls_with_credentials_bypass_unless_the_method_is_public() {
    type GrpcBody = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
    >;
    let make = |calls: Arc<AtomicUsize>| {
        tower::service_fn(move |req: Req| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let who = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let frames = vec![
                Ok(Frame::data(Bytes::from(format!("{who}:{n}")))),
                Ok(Frame::trailers(trailers)),
            ];
            let mut r = Response::new(StreamBody::new(futures_util::stream::iter(frames)));
            r.headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            async move { Ok::<Response<GrpcBody>, Infallible>(r) }
        })
    };
    let read = |r: Response<tower_strata::cache::CacheBody<GrpcBody>>| async move {
        let b = r.into_body().collect().await.unwrap().to_bytes();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        b
    };
    // Private by default: alice's answer is never given to bob, nor to an anonymous caller.
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(
            CacheLayer::new(store())
                .grpc_method("/test.Echo/Say", Duration::from_secs(60))
                .unwrap(),
        )
        .service(make(calls.clone()));
    let a = read(
        svc.clone()
            .oneshot(grpc(&[("authorization", "alice")]))
            .await
            .unwrap(),
    )
    .await;
    let b = read(
        svc.clone()
            .oneshot(grpc(&[("authorization", "bob")]))
            .await
            .unwrap(),
    )
    .await;
    let c = read(
        svc.clone()
            .oneshot(grpc(&[("cookie", "s=1")]))
            .await
            .unwrap(),
    )
    .await;
    let d = read(svc.clone().oneshot(grpc(&[])).await.unwrap()).await;
    let e = read(svc.clone().oneshot(grpc(&[])).await.unwrap()).await;
    assert_eq!(a, "alice:1");
    assert_eq!(b, "bob:2");
    assert_eq!(c, ":3");
    assert_eq!(
        (d, e),
        (Bytes::from(":4"), Bytes::from(":4")),
        "anonymous calls are cached"
    );
    // Marked public: the answer does not depend on the caller.
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(
            CacheLayer::new(store())
                .grpc_public_method("/test.Echo/Say", Duration::from_secs(60))
                .unwrap(),
        )
        .service(make(calls.clone()));
    let a = read(
        svc.clone()
            .oneshot(grpc(&[("authorization", "alice")]))
            .await
            .unwrap(),
    )
    .await;
    let b = read(
        svc.clone()
            .oneshot(grpc(&[("authorization", "bob")]))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((a, b), (Bytes::from("alice:1"), Bytes::from("alice:1")));
}

#[tokio::test]
async fn a_refresh_never_moves_a_credentialed_variant_to_anonymous_requests() {
    // `Vary: Authorization` on a `public` response: each caller has a variant of their own.
    // The background refresh sends no credentials; the origin's `304` to it must not file
    // alice's stored body under the variant of requests without credentials.
    let (up, _) = upstream(|_, req| {
        let who = req
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned());
        if req.headers().contains_key("if-none-match") {
            return response(
                304,
                &[
                    ("etag", "\"e\""),
                    ("cache-control", "public, max-age=600"),
                    ("vary", "authorization"),
                ],
                "",
            );
        }
        response(
            200,
            &[
                (
                    "cache-control",
                    "public, max-age=1, stale-while-revalidate=600",
                ),
                ("age", "2"),
                ("vary", "authorization"),
                ("etag", "\"e\""),
            ],
            format!("for {}", who.as_deref().unwrap_or("anyone")),
        )
    });
    let svc = layered(CacheLayer::new(store()), up);
    let alice = || with(get("http://h/me"), "authorization", "alice");
    let (_, b) = send(&svc, alice()).await;
    assert_eq!(b, "for alice");
    // Stale: served at once, refreshed in the background without credentials.
    let (r, b) = send(&svc, alice()).await;
    assert!(status(&r).contains("stale-while-revalidate"), "{r:?}");
    assert_eq!(b, "for alice");
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    let (r, b) = send(&svc, get("http://h/me")).await;
    assert_eq!(
        b, "for anyone",
        "alice's body reached an anonymous request: {r:?}"
    );
}

#[tokio::test]
async fn a_lease_is_released_when_the_response_cannot_be_stored() {
    use tower_strata::store::Store;
    let (up, _) = upstream(|_, _| response(200, &[("cache-control", "no-store")], "x"));
    let shared = std::sync::Arc::new(store());
    let svc = ServiceBuilder::new()
        .layer(
            CacheLayer::new(shared.clone())
                .distributed_lease(Duration::from_secs(30))
                .unwrap(),
        )
        .service(up);
    send(&svc, get("http://h/a")).await;
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    // The lease is a counter under `l:` + the primary key; gone, a read finds nothing (held,
    // it would be a counter where an entry is expected).
    let lease = shared.get("l:c:GET http://h/a").await;
    assert!(
        matches!(lease, Ok(None)),
        "the lease outlived an unstorable response: {lease:?}"
    );
}

#[tokio::test]
async fn a_lease_on_a_store_without_counters_fails_open() {
    let (up, calls) = upstream(|_, _| response(200, &[("cache-control", "max-age=60")], "x"));
    // Its counters are the provided ones: `Unsupported`.
    let store = support::core_only::CoreOnly(store());
    let layer = CacheLayer::new(store)
        .distributed_lease(Duration::from_secs(30))
        .unwrap();
    let stats = layer.stats();
    let svc = ServiceBuilder::new().layer(layer).service(up);
    let (first, body) = send(&svc, get("http://h/a")).await;
    assert_eq!((first.status().as_u16(), &body[..]), (200, &b"x"[..]));
    assert_eq!(
        stats.store_errors(),
        1,
        "the refused lease is a store error"
    );
    let (_, again) = send(&svc, get("http://h/a")).await;
    assert_eq!(again, "x");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the response was stored all the same"
    );
    assert_eq!(stats.hits(), 1);
}

#[tokio::test]
async fn an_invalid_targeted_field_is_ignored_and_cache_control_governs() {
    for cdn in [
        "max-age=10000, &&&&&",
        "max-age=\"10000\"",
        "max-age =10000",
    ] {
        for name in ["cdn-cache-control", "surrogate-control"] {
            let (up, calls) = upstream(move |n, _| {
                response(
                    200,
                    &[("cache-control", "no-store"), (name, cdn)],
                    format!("{n}"),
                )
            });
            let svc = layered(CacheLayer::new(store()), up);
            send(&svc, get("http://h/a")).await;
            send(&svc, get("http://h/a")).await;
            assert_eq!(calls.load(Ordering::SeqCst), 2, "{name}: {cdn} was obeyed");
        }
    }
    // A valid one still wins over Cache-Control.
    let (up, calls) = upstream(|n, _| {
        response(
            200,
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=10000"),
            ],
            format!("{n}"),
        )
    });
    let svc = layered(CacheLayer::new(store()), up);
    send(&svc, get("http://h/a")).await;
    send(&svc, get("http://h/a")).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn surrogate_control_is_this_caches_and_never_passed_on() {
    let (up, calls) = upstream(|n, _| {
        response(
            200,
            &[
                ("cache-control", "public, max-age=0"),
                ("surrogate-control", "max-age=600"),
            ],
            format!("{n}"),
        )
    });
    let svc = layered(CacheLayer::new(store()), up);
    let (miss, _) = send(&svc, get("http://h/a")).await;
    let (hit, _) = send(&svc, get("http://h/a")).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "stored for this cache's 600 s"
    );
    for r in [&miss, &hit] {
        assert!(!r.headers().contains_key("surrogate-control"), "{r:?}");
        assert_eq!(r.headers()["cache-control"], "public, max-age=0");
    }
}
