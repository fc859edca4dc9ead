//! Helpers for the transaction layer suites.
#![allow(dead_code)] // each suite uses a subset

use std::convert::Infallible;
use std::future::Future;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_strata::tx::{CommitPolicy, TxBody, TxDatabase, TxHandle, TxLayer};

/// A table name unique to this test run.
pub fn table(name: &str) -> String {
    format!("tx_{name}_{:08x}", rand::random::<u32>())
}

/// Dynamic SQL.
pub fn sql(s: impl Into<String>) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(s.into())
}

pub fn pg_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn mysql_url() -> String {
    std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// A service: the layer over a handler that gets the request's handle and body.
pub fn app<DB, P, F, Fut>(
    layer: TxLayer<DB, P>,
    handler: F,
) -> impl Service<
    Request<String>,
    Response = Response<tower_strata::tx::TxResponseBody<String>>,
    Error = Infallible,
    Future: Send,
> + Clone
+ Send
+ 'static
where
    DB: TxDatabase,
    P: CommitPolicy,
    F: Fn(TxHandle<DB>, String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<String>> + Send + 'static,
{
    ServiceBuilder::new()
        .layer(layer)
        .service(tower::service_fn(move |req: Request<TxBody<String>>| {
            let handler = handler.clone();
            async move {
                let handle = req
                    .extensions()
                    .get::<TxHandle<DB>>()
                    .expect("handle")
                    .clone();
                let body = req.into_body().collect().await.expect("body").to_bytes();
                let body = String::from_utf8(body.to_vec()).expect("utf8");
                Ok::<_, Infallible>(handler(handle, body).await)
            }
        }))
}

pub fn status(code: u16) -> Response<String> {
    let mut r = Response::new(String::new());
    *r.status_mut() = StatusCode::from_u16(code).unwrap();
    r
}

/// Sends a `POST` (a read-write transaction under the default modes) with `body`.
pub async fn send<S>(svc: &S, body: &str) -> Response<String>
where
    S: Service<
            Request<String>,
            Response = Response<tower_strata::tx::TxResponseBody<String>>,
            Error = Infallible,
        > + Clone,
{
    send_request(svc, Request::post("/").body(body.to_owned()).unwrap()).await
}

/// Sends `request` and collects the response's body.
pub async fn send_request<S>(svc: &S, request: Request<String>) -> Response<String>
where
    S: Service<
            Request<String>,
            Response = Response<tower_strata::tx::TxResponseBody<String>>,
            Error = Infallible,
        > + Clone,
{
    let response = svc.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    Response::from_parts(parts, String::from_utf8_lossy(&bytes).into_owned())
}
