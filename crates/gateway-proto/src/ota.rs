//! Firmware and software updates over the air (ThingsBoard's OTA over MQTT), for the
//! connection's own device.
//!
//! **Detection.** ThingsBoard announces an assigned package through shared attributes:
//! `fw_title`, `fw_version`, `fw_size`, `fw_checksum_algorithm`, `fw_checksum` (and `fw_url`
//! for a package hosted elsewhere); `sw_*` for software (`DefaultOtaPackageStateService`).
//! With [`Config::ota`](crate::Config::ota) set, the connection asks for these keys after
//! every CONNACK and watches every attribute update. A package whose title or version
//! differs from the version the application says is installed
//! ([`OtaConfig::current_firmware`], or the last [`OtaCommand::Updated`]) is announced with
//! [`OtaEvent::Available`]. A removed or replaced assignment ends with
//! [`OtaEvent::Withdrawn`].
//!
//! **Download.** On [`OtaCommand::Download`] (or by itself with
//! [`OtaConfig::auto_download`]) the connection fetches the image chunk by chunk: a QoS 1
//! publish on `v2/fw/request/{id}/chunk/{n}` whose payload is the chunk size as decimal text,
//! answered on `v2/fw/response/{id}/chunk/{n}` (`v2/sw/...` for software). Every chunk goes
//! to the application as [`OtaEvent::Chunk`] the moment it arrives; the connection never
//! holds more than the chunk in hand, and computes the checksum incrementally (see
//! [`checksum`](crate::checksum)). The image ends when `fw_size` bytes have arrived or a
//! chunk comes back short (the server answers past the end with an empty payload).
//!
//! One chunk is requested at a time. A chunk that does not arrive within
//! [`OtaConfig::chunk_timeout`] is requested again, up to [`OtaConfig::chunk_attempts`]
//! times. After a reconnect the connection first reads the assignment again (the server
//! serves whatever is assigned *now*) and, if it is unchanged, resumes with the next missing
//! chunk; ThingsBoard keeps no per-download state across sessions, so nothing is lost. Server
//! errors arrive as text on `v2/fw/error` (also for software), after which ThingsBoard closes
//! the connection: the download fails with [`OtaError::Server`]. Only one download runs at a
//! time, because that error topic does not say which one failed.
//!
//! **State telemetry.** ThingsBoard's dashboards follow `fw_state` (`sw_state`). The
//! connection reports `DOWNLOADING` (the [`OtaCommand::Download`] publish itself, or its own
//! when it starts by itself), then `DOWNLOADED` and `VERIFIED`, or `FAILED` with `fw_error`.
//! Installing is the application's: [`OtaCommand::Updating`], then [`OtaCommand::Updated`]
//! (`UPDATED` with `current_fw_title` / `current_fw_version`) or [`OtaCommand::Failed`].

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value};

use crate::checksum::{ChecksumAlgorithm, Hasher};
use crate::event::Event;
use crate::output::OutputQueue;
use crate::payload::ObjWriter;
pub use crate::topic::OtaKind;

/// The largest chunk size accepted in [`OtaConfig::chunk_size`]: ThingsBoard's default
/// `transport.mqtt.netty.max_payload_size`. A larger request is answered with
/// `PAYLOAD_TOO_LARGE` on `v2/fw/error`, and the server closes the connection.
pub const MAX_OTA_CHUNK_SIZE: usize = 65_536;

/// Room for a chunk response's topic and header on top of the chunk itself, when checking
/// [`OtaConfig::chunk_size`] against [`Config::max_incoming_packet`](crate::Config::max_incoming_packet).
pub const OTA_CHUNK_OVERHEAD: usize = 64;

/// ThingsBoard parses chunk numbers and request ids as a Java `int`.
const MAX_WIRE_NUMBER: u32 = i32::MAX as u32;

/// The attribute suffixes that describe a package (`fw_` / `sw_` + suffix).
const KEYS: [&str; 6] = [
    "title",
    "version",
    "size",
    "checksum_algorithm",
    "checksum",
    "url",
];

/// A package identity: what ThingsBoard compares (`fw_title` and `fw_version`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OtaVersion {
    /// Package title.
    pub title: String,
    /// Package version.
    pub version: String,
}

impl OtaVersion {
    /// A title and version.
    pub fn new(title: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            version: version.into(),
        }
    }
}

impl fmt::Display for OtaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.title, self.version)
    }
}

