//! Store configuration from presets and environment variables.

use std::time::Duration;

use super::{BoxStore, SetOptions, StoreConfigError, StoreConfigErrorKind};

/// Presets matching the original design's cache-manager profiles.
///
/// | preset | L1 (memory) | L2 (Redis) | TTL | L1 TTL | grace |
/// |---|---|---|---|---|---|
/// | `Aggressive` | yes | yes | 1 h | 5 min | 1 h |
/// | `Moderate` | yes | yes | 5 min | 1 min | 5 min |
/// | `Light` | yes | yes | 1 min | 10 s | 30 s |
/// | `MemoryOnly` | yes | no | 5 min | - | 5 min |
/// | `Distributed` | no | yes | 5 min | - | 5 min |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Preset {
    /// Long TTLs and both tiers: read-heavy data that changes rarely.
    Aggressive,
    /// Balanced defaults.
    Moderate,
    /// Short TTLs: data that changes often.
    Light,
    /// One process, no Redis.
    MemoryOnly,
    /// Redis only: every instance reads the same copy, no local staleness.
    Distributed,
}

/// How to build a store: which tiers, where Redis is, and the default entry options.
///
/// ```
/// use tower_strata::store::{Preset, StoreConfig, StoreConfigErrorKind};
///
/// let env = |name: &str| match name {
///     "CACHE_TTL" => Some("120".to_string()),
///     "ENABLE_REDIS_CACHE" => Some("false".to_string()),
///     _ => None,
/// };
/// let config = StoreConfig::from_lookup(env).unwrap();
/// assert!(config.local && !config.redis);
/// assert_eq!(config.ttl.as_secs(), 120);
///
/// let bad = |name: &str| (name == "CACHE_TTL").then(|| "soon".to_string());
/// let err = StoreConfig::from_lookup(bad).unwrap_err();
/// assert_eq!(err.kind(), StoreConfigErrorKind::Variable("CACHE_TTL"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreConfig {
    /// Use an in-process L1.
    pub local: bool,
    /// Use Redis (L2).
    pub redis: bool,
    /// Redis URL.
    pub redis_url: String,
    /// Namespace prefix in Redis.
    pub namespace: String,
    /// Default TTL of entries.
    pub ttl: Duration,
    /// Longest life of an L1 copy when both tiers are on.
    pub l1_ttl: Duration,
    /// Default grace period.
    pub grace: Duration,
    /// L1 capacity in bytes.
    pub memory_capacity: u64,
}

impl StoreConfig {
    /// The configuration of a preset, with Redis at `redis://127.0.0.1:6379`.
    pub fn preset(preset: Preset) -> Self {
        let (local, redis, ttl, l1_ttl, grace) = match preset {
            Preset::Aggressive => (true, true, 3600, 300, 3600),
            Preset::Moderate => (true, true, 300, 60, 300),
            Preset::Light => (true, true, 60, 10, 30),
            Preset::MemoryOnly => (true, false, 300, 300, 300),
            Preset::Distributed => (false, true, 300, 0, 300),
        };
        StoreConfig {
            local,
            redis,
            redis_url: "redis://127.0.0.1:6379".into(),
            namespace: "strata".into(),
            ttl: Duration::from_secs(ttl),
            l1_ttl: Duration::from_secs(l1_ttl),
            grace: Duration::from_secs(grace),
            memory_capacity: 256 * 1024 * 1024,
        }
    }

