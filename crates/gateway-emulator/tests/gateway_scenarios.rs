//! ThingsBoard's own gateway integration-test scenarios (spec §9), replayed with raw MQTT
//! bytes against the sans-IO emulator on a virtual clock.

mod common;

use std::time::Duration;

use common::*;
use gateway_emulator::{
    ClaimOutcome, Credentials, EmulatorConfig, Event, LimitConfig, LimitedApi, NewDevice, RpcCall,
    RpcOutcome, TenantLimits,
};
use gateway_proto::wire::{Packet, QoS};
use serde_json::json;

/// `AbstractMqttTimeseriesIntegrationTest.testPushTelemetryGateway`.
#[test]
fn push_telemetry_gateway() {
    let mut h = Harness::new();
    let gw = h.gateway(V311);
    let values = json!({"key1":"value1","key2":true,"key3":3.0,"key4":4,"key5":{"someNumber":42,"someArray":[1,2,3]}});
    let payload = json!({
        "Device A": [{"ts": 10000, "values": values}, {"ts": 20000, "values": values}],
        "Device B": [{"ts": 10000, "values": values}, {"ts": 20000, "values": values}],
    });
    h.publish_json(gw, "v1/gateway/telemetry", payload, 1);
    assert_eq!(h.take(gw), vec![puback(1, 0)], "one aggregated PUBACK");
    for device in ["Device A", "Device B"] {
        let info = h.emu.device(device).unwrap();
        assert_eq!(info.created_by_gateway.as_deref(), Some("Gateway"));
        let t = h.emu.telemetry(device).unwrap();
        assert_eq!(t.len(), 5);
        for points in t.values() {
            assert_eq!(
                points.iter().map(|p| p.ts).collect::<Vec<_>>(),
                vec![10000, 20000]
            );
        }
        assert_eq!(t["key2"][0].value, json!(true));
        assert_eq!(t["key3"][0].value, json!(3.0));
        assert_eq!(t["key4"][0].value, json!(4));
        assert_eq!(t["key5"][0].value["someArray"], json!([1, 2, 3]));
    }
}

/// `MqttGatewayClientTest.telemetryUpload`: no ts → server receive time; typing and nulls.
#[test]
fn telemetry_without_ts_uses_receive_time_and_type_cast() {
    let mut h = Harness::new();
    let gw = h.gateway(V5);
    h.advance(Duration::from_secs(5));
    h.publish_json(
        gw,
        "v1/gateway/telemetry",
        json!({"dev": [{"n": "42", "f": "1.5", "s": "abc", "gone": null, "ts": 3}]}),
        1,
    );
    assert_eq!(h.take(gw), vec![puback(1, 0)]);
    let t = h.emu.latest_telemetry("dev").unwrap();
    assert_eq!(t["n"].value, json!(42));
    assert_eq!(t["f"].value, json!(1.5));
    assert_eq!(t["s"].value, json!("abc"));
    assert!(!t.contains_key("gone"));
    // `ts` without `values` is an ordinary key (§2.4).
    assert_eq!(t["ts"].value, json!(3));
    assert_eq!(t["n"].ts, EPOCH_MS + 5_000);
}

/// `testGatewayConnect` + `deviceCreationAfterDeleted` + type handling (§2.2).
#[test]
fn gateway_connect_creates_or_adopts_devices() {
    let mut h = Harness::new();
    let gw = h.gateway(V311);
    h.publish_json(
        gw,
        "v1/gateway/connect",
        json!({"device": "Device A", "type": "Thermo"}),
        1,
    );
    h.publish_json(
        gw,
        "v1/gateway/connect",
        json!({"device": "Device B", "deviceType": "X"}),
        2,
    );
    // An existing device is adopted regardless of the type.
    h.publish_json(
        gw,
        "v1/gateway/connect",
        json!({"device": "Device", "type": "Other"}),
        3,
    );
    assert_eq!(h.take(gw), vec![puback(1, 0), puback(2, 0), puback(3, 0)]);
    assert_eq!(h.emu.device("Device A").unwrap().device_type, "Thermo");
    assert_eq!(h.emu.device("Device B").unwrap().device_type, "default");
    assert_eq!(h.emu.device("Device").unwrap().device_type, "default");
    assert_eq!(
        h.emu.connected_children("Gateway").unwrap(),
        vec!["Device", "Device A", "Device B"]
    );
    // Deleted via REST → the next message re-creates it.
    h.emu.delete_device("Device A", h.now).unwrap();
    assert_eq!(
        h.emu.connected_children("Gateway").unwrap(),
        vec!["Device", "Device B"]
    );
    h.publish_json(gw, "v1/gateway/connect", json!({"device": "Device A"}), 4);
    // The `gateway_device_deleted` RPC waits: the gateway did not subscribe to its own RPCs.
    assert_eq!(h.take(gw), vec![puback(4, 0)]);
    assert!(h.emu.device("Device A").is_some());
}