/// How the connection handles firmware and software updates
/// ([`Config::ota`](crate::Config::ota)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OtaConfig {
    /// Watch firmware assignments (`fw_*`). Default true.
    pub firmware: bool,
    /// Watch software assignments (`sw_*`). Default true.
    pub software: bool,
    /// The firmware installed now; an assignment of the same title and version is not
    /// announced. Default `None` (every assignment is announced).
    pub current_firmware: Option<OtaVersion>,
    /// The software installed now. Default `None`.
    pub current_software: Option<OtaVersion>,
    /// Start downloading an announced package without waiting for
    /// [`OtaCommand::Download`]. A package is downloaded by itself at most once (a failed one
    /// is not retried by itself), and never when it has a URL (`fw_url`): the application
    /// fetches those. Default false.
    pub auto_download: bool,
    /// Bytes asked for per chunk, 1..=[`MAX_OTA_CHUNK_SIZE`]; plus [`OTA_CHUNK_OVERHEAD`] it
    /// must fit [`Config::max_incoming_packet`](crate::Config::max_incoming_packet). Each chunk
    /// is one event. Default 16 KiB.
    pub chunk_size: usize,
    /// How long a chunk may take before it is requested again. Default 30 s.
    pub chunk_timeout: Duration,
    /// How many times a chunk is requested before the download fails. Default 5.
    pub chunk_attempts: u32,
}

impl Default for OtaConfig {
    fn default() -> Self {
        Self {
            firmware: true,
            software: true,
            current_firmware: None,
            current_software: None,
            auto_download: false,
            chunk_size: 16 * 1024,
            chunk_timeout: Duration::from_secs(30),
            chunk_attempts: 5,
        }
    }
}

impl OtaConfig {
    /// Watches firmware and software, with the defaults documented on each field.
    pub fn new() -> Self {
        Self::default()
    }

    fn watches(&self, kind: OtaKind) -> bool {
        match kind {
            OtaKind::Firmware => self.firmware,
            OtaKind::Software => self.software,
        }
    }

    fn current(&self, kind: OtaKind) -> Option<OtaVersion> {
        match kind {
            OtaKind::Firmware => self.current_firmware.clone(),
            OtaKind::Software => self.current_software.clone(),
        }
    }
}

/// A package assigned to this device, as its shared attributes describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OtaPackage {
    /// Firmware or software.
    pub kind: OtaKind,
    /// `fw_title`.
    pub title: String,
    /// `fw_version`.
    pub version: String,
    /// `fw_size` in bytes.
    pub size: Option<u64>,
    /// `fw_checksum_algorithm`, as ThingsBoard names it (e.g. `SHA256`).
    pub checksum_algorithm: Option<String>,
    /// `fw_checksum`, in ThingsBoard's text form.
    pub checksum: Option<String>,
    /// `fw_url`: the package is hosted elsewhere and is not served over MQTT.
    pub url: Option<String>,
}

impl OtaPackage {
    /// Title and version.
    pub fn version(&self) -> OtaVersion {
        OtaVersion::new(&self.title, &self.version)
    }

    /// The checksum algorithm, if the package names one this crate computes.
    pub fn algorithm(&self) -> Result<ChecksumAlgorithm, OtaError> {
        let name = self
            .checksum_algorithm
            .as_deref()
            .ok_or(OtaError::MissingChecksum)?;
        ChecksumAlgorithm::parse(name).ok_or_else(|| OtaError::UnsupportedAlgorithm(name.into()))
    }

    /// Algorithm and expected checksum, or why the image could not be verified.
    fn verification(&self) -> Result<(ChecksumAlgorithm, String), OtaError> {
        let algorithm = self.algorithm()?;
        let checksum = self.checksum.clone().ok_or(OtaError::MissingChecksum)?;
        Ok((algorithm, checksum))
    }

    /// Reads the package of `kind` from attribute values keyed by suffix (`title`, ...).
    fn from_attributes(kind: OtaKind, attrs: &Map<String, Value>) -> Option<Self> {
        let text = |key: &str| match attrs.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => Some(v.to_string()),
            _ => None,
        };
        let size = match attrs.get("size") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        Some(Self {
            kind,
            title: text("title")?,
            version: text("version")?,
            size,
            checksum_algorithm: text("checksum_algorithm"),
            checksum: text("checksum"),
            url: text("url"),
        })
    }
}

/// `fw_state` / `sw_state` values (ThingsBoard's `OtaPackageUpdateStatus`, less `QUEUED` and
/// `INITIATED`, which the server sets itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OtaState {
    /// The image is being fetched.
    Downloading,
    /// Every byte arrived.
    Downloaded,
    /// The checksum matched.
    Verified,
    /// The application is installing it.
    Updating,
    /// Installed; reported with `current_fw_title` / `current_fw_version`.
    Updated,
    /// Something failed; reported with `fw_error`.
    Failed,
}

impl OtaState {
    /// The wire name, e.g. `DOWNLOADING`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Downloading => "DOWNLOADING",
            Self::Downloaded => "DOWNLOADED",
            Self::Verified => "VERIFIED",
            Self::Updating => "UPDATING",
            Self::Updated => "UPDATED",
            Self::Failed => "FAILED",
        }
    }
}

