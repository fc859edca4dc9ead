//! Integration tests of the metrics layer and registry.
#![cfg(all(feature = "metrics", feature = "axum"))]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};
use tower_strata::metrics::{MetricsLayer, MetricsRegistry, RequestInfo, Window};

fn registry() -> MetricsRegistry {
    MetricsRegistry::builder().export(false).build().unwrap()
}

/// Nearest-rank quantile of sorted values.
fn exact(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[test]
fn percentiles_are_within_one_percent_of_exact_values() {
    // A skewed, heavy-tailed distribution: 100k values from 50 µs to ~5 s (deterministic LCG).
    let reg = registry();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut values = Vec::with_capacity(100_000);
    for _ in 0..100_000 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let u = (state >> 11) as f64 / (1u64 << 53) as f64;
        // Log-uniform over 11.5 binary orders of magnitude, plus a tail.
        let ns = (50_000.0 * (u * 11.5).exp2() * if u > 0.98 { 7.0 } else { 1.0 }) as u64;
        values.push(ns);
        reg.record(
            "/dist",
            &Method::GET,
            StatusCode::OK,
            Duration::from_nanos(ns),
        );
    }
    values.sort_unstable();
    for window in [Window::OneMinute, Window::FiveMinutes] {
        let s = reg.route_snapshot("/dist", &Method::GET, window).unwrap();
        assert_eq!(s.count, 100_000);
        for (got, q) in [
            (s.latency.p50, 0.50),
            (s.latency.p95, 0.95),
            (s.latency.p99, 0.99),
        ] {
            let want = exact(&values, q) as f64;
            let err = (got.as_nanos() as f64 - want).abs() / want;
            assert!(
                err <= 0.01,
                "p{q}: got {got:?}, exact {want} ns, error {err}"
            );
        }
        assert_eq!(s.latency.max, Duration::from_nanos(*values.last().unwrap()));
        let mean = values.iter().sum::<u64>() / values.len() as u64;
        assert_eq!(s.latency.mean, Duration::from_nanos(mean));
    }
}

