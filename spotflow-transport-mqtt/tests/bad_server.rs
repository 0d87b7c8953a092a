//! A misbehaving server never panics the SDK: malformed HTTP bodies, unexpected statuses, a broker
//! that never acknowledges, garbage on the socket, twin answers for unknown requests.

use std::sync::Arc;
use std::time::Duration;

use spotflow_core::{
    Connection, ConnectionCredentials, Error, PlatformApi, ProvisioningStatus, Secret, Transport, TransportEvent,
};
use spotflow_transport_mqtt::{HttpPlatformApi, MqttTransport, MqttTransportOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An HTTP server on loopback: reads each request's first bytes, then lets `answer` write to the
/// connection. Returns its base URL.
async fn serve<F, Fut>(answer: F) -> String
where
    F: Fn(TcpStream) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let _ = s.read(&mut buf).await;
                answer(s).await;
            });
        }
    });
    format!("http://{addr}")
}

/// A one-route HTTP server on loopback answering every request with `status` and `body`.
async fn http_server(status: u16, body: &'static str) -> String {
    serve(move |mut s| async move {
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(resp.as_bytes()).await;
        let _ = s.shutdown().await;
    })
    .await
}

fn api_at(base: &str) -> HttpPlatformApi {
    // Plain HTTP on loopback: the TLS configuration is not used.
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    HttpPlatformApi::new(base, "test", Arc::new(tls), Duration::from_secs(5)).unwrap()
}

fn message() -> spotflow_core::OutgoingMessage {
    spotflow_core::OutgoingMessage {
        target: Arc::new(spotflow_core::StreamTarget::default()),
        kind: spotflow_core::MessageKind::Data,
        batch_id: None,
        batch_slice_id: None,
        message_id: None,
        chunk_id: None,
        content_encoding: None,
        payload: bytes::Bytes::from_static(b"payload"),
    }
}

fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    rumqttc::mqttbytes::v4::Publish::new(topic, rumqttc::mqttbytes::QoS::AtMostOnce, payload.to_vec())
        .write(&mut buf)
        .unwrap();
    buf.to_vec()
}

