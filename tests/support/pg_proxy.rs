//! A TCP proxy in front of PostgreSQL that delays every answer and counts round trips: the
//! tests that count what a request costs the database use it, and `benches/shop_load.rs` puts
//! the database behind it so that its cost is time, not CPU taken from the service.
//!
//! One round trip is one `ReadyForQuery` message from the server. PostgreSQL sends exactly one
//! per `Sync` and per simple `Query`, so a pool's ping, a prepare, an execute, a `BEGIN` and a
//! `COMMIT` each count one, whatever else travels with them. A connection has a query in
//! flight from the moment its client sends a `Sync` or a `Query` until the proxy hands it the
//! matching `ReadyForQuery` (after the delay).
//!
//! [`PgProxy::exchanges`] tells the round trips apart by what the client sent: a bare `Sync`
//! (a ping: sqlx sends one at checkout with `test_before_acquire` and one each time a
//! connection goes back to its pool), a prepare (`Parse`), an execute (`Bind`/`Execute`), a
//! simple query (`BEGIN`, `COMMIT`, unprepared SQL).
//!
//! The proxy reads the protocol, so connect through it without TLS (`sslmode=disable`).

use std::error::Error;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The proxy: its address and counters. Dropping it stops accepting; open connections run on
/// until either side closes them.
pub struct PgProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    round_trips: AtomicU64,
    /// By [`Exchange`].
    exchanges: [AtomicU64; 5],
    conns: Mutex<Vec<Arc<ConnState>>>,
}

/// What a client sent in one exchange (up to a `Sync`, or one simple `Query`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exchange {
    Ping = 0,
    Prepare = 1,
    Execute = 2,
    SimpleQuery = 3,
    /// Anything else: a `Close` of a statement, say.
    Other = 4,
}

/// Exchanges counted by kind (see [`PgProxy::exchanges`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exchanges {
    /// A `Sync` alone: a ping.
    pub pings: u64,
    /// `Parse` (and `Describe`): a statement prepared.
    pub prepares: u64,
    /// `Bind` and `Execute`: a prepared statement run.
    pub executes: u64,
    /// A simple `Query`: `BEGIN`, `COMMIT`, unprepared SQL.
    pub simple_queries: u64,
    /// Anything else.
    pub other: u64,
}

impl Exchanges {
    /// Every exchange: each is one round trip.
    pub fn total(&self) -> u64 {
        self.pings + self.prepares + self.executes + self.simple_queries + self.other
    }
}

impl std::ops::Sub for Exchanges {
    type Output = Exchanges;

    fn sub(self, before: Exchanges) -> Exchanges {
        Exchanges {
            pings: self.pings - before.pings,
            prepares: self.prepares - before.prepares,
            executes: self.executes - before.executes,
            simple_queries: self.simple_queries - before.simple_queries,
            other: self.other - before.other,
        }
    }
}

#[derive(Default)]
struct ConnState {
    /// `Sync`s and `Query`s sent whose `ReadyForQuery` has not been handed back yet.
    pending: AtomicI64,
    closed: AtomicBool,
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl PgProxy {
    /// Listens on a free loopback port and forwards each connection to `upstream`, holding
    /// every chunk of the server's answers for `delay` before passing it on (answers keep
    /// their order and overlap: the delay is a link's latency, not a queue).
    pub async fn start(upstream: SocketAddr, delay: Duration) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let accept = tokio::spawn({
            let shared = shared.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let state = Arc::new(ConnState {
                        // The startup message is answered with a `ReadyForQuery` too.
                        pending: AtomicI64::new(1),
                        closed: AtomicBool::new(false),
                    });
                    shared.conns.lock().unwrap().push(state.clone());
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let _ = relay(client, upstream, delay, &state, &shared).await;
                        state.closed.store(true, Ordering::Relaxed);
                    });
                }
            }
        });
        Ok(Self {
            addr,
            shared,
            accept,
        })
    }

    /// Starts a proxy in front of the server of `url` (a PostgreSQL URL) and returns it with
    /// `url`'s connect options pointed at it, TLS off.
    pub async fn in_front_of(
        url: &str,
        delay: Duration,
    ) -> Result<(Self, PgConnectOptions), Box<dyn Error + Send + Sync>> {
        let options: PgConnectOptions = url.parse()?;
        let upstream = tokio::net::lookup_host((options.get_host(), options.get_port()))
            .await?
            .next()
            .ok_or("the database host has no address")?;
        let proxy = Self::start(upstream, delay).await?;
        let options = options
            .host("127.0.0.1")
            .port(proxy.addr.port())
            .ssl_mode(PgSslMode::Disable);
        Ok((proxy, options))
    }

    /// Where to connect instead of the database.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Round trips so far (`ReadyForQuery` messages handed to clients), connection start-ups
    /// included.
    pub fn round_trips(&self) -> u64 {
        self.shared.round_trips.load(Ordering::Relaxed)
    }

    /// Exchanges sent so far, by kind (connection start-ups not included).
    pub fn exchanges(&self) -> Exchanges {
        let n = |kind: Exchange| self.shared.exchanges[kind as usize].load(Ordering::Relaxed);
        Exchanges {
            pings: n(Exchange::Ping),
            prepares: n(Exchange::Prepare),
            executes: n(Exchange::Execute),
            simple_queries: n(Exchange::SimpleQuery),
            other: n(Exchange::Other),
        }
    }

    /// Open connections with a query in flight right now.
    pub fn busy(&self) -> usize {
        let mut conns = self.shared.conns.lock().unwrap();
        conns.retain(|c| !c.closed.load(Ordering::Relaxed));
        conns
            .iter()
            .filter(|c| c.pending.load(Ordering::Relaxed) > 0)
            .count()
    }
}

