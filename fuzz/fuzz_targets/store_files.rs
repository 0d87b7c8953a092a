//! Whole store files, corrupted: the first byte picks the file, the rest is its content; the
//! other files of the store are those of a valid store (messages, removals, identity, desired
//! and reported properties written by the store itself once at start).
//!
//! | first byte % 5 | file replaced |
//! |---|---|
//! | 0 | SQLite: the database file |
//! | 1 | SQLite: the write-ahead log beside a valid database |
//! | 2 | sled: its data file `db` |
//! | 3 | sled: the append journal `spotflow-journal` |
//! | 4 | sled: its `conf` file |
//!
//! The store is opened and used as the SDK uses it (every state read, the queue read, an append,
//! a removal, the queue read again). A corrupted file must give an error, never a panic or a
//! hang; when an append is accepted, the queue must show it. (sled's own panics on the store's
//! thread while opening are turned into an error by the store; see `world`.)
//!
//! With `SPOTFLOW_FUZZ_WRITE_SEEDS=DIR`, the first run writes one seed per case (the valid
//! files) into DIR.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use spotflow_core::testkit::{sample_identity, sample_message};
use spotflow_core::{DesiredState, Durability, ReportedState, Store};
use spotflow_store_sled::SledStore;
use spotflow_store_sqlite::SqliteStore;

const SQLITE_FILE: &str = "device.db";
const SQLITE_WAL: &str = "device.db-wal";
const SLED_DIR: &str = "sled";

/// The files of a valid store, relative to its directory.
type Files = Vec<(PathBuf, Vec<u8>)>;

struct World {
    rt: tokio::runtime::Runtime,
    sqlite: Files,
    /// The database and its log copied while the store was open (the log not yet checkpointed).
    sqlite_with_wal: Files,
    sled: Files,
    scratch: PathBuf,
}

fn read_tree(root: &Path) -> Files {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push((path.strip_prefix(root).unwrap().to_path_buf(), std::fs::read(&path).unwrap()));
            }
        }
    }
    files
}

/// Fills a store as a device would: messages, removals, identity and properties.
async fn fill(store: &dyn Store) {
    let seqs: Vec<u64> = {
        let mut s = Vec::new();
        for n in 0..6 {
            s.push(store.append_message(sample_message(n)).await.unwrap());
        }
        s
    };
    store.remove_messages(&seqs[..2]).await.unwrap();
    store.save_identity(&sample_identity("fuzz")).await.unwrap();
    let mut values = serde_json::Map::new();
    values.insert("interval".into(), 5.into());
    store.save_desired(&DesiredState { version: 3, values: values.clone() }).await.unwrap();
    store.save_reported(&ReportedState { confirmed: values.clone(), target: Some(values) }).await.unwrap();
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        // sled 0.34 panics on some corrupted files; the store's thread catches that while opening
        // and answers with an error, which is what this target checks. Any other panic (and one
        // of sled's on any other thread) is a finding, as libfuzzer-sys's own hook makes it.
        let finding = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_sled = info.location().is_some_and(|l| l.file().contains("/sled-0.34"));
            if in_sled && std::thread::current().name() == Some("spotflow-sled") {
                eprintln!("sled panicked while the store opened it (the store answers with an error): {info}");
            } else {
                finding(info);
            }
        }));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // tmpfs when there is one: every execution writes and removes a store.
        let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let scratch = base.join(format!("spotflow-fuzz-store-files-{}", std::process::id()));
        let template = scratch.join("template");
        std::fs::create_dir_all(&template).unwrap();
        let (sqlite, sqlite_with_wal, sled) = rt.block_on(async {
            let dir = template.join("sqlite");
            std::fs::create_dir_all(&dir).unwrap();
            let store = SqliteStore::open_async(dir.join(SQLITE_FILE), Durability::PowerLossSafe).await.unwrap();
            fill(&store).await;
            let with_wal = read_tree(&dir);
            store.close().await.unwrap();
            drop(store);
            let sqlite = read_tree(&dir);
            let dir = template.join(SLED_DIR);
            let store = SledStore::open_async(&dir, Durability::PowerLossSafe).await.unwrap();
            fill(&store).await;
            // Closed without a flush of what the journal holds: the journal has records.
            let sled = read_tree(&dir);
            drop(store);
            (sqlite, with_wal, sled)
        });
        assert!(sqlite_with_wal.iter().any(|(p, _)| p == Path::new(SQLITE_WAL)), "the log exists while open");
        let _ = std::fs::remove_dir_all(&template);
        // The journal is preallocated with zeros, its records at the start: the template keeps
        // those (the store reads a short journal as well), not 5 MiB to write every run.
        let mut sled = sled;
        for (path, bytes) in &mut sled {
            if path == Path::new("spotflow-journal") {
                let used = bytes.len() - bytes.iter().rev().take_while(|b| **b == 0).count();
                bytes.truncate((used + 64).min(bytes.len()));
            }
        }
        if let Ok(out) = std::env::var("SPOTFLOW_FUZZ_WRITE_SEEDS") {
            let find = |files: &Files, name: &str| files.iter().find(|(p, _)| p == Path::new(name)).unwrap().1.clone();
            let seeds = [
                ("seed-sqlite-db", 0u8, find(&sqlite, SQLITE_FILE)),
                ("seed-sqlite-wal", 1, find(&sqlite_with_wal, SQLITE_WAL)),
                ("seed-sled-db", 2, find(&sled, "db")),
                ("seed-sled-journal", 3, find(&sled, "spotflow-journal")),
                ("seed-sled-conf", 4, find(&sled, "conf")),
            ];
            std::fs::create_dir_all(&out).unwrap();
            for (name, case, content) in seeds {
                let mut seed = vec![case];
                seed.extend(content);
                std::fs::write(Path::new(&out).join(name), seed).unwrap();
            }
        }
        World { rt, sqlite, sqlite_with_wal, sled, scratch }
    })
}

