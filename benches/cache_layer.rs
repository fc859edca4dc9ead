//! The response cache layer: a hit against a bare service, a Redis hit (and, with
//! `redis-cluster`, a hit on a private three-master Redis Cluster), a miss against no
//! layer, and a load run of a caching reverse proxy against its origin alone.
//!
//! ```text
//! cargo bench --all-features --bench cache_layer -- --warm-up-time 1 --measurement-time 3
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_strata::cache::CacheLayer;
use tower_strata::store::{MemoryStore, RedisStore, Store};

#[cfg(feature = "redis-cluster")]
#[path = "../tests/support/cluster.rs"]
mod cluster;

type Req = Request<Full<Bytes>>;

fn page() -> Bytes {
    Bytes::from(vec![b'x'; 1024])
}

fn origin()
-> impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future = impl Send>
+ Clone
+ Send
+ 'static {
    let body = page();
    tower::service_fn(move |_req: Req| {
        let body = body.clone();
        async move {
            let mut r = Response::new(Full::new(body));
            r.headers_mut()
                .insert("cache-control", "max-age=3600".parse().unwrap());
            Ok::<_, Infallible>(r)
        }
    })
}

fn get(uri: &str) -> Req {
    Request::get(uri).body(Full::default()).unwrap()
}

async fn once<S, B>(svc: &S, uri: &str) -> usize
where
    S: Service<Req, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let r = svc.clone().oneshot(get(uri)).await.unwrap();
    r.into_body().collect().await.unwrap().to_bytes().len()
}

fn layer_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bare = origin();
    let memory = ServiceBuilder::new()
        .layer(CacheLayer::new(MemoryStore::new(256 << 20)))
        .service(origin());
    let redis_store = rt.block_on(async {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        RedisStore::builder(url)
            .namespace(format!("bench_cache_{}", std::process::id()))
            .build()
            .unwrap()
    });
    let redis = ServiceBuilder::new()
        .layer(CacheLayer::new(redis_store.clone()))
        .service(origin());
    // The same hit on a private three-master Redis Cluster (what cluster mode costs per hit).
    #[cfg(feature = "redis-cluster")]
    let cluster = cluster::PrivateCluster::start();
    #[cfg(feature = "redis-cluster")]
    let on_cluster = rt.block_on(async {
        let store = RedisStore::builder(cluster.url())
            .namespace(format!("bench_cache_{}", std::process::id()))
            .build()
            .unwrap();
        ServiceBuilder::new()
            .layer(CacheLayer::new(store))
            .service(origin())
    });
    rt.block_on(async {
        once(&memory, "http://h/hit").await;
        once(&redis, "http://h/hit").await;
        #[cfg(feature = "redis-cluster")]
        once(&on_cluster, "http://h/hit").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    });

    let mut group = c.benchmark_group("cache_layer");
    group.bench_function("bare service", |b| {
        b.to_async(&rt).iter(|| once(&bare, "http://h/hit"))
    });
    group.bench_function("memory hit", |b| {
        b.to_async(&rt).iter(|| once(&memory, "http://h/hit"))
    });
    group.bench_function("redis hit", |b| {
        b.to_async(&rt).iter(|| once(&redis, "http://h/hit"))
    });
    #[cfg(feature = "redis-cluster")]
    group.bench_function("redis cluster hit", |b| {
        b.to_async(&rt).iter(|| once(&on_cluster, "http://h/hit"))
    });
    let n = Arc::new(AtomicU64::new(0));
    group.bench_function("memory miss (and store)", |b| {
        b.to_async(&rt).iter(|| {
            let uri = format!("http://h/miss/{}", n.fetch_add(1, Ordering::Relaxed));
            let memory = memory.clone();
            async move { once(&memory, &uri).await }
        })
    });
    group.bench_function("bare service, miss-shaped uri", |b| {
        b.to_async(&rt).iter(|| {
            let uri = format!("http://h/miss/{}", n.fetch_add(1, Ordering::Relaxed));
            let bare = bare.clone();
            async move { once(&bare, &uri).await }
        })
    });
    group.finish();
    rt.block_on(async {
        let _ = redis_store.clear().await;
    });
}

/// The request body the services below take: hyper's, boxed (the cache needs `Default`).
type ReqBody = http_body_util::combinators::UnsyncBoxBody<Bytes, hyper::Error>;

/// Serves `svc` over HTTP/1 on a loopback port.
async fn serve<S, B>(svc: S) -> SocketAddr
where
    S: Service<Request<ReqBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = svc.clone();
            tokio::spawn(async move {
                // The cache asks for a request body it can make empty (`Default`).
                let hyper_svc =
                    hyper::service::service_fn(move |r: Request<hyper::body::Incoming>| {
                        svc.clone().oneshot(r.map(BodyExt::boxed_unsync))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), hyper_svc)
                    .await;
            });
        }
    });
    addr
}

type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, hyper::Error>;

/// `clients` tokio tasks, each sending `per_client` GETs over keep-alive connections.
async fn load(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    clients: usize,
    per_client: usize,
) {
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                for j in 0..per_client {
                    let uri = format!("http://{addr}/page/{}", (i * per_client + j) % 16);
                    let r = tokio::time::timeout(
                        Duration::from_secs(10),
                        client.get(uri.parse().unwrap()),
                    )
                    .await
                    .unwrap()
                    .unwrap();
                    assert!(r.status().is_success());
                    r.into_body().collect().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

fn proxy_load(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (origin_addr, proxy_addr) = rt.block_on(async {
        let body = page();
        let origin_addr = serve(tower::service_fn(move |_r: Request<ReqBody>| {
            let body = body.clone();
            async move {
                let mut r = Response::new(Full::new(body));
                r.headers_mut()
                    .insert("cache-control", "max-age=3600".parse().unwrap());
                Ok::<_, Infallible>(r)
            }
        }))
        .await;
        let upstream_client: Client<_, ProxyBody> =
            Client::builder(TokioExecutor::new()).build_http();
        let upstream = tower::service_fn(move |mut r: Request<ProxyBody>| {
            let client = upstream_client.clone();
            let path = r.uri().path().to_owned();
            *r.uri_mut() = format!("http://{origin_addr}{path}").parse().unwrap();
            async move { client.request(r).await.map_err(|e| e.to_string()) }
        });
        let cached = ServiceBuilder::new()
            .layer(CacheLayer::new(MemoryStore::new(64 << 20)))
            .service(upstream);
        let proxy_addr = serve(tower::service_fn(move |r: Request<ReqBody>| {
            let cached = cached.clone();
            async move {
                let r = cached.oneshot(r.map(|b| b.boxed_unsync())).await.unwrap();
                Ok::<_, Infallible>(r)
            }
        }))
        .await;
        (origin_addr, proxy_addr)
    });
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build_http();
    rt.block_on(load(&client, proxy_addr, 1, 16)); // warm the cache
    let mut group = c.benchmark_group("reverse_proxy_load");
    group.sample_size(10);
    group.bench_function("origin alone: 8 clients x 50 GETs", |b| {
        b.to_async(&rt).iter(|| load(&client, origin_addr, 8, 50))
    });
    group.bench_function("through the caching proxy: 8 clients x 50 GETs", |b| {
        b.to_async(&rt).iter(|| load(&client, proxy_addr, 8, 50))
    });
    group.finish();
}

criterion_group!(benches, layer_benches, proxy_load);
criterion_main!(benches);