async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    delay: Duration,
    state: &ConnState,
    shared: &Shared,
) -> io::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let requests = async {
        // The client's first message (start-up) has no type byte.
        let mut framer = Framer::new(true);
        let mut buf = vec![0; 16 * 1024];
        // What the exchange under way has sent so far.
        let (mut parsed, mut executed, mut other) = (false, false, false);
        loop {
            let n = client_rx.read(&mut buf).await?;
            if n == 0 {
                return server_tx.shutdown().await;
            }
            let mut asks = 0;
            framer.feed(&buf[..n], |kind| {
                let exchange = match kind {
                    b'P' | b'D' => {
                        parsed = true;
                        return;
                    }
                    b'B' | b'E' => {
                        executed = true;
                        return;
                    }
                    // Closing the unnamed portal travels with every execute.
                    b'C' if executed => return,
                    b'S' if parsed => Exchange::Prepare,
                    b'S' if executed => Exchange::Execute,
                    b'S' if other => Exchange::Other,
                    b'S' => Exchange::Ping,
                    b'Q' => Exchange::SimpleQuery,
                    _ => {
                        other = true;
                        return;
                    }
                };
                (parsed, executed, other) = (false, false, false);
                asks += 1;
                shared.exchanges[exchange as usize].fetch_add(1, Ordering::Relaxed);
            });
            state.pending.fetch_add(asks, Ordering::Relaxed);
            server_tx.write_all(&buf[..n]).await?;
        }
    };
    let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>, u64)>();
    let answers = async move {
        let mut framer = Framer::new(false);
        let mut buf = vec![0; 16 * 1024];
        loop {
            let n = server_rx.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, io::Error>(());
            }
            let mut readies = 0;
            framer.feed(&buf[..n], |kind| readies += u64::from(kind == b'Z'));
            if held_tx
                .send((Instant::now() + delay, buf[..n].to_vec(), readies))
                .is_err()
            {
                return Ok(());
            }
        }
    };
    let deliver = async {
        while let Some((at, bytes, readies)) = held_rx.recv().await {
            if !delay.is_zero() {
                tokio::time::sleep_until(at).await;
            }
            // Counted before the client can read them, so a caller that has its answer sees
            // its round trips counted.
            state.pending.fetch_sub(readies as i64, Ordering::Relaxed);
            shared.round_trips.fetch_add(readies, Ordering::Relaxed);
            client_tx.write_all(&bytes).await?;
        }
        // The server is gone and everything it said is delivered: tell the client.
        client_tx.shutdown().await
    };
    // The answers' reader ends with the server (dropping its sender); the delivery drains what
    // it held.
    let (a, b, c) = tokio::join!(requests, answers, deliver);
    a.and(b).and(c)
}

/// Splits a byte stream into PostgreSQL protocol messages (a type byte, then a big-endian
/// length that counts itself) and reports each message's type.
struct Framer {
    untyped_first: bool,
    header: [u8; 5],
    have: usize,
    skip: usize,
}

impl Framer {
    fn new(untyped_first: bool) -> Self {
        Self {
            untyped_first,
            header: [0; 5],
            have: 0,
            skip: 0,
        }
    }

    fn feed(&mut self, mut data: &[u8], mut on_message: impl FnMut(u8)) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let len = if self.untyped_first { 4 } else { 5 };
            let n = (len - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == len {
                let size = &self.header[len - 4..len];
                let size = u32::from_be_bytes(size.try_into().expect("four bytes")) as usize;
                if !self.untyped_first {
                    on_message(self.header[0]);
                }
                self.skip = size.saturating_sub(4);
                self.have = 0;
                self.untyped_first = false;
            }
        }
    }
}
