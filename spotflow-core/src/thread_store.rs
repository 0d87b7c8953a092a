//! What the durable stores share: a [`Store`](crate::Store) whose storage work runs on one
//! dedicated thread.
//!
//! A store crate implements [`StoreBackend`] (blocking calls on its files) and wraps a
//! [`ThreadStore`], which owns the thread and the channel to it, merges appends that arrive
//! together into one call of [`StoreBackend::append`] (group commit: one durable write for all
//! of them, each caller answered after it), and implements [`Store`](crate::Store) on top. No
//! tokio worker ever waits for a flush to the disk (an fsync) or a checkpoint.
//! [`crate::store_via_thread!`] implements
//! [`Store`](crate::Store) for the wrapper.
//!
//! At a device's pace (a message every few milliseconds) handing every call to the thread costs
//! more than the call: two thread wakeups per call, each several times the CPU of an append
//! that needs no fsync. So a caller runs a small append or removal on its own thread instead,
//! when the store's thread does not hold the backend at that moment (one lock, no wakeup): a
//! removal always (the backends commit removals without an fsync), an append without an fsync
//! at a device's pace, and any append of a blocking caller (see [`run_as_blocking_caller`]).
//! Appends that come close together from tasks, and callers that find the backend taken, queue
//! for the thread, which merges them (group commit).

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{error, warn};

use crate::{
    persist, DesiredState, DeviceIdentity, Error, ErrorStatus, OutgoingMessage, QueueStats, QueuedMessage,
    ReportedState, Result, STORE_THREAD_POLL,
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

/// The storage work of a durable store, done on its thread by [`ThreadStore`]; every call blocks.
///
/// Every call is about one device's namespace (see [`Namespace`]): a backend of one device sees
/// only [`SINGLE_DEVICE`] and may ignore it.
pub trait StoreBackend: Send + 'static {
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
    /// A named state document (`identity`, `desired`, `reported`) of `ns`.
    fn load_state(&mut self, ns: Namespace, name: &str) -> Result<Option<serde_json::Value>>;
    /// Saves a named state document of `ns` durably.
    fn save_state(&mut self, ns: Namespace, name: &str, value: &serde_json::Value) -> Result<()>;
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
    fn close(self: Box<Self>) -> Result<()>;
}

/// The backend, shared by the store's thread and the callers that use it directly; `None` once
/// closed (or after its library panicked).
type Slot = Arc<Mutex<Option<Box<dyn StoreBackend>>>>;

fn lock_slot(slot: &Slot) -> MutexGuard<'_, Option<Box<dyn StoreBackend>>> {
    // A panic in the backend's library leaves `None` behind (see `ThreadStore::direct`); the
    // slot itself is consistent either way.
    slot.lock().unwrap_or_else(|p| p.into_inner())
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

/// Most messages (in an append) or sequence numbers (in a removal) of a call made on the caller's
/// thread: larger work goes to the store's thread, which runs beside the caller's.
const DIRECT_MAX: usize = 16;

/// An append less than this after the last one ended goes to the store's thread, which merges
/// the appends that arrive together into one transaction (see [`ThreadStore::at_device_pace`]).
const CONCURRENT_GAP: Duration = STORE_THREAD_POLL;

/// How long a lone caller of a store that answers in microseconds (see
/// [`ThreadStore::start`]) polls for the answer before it awaits it.
const REPLY_POLL: Duration = Duration::from_micros(50);

type Reply<T> = oneshot::Sender<Result<T>>;

