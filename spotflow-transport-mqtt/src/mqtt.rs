//! `MqttTransport`: the platform's data plane over MQTT 3.1.1 on TCP, TLS by default; the MQTT
//! session is the one shared with the WebSocket transport (`session`).

use std::sync::Arc;

use async_trait::async_trait;
use spotflow_core::{Connection, ConnectionCredentials, Error, Result, SessionInfo, Transport};
use tokio::net::TcpStream;
use tracing::info;

use crate::session::SessionOptions;

/// Tunables of the MQTT transport.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MqttTransportOptions {
    /// Broker port (the platform uses 8883).
    pub port: u16,
    /// Publishes the SDK keeps in flight at once (its window, `ClientOptions::max_in_flight`);
    /// informational: the session takes as many as it is given.
    pub max_in_flight: u16,
    /// TLS, keep-alive, packet size, setup bound and upload URL (shared with the WebSocket
    /// transport).
    pub session: SessionOptions,
}

impl MqttTransportOptions {
    fn with(port: u16, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        MqttTransportOptions { port, max_in_flight: 1000, session: SessionOptions::new(tls) }
    }

    /// TLS to port 8883 with `tls`.
    pub fn tls(tls: Arc<rustls::ClientConfig>) -> Self {
        MqttTransportOptions::with(8883, Some(tls))
    }

    /// Plain TCP to `port`: no encryption, no server authentication. Local development only.
    pub fn plain_tcp(port: u16) -> Self {
        MqttTransportOptions::with(port, None)
    }
}

/// The MQTT transport. Each [`Transport::connect`] opens one connection; the SDK reconnects.
#[derive(Debug, Clone)]
pub struct MqttTransport {
    options: MqttTransportOptions,
}

impl MqttTransport {
    /// A transport with these options.
    pub fn new(options: MqttTransportOptions) -> Result<Self> {
        Ok(MqttTransport { options })
    }

    /// The options in use.
    pub fn options(&self) -> &MqttTransportOptions {
        &self.options
    }
}

#[async_trait]
impl Transport for MqttTransport {
    async fn connect(&self, creds: &ConnectionCredentials, session: &SessionInfo) -> Result<Box<dyn Connection>> {
        let (o, host) = (&self.options, creds.hub_host.as_str());
        let stream = async {
            let tcp = TcpStream::connect((host, o.port))
                .await
                .map_err(|e| Error::transport_with(format!("MQTT connection to {host}:{} failed", o.port), e))?;
            o.session.secure(tcp, host).await
        };
        let connection = o.session.connect("MQTT", creds, session, stream).await?;
        info!(hub = ?host, port = o.port, tls = o.session.tls.is_some(), "MQTT connected");
        Ok(connection)
    }
}
