//! The emulator against raw protocol clients (reqwest, rumqttc, tokio-tungstenite): every
//! endpoint and topic, their error answers, and bad input.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use serde_json::{json, Value};
use spotflow_emulator::{Emulator, MessageQuery};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::*;

#[tokio::test]
async fn provisioning_registration_and_refresh_over_https_with_every_error_status() {
    let emu = emulator().await;
    let http = https(&emu);
    let base = emu.https_url();
    let post = reqwest::Method::POST;
    let put = reqwest::Method::PUT;
    let pt = emu.create_provisioning_token();
    let auth = format!("DeviceToken {pt}");
    // init: 401 without or with a wrong token, 400 for bad JSON, 200 otherwise.
    assert_eq!(call(&http, post.clone(), format!("{base}/provisioning-operations/init"), None, "{}").await.0, 401);
    let (s, body) =
        call(&http, post.clone(), format!("{base}/provisioning-operations/init"), Some("DeviceToken nope"), "{}").await;
    assert_eq!((s, body["status"].as_u64()), (401, Some(401)));
    for bad in ["not json", "[1]", r#"{"deviceId": 5}"#, r#"{"deviceId": "a:b"}"#] {
        assert_eq!(
            call(&http, post.clone(), format!("{base}/provisioning-operations/init"), Some(&auth), bad).await.0,
            400,
            "{bad}"
        );
    }
    let (s, op) = call(&http, post.clone(), format!("{base}/provisioning-operations/init"), Some(&auth), "{}").await;
    assert_eq!(s, 200);
    let id = op["provisioningOperationId"].as_str().unwrap().to_owned();
    assert!(op["verificationCode"].is_string());
    assert!(spotflow_core::time_format::parse_rfc3339(op["expirationTime"].as_str().unwrap()).is_ok());
    // complete: 202 while pending, 401 with another token, 404 unknown, 400 bad body.
    let complete = |body: String, auth: String| {
        let http = http.clone();
        let url = format!("{base}/provisioning-operations/complete");
        async move { call(&http, reqwest::Method::PUT, url, Some(&auth), &body).await }
    };
    let body = json!({"provisioningOperationId": id}).to_string();
    let (s, empty) = complete(body.clone(), auth.clone()).await;
    assert_eq!((s, empty), (202, Value::Null));
    let other = emu.create_provisioning_token();
    assert_eq!(complete(body.clone(), format!("DeviceToken {other}")).await.0, 401);
    assert_eq!(complete(json!({"provisioningOperationId": "x"}).to_string(), auth.clone()).await.0, 404);
    assert_eq!(complete("{".into(), auth.clone()).await.0, 400);
    // A technician approves it under another device id.
    assert_eq!(emu.approve(&id, Some("tech-id")).unwrap(), "tech-id");
    let (s, done) = complete(body.clone(), auth.clone()).await;
    assert_eq!(s, 200);
    let rt = done["registrationToken"].as_str().unwrap().to_owned();
    assert!(spotflow_core::time_format::parse_rfc3339(done["expirationTime"].as_str().unwrap()).is_ok());
    // register: 401 bad token, 400 unsupported type, 200 with the exact fields.
    let register = |auth: &str, kind: &str| {
        let (http, auth) = (http.clone(), auth.to_owned());
        let body = json!({ "connectionStringType": kind }).to_string();
        let url = format!("{base}/devices/register");
        async move { call(&http, reqwest::Method::PUT, url, Some(&auth), &body).await }
    };
    assert_eq!(register("DeviceToken bad", "SharedAccessSignature").await.0, 401);
    assert_eq!(register(&format!("DeviceToken {rt}"), "SharedAccessKey").await.0, 400);
    let (s, reg) = register(&format!("DeviceToken {rt}"), "SharedAccessSignature").await;
    assert_eq!(s, 200);
    let cs = reg["connectionString"].as_str().unwrap();
    assert!(
        cs.starts_with(
            "HostName=localhost;DeviceId=ws-emulator:tech-id;SharedAccessSignature=SharedAccessSignature sr="
        ),
        "{cs}"
    );
    assert_eq!(reg["iotHubHostName"], "localhost");
    assert_eq!(reg["connectionStringType"], "SharedAccessSignature");
    assert!(spotflow_core::time_format::parse_rfc3339(reg["connectionStringExpiration"].as_str().unwrap()).is_ok());
    assert!(
        spotflow_core::time_format::parse_timespan(reg["tokenRemainingLifetime"].as_str().unwrap()).unwrap()
            > Duration::from_secs(86_400)
    );
    // refresh: with the provisioning token; the old registration token stops working.
    let refresh_url = format!("{base}/devices/registration-tokens/refresh");
    let rt_body = json!({"registrationToken": rt}).to_string();
    assert_eq!(
        call(&http, put.clone(), refresh_url.clone(), Some(&format!("DeviceToken {other}")), &rt_body).await.0,
        401
    );
    assert_eq!(call(&http, put.clone(), refresh_url.clone(), Some(&auth), "{}").await.0, 400);
    let (s, fresh) = call(&http, put.clone(), refresh_url.clone(), Some(&auth), &rt_body).await;
    assert_eq!(s, 200);
    let new_rt = fresh["registrationToken"].as_str().unwrap();
    assert_ne!(new_rt, rt);
    assert_eq!(register(&format!("DeviceToken {rt}"), "SharedAccessSignature").await.0, 401);
    assert_eq!(register(&format!("DeviceToken {new_rt}"), "SharedAccessSignature").await.0, 200);
    // A cancelled operation answers 410 with the cancellation problem type.
    let (_, op2) = call(&http, post.clone(), format!("{base}/provisioning-operations/init"), Some(&auth), "{}").await;
    let id2 = op2["provisioningOperationId"].as_str().unwrap().to_owned();
    assert!(emu.cancel(&id2));
    let (s, problem) = complete(json!({"provisioningOperationId": id2}).to_string(), auth.clone()).await;
    assert_eq!(
        (s, problem["type"].as_str()),
        (410, Some("/problems/deviceProvisioning/provisioningOperationCancelled"))
    );
}

