//! The emulator's SQLite database, owned by one thread: the control-state snapshot, twin history,
//! received messages (inserted in group-committed batches) and uploaded blobs.

use crate::error::EmulatorError;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::{error, warn};

use crate::state::{ControlState, Millis};

/// Told of every batch of messages stored (the live feed and its counters): the store knows
/// nothing of who listens.
pub(crate) trait IngestObserver: Send + Sync {
    /// `messages`: each stored message with its id, in order.
    fn stored(&self, messages: &mut dyn Iterator<Item = (&StoredMessage, i64)>);
}

/// A received telemetry message with its decoded properties.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredMessage {
    /// Row id (grows with arrival).
    pub id: i64,
    /// `{workspace}:{device}`.
    pub hub_device_id: String,
    /// Arrival time (Unix milliseconds).
    pub received_at: Millis,
    /// Stream group (`None`: the default one).
    pub stream_group: Option<String>,
    /// Stream (`None`: the default one).
    pub stream: Option<String>,
    /// Batch id.
    pub batch_id: Option<String>,
    /// Batch slice id.
    pub batch_slice_id: Option<String>,
    /// Message id.
    pub message_id: Option<String>,
    /// Chunk id.
    pub chunk_id: Option<String>,
    /// `complete-batch=true`.
    pub complete_batch: bool,
    /// `complete-message=true`.
    pub complete_message: bool,
    /// Content encoding the payload arrived with (`br`, `lz4`, `zstd`).
    pub content_encoding: Option<String>,
    /// Whether the payload was uploaded as a blob and linked.
    pub externalized: bool,
    /// Size of the payload on the wire.
    pub wire_size: usize,
    /// The payload, decoded (decompressed, blob resolved).
    #[serde(skip)]
    pub payload: Vec<u8>,
    /// Other properties of the property bag.
    pub other_properties: Vec<(String, String)>,
    /// The message key (`$.mid`): a redelivery with a key already stored is not stored again.
    pub message_key: Option<String>,
    /// Set when the payload could not be decoded (unknown `content-encoding`, corrupt data, or
    /// larger than the decoding limit once decoded): `payload` is then kept exactly as it arrived.
    pub decode_error: Option<String>,
}

/// Which messages to return.
#[derive(Debug, Clone, Default)]
pub struct MessageQuery {
    /// Only rows with an id greater than this.
    pub after_id: Option<i64>,
    /// Only this device.
    pub hub_device_id: Option<String>,
    /// At most this many (default 1000).
    pub limit: Option<usize>,
}

/// What became of a message handed to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// Committed, as this row.
    Inserted(i64),
    /// Its message key was already stored: a redelivery, not stored again.
    Duplicate,
    /// The write failed.
    Failed,
}

pub(crate) type AckFn = Box<dyn FnOnce(Stored) + Send>;

enum Command {
    /// Whether the control state changed (the database thread serialises it itself, see
    /// [`CONTROL_SAVE_MAX_DELAY`]), and the devices that changed, as JSON.
    SaveState(bool, Vec<(String, String)>),
    TwinHistory {
        hub_device_id: String,
        kind: &'static str,
        version: u64,
        doc: String,
    },
    Insert(Box<StoredMessage>, Option<AckFn>),
    PutBlob {
        name: String,
        hub_device_id: String,
        /// The blob's bytes, spooled to a file, and their length.
        data: (std::fs::File, u64),
        reply: oneshot::Sender<Result<bool, ()>>,
    },
    BlobOwner(String, oneshot::Sender<Option<String>>),
    GetBlob {
        name: String,
        hub_device_id: String,
        reply: oneshot::Sender<Option<Vec<u8>>>,
    },
    Query(MessageQuery, oneshot::Sender<Vec<StoredMessage>>),
    Logs(crate::logs::LogQuery, oneshot::Sender<Vec<crate::logs::LogEntry>>),
    Count(oneshot::Sender<u64>),
    /// Answered once everything sent before is written.
    Sync(mpsc::Sender<()>),
}

