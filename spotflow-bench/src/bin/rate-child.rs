//! A device process for the device-rate benchmark (`benches/device_rate.rs`): starts a client
//! (`CLIENT=async` or `blocking`) with the default SQLite store at `DURABILITY`
//! (`power-loss-safe` or `crash-safe`), says `READY`, then enqueues 256-byte messages at `RATE`
//! per second for `SECONDS` (`RATE=0`: stays connected and idle that long), waits until all are
//! acknowledged and says, in this order:
//!
//! * `SENT {n}`;
//! * `T {i} {ns}` for each message: when its enqueue returned (Unix nanoseconds, the clock the
//!   benchmark stamps the platform's store with);
//! * `USAGE {user µs} {system µs} {voluntary switches} {involuntary switches} {max RSS KiB}`:
//!   the process's CPU time and context switches from `READY` to the last acknowledgement,
//!   and its peak resident size;
//! * `DONE`.
//!
//! Nothing is written while sending, so the figures are the SDK's and the pacing loop's alone.
//! Environment also: `INSTANCE`, `CA_FILE`, `MQTT_PORT`, `PROVISIONING_TOKEN`, `DB`.
//!
//! Two more clients measure the floor under the SDK, the same work done by its libraries alone:
//!
//! * `CLIENT=raw-mqtt`: rumqttc publishing each message with QoS 1 over TLS (`DEVICE_ID`,
//!   `USERNAME`, `PASSWORD` of a device the benchmark created), no store;
//! * `CLIENT=raw-tls`: the least a QoS 1 publish can cost: one thread on a blocking TLS socket
//!   (rustls) writes each PUBLISH and reads its PUBACK, no runtime, no store;
//! * `CLIENT=pace`: the pacing loop alone (sleeps until each message is due, sends nothing): it
//!   is in every row, so the floor counts it once;
//! * `CLIENT=raw-sqlite`: rusqlite inserting each message into a WAL database with the SDK's
//!   schema and deleting it again (the SDK's two transactions: append, and removal once
//!   acknowledged), no network. At `power-loss-safe` the insert commits with
//!   `synchronous=FULL` (one fsync), the delete with `NORMAL`, as the SDK's store does.

use std::time::{Duration, Instant, SystemTime};

use spotflow_device::{Compression, Durability, Message};

use spotflow_store_tests::env;

/// CPU time (µs, user and system), context switches (voluntary, involuntary) and peak RSS
/// (KiB) of this process so far.
fn usage() -> [u64; 5] {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    [micros(u.ru_utime), micros(u.ru_stime), u.ru_nvcsw as u64, u.ru_nivcsw as u64, u.ru_maxrss as u64]
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

struct Plan {
    rate: f64,
    seconds: f64,
    payload: bytes::Bytes,
}

impl Plan {
    /// The idle run measures a connected client in its steady state: `start` returns before the
    /// MQTT connection is up, and the start leaves one-time work behind (the HTTPS connections of
    /// provisioning and registration, closed by the server after 10 s idle; Tokio's blocking-pool
    /// thread, which exits after 10 s idle). Let all of it pass first.
    fn settle_time(&self) -> Duration {
        if self.rate == 0.0 {
            Duration::from_secs(12)
        } else {
            Duration::ZERO
        }
    }

    fn count(&self) -> u64 {
        (self.rate * self.seconds) as u64
    }
    fn due(&self, start: Instant, i: u64) -> Instant {
        start + Duration::from_secs_f64(i as f64 / self.rate)
    }
}

/// [`paced`] for async code: says READY, then runs `send` at the plan's pace on this task; returns
/// when each call returned and the process's usage before the first.
async fn paced_async<F: std::future::Future<Output = ()>>(
    plan: &Plan,
    mut send: impl FnMut() -> F,
) -> (Vec<u128>, [u64; 5]) {
    println!("READY");
    let before = usage();
    let start = Instant::now();
    let mut stamps = Vec::with_capacity(plan.count() as usize);
    for i in 0..plan.count() {
        tokio::time::sleep_until(plan.due(start, i).into()).await;
        send().await;
        stamps.push(now_ns());
    }
    (stamps, before)
}

fn report(stamps: &[u128], before: [u64; 5]) {
    let after = usage();
    println!("SENT {}", stamps.len());
    let mut out = String::with_capacity(stamps.len() * 32);
    for (i, t) in stamps.iter().enumerate() {
        out.push_str(&format!("T {i} {t}\n"));
    }
    print!("{out}");
    println!(
        "USAGE {} {} {} {} {}",
        after[0] - before[0],
        after[1] - before[1],
        after[2] - before[2],
        after[3] - before[3],
        after[4]
    );
    println!("DONE");
}

/// rumqttc alone: QoS 1 publishes over TLS at the plan's pace, until all are acknowledged.
fn raw_mqtt(plan: &Plan, ca: String, mqtt_port: u16) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
    let tls = spotflow_transport_mqtt::TlsOptions { platform_roots: false, extra_ca_pem: vec![ca] }
        .client_config()
        .expect("TLS configuration");
    let device = env("DEVICE_ID");
    let mut o = MqttOptions::new(device.clone(), "localhost", mqtt_port);
    o.set_credentials(env("USERNAME"), env("PASSWORD"));
    o.set_keep_alive(Duration::from_secs(60));
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let (client, mut events) = AsyncClient::new(o, 64);
        let (acked_tx, mut acked) = tokio::sync::watch::channel(0u64);
        let (connected_tx, connected) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut connected_tx = Some(connected_tx);
            let mut n = 0;
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = connected_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        n += 1;
                        let _ = acked_tx.send(n);
                    }
                    Ok(_) => {}
                    Err(e) => panic!("rumqttc: {e}"),
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(30), connected).await.expect("connected").expect("event loop");
        let topic = format!("devices/{device}/messages/events/stream-group-name=rate&stream-name=raw");
        let (stamps, before) = paced_async(plan, || async {
            client.publish(topic.as_str(), QoS::AtLeastOnce, false, plan.payload.clone()).await.expect("publish");
        })
        .await;
        let count = plan.count();
        tokio::time::timeout(Duration::from_secs(120), acked.wait_for(|n| *n >= count))
            .await
            .expect("all acknowledged")
            .expect("event loop");
        report(&stamps, before);
    });
}

