//! tower-strata on a tonic gRPC server: the metrics, cache and transaction layers stacked with
//! `Server::builder().layer(..)` in front of a `shop.Catalog` service (see `stack.rs`).
//!
//! ```text
//! cargo run --example grpc --features tonic                    # serve on 127.0.0.1:50051
//! cargo run --example grpc --features tonic -- --demo          # call it in-process, print a table
//! cargo run --example grpc --features tonic -- --listen 127.0.0.1:6000
//! cargo run --example grpc --features tonic,postgres -- --demo \
//!     --database-url postgres://postgres@127.0.0.1:5432/test
//! ```
//!
//! The default database is SQLite in memory (no server to install; one connection, so calls
//! that reach the database take turns). `--database-url` takes a `sqlite:` URL, or a
//! `postgres://` one when built with the `postgres` feature.

use std::net::SocketAddr;
use std::time::Duration;

mod stack;

use stack::{CatalogDb, CatalogServer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// tower-strata on a tonic gRPC server: the metrics, cache and transaction layers in front of a
/// `shop.Catalog` service.
#[derive(clap::Parser)]
struct Args {
    /// The address to serve on (default 127.0.0.1:50051; with --demo, a free loopback port).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Call the service in-process and print a table: a miss, a hit, a commit and a rollback.
    #[arg(long)]
    demo: bool,
    /// A PostgreSQL database (needs the `postgres` feature); SQLite in memory without it.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = <Args as clap::Parser>::parse();
    if let Err(e) = run(args).await {
        eprintln!("grpc example: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    match args.database_url.as_deref() {
        None => {
            // One connection that never closes: an in-memory SQLite database lives as long as
            // its connection, and each new connection would get a new, empty one.
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(Duration::from_secs(10))
                .connect("sqlite::memory:")
                .await?;
            start(args, pool, "SQLite in memory").await
        }
        Some(url) if url.starts_with("sqlite:") => {
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await?;
            start(args, pool, "SQLite").await
        }
        #[cfg(feature = "postgres")]
        Some(url) if url.starts_with("postgres:") || url.starts_with("postgresql:") => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await?;
            start(args, pool, "PostgreSQL").await
        }
        Some(url) => Err(format!(
            "unsupported --database-url {url:?}: use sqlite:..., or postgres://... with the \
             `postgres` feature"
        )
        .into()),
    }
}

async fn start<DB: CatalogDb>(args: Args, pool: sqlx::Pool<DB>, db: &str) -> Result<(), BoxError> {
    let server = CatalogServer::new(pool).await?;
    let handles = server.handles();
    let listen = match (args.listen, args.demo) {
        (Some(a), _) => a,
        (None, true) => SocketAddr::from(([127, 0, 0, 1], 0)),
        (None, false) => SocketAddr::from(([127, 0, 0, 1], 50051)),
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;

    if !args.demo {
        println!("shop.Catalog on {addr} ({db}): metrics -> cache -> transaction layers.");
        println!("Try it with grpcurl (no reflection, so pass the messages by hand), or run");
        println!("this example with --demo to see a miss, a hit, a commit and a rollback.");
        println!("Ctrl-C to stop.");
        server
            .serve(listener, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        return Ok(());
    }

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    let steps = stack::demo(addr, &handles).await;
    let _ = stop.send(());
    let served = tokio::time::timeout(Duration::from_secs(10), serving).await;
    let steps = steps?;
    println!("shop.Catalog demo on {addr} ({db})\n");
    print!("{}", stack::summary(&steps, &handles));
    match served {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(e.into()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err("server did not shut down within 10 s".into()),
    }
}
