//! The warmer's unit tests.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{Request, Response};
use http_body_util::Full;
use tower_service::Service;

use std::convert::Infallible;
use std::sync::atomic::AtomicUsize;

use super::*;

fn ok_service() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    })
}

#[test]
fn invalid_requests_and_settings_are_refused_at_build() {
    let bad_header = Warmer::builder(ok_service())
        .request(WarmRequest::get("/").header("bad name", "x"))
        .build();
    let bad_header = bad_header.unwrap_err();
    assert_eq!(bad_header.kind(), WarmConfigErrorKind::InvalidRequest);
    assert!(bad_header.message().contains("header name"));
    let bad_value = Warmer::builder(ok_service())
        .request(WarmRequest::get("/").header("accept", "a\nb"))
        .build();
    assert_eq!(
        bad_value.unwrap_err().kind(),
        WarmConfigErrorKind::InvalidRequest
    );
    let bad_uri = Warmer::builder(ok_service())
        .request(WarmRequest::get("http://exa mple/"))
        .build();
    let bad_uri = bad_uri.unwrap_err();
    assert_eq!(bad_uri.kind(), WarmConfigErrorKind::InvalidRequest);
    assert!(bad_uri.message().contains("URI"));
    for (builder, kind) in [
        (
            Warmer::builder(ok_service()).concurrency(0),
            WarmConfigErrorKind::Setting,
        ),
        (
            Warmer::builder(ok_service()).timeout(Duration::ZERO),
            WarmConfigErrorKind::Setting,
        ),
        (
            Warmer::builder(ok_service()).interval(Duration::ZERO),
            WarmConfigErrorKind::Setting,
        ),
        (
            Warmer::builder(ok_service()).host("a\nb"),
            WarmConfigErrorKind::Host,
        ),
    ] {
        assert_eq!(builder.build().unwrap_err().kind(), kind);
    }
}

#[tokio::test]
async fn sources_failing_or_invalid_are_counted_and_the_rest_is_sent() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let service = tower::service_fn(move |req: Request<Full<Bytes>>| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            assert_eq!(req.headers()[HOST], "shop.example");
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    let warmer = Warmer::builder(service)
        .host("shop.example")
        .request(WarmRequest::get("/a"))
        .factory(|| panic!("a broken factory"))
        .factory(|| Request::get("/b").body(Full::default()).unwrap())
        .source(|| async { Err::<Vec<WarmRequest>, _>("database down") })
        .source(|| async { vec![WarmRequest::get("/c").header("bad name", "x")] })
        .source(|| async { vec![WarmRequest::get("/d"), WarmRequest::get("/e")] })
        .build()
        .unwrap();
    let report = warmer.run_once().await;
    assert_eq!(report.sent, 4, "{report:?}");
    assert_eq!(report.succeeded, 4);
    assert_eq!(report.source_failures, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    let stats = warmer.stats();
    assert_eq!(
        (stats.runs, stats.requests_sent, stats.source_failures),
        (1, 4, 3)
    );
    assert_eq!(stats.last_run, Some(report));
    assert!(stats.last_run_at.is_some());
}

#[tokio::test]
async fn stats_serialise_for_health_reports() {
    let warmer = Warmer::builder(ok_service())
        .request(WarmRequest::get("/"))
        .build()
        .unwrap();
    let empty = serde_json::to_value(warmer.stats()).unwrap();
    assert_eq!(empty["runs"], 0);
    assert!(empty["last_run"].is_null() && empty["last_run_at_unix_ms"].is_null());
    warmer.run_once().await;
    let json = serde_json::to_value(warmer.stats()).unwrap();
    assert_eq!(json["runs"], 1);
    assert_eq!(json["last_run"]["succeeded"], 1);
    assert!(json["last_run"]["duration_ms"].is_f64());
    assert!(json["last_run_at_unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
}

#[test]
fn handles_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Warmer>();
    assert_send_sync::<WarmHandle>();
    assert_send_sync::<WarmStats>();
    assert_send_sync::<WarmRequest>();
}

#[test]
fn run_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let warmer = Warmer::builder(ok_service()).build().unwrap();
    assert_send(&warmer.run_once());
}
