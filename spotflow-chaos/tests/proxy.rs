//! The proxy's faults, seen from a client of an echo server behind it.

use std::time::{Duration, Instant};

use spotflow_chaos::{random_schedule, ChaosProxy, Condition, Fault};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn round_trip(s: &mut TcpStream, data: &[u8], within: Duration) -> Option<Vec<u8>> {
    s.write_all(data).await.ok()?;
    let mut got = vec![0u8; data.len()];
    tokio::time::timeout(within, s.read_exact(&mut got)).await.ok()?.ok()?;
    Some(got)
}

#[tokio::test]
async fn passes_drops_delays_and_throttles() {
    let proxy = ChaosProxy::start(echo_server().await).await.unwrap();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut s, b"hello", Duration::from_secs(5)).await.as_deref(), Some(&b"hello"[..]));

    proxy.set_condition(Condition::Blackhole);
    assert_eq!(round_trip(&mut s, b"lost", Duration::from_millis(300)).await, None, "dropped");
    proxy.set_condition(Condition::Pass);
    // The dropped bytes never come; new ones do.
    assert_eq!(round_trip(&mut s, b"again", Duration::from_secs(5)).await.as_deref(), Some(&b"again"[..]));

    proxy.set_condition(Condition::Latency { base: Duration::from_millis(150), jitter: Duration::ZERO });
    let t = Instant::now();
    assert!(round_trip(&mut s, b"slow", Duration::from_secs(5)).await.is_some());
    assert!(t.elapsed() >= Duration::from_millis(300), "150 ms each way: {:?}", t.elapsed());

    proxy.set_condition(Condition::Bandwidth(20_000));
    let t = Instant::now();
    assert!(round_trip(&mut s, &[7u8; 10_000], Duration::from_secs(10)).await.is_some());
    assert!(t.elapsed() >= Duration::from_millis(400), "10 kB at 20 kB/s: {:?}", t.elapsed());
    let (passed, dropped) = proxy.bytes();
    assert_eq!(dropped, 4);
    assert!(passed >= 2 * (5 + 5 + 4 + 10_000));
}

#[tokio::test]
async fn resets_and_closes_connections_and_logs_it() {
    let proxy = ChaosProxy::start(echo_server().await).await.unwrap();
    let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(round_trip(&mut a, b"x", Duration::from_secs(5)).await.is_some());
    proxy.apply(Fault::ResetAll);
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), a.read(&mut buf)).await.expect("the reset arrives");
    assert_eq!(r.map_err(|e| e.kind()), Err(std::io::ErrorKind::ConnectionReset));

    let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(round_trip(&mut b, b"y", Duration::from_secs(5)).await.is_some());
    assert_eq!(proxy.open_connections(), 1);
    proxy.apply(Fault::CloseAll);
    let r = tokio::time::timeout(Duration::from_secs(5), b.read(&mut buf)).await.expect("the close arrives");
    assert_eq!(r.unwrap(), 0, "end of stream");
    let log = proxy.log().join("\n");
    assert!(log.contains("#1 reset") && log.contains("#2 closed by the proxy"), "{log}");
}

#[test]
fn random_schedules_are_seeded_and_end_passing() {
    let a = random_schedule(42, Duration::from_secs(600));
    assert_eq!(a, random_schedule(42, Duration::from_secs(600)));
    assert_ne!(a, random_schedule(43, Duration::from_secs(600)));
    assert!(a.windows(2).all(|w| w[0].0 <= w[1].0), "in time order");
    assert_eq!(a.last(), Some(&(Duration::from_secs(600), Fault::Set(Condition::Pass))));
    for kind in ["Blackhole", "Latency", "Bandwidth", "ResetAll", "CloseAll"] {
        assert!(format!("{a:?}").contains(kind), "{kind} in 10 minutes");
    }
}
