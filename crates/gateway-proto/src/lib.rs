//! Sans-IO ThingsBoard MQTT gateway/device client core.
#![forbid(unsafe_code)]

mod codec;

/// Low-level MQTT wire layer shared with peers such as the platform emulator. The `Connection` API never needs it.
#[cfg(feature = "wire")]
pub mod wire {
    pub use crate::codec::*;
}
