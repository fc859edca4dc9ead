//! Background clean-up of tag index sets: the entries of a purged tag, and members whose
//! entries expired.

use super::scripts::DELETE_IF_OLDER;
use super::{BATCH, Batch, RedisStore};
use crate::store::{Pattern, StoreError};

impl RedisStore {
    /// One `SSCAN` page of a tag index set: up to [`BATCH`] members.
    async fn index_page(&self, set: &str, cursor: u64) -> Result<(u64, Vec<String>), StoreError> {
        let mut conn = self.inner.conn.clone();
        self.run(
            "sscan",
            redis::cmd("SSCAN")
                .arg(set)
                .arg(cursor)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut conn),
        )
        .await
    }

    /// Removes a purged tag's entries (those stored at or before `at`) in batches, then the
    /// scanned members from its index set. Runs in the background after a hard [`Store::purge_tag`].
    pub(super) async fn clean_tag(&self, tag: String, at: u64) -> Result<u64, StoreError> {
        let index = self.index_key(&tag);
        let mut conn = self.inner.conn.clone();
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let (next, members) = self.index_page(&index, cursor).await?;
            if !members.is_empty() {
                let mut pipe = Batch::new();
                for member in &members {
                    pipe.cmd("EVAL")
                        .arg(DELETE_IF_OLDER)
                        .arg(1)
                        .arg(self.key(member))
                        .arg(at);
                }
                pipe.cmd("SREM").arg(&index).arg(&members).ignore();
                let counts: Vec<u64> = self.run("clean tag", conn.run_batch(&pipe)).await?;
                removed += counts.iter().sum::<u64>();
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    /// Drops members of tag index sets whose entries no longer exist (expired). Runs on an
    /// interval in the background; returns how many members went.
    ///
    /// # Errors
    ///
    /// Backend errors and timeouts; the sweep stops at the first.
    pub async fn sweep_index(&self) -> Result<u64, StoreError> {
        let mut conn = self.inner.conn.clone();
        let pattern = format!("{}:i:*", Pattern::escape(&self.inner.prefix));
        let index_prefix = format!("{}:i:", self.inner.prefix);
        let mut scan = self.scan(&pattern).await?;
        let mut dropped = 0;
        while let Some(sets) = self.next_page(&mut scan).await? {
            for set in sets {
                let Some(tag) = set.strip_prefix(&index_prefix) else {
                    continue;
                };
                let tag = tag.to_owned();
                let mut set_cursor: u64 = 0;
                loop {
                    let (next_member, members) = self.index_page(&set, set_cursor).await?;
                    if !members.is_empty() {
                        let mut pipe = Batch::new();
                        for member in &members {
                            pipe.cmd("EXISTS").arg(self.key(member));
                        }
                        let exists: Vec<bool> = self.run("exists", conn.run_batch(&pipe)).await?;
                        let dead: Vec<&String> = members
                            .iter()
                            .zip(exists)
                            .filter(|(_, e)| !e)
                            .map(|(m, _)| m)
                            .collect();
                        if !dead.is_empty() {
                            let n: u64 = self
                                .run(
                                    "srem",
                                    redis::cmd("SREM")
                                        .arg(self.index_key(&tag))
                                        .arg(&dead)
                                        .query_async(&mut conn),
                                )
                                .await?;
                            dropped += n;
                        }
                    }
                    if next_member == 0 {
                        break;
                    }
                    set_cursor = next_member;
                }
            }
        }
        Ok(dropped)
    }
}