/// A child's credentials are replaced: the device actor closes the child's session, so the
/// gateway's session stays up without a packet and forgets the child until it is announced
/// again (ThingsBoard sends no `v1/gateway/disconnect` notice for a remote close).
#[test]
fn child_credentials_update_drops_only_the_child() {
    let mut h = Harness::new();
    let gw = h.gateway(V5);
    h.publish_json(gw, "v1/gateway/connect", json!({"device": "A"}), 1);
    h.publish_json(gw, "v1/gateway/connect", json!({"device": "B"}), 2);
    assert_eq!(h.take(gw), vec![puback(1, 0), puback(2, 0)]);
    h.emu
        .update_device_credentials("A", Credentials::AccessToken("A_TOKEN".into()), h.now)
        .unwrap();
    assert_eq!(h.take(gw), vec![]);
    assert!(!h.closed(gw));
    assert_eq!(h.emu.connected_children("Gateway").unwrap(), vec!["B"]);
    // Any message for it registers it again.
    h.publish_json(gw, "v1/gateway/telemetry", json!({"A": [{"t": 1}]}), 3);
    assert_eq!(h.take(gw), vec![puback(3, 0)]);
    assert_eq!(h.emu.connected_children("Gateway").unwrap(), vec!["A", "B"]);
}

/// `testPushMetricsGateway`: telemetry elements with `metadata` feed the gateway's latency
/// metrics, stored as its `gatewayMetrics` telemetry at the next report (fixed rate from
/// start-up, 60 s), per connector; the metadata itself is not stored on the device.
#[test]
fn push_metrics_gateway() {
    let mut h = Harness::new();
    let gw = h.gateway(V5);
    h.advance(Duration::from_secs(10));
    // The server receives at EPOCH_MS + 10 s.
    let now = EPOCH_MS + 10_000;
    let meta = |connector: &str, received: i64, published: i64| json!({"connector": connector, "receivedTs": received, "publishedTs": published});
    h.publish_json(
        gw,
        "v1/gateway/telemetry",
        json!({
            "A": [{"ts": 1, "values": {"t": 1}, "metadata": meta("modbus", now - 50, now - 20)}],
            "B": [
                {"ts": 2, "values": {"t": 2}, "metadata": meta("modbus", now - 40, now - 30)},
                {"ts": 3, "values": {"t": 3}, "metadata": meta("opcua", now - 5, now - 4)},
                {"ts": 4, "values": {"t": 4}}
            ]
        }),
        1,
    );
    assert_eq!(h.take(gw), vec![puback(1, 0)]);
    assert_eq!(h.emu.telemetry("B").unwrap()["t"].len(), 3);
    assert!(!h.emu.telemetry("B").unwrap().contains_key("metadata"));
    assert!(h.emu.telemetry("Gateway").unwrap().is_empty());

    h.advance(Duration::from_secs(49));
    assert!(h.emu.telemetry("Gateway").unwrap().is_empty());
    h.advance(Duration::from_secs(1));
    let stored = &h.emu.telemetry("Gateway").unwrap()["gatewayMetrics"];
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].ts, EPOCH_MS + 60_000);
    assert_eq!(
        stored[0].value,
        json!({
            // Gateway latencies 30 and 10; transport latencies 20 and 30.
            "modbus": {"avgGwLatency": 20, "minGwLatency": 10, "maxGwLatency": 30,
                       "avgTransportLatency": 25, "minTransportLatency": 20,
                       "maxTransportLatency": 30},
            "opcua": {"avgGwLatency": 1, "minGwLatency": 1, "maxGwLatency": 1,
                      "avgTransportLatency": 4, "minTransportLatency": 4,
                      "maxTransportLatency": 4}
        })
    );
    // Reported data starts over: nothing new at the next tick.
    h.advance(Duration::from_secs(60));
    assert_eq!(
        h.emu.telemetry("Gateway").unwrap()["gatewayMetrics"].len(),
        1
    );

    // Metadata missing a field fails that device's conversion (v5: PUBACK 0x99) and feeds
    // nothing; the other device's metadata still counts.
    h.publish_json(
        gw,
        "v1/gateway/telemetry",
        json!({
            "A": [{"ts": 5, "values": {"t": 5}, "metadata": {"connector": "modbus", "receivedTs": 1}}],
            "B": [{"ts": 6, "values": {"t": 6}, "metadata": meta("bacnet", now, now + 2)}]
        }),
        2,
    );
    assert_eq!(h.take(gw), vec![puback(2, 0x99)]);
    h.advance(Duration::from_secs(60));
    let stored = &h.emu.telemetry("Gateway").unwrap()["gatewayMetrics"];
    assert_eq!(stored.len(), 2);
    let latest = stored[1].value.as_object().unwrap();
    assert_eq!(latest.keys().collect::<Vec<_>>(), vec!["bacnet"]);
}

