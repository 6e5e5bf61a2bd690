//! `tbgw emulator`: the ThingsBoard emulator as a server on 127.0.0.1 until Ctrl-C, with
//! devices from flags or a JSON file. Prints the address, every device created, and
//! sessions as they come and go.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use gateway_emulator::{Credentials, EmulatorConfig, EmulatorHandle, NewDevice, SessionId};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::args::EmulatorArgs;
use crate::BoxError;

/// The config file: `{"devices": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    devices: Vec<DeviceEntry>,
}

/// One device of the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceEntry {
    name: String,
    #[serde(rename = "type")]
    device_type: Option<String>,
    #[serde(default)]
    gateway: bool,
    token: Option<String>,
    basic: Option<BasicEntry>,
    #[serde(default)]
    shared: Map<String, Value>,
}

/// MQTT basic credentials in the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicEntry {
    client_id: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// A device to create, with its shared attributes.
#[derive(Debug, Clone, PartialEq)]
struct Planned {
    device: NewDevice,
    shared: Map<String, Value>,
}

/// Parses a config file's text into devices.
fn parse_config(text: &str) -> Result<Vec<Planned>, String> {
    let file: ConfigFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
    file.devices
        .into_iter()
        .enumerate()
        .map(|(i, entry)| planned(entry).map_err(|e| format!("devices[{i}]: {e}")))
        .collect()
}

fn planned(entry: DeviceEntry) -> Result<Planned, String> {
    if entry.name.is_empty() {
        return Err("name is empty".into());
    }
    let credentials = match (entry.token, entry.basic) {
        (Some(_), Some(_)) => return Err(format!("{:?}: both token and basic", entry.name)),
        (Some(token), None) if token.is_empty() => {
            return Err(format!("{:?}: token is empty", entry.name))
        }
        (Some(token), None) => Some(Credentials::AccessToken(token)),
        (None, Some(b)) if b.client_id.is_none() && b.username.is_none() => {
            return Err(format!(
                "{:?}: basic needs client_id or username",
                entry.name
            ))
        }
        (None, Some(b)) => Some(Credentials::Basic {
            client_id: b.client_id,
            username: b.username,
            password: b.password,
        }),
        (None, None) => None,
    };
    let mut device = NewDevice::device(entry.name, "").with_credentials(credentials);
    device.gateway = entry.gateway;
    if let Some(kind) = entry.device_type {
        device = device.with_type(kind);
    }
    Ok(Planned {
        device,
        shared: entry.shared,
    })
}

fn read_config(path: &Path) -> Result<Vec<Planned>, BoxError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
    parse_config(&text).map_err(|e| format!("invalid config file {}: {e}", path.display()).into())
}

/// All devices to create: the config file's first, then `--gateway`, then `--device`.
fn plan(args: &EmulatorArgs) -> Result<Vec<Planned>, BoxError> {
    let mut devices = match &args.config {
        Some(path) => read_config(path)?,
        None => Vec::new(),
    };
    for g in &args.gateways {
        devices.push(Planned {
            device: NewDevice::gateway(&g.name, &g.token),
            shared: Map::new(),
        });
    }
    for d in &args.devices {
        devices.push(Planned {
            device: NewDevice::device(&d.name, &d.token),
            shared: Map::new(),
        });
    }
    let mut names = std::collections::BTreeSet::new();
    for p in &devices {
        if !names.insert(p.device.name.as_str()) {
            return Err(format!("device {:?} is given twice", p.device.name).into());
        }
    }
    Ok(devices)
}

fn describe(device: &NewDevice) -> String {
    let kind = if device.gateway { "gateway" } else { "device " };
    let credentials = match &device.credentials {
        Some(Credentials::AccessToken(token)) => format!("token {token}"),
        Some(Credentials::Basic {
            client_id,
            username,
            password,
        }) => {
            let mut parts = Vec::new();
            if let Some(c) = client_id {
                parts.push(format!("client id {c}"));
            }
            if let Some(u) = username {
                parts.push(format!("user name {u}"));
            }
            if password.is_some() {
                parts.push("a password".to_owned());
            }
            format!("basic: {}", parts.join(", "))
        }
        Some(Credentials::X509 { .. }) => "X.509".to_owned(),
        None => "no credentials (reachable through a gateway)".to_owned(),
    };
    format!(
        "{kind} \"{}\" (type {}), {credentials}",
        device.name, device.device_type
    )
}

/// Runs the emulator until Ctrl-C (or SIGTERM).
pub async fn run(args: EmulatorArgs) -> Result<(), BoxError> {
    let devices = plan(&args)?;
    let emu = EmulatorHandle::start_on(EmulatorConfig::default(), args.port)
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{}: {e}", args.port))?;
    let result = serve(&emu, devices).await;
    emu.shutdown();
    result
}

async fn serve(emu: &EmulatorHandle, devices: Vec<Planned>) -> Result<(), BoxError> {
    let addr = emu.addr();
    println!("tbgw emulator: listening on {addr}");
    // A gateway's token for the hint below.
    let example = devices
        .iter()
        .find(|p| p.device.gateway)
        .and_then(|p| match &p.device.credentials {
            Some(Credentials::AccessToken(token)) => Some(token.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "TOKEN".to_owned());
    for planned in devices {
        let line = describe(&planned.device);
        let name = planned.device.name.clone();
        emu.create_device(planned.device)
            .map_err(|e| format!("cannot create {line}: {e}"))?;
        println!("  created {line}");
        if !planned.shared.is_empty() {
            let shown = Value::Object(planned.shared.clone());
            emu.set_shared_attributes(&name, planned.shared)
                .map_err(|e| format!("cannot set shared attributes of {name:?}: {e}"))?;
            println!("    shared attributes {shown}");
        }
    }
    println!(
        "Devices connect with their access token as the MQTT user name, e.g.\n  \
         tbgw gateway --host {} --port {} --token {example} --devices 10 --rate 100\n\
         Ctrl-C stops.",
        addr.ip(),
        addr.port()
    );
    let mut watch = tokio::time::interval(Duration::from_millis(500));
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut known = BTreeMap::new();
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            signal = &mut stop => {
                signal?;
                break;
            }
            _ = watch.tick() => report_sessions(emu, &mut known),
        }
    }
    println!("tbgw emulator: stopping");
    Ok(())
}

