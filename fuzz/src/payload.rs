//! Target `payload`: server (and client) JSON payloads.
//!
//! Input: a topic selector byte (its high bit: a PROTOBUF gateway profile), an id byte, then
//! the payload.
//!
//! 1. Every payload parser of `gateway_proto::payload` gets the payload. A parser that accepts
//!    it must accept its own re-encoding, and encoding is a fixed point after one parse. Any
//!    JSON value is written by the crate's writer exactly as serde_json writes it. The gateway
//!    and provisioning protobuf parsers get the payload too: an accepted message re-encodes to
//!    a fixed point.
//! 2. A connected gateway `Connection` (MQTT 5) with requests awaiting answers (two gateway
//!    attribute requests, a device attribute request and a client RPC, wire ids 0–3) receives
//!    the payload as a QoS 1 PUBLISH on the selected inbound API topic (id topics carry the id
//!    byte). Checks: no panic; the session stays up; the PUBLISH is acknowledged; only the
//!    pending requests can get an outcome, at most one each; nothing is transmitted but
//!    valid MQTT.

use std::time::Instant;

use bytes::Bytes;
use gateway_proto::payload::{
    AttributeUpdate, Claim, ClientAttributes, ClientRpcResponse, Connect, DeviceAttributeRequest,
    DeviceAttributeResponse, DeviceTelemetry, Disconnect, DisconnectNotice,
    GatewayAttributeRequest, GatewayAttributeResponse, GatewayAttributeUpdate, GatewayAttributes,
    GatewayClaim, GatewayNotification, GatewayRpcRequest, GatewayRpcResponse, GatewayTelemetry,
    Payload, ProvisionRequest, ProvisionResponse, RpcRequest, SessionLimits,
};
use gateway_proto::topic::{self, IdTopicKind, OtaKind, TopicFamily};
use gateway_proto::wire::{self, Packet, ProtocolVersion, QoS};
use gateway_proto::{AttributeScope, Command, Config, Connection, Credentials, Event, State};
use serde_json::json;

use crate::script::{server_bytes, Server};

/// Number of topics the selector chooses from.
pub const TOPICS: usize = 20;

/// The inbound topic for selector `sel` and id `id`.
pub fn topic_for(sel: u8, id: u64) -> String {
    match usize::from(sel) % TOPICS {
        0 => topic::GATEWAY_ATTRIBUTES.into(),
        1 => topic::GATEWAY_ATTRIBUTES_RESPONSE.into(),
        2 => topic::GATEWAY_RPC.into(),
        3 => topic::GATEWAY_DISCONNECT.into(),
        4 => topic::DEVICE_ATTRIBUTES.into(),
        5 => topic::V2_ATTRIBUTES.into(),
        6 => topic::V2_ATTRIBUTES_JSON.into(),
        7 => topic::topic_with_id(IdTopicKind::AttributeResponse, TopicFamily::V1, id),
        8 => topic::topic_with_id(IdTopicKind::AttributeResponse, TopicFamily::V2Json, id),
        9 => topic::topic_with_id(IdTopicKind::RpcRequest, TopicFamily::V1, id),
        10 => topic::topic_with_id(IdTopicKind::RpcRequest, TopicFamily::V2, id),
        11 => topic::topic_with_id(IdTopicKind::RpcResponse, TopicFamily::V1, id),
        12 => topic::topic_with_id(IdTopicKind::RpcResponse, TopicFamily::V2Json, id),
        13 => topic::topic_with_id(IdTopicKind::RpcRequest, TopicFamily::V2Proto, id),
        14 => topic::ota_chunk_response_topic(OtaKind::Firmware, id, 0),
        15 => topic::FW_ERROR.into(),
        16 => topic::PROVISION_RESPONSE.into(),
        17 => topic::GATEWAY_CONNECT.into(),
        18 => format!("{}{id}x", topic::DEVICE_RPC_REQUEST_PREFIX),
        _ => "some/other/topic".into(),
    }
}

