//! The slow-request warning, alone in its binary: `tracing`'s callsite interest cache is global,
//! so a thread-scoped subscriber can miss events while other tests run in parallel.
#![cfg(all(feature = "metrics", feature = "axum"))]

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_strata::metrics::{MetricsLayer, MetricsRegistry};

mod support;

use support::logs::Captured;

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn slow_requests_warn_count_and_are_kept() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let reg = MetricsRegistry::builder()
        .slow_threshold(Some(Duration::from_millis(100)))
        .route_slow_threshold("/fast", Some(Duration::from_millis(10)))
        .export(false)
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/sleep/{ms}",
            get(
                |axum::extract::Path(ms): axum::extract::Path<u64>| async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    "done"
                },
            ),
        )
        .route(
            "/fast",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                "fast"
            }),
        )
        .layer(MetricsLayer::new(reg.clone()));
    for uri in ["/sleep/50", "/sleep/150", "/fast"] {
        let res = app
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        res.into_body().collect().await.unwrap();
    }
    assert_eq!(reg.slow_total(), 2);
    let slow = reg.slow_requests();
    assert_eq!(slow.len(), 2);
    assert_eq!(slow[0].route, "/sleep/{ms}");
    assert_eq!(slow[0].duration, Duration::from_millis(150));
    assert_eq!(slow[0].status, Some(200));
    assert_eq!(slow[1].route, "/fast");
    let log = captured.text();
    assert!(log.contains("WARN"), "{log}");
    assert!(log.contains("slow request"), "{log}");
    assert!(log.contains("route=/sleep/{ms}"), "{log}");
    assert!(log.contains("duration_ms=150"), "{log}");
    let report = serde_json::to_value(reg.report()).unwrap();
    assert_eq!(report["slow_requests"][0]["duration_ms"], 150.0);
    assert_eq!(report["last_minute"].as_array().unwrap().len(), 2);
}
