//! Remote access end to end against the emulator, over MQTT and over WebSocket: an operator's
//! tunnel (the emulator's `open_tunnel`, what its `tunnel` command uses) reaches a TCP server on
//! the device's side; three tunnels at once carry 10 MiB each way intact; a port that is not
//! allowed, a closed port and a second request for a running tunnel are refused with their
//! reasons; closing either end closes the other.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use spotflow_core::{MemoryStore, Store};
use spotflow_device::{DeviceClient, DeviceClientBuilder};
use spotflow_emulator::Emulator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[macro_use]
mod common;
use common::{network, Proto};

const WAIT: Duration = Duration::from_secs(30);

fn device(proto: Proto, emu: &Emulator, id: &str) -> DeviceClientBuilder {
    let mqtt_port = emu.mqtts_addr().expect("mqtts").port();
    let https_port = emu.https_addr().expect("https").port();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    DeviceClient::builder(Some(id), emu.create_provisioning_token(), "device.db")
        .instance(emu.https_url())
        .trust_ca_pem(emu.ca_pem())
        .with_network(network(proto, https_port, mqtt_port))
        .store(store)
        .display_provisioning_operation_callback(|_| {})
        .with_options(|o| {
            o.provisioning_poll_interval = Duration::from_millis(20);
            o.retry_initial = Duration::from_millis(20);
            o.start_timeout = WAIT;
        })
}

/// An echo server on the device's side; its port.
async fn echo_server() -> u16 {
    echo_server_telling_ends().await.0
}

/// An echo server on the device's side: its port, and a message each time a connection to it
/// ends (the tunnel's end of stream reached it).
async fn echo_server_telling_ends() -> (u16, tokio::sync::mpsc::UnboundedReceiver<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (ended, ends) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let ended = ended.clone();
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let echoed = tokio::io::copy(&mut r, &mut w).await.unwrap_or(0);
                let _ = w.shutdown().await;
                let _ = ended.send(echoed);
            });
        }
    });
    (port, ends)
}

/// Opens a tunnel, retrying (bounded) while the device has not subscribed to direct methods yet.
async fn open(emu: &Emulator, hub_id: &str, port: u16) -> spotflow_emulator::tunnel_client::TunnelStream {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut tunnel = emu.open_tunnel(hub_id, port).await.expect("the emulator takes the tunnel");
        // A refusal comes as the first read; an open tunnel echoes this probe.
        tunnel.write_all(b"?").await.unwrap();
        tunnel.flush().await.unwrap();
        let mut probe = [0u8; 1];
        match tunnel.read_exact(&mut probe).await {
            Ok(_) => return tunnel,
            Err(e) if e.to_string().contains("not connected") && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("tunnel to {port}: {e}"),
        }
    }
}

/// The refusal a tunnel to `port` gets (its first read fails with the reason).
async fn refusal(emu: &Emulator, hub_id: &str, port: u16) -> String {
    let mut tunnel = emu.open_tunnel(hub_id, port).await.expect("the emulator takes the tunnel");
    let mut buf = [0u8; 16];
    let result = tokio::time::timeout(WAIT, tunnel.read(&mut buf)).await.expect("answered in time");
    result.expect_err("refused").to_string()
}

async fn a_tunnel_reaches_an_echo_server_on_the_device(proto: Proto) {
    let emu = Emulator::builder().auto_approve(Some(Duration::ZERO)).start().await.unwrap();
    let (port, mut ends) = echo_server_telling_ends().await;
    let client = device(proto, &emu, "ssh-box").allow_remote_access_ports([port]).start().await.unwrap();
    let mut tunnel = open(&emu, "ws-emulator:ssh-box", port).await;
    for line in ["hello\n", "through the platform\n"] {
        tunnel.write_all(line.as_bytes()).await.unwrap();
        tunnel.flush().await.unwrap();
        let mut back = vec![0u8; line.len()];
        tunnel.read_exact(&mut back).await.unwrap();
        assert_eq!(back, line.as_bytes());
    }
    // Closing the operator's end closes the device's connection to the server, whose end of
    // stream comes back as the tunnel's.
    tunnel.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, tunnel.read_to_end(&mut rest)).await.expect("closed in time");
    assert_eq!(read.map_err(|e| e.to_string()), Ok(0), "nothing after the close");
    let echoed = tokio::time::timeout(WAIT, ends.recv()).await.expect("the server's connection ended").unwrap();
    assert_eq!(echoed, (1 + "hello\n".len() + "through the platform\n".len()) as u64, "the probe and both lines");
    client.close().await.unwrap();
}

async fn three_tunnels_carry_10_mib_each_way_intact(proto: Proto) {
    let emu = Emulator::builder().auto_approve(Some(Duration::ZERO)).start().await.unwrap();
    let port = echo_server().await;
    let client = device(proto, &emu, "bulk").allow_remote_access_ports([port]).start().await.unwrap();
    const SIZE: usize = 10 * 1024 * 1024;
    let mut tasks = Vec::new();
    for t in 0..3u64 {
        let tunnel = open(&emu, "ws-emulator:bulk", port).await;
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand_like(t);
            let data: Vec<u8> = (0..SIZE).map(|_| rng()).collect();
            let sent = crc32fast::hash(&data);
            let (mut r, mut w) = tokio::io::split(tunnel);
            let writer = tokio::spawn(async move {
                w.write_all(&data).await.unwrap();
                w.flush().await.unwrap();
                w
            });
            let mut back = vec![0u8; SIZE];
            r.read_exact(&mut back).await.unwrap();
            let _w = writer.await.unwrap();
            (sent, crc32fast::hash(&back))
        }));
    }
    for task in tasks {
        let (sent, received) = tokio::time::timeout(Duration::from_secs(120), task).await.expect("in time").unwrap();
        assert_eq!(sent, received, "10 MiB there and back intact");
    }
    client.close().await.unwrap();
}

