//! Counters that make the connection's behaviour observable (tests, metrics, debugging).

/// A snapshot of counters and buffer levels, from
/// [`Connection::stats`](crate::Connection::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Transports asked for.
    pub connect_attempts: u64,
    /// Successful CONNACKs.
    pub connections: u64,
    /// Attempts or sessions that ended (refused, timed out, lost, ...).
    pub disconnects: u64,
    /// Commands accepted.
    pub requests: u64,
    /// QoS 1 publishes acknowledged with success.
    pub delivered: u64,
    /// QoS 0 publishes handed to the transport.
    pub sent_qos0: u64,
    /// Requests that failed.
    pub failed: u64,
    /// QoS 1 publishes sent again (with DUP) after a reconnect.
    pub retransmitted: u64,
    /// PUBLISHes received from the server.
    pub messages_received: u64,
    /// Inbound QoS 1 PUBLISHes with packet id 0 (delivered, not acknowledged).
    pub inbound_packet_id_zero: u64,
    /// PUBACKs/SUBACKs for no packet id awaiting one (e.g. duplicates from older servers).
    pub unexpected_acks: u64,
    /// PUBACKs for publishes already reported as timed out.
    pub late_acks: u64,
    /// Inbound packets skipped for exceeding the size limit.
    pub oversize_skipped: u64,
    /// Sessions ended by a protocol violation.
    pub protocol_errors: u64,
    /// Inputs that did not fit the state (e.g. bytes after the transport was closed).
    pub ignored_inputs: u64,
    /// Packets encoded.
    pub packets_sent: u64,
    /// Bytes encoded.
    pub bytes_sent: u64,
    /// Packets decoded.
    pub packets_received: u64,
    /// Bytes fed in.
    pub bytes_received: u64,
    /// Bytes of unfinished publishes, counted against `max_buffered_bytes`.
    pub buffered_bytes: usize,
    /// Publishes accepted and not finished.
    pub unfinished_requests: usize,
    /// QoS 1 publishes (and timed-out ones) awaiting PUBACK.
    pub inflight: usize,
    /// Outputs not yet drained.
    pub pending_outputs: usize,
    /// Bytes of a partial packet waiting for the rest.
    pub receive_buffer: usize,
    /// Sub-devices re-announced after a (re)connect.
    pub reannounced: u64,
    /// Keep-alives sent for silent sub-devices.
    pub keepalives_sent: u64,
    /// Sub-devices tracked.
    pub sub_devices: usize,
    /// Attribute requests and client RPCs awaiting an answer.
    pub pending_requests: usize,
    /// Server-side RPCs awaiting the application's reply.
    pub pending_server_rpcs: usize,
    /// Times a publish had to wait for rate-limit tokens (or a push-back pause).
    pub paced: u64,
    /// Server push-backs seen (see [`Event::RateLimited`](crate::Event::RateLimited)).
    pub push_backs: u64,
    /// Publishes the server refused for a rate limit and that were queued again.
    pub resent_after_push_back: u64,
    /// Commands split into several publishes.
    pub split_requests_total: u64,
    /// Publishes those commands became.
    pub split_parts: u64,
    /// Split commands with parts not finished yet.
    pub split_requests: usize,
    /// OTA chunks received and passed on.
    pub ota_chunks: u64,
    /// OTA chunk requests repeated after a timeout.
    pub ota_chunk_retries: u64,
}
