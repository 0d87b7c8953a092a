//! The second hardening round's findings, each reproduced against the emulator: uploads refused
//! before their body is read, one device unable to take every upload, the data directory and the
//! certificates under a permissive umask, a direct method's answer over the packet limit.

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::json;
use spotflow_emulator::{Emulator, MessageQuery, MethodFailure, MAX_BLOB_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::*;

/// Sends `head` (a request line and headers) and reads the status line of the answer (at most
/// [`WAIT`]), without sending any body.
async fn status_before_the_body(socket: &mut TcpStream, head: &str) -> String {
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 1024];
        while !answer.windows(2).any(|w| w == b"\r\n") {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("an answer before any body byte is sent");
    String::from_utf8_lossy(&answer).lines().next().unwrap_or("").to_owned()
}

/// Finding 1: 100 connections announcing 16 MiB uploads with a wrong signature used to be read
/// whole before anything was checked (18 MB to 1,675 MB of RSS). Now each is answered 401 from its
/// headers before a body byte is sent, the connections are closed, and the emulator's memory
/// stays within 50 MB of its start even when the bodies are sent anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_uploads_are_refused_before_their_body_is_read() {
    let mut process = EmulatorProcess::spawn(&[], &[]);
    let http = process.banner_value("plain HTTP:");
    let addr = http.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let start_kib = process.rss_kib();
    let mut sockets = Vec::new();
    for i in 0..100 {
        let mut socket = TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "PUT /uploads/blob-{i}?sv=2020-08-04&sr=b&sig=forged HTTP/1.1\r\nHost: localhost\r\n\
             x-ms-blob-type: BlockBlob\r\nContent-Length: {MAX_BLOB_BYTES}\r\n\r\n"
        );
        let status = status_before_the_body(&mut socket, &head).await;
        assert!(status.starts_with("HTTP/1.1 401"), "connection {i}: {status}");
        sockets.push(socket);
    }
    // The bodies sent anyway (1 MiB each, 100 MiB in all) are not kept: the emulator closed
    // the connections (the writes may fail).
    let chunk = vec![b'x'; 1024 * 1024];
    for socket in &mut sockets {
        let _ = tokio::time::timeout(Duration::from_secs(2), socket.write_all(&chunk)).await;
    }
    let end_kib = process.rss_kib();
    eprintln!(
        "RSS: {start_kib} KiB at start, {end_kib} KiB after 100 refused 16 MiB uploads and 100 MiB of bodies sent"
    );
    assert!(
        end_kib < start_kib + 50 * 1024,
        "RSS grew from {start_kib} KiB to {end_kib} KiB with 100 unauthenticated uploads"
    );
    let log = process.output();
    assert!(!log.contains("panicked"), "{log}");
}

/// Finding 1: an announced length over the limit is answered 413 at once (within 5 s, before the
/// body), with a wrong signature and with a valid one.
#[tokio::test]
async fn an_announced_blob_over_the_limit_is_answered_413_at_once() {
    let emu = Emulator::builder().http_port(0).start().await.unwrap();
    let dev = register(&emu, "too-big").await;
    let (status, started) = call(
        &https(&emu),
        reqwest::Method::POST,
        format!("{}/devices/{}/files?api-version=2020-03-13", emu.https_url(), dev.hub_id),
        Some(&dev.sas),
        &json!({"blobName": "big-one"}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{started}");
    let sas_token = started["sasToken"].as_str().unwrap().to_owned();
    let addr = emu.http_addr().unwrap();
    for query in ["?sig=forged".to_owned(), sas_token] {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "PUT /uploads/big-one{query} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
            17 * 1024 * 1024
        );
        let asked = Instant::now();
        let status = status_before_the_body(&mut socket, &head).await;
        assert!(status.starts_with("HTTP/1.1 413"), "{query}: {status}");
        assert!(asked.elapsed() < Duration::from_secs(5), "answered after {:?}", asked.elapsed());
    }
}

/// Finding 2: one device that starts uploads without finishing them fills its own bound (32),
/// not everyone's: the next start of that device is answered 503, while another device's large
/// message is uploaded and linked.
#[tokio::test]
async fn one_device_filling_its_upload_bound_leaves_another_devices_large_message_delivered() {
    let emu = Emulator::builder().start().await.unwrap();
    let http = https(&emu);
    let greedy = register(&emu, "greedy").await;
    let start = |dev: &Registered, blob: String| {
        let url = format!("{}/devices/{}/files?api-version=2020-03-13", emu.https_url(), dev.hub_id);
        let (http, sas) = (http.clone(), dev.sas.clone());
        async move { call(&http, reqwest::Method::POST, url, Some(&sas), &json!({"blobName": blob}).to_string()).await }
    };
    let mut answers = Vec::new();
    for i in 0..40 {
        answers.push(start(&greedy, format!("greedy-{i}")).await.0);
    }
    assert_eq!(answers.iter().filter(|s| **s == 200).count(), 32, "{answers:?}");
    assert!(answers[32..].iter().all(|s| *s == 503), "{answers:?}");

    let other = register(&emu, "other").await;
    let (status, up) = start(&other, "other-blob".to_owned()).await;
    assert_eq!(status, 200, "{up}");
    let url = format!(
        "https://{}/{}/{}{}",
        up["hostName"].as_str().unwrap(),
        up["containerName"].as_str().unwrap(),
        up["blobName"].as_str().unwrap(),
        up["sasToken"].as_str().unwrap()
    );
    let payload: Vec<u8> = (0..400_000u32).map(|i| (i % 253) as u8).collect();
    let put = http.put(&url).header("x-ms-blob-type", "BlockBlob").body(payload.clone()).send().await.unwrap();
    assert_eq!(put.status().as_u16(), 201);
    // Done: the same signature no longer uploads (the upload is no longer pending).
    let again = http.put(&url).body(vec![1u8]).send().await.unwrap();
    assert_eq!(again.status().as_u16(), 401);
    publish_link(&emu, &other, "other-blob").await;
    let stored = emu.messages(MessageQuery { hub_device_id: Some(other.hub_id.clone()), ..Default::default() }).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].payload, payload, "the other device's large message is delivered whole");
    // A done upload's name stays the device's: the greedy one cannot start an upload of it.
    assert_eq!(start(&greedy, "other-blob".to_owned()).await.0, 409);
}

