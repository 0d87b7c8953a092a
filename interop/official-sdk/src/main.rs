//! Drives the official `spotflow` 0.8.1 device SDK against the emulator. Protocol with the
//! orchestrating test, one line each on stdout:
//! `OPERATION <id>` when provisioning waits for approval, `SENT <n>` after enqueueing,
//! `DESIRED <version> <json>` for each desired-properties callback, `DONE` at the end.
//!
//! Environment: `INSTANCE` (e.g. `localhost:8443`), `PROVISIONING_TOKEN`, `DB_PATH`,
//! `MESSAGES` (default 1000), `DESIRED_VERSION` (wait until this desired version arrives),
//! `SSL_CERT_FILE` (the emulator's CA). With `BENCH` set: only enqueue `MESSAGES` 256-byte messages.
//! With `SOAK_SECONDS` set: enqueue at `RATE` for that long (see [`soak`]).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use spotflow::{
    DesiredProperties, DesiredPropertiesUpdatedCallback, DeviceClient, DeviceClientBuilder, MessageContext,
    ProvisioningOperation, ProvisioningOperationDisplayHandler,
};

struct Display;

impl ProvisioningOperationDisplayHandler for Display {
    fn display(&self, op: &ProvisioningOperation) -> Result<()> {
        say(&format!("OPERATION {}", op.id));
        Ok(())
    }
}

struct Desired;

/// The newest desired version the callback has printed. The official SDK calls the callback on
/// its own thread, after `desired_properties_if_newer` can already see the version, so `DONE`
/// waits for it too (or the orchestrator would miss the `DESIRED` line).
static CALLBACK_VERSION: AtomicU64 = AtomicU64::new(0);