#[tokio::test]
async fn expired_operations_answer_410_and_auto_approval_approves() {
    let emu = Emulator::builder()
        .lifetimes(Duration::from_millis(300), Duration::from_secs(60), Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let http = https(&emu);
    let base = emu.https_url();
    let pt = emu.create_provisioning_token();
    let auth = format!("DeviceToken {pt}");
    let (_, op) =
        call(&http, reqwest::Method::POST, format!("{base}/provisioning-operations/init"), Some(&auth), "{}").await;
    let body = json!({"provisioningOperationId": op["provisioningOperationId"]}).to_string();
    // Poll (bounded) until the operation expires.
    let deadline = tokio::time::Instant::now() + WAIT;
    let problem = loop {
        let (s, p) =
            call(&http, reqwest::Method::PUT, format!("{base}/provisioning-operations/complete"), Some(&auth), &body)
                .await;
        if s == 410 {
            break p;
        }
        assert_eq!(s, 202);
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(problem["type"], "/problems/deviceProvisioning/provisioningOperationExpired");

    let auto = Emulator::builder().auto_approve(Some(Duration::ZERO)).start().await.unwrap();
    let http = https(&auto);
    let pt = auto.create_provisioning_token();
    let auth = format!("DeviceToken {pt}");
    let base = auto.https_url();
    let (_, op) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/provisioning-operations/init"),
        Some(&auth),
        r#"{"deviceId":"auto-1"}"#,
    )
    .await;
    let body = json!({"provisioningOperationId": op["provisioningOperationId"]}).to_string();
    let (s, done) =
        call(&http, reqwest::Method::PUT, format!("{base}/provisioning-operations/complete"), Some(&auth), &body).await;
    assert_eq!(s, 200, "{done}");
}

#[tokio::test]
async fn mqtt_over_tls_telemetry_twin_and_desired_pushes() {
    let emu = emulator().await;
    let dev = register(&emu, "mqtt-1").await;
    let (client, mut ev) = AsyncClient::new(mqtt_options(&emu, &dev, true), 1000);
    until(&mut ev, |e| matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())).await;
    client
        .subscribe_many([
            rumqttc::SubscribeFilter::new("$iothub/twin/res/#".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("$iothub/twin/PATCH/properties/desired/#".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new(format!("devices/{}/messages/devicebound/#", dev.hub_id), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("devices/ws-emulator:other/messages/devicebound/#".into(), QoS::AtLeastOnce),
        ])
        .await
        .unwrap();
    let codes = until(&mut ev, |e| match e {
        Event::Incoming(Packet::SubAck(s)) => Some(s.return_codes.clone()),
        _ => None,
    })
    .await;
    assert_eq!(codes.len(), 4, "one return code per filter");
    assert!(matches!(codes[3], rumqttc::SubscribeReasonCode::Failure), "another device's topic is refused");
    // Twin GET: answered at QoS 0 with both versions.
    client.publish("$iothub/twin/GET/?$rid=r1", QoS::AtLeastOnce, false, vec![]).await.unwrap();
    let (topic, payload, qos) = until(&mut ev, |e| match e {
        Event::Incoming(Packet::Publish(p)) => Some((p.topic.clone(), p.payload.clone(), p.qos)),
        _ => None,
    })
    .await;
    assert_eq!((topic.as_str(), qos), ("$iothub/twin/res/200/?$rid=r1", QoS::AtMostOnce));
    let twin: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(twin, json!({"desired": {"$version": 1}, "reported": {"$version": 1}}));
    // Reported patch: merge semantics, 204 with the new version; not an object: 400.
    client
        .publish(
            "$iothub/twin/PATCH/properties/reported/?$rid=r2",
            QoS::AtLeastOnce,
            false,
            br#"{"a":1,"b":{"c":2}}"#.to_vec(),
        )
        .await
        .unwrap();
    let topic = until(&mut ev, |e| match e {
        Event::Incoming(Packet::Publish(p)) => Some(p.topic.clone()),
        _ => None,
    })
    .await;
    assert_eq!(topic, "$iothub/twin/res/204/?$rid=r2&$version=2");
    client
        .publish(
            "$iothub/twin/PATCH/properties/reported/?$rid=r3",
            QoS::AtLeastOnce,
            false,
            br#"{"b":{"c":null},"d":true}"#.to_vec(),
        )
        .await
        .unwrap();
    client
        .publish("$iothub/twin/PATCH/properties/reported/?$rid=r4", QoS::AtLeastOnce, false, b"[1]".to_vec())
        .await
        .unwrap();
    let mut answers = Vec::new();
    while answers.len() < 2 {
        answers.push(
            until(&mut ev, |e| match e {
                Event::Incoming(Packet::Publish(p)) => Some(p.topic.clone()),
                _ => None,
            })
            .await,
        );
    }
    assert_eq!(answers, vec!["$iothub/twin/res/204/?$rid=r3&$version=3", "$iothub/twin/res/400/?$rid=r4"]);
    assert_eq!(Value::Object(emu.twin(&dev.hub_id).unwrap().reported), json!({"a":1,"b":{},"d":true}));
    // Desired update from the admin: pushed with $version in topic and body.
    let version = emu.update_desired(&dev.hub_id, json!({"interval": 5}).as_object().cloned().unwrap()).unwrap();
    assert_eq!(version, 2);
    let (topic, payload) = until(&mut ev, |e| match e {
        Event::Incoming(Packet::Publish(p)) => Some((p.topic.clone(), p.payload.clone())),
        _ => None,
    })
    .await;
    assert_eq!(topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
    assert_eq!(serde_json::from_slice::<Value>(&payload).unwrap(), json!({"interval": 5, "$version": 2}));
    // Telemetry: 300 QoS 1 messages with 100 in flight, every one acknowledged and stored with its
    // decoded properties and payload.
    let raw: String = (0..50).map(|i| format!("{{\"t\":{i},\"v\":21.5}}")).collect();
    for i in 0..300u32 {
        let (topic, payload) = match i % 4 {
            0 => (format!("devices/{}/messages/events/stream-group-name=sg%201&stream-name=st%2F1&batch-id=b{}&message-id=m{i}", dev.hub_id, i / 100), raw.clone().into_bytes()),
            1 => (format!("devices/{}/messages/events/stream-name=s&content-encoding=lz4", dev.hub_id), spotflow_core::Compression::Lz4.compress(raw.as_bytes()).unwrap().1),
            2 => (format!("devices/{}/messages/events/content-encoding=zstd", dev.hub_id), spotflow_core::Compression::Zstd { level: 19 }.compress(raw.as_bytes()).unwrap().1),
            _ => (format!("devices/{}/messages/events/content-encoding=br", dev.hub_id), spotflow_core::Compression::Fastest.compress(raw.as_bytes()).unwrap().1),
        };
        client.publish(topic, QoS::AtLeastOnce, false, payload).await.unwrap();
    }
    // (The acknowledgements of the twin requests were passed over while waiting for their answers.)
    let mut acks = 0;
    while acks < 300 {
        until(&mut ev, |e| matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())).await;
        acks += 1;
    }
    let stored = emu
        .messages(MessageQuery { hub_device_id: Some(dev.hub_id.clone()), limit: Some(1000), ..Default::default() })
        .await;
    assert_eq!(stored.len(), 300);
    for (i, m) in stored.iter().enumerate() {
        assert_eq!(m.payload, raw.as_bytes(), "message {i} decoded");
    }
    assert_eq!((stored[0].stream_group.as_deref(), stored[0].stream.as_deref()), (Some("sg 1"), Some("st/1")));
    assert_eq!((stored[0].batch_id.as_deref(), stored[0].message_id.as_deref()), (Some("b0"), Some("m0")));
    assert_eq!(stored[1].content_encoding.as_deref(), Some("lz4"));
    assert_eq!(stored[2].content_encoding.as_deref(), Some("zstd"));
    assert_eq!(stored[3].content_encoding.as_deref(), Some("br"));
    assert!(stored.iter().all(|m| m.decode_error.is_none()));
    // Markers.
    client
        .publish(
            format!("devices/{}/messages/events/batch-id=b1&complete-batch=true&ignore-payload=true", dev.hub_id),
            QoS::AtLeastOnce,
            false,
            vec![],
        )
        .await
        .unwrap();
    until(&mut ev, |e| matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())).await;
    let last = emu.messages(MessageQuery { after_id: Some(stored[299].id), ..Default::default() }).await;
    assert!(last[0].complete_batch && !last[0].complete_message);
}

async fn expect_refused(emu: &Emulator, mut options: MqttOptions, expected: ConnectReturnCode) {
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(emu.client_tls_config()))));
    let (_c, mut ev) = AsyncClient::new(options, 10);
    let err = tokio::time::timeout(WAIT, async {
        loop {
            if let Err(e) = ev.poll().await {
                return e;
            }
        }
    })
    .await
    .unwrap();
    match err {
        ConnectionError::ConnectionRefused(code) => assert_eq!(code, expected),
        other => panic!("expected refusal {expected:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_credentials_get_the_right_connack_codes() {
    let emu = emulator().await;
    let dev = register(&emu, "creds").await;
    let port = emu.mqtts_addr().unwrap().port();
    let user = format!("localhost/{}/?api-version=2018-06-30", dev.hub_id);
    let mut o = MqttOptions::new(dev.hub_id.clone(), "localhost", port);
    o.set_credentials(user.clone(), "SharedAccessSignature sig=forged");
    expect_refused(&emu, o, ConnectReturnCode::NotAuthorized).await;
    let mut o = MqttOptions::new(dev.hub_id.clone(), "localhost", port);
    o.set_credentials("otherhub/x/?api-version=2018-06-30", dev.sas.clone());
    expect_refused(&emu, o, ConnectReturnCode::BadUserNamePassword).await;
    let mut o = MqttOptions::new("no-colon", "localhost", port);
    o.set_credentials(user.clone(), dev.sas.clone());
    expect_refused(&emu, o, ConnectReturnCode::BadClientId).await;
    // Another device's SAS does not let a device act as this one.
    let other = register(&emu, "creds-2").await;
    let mut o = MqttOptions::new(dev.hub_id.clone(), "localhost", port);
    o.set_credentials(user, other.sas.clone());
    expect_refused(&emu, o, ConnectReturnCode::NotAuthorized).await;
}

#[tokio::test]
async fn publishing_to_another_devices_topic_or_qos2_closes_the_connection() {
    let emu = emulator().await;
    let dev = register(&emu, "acl").await;
    for (topic, qos) in [
        ("devices/ws-emulator:victim/messages/events/".to_owned(), QoS::AtLeastOnce),
        ("some/random/topic".to_owned(), QoS::AtLeastOnce),
        (format!("devices/{}/messages/events/", dev.hub_id), QoS::ExactlyOnce),
    ] {
        let (client, mut ev) = AsyncClient::new(mqtt_options(&emu, &dev, false), 10);
        until(&mut ev, |e| matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())).await;
        client.publish(topic.clone(), qos, false, b"x".to_vec()).await.unwrap();
        let closed = tokio::time::timeout(WAIT, async {
            loop {
                match ev.poll().await {
                    Err(_) => return true,
                    Ok(Event::Incoming(Packet::PubAck(_))) => return false,
                    Ok(_) => {}
                }
            }
        })
        .await
        .unwrap();
        assert!(closed, "{topic} at {qos:?} must close the connection");
    }
    assert_eq!(emu.message_count().await, 0, "nothing stored");
}

