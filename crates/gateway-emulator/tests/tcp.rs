//! The tokio runner over real TCP, with raw MQTT bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gateway_emulator::{EmulatorConfig, EmulatorHandle, NewDevice, RpcCall, RpcOutcome};
use gateway_proto::wire::{self, Connect, Packet, PubAck, Publish, QoS, Subscribe};
use gateway_proto::ProtocolVersion;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

struct Client {
    stream: TcpStream,
    version: ProtocolVersion,
    buf: BytesMut,
}

impl Client {
    async fn connect(
        emu: &EmulatorHandle,
        version: ProtocolVersion,
        token: &str,
    ) -> (Self, Packet) {
        let stream = TcpStream::connect(emu.addr()).await.unwrap();
        let mut c = Client {
            stream,
            version,
            buf: BytesMut::new(),
        };
        c.send(Packet::Connect(Connect {
            client_id: "tcp".into(),
            keep_alive: 30,
            clean_session: true,
            username: Some(token.into()),
            password: None,
        }))
        .await;
        let ack = c.recv().await.expect("CONNACK");
        (c, ack)
    }

    async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        wire::encode(&p, self.version, &mut out, usize::MAX).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    async fn publish(&mut self, topic: &str, payload: Value, pkid: u16) {
        self.send(Packet::Publish(Publish {
            topic: topic.into(),
            payload: Bytes::from(payload.to_string()),
            qos: QoS::AtLeastOnce,
            dup: false,
            retain: false,
            pkid,
        }))
        .await;
    }

    /// The next packet, or `None` at EOF.
    async fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = wire::decode(&mut self.buf, self.version, usize::MAX).unwrap() {
                return Some(p);
            }
            let mut chunk = [0u8; 4096];
            let n = timeout(Duration::from_secs(5), self.stream.read(&mut chunk))
                .await
                .expect("server answered in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn connack(code: u8) -> Packet {
    Packet::ConnAck(wire::ConnAck {
        session_present: false,
        code,
    })
}

async fn start() -> EmulatorHandle {
    let emu = EmulatorHandle::start(EmulatorConfig::default())
        .await
        .unwrap();
    emu.create_device(NewDevice::gateway("Gateway", "GW"))
        .unwrap();
    emu.create_device(NewDevice::device("Device", "DEV"))
        .unwrap();
    emu
}

#[tokio::test]
async fn gateway_telemetry_and_two_way_rpc_over_tcp() {
    let emu = start().await;
    let (mut gw, ack) = Client::connect(&emu, ProtocolVersion::V5, "GW").await;
    assert_eq!(ack, connack(0));
    gw.publish(
        "v1/gateway/telemetry",
        json!({"A": [{"ts": 1, "values": {"t": 20}}]}),
        1,
    )
    .await;
    assert_eq!(
        gw.recv().await,
        Some(Packet::PubAck(PubAck { pkid: 1, code: 0 }))
    );
    assert_eq!(emu.latest_telemetry("A").unwrap()["t"].value, json!(20));
    assert_eq!(emu.connected_children("Gateway").unwrap(), vec!["A"]);

    let caller = {
        let emu = emu.clone();
        tokio::spawn(async move { emu.rpc("A", RpcCall::two_way("get", json!(null))).await })
    };
    let Some(Packet::Publish(rpc)) = gw.recv().await else {
        panic!("expected the RPC")
    };
    assert_eq!(rpc.topic, "v1/gateway/rpc");
    let body: Value = serde_json::from_slice(&rpc.payload).unwrap();
    assert_eq!(body["data"]["id"], json!(0));
    gw.send(Packet::PubAck(PubAck {
        pkid: rpc.pkid,
        code: 0,
    }))
    .await;
    gw.publish(
        "v1/gateway/rpc",
        json!({"device": "A", "id": 0, "data": {"ok": 1}}),
        2,
    )
    .await;
    assert_eq!(
        gw.recv().await,
        Some(Packet::PubAck(PubAck { pkid: 2, code: 0 }))
    );
    assert_eq!(
        caller.await.unwrap(),
        Ok(RpcOutcome::Reply(json!({"ok": 1})))
    );
    emu.shutdown();
}

#[tokio::test]
async fn refusal_takeover_and_drop_over_tcp() {
    let emu = start().await;
    let (mut bad, ack) = Client::connect(&emu, ProtocolVersion::V311, "WRONG").await;
    assert_eq!(ack, connack(5));
    assert_eq!(bad.recv().await, None, "closed after the refusal");

    let (mut old, _) = Client::connect(&emu, ProtocolVersion::V5, "DEV").await;
    let (mut new, ack) = Client::connect(&emu, ProtocolVersion::V5, "DEV").await;
    assert_eq!(ack, connack(0));
    assert_eq!(
        old.recv().await,
        Some(Packet::Disconnect(wire::Disconnect { code: 0x8E }))
    );
    assert_eq!(old.recv().await, None);

    // Shared attributes reach the subscribed device.
    new.send(Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: vec![("v1/devices/me/attributes".into(), QoS::AtLeastOnce)],
    }))
    .await;
    assert!(matches!(new.recv().await, Some(Packet::SubAck(_))));
    let mut m = Map::new();
    m.insert("k".into(), json!(1));
    emu.set_shared_attributes("Device", m).unwrap();
    let Some(Packet::Publish(p)) = new.recv().await else {
        panic!("expected the update")
    };
    assert_eq!(p.payload, Bytes::from_static(br#"{"k":1}"#));

    let session = emu
        .sessions()
        .into_iter()
        .find(|s| s.device.as_deref() == Some("Device"))
        .unwrap();
    emu.drop_session(session.id).unwrap();
    assert_eq!(new.recv().await, None);
    emu.shutdown();
}

#[tokio::test]
async fn one_way_rpc_without_subscriber_times_out_as_no_active_connection() {
    let emu = start().await;
    let outcome = emu
        .rpc(
            "Device",
            RpcCall::one_way("m", json!(1)).with_timeout(Duration::from_millis(200)),
        )
        .await;
    assert_eq!(outcome, Ok(RpcOutcome::NoActiveConnection));
    emu.shutdown();
    assert!(emu
        .rpc("Device", RpcCall::one_way("m", json!(1)))
        .await
        .is_err());
}
