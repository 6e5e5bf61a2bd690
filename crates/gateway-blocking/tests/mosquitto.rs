//! The blocking adapter against a real mosquitto started by the test (see
//! `gateway_testkit::broker_suite`). The suite is written on the async handle; here it runs
//! on the test thread with `block_on`, connecting through the blocking `connect`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_lite::future::block_on;
use gateway_blocking::{ClientOptions, ConnectError, Events};
use gateway_client::Client;
use gateway_testkit::broker_suite;

async fn connect(options: ClientOptions) -> Result<(Client, Events), ConnectError> {
    gateway_blocking::connect(options).map(|(client, events)| (client.to_async(), events))
}

macro_rules! checks {
    ($($check:ident),* $(,)?) => {$(
        #[test]
        fn $check() {
            block_on(broker_suite::$check(connect));
        }
    )*};
}

checks!(
    connects_with_v311_and_v5,
    wrong_password_is_a_typed_refusal,
    broker_restart_during_qos1_stream,
    tls_with_a_test_ca,
    mutual_tls_required,
    wrong_ca_is_a_tls_error,
);
