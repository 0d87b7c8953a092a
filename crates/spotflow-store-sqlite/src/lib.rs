//! `SqliteStore`: the durable [`Store`] of the Spotflow device SDK on SQLite (rusqlite, bundled).
//!
//! * One file at the application's `db` path, WAL journal, locked exclusively by this process:
//!   another live process opening it gets a clear error, not a "database is locked" loop.
//! * One dedicated thread owns the connection and takes commands over a channel; no tokio worker
//!   ever blocks on SQLite.
//! * Group commit: appends that arrive together are written in one transaction, and every caller
//!   is answered only after that transaction is durable: with [`Durability::PowerLossSafe`]
//!   (default) SQLite runs with `synchronous=FULL`, so the WAL is fsync'd at every commit; with
//!   [`Durability::CrashSafe`] it runs with `synchronous=NORMAL`, which survives a crash of the
//!   process (kill -9) but may lose the last commits on power loss. Removals of acknowledged
//!   messages commit without an fsync of their own in both modes (the next append's commit syncs
//!   them); one lost to a power cut is a redelivery the platform drops by its message key.
//! * Schema versions with migrations (`PRAGMA user_version`); a file written by a newer release
//!   or a file that is not an SQLite database is refused with an error naming it, and never
//!   overwritten.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use spotflow_core::persist;
use spotflow_core::{
    ContentEncoding, DesiredState, DeviceIdentity, Error, ErrorStatus, MessageKind, OutgoingMessage, QueueStats,
    QueuedMessage, ReportedState, Result, Store, StreamTarget,
};
use tokio::sync::oneshot;
use tracing::debug;

/// How far an append is durable when it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Survives power loss: the commit is fsync'd before the caller is answered (default).
    #[default]
    PowerLossSafe,
    /// Survives a crash of the process (kill -9), not a power cut: much faster single appends.
    CrashSafe,
}

/// The schema migrations, in order; `PRAGMA user_version` counts how many are applied.
/// Version 1 is the first released schema.
const MIGRATIONS: &[&str] = &["
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind INTEGER NOT NULL,
    encoding INTEGER NOT NULL,
    stream_group TEXT, stream TEXT, batch_id TEXT, batch_slice_id TEXT, message_id TEXT, chunk_id TEXT,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE state (name TEXT PRIMARY KEY, json TEXT NOT NULL);
"];

/// Free space below which appends are refused by default (16 MiB): a full disk must yield an
/// error, not a half-written database.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 16 * 1024 * 1024;

/// Free space is checked again after this many bytes were appended.
const FREE_CHECK_INTERVAL: u64 = 1024 * 1024;

/// Options of [`SqliteStore::open_with_options`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// Durability of appends.
    pub durability: Durability,
    /// Largest size of the database (`None`: unlimited).
    pub max_bytes: Option<u64>,
    /// Appends fail with a clear error while the file system has less free space than this.
    pub min_free_bytes: u64,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions { durability: Durability::PowerLossSafe, max_bytes: None, min_free_bytes: DEFAULT_MIN_FREE_BYTES }
    }
}

/// Appends merged into one transaction at most.
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

/// A durable store in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    tx: mpsc::Sender<Command>,
    path: Arc<PathBuf>,
    /// Crash safe: a commit takes microseconds, less than putting the caller's thread to sleep
    /// and waking it up again, so the caller polls for the answer briefly first.
    poll_reply: bool,
    /// Calls waiting for an answer; only a lone caller polls (concurrent ones are grouped anyway).
    waiting: Arc<std::sync::atomic::AtomicUsize>,
}

fn sql_error(path: &Path, context: &str, e: rusqlite::Error) -> Error {
    let status = match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => ErrorStatus::Temporary,
        _ => ErrorStatus::Permanent,
    };
    let detail = match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => "the disk (or the database's size limit) is full".to_owned(),
        Some(ErrorCode::NotADatabase) => "the file is not an SQLite database (it was left untouched)".to_owned(),
        Some(ErrorCode::DatabaseCorrupt) => "the database file is corrupt (it was left untouched)".to_owned(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            "the database is used by another process".to_owned()
        }
        _ => e.to_string(),
    };
    Error::Store { context: format!("{context} {}: {detail}", path.display()), status, source: Some(Box::new(e)) }
}

fn closed() -> Error {
    Error::Store { context: "the SQLite store thread stopped".into(), status: ErrorStatus::Permanent, source: None }
}