#[tokio::test]
async fn malformed_and_unexpected_http_answers_are_clear_errors() {
    let token = Secret::new("t");
    let cases: Vec<(u16, &'static str)> = vec![
        (200, "not json"),
        (200, "{}"),
        (200, r#"{"provisioningOperationId":1}"#),
        (200, r#"{"provisioningOperationId":"a","verificationCode":"b","expirationTime":"yesterday"}"#),
        (500, "oops"),
        (404, ""),
    ];
    for (status, body) in cases {
        let api = api_at(&http_server(status, body).await);
        let err = api.init_provisioning(&token, Some("d")).await.unwrap_err();
        assert!(err.is_temporary(), "{status} {body}: {err} should be retried");
        let err = api.register(&token).await.unwrap_err();
        assert!(err.is_temporary(), "{status} {body}: {err}");
    }
    let api = api_at(&http_server(401, r#"{"title":"Invalid Provisioning Token"}"#).await);
    assert!(
        matches!(api.init_provisioning(&token, None).await, Err(Error::Unauthorized(m)) if m.contains("Invalid Provisioning Token"))
    );
    let api = api_at(&http_server(423, "").await);
    assert!(matches!(api.register(&token).await, Err(Error::WorkspaceDisabled)));
    let api = api_at(&http_server(400, r#"{"title":"Bad device id"}"#).await);
    assert!(matches!(api.init_provisioning(&token, None).await, Err(Error::Provisioning(m)) if m == "Bad device id"));
    // 410 without problem details: the operation is closed (never polled forever).
    let api = api_at(&http_server(410, "gone").await);
    assert_eq!(api.complete_provisioning(&token, "op").await.unwrap(), ProvisioningStatus::Closed);
    let api =
        api_at(&http_server(410, r#"{"type":"/problems/deviceProvisioning/provisioningOperationCancelled"}"#).await);
    assert!(matches!(api.complete_provisioning(&token, "op").await, Err(Error::Provisioning(_))));
    // Registration answers with broken connection strings or time formats.
    for body in [
        r#"{"connectionString":"HostName=h","iotHubHostName":"h","connectionStringType":"SharedAccessSignature"}"#,
        r#"{"connectionString":"DeviceId=nocolon;SharedAccessSignature=s","iotHubHostName":"h","connectionStringType":"SharedAccessSignature"}"#,
        r#"{"connectionString":"DeviceId=w:d;SharedAccessSignature=s","iotHubHostName":"h","connectionStringType":"SharedAccessKey"}"#,
        r#"{"connectionString":"DeviceId=w:d;SharedAccessSignature=s","iotHubHostName":"h","connectionStringType":"SharedAccessSignature","tokenRemainingLifetime":"12"}"#,
    ] {
        let api = api_at(&http_server(200, body).await);
        assert!(api.register(&token).await.is_err(), "{body}");
    }
    let ok = r#"{"connectionString":"DeviceId=w:d;SharedAccessSignature=s=1","iotHubHostName":"h","connectionStringType":"SharedAccessSignature","connectionStringExpiration":"2030-01-01T00:00:00Z","tokenRemainingLifetime":"1.00:00:00"}"#;
    let reg = api_at(&http_server(200, ok).await).register(&token).await.unwrap();
    assert_eq!((reg.workspace_id.as_str(), reg.device_id.as_str(), reg.credentials.sas.expose()), ("w", "d", "s=1"));
    assert_eq!(reg.token_remaining_lifetime, Some(Duration::from_secs(86_400)));
}

fn creds(host: &str) -> ConnectionCredentials {
    spotflow_core::testkit::sample_credentials(host)
}

/// A fake broker: accepts CONNECT, answers CONNACK(0), then runs `behaviour` on the socket.
async fn fake_broker(after_connack: Vec<u8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let after_connack = after_connack.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
                let _ = s.write_all(&after_connack).await;
                // Keep reading (and never acknowledging) until the client goes away.
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn garbage_from_the_broker_is_a_connection_error_not_a_panic() {
    for garbage in [&b"\xff\xff\xff\xff\xff"[..], b"\x30\x05\x00\x09abc", b"\x40\x02\x03\xe7"] {
        let port = fake_broker(garbage.to_vec()).await;
        let transport = MqttTransport::new(MqttTransportOptions::plain_tcp(port)).unwrap();
        let mut conn = transport
            .connect(&creds("127.0.0.1"), &spotflow_core::SessionInfo::default())
            .await
            .expect("CONNACK accepted");
        let next = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Err(e) = conn.next_event().await {
                    return e;
                }
            }
        })
        .await
        .expect("the error surfaces");
        assert!(next.is_temporary(), "{next}");
    }
}

#[tokio::test]
async fn a_broker_that_never_acknowledges_leaves_messages_unacknowledged() {
    let port = fake_broker(Vec::new()).await;
    let transport = MqttTransport::new(MqttTransportOptions::plain_tcp(port)).unwrap();
    let mut conn: Box<dyn Connection> =
        transport.connect(&creds("127.0.0.1"), &spotflow_core::SessionInfo::default()).await.unwrap();
    let message = message();
    for seq in 1..=50 {
        conn.publish_message(seq, &message).await.unwrap();
    }
    let got = tokio::time::timeout(Duration::from_millis(300), conn.next_event()).await;
    assert!(got.is_err(), "no acknowledgement is invented: {got:?}");
    conn.close().await;
}

#[tokio::test]
async fn a_twin_answer_for_an_unknown_request_is_ignored() {
    let mut packets = publish_packet("$iothub/twin/res/200/?$rid=999", b"{}");
    packets.extend(publish_packet("$iothub/twin/res/abc/?$rid=1", b"{}"));
    packets.extend(publish_packet("$iothub/twin/PATCH/properties/desired/?$version=7", br#"{"a":1,"$version":7}"#));
    let port = fake_broker(packets).await;
    let transport = MqttTransport::new(MqttTransportOptions::plain_tcp(port)).unwrap();
    let mut conn = transport.connect(&creds("127.0.0.1"), &spotflow_core::SessionInfo::default()).await.unwrap();
    // The unknown $rid and the non-numeric status are ignored; the desired patch comes through.
    let got = tokio::time::timeout(Duration::from_secs(10), conn.next_event()).await.unwrap().unwrap();
    match got {
        TransportEvent::DesiredPatch { version: 7, patch } => assert_eq!(patch.get("a"), Some(&serde_json::json!(1))),
        other => panic!("unexpected {other:?}"),
    }
}

/// Hardening: the platform names the hub host, so plain (unencrypted) MQTT would send the SAS in
/// clear text wherever it points. Plain MQTT connects only to loopback hosts.
#[tokio::test]
async fn plain_mqtt_is_refused_to_a_host_that_is_not_loopback() {
    let transport = MqttTransport::new(MqttTransportOptions::plain_tcp(1883)).unwrap();
    for host in ["hub.example.com", "10.1.2.3", "localhost.example.com"] {
        let err = match transport.connect(&creds(host), &spotflow_core::SessionInfo::default()).await {
            Err(e) => e,
            Ok(_) => panic!("plain MQTT to {host} was allowed"),
        };
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
        assert!(err.to_string().contains("loopback"), "{err}");
    }
    // Loopback is still allowed (the fake broker on 127.0.0.1 answers).
    let port = fake_broker(Vec::new()).await;
    let transport = MqttTransport::new(MqttTransportOptions::plain_tcp(port)).unwrap();
    assert!(transport.connect(&creds("localhost"), &spotflow_core::SessionInfo::default()).await.is_ok());
}

/// A server that streams an endless body (announced as 400 MB, or chunked without a length).
async fn endless_server(announce_length: bool) -> String {
    serve(move |mut s| async move {
        let head = if announce_length {
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 400000000\r\n\r\n".to_owned()
        } else {
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_owned()
        };
        if s.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b' '; 64 * 1024];
        // Bounded: at most 400 MB, and it stops as soon as the client hangs up.
        for _ in 0..6_000 {
            let ok = if announce_length {
                s.write_all(&chunk).await.is_ok()
            } else {
                s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.is_ok()
                    && s.write_all(&chunk).await.is_ok()
                    && s.write_all(b"\r\n").await.is_ok()
            };
            if !ok {
                return;
            }
        }
    })
    .await
}

/// Hardening: an answer larger than the API ever needs is refused after at most
/// `MAX_ANSWER_BYTES` (it used to be read whole: a fake platform streaming 400 MB took the
/// process to 920 MB).
#[tokio::test]
async fn endless_http_answers_are_cut_off() {
    for announce in [true, false] {
        let api = api_at(&endless_server(announce).await);
        let err = tokio::time::timeout(Duration::from_secs(20), api.init_provisioning(&Secret::new("pt"), Some("d")))
            .await
            .expect("refused at once, not after reading 400 MB")
            .unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }
    assert_eq!(spotflow_transport_mqtt::MAX_ANSWER_BYTES, 256 * 1024);
}

/// Hardening: a broker flooding the device with desired-properties patches while the SDK does not
/// take events is held back by TCP: the connection buffers a bounded number of events (it used to
/// buffer everything, without limit), and the events still come through in order afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_broker_is_held_back_by_a_bounded_event_channel() {
    const PACKETS: usize = 100_000;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (written_tx, written_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let _ = s.read(&mut buf).await;
        s.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        tokio::spawn(async move { while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {} });
        // 1 KiB patches, versions 2, 3, …: write until the client stops taking them (a write
        // that cannot complete within 2 s) or everything is written.
        let filler = "f".repeat(1000);
        let mut written = 0usize;
        for version in 2..(PACKETS + 2) {
            let topic = format!("$iothub/twin/PATCH/properties/desired/?$version={version}");
            let packet = publish_packet(&topic, format!("{{\"f\":\"{filler}\"}}").as_bytes());
            match tokio::time::timeout(Duration::from_secs(2), wr.write_all(&packet)).await {
                Ok(Ok(())) => written += 1,
                _ => break,
            }
        }
        let _ = written_tx.send(written);
        // Keep the socket open while the client drains.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(wr);
    });
    let transport = MqttTransport::new(MqttTransportOptions::plain_tcp(port)).unwrap();
    let mut conn = transport.connect(&creds("127.0.0.1"), &spotflow_core::SessionInfo::default()).await.unwrap();
    let written = tokio::time::timeout(Duration::from_secs(60), written_rx).await.unwrap().unwrap();
    assert!(
        written < PACKETS / 2,
        "the broker wrote {written} of {PACKETS} patches although nobody took them: the events are not bounded"
    );
    // The connection is healthy and delivers the patches in order.
    for expected in 2..12u64 {
        let got = tokio::time::timeout(Duration::from_secs(10), conn.next_event()).await.unwrap().unwrap();
        match got {
            TransportEvent::DesiredPatch { version, .. } => assert_eq!(version, expected),
            other => panic!("unexpected {other:?}"),
        }
    }
    conn.close().await;
}
