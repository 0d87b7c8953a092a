//! The operator's end of a remote-access tunnel, as a byte stream: what the `tunnel` command
//! relays each local connection to, and what tests read and write.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::WebSocketStream;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A tunnel to a port of a device: bytes written reach the device's local port (flush to be
/// sure they left), bytes read come from it. Shutting the writing side down closes the tunnel. A read fails with the reason when
/// the device refused the tunnel or could not open it (e.g. `500 Failed to connect to target
/// port: …`).
pub struct TunnelStream {
    ws: WebSocketStream<Box<dyn Io>>,
    pending: Bytes,
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream").finish_non_exhaustive()
    }
}

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    /// The emulator's address is not `http://` or `https://`.
    #[error("{0} is not an http(s) URL")]
    NotHttpUrl(String),
    /// The admin token cannot be sent in a header.
    #[error("invalid admin token")]
    InvalidAdminToken,
    /// The host is not a name or address TLS can verify.
    #[error("{0}")]
    ServerName(#[from] rustls::pki_types::InvalidDnsNameError),
    /// The TCP connection or the TLS handshake failed.
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The WebSocket request or handshake failed (e.g. refused by the emulator: unknown or
    /// unconnected device, wrong token).
    #[error("{0}")]
    WebSocket(#[from] Error),
}

/// Opens a tunnel to `port` of the device `hub_id` through the emulator at `base_url`
/// (`https://host:port`, trusted with `tls`, or `http://` on loopback).
pub async fn connect(
    base_url: &str,
    admin_token: &str,
    tls: rustls::ClientConfig,
    hub_id: &str,
    port: u16,
) -> Result<TunnelStream, TunnelError> {
    let ws_url = if let Some(rest) = base_url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base_url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        return Err(TunnelError::NotHttpUrl(base_url.to_owned()));
    };
    let url = format!("{}/admin/devices/{hub_id}/tunnel?port={port}", ws_url.trim_end_matches('/'));
    let mut request = url.as_str().into_client_request()?;
    let bearer = format!("Bearer {admin_token}").parse().map_err(|_| TunnelError::InvalidAdminToken)?;
    request.headers_mut().insert("authorization", bearer);
    let host = request.uri().host().unwrap_or_default().to_owned();
    let secure = request.uri().scheme_str() == Some("wss");
    let tcp_port = request.uri().port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), tcp_port)).await.map_err(TunnelError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = if secure {
        let name = rustls::pki_types::ServerName::try_from(host.clone())?;
        let tls =
            tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp).await.map_err(TunnelError::Connect)?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let (ws, _) = tokio_tungstenite::client_async(request, stream).await?;
    Ok(TunnelStream { ws, pending: Bytes::new() })
}

impl AsyncRead for TunnelStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Text(text))) => this.pending = Bytes::from(text.as_str().as_bytes().to_vec()),
                Some(Ok(Message::Close(Some(frame)))) if frame.code == CloseCode::Library(4000) => {
                    let reason = format!("the tunnel was refused: {}", frame.reason);
                    return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, reason)));
                }
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Ok(_)) => {}
                // After a close this side started: the end of the stream.
                Some(Err(Error::ConnectionClosed | Error::AlreadyClosed)) => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(std::io::Error::other(e))),
            }
        }
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(std::io::Error::other)?;
        let n = data.len().min(64 * 1024);
        Pin::new(&mut this.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(&data[..n])))
            .map_err(std::io::Error::other)?;
        // Sent at once when the socket takes it; otherwise by the next write or the flush.
        if let Poll::Ready(Err(e)) = Pin::new(&mut this.ws).poll_flush(cx) {
            return Poll::Ready(Err(std::io::Error::other(e)));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().ws).poll_flush(cx).map_err(std::io::Error::other)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().ws).poll_close(cx).map_err(std::io::Error::other)
    }
}