fn app(registry: &MetricsRegistry) -> Router {
    Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .route(
            "/items/{id}/reviews/{review}",
            get(|| async { "review" }).post(|| async { StatusCode::CREATED }),
        )
        .route(
            "/boom",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .route("/health", get(|| async { "ok" }))
        .layer(MetricsLayer::new(registry.clone()).exclude_path("/health"))
}

#[tokio::test]
async fn ten_thousand_raw_paths_give_only_route_templates() {
    let reg = registry();
    let app = app(&reg);
    for i in 0..10_000u32 {
        let uri = match i % 3 {
            0 => format!("/users/{i}"),
            1 => format!("/items/{i}/reviews/{}", i * 7),
            _ => format!("/nothing/here/{i}"),
        };
        let res = app
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        res.into_body().collect().await.unwrap();
    }
    let mut routes = reg.routes();
    routes.sort();
    assert_eq!(
        routes,
        ["/items/{id}/reviews/{review}", "/users/{id}", "_UNMATCHED"]
    );
    let snaps = reg.snapshot(Window::OneMinute);
    let count = |route: &str| {
        snaps
            .iter()
            .find(|s| s.route == route)
            .map_or(0, |s| s.count)
    };
    assert_eq!(count("/users/{id}"), 3334);
    assert_eq!(count("/items/{id}/reviews/{review}"), 3333);
    assert_eq!(count("_UNMATCHED"), 3333);
    let unmatched = snaps.iter().find(|s| s.route == "_UNMATCHED").unwrap();
    assert_eq!(unmatched.status_classes.client_error, 3333);
    assert_eq!(unmatched.errors, 0, "4xx is not an error");
    assert_eq!(reg.in_flight(), 0);
}

#[tokio::test]
async fn server_errors_methods_and_excluded_paths() {
    let reg = registry();
    let app = app(&reg);
    let call = |method: Method, uri: &'static str| {
        let app = app.clone();
        async move {
            let res = app
                .oneshot(
                    Request::builder()
                        .method(method)
                        .uri(uri)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            res.into_body().collect().await.unwrap();
        }
    };
    call(Method::GET, "/boom").await;
    call(Method::GET, "/boom").await;
    call(Method::GET, "/health").await;
    call(Method::from_bytes(b"PURGE").unwrap(), "/users/1").await;
    call(Method::POST, "/items/1/reviews/2").await;

    let boom = reg
        .route_snapshot("/boom", &Method::GET, Window::OneMinute)
        .unwrap();
    assert_eq!((boom.count, boom.errors), (2, 2));
    assert_eq!(boom.error_rate, 1.0);
    assert!(
        reg.routes().iter().all(|r| r != "/health"),
        "excluded path recorded"
    );
    let snaps = reg.snapshot(Window::OneMinute);
    let other = snaps.iter().find(|s| s.method == "_OTHER").unwrap();
    assert_eq!(other.route, "/users/{id}");
    assert_eq!(other.status_classes.client_error, 1, "405 for PURGE");
    let post = reg
        .route_snapshot(
            "/items/{id}/reviews/{review}",
            &Method::POST,
            Window::OneMinute,
        )
        .unwrap();
    assert_eq!(post.status_classes.success, 1);
}

/// A body yielding `chunks` chunks, sleeping `gap` before each.
fn slow_body(chunks: u32, gap: Duration) -> Body {
    let stream = futures_util::stream::unfold(0, move |i| async move {
        if i == chunks {
            return None;
        }
        tokio::time::sleep(gap).await;
        Some((Ok::<_, Infallible>(Bytes::from_static(b"chunk")), i + 1))
    });
    Body::from_stream(stream)
}

#[tokio::test(start_paused = true)]
async fn duration_includes_a_slow_streaming_body() {
    let reg = registry();
    let app = Router::new()
        .route(
            "/stream",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                slow_body(3, Duration::from_millis(100))
            }),
        )
        .layer(MetricsLayer::new(reg.clone()));
    let res = app
        .oneshot(Request::get("/stream").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(reg.in_flight(), 1, "in flight until the body ends");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 15);
    assert_eq!(reg.in_flight(), 0);
    let s = reg
        .route_snapshot("/stream", &Method::GET, Window::OneMinute)
        .unwrap();
    assert_eq!(s.count, 1);
    assert_eq!(s.cancelled, 0);
    // Paused clock: exactly 20 ms to the head, 320 ms to the end of the body.
    assert_eq!(s.time_to_head.max, Duration::from_millis(20));
    assert_eq!(s.latency.max, Duration::from_millis(320));
}

