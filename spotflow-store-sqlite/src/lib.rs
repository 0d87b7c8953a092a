//! `SqliteStore`: the durable [`Store`](spotflow_core::Store) of the Spotflow device SDK on SQLite
//! (rusqlite, bundled).
//!
//! * One file at the application's `db` path, WAL journal, locked exclusively by this process:
//!   another live process opening it gets a clear error, not a "database is locked" loop.
//! * One dedicated thread owns the connection and takes commands over a channel
//!   ([`spotflow_core::ThreadStore`]); a caller runs a single append or removal itself when that
//!   thread is idle and the call cannot wait for an fsync (or the caller is a blocking one), so
//!   that a device's message costs no thread wakeups. No tokio worker ever waits for an fsync or
//!   a checkpoint: checkpoints run on the store's thread.
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
//!
//! Devices get it through `spotflow-device` (its default feature `sqlite`: the store at the
//! client's `db` path); open one yourself to give it other options, or to use it on its own:
//!
//! ```
//! use spotflow_core::testkit::sample_message; // a message as the SDK queues it
//! use spotflow_core::Store;
//! use spotflow_store_sqlite::{Durability, SqliteStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> spotflow_core::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! let store = SqliteStore::open_async(dir.path().join("spotflow.db"), Durability::PowerLossSafe).await?;
//! let seq = store.append_message(sample_message(1)).await?; // on disk, fsync'd, once this returns
//! assert_eq!(store.read_messages(None, 10).await?.len(), 1);
//! store.remove_messages(&[seq]).await?; // acknowledged by the platform
//! assert_eq!(store.queue_stats().await?.count, 0);
//! store.close().await?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, ToSql};
pub use spotflow_core::Durability;
use spotflow_core::{
    ContentEncoding, DurableBackend, Error, ErrorStatus, FreeSpace, MessageKind, Namespace, OutgoingMessage,
    QueueStats, QueuedMessage, Result, StateKey, StoreBackend, StreamTarget, ThreadStore, SINGLE_DEVICE,
};
use tracing::debug;

mod shared;
pub use shared::SharedSqliteStore;

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

/// The schema migrations of a store shared by several devices ([`SharedSqliteStore`]): the same
/// messages and state, each row marked with its device's namespace (`ns`, from `devices`).
///
/// Each device numbers its messages itself, 1, 2, 3… as a store of one device does (its
/// `last_seq` in `devices` is written in the transaction of every append, so that a number is
/// never given twice, even after every message was removed): a device's client can tell from
/// the numbers alone that it has seen every message it appended.
const SHARED_MIGRATIONS: &[&str] = &["
CREATE TABLE devices (ns INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, last_seq INTEGER NOT NULL DEFAULT 0);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    ns INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    encoding INTEGER NOT NULL,
    stream_group TEXT, stream TEXT, batch_id TEXT, batch_slice_id TEXT, message_id TEXT, chunk_id TEXT,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL
);
CREATE UNIQUE INDEX messages_by_device ON messages (ns, seq);
CREATE TABLE state (name TEXT NOT NULL, json TEXT NOT NULL, ns INTEGER NOT NULL, PRIMARY KEY (ns, name)) WITHOUT ROWID;
"];

/// Which of the two schemas a file has: one device's ([`SqliteStore`]) or several devices'
/// ([`SharedSqliteStore`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Single,
    Shared,
}

impl Layout {
    fn migrations(self) -> &'static [&'static str] {
        match self {
            Layout::Single => MIGRATIONS,
            Layout::Shared => SHARED_MIGRATIONS,
        }
    }

    fn store_type(self) -> &'static str {
        match self {
            Layout::Single => "one device's store (SqliteStore)",
            Layout::Shared => "a store shared by several devices (SharedSqliteStore)",
        }
    }

    /// The schema its migrations write, built once in memory.
    fn expected_schema(self) -> &'static [SchemaEntry] {
        static SINGLE: std::sync::OnceLock<Vec<SchemaEntry>> = std::sync::OnceLock::new();
        static SHARED: std::sync::OnceLock<Vec<SchemaEntry>> = std::sync::OnceLock::new();
        let cell = match self {
            Layout::Single => &SINGLE,
            Layout::Shared => &SHARED,
        };
        cell.get_or_init(|| {
            let reference = Connection::open_in_memory().expect("an in-memory SQLite database");
            for sql in self.migrations() {
                reference.execute_batch(sql).expect("the migrations apply to an empty database");
            }
            schema_of(&reference).expect("the reference schema reads")
        })
    }

    fn other(self) -> Layout {
        match self {
            Layout::Single => Layout::Shared,
            Layout::Shared => Layout::Single,
        }
    }
}

