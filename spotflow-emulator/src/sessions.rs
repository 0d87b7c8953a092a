//! The live MQTT sessions, by hub device id: where a packet for a connected device goes.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use tokio::sync::mpsc;

use crate::mqtt::Outbound;

#[derive(Default)]
pub(crate) struct Sessions {
    by_device: Mutex<HashMap<String, mpsc::UnboundedSender<Outbound>>>,
}

impl Sessions {
    /// Registers a device's new session; an older one of the same device is closed.
    pub fn open(&self, hub_id: &str, tx: mpsc::UnboundedSender<Outbound>) {
        if let Some(old) = spotflow_core::lock(&self.by_device).insert(hub_id.to_owned(), tx) {
            let _ = old.send(Outbound::Kick);
        }
    }

    /// Forgets the session `tx` of the device (not a newer one that replaced it); returns
    /// whether it was the device's session.
    pub fn close(&self, hub_id: &str, tx: &mpsc::UnboundedSender<Outbound>) -> bool {
        let mut sessions = spotflow_core::lock(&self.by_device);
        let current = sessions.get(hub_id).is_some_and(|t| t.same_channel(tx));
        if current {
            sessions.remove(hub_id);
        }
        current
    }

    /// Hands `outbound` to the device's session; false when it has none.
    pub fn send(&self, hub_id: &str, outbound: Outbound) -> bool {
        spotflow_core::lock(&self.by_device).get(hub_id).is_some_and(|tx| tx.send(outbound).is_ok())
    }

    /// The devices connected now.
    pub fn connected(&self) -> HashSet<String> {
        spotflow_core::lock(&self.by_device).keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        spotflow_core::lock(&self.by_device).len()
    }

    /// Closes every session.
    pub fn kick_all(&self) {
        let sessions: Vec<_> = spotflow_core::lock(&self.by_device).values().cloned().collect();
        for s in sessions {
            let _ = s.send(Outbound::Kick);
        }
    }
}
