//! Forwards the SDK's `tracing` events to Python's `logging` (logger `spotflow_device`).
//!
//! Events are filtered by the logger's effective level (refreshed every second and at every
//! `DeviceClient.start`), queued without blocking (the network threads never wait for the GIL),
//! and handed to `logging` by one forwarding thread. If the queue overflows, the count of dropped
//! records is logged as a warning.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use pyo3::prelude::*;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// The name of the Python logger.
pub const LOGGER: &str = "spotflow_device";

/// Python's numeric level below which events are not forwarded (`logging.WARNING` until read).
static THRESHOLD: AtomicU8 = AtomicU8::new(30);
static STOPPED: AtomicBool = AtomicBool::new(false);
/// Set at interpreter exit: the forwarding thread hands over what is queued, then ends.
static STOPPING: AtomicBool = AtomicBool::new(false);
/// `true` once the forwarding thread ended (or never started).
static FORWARDER_DONE: (Mutex<bool>, std::sync::Condvar) = (Mutex::new(true), std::sync::Condvar::new());
static DROPPED: AtomicU64 = AtomicU64::new(0);
static SENDER: OnceLock<Mutex<Option<SyncSender<Record>>>> = OnceLock::new();

struct Record {
    level: u8,
    message: String,
}

fn python_level(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 40,
        Level::WARN => 30,
        Level::INFO => 20,
        Level::DEBUG => 10,
        Level::TRACE => 5,
    }
}

/// Reads the logger's effective level (call with the GIL).
pub fn refresh_threshold(py: Python<'_>) {
    let level = py
        .import("logging")
        .and_then(|l| l.call_method1("getLogger", (LOGGER,)))
        .and_then(|l| l.call_method0("getEffectiveLevel"))
        .and_then(|l| l.extract::<i64>());
    if let Ok(level) = level {
        THRESHOLD.store(level.clamp(0, 255) as u8, Ordering::Relaxed);
    }
}

struct ForwardLayer;

impl<S: Subscriber> Layer<S> for ForwardLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let level = python_level(meta.level());
        if level < THRESHOLD.load(Ordering::Relaxed) || STOPPED.load(Ordering::Relaxed) {
            return;
        }
        // The SDK's own events at every level; its dependencies' only when they warn.
        let ours = meta.target().starts_with("spotflow");
        if !ours && level < 30 {
            return;
        }
        let mut message = String::new();
        event.record(&mut Fields(&mut message));
        if !ours {
            message = format!("{}: {message}", meta.target());
        }
        let Some(sender) = SENDER.get().and_then(|s| s.lock().ok()?.clone()) else { return };
        if sender.try_send(Record { level, message }).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Formats `message` first, then `name=value` for the other fields.
struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?}"));
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

/// Installs the forwarding layer as the process's `tracing` subscriber (unless the embedding
/// program installed one). Records are queued from then on; the thread that hands them to
/// `logging` starts with the first client ([`start_forwarding`]).
pub fn install(py: Python<'_>) -> PyResult<()> {
    refresh_threshold(py);
    let (tx, rx) = sync_channel::<Record>(4096);
    if SENDER.set(Mutex::new(Some(tx))).is_err() {
        return Ok(());
    }
    let _ = RECEIVER.set(Mutex::new(Some(rx)));
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(ForwardLayer));
    Ok(())
}

static RECEIVER: OnceLock<Mutex<Option<std::sync::mpsc::Receiver<Record>>>> = OnceLock::new();

/// Starts the forwarding thread (once; called by `DeviceClient.start`).
pub fn start_forwarding(py: Python<'_>) -> PyResult<()> {
    let Some(rx) = RECEIVER.get().and_then(|r| r.lock().ok()?.take()) else { return Ok(()) };
    let logger: Py<PyAny> = py.import("logging")?.call_method1("getLogger", (LOGGER,))?.unbind();
    set_forwarder_done(false);
    std::thread::Builder::new()
        .name("spotflow-logging".into())
        .spawn(move || {
            loop {
                let wait = if STOPPING.load(Ordering::Acquire) { Duration::ZERO } else { Duration::from_secs(1) };
                let received = rx.recv_timeout(wait);
                if STOPPED.load(Ordering::Acquire) {
                    break;
                }
                match received {
                    Ok(record) => Python::attach(|py| {
                        let logger = logger.bind(py);
                        let dropped = DROPPED.swap(0, Ordering::Relaxed);
                        if dropped > 0 {
                            let text = format!("{dropped} log records were dropped (logging could not keep up)");
                            let _ = logger.call_method1("log", (30, text));
                        }
                        let _ = logger.call_method1("log", (record.level, record.message));
                        // Everything already queued, under the same GIL acquisition.
                        while let Ok(next) = rx.try_recv() {
                            let _ = logger.call_method1("log", (next.level, next.message));
                        }
                        refresh_threshold(py);
                    }),
                    Err(RecvTimeoutError::Timeout) if STOPPING.load(Ordering::Acquire) => break,
                    Err(RecvTimeoutError::Timeout) => Python::attach(refresh_threshold),
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            set_forwarder_done(true);
        })
        .map_err(|e| crate::SpotflowError::new_err(format!("cannot start the logging thread: {e}")))?;
    Ok(())
}

fn set_forwarder_done(done: bool) {
    let (lock, changed) = &FORWARDER_DONE;
    *spotflow_core::lock(lock) = done;
    changed.notify_all();
}

/// Stops forwarding at interpreter exit: the records already queued are handed to `logging`
/// (waiting at most 2 s, without the GIL), then the thread ends and never takes the GIL again.
pub fn stop(py: Python<'_>) {
    STOPPING.store(true, Ordering::Release);
    if let Some(sender) = SENDER.get() {
        if let Ok(mut s) = sender.lock() {
            s.take();
        }
    }
    py.detach(|| {
        let (lock, changed) = &FORWARDER_DONE;
        let done = spotflow_core::lock(lock);
        let _ = changed.wait_timeout_while(done, Duration::from_secs(2), |done| !*done);
    });
    STOPPED.store(true, Ordering::Release);
}

/// Whether the interpreter is shutting down (callbacks are no longer called).
pub fn stopped() -> bool {
    STOPPING.load(Ordering::Acquire)
}

/// Logs from Rust code holding the GIL (used for exceptions raised by user callbacks).
pub fn log_exception(py: Python<'_>, what: &str, err: PyErr) {
    let logged = py.import("logging").and_then(|l| l.call_method1("getLogger", (LOGGER,))).and_then(|logger| {
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("exc_info", err.clone_ref(py).into_value(py))?;
        logger.call_method("error", (format!("{what} raised an exception: {err}"),), Some(&kwargs))
    });
    if logged.is_err() {
        err.print(py);
    }
}