/// The state telemetry: `{"current_fw_title":..,"current_fw_version":..,"fw_state":..,
/// "fw_error":..}`, the current version and the error only when given.
pub fn state_telemetry(
    kind: OtaKind,
    state: OtaState,
    error: Option<&str>,
    current: Option<&OtaVersion>,
) -> Bytes {
    let p = kind.prefix();
    let mut buf = BytesMut::new();
    let mut o = ObjWriter::open(&mut buf);
    if let Some(c) = current {
        o.field(&format!("current_{p}_title"), &c.title);
        o.field(&format!("current_{p}_version"), &c.version);
    }
    o.field(&format!("{p}_state"), state.as_str());
    if let Some(e) = error {
        o.field(&format!("{p}_error"), e);
    }
    o.close();
    buf.freeze()
}

/// Application requests about updates ([`Command::Ota`](crate::Command::Ota)). Each one
/// publishes its state telemetry on `v1/devices/me/telemetry` at QoS 1 and ends like a
/// publish ([`Event::Delivered`] or `Failed`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OtaCommand {
    /// Reports `DOWNLOADING` and fetches the assigned package of this kind; the image
    /// arrives as [`OtaEvent::Started`], [`OtaEvent::Chunk`]s, then [`OtaEvent::Verified`]
    /// or [`OtaEvent::Failed`]. Refused (see [`OtaCommandError`]) when nothing is assigned,
    /// a download runs, the package has a URL, or its checksum cannot be verified.
    Download {
        /// Firmware or software.
        kind: OtaKind,
    },
    /// Reports `UPDATING`: the application is installing the verified image.
    Updating {
        /// Firmware or software.
        kind: OtaKind,
    },
    /// Reports `UPDATED` with `current_*_title` / `current_*_version`, and makes this the
    /// installed version: an assignment of it is no longer announced.
    Updated {
        /// Firmware or software.
        kind: OtaKind,
        /// What is installed now.
        version: OtaVersion,
    },
    /// Reports `FAILED` with `*_error` (e.g. the image could not be written), and stops a
    /// download of this kind if one runs.
    Failed {
        /// Firmware or software.
        kind: OtaKind,
        /// Reported as `fw_error` / `sw_error`.
        error: String,
    },
}

impl OtaCommand {
    /// The kind the command is about.
    pub fn kind(&self) -> OtaKind {
        match self {
            Self::Download { kind }
            | Self::Updating { kind }
            | Self::Updated { kind, .. }
            | Self::Failed { kind, .. } => *kind,
        }
    }
}

/// What the connection tells the application about updates ([`Event::Ota`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OtaEvent {
    /// A package is assigned that differs from the installed version.
    Available(OtaPackage),
    /// A download started (by [`OtaCommand::Download`] or by itself): chunks follow from
    /// offset 0. Not repeated when a download resumes after a reconnect.
    Started(OtaPackage),
    /// The next piece of the image, in order, never repeated. Write it out; the connection
    /// keeps nothing.
    Chunk {
        /// Firmware or software.
        kind: OtaKind,
        /// Where `data` starts in the image.
        offset: u64,
        /// The bytes.
        data: Bytes,
    },
    /// The whole image arrived and its checksum matched (`DOWNLOADED` and `VERIFIED` were
    /// reported). Install it, reporting [`OtaCommand::Updating`] and then
    /// [`OtaCommand::Updated`] or [`OtaCommand::Failed`].
    Verified(OtaPackage),
    /// The download failed (`FAILED` was reported with the error). Discard what was
    /// written.
    Failed {
        /// The package.
        package: OtaPackage,
        /// Why.
        error: OtaError,
    },
    /// The assignment was removed or replaced on the server (a replacement is then
    /// announced with [`OtaEvent::Available`]). If a download of it was running, it
    /// stopped: discard what was written.
    Withdrawn {
        /// The package that is no longer assigned.
        package: OtaPackage,
        /// A download of it was running.
        interrupted: bool,
    },
}

/// Why a download failed. Its `Display` text is what is reported as `fw_error`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OtaError {
    /// The image's checksum differs from `fw_checksum`.
    ChecksumMismatch {
        /// `fw_checksum`.
        expected: String,
        /// What the image hashes to, in ThingsBoard's form.
        actual: String,
    },
    /// The package has no `fw_checksum` or no `fw_checksum_algorithm`.
    MissingChecksum,
    /// `fw_checksum_algorithm` names an algorithm this crate does not know.
    UnsupportedAlgorithm(String),
    /// The image is not `fw_size` bytes long.
    SizeMismatch {
        /// `fw_size`.
        expected: u64,
        /// Bytes received when the mismatch showed.
        received: u64,
    },
    /// A chunk did not arrive after [`OtaConfig::chunk_attempts`] requests.
    ChunkTimeout {
        /// The chunk number.
        chunk: u32,
        /// Requests made.
        attempts: u32,
    },
    /// The image needs more chunks than ThingsBoard can number (2^31 - 1).
    TooManyChunks,
    /// The server's error on `v2/fw/error`, e.g. `NOT_FOUND` or `PAYLOAD_TOO_LARGE`.
    Server(String),
}

