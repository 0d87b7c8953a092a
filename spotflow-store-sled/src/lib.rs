//! `SledStore`: a durable [`Store`](spotflow_core::Store) on sled.
//!
//! * The `db` path is sled's directory; sled locks it, so a second live process gets a clear
//!   error. A regular file at the path is refused, never overwritten.
//! * The page cache is bounded ([`DEFAULT_CACHE_BYTES`], configurable); sled's default would hold
//!   hundreds of MiB with a long queue.
//! * One dedicated thread applies the commands ([`spotflow_core::ThreadStore`]; a lone append
//!   or removal that cannot wait for an fsync runs on the caller's thread when it is idle). Appends that
//!   arrive together are written to an append journal next to sled's files and fdatasync'd once
//!   before every caller of the group is answered (with [`Durability::CrashSafe`], written without
//!   the fdatasync: that survives a killed process, not a power cut), and inserted into sled
//!   without a flush; sled is flushed (and its log fdatasync'd: sled 0.34's own flush ends with
//!   `sync_file_range`, which is not power-loss safe) every 4 MiB of journal, at `close` and with
//!   state changes, and the journal is then emptied. At open, the journal's appends that sled had
//!   not flushed are applied again. With the default [`Durability::PowerLossSafe`], every
//!   acknowledged append survives a crash and a power cut. Removals of acknowledged messages are
//!   noted in the journal without a sync of their own: they survive a killed process, and one lost
//!   to a power cut means a redelivery the platform drops by key.
//! * Messages are packed in chunks of up to 32 messages or 4 KiB per sled entry (see the `chunk`
//!   module): sled keeps metadata in memory for every page it wrote, so one message per entry made
//!   the memory grow with the queue (37 MiB with 1,000,000 messages and growing); with chunks it
//!   stays flat.
//! * The file system's free space is checked before appends ([`SledOptions::min_free_bytes`]);
//!   on a full disk appends fail with a clear error and nothing acknowledged is lost. sled itself
//!   writes when it opens, so on a full disk the store cannot be opened (a clear error) until there
//!   is room again.
//! * Recovery: sled replays its log at open. Its crash consistency is checked by the kill -9
//!   tests of `spotflow-store-tests`, not assumed.
//!
//! Devices get it through `spotflow-device` with the feature `sled` (and without `sqlite`); open
//! one yourself to give it other options, or to use it on its own:
//!
//! ```
//! use spotflow_core::testkit::sample_message; // a message as the SDK queues it
//! use spotflow_core::Store;
//! use spotflow_store_sled::{Durability, SledStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> spotflow_core::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! let store = SledStore::open_async(dir.path().join("spotflow.db"), Durability::PowerLossSafe).await?;
//! let seq = store.append_message(sample_message(1)).await?; // journaled and fdatasync'd once this returns
//! assert_eq!(store.read_messages(None, 10).await?.len(), 1);
//! store.remove_messages(&[seq]).await?;
//! assert_eq!(store.queue_stats().await?.count, 0);
//! store.close().await?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use spotflow_core::persist;
pub use spotflow_core::Durability;
use spotflow_core::{
    DurableBackend, Error, ErrorStatus, FreeSpace, Namespace, OutgoingMessage, QueueStats, QueuedMessage, Result,
    StateKey, StoreBackend, ThreadStore,
};
use tracing::{debug, warn};

mod chunk;
mod journal;
use chunk::Chunk;
use journal::{Entry, Journal};

/// Default page cache: 8 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// Free space below which appends are refused by default (16 MiB): a full disk must yield an
/// error, not a store whose own writes failed halfway.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 16 * 1024 * 1024;

/// Options of [`SledStore::open_with_options`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SledOptions {
    /// Durability of appends.
    pub durability: Durability,
    /// sled's page cache.
    pub cache_bytes: u64,
    /// Appends fail with a clear error while the file system has less free space than this.
    pub min_free_bytes: u64,
}

impl Default for SledOptions {
    fn default() -> Self {
        SledOptions {
            durability: Durability::PowerLossSafe,
            cache_bytes: DEFAULT_CACHE_BYTES,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
        }
    }
}

