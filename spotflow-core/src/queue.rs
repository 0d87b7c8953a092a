//! The outgoing queue's delivery state machine (sans-IO).
//!
//! Messages live in the [`crate::Store`]; this machine decides what to read from it, what to hand
//! to the connection, and what to remove once acknowledged. The driver:
//!
//! 1. tells it about appends ([`OutgoingQueue::on_appended`]) and connection changes;
//! 2. performs the reads it asks for ([`OutgoingQueue::poll_fetch`] → [`OutgoingQueue::handle_fetched`]);
//! 3. sends what [`OutgoingQueue::poll_transmit`] yields, many in flight up to the window;
//! 4. feeds acknowledgements back ([`OutgoingQueue::handle_ack`]) and removes what
//!    [`OutgoingQueue::poll_remove`] returns from the store.
//!
//! Messages are transmitted in sequence order. When the connection drops, unacknowledged ones go
//! back to the head of the line and are sent again first on the next connection.

use std::collections::{BTreeMap, VecDeque};

use crate::QueuedMessage;

/// Delivery state of the outgoing queue.
#[derive(Debug)]
pub struct OutgoingQueue {
    window: usize,
    fetch_batch: usize,
    /// Highest sequence number read from the store (everything at or below it is known here).
    cursor: u64,
    /// Highest sequence number known to be in the store.
    known_last: u64,
    /// `known_last` when the outstanding read was asked for.
    fetching: Option<u64>,
    unsent: VecDeque<QueuedMessage>,
    in_flight: BTreeMap<u64, QueuedMessage>,
    to_remove: Vec<u64>,
    connected: bool,
}

impl OutgoingQueue {
    /// A queue over a store whose highest sequence number is `last_seq`, keeping up to `window`
    /// messages in flight and reading `fetch_batch` messages at a time.
    pub fn new(last_seq: Option<u64>, window: usize, fetch_batch: usize) -> Self {
        OutgoingQueue {
            window: window.max(1),
            fetch_batch: fetch_batch.max(1),
            cursor: 0,
            known_last: last_seq.unwrap_or(0),
            fetching: None,
            unsent: VecDeque::new(),
            in_flight: BTreeMap::new(),
            to_remove: Vec::new(),
            connected: false,
        }
    }

    /// Messages up to `last_seq` were appended to the store.
    pub fn on_appended(&mut self, last_seq: u64) {
        self.known_last = self.known_last.max(last_seq);
    }

    /// A connection is up: transmission may start.
    pub fn on_connected(&mut self) {
        self.connected = true;
    }

    /// The connection is lost: in-flight messages go back to the head of the line.
    pub fn on_disconnected(&mut self) {
        self.connected = false;
        let returned = std::mem::take(&mut self.in_flight);
        for (_, m) in returned.into_iter().rev() {
            self.unsent.push_front(m);
        }
    }

    /// A read the driver should perform now: `(after, limit)` for [`crate::Store::read_messages`].
    pub fn poll_fetch(&mut self) -> Option<(Option<u64>, usize)> {
        if self.fetching.is_some() || self.known_last <= self.cursor || self.unsent.len() >= self.fetch_batch {
            return None;
        }
        self.fetching = Some(self.known_last);
        Some(((self.cursor > 0).then_some(self.cursor), self.fetch_batch))
    }

    /// The result of the read asked for by [`OutgoingQueue::poll_fetch`] (`Err` when it failed;
    /// it is asked for again).
    pub fn handle_fetched(&mut self, messages: Vec<QueuedMessage>, limit: usize) {
        let Some(snapshot) = self.fetching.take() else { return };
        let complete = messages.len() < limit;
        for m in messages {
            if m.seq > self.cursor {
                self.cursor = m.seq;
                self.unsent.push_back(m);
            }
        }
        if complete {
            // Everything appended before the read started has been seen.
            self.cursor = self.cursor.max(snapshot);
        }
    }

    /// The read failed; it will be asked for again.
    pub fn handle_fetch_failed(&mut self) {
        self.fetching = None;
    }

    /// The next message to hand to the connection, if connected and the window allows.
    pub fn poll_transmit(&mut self) -> Option<QueuedMessage> {
        if !self.connected || self.in_flight.len() >= self.window {
            return None;
        }
        let m = self.unsent.pop_front()?;
        self.in_flight.insert(m.seq, m.clone());
        Some(m)
    }

    /// The platform acknowledged `seq`. Returns the message's queued size when it was in flight
    /// (first acknowledgement), `None` for unknown or repeated ones.
    pub fn handle_ack(&mut self, seq: u64) -> Option<u64> {
        let m = self.in_flight.remove(&seq)?;
        self.to_remove.push(seq);
        Some(m.message.queued_size())
    }

