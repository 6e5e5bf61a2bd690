//! The client core (`gateway_proto::Connection`) against the sans-IO emulator, wired together
//! in memory on one virtual clock: the Gateway and Device APIs end to end, including what the
//! client does across reconnects and idle periods that a real ThingsBoard punishes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use gateway_emulator::{
    ClientRpcAnswer, Event as EmuEvent, NewDevice, ProtoSchemas, RpcCall, RpcOutcome,
};
use gateway_proto::payload::{ClientRpcResponse, TelemetryEntry, TelemetryMetadata};
use gateway_proto::{
    AttributeScope, Command, Config, Credentials, Event, GatewayCommand, ReasonCode, RequestError,
    RequestId, Role,
};
use serde_json::{json, Map, Value};

mod link;

use link::Link;

/// Helpers of these tests on top of the shared harness.
impl Link {
    fn command(&mut self, command: Command) -> RequestId {
        let id = self.conn.command(self.now, command).unwrap();
        self.settle();
        id
    }

    /// The emulator kills the connection (no DISCONNECT), as a network failure would.
    fn drop_connection(&mut self) {
        let s = self.session.expect("connected");
        self.emu.drop_session(s).unwrap();
        self.settle();
    }

    fn rpc_outcome(&mut self) -> Option<RpcOutcome> {
        self.emu_events.iter().find_map(|e| match e {
            EmuEvent::RpcCompleted { outcome, .. } => Some(outcome.clone()),
            _ => None,
        })
    }
}

fn values(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn gateway_config() -> Config {
    let mut c = Config::new(Credentials::AccessToken("GW_TOKEN".into()));
    c.reconnect.jitter_percent = 0;
    c
}

fn gateway_link(config: Config) -> Link {
    let mut link = Link::new(config, |emu| {
        emu.create_device(NewDevice::gateway("Gateway", "GW_TOKEN"))
            .unwrap();
    });
    assert!(link
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::Connected { .. })));
    link
}

/// Sub-device connect, data, shared attributes both ways and a server RPC answered, on a
/// connected gateway link.
fn gateway_round_trip(l: &mut Link) {
    let c = l.command(Command::connect_device("Boiler", Some("boiler")));
    let t = l.command(Command::device_telemetry(
        "Boiler",
        values(json!({"temp": 71.5, "on": true, "state": {"mode": "eco"}})),
    ));
    let a = l.command(Command::device_attributes(
        "Boiler",
        values(json!({"model": "B-7"})),
    ));
    assert_eq!(
        l.take_events(),
        vec![
            Event::Delivered(c),
            Event::Delivered(t),
            Event::Delivered(a)
        ]
    );
    assert_eq!(l.emu.device("Boiler").unwrap().device_type, "boiler");
    let latest = l.emu.latest_telemetry("Boiler").unwrap();
    assert_eq!(latest["temp"].value, json!(71.5));
    assert_eq!(latest["on"].value, json!(true));
    assert_eq!(latest["state"].value, json!({"mode": "eco"}));
    assert_eq!(
        l.emu.client_attributes("Boiler").unwrap()["model"],
        json!("B-7")
    );

    // Shared attributes pushed by the server, then read back by request.
    l.emu
        .set_shared_attributes("Boiler", values(json!({"setpoint": 65})))
        .unwrap();
    l.settle();
    assert_eq!(
        l.take_events(),
        vec![Event::AttributeUpdate {
            device: Some("Boiler".into()),
            values: values(json!({"setpoint": 65})),
            deleted: vec![],
        }]
    );
    let r = l.command(Command::request_device_attributes(
        "Boiler",
        AttributeScope::Shared,
        ["setpoint"],
    ));
    assert_eq!(
        l.take_events(),
        vec![Event::AttributeResponse {
            request: r,
            device: Some("Boiler".into()),
            client: Map::new(),
            shared: values(json!({"setpoint": 65})),
        }]
    );

    // A two-way RPC from the platform, answered by the gateway.
    l.emu
        .send_rpc(
            "Boiler",
            RpcCall::two_way("reboot", json!({"delay": 1})),
            l.now,
        )
        .unwrap();
    l.settle();
    let events = l.take_events();
    let [Event::RpcRequest {
        device: Some(device),
        id,
        method,
        params,
    }] = events.as_slice()
    else {
        panic!("expected one RPC, got {events:?}");
    };
    assert_eq!(
        (device.as_str(), *id, method.as_str()),
        ("Boiler", 0, "reboot")
    );
    assert_eq!(params, &json!({"delay": 1}));
    l.command(Command::device_rpc_reply(
        "Boiler",
        *id,
        json!({"ok": true}),
    ));
    assert_eq!(
        l.rpc_outcome(),
        Some(RpcOutcome::Reply(json!({"ok": true})))
    );
}

