//! `db` helpers against a real MariaDB/MySQL (`MYSQL_URL`).
#![cfg(feature = "mysql")]

#[path = "../support/db.rs"]
mod support;

use std::time::Duration;

use sqlx::mysql::MySqlPoolOptions;
use sqlx::{MySql, MySqlPool};
use support::*;
use tower_strata::db::{Aggregate, Bulk, CursorKey, Search};

async fn pool() -> MySqlPool {
    MySqlPoolOptions::new()
        .max_connections(6)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&mysql_url())
        .await
        .expect("MariaDB at MYSQL_URL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pagination_over_100k_rows() {
    let pool = pool().await;
    let t = create_items(&pool, "page").await;
    let statements = bulk_insert(&pool, &t, &rows(0..ROWS)).await;
    assert_eq!(
        statements, 5,
        "100,000 rows x 3 params in chunks of 21,845 rows"
    );
    let key = CursorKey::random();
    keyset_walks(&pool, &t, &key, "name", "name, id").await;
    keyset_walks(&pool, &t, &key, "-name", "name DESC, id DESC").await;
    offset_pages(&pool, &t, ROWS as u64).await;
    forged_cursors(&pool, &t).await;
    sort_injection(&pool, &t).await;
    drop_table(&pool, &t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyset_under_concurrent_inserts() {
    let pool = pool().await;
    let t = create_items(&pool, "conc").await;
    let initial = 10_000;
    bulk_insert(&pool, &t, &rows(0..initial)).await;
    let (p, table) = (pool.clone(), t.clone());
    keyset_under_inserts(&pool, &t, initial, move |stop| async move {
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
    drop_table(&pool, &t).await;
}

#[tokio::test]
async fn chunking_at_the_parameter_limit() {
    let pool = pool().await;
    // 65,535 = 5 x 13,107.
    chunk_boundary(&pool, 5).await;
}

#[tokio::test]
async fn bulk_in_a_transaction_is_all_or_nothing_and_upsert_update_delete() {
    let pool = pool().await;
    let t = create_items(&pool, "bulk").await;
    let bulk = Bulk::new(&t, &["id", "name", "grp"])
        .unwrap()
        .max_params(300)
        .unwrap();
    let bind = |mut b: sqlx::query_builder::Separated<'_, MySql, &'static str>, r: &Item| {
        b.push_bind(r.id).push_bind(r.name.clone()).push_bind(r.grp);
    };
    let mut items = rows(0..1000);
    items.push(items[0].clone());
    let mut tx = pool.begin().await.unwrap();
    assert!(bulk.insert(&mut tx, &items, bind).await.is_err());
    tx.rollback().await.unwrap();
    let agg = Aggregate::new(&t).unwrap();
    assert_eq!(
        agg.count(&pool).await.unwrap(),
        0,
        "nothing of the 10 chunks stayed"
    );

    items.pop();
    let mut tx = pool.begin().await.unwrap();
    let done = bulk.insert(&mut tx, &items, bind).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!((done.affected, done.statements), (1000, 10));

    // 100 updated (counted twice by MySQL/MariaDB) + 100 inserted.
    let up: Vec<Item> = rows(900..1100)
        .into_iter()
        .map(|mut i| {
            i.grp = 42;
            i
        })
        .collect();
    let done = bulk.upsert(&pool, &up, &["id"], bind).await.unwrap();
    assert_eq!(done.affected, 300);
    assert_eq!(
        agg.clone()
            .filter_eq("grp", 42)
            .unwrap()
            .count(&pool)
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
    let done = bulk.update(&pool, &changes, bind).await.unwrap();
    assert_eq!(done.affected, 150);
    assert_eq!(
        agg.clone()
            .filter_eq("grp", 77)
            .unwrap()
            .count(&pool)
            .await
            .unwrap(),
        150
    );
    assert_eq!(
        agg.clone()
            .filter_eq("name", "u149")
            .unwrap()
            .count(&pool)
            .await
            .unwrap(),
        1
    );

    let keys: Vec<i64> = (0..500).collect();
    assert_eq!(bulk.delete(&pool, &keys).await.unwrap().affected, 500);
    assert_eq!(agg.count(&pool).await.unwrap(), 600);
    let groups = agg
        .group_by::<i64, _>(&pool, "grp", Some("id"))
        .await
        .unwrap();
    assert_eq!(groups.iter().map(|g| g.count).sum::<i64>(), 600);
    assert_eq!(
        agg.sum(&pool, "id").await.unwrap(),
        Some((500..1100).sum::<i64>())
    );
    drop_table(&pool, &t).await;
}

#[tokio::test]
async fn search_is_bounded_and_escaped() {
    let pool = pool().await;
    let t = create_items(&pool, "search").await;
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
    bulk_insert(&pool, &t, &items).await;
    let search = Search::new(&t, &["name"], "id").unwrap();
    let ids = |v: Vec<Item>| v.into_iter().map(|i| i.id).collect::<Vec<_>>();
    assert_eq!(
        ids(search.run(&pool, "BLUE wid", 10).await.unwrap()),
        [0, 1]
    );
    assert_eq!(ids(search.run(&pool, "50%", 10).await.unwrap()), [2]);
    assert_eq!(ids(search.run(&pool, "n_t", 10).await.unwrap()), [3]);
    assert_eq!(ids(search.run(&pool, "wid", 1).await.unwrap()), [0]);
    drop_table(&pool, &t).await;
}
