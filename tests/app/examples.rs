//! The small examples, one module each: each includes its example file and drives the app it
//! builds the way the example's doc comment says to try it, so no example can rot.
//! (Each example file is a module of its own here, `NAME_example`, which the test module
//! names `example`.)

use crate::support;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// What an answer said.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    /// `Cache-Status`, or empty.
    cache: String,
    body: String,
}

impl Answer {
    fn is_hit(&self) -> bool {
        self.cache.starts_with("tower-strata; hit")
    }

    fn is_miss(&self) -> bool {
        self.cache.contains("fwd=miss")
    }
}

/// Sends `method uri` (with `body`) through `app` and reads the whole answer.
async fn call(app: &Router, method: &str, uri: &str, body: &str) -> Answer {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let cache = response
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        cache,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

/// GETs `uri` until the answer is a hit: the cache writes a miss's entry off the response
/// path, once its body has streamed. Panics after five seconds.
async fn hit(app: &Router, uri: &str) -> Answer {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let answer = call(app, "GET", uri, "").await;
        if answer.is_hit() {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never a hit: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(all(feature = "memory", feature = "cache"))]
#[allow(dead_code)] // its `main`
#[path = "../../examples/cache_route.rs"]
mod cache_route_example;

#[cfg(all(feature = "memory", feature = "cache"))]
mod cache_route {
    use super::cache_route_example as example;

    use super::{call, hit};

    #[tokio::test]
    async fn the_second_get_is_a_hit_and_a_private_answer_is_never_stored() {
        let app = example::app();
        let first = call(&app, "GET", "/products/7", "").await;
        assert_eq!(first.status, 200);
        assert!(first.is_miss(), "{first:?}");
        let second = hit(&app, "/products/7").await;
        assert_eq!(second.body, first.body);
        let other = call(&app, "GET", "/products/8", "").await;
        assert!(other.is_miss(), "another URL, another entry: {other:?}");
        for _ in 0..3 {
            let cart = call(&app, "GET", "/cart", "").await;
            assert!(!cart.is_hit(), "{cart:?}");
        }
    }
}

#[cfg(all(feature = "memory", feature = "purge"))]
#[allow(dead_code)] // its `main`
#[path = "../../examples/purge_tag.rs"]
mod purge_tag_example;

#[cfg(all(feature = "memory", feature = "purge"))]
mod purge_tag {
    use super::purge_tag_example as example;

    use super::{call, hit};

    #[tokio::test]
    async fn a_write_purges_its_tags_and_nothing_else() {
        let app = example::app().unwrap();
        for uri in ["/posts", "/posts/1", "/posts/2"] {
            call(&app, "GET", uri, "").await;
            hit(&app, uri).await;
        }
        let put = call(&app, "PUT", "/posts/1", "A better title").await;
        assert_eq!(put.status, 204);
        // The list is another URL: only its tag `posts` ties it to the write.
        let list = call(&app, "GET", "/posts", "").await;
        assert!(list.is_miss(), "{list:?}");
        assert_eq!(list.body, "A better title\nTags");
        let post = call(&app, "GET", "/posts/1", "").await;
        assert!(post.is_miss(), "{post:?}");
        assert_eq!(post.body, "A better title");
        let untouched = call(&app, "GET", "/posts/2", "").await;
        assert!(untouched.is_hit(), "nothing purged post:2: {untouched:?}");
    }
}

#[cfg(all(feature = "sqlite", feature = "axum"))]
#[allow(dead_code)] // its `main`
#[path = "../../examples/tx_retry.rs"]
mod tx_retry_example;

#[cfg(all(feature = "sqlite", feature = "axum"))]
mod tx_retry {
    use super::tx_retry_example as example;

    use super::call;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_conflicting_bump_is_retried_and_commits() {
        let path = std::env::temp_dir().join(format!(
            "examples_tx_retry_{}_{:x}.db",
            std::process::id(),
            rand::random::<u64>()
        ));
        let pool = example::open(&path).await.unwrap();
        let app = example::app(pool.clone()).unwrap();

        assert_eq!(call(&app, "POST", "/counter", "").await.body, "1");
        assert_eq!(call(&app, "POST", "/conflict", "").await.status, 204);
        // The first attempt read 1, then another writer made it 101: the write of 2 would
        // lose that update, so SQLite refuses it and the layer replays the request.
        let bumped = call(&app, "POST", "/counter", "").await;
        assert_eq!((bumped.status.as_u16(), bumped.body.as_str()), (200, "102"));
        let n: i64 = sqlx::query_scalar("SELECT n FROM counter WHERE id = 1")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 102, "committed");
        let stats: serde_json::Value =
            serde_json::from_str(&call(&app, "GET", "/stats", "").await.body).unwrap();
        assert_eq!(stats["retried"], 1, "{stats}");
        assert_eq!(stats["committed"], 2, "{stats}");

        pool.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}

#[cfg(all(feature = "metrics", feature = "axum"))]
#[allow(dead_code)] // its `main`
#[path = "../../examples/route_metrics.rs"]
mod route_metrics_example;

#[cfg(all(feature = "metrics", feature = "axum"))]
mod route_metrics {
    use super::route_metrics_example as example;

    use super::call;

    /// The only test of this binary that installs the global `metrics` recorder.
    #[tokio::test]
    async fn metrics_lists_the_route_histogram() {
        let app = example::app(example::prometheus::install().unwrap()).unwrap();
        for uri in ["/users/7", "/users/8"] {
            assert_eq!(call(&app, "GET", uri, "").await.status, 200);
        }
        let metrics = call(&app, "GET", "/metrics", "").await.body;
        let route = r#"http_route="/users/{id}""#;
        let series: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("http_server_request_duration") && l.contains(route))
            .collect();
        assert!(
            series
                .iter()
                .any(|l| l.starts_with("http_server_request_duration_bucket")),
            "{metrics}"
        );
        let count = series
            .iter()
            .find(|l| l.starts_with("http_server_request_duration_count"))
            .unwrap_or_else(|| panic!("{metrics}"));
        assert!(count.ends_with(" 2"), "one series for both users: {count}");
        assert!(!metrics.contains("/users/7"), "{metrics}");

        let latency: serde_json::Value =
            serde_json::from_str(&call(&app, "GET", "/latency", "").await.body).unwrap();
        let users = latency
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == "/users/{id}")
            .unwrap_or_else(|| panic!("{latency}"));
        assert_eq!(users["count"], 2);
    }
}

