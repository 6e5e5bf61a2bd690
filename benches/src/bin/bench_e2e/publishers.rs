//! The publisher processes: our tokio adapter and rumqttc, each on a current-thread tokio
//! runtime, publishing the anchor's gateway telemetry; and the emulator as a server.
//!
//! Each publisher connects first (not measured), then takes the wall clock and its process
//! CPU time, publishes `count` messages, waits until every one is finished (QoS 1: every
//! PUBACK received; QoS 0: everything written, then a DISCONNECT written after it), takes
//! both again, and prints
//! `RESULT start_ns=.. end_ns=.. cpu_ns=.. sys_ns=.. count=.. finished=.. peak_rss_kib=..`
//! (`sys_ns`: the part of `cpu_ns` spent in the kernel).

use std::collections::VecDeque;
use std::io::BufRead;
use std::time::Duration;

use gateway_benches::{bench_config, telemetry_command, telemetry_json, TELEMETRY_TOPIC};
use gateway_proto::{Credentials, QoS};
use gateway_tokio::{connect, ClientOptions};

use crate::stats::{peak_rss_kib, process_cpu_ns, process_system_ns, wall_ns};
use crate::Args;

/// Outcomes awaited at most this many behind the newest request (bounds the publisher's
/// memory; larger than the in-flight window so the window stays full).
const OUTCOME_WINDOW: usize = 4096;

pub(crate) struct Common {
    pub(crate) port: u16,
    pub(crate) qos: u8,
    pub(crate) count: u64,
    pub(crate) inflight: u16,
}

