//! Wire compatibility with the official SDK, as a regression test.
//!
//! `interop/golden/scenario.txt` is one scripted scenario: provisioning with manual approval,
//! registration, a reported update, messages with every combination of stream group, stream,
//! batch, slice, message and chunk ids, completions, every compression, messages over 250,000
//! bytes through the upload API, and a desired-properties push. The official SDK 0.8.1 ran it
//! against the emulator with traffic recording on; `interop/golden/official-0.8.1.jsonl` is what
//! the emulator saw (HTTP requests with headers and bodies, MQTT CONNECT, SUBSCRIBE, every
//! PUBLISH both ways; secrets masked).
//!
//! `our_traffic_matches_the_official_sdks` runs the same scenario with our SDK and compares the
//! two field by field. The only differences allowed are the rules of [`normalize`], each listed
//! in [`ALLOWED_DIFFERENCES`] with its reason.
//!
//! Re-recording the official SDK's traffic (one command; needs root for port 443, which the
//! official SDK uses for uploads, and port 8883): `bash scripts/record-golden.sh`. Without
//! `SPOTFLOW_RECORD_GOLDEN=1` the ignored test `the_official_sdk_still_records_the_golden_traffic`
//! compares a fresh recording with the committed one (CI runs it with the harness it builds).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use spotflow_core::{decompress, ContentEncoding, MemoryStore, Store};
use spotflow_device::{Compression, DeviceClient, Message};
use spotflow_emulator::Emulator;

const WAIT: Duration = Duration::from_secs(60);
const DEVICE_ID: &str = "golden-device";

/// Every difference between our traffic and the official SDK's that the comparison accepts, with
/// why. [`normalize`] implements exactly these (and nothing else is left out).
pub const ALLOWED_DIFFERENCES: &[(&str, &str)] = &[
    (
        "interleaving across kinds of traffic",
        "HTTP, the MQTT connection, subscriptions, telemetry, twin requests and platform-to-device \
         messages are compared as separate sequences: our SDK pipelines telemetry and subscribes \
         concurrently, so how these kinds interleave depends on timing. Order within each kind is kept.",
    ),
    (
        "repeated provisioning polls, twin GETs and redeliveries",
        "consecutive identical requests count once: how often `provisioning-operations/complete` \
         is polled depends on when the approval happens, and at-least-once delivery may repeat a \
         PUBLISH after a reconnect.",
    ),
    (
        "HTTP headers user-agent, accept, accept-encoding",
        "they name the HTTP client library and its negotiation; the platform does not read them.",
    ),
    (
        "MQTT keep-alive",
        "ours is 60 s (`MqttOptions::keep_alive` of the MQTT transport), the official SDK's 300 s. Both are \
         within what the platform accepts (IoT Hub style brokers: up to 1,767 s); the shorter one \
         finds a dead connection five times sooner. Every other CONNECT field must match.",
    ),
    (
        "$.mid in the telemetry property bag",
        "our SDK adds a message key unique across restarts so that a platform can drop \
         redeliveries; the official SDK has none. Every other property, its value and its \
         position in the bag must match byte for byte.",
    ),
    (
        "compressed payload bytes",
        "both send Brotli (`content-encoding=br`) when it is smaller; encoder versions and \
         settings differ (see the compression benchmark), so the decoded payloads are compared.",
    ),
    (
        "random ids: blob names, correlation ids, operation ids, $rid",
        "the blob name is a fresh UUID per upload in both SDKs, correlation and provisioning \
         operation ids come from the platform, and twin request ids are any unique string: each \
         is replaced by its kind.",
    ),
    (
        "values the platform issues per run",
        "tokens and signatures (already masked by the recorder), expiration times and \
         operation ids in HTTP answers: only answer statuses are compared, and request bodies \
         with the emulator-issued strings replaced by their kind.",
    ),
];

// ---------------------------------------------------------------------------------------------
// The scenario (same semantics as the harness's `run_scenario`).