/// Handle to the database thread.
/// Versions of each device's desired and reported properties kept in `twin_history`.
pub const TWIN_HISTORY_KEPT: i64 = 20;

#[derive(Clone)]
pub struct Db {
    tx: mpsc::Sender<Command>,
    log_duplicates: Arc<std::sync::atomic::AtomicU64>,
}

/// The shared control state: the database thread serialises it itself, once for many changes.
pub(crate) type SharedControl = Arc<std::sync::Mutex<ControlState>>;

/// The whole control state (tokens, operations, SAS) grows with the devices (≈ 1 KB each):
/// written at every change, provisioning 10,000 devices was quadratic. It is written at once
/// when small, and otherwise at most every four times as long as writing it took (serialising
/// then takes at most a fifth of the database thread), never later than this after a change
/// (and at once before any read or sync, and at shutdown).
const CONTROL_SAVE_MAX_DELAY: Duration = Duration::from_millis(200);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS control_state (id INTEGER PRIMARY KEY CHECK (id = 0), json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (hub_device_id TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS twin_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, hub_device_id TEXT NOT NULL, kind TEXT NOT NULL,
    version INTEGER NOT NULL, document TEXT NOT NULL, at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, hub_device_id TEXT NOT NULL, received_at INTEGER NOT NULL,
    stream_group TEXT, stream TEXT, batch_id TEXT, batch_slice_id TEXT, message_id TEXT, chunk_id TEXT,
    complete_batch INTEGER NOT NULL, complete_message INTEGER NOT NULL, content_encoding TEXT,
    externalized INTEGER NOT NULL, wire_size INTEGER NOT NULL, other_properties TEXT NOT NULL,
    payload BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS messages_device ON messages (hub_device_id, id);
CREATE TABLE IF NOT EXISTS blobs (name TEXT PRIMARY KEY, hub_device_id TEXT NOT NULL, data BLOB NOT NULL);
";

/// Added after the first layout: the message key and its uniqueness per device.
const MESSAGE_KEYS: &str = "
ALTER TABLE messages ADD COLUMN message_key TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS messages_key ON messages (hub_device_id, message_key) WHERE message_key IS NOT NULL;
";

/// Added later: why a payload is stored undecoded.
const DECODE_ERRORS: &str = "ALTER TABLE messages ADD COLUMN decode_error TEXT;";

/// Largest number of messages committed in one transaction.
const MAX_BATCH: usize = 4096;

/// The error of `action` (`open`, `upgrade`, …) on the database at `path`.
fn failed<'a, E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(E) -> EmulatorError + 'a {
    move |e| EmulatorError::Database { action, path: path.to_path_buf(), source: e.into() }
}

impl Db {
    /// Opens (creating) the database at `path` and loads the control state.
    pub fn open(path: &Path, live: Arc<dyn IngestObserver>) -> Result<(Db, SharedControl), EmulatorError> {
        let conn = Connection::open(path).map_err(failed("open", path))?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;")
            .and_then(|_| conn.execute_batch(SCHEMA))
            .map_err(failed("initialise", path))?;
        let has_column = |name: &str| -> Result<bool, EmulatorError> {
            conn.query_row("SELECT COUNT(*) FROM pragma_table_info('messages') WHERE name = ?1", [name], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n > 0)
            .map_err(failed("inspect", path))
        };
        if !has_column("message_key")? {
            conn.execute_batch(MESSAGE_KEYS).map_err(failed("upgrade", path))?;
        }
        if !has_column("decode_error")? {
            conn.execute_batch(DECODE_ERRORS).map_err(failed("upgrade", path))?;
        }
        conn.execute_batch(crate::logs::SCHEMA).map_err(failed("upgrade", path))?;
        let json: Option<String> = conn
            .query_row("SELECT json FROM control_state WHERE id = 0", [], |r| r.get(0))
            .optional()
            .map_err(failed("read the state from", path))?;
        let mut state: ControlState = match json {
            Some(j) => serde_json::from_str(&j).map_err(failed("read the corrupt state in", path))?,
            None => ControlState::default(),
        };
        let devices: Vec<(String, String)> = conn
            .prepare("SELECT hub_device_id, json FROM devices")
            .and_then(|mut q| q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .map_err(failed("read the devices from", path))?;
        for (id, json) in devices {
            let device = serde_json::from_str(&json)
                .map_err(|e| failed("read a corrupt device in", path)(format!("device {id:?}: {e}")))?;
            state.devices.insert(id, device);
        }
        let (tx, rx) = mpsc::channel();
        let control = Arc::new(std::sync::Mutex::new(state));
        let shared = control.clone();
        let log_duplicates = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let duplicates = log_duplicates.clone();
        std::thread::Builder::new()
            .name("emulator-db".into())
            .spawn(move || run(conn, rx, live, shared, duplicates))
            .map_err(failed("start the thread of", path))?;
        Ok((Db { tx, log_duplicates }, control))
    }

    /// Tells the database thread that the control state (without its devices) changed, for it
    /// to write, and persists the devices marked dirty: one device's twin traffic rewrites its
    /// own row, never the whole state.
    pub fn save_state(&self, state: &mut ControlState, control_changed: bool) {
        let devices = std::mem::take(&mut state.dirty)
            .into_iter()
            .filter_map(|id| {
                let json = serde_json::to_string(state.devices.get(&id)?).ok()?;
                Some((id, json))
            })
            .collect::<Vec<_>>();
        if control_changed || !devices.is_empty() {
            let _ = self.tx.send(Command::SaveState(control_changed, devices));
        }
    }

    /// Records the patch that made `version` of a device's desired or reported properties; the
    /// last [`TWIN_HISTORY_KEPT`] of each are kept.
    pub fn twin_history(&self, hub_device_id: &str, kind: &'static str, version: u64, doc: &serde_json::Value) {
        let _ = self.tx.send(Command::TwinHistory {
            hub_device_id: hub_device_id.to_owned(),
            kind,
            version,
            doc: doc.to_string(),
        });
    }

    /// Stores a message; `ack` runs (on the database thread) once it is committed.
    pub fn insert_message(&self, message: StoredMessage, ack: Option<AckFn>) {
        if let Err(mpsc::SendError(Command::Insert(_, Some(ack)))) =
            self.tx.send(Command::Insert(Box::new(message), ack))
        {
            ack(Stored::Failed);
        }
    }

    /// Stores a blob of `hub_device_id` from a spool file of `len` bytes (copied into the database
    /// a piece at a time, never whole in memory): `Ok(false)` when the name belongs to another
    /// device (blobs are scoped to the device that created them), `Err` when the database failed.
    pub async fn put_blob(
        &self,
        name: String,
        hub_device_id: String,
        file: std::fs::File,
        len: u64,
    ) -> Result<bool, ()> {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Command::PutBlob { name, hub_device_id, data: (file, len), reply });
        rx.await.unwrap_or(Err(()))
    }

    /// The device a stored blob belongs to.
    pub async fn blob_owner(&self, name: String) -> Option<String> {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Command::BlobOwner(name, reply));
        rx.await.ok().flatten()
    }

    /// A blob of `hub_device_id` (another device's blob of that name is not found).
    pub async fn get_blob(&self, name: String, hub_device_id: String) -> Option<Vec<u8>> {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Command::GetBlob { name, hub_device_id, reply });
        rx.await.ok().flatten()
    }

    pub async fn messages(&self, query: MessageQuery) -> Vec<StoredMessage> {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Command::Query(query, reply));
        rx.await.unwrap_or_default()
    }

    /// Stored device log records.
    pub async fn logs(&self, query: crate::logs::LogQuery) -> Vec<crate::logs::LogEntry> {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Command::Logs(query, reply));
        rx.await.unwrap_or_default()
    }

    /// Device log records that arrived again and were not stored again, this run.
    pub fn log_duplicates(&self) -> u64 {
        self.log_duplicates.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Blocks (at most `timeout`) until everything sent before is written. For shutdown.
    pub fn sync(&self, timeout: Duration) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Command::Sync(tx)).is_ok() {
            let _ = rx.recv_timeout(timeout);
        }
    }

    pub async fn message_count(&self) -> u64 {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Command::Count(reply));
        rx.await.unwrap_or(0)
    }
}

