//! The second hardening round's findings on the device's side, against the emulator: strings
//! from the server (a direct method's name, a tunnel's id) are logged escaped, a handler's answer
//! over the platform's limit or with an invalid status reaches the caller as a clear error, and a
//! tunnel's closing line counts the bytes of both directions.
//!
//! The device's log is captured by a subscriber of this test binary's own (one per process),
//! shared by the tests running at once: each looks for lines only it can have written (its own
//! method names, tunnel ids and ports).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use spotflow_core::{MemoryStore, Store};
use spotflow_device::{DeviceClient, MethodResponse, MAX_METHOD_RESPONSE_BYTES};
use spotflow_emulator::{Emulator, MethodAnswer, MethodFailure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[macro_use]
mod common;
use common::log::log;
use common::{network, Proto};

const WAIT: Duration = Duration::from_secs(30);

fn device(proto: Proto, emu: &Emulator, id: &str) -> spotflow_device::DeviceClientBuilder {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    DeviceClient::builder(Some(id), emu.create_provisioning_token(), "device.db")
        .instance(emu.https_url())
        .trust_ca_pem(emu.ca_pem())
        .with_network(network(proto, emu.https_addr().unwrap().port(), emu.mqtts_addr().unwrap().port()))
        .store(store)
        .display_provisioning_operation_callback(|_| {})
        .with_options(|o| {
            o.provisioning_poll_interval = Duration::from_millis(20);
            o.start_timeout = WAIT;
        })
}

/// Calls `method`, retrying (bounded) while the device has not subscribed to direct methods yet.
async fn invoke(emu: &Emulator, hub: &str, method: &str, payload: serde_json::Value) -> MethodAnswer {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match emu.invoke_method(hub, method, payload.to_string().into_bytes(), WAIT).await {
            Err(MethodFailure::NotConnected) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other.unwrap_or_else(|e| panic!("{method:?}: {e}")),
        }
    }
}

/// Finding 3: a method named `echo\nFORGED …` and a `tunnelId` with a newline used to put forged
/// lines into the device's log; both appear escaped now. Finding 5: the tunnel's closing line
/// counted only one direction (`to_platform=0` after 200,000 bytes went back).
async fn server_strings_are_logged_escaped_and_tunnels_count_both_ways(proto: Proto) {
    let log = log();
    let emu = Emulator::builder().auto_approve(Some(Duration::ZERO)).start().await.unwrap();
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let id = format!("escaped-{proto:?}").to_lowercase();
    let client = device(proto, &emu, &id).allow_remote_access_ports([port]).start().await.unwrap();
    let hub = format!("ws-emulator:{id}");

    let forged = format!("echo-{proto:?}\nFORGED INFO spotflow_device: all is well");
    let answer = invoke(&emu, &hub, &forged, json!({})).await;
    assert_eq!(answer.status, 404);
    let tunnel_id = format!("t-{proto:?}\nFORGED WARN tunnel");
    let request =
        json!({"tunnelId": tunnel_id, "port": port.wrapping_add(1), "tunnelSecureUri": "wss://localhost:1/t"});
    assert_eq!(invoke(&emu, &hub, "!remote-access", request).await.status, 403);
    log.line_with(&[&format!(r#"method="echo-{proto:?}\nFORGED INFO"#), "answered 404"]).await;
    log.line_with(&[&format!(r#"tunnel="t-{proto:?}\nFORGED WARN tunnel""#), "not allowed refused"]).await;
    let text = log.text();
    assert!(!text.lines().any(|l| l.starts_with("FORGED")), "a forged line in the log:\n{text}");

    // 200,000 bytes through a tunnel and back, then the operator closes it: the device's closing
    // line counts both directions.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tunnel = loop {
        let mut tunnel = emu.open_tunnel(&hub, port).await.expect("the emulator takes the tunnel");
        tunnel.write_all(b"?").await.unwrap();
        tunnel.flush().await.unwrap();
        let mut probe = [0u8; 1];
        match tunnel.read_exact(&mut probe).await {
            Ok(_) => break tunnel,
            Err(e) if tokio::time::Instant::now() < deadline => eprintln!("tunnel not open yet: {e}"),
            Err(e) => panic!("tunnel: {e}"),
        }
    };
    let data = vec![b'z'; 199_999];
    let (mut rd, mut wr) = tokio::io::split(&mut tunnel);
    let mut back = vec![0u8; data.len()];
    let (written, read) = tokio::join!(
        async {
            wr.write_all(&data).await?;
            wr.flush().await
        },
        rd.read_exact(&mut back)
    );
    written.unwrap();
    read.unwrap();
    assert_eq!(back, data);
    drop(tunnel);
    let closed = log.line_with(&["spotflow_device", "remote-access tunnel closed", &format!("port={port}")]).await;
    assert!(closed.contains("to_platform=200000") && closed.contains("to_device=200000"), "{closed}");
    client.close().await.unwrap();
}
both!(server_strings_are_logged_escaped_and_tunnels_count_both_ways);

/// Finding 5: a handler's answer of about 2 MB used to make the broker drop the device's
/// connection and the caller got 504. Now the caller gets 413 with the reason, the device logs an
/// error and stays connected; an invalid status is answered 500, also with its reason.
async fn oversized_answers_and_invalid_statuses_get_clear_errors(proto: Proto) {
    let log = log();
    let emu = Emulator::builder().auto_approve(Some(Duration::ZERO)).start().await.unwrap();
    let id = format!("answers-{proto:?}").to_lowercase();
    let (dump, negative) = (format!("dump-{proto:?}"), format!("negative-{proto:?}"));
    let client = device(proto, &emu, &id)
        .direct_method_handler(&dump, |_| MethodResponse::ok(json!("x".repeat(2_000_000))))
        .direct_method_handler(&negative, |_| MethodResponse { status: 0, body: json!({}) })
        .direct_method_handler("small", |_| MethodResponse::ok(json!({"fine": true})))
        .start()
        .await
        .unwrap();
    let hub = format!("ws-emulator:{id}");
    let answer = invoke(&emu, &hub, &dump, json!(null)).await;
    assert_eq!(answer.status, 413);
    let detail: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap();
    let expected = format!("limited to {MAX_METHOD_RESPONSE_BYTES} bytes");
    assert!(detail["detail"].as_str().unwrap().contains(&expected), "{detail}");
    log.line_with(&["ERROR", &format!("method={dump:?}"), "answered 413"]).await;
    let answer = invoke(&emu, &hub, &negative, json!(null)).await;
    assert_eq!(answer.status, 500);
    assert!(String::from_utf8_lossy(&answer.payload).contains("invalid status 0"));
    log.line_with(&["ERROR", &format!("method={negative:?}"), "invalid status"]).await;
    // The same connection still answers.
    let answer = invoke(&emu, &hub, "small", json!(null)).await;
    assert_eq!((answer.status, answer.payload), (200, br#"{"fine":true}"#.to_vec()));
    assert_eq!(client.stats().reconnects, 0, "the device was never disconnected");
    client.close().await.unwrap();
}
both!(oversized_answers_and_invalid_statuses_get_clear_errors);