fn write_files(dir: &Path, files: &Files, replace: &str, content: &[u8]) {
    for (path, bytes) in files {
        let target = dir.join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        let bytes = if path == Path::new(replace) { content } else { bytes };
        std::fs::write(target, bytes).unwrap();
    }
    if !files.iter().any(|(p, _)| p == Path::new(replace)) {
        std::fs::write(dir.join(replace), content).unwrap();
    }
}

/// Uses the store as the SDK does; errors are fine, a panic is not.
async fn exercise(store: &dyn Store) {
    let _ = store.load_identity().await;
    let _ = store.load_desired().await;
    let _ = store.load_reported().await;
    let _ = store.queue_stats().await;
    let Ok(queued) = store.read_messages(None, 1000).await else { return };
    if let Ok(seq) = store.append_message(sample_message(99)).await {
        if let Ok(after) = store.read_messages(None, 100_000).await {
            assert!(after.iter().any(|m| m.seq == seq), "an accepted append is in the queue");
        }
    }
    if let Some(first) = queued.first() {
        let _ = store.remove_messages(&[first.seq]).await;
    }
    let _ = store.read_messages(None, 1000).await;
    let _ = store.close().await;
}

fuzz_target!(|data: &[u8]| {
    let Some((case, content)) = data.split_first() else { return };
    let w = world();
    let dir = w.scratch.join("run");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    w.rt.block_on(async {
        let run = async {
            match case % 5 {
                0 | 1 => {
                    let (files, name) =
                        if case % 5 == 0 { (&w.sqlite, SQLITE_FILE) } else { (&w.sqlite_with_wal, SQLITE_WAL) };
                    write_files(&dir, files, name, content);
                    if let Ok(store) = SqliteStore::open_async(dir.join(SQLITE_FILE), Durability::PowerLossSafe).await {
                        exercise(&store).await;
                    }
                }
                n => {
                    let name = ["db", "spotflow-journal", "conf"][usize::from(n - 2)];
                    let sled_dir = dir.join(SLED_DIR);
                    write_files(&sled_dir, &w.sled, name, content);
                    if let Ok(store) = SledStore::open_async(&sled_dir, Durability::PowerLossSafe).await {
                        exercise(&store).await;
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(8), run).await.expect("the store answers");
    });
    let _ = std::fs::remove_dir_all(&dir);
});
