//! The Prometheus rendering of the exported metrics parses with a real parser and carries the
//! OpenTelemetry names. Alone in its binary: it installs the global `metrics` recorder.
#![cfg(all(feature = "metrics", feature = "axum"))]

#[path = "support/metrics_grpc.rs"]
mod grpc;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use prom_text_format_parser::{Scrape, Type, ValueType};
use tower::ServiceExt;
use tower_strata::metrics::{
    DURATION_BUCKETS, HTTP_SERVER_REQUEST_DURATION, HTTP_SERVER_TIME_TO_HEAD, MetricsLayer,
    MetricsRegistry, RPC_SERVER_CALL_DURATION,
};

#[tokio::test]
async fn prometheus_output_parses_and_has_the_opentelemetry_names() {
    let mut builder = PrometheusBuilder::new();
    for name in [
        HTTP_SERVER_REQUEST_DURATION,
        HTTP_SERVER_TIME_TO_HEAD,
        RPC_SERVER_CALL_DURATION,
    ] {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.into()), &DURATION_BUCKETS)
            .unwrap();
    }
    let handle = builder.install_recorder().unwrap();
    let registry = MetricsRegistry::builder()
        .slow_threshold(Some(Duration::from_millis(20)))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .route("/boom", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                "slow"
            }),
        )
        .layer(MetricsLayer::new(registry.clone()));
    for uri in ["/users/1", "/users/2", "/boom", "/slow", "/nope"] {
        let res = app
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        res.into_body().collect().await.unwrap();
    }
    // gRPC calls through a tonic server sharing the registry.
    let mut client = tonic::client::Grpc::new(grpc::serve(registry.clone()).await);
    grpc::unary(&mut client, "/test.Echo/Say", "ok")
        .await
        .unwrap();
    grpc::unary(&mut client, "/test.Echo/Say", "internal")
        .await
        .unwrap_err();
    let mut failing = grpc::stream(&mut client, "unavailable").await;
    while failing.message().await.is_ok_and(|m| m.is_some()) {}
    // The server records when its response body ends, just after the client saw it: wait
    // (bounded) for the three calls.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while text_count(&handle.render(), "rpc_server_call_duration_count") < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            handle.render()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    handle.run_upkeep();
    let text = handle.render();
    let scrape = Scrape::parse(&text).unwrap_or_else(|e| panic!("{e:?} in:\n{text}"));
    let family = |name: &str| {
        scrape
            .metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
    };
    let label = |s: &prom_text_format_parser::Sample, key: &str| {
        s.labels
            .iter()
            .find(|l| l.key == key)
            .map(|l| l.value.clone())
    };

    // Prometheus renders the OpenTelemetry names with underscores.
    let duration = family("http_server_request_duration");
    assert_eq!(duration.kind, Type::Histogram);
    let series = |route: &str, value_type: ValueType| -> Vec<&prom_text_format_parser::Sample> {
        duration
            .samples
            .iter()
            .filter(|s| label(s, "http_route").as_deref() == Some(route))
            .filter(|s| s.value.value_type == value_type)
            .collect()
    };
    let users = series("/users/{id}", ValueType::Sample);
    assert!(!users.is_empty(), "no /users/{{id}} series in:\n{text}");
    for s in &users {
        assert_eq!(label(s, "http_request_method").as_deref(), Some("GET"));
        assert_eq!(
            label(s, "http_response_status_code").as_deref(),
            Some("200")
        );
        assert_eq!(label(s, "error_type"), None);
    }
    // The semantic conventions' boundaries, then +Inf.
    let bounds: Vec<String> = users.iter().filter_map(|s| label(s, "le")).collect();
    let expected: Vec<String> = DURATION_BUCKETS
        .iter()
        .map(|b| b.to_string())
        .chain(["+Inf".to_owned()])
        .collect();
    assert_eq!(bounds, expected);
    let count = series("/users/{id}", ValueType::Count);
    assert_eq!(count[0].value.value.as_f64(), 2.0);

    let boom = series("/boom", ValueType::Count);
    assert_eq!(
        label(boom[0], "http_response_status_code").as_deref(),
        Some("500")
    );
    assert_eq!(label(boom[0], "error_type").as_deref(), Some("500"));
    assert!(!series("_UNMATCHED", ValueType::Count).is_empty(), "{text}");
    for s in &duration.samples {
        let route = label(s, "http_route").unwrap();
        assert!(
            ["/users/{id}", "/boom", "/slow", "_UNMATCHED"].contains(&route.as_str()),
            "unexpected route label {route}"
        );
    }

    let active = family("http_server_active_requests");
    assert_eq!(active.kind, Type::Gauge);
    // GET for the HTTP requests, POST for the gRPC calls: none left in flight.
    let mut methods: Vec<_> = active
        .samples
        .iter()
        .map(|s| label(s, "http_request_method").unwrap())
        .collect();
    methods.sort();
    assert_eq!(methods, ["GET", "POST"]);
    assert!(active.samples.iter().all(|s| s.value.value.as_f64() == 0.0));

    assert_eq!(
        family("strata_http_server_time_to_head").kind,
        Type::Histogram
    );

    let slow = family("strata_http_server_slow_requests");
    assert_eq!(slow.kind, Type::Counter);
    assert_eq!(
        label(&slow.samples[0], "http_route").as_deref(),
        Some("/slow")
    );
    assert_eq!(slow.samples[0].value.value.as_f64(), 1.0);

    let rpc = family("rpc_server_call_duration");
    assert_eq!(rpc.kind, Type::Histogram);
    let calls: Vec<_> = rpc
        .samples
        .iter()
        .filter(|s| s.value.value_type == ValueType::Count)
        .map(|s| {
            assert_eq!(label(s, "rpc_system").as_deref(), Some("grpc"));
            assert_eq!(label(s, "rpc_service").as_deref(), Some("test.Echo"));
            (
                label(s, "rpc_method").unwrap(),
                label(s, "rpc_grpc_status_code").unwrap(),
                label(s, "error_type"),
            )
        })
        .collect();
    let mut calls = calls;
    calls.sort();
    assert_eq!(
        calls,
        [
            ("Say".to_owned(), "0".to_owned(), None),
            (
                "Say".to_owned(),
                "13".to_owned(),
                Some("INTERNAL".to_owned())
            ),
            (
                "Stream".to_owned(),
                "14".to_owned(),
                Some("UNAVAILABLE".to_owned())
            ),
        ]
    );
    // gRPC calls are not reported as HTTP requests.
    assert!(
        duration
            .samples
            .iter()
            .all(|s| !label(s, "http_route").unwrap().starts_with("/test.Echo"))
    );
}

/// Number of lines starting with `name` in a rendering.
fn text_count(text: &str, name: &str) -> usize {
    text.lines().filter(|l| l.starts_with(name)).count()
}