impl SqliteStore {
    /// Opens (creating) the database at `path` with the given durability. Blocks while the file is
    /// opened and migrated (on the store's own thread); inside an async runtime use
    /// [`SqliteStore::open_async`].
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<SqliteStore> {
        Self::open_with_options(path, SqliteOptions { durability, ..SqliteOptions::default() })
    }

    /// Like [`SqliteStore::open`] with every option (size limit, free-space reserve).
    pub fn open_with_options(path: impl AsRef<Path>, options: SqliteOptions) -> Result<SqliteStore> {
        let (ready, opened) = mpsc::channel();
        let store = Self::start(path.as_ref(), options, move |r| drop(ready.send(r)))?;
        opened.recv().map_err(|_| closed())??;
        Ok(store)
    }

    /// [`SqliteStore::open`] without blocking the async runtime.
    pub async fn open_async(path: impl AsRef<Path>, durability: Durability) -> Result<SqliteStore> {
        let (ready, opened) = oneshot::channel();
        let options = SqliteOptions { durability, ..SqliteOptions::default() };
        let store = Self::start(path.as_ref(), options, move |r| drop(ready.send(r)))?;
        opened.await.map_err(|_| closed())??;
        Ok(store)
    }

    /// Starts the store's thread, which opens the database and reports through `ready`.
    fn start(
        path: &Path,
        options: SqliteOptions,
        ready: impl FnOnce(Result<()>) + Send + 'static,
    ) -> Result<SqliteStore> {
        let path = path.to_path_buf();
        let (tx, rx) = mpsc::channel();
        let worker_path = path.clone();
        std::thread::Builder::new()
            .name("spotflow-sqlite".into())
            .spawn(move || {
                let worker = open_connection(&worker_path, options.durability, options.max_bytes)
                    .and_then(|c| Worker::new(c, worker_path, options.min_free_bytes))
                    .map(|w| Worker { relaxed_removals: options.durability == Durability::PowerLossSafe, ..w });
                match worker {
                    Ok(w) => {
                        ready(Ok(()));
                        w.run(rx);
                    }
                    Err(e) => ready(Err(e)),
                }
            })
            .map_err(|e| Error::store("cannot start the SQLite thread", e))?;
        debug!(path = %path.display(), ?options, "opening the SQLite store");
        Ok(SqliteStore {
            tx,
            path: Arc::new(path),
            poll_reply: options.durability == Durability::CrashSafe,
            waiting: Arc::default(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command) -> Result<T> {
        use std::sync::atomic::Ordering;
        let (reply, mut rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| closed())?;
        let alone = self.waiting.fetch_add(1, Ordering::AcqRel) == 0;
        let _waiting = WaitingGuard(&self.waiting);
        if self.poll_reply && alone {
            let until = std::time::Instant::now() + std::time::Duration::from_micros(REPLY_POLL_MICROS);
            while std::time::Instant::now() < until {
                match rx.try_recv() {
                    Ok(result) => return result,
                    Err(oneshot::error::TryRecvError::Closed) => return Err(closed()),
                    // Other tasks of this thread run meanwhile (their appends join the group).
                    Err(oneshot::error::TryRecvError::Empty) => tokio::task::yield_now().await,
                }
            }
        }
        rx.await.map_err(|_| closed())?
    }
}

fn open_connection(path: &Path, durability: Durability, max_bytes: Option<u64>) -> Result<Connection> {
    let conn = Connection::open(path).map_err(|e| sql_error(path, "cannot open", e))?;
    let sync = match durability {
        Durability::PowerLossSafe => "FULL",
        Durability::CrashSafe => "NORMAL",
    };
    // Take the file exclusively: a second process fails at once instead of waiting.
    conn.busy_timeout(std::time::Duration::ZERO).map_err(|e| sql_error(path, "cannot configure", e))?;
    conn.execute_batch(&format!("PRAGMA locking_mode=EXCLUSIVE; PRAGMA synchronous={sync};"))
        .map_err(|e| sql_error(path, "cannot configure", e))?;
    let mode: String =
        conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(|e| sql_error(path, "cannot open", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Store {
            context: format!("{}: cannot switch to WAL (journal mode {mode})", path.display()),
            status: ErrorStatus::Permanent,
            source: None,
        });
    }
    if let Some(max) = max_bytes {
        let page: i64 =
            conn.query_row("PRAGMA page_size", [], |r| r.get(0)).map_err(|e| sql_error(path, "cannot configure", e))?;
        let pages = (max as i64 / page.max(1)).max(8);
        conn.execute_batch(&format!("PRAGMA max_page_count={pages};"))
            .map_err(|e| sql_error(path, "cannot configure", e))?;
    }
    migrate(&conn, path)?;
    Ok(conn)
}

/// Applies the missing migrations in one transaction each.
fn migrate(conn: &Connection, path: &Path) -> Result<()> {
    let version: i64 =
        conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| sql_error(path, "cannot read", e))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(Error::Store {
            context: format!(
                "{} has schema version {version}, written by a newer release (this one knows {known})",
                path.display()
            ),
            status: ErrorStatus::Permanent,
            source: None,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let v = i + 1;
        conn.execute_batch(&format!("BEGIN IMMEDIATE; {sql} PRAGMA user_version={v}; COMMIT;"))
            .map_err(|e| sql_error(path, &format!("cannot migrate to schema {v}"), e))?;
        debug!(version = v, "schema migrated");
    }
    Ok(())
}

/// Counts a call out of [`SqliteStore::waiting`] when it ends (also when its future is dropped).
struct WaitingGuard<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// How long a caller of a crash-safe store polls for the answer before it awaits it.
const REPLY_POLL_MICROS: u64 = 50;

struct Worker {
    conn: Connection,
    path: PathBuf,
    count: u64,
    bytes: u64,
    last_seq: u64,
    min_free: u64,
    /// Bytes appended since free space was last checked (`None`: check before the next append).
    since_check: Option<u64>,
    /// Removals commit without their own fsync (see [`Worker::remove`]).
    relaxed_removals: bool,
    /// `synchronous=FULL` could not be restored after a removal: appends retry it first.
    sync_relaxed: bool,
}

fn opt(s: Option<String>) -> Option<Arc<str>> {
    s.map(Arc::from)
}

impl Worker {
    fn new(conn: Connection, path: PathBuf, min_free: u64) -> Result<Worker> {
        let (count, bytes): (i64, i64) = conn
            .query_row("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| sql_error(&path, "cannot read", e))?;
        let last_seq: i64 = conn
            .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'messages'", [], |r| r.get(0))
            .optional()
            .map_err(|e| sql_error(&path, "cannot read", e))?
            .unwrap_or(0);
        Ok(Worker {
            conn,
            path,
            count: count as u64,
            bytes: bytes as u64,
            last_seq: last_seq as u64,
            min_free,
            since_check: None,
            relaxed_removals: false,
            sync_relaxed: false,
        })
    }

    /// Free space of the database's file system, checked every [`FREE_CHECK_INTERVAL`] bytes.
    fn check_free_space(&mut self, incoming: u64) -> Result<()> {
        let due = self.since_check.is_none_or(|b| b + incoming >= FREE_CHECK_INTERVAL);
        if !due {
            self.since_check = self.since_check.map(|b| b + incoming);
            return Ok(());
        }
        let dir = self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let free = match rustix::fs::statvfs(dir) {
            Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
            // Unknown: let SQLite report a full disk itself.
            Err(_) => u64::MAX,
        };
        if free < self.min_free.saturating_add(incoming) {
            self.since_check = None;
            return Err(Error::Store {
                context: format!(
                    "not enough free disk space for {}: {free} bytes free, {} kept in reserve",
                    self.path.display(),
                    self.min_free
                ),
                status: ErrorStatus::Temporary,
                source: None,
            });
        }
        self.since_check = Some(0);
        Ok(())
    }

    fn run(mut self, rx: mpsc::Receiver<Command>) {
        while let Some(first) = spotflow_core::recv_polling(&rx, spotflow_core::STORE_THREAD_POLL) {
            let mut appends = Vec::new();
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Append(messages, reply) => appends.push((messages, reply)),
                    Command::Close(reply) => {
                        self.append_group(&mut appends);
                        drop(self);
                        let _ = reply.send(Ok(()));
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

    /// One transaction for every waiting append; each caller answered after the commit.
    fn append_group(&mut self, appends: &mut Vec<(Vec<OutgoingMessage>, oneshot::Sender<Result<u64>>)>) {
        if appends.is_empty() {
            return;
        }
        let incoming: u64 = appends.iter().flat_map(|(m, _)| m.iter()).map(|m| m.payload.len() as u64 + 64).sum();
        if let Err(e) = self.check_free_space(incoming) {
            let shown = e.to_string();
            for (_, reply) in appends.drain(..) {
                let _ = reply.send(Err(Error::Store {
                    context: shown.clone(),
                    status: ErrorStatus::Temporary,
                    source: None,
                }));
            }
            return;
        }
        let path = self.path.clone();
        let result = (|| -> rusqlite::Result<Vec<(u64, u64, u64)>> {
            self.restore_full_sync()?;
            let tx = self.conn.transaction()?;
            let mut firsts = Vec::with_capacity(appends.len());
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO messages (kind, encoding, stream_group, stream, batch_id, batch_slice_id, message_id, chunk_id, payload, size)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?;
                for (messages, _) in appends.iter() {
                    let mut first = None;
                    let mut bytes = 0;
                    for m in messages {
                        let size = m.queued_size();
                        insert.execute(params![
                            m.kind.code(),
                            ContentEncoding::code(m.content_encoding),
                            m.target.stream_group.as_deref(),
                            m.target.stream.as_deref(),
                            m.batch_id.as_deref(),
                            m.batch_slice_id.as_deref(),
                            m.message_id.as_deref(),
                            m.chunk_id.as_deref(),
                            &m.payload[..],
                            size as i64,
                        ])?;
                        let seq = tx.last_insert_rowid() as u64;
                        first.get_or_insert(seq);
                        bytes += size;
                    }
                    firsts.push((first.unwrap_or(0), messages.len() as u64, bytes));
                }
            }
            tx.commit()?;
            Ok(firsts)
        })();
        match result {
            Ok(firsts) => {
                for ((_, reply), (first, n, bytes)) in appends.drain(..).zip(firsts) {
                    self.count += n;
                    self.bytes += bytes;
                    if n > 0 {
                        self.last_seq = self.last_seq.max(first + n - 1);
                    }
                    let _ = reply.send(Ok(if n > 0 { first } else { self.last_seq + 1 }));
                }
            }
            Err(e) => {
                let shown = sql_error(&path, "cannot append to", e).to_string();
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

    fn serve(&mut self, command: Command) {
        let path = self.path.clone();
        let err = |context: &str| {
            let path = path.clone();
            let context = context.to_owned();
            move |e: rusqlite::Error| sql_error(&path, &context, e)
        };
        match command {
            Command::Append(..) | Command::Close(_) => {}
            Command::Read(after, limit, reply) => {
                let _ = reply.send(self.read(after, limit).map_err(err("cannot read")));
            }
            Command::Remove(seqs, reply) => {
                let _ = reply.send(self.remove(&seqs).map_err(err("cannot remove from")));
            }
            Command::Stats(reply) => {
                let _ = reply.send(Ok(QueueStats {
                    count: self.count,
                    bytes: self.bytes,
                    last_seq: (self.last_seq > 0).then_some(self.last_seq),
                }));
            }
            Command::LoadState(name, reply) => {
                let r = self
                    .conn
                    .query_row("SELECT json FROM state WHERE name = ?1", params![name], |r| r.get::<_, String>(0))
                    .optional()
                    .map_err(err("cannot read"))
                    .and_then(|j| {
                        j.map(|j| {
                            serde_json::from_str(&j).map_err(|_| Error::Store {
                                context: format!("corrupt {name} in {}", self.path.display()),
                                status: ErrorStatus::Permanent,
                                source: None,
                            })
                        })
                        .transpose()
                    });
                let _ = reply.send(r);
            }
            Command::SaveState(name, value, reply) => {
                let r = self
                    .conn
                    .execute(
                        "INSERT OR REPLACE INTO state (name, json) VALUES (?1, ?2)",
                        params![name, value.to_string()],
                    )
                    .map(|_| ())
                    .map_err(err("cannot write"));
                let _ = reply.send(r);
            }
            Command::Clear(reply) => {
                let r = self
                    .conn
                    .execute_batch(
                        "BEGIN; DELETE FROM messages; DELETE FROM state WHERE name IN ('desired', 'reported'); COMMIT;",
                    )
                    .map_err(err("cannot clear"));
                if r.is_ok() {
                    self.count = 0;
                    self.bytes = 0;
                }
                let _ = reply.send(r);
            }
        }
    }

    fn read(&self, after: Option<u64>, limit: usize) -> rusqlite::Result<Vec<QueuedMessage>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, kind, encoding, stream_group, stream, batch_id, batch_slice_id, message_id, chunk_id, payload
             FROM messages WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after.unwrap_or(0) as i64, limit.min(i64::MAX as usize) as i64], |r| {
            let kind: u8 = r.get(1)?;
            let encoding: u8 = r.get(2)?;
            let bad = |i| rusqlite::Error::IntegralValueOutOfRange(i, 0);
            Ok(QueuedMessage {
                seq: r.get::<_, i64>(0)? as u64,
                message: OutgoingMessage {
                    kind: MessageKind::from_code(kind).map_err(|_| bad(1))?,
                    content_encoding: ContentEncoding::from_code(encoding).map_err(|_| bad(2))?,
                    target: Arc::new(StreamTarget { stream_group: opt(r.get(3)?), stream: opt(r.get(4)?) }),
                    batch_id: opt(r.get(5)?),
                    batch_slice_id: opt(r.get(6)?),
                    message_id: opt(r.get(7)?),
                    chunk_id: opt(r.get(8)?),
                    payload: Bytes::from(r.get::<_, Vec<u8>>(9)?),
                },
            })
        })?;
        rows.collect()
    }

    /// Removes acknowledged messages. With `synchronous=FULL`, the removal commits without an
    /// fsync of its own (`synchronous=NORMAL` for this transaction): the next append's commit
    /// syncs it together with the append, and a removal lost to a power cut only means a
    /// redelivery that the platform drops by its message key. The appends' own fsync, which the
    /// durability promise rests on, is untouched; a single sender then pays one fsync per
    /// message instead of one per message plus one per acknowledgement batch.
    fn remove(&mut self, seqs: &[u64]) -> rusqlite::Result<()> {
        if !self.relaxed_removals {
            return self.remove_in_transaction(seqs);
        }
        self.sync_relaxed = true;
        self.conn.execute_batch("PRAGMA synchronous=NORMAL")?;
        let removed = self.remove_in_transaction(seqs);
        self.restore_full_sync().and(removed)
    }

    fn restore_full_sync(&mut self) -> rusqlite::Result<()> {
        if self.sync_relaxed {
            self.conn.execute_batch("PRAGMA synchronous=FULL")?;
            self.sync_relaxed = false;
        }
        Ok(())
    }

    fn remove_in_transaction(&mut self, seqs: &[u64]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        let mut removed = (0u64, 0u64);
        {
            let mut delete = tx.prepare_cached("DELETE FROM messages WHERE seq = ?1 RETURNING size")?;
            for &seq in seqs {
                if let Some(size) = delete.query_row(params![seq as i64], |r| r.get::<_, i64>(0)).optional()? {
                    removed.0 += 1;
                    removed.1 += size as u64;
                }
            }
        }
        tx.commit()?;
        self.count -= removed.0.min(self.count);
        self.bytes -= removed.1.min(self.bytes);
        Ok(())
    }
}

#[async_trait]
impl Store for SqliteStore {
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

    /// Closes the database now (releasing the file for another process), instead of when the
    /// last clone is dropped. Later calls on any clone fail.
    async fn close(&self) -> Result<()> {
        match self.call(Command::Close).await {
            Err(e) if matches!(&e, Error::Store { context, .. } if context.contains("thread stopped")) => Ok(()),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synchronous(w: &Worker) -> i64 {
        w.conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn removals_skip_their_fsync_but_appends_stay_fully_synchronous() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let conn = open_connection(&path, Durability::PowerLossSafe, None).unwrap();
        let mut w = Worker { relaxed_removals: true, ..Worker::new(conn, path, 0).unwrap() };
        assert_eq!(synchronous(&w), 2, "FULL");
        let (reply, _rx) = oneshot::channel();
        let mut appends = vec![(vec![spotflow_core::testkit::sample_message(1)], reply)];
        w.append_group(&mut appends);
        assert_eq!(w.count, 1);
        w.remove(&[1]).unwrap();
        assert_eq!(w.count, 0);
        assert_eq!(synchronous(&w), 2, "FULL again after the removal");
        // A failed restore is retried before the next append.
        w.sync_relaxed = true;
        w.conn.execute_batch("PRAGMA synchronous=NORMAL").unwrap();
        let (reply, _rx) = oneshot::channel();
        w.append_group(&mut vec![(vec![spotflow_core::testkit::sample_message(2)], reply)]);
        assert_eq!(synchronous(&w), 2);
    }
}
