//! Cloud-to-device messages: a queue per device on the broker, delivered at QoS 1 on
//! `devices/{id}/messages/devicebound/{property bag}` while the device is connected and
//! subscribed, at most [`IN_FLIGHT`] unacknowledged at a time. A message is delivered when the
//! device acknowledges it (PUBACK); one in flight when its session ends goes back to the front of
//! the queue and is sent again (with DUP) on the next session. A message not delivered within
//! its time to live expires. The queue is kept in memory (an emulator restart empties it).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

use crate::state::{now_ms, Millis};

/// Unacknowledged messages in flight to one device at most.
pub const IN_FLIGHT: usize = 16;
/// Messages queued for one device at most (IoT Hub holds 50; the emulator more, for tests of
/// long outages).
pub const MAX_QUEUED: usize = 10_000;
/// The longest time to live (IoT Hub's: 2 days).
pub const MAX_TTL_MS: u64 = 2 * 24 * 3600 * 1000;
/// Delivered and expired messages remembered per device (for the listing).
const HISTORY: usize = 1000;

/// A message to a device.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub id: u64,
    pub properties: Vec<(String, String)>,
    pub payload: Vec<u8>,
    pub enqueued_at: Millis,
    pub expires_at: Millis,
    /// Times sent so far.
    pub attempts: u32,
}

/// A message's state, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct C2dStatus {
    /// The id the emulator gave it (also its `$.mid` property).
    pub id: u64,
    /// `queued`, `inFlight`, `delivered` or `expired`.
    pub state: &'static str,
    /// When it was sent by the back end (Unix ms).
    pub enqueued_at: Millis,
    /// When it expires if not delivered (Unix ms).
    pub expires_at: Millis,
    /// When the device acknowledged it, or when it expired (Unix ms).
    pub finished_at: Option<Millis>,
    /// Times sent to the device.
    pub attempts: u32,
    /// Payload size in bytes.
    pub size: usize,
    /// Its properties (without `$.mid`).
    pub properties: Vec<(String, String)>,
}

#[derive(Default)]
struct DeviceQueue {
    queued: VecDeque<Entry>,
    /// By packet id: the entry and the session that sent it.
    in_flight: BTreeMap<u16, (u64, Entry)>,
    next_pkid: u16,
    history: VecDeque<C2dStatus>,
}

impl DeviceQueue {
    fn finish(&mut self, e: &Entry, state: &'static str, at: Millis) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(status(e, state, Some(at)));
    }

    fn pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.in_flight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }
}

fn status(e: &Entry, state: &'static str, finished_at: Option<Millis>) -> C2dStatus {
    C2dStatus {
        id: e.id,
        state,
        enqueued_at: e.enqueued_at,
        expires_at: e.expires_at,
        finished_at,
        attempts: e.attempts,
        size: e.payload.len(),
        properties: e.properties.clone(),
    }
}

/// Why a message was not queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum C2dRefusal {
    /// No such device.
    UnknownDevice,
    /// The device's queue holds [`MAX_QUEUED`] messages.
    QueueFull,
    /// The time to live is zero or above [`MAX_TTL_MS`].
    InvalidTtl,
}

/// Every device's queue.
impl std::fmt::Display for C2dRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            C2dRefusal::UnknownDevice => f.write_str("no such device"),
            C2dRefusal::QueueFull => write!(f, "the device's queue holds {MAX_QUEUED} messages"),
            C2dRefusal::InvalidTtl => write!(f, "the time to live must be above 0 and at most {} s", MAX_TTL_MS / 1000),
        }
    }
}

impl std::error::Error for C2dRefusal {}