fn run(
    mut conn: Connection,
    rx: mpsc::Receiver<Command>,
    live: Arc<dyn IngestObserver>,
    control: SharedControl,
    log_duplicates: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut pending: Vec<(StoredMessage, Option<AckFn>)> = Vec::new();
    let mut state = PendingState::default();
    let mut last_control_save = std::time::Instant::now();
    // How long after the last write the next may come: four times what serialising took.
    let mut control_interval = Duration::ZERO;
    let save_control = |state: &mut PendingState, last: &mut std::time::Instant, interval: &mut Duration| {
        let started = std::time::Instant::now();
        state.control = serialize_control(&control);
        state.control_changed = false;
        *last = std::time::Instant::now();
        *interval = (started.elapsed() * 4).min(CONTROL_SAVE_MAX_DELAY);
    };
    loop {
        // A control-state change waits at most `control_interval` for the next write.
        let first = if state.control_changed {
            let due = last_control_save + control_interval;
            match rx.recv_timeout(due.saturating_duration_since(std::time::Instant::now())) {
                Ok(c) => Some(c),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(c) => Some(c),
                Err(_) => break,
            }
        };
        if state.control_changed && last_control_save.elapsed() >= control_interval {
            save_control(&mut state, &mut last_control_save, &mut control_interval);
        }
        let Some(first) = first else {
            flush(&mut conn, &mut pending, &mut state, &live, &log_duplicates);
            continue;
        };
        let mut queue = vec![first];
        // Group commit: take whatever else is waiting.
        while pending.len() + queue.len() < MAX_BATCH {
            match rx.recv_timeout(Duration::ZERO) {
                Ok(c) => queue.push(c),
                Err(_) => break,
            }
        }
        for command in queue {
            match command {
                Command::Insert(m, ack) => pending.push((*m, ack)),
                Command::SaveState(changed, devices) => {
                    state.control_changed |= changed;
                    state.devices.extend(devices);
                }
                other => {
                    // Anything that reads, or waits for what was written: the control state too.
                    if state.control_changed {
                        save_control(&mut state, &mut last_control_save, &mut control_interval);
                    }
                    flush(&mut conn, &mut pending, &mut state, &live, &log_duplicates);
                    serve(&conn, other);
                }
            }
        }
        // In the same transaction as the batch when it is due.
        if state.control_changed && last_control_save.elapsed() >= control_interval {
            save_control(&mut state, &mut last_control_save, &mut control_interval);
        }
        flush(&mut conn, &mut pending, &mut state, &live, &log_duplicates);
    }
    if state.control_changed {
        state.control = serialize_control(&control);
    }
    flush(&mut conn, &mut pending, &mut state, &live, &log_duplicates);
}