/// Free space below which appends are refused by default (16 MiB): a full disk must yield an
/// error, not a half-written database.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 16 * 1024 * 1024;

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
    /// One device's schema, or several devices' (set by [`SharedSqliteStore`]).
    layout: Layout,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            durability: Durability::PowerLossSafe,
            max_bytes: None,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
            layout: Layout::Single,
        }
    }
}

impl SqliteOptions {
    /// These options for a store shared by several devices.
    pub(crate) fn shared(self) -> SqliteOptions {
        SqliteOptions { layout: Layout::Shared, ..self }
    }
}

/// A durable store in one SQLite file: `open(path, durability)`, `open_with_options`,
/// `open_async`, `open_async_with_options`, `path()`, and [`Store`](spotflow_core::Store).
pub type SqliteStore = ThreadStore<SqliteBackend>;

/// A device's store in a [`SharedSqliteStore`] (from [`SharedSqliteStore::device`]). Its
/// `close` releases the device (another store of it may then be taken) and closes nothing else.
pub type SqliteDeviceStore = ThreadStore<SqliteBackend>;

fn sql_error(path: &Path, context: &str, e: rusqlite::Error) -> Error {
    let status = match e.sqlite_error_code() {
        // Busy: another process; full: until acknowledged messages are removed or space is freed.
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::DiskFull) => ErrorStatus::Temporary,
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

impl DurableBackend for SqliteBackend {
    const LABEL: &'static str = "SQLite";
    type Options = SqliteOptions;

    fn options(durability: Durability) -> SqliteOptions {
        SqliteOptions { durability, ..SqliteOptions::default() }
    }

    fn durability(options: &SqliteOptions) -> Durability {
        options.durability
    }

    fn open(path: &Path, options: SqliteOptions) -> Result<SqliteBackend> {
        let conn = open_connection(path, options.durability, options.max_bytes, options.layout)?;
        let backend = SqliteBackend::new(conn, path.to_path_buf(), options.min_free_bytes, options.layout)?;
        Ok(SqliteBackend { relaxed_removals: options.durability == Durability::PowerLossSafe, ..backend })
    }
}

fn private_error(path: &Path, e: std::io::Error) -> Error {
    Error::Store {
        context: format!("{}: cannot make the file owner-only: {e}", path.display()),
        status: ErrorStatus::Permanent,
        source: None,
    }
}

fn open_connection(path: &Path, durability: Durability, max_bytes: Option<u64>, layout: Layout) -> Result<Connection> {
    // The database holds the device's tokens and SAS: owner-only from the first byte (SQLite gives
    // its -wal and -shm files the database's mode), and an older one tightened with a warning.
    spotflow_core::private_fs::prepare_sqlite_database(path).map_err(|e| private_error(path, e))?;
    let conn = Connection::open(path).map_err(|e| sql_error(path, "cannot open", e))?;
    let sync = match durability {
        Durability::CrashSafe => "NORMAL",
        _ => "FULL",
    };
    // Take the file exclusively: a second process fails at once instead of waiting.
    conn.busy_timeout(std::time::Duration::ZERO).map_err(|e| sql_error(path, "cannot configure", e))?;
    // No automatic checkpoints: one would run inside whichever commit crosses the threshold, on
    // a caller's thread when the caller appends directly; the store's thread runs them instead
    // (`StoreBackend::maintain`).
    conn.execute_batch(&format!(
        "PRAGMA locking_mode=EXCLUSIVE; PRAGMA synchronous={sync}; PRAGMA wal_autocheckpoint=0;"
    ))
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
    migrate(&conn, path, layout)?;
    Ok(conn)
}

/// Applies the missing migrations in one transaction each.
fn migrate(conn: &Connection, path: &Path, layout: Layout) -> Result<()> {
    let version: i64 =
        conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| sql_error(path, "cannot read", e))?;
    let migrations = layout.migrations();
    let known = migrations.len() as i64;
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
    for (i, sql) in migrations.iter().enumerate().skip(version as usize) {
        let v = i + 1;
        conn.execute_batch(&format!("BEGIN IMMEDIATE; {sql} PRAGMA user_version={v}; COMMIT;"))
            .map_err(|e| sql_error(path, &format!("cannot migrate to schema {v}"), e))?;
        debug!(version = v, "schema migrated");
    }
    verify_schema(conn, path, layout)
}

