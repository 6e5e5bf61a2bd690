//! The client core's session limits, pacing, push-back and splitting against the sans-IO
//! emulator with ThingsBoard's rate limits set, on one virtual clock: a sustained overload
//! never gets the gateway disconnected and never loses a message.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use gateway_emulator::{Event as EmuEvent, LimitConfig, NewDevice, TenantLimits};
use gateway_proto::limits::{LimitsReport, Scope};
use gateway_proto::payload::TelemetryEntry;
use gateway_proto::{
    Command, CommandError, Config, Credentials, Event, GatewayCommand, LimitsConfig, RequestId,
};
use serde_json::{json, Map, Value};

mod common;
mod link;

use common::{disconnect, puback, Harness, DEV_TOKEN, V5};
use link::Link;

fn limited_link(config: Config, limits: TenantLimits) -> Link {
    Link::new(config, |emu| {
        emu.create_device(NewDevice::gateway("Gateway", "GW_TOKEN"))
            .unwrap();
        emu.set_rate_limits(limits).unwrap();
    })
}

/// Helpers of these tests on top of the shared harness.
impl Link {
    fn command(&mut self, command: Command) -> Result<RequestId, CommandError> {
        let id = self.conn.command(self.now, command);
        self.settle();
        id
    }

    /// Outcome events per request so far.
    fn outcomes(&self) -> BTreeMap<RequestId, Vec<&Event>> {
        let mut out: BTreeMap<RequestId, Vec<&Event>> = BTreeMap::new();
        for e in &self.events {
            if let Some(r) = e.request() {
                out.entry(r).or_default().push(e);
            }
        }
        out
    }
}

fn values(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

/// ThingsBoard-style limits: the sub-devices together may send 10 telemetry messages a
/// second in bursts of 20 (600 a minute) and 50 data points a second; the gateway itself 5
/// telemetry messages a second (100 a minute).
fn tenant_limits() -> TenantLimits {
    TenantLimits {
        gateway: LimitConfig::new("50:1,1000:60", "20:1,600:60", "100:1,3000:60"),
        gateway_device: LimitConfig::new("20:1,300:60", "5:1,100:60", "50:1,1000:60"),
        ..TenantLimits::default()
    }
}

fn gateway_config() -> Config {
    let mut c = Config::new(Credentials::AccessToken("GW_TOKEN".into()));
    c.reconnect.jitter_percent = 0;
    c.max_buffered_bytes = 64 * 1024 * 1024;
    c
}

/// The application offers three times what the limits allow for 20 s: 30 sub-device
/// telemetry messages a second over 5 sub-devices (3 data points each), 3 of the gateway's
/// own a second, and an attribute update a second. Returns the accepted requests and the
/// timestamps used per device.
fn overload(link: &mut Link) -> (Vec<RequestId>, BTreeMap<String, Vec<i64>>) {
    let mut ids = Vec::new();
    let mut stamps: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut ts = 1_700_000_000_000i64;
    for tick in 0..200u32 {
        // Every 100 ms: 3 sub-device messages, and every third tick one of the gateway's own.
        for k in 0..3u32 {
            ts += 1;
            let device = format!("Sensor {}", (tick * 3 + k) % 5);
            let entry = TelemetryEntry::at(ts, values(json!({"t": ts % 1000, "h": 40, "p": 1013})));
            ids.push(
                link.command(Command::Gateway(GatewayCommand::Telemetry {
                    device: device.clone(),
                    entries: vec![entry],
                }))
                .unwrap(),
            );
            stamps.entry(device).or_default().push(ts);
        }
        if tick % 3 == 0 {
            ts += 1;
            let own = TelemetryEntry::at(ts, values(json!({"cpu": tick})));
            ids.push(
                link.command(Command::Device(gateway_proto::DeviceCommand::Telemetry(
                    vec![own],
                )))
                .unwrap(),
            );
            stamps.entry("Gateway".into()).or_default().push(ts);
        }
        if tick % 10 == 0 {
            ids.push(
                link.command(Command::device_attributes(
                    "Sensor 0",
                    values(json!({"fw": tick})),
                ))
                .unwrap(),
            );
        }
        link.advance(Duration::from_millis(100));
    }
    (ids, stamps)
}

#[test]
fn a_sustained_overload_is_paced_without_a_disconnect_or_a_lost_message() {
    let mut link = limited_link(gateway_config(), tenant_limits());
    let (ids, stamps) = overload(&mut link);
    // Let the queue drain: well within the default 5-minute publish timeout.
    for _ in 0..240 {
        if link.outcomes().len() >= ids.len() {
            break;
        }
        link.advance(Duration::from_secs(1));
    }
    let applied = link.events.iter().find_map(|e| match e {
        Event::SessionLimits(LimitsReport::Applied(a)) => Some(a.clone()),
        _ => None,
    });
    let applied = applied.expect("the emulator's limits were applied");
    assert_eq!(
        applied
            .server
            .gateway_rate_limits
            .unwrap()
            .telemetry_messages,
        "20:1,600:60"
    );
    let trouble: Vec<&Event> = link
        .events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Disconnected { .. } | Event::RateLimited(_) | Event::Warning(_)
            )
        })
        .collect();
    assert!(trouble.is_empty(), "{trouble:?}");
    assert!(
        !link
            .emu_events
            .iter()
            .any(|e| matches!(e, EmuEvent::RateLimited { .. })),
        "the emulator never had to limit the gateway"
    );
    let outcomes = link.outcomes();
    for id in &ids {
        assert_eq!(
            outcomes.get(id).map(Vec::as_slice),
            Some(&[&Event::Delivered(*id)][..]),
            "{id}"
        );
    }
    // Every data point is stored, at its own timestamp.
    for (device, stamps) in &stamps {
        let stored = link.emu.telemetry(device).unwrap();
        let key = if device == "Gateway" { "cpu" } else { "t" };
        let got: Vec<i64> = stored[key].iter().map(|p| p.ts).collect();
        assert_eq!(&got, stamps, "{device}");
    }
    assert_eq!(
        link.emu.client_attributes("Sensor 0").unwrap()["fw"],
        json!(190)
    );
    let stats = link.conn.stats();
    assert!(stats.paced > 0, "the overload was paced");
    assert_eq!(stats.disconnects, 0);
}

