//! Property tests: every payload type round-trips (build → parse gives the input back) with
//! hostile Unicode names and keys; parsers and topic classifiers never panic on arbitrary input;
//! topic builders and classifiers agree for every id.

use std::collections::BTreeMap;

use gateway_proto::payload::device::{parse_rate_limits, write_device_telemetry};
use gateway_proto::payload::gateway::write_gateway_telemetry;
use gateway_proto::payload::*;
use gateway_proto::topic::{
    classify, classify_uplink, IdTopicKind, InboundTopic, OtaKind, TopicFamily, UplinkTopic,
};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Strings that stress JSON escaping and MQTT topic characters.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\"\\\\/+#a-zé\u{1F600}\u{0}-\u{1f} ,:{}\\[\\]]{0,10}",
    ]
}

fn device_name() -> impl Strategy<Value = String> {
    name().prop_filter("device names are non-empty", |s| !s.is_empty())
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Dyadic fractions survive a text round trip exactly.
        (-1_000_000i64..1_000_000).prop_map(|x| Value::from(x as f64 / 8.0)),
        name().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(name(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_map() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(name(), json_value(), 0..5).prop_map(|m| m.into_iter().collect())
}

/// A map whose keys avoid `reserved`.
fn json_map_without(
    reserved: &'static [&'static str],
) -> impl Strategy<Value = Map<String, Value>> {
    json_map().prop_map(move |mut m| {
        for k in reserved {
            m.remove(*k);
        }
        m
    })
}

fn metadata() -> impl Strategy<Value = TelemetryMetadata> {
    (name(), any::<i64>(), any::<i64>()).prop_map(|(connector, received_ts, published_ts)| {
        TelemetryMetadata {
            connector,
            received_ts,
            published_ts,
        }
    })
}

fn entry(with_metadata: bool) -> impl Strategy<Value = TelemetryEntry> {
    let meta = if with_metadata {
        prop::option::of(metadata()).boxed()
    } else {
        Just(None).boxed()
    };
    prop_oneof![
        (any::<i64>(), json_map()).prop_map(|(ts, values)| TelemetryEntry::at(ts, values)),
        json_map_without(&["ts", "values", "metadata"]).prop_map(TelemetryEntry::now),
    ]
    .prop_flat_map(move |e| {
        meta.clone().prop_map(move |metadata| TelemetryEntry {
            metadata,
            ..e.clone()
        })
    })
}

fn per_device<T: std::fmt::Debug>(
    item: impl Strategy<Value = T>,
) -> impl Strategy<Value = BTreeMap<String, T>> {
    prop::collection::btree_map(device_name(), item, 1..4)
}

fn claim() -> impl Strategy<Value = Claim> {
    (prop::option::of(name()), prop::option::of(any::<i64>())).prop_map(
        |(secret_key, duration_ms)| Claim {
            secret_key,
            duration_ms,
        },
    )
}

fn update() -> impl Strategy<Value = AttributeUpdate> {
    (
        json_map_without(&["deleted"]),
        prop::collection::vec(name(), 0..3),
    )
        .prop_map(|(values, deleted)| AttributeUpdate { values, deleted })
}

fn key_list() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        name().prop_filter("non-empty, comma-free", |k| {
            !k.is_empty() && !k.contains(',')
        }),
        0..4,
    )
}

fn rate_limits() -> impl Strategy<Value = RateLimits> {
    (name(), name(), name()).prop_map(|(messages, telemetry_messages, telemetry_data_points)| {
        RateLimits {
            messages,
            telemetry_messages,
            telemetry_data_points,
        }
    })
}

fn credentials_type() -> impl Strategy<Value = CredentialsType> {
    prop_oneof![
        Just(CredentialsType::AccessToken),
        Just(CredentialsType::MqttBasic),
        Just(CredentialsType::X509Certificate),
    ]
}

fn family() -> impl Strategy<Value = TopicFamily> {
    prop::sample::select(TopicFamily::ALL.to_vec())
}

fn ota_kind() -> impl Strategy<Value = OtaKind> {
    prop_oneof![Just(OtaKind::Firmware), Just(OtaKind::Software)]
}