/// Parse, re-encode, parse again: the re-encoding is accepted and is a fixed point.
fn round_trip<P: Payload + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    let Ok(first) = P::parse(bytes) else {
        return;
    };
    let encoded = first.to_vec();
    let second = match P::parse(&encoded) {
        Ok(p) => p,
        Err(e) => panic!(
            "{} rejects its own encoding {:?}: {e}",
            std::any::type_name::<P>(),
            String::from_utf8_lossy(&encoded)
        ),
    };
    assert_eq!(
        second.to_vec(),
        encoded,
        "{}: encoding is not a fixed point",
        std::any::type_name::<P>()
    );
}

/// Parse protobuf, re-encode, parse again: the re-encoding is accepted and is a fixed point
/// (the first parse may normalise, e.g. an empty claim secret to none; the second may not).
macro_rules! proto_round_trip {
    ($t:ty, $bytes:expr) => {
        if let Ok(first) = <$t>::parse_protobuf($bytes) {
            let encoded = first.to_protobuf();
            match <$t>::parse_protobuf(&encoded) {
                Ok(second) => assert_eq!(
                    second.to_protobuf(),
                    encoded,
                    "{}: protobuf encoding is not a fixed point",
                    stringify!($t)
                ),
                Err(e) => panic!("{} rejects its own protobuf encoding: {e}", stringify!($t)),
            }
        }
    };
}

/// Every protobuf parser of the gateway API and provisioning (`payload::gateway_protobuf`,
/// `payload::provision_protobuf`), on one payload.
fn parse_all_protobuf(bytes: &[u8]) {
    proto_round_trip!(DisconnectNotice, bytes);
    proto_round_trip!(ProvisionRequest, bytes);
    proto_round_trip!(ProvisionResponse, bytes);
    proto_round_trip!(Connect, bytes);
    proto_round_trip!(Disconnect, bytes);
    proto_round_trip!(GatewayTelemetry, bytes);
    proto_round_trip!(GatewayAttributes, bytes);
    proto_round_trip!(GatewayClaim, bytes);
    proto_round_trip!(GatewayAttributeRequest, bytes);
    proto_round_trip!(GatewayRpcResponse, bytes);
    proto_round_trip!(GatewayAttributeUpdate, bytes);
    proto_round_trip!(GatewayRpcRequest, bytes);
    // A response re-encodes against a request; any parse must at least not panic.
    let _ = GatewayAttributeResponse::parse_protobuf(bytes);
}

/// Every parser in the crate, on one payload.
pub fn parse_all(bytes: &[u8]) {
    parse_all_protobuf(bytes);
    // The crate's own JSON writer (every uplink goes through it) writes any value exactly as
    // serde_json does.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        let ours = Payload::to_vec(&value);
        let theirs = serde_json::to_vec(&value).unwrap_or_default();
        assert_eq!(
            ours,
            theirs,
            "the JSON writer differs from serde_json: {}",
            String::from_utf8_lossy(&theirs)
        );
    }
    // Downlinks.
    round_trip::<GatewayAttributeUpdate>(bytes);
    round_trip::<GatewayAttributeResponse>(bytes);
    round_trip::<GatewayRpcRequest>(bytes);
    round_trip::<DisconnectNotice>(bytes);
    round_trip::<DeviceAttributeResponse>(bytes);
    round_trip::<ClientRpcResponse>(bytes);
    round_trip::<RpcRequest>(bytes);
    round_trip::<AttributeUpdate>(bytes);
    round_trip::<ProvisionResponse>(bytes);
    round_trip::<SessionLimits>(bytes);
    if let Ok(r) = GatewayRpcRequest::parse(bytes) {
        if let Some(n) = GatewayNotification::from_rpc(&RpcRequest::new(r.method, r.params)) {
            let rpc = n.to_rpc();
            assert_eq!(GatewayNotification::from_rpc(&rpc), Some(n));
        }
    }
    // Uplinks (what the emulator parses).
    round_trip::<GatewayTelemetry>(bytes);
    round_trip::<GatewayAttributes>(bytes);
    round_trip::<GatewayClaim>(bytes);
    round_trip::<GatewayAttributeRequest>(bytes);
    round_trip::<GatewayRpcResponse>(bytes);
    round_trip::<Connect>(bytes);
    round_trip::<Disconnect>(bytes);
    round_trip::<DeviceTelemetry>(bytes);
    round_trip::<ClientAttributes>(bytes);
    round_trip::<Claim>(bytes);
    round_trip::<DeviceAttributeRequest>(bytes);
    round_trip::<ProvisionRequest>(bytes);
}