#[test]
fn gateway_api_round_trip() {
    let mut l = gateway_link(gateway_config());
    gateway_round_trip(&mut l);
}

/// The same with a PROTOBUF gateway profile on both sides: the client core's protobuf
/// gateway messages are what the emulator reads as ThingsBoard does, and back.
#[test]
fn protobuf_gateway_api_round_trip() {
    let mut config = gateway_config();
    config.protobuf_profile = true;
    let mut l = Link::new(config, |emu| {
        emu.create_device(NewDevice::gateway("Gateway", "GW_TOKEN").with_type("proto-gateways"))
            .unwrap();
        emu.set_profile_protobuf("proto-gateways", ProtoSchemas::thingsboard_defaults());
    });
    assert!(l
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::Connected { .. })));
    gateway_round_trip(&mut l);
}

/// The failure the issue names: after a reconnect, a sub-device that has nothing to send is
/// unreachable on ThingsBoard unless the gateway announces it again.
#[test]
fn sub_devices_are_reachable_again_after_a_reconnect() {
    let mut l = gateway_link(gateway_config());
    l.command(Command::connect_device("Quiet", None));
    l.command(Command::device_telemetry("Chatty", values(json!({"x": 1}))));
    assert_eq!(
        l.emu.connected_children("Gateway").unwrap(),
        ["Chatty", "Quiet"]
    );
    l.drop_connection();
    assert!(
        l.emu.connected_children("Gateway").unwrap().is_empty(),
        "the server forgets a gateway's children with its session"
    );
    l.advance(Duration::from_secs(2));
    assert_eq!(l.conn.state(), gateway_proto::State::Connected);
    assert_eq!(
        l.emu.connected_children("Gateway").unwrap(),
        ["Chatty", "Quiet"],
        "both re-announced without any command"
    );
    l.take_events();
    l.emu
        .send_rpc("Quiet", RpcCall::one_way("ping", Value::Null), l.now)
        .unwrap();
    l.settle();
    assert!(l
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::RpcRequest { device: Some(d), .. } if d == "Quiet")));
}

#[test]
fn an_rpc_issued_while_the_gateway_is_away_arrives_after_the_reannounce() {
    let mut l = gateway_link(gateway_config());
    l.command(Command::connect_device("Pump", None));
    l.drop_connection();
    l.emu
        .send_rpc(
            "Pump",
            RpcCall::two_way("start", Value::Null).with_timeout(Duration::from_secs(30)),
            l.now,
        )
        .unwrap();
    l.advance(Duration::from_secs(5));
    let rpc = l.take_events().into_iter().find_map(|e| match e {
        Event::RpcRequest {
            device: Some(d),
            id,
            ..
        } => Some((d, id)),
        _ => None,
    });
    let (device, id) = rpc.expect("pending RPC delivered after the re-announce");
    l.command(Command::device_rpc_reply(device, id, json!("started")));
    assert_eq!(l.rpc_outcome(), Some(RpcOutcome::Reply(json!("started"))));
}

