//! Invalidations: tag purges (a mark, then clean-up in the background), soft purges, pattern
//! purges by `SCAN`, and their announcement on the backplane.

use bytes::Bytes;

use super::scripts::REPLACE_IF_SAME;
use super::{Batch, RedisStore, SCAN_COUNT, ScanNode, raise_mark};
use crate::store::backplane::BusOp;
use crate::store::entry::now_micros;
use crate::store::marks::TagMarks;
use crate::store::stats::Counters;
use crate::store::{Entry, KeyPattern, Pattern, PurgeMode, StoreError};

impl RedisStore {
    /// Scans keys matching a Redis pattern and unlinks them in batches. Never `KEYS`.
    pub(super) async fn unlink_scanning(&self, pattern: &str) -> Result<u64, StoreError> {
        let mut scan = self.scan(pattern).await?;
        let mut removed = 0u64;
        while let Some(keys) = self.next_page(&mut scan).await? {
            removed += self.unlink(&keys).await?;
        }
        Ok(removed)
    }

    /// `UNLINK`s full Redis keys in one pipeline; returns how many existed.
    async fn unlink(&self, full_keys: &[String]) -> Result<u64, StoreError> {
        if full_keys.is_empty() {
            return Ok(0);
        }
        let mut pipe = Batch::new();
        for key in full_keys {
            pipe.cmd("UNLINK").arg(key);
        }
        let mut conn = self.inner.conn.clone();
        let counts: Vec<u64> = self.run("unlink", conn.run_batch(&pipe)).await?;
        Ok(counts.iter().sum())
    }

    pub(crate) async fn publish_op(&self, op: BusOp) -> Result<(), StoreError> {
        if self.inner.bus.is_none() {
            return Ok(());
        }
        let mut pipe = Batch::new();
        self.publish(&mut pipe, op);
        let ((), reached) = self.run_publishing("publish", &pipe).await?;
        self.fence(reached).await;
        Ok(())
    }

    /// Purges a tag as of `at`, hard or soft; returns the index size at that moment. A hard
    /// purge's entries are removed in the background; a soft purge's stay, stale, until their
    /// grace runs out.
    pub(crate) async fn purge_tag_at(
        &self,
        tag: &str,
        at: u64,
        soft: bool,
    ) -> Result<u64, StoreError> {
        self.inner.limits.check_tag(tag)?;
        let mut pipe = Batch::new();
        let mark_key = if soft {
            self.soft_mark_key(tag)
        } else {
            self.mark_key(tag)
        };
        // A plain SET: two purges racing from machines whose clocks disagree can leave the
        // earlier time in Redis. Each instance's known marks only ever rise (`raise_mark`).
        // The mark first lives the retention (fetches in flight); when the tag has entries it
        // is then extended to their lifetime, the index's.
        let retention_ms = self.inner.mark_retention.as_millis().max(1) as u64;
        pipe.cmd("SET")
            .arg(&mark_key)
            .arg(at)
            .arg("PX")
            .arg(retention_ms)
            .ignore();
        pipe.cmd("SCARD").arg(self.index_key(tag));
        pipe.cmd("PTTL").arg(self.index_key(tag));
        self.publish(
            &mut pipe,
            BusOp::Tags {
                tags: vec![tag.to_owned()],
                at,
                soft,
            },
        );
        let ((count, index_ttl_ms), reached): ((u64, i64), u64) =
            self.run_publishing("purge tag", &pipe).await?;
        raise_mark(&self.inner.marks, tag, TagMarks::at(at, soft));
        if count > 0 {
            // -1: entries without expiry; the cap bounds the mark all the same.
            let cap = self.inner.mark_ttl.as_millis().max(1) as u64;
            let lifetime = u64::try_from(index_ttl_ms).map_or(cap, |ms| ms.min(cap));
            if lifetime > retention_ms {
                let mut conn = self.inner.conn.clone();
                self.run(
                    "purge tag",
                    redis::cmd("PEXPIRE")
                        .arg(&mark_key)
                        .arg(lifetime)
                        .arg("GT")
                        .query_async::<i64>(&mut conn),
                )
                .await?;
            }
        }
        self.fence(reached).await;
        if soft {
            return Ok(count);
        }
        Counters::add(&self.inner.counters.deletes, count);
        let store = self.clone();
        let tag = tag.to_owned();
        tokio::spawn(async move {
            if let Err(e) = store.clean_tag(tag.clone(), at).await {
                tracing::warn!(tag, error = %e, "redis store: tag clean-up stopped; marks still hide the entries");
            }
        });
        Ok(count)
    }

