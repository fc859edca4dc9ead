//! [`MemoryStoreBuilder`], and the background sweep a store starts.

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use quick_cache::DefaultHashBuilder;
use quick_cache::sync::Cache as QuickCache;

use crate::store::Limits;
use crate::store::stats::Counters;

use super::slot::{IndexLifecycle, SlotWeighter};
use super::tags::MARK_RETENTION;
use super::tags::{Marks, TagIndex, max_marks};
use super::{Inner, MemoryStore};

/// Builds a [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryStoreBuilder {
    capacity_bytes: u64,
    estimated_items: Option<usize>,
    limits: Limits,
    sweep_interval: Option<Duration>,
    mark_retention: Duration,
}

impl Default for MemoryStoreBuilder {
    fn default() -> Self {
        MemoryStoreBuilder {
            capacity_bytes: 256 * 1024 * 1024,
            estimated_items: None,
            limits: Limits::default(),
            sweep_interval: Some(Duration::from_secs(10)),
            mark_retention: MARK_RETENTION,
        }
    }
}

impl MemoryStoreBuilder {
    setters! {
        /// Total weight the store may hold, in bytes (default 256 MiB).
        fn capacity_bytes(bytes: u64) => set capacity_bytes;

        /// How many entries to size the index for (default: capacity / 1 KiB).
        fn estimated_items(items: usize) => some estimated_items;

        /// The limits enforced on keys, values and tags.
        fn limits(limits: Limits) => set limits;

        /// How long a tag purge's invalidation mark is kept at least (default 5 min), so that a
        /// response fetched before the purge and written after it (stamped with its fetch's start,
        /// see [`SetOptions::as_of`](crate::store::SetOptions::as_of)) is still hidden: set it above your slowest upstream call.
        /// Marks are also kept while any entry older than them lives.
        fn mark_retention(retention: Duration) => set mark_retention;

        /// How often the background sweep drops expired entries and compacts the tag index
        /// (default 10 s; `None` turns it off, leaving expiry on read only).
        fn sweep_interval(interval: Option<Duration>) => set sweep_interval;
    }

    /// Builds the store. The sweep starts only when called inside a Tokio runtime.
    pub fn build(self) -> MemoryStore {
        let index = Arc::new(TagIndex::new(16));
        let counters = Arc::new(Counters::default());
        let estimated = self
            .estimated_items
            .unwrap_or((self.capacity_bytes / 1024).clamp(64, 1 << 24) as usize);
        let cache = QuickCache::with(
            estimated,
            self.capacity_bytes.max(1),
            SlotWeighter,
            DefaultHashBuilder::default(),
            IndexLifecycle {
                index: index.clone(),
                counters: counters.clone(),
            },
        );
        let store = MemoryStore {
            inner: Arc::new(Inner {
                cache,
                index,
                marks: Marks {
                    map: RwLock::default(),
                    len: AtomicUsize::new(0),
                    retention: self.mark_retention,
                    max: max_marks(self.capacity_bytes),
                    floor: AtomicU64::new(0),
                },
                counters,
                ops: crate::instruments::LocalOps::new(),
                limits: self.limits,
                set_lock: Mutex::new(()),
            }),
        };
        if let (Some(interval), Ok(handle)) =
            (self.sweep_interval, tokio::runtime::Handle::try_current())
        {
            // The first sweep after one interval: a new store has nothing to sweep.
            handle.spawn(crate::background::tick_while_alive(
                Arc::downgrade(&store.inner),
                tokio::time::Instant::now() + interval,
                interval,
                |inner| async move { MemoryStore { inner }.sweep() },
            ));
        }
        store
    }
}
