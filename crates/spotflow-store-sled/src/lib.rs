//! `SledStore`: a durable [`Store`] on sled.
//!
//! * The `db` path is sled's directory; sled locks it, so a second live process gets a clear
//!   error. A regular file at the path is refused, never overwritten.
//! * The page cache is bounded ([`DEFAULT_CACHE_BYTES`], configurable); sled's default would hold
//!   hundreds of MiB with a long queue.
//! * One dedicated thread applies the commands. Appends that arrive together are written to an
//!   append journal next to sled's files and fdatasync'd once before every caller of the group is
//!   answered, and inserted into sled without a flush; sled is flushed (and its log fdatasync'd:
//!   sled 0.34's own flush ends with `sync_file_range`, which is not power-loss safe) every 4 MiB
//!   of journal, at `close` and with state changes, and the journal is then emptied. At open, the
//!   journal's appends that sled had not flushed are applied again. There is one durability level:
//!   every acknowledged append survives a crash and a power cut. Removals of acknowledged messages
//!   are not flushed on their own (a lost one means a redelivery the platform drops by key).
//! * Recovery: sled replays its log at open. Its crash consistency is checked by the kill -9
//!   tests of `spotflow-store-tests`, not assumed.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use async_trait::async_trait;
use spotflow_core::persist;
use spotflow_core::{
    DesiredState, DeviceIdentity, Error, ErrorStatus, OutgoingMessage, QueueStats, QueuedMessage, ReportedState,
    Result, Store,
};
use tokio::sync::oneshot;
use tracing::{debug, warn};

mod journal;
use journal::Journal;

/// Default page cache: 8 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 8 * 1024 * 1024;

const MAX_GROUP: usize = 1024;

enum Command {
    Append(Vec<OutgoingMessage>, oneshot::Sender<Result<u64>>),
    Read(Option<u64>, usize, oneshot::Sender<Result<Vec<QueuedMessage>>>),
    Remove(Vec<u64>, oneshot::Sender<Result<()>>),
    Stats(oneshot::Sender<Result<QueueStats>>),
    LoadState(&'static str, oneshot::Sender<Result<Option<serde_json::Value>>>),
    SaveState(&'static str, serde_json::Value, oneshot::Sender<Result<()>>),
    Clear(oneshot::Sender<Result<()>>),
    Close(oneshot::Sender<Result<()>>),
}

/// A durable store in a sled directory.
#[derive(Debug, Clone)]
pub struct SledStore {
    tx: mpsc::Sender<Command>,
    path: Arc<PathBuf>,
}

fn sled_error(path: &Path, context: &str, e: sled::Error) -> Error {
    let (status, detail) = match &e {
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") => {
            (ErrorStatus::Temporary, "the database is used by another process".to_owned())
        }
        sled::Error::Corruption { .. } => {
            (ErrorStatus::Permanent, "the database is corrupt (it was left untouched)".to_owned())
        }
        other => (ErrorStatus::Permanent, other.to_string()),
    };
    Error::Store { context: format!("{context} {}: {detail}", path.display()), status, source: Some(Box::new(e)) }
}

fn closed() -> Error {
    Error::Store { context: "the sled store thread stopped".into(), status: ErrorStatus::Permanent, source: None }
}

const LAST_SEQ: &[u8] = b"last_seq";

impl SledStore {
    /// Opens (creating) the store at `path` with the default cache. Blocks while sled recovers.
    pub fn open(path: impl AsRef<Path>) -> Result<SledStore> {
        let (ready, opened) = mpsc::channel();
        let store = Self::start(path.as_ref(), DEFAULT_CACHE_BYTES, move |r| drop(ready.send(r)))?;
        opened.recv().map_err(|_| closed())??;
        Ok(store)
    }

    /// [`SledStore::open`] without blocking the async runtime, with a cache of `cache_bytes`.
    pub async fn open_async(path: impl AsRef<Path>, cache_bytes: u64) -> Result<SledStore> {
        let (ready, opened) = oneshot::channel();
        let store = Self::start(path.as_ref(), cache_bytes, move |r| drop(ready.send(r)))?;
        opened.await.map_err(|_| closed())??;
        Ok(store)
    }