/// `max_string_value_length` on the gateway API: the device whose values hold a longer string
/// fails its conversion (v5: one PUBACK 0x99), the others are stored.
#[test]
fn max_string_value_length_fails_only_that_device() {
    let mut config = EmulatorConfig::default();
    config.max_string_value_length = 3;
    let mut h = Harness::with_config(config);
    let gw = h.gateway(V5);
    h.publish_json(
        gw,
        "v1/gateway/telemetry",
        json!({"A": [{"s": "abc"}], "B": [{"ts": 1, "values": {"s": "abcd"}}]}),
        1,
    );
    h.publish_json(
        gw,
        "v1/gateway/attributes",
        json!({"A": {"a": "abcd"}, "B": {"a": 12345}}),
        2,
    );
    assert_eq!(h.take(gw), vec![puback(1, 0x99), puback(2, 0x99)]);
    assert_eq!(
        h.emu.latest_telemetry("A").unwrap()["s"].value,
        json!("abc")
    );
    assert!(h.emu.telemetry("B").unwrap().is_empty());
    assert!(h.emu.client_attributes("A").unwrap().is_empty());
    assert_eq!(h.emu.client_attributes("B").unwrap()["a"], json!(12345));
}

/// `MqttAttributesIntegrationTest.testPushAttributesGateway`.
#[test]
fn push_attributes_gateway() {
    let mut h = Harness::new();
    let gw = h.gateway(V5);
    let attrs =
        json!({"attr1":"value1","attr2":true,"attr3":42.0,"attr4":73,"attr5":{"someNumber":42}});
    h.publish_json(
        gw,
        "v1/gateway/attributes",
        json!({"Device A": attrs, "Device B": attrs}),
        1,
    );
    assert_eq!(h.take(gw), vec![puback(1, 0)]);
    for d in ["Device A", "Device B"] {
        assert_eq!(h.emu.client_attributes(d).unwrap().len(), 5);
    }
}

/// `testJsonSubscribeToAttributesUpdatesFromTheServerGateway`, with and without subscription.
#[test]
fn shared_attribute_updates_reach_the_gateway_with_deleted() {
    for subscribe in [Some(QoS::AtMostOnce), None] {
        let mut h = Harness::new();
        let gw = h.gateway(V5);
        if let Some(q) = subscribe {
            assert_eq!(h.subscribe(gw, &[("v1/gateway/attributes", q)]), vec![0]);
        }
        h.publish_json(
            gw,
            "v1/gateway/connect",
            json!({"device": "Dev", "type": "t"}),
            1,
        );
        assert_eq!(h.take(gw), vec![puback(1, 0)]);
        h.emu
            .set_shared_attributes("Dev", map(json!({"sharedJson": {"a": 1}, "n": 5})))
            .unwrap();
        let packets = h.take(gw);
        let (topic, body, qos) = published(&packets[0]);
        assert_eq!(topic, "v1/gateway/attributes");
        assert_eq!(
            body,
            json!({"device": "Dev", "data": {"sharedJson": {"a": 1}, "n": 5}})
        );
        // Unsubscribed: QoS 1 (§1.3).
        assert_eq!(qos, subscribe.unwrap_or(QoS::AtLeastOnce));
        h.emu
            .delete_shared_attributes("Dev", &["sharedJson".to_owned()])
            .unwrap();
        let (_, body, _) = published(&h.take(gw)[0]);
        assert_eq!(
            body,
            json!({"device": "Dev", "data": {"deleted": ["sharedJson"]}})
        );
        // After v1/gateway/disconnect nothing is routed to the gateway any more.
        h.publish_json(gw, "v1/gateway/disconnect", json!({"device": "Dev"}), 2);
        assert_eq!(h.take(gw), vec![puback(2, 0)]);
        h.emu
            .set_shared_attributes("Dev", map(json!({"n": 6})))
            .unwrap();
        assert_eq!(h.take(gw), vec![]);
    }
}