impl fmt::Display for OtaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ChecksumMismatch { expected, actual } => write!(
                f,
                "Checksum verification failed: expected {expected}, got {actual}"
            ),
            Self::MissingChecksum => f.write_str("package has no checksum to verify"),
            Self::UnsupportedAlgorithm(name) => {
                write!(f, "unsupported checksum algorithm {name:?}")
            }
            Self::SizeMismatch { expected, received } => write!(
                f,
                "image size mismatch: expected {expected} bytes, received {received}"
            ),
            Self::ChunkTimeout { chunk, attempts } => {
                write!(f, "chunk {chunk} did not arrive after {attempts} requests")
            }
            Self::TooManyChunks => f.write_str("image needs more than 2^31-1 chunks"),
            Self::Server(text) => write!(f, "server error: {text}"),
        }
    }
}

impl std::error::Error for OtaError {}

/// Why an [`OtaCommand`] was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OtaCommandError {
    /// [`Config::ota`](crate::Config::ota) is not set, or does not watch this kind.
    NotWatched(OtaKind),
    /// No package of this kind is assigned (or its attributes have not arrived yet).
    NothingAssigned(OtaKind),
    /// A download runs already (one at a time).
    Busy {
        /// The kind being downloaded.
        active: OtaKind,
    },
    /// The package is hosted at `fw_url`: fetch it from there.
    ExternalUrl(OtaKind),
    /// The package's checksum cannot be verified.
    Unverifiable(OtaError),
}

impl fmt::Display for OtaCommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotWatched(kind) => write!(f, "{kind:?} updates are not enabled"),
            Self::NothingAssigned(kind) => write!(f, "no {kind:?} package is assigned"),
            Self::Busy { active } => write!(f, "a {active:?} download is running"),
            Self::ExternalUrl(kind) => {
                write!(
                    f,
                    "the {kind:?} package is hosted at a URL, not served over MQTT"
                )
            }
            Self::Unverifiable(e) => write!(f, "the package cannot be verified: {e}"),
        }
    }
}

impl std::error::Error for OtaCommandError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Unverifiable(e) => Some(e),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The state machine
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The next chunk request waits for the lane.
    Send,
    /// Requested; the chunk is due by then.
    Waiting(Instant),
    /// After a (re)connect: waiting for the assignment to be confirmed.
    AwaitInfo,
}

#[derive(Debug)]
struct Download {
    package: OtaPackage,
    hasher: Hasher,
    expected: String,
    request_id: u32,
    /// Bytes asked for per chunk: fixed once the first chunk was asked for (the server
    /// finds chunk `n` at `n * chunk_size`).
    chunk_size: usize,
    next_chunk: u32,
    received: u64,
    step: Step,
    /// Failed requests of the current chunk.
    attempts: u32,
}

#[derive(Debug)]
struct Slot {
    kind: OtaKind,
    watch: bool,
    /// The package attributes last seen, keyed by suffix (`title`, ...).
    attrs: Map<String, Value>,
    /// What they describe.
    assigned: Option<OtaPackage>,
    /// Announced with `Available` and not withdrawn since.
    announced: Option<OtaPackage>,
    /// The last package a download was started for (auto-download starts a package once).
    handled: Option<OtaPackage>,
    current: Option<OtaVersion>,
    download: Option<Download>,
    /// Auto-download waits for the other kind's download to end.
    auto_pending: bool,
}

/// A chunk request for the lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkRequest {
    pub(crate) kind: OtaKind,
    pub(crate) request_id: u32,
    pub(crate) chunk: u32,
}

#[derive(Debug)]
pub(crate) struct Ota {
    slots: [Slot; 2],
    active: Option<OtaKind>,
    connected: bool,
    /// An attribute request for the package keys is due.
    info_wanted: bool,
    /// Unanswered attribute requests this session.
    info_attempts: u32,
    next_request_id: u32,
    auto: bool,
    chunk_size: usize,
    /// The server's `maxPayloadSize`, once learned: ThingsBoard answers a larger chunk
    /// request with `PAYLOAD_TOO_LARGE`.
    chunk_cap: Option<usize>,
    chunk_timeout: Duration,
    max_attempts: u32,
    /// State telemetry the connection publishes for us. Bound: a few per input.
    reports: VecDeque<(OtaKind, Bytes)>,
    pub(crate) chunks_received: u64,
    pub(crate) chunk_retries: u64,
}