    fn start(path: &Path, cache_bytes: u64, ready: impl FnOnce(Result<()>) + Send + 'static) -> Result<SledStore> {
        let path = path.to_path_buf();
        if path.is_file() {
            return Err(Error::Store {
                context: format!("{} is a file, not a sled store directory (it was left untouched)", path.display()),
                status: ErrorStatus::Permanent,
                source: None,
            });
        }
        let (tx, rx) = mpsc::channel();
        let worker_path = path.clone();
        std::thread::Builder::new()
            .name("spotflow-sled".into())
            .spawn(move || match Worker::open(worker_path, cache_bytes) {
                Ok(w) => {
                    ready(Ok(()));
                    w.run(rx);
                }
                Err(e) => ready(Err(e)),
            })
            .map_err(|e| Error::store("cannot start the sled thread", e))?;
        Ok(SledStore { tx, path: Arc::new(path) })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

struct Worker {
    path: PathBuf,
    db: sled::Db,
    messages: sled::Tree,
    state: sled::Tree,
    count: u64,
    bytes: u64,
    last_seq: u64,
    /// sled's log file, for the fdatasync after each flush.
    data_file: std::fs::File,
    /// Where appends are made durable (see the `journal` module).
    journal: Journal,
}

fn size_of(value: &[u8]) -> u64 {
    value.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes)
}

impl Worker {
    fn open(path: PathBuf, cache_bytes: u64) -> Result<Worker> {
        let err = |c: &str| {
            let p = path.clone();
            let c = c.to_owned();
            move |e| sled_error(&p, &c, e)
        };
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::LowSpace)
            .flush_every_ms(None)
            .open()
            .map_err(err("cannot open"))?;
        let messages = db.open_tree("messages").map_err(err("cannot open"))?;
        let state = db.open_tree("state").map_err(err("cannot open"))?;
        let last_seq = state
            .get(LAST_SEQ)
            .map_err(err("cannot read"))?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(0);
        // The counter and the messages are flushed together, but take the larger of the two in
        // case a crash persisted one write and not the other.
        let last_key = messages
            .last()
            .map_err(err("cannot read"))?
            .and_then(|(k, _)| k.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        let mut last_seq = last_seq.max(last_key);
        // sled's flush on Linux ends with `sync_file_range`, which writes the data but neither
        // flushes the drive's write cache nor the file's size: a power cut could still lose it.
        // An fdatasync of sled's log file after each flush completes it (checked with strace).
        let data_file = std::fs::File::open(path.join("db")).map_err(|e| Error::Store {
            context: format!("cannot open sled's log file in {}: {e}", path.display()),
            status: ErrorStatus::Permanent,
            source: None,
        })?;
        // Appends acknowledged after sled's last flush are in the journal: apply them again.
        let (journal, records) = Journal::open(&path).map_err(|e| Error::Store {
            context: format!("cannot read the journal in {}: {e}", path.display()),
            status: ErrorStatus::Permanent,
            source: None,
        })?;
        let mut replayed = 0;
        for (seq, value) in records {
            if seq > last_seq {
                messages.insert(seq.to_be_bytes(), value).map_err(err("cannot recover"))?;
                last_seq = seq;
                replayed += 1;
            }
        }
        let (mut count, mut bytes) = (0, 0);
        for item in messages.iter().values() {
            bytes += size_of(&item.map_err(err("cannot read"))?);
            count += 1;
        }
        if replayed > 0 {
            state.insert(LAST_SEQ, &last_seq.to_le_bytes()).map_err(err("cannot recover"))?;
        }
        let mut worker = Worker { path: path.clone(), db, messages, state, count, bytes, last_seq, data_file, journal };
        worker.checkpoint().map_err(|e| sled_error(&worker.path, "cannot recover", e))?;
        debug!(path = %worker.path.display(), count, replayed, "sled store opened");
        Ok(worker)
    }

    /// Makes sled hold everything durably, then empties the journal.
    fn checkpoint(&mut self) -> sled::Result<()> {
        self.flush()?;
        self.journal.clear()?;
        Ok(())
    }

    /// sled's flush, then an fdatasync of its log file (see [`Worker::open`]).
    fn flush(&self) -> sled::Result<()> {
        self.db.flush()?;
        self.data_file.sync_data()?;
        Ok(())
    }

