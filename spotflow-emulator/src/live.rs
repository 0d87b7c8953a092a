//! What the emulator is doing now, for people: counters per stream and per device, a live feed
//! of stored messages (Server-Sent Events for the dashboard), the Prometheus text of `/metrics`.
//!
//! Counting costs one short lock per stored message; the feed costs nothing while no dashboard
//! listens (a broadcast send without receivers), and each listener gets at most
//! [`FEED_PER_SECOND`] messages a second (the rest are counted as skipped), so an open dashboard
//! cannot slow ingestion down by much.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::db::StoredMessage;
use crate::state::{now_ms, Millis};

/// Most feed items sent to one dashboard per second; the others are counted, not sent.
pub(crate) const FEED_PER_SECOND: u32 = 50;

/// Feed items buffered for slow listeners (beyond it they skip).
const FEED_BUFFER: usize = 1024;

/// Seconds of history kept for the ingest rate.
const RATE_WINDOW_SECS: u64 = 10;

/// A stored message as the feed shows it (no payload: the page fetches it on demand).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FeedItem {
    pub id: i64,
    pub hub_device_id: String,
    pub stream_group: Option<String>,
    pub stream: Option<String>,
    pub wire_size: usize,
    pub content_encoding: Option<String>,
    pub received_at: Millis,
}

impl FeedItem {
    /// Everything but the row id, taken before the message goes to the database.
    pub(crate) fn of(m: &StoredMessage) -> FeedItem {
        FeedItem {
            id: 0,
            hub_device_id: m.hub_device_id.clone(),
            stream_group: m.stream_group.clone(),
            stream: m.stream.clone(),
            wire_size: m.wire_size,
            content_encoding: m.content_encoding.clone(),
            received_at: m.received_at,
        }
    }
}

/// `(stream group, stream)` as shown (`(default)` for none).
pub(crate) type StreamKey = (String, String);

/// Messages and wire bytes stored.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Totals {
    pub messages: u64,
    pub bytes: u64,
}

/// Per device, since the emulator started.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DeviceActivity {
    pub messages: u64,
    /// Last message, connection or disconnection (Unix ms).
    pub last_seen: Millis,
}

#[derive(Default)]
struct Counts {
    /// Group → stream → totals (looked up by `&str`: no allocation once a stream is known).
    streams: HashMap<String, HashMap<String, Totals>>,
    devices: HashMap<String, DeviceActivity>,
    all: Totals,
    /// `(second, messages stored before it)` for the last seconds, oldest first.
    seconds: VecDeque<(u64, u64)>,
}

/// The live counters and the feed.
pub(crate) struct Live {
    counts: Mutex<Counts>,
    feed: broadcast::Sender<Arc<FeedItem>>,
    /// MQTT connections open (TLS handshake done or plain TCP accepted).
    pub(crate) mqtt_connections: AtomicU64,
    /// Dashboards listening to the feed.
    pub(crate) listeners: AtomicU64,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            counts: Mutex::default(),
            feed: broadcast::channel(FEED_BUFFER).0,
            mqtt_connections: AtomicU64::new(0),
            listeners: AtomicU64::new(0),
        }
    }
}

/// Counts one open connection while it lives.
pub(crate) struct Open(Arc<Live>);

