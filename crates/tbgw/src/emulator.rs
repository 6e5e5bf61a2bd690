//! `tbgw emulator`: the ThingsBoard emulator as a server on 127.0.0.1 until Ctrl-C, with
//! devices from flags or a JSON file, optionally with a TLS listener beside the plain one.
//! Prints the addresses, every device created, and sessions as they come and go.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gateway_emulator::{
    ClientAuth, Credentials, EmulatorConfig, EmulatorHandle, NewDevice, SessionId, StartError,
    TlsConfig, TlsError,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::args::{ClientCerts, EmulatorArgs, EmulatorTls, NamedCert};
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
    /// PEM file with the device's X.509 certificate.
    certificate: Option<PathBuf>,
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

/// A device to create, with its shared attributes and, for X.509 credentials, the file the
/// certificate came from.
#[derive(Debug, Clone, PartialEq)]
struct Planned {
    device: NewDevice,
    shared: Map<String, Value>,
    certificate: Option<PathBuf>,
}

/// Parses a config file's text into devices; relative certificate paths are relative to
/// `base` (the config file's directory).
fn parse_config(text: &str, base: &Path) -> Result<Vec<Planned>, String> {
    let file: ConfigFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
    file.devices
        .into_iter()
        .enumerate()
        .map(|(i, entry)| planned(entry, base).map_err(|e| format!("devices[{i}]: {e}")))
        .collect()
}

fn planned(entry: DeviceEntry, base: &Path) -> Result<Planned, String> {
    if entry.name.is_empty() {
        return Err("name is empty".into());
    }
    let given = [
        ("token", entry.token.is_some()),
        ("basic", entry.basic.is_some()),
        ("certificate", entry.certificate.is_some()),
    ];
    let mut present = given.iter().filter(|(_, set)| *set).map(|(what, _)| *what);
    if let (Some(first), Some(second)) = (present.next(), present.next()) {
        return Err(format!("{:?}: both {first} and {second}", entry.name));
    }
    let mut certificate = None;
    let credentials = match (entry.token, entry.basic, entry.certificate) {
        (Some(token), _, _) if token.is_empty() => {
            return Err(format!("{:?}: token is empty", entry.name))
        }
        (Some(token), _, _) => Some(Credentials::AccessToken(token)),
        (None, Some(b), _) if b.client_id.is_none() && b.username.is_none() => {
            return Err(format!(
                "{:?}: basic needs client_id or username",
                entry.name
            ))
        }
        (None, Some(b), _) => Some(Credentials::Basic {
            client_id: b.client_id,
            username: b.username,
            password: b.password,
        }),
        (None, None, Some(path)) if path.as_os_str().is_empty() => {
            return Err(format!("{:?}: certificate is empty", entry.name))
        }
        (None, None, Some(path)) => {
            let path = base.join(path);
            let credentials =
                x509_credentials(&path).map_err(|e| format!("{:?}: {e}", entry.name))?;
            certificate = Some(path);
            Some(credentials)
        }
        (None, None, None) => None,
    };
    let mut device = NewDevice::device(entry.name, "").with_credentials(credentials);
    device.gateway = entry.gateway;
    if let Some(kind) = entry.device_type {
        device = device.with_type(kind);
    }
    Ok(Planned {
        device,
        shared: entry.shared,
        certificate,
    })
}

/// X.509 credentials from the first certificate in a PEM file (a chain's leaf): what a
/// client presenting that certificate authenticates with.
fn x509_credentials(path: &Path) -> Result<Credentials, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read the certificate {}: {e}", path.display()))?;
    match CertificateDer::pem_slice_iter(&pem).next() {
        Some(Ok(der)) if gateway_emulator::x509::validity(&der).is_some() => {
            Ok(Credentials::x509_der(&der))
        }
        Some(Ok(_)) => Err(format!(
            "{}: the CERTIFICATE block is not an X.509 certificate",
            path.display()
        )),
        Some(Err(e)) => Err(format!("{}: invalid PEM: {e}", path.display())),
        None => Err(format!(
            "{}: no certificate (expected a PEM \"BEGIN CERTIFICATE\" block)",
            path.display()
        )),
    }
}