fn idx(kind: OtaKind) -> usize {
    match kind {
        OtaKind::Firmware => 0,
        OtaKind::Software => 1,
    }
}

impl Ota {
    pub(crate) fn new(config: &OtaConfig) -> Self {
        let slot = |kind| Slot {
            kind,
            watch: config.watches(kind),
            attrs: Map::new(),
            assigned: None,
            announced: None,
            handled: None,
            current: config.current(kind),
            download: None,
            auto_pending: false,
        };
        Self {
            slots: [slot(OtaKind::Firmware), slot(OtaKind::Software)],
            active: None,
            connected: false,
            info_wanted: false,
            info_attempts: 0,
            next_request_id: 0,
            auto: config.auto_download,
            chunk_size: config.chunk_size,
            chunk_cap: None,
            chunk_timeout: config.chunk_timeout,
            max_attempts: config.chunk_attempts.max(1),
            reports: VecDeque::new(),
            chunks_received: 0,
            chunk_retries: 0,
        }
    }

    fn slot(&mut self, kind: OtaKind) -> &mut Slot {
        &mut self.slots[idx(kind)]
    }

    fn download(&mut self, kind: OtaKind) -> Option<&mut Download> {
        self.slots[idx(kind)].download.as_mut()
    }

    /// The shared attribute keys asked for after each CONNACK.
    pub(crate) fn info_keys(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter(|s| s.watch)
            .flat_map(|s| KEYS.iter().map(|k| format!("{}_{k}", s.kind.prefix())))
            .collect()
    }

    /// Publishes are due (while connected).
    pub(crate) fn wants_send(&self) -> bool {
        self.connected
            && (self.info_wanted
                || self.active.is_some_and(|k| {
                    self.slots[idx(k)]
                        .download
                        .as_ref()
                        .is_some_and(|d| d.step == Step::Send)
                }))
    }

    /// Takes the due attribute request, if any.
    pub(crate) fn take_info(&mut self) -> bool {
        std::mem::take(&mut self.info_wanted) && self.connected
    }

    /// The attribute request could not go out after all.
    pub(crate) fn untake_info(&mut self) {
        self.info_wanted = true;
    }

    /// Takes the due chunk request, if any; its deadline starts now.
    pub(crate) fn take_chunk(&mut self, now: Instant) -> Option<ChunkRequest> {
        if !self.connected {
            return None;
        }
        let kind = self.active?;
        let deadline = now + self.chunk_timeout;
        let d = self.download(kind)?;
        if d.step != Step::Send {
            return None;
        }
        d.step = Step::Waiting(deadline);
        Some(ChunkRequest {
            kind,
            request_id: d.request_id,
            chunk: d.next_chunk,
        })
    }

    /// The chunk request could not go out after all.
    pub(crate) fn untake_chunk(&mut self, kind: OtaKind) {
        if let Some(d) = self.download(kind) {
            if matches!(d.step, Step::Waiting(_)) {
                d.step = Step::Send;
            }
        }
    }

    /// Bytes of a chunk request's payload for a download of `kind`: its chunk size as
    /// decimal text.
    pub(crate) fn chunk_size_text(&self, kind: OtaKind) -> String {
        self.slots[idx(kind)]
            .download
            .as_ref()
            .map_or_else(|| self.effective_chunk_size(), |d| d.chunk_size)
            .to_string()
    }

    /// The configured chunk size, lowered to the server's payload limit once known.
    fn effective_chunk_size(&self) -> usize {
        self.chunk_cap
            .map_or(self.chunk_size, |cap| self.chunk_size.min(cap))
    }

    /// The server's payload limit was learned (`None`: it set none). Downloads that have
    /// not asked for a chunk yet take it into account; one under way keeps its chunk size
    /// (chunk numbers are offsets in units of it).
    pub(crate) fn set_chunk_cap(&mut self, cap: Option<usize>) {
        self.chunk_cap = cap.map(|c| c.max(1));
        let size = self.effective_chunk_size();
        for slot in &mut self.slots {
            if let Some(d) = &mut slot.download {
                if d.next_chunk == 0 && d.received == 0 && !matches!(d.step, Step::Waiting(_)) {
                    d.chunk_size = size;
                }
            }
        }
    }

    /// State telemetry to publish, oldest first.
    pub(crate) fn take_report(&mut self) -> Option<(OtaKind, Bytes)> {
        self.reports.pop_front()
    }

    fn report(&mut self, kind: OtaKind, state: OtaState, error: Option<&str>) {
        self.reports
            .push_back((kind, state_telemetry(kind, state, error, None)));
    }

    // ----- session ---------------------------------------------------------------------

    pub(crate) fn on_connected(&mut self) {
        self.connected = true;
        self.info_attempts = 0;
        self.info_wanted = self.slots.iter().any(|s| s.watch);
    }

