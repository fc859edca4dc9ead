//! `db` helpers against SQLite (a temporary database file per test, WAL mode).
#![cfg(feature = "sqlite")]

#[path = "../support/db.rs"]
mod support;

use std::path::PathBuf;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Sqlite, SqlitePool};
use support::*;
use tower_strata::db::{
    Aggregate, Bulk, CursorKey, CursorRequest, Dialect, PoolBuilder, PoolPreset, Search,
};

struct TempDb {
    pool: SqlitePool,
    path: PathBuf,
}

impl TempDb {
    async fn new(max: u32) -> Self {
        let path =
            std::env::temp_dir().join(format!("strata_db_{:016x}.sqlite", rand::random::<u64>()));
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .unwrap();
        Self { pool, path }
    }

    async fn close(self) {
        self.pool.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}

#[tokio::test]
async fn bundled_sqlite_has_the_modern_parameter_limit() {
    let db = TempDb::new(1).await;
    let version: String = sqlx::query_scalar("SELECT sqlite_version()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap()).collect();
    assert!(
        parts[0] == 3 && parts[1] >= 32,
        "SQLite {version} predates the 32,766 limit"
    );
    assert_eq!(<Sqlite as Dialect>::MAX_BIND_PARAMS, 32_766);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pagination_over_100k_rows() {
    let db = TempDb::new(4).await;
    let pool = &db.pool;
    let t = create_items(pool, "page").await;
    let statements = bulk_insert(pool, &t, &rows(0..ROWS)).await;
    assert_eq!(
        statements, 10,
        "100,000 rows x 3 params in chunks of 10,922 rows"
    );
    let key = CursorKey::random();
    keyset_walks(pool, &t, &key, "name", "name, id").await;
    keyset_walks(pool, &t, &key, "-name", "name DESC, id DESC").await;
    offset_pages(pool, &t, ROWS as u64).await;
    forged_cursors(pool, &t).await;
    sort_injection(pool, &t).await;
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyset_under_concurrent_inserts() {
    let db = TempDb::new(6).await;
    let pool = &db.pool;
    let t = create_items(pool, "conc").await;
    let initial = 10_000;
    bulk_insert(pool, &t, &rows(0..initial)).await;
    let (p, table) = (pool.clone(), t.clone());
    keyset_under_inserts(pool, &t, initial, move |stop| async move {
        let writers: Vec<_> = (0..3)
            .map(|w| {
                let (p, table, stop) = (p.clone(), table.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !*stop.borrow() {
                        let id = 1_000_000 + w * 1_000_000 + n as i64;
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "INSERT INTO {table} (id, name, grp) VALUES (?, ?, 0)"
                        )))
                        .bind(id)
                        .bind(format!("n{:04}", rand::random::<u32>() % 5000))
                        .execute(&p)
                        .await
                        .unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for w in writers {
            total += w.await.unwrap();
        }
        total
    })
    .await;
    db.close().await;
}

#[tokio::test]
async fn chunking_at_the_parameter_limit() {
    let db = TempDb::new(2).await;
    // 32,766 = 6 x 5,461: 5,461 rows of 6 columns is exactly the limit.
    chunk_boundary(&db.pool, 6).await;
    db.close().await;
}

#[tokio::test]
async fn bulk_in_a_transaction_is_all_or_nothing_and_upsert_update_delete() {
    let db = TempDb::new(2).await;
    let pool = &db.pool;
    let t = create_items(pool, "bulk").await;
    let bulk = Bulk::new(&t, &["id", "name", "grp"])
        .unwrap()
        .max_params(300)
        .unwrap();
    let bind = |mut b: sqlx::query_builder::Separated<'_, Sqlite, &'static str>, r: &Item| {
        b.push_bind(r.id).push_bind(r.name.clone()).push_bind(r.grp);
    };
    let mut items = rows(0..1000);
    items.push(items[0].clone());
    let mut tx = pool.begin().await.unwrap();
    assert!(bulk.insert(&mut tx, &items, bind).await.is_err());
    tx.rollback().await.unwrap();
    let agg = Aggregate::new(&t).unwrap();
    assert_eq!(
        agg.count(pool).await.unwrap(),
        0,
        "nothing of the 10 chunks stayed"
    );

    items.pop();
    let mut tx = pool.begin().await.unwrap();
    let done = bulk.insert(&mut tx, &items, bind).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!((done.affected, done.statements), (1000, 10));

    let up: Vec<Item> = rows(900..1100)
        .into_iter()
        .map(|mut i| {
            i.grp = 42;
            i
        })
        .collect();
    let done = bulk.upsert(pool, &up, &["id"], bind).await.unwrap();
    assert_eq!(done.affected, 200);
    assert_eq!(
        agg.clone()
            .filter_eq("grp", 42)
            .unwrap()
            .count(pool)
            .await
            .unwrap(),
        200
    );

    let changes: Vec<Item> = (0..150)
        .map(|i| Item {
            id: i,
            name: format!("u{i}"),
            grp: 77,
        })
        .collect();
    let done = bulk.update(pool, &changes, bind).await.unwrap();
    assert_eq!(done.affected, 150);
    assert_eq!(
        agg.clone()
            .filter_eq("grp", 77)
            .unwrap()
            .count(pool)
            .await
            .unwrap(),
        150
    );

    let keys: Vec<i64> = (0..500).collect();
    assert_eq!(bulk.delete(pool, &keys).await.unwrap().affected, 500);
    assert_eq!(agg.count(pool).await.unwrap(), 600);
    db.close().await;
}

#[tokio::test]
async fn keyset_on_a_pool_connection_and_search() {
    let db = TempDb::new(2).await;
    let pool = &db.pool;
    let t = create_items(pool, "search").await;
    let names = ["Blue Widget", "blue widgets", "Red 50% off", "Green_thing"];
    let items: Vec<Item> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Item {
            id: i as i64,
            name: (*n).to_owned(),
            grp: 0,
        })
        .collect();
    bulk_insert(pool, &t, &items).await;
    let mut conn = pool.acquire().await.unwrap();
    let page = pager(&t, &CursorKey::random())
        .keyset::<Item, _>(
            &mut conn,
            &CursorRequest {
                limit: 3,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 3);
    assert!(page.next_cursor.is_some());
    drop(conn);

    let search = Search::new(&t, &["name"], "id").unwrap();
    let ids = |v: Vec<Item>| v.into_iter().map(|i| i.id).collect::<Vec<_>>();
    assert_eq!(ids(search.run(pool, "BLUE wid", 10).await.unwrap()), [0, 1]);
    assert_eq!(ids(search.run(pool, "50%", 10).await.unwrap()), [2]);
    assert_eq!(ids(search.run(pool, "n_t", 10).await.unwrap()), [3]);
    // Full-text is PostgreSQL's: elsewhere it falls back to a substring match.
    let fts = search.mode(tower_strata::db::SearchMode::FullText("english".into()));
    assert_eq!(ids(fts.run(pool, "blue", 10).await.unwrap()), [0, 1]);
    db.close().await;
}

#[tokio::test]
async fn pool_builder_sets_the_statement_cache() {
    for (capacity, cached) in [(0, 0), (10, 1)] {
        let options = SqliteConnectOptions::new().in_memory(true);
        let pool = PoolBuilder::new(PoolPreset::Test)
            .max_connections(1)
            .statement_cache(capacity)
            .connect_with::<Sqlite>(options)
            .await
            .unwrap();
        sqlx::query("SELECT 1").execute(&pool).await.unwrap();
        let conn = pool.acquire().await.unwrap();
        assert_eq!(
            sqlx::Connection::cached_statements_size(&*conn),
            cached,
            "capacity {capacity}"
        );
        drop(conn);
        pool.close().await;
    }
}

/// The extractor, the pager and the error response in an axum `Router`.
#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_route_pages_and_refuses_bad_input() {
    use axum::extract::State;
    use axum::routing::get;
    use axum::{Json, Router};
    use http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use tower_strata::db::{DbError, KeysetPage, Pager};

    let db = TempDb::new(2).await;
    let t = create_items(&db.pool, "axum").await;
    bulk_insert(&db.pool, &t, &rows(0..25)).await;
    let pager = Pager::new(&t, sorts(), CursorKey::random()).unwrap();

    async fn list(
        State((pool, pager)): State<(SqlitePool, Pager)>,
        req: CursorRequest,
    ) -> Result<Json<KeysetPage<(i64, String)>>, DbError> {
        let page = pager.keyset::<Item, _>(&pool, &req).await?;
        Ok(Json(KeysetPage {
            items: page.items.into_iter().map(|i| (i.id, i.name)).collect(),
            next_cursor: page.next_cursor,
            prev_cursor: page.prev_cursor,
        }))
    }
    let app = Router::new()
        .route("/items", get(list))
        .with_state((db.pool.clone(), pager));
    let call = |uri: String| {
        let app = app.clone();
        async move {
            let res = app
                .oneshot(Request::get(uri).body(axum::body::Body::empty()).unwrap())
                .await
                .unwrap();
            let status = res.status();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (status, body) = call("/items?limit=10&sort=-id".into()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let page: KeysetPage<(i64, String)> = serde_json::from_str(&body).unwrap();
    assert_eq!(page.items.first().map(|i| i.0), Some(24));
    let next = page.next_cursor.unwrap();
    let (status, body) = call(format!("/items?limit=10&sort=-id&cursor={next}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let page: KeysetPage<(i64, String)> = serde_json::from_str(&body).unwrap();
    assert_eq!(page.items.first().map(|i| i.0), Some(14));

    let swap = if next.ends_with('A') { 'B' } else { 'A' };
    let forged = format!("{}{swap}", &next[..next.len() - 1]);
    for (uri, needle) in [
        (format!("/items?sort=-id&cursor={forged}"), "invalid cursor"),
        (
            format!("/items?sort=id&cursor={next}"),
            "another table or sort",
        ),
        ("/items?sort=grp".into(), "unknown sort"),
        ("/items?sort=name%3B%20DROP%20TABLE%20x".into(), "`sort`"),
        ("/items?limit=1000".into(), "`limit`"),
    ] {
        let (status, body) = call(uri.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert!(body.contains(needle), "{uri}: {body}");
    }
    db.close().await;
}
