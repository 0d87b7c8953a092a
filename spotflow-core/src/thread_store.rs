//! The runtime of the durable stores: a [`Store`] whose storage work runs on one dedicated
//! thread that owns the backend.
//!
//! A store crate implements [`StoreBackend`] (blocking calls on its files) and [`DurableBackend`]
//! (how it opens from a path); its store is then `ThreadStore<ItsBackend>` (a type alias in its
//! crate: `SqliteStore`, `SledStore`), which owns the thread and a bounded channel to it, merges
//! appends that arrive together into one call of [`StoreBackend::append`] (group commit: one
//! durable write for all of them, each caller answered after it), and implements [`Store`]. No
//! tokio worker ever waits for a flush to the disk (an fsync) or a checkpoint.
//!
//! # The fast path at a device's pace, and why it stays
//!
//! Handing every call to the thread costs two thread wakeups per call, each several times the
//! CPU of an append that needs no fsync. So a caller runs a small append or removal itself when
//! the store's thread does not hold the backend at that moment (one `try_lock`, no wakeup): a
//! removal always (the backends commit removals without an fsync), an append without an fsync
//! at a device's pace, and any append of a blocking caller (see [`run_as_blocking_caller`]).
//! Appends that come close together from tasks, and callers that find the backend taken, queue
//! for the thread, which merges them. The thread polls for its next command briefly while
//! commands come quickly ([`crate::adaptive_poll`]), and a lone caller then polls for its answer.
//! Each of these was measured with the `device_rate` and `stores` benchmarks (`BENCHMARKS.md`):
//! at 200 msg/s the blocking client's CPU per message went 566 µs (every call to the thread, the
//! thread always polling) → 209 µs (adaptive polling) → 148 µs (direct calls); removing the
//! direct calls again costs more than the 5 % that would justify the simpler design (see the
//! CHANGELOG for the measurement of this version).

use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};

use crate::adaptive_poll::{AdaptivePoll, STORE_THREAD_POLL};
use crate::{
    lock, persist, DesiredState, DeviceIdentity, Error, ErrorStatus, OutgoingMessage, QueueStats, QueuedMessage,
    ReportedState, Result, Store,
};

/// How far an append (`enqueue_message`) is durable when it returns, in the durable stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Survives power loss: on the disk (fsync'd) before the caller is answered (default).
    #[default]
    PowerLossSafe,
    /// Survives a crash of the process (kill -9), not a power cut: much faster single appends.
    CrashSafe,
}

/// One device's part of a store: its queue, identity and properties. A store of one device has
/// only [`SINGLE_DEVICE`]; a store shared by several devices (a gateway's) gives each device
/// its own through [`StoreBackend::namespace`], and every other call names the one it is about.
pub type Namespace = u32;

/// The namespace of a store that holds one device.
pub const SINGLE_DEVICE: Namespace = 0;

/// The state documents a store keeps per device, besides its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateKey {
    /// The device's identity and credentials ([`DeviceIdentity`]).
    Identity,
    /// The last desired properties received ([`DesiredState`]).
    Desired,
    /// The reported properties and what is not yet sent of them ([`ReportedState`]).
    Reported,
    /// The cloud-to-device inbox ([`crate::Inbox`]).
    Inbox,
    /// The software update's record ([`crate::UpdateRecord`]); kept when the device state is
    /// cleared (it is about the software on the machine, not the device's identity).
    Update,
}

impl StateKey {
    /// The document's name in a store's files (`identity`, `desired`, `reported`).
    pub fn as_str(self) -> &'static str {
        match self {
            StateKey::Identity => "identity",
            StateKey::Desired => "desired",
            StateKey::Reported => "reported",
            StateKey::Inbox => "c2d-inbox",
            StateKey::Update => "update",
        }
    }
}

/// The storage work of a durable store, done by [`ThreadStore`]; every call blocks.
///
/// Every call is about one device's namespace (see [`Namespace`]): a backend of one device sees
/// only [`SINGLE_DEVICE`] and may ignore it.
pub trait StoreBackend: Send + Sized + 'static {
    /// Appends the messages of every group to its namespace's queue, in order, durably (as the
    /// store's [`Durability`] promises) before it returns. Returns the sequence number of each
    /// group's first message (for an empty group, the number its next message would get). An
    /// error fails every group. The groups of one call may belong to different namespaces: one
    /// durable write for all of them (group commit across devices).
    fn append(&mut self, groups: &[(Namespace, Vec<OutgoingMessage>)]) -> Result<Vec<u64>>;
    /// Up to `limit` messages queued in `ns` with sequence numbers above `after`, in order.
    fn read(&mut self, ns: Namespace, after: Option<u64>, limit: usize) -> Result<Vec<QueuedMessage>>;
    /// Removes acknowledged messages of `ns`; unknown sequence numbers (and those of other
    /// namespaces) are ignored.
    fn remove(&mut self, ns: Namespace, seqs: &[u64]) -> Result<()>;
    /// The size and last sequence number of the queue of `ns`.
    fn stats(&mut self, ns: Namespace) -> Result<QueueStats>;
    /// A state document of `ns`.
    fn load_state(&mut self, ns: Namespace, key: StateKey) -> Result<Option<serde_json::Value>>;
    /// Saves a state document of `ns` durably.
    fn save_state(&mut self, ns: Namespace, key: StateKey, value: &serde_json::Value) -> Result<()>;
    /// Removes the queued messages and the `desired` and `reported` documents of `ns`.
    fn clear(&mut self, ns: Namespace) -> Result<()>;
    /// The namespace of the device `name` in a store shared by several devices, made (durably)
    /// when it is new. A store of one device refuses (the default).
    fn namespace(&mut self, name: &str) -> Result<Namespace> {
        Err(Error::invalid("store", format!("this store holds one device; {name:?} needs a shared store")))
    }
    /// Whether work that may block on the disk is due (a checkpoint, say): after a call made on
    /// a caller's thread, the store's thread is asked to do it ([`StoreBackend::maintain`]), so
    /// that the caller does not wait for it.
    fn maintenance_due(&self) -> bool {
        false
    }
    /// Does the work [`StoreBackend::maintenance_due`] announced (on the store's thread).
    fn maintain(&mut self) -> Result<()> {
        Ok(())
    }
    /// Makes everything durable and releases the files: when it returns, another store may open
    /// them.
    fn close(self) -> Result<()>;
}

