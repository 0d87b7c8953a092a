//! Remote access: the platform asks the device (direct method `!remote-access`) to open a
//! tunnel from a local TCP port (SSH, a local web UI) to a WebSocket of the platform, so that an
//! operator reaches the port without any inbound connection to the device's network. Opt-in and
//! limited to the ports the application allows.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use spotflow_transport_ws::remote_access as tunnel;
use tracing::{info, warn, Instrument};

/// Which local ports the platform may open tunnels to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteAccessPorts {
    /// Any port (the official SDK's `with_remote_access_allowed_for_all_ports`).
    All,
    /// Only these.
    Only(BTreeSet<u16>),
}

impl RemoteAccessPorts {
    fn allows(&self, port: u16) -> bool {
        match self {
            RemoteAccessPorts::All => true,
            RemoteAccessPorts::Only(ports) => ports.contains(&port),
        }
    }
}

/// The device's remote access: the allowed ports, the trust for the tunnels' TLS, the tunnels
/// running.
pub(crate) struct RemoteAccess {
    ports: RemoteAccessPorts,
    tls: tunnel::TlsConfig,
    running: Mutex<HashSet<String>>,
}

/// The name of the platform's direct method.
pub(crate) const METHOD: &str = "!remote-access";

fn answer(status: u16, detail: &str) -> (u16, Vec<u8>) {
    (status, json!({ "detail": detail }).to_string().into_bytes())
}

impl RemoteAccess {
    pub(crate) fn new(ports: RemoteAccessPorts, tls: tunnel::TlsConfig) -> Self {
        RemoteAccess { ports, tls, running: Mutex::default() }
    }

    fn finish(&self, tunnel_id: &str) {
        spotflow_core::lock(&self.running).remove(tunnel_id);
    }

    /// Handles a `!remote-access` call: answers once the local port and the platform's
    /// WebSocket are both connected (`200`, empty) or one of them failed, and relays in the
    /// background until either side closes.
    pub(crate) async fn open(self: Arc<Self>, payload: Vec<u8>) -> (u16, Vec<u8>) {
        let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(&payload) else {
            return answer(400, "Invalid payload");
        };
        let tunnel_id = request.get("tunnelId").and_then(Value::as_str).map(str::to_owned);
        let port = request.get("port").and_then(Value::as_u64).and_then(|p| u16::try_from(p).ok());
        let uri = request.get("tunnelSecureUri").and_then(Value::as_str).map(str::to_owned);
        let traceparent = request.get("traceparentHeader").and_then(Value::as_str).map(str::to_owned);
        let (Some(tunnel_id), Some(port), Some(uri)) = (tunnel_id, port, uri) else {
            return answer(400, "Invalid payload");
        };
        if !(uri.starts_with("wss://") || uri.starts_with("ws://")) {
            return answer(400, "Invalid tunnel secure URI");
        }
        if !self.ports.allows(port) {
            warn!(tunnel = ?tunnel_id, port, "remote access to a port that is not allowed refused");
            return answer(403, &format!("Remote access to port {port} is not allowed"));
        }
        if !spotflow_core::lock(&self.running).insert(tunnel_id.clone()) {
            return answer(409, "Previous attempt still active.");
        }
        let tcp = match tunnel::connect_local(port).await {
            Ok(tcp) => tcp,
            Err(reason) => {
                self.finish(&tunnel_id);
                warn!(tunnel = ?tunnel_id, port, ?reason, "remote-access tunnel not opened");
                return answer(500, &reason);
            }
        };
        let ws = match tunnel::connect_remote(&uri, Some(self.tls.clone()), traceparent.as_deref()).await {
            Ok(ws) => ws,
            Err(reason) => {
                self.finish(&tunnel_id);
                warn!(tunnel = ?tunnel_id, port, ?reason, "remote-access tunnel not opened");
                return answer(500, &reason);
            }
        };
        // The URI carries the tunnel's authorisation: only its host is logged.
        let host = uri.split("://").nth(1).and_then(|r| r.split(['/', '?']).next()).unwrap_or("").to_owned();
        info!(tunnel = ?tunnel_id, port, ?host, "remote-access tunnel open");
        let this = self.clone();
        tokio::spawn(
            async move {
                let relayed = tunnel::relay(tcp, ws).await;
                this.finish(&tunnel_id);
                info!(
                    tunnel = ?tunnel_id,
                    port,
                    to_platform = relayed.to_platform,
                    to_device = relayed.to_device,
                    ended = ?relayed.ended_by,
                    "remote-access tunnel closed"
                );
            }
            .in_current_span(),
        );
        (200, Vec::new())
    }
}
