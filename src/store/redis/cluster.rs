//! A Redis Cluster seen node by node (feature `redis-cluster`): the store's own slot map, one
//! connection and one circuit breaker per node.
//!
//! - The slot map comes from `CLUSTER SLOTS`, asked of every known node at once (the first
//!   answer wins, so a hung node costs nothing), at the first command, after a `MOVED`, when a
//!   node times out or its breaker is open (at most every [`REFRESH_WHILE_FAILING`]), and
//!   every [`REFRESH_EVERY`] otherwise. So a failover is followed while the old master still
//!   hangs: its replica, once promoted, gets the slots' commands within one refresh.
//! - Each command goes to the master of its key's slot, each pipeline of a batch to the master
//!   of its slot, over that node's own multiplexed, self-reconnecting connection.
//! - Each node has its own breaker: a hung master turns off its own slots, and the others keep
//!   answering. Its probe is a background `PING` ([`Cluster::probe`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError, RedisResult, Value};

use super::routing::{Timeouts, backend_down, routing_key, slot};
use crate::instruments::CallResult;
use crate::store::breaker::{Breaker, BreakerSettings};
use crate::store::stats::BreakerState;

/// Least time between two slot-map refreshes while a node fails.
const REFRESH_WHILE_FAILING: Duration = Duration::from_millis(250);
/// Time between two slot-map refreshes otherwise.
const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// The indices of a batch's commands that go together, and the slot they hash to (`None`:
/// no key).
pub(crate) type SlotGroup = (Option<u16>, Vec<usize>);

/// One node: its address, connection and breaker.
pub(crate) struct Node {
    pub(crate) host: String,
    pub(crate) port: u16,
    conn: ConnectionManager,
    breaker: Option<Breaker>,
    /// Its calls and their durations on the `metrics` facade, labelled `host:port`.
    calls: crate::instruments::NodeCalls,
}

impl Node {
    pub(crate) fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub(crate) fn state(&self) -> BreakerState {
        self.breaker
            .as_ref()
            .map_or(BreakerState::Closed, Breaker::state)
    }

    fn is_open(&self) -> bool {
        self.breaker.as_ref().is_some_and(Breaker::is_open)
    }
}

/// Which master serves which slots.
#[derive(Default)]
struct Topology {
    /// `(first, last, master)`, sorted by `first`.
    ranges: Vec<(u16, u16, Arc<Node>)>,
}

impl Topology {
    fn master_of(&self, slot: u16) -> Option<&Arc<Node>> {
        let i = self.ranges.partition_point(|(first, _, _)| *first <= slot);
        let (_, last, node) = self.ranges.get(i.checked_sub(1)?)?;
        (slot <= *last).then_some(node)
    }

    fn masters(&self) -> Vec<Arc<Node>> {
        let mut masters: Vec<Arc<Node>> = Vec::new();
        for (_, _, node) in &self.ranges {
            if !masters.iter().any(|m| Arc::ptr_eq(m, node)) {
                masters.push(node.clone());
            }
        }
        masters
    }
}

/// Nodes, slot map and the settings to reach new nodes with; see the [module docs](self).
pub(crate) struct Cluster {
    /// `redis://user:pw@` or `rediss://...@`: what a node's address is put after.
    url_prefix: String,
    seeds: Vec<(String, u16)>,
    timeouts: Timeouts,
    breaker: Option<BreakerSettings>,
    nodes: Mutex<HashMap<(String, u16), Arc<Node>>>,
    topology: RwLock<Arc<Topology>>,
    /// Held while the slot map is asked for; its value is when it last was (ms since start).
    refresh: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    refreshes: AtomicU64,
    /// Bumped each time a node's probe closes its breaker.
    closed: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("seeds", &self.seeds)
            .finish_non_exhaustive()
    }
}

fn circuit_open(node: &Node) -> RedisError {
    RedisError::from((
        ErrorKind::Client,
        "circuit open",
        format!("circuit open: Redis Cluster node {}", node.address()),
    ))
}

/// Whether `e` is a node's breaker refusing a call (see [`Cluster`]).
pub(crate) fn is_circuit_open(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Client && e.detail().is_some_and(|d| d.starts_with("circuit open"))
}

fn timed_out() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "Redis Cluster node did not answer in time",
    ))
}

fn no_node(slot: u16) -> RedisError {
    RedisError::from((
        ErrorKind::ClusterConnectionNotFound,
        "no node serves the slot",
        format!("slot {slot}"),
    ))
}