    /// Reads the process environment over the `Moderate` preset; see
    /// [`StoreConfig::from_lookup`].
    ///
    /// # Errors
    ///
    /// A [`StoreConfigError`] naming the first bad variable.
    pub fn from_env() -> Result<Self, StoreConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads `REDIS_CLUSTER_NODES` (a Redis Cluster's seed nodes, comma-separated
    /// `host:port`, with `REDIS_PASSWORD`; it wins over the rest), `REDIS_URL` (or
    /// `REDIS_HOST`, `REDIS_PORT`, `REDIS_PASSWORD`), `CACHE_TTL` (seconds), `ENABLE_LOCAL_CACHE` and `ENABLE_REDIS_CACHE` (`true`/`false`, `1`/`0`,
    /// `yes`/`no`) through `lookup`, over the `Moderate` preset.
    ///
    /// # Errors
    ///
    /// A [`StoreConfigError`] naming the first bad variable, or `ENABLE_LOCAL_CACHE` when both
    /// tiers are turned off.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, StoreConfigError> {
        let mut config = Self::preset(Preset::Moderate);
        let bad = |var: &'static str, value: &str, reason: &str| {
            StoreConfigError::new(
                StoreConfigErrorKind::Variable(var),
                format!("{var}={value:?}: {reason}"),
            )
        };
        let flag = |var: &'static str| -> Result<Option<bool>, StoreConfigError> {
            match lookup(var) {
                None => Ok(None),
                Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                    "1" | "true" | "yes" | "on" => Ok(Some(true)),
                    "0" | "false" | "no" | "off" => Ok(Some(false)),
                    _ => Err(bad(var, &v, "expected true or false")),
                },
            }
        };
        if let Some(local) = flag("ENABLE_LOCAL_CACHE")? {
            config.local = local;
        }
        if let Some(redis) = flag("ENABLE_REDIS_CACHE")? {
            config.redis = redis;
        }
        if let Some(ttl) = lookup("CACHE_TTL") {
            let secs: u64 = ttl
                .trim()
                .parse()
                .map_err(|_| bad("CACHE_TTL", &ttl, "expected whole seconds"))?;
            if secs == 0 {
                return Err(bad("CACHE_TTL", &ttl, "must be at least 1 second"));
            }
            config.ttl = Duration::from_secs(secs);
            config.l1_ttl = config.l1_ttl.min(config.ttl);
        }
        let auth = || match lookup("REDIS_PASSWORD") {
            Some(pw) if !pw.is_empty() => format!(":{}@", percent_encode(&pw)),
            _ => String::new(),
        };
        if let Some(nodes) = lookup("REDIS_CLUSTER_NODES") {
            let mut list = Vec::new();
            for node in nodes.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let valid = node.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty()
                        && !host.contains(['/', '@', ' '])
                        && port.parse::<u16>().is_ok_and(|p| p != 0)
                });
                if !valid {
                    return Err(bad(
                        "REDIS_CLUSTER_NODES",
                        &nodes,
                        "expected comma-separated host:port pairs",
                    ));
                }
                list.push(node);
            }
            if list.is_empty() {
                return Err(bad("REDIS_CLUSTER_NODES", &nodes, "names no node"));
            }
            config.redis_url = format!("redis-cluster://{}{}", auth(), list.join(","));
        } else if let Some(url) = lookup("REDIS_URL") {
            let cluster =
                url.starts_with("redis-cluster://") || url.starts_with("rediss-cluster://");
            if !cluster && redis::parse_redis_url(&url).is_none() {
                return Err(bad("REDIS_URL", &url, "not a redis:// URL"));
            }
            config.redis_url = url;
        } else if lookup("REDIS_HOST").is_some() || lookup("REDIS_PORT").is_some() {
            let host = lookup("REDIS_HOST").unwrap_or_else(|| "127.0.0.1".into());
            if host.is_empty() || host.contains(['/', '@', ' ']) {
                return Err(bad("REDIS_HOST", &host, "not a host name"));
            }
            let port = match lookup("REDIS_PORT") {
                Some(p) => p
                    .trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| bad("REDIS_PORT", &p, "expected a port number 1-65535"))?,
                None => 6379,
            };
            config.redis_url = format!("redis://{}{host}:{port}", auth());
        }
        if !config.local && !config.redis {
            return Err(bad(
                "ENABLE_LOCAL_CACHE",
                "false",
                "ENABLE_LOCAL_CACHE and ENABLE_REDIS_CACHE are both off: no cache to use",
            ));
        }
        Ok(config)
    }

    /// The default entry options: TTL and grace.
    pub fn set_options(&self) -> SetOptions {
        SetOptions::new().ttl(self.ttl).grace(self.grace)
    }

    /// Builds the store: memory, Redis or tiered. Redis is connected lazily, so this never
    /// blocks; a down Redis shows in health checks and store stats, not here.
    ///
    /// # Errors
    ///
    /// A [`StoreConfigError`] when Redis is asked for but the `redis` feature (or, for two
    /// tiers, `memory`) is off, or when not in a Tokio runtime.
    pub fn build(&self) -> Result<BoxStore, StoreConfigError> {
        #[cfg(feature = "memory")]
        let memory = || {
            super::MemoryStore::builder()
                .capacity_bytes(self.memory_capacity)
                .build()
        };
        match (self.local, self.redis) {
            #[cfg(feature = "memory")]
            (true, false) => Ok(BoxStore::new(memory())),
            #[cfg(feature = "redis")]
            (false, true) => Ok(BoxStore::new(
                super::RedisStore::builder(&self.redis_url)
                    .namespace(&self.namespace)
                    .build()?,
            )),
            #[cfg(all(feature = "memory", feature = "redis"))]
            (true, true) => {
                let l2 = super::RedisStore::builder(&self.redis_url)
                    .namespace(&self.namespace)
                    .build()?;
                Ok(BoxStore::new(
                    super::TieredStore::builder(memory(), l2)
                        .l1_ttl(Some(self.l1_ttl))
                        .build()?,
                ))
            }
            (local, redis) => Err(StoreConfigError::new(
                StoreConfigErrorKind::FeatureDisabled,
                format!("local={local}, redis={redis} needs features that are not enabled"),
            )),
        }
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn defaults_are_the_moderate_preset() {
        assert_eq!(
            StoreConfig::from_lookup(env(&[])).unwrap(),
            StoreConfig::preset(Preset::Moderate)
        );
    }

    #[test]
    fn cluster_nodes_win_and_are_checked() {
        let c = StoreConfig::from_lookup(env(&[
            (
                "REDIS_CLUSTER_NODES",
                "10.0.0.1:7000, 10.0.0.2:7001,10.0.0.3:7002",
            ),
            ("REDIS_PASSWORD", "pw"),
            ("REDIS_URL", "redis://ignored:6379"),
        ]))
        .unwrap();
        assert_eq!(
            c.redis_url,
            "redis-cluster://:pw@10.0.0.1:7000,10.0.0.2:7001,10.0.0.3:7002"
        );
        for bad in [
            "",
            "10.0.0.1",
            "10.0.0.1:0",
            "10.0.0.1:7000,h:port",
            "a/b:1",
        ] {
            let err = StoreConfig::from_lookup(env_owned("REDIS_CLUSTER_NODES", bad)).unwrap_err();
            assert_eq!(
                err.kind(),
                StoreConfigErrorKind::Variable("REDIS_CLUSTER_NODES"),
                "{bad:?}"
            );
        }
    }

    fn env_owned(name: &'static str, value: &'static str) -> impl Fn(&str) -> Option<String> {
        move |n| (n == name).then(|| value.to_owned())
    }

    #[test]
    fn host_port_password() {
        let c = StoreConfig::from_lookup(env(&[
            ("REDIS_HOST", "cache.local"),
            ("REDIS_PORT", "6380"),
            ("REDIS_PASSWORD", "p@ss:w/rd"),
        ]))
        .unwrap();
        assert_eq!(c.redis_url, "redis://:p%40ss%3Aw%2Frd@cache.local:6380");
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (vars, var) in [
            (&[("CACHE_TTL", "ten")][..], "CACHE_TTL"),
            (&[("CACHE_TTL", "0")][..], "CACHE_TTL"),
            (&[("ENABLE_LOCAL_CACHE", "maybe")][..], "ENABLE_LOCAL_CACHE"),
            (&[("ENABLE_REDIS_CACHE", "2")][..], "ENABLE_REDIS_CACHE"),
            (&[("REDIS_URL", "http://x")][..], "REDIS_URL"),
            (&[("REDIS_PORT", "70000")][..], "REDIS_PORT"),
            (&[("REDIS_HOST", "a/b")][..], "REDIS_HOST"),
            (
                &[("ENABLE_LOCAL_CACHE", "no"), ("ENABLE_REDIS_CACHE", "no")][..],
                "ENABLE_LOCAL_CACHE",
            ),
        ] {
            let vars: &'static [(&'static str, &'static str)] =
                Box::leak(vars.to_vec().into_boxed_slice());
            assert_eq!(
                StoreConfig::from_lookup(env(vars)).unwrap_err().kind(),
                StoreConfigErrorKind::Variable(var)
            );
        }
    }
}
