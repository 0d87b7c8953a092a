//! The background worker: moves messages and twin traffic between the state machines, the store
//! and the connection. All decisions are made by the sans-IO machines of `spotflow-core`
//! (`OutgoingQueue`, `DesiredTracker`, `ReportedTracker`, `LinkSchedule` for every timer); the
//! worker performs their I/O and sleeps until the schedule's next deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use serde_json::{Map, Value};
use spotflow_core::{
    Connection, ConnectionCredentials, DesiredState, DesiredTracker, Error, InboxAppend, LinkAction, LinkSchedule,
    LinkTimings, OutgoingQueue, PatchOutcome, ReportedOutcome, ReportedTracker, RequestId, Result, SessionInfo, Store,
    Transport, TransportEvent,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::callbacks::DesiredSink;
use crate::events::{ConnectionEvent, DisconnectReason};
use crate::methods::{Answer, Methods};
use crate::shared::Shared;
use crate::ClientOptions;

/// Requests from the API to the worker.
pub(crate) enum Command {
    UpdateReported {
        document: Map<String, Value>,
        merge: bool,
        reply: oneshot::Sender<Result<()>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
    /// Drop the oldest queued messages until `bytes` are freed.
    DropOldest {
        bytes: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    /// The application completed a cloud-to-device message: the inbox has room again.
    InboxSpace,
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<Box<dyn Connection>>> + Send>>;

/// Events drained from the connection in one go before the worker does other work.
const EVENT_BATCH: usize = 4096;

/// What a worker starts from; the rest of its state it makes itself ([`Worker::new`]).
pub(crate) struct WorkerSetup {
    pub shared: Arc<Shared>,
    pub store: Arc<dyn Store>,
    pub transport: Arc<dyn Transport>,
    pub options: ClientOptions,
    /// The last sequence number in the store at start.
    pub last_seq: Option<u64>,
    pub desired: Option<DesiredState>,
    pub reported: ReportedTracker,
    pub commands: mpsc::Receiver<Command>,
    pub credentials: watch::Receiver<Option<ConnectionCredentials>>,
    pub rejected: mpsc::UnboundedSender<()>,
    pub acked: watch::Sender<u64>,
    pub desired_tx: Option<DesiredSink>,
    /// The credential keeper, stopped with the worker.
    pub keeper: tokio::task::JoinHandle<()>,
    /// Identifies the outgoing queue to the transport (message keys).
    pub session: SessionInfo,
    /// The direct methods' handlers, and their answers as they come.
    pub methods: Methods,
    pub method_answers: mpsc::UnboundedReceiver<Answer>,
}

pub(crate) struct Worker {
    shared: Arc<Shared>,
    store: Arc<dyn Store>,
    transport: Arc<dyn Transport>,
    options: ClientOptions,
    queue: OutgoingQueue,
    desired: DesiredTracker,
    reported: ReportedTracker,
    commands: mpsc::Receiver<Command>,
    credentials: watch::Receiver<Option<ConnectionCredentials>>,
    rejected: mpsc::UnboundedSender<()>,
    acked: watch::Sender<u64>,
    desired_tx: Option<DesiredSink>,
    conn: Option<Box<dyn Connection>>,
    connecting: Option<ConnectFuture>,
    twin_request: Option<RequestId>,
    /// Every timer: reconnects, twin retries, credential switches, store retries, removals.
    schedule: LinkSchedule,
    /// The credential keeper, stopped with the worker.
    keeper: Option<tokio::task::JoinHandle<()>>,
    /// Identifies the outgoing queue to the transport (message keys).
    session: SessionInfo,
    /// The direct methods' handlers, and their answers as they come.
    methods: Methods,
    method_answers: mpsc::UnboundedReceiver<Answer>,
    /// Cloud-to-device messages received but not stored (the inbox was full, or the store
    /// failed): not acknowledged, retried when the application completes one. Dropped with the
    /// connection (the broker sends them again).
    held: std::collections::VecDeque<(u64, spotflow_core::CloudMessage)>,
}

impl Worker {
    pub(crate) fn new(setup: WorkerSetup) -> Worker {
        let options = setup.options;
        let schedule = LinkSchedule::new(LinkTimings {
            retry_initial: options.retry_initial,
            retry_max: options.retry_max,
            reconnect_max: options.reconnect_max.min(options.retry_max),
            drain_timeout: options.renewal_drain_timeout,
            remove_batch: REMOVE_BATCH,
            remove_delay: REMOVE_DELAY,
            store_retry: options.retry_initial,
        });
        Worker {
            queue: OutgoingQueue::new(setup.last_seq, options.max_in_flight, options.fetch_batch),
            desired: DesiredTracker::new(setup.desired),
            schedule,
            options,
            shared: setup.shared,
            store: setup.store,
            transport: setup.transport,
            reported: setup.reported,
            commands: setup.commands,
            credentials: setup.credentials,
            rejected: setup.rejected,
            acked: setup.acked,
            desired_tx: setup.desired_tx,
            conn: None,
            connecting: None,
            twin_request: None,
            keeper: Some(setup.keeper),
            session: setup.session,
            methods: setup.methods,
            method_answers: setup.method_answers,
            held: std::collections::VecDeque::new(),
        }
    }
}

/// Waits for the next event of an optional connection (pending forever without one).
async fn next_event(conn: &mut Option<Box<dyn Connection>>) -> Result<TransportEvent> {
    match conn {
        Some(c) => c.next_event().await,
        None => std::future::pending().await,
    }
}

async fn connecting(fut: &mut Option<ConnectFuture>) -> Result<Box<dyn Connection>> {
    match fut {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Now, for the schedule (Tokio's clock, so that a paused test clock would drive it too).
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Polls a future once; `None` when it is not ready (it is dropped: only for cancel-safe futures).
fn now_or_never<F: Future>(f: F) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// Acknowledged messages are removed from the store as soon as the worker has nothing else to do
/// (so that a crash redelivers at most what was in flight, even to a platform that does not drop
/// redeliveries by their message key); under load they gather, up to this many or
/// [`REMOVE_DELAY`] after the first of them, so that a stream of acknowledgements does not put
/// one removal transaction between every two appends.
pub(crate) const REMOVE_BATCH: usize = 512;
pub(crate) const REMOVE_DELAY: Duration = Duration::from_millis(20);

/// Whether `e` is the link failing (no answer, a reset, a stall) rather than the platform
/// answering with a refusal.
fn link_failure(e: &Error) -> bool {
    matches!(e, Error::Transport { .. } | Error::Timeout(_))
}

impl Worker {
    pub async fn run(mut self) {
        if self.credentials.borrow().is_some() {
            self.schedule.on_credentials(now());
        }
        self.notify_desired();
        loop {
            self.pump().await;
            let wake = self.schedule.next_deadline().map(Instant::from_std);
            let removal_waiting = self.schedule.removal_waiting(now());
            tokio::select! {
                biased;
                cmd = self.commands.recv() => match cmd {
                    Some(Command::UpdateReported { document, merge, reply }) => {
                        let _ = reply.send(self.update_reported(document, merge).await);
                    }
                    Some(Command::DropOldest { bytes, reply }) => {
                        let _ = reply.send(self.drop_oldest(bytes).await);
                    }
                    Some(Command::InboxSpace) => self.store_held().await,
                    Some(Command::Close { reply }) => {
                        self.shutdown().await;
                        let _ = reply.send(());
                        return;
                    }
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
                result = next_event(&mut self.conn) => {
                    self.handle_event(result).await;
                    for _ in 0..EVENT_BATCH {
                        let Some(conn) = self.conn.as_mut() else { break };
                        match now_or_never(conn.next_event()) {
                            Some(result) => self.handle_event(result).await,
                            None => break,
                        }
                    }
                }
                () = self.shared.appended.notified() => {}
                Some(answer) = self.method_answers.recv() => self.answer_method(answer).await,
                result = connecting(&mut self.connecting) => {
                    self.connecting = None;
                    self.handle_connected(result);
                }
                changed = self.credentials.changed() => {
                    if changed.is_ok() {
                        self.on_new_credentials();
                    }
                }
                // Nothing else is ready (the select is biased): idle work first, then sleep.
                () = std::future::ready(()), if removal_waiting => {
                    if let Some(action) = self.schedule.poll_idle(now()) {
                        self.perform(action).await;
                    }
                }
                // What became due is done by the next pump.
                () = sleep_until(wake) => {}
            }
        }
    }

    /// Does all work that needs no waiting: what the schedule says is due (connects, twin
    /// requests, credential switches, removals), reads, transmissions.
    async fn pump(&mut self) {
        let last_appended = self.shared.last_appended();
        self.queue.on_appended(last_appended);
        for _ in 0..64 {
            let mut progressed = false;
            let now = now();
            self.schedule.on_removals_pending(now, self.queue.removals_pending());
            while let Some(action) = self.schedule.poll(now, self.queue.in_flight()) {
                progressed = true;
                self.perform(action).await;
            }
            if self.schedule.store_usable(now) {
                if let Some((after, limit)) = self.queue.poll_fetch() {
                    progressed = true;
                    if let Some(messages) = self.shared.take_recent(after, last_appended, limit) {
                        self.queue.handle_fetched(messages, limit);
                    } else {
                        match self.store.read_messages(after, limit).await {
                            Ok(messages) => self.queue.handle_fetched(messages, limit),
                            Err(e) => {
                                warn!(error = %e, "reading the outgoing queue failed; retrying");
                                self.queue.handle_fetch_failed();
                                self.schedule.on_store_failed(now);
                            }
                        }
                    }
                }
            }
            if self.schedule.may_transmit() {
                if let Some(conn) = self.conn.as_mut() {
                    let mut failure = None;
                    while let Some(m) = self.queue.poll_transmit() {
                        progressed = true;
                        if let Err(e) = conn.publish_message(m.seq, &m.message).await {
                            failure = Some(e);
                            break;
                        }
                    }
                    if failure.is_none() {
                        if let Some((request, patch)) = self.reported.poll_patch() {
                            debug!(request, "sending reported properties patch");
                            if let Err(e) = conn.patch_reported(request, &patch).await {
                                failure = Some(e);
                            }
                        }
                    }
                    if let Some(e) = failure {
                        self.disconnected(e);
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        self.shared.stats.after_round(
            self.queue.in_flight() as u64,
            self.queue.acked_through() + 1,
            self.shared.pending(),
            self.shared.queued_bytes(),
        );
        let through = self.queue.acked_through();
        self.acked.send_if_modified(|v| {
            let changed = *v != through;
            *v = through;
            changed
        });
        self.shared.set_reported_status(self.reported.any_pending(), self.reported.rejected());
    }

    /// Performs what the schedule says is due.
    async fn perform(&mut self, action: LinkAction) {
        match action {
            LinkAction::Connect => self.start_connecting(),
            LinkAction::RequestTwin => self.request_twin().await,
            LinkAction::SwitchCredentials => self.switch_credentials().await,
            LinkAction::RemoveAcknowledged => {
                if let Some(seqs) = self.queue.poll_remove() {
                    if let Err(e) = self.store.remove_messages(&seqs).await {
                        warn!(error = %e, "removing acknowledged messages failed; retrying");
                        self.queue.handle_remove_failed(seqs);
                        self.schedule.on_store_failed(now());
                    }
                }
            }
        }
    }

    async fn handle_event(&mut self, result: Result<TransportEvent>) {
        let event = match result {
            Ok(event) => event,
            Err(e) => {
                self.disconnected(e);
                return;
            }
        };
        match event {
            TransportEvent::MessageAcknowledged(seq) => {
                if let Some(size) = self.queue.handle_ack(seq) {
                    self.shared.stats.acknowledged(seq);
                    self.shared.message_acknowledged(size);
                }
            }
            TransportEvent::MessageRefused { seq, reason } => {
                if let Some(size) = self.queue.handle_refused(seq) {
                    error!(seq, ?reason, "the platform refused a message for good; it is removed from the queue");
                    self.shared.stats.refused(seq);
                    self.shared.message_acknowledged(size);
                    self.shared.message_refused(seq, reason);
                }
            }
            TransportEvent::Twin { request, result } if Some(request) == self.twin_request => {
                self.twin_request = None;
                match result {
                    Ok(twin) => {
                        self.schedule.on_twin();
                        self.shared.stats.reported_version(twin.reported_version);
                        if self.desired.handle_twin(twin.desired.clone()) {
                            self.persist_desired().await;
                        }
                        if self.reported.handle_twin(&twin) {
                            self.persist_reported().await;
                        }
                        self.notify_desired();
                    }
                    Err(status) => {
                        let delay = self.schedule.on_twin_failed(now());
                        warn!(status, ?delay, "twin request failed; retrying");
                    }
                }
            }
            TransportEvent::Twin { request, .. } => debug!(request, "twin response for an unknown request ignored"),
            TransportEvent::ReportedPatched { request, status, version } => {
                if let Some(v) = version.filter(|_| (200..300).contains(&status)) {
                    self.shared.stats.reported_version(v);
                }
                match self.reported.handle_response(request, status) {
                    ReportedOutcome::Accepted => {
                        debug!(request, "reported properties accepted");
                        self.persist_reported().await;
                    }
                    ReportedOutcome::Rejected(status) => {
                        warn!(status, "platform rejected the reported properties update; kept for a retry on the next connection or update");
                    }
                    ReportedOutcome::Unknown => debug!(request, "reported response for an unknown request ignored"),
                }
            }
            TransportEvent::DesiredPatch { version, patch } => match self.desired.handle_patch(version, &patch) {
                PatchOutcome::Applied => {
                    self.persist_desired().await;
                    self.notify_desired();
                }
                PatchOutcome::Ignored => debug!(version, "desired properties patch not newer; ignored"),
                PatchOutcome::NeedFullTwin => {
                    debug!(version, "desired properties version skipped; fetching the twin");
                    self.request_twin().await;
                }
            },
            TransportEvent::MethodCall { method, request, payload } => {
                if let Some(answer) = self.methods.dispatch(method, request, payload) {
                    self.answer_method(answer).await;
                }
            }
            TransportEvent::CloudMessage { token, message } => {
                self.held.push_back((token, message));
                self.store_held().await;
            }
            other => debug!(?other, "unhandled transport event"),
        }
    }

    /// Stores the held cloud-to-device messages, in order, while the inbox has room, each
    /// acknowledged once stored (a redelivery of one stored or completed already is only
    /// acknowledged).
    async fn store_held(&mut self) {
        while let Some((token, message)) = self.held.front() {
            let size = message.size();
            let used = self.shared.inbox_bytes.load(std::sync::atomic::Ordering::Acquire);
            if used > 0 && used + size > self.options.c2d_inbox_budget_bytes {
                debug!(used, size, "cloud-to-device inbox full; the broker keeps the rest");
                return;
            }
            match self.store.append_cloud_message(message).await {
                Ok(stored) => {
                    let token = *token;
                    self.held.pop_front();
                    // Acknowledged before the application hears of it: a message it completes
                    // at once is one the broker does not send again.
                    let acked = match self.conn.as_mut() {
                        Some(conn) => conn.ack_cloud_message(token).await,
                        None => Ok(()),
                    };
                    match stored {
                        InboxAppend::Stored(id) => {
                            self.shared.inbox_bytes.fetch_add(size, std::sync::atomic::Ordering::AcqRel);
                            self.shared.inbox_changed.send_modify(|n| *n = (*n).max(id));
                            debug!(id, size, "cloud-to-device message stored");
                        }
                        InboxAppend::AlreadyHeld => {
                            debug!("cloud-to-device message received again (held in the inbox); acknowledged")
                        }
                        InboxAppend::AlreadyCompleted => {
                            debug!("cloud-to-device message received again (completed already); acknowledged")
                        }
                    }
                    if let Err(e) = acked {
                        self.disconnected(e);
                        return;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "a cloud-to-device message could not be stored; not acknowledged (the broker keeps it)");
                    self.held.clear();
                    return;
                }
            }
        }
    }

    /// Sends a direct method's answer on the connection the call came on. When that connection
    /// is gone, the answer cannot reach the caller (its request id belonged to it): logged.
    async fn answer_method(&mut self, Answer { request, status, body }: Answer) {
        let Some(conn) = self.conn.as_mut() else {
            warn!(?request, status, "the answer to a direct method call is lost: the connection it came on is gone");
            return;
        };
        if let Err(e) = conn.answer_method(&request, status, &body).await {
            warn!(?request, status, error = %e, "the answer to a direct method call could not be sent");
            self.disconnected(e);
        }
    }

    fn handle_connected(&mut self, result: Result<Box<dyn Connection>>) {
        match result {
            Ok(conn) => {
                info!("connected to the platform");
                self.conn = Some(conn);
                self.shared.set_connected(true);
                self.shared.stats.connected();
                self.shared.events.publish(ConnectionEvent::Connected { since: std::time::SystemTime::now() });
                self.queue.on_connected();
                self.reported.on_connected();
                self.twin_request = None;
                self.schedule.on_connected(now());
            }
            Err(e) => {
                if matches!(e, Error::Unauthorized(_)) {
                    let _ = self.rejected.send(());
                }
                let delay = self.schedule.on_connect_failed(now(), link_failure(&e));
                self.shared.stats.disconnected(Some(e.to_string()), 0);
                self.shared.events.publish(ConnectionEvent::ended_by(&e, delay));
                warn!(error = %e, ?delay, "connecting failed; retrying");
            }
        }
    }

    fn disconnected(&mut self, e: Error) {
        if self.conn.take().is_none() {
            return;
        }
        self.shared.set_connected(false);
        self.shared.stats.disconnected(Some(e.to_string()), self.queue.in_flight());
        self.queue.on_disconnected();
        self.reported.on_disconnected();
        // Their acknowledgements belonged to the connection: the broker sends them again.
        self.held.clear();
        self.twin_request = None;
        if matches!(e, Error::Unauthorized(_)) {
            let _ = self.rejected.send(());
        }
        let delay = self.schedule.on_disconnected(now(), link_failure(&e));
        self.shared.events.publish(ConnectionEvent::ended_by(&e, delay));
        warn!(error = %e, ?delay, "connection lost; reconnecting");
    }

    fn start_connecting(&mut self) {
        if self.conn.is_some() || self.connecting.is_some() {
            return;
        }
        let Some(creds) = self.credentials.borrow().clone() else { return };
        let attempt = self.shared.stats.connecting();
        self.shared.events.publish(ConnectionEvent::Connecting { attempt });
        let transport = self.transport.clone();
        let timeout = self.options.request_timeout;
        let session = self.session.clone();
        self.connecting = Some(Box::pin(tracing::Instrument::instrument(
            async move {
                tokio::time::timeout(timeout, transport.connect(&creds, &session))
                    .await
                    .map_err(|_| Error::Timeout(format!("connecting took longer than {timeout:?}")))?
            },
            tracing::info_span!("spotflow_connect"),
        )));
    }

    fn on_new_credentials(&mut self) {
        if self.conn.is_some() {
            // The schedule lets in-flight messages be acknowledged before switching, so that
            // none is sent twice.
            debug!("new connection credentials; draining in-flight messages before reconnecting");
        } else {
            // An attempt under way uses the old credentials.
            self.connecting = None;
        }
        self.schedule.on_credentials(now());
    }

    async fn switch_credentials(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.close().await;
            self.shared.set_connected(false);
            self.shared.stats.disconnected(None, self.queue.in_flight());
            self.shared.events.publish(ConnectionEvent::Disconnected {
                reason: DisconnectReason::CredentialRenewal,
                retry_in: Duration::ZERO,
            });
            self.queue.on_disconnected();
            self.reported.on_disconnected();
            self.twin_request = None;
        }
        info!("reconnecting with renewed credentials");
        self.start_connecting();
    }

    async fn request_twin(&mut self) {
        if self.twin_request.is_some() {
            return;
        }
        let Some(conn) = self.conn.as_mut() else { return };
        let request = self.reported.allocate_request_id();
        match conn.request_twin(request).await {
            Ok(()) => self.twin_request = Some(request),
            Err(e) => self.disconnected(e),
        }
    }

    /// Removes the oldest queued messages until at least `bytes` are freed.
    async fn drop_oldest(&mut self, bytes: u64) -> Result<()> {
        let mut freed = 0;
        let mut dropped = 0u64;
        while freed < bytes {
            let oldest = self.store.read_messages(None, 256).await?;
            if oldest.is_empty() {
                break;
            }
            let mut seqs = Vec::new();
            for m in &oldest {
                if freed >= bytes {
                    break;
                }
                freed += m.message.queued_size();
                seqs.push(m.seq);
            }
            self.store.remove_messages(&seqs).await?;
            self.shared.forget_recent();
            self.queue.forget(&seqs);
            self.shared.stats.dropped(&seqs);
            dropped += seqs.len() as u64;
            for m in oldest.iter().take(seqs.len()) {
                self.shared.message_acknowledged(m.message.queued_size());
            }
        }
        if dropped > 0 {
            warn!(dropped, freed_bytes = freed, "outgoing queue full: dropped the oldest messages");
        }
        Ok(())
    }

    async fn update_reported(&mut self, document: Map<String, Value>, merge: bool) -> Result<()> {
        if merge {
            self.reported.patch(&document);
        } else {
            self.reported.update(document);
        }
        self.store.save_reported(self.reported.state()).await?;
        self.shared.set_reported_status(self.reported.any_pending(), self.reported.rejected());
        Ok(())
    }

    async fn persist_desired(&mut self) {
        if let Some(d) = self.desired.current() {
            if let Err(e) = self.store.save_desired(d).await {
                warn!(error = %e, "could not persist desired properties");
            }
        }
    }

    async fn persist_reported(&mut self) {
        if let Err(e) = self.store.save_reported(self.reported.state()).await {
            warn!(error = %e, "could not persist reported properties");
        }
    }

    fn notify_desired(&mut self) {
        if let Some(d) = self.desired.current() {
            self.shared.set_desired(d.clone());
        }
        if let Some(state) = self.desired.poll_notify() {
            info!(version = state.version, "desired properties updated");
            if let Some(tx) = &self.desired_tx {
                tx.send(state);
            }
        }
    }

    async fn shutdown(&mut self) {
        if let Some(seqs) = self.queue.poll_remove() {
            if let Err(e) = self.store.remove_messages(&seqs).await {
                warn!(error = %e, "removing acknowledged messages at shutdown failed; they will be sent again");
            }
        }
        if let Some(mut conn) = self.conn.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
        }
        self.shared.set_connected(false);
        self.shared.stats.closed(self.queue.acked_through() + 1, self.shared.pending(), self.shared.queued_bytes());
        self.shared.events.publish(ConnectionEvent::Closed);
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
            let _ = keeper.await;
        }
        if let Err(e) = self.store.close().await {
            warn!(error = %e, "closing the store failed");
        }
        info!("device client closed");
    }
}
