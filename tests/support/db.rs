//! Shared scenarios for the `db` suites, generic over the database.
#![allow(dead_code)] // each suite uses a subset

use std::collections::HashSet;
use std::future::Future;

use sqlx::{AssertSqlSafe, Executor, FromRow, Pool};
use tower_strata::db::{
    Bulk, CursorKey, CursorRequest, DbErrorKind, Dialect, KeyKind, PageRequest, Pager, QueryTarget,
    Sorts, TotalCount,
};

pub const ROWS: i64 = 100_000;

/// A table name unique to this test run.
pub fn table(name: &str) -> String {
    format!("db_{name}_{:08x}", rand::random::<u32>())
}

pub fn pg_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn mysql_url() -> String {
    std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct Item {
    pub id: i64,
    pub name: String,
    pub grp: i64,
}

/// Name of row `i`: 5,000 distinct names, 20 rows each, so the tie-breaker matters.
pub fn name_of(i: i64) -> String {
    format!("n{:04}", (i * 7919) % 5000)
}

pub async fn exec<DB: Dialect>(pool: &Pool<DB>, sql: impl Into<String>)
where
    for<'a> &'a Pool<DB>: Executor<'a, Database = DB>,
{
    let sql = sql.into();
    sqlx::raw_sql(AssertSqlSafe(sql.clone()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

pub async fn create_items<DB: Dialect>(pool: &Pool<DB>, name: &str) -> String
where
    for<'a> &'a Pool<DB>: Executor<'a, Database = DB>,
{
    let t = table(name);
    exec(
        pool,
        format!("CREATE TABLE {t} (id BIGINT NOT NULL PRIMARY KEY, name VARCHAR(32) NOT NULL, grp BIGINT NOT NULL)"),
    )
    .await;
    exec(pool, format!("CREATE INDEX {t}_name ON {t} (name, id)")).await;
    t
}

pub async fn drop_table<DB: Dialect>(pool: &Pool<DB>, t: &str)
where
    for<'a> &'a Pool<DB>: Executor<'a, Database = DB>,
{
    exec(pool, format!("DROP TABLE IF EXISTS {t}")).await;
}

pub fn rows(range: std::ops::Range<i64>) -> Vec<Item> {
    range
        .map(|i| Item {
            id: i,
            name: name_of(i),
            grp: i % 10,
        })
        .collect()
}

pub fn sorts() -> Sorts {
    Sorts::new("id", &[("id", KeyKind::Int)])
        .unwrap()
        .allow("name", &[("name", KeyKind::Text), ("id", KeyKind::Int)])
        .unwrap()
}

pub fn pager(t: &str, key: &CursorKey) -> Pager {
    Pager::new(t, sorts(), key.clone())
        .unwrap()
        .max_page_size(1000)
        .unwrap()
}

/// Inserts `items` with one `Bulk::insert` call; returns the statement count.
pub async fn bulk_insert<DB: Dialect>(pool: &Pool<DB>, t: &str, items: &[Item]) -> usize
where
    for<'a> &'a Pool<DB>: QueryTarget<Database = DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let done = Bulk::new(t, &["id", "name", "grp"])
        .unwrap()
        .insert(pool, items, |mut b, r| {
            b.push_bind(r.id).push_bind(r.name.clone()).push_bind(r.grp);
        })
        .await
        .unwrap();
    assert_eq!(done.affected, items.len() as u64);
    done.statements
}

/// Ids in the database's own order for `sort`.
pub async fn ids_in_db_order<DB: Dialect>(pool: &Pool<DB>, t: &str, order: &str) -> Vec<i64>
where
    for<'a> &'a Pool<DB>: Executor<'a, Database = DB>,
    (i64,): for<'r> FromRow<'r, DB::Row>,
{
    sqlx::query_scalar::<DB, i64>(AssertSqlSafe(format!(
        "SELECT id FROM {t} ORDER BY {order}"
    )))
    .fetch_all(pool)
    .await
    .unwrap()
}

fn req(cursor: Option<String>, limit: u32, sort: &str) -> CursorRequest {
    CursorRequest {
        cursor,
        limit,
        sort: Some(sort.to_owned()),
    }
}

/// Walks every page forward, then every page backward from the end, and checks both walks
/// against the database's own order: complete, disjoint, in order.
pub async fn keyset_walks<DB: Dialect>(
    pool: &Pool<DB>,
    t: &str,
    key: &CursorKey,
    sort: &str,
    order: &str,
) where
    for<'a> &'a Pool<DB>: QueryTarget<Database = DB> + Executor<'a, Database = DB>,
    Item: for<'r> FromRow<'r, DB::Row>,
    (i64,): for<'r> FromRow<'r, DB::Row>,
{
    let expected = ids_in_db_order(pool, t, order).await;
    let pager = pager(t, key);
    let limit = 997; // not a divisor of the row count: the last page is short
    let mut forward = Vec::new();
    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let page = pager
            .keyset::<Item, _>(pool, &req(cursor, limit, sort))
            .await
            .unwrap();
        assert!(page.items.len() <= limit as usize);
        forward.extend(page.items.iter().map(|i| i.id));
        pages.push(page.items.len());
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => {
                cursor = page.prev_cursor.clone();
                break;
            }
        }
    }
    assert_eq!(forward.len(), expected.len(), "forward walk is complete");
    assert_eq!(
        forward, expected,
        "forward walk is in key order with no repeat"
    );
    assert!(
        pages[..pages.len() - 1]
            .iter()
            .all(|&n| n == limit as usize)
    );

    // Backward from the last page: the pages before it, back to the first.
    let last_len = *pages.last().unwrap();
    let mut backward: Vec<i64> = expected[expected.len() - last_len..].to_vec();
    while let Some(c) = cursor {
        let page = pager
            .keyset::<Item, _>(pool, &req(Some(c), limit, sort))
            .await
            .unwrap();
        assert!(page.next_cursor.is_some(), "a backward page links forward");
        let mut ids: Vec<i64> = page.items.iter().map(|i| i.id).collect();
        ids.extend(backward);
        backward = ids;
        cursor = page.prev_cursor;
    }
    assert_eq!(
        backward, expected,
        "backward walk is complete, disjoint and in order"
    );
    let unique: HashSet<i64> = backward.iter().copied().collect();
    assert_eq!(unique.len(), expected.len());
}

/// Walks forward by `name, id` while `insert` adds rows concurrently: every row present
/// from the start is seen exactly once, and pages never go back in key order.
pub async fn keyset_under_inserts<DB, F, Fut>(pool: &Pool<DB>, t: &str, initial: i64, insert: F)
where
    DB: Dialect,
    for<'a> &'a Pool<DB>: QueryTarget<Database = DB> + Executor<'a, Database = DB>,
    Item: for<'r> FromRow<'r, DB::Row>,
    F: FnOnce(tokio::sync::watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = u64>,
{
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let inserted = insert(stop_rx);
    let key = CursorKey::random();
    let pager = pager(t, &key);
    let walk = async {
        let mut seen: Vec<(String, i64)> = Vec::new();
        let mut cursor = None;
        loop {
            let page = pager
                .keyset::<Item, _>(pool, &req(cursor, 50, "name"))
                .await
                .unwrap();
            seen.extend(page.items.iter().map(|i| (i.name.clone(), i.id)));
            // Give the writers time between pages.
            tokio::task::yield_now().await;
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        stop_tx.send(true).unwrap();
        seen
    };
    let (seen, inserted) = tokio::join!(walk, inserted);
    assert!(inserted > 0, "rows were inserted during the walk");
    for w in seen.windows(2) {
        assert!(
            w[0] < w[1],
            "keys strictly increase across pages: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
    let ids: HashSet<i64> = seen.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids.len(), seen.len(), "no row repeated");
    for id in 0..initial {
        assert!(ids.contains(&id), "row {id} present throughout was skipped");
    }
}

/// Forged, tampered, foreign and garbage cursors are refused as `InvalidCursor`.
pub async fn forged_cursors<DB: Dialect>(pool: &Pool<DB>, t: &str)
where
    for<'a> &'a Pool<DB>: QueryTarget<Database = DB> + Executor<'a, Database = DB>,
    Item: for<'r> FromRow<'r, DB::Row>,
{
    let key = CursorKey::random();
    let pager = pager(t, &key);
    let page = pager
        .keyset::<Item, _>(pool, &req(None, 10, "name"))
        .await
        .unwrap();
    let good = page.next_cursor.unwrap();
    // The good one works.
    pager
        .keyset::<Item, _>(pool, &req(Some(good.clone()), 10, "name"))
        .await
        .unwrap();

    let mut tampered = good.clone().into_bytes();
    let i = tampered.len() / 2;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let other_key = pager_with_other_key(t)
        .keyset::<Item, _>(pool, &req(None, 10, "name"))
        .await
        .unwrap()
        .next_cursor
        .unwrap();
    let cases: Vec<(String, &str)> = vec![
        (tampered, "tampered"),
        (other_key, "signed with another key"),
        (good[..good.len() - 3].to_owned(), "truncated"),
        ("' OR 1=1 --".to_owned(), "injection"),
        ("".to_owned(), "empty"),
        ("eyJzIjoiIn0".to_owned(), "unsigned json"),
    ];
    for (cursor, what) in cases {
        let err = pager
            .keyset::<Item, _>(pool, &req(Some(cursor), 10, "name"))
            .await
            .expect_err(what);
        assert_eq!(err.kind(), DbErrorKind::InvalidCursor, "{what}: {err}");
        assert!(err.is_client_error());
    }
    // A genuine cursor for another sort order or table.
    for sort in ["-name", "id"] {
        let err = pager
            .keyset::<Item, _>(pool, &req(Some(good.clone()), 10, sort))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), DbErrorKind::InvalidCursor, "{sort}: {err}");
    }
}

fn pager_with_other_key(t: &str) -> Pager {
    pager(t, &CursorKey::random())
}

/// A sort parameter carrying SQL is refused before any SQL runs, and the table survives.
pub async fn sort_injection<DB: Dialect>(pool: &Pool<DB>, t: &str)
where
    for<'a> &'a Pool<DB>: QueryTarget<Database = DB> + Executor<'a, Database = DB>,
    Item: for<'r> FromRow<'r, DB::Row>,
    (i64,): for<'r> FromRow<'r, DB::Row>,
{
    let pager = pager(t, &CursorKey::random());
    for sort in [
        format!("name; DROP TABLE {t}"),
        "name DESC".into(),
        "id)".into(),
        "--name".into(),
        "grp".into(),
    ] {
        let err = pager
            .keyset::<Item, _>(pool, &req(None, 10, &sort))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), DbErrorKind::UnknownSort, "{sort}");
        assert!(err.to_string().contains("allowed: id, name"), "{err}");
        let err = pager
            .offset::<Item, _>(
                pool,
                &PageRequest {
                    sort: Some(sort.clone()),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), DbErrorKind::UnknownSort);
    }
    assert!(
        Pager::new(
            &format!("{t}; DROP TABLE {t}"),
            sorts(),
            CursorKey::random()
        )
        .is_err()
    );
    // A filter value is bound, never spliced.
    let page = pager
        .clone()
        .filter_eq("name", format!("x'; DROP TABLE {t}; --"))
        .unwrap()
        .offset::<Item, _>(pool, &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(page.total, 0);
    assert!(
        !ids_in_db_order(pool, t, "id").await.is_empty(),
        "table still there"
    );
}

/// Offset pages: one statement with the total; past the end still knows the total; sizes
/// enforced.
pub async fn offset_pages<DB: Dialect>(pool: &Pool<DB>, t: &str, total: u64)
where
    for<'a> &'a Pool<DB>: QueryTarget<Database = DB> + Executor<'a, Database = DB>,
    Item: for<'r> FromRow<'r, DB::Row>,
    (i64,): for<'r> FromRow<'r, DB::Row>,
{
    let expected = ids_in_db_order(pool, t, "name DESC, id DESC").await;
    for mode in [TotalCount::Window, TotalCount::Separate] {
        let pager = pager(t, &CursorKey::random()).total_count(mode);
        let size = 700u32;
        let page3 = pager
            .offset::<Item, _>(
                pool,
                &PageRequest {
                    page: 3,
                    page_size: size,
                    sort: Some("-name".into()),
                },
            )
            .await
            .unwrap();
        assert_eq!(page3.total, total);
        assert_eq!(page3.total_pages, total.div_ceil(u64::from(size)));
        let ids: Vec<i64> = page3.items.iter().map(|i| i.id).collect();
        assert_eq!(ids, expected[2 * size as usize..3 * size as usize]);

        let past = pager
            .offset::<Item, _>(
                pool,
                &PageRequest {
                    page: page3.total_pages + 1,
                    page_size: size,
                    sort: None,
                },
            )
            .await
            .unwrap();
        assert!(past.items.is_empty());
        assert_eq!(past.total, total, "total known past the end");

        let filtered = pager
            .clone()
            .filter_eq("grp", 3_i64)
            .unwrap()
            .offset::<Item, _>(
                pool,
                &PageRequest {
                    page: 1,
                    page_size: 10,
                    sort: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(filtered.total, total / 10);
        assert!(filtered.items.iter().all(|i| i.grp == 3));
    }
    let pager = pager(t, &CursorKey::random());
    for (page, page_size) in [(0, 10), (1, 0), (1, 1001), (u64::MAX, 1000)] {
        let err = pager
            .offset::<Item, _>(
                pool,
                &PageRequest {
                    page,
                    page_size,
                    sort: None,
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), DbErrorKind::InvalidPage, "{page} {page_size}");
    }
    let err = pager
        .keyset::<Item, _>(pool, &req(None, 1001, "id"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), DbErrorKind::InvalidPage);
}

/// Bulk insert at the bind-parameter limit: exactly the limit fits one statement, one
/// more row takes two; and the limit is the database's real one.
pub async fn chunk_boundary<DB: Dialect>(pool: &Pool<DB>, columns: usize)
where
    for<'a> &'a Pool<DB>: QueryTarget<Database = DB> + Executor<'a, Database = DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    (i64,): for<'r> FromRow<'r, DB::Row>,
{
    assert_eq!(
        DB::MAX_BIND_PARAMS % columns,
        0,
        "pick a divisor of the limit"
    );
    let t = table("boundary");
    let cols: Vec<String> = (0..columns).map(|c| format!("c{c}")).collect();
    let defs: Vec<String> = cols
        .iter()
        .map(|c| format!("{c} BIGINT NOT NULL"))
        .collect();
    exec(pool, format!("CREATE TABLE {t} ({})", defs.join(", "))).await;
    let col_refs: Vec<&str> = cols.iter().map(String::as_str).collect();
    let bulk = Bulk::new(&t, &col_refs).unwrap();
    let per = bulk.rows_per_statement::<DB>();
    assert_eq!(per * columns, DB::MAX_BIND_PARAMS);

    let bind = |mut b: sqlx::query_builder::Separated<'_, DB, &'static str>, r: &i64| {
        for c in 0..columns as i64 {
            b.push_bind(*r * 100 + c);
        }
    };
    let exact: Vec<i64> = (0..per as i64).collect();
    let done = bulk.insert(pool, &exact, bind).await.unwrap();
    assert_eq!(
        (done.affected, done.statements),
        (per as u64, 1),
        "exactly the limit: one statement"
    );
    let over: Vec<i64> = (0..per as i64 + 1).collect();
    let done = bulk.insert(pool, &over, bind).await.unwrap();
    assert_eq!(
        (done.affected, done.statements),
        (per as u64 + 1, 2),
        "one more row: two"
    );
    let n = sqlx::query_scalar::<DB, i64>(AssertSqlSafe(format!("SELECT COUNT(*) FROM {t}")))
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(n, 2 * per as i64 + 1);

    // The limit is real: one parameter more in a single statement fails.
    let mut qb = sqlx::QueryBuilder::<DB>::new(format!("SELECT COUNT(*) FROM {t} WHERE c0 IN ("));
    let mut list = qb.separated(", ");
    for i in 0..=DB::MAX_BIND_PARAMS as i64 {
        list.push_bind(i);
    }
    qb.push(")");
    assert!(
        qb.build().execute(pool).await.is_err(),
        "limit + 1 parameters is refused"
    );
    drop_table(pool, &t).await;
}
