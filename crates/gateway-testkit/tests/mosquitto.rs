//! The mosquitto harness against the real broker and command-line clients.
//!
//! TLS runs against the broker wait for `gateway_testkit::pki`; the configuration text for
//! TLS is unit-tested in `src/mosquitto/config.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use gateway_testkit::mosquitto::{
    BrokerConfig, BrokerError, ClientOptions, CountingSubscriber, Mosquitto, SubscriberOptions,
};

const WAIT: Duration = Duration::from_secs(10);

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn published_messages_are_counted() {
    let broker = Mosquitto::start(BrokerConfig::new()).unwrap();
    assert_eq!(broker.addr().ip().to_string(), "127.0.0.1");
    assert!(broker.log().contains(" running"), "{}", broker.log());
    let sub = CountingSubscriber::start(&broker, "t/count/#", 1, "count-sub").unwrap();
    assert_eq!(sub.count(), 0, "probes are not counted");

    let payloads: [&[u8]; 4] = [b"one", b"two words", b"bin\0ary\nline", b""];
    for (i, payload) in payloads.iter().enumerate() {
        broker.publish(&format!("t/count/{i}"), payload, 1).unwrap();
    }
    assert_eq!(sub.wait_for_count(4, WAIT).unwrap(), 4);
    assert_eq!(
        sub.payloads(),
        payloads.iter().map(|p| p.to_vec()).collect::<Vec<_>>()
    );
    let messages = sub.messages();
    assert_eq!(messages[1].topic, "t/count/1");
    assert_eq!(messages[1].payload_str(), "two words");
    assert!(messages.iter().all(|m| m.qos == 1 && !m.retain));
    assert_eq!(sub.distinct_payloads().len(), 4);

    // A topic with a space, QoS 0, and the predicate form of waiting.
    broker.publish("t/count/a b", "spaced", 0).unwrap();
    sub.wait_for(WAIT, |m| {
        m.iter().any(|m| m.topic == "t/count/a b" && m.qos == 0)
    })
    .unwrap();
    assert_eq!(sub.restarts(), 0);

    // A bounded wait that cannot succeed says what it waited for.
    let err = sub
        .wait_for_count(100, Duration::from_millis(200))
        .unwrap_err();
    assert!(
        matches!(err, BrokerError::WaitTimeout { received: 5, .. }),
        "{err}"
    );
}

#[test]
fn password_file_rejects_wrong_passwords_and_accepts_right_ones() {
    let broker = Mosquitto::start(
        BrokerConfig::new()
            .user("alice", "secret")
            .user("bob", "pa ss:word"),
    )
    .unwrap();
    let passwd = std::fs::read_to_string(broker.dir().join("passwd")).unwrap();
    assert!(passwd.starts_with("alice:$"), "hashed: {passwd}");
    assert!(!passwd.contains("secret"), "hashed: {passwd}");

    let alice = broker.client_options().credentials("alice", "secret");
    let sub = CountingSubscriber::start_with(
        &broker,
        SubscriberOptions::new("t/auth", 1, "auth-sub").client(alice.clone()),
    )
    .unwrap();

    let wrong = broker.client_options().credentials("alice", "wrong");
    let err = broker
        .publish_with(&wrong, "t/auth", b"nope", 1, false)
        .unwrap_err();
    assert!(
        matches!(err, BrokerError::CommandFailed { ref program, .. } if program == "mosquitto_pub"),
        "{err}"
    );
    assert!(err.to_string().contains("not authorised"), "{err}");
    let anonymous = broker.publish("t/auth", "anon", 1).unwrap_err();
    assert!(
        matches!(anonymous, BrokerError::CommandFailed { .. }),
        "{anonymous}"
    );

    broker
        .publish_with(&alice, "t/auth", b"alice", 1, false)
        .unwrap();
    let bob = ClientOptions::new().credentials("bob", "pa ss:word");
    broker
        .publish_with(&bob, "t/auth", b"bob", 1, false)
        .unwrap();
    sub.wait_for_distinct(2, WAIT).unwrap();
    assert_eq!(sub.payloads(), [b"alice".to_vec(), b"bob".to_vec()]);

    // A subscriber with a wrong password never gets going, and says so in bounded time.
    let err = CountingSubscriber::start_with(
        &broker,
        SubscriberOptions::new("t/auth", 1, "bad-sub")
            .client(wrong)
            .ready_timeout(Duration::from_secs(1)),
    )
    .unwrap_err();
    assert!(matches!(err, BrokerError::WaitTimeout { .. }), "{err}");
    assert!(err.to_string().contains("not authorised"), "{err}");
}

#[test]
fn restart_keeps_queued_messages_of_a_persistent_session() {
    let mut broker = Mosquitto::start(BrokerConfig::new().persistence(true)).unwrap();
    let port = broker.port();
    let sub = CountingSubscriber::start(&broker, "t/persist", 1, "persist-sub").unwrap();
    broker.publish("t/persist", "before", 1).unwrap();
    sub.wait_for_payload("before", WAIT).unwrap();

    // The subscriber is away: the broker queues for its session.
    sub.pause().unwrap();
    broker.publish("t/persist", "queued", 1).unwrap();
    broker.stop().unwrap(); // SIGTERM: mosquitto writes its database
    assert!(!broker.is_running());
    let db = broker.persistence_dir().unwrap().join("mosquitto.db");
    assert!(db.is_file(), "{}", broker.log_tail());
    broker.restart().unwrap();
    assert_eq!(broker.port(), port);

    sub.resume();
    sub.wait_for_payload("queued", WAIT).unwrap();
    assert_eq!(sub.payloads(), [b"before".to_vec(), b"queued".to_vec()]);
    assert!(sub.restarts() >= 1);
}

