//! `MemoryStore`: a first-class in-memory [`Store`].

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use crate::{
    DesiredState, DeviceIdentity, Error, ErrorStatus, OutgoingMessage, QueueStats, QueuedMessage, ReportedState,
    Result, Store,
};

/// A [`Store`] in memory: fast, complete, and gone when the process ends.
///
/// Use it for tests, for devices that accept losing queued data on restart, and as the reference
/// behaviour of the store contract.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<QueuedMessage>,
    bytes: u64,
    last_seq: u64,
    identity: Option<DeviceIdentity>,
    desired: Option<DesiredState>,
    reported: ReportedState,
    inbox: crate::Inbox,
    update: Option<crate::UpdateRecord>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        self.inner.lock().map_err(|_| Error::Store {
            context: "memory store poisoned by a panic".into(),
            status: ErrorStatus::Permanent,
            source: None,
        })
    }

    fn push(inner: &mut Inner, message: OutgoingMessage) -> u64 {
        inner.last_seq += 1;
        inner.bytes += message.queued_size();
        inner.queue.push_back(QueuedMessage { seq: inner.last_seq, message });
        inner.last_seq
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn append_messages(&self, messages: Vec<OutgoingMessage>) -> Result<u64> {
        let mut inner = self.lock()?;
        let first = inner.last_seq + 1;
        for m in messages {
            Self::push(&mut inner, m);
        }
        Ok(first)
    }

    async fn append_message(&self, message: OutgoingMessage) -> Result<u64> {
        Ok(Self::push(&mut *self.lock()?, message))
    }

    async fn read_messages(&self, after: Option<u64>, limit: usize) -> Result<Vec<QueuedMessage>> {
        let inner = self.lock()?;
        let start = after.map_or(0, |a| inner.queue.partition_point(|m| m.seq <= a));
        Ok(inner.queue.range(start..).take(limit).cloned().collect())
    }

    async fn remove_messages(&self, seqs: &[u64]) -> Result<()> {
        let mut inner = self.lock()?;
        for &seq in seqs {
            let idx = if inner.queue.front().is_some_and(|m| m.seq == seq) {
                Some(0)
            } else {
                inner.queue.binary_search_by_key(&seq, |m| m.seq).ok()
            };
            if let Some(removed) = idx.and_then(|i| inner.queue.remove(i)) {
                inner.bytes -= removed.message.queued_size();
            }
        }
        Ok(())
    }

    async fn queue_stats(&self) -> Result<QueueStats> {
        let inner = self.lock()?;
        Ok(QueueStats {
            count: inner.queue.len() as u64,
            bytes: inner.bytes,
            last_seq: (inner.last_seq > 0).then_some(inner.last_seq),
        })
    }

    async fn load_identity(&self) -> Result<Option<DeviceIdentity>> {
        Ok(self.lock()?.identity.clone())
    }

    async fn save_identity(&self, identity: &DeviceIdentity) -> Result<()> {
        self.lock()?.identity = Some(identity.clone());
        Ok(())
    }

    async fn load_desired(&self) -> Result<Option<DesiredState>> {
        Ok(self.lock()?.desired.clone())
    }

    async fn save_desired(&self, desired: &DesiredState) -> Result<()> {
        self.lock()?.desired = Some(desired.clone());
        Ok(())
    }

    async fn load_reported(&self) -> Result<ReportedState> {
        Ok(self.lock()?.reported.clone())
    }

    async fn save_reported(&self, reported: &ReportedState) -> Result<()> {
        self.lock()?.reported = reported.clone();
        Ok(())
    }

    async fn clear_device_state(&self) -> Result<()> {
        let mut inner = self.lock()?;
        inner.queue.clear();
        inner.bytes = 0;
        inner.desired = None;
        inner.reported = ReportedState::default();
        inner.inbox = crate::Inbox::default();
        Ok(())
    }
    async fn append_cloud_message(&self, message: &crate::CloudMessage) -> Result<crate::InboxAppend> {
        Ok(self.lock()?.inbox.append(message))
    }
    async fn read_cloud_messages(&self, after: Option<u64>, limit: usize) -> Result<Vec<crate::StoredCloudMessage>> {
        Ok(self.lock()?.inbox.read(after, limit))
    }
    async fn remove_cloud_message(&self, id: u64) -> Result<bool> {
        Ok(self.lock()?.inbox.remove(id))
    }
    async fn cloud_inbox_stats(&self) -> Result<(u64, u64)> {
        Ok(self.lock()?.inbox.stats())
    }
    async fn load_update(&self) -> Result<Option<crate::UpdateRecord>> {
        Ok(self.lock()?.update.clone())
    }
    async fn save_update(&self, record: &crate::UpdateRecord) -> Result<()> {
        self.lock()?.update = Some(record.clone());
        Ok(())
    }
}
