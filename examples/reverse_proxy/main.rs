//! A caching reverse proxy: the cache layer in front of a hyper-util client, usable before any
//! HTTP origin.
//!
//! ```text
//! cargo run --release --example reverse_proxy -- --listen 127.0.0.1:8080 \
//!     --origin http://127.0.0.1:9000 [--store memory|redis://127.0.0.1:6379] \
//!     [--l1-bytes BYTES] [--max-body BYTES] [--default-ttl SECS] [--purge-token TOKEN]
//! ```
//!
//! `--store` takes `memory` (the default), a Redis server (`redis://HOST:PORT`, or
//! `rediss://` with `--features redis-tls`) or a Redis Cluster, from any of its nodes, with
//! `--features redis-cluster`:
//!
//! ```text
//! cargo run --release --example reverse_proxy --features redis-cluster -- \
//!     --listen 127.0.0.1:8080 --origin http://127.0.0.1:9000 \
//!     --store redis-cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002 --l1-bytes 67108864
//! ```
//!
//! Every request is forwarded (all methods, headers and bodies; `Host` rewritten to the
//! origin's; hop-by-hop headers dropped), and what RFC 9111 allows a shared cache to store is
//! served from the cache. Responses carry `Cache-Status` and, on hits, `Age`.
//!
//! With `--purge-token TOKEN`, requests bearing `Authorization: Bearer TOKEN` can purge:
//! `PURGE <url>` removes that URL's stored responses (every `Vary` variant; `Soft-Purge: 1`
//! marks them stale instead) and `POST /_cache/purge` takes a JSON body such as
//! `{"tags":["products"]}` (see `tower_strata::purge`). Without the flag, purging over HTTP is
//! off and those requests are forwarded to the origin like any other.
//!
//! ```text
//! curl -X PURGE -H 'Authorization: Bearer TOKEN' http://127.0.0.1:8080/products/1
//! curl -H 'Authorization: Bearer TOKEN' -d '{"tags":["products"]}' \
//!     http://127.0.0.1:8080/_cache/purge
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};
use tower_strata::cache::CacheLayer;
use tower_strata::purge::{BearerToken, PurgeLayer};
use tower_strata::store::{BoxStore, MemoryStore};

type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// A caching reverse proxy: the cache layer in front of an HTTP origin.
#[derive(Debug, clap::Parser)]
struct Args {
    /// The address to serve on.
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// The origin every request is forwarded to.
    #[arg(long, value_name = "http://HOST:PORT", value_parser = origin)]
    origin: Uri,
    /// Where responses are stored: memory, redis://HOST:PORT (rediss:// with the redis-tls
    /// feature) or redis-cluster://HOST:PORT,HOST:PORT,... (redis-cluster feature).
    #[arg(long, value_name = "STORE", default_value = "memory", value_parser = store)]
    store: String,
    /// With a Redis store: the size of a memory L1 in front of it (a tiered store).
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    l1_bytes: Option<u64>,
    /// The largest response body the cache records.
    #[arg(long, value_name = "BYTES")]
    max_body: Option<usize>,
    /// The lifetime of responses that carry no freshness of their own.
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    default_ttl: Option<Duration>,
    /// Bearer token that turns on purging over HTTP (PURGE <url>, POST /_cache/purge).
    #[arg(long, value_name = "TOKEN", value_parser = token)]
    purge_token: Option<String>,
}

fn origin(v: &str) -> Result<Uri, String> {
    let uri: Uri = v.parse().map_err(|e| format!("{e}"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err("expected http://HOST:PORT".to_owned());
    }
    Ok(uri)
}

fn store(v: &str) -> Result<String, String> {
    let redis = [
        "redis://",
        "rediss://",
        "redis-cluster://",
        "rediss-cluster://",
    ];
    if v != "memory" && !redis.iter().any(|scheme| v.starts_with(scheme)) {
        return Err("expected memory, redis://... or redis-cluster://...".to_owned());
    }
    Ok(v.to_owned())
}

fn seconds(v: &str) -> Result<Duration, String> {
    v.parse()
        .map(Duration::from_secs)
        .map_err(|e| format!("{e}"))
}

fn token(v: &str) -> Result<String, String> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("expected non-empty visible ASCII".to_owned());
    }
    Ok(v.to_owned())
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

