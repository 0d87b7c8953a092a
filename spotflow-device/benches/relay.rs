//! Remote access: what one tunnel carries, beside a direct loopback TCP connection to the same
//! servers in the same run.
//!
//! The emulator runs in-process; a device allows remote access to two servers on its side: a
//! sink (counts what it receives, sends a byte back when it has it all) and an echo server. The
//! operator's end is the emulator's tunnel client (what `spotflow-emulator tunnel` relays each
//! local connection to).
//!
//! ```sh
//! cargo bench -p spotflow-device --features ws --bench relay            # 3 runs of 64 MiB, 2,000 round trips
//! cargo bench -p spotflow-device --features ws --bench relay -- --quick # 1 run of 16 MiB, 500 round trips
//! ```
//! Prints MB/s to the device (operator → device) and from it (device → operator), and the
//! 1-byte round trip's median and p99, for the tunnel and for direct TCP, medians of the runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use spotflow_core::{MemoryStore, Store};
use spotflow_device::DeviceClient;
use spotflow_emulator::Emulator;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A server that reads `u64` (big endian) = how many bytes it should send, then sends them; or
/// (first byte 0) counts what it receives until the end and answers one byte.
async fn bulk_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = socket.set_nodelay(true);
                let mut header = [0u8; 9];
                if socket.read_exact(&mut header).await.is_err() {
                    return;
                }
                let n = u64::from_be_bytes(header[1..].try_into().unwrap());
                let chunk = vec![7u8; 64 * 1024];
                if header[0] == 1 {
                    // Send n bytes.
                    let mut left = n;
                    while left > 0 {
                        let k = left.min(chunk.len() as u64) as usize;
                        if socket.write_all(&chunk[..k]).await.is_err() {
                            return;
                        }
                        left -= k as u64;
                    }
                } else {
                    // Receive n bytes, then answer one.
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut got = 0u64;
                    while got < n {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => got += k as u64,
                        }
                    }
                    let _ = socket.write_all(&[1]).await;
                }
                let _ = socket.flush().await;
            });
        }
    });
    port
}

async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let _ = socket.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// MB/s of `n` bytes to the server (until it confirms it has them all).
async fn to_device(mut s: Box<dyn Stream>, n: u64) -> f64 {
    let start = Instant::now();
    let mut header = vec![0u8];
    header.extend_from_slice(&n.to_be_bytes());
    s.write_all(&header).await.unwrap();
    let chunk = vec![3u8; 64 * 1024];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..k]).await.unwrap();
        left -= k as u64;
    }
    s.flush().await.unwrap();
    let mut done = [0u8; 1];
    s.read_exact(&mut done).await.unwrap();
    n as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// MB/s of `n` bytes from the server.
async fn from_device(mut s: Box<dyn Stream>, n: u64) -> f64 {
    let start = Instant::now();
    let mut header = vec![1u8];
    header.extend_from_slice(&n.to_be_bytes());
    s.write_all(&header).await.unwrap();
    s.flush().await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    while got < n {
        let k = s.read(&mut buf).await.unwrap();
        assert!(k > 0, "the stream ended after {got} of {n} bytes");
        got += k as u64;
    }
    n as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// Median and p99 (µs) of `count` 1-byte round trips.
async fn round_trips(mut s: Box<dyn Stream>, count: usize) -> (f64, f64) {
    let mut times = Vec::with_capacity(count);
    let mut byte = [0u8; 1];
    for i in 0..count {
        let start = Instant::now();
        s.write_all(&[i as u8]).await.unwrap();
        s.flush().await.unwrap();
        s.read_exact(&mut byte).await.unwrap();
        times.push(start.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[times.len() * 99 / 100])
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (runs, bytes, trips) = if quick { (1, 16u64 << 20, 500) } else { (3, 64u64 << 20, 2000) };
    let emu = Emulator::builder().auto_approve(Some(Duration::ZERO)).start().await.expect("emulator");
    let (bulk, echo) = (bulk_server().await, echo_server().await);
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mqtt_port = emu.mqtts_addr().unwrap().port();
    let client = DeviceClient::builder(Some("relay-bench"), emu.create_provisioning_token(), "device.db")
        .instance(emu.https_url())
        .trust_ca_pem(emu.ca_pem())
        .with_network(move |n| {
            n.platform_roots = false;
            n.mqtt_port = mqtt_port;
        })
        .store(store)
        .display_provisioning_operation_callback(|_| {})
        .allow_remote_access_ports([bulk, echo])
        .start()
        .await
        .expect("device starts");
    let hub = "ws-emulator:relay-bench";
    let tunnel = |port: u16| {
        let emu = &emu;
        async move { Box::new(emu.open_tunnel(hub, port).await.expect("tunnel")) as Box<dyn Stream> }
    };
    let direct = |port: u16| async move {
        let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.set_nodelay(true).unwrap();
        Box::new(s) as Box<dyn Stream>
    };
    // Warm-up, once the device takes direct methods (it subscribes right after it connects; a
    // refused tunnel fails its first read): a round trip through a tunnel.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut s = tunnel(echo).await;
        let mut byte = [0u8; 1];
        let answered = async {
            s.write_all(b"?").await?;
            s.flush().await?;
            s.read_exact(&mut byte).await
        };
        match answered.await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for the device: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no tunnel: {e}"),
        }
    }
    let (mut t_to, mut t_from, mut t_rtt50, mut t_rtt99) = (vec![], vec![], vec![], vec![]);
    let (mut d_to, mut d_from, mut d_rtt50, mut d_rtt99) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        t_to.push(to_device(tunnel(bulk).await, bytes).await);
        d_to.push(to_device(direct(bulk).await, bytes).await);
        t_from.push(from_device(tunnel(bulk).await, bytes).await);
        d_from.push(from_device(direct(bulk).await, bytes).await);
        let (p50, p99) = round_trips(tunnel(echo).await, trips).await;
        t_rtt50.push(p50);
        t_rtt99.push(p99);
        let (p50, p99) = round_trips(direct(echo).await, trips).await;
        d_rtt50.push(p50);
        d_rtt99.push(p99);
    }
    println!(
        "remote-access relay through the emulator (in-process, TLS on loopback), medians of {runs} run(s) of {} MiB and {trips} round trips",
        bytes >> 20
    );
    println!("| path | to the device (MB/s) | from the device (MB/s) | 1-byte round trip p50 / p99 (µs) |");
    println!("|---|---|---|---|");
    let (tt, tf, t50, t99) = (median(t_to), median(t_from), median(t_rtt50), median(t_rtt99));
    let (dt, df, d50, d99) = (median(d_to), median(d_from), median(d_rtt50), median(d_rtt99));
    println!(
        "| tunnel (operator ↔ emulator ↔ device, two WebSockets over TLS) | {tt:.1} | {tf:.1} | {t50:.0} / {t99:.0} |"
    );
    println!("| direct loopback TCP | {dt:.1} | {df:.1} | {d50:.0} / {d99:.0} |");
    println!(
        "ratio tunnel/direct: to the device {:.3}, from the device {:.3}, round trip {:.1}x",
        tt / dt,
        tf / df,
        t50 / d50
    );
    client.close().await.unwrap();
}