    /// Soft-purges full Redis keys (`ns:k:...`) as of `at`: one pipeline of `GET`s, then one of
    /// compare-and-replace scripts. Returns how many entries were soft-purged.
    pub(super) async fn soft_purge_raw(
        &self,
        full_keys: &[String],
        at: u64,
    ) -> Result<u64, StoreError> {
        if full_keys.is_empty() {
            return Ok(0);
        }
        let mut conn = self.inner.conn.clone();
        let mut pipe = Batch::new();
        for key in full_keys {
            pipe.cmd("GET").arg(key);
        }
        let raws: Vec<Option<Vec<u8>>> = self.run("soft purge read", conn.run_batch(&pipe)).await?;
        let mut pipe = Batch::new();
        let mut queued = 0;
        for (key, raw) in full_keys.iter().zip(raws) {
            // Counters and sets are not entries: left alone by a soft purge.
            let Some(Ok(entry)) = raw.map(|r| Entry::decode(Bytes::from(r))) else {
                continue;
            };
            let stored = entry.stored_at_micros();
            let soft = entry.soft_purged(at);
            let left_ms = soft
                .time_to_expiry()
                .map_or(i64::MAX, |l| l.as_millis().min(i64::MAX as u128) as i64);
            pipe.cmd("EVAL")
                .arg(REPLACE_IF_SAME)
                .arg(1)
                .arg(key)
                .arg(stored)
                .arg(soft.encode().as_ref())
                .arg(left_ms);
            queued += 1;
        }
        if queued == 0 {
            return Ok(0);
        }
        let done: Vec<u64> = self.run("soft purge write", conn.run_batch(&pipe)).await?;
        Ok(done.into_iter().filter(|&n| n > 0).count() as u64)
    }

    /// Starts a walk of the keys matching a Redis pattern: on a Cluster, of every master.
    pub(super) async fn scan(&self, pattern: &str) -> Result<KeyScan, StoreError> {
        let mut conn = self.inner.conn.clone();
        let nodes = self.run("cluster slots", conn.scan_nodes()).await?;
        Ok(KeyScan {
            nodes,
            node: 0,
            cursor: 0,
            pattern: pattern.to_owned(),
        })
    }

    /// The next page of a walk (`SCAN` never blocks Redis); `None` once every node is done.
    pub(super) async fn next_page(
        &self,
        scan: &mut KeyScan,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let Some(node) = scan.nodes.get(scan.node) else {
            return Ok(None);
        };
        let mut conn = self.inner.conn.clone();
        let (next, keys) = self
            .run(
                "scan",
                conn.scan_page(node, scan.cursor, &scan.pattern, SCAN_COUNT),
            )
            .await?;
        if next == 0 {
            scan.node += 1;
        }
        scan.cursor = next;
        Ok(Some(keys))
    }

    /// Purges the entries whose keys match, page by page: `SCAN` never blocks Redis, a glob is
    /// matched by Redis and a regular expression here, on the keys each page returns.
    pub(super) async fn purge_scanning(
        &self,
        pattern: &KeyPattern,
        mode: PurgeMode,
    ) -> Result<u64, StoreError> {
        let prefix = Pattern::escape(&self.inner.prefix);
        let (redis_pattern, regex) = match pattern {
            KeyPattern::Glob(glob) => (format!("{prefix}:k:{}", glob.as_str()), None),
            KeyPattern::Regex(regex) => (format!("{prefix}:k:*"), Some(regex)),
        };
        let strip = format!("{}:k:", self.inner.prefix);
        let at = now_micros();
        let mut scan = self.scan(&redis_pattern).await?;
        let mut purged = 0;
        while let Some(mut keys) = self.next_page(&mut scan).await? {
            if let Some(regex) = regex {
                keys.retain(|k| k.strip_prefix(&strip).is_some_and(|k| regex.is_match(k)));
            }
            purged += match mode {
                PurgeMode::Hard => self.unlink(&keys).await?,
                PurgeMode::Soft => self.soft_purge_raw(&keys, at).await?,
            };
        }
        Ok(purged)
    }
}

/// A walk of the keys matching a pattern, node by node, page by page.
pub(super) struct KeyScan {
    nodes: Vec<ScanNode>,
    node: usize,
    cursor: u64,
    pattern: String,
}
