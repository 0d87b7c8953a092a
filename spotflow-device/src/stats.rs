//! What the client is doing, as a cheap snapshot: [`crate::DeviceClient::stats`].
//!
//! The counters are atomics updated where the events happen (an enqueue, an acknowledgement, a
//! connection change); the enqueue → acknowledgement latency goes into a log-bucketed histogram
//! (≈ 3 % resolution) over a recent window of 30–60 s. An enqueue and an acknowledgement each take
//! one uncontended lock for the latency; nothing else is added to the hot path.
//!
//! With the `metrics` feature the same figures also go through the `metrics` crate facade, to
//! whatever recorder the application installed (labels `workspace_id`, `device_id`; handles are
//! registered once per client). The worker publishes them after each round of work (counters as
//! the increase since the last round), so enqueueing threads make no metrics call at all:
//!
//! | name | kind |
//! |---|---|
//! | `spotflow_messages_enqueued_total` | counter |
//! | `spotflow_messages_delivered_total` | counter |
//! | `spotflow_messages_redelivered_total` | counter |
//! | `spotflow_messages_dropped_total` | counter |
//! | `spotflow_messages_refused_total` | counter |
//! | `spotflow_enqueue_failures_total` | counter |
//! | `spotflow_reconnects_total` | counter |
//! | `spotflow_queued_messages` | gauge |
//! | `spotflow_queued_bytes` | gauge |
//! | `spotflow_in_flight_messages` | gauge |
//! | `spotflow_connected` | gauge (1 connected, 0 not) |
//! | `spotflow_delivery_latency_seconds` | histogram (enqueue → acknowledgement) |

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// A snapshot of a client's queue, deliveries, connection and latency. Totals count from this
/// start of the client (a restart starts them again); the queue figures include what an earlier
/// run left in the store.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// Messages in the queue (persisted, not yet acknowledged), as `pending_messages_count`.
    pub queued_messages: u64,
    /// Their size in the queue (payload after compression, plus properties).
    pub queued_bytes: u64,
    /// How long the oldest queued message has waited. For a message an earlier run left in the
    /// store (its enqueue time is not stored), the time since this start: a lower bound. `None`
    /// when the queue is empty.
    pub oldest_queued_age: Option<Duration>,
    /// Messages sent and not yet acknowledged.
    pub in_flight: u64,
    /// Messages enqueued by this run.
    pub enqueued_total: u64,
    /// Messages the platform acknowledged.
    pub delivered_total: u64,
    /// Messages sent again because the connection was lost before their acknowledgement.
    pub redelivered_total: u64,
    /// Messages removed unsent to make room ([`crate::QueueFullPolicy::DropOldest`]).
    pub dropped_total: u64,
    /// Messages the platform refused for good (as `refused_messages_count`).
    pub refused_total: u64,
    /// Enqueue calls that returned an error (invalid input, full queue, store failure, closed).
    pub failed_enqueues_total: u64,
    /// The connection to the platform now.
    pub connection: ConnectionState,
    /// Since when the connection has been in that state.
    pub connection_since: SystemTime,
    /// Connections made after the first one.
    pub reconnects: u64,
    /// The last error that failed or ended a connection (a description, never a credential).
    pub last_connection_error: Option<String>,
    /// Version of the desired properties the client has (`None` before any).
    pub desired_version: Option<u64>,
    /// Version of the reported properties the platform last told (`None` before any).
    pub reported_version: Option<u64>,
    /// Enqueue → acknowledgement latency over the last 30–60 s.
    pub latency: LatencySummary,
}

/// State of the connection to the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Not connected; connecting or waiting to retry.
    Connecting,
    /// Connected.
    Connected,
    /// The client was closed.
    Closed,
}

impl ConnectionState {
    /// `connecting`, `connected` or `closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected => "connected",
            ConnectionState::Closed => "closed",
        }
    }
}

