//! MQTT over WebSocket through an HTTP CONNECT proxy started by the test on 127.0.0.1: traffic
//! really goes through it, credentials reach it, and a proxy that refuses or dies mid-stream loses
//! no message.
#![cfg(feature = "ws")]

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spotflow_core::{MemoryStore, Store};
use spotflow_device::{Compression, DeviceClient, Message, Protocol};
use spotflow_emulator::{Emulator, MessageQuery};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(30);
const FORWARD: u8 = 0;
const REFUSE: u8 = 1;

/// A small CONNECT proxy: records tunnels and relayed bytes; can refuse, and can cut every tunnel.
struct TestProxy {
    port: u16,
    mode: Arc<AtomicU8>,
    tunnels: Arc<Mutex<Vec<String>>>,
    auth_headers: Arc<Mutex<Vec<String>>>,
    relayed: Arc<AtomicU64>,
    cut: watch::Sender<u64>,
    refusals: Arc<watch::Sender<u64>>,
}

impl TestProxy {
    async fn start() -> TestProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = TestProxy {
            port,
            mode: Arc::default(),
            tunnels: Arc::default(),
            auth_headers: Arc::default(),
            relayed: Arc::default(),
            cut: watch::channel(0).0,
            refusals: Arc::new(watch::channel(0).0),
        };
        let (mode, tunnels, auth, relayed, cut, refusals) = (
            proxy.mode.clone(),
            proxy.tunnels.clone(),
            proxy.auth_headers.clone(),
            proxy.relayed.clone(),
            proxy.cut.clone(),
            proxy.refusals.clone(),
        );
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (mode, tunnels, auth, relayed, mut cut, refusals) =
                    (mode.clone(), tunnels.clone(), auth.clone(), relayed.clone(), cut.subscribe(), refusals.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if client.read(&mut b).await.unwrap_or(0) == 0 || head.len() > 8192 {
                            return;
                        }
                        head.push(b[0]);
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                    if let Some(line) =
                        head.lines().find(|l| l.to_ascii_lowercase().starts_with("proxy-authorization:"))
                    {
                        auth.lock().unwrap().push(line.to_owned());
                    }
                    if mode.load(Ordering::SeqCst) == REFUSE {
                        let _ = client.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n").await;
                        refusals.send_modify(|n| *n += 1);
                        return;
                    }
                    let Ok(mut upstream) = TcpStream::connect(&target).await else {
                        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        return;
                    };
                    tunnels.lock().unwrap().push(target);
                    let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
                    let (mut cr, mut cw) = client.split();
                    let (mut ur, mut uw) = upstream.split();
                    let up = relay(&mut cr, &mut uw, &relayed);
                    let down = relay(&mut ur, &mut cw, &relayed);
                    // The tunnel dies when the test cuts it (a proxy dying mid-stream).
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        proxy
    }
}

async fn client(emu: &Emulator, proxy_url: String, store: Arc<dyn Store>) -> DeviceClient {
    let https = emu.https_addr().unwrap().port();
    DeviceClient::builder(Some("behind-proxy"), emu.create_provisioning_token(), "device.db")
        .instance(emu.https_url())
        .trust_ca_pem(emu.ca_pem())
        .with_network(move |n| {
            n.platform_roots = false;
            n.protocol = Protocol::MqttOverWebSocket;
            n.websocket_port = https;
            n.proxy = Some(proxy_url);
        })
        .store(store)
        .display_provisioning_operation_callback(|_| {})
        .with_options(|o| {
            o.retry_initial = Duration::from_millis(20);
            o.retry_max = Duration::from_millis(300);
        })
        .start()
        .await
        .expect("start")
}

async fn ids(emu: &Emulator) -> std::collections::BTreeSet<String> {
    emu.messages(MessageQuery { limit: Some(100_000), ..Default::default() })
        .await
        .into_iter()
        .filter_map(|m| m.message_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_goes_through_the_proxy_with_its_credentials() {
    let emu = Emulator::builder().auto_approve(Some(Duration::ZERO)).start().await.unwrap();
    let proxy = TestProxy::start().await;
    let c = client(&emu, format!("http://device:s3cret@127.0.0.1:{}", proxy.port), Arc::new(MemoryStore::new())).await;
    let sender = c.create_stream_sender(None, Some("proxied"), Compression::Uncompressed).unwrap();
    for i in 0..500 {
        sender.enqueue_message(Message::new(format!("{i}")).message_id(format!("m{i}"))).await.unwrap();
    }
    c.wait_enqueued_messages_sent_timeout(WAIT).await.unwrap();
    assert_eq!(ids(&emu).await.len(), 500);
    let tunnels = proxy.tunnels.lock().unwrap().clone();
    assert!(tunnels.iter().all(|t| *t == format!("localhost:{}", emu.https_addr().unwrap().port())), "{tunnels:?}");
    assert!(!tunnels.is_empty(), "the MQTT connection went through the proxy");
    assert!(proxy.relayed.load(Ordering::SeqCst) > 500 * 256 / 4, "the messages crossed the proxy");
    // `device:s3cret` in base64.
    assert_eq!(proxy.auth_headers.lock().unwrap()[0], "Proxy-Authorization: Basic ZGV2aWNlOnMzY3JldA==");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_or_dying_proxy_loses_no_message() {
    let emu = Emulator::builder().auto_approve(Some(Duration::ZERO)).start().await.unwrap();
    let proxy = TestProxy::start().await;
    let c = client(&emu, format!("http://127.0.0.1:{}", proxy.port), Arc::new(MemoryStore::new())).await;
    let sender = c.create_stream_sender(None, Some("proxied"), Compression::Uncompressed).unwrap();
    let chunk = 600u32;
    let rounds = 5u32;
    let total = chunk * rounds;
    let mut refusals = proxy.refusals.subscribe();
    for round in 0..rounds {
        for i in round * chunk..(round + 1) * chunk {
            sender.enqueue_message(Message::new(format!("{i}")).message_id(format!("m{i}"))).await.unwrap();
        }
        if round == 2 {
            // The proxy refuses new tunnels for a while: the device keeps retrying.
            proxy.mode.store(REFUSE, Ordering::SeqCst);
            proxy.cut.send_modify(|n| *n += 1);
            tokio::time::timeout(WAIT, refusals.wait_for(|n| *n >= 2)).await.expect("retried while refused").unwrap();
            proxy.mode.store(FORWARD, Ordering::SeqCst);
        } else {
            // The proxy dies while this chunk is on its way.
            let stored = emu.message_count().await;
            assert!(emu.wait_for_messages(stored + 50, WAIT).await);
            proxy.cut.send_modify(|n| *n += 1);
        }
    }
    c.wait_enqueued_messages_sent_timeout(WAIT).await.unwrap();
    assert_eq!(ids(&emu).await.len() as u32, total, "every message arrived");
    let tunnels = proxy.tunnels.lock().unwrap().len();
    // Cuts that land while the device is already reconnecting do not force another tunnel.
    assert!(tunnels >= 3, "reconnected through the proxy after the cuts: {tunnels} tunnels");
}

/// Copies `from` to `to` until either side ends, counting the bytes in `relayed`.
async fn relay(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    relayed: &std::sync::atomic::AtomicU64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        relayed.fetch_add(n as u64, Ordering::SeqCst);
    }
}
