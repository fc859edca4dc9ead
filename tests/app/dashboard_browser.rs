//! The dashboard rendered by a real browser: headless Chromium opens the quickstart's
//! `/dashboard` after some traffic, and the DOM it renders shows the route template, a hit
//! ratio and SVG charts.
//!
//! Needs the `chromium` binary (Debian package `chromium`; `.ci/run` installs it). Without it
//! the test prints why and passes. `CHROMIUM=/path/to/chrome` picks another binary;
//! `DASHBOARD_SCREENSHOT=docs/dashboard.png` also saves a screenshot of the page (the README's).
#![cfg(all(
    feature = "dashboard",
    feature = "memory",
    feature = "axum",
    feature = "sqlite",
    feature = "metrics",
    feature = "health"
))]
#![allow(dead_code)]

#[path = "../../examples/quickstart.rs"]
mod quickstart;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

/// How long Chromium may take before it is killed.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let candidates = ["chromium", "chromium-browser", "google-chrome", "chrome"];
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.push(PathBuf::from("/usr/bin"));
    candidates
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

async fn send(app: &axum::Router, method: &str, uri: &str, body: &str) -> http::StatusCode {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    // The cache stores a response in the background once its body has streamed.
    tokio::time::sleep(Duration::from_millis(10)).await;
    status
}