/// Percentiles of the enqueue → acknowledgement latency (≈ 3 % resolution).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct LatencySummary {
    /// Acknowledgements measured in the window.
    pub samples: u64,
    /// Median (`None` without samples).
    pub p50: Option<Duration>,
    /// 90th percentile.
    pub p90: Option<Duration>,
    /// 99th percentile.
    pub p99: Option<Duration>,
}

/// Sub-buckets per power of two: values are kept to 1/16 of their power of two (bucket midpoints
/// are within ≈ 3 %).
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Buckets for 0 µs .. 2^64 µs.
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;
/// Each half of the window.
const WINDOW_HALF: Duration = Duration::from_secs(30);
/// Enqueue times remembered at most (16 bytes each); beyond, new messages are not timed.
const MAX_TIMED: usize = 16_384;

/// A log-bucketed histogram of microseconds.
#[derive(Clone)]
pub(crate) struct Histogram {
    counts: Box<[u32]>,
    total: u64,
}

impl Histogram {
    fn new() -> Self {
        Histogram { counts: vec![0; BUCKETS].into_boxed_slice(), total: 0 }
    }

    fn index(us: u64) -> usize {
        if us < SUB as u64 {
            return us as usize;
        }
        let exp = 63 - us.leading_zeros();
        let mantissa = (us >> (exp - SUB_BITS)) as usize & (SUB - 1);
        (exp - SUB_BITS + 1) as usize * SUB + mantissa
    }

    /// The midpoint of bucket `i`, in µs.
    fn value(i: usize) -> u64 {
        if i < SUB {
            return i as u64;
        }
        let exp = (i / SUB) as u32 + SUB_BITS - 1;
        let mantissa = (i % SUB) as u64;
        let low = (SUB as u64 + mantissa) << (exp - SUB_BITS);
        low + (1u64 << (exp - SUB_BITS)) / 2
    }

    pub(crate) fn record(&mut self, us: u64) {
        let i = Self::index(us);
        self.counts[i] = self.counts[i].saturating_add(1);
        self.total += 1;
    }

    fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.total = 0;
    }

    /// Percentiles (`ps` ascending, 0..=1) over `self` and `other` together, in µs.
    fn percentiles(&self, other: &Histogram, ps: &[f64]) -> Vec<Option<u64>> {
        let total = self.total + other.total;
        if total == 0 {
            return vec![None; ps.len()];
        }
        let mut out = Vec::with_capacity(ps.len());
        let mut seen = 0u64;
        let mut next = 0;
        for i in 0..BUCKETS {
            seen += u64::from(self.counts[i]) + u64::from(other.counts[i]);
            while next < ps.len() && seen as f64 >= (ps[next] * total as f64).ceil().max(1.0) {
                out.push(Some(Self::value(i)));
                next += 1;
            }
            if next == ps.len() {
                break;
            }
        }
        out.resize(ps.len(), None);
        out
    }
}

/// Enqueue times and the latency window.
struct Timing {
    /// `(seq, enqueued at)` sorted by seq.
    enqueued_at: VecDeque<(u64, Instant)>,
    current: Histogram,
    previous: Histogram,
    rotated_at: Instant,
}

impl Timing {
    fn rotate(&mut self, now: Instant) {
        if now.duration_since(self.rotated_at) >= 2 * WINDOW_HALF {
            self.current.clear();
            self.previous.clear();
            self.rotated_at = now;
        } else if now.duration_since(self.rotated_at) >= WINDOW_HALF {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
            self.rotated_at = now;
        }
    }

    /// Forgets `seq`'s enqueue time; returns it.
    fn take(&mut self, seq: u64) -> Option<Instant> {
        if self.enqueued_at.front().is_some_and(|(s, _)| *s == seq) {
            return self.enqueued_at.pop_front().map(|(_, t)| t);
        }
        let i = self.enqueued_at.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
        self.enqueued_at.remove(i).map(|(_, t)| t)
    }
}

struct Link {
    state: ConnectionState,
    since: SystemTime,
    last_error: Option<String>,
    connections: u64,
}