    /// The platform refused `seq` for good: it leaves the queue like an acknowledged message (it is
    /// removed from the store; retrying cannot succeed). Returns its queued size when it was in
    /// flight, `None` for unknown or repeated ones.
    pub fn handle_refused(&mut self, seq: u64) -> Option<u64> {
        self.handle_ack(seq)
    }

    /// Messages removed from the store without being delivered (dropped to make room): forget
    /// them. Returns how many of them this machine still held (read, in flight or not).
    pub fn forget(&mut self, seqs: &[u64]) -> usize {
        let before = self.unsent.len() + self.in_flight.len();
        let set: std::collections::HashSet<u64> = seqs.iter().copied().collect();
        self.unsent.retain(|m| !set.contains(&m.seq));
        self.in_flight.retain(|seq, _| !set.contains(seq));
        before - self.unsent.len() - self.in_flight.len()
    }

    /// Acknowledged messages to remove from the store.
    pub fn poll_remove(&mut self) -> Option<Vec<u64>> {
        (!self.to_remove.is_empty()).then(|| std::mem::take(&mut self.to_remove))
    }

    /// Acknowledged messages waiting for [`OutgoingQueue::poll_remove`] (a driver may let them
    /// gather, to remove many in one store transaction).
    pub fn removals_pending(&self) -> usize {
        self.to_remove.len()
    }

    /// Removal failed: try again later (the messages stay acknowledged).
    pub fn handle_remove_failed(&mut self, seqs: Vec<u64>) {
        self.to_remove.extend(seqs);
    }

    /// Every message with a sequence number at or below the returned one has been acknowledged
    /// in this run or earlier (0 when none).
    pub fn acked_through(&self) -> u64 {
        let first_in_flight = self.in_flight.keys().next().copied();
        let first_unsent = self.unsent.front().map(|m| m.seq);
        match (first_in_flight, first_unsent) {
            (Some(a), Some(b)) => a.min(b) - 1,
            (Some(a), None) | (None, Some(a)) => a - 1,
            (None, None) => self.cursor,
        }
    }

