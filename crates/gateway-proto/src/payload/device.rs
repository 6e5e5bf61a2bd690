//! Device API payloads (`v1/devices/me/...`, the JSON forms of the v2 topics, provisioning, and
//! the `getSessionLimits` RPC answer).

use serde_json::{Map, Value};

use super::{
    into_object, opt_bool, opt_str, parse_object, parse_value, req_str, req_u64, take,
    AttributeUpdate, Claim, JsonSink, ObjWriter, Payload, PayloadError, TelemetryEntry, WriteJson,
};

/// Device telemetry: `{k:v}`, `{"ts":ms,"values":{..}}`, or an array of those. One entry is
/// written as a bare object, any other count as an array. `metadata` is not interpreted on
/// this API (a `metadata` key is an ordinary value here).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceTelemetry {
    /// The elements.
    pub entries: Vec<TelemetryEntry>,
}

impl Payload for DeviceTelemetry {
    fn encode_into<S: JsonSink + ?Sized>(&self, out: &mut S) {
        match self.entries.as_slice() {
            [one] => one.write(out),
            entries => {
                out.put(b"[");
                for (i, e) in entries.iter().enumerate() {
                    if i > 0 {
                        out.put(b",");
                    }
                    e.write(out);
                }
                out.put(b"]");
            }
        }
    }

    fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(PayloadError::WrongShape {
                expected: "telemetry object or array",
            });
        }
        let entries = match parse_value(bytes)? {
            v @ Value::Object(_) => vec![TelemetryEntry::from_value(v, false)?],
            Value::Array(items) => items
                .into_iter()
                .map(|v| TelemetryEntry::from_value(v, false))
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(PayloadError::WrongShape {
                    expected: "telemetry object or array",
                })
            }
        };
        Ok(Self { entries })
    }
}

/// Hot path: appends one device telemetry element (`{"ts":..,"values":{..}}` or `{..}`) to
/// `out`, serializing straight from `values`.
pub fn write_device_telemetry<S: JsonSink + ?Sized>(
    out: &mut S,
    ts: Option<i64>,
    values: &Map<String, Value>,
) {
    super::write_entry(out, ts, values, None);
}

/// Device client attributes: `{k:v,..}`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClientAttributes {
    /// The attributes.
    pub values: Map<String, Value>,
}

impl Payload for ClientAttributes {
    fn encode_into<S: JsonSink + ?Sized>(&self, out: &mut S) {
        self.values.write_json(out);
    }

    fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        Ok(Self {
            values: parse_object(bytes, "attributes object")?,
        })
    }
}

/// Device claim (`v1/devices/me/claim`). An empty payload is valid and means defaults.
impl Payload for Claim {
    fn encode_into<S: JsonSink + ?Sized>(&self, out: &mut S) {
        self.write(out);
    }

    fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        Self::from_map(parse_object(bytes, "claim object")?)
    }
}

/// Shared attribute update pushed to a device on its attributes topic:
/// `{"k":v,..,"deleted":["x"]}`.
impl Payload for AttributeUpdate {
    fn encode_into<S: JsonSink + ?Sized>(&self, out: &mut S) {
        self.write(out);
    }

    fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        Ok(Self::from_map(parse_object(
            bytes,
            "attribute update object",
        )?))
    }
}

/// Device attribute request: `{"clientKeys":"a,b","sharedKeys":"c"}`. The server wants
/// comma-separated strings, not arrays (a multi-element array fails), so keys must be non-empty
/// and comma-free; [`DeviceAttributeRequest::new`] enforces that. An empty list omits its key;
/// `{}` asks for all client and all shared attributes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceAttributeRequest {
    client_keys: Vec<String>,
    shared_keys: Vec<String>,
}

fn check_keys(keys: &[String]) -> Result<(), PayloadError> {
    for key in keys {
        if key.is_empty() {
            return Err(PayloadError::InvalidKey {
                key: key.clone(),
                reason: "empty key",
            });
        }
        if key.contains(',') {
            return Err(PayloadError::InvalidKey {
                key: key.clone(),
                reason: "contains a comma",
            });
        }
    }
    Ok(())
}

fn split_keys(value: Value, field: &'static str) -> Result<Vec<String>, PayloadError> {
    let joined = match value {
        Value::String(s) => s,
        // The server's `getAsString` also accepts a one-element array.
        Value::Array(mut items) if items.len() == 1 => match items.pop() {
            Some(Value::String(s)) => s,
            _ => {
                return Err(PayloadError::WrongType {
                    field,
                    expected: "comma-separated string",
                })
            }
        },
        _ => {
            return Err(PayloadError::WrongType {
                field,
                expected: "comma-separated string",
            })
        }
    };
    Ok(joined
        .split(',')
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect())
}

