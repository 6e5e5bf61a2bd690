//! `send_batch`: several commands as one request, answered together. Each command is
//! answered exactly as it would be if sent alone, in the order given; a batch takes one
//! wake-up and leaves in one write; its size is bounded; and a batch never hangs, whatever
//! happens to the connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;

use std::time::Duration;

use gateway_client::{
    Answer, BatchAnswers, Client, ClientError, Delivery, Driver, FirstAttempt, Queue,
};
use gateway_proto::{AttributeScope, Command, CommandError, RequestError};
use harness::{values, Harness};
use proptest::prelude::*;
use serde_json::json;

#[test]
fn each_command_gets_its_own_answer_in_order() {
    let mut h = Harness::connected(|_| {});
    let batch = h
        .client()
        .send_batch(vec![
            Command::device_attributes("Boiler", values(json!({"model": "X1"}))),
            // Refused by the core; the commands around it go on.
            Command::device_telemetry("", values(json!({"t": 1}))),
            Command::request_device_attributes(
                "Boiler",
                AttributeScope::Client,
                vec!["model".to_string()],
            ),
            Command::device_telemetry("Boiler", values(json!({"t": 21.5}))),
        ])
        .unwrap();
    h.settle();
    let answers = batch.wait().unwrap();
    assert_eq!(answers.len(), 4);
    assert_eq!(answers[0], Ok(Answer::Delivered(Delivery::Acknowledged)));
    assert_eq!(
        answers[1],
        Err(ClientError::Refused(CommandError::EmptyDeviceName))
    );
    match &answers[2] {
        Ok(Answer::Attributes(a)) => {
            assert_eq!(a.device.as_deref(), Some("Boiler"));
            assert_eq!(a.client.get("model"), Some(&json!("X1")));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(answers[3], Ok(Answer::Delivered(Delivery::Acknowledged)));
    assert_eq!(
        h.emu.latest_telemetry("Boiler").unwrap()["t"].value,
        json!(21.5)
    );
}

#[test]
fn a_batch_is_one_wakeup_and_one_write() {
    let mut h = Harness::connected(|o| o.config.subscribe_api = false);
    h.writes.clear();
    // 50 new sub-devices: 50 announcements and 50 telemetry messages, within the in-flight
    // window.
    let commands = (0..50)
        .map(|i| Command::device_telemetry(format!("D{i}"), values(json!({"n": i}))))
        .collect();
    let batch = h.client().send_batch(commands).unwrap();
    h.settle();
    assert_eq!(h.writes.len(), 1, "writes: {:?}", h.writes);
    let answers = batch.wait().unwrap();
    assert_eq!(answers.len(), 50);
    assert!(answers
        .iter()
        .all(|a| *a == Ok(Answer::Delivered(Delivery::Acknowledged))));
}

#[test]
fn empty_and_oversized_batches() {
    let mut h = Harness::connected(|_| {});
    let empty = h.client().send_batch(Vec::new()).unwrap();
    h.settle();
    assert_eq!(empty.wait(), Ok(Vec::new()));

    let too_many = (0..=Client::MAX_BATCH)
        .map(|i| Command::telemetry(values(json!({"n": i}))))
        .collect();
    let requests_before = h.driver.connection().stats().requests;
    assert_eq!(
        h.client().send_batch(too_many).unwrap_err(),
        ClientError::BatchTooLarge {
            len: Client::MAX_BATCH + 1,
            max: Client::MAX_BATCH
        }
    );
    h.settle();
    assert_eq!(h.driver.connection().stats().requests, requests_before);

    let most = (0..Client::MAX_BATCH)
        .map(|i| Command::device_telemetry(format!("D{}", i % 7), values(json!({"n": i}))))
        .collect();
    let full = h.client().send_batch(most).unwrap();
    h.settle();
    let answers = full.wait().unwrap();
    assert_eq!(answers.len(), Client::MAX_BATCH);
    assert!(answers.iter().all(Result::is_ok));
}

#[test]
fn a_batch_counts_as_its_commands_in_a_wakeup() {
    let mut h = Harness::connected(|_| {});
    let before = h.driver.connection().stats().requests;
    let batch = (0..200)
        .map(|i| Command::telemetry(values(json!({"n": i}))))
        .collect();
    let _batch = h.client().send_batch(batch).unwrap();
    let _singles: Vec<_> = (0..100)
        .map(|i| h.client().telemetry(values(json!({"n": i}))).unwrap())
        .collect();
    let now = h.now;
    assert_eq!(
        h.driver.take_requests(now, &h.commands, None),
        Queue::MoreWaiting
    );
    let taken = h.driver.connection().stats().requests - before;
    assert_eq!(taken, Driver::REQUESTS_PER_WAKEUP as u64);
    assert_eq!(h.driver.take_requests(now, &h.commands, None), Queue::Empty);
    assert_eq!(h.driver.connection().stats().requests - before, 300);
}

#[test]
fn close_answers_every_unfinished_command_of_a_batch() {
    let mut h = Harness::new("GW_TOKEN", FirstAttempt::Retry, |_| {});
    // Offline: the batch is buffered and unfinished when the connection closes.
    h.go_offline();
    let batch = h
        .client()
        .send_batch(vec![
            Command::device_telemetry("Boiler", values(json!({"t": 1}))),
            Command::device_telemetry("", values(json!({"t": 2}))),
            Command::device_telemetry("Boiler", values(json!({"t": 3}))),
        ])
        .unwrap();
    h.settle();
    let client = h.client().to_async();
    let closer = std::thread::spawn(move || client.blocking().close());
    while !h.driver.is_finished() {
        h.settle();
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(h);
    closer.join().unwrap();
    assert_eq!(
        batch.wait().unwrap(),
        vec![
            Err(ClientError::Failed(RequestError::Closed)),
            Err(ClientError::Refused(CommandError::EmptyDeviceName)),
            Err(ClientError::Failed(RequestError::Closed)),
        ]
    );
}

#[test]
fn a_batch_waiting_when_the_driver_is_dropped_resolves_closed() {
    let mut h = Harness::connected(|_| {});
    // The emulator never sees these bytes: the PUBACKs never come.
    h.session = None;
    let batch = h
        .client()
        .send_batch(vec![Command::telemetry(values(json!({"t": 1})))])
        .unwrap();
    h.settle();
    drop(h);
    assert_eq!(batch.wait(), Err(ClientError::Closed));
}

/// One step of the model test: a command, and whether it closes the batch being built.
fn command_strategy() -> impl Strategy<Value = Command> {
    let device = prop_oneof![Just("A"), Just("B"), Just("")];
    prop_oneof![
        (device.clone(), 0..100i32)
            .prop_map(|(d, n)| Command::device_telemetry(d, values(json!({"n": n})))),
        (device.clone(), 0..100i32)
            .prop_map(|(d, n)| Command::device_attributes(d, values(json!({"k": n})))),
        device
            .clone()
            .prop_map(|d| Command::request_device_attributes(
                d,
                AttributeScope::Client,
                vec!["k".to_string()]
            )),
        (0..3u64).prop_map(|id| Command::device_rpc_reply("A", id, json!({}))),
        (0..100i32).prop_map(|n| Command::telemetry(values(json!({"own": n})))),
    ]
}

/// Runs `commands` through a fresh connection, grouped into batches of these sizes (size 0:
/// the next command alone, without a batch); every answer in command order.
fn run(commands: &[Command], groups: &[usize]) -> BatchAnswers {
    let mut h = Harness::new("GW_TOKEN", FirstAttempt::MustSucceed, |o| {
        o.config.max_buffered_bytes = 2_000;
    });
    h.startup.take().unwrap().wait_blocking().unwrap();
    let mut singles = Vec::new();
    let mut batches = Vec::new();
    let mut rest = commands;
    let mut sizes = groups.iter().copied().cycle();
    while !rest.is_empty() {
        let size = sizes.next().unwrap_or(0);
        if size == 0 {
            singles.push((batches.len(), h.client().send(rest[0].clone()).unwrap()));
            batches.push(None);
            rest = &rest[1..];
        } else {
            let (now, later) = rest.split_at(size.min(rest.len()));
            batches.push(Some(h.client().send_batch(now.to_vec()).unwrap()));
            rest = later;
        }
    }
    h.settle();
    h.advance(Duration::from_secs(60));
    let mut singles = singles.into_iter();
    let mut answers = Vec::new();
    for batch in batches {
        match batch {
            Some(b) => answers.extend(b.wait().unwrap()),
            None => answers.push(singles.next().unwrap().1.wait()),
        }
    }
    answers
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Sending commands in batches (of random sizes, mixed with single sends) answers each
    /// exactly as sending every command alone does: same outcomes, same order, including
    /// refusals by the core and a full buffer.
    #[test]
    fn batches_answer_like_single_sends(
        commands in prop::collection::vec(command_strategy(), 0..60),
        groups in prop::collection::vec(0..12usize, 1..6),
    ) {
        let alone = run(&commands, &[0]);
        let batched = run(&commands, &groups);
        prop_assert_eq!(alone.len(), commands.len());
        prop_assert_eq!(batched, alone);
    }
}