/// A durable store in a sled directory: `open(path, durability)`, `open_with_options`,
/// `open_async`, `open_async_with_options`, `path()`, and [`Store`](spotflow_core::Store).
pub type SledStore = ThreadStore<SledBackend>;

fn sled_error(path: &Path, context: &str, e: sled::Error) -> Error {
    let (status, detail) = match &e {
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") => {
            (ErrorStatus::Temporary, "the database is used by another process".to_owned())
        }
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
            (ErrorStatus::Temporary, "the disk is full".to_owned())
        }
        sled::Error::Corruption { .. } => {
            (ErrorStatus::Permanent, "the database is corrupt (it was left untouched)".to_owned())
        }
        other => (ErrorStatus::Permanent, other.to_string()),
    };
    Error::Store { context: format!("{context} {}: {detail}", path.display()), status, source: Some(Box::new(e)) }
}

const LAST_SEQ: &[u8] = b"last_seq";

impl DurableBackend for SledBackend {
    const LABEL: &'static str = "sled";
    type Options = SledOptions;

    fn options(durability: Durability) -> SledOptions {
        SledOptions { durability, ..SledOptions::default() }
    }

    fn durability(options: &SledOptions) -> Durability {
        options.durability
    }

    fn open(path: &Path, options: SledOptions) -> Result<SledBackend> {
        if path.is_file() {
            return Err(Error::Store {
                context: format!("{} is a file, not a sled store directory (it was left untouched)", path.display()),
                status: ErrorStatus::Permanent,
                source: None,
            });
        }
        SledBackend::open(path.to_path_buf(), options)
    }
}