/// `MqttGatewayClientTest.responseDataOnAttributesRequestCheck` / `requestAttributeValuesFromServer`
/// and `testRequestAttributesValuesFromTheServerGateway` (§3.2).
#[test]
fn attribute_request_value_values_rule() {
    let mut h = Harness::new();
    let gw = h.gateway(V311);
    h.subscribe(gw, &[("v1/gateway/attributes/response", QoS::AtLeastOnce)]);
    h.publish_json(
        gw,
        "v1/gateway/attributes",
        json!({"Dev": {"c1": 1, "c2": "two"}}),
        1,
    );
    h.emu
        .set_shared_attributes("Dev", map(json!({"s1": true})))
        .unwrap();
    h.take(gw);
    let cases = [
        (
            json!({"id":1,"device":"Dev","client":true,"key":"c1"}),
            json!({"id":1,"device":"Dev","value":1}),
        ),
        (
            json!({"id":2,"device":"Dev","client":true,"keys":["c1"]}),
            json!({"id":2,"device":"Dev","value":1}),
        ),
        (
            json!({"id":3,"device":"Dev","client":true,"keys":["c1","c2"]}),
            json!({"id":3,"device":"Dev","values":{"c1":1,"c2":"two"}}),
        ),
        (
            json!({"id":4,"device":"Dev","client":true,"keys":["c1","missing"]}),
            json!({"id":4,"device":"Dev","values":{"c1":1}}),
        ),
        (
            json!({"id":5,"device":"Dev","client":true,"key":"missing"}),
            json!({"id":5,"device":"Dev"}),
        ),
        (
            json!({"id":6,"device":"Dev","client":false,"key":"s1"}),
            json!({"id":6,"device":"Dev","value":true}),
        ),
        // Scope is exclusive: a client key asked in shared scope is not found.
        (
            json!({"id":7,"device":"Dev","client":false,"key":"c1"}),
            json!({"id":7,"device":"Dev"}),
        ),
    ];
    for (i, (request, response)) in cases.into_iter().enumerate() {
        let pkid = 10 + i as u16;
        h.publish_json(gw, "v1/gateway/attributes/request", request, pkid);
        let packets = h.take(gw);
        assert_eq!(packets[0], puback(pkid, 0));
        let (topic, body, qos) = published(&packets[1]);
        assert_eq!(topic, "v1/gateway/attributes/response");
        assert_eq!(body, response);
        assert_eq!(qos, QoS::AtLeastOnce);
    }
}

/// `testGatewayServerMqttOneWayRpc` / `testGatewayServerMqttTwoWayRpc` / `serverSideRpc`.
#[test]
fn server_rpc_to_children_one_way_and_two_way() {
    let mut h = Harness::new();
    let gw = h.gateway(V311);
    h.publish_json(gw, "v1/gateway/connect", json!({"device": "Dev"}), 1);
    assert_eq!(h.take(gw), vec![puback(1, 0)]);
    h.subscribe(gw, &[("v1/gateway/rpc", QoS::AtMostOnce)]);

    h.emu
        .send_rpc(
            "Dev",
            RpcCall::one_way("toggle_gpio", json!({"pin": 1})),
            h.now,
        )
        .unwrap();
    let (topic, body, qos) = published(&h.take(gw)[0]);
    assert_eq!(topic, "v1/gateway/rpc");
    assert_eq!(
        body,
        json!({"device":"Dev","data":{"id":0,"method":"toggle_gpio","params":{"pin":1}}})
    );
    assert_eq!(qos, QoS::AtMostOnce);
    assert_eq!(rpc_outcome(&mut h), Some(RpcOutcome::Delivered));

    h.emu
        .send_rpc("Dev", RpcCall::two_way("getValue", json!(true)), h.now)
        .unwrap();
    let (_, body, _) = published(&h.take(gw)[0]);
    assert_eq!(
        body["data"],
        json!({"id":1,"method":"getValue","params":true})
    );
    assert_eq!(rpc_outcome(&mut h), None);
    h.publish_json(
        gw,
        "v1/gateway/rpc",
        json!({"device":"Dev","id":1,"data":{"success":true}}),
        2,
    );
    assert_eq!(h.take(gw), vec![puback(2, 0)]);
    assert_eq!(
        rpc_outcome(&mut h),
        Some(RpcOutcome::Reply(json!({"success": true})))
    );
    // A stale reply is still acknowledged.
    h.publish_json(
        gw,
        "v1/gateway/rpc",
        json!({"device":"Dev","id":1,"data":"late"}),
        3,
    );
    assert_eq!(h.take(gw), vec![puback(3, 0)]);
    assert_eq!(h.emu.stats().stale_rpc_replies, 1);
}

