//! The proxy's service, outermost first: forwarding headers, purging (with a token), the gRPC
//! message buffer (with marked methods), the cache, and the origin client; and the accept
//! loop that serves it over HTTP/1.1 and h2c.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};
use tower_strata::cache::CacheLayer;
use tower_strata::purge::{BearerToken, PurgeLayer};
use tower_strata::store::{BoxStore, MemoryStore};

use crate::args::Args;

/// Request and response bodies between the client connection and the proxy's service.
pub type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// The whole proxy as one service; its error becomes a `502`.
pub type Proxy = BoxCloneService<Request<ProxyBody>, Response<ProxyBody>, String>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Request bodies on their way to the origin (a client's, or one the gRPC buffer rebuilt).
type OriginBody = UnsyncBoxBody<Bytes, BoxError>;

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
    let mut layer = CacheLayer::new(store).upstream_timeout(Duration::from_secs(60));
    if let Some(max) = args.max_body {
        layer = layer.max_body_size(max);
    }
    if let Some(ttl) = args.default_ttl {
        layer = layer.default_ttl(ttl);
    }
    if let Some(window) = args.stale_if_error {
        layer = layer.stale_if_error(window);
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
    let proxy = ServiceBuilder::new().map_request(move |r| forwarded(r, trust));
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

/// Fields that change which resource or method the origin serves. The cache keys on neither,
/// so a client could make a URL's stored answer another one's: dropped from every request
/// (target overrides) or from those the cache answers (method overrides).
const TARGET_OVERRIDES: [&str; 2] = ["x-original-url", "x-rewrite-url"];
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// What the origin is told about the client, set in front of the cache so the cache and the
/// origin see the same request. By default the client's `Forwarded`, `X-Forwarded-*` and
/// `X-Real-IP` are dropped and the proxy sets `X-Forwarded-For` (the TCP peer),
/// `X-Forwarded-Proto` (`http`) and `X-Forwarded-Host` (the client's `Host`). With `trust`
/// (`--trust-forwarded`) the previous hop's values are kept and the peer is appended to its
/// `X-Forwarded-For` and `Forwarded`.
fn forwarded<B>(mut request: Request<B>, trust: bool) -> Request<B> {
    let peer = request
        .extensions()
        .get::<SocketAddr>()
        .map(|p| p.ip().to_canonical());
    let host = request.headers().get(header::HOST).cloned().or_else(|| {
        let authority = request.uri().authority()?;
        HeaderValue::from_str(authority.as_str()).ok()
    });
    let safe = matches!(*request.method(), Method::GET | Method::HEAD);
    let headers = request.headers_mut();
    for name in TARGET_OVERRIDES {
        headers.remove(name);
    }
    if safe {
        for name in METHOD_OVERRIDES {
            headers.remove(name);
        }
    }
    let x_forwarded_for = HeaderName::from_static("x-forwarded-for");
    let mut chain = if trust {
        joined(headers, &x_forwarded_for)
    } else {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|n| {
                n.as_str().starts_with("x-forwarded-")
                    || *n == header::FORWARDED
                    || *n == "x-real-ip"
            })
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
        }
        String::new()
    };
    if let Some(peer) = peer {
        append(&mut chain, &peer.to_string());
        let mut elements = joined(headers, &header::FORWARDED);
        if trust && !elements.is_empty() {
            append(&mut elements, &forwarded_for(peer));
            set(headers, header::FORWARDED, elements);
        }
    }
    if !chain.is_empty() {
        set(headers, x_forwarded_for, chain);
    }
    headers
        .entry("x-forwarded-proto")
        .or_insert(HeaderValue::from_static("http"));
    if let Some(host) = host {
        headers.entry("x-forwarded-host").or_insert(host);
    }
    request
}

/// A field's lines joined with `, ` (empty when absent or not visible ASCII).
fn joined(headers: &HeaderMap, name: &HeaderName) -> String {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    values.join(", ")
}

fn append(list: &mut String, element: &str) {
    if !list.is_empty() {
        list.push_str(", ");
    }
    list.push_str(element);
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: String) {
    if let Ok(value) = HeaderValue::try_from(value) {
        headers.insert(name, value);
    }
}

/// A `Forwarded` element naming `ip` (RFC 7239 §6: IPv6 quoted and bracketed).
fn forwarded_for(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => format!("for={ip}"),
        IpAddr::V6(ip) => format!("for=\"[{ip}]\""),
    }
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Removes the fields of one connection (RFC 9110 §7.6.1): those listed in `Connection`, and
/// the hop-by-hop fields; for requests on their way to the origin and its responses alike.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The origin: a hyper-util client speaking HTTP/1.1, or h2c with prior knowledge.
#[derive(Clone)]
struct Origin {
    client: Client<HttpConnector, OriginBody>,
    authority: Authority,
    host: HeaderValue,
    http2: bool,
}

impl Origin {
    fn new(origin: &Uri, http2: bool) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .http2_only(http2)
            .build(connector);
        // `args::origin` accepted only URIs with an authority.
        let authority = origin
            .authority()
            .cloned()
            .expect("origin has an authority");
        let host = HeaderValue::from_str(authority.as_str()).expect("an authority is a value");
        Origin {
            client,
            authority,
            host,
            http2,
        }
    }

    /// Sends a request to the origin: its URI on the origin's authority, the version the
    /// client speaks to the origin (not the one the client spoke to the proxy), no
    /// hop-by-hop fields either way.
    fn send<B>(
        &self,
        mut request: Request<B>,
    ) -> impl Future<Output = Result<Response<Incoming>, String>> + Send + use<B>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let uri = Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(path)
            .build();
        let headers = request.headers_mut();
        // gRPC needs `TE: trailers`, the one value HTTP/2 allows; the proxy relays trailers,
        // so it may send it on its own behalf.
        let trailers = self.http2 && lists(headers, header::TE, "trailers");
        strip_hop_by_hop(headers);
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if self.http2 {
            // `:authority` comes from the URI.
            headers.remove(header::HOST);
            *request.version_mut() = Version::HTTP_2;
        } else {
            headers.insert(header::HOST, self.host.clone());
            *request.version_mut() = Version::HTTP_11;
        }
        let client = self.client.clone();
        async move {
            *request.uri_mut() = uri.map_err(|e| e.to_string())?;
            let request = request.map(|b| b.map_err(Into::into).boxed_unsync());
            let mut response = client.request(request).await.map_err(|e| {
                tracing::debug!(error = %e, "origin request failed");
                e.to_string()
            })?;
            strip_hop_by_hop(response.headers_mut());
            Ok(response)
        }
    }
}

/// Whether a comma-separated field lists `token`.
fn lists(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case(token)
        })
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

fn boxed<B>(response: Response<B>) -> Response<ProxyBody>
where
    B: http_body::Body<Data = Bytes, Error = hyper::Error> + Send + 'static,
{
    response.map(|b| b.boxed_unsync())
}

fn bad_gateway(e: &str) -> Response<ProxyBody> {
    let body = http_body_util::Full::new(Bytes::from(format!("bad gateway: {e}\n")))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}