impl DeviceAttributeRequest {
    /// A request for the given client and shared keys. Errors with
    /// [`PayloadError::InvalidKey`] on an empty key or a key containing a comma.
    pub fn new(client_keys: Vec<String>, shared_keys: Vec<String>) -> Result<Self, PayloadError> {
        check_keys(&client_keys)?;
        check_keys(&shared_keys)?;
        Ok(Self {
            client_keys,
            shared_keys,
        })
    }

    /// A request for all client and all shared attributes (`{}`).
    pub fn all() -> Self {
        Self::default()
    }

    /// Requested client-scope keys.
    pub fn client_keys(&self) -> &[String] {
        &self.client_keys
    }

    /// Requested shared-scope keys.
    pub fn shared_keys(&self) -> &[String] {
        &self.shared_keys
    }
}

impl Payload for DeviceAttributeRequest {
    fn encode_into<S: JsonSink + ?Sized>(&self, out: &mut S) {
        let mut o = ObjWriter::open(out);
        if !self.client_keys.is_empty() {
            o.field("clientKeys", &self.client_keys.join(","));
        }
        if !self.shared_keys.is_empty() {
            o.field("sharedKeys", &self.shared_keys.join(","));
        }
        o.close();
    }

    fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut obj = parse_object(bytes, "attribute request object")?;
        let mut keys = |field| {
            obj.remove(field)
                .map(|v| split_keys(v, field))
                .transpose()
                .map(Option::unwrap_or_default)
        };
        Ok(Self {
            client_keys: keys("clientKeys")?,
            shared_keys: keys("sharedKeys")?,
        })
    }
}

/// Device attribute response: `{"client":{..},"shared":{..}}`, each section omitted when empty
/// (`{}` when nothing was found).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceAttributeResponse {
    /// Client-scope attributes.
    pub client: Map<String, Value>,
    /// Shared-scope attributes.
    pub shared: Map<String, Value>,
}

impl Payload for DeviceAttributeResponse {
    fn encode_into<S: JsonSink + ?Sized>(&self, out: &mut S) {
        let mut o = ObjWriter::open(out);
        if !self.client.is_empty() {
            o.field("client", &self.client);
        }
        if !self.shared.is_empty() {
            o.field("shared", &self.shared);
        }
        o.close();
    }

    fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut obj = parse_object(bytes, "attribute response object")?;
        let mut section = |field| match obj.remove(field) {
            None => Ok(Map::new()),
            Some(Value::Object(m)) => Ok(m),
            Some(_) => Err(PayloadError::WrongType {
                field,
                expected: "object",
            }),
        };
        Ok(Self {
            client: section("client")?,
            shared: section("shared")?,
        })
    }
}

/// The server's reply to a client-side RPC: the rule-engine result, or `{"error":".."}`
/// (`{"error":"timeout"}` after the server's 60 s client-RPC timeout).
///
/// An object whose only key is a string `error` is read as the error form, so a successful
/// result of exactly that shape is indistinguishable from an error.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientRpcResponse {
    /// A result.
    Ok(Value),
    /// `{"error":".."}`.
    Error(String),
}

impl ClientRpcResponse {
    /// The error text ThingsBoard sends when the rule engine did not answer in time.
    pub const TIMEOUT: &'static str = "timeout";

    /// True for `{"error":"timeout"}`.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Error(e) if e == Self::TIMEOUT)
    }
}

impl Payload for ClientRpcResponse {
    fn encode_into<S: JsonSink + ?Sized>(&self, out: &mut S) {
        match self {
            Self::Ok(v) => v.write_json(out),
            Self::Error(e) => {
                let mut o = ObjWriter::open(out);
                o.field("error", e);
                o.close();
            }
        }
    }

    fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        let value = parse_value(bytes)?;
        if let Value::Object(m) = &value {
            if m.len() == 1 {
                if let Some(Value::String(e)) = m.get("error") {
                    return Ok(Self::Error(e.clone()));
                }
            }
        }
        Ok(Self::Ok(value))
    }
}

/// One window of a rate limit: at most `capacity` units per `window_secs` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimitWindow {
    /// Units allowed per window.
    pub capacity: u64,
    /// Window length in seconds.
    pub window_secs: u64,
}

impl RateLimitWindow {
    /// A `0:0`-style window, which clients treat as "no limit".
    pub fn is_unlimited(&self) -> bool {
        self.capacity == 0 || self.window_secs == 0
    }
}

