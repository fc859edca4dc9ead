//! Writing entries and announcing writes: an entry with its tag index memberships, the
//! backplane publish in the same batch, and the fence that waits for the subscribers.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::{Batch, RedisStore};
use crate::store::backplane::BusOp;
use crate::store::stats::Counters;
use crate::store::{Entry, StoreError};

/// The longest a write waits for the backplane's subscribers to be back (see
/// `RedisStore::fence`).
const FENCE_BOUND: Duration = Duration::from_secs(1);
const FENCE_POLL: Duration = Duration::from_millis(5);

impl RedisStore {
    /// Waits, after publishing an invalidation that `reached` subscribers (the publish's own
    /// reply), until the backplane channel has as many subscribers as it had when every
    /// instance was there (at most [`FENCE_BOUND`]): an instance whose subscription dropped
    /// around the publish has then resubscribed, and so dropped its local copies, before this
    /// write returns. Without it, a read on that instance right after the write could still
    /// find the old value in its L1. Past the bound, the lower count is taken as the new
    /// normal (an instance left). When the publish reached everyone, as it nearly always does,
    /// this costs nothing: no round trip beyond the publish.
    pub(super) async fn fence(&self, reached: u64) {
        let Some(bus) = &self.inner.bus else {
            return;
        };
        if reached >= bus.expected.fetch_max(reached, Relaxed) {
            return;
        }
        let deadline = tokio::time::Instant::now() + FENCE_BOUND;
        loop {
            let mut conn = self.inner.conn.clone();
            let Ok(now) = self
                .run("pubsub numsub", conn.subscribers(&bus.channel))
                .await
            else {
                return;
            };
            let expected = bus.expected.fetch_max(now, Relaxed);
            if now >= expected {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                bus.expected.store(now, Relaxed);
                tracing::warn!(
                    expected,
                    now,
                    "backplane: fewer subscribers than before; taking it as the new normal"
                );
                return;
            }
            tokio::time::sleep(FENCE_POLL).await;
        }
    }

    /// Queues the backplane publish of `op` as the batch's last command, when there is a
    /// backplane; [`run_publishing`](Self::run_publishing) reads its reply.
    pub(super) fn publish(&self, pipe: &mut Batch, op: BusOp) {
        if let Some(bus) = &self.inner.bus {
            pipe.cmd(self.inner.conn.publish_command())
                .arg(bus.channel.as_str())
                .arg(bus.encode(op));
        }
    }

    /// Runs a batch that ends with [`publish`](Self::publish) (when there is a backplane) and
    /// returns the replies of the other commands, and how many subscribers the publish
    /// reached, for [`fence`](Self::fence).
    pub(super) async fn run_publishing<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        pipe: &Batch,
    ) -> Result<(T, u64), StoreError> {
        let mut conn = self.inner.conn.clone();
        let mut replies: Vec<redis::Value> = self.run(op, conn.run_batch(pipe)).await?;
        let reached = match &self.inner.bus {
            Some(_) => replies
                .pop()
                .and_then(|reply| <u64 as redis::FromRedisValue>::from_redis_value(reply).ok())
                .unwrap_or(0),
            None => 0,
        };
        let rest = T::from_redis_value(redis::Value::Array(replies))
            .map_err(|e| StoreError::backend(op, redis::RedisError::from(e)))?;
        Ok((rest, reached))
    }

    pub(super) fn queue_set(&self, pipe: &mut Batch, key: &str, entry: &Entry) {
        let redis_key = self.key(key);
        let retention_ms = entry
            .retention()
            .map(|l| (l.as_millis().min(i64::MAX as u128) as u64).max(1));
        let cmd = pipe.cmd("SET").arg(&redis_key).arg(entry.encode().as_ref());
        if let Some(ms) = retention_ms {
            cmd.arg("PX").arg(ms);
        }
        cmd.ignore();
        for tag in entry.tags() {
            let index = self.index_key(tag);
            pipe.cmd("SADD").arg(&index).arg(key).ignore();
            match retention_ms {
                // The index set lives as long as its longest-lived member: NX sets a TTL on a
                // new set, GT extends it. A mark the tag has lives as long as this entry too
                // (GT: never shortened; a missing mark is left missing): an entry fetched
                // before a purge and written after it stays hidden for all its life.
                Some(ms) => {
                    pipe.cmd("PEXPIRE").arg(&index).arg(ms).arg("NX").ignore();
                    pipe.cmd("PEXPIRE").arg(&index).arg(ms).arg("GT").ignore();
                    let ms = ms.min(self.inner.mark_ttl.as_millis() as u64);
                    for mark in [self.mark_key(tag), self.soft_mark_key(tag)] {
                        pipe.cmd("PEXPIRE").arg(mark).arg(ms).arg("GT").ignore();
                    }
                }
                None => {
                    pipe.cmd("PERSIST").arg(&index).ignore();
                }
            }
        }
    }

    /// Writes a prepared entry (the tiered store hands over entries it already built).
    pub(crate) async fn set_entries(&self, items: &[(&str, Entry)]) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        if let [(key, _)] = items {
            self.shed("set", key)?;
        }
        let mut pipe = Batch::new();
        // MULTI only where an entry and its index memberships must land together.
        if items.iter().any(|(_, e)| !e.tags().is_empty()) {
            pipe.atomic();
        }
        for (key, entry) in items {
            self.queue_set(&mut pipe, key, entry);
        }
        if !self.inner.publish_writes {
            let mut conn = self.inner.conn.clone();
            self.run("set", conn.run_batch::<()>(&pipe)).await?;
            Counters::add(&self.inner.counters.sets, items.len() as u64);
            return Ok(());
        }
        self.publish(
            &mut pipe,
            BusOp::Keys {
                keys: items.iter().map(|(k, _)| (*k).to_owned()).collect(),
            },
        );
        let ((), reached) = self.run_publishing("set", &pipe).await?;
        Counters::add(&self.inner.counters.sets, items.len() as u64);
        self.fence(reached).await;
        Ok(())
    }

    /// `SADD` or `SREM` of `members`; an empty list is a no-op (Redis refuses it).
    pub(super) async fn change_set(
        &self,
        op: &'static str,
        command: &str,
        key: &str,
        members: &[&str],
    ) -> Result<u64, StoreError> {
        self.inner.limits.check_key(key)?;
        if members.is_empty() {
            return Ok(0);
        }
        let mut conn = self.inner.conn.clone();
        self.run(
            op,
            redis::cmd(command)
                .arg(self.key(key))
                .arg(members)
                .query_async(&mut conn),
        )
        .await
    }
}
