//! Latency metrics per route, served at `/metrics` for Prometheus and read in process.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --example route_metrics --features metrics,axum
//! ```
//!
//! and try
//!
//! ```not_rust
//! curl localhost:3000/users/7; curl localhost:3000/users/8; curl localhost:3000/slow
//! curl -s localhost:3000/metrics | grep http_server_request_duration   # one series per route
//! curl -s localhost:3000/latency   # the same requests, percentiles over the last minute
//! ```
//!
//! Requests are labelled by their route template (`/users/{id}`), never the raw path, so the
//! number of series stays bounded however many users there are. `examples/prometheus.rs`
//! adds health checks next to this.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tower_strata::metrics::{MetricsLayer, MetricsRegistry, Window};

/// The recorder every example installs: the OpenTelemetry bucket boundaries, so histograms
/// aggregate across instances, and its upkeep.
#[path = "support/prometheus.rs"]
pub mod prometheus;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_strata=debug".into()),
        )
        .init();

    // Before the first request: metric handles are cached once made. It also runs the
    // exporter's upkeep between scrapes, so histogram samples do not pile up in memory.
    let prometheus = prometheus::install()?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(prometheus)?).await?;
    Ok(())
}

/// The router with the metrics layer; the test drives this without a server.
pub fn app(prometheus: PrometheusHandle) -> Result<Router, Box<dyn std::error::Error>> {
    // The in-process registry: what `/latency` reads. Every request is also exported to the
    // `metrics` facade (`http.server.request.duration`), what `/metrics` renders.
    let registry = MetricsRegistry::builder()
        .slow_threshold(Some(Duration::from_millis(250)))
        .build()?;
    let layer = MetricsLayer::new(registry.clone()).exclude_path("/metrics");

    Ok(Router::new()
        .route("/users/{id}", get(user))
        .route("/slow", get(slow))
        .route("/metrics", get(move || async move { prometheus.render() }))
        .route("/latency", get(latency))
        .with_state(registry)
        // Added with `Router::layer`, after the routes, so it runs once axum has matched the
        // route and labels each request with its template.
        .layer(layer))
}

async fn user(Path(id): Path<u32>) -> String {
    format!("user {id}")
}

/// Above the 250 ms slow threshold: logged with `tracing` and counted as slow.
async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_millis(300)).await;
    "slow"
}

/// Count, errors and percentiles per route and method over the last minute.
async fn latency(State(registry): State<MetricsRegistry>) -> Json<serde_json::Value> {
    let routes: Vec<_> = registry
        .snapshot(Window::OneMinute)
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "route": r.route,
                "method": r.method,
                "count": r.count,
                "errors": r.errors,
                "slow": r.slow,
                "p50_ms": r.latency.p50.as_secs_f64() * 1000.0,
                "p99_ms": r.latency.p99.as_secs_f64() * 1000.0,
            })
        })
        .collect();
    Json(serde_json::json!(routes))
}
