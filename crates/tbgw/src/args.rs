//! Command-line parsing: a small hand-rolled parser with typed errors and a `--help` text per
//! subcommand. Options are `--name value` or `--name=value`; `-h` is `--help`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use gateway_proto::{ProtocolVersion, QoS};

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Cli {
    /// Print this help text and exit successfully.
    Help(&'static str),
    /// Print the version and exit successfully.
    Version,
    /// `tbgw demo`.
    Demo,
    /// `tbgw emulator ...`.
    Emulator(EmulatorArgs),
    /// `tbgw gateway ...`.
    Gateway(GatewayArgs),
}

/// A device named on the command line as `NAME=TOKEN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedToken {
    /// Device name.
    pub name: String,
    /// Access token.
    pub token: String,
}

/// A device named on the command line as `NAME=CERT.pem` (X.509 credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedCert {
    /// Device name.
    pub name: String,
    /// PEM file with the device's certificate (the first certificate in it is used).
    pub cert: PathBuf,
}

/// Client certificates the emulator's TLS listener accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCerts {
    /// Any certificate (the client must hold its key), like ThingsBoard.
    Any,
    /// Only certificates issued by the CA in this PEM file.
    VerifiedBy(PathBuf),
}

/// The emulator's TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulatorTls {
    /// Port on 127.0.0.1 (0: any free port).
    pub port: u16,
    /// PEM file with the server certificate (chain).
    pub cert: PathBuf,
    /// PEM file with the server's private key.
    pub key: PathBuf,
    /// Which client certificates are accepted.
    pub client_certs: ClientCerts,
}

/// Options of `tbgw emulator`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulatorArgs {
    /// Port on 127.0.0.1 (0: any free port).
    pub port: u16,
    /// The TLS listener, if any.
    pub tls: Option<EmulatorTls>,
    /// JSON file with devices to create.
    pub config: Option<PathBuf>,
    /// Gateway devices to create.
    pub gateways: Vec<NamedToken>,
    /// Plain devices to create.
    pub devices: Vec<NamedToken>,
    /// Gateway devices with X.509 credentials to create.
    pub x509_gateways: Vec<NamedCert>,
    /// Plain devices with X.509 credentials to create.
    pub x509_devices: Vec<NamedCert>,
}

/// How the simulated gateway authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// Access token (the MQTT user name).
    Token(String),
    /// MQTT basic credentials; the client id, if any, is [`GatewayArgs::client_id`].
    Basic {
        /// User name.
        username: Option<String>,
        /// Password.
        password: Option<String>,
    },
    /// X.509 client certificate (implies TLS).
    X509 {
        /// PEM certificate (chain).
        cert: PathBuf,
        /// PEM private key.
        key: PathBuf,
    },
}

/// Where the simulated gateway connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An emulator started in this process.
    Emulator,
    /// A ThingsBoard (or emulator) server.
    Server {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
        /// Credentials.
        auth: Auth,
        /// Use TLS.
        tls: bool,
        /// CA file to trust instead of the system roots.
        ca: Option<PathBuf>,
    },
}

/// Options of `tbgw gateway`.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayArgs {
    /// Where to connect.
    pub target: Target,
    /// MQTT client id (empty: none).
    pub client_id: Option<String>,
    /// Sub-devices to simulate.
    pub devices: usize,
    /// Telemetry messages per second, all sub-devices together.
    pub rate: f64,
    /// How long to send.
    pub duration: Duration,
    /// How long to wait for outstanding outcomes after the last send.
    pub drain: Duration,
    /// Telemetry QoS.
    pub qos: QoS,
    /// MQTT version.
    pub mqtt: ProtocolVersion,
    /// Sub-device name prefix (names are PREFIX1, PREFIX2, ...).
    pub prefix: String,
}

/// A command line that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgError {
    /// No subcommand given.
    NoCommand,
    /// The subcommand is not known.
    UnknownCommand(String),
    /// An option the subcommand does not have.
    UnknownOption {
        /// The subcommand.
        command: &'static str,
        /// The option as given.
        option: String,
    },
    /// A plain argument where only options are accepted.
    UnexpectedArgument {
        /// The subcommand.
        command: &'static str,
        /// The argument.
        argument: String,
    },
    /// An option that needs a value came last.
    MissingValue {
        /// The subcommand.
        command: &'static str,
        /// The option.
        option: &'static str,
    },
    /// A flag was given a value (`--tls=yes`).
    UnexpectedValue {
        /// The subcommand.
        command: &'static str,
        /// The flag.
        option: &'static str,
    },
    /// A value that does not parse or is out of range.
    InvalidValue {
        /// The subcommand.
        command: &'static str,
        /// The option.
        option: &'static str,
        /// The value as given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// A single-valued option given twice.
    Repeated {
        /// The subcommand.
        command: &'static str,
        /// The option.
        option: &'static str,
    },
    /// Something required is missing.
    Missing {
        /// The subcommand.
        command: &'static str,
        /// What is missing.
        what: &'static str,
    },
    /// Two options that cannot be used together.
    Conflict {
        /// The subcommand.
        command: &'static str,
        /// One option.
        first: &'static str,
        /// The other.
        second: &'static str,
    },
}

