//! Fills the disk under a durable store, for the full-disk test. Run it on a small file system of
//! its own (a tmpfs in a private mount namespace, set up by the test); it remounts it bigger
//! itself. Usage: `full-disk-child BACKEND DIR`. The store is opened without a free-space
//! reserve, so that the file system's own ENOSPC is what stops the appends.
//!
//! Prints `FULL <acknowledged> <error>` once appends fail, `STILL_FULL <error>` if they keep
//! failing, `REOPENED <messages found> <intact>` after the file system grew and the store was
//! reopened, and `APPENDED` once an append succeeds again. Exits 0 when all of it happened.

use std::path::Path;

use spotflow_core::testkit::sample_message;
use spotflow_core::{OutgoingMessage, Store};

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
    let grown = std::process::Command::new("mount").args(["-o", "remount,size=256m", dir]).status();
    if !grown.is_ok_and(|s| s.success()) {
        eprintln!("cannot grow the file system");
        std::process::exit(5);
    }
    // A store whose write failed may refuse to close cleanly; it must reopen with everything
    // acknowledged.
    if let Err(e) = store.close().await {
        eprintln!("close after a full disk: {e}");
    }
    drop(store);
    let store = spotflow_store_tests::open_with_reserve(backend, &db, Some(0)).await.expect("reopens");
    let stored = store.read_messages(None, usize::MAX).await.expect("reads");
    let intact = acked
        .iter()
        .all(|(seq, i)| stored.iter().filter(|m| m.seq == *seq).map(|m| &m.message.payload).eq([&message(*i).payload]));
    println!("REOPENED {} {intact}", stored.len());
    store.append_message(message(1_000_000)).await.expect("appends once there is room");
    println!("APPENDED");
    store.close().await.expect("closes");
}
