//! A TCP proxy that puts network faults between a client and a server: connection reset, clean
//! close, blackhole (bytes dropped both ways, sockets kept open), latency with jitter, bandwidth
//! limit, and flapping, on a schedule of its own or a seeded random one, with a log of what it
//! did. Reliability tests put it between the SDK and the emulator.
//!
//! ```no_run
//! # async fn demo(upstream: std::net::SocketAddr) -> std::io::Result<()> {
//! use std::time::Duration;
//! use spotflow_chaos::{ChaosProxy, Condition};
//! let proxy = ChaosProxy::start(upstream).await?;
//! // Point the client at proxy.addr(), then:
//! proxy.set_condition(Condition::Blackhole);
//! tokio::time::sleep(Duration::from_secs(5)).await;
//! proxy.set_condition(Condition::Pass);
//! proxy.reset_all();
//! println!("{}", proxy.log().join("\n"));
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// How the link passes bytes, for every connection at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    /// Bytes pass as they come.
    Pass,
    /// Bytes of open connections are dropped both ways, their sockets kept open (a NAT timeout
    /// or a handover that sends no reset). New connections wait unanswered in the listen
    /// backlog, as a SYN would be retransmitted, and go on once the link passes again.
    Blackhole,
    /// Each chunk is held `base` ± `jitter` (order kept).
    Latency {
        /// Mean one-way delay.
        base: Duration,
        /// Largest deviation from `base`.
        jitter: Duration,
    },
    /// At most this many bytes per second each way, per connection.
    Bandwidth(u64),
}

/// A fault the schedule applies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Set the link's condition.
    Set(Condition),
    /// Reset every open connection (RST to both sides).
    ResetAll,
    /// Close every open connection cleanly (FIN to both sides).
    CloseAll,
}

enum Kill {
    Reset,
    Close,
}

struct Shared {
    started: Instant,
    condition: watch::Sender<Condition>,
    kills: Mutex<HashMap<u64, mpsc::UnboundedSender<Kill>>>,
    next_id: AtomicU64,
    log: Mutex<Vec<String>>,
    passed: AtomicU64,
    dropped: AtomicU64,
}

impl Shared {
    fn note(&self, what: String) {
        let line = format!("{:>9.3}s {what}", self.started.elapsed().as_secs_f64());
        lock(&self.log).push(line);
    }
}

/// The proxy: listens on 127.0.0.1 (port chosen by the OS) and forwards to `upstream`.
pub struct ChaosProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset_all();
    }
}

impl ChaosProxy {
    /// Starts a proxy to `upstream` with the link passing.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        ChaosProxy::start_on("127.0.0.1:0".parse().expect("address"), upstream).await
    }

    /// Starts a proxy listening on `listen`.
    pub async fn start_on(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            started: Instant::now(),
            condition: watch::channel(Condition::Pass).0,
            kills: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            log: Mutex::new(Vec::new()),
            passed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        shared.note(format!("listening on {addr}, forwarding to {upstream}"));
        let accept = tokio::spawn(accept_loop(listener, upstream, shared.clone()));
        Ok(ChaosProxy { addr, shared, accept })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the link's condition for every connection, open or new.
    pub fn set_condition(&self, condition: Condition) {
        self.shared.note(format!("condition {condition:?}"));
        self.shared.condition.send_replace(condition);
    }

    /// Resets every open connection.
    pub fn reset_all(&self) {
        self.kill_all(|| Kill::Reset, "reset");
    }

    /// Closes every open connection cleanly.
    pub fn close_all(&self) {
        self.kill_all(|| Kill::Close, "close");
    }

    fn kill_all(&self, kill: impl Fn() -> Kill, what: &str) {
        let kills = std::mem::take(&mut *lock(&self.shared.kills));
        self.shared.note(format!("{what} {} connections", kills.len()));
        for tx in kills.values() {
            let _ = tx.send(kill());
        }
    }

    /// Applies `fault`.
    pub fn apply(&self, fault: Fault) {
        match fault {
            Fault::Set(c) => self.set_condition(c),
            Fault::ResetAll => self.reset_all(),
            Fault::CloseAll => self.close_all(),
        }
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.kills).len()
    }

    /// Bytes forwarded and bytes dropped so far.
    pub fn bytes(&self) -> (u64, u64) {
        (self.shared.passed.load(Ordering::Relaxed), self.shared.dropped.load(Ordering::Relaxed))
    }

    /// What the proxy did, a line per event, with the time since it started.
    pub fn log(&self) -> Vec<String> {
        lock(&self.shared.log).clone()
    }

    /// Runs `schedule` (each fault at its offset from now, in order); returns when the last one
    /// was applied.
    pub async fn run_schedule(&self, schedule: &[(Duration, Fault)]) {
        let start = tokio::time::Instant::now();
        for (at, fault) in schedule {
            tokio::time::sleep_until(start + *at).await;
            self.apply(*fault);
        }
    }
}