impl ArgError {
    /// The usage text that helps with this error.
    pub fn usage(&self) -> &'static str {
        match self.command() {
            Some("demo") => DEMO_HELP,
            Some("emulator") => EMULATOR_HELP,
            Some("gateway") => GATEWAY_HELP,
            _ => MAIN_HELP,
        }
    }

    fn command(&self) -> Option<&'static str> {
        match self {
            Self::NoCommand | Self::UnknownCommand(_) => None,
            Self::UnknownOption { command, .. }
            | Self::UnexpectedArgument { command, .. }
            | Self::MissingValue { command, .. }
            | Self::UnexpectedValue { command, .. }
            | Self::InvalidValue { command, .. }
            | Self::Repeated { command, .. }
            | Self::Missing { command, .. }
            | Self::Conflict { command, .. } => Some(command),
        }
    }
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCommand => f.write_str("no command given"),
            Self::UnknownCommand(c) => write!(f, "unknown command '{c}'"),
            Self::UnknownOption { option, .. } => write!(f, "unknown option '{option}'"),
            Self::UnexpectedArgument { argument, .. } => {
                write!(f, "unexpected argument '{argument}'")
            }
            Self::MissingValue { option, .. } => write!(f, "{option} needs a value"),
            Self::UnexpectedValue { option, .. } => write!(f, "{option} takes no value"),
            Self::InvalidValue {
                option,
                value,
                expected,
                ..
            } => write!(
                f,
                "invalid value '{value}' for {option}: expected {expected}"
            ),
            Self::Repeated { option, .. } => write!(f, "{option} given more than once"),
            Self::Missing { what, .. } => write!(f, "missing {what}"),
            Self::Conflict { first, second, .. } => {
                write!(f, "{first} cannot be used with {second}")
            }
        }
    }
}

impl std::error::Error for ArgError {}

/// `tbgw --help`.
pub const MAIN_HELP: &str = "\
tbgw: a ThingsBoard gateway client toolbox

Usage: tbgw <COMMAND> [OPTIONS]

Commands:
  demo       Run a narrated gateway session against an in-process ThingsBoard emulator
  emulator   Run the ThingsBoard MQTT emulator as a server until Ctrl-C
  gateway    Simulate a gateway with sub-devices sending telemetry (load generator)
  help       Print this help, or the help of a command (tbgw help gateway)

Options:
  -h, --help     Print help (also after a command: tbgw gateway --help)
  -V, --version  Print the version

Start with: tbgw demo
";

/// `tbgw demo --help`.
pub const DEMO_HELP: &str = "\
tbgw demo: a gateway session against an in-process ThingsBoard emulator, narrated

Starts the emulator on 127.0.0.1 (any free port), connects a gateway with three simulated
sub-devices and walks through: sub-devices announced, telemetry stored by the platform, a
server-side RPC answered by the gateway, a shared attribute push, an attribute request, a
dropped connection with the sub-devices re-announced by the client, and a summary.
Needs no network and no ThingsBoard; takes a few seconds. Exits non-zero if any step fails.

Usage: tbgw demo

Options:
  -h, --help  Print help
";

/// `tbgw emulator --help`.
pub const EMULATOR_HELP: &str = "\
tbgw emulator: the ThingsBoard MQTT emulator as a server, until Ctrl-C