/// The storage work of [`SledStore`] on a sled database and its journal, done on the store's
/// thread (see [`ThreadStore`]).
pub struct SledBackend {
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
    free: FreeSpace,
    /// Power-loss safe: journal appends are fdatasync'd.
    sync_appends: bool,
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

const CHUNKS: &str = "chunks";

impl SledBackend {
    fn open(path: PathBuf, options: SledOptions) -> Result<SledBackend> {
        let err = |c: &str| {
            let p = path.clone();
            let c = c.to_owned();
            move |e| sled_error(&p, &c, e)
        };
        // The store holds the device's tokens and SAS: its directory is owner-only (0700), so
        // whatever sled creates inside stays private; an older one is tightened with a warning.
        spotflow_core::private_fs::prepare_private_dir(&path).map_err(|e| Error::Store {
            context: format!("{}: cannot make the directory owner-only: {e}", path.display()),
            status: ErrorStatus::Permanent,
            source: None,
        })?;
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(options.cache_bytes)
            .mode(sled::Mode::LowSpace)
            .flush_every_ms(None)
            .open()
            .map_err(err("cannot open"))?;
        let chunks = db.open_tree(CHUNKS).map_err(err("cannot open"))?;
        let state = db.open_tree("state").map_err(err("cannot open"))?;
        // sled's flush on Linux ends with `sync_file_range`, which writes the data but neither
        // flushes the drive's write cache nor the file's size: a power cut could still lose it.
        // An fdatasync of sled's log file after each flush completes it (checked with strace).
        // Opened for writing: Windows' FlushFileBuffers needs it (nothing is written through it).
        let data_file =
            std::fs::OpenOptions::new().read(true).write(true).open(path.join("db")).map_err(|e| Error::Store {
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
        let mut worker = SledBackend {
            path: path.clone(),
            db,
            chunks,
            state,
            count: 0,
            bytes: 0,
            last_seq: 0,
            data_file,
            journal,
            free: FreeSpace::new(&path, options.min_free_bytes),
            sync_appends: options.durability == Durability::PowerLossSafe,
            open: None,
        };
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

    /// Adds a message to the open chunk; when that fills it, writes the chunk to sled (without a
    /// flush) and returns it. If the write fails, the chunk stays open.
    fn push(&mut self, seq: u64, value: Vec<u8>) -> sled::Result<Option<Chunk>> {
        let open = self.open.get_or_insert_with(|| OpenChunk { chunk: Chunk::new(seq), in_sled: false, dirty: false });
        open.chunk.push(seq, value);
        open.dirty = true;
        if !open.chunk.is_full() {
            return Ok(None);
        }
        self.chunks.insert(open.chunk.key.to_be_bytes(), open.chunk.encode())?;
        Ok(self.open.take().map(|o| o.chunk))
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

    /// sled's flush, then an fdatasync of its log file (see [`SledBackend::open`]).
    fn flush(&self) -> sled::Result<()> {
        self.db.flush()?;
        self.data_file.sync_data()?;
        Ok(())
    }

    /// The journal and sled records of the groups' messages, and each group's first number.
    fn records(&self, groups: &[(Namespace, Vec<OutgoingMessage>)]) -> (Vec<(u64, Vec<u8>)>, Vec<u64>) {
        let mut records = Vec::new();
        let mut firsts = Vec::with_capacity(groups.len());
        let mut seq = self.last_seq;
        for (_, messages) in groups {
            firsts.push(seq + 1);
            for m in messages {
                seq += 1;
                let mut value = m.queued_size().to_le_bytes().to_vec();
                value.extend_from_slice(&persist::encode_message(m));
                records.push((seq, value));
            }
        }
        (records, firsts)
    }

    /// Makes appended records durable in the journal, then applies them to sled (in memory).
    /// `last` becomes the last sequence number, also when the append fails: a number is never
    /// given twice, even if a failed group's frame could not be taken back. Empties the journal
    /// when it has grown large.
    fn apply_durably(&mut self, records: Vec<(u64, Vec<u8>)>, last: u64) -> Result<()> {
        self.last_seq = last;
        // The journal first: the values then move into the chunks without a copy.
        let refs: Vec<(u64, &[u8])> = records.iter().map(|(s, v)| (*s, v.as_slice())).collect();
        self.journal.append(&refs, self.sync_appends).map_err(|e| Error::Store {
            context: format!("cannot write the journal {}: {e}", self.journal.path().display()),
            status: ErrorStatus::Temporary,
            source: Some(Box::new(e)),
        })?;
        let before = self.open.as_ref().map(|o| (o.chunk.key, o.chunk.records.len(), o.in_sled, o.dirty));
        let mut sealed = Vec::new();
        // Plain inserts, not a sled batch: a batch makes sled write its buffer out at once (an
        // extra disk write per append); atomicity comes from the journal.
        for (seq, value) in records {
            match self.push(seq, value) {
                Ok(chunk) => sealed.extend(chunk),
                Err(e) => {
                    self.undo_push(before, &sealed);
                    // Or a restart would bring back messages whose append failed.
                    if let Err(e) = self.journal.retract_last(self.sync_appends) {
                        warn!(error = %e, path = %self.journal.path().display(), "cannot take back a failed append");
                    }
                    return Err(sled_error(&self.path, "cannot append to", e));
                }
            }
        }
        // A full journal is checkpointed by the store's thread (`maintain`), not by a caller
        // that appended directly.
        Ok(())
    }

    /// Takes the messages of a failed group out of the chunks again. `before`: the open chunk's
    /// key, length and flags before the group; `sealed`: the chunks the group filled (and wrote
    /// to sled), the first of which may be that open chunk.
    fn undo_push(&mut self, before: Option<(u64, usize, bool, bool)>, sealed: &[Chunk]) {
        let still_open = self.open.take().map(|o| o.chunk);
        let restored = before.and_then(|(key, len, in_sled, dirty)| {
            let mut chunk = sealed.iter().find(|c| c.key == key).cloned().or(still_open.filter(|c| c.key == key))?;
            chunk.truncate(len);
            Some(OpenChunk { chunk, in_sled, dirty })
        });
        for chunk in sealed {
            let key = chunk.key.to_be_bytes();
            // A chunk sealed by the group existed in sled before only as the open chunk's copy.
            let _ = match restored.as_ref().filter(|o| o.chunk.key == chunk.key && o.in_sled) {
                Some(o) => self.chunks.insert(key, o.chunk.encode()).map(drop),
                None => self.chunks.remove(key).map(drop),
            };
        }
        self.open = restored;
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
    fn read_from(&self, start: u64, limit: usize) -> Result<Vec<QueuedMessage>> {
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
}

impl StoreBackend for SledBackend {
    fn append(&mut self, groups: &[(Namespace, Vec<OutgoingMessage>)]) -> Result<Vec<u64>> {
        let incoming: u64 = groups.iter().flat_map(|(_, g)| g).map(|m| m.payload.len() as u64 + 64).sum();
        self.free.check(incoming, &self.path)?;
        let (records, firsts) = self.records(groups);
        let Some(&(last, _)) = records.last() else { return Ok(firsts) };
        let added = records.len() as u64;
        self.apply_durably(records, last)?;
        self.count += added;
        self.bytes += groups.iter().flat_map(|(_, g)| g).map(OutgoingMessage::queued_size).sum::<u64>();
        Ok(firsts)
    }

    fn read(&mut self, _: Namespace, after: Option<u64>, limit: usize) -> Result<Vec<QueuedMessage>> {
        self.read_from(after.map_or(0, |a| a.saturating_add(1)), limit)
    }

    fn remove(&mut self, _: Namespace, seqs: &[u64]) -> Result<()> {
        let mut seqs = seqs.to_vec();
        seqs.sort_unstable();
        seqs.dedup();
        self.apply_removal(&seqs)?;
        if let Err(e) = self.journal.note_removal(&seqs) {
            // Only a redelivery after a crash, which the platform drops by key.
            warn!(error = %e, path = %self.journal.path().display(), "cannot note a removal in the journal");
        }
        Ok(())
    }

    fn stats(&mut self, _: Namespace) -> Result<QueueStats> {
        Ok(QueueStats { count: self.count, bytes: self.bytes, last_seq: (self.last_seq > 0).then_some(self.last_seq) })
    }

    fn load_state(&mut self, _: Namespace, key: StateKey) -> Result<Option<serde_json::Value>> {
        let name = key.as_str();
        let value = self.state.get(name).map_err(|e| sled_error(&self.path, "cannot read", e))?;
        value.map(|v| serde_json::from_slice(&v).map_err(|_| corrupt(&self.path))).transpose()
    }

    fn save_state(&mut self, _: Namespace, key: StateKey, value: &serde_json::Value) -> Result<()> {
        let name = key.as_str();
        self.state
            .insert(name, value.to_string().into_bytes())
            .and_then(|_| self.checkpoint())
            .map_err(|e| sled_error(&self.path, "cannot write", e))
    }

    fn clear(&mut self, _: Namespace) -> Result<()> {
        self.open = None;
        self.chunks
            .clear()
            .and_then(|_| self.state.remove("desired").map(drop))
            .and_then(|_| self.state.remove("reported").map(drop))
            .and_then(|_| self.state.remove("c2d-inbox").map(drop))
            .and_then(|_| self.checkpoint())
            .map_err(|e| sled_error(&self.path, "cannot clear", e))?;
        self.count = 0;
        self.bytes = 0;
        Ok(())
    }

    fn maintenance_due(&self) -> bool {
        self.journal.len() > journal::CHECKPOINT_BYTES
    }

    /// Empties a full journal. If it fails, the appends stay durable in the journal and the next
    /// call tries again.
    fn maintain(&mut self) -> Result<()> {
        self.checkpoint().map_err(|e| sled_error(&self.path, "cannot checkpoint", e))
    }

    fn close(self) -> Result<()> {
        let mut this = self;
        let flushed = this.checkpoint().map_err(|e| sled_error(&this.path, "cannot flush", e));
        let path = this.path.clone();
        drop(this);
        wait_for_release(&path);
        flushed
    }
}

/// How long [`wait_for_release`] waits at most.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits (up to [`RELEASE_WAIT`]) until sled's lock on the directory is released. sled's
/// background writes hold its files for a moment after the database was dropped, and opening the
/// store again meanwhile would fail with "used by another process" (seen once in 1,500 kill -9
/// cycles, where the test reopens the store right after closing it).
fn wait_for_release(dir: &Path) {
    let Ok(file) = std::fs::File::open(dir.join("db")) else { return };
    let until = std::time::Instant::now() + RELEASE_WAIT;
    loop {
        if file.try_lock().is_ok() {
            let _ = file.unlock();
            return;
        }
        if std::time::Instant::now() >= until {
            warn!(path = %dir.display(), "sled still holds its lock after closing");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn corrupt(path: &Path) -> Error {
    Error::Store {
        context: format!("corrupt record in {}", path.display()),
        status: ErrorStatus::Permanent,
        source: None,
    }
}
