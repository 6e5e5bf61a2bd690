//! The few MQTT 3.1.1 packets the raw-socket parts of the runner write by hand (the counting
//! subscriber and the wire floor), without a client library.

/// Appends MQTT's variable-length remaining length.
pub(crate) fn put_remaining_length(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

/// CONNECT with a clean session, `keep_alive` seconds, and a user name when given.
pub(crate) fn connect_packet(client_id: &str, username: Option<&str>, keep_alive: u16) -> Vec<u8> {
    let flags = if username.is_some() { 0x82 } else { 0x02 };
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags];
    body.extend_from_slice(&keep_alive.to_be_bytes());
    for field in std::iter::once(client_id).chain(username) {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10];
    put_remaining_length(&mut packet, body.len());
    packet.extend_from_slice(&body);
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_length_and_connect_bytes() {
        let mut out = Vec::new();
        for len in [0, 127, 128, 16_383, 16_384] {
            put_remaining_length(&mut out, len);
        }
        assert_eq!(out, [0x00, 0x7F, 0x80, 0x01, 0xFF, 0x7F, 0x80, 0x80, 0x01]);
        assert_eq!(
            connect_packet("c", Some("u"), 60),
            [0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x82, 0, 60, 0, 1, b'c', 0, 1, b'u']
        );
        assert_eq!(
            connect_packet("c", None, 0),
            [0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0, 0, 1, b'c']
        );
    }
}