/// A backend opened from a path with options: what makes `ThreadStore<Self>` a durable store
/// with `open(path, durability)`, `open_with_options`, `open_async` and `open_async_with_options`.
pub trait DurableBackend: StoreBackend {
    /// Its name in errors and in its thread's name (`SQLite`, `sled`).
    const LABEL: &'static str;
    /// Its options.
    type Options: Clone + fmt::Debug + Send + 'static;
    /// The default options with this durability.
    fn options(durability: Durability) -> Self::Options;
    /// The durability `options` ask for.
    fn durability(options: &Self::Options) -> Durability;
    /// Opens (creating) the backend at `path`; runs on the store's thread. A panic of its library
    /// is turned into an error naming the cause.
    fn open(path: &Path, options: Self::Options) -> Result<Self>;
}

thread_local! {
    /// Set while a blocking API call runs on this thread (see [`run_as_blocking_caller`]).
    static BLOCKING_CALLER: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the current thread marked as a blocking caller: an application's own thread
/// that waits for the answer anyway (the blocking client's methods, the Python binding). A
/// durable store then also runs an append that waits for an fsync on this thread when its own
/// thread is idle, instead of handing it over and sleeping until it is answered; on a tokio
/// worker such an append always goes to the store's thread, so the runtime is never blocked on
/// the disk.
pub fn run_as_blocking_caller<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            BLOCKING_CALLER.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(BLOCKING_CALLER.with(|c| c.replace(true)));
    f()
}

/// Appends merged into one [`StoreBackend::append`] at most.
const MAX_GROUP: usize = 1024;

/// Commands the store's thread serves while appends wait for their group commit, at most...
const MAX_ROUND: usize = 4096;

/// ...and for at most this long: then the group is committed.
const MAX_GROUP_WAIT: Duration = Duration::from_millis(2);

/// Commands waiting for the store's thread at most: callers beyond wait for room (a full disk's
/// slow commits hold back the callers instead of growing memory).
const MAX_QUEUED_COMMANDS: usize = MAX_ROUND;

/// Most messages (in an append) or sequence numbers (in a removal) of a call made on the caller's
/// thread: larger work goes to the store's thread, which runs beside the caller's.
const DIRECT_MAX: usize = 16;

/// An append less than this after the last one ended goes to the store's thread, which merges
/// the appends that arrive together into one transaction (see [`Runtime::at_device_pace`]).
const CONCURRENT_GAP: Duration = STORE_THREAD_POLL;

/// How long a lone caller of a store that answers in microseconds polls for the answer before it
/// awaits it.
const REPLY_POLL: Duration = Duration::from_micros(50);

type Reply<T> = oneshot::Sender<Result<T>>;

enum Command {
    Append(Namespace, Vec<OutgoingMessage>, Reply<u64>),
    Read(Namespace, Option<u64>, usize, Reply<Vec<QueuedMessage>>),
    Remove(Namespace, Vec<u64>, Reply<()>),
    Stats(Namespace, Reply<QueueStats>),
    LoadState(Namespace, StateKey, Reply<Option<serde_json::Value>>),
    SaveState(Namespace, StateKey, serde_json::Value, Reply<()>),
    Clear(Namespace, Reply<()>),
    Namespace(String, Reply<Namespace>),
    Close(Reply<()>),
    /// Maintenance announced after a direct call (no answer).
    Maintain,
}

/// The backend, shared by the store's thread and the callers that use it directly; `None` once
/// closed (or after its library panicked).
type Slot<B> = Arc<Mutex<Option<B>>>;

/// What every handle of one store shares.
struct Runtime<B> {
    tx: mpsc::Sender<Command>,
    /// The backend's name, for errors ("SQLite", "sled").
    label: &'static str,
    /// The store's file or directory (empty for a store not opened from a path).
    path: PathBuf,
    /// Poll briefly for answers (the backend answers in microseconds: no fsync).
    poll_reply: bool,
    /// Whether the store's thread polls for commands now (it answers within microseconds then).
    thread_hot: Arc<AtomicBool>,
    /// Calls waiting for an answer; only a lone caller polls (concurrent ones are grouped anyway).
    waiting: AtomicUsize,
    /// The backend, for direct calls.
    slot: Slot<B>,
    /// When the last append ended (see [`CONCURRENT_GAP`]).
    last_append: Mutex<Option<Instant>>,
    /// The devices of a shared store whose handle is in use (see [`ThreadStore::namespace`]).
    in_use: Arc<Mutex<HashSet<String>>>,
    /// Held while an inbox is read, changed and saved (one document per device).
    inbox: tokio::sync::Mutex<()>,
}

/// A [`Store`] served by one thread that owns a [`StoreBackend`]: the durable stores (see the
/// module's documentation). Cheap to clone; the store closes when closed, or when its last handle
/// is dropped.
pub struct ThreadStore<B> {
    runtime: Arc<Runtime<B>>,
    /// The device this handle is about ([`SINGLE_DEVICE`] in a store of one device).
    ns: Namespace,
    /// A device's handle on a shared store (see [`ThreadStore::namespace`]): closing it releases
    /// the device and closes nothing else.
    lease: Option<Arc<Lease>>,
}

