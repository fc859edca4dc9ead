//! `db` helpers against a real PostgreSQL (`DATABASE_URL`).
#![cfg(feature = "postgres")]

#[allow(dead_code)] // the shop's load run uses the rest
#[path = "../support/pg_proxy.rs"]
mod pg_proxy;
#[path = "../support/db.rs"]
mod support;
#[path = "../support/tx.rs"]
mod tx_support;

use std::time::Duration;

use http::StatusCode;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};
use support::*;
use tower_strata::db::{
    Aggregate, Bulk, CursorKey, CursorRequest, DbErrorKind, Group, PgUnnest, PoolBuilder,
    PoolPreset, PoolStats, Search, SearchMode,
};
use tower_strata::tx::{TxConfig, TxHandle, TxLayer};

async fn pool() -> PgPool {
    PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&pg_url())
        .await
        .expect("PostgreSQL at DATABASE_URL")
}

/// 100,000 rows by one `Bulk::insert` call, then keyset walks forward and backward over
/// two sort orders, offset pages, forged cursors and injection attempts on that table.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pagination_over_100k_rows() {
    let pool = pool().await;
    let t = create_items(&pool, "page").await;
    let statements = bulk_insert(&pool, &t, &rows(0..ROWS)).await;
    assert_eq!(
        statements, 5,
        "100,000 rows x 3 params in chunks of 21,845 rows"
    );
    exec(&pool, format!("ANALYZE {t}")).await;

    let key = CursorKey::random();
    keyset_walks(&pool, &t, &key, "name", "name, id").await;
    keyset_walks(&pool, &t, &key, "-name", "name DESC, id DESC").await;
    keyset_walks(&pool, &t, &key, "id", "id").await;
    offset_pages(&pool, &t, ROWS as u64).await;
    forged_cursors(&pool, &t).await;
    sort_injection(&pool, &t).await;
    drop_table(&pool, &t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyset_under_concurrent_inserts() {
    let pool = pool().await;
    let t = create_items(&pool, "conc").await;
    let initial = 20_000;
    bulk_insert(&pool, &t, &rows(0..initial)).await;
    let (p, table) = (pool.clone(), t.clone());
    keyset_under_inserts(&pool, &t, initial, move |stop| async move {
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (p, table, stop) = (p.clone(), table.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !*stop.borrow() {
                        let id = 1_000_000 + w * 1_000_000 + n as i64;
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "INSERT INTO {table} (id, name, grp) VALUES ($1, $2, 0)"
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
    drop_table(&pool, &t).await;
}

#[tokio::test]
async fn chunking_at_the_parameter_limit() {
    let pool = pool().await;
    // 65,535 = 5 x 13,107: 13,107 rows of 5 columns is exactly the limit.
    chunk_boundary(&pool, 5).await;
}

#[tokio::test]
async fn unnest_inserts_100k_rows_in_one_statement() {
    let pool = pool().await;
    let t = create_items(&pool, "unnest").await;
    let items = rows(0..ROWS);
    let n = PgUnnest::new(&t)
        .unwrap()
        .column("id", "int8", items.iter().map(|i| i.id).collect())
        .unwrap()
        .column(
            "name",
            "text",
            items.iter().map(|i| i.name.clone()).collect(),
        )
        .unwrap()
        .column("grp", "int8", items.iter().map(|i| i.grp).collect())
        .unwrap()
        .insert(&pool)
        .await
        .unwrap();
    assert_eq!(n, ROWS as u64);
    assert_eq!(
        Aggregate::new(&t).unwrap().count(&pool).await.unwrap(),
        ROWS
    );
    // Mismatched lengths and odd type names are refused before SQL.
    let err = PgUnnest::new(&t)
        .unwrap()
        .column("id", "int8", vec![1_i64, 2])
        .unwrap()
        .column("name", "text", vec!["a".to_owned()])
        .unwrap_err();
    assert_eq!(err.kind(), DbErrorKind::InvalidConfig);
    assert!(
        PgUnnest::new(&t)
            .unwrap()
            .column("id", "int8[]); DROP TABLE x; --", vec![1_i64])
            .is_err()
    );
    drop_table(&pool, &t).await;
}

#[tokio::test]
async fn upsert_update_delete() {
    let pool = pool().await;
    let t = create_items(&pool, "upd").await;
    bulk_insert(&pool, &t, &rows(0..1000)).await;
    let bulk = Bulk::new(&t, &["id", "name", "grp"])
        .unwrap()
        .max_params(300)
        .unwrap();

    // Upsert 500 existing + 500 new rows, in chunks of 100.
    let upserted = rows(500..1500)
        .into_iter()
        .map(|mut i| {
            i.grp = 42;
            i
        })
        .collect::<Vec<_>>();
    let done = bulk
        .upsert(&pool, &upserted, &["id"], |mut b, r| {
            b.push_bind(r.id).push_bind(r.name.clone()).push_bind(r.grp);
        })
        .await
        .unwrap();
    assert_eq!((done.affected, done.statements), (1000, 10));
    let agg = Aggregate::new(&t).unwrap();
    assert_eq!(agg.count(&pool).await.unwrap(), 1500);
    assert_eq!(
        agg.clone()
            .filter_eq("grp", 42_i64)
            .unwrap()
            .count(&pool)
            .await
            .unwrap(),
        1000
    );

    // Update 0..300 (and a missing key): grp = 77, name changed.
    let mut changes: Vec<(i64, String, i64)> = (0..300).map(|i| (i, format!("u{i}"), 77)).collect();
    changes.push((9_999_999, "missing".into(), 77));
    let done = bulk
        .update(&pool, &changes, |mut b, (id, name, grp)| {
            b.push_bind(*id).push_bind(name.clone()).push_bind(*grp);
        })
        .await
        .unwrap();
    assert_eq!(done.affected, 300, "matched rows only: {done:?}");
    assert_eq!(
        agg.clone()
            .filter_eq("grp", 77_i64)
            .unwrap()
            .count(&pool)
            .await
            .unwrap(),
        300
    );
    assert_eq!(
        agg.clone()
            .filter_eq("name", "u299")
            .unwrap()
            .count(&pool)
            .await
            .unwrap(),
        1
    );

    // Delete 0..1000 in chunks of 300 keys.
    let keys: Vec<i64> = (0..1000).collect();
    let done = bulk.delete(&pool, &keys).await.unwrap();
    assert_eq!((done.affected, done.statements), (1000, 4));
    assert_eq!(agg.count(&pool).await.unwrap(), 500);
    drop_table(&pool, &t).await;
}

/// Inside the transaction layer: a keyset page and a chunked bulk insert on the request's
/// own connection; a failing last chunk rolls every chunk back.
#[tokio::test]
async fn inside_a_tx_layer_request() {
    let pool = pool().await;
    let t = create_items(&pool, "txl").await;
    bulk_insert(&pool, &t, &rows(0..100)).await;
    let copy = create_items(&pool, "txcopy").await;
    let layer = TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap();
    let key = CursorKey::random();
    let (t2, copy2) = (t.clone(), copy.clone());
    let svc = tx_support::app(layer, move |tx: TxHandle<Postgres>, body: String| {
        let (t, copy, key) = (t2.clone(), copy2.clone(), key.clone());
        async move {
            let mut conn = tx.conn().await.unwrap();
            let page = pager(&t, &key)
                .keyset::<Item, _>(
                    &mut conn,
                    &CursorRequest {
                        limit: 60,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            assert_eq!(page.items.len(), 60);
            let mut items = page.items;
            if body == "fail" {
                // The last chunk repeats a key: the statement fails after 5 chunks went in.
                items.push(items[0].clone());
            }
            let bulk = Bulk::new(&copy, &["id", "name", "grp"])
                .unwrap()
                .max_params(30)
                .unwrap();
            let result = bulk
                .insert(&mut conn, &items, |mut b, r| {
                    b.push_bind(r.id).push_bind(r.name.clone()).push_bind(r.grp);
                })
                .await;
            match result {
                Ok(done) => {
                    assert_eq!(done.statements, 6);
                    tx_support::status(200)
                }
                Err(err) => {
                    assert_eq!(err.kind(), DbErrorKind::Database);
                    tx_support::status(500)
                }
            }
        }
    });
    let count = || async { Aggregate::new(&copy).unwrap().count(&pool).await.unwrap() };
    let r = tx_support::send(&svc, "fail").await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        count().await,
        0,
        "all-or-nothing: the chunks before the failure rolled back"
    );
    let r = tx_support::send(&svc, "ok").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(count().await, 60);
    drop_table(&pool, &t).await;
    drop_table(&pool, &copy).await;
}

#[tokio::test]
async fn search_and_aggregates() {
    let pool = pool().await;
    let t = create_items(&pool, "search").await;
    let names = [
        "Blue Widget",
        "blue widgets",
        "Red 50% off",
        "Green_thing",
        "red widget",
    ];
    let items: Vec<Item> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Item {
            id: i as i64,
            name: (*n).to_owned(),
            grp: (i % 2) as i64,
        })
        .collect();
    bulk_insert(&pool, &t, &items).await;
    let ids = |v: Vec<Item>| v.into_iter().map(|i| i.id).collect::<Vec<_>>();

    let search = Search::new(&t, &["name"], "id").unwrap().max_limit(10);
    assert_eq!(
        ids(search.run(&pool, "BLUE wid", 10).await.unwrap()),
        [0, 1]
    );
    assert_eq!(
        ids(search.run(&pool, "50%", 10).await.unwrap()),
        [2],
        "% is literal"
    );
    assert_eq!(
        ids(search.run(&pool, "n_t", 10).await.unwrap()),
        [3],
        "_ is literal"
    );
    assert_eq!(
        ids(search.run(&pool, "widget", 2).await.unwrap()),
        [0, 1],
        "limit"
    );
    assert!(
        search
            .run::<Item, _>(&pool, "x'; DROP TABLE t; --", 10)
            .await
            .unwrap()
            .is_empty()
    );
    for (term, limit) in [("widget", 11), ("widget", 0), ("  ", 5)] {
        let err = search.run::<Item, _>(&pool, term, limit).await.unwrap_err();
        assert_eq!(err.kind(), DbErrorKind::InvalidPage);
    }
    let fts = search.clone().mode(SearchMode::FullText("english".into()));
    assert_eq!(
        ids(fts.run(&pool, "widgets", 10).await.unwrap()),
        [0, 1, 4],
        "stemmed"
    );

    let agg = Aggregate::new(&t).unwrap();
    assert_eq!(agg.count(&pool).await.unwrap(), 5);
    assert_eq!(agg.sum(&pool, "id").await.unwrap(), Some(10));
    assert_eq!(
        agg.clone()
            .filter_eq("grp", 5_i64)
            .unwrap()
            .sum(&pool, "id")
            .await
            .unwrap(),
        None
    );
    let groups = agg
        .group_by::<i64, _>(&pool, "grp", Some("id"))
        .await
        .unwrap();
    assert_eq!(
        groups,
        [
            Group {
                key: 0,
                count: 3,
                sum: Some(6)
            },
            Group {
                key: 1,
                count: 2,
                sum: Some(4)
            }
        ]
    );
    drop_table(&pool, &t).await;
}

/// What a checkout costs each preset, counted at a proxy that tells the round trips apart:
/// `Web` pings only a connection idle for a minute or more, `Worker` pings each one, `Test`
/// none. Whatever the preset, sqlx 0.9 pings each connection once more as it goes back to the
/// pool (off the caller's path, but the connection is busy for that round trip).
#[tokio::test]
async fn each_preset_pays_its_documented_round_trips_per_checkout() {
    let web = || PoolBuilder::new(PoolPreset::Web);
    let cases = [
        ("web", web(), 0),
        ("worker", PoolBuilder::new(PoolPreset::Worker), 1),
        ("test", PoolBuilder::new(PoolPreset::Test), 0),
        (
            "web, idle past the threshold",
            web().test_after_idle(Some(Duration::ZERO)),
            1,
        ),
        ("web, ping each", web().test_before_acquire(true), 1),
    ];
    for (name, builder, checkout_pings) in cases {
        let (proxy, options) = pg_proxy::PgProxy::in_front_of(&pg_url(), Duration::ZERO)
            .await
            .unwrap();
        let pool: PgPool = builder
            .max_connections(1)
            .min_idle(0)
            .connect_with::<Postgres>(options)
            .await
            .unwrap();
        for _ in 0..3 {
            let before = proxy.exchanges();
            // An unprepared statement: one simple query.
            sqlx::raw_sql("SELECT 1").execute(&pool).await.unwrap();
            // The connection is back in the pool once its release ping is answered.
            let back = tokio::time::timeout(Duration::from_secs(5), async {
                while pool.num_idle() < pool.size() as usize {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
            .await;
            assert!(back.is_ok(), "{name}: the connection never went back");
            let cost = proxy.exchanges() - before;
            let expected = pg_proxy::Exchanges {
                simple_queries: 1,
                pings: checkout_pings + 1,
                ..Default::default()
            };
            assert_eq!(cost, expected, "{name}");
        }
        pool.close().await;
    }
}

#[tokio::test]
async fn pool_builder_and_stats() {
    let err = PoolBuilder::new(PoolPreset::Web)
        .max_connections(0)
        .connect::<Postgres>(&pg_url())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), DbErrorKind::InvalidConfig);

    let pool: PgPool = PoolBuilder::new(PoolPreset::Test)
        .max_connections(4)
        .statement_cache(10)
        .connect(&pg_url())
        .await
        .unwrap();
    let a = pool.acquire().await.unwrap();
    let b = pool.acquire().await.unwrap();
    let stats = PoolStats::of(&pool);
    assert_eq!((stats.in_use, stats.max_connections), (2, 4));
    assert!(stats.size >= 2 && stats.idle == stats.size - 2);
    assert!((stats.utilisation - 0.5).abs() < 1e-9);
    drop((a, b));
    // Connections go back to the pool from a spawned task: wait for it (bounded).
    tokio::time::timeout(Duration::from_secs(5), async {
        while PoolStats::of(&pool).in_use != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("connections returned");
    let json = serde_json::to_value(PoolStats::of(&pool)).unwrap();
    assert_eq!(json["in_use"], 0);
    pool.close().await;
    assert!(PoolStats::of(&pool).closed);
}

/// A bulk insert inside a savepoint of the request's transaction: the savepoint rolls back
/// alone and the outer transaction's work commits.
#[tokio::test]
async fn bulk_inside_a_savepoint() {
    let pool = pool().await;
    let t = create_items(&pool, "sp").await;
    let layer = TxLayer::try_new(pool.clone(), TxConfig::default()).unwrap();
    let t2 = t.clone();
    let svc = tx_support::app(layer, move |tx: TxHandle<Postgres>, _body: String| {
        let t = t2.clone();
        async move {
            let bulk = Bulk::new(&t, &["id", "name", "grp"])
                .unwrap()
                .max_params(30)
                .unwrap();
            let bind = |mut b: sqlx::query_builder::Separated<'_, Postgres, &'static str>,
                        r: &Item| {
                b.push_bind(r.id).push_bind(r.name.clone()).push_bind(r.grp);
            };
            let mut conn = tx.conn().await.unwrap();
            bulk.insert(&mut conn, &rows(0..50), bind).await.unwrap();
            let mut sp = conn.savepoint().await.unwrap();
            let mut clash = rows(100..150);
            clash.push(Item {
                id: 0,
                name: "dup".into(),
                grp: 0,
            });
            assert!(bulk.insert(&mut sp, &clash, bind).await.is_err());
            sp.rollback().await.unwrap();
            let n = Aggregate::new(&t).unwrap().count(&mut conn).await.unwrap();
            assert_eq!(
                n, 50,
                "the savepoint's chunks rolled back, the outer rows stay"
            );
            tx_support::status(200)
        }
    });
    assert_eq!(tx_support::send(&svc, "").await.status(), StatusCode::OK);
    assert_eq!(Aggregate::new(&t).unwrap().count(&pool).await.unwrap(), 50);
    drop_table(&pool, &t).await;
}