/// A gateway connection, connected and subscribed, with four requests awaiting answers.
pub fn connected_gateway(now: Instant) -> (Connection, Server) {
    connected_gateway_with(now, false)
}

/// The same; with `protobuf`, its profile is PROTOBUF and only the two gateway attribute
/// requests await answers (its own Device API takes the application's protobuf bytes).
pub fn connected_gateway_with(now: Instant, protobuf: bool) -> (Connection, Server) {
    let mut config = Config::new(Credentials::AccessToken("GW_TOKEN".into()));
    config.protocol = ProtocolVersion::V5;
    config.max_pending_server_rpcs = 4;
    config.protobuf_profile = protobuf;
    let mut conn = match Connection::new(config, now) {
        Ok(c) => c,
        Err(e) => panic!("config: {e}"),
    };
    let mut server = Server::new(ProtocolVersion::V5);
    server.drain(&mut conn);
    server.open(&mut conn, now);
    let connack = Packet::ConnAck(wire::ConnAck {
        session_present: false,
        code: 0,
    });
    conn.handle_input(
        now,
        gateway_proto::Input::Bytes(&server_bytes(&connack, server.version)),
    );
    server.drain(&mut conn);
    if let Some((pkid, n)) = server.subscribe {
        let suback = Packet::SubAck(wire::SubAck {
            pkid,
            codes: vec![1; n],
        });
        conn.handle_input(
            now,
            gateway_proto::Input::Bytes(&server_bytes(&suback, server.version)),
        );
    }
    let mut commands = vec![
        Command::request_device_attributes("A", AttributeScope::Client, ["k"]),
        Command::request_device_attributes("B", AttributeScope::Shared, ["k", "l"]),
    ];
    if !protobuf {
        commands.push(Command::request_attributes(["c"], ["s"]));
        commands.push(Command::rpc("getTime", json!({})));
    }
    for c in commands {
        if let Err(e) = conn.command(now, c) {
            panic!("command refused: {e}");
        }
    }
    server.drain(&mut conn);
    // Acknowledge every publish so the requests only await their answers.
    let acks: Vec<u16> = server.unacked.iter().copied().collect();
    for pkid in acks {
        let ack = Packet::PubAck(wire::PubAck { pkid, code: 0 });
        conn.handle_input(
            now,
            gateway_proto::Input::Bytes(&server_bytes(&ack, server.version)),
        );
    }
    server.unacked.clear();
    server.drain(&mut conn);
    assert_eq!(conn.state(), State::Connected);
    assert!(server.outcomes.is_empty(), "{:?}", server.events);
    (conn, server)
}

/// The target body.
pub fn run(data: &[u8]) {
    let [sel, id, payload @ ..] = data else {
        return;
    };
    parse_all(payload);

    let now = Instant::now();
    // The selector's high bit picks a PROTOBUF gateway profile.
    let protobuf = sel & 0x80 != 0;
    let (mut conn, mut server) = connected_gateway_with(now, protobuf);
    let requests = conn.stats().requests;
    let publish = Packet::Publish(wire::Publish {
        topic: topic_for(sel & 0x7f, u64::from(*id)),
        payload: Bytes::copy_from_slice(payload),
        qos: QoS::AtLeastOnce,
        dup: false,
        retain: false,
        pkid: 7,
    });
    let before = conn.stats().packets_sent;
    conn.handle_input(
        now,
        gateway_proto::Input::Bytes(&server_bytes(&publish, server.version)),
    );
    server.drain(&mut conn);
    assert_eq!(conn.state(), State::Connected, "{:?}", server.events);
    assert!(
        !server
            .events
            .iter()
            .any(|e| matches!(e, Event::Disconnected { .. })),
        "{:?}",
        server.events
    );
    assert!(
        conn.stats().packets_sent > before,
        "the PUBLISH is acknowledged"
    );
    for id in server.outcomes.keys() {
        assert!(id.get() <= requests, "outcome for an unknown request {id}");
    }
    let stats = conn.stats();
    assert!(stats.pending_server_rpcs <= 4);
    assert!(stats.pending_requests <= 4);
}
