//! Gateway API payloads (`v1/gateway/...`) plus the gateway's own device-RPC notifications.
//!
//! Every message that names a device requires a non-empty device name; the server closes the
//! connection otherwise. Builders do not check this; parsers report
//! [`PayloadError::EmptyDeviceName`].

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{
    as_u64, opt_str, parse_object, req_device, req_u64, string_array, take, AttributeUpdate, Claim,
    JsonSink, ObjWriter, Payload, PayloadError, RpcRequest, TelemetryEntry, WriteJson,
};

/// `v1/gateway/connect`: `{"device":"Name","type":"Profile"}`.
///
/// Only `type` is read by the server (there is no `deviceType` key in JSON); missing or `null`
/// means the `default` profile. The type only matters when the device gets created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Child device name.
    pub device: String,
    /// Device profile name; `None` omits the key.
    pub device_type: Option<String>,
}

impl Payload for Connect {
    fn encode_into<S: JsonSink + ?Sized>(&self, out: &mut S) {
        let mut o = ObjWriter::open(out);
        o.field("device", &self.device);
        if let Some(t) = &self.device_type {
            o.field("type", t);
        }
        o.close();
    }

    fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut obj = parse_object(bytes, "connect object")?;
        Ok(Self {
            device: req_device(&mut obj)?,
            device_type: opt_str(&mut obj, "type")?,
        })
    }
}

/// `v1/gateway/disconnect` uplink: `{"device":"Name"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// Child device name.
    pub device: String,
}

impl Payload for Disconnect {
    fn encode_into<S: JsonSink + ?Sized>(&self, out: &mut S) {
        let mut o = ObjWriter::open(out);
        o.field("device", &self.device);
        o.close();
    }

    fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut obj = parse_object(bytes, "disconnect object")?;
        Ok(Self {
            device: req_device(&mut obj)?,
        })
    }
}

/// Parses `{ "<device>": <value>, ... }`, keeping the entries `accept` takes (`Ok(Some)`) and
/// skipping those of the wrong JSON type (`Ok(None)`), as the server does. An empty result is
/// the server's "message is empty" error.
fn parse_per_device<T>(
    bytes: &[u8],
    expected: &'static str,
    mut accept: impl FnMut(&str, Value) -> Result<Option<T>, PayloadError>,
) -> Result<BTreeMap<String, T>, PayloadError> {
    let obj = parse_object(bytes, expected)?;
    let mut devices = BTreeMap::new();
    for (device, value) in obj {
        if let Some(item) = accept(&device, value)? {
            if device.is_empty() {
                return Err(PayloadError::EmptyDeviceName);
            }
            devices.insert(device, item);
        }
    }
    if devices.is_empty() {
        return Err(PayloadError::NoDeviceEntries);
    }
    Ok(devices)
}

/// Writes `{ "<device>": <item>, ... }`.
fn write_per_device<S: JsonSink + ?Sized, T>(
    out: &mut S,
    devices: &BTreeMap<String, T>,
    mut item: impl FnMut(&mut S, &T),
) {
    let mut o = ObjWriter::open(out);
    for (device, value) in devices {
        item(o.key(device), value);
    }
    o.close();
}

fn write_entries<S: JsonSink + ?Sized>(out: &mut S, entries: &[TelemetryEntry]) {
    out.put(b"[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.put(b",");
        }
        e.write(out);
    }
    out.put(b"]");
}

/// `v1/gateway/telemetry`: `{"Dev":[{"ts":1,"values":{..}}, {..values..}], "Dev2":[..]}`.
///
/// Parsing follows the server: the top level must be an object; a device whose value is not an
/// array is skipped (if nothing is left: [`PayloadError::NoDeviceEntries`]); each array element
/// must be an object; an element with both `ts` and `values` is timestamped, anything else is
/// plain values with server time (so `{"ts":1,"k":2}` has a value named `ts`); an optional
/// `metadata` object is taken out of the element. A bad element fails the whole message with
/// [`PayloadError::DeviceEntry`] (the server processes the other devices but then closes the
/// connection or answers PUBACK 0x99).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GatewayTelemetry {
    /// Elements per device.
    pub devices: BTreeMap<String, Vec<TelemetryEntry>>,
}

impl Payload for GatewayTelemetry {
    fn encode_into<S: JsonSink + ?Sized>(&self, out: &mut S) {
        write_per_device(out, &self.devices, |out, entries| {
            write_entries(out, entries)
        });
    }

    fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        let devices = parse_per_device(bytes, "telemetry object", |device, value| {
            let Value::Array(items) = value else {
                return Ok(None);
            };
            items
                .into_iter()
                .map(|item| {
                    TelemetryEntry::from_value(item, true).map_err(|e| PayloadError::DeviceEntry {
                        device: device.to_owned(),
                        error: Box::new(e),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        })?;
        Ok(Self { devices })
    }
}

/// Hot path: appends `{"<device>":[{"ts":ts,"values":{..}}]}` (or `{"<device>":[{..}]}` when
/// `ts` is `None`) to `out`, serializing straight from `values`.
pub fn write_gateway_telemetry<S: JsonSink + ?Sized>(
    out: &mut S,
    device: &str,
    ts: Option<i64>,
    values: &Map<String, Value>,
) {
    let mut o = ObjWriter::open(out);
    let out = o.key(device);
    out.put(b"[");
    super::write_entry(out, ts, values, None);
    out.put(b"]");
    o.close();
}

/// Appends `{"<device>":[<entries>]}` to `out` (one device, several elements).
pub fn write_gateway_telemetry_entries<S: JsonSink + ?Sized>(
    out: &mut S,
    device: &str,
    entries: &[TelemetryEntry],
) {
    let mut o = ObjWriter::open(out);
    write_entries(o.key(device), entries);
    o.close();
}

/// `v1/gateway/attributes` uplink: client attributes per device, `{"Dev":{"k":v}}`. Device
/// values that are not objects are skipped by the parser, as by the server.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GatewayAttributes {
    /// Attributes per device.
    pub devices: BTreeMap<String, Map<String, Value>>,
}

impl Payload for GatewayAttributes {
    fn encode_into<S: JsonSink + ?Sized>(&self, out: &mut S) {
        write_per_device(out, &self.devices, |out, attrs| attrs.write_json(out));
    }

    fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        let devices = parse_per_device(bytes, "attributes object", |_, value| match value {
            Value::Object(m) => Ok(Some(m)),
            _ => Ok(None),
        })?;
        Ok(Self { devices })
    }
}

/// Appends one device's client attributes `{"Dev":{..}}` to `out`, serializing straight from
/// `values` (no per-device map is built).
pub fn write_gateway_attributes<S: JsonSink + ?Sized>(
    out: &mut S,
    device: &str,
    values: &Map<String, Value>,
) {
    let mut o = ObjWriter::open(out);
    o.field(device, values);
    o.close();
}

/// Appends one device's claim `{"Dev":{"secretKey":..,"durationMs":..}}` to `out`.
pub fn write_gateway_claim<S: JsonSink + ?Sized>(out: &mut S, device: &str, claim: &Claim) {
    let mut o = ObjWriter::open(out);
    claim.write(o.key(device));
    o.close();
}

/// `v1/gateway/claim`: `{"Dev":{"secretKey":"..","durationMs":..}}`; both fields optional and
/// omitted when `None`. No response message, only a PUBACK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GatewayClaim {
    /// Claim parameters per device.
    pub devices: BTreeMap<String, Claim>,
}

impl Payload for GatewayClaim {
    fn encode_into<S: JsonSink + ?Sized>(&self, out: &mut S) {
        write_per_device(out, &self.devices, |out, claim| claim.write(out));
    }

    fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        let devices = parse_per_device(bytes, "claim object", |device, value| match value {
            Value::Object(m) => {
                Claim::from_map(m)
                    .map(Some)
                    .map_err(|e| PayloadError::DeviceEntry {
                        device: device.to_owned(),
                        error: Box::new(e),
                    })
            }
            _ => Ok(None),
        })?;
        Ok(Self { devices })
    }
}

/// The keys of a gateway attribute request: `"key":"k"` or `"keys":["a","b"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestedKeys {
    /// `"key":"k"` (wins over `keys` if both are present).
    Key(String),
    /// `"keys":[..]`.
    Keys(Vec<String>),
}

impl RequestedKeys {
    /// How many keys were requested; decides `value` vs `values` in the response.
    pub fn count(&self) -> usize {
        match self {
            Self::Key(_) => 1,
            Self::Keys(keys) => keys.len(),
        }
    }
}

/// `v1/gateway/attributes/request`: `{"id":1,"device":"Dev","client":true,"key":"k"}` or with
/// `"keys":[..]`. One scope per request (`client` true = client scope, false = shared); the
/// newer documented `"client":[..],"shared":[..]` form is rejected by the server.
///
/// The server reads `id` as a Java `int`: keep ids below 2^31.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayAttributeRequest {
    /// Request id, echoed in the response.
    pub id: u64,
    /// Child device name.
    pub device: String,
    /// Client scope (`true`) or shared scope (`false`).
    pub client: bool,
    /// Requested keys.
    pub keys: RequestedKeys,
}

impl Payload for GatewayAttributeRequest {
    fn encode_into<S: JsonSink + ?Sized>(&self, out: &mut S) {
        let mut o = ObjWriter::open(out);
        o.field("id", &self.id);
        o.field("device", &self.device);
        o.field("client", &self.client);
        match &self.keys {
            RequestedKeys::Key(k) => o.field("key", k),
            RequestedKeys::Keys(ks) => o.field("keys", ks),
        }
        o.close();
    }

    fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut obj = parse_object(bytes, "attribute request object")?;
        let id = req_u64(&mut obj, "id")?;
        let device = req_device(&mut obj)?;
        let client = match take(&mut obj, "client")? {
            Value::Bool(b) => b,
            _ => {
                return Err(PayloadError::WrongType {
                    field: "client",
                    expected: "boolean",
                })
            }
        };
        let keys = match obj.remove("key") {
            Some(Value::String(k)) => RequestedKeys::Key(k),
            Some(_) => {
                return Err(PayloadError::WrongType {
                    field: "key",
                    expected: "string",
                })
            }
            None => RequestedKeys::Keys(string_array(take(&mut obj, "keys")?, "keys")?),
        };
        Ok(Self {
            id,
            device,
            client,
            keys,
        })
    }
}

/// What a gateway attribute response carries.
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeResult {
    /// `"value":v`: exactly one value found and at most one key requested.
    Value(Value),
    /// `"values":{..}`: several keys requested (even if only one was found) or several found.
    Values(Map<String, Value>),
    /// Neither key: nothing found.
    NotFound,
}

/// `v1/gateway/attributes/response`: `{"id","device","value"}` | `{"id","device","values":{..}}`
/// | `{"id","device"}`. Flat: no client/shared nesting. If both `value` and `values` appear,
/// `value` wins.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayAttributeResponse {
    /// Id of the request.
    pub id: u64,
    /// Child device name.
    pub device: String,
    /// The result.
    pub result: AttributeResult,
}

impl GatewayAttributeResponse {
    /// Server side: the response the server would send for `request` when `found` holds the
    /// attributes it found. Rule (§3.2): nothing found → no value key; `value` iff at most one
    /// key was requested and exactly one was found (so `"keys":["a"]` still gives `value`);
    /// otherwise `values` (so `"keys":["a","missing"]` gives `values` with one entry).
    pub fn for_request(request: &GatewayAttributeRequest, found: Map<String, Value>) -> Self {
        let result = if found.is_empty() {
            AttributeResult::NotFound
        } else if request.keys.count() <= 1 && found.len() == 1 {
            match found.into_iter().next() {
                Some((_, v)) => AttributeResult::Value(v),
                None => AttributeResult::NotFound,
            }
        } else {
            AttributeResult::Values(found)
        };
        Self {
            id: request.id,
            device: request.device.clone(),
            result,
        }
    }
}

impl Payload for GatewayAttributeResponse {
    fn encode_into<S: JsonSink + ?Sized>(&self, out: &mut S) {
        let mut o = ObjWriter::open(out);
        o.field("id", &self.id);
        o.field("device", &self.device);
        match &self.result {
            AttributeResult::Value(v) => o.field("value", v),
            AttributeResult::Values(m) => o.field("values", m),
            AttributeResult::NotFound => {}
        }
        o.close();
    }

    fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut obj = parse_object(bytes, "attribute response object")?;
        let id = req_u64(&mut obj, "id")?;
        let device = req_device(&mut obj)?;
        let result = if let Some(v) = obj.remove("value") {
            AttributeResult::Value(v)
        } else if let Some(v) = obj.remove("values") {
            match v {
                Value::Object(m) => AttributeResult::Values(m),
                _ => {
                    return Err(PayloadError::WrongType {
                        field: "values",
                        expected: "object",
                    })
                }
            }
        } else {
            AttributeResult::NotFound
        };
        Ok(Self { id, device, result })
    }
}

/// `v1/gateway/attributes` downlink: `{"device":"Dev","data":{"k":v,"deleted":["x"]}}`.
/// Delivered whether or not the gateway subscribed (QoS 1 then).
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayAttributeUpdate {
    /// Child device name.
    pub device: String,
    /// Updated values (without `deleted`) and deleted keys.
    pub update: AttributeUpdate,
}

impl Payload for GatewayAttributeUpdate {
    fn encode_into<S: JsonSink + ?Sized>(&self, out: &mut S) {
        let mut o = ObjWriter::open(out);
        o.field("device", &self.device);
        self.update.write(o.key("data"));
        o.close();
    }

    fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut obj = parse_object(bytes, "attribute update object")?;
        let device = req_device(&mut obj)?;
        let data = super::req_object(&mut obj, "data")?;
        Ok(Self {
            device,
            update: AttributeUpdate::from_map(data),
        })
    }
}

/// `v1/gateway/rpc` downlink: `{"device":"Dev","data":{"id":0,"method":"m","params":<any>}}`.
/// Ids start at 0 and are per child device: correlate by (device, id). Missing `params` reads
/// as `null`; `params` is always written.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayRpcRequest {
    /// Child device name.
    pub device: String,
    /// RPC id (per device).
    pub id: u64,
    /// Method name.
    pub method: String,
    /// Parameters, any JSON.
    pub params: Value,
}