    fn run(mut self, rx: mpsc::Receiver<Command>) {
        while let Some(first) = spotflow_core::recv_polling(&rx, spotflow_core::STORE_THREAD_POLL) {
            let mut appends = Vec::new();
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Append(m, reply) => appends.push((m, reply)),
                    Command::Close(reply) => {
                        self.append_group(&mut appends);
                        let r = self.checkpoint().map_err(|e| sled_error(&self.path, "cannot flush", e));
                        drop(self);
                        let _ = reply.send(r);
                        return;
                    }
                    other => {
                        self.append_group(&mut appends);
                        self.serve(other);
                    }
                }
                if appends.len() < MAX_GROUP {
                    next = rx.try_recv().ok();
                }
            }
            self.append_group(&mut appends);
        }
    }

    fn append_group(&mut self, appends: &mut Vec<(Vec<OutgoingMessage>, oneshot::Sender<Result<u64>>)>) {
        if appends.is_empty() {
            return;
        }
        let mut records = Vec::new();
        let mut seq = self.last_seq;
        let mut firsts = Vec::with_capacity(appends.len());
        let mut added = (0u64, 0u64);
        for (messages, _) in appends.iter() {
            firsts.push(seq + 1);
            for m in messages {
                seq += 1;
                let size = m.queued_size();
                let mut value = size.to_le_bytes().to_vec();
                value.extend_from_slice(&persist::encode_message(m));
                records.push((seq, value));
                added.0 += 1;
                added.1 += size;
            }
        }
        let result = self.apply_durably(&records, seq);
        match result {
            Ok(()) => {
                self.last_seq = seq;
                self.count += added.0;
                self.bytes += added.1;
                for ((_, reply), first) in appends.drain(..).zip(firsts) {
                    let _ = reply.send(Ok(first));
                }
            }
            Err(shown) => {
                for (_, reply) in appends.drain(..) {
                    let _ = reply.send(Err(Error::Store {
                        context: shown.clone(),
                        status: ErrorStatus::Temporary,
                        source: None,
                    }));
                }
            }
        }
    }

    /// Applies appended records to sled (in memory) and makes them durable in the journal; on
    /// failure takes them out of sled again. Empties the journal when it has grown large.
    fn apply_durably(&mut self, records: &[(u64, Vec<u8>)], last: u64) -> std::result::Result<(), String> {
        // Plain inserts, not a sled batch: a batch makes sled write its buffer out at once (an
        // extra disk write per append); atomicity comes from the journal.
        let applied = records
            .iter()
            .try_for_each(|(seq, value)| self.messages.insert(seq.to_be_bytes(), value.as_slice()).map(drop))
            // The sequence counter is saved with the messages, so numbers are never reused.
            .and_then(|_| self.state.insert(LAST_SEQ, &last.to_le_bytes()).map(drop))
            .map_err(|e| sled_error(&self.path, "cannot append to", e).to_string());
        let journaled = applied.and_then(|()| {
            let refs: Vec<(u64, &[u8])> = records.iter().map(|(s, v)| (*s, v.as_slice())).collect();
            self.journal
                .append(&refs)
                .map_err(|e| format!("cannot write the journal {}: {e}", self.journal.path().display()))
        });
        if let Err(e) = journaled {
            for (seq, _) in records {
                let _ = self.messages.remove(seq.to_be_bytes());
            }
            let _ = self.state.insert(LAST_SEQ, &self.last_seq.to_le_bytes());
            return Err(e);
        }
        if self.journal.len() > journal::CHECKPOINT_BYTES {
            if let Err(e) = self.checkpoint() {
                // The appends are durable in the journal; the next checkpoint tries again.
                warn!(error = %e, path = %self.path.display(), "sled checkpoint failed");
            }
        }
        Ok(())
    }

