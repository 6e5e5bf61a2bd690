//! Public data types of the platform model: ids, credentials, device descriptions, snapshots,
//! RPC outcomes and events.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

/// A device's id inside the emulator (ThingsBoard uses UUIDs; a counter is enough here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub u64);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "device#{}", self.0)
    }
}

/// One client connection's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session#{}", self.0)
    }
}

/// Device credentials, as ThingsBoard stores them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Credentials {
    /// Access token, sent as the MQTT user name.
    AccessToken(String),
    /// MQTT basic credentials: any combination of client id and user name (at least one),
    /// optional password.
    Basic {
        /// MQTT client id to match, if any.
        client_id: Option<String>,
        /// MQTT user name to match, if any.
        username: Option<String>,
        /// Password; `None` accepts any password.
        password: Option<String>,
    },
    /// X.509 client certificate (`X509_CERTIFICATE`): a client presenting this certificate on
    /// a TLS connection authenticates as the device, whatever its CONNECT carries. Build it
    /// with [`Credentials::x509_pem`] or [`Credentials::x509_der`].
    X509 {
        /// `credentialsValue` as ThingsBoard stores it: the certificate's base64 DER without
        /// PEM markers or line breaks (see [`crate::x509`]).
        certificate: String,
    },
}

impl Credentials {
    /// X.509 credentials from a PEM certificate (ThingsBoard trims the markers and line
    /// breaks, so a bare base64 body works too).
    pub fn x509_pem(cert_pem: &str) -> Self {
        Self::X509 {
            certificate: crate::x509::credentials_value_from_pem(cert_pem),
        }
    }

    /// X.509 credentials from a DER certificate.
    pub fn x509_der(cert_der: &[u8]) -> Self {
        Self::X509 {
            certificate: crate::x509::credentials_value_from_der(cert_der),
        }
    }

    /// ThingsBoard's `credentialsId` for these credentials where it is a hash of the value:
    /// the SHA3-256 of the certificate text for X.509, `None` otherwise.
    pub fn x509_credentials_id(&self) -> Option<String> {
        match self {
            Self::X509 { certificate } => Some(crate::x509::credentials_id(certificate)),
            _ => None,
        }
    }
}

/// What the transport knows about a connection before its CONNECT: whether it is TLS and which
/// client certificate (leaf, DER) the peer presented. ThingsBoard's MQTT SSL listener asks
/// every client for a certificate; one that sends none authenticates by its CONNECT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerIdentity {
    /// The connection is TLS.
    pub tls: bool,
    /// The client's leaf certificate, DER, if it presented one (only over TLS).
    pub client_cert: Option<Vec<u8>>,
    /// The certificates the client sent after its leaf, DER, in the order sent (normally
    /// intermediates up to a CA). ThingsBoard walks this chain for X.509 certificate-chain
    /// provisioning ([`X509ChainProfile`]); empty when only a leaf (or nothing) was presented.
    pub intermediates: Vec<Vec<u8>>,
}

impl PeerIdentity {
    /// A plain TCP connection (what [`crate::Emulator::open_session`] assumes).
    pub fn plain() -> Self {
        Self::default()
    }

    /// A TLS connection, with the client certificate (DER) if one was presented.
    pub fn tls(client_cert: Option<Vec<u8>>) -> Self {
        Self {
            tls: true,
            client_cert,
            intermediates: Vec::new(),
        }
    }

    /// A TLS connection whose client presented `chain` (DER, leaf first, then the rest in the
    /// order sent, as a TLS stack reports the peer's certificates). An empty chain is a TLS
    /// client without a certificate.
    pub fn tls_chain(chain: Vec<Vec<u8>>) -> Self {
        let mut certs = chain.into_iter();
        Self {
            tls: true,
            client_cert: certs.next(),
            intermediates: certs.collect(),
        }
    }

    /// The presented chain, leaf first (empty without a client certificate).
    pub fn chain(&self) -> Vec<&[u8]> {
        self.client_cert
            .iter()
            .chain(self.intermediates.iter())
            .map(Vec::as_slice)
            .collect()
    }
}

