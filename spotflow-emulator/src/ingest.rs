//! Messages into the store: each stored message counted (and announced to waiters), each
//! duplicate counted, then the caller's acknowledgement.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::db::{self, StoredMessage};

pub(crate) struct Ingest {
    db: db::Db,
    stored: watch::Sender<u64>,
    duplicates: AtomicU64,
}

impl Ingest {
    pub fn new(db: db::Db) -> Ingest {
        Ingest { db, stored: watch::channel(0).0, duplicates: AtomicU64::new(0) }
    }

    /// Stores `message`; `ack` is called with the outcome once it is known.
    pub fn store(self: &Arc<Self>, message: StoredMessage, ack: Option<db::AckFn>) {
        let ingest = self.clone();
        self.db.insert_message(
            message,
            Some(Box::new(move |outcome| {
                match outcome {
                    db::Stored::Inserted(_) => ingest.stored.send_modify(|n| *n += 1),
                    db::Stored::Duplicate => {
                        ingest.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    db::Stored::Failed => {}
                }
                if let Some(ack) = ack {
                    ack(outcome);
                }
            })),
        );
    }

    /// Messages stored since the start, as it changes.
    pub fn stored(&self) -> watch::Receiver<u64> {
        self.stored.subscribe()
    }

    /// Duplicates recognised (and dropped) since the start.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }
}