#[tokio::test]
async fn malformed_and_oversized_packets_close_the_connection_and_the_emulator_survives() {
    let emu = emulator().await;
    let addr = emu.mqtt_addr().unwrap();
    // Garbage instead of CONNECT, a CONNECT with a bad protocol, and an oversized packet.
    let oversized = {
        let mut v = vec![0x10u8];
        let mut len = 10 * 1024 * 1024u32;
        loop {
            let mut b = (len % 128) as u8;
            len /= 128;
            if len > 0 {
                b |= 0x80;
            }
            v.push(b);
            if len == 0 {
                break;
            }
        }
        v
    };
    for bytes in [b"\xff\xff\xff\xff\xff garbage".to_vec(), b"\x10\x05\x00\x03ABC".to_vec(), oversized] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0, "connection closed without an answer");
    }
    // Random bytes for a bounded number of rounds (a seeded fuzz of the listeners).
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..200 {
        let len = rng.usize(1..512);
        let bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(&bytes).await;
        let _ = s.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut sink)).await;
        let mut h = tokio::net::TcpStream::connect(emu.http_addr().unwrap()).await.unwrap();
        let _ = h.write_all(&bytes).await;
        let _ = h.shutdown().await;
        let _ = tokio::time::timeout(WAIT, h.read_to_end(&mut sink)).await;
    }
    // Still fully working afterwards.
    let dev = register(&emu, "after-fuzz").await;
    let (client, mut ev) = AsyncClient::new(mqtt_options(&emu, &dev, false), 10);
    until(&mut ev, |e| matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())).await;
    client
        .publish(format!("devices/{}/messages/events/", dev.hub_id), QoS::AtLeastOnce, false, b"ok".to_vec())
        .await
        .unwrap();
    until(&mut ev, |e| matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())).await;
    assert_eq!(emu.message_count().await, 1);
}

#[tokio::test]
async fn every_http_endpoint_rejects_invalid_json_and_missing_auth() {
    let emu = emulator().await;
    let dev = register(&emu, "json").await;
    let http = https(&emu);
    let base = emu.https_url();
    let pt = format!("DeviceToken {}", dev.provisioning_token);
    let rt = format!("DeviceToken {}", dev.registration_token);
    let admin = format!("Bearer {}", emu.admin_token());
    let cases: Vec<(reqwest::Method, String, String)> = vec![
        (reqwest::Method::POST, "/provisioning-operations/init".into(), pt.clone()),
        (reqwest::Method::PUT, "/provisioning-operations/complete".into(), pt.clone()),
        (reqwest::Method::PUT, "/devices/register".into(), rt),
        (reqwest::Method::PUT, "/devices/registration-tokens/refresh".into(), pt),
        (reqwest::Method::POST, format!("/devices/{}/files?api-version=2020-03-13", dev.hub_id), dev.sas.clone()),
        (
            reqwest::Method::POST,
            format!("/devices/{}/files/notifications?api-version=2020-03-13", dev.hub_id),
            dev.sas.clone(),
        ),
        (reqwest::Method::PATCH, format!("/admin/devices/{}/desired", dev.hub_id), admin.clone()),
    ];
    for (method, path, auth) in cases {
        for bad in ["{", "null", "\"s\"", "[]"] {
            let (s, body) = call(&http, method.clone(), format!("{base}{path}"), Some(&auth), bad).await;
            assert_eq!(s, 400, "{method} {path} with {bad}: {body}");
            assert_eq!(body["status"], 400);
        }
        let (s, _) = call(&http, method.clone(), format!("{base}{path}"), None, "{}").await;
        assert_eq!(s, 401, "{method} {path} without authorization");
    }
    assert_eq!(
        call(&http, reqwest::Method::GET, format!("{base}/admin/devices"), Some("Bearer wrong"), "").await.0,
        401
    );
    let (s, devices) = call(&http, reqwest::Method::GET, format!("{base}/admin/devices"), Some(&admin), "").await;
    assert_eq!(s, 200);
    assert_eq!(devices[0]["deviceId"], "json");
}

#[tokio::test]
async fn large_messages_are_uploaded_and_linked() {
    let emu = emulator().await;
    let dev = register(&emu, "big").await;
    let http = https(&emu);
    let base = emu.https_url();
    let blob_name = "3f0f1c1e-0000-4000-8000-000000000001";
    let (s, up) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/devices/{}/files?api-version=2020-03-13", dev.hub_id),
        Some(&dev.sas),
        &json!({"blobName": blob_name}).to_string(),
    )
    .await;
    assert_eq!(s, 200, "{up}");
    let sas_token = up["sasToken"].as_str().unwrap();
    assert!(sas_token.starts_with('?'));
    let url = format!(
        "https://{}/{}/{}{}",
        up["hostName"].as_str().unwrap(),
        up["containerName"].as_str().unwrap(),
        up["blobName"].as_str().unwrap(),
        sas_token
    );
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let put = http.put(&url).header("x-ms-blob-type", "BlockBlob").body(payload.clone()).send().await.unwrap();
    assert_eq!(put.status().as_u16(), 201);
    let bad = http.put(url.replace("sig=", "sig=x")).body(vec![1]).send().await.unwrap();
    assert_eq!(bad.status().as_u16(), 401, "a wrong blob signature is refused");
    let note = json!({"correlationId": up["correlationId"], "isSuccess": true, "statusCode": 200, "statusDescription": "Done"});
    let (s, _) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/devices/{}/files/notifications?api-version=2020-03-13", dev.hub_id),
        Some(&dev.sas),
        &note.to_string(),
    )
    .await;
    assert_eq!(s, 204);
    publish_link(&emu, &dev, blob_name).await;
    let stored = emu.messages(MessageQuery::default()).await;
    assert_eq!(stored.len(), 1);
    assert!(stored[0].externalized);
    assert_eq!(stored[0].payload, payload, "the linked blob is stored with the message");

    // Hardening: blobs are scoped to the device that uploaded them. Another device can neither
    // take the name over nor link the blob into its own message.
    let other = register(&emu, "other").await;
    let (s, _) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/devices/{}/files?api-version=2020-03-13", other.hub_id),
        Some(&other.sas),
        &json!({"blobName": blob_name}).to_string(),
    )
    .await;
    assert_eq!(s, 409, "another device cannot start an upload of the same blob name");
    // Names are bounded (the uploads map once grew by 93 MB from 60 calls with 1.5 MB names).
    for bad in ["x".repeat(257), "a\nb".to_owned()] {
        let (s, _) = call(
            &http,
            reqwest::Method::POST,
            format!("{base}/devices/{}/files?api-version=2020-03-13", other.hub_id),
            Some(&other.sas),
            &json!({"blobName": bad}).to_string(),
        )
        .await;
        assert_eq!(s, 400, "{bad:?}");
    }
    publish_link(&emu, &other, blob_name).await;
    let theirs = emu.messages(MessageQuery { hub_device_id: Some(other.hub_id.clone()), ..Default::default() }).await;
    assert_eq!(theirs.len(), 1);
    assert_ne!(theirs[0].payload, payload, "another device's blob is not linked");
    assert!(theirs[0].other_properties.iter().any(|(k, v)| k == "error" && v.contains("not found")));
}

#[tokio::test]
async fn mqtt_over_websocket_with_the_mqtt_subprotocol() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let emu = emulator().await;
    let dev = register(&emu, "ws").await;
    let url = format!("ws://{}/$iothub/websocket", emu.http_addr().unwrap());
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "mqtt".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "mqtt");
    let mut connect = rumqttc::mqttbytes::v4::Connect::new(dev.hub_id.clone());
    connect.set_login(format!("localhost/{}/?api-version=2018-06-30", dev.hub_id), dev.sas.clone());
    connect.keep_alive = 30;
    let mut buf = bytes::BytesMut::new();
    rumqttc::mqttbytes::v4::Packet::Connect(connect).write(&mut buf, usize::MAX).unwrap();
    // Split the CONNECT across two frames: MQTT packets need not align with frames.
    let (a, b) = buf.split_at(5);
    ws.send(Message::Binary(bytes::Bytes::copy_from_slice(a))).await.unwrap();
    ws.send(Message::Binary(bytes::Bytes::copy_from_slice(b))).await.unwrap();
    let frame = tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(frame.into_data().as_ref(), &[0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
    ws.send(Message::Text("not mqtt".into())).await.unwrap();
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .unwrap();
    assert!(end, "a text frame closes the connection");
}

#[tokio::test]
async fn serve_http_serves_mqtt_over_websocket_on_any_stream() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let emu = std::sync::Arc::new(emulator().await);
    let dev = register(&emu, "ws-pipe").await;
    let (device, server_side) = tokio::io::duplex(64 * 1024);
    let serving = {
        let emu = emu.clone();
        tokio::spawn(async move { emu.serve_http(server_side).await })
    };
    let mut req = "ws://localhost/$iothub/websocket".into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "mqtt".parse().unwrap());
    let (mut ws, resp) =
        tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, device)).await.unwrap().unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "mqtt");
    let mut connect = rumqttc::mqttbytes::v4::Connect::new(dev.hub_id.clone());
    connect.set_login(format!("localhost/{}/?api-version=2018-06-30", dev.hub_id), dev.sas.clone());
    let mut buf = bytes::BytesMut::new();
    rumqttc::mqttbytes::v4::Packet::Connect(connect).write(&mut buf, usize::MAX).unwrap();
    ws.send(Message::Binary(buf.freeze())).await.unwrap();
    let frame = tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(frame.into_data().as_ref(), &[0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
    ws.close(None).await.unwrap();
    tokio::time::timeout(WAIT, serving).await.expect("the HTTP connection ends").unwrap();
}

#[tokio::test]
async fn state_and_messages_survive_a_restart_of_the_emulator() {
    let dir = tempfile::tempdir().unwrap();
    let (dev, ca) = {
        let emu = Emulator::builder().data_dir(dir.path()).mqtt_port(0).start().await.unwrap();
        let dev = register(&emu, "persist").await;
        let (client, mut ev) = AsyncClient::new(mqtt_options(&emu, &dev, false), 10);
        until(&mut ev, |e| matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())).await;
        client.subscribe("$iothub/twin/res/#", QoS::AtLeastOnce).await.unwrap();
        until(&mut ev, |e| matches!(e, Event::Incoming(Packet::SubAck(_))).then_some(())).await;
        client
            .publish(format!("devices/{}/messages/events/", dev.hub_id), QoS::AtLeastOnce, false, b"kept".to_vec())
            .await
            .unwrap();
        until(&mut ev, |e| matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())).await;
        emu.update_desired(&dev.hub_id, json!({"k": 1}).as_object().cloned().unwrap());
        (dev, emu.ca_pem().to_owned())
    };
    let emu = Emulator::builder().data_dir(dir.path()).mqtt_port(0).start().await.unwrap();
    assert_eq!(emu.ca_pem(), ca, "the CA is reused");
    assert!(emu.ca_path().unwrap().ends_with("ca.pem"));
    assert_eq!(emu.twin(&dev.hub_id).unwrap().desired_version, 2);
    assert_eq!(emu.messages(MessageQuery::default()).await[0].payload, b"kept");
    // The device's credentials are still valid.
    let (_client, mut ev) = AsyncClient::new(mqtt_options(&emu, &dev, false), 10);
    let connack = until(&mut ev, |e| match e {
        Event::Incoming(Packet::ConnAck(c)) => Some(c.clone()),
        _ => None,
    })
    .await;
    assert!(connack.session_present, "subscriptions kept for the clean-session-false client");
}

