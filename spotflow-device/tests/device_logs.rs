//! Device logs through the durable queue, against the emulator: what a record carries, what is
//! never taken (levels below the minimum, the SDK's own records), the remote level, the limits
//! and their reported drops, and records a stopped process left in its journal.

use std::time::Duration;

use serde_json::{json, Map, Value};
use spotflow_device::logs::{DeviceLogger, JournalLocation, LogLevel, LogOptions, LOG_LEVEL_PROPERTY};
use spotflow_device::DeviceClient;
use spotflow_emulator::logs::{LogEntry, LogQuery};
use spotflow_emulator::Emulator;
use tracing_subscriber::prelude::*;

mod common;

const WAIT: Duration = Duration::from_secs(30);

async fn emulator(dir: &std::path::Path) -> Emulator {
    Emulator::builder().auto_approve(Some(Duration::ZERO)).data_dir(dir).start().await.expect("emulator")
}

async fn device(emu: &Emulator, db: &std::path::Path) -> DeviceClient {
    common::on_emulator(
        DeviceClient::builder(Some("logger"), emu.create_provisioning_token(), db),
        emu,
        common::Proto::Mqtt,
    )
    .start()
    .await
    .expect("device starts")
}

fn quick_options() -> LogOptions {
    LogOptions { batch_interval: Duration::from_millis(100), ..Default::default() }
}

/// Waits (bounded) until the emulator holds at least `n` records of the device; returns them.
async fn records(emu: &Emulator, client: &DeviceClient, n: usize) -> Vec<LogEntry> {
    wait_for(emu, client, |got| got.len() >= n).await
}

