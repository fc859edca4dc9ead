//! Reading entries: decoding, the tags' invalidation marks (known locally or fetched in
//! one round trip), and the counts of hits and misses.

use bytes::Bytes;

use super::{Batch, RedisStore, raise_mark};
use crate::store::marks::{TagMarks, Verdict};
use crate::store::stats::Counters;
use crate::store::{Entry, StoreError};

impl RedisStore {
    /// Drops entries whose tags were purged after they were stored, and marks stale those
    /// soft-purged since. Marks not known locally (or all of them, while the backplane is down)
    /// are fetched in one pipelined round trip.
    pub(super) async fn filter_invalidated(
        &self,
        entries: &mut [Option<Entry>],
    ) -> Result<(), StoreError> {
        let trust_local = self.backplane_connected();
        let mut unknown: Vec<String> = Vec::new();
        for entry in entries.iter().flatten() {
            for tag in entry.tags() {
                let known = trust_local && self.inner.marks.get(tag.as_str()).is_some();
                if !known && !unknown.contains(tag) {
                    unknown.push(tag.clone());
                }
            }
        }
        let mut fetched = std::collections::HashMap::new();
        if !unknown.is_empty() {
            let mut pipe = Batch::new();
            for tag in &unknown {
                pipe.cmd("GET").arg(self.mark_key(tag));
                pipe.cmd("GET").arg(self.soft_mark_key(tag));
            }
            let mut conn = self.inner.conn.clone();
            let marks: Vec<Option<u64>> = self.run("get marks", conn.run_batch(&pipe)).await?;
            for (tag, pair) in unknown.into_iter().zip(marks.chunks(2)) {
                let mark = TagMarks {
                    hard: pair[0].unwrap_or(0),
                    soft: pair.get(1).copied().flatten().unwrap_or(0),
                };
                if trust_local {
                    raise_mark(&self.inner.marks, &tag, mark);
                }
                fetched.insert(tag, mark);
            }
        }
        for slot in entries.iter_mut() {
            let Some(entry) = slot.take() else { continue };
            if entry.tags().is_empty() {
                *slot = Some(entry);
                continue;
            }
            let mut marks = TagMarks::default();
            for tag in entry.tags() {
                if let Some(mark) = fetched
                    .get(tag)
                    .copied()
                    .or_else(|| self.inner.marks.get(tag.as_str()))
                {
                    marks.raise(mark);
                }
            }
            *slot = match marks.verdict(entry.stored_at_micros()) {
                Verdict::Valid => Some(entry),
                Verdict::Invalid => None,
                Verdict::Soft(at) => Some(entry.soft_purged(at)).filter(|e| !e.is_expired()),
            };
        }
        Ok(())
    }

    pub(super) fn decode(&self, raw: Option<Vec<u8>>) -> Result<Option<Entry>, StoreError> {
        match raw {
            None => Ok(None),
            Some(raw) => Entry::decode(Bytes::from(raw)).map(Some).inspect_err(|e| {
                self.inner.counters.error(e);
            }),
        }
    }

    pub(super) fn count_reads(&self, entries: &[Option<Entry>]) {
        for entry in entries {
            match entry {
                Some(entry) => self.inner.counters.hit(entry.is_stale()),
                None => Counters::add(&self.inner.counters.misses, 1),
            }
        }
    }

    /// [`Store::get`] without the read soft timeout.
    pub(super) async fn read_one(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let mut conn = self.inner.conn.clone();
        let raw: Option<Vec<u8>> = self
            .run(
                "get",
                redis::cmd("GET").arg(self.key(key)).query_async(&mut conn),
            )
            .await?;
        let mut found = [self.decode(raw)?];
        self.filter_invalidated(&mut found).await?;
        self.count_reads(&found);
        let [found] = found;
        Ok(found)
    }

    /// [`StoreExt::get_many`]. On a Cluster, the keys of a master that fails read as misses
    /// as long as another master answered.
    pub(crate) async fn read_many(&self, keys: &[&str]) -> Result<Vec<Option<Entry>>, StoreError> {
        for key in keys {
            self.inner.limits.check_key(key)?;
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // A pipeline of GETs rather than MGET: one round trip, and no multi-key command that a
        // Cluster would refuse across slots.
        let mut pipe = Batch::new();
        pipe.partial();
        for key in keys {
            pipe.cmd("GET").arg(self.key(key));
        }
        let mut conn = self.inner.conn.clone();
        let raws: Vec<Option<Vec<u8>>> = self.run("get_many", conn.run_batch(&pipe)).await?;
        let mut found = raws
            .into_iter()
            .map(|raw| self.decode(raw))
            .collect::<Result<Vec<_>, _>>()?;
        self.filter_invalidated(&mut found).await?;
        self.count_reads(&found);
        Ok(found)
    }
}
