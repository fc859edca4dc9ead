//! `Vary` normalisation: entries per page for real browsers' `Accept-Encoding` with and
//! without it, the cache in front of tower-http's `CompressionLayer`, `Accept-Language`, an
//! application's own normaliser, and the cache-tests suite's `vary-normalise-*` cases.
#![cfg(all(feature = "memory", feature = "cache"))]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, ACCEPT_LANGUAGE, HeaderName};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_strata::cache::{AcceptEncoding, AcceptLanguage, CacheLayer};
use tower_strata::store::MemoryStore;

type Req = Request<Full<Bytes>>;
type Origin = tower::util::BoxCloneService<Req, Response<Full<Bytes>>, Infallible>;

/// What five common browsers send (current Chrome, Edge, Firefox and Safari, and Firefox ESR).
const BROWSERS: [(&str, &str); 5] = [
    ("Chrome 131", "gzip, deflate, br, zstd"),
    ("Edge 131", "gzip, deflate, br, zstd"),
    ("Firefox 133", "gzip, deflate, br, zstd"),
    ("Safari 18", "gzip, deflate, br"),
    ("Firefox 115 ESR", "gzip, deflate, br"),
];

/// An origin that varies on `vary` and echoes what it saw of it; records every request's
/// value.
fn echo(vary: HeaderName) -> (Origin, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let svc = tower::service_fn(move |request: Req| {
        let value = request
            .headers()
            .get_all(&vary)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect::<Vec<_>>()
            .join(", ");
        log.lock().unwrap().push(value.clone());
        let vary = vary.clone();
        async move {
            let mut response = Response::new(Full::new(Bytes::from(value)));
            let h = response.headers_mut();
            h.insert("cache-control", "max-age=60".parse().unwrap());
            h.insert("vary", vary.as_str().parse().unwrap());
            Ok::<_, Infallible>(response)
        }
    });
    (tower::util::BoxCloneService::new(svc), seen)
}

fn get(header: &HeaderName, values: &[&str]) -> Req {
    let mut builder = Request::get("http://h/page");
    for v in values {
        builder = builder.header(header, *v);
    }
    builder.body(Full::default()).unwrap()
}

async fn status_and_body<B>(response: Response<B>) -> (String, Bytes)
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let status = response
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

/// Entries (origin fills) one page takes for the five browsers, with and without the
/// `Accept-Encoding` normaliser.
#[tokio::test]
async fn five_browsers_share_one_entry_with_the_accept_encoding_normaliser() {
    let mut entries = Vec::new();
    for normalise in [false, true] {
        let (origin, seen) = echo(ACCEPT_ENCODING);
        let mut layer = CacheLayer::new(MemoryStore::new(1 << 20));
        if normalise {
            layer = layer.normalise_vary(ACCEPT_ENCODING, AcceptEncoding::new(["br", "gzip"]));
        }
        let svc = ServiceBuilder::new().layer(layer).service(origin);
        for _ in 0..2 {
            for (_, accept) in BROWSERS {
                let _ = status_and_body(
                    svc.clone()
                        .oneshot(get(&ACCEPT_ENCODING, &[accept]))
                        .await
                        .unwrap(),
                )
                .await;
            }
        }
        let seen = seen.lock().unwrap().clone();
        if normalise {
            // The origin sees only the coding it will answer with.
            assert!(seen.iter().all(|v| v == "br"), "{seen:?}");
        }
        entries.push(seen.len());
    }
    println!(
        "entries per page for {:?}: {} without normalisation, {} with AcceptEncoding [br, gzip]",
        BROWSERS.map(|(name, _)| name),
        entries[0],
        entries[1]
    );
    assert_eq!(entries, [2, 1]);
}

