//! `tbgw demo`: a gateway with three simulated sub-devices against an in-process
//! emulator, narrated step by step. Every wait is bounded; any surprise ends the demo with
//! the step that failed.

use std::future::Future;
use std::time::{Duration, Instant};

use gateway_emulator::{EmulatorConfig, EmulatorHandle, NewDevice, RpcCall, RpcOutcome};
use gateway_proto::{AttributeScope, Credentials, Event};
use gateway_tokio::{connect, Client, ClientEvent, ClientOptions, Delivery, Events, Pending};
use serde_json::{json, Map, Value};

use crate::BoxError;

const GATEWAY: &str = "Demo Gateway";
const TOKEN: &str = "DEMO_GATEWAY_TOKEN";
const THERMOMETER: &str = "Thermometer T1";
const BOILER: &str = "Boiler B1";
const METER: &str = "Meter M1";
const SUB_DEVICES: [(&str, &str); 3] = [
    (THERMOMETER, "thermometer"),
    (BOILER, "boiler"),
    (METER, "meter"),
];
const ROUNDS: u32 = 3;
/// Between telemetry rounds, so the data flows at a visible pace.
const ROUND_PAUSE: Duration = Duration::from_millis(250);
/// The bound of every single wait.
const WAIT: Duration = Duration::from_secs(5);
/// The bound of the whole demo.
const WHOLE: Duration = Duration::from_secs(60);

/// A step that did not go as narrated.
#[derive(Debug)]
struct StepFailed {
    step: &'static str,
    message: String,
}

impl std::fmt::Display for StepFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "demo step '{}' failed: {}", self.step, self.message)
    }
}

impl std::error::Error for StepFailed {}