#[tokio::test(start_paused = true)]
async fn dropped_bodies_and_futures_count_as_cancelled_and_never_leak() {
    let reg = registry();
    let app = Router::new()
        .route(
            "/stream",
            get(|| async { slow_body(5, Duration::from_millis(100)) }),
        )
        .route(
            "/hang",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "late"
            }),
        )
        .layer(MetricsLayer::new(reg.clone()));

    // The client reads one chunk then goes away.
    let res = app
        .clone()
        .oneshot(Request::get("/stream").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let mut body = res.into_body();
    body.frame().await.unwrap().unwrap();
    assert_eq!(reg.in_flight(), 1);
    drop(body);
    assert_eq!(reg.in_flight(), 0);

    // The client goes away before the head.
    let fut = app
        .clone()
        .oneshot(Request::get("/hang").body(Body::empty()).unwrap());
    let timed_out = tokio::time::timeout(Duration::from_millis(50), fut).await;
    assert!(timed_out.is_err());
    assert_eq!(reg.in_flight(), 0);

    let stream = reg
        .route_snapshot("/stream", &Method::GET, Window::OneMinute)
        .unwrap();
    assert_eq!((stream.count, stream.cancelled, stream.errors), (1, 1, 0));
    assert_eq!(stream.latency.max, Duration::from_millis(100));
    let hang = reg
        .route_snapshot("/hang", &Method::GET, Window::OneMinute)
        .unwrap();
    assert_eq!((hang.count, hang.cancelled), (1, 1));
    assert_eq!(hang.time_to_head.count, 0, "no head was produced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_flight_returns_to_zero_under_concurrency_and_cancellation() {
    let reg = registry();
    let started = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = started.clone();
    let app = Router::new()
        .route(
            "/work/{n}",
            get(|| async {
                tokio::task::yield_now().await;
                slow_body(2, Duration::from_micros(200))
            }),
        )
        .layer(MetricsLayer::new(reg.clone()))
        // Counts the calls that reached the metrics layer (some tasks are aborted before).
        .layer(tower::util::MapRequestLayer::new(move |req| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            req
        }));
    let mut tasks = Vec::new();
    for i in 0..400u32 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let res = app
                .oneshot(
                    Request::get(format!("/work/{i}"))
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            if i % 4 == 0 {
                drop(res); // cancelled
            } else {
                res.into_body().collect().await.unwrap();
            }
        }));
    }
    // A quarter of the requests are also aborted at an arbitrary point.
    for (i, t) in tasks.iter().enumerate() {
        if i % 4 == 1 {
            t.abort();
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    assert_eq!(reg.in_flight(), 0);
    let s = reg
        .route_snapshot("/work/{n}", &Method::GET, Window::OneMinute)
        .unwrap();
    let started = started.load(std::sync::atomic::Ordering::Relaxed);
    assert!(started >= 300, "the non-aborted tasks all ran: {started}");
    assert_eq!(s.count, started);
    assert!(s.cancelled >= 100, "cancelled: {}", s.cancelled);
}

#[tokio::test]
async fn service_builder_with_an_app_route_label_and_service_errors() {
    let reg = registry();
    let svc = ServiceBuilder::new()
        .layer(
            MetricsLayer::new(reg.clone()).route_label(|req: &RequestInfo<'_>| {
                req.uri
                    .path()
                    .starts_with("/files/")
                    .then(|| String::from("/files/*"))
            }),
        )
        .service_fn(|req: Request<String>| async move {
            if req.uri().path().ends_with("fail") {
                Err("backend failed")
            } else {
                Ok(Response::new(String::from("file")))
            }
        });
    let ok = svc
        .clone()
        .oneshot(Request::get("/files/a.txt").body(String::new()).unwrap())
        .await;
    ok.unwrap().into_body().collect().await.unwrap();
    let err = svc
        .clone()
        .oneshot(Request::get("/files/fail").body(String::new()).unwrap())
        .await;
    assert!(err.is_err());
    let s = reg
        .route_snapshot("/files/*", &Method::GET, Window::OneMinute)
        .unwrap();
    assert_eq!((s.count, s.errors), (2, 1));
    assert_eq!(reg.in_flight(), 0);
}

#[test]
fn the_layer_fits_router_layer_and_service_builder() {
    let reg = registry();
    let _router: Router = Router::new()
        .route("/", get(|| async { "hi" }))
        .layer(MetricsLayer::new(reg.clone()));
    let _routed: Router = Router::new()
        .route("/", get(|| async { "hi" }))
        .route_layer(MetricsLayer::new(reg.clone()));
    let svc = ServiceBuilder::new()
        .layer(MetricsLayer::new(reg))
        .service_fn(|_: Request<Body>| async { Ok::<_, Infallible>(Response::new(Body::empty())) });
    fn assert_send_sync_clone<T: Send + Sync + Clone>(_: &T) {}
    assert_send_sync_clone(&svc);
}

