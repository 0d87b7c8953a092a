//! The SDK with its default network stack (HTTPS platform API + MQTT over TLS) against
//! `spotflow-emulator` running in-process on loopback.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use spotflow_core::{Error, MemoryStore, Store};
use spotflow_device::{Compression, DeviceClient, DeviceClientBuilder, Message};
use spotflow_emulator::{Emulator, MessageQuery, StoredMessage};

#[macro_use]
mod common;
use common::{network, Proto};

const WAIT: Duration = Duration::from_secs(30);

fn store() -> Arc<dyn Store> {
    Arc::new(MemoryStore::new())
}

fn device(proto: Proto, emu: &Emulator, token: &str, store: &Arc<dyn Store>, id: &str) -> DeviceClientBuilder {
    common::on_emulator(DeviceClient::builder(Some(id), token, "device.db").store(store.clone()), emu, proto)
        .with_options(|o| o.start_timeout = WAIT)
}

async fn auto_emulator() -> Emulator {
    Emulator::builder().auto_approve(Some(Duration::ZERO)).start().await.expect("emulator")
}

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<(u64, Value)>) -> (u64, Value) {
    tokio::time::timeout(WAIT, rx.recv()).await.expect("callback in time").expect("open")
}

async fn stored(emu: &Emulator, hub_id: &str) -> Vec<StoredMessage> {
    emu.messages(MessageQuery { hub_device_id: Some(hub_id.into()), limit: Some(100_000), ..Default::default() }).await
}

fn obj(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().cloned().unwrap()
}