#[derive(Debug, Clone)]
enum Step {
    Reported(Value),
    Message { target: (Option<String>, Option<String>), compression: Compression, message: Message },
    MessageCompletion { target: (Option<String>, Option<String>), batch: String, id: String },
    BatchCompletion { target: (Option<String>, Option<String>), batch: String },
    WaitSent,
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../interop/golden")
}

fn percent_decode(s: &str) -> String {
    spotflow_core::testkit::golden::percent_decode(s).expect("a valid escaped value")
}

/// The payload generators shared with the harness.
fn scenario_payload(spec: &str) -> Vec<u8> {
    spotflow_core::testkit::golden::scenario_payload(spec).unwrap_or_else(|| panic!("unknown payload {spec:?}"))
}

fn parse_scenario() -> Vec<Step> {
    let script = std::fs::read_to_string(golden_dir().join("scenario.txt")).expect("scenario.txt");
    let mut steps = Vec::new();
    for line in script.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        match verb {
            "reported" => steps.push(Step::Reported(serde_json::from_str(rest).expect("reported JSON"))),
            "wait-sent" => steps.push(Step::WaitSent),
            _ => {
                let fields: HashMap<&str, &str> =
                    rest.split_whitespace().map(|kv| kv.split_once('=').expect("key=value")).collect();
                let field = |k: &str| fields.get(k).filter(|v| **v != "-").map(|v| percent_decode(v));
                let target = (field("group"), field("stream"));
                match verb {
                    "message" => {
                        let compression = match field("compression").as_deref() {
                            None | Some("none") => Compression::Uncompressed,
                            Some("fastest") => Compression::Fastest,
                            Some("smallest") => Compression::SmallestSize,
                            Some(other) => panic!("unknown compression {other}"),
                        };
                        let mut message = Message::new(scenario_payload(&field("payload").unwrap_or_default()));
                        if let Some(v) = field("batch") {
                            message = message.batch_id(v);
                        }
                        if let Some(v) = field("slice") {
                            message = message.batch_slice_id(v);
                        }
                        if let Some(v) = field("id") {
                            message = message.message_id(v);
                        }
                        if let Some(v) = field("chunk") {
                            message = message.chunk_id(v);
                        }
                        steps.push(Step::Message { target, compression, message });
                    }
                    "message-completion" => steps.push(Step::MessageCompletion {
                        target,
                        batch: field("batch").expect("batch"),
                        id: field("id").expect("id"),
                    }),
                    "batch-completion" => {
                        steps.push(Step::BatchCompletion { target, batch: field("batch").expect("batch") })
                    }
                    other => panic!("unknown step {other}"),
                }
            }
        }
    }
    steps
}

/// Runs the scenario with our SDK against a recording emulator; returns the traffic.
async fn record_ours() -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let emu = Arc::new(Emulator::builder().record_traffic(true).start().await.expect("emulator"));
    let token = emu.create_provisioning_token();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let approver = emu.clone();
    let (desired_tx, mut desired_rx) = tokio::sync::mpsc::unbounded_channel();
    let upload = emu.https_url();
    let (mqtt_port, https_port) = (emu.mqtts_addr().unwrap().port(), emu.https_addr().unwrap().port());
    let client = DeviceClient::builder(Some(DEVICE_ID), &token, dir.path().join("ours.db").to_str().unwrap())
        .instance(emu.https_url())
        .trust_ca_pem(emu.ca_pem())
        .with_network(move |n| {
            n.platform_roots = false;
            n.mqtt_port = mqtt_port;
            n.websocket_port = https_port;
            n.proxy = None;
            n.upload_base_url = Some(upload);
        })
        .store(store)
        .display_provisioning_operation_callback(move |op| {
            approver.approve(&op.id, None).expect("approve");
        })
        .desired_properties_updated_callback(move |d| {
            let _ = desired_tx.send(d.version);
        })
        .with_options(|o| o.start_timeout = WAIT)
        .start()
        .await
        .expect("our SDK starts");
    let mut senders = HashMap::new();
    let mut sender = |target: &(Option<String>, Option<String>), compression: Compression| {
        senders
            .entry((target.clone(), compression))
            .or_insert_with(|| {
                client.create_stream_sender(target.0.as_deref(), target.1.as_deref(), compression).expect("sender")
            })
            .clone()
    };
    for step in parse_scenario() {
        match step {
            Step::Reported(doc) => {
                client.update_reported_properties(doc).await.unwrap();
                client.wait_reported_properties_sent_timeout(WAIT).await.unwrap();
            }
            Step::Message { target, compression, message } => {
                sender(&target, compression).enqueue_message(message).await.unwrap()
            }
            Step::MessageCompletion { target, batch, id } => {
                sender(&target, Compression::Uncompressed).enqueue_message_completion(&batch, &id).await.unwrap()
            }
            Step::BatchCompletion { target, batch } => {
                sender(&target, Compression::Uncompressed).enqueue_batch_completion(&batch).await.unwrap()
            }
            Step::WaitSent => client.wait_enqueued_messages_sent_timeout(WAIT).await.unwrap(),
        }
    }
    let hub = format!("{}:{DEVICE_ID}", client.workspace_id());
    assert_eq!(emu.update_desired(&hub, json!({"interval": 5}).as_object().cloned().unwrap()), Some(2));
    tokio::time::timeout(WAIT, async { while desired_rx.recv().await != Some(2) {} })
        .await
        .expect("desired version 2 arrives");
    client.close().await.unwrap();
    emu.traffic()
}

