//! Keyset versus offset pagination by page depth, and bulk insert versus a loop of single
//! inserts, on PostgreSQL (`DATABASE_URL`), SQLite (a temporary file) and MariaDB
//! (`MYSQL_URL`).
//!
//! `cargo bench --all-features --bench db -- --warm-up-time 1 --measurement-time 3`
//!
//! The naive loop inserts 2,000 rows (100,000 would take minutes); criterion reports
//! throughput in rows per second, so the ratio is rows/s of the bulk call over rows/s of
//! the loop.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sqlx::{AssertSqlSafe, Executor, Pool};
use tokio::runtime::Runtime;
use tower_strata::db::{
    Bulk, CursorKey, CursorRequest, Dialect, KeyKind, PageRequest, Pager, PgUnnest, QueryTarget,
    Sorts, TotalCount,
};

const ROWS: i64 = 100_000;
const PAGE: u32 = 50;
const DEPTHS: [u64; 3] = [1, 100, 1_000];
const NAIVE_ROWS: i64 = 2_000;

#[derive(sqlx::FromRow)]
#[allow(dead_code)]
struct Item {
    id: i64,
    name: String,
    grp: i64,
}

fn rows(n: i64) -> Vec<(i64, String, i64)> {
    (0..n)
        .map(|i| (i, format!("n{:04}", (i * 7919) % 5000), i % 10))
        .collect()
}

async fn exec<DB: Dialect>(pool: &Pool<DB>, sql: String)
where
    for<'a> &'a Pool<DB>: Executor<'a, Database = DB>,
{
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(pool)
        .await
        .unwrap();
}

async fn create<DB: Dialect>(pool: &Pool<DB>, name: &str) -> String
where
    for<'a> &'a Pool<DB>: Executor<'a, Database = DB>,
{
    let t = format!("bench_{name}_{:08x}", rand::random::<u32>());
    exec(
        pool,
        format!("CREATE TABLE {t} (id BIGINT NOT NULL PRIMARY KEY, name VARCHAR(32) NOT NULL, grp BIGINT NOT NULL)"),
    )
    .await;
    exec(pool, format!("CREATE INDEX {t}_name ON {t} (name, id)")).await;
    t
}

fn bulk(t: &str) -> Bulk {
    Bulk::new(t, &["id", "name", "grp"]).unwrap()
}

async fn bulk_insert<DB: Dialect>(pool: &Pool<DB>, t: &str, rows: &[(i64, String, i64)])
where
    for<'a> &'a Pool<DB>: QueryTarget<Database = DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    bulk(t)
        .insert(pool, rows, |mut b, r| {
            b.push_bind(r.0).push_bind(r.1.clone()).push_bind(r.2);
        })
        .await
        .unwrap();
}

fn pager(t: &str, key: &CursorKey) -> Pager {
    let sorts = Sorts::new("name", &[("name", KeyKind::Text), ("id", KeyKind::Int)]).unwrap();
    Pager::new(t, sorts, key.clone()).unwrap()
}

/// Cursors for the start of pages 1, 100 and 1,000 (walked once).
async fn cursors<Q: QueryTarget + Copy>(pool: Q, pager: &Pager) -> Vec<Option<String>>
where
    Item: for<'r> sqlx::FromRow<'r, <Q::Database as sqlx::Database>::Row>,
{
    let mut out = vec![None];
    let mut cursor = None;
    for page in 1..*DEPTHS.last().unwrap() {
        let req = CursorRequest {
            cursor,
            limit: PAGE,
            sort: None,
        };
        cursor = pager
            .keyset::<Item, _>(pool, &req)
            .await
            .unwrap()
            .next_cursor;
        if DEPTHS.contains(&(page + 1)) {
            out.push(cursor.clone());
        }
    }
    out
}

fn pagination<DB: Dialect>(c: &mut Criterion, rt: &Runtime, label: &str, pool: &Pool<DB>, t: &str)
where
    for<'a> &'a Pool<DB>: QueryTarget<Database = DB> + Executor<'a, Database = DB>,
    Item: for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let key = CursorKey::random();
    let pager = pager(t, &key);
    let cursors = rt.block_on(cursors(pool, &pager));
    let mut group = c.benchmark_group(format!("{label}/page_depth"));
    for (depth, cursor) in DEPTHS.iter().zip(cursors) {
        group.bench_with_input(BenchmarkId::new("keyset", depth), &cursor, |b, cursor| {
            b.to_async(rt).iter(|| async {
                let req = CursorRequest {
                    cursor: cursor.clone(),
                    limit: PAGE,
                    sort: None,
                };
                let page = pager.keyset::<Item, _>(pool, &req).await.unwrap();
                assert_eq!(page.items.len(), PAGE as usize);
            });
        });
        for (name, pager) in [
            ("offset_window_count", pager.clone()),
            (
                "offset_separate_count",
                pager.clone().total_count(TotalCount::Separate),
            ),
        ] {
            group.bench_with_input(BenchmarkId::new(name, depth), depth, |b, &depth| {
                b.to_async(rt).iter(|| async {
                    let req = PageRequest {
                        page: depth,
                        page_size: PAGE,
                        sort: None,
                    };
                    let page = pager.offset::<Item, _>(pool, &req).await.unwrap();
                    assert_eq!(page.items.len(), PAGE as usize);
                });
            });
        }
    }
    group.finish();
}