/// The `metrics` facade's handles of one client.
#[cfg(feature = "metrics")]
pub(crate) struct Emitted {
    enqueued: metrics::Counter,
    delivered: metrics::Counter,
    redelivered: metrics::Counter,
    dropped: metrics::Counter,
    refused: metrics::Counter,
    failed_enqueues: metrics::Counter,
    reconnects: metrics::Counter,
    queued_messages: metrics::Gauge,
    queued_bytes: metrics::Gauge,
    in_flight: metrics::Gauge,
    connected: metrics::Gauge,
    latency: metrics::Histogram,
    /// Totals already counted: (enqueued, delivered).
    published: Mutex<(u64, u64)>,
}

#[cfg(feature = "metrics")]
impl Emitted {
    fn new(workspace_id: &str, device_id: &str) -> Self {
        let labels = [("workspace_id", workspace_id.to_owned()), ("device_id", device_id.to_owned())];
        Emitted {
            enqueued: metrics::counter!("spotflow_messages_enqueued_total", &labels),
            delivered: metrics::counter!("spotflow_messages_delivered_total", &labels),
            redelivered: metrics::counter!("spotflow_messages_redelivered_total", &labels),
            dropped: metrics::counter!("spotflow_messages_dropped_total", &labels),
            refused: metrics::counter!("spotflow_messages_refused_total", &labels),
            failed_enqueues: metrics::counter!("spotflow_enqueue_failures_total", &labels),
            reconnects: metrics::counter!("spotflow_reconnects_total", &labels),
            queued_messages: metrics::gauge!("spotflow_queued_messages", &labels),
            queued_bytes: metrics::gauge!("spotflow_queued_bytes", &labels),
            in_flight: metrics::gauge!("spotflow_in_flight_messages", &labels),
            connected: metrics::gauge!("spotflow_connected", &labels),
            latency: metrics::histogram!("spotflow_delivery_latency_seconds", &labels),
            published: Mutex::new((0, 0)),
        }
    }
}

/// The counters behind [`Stats`], shared by the API handles and the worker.
pub(crate) struct Counters {
    #[cfg(feature = "metrics")]
    pub(crate) emitted: Emitted,
    pub(crate) enqueued: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) failed_enqueues: AtomicU64,
    in_flight: AtomicU64,
    /// Reported version + 1 (0: unknown).
    reported_version: AtomicU64,
    link: Mutex<Link>,
    timing: Mutex<Timing>,
    started: Instant,
    /// Sequence numbers up to this one were queued by an earlier run (not timed).
    carried_through: AtomicU64,
    /// How many of those are still queued.
    carried_left: AtomicU64,
}

impl Counters {
    pub(crate) fn new(workspace_id: &str, device_id: &str) -> Self {
        let _ = (workspace_id, device_id);
        let now = Instant::now();
        Counters {
            #[cfg(feature = "metrics")]
            emitted: Emitted::new(workspace_id, device_id),
            enqueued: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed_enqueues: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            reported_version: AtomicU64::new(0),
            link: Mutex::new(Link {
                state: ConnectionState::Connecting,
                since: SystemTime::now(),
                last_error: None,
                connections: 0,
            }),
            timing: Mutex::new(Timing {
                enqueued_at: VecDeque::new(),
                current: Histogram::new(),
                previous: Histogram::new(),
                rotated_at: now,
            }),
            started: now,
            carried_through: AtomicU64::new(0),
            carried_left: AtomicU64::new(0),
        }
    }

    fn timing(&self) -> std::sync::MutexGuard<'_, Timing> {
        self.timing.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn link(&self) -> std::sync::MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store held `count` messages, up to `seq`, when the client started.
    pub(crate) fn carried_over(&self, count: u64, seq: u64) {
        self.carried_through.store(seq, Ordering::Release);
        self.carried_left.store(count, Ordering::Release);
    }