/// Finding 4: under umask 000 the data directory was 0777 and the certificates 0666. Now the
/// directory is created 0700 and the certificates are not writable by others; an older, broader
/// directory and CA are tightened at start with a warning.
#[cfg(unix)]
#[tokio::test]
async fn a_permissive_umask_leaves_the_data_directory_private_and_the_certificates_read_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let umask_000 = ["/bin/sh", "-c", "umask 000 && exec \"$0\" \"$@\""];
    let process = EmulatorProcess::spawn_in(tempfile::tempdir().unwrap(), &umask_000, &[]);
    let data = process.data_dir();
    assert_eq!(mode(&data), 0o700, "the data directory");
    for cert in ["ca.pem", "server.pem"] {
        assert_eq!(mode(&data.join(cert)) & 0o022, 0, "{cert} is writable by others: {:o}", mode(&data.join(cert)));
    }
    for secret in ["emulator.db", "admin-token", "ca-key.pem", "server-key.pem"] {
        assert_eq!(mode(&data.join(secret)), 0o600, "{secret}");
    }
    let dir = process.stop();
    let data = dir.path().join("data");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(data.join("ca.pem"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut process = EmulatorProcess::spawn_in(dir, &umask_000, &[]);
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("ca.pem")), 0o644);
    process.wait_log("file open to other users: tightened");
}

/// Finding 5 (the emulator's side): a device whose answer to a direct method is over the packet
/// limit is disconnected as before, but the caller gets 413 with the reason at once, not a 504
/// after its timeout.
#[tokio::test]
async fn a_direct_method_answer_over_the_packet_limit_is_answered_413_at_once() {
    let emu = Emulator::builder().start().await.unwrap();
    let dev = register(&emu, "talkative").await;
    let mut options = mqtt_options(&emu, &dev, true);
    options.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
    let (client, mut ev) = AsyncClient::new(options, 10);
    until(&mut ev, |e| matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())).await;
    client.subscribe("$iothub/methods/POST/#", QoS::AtMostOnce).await.unwrap();
    until(&mut ev, |e| matches!(e, Event::Incoming(Packet::SubAck(_))).then_some(())).await;
    let url = format!("{}/admin/devices/{}/methods/dump?timeoutSecs=60", emu.https_url(), dev.hub_id);
    let (http, admin) = (https(&emu), format!("Bearer {}", emu.admin_token()));
    let caller = tokio::spawn(async move {
        let asked = Instant::now();
        let answer = call(&http, reqwest::Method::POST, url, Some(&admin), "{}").await;
        (answer, asked.elapsed())
    });
    let topic = until(&mut ev, |e| match e {
        Event::Incoming(Packet::Publish(p)) => Some(p.topic.clone()),
        _ => None,
    })
    .await;
    let rid = topic.split("$rid=").nth(1).unwrap().to_owned();
    let answer = format!("\"{}\"", "x".repeat(2 * 1024 * 1024));
    client.publish(format!("$iothub/methods/res/200/?$rid={rid}"), QoS::AtLeastOnce, false, answer).await.unwrap();
    // The connection is closed (the event loop errors) ...
    tokio::time::timeout(WAIT, async { while ev.poll().await.is_ok() {} })
        .await
        .expect("the oversized packet closes the connection");
    // ... and the caller knows why, long before its 60 s timeout.
    let ((status, body), took) = tokio::time::timeout(WAIT, caller).await.unwrap().unwrap();
    assert_eq!(status, 413, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("larger than the broker's packet limit of 270336 bytes"), "{detail}");
    assert!(took < Duration::from_secs(30), "answered after {took:?}");
    let failure = MethodFailure::AnswerTooLarge { bytes: 3, limit: 2 };
    assert_eq!(
        failure.to_string(),
        "the device's answer of 3 bytes is larger than the broker's packet limit of 2 bytes"
    );
}
