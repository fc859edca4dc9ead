//! The store, transaction, purge and warming figures, scraped from a real Prometheus recorder
//! and parsed; and the Grafana dashboard in `docs/` queries only metrics that exist. Alone in
//! its binary: it installs the global `metrics` recorder.
#![cfg(all(
    feature = "metrics",
    feature = "axum",
    feature = "memory",
    feature = "redis",
    feature = "purge",
    feature = "postgres",
    feature = "warm"
))]

mod support;

use support::observe;

use std::collections::BTreeSet;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use prom_text_format_parser::{Sample, Scrape, Type};
use tower_strata::metrics::{DURATION_BUCKETS, names};
use tower_strata::warm::{WarmRequest, Warmer};

/// How Prometheus spells a dotted name.
fn prometheus_name(name: &str) -> String {
    name.replace('.', "_")
}

fn label<'s>(sample: &'s Sample, key: &str) -> Option<&'s str> {
    sample
        .labels
        .iter()
        .find(|l| l.key == key)
        .map(|l| l.value.as_str())
}

#[tokio::test]
async fn every_figure_is_scraped_with_bounded_labels_and_the_dashboard_queries_only_them() {
    // Installed before anything is built: stores and layers register their handles then.
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(names::STORE_DURATION.into()),
            &names::STORE_DURATION_BUCKETS,
        )
        .unwrap()
        .set_buckets_for_metric(Matcher::Full(names::TX_DURATION.into()), &DURATION_BUCKETS)
        .unwrap()
        .install_recorder()
        .unwrap();

    let redis = observe::redis_store();
    observe::store_calls(&redis).await;
    let _memory = observe::memory_calls().await;
    let _tiered = observe::tiered();
    let purger = observe::purges(&redis).await;
    assert_eq!(observe::transactions().await, 3, "two attempts, then one");
    let router = Router::new().route("/", get(|| async { "home" }));
    let warmer = Warmer::with_body::<Body, _>(router)
        .host("shop.example")
        .request(WarmRequest::get("/"))
        .build()
        .unwrap();
    assert_eq!(warmer.run_once().await.succeeded, 1);

    // The cache: a miss that is stored, then a hit, then a bypass (a cookie).
    let cached = Router::new()
        .route(
            "/page",
            get(|| async { ([("cache-control", "max-age=60")], "page") }),
        )
        .layer(tower_strata::cache::CacheLayer::new(
            tower_strata::store::MemoryStore::new(1 << 20),
        ));
    for cookie in [None, None, Some("session=1")] {
        use tower::ServiceExt;
        let mut request = http::Request::get("http://shop.example/page");
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        let response = cached
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let _ = axum::body::to_bytes(response.into_body(), usize::MAX).await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The tiered store samples its gauges on a task of its own.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;

    handle.run_upkeep();
    let text = handle.render();
    let scrape = Scrape::parse(&text).unwrap_or_else(|e| panic!("{e:?} in:\n{text}"));
    let family = |name: &str| {
        let wanted = prometheus_name(name);
        scrape
            .metrics
            .iter()
            .find(|m| m.name == wanted)
            .unwrap_or_else(|| panic!("{wanted} missing from:\n{text}"))
    };
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        family(name)
            .samples
            .iter()
            .filter(|s| labels.iter().all(|(k, v)| label(s, k) == Some(*v)))
            .map(|s| s.value.value.as_f64())
            .sum()
    };

    // Store calls on Redis: the set, two reads (a hit and a miss: both `ok`), the delete.
    let ops = family(names::STORE_OPERATIONS);
    assert_eq!(ops.kind, Type::Counter);
    for sample in &ops.samples {
        let backend = label(sample, "backend").unwrap();
        assert!(["memory", "redis", "redis-cluster"].contains(&backend));
        let operation = label(sample, "operation").unwrap();
        assert!(
            operation.len() < 20 && !operation.contains(':'),
            "an operation, not a key: {operation}"
        );
    }
    let redis_ok = |operation| {
        value(
            names::STORE_OPERATIONS,
            &[
                ("backend", "redis"),
                ("operation", operation),
                ("result", "ok"),
            ],
        )
    };
    assert!(redis_ok("get") >= 2.0, "{text}");
    assert!(redis_ok("set") >= 1.0);
    assert!(redis_ok("delete") >= 1.0);
    let memory_get = [("backend", "memory"), ("operation", "get")];
    assert!(value(names::STORE_OPERATIONS, &memory_get) >= 1.0);
    assert_eq!(family(names::STORE_DURATION).kind, Type::Histogram);
    assert_eq!(
        value(names::STORE_BREAKER_STATE, &[("breaker", "redis store")]),
        0.0,
        "closed"
    );
    assert_eq!(family(names::STORE_BREAKER_OPENINGS).kind, Type::Counter);
    assert_eq!(family(names::STORE_L1_IN_USE).kind, Type::Gauge);
    assert_eq!(value(names::STORE_INVALIDATIONS_QUEUED, &[]), 0.0);

    // Purges: one by key, a hard and a soft one by tag, one by pattern.
    let stats = purger.stats();
    let purge = |kind, mode| {
        value(
            names::PURGE_REQUESTS,
            &[("kind", kind), ("mode", mode), ("result", "ok")],
        )
    };
    assert_eq!(purge("key", "hard"), 1.0);
    assert_eq!(purge("tag", "hard"), 1.0);
    assert_eq!(purge("tag", "soft"), 1.0);
    assert_eq!(purge("pattern", "hard"), 1.0);
    assert_eq!(
        value(names::PURGE_ENTRIES, &[]),
        stats.entries_purged as f64,
        "as many entries as the purger's own stats"
    );

    // Transactions: the replayed one committed once, its first attempt and the 409 rolled back.
    let tx = |result| {
        value(
            names::TX_TRANSACTIONS,
            &[("mode", "read-write"), ("result", result)],
        )
    };
    assert_eq!((tx("commit"), tx("rollback")), (1.0, 2.0));
    assert_eq!(
        value(names::TX_RETRIES, &[("reason", "serialization_failure")]),
        1.0
    );
    assert_eq!(value(names::TX_FAILURES, &[]), 0.0);
    assert_eq!(family(names::TX_DURATION).kind, Type::Histogram);

    assert_eq!(value(names::WARM_RUNS, &[("result", "ok")]), 1.0);
    assert_eq!(value(names::WARM_REQUESTS, &[("result", "ok")]), 1.0);

    let cache = |outcome, reason| {
        value(
            names::CACHE_REQUESTS,
            &[("outcome", outcome), ("reason", reason)],
        )
    };
    assert_eq!(
        (
            cache("miss", "stored"),
            cache("hit", "fresh"),
            cache("bypass", "request")
        ),
        (1.0, 1.0, 1.0)
    );
    assert_eq!(value(names::CACHE_STORED_ENTRIES, &[]), 1.0);
    assert!(value(names::CACHE_STORED_BYTES, &[]) > "page".len() as f64);
    for sample in &family(names::CACHE_REQUESTS).samples {
        let outcome = label(sample, "outcome").unwrap();
        assert!(["hit", "stale", "coalesced", "miss", "bypass"].contains(&outcome));
    }

    // Every name but the Cluster's nodes' and the adaptive limit's (not configured here) was
    // scraped.
    let scraped: BTreeSet<&str> = scrape.metrics.iter().map(|m| m.name.as_str()).collect();
    for name in names::ALL {
        if !not_recorded_here(&prometheus_name(name)) {
            assert!(
                scraped.contains(prometheus_name(name).as_str()),
                "{name} not scraped:\n{text}"
            );
        }
    }

    // The Grafana dashboard queries documented names only, each as Prometheus spells it.
    let documented: BTreeSet<String> = names::ALL
        .iter()
        .chain(&[
            tower_strata::metrics::HTTP_SERVER_REQUEST_DURATION,
            tower_strata::metrics::HTTP_SERVER_ACTIVE_REQUESTS,
        ])
        .map(|n| prometheus_name(n))
        .collect();
    let queried = dashboard_metrics();
    assert!(queried.len() >= 8, "{queried:?}");
    for metric in &queried {
        assert!(
            documented.contains(metric),
            "the dashboard queries {metric}, which no component records"
        );
        if metric.starts_with("strata_") && !not_recorded_here(metric) {
            assert!(
                scraped.contains(metric.as_str()),
                "{metric} queried but not scraped"
            );
        }
    }
}

/// The Cluster nodes' and the adaptive limit's figures (neither is configured here), as
/// Prometheus spells them.
fn not_recorded_here(metric: &str) -> bool {
    metric.starts_with("strata_store_node_") || metric == "strata_tx_limit"
}

/// The metric names the dashboard's queries use, without the suffixes Prometheus adds
/// (`_total`, `_bucket`, `_sum`, `_count`).
fn dashboard_metrics() -> BTreeSet<String> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/grafana-dashboard.json"
    ))
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    let mut found = BTreeSet::new();
    for expr in exprs {
        let bytes = expr.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let word = bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_';
            let starts = (i == 0
                || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
                && (expr[i..].starts_with("strata_") || expr[i..].starts_with("http_server_"));
            if word && starts {
                let end = expr[i..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map_or(expr.len(), |n| i + n);
                let name = &expr[i..end];
                let base = ["_total", "_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(name);
                found.insert(base.to_owned());
                i = end;
            } else {
                i += 1;
            }
        }
    }
    found
}
