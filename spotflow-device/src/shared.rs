//! State shared by the API handles and the background worker: counters, the latest appends,
//! refusals, desired properties, connection status.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use spotflow_core::{DesiredState, QueuedMessage};
use tokio::sync::{watch, Notify};

/// State shared by the API handles and the worker.
pub(crate) struct Shared {
    /// Bytes of cloud-to-device messages in the inbox (see [`crate::c2d`]).
    pub(crate) inbox_bytes: AtomicU64,
    /// Bumped when a cloud-to-device message is stored (for the readers of the inbox).
    pub(crate) inbox_changed: watch::Sender<u64>,
    pub(crate) workspace_id: String,
    pub(crate) device_id: String,
    pub(crate) pending: AtomicI64,
    pub(crate) queued_bytes: AtomicI64,
    pub(crate) last_appended: AtomicU64,
    pub(crate) appended: Notify,
    pub(crate) desired: Mutex<Option<DesiredState>>,
    /// Whether a reported update is pending, and the status that rejected it.
    pub(crate) reported: watch::Sender<ReportedStatus>,
    pub(crate) connected: AtomicBool,
    /// The latest appended messages, so that the worker need not read back from the store what
    /// was just written to it (a read competes with the next append for the store).
    pub(crate) recent: Mutex<RecentAppends>,
    /// Messages the platform refused for good in this run.
    pub(crate) refused_total: AtomicU64,
    pub(crate) refused: Mutex<RefusedLog>,
    /// The counters of [`crate::Stats`].
    pub(crate) stats: crate::stats::Counters,
    /// Where the worker publishes connection events.
    pub(crate) events: crate::events::EventFeed,
}

impl Shared {
    /// The state of a client of `identity` starting over a store with these figures and desired
    /// properties.
    pub(crate) fn new(
        identity: &spotflow_core::DeviceIdentity,
        stats: &spotflow_core::QueueStats,
        desired: Option<DesiredState>,
    ) -> Shared {
        let shared = Shared {
            inbox_bytes: AtomicU64::new(0),
            inbox_changed: watch::channel(0).0,
            workspace_id: identity.workspace_id.clone(),
            device_id: identity.device_id.clone(),
            pending: AtomicI64::new(i64::try_from(stats.count).unwrap_or(i64::MAX)),
            queued_bytes: AtomicI64::new(i64::try_from(stats.bytes).unwrap_or(i64::MAX)),
            last_appended: AtomicU64::new(stats.last_seq.unwrap_or(0)),
            appended: Notify::new(),
            desired: Mutex::new(desired),
            reported: watch::channel(ReportedStatus::default()).0,
            connected: AtomicBool::new(false),
            recent: Mutex::new(RecentAppends::default()),
            refused_total: AtomicU64::new(0),
            refused: Mutex::new(RefusedLog::default()),
            stats: crate::stats::Counters::new(&identity.workspace_id, &identity.device_id),
            events: crate::events::EventFeed::new(),
        };
        shared.stats.carried_over(stats.count, stats.bytes, stats.last_seq.unwrap_or(0));
        shared
    }
}

/// Where the reported properties stand, for the API's waits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ReportedStatus {
    /// An update is stored and not yet accepted by the platform.
    pub(crate) pending: bool,
    /// The status with which the platform rejected the pending update.
    pub(crate) rejection: Option<u16>,
}

/// Refused messages not yet reported by a wait for sent messages (bounded; beyond the bound only
/// counted).
#[derive(Default)]
pub(crate) struct RefusedLog {
    entries: std::collections::BTreeMap<u64, String>,
    /// Refusals beyond the bound: reported by the next wait, whatever it covers.
    overflow: u64,
}

/// Most refusals remembered with their reason until a wait reports them.
const REFUSED_REMEMBERED: usize = 1000;

/// Messages just appended, in sequence order, bounded in count and bytes.
#[derive(Default)]
pub(crate) struct RecentAppends {
    messages: std::collections::VecDeque<QueuedMessage>,
    bytes: usize,
}

/// Bounds of [`RecentAppends`]: beyond them the oldest entries go (the worker then reads them
/// from the store).
const RECENT_MAX_MESSAGES: usize = 4096;
const RECENT_MAX_BYTES: usize = 4 * 1024 * 1024;

impl RecentAppends {
    pub(crate) fn remember(&mut self, message: QueuedMessage) {
        let size = message.message.payload.len();
        // Concurrent appends may finish out of order: keep the deque sorted.
        let at = self.messages.iter().rposition(|m| m.seq < message.seq).map_or(0, |i| i + 1);
        self.messages.insert(at, message);
        self.bytes += size;
        while self.messages.len() > RECENT_MAX_MESSAGES || self.bytes > RECENT_MAX_BYTES {
            let Some(old) = self.messages.pop_front() else { break };
            self.bytes -= old.message.payload.len();
        }
    }