impl<B> Clone for ThreadStore<B> {
    fn clone(&self) -> Self {
        ThreadStore { runtime: self.runtime.clone(), ns: self.ns, lease: self.lease.clone() }
    }
}

impl<B> fmt::Debug for ThreadStore<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ThreadStore");
        d.field("backend", &self.runtime.label).field("path", &self.runtime.path);
        if let Some(lease) = &self.lease {
            d.field("device", &lease.name);
        }
        d.finish_non_exhaustive()
    }
}

/// Counts a call out of [`Runtime::waiting`] when it ends (also when its future is dropped).
struct WaitingGuard<'a>(&'a AtomicUsize);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A device's handle on a shared store in use; the device is released when the handle is closed
/// or its last clone dropped.
#[derive(Debug)]
struct Lease {
    name: String,
    in_use: Arc<Mutex<HashSet<String>>>,
    released: AtomicBool,
}

impl Lease {
    fn take(in_use: &Arc<Mutex<HashSet<String>>>, name: &str) -> Result<Lease> {
        if !lock(in_use).insert(name.to_owned()) {
            return Err(Error::invalid(
                "device name",
                format!("the store of {name:?} is already in use (close its client first)"),
            ));
        }
        Ok(Lease { name: name.to_owned(), in_use: in_use.clone(), released: AtomicBool::new(false) })
    }

    fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            lock(&self.in_use).remove(&self.name);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release();
    }
}

