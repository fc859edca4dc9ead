//! A live dashboard: latency, hit ratio, purges, transactions and health on one page.
//!
//! [`Dashboard`] is a small tower service built from the handles the app already has, each
//! optional: the [`MetricsRegistry`](crate::metrics::MetricsRegistry) (feature `metrics`), the
//! cache layer's [`CacheStats`](crate::cache::CacheStats), a [`Store`](crate::store::Store), a
//! [`Purger`](crate::purge::Purger), an [`InvalidateLayer`](crate::purge::InvalidateLayer), the
//! transaction layer's `TxStats` (features `postgres`, `mysql`, `sqlite`) and the app's
//! `Health` (feature `health`). Mount it at a path of your choice; it answers:
//!
//! - `GET /`: one self-contained HTML page (inline CSS and script, no external asset, no build
//!   step, works offline) that polls `/data` every two seconds and shows
//!   - per route template: requests/s, p50/p95/p99 over the last minute and five minutes, the
//!     error share and a small latency chart (SVG); the slow-request log;
//!   - the cache: hit ratio since start and over time (chart), hits, misses, stale, coalesced,
//!     passes, stored bytes and entries;
//!   - purges and invalidations over time (chart) and by kind;
//!   - transactions committed, rolled back and retried, with the retry reasons;
//!   - each health check with its state and last error;
//!
//!   a part without its source shows as not configured; when `/data` fails, the page says
//!   "stale since ..." and keeps polling;
//! - `GET /data`: the JSON snapshot, [`DashboardData`]: serde types with a [`VERSION`] and
//!   stable field names (see [`DashboardData`] for the rules);
//! - anything else under the mount: `404`; other methods: `405`.
//!
//! Every answer carries `Cache-Control: no-store`; the page also a `Content-Security-Policy`
//! allowing nothing but its own inline code and requests to its own origin.
//!
//! # Charts and cost
//!
//! The charts come from a ring of samples (one per second, five minutes by default,
//! [`Dashboard::history`]): cumulative counters and each route's one-minute figures, read off
//! the hot path when `/data` is polled or by the sampler task ([`Dashboard::spawn`]), at most
//! once per interval whoever asks. Memory is bounded (the 32 busiest routes per sample); the
//! layers pay nothing more per request. A snapshot reads the registries and takes the ring's
//! lock once, briefly.
//!
//! # Access
//!
//! The dashboard holds no secret, but it is an operator's page: figures, route templates,
//! health errors. Put it behind the purge layer's bearer token ([`Dashboard::bearer_token`],
//! compared in constant time), any [`Authorize`](crate::purge::Authorize) policy
//! ([`Dashboard::authorize`], which sees the extensions an authentication layer in front left),
//! or any tower auth layer around the service. A browser cannot send a bearer token, so the
//! token is also accepted as Basic authentication's password (any user name): a browser that
//! opens a token-protected dashboard gets a `401` offering `WWW-Authenticate: Basic` and asks
//! its user, scripts keep sending `Authorization: Bearer <token>`.
//!
//! # Examples
//!
//! With axum, nested at `/dashboard`, sampling in the background:
//!
//! ```
//! # #[cfg(all(feature = "axum", feature = "metrics", feature = "memory"))]
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use axum::{Router, routing::get};
//! use tower_strata::cache::CacheLayer;
//! use tower_strata::dashboard::Dashboard;
//! use tower_strata::metrics::MetricsLayer;
//! use tower_strata::store::MemoryStore;
//!
//! let store = MemoryStore::new(64 << 20);
//! let cache = CacheLayer::new(store.clone());
//! let (metrics, registry) = MetricsLayer::pair();
//! let dashboard = Dashboard::new()
//!     .title("shop")
//!     .metrics(registry)
//!     .cache(cache.stats())
//!     .store(store);
//! let _sampler = dashboard.spawn();
//! let app: Router = Router::new()
//!     .route("/products/{id}", get(|| async { "product" }))
//!     .layer(cache)
//!     .layer(metrics)
//!     .nest_service("/dashboard", dashboard);
//! // open http://127.0.0.1:3000/dashboard
//! # let _ = app; }
//! # #[cfg(not(all(feature = "axum", feature = "metrics", feature = "memory")))] fn main() {}
//! ```
//!
//! With `ServiceBuilder`, behind a bearer token (requests without it get `401`), called
//! directly:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use http::{Request, StatusCode};
//! use http_body_util::BodyExt;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_strata::dashboard::{Dashboard, DashboardData};
//! use tower_strata::purge::Purger;
//! use tower_strata::store::MemoryStore;
//!
//! let purger = Purger::new(std::sync::Arc::new(MemoryStore::new(1 << 20)));
//! let dashboard = ServiceBuilder::new()
//!     .concurrency_limit(4)
//!     .service(Dashboard::new().purger(purger).bearer_token("s3cret")?);
//!
//! let anonymous = Request::get("/data").body(String::new())?;
//! let response = dashboard.clone().oneshot(anonymous).await?;
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//!
//! let operator = Request::get("/data")
//!     .header("authorization", "Bearer s3cret")
//!     .body(String::new())?;
//! let response = dashboard.oneshot(operator).await?;
//! assert_eq!(response.headers()["cache-control"], "no-store");
//! let bytes = response.into_body().collect().await?.to_bytes();
//! let data: DashboardData = serde_json::from_slice(&bytes)?;
//! assert_eq!(data.purge.map(|p| p.total()), Some(0));
//! assert!(data.transactions.is_none()); // no transaction layer given
//! # Ok(()) }
//! ```
//!
//! Behind the app's own authentication, with a policy reading what its layer left in the
//! request extensions:
//!
//! ```
//! use tower_strata::dashboard::Dashboard;
//! use tower_strata::purge::Authorization;
//!
//! #[derive(Clone)]
//! struct User { admin: bool }
//!
//! let dashboard = Dashboard::new().authorize(|parts: &http::request::Parts| {
//!     match parts.extensions.get::<User>() {
//!         Some(user) if user.admin => Authorization::allow("admin"),
//!         Some(_) => Authorization::Forbidden,
//!         None => Authorization::Unauthenticated,
//!     }
//! });
//! # let _ = dashboard;
//! ```