#[cfg(all(feature = "memory", feature = "redis", feature = "cache"))]
#[allow(dead_code)] // its `main`
#[path = "../../examples/tiered_store.rs"]
mod tiered_store_example;

#[cfg(all(feature = "memory", feature = "redis", feature = "cache"))]
mod tiered_store {
    use super::tiered_store_example as example;

    use std::sync::{Arc, RwLock};
    use std::time::Duration;

    use super::{call, hit, support};
    use tower_strata::store::Store;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_on_one_instance_reaches_the_other_l1() {
        let url = support::redis_url();
        let namespace = support::unique("examples_tiered");
        let db = Arc::new(RwLock::new("First edition".to_owned()));
        let (a, a_store) = example::instance(&url, &namespace, db.clone()).unwrap();
        let (b, b_store) = example::instance(&url, &namespace, db).unwrap();
        // L1 answers once the backplane is subscribed (and L1 dropped for it).
        let subscribed = support::eventually(Duration::from_secs(10), || async {
            a_store.l1_in_use() && b_store.l1_in_use()
        })
        .await;
        assert!(subscribed.is_some(), "the backplanes did not subscribe");

        // One host for both, as behind a load balancer: the host is part of the key.
        let page = "http://news.example/headline";
        assert!(call(&a, "GET", page, "").await.is_miss());
        hit(&a, page).await;
        // Stored in Redis by A: B's first read is a hit too.
        let first = call(&b, "GET", page, "").await;
        assert!(first.is_hit(), "{first:?}");
        // B keeps a copy in its own L1 (not while the backplane's news of A's write may
        // still be on its way: then it reads again).
        let held = support::eventually(Duration::from_secs(5), || async {
            assert_eq!(hit(&b, page).await.body, "First edition");
            b_store.l1().stats().entries.unwrap_or(0) > 0
        })
        .await;
        assert!(held.is_some(), "B's L1 never held the page");

        let put = call(&a, "PUT", page, "Second edition").await;
        assert_eq!(put.status, 204);
        // The purge reaches B's L1 through the backplane: B soon answers with the new
        // headline (until then, from its L1 copy), and that answer is a miss.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let fresh = loop {
            let answer = call(&b, "GET", page, "").await;
            if answer.body == "Second edition" {
                break answer;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "B stays stale: {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert!(fresh.is_miss(), "{fresh:?}");
    }
}

#[cfg(all(feature = "memory", feature = "cache", feature = "tonic"))]
#[allow(dead_code)] // its `main`
#[path = "../../examples/tonic_cache.rs"]
mod tonic_cache_example;

#[cfg(all(feature = "memory", feature = "cache", feature = "tonic"))]
mod tonic_cache {
    use super::tonic_cache_example as example;

    use std::sync::atomic::Ordering;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_second_call_is_served_from_the_cache() {
        let cache = example::cache().unwrap();
        let stats = cache.stats();
        let weather = example::Weather::default();
        let calls = weather.calls.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(example::serve(listener, cache, weather));
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();

        let (first, status) = example::forecast(channel.clone(), "Lisbon").await.unwrap();
        assert_eq!(first.computed, 1);
        assert!(status.contains("fwd=miss"), "{status}");
        let stored =
            super::support::eventually(Duration::from_secs(5), || async { stats.stores() == 1 })
                .await;
        assert!(stored.is_some(), "the answer was never stored");

        let (second, status) = example::forecast(channel.clone(), "Lisbon").await.unwrap();
        assert_eq!(second, first, "the same answer, computed by the first call");
        assert!(status.starts_with("tower-strata; hit"), "{status}");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the service saw one call");

        let (other, _) = example::forecast(channel, "Oslo").await.unwrap();
        assert_eq!(other.computed, 2, "another message is another key");
        server.abort();
    }
}