fn stopped_while_opening() -> Error {
    Error::Store {
        context: "the store thread stopped while opening".into(),
        status: ErrorStatus::Permanent,
        source: None,
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// Opens a backend, turning a panic of its library into an error: sled 0.34, for one, panics on
/// some corrupted files instead of answering with an error (found by the `store_files` fuzz
/// target). The files are left as they are.
fn guarded<B>(label: &str, open: impl FnOnce() -> Result<B>) -> Result<B> {
    std::panic::catch_unwind(AssertUnwindSafe(open)).unwrap_or_else(|panic| {
        Err(Error::Store {
            context: format!(
                "the {label} store cannot be opened: its library failed reading the files ({}); they may be \
                 corrupt and were left as they are",
                panic_message(panic.as_ref())
            ),
            status: ErrorStatus::Permanent,
            source: None,
        })
    })
}

impl<B: DurableBackend> ThreadStore<B> {
    /// Opens (creating) the store at `path` with the given durability and the default options.
    /// Blocks while the store opens (on its own thread); inside an async runtime use
    /// `open_async`.
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<Self> {
        Self::open_with_options(path, B::options(durability))
    }

    /// Like `open` with every option.
    pub fn open_with_options(path: impl AsRef<Path>, options: B::Options) -> Result<Self> {
        let (ready, opened) = std::sync::mpsc::channel();
        let store = Self::start_durable(path.as_ref(), options, move |r| drop(ready.send(r)))?;
        opened.recv().map_err(|_| stopped_while_opening())??;
        Ok(store)
    }

    /// `open` without blocking the async runtime.
    pub async fn open_async(path: impl AsRef<Path>, durability: Durability) -> Result<Self> {
        Self::open_async_with_options(path, B::options(durability)).await
    }

    /// `open_with_options` without blocking the async runtime.
    pub async fn open_async_with_options(path: impl AsRef<Path>, options: B::Options) -> Result<Self> {
        let (ready, opened) = oneshot::channel();
        let store = Self::start_durable(path.as_ref(), options, move |r| drop(ready.send(r)))?;
        opened.await.map_err(|_| stopped_while_opening())??;
        Ok(store)
    }

    fn start_durable(
        path: &Path,
        options: B::Options,
        ready: impl FnOnce(Result<()>) + Send + 'static,
    ) -> Result<Self> {
        debug!(path = %path.display(), ?options, "opening the {} store", B::LABEL);
        // Crash safe: an append takes microseconds, so a lone caller polls for its answer.
        let poll_reply = B::durability(&options) == Durability::CrashSafe;
        let at = path.to_path_buf();
        Self::start(B::LABEL, path.to_path_buf(), poll_reply, move || B::open(&at, options), ready)
    }
}

impl<B: StoreBackend> ThreadStore<B> {
    /// Starts the thread `spotflow-{label}` (lowercase), which opens the backend with `open`,
    /// reports the outcome through `ready`, then serves it until the store is closed or dropped.
    /// `poll_reply`: the backend answers appends in microseconds (see the module's documentation).
    pub(crate) fn start(
        label: &'static str,
        path: PathBuf,
        poll_reply: bool,
        open: impl FnOnce() -> Result<B> + Send + 'static,
        ready: impl FnOnce(Result<()>) + Send + 'static,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel(MAX_QUEUED_COMMANDS);
        let poll = AdaptivePoll::new(STORE_THREAD_POLL);
        let thread_hot = poll.hot_flag();
        let slot: Slot<B> = Arc::default();
        let thread_slot = slot.clone();
        std::thread::Builder::new()
            .name(format!("spotflow-{}", label.to_lowercase()))
            .spawn(move || match guarded(label, open) {
                Ok(backend) => {
                    *lock(&thread_slot) = Some(backend);
                    ready(Ok(()));
                    let served = std::panic::catch_unwind(AssertUnwindSafe(|| serve(&thread_slot, label, rx, poll)));
                    if let Err(panic) = served {
                        *lock(&thread_slot) = None;
                        error!(
                            "the {label} store's thread stopped: its library panicked ({}); every call now fails \
                             until the store is opened again",
                            panic_message(panic.as_ref())
                        );
                    }
                }
                Err(e) => ready(Err(e)),
            })
            .map_err(|e| Error::store(format!("cannot start the {label} store thread"), e))?;
        let runtime = Runtime {
            tx,
            label,
            path,
            poll_reply,
            thread_hot,
            waiting: AtomicUsize::new(0),
            slot,
            last_append: Mutex::new(None),
            in_use: Arc::default(),
            inbox: tokio::sync::Mutex::new(()),
        };
        Ok(ThreadStore { runtime: Arc::new(runtime), ns: SINGLE_DEVICE, lease: None })
    }

    /// The store's file or directory.
    pub fn path(&self) -> &Path {
        &self.runtime.path
    }

    /// A handle on the namespace of the device `name` (1 to 256 bytes) in a store shared by
    /// several devices, made when it is new: every call through it is about that device alone,
    /// and all devices' appends still go through this store's one thread and merge into one
    /// durable write (group commit across devices). Refused while another handle of the same
    /// device from this store is in use (until it is closed or dropped). Closing the handle
    /// releases the device and closes nothing else: the store closes when it is closed itself,
    /// or when its last handle is dropped. A store of one device refuses.
    pub async fn namespace(&self, name: &str) -> Result<ThreadStore<B>> {
        if name.is_empty() || name.len() > 256 {
            return Err(Error::invalid("device name", "must be 1 to 256 bytes long"));
        }
        let lease = Lease::take(&self.runtime.in_use, name)?;
        let owned = name.to_owned();
        let ns = self.call(|r| Command::Namespace(owned, r)).await?;
        Ok(ThreadStore { runtime: self.runtime.clone(), ns, lease: Some(Arc::new(lease)) })
    }

    /// The device's name, on a device's handle of a shared store (see [`ThreadStore::namespace`]).
    pub fn device_name(&self) -> Option<&str> {
        self.lease.as_ref().map(|l| l.name.as_str())
    }

    fn closed(&self) -> Error {
        Error::Store {
            context: format!("the {} store is closed", self.runtime.label),
            status: ErrorStatus::Permanent,
            source: None,
        }
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let rt = &*self.runtime;
        let (reply, mut rx) = oneshot::channel();
        rt.tx.send(make(reply)).await.map_err(|_| self.closed())?;
        let alone = rt.waiting.fetch_add(1, Ordering::AcqRel) == 0;
        let _waiting = WaitingGuard(&rt.waiting);
        if rt.poll_reply && alone && rt.thread_hot.load(Ordering::Relaxed) {
            let until = Instant::now() + REPLY_POLL;
            while Instant::now() < until {
                match rx.try_recv() {
                    Ok(result) => return result,
                    Err(oneshot::error::TryRecvError::Closed) => return Err(self.closed()),
                    Err(oneshot::error::TryRecvError::Empty) => tokio::task::yield_now().await,
                }
            }
        }
        rx.await.map_err(|_| self.closed())?
    }

    /// Runs `f` on the backend on this thread if the store's thread does not hold it now;
    /// `None` when it does (or when the store is closed: the thread then answers with the
    /// error). Maintenance that became due is handed to the thread.
    fn direct<T>(&self, f: impl FnOnce(&mut B) -> Result<T>) -> Option<Result<T>> {
        let rt = &*self.runtime;
        let mut guard = match rt.slot.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::WouldBlock) => return None,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
        };
        let backend = guard.as_mut()?;
        match std::panic::catch_unwind(AssertUnwindSafe(|| f(backend))) {
            Ok(result) => {
                if guard.as_ref().is_some_and(StoreBackend::maintenance_due) {
                    // A full channel means the thread is busy: it checks for maintenance after
                    // every round of work anyway.
                    let _ = rt.tx.try_send(Command::Maintain);
                }
                Some(result)
            }
            Err(panic) => {
                *guard = None;
                let label = rt.label;
                let cause = panic_message(panic.as_ref());
                error!("the {label} store's library panicked ({cause}); every call now fails until it is opened again");
                Some(Err(Error::Store {
                    context: format!("the {label} store's library panicked: {cause}"),
                    status: ErrorStatus::Permanent,
                    source: None,
                }))
            }
        }
    }

    async fn append_directly_or_not(&self, messages: Vec<OutgoingMessage>) -> Result<u64> {
        // A blocking caller's thread waits for the answer anyway: it appends itself whenever the
        // backend is free, in a tight loop too (concurrent ones then find it taken and queue for
        // the thread, which merges their appends).
        let blocking = BLOCKING_CALLER.with(Cell::get);
        let direct = blocking || (self.runtime.poll_reply && self.at_device_pace());
        let ns = self.ns;
        if direct && messages.len() <= DIRECT_MAX {
            let groups = [(ns, messages)];
            match self.direct(|b| b.append(&groups)) {
                Some(firsts) => return firsts?.first().copied().ok_or_else(|| self.closed()),
                None => {
                    let [(_, messages)] = groups;
                    return self.call(|r| Command::Append(ns, messages, r)).await;
                }
            }
        }
        self.call(|r| Command::Append(ns, messages, r)).await
    }

    /// Whether an append is made at a device's pace: no call waits for the store's thread and the
    /// last append ended a while ago. Appends that follow each other closely (one sender in a
    /// tight loop, or many) go to the thread, which merges whatever arrives together: measured
    /// with the `stores` benchmark, appending directly there (even only while one caller kept
    /// appending alone) cost 10–20 % of the throughput of 8 and 64 concurrent senders.
    fn at_device_pace(&self) -> bool {
        if self.runtime.waiting.load(Ordering::Acquire) > 0 {
            return false;
        }
        lock(&self.runtime.last_append).is_none_or(|t| t.elapsed() >= CONCURRENT_GAP)
    }

    async fn load<T>(&self, key: StateKey, parse: fn(&serde_json::Value) -> Result<T>) -> Result<Option<T>> {
        let v = self.call(|r| Command::LoadState(self.ns, key, r)).await?;
        v.as_ref().map(parse).transpose()
    }

    async fn save(&self, key: StateKey, value: serde_json::Value) -> Result<()> {
        self.call(|r| Command::SaveState(self.ns, key, value, r)).await
    }

    /// The device's inbox (empty when none was saved).
    async fn load_inbox(&self) -> Result<crate::Inbox> {
        Ok(self.load(StateKey::Inbox, crate::Inbox::from_json).await?.unwrap_or_default())
    }
}

