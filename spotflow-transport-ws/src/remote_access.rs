//! Remote access (not a transport of telemetry): the device's side of a remote-access tunnel: a TCP connection to a local port and a
//! WebSocket to the platform's tunnel URI, relayed both ways.
//!
//! As the official SDK does it: the device connects to `127.0.0.1:{port}` first (5 s), then
//! opens the WebSocket to the tunnel URI (20 s, the `traceparent` header when given); bytes from
//! the local port go to the platform as binary frames of at most 1,024 bytes; binary and text
//! frames from the platform are written to the local port; a close frame ends the relay, and the
//! local port's end of stream sends one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::{ByteStream, SessionOptions};

/// How long the local port may take to accept.
pub const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the tunnel's WebSocket may take to open (TCP, TLS and the handshake).
pub const REMOTE_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest binary frame sent to the platform (the official SDK's).
pub const FRAME_BYTES: usize = 1024;

/// The TLS configuration the tunnel's WebSocket uses (the SDK's trust).
pub type TlsConfig = Arc<rustls::ClientConfig>;

/// The tunnel's WebSocket to the platform.
pub type TunnelSocket = WebSocketStream<Box<dyn ByteStream>>;

/// Connects to `127.0.0.1:{port}`; the error's text is the platform's reason.
pub async fn connect_local(port: u16) -> std::result::Result<TcpStream, String> {
    match tokio::time::timeout(LOCAL_CONNECT_TIMEOUT, TcpStream::connect(("127.0.0.1", port))).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            Ok(tcp)
        }
        Ok(Err(e)) => Err(format!("Failed to connect to target port: {e}")),
        Err(_) => Err(format!("Failed to connect to target port: no answer in {LOCAL_CONNECT_TIMEOUT:?}")),
    }
}

/// Opens the WebSocket to `uri` (`wss://`, or `ws://` to a loopback host for local development)
/// with `tls` (the SDK's trust), sending `traceparent` when given.
pub async fn connect_remote(
    uri: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    traceparent: Option<&str>,
) -> std::result::Result<TunnelSocket, String> {
    let open = async {
        let mut request = uri.into_client_request().map_err(|e| format!("invalid tunnel URI: {e}"))?;
        let secure = match request.uri().scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            other => return Err(format!("the tunnel URI's scheme {other:?} is not wss")),
        };
        let host = request.uri().host().unwrap_or_default().trim_matches(['[', ']']).to_owned();
        let port = request.uri().port_u16().unwrap_or(if secure { 443 } else { 80 });
        if !secure {
            spotflow_core::require_loopback_for_plain(&host, "the remote-access tunnel").map_err(|e| e.to_string())?;
        }
        if let Some(traceparent) = traceparent {
            let value = traceparent.parse().map_err(|_| "invalid traceparent header".to_owned())?;
            request.headers_mut().insert("traceparent", value);
        }
        let tcp = TcpStream::connect((host.as_str(), port)).await.map_err(|e| e.to_string())?;
        let options = SessionOptions::new(if secure { tls } else { None });
        let stream = options.secure(tcp, &host).await.map_err(|e| e.to_string())?;
        let (ws, _) = tokio_tungstenite::client_async(request, stream).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(ws)
    };
    match tokio::time::timeout(REMOTE_CONNECT_TIMEOUT, open).await {
        Ok(Ok(ws)) => Ok(ws),
        Ok(Err(e)) => Err(format!("Failed to connect to remote server: {e}")),
        Err(_) => Err(format!("Failed to connect to remote server: no answer in {REMOTE_CONNECT_TIMEOUT:?}")),
    }
}

/// What a relay carried, and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Relayed {
    /// Bytes from the local port to the platform.
    pub to_platform: u64,
    /// Bytes from the platform to the local port.
    pub to_device: u64,
    /// Which side ended it, and why.
    pub ended_by: String,
}

/// Relays between the local port and the platform until either side ends; closes both. Each
/// direction waits for the other side to take what it was given (back-pressure: TCP's window on
/// one side, the WebSocket's sink on the other).
pub async fn relay(tcp: TcpStream, ws: TunnelSocket) -> Relayed {
    let (mut tcp_read, mut tcp_write) = tcp.into_split();
    let (mut ws_write, mut ws_read) = ws.split();
    // Counted outside the two directions: whichever ends first, both counts are kept.
    let (sent, received) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut buf = vec![0u8; FRAME_BYTES];
    let up = async {
        loop {
            match tcp_read.read(&mut buf).await {
                Ok(0) => {
                    let _ = ws_write.send(Message::Close(None)).await;
                    return "the local port closed".to_owned();
                }
                Ok(n) => {
                    if let Err(e) = ws_write.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await {
                        return format!("the platform's side failed: {e}");
                    }
                    sent.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    let _ = ws_write.send(Message::Close(None)).await;
                    return format!("the local port failed: {e}");
                }
            }
        }
    };
    let down = async {
        loop {
            let data = match ws_read.next().await {
                Some(Ok(Message::Binary(data))) => data,
                Some(Ok(Message::Text(text))) => Bytes::from(text),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(_))) | None => {
                    let _ = tcp_write.shutdown().await;
                    return "the platform closed the tunnel".to_owned();
                }
                Some(Err(e)) => {
                    let _ = tcp_write.shutdown().await;
                    return format!("the platform's side failed: {e}");
                }
            };
            if let Err(e) = tcp_write.write_all(&data).await {
                return format!("the local port failed: {e}");
            }
            received.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
    };
    // The first side to end ends the tunnel: the other is closed with it.
    tokio::pin!(up, down);
    let ended_by = tokio::select! {
        why = &mut up => {
            // What the platform sent before its close still reaches the local port, briefly.
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut down).await;
            why
        }
        why = &mut down => why,
    };
    Relayed { to_platform: sent.load(Ordering::Relaxed), to_device: received.load(Ordering::Relaxed), ended_by }
}
