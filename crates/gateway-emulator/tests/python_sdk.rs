//! Conformance checked by a client nobody here wrote: the official ThingsBoard Python SDK
//! (`tb-mqtt-client`, pinned in `tests/python_sdk/requirements.txt`) against the emulator.
//!
//! Each test starts an [`EmulatorHandle`] on an ephemeral port, sets up devices, then runs one
//! scenario of `tests/python_sdk/scenarios.py` in a subprocess (bounded in time). The script
//! drives the SDK, asserts what the SDK sees (callbacks, PUBACKs, responses) and exits non-zero
//! on failure. While it runs it may ask the emulator's control API for things only the platform
//! can do (push shared attributes, send an RPC and await the reply, claim as a customer, read
//! stored data): one JSON request per line on its stdout, one JSON answer per line on its stdin.
//! Afterwards the test asserts the emulator's side (stored telemetry, attributes, devices,
//! children, RPC outcomes).
//!
//! The interpreter is `$TB_SDK_PYTHON`, or else `.venv-sdk/bin/python` at the workspace root,
//! which the first test creates when it is missing (`python3 -m venv` plus the pinned
//! requirements). If that fails, the tests fail (they never skip) and say how to create it:
//!
//! ```text
//! python3 -m venv .venv-sdk && .venv-sdk/bin/pip install -r crates/gateway-emulator/tests/python_sdk/requirements.txt
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gateway_emulator::{
    ClaimOutcome, ClientRpcAnswer, ClientRpcCall, Credentials, EmulatorConfig, EmulatorHandle,
    LimitConfig, NewDevice, OtaPackage, ProvisionProfile, ProvisionStrategy, RpcCall, RpcOutcome,
    TenantLimits,
};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// Longest a scenario may run (the firmware flows sleep about 5 s inside the SDK).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(90);
/// Most control requests one scenario may make.
const MAX_REQUESTS: usize = 10_000;
/// The command that creates the venv, from the workspace root.
const VENV_HINT: &str = "python3 -m venv .venv-sdk && .venv-sdk/bin/pip install -r \
                         crates/gateway-emulator/tests/python_sdk/requirements.txt";

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python_sdk")
}

/// The venv's interpreter. `$TB_SDK_PYTHON` wins; otherwise the default venv is created on
/// first use (once per test process) with `python3 -m venv` and the pinned requirements, so
/// `cargo test --workspace` needs nothing set up by hand. Any failure fails the test with
/// instructions; these tests never skip.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TB_SDK_PYTHON") {
        let path = PathBuf::from(p);
        assert!(
            path.exists(),
            "$TB_SDK_PYTHON = {} does not exist. Unset it to let the tests create the default \
             venv, or create one with:\n  {VENV_HINT}",
            path.display()
        );
        return path;
    }
    static DEFAULT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    match DEFAULT.get_or_init(create_default_venv) {
        Ok(path) => path.clone(),
        Err(why) => panic!(
            "the Python SDK venv could not be created: {why}\n\
             These tests run the official ThingsBoard Python SDK against the emulator. \
             Create the venv from the workspace root with:\n  {VENV_HINT}\n\
             or point $TB_SDK_PYTHON at a Python that has the pinned requirements installed."
        ),
    }
}

