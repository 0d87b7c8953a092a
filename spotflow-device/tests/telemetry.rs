//! Telemetry through the facade over the in-memory platform: ordering, batches, completions,
//! acknowledgements, compression, dropped connections, restarts.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use spotflow_core::testkit::{AckMode, MemoryPlatform};
use spotflow_core::{ContentEncoding, MessageKind, Store};
use spotflow_device::{Compression, Message};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_over_three_streams_arrive_once_and_in_order() {
    let platform = MemoryPlatform::new();
    let store = new_store();
    let client = start(&platform, &store).await;
    let mut tasks = Vec::new();
    for stream in 0..3 {
        let sender = client
            .create_stream_sender(Some("group"), Some(&format!("stream-{stream}")), Compression::Uncompressed)
            .unwrap();
        tasks.push(tokio::spawn(async move {
            for i in 0..3334u32 {
                if stream == 2 && i == 3332 {
                    break;
                }
                sender.enqueue_message(format!("{stream}:{i}")).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    client.wait_enqueued_messages_sent_timeout(WAIT).await.unwrap();
    assert_eq!(client.pending_messages_count(), 0);
    let messages = platform.messages();
    assert_eq!(messages.len(), 10_000);
    assert_eq!(platform.duplicates(), 0);
    let mut per_stream: HashMap<String, Vec<u32>> = HashMap::new();
    let mut last_seq = 0;
    for m in &messages {
        assert!(m.seq > last_seq, "delivered in enqueue order");
        last_seq = m.seq;
        let text = String::from_utf8(m.decoded_payload.clone()).unwrap();
        let (stream, i) = text.split_once(':').unwrap();
        assert_eq!(m.message.target.stream.as_deref(), Some(format!("stream-{stream}").as_str()));
        assert_eq!(m.message.target.stream_group.as_deref(), Some("group"));
        per_stream.entry(stream.to_owned()).or_default().push(i.parse().unwrap());
    }
    for (stream, seq) in per_stream {
        let expected: Vec<u32> = (0..seq.len() as u32).collect();
        assert_eq!(seq, expected, "stream {stream} in order, none missing");
    }
    assert!(store_drained(&store).await, "acknowledged messages removed from the store");
}

#[tokio::test]
async fn batches_slices_chunks_and_completions_reach_the_platform_with_their_properties() {
    let platform = MemoryPlatform::new();
    let store = new_store();
    let client = start(&platform, &store).await;
    let sender = client.create_stream_sender(Some("sg 1"), Some("st/1"), Compression::Uncompressed).unwrap();
    sender.enqueue_message(Message::new("a").batch_id("b1").message_id("m1")).await.unwrap();
    sender
        .enqueue_message(Message::new("b").batch_id("b1").batch_slice_id("s1").message_id("m2").chunk_id("c1"))
        .await
        .unwrap();
    sender.enqueue_message_completion("b1", "m2").await.unwrap();
    sender.enqueue_batch_completion("b1").await.unwrap();
    sender.enqueue_message(Message::new("c").with_ids(Some("b2".into()), None, None, Some("c9".into()))).await.unwrap();
    client.wait_enqueued_messages_sent_timeout(WAIT).await.unwrap();
    let got: Vec<_> = platform
        .messages()
        .into_iter()
        .map(|m| {
            let o = m.message;
            (
                o.kind,
                o.batch_id.as_deref().map(str::to_owned),
                o.batch_slice_id.as_deref().map(str::to_owned),
                o.message_id.as_deref().map(str::to_owned),
                o.chunk_id.as_deref().map(str::to_owned),
                m.decoded_payload,
            )
        })
        .collect();
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        got,
        vec![
            (MessageKind::Data, s("b1"), None, s("m1"), None, b"a".to_vec()),
            (MessageKind::Data, s("b1"), s("s1"), s("m2"), s("c1"), b"b".to_vec()),
            (MessageKind::MessageCompletion, s("b1"), None, s("m2"), None, vec![]),
            (MessageKind::BatchCompletion, s("b1"), None, None, None, vec![]),
            (MessageKind::Data, s("b2"), None, None, s("c9"), b"c".to_vec()),
        ]
    );
    let first = &platform.messages()[0].message;
    assert_eq!(first.target.stream_group.as_deref(), Some("sg 1"));
    assert_eq!(first.target.stream.as_deref(), Some("st/1"));
}

#[tokio::test]
async fn send_message_returns_only_once_acknowledged() {
    let platform = MemoryPlatform::new();
    platform.set_ack_mode(AckMode::Hold);
    let store = new_store();
    let client = start(&platform, &store).await;
    let sender = client.create_stream_sender(None, None, Compression::Uncompressed).unwrap();
    let send = tokio::spawn({
        let sender = sender.clone();
        async move { sender.send_message("wait for me").await }
    });
    assert!(platform.wait_until(WAIT, |p| p.received_count() == 1).await, "delivered");
    assert!(!send.is_finished(), "acknowledgement held: send_message must still wait");
    assert_eq!(client.pending_messages_count(), 1);
    assert_eq!(platform.release_held_acks(), 1);
    tokio::time::timeout(WAIT, send).await.unwrap().unwrap().unwrap();
    assert_eq!(client.pending_messages_count(), 0);
}

#[tokio::test]
async fn wait_enqueued_messages_sent_waits_for_every_earlier_message() {
    let platform = MemoryPlatform::new();
    platform.set_ack_mode(AckMode::Hold);
    let store = new_store();
    let client = start(&platform, &store).await;
    let sender = client.create_stream_sender(None, None, Compression::Uncompressed).unwrap();
    for i in 0..200 {
        sender.enqueue_message(format!("{i}")).await.unwrap();
    }
    assert_eq!(client.pending_messages_count(), 200);
    let wait = tokio::spawn({
        let client = client.clone();
        async move { client.wait_enqueued_messages_sent().await }
    });
    assert!(platform.wait_until(WAIT, |p| p.received_count() == 200).await);
    assert!(!wait.is_finished());
    platform.release_held_acks();
    tokio::time::timeout(WAIT, wait).await.unwrap().unwrap().unwrap();
    assert_eq!(client.pending_messages_count(), 0);
}

#[tokio::test]
async fn delayed_acknowledgements_keep_many_messages_in_flight() {
    let platform = MemoryPlatform::new();
    platform.set_ack_mode(AckMode::Delay(std::time::Duration::from_millis(200)));
    let store = new_store();
    let client = start(&platform, &store).await;
    let sender = client.create_stream_sender(None, None, Compression::Uncompressed).unwrap();
    for i in 0..500 {
        sender.enqueue_message(format!("{i}")).await.unwrap();
    }
    // With one message in flight this would need 500 round trips of 200 ms; the window sends
    // all of them before the first acknowledgement arrives.
    assert!(platform.wait_until(WAIT, |p| p.received_count() == 500).await);
    assert!(client.pending_messages_count() > 0, "acknowledgements still delayed");
    client.wait_enqueued_messages_sent_timeout(WAIT).await.unwrap();
}

#[tokio::test]
async fn compression_round_trips_for_every_setting() {
    let platform = MemoryPlatform::new();
    let store = new_store();
    let client = start(&platform, &store).await;
    let payload: String =
        (0..100).map(|i| format!("{{\"t\":{i},\"temperatureCelsius\":21.5,\"humidityPercent\":50.1}}")).collect();
    let expected = [
        (Compression::Uncompressed, None),
        (Compression::Fastest, Some(ContentEncoding::Brotli)),
        (Compression::SmallestSize, Some(ContentEncoding::Brotli)),
        (Compression::Lz4, Some(ContentEncoding::Lz4)),
        (Compression::Zstd { level: 3 }, Some(ContentEncoding::Zstd)),
    ];
    for (compression, _) in expected {
        let sender = client.create_stream_sender(None, None, compression).unwrap();
        sender.send_message(payload.clone()).await.unwrap();
        // Incompressible and empty payloads go as they are.
        sender.send_message(vec![7u8]).await.unwrap();
    }
    let messages = platform.messages();
    assert_eq!(messages.len(), 2 * expected.len());
    for (i, (_, encoding)) in expected.iter().enumerate() {
        let m = &messages[2 * i];
        assert_eq!(m.message.content_encoding, *encoding);
        assert_eq!(m.decoded_payload, payload.as_bytes());
        if encoding.is_some() {
            assert!(m.message.payload.len() < payload.len() / 3, "actually compressed");
        }
        let tiny = &messages[2 * i + 1];
        assert_eq!((tiny.message.content_encoding, tiny.decoded_payload.clone()), (None, vec![7u8]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_lose_no_message_and_resend_only_unacknowledged_ones() {
    let platform = MemoryPlatform::new();
    let store = new_store();
    let window = 100;
    let client =
        builder(&platform, &store, Some("dev-1")).with_options(|o| o.max_in_flight = window).start().await.unwrap();
    let sender = client.create_stream_sender(None, Some("s"), Compression::Uncompressed).unwrap();
    let total = 5000;
    // Five times: hold acknowledgements, enqueue a fifth of the messages, wait until messages are
    // in flight, then cut the connection. (Enqueued per round: a producer running on its own
    // could finish and have everything acknowledged before a round held anything.)
    let publishes = |p: &MemoryPlatform| p.received_count() as usize + p.duplicates();
    let drops = 5;
    let chunk = total / drops;
    for round in 0..drops {
        platform.set_ack_mode(AckMode::Hold);
        let before = publishes(&platform);
        for i in round * chunk..(round + 1) * chunk {
            sender.enqueue_message(format!("{i}")).await.unwrap();
        }
        assert!(platform.wait_until(WAIT, |p| publishes(p) >= before + window / 2).await);
        platform.drop_connections();
        platform.set_ack_mode(AckMode::Immediate);
        wait_connections(&platform, 1).await;
    }
    client.wait_enqueued_messages_sent_timeout(WAIT).await.unwrap();
    let messages = platform.messages();
    assert_eq!(messages.len(), total, "every message delivered");
    let texts: Vec<String> = messages.iter().map(|m| String::from_utf8(m.decoded_payload.clone()).unwrap()).collect();
    let expected: Vec<String> = (0..total).map(|i| i.to_string()).collect();
    assert_eq!(texts, expected, "in order, none missing");
    // Only messages whose acknowledgement was lost with the connection (at most a window each
    // time) are sent again, and the platform recognises them by their sequence number.
    assert!(platform.duplicates() <= drops * window, "duplicates {}", platform.duplicates());
    assert!(platform.duplicates() > 0, "the test really cut connections with messages in flight");
    assert_eq!(client.pending_messages_count(), 0);
    assert!(platform.stats().connects > drops as u64);
}

/// Acknowledged messages are removed in batches, shortly after their acknowledgement: waits
/// (bounded by `WAIT`) until the store is empty.
async fn store_drained(store: &Arc<dyn Store>) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if store.queue_stats().await.unwrap().count == 0 {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_restart_resumes_leftover_messages() {
    let platform = MemoryPlatform::new();
    platform.set_ack_mode(AckMode::Refuse);
    let store = new_store();
    let client = start(&platform, &store).await;
    let sender = client.create_stream_sender(None, None, Compression::Fastest).unwrap();
    for i in 0..50 {
        sender.enqueue_message(format!("left over {i}")).await.unwrap();
    }
    assert!(platform.wait_until(WAIT, |p| p.received_count() == 50).await);
    client.close().await.unwrap();
    assert!(sender.enqueue_message("after close").await.is_err(), "closed client refuses work");
    platform.set_ack_mode(AckMode::Immediate);
    let client = start(&platform, &store).await;
    assert_eq!(client.pending_messages_count(), 50, "leftovers counted at start");
    client.wait_enqueued_messages_sent_timeout(WAIT).await.unwrap();
    assert_eq!(platform.duplicates(), 50, "re-sent after the restart, recognised by sequence number");
    assert!(store_drained(&store).await);
}

#[tokio::test]
async fn a_full_queue_rejects_new_messages_by_default_and_accepts_them_once_drained() {
    let (platform, store) = provisioned_then_offline().await;
    // Room for 10 messages of 100 bytes.
    let client =
        builder(&platform, &store, Some("dev-1")).with_options(|o| o.queue_budget_bytes = 1000).start().await.unwrap();
    let sender = client.create_stream_sender(None, None, Compression::Uncompressed).unwrap();
    let mut accepted = 0;
    let err = loop {
        match sender.enqueue_message(vec![b'x'; 100]).await {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted <= 10, "the budget is enforced");
    };
    assert_eq!(accepted, 10);
    assert!(matches!(err, spotflow_core::Error::QueueFull { bytes: 1000, budget: 1000 }), "{err}");
    assert!(err.is_temporary());
    platform.set_offline(false);
    client.wait_enqueued_messages_sent_timeout(WAIT).await.unwrap();
    sender.enqueue_message(vec![b'y'; 100]).await.expect("room again");
    client.wait_enqueued_messages_sent_timeout(WAIT).await.unwrap();
    assert_eq!(platform.messages().len(), 11, "nothing queued was lost");
}

#[tokio::test]
async fn the_drop_oldest_policy_keeps_the_newest_messages() {
    let (platform, store) = provisioned_then_offline().await;
    let client = builder(&platform, &store, Some("dev-1"))
        .with_options(|o| {
            o.queue_budget_bytes = 1000;
            o.queue_full_policy = spotflow_device::QueueFullPolicy::DropOldest;
        })
        .start()
        .await
        .unwrap();
    let sender = client.create_stream_sender(None, None, Compression::Uncompressed).unwrap();
    for i in 0..50u32 {
        sender.enqueue_message(format!("{i:0>100}")).await.unwrap();
    }
    assert_eq!(client.pending_messages_count(), 10);
    assert!(store.queue_stats().await.unwrap().bytes <= 1000);
    platform.set_offline(false);
    client.wait_enqueued_messages_sent_timeout(WAIT).await.unwrap();
    let got: Vec<String> =
        platform.messages().iter().map(|m| String::from_utf8(m.decoded_payload.clone()).unwrap()).collect();
    let expected: Vec<String> = (40..50u32).map(|i| format!("{i:0>100}")).collect();
    assert_eq!(got, expected, "the newest ten, in order");
}

/// A 16 MiB `SmallestSize` message (Brotli quality 11: seconds of work) is compressed off the
/// executor: on a single-threaded runtime, other tasks keep answering while it is enqueued.
#[tokio::test(flavor = "current_thread")]
async fn compressing_a_16_mib_smallest_size_message_does_not_stall_the_runtime() {
    let platform = MemoryPlatform::new();
    let store = new_store();
    let client = start(&platform, &store).await;
    let sender = client.create_stream_sender(None, Some("big"), Compression::SmallestSize).unwrap();
    // A repeated 4 KiB block: shrinks well, and quality 11 still takes over a second on it.
    let block: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let payload = block.repeat(4096);
    assert_eq!(payload.len(), 16 * 1024 * 1024);

    let (ping_tx, mut ping_rx) = tokio::sync::mpsc::channel::<tokio::sync::oneshot::Sender<()>>(1);
    let echo = tokio::spawn(async move {
        while let Some(reply) = ping_rx.recv().await {
            let _ = reply.send(());
        }
    });
    let enqueue = sender.enqueue_message(payload.clone());
    tokio::pin!(enqueue);
    let mut answered = 0;
    let enqueued_first = tokio::time::timeout(WAIT, async {
        loop {
            let (reply, pong) = tokio::sync::oneshot::channel();
            tokio::select! {
                biased;
                result = &mut enqueue => {
                    result.unwrap();
                    break true;
                }
                _ = async { ping_tx.send(reply).await.unwrap(); pong.await.unwrap() } => {
                    answered += 1;
                    if answered == 100 {
                        break false;
                    }
                }
            }
        }
    })
    .await
    .expect("the runtime answers");
    assert!(
        !enqueued_first,
        "the enqueue finished before another task could run {answered} times: it blocked the runtime"
    );
    // The compression finishes, and the message arrives whole, as Brotli.
    tokio::time::timeout(Duration::from_secs(600), &mut enqueue).await.expect("compressed within 600 s").unwrap();
    client.wait_enqueued_messages_sent_timeout(WAIT).await.unwrap();
    let messages = platform.messages();
    let big = messages.iter().find(|m| m.decoded_payload.len() == payload.len()).expect("the big message arrived");
    assert_eq!(big.message.content_encoding, Some(ContentEncoding::Brotli));
    assert!(big.message.payload.len() < 4096 * 2);
    assert!(big.decoded_payload == payload);
    drop(ping_tx);
    echo.await.unwrap();
}
