//! The tokio adapter against a real mosquitto started by the test (see
//! `gateway_testkit::broker_suite`). Multi-threaded: the broker harness blocks a thread.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gateway_testkit::broker_suite;
use gateway_tokio::connect;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_with_v311_and_v5() {
    broker_suite::connects_with_v311_and_v5(connect).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_a_typed_refusal() {
    broker_suite::wrong_password_is_a_typed_refusal(connect).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_during_qos1_stream() {
    broker_suite::broker_restart_during_qos1_stream(connect).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_test_ca() {
    broker_suite::tls_with_a_test_ca(connect).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_required() {
    broker_suite::mutual_tls_required(connect).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_is_a_tls_error() {
    broker_suite::wrong_ca_is_a_tls_error(connect).await;
}