/// One entry of a schema: a table with its columns (name, declared type, not null, default,
/// place in the primary key), or an index.
type SchemaEntry = (String, String, Vec<(String, String, bool, Option<String>, i64)>);

/// The tables (with their columns) and indexes of the file, sorted by name. Columns are read
/// with `table_xinfo`, so a file written with other spacing compares equal.
fn schema_of(conn: &Connection) -> rusqlite::Result<Vec<SchemaEntry>> {
    let mut query = conn.prepare("SELECT type, name FROM sqlite_schema ORDER BY name")?;
    let entries: Vec<(String, String)> =
        query.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
    let mut schema = Vec::with_capacity(entries.len());
    for (kind, name) in entries {
        let mut columns = Vec::new();
        if kind == "table" {
            let mut info =
                conn.prepare("SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_xinfo(?1)")?;
            columns = info
                .query_map([&name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
                .collect::<rusqlite::Result<_>>()?;
        }
        schema.push((kind, name, columns));
    }
    Ok(schema)
}

/// Refuses a file whose schema differs from what the migrations write: a damaged schema (a
/// column that is no longer the row id, say) would otherwise make accepted messages unreadable
/// without any error from SQLite. The reference is built once, in memory.
fn verify_schema(conn: &Connection, path: &Path, layout: Layout) -> Result<()> {
    let expected = layout.expected_schema();
    let actual = schema_of(conn).map_err(|e| sql_error(path, "cannot read the schema of", e))?;
    if actual == *expected {
        return Ok(());
    }
    if actual == *layout.other().expected_schema() {
        return Err(Error::Store {
            context: format!(
                "{} is {}, not {} (it was left untouched)",
                path.display(),
                layout.other().store_type(),
                layout.store_type()
            ),
            status: ErrorStatus::Permanent,
            source: None,
        });
    }
    let differs = expected
        .iter()
        .find(|e| !actual.contains(e))
        .or_else(|| actual.iter().find(|a| !expected.contains(a)))
        .map_or_else(String::new, |(kind, name, _)| format!(" ({kind} {name})"));
    Err(Error::Store {
        context: format!(
            "{}: its schema{differs} is not the one this store writes: the file is corrupt or was changed by \
             another program (it was left untouched)",
            path.display()
        ),
        status: ErrorStatus::Permanent,
        source: None,
    })
}

/// The size of one device's queue.
#[derive(Debug, Clone, Copy, Default)]
struct Queue {
    count: u64,
    bytes: u64,
    /// The highest sequence number given to this device (see [`SqliteBackend::new`]).
    last_seq: u64,
}

/// The storage work of [`SqliteStore`] and [`SharedSqliteStore`] on one SQLite connection, done
/// on the store's thread (see [`ThreadStore`]).
pub struct SqliteBackend {
    conn: Connection,
    path: PathBuf,
    layout: Layout,
    /// Every device's queue ([`SINGLE_DEVICE`] only, in a store of one device).
    queues: HashMap<Namespace, Queue>,
    /// The highest sequence number given in the file.
    last_seq: u64,
    free: FreeSpace,
    /// Removals commit without their own fsync (see [`SqliteBackend::remove`]).
    relaxed_removals: bool,
    /// `synchronous=FULL` could not be restored after a removal: appends retry it first.
    sync_relaxed: bool,
    /// Commits and bytes appended since the last checkpoint (see [`SqliteBackend::maintenance_due`]).
    wal_commits: u32,
    wal_bytes: u64,
}

/// A checkpoint is due after this many commits (a small one writes two or three pages to the
/// WAL: about SQLite's default of 1,000 pages) or this many bytes appended since the last one.
const CHECKPOINT_COMMITS: u32 = 384;
const CHECKPOINT_BYTES: u64 = 4 * 1024 * 1024;

fn opt(s: Option<String>) -> Option<Arc<str>> {
    s.map(Arc::from)
}

impl SqliteBackend {
    /// Reads the queues' sizes and every device's last sequence number.
    fn new(conn: Connection, path: PathBuf, min_free: u64, layout: Layout) -> Result<SqliteBackend> {
        let free = FreeSpace::new(path.parent().unwrap_or(Path::new(".")), min_free);
        let read = |e| sql_error(&path, "cannot read", e);
        // One device's file numbers its rows with AUTOINCREMENT; a shared one per device.
        let last_seq: i64 = match layout {
            Layout::Single => conn
                .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'messages'", [], |r| r.get(0))
                .optional()
                .map_err(read)?
                .unwrap_or(0),
            Layout::Shared => 0,
        };
        let mut queues = HashMap::new();
        match layout {
            Layout::Single => {
                let (count, bytes): (i64, i64) = conn
                    .query_row("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages", [], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .map_err(read)?;
                let queue = Queue { count: count as u64, bytes: bytes as u64, last_seq: last_seq as u64 };
                queues.insert(SINGLE_DEVICE, queue);
            }
            Layout::Shared => {
                let mut query = conn
                    .prepare(
                        "SELECT d.ns, d.last_seq, COUNT(m.id), COALESCE(SUM(m.size), 0), COALESCE(MAX(m.seq), 0)
                         FROM devices d LEFT JOIN messages m ON m.ns = d.ns GROUP BY d.ns",
                    )
                    .map_err(read)?;
                let rows = query
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, u32>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, i64>(4)?,
                        ))
                    })
                    .map_err(read)?;
                for row in rows {
                    let (ns, last, count, bytes, queued_last) = row.map_err(read)?;
                    let last_seq = last.max(queued_last) as u64;
                    queues.insert(ns, Queue { count: count as u64, bytes: bytes as u64, last_seq });
                }
            }
        }
        Ok(SqliteBackend {
            conn,
            path,
            layout,
            queues,
            last_seq: last_seq as u64,
            free,
            relaxed_removals: false,
            sync_relaxed: false,
            wal_commits: 0,
            wal_bytes: 0,
        })
    }

    /// One transaction for every group; the callers are answered after the commit. A single
    /// message (a device's usual append) is one statement, its own transaction.
    fn append_groups(&mut self, groups: &[(Namespace, Vec<OutgoingMessage>)]) -> rusqlite::Result<Vec<u64>> {
        self.restore_full_sync()?;
        // A shared store also writes each device's last number: never a single statement.
        let single = self.layout == Layout::Single && groups.iter().map(|(_, g)| g.len()).sum::<usize>() == 1;
        let firsts = self.transaction(single, |w| w.insert_groups(groups))?;
        self.wal_commits += 1;
        Ok(groups
            .iter()
            .zip(firsts)
            .map(|((ns, _), (first, n, bytes))| {
                let queue = self.queues.entry(*ns).or_default();
                queue.count += n;
                queue.bytes += bytes;
                self.wal_bytes += bytes;
                match first {
                    Some(first) => {
                        self.last_seq = self.last_seq.max(first + n - 1);
                        queue.last_seq = queue.last_seq.max(first + n - 1);
                        first
                    }
                    None if self.layout == Layout::Shared => queue.last_seq + 1,
                    None => self.last_seq + 1,
                }
            })
            .collect())
    }

    /// `params` without its last one (the namespace) in a store of one device, whose statements
    /// have no namespace.
    fn with_ns<'p>(&self, params: &'p [&'p dyn ToSql]) -> &'p [&'p dyn ToSql] {
        self.shared_tail(1, params)
    }

    /// `params` without the last `shared_only` ones in a store of one device.
    fn shared_tail<'p>(&self, shared_only: usize, params: &'p [&'p dyn ToSql]) -> &'p [&'p dyn ToSql] {
        match self.layout {
            Layout::Single => &params[..params.len() - shared_only],
            Layout::Shared => params,
        }
    }

    /// The statement for this layout.
    fn sql(&self, single: &'static str, shared: &'static str) -> &'static str {
        match self.layout {
            Layout::Single => single,
            Layout::Shared => shared,
        }
    }

    /// Runs `work` in one transaction: committed if it succeeds, rolled back if not. A `single`
    /// statement needs none of its own (SQLite makes it one).
    fn transaction<T>(&self, single: bool, work: impl FnOnce(&Self) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        if single {
            return work(self);
        }
        self.conn.prepare_cached("BEGIN")?.execute([])?;
        let done = work(self);
        let end = if done.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = self.conn.prepare_cached(end)?.execute([]);
        if done.is_ok() {
            ended?;
        }
        done
    }

    /// Inserts every group: per group its first sequence number, count and bytes.
    fn insert_groups(
        &self,
        groups: &[(Namespace, Vec<OutgoingMessage>)],
    ) -> rusqlite::Result<Vec<(Option<u64>, u64, u64)>> {
        let mut insert = self.conn.prepare_cached(self.sql(
            "INSERT INTO messages (kind, encoding, stream_group, stream, batch_id, batch_slice_id, message_id, chunk_id, payload, size)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            "INSERT INTO messages (kind, encoding, stream_group, stream, batch_id, batch_slice_id, message_id, chunk_id, payload, size, ns, seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        ))?;
        // A shared store's numbers, per device: the last one given, in this transaction too.
        let mut last: HashMap<Namespace, u64> = HashMap::new();
        let mut firsts = Vec::with_capacity(groups.len());
        for (ns, messages) in groups {
            let mut first = None;
            let mut bytes = 0;
            for m in messages {
                let size = m.queued_size();
                let next = match self.layout {
                    Layout::Shared => {
                        let last = last.entry(*ns).or_insert_with(|| self.queues.get(ns).map_or(0, |q| q.last_seq));
                        *last += 1;
                        *last as i64
                    }
                    Layout::Single => 0,
                };
                insert.execute(self.shared_tail(
                    2,
                    params![
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
                        ns,
                        next,
                    ],
                ))?;
                let seq = match self.layout {
                    Layout::Shared => next as u64,
                    Layout::Single => self.conn.last_insert_rowid() as u64,
                };
                first.get_or_insert(seq);
                bytes += size;
            }
            firsts.push((first, messages.len() as u64, bytes));
        }
        if !last.is_empty() {
            let mut update = self.conn.prepare_cached("UPDATE devices SET last_seq = ?2 WHERE ns = ?1")?;
            for (ns, seq) in last {
                update.execute(params![ns, seq as i64])?;
            }
        }
        Ok(firsts)
    }

    fn read(&self, ns: Namespace, after: Option<u64>, limit: usize) -> rusqlite::Result<Vec<QueuedMessage>> {
        let mut stmt = self.conn.prepare_cached(self.sql(
            "SELECT seq, kind, encoding, stream_group, stream, batch_id, batch_slice_id, message_id, chunk_id, payload
             FROM messages WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            "SELECT seq, kind, encoding, stream_group, stream, batch_id, batch_slice_id, message_id, chunk_id, payload
             FROM messages WHERE ns = ?3 AND seq > ?1 ORDER BY seq LIMIT ?2",
        ))?;
        let (after, limit) = (after.unwrap_or(0) as i64, limit.min(i64::MAX as usize) as i64);
        let rows = stmt.query_map(self.with_ns(params![after, limit, ns]), |r| {
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
    fn remove(&mut self, ns: Namespace, seqs: &[u64]) -> rusqlite::Result<()> {
        if !self.relaxed_removals {
            return self.remove_in_transaction(ns, seqs);
        }
        self.sync_relaxed = true;
        self.conn.prepare_cached("PRAGMA synchronous=NORMAL")?.execute([])?;
        let removed = self.remove_in_transaction(ns, seqs);
        self.restore_full_sync().and(removed)
    }

    fn restore_full_sync(&mut self) -> rusqlite::Result<()> {
        if self.sync_relaxed {
            self.conn.prepare_cached("PRAGMA synchronous=FULL")?.execute([])?;
            self.sync_relaxed = false;
        }
        Ok(())
    }

    /// One transaction (a single removal is one statement, its own transaction).
    fn remove_in_transaction(&mut self, ns: Namespace, seqs: &[u64]) -> rusqlite::Result<()> {
        let (count, bytes) = self.transaction(seqs.len() == 1, |w| w.delete(ns, seqs))?;
        self.wal_commits += 1;
        let queue = self.queues.entry(ns).or_default();
        queue.count -= count.min(queue.count);
        queue.bytes -= bytes.min(queue.bytes);
        Ok(())
    }

    /// Deletes the rows of `ns`: how many there were and their bytes.
    fn delete(&self, ns: Namespace, seqs: &[u64]) -> rusqlite::Result<(u64, u64)> {
        let mut delete = self.conn.prepare_cached(self.sql(
            "DELETE FROM messages WHERE seq = ?1 RETURNING size",
            "DELETE FROM messages WHERE ns = ?2 AND seq = ?1 RETURNING size",
        ))?;
        let mut removed = (0u64, 0u64);
        for &seq in seqs {
            let row = delete.query_row(self.with_ns(params![seq as i64, ns]), |r| r.get::<_, i64>(0)).optional()?;
            if let Some(size) = row {
                removed.0 += 1;
                removed.1 += size as u64;
            }
        }
        Ok(removed)
    }
}

impl StoreBackend for SqliteBackend {
    fn append(&mut self, groups: &[(Namespace, Vec<OutgoingMessage>)]) -> Result<Vec<u64>> {
        let incoming: u64 = groups.iter().flat_map(|(_, g)| g).map(|m| m.payload.len() as u64 + 64).sum();
        self.free.check(incoming, &self.path)?;
        self.append_groups(groups).map_err(|e| sql_error(&self.path, "cannot append to", e))
    }

    fn read(&mut self, ns: Namespace, after: Option<u64>, limit: usize) -> Result<Vec<QueuedMessage>> {
        SqliteBackend::read(self, ns, after, limit).map_err(|e| sql_error(&self.path, "cannot read", e))
    }

    fn remove(&mut self, ns: Namespace, seqs: &[u64]) -> Result<()> {
        SqliteBackend::remove(self, ns, seqs).map_err(|e| sql_error(&self.path, "cannot remove from", e))
    }

    fn stats(&mut self, ns: Namespace) -> Result<QueueStats> {
        let q = self.queues.get(&ns).copied().unwrap_or_default();
        Ok(QueueStats { count: q.count, bytes: q.bytes, last_seq: (q.last_seq > 0).then_some(q.last_seq) })
    }

    fn load_state(&mut self, ns: Namespace, key: StateKey) -> Result<Option<serde_json::Value>> {
        let name = key.as_str();
        let sql =
            self.sql("SELECT json FROM state WHERE name = ?1", "SELECT json FROM state WHERE name = ?1 AND ns = ?2");
        let json = self
            .conn
            .query_row(sql, self.with_ns(params![name, ns]), |r| r.get::<_, String>(0))
            .optional()
            .map_err(|e| sql_error(&self.path, "cannot read", e))?;
        json.map(|j| {
            serde_json::from_str(&j).map_err(|_| Error::Store {
                context: format!("corrupt {name} in {}", self.path.display()),
                status: ErrorStatus::Permanent,
                source: None,
            })
        })
        .transpose()
    }

    fn save_state(&mut self, ns: Namespace, key: StateKey, value: &serde_json::Value) -> Result<()> {
        let name = key.as_str();
        let sql = self.sql(
            "INSERT OR REPLACE INTO state (name, json) VALUES (?1, ?2)",
            "INSERT OR REPLACE INTO state (name, json, ns) VALUES (?1, ?2, ?3)",
        );
        self.conn
            .execute(sql, self.with_ns(params![name, value.to_string(), ns]))
            .map(drop)
            .map_err(|e| sql_error(&self.path, "cannot write", e))
    }

    fn clear(&mut self, ns: Namespace) -> Result<()> {
        let cleared = self.transaction(false, |w| {
            let messages = w.sql("DELETE FROM messages", "DELETE FROM messages WHERE ns = ?1");
            let state = w.sql(
                "DELETE FROM state WHERE name IN ('desired', 'reported', 'c2d-inbox')",
                "DELETE FROM state WHERE name IN ('desired', 'reported', 'c2d-inbox') AND ns = ?1",
            );
            w.conn.execute(messages, w.with_ns(params![ns]))?;
            w.conn.execute(state, w.with_ns(params![ns]))
        });
        cleared.map_err(|e| sql_error(&self.path, "cannot clear", e))?;
        let queue = self.queues.entry(ns).or_default();
        queue.count = 0;
        queue.bytes = 0;
        Ok(())
    }

    fn namespace(&mut self, name: &str) -> Result<Namespace> {
        if self.layout == Layout::Single {
            return Err(Error::invalid("store", "this SQLite store holds one device (open a SharedSqliteStore)"));
        }
        let write = |e| sql_error(&self.path, "cannot add a device to", e);
        let found: Option<i64> = self
            .conn
            .query_row("SELECT ns FROM devices WHERE name = ?1", params![name], |r| r.get(0))
            .optional()
            .map_err(write)?;
        let ns = match found {
            Some(ns) => ns,
            None => {
                self.conn.execute("INSERT INTO devices (name) VALUES (?1)", params![name]).map_err(write)?;
                self.conn.last_insert_rowid()
            }
        };
        Namespace::try_from(ns).ok().filter(|&ns| ns != SINGLE_DEVICE).ok_or_else(|| Error::Store {
            context: format!("{}: the device {name:?} has an invalid namespace {ns}", self.path.display()),
            status: ErrorStatus::Permanent,
            source: None,
        })
    }

    fn maintenance_due(&self) -> bool {
        self.wal_commits >= CHECKPOINT_COMMITS || self.wal_bytes >= CHECKPOINT_BYTES
    }

    /// Copies the WAL into the database file, so that the WAL starts over (as SQLite's automatic
    /// checkpoint would).
    fn maintain(&mut self) -> Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .map_err(|e| sql_error(&self.path, "cannot checkpoint", e))?;
        self.wal_commits = 0;
        self.wal_bytes = 0;
        Ok(())
    }

    /// Every commit is already durable; dropping the worker closes the connection.
    fn close(self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synchronous(w: &SqliteBackend) -> i64 {
        w.conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn removals_skip_their_fsync_but_appends_stay_fully_synchronous() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let conn = open_connection(&path, Durability::PowerLossSafe, None, Layout::Single).unwrap();
        let mut w =
            SqliteBackend { relaxed_removals: true, ..SqliteBackend::new(conn, path, 0, Layout::Single).unwrap() };
        assert_eq!(synchronous(&w), 2, "FULL");
        StoreBackend::append(&mut w, &[(SINGLE_DEVICE, vec![spotflow_core::testkit::sample_message(1)])]).unwrap();
        assert_eq!(w.queues[&SINGLE_DEVICE].count, 1);
        StoreBackend::remove(&mut w, SINGLE_DEVICE, &[1]).unwrap();
        assert_eq!(w.queues[&SINGLE_DEVICE].count, 0);
        assert_eq!(synchronous(&w), 2, "FULL again after the removal");
        // A failed restore is retried before the next append.
        w.sync_relaxed = true;
        w.conn.execute_batch("PRAGMA synchronous=NORMAL").unwrap();
        StoreBackend::append(&mut w, &[(SINGLE_DEVICE, vec![spotflow_core::testkit::sample_message(2)])]).unwrap();
        assert_eq!(synchronous(&w), 2);
    }
}
