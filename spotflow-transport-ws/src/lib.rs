//! MQTT over WebSocket for devices behind firewalls and proxies: the platform's MQTT protocol
//! carried in binary WebSocket frames (`wss://{hub}/$iothub/websocket`, subprotocol `mqtt`) with
//! tokio-tungstenite, through an HTTP CONNECT proxy when configured (option or `HTTPS_PROXY` /
//! `NO_PROXY`). The platform mapping (topics, property bag, twin correlation, uploads) is shared
//! with `spotflow-transport-mqtt`; reconnects, backoff and credential renewal are the SDK's.
//!
//! `spotflow-device` builds it (feature `ws`) when `NetworkOptions::protocol` is
//! `Protocol::MqttOverWebSocket`; build it yourself to choose the proxy, and inject it with the
//! client builder's `.transport(..)`:
//!
//! ```no_run
//! use spotflow_transport_mqtt::TlsOptions;
//! use spotflow_transport_ws::{ProxyMode, WsTransport, WsTransportOptions};
//!
//! # fn main() -> spotflow_core::Result<()> {
//! let tls = TlsOptions::platform().client_config()?; // the operating system's root certificates
//! let mut options = WsTransportOptions::tls(tls);    // wss://{hub}:443/$iothub/websocket
//! options.proxy = ProxyMode::FromEnvironment;        // HTTPS_PROXY unless NO_PROXY excludes the hub (default)
//! let transport = WsTransport::new(options);
//! # let _ = transport;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod proxy;
pub mod remote_access;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use spotflow_core::{Connection, ConnectionCredentials, Error, Result, Transport};
pub use spotflow_transport_mqtt::session::ByteStream;
pub use spotflow_transport_mqtt::session::SessionOptions;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info};

pub use proxy::{excluded as no_proxy_excludes, Proxy};

/// Where the proxy comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ProxyMode {
    /// `HTTPS_PROXY` / `https_proxy`, unless `NO_PROXY` / `no_proxy` excludes the hub (default).
    #[default]
    FromEnvironment,
    /// Always this proxy.
    Explicit(Proxy),
    /// Never a proxy.
    Direct,
}

/// Tunables of the WebSocket transport.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WsTransportOptions {
    /// Port of the WebSocket endpoint (443 on the platform).
    pub port: u16,
    /// Path of the endpoint.
    pub path: String,
    /// Proxy selection.
    pub proxy: ProxyMode,
    /// TLS (`None` is plain `ws://`), keep-alive, largest incoming MQTT packet (and WebSocket
    /// message), setup bound and upload URL (shared with the MQTT transport).
    pub session: SessionOptions,
}

impl WsTransportOptions {
    /// `wss://` on port 443 with `tls`.
    pub fn tls(tls: Arc<rustls::ClientConfig>) -> Self {
        WsTransportOptions { session: SessionOptions::new(Some(tls)), ..WsTransportOptions::plain(443) }
    }

    /// Plain `ws://` to `port`: no encryption, no server authentication. Local development only.
    pub fn plain(port: u16) -> Self {
        WsTransportOptions {
            port,
            path: "/$iothub/websocket".into(),
            proxy: ProxyMode::default(),
            session: SessionOptions::new(None),
        }
    }
}

/// The WebSocket transport. Each [`Transport::connect`] opens one connection.
#[derive(Debug, Clone)]
pub struct WsTransport {
    options: WsTransportOptions,
}

impl WsTransport {
    /// A transport with these options.
    pub fn new(options: WsTransportOptions) -> Self {
        WsTransport { options }
    }
}

type Ws = WebSocketStream<Box<dyn ByteStream>>;

/// A WebSocket as a byte stream: binary frames in, bytes out (packets may span frames, frames
/// may hold several); each write is one binary frame.
struct WsBytes {
    ws: Ws,
    pending: Bytes,
}

impl AsyncRead for WsBytes {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match std::task::ready!(this.ws.poll_next_unpin(cx)) {
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the server sent a text frame on the MQTT WebSocket",
                    )))
                }
                // End of stream: the session reports the closed connection.
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(std::io::Error::other(e))),
            }
        }
    }
}