Serves ThingsBoard's MQTT device API and gateway API on 127.0.0.1, and with --tls-cert and
--tls-key also MQTT over TLS on a second port (ThingsBoard's 8883). Devices connect with
their access token as the MQTT user name, with MQTT basic credentials, or (over TLS) with
an X.509 client certificate. Prints the listening addresses, every device it creates, and
sessions as they connect and go.

Usage: tbgw emulator [--listen 127.0.0.1:PORT] [TLS] [--config FILE]
                     [--gateway NAME=TOKEN]... [--device NAME=TOKEN]...
                     [--x509-gateway NAME=CERT]... [--x509-device NAME=CERT]...

Options:
  --listen ADDR          127.0.0.1:PORT, localhost:PORT or PORT; loopback only; port 0
                         picks a free one [default: 127.0.0.1:1883]
  --config FILE          JSON file with devices to create (format below)
  --gateway NAME=TOKEN   Create a gateway device (repeatable); NAME may not contain '='
  --device NAME=TOKEN    Create a plain device (repeatable)
  --x509-gateway NAME=CERT
                         Create a gateway device authenticated by the X.509 certificate in
                         the PEM file CERT (repeatable); it connects over TLS presenting
                         that certificate
  --x509-device NAME=CERT
                         Create a plain device authenticated by an X.509 certificate
  -h, --help             Print help
TLS:
  --tls-cert FILE        Server certificate (chain), PEM; enables the TLS listener
  --tls-key FILE         The server certificate's private key, PEM
  --tls-listen ADDR      Address of the TLS listener, like --listen
                         [default: 127.0.0.1:8883]
  --client-ca FILE       Accept only client certificates issued by this CA (PEM). Without
                         it any client certificate is accepted at the TLS level and the
                         device is chosen by the certificate at CONNECT, as ThingsBoard does;
                         clients without a certificate always connect (token or basic)

Config file:
  {
    \"devices\": [
      {\"name\": \"My Gateway\", \"gateway\": true, \"token\": \"GW_TOKEN\"},
      {\"name\": \"Sensor\", \"type\": \"thermometer\", \"token\": \"SENSOR_TOKEN\",
       \"shared\": {\"interval\": 5}},
      {\"name\": \"Meter\", \"basic\": {\"client_id\": \"meter\", \"username\": \"u\",
       \"password\": \"p\"}},
      {\"name\": \"Secure Gateway\", \"gateway\": true, \"certificate\": \"certs/gw.pem\"},
      {\"name\": \"Child\", \"type\": \"boiler\"}
    ]
  }
  name is required; type defaults to \"default\"; gateway to false. One of token, basic (any
  of client_id, username, password) or certificate gives credentials; none makes a device
  reachable only through a gateway. certificate is a PEM file (relative paths are relative
  to the config file's directory) whose first certificate is the device's X.509 credential.
  shared sets shared attributes. Unknown fields are errors.
";

/// `tbgw gateway --help`.
pub const GATEWAY_HELP: &str = "\
tbgw gateway: a simulated gateway sending sub-device telemetry (load generator)

Connects as a gateway, announces N sub-devices, then sends telemetry for them in turn at
R messages per second in total for the duration, without waiting for each outcome.
Shows progress on stderr about once a second and prints a report: sent, acknowledged,
failed by reason, latency percentiles (send to outcome) and the achieved rate.
Exits non-zero if the connection cannot be made.

Usage: tbgw gateway --host HOST [--port PORT] CREDENTIALS [TLS] [LOAD]
       tbgw gateway --emulator [LOAD]

Target:
  --host HOST            ThingsBoard MQTT host
  --port PORT            MQTT port [default: 1883, 8883 with TLS]
  --emulator             Start an emulator in this process and target it
Credentials (one of):
  --token TOKEN          Access token of the gateway device
  --username USER        MQTT basic credentials (with --password, --client-id)
  --password PASSWORD    MQTT basic password (needs --username)
  --client-id ID         MQTT client id (alone: basic credentials by client id)
  --cert FILE --key FILE X.509 client certificate and key (PEM; implies --tls)
TLS:
  --tls                  Use TLS (system trust roots unless --ca)
  --ca FILE              Trust this CA (PEM; implies --tls)
Load:
  --devices N            Sub-devices to simulate [default: 10]
  --rate R               Telemetry messages per second, in total [default: 100]
  --duration SECONDS     How long to send: 30, 2.5, 500ms, 2m [default: 10]
  --qos 0|1              Telemetry QoS [default: 1]
  --mqtt 3|5             MQTT version (3 means 3.1.1) [default: 5]
  --drain SECONDS        Wait at most this long for outstanding outcomes after the last
                         send, and for the announce (at least 5 s) [default: 10]
  --prefix TEXT          Sub-device name prefix [default: tbgw-sim-]
  -h, --help             Print help

Example: tbgw gateway --emulator --devices 5 --rate 200 --duration 2
";

/// Parses the arguments after the program name.
pub fn parse<I, S>(args: I) -> Result<Cli, ArgError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut args = args.into_iter().map(Into::into);
    let Some(command) = args.next() else {
        return Err(ArgError::NoCommand);
    };
    match command.as_str() {
        "-h" | "--help" => Ok(Cli::Help(MAIN_HELP)),
        "-V" | "--version" => Ok(Cli::Version),
        "help" => match args.next().as_deref() {
            None => Ok(Cli::Help(MAIN_HELP)),
            Some("demo") => Ok(Cli::Help(DEMO_HELP)),
            Some("emulator") => Ok(Cli::Help(EMULATOR_HELP)),
            Some("gateway") => Ok(Cli::Help(GATEWAY_HELP)),
            Some(other) => Err(ArgError::UnknownCommand(other.to_owned())),
        },
        "demo" => match options("demo", &[], args)? {
            None => Ok(Cli::Help(DEMO_HELP)),
            Some(_) => Ok(Cli::Demo),
        },
        "emulator" => match options("emulator", EMULATOR_OPTIONS, args)? {
            None => Ok(Cli::Help(EMULATOR_HELP)),
            Some(given) => emulator(given).map(Cli::Emulator),
        },
        "gateway" => match options("gateway", GATEWAY_OPTIONS, args)? {
            None => Ok(Cli::Help(GATEWAY_HELP)),
            Some(given) => gateway(given).map(Cli::Gateway),
        },
        other => Err(ArgError::UnknownCommand(other.to_owned())),
    }
}

/// An option: its name and whether it takes a value.
type Spec = (&'static str, bool);

const EMULATOR_OPTIONS: &[Spec] = &[
    ("--listen", true),
    ("--tls-listen", true),
    ("--tls-cert", true),
    ("--tls-key", true),
    ("--client-ca", true),
    ("--config", true),
    ("--gateway", true),
    ("--device", true),
    ("--x509-gateway", true),
    ("--x509-device", true),
];

const GATEWAY_OPTIONS: &[Spec] = &[
    ("--host", true),
    ("--port", true),
    ("--emulator", false),
    ("--token", true),
    ("--username", true),
    ("--password", true),
    ("--client-id", true),
    ("--cert", true),
    ("--key", true),
    ("--tls", false),
    ("--ca", true),
    ("--devices", true),
    ("--rate", true),
    ("--duration", true),
    ("--qos", true),
    ("--mqtt", true),
    ("--drain", true),
    ("--prefix", true),
];

/// Options given, in order: name and value (`None` for flags).
type Given = Vec<(&'static str, Option<String>)>;

/// Splits the arguments into known options; `None` if help was asked for.
fn options(
    command: &'static str,
    specs: &[Spec],
    args: impl Iterator<Item = String>,
) -> Result<Option<Given>, ArgError> {
    let mut args = args.peekable();
    let mut given = Vec::new();
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        if !arg.starts_with("--") {
            return Err(ArgError::UnexpectedArgument {
                command,
                argument: arg,
            });
        }
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (arg.as_str(), None),
        };
        let Some(&(option, takes_value)) = specs.iter().find(|(n, _)| *n == name) else {
            return Err(ArgError::UnknownOption {
                command,
                option: name.to_owned(),
            });
        };
        let value = match (takes_value, inline) {
            (false, None) => None,
            (false, Some(_)) => return Err(ArgError::UnexpectedValue { command, option }),
            (true, Some(value)) => Some(value),
            (true, None) => match args.next() {
                Some(value) => Some(value),
                None => return Err(ArgError::MissingValue { command, option }),
            },
        };
        given.push((option, value));
    }
    Ok(Some(given))
}

fn set_once<T>(
    slot: &mut Option<T>,
    value: T,
    command: &'static str,
    option: &'static str,
) -> Result<(), ArgError> {
    if slot.is_some() {
        return Err(ArgError::Repeated { command, option });
    }
    *slot = Some(value);
    Ok(())
}

/// The emulator's default TLS port (ThingsBoard's MQTT SSL port).
pub const DEFAULT_TLS_PORT: u16 = 8883;

fn emulator(given: Given) -> Result<EmulatorArgs, ArgError> {
    const C: &str = "emulator";
    let mut port = None;
    let mut tls_port = None;
    let mut tls_cert = None;
    let mut tls_key = None;
    let mut client_ca = None;
    let mut config = None;
    let mut gateways = Vec::new();
    let mut devices = Vec::new();
    let mut x509_gateways = Vec::new();
    let mut x509_devices = Vec::new();
    for (o, value) in given {
        let v = value.unwrap_or_default();
        match o {
            "--listen" => set_once(&mut port, parse_listen(C, o, &v)?, C, o)?,
            "--tls-listen" => set_once(&mut tls_port, parse_listen(C, o, &v)?, C, o)?,
            "--tls-cert" => set_once(&mut tls_cert, non_empty_path(C, o, v)?, C, o)?,
            "--tls-key" => set_once(&mut tls_key, non_empty_path(C, o, v)?, C, o)?,
            "--client-ca" => set_once(&mut client_ca, non_empty_path(C, o, v)?, C, o)?,
            "--config" => set_once(&mut config, non_empty_path(C, o, v)?, C, o)?,
            "--gateway" => gateways.push(parse_named(C, o, &v)?),
            "--device" => devices.push(parse_named(C, o, &v)?),
            "--x509-gateway" => x509_gateways.push(parse_named_cert(C, o, &v)?),
            "--x509-device" => x509_devices.push(parse_named_cert(C, o, &v)?),
            _ => {}
        }
    }
    let port = port.unwrap_or(1883);
    let tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => {
            let tls_port = tls_port.unwrap_or(DEFAULT_TLS_PORT);
            if tls_port != 0 && tls_port == port {
                return Err(ArgError::InvalidValue {
                    command: C,
                    option: "--tls-listen",
                    value: tls_port.to_string(),
                    expected: "a port other than the plain listener's (--listen)",
                });
            }
            Some(EmulatorTls {
                port: tls_port,
                cert,
                key,
                client_certs: client_ca.map_or(ClientCerts::Any, ClientCerts::VerifiedBy),
            })
        }
        (Some(_), None) => {
            return Err(ArgError::Missing {
                command: C,
                what: "--tls-key (--tls-cert needs it)",
            })
        }
        (None, Some(_)) => {
            return Err(ArgError::Missing {
                command: C,
                what: "--tls-cert (--tls-key needs it)",
            })
        }
        (None, None) => {
            if tls_port.is_some() {
                return Err(ArgError::Missing {
                    command: C,
                    what: "--tls-cert and --tls-key (--tls-listen needs them)",
                });
            }
            if client_ca.is_some() {
                return Err(ArgError::Missing {
                    command: C,
                    what: "--tls-cert and --tls-key (--client-ca needs them)",
                });
            }
            None
        }
    };
    Ok(EmulatorArgs {
        port,
        tls,
        config,
        gateways,
        devices,
        x509_gateways,
        x509_devices,
    })
}

#[derive(Default)]
struct GatewayGiven {
    host: Option<String>,
    port: Option<u16>,
    emulator: Option<()>,
    token: Option<String>,
    username: Option<String>,
    password: Option<String>,
    client_id: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    tls: Option<()>,
    ca: Option<PathBuf>,
    devices: Option<usize>,
    rate: Option<f64>,
    duration: Option<Duration>,
    qos: Option<QoS>,
    mqtt: Option<ProtocolVersion>,
    drain: Option<Duration>,
    prefix: Option<String>,
}

/// Most sub-devices one simulated gateway may have.
pub const MAX_DEVICES: usize = 100_000;
/// Highest accepted `--rate`.
pub const MAX_RATE: f64 = 1_000_000.0;

fn gateway(given: Given) -> Result<GatewayArgs, ArgError> {
    const C: &str = "gateway";
    let mut g = GatewayGiven::default();
    for (o, value) in given {
        let v = value.unwrap_or_default();
        match o {
            "--host" => set_once(&mut g.host, non_empty(C, o, v)?, C, o)?,
            "--port" => set_once(&mut g.port, parse_port(C, o, &v)?, C, o)?,
            "--emulator" => set_once(&mut g.emulator, (), C, o)?,
            "--token" => set_once(&mut g.token, non_empty(C, o, v)?, C, o)?,
            "--username" => set_once(&mut g.username, v, C, o)?,
            "--password" => set_once(&mut g.password, v, C, o)?,
            "--client-id" => set_once(&mut g.client_id, v, C, o)?,
            "--cert" => set_once(&mut g.cert, PathBuf::from(v), C, o)?,
            "--key" => set_once(&mut g.key, PathBuf::from(v), C, o)?,
            "--tls" => set_once(&mut g.tls, (), C, o)?,
            "--ca" => set_once(&mut g.ca, PathBuf::from(v), C, o)?,
            "--devices" => set_once(&mut g.devices, parse_devices(C, o, &v)?, C, o)?,
            "--rate" => set_once(&mut g.rate, parse_rate(C, o, &v)?, C, o)?,
            "--duration" => set_once(&mut g.duration, parse_seconds(C, o, &v)?, C, o)?,
            "--qos" => set_once(&mut g.qos, parse_qos(C, o, &v)?, C, o)?,
            "--mqtt" => set_once(&mut g.mqtt, parse_mqtt(C, o, &v)?, C, o)?,
            "--drain" => set_once(&mut g.drain, parse_seconds(C, o, &v)?, C, o)?,
            "--prefix" => set_once(&mut g.prefix, v, C, o)?,
            _ => {}
        }
    }
    let target = if g.emulator.is_some() {
        let server_only = [
            ("--host", g.host.is_some()),
            ("--port", g.port.is_some()),
            ("--token", g.token.is_some()),
            ("--username", g.username.is_some()),
            ("--password", g.password.is_some()),
            ("--client-id", g.client_id.is_some()),
            ("--cert", g.cert.is_some()),
            ("--key", g.key.is_some()),
            ("--tls", g.tls.is_some()),
            ("--ca", g.ca.is_some()),
        ];
        if let Some((second, _)) = server_only.iter().find(|(_, set)| *set) {
            return Err(ArgError::Conflict {
                command: C,
                first: "--emulator",
                second,
            });
        }
        Target::Emulator
    } else {
        let host = g.host.ok_or(ArgError::Missing {
            command: C,
            what: "--host (or --emulator)",
        })?;
        let auth = gateway_auth(
            &g.token,
            &g.username,
            &g.password,
            &g.client_id,
            g.cert,
            g.key,
        )?;
        let tls = g.tls.is_some() || g.ca.is_some() || matches!(auth, Auth::X509 { .. });
        Target::Server {
            host,
            port: g.port.unwrap_or(if tls { 8883 } else { 1883 }),
            auth,
            tls,
            ca: g.ca,
        }
    };
    Ok(GatewayArgs {
        target,
        client_id: g.client_id,
        devices: g.devices.unwrap_or(10),
        rate: g.rate.unwrap_or(100.0),
        duration: g.duration.unwrap_or(Duration::from_secs(10)),
        drain: g.drain.unwrap_or(Duration::from_secs(10)),
        qos: g.qos.unwrap_or(QoS::AtLeastOnce),
        mqtt: g.mqtt.unwrap_or(ProtocolVersion::V5),
        prefix: g.prefix.unwrap_or_else(|| "tbgw-sim-".to_owned()),
    })
}

fn gateway_auth(
    token: &Option<String>,
    username: &Option<String>,
    password: &Option<String>,
    client_id: &Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Auth, ArgError> {
    const C: &str = "gateway";
    let basic = username.is_some() || password.is_some();
    let x509 = cert.is_some() || key.is_some();
    let conflict = |first, second| ArgError::Conflict {
        command: C,
        first,
        second,
    };
    if token.is_some() && basic {
        return Err(conflict(
            "--token",
            if username.is_some() {
                "--username"
            } else {
                "--password"
            },
        ));
    }
    if token.is_some() && x509 {
        return Err(conflict("--token", "--cert/--key"));
    }
    if basic && x509 {
        return Err(conflict("--username/--password", "--cert/--key"));
    }
    if let Some(token) = token {
        return Ok(Auth::Token(token.clone()));
    }
    if x509 {
        return match (cert, key) {
            (Some(cert), Some(key)) => Ok(Auth::X509 { cert, key }),
            (Some(_), None) => Err(ArgError::Missing {
                command: C,
                what: "--key (--cert needs it)",
            }),
            _ => Err(ArgError::Missing {
                command: C,
                what: "--cert (--key needs it)",
            }),
        };
    }
    if password.is_some() && username.is_none() {
        return Err(ArgError::Missing {
            command: C,
            what: "--username (--password needs it)",
        });
    }
    if basic || client_id.is_some() {
        return Ok(Auth::Basic {
            username: username.clone(),
            password: password.clone(),
        });
    }
    Err(ArgError::Missing {
        command: C,
        what: "credentials: --token, --username [--password], --client-id, or --cert with --key",
    })
}

fn non_empty(command: &'static str, option: &'static str, v: String) -> Result<String, ArgError> {
    if v.is_empty() {
        return Err(ArgError::InvalidValue {
            command,
            option,
            value: v,
            expected: "a non-empty value",
        });
    }
    Ok(v)
}

fn non_empty_path(
    command: &'static str,
    option: &'static str,
    v: String,
) -> Result<PathBuf, ArgError> {
    non_empty(command, option, v).map(PathBuf::from)
}

fn invalid(
    command: &'static str,
    option: &'static str,
    value: &str,
    expected: &'static str,
) -> ArgError {
    ArgError::InvalidValue {
        command,
        option,
        value: value.to_owned(),
        expected,
    }
}

fn parse_port(command: &'static str, option: &'static str, v: &str) -> Result<u16, ArgError> {
    match v.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(invalid(command, option, v, "a port from 1 to 65535")),
    }
}

/// `127.0.0.1:PORT`, `localhost:PORT` or `PORT`: the emulator binds the loopback address only.
fn parse_listen(command: &'static str, option: &'static str, v: &str) -> Result<u16, ArgError> {
    const EXPECTED: &str = "127.0.0.1:PORT, localhost:PORT or PORT (the emulator listens on \
                            127.0.0.1 only)";
    if let Ok(port) = v.parse::<u16>() {
        return Ok(port);
    }
    if let Some(port) = v.strip_prefix("localhost:") {
        return port
            .parse::<u16>()
            .map_err(|_| invalid(command, option, v, EXPECTED));
    }
    match v.parse::<SocketAddr>() {
        Ok(addr) if addr.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST) => Ok(addr.port()),
        _ => Err(invalid(command, option, v, EXPECTED)),
    }
}

/// `NAME=TOKEN`, split at the first `=`.
fn parse_named(
    command: &'static str,
    option: &'static str,
    v: &str,
) -> Result<NamedToken, ArgError> {
    match v.split_once('=') {
        Some((name, token)) if !name.is_empty() && !token.is_empty() => Ok(NamedToken {
            name: name.to_owned(),
            token: token.to_owned(),
        }),
        _ => Err(invalid(command, option, v, "NAME=TOKEN, both non-empty")),
    }
}

/// `NAME=CERT.pem`, split at the first `=`.
fn parse_named_cert(
    command: &'static str,
    option: &'static str,
    v: &str,
) -> Result<NamedCert, ArgError> {
    match v.split_once('=') {
        Some((name, cert)) if !name.is_empty() && !cert.is_empty() => Ok(NamedCert {
            name: name.to_owned(),
            cert: PathBuf::from(cert),
        }),
        _ => Err(invalid(command, option, v, "NAME=CERT.pem, both non-empty")),
    }
}

fn parse_devices(command: &'static str, option: &'static str, v: &str) -> Result<usize, ArgError> {
    match v.parse::<usize>() {
        Ok(n) if (1..=MAX_DEVICES).contains(&n) => Ok(n),
        _ => Err(invalid(
            command,
            option,
            v,
            "a whole number from 1 to 100000",
        )),
    }
}

fn parse_rate(command: &'static str, option: &'static str, v: &str) -> Result<f64, ArgError> {
    match v.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= MAX_RATE => Ok(r),
        _ => Err(invalid(
            command,
            option,
            v,
            "messages per second, above 0 and at most 1000000",
        )),
    }
}

/// Seconds (`2`, `2.5`, `2s`), milliseconds (`500ms`) or minutes (`2m`); above zero, at most
/// a day.
pub fn parse_seconds(
    command: &'static str,
    option: &'static str,
    v: &str,
) -> Result<Duration, ArgError> {
    let (number, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60.0)
    } else {
        (v, 1.0)
    };
    match number.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 && n * scale <= 86_400.0 => {
            Ok(Duration::from_secs_f64(n * scale))
        }
        _ => Err(invalid(
            command,
            option,
            v,
            "a duration above 0 and at most a day: 10, 2.5, 500ms, 2m",
        )),
    }
}

