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

mod chunk;
mod journal;
use chunk::Chunk;
use journal::{Entry, Journal};

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
    /// The queued messages, packed in chunks (see the `chunk` module).
    chunks: sled::Tree,
    state: sled::Tree,
    count: u64,
    bytes: u64,
    last_seq: u64,
    /// sled's log file, for the fdatasync after each flush.
    data_file: std::fs::File,
    /// Where appends are made durable (see the `journal` module).
    journal: Journal,
    /// The newest chunk while it fills. Its messages are durable in the journal; it is written to
    /// sled when full and at every checkpoint (sled may then hold an older copy of it).
    open: Option<OpenChunk>,
}

#[derive(Clone)]
struct OpenChunk {
    chunk: Chunk,
    /// sled holds a copy (written at a checkpoint) that must be replaced or removed.
    in_sled: bool,
    /// Changed since it was last written to sled.
    dirty: bool,
}

fn size_of(value: &[u8]) -> u64 {
    value.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes)
}

fn key_seq(key: &[u8]) -> Option<u64> {
    key.try_into().ok().map(u64::from_be_bytes)
}

/// The first format kept one message per entry in this tree; it is converted to chunks at open.
const MESSAGES_V1: &str = "messages";
const CHUNKS: &str = "chunks";

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
        let chunks = db.open_tree(CHUNKS).map_err(err("cannot open"))?;
        let state = db.open_tree("state").map_err(err("cannot open"))?;
        // sled's flush on Linux ends with `sync_file_range`, which writes the data but neither
        // flushes the drive's write cache nor the file's size: a power cut could still lose it.
        // An fdatasync of sled's log file after each flush completes it (checked with strace).
        let data_file = std::fs::File::open(path.join("db")).map_err(|e| Error::Store {
            context: format!("cannot open sled's log file in {}: {e}", path.display()),
            status: ErrorStatus::Permanent,
            source: None,
        })?;
        // Appends acknowledged after sled's last flush are in the journal.
        let (journal, records) = Journal::open(&path).map_err(|e| Error::Store {
            context: format!("cannot read the journal in {}: {e}", path.display()),
            status: ErrorStatus::Permanent,
            source: None,
        })?;
        let mut worker = Worker {
            path: path.clone(),
            db,
            chunks,
            state,
            count: 0,
            bytes: 0,
            last_seq: 0,
            data_file,
            journal,
            open: None,
        };
        if worker.db.tree_names().iter().any(|name| name.as_ref() == MESSAGES_V1.as_bytes()) {
            worker.migrate_v1()?;
        }
        let saved_seq = worker
            .state
            .get(LAST_SEQ)
            .map_err(err("cannot read"))?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(0);
        let mut max_seq = 0;
        for item in worker.chunks.iter().values() {
            for record in chunk::records(&item.map_err(err("cannot read"))?) {
                let (seq, value) = record.ok_or_else(|| corrupt(&path))?;
                worker.count += 1;
                worker.bytes += size_of(value);
                max_seq = max_seq.max(seq);
            }
        }
        // The counter and the messages are flushed together, but take the larger of the two in
        // case a crash persisted one write and not the other.
        worker.last_seq = saved_seq.max(max_seq);
        if let Some((key, value)) = worker.chunks.last().map_err(err("cannot read"))? {
            let key = key_seq(&key).ok_or_else(|| corrupt(&path))?;
            let chunk = Chunk::decode(key, &value).ok_or_else(|| corrupt(&path))?;
            if !chunk.is_full() {
                worker.open = Some(OpenChunk { chunk, in_sled: true, dirty: false });
            }
        }
        // Apply the journal's appends that sled had not flushed again, and its removals.
        let mut replayed = 0;
        for entry in records {
            match entry {
                Entry::Append(seq, value) if seq > worker.last_seq => {
                    worker.count += 1;
                    worker.bytes += size_of(&value);
                    worker.push(seq, value).map_err(err("cannot recover"))?;
                    worker.last_seq = seq;
                    replayed += 1;
                }
                Entry::Append(..) => {}
                Entry::Remove(mut seqs) => {
                    seqs.sort_unstable();
                    seqs.dedup();
                    worker.apply_removal(&seqs)?;
                }
            }
        }
        worker.checkpoint().map_err(err("cannot recover"))?;
        debug!(path = %path.display(), count = worker.count, replayed, "sled store opened");
        Ok(worker)
    }

    /// Converts a store of the first format (one message per entry) to chunks. The chunks are
    /// made durable before the old tree is dropped; a conversion cut short starts over.
    fn migrate_v1(&mut self) -> Result<()> {
        let err = |e| sled_error(&self.path, "cannot convert", e);
        let old = self.db.open_tree(MESSAGES_V1).map_err(err)?;
        self.chunks.clear().map_err(err)?;
        let mut current: Option<Chunk> = None;
        let mut moved = 0u64;
        for item in old.iter() {
            let (key, value) = item.map_err(err)?;
            let seq = key_seq(&key).ok_or_else(|| corrupt(&self.path))?;
            let chunk = current.get_or_insert_with(|| Chunk::new(seq));
            chunk.push(seq, value.to_vec());
            moved += 1;
            if chunk.is_full() {
                self.chunks.insert(chunk.key.to_be_bytes(), chunk.encode()).map_err(err)?;
                current = None;
            }
        }
        if let Some(chunk) = current {
            self.chunks.insert(chunk.key.to_be_bytes(), chunk.encode()).map_err(err)?;
        }
        self.flush().map_err(err)?;
        self.db.drop_tree(MESSAGES_V1).map_err(err)?;
        self.flush().map_err(err)?;
        debug!(path = %self.path.display(), moved, "sled store converted to chunks");
        Ok(())
    }

    /// Adds a message to the open chunk; writes the chunk to sled (without a flush) when that
    /// fills it, and returns its key then.
    fn push(&mut self, seq: u64, value: Vec<u8>) -> sled::Result<Option<u64>> {
        let open = self.open.get_or_insert_with(|| OpenChunk { chunk: Chunk::new(seq), in_sled: false, dirty: false });
        open.chunk.push(seq, value);
        open.dirty = true;
        if !open.chunk.is_full() {
            return Ok(None);
        }
        let key = open.chunk.key;
        self.chunks.insert(key.to_be_bytes(), open.chunk.encode())?;
        self.open = None;
        Ok(Some(key))
    }

    /// Makes sled hold everything durably (the open chunk included), then empties the journal.
    ///
    /// The sequence counter is saved here only, with the open chunk. Saved with every append, it
    /// could reach the disk (sled writes its buffer out when it fills) ahead of the open chunk's
    /// messages, and recovery would then skip them in the journal: it replays the records above
    /// both the saved counter and the highest sequence number in sled's chunks.
    fn checkpoint(&mut self) -> sled::Result<()> {
        if let Some(open) = self.open.as_mut().filter(|o| o.dirty) {
            self.chunks.insert(open.chunk.key.to_be_bytes(), open.chunk.encode())?;
            open.in_sled = true;
            open.dirty = false;
        }
        self.state.insert(LAST_SEQ, &self.last_seq.to_le_bytes())?;
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
    /// failure takes them out of sled again. `last` becomes the last sequence number. Empties the
    /// journal when it has grown large.
    fn apply_durably(&mut self, records: &[(u64, Vec<u8>)], last: u64) -> std::result::Result<(), String> {
        let before = self.open.clone();
        let mut sealed = Vec::new();
        // Plain inserts, not a sled batch: a batch makes sled write its buffer out at once (an
        // extra disk write per append); atomicity comes from the journal.
        let applied = records
            .iter()
            .try_for_each(|(seq, value)| {
                sealed.extend(self.push(*seq, value.clone())?);
                Ok(())
            })
            .map_err(|e| sled_error(&self.path, "cannot append to", e).to_string());
        let journaled = applied.and_then(|()| {
            let refs: Vec<(u64, &[u8])> = records.iter().map(|(s, v)| (*s, v.as_slice())).collect();
            self.journal
                .append(&refs)
                .map_err(|e| format!("cannot write the journal {}: {e}", self.journal.path().display()))
        });
        if let Err(e) = journaled {
            // Back to the chunks as they were: a chunk sealed by this group existed in sled
            // before only if it was the open chunk's copy from a checkpoint.
            for key in sealed {
                let _ = match before.as_ref().filter(|b| b.in_sled && b.chunk.key == key) {
                    Some(b) => self.chunks.insert(key.to_be_bytes(), b.chunk.encode()).map(drop),
                    None => self.chunks.remove(key.to_be_bytes()).map(drop),
                };
            }
            self.open = before;
            return Err(e);
        }
        self.last_seq = last;
        if self.journal.len() > journal::CHECKPOINT_BYTES {
            if let Err(e) = self.checkpoint() {
                // The appends are durable in the journal; the next checkpoint tries again.
                warn!(error = %e, path = %self.path.display(), "sled checkpoint failed");
            }
        }
        Ok(())
    }

    /// The sealed chunk that holds `seq`, if any.
    fn chunk_holding(&self, seq: u64) -> Result<Option<Chunk>> {
        let found = self
            .chunks
            .get_lt(seq.saturating_add(1).to_be_bytes())
            .map_err(|e| sled_error(&self.path, "cannot read", e))?;
        let Some((key, value)) = found else { return Ok(None) };
        let key = key_seq(&key).ok_or_else(|| corrupt(&self.path))?;
        let chunk = Chunk::decode(key, &value).ok_or_else(|| corrupt(&self.path))?;
        Ok(chunk.last_seq().is_some_and(|last| last >= seq).then_some(chunk))
    }

    /// Removes acknowledged messages (`seqs` sorted) from the chunks. Not flushed here: the
    /// journal notes it (see the `journal` module) and the next checkpoint flushes it.
    fn apply_removal(&mut self, seqs: &[u64]) -> Result<()> {
        let write_err = |path: &Path, e| sled_error(path, "cannot remove from", e);
        // The sealed chunk being edited, the highest sequence number it held, whether changed.
        let mut current: Option<(Chunk, u64, bool)> = None;
        let mut removed = Vec::new();
        for &seq in seqs {
            if let Some(open) = self.open.as_mut().filter(|o| seq >= o.chunk.key) {
                if let Some(value) = open.chunk.remove(seq) {
                    open.dirty = true;
                    removed.push(value);
                }
                continue;
            }
            if current.as_ref().is_none_or(|(_, end, _)| seq > *end) {
                if let Some(done) = current.take() {
                    self.write_back(done).map_err(|e| write_err(&self.path, e))?;
                }
                current = self.chunk_holding(seq)?.map(|c| {
                    let end = c.last_seq().unwrap_or(0);
                    (c, end, false)
                });
            }
            if let Some((chunk, _, changed)) = current.as_mut() {
                if let Some(value) = chunk.remove(seq) {
                    *changed = true;
                    removed.push(value);
                }
            }
        }
        if let Some(done) = current.take() {
            self.write_back(done).map_err(|e| write_err(&self.path, e))?;
        }
        if let Some(open) = self.open.take_if(|o| o.chunk.records.is_empty()) {
            if open.in_sled {
                self.chunks.remove(open.chunk.key.to_be_bytes()).map_err(|e| write_err(&self.path, e))?;
            }
        }
        for value in removed {
            self.count = self.count.saturating_sub(1);
            self.bytes = self.bytes.saturating_sub(size_of(&value));
        }
        Ok(())
    }

    fn write_back(&self, (chunk, _, changed): (Chunk, u64, bool)) -> sled::Result<()> {
        if !changed {
            Ok(())
        } else if chunk.records.is_empty() {
            self.chunks.remove(chunk.key.to_be_bytes()).map(drop)
        } else {
            self.chunks.insert(chunk.key.to_be_bytes(), chunk.encode()).map(drop)
        }
    }

    /// Up to `limit` messages from sequence number `start` on.
    fn read(&self, start: u64, limit: usize) -> Result<Vec<QueuedMessage>> {
        let err = |e| sled_error(&self.path, "cannot read", e);
        let message = |seq: u64, value: &[u8]| -> Result<QueuedMessage> {
            let message = persist::decode_message(value.get(8..).ok_or_else(|| corrupt(&self.path))?)?;
            Ok(QueuedMessage { seq, message })
        };
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let open_key = self.open.as_ref().map(|o| o.chunk.key);
        let from = match self.chunks.get_lt(start.saturating_add(1).to_be_bytes()).map_err(err)? {
            Some((key, _)) => key_seq(&key).ok_or_else(|| corrupt(&self.path))?,
            None => 0,
        };
        for item in self.chunks.range(from.to_be_bytes()..) {
            let (key, value) = item.map_err(err)?;
            // sled's copy of the open chunk may be older than the one in memory.
            if open_key.is_some_and(|open| key_seq(&key).is_none_or(|k| k >= open)) {
                break;
            }
            for record in chunk::records(&value) {
                let (seq, value) = record.ok_or_else(|| corrupt(&self.path))?;
                if seq >= start {
                    out.push(message(seq, value)?);
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
        }
        for (seq, value) in self.open.iter().flat_map(|o| &o.chunk.records) {
            if *seq >= start {
                out.push(message(*seq, value)?);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
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
                let _ = reply.send(self.read(after.map_or(0, |a| a.saturating_add(1)), limit));
            }
            Command::Remove(mut seqs, reply) => {
                seqs.sort_unstable();
                seqs.dedup();
                let r = self.apply_removal(&seqs);
                if r.is_ok() {
                    if let Err(e) = self.journal.note_removal(&seqs) {
                        // Only a redelivery after a crash, which the platform drops by key.
                        warn!(error = %e, path = %self.journal.path().display(), "cannot note a removal in the journal");
                    }
                }
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
                self.open = None;
                let r = self
                    .chunks
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