    /// Number of messages in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether nothing is read, in flight or waiting to be removed.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_empty()
            && self.unsent.is_empty()
            && self.to_remove.is_empty()
            && self.known_last <= self.cursor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MessageKind, OutgoingMessage, StreamTarget};
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use std::sync::Arc;

    fn msg(seq: u64) -> QueuedMessage {
        QueuedMessage {
            seq,
            message: OutgoingMessage {
                target: Arc::new(StreamTarget::default()),
                kind: MessageKind::Data,
                batch_id: None,
                batch_slice_id: None,
                message_id: None,
                chunk_id: None,
                content_encoding: None,
                payload: bytes::Bytes::from(seq.to_le_bytes().to_vec()),
            },
        }
    }

    /// A reference model of the store: what is persisted.
    #[derive(Default)]
    struct ModelStore {
        messages: BTreeMap<u64, QueuedMessage>,
        next: u64,
    }

    impl ModelStore {
        fn read(&self, after: Option<u64>, limit: usize) -> Vec<QueuedMessage> {
            self.messages.range(after.map_or(0, |a| a + 1)..).take(limit).map(|(_, m)| m.clone()).collect()
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(u8),
        Step,
        Ack(usize),
        AckAll,
        Disconnect,
        Connect,
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1u8..20).prop_map(Op::Append),
            4 => Just(Op::Step),
            4 => any::<usize>().prop_map(Op::Ack),
            1 => Just(Op::AckAll),
            1 => Just(Op::Disconnect),
            2 => Just(Op::Connect),
            1 => Just(Op::Restart),
        ]
    }

    struct Harness {
        store: ModelStore,
        queue: OutgoingQueue,
        /// Sequence numbers handed to the connection and not yet acknowledged on it.
        on_wire: Vec<u64>,
        /// Highest seq transmitted on the current connection (ordering check).
        last_sent_on_conn: u64,
        acked: BTreeSet<u64>,
        window: usize,
        batch: usize,
    }

    impl Harness {
        fn drive(&mut self) {
            for _ in 0..1000 {
                let mut progressed = false;
                if let Some((after, limit)) = self.queue.poll_fetch() {
                    let got = self.store.read(after, limit);
                    self.queue.handle_fetched(got, limit);
                    progressed = true;
                }
                while let Some(m) = self.queue.poll_transmit() {
                    assert!(m.seq > self.last_sent_on_conn, "out of order on one connection");
                    assert!(!self.on_wire.contains(&m.seq), "sent twice on one connection");
                    self.last_sent_on_conn = m.seq;
                    self.on_wire.push(m.seq);
                    assert_eq!(m, self.store.messages[&m.seq], "content changed");
                    progressed = true;
                }
                assert!(self.queue.in_flight() <= self.window);
                if let Some(seqs) = self.queue.poll_remove() {
                    for s in seqs {
                        assert!(self.acked.contains(&s), "removing an unacknowledged message");
                        self.store.messages.remove(&s);
                    }
                    progressed = true;
                }
                if !progressed {
                    return;
                }
            }
            panic!("driver did not settle");
        }

        fn check_acked_through(&self) {
            let through = self.queue.acked_through();
            for seq in self.store.messages.keys() {
                if *seq <= through {
                    assert!(self.acked.contains(seq), "acked_through {through} covers unacknowledged {seq}");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn delivers_everything_in_order_exactly_once_per_connection(
            ops in prop::collection::vec(op(), 1..120),
            window in 1usize..8,
            batch in 1usize..6,
        ) {
            let mut h = Harness {
                store: ModelStore { next: 1, ..Default::default() },
                queue: OutgoingQueue::new(None, window, batch),
                on_wire: vec![],
                last_sent_on_conn: 0,
                acked: BTreeSet::new(),
                window,
                batch,
            };
            h.queue.on_connected();
            for op in ops {
                match op {
                    Op::Append(n) => {
                        for _ in 0..n {
                            let seq = h.store.next;
                            h.store.next += 1;
                            h.store.messages.insert(seq, msg(seq));
                            h.queue.on_appended(seq);
                        }
                    }
                    Op::Step => h.drive(),
                    Op::Ack(i) => {
                        if !h.on_wire.is_empty() {
                            let seq = h.on_wire.remove(i % h.on_wire.len());
                            prop_assert!(h.queue.handle_ack(seq).is_some());
                            h.acked.insert(seq);
                            // a repeated acknowledgement is ignored
                            prop_assert!(h.queue.handle_ack(seq).is_none());
                        }
                    }
                    Op::AckAll => {
                        for seq in std::mem::take(&mut h.on_wire) {
                            prop_assert!(h.queue.handle_ack(seq).is_some());
                            h.acked.insert(seq);
                        }
                    }
                    Op::Disconnect => {
                        h.queue.on_disconnected();
                        h.on_wire.clear();
                        h.last_sent_on_conn = 0;
                    }
                    Op::Connect => h.queue.on_connected(),
                    Op::Restart => {
                        // Crash: unremoved messages (even acknowledged ones) are read again.
                        let last = h.store.next - 1;
                        h.queue = OutgoingQueue::new(Some(last), h.window, h.batch);
                        h.queue.on_connected();
                        h.on_wire.clear();
                        h.last_sent_on_conn = 0;
                        for s in h.store.messages.keys() {
                            h.acked.remove(s);
                        }
                    }
                }
                h.check_acked_through();
            }
            // Finally: connect, drain everything.
            h.queue.on_connected();
            for _ in 0..10_000 {
                h.drive();
                if h.on_wire.is_empty() { break; }
                for seq in std::mem::take(&mut h.on_wire) {
                    prop_assert!(h.queue.handle_ack(seq).is_some());
                    h.acked.insert(seq);
                }
            }
            h.drive();
            prop_assert!(h.store.messages.is_empty(), "left in store: {:?}", h.store.messages.keys().collect::<Vec<_>>());
            prop_assert!(h.queue.is_idle());
            prop_assert_eq!(h.queue.acked_through(), h.store.next - 1);
        }
    }

    #[test]
    fn appends_during_a_read_are_not_missed() {
        let mut q = OutgoingQueue::new(None, 10, 10);
        q.on_connected();
        q.on_appended(2);
        let (after, limit) = q.poll_fetch().unwrap();
        assert_eq!(after, None);
        q.on_appended(3); // appended while the read runs, not seen by it
        q.handle_fetched(vec![msg(1), msg(2)], limit);
        assert_eq!(q.poll_fetch(), Some((Some(2), 10)));
        q.handle_fetched(vec![msg(3)], 10);
        let sent: Vec<u64> = std::iter::from_fn(|| q.poll_transmit().map(|m| m.seq)).collect();
        assert_eq!(sent, vec![1, 2, 3]);
        assert_eq!(q.acked_through(), 0);
        assert!(q.handle_ack(2).is_some());
        assert_eq!(q.acked_through(), 0);
        assert!(q.handle_ack(1).is_some());
        assert_eq!(q.acked_through(), 2);
    }
}