impl Open {
    pub(crate) fn new(live: &Arc<Live>) -> Open {
        live.mqtt_connections.fetch_add(1, Ordering::Relaxed);
        Open(live.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.mqtt_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The name a stream group or stream is shown and counted under (`None` is the default one).
fn shown(name: &Option<String>) -> &str {
    name.as_deref().unwrap_or("(default)")
}

impl crate::db::IngestObserver for Live {
    fn stored(&self, messages: &mut dyn Iterator<Item = (&StoredMessage, i64)>) {
        self.record_stored(messages);
    }
}

impl Live {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        spotflow_core::lock(&self.counts)
    }

    /// Messages were stored (each with its row id): counted under one lock; fed to the
    /// dashboards listening, if any.
    fn record_stored<'a>(&self, messages: impl Iterator<Item = (&'a StoredMessage, i64)>) {
        let listening = self.feed.receiver_count() > 0;
        let mut feed = Vec::new();
        {
            let mut c = self.counts();
            for (m, id) in messages {
                let second = m.received_at / 1000;
                if c.seconds.back().is_none_or(|(s, _)| *s != second) {
                    let before = c.all.messages;
                    c.seconds.push_back((second, before));
                    while c.seconds.len() as u64 > RATE_WINDOW_SECS + 1 {
                        c.seconds.pop_front();
                    }
                }
                let bytes = m.wire_size as u64;
                c.all.messages += 1;
                c.all.bytes += bytes;
                let (group, stream) = (shown(&m.stream_group), shown(&m.stream));
                let totals = match c.streams.get_mut(group).and_then(|g| g.get_mut(stream)) {
                    Some(t) => t,
                    None => c.streams.entry(group.to_owned()).or_default().entry(stream.to_owned()).or_default(),
                };
                totals.messages += 1;
                totals.bytes += bytes;
                let device = match c.devices.get_mut(m.hub_device_id.as_str()) {
                    Some(d) => d,
                    None => c.devices.entry(m.hub_device_id.clone()).or_default(),
                };
                device.messages += 1;
                device.last_seen = device.last_seen.max(m.received_at);
                if listening {
                    let mut item = FeedItem::of(m);
                    item.id = id;
                    feed.push(item);
                }
            }
        }
        for item in feed {
            let _ = self.feed.send(Arc::new(item));
        }
    }

    /// A device connected or disconnected.
    pub(crate) fn seen(&self, hub_device_id: &str) {
        self.counts().devices.entry(hub_device_id.to_owned()).or_default().last_seen = now_ms();
    }

    pub(crate) fn device(&self, hub_device_id: &str) -> DeviceActivity {
        self.counts().devices.get(hub_device_id).copied().unwrap_or_default()
    }