/// The control state as JSON (its devices are rows of their own).
fn serialize_control(control: &SharedControl) -> Option<String> {
    let state = spotflow_core::lock(control);
    match serde_json::to_string(&*state) {
        Ok(json) => Some(json),
        Err(e) => {
            error!(error = %e, "cannot serialise the control state");
            None
        }
    }
}

/// State writes not committed yet (the latest of each).
#[derive(Default)]
struct PendingState {
    /// The control state changed since it was last serialised.
    control_changed: bool,
    control: Option<String>,
    devices: std::collections::BTreeMap<String, String>,
}

fn flush(
    conn: &mut Connection,
    pending: &mut Vec<(StoredMessage, Option<AckFn>)>,
    state: &mut PendingState,
    live: &Arc<dyn IngestObserver>,
    log_duplicates: &std::sync::atomic::AtomicU64,
) {
    if pending.is_empty() && state.control.is_none() && state.devices.is_empty() {
        return;
    }
    let mut outcomes = Vec::with_capacity(pending.len());
    let result = (|| -> rusqlite::Result<()> {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO messages (hub_device_id, received_at, stream_group, stream, batch_id, batch_slice_id,
                 message_id, chunk_id, complete_batch, complete_message, content_encoding, externalized, wire_size,
                 other_properties, payload, message_key, decode_error) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17)",
            )?;
            for (m, _) in pending.iter() {
                let other = serde_json::to_string(&m.other_properties).unwrap_or_else(|_| "[]".into());
                let inserted = insert.execute(params![
                    m.hub_device_id,
                    m.received_at as i64,
                    m.stream_group,
                    m.stream,
                    m.batch_id,
                    m.batch_slice_id,
                    m.message_id,
                    m.chunk_id,
                    m.complete_batch,
                    m.complete_message,
                    m.content_encoding,
                    m.externalized,
                    m.wire_size as i64,
                    other,
                    m.payload,
                    m.message_key,
                    m.decode_error,
                ])?;
                let outcome = if inserted > 0 { Stored::Inserted(tx.last_insert_rowid()) } else { Stored::Duplicate };
                if let (Stored::Inserted(id), true) = (outcome, crate::logs::is_log_message(m)) {
                    let (_, duplicates) = crate::logs::insert(&tx, m, id)?;
                    log_duplicates.fetch_add(duplicates, std::sync::atomic::Ordering::Relaxed);
                }
                outcomes.push(outcome);
            }
            if let Some(json) = state.control.as_ref() {
                tx.execute("INSERT OR REPLACE INTO control_state (id, json) VALUES (0, ?1)", params![json])?;
            }
            for (id, json) in &state.devices {
                tx.execute("INSERT OR REPLACE INTO devices (hub_device_id, json) VALUES (?1, ?2)", params![id, json])?;
            }
        }
        tx.commit()
    })();
    let ok = result.is_ok();
    if let Err(e) = result {
        error!(error = %e, messages = pending.len(), "database write failed");
    }
    // Written (or failed and logged); a control change not yet serialised stays due.
    *state = PendingState { control_changed: state.control_changed, ..PendingState::default() };
    if ok {
        // Counted for the dashboard and /metrics while the messages are at hand: one lock for
        // the whole batch, no copy unless a dashboard listens.
        live.stored(&mut pending.iter().zip(&outcomes).filter_map(|((m, _), o)| match o {
            Stored::Inserted(id) => Some((m, *id)),
            _ => None,
        }));
    }
    for (i, (_, ack)) in pending.drain(..).enumerate() {
        if let Some(ack) = ack {
            ack(if ok { outcomes.get(i).copied().unwrap_or(Stored::Failed) } else { Stored::Failed });
        }
    }
}