// ---------------------------------------------------------------------------------------------
// Normalization: the rules of ALLOWED_DIFFERENCES, and nothing else.

/// The traffic as comparable lines, per kind: `http`, `connect`, `subscriptions`, `telemetry`,
/// `twin`, `to-device`.
fn normalize(records: &[Value]) -> Vec<(String, Vec<String>)> {
    let mut kinds: Vec<(String, Vec<String>)> = ["http", "connect", "subscriptions", "telemetry", "twin", "to-device"]
        .iter()
        .map(|k| (k.to_string(), Vec::new()))
        .collect();
    let mut subscriptions = BTreeSet::new();
    let push = |kinds: &mut Vec<(String, Vec<String>)>, kind: &str, line: String| {
        let list = &mut kinds.iter_mut().find(|(k, _)| k == kind).unwrap().1;
        // Consecutive identical lines count once (polls, repeated GETs, redeliveries).
        if list.last() != Some(&line) {
            list.push(line);
        }
    };
    for r in records {
        let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        match (s("proto").as_str(), s("packet").as_str(), s("dir").as_str()) {
            ("http", _, _) => {
                let mut headers = r["headers"].as_object().cloned().unwrap_or_default();
                for h in ["user-agent", "accept", "accept-encoding"] {
                    headers.remove(h);
                }
                let mut body = r["body"].clone();
                scrub_ids(&mut body);
                let path = uuid_free(&s("path"));
                let line = format!(
                    "{} {}?{} headers={} body={} -> {}",
                    s("method"),
                    path,
                    r["query"].as_str().unwrap_or(""),
                    Value::Object(headers),
                    body,
                    r["status"]
                );
                push(&mut kinds, "http", line);
            }
            ("mqtt", "connect", _) => {
                let mut c = r.as_object().cloned().unwrap();
                for k in ["seq", "device", "dir", "proto", "keepAlive"] {
                    c.remove(k);
                }
                push(&mut kinds, "connect", Value::Object(c).to_string());
            }
            ("mqtt", "subscribe", _) => {
                for f in r["filters"].as_array().into_iter().flatten() {
                    subscriptions.insert(f.to_string());
                }
            }
            ("mqtt", "publish", "in") => {
                let topic = s("topic");
                if topic.contains("/messages/events/") {
                    push(&mut kinds, "telemetry", telemetry_line(&topic, r));
                } else {
                    let topic = match topic.split_once("$rid=") {
                        Some((head, _)) => format!("{head}$rid=<rid>"),
                        None => topic,
                    };
                    push(&mut kinds, "twin", format!("{topic} qos={} payload={}", r["qos"], r["payload"]));
                }
            }
            ("mqtt", "publish", "out") => {
                let topic = s("topic");
                // Twin answers mirror the device's requests; the desired patch is the platform's.
                if topic.starts_with("$iothub/twin/PATCH/properties/desired/") {
                    push(&mut kinds, "to-device", format!("{topic} payload={}", r["payload"]));
                }
            }
            _ => {}
        }
    }
    kinds.iter_mut().find(|(k, _)| k == "subscriptions").unwrap().1 = subscriptions.into_iter().collect();
    kinds
}