/// Parses a ThingsBoard rate-limit string `"cap:secs,cap:secs"` (`;` is accepted as a separator
/// too; blanks around entries and empty entries are ignored, so `""` gives no windows).
pub fn parse_rate_limits(s: &str) -> Result<Vec<RateLimitWindow>, PayloadError> {
    s.split([',', ';'])
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let bad = || PayloadError::InvalidRateLimit(entry.to_owned());
            let (cap, secs) = entry.split_once(':').ok_or_else(bad)?;
            let num = |t: &str| {
                let t = t.trim();
                if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                t.parse::<u64>().map_err(|_| bad())
            };
            Ok(RateLimitWindow {
                capacity: num(cap)?,
                window_secs: num(secs)?,
            })
        })
        .collect()
}

/// The three rate-limit strings of a `getSessionLimits` answer (absent or `null` → `""`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RateLimits {
    /// Limit on non-telemetry messages.
    pub messages: String,
    /// Limit on telemetry (and attribute) messages.
    pub telemetry_messages: String,
    /// Limit on telemetry data points.
    pub telemetry_data_points: String,
}

impl RateLimits {
    /// Parsed `messages` windows.
    pub fn messages_windows(&self) -> Result<Vec<RateLimitWindow>, PayloadError> {
        parse_rate_limits(&self.messages)
    }

    /// Parsed `telemetryMessages` windows.
    pub fn telemetry_messages_windows(&self) -> Result<Vec<RateLimitWindow>, PayloadError> {
        parse_rate_limits(&self.telemetry_messages)
    }

    /// Parsed `telemetryDataPoints` windows.
    pub fn telemetry_data_points_windows(&self) -> Result<Vec<RateLimitWindow>, PayloadError> {
        parse_rate_limits(&self.telemetry_data_points)
    }

    fn write<S: JsonSink + ?Sized>(&self, out: &mut S) {
        let mut o = ObjWriter::open(out);
        o.field("messages", &self.messages);
        o.field("telemetryMessages", &self.telemetry_messages);
        o.field("telemetryDataPoints", &self.telemetry_data_points);
        o.close();
    }

    fn from_value(value: Value, field: &'static str) -> Result<Self, PayloadError> {
        let mut obj = match value {
            Value::Object(m) => m,
            _ => {
                return Err(PayloadError::WrongType {
                    field,
                    expected: "object",
                })
            }
        };
        let mut s = |f| opt_str(&mut obj, f).map(Option::unwrap_or_default);
        Ok(Self {
            messages: s("messages")?,
            telemetry_messages: s("telemetryMessages")?,
            telemetry_data_points: s("telemetryDataPoints")?,
        })
    }
}

/// Answer to the `getSessionLimits` client RPC (v1 topic only; the transport answers it itself):
/// `{"maxPayloadSize":65536,"maxInflightMessages":100,"rateLimits":{..},"gatewayRateLimits":{..}}`.
/// For a gateway, `rateLimits` are its own ("gateway device") limits and `gatewayRateLimits`
/// the aggregate limits for all child traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLimits {
    /// Largest accepted MQTT packet (remaining length), bytes.
    pub max_payload_size: u64,
    /// Server's in-flight message limit.
    pub max_inflight_messages: u64,
    /// Limits of this session's own messages.
    pub rate_limits: RateLimits,
    /// Aggregate child-device limits (gateway sessions only).
    pub gateway_rate_limits: Option<RateLimits>,
}

impl SessionLimits {
    /// The RPC method name.
    pub const METHOD: &'static str = "getSessionLimits";

    /// Reads the limits from an already parsed RPC result (e.g. from
    /// [`ClientRpcResponse::Ok`]).
    pub fn from_value(value: Value) -> Result<Self, PayloadError> {
        let mut obj = into_object(value, "session limits object")?;
        let gateway_rate_limits = match obj.remove("gatewayRateLimits") {
            None | Some(Value::Null) => None,
            Some(v) => Some(RateLimits::from_value(v, "gatewayRateLimits")?),
        };
        Ok(Self {
            max_payload_size: req_u64(&mut obj, "maxPayloadSize")?,
            max_inflight_messages: req_u64(&mut obj, "maxInflightMessages")?,
            rate_limits: RateLimits::from_value(take(&mut obj, "rateLimits")?, "rateLimits")?,
            gateway_rate_limits,
        })
    }
}

impl Payload for SessionLimits {
    fn encode_into<S: JsonSink + ?Sized>(&self, out: &mut S) {
        let mut o = ObjWriter::open(out);
        o.field("maxPayloadSize", &self.max_payload_size);
        o.field("maxInflightMessages", &self.max_inflight_messages);
        self.rate_limits.write(o.key("rateLimits"));
        if let Some(g) = &self.gateway_rate_limits {
            g.write(o.key("gatewayRateLimits"));
        }
        o.close();
    }

    fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        Self::from_value(parse_value(bytes)?)
    }
}

