//! Caching a tonic method: `CacheLayer::grpc_method` caches a unary method's answers, keyed by
//! its request message, which `GrpcKeyLayer` reads ahead of the cache.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --example tonic_cache --features memory,cache,tonic
//! ```
//!
//! It serves `demo.Weather` on a loopback port and calls `Forecast` with a tonic client in
//! the same process: the first call reaches the service, the second is answered from the
//! cache (`cache-status` comes back as metadata), another city is another key. The messages
//! are prost structs written by hand (what `prost-build` makes of a `.proto`), so there is no
//! `protoc` or build script.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::uri::PathAndQuery;
use tonic::body::Body;
use tonic::transport::{Channel, Server, server::TcpIncoming};
use tonic_prost::ProstCodec;
use tower::ServiceBuilder;
use tower_strata::cache::{CacheConfigError, CacheLayer, GrpcKeyLayer};
use tower_strata::store::MemoryStore;

pub const FORECAST: &str = "/demo.Weather/Forecast";

#[derive(Clone, PartialEq, prost::Message)]
pub struct ForecastRequest {
    #[prost(string, tag = "1")]
    pub city: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Forecast {
    #[prost(string, tag = "1")]
    pub city: String,
    /// Which call of the service computed this answer: a cached answer keeps its number.
    #[prost(uint64, tag = "2")]
    pub computed: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_strata=debug".into()),
        )
        .init();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let channel = Channel::from_shared(format!("http://{}", listener.local_addr()?))?;
    tokio::spawn(serve(listener, cache()?, Weather::default()));
    let channel = channel.connect().await?;
    for city in ["Lisbon", "Lisbon", "Oslo"] {
        let (answer, status) = forecast(channel.clone(), city).await?;
        println!("{answer:?}, cache-status: {status}");
        // A miss is stored once its trailers said `grpc-status: 0`, off the response path:
        // give it a moment, so the next call finds it.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The cache: `Forecast` answers kept for a minute; other methods pass through.
pub fn cache() -> Result<CacheLayer<MemoryStore>, CacheConfigError> {
    CacheLayer::new(MemoryStore::new(64 << 20)).grpc_method(FORECAST, Duration::from_secs(60))
}

/// Serves `Weather` on `listener` behind the cache.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cache: CacheLayer<MemoryStore>,
    weather: Weather,
) -> Result<(), tonic::transport::Error> {
    // The method is named twice: `GrpcKeyLayer` reads its request message, which the cache
    // keys on, so it goes first; `grpc_method` said how long its answers are kept.
    let layers = ServiceBuilder::new()
        .layer(GrpcKeyLayer::new([FORECAST]))
        .layer(cache)
        .into_inner();
    Server::builder()
        .layer(layers)
        .add_service(weather)
        .serve_with_incoming(TcpIncoming::from(listener))
        .await
}

/// Calls `Forecast`; the answer and the `cache-status` it came with.
pub async fn forecast(channel: Channel, city: &str) -> Result<(Forecast, String), tonic::Status> {
    let mut client = tonic::client::Grpc::new(channel);
    let ready = client.ready().await;
    ready.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let request = tonic::Request::new(ForecastRequest { city: city.into() });
    let codec = ProstCodec::<ForecastRequest, Forecast>::default();
    let response = client
        .unary(request, PathAndQuery::from_static(FORECAST), codec)
        .await?;
    let status = response.metadata().get("cache-status").map(|v| v.to_str());
    let status = status.and_then(Result::ok).unwrap_or("-").to_owned();
    Ok((response.into_inner(), status))
}

/// The `demo.Weather` service, as `tonic-build` would generate it around one method body.
#[derive(Clone, Default)]
pub struct Weather {
    /// Calls that reached the service.
    pub calls: Arc<AtomicU64>,
}

impl tonic::server::NamedService for Weather {
    const NAME: &'static str = "demo.Weather";
}

impl tower::Service<http::Request<Body>> for Weather {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let calls = self.calls.clone();
        // The method body.
        let forecast = tower::service_fn(move |request: tonic::Request<ForecastRequest>| {
            let computed = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let city = request.into_inner().city;
            async move { Ok::<_, tonic::Status>(tonic::Response::new(Forecast { city, computed })) }
        });
        Box::pin(async move {
            Ok(match request.uri().path() {
                FORECAST => {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                    grpc.unary(forecast, request).await
                }
                _ => tonic::Status::unimplemented("no such method").into_http(),
            })
        })
    }
}