fn read_config(path: &Path) -> Result<Vec<Planned>, BoxError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new(""));
    parse_config(&text, base)
        .map_err(|e| format!("invalid config file {}: {e}", path.display()).into())
}

/// An X.509 device from `--x509-gateway` / `--x509-device`.
fn x509_planned(named: &NamedCert, gateway: bool) -> Result<Planned, BoxError> {
    let credentials = x509_credentials(&named.cert)?;
    let mut device = NewDevice::device(&named.name, "").with_credentials(Some(credentials));
    device.gateway = gateway;
    Ok(Planned {
        device,
        shared: Map::new(),
        certificate: Some(named.cert.clone()),
    })
}

/// All devices to create: the config file's first, then `--gateway`, `--device`,
/// `--x509-gateway` and `--x509-device`.
fn plan(args: &EmulatorArgs) -> Result<Vec<Planned>, BoxError> {
    let mut devices = match &args.config {
        Some(path) => read_config(path)?,
        None => Vec::new(),
    };
    for g in &args.gateways {
        devices.push(Planned {
            device: NewDevice::gateway(&g.name, &g.token),
            shared: Map::new(),
            certificate: None,
        });
    }
    for d in &args.devices {
        devices.push(Planned {
            device: NewDevice::device(&d.name, &d.token),
            shared: Map::new(),
            certificate: None,
        });
    }
    for g in &args.x509_gateways {
        devices.push(x509_planned(g, true)?);
    }
    for d in &args.x509_devices {
        devices.push(x509_planned(d, false)?);
    }
    let mut names = std::collections::BTreeSet::new();
    for p in &devices {
        if !names.insert(p.device.name.as_str()) {
            return Err(format!("device {:?} is given twice", p.device.name).into());
        }
    }
    Ok(devices)
}

fn describe(planned: &Planned) -> String {
    let device = &planned.device;
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
        Some(x509 @ Credentials::X509 { .. }) => {
            let id = x509.x509_credentials_id().unwrap_or_default();
            let short = id.get(..16).unwrap_or(&id);
            match &planned.certificate {
                Some(path) => format!(
                    "X.509 certificate {} (credentials id {short}...)",
                    path.display()
                ),
                None => format!("X.509 certificate (credentials id {short}...)"),
            }
        }
        None => "no credentials (reachable through a gateway)".to_owned(),
    };
    format!(
        "{kind} \"{}\" (type {}), {credentials}",
        device.name, device.device_type
    )
}

/// Reads a PEM file named by `option` as text.
fn read_pem(option: &str, path: &Path) -> Result<String, BoxError> {
    std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {option} {}: {e}", path.display()).into())
}

/// The TLS listener's settings from the files named on the command line.
fn tls_config(tls: &EmulatorTls) -> Result<TlsConfig, BoxError> {
    let config = TlsConfig::new(
        read_pem("--tls-cert", &tls.cert)?,
        read_pem("--tls-key", &tls.key)?,
    );
    Ok(match &tls.client_certs {
        ClientCerts::Any => config.with_client_auth(ClientAuth::AnyCertificate),
        ClientCerts::VerifiedBy(ca) => config.with_client_auth(ClientAuth::VerifiedBy {
            ca_pem: read_pem("--client-ca", ca)?,
        }),
    })
}

/// Starts the emulator: the plain listener, and the TLS listener if asked for.
async fn start(args: &EmulatorArgs) -> Result<EmulatorHandle, BoxError> {
    let Some(tls) = &args.tls else {
        return EmulatorHandle::start_on(EmulatorConfig::default(), args.port)
            .await
            .map_err(|e| format!("cannot listen on 127.0.0.1:{}: {e}", args.port).into());
    };
    let config = tls_config(tls)?;
    EmulatorHandle::start_tls_on(EmulatorConfig::default(), config, args.port, tls.port)
        .await
        .map_err(|e| match e {
            StartError::Tls(e @ TlsError::ClientCa(_)) => {
                if let ClientCerts::VerifiedBy(ca) = &tls.client_certs {
                    format!("--client-ca {}: {e}", ca.display()).into()
                } else {
                    e.to_string().into()
                }
            }
            StartError::Tls(e) => format!(
                "cannot use the TLS certificate {} with the key {}: {e}",
                tls.cert.display(),
                tls.key.display()
            )
            .into(),
            StartError::Io(e) => format!(
                "cannot listen on 127.0.0.1:{} and (TLS) 127.0.0.1:{}: {e}",
                args.port, tls.port
            )
            .into(),
            other => other.to_string().into(),
        })
}