#[test]
fn rpc_timeouts_and_pending_delivery_on_reconnect() {
    let mut h = Harness::new();
    h.emu.create_device(NewDevice::device("Dev", "t")).unwrap();
    // Nobody subscribed: one-way waits, then NO_ACTIVE_CONNECTION.
    h.emu
        .send_rpc(
            "Dev",
            RpcCall::one_way("a", json!(1)).with_timeout(Duration::from_secs(5)),
            h.now,
        )
        .unwrap();
    h.advance(Duration::from_secs(5));
    assert_eq!(rpc_outcome(&mut h), Some(RpcOutcome::NoActiveConnection));

    // Issued while the child is away, delivered when it is re-announced (§4).
    let ticket = h
        .emu
        .send_rpc("Dev", RpcCall::two_way("b", json!(2)), h.now)
        .unwrap();
    h.advance(Duration::from_secs(3));
    let gw = h.gateway(V5);
    h.publish_json(gw, "v1/gateway/telemetry", json!({"Dev": [{"x": 1}]}), 1);
    let packets = h.take(gw);
    assert_eq!(packets[0], puback(1, 0));
    let (topic, body, _) = published(&packets[1]);
    assert_eq!(topic, "v1/gateway/rpc");
    assert_eq!(body["data"]["id"], json!(1));
    // Not answered: TIMEOUT at expiry (10 s default).
    h.advance(Duration::from_secs(7));
    assert_eq!(
        h.emu.poll_event(),
        Some(Event::RpcCompleted {
            ticket,
            device: "Dev".into(),
            outcome: RpcOutcome::Timeout
        })
    );
}

/// `MqttClaimDeviceTest.testGatewayClaimingDevice` (+ without secret and duration).
#[test]
fn gateway_claiming_device() {
    let mut h = Harness::new();
    let gw = h.gateway(V311);
    h.publish_json(
        gw,
        "v1/gateway/claim",
        json!({"Dev": {"secretKey": "value", "durationMs": 1}}),
        1,
    );
    assert_eq!(h.take(gw), vec![puback(1, 0)]);
    h.advance(Duration::from_millis(2));
    assert_eq!(
        h.emu.claim_device("Dev", "value", h.now),
        Ok(ClaimOutcome::Failure)
    );
    h.publish_json(
        gw,
        "v1/gateway/claim",
        json!({"Dev": {"secretKey": "value", "durationMs": 60000}}),
        2,
    );
    assert_eq!(h.take(gw), vec![puback(2, 0)]);
    assert_eq!(
        h.emu.claim_device("Dev", "value", h.now),
        Ok(ClaimOutcome::Success)
    );
    assert_eq!(
        h.emu.claim_device("Dev", "value", h.now),
        Ok(ClaimOutcome::AlreadyClaimed)
    );
    h.publish_json(gw, "v1/gateway/claim", json!({"Dev2": {}}), 3);
    assert_eq!(h.take(gw), vec![puback(3, 0)]);
    assert_eq!(
        h.emu.claim_device("Dev2", "", h.now),
        Ok(ClaimOutcome::Success)
    );
}