/// Payloads the emulator cannot decode (an unknown encoding, corrupt data, a decompression bomb)
/// are stored exactly as they arrived and flagged, never dropped; the admin API shows the flag.
#[tokio::test]
async fn undecodable_payloads_are_stored_as_received_and_flagged() {
    let emu = emulator().await;
    let dev = register(&emu, "flagged").await;
    let (client, mut ev) = AsyncClient::new(mqtt_options(&emu, &dev, true), 100);
    until(&mut ev, |e| matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())).await;
    let bomb = spotflow_core::Compression::Zstd { level: 3 }.compress(&vec![0u8; 32 << 20]).unwrap().1;
    let good = spotflow_core::Compression::Lz4.compress(&b"lz4 frame ".repeat(50)).unwrap().1;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("gzip", b"\x1f\x8b not really".to_vec(), "unknown content encoding"),
        ("br", b"definitely not brotli".to_vec(), "brotli payload"),
        ("zstd", bomb.clone(), "more than"),
        ("lz4", good.clone(), ""),
    ];
    for (encoding, payload, _) in &cases {
        let topic = format!("devices/{}/messages/events/stream-name=flags&content-encoding={encoding}", dev.hub_id);
        client.publish(topic, QoS::AtLeastOnce, false, payload.clone()).await.unwrap();
    }
    let mut acks = 0;
    while acks < cases.len() {
        until(&mut ev, |e| matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())).await;
        acks += 1;
    }
    let stored = emu
        .messages(MessageQuery { hub_device_id: Some(dev.hub_id.clone()), limit: Some(10), ..Default::default() })
        .await;
    assert_eq!(stored.len(), cases.len(), "every message is stored, decodable or not");
    for (m, (encoding, payload, error)) in stored.iter().zip(&cases) {
        assert_eq!(m.content_encoding.as_deref(), Some(*encoding));
        if error.is_empty() {
            assert_eq!(m.decode_error, None);
            assert_eq!(m.payload, b"lz4 frame ".repeat(50));
        } else {
            let flag = m.decode_error.as_deref().unwrap_or_else(|| panic!("{encoding} flagged"));
            assert!(flag.contains(error), "{encoding}: {flag}");
            assert_eq!(&m.payload, payload, "{encoding}: kept exactly as it arrived");
        }
    }
    // The admin API (and so `messages tail`) shows the flag.
    let (status, listed) = call(
        &https(&emu),
        reqwest::Method::GET,
        format!("{}/admin/messages?device={}", emu.https_url(), dev.hub_id),
        Some(&format!("Bearer {}", emu.admin_token())),
        "",
    )
    .await;
    assert_eq!(status, 200);
    let flags: Vec<bool> = listed.as_array().unwrap().iter().map(|m| m["decodeError"].is_string()).collect();
    assert_eq!(flags, vec![true, true, true, false]);
}

/// With recording on, the emulator keeps what devices sent (secrets masked) and serves it to
/// the admin API.
#[tokio::test]
async fn traffic_recording_keeps_the_exchanges_with_secrets_masked() {
    let emu = Emulator::builder().record_traffic(true).start().await.unwrap();
    let dev = register(&emu, "recorded").await;
    let (client, mut ev) = AsyncClient::new(mqtt_options(&emu, &dev, true), 100);
    until(&mut ev, |e| matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())).await;
    let topic = format!("devices/{}/messages/events/stream-name=s", dev.hub_id);
    client.publish(topic.clone(), QoS::AtLeastOnce, false, b"\xff\x01raw".to_vec()).await.unwrap();
    until(&mut ev, |e| matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())).await;
    let traffic = emu.traffic();
    let text = serde_json::to_string(&traffic).unwrap();
    for secret in [&dev.sas, &dev.registration_token, &dev.provisioning_token] {
        assert!(!text.contains(secret.as_str()), "a secret was recorded");
    }
    let paths: Vec<&str> = traffic.iter().filter_map(|r| r["path"].as_str()).collect();
    assert_eq!(paths, ["/provisioning-operations/init", "/provisioning-operations/complete", "/devices/register"]);
    let connect = traffic.iter().find(|r| r["packet"] == "connect").unwrap();
    assert_eq!(connect["clientId"], json!(dev.hub_id));
    assert!(connect["password"].as_str().unwrap().contains("sig=<sig>"));
    let publish = traffic.iter().find(|r| r["packet"] == "publish" && r["dir"] == "in").unwrap();
    assert_eq!(publish["topic"].as_str(), Some(topic.as_str()));
    assert_eq!(publish["payload"], json!({"hex": "ff01726177"}));
    let (status, page) = call(
        &https(&emu),
        reqwest::Method::GET,
        format!("{}/admin/traffic?from=1&limit=2", emu.https_url()),
        Some(&format!("Bearer {}", emu.admin_token())),
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(page["records"].as_array().unwrap().len(), 2);
    assert_eq!(page["records"][0]["seq"], json!(1));
}

/// Hardening: the emulator's database (SAS keys, tokens), admin token and private keys are
/// owner-only; an admin token left world-readable by an earlier version is tightened.
#[cfg(unix)]
#[tokio::test]
async fn the_emulators_secret_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::builder().data_dir(dir.path()).start().await.unwrap();
    register(&emu, "modes").await;
    for f in ["emulator.db", "emulator.db-wal", "admin-token", "ca-key.pem", "server-key.pem"] {
        assert_eq!(mode(&dir.path().join(f)), 0o600, "{f}");
    }
    emu.shutdown();
    drop(emu);
    std::fs::set_permissions(dir.path().join("admin-token"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(dir.path().join("emulator.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let emu = Emulator::builder().data_dir(dir.path()).start().await.unwrap();
    assert_eq!(mode(&dir.path().join("admin-token")), 0o600);
    assert_eq!(mode(&dir.path().join("emulator.db")), 0o600);
    assert!(emu.devices().iter().any(|d| d.device_id == "modes"), "state kept");
}

/// Hardening: secrets (SAS keys, tokens, blob signatures, blob names, queue ids) come from the
/// OS CSPRNG (`spotflow_core::secure_random`); `fastrand` is left for retry jitter only. A source
/// check, so that a new secret cannot quietly come from the fast generator again.
#[test]
fn secrets_do_not_come_from_the_fast_generator() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut offenders = Vec::new();
    for krate in
        ["spotflow-emulator", "spotflow-device", "spotflow-transport-mqtt", "spotflow-transport-ws", "spotflow-core"]
    {
        let mut dirs = vec![root.join(krate).join("src")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let allowed = path.ends_with("backoff.rs") || path.components().any(|c| c.as_os_str() == "testkit");
                    if text.contains("fastrand::") && !allowed {
                        offenders.push(path.display().to_string());
                    }
                }
            }
        }
    }
    assert!(offenders.is_empty(), "fastrand used outside retry jitter: {offenders:?}");
}

