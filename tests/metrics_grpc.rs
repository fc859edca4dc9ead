//! gRPC status classification by the metrics layer in a real tonic server (hand-written prost
//! messages and service, no protoc).
#![cfg(feature = "metrics")]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Method;
use http::uri::PathAndQuery;
use tokio_stream_shim::ReceiverStream;
use tonic::server::NamedService;
use tonic::transport::{Channel, Server, server::TcpIncoming};
use tonic::{Status, body::Body};
use tonic_prost::ProstCodec;
use tower::Service;
use tower_strata::metrics::{MetricsLayer, MetricsRegistry, Window};

#[derive(Clone, PartialEq, prost::Message)]
struct EchoRequest {
    #[prost(string, tag = "1")]
    mode: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EchoReply {
    #[prost(string, tag = "1")]
    text: String,
}

/// A tiny channel-backed stream, so the test needs no extra stream crate.
mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub struct ReceiverStream<T>(pub tokio::sync::mpsc::Receiver<T>);

    impl<T> futures_util::Stream for ReceiverStream<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

struct Say;

impl tonic::server::UnaryService<EchoRequest> for Say {
    type Response = EchoReply;
    type Future = BoxFut<Result<tonic::Response<EchoReply>, Status>>;

    fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
        Box::pin(async move {
            match req.into_inner().mode.as_str() {
                "internal" => Err(Status::internal("boom")),
                "not_found" => Err(Status::not_found("missing")),
                _ => Ok(tonic::Response::new(EchoReply { text: "hi".into() })),
            }
        })
    }
}

struct Stream;

impl tonic::server::ServerStreamingService<EchoRequest> for Stream {
    type Response = EchoReply;
    type ResponseStream = ReceiverStream<Result<EchoReply, Status>>;
    type Future = BoxFut<Result<tonic::Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
        Box::pin(async move {
            let mode = req.into_inner().mode;
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tokio::spawn(async move {
                for i in 0..2 {
                    let reply = EchoReply {
                        text: format!("part {i}"),
                    };
                    if tx.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
                match mode.as_str() {
                    // Status in the trailers after messages.
                    "unavailable" => {
                        let _ = tx.send(Err(Status::unavailable("gone"))).await;
                    }
                    // Never ends: the client will cancel.
                    "hang" => {
                        tx.closed().await;
                    }
                    _ => {}
                }
            });
            Ok(tonic::Response::new(ReceiverStream(rx)))
        })
    }
}

#[derive(Clone)]
struct Echo;

impl NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

impl Service<http::Request<Body>> for Echo {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFut<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
            Ok(match req.uri().path() {
                "/test.Echo/Say" => grpc.unary(Say, req).await,
                "/test.Echo/Stream" => grpc.server_streaming(Stream, req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

async fn serve(registry: MetricsRegistry) -> Channel {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .layer(MetricsLayer::new(registry))
            .add_service(Echo)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap()
}

async fn unary(
    client: &mut tonic::client::Grpc<Channel>,
    path: &'static str,
    mode: &str,
) -> Result<EchoReply, Status> {
    client.ready().await.unwrap();
    client
        .unary(
            tonic::Request::new(EchoRequest { mode: mode.into() }),
            PathAndQuery::from_static(path),
            ProstCodec::default(),
        )
        .await
        .map(tonic::Response::into_inner)
}

async fn stream(
    client: &mut tonic::client::Grpc<Channel>,
    mode: &str,
) -> tonic::Streaming<EchoReply> {
    client.ready().await.unwrap();
    client
        .server_streaming(
            tonic::Request::new(EchoRequest { mode: mode.into() }),
            PathAndQuery::from_static("/test.Echo/Stream"),
            ProstCodec::default(),
        )
        .await
        .unwrap()
        .into_inner()
}

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