impl Payload for GatewayRpcRequest {
    fn encode_into<S: JsonSink + ?Sized>(&self, out: &mut S) {
        let mut o = ObjWriter::open(out);
        o.field("device", &self.device);
        let mut d = ObjWriter::open(o.key("data"));
        d.field("id", &self.id);
        d.field("method", &self.method);
        d.field("params", &self.params);
        d.close();
        o.close();
    }

    fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut obj = parse_object(bytes, "gateway RPC object")?;
        let device = req_device(&mut obj)?;
        let mut data = super::req_object(&mut obj, "data")?;
        Ok(Self {
            device,
            id: req_u64(&mut data, "id")?,
            method: super::req_str(&mut data, "method")?,
            params: data.remove("params").unwrap_or(Value::Null),
        })
    }
}

/// `v1/gateway/rpc` uplink (reply): `{"device":"Dev","id":0,"data":<any>}`, all three required.
/// `data` becomes the RPC result verbatim; there is no separate error form.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayRpcResponse {
    /// Child device name.
    pub device: String,
    /// Id of the RPC being answered.
    pub id: u64,
    /// Result, any JSON (`null` included).
    pub data: Value,
}

impl Payload for GatewayRpcResponse {
    fn encode_into<S: JsonSink + ?Sized>(&self, out: &mut S) {
        let mut o = ObjWriter::open(out);
        o.field("device", &self.device);
        o.field("id", &self.id);
        o.field("data", &self.data);
        o.close();
    }

    fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut obj = parse_object(bytes, "gateway RPC reply object")?;
        Ok(Self {
            device: req_device(&mut obj)?,
            id: req_u64(&mut obj, "id")?,
            data: take(&mut obj, "data")?,
        })
    }
}

/// `v1/gateway/disconnect` downlink (MQTT 5 only): `{"device":"Dev","reason":150}`. The server
/// dropped the child session after a forwarding failure; usually the whole connection is being
/// closed at the same time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisconnectNotice {
    /// Child device name.
    pub device: String,
    /// MQTT 5 reason code.
    pub reason: u8,
}

impl DisconnectNotice {
    /// Reason 150 MESSAGE_RATE_TOO_HIGH: the child hit a rate limit.
    pub const REASON_RATE_LIMIT: u8 = 150;
    /// Reason 128 UNSPECIFIED_ERROR: another forwarding error.
    pub const REASON_UNSPECIFIED: u8 = 128;
    /// Reason 129 MALFORMED_PACKET (defined by the server for QoS 0, unreachable in practice).
    pub const REASON_MALFORMED: u8 = 129;

    /// True when the notice reports a rate limit.
    pub fn is_rate_limit(&self) -> bool {
        self.reason == Self::REASON_RATE_LIMIT
    }
}

impl Payload for DisconnectNotice {
    fn encode_into<S: JsonSink + ?Sized>(&self, out: &mut S) {
        let mut o = ObjWriter::open(out);
        o.field("device", &self.device);
        o.field("reason", &self.reason);
        o.close();
    }

    fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut obj = parse_object(bytes, "disconnect notice object")?;
        let device = req_device(&mut obj)?;
        let reason = as_u64(&take(&mut obj, "reason")?, "reason")?;
        let reason = u8::try_from(reason).map_err(|_| PayloadError::WrongType {
            field: "reason",
            expected: "reason code 0..=255",
        })?;
        Ok(Self { device, reason })
    }
}

/// Notifications the server sends to the gateway *itself* as a persistent one-way RPC on its
/// own device RPC topic (`v1/devices/me/rpc/request/{id}`) when a child it last connected is
/// deleted or renamed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayNotification {
    /// `{"method":"gateway_device_deleted","params":"Name"}`.
    DeviceDeleted {
        /// Name of the deleted device.
        device: String,
    },
    /// `{"method":"gateway_device_renamed","params":{"Old":"New"}}`.
    DeviceRenamed {
        /// Previous name.
        old_name: String,
        /// New name.
        new_name: String,
    },
}

impl GatewayNotification {
    /// Method name of the delete notification.
    pub const DEVICE_DELETED: &'static str = "gateway_device_deleted";
    /// Method name of the rename notification.
    pub const DEVICE_RENAMED: &'static str = "gateway_device_renamed";

    /// Recognises a notification in a parsed device RPC; `None` for any other RPC (or one of
    /// these methods with unexpected params, which the caller can treat as an ordinary RPC).
    pub fn from_rpc(rpc: &RpcRequest) -> Option<Self> {
        match (rpc.method.as_str(), &rpc.params) {
            (Self::DEVICE_DELETED, Value::String(device)) => Some(Self::DeviceDeleted {
                device: device.clone(),
            }),
            (Self::DEVICE_RENAMED, Value::Object(map)) if map.len() == 1 => {
                let (old, new) = map.iter().next()?;
                Some(Self::DeviceRenamed {
                    old_name: old.clone(),
                    new_name: new.as_str()?.to_owned(),
                })
            }
            _ => None,
        }
    }

