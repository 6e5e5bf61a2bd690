//! Replays fuzz inputs outside libFuzzer, with a normal test's backtrace:
//! `FUZZ_REPLAY=emulator:artifacts/emulator/crash-... cargo test --test replay -- --nocapture`.

#[test]
fn replay() {
    let Some(spec) = std::env::var_os("FUZZ_REPLAY") else {
        return;
    };
    let spec = spec.to_string_lossy().into_owned();
    let (target, path) = spec.split_once(':').expect("target:path");
    let data = std::fs::read(path).expect("readable input");
    match target {
        "decode" => gateway_fuzz::decode::run(&data),
        "connection" => gateway_fuzz::connection::run(&data),
        "payload" => gateway_fuzz::payload::run(&data),
        "emulator" => gateway_fuzz::emulator::run(&data),
        other => panic!("unknown target {other}"),
    }
}