#[test]
fn silent_sub_devices_stay_connected_past_the_servers_idle_expiry() {
    for keepalive in [Some(Duration::from_secs(480)), None] {
        let mut c = gateway_config();
        c.sub_device_keepalive = keepalive;
        let mut l = gateway_link(c);
        l.command(Command::connect_device("Quiet", None));
        // 25 minutes with the gateway itself active (pings) but the child silent.
        for _ in 0..25 {
            l.advance(Duration::from_secs(60));
        }
        let children = l.emu.connected_children("Gateway").unwrap();
        match keepalive {
            Some(_) => assert_eq!(children, ["Quiet"], "kept alive"),
            None => assert!(
                children.is_empty(),
                "control: without keep-alives the emulator expires the child, got {children:?}"
            ),
        }
        assert_eq!(l.conn.state(), gateway_proto::State::Connected);
        let warnings: Vec<&Event> = l
            .events
            .iter()
            .filter(|e| matches!(e, Event::Warning(_) | Event::Disconnected { .. }))
            .collect();
        assert!(warnings.is_empty(), "{warnings:?}");
    }
}

#[test]
fn device_limit_refuses_the_connect_and_keeps_the_session() {
    let mut l = gateway_link(gateway_config());
    // The gateway itself is device 1.
    l.emu.set_max_devices(Some(2));
    let ok = l.command(Command::connect_device("First", None));
    let refused = l.command(Command::connect_device("Second", None));
    assert_eq!(
        l.take_events(),
        vec![
            Event::Delivered(ok),
            Event::Failed {
                request: refused,
                error: RequestError::Rejected(ReasonCode::QuotaExceeded),
            }
        ]
    );
    assert!(!l.conn.is_sub_device_registered("Second"));
    assert_eq!(l.conn.state(), gateway_proto::State::Connected);
}

/// Latency `metadata` the client attaches to gateway telemetry reaches the platform's gateway
/// metrics: the next report (60 s) stores `gatewayMetrics` on the gateway, per connector.
#[test]
fn telemetry_metadata_becomes_the_gateways_latency_metrics() {
    let mut l = gateway_link(gateway_config());
    let mut entry = TelemetryEntry::at(1_000, values(json!({"t": 1})));
    entry.metadata = Some(TelemetryMetadata {
        connector: "modbus".into(),
        received_ts: 1_700_000_000_000,
        published_ts: 1_700_000_000_025,
    });
    l.command(Command::Gateway(GatewayCommand::Telemetry {
        device: "Pump".into(),
        entries: vec![entry],
    }));
    assert_eq!(l.emu.telemetry("Pump").unwrap()["t"].len(), 1);
    l.advance(Duration::from_secs(61));
    let stored = &l.emu.telemetry("Gateway").unwrap()["gatewayMetrics"];
    let modbus = &stored[0].value["modbus"];
    assert_eq!(modbus["avgGwLatency"], json!(25));
    assert_eq!(modbus["minGwLatency"], json!(25));
    assert_eq!(modbus["maxGwLatency"], json!(25));
}

#[test]
fn deleted_and_renamed_sub_devices_update_the_registry() {
    let mut l = gateway_link(gateway_config());
    l.command(Command::connect_device("Old", None));
    l.command(Command::connect_device("Doomed", None));
    l.take_events();
    l.emu.rename_device("Old", "New", l.now).unwrap();
    l.emu.delete_device("Doomed", l.now).unwrap();
    l.settle();
    let events = l.take_events();
    assert!(
        events.contains(&Event::SubDeviceRenamed {
            old_name: "Old".into(),
            new_name: "New".into()
        }),
        "{events:?}"
    );
    assert!(events.contains(&Event::SubDeviceDeleted {
        device: "Doomed".into()
    }));
    assert!(l.conn.is_sub_device_registered("New"));
    assert!(!l.conn.is_sub_device_registered("Old"));
    assert!(!l.conn.is_sub_device_registered("Doomed"));
    l.drop_connection();
    l.advance(Duration::from_secs(2));
    assert_eq!(l.emu.connected_children("Gateway").unwrap(), ["New"]);
    assert!(
        l.emu.device("Doomed").is_none(),
        "not re-created by a stale announce"
    );
}