    /// `seq` left the queue: one fewer carried over if it was.
    fn left(&self, seq: u64) {
        if seq <= self.carried_through.load(Ordering::Acquire) {
            let _ = self.carried_left.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
    }

    pub(crate) fn enqueued(&self, seq: u64) {
        self.enqueued.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut t = self.timing();
        if t.enqueued_at.len() < MAX_TIMED {
            // Concurrent enqueues may finish out of order: keep the times sorted by seq.
            let at = t.enqueued_at.iter().rposition(|(s, _)| *s < seq).map_or(0, |i| i + 1);
            t.enqueued_at.insert(at, (seq, now));
        }
    }

    pub(crate) fn enqueue_failed(&self) {
        self.failed_enqueues.fetch_add(1, Ordering::Relaxed);
        // Rare: counted at once (a failure need not wake the worker).
        #[cfg(feature = "metrics")]
        self.emitted.failed_enqueues.increment(1);
    }

    pub(crate) fn acknowledged(&self, seq: u64) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.left(seq);
        let now = Instant::now();
        let mut t = self.timing();
        if let Some(at) = t.take(seq) {
            t.rotate(now);
            let latency = now.duration_since(at);
            t.current.record(latency.as_micros() as u64);
            #[cfg(feature = "metrics")]
            self.emitted.latency.record(latency.as_secs_f64());
        }
    }

    /// Messages that left the queue unacknowledged (refused, dropped).
    pub(crate) fn left_queue(&self, seqs: &[u64]) {
        let mut t = self.timing();
        for seq in seqs {
            self.left(*seq);
            t.take(*seq);
        }
    }

    /// A message the platform refused for good.
    pub(crate) fn refused(&self, seq: u64) {
        #[cfg(feature = "metrics")]
        self.emitted.refused.increment(1);
        self.left_queue(&[seq]);
    }

    pub(crate) fn set_in_flight(&self, n: u64) {
        self.in_flight.store(n, Ordering::Relaxed);
    }

    /// After a round of the worker's work: the in-flight count, and (with the `metrics`
    /// feature) the figures to the recorder.
    pub(crate) fn after_round(&self, in_flight: u64, queued_messages: u64, queued_bytes: u64) {
        self.set_in_flight(in_flight);
        let _ = (queued_messages, queued_bytes);
        #[cfg(feature = "metrics")]
        {
            let e = &self.emitted;
            e.in_flight.set(in_flight as f64);
            e.queued_messages.set(queued_messages as f64);
            e.queued_bytes.set(queued_bytes as f64);
            let now = (self.enqueued.load(Ordering::Relaxed), self.delivered.load(Ordering::Relaxed));
            let mut published = e.published.lock().unwrap_or_else(|p| p.into_inner());
            e.enqueued.increment(now.0.saturating_sub(published.0));
            e.delivered.increment(now.1.saturating_sub(published.1));
            *published = now;
        }
    }

