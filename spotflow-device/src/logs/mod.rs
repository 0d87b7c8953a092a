//! Device logs through the durable queue: the application's log records reach the platform
//! across outages, restarts and `kill -9`, without the application ever waiting on the network or
//! on the disk's flush.
//!
//! A [`DeviceLogger`] takes records from a `tracing` [`LogLayer`], a `log` [`LogBridge`], the
//! Python `LogHandler` or C's `spotflow_client_log`. Each accepted record is one JSON line
//! appended to the log journal (one `write` to the page cache: it survives the process being
//! killed) before the logging call returns. A background task moves the journal's records into
//! the outgoing queue as telemetry of the logs stream ([`DEFAULT_LOG_STREAM`]): one message per
//! [`LogOptions::batch_records`] records or [`LogOptions::batch_interval`], compressed with
//! [`Compression::Fastest`]. From there they are as durable as any message (power-loss safe at
//! [`crate::Durability::PowerLossSafe`]); a power cut can lose at most the records of the last
//! batch interval, which were only in the page cache. Records left in the journal by a crash are
//! moved at the next start.
//!
//! A record:
//!
//! ```json
//! {"journal":"3f9a1c2e","seq":41,"time":"2026-12-07T04:33:00.123456Z","level":"INFO",
//!  "target":"pump","message":"pressure high","fields":{"bar":7.5},"spans":[{"name":"cycle","fields":{"n":3}}]}
//! ```
//!
//! `journal` and `seq` identify it: a record moved twice (a crash between the move and the
//! checkpoint) is a duplicate the platform drops.
//!
//! Limits, so that logging never crowds out telemetry nor blocks: at most
//! [`LogOptions::max_records_per_second`], and at most [`LogOptions::budget_bytes`] of records
//! not yet acknowledged by the platform (in the journal and in the queue). Records beyond either
//! are dropped and counted ([`LogStats`]); the count is itself sent, as a `WARN` record of target
//! `spotflow_device::logs`. The SDK's own records (targets `spotflow_*` and those of the libraries
//! it runs on: `rumqttc`, `rustls`, `reqwest`, `hyper`, `h2`, `tungstenite`, `tokio_tungstenite`,
//! `rusqlite`, `sled`) are never taken: logging cannot feed itself.
//!
//! The minimum level can be changed from the platform without a restart: the desired property
//! [`LOG_LEVEL_PROPERTY`] (`"spotflowLogLevel"`: `"off"`, `"error"`, `"warn"`, `"info"`, `"debug"`
//! or `"trace"`; absent or `null`: [`LogOptions::min_level`]).
//!
//! ```no_run
//! # async fn run(client: spotflow_device::DeviceClient) -> spotflow_device::Result<()> {
//! use tracing_subscriber::prelude::*;
//! let logger = spotflow_device::logs::DeviceLogger::start(&client, Default::default()).await?;
//! tracing_subscriber::registry().with(logger.layer()).init();
//! tracing::info!(bar = 7.5, "pressure high");
//! # Ok(()) }
//! ```

mod journal;
mod layer;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use spotflow_core::{Compression, Error, MessageKind, Result, StreamTarget};
use tokio::sync::Notify;
use tracing::{warn, Instrument};

pub use journal::JournalLocation;
use journal::{line_seq, Journal};
pub use layer::{LogBridge, LogLayer};

use crate::client::ClientInner;
use crate::{DeviceClient, Message};

/// The desired property that sets the minimum level remotely.
pub const LOG_LEVEL_PROPERTY: &str = "spotflowLogLevel";

/// The stream logs are sent to by default (in the workspace's default stream group).
pub const DEFAULT_LOG_STREAM: &str = "device-logs";

/// The name of the span the background mover runs in (its records, and those of anything it
/// calls, are never taken).
const MOVER_SPAN: &str = "spotflow_logs";

/// The journal is emptied once everything in it moved and it is larger than this.
const ROTATE_AT: u64 = 1024 * 1024;

/// Largest message of records (before compression).
const MAX_BATCH_BYTES: usize = 512 * 1024;

/// The level of a record (most severe first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Errors.
    Error = 1,
    /// Warnings.
    Warn = 2,
    /// Information.
    Info = 3,
    /// Debugging.
    Debug = 4,
    /// Tracing.
    Trace = 5,
}