/// What to create with [`crate::Emulator::create_device`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDevice {
    /// Unique device name.
    pub name: String,
    /// Device profile (type) name; ThingsBoard's default is `default`.
    pub device_type: String,
    /// Credentials; `None` for a device that can only be reached through a gateway.
    pub credentials: Option<Credentials>,
    /// `additionalInfo.gateway`: may use the `v1/gateway/...` topics.
    pub gateway: bool,
    /// `additionalInfo.overwriteActivityTime`: a gateway ping refreshes its children.
    pub overwrite_activity_time: bool,
}

impl NewDevice {
    /// A plain device with an access token.
    pub fn device(name: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            device_type: "default".to_owned(),
            credentials: Some(Credentials::AccessToken(token.into())),
            gateway: false,
            overwrite_activity_time: false,
        }
    }

    /// A gateway device with an access token.
    pub fn gateway(name: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            gateway: true,
            ..Self::device(name, token)
        }
    }

    /// A plain device authenticated by an X.509 client certificate (PEM), like a device whose
    /// credentials type is `X509_CERTIFICATE`. It connects over TLS presenting that
    /// certificate.
    pub fn x509(name: impl Into<String>, cert_pem: &str) -> Self {
        Self::device(name, "").with_credentials(Some(Credentials::x509_pem(cert_pem)))
    }

    /// A gateway authenticated by an X.509 client certificate (PEM).
    pub fn x509_gateway(name: impl Into<String>, cert_pem: &str) -> Self {
        Self {
            gateway: true,
            ..Self::x509(name, cert_pem)
        }
    }

    /// Sets the device type (profile name).
    pub fn with_type(mut self, device_type: impl Into<String>) -> Self {
        self.device_type = device_type.into();
        self
    }

    /// Replaces the credentials.
    pub fn with_credentials(mut self, credentials: Option<Credentials>) -> Self {
        self.credentials = credentials;
        self
    }

    /// Sets `overwriteActivityTime`.
    pub fn with_overwrite_activity_time(mut self, on: bool) -> Self {
        self.overwrite_activity_time = on;
        self
    }
}

/// A read-only snapshot of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceInfo {
    /// Id.
    pub id: DeviceId,
    /// Name.
    pub name: String,
    /// Type (profile name).
    pub device_type: String,
    /// Gateway flag.
    pub gateway: bool,
    /// Credentials.
    pub credentials: Option<Credentials>,
    /// Name of the gateway that created it, if any (ThingsBoard saves a "Created" relation).
    pub created_by_gateway: Option<String>,
    /// `additionalInfo.lastConnectedGateway`, as a name.
    pub last_connected_gateway: Option<String>,
    /// Claimed by a customer.
    pub claimed: bool,
}

/// A telemetry point.
#[derive(Debug, Clone, PartialEq)]
pub struct TsValue {
    /// Milliseconds since the Unix epoch (the device's `ts`, or the emulator's receive time).
    pub ts: i64,
    /// Typed value.
    pub value: Value,
}

/// Server-side RPC request parameters for [`crate::Emulator::send_rpc`].
#[derive(Debug, Clone, PartialEq)]
pub struct RpcCall {
    /// Method name.
    pub method: String,
    /// Parameters (any JSON).
    pub params: Value,
    /// One-way (`/api/rpc/oneway`) or two-way.
    pub oneway: bool,
    /// Expiry, counted from the call (ThingsBoard's REST default is 10 s, minimum 5 s; the
    /// emulator does not enforce the minimum).
    pub timeout: Duration,
}

impl RpcCall {
    /// A two-way RPC with ThingsBoard's default 10 s timeout.
    pub fn two_way(method: impl Into<String>, params: Value) -> Self {
        Self {
            method: method.into(),
            params,
            oneway: false,
            timeout: Duration::from_secs(10),
        }
    }

