//! The memory store's unit tests.

use super::*;

/// Stores `value` under `key` with `tags`.
async fn set_tagged(store: &MemoryStore, key: &str, value: &'static [u8], tags: &[&str]) {
    let options = SetOptions::new().tags(tags.iter().copied());
    store
        .set(key, Bytes::from_static(value), &options)
        .await
        .unwrap();
}

#[tokio::test]
async fn index_follows_replacement_tags() {
    let store = MemoryStore::new(1 << 20);
    set_tagged(&store, "k", b"1", &["a", "b"]).await;
    assert_eq!(store.tag_index_len(), 2);
    set_tagged(&store, "k", b"2", &["b"]).await;
    assert_eq!(store.tag_index_len(), 1);
    assert_eq!(store.purge_tag("a", PurgeMode::Hard).await.unwrap(), 0);
    assert!(store.get("k").await.unwrap().is_some());
    assert_eq!(store.purge_tag("b", PurgeMode::Hard).await.unwrap(), 1);
    assert!(store.get("k").await.unwrap().is_none());
}

#[tokio::test]
async fn marks_hide_entries_the_index_missed_and_are_swept() {
    let store = MemoryStore::builder()
        .capacity_bytes(1 << 20)
        .mark_retention(Duration::from_millis(1))
        .build();
    set_tagged(&store, "k", b"1", &["t"]).await;
    // Simulate a lost index membership: the mark alone must hide the entry.
    store.inner.index.take("t");
    store.purge_tag("t", PurgeMode::Hard).await.unwrap();
    assert!(store.get("k").await.unwrap().is_none());
    // An entry stored after the purge is visible.
    tokio::time::sleep(Duration::from_millis(2)).await;
    set_tagged(&store, "k2", b"2", &["t"]).await;
    assert!(store.get("k2").await.unwrap().is_some());
    store.sweep();
    assert_eq!(store.inner.marks.len.load(Relaxed), 0);
}

#[tokio::test]
async fn marks_outlive_their_clean_up_for_the_retention() {
    let store = MemoryStore::new(1 << 20);
    store.purge_tag("t", PurgeMode::Hard).await.unwrap();
    store.sweep();
    assert_eq!(
        store.inner.marks.len.load(Relaxed),
        1,
        "kept for a late write fetched before the purge"
    );
}
