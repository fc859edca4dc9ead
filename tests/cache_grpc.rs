//! The cache layer in a tonic server (hand-written prost messages, no protoc).
#![cfg(all(feature = "memory", feature = "tonic"))]

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use tonic::body::Body;
use tonic_prost::ProstCodec;
use tower_strata::cache::CacheLayer;
use tower_strata::store::MemoryStore;

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub text: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(uint64, tag = "2")]
    pub call: u64,
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// `test.Echo/Say`, written the way tonic's codegen would.
#[derive(Clone, Default)]
struct Echo {
    calls: Arc<AtomicUsize>,
}

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

struct Say(Arc<AtomicUsize>);

impl tonic::server::UnaryService<EchoRequest> for Say {
    type Response = EchoReply;
    type Future = BoxFut<Result<tonic::Response<EchoReply>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<EchoRequest>) -> Self::Future {
        let call = self.0.fetch_add(1, Ordering::SeqCst) as u64 + 1;
        Box::pin(async move {
            Ok(tonic::Response::new(EchoReply {
                text: request.into_inner().text,
                call,
            }))
        })
    }
}

struct Fail(Arc<AtomicUsize>);

impl tonic::server::UnaryService<EchoRequest> for Fail {
    type Response = EchoReply;
    type Future = BoxFut<Result<tonic::Response<EchoReply>, tonic::Status>>;

    fn call(&mut self, _request: tonic::Request<EchoRequest>) -> Self::Future {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Err(tonic::Status::not_found("no such thing")) })
    }
}

impl tower::Service<http::Request<Body>> for Echo {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFut<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let calls = self.calls.clone();
        let fail = request.uri().path() == "/test.Echo/Fail";
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
            Ok(if fail {
                grpc.unary(Fail(calls), request).await
            } else {
                grpc.unary(Say(calls), request).await
            })
        })
    }
}

async fn call(
    channel: tonic::transport::Channel,
    path: &'static str,
    text: &str,
) -> Result<EchoReply, tonic::Status> {
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.unwrap();
    client
        .unary(
            tonic::Request::new(EchoRequest { text: text.into() }),
            PathAndQuery::from_static(path),
            ProstCodec::default(),
        )
        .await
        .map(tonic::Response::into_inner)
}

async fn say(channel: tonic::transport::Channel, text: &str) -> EchoReply {
    call(channel, "/test.Echo/Say", text).await.unwrap()
}

async fn connect(port: u16) -> tonic::transport::Channel {
    loop {
        match tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
        {
            Ok(c) => return c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

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
