//! Remote access through the emulator: an operator's WebSocket
//! (`/admin/devices/{id}/tunnel?port=N`, admin token) makes a tunnel: the emulator calls the
//! device's `!remote-access` method with a tunnel id and a URI that authorises that tunnel alone
//! (`wss://{hub}:{https}/tunnels/{id}?secret=…`), waits for the device's WebSocket there, and
//! relays the frames between the two until either side closes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::Inner;

/// How long the device may take to answer the `!remote-access` call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the device's WebSocket may take to arrive once it answered.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);

struct Pending {
    secret: String,
    device: oneshot::Sender<WebSocket>,
}

/// Tunnels waiting for their device's WebSocket, by tunnel id.
#[derive(Default)]
pub(crate) struct Tunnels {
    pending: Mutex<HashMap<String, Pending>>,
}

impl Tunnels {
    /// The tunnel `id` if `secret` is its own; it can be claimed once.
    pub(crate) fn claim(&self, id: &str, secret: &str) -> Option<oneshot::Sender<WebSocket>> {
        let mut pending = spotflow_core::lock(&self.pending);
        let matches = pending.get(id).is_some_and(|p| crate::wire::ct_eq(p.secret.as_bytes(), secret.as_bytes()));
        matches.then(|| pending.remove(id)).flatten().map(|p| p.device)
    }

    fn forget(&self, id: &str) {
        spotflow_core::lock(&self.pending).remove(id);
    }
}

async fn refuse(mut operator: WebSocket, reason: String) {
    warn!(%reason, "remote-access tunnel not opened");
    // A close reason is at most 123 bytes.
    let mut reason = reason;
    while reason.len() > 120 {
        reason.pop();
    }
    let _ = operator.send(Message::Close(Some(CloseFrame { code: 4000, reason: reason.into() }))).await;
}

/// The operator's side: makes the tunnel, then relays.
pub(crate) async fn operate(inner: Arc<Inner>, hub_id: String, port: u16, operator: WebSocket) {
    let id = crate::state::random_hex(16);
    let secret = crate::state::random_hex(32);
    let (tx, rx) = oneshot::channel();
    spotflow_core::lock(&inner.tunnels.pending).insert(id.clone(), Pending { secret: secret.clone(), device: tx });
    let uri = format!("wss://{}/tunnels/{id}?secret={secret}", inner.upload_host());
    let payload = json!({"tunnelId": id, "port": port, "tunnelSecureUri": uri}).to_string().into_bytes();
    let answer = inner.invoke_method(&hub_id, "!remote-access", payload, CALL_TIMEOUT).await;
    let device = match answer {
        Ok(a) if a.status == 200 => match tokio::time::timeout(ATTACH_TIMEOUT, rx).await {
            Ok(Ok(device)) => device,
            _ => {
                inner.tunnels.forget(&id);
                return refuse(operator, "the device answered 200 but did not connect".into()).await;
            }
        },
        Ok(a) => {
            inner.tunnels.forget(&id);
            let detail = serde_json::from_slice::<Value>(&a.payload)
                .ok()
                .and_then(|v| v["detail"].as_str().map(String::from))
                .unwrap_or_default();
            return refuse(operator, format!("{} {detail}", a.status)).await;
        }
        Err(e) => {
            inner.tunnels.forget(&id);
            return refuse(operator, format!("{e}")).await;
        }
    };
    info!(device = %hub_id, tunnel = %id, port, "remote-access tunnel open");
    let (to_device, to_operator) = relay(operator, device).await;
    info!(device = %hub_id, tunnel = %id, port, to_device, to_operator, "remote-access tunnel closed");
}

/// Forwards data frames both ways until either side closes, ends or fails; then closes both
/// (the close handshake completed on each). Bytes each way.
async fn relay(operator: WebSocket, device: WebSocket) -> (u64, u64) {
    let (mut op_tx, mut op_rx) = operator.split();
    let (mut dev_tx, mut dev_rx) = device.split();
    let (mut to_device, mut to_operator) = (0u64, 0u64);
    loop {
        // A frame from either side, the other side's sink and that direction's count.
        let (message, sink, count) = tokio::select! {
            m = op_rx.next() => (m, &mut dev_tx, &mut to_device),
            m = dev_rx.next() => (m, &mut op_tx, &mut to_operator),
        };
        match message {
            Some(Ok(m @ (Message::Binary(_) | Message::Text(_)))) => {
                *count += message_len(&m);
                if sink.send(m).await.is_err() {
                    break;
                }
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            _ => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = op_tx.close().await;
        let _ = dev_tx.close().await;
    })
    .await;
    (to_device, to_operator)
}

fn message_len(message: &Message) -> u64 {
    match message {
        Message::Binary(b) => b.len() as u64,
        Message::Text(t) => t.len() as u64,
        _ => 0,
    }
}