/// `.venv-sdk` at the workspace root, created and filled if its interpreter is missing.
fn create_default_venv() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let venv = root.join(".venv-sdk");
    let python = venv.join("bin/python");
    if python.exists() {
        return Ok(python);
    }
    let run = |program: &Path, args: &[&std::ffi::OsStr]| -> Result<(), String> {
        let out = std::process::Command::new(program)
            .args(args)
            .output()
            .map_err(|e| format!("running {}: {e}", program.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} {:?} failed: {}",
                program.display(),
                args,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    run(
        Path::new("python3"),
        &["-m".as_ref(), "venv".as_ref(), venv.as_os_str()],
    )?;
    let requirements = sdk_dir().join("requirements.txt");
    run(
        &venv.join("bin/pip"),
        &[
            "install".as_ref(),
            "--quiet".as_ref(),
            "--disable-pip-version-check".as_ref(),
            "-r".as_ref(),
            requirements.as_os_str(),
        ],
    )?;
    Ok(python)
}

/// What a scenario run left behind for the Rust-side assertions.
#[derive(Debug, Default)]
struct Run {
    /// Every control request with its answer, in order.
    calls: Vec<(Value, Value)>,
}

impl Run {
    /// Answers of the requests with this `op`.
    fn answers(&self, op: &str) -> Vec<&Value> {
        self.calls
            .iter()
            .filter(|(req, _)| req["op"] == op)
            .map(|(_, ans)| ans)
            .collect()
    }
}

/// Runs one scenario of `scenarios.py` against `emu`; panics with the script's stderr on failure.
async fn run_scenario(emu: &EmulatorHandle, scenario: &str) -> Run {
    let work = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("python_sdk")
        .join(scenario);
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let mut child = Command::new(python())
        .arg("-u")
        .arg(sdk_dir().join("scenarios.py"))
        .arg(scenario)
        .env("TB_HOST", "127.0.0.1")
        .env("TB_PORT", emu.addr().port().to_string())
        .env("TB_SDK_REQUIREMENTS", sdk_dir().join("requirements.txt"))
        .env("TB_VENV_HINT", VENV_HINT)
        .env("PIP_NO_INPUT", "1")
        .current_dir(&work)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}\n{VENV_HINT}", python().display()));
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = child.stderr.take().unwrap();
    let stderr_task = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });

    let mut run = Run::default();
    let mut done = false;
    let driven = tokio::time::timeout(SCENARIO_TIMEOUT, async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            assert!(run.calls.len() < MAX_REQUESTS, "too many control requests");
            let request: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("bad control line {line:?}: {e}"));
            if request["op"] == "done" {
                done = true;
            }
            let answer = control(emu, &request).await;
            let mut out = answer.to_string();
            out.push('\n');
            // The script may have exited already (after "done"); ignore a closed pipe.
            let _ = stdin.write_all(out.as_bytes()).await;
            run.calls.push((request, answer));
        }
        child.wait().await.unwrap()
    })
    .await;
    let status = match driven {
        Ok(status) => status,
        Err(_) => {
            let _ = child.kill().await;
            let err = stderr_task.await.unwrap_or_default();
            panic!(
                "scenario {scenario} timed out after {SCENARIO_TIMEOUT:?}\n--- stderr ---\n{err}"
            );
        }
    };
    let err = stderr_task.await.unwrap_or_default();
    assert!(
        status.success() && done,
        "scenario {scenario} failed ({status}, finished: {done})\n--- stderr ---\n{err}"
    );
    run
}

fn str_arg<'a>(req: &'a Value, key: &str) -> Result<&'a str, String> {
    req[key]
        .as_str()
        .ok_or_else(|| format!("missing string argument {key:?}"))
}

fn rpc_outcome_json(outcome: &RpcOutcome) -> Value {
    match outcome {
        RpcOutcome::Delivered => json!({"outcome": "delivered"}),
        RpcOutcome::Reply(data) => json!({"outcome": "reply", "data": data}),
        RpcOutcome::Timeout => json!({"outcome": "timeout"}),
        RpcOutcome::NoActiveConnection => json!({"outcome": "no_active_connection"}),
        RpcOutcome::DeviceDeleted => json!({"outcome": "device_deleted"}),
        other => json!({"outcome": format!("{other:?}")}),
    }
}

/// The control API as the script sees it: `{"op":..,..}` → `{"ok":..}` or `{"error":".."}`.
async fn control(emu: &EmulatorHandle, req: &Value) -> Value {
    match control_inner(emu, req).await {
        Ok(v) => json!({ "ok": v }),
        Err(e) => json!({ "error": e }),
    }
}

