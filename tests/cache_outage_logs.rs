//! The logs of the cache while its Redis hangs (a private `redis-server` stopped with
//! SIGSTOP) under load: the transitions and a summary, not a line per request. Alone in its
//! test binary, with the process's global subscriber: `tracing` caches per process which
//! events a subscriber wants, so a scoped one beside other tests can miss events.
#![cfg(all(feature = "memory", feature = "redis"))]

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_strata::cache::CacheLayer;
use tower_strata::store::RedisStore;

use support::PrivateRedis;

/// An origin that takes `delay` and counts its calls; cacheable for a minute.
fn slow_origin(
    delay: Duration,
) -> (
    impl tower::Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let origin = tower::service_fn(move |_request: Request<Full<Bytes>>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(delay).await;
            let mut response = Response::new(Full::new(Bytes::from_static(b"page")));
            response
                .headers_mut()
                .insert("cache-control", "max-age=60".parse().unwrap());
            Ok::<_, Infallible>(response)
        }
    });
    (origin, calls)
}

fn store(redis: &PrivateRedis) -> RedisStore {
    RedisStore::builder(redis.url())
        .namespace(support::unique("outage"))
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap()
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn an_outage_under_load_logs_a_few_lines_not_one_per_request() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_env_filter("tower_strata=info")
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let redis = PrivateRedis::start();
    let (origin, calls) = slow_origin(Duration::from_millis(1));
    let svc = ServiceBuilder::new()
        .layer(CacheLayer::new(store(&redis)))
        .service(origin);
    redis.pause();
    // 2,000 requests over distinct URLs (each a miss and a write with a healthy store), 50
    // every 100 ms: a 4 s outage under load.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for round in 0..40 {
        tick.tick().await;
        let batch = (0..50).map(|i| {
            let svc = svc.clone();
            async move {
                let uri = format!("http://h/p/{round}/{i}");
                let request = Request::get(uri).body(Full::default()).unwrap();
                let response = svc.oneshot(request).await.unwrap();
                let _ = response.into_body().collect().await;
            }
        });
        futures_util::future::join_all(batch).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2_000);
    redis.resume();
    // Once it answers again, the next request says so.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let request = Request::get("http://h/after")
        .body(Full::default())
        .unwrap();
    let _ = svc.clone().oneshot(request).await.unwrap();

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines = text.lines().count();
    eprintln!("outage log ({lines} lines):\n{text}");
    // The cache's first line and its last, the breaker's transitions (about two a second while
    // its probes fail), never one per request.
    assert!(
        (2..=24).contains(&lines),
        "{lines} log lines for a 2,000-request outage:\n{text}"
    );
    assert!(text.contains("cache store failing"), "{text}");
}