/// Credentials type for provisioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialsType {
    /// `ACCESS_TOKEN` (server default).
    AccessToken,
    /// `MQTT_BASIC`.
    MqttBasic,
    /// `X509_CERTIFICATE`.
    X509Certificate,
}

impl CredentialsType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AccessToken => "ACCESS_TOKEN",
            Self::MqttBasic => "MQTT_BASIC",
            Self::X509Certificate => "X509_CERTIFICATE",
        }
    }

    fn parse_field(s: String, field: &'static str) -> Result<Self, PayloadError> {
        match s.as_str() {
            "ACCESS_TOKEN" => Ok(Self::AccessToken),
            "MQTT_BASIC" => Ok(Self::MqttBasic),
            "X509_CERTIFICATE" => Ok(Self::X509Certificate),
            _ => Err(PayloadError::UnknownValue { field, value: s }),
        }
    }
}

/// Provisioning request on `/provision/request` (in a session whose username or client id is
/// `provision`). Key and secret are required; everything else is optional and omitted when
/// `None`. The protobuf form (`ProvisionDeviceRequestMsg`) is
/// [`to_protobuf`](Self::to_protobuf) / [`parse_protobuf`](Self::parse_protobuf), see
/// [`provision_protobuf`](super::provision_protobuf).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProvisionRequest {
    /// Name of the device to create (the server generates one if absent).
    pub device_name: Option<String>,
    /// Provision key of the device profile.
    pub provision_device_key: String,
    /// Provision secret of the device profile.
    pub provision_device_secret: String,
    /// Requested credentials type (server default `ACCESS_TOKEN`).
    pub credentials_type: Option<CredentialsType>,
    /// Access token to use.
    pub token: Option<String>,
    /// MQTT client id (MQTT_BASIC).
    pub client_id: Option<String>,
    /// MQTT user name (MQTT_BASIC).
    pub username: Option<String>,
    /// MQTT password (MQTT_BASIC).
    pub password: Option<String>,
    /// Certificate hash (X509_CERTIFICATE).
    pub hash: Option<String>,
    /// Create the device as a gateway.
    pub gateway: Option<bool>,
}

impl ProvisionRequest {
    /// A request with the device profile's provision key and secret; the server names the
    /// device and issues an access token unless told otherwise.
    pub fn new(key: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            provision_device_key: key.into(),
            provision_device_secret: secret.into(),
            ..Self::default()
        }
    }

    /// Names the device to create (or, for pre-provisioned devices, to claim).
    pub fn with_device_name(mut self, name: impl Into<String>) -> Self {
        self.device_name = Some(name.into());
        self
    }

    /// Asks for `ACCESS_TOKEN` credentials with this token.
    pub fn with_access_token(mut self, token: impl Into<String>) -> Self {
        self.credentials_type = Some(CredentialsType::AccessToken);
        self.token = Some(token.into());
        self
    }

    /// Asks for `MQTT_BASIC` credentials.
    pub fn with_basic(
        mut self,
        client_id: impl Into<String>,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.credentials_type = Some(CredentialsType::MqttBasic);
        self.client_id = Some(client_id.into());
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }

    /// Asks for `X509_CERTIFICATE` credentials for this certificate (`hash`: the PEM
    /// certificate as ThingsBoard expects it).
    pub fn with_x509(mut self, hash: impl Into<String>) -> Self {
        self.credentials_type = Some(CredentialsType::X509Certificate);
        self.hash = Some(hash.into());
        self
    }

    /// Creates the device as a gateway.
    pub fn as_gateway(mut self) -> Self {
        self.gateway = Some(true);
        self
    }
}

impl Payload for ProvisionRequest {
    fn encode_into<S: JsonSink + ?Sized>(&self, out: &mut S) {
        let mut o = ObjWriter::open(out);
        if let Some(n) = &self.device_name {
            o.field("deviceName", n);
        }
        o.field("provisionDeviceKey", &self.provision_device_key);
        o.field("provisionDeviceSecret", &self.provision_device_secret);
        if let Some(t) = self.credentials_type {
            o.field("credentialsType", t.as_str());
        }
        let optional = [
            ("token", &self.token),
            ("clientId", &self.client_id),
            ("username", &self.username),
            ("password", &self.password),
            ("hash", &self.hash),
        ];
        for (key, value) in optional {
            if let Some(v) = value {
                o.field(key, v);
            }
        }
        if let Some(g) = self.gateway {
            o.field("gateway", &g);
        }
        o.close();
    }

    fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut obj = parse_object(bytes, "provision request object")?;
        Ok(Self {
            device_name: opt_str(&mut obj, "deviceName")?,
            provision_device_key: req_str(&mut obj, "provisionDeviceKey")?,
            provision_device_secret: req_str(&mut obj, "provisionDeviceSecret")?,
            credentials_type: opt_str(&mut obj, "credentialsType")?
                .map(|s| CredentialsType::parse_field(s, "credentialsType"))
                .transpose()?,
            token: opt_str(&mut obj, "token")?,
            client_id: opt_str(&mut obj, "clientId")?,
            username: opt_str(&mut obj, "username")?,
            password: opt_str(&mut obj, "password")?,
            hash: opt_str(&mut obj, "hash")?,
            gateway: opt_bool(&mut obj, "gateway")?,
        })
    }
}

/// `credentialsValue` of a successful provisioning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialsValue {
    /// A string: the access token, or the X.509 certificate.
    Text(String),
    /// MQTT_BASIC: `{"clientId":..,"userName":..,"password":..}` (note `userName`).
    MqttBasic {
        /// MQTT client id.
        client_id: Option<String>,
        /// MQTT user name.
        user_name: Option<String>,
        /// MQTT password.
        password: Option<String>,
    },
}

impl CredentialsValue {
    /// The MQTT_BASIC object `{"clientId":..,"userName":..,"password":..}` (absent fields left
    /// out); writes nothing for [`CredentialsValue::Text`]. The JSON response carries it as an
    /// object, the protobuf response as its text.
    pub(crate) fn write_basic<S: JsonSink + ?Sized>(&self, out: &mut S) {
        let Self::MqttBasic {
            client_id,
            user_name,
            password,
        } = self
        else {
            return;
        };
        let mut c = ObjWriter::open(out);
        let fields = [
            ("clientId", client_id),
            ("userName", user_name),
            ("password", password),
        ];
        for (key, value) in fields {
            if let Some(v) = value {
                c.field(key, v);
            }
        }
        c.close();
    }

    /// Reads the MQTT_BASIC object (each field optional, `null` read as absent).
    pub(crate) fn basic_from_map(mut c: Map<String, Value>) -> Result<Self, PayloadError> {
        Ok(Self::MqttBasic {
            client_id: opt_str(&mut c, "clientId")?,
            user_name: opt_str(&mut c, "userName")?,
            password: opt_str(&mut c, "password")?,
        })
    }
}

/// Provisioning response on `/provision/response`. The server closes the connection 60 s
/// after sending it. It answers in the request's format: the protobuf form
/// (`ProvisionDeviceResponseMsg`) is [`to_protobuf`](Self::to_protobuf) /
/// [`parse_protobuf`](Self::parse_protobuf), see [`provision_protobuf`](super::provision_protobuf).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProvisionResponse {
    /// `{"credentialsValue":..,"credentialsType":..,"status":"SUCCESS"}`.
    Success {
        /// Type of the issued credentials.
        credentials_type: CredentialsType,
        /// The credentials.
        credentials: CredentialsValue,
    },
    /// `{"errorMsg":..,"status":"NOT_FOUND"}`: bad key/secret or provisioning disabled.
    NotFound {
        /// Server message (e.g. "Provision data was not found!"); `""` if absent.
        error_msg: String,
    },
    /// `{"errorMsg":..,"status":"FAILURE"}`: e.g. the device already exists.
    Failure {
        /// Server message (e.g. "Failed to provision device!"); `""` if absent.
        error_msg: String,
    },
}

impl Payload for ProvisionResponse {
    fn encode_into<S: JsonSink + ?Sized>(&self, out: &mut S) {
        let mut o = ObjWriter::open(out);
        match self {
            Self::Success {
                credentials_type,
                credentials,
            } => {
                match credentials {
                    CredentialsValue::Text(t) => o.field("credentialsValue", t),
                    CredentialsValue::MqttBasic { .. } => {
                        credentials.write_basic(o.key("credentialsValue"));
                    }
                }
                o.field("credentialsType", credentials_type.as_str());
                o.field("status", "SUCCESS");
            }
            Self::NotFound { error_msg } => {
                o.field("errorMsg", error_msg);
                o.field("status", "NOT_FOUND");
            }
            Self::Failure { error_msg } => {
                o.field("errorMsg", error_msg);
                o.field("status", "FAILURE");
            }
        }
        o.close();
    }

    fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut obj = parse_object(bytes, "provision response object")?;
        let status = req_str(&mut obj, "status")?;
        let mut error_msg = || opt_str(&mut obj, "errorMsg").map(Option::unwrap_or_default);
        match status.as_str() {
            "SUCCESS" => {
                let credentials_type = CredentialsType::parse_field(
                    req_str(&mut obj, "credentialsType")?,
                    "credentialsType",
                )?;
                let credentials = match take(&mut obj, "credentialsValue")? {
                    Value::String(s) => CredentialsValue::Text(s),
                    Value::Object(c) => CredentialsValue::basic_from_map(c)?,
                    _ => {
                        return Err(PayloadError::WrongType {
                            field: "credentialsValue",
                            expected: "string or object",
                        })
                    }
                };
                Ok(Self::Success {
                    credentials_type,
                    credentials,
                })
            }
            "NOT_FOUND" => Ok(Self::NotFound {
                error_msg: error_msg()?,
            }),
            "FAILURE" => Ok(Self::Failure {
                error_msg: error_msg()?,
            }),
            _ => Err(PayloadError::UnknownValue {
                field: "status",
                value: status,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::RpcRequest;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn telemetry_forms() {
        let mut out = Vec::new();
        write_device_telemetry(&mut out, Some(1), &map(json!({"t":20})));
        assert_eq!(out, br#"{"ts":1,"values":{"t":20}}"#);
        out.clear();
        write_device_telemetry(&mut out, None, &map(json!({"t":20})));
        assert_eq!(out, br#"{"t":20}"#);

        let one = DeviceTelemetry {
            entries: vec![TelemetryEntry::now(map(json!({"a":1})))],
        };
        assert_eq!(one.to_vec(), br#"{"a":1}"#);
        assert_eq!(DeviceTelemetry::parse(br#"{"a":1}"#), Ok(one.clone()));
        assert_eq!(DeviceTelemetry::parse(br#"[{"a":1}]"#), Ok(one));
        let two = DeviceTelemetry {
            entries: vec![
                TelemetryEntry::at(5, map(json!({"a":1}))),
                TelemetryEntry::now(map(json!({"metadata":2}))),
            ],
        };
        assert_eq!(
            two.to_vec(),
            br#"[{"ts":5,"values":{"a":1}},{"metadata":2}]"#
        );
        assert_eq!(DeviceTelemetry::parse(&two.to_vec()), Ok(two));
        assert!(matches!(
            DeviceTelemetry::parse(b"42"),
            Err(PayloadError::WrongShape { .. })
        ));
        assert!(matches!(
            DeviceTelemetry::parse(b"[1]"),
            Err(PayloadError::WrongShape { .. })
        ));
        assert_eq!(
            DeviceTelemetry::parse(br#"{"ts":1,"values":[]}"#),
            Err(PayloadError::WrongType {
                field: "values",
                expected: "object"
            })
        );
    }

    #[test]
    fn attributes_and_claim() {
        let a = ClientAttributes {
            values: map(json!({"fw":"1.0"})),
        };
        assert_eq!(a.to_vec(), br#"{"fw":"1.0"}"#);
        assert_eq!(ClientAttributes::parse(br#"{"fw":"1.0"}"#), Ok(a));
        assert!(matches!(
            ClientAttributes::parse(b"[]"),
            Err(PayloadError::WrongShape { .. })
        ));

        let c = Claim {
            secret_key: Some("s".into()),
            duration_ms: Some(60000),
        };
        assert_eq!(c.to_vec(), br#"{"secretKey":"s","durationMs":60000}"#);
        assert_eq!(Claim::parse(&c.to_vec()), Ok(c));
        assert_eq!(Claim::parse(b""), Ok(Claim::default()));
        assert_eq!(Claim::parse(b"{}"), Ok(Claim::default()));
        assert_eq!(Claim::default().to_vec(), b"{}");
        assert_eq!(
            Claim::parse(br#"{"secretKey":1}"#),
            Err(PayloadError::WrongType {
                field: "secretKey",
                expected: "string"
            })
        );
    }

    #[test]
    fn attribute_update() {
        let fixture = br#"{"k":1,"deleted":["x"]}"#;
        let u = AttributeUpdate {
            values: map(json!({"k":1})),
            deleted: vec!["x".into()],
        };
        assert_eq!(AttributeUpdate::parse(fixture), Ok(u.clone()));
        assert_eq!(u.to_vec(), fixture);
        // A non-array `deleted` is an ordinary attribute.
        assert_eq!(
            AttributeUpdate::parse(br#"{"deleted":5}"#),
            Ok(AttributeUpdate {
                values: map(json!({"deleted":5})),
                deleted: vec![]
            })
        );
    }

    #[test]
    fn attribute_request_and_response() {
        let r = DeviceAttributeRequest::new(vec!["a".into(), "b".into()], vec!["c".into()]);
        let Ok(r) = r else {
            panic!("{r:?}");
        };
        assert_eq!(r.to_vec(), br#"{"clientKeys":"a,b","sharedKeys":"c"}"#);
        assert_eq!(DeviceAttributeRequest::parse(&r.to_vec()), Ok(r));
        let shared_only = DeviceAttributeRequest::new(vec![], vec!["c".into()]);
        assert_eq!(
            shared_only.map(|r| r.to_vec()),
            Ok(br#"{"sharedKeys":"c"}"#.to_vec())
        );
        assert_eq!(DeviceAttributeRequest::all().to_vec(), b"{}");
        assert_eq!(
            DeviceAttributeRequest::new(vec!["a,b".into()], vec![]),
            Err(PayloadError::InvalidKey {
                key: "a,b".into(),
                reason: "contains a comma"
            })
        );
        assert_eq!(
            DeviceAttributeRequest::new(vec![], vec![String::new()]),
            Err(PayloadError::InvalidKey {
                key: String::new(),
                reason: "empty key"
            })
        );
        assert_eq!(
            DeviceAttributeRequest::parse(br#"{"clientKeys":["a"]}"#)
                .map(|r| r.client_keys().to_vec()),
            Ok(vec!["a".to_owned()])
        );
        assert_eq!(
            DeviceAttributeRequest::parse(br#"{"clientKeys":["a","b"]}"#),
            Err(PayloadError::WrongType {
                field: "clientKeys",
                expected: "comma-separated string"
            })
        );

        let resp = DeviceAttributeResponse {
            client: map(json!({"a":1})),
            shared: map(json!({"c":"x"})),
        };
        assert_eq!(resp.to_vec(), br#"{"client":{"a":1},"shared":{"c":"x"}}"#);
        assert_eq!(DeviceAttributeResponse::parse(&resp.to_vec()), Ok(resp));
        assert_eq!(
            DeviceAttributeResponse::parse(b"{}"),
            Ok(DeviceAttributeResponse::default())
        );
        assert_eq!(DeviceAttributeResponse::default().to_vec(), b"{}");
        assert_eq!(
            DeviceAttributeResponse::parse(br#"{"client":1}"#),
            Err(PayloadError::WrongType {
                field: "client",
                expected: "object"
            })
        );
    }

    #[test]
    fn rpc_forms() {
        assert_eq!(
            RpcRequest::parse(br#"{"method":"setGpio","params":{"pin":2,"value":1}}"#),
            Ok(RpcRequest::new("setGpio", json!({"pin":2,"value":1})))
        );
        assert_eq!(
            ClientRpcResponse::parse(br#"{"error":"timeout"}"#),
            Ok(ClientRpcResponse::Error("timeout".into()))
        );
        assert!(ClientRpcResponse::Error("timeout".into()).is_timeout());
        assert_eq!(
            ClientRpcResponse::parse(br#"{"error":"x","more":1}"#),
            Ok(ClientRpcResponse::Ok(json!({"error":"x","more":1})))
        );
        assert_eq!(
            ClientRpcResponse::parse(b"42"),
            Ok(ClientRpcResponse::Ok(json!(42)))
        );
        assert_eq!(
            ClientRpcResponse::Error("timeout".into()).to_vec(),
            br#"{"error":"timeout"}"#
        );
        assert!(matches!(
            ClientRpcResponse::parse(b"nope"),
            Err(PayloadError::InvalidJson { .. })
        ));
    }

    #[test]
    fn session_limits() {
        let fixture = br#"{"maxPayloadSize":65536,"maxInflightMessages":100,"rateLimits":{"messages":"10:1,60:60","telemetryMessages":"10:1","telemetryDataPoints":"10:1,300:60"},"gatewayRateLimits":{"messages":"","telemetryMessages":"5:1","telemetryDataPoints":"0:0"}}"#;
        let limits = SessionLimits {
            max_payload_size: 65536,
            max_inflight_messages: 100,
            rate_limits: RateLimits {
                messages: "10:1,60:60".into(),
                telemetry_messages: "10:1".into(),
                telemetry_data_points: "10:1,300:60".into(),
            },
            gateway_rate_limits: Some(RateLimits {
                messages: String::new(),
                telemetry_messages: "5:1".into(),
                telemetry_data_points: "0:0".into(),
            }),
        };
        assert_eq!(SessionLimits::parse(fixture), Ok(limits.clone()));
        assert_eq!(limits.to_vec(), fixture);
        assert_eq!(
            limits.rate_limits.messages_windows(),
            Ok(vec![
                RateLimitWindow {
                    capacity: 10,
                    window_secs: 1
                },
                RateLimitWindow {
                    capacity: 60,
                    window_secs: 60
                }
            ])
        );
        let device_only =
            br#"{"maxPayloadSize":1,"maxInflightMessages":2,"rateLimits":{"messages":null}}"#;
        assert_eq!(
            SessionLimits::parse(device_only),
            Ok(SessionLimits {
                max_payload_size: 1,
                max_inflight_messages: 2,
                rate_limits: RateLimits::default(),
                gateway_rate_limits: None,
            })
        );
        assert_eq!(
            SessionLimits::parse(br#"{"error":"timeout"}"#),
            Err(PayloadError::MissingField("maxPayloadSize"))
        );
        assert_eq!(
            SessionLimits::parse(
                br#"{"maxPayloadSize":"1","maxInflightMessages":2,"rateLimits":{}}"#
            ),
            Err(PayloadError::WrongType {
                field: "maxPayloadSize",
                expected: "unsigned integer"
            })
        );
    }

    #[test]
    fn rate_limit_strings() {
        let w = |capacity, window_secs| RateLimitWindow {
            capacity,
            window_secs,
        };
        assert_eq!(parse_rate_limits(""), Ok(vec![]));
        assert_eq!(
            parse_rate_limits("100:1, 1000:60"),
            Ok(vec![w(100, 1), w(1000, 60)])
        );
        assert_eq!(parse_rate_limits("5:1;6:2"), Ok(vec![w(5, 1), w(6, 2)]));
        assert_eq!(parse_rate_limits("0:0,"), Ok(vec![w(0, 0)]));
        assert!(w(0, 0).is_unlimited());
        for bad in [
            "x",
            "1",
            "1:",
            ":1",
            "a:1",
            "1:-1",
            "+1:1",
            "1:2:3",
            "99999999999999999999:1",
        ] {
            assert_eq!(
                parse_rate_limits(bad),
                Err(PayloadError::InvalidRateLimit(bad.to_owned())),
                "{bad}"
            );
        }
    }

    #[test]
    fn provisioning() {
        let req = ProvisionRequest {
            device_name: Some("Dev".into()),
            provision_device_key: "k".into(),
            provision_device_secret: "s".into(),
            credentials_type: Some(CredentialsType::MqttBasic),
            client_id: Some("c".into()),
            username: Some("u".into()),
            password: Some("p".into()),
            gateway: Some(true),
            ..Default::default()
        };
        assert_eq!(
            req.to_vec(),
            br#"{"deviceName":"Dev","provisionDeviceKey":"k","provisionDeviceSecret":"s","credentialsType":"MQTT_BASIC","clientId":"c","username":"u","password":"p","gateway":true}"#
        );
        assert_eq!(ProvisionRequest::parse(&req.to_vec()), Ok(req));
        assert_eq!(
            ProvisionRequest::parse(br#"{"provisionDeviceKey":"k"}"#),
            Err(PayloadError::MissingField("provisionDeviceSecret"))
        );
        assert_eq!(
            ProvisionRequest::parse(
                br#"{"provisionDeviceKey":"k","provisionDeviceSecret":"s","credentialsType":"PSK"}"#
            ),
            Err(PayloadError::UnknownValue {
                field: "credentialsType",
                value: "PSK".into()
            })
        );

        let fixtures: [(&[u8], ProvisionResponse); 4] = [
            (
                br#"{"credentialsValue":"tok","credentialsType":"ACCESS_TOKEN","status":"SUCCESS"}"#,
                ProvisionResponse::Success {
                    credentials_type: CredentialsType::AccessToken,
                    credentials: CredentialsValue::Text("tok".into()),
                },
            ),
            (
                br#"{"credentialsValue":{"clientId":"c","userName":"u","password":"p"},"credentialsType":"MQTT_BASIC","status":"SUCCESS"}"#,
                ProvisionResponse::Success {
                    credentials_type: CredentialsType::MqttBasic,
                    credentials: CredentialsValue::MqttBasic {
                        client_id: Some("c".into()),
                        user_name: Some("u".into()),
                        password: Some("p".into()),
                    },
                },
            ),
            (
                br#"{"errorMsg":"Provision data was not found!","status":"NOT_FOUND"}"#,
                ProvisionResponse::NotFound {
                    error_msg: "Provision data was not found!".into(),
                },
            ),
            (
                br#"{"errorMsg":"Failed to provision device!","status":"FAILURE"}"#,
                ProvisionResponse::Failure {
                    error_msg: "Failed to provision device!".into(),
                },
            ),
        ];
        for (bytes, expected) in fixtures {
            assert_eq!(ProvisionResponse::parse(bytes), Ok(expected.clone()));
            assert_eq!(expected.to_vec(), bytes);
        }
        assert_eq!(
            ProvisionResponse::parse(br#"{"status":"WEIRD"}"#),
            Err(PayloadError::UnknownValue {
                field: "status",
                value: "WEIRD".into()
            })
        );
        assert_eq!(
            ProvisionResponse::parse(br#"{"status":"SUCCESS","credentialsType":"X509_CERTIFICATE","credentialsValue":5}"#),
            Err(PayloadError::WrongType {
                field: "credentialsValue",
                expected: "string or object"
            })
        );
    }
}
