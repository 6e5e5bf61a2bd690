//! ThingsBoard's protobuf device API, hand-written (no protobuf runtime): the payloads of the
//! `v2/.../p` topics, and of the v1 and plain v2 topics for a device whose profile is
//! PROTOBUF.
//!
//! * [`wire`]: varints, tags and length-delimited values, bounded and panic-free.
//! * [`schema`]: the `.proto` subset device profiles accept, resolved into descriptors.
//! * [`dynamic`]: messages of those schemas decoded and encoded like `DynamicMessage`.
//! * [`json`]: dynamic messages to and from JSON like ThingsBoard's `JsonFormat` use.
//! * [`transport`]: the fixed messages (`AttributesRequest`, `RpcRequest`, `ClaimDevice`;
//!   `GetAttributeResponseMsg`, `AttributeUpdateNotificationMsg`, `ToServerRpcResponseMsg`).
//! * [`adaptor`]: `ProtoMqttAdaptor`'s conversions with a profile's schemas.
//! * [`profile`]: [`ProtoSchemas`], a profile's four schemas and its JSON compatibility.

pub(crate) mod adaptor;
pub(crate) mod dynamic;
pub(crate) mod json;
pub(crate) mod profile;
pub(crate) mod schema;
pub(crate) mod transport;
pub(crate) mod wire;

pub use profile::{JsonCompatibility, ProtoSchemas, SchemaError, SchemaRole};
pub use schema::SchemaErrorKind;
