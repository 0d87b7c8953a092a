//! The store conformance suite: every [`Store`] backend must pass it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde_json::json;

use crate::{
    ConnectionCredentials, ContentEncoding, DesiredState, DeviceIdentity, MessageKind, OutgoingMessage, ReportedState,
    Secret, Store, StreamTarget,
};

/// A message whose payload encodes `n`, with every optional field set for odd `n`.
pub fn sample_message(n: u64) -> OutgoingMessage {
    let odd = n % 2 == 1;
    let id = |p: &str| odd.then(|| Arc::<str>::from(format!("{p}-{n}")));
    OutgoingMessage {
        target: Arc::new(StreamTarget {
            stream_group: odd.then(|| Arc::from("group")),
            stream: Some(Arc::from(format!("stream-{}", n % 3))),
        }),
        kind: match n % 5 {
            3 => MessageKind::BatchCompletion,
            4 => MessageKind::MessageCompletion,
            _ => MessageKind::Data,
        },
        batch_id: id("batch"),
        batch_slice_id: id("slice"),
        message_id: id("message"),
        chunk_id: id("chunk"),
        content_encoding: match n % 4 {
            1 => Some(ContentEncoding::Lz4),
            2 => Some(ContentEncoding::Zstd),
            _ => None,
        },
        payload: Bytes::from(format!("payload {n} {}", "x".repeat((n % 7) as usize))),
    }
}

/// Credentials of the device `ws:dev` on `hub_host` (SAS `sas`, no expiry), for transport tests
/// against fake servers.
pub fn sample_credentials(hub_host: &str) -> ConnectionCredentials {
    ConnectionCredentials {
        hub_host: hub_host.into(),
        hub_device_id: "ws:dev".into(),
        sas: Secret::new("sas"),
        expires_at: None,
    }
}

/// A complete identity, for round trips.
pub fn sample_identity(suffix: &str) -> DeviceIdentity {
    DeviceIdentity {
        instance: "localhost:8443".into(),
        provisioning_token: Secret::new(format!("pt-{suffix}")),
        requested_device_id: Some(format!("device-{suffix}")),
        registration_token: Secret::new(format!("rt-{suffix}")),
        registration_token_expires_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000)),
        workspace_id: format!("ws-{suffix}"),
        device_id: format!("device-{suffix}"),
        connection: Some(ConnectionCredentials {
            hub_host: "hub.local".into(),
            hub_device_id: format!("ws-{suffix}:device-{suffix}"),
            sas: Secret::new("SharedAccessSignature sr=x&sig=y&se=1"),
            expires_at: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_900_000_123_456)),
        }),
        queue_id: format!("q-{suffix}"),
    }
}

/// Runs the whole suite on a store that must be empty. Panics with a description on the first
/// violation of the contract.
pub async fn store_conformance(store: &dyn Store) {
    empty_store(store).await;
    append_and_read(store).await;
    remove_and_stats(store).await;
    identity_round_trip(store).await;
    properties_round_trip(store).await;
    clear_keeps_identity_and_sequence(store).await;
    concurrent_appends(store).await;
    cloud_inbox(store).await;
    update_record(store).await;
}

/// The software update's record: a store that keeps none says so on save (the default) and loads
/// none; one that keeps it loads what was saved last, also after the device's state is cleared.
async fn update_record(store: &dyn Store) {
    use crate::update::{UpdateMachine, UpdateManifest};
    assert_eq!(store.load_update().await.expect("load"), None, "an empty store has no update record");
    let manifest = UpdateManifest::from_json(&serde_json::json!({
        "id": "u1", "version": "2", "url": "https://example.invalid/a", "size": 10, "sha256": "0".repeat(64)
    }))
    .expect("manifest");
    let mut machine = UpdateMachine::default();
    machine.offer(manifest);
    machine.checkpoint(4);
    if store.save_update(&machine.record).await.is_err() {
        assert_eq!(store.load_update().await.expect("load"), None, "a store without update records loads none");
        return;
    }
    assert_eq!(store.load_update().await.expect("load").as_ref(), Some(&machine.record));
    machine.downloaded();
    store.save_update(&machine.record).await.expect("save");
    store.clear_device_state().await.expect("clear");
    assert_eq!(
        store.load_update().await.expect("load").as_ref(),
        Some(&machine.record),
        "the last one, kept by a clear"
    );
}