impl LogLevel {
    /// Its name in records: `ERROR`, `WARN`, `INFO`, `DEBUG`, `TRACE`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "ERROR",
            LogLevel::Warn => "WARN",
            LogLevel::Info => "INFO",
            LogLevel::Debug => "DEBUG",
            LogLevel::Trace => "TRACE",
        }
    }

    /// A minimum level from its name (any case): `Ok(None)` for `off`.
    pub fn parse_filter(name: &str) -> Result<Option<LogLevel>> {
        Ok(Some(match name.to_ascii_lowercase().as_str() {
            "off" => return Ok(None),
            "error" => LogLevel::Error,
            "warn" | "warning" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => {
                return Err(Error::invalid(
                    "log level",
                    format!("{name:?} is not off, error, warn, info, debug or trace"),
                ))
            }
        }))
    }

    fn from_u8(n: u8) -> Option<LogLevel> {
        [LogLevel::Error, LogLevel::Warn, LogLevel::Info, LogLevel::Debug, LogLevel::Trace]
            .get(n.checked_sub(1)? as usize)
            .copied()
    }
}

impl From<tracing::Level> for LogLevel {
    fn from(l: tracing::Level) -> Self {
        match l {
            tracing::Level::ERROR => LogLevel::Error,
            tracing::Level::WARN => LogLevel::Warn,
            tracing::Level::INFO => LogLevel::Info,
            tracing::Level::DEBUG => LogLevel::Debug,
            tracing::Level::TRACE => LogLevel::Trace,
        }
    }
}

impl From<log::Level> for LogLevel {
    fn from(l: log::Level) -> Self {
        match l {
            log::Level::Error => LogLevel::Error,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Info => LogLevel::Info,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Trace => LogLevel::Trace,
        }
    }
}

/// How a [`DeviceLogger`] takes and sends records.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Records less severe than this are not taken (`None`: none is), unless the desired property
    /// [`LOG_LEVEL_PROPERTY`] says otherwise. Default `Info`.
    pub min_level: Option<LogLevel>,
    /// Stream group of the logs stream (`None`: the workspace's default).
    pub stream_group: Option<String>,
    /// The logs stream. Default [`DEFAULT_LOG_STREAM`].
    pub stream: String,
    /// Records per message at most. Default 1,000.
    pub batch_records: usize,
    /// How long a record waits at most before it moves into the queue. Default 1 s.
    pub batch_interval: Duration,
    /// Records taken per second at most; the rest are dropped and counted. Default 10,000.
    pub max_records_per_second: u32,
    /// Bytes of records (as JSON lines) taken but not yet acknowledged by the platform, at most;
    /// records beyond are dropped and counted. Default 32 MiB.
    pub budget_bytes: u64,
    /// Where the journal lives. Default beside the client's database (`{db}-logs`).
    pub journal: JournalLocation,
    /// Compression of the messages. Default [`Compression::Fastest`].
    pub compression: Compression,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            min_level: Some(LogLevel::Info),
            stream_group: None,
            stream: DEFAULT_LOG_STREAM.to_owned(),
            batch_records: 1000,
            batch_interval: Duration::from_secs(1),
            max_records_per_second: 10_000,
            budget_bytes: 32 * 1024 * 1024,
            journal: JournalLocation::BesideDatabase,
            compression: Compression::Fastest,
        }
    }
}

/// A [`DeviceLogger`]'s figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct LogStats {
    /// Records taken (journaled) since the start.
    pub taken: u64,
    /// Records dropped by the rate limit.
    pub dropped_rate_limit: u64,
    /// Records dropped by the byte budget.
    pub dropped_budget: u64,
    /// Records dropped because the journal could not be written (a full disk).
    pub dropped_io: u64,
    /// Bytes of records in the journal, not yet in the queue.
    pub journal_bytes: u64,
    /// Bytes of records in the queue, not yet acknowledged.
    pub queued_bytes: u64,
    /// Messages of records enqueued since the start.
    pub messages: u64,
}