#[test]
fn control_without_limits_the_same_overload_gets_the_gateway_disconnected() {
    let mut c = gateway_config();
    c.limits = LimitsConfig::disabled();
    let mut link = limited_link(c, tenant_limits());
    overload(&mut link);
    assert!(link
        .emu_events
        .iter()
        .any(|e| matches!(e, EmuEvent::RateLimited { .. })));
    assert!(link.conn.stats().disconnects > 0);
    assert!(link.events.iter().any(|e| matches!(
        e,
        Event::Failed {
            error: gateway_proto::RequestError::Rejected(_),
            ..
        }
    )));
}

#[test]
fn a_message_over_the_packet_and_data_point_limits_is_split_paced_and_stored_whole() {
    let mut link = limited_link(gateway_config(), tenant_limits());
    link.events.clear();
    // 400 data points of 200-byte strings: far above 64 KiB and above the 80-point share of
    // the sub-devices' 100-point burst.
    let big: Map<String, Value> = (0..400)
        .map(|i| (format!("k{i:03}"), json!("v".repeat(200))))
        .collect();
    let id = link
        .command(Command::Gateway(GatewayCommand::Telemetry {
            device: "Big".into(),
            entries: vec![TelemetryEntry::at(1_700_000_000_000, big.clone())],
        }))
        .unwrap();
    for _ in 0..60 {
        if link.outcomes().contains_key(&id) {
            break;
        }
        link.advance(Duration::from_secs(1));
    }
    assert_eq!(link.outcomes()[&id], [&Event::Delivered(id)]);
    let stored = link.emu.latest_telemetry("Big").unwrap();
    assert_eq!(stored.len(), 400);
    assert!(stored.values().all(|p| p.value == json!("v".repeat(200))));
    assert!(link.conn.stats().split_parts >= 5);
    assert_eq!(link.conn.stats().disconnects, 0);
}