/// A seeded random schedule of `length`: spells of a random condition (mostly passing) lasting
/// 1–10 s, with resets, clean closes and bursts of flapping (blackhole and pass alternating every
/// 0.2–1 s) between them. The same seed gives the same schedule.
pub fn random_schedule(seed: u64, length: Duration) -> Vec<(Duration, Fault)> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut at = Duration::ZERO;
    let mut schedule = Vec::new();
    while at < length {
        let fault = match rng.u32(0..100) {
            0..=44 => Fault::Set(Condition::Pass),
            45..=59 => Fault::Set(Condition::Latency {
                base: Duration::from_millis(rng.u64(10..300)),
                jitter: Duration::from_millis(rng.u64(0..100)),
            }),
            60..=69 => Fault::Set(Condition::Bandwidth(rng.u64(2_000..200_000))),
            70..=79 => Fault::Set(Condition::Blackhole),
            80..=87 => Fault::ResetAll,
            88..=93 => Fault::CloseAll,
            _ => {
                for _ in 0..rng.u32(2..8) {
                    schedule.push((at, Fault::Set(Condition::Blackhole)));
                    at += Duration::from_millis(rng.u64(200..1000));
                    schedule.push((at, Fault::Set(Condition::Pass)));
                    at += Duration::from_millis(rng.u64(200..1000));
                }
                continue;
            }
        };
        schedule.push((at, fault));
        at += Duration::from_millis(rng.u64(1_000..10_000));
    }
    schedule.push((length, Fault::Set(Condition::Pass)));
    schedule
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut condition = shared.condition.subscribe();
    loop {
        if condition.wait_for(|c| *c != Condition::Blackhole).await.is_err() {
            return;
        }
        let accepted = tokio::select! {
            a = listener.accept() => a,
            // A blackhole may start while waiting: connections then stay in the backlog.
            changed = condition.changed() => match changed {
                Ok(()) => continue,
                Err(_) => return,
            },
        };
        let Ok((client, peer)) = accepted else {
            continue;
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&shared.kills).insert(id, tx);
        tokio::spawn(connection(id, client, peer, upstream, rx, shared.clone()));
    }
}

async fn connection(
    id: u64,
    client: TcpStream,
    peer: SocketAddr,
    upstream: SocketAddr,
    mut kill: mpsc::UnboundedReceiver<Kill>,
    shared: Arc<Shared>,
) {
    let server = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(e) => {
            shared.note(format!("#{id} from {peer}: upstream refused ({e})"));
            lock(&shared.kills).remove(&id);
            return;
        }
    };
    shared.note(format!("#{id} open from {peer}"));
    let (mut client, mut server) = (client, server);
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let outcome = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        tokio::select! {
            k = kill.recv() => match k {
                Some(Kill::Reset) => Err("reset"),
                Some(Kill::Close) | None => Ok("closed by the proxy"),
            },
            r = direction(client_read, server_write, &shared) => Ok(r),
            r = direction(server_read, client_write, &shared) => Ok(r),
        }
    };
    let reason = match outcome {
        Err(reason) => {
            // A zero linger turns the close into a reset.
            let _ = (client.set_zero_linger(), server.set_zero_linger());
            reason
        }
        Ok(reason) => {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = client.shutdown().await;
                let _ = server.shutdown().await;
            })
            .await;
            reason
        }
    };
    drop((client, server));
    lock(&shared.kills).remove(&id);
    shared.note(format!("#{id} {reason}"));
}

/// Forwards `from` to `to` under the link's condition until either side ends; returns why.
async fn direction(mut from: ReadHalf<'_>, to: WriteHalf<'_>, shared: &Shared) -> &'static str {
    let (tx, mut rx) = mpsc::channel::<(tokio::time::Instant, Bytes)>(64);
    let mut condition = shared.condition.subscribe();
    let writer = async move {
        let mut to = to;
        while let Some((release, chunk)) = rx.recv().await {
            tokio::time::sleep_until(release).await;
            if to.write_all(&chunk).await.is_err() {
                return "write failed";
            }
        }
        let _ = to.shutdown().await;
        "peer closed"
    };
    let reader = async move {
        // Owned by the body (not kept in the future): dropped when the reader returns, so that the
        // writer then sees the end of the channel while the select below still holds the future.
        let tx = tx;
        let mut buf = vec![0u8; 16 * 1024];
        let mut rng = fastrand::Rng::new();
        let mut last_release = tokio::time::Instant::now();
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return "peer closed",
                Ok(n) => n,
            };
            let now = tokio::time::Instant::now();
            let release = match *condition.borrow_and_update() {
                Condition::Pass => now,
                Condition::Blackhole => {
                    shared.dropped.fetch_add(n as u64, Ordering::Relaxed);
                    continue;
                }
                Condition::Latency { base, jitter } => {
                    let j = jitter.as_micros() as i64;
                    let offset = if j > 0 { rng.i64(-j..=j) } else { 0 };
                    let delay = (base.as_micros() as i64 + offset).max(0) as u64;
                    now + Duration::from_micros(delay)
                }
                Condition::Bandwidth(rate) => {
                    let start = last_release.max(now);
                    start + Duration::from_secs_f64(n as f64 / rate.max(1) as f64)
                }
            };
            // Order is kept: a chunk never leaves before the one ahead of it.
            last_release = release.max(last_release);
            shared.passed.fetch_add(n as u64, Ordering::Relaxed);
            if tx.send((last_release, Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                return "write failed";
            }
        }
    };
    // A side that ends (EOF) has its last bytes forwarded before the end is: the writer drains
    // what the reader queued (a real link delivers the bytes ahead of a FIN).
    tokio::pin!(writer);
    tokio::select! {
        r = &mut writer => r,
        r = reader => match r {
            "peer closed" => writer.await,
            other => other,
        },
    }
}

/// Locks `mutex`, also after a panic of a thread that held it (the proxy's state stays consistent
/// between statements).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
