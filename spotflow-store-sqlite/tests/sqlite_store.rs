//! `SqliteStore`: the conformance suite, persistence across reopen, and the failure cases: a
//! locked database, a corrupt file, a newer schema, the first released schema, a full database.

use std::sync::Arc;

use spotflow_core::testkit::{sample_identity, sample_message, store_conformance};
use spotflow_core::{Error, Store};
use spotflow_store_sqlite::{Durability, SqliteOptions, SqliteStore};

#[tokio::test]
async fn passes_the_conformance_suite_in_both_durability_levels() {
    for durability in [Durability::PowerLossSafe, Durability::CrashSafe] {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_async(dir.path().join("device.db"), durability).await.unwrap();
        store_conformance(&store).await;
        let shared: Arc<dyn Store> = Arc::new(store);
        assert_eq!(shared.queue_stats().await.unwrap().count, 0);
    }
}

#[tokio::test]
async fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let (first, last) = {
        let store = SqliteStore::open_async(&path, Durability::PowerLossSafe).await.unwrap();
        let first = store.append_messages((0..100).map(sample_message).collect()).await.unwrap();
        store.remove_messages(&[first, first + 1]).await.unwrap();
        store.save_identity(&sample_identity("x")).await.unwrap();
        store.close().await.unwrap();
        assert!(store.queue_stats().await.is_err(), "closed");
        (first, first + 99)
    };
    let store = SqliteStore::open_async(&path, Durability::PowerLossSafe).await.unwrap();
    let stats = store.queue_stats().await.unwrap();
    assert_eq!((stats.count, stats.last_seq), (98, Some(last)));
    let messages = store.read_messages(None, 1000).await.unwrap();
    assert_eq!(messages[0].seq, first + 2);
    assert_eq!(messages[0].message, sample_message(2));
    assert_eq!(store.load_identity().await.unwrap(), Some(sample_identity("x")));
    assert!(store.append_message(sample_message(1)).await.unwrap() > last, "sequence numbers never reused");
}

#[tokio::test]
async fn a_database_held_by_another_user_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let holder = SqliteStore::open_async(&path, Durability::PowerLossSafe).await.unwrap();
    holder.append_message(sample_message(0)).await.unwrap();
    let err = SqliteStore::open_async(&path, Durability::PowerLossSafe).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("used by another process") && text.contains("device.db"), "{text}");
    assert!(err.is_temporary());
}

#[tokio::test]
async fn a_corrupt_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&path, &garbage).unwrap();
    let err = SqliteStore::open_async(&path, Durability::PowerLossSafe).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("device.db") && text.contains("not an SQLite database"), "{text}");
    assert!(!err.is_temporary());
    assert_eq!(std::fs::read(&path).unwrap(), garbage, "the file is not overwritten");
}

/// Found by fuzzing (`store_files`): a damaged schema in which `seq` is no longer the row id.
/// SQLite reads such a file without an error, and an accepted message could not be read back.
#[tokio::test]
async fn a_database_with_a_damaged_schema_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE messages (seq INTEGER PRIMARY000000000298REMENT, kind INTEGER NOT NULL, encoding INTEGER NOT NULL,
                 stream_group TEXT, stream TEXT, batch_id TEXT, batch_slice_id TEXT, message_id TEXT, chunk_id TEXT,
                 payload BLOB NOT NULL, size INTEGER NOT NULL);
             CREATE TABLE state (name TEXT PRIMARY KEY, json TEXT NOT NULL);
             PRAGMA user_version = 1;",
        )
        .unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = SqliteStore::open_async(&path, Durability::PowerLossSafe).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("device.db") && text.contains("schema (table messages)") && text.contains("corrupt"),
        "{text}"
    );
    assert!(!err.is_temporary());
    assert!(std::fs::read(&path).unwrap() == before, "the file is not changed");
}

#[tokio::test]
async fn a_database_from_a_newer_release_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    rusqlite::Connection::open(&path).unwrap().execute_batch("PRAGMA user_version = 99;").unwrap();
    let err = SqliteStore::open_async(&path, Durability::PowerLossSafe).await.unwrap_err();
    assert!(err.to_string().contains("newer release"), "{err}");
}

