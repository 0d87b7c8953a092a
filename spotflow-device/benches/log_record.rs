//! The cost of one `tracing::info!` (a message and two fields, inside a span) through the
//! device logs' layer, in ns per call and CPU per record, against the usual non-durable way of
//! keeping logs: `tracing_subscriber::fmt` writing the same events to a file. Over the in-memory
//! platform (MemoryStore + MemoryPlatform), so that the figures are those of the logging path:
//! the calling thread's journal write, and the mover's batching, compression and enqueueing on
//! the runtime's threads.
//!
//! Columns: ns per call on the calling thread (median of the rounds), the calling thread's CPU
//! per record, and the whole process's CPU per record (the mover and the queue included).
//!
//! Run: `cargo bench -p spotflow-device --features logs --bench log_record [-- --records N --rounds R]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use spotflow_core::testkit::MemoryPlatform;
use spotflow_core::MemoryStore;
use spotflow_device::logs::{DeviceLogger, JournalLocation, LogOptions};
use spotflow_device::DeviceClient;
use tracing_subscriber::prelude::*;

/// CPU time (user + system) of `/proc/{what}/stat` (`self` or `thread-self`).
fn cpu(what: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{what}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<u64>().ok()).sum();
    Duration::from_millis(ticks * 10)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Figures {
    ns_per_call: f64,
    thread_cpu_ns: f64,
    process_cpu_ns: f64,
}

/// Logs `records` events through `dispatch` on this thread; the process's CPU is counted until
/// `settle` returns (the work left to background threads).
fn measure(dispatch: &tracing::Dispatch, records: u64, settle: impl FnOnce()) -> Figures {
    let (process0, thread0) = (cpu("self"), cpu("thread-self"));
    let started = Instant::now();
    tracing::dispatcher::with_default(dispatch, || {
        let span = tracing::info_span!("cycle", pump = 3);
        let _entered = span.enter();
        for i in 0..records {
            tracing::info!(i, bar = 7.5, "pressure high");
        }
    });
    let elapsed = started.elapsed();
    let thread = cpu("thread-self") - thread0;
    settle();
    let process = cpu("self") - process0;
    let per = |d: Duration| d.as_nanos() as f64 / records as f64;
    Figures { ns_per_call: per(elapsed), thread_cpu_ns: per(thread), process_cpu_ns: per(process) }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut records, mut rounds) = (200_000u64, 5usize);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--records" => records = args.next().and_then(|v| v.parse().ok()).expect("--records N"),
            "--rounds" => rounds = args.next().and_then(|v| v.parse().ok()).expect("--rounds R"),
            _ => {}
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let platform = MemoryPlatform::new();
    let client = rt
        .block_on(
            DeviceClient::builder(Some("bench"), "memory-provisioning-token", dir.path().join("bench.db"))
                .platform_api(Arc::new(platform.clone()))
                .transport(Arc::new(platform.clone()))
                .store(Arc::new(MemoryStore::new()))
                .display_provisioning_operation_callback(|_| {})
                .start(),
        )
        .expect("client");
    let options =
        |journal| LogOptions { journal, max_records_per_second: u32::MAX, budget_bytes: 1 << 40, ..Default::default() };
    let file_logger = rt.block_on(DeviceLogger::start(&client, options(JournalLocation::BesideDatabase))).unwrap();
    let memory_logger = rt.block_on(DeviceLogger::start(&client, options(JournalLocation::Memory))).unwrap();
    let fmt_file = std::fs::File::create(dir.path().join("fmt.log")).unwrap();
    let fmt_file = Arc::new(fmt_file);

    let settle = |logger: &DeviceLogger| {
        rt.block_on(async {
            logger.flush().await.expect("flush");
            client.wait_enqueued_messages_sent_timeout(Duration::from_secs(120)).await.expect("acknowledged");
        })
    };
    let mut rows: Vec<(&str, Vec<Figures>)> = vec![
        ("DeviceLogger layer, journal file (kill -9 safe)", Vec::new()),
        ("DeviceLogger layer, journal in memory", Vec::new()),
        ("tracing_subscriber::fmt to a file (not durable)", Vec::new()),
    ];
    for round in 0..rounds {
        let d = tracing::Dispatch::new(tracing_subscriber::registry().with(file_logger.layer()));
        rows[0].1.push(measure(&d, records, || settle(&file_logger)));
        let d = tracing::Dispatch::new(tracing_subscriber::registry().with(memory_logger.layer()));
        rows[1].1.push(measure(&d, records, || settle(&memory_logger)));
        let f = fmt_file.clone();
        let d = tracing::Dispatch::new(
            tracing_subscriber::registry().with(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(f)),
        );
        rows[2].1.push(measure(&d, records, || {}));
        eprintln!("  round {} of {rounds} done", round + 1);
    }
    println!("{records} records per round, {rounds} rounds (medians):");
    println!("{:<52} {:>12} {:>16} {:>16}", "", "ns per call", "thread CPU ns", "process CPU ns");
    let fmt_ns = median(rows[2].1.iter().map(|f| f.ns_per_call).collect());
    for (name, figures) in &rows {
        let ns = median(figures.iter().map(|f| f.ns_per_call).collect());
        println!(
            "{name:<52} {ns:>12.0} {:>16.0} {:>16.0}   ({:.2}x fmt)",
            median(figures.iter().map(|f| f.thread_cpu_ns).collect()),
            median(figures.iter().map(|f| f.process_cpu_ns).collect()),
            ns / fmt_ns
        );
    }
    let stats = file_logger.stats();
    println!(
        "file journal: {} records taken, {} messages, {} dropped",
        stats.taken,
        stats.messages,
        stats.dropped_rate_limit + stats.dropped_budget + stats.dropped_io
    );
    rt.block_on(client.close()).unwrap();
}