/// One thread on a blocking TLS socket: CONNECT, then for each message at the plan's pace a
/// PUBLISH (QoS 1) and a read until its PUBACK.
fn raw_tls(plan: &Plan, ca: String, mqtt_port: u16) {
    use rumqttc::{Connect, Packet, Publish, QoS};
    use spotflow_transport_mqtt::rustls;
    use std::io::{Read, Write};
    let tls = spotflow_transport_mqtt::TlsOptions { platform_roots: false, extra_ca_pem: vec![ca] }
        .client_config()
        .expect("TLS configuration");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let session = rustls::ClientConnection::new(tls, name).expect("TLS session");
    let tcp = std::net::TcpStream::connect(("127.0.0.1", mqtt_port)).expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let mut stream = rustls::StreamOwned::new(session, tcp);
    let mut out = bytes::BytesMut::with_capacity(1024);
    let mut incoming = bytes::BytesMut::with_capacity(1024);
    let mut read_packet = |stream: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>| loop {
        match Packet::read(&mut incoming, 1 << 20) {
            Ok(p) => return p,
            Err(rumqttc::Error::InsufficientBytes(_)) => {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).expect("read");
                assert!(n > 0, "the broker closed the connection");
                incoming.extend_from_slice(&chunk[..n]);
            }
            Err(e) => panic!("MQTT: {e:?}"),
        }
    };
    let device = env("DEVICE_ID");
    let mut connect = Connect::new(device.clone());
    connect.keep_alive = 60;
    connect.set_login(env("USERNAME"), env("PASSWORD"));
    connect.write(&mut out).expect("CONNECT");
    stream.write_all(&out).expect("write");
    out.clear();
    assert!(matches!(read_packet(&mut stream), Packet::ConnAck(_)), "CONNACK expected");
    let topic = format!("devices/{device}/messages/events/stream-group-name=rate&stream-name=raw");
    paced(
        plan,
        |i| {
            let mut publish = Publish::new(topic.as_str(), QoS::AtLeastOnce, plan.payload.clone());
            publish.pkid = (i % 65_535 + 1) as u16;
            publish.write(&mut out).expect("PUBLISH");
            stream.write_all(&out).expect("write");
            out.clear();
            let sent = now_ns();
            match read_packet(&mut stream) {
                Packet::PubAck(ack) => assert_eq!(ack.pkid, publish.pkid, "PUBACK of another packet"),
                other => panic!("PUBACK expected, got {other:?}"),
            }
            sent
        },
        || {},
    );
}

/// On this thread, at the plan's pace: says `READY`, runs `work(i)` for each message (it returns
/// the message's stamp), then `drain` (what must finish before the figures are taken), then
/// reports.
fn paced(plan: &Plan, mut work: impl FnMut(u64) -> u128, drain: impl FnOnce()) {
    println!("READY");
    let before = usage();
    let start = Instant::now();
    let mut stamps = Vec::with_capacity(plan.count() as usize);
    for i in 0..plan.count() {
        if let Some(wait) = plan.due(start, i).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        stamps.push(work(i));
    }
    drain();
    report(&stamps, before);
}

/// The pacing loop alone.
fn pace(plan: &Plan) {
    paced(plan, |_| now_ns(), || {});
}