/// The cloud-to-device inbox: a store that keeps none says so on append (the default); one that
/// keeps one stores, reads in order, drops redeliveries by `$.mid` (held or completed), removes,
/// counts, and forgets it with the device's state.
async fn cloud_inbox(store: &dyn Store) {
    use crate::{CloudMessage, InboxAppend};
    let message = |mid: &str, payload: &'static [u8]| CloudMessage {
        properties: vec![("$.mid".into(), mid.into()), ("k".into(), "v".into())],
        payload: bytes::Bytes::from_static(payload),
    };
    let first = match store.append_cloud_message(&message("m1", b"\x00one")).await {
        Ok(InboxAppend::Stored(id)) => id,
        Ok(other) => panic!("a new inbox stored nothing: {other:?}"),
        Err(_) => {
            assert!(
                store.read_cloud_messages(None, 10).await.expect("read").is_empty(),
                "a store without an inbox reads none"
            );
            return;
        }
    };
    let second = store.append_cloud_message(&message("m2", b"two")).await.expect("append");
    assert!(matches!(second, InboxAppend::Stored(id) if id > first), "ids grow: {second:?}");
    assert_eq!(store.append_cloud_message(&message("m1", b"\x00one")).await.expect("append"), InboxAppend::AlreadyHeld);
    let read = store.read_cloud_messages(None, 10).await.expect("read");
    assert_eq!(read.len(), 2);
    assert_eq!(read[0].message, message("m1", b"\x00one"), "the message round-trips unchanged");
    assert_eq!(store.read_cloud_messages(Some(first), 10).await.expect("read").len(), 1);
    let (count, bytes) = store.cloud_inbox_stats().await.expect("stats");
    assert_eq!((count, bytes), (2, read.iter().map(|m| m.message.size()).sum()));
    assert!(store.remove_cloud_message(first).await.expect("remove"), "the message was there");
    assert!(!store.remove_cloud_message(first).await.expect("removing again is a no-op"));
    assert_eq!(
        store.append_cloud_message(&message("m1", b"\x00one")).await.expect("append"),
        InboxAppend::AlreadyCompleted
    );
    assert_eq!(store.read_cloud_messages(None, 10).await.expect("read").len(), 1);
    store.clear_device_state().await.expect("clear");
    assert!(store.read_cloud_messages(None, 10).await.expect("read").is_empty(), "cleared with the device's state");
}

async fn empty_store(store: &dyn Store) {
    let stats = store.queue_stats().await.expect("queue_stats");
    assert_eq!(stats.count, 0, "a new store must be empty");
    assert_eq!(stats.bytes, 0);
    assert!(store.read_messages(None, 10).await.expect("read").is_empty());
    assert!(store.load_identity().await.expect("load_identity").is_none());
    assert!(store.load_desired().await.expect("load_desired").is_none());
    assert_eq!(store.load_reported().await.expect("load_reported"), ReportedState::default());
    store.remove_messages(&[1, 2, 3]).await.expect("removing unknown messages is a no-op");
}

async fn append_and_read(store: &dyn Store) {
    let first = store.append_message(sample_message(0)).await.expect("append one");
    let second = store.append_messages((1..20).map(sample_message).collect()).await.expect("append many");
    assert_eq!(second, first + 1, "sequence numbers must be consecutive");
    let all = store.read_messages(None, 100).await.expect("read all");
    assert_eq!(all.len(), 20);
    for (i, m) in all.iter().enumerate() {
        assert_eq!(m.seq, first + i as u64, "sequence order");
        assert_eq!(m.message, sample_message(i as u64), "message {i} must round-trip unchanged");
    }
    let page = store.read_messages(Some(first + 4), 3).await.expect("read page");
    assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![first + 5, first + 6, first + 7]);
    assert!(store.read_messages(Some(first + 19), 10).await.expect("read past end").is_empty());
    assert!(store.append_messages(vec![]).await.is_ok(), "appending nothing is allowed");
    let stats = store.queue_stats().await.expect("stats");
    assert_eq!(stats.count, 20);
    assert_eq!(stats.last_seq, Some(first + 19));
    let expected: u64 = (0..20).map(|n| sample_message(n).queued_size()).sum();
    assert_eq!(stats.bytes, expected, "byte size counts payloads and ids");
}

async fn remove_and_stats(store: &dyn Store) {
    let all = store.read_messages(None, 100).await.expect("read");
    let first = all[0].seq;
    // Out of order, from the middle, duplicates and unknown numbers.
    store.remove_messages(&[first + 5, first + 2, first + 5, first + 1_000_000]).await.expect("remove some");
    store.remove_messages(&[first, first + 1]).await.expect("remove prefix");
    let left = store.read_messages(None, 100).await.expect("read");
    let seqs: Vec<u64> = left.iter().map(|m| m.seq).collect();
    let expected: Vec<u64> =
        (first..first + 20).filter(|s| ![first, first + 1, first + 2, first + 5].contains(s)).collect();
    assert_eq!(seqs, expected, "removed messages must be gone, the rest in order");
    let from_cursor = store.read_messages(Some(first + 1), 2).await.expect("read after removed");
    assert_eq!(from_cursor.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![first + 3, first + 4]);
    let stats = store.queue_stats().await.expect("stats");
    assert_eq!(stats.count, 16);
    let expected_bytes: u64 = left.iter().map(|m| m.message.queued_size()).sum();
    assert_eq!(stats.bytes, expected_bytes);
    store.remove_messages(&seqs).await.expect("remove all");
    let stats = store.queue_stats().await.expect("stats");
    assert_eq!((stats.count, stats.bytes), (0, 0));
    assert_eq!(stats.last_seq, Some(first + 19), "last_seq survives removal");
    let next = store.append_message(sample_message(1)).await.expect("append after emptying");
    assert!(next > first + 19, "sequence numbers are never reused");
    store.remove_messages(&[next]).await.expect("remove");
}