fn round_trip<T>(value: &T) -> Result<(), TestCaseError>
where
    T: Payload + PartialEq + Clone + std::fmt::Debug,
{
    let bytes = value.to_vec();
    prop_assert_eq!(T::parse(&bytes), Ok(value.clone()));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn gateway_connect_disconnect(device in device_name(), device_type in prop::option::of(name())) {
        round_trip(&Connect { device: device.clone(), device_type })?;
        round_trip(&Disconnect { device })?;
    }

    #[test]
    fn gateway_telemetry(devices in per_device(prop::collection::vec(entry(true), 0..3))) {
        round_trip(&GatewayTelemetry { devices })?;
    }

    #[test]
    fn gateway_telemetry_hot_path(device in device_name(), ts in prop::option::of(any::<i64>()),
                                  values in json_map_without(&["ts", "values", "metadata"])) {
        let mut out = Vec::new();
        write_gateway_telemetry(&mut out, &device, ts, &values);
        let entry = TelemetryEntry { ts, values, metadata: None };
        let mut devices = BTreeMap::new();
        devices.insert(device, vec![entry]);
        let expected = GatewayTelemetry { devices };
        prop_assert_eq!(&out, &expected.to_vec());
        prop_assert_eq!(GatewayTelemetry::parse(&out), Ok(expected));
        // The same encoder writes into a BytesMut.
        let mut bytes_mut = bytes::BytesMut::new();
        write_gateway_telemetry(&mut bytes_mut, "x", None, &Map::new());
        prop_assert_eq!(&bytes_mut[..], br#"{"x":[{}]}"#);
    }

    #[test]
    fn gateway_attributes_claim(attrs in per_device(json_map()), claims in per_device(claim())) {
        round_trip(&GatewayAttributes { devices: attrs })?;
        round_trip(&GatewayClaim { devices: claims })?;
    }

    #[test]
    fn gateway_attribute_request(id in any::<u64>(), device in device_name(), client in any::<bool>(),
                                 single in prop::option::of(name()), many in prop::collection::vec(name(), 0..4)) {
        let keys = match single {
            Some(k) => RequestedKeys::Key(k),
            None => RequestedKeys::Keys(many),
        };
        round_trip(&GatewayAttributeRequest { id, device, client, keys })?;
    }

    #[test]
    fn gateway_attribute_response(id in any::<u64>(), device in device_name(), which in 0u8..3,
                                  value in json_value(), values in json_map()) {
        let result = match which {
            0 => AttributeResult::Value(value),
            1 => AttributeResult::Values(values),
            _ => AttributeResult::NotFound,
        };
        round_trip(&GatewayAttributeResponse { id, device, result })?;
    }

    #[test]
    fn gateway_attribute_response_rule(n_keys in 0usize..4, found in json_map()) {
        let keys = RequestedKeys::Keys((0..n_keys).map(|i| i.to_string()).collect());
        let req = GatewayAttributeRequest { id: 1, device: "D".into(), client: false, keys };
        let n_found = found.len();
        let resp = GatewayAttributeResponse::for_request(&req, found);
        match resp.result {
            AttributeResult::NotFound => prop_assert_eq!(n_found, 0),
            AttributeResult::Value(_) => prop_assert!(n_keys <= 1 && n_found == 1),
            AttributeResult::Values(m) => {
                prop_assert_eq!(m.len(), n_found);
                prop_assert!(n_found > 1 || n_keys > 1);
            }
        }
    }

    #[test]
    fn gateway_update_rpc_notice(device in device_name(), update in update(), id in any::<u64>(),
                                 method in name(), params in json_value(), reason in any::<u8>()) {
        round_trip(&GatewayAttributeUpdate { device: device.clone(), update })?;
        round_trip(&GatewayRpcRequest { device: device.clone(), id, method, params: params.clone() })?;
        round_trip(&GatewayRpcResponse { device: device.clone(), id, data: params })?;
        round_trip(&DisconnectNotice { device, reason })?;
    }

    #[test]
    fn gateway_notifications(a in name(), b in name(), renamed in any::<bool>()) {
        let n = if renamed {
            GatewayNotification::DeviceRenamed { old_name: a, new_name: b }
        } else {
            GatewayNotification::DeviceDeleted { device: a }
        };
        let rpc = RpcRequest::parse(&n.to_rpc().to_vec());
        prop_assert_eq!(rpc.as_ref().ok().and_then(GatewayNotification::from_rpc), Some(n));
    }

    #[test]
    fn device_telemetry(entries in prop::collection::vec(entry(false), 0..4)) {
        round_trip(&DeviceTelemetry { entries })?;
    }

    #[test]
    fn device_telemetry_hot_path(ts in prop::option::of(any::<i64>()),
                                 values in json_map_without(&["ts", "values"])) {
        let mut out = Vec::new();
        write_device_telemetry(&mut out, ts, &values);
        let expected = DeviceTelemetry { entries: vec![TelemetryEntry { ts, values, metadata: None }] };
        prop_assert_eq!(DeviceTelemetry::parse(&out), Ok(expected));
    }

    #[test]
    fn device_simple_messages(values in json_map(), claim in claim(), update in update(),
                              client in json_map(), shared in json_map()) {
        round_trip(&ClientAttributes { values })?;
        round_trip(&claim)?;
        round_trip(&update)?;
        round_trip(&DeviceAttributeResponse { client, shared })?;
    }

    #[test]
    fn device_attribute_request(client in key_list(), shared in key_list()) {
        let req = DeviceAttributeRequest::new(client, shared);
        prop_assert!(req.is_ok());
        if let Ok(req) = req {
            round_trip(&req)?;
        }
    }

    #[test]
    fn device_attribute_request_rejects_commas(a in name(), b in name()) {
        let key = format!("{a},{b}");
        prop_assert!(
            matches!(
                DeviceAttributeRequest::new(vec![key], vec![]),
                Err(PayloadError::InvalidKey { .. })
            ),
            "a key containing a comma must be refused"
        );
    }

    #[test]
    fn device_rpc(method in name(), params in json_value(), error in name()) {
        round_trip(&RpcRequest::new(method, params.clone()))?;
        round_trip(&params)?;
        round_trip(&ClientRpcResponse::Error(error))?;
        let looks_like_error = matches!(&params, Value::Object(m)
            if m.len() == 1 && m.get("error").is_some_and(Value::is_string));
        if !looks_like_error {
            round_trip(&ClientRpcResponse::Ok(params))?;
        }
    }

    #[test]
    fn session_limits(max_payload_size in any::<u64>(), max_inflight_messages in any::<u64>(),
                      rate_limits in rate_limits(), gateway in prop::option::of(rate_limits())) {
        round_trip(&SessionLimits { max_payload_size, max_inflight_messages, rate_limits,
                                    gateway_rate_limits: gateway })?;
    }

    #[test]
    fn rate_limit_strings(windows in prop::collection::vec((any::<u64>(), any::<u64>()), 0..5),
                          sep in prop_oneof![Just(","), Just(";")]) {
        let text = windows.iter().map(|(c, s)| format!("{c}:{s}")).collect::<Vec<_>>().join(sep);
        let expected: Vec<_> = windows
            .iter()
            .map(|&(capacity, window_secs)| RateLimitWindow { capacity, window_secs })
            .collect();
        prop_assert_eq!(parse_rate_limits(&text), Ok(expected));
    }

    #[test]
    fn rate_limit_strings_never_panic(s in any::<String>()) {
        let _ = parse_rate_limits(&s);
    }

    #[test]
    fn provisioning(device_name in prop::option::of(name()), key in name(), secret in name(),
                    credentials_type in prop::option::of(credentials_type()),
                    opts in prop::collection::vec(prop::option::of(name()), 5),
                    gateway in prop::option::of(any::<bool>()),
                    text in name(), status in 0u8..4) {
        round_trip(&ProvisionRequest {
            device_name,
            provision_device_key: key,
            provision_device_secret: secret,
            credentials_type,
            token: opts[0].clone(),
            client_id: opts[1].clone(),
            username: opts[2].clone(),
            password: opts[3].clone(),
            hash: opts[4].clone(),
            gateway,
        })?;
        let resp = match status {
            0 => ProvisionResponse::Success {
                credentials_type: credentials_type.unwrap_or(CredentialsType::AccessToken),
                credentials: CredentialsValue::Text(text),
            },
            1 => ProvisionResponse::Success {
                credentials_type: CredentialsType::MqttBasic,
                credentials: CredentialsValue::MqttBasic {
                    client_id: opts[1].clone(),
                    user_name: opts[2].clone(),
                    password: opts[3].clone(),
                },
            },
            2 => ProvisionResponse::NotFound { error_msg: text },
            _ => ProvisionResponse::Failure { error_msg: text },
        };
        round_trip(&resp)?;
    }

    #[test]
    fn parsers_never_panic_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        parse_all(&bytes);
    }

    #[test]
    fn parsers_never_panic_on_json(value in json_value()) {
        parse_all(&value.to_vec());
    }

    #[test]
    fn inbound_topics_round_trip(family in family(), id in any::<u64>(), rid in any::<u64>(),
                                 chunk in any::<u64>(), kind in ota_kind()) {
        let topics = [
            InboundTopic::DeviceAttributes { family },
            InboundTopic::DeviceAttributesResponse { family, id },
            InboundTopic::DeviceRpcRequest { family, id },
            InboundTopic::DeviceRpcResponse { family, id },
            InboundTopic::OtaChunk { kind, request_id: rid, chunk },
            InboundTopic::OtaError { kind },
        ];
        for t in topics {
            prop_assert_eq!(classify(&t.to_topic()), Some(t));
        }
        for kind in IdTopicKind::ALL {
            let topic = gateway_proto::topic::topic_with_id(kind, family, id);
            prop_assert!(topic.ends_with(&id.to_string()));
        }
    }

    #[test]
    fn uplink_topics_round_trip(family in family(), id in any::<u64>(), rid in any::<u64>(),
                                chunk in any::<u64>(), kind in ota_kind()) {
        let topics = [
            UplinkTopic::DeviceTelemetry { family },
            UplinkTopic::DeviceAttributes { family },
            UplinkTopic::DeviceAttributesRequest { family, id },
            UplinkTopic::DeviceRpcRequest { family, id },
            UplinkTopic::DeviceRpcResponse { family, id },
            UplinkTopic::OtaChunkRequest { kind, request_id: rid, chunk },
        ];
        for t in topics {
            prop_assert_eq!(classify_uplink(&t.to_topic()), Some(t));
        }
        prop_assert_eq!(
            classify_uplink(&gateway_proto::topic::attribute_request_topic(id)),
            Some(UplinkTopic::DeviceAttributesRequest { family: TopicFamily::V1, id })
        );
        prop_assert_eq!(
            classify(&gateway_proto::topic::rpc_request_topic(id)),
            Some(InboundTopic::DeviceRpcRequest { family: TopicFamily::V1, id })
        );
        prop_assert_eq!(
            classify_uplink(&gateway_proto::topic::rpc_response_topic(id)),
            Some(UplinkTopic::DeviceRpcResponse { family: TopicFamily::V1, id })
        );
    }

    #[test]
    fn classifiers_never_panic(s in any::<String>(), suffix in name()) {
        let _ = classify(&s);
        let _ = classify_uplink(&s);
        for prefix in ["v1/devices/me/rpc/request/", "v2/a/res/j/", "v2/fw/response/", "v2/sw/request/1/chunk/"] {
            let t = format!("{prefix}{suffix}");
            let _ = classify(&t);
            let _ = classify_uplink(&t);
        }
    }
}

