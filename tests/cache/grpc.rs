//! The cache layer in a tonic server (hand-written prost messages, no protoc).
#![cfg(all(feature = "memory", feature = "tonic"))]

use crate::support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::grpc_echo::{Echo, call, connect, say};
use tower_strata::cache::CacheLayer;
use tower_strata::store::MemoryStore;

#[tokio::test]
async fn works_in_a_tonic_server() {
    let echo = Echo::default();
    let calls = echo.calls.clone();
    let port = support::free_port();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(CacheLayer::new(MemoryStore::new(16 << 20)))
            .add_service(echo)
            .serve_with_shutdown(addr, async {
                let _ = stopped.await;
            }),
    );
    let channel = loop {
        match tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
        {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    // gRPC calls (POST, application/grpc) pass through the cache untouched, with trailers.
    let a = say(channel.clone(), "hi").await;
    let b = say(channel.clone(), "hi").await;
    assert_eq!((a.text.as_str(), a.call), ("hi", 1));
    assert_eq!((b.text.as_str(), b.call), ("hi", 2));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[test]
fn tonic_server_builder_accepts_the_layer() {
    let _router = tonic::transport::Server::builder()
        .layer(CacheLayer::new(MemoryStore::new(1 << 20)))
        .add_service(Echo::default());
}

#[tokio::test]
async fn marked_grpc_methods_are_cached_by_message_and_only_on_status_ok() {
    use tower_strata::cache::GrpcKeyLayer;
    let echo = Echo::default();
    let calls = echo.calls.clone();
    let layers = tower::ServiceBuilder::new()
        .layer(GrpcKeyLayer::new(["/test.Echo/Say", "/test.Echo/Fail"]))
        .layer(
            CacheLayer::new(MemoryStore::new(16 << 20))
                .grpc_method("/test.Echo/Say", Duration::from_secs(60))
                .unwrap()
                .grpc_method("/test.Echo/Fail", Duration::from_secs(60))
                .unwrap(),
        )
        .into_inner();
    let port = support::free_port();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layers)
            .add_service(echo)
            .serve_with_shutdown(addr, async {
                let _ = stopped.await;
            }),
    );
    let channel = connect(port).await;
    let a = say(channel.clone(), "hi").await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let b = say(channel.clone(), "hi").await;
    assert_eq!((a.call, b.call), (1, 1), "the second call is a hit");
    let c = say(channel.clone(), "other").await;
    assert_eq!(
        (c.text.as_str(), c.call),
        ("other", 2),
        "another message is another key"
    );
    for _ in 0..2 {
        let e = call(channel.clone(), "/test.Echo/Fail", "x")
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4, "errors are never cached");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn every_grpc_call_is_bounded_by_the_upstream_timeout() {
    use bytes::Bytes;
    use http_body_util::Full;
    use tower::{ServiceBuilder, ServiceExt};
    use tower_strata::cache::GrpcMessage;
    let slow = tower::service_fn(|_request: http::Request<Full<Bytes>>| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok::<_, std::convert::Infallible>(http::Response::new(Full::<Bytes>::default()))
    });
    let cache = CacheLayer::new(MemoryStore::new(1 << 20))
        .upstream_timeout(Duration::from_millis(100))
        .unwrap()
        .grpc_method("/test.Echo/Say", Duration::from_secs(60))
        .unwrap();
    let svc = ServiceBuilder::new().layer(cache).service(slow);
    // A cached method, and one that passes through: the timeout bounds both.
    for path in ["/test.Echo/Say", "/test.Echo/Other"] {
        let mut request = http::Request::post(format!("http://h{path}"))
            .header("content-type", "application/grpc")
            .body(Full::default())
            .unwrap();
        request
            .extensions_mut()
            .insert(GrpcMessage(Bytes::from_static(b"\0\0\0\0\0")));
        let started = std::time::Instant::now();
        let response = svc.clone().oneshot(request).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5), "{path}");
        assert_eq!(
            response.headers()["grpc-status"],
            "4",
            "{path}: DEADLINE_EXCEEDED"
        );
    }
}