/// Waits (bounded) until the device's records in the emulator satisfy `done`; returns them.
async fn wait_for(emu: &Emulator, client: &DeviceClient, done: impl Fn(&[LogEntry]) -> bool) -> Vec<LogEntry> {
    let hub_id = format!("{}:{}", client.workspace_id(), client.device_id());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = emu
            .logs(LogQuery { hub_device_id: Some(hub_id.clone()), limit: Some(100_000), ..Default::default() })
            .await;
        if done(&got) {
            return got;
        }
        if tokio::time::Instant::now() >= deadline {
            let messages = emu.messages(Default::default()).await;
            panic!("records not there within {WAIT:?}: {got:?}; messages: {messages:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_reach_the_platform_with_fields_and_spans_and_the_sdk_stays_out() {
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator(dir.path()).await;
    let client = device(&emu, &dir.path().join("device.db")).await;
    let logger = DeviceLogger::start(&client, quick_options()).await.unwrap();

    let subscriber = tracing_subscriber::registry().with(logger.layer());
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("cycle", n = 3);
        let _entered = span.enter();
        tracing::info!(bar = 7.5, valve = "open", ok = true, "pressure high");
        tracing::debug!("below the minimum level: not taken");
        tracing::warn!(target: "spotflow_device::worker", "the SDK's own record: not taken");
        tracing::warn!(target: "rumqttc::state", "a library of the SDK: not taken");
    });
    let bridge = logger.log_bridge();
    log::Log::log(
        &bridge,
        &log::Record::builder().level(log::Level::Warn).target("legacy").args(format_args!("from log {}", 1)).build(),
    );
    let fields: Map<String, Value> = json!({"code": 17}).as_object().unwrap().clone();
    assert!(logger.log_with_fields(LogLevel::Error, "direct", "a direct call", Some(&fields)));
    assert!(!logger.log(LogLevel::Trace, "direct", "below the minimum"));
    // Into the queue now (the mover would within its 100 ms).
    logger.flush().await.expect("flush");

    let got = records(&emu, &client, 3).await;
    assert_eq!(got.len(), 3, "{got:?}");
    let r: Vec<&Value> = got.iter().map(|e| &e.record).collect();
    assert_eq!((r[0]["level"].as_str(), r[0]["message"].as_str()), (Some("INFO"), Some("pressure high")));
    assert_eq!(r[0]["fields"], json!({"bar": 7.5, "valve": "open", "ok": true}));
    assert_eq!(r[0]["spans"], json!([{"name": "cycle", "fields": {"n": 3}}]));
    assert_eq!(r[0]["target"], "device_logs");
    assert!(r[0]["time"].as_str().is_some_and(|t| t.len() == 27 && t.ends_with('Z')), "{}", r[0]["time"]);
    assert_eq!((r[1]["target"].as_str(), r[1]["message"].as_str()), (Some("legacy"), Some("from log 1")));
    assert_eq!((r[2]["level"].as_str(), &r[2]["fields"]), (Some("ERROR"), &json!({"code": 17})));
    let seqs: Vec<u64> = r.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [0, 1, 2]);
    assert!(r.iter().all(|x| x["journal"] == r[0]["journal"]));
    assert_eq!(logger.stats().taken, 3);
    assert_eq!(emu.log_duplicates(), 0);
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_sets_the_level_and_drops_beyond_the_limits_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator(dir.path()).await;
    let client = device(&emu, &dir.path().join("device.db")).await;
    let hub_id = format!("{}:{}", client.workspace_id(), client.device_id());
    let options = LogOptions { max_records_per_second: 50, ..quick_options() };
    let logger = DeviceLogger::start(&client, options).await.unwrap();

    // The remote level, applied without a restart, and back to the local one when removed.
    let set_level = |level: Value| {
        let patch = json!({ LOG_LEVEL_PROPERTY: level }).as_object().unwrap().clone();
        emu.update_desired(&hub_id, patch).expect("desired properties updated");
    };
    let wait_level = |want: Option<LogLevel>| {
        let logger = logger.clone();
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            while logger.min_level() != want {
                assert!(tokio::time::Instant::now() < deadline, "level {want:?} not applied");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    set_level(json!("error"));
    wait_level(Some(LogLevel::Error)).await;
    assert!(!logger.log(LogLevel::Warn, "app", "below the remote level"));
    assert!(logger.log(LogLevel::Error, "app", "at the remote level"));
    set_level(Value::Null);
    wait_level(Some(LogLevel::Info)).await;

    // The rate limit: 50 records a second, the rest dropped, counted, and the count sent.
    let before = logger.stats();
    let taken = (0..200).filter(|i| logger.log(LogLevel::Info, "app", &format!("burst {i}"))).count() as u64;
    let stats = logger.stats();
    assert_eq!(taken + stats.dropped_rate_limit - before.dropped_rate_limit, 200, "{stats:?}");
    assert!(stats.dropped_rate_limit > 0 && taken <= 50, "{stats:?}");
    // The next record taken reports the drops before itself.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !logger.log(LogLevel::Info, "app", "after the burst") {
        assert!(tokio::time::Instant::now() < deadline, "no record taken after the burst");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = wait_for(&emu, &client, |got| got.last().is_some_and(|e| e.record["message"] == "after the burst")).await;
    // The drops are reported (by the mover's passes, and before the next record taken), in all.
    let reported: u64 = got
        .iter()
        .filter(|e| e.record["target"] == "spotflow_device::logs")
        .inspect(|e| assert_eq!(e.record["level"], "WARN"))
        .map(|e| e.record["fields"]["dropped_rate_limit"].as_u64().unwrap())
        .sum();
    assert_eq!(reported, logger.stats().dropped_rate_limit, "{got:?}");
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_drops_records_and_a_restart_moves_what_the_journal_kept() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("device.db");
    let emu = emulator(dir.path()).await;
    let client = device(&emu, &db).await;
    // A mover that waits an hour: the records stay in the journal, as when the process dies.
    let slow = LogOptions { batch_interval: Duration::from_secs(3600), budget_bytes: 8 * 1024, ..Default::default() };
    let logger = DeviceLogger::start(&client, slow).await.unwrap();
    let taken =
        (0..200).filter(|i| logger.log(LogLevel::Info, "app", &format!("record {i:03} {}", "x".repeat(80)))).count();
    let stats = logger.stats();
    assert!(taken < 200 && stats.dropped_budget == 200 - taken as u64, "{taken} taken, {stats:?}");
    // (The budget, and perhaps the mover's report of the drops.)
    assert!(stats.journal_bytes <= 8 * 1024 + 256, "{stats:?}");
    client.close().await.unwrap();
    drop(logger);

    // The next run moves them (and reports the drops) at its start.
    let client = device(&emu, &db).await;
    let logger = DeviceLogger::start(&client, quick_options()).await.unwrap();
    let app =
        |got: &[LogEntry]| -> Vec<LogEntry> { got.iter().filter(|e| e.record["target"] == "app").cloned().collect() };
    let got = wait_for(&emu, &client, |got| app(got).len() >= taken).await;
    let kept = app(&got);
    assert_eq!(kept.len(), taken, "{got:?}");
    for (i, e) in kept.iter().enumerate() {
        assert!(e.record["message"].as_str().unwrap().starts_with(&format!("record {i:03}")), "{e:?}");
    }
    let seqs: Vec<u64> = got.iter().map(|e| e.record["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..got.len() as u64).collect::<Vec<_>>());
    let taken = got.len();
    // Numbering goes on where the journal left it.
    assert!(logger.log(LogLevel::Info, "app", "second run"));
    let got = records(&emu, &client, taken + 1).await;
    assert_eq!(got.last().unwrap().record["seq"].as_u64(), Some(taken as u64));
    assert_eq!(emu.log_duplicates(), 0);

    // One logger per journal in a process.
    let again = DeviceLogger::start(&client, quick_options()).await.expect_err("the journal is taken");
    assert!(again.to_string().contains("another DeviceLogger"), "{again}");
    assert!(DeviceLogger::start(&client, LogOptions { journal: JournalLocation::Memory, ..quick_options() })
        .await
        .is_ok());
    client.close().await.unwrap();
}