impl AsyncWrite for WsBytes {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.ws.poll_ready_unpin(cx)).map_err(std::io::Error::other)?;
        this.ws.start_send_unpin(Message::Binary(Bytes::copy_from_slice(data))).map_err(std::io::Error::other)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().ws.poll_flush_unpin(cx).map_err(std::io::Error::other)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().ws.poll_close_unpin(cx).map_err(std::io::Error::other)
    }
}

impl WsTransport {
    async fn open(&self, host: &str) -> Result<Ws> {
        let o = &self.options;
        let proxy = match &o.proxy {
            ProxyMode::Direct => None,
            ProxyMode::Explicit(p) => Some(p.clone()),
            ProxyMode::FromEnvironment => Proxy::from_env(host)?,
        };
        let tcp = match &proxy {
            Some(p) => proxy::tunnel(p, host, o.port, o.session.connect_timeout).await?,
            None => TcpStream::connect((host, o.port))
                .await
                .map_err(|e| Error::transport_with(format!("cannot connect to {host}:{}", o.port), e))?,
        };
        let stream = o.session.secure(tcp, host).await?;
        let ws = self.handshake(stream, host).await?;
        debug!(host, port = o.port, proxy = proxy.is_some(), "WebSocket open");
        Ok(ws)
    }

    /// The WebSocket handshake (subprotocol `mqtt`) on a stream already connected (and secured).
    async fn handshake(&self, stream: Box<dyn ByteStream>, host: &str) -> Result<Ws> {
        let o = &self.options;
        let scheme = if o.session.tls.is_some() { "wss" } else { "ws" };
        let mut request = format!("{scheme}://{host}:{}{}", o.port, o.path)
            .into_client_request()
            .map_err(|e| Error::invalid("WebSocket URL", e))?;
        request.headers_mut().insert("sec-websocket-protocol", "mqtt".parse().map_err(|_| Error::transport("header"))?);
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(o.session.max_incoming_packet + 1024);
        config.max_frame_size = Some(o.session.max_incoming_packet + 1024);
        let (ws, response) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(|e| Error::transport_with("WebSocket handshake failed", e))?;
        let protocol = response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok());
        if protocol != Some("mqtt") {
            return Err(Error::link(
                spotflow_core::LinkFailure::Protocol,
                format!("the server did not accept the mqtt subprotocol ({protocol:?})"),
            ));
        }
        Ok(ws)
    }

    /// Opens the MQTT session over a stream the caller connected to the hub (its own tunnel,
    /// a proxy of another kind, an in-process pipe in tests): the WebSocket handshake (with
    /// `options.path`, the host from `credentials`, and `wss` when the options carry TLS, which
    /// the caller has then already applied), then MQTT as [`Transport::connect`] does, bounded by
    /// the connect timeout.
    pub async fn connect_over<S: ByteStream>(
        &self,
        stream: S,
        credentials: &ConnectionCredentials,
        session: &spotflow_core::SessionInfo,
    ) -> Result<Box<dyn Connection>> {
        let ws = async {
            let ws = self.handshake(Box::new(stream), &credentials.hub_host).await?;
            Ok(Box::new(WsBytes { ws, pending: Bytes::new() }) as Box<dyn ByteStream>)
        };
        self.options.session.connect("MQTT over WebSocket", credentials, session, ws).await
    }
}

#[async_trait]
impl Transport for WsTransport {
    async fn connect(
        &self,
        creds: &ConnectionCredentials,
        session: &spotflow_core::SessionInfo,
    ) -> Result<Box<dyn Connection>> {
        let o = &self.options;
        let stream = async {
            let ws = self.open(&creds.hub_host).await?;
            Ok(Box::new(WsBytes { ws, pending: Bytes::new() }) as Box<dyn ByteStream>)
        };
        let connection = o.session.connect("MQTT over WebSocket", creds, session, stream).await?;
        info!(hub = ?creds.hub_host, port = o.port, "MQTT over WebSocket connected");
        Ok(connection)
    }
}
