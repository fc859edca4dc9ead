//! What the cache holds per key ([`Slot`]: an entry, a counter or a set), how it is weighed, and
//! the lifecycle hook that keeps the tag index in step with evictions.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use quick_cache::{Lifecycle, Weighter};

use crate::store::Entry;
use crate::store::stats::Counters;

use super::SLOT_OVERHEAD;
use super::tags::TagIndex;

#[derive(Clone)]
pub(super) enum Slot {
    Entry(EntrySlot),
    Counter(Arc<CounterSlot>),
    Set(Arc<SetSlot>),
}

/// An entry with its deadlines precomputed (microseconds since the epoch, `u64::MAX` for
/// never), so a read costs at most one clock read and none for entries without TTL.
#[derive(Clone)]
pub(super) struct EntrySlot {
    pub(super) entry: Entry,
    pub(super) stale_at: u64,
    /// The entry's own expiry, or an earlier one of this copy alone (an L1 copy).
    pub(super) expires_at: u64,
}

pub(super) struct CounterSlot {
    pub(super) value: AtomicI64,
    pub(super) expires_at: u64,
}

pub(super) struct SetSlot {
    pub(super) members: HashSet<String>,
}

impl Slot {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Slot::Entry(_) => "entry",
            Slot::Counter(_) => "counter",
            Slot::Set(_) => "set",
        }
    }

    pub(super) fn is_expired(&self, now: u64) -> bool {
        match self {
            Slot::Entry(slot) => slot.expires_at <= now,
            Slot::Counter(counter) => counter.expires_at <= now,
            Slot::Set(_) => false,
        }
    }

    pub(super) fn tags(&self) -> &[String] {
        match self {
            Slot::Entry(slot) => slot.entry.tags(),
            _ => &[],
        }
    }

    pub(super) fn same(&self, other: &Slot) -> bool {
        match (self, other) {
            (Slot::Entry(a), Slot::Entry(b)) => {
                a.entry.value().as_ptr() == b.entry.value().as_ptr()
                    && a.entry.stored_at() == b.entry.stored_at()
                    && a.expires_at == b.expires_at
            }
            (Slot::Counter(a), Slot::Counter(b)) => Arc::ptr_eq(a, b),
            (Slot::Set(a), Slot::Set(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

#[derive(Clone)]
pub(super) struct SlotWeighter;

impl Weighter<String, Slot> for SlotWeighter {
    fn weight(&self, key: &String, slot: &Slot) -> u64 {
        let body = match slot {
            Slot::Entry(slot) => {
                slot.entry.value().len() as u64
                    + slot
                        .entry
                        .tags()
                        .iter()
                        .map(|t| t.len() as u64 + 24)
                        .sum::<u64>()
            }
            Slot::Counter(_) => 16,
            Slot::Set(set) => set.members.iter().map(|m| m.len() as u64 + 32).sum(),
        };
        key.len() as u64 + body + SLOT_OVERHEAD
    }
}

/// Removes evicted entries from the tag index, so the index never points at nothing.
///
/// `quick_cache` also reports a value replaced by an insert of the same key through this hook
/// (and an insert it refuses); inserts pass the key's fingerprint in the request state so
/// these are not counted as evictions.
#[derive(Clone)]
pub(super) struct IndexLifecycle {
    pub(super) index: Arc<TagIndex>,
    pub(super) counters: Arc<Counters>,
}

#[derive(Default)]
pub(super) struct InsertState {
    /// Fingerprint of the key being inserted (`None`: not an insert).
    pub(super) inserting: Option<KeyPrint>,
}

/// A key's length and its first and last eight bytes: what tells the key being inserted from
/// the keys an insert evicts, without hashing the key twice per write. Two keys of one length
/// sharing both ends only make an eviction go uncounted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct KeyPrint(usize, u64, u64);

impl KeyPrint {
    pub(super) fn of(key: &str) -> Self {
        let bytes = key.as_bytes();
        let word = |part: &[u8]| {
            let mut buffer = [0u8; 8];
            buffer[..part.len()].copy_from_slice(part);
            u64::from_le_bytes(buffer)
        };
        let head = word(&bytes[..bytes.len().min(8)]);
        let tail = word(&bytes[bytes.len().saturating_sub(8)..]);
        KeyPrint(bytes.len(), head, tail)
    }
}

impl Lifecycle<String, Slot> for IndexLifecycle {
    type RequestState = InsertState;

    fn on_evict(&self, state: &mut InsertState, key: String, slot: Slot) {
        if state.inserting != Some(KeyPrint::of(&key)) {
            Counters::add(&self.counters.evictions, 1);
        }
        self.index.remove(&key, slot.tags());
    }
}