fn parse_qos(command: &'static str, option: &'static str, v: &str) -> Result<QoS, ArgError> {
    match v {
        "0" => Ok(QoS::AtMostOnce),
        "1" => Ok(QoS::AtLeastOnce),
        _ => Err(invalid(
            command,
            option,
            v,
            "0 or 1 (ThingsBoard has no QoS 2)",
        )),
    }
}

fn parse_mqtt(
    command: &'static str,
    option: &'static str,
    v: &str,
) -> Result<ProtocolVersion, ArgError> {
    match v {
        "3" | "3.1.1" | "311" => Ok(ProtocolVersion::V311),
        "5" | "5.0" => Ok(ProtocolVersion::V5),
        _ => Err(invalid(command, option, v, "3 (MQTT 3.1.1) or 5")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn gw(args: &[&str]) -> Result<GatewayArgs, ArgError> {
        let mut all = vec!["gateway"];
        all.extend_from_slice(args);
        match parse(all)? {
            Cli::Gateway(g) => Ok(g),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn top_level() {
        assert_eq!(parse(Vec::<String>::new()), Err(ArgError::NoCommand));
        assert_eq!(parse(["--help"]), Ok(Cli::Help(MAIN_HELP)));
        assert_eq!(parse(["help", "gateway"]), Ok(Cli::Help(GATEWAY_HELP)));
        assert_eq!(parse(["-V"]), Ok(Cli::Version));
        assert_eq!(parse(["demo"]), Ok(Cli::Demo));
        assert_eq!(parse(["demo", "-h"]), Ok(Cli::Help(DEMO_HELP)));
        assert_eq!(
            parse(["launch"]),
            Err(ArgError::UnknownCommand("launch".into()))
        );
        let e = parse(["demo", "--fast"]).unwrap_err();
        assert_eq!(e.to_string(), "unknown option '--fast'");
        assert_eq!(e.usage(), DEMO_HELP);
        assert!(matches!(
            parse(["demo", "now"]),
            Err(ArgError::UnexpectedArgument { .. })
        ));
    }

    #[test]
    fn emulator_options() {
        let Cli::Emulator(e) = parse([
            "emulator",
            "--listen",
            "127.0.0.1:0",
            "--gateway",
            "GW=TOKEN",
            "--gateway=Second=T2=x",
            "--device",
            "Sensor=S1",
            "--config",
            "devices.json",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(e.port, 0);
        assert_eq!(e.config, Some(PathBuf::from("devices.json")));
        assert_eq!(
            e.gateways,
            vec![
                NamedToken {
                    name: "GW".into(),
                    token: "TOKEN".into()
                },
                NamedToken {
                    name: "Second".into(),
                    token: "T2=x".into()
                }
            ]
        );
        assert_eq!(e.devices.len(), 1);
        let Cli::Emulator(d) = parse(["emulator"]).unwrap() else {
            panic!()
        };
        assert_eq!((d.port, d.gateways.len()), (1883, 0));
        for listen in ["localhost:1884", "1884", "127.0.0.1:1884"] {
            let Cli::Emulator(e) = parse(["emulator", "--listen", listen]).unwrap() else {
                panic!()
            };
            assert_eq!(e.port, 1884);
        }
        for bad in [
            "0.0.0.0:1883",
            "10.0.0.1:1883",
            "localhost",
            "127.0.0.1:99999",
        ] {
            assert!(
                matches!(
                    parse(["emulator", "--listen", bad]),
                    Err(ArgError::InvalidValue {
                        option: "--listen",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        for bad in ["GW", "=T", "GW="] {
            assert!(parse(["emulator", "--gateway", bad]).is_err(), "{bad}");
        }
        assert_eq!(
            parse(["emulator", "--listen"]),
            Err(ArgError::MissingValue {
                command: "emulator",
                option: "--listen"
            })
        );
        assert!(matches!(
            parse(["emulator", "--listen", "1", "--listen", "2"]),
            Err(ArgError::Repeated { .. })
        ));
    }

    #[test]
    fn emulator_tls_and_x509_options() {
        let Cli::Emulator(e) = parse([
            "emulator",
            "--listen",
            "0",
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            "server.pem",
            "--tls-key=server.key",
            "--x509-gateway",
            "GW=certs/gw.pem",
            "--x509-device",
            "Sensor=s=1.pem",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            e.tls,
            Some(EmulatorTls {
                port: 0,
                cert: "server.pem".into(),
                key: "server.key".into(),
                client_certs: ClientCerts::Any,
            })
        );
        assert_eq!(
            e.x509_gateways,
            vec![NamedCert {
                name: "GW".into(),
                cert: "certs/gw.pem".into()
            }]
        );
        assert_eq!(e.x509_devices[0].cert, PathBuf::from("s=1.pem"));
        let Cli::Emulator(e) = parse([
            "emulator",
            "--tls-cert",
            "s.pem",
            "--tls-key",
            "s.key",
            "--client-ca",
            "ca.pem",
        ])
        .unwrap() else {
            panic!()
        };
        let tls = e.tls.unwrap();
        assert_eq!(tls.port, DEFAULT_TLS_PORT);
        assert_eq!(tls.client_certs, ClientCerts::VerifiedBy("ca.pem".into()));
        assert_eq!(
            parse(["emulator"]).map(|c| matches!(c, Cli::Emulator(EmulatorArgs { tls: None, .. }))),
            Ok(true)
        );

        for (args, what) in [
            (&["--tls-cert", "s.pem"][..], "--tls-key"),
            (&["--tls-key", "s.key"][..], "--tls-cert"),
            (&["--tls-listen", "0"][..], "--tls-listen needs"),
            (&["--client-ca", "ca.pem"][..], "--client-ca needs"),
        ] {
            let mut all = vec!["emulator"];
            all.extend_from_slice(args);
            let e = parse(all).unwrap_err();
            assert!(
                matches!(
                    e,
                    ArgError::Missing {
                        command: "emulator",
                        ..
                    }
                ),
                "{args:?}: {e:?}"
            );
            assert!(e.to_string().contains(what), "{args:?}: {e}");
        }
        let same = parse([
            "emulator",
            "--listen",
            "1884",
            "--tls-listen",
            "1884",
            "--tls-cert",
            "s.pem",
            "--tls-key",
            "s.key",
        ]);
        assert!(matches!(
            same,
            Err(ArgError::InvalidValue {
                option: "--tls-listen",
                ..
            })
        ));
        for bad in ["GW", "=gw.pem", "GW="] {
            assert!(
                matches!(
                    parse(["emulator", "--x509-gateway", bad]),
                    Err(ArgError::InvalidValue { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            parse(["emulator", "--tls-listen", "0.0.0.0:8883"]),
            Err(ArgError::InvalidValue { .. })
        ));
        assert!(matches!(
            parse(["emulator", "--tls-cert", "a", "--tls-cert", "b"]),
            Err(ArgError::Repeated { .. })
        ));
    }

    #[test]
    fn gateway_with_emulator_and_defaults() {
        let g = gw(&["--emulator"]).unwrap();
        assert_eq!(g.target, Target::Emulator);
        assert_eq!((g.devices, g.rate), (10, 100.0));
        assert_eq!(g.duration, Duration::from_secs(10));
        assert_eq!((g.qos, g.mqtt), (QoS::AtLeastOnce, ProtocolVersion::V5));
        let g = gw(&[
            "--emulator",
            "--devices",
            "5",
            "--rate=200",
            "--duration",
            "2",
            "--qos",
            "0",
            "--mqtt",
            "3",
        ])
        .unwrap();
        assert_eq!((g.devices, g.rate), (5, 200.0));
        assert_eq!(g.duration, Duration::from_secs(2));
        assert_eq!((g.qos, g.mqtt), (QoS::AtMostOnce, ProtocolVersion::V311));
        assert_eq!(
            gw(&["--emulator", "--host", "x"]),
            Err(ArgError::Conflict {
                command: "gateway",
                first: "--emulator",
                second: "--host"
            })
        );
        assert!(matches!(
            gw(&["--emulator", "--tls=yes"]),
            Err(ArgError::UnexpectedValue { .. })
        ));
    }

    #[test]
    fn gateway_credentials_and_tls() {
        let g = gw(&["--host", "tb", "--token", "T"]).unwrap();
        assert_eq!(
            g.target,
            Target::Server {
                host: "tb".into(),
                port: 1883,
                auth: Auth::Token("T".into()),
                tls: false,
                ca: None
            }
        );
        let g = gw(&[
            "--host",
            "tb",
            "--username",
            "u",
            "--password",
            "p",
            "--client-id",
            "c",
            "--ca",
            "ca.pem",
        ])
        .unwrap();
        let Target::Server {
            auth, tls, port, ..
        } = g.target
        else {
            panic!()
        };
        assert_eq!(
            auth,
            Auth::Basic {
                username: Some("u".into()),
                password: Some("p".into())
            }
        );
        assert_eq!((tls, port, g.client_id.as_deref()), (true, 8883, Some("c")));
        let g = gw(&[
            "--host", "tb", "--cert", "c.pem", "--key", "k.pem", "--port", "9",
        ])
        .unwrap();
        let Target::Server {
            auth, tls, port, ..
        } = g.target
        else {
            panic!()
        };
        assert!(matches!(auth, Auth::X509 { .. }));
        assert_eq!((tls, port), (true, 9));
        let g = gw(&["--host", "tb", "--client-id", "c"]).unwrap();
        assert!(matches!(
            g.target,
            Target::Server {
                auth: Auth::Basic { username: None, .. },
                ..
            }
        ));

        assert!(matches!(
            gw(&["--token", "T"]),
            Err(ArgError::Missing { .. })
        ));
        assert!(matches!(
            gw(&["--host", "tb"]),
            Err(ArgError::Missing { .. })
        ));
        assert!(matches!(
            gw(&["--host", "tb", "--token", "T", "--username", "u"]),
            Err(ArgError::Conflict { .. })
        ));
        assert!(matches!(
            gw(&["--host", "tb", "--cert", "c.pem"]),
            Err(ArgError::Missing { .. })
        ));
        assert!(matches!(
            gw(&["--host", "tb", "--password", "p"]),
            Err(ArgError::Missing { .. })
        ));
    }

    #[test]
    fn gateway_values_are_checked() {
        for (option, bad) in [
            ("--devices", "0"),
            ("--devices", "-3"),
            ("--devices", "many"),
            ("--rate", "0"),
            ("--rate", "NaN"),
            ("--rate", "inf"),
            ("--duration", "0"),
            ("--duration", "-1"),
            ("--duration", "2h"),
            ("--qos", "2"),
            ("--mqtt", "4"),
            ("--port", "0"),
            ("--port", "70000"),
        ] {
            let e = gw(&["--emulator", option, bad]);
            if option == "--port" {
                assert!(e.is_err(), "{option} {bad}");
            } else {
                assert!(
                    matches!(e, Err(ArgError::InvalidValue { option: o, .. }) if o == option),
                    "{option} {bad}: {e:?}"
                );
            }
        }
        let e = gw(&["--emulator", "--rate", "fast"]).unwrap_err();
        assert!(e.to_string().starts_with("invalid value 'fast' for --rate"));
        assert_eq!(e.usage(), GATEWAY_HELP);
    }

    #[test]
    fn durations() {
        let p = |v| parse_seconds("gateway", "--duration", v);
        assert_eq!(p("2"), Ok(Duration::from_secs(2)));
        assert_eq!(p("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(p("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(p("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(p("2m"), Ok(Duration::from_secs(120)));
        assert!(p("").is_err());
        assert!(p("ms").is_err());
        assert!(p("1e9").is_err());
    }
}
