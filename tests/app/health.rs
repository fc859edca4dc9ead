//! Integration tests of the health checks and the readiness service.
#![cfg(feature = "health")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_strata::health::{
    Check, CheckOutput, Health, HealthService, Status, fn_check, stats_check,
};

/// Calls a health service and returns the status and the JSON body.
async fn get(svc: HealthService) -> (StatusCode, serde_json::Value) {
    let res = svc
        .oneshot(Request::get("/health/ready").body(()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

fn counting_check(runs: &Arc<AtomicUsize>) -> impl tower_strata::health::HealthCheck {
    let runs = runs.clone();
    fn_check(move || {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            CheckOutput::healthy(serde_json::json!({ "ok": true }))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_hanging_check_makes_readiness_503_within_the_timeout() {
    let health = Health::builder()
        .check(Check::required(
            "hangs",
            fn_check(std::future::pending::<CheckOutput>),
        ))
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let start = tokio::time::Instant::now();
    let (status, body) = get(health.readiness_service()).await;
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(1),
        "answered at the timeout"
    );
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["checks"][0]["name"], "hangs");
    assert_eq!(body["checks"][0]["error"], "timed out after 1000 ms");
    assert_eq!(body["checks"][0]["latency_ms"], 1000.0);
}

#[tokio::test]
async fn liveness_touches_no_check() {
    let runs = Arc::new(AtomicUsize::new(0));
    let health = Health::builder()
        .check(Check::required("counted", counting_check(&runs)))
        .check(Check::required(
            "hangs",
            fn_check(std::future::pending::<CheckOutput>),
        ))
        .build()
        .unwrap();
    let (status, body) = get(health.liveness_service()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({ "status": "alive" }));
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn statuses_thresholds_and_last_error() {
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = fail.clone();
    let health = Health::builder()
        .check(Check::required(
            "flaky",
            fn_check(move || {
                let fail = flag.load(Ordering::SeqCst);
                async move {
                    if fail {
                        CheckOutput::unhealthy("connection refused")
                    } else {
                        CheckOutput::healthy(serde_json::Value::Null)
                    }
                }
            }),
        ))
        .check(
            Check::required(
                "slow",
                fn_check(|| async {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    CheckOutput::healthy(serde_json::Value::Null)
                }),
            )
            .degraded_latency(Duration::from_millis(100)),
        )
        .check(Check::optional(
            "optional",
            fn_check(|| async { CheckOutput::unhealthy("cache down") }),
        ))
        .check(Check::optional(
            "panics",
            fn_check(|| async { panic!("bug in a check") }),
        ))
        .build()
        .unwrap();

    let report = health.check_now().await;
    assert_eq!(report.status, Status::Unhealthy);
    let (code, _) = get(health.readiness_service()).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);

    fail.store(false, Ordering::SeqCst);
    let report = health.check_now().await;
    // The required checks are fine or slow, the optional ones down: degraded, still ready.
    assert_eq!(report.status, Status::Degraded);
    let by_name = |n: &str| report.checks.iter().find(|c| c.name == n).unwrap().clone();
    let flaky = by_name("flaky");
    assert_eq!(flaky.status, Status::Healthy);
    assert_eq!(flaky.error, None);
    assert_eq!(flaky.last_error.as_deref(), Some("connection refused"));
    let slow = by_name("slow");
    assert_eq!(slow.status, Status::Degraded);
    assert_eq!(slow.latency, Duration::from_millis(200));
    assert_eq!(by_name("optional").status, Status::Unhealthy);
    let panics = by_name("panics");
    assert_eq!(panics.error.as_deref(), Some("check panicked"));
    let (code, body) = get(health.readiness_service()).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["status"], "degraded");
}

#[tokio::test(start_paused = true)]
async fn background_runs_and_cached_readiness() {
    let runs = Arc::new(AtomicUsize::new(0));
    let health = Health::builder()
        .check(Check::required("counted", counting_check(&runs)))
        .interval(Duration::from_secs(10))
        .build()
        .unwrap();
    let task = health.spawn();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "first run at once");
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    // Fresh results: readiness answers from them without running the check.
    let (code, body) = get(health.readiness_service()).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["checks"][0]["details"]["ok"], true);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    // The task ends once the health registry is gone.
    drop(health);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(task.is_finished());
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readiness_requests_share_one_run() {
    let runs = Arc::new(AtomicUsize::new(0));
    let inner = runs.clone();
    let health = Health::builder()
        .check(Check::required(
            "slowish",
            fn_check(move || {
                let runs = inner.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    CheckOutput::healthy(serde_json::Value::Null)
                }
            }),
        ))
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let svc = health.readiness_service();
        tasks.push(tokio::spawn(async move { get(svc).await.0 }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[cfg(feature = "metrics")]
#[tokio::test]
async fn the_metrics_report_is_part_of_readiness() {
    use tower_strata::metrics::{LatencyReport, MetricsRegistry};
    let registry = MetricsRegistry::builder()
        .slow_threshold(Some(Duration::from_millis(100)))
        .export(false)
        .build()
        .unwrap();
    registry.record(
        "/a",
        &http::Method::GET,
        StatusCode::OK,
        Duration::from_millis(5),
    );
    registry.record(
        "/a",
        &http::Method::GET,
        StatusCode::INTERNAL_SERVER_ERROR,
        Duration::from_millis(500),
    );
    let reg = registry.clone();
    let health = Health::builder()
        .check(Check::optional(
            "latency",
            stats_check(move || reg.report()).status(|r: &LatencyReport| {
                if r.last_minute.iter().any(|s| s.error_rate > 0.1) {
                    Status::Degraded
                } else {
                    Status::Healthy
                }
            }),
        ))
        .build()
        .unwrap();
    let (code, body) = get(health.readiness_service()).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["status"], "degraded");
    let details = &body["checks"][0]["details"];
    assert_eq!(details["last_minute"][0]["route"], "/a");
    assert_eq!(details["last_minute"][0]["count"], 2);
    assert_eq!(details["last_minute"][0]["latency"]["max_ms"], 500.0);
    assert_eq!(details["slow_requests"][0]["duration_ms"], 500.0);
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn the_axum_router_mounts_both_endpoints() {
    let health = Health::builder()
        .check(Check::required(
            "fails",
            fn_check(|| async { CheckOutput::unhealthy("x") }),
        ))
        .build()
        .unwrap();
    let app: axum::Router = health.router();
    let live = app
        .clone()
        .oneshot(
            Request::get("/health")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    let ready = app
        .oneshot(
            Request::get("/health/ready")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.headers()["content-type"], "application/json");
}

/// An upper bound for "within the check timeout" on a shared machine: the timeout plus slack.
#[cfg(any(feature = "postgres", feature = "redis"))]
fn within(timeout: Duration) -> Duration {
    timeout + Duration::from_secs(2)
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use sqlx::postgres::PgPoolOptions;
    use tower_strata::health::PoolCheck;

    fn url() -> String {
        std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
    }

    #[tokio::test]
    async fn a_reachable_database_is_healthy_with_pool_details() {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url())
            .await
            .unwrap();
        let health = Health::builder()
            .check(Check::required("postgres", PoolCheck::new(pool.clone())))
            .build()
            .unwrap();
        let (code, body) = get(health.readiness_service()).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let d = &body["checks"][0]["details"];
        assert_eq!(d["max_connections"], 4);
        assert!(d["size"].as_u64().unwrap() >= 1);
        assert!(d["round_trip_ms"].as_f64().unwrap() > 0.0);
        assert!(d["acquire_wait_ms"].is_number());
        assert_eq!(d["acquire_timeouts"], 0);

        // All connections held by the app: utilisation 100 %, the check's own acquire times
        // out, and readiness says so.
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(pool.acquire().await.unwrap());
        }
        let health = Health::builder()
            .check(Check::required(
                "postgres",
                PoolCheck::new(pool.clone()).timeout(Duration::from_millis(200)),
            ))
            .build()
            .unwrap();
        let (code, body) = get(health.readiness_service()).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        let check = &body["checks"][0];
        assert_eq!(check["details"]["utilisation"], 1.0);
        assert_eq!(check["details"]["in_use"], 4);
        assert_eq!(check["details"]["acquire_timeouts"], 1);
        assert!(
            check["error"].as_str().unwrap().contains("no connection"),
            "{check}"
        );
        drop(held);
    }

    #[tokio::test]
    async fn readiness_is_503_when_postgres_is_unreachable() {
        // A port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pool = PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(300))
            .connect_lazy(&format!("postgres://postgres@127.0.0.1:{port}/test"))
            .unwrap();
        let timeout = Duration::from_millis(800);
        let health = Health::builder()
            .check(Check::required("postgres", PoolCheck::new(pool)))
            .timeout(timeout)
            .build()
            .unwrap();
        let start = std::time::Instant::now();
        let (code, body) = get(health.readiness_service()).await;
        assert!(
            start.elapsed() < within(timeout),
            "took {:?}",
            start.elapsed()
        );
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "unhealthy");
        assert_eq!(body["checks"][0]["status"], "unhealthy");
        assert!(body["checks"][0]["error"].is_string());
    }
}

#[cfg(all(feature = "sqlite", feature = "mysql"))]
#[tokio::test]
async fn pool_checks_work_for_sqlite_and_mysql() {
    use tower_strata::health::PoolCheck;
    let sqlite = sqlx::sqlite::SqlitePoolOptions::new()
        .connect("sqlite::memory:")
        .await
        .unwrap();
    let mysql_url =
        std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let mysql = sqlx::mysql::MySqlPoolOptions::new()
        .acquire_timeout(Duration::from_secs(5))
        .connect(&mysql_url)
        .await
        .unwrap();
    let health = Health::builder()
        .check(Check::required("sqlite", PoolCheck::new(sqlite)))
        .check(Check::required("mysql", PoolCheck::new(mysql)))
        .build()
        .unwrap();
    let report = health.check_now().await;
    assert_eq!(report.status, Status::Healthy, "{report:?}");
}

#[cfg(feature = "redis")]
mod redis_checks {
    use super::*;
    use tower_strata::health::RedisCheck;

    #[tokio::test]
    async fn a_reachable_redis_answers_ping() {
        let url =
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let check = RedisCheck::new(redis::Client::open(url).unwrap());
        let health = Health::builder()
            .check(Check::required("redis", check))
            .build()
            .unwrap();
        for _ in 0..2 {
            // The second run reuses the kept connection.
            let report = health.check_now().await;
            assert_eq!(report.status, Status::Healthy, "{report:?}");
            assert_eq!(report.checks[0].details["connected"], true);
        }
    }

    #[tokio::test]
    async fn readiness_is_503_when_redis_hangs() {
        // Accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let timeout = Duration::from_millis(800);
        let check = RedisCheck::new(redis::Client::open(format!("redis://{addr}")).unwrap())
            .timeout(Duration::from_millis(300));
        let health = Health::builder()
            .check(Check::required("redis", check))
            .timeout(timeout)
            .build()
            .unwrap();
        let start = std::time::Instant::now();
        let (code, body) = get(health.readiness_service()).await;
        assert!(
            start.elapsed() < within(timeout),
            "took {:?}",
            start.elapsed()
        );
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["checks"][0]["details"]["connected"], false);
        assert!(
            body["checks"][0]["error"]
                .as_str()
                .unwrap()
                .contains("timed out"),
            "{body}"
        );
        server.abort();
    }
}
