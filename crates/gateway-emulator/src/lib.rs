//! # gateway-emulator: an in-process ThingsBoard MQTT transport
//!
//! (crate guide: see the end of this work; placeholder)

#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod config;
mod convert;
mod emulator;
mod error;
mod model;
mod platform;
mod ratelimit;
mod server;
mod session;

pub use config::{Bounds, EmulatorConfig, Quirks};
pub use emulator::Emulator;
pub use error::ControlError;
pub use model::{
    ClaimOutcome, ClientRpcAnswer, ClientRpcCall, ClientRpcHandler, Credentials, DeviceId,
    DeviceInfo, Event, LimitedApi, NewDevice, OtaPackage, ProvisionProfile, ProvisionStrategy,
    RpcCall, RpcOutcome, RpcTicket, SessionId, Stats, TsValue,
};
pub use ratelimit::{LimitConfig, TenantLimits};
pub use server::EmulatorHandle;
pub use session::{Output, SessionInfo};
