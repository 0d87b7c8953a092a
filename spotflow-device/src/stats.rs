//! What the client is doing, as a cheap snapshot: [`crate::DeviceClient::stats`].
//!
//! The counters are atomics updated where the events happen (an enqueue, an acknowledgement, a
//! connection change). No lock is shared by the enqueueing threads and the worker: an enqueue
//! writes its time into a ring of the latest 1,024 (one atomic store; one in 32 also goes into a
//! coarse list under a lock of its own, for the age of an old queued message), the worker
//! reads it back at the acknowledgement and records the latency in a log-bucketed histogram
//! (atomics written by the worker alone, ≈ 3 % resolution) over a window of 30–60 s.
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
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
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
    /// Connection attempts, successful or not (a reconnect storm shows here first).
    pub connection_attempts: u64,
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
/// Each half of the latency window, in µs.
const WINDOW_HALF_US: u64 = 30_000_000;
/// Enqueue times kept exactly: the latest `RING` messages (8 bytes each).
const RING: usize = 1024;
/// One message in `SAMPLE_EVERY` also has its time in the coarse list.
const SAMPLE_EVERY: u64 = 32;
/// Entries of the coarse list at most (≈ 131,000 messages of history).
const MAX_SAMPLES: usize = 4096;
/// A ring entry: the low 24 bits of the sequence number, then 40 bits of µs since the start
/// (wrapping after 12.7 days; differences stay right).
const TIME_BITS: u32 = 40;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

fn pack(seq: u64, us: u64) -> u64 {
    (seq << TIME_BITS) | (us & TIME_MASK)
}

/// The time of `seq` in `entry`, if the entry is that message's.
fn unpack(entry: u64, seq: u64) -> Option<u64> {
    (entry != 0 && entry >> TIME_BITS == seq & ((1 << (64 - TIME_BITS)) - 1)).then_some(entry & TIME_MASK)
}

/// A log-bucketed histogram of microseconds, written by one thread, read by any.
pub(crate) struct Histogram {
    counts: Box<[AtomicU32]>,
}

impl Histogram {
    fn new() -> Self {
        Histogram { counts: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect() }
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

    /// By the one writer: plain loads and stores, no read-modify-write.
    fn record(&self, us: u64) {
        let c = &self.counts[Self::index(us)];
        c.store(c.load(Ordering::Relaxed).saturating_add(1), Ordering::Relaxed);
    }

    fn clear(&self) {
        self.counts.iter().for_each(|c| c.store(0, Ordering::Relaxed));
    }

    /// Percentiles (`ps` ascending, 0..=1) over the histograms given, in µs.
    fn percentiles(of: &[&Histogram], ps: &[f64]) -> (u64, Vec<Option<u64>>) {
        let counts: Vec<u64> =
            (0..BUCKETS).map(|i| of.iter().map(|h| u64::from(h.counts[i].load(Ordering::Relaxed))).sum()).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return (0, vec![None; ps.len()]);
        }
        let mut out = Vec::with_capacity(ps.len());
        let mut seen = 0u64;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            while out.len() < ps.len() && seen as f64 >= (ps[out.len()] * total as f64).ceil().max(1.0) {
                out.push(Some(Self::value(i)));
            }
            if out.len() == ps.len() {
                break;
            }
        }
        out.resize(ps.len(), None);
        (total, out)
    }
}

/// Enqueue times and the latency window.
struct Timing {
    /// The latest enqueue times, by `seq % RING` (see [`pack`]).
    ring: Box<[AtomicU64]>,
    /// `(seq, µs)` of one message in [`SAMPLE_EVERY`], oldest first.
    samples: Mutex<VecDeque<(u64, u64)>>,
    halves: [Histogram; 2],
    /// Which half is current.
    current: AtomicUsize,
    /// When the current half started (µs since the start).
    rotated_at: AtomicU64,
    /// The oldest message the worker still has queued (its seq), after its last round.
    oldest_seq: AtomicU64,
}

impl Timing {
    fn new() -> Self {
        Timing {
            ring: (0..RING).map(|_| AtomicU64::new(0)).collect(),
            samples: Mutex::new(VecDeque::new()),
            halves: [Histogram::new(), Histogram::new()],
            current: AtomicUsize::new(0),
            rotated_at: AtomicU64::new(0),
            oldest_seq: AtomicU64::new(0),
        }
    }

    /// The enqueue time of `seq` (µs since the start): exact from the ring, else the nearest
    /// earlier sample (at most 31 messages earlier), else `None`.
    fn enqueued_at(&self, seq: u64) -> Option<u64> {
        if let Some(us) = unpack(self.ring[seq as usize % RING].load(Ordering::Acquire), seq) {
            return Some(us);
        }
        let samples = spotflow_core::lock(&self.samples);
        samples.iter().rev().find(|(s, _)| *s <= seq).map(|(_, us)| *us)
    }

