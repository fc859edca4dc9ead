//! Invalidation rules, the `Cache-Group-Invalidation` header, the `Invalidation` extension and
//! the invalidation bus, over the memory store and Redis (no database: see `tests/tx/invalidate.rs`).
#![cfg(feature = "memory")]

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use serde_json::json;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_strata::purge::{
    EventRule, InvalidateLayer, Invalidation, InvalidationBus, PurgeConfigErrorKind, Purger, Rule,
    RuleError,
};
use tower_strata::store::{MemoryStore, SetOptions, Store, StoreExt};

fn tagged(tags: &[&str]) -> SetOptions {
    SetOptions::new()
        .ttl(Duration::from_secs(60))
        .tags(tags.iter().copied())
}

/// Entries `a` (product:1, products), `b` (product:2, products), `c` (product:12), `d` (other).
async fn fill(store: &impl Store) {
    let v = || Bytes::from_static(b"v");
    store
        .set("a", v(), &tagged(&["product:1", "products"]))
        .await
        .unwrap();
    store
        .set("b", v(), &tagged(&["product:2", "products"]))
        .await
        .unwrap();
    store.set("c", v(), &tagged(&["product:12"])).await.unwrap();
    store.set("d", v(), &tagged(&["other"])).await.unwrap();
    store.set("key:1", v(), &SetOptions::new()).await.unwrap();
}

async fn present(store: &impl Store) -> Vec<&'static str> {
    let mut out = Vec::new();
    for key in ["a", "b", "c", "d", "key:1"] {
        if store.get(key).await.unwrap().is_some() {
            out.push(key);
        }
    }
    out
}

fn product_rules(layer: InvalidateLayer) -> InvalidateLayer {
    layer
        .rule(
            Rule::on(
                [Method::PUT, Method::PATCH, Method::DELETE],
                "/products/{id}",
            )
            .purge_tags(["product:{id}"])
            .purge_keys(["key:{id}"]),
        )
        .unwrap()
        .rule(Rule::on([Method::POST], "/products").purge_tags(["products"]))
        .unwrap()
}

/// A service answering every request with `status` and the given response headers, plus an
/// `Invalidation` extension when the request has `x-invalidate-tag`.
fn app(
    layer: InvalidateLayer,
    status: u16,
    headers: &'static [(&'static str, &'static str)],
) -> impl Service<Request<String>, Response = Response<String>, Error = Infallible> + Clone {
    ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |req: Request<String>| async move {
            let mut response = Response::new(String::from("ok"));
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            for (name, value) in headers {
                response.headers_mut().append(*name, value.parse().unwrap());
            }
            if let Some(tag) = req.headers().get("x-invalidate-tag") {
                response
                    .extensions_mut()
                    .insert(Invalidation::tags([tag.to_str().unwrap()]).and_keys(["key:1"]));
            }
            Ok::<_, Infallible>(response)
        })
}

fn req(method: Method, uri: &str) -> Request<String> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(String::new())
        .unwrap()
}