/// Writes a blob from its spool file with SQLite's incremental blob I/O (a zero blob of the
/// right size, then filled in pieces), in one transaction: `Ok(false)` when the name belongs to
/// another device. Replaces only the same device's blob.
fn put_blob(conn: &Connection, name: &str, device: &str, file: &mut std::fs::File, len: u64) -> rusqlite::Result<bool> {
    let tx = conn.unchecked_transaction()?;
    let changed = tx.execute(
        "INSERT INTO blobs (name, hub_device_id, data) VALUES (?1, ?2, zeroblob(?3))
         ON CONFLICT(name) DO UPDATE SET data = excluded.data WHERE blobs.hub_device_id = excluded.hub_device_id",
        params![name, device, len as i64],
    )?;
    if changed == 0 {
        return Ok(false);
    }
    let rowid: i64 = tx.query_row("SELECT rowid FROM blobs WHERE name = ?1", params![name], |r| r.get(0))?;
    {
        let mut blob = tx.blob_open(rusqlite::MAIN_DB, "blobs", "data", rowid, false)?;
        let copied = std::io::copy(&mut std::io::Read::take(file, len), &mut blob)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        if copied != len {
            return Err(rusqlite::Error::ToSqlConversionFailure(
                format!("the spool file held {copied} of {len} bytes").into(),
            ));
        }
    }
    tx.commit()?;
    Ok(true)
}