/// Splits `redis://user:pw@host:port` into the prefix and the address.
fn split_url(url: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let (auth, address) = match rest.rsplit_once('@') {
        Some((auth, address)) => (format!("{auth}@"), address),
        None => (String::new(), rest),
    };
    let address = address.trim_end_matches('/');
    let (host, port) = address.rsplit_once(':')?;
    Some((
        format!("{scheme}://{auth}"),
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port.parse().ok()?,
    ))
}

/// One slot range of a `CLUSTER SLOTS` reply: first and last slot, then the master's address
/// and its replicas'.
type SlotRange = (u16, u16, Vec<(String, u16)>);

/// Parses a `CLUSTER SLOTS` reply: `[[first, last, [host, port, id], [replica...]...]...]`.
/// An empty host means the node that answered.
fn parse_slots(reply: Value, asked: &str) -> Option<Vec<SlotRange>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let mut parsed = Vec::new();
    for range in ranges {
        let Value::Array(parts) = range else {
            return None;
        };
        let first = u16::from_redis_value(parts.first()?.clone()).ok()?;
        let last = u16::from_redis_value(parts.get(1)?.clone()).ok()?;
        let mut nodes = Vec::new();
        for node in parts.iter().skip(2) {
            let Value::Array(node) = node else { continue };
            let host = String::from_redis_value(node.first()?.clone()).ok()?;
            let port = u16::from_redis_value(node.get(1)?.clone()).ok()?;
            let host = if host.is_empty() || host == "?" {
                asked.to_owned()
            } else {
                host
            };
            nodes.push((host, port));
        }
        if !nodes.is_empty() {
            parsed.push((first, last, nodes));
        }
    }
    Some(parsed)
}