    /// The session ended: an outstanding chunk request is void; the download waits for the
    /// next session to confirm the assignment.
    pub(crate) fn on_connection_lost(&mut self) {
        self.connected = false;
        self.info_wanted = false;
        for slot in &mut self.slots {
            if let Some(d) = &mut slot.download {
                d.step = Step::AwaitInfo;
            }
        }
    }

    // ----- assignments -----------------------------------------------------------------

    /// The answer to the attribute request: the whole truth about the package keys.
    pub(crate) fn on_info(&mut self, shared: &Map<String, Value>, out: &mut OutputQueue) {
        for kind in [OtaKind::Firmware, OtaKind::Software] {
            if !self.slot(kind).watch {
                continue;
            }
            let prefix = kind.prefix();
            let attrs: Map<String, Value> = shared
                .iter()
                .filter_map(|(k, v)| package_key(prefix, k).map(|s| (s.to_owned(), v.clone())))
                .collect();
            self.slot(kind).attrs = attrs;
            self.reconcile(kind, out);
            if let Some(d) = self.download(kind) {
                if d.step == Step::AwaitInfo {
                    d.step = Step::Send;
                }
            }
        }
    }

    /// The attribute request went unanswered (or was refused).
    pub(crate) fn on_info_timeout(&mut self, out: &mut OutputQueue) {
        self.info_attempts += 1;
        if let Some(kind) = self.active {
            let max = self.max_attempts;
            let mut failed = None;
            let mut waited = false;
            if let Some(d) = self.download(kind) {
                if d.step == Step::AwaitInfo {
                    waited = true;
                    d.attempts += 1;
                    if d.attempts >= max {
                        failed = Some(OtaError::ChunkTimeout {
                            chunk: d.next_chunk,
                            attempts: d.attempts,
                        });
                    }
                }
            }
            if waited {
                self.chunk_retries += 1;
            }
            if let Some(error) = failed {
                self.fail(kind, error, out);
            }
        }
        if self.connected && self.info_attempts < self.max_attempts {
            self.info_wanted = true;
        }
    }

    /// A shared attribute update; only the package keys matter here.
    pub(crate) fn on_attributes(
        &mut self,
        values: &Map<String, Value>,
        deleted: &[String],
        out: &mut OutputQueue,
    ) {
        for kind in [OtaKind::Firmware, OtaKind::Software] {
            if !self.slot(kind).watch {
                continue;
            }
            let prefix = kind.prefix();
            let mut touched = false;
            let slot = self.slot(kind);
            for (k, v) in values {
                if let Some(suffix) = package_key(prefix, k) {
                    touched = true;
                    if v.is_null() {
                        slot.attrs.remove(suffix);
                    } else {
                        slot.attrs.insert(suffix.to_owned(), v.clone());
                    }
                }
            }
            for k in deleted {
                if let Some(suffix) = package_key(prefix, k) {
                    touched = true;
                    slot.attrs.remove(suffix);
                }
            }
            if touched {
                self.reconcile(kind, out);
            }
        }
    }

    /// Brings announcements and downloads in line with the attributes.
    fn reconcile(&mut self, kind: OtaKind, out: &mut OutputQueue) {
        let slot = self.slot(kind);
        let new = OtaPackage::from_attributes(kind, &slot.attrs);
        if slot.assigned == new {
            return;
        }
        slot.assigned = new.clone();
        slot.auto_pending = false;
        let interrupted = slot.download.take();
        let old = slot.announced.take();
        match (interrupted, old) {
            (Some(d), _) => {
                if self.active == Some(kind) {
                    self.active = None;
                }
                out.event(Event::Ota(OtaEvent::Withdrawn {
                    package: d.package,
                    interrupted: true,
                }));
            }
            (None, Some(package)) => out.event(Event::Ota(OtaEvent::Withdrawn {
                package,
                interrupted: false,
            })),
            (None, None) => {}
        }
        if let Some(package) = new {
            let slot = self.slot(kind);
            if slot.current.as_ref() != Some(&package.version()) {
                slot.announced = Some(package.clone());
                out.event(Event::Ota(OtaEvent::Available(package)));
                self.try_auto(kind, out);
            }
        }
        self.resume_pending(out);
    }

    fn try_auto(&mut self, kind: OtaKind, out: &mut OutputQueue) {
        if !self.auto {
            return;
        }
        let active = self.active;
        let slot = self.slot(kind);
        let Some(package) = slot.announced.clone() else {
            return;
        };
        if slot.handled.as_ref() == Some(&package)
            || slot.download.is_some()
            || package.url.is_some()
        {
            return;
        }
        if active.is_some() {
            slot.auto_pending = true;
            return;
        }
        match package.verification() {
            Ok(_) => self.start(kind, true, out),
            Err(error) => {
                slot.handled = Some(package.clone());
                self.report(kind, OtaState::Failed, Some(&error.to_string()));
                out.event(Event::Ota(OtaEvent::Failed { package, error }));
            }
        }
    }