    /// By the worker: moves the window on (at most 60 s of samples).
    fn rotate(&self, now_us: u64) {
        let since = now_us.saturating_sub(self.rotated_at.load(Ordering::Relaxed));
        if since < WINDOW_HALF_US {
            return;
        }
        let current = self.current.load(Ordering::Relaxed);
        let next = 1 - current;
        self.halves[next].clear();
        if since >= 2 * WINDOW_HALF_US {
            self.halves[current].clear();
        }
        self.current.store(next, Ordering::Release);
        self.rotated_at.store(now_us, Ordering::Release);
    }
}

struct Link {
    state: ConnectionState,
    since: SystemTime,
    last_error: Option<String>,
    connections: u64,
    attempts: u64,
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
    enqueued: AtomicU64,
    delivered: AtomicU64,
    redelivered: AtomicU64,
    dropped: AtomicU64,
    failed_enqueues: AtomicU64,
    in_flight: AtomicU64,
    /// Reported version + 1 (0: unknown).
    reported_version: AtomicU64,
    link: Mutex<Link>,
    timing: Timing,
    started: Instant,
    /// Sequence numbers up to this one were queued by an earlier run (not timed).
    carried_through: AtomicU64,
    /// How many of those are still queued.
    carried_left: AtomicU64,
}