/// `MqttClientSideRpcIntegrationTest.getSessionLimitsRpcForGatewayTest`.
#[test]
fn get_session_limits_for_a_gateway() {
    let mut h = Harness::new();
    h.emu
        .set_rate_limits(TenantLimits {
            gateway: LimitConfig::new("100:1", "50:1", "500:1"),
            gateway_device: LimitConfig::new("10:1", "5:1", "50:1"),
            ..TenantLimits::default()
        })
        .unwrap();
    let gw = h.gateway(V311);
    h.subscribe(gw, &[("v1/devices/me/rpc/response/+", QoS::AtLeastOnce)]);
    h.publish_json(
        gw,
        "v1/devices/me/rpc/request/1",
        json!({"method":"getSessionLimits","params":{}}),
        1,
    );
    let packets = h.take(gw);
    assert_eq!(packets[0], puback(1, 0));
    let (topic, body, _) = published(&packets[1]);
    assert_eq!(topic, "v1/devices/me/rpc/response/1");
    assert_eq!(
        body,
        json!({
            "maxPayloadSize": 65536,
            "maxInflightMessages": 100,
            "rateLimits": {"messages":"10:1","telemetryMessages":"5:1","telemetryDataPoints":"50:1"},
            "gatewayRateLimits": {"messages":"100:1","telemetryMessages":"50:1","telemetryDataPoints":"500:1"},
        })
    );
}

/// MTH answers `getSessionLimits` before any `transportService` call: with the gateway's
/// only regular token taken by its session's open, the request is still answered, and any
/// other RPC request is then refused (DISCONNECT 0x83).
#[test]
fn get_session_limits_takes_no_token() {
    let mut h = Harness::new();
    h.emu
        .set_rate_limits(TenantLimits {
            gateway_device: LimitConfig::new("1:60", "", ""),
            ..TenantLimits::default()
        })
        .unwrap();
    let gw = h.gateway(V5);
    for pkid in 1..=3 {
        h.publish_json(
            gw,
            &format!("v1/devices/me/rpc/request/{pkid}"),
            json!({"method":"getSessionLimits","params":{}}),
            pkid,
        );
        let packets = h.take(gw);
        assert_eq!(packets[0], puback(pkid, 0));
        assert_eq!(packets.len(), 2, "{packets:?}");
    }
    h.publish_json(
        gw,
        "v1/devices/me/rpc/request/4",
        json!({"method":"other","params":{}}),
        4,
    );
    assert_eq!(h.take(gw), vec![disconnect(0x83)]);
}

/// `MqttGatewayRateLimitsTest`: children share the gateway bucket, the gateway's own traffic
/// uses the "gateway device" bucket.
#[test]
fn gateway_rate_limit_notifications() {
    let mut h = Harness::new();
    h.emu
        .set_rate_limits(TenantLimits {
            gateway: LimitConfig::new("", "1:60", ""),
            gateway_device: LimitConfig::new("", "1:60", ""),
            ..TenantLimits::default()
        })
        .unwrap();
    let gw = h.gateway(V5);
    h.publish_json(
        gw,
        "v1/gateway/telemetry",
        json!({"DeviceA": [{"t": 1}]}),
        1,
    );
    h.publish_json(gw, "v1/devices/me/telemetry", json!({"own": 1}), 2);
    assert_eq!(h.take(gw), vec![puback(1, 0), puback(2, 0)]);
    h.publish_json(
        gw,
        "v1/gateway/telemetry",
        json!({"DeviceB": [{"t": 1}]}),
        3,
    );
    assert_eq!(h.take(gw), vec![puback(3, 0x97)]);
    assert_eq!(
        h.emu.poll_event(),
        Some(Event::RateLimited {
            device: "DeviceB".into(),
            api: LimitedApi::Gateway
        })
    );
    let gw = h.gateway(V5);
    h.publish_json(gw, "v1/devices/me/telemetry", json!({"own": 2}), 4);
    assert_eq!(h.take(gw), vec![disconnect(0x83)]);
    assert_eq!(
        h.emu.poll_event(),
        Some(Event::RateLimited {
            device: "Gateway".into(),
            api: LimitedApi::GatewayDevice
        })
    );
}