#[test]
fn limits_lowered_mid_session_cause_one_push_back_then_the_new_limits_hold() {
    let mut link = limited_link(gateway_config(), tenant_limits());
    // The tenant profile changes under the running session: the sub-devices may now send a
    // tenth of before. The client learns it only at its next connect.
    link.emu
        .set_rate_limits(TenantLimits {
            gateway: LimitConfig::new("50:1,1000:60", "2:1,60:60", "100:1,3000:60"),
            ..tenant_limits()
        })
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(
            link.command(Command::Gateway(GatewayCommand::Telemetry {
                device: format!("S{}", i % 4),
                entries: vec![TelemetryEntry::at(
                    1_700_000_000_000 + i,
                    values(json!({"n": i})),
                )],
            }))
            .unwrap(),
        );
    }
    for _ in 0..300 {
        if link.outcomes().len() >= ids.len() {
            break;
        }
        link.advance(Duration::from_secs(1));
    }
    // The push-back was seen and said whose limit.
    let pushed: Vec<_> = link
        .events
        .iter()
        .filter_map(|e| match e {
            Event::RateLimited(n) => Some(n.scope),
            _ => None,
        })
        .collect();
    assert!(!pushed.is_empty());
    assert!(pushed.iter().all(|s| *s == Scope::Gateway), "{pushed:?}");
    // After the reconnect the new limits were learned and nothing was refused again.
    let reports = link
        .events
        .iter()
        .filter(|e| matches!(e, Event::SessionLimits(LimitsReport::Applied(_))))
        .count();
    assert!(reports >= 2);
    let disconnects = link.conn.stats().disconnects;
    assert_eq!(disconnects, 1, "{:?}", link.events);
    // Nothing lost: every request delivered, every point stored.
    let outcomes = link.outcomes();
    for id in &ids {
        assert_eq!(outcomes[id], [&Event::Delivered(*id)], "{id}");
    }
    let stored: usize = (0..4)
        .map(|d| link.emu.telemetry(&format!("S{d}")).unwrap()["n"].len())
        .sum();
    assert_eq!(stored, 40);
}