/// Hardening: a client id with a newline and an escape sequence (forged log lines, coloured text)
/// is logged escaped, never raw; device ids are validated at provisioning and approval.
#[tokio::test]
async fn untrusted_strings_are_logged_escaped_and_device_ids_validated() {
    let mut process = EmulatorProcess::spawn(&[], &[]);
    let mqtt = process.banner_value("plain MQTT:");
    let evil = "evil\nFORGED LOG LINE \u{1b}[31mred";
    let mut options =
        MqttOptions::new(evil, mqtt.rsplit_once(':').unwrap().0, mqtt.rsplit_once(':').unwrap().1.parse().unwrap());
    options.set_credentials("nobody", "nothing");
    let (_client, mut ev) = AsyncClient::new(options, 10);
    let refused = tokio::time::timeout(WAIT, async {
        loop {
            match ev.poll().await {
                Err(e) => return e.to_string(),
                Ok(Event::Incoming(Packet::ConnAck(a))) => return format!("{:?}", a.code),
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap();
    assert!(!refused.contains("Success"), "{refused}");
    // Wait (bounded) until the refusal is logged; the log goes to standard output with the banner.
    let log = process.wait_log("MQTT connection refused");
    assert!(log.contains("MQTT connection refused"), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("FORGED LOG LINE")), "a forged line reached the log:\n{log}");
    assert!(log.contains(r"evil\nFORGED LOG LINE \u{1b}[31mred"), "escaped form expected:\n{log}");

    // Device ids: validated where the platform takes them.
    let emu = emulator().await;
    let http = https(&emu);
    let auth = format!("DeviceToken {}", emu.create_provisioning_token());
    for bad in ["a\nb", "with space", "x:y", &"d".repeat(129), "\u{1b}[31m"] {
        let (status, body) = call(
            &http,
            reqwest::Method::POST,
            format!("{}/provisioning-operations/init", emu.https_url()),
            Some(&auth),
            &json!({"deviceId": bad}).to_string(),
        )
        .await;
        assert_eq!(status, 400, "{bad:?}: {body}");
    }
    let (status, op) = call(
        &http,
        reqwest::Method::POST,
        format!("{}/provisioning-operations/init", emu.https_url()),
        Some(&auth),
        &json!({"deviceId": "good-device_1.a"}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    let id = op["provisioningOperationId"].as_str().unwrap();
    assert!(emu.approve(id, Some("evil\nname")).is_err());
    assert_eq!(emu.approve(id, None).unwrap(), "good-device_1.a");
}

/// Hardening: admin answers are paged by size too: three messages that decode to 15 MiB each
/// come back two, then one (a few hundred bytes on the wire each: compressed zeros).
#[tokio::test]
async fn admin_message_listings_are_paged_by_size() {
    let emu = emulator().await;
    let dev = register(&emu, "big-decoded").await;
    let (client, mut ev) = AsyncClient::new(mqtt_options(&emu, &dev, true), 100);
    until(&mut ev, |e| matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())).await;
    let packed = spotflow_core::Compression::Zstd { level: 3 }.compress(&vec![0u8; 15 << 20]).unwrap().1;
    for _ in 0..3 {
        let topic = format!("devices/{}/messages/events/content-encoding=zstd", dev.hub_id);
        client.publish(topic, QoS::AtLeastOnce, false, packed.clone()).await.unwrap();
    }
    let mut acks = 0;
    while acks < 3 {
        until(&mut ev, |e| matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())).await;
        acks += 1;
    }
    let list = |after: i64| {
        let (http, url) =
            (https(&emu), format!("{}/admin/messages?device={}&afterId={after}", emu.https_url(), dev.hub_id));
        let auth = format!("Bearer {}", emu.admin_token());
        async move { call(&http, reqwest::Method::GET, url, Some(&auth), "").await }
    };
    let (status, first) = list(0).await;
    assert_eq!(status, 200);
    let first = first.as_array().unwrap().clone();
    assert_eq!(first.len(), 2, "32 MiB per answer");
    assert!(first.iter().all(|m| m["payload"].as_str().unwrap().len() == 15 << 20 && m["decodeError"].is_null()));
    let (_, rest) = list(first[1]["id"].as_i64().unwrap()).await;
    assert_eq!(rest.as_array().unwrap().len(), 1);
}

/// Hardening: a connection whose SAS expires is closed, and a connection that asked for no
/// keep-alive (0) is still closed when idle for the configured time.
#[tokio::test]
async fn expired_sas_and_idle_keep_alive_zero_connections_are_closed() {
    let mut config = spotflow_emulator::EmulatorConfig::default();
    config.mqtt_port = Some(0);
    config.connection_lifetime = Duration::from_secs(2);
    config.idle_timeout = Duration::from_secs(1);
    let emu = Emulator::builder().config(config).start().await.unwrap();
    // SAS valid for 2 s: the broker closes the connection when it expires, though pings flow.
    let dev = register(&emu, "short-sas").await;
    let (_client, mut ev) = AsyncClient::new(mqtt_options(&emu, &dev, true), 10);
    until(&mut ev, |e| matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())).await;
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            if ev.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection outlived its SAS");

    // Keep-alive 0 (a raw CONNECT): closed after the idle timeout instead of never.
    let dev = register(&emu, "no-keepalive").await;
    let mut tcp = tokio::net::TcpStream::connect(emu.mqtt_addr().unwrap()).await.unwrap();
    let mut connect = rumqttc::mqttbytes::v4::Connect::new(dev.hub_id.clone());
    connect.keep_alive = 0;
    connect.clean_session = false;
    connect.set_login(format!("{}/{}/?api-version=2018-06-30", dev.hub_host, dev.hub_id), dev.sas.clone());
    let mut buf = bytes::BytesMut::new();
    rumqttc::mqttbytes::v4::Packet::Connect(connect).write(&mut buf, 1 << 20).unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, &buf).await.unwrap();
    let mut seen = Vec::new();
    let eof = tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 64];
        loop {
            match tokio::io::AsyncReadExt::read(&mut tcp, &mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(eof.is_ok(), "an idle keep-alive-0 connection stayed open");
    assert_eq!(&seen[..4], &[0x20, 0x02, 0x00, 0x00], "CONNACK accepted first");
}

/// Hardening (slowloris): with the open-file limit lowered to 400, 450 connections that send half
/// a request header neither starve MQTT nor stay open: the HTTP listeners take at most half the
/// limit (the rest are closed at once, with a log line) and close each connection whose header
/// does not arrive within the header timeout; HTTP works again once they are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_capped_and_closed() {
    assert!(std::path::Path::new("/usr/bin/prlimit").exists(), "prlimit (util-linux) is needed");
    let mut process =
        EmulatorProcess::spawn(&["/usr/bin/prlimit", "--nofile=400:400", "--"], &["--http-header-timeout-secs", "2"]);
    let http = process.banner_value("plain HTTP:");
    let mqtt = process.banner_value("plain MQTT:");
    let http_addr = http.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let mut held = Vec::new();
    for _ in 0..450 {
        let mut socket = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(&http_addr))
            .await
            .expect("connect in time")
            .expect("connect");
        // Refused connections may already be closed: the write may fail.
        let _ = socket.write_all(b"GET /admin/devices HTTP/1.1\r\nHost: localhost\r\n").await;
        held.push(socket);
    }
    // MQTT still gets descriptors and answers while they are held.
    let (host, port) = mqtt.rsplit_once(':').unwrap();
    let mut options = MqttOptions::new("nobody:nothing", host, port.parse().unwrap());
    options.set_credentials("nobody", "nothing");
    let (_client, mut ev) = AsyncClient::new(options, 10);
    let answer = tokio::time::timeout(WAIT, async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) => return Ok(a.code),
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return Ok(code),
                Err(e) => return Err(e.to_string()),
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the MQTT listener answers while HTTP connections are held");
    assert!(answer.is_ok(), "MQTT CONNECT got no CONNACK: {answer:?}");
    process.wait_log("HTTP connection limit reached");
    // Every held connection is closed by the emulator: at once beyond the cap, after the
    // 2-second header timeout within it.
    let closed = tokio::time::timeout(WAIT, async {
        let mut closed = 0;
        for socket in &mut held {
            let mut buf = [0u8; 512];
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {} // an error answer (408) before the close
                }
            }
            closed += 1;
        }
        closed
    })
    .await
    .expect("every slow connection is closed within the timeout");
    assert_eq!(closed, 450);
    drop(held);
    let request = format!(
        "GET /admin/devices HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        process.admin_token()
    );
    let answer = tokio::time::timeout(WAIT, async {
        let mut socket = tokio::net::TcpStream::connect(&http_addr).await.unwrap();
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        socket.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .expect("HTTP answers once the slow connections are gone");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Hardening (bounded state): 60 reported patches of 195 KB from one device cost that device's
/// own row and a bounded history of patches, never a rewrite of the whole state: the control
/// state stays small, a patch that would take the document over 256 KiB is refused with 413, and
/// the database stays small (it used to grow from 12 to 379 MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_devices_large_reported_patches_keep_the_state_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::builder().data_dir(dir.path()).mqtt_port(0).start().await.unwrap();
    let dev = register(&emu, "big-twin").await;
    let other = register(&emu, "other").await;
    let (client, mut ev) = AsyncClient::new(mqtt_options(&emu, &dev, false), 10);
    until(&mut ev, |e| matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())).await;
    client.subscribe("$iothub/twin/res/#", QoS::AtLeastOnce).await.unwrap();
    until(&mut ev, |e| matches!(e, Event::Incoming(Packet::SubAck(_))).then_some(())).await;
    let filler = "x".repeat(195_000);
    for i in 0..61 {
        let patch = if i < 60 { json!({"blob": filler, "i": i}) } else { json!({"second": filler}) };
        let topic = format!("$iothub/twin/PATCH/properties/reported/?$rid=p{i}");
        client.publish(topic, QoS::AtLeastOnce, false, patch.to_string().into_bytes()).await.unwrap();
        let rid = format!("$rid=p{i}");
        let answer = until(&mut ev, |e| match e {
            Event::Incoming(Packet::Publish(p)) if p.topic.contains(&rid) => Some(p.topic.clone()),
            _ => None,
        })
        .await;
        let status = if i < 60 { "204" } else { "413" };
        assert!(answer.starts_with(&format!("$iothub/twin/res/{status}/")), "patch {i}: {answer}");
    }
    assert_eq!(emu.twin(&dev.hub_id).unwrap().reported_version, 61);
    // Another device is not affected.
    let (_other_client, mut other_ev) = AsyncClient::new(mqtt_options(&emu, &other, false), 10);
    until(&mut other_ev, |e| matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())).await;
    assert_eq!(emu.twin(&other.hub_id).unwrap().reported_version, 1);
    emu.shutdown();
    let db = rusqlite::Connection::open(dir.path().join("emulator.db")).unwrap();
    let control: String = db.query_row("SELECT json FROM control_state", [], |r| r.get(0)).unwrap();
    assert!(control.len() < 64 * 1024, "the control state holds no twin: {} bytes", control.len());
    assert!(!control.contains("xxxxxxxx"));
    let row: String =
        db.query_row("SELECT json FROM devices WHERE hub_device_id = ?1", [&dev.hub_id], |r| r.get(0)).unwrap();
    assert!(row.len() <= spotflow_emulator::MAX_TWIN_SECTION_BYTES + 4096, "device row: {} bytes", row.len());
    let (rows, largest): (i64, i64) = db
        .query_row(
            "SELECT COUNT(*), MAX(LENGTH(document)) FROM twin_history WHERE hub_device_id = ?1",
            [&dev.hub_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(rows <= spotflow_emulator::TWIN_HISTORY_KEPT, "history rows: {rows}");
    assert!(largest < 200_000, "history holds patches, not whole documents: {largest} bytes");
    drop(db);
    let on_disk: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("emulator.db"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    eprintln!(
        "bounded state: control state {} bytes, device row {} bytes, {rows} history rows (largest {largest} bytes), \
         database files {on_disk} bytes",
        control.len(),
        row.len()
    );
    assert!(on_disk < 40 * 1024 * 1024, "database files: {on_disk} bytes");
}

/// Reads server-sent events from `response` until `enough` says so (bounded by WAIT): `(event,
/// data)` pairs.
async fn read_events(
    response: &mut reqwest::Response,
    mut enough: impl FnMut(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    let mut events = Vec::new();
    let mut buffer = String::new();
    tokio::time::timeout(WAIT, async {
        while !enough(&events) {
            let chunk = response.chunk().await.expect("stream").expect("the stream stays open");
            buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let name = block.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or("message").to_owned();
                let data: Vec<&str> = block.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
                if !data.is_empty() {
                    events.push((name, serde_json::from_str(&data.join("\n")).expect("JSON data")));
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not enough events within {WAIT:?}: {events:?}"));
    events
}

#[tokio::test]
async fn the_dashboard_its_live_feed_and_the_prometheus_metrics() {
    let emu = emulator().await;
    let http = https(&emu);
    let base = emu.https_url();
    let auth = format!("Bearer {}", emu.admin_token());
    // The page and its files need no token (they hold no data) and allow only themselves.
    for (path, kind) in
        [("/dashboard", "text/html"), ("/dashboard/app.js", "text/javascript"), ("/dashboard/app.css", "text/css")]
    {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with(kind), "{path}");
        assert!(r.headers()["content-security-policy"].to_str().unwrap().starts_with("default-src 'self'"));
    }
    assert_eq!(emu.dashboard_url(), format!("{base}/dashboard"));
    // The bare address a person types leads there.
    let r = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.url().path()), (200, "/dashboard"), "/ redirects to the dashboard");
    // The feed and the metrics need the admin token.
    for path in ["/admin/events", "/metrics"] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without the token");
        let r = http.get(format!("{base}{path}")).header("authorization", "Bearer wrong").send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong token");
    }
    let mut feed = http.get(format!("{base}/admin/events")).header("authorization", &auth).send().await.unwrap();
    assert_eq!(feed.status(), 200);
    assert!(feed.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));

    let dev = register(&emu, "watched").await;
    let (client, mut ev) = AsyncClient::new(mqtt_options(&emu, &dev, true), 100);
    until(&mut ev, |e| matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())).await;
    for i in 0..3 {
        let topic = format!("devices/{}/messages/events/stream-group-name=g&stream-name=s%22q", dev.hub_id);
        client.publish(topic, QoS::AtLeastOnce, false, format!("{{\"i\":{i}}}")).await.unwrap();
        until(&mut ev, |e| matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())).await;
    }
    let events = read_events(&mut feed, |events| {
        let messages = events.iter().filter(|(n, _)| n == "message").count();
        let totals = events.iter().any(|(n, d)| n == "totals" && d["messages"] == 3);
        messages == 3 && totals
    })
    .await;
    let messages: Vec<&Value> = events.iter().filter(|(n, _)| n == "message").map(|(_, d)| d).collect();
    for m in &messages {
        assert_eq!(m["hubDeviceId"], dev.hub_id.as_str());
        assert_eq!((m["streamGroup"].as_str(), m["stream"].as_str()), (Some("g"), Some("s\"q")));
        assert_eq!(m["wireSize"], 7);
        assert!(m.get("payload").is_none(), "the feed carries no payload: {m}");
    }
    // Row ids in the feed fetch the message itself.
    let id = messages[0]["id"].as_i64().unwrap();
    let (s, one) =
        call(&http, reqwest::Method::GET, format!("{base}/admin/messages?afterId={}&limit=1", id - 1), Some(&auth), "")
            .await;
    assert_eq!(s, 200);
    assert_eq!((one[0]["id"].as_i64(), one[0]["payload"].as_str()), (Some(id), Some("{\"i\":0}")));
    let totals = &events.iter().rev().find(|(n, _)| n == "totals").unwrap().1;
    assert_eq!(totals["streams"], json!([{"streamGroup": "g", "stream": "s\"q", "messages": 3, "bytes": 21}]));

    let (s, devices) = call(&http, reqwest::Method::GET, format!("{base}/admin/devices"), Some(&auth), "").await;
    assert_eq!(s, 200);
    let watched = devices.as_array().unwrap().iter().find(|d| d["deviceId"] == "watched").expect("listed");
    assert_eq!((watched["messages"].as_u64(), watched["connected"].as_bool()), (Some(3), Some(true)));
    assert_eq!(watched["hubDeviceId"], dev.hub_id.as_str());
    assert!(watched["lastSeen"].as_u64().unwrap() > 0);

    let metrics = http.get(format!("{base}/metrics")).header("authorization", &auth).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = metrics.text().await.unwrap();
    for line in [
        "spotflow_emulator_messages_total{stream_group=\"g\",stream=\"s\\\"q\"} 3",
        "spotflow_emulator_message_bytes_total{stream_group=\"g\",stream=\"s\\\"q\"} 21",
        "spotflow_emulator_devices 1",
        "spotflow_emulator_devices_connected 1",
        "spotflow_emulator_mqtt_connections 1",
        "spotflow_emulator_provisioning_operations_pending 0",
        "spotflow_emulator_dashboard_listeners 1",
        "spotflow_emulator_messages_stored 3",
        "# TYPE spotflow_emulator_messages_total counter",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    let rate: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("spotflow_emulator_ingest_messages_per_second "))
        .expect("ingest rate")
        .parse()
        .unwrap();
    assert!(rate > 0.0, "{text}");
    drop(feed);
    drop(client);
}