/// The journal and what the write path keeps under the same lock.
struct Writer {
    journal: Journal,
    /// The line being written.
    line: Vec<u8>,
    /// The rate limit's current second and the records taken in it.
    window: (Instant, u32),
    /// Drops not yet reported in a record: (rate limit, budget, i/o).
    unreported: (u64, u64, u64),
    /// Records in the journal not yet in the queue.
    unmoved_records: usize,
}

struct LoggerInner {
    writer: Mutex<Writer>,
    /// The minimum level in force (0: off).
    level: AtomicU8,
    /// The minimum level of the options (0: off).
    local_level: u8,
    /// Bytes of records in the queue, not yet acknowledged.
    queued_bytes: AtomicU64,
    taken: AtomicU64,
    dropped: [AtomicU64; 3],
    messages: AtomicU64,
    wake: Arc<Notify>,
    options: LogOptions,
    /// The mover's state; locked by the background task and by [`DeviceLogger::flush`].
    mover: tokio::sync::Mutex<Mover>,
}

/// Takes an application's log records into the device's durable queue. See the
/// [module](self). Cheap to clone; every clone writes to the same journal.
#[derive(Clone)]
pub struct DeviceLogger {
    inner: Arc<LoggerInner>,
}

impl std::fmt::Debug for DeviceLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceLogger").field("min_level", &self.min_level()).field("stats", &self.stats()).finish()
    }
}