async fn control_inner(emu: &EmulatorHandle, req: &Value) -> Result<Value, String> {
    let op = str_arg(req, "op")?;
    let device = || str_arg(req, "device");
    let err = |e: gateway_emulator::ControlError| e.to_string();
    match op {
        "done" => Ok(Value::Null),
        "set_shared" => {
            let values = req["values"].as_object().cloned().ok_or("values")?;
            emu.set_shared_attributes(device()?, values).map_err(err)?;
            Ok(Value::Null)
        }
        "delete_shared" => {
            let keys: Vec<String> =
                serde_json::from_value(req["keys"].clone()).map_err(|e| format!("keys: {e}"))?;
            emu.delete_shared_attributes(device()?, &keys)
                .map_err(err)?;
            Ok(Value::Null)
        }
        "rpc" => {
            let method = str_arg(req, "method")?;
            let mut call = if req["oneway"].as_bool().unwrap_or(false) {
                RpcCall::one_way(method, req["params"].clone())
            } else {
                RpcCall::two_way(method, req["params"].clone())
            };
            if let Some(ms) = req["timeout_ms"].as_u64() {
                call = call.with_timeout(Duration::from_millis(ms));
            }
            let outcome = emu.rpc(device()?, call).await.map_err(err)?;
            Ok(rpc_outcome_json(&outcome))
        }
        "claim" => {
            let outcome = emu
                .claim_device(device()?, str_arg(req, "secret")?)
                .map_err(err)?;
            Ok(json!(match outcome {
                ClaimOutcome::Success => "success",
                ClaimOutcome::AlreadyClaimed => "already_claimed",
                ClaimOutcome::Failure => "failure",
            }))
        }
        "latest_telemetry" => {
            let latest = emu.latest_telemetry(device()?).map_err(err)?;
            Ok(Value::Object(
                latest.into_iter().map(|(k, v)| (k, v.value)).collect(),
            ))
        }
        "client_attributes" => Ok(Value::Object(
            emu.client_attributes(device()?).map_err(err)?,
        )),
        "shared_attributes" => Ok(Value::Object(
            emu.shared_attributes(device()?).map_err(err)?,
        )),
        "children" => Ok(json!(emu
            .connected_children(str_arg(req, "gateway")?)
            .map_err(err)?)),
        "device" => Ok(match emu.device(device()?) {
            None => Value::Null,
            Some(d) => json!({
                "name": d.name,
                "type": d.device_type,
                "gateway": d.gateway,
                "claimed": d.claimed,
                "created_by_gateway": d.created_by_gateway,
            }),
        }),
        "drop_session" => {
            // Closes the device's connection without a DISCONNECT (a network failure).
            let name = device()?;
            let session = emu
                .sessions()
                .into_iter()
                .find(|s| s.device.as_deref() == Some(name))
                .ok_or_else(|| format!("{name} has no session"))?;
            emu.drop_session(session.id).map_err(err)?;
            Ok(Value::Null)
        }
        other => Err(format!("unknown op {other:?}")),
    }
}