/// rusqlite alone: the SDK's two transactions per message (insert; delete once acknowledged)
/// at the plan's pace.
fn raw_sqlite(plan: &Plan, durability: Durability) {
    let sync = if durability == Durability::CrashSafe { "NORMAL" } else { "FULL" };
    let conn = rusqlite::Connection::open(env("DB")).expect("database");
    conn.execute_batch(&format!(
        "PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL; PRAGMA synchronous={sync};
         CREATE TABLE IF NOT EXISTS messages (
             seq INTEGER PRIMARY KEY AUTOINCREMENT, kind INTEGER NOT NULL, encoding INTEGER NOT NULL,
             stream_group TEXT, stream TEXT, batch_id TEXT, batch_slice_id TEXT, message_id TEXT,
             chunk_id TEXT, payload BLOB NOT NULL, size INTEGER NOT NULL);"
    ))
    .expect("schema");
    let mut insert = conn
        .prepare(
            "INSERT INTO messages (kind, encoding, stream_group, stream, payload, size) VALUES (0, 0, 'rate', 'raw', ?1, ?2)",
        )
        .expect("insert");
    let mut delete = conn.prepare("DELETE FROM messages WHERE seq = ?1").expect("delete");
    let mut relaxed = conn.prepare("PRAGMA synchronous=NORMAL").expect("pragma");
    let mut strict = conn.prepare(&format!("PRAGMA synchronous={sync}")).expect("pragma");
    paced(
        plan,
        |_| {
            insert.execute(rusqlite::params![&plan.payload[..], plan.payload.len() as i64]).expect("insert");
            let appended = now_ns();
            let seq = conn.last_insert_rowid();
            relaxed.execute([]).expect("pragma");
            delete.execute([seq]).expect("delete");
            strict.execute([]).expect("pragma");
            appended
        },
        || {},
    );
}

fn main() {
    let ca = std::fs::read_to_string(env("CA_FILE")).expect("CA file");
    let mqtt_port: u16 = env("MQTT_PORT").parse().expect("MQTT_PORT");
    let durability = match env("DURABILITY").as_str() {
        "crash-safe" => Durability::CrashSafe,
        _ => Durability::PowerLossSafe,
    };
    let plan = Plan {
        rate: env("RATE").parse().expect("RATE"),
        seconds: env("SECONDS").parse().expect("SECONDS"),
        payload: bytes::Bytes::from(vec![b'x'; 256]),
    };
    match env("CLIENT").as_str() {
        "raw-mqtt" => return raw_mqtt(&plan, ca, mqtt_port),
        "raw-sqlite" => return raw_sqlite(&plan, durability),
        "raw-tls" => return raw_tls(&plan, ca, mqtt_port),
        "pace" => return pace(&plan),
        _ => {}
    }
    let network = move |n: &mut spotflow_device::NetworkOptions| {
        n.platform_roots = false;
        n.mqtt_port = mqtt_port;
    };
    // The device's builder, blocking or async (the same methods on two types).
    macro_rules! configured {
        ($client:ty) => {
            <$client>::builder(Some("rate-device"), env("PROVISIONING_TOKEN"), env("DB"))
                .instance(env("INSTANCE"))
                .trust_ca_pem(ca)
                .with_network(network)
                .with_options(|o| o.durability = durability)
                .display_provisioning_operation_callback(|_| {})
        };
    }
    if env("CLIENT") == "blocking" {
        let client = configured!(spotflow_device::blocking::DeviceClient).start().expect("device starts");
        let sender = client.create_stream_sender(Some("rate"), Some("blocking"), Compression::Uncompressed).unwrap();
        std::thread::sleep(plan.settle_time());
        paced(
            &plan,
            |_| {
                sender.enqueue_message(Message::new(plan.payload.clone())).expect("enqueue");
                now_ns()
            },
            || {
                if plan.rate == 0.0 {
                    std::thread::sleep(Duration::from_secs_f64(plan.seconds));
                }
                client.wait_enqueued_messages_sent_timeout(Duration::from_secs(120)).expect("all acknowledged");
            },
        );
        client.close().expect("close");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let client = configured!(spotflow_device::DeviceClient).start().await.expect("device starts");
        let sender = client.create_stream_sender(Some("rate"), Some("async"), Compression::Uncompressed).unwrap();
        tokio::time::sleep(plan.settle_time()).await;
        let (stamps, before) = paced_async(&plan, || async {
            sender.enqueue_message(Message::new(plan.payload.clone())).await.expect("enqueue");
        })
        .await;
        if plan.rate == 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(plan.seconds)).await;
        }
        client.wait_enqueued_messages_sent_timeout(Duration::from_secs(120)).await.expect("all acknowledged");
        report(&stamps, before);
        client.close().await.expect("close");
    });
}
