//! Latency metrics: per-route request counts, errors, in-flight requests and latency
//! percentiles, in process and exported to the [`metrics`](https://docs.rs/metrics) facade.
//!
//! [`MetricsLayer`] wraps a service and records every request into a [`MetricsRegistry`]:
//!
//! - **count**, **errors** (5xx responses; for gRPC the server-error status codes `UNKNOWN`,
//!   `DEADLINE_EXCEEDED`, `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`, read from
//!   `grpc-status` in the headers of trailers-only responses and otherwise from the trailers at
//!   the end of the stream; 4xx is not an error; a handler or body that panics is an error too),
//!   **cancelled** requests (the future or the body dropped before the end:
//!   `error.type = cancelled`) and the **status class**;
//! - **in-flight** requests, through a guard that lives in the response future and then in the
//!   response body, and whose `Drop` ends the request: it cannot leak;
//! - **time to the response head** and **time until the body finished or was dropped** (the
//!   guard moves into [`MetricsBody`], so a slow streaming body counts in full).
//!
//! # Route labels
//!
//! The `http.route` label is a route template, never the raw path, so the number of series stays
//! bounded:
//!
//! 1. for gRPC calls, the `/package.Service/Method` path, once a gRPC service answered it (a
//!    response with a gRPC content type, not `UNIMPLEMENTED`): until then the path is the
//!    client's, so a request that only claims `content-type: application/grpc` gets the label
//!    of the route it matched (or the unmatched one) and no client can fill the route table;
//! 2. axum's [`MatchedPath`](https://docs.rs/axum/latest/axum/extract/struct.MatchedPath.html)
//!    (feature `axum`): add the layer with `Router::layer`, after the routes and merges, so that
//!    it runs after routing and also wraps the fallback (a layer around the whole router from
//!    outside sees no `MatchedPath` and counts everything as unmatched);
//! 3. otherwise the function given to [`MetricsLayer::route_label`];
//! 4. otherwise one shared unmatched label (`_UNMATCHED` by default).
//!
//! The registry also caps the number of labels ([`MetricsRegistryBuilder::max_routes`]).
//! Unknown methods share the method label `_OTHER`. Paths can be excluded
//! ([`MetricsLayer::exclude_path`], [`MetricsLayer::exclude_prefix`]).
//!
//! # In-process registry
//!
//! [`MetricsRegistry::snapshot`] gives per route and method: count, errors, error rate,
//! cancelled and slow requests, status classes, and mean, p50, p95, p99 and max of both
//! latencies, over the last minute or five minutes ([`Window`]). Percentiles come from
//! log-bucketed histograms with 1 % relative error; memory is bounded; recording takes no lock
//! shared between threads (see [`MetricsRegistry`]).
//!
//! Slow requests (above a global or per-route threshold, one second by default) are logged with
//! `tracing::warn!` (route, method, status, duration), counted, and the last N are kept
//! ([`MetricsRegistry::slow_requests`]). [`MetricsRegistry::report`] gathers everything for a
//! health report.
//!
//! # Export
//!
//! Unless turned off with [`MetricsRegistryBuilder::export`], every request is also recorded
//! through the `metrics` facade with the OpenTelemetry semantic-convention names:
//!
//! | name | kind | labels |
//! |---|---|---|
//! | [`http.server.request.duration`](HTTP_SERVER_REQUEST_DURATION) (s) | histogram | `http.request.method`, `http.route`, `http.response.status_code`, `error.type` |
//! | [`http.server.active_requests`](HTTP_SERVER_ACTIVE_REQUESTS) | gauge | `http.request.method` |
//! | [`rpc.server.call.duration`](RPC_SERVER_CALL_DURATION) (s) | histogram | `rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`, `error.type` |
//! | [`strata.http.server.time_to_head`](HTTP_SERVER_TIME_TO_HEAD) (s) | histogram | as `http.server.request.duration` |
//! | [`strata.http.server.slow_requests`](HTTP_SERVER_SLOW_REQUESTS) | counter | `http.request.method`, `http.route` |
//!
//! Configure your exporter with [`DURATION_BUCKETS`] (the conventions' boundaries) so the
//! histograms aggregate across instances. Metric handles are cached per label set on each
//! thread, so install the recorder *before* the first request. Prometheus renders the dots as
//! underscores (`http_server_request_duration_bucket{...}`); see `examples/prometheus.rs`.
//!
//! # Examples
//!
//! With axum (`Router::layer`, so `MatchedPath` is known):
//!
//! ```
//! use axum::{Router, routing::get};
//! use tower_strata::metrics::{MetricsLayer, Window};
//!
//! let (layer, registry) = MetricsLayer::pair();
//! let app: Router = Router::new()
//!     .route("/users/{id}", get(|| async { "user" }))
//!     .layer(layer.exclude_path("/health"));
//! // later: registry.snapshot(Window::OneMinute)
//! # let _ = (app, registry.snapshot(Window::OneMinute));
//! ```
//!
//! With `ServiceBuilder` around any `http` service, customised:
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use http::{Method, Request, Response};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_strata::metrics::{MetricsLayer, MetricsRegistry, RequestInfo, Window};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let registry = MetricsRegistry::builder()
//!     .slow_threshold(Some(Duration::from_millis(250)))
//!     .route_slow_threshold("/reports", Some(Duration::from_secs(5)))
//!     .max_routes(200)
//!     .build()
//!     .expect("valid configuration");
//! let svc = ServiceBuilder::new()
//!     .layer(
//!         MetricsLayer::new(registry.clone())
//!             .route_label(|req: &RequestInfo<'_>| {
//!                 req.uri.path().starts_with("/items/").then_some("/items/{id}")
//!             })
//!             .exclude_path("/metrics"),
//!     )
//!     .service_fn(|_req: Request<String>| async {
//!         Ok::<_, Infallible>(Response::new(String::from("ok")))
//!     });
//! let response = svc.oneshot(Request::get("/items/42").body(String::new()).unwrap()).await.unwrap();
//! drop(response); // the body was complete at the head, so the request is already recorded
//! let snap = registry.route_snapshot("/items/{id}", &Method::GET, Window::OneMinute).unwrap();
//! assert_eq!(snap.count, 1);
//! # }
//! ```

#[cfg(feature = "axum")]
mod axum;
mod body;
mod export;
mod future;
mod guard;
mod histogram;
mod layer;
pub mod names;
mod registry;
mod route;
mod service;
mod snapshot;

pub use body::MetricsBody;
pub use export::{
    DURATION_BUCKETS, HTTP_SERVER_ACTIVE_REQUESTS, HTTP_SERVER_REQUEST_DURATION,
    HTTP_SERVER_SLOW_REQUESTS, HTTP_SERVER_TIME_TO_HEAD, RPC_SERVER_CALL_DURATION,
};
pub use future::ResponseFuture;
pub use layer::MetricsLayer;
pub use registry::{
    MetricsConfigError, MetricsConfigErrorKind, MetricsRegistry, MetricsRegistryBuilder, Window,
};
pub use route::{RequestInfo, RouteLabel};
pub use service::Metrics;
pub use snapshot::{LatencyReport, LatencySummary, RouteSnapshot, SlowRequest, StatusClasses};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_types_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<MetricsLayer>();
        assert_send_sync::<Metrics<()>>();
        assert_send_sync::<ResponseFuture<std::future::Ready<()>>>();
        assert_send_sync::<MetricsBody<String>>();
    }
}