/// A telemetry PUBLISH: the property bag byte for byte but `$.mid`, and the decoded payload.
fn telemetry_line(topic: &str, r: &Value) -> String {
    let (prefix, bag) = topic.split_once("/messages/events/").unwrap();
    let bag: Vec<&str> = bag.split('&').filter(|p| !p.starts_with("%24.mid=") && !p.starts_with("$.mid=")).collect();
    let encoding = bag.iter().find_map(|p| p.strip_prefix("content-encoding="));
    let externalized = bag.contains(&"has-externalized-payload=true");
    let raw = payload_bytes(&r["payload"]);
    let payload = if externalized {
        // {"link":"<uuid>"}: the uploaded blob is compared in the HTTP sequence (length, CRC).
        uuid_free(&String::from_utf8_lossy(&raw))
    } else {
        let decoded = match encoding.and_then(ContentEncoding::from_token) {
            Some(enc) => decompress(enc, &raw).expect("decodable"),
            None => raw,
        };
        describe(&decoded)
    };
    format!("{prefix}/messages/events/{} qos={} payload={payload}", bag.join("&"), r["qos"])
}

fn payload_bytes(p: &Value) -> Vec<u8> {
    if p.is_null() {
        return Vec::new();
    }
    if let Some(doc) = p.get("json") {
        return doc.to_string().into_bytes();
    }
    if let Some(text) = p.get("text").and_then(Value::as_str) {
        return text.as_bytes().to_vec();
    }
    let hex = p.get("hex").and_then(Value::as_str).expect("payload kept whole");
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

fn describe(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if text.len() <= 200 => format!("{text:?}"),
        _ => format!("<{} bytes, crc32 {:08x}>", bytes.len(), crc32fast::hash(bytes)),
    }
}

