//! Cloud-to-device (C2D) messages: a durable inbox.
//!
//! Each message the platform sends on `devices/{id}/messages/devicebound/…` is kept in the
//! device's store before it is acknowledged to the broker, then handed to the application by
//! [`crate::DeviceClient::c2d_messages`]. A message leaves the inbox only when the application
//! calls [`C2dMessage::complete`]: one handed out but not completed when the process stops (a
//! crash, `kill -9`, a power cut) is handed out again after the next start. A message the broker
//! sends again (its acknowledgement was lost in a crash) is recognised by its `$.mid` and not
//! handed out twice.
//!
//! The inbox has a byte budget ([`crate::ClientOptions::c2d_inbox_budget_bytes`]): when a message
//! would exceed it, the client stops acknowledging, and the broker keeps that message and the
//! ones after it until the application completes some.
//!
//! ```no_run
//! # async fn run(client: spotflow_device::DeviceClient) -> spotflow_device::Result<()> {
//! let mut inbox = client.c2d_messages();
//! loop {
//!     let message = inbox.next().await?;
//!     println!("{:?}: {}", message.property("command"), String::from_utf8_lossy(message.payload()));
//!     message.complete().await?; // removed from the inbox: never handed out again
//! }
//! # }
//! ```

use std::sync::atomic::Ordering;
use std::time::Duration;

use spotflow_core::{CloudMessage, Error, Result};
use tokio::sync::watch;

use crate::worker::Command;
use crate::DeviceClient;

/// The messages of the inbox, oldest first: those left from before (not completed) and those
/// that arrive. Each view hands out each message once; another view (or the next start) hands
/// out the ones not completed again.
#[derive(Debug)]
pub struct C2dMessages {
    client: DeviceClient,
    after: Option<u64>,
    changed: watch::Receiver<u64>,
}

impl C2dMessages {
    pub(crate) fn new(client: DeviceClient) -> Self {
        let changed = client.inner.shared.inbox_changed.subscribe();
        C2dMessages { client, after: None, changed }
    }

    /// The next message, waiting for one; [`Error::Closed`] once the client is closed.
    pub async fn next(&mut self) -> Result<C2dMessage> {
        loop {
            self.changed.borrow_and_update();
            if let Some(m) = self.try_next().await? {
                return Ok(m);
            }
            if self.client.inner.closed.load(Ordering::Acquire) {
                return Err(Error::Closed);
            }
            tokio::select! {
                changed = self.changed.changed() => changed.map_err(|_| Error::Closed)?,
                () = self.client.inner.commands.closed() => return Err(Error::Closed),
            }
        }
    }

    /// The next message if one is in the inbox now.
    pub async fn try_next(&mut self) -> Result<Option<C2dMessage>> {
        let found = self.client.inner.store.read_cloud_messages(self.after, 1).await?;
        Ok(found.into_iter().next().map(|m| {
            self.after = Some(m.id);
            C2dMessage { id: m.id, message: m.message, client: self.client.clone() }
        }))
    }

    /// [`C2dMessages::next`] waiting at most `timeout`: `Ok(None)` when none came in time.
    pub async fn next_timeout(&mut self, timeout: Duration) -> Result<Option<C2dMessage>> {
        match tokio::time::timeout(timeout, self.next()).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }
}

/// A message from the inbox. It stays in the inbox (and is handed out again after a restart)
/// until [`C2dMessage::complete`].
#[derive(Debug, Clone)]
pub struct C2dMessage {
    id: u64,
    message: CloudMessage,
    client: DeviceClient,
}

impl C2dMessage {
    /// The inbox's id of the message (grows with arrival).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.message.payload
    }

    /// The properties, as the platform sent them (`$.mid` is its message id).
    pub fn properties(&self) -> &[(String, String)] {
        &self.message.properties
    }

    /// The value of property `key`.
    pub fn property(&self, key: &str) -> Option<&str> {
        self.message.property(key)
    }

    /// The platform's id of the message (`$.mid`).
    pub fn message_id(&self) -> Option<&str> {
        self.message.message_id()
    }

    /// Removes the message from the inbox: it is never handed out again (a redelivery by the
    /// broker is recognised by its `$.mid`). Completing it twice does nothing the second time.
    pub async fn complete(&self) -> Result<()> {
        let inner = &self.client.inner;
        if !inner.store.remove_cloud_message(self.id).await? {
            return Ok(());
        }
        let size = self.message.size();
        let _ = inner
            .shared
            .inbox_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| Some(b.saturating_sub(size)));
        // Room again: the worker stores what it held back (a full command channel means it is
        // busy and will look at the inbox anyway).
        let _ = inner.commands.try_send(Command::InboxSpace);
        Ok(())
    }
}
