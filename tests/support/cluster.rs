//! A private three-master Redis Cluster on free loopback ports, started with `redis-server
//! --cluster-enabled yes` per node and `redis-cli --cluster create`, stopped by PID.

#![allow(dead_code)] // each test binary uses part of it

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// One node: its port (the cluster bus is on `port + 10000`), its process id, and the guard
/// shell that started it. The guard kills the node when its stdin closes, so a cluster kept in
/// a `static` (never dropped) still goes when the test binary exits.
struct Node {
    port: u16,
    pid: Option<u32>,
    guard: Option<Child>,
}

impl Node {
    fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
        if let Some(mut guard) = self.guard.take() {
            drop(guard.stdin.take());
            let _ = guard.wait();
        }
    }
}

/// A running cluster. Dropping it kills every node and removes its directory.
pub struct PrivateCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
    /// Replicated clusters take turns in a test binary (see [`FailoverTurn`]).
    _turn: Option<FailoverTurn>,
}

/// One replicated cluster at a time per test binary: their tests time failovers, and several
/// six-node clusters electing at once on a two-core machine slow each other past the bounds
/// they measure. Released when the cluster is dropped.
struct FailoverTurn;

static FAILOVER_BUSY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl FailoverTurn {
    fn take() -> Self {
        use std::sync::atomic::Ordering;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        while FAILOVER_BUSY
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "waited 300 s for another replicated cluster"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        FailoverTurn
    }
}

