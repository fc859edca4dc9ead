//! `test.Echo`, a hand-written tonic service (prost messages, no protoc) that counts its
//! calls: `Say` echoes the text with the call number, `Fail` answers `NOT_FOUND`; and a client
//! for it.

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
pub struct Echo {
    pub calls: Arc<AtomicUsize>,
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

pub async fn call(
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

pub async fn say(channel: tonic::transport::Channel, text: &str) -> EchoReply {
    call(channel, "/test.Echo/Say", text).await.unwrap()
}

pub async fn connect(port: u16) -> tonic::transport::Channel {
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