/// Rewrites a request for the origin: its scheme and authority, `Host`, no hop-by-hop fields.
fn to_origin(origin: &Uri, mut request: Request<ProxyBody>) -> Result<Request<ProxyBody>, String> {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let authority = origin.authority().ok_or("origin without authority")?;
    *request.uri_mut() = Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query(path)
        .build()
        .map_err(|e| e.to_string())?;
    let headers = request.headers_mut();
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    for name in named.iter().map(String::as_str).chain(HOP_BY_HOP) {
        headers.remove(name);
    }
    headers.insert(
        header::HOST,
        HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?,
    );
    Ok(request)
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

#[tokio::main]
async fn main() {
    let args = <Args as clap::Parser>::parse();
    let store = if args.store == "memory" {
        if args.l1_bytes.is_some() {
            eprintln!("--l1-bytes needs a Redis --store: the memory store is the L1");
            std::process::exit(2);
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

    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.set_nodelay(true);
    let client: Client<_, ProxyBody> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let origin = args.origin.clone();
    let upstream = tower::service_fn(move |request: Request<ProxyBody>| {
        let client = client.clone();
        let request = to_origin(&origin, request);
        async move {
            match request {
                Ok(request) => client.request(request).await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            }
        }
    });
    // With a token, purge requests are answered in front of the cache; without one, the
    // service is the cache alone and they are forwarded like any other request.
    let purge = args.purge_token.as_deref().map(|token| {
        BearerToken::new(token)
            .map(|token| PurgeLayer::new(layer.purger(), token))
            .unwrap_or_else(|e| {
                eprintln!("--purge-token: {e}");
                std::process::exit(2);
            })
    });
    let cached = ServiceBuilder::new().layer(layer).service(upstream);
    let proxy: BoxCloneService<Request<ProxyBody>, Response<ProxyBody>, String> = match purge {
        Some(purge) => BoxCloneService::new(
            ServiceBuilder::new()
                .layer(purge)
                .service(cached)
                .map_response(|r| r.map(|b| b.boxed_unsync())),
        ),
        None => BoxCloneService::new(cached.map_response(|r| r.map(|b| b.boxed_unsync()))),
    };

    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("--listen {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    println!(
        "reverse_proxy listening on http://{} -> {} (store: {}, purging over HTTP: {})",
        listener.local_addr().map_or(args.listen, |a| a),
        args.origin,
        args.store,
        if args.purge_token.is_some() {
            "on"
        } else {
            "off"
        }
    );
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let proxy = proxy.clone();
                async move {
                    let mut request = request.map(|b| b.boxed_unsync());
                    // The purge log names the peer.
                    request.extensions_mut().insert(peer);
                    let response = match proxy.oneshot(request).await {
                        Ok(response) => response,
                        Err(e) => {
                            let mut r = Response::new(
                                http_body_util::Full::new(Bytes::from(format!(
                                    "bad gateway: {e}\n"
                                )))
                                .map_err(|never: Infallible| match never {})
                                .boxed_unsync(),
                            );
                            *r.status_mut() = StatusCode::BAD_GATEWAY;
                            r
                        }
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        <Args as clap::Parser>::try_parse_from(
            std::iter::once("reverse_proxy").chain(args.iter().copied()),
        )
    }

    #[test]
    fn parses_the_contract() {
        let a = parse(&[
            "--listen",
            "127.0.0.1:8080",
            "--origin",
            "http://127.0.0.1:9000",
            "--store",
            "redis://127.0.0.1:6379",
            "--l1-bytes",
            "67108864",
            "--max-body",
            "1024",
            "--default-ttl",
            "30",
            "--purge-token",
            "t0ken",
        ])
        .unwrap();
        assert_eq!(a.listen.port(), 8080);
        assert_eq!(a.store, "redis://127.0.0.1:6379");
        let cluster = "redis-cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002";
        let c = parse(&[
            "--listen",
            "127.0.0.1:1",
            "--origin",
            "http://o:1",
            "--store",
            cluster,
        ])
        .unwrap();
        assert_eq!(c.store, cluster);
        assert!(parse(&["--store", "cluster://x:1"]).is_err());
        assert_eq!(a.l1_bytes, Some(67_108_864));
        assert!(parse(&["--l1-bytes", "0"]).is_err());
        assert!(parse(&["--l1-bytes", "-1"]).is_err());
        assert_eq!(a.max_body, Some(1024));
        assert_eq!(a.default_ttl, Some(Duration::from_secs(30)));
        assert_eq!(a.purge_token.as_deref(), Some("t0ken"));
        let plain = parse(&["--listen", "127.0.0.1:1", "--origin", "http://o:1"]).unwrap();
        assert!(plain.purge_token.is_none());
        assert!(parse(&["--purge-token", "two words"]).is_err());
        assert!(parse(&["--purge-token", ""]).is_err());
        assert!(parse(&["--listen", "x"]).is_err());
        assert!(parse(&["--listen", "127.0.0.1:1"]).is_err());
        assert!(parse(&["--listen", "127.0.0.1:1", "--origin", "ftp://o"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--listen"]).is_err());
    }
}