fn serve(conn: &Connection, command: Command) {
    match command {
        Command::TwinHistory { hub_device_id, kind, version, doc } => {
            if let Err(e) = conn.execute(
                "INSERT INTO twin_history (hub_device_id, kind, version, document, at) VALUES (?1,?2,?3,?4,?5)",
                params![hub_device_id, kind, version as i64, doc, crate::state::now_ms() as i64],
            ) {
                warn!(error = %e, "cannot store twin history");
            }
            if let Err(e) = conn.execute(
                "DELETE FROM twin_history WHERE hub_device_id = ?1 AND kind = ?2 AND version <= ?3",
                params![hub_device_id, kind, version as i64 - TWIN_HISTORY_KEPT],
            ) {
                warn!(error = %e, "cannot prune twin history");
            }
        }
        Command::PutBlob { name, hub_device_id, data: (mut file, len), reply } => {
            let _ = reply.send(put_blob(conn, &name, &hub_device_id, &mut file, len).map_err(|e| {
                error!(error = %e, "cannot store a blob");
            }));
        }
        Command::BlobOwner(name, reply) => {
            let owner = conn
                .query_row("SELECT hub_device_id FROM blobs WHERE name = ?1", params![name], |r| r.get::<_, String>(0))
                .optional()
                .ok()
                .flatten();
            let _ = reply.send(owner);
        }
        Command::GetBlob { name, hub_device_id, reply } => {
            let data = conn
                .query_row(
                    "SELECT data FROM blobs WHERE name = ?1 AND hub_device_id = ?2",
                    params![name, hub_device_id],
                    |r| r.get::<_, Vec<u8>>(0),
                )
                .optional()
                .ok()
                .flatten();
            let _ = reply.send(data);
        }
        Command::Query(q, reply) => {
            let _ = reply.send(query(conn, &q).unwrap_or_else(|e| {
                warn!(error = %e, "message query failed");
                Vec::new()
            }));
        }
        Command::Logs(q, reply) => {
            let _ = reply.send(crate::logs::query(conn, &q).unwrap_or_else(|e| {
                warn!(error = %e, "log query failed");
                Vec::new()
            }));
        }
        Command::Count(reply) => {
            let n: i64 = conn.query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0)).unwrap_or(0);
            let _ = reply.send(n as u64);
        }
        Command::Sync(reply) => {
            let _ = reply.send(());
        }
        Command::Insert(..) | Command::SaveState(..) => {}
    }
}

fn query(conn: &Connection, q: &MessageQuery) -> rusqlite::Result<Vec<StoredMessage>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, hub_device_id, received_at, stream_group, stream, batch_id, batch_slice_id, message_id, chunk_id,
         complete_batch, complete_message, content_encoding, externalized, wire_size, other_properties, payload, message_key, decode_error
         FROM messages WHERE id > ?1 AND (?2 IS NULL OR hub_device_id = ?2) ORDER BY id LIMIT ?3",
    )?;
    let rows =
        stmt.query_map(params![q.after_id.unwrap_or(0), q.hub_device_id, q.limit.unwrap_or(1000) as i64], |r| {
            let other: String = r.get(14)?;
            Ok(StoredMessage {
                id: r.get(0)?,
                hub_device_id: r.get(1)?,
                received_at: r.get::<_, i64>(2)? as u64,
                stream_group: r.get(3)?,
                stream: r.get(4)?,
                batch_id: r.get(5)?,
                batch_slice_id: r.get(6)?,
                message_id: r.get(7)?,
                chunk_id: r.get(8)?,
                complete_batch: r.get(9)?,
                complete_message: r.get(10)?,
                content_encoding: r.get(11)?,
                externalized: r.get(12)?,
                wire_size: r.get::<_, i64>(13)? as usize,
                other_properties: serde_json::from_str(&other).unwrap_or_default(),
                payload: r.get(15)?,
                message_key: r.get(16)?,
                decode_error: r.get(17)?,
            })
        })?;
    rows.collect()
}
