//! The proxy's service, outermost first: forwarding headers, purging (with a token), the gRPC
//! message buffer (with marked methods), the cache, and the origin client; and the accept
//! loop that serves it over HTTP/1.1 and h2c.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};
use tower_strata::cache::{AcceptEncoding, AcceptLanguage, BoxError, CacheLayer};
use tower_strata::purge::{BearerToken, PurgeLayer};
use tower_strata::store::{BoxStore, MemoryStore};

use crate::args::Args;
use crate::forwarded;
use crate::origin::Origin;

/// Request bodies between the client connection and the proxy's service.
pub type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// Response bodies: the cache's (a stored body, the origin's, or a fill shared with other
/// clients, whose errors are the cache's `BoxError`).
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// The whole proxy as one service; its error becomes a `502`.
pub type Proxy = BoxCloneService<Request<ProxyBody>, Response<ResponseBody>, String>;

/// Builds the proxy from its command line; exits with status 2 on a configuration it cannot
/// run (as clap does on a malformed flag).
pub async fn build(args: &Args) -> Proxy {
    let exit = |flag: &str, e: &dyn std::fmt::Display| -> ! {
        eprintln!("{flag}: {e}");
        std::process::exit(2);
    };
    let store = if args.store == "memory" {
        if args.l1_bytes.is_some() {
            exit(
                "--l1-bytes",
                &"needs a Redis --store: the memory store is the L1",
            );
        }
        BoxStore::new(MemoryStore::new(256 << 20))
    } else {
        redis_store(&args.store, args.l1_bytes).await
    };
    let mut layer = CacheLayer::new(store)
        .upstream_timeout(Duration::from_secs(60))
        .expect("a positive timeout");
    if let Some(max) = args.max_body {
        layer = layer.max_body_size(max);
    }
    if let Some(ttl) = args.default_ttl {
        layer = layer.default_ttl(ttl);
    }
    if let Some(window) = args.stale_if_error {
        layer = layer.stale_if_error(window);
    }
    if !args.accept_language.is_empty() {
        let languages = AcceptLanguage::new(args.accept_language.iter().map(String::as_str));
        layer = layer.normalise_vary(header::ACCEPT_LANGUAGE, languages);
    }
    if !args.accept_encoding.is_empty() {
        let codings = AcceptEncoding::new(args.accept_encoding.iter().map(String::as_str));
        layer = layer.normalise_vary(header::ACCEPT_ENCODING, codings);
    }
    for method in &args.grpc_method {
        layer = layer
            .grpc_method(method.path.as_str(), args.grpc_ttl(method))
            .unwrap_or_else(|e| exit("--grpc-method", &e));
    }
    // With a token, purge requests are answered in front of the cache; without one, they
    // are forwarded to the origin like any other request.
    let purge = args.purge_token.as_deref().map(|token| {
        BearerToken::new(token)
            .map(|token| PurgeLayer::new(layer.purger(), token))
            .unwrap_or_else(|e| exit("--purge-token", &e))
    });
    let origin = Origin::new(&args.origin, args.origin_http2);
    let cached: Proxy = if args.grpc_method.is_empty() {
        BoxCloneService::new(
            ServiceBuilder::new()
                .map_response(boxed)
                .layer(layer)
                .service_fn(move |r| origin.send(r)),
        )
    } else {
        grpc_cached(args, layer, origin)
    };
    let trust = args.trust_forwarded;
    let proxy = ServiceBuilder::new().map_request(move |r| forwarded::rewrite(r, trust));
    match purge {
        Some(purge) => BoxCloneService::new(proxy.map_response(boxed).layer(purge).service(cached)),
        None => BoxCloneService::new(proxy.service(cached)),
    }
}

/// The cache behind `GrpcKeyLayer`, which buffers the request message of the marked methods
/// for the cache to key on.
#[cfg(feature = "tonic")]
fn grpc_cached(args: &Args, layer: CacheLayer<BoxStore>, origin: Origin) -> Proxy {
    use tower_strata::cache::GrpcKeyLayer;
    let methods = args.grpc_method.iter().map(|m| m.path.clone());
    BoxCloneService::new(
        ServiceBuilder::new()
            .map_response(boxed)
            .map_request(|r: Request<ProxyBody>| r.map(tonic::body::Body::new))
            .layer(GrpcKeyLayer::new(methods))
            .layer(layer)
            .service_fn(move |r| origin.send(r)),
    )
}

#[cfg(not(feature = "tonic"))]
fn grpc_cached(_: &Args, _: CacheLayer<BoxStore>, _: Origin) -> Proxy {
    eprintln!("--grpc-method: built without the `tonic` feature; add `--features tonic`");
    std::process::exit(2);
}

/// A Redis store at `url`, behind a memory L1 of `l1_bytes` when given; refused at start-up
/// when Redis is older than 7.0 (checked when it answers; an unreachable Redis is not fatal,
/// the cache passes through until it is back).
#[cfg(feature = "redis")]
async fn redis_store(url: &str, l1_bytes: Option<u64>) -> BoxStore {
    use tower_strata::store::{RedisStore, StoreError, TieredStore};
    let exit = |e: &dyn std::fmt::Display| -> ! {
        eprintln!("--store {url}: {e}");
        std::process::exit(2);
    };
    let redis = RedisStore::builder(url)
        .namespace("reverse_proxy")
        .build()
        .unwrap_or_else(|e| exit(&e));
    match redis.check_server().await {
        Ok(_) => {}
        Err(e @ StoreError::Incompatible(_)) => exit(&e),
        Err(e) => {
            eprintln!("--store {url}: {e}; going on, the cache passes through until it answers")
        }
    }
    match l1_bytes {
        None => BoxStore::new(redis),
        Some(bytes) => BoxStore::new(
            TieredStore::builder(MemoryStore::new(bytes), redis)
                .build()
                .unwrap_or_else(|e| exit(&e)),
        ),
    }
}

#[cfg(not(feature = "redis"))]
async fn redis_store(url: &str, _l1_bytes: Option<u64>) -> BoxStore {
    eprintln!("--store {url}: built without the `redis` feature; add `--features redis`");
    std::process::exit(2);
}

/// Serves the proxy on `listener` over HTTP/1.1 and h2c, each connection on a task of its
/// own. Logs nothing per request: a connection that ends in an error (a client hanging up
/// mid-request, a malformed request) is logged at debug level.
pub async fn serve(listener: tokio::net::TcpListener, proxy: Proxy) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // hyper's 30 s limit on reading a request's head takes effect only with a timer: without
    // one, a client sending a byte at a time holds its connection for ever.
    builder.http1().timer(TokioTimer::new());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (proxy, builder) = (proxy.clone(), builder.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let mut request = request.map(|b| b.boxed_unsync());
                // The purge log and `X-Forwarded-For` name the peer.
                request.extensions_mut().insert(peer);
                let response = proxy.clone().oneshot(request);
                async move { Ok::<_, Infallible>(response.await.unwrap_or_else(|e| bad_gateway(&e))) }
            });
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

fn boxed<B>(response: Response<B>) -> Response<ResponseBody>
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static,
{
    response.map(|b| b.boxed_unsync())
}

fn bad_gateway(e: &str) -> Response<ResponseBody> {
    let body = http_body_util::Full::new(Bytes::from(format!("bad gateway: {e}\n")))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}
