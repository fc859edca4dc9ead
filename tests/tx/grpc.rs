//! The transaction layer inside a tonic server (PostgreSQL): commits on `grpc-status` 0,
//! which tonic sends in the trailers, and rolls back on any other status.
#![cfg(all(feature = "postgres", feature = "tonic"))]

#[path = "../support/tx.rs"]
mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::uri::PathAndQuery;
use sqlx::Postgres;
use sqlx::postgres::PgPoolOptions;
use support::{sql, table};
use tonic::{Code, Status};
use tower_strata::tx::{TxConfig, TxHandle, TxLayer};

#[derive(Clone, PartialEq, prost::Message)]
struct InsertRequest {
    #[prost(int64, tag = "1")]
    v: i64,
    #[prost(bool, tag = "2")]
    fail: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct InsertReply {
    #[prost(int64, tag = "1")]
    v: i64,
}

/// A hand-written unary gRPC service `test.Tx/Insert` (no protoc on this machine).
#[derive(Clone)]
struct TxService {
    table: Arc<str>,
    hooks: Arc<AtomicUsize>,
}

impl tonic::server::NamedService for TxService {
    const NAME: &'static str = "test.Tx";
}

struct Insert(TxService);

impl tonic::server::UnaryService<InsertRequest> for Insert {
    type Response = InsertReply;
    type Future = BoxFuture<'static, Result<tonic::Response<InsertReply>, Status>>;

    fn call(&mut self, request: tonic::Request<InsertRequest>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move {
            let tx = request
                .extensions()
                .get::<TxHandle<Postgres>>()
                .cloned()
                .ok_or_else(|| Status::internal("no TxLayer"))?;
            let msg = request.into_inner();
            let mut conn = tx
                .conn()
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            sqlx::query(sql(format!("INSERT INTO {} (v) VALUES ($1)", svc.table)))
                .bind(msg.v)
                .execute(&mut conn)
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            let hooks = svc.hooks.clone();
            conn.after_commit(move || async move {
                hooks.fetch_add(1, Ordering::SeqCst);
            });
            if msg.fail {
                return Err(Status::failed_precondition("refused"));
            }
            Ok(tonic::Response::new(InsertReply { v: msg.v }))
        })
    }
}

impl<B> tower::Service<http::Request<B>> for TxService
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let svc = self.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                InsertReply,
                InsertRequest,
            >::default());
            Ok(grpc.unary(Insert(svc), req).await)
        })
    }
}

#[tokio::test]
async fn tonic_server_commits_on_grpc_status_0_and_rolls_back_otherwise() {
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&support::pg_url())
        .await
        .expect("PostgreSQL at DATABASE_URL");
    let name = table("grpc");
    // Unique but checked only at COMMIT, which for a successful gRPC call happens after the
    // handler, once the trailers are known.
    sqlx::query(sql(format!(
        "CREATE TABLE {name} (v BIGINT, UNIQUE (v) DEFERRABLE INITIALLY DEFERRED)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let layer = TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap();
    let stats = layer.stats();
    let hooks = Arc::new(AtomicUsize::new(0));
    let service = TxService {
        table: name.as_str().into(),
        hooks: hooks.clone(),
    };

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(service)
            .serve_with_incoming_shutdown(tokio_stream_from(listener), async {
                let _ = stop_rx.await;
            }),
    );

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    let mut call = async |v: i64, fail: bool| {
        client.ready().await.unwrap();
        client
            .unary(
                tonic::Request::new(InsertRequest { v, fail }),
                PathAndQuery::from_static("/test.Tx/Insert"),
                tonic_prost::ProstCodec::<InsertRequest, InsertReply>::default(),
            )
            .await
    };
    assert_eq!(call(1, false).await.unwrap().into_inner().v, 1);
    assert_eq!(
        call(2, true).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert_eq!(call(3, false).await.unwrap().into_inner().v, 3);

    // The handler succeeds but the commit fails: the client must not see OK.
    let failed = call(3, false).await.unwrap_err();
    assert_eq!(failed.code(), Code::Internal);

    let values: Vec<i64> = sqlx::query_scalar(sql(format!("SELECT v FROM {name} ORDER BY v")))
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(values, vec![1, 3]);
    assert_eq!(hooks.load(Ordering::SeqCst), 2);
    let s = stats.snapshot();
    assert_eq!((s.committed, s.rolled_back, s.active), (2, 2, 0));
    assert_eq!(s.commit_failures, 1);

    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
    sqlx::query(sql(format!("DROP TABLE {name}")))
        .execute(&pool)
        .await
        .unwrap();
}

fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    })
}
