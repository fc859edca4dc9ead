//! Shared by the examples: installs a Prometheus recorder for the `metrics` facade with the
//! OpenTelemetry bucket boundaries, and keeps its upkeep running.

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tower_strata::metrics::{
    DURATION_BUCKETS, HTTP_SERVER_REQUEST_DURATION, HTTP_SERVER_TIME_TO_HEAD,
    RPC_SERVER_CALL_DURATION, names,
};

/// Installs the recorder (before the first request and before building stores and layers:
/// they register their metric handles when built) and spawns
/// the upkeep task that drains histogram samples between scrapes, so they do not pile up in
/// memory. Returns the handle that renders `/metrics`.
pub fn install() -> Result<PrometheusHandle, Box<dyn std::error::Error>> {
    let mut prometheus = PrometheusBuilder::new();
    for name in [
        HTTP_SERVER_REQUEST_DURATION,
        HTTP_SERVER_TIME_TO_HEAD,
        RPC_SERVER_CALL_DURATION,
    ] {
        prometheus =
            prometheus.set_buckets_for_metric(Matcher::Full(name.into()), &DURATION_BUCKETS)?;
    }
    // The store's calls are far shorter than requests; transactions are as long.
    for name in [names::STORE_DURATION, names::STORE_NODE_DURATION] {
        prometheus = prometheus
            .set_buckets_for_metric(Matcher::Full(name.into()), &names::STORE_DURATION_BUCKETS)?;
    }
    prometheus = prometheus
        .set_buckets_for_metric(Matcher::Full(names::TX_DURATION.into()), &DURATION_BUCKETS)?;
    let recorder = prometheus.build_recorder();
    let scrape = recorder.handle();
    metrics::set_global_recorder(recorder)?;
    let upkeep = scrape.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(5));
        loop {
            ticks.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(scrape)
}