/// Replaces UUIDs (blob names) by `<uuid>`.
fn uuid_free(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        let is_uuid = b.len() - i >= 36
            && b[i..i + 36].iter().enumerate().all(|(j, c)| match j {
                8 | 13 | 18 | 23 => *c == b'-',
                _ => c.is_ascii_hexdigit(),
            });
        if is_uuid {
            out.push_str("<uuid>");
            i += 36;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// In request bodies: blob names, correlation and operation ids (issued per run) become their kind.
fn scrub_ids(body: &mut Value) {
    if let Some(doc) = body.get_mut("json").and_then(Value::as_object_mut) {
        for (k, v) in doc.iter_mut() {
            if k == "correlationId" || k == "provisioningOperationId" {
                *v = json!(format!("<{k}>"));
            } else if let Value::String(s) = v {
                *s = uuid_free(s);
            }
        }
    }
}

fn compare(official: &[Value], ours: &[Value]) -> Vec<String> {
    let (a, b) = (normalize(official), normalize(ours));
    let mut problems = Vec::new();
    for ((kind, theirs), (_, mine)) in a.iter().zip(&b) {
        if theirs != mine {
            let mut report = format!("{kind} differs:\n");
            for i in 0..theirs.len().max(mine.len()) {
                let (t, m) = (theirs.get(i), mine.get(i));
                if t != m {
                    report.push_str(&format!(
                        "  #{i}\n    official: {}\n    ours:     {}\n",
                        t.map_or("(none)", String::as_str),
                        m.map_or("(none)", String::as_str)
                    ));
                }
            }
            problems.push(report);
        }
    }
    problems
}

fn load_golden() -> Vec<Value> {
    let path = golden_dir().join("official-0.8.1.jsonl");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (record it with scripts/record-golden.sh)", path.display()));
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_traffic_matches_the_official_sdks() {
    let official = load_golden();
    let ours = record_ours().await;
    let problems = compare(&official, &ours);
    assert!(
        problems.is_empty(),
        "our SDK's traffic differs from the official SDK's beyond the allowed differences:\n{}",
        problems.join("\n")
    );
    // The comparison is not vacuous: every kind of traffic is there.
    for (kind, lines) in normalize(&ours) {
        assert!(!lines.is_empty(), "no {kind} traffic recorded");
    }
}

#[test]
fn the_comparison_catches_a_changed_property_and_payload() {
    let official = load_golden();
    let mut changed = official.clone();
    let i = changed
        .iter()
        .position(|r| r["topic"].as_str().is_some_and(|t| t.contains("batch-id=b1&message-id=m1")))
        .expect("a telemetry message with ids");
    let topic = changed[i]["topic"].as_str().unwrap().replace("message-id=m1", "message-id=m9");
    changed[i]["topic"] = json!(topic);
    assert_eq!(compare(&official, &changed).len(), 1);
    let mut reordered = official.clone();
    let j = reordered
        .iter()
        .position(|r| r["topic"].as_str().is_some_and(|t| t.contains("stream-name=compressed")))
        .unwrap();
    reordered[j]["payload"] = json!({"text": "something else"});
    assert!(!compare(&official, &reordered).is_empty());
    assert!(compare(&official, &official).is_empty());
}

/// Runs the scenario with the official SDK (the interop harness) and returns its traffic.
async fn record_official(harness: &str) -> Vec<Value> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::builder()
        .data_dir(dir.path().join("emulator"))
        .record_traffic(true)
        .https_port(443)
        .mqtts_port(8883)
        .start()
        .await
        .expect("emulator on ports 443 and 8883 (root needed for 443)");
    let token = emu.create_provisioning_token();
    let mut child = tokio::process::Command::new(harness)
        .env("SCENARIO", golden_dir().join("scenario.txt"))
        .env("INSTANCE", "localhost")
        .env("PROVISIONING_TOKEN", &token)
        .env("DB_PATH", dir.path().join("official.db"))
        .env("SSL_CERT_FILE", emu.ca_path().expect("a CA file"))
        .env_remove("SSL_CERT_DIR")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("harness starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let hub = format!("ws-emulator:{DEVICE_ID}");
    let seen = Arc::new(Mutex::new(Vec::new()));
    loop {
        let line = tokio::time::timeout(Duration::from_secs(180), lines.next_line())
            .await
            .expect("harness answers within 180 s")
            .expect("readable")
            .expect("harness still running");
        seen.lock().unwrap().push(line.clone());
        if let Some(op) = line.strip_prefix("OPERATION ") {
            emu.approve(op, None).expect("approve");
        } else if line == "SENT" {
            assert_eq!(emu.update_desired(&hub, json!({"interval": 5}).as_object().cloned().unwrap()), Some(2));
        } else if line == "DONE" {
            break;
        }
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "harness failed; its output: {:?}", seen.lock().unwrap());
    emu.traffic()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official SDK harness (SPOTFLOW_OFFICIAL_HARNESS) and ports 443 and 8883; run by .ci/run"]
async fn the_official_sdk_still_records_the_golden_traffic() {
    let harness = std::env::var("SPOTFLOW_OFFICIAL_HARNESS").expect("SPOTFLOW_OFFICIAL_HARNESS names the harness");
    let fresh = record_official(&harness).await;
    if std::env::var("SPOTFLOW_RECORD_GOLDEN").is_ok_and(|v| v == "1") {
        let text: String = fresh.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(golden_dir().join("official-0.8.1.jsonl"), text).unwrap();
        eprintln!("recorded {} records", fresh.len());
        return;
    }
    let problems = compare(&load_golden(), &fresh);
    assert!(problems.is_empty(), "the official SDK's traffic changed:\n{}", problems.join("\n"));
}