#[tokio::test]
async fn a_database_of_the_first_released_schema_opens_with_its_data() {
    // Schema 1 exactly as the first release created it, with a queued message and the identity.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind INTEGER NOT NULL, encoding INTEGER NOT NULL,
                 stream_group TEXT, stream TEXT, batch_id TEXT, batch_slice_id TEXT, message_id TEXT, chunk_id TEXT,
                 payload BLOB NOT NULL, size INTEGER NOT NULL);
             CREATE TABLE state (name TEXT PRIMARY KEY, json TEXT NOT NULL);
             PRAGMA user_version = 1;
             INSERT INTO messages (kind, encoding, stream_group, stream, batch_id, batch_slice_id, message_id, chunk_id, payload, size)
                 VALUES (0, 0, 'g', 's', 'b', NULL, 'm', NULL, x'68656c6c6f', 7);",
        )
        .unwrap();
        let identity = spotflow_core::persist::identity_to_json(&sample_identity("old")).to_string();
        c.execute("INSERT INTO state (name, json) VALUES ('identity', ?1)", [identity]).unwrap();
    }
    let store = SqliteStore::open_async(&path, Durability::PowerLossSafe).await.unwrap();
    let m = &store.read_messages(None, 10).await.unwrap()[0];
    assert_eq!((m.seq, &m.message.payload[..], m.message.message_id.as_deref()), (1, &b"hello"[..], Some("m")));
    assert_eq!(store.load_identity().await.unwrap(), Some(sample_identity("old")));
    assert_eq!(store.queue_stats().await.unwrap().bytes, 7);
}

#[tokio::test]
async fn a_full_database_fails_appends_clearly_and_recovers_after_removal() {
    let dir = tempfile::tempdir().unwrap();
    let store = tokio::task::spawn_blocking({
        let path = dir.path().join("device.db");
        move || {
            let mut o = SqliteOptions::default();
            o.max_bytes = Some(256 * 1024);
            SqliteStore::open_with_options(path, o)
        }
    })
    .await
    .unwrap()
    .unwrap();
    let mut accepted = Vec::new();
    let err = loop {
        let mut m = sample_message(0);
        m.payload = bytes::Bytes::from(vec![7u8; 4096]);
        match store.append_message(m).await {
            Ok(seq) => accepted.push(seq),
            Err(e) => break e,
        }
        assert!(accepted.len() < 10_000, "the limit is never reached");
    };
    assert!(matches!(err, Error::Store { .. }));
    assert!(err.to_string().contains("full"), "{err}");
    assert!(!accepted.is_empty());
    // Everything accepted is intact; removing makes room again.
    assert_eq!(store.read_messages(None, 100_000).await.unwrap().len(), accepted.len());
    store.remove_messages(&accepted[..accepted.len() / 2]).await.unwrap();
    store.append_message(sample_message(3)).await.expect("room again after removal");
}

#[tokio::test]
async fn too_little_free_disk_space_refuses_appends_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let store = tokio::task::spawn_blocking(move || {
        let mut o = SqliteOptions::default();
        // More free space than any disk has: the check must refuse the append.
        o.min_free_bytes = u64::MAX / 4;
        SqliteStore::open_with_options(path, o)
    })
    .await
    .unwrap()
    .unwrap();
    spotflow_core::testkit::refuses_appends_without_free_space(&store).await;
}

/// Hardening: the database holds the provisioning token, the registration token and the SAS. It
/// is owner-only (0600) from the first byte, its WAL too, and an older world-readable one is
/// tightened at open.
#[cfg(unix)]
#[tokio::test]
async fn the_database_and_its_wal_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let store = SqliteStore::open_async(&path, Durability::PowerLossSafe).await.unwrap();
    store.save_identity(&sample_identity("secret-holder")).await.unwrap();
    store.append_message(sample_message(1)).await.unwrap();
    assert_eq!(mode(&path), 0o600);
    let wal = dir.path().join("device.db-wal");
    assert!(wal.exists(), "WAL mode keeps a -wal file while open");
    assert_eq!(mode(&wal), 0o600);
    store.close().await.unwrap();
    // A database left world-readable (by an earlier version) is tightened, its data kept.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = SqliteStore::open_async(&path, Durability::PowerLossSafe).await.unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(store.load_identity().await.unwrap(), Some(sample_identity("secret-holder")));
    store.close().await.unwrap();
}

/// Appends and removals made on the caller's thread (a blocking caller's, as the blocking client
/// and Python make them) leave checkpoints to the store's thread (automatic checkpoints are off):
/// the WAL stays bounded (with checkpoints turned off it grew to 37 MB here).
#[test]
fn the_wal_is_checkpointed_when_callers_append_and_remove_on_their_own_thread() {
    for durability in [Durability::PowerLossSafe, Durability::CrashSafe] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.db");
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let store = SqliteStore::open(&path, durability).unwrap();
        spotflow_core::run_as_blocking_caller(|| {
            for i in 0..3_000 {
                let seq = rt.block_on(store.append_message(sample_message(i))).unwrap();
                rt.block_on(store.remove_messages(&[seq])).unwrap();
            }
        });
        assert_eq!(rt.block_on(store.queue_stats()).unwrap().count, 0);
        let wal = std::fs::metadata(dir.path().join("device.db-wal")).unwrap().len();
        assert!(wal < 8 * 1024 * 1024, "{durability:?}: the WAL grew to {wal} bytes");
        rt.block_on(store.close()).unwrap();
        let store = SqliteStore::open(&path, durability).unwrap();
        assert_eq!(rt.block_on(store.queue_stats()).unwrap().count, 0, "{durability:?}");
    }
}
