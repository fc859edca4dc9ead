//! A small axum service with the metrics layer, a Prometheus `/metrics` endpoint (with the
//! exporter's upkeep task running) and the health endpoints.
//!
//! ```sh
//! cargo run --example prometheus
//! curl localhost:3000/users/7; curl localhost:3000/slow
//! curl localhost:3000/metrics
//! curl localhost:3000/health; curl localhost:3000/health/ready
//! ```

use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use tower_strata::health::{Check, CheckOutput, Health, Status, fn_check, stats_check};
use tower_strata::metrics::{LatencyReport, MetricsLayer, MetricsRegistry};

#[path = "support/prometheus.rs"]
mod support;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    // 1. The Prometheus recorder, installed before the first request (metric handles are cached),
    //    with the OpenTelemetry bucket boundaries so the histograms aggregate across instances,
    //    and its upkeep running.
    let scrape = support::install()?;

    // 2. The in-process registry and the layer.
    let registry = MetricsRegistry::builder()
        .slow_threshold(Some(Duration::from_millis(250)))
        .build()?;
    let layer = MetricsLayer::new(registry.clone())
        .exclude_path("/metrics")
        .exclude_prefix("/health");

    // 3. Health: the latency summary (degraded above 5 % errors) and a dependency check.
    let health = Health::builder()
        .check(Check::optional(
            "latency",
            stats_check(move || registry.report()).status(|r: &LatencyReport| {
                let failing = r
                    .last_minute
                    .iter()
                    .any(|s| s.count >= 20 && s.error_rate > 0.05);
                if failing {
                    Status::Degraded
                } else {
                    Status::Healthy
                }
            }),
        ))
        .check(
            Check::required(
                "upstream",
                fn_check(|| async {
                    // Stands in for a real dependency (see `PoolCheck`, `RedisCheck`).
                    CheckOutput::healthy(serde_json::json!({ "reachable": true }))
                }),
            )
            .degraded_latency(Duration::from_millis(100)),
        )
        .interval(Duration::from_secs(10))
        .timeout(Duration::from_secs(2))
        .build()?;
    let _checks = health.spawn();

    let app = Router::new()
        .route(
            "/users/{id}",
            get(|Path(id): Path<u32>| async move { format!("user {id}") }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "slow"
            }),
        )
        .route("/metrics", get(move || std::future::ready(scrape.render())))
        .merge(health.router())
        // Last, so it also sees the fallback (unmatched requests share one label); `/metrics`
        // and `/health*` are excluded above.
        .layer(layer);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