    pub(crate) fn dropped(&self, seqs: &[u64]) {
        self.dropped.fetch_add(seqs.len() as u64, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.emitted.dropped.increment(seqs.len() as u64);
        self.left_queue(seqs);
    }

    pub(crate) fn connected(&self) {
        let mut l = self.link();
        l.state = ConnectionState::Connected;
        l.since = SystemTime::now();
        l.connections += 1;
        #[cfg(feature = "metrics")]
        {
            self.emitted.connected.set(1.0);
            if l.connections > 1 {
                self.emitted.reconnects.increment(1);
            }
        }
    }

    /// The connection ended (or an attempt failed) because of `error`; `in_flight` messages will
    /// be sent again.
    pub(crate) fn disconnected(&self, error: Option<String>, in_flight: usize) {
        self.redelivered.fetch_add(in_flight as u64, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        {
            self.emitted.redelivered.increment(in_flight as u64);
            self.emitted.connected.set(0.0);
        }
        let mut l = self.link();
        if l.state != ConnectionState::Connecting {
            l.state = ConnectionState::Connecting;
            l.since = SystemTime::now();
        }
        if error.is_some() {
            l.last_error = error;
        }
    }

    pub(crate) fn closed(&self, queued_messages: u64, queued_bytes: u64) {
        self.after_round(0, queued_messages, queued_bytes);
        #[cfg(feature = "metrics")]
        self.emitted.connected.set(0.0);
        let mut l = self.link();
        l.state = ConnectionState::Closed;
        l.since = SystemTime::now();
    }

    pub(crate) fn reported_version(&self, version: u64) {
        self.reported_version.store(version.saturating_add(1), Ordering::Relaxed);
    }

    /// The snapshot; `queued` = (messages, bytes), `refused` and `desired_version` come from the
    /// rest of the shared state.
    pub(crate) fn snapshot(&self, queued: (u64, u64), refused: u64, desired_version: Option<u64>) -> Stats {
        let now = Instant::now();
        let (oldest_timed, latency) = {
            let mut t = self.timing();
            t.rotate(now);
            if queued.0 == 0 {
                // Nothing queued: no time can be pending (drops what a missed path left).
                t.enqueued_at.clear();
            }
            let oldest = t.enqueued_at.front().copied();
            let ps = t.current.percentiles(&t.previous, &[0.5, 0.9, 0.99]);
            let latency = LatencySummary {
                samples: t.current.total + t.previous.total,
                p50: ps[0].map(Duration::from_micros),
                p90: ps[1].map(Duration::from_micros),
                p99: ps[2].map(Duration::from_micros),
            };
            (oldest, latency)
        };
        let oldest_queued_age = if queued.0 == 0 {
            None
        } else if self.carried_left.load(Ordering::Acquire) > 0 {
            // Left by an earlier run: its enqueue time is not stored.
            Some(now.duration_since(self.started))
        } else {
            // The oldest timed message is the oldest queued one (untimed ones, enqueued while
            // MAX_TIMED were waiting, are newer).
            Some(oldest_timed.map_or(now.duration_since(self.started), |(_, at)| now.duration_since(at)))
        };
        let link = self.link();
        let reported = self.reported_version.load(Ordering::Relaxed);
        Stats {
            queued_messages: queued.0,
            queued_bytes: queued.1,
            oldest_queued_age,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            enqueued_total: self.enqueued.load(Ordering::Relaxed),
            delivered_total: self.delivered.load(Ordering::Relaxed),
            redelivered_total: self.redelivered.load(Ordering::Relaxed),
            dropped_total: self.dropped.load(Ordering::Relaxed),
            refused_total: refused,
            failed_enqueues_total: self.failed_enqueues.load(Ordering::Relaxed),
            connection: link.state,
            connection_since: link.since,
            reconnects: link.connections.saturating_sub(1),
            last_connection_error: link.last_error.clone(),
            desired_version,
            reported_version: reported.checked_sub(1),
            latency,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_contiguous_and_within_3_percent() {
        let mut last = 0;
        for us in (0..200_000u64).chain([1 << 40, u64::MAX / 3]) {
            let i = Histogram::index(us);
            assert!(i >= last || us >= 1 << 40, "buckets grow with the value");
            last = i;
            assert!(i < BUCKETS);
            let mid = Histogram::value(i) as f64;
            assert!((mid - us as f64).abs() <= (us as f64 * 0.032).max(0.5), "{us} µs in a bucket centred on {mid}");
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = Histogram::new();
        for us in 1..=1000u64 {
            h.record(us * 100);
        }
        let empty = Histogram::new();
        let ps = h.percentiles(&empty, &[0.5, 0.9, 0.99]);
        for (p, want) in ps.iter().zip([50_000.0, 90_000.0, 99_000.0]) {
            let got = p.unwrap() as f64;
            assert!((got - want).abs() / want < 0.035, "{got} for {want}");
        }
        assert_eq!(empty.percentiles(&empty, &[0.5]), vec![None]);
    }

    #[test]
    fn the_window_forgets_old_samples() {
        let c = Counters::new("ws", "dev");
        c.enqueued(1);
        c.acknowledged(1);
        let s = c.snapshot((0, 0), 0, None);
        assert_eq!(s.latency.samples, 1);
        let mut t = c.timing();
        let later = t.rotated_at + 2 * WINDOW_HALF;
        t.rotate(later);
        assert_eq!(t.current.total + t.previous.total, 0);
    }
}