    /// A one-way RPC with ThingsBoard's default 10 s timeout.
    pub fn one_way(method: impl Into<String>, params: Value) -> Self {
        Self {
            oneway: true,
            ..Self::two_way(method, params)
        }
    }

    /// Sets the timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Identifies one [`crate::Emulator::send_rpc`] call in the resulting [`Event::RpcCompleted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RpcTicket(pub u64);

/// How a server-side RPC ended (what the REST caller would see).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RpcOutcome {
    /// One-way RPC handed to a subscribed session (HTTP 200, empty body).
    Delivered,
    /// Two-way reply; `data` verbatim (a device reply that is not JSON becomes a string).
    Reply(Value),
    /// Sent, but no reply before expiry (HTTP 504).
    Timeout,
    /// No session subscribed to RPC before expiry (HTTP 504 on `/api/rpc`).
    NoActiveConnection,
    /// The device was deleted while the RPC was pending.
    DeviceDeleted,
}

/// What a platform-side rate limit counted against (ThingsBoard raises a notification).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LimitedApi {
    /// Tenant-wide transport limit.
    Tenant,
    /// A plain device's limit.
    Device,
    /// `TRANSPORT_MESSAGES_PER_GATEWAY`: a gateway's children together.
    Gateway,
    /// `TRANSPORT_MESSAGES_PER_GATEWAY_DEVICE`: the gateway's own traffic.
    GatewayDevice,
}

/// Something that happened which a test or runner may want to know.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A server-side RPC ended.
    RpcCompleted {
        /// From [`crate::Emulator::send_rpc`].
        ticket: RpcTicket,
        /// Device name.
        device: String,
        /// Outcome.
        outcome: RpcOutcome,
    },
    /// A transport rate limit refused a message.
    RateLimited {
        /// Device whose message was refused (for gateway children: the child).
        device: String,
        /// Which limit.
        api: LimitedApi,
    },
}

/// Answer of the client-side RPC handler (the emulator's stand-in for the rule engine).
#[derive(Debug, Clone, PartialEq)]
pub enum ClientRpcAnswer {
    /// Reply with this JSON.
    Reply(Value),
    /// Reply `{"error":".."}`.
    Error(String),
    /// No answer: the device gets `{"error":"timeout"}` after the client-RPC timeout.
    NoAnswer,
}

/// A client-side RPC as passed to the handler.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientRpcCall {
    /// Device name.
    pub device: String,
    /// Request id from the topic.
    pub id: u64,
    /// Method.
    pub method: String,
    /// Parameters.
    pub params: Value,
}

/// The stand-in for the rule engine's handling of client-side RPCs.
pub type ClientRpcHandler = Box<dyn FnMut(&ClientRpcCall) -> ClientRpcAnswer + Send>;

/// Result of a customer claiming a device (ThingsBoard `ClaimResult`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Claimed now.
    Success,
    /// Already claimed.
    AlreadyClaimed,
    /// No valid claim record (none, expired, or wrong secret).
    Failure,
}

/// Provisioning strategy of a device profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisionStrategy {
    /// `ALLOW_CREATE_NEW_DEVICES`: creates the device; fails if the name exists.
    AllowCreateNew,
    /// `CHECK_PRE_PROVISIONED_DEVICES`: the device must exist and not be provisioned yet.
    CheckPreProvisioned,
}

/// A device profile's provisioning settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionProfile {
    /// Device type (profile name) of provisioned devices.
    pub device_type: String,
    /// `provisionDeviceKey`.
    pub key: String,
    /// `provisionDeviceSecret`.
    pub secret: String,
    /// Strategy.
    pub strategy: ProvisionStrategy,
}

