//! `SledStore`: the conformance suite, reopen, a locked directory, a file at the path.

use spotflow_core::testkit::{sample_identity, sample_message, store_conformance};
use spotflow_core::Store;
use spotflow_store_sled::{SledOptions, SledStore};

#[tokio::test]
async fn passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open_async_with_options(dir.path().join("device.db"), SledOptions::default()).await.unwrap();
    store_conformance(&store).await;
}

#[tokio::test]
async fn everything_survives_a_reopen_and_sequence_numbers_are_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let store = SledStore::open_async_with_options(&path, SledOptions::default()).await.unwrap();
    let first = store.append_messages((0..50).map(sample_message).collect()).await.unwrap();
    store.remove_messages(&[first + 49]).await.unwrap();
    store.save_identity(&sample_identity("s")).await.unwrap();
    store.close().await.unwrap();
    let store = SledStore::open_async_with_options(&path, SledOptions::default()).await.unwrap();
    let stats = store.queue_stats().await.unwrap();
    assert_eq!((stats.count, stats.last_seq), (49, Some(first + 49)));
    assert_eq!(store.read_messages(None, 100).await.unwrap()[3].message, sample_message(3));
    assert_eq!(store.load_identity().await.unwrap(), Some(sample_identity("s")));
    assert_eq!(store.append_message(sample_message(0)).await.unwrap(), first + 50);
}

#[tokio::test]
async fn a_store_held_by_another_user_or_a_file_at_the_path_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let _holder = SledStore::open_async_with_options(&path, SledOptions::default()).await.unwrap();
    let err = SledStore::open_async_with_options(&path, SledOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("device.db"), "{err}");
    let file = dir.path().join("file.db");
    std::fs::write(&file, b"not a directory").unwrap();
    let err = SledStore::open_async_with_options(&file, SledOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("is a file"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
}

/// A message of `n` with a payload between a few bytes and 9 KiB, so that chunks fill by count
/// and by size, and some messages are larger than a chunk.
fn message_of_size(n: u64) -> spotflow_core::OutgoingMessage {
    let mut m = sample_message(n);
    let len = match n % 11 {
        0 => 9 * 1024,
        1 | 2 => 700,
        _ => (n % 300) as usize,
    };
    m.payload = vec![(n % 251) as u8; len].into();
    m
}

/// Random appends, removals (in and out of order), reads from anywhere and reopens, checked
/// against a model of the queue after every step.
#[tokio::test]
async fn a_random_walk_of_appends_removals_reads_and_reopens_matches_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let mut store = SledStore::open_async_with_options(&path, SledOptions::default()).await.unwrap();
    let mut model = std::collections::BTreeMap::new();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |bound: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % bound
    };
    let mut last = 0;
    for step in 0..400 {
        match next(10) {
            0..=3 => {
                let bound = if next(4) == 0 { 120 } else { 6 };
                let n = 1 + next(bound);
                let batch: Vec<_> = (0..n).map(|i| message_of_size(last + 1 + i)).collect();
                let first = store.append_messages(batch.clone()).await.unwrap();
                assert_eq!(first, last + 1, "step {step}");
                for (i, m) in batch.into_iter().enumerate() {
                    model.insert(first + i as u64, m);
                }
                last = first + n - 1;
            }
            4..=6 if !model.is_empty() => {
                // Mostly the oldest ones, as acknowledgements come; sometimes scattered ones.
                let seqs: Vec<u64> = if next(2) == 0 {
                    model.keys().take(1 + next(80) as usize).copied().collect()
                } else {
                    model.keys().filter(|_| next(3) == 0).copied().chain([last + 5, 0]).collect()
                };
                store.remove_messages(&seqs).await.unwrap();
                for seq in seqs {
                    model.remove(&seq);
                }
            }
            7 | 8 => {
                let after = (next(3) != 0).then(|| next(last + 2));
                let limit = 1 + next(150) as usize;
                let got = store.read_messages(after, limit).await.unwrap();
                let want: Vec<_> = model.range(after.map_or(0, |a| a + 1)..).take(limit).collect();
                assert_eq!(got.len(), want.len(), "step {step}: read after {after:?} limit {limit}");
                for (g, (seq, m)) in got.iter().zip(want) {
                    assert_eq!((g.seq, &g.message), (*seq, m), "step {step}");
                }
            }
            _ => {
                store.close().await.unwrap();
                store = SledStore::open_async_with_options(&path, SledOptions::default()).await.unwrap();
            }
        }
        let stats = store.queue_stats().await.unwrap();
        let bytes: u64 = model.values().map(|m| m.queued_size()).sum();
        assert_eq!((stats.count, stats.bytes), (model.len() as u64, bytes), "step {step}");
        assert_eq!(stats.last_seq, (last > 0).then_some(last), "step {step}");
    }
    let all = store.read_messages(None, usize::MAX).await.unwrap();
    assert_eq!(all.iter().map(|q| q.seq).collect::<Vec<_>>(), model.keys().copied().collect::<Vec<_>>());
}

#[tokio::test]
async fn too_little_free_disk_space_refuses_appends_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = SledOptions::default();
    // More free space than any disk has: the check must refuse the append.
    options.min_free_bytes = u64::MAX / 4;
    let store = SledStore::open_async_with_options(dir.path().join("device.db"), options).await.unwrap();
    spotflow_core::testkit::refuses_appends_without_free_space(&store).await;
}

#[tokio::test]
async fn the_crash_safe_level_passes_the_conformance_suite_and_keeps_everything_at_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let mut options = SledOptions::default();
    options.durability = spotflow_store_sled::Durability::CrashSafe;
    let store = SledStore::open_async_with_options(&path, options).await.unwrap();
    store_conformance(&store).await;
    let first = store.append_messages((0..100).map(message_of_size).collect()).await.unwrap();
    store.close().await.unwrap();
    let store = SledStore::open_async_with_options(&path, options).await.unwrap();
    let all = store.read_messages(Some(first - 1), 1000).await.unwrap();
    assert_eq!(all.len(), 100);
    assert!(all.iter().zip(0..).all(|(q, n)| q.seq == first + n && q.message == message_of_size(n)));
}

/// Hardening: the store holds the device's tokens and SAS: its directory is owner-only (0700) and
/// its journal 0600; an older world-readable directory is tightened at open.
#[cfg(unix)]
#[tokio::test]
async fn the_store_directory_and_journal_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let store = SledStore::open_async_with_options(&path, SledOptions::default()).await.unwrap();
    store.save_identity(&sample_identity("secret-holder")).await.unwrap();
    assert_eq!(mode(&path), 0o700);
    assert_eq!(mode(&path.join("spotflow-journal")), 0o600);
    store.close().await.unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = SledStore::open_async_with_options(&path, SledOptions::default()).await.unwrap();
    assert_eq!(mode(&path), 0o700);
    assert_eq!(store.load_identity().await.unwrap(), Some(sample_identity("secret-holder")));
    store.close().await.unwrap();
}
