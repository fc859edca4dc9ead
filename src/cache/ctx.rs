//! What every step of a request reads: the layer's settings ([`Config`]) and the shared
//! handles ([`Ctx`]: the store, the settings, the in-process state). A leaf of the module: it
//! uses no step, and every step uses it.

use std::sync::Arc;
use std::time::Duration;

use http::Method;

use super::key::{KeyConfig, PrimaryKey};
use super::lease::DistributedLease;
use super::policy::PolicyConfig;
use super::state::Shared;

/// Everything a request needs, shared by the service's clones.
pub(crate) struct Ctx<St> {
    pub store: Arc<St>,
    /// The private scope's store, when it has one of its own (else `store` holds its entries).
    pub private_store: Option<Arc<St>>,
    pub config: Config,
    pub shared: Arc<Shared>,
}

impl<St> Ctx<St> {
    /// The store that holds the entries of `key`: the private store for a private scope's
    /// key when there is one, else the shared store.
    pub(crate) fn store_for(&self, key: &PrimaryKey) -> &Arc<St> {
        match (&self.private_store, key.principal()) {
            (Some(private), Some(_)) => private,
            _ => &self.store,
        }
    }
}

/// A gRPC method the cache stores answers of.
#[derive(Clone, Debug)]
pub(crate) struct GrpcMethod {
    pub path: String,
    pub ttl: Duration,
    /// The answer does not depend on the caller: calls with credentials share it too.
    pub public: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub max_body_size: usize,
    pub policy: PolicyConfig,
    /// Whether HEAD is answered from stored GET responses (GET always is).
    pub head: bool,
    pub routes: Option<Vec<String>>,
    pub swr: Option<Duration>,
    pub sie: Option<Duration>,
    pub stale_retention: Duration,
    pub coalesce: bool,
    pub coalesce_timeout: Duration,
    pub hit_for_pass: Option<Duration>,
    pub ttl_jitter: Duration,
    pub cache_status: bool,
    pub strip_tag_headers: bool,
    pub key: KeyConfig,
    pub upstream_timeout: Option<Duration>,
    pub grpc_methods: Vec<GrpcMethod>,
    pub lease: Option<DistributedLease>,
    /// The last fraction of an entry's TTL in which a hit refreshes it in the background.
    pub refresh_ahead: Option<f64>,
}

impl Config {
    /// How long a fetch may be in flight, so how long an invalidation's stamp must hide it
    /// from other instances (see `stamp`): twice the upstream timeout, or five minutes without
    /// one.
    pub(crate) fn fill_window(&self) -> Duration {
        self.upstream_timeout
            .map_or(Duration::from_secs(300), |t| t.saturating_mul(2))
    }

    /// Whether an entry of store TTL `ttl` and age `age` is in its refresh-ahead window (the
    /// last fraction of its TTL), so a hit refreshes it in the background.
    pub(crate) fn in_refresh_window(&self, ttl: Duration, age: Duration) -> bool {
        self.refresh_ahead
            .is_some_and(|fraction| age < ttl && ttl - age <= ttl.mul_f64(fraction))
    }

    /// Whether a request with this method is looked up in the cache at all.
    pub(crate) fn looks_up(&self, method: &Method) -> bool {
        method == Method::GET || (self.head && method == Method::HEAD)
    }
}