/// Feeds `bytes` to every parser; only checks that none panics.
fn parse_all(bytes: &[u8]) {
    let _ = Connect::parse(bytes);
    let _ = Disconnect::parse(bytes);
    let _ = GatewayTelemetry::parse(bytes);
    let _ = GatewayAttributes::parse(bytes);
    let _ = GatewayClaim::parse(bytes);
    let _ = GatewayAttributeRequest::parse(bytes);
    let _ = GatewayAttributeResponse::parse(bytes);
    let _ = GatewayAttributeUpdate::parse(bytes);
    let _ = GatewayRpcRequest::parse(bytes);
    let _ = GatewayRpcResponse::parse(bytes);
    let _ = DisconnectNotice::parse(bytes);
    let _ = DeviceTelemetry::parse(bytes);
    let _ = ClientAttributes::parse(bytes);
    let _ = Claim::parse(bytes);
    let _ = AttributeUpdate::parse(bytes);
    let _ = DeviceAttributeRequest::parse(bytes);
    let _ = DeviceAttributeResponse::parse(bytes);
    let _ = RpcRequest::parse(bytes);
    let _ = ClientRpcResponse::parse(bytes);
    let _ = SessionLimits::parse(bytes);
    let _ = ProvisionRequest::parse(bytes);
    let _ = ProvisionResponse::parse(bytes);
    let _ = Value::parse(bytes);
    if let Ok(rpc) = RpcRequest::parse(bytes) {
        let _ = GatewayNotification::from_rpc(&rpc);
    }
}