/// A small deterministic byte generator (xorshift), one sequence per tunnel.
fn fastrand_like(seed: u64) -> impl FnMut() -> u8 {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (seed + 1);
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 24) as u8
    }
}

async fn refused_ports_closed_ports_and_running_tunnels_get_their_reasons(proto: Proto) {
    let emu = Emulator::builder().auto_approve(Some(Duration::ZERO)).start().await.unwrap();
    let port = echo_server().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let client = device(proto, &emu, "guarded").allow_remote_access_ports([port, closed]).start().await.unwrap();
    let hub = "ws-emulator:guarded";
    drop(open(&emu, hub, port).await);
    let other = if port == 1 { 2 } else { port - 1 };
    let why = refusal(&emu, hub, other).await;
    assert!(why.contains(&format!("403 Remote access to port {other} is not allowed")), "{why}");
    let why = refusal(&emu, hub, closed).await;
    assert!(why.contains("500 Failed to connect to target port"), "{why}");
    // A second request for a tunnel that is still opening: 409. The first one's URI leads to a
    // listener that never completes TLS, so it stays "running".
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let payload =
        json!({"tunnelId": "t-1", "port": port, "tunnelSecureUri": format!("wss://localhost:{silent_port}/t")});
    let (emu_ref, body) = (&emu, payload.to_string().into_bytes());
    let first = emu_ref.invoke_method(hub, "!remote-access", body.clone(), WAIT);
    let second = async {
        // The first call has reached the device once the silent listener sees its connection.
        let _held = tokio::time::timeout(WAIT, silent.accept()).await.expect("the device connects").unwrap();
        emu_ref.invoke_method(hub, "!remote-access", body.clone(), WAIT).await
    };
    tokio::select! {
        answer = second => {
            let answer = answer.unwrap();
            assert_eq!(answer.status, 409);
            assert_eq!(serde_json::from_slice::<serde_json::Value>(&answer.payload).unwrap(), json!({"detail": "Previous attempt still active."}));
        }
        _ = first => panic!("the first attempt cannot end while its TLS handshake hangs"),
    }
    // The `traceparent` header given with the request goes with the tunnel's WebSocket request
    // (here to a plain loopback server that records the request and refuses it).
    let tracer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tracer_port = tracer.local_addr().unwrap().port();
    let recorded = tokio::spawn(async move {
        let (mut socket, _) = tracer.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "the request ended early");
            request.extend_from_slice(&buf[..n]);
        }
        let _ = socket.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").await;
        String::from_utf8_lossy(&request).to_lowercase()
    });
    let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let payload = json!({"tunnelId": "t-trace", "port": port, "tunnelSecureUri": format!("ws://127.0.0.1:{tracer_port}/t"), "traceparentHeader": trace});
    let answer = emu.invoke_method(hub, "!remote-access", payload.to_string().into_bytes(), WAIT).await.unwrap();
    assert_eq!(answer.status, 500, "the tunnel's server refused");
    let request = tokio::time::timeout(WAIT, recorded).await.expect("the request came").unwrap();
    assert!(request.contains(&format!("traceparent: {trace}")), "{request}");
    // A payload that is not a tunnel request.
    let answer = emu.invoke_method(hub, "!remote-access", b"{\"port\": 1}".to_vec(), WAIT).await.unwrap();
    assert_eq!((answer.status, answer.payload), (400, br#"{"detail":"Invalid payload"}"#.to_vec()));
    client.close().await.unwrap();
    // A device that does not allow remote access takes no direct methods at all.
    let plain = device(proto, &emu, "closed-box").start().await.unwrap();
    let why = refusal(&emu, "ws-emulator:closed-box", port).await;
    assert!(why.contains("not connected or does not take direct methods"), "{why}");
    plain.close().await.unwrap();
}

async fn a_server_closing_on_the_device_side_closes_the_operators_end(proto: Proto) {
    let emu = Emulator::builder().auto_approve(Some(Duration::ZERO)).start().await.unwrap();
    // A server that greets and hangs up.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut probe = [0u8; 1];
            let _ = socket.read_exact(&mut probe).await;
            let _ = socket.write_all(b"?bye\n").await;
            let _ = socket.shutdown().await;
        }
    });
    let client = device(proto, &emu, "greeter").allow_remote_access_all_ports().start().await.unwrap();
    let mut tunnel = open(&emu, "ws-emulator:greeter", port).await;
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, tunnel.read_to_end(&mut rest)).await.expect("closed in time").unwrap();
    assert_eq!(rest, b"bye\n");
    client.close().await.unwrap();
}

both!(a_tunnel_reaches_an_echo_server_on_the_device);
both!(three_tunnels_carry_10_mib_each_way_intact);
both!(refused_ports_closed_ports_and_running_tunnels_get_their_reasons);
both!(a_server_closing_on_the_device_side_closes_the_operators_end);