#[derive(Default)]
pub(crate) struct C2dQueues {
    devices: Mutex<HashMap<String, DeviceQueue>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl C2dQueues {
    /// Queues a message; returns its id.
    pub fn enqueue(
        &self,
        hub_id: &str,
        properties: Vec<(String, String)>,
        payload: Vec<u8>,
        ttl_ms: u64,
    ) -> Result<u64, C2dRefusal> {
        if ttl_ms == 0 || ttl_ms > MAX_TTL_MS {
            return Err(C2dRefusal::InvalidTtl);
        }
        let mut devices = spotflow_core::lock(&self.devices);
        let q = devices.entry(hub_id.to_owned()).or_default();
        expire(q, now_ms());
        if q.queued.len() + q.in_flight.len() >= MAX_QUEUED {
            return Err(C2dRefusal::QueueFull);
        }
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let now = now_ms();
        q.queued.push_back(Entry { id, properties, payload, enqueued_at: now, expires_at: now + ttl_ms, attempts: 0 });
        Ok(id)
    }

    /// Moves queued messages in flight for `session` (up to [`IN_FLIGHT`] in flight), returning
    /// them with their packet ids.
    pub fn next_batch(&self, hub_id: &str, session: u64) -> Vec<(u16, Entry)> {
        let mut devices = spotflow_core::lock(&self.devices);
        let Some(q) = devices.get_mut(hub_id) else { return Vec::new() };
        expire(q, now_ms());
        let mut batch = Vec::new();
        while q.in_flight.len() < IN_FLIGHT {
            let Some(mut e) = q.queued.pop_front() else { break };
            e.attempts += 1;
            let pkid = q.pkid();
            q.in_flight.insert(pkid, (session, e.clone()));
            batch.push((pkid, e));
        }
        batch
    }

    /// The device acknowledged packet `pkid` of `session`: delivered. Whether it was one.
    pub fn acked(&self, hub_id: &str, session: u64, pkid: u16) -> bool {
        let mut devices = spotflow_core::lock(&self.devices);
        let Some(q) = devices.get_mut(hub_id) else { return false };
        if q.in_flight.get(&pkid).is_none_or(|(s, _)| *s != session) {
            return false;
        }
        if let Some((_, e)) = q.in_flight.remove(&pkid) {
            q.finish(&e, "delivered", now_ms());
        }
        true
    }

    /// `session` ended: what it had in flight goes back to the front of the queue, in order.
    pub fn session_ended(&self, hub_id: &str, session: u64) {
        let mut devices = spotflow_core::lock(&self.devices);
        let Some(q) = devices.get_mut(hub_id) else { return };
        let mine: Vec<u16> = q.in_flight.iter().filter(|(_, (s, _))| *s == session).map(|(p, _)| *p).collect();
        let mut back: Vec<Entry> = mine.iter().filter_map(|p| q.in_flight.remove(p)).map(|(_, e)| e).collect();
        back.sort_by_key(|e| e.id);
        for e in back.into_iter().rev() {
            q.queued.push_front(e);
        }
    }

    /// The device's messages: finished ones (oldest first), then those in flight and queued.
    pub fn list(&self, hub_id: &str) -> Vec<C2dStatus> {
        let mut devices = spotflow_core::lock(&self.devices);
        let Some(q) = devices.get_mut(hub_id) else { return Vec::new() };
        expire(q, now_ms());
        let mut all: Vec<C2dStatus> = q.history.iter().cloned().collect();
        let mut flying: Vec<&Entry> = q.in_flight.values().map(|(_, e)| e).collect();
        flying.sort_by_key(|e| e.id);
        all.extend(flying.into_iter().map(|e| status(e, "inFlight", None)));
        all.extend(q.queued.iter().map(|e| status(e, "queued", None)));
        all
    }
}

/// Drops the queued messages whose time to live passed.
fn expire(q: &mut DeviceQueue, now: Millis) {
    if q.queued.iter().all(|e| e.expires_at > now) {
        return;
    }
    let (live, dead): (VecDeque<Entry>, VecDeque<Entry>) =
        std::mem::take(&mut q.queued).into_iter().partition(|e| e.expires_at > now);
    q.queued = live;
    for e in dead {
        q.finish(&e, "expired", now);
    }
}

/// The topic of a message to `hub_id`: its properties as the property bag, `$.mid` first.
pub(crate) fn topic(hub_id: &str, e: &Entry) -> String {
    let mut bag = format!("%24.mid={}", e.id);
    let device = hub_id.split_once(':').map_or(hub_id, |(_, d)| d);
    bag.push_str(&format!("&%24.to=%2Fdevices%2F{}%2Fmessages%2FdeviceBound", percent_encode(device)));
    for (k, v) in &e.properties {
        bag.push_str(&format!("&{}={}", percent_encode(k), percent_encode(v)));
    }
    format!("devices/{hub_id}/messages/devicebound/{bag}")
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_in_flight_ack_and_requeue() {
        let c = C2dQueues::default();
        for i in 0..20u8 {
            c.enqueue("ws:d", vec![("k".into(), "v w".into())], vec![i], 60_000).unwrap();
        }
        let first = c.next_batch("ws:d", 1);
        assert_eq!(first.len(), IN_FLIGHT);
        assert!(c.next_batch("ws:d", 1).is_empty(), "the window is full");
        assert!(c.acked("ws:d", 1, first[0].0));
        assert!(!c.acked("ws:d", 2, first[1].0), "another session's packet id");
        assert_eq!(c.next_batch("ws:d", 1).len(), 1);
        c.session_ended("ws:d", 1);
        let again = c.next_batch("ws:d", 3);
        assert_eq!(again[0].1.id, first[1].1.id, "back at the front, in order");
        assert_eq!(again[0].1.attempts, 2);
        let states: Vec<&str> = c.list("ws:d").iter().map(|s| s.state).collect();
        assert_eq!(states.iter().filter(|s| **s == "delivered").count(), 1);
        assert_eq!(states.len(), 20);
        assert_eq!(c.enqueue("ws:d", vec![], vec![], 0), Err(C2dRefusal::InvalidTtl));
        assert!(topic("ws:d", &again[0].1).starts_with("devices/ws:d/messages/devicebound/%24.mid="));
        assert!(topic("ws:d", &again[0].1).ends_with("&k=v%20w"));
    }

    #[test]
    fn unsent_messages_expire() {
        let c = C2dQueues::default();
        c.enqueue("ws:d", vec![], b"late".to_vec(), 1000).unwrap();
        c.enqueue("ws:d", vec![], b"kept".to_vec(), 60_000).unwrap();
        {
            let mut devices = spotflow_core::lock(&c.devices);
            expire(devices.get_mut("ws:d").unwrap(), now_ms() + 2000);
        }
        let batch = c.next_batch("ws:d", 1);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].1.payload, b"kept");
        let states: Vec<&str> = c.list("ws:d").iter().map(|s| s.state).collect();
        assert_eq!(states, ["expired", "inFlight"]);
    }
}