impl Drop for FailoverTurn {
    fn drop(&mut self) {
        FAILOVER_BUSY.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// A port that is free, and whose cluster-bus port (`+ 10000`) is free too, and that no
/// cluster of this test binary had before: the port of a killed node must not come back as a
/// node of another test's cluster while clients of the first still know it (they would ask
/// the stranger for their slot map).
fn free_cluster_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..200 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        if port > 55_000 || handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

impl PrivateCluster {
    /// Starts three masters and joins them (16384 slots split three ways, no replicas);
    /// returns once every node reports `cluster_state:ok`.
    pub fn start() -> Self {
        Self::start_with(0)
    }

    /// Three masters with one replica each (`cluster-node-timeout 2000`): a master that stops
    /// is replaced by its replica within a few seconds. Returns once every node reports
    /// `cluster_state:ok` and every replica is in sync with its master.
    pub fn start_replicated() -> Self {
        let turn = FailoverTurn::take();
        let mut cluster = Self::start_with(1);
        cluster._turn = Some(turn);
        cluster.wait_replicas();
        cluster
    }

    fn start_with(replicas: usize) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "strata-cluster-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let mut cluster = PrivateCluster {
            nodes: Vec::new(),
            dir,
            _turn: None,
        };
        let mut ports = Vec::new();
        while ports.len() < 3 * (1 + replicas) {
            let port = free_cluster_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        for port in ports {
            let mut node = Node {
                port,
                pid: None,
                guard: None,
            };
            cluster.spawn(&mut node);
            cluster.nodes.push(node);
        }
        for node in &cluster.nodes {
            wait_ping(node.port);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli is installed");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_ok();
        cluster
    }

    fn spawn(&self, node: &mut Node) {
        use std::io::BufRead;
        let port = node.port.to_string();
        let config = format!("nodes-{}.conf", node.port);
        let dir = self.dir.to_str().expect("utf-8 temp dir");
        let mut guard = Command::new("sh")
            .arg("-c")
            .arg(r#"redis-server "$@" >/dev/null 2>&1 & echo $!; read _; kill -9 $! 2>/dev/null"#)
            .arg("sh")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &config,
                "--cluster-node-timeout",
                "2000",
                "--dir",
                dir,
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh and redis-server are installed");
        let mut line = String::new();
        std::io::BufReader::new(guard.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the guard prints the node's pid");
        node.pid = Some(line.trim().parse().expect("a pid"));
        node.guard = Some(guard);
    }

    /// The seed nodes, as `StoreConfig`'s `REDIS_CLUSTER_NODES` takes them.
    pub fn nodes(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The cluster as a store URL: `redis-cluster://127.0.0.1:7000,127.0.0.1:7001,...`.
    pub fn url(&self) -> String {
        format!("redis-cluster://{}", self.nodes())
    }

    /// The node URLs, for redis-rs's cluster client.
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The port of the master that serves `key`.
    pub fn master_of(&self, key: &str) -> u16 {
        let mut conn = connect(self.nodes[0].port);
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut conn)
            .expect("CLUSTER KEYSLOT");
        let slots: Vec<(u16, u16, (String, u16))> = {
            let raw: redis::Value = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query(&mut conn)
                .expect("CLUSTER SLOTS");
            let redis::Value::Array(ranges) = raw else {
                panic!("CLUSTER SLOTS: {raw:?}")
            };
            ranges
                .into_iter()
                .map(|range| {
                    let redis::Value::Array(parts) = range else {
                        panic!("slot range")
                    };
                    let start: u16 = redis::from_redis_value(parts[0].clone()).expect("start");
                    let end: u16 = redis::from_redis_value(parts[1].clone()).expect("end");
                    let redis::Value::Array(master) = parts[2].clone() else {
                        panic!("master")
                    };
                    let host: String = redis::from_redis_value(master[0].clone()).expect("host");
                    let port: u16 = redis::from_redis_value(master[1].clone()).expect("port");
                    (start, end, (host, port))
                })
                .collect()
        };
        slots
            .into_iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .map(|(_, _, (_, port))| port)
            .expect("every slot is served")
    }

    /// Kills the node on `port` (SIGKILL); it keeps its slots in the cluster's view.
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("node");
        node.stop();
    }

    /// Restarts a killed node from its `nodes.conf` (same id, same slots) and waits until the
    /// cluster is whole again.
    pub fn restart(&mut self, port: u16) {
        let index = self
            .nodes
            .iter()
            .position(|n| n.port == port)
            .expect("node");
        let mut node = Node {
            port,
            pid: None,
            guard: None,
        };
        self.spawn(&mut node);
        self.nodes[index] = node;
        wait_ping(port);
        self.wait_ok();
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) a node.
    pub fn signal(&self, port: u16, signal: &str) {
        let node = self.nodes.iter().find(|n| n.port == port).expect("node");
        if let Some(pid) = node.pid {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status();
        }
    }

    /// Waits until every replica reports `master_link_status:up`.
    fn wait_replicas(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        'wait: while Instant::now() < deadline {
            for node in &self.nodes {
                let mut conn = connect(node.port);
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut conn)
                    .unwrap_or_default();
                if info.contains("role:slave") && !info.contains("master_link_status:up") {
                    std::thread::sleep(Duration::from_millis(50));
                    continue 'wait;
                }
            }
            return;
        }
        panic!("the replicas did not sync within 30 s");
    }

    /// The port of the master that serves `key`, asked of the node on `via` (which must
    /// answer: not a stopped one), with a read timeout.
    pub fn master_of_via(&self, via: u16, key: &str) -> Option<u16> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{via}")).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        conn.set_read_timeout(Some(Duration::from_millis(500)))
            .ok()?;
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut conn)
            .ok()?;
        let raw: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut conn).ok()?;
        let redis::Value::Array(ranges) = raw else {
            return None;
        };
        ranges.into_iter().find_map(|range| {
            let redis::Value::Array(parts) = range else {
                return None;
            };
            let start: u16 = redis::from_redis_value(parts.first()?.clone()).ok()?;
            let end: u16 = redis::from_redis_value(parts.get(1)?.clone()).ok()?;
            let redis::Value::Array(master) = parts.get(2)?.clone() else {
                return None;
            };
            let port: u16 = redis::from_redis_value(master.get(1)?.clone()).ok()?;
            (start..=end).contains(&slot).then_some(port)
        })
    }

    /// `cluster_state` (`ok` or `fail`) as the node on `via` sees it.
    pub fn state_via(&self, via: u16) -> Option<String> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{via}")).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        conn.set_read_timeout(Some(Duration::from_millis(500)))
            .ok()?;
        let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("cluster_state:"))
            .map(|s| s.trim().to_owned())
    }

    /// The ports of the masters.
    /// Waits until every master's replica has all the master's writes so far (its replication
    /// offset has reached the master's): a test that kills a master must not lose keys written
    /// just before to asynchronous replication, then blame the client for the misses. (`WAIT`
    /// would not do: it waits only for the writes of the connection that sends it.)
    pub fn wait_replicated(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in self.masters() {
            loop {
                let mut conn = connect(port);
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut conn)
                    .unwrap_or_default();
                let field = |line: &str, name: &str| -> Option<u64> {
                    line.split(',')
                        .find_map(|kv| kv.trim().strip_prefix(name))
                        .and_then(|v| v.trim().parse().ok())
                };
                let master = info.lines().find_map(|l| field(l, "master_repl_offset:"));
                let replica = info
                    .lines()
                    .filter(|l| l.starts_with("slave"))
                    .filter_map(|l| field(l.split_once(':')?.1, "offset="))
                    .max();
                if let (Some(master), Some(replica)) = (master, replica)
                    && replica >= master
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the replica of 127.0.0.1:{port} did not catch up: {info}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn masters(&self) -> Vec<u16> {
        let mut masters: Vec<u16> = Vec::new();
        for node in &self.nodes {
            let mut conn = connect(node.port);
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut conn)
                .unwrap_or_default();
            if info.contains("role:master") {
                masters.push(node.port);
            }
        }
        masters
    }

    fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        'wait: while Instant::now() < deadline {
            for node in &self.nodes {
                let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{}", node.port))
                else {
                    continue 'wait;
                };
                let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200))
                else {
                    std::thread::sleep(Duration::from_millis(50));
                    continue 'wait;
                };
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut conn)
                    .unwrap_or_default();
                if !info.contains("cluster_state:ok") {
                    std::thread::sleep(Duration::from_millis(50));
                    continue 'wait;
                }
            }
            return;
        }
        panic!("the cluster did not reach cluster_state:ok within 30 s");
    }
}

fn connect(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .expect("url")
        .get_connection_with_timeout(Duration::from_secs(1))
        .expect("node answers")
}

fn wait_ping(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            && let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200))
            && redis::cmd("PING").query::<String>(&mut conn).is_ok()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server on port {port} did not answer within 10 s");
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One cluster shared by the tests of a binary (each test uses its own key prefix); its nodes
/// go when the binary exits.
pub fn shared() -> &'static PrivateCluster {
    static CLUSTER: OnceLock<PrivateCluster> = OnceLock::new();
    CLUSTER.get_or_init(PrivateCluster::start)
}