thread_local! {
    /// The record being composed (outside the lock).
    static BODY: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Journals open in this process: one logger per journal.
static OPEN_JOURNALS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

impl DeviceLogger {
    /// Opens the journal (moving into the queue what a previous run left in it) and starts the
    /// background mover on the current Tokio runtime. Fails when the options are invalid, the
    /// journal cannot be opened, or another logger of this process has it open.
    pub async fn start(client: &DeviceClient, options: LogOptions) -> Result<DeviceLogger> {
        if options.batch_records == 0 || options.batch_interval.is_zero() || options.max_records_per_second == 0 {
            return Err(Error::invalid(
                "log options",
                "batch_records, batch_interval and max_records_per_second must be positive",
            ));
        }
        let target = Arc::new(StreamTarget::new(options.stream_group.as_deref(), Some(&options.stream))?);
        options.compression.validate()?;
        let path = match &options.journal {
            JournalLocation::BesideDatabase => {
                let mut p = client.inner.db.as_os_str().to_owned();
                p.push("-logs");
                Some(PathBuf::from(p))
            }
            JournalLocation::File(p) => Some(p.clone()),
            JournalLocation::Memory => None,
        };
        let guard = match &path {
            Some(p) => Some(JournalGuard::claim(p)?),
            None => None,
        };
        let journal = match path.clone() {
            Some(p) => tokio::task::spawn_blocking(move || Journal::open(Some(&p))).await.map_err(|_| Error::Closed)?,
            None => Journal::open(None),
        }
        .map_err(|source| Error::System { what: "the log journal", source })?;
        let unmoved_records = usize::from(journal.written > journal.moved);
        let local_level = options.min_level.map_or(0, |l| l as u8);
        let mover = Mover {
            client: Arc::downgrade(&client.inner),
            target,
            in_queue: queued_log_batches(client, &options).await?,
            desired_version: None,
            _guard: guard,
        };
        let queued: u64 = mover.in_queue.iter().map(|(_, b)| b).sum();
        let wake = Arc::new(Notify::new());
        let inner = Arc::new(LoggerInner {
            writer: Mutex::new(Writer {
                journal,
                line: Vec::with_capacity(512),
                window: (Instant::now(), 0),
                unreported: (0, 0, 0),
                unmoved_records,
            }),
            level: AtomicU8::new(local_level),
            local_level,
            queued_bytes: AtomicU64::new(queued),
            taken: AtomicU64::new(0),
            dropped: Default::default(),
            messages: AtomicU64::new(0),
            wake: wake.clone(),
            options,
            mover: tokio::sync::Mutex::new(mover),
        });
        let logger = DeviceLogger { inner };
        tokio::spawn(run_mover(Arc::downgrade(&logger.inner), wake).instrument(tracing::info_span!(MOVER_SPAN)));
        logger.inner.wake.notify_one();
        Ok(logger)
    }

    /// A `tracing` layer that gives this logger the application's events (with their fields and
    /// the fields of the spans they are in).
    pub fn layer(&self) -> LogLayer {
        LogLayer::new(self.clone())
    }

    /// A `log` logger that gives this logger the application's records; install it with
    /// [`DeviceLogger::install_log_bridge`] or wrap it in your own.
    pub fn log_bridge(&self) -> LogBridge {
        LogBridge::new(self.clone())
    }

    /// Installs [`DeviceLogger::log_bridge`] as the process's `log` logger. Fails when one is
    /// installed already.
    pub fn install_log_bridge(&self) -> Result<()> {
        log::set_boxed_logger(Box::new(self.log_bridge()))
            .map_err(|e| Error::invalid("log bridge", format!("a `log` logger is installed already: {e}")))?;
        log::set_max_level(log::LevelFilter::Trace);
        Ok(())
    }

    /// The minimum level in force (`None`: off): the options', or the platform's through
    /// [`LOG_LEVEL_PROPERTY`].
    pub fn min_level(&self) -> Option<LogLevel> {
        LogLevel::from_u8(self.inner.level.load(Ordering::Relaxed))
    }

    /// Whether a record of `level` would be taken now.
    pub fn enabled(&self, level: LogLevel) -> bool {
        level as u8 <= self.inner.level.load(Ordering::Relaxed)
    }

    /// Takes a record without fields. Returns whether it was taken (not below the minimum level,
    /// not dropped by a limit). Never blocks on the network or the disk's flush.
    pub fn log(&self, level: LogLevel, target: &str, message: &str) -> bool {
        self.log_with_fields(level, target, message, None)
    }

    /// Takes a record with fields (a JSON object); see [`DeviceLogger::log`].
    pub fn log_with_fields(
        &self,
        level: LogLevel,
        target: &str,
        message: &str,
        fields: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> bool {
        self.write(level, target, |buf| {
            buf.extend_from_slice(b",\"message\":");
            write_json_str(buf, message);
            if let Some(fields) = fields.filter(|f| !f.is_empty()) {
                buf.extend_from_slice(b",\"fields\":");
                let _ = serde_json::to_writer(&mut *buf, fields);
            }
        })
    }

    /// Composes a record (`rest` writes `,"message":…` and what follows, without the closing
    /// brace) and journals it.
    pub(crate) fn write(&self, level: LogLevel, target: &str, rest: impl FnOnce(&mut Vec<u8>)) -> bool {
        if !self.enabled(level) {
            return false;
        }
        BODY.with(|body| {
            let Ok(mut body) = body.try_borrow_mut() else {
                // A record composed while composing one (a field's `Debug` that logs): dropped.
                return false;
            };
            body.clear();
            body.extend_from_slice(b"\"time\":\"");
            write_utc(&mut body, SystemTime::now());
            body.extend_from_slice(b"\",\"level\":\"");
            body.extend_from_slice(level.as_str().as_bytes());
            body.extend_from_slice(b"\",\"target\":");
            write_json_str(&mut body, target);
            rest(&mut body);
            body.extend_from_slice(b"}\n");
            self.journal(&body)
        })
    }

    /// Journals a composed record body (from `"time"` to the newline), within the limits.
    fn journal(&self, body: &[u8]) -> bool {
        let inner = &*self.inner;
        let mut w = spotflow_core::lock(&inner.writer);
        let now = Instant::now();
        if now.duration_since(w.window.0) >= Duration::from_secs(1) {
            w.window = (now, 0);
        }
        let budget_used = w.journal.written - w.journal.moved + inner.queued_bytes.load(Ordering::Relaxed);
        if w.window.1 >= inner.options.max_records_per_second {
            w.unreported.0 += 1;
            inner.dropped[0].fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if budget_used + body.len() as u64 + 40 > inner.options.budget_bytes {
            w.unreported.1 += 1;
            inner.dropped[1].fetch_add(1, Ordering::Relaxed);
            return false;
        }
        w.window.1 += 1;
        if w.unreported != (0, 0, 0) {
            report_drops(&mut w);
        }
        match append_record(&mut w, body) {
            Ok(()) => {
                inner.taken.fetch_add(1, Ordering::Relaxed);
                w.unmoved_records += 1;
                if w.unmoved_records >= inner.options.batch_records {
                    inner.wake.notify_one();
                }
                true
            }
            Err(_) => {
                w.unreported.2 += 1;
                inner.dropped[2].fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Moves every journaled record into the queue now (the background mover does it every
    /// [`LogOptions::batch_interval`]). After it returns, the records taken before the call are
    /// as durable as enqueued messages.
    pub async fn flush(&self) -> Result<()> {
        let mut mover = self.inner.mover.lock().await;
        mover.pass(&self.inner).await
    }

    /// The logger's figures.
    pub fn stats(&self) -> LogStats {
        let inner = &*self.inner;
        let journal_bytes = {
            let w = spotflow_core::lock(&inner.writer);
            w.journal.written - w.journal.moved
        };
        LogStats {
            taken: inner.taken.load(Ordering::Relaxed),
            dropped_rate_limit: inner.dropped[0].load(Ordering::Relaxed),
            dropped_budget: inner.dropped[1].load(Ordering::Relaxed),
            dropped_io: inner.dropped[2].load(Ordering::Relaxed),
            journal_bytes,
            queued_bytes: inner.queued_bytes.load(Ordering::Relaxed),
            messages: inner.messages.load(Ordering::Relaxed),
        }
    }
}

/// Writes `{"journal":…,"seq":…,` + `body` as one line.
fn append_record(w: &mut Writer, body: &[u8]) -> std::io::Result<()> {
    let Writer { journal, line, .. } = w;
    line.clear();
    line.extend_from_slice(b"{\"journal\":\"");
    line.extend_from_slice(journal.id.as_bytes());
    line.extend_from_slice(b"\",\"seq\":");
    let _ = write!(line, "{},", journal.next_seq);
    line.extend_from_slice(body);
    journal.append(line)
}

/// Journals a `WARN` record with the drops not yet reported.
fn report_drops(w: &mut Writer) {
    let (rate, budget, io) = std::mem::take(&mut w.unreported);
    let mut body = Vec::with_capacity(256);
    body.extend_from_slice(b"\"time\":\"");
    write_utc(&mut body, SystemTime::now());
    let _ = writeln!(
        body,
        "\",\"level\":\"WARN\",\"target\":\"spotflow_device::logs\",\"message\":\"{} log records dropped\",\
         \"fields\":{{\"dropped_rate_limit\":{rate},\"dropped_budget\":{budget},\"dropped_io\":{io}}}}}",
        rate + budget + io
    );
    if append_record(w, &body).is_ok() {
        w.unmoved_records += 1;
    } else {
        w.unreported = (rate, budget, io);
    }
}

/// The background mover's state.
struct Mover {
    client: Weak<ClientInner>,
    target: Arc<StreamTarget>,
    /// Messages of records in the queue: (sequence number, bytes of records).
    in_queue: VecDeque<(u64, u64)>,
    /// Version of the desired properties last looked at.
    desired_version: Option<u64>,
    _guard: Option<JournalGuard>,
}

impl Mover {
    /// Applies the remote level, retires acknowledged messages, and moves the journal's records
    /// into the queue.
    async fn pass(&mut self, inner: &LoggerInner) -> Result<()> {
        let client = DeviceClient { inner: self.client.upgrade().ok_or(Error::Closed)? };
        self.apply_remote_level(&client, inner);
        let acked = *client.inner.acked.borrow();
        while let Some(&(seq, bytes)) = self.in_queue.front().filter(|(seq, _)| *seq <= acked) {
            let _ = seq;
            inner.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.in_queue.pop_front();
        }
        let (from, to, next_unmoved, reader) = {
            let mut w = spotflow_core::lock(&inner.writer);
            if w.unreported != (0, 0, 0) {
                report_drops(&mut w);
            }
            let j = &w.journal;
            let to = j.written.min(j.moved + 8 * MAX_BATCH_BYTES as u64);
            (j.moved, to, j.next_unmoved_seq, j.reader(to))
        };
        if from == to {
            return Ok(());
        }
        let reader = reader.map_err(|source| Error::System { what: "the log journal", source })?;
        let bytes = tokio::task::spawn_blocking(move || reader.read(from, to))
            .await
            .map_err(|_| Error::Closed)?
            .map_err(|source| Error::System { what: "the log journal", source })?;
        // Whole lines only (the read may end inside one).
        let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let mut batch = Vec::with_capacity(end.min(MAX_BATCH_BYTES + 4096));
        let (mut records, mut last_seq, mut cursor) = (0usize, None, 0usize);
        for line in bytes[..end].split_inclusive(|&b| b == b'\n') {
            cursor += line.len();
            match line_seq(line) {
                Some(seq) if seq >= next_unmoved => {
                    batch.extend_from_slice(line);
                    records += 1;
                    last_seq = Some(seq);
                }
                // Moved before a crash lost the checkpoint's update, or not a record.
                _ => {}
            }
            if records >= inner.options.batch_records || batch.len() >= MAX_BATCH_BYTES {
                self.enqueue(&client, inner, &mut batch, &mut records, last_seq, from + cursor as u64).await?;
            }
        }
        self.enqueue(&client, inner, &mut batch, &mut records, last_seq, from + end as u64).await?;
        if (to - from) as usize > end || to < spotflow_core::lock(&inner.writer).journal.written {
            // More than one read's worth: go on at once.
            inner.wake.notify_one();
        }
        Ok(())
    }

    /// Enqueues the records in `batch` (if any) and records that the journal moved through
    /// `offset`.
    async fn enqueue(
        &mut self,
        client: &DeviceClient,
        inner: &LoggerInner,
        batch: &mut Vec<u8>,
        records: &mut usize,
        last_seq: Option<u64>,
        offset: u64,
    ) -> Result<()> {
        if !batch.is_empty() {
            // Records wait in the journal rather than push telemetry out of a full queue.
            let shared = &client.inner.shared;
            if shared.queued_bytes() + batch.len() as u64 > client.inner.options.queue_budget_bytes {
                return Err(Error::QueueFull {
                    bytes: shared.queued_bytes(),
                    budget: client.inner.options.queue_budget_bytes,
                });
            }
            let payload = std::mem::take(batch);
            let bytes = payload.len() as u64;
            let seq = client
                .enqueue(&self.target, inner.options.compression, Message::new(payload), MessageKind::Data)
                .await?;
            self.in_queue.push_back((seq, bytes));
            inner.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
            inner.messages.fetch_add(1, Ordering::Relaxed);
        }
        let next = last_seq.map(|s| s + 1);
        let (checkpoint, empty) = {
            let mut w = spotflow_core::lock(&inner.writer);
            let next = next.unwrap_or(w.journal.next_unmoved_seq);
            w.unmoved_records = w.unmoved_records.saturating_sub(std::mem::take(records));
            w.journal.moved_to(offset, next, ROTATE_AT)
        };
        let io = |source| Error::System { what: "the log journal", source };
        checkpoint.save().map_err(io)?;
        if empty {
            spotflow_core::lock(&inner.writer).journal.empty_if_moved().map_err(io)?;
        }
        Ok(())
    }

    /// Applies the desired property [`LOG_LEVEL_PROPERTY`] when the desired properties changed.
    fn apply_remote_level(&mut self, client: &DeviceClient, inner: &LoggerInner) {
        let Some(desired) = client.get_desired_properties_if_newer(self.desired_version) else { return };
        self.desired_version = Some(desired.version);
        let level = match desired.values.get(LOG_LEVEL_PROPERTY) {
            None | Some(serde_json::Value::Null) => Ok(inner.local_level),
            Some(serde_json::Value::String(s)) => LogLevel::parse_filter(s).map(|l| l.map_or(0, |l| l as u8)),
            Some(other) => Err(Error::invalid("log level", format!("{other} is not a string"))),
        };
        match level {
            Ok(level) => inner.level.store(level, Ordering::Relaxed),
            Err(e) => warn!(error = %e, property = LOG_LEVEL_PROPERTY, "desired log level ignored"),
        }
    }
}

/// The messages of the logs stream already in the queue (from a previous run): they count in the
/// budget until acknowledged.
async fn queued_log_batches(client: &DeviceClient, options: &LogOptions) -> Result<VecDeque<(u64, u64)>> {
    let mut found = VecDeque::new();
    let mut after = None;
    loop {
        let page = client.inner.store.read_messages(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.seq);
        for m in &page {
            let t = &m.message.target;
            if t.stream.as_deref() == Some(options.stream.as_str())
                && t.stream_group.as_deref() == options.stream_group.as_deref()
            {
                found.push_back((m.seq, m.message.payload.len() as u64));
            }
        }
    }
    Ok(found)
}

/// Moves records every batch interval, or when woken (a batch is full, or more is left).
async fn run_mover(logger: Weak<LoggerInner>, wake: Arc<Notify>) {
    let mut failures = 0u32;
    loop {
        let interval = match logger.upgrade() {
            Some(inner) => inner.options.batch_interval,
            None => return,
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(interval) => {}
        }
        let Some(inner) = logger.upgrade() else { return };
        let mut mover = inner.mover.lock().await;
        match mover.pass(&inner).await {
            Ok(()) => failures = 0,
            Err(Error::Closed) => return,
            Err(e) => {
                // Records stay in the journal; the next pass tries again.
                failures += 1;
                if failures.is_power_of_two() {
                    warn!(error = %e, failures, "log records not moved into the queue yet");
                }
            }
        }
    }
}

/// A journal path claimed by a logger of this process; released when the logger's mover ends.
struct JournalGuard(PathBuf);

impl JournalGuard {
    fn claim(path: &std::path::Path) -> Result<JournalGuard> {
        let mut open = spotflow_core::lock(&OPEN_JOURNALS);
        if open.iter().any(|p| p == path) {
            return Err(Error::invalid(
                "log journal",
                format!("{} is open in another DeviceLogger of this process", path.display()),
            ));
        }
        open.push(path.to_path_buf());
        Ok(JournalGuard(path.to_path_buf()))
    }
}

impl Drop for JournalGuard {
    fn drop(&mut self) {
        spotflow_core::lock(&OPEN_JOURNALS).retain(|p| p != &self.0);
    }
}

/// Writes `s` as a JSON string (quotes, backslashes and control characters escaped).
pub(crate) fn write_json_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            let _ = write!(buf, "\\u{b:04x}");
        } else {
            buf.extend_from_slice(escape);
        }
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

/// Writes `t` as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, microseconds).
fn write_utc(buf: &mut Vec<u8>, t: SystemTime) {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        buf,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_micros()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times() {
        let mut b = Vec::new();
        write_utc(&mut b, SystemTime::UNIX_EPOCH);
        assert_eq!(b, b"1970-01-01T00:00:00.000000Z");
        b.clear();
        // 2024-02-29T23:59:59.5Z (a leap day).
        write_utc(&mut b, SystemTime::UNIX_EPOCH + Duration::from_millis(1_709_251_199_500));
        assert_eq!(std::str::from_utf8(&b).unwrap(), "2024-02-29T23:59:59.500000Z");
        b.clear();
        write_utc(&mut b, SystemTime::UNIX_EPOCH + Duration::from_secs(4_102_444_800));
        assert_eq!(std::str::from_utf8(&b).unwrap(), "2100-01-01T00:00:00.000000Z");
    }

    #[test]
    fn json_strings() {
        for s in ["plain", "quo\"te", "back\\slash", "line\nbreak\ttab\r", "bell\u{7}", "ünïcödé ✓", ""] {
            let mut b = Vec::new();
            write_json_str(&mut b, s);
            assert_eq!(serde_json::from_slice::<String>(&b).unwrap(), s, "{}", String::from_utf8_lossy(&b));
            assert_eq!(b, serde_json::to_vec(s).unwrap());
        }
    }

    #[test]
    fn level_names() {
        assert_eq!(LogLevel::parse_filter("WARN").unwrap(), Some(LogLevel::Warn));
        assert_eq!(LogLevel::parse_filter("off").unwrap(), None);
        assert!(LogLevel::parse_filter("loud").is_err());
        assert_eq!(LogLevel::from_u8(LogLevel::Debug as u8), Some(LogLevel::Debug));
        assert_eq!(LogLevel::from_u8(0), None);
    }
}