pub(crate) fn common(args: &Args) -> Result<Common, String> {
    let port = args.get("port", 0u16)?;
    if port == 0 {
        return Err("--port is required".into());
    }
    let qos = args.get("qos", 1u8)?;
    if qos > 1 {
        return Err("--qos is 0 or 1".into());
    }
    Ok(Common {
        port,
        qos,
        count: args.get("count", 200_000u64)?,
        inflight: args.get("inflight", 1000u16)?,
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

/// The clocks when publishing starts.
pub(crate) struct Start {
    wall_ns: u64,
    cpu_ns: u64,
    sys_ns: u64,
}

impl Start {
    pub(crate) fn now() -> Self {
        Start {
            wall_ns: wall_ns(),
            cpu_ns: process_cpu_ns(),
            sys_ns: process_system_ns(),
        }
    }
}

pub(crate) fn report(start: &Start, count: u64, finished: u64) {
    let end_ns = wall_ns();
    let cpu_ns = process_cpu_ns() - start.cpu_ns;
    let sys_ns = process_system_ns().saturating_sub(start.sys_ns);
    println!(
        "RESULT start_ns={} end_ns={end_ns} cpu_ns={cpu_ns} sys_ns={sys_ns} count={count} finished={finished} peak_rss_kib={}",
        start.wall_ns,
        peak_rss_kib()
    );
}

/// Our tokio adapter: typed gateway telemetry commands, outcomes awaited in order.
pub(crate) fn ours(args: &Args) -> Result<(), String> {
    let c = common(args)?;
    let token = args.string("token").unwrap_or_else(|| "BENCH_TOKEN".into());
    let mut config = bench_config();
    config.credentials = Credentials::AccessToken(token);
    config.telemetry_qos = if c.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    config.max_inflight = c.inflight;
    config.max_sub_devices = 100_000;
    let mut options = ClientOptions::with_config("127.0.0.1", c.port, config);
    let coalesce_us = args.get("coalesce-us", 0u64)?;
    if coalesce_us > 0 {
        options.read_coalescing = Some(Duration::from_micros(coalesce_us));
    }
    let batch = args.get("batch", 0usize)?;
    if batch > gateway_tokio::Client::MAX_BATCH {
        return Err(format!(
            "--batch is at most {}",
            gateway_tokio::Client::MAX_BATCH
        ));
    }
    runtime()?.block_on(async move {
        let (client, _events) = connect(options)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let start = Start::now();
        let finished = if batch == 0 {
            one_by_one(&client, c.count).await?
        } else {
            batched(&client, c.count, batch).await?
        };
        // A graceful close: the DISCONNECT goes out after every byte before it.
        client.close().await;
        report(&start, c.count, finished);
        Ok(())
    })
}

/// One request per message, outcomes awaited in order; how many succeeded.
async fn one_by_one(client: &gateway_tokio::Client, count: u64) -> Result<u64, String> {
    let mut window = VecDeque::with_capacity(OUTCOME_WINDOW);
    let mut finished = 0u64;
    for i in 0..count {
        let pending = client
            .send(telemetry_command(i))
            .await
            .map_err(|e| format!("send: {e}"))?;
        window.push_back(pending);
        if window.len() >= OUTCOME_WINDOW {
            if let Some(p) = window.pop_front() {
                if p.await.is_ok() {
                    finished += 1;
                }
            }
        }
    }
    for p in window {
        if p.await.is_ok() {
            finished += 1;
        }
    }
    Ok(finished)
}

/// `Client::send_batch` with `size` messages per request, the same number of outcomes
/// awaited at most; how many succeeded.
async fn batched(client: &gateway_tokio::Client, count: u64, size: usize) -> Result<u64, String> {
    let window_batches = OUTCOME_WINDOW.div_ceil(size);
    let mut window = VecDeque::with_capacity(window_batches);
    let mut finished = 0u64;
    let ok = |answers: Result<gateway_tokio::BatchAnswers, _>| {
        answers.map_or(0, |a| a.iter().filter(|a| a.is_ok()).count() as u64)
    };
    let mut i = 0;
    while i < count {
        let end = count.min(i + size as u64);
        let commands = (i..end).map(telemetry_command).collect();
        i = end;
        let pending = client
            .send_batch(commands)
            .await
            .map_err(|e| format!("send_batch: {e}"))?;
        window.push_back(pending);
        if window.len() >= window_batches {
            if let Some(p) = window.pop_front() {
                finished += ok(p.await);
            }
        }
    }
    for p in window {
        finished += ok(p.await);
    }
    Ok(finished)
}

/// rumqttc 0.25 (the anchor's client): the same payload bytes, built with serde_json by the
/// application; the event loop polled until every publish is finished.
pub(crate) fn rumqttc(args: &Args) -> Result<(), String> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet};
    let c = common(args)?;
    let mut options = MqttOptions::new("bench-rumqttc", "127.0.0.1", c.port);
    options.set_keep_alive(Duration::from_secs(60));
    options.set_inflight(c.inflight);
    options.set_clean_session(true);
    options.set_credentials("BENCH_TOKEN", "");
    let qos = if c.qos == 0 {
        rumqttc::QoS::AtMostOnce
    } else {
        rumqttc::QoS::AtLeastOnce
    };
    runtime()?.block_on(async move {
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                Ok(_) => {}
                Err(e) => return Err(format!("connect: {e}")),
            }
        }
        let start = Start::now();
        let count = c.count;
        let publisher = tokio::spawn({
            let client = client.clone();
            async move {
                for i in 0..count {
                    let payload = serde_json::to_vec(&telemetry_json(i)).unwrap_or_default();
                    if client
                        .publish(TELEMETRY_TOPIC, qos, false, payload)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        });
        let mut finished = 0u64;
        let mut disconnecting = false;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) if c.qos == 1 => finished += 1,
                Ok(Event::Outgoing(Outgoing::Publish(_))) if c.qos == 0 => finished += 1,
                Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(e) => return Err(format!("event loop: {e}")),
            }
            if finished == count && !disconnecting {
                disconnecting = true;
                // Queued after every publish, so written after all of them.
                client
                    .disconnect()
                    .await
                    .map_err(|e| format!("disconnect: {e}"))?;
            }
        }
        let _ = publisher.await;
        report(&start, count, finished);
        Ok(())
    })
}

/// The emulator token the ingest measurement connects with.
pub(crate) const EMULATOR_TOKEN: &str = "BENCH_EMULATOR_GATEWAY";

/// The platform emulator, serving one gateway device, on a current-thread runtime in its own
/// process (so its CPU time is its own).
pub(crate) fn emulator_server() -> Result<(), String> {
    use gateway_emulator::{EmulatorConfig, EmulatorHandle, NewDevice};
    let rt = runtime()?;
    let emu = rt.block_on(async {
        let emu = EmulatorHandle::start(EmulatorConfig::default())
            .await
            .map_err(|e| format!("start: {e}"))?;
        emu.create_device(NewDevice::gateway("bench gateway", EMULATOR_TOKEN))
            .map_err(|e| format!("gateway device: {e}"))?;
        Ok::<_, String>(emu)
    })?;
    println!("PORT {}", emu.addr().port());
    // Serve on a thread of the runtime while this thread reads commands.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rt.block_on(async {
        while let Some(line) = rx.recv().await {
            match line.trim() {
                "count" => {
                    let mut points = 0usize;
                    for d in 0..gateway_benches::DEVICES {
                        if let Ok(t) = emu.telemetry(&gateway_benches::device_name(d)) {
                            points += t.get("temperature").map_or(0, Vec::len);
                        }
                    }
                    println!("COUNT {points}");
                }
                "quit" => break,
                _ => println!("ERROR unknown command"),
            }
        }
    });
    emu.shutdown();
    Ok(())
}