/// DTS `process(PostAttributeMsg)` calls `checkLimits(.., msg.getKvCount())`: an attribute
/// post with keys takes a telemetry message and one data point per key (nulls are dropped
/// before counting), not a regular message; an empty one takes a regular message.
#[test]
fn device_attribute_posts_are_charged_as_telemetry_data_points() {
    let mut h = Harness::new();
    h.emu
        .set_rate_limits(TenantLimits {
            // Two regular messages: the session's open event and the empty post.
            device: LimitConfig::new("2:60", "", "3:60"),
            ..TenantLimits::default()
        })
        .unwrap();
    let dev = h.connect(V5, DEV_TOKEN);
    let attributes = "v1/devices/me/attributes";
    // No keys: the second regular message.
    h.publish(dev, attributes, b"{}", 1);
    // Two, then one data point (the null is not one): the message bucket is not touched.
    h.publish(dev, attributes, br#"{"a":1,"b":2}"#, 2);
    h.publish(dev, "v2/a", br#"{"c":3,"x":null}"#, 3);
    assert_eq!(h.take(dev), vec![puback(1, 0), puback(2, 0), puback(3, 0)]);
    assert_eq!(h.emu.client_attributes("Device").unwrap().len(), 3);
    // The data-point bucket is empty: DISCONNECT 0x83 without a PUBACK.
    h.publish(dev, attributes, br#"{"d":4}"#, 4);
    assert_eq!(h.take(dev), vec![disconnect(0x83)]);
    assert!(h.closed(dev));
    let events: Vec<EmuEvent> = std::iter::from_fn(|| h.emu.poll_event()).collect();
    assert!(events
        .iter()
        .any(|e| matches!(e, EmuEvent::RateLimited { device, .. } if device == "Device")));
}

/// The gateway API's attributes go through the same `process(PostAttributeMsg)` per device:
/// the children's shared gateway buckets are charged data points.
#[test]
fn gateway_attribute_posts_are_charged_as_telemetry_data_points() {
    let mut h = Harness::new();
    h.emu
        .set_rate_limits(TenantLimits {
            gateway: LimitConfig::new("1:60", "", "3:60"),
            ..TenantLimits::default()
        })
        .unwrap();
    let gw = h.gateway(V5);
    // Creating the child takes the one regular message.
    h.publish_json(gw, "v1/gateway/connect", json!({"device": "A"}), 1);
    h.publish_json(
        gw,
        "v1/gateway/attributes",
        json!({"A": {"a": 1, "b": 2}}),
        2,
    );
    assert_eq!(h.take(gw), vec![puback(1, 0), puback(2, 0)]);
    // Two more data points do not fit the three per minute: 0x97, then the close.
    h.publish_json(
        gw,
        "v1/gateway/attributes",
        json!({"A": {"c": 1, "d": 2}}),
        3,
    );
    assert_eq!(h.take(gw), vec![puback(3, 0x97)]);
    assert!(h.closed(gw));
    assert_eq!(h.emu.client_attributes("A").unwrap().len(), 2);
}

/// ThingsBoard charges a new sub-device two regular tokens of the gateway's bucket (its
/// get-or-create and its session-open event) and one for each child session closed when the
/// gateway's session ends. 40 sub-devices are connected against 50 regular messages a second
/// and 100 a minute, the connection drops a minute later, and all 40 are announced again:
/// the client paces connects at their real cost and waits for the tokens the closes took,
/// so the server never refuses a connect (which would cost the whole connection, 0x8B).
#[test]
fn connects_and_the_re_announce_after_a_drop_are_paced_at_their_real_cost() {
    let limits = TenantLimits {
        gateway: LimitConfig::new("50:1,100:60", "", ""),
        ..TenantLimits::default()
    };
    let mut link = limited_link(gateway_config(), limits);
    link.advance(Duration::from_millis(100));
    let names: Vec<String> = (0..40).map(|i| format!("Sensor {i:02}")).collect();
    let ids: Vec<RequestId> = names
        .iter()
        .map(|device| {
            link.command(Command::Gateway(GatewayCommand::Connect {
                device: device.clone(),
                device_type: None,
            }))
            .unwrap()
        })
        .collect();
    for _ in 0..120 {
        if link.outcomes().len() >= ids.len() {
            break;
        }
        link.advance(Duration::from_secs(1));
    }
    let outcomes = link.outcomes();
    for id in &ids {
        assert_eq!(
            outcomes.get(id).map(Vec::as_slice),
            Some(&[&Event::Delivered(*id)][..]),
            "{id}"
        );
    }
    assert_eq!(link.emu.connected_children("Gateway").unwrap(), names);

    let refused = |events: &[EmuEvent]| -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                EmuEvent::RateLimited { device, .. } => Some(device.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(refused(&link.emu_events), Vec::<String>::new());

    // A minute idle (the server's buckets are full again), then the server loses the
    // connection: closing the 40 child sessions takes 40 of the 100 a minute, so the
    // re-announce, 80 tokens, has to wait for part of them.
    link.advance(Duration::from_secs(60));
    let session = link.session.expect("connected");
    link.emu.drop_session(session).unwrap();
    link.settle();
    let at_drop = link.emu_events.len();
    assert_eq!(refused(&link.emu_events), Vec::<String>::new());
    for _ in 0..300 {
        if link.emu.connected_children("Gateway").unwrap().len() == names.len() {
            break;
        }
        link.advance(Duration::from_secs(1));
    }
    assert_eq!(link.emu.connected_children("Gateway").unwrap(), names);
    assert_eq!(refused(&link.emu_events[at_drop..]), Vec::<String>::new());
    let drops: Vec<&Event> = link
        .events
        .iter()
        .filter(|e| matches!(e, Event::Disconnected { .. }))
        .collect();
    assert_eq!(drops.len(), 1, "only the drop: {drops:?}");
}

/// A reconnect that finds the gateway's own bucket empty is refused with CONNACK 0x9F
/// (then DISCONNECT 0x96): the client takes it as a transient refusal, backs off, connects
/// once the server has a token again, and delivers what was queued meanwhile.
#[test]
fn a_rate_limited_reconnect_backs_off_and_delivers_what_was_queued() {
    let mut config = gateway_config();
    config.protocol = gateway_proto::ProtocolVersion::V5;
    let limits = TenantLimits {
        // Open and two subscriptions: one session's worth, refilled in a minute.
        gateway_device: LimitConfig::new("3:60", "", ""),
        ..TenantLimits::default()
    };
    let mut link = limited_link(config, limits);
    link.advance(Duration::from_millis(100));
    assert!(link
        .events
        .iter()
        .any(|e| matches!(e, Event::Connected { .. })));
    let session = link.session.expect("connected");
    link.emu.drop_session(session).unwrap();
    link.settle();
    let id = link
        .command(Command::Gateway(GatewayCommand::Telemetry {
            device: "Sensor".into(),
            entries: vec![TelemetryEntry::at(
                1_700_000_000_000,
                values(json!({"t": 1})),
            )],
        }))
        .unwrap();
    for _ in 0..180 {
        if link.outcomes().contains_key(&id) {
            break;
        }
        link.advance(Duration::from_secs(1));
    }
    assert_eq!(
        link.outcomes().get(&id).map(Vec::as_slice),
        Some(&[&Event::Delivered(id)][..])
    );
    let refusals = link
        .events
        .iter()
        .filter(|e| {
            matches!(e, Event::Disconnected {
                reason: gateway_proto::DisconnectReason::Refused(r), ..
            } if r.reason == gateway_proto::ReasonCode::ConnectionRateExceeded)
        })
        .count();
    assert!(refusals >= 1, "{:?}", link.events);
    let connects = link
        .events
        .iter()
        .filter(|e| matches!(e, Event::Connected { .. }))
        .count();
    assert_eq!(connects, 2);
    assert_eq!(
        link.emu.latest_telemetry("Sensor").unwrap()["t"].value,
        json!(1)
    );
}
