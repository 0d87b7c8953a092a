//! Fills the disk under a durable store, for the full-disk test. Run it on a small file system of
//! its own (a tmpfs in a private mount namespace, set up by the test); it remounts it bigger
//! itself. Usage: `full-disk-child BACKEND DIR`. The store is opened without a free-space
//! reserve, so that the file system's own ENOSPC is what stops the appends.
//!
//! Prints `FULL <acknowledged> <error>` once appends fail, `STILL_FULL <error>` if they keep
//! failing, `REOPENED_FULL <messages found> <intact>` (or `REOPEN_FULL_FAILED <error>`) after the
//! store was closed and opened again on the full disk, `REOPENED <messages found> <intact>` after
//! the file system grew and the store was opened again, and `APPENDED` once an append succeeds
//! again. Exits 0 when all of it happened.

use std::path::Path;

use spotflow_core::testkit::sample_message;
use spotflow_core::{OutgoingMessage, QueuedMessage, Store};

fn message(i: u64) -> OutgoingMessage {
    OutgoingMessage { payload: bytes::Bytes::from(format!("{i:08} {}", "f".repeat(4000))), ..sample_message(0) }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, backend, dir] = &args[..] else {
        eprintln!("usage: full-disk-child BACKEND DIR");
        std::process::exit(2);
    };
    let db = Path::new(dir).join("device.db");
    let store = spotflow_store_tests::open_with_reserve(backend, &db, Some(0)).await.expect("opens");
    let mut acked = Vec::new();
    let mut error = None;
    for i in 0..100_000u64 {
        match store.append_message(message(i)).await {
            Ok(seq) => acked.push((seq, i)),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let Some(error) = error else {
        eprintln!("the file system never filled up");
        std::process::exit(4);
    };
    println!("FULL {} {error}", acked.len());
    // Still full: appends keep failing cleanly (no panic, no hang).
    if let Err(e) = store.append_message(message(u64::MAX)).await {
        println!("STILL_FULL {e}");
    }
    // Closed and opened again while the disk is still full: it opens with everything
    // acknowledged, or fails with an error (it must not panic, hang or lose anything).
    if let Err(e) = store.close().await {
        eprintln!("close on a full disk: {e}");
    }
    drop(store);
    match spotflow_store_tests::open_with_reserve(backend, &db, Some(0)).await {
        Ok(store) => {
            let stored = store.read_messages(None, usize::MAX).await.expect("reads");
            println!("REOPENED_FULL {} {}", stored.len(), intact(&acked, &stored));
            if let Err(e) = store.close().await {
                eprintln!("close on a full disk: {e}");
            }
        }
        Err(e) => println!("REOPEN_FULL_FAILED {e}"),
    }
    let grown = std::process::Command::new("mount").args(["-o", "remount,size=256m", dir]).status();
    if !grown.is_ok_and(|s| s.success()) {
        eprintln!("cannot grow the file system");
        std::process::exit(5);
    }
    let store = spotflow_store_tests::open_with_reserve(backend, &db, Some(0)).await.expect("reopens");
    let stored = store.read_messages(None, usize::MAX).await.expect("reads");
    println!("REOPENED {} {}", stored.len(), intact(&acked, &stored));
    store.append_message(message(1_000_000)).await.expect("appends once there is room");
    println!("APPENDED");
    store.close().await.expect("closes");
}

/// Every acknowledged message stored once, with its payload.
fn intact(acked: &[(u64, u64)], stored: &[QueuedMessage]) -> bool {
    acked
        .iter()
        .all(|(seq, i)| stored.iter().filter(|m| m.seq == *seq).map(|m| &m.message.payload).eq([&message(*i).payload]))
}