    fn serve(&mut self, command: Command) {
        let path = self.path.clone();
        let err = move |c: &'static str| {
            let p = path.clone();
            move |e| sled_error(&p, c, e)
        };
        match command {
            Command::Append(..) | Command::Close(_) => {}
            Command::Read(after, limit, reply) => {
                let start = after.map_or(0, |a| a.saturating_add(1));
                let r = self
                    .messages
                    .range(start.to_be_bytes()..)
                    .take(limit)
                    .map(|item| {
                        let (k, v) = item.map_err(err("cannot read"))?;
                        let seq = k.as_ref().try_into().map(u64::from_be_bytes).map_err(|_| corrupt(&self.path))?;
                        let message = persist::decode_message(v.get(8..).ok_or_else(|| corrupt(&self.path))?)?;
                        Ok(QueuedMessage { seq, message })
                    })
                    .collect();
                let _ = reply.send(r);
            }
            Command::Remove(seqs, reply) => {
                let mut removed = (0u64, 0u64);
                let r = (|| {
                    for seq in seqs {
                        if let Some(v) = self.messages.remove(seq.to_be_bytes())? {
                            removed.0 += 1;
                            removed.1 += size_of(&v);
                        }
                    }
                    // Not flushed here: the next append's flush (or `close`) makes the removal
                    // durable. One lost to a crash only means a redelivery, which the platform
                    // drops by its message key; appends keep their own flush.
                    Ok::<(), sled::Error>(())
                })()
                .map_err(err("cannot remove from"));
                self.count -= removed.0.min(self.count);
                self.bytes -= removed.1.min(self.bytes);
                let _ = reply.send(r);
            }
            Command::Stats(reply) => {
                let _ = reply.send(Ok(QueueStats {
                    count: self.count,
                    bytes: self.bytes,
                    last_seq: (self.last_seq > 0).then_some(self.last_seq),
                }));
            }
            Command::LoadState(name, reply) => {
                let r =
                    self.state.get(name).map_err(err("cannot read")).and_then(|v| {
                        v.map(|v| serde_json::from_slice(&v).map_err(|_| corrupt(&self.path))).transpose()
                    });
                let _ = reply.send(r);
            }
            Command::SaveState(name, value, reply) => {
                let r = self
                    .state
                    .insert(name, value.to_string().into_bytes())
                    .and_then(|_| self.checkpoint())
                    .map_err(err("cannot write"));
                let _ = reply.send(r);
            }
            Command::Clear(reply) => {
                let r = self
                    .messages
                    .clear()
                    .and_then(|_| self.state.remove("desired").map(|_| ()))
                    .and_then(|_| self.state.remove("reported").map(|_| ()))
                    .and_then(|_| self.checkpoint())
                    .map_err(err("cannot clear"));
                if r.is_ok() {
                    self.count = 0;
                    self.bytes = 0;
                }
                let _ = reply.send(r);
            }
        }
    }
}

fn corrupt(path: &Path) -> Error {
    Error::Store {
        context: format!("corrupt record in {}", path.display()),
        status: ErrorStatus::Permanent,
        source: None,
    }
}

#[async_trait]
impl Store for SledStore {
    async fn append_messages(&self, messages: Vec<OutgoingMessage>) -> Result<u64> {
        self.call(|r| Command::Append(messages, r)).await
    }
    async fn read_messages(&self, after: Option<u64>, limit: usize) -> Result<Vec<QueuedMessage>> {
        self.call(|r| Command::Read(after, limit, r)).await
    }
    async fn remove_messages(&self, seqs: &[u64]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        let seqs = seqs.to_vec();
        self.call(|r| Command::Remove(seqs, r)).await
    }
    async fn queue_stats(&self) -> Result<QueueStats> {
        self.call(Command::Stats).await
    }
    async fn load_identity(&self) -> Result<Option<DeviceIdentity>> {
        let v = self.call(|r| Command::LoadState("identity", r)).await?;
        v.as_ref().map(persist::identity_from_json).transpose()
    }
    async fn save_identity(&self, identity: &DeviceIdentity) -> Result<()> {
        let v = persist::identity_to_json(identity);
        self.call(|r| Command::SaveState("identity", v, r)).await
    }
    async fn load_desired(&self) -> Result<Option<DesiredState>> {
        let v = self.call(|r| Command::LoadState("desired", r)).await?;
        v.as_ref().map(persist::desired_from_json).transpose()
    }
    async fn save_desired(&self, desired: &DesiredState) -> Result<()> {
        let v = persist::desired_to_json(desired);
        self.call(|r| Command::SaveState("desired", v, r)).await
    }
    async fn load_reported(&self) -> Result<ReportedState> {
        let v = self.call(|r| Command::LoadState("reported", r)).await?;
        Ok(v.as_ref().map(persist::reported_from_json).transpose()?.unwrap_or_default())
    }
    async fn save_reported(&self, reported: &ReportedState) -> Result<()> {
        let v = persist::reported_to_json(reported);
        self.call(|r| Command::SaveState("reported", v, r)).await
    }
    async fn clear_device_state(&self) -> Result<()> {
        self.call(Command::Clear).await
    }
    async fn close(&self) -> Result<()> {
        match self.call(Command::Close).await {
            Err(Error::Store { context, .. }) if context.contains("thread stopped") => Ok(()),
            other => other,
        }
    }
}