    /// Totals per stream and over all.
    /// Totals per stream (sorted) and over all.
    pub(crate) fn streams(&self) -> (Vec<(StreamKey, Totals)>, Totals) {
        let c = self.counts();
        let mut out: Vec<(StreamKey, Totals)> = c
            .streams
            .iter()
            .flat_map(|(g, streams)| streams.iter().map(move |(s, t)| ((g.clone(), s.clone()), *t)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        (out, c.all)
    }

    /// Messages stored per second over the last full seconds (up to 10).
    pub(crate) fn ingest_rate(&self) -> f64 {
        let c = self.counts();
        let now = now_ms() / 1000;
        // The oldest sample within the window, against the count now.
        let Some((from, before)) = c.seconds.iter().find(|(s, _)| now.saturating_sub(*s) <= RATE_WINDOW_SECS) else {
            return 0.0;
        };
        let secs = (now + 1 - from).max(1) as f64;
        (c.all.messages - before) as f64 / secs
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<FeedItem>> {
        self.feed.subscribe()
    }
}

/// Escapes a Prometheus label value.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Figures of the rest of the emulator for [`prometheus`].
pub(crate) struct Gauges {
    pub devices: usize,
    pub devices_connected: usize,
    pub operations_pending: usize,
    pub duplicates: u64,
    pub store_bytes: Option<u64>,
    /// Messages in the database (every stream, every run of the emulator on it).
    pub stored: u64,
}

/// The Prometheus text exposition of the emulator's figures.
pub(crate) fn prometheus(live: &Live, g: &Gauges) -> String {
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP spotflow_emulator_{name} {help}");
        let _ = writeln!(out, "# TYPE spotflow_emulator_{name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "spotflow_emulator_{name}{labels} {v}");
        }
    };
    let one = |v: f64| vec![(String::new(), v)];
    metric(
        "mqtt_connections",
        "gauge",
        "MQTT connections open.",
        &one(live.mqtt_connections.load(Ordering::Relaxed) as f64),
    );
    metric("devices", "gauge", "Registered devices.", &one(g.devices as f64));
    metric("devices_connected", "gauge", "Devices with a live MQTT session.", &one(g.devices_connected as f64));
    metric(
        "provisioning_operations_pending",
        "gauge",
        "Provisioning operations waiting for approval.",
        &one(g.operations_pending as f64),
    );
    let (streams, all) = live.streams();
    let per_stream = |f: fn(&Totals) -> u64| -> Vec<(String, f64)> {
        streams
            .iter()
            .map(|((group, stream), t)| {
                (format!("{{stream_group=\"{}\",stream=\"{}\"}}", label(group), label(stream)), f(t) as f64)
            })
            .collect()
    };
    metric("messages_total", "counter", "Messages stored since start, per stream.", &per_stream(|t| t.messages));
    metric(
        "message_bytes_total",
        "counter",
        "Wire bytes of the messages stored since start, per stream.",
        &per_stream(|t| t.bytes),
    );
    metric(
        "messages_duplicate_total",
        "counter",
        "Redeliveries not stored again (their message key was stored).",
        &one(g.duplicates as f64),
    );
    metric(
        "messages_stored",
        "gauge",
        "Messages in the database (every stream, also those stored before this start).",
        &one(g.stored as f64),
    );
    metric("ingest_messages_per_second", "gauge", "Messages stored per second, last 10 s.", &one(live.ingest_rate()));
    let _ = all;
    if let Some(bytes) = g.store_bytes {
        metric("store_bytes", "gauge", "Size of the database files (with the WAL).", &one(bytes as f64));
    }
    metric(
        "dashboard_listeners",
        "gauge",
        "Dashboards following the live feed.",
        &one(live.listeners.load(Ordering::Relaxed) as f64),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(device: &str, stream: Option<&str>, size: usize) -> StoredMessage {
        StoredMessage {
            hub_device_id: device.into(),
            stream_group: Some("g".into()),
            stream: stream.map(Into::into),
            wire_size: size,
            received_at: now_ms(),
            ..StoredMessage::default()
        }
    }

    #[test]
    fn counts_per_stream_and_device_reach_the_prometheus_text_escaped() {
        let live = Live::default();
        let batch = [message("ws:a", Some("s\"1"), 10), message("ws:a", Some("s\"1"), 5)];
        live.record_stored(batch.iter().zip([1, 2]));
        live.record_stored(std::iter::once((&message("ws:b", None, 7), 3)));
        assert_eq!(live.device("ws:a").messages, 2);
        assert_eq!(live.device("ws:b").messages, 1);
        assert_eq!(live.device("ws:c").messages, 0);
        let text = prometheus(
            &live,
            &Gauges {
                devices: 2,
                devices_connected: 1,
                operations_pending: 0,
                duplicates: 4,
                store_bytes: Some(9),
                stored: 3,
            },
        );
        assert!(text.contains("spotflow_emulator_messages_total{stream_group=\"g\",stream=\"s\\\"1\"} 2\n"), "{text}");
        assert!(text.contains("spotflow_emulator_message_bytes_total{stream_group=\"g\",stream=\"s\\\"1\"} 15\n"));
        assert!(text.contains("spotflow_emulator_messages_total{stream_group=\"g\",stream=\"(default)\"} 1\n"));
        assert!(text.contains("spotflow_emulator_messages_duplicate_total 4\n"));
        assert!(text.contains("spotflow_emulator_store_bytes 9\n"));
        assert!(live.ingest_rate() > 0.0);
    }

    #[test]
    fn the_feed_reaches_listeners_and_costs_nothing_without_them() {
        let live = Live::default();
        live.record_stored(std::iter::once((&message("ws:a", None, 1), 1)));
        let mut rx = live.subscribe();
        live.record_stored(std::iter::once((&message("ws:a", None, 1), 2)));
        let got = rx.try_recv().expect("an item");
        assert_eq!(got.id, 2);
        assert!(rx.try_recv().is_err(), "the item stored before subscribing is not replayed");
    }
}