#[tokio::test]
async fn a_rule_with_path_params_purges_the_right_tags_and_keys() {
    let store = MemoryStore::new(1 << 20);
    fill(&store).await;
    let layer = product_rules(InvalidateLayer::new(Purger::new(store.clone())));
    let svc = app(layer.clone(), 200, &[]);

    let response = svc
        .clone()
        .oneshot(req(Method::PUT, "/products/1"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // product:1 and key:1 went; product:12 (a prefix match would take it) and product:2 stay.
    assert_eq!(present(&store).await, ["b", "c", "d"]);

    svc.clone()
        .oneshot(req(Method::POST, "/products"))
        .await
        .unwrap();
    assert_eq!(present(&store).await, ["c", "d"]);

    // Percent-decoded like axum's `Path`.
    store
        .set("e", Bytes::new(), &tagged(&["product:a:b"]))
        .await
        .unwrap();
    svc.clone()
        .oneshot(req(Method::DELETE, "/products/a%3Ab"))
        .await
        .unwrap();
    assert!(store.get("e").await.unwrap().is_none());

    let stats = layer.stats();
    assert_eq!(stats.rule_firings, 3);
    assert_eq!(
        stats.purges, 5,
        "product:1, key:1, products, product:a:b, key:a:b"
    );
    assert_eq!(stats.failures, 0);
    assert_eq!(layer.purger().stats().tag_purges, 3);
}

#[tokio::test]
async fn a_soft_purger_marks_entries_stale_instead() {
    let store = MemoryStore::new(1 << 20);
    let options = tagged(&["product:1"]).grace(Duration::from_secs(60));
    store
        .set("a", Bytes::from_static(b"v"), &options)
        .await
        .unwrap();
    let layer = product_rules(InvalidateLayer::new(Purger::new(store.clone()).soft()));
    app(layer.clone(), 200, &[])
        .oneshot(req(Method::PUT, "/products/1"))
        .await
        .unwrap();
    let entry = store
        .get("a")
        .await
        .unwrap()
        .expect("kept for its grace period");
    assert!(entry.is_stale());
    assert_eq!(layer.purger().stats().soft_purges, 2, "the tag and the key");
}

#[tokio::test]
async fn rules_do_not_fire_on_failures_other_methods_or_other_routes() {
    let store = MemoryStore::new(1 << 20);
    fill(&store).await;
    for status in [400, 404, 409, 500, 503, 302] {
        let layer = product_rules(InvalidateLayer::new(Purger::new(store.clone())));
        let svc = app(layer.clone(), status, &[]);
        let response = svc.oneshot(req(Method::PUT, "/products/1")).await.unwrap();
        assert_eq!(response.status(), status);
        assert_eq!(layer.stats().rule_firings, 0, "status {status}");
    }
    let layer = product_rules(InvalidateLayer::new(Purger::new(store.clone())));
    let svc = app(layer.clone(), 200, &[]);
    for (method, uri) in [
        (Method::GET, "/products/1"),
        (Method::POST, "/products/1"),
        (Method::PUT, "/products/1/reviews"),
        (Method::PUT, "/products/"),
        (Method::PUT, "/products"),
    ] {
        svc.clone().oneshot(req(method, uri)).await.unwrap();
    }
    // An inner service error purges nothing either.
    let failing =
        ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(|_req: Request<String>| async {
                Err::<Response<String>, _>(std::io::Error::other("down"))
            });
    assert!(
        failing
            .oneshot(req(Method::PUT, "/products/1"))
            .await
            .is_err()
    );

    assert_eq!(layer.stats().rule_firings, 0);
    assert_eq!(present(&store).await, ["a", "b", "c", "d", "key:1"]);
}

#[tokio::test]
async fn the_success_statuses_are_configurable() {
    let store = MemoryStore::new(1 << 20);
    fill(&store).await;
    let layer = product_rules(InvalidateLayer::new(Purger::new(store.clone())))
        .success(|s| s.is_success() || s == StatusCode::SEE_OTHER);
    app(layer.clone(), 303, &[])
        .oneshot(req(Method::PUT, "/products/2"))
        .await
        .unwrap();
    assert_eq!(present(&store).await, ["a", "c", "d", "key:1"]);
    assert_eq!(layer.stats().rule_firings, 1);
}

#[test]
fn malformed_rules_are_errors_when_added() {
    let layer = || InvalidateLayer::new(Purger::new(MemoryStore::new(1 << 20)));
    let bad = [
        Rule::on([Method::PUT], "/products/{id").purge_tags(["p"]),
        Rule::on([Method::PUT], "products/{id}").purge_tags(["p"]),
        Rule::on([Method::PUT], "/products/{id}").purge_tags(["product:{pid}"]),
        Rule::on([Method::PUT], "/products/{id}").purge_tags(["product:{id"]),
        Rule::on([Method::PUT], "/products/{id}").purge_keys(["}"]),
        Rule::on([Method::PUT], "/products/{id}"),
    ];
    for rule in bad {
        let shown = format!("{rule:?}");
        assert!(layer().rule(rule).is_err(), "{shown}");
    }
    let error = layer()
        .rule(Rule::on([Method::PUT], "/p/{id}").purge_tags(["x:{pid}"]))
        .unwrap_err();
    assert_eq!(error.kind(), PurgeConfigErrorKind::Rule);
    let rule = std::error::Error::source(&error)
        .and_then(|source| source.downcast_ref::<RuleError>())
        .expect("the rule's error is the source");
    assert!(matches!(rule, RuleError::UnknownParam { .. }));
    assert!(error.to_string().contains("{pid}"), "{error}");
}

#[tokio::test]
async fn cache_group_invalidation_is_honoured_and_kept_by_default() {
    let store = MemoryStore::new(1 << 20);
    fill(&store).await;
    let layer = InvalidateLayer::new(Purger::new(store.clone()));
    let headers: &'static [(&str, &str)] = &[(
        "cache-group-invalidation",
        r#""product:1";x=1, token, "other""#,
    )];
    let response = app(layer.clone(), 201, headers)
        .oneshot(req(Method::POST, "/anything"))
        .await
        .unwrap();
    assert_eq!(present(&store).await, ["b", "c", "key:1"]);
    assert!(response.headers().contains_key("cache-group-invalidation"));
    assert_eq!(layer.stats().header_invalidations, 1);

    // Stripped when asked.
    let layer = InvalidateLayer::new(Purger::new(store.clone())).strip_group_header(true);
    let headers: &'static [(&str, &str)] = &[("cache-group-invalidation", r#""product:2""#)];
    let response = app(layer, 200, headers)
        .oneshot(req(Method::DELETE, "/x"))
        .await
        .unwrap();
    assert!(!response.headers().contains_key("cache-group-invalidation"));
    assert_eq!(present(&store).await, ["c", "key:1"]);
}