/// Runs the emulator until Ctrl-C (or SIGTERM).
pub async fn run(args: EmulatorArgs) -> Result<(), BoxError> {
    let devices = plan(&args)?;
    let emu = start(&args).await?;
    let result = serve(&emu, &args, devices).await;
    emu.shutdown();
    result
}

/// How to connect a gateway of `devices` with `tbgw gateway` (placeholders where none fits).
fn hint(emu: &EmulatorHandle, devices: &[Planned]) -> String {
    let addr = emu.addr();
    let gateways = || devices.iter().filter(|p| p.device.gateway);
    let token = gateways().find_map(|p| match &p.device.credentials {
        Some(Credentials::AccessToken(token)) => Some(token.as_str()),
        _ => None,
    });
    let x509 = gateways().find_map(|p| match &p.device.credentials {
        Some(Credentials::X509 { .. }) => p.certificate.as_deref(),
        _ => None,
    });
    let mut text = format!(
        "Devices connect with their access token as the MQTT user name, e.g.\n  \
         tbgw gateway --host {} --port {} --token {} --devices 10 --rate 100",
        addr.ip(),
        addr.port(),
        token.unwrap_or("TOKEN")
    );
    if let Some(tls_addr) = emu.tls_addr() {
        text.push_str(&format!(
            "\nOver TLS (port {}) they connect the same way, and X.509 devices with their \
             certificate, e.g.\n  \
             tbgw gateway --host {} --port {} --cert {} --key KEY.pem --ca CA.pem --devices 10 \
             --rate 100",
            tls_addr.port(),
            tls_addr.ip(),
            tls_addr.port(),
            x509.map_or_else(|| "CERT.pem".to_owned(), |p| p.display().to_string()),
        ));
    }
    text
}