    /// Starts a waiting auto-download once nothing else runs.
    fn resume_pending(&mut self, out: &mut OutputQueue) {
        if self.active.is_some() {
            return;
        }
        for kind in [OtaKind::Firmware, OtaKind::Software] {
            if std::mem::take(&mut self.slot(kind).auto_pending) {
                self.try_auto(kind, out);
                if self.active.is_some() {
                    return;
                }
            }
        }
    }

    // ----- commands ----------------------------------------------------------------------

    /// Whether [`OtaCommand::Download`] for `kind` would start.
    pub(crate) fn check_download(&self, kind: OtaKind) -> Result<(), OtaCommandError> {
        let slot = &self.slots[idx(kind)];
        if !slot.watch {
            return Err(OtaCommandError::NotWatched(kind));
        }
        let package = slot
            .assigned
            .as_ref()
            .ok_or(OtaCommandError::NothingAssigned(kind))?;
        if let Some(active) = self.active {
            return Err(OtaCommandError::Busy { active });
        }
        if package.url.is_some() {
            return Err(OtaCommandError::ExternalUrl(kind));
        }
        package
            .verification()
            .map(|_| ())
            .map_err(OtaCommandError::Unverifiable)
    }

    /// [`OtaCommand::Download`] was accepted (its publish reports `DOWNLOADING`).
    pub(crate) fn start_download(&mut self, kind: OtaKind, out: &mut OutputQueue) {
        if self.check_download(kind).is_ok() {
            self.start(kind, false, out);
        }
    }

    fn start(&mut self, kind: OtaKind, report: bool, out: &mut OutputQueue) {
        let connected = self.connected;
        self.next_request_id = if self.next_request_id >= MAX_WIRE_NUMBER {
            1
        } else {
            self.next_request_id + 1
        };
        let request_id = self.next_request_id;
        let chunk_size = self.effective_chunk_size();
        let slot = self.slot(kind);
        let Some(package) = slot.assigned.clone() else {
            return;
        };
        let Ok((algorithm, expected)) = package.verification() else {
            return;
        };
        slot.download = Some(Download {
            package: package.clone(),
            hasher: algorithm.hasher(),
            expected,
            request_id,
            chunk_size,
            next_chunk: 0,
            received: 0,
            step: if connected {
                Step::Send
            } else {
                Step::AwaitInfo
            },
            attempts: 0,
        });
        slot.handled = Some(package.clone());
        slot.auto_pending = false;
        self.active = Some(kind);
        if report {
            self.report(kind, OtaState::Downloading, None);
        }
        out.event(Event::Ota(OtaEvent::Started(package)));
    }

    /// [`OtaCommand::Updated`] was accepted.
    pub(crate) fn on_updated(&mut self, kind: OtaKind, version: OtaVersion) {
        self.slot(kind).current = Some(version);
    }

    /// [`OtaCommand::Failed`] was accepted: the application gave up on this kind.
    pub(crate) fn on_app_failed(&mut self, kind: OtaKind, out: &mut OutputQueue) {
        if self.slot(kind).download.take().is_some() && self.active == Some(kind) {
            self.active = None;
            self.resume_pending(out);
        }
    }

    // ----- the image ---------------------------------------------------------------------

    /// A chunk response. Returns false when no download waits for it (a late duplicate
    /// after a retry, or an unknown request).
    pub(crate) fn on_chunk(
        &mut self,
        kind: OtaKind,
        request_id: u64,
        chunk: u64,
        data: Bytes,
        out: &mut OutputQueue,
    ) -> bool {
        let Some(d) = self.download(kind) else {
            return false;
        };
        let chunk_size = d.chunk_size as u64;
        if u64::from(d.request_id) != request_id
            || u64::from(d.next_chunk) != chunk
            || d.step == Step::AwaitInfo
        {
            return false;
        }
        let len = data.len() as u64;
        let total = d.received.saturating_add(len);
        let size = d.package.size;
        if size.is_some_and(|s| total > s) {
            let error = OtaError::SizeMismatch {
                expected: size.unwrap_or_default(),
                received: total,
            };
            self.fail(kind, error, out);
            return true;
        }
        if len > 0 {
            d.hasher.update(&data);
            out.event(Event::Ota(OtaEvent::Chunk {
                kind,
                offset: d.received,
                data,
            }));
        }
        d.received = total;
        d.next_chunk += 1;
        d.attempts = 0;
        let ended = len < chunk_size || size == Some(total);
        let too_many = d.next_chunk > MAX_WIRE_NUMBER;
        if !ended && !too_many {
            d.step = Step::Send;
        }
        self.chunks_received += 1;
        match (ended, size) {
            (true, Some(expected)) if expected != total => self.fail(
                kind,
                OtaError::SizeMismatch {
                    expected,
                    received: total,
                },
                out,
            ),
            (true, _) => self.finish(kind, out),
            (false, _) if too_many => self.fail(kind, OtaError::TooManyChunks, out),
            (false, _) => {}
        }
        true
    }