/// A client that accepts only gzip never gets the br variant, and one that accepts nothing
/// the application produces gets identity.
#[tokio::test]
async fn a_normalised_variant_is_never_one_the_client_cannot_read() {
    let (origin, seen) = echo(ACCEPT_ENCODING);
    let svc = ServiceBuilder::new()
        .layer(
            CacheLayer::new(MemoryStore::new(1 << 20))
                .normalise_vary(ACCEPT_ENCODING, AcceptEncoding::new(["br", "gzip"])),
        )
        .service(origin);
    for (accept, expected) in [
        ("gzip, deflate, br", "br"),
        ("gzip", "gzip"),
        ("gzip, deflate", "gzip"),
        ("deflate", "identity"),
        ("br;q=0, gzip", "gzip"),
    ] {
        let (_, body) = status_and_body(
            svc.clone()
                .oneshot(get(&ACCEPT_ENCODING, &[accept]))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(body, expected, "{accept}");
    }
    assert_eq!(seen.lock().unwrap().len(), 3, "br, gzip and identity");
}

/// The cache goes in front of (outside) `CompressionLayer`: it stores each coding's
/// compressed bytes once and serves them without compressing again. With the normaliser,
/// the five browsers need one compression of the page.
#[tokio::test]
async fn in_front_of_tower_http_compression() {
    use tower_http::compression::CompressionLayer;
    let calls = Arc::new(Mutex::new(0));
    let counter = calls.clone();
    let handler = tower::service_fn(move |_request: Req| {
        *counter.lock().unwrap() += 1;
        async {
            let mut response = Response::new(Full::new(Bytes::from("hello world ".repeat(100))));
            let h = response.headers_mut();
            h.insert("cache-control", "max-age=60".parse().unwrap());
            h.insert("content-type", "text/plain".parse().unwrap());
            Ok::<_, Infallible>(response)
        }
    });
    let svc = ServiceBuilder::new()
        .layer(
            CacheLayer::new(MemoryStore::new(1 << 20))
                .normalise_vary(ACCEPT_ENCODING, AcceptEncoding::new(["br", "gzip"])),
        )
        .layer(CompressionLayer::new())
        .service(handler);
    for round in 0..2 {
        for (name, accept) in BROWSERS {
            let response = svc
                .clone()
                .oneshot(get(&ACCEPT_ENCODING, &[accept]))
                .await
                .unwrap();
            assert_eq!(response.headers()["content-encoding"], "br", "{name}");
            let (status, _) = status_and_body(response).await;
            if round == 1 || name != BROWSERS[0].0 {
                assert!(status.contains("hit"), "{name}: {status}");
            }
        }
    }
    let response = svc
        .clone()
        .oneshot(get(&ACCEPT_ENCODING, &["gzip"]))
        .await
        .unwrap();
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let (_, body) = status_and_body(response).await;
    assert_eq!(&body[..2], &[0x1f, 0x8b], "gzip bytes");
    let response = svc
        .clone()
        .oneshot(get(&ACCEPT_ENCODING, &[]))
        .await
        .unwrap();
    assert!(response.headers().get("content-encoding").is_none());
    let (_, body) = status_and_body(response).await;
    assert_eq!(body.len(), 1200, "identity");
    assert_eq!(*calls.lock().unwrap(), 3, "one compression per coding");
}

#[tokio::test]
async fn accept_language_and_an_applications_own_normaliser() {
    let (origin, seen) = echo(ACCEPT_LANGUAGE);
    let svc = ServiceBuilder::new()
        .layer(
            CacheLayer::new(MemoryStore::new(1 << 20))
                .normalise_vary(ACCEPT_LANGUAGE, AcceptLanguage::new(["en", "fr"])),
        )
        .service(origin);
    for (accept, expected) in [
        ("en-US,en;q=0.9", "en"),
        ("en-GB, en;q=0.8", "en"),
        ("fr-CH, fr;q=0.9, en;q=0.8", "fr"),
        ("fr", "fr"),
        ("de-DE", "en"),
    ] {
        let (_, body) = status_and_body(
            svc.clone()
                .oneshot(get(&ACCEPT_LANGUAGE, &[accept]))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(body, expected, "{accept}");
    }
    assert_eq!(*seen.lock().unwrap(), ["en", "fr"]);

    let device = HeaderName::from_static("x-device");
    let (origin, seen) = echo(device.clone());
    let svc = ServiceBuilder::new()
        .layer(CacheLayer::new(MemoryStore::new(1 << 20)).normalise_vary(
            device.clone(),
            |value: &str| {
                if value.contains("mobile") {
                    "mobile"
                } else {
                    "desktop"
                }
                .to_owned()
            },
        ))
        .service(origin);
    for value in ["iphone mobile", "android mobile", "mac", "windows"] {
        let _ = svc.clone().oneshot(get(&device, &[value])).await.unwrap();
    }
    assert_eq!(*seen.lock().unwrap(), ["mobile", "desktop"]);
}

/// The http-tests/cache-tests `vary-normalise-*` cases (tests/vary.mjs), each a setup request
/// and a second one that must be `cached`, with `Accept-Language` normalised against the
/// languages the origin has (`de`, `en`).
#[tokio::test]
async fn the_cache_tests_vary_normalise_cases() {
    let foo = HeaderName::from_static("foo");
    let cases: [(&str, &HeaderName, &[&str], &[&str]); 6] = [
        ("vary-normalise-combine", &foo, &["1, 2"], &["1", "2"]),
        ("vary-normalise-space", &foo, &["1,2"], &[" 1, 2 "]),
        (
            "vary-normalise-lang-order",
            &ACCEPT_LANGUAGE,
            &["en, de"],
            &["de, en"],
        ),
        (
            "vary-normalise-lang-case",
            &ACCEPT_LANGUAGE,
            &["en, de"],
            &["eN, De"],
        ),
        (
            "vary-normalise-lang-space",
            &ACCEPT_LANGUAGE,
            &["en, de"],
            &[" en ,   de"],
        ),
        (
            "vary-normalise-lang-select",
            &ACCEPT_LANGUAGE,
            &["en, de"],
            &["fr;q=0.5, de;q=1.0"],
        ),
    ];
    for (id, header, setup, second) in cases {
        let (origin, seen) = echo(header.clone());
        let svc = ServiceBuilder::new()
            .layer(
                CacheLayer::new(MemoryStore::new(1 << 20))
                    .normalise_vary(ACCEPT_LANGUAGE, AcceptLanguage::new(["de", "en"])),
            )
            .service(origin);
        let _ = status_and_body(svc.clone().oneshot(get(header, setup)).await.unwrap()).await;
        let (status, _) =
            status_and_body(svc.clone().oneshot(get(header, second)).await.unwrap()).await;
        assert!(status.contains("hit"), "{id}: {status}");
        assert_eq!(seen.lock().unwrap().len(), 1, "{id}");
    }
}

/// Without a normaliser, language order still splits entries (what the normaliser fixes).
#[tokio::test]
async fn without_a_normaliser_order_makes_another_variant() {
    let (origin, seen) = echo(ACCEPT_LANGUAGE);
    let svc = ServiceBuilder::new()
        .layer(CacheLayer::new(MemoryStore::new(1 << 20)))
        .service(origin);
    for value in ["en, de", "de, en"] {
        let _ = svc
            .clone()
            .oneshot(get(&ACCEPT_LANGUAGE, &[value]))
            .await
            .unwrap();
    }
    assert_eq!(seen.lock().unwrap().len(), 2);
}