#[async_trait]
impl<B: StoreBackend> Store for ThreadStore<B> {
    async fn append_messages(&self, messages: Vec<OutgoingMessage>) -> Result<u64> {
        let result = self.append_directly_or_not(messages).await;
        *lock(&self.runtime.last_append) = Some(Instant::now());
        result
    }
    async fn read_messages(&self, after: Option<u64>, limit: usize) -> Result<Vec<QueuedMessage>> {
        self.call(|r| Command::Read(self.ns, after, limit, r)).await
    }
    async fn remove_messages(&self, seqs: &[u64]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        if seqs.len() <= DIRECT_MAX {
            if let Some(result) = self.direct(|b| b.remove(self.ns, seqs)) {
                return result;
            }
        }
        let seqs = seqs.to_vec();
        self.call(|r| Command::Remove(self.ns, seqs, r)).await
    }
    async fn queue_stats(&self) -> Result<QueueStats> {
        self.call(|r| Command::Stats(self.ns, r)).await
    }
    async fn load_identity(&self) -> Result<Option<DeviceIdentity>> {
        self.load(StateKey::Identity, persist::identity_from_json).await
    }
    async fn save_identity(&self, identity: &DeviceIdentity) -> Result<()> {
        self.save(StateKey::Identity, persist::identity_to_json(identity)).await
    }
    async fn load_desired(&self) -> Result<Option<DesiredState>> {
        self.load(StateKey::Desired, persist::desired_from_json).await
    }
    async fn save_desired(&self, desired: &DesiredState) -> Result<()> {
        self.save(StateKey::Desired, persist::desired_to_json(desired)).await
    }
    async fn load_reported(&self) -> Result<ReportedState> {
        Ok(self.load(StateKey::Reported, persist::reported_from_json).await?.unwrap_or_default())
    }
    async fn save_reported(&self, reported: &ReportedState) -> Result<()> {
        self.save(StateKey::Reported, persist::reported_to_json(reported)).await
    }
    async fn clear_device_state(&self) -> Result<()> {
        self.call(|r| Command::Clear(self.ns, r)).await
    }
    /// The inbox is one state document per device, read, changed and saved whole (durably, as
    /// the store's other documents): its byte budget keeps it small.
    async fn append_cloud_message(&self, message: &crate::CloudMessage) -> Result<crate::InboxAppend> {
        let _held = self.runtime.inbox.lock().await;
        let mut inbox = self.load_inbox().await?;
        let appended = inbox.append(message);
        if matches!(appended, crate::InboxAppend::Stored(_)) {
            self.save(StateKey::Inbox, inbox.to_json()).await?;
        }
        Ok(appended)
    }
    async fn read_cloud_messages(&self, after: Option<u64>, limit: usize) -> Result<Vec<crate::StoredCloudMessage>> {
        Ok(self.load_inbox().await?.read(after, limit))
    }
    async fn remove_cloud_message(&self, id: u64) -> Result<bool> {
        let _held = self.runtime.inbox.lock().await;
        let mut inbox = self.load_inbox().await?;
        let removed = inbox.remove(id);
        if removed {
            self.save(StateKey::Inbox, inbox.to_json()).await?;
        }
        Ok(removed)
    }
    async fn cloud_inbox_stats(&self) -> Result<(u64, u64)> {
        Ok(self.load_inbox().await?.stats())
    }
    async fn load_update(&self) -> Result<Option<crate::UpdateRecord>> {
        self.load(StateKey::Update, crate::UpdateRecord::from_json).await
    }
    async fn save_update(&self, record: &crate::UpdateRecord) -> Result<()> {
        self.save(StateKey::Update, record.to_json()).await
    }
    /// Closes the store now (everything durable, the files released for another process)
    /// instead of when the last clone is dropped. Later calls on any clone fail; closing again is
    /// a no-op. On a device's handle of a shared store (see [`ThreadStore::namespace`]) it
    /// releases the device: everything it appended is already durable, and the other devices go
    /// on.
    async fn close(&self) -> Result<()> {
        if let Some(lease) = &self.lease {
            lease.release();
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        if self.runtime.tx.send(Command::Close(reply)).await.is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }
}

/// The store thread: commands in arrival order, except that appends wait for one group commit
/// of all that arrive together ([`MAX_GROUP`] at most, or what arrives within
/// [`MAX_GROUP_WAIT`]) while reads, removals, figures and state documents that arrive meanwhile
/// are served at once: none of them can depend on an append that has not been answered yet (a
/// caller's next call comes after its answer), and with many devices in one store (a gateway's
/// readers and removers come between every two appends) they would otherwise cut every group
/// down to one append and one fsync. A clear and a close take effect after the pending appends.
/// The thread holds the backend while it works through what has arrived, and leaves it to
/// direct calls while it waits.
fn serve<B: StoreBackend>(slot: &Slot<B>, label: &str, mut rx: mpsc::Receiver<Command>, mut poll: AdaptivePoll) {
    while let Some(first) = poll.recv(&mut rx) {
        let mut guard = lock(slot);
        let mut appends = Vec::new();
        let mut next = Some(first);
        let round = Instant::now();
        let mut served = 0usize;
        while let Some(command) = next.take() {
            let Some(backend) = guard.as_mut() else {
                // Closed, or its library panicked: every caller is told (by dropping its reply).
                appends.clear();
                drop(command);
                while rx.try_recv().is_ok() {}
                break;
            };
            match command {
                Command::Append(ns, messages, reply) => appends.push(((ns, messages), reply)),
                Command::Close(reply) => {
                    append_group(backend, &mut appends);
                    let backend = guard.take();
                    drop(guard);
                    let _ = reply.send(backend.map_or(Ok(()), StoreBackend::close));
                    return;
                }
                clear @ Command::Clear(..) => {
                    append_group(backend, &mut appends);
                    serve_one(backend, clear, label);
                }
                other => serve_one(backend, other, label),
            }
            served += 1;
            let group_open = appends.len() < MAX_GROUP
                && (appends.is_empty() || (served < MAX_ROUND && round.elapsed() < MAX_GROUP_WAIT));
            if group_open {
                next = rx.try_recv().ok();
            }
        }
        if let Some(backend) = guard.as_mut() {
            append_group(backend, &mut appends);
            if backend.maintenance_due() {
                maintain(backend, label);
            }
        }
    }
    // Every handle was dropped without `close`.
    let backend = lock(slot).take();
    if let Some(Err(e)) = backend.map(StoreBackend::close) {
        warn!(error = %e, "the {label} store did not close cleanly");
    }
}

fn maintain<B: StoreBackend>(backend: &mut B, label: &str) {
    if let Err(e) = backend.maintain() {
        warn!(error = %e, "the {label} store's maintenance failed; it is tried again later");
    }
}

/// Appends waiting for the next group commit: each device's messages, and its caller's answer.
type PendingAppends = Vec<((Namespace, Vec<OutgoingMessage>), Reply<u64>)>;

fn append_group<B: StoreBackend>(backend: &mut B, appends: &mut PendingAppends) {
    if appends.is_empty() {
        return;
    }
    let (groups, replies): (Vec<_>, Vec<_>) = appends.drain(..).unzip();
    match backend.append(&groups) {
        Ok(firsts) => {
            for (reply, first) in replies.into_iter().zip(firsts) {
                let _ = reply.send(Ok(first));
            }
        }
        Err(e) => {
            // The error is not `Clone`: every caller gets its text, its status and, as its
            // source, the cause's text (the first caller the cause itself).
            let (context, status) = match &e {
                Error::Store { context, status, .. } => (context.clone(), *status),
                other => (other.to_string(), ErrorStatus::Temporary),
            };
            let cause = std::error::Error::source(&e).map(ToString::to_string);
            let mut first = Some(e);
            for reply in replies {
                let error = match first.take() {
                    Some(e @ Error::Store { .. }) => e,
                    _ => Error::Store {
                        context: context.clone(),
                        status,
                        source: cause.clone().map(Box::<dyn std::error::Error + Send + Sync>::from),
                    },
                };
                let _ = reply.send(Err(error));
            }
        }
    }
}

fn serve_one<B: StoreBackend>(backend: &mut B, command: Command, label: &str) {
    match command {
        Command::Append(..) | Command::Close(_) => {}
        Command::Maintain => {
            if backend.maintenance_due() {
                maintain(backend, label);
            }
        }
        Command::Read(ns, after, limit, reply) => drop(reply.send(backend.read(ns, after, limit))),
        Command::Remove(ns, seqs, reply) => drop(reply.send(backend.remove(ns, &seqs))),
        Command::Stats(ns, reply) => drop(reply.send(backend.stats(ns))),
        Command::LoadState(ns, key, reply) => drop(reply.send(backend.load_state(ns, key))),
        Command::SaveState(ns, key, value, reply) => drop(reply.send(backend.save_state(ns, key, &value))),
        Command::Clear(ns, reply) => drop(reply.send(backend.clear(ns))),
        Command::Namespace(name, reply) => drop(reply.send(backend.namespace(&name))),
    }
}

/// Free space of the file system that holds a store, checked before appends every
/// [`FreeSpace::INTERVAL`] bytes, so that a full disk fails appends with a clear error instead of
/// failing the store's own writes halfway.
#[derive(Debug)]
pub struct FreeSpace {
    dir: PathBuf,
    reserve: u64,
    /// Bytes appended since the last check (`None`: check before the next append).
    since_check: Option<u64>,
}

impl FreeSpace {
    /// Bytes appended between two checks.
    pub const INTERVAL: u64 = 1024 * 1024;