    /// Text on `v2/fw/error`. Returns false when no download runs.
    pub(crate) fn on_error(&mut self, text: &str, out: &mut OutputQueue) -> bool {
        let Some(kind) = self.active else {
            return false;
        };
        self.fail(kind, OtaError::Server(text.trim().to_owned()), out);
        true
    }

    /// When the outstanding chunk is due.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let kind = self.active?;
        match self.slots[idx(kind)].download.as_ref()?.step {
            Step::Waiting(at) => Some(at),
            _ => None,
        }
    }

    /// The chunk deadline passed: ask again, or give up.
    pub(crate) fn on_timeout(&mut self, now: Instant, out: &mut OutputQueue) {
        let Some(kind) = self.active else {
            return;
        };
        let max = self.max_attempts;
        let Some(d) = self.download(kind) else {
            return;
        };
        let Step::Waiting(at) = d.step else {
            return;
        };
        if at > now {
            return;
        }
        d.attempts += 1;
        let error = (d.attempts >= max).then_some(OtaError::ChunkTimeout {
            chunk: d.next_chunk,
            attempts: d.attempts,
        });
        d.step = Step::Send;
        self.chunk_retries += 1;
        if let Some(error) = error {
            self.fail(kind, error, out);
        }
    }

    fn finish(&mut self, kind: OtaKind, out: &mut OutputQueue) {
        let Some(d) = self.slot(kind).download.take() else {
            return;
        };
        self.active = None;
        self.report(kind, OtaState::Downloaded, None);
        let actual = d.hasher.finish_hex();
        if actual.eq_ignore_ascii_case(d.expected.trim()) {
            self.report(kind, OtaState::Verified, None);
            out.event(Event::Ota(OtaEvent::Verified(d.package)));
        } else {
            let error = OtaError::ChecksumMismatch {
                expected: d.expected,
                actual,
            };
            self.report(kind, OtaState::Failed, Some(&error.to_string()));
            out.event(Event::Ota(OtaEvent::Failed {
                package: d.package,
                error,
            }));
        }
        self.resume_pending(out);
    }

    fn fail(&mut self, kind: OtaKind, error: OtaError, out: &mut OutputQueue) {
        let Some(d) = self.slot(kind).download.take() else {
            return;
        };
        if self.active == Some(kind) {
            self.active = None;
        }
        self.report(kind, OtaState::Failed, Some(&error.to_string()));
        out.event(Event::Ota(OtaEvent::Failed {
            package: d.package,
            error,
        }));
        self.resume_pending(out);
    }
}

/// `fw_title` → `title` for `prefix` = `fw`, if it is a package key.
fn package_key<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    let suffix = key.strip_prefix(prefix)?.strip_prefix('_')?;
    KEYS.contains(&suffix).then_some(suffix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn package_from_attributes() {
        let attrs = json!({"title":"cam","version":2.0,"size":"10","checksum_algorithm":"SHA256","checksum":"ab"});
        let Value::Object(attrs) = attrs else {
            unreachable!()
        };
        let p = OtaPackage::from_attributes(OtaKind::Firmware, &attrs).unwrap_or_else(|| {
            panic!("package");
        });
        assert_eq!(p.version(), OtaVersion::new("cam", "2.0"));
        assert_eq!(p.size, Some(10));
        assert_eq!(p.algorithm(), Ok(ChecksumAlgorithm::Sha256));
        let mut partial = attrs.clone();
        partial.remove("version");
        assert_eq!(
            OtaPackage::from_attributes(OtaKind::Firmware, &partial),
            None
        );
        assert_eq!(
            package_key("fw", "fw_checksum_algorithm"),
            Some("checksum_algorithm")
        );
        assert_eq!(package_key("fw", "fw_state"), None);
        assert_eq!(package_key("fw", "sw_title"), None);
        assert_eq!(package_key("fw", "fwtitle"), None);
    }

    #[test]
    fn state_telemetry_shapes() {
        let t = state_telemetry(OtaKind::Software, OtaState::Failed, Some("boom"), None);
        assert_eq!(&t[..], br#"{"sw_state":"FAILED","sw_error":"boom"}"#);
        let v = OtaVersion::new("cam", "2.0");
        let t = state_telemetry(OtaKind::Firmware, OtaState::Updated, None, Some(&v));
        assert_eq!(
            &t[..],
            br#"{"current_fw_title":"cam","current_fw_version":"2.0","fw_state":"UPDATED"}"#
        );
    }
}