impl Counters {
    pub(crate) fn new(workspace_id: &str, device_id: &str) -> Self {
        let _ = (workspace_id, device_id);
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
                attempts: 0,
            }),
            timing: Timing::new(),
            started: Instant::now(),
            carried_through: AtomicU64::new(0),
            carried_left: AtomicU64::new(0),
        }
    }

    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    fn link(&self) -> std::sync::MutexGuard<'_, Link> {
        spotflow_core::lock(&self.link)
    }

    /// The store held `count` messages (`bytes`), up to `seq`, when the client started.
    pub(crate) fn carried_over(&self, count: u64, bytes: u64, seq: u64) {
        self.carried_through.store(seq, Ordering::Release);
        self.carried_left.store(count, Ordering::Release);
        self.after_round(0, seq.saturating_sub(count) + 1, count, bytes);
    }

    /// `seq` left the queue: one fewer carried over if it was.
    fn left(&self, seq: u64) {
        if seq <= self.carried_through.load(Ordering::Acquire) {
            let _ = self.carried_left.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
    }

    /// An enqueue returned `seq`: one atomic store (and one in 32 a short lock of its own).
    pub(crate) fn enqueued(&self, seq: u64) {
        self.enqueued.fetch_add(1, Ordering::Relaxed);
        let us = self.now_us();
        self.timing.ring[seq as usize % RING].store(pack(seq, us), Ordering::Release);
        if seq.is_multiple_of(SAMPLE_EVERY) {
            let oldest = self.timing.oldest_seq.load(Ordering::Acquire);
            let mut samples = spotflow_core::lock(&self.timing.samples);
            // Samples of messages that left the queue are not needed (one is kept before the
            // oldest queued message).
            while samples.len() >= 2 && samples[1].0 <= oldest {
                samples.pop_front();
            }
            if samples.len() >= MAX_SAMPLES {
                // Thinned: the age of a very old message is then taken from an older sample.
                samples.remove(1);
            }
            samples.push_back((seq, us));
        }
    }

    pub(crate) fn enqueue_failed(&self) {
        self.failed_enqueues.fetch_add(1, Ordering::Relaxed);
        // Rare: counted at once (a failure need not wake the worker).
        #[cfg(feature = "metrics")]
        self.emitted.failed_enqueues.increment(1);
    }

    /// By the worker: `seq` was acknowledged.
    pub(crate) fn acknowledged(&self, seq: u64) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.left(seq);
        if let Some(at) = unpack(self.timing.ring[seq as usize % RING].load(Ordering::Acquire), seq) {
            let now = self.now_us();
            self.timing.rotate(now);
            let latency = now.wrapping_sub(at) & TIME_MASK;
            self.timing.halves[self.timing.current.load(Ordering::Relaxed)].record(latency);
            #[cfg(feature = "metrics")]
            self.emitted.latency.record(latency as f64 / 1e6);
        }
    }

    /// Messages that left the queue unacknowledged (refused, dropped).
    fn left_queue(&self, seqs: &[u64]) {
        for seq in seqs {
            self.left(*seq);
        }
    }

    /// A message the platform refused for good.
    pub(crate) fn refused(&self, seq: u64) {
        #[cfg(feature = "metrics")]
        self.emitted.refused.increment(1);
        self.left_queue(&[seq]);
    }

    pub(crate) fn dropped(&self, seqs: &[u64]) {
        self.dropped.fetch_add(seqs.len() as u64, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.emitted.dropped.increment(seqs.len() as u64);
        self.left_queue(seqs);
    }

    /// After a round of the worker's work: in flight, the oldest message still queued, and
    /// (with the `metrics` feature) the figures to the recorder.
    pub(crate) fn after_round(&self, in_flight: u64, oldest_seq: u64, queued_messages: u64, queued_bytes: u64) {
        self.in_flight.store(in_flight, Ordering::Relaxed);
        self.timing.oldest_seq.store(oldest_seq, Ordering::Release);
        let _ = (queued_messages, queued_bytes);
        #[cfg(feature = "metrics")]
        {
            let e = &self.emitted;
            e.in_flight.set(in_flight as f64);
            e.queued_messages.set(queued_messages as f64);
            e.queued_bytes.set(queued_bytes as f64);
            let now = (self.enqueued.load(Ordering::Relaxed), self.delivered.load(Ordering::Relaxed));
            let mut published = spotflow_core::lock(&e.published);
            e.enqueued.increment(now.0.saturating_sub(published.0));
            e.delivered.increment(now.1.saturating_sub(published.1));
            *published = now;
        }
    }

    /// A connection attempt starts; returns the attempts since the start, this one included.
    pub(crate) fn connecting(&self) -> u64 {
        let mut l = self.link();
        l.attempts += 1;
        l.attempts
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

    pub(crate) fn closed(&self, oldest_seq: u64, queued_messages: u64, queued_bytes: u64) {
        self.after_round(0, oldest_seq, queued_messages, queued_bytes);
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
        let now = self.now_us();
        let t = &self.timing;
        // The window: the current half while it is under 60 s old, the previous one while the
        // current is under 30 s old (the worker moves it on only when it records).
        let age = now.saturating_sub(t.rotated_at.load(Ordering::Acquire));
        let current = t.current.load(Ordering::Acquire);
        let mut halves = Vec::with_capacity(2);
        if age < 2 * WINDOW_HALF_US {
            halves.push(&t.halves[current]);
        }
        if age < WINDOW_HALF_US {
            halves.push(&t.halves[1 - current]);
        }
        let (samples, ps) = Histogram::percentiles(&halves, &[0.5, 0.9, 0.99]);
        let latency = LatencySummary {
            samples,
            p50: ps[0].map(Duration::from_micros),
            p90: ps[1].map(Duration::from_micros),
            p99: ps[2].map(Duration::from_micros),
        };
        let since_start = Duration::from_micros(now);
        let oldest_queued_age = if queued.0 == 0 {
            None
        } else if self.carried_left.load(Ordering::Acquire) > 0 {
            // Left by an earlier run: its enqueue time is not stored.
            Some(since_start)
        } else {
            let oldest = t.enqueued_at(t.oldest_seq.load(Ordering::Acquire));
            Some(oldest.map_or(since_start, |us| Duration::from_micros(now.wrapping_sub(us) & TIME_MASK)))
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
            connection_attempts: link.attempts,
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
        let h = Histogram::new();
        for us in 1..=1000u64 {
            h.record(us * 100);
        }
        let empty = Histogram::new();
        let (n, ps) = Histogram::percentiles(&[&h, &empty], &[0.5, 0.9, 0.99]);
        assert_eq!(n, 1000);
        for (p, want) in ps.iter().zip([50_000.0, 90_000.0, 99_000.0]) {
            let got = p.unwrap() as f64;
            assert!((got - want).abs() / want < 0.035, "{got} for {want}");
        }
        assert_eq!(Histogram::percentiles(&[&empty], &[0.5]), (0, vec![None]));
    }

    #[test]
    fn the_window_forgets_old_samples() {
        let c = Counters::new("ws", "dev");
        c.enqueued(1);
        c.acknowledged(1);
        assert_eq!(c.snapshot((0, 0), 0, None).latency.samples, 1);
        // Pretend the samples were recorded more than 60 s ago.
        c.timing.rotated_at.store(0, Ordering::Release);
        let later = c.now_us() + 2 * WINDOW_HALF_US;
        c.timing.rotate(later);
        let (n, _) = Histogram::percentiles(&[&c.timing.halves[0], &c.timing.halves[1]], &[0.5]);
        assert_eq!(n, 0);
    }

    #[test]
    fn enqueue_times_come_from_the_ring_or_the_nearest_earlier_sample() {
        let c = Counters::new("ws", "dev");
        for seq in 1..=5000 {
            c.enqueued(seq);
        }
        let t = &c.timing;
        assert!(t.enqueued_at(5000).is_some(), "in the ring");
        assert_eq!(unpack(t.ring[100 % RING].load(Ordering::Acquire), 100), None, "overwritten in the ring");
        let sampled = t.enqueued_at(100).expect("from a sample");
        assert_eq!(Some(sampled), t.samples.lock().unwrap().iter().find(|(s, _)| *s == 96).map(|(_, us)| *us));
        assert_eq!(t.enqueued_at(10), None, "before every sample");
        assert_eq!(unpack(pack(7, 123), 7), Some(123));
        assert_eq!(unpack(pack(7, 123), 8), None);
    }
}
