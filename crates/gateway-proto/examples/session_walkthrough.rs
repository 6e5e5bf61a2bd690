//! A walk through one gateway session, with no server and no sockets: the core is driven
//! against a tiny in-memory broker on a virtual clock, and every step is printed.
//!
//! It shows what an adapter sees: the CONNECT, a refused first attempt, the
//! `getSessionLimits` exchange after CONNACK, queued telemetry going out once the limits are
//! known, the link dying with publishes in flight, the backoff, and the retransmission (DUP)
//! that completes each publish exactly once.
//!
//! Run with `cargo run -p gateway-proto --example session_walkthrough`.

#![allow(clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use gateway_proto::wire::{self, Packet, ProtocolVersion};
use gateway_proto::{
    Command, Config, Connection, Credentials, Event, Input, Output, QoS, Subscription,
};

struct Broker {
    version: ProtocolVersion,
    from_client: BytesMut,
    refuse_next: bool,
}

impl Broker {
    /// Reads what the client wrote and answers like ThingsBoard would.
    fn answer(&mut self) -> (Vec<Packet>, Vec<u8>) {
        let mut seen = Vec::new();
        let mut reply = BytesMut::new();
        while let Ok(Some(p)) = wire::decode(&mut self.from_client, self.version, 1 << 20) {
            let answer = match &p {
                Packet::Connect(_) if self.refuse_next => {
                    self.refuse_next = false;
                    // ThingsBoard is briefly unavailable.
                    Some(Packet::ConnAck(wire::ConnAck {
                        session_present: false,
                        code: 0x88,
                    }))
                }
                Packet::Connect(_) => Some(Packet::ConnAck(wire::ConnAck {
                    session_present: false,
                    code: 0,
                })),
                Packet::Subscribe(s) => Some(Packet::SubAck(wire::SubAck {
                    pkid: s.pkid,
                    codes: vec![1],
                })),
                Packet::PingReq => Some(Packet::PingResp),
                // ThingsBoard's transport answers this client-side RPC itself.
                Packet::Publish(p) if p.topic.starts_with("v1/devices/me/rpc/request/") => {
                    let id = p.topic.rsplit('/').next().unwrap_or("0");
                    Some(Packet::Publish(wire::Publish {
                        topic: format!("v1/devices/me/rpc/response/{id}"),
                        payload: Bytes::from_static(
                            br#"{"maxPayloadSize":65536,"maxInflightMessages":100,"rateLimits":{"messages":"200:1","telemetryMessages":"100:1","telemetryDataPoints":"1000:1"},"gatewayRateLimits":{"messages":"200:1","telemetryMessages":"100:1","telemetryDataPoints":"1000:1"}}"#,
                        ),
                        qos: wire::QoS::AtMostOnce,
                        dup: false,
                        retain: false,
                        pkid: 0,
                    }))
                }
                _ => None,
            };
            if let Some(a) = answer {
                let _ = wire::encode(&a, self.version, &mut reply, 1 << 20);
            }
            seen.push(p);
        }
        (seen, reply.to_vec())
    }
}

fn describe(p: &Packet) -> String {
    match p {
        Packet::Connect(c) => format!(
            "CONNECT client_id={:?} keep_alive={}s",
            c.client_id, c.keep_alive
        ),
        Packet::Subscribe(s) => format!(
            "SUBSCRIBE {:?}",
            s.filters.iter().map(|f| &f.0).collect::<Vec<_>>()
        ),
        Packet::Publish(p) => format!(
            "PUBLISH {} pkid={} dup={} {}",
            p.topic,
            p.pkid,
            p.dup,
            String::from_utf8_lossy(&p.payload)
        ),
        other => format!("{other:?}"),
    }
}