    /// The messages after `after` through `through` (at most `limit`), if all of them are still
    /// remembered; `None` when the store must be read.
    pub(crate) fn take(&mut self, after: Option<u64>, through: u64, limit: usize) -> Option<Vec<QueuedMessage>> {
        let after = after.unwrap_or(0);
        while self.messages.front().is_some_and(|m| m.seq <= after) {
            if let Some(old) = self.messages.pop_front() {
                self.bytes -= old.message.payload.len();
            }
        }
        let wanted = usize::try_from(through.checked_sub(after)?).ok()?.min(limit);
        if wanted == 0 || self.messages.len() < wanted {
            return None;
        }
        let contiguous = self.messages.iter().take(wanted).enumerate().all(|(i, m)| m.seq == after + 1 + i as u64);
        contiguous.then(|| self.messages.iter().take(wanted).cloned().collect())
    }
}

impl Shared {
    pub(crate) fn remember_appended(&self, message: QueuedMessage) {
        spotflow_core::lock(&self.recent).remember(message);
    }

    /// See [`RecentAppends::take`].
    pub fn take_recent(&self, after: Option<u64>, through: u64, limit: usize) -> Option<Vec<QueuedMessage>> {
        spotflow_core::lock(&self.recent).take(after, through, limit)
    }

    /// Forgets every remembered message (their store rows were removed without being sent).
    pub fn forget_recent(&self) {
        *spotflow_core::lock(&self.recent) = RecentAppends::default();
    }

    pub fn last_appended(&self) -> u64 {
        self.last_appended.load(Ordering::Acquire)
    }

    pub(crate) fn message_appended(&self, seq: u64, size: u64) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.queued_bytes.fetch_add(size as i64, Ordering::AcqRel);
        self.last_appended.fetch_max(seq, Ordering::AcqRel);
        self.appended.notify_one();
    }

    /// The platform refused message `seq` for good (it has left the queue).
    pub fn message_refused(&self, seq: u64, reason: String) {
        self.refused_total.fetch_add(1, Ordering::AcqRel);
        let mut log = spotflow_core::lock(&self.refused);
        log.entries.insert(seq, reason);
        if log.entries.len() > REFUSED_REMEMBERED {
            log.entries.pop_first();
            log.overflow += 1;
        }
    }

    /// Takes the refusals of messages up to `through` not reported yet: their count and the last
    /// reason.
    pub(crate) fn take_refused(&self, through: u64) -> Option<(u64, String)> {
        let mut log = spotflow_core::lock(&self.refused);
        let later = log.entries.split_off(&through.saturating_add(1));
        let taken = std::mem::replace(&mut log.entries, later);
        let count = taken.len() as u64 + std::mem::take(&mut log.overflow);
        let last = taken.into_values().next_back().unwrap_or_else(|| "(reason not kept)".to_owned());
        (count > 0).then_some((count, last))
    }

    /// A message left the queue (acknowledged, or dropped to make room).
    pub fn message_acknowledged(&self, size: u64) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
        self.queued_bytes.fetch_sub(size as i64, Ordering::AcqRel);
    }

    pub(crate) fn pending(&self) -> u64 {
        self.pending.load(Ordering::Acquire).max(0) as u64
    }

    pub(crate) fn queued_bytes(&self) -> u64 {
        self.queued_bytes.load(Ordering::Acquire).max(0) as u64
    }

    pub fn set_desired(&self, desired: DesiredState) {
        *spotflow_core::lock(&self.desired) = Some(desired);
    }

    pub fn set_reported_status(&self, pending: bool, rejection: Option<u16>) {
        let status = ReportedStatus { pending, rejection };
        self.reported.send_if_modified(|v| {
            let changed = *v != status;
            *v = status;
            changed
        });
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn queued(seq: u64) -> QueuedMessage {
        QueuedMessage { seq, message: spotflow_core::testkit::sample_message(seq) }
    }

    pub(crate) fn seqs(v: Option<Vec<QueuedMessage>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|m| m.seq).collect())
    }

    #[test]
    pub(crate) fn recent_appends_serve_only_complete_contiguous_ranges() {
        let mut r = RecentAppends::default();
        // Appends finishing out of order are kept sorted.
        for seq in [1, 2, 4, 3, 5] {
            r.remember(queued(seq));
        }
        assert_eq!(seqs(r.take(None, 5, 100)), Some(vec![1, 2, 3, 4, 5]));
        assert_eq!(seqs(r.take(Some(2), 5, 2)), Some(vec![3, 4]), "at most `limit`");
        assert_eq!(r.take(Some(5), 5, 100).map(|v| v.len()), None, "nothing new");
        // A gap (7 not remembered yet): read the store instead.
        r.remember(queued(6));
        r.remember(queued(8));
        assert_eq!(seqs(r.take(Some(5), 8, 100)), None);
        assert_eq!(seqs(r.take(Some(5), 6, 100)), Some(vec![6]));
        // Evicted entries are not served.
        let mut r = RecentAppends::default();
        for seq in 1..=(RECENT_MAX_MESSAGES as u64 + 10) {
            r.remember(queued(seq));
        }
        assert_eq!(seqs(r.take(None, 20, 100)), None, "the oldest were evicted");
        assert!(r.take(Some(20), 30, 100).is_some());
    }
}