/// A change of the control state (here a provisioning token) is on disk when `serve` is stopped
/// right after it, with SIGTERM as with Ctrl-C: the emulator started again on the same data
/// directory knows the token.
#[tokio::test]
async fn a_token_created_just_before_sigterm_survives_the_restart() {
    let mut process = EmulatorProcess::spawn(&[], &[]);
    let http = process.banner_value("plain HTTP:");
    let admin = format!("Bearer {}", process.admin_token());
    let ca = std::fs::read_to_string(process.data_dir().join("ca.pem")).unwrap();
    let plain = reqwest::Client::builder()
        .tls_backend_preconfigured(spotflow_emulator::client_config(&ca).unwrap())
        .timeout(WAIT)
        .build()
        .unwrap();
    let (s, created) =
        call(&plain, reqwest::Method::POST, format!("{http}/admin/provisioning-tokens"), Some(&admin), "{}").await;
    assert_eq!(s, 200, "{created}");
    let token = created["provisioningToken"].as_str().unwrap().to_owned();
    let killed = std::process::Command::new("kill").arg("-TERM").arg(process.child.id().to_string()).status().unwrap();
    assert!(killed.success());
    let log = process.wait_log("stopping");
    assert!(log.contains("stopping"), "{log}");
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = process.child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "serve did not exit within {WAIT:?} of SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "serve exited with {status} on SIGTERM");

    let emu = Emulator::builder().data_dir(process.data_dir()).start().await.unwrap();
    let (s, op) = call(
        &https(&emu),
        reqwest::Method::POST,
        format!("{}/provisioning-operations/init", emu.https_url()),
        Some(&format!("DeviceToken {token}")),
        &json!({"deviceId": "after-sigterm"}).to_string(),
    )
    .await;
    assert_eq!(s, 200, "the token created before SIGTERM is known after the restart: {op}");
}

