//! Enqueue → acknowledged throughput of the SDK over the in-memory platform (MemoryStore +
//! MemoryPlatform), on one core (a current-thread Tokio runtime), with the number of heap
//! allocations per message.
//!
//! Run: `cargo bench -p spotflow-device --bench throughput` (add `-- --quick` for a short run).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use spotflow_core::testkit::MemoryPlatform;
use spotflow_core::MemoryStore;
use spotflow_device::{Compression, DeviceClient, Message};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Run {
    rate: f64,
    allocs_per_message: f64,
}

async fn one_run(messages: u64, compression: Compression) -> Run {
    let platform = MemoryPlatform::new();
    platform.set_record_messages(false);
    let client = DeviceClient::builder(Some("bench"), "memory-provisioning-token", "bench.db")
        .platform_api(Arc::new(platform.clone()))
        .transport(Arc::new(platform.clone()))
        .store(Arc::new(MemoryStore::new()))
        .display_provisioning_operation_callback(|_| {})
        .start()
        .await
        .expect("start");
    let sender = client.create_stream_sender(Some("bench"), Some("throughput"), compression).expect("sender");
    // Warm up the connection and buffers.
    let payload = Bytes::from(vec![b'x'; 256]);
    for _ in 0..1000 {
        sender.enqueue_message(payload.clone()).await.expect("enqueue");
    }
    client.wait_enqueued_messages_sent().await.expect("warm up");

    let allocs_before = ALLOCATIONS.load(Ordering::Relaxed);
    let start = Instant::now();
    for _ in 0..messages {
        sender.enqueue_message(Message::new(payload.clone())).await.expect("enqueue");
    }
    client.wait_enqueued_messages_sent().await.expect("drain");
    let elapsed = start.elapsed();
    let allocs = ALLOCATIONS.load(Ordering::Relaxed) - allocs_before;
    assert_eq!(platform.received_count(), messages + 1000, "every message acknowledged");
    client.close().await.expect("close");
    Run { rate: messages as f64 / elapsed.as_secs_f64(), allocs_per_message: allocs as f64 / messages as f64 }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (messages, runs) = if quick { (50_000, 3) } else { (500_000, 5) };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    println!("spotflow-device throughput over the in-memory platform: {messages} messages of 256 bytes, {runs} runs, one core");
    println!("{:<14} {:>16} {:>16} {:>14}", "compression", "median msg/s", "best msg/s", "allocs/msg");
    for (name, compression) in [
        ("uncompressed", Compression::Uncompressed),
        ("fastest (br)", Compression::Fastest),
        ("smallest (br)", Compression::SmallestSize),
        ("lz4", Compression::Lz4),
        ("zstd-3", Compression::Zstd { level: 3 }),
    ] {
        // Brotli quality 11 costs about 1 ms a message: fewer of them.
        let n = if compression == Compression::SmallestSize { messages / 250 } else { messages };
        let results: Vec<Run> = (0..runs).map(|_| rt.block_on(one_run(n, compression))).collect();
        let rates: Vec<f64> = results.iter().map(|r| r.rate).collect();
        let best = rates.iter().copied().fold(0.0, f64::max);
        let allocs = median(results.iter().map(|r| r.allocs_per_message).collect());
        println!("{name:<14} {:>16.0} {:>16.0} {:>14.2}", median(rates), best, allocs);
    }
}
