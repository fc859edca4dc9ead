//! The quickstart's stack (SQLite + memory store, every layer in one `ServiceBuilder`), driven
//! as the README's demo drives it.
#![cfg(all(
    feature = "memory",
    feature = "axum",
    feature = "sqlite",
    feature = "metrics",
    feature = "health",
    feature = "dashboard"
))]
#![allow(dead_code)]

#[path = "../../examples/quickstart.rs"]
mod quickstart;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

struct Answer {
    status: StatusCode,
    cache: String,
    body: serde_json::Value,
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: &str,
) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let cache = response
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    // The cache stores a response in the background once its body has streamed.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    Answer {
        status,
        cache,
        body: serde_json::from_slice(&bytes).unwrap_or_default(),
    }
}

fn is_hit(a: &Answer) -> bool {
    a.cache.contains("hit") && !a.cache.contains("fwd=")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_stack_caches_purges_after_commit_and_rolls_back() {
    let pool = quickstart::open_database(None).await.unwrap();
    let shop = quickstart::shop(pool, "t0ken").unwrap();
    let app = &shop.router;

    let first = call(app, "GET", "/products/1", None, "").await;
    assert_eq!(first.status, 200);
    assert!(first.cache.contains("fwd=miss"), "{}", first.cache);
    let second = call(app, "GET", "/products/1", None, "").await;
    assert!(is_hit(&second), "{}", second.cache);

    // The rule purges after the commit: the next read is a miss with the new price.
    let put = call(app, "PUT", "/products/1", None, r#"{"price_cents":2999}"#).await;
    assert_eq!(put.status, 200);
    let after = call(app, "GET", "/products/1", None, "").await;
    assert!(!is_hit(&after), "{}", after.cache);
    assert_eq!(after.body["price_cents"], 2999);

    // An order short of stock rolls back (the order row too) and purges nothing.
    let cached = call(app, "GET", "/products/2", None, "").await;
    assert_eq!(cached.body["stock"], 3);
    let refused = call(
        app,
        "POST",
        "/orders",
        None,
        r#"{"product_id":2,"quantity":5}"#,
    )
    .await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    let still = call(app, "GET", "/products/2", None, "").await;
    assert!(is_hit(&still), "nothing purged: {}", still.cache);
    // A successful order purges through its Invalidation extension.
    let placed = call(
        app,
        "POST",
        "/orders",
        None,
        r#"{"product_id":2,"quantity":2}"#,
    )
    .await;
    assert_eq!(placed.status, StatusCode::CREATED);
    assert_eq!(
        placed.body["order"], 1,
        "the refused order's row was rolled back"
    );
    let fresh = call(app, "GET", "/products/2", None, "").await;
    assert!(!is_hit(&fresh));
    assert_eq!(fresh.body["stock"], 1);

    // The purge endpoint wants the token.
    let purge = r#"{"tags":["products"]}"#;
    let refused = call(app, "POST", "/_cache/purge", None, purge).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(is_hit(&call(app, "GET", "/products/2", None, "").await));
    let purged = call(app, "POST", "/_cache/purge", Some("t0ken"), purge).await;
    assert_eq!(purged.status, 200);
    assert!(!is_hit(&call(app, "GET", "/products/2", None, "").await));

    let figures = shop.figures.json();
    assert!(figures["transactions"]["committed"].as_u64().unwrap() >= 2);
    assert_eq!(figures["transactions"]["rolled_back"], 1);
    assert!(figures["invalidation"]["rule_firings"].as_u64().unwrap() >= 1);
    let routes: Vec<&str> = figures["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["route"].as_str().unwrap())
        .collect();
    assert!(routes.contains(&"/products/{id}"), "{routes:?}");
}