async fn identity_round_trip(store: &dyn Store) {
    let a = sample_identity("a");
    store.save_identity(&a).await.expect("save identity");
    assert_eq!(store.load_identity().await.expect("load").as_ref(), Some(&a));
    let mut b = sample_identity("b");
    b.requested_device_id = None;
    b.registration_token_expires_at = None;
    b.connection = None;
    store.save_identity(&b).await.expect("overwrite identity");
    assert_eq!(store.load_identity().await.expect("load").as_ref(), Some(&b));
}

async fn properties_round_trip(store: &dyn Store) {
    let desired = DesiredState {
        version: 42,
        values: json!({"interval": 5, "nested": {"a": [1, 2, null], "b": "ü"}}).as_object().cloned().unwrap(),
    };
    store.save_desired(&desired).await.expect("save desired");
    assert_eq!(store.load_desired().await.expect("load desired"), Some(desired));
    let reported = ReportedState {
        confirmed: json!({"fw": "1.0"}).as_object().cloned().unwrap(),
        target: Some(json!({"fw": "1.1", "uptime": 3}).as_object().cloned().unwrap()),
    };
    store.save_reported(&reported).await.expect("save reported");
    assert_eq!(store.load_reported().await.expect("load reported"), reported);
    let no_target = ReportedState { target: None, ..reported };
    store.save_reported(&no_target).await.expect("save reported");
    assert_eq!(store.load_reported().await.expect("load reported"), no_target);
}

async fn clear_keeps_identity_and_sequence(store: &dyn Store) {
    let before = store.append_messages((0..3).map(sample_message).collect()).await.expect("append");
    store.clear_device_state().await.expect("clear");
    assert_eq!(store.queue_stats().await.expect("stats").count, 0, "clear empties the queue");
    assert!(store.load_desired().await.expect("load desired").is_none(), "clear forgets desired");
    assert_eq!(store.load_reported().await.expect("load reported"), ReportedState::default());
    assert!(store.load_identity().await.expect("load identity").is_some(), "clear keeps the identity");
    let after = store.append_message(sample_message(0)).await.expect("append");
    assert!(after > before + 2, "sequence numbers are not reused after clear");
    store.remove_messages(&[after]).await.expect("remove");
}

async fn concurrent_appends(store: &dyn Store) {
    // Eight writers interleave; each writer's own messages must stay in its order.
    let writers = 8u64;
    let per_writer = 50u64;
    let mut handles = Vec::new();
    for w in 0..writers {
        handles.push(async move {
            let mut seqs = Vec::new();
            for i in 0..per_writer {
                let mut m = sample_message(i);
                m.payload = Bytes::from(format!("{w}:{i}"));
                seqs.push(store.append_message(m).await.expect("concurrent append"));
            }
            seqs
        });
    }
    let results = join_all(handles).await;
    let mut all: Vec<u64> = results.iter().flatten().copied().collect();
    for seqs in &results {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "a writer's messages keep its order");
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len() as u64, writers * per_writer, "every append gets its own sequence number");
    let stored = store.read_messages(None, 10_000).await.expect("read");
    assert_eq!(stored.len() as u64, writers * per_writer);
    for w in 0..writers {
        let mine: Vec<String> = stored
            .iter()
            .map(|m| String::from_utf8_lossy(&m.message.payload).into_owned())
            .filter(|p| p.starts_with(&format!("{w}:")))
            .collect();
        let expected: Vec<String> = (0..per_writer).map(|i| format!("{w}:{i}")).collect();
        assert_eq!(mine, expected, "writer {w}'s messages in order");
    }
    let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    store.remove_messages(&seqs).await.expect("remove");
}

/// Polls futures concurrently on the current task, and returns their outputs in order (keeps
/// tests free of runtime specifics).
pub async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    // A simple round-robin join: pin all futures and poll them until each is ready.
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("all futures completed")).collect()
}

/// For a durable store opened with a free-space reserve larger than any disk: appends are refused
/// before anything is written, with a clear, temporary error.
pub async fn refuses_appends_without_free_space(store: &dyn Store) {
    let err = store.append_message(sample_message(0)).await.unwrap_err();
    assert!(err.to_string().contains("not enough free disk space"), "{err}");
    assert!(err.is_temporary());
    assert_eq!(store.queue_stats().await.unwrap().count, 0, "nothing half-written");
}