/// Direct methods through the admin API and the CLI: the call reaches the subscribed device,
/// whose answer comes back with its status; another device cannot answer it; a device that did
/// not subscribe is "not connected" (404); one that does not answer times out (504).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_methods_reach_the_subscribed_device_and_return_its_answer() {
    let emu = emulator().await;
    let callee = register(&emu, "callee").await;
    let other = register(&emu, "other").await;
    let (client, mut ev) = AsyncClient::new(mqtt_options(&emu, &callee, true), 100);
    until(&mut ev, |e| matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())).await;
    client.subscribe("$iothub/methods/POST/#", QoS::AtLeastOnce).await.unwrap();
    until(&mut ev, |e| matches!(e, Event::Incoming(Packet::SubAck(_))).then_some(())).await;
    let (other_client, mut other_ev) = AsyncClient::new(mqtt_options(&emu, &other, true), 100);
    until(&mut other_ev, |e| matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())).await;

    let http = https(&emu);
    let admin = format!("Bearer {}", emu.admin_token());
    let url = |device: &str, method: &str, timeout: u64| {
        format!("{}/admin/devices/{device}/methods/{method}?timeoutSecs={timeout}", emu.https_url())
    };
    let call_url = url(&callee.hub_id, "maintenance/reboot", 10);
    let (http2, admin2) = (http.clone(), admin.clone());
    let invoked = tokio::spawn(async move {
        call(&http2, reqwest::Method::POST, call_url, Some(&admin2), r#"{"delaySecs": 5}"#).await
    });
    // The device sees the call (the method's name may contain '/'), with its payload.
    let (topic, payload) = until(&mut ev, |e| match e {
        Event::Incoming(Packet::Publish(p)) => Some((p.topic.clone(), p.payload.clone())),
        _ => None,
    })
    .await;
    let rid = topic.strip_prefix("$iothub/methods/POST/maintenance/reboot/?$rid=").expect(&topic).to_owned();
    assert_eq!(serde_json::from_slice::<Value>(&payload).unwrap(), json!({"delaySecs": 5}));
    // Another device answering the call is ignored.
    other_client
        .publish(
            format!("$iothub/methods/res/200/?$rid={rid}"),
            QoS::AtLeastOnce,
            false,
            br#"{"forged":true}"#.to_vec(),
        )
        .await
        .unwrap();
    until(&mut other_ev, |e| matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())).await;
    client
        .publish(
            format!("$iothub/methods/res/202/?$rid={rid}"),
            QoS::AtLeastOnce,
            false,
            br#"{"rebooting":true}"#.to_vec(),
        )
        .await
        .unwrap();
    until(&mut ev, |e| matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())).await;
    let (status, answer) = invoked.await.unwrap();
    assert_eq!((status, answer), (200, json!({"status": 202, "payload": {"rebooting": true}})));

    // Not subscribed: as if not connected. Not answering: a timeout. A payload that is not JSON.
    let (status, body) = call(&http, reqwest::Method::POST, url(&other.hub_id, "x", 5), Some(&admin), "{}").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = call(&http, reqwest::Method::POST, url(&callee.hub_id, "slow", 1), Some(&admin), "").await;
    assert_eq!(status, 504, "{body}");
    let (status, _) = call(&http, reqwest::Method::POST, url(&callee.hub_id, "x", 1), Some(&admin), "{oops").await;
    assert_eq!(status, 400);
    let (status, _) = call(&http, reqwest::Method::POST, url(&callee.hub_id, "x", 1), None, "{}").await;
    assert_eq!(status, 401);

    // The CLI: `spotflow-emulator method DEVICE METHOD --payload JSON`, the device answering.
    let base = format!("http://{}", emu.http_addr().unwrap());
    let (token, device) = (emu.admin_token().to_owned(), callee.hub_id.clone());
    let cli = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_spotflow-emulator"))
            .args(["method", &device, "echo", "--payload", r#"{"n": 1}"#, "--timeout", "10"])
            .args(["--url", &base, "--admin-token", &token])
            .output()
            .unwrap()
    });
    // (The unanswered calls above reached the device too: skipped.)
    let rid = tokio::time::timeout(WAIT, async {
        loop {
            if cli.is_finished() {
                return None;
            }
            if let Ok(Ok(Event::Incoming(Packet::Publish(p)))) =
                tokio::time::timeout(Duration::from_millis(100), ev.poll()).await
            {
                if let Some(rid) = p.topic.strip_prefix("$iothub/methods/POST/echo/?$rid=") {
                    return Some(rid.to_owned());
                }
            }
        }
    })
    .await
    .expect("the call reaches the device in time");
    let Some(rid) = rid else {
        let output = cli.await.unwrap();
        panic!("the CLI ended first: {output:?}");
    };
    client
        .publish(format!("$iothub/methods/res/200/?$rid={rid}"), QoS::AtLeastOnce, false, br#"{"n":1}"#.to_vec())
        .await
        .unwrap();
    let done = tokio::time::timeout(WAIT, async {
        loop {
            tokio::select! {
                out = async { while !cli.is_finished() { tokio::task::yield_now().await } } => return out,
                _ = ev.poll() => {}
            }
        }
    })
    .await;
    done.expect("the CLI finishes");
    let output = cli.await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed, json!({"status": 200, "payload": {"n": 1}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2d_messages_wait_for_the_device_and_go_until_acknowledged() {
    let emu = emulator().await;
    let dev = register(&emu, "c2d-device").await;
    let (http, base) = (https(&emu), emu.https_url());
    let admin = format!("Bearer {}", emu.admin_token());
    let url = format!("{base}/admin/devices/{}/c2d", dev.hub_id);
    // Queued while the device is offline: three over the admin API, one through the embedding API.
    for i in 0..3 {
        let body = json!({"payload": format!("m{i}"), "properties": {"kind": "cmd", "n": i.to_string()}}).to_string();
        let (s, v) = call(&http, reqwest::Method::POST, url.clone(), Some(&admin), &body).await;
        assert_eq!(s, 201, "{v}");
    }
    emu.send_c2d(&dev.hub_id, vec![("a b".into(), "c&d".into())], b"\x00\xffbin".to_vec(), Duration::from_secs(60))
        .expect("queued");
    // Refusals: an unknown device, a bad time to live, a bad payload, no token.
    for (u, body, auth, want) in [
        (format!("{base}/admin/devices/ws:nobody/c2d"), r#"{"payload":"x"}"#, Some(admin.as_str()), 404),
        (url.clone(), r#"{"payload":"x","ttlSeconds":0}"#, Some(admin.as_str()), 400),
        (url.clone(), r#"{"payload":"x","ttlSeconds":999999999}"#, Some(admin.as_str()), 400),
        (url.clone(), r#"{"payloadHex":"abc"}"#, Some(admin.as_str()), 400),
        (url.clone(), r#"{"payload":"x","unknown":1}"#, Some(admin.as_str()), 400),
        (url.clone(), r#"{"payload":"x"}"#, None, 401),
    ] {
        assert_eq!(call(&http, reqwest::Method::POST, u, auth, body).await.0, want, "{body}");
    }
    c2d_states(&emu, &dev.hub_id, &["queued"; 4], None).await;

    // The device connects (acknowledging by hand) and subscribes: all four arrive, in order.
    let connect = |emu: &Emulator| {
        let mut o = mqtt_options(emu, &dev, true);
        o.set_manual_acks(true);
        AsyncClient::new(o, 10)
    };
    let (client, mut ev) = connect(&emu);
    client.subscribe(format!("devices/{}/messages/devicebound/#", dev.hub_id), QoS::AtLeastOnce).await.unwrap();
    let got = publishes(&mut ev, 4).await;
    let payloads: Vec<&[u8]> = got.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(payloads, [&b"m0"[..], b"m1", b"m2", b"\x00\xffbin"]);
    let prefix = format!("devices/{}/messages/devicebound/%24.mid=", dev.hub_id);
    assert!(got.iter().all(|p| p.topic.starts_with(&prefix) && p.qos == QoS::AtLeastOnce && !p.dup), "{got:?}");
    assert!(got[0].topic.contains("&kind=cmd&n=0"), "{}", got[0].topic);
    assert!(got[3].topic.ends_with("&a%20b=c%26d"), "{}", got[3].topic);
    // Two acknowledged: delivered; then the connection drops with two in flight.
    client.ack(&got[0]).await.unwrap();
    client.ack(&got[1]).await.unwrap();
    c2d_states(&emu, &dev.hub_id, &["delivered", "delivered", "inFlight", "inFlight"], Some(&mut ev)).await;
    drop((client, ev));
    c2d_states(&emu, &dev.hub_id, &["delivered", "delivered", "queued", "queued"], None).await;

    // Back (its subscription kept by the session): only the two unacknowledged, marked DUP.
    let (client, mut ev) = connect(&emu);
    let again = publishes(&mut ev, 2).await;
    assert_eq!((&again[0].payload[..], again[0].dup), (&b"m2"[..], true));
    assert_eq!(&again[1].payload[..], b"\x00\xffbin");
    for p in &again {
        client.ack(p).await.unwrap();
    }
    c2d_states(&emu, &dev.hub_id, &["delivered"; 4], Some(&mut ev)).await;
    let (s, listed) = call(&http, reqwest::Method::GET, url.clone(), Some(&admin), "").await;
    assert_eq!(s, 200);
    let attempts: Vec<u64> =
        listed["messages"].as_array().unwrap().iter().map(|m| m["attempts"].as_u64().unwrap()).collect();
    assert_eq!(attempts, [1, 1, 2, 2], "{listed}");
    assert_eq!(listed["messages"][0]["properties"], json!([["kind", "cmd"], ["n", "0"]]));
}

/// The next `n` publishes the device receives (bounded by WAIT each).
async fn publishes(ev: &mut rumqttc::EventLoop, n: usize) -> Vec<rumqttc::Publish> {
    let mut got = Vec::new();
    while got.len() < n {
        got.push(
            until(ev, |e| match e {
                Event::Incoming(Packet::Publish(p)) => Some(p.clone()),
                _ => None,
            })
            .await,
        );
    }
    got
}

/// Waits (bounded by WAIT) until the emulator lists the device's C2D messages in these states,
/// driving the device's event loop meanwhile when it has one (its acknowledgements go out).
async fn c2d_states(emu: &Emulator, hub_id: &str, want: &[&str], mut ev: Option<&mut rumqttc::EventLoop>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let states: Vec<&str> = emu.c2d_messages(hub_id).iter().map(|m| m.state).collect();
        if states == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "states {states:?}, want {want:?}");
        match ev.as_deref_mut() {
            Some(ev) => drop(tokio::time::timeout(Duration::from_millis(50), ev.poll()).await),
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Runs the emulator's CLI against `emu` (plain HTTP admin URL); returns its printed JSON.
async fn cli(emu: &Emulator, args: &[&str]) -> Value {
    let base = format!("http://{}", emu.http_addr().unwrap());
    let token = emu.admin_token().to_owned();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_spotflow-emulator"))
            .args(&args)
            .args(["--url", &base, "--admin-token", &token])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("JSON printed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_artifacts_are_published_rolled_out_signed_and_served_with_ranges() {
    use ring::signature::{UnparsedPublicKey, ED25519};
    use spotflow_core::update::UpdateManifest;
    let emu = emulator().await;
    let dev = register(&emu, "updated-device").await;
    let http = https(&emu);
    let dir = tempfile::tempdir().unwrap();
    let artifact: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let file = dir.path().join("firmware.bin");
    std::fs::write(&file, &artifact).unwrap();

    // Published and rolled out with the CLI.
    let published = cli(&emu, &["update", "publish", file.to_str().unwrap(), "--version", "1.2.3"]).await;
    let expected_sha: String =
        ring::digest::digest(&ring::digest::SHA256, &artifact).as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        (published["size"].as_u64(), published["sha256"].as_str()),
        (Some(300_000), Some(expected_sha.as_str()))
    );
    let artifact_id = published["id"].as_str().unwrap().to_owned();
    let rollout = cli(&emu, &["update", "rollout", &artifact_id, "--device", &dev.hub_id]).await;
    let rollout_id = rollout["id"].as_str().unwrap().to_owned();

    // The device's desired properties carry the manifest, signed with the emulator's key.
    let twin = emu.twin(&dev.hub_id).unwrap();
    let manifest = UpdateManifest::from_json(&twin.desired["spotflowUpdate"]).expect("a valid manifest");
    assert_eq!((manifest.id.as_str(), manifest.version.as_str()), (rollout_id.as_str(), "1.2.3"));
    assert_eq!((manifest.size, manifest.sha256.as_str()), (300_000, expected_sha.as_str()));
    let key: Vec<u8> =
        (0..64).step_by(2).map(|i| u8::from_str_radix(&emu.update_public_key()[i..i + 2], 16).unwrap()).collect();
    let signature = manifest.signature.clone().unwrap();
    let signature: Vec<u8> =
        (0..128).step_by(2).map(|i| u8::from_str_radix(&signature[i..i + 2], 16).unwrap()).collect();
    UnparsedPublicKey::new(&ED25519, &key)
        .verify(&manifest.signed_bytes(), &signature)
        .expect("the signature verifies");
    let mut tampered = manifest.clone();
    tampered.size += 1;
    assert!(UnparsedPublicKey::new(&ED25519, &key).verify(&tampered.signed_bytes(), &signature).is_err());

    // Served whole, and from a range.
    let get = |range: Option<&str>, url: &str| {
        let mut req = http.get(url);
        if let Some(r) = range {
            req = req.header("range", r);
        }
        req.send()
    };
    let whole = get(None, &manifest.url).await.unwrap();
    assert_eq!(whole.status(), 200);
    assert!(whole.bytes().await.unwrap() == artifact);
    let part = get(Some("bytes=100000-"), &manifest.url).await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 100000-299999/300000");
    assert!(part.bytes().await.unwrap() == artifact[100_000..]);
    assert_eq!(get(Some("bytes=300000-"), &manifest.url).await.unwrap().status(), 416);
    assert_eq!(get(Some("lines=1-"), &manifest.url).await.unwrap().status(), 400);
    let forged = manifest.url.rsplit_once('/').unwrap().0.to_owned() + "/0123456789abcdef0123456789abcdef";
    assert_eq!(get(None, &forged).await.unwrap().status(), 404, "a guessed token downloads nothing");

    // The rollout's state: pending (the device has not reported), the bytes served counted.
    let status = cli(&emu, &["update", "status", &rollout_id]).await;
    assert_eq!(status["devices"][0]["state"], "pending");
    assert_eq!(status["devices"][0]["bytesServed"], 500_000);
    assert_eq!(status["devices"][0]["requests"], 2, "the refused range is not a download");
    let listing = cli(&emu, &["update", "status"]).await;
    assert_eq!(listing["rollouts"], json!([rollout_id]));
    assert_eq!(listing["publicKey"], emu.update_public_key());

    // Faults: a corrupted artifact differs in one byte; a cut ends the body early, once.
    let faults = json!({"corrupt": true, "cutAt": [0.5]}).to_string();
    let admin = format!("Bearer {}", emu.admin_token());
    let faults_url = format!("{}/admin/updates/artifacts/{artifact_id}/faults", emu.https_url());
    assert_eq!(call(&http, reqwest::Method::PUT, faults_url.clone(), Some(&admin), &faults).await.0, 204);
    assert_eq!(call(&http, reqwest::Method::PUT, faults_url.clone(), None, &faults).await.0, 401);
    let bad = json!({"cutAt": [1.5]}).to_string();
    assert_eq!(call(&http, reqwest::Method::PUT, faults_url, Some(&admin), &bad).await.0, 400);
    let cut = get(None, &manifest.url).await.unwrap().bytes().await;
    assert!(cut.is_err(), "the body is cut at half");
    let corrupted = get(None, &manifest.url).await.unwrap().bytes().await.unwrap();
    assert_eq!(corrupted.len(), artifact.len());
    assert_eq!(corrupted.iter().zip(&artifact).filter(|(a, b)| a != b).count(), 1, "one byte changed");

    // Refusals of the admin API.
    let rollouts = format!("{}/admin/updates/rollouts", emu.https_url());
    for (body, want) in [
        (json!({"artifact": "nope", "devices": [dev.hub_id]}), 404),
        (json!({"artifact": artifact_id, "devices": ["ws:nobody"]}), 404),
        (json!({"artifact": artifact_id, "devices": []}), 400),
        (json!({"artifact": artifact_id, "devices": [dev.hub_id], "ifBusy": "later"}), 400),
        (json!({"artifact": artifact_id, "devices": [dev.hub_id], "installAfter": "soon"}), 400),
    ] {
        assert_eq!(
            call(&http, reqwest::Method::POST, rollouts.clone(), Some(&admin), &body.to_string()).await.0,
            want,
            "{body}"
        );
    }
    assert_eq!(call(&http, reqwest::Method::POST, rollouts, None, "{}").await.0, 401);
}