#[test]
fn device_api_round_trip() {
    let mut c = Config::new(Credentials::AccessToken("DEV_TOKEN".into()));
    c.role = Role::Device;
    let mut l = Link::new(c, |emu| {
        emu.create_device(NewDevice::device("Meter", "DEV_TOKEN"))
            .unwrap();
        emu.set_client_rpc_handler(Some(Box::new(|call| match call.method.as_str() {
            "getTime" => ClientRpcAnswer::Reply(json!({"time": 42})),
            _ => ClientRpcAnswer::NoAnswer,
        })));
    });
    l.take_events();
    let t = l.command(Command::telemetry(values(json!({"kwh": 3.5}))));
    let a = l.command(Command::attributes(values(json!({"serial": "M-1"}))));
    assert_eq!(
        l.take_events(),
        vec![Event::Delivered(t), Event::Delivered(a)]
    );
    l.emu
        .set_shared_attributes("Meter", values(json!({"tariff": "night"})))
        .unwrap();
    l.settle();
    l.take_events();
    let r = l.command(Command::request_attributes(["serial"], ["tariff"]));
    assert_eq!(
        l.take_events(),
        vec![Event::AttributeResponse {
            request: r,
            device: None,
            client: values(json!({"serial": "M-1"})),
            shared: values(json!({"tariff": "night"})),
        }]
    );
    let rpc = l.command(Command::rpc("getTime", json!({})));
    assert_eq!(
        l.take_events(),
        vec![Event::RpcResponse {
            request: rpc,
            response: ClientRpcResponse::Ok(json!({"time": 42}))
        }]
    );
    // No handler answer: ThingsBoard's own timeout reply arrives before the client's deadline.
    let slow = l.command(Command::rpc("slow", json!({})));
    l.advance(Duration::from_secs(61));
    assert_eq!(
        l.take_events(),
        vec![Event::RpcResponse {
            request: slow,
            response: ClientRpcResponse::Error("timeout".into())
        }]
    );
    // Server-side RPC to the device itself.
    l.emu
        .send_rpc("Meter", RpcCall::two_way("reset", json!(null)), l.now)
        .unwrap();
    l.settle();
    let events = l.take_events();
    let [Event::RpcRequest {
        device: None, id, ..
    }] = events.as_slice()
    else {
        panic!("{events:?}");
    };
    l.command(Command::rpc_reply(*id, json!({"reset": true})));
    assert_eq!(
        l.rpc_outcome(),
        Some(RpcOutcome::Reply(json!({"reset": true})))
    );
}

/// `Emulator::restart`: every connection closes, the platform (devices, telemetry, shared
/// attributes, pending RPCs) stays; the client reconnects and re-announces its sub-devices.
#[test]
fn a_restart_keeps_the_platform_and_the_gateway_comes_back() {
    let mut l = gateway_link(gateway_config());
    l.command(Command::connect_device("Boiler", None));
    l.command(Command::device_telemetry("Boiler", values(json!({"t": 1}))));
    l.take_events();
    let closed = l.emu.restart(l.now);
    assert_eq!(closed.len(), 1);
    l.settle();
    assert!(l.emu.sessions().is_empty());
    assert!(l
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::Disconnected { .. })));
    // An RPC issued while the gateway is away waits on the platform.
    l.emu
        .send_rpc(
            "Boiler",
            RpcCall::two_way("start", Value::Null).with_timeout(Duration::from_secs(30)),
            l.now,
        )
        .unwrap();
    l.advance(Duration::from_secs(3));
    assert_eq!(l.conn.state(), gateway_proto::State::Connected);
    assert_eq!(l.emu.connected_children("Gateway").unwrap(), ["Boiler"]);
    assert_eq!(
        l.emu.latest_telemetry("Boiler").unwrap()["t"].value,
        json!(1)
    );
    assert!(l
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::RpcRequest { device: Some(d), .. } if d == "Boiler")));
}