    /// Checks the file system of the directory `dir`, keeping `reserve` bytes free.
    pub fn new(dir: &Path, reserve: u64) -> FreeSpace {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        FreeSpace { dir: dir.to_path_buf(), reserve, since_check: None }
    }

    /// Before appending about `incoming` bytes to the store `shown` (named in the error).
    pub fn check(&mut self, incoming: u64, shown: &Path) -> Result<()> {
        let due = self.since_check.is_none_or(|b| b + incoming >= Self::INTERVAL);
        if !due {
            self.since_check = self.since_check.map(|b| b + incoming);
            return Ok(());
        }
        // Unknown: the store's own write reports a full disk.
        let free = crate::free_disk_space(&self.dir).unwrap_or(u64::MAX);
        if free < self.reserve.saturating_add(incoming) {
            self.since_check = None;
            return Err(Error::Store {
                context: format!(
                    "not enough free disk space for {}: {free} bytes free, {} kept in reserve",
                    shown.display(),
                    self.reserve
                ),
                status: ErrorStatus::Temporary,
                source: None,
            });
        }
        self.since_check = Some(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{sample_message, store_conformance};
    use crate::MemoryStore;

    /// The output of a future that is ready at once (the in-memory store's are): the backend
    /// is called on the store's thread and on callers' threads, inside a runtime or not.
    fn now<F: std::future::Future>(f: F) -> F::Output {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::pin::pin!(f).poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the in-memory store answers at once"),
        }
    }

    /// A backend on the in-memory store, counting the append calls and logging on which thread
    /// appends, removals and maintenance ran.
    struct Counting {
        inner: MemoryStore,
        appends: Arc<AtomicUsize>,
        log: Log,
        /// Maintenance is announced after every append.
        maintenance: bool,
        due: bool,
        /// A removal panics (as a library might).
        panic_on_remove: bool,
        /// The inbox's document.
        inbox: Option<serde_json::Value>,
    }

    type Log = Arc<std::sync::Mutex<Vec<String>>>;

    fn note(log: &Log, what: &str) {
        let thread = std::thread::current().name().unwrap_or("?").to_owned();
        log.lock().unwrap().push(format!("{what} on {thread}"));
    }

    impl StoreBackend for Counting {
        fn append(&mut self, groups: &[(Namespace, Vec<OutgoingMessage>)]) -> Result<Vec<u64>> {
            self.appends.fetch_add(1, Ordering::SeqCst);
            note(&self.log, "append");
            self.due = self.maintenance;
            // As long as a disk's flush: callers arriving meanwhile are grouped.
            std::thread::sleep(Duration::from_micros(200));
            groups.iter().map(|(_, g)| now(self.inner.append_messages(g.clone()))).collect()
        }
        fn read(&mut self, _: Namespace, after: Option<u64>, limit: usize) -> Result<Vec<QueuedMessage>> {
            now(self.inner.read_messages(after, limit))
        }
        fn remove(&mut self, _: Namespace, seqs: &[u64]) -> Result<()> {
            note(&self.log, "remove");
            assert!(!self.panic_on_remove, "the library failed");
            now(self.inner.remove_messages(seqs))
        }
        fn maintenance_due(&self) -> bool {
            self.due
        }
        fn maintain(&mut self) -> Result<()> {
            note(&self.log, "maintain");
            self.due = false;
            Ok(())
        }
        fn stats(&mut self, _: Namespace) -> Result<QueueStats> {
            now(self.inner.queue_stats())
        }
        fn load_state(&mut self, _: Namespace, key: StateKey) -> Result<Option<serde_json::Value>> {
            Ok(match key {
                StateKey::Identity => now(self.inner.load_identity())?.as_ref().map(persist::identity_to_json),
                StateKey::Desired => now(self.inner.load_desired())?.as_ref().map(persist::desired_to_json),
                StateKey::Reported => Some(persist::reported_to_json(&now(self.inner.load_reported())?)),
                StateKey::Inbox => self.inbox.clone(),
                StateKey::Update => now(self.inner.load_update())?.as_ref().map(crate::UpdateRecord::to_json),
            })
        }
        fn save_state(&mut self, _: Namespace, key: StateKey, value: &serde_json::Value) -> Result<()> {
            match key {
                StateKey::Identity => now(self.inner.save_identity(&persist::identity_from_json(value)?)),
                StateKey::Desired => now(self.inner.save_desired(&persist::desired_from_json(value)?)),
                StateKey::Reported => now(self.inner.save_reported(&persist::reported_from_json(value)?)),
                StateKey::Inbox => {
                    self.inbox = Some(value.clone());
                    Ok(())
                }
                StateKey::Update => now(self.inner.save_update(&crate::UpdateRecord::from_json(value)?)),
            }
        }
        fn clear(&mut self, _: Namespace) -> Result<()> {
            self.inbox = None;
            now(self.inner.clear_device_state())
        }
        fn close(self) -> Result<()> {
            Ok(())
        }
    }

    type Wrapped = ThreadStore<Counting>;

    fn start(poll_reply: bool) -> (Wrapped, Arc<AtomicUsize>) {
        let (store, appends, _) = start_with(poll_reply, |_| {});
        (store, appends)
    }

    fn start_with(
        poll_reply: bool,
        change: impl FnOnce(&mut Counting) + Send + 'static,
    ) -> (Wrapped, Arc<AtomicUsize>, Log) {
        let appends = Arc::new(AtomicUsize::new(0));
        let log = Log::default();
        let (counter, thread_log) = (appends.clone(), log.clone());
        let (ready, opened) = std::sync::mpsc::channel();
        let open = move || {
            let mut backend = Counting {
                inner: MemoryStore::new(),
                appends: counter,
                log: thread_log,
                maintenance: false,
                due: false,
                panic_on_remove: false,
                inbox: None,
            };
            change(&mut backend);
            Ok(backend)
        };
        let store = ThreadStore::start("Test", PathBuf::new(), poll_reply, open, move |r| drop(ready.send(r))).unwrap();
        opened.recv().unwrap().unwrap();
        (store, appends, log)
    }

    /// Waits (up to 5 s) until the store's thread does not hold the backend, and lets the next
    /// append count as one at a device's pace (as after a pause of `CONCURRENT_GAP`).
    fn wait_idle(store: &Wrapped) -> bool {
        *store.runtime.last_append.lock().unwrap() = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if store.runtime.slot.try_lock().is_ok() {
                return true;
            }
            std::thread::yield_now();
        }
        false
    }

