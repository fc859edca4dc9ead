//! Checks of the server and of the breaker: the version a store needs, and the breaker as a
//! health check.

use super::RedisStore;
use crate::store::StoreError;
#[cfg(feature = "health")]
use crate::store::stats::BreakerState;

/// `redis_version` from an `INFO server` reply.
fn server_version(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

impl RedisStore {
    /// Asks the server its version and refuses one older than Redis 7.0, whose `PEXPIRE`
    /// lacks the `NX`/`GT` options the tag index needs. Building the store never contacts
    /// Redis; call this at start-up to fail there, with a clear message, rather than on the
    /// first tagged write. Returns the version (`7.2.4`; Valkey reports its Redis-compatible
    /// one).
    ///
    /// # Errors
    ///
    /// [`StoreError::Incompatible`] for a server older than 7.0 or one that does not say its
    /// version; the command's error when Redis cannot be reached.
    pub async fn check_server(&self) -> Result<String, StoreError> {
        let mut conn = self.inner.conn.clone();
        let info = self.run("info server", conn.info_server()).await?;
        let version = server_version(&info).ok_or_else(|| {
            StoreError::Incompatible("the server did not report a redis_version in INFO".into())
        })?;
        let major = version
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok())
            .unwrap_or(0);
        if major < 7 {
            return Err(StoreError::Incompatible(format!(
                "Redis {version} is too old: tower-strata needs Redis 7.0 or later \
                 (PEXPIRE ... NX/GT keeps the tag index's expiry)"
            )));
        }
        Ok(version.to_owned())
    }
}

/// A health check of a [`RedisStore`]'s circuit breaker, from [`RedisStore::breaker_check`]:
/// healthy while closed, degraded (not down: a cache in front passes through to its origin)
/// while open or probing, with how many calls it refused and how often it opened; on a
/// Cluster, with each master's breaker under `nodes`. It sends nothing to Redis.
#[cfg(feature = "health")]
#[cfg_attr(docsrs, doc(cfg(feature = "health")))]
#[derive(Clone, Debug)]
pub struct BreakerCheck {
    store: RedisStore,
}

#[cfg(feature = "health")]
impl RedisStore {
    /// A health check of this store's circuit breaker; see [`BreakerCheck`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tower_strata::health::{Check, Health};
    /// use tower_strata::store::RedisStore;
    ///
    /// let store = RedisStore::try_new("redis://127.0.0.1:6379")?;
    /// let health = Health::builder()
    ///     .check(Check::optional("redis-breaker", store.breaker_check()))
    ///     .build()?;
    /// # let _ = health;
    /// # Ok(())
    /// # }
    /// ```
    pub fn breaker_check(&self) -> BreakerCheck {
        BreakerCheck {
            store: self.clone(),
        }
    }
}

#[cfg(feature = "health")]
impl crate::health::HealthCheck for BreakerCheck {
    fn check(&self) -> crate::health::CheckFuture<'_> {
        use crate::health::CheckOutput;
        let output = match self.store.breaker_state() {
            None => CheckOutput::healthy(serde_json::json!({ "breaker": "off" })),
            Some(state) => {
                let (rejected, opened) = self.store.breaker_counts();
                let mut details = serde_json::json!({
                    "breaker": state,
                    "rejected": rejected,
                    "opened": opened,
                });
                let nodes = self.store.node_states();
                if !nodes.is_empty() {
                    // On a Cluster, each master's breaker: one open turns off its slots only.
                    details["nodes"] = nodes
                        .iter()
                        .map(|(address, state)| (address.clone(), serde_json::json!(state)))
                        .collect::<serde_json::Map<_, _>>()
                        .into();
                }
                if state == BreakerState::Closed {
                    CheckOutput::healthy(details)
                } else if nodes.iter().any(|(_, s)| *s == BreakerState::Closed) {
                    CheckOutput::degraded(
                        details,
                        "circuit to some Redis Cluster masters open: their slots fail at once, \
                         the cache passes through for them",
                    )
                } else {
                    CheckOutput::degraded(
                        details,
                        "circuit to Redis open: store calls fail at once, the cache passes through",
                    )
                }
            }
        };
        Box::pin(std::future::ready(output))
    }
}

#[cfg(test)]
mod tests {
    use super::server_version;

    #[test]
    fn the_version_is_read_from_info() {
        let info = "# Server\r\nredis_version:6.2.14\r\nredis_git_sha1:00000000\r\n";
        assert_eq!(server_version(info), Some("6.2.14"));
        assert_eq!(
            server_version("# Server\r\nredis_mode:standalone\r\n"),
            None
        );
        assert_eq!(server_version("redis_version:\r\n"), None);
    }
}