/// Ctrl-C, or SIGTERM on Unix.
async fn stop_signal() -> Result<(), BoxError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| format!("cannot listen for SIGTERM: {e}"))?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map_err(|e| format!("cannot listen for Ctrl-C: {e}"))?,
            _ = term.recv() => {}
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .map_err(|e| format!("cannot listen for Ctrl-C: {e}").into())
    }
}

/// What was last printed about a session: its device and children.
type Seen = BTreeMap<SessionId, (String, Vec<String>)>;

/// Prints sessions that authenticated, ended, or whose gateway children changed.
fn report_sessions(emu: &EmulatorHandle, known: &mut Seen) {
    let now: Seen = emu
        .sessions()
        .into_iter()
        .filter_map(|s| s.device.map(|d| (s.id, (d, s.children))))
        .collect();
    for (id, (device, _)) in known.iter() {
        if !now.contains_key(id) {
            println!("  {id}: \"{device}\" disconnected");
        }
    }
    for (id, (device, children)) in &now {
        match known.get(id) {
            None => println!("  {id}: \"{device}\" connected"),
            Some((_, before)) if before == children => continue,
            Some(_) => {}
        }
        if !children.is_empty() || known.get(id).is_some_and(|(_, c)| !c.is_empty()) {
            println!("  {id}: \"{device}\" has {}", children_line(children));
        }
    }
    *known = now;
}

fn children_line(children: &[String]) -> String {
    const SHOWN: usize = 5;
    match children.len() {
        0 => "no sub-devices".to_owned(),
        n if n <= SHOWN => format!("{n} sub-device(s): {}", children.join(", ")),
        n => format!("{n} sub-devices: {}, ...", children[..SHOWN].join(", ")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::args::NamedToken;
    use serde_json::json;

    #[test]
    fn the_documented_config_parses() {
        let text = r#"{
            "devices": [
              {"name": "My Gateway", "gateway": true, "token": "GW_TOKEN"},
              {"name": "Sensor", "type": "thermometer", "token": "SENSOR_TOKEN",
               "shared": {"interval": 5}},
              {"name": "Meter", "basic": {"client_id": "meter", "username": "u",
               "password": "p"}},
              {"name": "Child", "type": "boiler"}
            ]
        }"#;
        let devices = parse_config(text).unwrap();
        assert_eq!(devices.len(), 4);
        assert!(devices[0].device.gateway);
        assert_eq!(
            devices[0].device.credentials,
            Some(Credentials::AccessToken("GW_TOKEN".into()))
        );
        assert_eq!(devices[0].device.device_type, "default");
        assert_eq!(devices[1].device.device_type, "thermometer");
        assert_eq!(devices[1].shared["interval"], json!(5));
        assert!(matches!(
            devices[2].device.credentials,
            Some(Credentials::Basic { .. })
        ));
        assert_eq!(devices[3].device.credentials, None);
        assert!(!devices[3].device.gateway);
    }

    #[test]
    fn bad_configs_are_explained() {
        for (text, needle) in [
            ("{}", "missing field `devices`"),
            (
                r#"{"devices": [{"name": "A", "colour": 1}]}"#,
                "unknown field",
            ),
            (
                r#"{"devices": [{"name": ""}]}"#,
                "devices[0]: name is empty",
            ),
            (
                r#"{"devices": [{"name": "A", "token": "t", "basic": {"username": "u"}}]}"#,
                "both token and basic",
            ),
            (
                r#"{"devices": [{"name": "A", "basic": {"password": "p"}}]}"#,
                "client_id or username",
            ),
            (
                r#"{"devices": [{"name": "A", "token": ""}]}"#,
                "token is empty",
            ),
            ("not json", "expected"),
        ] {
            let e = parse_config(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn flags_follow_the_config_file() {
        let args = EmulatorArgs {
            port: 0,
            config: None,
            gateways: vec![NamedToken {
                name: "GW".into(),
                token: "T".into(),
            }],
            devices: vec![NamedToken {
                name: "D".into(),
                token: "U".into(),
            }],
        };
        let devices = plan(&args).unwrap();
        assert_eq!(devices.len(), 2);
        assert!(devices[0].device.gateway && !devices[1].device.gateway);
        assert!(describe(&devices[0].device).contains("gateway \"GW\""));
        let twice = EmulatorArgs {
            devices: vec![NamedToken {
                name: "GW".into(),
                token: "V".into(),
            }],
            ..args.clone()
        };
        assert!(plan(&twice)
            .unwrap_err()
            .to_string()
            .contains("given twice"));
        let missing = EmulatorArgs {
            config: Some("/nonexistent/tbgw.json".into()),
            ..args
        };
        assert!(plan(&missing)
            .unwrap_err()
            .to_string()
            .contains("cannot read the config file"));
    }

    #[test]
    fn long_child_lists_are_shortened() {
        let many: Vec<String> = (1..=8).map(|i| format!("d{i}")).collect();
        assert_eq!(
            children_line(&many),
            "8 sub-devices: d1, d2, d3, d4, d5, ..."
        );
        assert_eq!(children_line(&[]), "no sub-devices");
    }
}
