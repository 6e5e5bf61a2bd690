//! Sans-IO ThingsBoard MQTT gateway/device client core: topic names and JSON payloads shared by
//! the client state machine and the platform emulator.
#![forbid(unsafe_code)]

pub mod payload;
pub mod topic;