/// Found by the `payload` fuzz target: serde_json's default float parser is not correctly
/// rounded, so a number written by one side and parsed by the other could come out one ULP off
/// (a client's telemetry value stored as a different `f64`, an RPC reply's number changed). The
/// workspace enables serde_json's `float_roundtrip`, which makes parsing exact.
#[test]
fn numbers_survive_encode_and_parse_exactly() {
    let inputs = [
        "1111111111111111111199999999991111111111111111111111111111111111111111111111111111111111111111111111111111111111111",
        "1.111111111111111113e113",
        "0.30000000000000004",
        "2.2250738585072011e-308",
        "-1.7976931348623157e308",
    ];
    for text in inputs {
        let first = Value::parse(text.as_bytes()).unwrap();
        let encoded = first.to_vec();
        let second = Value::parse(&encoded).unwrap();
        assert_eq!(
            second,
            first,
            "{text} -> {}",
            String::from_utf8_lossy(&encoded)
        );
        assert_eq!(second.to_vec(), encoded, "{text}");
        // Through a payload type too: a client RPC response carries any JSON.
        let rpc = ClientRpcResponse::parse(&encoded).unwrap();
        assert_eq!(ClientRpcResponse::parse(&rpc.to_vec()).unwrap(), rpc);
    }
}
