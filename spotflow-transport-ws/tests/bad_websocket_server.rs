//! Bad input on the WebSocket side: packets split across frames and several in one frame, text
//! frames, oversized frames, close frames with an error code, a server without the subprotocol.

// The handshake callback signature is tungstenite's.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet, Publish, SubAck, SubscribeReasonCode};
use rumqttc::mqttbytes::QoS;
use spotflow_core::{ConnectionCredentials, Transport, TransportEvent};
use spotflow_transport_ws::{ProxyMode, WsTransport, WsTransportOptions};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

fn bytes_of(p: Packet) -> Vec<u8> {
    let mut b = BytesMut::new();
    p.write(&mut b, usize::MAX).unwrap();
    b.to_vec()
}

/// What the fake server sends after the WebSocket handshake and the client's CONNECT.
#[derive(Clone)]
enum Script {
    Frames(Vec<Message>),
    NoSubprotocol,
}

async fn server(script: Script) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve_one(tcp, script.clone()));
        }
    });
    port
}

async fn serve_one<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: S, script: Script) {
    let with_protocol = !matches!(script, Script::NoSubprotocol);
    let callback = move |_req: &Request, mut resp: Response| {
        if with_protocol {
            resp.headers_mut().insert("sec-websocket-protocol", "mqtt".parse().unwrap());
        }
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
    let _connect = ws.next().await;
    if let Script::Frames(frames) = script {
        for f in frames {
            if ws.send(f).await.is_err() {
                return;
            }
        }
    }
    while let Some(Ok(_)) = ws.next().await {}
}

fn transport(port: u16, max: usize) -> WsTransport {
    let mut o = WsTransportOptions::plain(port);
    o.proxy = ProxyMode::Direct;
    o.session.max_incoming_packet = max;
    o.session.connect_timeout = Duration::from_secs(5);
    WsTransport::new(o)
}

fn creds() -> ConnectionCredentials {
    spotflow_core::testkit::sample_credentials("127.0.0.1")
}

fn connack() -> Vec<u8> {
    bytes_of(Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)))
}

#[tokio::test]
async fn packets_split_across_frames_and_packed_in_one_frame_are_parsed() {
    let ack = connack();
    let mut packed = bytes_of(Packet::SubAck(SubAck::new(1, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce); 2])));
    packed.extend(bytes_of(Packet::Publish(Publish::new(
        "$iothub/twin/PATCH/properties/desired/?$version=3",
        QoS::AtMostOnce,
        br#"{"x":1,"$version":3}"#.to_vec(),
    ))));
    let (a, b) = packed.split_at(7);
    let port = server(Script::Frames(vec![
        Message::Binary(ack[..1].to_vec().into()),
        Message::Binary(ack[1..].to_vec().into()),
        Message::Binary(a.to_vec().into()),
        Message::Binary(b.to_vec().into()),
    ]))
    .await;
    let mut conn = transport(port, 64 * 1024)
        .connect(&creds(), &spotflow_core::SessionInfo::default())
        .await
        .expect("CONNACK in two frames");
    let event = tokio::time::timeout(Duration::from_secs(10), conn.next_event()).await.unwrap().unwrap();
    assert!(matches!(event, TransportEvent::DesiredPatch { version: 3, .. }), "{event:?}");
}

async fn expect_connection_error(frames: Vec<Message>, max: usize) {
    let mut all = vec![Message::Binary(connack().into())];
    all.extend(frames);
    let port = server(Script::Frames(all)).await;
    let mut conn =
        transport(port, max).connect(&creds(), &spotflow_core::SessionInfo::default()).await.expect("connected");
    let err = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Err(e) = conn.next_event().await {
                return e;
            }
        }
    })
    .await
    .expect("the error surfaces");
    assert!(err.is_temporary(), "{err}");
}

#[tokio::test]
async fn a_text_frame_is_a_connection_error() {
    expect_connection_error(vec![Message::Text("hello".into())], 64 * 1024).await;
}

#[tokio::test]
async fn an_oversized_frame_is_a_connection_error() {
    expect_connection_error(vec![Message::Binary(vec![0u8; 300 * 1024].into())], 64 * 1024).await;
}

#[tokio::test]
async fn a_close_with_an_error_code_is_a_connection_error() {
    let close = Message::Close(Some(CloseFrame { code: CloseCode::Error, reason: "internal error".into() }));
    expect_connection_error(vec![close], 64 * 1024).await;
}

#[tokio::test]
async fn malformed_mqtt_inside_binary_frames_is_a_connection_error() {
    expect_connection_error(vec![Message::Binary(vec![0xff, 0xff, 0xff, 0xff, 0xff].into())], 64 * 1024).await;
}

#[tokio::test]
async fn a_server_without_the_mqtt_subprotocol_is_refused() {
    let port = server(Script::NoSubprotocol).await;
    let err = transport(port, 64 * 1024)
        .connect(&creds(), &spotflow_core::SessionInfo::default())
        .await
        .err()
        .expect("refused");
    // tungstenite refuses the handshake itself when the requested subprotocol is not echoed.
    let cause = std::error::Error::source(&err).map(|e| e.to_string()).unwrap_or_default();
    assert!(cause.to_lowercase().contains("protocol"), "{err}: {cause}");
    assert!(err.is_temporary());
}

#[tokio::test]
async fn connect_over_runs_websocket_and_mqtt_over_a_stream_the_caller_opened() {
    let (device, server_side) = tokio::io::duplex(64 * 1024);
    let desired = bytes_of(Packet::Publish(Publish::new(
        "$iothub/twin/PATCH/properties/desired/?$version=5",
        QoS::AtMostOnce,
        br#"{"y":2,"$version":5}"#.to_vec(),
    )));
    let server = tokio::spawn(serve_one(
        server_side,
        Script::Frames(vec![Message::Binary(connack().into()), Message::Binary(desired.into())]),
    ));
    // The port is only what the request line names; nothing is dialled.
    let mut conn = transport(1, 64 * 1024)
        .connect_over(device, &creds(), &spotflow_core::SessionInfo::default())
        .await
        .expect("connected over the pipe");
    let event = tokio::time::timeout(Duration::from_secs(10), conn.next_event()).await.unwrap().unwrap();
    assert!(matches!(event, TransportEvent::DesiredPatch { version: 5, .. }), "{event:?}");
    conn.close().await;
    tokio::time::timeout(Duration::from_secs(10), server).await.expect("the server sees the close").unwrap();
}