#[test]
fn subscriber_reconnects_by_itself_across_a_restart() {
    let mut broker = Mosquitto::start(BrokerConfig::new().persistence(true)).unwrap();
    let sub = CountingSubscriber::start(&broker, "t/reconnect", 1, "reconnect-sub").unwrap();
    broker.restart().unwrap();
    // Published at once, most likely before mosquitto_sub is back: the restored session
    // holds it until then.
    broker.publish("t/reconnect", "after-restart", 1).unwrap();
    sub.wait_for_payload("after-restart", WAIT).unwrap();
    sub.wait_subscribed(WAIT).unwrap();
    broker.publish("t/reconnect", "later", 1).unwrap();
    sub.wait_for_count(2, WAIT).unwrap();
    // mosquitto_sub reconnected on its own: the harness did not have to start it again.
    assert_eq!(sub.restarts(), 0, "{}", sub.stderr());
}

#[test]
fn kill_then_restart() {
    let mut broker = Mosquitto::start(BrokerConfig::new()).unwrap();
    let sub = CountingSubscriber::start(&broker, "t/kill", 1, "kill-sub").unwrap();
    let pid = broker.pid().unwrap();
    broker.kill().unwrap();
    assert!(!alive(pid));
    assert!(!broker.is_running());
    assert!(matches!(
        broker.publish("t/kill", "lost", 1),
        Err(BrokerError::CommandFailed { .. })
    ));
    broker.kill().unwrap(); // killing a dead broker is a no-op
    broker.stop().unwrap(); // so is stopping it

    broker.restart().unwrap();
    assert!(broker.is_running());
    // Without persistence the session is gone; mosquitto_sub subscribes again on connect.
    sub.wait_subscribed(WAIT).unwrap();
    broker.publish("t/kill", "after-kill", 1).unwrap();
    sub.wait_for_payload("after-kill", WAIT).unwrap();
    assert_eq!(sub.payloads(), [b"after-kill".to_vec()]);
}

#[test]
fn sigkill_keeps_only_what_autosave_wrote() {
    // autosave every second: a message queued 2.5 s before the crash survives it.
    let mut broker = Mosquitto::start(
        BrokerConfig::new()
            .persistence(true)
            .autosave_interval_secs(1),
    )
    .unwrap();
    let sub = CountingSubscriber::start(&broker, "t/autosave", 1, "autosave-sub").unwrap();
    sub.pause().unwrap();
    broker.publish("t/autosave", "saved", 1).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    broker.kill().unwrap();
    broker.restart().unwrap();
    sub.resume();
    sub.wait_for_payload("saved", WAIT).unwrap();

    // Without autosave (mosquitto's default interval is 30 min) a crash loses the queue.
    let mut broker = Mosquitto::start(BrokerConfig::new().persistence(true)).unwrap();
    let sub = CountingSubscriber::start(&broker, "t/autosave", 1, "no-autosave-sub").unwrap();
    sub.pause().unwrap();
    broker.publish("t/autosave", "unsaved", 1).unwrap();
    broker.kill().unwrap();
    broker.restart().unwrap();
    sub.resume();
    sub.wait_subscribed(WAIT).unwrap();
    broker.publish("t/autosave", "marker", 1).unwrap();
    sub.wait_for_payload("marker", WAIT).unwrap();
    assert_eq!(sub.payloads(), [b"marker".to_vec()]);
}

#[test]
fn a_bad_configuration_fails_with_the_log() {
    let err = Mosquitto::start(BrokerConfig::new().extra_line("no_such_option 1")).unwrap_err();
    assert!(matches!(err, BrokerError::Exited { .. }), "{err}");
    assert!(err.to_string().contains("no_such_option"), "{err}");
}

#[test]
fn drop_kills_the_processes_and_removes_the_directory() {
    let broker = Mosquitto::start(BrokerConfig::new()).unwrap();
    let pid = broker.pid().unwrap();
    let dir = broker.dir().to_path_buf();
    let sub = CountingSubscriber::start(&broker, "t/drop", 0, "drop-sub").unwrap();
    assert!(alive(pid) && dir.is_dir());
    drop(sub);
    drop(broker);
    assert!(!alive(pid));
    assert!(!dir.exists());

    // Also when the test panics.
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let broker = Mosquitto::start(BrokerConfig::new()).unwrap();
        tx.send((broker.pid().unwrap(), broker.dir().to_path_buf()))
            .unwrap();
        panic!("test failure while the broker runs");
    });
    assert!(result.is_err());
    let (pid, dir) = rx.recv().unwrap();
    assert!(!alive(pid));
    assert!(!dir.exists());
}