    #[test]
    fn appends_and_removals_run_on_the_callers_thread_at_a_devices_pace_or_for_a_blocking_caller() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        std::thread::Builder::new()
            .name("caller".into())
            .spawn(move || {
                // Appends that sync (poll_reply false) go to the store's thread from a runtime,
                // run on the caller's own thread when it is marked as a blocking caller.
                let (store, _, log) = start_with(false, |_| {});
                let seq = rt.block_on(store.append_message(sample_message(1))).unwrap();
                // The thread answers before it lets go of the backend.
                assert!(wait_idle(&store));
                run_as_blocking_caller(|| rt.block_on(store.append_message(sample_message(2)))).unwrap();
                rt.block_on(store.remove_messages(&[seq])).unwrap();
                assert_eq!(
                    *log.lock().unwrap(),
                    ["append on spotflow-test", "append on caller", "remove on caller"],
                    "removals never sync: always direct"
                );
                // Appends that do not sync run on the caller's thread anyway; maintenance is
                // handed to the store's thread.
                let (store, _, log) = start_with(true, |b| b.maintenance = true);
                rt.block_on(store.append_message(sample_message(1))).unwrap();
                // Appends that follow closely go to the thread, which merges them (the last
                // append set as ending in the future: "closely" whatever this machine's pace).
                *store.runtime.last_append.lock().unwrap() = Some(Instant::now() + Duration::from_secs(3600));
                rt.block_on(store.append_message(sample_message(2))).unwrap();
                let maintained = |log: &Log| log.lock().unwrap().iter().filter(|e| e.starts_with("maintain")).count();
                let deadline = Instant::now() + Duration::from_secs(5);
                while maintained(&log) < 2 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let log = log.lock().unwrap().clone();
                assert_eq!(log[0], "append on caller");
                assert!(log.contains(&"append on spotflow-test".to_owned()), "{log:?}");
                assert_eq!(
                    log.iter().filter(|e| e.as_str() == "maintain on spotflow-test").count(),
                    2,
                    "after each append, on the store's thread: {log:?}"
                );
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[tokio::test]
    async fn a_library_panic_in_a_direct_call_is_an_error_and_the_store_stays_closed() {
        let (store, _, _) = start_with(true, |b| b.panic_on_remove = true);
        let seq = store.append_message(sample_message(1)).await.unwrap();
        let err = store.remove_messages(&[seq]).await.unwrap_err();
        assert!(err.to_string().contains("Test store's library panicked: the library failed"), "{err}");
        assert!(!err.is_temporary());
        let err = store.append_message(sample_message(2)).await.unwrap_err();
        assert!(err.to_string().contains("Test store is closed"), "{err}");
        let err = store.queue_stats().await.unwrap_err();
        assert!(err.to_string().contains("Test store is closed"), "{err}");
    }

    #[tokio::test]
    async fn a_thread_store_passes_the_conformance_suite_either_way_of_waiting() {
        for poll_reply in [false, true] {
            let (store, _) = start(poll_reply);
            store_conformance(&store).await;
        }
    }

    #[tokio::test]
    async fn concurrent_appends_are_grouped_and_each_caller_gets_its_own_numbers() {
        let (store, appends) = start(false);
        let store = Arc::new(store);
        let tasks: Vec<_> = (0..64)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut firsts = Vec::new();
                    for i in 0..20 {
                        firsts.push(store.append_messages(vec![sample_message(t * 100 + i); 2]).await.unwrap());
                    }
                    firsts
                })
            })
            .collect();
        let mut firsts = Vec::new();
        for t in tasks {
            firsts.extend(t.await.unwrap());
        }
        firsts.sort_unstable();
        assert_eq!(firsts, (0..64 * 20).map(|i| 1 + 2 * i as u64).collect::<Vec<_>>());
        let calls = appends.load(Ordering::SeqCst);
        assert!(calls < 64 * 20, "{calls} backend appends for {} callers: none grouped", 64 * 20);
        store.close().await.unwrap();
        store.close().await.unwrap();
        let err = store.queue_stats().await.unwrap_err();
        assert!(err.to_string().contains("Test store is closed"), "{err}");
    }

    #[test]
    fn a_backend_that_panics_while_opening_gives_an_error_naming_the_cause() {
        let open = || -> Result<Counting> { panic!("tried to serialize Uninitialized") };
        let (ready, opened) = std::sync::mpsc::channel();
        let _store = ThreadStore::start("Test", PathBuf::new(), false, open, move |r| drop(ready.send(r))).unwrap();
        let err = opened.recv().unwrap().unwrap_err();
        let text = err.to_string();
        assert!(text.contains("Test store cannot be opened"), "{text}");
        assert!(text.contains("tried to serialize Uninitialized"), "{text}");
        assert!(text.contains("may be corrupt"), "{text}");
        assert!(!err.is_temporary(), "a corrupt file does not heal by retrying");
    }

    #[test]
    fn free_space_is_checked_every_interval_and_names_the_store() {
        let dir = std::env::temp_dir();
        let mut plenty = FreeSpace::new(&dir, 0);
        plenty.check(10, Path::new("x.db")).unwrap();
        assert_eq!(plenty.since_check, Some(0));
        plenty.check(10, Path::new("x.db")).unwrap();
        assert_eq!(plenty.since_check, Some(10), "not checked again before the interval");
        let mut none = FreeSpace::new(&dir, u64::MAX / 2);
        let err = none.check(10, Path::new("x.db")).unwrap_err();
        assert!(err.to_string().contains("not enough free disk space for x.db"), "{err}");
        assert_eq!(none.since_check, None, "checked again before the next append");
    }
}