impl DesiredPropertiesUpdatedCallback for Desired {
    fn properties_updated(&self, p: DesiredProperties) -> Result<()> {
        say(&format!("DESIRED {} {}", p.version, p.values));
        CALLBACK_VERSION.fetch_max(p.version, Ordering::SeqCst);
        Ok(())
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn env(name: &str) -> Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}

/// Updates the reported properties and waits (60 s at most) until they are sent.
fn report(client: &DeviceClient, json: &str) -> Result<()> {
    client.update_reported_properties(json)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.any_pending_reported_properties_updates()? {
        if Instant::now() > deadline {
            bail!("reported properties not sent within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Waits (at most `timeout`) until desired properties of version `wanted` or newer arrive; says
/// `GOT <version>`. Then waits (within the same deadline) until the callback has seen them too.
fn await_desired(client: &DeviceClient, wanted: u64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(d) = client.desired_properties_if_newer(wanted - 1) {
            say(&format!("GOT {}", d.version));
            break;
        }
        if Instant::now() > deadline {
            bail!("desired properties version {wanted} did not arrive");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    while CALLBACK_VERSION.load(Ordering::SeqCst) < wanted {
        if Instant::now() > deadline {
            bail!("the desired-properties callback did not see version {wanted}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A payload of the golden scenario (`interop/golden/scenario.txt`): the generators shared with
/// our SDK's golden test (`spotflow_core::testkit::golden`), so both send the same bytes.
fn scenario_payload(spec: &str) -> Result<Vec<u8>> {
    spotflow_core::testkit::golden::scenario_payload(spec).with_context(|| format!("unknown payload {spec:?}"))
}

fn percent_decode(s: &str) -> Result<String> {
    spotflow_core::testkit::golden::percent_decode(s).with_context(|| format!("bad escape in {s:?}"))
}

/// `SCENARIO=<file>`: runs the golden scenario with the official SDK (see the scenario file).
fn run_scenario(path: &str) -> Result<()> {
    let instance = env("INSTANCE")?;
    let token = env("PROVISIONING_TOKEN")?;
    let db = env("DB_PATH")?;
    let script = std::fs::read_to_string(path)?;
    let client = DeviceClientBuilder::new(Some("golden-device".to_owned()), token, db)
        .with_instance(instance)
        .with_display_provisioning_operation_callback(Box::new(Display))
        .with_desired_properties_updated_callback(Box::new(Desired))
        .build()
        .context("official SDK failed to start")?;
    say(&format!("STARTED {} {}", client.workspace_id()?, client.device_id()?));
    for (n, line) in script.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        if verb == "reported" {
            report(&client, rest).with_context(|| format!("line {}", n + 1))?;
            continue;
        }
        if verb == "wait-sent" {
            client.wait_enqueued_messages_sent()?;
            continue;
        }
        let mut fields = std::collections::HashMap::new();
        for kv in rest.split_whitespace() {
            let (k, v) = kv.split_once('=').with_context(|| format!("line {}: {kv:?} is not key=value", n + 1))?;
            fields.insert(k.to_owned(), v.to_owned());
        }
        let field = |k: &str| -> Result<Option<String>> {
            match fields.get(k).map(String::as_str) {
                None | Some("-") => Ok(None),
                Some(v) => Ok(Some(percent_decode(v)?)),
            }
        };
        let mut context = MessageContext::new(field("group")?, field("stream")?);
        match verb {
            "message" => {
                context.set_compression(match field("compression")?.as_deref() {
                    None | Some("none") => None,
                    Some("fastest") => Some(spotflow::Compression::Fastest),
                    Some("smallest") => Some(spotflow::Compression::SmallestSize),
                    Some(other) => bail!("line {}: unknown compression {other}", n + 1),
                });
                let payload = scenario_payload(&field("payload")?.unwrap_or_default())?;
                client.enqueue_message_advanced(
                    &context,
                    field("batch")?,
                    field("slice")?,
                    field("id")?,
                    field("chunk")?,
                    payload,
                )?;
            }
            "message-completion" => client.enqueue_message_completion(
                &context,
                field("batch")?.context("batch")?,
                field("id")?.context("id")?,
            )?,
            "batch-completion" => client.enqueue_batch_completion(&context, field("batch")?.context("batch")?)?,
            other => bail!("line {}: unknown step {other}", n + 1),
        }
    }
    say("SENT");
    await_desired(&client, 2, Duration::from_secs(120))?;
    say("DONE");
    Ok(())
}

/// `SOAK_SECONDS`: enqueues `RATE` (default 200) messages per second for that long, each with
/// message id `{ID_PREFIX}{i}` (default prefix `m`) and `ACK {i}` said once
/// `enqueue_message_advanced` returned; then `SENT {n}`, waits until the SDK says everything was
/// sent, says `DONE` and stays connected (the orchestrator counts, then kills it). With
/// `SOAK_SECONDS=0` it only sends what an earlier run left queued (the crash loop's drain).
fn soak(client: &DeviceClient, seconds: u64) -> Result<()> {
    let rate: f64 = std::env::var("RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(200.0);
    let prefix = std::env::var("ID_PREFIX").unwrap_or_else(|_| "m".to_owned());
    let context = MessageContext::new(Some("chaos".to_owned()), Some("official".to_owned()));
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let id = format!("{prefix}{i}");
        client.enqueue_message_advanced(&context, None, None, Some(id.clone()), None, id.into_bytes())?;
        say(&format!("ACK {i}"));
        i += 1;
    }
    say(&format!("SENT {i}"));
    client.wait_enqueued_messages_sent()?;
    say("DONE");
    std::thread::sleep(Duration::from_secs(600));
    Ok(())
}

fn main() -> Result<()> {
    if let Ok(path) = std::env::var("SCENARIO") {
        return run_scenario(&path);
    }
    let instance = env("INSTANCE")?;
    let token = env("PROVISIONING_TOKEN")?;
    let db = env("DB_PATH")?;
    let count: usize = std::env::var("MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let wanted: u64 = std::env::var("DESIRED_VERSION").ok().and_then(|v| v.parse().ok()).unwrap_or(2);

    let mut builder = DeviceClientBuilder::new(Some("official-device".to_owned()), token, db)
        .with_instance(instance)
        .with_display_provisioning_operation_callback(Box::new(Display))
        .with_desired_properties_updated_callback(Box::new(Desired));
    let remote_access = std::env::var("REMOTE_ACCESS").is_ok();
    if remote_access {
        builder = builder.with_remote_access_allowed_for_all_ports();
    }
    let client = builder.build().context("official SDK failed to start")?;
    say(&format!("STARTED {} {}", client.workspace_id()?, client.device_id()?));
    if remote_access {
        // Remote-access mode: the orchestrator opens tunnels through the platform, then kills
        // this process.
        say("READY");
        std::thread::sleep(Duration::from_secs(600));
        return Ok(());
    }

    if let Ok(seconds) = std::env::var("SOAK_SECONDS") {
        return soak(&client, seconds.parse().context("SOAK_SECONDS")?);
    }

    if std::env::var("BENCH").is_ok() {
        // Benchmark mode: 256-byte messages, as fast as the SDK takes them; the orchestrator
        // measures until the platform stored them all.
        let context = MessageContext::new(Some("bench".to_owned()), Some("official".to_owned()));
        for _ in 0..count {
            client.enqueue_message(&context, None, None, vec![b'x'; 256])?;
        }
        say(&format!("SENT {count}"));
        client.wait_enqueued_messages_sent()?;
        say("DONE");
        // Stay connected until the orchestrator has counted (it kills this process).
        std::thread::sleep(Duration::from_secs(600));
        return Ok(());
    }

    // Reported properties first: the official SDK's PUBACK bookkeeping can delete a queued
    // telemetry row when a twin request is acknowledged (protocol.md §11.1).
    report(&client, r#"{"interop":true,"sdk":"spotflow 0.8.1"}"#)?;

    let context = MessageContext::new(Some("interop-group".to_owned()), Some("interop-stream".to_owned()));
    for i in 0..count {
        let payload = format!("{{\"i\":{i},\"temperatureCelsius\":21.5}}");
        client.enqueue_message(
            &context,
            Some(format!("batch-{}", i / 100)),
            Some(format!("msg-{i}")),
            payload.into_bytes(),
        )?;
    }
    say(&format!("SENT {count}"));

    // Wait (bounded) for the desired version the orchestrator sets after it saw the messages.
    await_desired(&client, wanted, Duration::from_secs(300))?;
    say("DONE");
    Ok(())
}