/// Runs the demo; `Ok` only if every step did what it says.
pub async fn run() -> Result<(), BoxError> {
    let started = Instant::now();
    println!("tbgw demo: a ThingsBoard gateway with 3 sub-devices, against an in-process emulator");
    println!();
    let emu = EmulatorHandle::start(EmulatorConfig::default())
        .await
        .map_err(|e| format!("cannot start the emulator on 127.0.0.1: {e}"))?;
    let result = tokio::time::timeout(WHOLE, Demo::new(emu.clone()).steps()).await;
    emu.shutdown();
    match result {
        Ok(Ok(())) => {
            println!();
            println!(
                "demo finished OK in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(format!("the demo did not finish within {} s", WHOLE.as_secs()).into()),
    }
}

struct Demo {
    emu: EmulatorHandle,
    step: &'static str,
    number: u32,
    rpcs: u32,
    answered: u64,
}

type Step<T> = Result<T, StepFailed>;

impl Demo {
    fn new(emu: EmulatorHandle) -> Self {
        Self {
            emu,
            step: "start",
            number: 0,
            rpcs: 0,
            answered: 0,
        }
    }

    /// Starts a step: its number and label, then the first line.
    fn begin(&mut self, step: &'static str, line: impl AsRef<str>) {
        self.step = step;
        self.number += 1;
        println!("{:>2}. {:<10} {}", self.number, step, line.as_ref());
    }

    /// Another line of the current step.
    fn say(&self, line: impl AsRef<str>) {
        println!("    {:<10} {}", "", line.as_ref());
    }

    fn fail(&self, message: impl Into<String>) -> StepFailed {
        StepFailed {
            step: self.step,
            message: message.into(),
        }
    }

    /// Awaits `future` for at most [`WAIT`].
    async fn within<T>(&self, what: &str, future: impl Future<Output = T>) -> Step<T> {
        tokio::time::timeout(WAIT, future)
            .await
            .map_err(|_| self.fail(format!("{what}: nothing within {} s", WAIT.as_secs())))
    }

    /// Queues a request and waits for its outcome, both bounded.
    async fn outcome<T, F>(&self, what: &str, request: F) -> Step<T>
    where
        F: Future<Output = Result<Pending<T>, gateway_tokio::ClientError>>,
    {
        let pending = self
            .within(what, request)
            .await?
            .map_err(|e| self.fail(format!("{what}: {e}")))?;
        self.within(what, pending)
            .await?
            .map_err(|e| self.fail(format!("{what}: {e}")))
    }

    /// The first event `pick` accepts (others are skipped), within [`WAIT`].
    async fn event<T>(
        &self,
        events: &Events,
        what: &str,
        mut pick: impl FnMut(&ClientEvent) -> Option<T>,
    ) -> Step<T> {
        let wait = async {
            while let Some(event) = events.recv().await {
                if let Some(found) = pick(&event) {
                    return Some(found);
                }
            }
            None
        };
        self.within(what, wait)
            .await?
            .ok_or_else(|| self.fail(format!("{what}: the event stream ended")))
    }

    /// Polls `check` until it holds, within [`WAIT`].
    async fn eventually(&self, what: &str, mut check: impl FnMut() -> bool) -> Step<()> {
        let poll = async {
            while !check() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        self.within(what, poll).await
    }

    /// Starts a two-way server-side RPC from the platform (it runs while the gateway
    /// answers).
    fn platform_rpc(
        &self,
        device: &str,
        method: &str,
        params: Value,
    ) -> tokio::task::JoinHandle<Result<RpcOutcome, gateway_emulator::ControlError>> {
        let emu = self.emu.clone();
        let device = device.to_owned();
        let mut call = RpcCall::two_way(method, params);
        call.timeout = WAIT;
        tokio::spawn(async move { emu.rpc(&device, call).await })
    }

    /// Waits for the RPC to reach the gateway, answers it with `reply`, and checks that
    /// the platform got that reply.
    async fn rpc_round_trip(
        &mut self,
        client: &Client,
        events: &Events,
        device: &str,
        method: &str,
        params: Value,
        reply: Value,
    ) -> Step<()> {
        let call = self.platform_rpc(device, method, params.clone());
        self.say(format!("platform -> {device}: {method} {params}"));
        let (id, received) = self
            .event(events, "the RPC request", |e| match e {
                ClientEvent::Proto(Event::RpcRequest {
                    device: Some(d),
                    id,
                    method: m,
                    params,
                }) if d == device && m == method => Some((*id, params.clone())),
                _ => None,
            })
            .await?;
        if received != params {
            return Err(self.fail(format!("the gateway got params {received}")));
        }
        let delivered = self
            .outcome(
                "the RPC reply",
                client.device_rpc_reply(device, id, reply.clone()),
            )
            .await?;
        self.say(format!(
            "gateway received it (RPC id {id}) and replied {reply} ({})",
            delivery(delivered)
        ));
        let outcome = self
            .within("the platform's RPC outcome", call)
            .await?
            .map_err(|e| self.fail(format!("RPC task: {e}")))?
            .map_err(|e| self.fail(format!("RPC: {e}")))?;
        match outcome {
            RpcOutcome::Reply(data) if data == reply => {
                self.rpcs += 1;
                self.say(format!("platform got the reply: {data}"));
                Ok(())
            }
            other => Err(self.fail(format!("the platform's RPC ended with {other:?}"))),
        }
    }

    async fn steps(mut self) -> Step<()> {
        let emu = self.emu.clone();
        let addr = emu.addr();

        self.begin(
            "platform",
            format!("ThingsBoard emulator listening on {addr}"),
        );
        emu.create_device(NewDevice::gateway(GATEWAY, TOKEN))
            .map_err(|e| self.fail(format!("creating the gateway device: {e}")))?;
        self.say(format!(
            "gateway device \"{GATEWAY}\" created, access token {TOKEN}"
        ));

        self.begin(
            "connect",
            format!("gateway connecting to {addr} (MQTT 5, access token)"),
        );
        let mut options = ClientOptions::new(
            addr.ip().to_string(),
            addr.port(),
            Credentials::AccessToken(TOKEN.into()),
        );
        options.config.reconnect.initial_delay = Duration::from_millis(100);
        options.config.reconnect.max_delay = Duration::from_secs(1);
        let (client, events) = self
            .within("connecting", connect(options))
            .await?
            .map_err(|e| self.fail(format!("cannot connect: {e}")))?;
        self.say("connected: session up, subscriptions sent");

        let result = self.with_client(&client, &events).await;
        let closed = tokio::time::timeout(WAIT, client.close()).await;
        result?;
        closed.map_err(|_| self.fail("closing the client took too long"))
    }

    async fn with_client(&mut self, client: &Client, events: &Events) -> Step<()> {
        let emu = self.emu.clone();

        // Sub-devices announced.
        let names: Vec<String> = SUB_DEVICES
            .iter()
            .map(|(name, kind)| format!("{name} ({kind})"))
            .collect();
        self.begin("announce", format!("sub-devices: {}", names.join(", ")));
        let mut pending = Vec::new();
        for (name, kind) in SUB_DEVICES {
            pending.push(
                self.within("announcing", client.connect_device(name, Some(kind)))
                    .await?
                    .map_err(|e| self.fail(format!("announcing {name}: {e}")))?,
            );
        }
        for p in pending {
            self.within("the announce outcome", p)
                .await?
                .map_err(|e| self.fail(format!("announce: {e}")))?;
        }
        let children = self.children()?;
        if children.len() != SUB_DEVICES.len() {
            return Err(self.fail(format!("the platform sees children {children:?}")));
        }
        self.say(format!(
            "{} acknowledged; platform: children of \"{GATEWAY}\": {}",
            SUB_DEVICES.len(),
            children.join(", ")
        ));

        // Telemetry rounds.
        for round in 1..=ROUNDS {
            if round > 1 {
                tokio::time::sleep(ROUND_PAUSE).await;
            }
            let readings = readings(round);
            let line = format!("round {round}: {}", describe(&readings));
            if round == 1 {
                self.begin("telemetry", line);
            } else {
                self.say(line);
            }
            let mut pending = Vec::new();
            for (device, values) in &readings {
                pending.push(
                    self.within(
                        "sending telemetry",
                        client.device_telemetry(*device, values.clone()),
                    )
                    .await?
                    .map_err(|e| self.fail(format!("telemetry of {device}: {e}")))?,
                );
            }
            let sent = pending.len();
            for p in pending {
                self.within("the telemetry outcome", p)
                    .await?
                    .map_err(|e| self.fail(format!("telemetry: {e}")))?;
            }
            // Read back what the platform stored.
            let mut stored = Vec::new();
            for (device, values) in &readings {
                let latest = emu
                    .latest_telemetry(device)
                    .map_err(|e| self.fail(format!("reading {device}'s telemetry: {e}")))?;
                for (key, value) in values {
                    let got = latest.get(key).map(|v| &v.value);
                    if got.and_then(Value::as_f64) != value.as_f64() {
                        return Err(self.fail(format!(
                            "{device} {key}: sent {value}, the platform has {got:?}"
                        )));
                    }
                }
                stored.push(*device);
            }
            self.say(format!(
                "  {sent} acknowledged; the platform stored the same values for all {}",
                stored.len()
            ));
        }

        // Server-side RPC.
        self.begin(
            "rpc",
            "a server-side RPC to a sub-device, answered by the gateway",
        );
        self.rpc_round_trip(
            client,
            events,
            BOILER,
            "setSetpoint",
            json!({"celsius": 70}),
            json!({"ok": true, "setpoint": 70}),
        )
        .await?;

        // Shared attribute push.
        self.begin(
            "shared",
            format!("platform sets shared attribute interval_s=5 on {THERMOMETER}"),
        );
        emu.set_shared_attributes(THERMOMETER, object(json!({"interval_s": 5})))
            .map_err(|e| self.fail(format!("setting the attribute: {e}")))?;
        let pushed = self
            .event(events, "the attribute update", |e| match e {
                ClientEvent::Proto(Event::AttributeUpdate {
                    device: Some(d),
                    values,
                    ..
                }) if d == THERMOMETER => Some(values.clone()),
                _ => None,
            })
            .await?;
        if pushed.get("interval_s") != Some(&json!(5)) {
            return Err(self.fail(format!("the gateway got {pushed:?}")));
        }
        self.say(format!(
            "gateway received the push for {THERMOMETER}: {}",
            Value::Object(pushed)
        ));

        // Attribute requests.
        self.begin(
            "attributes",
            format!("gateway reports {METER}'s client attributes, then asks for them back"),
        );
        let attributes = object(json!({"model": "EM-3", "firmware": "1.4.2"}));
        self.outcome(
            "the client attributes",
            client.device_attributes(METER, attributes.clone()),
        )
        .await?;
        let answer = self
            .outcome(
                "the client attribute request",
                client.request_device_attributes(
                    METER,
                    AttributeScope::Client,
                    vec!["model".into(), "firmware".into()],
                ),
            )
            .await?;
        self.answered += 1;
        if answer.client != attributes {
            return Err(self.fail(format!("answered {:?}", answer.client)));
        }
        self.say(format!(
            "answered: {METER} client {}",
            Value::Object(answer.client)
        ));
        let answer = self
            .outcome(
                "the shared attribute request",
                client.request_device_attributes(
                    THERMOMETER,
                    AttributeScope::Shared,
                    vec!["interval_s".into()],
                ),
            )
            .await?;
        self.answered += 1;
        if answer.shared.get("interval_s") != Some(&json!(5)) {
            return Err(self.fail(format!("answered {:?}", answer.shared)));
        }
        self.say(format!(
            "answered: {THERMOMETER} shared {}",
            Value::Object(answer.shared)
        ));

        // Reconnect with re-announce.
        self.reconnect(client, events).await?;

        // Summary.
        self.summary(client).await
    }

    fn children(&self) -> Step<Vec<String>> {
        self.emu
            .connected_children(GATEWAY)
            .map_err(|e| self.fail(format!("asking the platform for the children: {e}")))
    }

    async fn reconnect(&mut self, client: &Client, events: &Events) -> Step<()> {
        let emu = self.emu.clone();
        let before = client
            .stats()
            .await
            .map_err(|e| self.fail(format!("client stats: {e}")))?;
        let session = emu
            .sessions()
            .into_iter()
            .find(|s| s.device.as_deref() == Some(GATEWAY))
            .ok_or_else(|| self.fail("the platform has no session of the gateway"))?;
        self.begin(
            "reconnect",
            format!(
                "platform drops the gateway's {} (TCP closed, no DISCONNECT packet)",
                session.id
            ),
        );
        let dropped = Instant::now();
        emu.drop_session(session.id)
            .map_err(|e| self.fail(format!("dropping the session: {e}")))?;
        let reason = self
            .event(events, "the disconnect", |e| match e {
                ClientEvent::Proto(Event::Disconnected { reason, .. }) => Some(reason.clone()),
                _ => None,
            })
            .await?;
        self.say(format!(
            "gateway: disconnected ({reason}); reconnecting by itself"
        ));
        self.event(events, "the new session", |e| {
            matches!(e, ClientEvent::Proto(Event::Connected { .. })).then_some(())
        })
        .await?;
        self.eventually("the sub-devices announced again", || {
            self.emu
                .connected_children(GATEWAY)
                .is_ok_and(|c| c.len() == SUB_DEVICES.len())
        })
        .await?;
        let after = client
            .stats()
            .await
            .map_err(|e| self.fail(format!("client stats: {e}")))?;
        let reannounced = after.reannounced - before.reannounced;
        let session = emu
            .sessions()
            .into_iter()
            .find(|s| s.device.as_deref() == Some(GATEWAY))
            .ok_or_else(|| self.fail("the platform has no new session of the gateway"))?;
        self.say(format!(
            "gateway: connected again as {} after {} ms",
            session.id,
            dropped.elapsed().as_millis()
        ));
        self.say(format!(
            "the client re-announced its {reannounced} sub-devices by itself \
             (no command from the application)"
        ));
        if reannounced < 3 {
            return Err(self.fail(format!("only {reannounced} re-announced")));
        }
        self.say(format!(
            "platform: children of the new session: {}",
            self.children()?.join(", ")
        ));
        self.say(format!(
            "{METER} has sent nothing since the reconnect; the platform calls it:"
        ));
        self.rpc_round_trip(
            client,
            events,
            METER,
            "readMeter",
            json!({}),
            json!({"energy_kwh": 1206.6}),
        )
        .await?;
        self.say(format!(
            "re-announce works: an RPC reached {METER} after the reconnect"
        ));
        Ok(())
    }

    async fn summary(&mut self, client: &Client) -> Step<()> {
        let stats = client
            .stats()
            .await
            .map_err(|e| self.fail(format!("client stats: {e}")))?;
        let emu = &self.emu;
        let (devices, points) = emu.with(|e, _| {
            let devices = e.devices();
            let points: usize = devices
                .iter()
                .filter_map(|d| e.telemetry(&d.name).ok())
                .map(|t| t.values().map(Vec::len).sum::<usize>())
                .sum();
            (devices.len(), points)
        });
        self.begin(
            "summary",
            format!(
                "client: {} requests: {} publishes acknowledged, {} attribute requests \
                 answered, {} failed",
                stats.requests, stats.delivered, self.answered, stats.failed,
            ),
        );
        self.say(format!(
            "client: {}, {}, {} sub-devices re-announced, {} retransmitted",
            count(stats.connections, "session"),
            count(stats.disconnects, "disconnect"),
            stats.reannounced,
            stats.retransmitted,
        ));
        self.say(format!(
            "client: {} messages received, {} packets / {} bytes sent, {} packets / {} bytes \
             received",
            stats.messages_received,
            stats.packets_sent,
            stats.bytes_sent,
            stats.packets_received,
            stats.bytes_received
        ));
        self.say(format!(
            "platform: {devices} devices (1 gateway, {} sub-devices), {points} telemetry \
             points stored, {} server-side RPCs answered",
            devices.saturating_sub(1),
            self.rpcs
        ));
        if stats.failed != 0 {
            return Err(self.fail(format!("{} requests failed", stats.failed)));
        }
        Ok(())
    }
}

fn delivery(d: Delivery) -> &'static str {
    match d {
        Delivery::Acknowledged => "acknowledged",
        _ => "sent",
    }
}

/// "1 session", "2 sessions".
fn count(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Simulated readings of round `round`: each device drifts a little.
fn readings(round: u32) -> Vec<(&'static str, Map<String, Value>)> {
    let r = f64::from(round);
    vec![
        (
            THERMOMETER,
            object(json!({"temperature": round1(21.0 + 0.3 * r)})),
        ),
        (
            BOILER,
            object(
                json!({"water_temp": round1(62.0 + 1.5 * r), "pressure": round1(1.4 + 0.1 * r)}),
            ),
        ),
        (
            METER,
            object(json!({"energy_kwh": round1(1204.2 + 0.8 * r)})),
        ),
    ]
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn describe(readings: &[(&str, Map<String, Value>)]) -> String {
    readings
        .iter()
        .map(|(device, values)| {
            let values: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{device} {}", values.join(" "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}
