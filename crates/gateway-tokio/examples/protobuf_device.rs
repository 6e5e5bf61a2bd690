//! A device whose profile's payload type is PROTOBUF, on the `v2/.../p` topics, with its
//! messages encoded and decoded by prost: telemetry with the profile's schema, a shared
//! attribute update (`AttributeUpdateNotificationMsg`), a server RPC answered with the
//! profile's RPC schemas.
//!
//! ```sh
//! # Against an in-process emulator, with ThingsBoard's default profile schemas:
//! cargo run -p gateway-tokio --example protobuf_device
//! # Against a ThingsBoard device (PROTOBUF profile with the default schemas, plain MQTT):
//! cargo run -p gateway-tokio --example protobuf_device -- HOST PORT TOKEN
//! ```
//!
//! The structs below mirror the schemas by hand with `#[derive(prost::Message)]`; with the
//! `.proto` files at hand, `prost-build` generates the same.

use std::error::Error;
use std::time::Duration;

use gateway_emulator::{EmulatorConfig, EmulatorHandle, NewDevice, ProtoSchemas, RpcCall};
use gateway_tokio::gateway_proto::raw::RawDownlink;
use gateway_tokio::gateway_proto::topic::TopicFamily;
use gateway_tokio::gateway_proto::{Config, Credentials, Event, Role};
use gateway_tokio::{connect, ClientEvent, ClientOptions};
use prost::Message;
use serde_json::json;

/// The default telemetry schema: `message SensorDataReading { optional double temperature
/// = 1; optional double humidity = 2; InnerObject innerObject = 3; }` (inner object left out).
#[derive(Clone, PartialEq, Message)]
struct SensorDataReading {
    #[prost(double, optional, tag = "1")]
    temperature: Option<f64>,
    #[prost(double, optional, tag = "2")]
    humidity: Option<f64>,
}

/// The default RPC request schema: `message RpcRequestMsg { optional string method = 1;
/// optional int32 requestId = 2; optional string params = 3; }`.
#[derive(Clone, PartialEq, Message)]
struct RpcRequestMsg {
    #[prost(string, optional, tag = "1")]
    method: Option<String>,
    #[prost(int32, optional, tag = "2")]
    request_id: Option<i32>,
    #[prost(string, optional, tag = "3")]
    params: Option<String>,
}

/// The default RPC response schema: `message RpcResponseMsg { optional string payload = 1; }`.
#[derive(Clone, PartialEq, Message)]
struct RpcResponseMsg {
    #[prost(string, optional, tag = "1")]
    payload: Option<String>,
}

/// ThingsBoard's `AttributeUpdateNotificationMsg` (queue.proto), fixed whatever the profile.
#[derive(Clone, PartialEq, Message)]
struct AttributeUpdateNotificationMsg {
    #[prost(message, repeated, tag = "1")]
    shared_updated: Vec<TsKvProto>,
    #[prost(string, repeated, tag = "2")]
    shared_deleted: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct TsKvProto {
    #[prost(int64, tag = "1")]
    ts: i64,
    #[prost(message, optional, tag = "2")]
    kv: Option<KeyValueProto>,
}

/// `type`: 0 boolean, 1 long, 2 double, 3 string, 4 JSON.
#[derive(Clone, PartialEq, Message)]
struct KeyValueProto {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(int32, tag = "2")]
    r#type: i32,
    #[prost(bool, tag = "3")]
    bool_v: bool,
    #[prost(int64, tag = "4")]
    long_v: i64,
    #[prost(double, tag = "5")]
    double_v: f64,
    #[prost(string, tag = "6")]
    string_v: String,
    #[prost(string, tag = "7")]
    json_v: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (host, port, token, emulator) = match args.as_slice() {
        [host, port, token] => (host.clone(), port.parse::<u16>()?, token.clone(), None),
        _ => {
            let emu = EmulatorHandle::start(EmulatorConfig::default()).await?;
            emu.create_device(NewDevice::device("Sensor", "SENSOR_TOKEN").with_type("proto"))?;
            emu.set_profile_protobuf("proto", ProtoSchemas::thingsboard_defaults());
            let addr = emu.addr();
            println!("started an emulator on {addr} with a PROTOBUF profile");
            (
                addr.ip().to_string(),
                addr.port(),
                "SENSOR_TOKEN".into(),
                Some(emu),
            )
        }
    };

    let mut config = Config::new(Credentials::AccessToken(token));
    config.role = Role::Device;
    config.device_topics = TopicFamily::V2Proto; // v2/t/p, v2/a/p, v2/r/req/p/+ ...
    config.protobuf_profile = true; // getSessionLimits in protobuf, JSON commands refused
    let (client, events) = connect(ClientOptions::with_config(&host, port, config)).await?;

    // Telemetry: the profile's message, 2 data points (the core cannot count them itself).
    let reading = SensorDataReading {
        temperature: Some(21.5),
        humidity: Some(40.0),
    };
    client
        .telemetry_bytes(reading.encode_to_vec().into(), 2)
        .await?
        .await?;
    println!("telemetry delivered: {reading:?}");

    let Some(emu) = emulator else {
        println!("waiting 30 s for shared attribute updates and RPCs from ThingsBoard");
        let deadline = tokio::time::sleep(Duration::from_secs(30));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                event = events.recv() => match event {
                    Some(event) => {
                        handle(&client, event).await?;
                    }
                    None => break,
                },
            }
        }
        client.close().await;
        return Ok(());
    };
    println!(
        "the platform stored temperature = {}",
        emu.latest_telemetry("Sensor")?["temperature"].value
    );

    // A shared attribute update, then a two-way RPC from the platform.
    let mut shared = serde_json::Map::new();
    shared.insert("mode".into(), json!("eco"));
    emu.set_shared_attributes("Sensor", shared)?;
    let rpc = tokio::spawn({
        let emu = emu.clone();
        async move {
            emu.rpc("Sensor", RpcCall::two_way("getState", json!("now")))
                .await
        }
    });
    let mut handled = 0;
    while handled < 2 {
        let Some(event) = events.recv().await else {
            break;
        };
        if handle(&client, event).await? {
            handled += 1;
        }
    }
    println!("the platform got the RPC reply: {:?}", rpc.await??);
    client.close().await;
    emu.shutdown();
    Ok(())
}

/// Decodes a raw downlink and answers RPCs; true if the event was one of those.
async fn handle(
    client: &gateway_tokio::Client,
    event: ClientEvent,
) -> Result<bool, Box<dyn Error>> {
    let ClientEvent::Proto(Event::Raw(raw)) = event else {
        return Ok(false);
    };
    match raw {
        RawDownlink::AttributeUpdate(bytes) => {
            let update = AttributeUpdateNotificationMsg::decode(bytes)?;
            for kv in update.shared_updated.iter().filter_map(|t| t.kv.as_ref()) {
                println!("shared attribute {} updated: {kv:?}", kv.key);
            }
            Ok(true)
        }
        RawDownlink::RpcRequest { id, payload } => {
            let request = RpcRequestMsg::decode(payload)?;
            println!("RPC {id}: {request:?}");
            let reply = RpcResponseMsg {
                payload: Some(json!({"state": "ok"}).to_string()),
            };
            client
                .rpc_reply_bytes(id, reply.encode_to_vec().into())
                .await?
                .await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}
