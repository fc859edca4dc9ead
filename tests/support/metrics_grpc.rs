//! A hand-written tonic service (prost messages, no protoc) for the metrics tests: `Say` (unary)
//! and `Stream` (server streaming), with modes that end in various gRPC statuses.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use tonic::server::NamedService;
use tonic::transport::{Channel, Server, server::TcpIncoming};
use tonic::{Status, body::Body};
use tonic_prost::ProstCodec;
use tower::Service;
use tower_strata::metrics::{MetricsLayer, MetricsRegistry};

use self::tokio_stream_shim::ReceiverStream;

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub mode: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub text: String,
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

pub async fn serve(registry: MetricsRegistry) -> Channel {
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

pub async fn unary(
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

pub async fn stream(
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