impl Cluster {
    /// A Cluster reached through `seeds` (node URLs); connects nothing yet.
    pub(crate) fn new(
        seeds: &[String],
        timeouts: Timeouts,
        breaker: Option<BreakerSettings>,
    ) -> RedisResult<Arc<Self>> {
        let mut url_prefix = None;
        let mut addresses = Vec::new();
        for seed in seeds {
            let (prefix, host, port) = split_url(seed).ok_or_else(|| {
                RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "a Cluster node URL needs host:port",
                    seed.clone(),
                ))
            })?;
            url_prefix.get_or_insert(prefix);
            addresses.push((host, port));
        }
        let cluster = Arc::new(Cluster {
            url_prefix: url_prefix.unwrap_or_else(|| "redis://".into()),
            seeds: addresses.clone(),
            timeouts,
            breaker,
            nodes: Mutex::new(HashMap::new()),
            topology: RwLock::new(Arc::new(Topology::default())),
            refresh: tokio::sync::Mutex::new(None),
            refreshes: AtomicU64::new(0),
            closed: tokio::sync::watch::Sender::new(0),
        });
        for (host, port) in addresses {
            cluster.node(&host, port)?;
        }
        Ok(cluster)
    }

    /// The node at `host:port`, made (not connected) the first time it is named.
    fn node(&self, host: &str, port: u16) -> RedisResult<Arc<Node>> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(node) = nodes.get(&(host.to_owned(), port)) {
            return Ok(node.clone());
        }
        let host_part = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let client = redis::Client::open(format!("{}{host_part}:{port}", self.url_prefix))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeouts.connect))
            .set_response_timeout(Some(self.timeouts.response))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        let node = Arc::new(Node {
            host: host.to_owned(),
            port,
            conn,
            breaker: self.breaker.map(|settings| {
                Breaker::new(format!("redis cluster node {host}:{port}"), settings)
            }),
            calls: crate::instruments::NodeCalls::new(format!("{host}:{port}")),
        });
        nodes.insert((host.to_owned(), port), node.clone());
        Ok(node)
    }

    fn topology(&self) -> Arc<Topology> {
        self.topology
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Asks every known node not behind an open breaker for the slot map at once and takes
    /// the first answer; skipped when the map is younger than `min_age`.
    async fn refresh(&self, min_age: Duration) -> RedisResult<()> {
        let mut last = self.refresh.lock().await;
        self.refresh_locked(&mut last, min_age).await
    }

    async fn refresh_locked(
        &self,
        last: &mut Option<tokio::time::Instant>,
        min_age: Duration,
    ) -> RedisResult<()> {
        if last.is_some_and(|at| at.elapsed() < min_age)
            || (min_age.is_zero() && !self.topology().ranges.is_empty())
        {
            return Ok(());
        }
        // Stamped before asking: a refresh that fails is not retried by every caller at once.
        *last = Some(tokio::time::Instant::now());
        let mut candidates: Vec<Arc<Node>> = {
            let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            nodes.values().cloned().collect()
        };
        if candidates.iter().any(|n| !n.is_open()) {
            candidates.retain(|n| !n.is_open());
        }
        let bound = self.timeouts.connect + self.timeouts.response;
        let asks = candidates.into_iter().map(|node| {
            Box::pin(async move {
                let mut conn = node.conn.clone();
                let mut cmd = redis::cmd("CLUSTER");
                cmd.arg("SLOTS");
                match tokio::time::timeout(bound, cmd.query_async::<Value>(&mut conn)).await {
                    Ok(Ok(reply)) => parse_slots(reply, &node.host).ok_or_else(|| {
                        RedisError::from((ErrorKind::Parse, "unexpected CLUSTER SLOTS reply"))
                    }),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(timed_out()),
                }
            })
        });
        let asks: Vec<_> = asks.collect();
        if asks.is_empty() {
            return Err(no_node(0));
        }
        let (ranges, _) = futures_util::future::select_ok(asks).await?;
        let mut map = Vec::with_capacity(ranges.len());
        for (first, last, nodes) in ranges {
            let mut made = nodes
                .iter()
                .map(|(host, port)| self.node(host, *port))
                .collect::<RedisResult<Vec<_>>>()?;
            map.push((first, last, made.swap_remove(0)));
        }
        map.sort_by_key(|(first, _, _)| *first);
        let changed = {
            let old = self.topology();
            old.ranges.len() != map.len()
                || old
                    .ranges
                    .iter()
                    .zip(&map)
                    .any(|(a, b)| a.0 != b.0 || a.1 != b.1 || !Arc::ptr_eq(&a.2, &b.2))
        };
        if changed {
            let topology = Arc::new(Topology { ranges: map });
            if self.refreshes.fetch_add(1, Relaxed) > 0 {
                let masters: Vec<String> = topology.masters().iter().map(|m| m.address()).collect();
                tracing::info!(?masters, "redis cluster: slot map changed");
            }
            *self.topology.write().unwrap_or_else(|e| e.into_inner()) = topology;
        }
        Ok(())
    }

    /// Refreshes the slot map in the background (a node failed, or answered `MOVED`).
    fn refresh_soon(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let cluster = self.clone();
        runtime.spawn(async move {
            // One refresh at a time; callers that find one under way rely on it.
            let Ok(mut last) = cluster.refresh.try_lock() else {
                return;
            };
            if let Err(e) = cluster
                .refresh_locked(&mut last, REFRESH_WHILE_FAILING)
                .await
            {
                tracing::debug!(error = %e, "redis cluster: slot map refresh failed");
            }
        });
    }

    /// The master of `slot`, asking for the slot map first if there is none yet.
    async fn master_of(&self, slot: u16) -> RedisResult<Arc<Node>> {
        if let Some(node) = self.topology().master_of(slot) {
            return Ok(node.clone());
        }
        self.refresh(Duration::ZERO).await?;
        self.topology()
            .master_of(slot)
            .cloned()
            .ok_or_else(|| no_node(slot))
    }

    /// Slot groups of a batch merged per master (each keeps its first slot, to route by): a
    /// batch of many keys costs one pipeline per master, not one per slot. Groups with no
    /// slot, or whose master is not known, stay as they are.
    pub(crate) async fn by_master(&self, groups: Vec<SlotGroup>) -> Vec<SlotGroup> {
        let mut merged: Vec<(SlotGroup, Option<Arc<Node>>)> = Vec::new();
        for (slot, indices) in groups {
            let master = match slot {
                Some(slot) => self.master_of(slot).await.ok(),
                None => None,
            };
            let same = merged.iter_mut().find(|(_, m)| match (m, &master) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            });
            match same {
                Some(((_, group), _)) => group.extend(indices),
                None => merged.push(((slot, indices), master)),
            }
        }
        merged.into_iter().map(|(group, _)| group).collect()
    }

    /// Whether the breaker of the master that serves `key` (as far as the slot map knows)
    /// refuses a call now; a refusal is counted.
    pub(crate) fn refuses(&self, key: &[u8]) -> bool {
        let topology = self.topology();
        let Some(node) = topology.master_of(slot(key)) else {
            return false;
        };
        node.breaker
            .as_ref()
            .is_some_and(|b| b.is_open() && b.admit().is_err())
    }

    /// Every master, for a walk of the whole keyspace.
    pub(crate) async fn masters(&self) -> RedisResult<Vec<Arc<Node>>> {
        if self.topology().ranges.is_empty() {
            self.refresh(Duration::ZERO).await?;
        }
        Ok(self.topology().masters())
    }

    /// Some master whose breaker is closed (or any), for questions every node answers alike.
    async fn any_master(&self) -> RedisResult<Arc<Node>> {
        let masters = self.masters().await?;
        masters
            .iter()
            .find(|n| !n.is_open())
            .or(masters.first())
            .cloned()
            .ok_or_else(|| no_node(0))
    }

    /// The node at `host:port`, if known.
    pub(crate) fn known(&self, host: &str, port: u16) -> Option<Arc<Node>> {
        self.nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(host.to_owned(), port))
            .cloned()
    }

    /// Runs `call` on `node` under its breaker and the response timeout. A node that does not
    /// answer counts against its breaker and has the slot map asked for again.
    async fn on_node<T, F, Fut>(self: &Arc<Self>, node: &Node, call: F) -> RedisResult<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let ticket = match node.breaker.as_ref().map(Breaker::admit) {
            Some(Err(_)) => {
                node.calls.record(CallResult::BreakerOpen, Duration::ZERO);
                return Err(circuit_open(node));
            }
            Some(Ok(ticket)) => Some(ticket),
            None => None,
        };
        let began = tokio::time::Instant::now();
        let result = tokio::time::timeout(self.timeouts.response, call(node.conn.clone()))
            .await
            .unwrap_or_else(|_| Err(timed_out()));
        let down = match &result {
            Ok(_) => false,
            Err(e) => e.is_timeout() || backend_down(e),
        };
        let outcome = match &result {
            Ok(_) => CallResult::Ok,
            Err(e) if e.is_timeout() => CallResult::Timeout,
            Err(_) => CallResult::Error,
        };
        node.calls.record(outcome, began.elapsed());
        if let Some(ticket) = ticket {
            if down {
                ticket.failure();
            } else {
                ticket.success();
            }
        }
        if down {
            self.refresh_soon();
        }
        result
    }

    /// Runs `call` on the master of `slot`; after a `MOVED` (a slot that moved since the map
    /// was read), once more on the node it names, and the map is asked for again.
    async fn on_slot<T, F, Fut>(self: &Arc<Self>, slot: u16, call: F) -> RedisResult<T>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let node = self.master_of(slot).await?;
        match self.on_node(&node, &call).await {
            Err(e) if e.redirect_node().is_some() => {
                self.refresh_soon();
                let (address, _) = e.redirect_node().expect("checked");
                let Some((host, port)) = address
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
                else {
                    return Err(e);
                };
                let target = self.node(&host, port)?;
                self.on_node(&target, &call).await
            }
            other => other,
        }
    }

    /// One command, to the master of its key's slot (any master for a command with no key).
    pub(crate) async fn command(self: &Arc<Self>, cmd: &Cmd) -> RedisResult<Value> {
        match routing_key(cmd) {
            Some(key) => {
                self.on_slot(slot(&key), |mut conn| async move {
                    conn.req_packed_command(cmd).await
                })
                .await
            }
            None => {
                let node = self.any_master().await?;
                self.on_node(&node, |mut conn| async move {
                    conn.req_packed_command(cmd).await
                })
                .await
            }
        }
    }

    /// One command to the master of `slot`.
    pub(crate) async fn command_at(self: &Arc<Self>, slot: u16, cmd: &Cmd) -> RedisResult<Value> {
        self.on_slot(slot, |mut conn| async move {
            conn.req_packed_command(cmd).await
        })
        .await
    }

    /// One command to a given node.
    pub(crate) async fn command_on(self: &Arc<Self>, node: &Node, cmd: &Cmd) -> RedisResult<Value> {
        self.on_node(node, |mut conn| async move {
            conn.req_packed_command(cmd).await
        })
        .await
    }

    /// One command to any master.
    pub(crate) async fn command_anywhere(self: &Arc<Self>, cmd: &Cmd) -> RedisResult<Value> {
        let node = self.any_master().await?;
        self.command_on(&node, cmd).await
    }

    /// A pipeline whose keys all hash to `slot`, to its master; every reply, in order.
    pub(crate) async fn pipeline(
        self: &Arc<Self>,
        slot: Option<u16>,
        pipe: &Pipeline,
    ) -> RedisResult<Vec<Value>> {
        let call = |mut conn: ConnectionManager| async move {
            pipe.query_async::<Vec<Value>>(&mut conn).await
        };
        match slot {
            Some(slot) => self.on_slot(slot, call).await,
            None => {
                let node = self.any_master().await?;
                self.on_node(&node, call).await
            }
        }
    }

    /// A raw pipeline (`ConnectionLike`), routed by its first key.
    pub(crate) async fn packed_commands(
        self: &Arc<Self>,
        pipe: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let slot = pipe.cmd_iter().find_map(routing_key).map(|key| slot(&key));
        let call = |mut conn: ConnectionManager| async move {
            conn.req_packed_commands(pipe, offset, count).await
        };
        match slot {
            Some(slot) => self.on_slot(slot, call).await,
            None => {
                let node = self.any_master().await?;
                self.on_node(&node, call).await
            }
        }
    }

    /// Sends each open breaker's probe (a `PING` to its node) once its cool-down has passed,
    /// and asks for the slot map again: soon while a master fails, every
    /// [`REFRESH_EVERY`] otherwise. The store's background task calls it.
    pub(crate) async fn probe(self: &Arc<Self>) {
        let nodes: Vec<Arc<Node>> = {
            let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            nodes.values().cloned().collect()
        };
        let failing = self.topology().masters().iter().any(|n| n.is_open());
        let timeout = self.timeouts.response;
        let probes = nodes.iter().filter_map(|node| {
            let ticket = node.breaker.as_ref()?.probe()?;
            let mut conn = node.conn.clone();
            Some(async move {
                let ping = redis::cmd("PING");
                match tokio::time::timeout(timeout, ping.query_async::<Value>(&mut conn)).await {
                    Ok(Ok(_)) => ticket.success(),
                    Ok(Err(e)) if !backend_down(&e) => ticket.success(),
                    _ => {
                        ticket.failure();
                        return false;
                    }
                }
                true
            })
        });
        let closed = futures_util::future::join_all(probes).await;
        if closed.contains(&true) {
            self.closed.send_modify(|n| *n += 1);
        }
        let min_age = if failing {
            REFRESH_WHILE_FAILING
        } else {
            REFRESH_EVERY
        };
        if let Err(e) = self.refresh(min_age).await {
            tracing::debug!(error = %e, "redis cluster: slot map refresh failed");
        }
    }

    /// Node URLs to seed a new client with: the masters whose breakers are closed, after
    /// asking for the slot map again (a failover may have happened), then the other nodes
    /// that answer.
    pub(crate) async fn live_seeds(&self) -> Vec<String> {
        let _ = self.refresh(REFRESH_WHILE_FAILING).await;
        let masters = self.topology().masters();
        let others: Vec<Arc<Node>> = {
            let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            nodes.values().cloned().collect()
        };
        let mut seeds: Vec<String> = Vec::new();
        for node in masters.iter().chain(&others) {
            let url = format!("{}{}", self.url_prefix, node.address());
            if !node.is_open() && !seeds.contains(&url) {
                seeds.push(url);
            }
        }
        seeds
    }

    /// Changes each time a node's breaker closes.
    #[cfg(feature = "memory")]
    pub(crate) fn closings(&self) -> tokio::sync::watch::Receiver<u64> {
        self.closed.subscribe()
    }

    /// The masters and the state of their breakers, by address.
    pub(crate) fn master_states(&self) -> Vec<(String, BreakerState)> {
        self.topology()
            .masters()
            .iter()
            .map(|m| (m.address(), m.state()))
            .collect()
    }

    /// The worst state of the masters' breakers (`None` without breakers).
    pub(crate) fn breaker_state(&self) -> Option<BreakerState> {
        self.breaker?;
        let rank = |s: &BreakerState| match s {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        };
        Some(
            self.topology()
                .masters()
                .iter()
                .map(|m| m.state())
                .max_by_key(rank)
                .unwrap_or(BreakerState::Closed),
        )
    }

    /// Calls refused by the nodes' breakers, and times they opened.
    pub(crate) fn breaker_counts(&self) -> (u64, u64) {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes
            .values()
            .filter_map(|n| n.breaker.as_ref())
            .fold((0, 0), |(rejected, opened), b| {
                (rejected + b.rejected(), opened + b.opened())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_url_splits_into_prefix_and_address() {
        assert_eq!(
            split_url("redis://u:p@127.0.0.1:7000"),
            Some(("redis://u:p@".into(), "127.0.0.1".into(), 7000))
        );
        assert_eq!(
            split_url("rediss://h:7001/"),
            Some(("rediss://".into(), "h".into(), 7001))
        );
        assert_eq!(split_url("redis://h"), None);
    }
}