/// `GatewaySessionHandlerTest`: a ping refreshes children only with `overwriteActivityTime`.
#[test]
fn gateway_ping_refreshes_children_only_with_overwrite_activity_time() {
    for overwrite in [false, true] {
        let mut h = Harness::new();
        h.emu
            .create_device(
                NewDevice::gateway("GW2", "GW2_TOKEN").with_overwrite_activity_time(overwrite),
            )
            .unwrap();
        let gw = h.connect(V311, "GW2_TOKEN");
        h.publish_json(gw, "v1/gateway/connect", json!({"device": "Child"}), 1);
        assert_eq!(h.take(gw), vec![puback(1, 0)]);
        for _ in 0..3 {
            h.advance(Duration::from_secs(240));
            h.send(gw, Packet::PingReq);
            assert_eq!(h.take(gw), vec![Packet::PingResp]);
        }
        let children = h.emu.connected_children("GW2").unwrap();
        assert_eq!(children.is_empty(), !overwrite, "overwrite={overwrite}");
        assert!(!h.closed(gw), "pings keep the gateway itself alive");
    }
}

#[test]
fn gateway_device_deleted_and_renamed_notifications() {
    let mut h = Harness::new();
    let gw = h.gateway(V5);
    h.subscribe(gw, &[("v1/devices/me/rpc/request/+", QoS::AtLeastOnce)]);
    h.publish_json(gw, "v1/gateway/connect", json!({"device": "A"}), 1);
    h.publish_json(gw, "v1/gateway/connect", json!({"device": "B"}), 2);
    h.take(gw);
    h.emu.delete_device("A", h.now).unwrap();
    let (topic, body, _) = published(&h.take(gw)[0]);
    assert_eq!(topic, "v1/devices/me/rpc/request/0");
    assert_eq!(
        body,
        json!({"method":"gateway_device_deleted","params":"A"})
    );
    h.emu.rename_device("B", "B2", h.now).unwrap();
    let (topic, body, _) = published(&h.take(gw)[0]);
    assert_eq!(topic, "v1/devices/me/rpc/request/1");
    assert_eq!(
        body,
        json!({"method":"gateway_device_renamed","params":{"B":"B2"}})
    );
    assert!(h.emu.connected_children("Gateway").unwrap().is_empty());
}

#[test]
fn a_child_connected_through_a_second_gateway_leaves_the_first() {
    let mut h = Harness::new();
    h.emu
        .create_device(NewDevice::gateway("GW2", "GW2_TOKEN"))
        .unwrap();
    let gw1 = h.gateway(V5);
    let gw2 = h.connect(V5, "GW2_TOKEN");
    h.publish_json(gw1, "v1/gateway/connect", json!({"device": "Shared"}), 1);
    h.publish_json(gw2, "v1/gateway/connect", json!({"device": "Shared"}), 1);
    assert_eq!(h.take(gw1), vec![puback(1, 0)]);
    assert!(h.emu.connected_children("Gateway").unwrap().is_empty());
    assert_eq!(h.emu.connected_children("GW2").unwrap(), vec!["Shared"]);
    assert_eq!(
        h.emu
            .device("Shared")
            .unwrap()
            .last_connected_gateway
            .as_deref(),
        Some("GW2")
    );
}

#[test]
fn pre_4_2_1_sends_one_puback_per_device_entry() {
    let mut config = EmulatorConfig::default();
    config.quirks.per_device_pubacks = true;
    let mut h = Harness::with_config(config);
    let gw = h.gateway(V311);
    h.publish_json(
        gw,
        "v1/gateway/telemetry",
        json!({"A": [{"t": 1}], "B": [{"t": 2}]}),
        5,
    );
    assert_eq!(h.take(gw), vec![puback(5, 0), puback(5, 0)]);
}

#[test]
fn outgoing_packet_ids_pass_65535_to_0_unless_switched_off() {
    for (quirk, expected) in [(true, 0u16), (false, 1u16)] {
        let mut config = EmulatorConfig::default();
        config.quirks.packet_id_zero = quirk;
        let mut h = Harness::with_config(config);
        let gw = h.gateway(V311);
        h.publish_json(gw, "v1/gateway/connect", json!({"device": "D"}), 1);
        h.take(gw);
        let mut last = Vec::new();
        for i in 0..65_536u32 {
            h.emu
                .set_shared_attributes("D", map(json!({"i": i})))
                .unwrap();
            if i >= 65_534 {
                last.push(h.take(gw));
            }
        }
        let ids: Vec<u16> = h
            .take(gw)
            .into_iter()
            .chain(last.into_iter().flatten())
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p.pkid),
                _ => None,
            })
            .collect();
        assert_eq!(ids[ids.len() - 1], expected, "quirk={quirk}: {ids:?}");
    }
}