fn insert_benches<DB: Dialect>(
    c: &mut Criterion,
    rt: &Runtime,
    label: &str,
    pool: &Pool<DB>,
    unnest: Option<&sqlx::PgPool>,
) where
    for<'a> &'a Pool<DB>: QueryTarget<Database = DB> + Executor<'a, Database = DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let data = rows(ROWS);
    let t = rt.block_on(create(pool, "insert"));
    let mut group = c.benchmark_group(format!("{label}/insert"));
    group.sample_size(10);
    // Times only the insert; the table is emptied between runs, untimed.
    let timed = |b: &mut criterion::Bencher<'_>, n: i64, how: u8| {
        b.to_async(rt).iter_custom(|iters| {
            let (t, data) = (t.clone(), &data);
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    exec(pool, format!("DELETE FROM {t}")).await;
                    let rows = &data[..n as usize];
                    let start = Instant::now();
                    match how {
                        0 => bulk_insert(pool, &t, rows).await,
                        1 => {
                            let pg = unnest.expect("PostgreSQL pool");
                            PgUnnest::new(&t)
                                .unwrap()
                                .column("id", "int8", rows.iter().map(|r| r.0).collect())
                                .unwrap()
                                .column("name", "text", rows.iter().map(|r| r.1.clone()).collect())
                                .unwrap()
                                .column("grp", "int8", rows.iter().map(|r| r.2).collect())
                                .unwrap()
                                .insert(pg)
                                .await
                                .unwrap();
                        }
                        _ => {
                            let sql = format!("INSERT INTO {t} (id, name, grp) VALUES ");
                            for r in rows {
                                let mut qb = sqlx::QueryBuilder::<DB>::new(sql.clone());
                                qb.push("(")
                                    .push_bind(r.0)
                                    .push(", ")
                                    .push_bind(r.1.clone());
                                qb.push(", ").push_bind(r.2).push(")");
                                qb.build().execute(pool).await.unwrap();
                            }
                        }
                    }
                    total += start.elapsed();
                }
                total
            }
        });
    };
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function(BenchmarkId::new("bulk_values", ROWS), |b| timed(b, ROWS, 0));
    if unnest.is_some() {
        group.bench_function(BenchmarkId::new("unnest", ROWS), |b| timed(b, ROWS, 1));
    }
    group.throughput(Throughput::Elements(NAIVE_ROWS as u64));
    group.bench_function(BenchmarkId::new("naive_loop", NAIVE_ROWS), |b| {
        timed(b, NAIVE_ROWS, 2)
    });
    group.finish();
    rt.block_on(exec(pool, format!("DROP TABLE {t}")));
}

fn postgres(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = rt
        .block_on(sqlx::PgPool::connect(&url))
        .expect("PostgreSQL");
    let t = rt.block_on(create(&pool, "page"));
    rt.block_on(bulk_insert(&pool, &t, &rows(ROWS)));
    rt.block_on(exec(&pool, format!("ANALYZE {t}")));
    pagination(c, &rt, "postgres", &pool, &t);
    rt.block_on(exec(&pool, format!("DROP TABLE {t}")));
    insert_benches(c, &rt, "postgres", &pool, Some(&pool));
}

fn sqlite(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let path = std::env::temp_dir().join(format!(
        "strata_bench_{:016x}.sqlite",
        rand::random::<u64>()
    ));
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
    let pool = rt
        .block_on(sqlx::SqlitePool::connect_with(options))
        .unwrap();
    let t = rt.block_on(create(&pool, "page"));
    rt.block_on(bulk_insert(&pool, &t, &rows(ROWS)));
    rt.block_on(exec(&pool, format!("ANALYZE {t}")));
    pagination(c, &rt, "sqlite", &pool, &t);
    insert_benches(c, &rt, "sqlite", &pool, None);
    rt.block_on(pool.close());
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

fn mariadb(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let url =
        std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let pool = rt
        .block_on(sqlx::MySqlPool::connect(&url))
        .expect("MariaDB");
    let t = rt.block_on(create(&pool, "page"));
    rt.block_on(bulk_insert(&pool, &t, &rows(ROWS)));
    rt.block_on(exec(&pool, format!("ANALYZE TABLE {t}")));
    pagination(c, &rt, "mariadb", &pool, &t);
    rt.block_on(exec(&pool, format!("DROP TABLE {t}")));
    insert_benches(c, &rt, "mariadb", &pool, None);
}

criterion_group!(benches, postgres, sqlite, mariadb);
criterion_main!(benches);