    /// Server side: the RPC body carrying this notification.
    pub fn to_rpc(&self) -> RpcRequest {
        match self {
            Self::DeviceDeleted { device } => {
                RpcRequest::new(Self::DEVICE_DELETED, Value::String(device.clone()))
            }
            Self::DeviceRenamed { old_name, new_name } => {
                let mut m = Map::new();
                m.insert(old_name.clone(), Value::String(new_name.clone()));
                RpcRequest::new(Self::DEVICE_RENAMED, Value::Object(m))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_device_writers_match_the_map_forms() {
        let mut values = Map::new();
        values.insert("k".into(), Value::from(1));
        let mut out = Vec::new();
        write_gateway_attributes(&mut out, "D \"1\"", &values);
        let mut devices = BTreeMap::new();
        devices.insert("D \"1\"".to_owned(), values);
        assert_eq!(out, GatewayAttributes { devices }.to_vec());
        let claim = Claim {
            secret_key: Some("s".into()),
            duration_ms: None,
        };
        let mut out = Vec::new();
        write_gateway_claim(&mut out, "D", &claim);
        assert_eq!(out, br#"{"D":{"secretKey":"s"}}"#);
    }
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn connect_and_disconnect() {
        let c = Connect {
            device: "Name".into(),
            device_type: Some("Profile".into()),
        };
        assert_eq!(c.to_vec(), br#"{"device":"Name","type":"Profile"}"#);
        let c2 = Connect {
            device: "Name".into(),
            device_type: None,
        };
        assert_eq!(c2.to_vec(), br#"{"device":"Name"}"#);
        assert_eq!(Connect::parse(&c.to_vec()), Ok(c));
        assert_eq!(Connect::parse(br#"{"device":"Name","type":null}"#), Ok(c2));
        // `deviceType` is not read.
        assert_eq!(
            Connect::parse(br#"{"device":"N","deviceType":"X"}"#).map(|c| c.device_type),
            Ok(None)
        );
        assert_eq!(
            Connect::parse(br#"{"device":""}"#),
            Err(PayloadError::EmptyDeviceName)
        );
        assert_eq!(
            Connect::parse(br#"{"type":"x"}"#),
            Err(PayloadError::MissingField("device"))
        );
        assert_eq!(
            Connect::parse(br#"{"device":1}"#),
            Err(PayloadError::WrongType {
                field: "device",
                expected: "string"
            })
        );
        let d = Disconnect {
            device: "Name".into(),
        };
        assert_eq!(d.to_vec(), br#"{"device":"Name"}"#);
        assert_eq!(Disconnect::parse(br#"{"device":"Name"}"#), Ok(d));
        for bad in [&b"[]"[..], b"42", b"\"x\"", b"", b"null"] {
            assert!(
                matches!(Disconnect::parse(bad), Err(PayloadError::WrongShape { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Disconnect::parse(b"{\"device\""),
            Err(PayloadError::InvalidJson { .. })
        ));
    }

    #[test]
    fn unicode_device_names_survive() {
        let name = "Dev \"q\" \\ / + # \u{1F600} \u{0007}";
        let c = Connect {
            device: name.into(),
            device_type: None,
        };
        assert_eq!(
            Connect::parse(&c.to_vec()).map(|c| c.device),
            Ok(name.into())
        );
    }

    #[test]
    fn telemetry_encoders() {
        let values = map(json!({"a":1,"b":"x"}));
        let mut out = Vec::new();
        write_gateway_telemetry(&mut out, "Dev", Some(1), &values);
        assert_eq!(out, br#"{"Dev":[{"ts":1,"values":{"a":1,"b":"x"}}]}"#);
        out.clear();
        write_gateway_telemetry(&mut out, "Dev", None, &values);
        assert_eq!(out, br#"{"Dev":[{"a":1,"b":"x"}]}"#);
        out.clear();
        write_gateway_telemetry_entries(
            &mut out,
            "D",
            &[
                TelemetryEntry::at(5, map(json!({"k":true}))),
                TelemetryEntry::now(Map::new()),
            ],
        );
        assert_eq!(out, br#"{"D":[{"ts":5,"values":{"k":true}},{}]}"#);

        let mut t = GatewayTelemetry::default();
        t.devices.insert(
            "Device A".into(),
            vec![TelemetryEntry {
                ts: Some(10000),
                values: map(json!({"t":1.5})),
                metadata: Some(super::super::TelemetryMetadata {
                    connector: "mqtt".into(),
                    received_ts: 1,
                    published_ts: 2,
                }),
            }],
        );
        t.devices.insert(
            "Device B".into(),
            vec![TelemetryEntry::now(map(json!({"k":null})))],
        );
        let bytes = t.to_vec();
        assert_eq!(
            bytes,
            br#"{"Device A":[{"ts":10000,"values":{"t":1.5},"metadata":{"connector":"mqtt","receivedTs":1,"publishedTs":2}}],"Device B":[{"k":null}]}"#
        );
        assert_eq!(GatewayTelemetry::parse(&bytes), Ok(t));
    }

    #[test]
    fn telemetry_parser_follows_server_rules() {
        let t = GatewayTelemetry::parse(
            br#"{"A":[{"ts":10000,"values":{"x":1}},{"ts":20000,"values":{"x":2}}],"B":[{"k":"v"}],"C":{"k":1},"D":[{"ts":5,"y":1}]}"#,
        );
        let Ok(t) = t else {
            panic!("parse failed: {t:?}");
        };
        assert_eq!(t.devices.len(), 3, "C (not an array) is skipped");
        assert_eq!(
            t.devices["A"],
            vec![
                TelemetryEntry::at(10000, map(json!({"x":1}))),
                TelemetryEntry::at(20000, map(json!({"x":2})))
            ]
        );
        assert_eq!(
            t.devices["B"],
            vec![TelemetryEntry::now(map(json!({"k":"v"})))]
        );
        // ts without values: ts is just another key.
        assert_eq!(
            t.devices["D"],
            vec![TelemetryEntry::now(map(json!({"ts":5,"y":1})))]
        );
        assert_eq!(
            GatewayTelemetry::parse(br#"{"Dev":{"k":1}}"#),
            Err(PayloadError::NoDeviceEntries)
        );
        assert_eq!(
            GatewayTelemetry::parse(b"{}"),
            Err(PayloadError::NoDeviceEntries)
        );
        assert_eq!(
            GatewayTelemetry::parse(br#"{"":[{"k":1}]}"#),
            Err(PayloadError::EmptyDeviceName)
        );
        assert_eq!(
            GatewayTelemetry::parse(br#"{"D":[1]}"#),
            Err(PayloadError::DeviceEntry {
                device: "D".into(),
                error: Box::new(PayloadError::WrongShape {
                    expected: "telemetry element object"
                })
            })
        );
        assert_eq!(
            GatewayTelemetry::parse(br#"{"D":[{"ts":"x","values":{}}]}"#),
            Err(PayloadError::DeviceEntry {
                device: "D".into(),
                error: Box::new(PayloadError::WrongType {
                    field: "ts",
                    expected: "integer"
                })
            })
        );
        assert_eq!(
            GatewayTelemetry::parse(br#"{"D":[{"k":1,"metadata":{"connector":"c"}}]}"#),
            Err(PayloadError::DeviceEntry {
                device: "D".into(),
                error: Box::new(PayloadError::MissingField("receivedTs"))
            })
        );
        assert!(matches!(
            GatewayTelemetry::parse(b"[]"),
            Err(PayloadError::WrongShape { .. })
        ));
    }

    #[test]
    fn attributes_and_claim() {
        let mut a = GatewayAttributes::default();
        a.devices.insert("Dev".into(), map(json!({"k":"v"})));
        assert_eq!(a.to_vec(), br#"{"Dev":{"k":"v"}}"#);
        assert_eq!(GatewayAttributes::parse(&a.to_vec()), Ok(a));
        assert_eq!(
            GatewayAttributes::parse(br#"{"Dev":[1]}"#),
            Err(PayloadError::NoDeviceEntries)
        );

        let mut c = GatewayClaim::default();
        c.devices.insert(
            "Dev".into(),
            Claim {
                secret_key: Some("value".into()),
                duration_ms: Some(60000),
            },
        );
        c.devices.insert("E".into(), Claim::default());
        assert_eq!(
            c.to_vec(),
            br#"{"Dev":{"secretKey":"value","durationMs":60000},"E":{}}"#
        );
        assert_eq!(GatewayClaim::parse(&c.to_vec()), Ok(c));
        assert_eq!(
            GatewayClaim::parse(br#"{"Dev":{"durationMs":"x"}}"#),
            Err(PayloadError::DeviceEntry {
                device: "Dev".into(),
                error: Box::new(PayloadError::WrongType {
                    field: "durationMs",
                    expected: "integer"
                })
            })
        );
    }

    #[test]
    fn attribute_request() {
        let r = GatewayAttributeRequest {
            id: 1,
            device: "Dev".into(),
            client: true,
            keys: RequestedKeys::Key("k".into()),
        };
        assert_eq!(
            r.to_vec(),
            br#"{"id":1,"device":"Dev","client":true,"key":"k"}"#
        );
        assert_eq!(GatewayAttributeRequest::parse(&r.to_vec()), Ok(r));
        let r2 = GatewayAttributeRequest {
            id: 2,
            device: "Dev".into(),
            client: false,
            keys: RequestedKeys::Keys(vec!["a".into(), "b".into()]),
        };
        assert_eq!(
            r2.to_vec(),
            br#"{"id":2,"device":"Dev","client":false,"keys":["a","b"]}"#
        );
        assert_eq!(GatewayAttributeRequest::parse(&r2.to_vec()), Ok(r2));
        // `key` wins over `keys`.
        assert_eq!(
            GatewayAttributeRequest::parse(
                br#"{"id":1,"device":"D","client":true,"key":"k","keys":["x"]}"#
            )
            .map(|r| r.keys),
            Ok(RequestedKeys::Key("k".into()))
        );
        // The newer documented shape is rejected, as by the server.
        assert_eq!(
            GatewayAttributeRequest::parse(
                br#"{"id":1,"device":"D","client":["k1"],"shared":["k2"]}"#
            ),
            Err(PayloadError::WrongType {
                field: "client",
                expected: "boolean"
            })
        );
        assert_eq!(
            GatewayAttributeRequest::parse(br#"{"id":"1","device":"D","client":true,"key":"k"}"#),
            Err(PayloadError::WrongType {
                field: "id",
                expected: "unsigned integer"
            })
        );
        assert_eq!(
            GatewayAttributeRequest::parse(br#"{"id":1.5,"device":"D","client":true,"key":"k"}"#),
            Err(PayloadError::WrongType {
                field: "id",
                expected: "unsigned integer"
            })
        );
        assert_eq!(
            GatewayAttributeRequest::parse(br#"{"id":1,"device":"D","client":true}"#),
            Err(PayloadError::MissingField("keys"))
        );
        assert_eq!(
            GatewayAttributeRequest::parse(br#"{"id":1,"device":"D","key":"k"}"#),
            Err(PayloadError::MissingField("client"))
        );
        assert_eq!(
            GatewayAttributeRequest::parse(br#"{"id":1,"device":"D","client":true,"keys":[1]}"#),
            Err(PayloadError::WrongType {
                field: "keys",
                expected: "array of strings"
            })
        );
    }

    #[test]
    fn attribute_response_forms_and_server_rule() {
        let cases: [(&[u8], AttributeResult); 3] = [
            (
                br#"{"id":1,"device":"Name","value":5}"#,
                AttributeResult::Value(json!(5)),
            ),
            (
                br#"{"id":1,"device":"Name","values":{"k1":1,"k2":"x"}}"#,
                AttributeResult::Values(map(json!({"k1":1,"k2":"x"}))),
            ),
            (br#"{"id":1,"device":"Name"}"#, AttributeResult::NotFound),
        ];
        for (bytes, result) in cases {
            let r = GatewayAttributeResponse {
                id: 1,
                device: "Name".into(),
                result,
            };
            assert_eq!(GatewayAttributeResponse::parse(bytes), Ok(r.clone()));
            assert_eq!(r.to_vec(), bytes);
        }
        assert_eq!(
            GatewayAttributeResponse::parse(br#"{"id":1,"device":"N","values":3}"#),
            Err(PayloadError::WrongType {
                field: "values",
                expected: "object"
            })
        );

        let req = |keys| GatewayAttributeRequest {
            id: 7,
            device: "D".into(),
            client: true,
            keys,
        };
        let single = req(RequestedKeys::Key("a".into()));
        let one_elem = req(RequestedKeys::Keys(vec!["a".into()]));
        let two = req(RequestedKeys::Keys(vec!["a".into(), "missing".into()]));
        let found_a = map(json!({"a":1}));
        assert_eq!(
            GatewayAttributeResponse::for_request(&single, found_a.clone()).to_vec(),
            br#"{"id":7,"device":"D","value":1}"#
        );
        assert_eq!(
            GatewayAttributeResponse::for_request(&one_elem, found_a.clone()).result,
            AttributeResult::Value(json!(1))
        );
        assert_eq!(
            GatewayAttributeResponse::for_request(&two, found_a.clone()).to_vec(),
            br#"{"id":7,"device":"D","values":{"a":1}}"#
        );
        assert_eq!(
            GatewayAttributeResponse::for_request(&two, Map::new()).to_vec(),
            br#"{"id":7,"device":"D"}"#
        );
        assert_eq!(
            GatewayAttributeResponse::for_request(&single, Map::new()).result,
            AttributeResult::NotFound
        );
    }

    #[test]
    fn attribute_update() {
        let fixture =
            br#"{"device":"Name","data":{"key1":"v1","key2":{"j":[1]},"deleted":["key3"]}}"#;
        let u = GatewayAttributeUpdate {
            device: "Name".into(),
            update: AttributeUpdate {
                values: map(json!({"key1":"v1","key2":{"j":[1]}})),
                deleted: vec!["key3".into()],
            },
        };
        assert_eq!(GatewayAttributeUpdate::parse(fixture), Ok(u.clone()));
        assert_eq!(u.to_vec(), fixture);
        assert_eq!(
            GatewayAttributeUpdate::parse(
                br#"{"device":"Name","data":{"deleted":["sharedJson"]}}"#
            ),
            Ok(GatewayAttributeUpdate {
                device: "Name".into(),
                update: AttributeUpdate {
                    values: Map::new(),
                    deleted: vec!["sharedJson".into()]
                }
            })
        );
        assert_eq!(
            GatewayAttributeUpdate::parse(br#"{"device":"Name"}"#),
            Err(PayloadError::MissingField("data"))
        );
        assert_eq!(
            GatewayAttributeUpdate::parse(br#"{"device":"Name","data":[]}"#),
            Err(PayloadError::WrongType {
                field: "data",
                expected: "object"
            })
        );
    }

    #[test]
    fn rpc_request_and_reply() {
        let fixture =
            br#"{"device":"Name","data":{"id":0,"method":"toggle_gpio","params":{"pin":1}}}"#;
        let r = GatewayRpcRequest {
            device: "Name".into(),
            id: 0,
            method: "toggle_gpio".into(),
            params: json!({"pin":1}),
        };
        assert_eq!(GatewayRpcRequest::parse(fixture), Ok(r.clone()));
        assert_eq!(r.to_vec(), fixture);
        assert_eq!(
            GatewayRpcRequest::parse(br#"{"device":"D","data":{"id":3,"method":"m"}}"#)
                .map(|r| r.params),
            Ok(Value::Null)
        );
        assert_eq!(
            GatewayRpcRequest::parse(br#"{"device":"D","data":{"id":"x","method":"m"}}"#),
            Err(PayloadError::WrongType {
                field: "id",
                expected: "unsigned integer"
            })
        );
        assert_eq!(
            GatewayRpcRequest::parse(br#"{"device":"D","data":{"id":-1,"method":"m"}}"#),
            Err(PayloadError::WrongType {
                field: "id",
                expected: "unsigned integer"
            })
        );
        assert_eq!(
            GatewayRpcRequest::parse(br#"{"device":"D","data":{"id":1}}"#),
            Err(PayloadError::MissingField("method"))
        );

        let reply = GatewayRpcResponse {
            device: "Dev".into(),
            id: 0,
            data: json!({"success":true}),
        };
        assert_eq!(
            reply.to_vec(),
            br#"{"device":"Dev","id":0,"data":{"success":true}}"#
        );
        assert_eq!(GatewayRpcResponse::parse(&reply.to_vec()), Ok(reply));
        assert_eq!(
            GatewayRpcResponse::parse(br#"{"device":"Dev","id":0,"data":null}"#).map(|r| r.data),
            Ok(Value::Null)
        );
        assert_eq!(
            GatewayRpcResponse::parse(br#"{"device":"Dev","id":0}"#),
            Err(PayloadError::MissingField("data"))
        );
    }

    #[test]
    fn disconnect_notice() {
        let n = DisconnectNotice {
            device: "Dev".into(),
            reason: 150,
        };
        assert_eq!(n.to_vec(), br#"{"device":"Dev","reason":150}"#);
        assert_eq!(
            DisconnectNotice::parse(br#"{"device":"Dev","reason":150}"#),
            Ok(n.clone())
        );
        assert!(n.is_rate_limit());
        assert_eq!(
            DisconnectNotice::parse(br#"{"device":"Dev","reason":300}"#),
            Err(PayloadError::WrongType {
                field: "reason",
                expected: "reason code 0..=255"
            })
        );
        assert_eq!(
            DisconnectNotice::parse(br#"{"device":"Dev"}"#),
            Err(PayloadError::MissingField("reason"))
        );
    }

    #[test]
    fn gateway_notifications() {
        let del = RpcRequest::parse(br#"{"method":"gateway_device_deleted","params":"Name"}"#);
        let Ok(del) = del else {
            panic!("{del:?}");
        };
        let n = GatewayNotification::from_rpc(&del);
        assert_eq!(
            n,
            Some(GatewayNotification::DeviceDeleted {
                device: "Name".into()
            })
        );
        assert_eq!(
            n.map(|n| n.to_rpc().to_vec()),
            Some(br#"{"method":"gateway_device_deleted","params":"Name"}"#.to_vec())
        );
        let ren =
            RpcRequest::parse(br#"{"method":"gateway_device_renamed","params":{"Old":"New"}}"#);
        let Ok(ren) = ren else {
            panic!("{ren:?}");
        };
        let n = GatewayNotification::from_rpc(&ren);
        assert_eq!(
            n,
            Some(GatewayNotification::DeviceRenamed {
                old_name: "Old".into(),
                new_name: "New".into()
            })
        );
        assert_eq!(n.map(|n| n.to_rpc()), Some(ren));
        for other in [
            RpcRequest::new("gateway_device_deleted", json!(1)),
            RpcRequest::new("gateway_device_renamed", json!({"a":"b","c":"d"})),
            RpcRequest::new("gateway_device_renamed", json!({"a":1})),
            RpcRequest::new("toggle", json!("Name")),
        ] {
            assert_eq!(GatewayNotification::from_rpc(&other), None);
        }
    }
}
