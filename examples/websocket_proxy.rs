//! MQTT over WebSocket (TLS, port 443 on the platform) through an HTTP CONNECT proxy: the way
//! out of networks where only HTTPS through a proxy leaves.
//!
//! `cargo run --example websocket_proxy` starts the emulator and a small CONNECT proxy (with
//! basic authentication) in this process, connects a device with `Protocol::MqttOverWebSocket`
//! and `NetworkOptions::proxy`, and shows that every byte went through the proxy. Without an
//! explicit proxy the SDK uses `HTTPS_PROXY` unless `NO_PROXY` excludes the hub.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use spotflow_device::{Compression, DeviceClient, Protocol};
use spotflow_emulator::Emulator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Credentials the proxy expects (`Proxy-Authorization: Basic base64("device:secret")`).
const PROXY_AUTHORIZATION: &str = "Basic ZGV2aWNlOnNlY3JldA==";

/// Relays CONNECT tunnels to loopback targets; counts the tunnels it opened.
async fn start_proxy(tunnels: Arc<AtomicU64>) -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let tunnels = tunnels.clone();
            tokio::spawn(async move {
                // The request head, byte by byte up to the blank line (bounded).
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if client.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let target = head.strip_prefix("CONNECT ").and_then(|r| r.split_whitespace().next()).unwrap_or("");
                let authorized = head.lines().any(|l| {
                    l.to_ascii_lowercase().starts_with("proxy-authorization:")
                        && l.split_once(':').is_some_and(|(_, v)| v.trim() == PROXY_AUTHORIZATION)
                });
                let loopback = target.starts_with("localhost:") || target.starts_with("127.0.0.1:");
                if !authorized || !loopback {
                    let _ = client.write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n").await;
                    return;
                }
                let Ok(mut upstream) = TcpStream::connect(target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                if client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_err() {
                    return;
                }
                tunnels.fetch_add(1, Ordering::Relaxed);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    Ok(port)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    spotflow_examples::init_logs();
    let emu = Emulator::builder().auto_approve(Some(Duration::ZERO)).start().await?;
    let tunnels = Arc::new(AtomicU64::new(0));
    let proxy_port = start_proxy(tunnels.clone()).await?;
    let wss_port = emu.https_addr().map_or(443, |a| a.port());
    println!("Emulator WSS on port {wss_port}; CONNECT proxy on 127.0.0.1:{proxy_port}.");

    let data = tempfile::tempdir()?;
    let client =
        DeviceClient::builder(Some("behind-a-proxy"), emu.create_provisioning_token(), data.path().join("d.db"))
            .instance(emu.https_url())
            .trust_ca_pem(emu.ca_pem())
            .with_network(|n| {
                n.protocol = Protocol::MqttOverWebSocket;
                n.websocket_port = wss_port;
                n.proxy = Some(format!("http://device:secret@127.0.0.1:{proxy_port}"));
            })
            .display_provisioning_operation_callback(|_| {})
            .start()
            .await?;
    let sender = client.create_stream_sender(None, Some("through-the-proxy"), Compression::Fastest)?;
    for i in 0..1_000 {
        sender.enqueue_message(format!("{{\"sequence\":{i}}}")).await?;
    }
    client.wait_enqueued_messages_sent_timeout(Duration::from_secs(60)).await?;
    client.close().await?;
    let opened = tunnels.load(Ordering::Relaxed);
    if opened == 0 {
        return Err("no tunnel went through the proxy".into());
    }
    println!("1,000 messages delivered over MQTT/WebSocket through {opened} authenticated proxy tunnel(s).");
    Ok(())
}