fn latest(emu: &EmulatorHandle, device: &str, key: &str) -> Value {
    emu.latest_telemetry(device).unwrap()[key].value.clone()
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

// ---- gateway API ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_connect_telemetry_attributes() {
    let emu = EmulatorHandle::start(EmulatorConfig::default())
        .await
        .unwrap();
    emu.create_device(NewDevice::gateway("Gateway", "GW_TOKEN"))
        .unwrap();
    let run = run_scenario(&emu, "gateway_telemetry_attributes").await;

    let a = emu.device("Sensor A").unwrap();
    assert_eq!(a.device_type, "thermometer");
    assert_eq!(a.created_by_gateway.as_deref(), Some("Gateway"));
    let b = emu.device("Sensor B").unwrap();
    assert_eq!(b.device_type, "default", "implicit connect");
    assert_eq!(b.created_by_gateway.as_deref(), Some("Gateway"));
    // The script checked the children while connected; it has disconnected since.
    let mut children: Vec<String> =
        serde_json::from_value(run.answers("children")[0]["ok"].clone()).unwrap();
    children.sort();
    assert_eq!(children, ["Sensor A", "Sensor B"]);
    assert!(emu.connected_children("Gateway").unwrap().is_empty());

    let t = emu.telemetry("Sensor A").unwrap();
    assert_eq!(t["temperature"][0].ts, 1_700_000_000_000);
    assert_eq!(t["temperature"][0].value, json!(21.5));
    assert_eq!(t["humidity"][0].value, json!(40));
    assert_eq!(latest(&emu, "Sensor A", "status"), json!("ok"));
    assert_eq!(latest(&emu, "Sensor A", "count"), json!(3));
    assert_eq!(latest(&emu, "Sensor B", "t"), json!(1));
    assert_eq!(
        emu.client_attributes("Sensor A").unwrap(),
        obj(json!({"firmware": "1.0.3", "location": {"room": 4}}))
    );
    // The SDK sends nothing about the gateway itself here.
    assert!(emu.latest_telemetry("Gateway").unwrap().is_empty());
    emu.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_shared_attribute_push() {
    let emu = EmulatorHandle::start(EmulatorConfig::default())
        .await
        .unwrap();
    emu.create_device(NewDevice::gateway("Gateway", "GW_TOKEN"))
        .unwrap();
    run_scenario(&emu, "gateway_shared_attributes").await;
    assert_eq!(
        emu.shared_attributes("Valve").unwrap(),
        obj(json!({"setpoint": 42}))
    );
    emu.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_attribute_requests() {
    let emu = EmulatorHandle::start(EmulatorConfig::default())
        .await
        .unwrap();
    emu.create_device(NewDevice::gateway("Gateway", "GW_TOKEN"))
        .unwrap();
    // A device that exists before the gateway announces it (adopted, not created).
    emu.create_device(NewDevice::device("Meter", "unused").with_credentials(None))
        .unwrap();
    emu.set_shared_attributes("Meter", obj(json!({"limit": 10, "unit": "kWh"})))
        .unwrap();
    run_scenario(&emu, "gateway_attribute_requests").await;
    assert_eq!(
        emu.client_attributes("Meter").unwrap(),
        obj(json!({"serial": "X1", "hw": 2}))
    );
    assert_eq!(emu.device("Meter").unwrap().created_by_gateway, None);
    emu.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_two_way_rpc() {
    let emu = EmulatorHandle::start(EmulatorConfig::default())
        .await
        .unwrap();
    emu.create_device(NewDevice::gateway("Gateway", "GW_TOKEN"))
        .unwrap();
    let run = run_scenario(&emu, "gateway_rpc").await;
    let rpcs = run.answers("rpc");
    assert_eq!(rpcs.len(), 3);
    assert_eq!(
        rpcs[0]["ok"],
        json!({"outcome": "reply", "data": {"ok": true, "echo": {"on": true}, "id": 0}})
    );
    assert_eq!(rpcs[1]["ok"], json!({"outcome": "delivered"}));
    assert_eq!(rpcs[2]["ok"], json!({"outcome": "timeout"}));
    emu.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_reconnect_and_child_disconnect() {
    let emu = EmulatorHandle::start(EmulatorConfig::default())
        .await
        .unwrap();
    emu.create_device(NewDevice::gateway("Gateway", "GW_TOKEN"))
        .unwrap();
    let run = run_scenario(&emu, "gateway_reconnect").await;
    let outcomes: Vec<&Value> = run.answers("rpc").into_iter().map(|a| &a["ok"]).collect();
    assert_eq!(
        outcomes,
        [
            &json!({"outcome": "no_active_connection"}),
            &json!({"outcome": "no_active_connection"})
        ]
    );
    // Only the value pushed while "Pump" was connected through the new session got through, and
    // the platform kept all of them.
    assert_eq!(
        emu.shared_attributes("Pump").unwrap(),
        obj(json!({"speed": 4}))
    );
    assert_eq!(latest(&emu, "Pump", "flow"), json!(7));
    emu.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_claim() {
    let emu = EmulatorHandle::start(EmulatorConfig::default())
        .await
        .unwrap();
    emu.create_device(NewDevice::gateway("Gateway", "GW_TOKEN"))
        .unwrap();
    let run = run_scenario(&emu, "gateway_claim").await;
    let claims: Vec<&Value> = run.answers("claim").into_iter().map(|a| &a["ok"]).collect();
    assert_eq!(claims, [&json!("failure"), &json!("success")]);
    assert!(emu.device("Tracker").unwrap().claimed);
    emu.shutdown();
}

// ---- device API ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_api_both_ways() {
    let emu = EmulatorHandle::start(EmulatorConfig::default())
        .await
        .unwrap();
    emu.create_device(NewDevice::device("Thermostat", "DEV_TOKEN"))
        .unwrap();
    let seen: Arc<Mutex<Vec<ClientRpcCall>>> = Arc::default();
    let log = seen.clone();
    emu.set_client_rpc_handler(Some(Box::new(move |call: &ClientRpcCall| {
        log.lock().unwrap().push(call.clone());
        match call.method.as_str() {
            "getTime" => ClientRpcAnswer::Reply(json!({"time": 1_700_000_000_000_i64})),
            _ => ClientRpcAnswer::Error("unknown method".into()),
        }
    })));
    let run = run_scenario(&emu, "device_api").await;

    let t = emu.telemetry("Thermostat").unwrap();
    assert_eq!(latest(&emu, "Thermostat", "temperature"), json!(22.5));
    let a: Vec<(i64, Value)> = t["a"].iter().map(|p| (p.ts, p.value.clone())).collect();
    assert_eq!(
        a,
        [(1_700_000_000_000, json!(1)), (1_700_000_000_001, json!(2))]
    );
    assert_eq!(
        emu.client_attributes("Thermostat").unwrap(),
        obj(json!({"model": "X", "ver": 3}))
    );
    let calls = seen.lock().unwrap().clone();
    let methods: Vec<&str> = calls.iter().map(|c| c.method.as_str()).collect();
    assert_eq!(
        methods,
        ["getTime", "selfDestruct"],
        "getSessionLimits is answered by the transport"
    );
    assert_eq!(calls[0].params, json!({"tz": "UTC"}));
    assert_eq!(
        run.answers("rpc")[0]["ok"],
        json!({"outcome": "reply", "data": {"result": 42}})
    );
    assert!(emu.device("Thermostat").unwrap().claimed);
    emu.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_limits_reach_the_sdk() {
    let emu = EmulatorHandle::start(EmulatorConfig::default())
        .await
        .unwrap();
    emu.create_device(NewDevice::device("Limited", "DEV_TOKEN"))
        .unwrap();
    emu.create_device(NewDevice::gateway("Gateway", "GW_TOKEN"))
        .unwrap();
    // The same strings are expected (scaled to 80 %) in scenarios.py.
    emu.set_rate_limits(TenantLimits {
        device: LimitConfig::new("200:1,6000:60", "100:1,3000:60", "1000:1,30000:60"),
        gateway: LimitConfig::new("500:1", "400:1", "5000:1"),
        gateway_device: LimitConfig::new("50:1", "40:1", "300:1"),
        ..TenantLimits::default()
    })
    .unwrap();
    run_scenario(&emu, "session_limits").await;
    assert_eq!(latest(&emu, "Limited", "x"), json!(1));
    assert_eq!(latest(&emu, "Child", "y"), json!(2));
    assert_eq!(latest(&emu, "Gateway", "z"), json!(3));
    emu.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_success_and_errors() {
    let emu = EmulatorHandle::start(EmulatorConfig::default())
        .await
        .unwrap();
    emu.add_provision_profile(ProvisionProfile {
        device_type: "provisioned".into(),
        key: "PROV_KEY".into(),
        secret: "PROV_SECRET".into(),
        strategy: ProvisionStrategy::AllowCreateNew,
    });
    emu.create_device(NewDevice::device("Taken", "TAKEN_TOKEN"))
        .unwrap();
    run_scenario(&emu, "provision").await;

    let first = emu.device("Provisioned 1").unwrap();
    assert_eq!(first.device_type, "provisioned");
    assert!(matches!(
        first.credentials,
        Some(Credentials::AccessToken(_))
    ));
    assert_eq!(latest(&emu, "Provisioned 1", "hello"), json!("world"));
    assert_eq!(
        emu.device("Provisioned 2").unwrap().credentials,
        Some(Credentials::AccessToken("MY_TOKEN".into()))
    );
    assert_eq!(
        emu.device("Provisioned 3").unwrap().credentials,
        Some(Credentials::Basic {
            client_id: Some("cid-3".into()),
            username: Some("user-3".into()),
            password: Some("pass-3".into()),
        })
    );
    assert!(!emu.device("Provisioned 3").unwrap().gateway);
    assert!(emu.device("Provisioned GW").unwrap().gateway);
    assert!(emu.device("Never").is_none(), "NOT_FOUND creates nothing");
    emu.shutdown();
}

// ---- firmware (OTA) ------------------------------------------------------------------------

/// The firmware image; `scenarios.py` builds the same bytes.
fn firmware_image() -> Bytes {
    (0..20_000u32)
        .map(|i| u8::try_from((i * 31 + 7) % 251).unwrap())
        .collect()
}

/// SHA-256 of [`firmware_image`], computed once with Python's `hashlib` (the scenario checks
/// it again).
const FIRMWARE_SHA256: &str = "2f7c06c11ae8773025de62a6eee9c83c0638a2b80c2b47363227d4676f1a9eff";

/// CRC-32 (IEEE) as ThingsBoard stores it: Guava's `HashCode.toString()`, i.e. the
/// little-endian bytes of the checksum in hex.
fn crc32_guava_hex(data: &[u8]) -> String {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    (!crc)
        .to_le_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn fw_states(emu: &EmulatorHandle, device: &str) -> Vec<String> {
    emu.telemetry(device).unwrap()["fw_state"]
        .iter()
        .map(|p| p.value.as_str().unwrap().to_owned())
        .collect()
}

async fn firmware_case(scenario: &str, algorithm: &str, checksum: String) -> EmulatorHandle {
    let emu = EmulatorHandle::start(EmulatorConfig::default())
        .await
        .unwrap();
    emu.create_device(NewDevice::device("Camera", "CAM_TOKEN"))
        .unwrap();
    emu.assign_ota(
        "Camera",
        true,
        OtaPackage {
            title: "cam-fw".into(),
            version: "2.0".into(),
            data: firmware_image(),
            checksum_algorithm: algorithm.into(),
            checksum,
        },
    )
    .unwrap();
    run_scenario(&emu, scenario).await;
    emu
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_update_in_chunks_sha256() {
    let emu = firmware_case("firmware_chunks", "SHA256", FIRMWARE_SHA256.into()).await;
    assert_eq!(
        fw_states(&emu, "Camera"),
        [
            "IDLE",
            "DOWNLOADING",
            "DOWNLOADED",
            "VERIFIED",
            "UPDATING",
            "UPDATED"
        ]
    );
    assert_eq!(latest(&emu, "Camera", "current_fw_title"), json!("cam-fw"));
    // ThingsBoard's type cast (on by default) stores the numeric string "2.0" as a double.
    assert_eq!(latest(&emu, "Camera", "current_fw_version"), json!(2.0));
    assert_eq!(latest(&emu, "Camera", "fw_error"), json!(""));
    emu.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_update_whole_image_crc32() {
    let crc = crc32_guava_hex(&firmware_image());
    let emu = firmware_case("firmware_whole", "CRC32", crc).await;
    assert_eq!(
        fw_states(&emu, "Camera").last().map(String::as_str),
        Some("UPDATED")
    );
    assert_eq!(latest(&emu, "Camera", "current_fw_version"), json!(2.0));
    emu.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_bad_checksum_is_reported_failed() {
    let wrong = "0".repeat(64);
    let emu = firmware_case("firmware_bad_checksum", "SHA256", wrong).await;
    let states = fw_states(&emu, "Camera");
    assert!(states.contains(&"FAILED".to_owned()), "{states:?}");
    assert!(!states.contains(&"VERIFIED".to_owned()), "{states:?}");
    assert_eq!(
        latest(&emu, "Camera", "current_fw_version"),
        json!("v0"),
        "nothing was installed"
    );
    emu.shutdown();
}
