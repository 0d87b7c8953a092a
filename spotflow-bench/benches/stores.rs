//! Enqueue throughput of the durable stores (the senders on a current-thread runtime, the store on
//! its own thread) against the raw limit of this disk, measured in the
//! same run: 256-byte messages from 1, 8 and 64 concurrent senders; the drain side (acknowledged
//! deletes/s); and RSS and file size with 1,000,000 messages queued.
//!
//! Run: `cargo bench -p spotflow-bench --bench stores` (`-- --quick` skips the 1M run and
//! uses fewer messages).

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use spotflow_core::testkit::sample_message;
use spotflow_core::{OutgoingMessage, Store, StreamTarget};

fn message(target: &Arc<StreamTarget>) -> OutgoingMessage {
    OutgoingMessage { target: target.clone(), payload: bytes::Bytes::from(vec![b'x'; 256]), ..sample_message(0) }
}

/// fsync'd 256-byte appends to a plain file, one fsync per append.
fn raw_limit(dir: &std::path::Path, n: usize) -> f64 {
    let mut f = std::fs::File::create(dir.join("raw.bin")).expect("file");
    let block = [b'x'; 256];
    let start = Instant::now();
    for _ in 0..n {
        f.write_all(&block).expect("write");
        f.sync_data().expect("fsync");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn enqueue_rate(store: &Arc<dyn Store>, senders: usize, per_sender: usize) -> f64 {
    let target = Arc::new(StreamTarget::default());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..senders {
        let (store, target) = (store.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_sender {
                store.append_message(message(&target)).await.expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("sender");
    }
    (senders * per_sender) as f64 / start.elapsed().as_secs_f64()
}

/// Reads and removes everything in batches of 1000, as the SDK does with acknowledgements.
async fn drain_rate(store: &Arc<dyn Store>) -> f64 {
    let start = Instant::now();
    let mut removed = 0usize;
    let mut after = None;
    loop {
        let batch = store.read_messages(after, 1000).await.expect("read");
        let Some(last) = batch.last() else { break };
        after = Some(last.seq);
        let seqs: Vec<u64> = batch.iter().map(|m| m.seq).collect();
        store.remove_messages(&seqs).await.expect("remove");
        removed += seqs.len();
    }
    removed as f64 / start.elapsed().as_secs_f64()
}

/// Size of a file, or of every file below a directory (sled).
fn disk_usage(path: &std::path::Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|entries| entries.filter_map(Result::ok).map(|e| disk_usage(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--rss") {
        return rss_run(&args[i + 1], std::path::Path::new(&args[i + 2]));
    }
    let quick = args.iter().any(|a| a == "--quick");
    // `--only <backend>`: one backend, no 1M phase (for quick experiments).
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let runs = if quick { 1 } else { 3 };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = median((0..runs).map(|_| raw_limit(dir.path(), if quick { 1000 } else { 3000 })).collect());
    println!("256-byte enqueues/s (median of {runs} run(s)); raw limit: fsync'd 256-byte appends to a plain file = {raw:.0}/s");
    println!(
        "{:<26} {:>10} {:>10} {:>10} {:>8} {:>8} {:>12}",
        "backend", "1 sender", "8", "64", "1/raw", "64/raw", "drain del/s"
    );
    for &backend in spotflow_store_tests::BACKENDS.iter().filter(|b| only.as_deref().is_none_or(|o| o == **b)) {
        let mut by_senders = Vec::new();
        let mut drains = Vec::new();
        for senders in [1usize, 8, 64] {
            let total = match (backend, senders, quick) {
                (_, _, true) => 2_000,
                ("sqlite-power-loss-safe" | "sled", 1, _) => 5_000,
                _ => 50_000,
            };
            let rates: Vec<f64> = (0..runs)
                .map(|run| {
                    rt.block_on(async {
                        let path = dir.path().join(format!("{backend}-{senders}-{run}.db"));
                        let store = spotflow_store_tests::open(backend, &path).await.expect("open");
                        let rate = enqueue_rate(&store, senders, total / senders).await;
                        drains.push(drain_rate(&store).await);
                        store.close().await.expect("close");
                        rate
                    })
                })
                .collect();
            by_senders.push(median(rates));
        }
        println!(
            "{backend:<26} {:>10.0} {:>10.0} {:>10.0} {:>7.2}x {:>7.1}x {:>12.0}",
            by_senders[0],
            by_senders[1],
            by_senders[2],
            by_senders[0] / raw,
            by_senders[2] / raw,
            median(drains)
        );
    }
    if quick || only.is_some() {
        return;
    }
    println!("1,000,000 queued messages of 256 bytes (appended in batches of 1000), each backend in a fresh process:");
    for backend in spotflow_store_tests::BACKENDS {
        let out = std::process::Command::new(std::env::current_exe().expect("this benchmark"))
            .args(["--rss", backend, dir.path().to_str().expect("utf-8 path")])
            .output()
            .expect("child run");
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

/// The 1M-message phase of one backend, in its own process so that RSS is the backend's alone.
fn rss_run(backend: &str, dir: &std::path::Path) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let path = dir.join(format!("{backend}-1m.db"));
        let store = spotflow_store_tests::open(backend, &path).await.expect("open");
        let target = Arc::new(StreamTarget::default());
        let mut samples = vec![format!("{:.0}", rss_mib())];
        for k in 0..1000 {
            store.append_messages((0..1000).map(|_| message(&target)).collect()).await.expect("append");
            if k % 250 == 249 {
                samples.push(format!("{:.0}", rss_mib()));
            }
        }
        let size = disk_usage(&path) + disk_usage(&path.with_extension("db-wal"));
        println!(
            "  {backend:<26} RSS at 0/250k/500k/750k/1M: {} MiB; on disk {:.0} MB",
            samples.join("/"),
            size as f64 / 1e6
        );
        store.close().await.expect("close");
    });
}
