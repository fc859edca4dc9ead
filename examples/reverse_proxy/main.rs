//! A caching reverse proxy: the cache layer in front of a hyper-util client, usable before any
//! HTTP origin.
//!
//! ```text
//! cargo run --release --example reverse_proxy -- --listen 127.0.0.1:8080 \
//!     --origin http://127.0.0.1:9000 [--store memory|redis://127.0.0.1:6379] \
//!     [--l1-bytes BYTES] [--max-body BYTES] [--default-ttl SECS] [--purge-token TOKEN] \
//!     [--trust-forwarded] [--origin-http2] [--grpc-method /pkg.Service/Method[=SECS]]...
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
//! origin's; hop-by-hop headers dropped both ways), and what RFC 9111 allows a shared cache to
//! store is served from the cache. Responses carry `Cache-Status` and, on hits, `Age`.
//!
//! Clients may speak HTTP/1.1 or HTTP/2 without TLS (h2c, prior knowledge); the origin is
//! spoken to in HTTP/1.1, or in h2c with `--origin-http2` (a gRPC server, say). With
//! `--grpc-method /pkg.Service/Method` (repeatable, `=SECS` for a TTL other than
//! `--default-ttl` or 60 s; needs `--features tonic`), unary calls to that method are cached,
//! keyed by the request message, when they end with `grpc-status: 0`:
//!
//! ```text
//! cargo run --release --example reverse_proxy --features tonic -- --listen 127.0.0.1:8080 \
//!     --origin http://127.0.0.1:50051 --origin-http2 --grpc-method /shop.Catalog/GetProduct=30
//! ```
//!
//! The origin is told about the client in `X-Forwarded-For` (the TCP peer),
//! `X-Forwarded-Proto` (`http`) and `X-Forwarded-Host` (the host asked for), set by the proxy:
//! the client's own `Forwarded`, `X-Forwarded-*` and `X-Real-IP` never reach the origin, so
//! no client can make it build a stored answer (a redirect's `Location`, say) on a host of
//! its choosing. Behind a load balancer that every client goes through, `--trust-forwarded`
//! keeps its `X-Forwarded-Proto` and `-Host` and appends the peer to its `X-Forwarded-For`
//! (and `Forwarded`). `X-Original-URL` and `X-Rewrite-URL`, and on GET and HEAD the method
//! overrides (`X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`), are dropped
//! either way: the cache keys on the request's own target and method.
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
//!
//! It logs its start and problems, never a line per request (`RUST_LOG=debug` adds
//! connections that end in an error and failed origin requests).
//!
//! `args.rs` holds the flags, `proxy.rs` the stack and the accept loop, `forwarded.rs` the
//! forwarding fields and `origin.rs` the origin client.

mod args;
mod forwarded;
mod origin;
mod proxy;

#[tokio::main]
async fn main() {
    let args = <args::Args as clap::Parser>::parse();
    let proxy = proxy::build(&args).await;
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
    proxy::serve(listener, proxy).await;
}
