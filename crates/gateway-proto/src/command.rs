//! What the application asks the connection to do.

use bytes::Bytes;

use crate::codec::QoS;

/// An application request. Each accepted command gets a [`RequestId`](crate::RequestId) and
/// ends in exactly one outcome event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Publish `payload` on `topic`.
    ///
    /// QoS 1 ends in [`Event::Delivered`](crate::Event::Delivered) when ThingsBoard
    /// acknowledged it (meaning: accepted by its transport queue), or
    /// [`Event::Failed`](crate::Event::Failed). QoS 0 ends in
    /// [`Event::Sent`](crate::Event::Sent) once its bytes were handed to the transport, or
    /// `Failed` if it timed out or the connection was closed before that.
    Publish {
        /// Topic name, e.g. `v1/devices/me/telemetry`.
        topic: String,
        /// Payload bytes (ThingsBoard expects JSON unless the device profile says protobuf).
        payload: Bytes,
        /// QoS 0 or 1. ThingsBoard acknowledges QoS 2 with a PUBACK, so it is not offered.
        qos: QoS,
    },
}

impl Command {
    /// A QoS 1 publish.
    pub fn publish(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self::Publish {
            topic: topic.into(),
            payload: payload.into(),
            qos: QoS::AtLeastOnce,
        }
    }
}