fn main() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut config = Config::new(Credentials::AccessToken("GATEWAY_TOKEN".into()));
    config.client_id = "walkthrough-gw".into();
    config.subscriptions = vec![
        Subscription::new("v1/gateway/rpc", QoS::AtLeastOnce),
        Subscription::new("v1/gateway/attributes", QoS::AtLeastOnce),
    ];
    config.reconnect.seed = 7;
    let version = config.protocol;
    let mut conn = Connection::new(config, now).expect("the configuration is valid");
    let mut broker = Broker {
        version,
        from_client: BytesMut::new(),
        refuse_next: true,
    };
    let mut open = false;

    // Telemetry queued before any connection exists: it waits, bounded, and goes out later.
    let mut ids = Vec::new();
    for (i, device) in ["Boiler 1", "Pump 7", "Valve 3"].iter().enumerate() {
        let payload = format!(
            r#"{{"{device}":[{{"ts":{},"values":{{"temperature":{}}}}}]}}"#,
            1_700_000_000_000u64 + i as u64,
            20 + i
        );
        let id = conn
            .command(
                now,
                Command::publish("v1/gateway/telemetry", Bytes::from(payload)),
            )
            .expect("accepted");
        println!(
            "[{:>6.1}s] app: telemetry for {device} queued as request {id}",
            0.0
        );
        ids.push(id);
    }

    let mut delivered = 0;
    let mut link_dropped = false;
    for _step in 0..200 {
        // Drain every output in order.
        while let Some(out) = conn.poll_output() {
            let at = now.duration_since(t0).as_secs_f64();
            match out {
                Output::OpenTransport => {
                    println!("[{at:>6.1}s] core: open a transport");
                    open = true;
                    broker.from_client.clear();
                    conn.handle_input(now, Input::TransportOpened);
                }
                Output::Transmit(bytes) => broker.from_client.extend_from_slice(&bytes),
                Output::CloseTransport => {
                    println!("[{at:>6.1}s] core: close the transport");
                    open = false;
                }
                Output::Event(Event::Delivered(id)) => {
                    delivered += 1;
                    println!("[{at:>6.1}s] event: request {id} delivered (PUBACK)");
                }
                Output::Event(Event::Disconnected {
                    reason,
                    reconnect_at,
                }) => {
                    let wait = reconnect_at.map(|t| t.saturating_duration_since(now));
                    println!(
                        "[{at:>6.1}s] event: disconnected ({reason}); reconnect in {wait:.2?}"
                    );
                }
                Output::Event(Event::SessionLimits(report)) => {
                    println!("[{at:>6.1}s] event: {report}");
                }
                Output::Event(e) => println!("[{at:>6.1}s] event: {e:?}"),
                _ => {}
            }
        }
        if delivered == ids.len() {
            break;
        }
        if open {
            let (seen, reply) = broker.answer();
            for p in &seen {
                println!(
                    "[{:>6.1}s] wire → {}",
                    now.duration_since(t0).as_secs_f64(),
                    describe(p)
                );
            }
            let publishes: Vec<u16> = seen
                .iter()
                .filter_map(|p| match p {
                    Packet::Publish(p) => Some(p.pkid),
                    _ => None,
                })
                .collect();
            let telemetry = seen
                .iter()
                .any(|p| matches!(p, Packet::Publish(p) if p.topic == "v1/gateway/telemetry"));
            if telemetry && !link_dropped {
                // The link dies before any PUBACK arrives.
                link_dropped = true;
                println!(
                    "[{:>6.1}s] net: connection reset with {} publishes in flight",
                    now.duration_since(t0).as_secs_f64(),
                    publishes.len()
                );
                open = false;
                conn.handle_input(now, Input::TransportClosed);
                continue;
            }
            let mut reply = reply;
            for pkid in publishes {
                let mut ack = BytesMut::new();
                let _ = wire::encode(
                    &Packet::PubAck(wire::PubAck { pkid, code: 0 }),
                    version,
                    &mut ack,
                    1 << 20,
                );
                reply.extend_from_slice(&ack);
            }
            if !reply.is_empty() {
                conn.handle_input(now, Input::Bytes(&reply));
                continue;
            }
        }
        // Nothing to do until the next deadline: jump the virtual clock there.
        match conn.poll_timeout() {
            Some(at) => {
                now = now.max(at);
                conn.handle_input(now, Input::Timeout);
            }
            None => break,
        }
    }
    conn.close(now + Duration::from_millis(1));
    while let Some(out) = conn.poll_output() {
        if let Output::Event(e) = out {
            println!("event: {e:?}");
        }
    }
    let stats = conn.stats();
    println!(
        "\nsummary: {} requests, {} delivered exactly once, {} retransmitted with DUP, {} connection attempts, {} failed",
        stats.requests, stats.delivered, stats.retransmitted, stats.connect_attempts, stats.failed
    );
    assert_eq!(stats.delivered, 3);
}