#[tokio::test]
async fn cache_group_invalidation_is_ignored_when_malformed_on_safe_methods_or_failures() {
    let store = MemoryStore::new(1 << 20);
    fill(&store).await;
    let layer = InvalidateLayer::new(Purger::new(store.clone()));
    for value in [
        r#""product:1"#,
        r#""product:1" "products""#,
        "product:1",
        r#""a",,"#,
    ] {
        let headers: &'static [(&str, &str)] =
            Box::leak(vec![("cache-group-invalidation", value)].into_boxed_slice());
        let response = app(layer.clone(), 200, headers)
            .oneshot(req(Method::POST, "/x"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{value}");
    }
    let headers: &'static [(&str, &str)] = &[("cache-group-invalidation", r#""product:1""#)];
    for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
        app(layer.clone(), 200, headers)
            .oneshot(req(method, "/x"))
            .await
            .unwrap();
    }
    app(layer.clone(), 500, headers)
        .oneshot(req(Method::POST, "/x"))
        .await
        .unwrap();
    assert_eq!(present(&store).await, ["a", "b", "c", "d", "key:1"]);
    assert_eq!(layer.stats().purges, 0);
}

#[tokio::test]
async fn the_invalidation_extension_is_honoured_on_unsafe_methods() {
    let store = MemoryStore::new(1 << 20);
    fill(&store).await;
    let layer = InvalidateLayer::new(Purger::new(store.clone()));
    let mut get = req(Method::GET, "/x");
    get.headers_mut()
        .insert("x-invalidate-tag", "products".parse().unwrap());
    app(layer.clone(), 200, &[]).oneshot(get).await.unwrap();
    assert_eq!(present(&store).await, ["a", "b", "c", "d", "key:1"]);

    let mut patch = req(Method::PATCH, "/x");
    patch
        .headers_mut()
        .insert("x-invalidate-tag", "products".parse().unwrap());
    app(layer.clone(), 204, &[]).oneshot(patch).await.unwrap();
    assert_eq!(present(&store).await, ["c", "d"]);
    assert_eq!(layer.stats().extension_invalidations, 1);
}

#[tokio::test]
async fn a_failed_purge_is_counted_and_never_fails_the_response() {
    let store = MemoryStore::new(1 << 20);
    fill(&store).await;
    let layer = InvalidateLayer::new(Purger::new(store.clone()));
    // A tag with a space is refused by the store.
    let headers: &'static [(&str, &str)] =
        &[("cache-group-invalidation", r#""bad tag", "product:1""#)];
    let response = app(layer.clone(), 200, headers)
        .oneshot(req(Method::POST, "/x"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let stats = layer.stats();
    assert_eq!(stats.failures, 1);
    assert_eq!(stats.purges, 2);
    assert_eq!(layer.purger().stats().failures, 1);
    // The failure did not stop the other purge.
    assert_eq!(present(&store).await, ["b", "c", "d", "key:1"]);
}

#[tokio::test]
async fn with_axum_and_the_cache_layer_the_next_read_is_fresh() {
    use axum::routing::get;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tower_strata::cache::CacheLayer;

    let store = MemoryStore::new(8 << 20);
    let price = Arc::new(AtomicU64::new(1));
    let read = price.clone();
    let write = price.clone();
    let invalidate = InvalidateLayer::new(Purger::new(store.clone()))
        .rule(Rule::on([Method::PUT], "/admin/products/{id}").purge_tags(["product:{id}"]))
        .unwrap();
    let stats = invalidate.clone();
    let app = axum::Router::new()
        .route(
            "/products/{id}",
            get(move |axum::extract::Path(id): axum::extract::Path<u64>| {
                let read = read.clone();
                async move {
                    (
                        [
                            ("cache-control", "max-age=600".to_owned()),
                            ("cache-tag", format!("product:{id}")),
                        ],
                        read.load(Ordering::SeqCst).to_string(),
                    )
                }
            }),
        )
        .route(
            "/admin/products/{id}",
            axum::routing::put(move || {
                let write = write.clone();
                async move {
                    write.fetch_add(1, Ordering::SeqCst);
                    StatusCode::NO_CONTENT
                }
            }),
        )
        .layer(invalidate)
        .layer(CacheLayer::new(store.clone()));
    let body = |uri: &'static str, method: Method| {
        let app = app.clone();
        async move {
            let request = Request::builder()
                .method(method)
                .uri(uri)
                .body(axum::body::Body::empty())
                .unwrap();
            let response = app.oneshot(request).await.unwrap();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            String::from_utf8(bytes.to_vec()).unwrap()
        }
    };
    assert_eq!(body("/products/7", Method::GET).await, "1");
    // The response is written to the store in the background once its body has streamed.
    let stored = support::eventually(Duration::from_secs(2), || async { !store.is_empty() }).await;
    assert!(stored.is_some());
    let cached = support::eventually(Duration::from_secs(2), || async {
        price.store(99, Ordering::SeqCst);
        body("/products/7", Method::GET).await == "1"
    })
    .await;
    assert!(cached.is_some(), "the GET is served from the cache");
    price.store(1, Ordering::SeqCst);
    body("/admin/products/7", Method::PUT).await;
    assert_eq!(body("/products/7", Method::GET).await, "2");
    assert_eq!(stats.stats().entries_purged, 1);
}

#[tokio::test]
async fn the_local_bus_maps_events_to_purges_and_skips_rules_missing_fields() {
    let store = MemoryStore::new(1 << 20);
    fill(&store).await;
    let bus = InvalidationBus::builder(Purger::new(store.clone()))
        .rule(EventRule::on("product.updated").purge_tags(["product:{id}"]))
        .rule(EventRule::on("product.updated").purge_tags(["shop:{shop}", "products"]))
        .rule(EventRule::on("other.event").purge_tags(["other"]))
        .build()
        .unwrap();
    bus.publish("product.updated", json!({"id": 12}))
        .await
        .unwrap();
    // The second rule lacks `shop`: skipped, so `products` stays.
    assert_eq!(present(&store).await, ["a", "b", "d", "key:1"]);
    let stats = bus.stats();
    assert_eq!((stats.events, stats.rule_firings, stats.skipped), (1, 1, 1));
    bus.publish("product.updated", json!({"id": "1", "shop": "eu"}))
        .await
        .unwrap();
    assert_eq!(present(&store).await, ["d", "key:1"]);
    bus.publish("nobody.listens", json!(null)).await.unwrap();
    assert!(bus.publish("", json!({})).await.is_err());
    assert!(bus.connected());

    let bad = InvalidationBus::builder(Purger::new(store.clone()))
        .rule(EventRule::on("e").purge_tags(["{id"]))
        .build();
    assert!(bad.is_err());
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use support::{SilentServer, eventually, redis_url, unique};
    use tower_strata::store::{RedisStore, TieredStore};

    fn redis_store(namespace: &str) -> RedisStore {
        RedisStore::builder(redis_url())
            .namespace(namespace)
            .build()
            .unwrap()
    }

    fn bus_on(store: impl StoreExt, namespace: &str) -> InvalidationBus {
        InvalidationBus::builder(Purger::new(store))
            .rule(EventRule::on("product.updated").purge_tags(["product:{id}", "products"]))
            .redis(redis_url())
            .namespace(namespace)
            .ping_interval(Duration::from_millis(200))
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn a_bad_namespace_or_url_is_refused_with_the_store_error_as_source() {
        use tower_strata::store::{StoreConfigError, StoreConfigErrorKind};
        let build = |url: &str, namespace: &str| {
            InvalidationBus::builder(Purger::new(MemoryStore::new(1 << 20)))
                .redis(url)
                .namespace(namespace)
                .build()
                .unwrap_err()
        };
        let store_kind = |e: &tower_strata::purge::PurgeConfigError| {
            std::error::Error::source(e)
                .and_then(|s| s.downcast_ref::<StoreConfigError>())
                .map(StoreConfigError::kind)
        };
        let namespace = build(&redis_url(), "bad\nname");
        assert_eq!(namespace.kind(), PurgeConfigErrorKind::Namespace);
        assert_eq!(
            store_kind(&namespace),
            Some(StoreConfigErrorKind::Namespace)
        );
        let url = build("nonsense://x", &unique("bus_url"));
        assert_eq!(url.kind(), PurgeConfigErrorKind::Url);
        assert_eq!(store_kind(&url), Some(StoreConfigErrorKind::Url));
    }

    async fn wait_connected(buses: &[&InvalidationBus]) {
        let ok = eventually(Duration::from_secs(10), || async {
            buses.iter().all(|b| b.connected())
        })
        .await;
        assert!(ok.is_some(), "buses subscribed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rules_purge_a_redis_store() {
        let store = redis_store(&unique("inv_rules"));
        fill(&store).await;
        let layer = product_rules(InvalidateLayer::new(Purger::new(store.clone())));
        app(layer.clone(), 200, &[])
            .oneshot(req(Method::PUT, "/products/1"))
            .await
            .unwrap();
        assert_eq!(present(&store).await, ["b", "c", "d"]);
        let headers: &'static [(&str, &str)] = &[("cache-group-invalidation", r#""products""#)];
        app(layer.clone(), 200, headers)
            .oneshot(req(Method::POST, "/x"))
            .await
            .unwrap();
        assert_eq!(present(&store).await, ["c", "d"]);
        assert_eq!(layer.stats().failures, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_redis_fails_the_purge_not_the_response() {
        let silent = SilentServer::start();
        let store = RedisStore::builder(silent.url())
            .namespace(unique("inv_hung"))
            .timeout(Duration::from_millis(100))
            .connect_timeout(Duration::from_millis(100))
            .backplane(false)
            .build()
            .unwrap();
        let layer = product_rules(InvalidateLayer::new(Purger::new(store)));
        let started = std::time::Instant::now();
        let response = app(layer.clone(), 200, &[])
            .oneshot(req(Method::PUT, "/products/1"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(layer.stats().failures, 2, "the tag and the key");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishing_to_a_hung_redis_fails_at_once_after_a_few_timeouts() {
        let silent = SilentServer::start();
        let bus = InvalidationBus::builder(Purger::new(MemoryStore::new(1 << 20)))
            .redis(silent.url())
            .namespace(unique("inv_breaker"))
            .timeout(Duration::from_millis(100))
            .connect_timeout(Duration::from_millis(100))
            .build()
            .unwrap();
        let mut errors = Vec::new();
        for _ in 0..6 {
            errors.push(
                bus.publish("product.updated", json!({"id": 1}))
                    .await
                    .unwrap_err()
                    .to_string(),
            );
        }
        // Three timeouts open the breaker; then publishing fails at once, without waiting.
        assert!(
            errors[..3].iter().all(|e| !e.contains("circuit")),
            "{errors:?}"
        );
        assert!(
            errors[3..]
                .iter()
                .all(|e| e.contains("circuit to Redis is open")),
            "{errors:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_event_on_one_instance_purges_another_instances_memory_store_within_100ms() {
        let ns = unique("inv_bus");
        let (store_a, store_b) = (MemoryStore::new(1 << 20), MemoryStore::new(1 << 20));
        let a = bus_on(store_a.clone(), &ns);
        let b = bus_on(store_b.clone(), &ns);
        // Another application's bus on the same Redis must not hear it.
        let stranger_store = MemoryStore::new(1 << 20);
        let stranger = bus_on(stranger_store.clone(), &unique("inv_other"));
        wait_connected(&[&a, &b, &stranger]).await;
        fill(&store_a).await;
        fill(&store_b).await;
        fill(&stranger_store).await;

        a.publish("product.updated", json!({"id": 1}))
            .await
            .unwrap();
        // Applied locally before `publish` returned.
        assert_eq!(present(&store_a).await, ["c", "d", "key:1"]);
        let seen = eventually(Duration::from_millis(100), || async {
            present(&store_b).await == ["c", "d", "key:1"]
        })
        .await;
        assert!(seen.is_some(), "B purged within 100 ms");

        // Each instance applied it once: A ignored its own echo.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(a.stats().events, 1);
        assert_eq!(b.stats().events, 1);
        assert_eq!(stranger.stats().events, 0);
        assert_eq!(
            present(&stranger_store).await,
            ["a", "b", "c", "d", "key:1"]
        );

        // And the other way round.
        store_a
            .set("c2", Bytes::new(), &tagged(&["product:2"]))
            .await
            .unwrap();
        b.publish("product.updated", json!({"id": 2}))
            .await
            .unwrap();
        let seen = eventually(Duration::from_millis(100), || async {
            store_a.get("c2").await.unwrap().is_none()
        })
        .await;
        assert!(seen.is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_event_on_one_instance_purges_entries_seen_through_another_tiered_store() {
        let ns = unique("inv_tiered");
        let tiered = || {
            let l2 = RedisStore::builder(redis_url())
                .namespace(&ns)
                .ping_interval(Duration::from_millis(200))
                .build()
                .unwrap();
            Arc::new(
                TieredStore::builder(MemoryStore::new(1 << 20), l2)
                    .l1_ttl(Some(Duration::from_secs(300)))
                    .build()
                    .unwrap(),
            )
        };
        let (store_a, store_b) = (tiered(), tiered());
        let a = bus_on(store_a.clone(), &unique("inv_tiered_bus"));
        let b = bus_on(store_b.clone(), &unique("inv_tiered_bus_b"));
        let _ = b;
        let ok = eventually(Duration::from_secs(10), || async {
            a.connected() && store_a.l1_in_use() && store_b.l1_in_use()
        })
        .await;
        assert!(ok.is_some());
        store_a
            .set("p", Bytes::from_static(b"v"), &tagged(&["product:5"]))
            .await
            .unwrap();
        let filled = eventually(Duration::from_secs(2), || async {
            store_b.get("p").await.unwrap().is_some()
                && store_b.l1().get("p").await.unwrap().is_some()
        })
        .await;
        assert!(filled.is_some(), "B holds a copy in its L1");
        a.publish("product.updated", json!({"id": 5}))
            .await
            .unwrap();
        let seen = eventually(Duration::from_millis(100), || async {
            store_b.get("p").await.unwrap().is_none()
        })
        .await;
        assert!(seen.is_some(), "B misses within 100 ms");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_subscriber_reconnects_after_redis_restarts() {
        let mut redis = support::PrivateRedis::start();
        let port = redis.port;
        let ns = unique("inv_restart");
        let on = |store: MemoryStore| {
            InvalidationBus::builder(Purger::new(store))
                .rule(EventRule::on("product.updated").purge_tags(["product:{id}"]))
                .redis(redis.url())
                .namespace(&ns)
                .timeout(Duration::from_millis(200))
                .connect_timeout(Duration::from_millis(200))
                .ping_interval(Duration::from_millis(100))
                .build()
                .unwrap()
        };
        let (store_a, store_b) = (MemoryStore::new(1 << 20), MemoryStore::new(1 << 20));
        let (a, b) = (on(store_a.clone()), on(store_b.clone()));
        wait_connected(&[&a, &b]).await;

        redis.kill();
        let down = eventually(Duration::from_secs(5), || async { !b.connected() }).await;
        assert!(down.is_some(), "B notices the dead connection");
        // While Redis is down, publishing fails in time but still applies locally.
        fill(&store_a).await;
        assert!(
            a.publish("product.updated", json!({"id": 1}))
                .await
                .is_err()
        );
        assert_eq!(present(&store_a).await, ["b", "c", "d", "key:1"]);

        let _redis = support::PrivateRedis::start_on(port);
        wait_connected(&[&a, &b]).await;
        fill(&store_b).await;
        a.publish("product.updated", json!({"id": 2}))
            .await
            .unwrap();
        let seen = eventually(Duration::from_millis(100), || async {
            store_b.get("b").await.unwrap().is_none()
        })
        .await;
        assert!(seen.is_some(), "events flow again after the restart");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishing_to_a_hung_redis_is_a_timely_error_but_applies_locally() {
        let silent = SilentServer::start();
        let store = MemoryStore::new(1 << 20);
        fill(&store).await;
        let bus = InvalidationBus::builder(Purger::new(store.clone()))
            .rule(EventRule::on("product.updated").purge_tags(["product:{id}"]))
            .redis(silent.url())
            .namespace(unique("inv_hung_bus"))
            .timeout(Duration::from_millis(100))
            .connect_timeout(Duration::from_millis(100))
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        let result = bus.publish("product.updated", json!({"id": 1})).await;
        assert!(result.is_err());
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(!bus.connected());
        assert_eq!(present(&store).await, ["b", "c", "d", "key:1"]);
        assert!(
            InvalidationBus::builder(Purger::new(store))
                .redis("not a url")
                .build()
                .is_err()
        );
    }
}

#[test]
fn services_and_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let layer = InvalidateLayer::new(Purger::new(MemoryStore::new(1 << 20)));
    let mut svc =
        ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(|_r: Request<String>| async {
                Ok::<_, Infallible>(Response::new(String::new()))
            });
    send_sync(&svc);
    send(&svc.call(req(Method::PUT, "/x")));
    send_sync(&layer);
    let bus = InvalidationBus::builder(Purger::new(MemoryStore::new(1 << 20)))
        .build()
        .unwrap();
    send_sync(&bus);
    send(&bus.publish("e", json!({})));
}

#[test]
fn router_layer_service_builder_and_tonic_accept_the_layer() {
    let layer = InvalidateLayer::new(Purger::new(MemoryStore::new(1 << 20)));
    let _router: axum::Router = axum::Router::new()
        .route("/", axum::routing::put(|| async { "x" }))
        .layer(layer.clone());
    let _svc = ServiceBuilder::new().layer(layer.clone()).service_fn(
        |_r: Request<axum::body::Body>| async {
            Ok::<_, Infallible>(Response::new(axum::body::Body::empty()))
        },
    );
    #[cfg(feature = "tonic")]
    {
        let router = tonic::transport::Server::builder()
            .layer(layer)
            .add_service(grpc::Grpc);
        // Type-checks the layered service against tonic's bounds without running it.
        let _serve = async move {
            router.serve("127.0.0.1:1".parse().unwrap()).await.unwrap();
        };
    }
}

#[cfg(feature = "tonic")]
mod grpc {
    use super::*;
    use std::task::{Context, Poll};

    #[derive(Clone)]
    pub struct Grpc;

    impl tonic::server::NamedService for Grpc {
        const NAME: &'static str = "test.Grpc";
    }

    impl Service<Request<tonic::body::Body>> for Grpc {
        type Response = Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: Request<tonic::body::Body>) -> Self::Future {
            std::future::ready(Ok(Response::new(tonic::body::Body::empty())))
        }
    }
}