async fn serve(
    emu: &EmulatorHandle,
    args: &EmulatorArgs,
    devices: Vec<Planned>,
) -> Result<(), BoxError> {
    println!("tbgw emulator: listening on {}", emu.addr());
    if let Some(tls_addr) = emu.tls_addr() {
        println!("tbgw emulator: TLS listening on {tls_addr}");
        match args.tls.as_ref().map(|t| &t.client_certs) {
            Some(ClientCerts::VerifiedBy(ca)) => println!(
                "  client certificates: optional; one presented must be issued by {}",
                ca.display()
            ),
            _ => println!(
                "  client certificates: optional; any is accepted by TLS (as ThingsBoard does), \
                 an unknown one is refused at CONNECT"
            ),
        }
    }
    let hint = hint(emu, &devices);
    let x509_devices = devices
        .iter()
        .filter(|p| matches!(p.device.credentials, Some(Credentials::X509 { .. })))
        .count();
    for planned in devices {
        let line = describe(&planned);
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
    if x509_devices > 0 && emu.tls_addr().is_none() {
        eprintln!(
            "tbgw emulator: warning: {x509_devices} X.509 device(s) created, but they can only \
             connect over TLS and there is no TLS listener (--tls-cert, --tls-key)"
        );
    }
    println!("{hint}\nCtrl-C stops.");
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
    use crate::args::{NamedToken, EMULATOR_HELP};
    use gateway_testkit::mosquitto::TempDir;
    use gateway_testkit::pki::TestPki;
    use serde_json::json;

    /// A directory with `certs/gw.pem` (a client certificate), `certs/gw.key`, and
    /// `certs/key-only.pem` (no certificate in it).
    fn cert_dir() -> (TempDir, TestPki) {
        let dir = TempDir::new("tbgw-emulator-test").unwrap();
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).unwrap();
        let pki = TestPki::generate().unwrap();
        let gw = pki.client("gw").unwrap();
        gw.write_to(&certs, "gw").unwrap();
        std::fs::write(certs.join("key-only.pem"), &gw.key_pem).unwrap();
        (dir, pki)
    }

    /// The config example in `tbgw emulator --help`.
    fn documented_config() -> &'static str {
        let from = EMULATOR_HELP.find("Config file:\n").unwrap();
        let rest = &EMULATOR_HELP[from..];
        let start = rest.find('{').unwrap();
        let end = rest.find("\n  }\n").unwrap() + "\n  }".len();
        &rest[start..end]
    }

    #[test]
    fn the_documented_config_parses() {
        let (dir, _pki) = cert_dir();
        let devices = parse_config(documented_config(), dir.path()).unwrap();
        assert_eq!(devices.len(), 5);
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
        let secure = &devices[3];
        assert!(secure.device.gateway);
        let gw_pem = std::fs::read_to_string(dir.path().join("certs/gw.pem")).unwrap();
        assert_eq!(
            secure.device.credentials,
            Some(Credentials::x509_pem(&gw_pem))
        );
        assert_eq!(
            secure.certificate.as_deref(),
            Some(dir.path().join("certs/gw.pem").as_path())
        );
        assert!(describe(secure).contains("X.509 certificate"));
        assert_eq!(devices[4].device.credentials, None);
        assert!(!devices[4].device.gateway);
    }

    #[test]
    fn certificates_take_the_chain_leaf_and_reject_what_is_not_one() {
        let (dir, pki) = cert_dir();
        let leaf = pki.client("leaf").unwrap();
        let chain = dir.path().join("chain.pem");
        std::fs::write(&chain, leaf.chain_pem(pki.ca_pem())).unwrap();
        assert_eq!(
            x509_credentials(&chain).unwrap(),
            Credentials::x509_der(&leaf.cert_der)
        );
        for (file, needle) in [
            ("certs/key-only.pem", "no certificate"),
            ("certs/missing.pem", "cannot read the certificate"),
        ] {
            let text = format!(r#"{{"devices": [{{"name": "A", "certificate": "{file}"}}]}}"#);
            let e = parse_config(&text, dir.path()).unwrap_err();
            assert!(
                e.contains(needle) && e.contains("devices[0]"),
                "{file}: {e}"
            );
        }
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(x509_credentials(&garbage)
            .unwrap_err()
            .contains("not an X.509 certificate"));
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
            (
                r#"{"devices": [{"name": "A", "token": "t", "certificate": "a.pem"}]}"#,
                "both token and certificate",
            ),
            (
                r#"{"devices": [{"name": "A", "basic": {"username": "u"}, "certificate": "a"}]}"#,
                "both basic and certificate",
            ),
            (
                r#"{"devices": [{"name": "A", "certificate": ""}]}"#,
                "certificate is empty",
            ),
            ("not json", "expected"),
        ] {
            let e = parse_config(text, Path::new("")).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn flags_follow_the_config_file() {
        let (dir, _pki) = cert_dir();
        let gw_pem = dir.path().join("certs/gw.pem");
        let args = EmulatorArgs {
            port: 0,
            tls: None,
            config: None,
            gateways: vec![NamedToken {
                name: "GW".into(),
                token: "T".into(),
            }],
            devices: vec![NamedToken {
                name: "D".into(),
                token: "U".into(),
            }],
            x509_gateways: vec![NamedCert {
                name: "XG".into(),
                cert: gw_pem.clone(),
            }],
            x509_devices: vec![NamedCert {
                name: "XD".into(),
                cert: gw_pem.clone(),
            }],
        };
        let devices = plan(&args).unwrap();
        assert_eq!(devices.len(), 4);
        assert!(devices[0].device.gateway && !devices[1].device.gateway);
        assert!(describe(&devices[0]).contains("gateway \"GW\""));
        assert!(devices[2].device.gateway && !devices[3].device.gateway);
        assert!(matches!(
            devices[3].device.credentials,
            Some(Credentials::X509 { .. })
        ));
        assert!(describe(&devices[2]).contains("X.509 certificate"));
        let not_a_cert = EmulatorArgs {
            x509_devices: vec![NamedCert {
                name: "XD".into(),
                cert: dir.path().join("certs/key-only.pem"),
            }],
            ..args.clone()
        };
        assert!(plan(&not_a_cert)
            .unwrap_err()
            .to_string()
            .contains("no certificate"));
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