#[tokio::test]
async fn a_panicking_handler_is_an_error_and_does_not_leak() {
    use futures_util::FutureExt;
    let reg = registry();
    let svc = ServiceBuilder::new()
        .layer(MetricsLayer::new(reg.clone()).route_label(|_: &RequestInfo<'_>| Some("/panics")))
        .service_fn(|_req: Request<String>| async {
            if true {
                panic!("handler bug");
            }
            Ok::<_, Infallible>(Response::new(String::new()))
        });
    let result =
        std::panic::AssertUnwindSafe(svc.oneshot(Request::get("/x").body(String::new()).unwrap()))
            .catch_unwind()
            .await;
    assert!(result.is_err());
    assert_eq!(reg.in_flight(), 0);
    let s = reg
        .route_snapshot("/panics", &Method::GET, Window::OneMinute)
        .unwrap();
    assert_eq!((s.count, s.errors, s.cancelled), (1, 1, 0));
}

/// Real server, real sockets: clients that hang up mid-body are counted as cancelled, and
/// in-flight returns to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hanging_up_on_a_real_server_are_cancelled() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let reg = registry();
    let app = Router::new()
        .route(
            "/stream/{n}",
            get(|| async { slow_body(20, Duration::from_millis(10)) }),
        )
        .layer(MetricsLayer::new(reg.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut clients = Vec::new();
    for i in 0..40u32 {
        clients.push(tokio::spawn(async move {
            let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!("GET /stream/{i} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
            conn.write_all(req.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            if i % 2 == 0 {
                // Read the head and the first chunk, then hang up.
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0);
                drop(conn);
            } else {
                let mut total = Vec::new();
                loop {
                    let n = conn.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    total.extend_from_slice(&buf[..n]);
                }
                let text = String::from_utf8_lossy(&total);
                assert!(text.starts_with("HTTP/1.1 200"), "{text}");
                assert_eq!(text.matches("\r\nchunk\r\n").count(), 20);
            }
        }));
    }
    for c in clients {
        tokio::time::timeout(Duration::from_secs(20), c)
            .await
            .unwrap()
            .unwrap();
    }
    // The server notices a hang-up when it next writes: wait (bounded) for all 40.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = reg.route_snapshot("/stream/{n}", &Method::GET, Window::OneMinute);
        if s.as_ref().is_some_and(|s| s.count == 40) && reg.in_flight() == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{s:?}, in flight {}",
            reg.in_flight()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = reg
        .route_snapshot("/stream/{n}", &Method::GET, Window::OneMinute)
        .unwrap();
    assert_eq!(s.cancelled, 20);
    assert_eq!(s.errors, 0);
    // Completed streams took at least their 20 × 10 ms.
    assert!(s.latency.max >= Duration::from_millis(200));
    server.abort();
}

#[tokio::test]
async fn a_grpc_content_type_does_not_make_client_paths_into_route_labels() {
    let reg = registry();
    let app = app(&reg);
    let grpc = |uri: String| {
        Request::post(uri)
            .header("content-type", "application/grpc")
            .body(Body::empty())
            .unwrap()
    };
    // `/a.B/cN` has the shape of a gRPC method, and no gRPC service answers it.
    for i in 0..200u32 {
        let res = app
            .clone()
            .oneshot(grpc(format!("/a.B/c{i}")))
            .await
            .unwrap();
        res.into_body().collect().await.unwrap();
    }
    // A declared route keeps its label whatever content type the client sends.
    let res = app
        .clone()
        .oneshot(grpc("/users/7".to_owned()))
        .await
        .unwrap();
    res.into_body().collect().await.unwrap();
    let mut routes = reg.routes();
    routes.sort();
    assert_eq!(routes, ["/users/{id}", "_UNMATCHED"], "{routes:?}");
    let unmatched = reg
        .route_snapshot("_UNMATCHED", &Method::POST, Window::OneMinute)
        .unwrap();
    assert_eq!(
        (unmatched.count, unmatched.errors),
        (200, 0),
        "404s, not gRPC errors"
    );
}