enum Command {
    Append(Namespace, Vec<OutgoingMessage>, Reply<u64>),
    Read(Namespace, Option<u64>, usize, Reply<Vec<QueuedMessage>>),
    Remove(Namespace, Vec<u64>, Reply<()>),
    Stats(Namespace, Reply<QueueStats>),
    LoadState(Namespace, &'static str, Reply<Option<serde_json::Value>>),
    SaveState(Namespace, &'static str, serde_json::Value, Reply<()>),
    Clear(Namespace, Reply<()>),
    Namespace(String, Reply<Namespace>),
    Close(Reply<()>),
    /// Maintenance announced after a direct call (no answer).
    Maintain,
}

/// A [`Store`](crate::Store) served by one thread that owns a [`StoreBackend`].
#[derive(Clone)]
pub struct ThreadStore {
    tx: mpsc::Sender<Command>,
    /// The backend's name, for errors ("SQLite", "sled").
    label: &'static str,
    /// Poll briefly for answers (see [`ThreadStore::start`]).
    poll_reply: bool,
    /// Whether the store's thread polls for commands now (it answers within microseconds then).
    thread_hot: Arc<std::sync::atomic::AtomicBool>,
    /// Calls waiting for an answer; only a lone caller polls (concurrent ones are grouped anyway).
    waiting: Arc<AtomicUsize>,
    /// The backend, for direct calls.
    slot: Slot,
    /// When the last append ended (see [`CONCURRENT_GAP`]).
    last_append: Arc<Mutex<Option<Instant>>>,
    /// The device this handle is about ([`SINGLE_DEVICE`] in a store of one device).
    ns: Namespace,
    /// A device's view of a shared store (see [`ThreadStore::namespace`]): closing it closes
    /// nothing.
    view: bool,
}

impl std::fmt::Debug for ThreadStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadStore").field("backend", &self.label).finish_non_exhaustive()
    }
}

/// Counts a call out of [`ThreadStore::waiting`] when it ends (also when its future is dropped).
struct WaitingGuard<'a>(&'a AtomicUsize);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a store's thread reports the outcome of opening it.
pub type OpenedCallback = Box<dyn FnOnce(Result<()>) + Send>;

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