mod data;
mod history;
#[cfg(feature = "metrics")]
mod latency;
mod service;

pub use data::{
    CacheData, CheckData, DashboardData, DurationData, HealthData, HistoryData, InvalidationData,
    LatencyData, PurgeData, RouteData, RouteHistory, SlowRequestData, SlowStatementData,
    StatementData, StoreData, TxData, VERSION, WindowData,
};
pub use service::{
    DEFAULT_HISTORY_LEN, DEFAULT_SAMPLE_INTERVAL, Dashboard, DashboardConfigError,
    DashboardConfigErrorKind,
};

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{Method, Request, StatusCode, header};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(dashboard: &Dashboard, method: Method, uri: &str) -> http::Response<Bytes> {
        let request = Request::builder().method(method).uri(uri).body(()).unwrap();
        let response = dashboard.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        http::Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
    }

    #[test]
    fn the_service_is_send_sync_and_clone() {
        fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
        assert_send_sync::<Dashboard>();
    }

    #[tokio::test]
    async fn the_page_is_html_not_stored_and_self_contained() {
        let dashboard = Dashboard::new();
        for uri in ["/", ""] {
            let uri = if uri.is_empty() { "http://x" } else { uri };
            let response = get(&dashboard, Method::GET, uri).await;
            assert_eq!(response.status(), StatusCode::OK);
            let headers = response.headers();
            assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
            assert_eq!(headers[header::CACHE_CONTROL], "no-store");
            assert!(
                headers[header::CONTENT_SECURITY_POLICY]
                    .to_str()
                    .unwrap()
                    .starts_with("default-src 'none'")
            );
            let page = std::str::from_utf8(response.body()).unwrap();
            assert!(page.starts_with("<!doctype html>"));
            assert!(page.contains("<script>") && page.contains("<style>"));
            // No external asset: nothing is loaded from anywhere but the page's origin.
            for external in ["src=\"http", "href=\"http", "@import", "<link", "src=\"//"] {
                assert!(!page.contains(external), "{external}");
            }
        }
        let head = get(&dashboard, Method::HEAD, "/").await;
        assert_eq!(head.status(), StatusCode::OK);
        assert!(head.body().is_empty());
    }

    #[tokio::test]
    async fn unknown_paths_are_404_and_other_methods_405() {
        let dashboard = Dashboard::new();
        for uri in ["/index.html", "/data/", "/data.json", "//", "/x/data"] {
            let response = get(&dashboard, Method::GET, uri).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{uri}");
            assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        }
        let response = get(&dashboard, Method::POST, "/data").await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
    }

    #[tokio::test]
    async fn the_data_without_sources_has_every_part_null() {
        let dashboard = Dashboard::new().title("empty");
        let response = get(&dashboard, Method::GET, "/data").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        let json: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(json["version"], 1);
        assert_eq!(json["title"], "empty");
        for part in [
            "latency",
            "cache",
            "store",
            "purge",
            "invalidation",
            "transactions",
            "health",
        ] {
            assert!(json[part].is_null(), "{part}");
        }
        assert_eq!(json["history"]["interval_ms"], 1000);
        let data: DashboardData = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(data.version, VERSION);
    }

    #[tokio::test]
    async fn authorization_guards_page_and_data() {
        let dashboard = Dashboard::new().bearer_token("t0ken").unwrap();
        for uri in ["/", "/data"] {
            let response = get(&dashboard, Method::GET, uri).await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
            // A browser is offered Basic authentication (the token as the password); scripts
            // a bearer token.
            let challenges: Vec<_> = response
                .headers()
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .collect();
            assert_eq!(
                challenges,
                [
                    "Basic realm=\"dashboard\", charset=\"UTF-8\"",
                    "Bearer realm=\"dashboard\""
                ]
            );
            // `operator:t0ken`, `anyone:t0ken`, `operator:nope`, `t0ken` (no colon).
            for (authorization, status) in [
                ("Bearer nope", StatusCode::FORBIDDEN),
                ("Bearer t0ken", StatusCode::OK),
                ("Basic b3BlcmF0b3I6dDBrZW4=", StatusCode::OK),
                ("basic YW55b25lOnQwa2Vu", StatusCode::OK),
                ("Basic b3BlcmF0b3I6bm9wZQ==", StatusCode::UNAUTHORIZED),
                ("Basic dDBrZW4=", StatusCode::UNAUTHORIZED),
                ("Basic !!!", StatusCode::UNAUTHORIZED),
            ] {
                let request = Request::get(uri)
                    .header("authorization", authorization)
                    .body(())
                    .unwrap();
                let response = dashboard.clone().oneshot(request).await.unwrap();
                assert_eq!(response.status(), status, "{uri} {authorization}");
            }
        }
        // Unknown paths stay 404 without credentials: nothing to protect there.
        let response = get(&dashboard, Method::GET, "/nope").await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert!(Dashboard::new().bearer_token("").is_err());
        assert!(Dashboard::new().bearer_token("with space").is_err());
    }

    #[test]
    fn history_settings_are_validated() {
        use std::time::Duration;
        assert!(Dashboard::new().history(Duration::ZERO, 10).is_err());
        assert!(Dashboard::new().history(Duration::from_secs(1), 0).is_err());
        assert!(
            Dashboard::new()
                .history(Duration::from_secs(1), 3_601)
                .is_err()
        );
        let d = Dashboard::new()
            .history(Duration::from_millis(500), 120)
            .unwrap();
        assert_eq!(d.data().history.interval_ms, 500);
    }

    #[cfg(feature = "memory")]
    #[tokio::test]
    async fn the_data_shape_is_stable() {
        use crate::cache::CacheLayer;
        use crate::store::MemoryStore;

        let store = MemoryStore::new(1 << 20);
        let cache = CacheLayer::new(store.clone());
        let purger = cache.purger().purger().clone();
        let dashboard = Dashboard::new()
            .cache(cache.stats())
            .store(store)
            .purger(purger.clone());
        purger.purge_tags(["products"]).await.unwrap();
        let json = serde_json::to_value(dashboard.data()).unwrap();
        // The documented names of version 1.
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(
            keys(&json),
            [
                "at_unix_ms",
                "cache",
                "health",
                "history",
                "invalidation",
                "latency",
                "purge",
                "store",
                "title",
                "transactions",
                "version"
            ]
        );
        assert_eq!(
            keys(&json["cache"]),
            [
                "bypasses",
                "coalesced",
                "hit_rate",
                "hits",
                "invalidations",
                "misses",
                "not_stored",
                "refreshes_ahead",
                "revalidated",
                "stale_hits",
                "store_errors",
                "stores"
            ]
        );
        assert_eq!(
            keys(&json["history"]),
            [
                "at_unix_ms",
                "hit_ratio",
                "interval_ms",
                "invalidations",
                "lookups",
                "purges"
            ]
        );
        assert_eq!(json["purge"]["tag_purges"], 1);
        assert!(json["store"]["entries"].is_u64());
        assert!(json["store"]["bytes"].is_u64());
        // A round trip through the serde types loses nothing.
        let data: DashboardData = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&data).unwrap(), json);
    }
}