/// A device profile with ThingsBoard's `X509_CERTIFICATE_CHAIN` provisioning strategy
/// (`X509CertificateChainProvisionConfiguration`), added with
/// [`crate::Emulator::add_x509_chain_profile`].
///
/// When a TLS client presents a certificate chain, ThingsBoard's trust manager
/// (`MqttSslHandlerProvider.ThingsboardMqttX509TrustManager.checkClientTrusted`) hands the
/// whole chain to `DefaultTransportApiService.validateOrCreateDeviceX509Certificate`, during
/// the handshake. For each certificate, leaf first: a device whose X.509 credential it is ends
/// the walk; otherwise, if it is the certificate of a profile like this one (matched by
/// equality: the profile's `provisionDeviceKey` is the SHA3 of its certificate, the same hash
/// as a credential id), `DeviceProvisionServiceImpl.provisionDeviceViaX509Chain` runs for the
/// leaf and ends the walk:
///
/// * the leaf's subject CN ([`crate::x509::common_name`]) is matched with
///   [`certificate_regex`](Self::certificate_regex) by `Matcher.find()` (leftmost match,
///   unanchored) and the device name is **capturing group 1**; no CN, no match or no group 1
///   fails;
/// * a device of that name in this profile (`device_type`) keeps its identity: if its
///   credentials are X.509 they are replaced by the leaf (certificate rotation), otherwise
///   nothing changes (and the CONNECT below is refused);
/// * otherwise, if [`allow_create_new`](Self::allow_create_new), the device is created in this
///   profile with the leaf as its `X509_CERTIFICATE` credential (an empty or absent group 1
///   gives a generated 20-character name; a name taken by a device of another profile, or the
///   device limit, fails); otherwise it fails.
///
/// A failure is only logged by ThingsBoard: the handshake goes on, and the MQTT CONNECT then
/// authenticates by the leaf alone (`MqttTransportHandler.processX509CertConnect`), so a leaf
/// that was neither known nor provisioned is refused with NOT_AUTHORIZED (CONNACK 5 on
/// MQTT 3.1.1, 0x87 + DISCONNECT 0x87 on MQTT 5), exactly like an unknown certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct X509ChainProfile {
    /// Device type (profile name) of the devices it provisions.
    pub device_type: String,
    /// The profile's certificate (normally the CA that issues device certificates), PEM; with
    /// several certificates only the first counts, as in ThingsBoard.
    pub certificate_pem: String,
    /// `certificateRegExPattern`: the device name is its first capturing group in the leaf's
    /// CN. Rust `regex` syntax (no look-around or back-references, unlike `java.util.regex`).
    pub certificate_regex: String,
    /// `allowCreateNewDevicesByX509Certificate`.
    pub allow_create_new: bool,
}

impl X509ChainProfile {
    /// A profile for `device_type` keyed by `certificate_pem`, taking the device name from
    /// group 1 of `certificate_regex` in the leaf's CN, with creation of new devices allowed
    /// (the emulator's default; see [`X509ChainProfile::with_create_new`]).
    pub fn new(
        device_type: impl Into<String>,
        certificate_pem: impl Into<String>,
        certificate_regex: impl Into<String>,
    ) -> Self {
        Self {
            device_type: device_type.into(),
            certificate_pem: certificate_pem.into(),
            certificate_regex: certificate_regex.into(),
            allow_create_new: true,
        }
    }

    /// Sets `allowCreateNewDevicesByX509Certificate`.
    pub fn with_create_new(mut self, allow: bool) -> Self {
        self.allow_create_new = allow;
        self
    }
}

/// An OTA package assigned to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtaPackage {
    /// Title.
    pub title: String,
    /// Version.
    pub version: String,
    /// The image.
    pub data: Bytes,
    /// Checksum algorithm name (e.g. `SHA256`).
    pub checksum_algorithm: String,
    /// Checksum value as text.
    pub checksum: String,
}

/// Counters of what the emulator dropped or ignored because of its own bounds, or because
/// ThingsBoard drops it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Telemetry/attribute keys not stored because a device reached
    /// [`crate::Bounds::max_keys_per_device`].
    pub dropped_keys: u64,
    /// Events dropped because nobody took them.
    pub dropped_events: u64,
    /// RPC replies for an unknown or expired id ("RPC command response is stale!").
    pub stale_rpc_replies: u64,
}
