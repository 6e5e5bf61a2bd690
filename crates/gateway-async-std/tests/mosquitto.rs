//! The futures-io + async-io adapter against a real mosquitto started by the test (see
//! `gateway_testkit::broker_suite`), under smol and under async-std. The connection runs on
//! its own thread, so the suite's blocking broker control cannot stall it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gateway_async_std::connect;
use gateway_testkit::broker_suite;

macro_rules! on_both_executors {
    ($($check:ident),* $(,)?) => {$(
        mod $check {
            use super::*;

            #[test]
            fn smol() {
                smol::block_on(broker_suite::$check(connect));
            }

            #[test]
            fn async_std() {
                async_std::task::block_on(broker_suite::$check(connect));
            }
        }
    )*};
}

on_both_executors!(
    connects_with_v311_and_v5,
    wrong_password_is_a_typed_refusal,
    broker_restart_during_qos1_stream,
    tls_with_a_test_ca,
    mutual_tls_required,
    wrong_ca_is_a_tls_error,
);