/// Runs Chromium headless on `url` with `extra` arguments and returns its standard output,
/// killing it after [`BROWSER_TIMEOUT`].
async fn chromium(binary: &Path, url: &str, extra: &[&str]) -> String {
    let profile = std::env::temp_dir().join(format!(
        "tower-strata-chromium-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&profile).unwrap();
    let mut command = tokio::process::Command::new(binary);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A process group of its own: on a timeout the renderer, zygote and utility
        // processes go with the browser, not only the process we started.
        .process_group(0)
        .kill_on_drop(true);
    // The profile goes whatever happens (a timeout, a failed assertion).
    struct Cleanup(PathBuf, Option<u32>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(group) = self.1 {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{group}")])
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let child = command.spawn().expect("chromium starts");
    let _cleanup = Cleanup(profile.clone(), child.id());
    let output = tokio::time::timeout(BROWSER_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("chromium took more than {BROWSER_TIMEOUT:?}: killed"))
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The browser, or `None` after saying why the test is skipped.
fn chromium_or_skip(test: &str) -> Option<PathBuf> {
    let found = find_chromium();
    if found.is_none() {
        // Straight to the process's stderr: `eprintln!` is captured by the test harness and
        // would hide the skip.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr().lock(),
            "SKIPPED {test}: no chromium binary on PATH or in /usr/bin (install the Debian \
             package `chromium`, or set CHROMIUM=/path)"
        );
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_the_quickstart_dashboard() {
    let Some(binary) = chromium_or_skip("chromium_renders_the_quickstart_dashboard") else {
        return;
    };

    let pool = quickstart::open_database(None).await.unwrap();
    let shop = quickstart::shop(pool, "t0ken").unwrap();
    let _checks = shop.health.spawn();
    let _samples = shop.dashboard.spawn();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, shop.router.clone()).into_future());

    // Traffic over a few samples: misses and hits on `/products/{id}`, a write that purges
    // after commit, an order refused for lack of stock (rolled back).
    let app = &shop.router;
    for round in 0..3 {
        for id in 1..=3 {
            for _ in 0..=round {
                assert_eq!(send(app, "GET", &format!("/products/{id}"), "").await, 200);
            }
        }
        assert_eq!(send(app, "GET", "/products", "").await, 200);
        if round == 1 {
            let put = send(app, "PUT", "/products/1", r#"{"price_cents":2999}"#).await;
            assert_eq!(put, 200);
            let order = send(app, "POST", "/orders", r#"{"product_id":2,"quantity":50}"#).await;
            assert_eq!(order, 409);
        }
        tokio::time::sleep(Duration::from_millis(1_050)).await;
    }

    let url = format!("http://{addr}/dashboard");
    let dom = chromium(&binary, &url, &["--virtual-time-budget=5000", "--dump-dom"]).await;
    let excerpt: String = dom.chars().take(3_000).collect();
    assert!(
        dom.contains("/products/{id}"),
        "the route template is shown: {excerpt}"
    );
    assert!(dom.contains("hit ratio"), "a hit ratio is shown: {excerpt}");
    let ratio = dom
        .split("id=\"hit-ratio\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap_or_default();
    assert!(
        ratio.ends_with('%') && ratio.trim_end_matches(" %").parse::<f64>().is_ok(),
        "the hit ratio is a percentage: {ratio:?}"
    );
    assert!(dom.contains("<svg"), "a chart is drawn: {excerpt}");
    assert!(dom.contains("<polyline"), "a chart has a line: {excerpt}");
    // The status line says the data loaded (the page's script also holds the words).
    assert!(
        dom.contains("<span id=\"status\" class=\"\">live · updated"),
        "the data loaded: {excerpt}"
    );
    eprintln!(
        "chromium rendered {} bytes of DOM; hit ratio {ratio}; {} svg charts, {} lines",
        dom.len(),
        dom.matches("<svg").count(),
        dom.matches("<polyline").count()
    );

    if let Some(path) = std::env::var_os("DASHBOARD_SCREENSHOT") {
        let path = std::path::absolute(PathBuf::from(path)).unwrap();
        chromium(
            &binary,
            &url,
            &[
                "--virtual-time-budget=5000",
                "--window-size=1200,900",
                &format!("--screenshot={}", path.display()),
            ],
        )
        .await;
        eprintln!("screenshot saved to {}", path.display());
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_missing_parts_and_a_failing_data_endpoint_as_stale() {
    use axum::Router;
    use tower::ServiceBuilder;
    use tower_strata::dashboard::Dashboard;

    let Some(binary) =
        chromium_or_skip("chromium_shows_missing_parts_and_a_failing_data_endpoint_as_stale")
    else {
        return;
    };
    // The page of a dashboard without any source, whose data endpoint answers 503.
    let page = ServiceBuilder::new()
        .map_request(|mut request: Request<Body>| {
            *request.uri_mut() = "/".parse().unwrap();
            request
        })
        .service(Dashboard::new());
    let app = Router::new().route_service("/ops", page).route(
        "/ops/data",
        axum::routing::get(|| async { http::StatusCode::SERVICE_UNAVAILABLE }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, app).into_future());
    let dom = chromium(
        &binary,
        &format!("http://{addr}/ops"),
        &["--virtual-time-budget=5000", "--dump-dom"],
    )
    .await;
    server.abort();
    let status = dom
        .split("<span id=\"status\"")
        .nth(1)
        .and_then(|rest| rest.split("</span>").next())
        .unwrap_or_default();
    assert!(
        status.contains("class=\"stale\"")
            && status.contains("stale since ")
            && status.contains("HTTP 503"),
        "the status says the figures are stale: {status:?}"
    );

    // With a working endpoint but no source, every part says it is not configured.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().nest_service("/ops", Dashboard::new());
    let server = tokio::spawn(axum::serve(listener, app).into_future());
    let dom = chromium(
        &binary,
        &format!("http://{addr}/ops/"),
        &["--virtual-time-budget=3000", "--dump-dom"],
    )
    .await;
    server.abort();
    let rendered = dom.split("<script>").next().unwrap_or_default();
    assert_eq!(
        rendered.matches("not configured").count(),
        6,
        "each part says so: {rendered}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_opens_a_token_guarded_dashboard_with_the_token_as_basic_auth_password() {
    use axum::Router;
    use tower_strata::dashboard::Dashboard;

    let Some(binary) = chromium_or_skip(
        "chromium_opens_a_token_guarded_dashboard_with_the_token_as_basic_auth_password",
    ) else {
        return;
    };
    let dashboard = Dashboard::new().bearer_token("t0ken").unwrap();
    let app = Router::new().nest_service("/dashboard", dashboard);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, app).into_future());
    let open = |credentials: &'static str| {
        let url = format!("http://{credentials}{addr}/dashboard");
        let binary = binary.clone();
        async move { chromium(&binary, &url, &["--virtual-time-budget=5000", "--dump-dom"]).await }
    };

    // A browser sends the user and the token the URL names (as a person would type them
    // into the prompt the `401`'s `WWW-Authenticate: Basic` brings up), for the page and
    // for the data the page fetches.
    let dom = open("operator:t0ken@").await;
    let excerpt: String = dom.chars().take(2_000).collect();
    assert!(
        dom.contains("<span id=\"status\" class=\"\">live · updated"),
        "the page and its data loaded: {excerpt}"
    );
    // Without the token, or with a wrong one, the browser gets no dashboard (headless, it
    // renders nothing: it would ask its user for a user name and password).
    for credentials in ["", "operator:nope@"] {
        let dom = open(credentials).await;
        assert!(!dom.contains("id=\"status\""), "{credentials:?}: {dom}");
    }
    server.abort();
}