async fn provisioning_with_manual_approval_override_and_expiry(proto: Proto) {
    let emu = Emulator::builder().start().await.unwrap();
    let token = emu.create_provisioning_token();
    let s = store();
    let shown: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = shown.clone();
    let start = tokio::spawn(
        device(proto, &emu, &token, &s, "requested")
            .display_provisioning_operation_callback(move |op| seen.lock().unwrap().push(op.id.clone()))
            .start(),
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    let op = loop {
        if let Some(op) = emu.operations().into_iter().find(|o| o.requested_device_id.as_deref() == Some("requested")) {
            break op;
        }
        assert!(tokio::time::Instant::now() < deadline, "operation started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    emu.approve(&op.id, Some("renamed")).unwrap();
    let client = tokio::time::timeout(WAIT, start).await.unwrap().unwrap().unwrap();
    assert_eq!((client.workspace_id(), client.device_id()), ("ws-emulator", "renamed"));
    assert_eq!(shown.lock().unwrap().clone(), vec![op.id.clone()], "displayed once");
    client.close().await.unwrap();

    // An operation that nobody approves before it expires fails start with a clear error.
    let short = Emulator::builder()
        .lifetimes(Duration::from_millis(300), Duration::from_secs(60), Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let token = short.create_provisioning_token();
    let err = device(proto, &short, &token, &store(), "late").start().await.unwrap_err();
    assert!(matches!(err, Error::Provisioning(_)), "{err}");
    // A wrong token is refused at once.
    let err = device(proto, &short, "not-a-token", &store(), "x").start().await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized(_)), "{err}");
}

async fn ten_thousand_messages_with_batches_chunks_completions_and_compression_arrive_once_decoded(proto: Proto) {
    let emu = auto_emulator().await;
    let token = emu.create_provisioning_token();
    let client = device(proto, &emu, &token, &store(), "bulk").start().await.unwrap();
    let compressions = [Compression::Uncompressed, Compression::Fastest, Compression::Lz4];
    let mut tasks = Vec::new();
    for (s, compression) in compressions.into_iter().enumerate() {
        let sender = client.create_stream_sender(Some("telemetry"), Some(&format!("stream-{s}")), compression).unwrap();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            for b in 0..10 {
                let batch = format!("batch-{s}-{b}");
                for i in 0..334 {
                    let payload = format!(
                        "{{\"stream\":{s},\"batch\":{b},\"i\":{i},\"temperatureCelsius\":21.5,\"note\":\"{}\"}}",
                        "repetitive ".repeat(20)
                    );
                    let m = Message::new(payload)
                        .batch_id(batch.clone())
                        .message_id(format!("m{i}"))
                        .batch_slice_id(format!("slice-{}", i / 100));
                    let m = if i % 2 == 0 { m.chunk_id(format!("c{i}")) } else { m };
                    sender.enqueue_message(m).await.unwrap();
                    n += 1;
                }
                sender.enqueue_message_completion(&batch, "m0").await.unwrap();
                sender.enqueue_batch_completion(&batch).await.unwrap();
                n += 2;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert!(total >= 10_000);
    client.wait_enqueued_messages_sent_timeout(WAIT).await.unwrap();
    assert_eq!(client.pending_messages_count(), 0);
    assert!(emu.wait_for_messages(total as u64, WAIT).await);
    let messages = stored(&emu, "ws-emulator:bulk").await;
    assert_eq!(messages.len(), total, "each message arrived exactly once");
    for s in 0..3usize {
        let mine: Vec<&StoredMessage> =
            messages.iter().filter(|m| m.stream.as_deref() == Some(&format!("stream-{s}"))).collect();
        assert_eq!(mine.len(), total / 3);
        let data: Vec<&&StoredMessage> = mine.iter().filter(|m| !m.complete_batch && !m.complete_message).collect();
        for (k, m) in data.iter().enumerate() {
            let (b, i) = (k / 334, k % 334);
            let v: Value = serde_json::from_slice(&m.payload).expect("payload decoded to JSON");
            assert_eq!(
                (v["stream"].as_u64(), v["batch"].as_u64(), v["i"].as_u64()),
                (Some(s as u64), Some(b as u64), Some(i as u64)),
                "order within the stream"
            );
            assert_eq!(m.batch_id.as_deref(), Some(format!("batch-{s}-{b}").as_str()));
            assert_eq!(m.message_id.as_deref(), Some(format!("m{i}").as_str()));
            assert_eq!(m.batch_slice_id.as_deref(), Some(format!("slice-{}", i / 100).as_str()));
            assert_eq!(m.chunk_id.is_some(), i % 2 == 0);
            let expected_encoding = [None, Some("br"), Some("lz4")][s];
            assert_eq!(m.content_encoding.as_deref(), expected_encoding);
            assert_eq!(m.stream_group.as_deref(), Some("telemetry"));
        }
        assert_eq!(mine.iter().filter(|m| m.complete_batch).count(), 10);
        assert_eq!(mine.iter().filter(|m| m.complete_message && m.message_id.as_deref() == Some("m0")).count(), 10);
    }
}

async fn send_message_desired_and_reported_properties(proto: Proto) {
    let emu = auto_emulator().await;
    let token = emu.create_provisioning_token();
    let s = store();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let callback = move |d: spotflow_device::DesiredProperties| drop(tx.send((d.version, Value::Object(d.values))));
    let client = device(proto, &emu, &token, &s, "twin")
        .desired_properties_updated_callback(callback.clone())
        .start()
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, (1, json!({})), "callback after start with the current version");
    let sender = client.create_stream_sender(None, None, Compression::Uncompressed).unwrap();
    sender.send_message("acknowledged").await.unwrap();
    assert_eq!(stored(&emu, "ws-emulator:twin").await.len(), 1, "send_message returned after the platform stored it");
    assert_eq!(emu.update_desired("ws-emulator:twin", obj(json!({"interval": 5}))), Some(2));
    assert_eq!(next(&mut rx).await, (2, json!({"interval": 5})));
    // Reported updates while the connection is down are coalesced into one patch.
    for i in 0..10 {
        client.update_reported_properties(json!({"uptime": i, "fw": "1.0"})).await.unwrap();
    }
    client.wait_reported_properties_sent_timeout(WAIT).await.unwrap();
    assert_eq!(Value::Object(emu.twin("ws-emulator:twin").unwrap().reported), json!({"uptime": 9, "fw": "1.0"}));
    client.close().await.unwrap();
    // Desired updates made while the device is off reach it when it starts again; no repeat of
    // versions it already handled.
    emu.update_desired("ws-emulator:twin", obj(json!({"interval": 10})));
    emu.update_desired("ws-emulator:twin", obj(json!({"mode": "eco"})));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let callback = move |d: spotflow_device::DesiredProperties| drop(tx.send((d.version, Value::Object(d.values))));
    let client =
        device(proto, &emu, &token, &s, "twin").desired_properties_updated_callback(callback).start().await.unwrap();
    assert_eq!(next(&mut rx).await.0, 2, "stored version at start");
    assert_eq!(next(&mut rx).await, (4, json!({"interval": 10, "mode": "eco"})));
    assert_eq!(client.get_desired_properties().version, 4);
    assert!(rx.try_recv().is_err());
}

/// A reported update made right after `start`, before the connection is up, goes out in the same
/// moment as the twin request of the new connection: both must get their own `$rid` (they once
/// shared one, the patch's answer was taken for the twin and the update stayed pending).
async fn a_reported_update_right_after_start_is_confirmed(proto: Proto) {
    let emu = auto_emulator().await;
    let token = emu.create_provisioning_token();
    let s = store();
    let client = device(proto, &emu, &token, &s, "early-report").start().await.unwrap();
    client.update_reported_properties(json!({"firmware": "1.2.3", "battery": {"level": 0.93}})).await.unwrap();
    client.wait_reported_properties_sent_timeout(WAIT).await.unwrap();
    assert!(!client.any_pending_reported_properties_updates());
    assert_eq!(
        Value::Object(emu.twin("ws-emulator:early-report").unwrap().reported),
        json!({"firmware": "1.2.3", "battery": {"level": 0.93}})
    );
    client.close().await.unwrap();
}

async fn token_refresh_and_credential_renewal_while_five_thousand_messages_flow(proto: Proto) {
    let emu = Emulator::builder()
        .auto_approve(Some(Duration::ZERO))
        .lifetimes(Duration::from_secs(60), Duration::from_secs(3), Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let token = emu.create_provisioning_token();
    let s = store();
    let client = device(proto, &emu, &token, &s, "renew").start().await.unwrap();
    let first_rt = s.load_identity().await.unwrap().unwrap().registration_token;
    let sender = client.create_stream_sender(None, Some("renewal"), Compression::Uncompressed).unwrap();
    let started = tokio::time::Instant::now();
    let mut sent = 0u32;
    // Keep messages flowing for longer than the credentials live.
    while started.elapsed() < Duration::from_secs(5) || sent < 5000 {
        for _ in 0..250 {
            sender.enqueue_message(Message::new(format!("{sent}")).message_id(format!("m{sent}"))).await.unwrap();
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(started.elapsed() < WAIT);
    }
    client.wait_enqueued_messages_sent_timeout(WAIT).await.unwrap();
    assert!(emu.wait_for_messages(u64::from(sent), WAIT).await);
    let messages = stored(&emu, "ws-emulator:renew").await;
    let ids: std::collections::BTreeSet<String> = messages.iter().filter_map(|m| m.message_id.clone()).collect();
    assert_eq!(ids.len() as u32, sent, "none lost");
    assert_eq!(messages.len() as u32, sent, "none duplicated: in-flight messages drained before switching credentials");
    let rt = s.load_identity().await.unwrap().unwrap().registration_token;
    assert_ne!(rt, first_rt, "registration token refreshed and persisted");
    assert!(emu.operations().len() == 1, "never provisioned again");
}

async fn dropped_connections_mid_stream_lose_nothing(proto: Proto) {
    let emu = auto_emulator().await;
    let token = emu.create_provisioning_token();
    let client = device(proto, &emu, &token, &store(), "flaky").start().await.unwrap();
    let sender = client.create_stream_sender(None, Some("flaky"), Compression::Fastest).unwrap();
    let total = 3000u32;
    for i in 0..total {
        sender.enqueue_message(Message::new(format!("{{\"i\":{i}}}")).message_id(format!("m{i}"))).await.unwrap();
        if i % 500 == 250 {
            emu.disconnect("ws-emulator:flaky");
        }
    }
    client.wait_enqueued_messages_sent_timeout(WAIT).await.unwrap();
    let messages = stored(&emu, "ws-emulator:flaky").await;
    let ids: std::collections::BTreeSet<String> = messages.iter().filter_map(|m| m.message_id.clone()).collect();
    assert_eq!(ids.len() as u32, total, "every message arrived (redeliveries of unacknowledged ones allowed)");
}

async fn offline_start_with_a_stored_registration_then_delivery_when_the_platform_is_up(proto: Proto) {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::builder().data_dir(dir.path()).auto_approve(Some(Duration::ZERO)).start().await.unwrap();
    let (https, mqtts) = (emu.https_addr().unwrap().port(), emu.mqtts_addr().unwrap().port());
    let token = emu.create_provisioning_token();
    let s = store();
    device(proto, &emu, &token, &s, "offline").start().await.unwrap().close().await.unwrap();
    let ca = emu.ca_pem().to_owned();
    emu.shutdown();
    drop(emu);
    // The platform is down: start succeeds from the stored registration, messages wait.
    let mqtt_port = mqtts;
    let client = DeviceClient::builder(Some("offline"), token.as_str(), "device.db")
        .instance(format!("https://localhost:{https}"))
        .trust_ca_pem(ca)
        .with_network(network(proto, https, mqtt_port))
        .store(s.clone())
        .with_options(|o| {
            o.retry_initial = Duration::from_millis(50);
            o.retry_max = Duration::from_millis(300);
            o.request_timeout = Duration::from_secs(2);
        })
        .start()
        .await
        .expect("offline start");
    let sender = client.create_stream_sender(None, None, Compression::Uncompressed).unwrap();
    for i in 0..100 {
        sender.enqueue_message(format!("offline {i}")).await.unwrap();
    }
    assert_eq!(client.pending_messages_count(), 100);
    // The platform comes back on the same ports and data.
    let emu = Emulator::builder().data_dir(dir.path()).https_port(https).mqtts_port(mqtts).start().await.unwrap();
    client.wait_enqueued_messages_sent_timeout(WAIT).await.unwrap();
    assert_eq!(stored(&emu, "ws-emulator:offline").await.len(), 100);
}

async fn messages_over_the_mqtt_limit_are_uploaded_and_linked(proto: Proto) {
    let emu = auto_emulator().await;
    let token = emu.create_provisioning_token();
    let client = device(proto, &emu, &token, &store(), "large").start().await.unwrap();
    let sender = client.create_stream_sender(None, Some("files"), Compression::Uncompressed).unwrap();
    let big: Vec<u8> = (0..400_000u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    sender.send_message(Message::new(big.clone()).message_id("big")).await.unwrap();
    sender.send_message("small after big").await.unwrap();
    // Unbatched: the small message need not wait for the upload, so the order is free.
    let messages = stored(&emu, "ws-emulator:large").await;
    assert_eq!(messages.len(), 2);
    let large: Vec<_> = messages.iter().filter(|m| m.externalized).collect();
    assert_eq!(large.len(), 1);
    assert_eq!(large[0].payload, big, "the uploaded blob is stored with its message");
    assert!(messages.iter().any(|m| !m.externalized && m.payload == b"small after big"));
}

/// Incompressible bytes (xorshift), for payloads that stay large whatever the compression.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A large message the platform refuses for good (its upload is over the emulator's 16 MiB limit:
/// 413) leaves the queue as a failure the application sees, and holds nothing behind it: other
/// streams flow while it uploads, and the later messages of its batch wait for it and then flow.
/// A large message of a batch that is accepted keeps its place in the batch.
async fn a_refused_large_message_is_reported_and_holds_nothing_behind_it(proto: Proto) {
    let emu = auto_emulator().await;
    let token = emu.create_provisioning_token();
    let client = device(proto, &emu, &token, &store(), "poison")
        .with_options(|o| o.max_message_size = 20 * 1024 * 1024)
        .start()
        .await
        .unwrap();
    let poison = client.create_stream_sender(None, Some("poison"), Compression::Uncompressed).unwrap();
    let other = client.create_stream_sender(None, Some("other"), Compression::Uncompressed).unwrap();
    let ordered = client.create_stream_sender(None, Some("ordered"), Compression::Uncompressed).unwrap();
    let too_large = noise(spotflow_emulator::MAX_BLOB_BYTES + 1024, 7);
    poison.enqueue_message(Message::new(too_large).batch_id("b1").message_id("too-large")).await.unwrap();
    for i in 0..3 {
        poison.enqueue_message(Message::new(format!("b1-{i}")).batch_id("b1")).await.unwrap();
    }
    poison.enqueue_batch_completion("b1").await.unwrap();
    for i in 0..50 {
        other.enqueue_message(format!("other-{i}")).await.unwrap();
    }
    let accepted = noise(300_000, 11);
    ordered.enqueue_message(Message::new(accepted.clone()).batch_id("b2")).await.unwrap();
    ordered.enqueue_message(Message::new("after the large one").batch_id("b2")).await.unwrap();
    ordered.enqueue_batch_completion("b2").await.unwrap();
    match client.wait_enqueued_messages_sent_timeout(Duration::from_secs(60)).await {
        Err(Error::MessagesRefused { count: 1, last_reason }) => {
            assert!(last_reason.contains("413"), "the reason names the refusal: {last_reason}")
        }
        other => panic!("expected one refused message, got {other:?}"),
    }
    assert_eq!(client.refused_messages_count(), 1);
    assert_eq!(client.pending_messages_count(), 0);
    client.wait_enqueued_messages_sent_timeout(WAIT).await.expect("a refusal is reported once");
    let messages = stored(&emu, "ws-emulator:poison").await;
    let stream =
        |name: &str| -> Vec<&StoredMessage> { messages.iter().filter(|m| m.stream.as_deref() == Some(name)).collect() };
    assert_eq!(stream("other").len(), 50);
    let p = stream("poison");
    assert_eq!(p.len(), 4, "the rest of the refused message's batch is delivered");
    assert!(p.iter().all(|m| !m.externalized));
    assert!(p[3].complete_batch, "the completion stays last in its batch");
    let o = stream("ordered");
    assert_eq!(o.len(), 3);
    assert!(o[0].externalized && o[0].payload == accepted, "the large message keeps its place in the batch");
    assert_eq!(o[1].payload, b"after the large one");
    assert!(o[2].complete_batch);
}

/// An upload host that cannot be reached is retried without end, but the messages queued behind
/// the large message are delivered meanwhile.
async fn an_unreachable_upload_host_holds_nothing_behind_it(proto: Proto) {
    let emu = auto_emulator().await;
    let token = emu.create_provisioning_token();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    let client = device(proto, &emu, &token, &store(), "unreachable")
        .with_network(move |n| n.upload_base_url = Some(dead))
        .start()
        .await
        .unwrap();
    let sender = client.create_stream_sender(None, Some("s"), Compression::Uncompressed).unwrap();
    sender.enqueue_message(noise(400_000, 3)).await.unwrap();
    for i in 0..100 {
        sender.enqueue_message(format!("behind-{i}")).await.unwrap();
    }
    assert!(emu.wait_for_messages(100, WAIT).await, "the messages behind the large one were delivered");
    assert_eq!(stored(&emu, "ws-emulator:unreachable").await.len(), 100);
    // The emulator stores a message before the device reads its acknowledgement: poll the count
    // (bounded: 30 s).
    for _ in 0..3000 {
        if client.pending_messages_count() <= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(client.pending_messages_count(), 1, "the large message is still being retried, not dropped");
    assert_eq!(client.refused_messages_count(), 0);
    client.close().await.unwrap();
}

/// Every compression setting, on a small message over MQTT and on a message that is still over
/// 250,000 bytes once compressed (uploaded and linked): stored decoded, with its encoding.
async fn every_encoding_round_trips_over_mqtt_and_the_upload_path(proto: Proto) {
    let emu = auto_emulator().await;
    let token = emu.create_provisioning_token();
    let client = device(proto, &emu, &token, &store(), "encodings").start().await.unwrap();
    let small: String = (0..40).map(|i| format!("{{\"t\":{i},\"temperatureCelsius\":21.5}}")).collect();
    // Half random text (6 bits a byte), half repeated keys: every codec shrinks it, none below
    // 250,000 bytes.
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut large = String::new();
    while large.len() < 800_000 {
        let mut token = String::new();
        for _ in 0..32 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            token.push(alphabet[(rng % 64) as usize] as char);
        }
        large.push_str(&format!("{{\"id\":\"{}\",\"value\":\"{}\",\"status\":\"ok\"}}\n", &token[..16], &token[16..]));
    }
    let settings = [
        (Compression::Fastest, "br"),
        (Compression::SmallestSize, "br"),
        (Compression::Lz4, "lz4"),
        (Compression::Zstd { level: 3 }, "zstd"),
        (Compression::Zstd { level: 19 }, "zstd"),
    ];
    for (i, (compression, _)) in settings.iter().enumerate() {
        let sender = client.create_stream_sender(None, Some(&format!("codec-{i}")), *compression).unwrap();
        sender.enqueue_message(small.clone()).await.unwrap();
        sender.enqueue_message(large.clone()).await.unwrap();
    }
    client.wait_enqueued_messages_sent_timeout(Duration::from_secs(120)).await.unwrap();
    let messages = stored(&emu, "ws-emulator:encodings").await;
    assert_eq!(messages.len(), 2 * settings.len());
    for (i, (compression, token)) in settings.into_iter().enumerate() {
        let stream = format!("codec-{i}");
        let pick = |externalized: bool| {
            let found: Vec<&StoredMessage> = messages
                .iter()
                .filter(|m| m.stream.as_deref() == Some(stream.as_str()) && m.externalized == externalized)
                .collect();
            assert_eq!(found.len(), 1, "{compression:?}: one {} message", ["small", "large"][externalized as usize]);
            found[0]
        };
        let (s, l) = (pick(false), pick(true));
        assert_eq!((s.content_encoding.as_deref(), s.externalized), (Some(token), false), "{compression:?}");
        assert_eq!(s.payload, small.as_bytes());
        assert!(s.wire_size < small.len() / 2, "{compression:?} compressed the small message");
        assert_eq!((l.content_encoding.as_deref(), l.externalized), (Some(token), true), "{compression:?}");
        assert!(l.payload == large.as_bytes(), "{compression:?}: the uploaded blob decoded");
        assert!(l.decode_error.is_none() && s.decode_error.is_none());
    }
}

both!(provisioning_with_manual_approval_override_and_expiry);
both!(every_encoding_round_trips_over_mqtt_and_the_upload_path);
both!(ten_thousand_messages_with_batches_chunks_completions_and_compression_arrive_once_decoded);
both!(send_message_desired_and_reported_properties);
both!(a_reported_update_right_after_start_is_confirmed);
both!(token_refresh_and_credential_renewal_while_five_thousand_messages_flow);
both!(dropped_connections_mid_stream_lose_nothing);
both!(offline_start_with_a_stored_registration_then_delivery_when_the_platform_is_up);
both!(messages_over_the_mqtt_limit_are_uploaded_and_linked);
both!(a_refused_large_message_is_reported_and_holds_nothing_behind_it);
both!(an_unreachable_upload_host_holds_nothing_behind_it);

/// The application's direct methods, called through the emulator: each handler's status and
/// body come back; a method without a handler is answered 404 as the official SDK answers it; a
/// panicking handler 500; a device without handlers takes no direct methods (not subscribed).
async fn direct_methods_are_answered_by_the_applications_handlers(proto: Proto) {
    use spotflow_device::MethodResponse;
    let emu = auto_emulator().await;
    let token = emu.create_provisioning_token();
    let s = store();
    let client = device(proto, &emu, &token, &s, "methods")
        .direct_method_handler("echo", |call| MethodResponse::ok(json!({"echo": call.json().unwrap()})))
        .direct_method_handler("door/open", |call| {
            let who = call.json().ok().and_then(|v| v["who"].as_str().map(String::from)).unwrap_or_default();
            if who == "admin" {
                MethodResponse::ok(json!({"opened": true}))
            } else {
                MethodResponse::error(403, format!("{who} may not open the door"))
            }
        })
        .direct_method_handler("crash", |_| panic!("the handler failed"))
        .start()
        .await
        .unwrap();
    let hub_id = "ws-emulator:methods";
    let call = |method: &'static str, payload: Value| {
        let emu = &emu;
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            // The device subscribes right after it connects.
            loop {
                match emu.invoke_method(hub_id, method, payload.to_string().into_bytes(), WAIT).await {
                    Ok(answer) => return (answer.status, serde_json::from_slice::<Value>(&answer.payload).unwrap()),
                    Err(spotflow_emulator::MethodFailure::NotConnected) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Err(e) => panic!("{method}: {e}"),
                }
            }
        }
    };
    assert_eq!(call("echo", json!({"n": [1, 2]})).await, (200, json!({"echo": {"n": [1, 2]}})));
    assert_eq!(call("door/open", json!({"who": "admin"})).await, (200, json!({"opened": true})));
    assert_eq!(
        call("door/open", json!({"who": "guest"})).await,
        (403, json!({"detail": "guest may not open the door"}))
    );
    assert_eq!(call("nope", Value::Null).await, (404, json!({"detail": "No handler found"})));
    let (status, body) = call("crash", Value::Null).await;
    assert_eq!(status, 500);
    assert_eq!(body["detail"], json!("Panic: the handler failed"));
    // Calls at once: each answered with its own payload.
    let answers = spotflow_core::testkit::join_all((0..20).map(|i| call("echo", json!(i))).collect()).await;
    for (i, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer, (200, json!({"echo": i})));
    }
    client.close().await.unwrap();
    // A device without handlers never subscribes to direct methods.
    let plain = device(proto, &emu, &token, &store(), "plain").start().await.unwrap();
    let sender = plain.create_stream_sender(None, None, Compression::Uncompressed).unwrap();
    sender.send_message("connected").await.unwrap();
    let failure = emu.invoke_method("ws-emulator:plain", "echo", b"null".to_vec(), WAIT).await.unwrap_err();
    assert_eq!(failure, spotflow_emulator::MethodFailure::NotConnected);
}

both!(direct_methods_are_answered_by_the_applications_handlers);