impl ThreadStore {
    /// Starts the thread `spotflow-{label}` (lowercase), which opens the backend with `open`,
    /// reports the outcome through `ready`, then serves it until the store is closed or dropped.
    ///
    /// `poll_reply`: the backend answers appends in microseconds (no fsync), less than it takes
    /// to put the caller's thread to sleep and wake it up. Such an append runs on the caller's
    /// thread at a device's pace (no call waits for the thread and the last append ended at
    /// least 200 µs ago) when the store's thread does not hold the backend; so does any append of a thread marked by
    /// [`run_as_blocking_caller`], and every small removal (the backends commit removals without
    /// an fsync of their own). Other appends go to the thread, which merges them (group commit);
    /// a lone caller polls for its answer for up to 50 µs (yielding to other tasks, whose appends
    /// then join its group) first, but only while the store's thread polls for commands itself
    /// (see [`crate::AdaptivePoll`]): under a steady stream of calls.
    pub fn start<B: StoreBackend>(
        label: &'static str,
        poll_reply: bool,
        open: impl FnOnce() -> Result<B> + Send + 'static,
        ready: impl FnOnce(Result<()>) + Send + 'static,
    ) -> Result<ThreadStore> {
        let (tx, rx) = mpsc::channel();
        let poll = crate::AdaptivePoll::new(STORE_THREAD_POLL);
        let thread_hot = poll.hot_flag();
        let slot: Slot = Arc::default();
        let thread_slot = slot.clone();
        std::thread::Builder::new()
            .name(format!("spotflow-{}", label.to_lowercase()))
            .spawn(move || match guarded(label, open) {
                Ok(backend) => {
                    *lock_slot(&thread_slot) = Some(Box::new(backend));
                    ready(Ok(()));
                    let served = std::panic::catch_unwind(AssertUnwindSafe(|| serve(&thread_slot, label, rx, poll)));
                    if let Err(panic) = served {
                        *lock_slot(&thread_slot) = None;
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
        Ok(ThreadStore {
            tx,
            label,
            poll_reply,
            thread_hot,
            waiting: Arc::default(),
            slot,
            last_append: Arc::default(),
            ns: SINGLE_DEVICE,
            view: false,
        })
    }

    /// A handle on the namespace of the device `name` in a store shared by several devices
    /// (made when it is new): every call through it is about that device alone, and all
    /// devices' appends still go through this store's one thread and merge into one durable
    /// write (group commit across devices). Closing the handle closes nothing: the store
    /// closes when it is closed itself, or when its last handle is dropped. A store of one
    /// device refuses.
    pub async fn namespace(&self, name: &str) -> Result<ThreadStore> {
        let name = name.to_owned();
        let ns = self.call(|r| Command::Namespace(name, r)).await?;
        Ok(ThreadStore { ns, view: true, ..self.clone() })
    }

    /// The namespace this handle is about.
    pub fn namespace_id(&self) -> Namespace {
        self.ns
    }

    /// Runs `f` on the backend on this thread if the store's thread does not hold it now;
    /// `None` when it does (or when the store is closed: the thread then answers with the
    /// error). Maintenance that became due is handed to the thread.
    fn direct<T>(&self, f: impl FnOnce(&mut dyn StoreBackend) -> Result<T>) -> Option<Result<T>> {
        let mut guard = match self.slot.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::WouldBlock) => return None,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
        };
        let backend = guard.as_deref_mut()?;
        match std::panic::catch_unwind(AssertUnwindSafe(|| f(&mut *backend))) {
            Ok(result) => {
                if backend.maintenance_due() {
                    let _ = self.tx.send(Command::Maintain);
                }
                Some(result)
            }
            Err(panic) => {
                *guard = None;
                let label = self.label;
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

    /// Starts a store with `start` (which reports the outcome of opening through the callback
    /// it is given, as [`ThreadStore::start`] does) and blocks until it is open: the `open` of
    /// every durable store.
    pub fn wait_open<S>(start: impl FnOnce(OpenedCallback) -> Result<S>) -> Result<S> {
        let (ready, opened) = mpsc::channel();
        let store = start(Box::new(move |r| drop(ready.send(r))))?;
        opened.recv().map_err(|_| stopped_while_opening())??;
        Ok(store)
    }

    /// [`ThreadStore::wait_open`] without blocking the async runtime.
    pub async fn wait_open_async<S>(start: impl FnOnce(OpenedCallback) -> Result<S>) -> Result<S> {
        let (ready, opened) = tokio::sync::oneshot::channel();
        let store = start(Box::new(move |r| drop(ready.send(r))))?;
        opened.await.map_err(|_| stopped_while_opening())??;
        Ok(store)
    }

    fn closed(&self) -> Error {
        Error::Store {
            context: format!("the {} store is closed", self.label),
            status: ErrorStatus::Permanent,
            source: None,
        }
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (reply, mut rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| self.closed())?;
        let alone = self.waiting.fetch_add(1, Ordering::AcqRel) == 0;
        let _waiting = WaitingGuard(&self.waiting);
        if self.poll_reply && alone && self.thread_hot.load(Ordering::Relaxed) {
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

    /// [`Store::append_messages`](crate::Store::append_messages).
    pub async fn append_messages(&self, messages: Vec<OutgoingMessage>) -> Result<u64> {
        let result = self.append_directly_or_not(messages).await;
        *self.last_append.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        result
    }

    async fn append_directly_or_not(&self, messages: Vec<OutgoingMessage>) -> Result<u64> {
        // A blocking caller's thread waits for the answer anyway: it appends itself whenever the
        // backend is free, in a tight loop too (concurrent ones then find it taken and queue for
        // the thread, which merges their appends).
        let blocking = BLOCKING_CALLER.with(Cell::get);
        let direct = blocking || (self.poll_reply && self.at_device_pace());
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
        if self.waiting.load(Ordering::Acquire) > 0 {
            return false;
        }
        let last = *self.last_append.lock().unwrap_or_else(|p| p.into_inner());
        last.is_none_or(|t| t.elapsed() >= CONCURRENT_GAP)
    }

    /// [`Store::read_messages`](crate::Store::read_messages).
    pub async fn read_messages(&self, after: Option<u64>, limit: usize) -> Result<Vec<QueuedMessage>> {
        self.call(|r| Command::Read(self.ns, after, limit, r)).await
    }
    /// [`Store::remove_messages`](crate::Store::remove_messages).
    pub async fn remove_messages(&self, seqs: &[u64]) -> Result<()> {
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
    /// [`Store::queue_stats`](crate::Store::queue_stats).
    pub async fn queue_stats(&self) -> Result<QueueStats> {
        self.call(|r| Command::Stats(self.ns, r)).await
    }
    /// [`Store::load_identity`](crate::Store::load_identity).
    pub async fn load_identity(&self) -> Result<Option<DeviceIdentity>> {
        let v = self.call(|r| Command::LoadState(self.ns, "identity", r)).await?;
        v.as_ref().map(persist::identity_from_json).transpose()
    }
    /// [`Store::save_identity`](crate::Store::save_identity).
    pub async fn save_identity(&self, identity: &DeviceIdentity) -> Result<()> {
        let v = persist::identity_to_json(identity);
        self.call(|r| Command::SaveState(self.ns, "identity", v, r)).await
    }
    /// [`Store::load_desired`](crate::Store::load_desired).
    pub async fn load_desired(&self) -> Result<Option<DesiredState>> {
        let v = self.call(|r| Command::LoadState(self.ns, "desired", r)).await?;
        v.as_ref().map(persist::desired_from_json).transpose()
    }
    /// [`Store::save_desired`](crate::Store::save_desired).
    pub async fn save_desired(&self, desired: &DesiredState) -> Result<()> {
        let v = persist::desired_to_json(desired);
        self.call(|r| Command::SaveState(self.ns, "desired", v, r)).await
    }
    /// [`Store::load_reported`](crate::Store::load_reported).
    pub async fn load_reported(&self) -> Result<ReportedState> {
        let v = self.call(|r| Command::LoadState(self.ns, "reported", r)).await?;
        Ok(v.as_ref().map(persist::reported_from_json).transpose()?.unwrap_or_default())
    }
    /// [`Store::save_reported`](crate::Store::save_reported).
    pub async fn save_reported(&self, reported: &ReportedState) -> Result<()> {
        let v = persist::reported_to_json(reported);
        self.call(|r| Command::SaveState(self.ns, "reported", v, r)).await
    }
    /// [`Store::clear_device_state`](crate::Store::clear_device_state).
    pub async fn clear_device_state(&self) -> Result<()> {
        self.call(|r| Command::Clear(self.ns, r)).await
    }
    /// Closes the store now (everything durable, the files released for another process)
    /// instead of when the last clone is dropped. Later calls on any clone fail; closing again is
    /// a no-op. On a device's view of a shared store (see [`ThreadStore::namespace`]) it does
    /// nothing: everything it appended is already durable, and the other devices go on.
    pub async fn close(&self) -> Result<()> {
        if self.view {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Close(reply)).is_err() {
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
fn serve(slot: &Slot, label: &str, rx: mpsc::Receiver<Command>, mut poll: crate::AdaptivePoll) {
    while let Some(first) = poll.recv(&rx) {
        let mut guard = lock_slot(slot);
        let mut appends = Vec::new();
        let mut next = Some(first);
        let round = Instant::now();
        let mut served = 0usize;
        while let Some(command) = next.take() {
            let Some(backend) = guard.as_deref_mut() else {
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
                    let _ = reply.send(backend.map_or(Ok(()), |b| b.close()));
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
        if let Some(backend) = guard.as_deref_mut() {
            append_group(backend, &mut appends);
            if backend.maintenance_due() {
                maintain(backend, label);
            }
        }
    }
    // Every handle was dropped without `close`.
    let backend = lock_slot(slot).take();
    if let Some(Err(e)) = backend.map(|b| b.close()) {
        warn!(error = %e, "the {label} store did not close cleanly");
    }
}

fn maintain(backend: &mut dyn StoreBackend, label: &str) {
    if let Err(e) = backend.maintain() {
        warn!(error = %e, "the {label} store's maintenance failed; it is tried again later");
    }
}

/// Appends waiting for the next group commit: each device's messages, and its caller's answer.
type PendingAppends = Vec<((Namespace, Vec<OutgoingMessage>), Reply<u64>)>;

fn append_group(backend: &mut dyn StoreBackend, appends: &mut PendingAppends) {
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
            // The error is not `Clone`: every caller gets its text and status.
            let (context, status) = match &e {
                Error::Store { context, status, .. } => (context.clone(), *status),
                other => (other.to_string(), ErrorStatus::Temporary),
            };
            for reply in replies {
                let _ = reply.send(Err(Error::Store { context: context.clone(), status, source: None }));
            }
        }
    }
}

fn serve_one(backend: &mut dyn StoreBackend, command: Command, label: &str) {
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
        Command::LoadState(ns, name, reply) => drop(reply.send(backend.load_state(ns, name))),
        Command::SaveState(ns, name, value, reply) => drop(reply.send(backend.save_state(ns, name, &value))),
        Command::Clear(ns, reply) => drop(reply.send(backend.clear(ns))),
        Command::Namespace(name, reply) => drop(reply.send(backend.namespace(&name))),
    }
}

/// Declares a durable store type: `pub struct $ty { inner: ThreadStore, path: Arc<PathBuf> }`
/// with [`Store`](crate::Store) served by its thread ([`crate::store_via_thread!`]) and the one opening
/// shape ([`crate::durable_store_open!`]).
#[macro_export]
macro_rules! durable_store {
    ($(#[$attr:meta])* $ty:ident, $options:ident) => {
        $(#[$attr])*
        #[derive(Debug, Clone)]
        pub struct $ty {
            inner: $crate::ThreadStore,
            path: std::sync::Arc<std::path::PathBuf>,
        }

        $crate::store_via_thread!($ty, inner);
        $crate::durable_store_open!($ty, $options);
    };
}

/// The one opening shape of the durable stores: `open(path, durability)`, `open_with_options`,
/// `open_async(path, durability)`, `open_async_with_options`, for a store type with an options
/// type (`Default`, with a `durability` field) and a
/// `fn start(&Path, Options, impl FnOnce(Result<()>) + Send + 'static) -> Result<Self>` that
/// starts its thread and reports the outcome of opening.
#[macro_export]
macro_rules! durable_store_open {
    ($ty:ident, $options:ident) => {
        impl $ty {
            /// Opens (creating) the store at `path` with the given durability and the default
            /// options. Blocks while the store opens (on its own thread); inside an async runtime
            /// use `open_async`.
            pub fn open(path: impl AsRef<std::path::Path>, durability: $crate::Durability) -> $crate::Result<$ty> {
                Self::open_with_options(path, $options { durability, ..$options::default() })
            }

            /// Like `open` with every option.
            pub fn open_with_options(path: impl AsRef<std::path::Path>, options: $options) -> $crate::Result<$ty> {
                $crate::ThreadStore::wait_open(|ready| Self::start(path.as_ref(), options, ready))
            }

            /// `open` without blocking the async runtime.
            pub async fn open_async(
                path: impl AsRef<std::path::Path>,
                durability: $crate::Durability,
            ) -> $crate::Result<$ty> {
                Self::open_async_with_options(path, $options { durability, ..$options::default() }).await
            }

            /// `open_with_options` without blocking the async runtime.
            pub async fn open_async_with_options(
                path: impl AsRef<std::path::Path>,
                options: $options,
            ) -> $crate::Result<$ty> {
                $crate::ThreadStore::wait_open_async(|ready| Self::start(path.as_ref(), options, ready)).await
            }
        }
    };
}

/// Implements [`Store`](crate::Store) for a type whose field `$field` is a [`ThreadStore`].
#[macro_export]
macro_rules! store_via_thread {
    ($ty:ty, $field:ident) => {
        #[$crate::__async_trait]
        impl $crate::Store for $ty {
            async fn append_messages(&self, messages: Vec<$crate::OutgoingMessage>) -> $crate::Result<u64> {
                self.$field.append_messages(messages).await
            }
            async fn read_messages(
                &self,
                after: Option<u64>,
                limit: usize,
            ) -> $crate::Result<Vec<$crate::QueuedMessage>> {
                self.$field.read_messages(after, limit).await
            }
            async fn remove_messages(&self, seqs: &[u64]) -> $crate::Result<()> {
                self.$field.remove_messages(seqs).await
            }
            async fn queue_stats(&self) -> $crate::Result<$crate::QueueStats> {
                self.$field.queue_stats().await
            }
            async fn load_identity(&self) -> $crate::Result<Option<$crate::DeviceIdentity>> {
                self.$field.load_identity().await
            }
            async fn save_identity(&self, identity: &$crate::DeviceIdentity) -> $crate::Result<()> {
                self.$field.save_identity(identity).await
            }
            async fn load_desired(&self) -> $crate::Result<Option<$crate::DesiredState>> {
                self.$field.load_desired().await
            }
            async fn save_desired(&self, desired: &$crate::DesiredState) -> $crate::Result<()> {
                self.$field.save_desired(desired).await
            }
            async fn load_reported(&self) -> $crate::Result<$crate::ReportedState> {
                self.$field.load_reported().await
            }
            async fn save_reported(&self, reported: &$crate::ReportedState) -> $crate::Result<()> {
                self.$field.save_reported(reported).await
            }
            async fn clear_device_state(&self) -> $crate::Result<()> {
                self.$field.clear_device_state().await
            }
            async fn close(&self) -> $crate::Result<()> {
                self.$field.close().await
            }
        }
    };
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
        let free = match rustix::fs::statvfs(&self.dir) {
            Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
            // Unknown: the store's own write reports a full disk.
            Err(_) => u64::MAX,
        };
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
    use crate::{MemoryStore, Store};

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
        fn load_state(&mut self, _: Namespace, name: &str) -> Result<Option<serde_json::Value>> {
            Ok(match name {
                "identity" => now(self.inner.load_identity())?.as_ref().map(persist::identity_to_json),
                "desired" => now(self.inner.load_desired())?.as_ref().map(persist::desired_to_json),
                _ => Some(persist::reported_to_json(&now(self.inner.load_reported())?)),
            })
        }
        fn save_state(&mut self, _: Namespace, name: &str, value: &serde_json::Value) -> Result<()> {
            match name {
                "identity" => now(self.inner.save_identity(&persist::identity_from_json(value)?)),
                "desired" => now(self.inner.save_desired(&persist::desired_from_json(value)?)),
                _ => now(self.inner.save_reported(&persist::reported_from_json(value)?)),
            }
        }
        fn clear(&mut self, _: Namespace) -> Result<()> {
            now(self.inner.clear_device_state())
        }
        fn close(self: Box<Self>) -> Result<()> {
            Ok(())
        }
    }

    #[derive(Debug)]
    struct Wrapped {
        inner: ThreadStore,
    }
    crate::store_via_thread!(Wrapped, inner);

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
        let (ready, opened) = mpsc::channel();
        let open = move || {
            let mut backend = Counting {
                inner: MemoryStore::new(),
                appends: counter,
                log: thread_log,
                maintenance: false,
                due: false,
                panic_on_remove: false,
            };
            change(&mut backend);
            Ok(backend)
        };
        let inner = ThreadStore::start("Test", poll_reply, open, move |r| drop(ready.send(r))).unwrap();
        opened.recv().unwrap().unwrap();
        (Wrapped { inner }, appends, log)
    }

    /// Waits (up to 5 s) until the store's thread does not hold the backend, and lets the next
    /// append count as one at a device's pace (as after a pause of `CONCURRENT_GAP`).
    fn wait_idle(store: &ThreadStore) -> bool {
        *store.last_append.lock().unwrap() = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if store.slot.try_lock().is_ok() {
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
                assert!(wait_idle(&store.inner));
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
                *store.inner.last_append.lock().unwrap() = Some(Instant::now() + Duration::from_secs(3600));
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
        let result = ThreadStore::wait_open(|ready| ThreadStore::start("Test", false, open, ready));
        let err = result.map(|_| ()).unwrap_err();
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
