//! gRPC status classification by the metrics layer in a real tonic server (hand-written prost
//! messages and service, no protoc).
#![cfg(feature = "metrics")]

#[path = "../support/metrics_grpc.rs"]
mod grpc;

use std::time::Duration;

use grpc::{serve, stream, unary};
use http::Method;
use tower_strata::metrics::{MetricsRegistry, Window};

/// Waits (bounded) until the server side has recorded `n` requests.
async fn wait_for_count(registry: &MetricsRegistry, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let total: u64 = registry
            .snapshot(Window::OneMinute)
            .iter()
            .map(|s| s.count)
            .sum();
        if total >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {total} of {n} recorded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_statuses_from_headers_and_trailers() {
    // Every call is "slow", so the slow log keeps each call's gRPC status for inspection.
    let registry = MetricsRegistry::builder()
        .slow_threshold(Some(Duration::from_nanos(1)))
        .export(false)
        .build()
        .unwrap();
    let mut client = tonic::client::Grpc::new(serve(registry.clone()).await);

    unary(&mut client, "/test.Echo/Say", "ok").await.unwrap();
    let err = unary(&mut client, "/test.Echo/Say", "internal")
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal);
    let err = unary(&mut client, "/test.Echo/Say", "not_found")
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = unary(&mut client, "/test.Echo/Nope", "ok")
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);

    let mut ok = stream(&mut client, "ok").await;
    while ok.message().await.unwrap().is_some() {}
    let mut failing = stream(&mut client, "unavailable").await;
    assert!(failing.message().await.unwrap().is_some());
    assert!(failing.message().await.unwrap().is_some());
    assert_eq!(
        failing.message().await.unwrap_err().code(),
        tonic::Code::Unavailable
    );
    wait_for_count(&registry, 6).await;

    let say = registry
        .route_snapshot("/test.Echo/Say", &Method::POST, Window::OneMinute)
        .unwrap();
    assert_eq!(
        (say.count, say.errors),
        (3, 1),
        "INTERNAL is a server error, NOT_FOUND is not"
    );
    let streamed = registry
        .route_snapshot("/test.Echo/Stream", &Method::POST, Window::OneMinute)
        .unwrap();
    assert_eq!((streamed.count, streamed.errors), (2, 1));
    let unmatched = registry
        .route_snapshot("_UNMATCHED", &Method::POST, Window::OneMinute)
        .unwrap();
    assert_eq!((unmatched.count, unmatched.errors), (1, 1));
    assert!(
        registry.routes().iter().all(|r| r != "/test.Echo/Nope"),
        "unknown gRPC methods must not become labels"
    );

    // Which status each call ended with: trailers-only (headers) for the unary errors and the
    // unknown method, trailers at the end of the stream for the others.
    let mut seen: Vec<(String, Option<i32>)> = registry
        .slow_requests()
        .into_iter()
        .map(|s| (s.route, s.grpc_status))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("/test.Echo/Say".to_owned(), Some(0)),
            ("/test.Echo/Say".to_owned(), Some(5)),
            ("/test.Echo/Say".to_owned(), Some(13)),
            ("/test.Echo/Stream".to_owned(), Some(0)),
            ("/test.Echo/Stream".to_owned(), Some(14)),
            ("_UNMATCHED".to_owned(), Some(12)),
        ]
    );
    assert_eq!(registry.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_client_abandons_is_cancelled() {
    let registry = MetricsRegistry::builder().export(false).build().unwrap();
    let mut client = tonic::client::Grpc::new(serve(registry.clone()).await);
    let mut hanging = stream(&mut client, "hang").await;
    assert!(hanging.message().await.unwrap().is_some());
    drop(hanging);
    wait_for_count(&registry, 1).await;
    let s = registry
        .route_snapshot("/test.Echo/Stream", &Method::POST, Window::OneMinute)
        .unwrap();
    assert_eq!((s.count, s.cancelled, s.errors), (1, 1, 0));
    assert_eq!(registry.in_flight(), 0);
}
