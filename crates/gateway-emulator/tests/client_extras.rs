//! Provisioning and firmware/software OTA end to end: the client core
//! (`gateway_proto::Connection`) against the sans-IO emulator on one virtual clock, the
//! emulator serving `/provision/request` and the OTA chunks the way ThingsBoard does
//! (spec §3.6).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use gateway_emulator::{Emulator, NewDevice, OtaPackage, ProvisionProfile, ProvisionStrategy};
use gateway_proto::checksum::ChecksumAlgorithm;
use gateway_proto::ota::OtaError;
use gateway_proto::payload::ProvisionRequest;
use gateway_proto::{
    Command, Config, Connection, Event, OtaConfig, OtaEvent, OtaKind, ProvisionError,
    ProvisionedCredentials, Role, State,
};
use serde_json::{json, Map, Value};

mod link;

use link::Link;

/// Helpers of these tests on top of the shared harness.
impl Link {
    /// Replaces the client (whose connection has ended) with a new one on `config`, run
    /// until quiet.
    fn start(&mut self, config: Config) {
        self.conn = Connection::new(config, self.now).unwrap();
        self.session = None;
        self.events.clear();
        self.settle();
    }

    fn command(&mut self, command: Command) {
        self.conn.command(self.now, command).unwrap();
        self.settle();
    }

    fn provisioned(&self) -> Result<ProvisionedCredentials, ProvisionError> {
        let mut results = self.events.iter().filter_map(|e| match e {
            Event::Provisioned(r) => Some(r.clone()),
            _ => None,
        });
        let r = results.next().expect("a Provisioned event");
        assert!(results.next().is_none());
        r
    }

    fn ota(&self) -> Vec<OtaEvent> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Ota(o) => Some(o.clone()),
                _ => None,
            })
            .collect()
    }

    /// The image put together from the chunk events.
    fn image(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in self.ota() {
            if let OtaEvent::Chunk { offset, data, .. } = e {
                assert_eq!(offset as usize, out.len(), "in order, never repeated");
                out.extend_from_slice(&data);
            }
        }
        out
    }

    fn connected(&self) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, Event::Connected { .. }))
    }

    /// `fw_state` / `sw_state` values stored by the emulator, in order.
    fn states(&self, device: &str, key: &str) -> Vec<String> {
        self.emu
            .telemetry(device)
            .unwrap()
            .get(key)
            .map(|points| {
                points
                    .iter()
                    .map(|p| p.value.as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn values(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn profile(strategy: ProvisionStrategy) -> ProvisionProfile {
    ProvisionProfile {
        device_type: "sensor".into(),
        key: "PROV_KEY".into(),
        secret: "PROV_SECRET".into(),
        strategy,
    }
}

fn provisioning_config(request: ProvisionRequest) -> Config {
    let mut c = Config::provisioning(request);
    c.reconnect.jitter_percent = 0;
    c
}

/// Connects as a device with `config`'s credentials, sends telemetry and checks it arrived.
fn connect_and_send(link: &mut Link, mut config: Config, device: &str) {
    config.role = Role::Device;
    link.start(config);
    assert!(link.connected(), "{:?}", link.events);
    link.command(Command::telemetry(values(json!({"hello": "world"}))));
    assert!(link.events.iter().any(|e| matches!(e, Event::Delivered(_))));
    assert_eq!(
        link.emu.latest_telemetry(device).unwrap()["hello"].value,
        json!("world")
    );
}

// ----- provisioning ------------------------------------------------------------------------

#[test]
fn provisioning_creates_a_device_whose_token_then_connects() {
    let request = ProvisionRequest::new("PROV_KEY", "PROV_SECRET").with_device_name("New 1");
    let mut link = Link::new(provisioning_config(request), |emu| {
        emu.add_provision_profile(profile(ProvisionStrategy::AllowCreateNew));
    });
    let Ok(credentials @ ProvisionedCredentials::AccessToken(_)) = link.provisioned() else {
        panic!("{:?}", link.events);
    };
    // The client closed the session itself, at once (the server would wait 60 s).
    assert_eq!(link.conn.state(), State::Closed);
    assert!(link.session.is_none());
    assert!(link.emu.sessions().is_empty());
    let info = link.emu.device("New 1").unwrap();
    assert_eq!(info.device_type, "sensor");
    assert!(!info.gateway);
    connect_and_send(&mut link, credentials.to_config(), "New 1");

    // The same name again: FAILURE, typed, with the server's message.
    let request = ProvisionRequest::new("PROV_KEY", "PROV_SECRET").with_device_name("New 1");
    link.start(provisioning_config(request));
    assert_eq!(
        link.provisioned(),
        Err(ProvisionError::Failure {
            message: "Failed to provision device!".into()
        })
    );
}

#[test]
fn provisioning_with_chosen_credentials_basic_and_gateway() {
    let request = ProvisionRequest::new("PROV_KEY", "PROV_SECRET")
        .with_device_name("Basic 1")
        .with_basic("cid-1", "user-1", "pass-1")
        .as_gateway();
    let mut link = Link::new(provisioning_config(request), |emu| {
        emu.add_provision_profile(profile(ProvisionStrategy::AllowCreateNew));
    });
    let credentials = link.provisioned().unwrap();
    assert_eq!(
        credentials,
        ProvisionedCredentials::Basic {
            client_id: Some("cid-1".into()),
            username: Some("user-1".into()),
            password: Some("pass-1".into()),
        }
    );
    assert!(link.emu.device("Basic 1").unwrap().gateway);
    connect_and_send(&mut link, credentials.to_config(), "Basic 1");

    let request = ProvisionRequest::new("PROV_KEY", "PROV_SECRET")
        .with_device_name("Token 1")
        .with_access_token("CHOSEN_TOKEN");
    link.start(provisioning_config(request));
    assert_eq!(
        link.provisioned(),
        Ok(ProvisionedCredentials::AccessToken("CHOSEN_TOKEN".into()))
    );
}

#[test]
fn provisioning_a_pre_provisioned_device() {
    let request = ProvisionRequest::new("PROV_KEY", "PROV_SECRET").with_device_name("Pre");
    let mut link = Link::new(provisioning_config(request.clone()), |emu| {
        emu.add_provision_profile(profile(ProvisionStrategy::CheckPreProvisioned));
        emu.create_device(NewDevice::device("Pre", "PRE_TOKEN").with_type("sensor"))
            .unwrap();
    });
    let credentials = link.provisioned().unwrap();
    assert_eq!(
        credentials,
        ProvisionedCredentials::AccessToken("PRE_TOKEN".into())
    );
    connect_and_send(&mut link, credentials.to_config(), "Pre");
    // Only once.
    link.start(provisioning_config(request));
    assert!(matches!(
        link.provisioned(),
        Err(ProvisionError::Failure { .. })
    ));
}

#[test]
fn provisioning_with_a_bad_secret_is_not_found_and_creates_nothing() {
    let request = ProvisionRequest::new("PROV_KEY", "WRONG").with_device_name("Never");
    let mut link = Link::new(provisioning_config(request), |emu| {
        emu.add_provision_profile(profile(ProvisionStrategy::AllowCreateNew));
    });
    assert_eq!(
        link.provisioned(),
        Err(ProvisionError::NotFound {
            message: "Provision data was not found!".into()
        })
    );
    assert!(link.emu.device("Never").is_none());
    assert_eq!(link.conn.state(), State::Closed);
    // Nothing more happens, however long we wait.
    link.advance(Duration::from_secs(600));
    assert_eq!(link.emu.sessions().len(), 0);
}

fn protobuf_provisioning_config(request: ProvisionRequest) -> Config {
    let mut c = provisioning_config(request);
    c.protobuf_profile = true;
    c
}

#[test]
fn provisioning_over_protobuf_end_to_end() {
    // A server-generated token, then a chosen one, MQTT basic credentials and a gateway.
    let request = ProvisionRequest::new("PROV_KEY", "PROV_SECRET").with_device_name("Proto 1");
    let mut link = Link::new(protobuf_provisioning_config(request), |emu| {
        emu.add_provision_profile(profile(ProvisionStrategy::AllowCreateNew));
    });
    let Ok(credentials @ ProvisionedCredentials::AccessToken(_)) = link.provisioned() else {
        panic!("{:?}", link.events);
    };
    assert_eq!(link.conn.state(), State::Closed);
    assert!(link.emu.sessions().is_empty());
    assert_eq!(link.emu.device("Proto 1").unwrap().device_type, "sensor");
    connect_and_send(&mut link, credentials.to_config(), "Proto 1");

    let request = ProvisionRequest::new("PROV_KEY", "PROV_SECRET")
        .with_device_name("Proto 2")
        .with_access_token("PROTO_TOKEN");
    link.start(protobuf_provisioning_config(request));
    assert_eq!(
        link.provisioned(),
        Ok(ProvisionedCredentials::AccessToken("PROTO_TOKEN".into()))
    );

    let request = ProvisionRequest::new("PROV_KEY", "PROV_SECRET")
        .with_device_name("Proto 3")
        .with_basic("cid-3", "user-3", "pass-3")
        .as_gateway();
    link.start(protobuf_provisioning_config(request));
    let credentials = link.provisioned().unwrap();
    assert_eq!(
        credentials,
        ProvisionedCredentials::Basic {
            client_id: Some("cid-3".into()),
            username: Some("user-3".into()),
            password: Some("pass-3".into()),
        }
    );
    assert!(link.emu.device("Proto 3").unwrap().gateway);
    connect_and_send(&mut link, credentials.to_config(), "Proto 3");

    // Failures: the protobuf answer is a status only, so the messages are empty (a JSON
    // answer would carry ThingsBoard's text, see the JSON tests above).
    let request = ProvisionRequest::new("PROV_KEY", "PROV_SECRET").with_device_name("Proto 1");
    link.start(protobuf_provisioning_config(request));
    assert_eq!(
        link.provisioned(),
        Err(ProvisionError::Failure {
            message: String::new()
        })
    );
    let request = ProvisionRequest::new("PROV_KEY", "WRONG").with_device_name("Never");
    link.start(protobuf_provisioning_config(request));
    assert_eq!(
        link.provisioned(),
        Err(ProvisionError::NotFound {
            message: String::new()
        })
    );
    assert!(link.emu.device("Never").is_none());
    link.advance(Duration::from_secs(600));
    assert!(link.emu.sessions().is_empty());
}

#[test]
fn provisioning_a_pre_provisioned_device_over_protobuf() {
    let request = ProvisionRequest::new("PROV_KEY", "PROV_SECRET").with_device_name("Pre");
    let mut link = Link::new(protobuf_provisioning_config(request.clone()), |emu| {
        emu.add_provision_profile(profile(ProvisionStrategy::CheckPreProvisioned));
        emu.create_device(NewDevice::device("Pre", "PRE_TOKEN").with_type("sensor"))
            .unwrap();
    });
    assert_eq!(
        link.provisioned(),
        Ok(ProvisionedCredentials::AccessToken("PRE_TOKEN".into()))
    );
    link.start(protobuf_provisioning_config(request));
    assert_eq!(
        link.provisioned(),
        Err(ProvisionError::Failure {
            message: String::new()
        })
    );
}

// ----- OTA ---------------------------------------------------------------------------------

fn firmware_image(len: usize) -> Bytes {
    (0..len)
        .map(|i| u8::try_from((i * 31 + 7) % 251).unwrap())
        .collect()
}

fn package(version: &str, data: Bytes, algorithm: ChecksumAlgorithm) -> OtaPackage {
    OtaPackage {
        title: "cam-fw".into(),
        version: version.into(),
        checksum: algorithm.checksum(&data),
        checksum_algorithm: algorithm.as_str().into(),
        data,
    }
}

fn device_config(ota: OtaConfig) -> Config {
    let mut c = Config::new(gateway_proto::Credentials::AccessToken("CAM_TOKEN".into()));
    c.role = Role::Device;
    c.reconnect.jitter_percent = 0;
    c.ota = Some(ota);
    c
}

fn camera(emu: &mut Emulator) {
    emu.create_device(NewDevice::device("Camera", "CAM_TOKEN"))
        .unwrap();
}

#[test]
fn firmware_assigned_while_online_downloads_verifies_and_installs() {
    let mut ota = OtaConfig::new();
    ota.chunk_size = 4096;
    let mut link = Link::new(device_config(ota), camera);
    assert!(link.ota().is_empty(), "nothing assigned yet");

    let image = firmware_image(20_000);
    link.emu
        .assign_ota(
            "Camera",
            true,
            package("v2", image.clone(), ChecksumAlgorithm::Sha256),
        )
        .unwrap();
    link.settle();
    let events = link.ota();
    let [OtaEvent::Available(p)] = events.as_slice() else {
        panic!("{:?}", link.ota());
    };
    assert_eq!((p.kind, p.version.as_str()), (OtaKind::Firmware, "v2"));
    assert_eq!(p.size, Some(20_000));

    link.command(Command::ota_download(OtaKind::Firmware));
    assert_eq!(link.image(), &image[..]);
    assert!(matches!(link.ota().last(), Some(OtaEvent::Verified(_))));
    assert_eq!(link.conn.stats().ota_chunks, 5);
    assert_eq!(
        link.states("Camera", "fw_state"),
        ["DOWNLOADING", "DOWNLOADED", "VERIFIED"]
    );

    link.command(Command::ota_updating(OtaKind::Firmware));
    link.command(Command::ota_updated(OtaKind::Firmware, "cam-fw", "v2"));
    assert_eq!(
        link.states("Camera", "fw_state"),
        [
            "DOWNLOADING",
            "DOWNLOADED",
            "VERIFIED",
            "UPDATING",
            "UPDATED"
        ]
    );
    let latest = link.emu.latest_telemetry("Camera").unwrap();
    assert_eq!(latest["current_fw_title"].value, json!("cam-fw"));
    assert_eq!(latest["current_fw_version"].value, json!("v2"));
}

#[test]
fn software_assigned_before_connecting_is_found_and_downloaded_by_itself() {
    let image = firmware_image(10_001);
    let mut ota = OtaConfig::new();
    ota.auto_download = true;
    ota.chunk_size = 1000;
    let link = Link::new(device_config(ota), |emu| {
        camera(emu);
        emu.assign_ota(
            "Camera",
            false,
            package("s7", image.clone(), ChecksumAlgorithm::Murmur3_128),
        )
        .unwrap();
    });
    let events = link.ota();
    assert!(
        matches!(
            events.as_slice(),
            [OtaEvent::Available(_), OtaEvent::Started(_), ..]
        ),
        "{events:?}"
    );
    assert_eq!(link.image(), &image[..]);
    assert!(matches!(events.last(), Some(OtaEvent::Verified(p)) if p.kind == OtaKind::Software));
    assert_eq!(
        link.states("Camera", "sw_state"),
        ["DOWNLOADING", "DOWNLOADED", "VERIFIED"]
    );
    assert!(link.states("Camera", "fw_state").is_empty());
}

#[test]
fn every_algorithm_verifies_against_the_emulator() {
    let image = firmware_image(3_333);
    for algorithm in ChecksumAlgorithm::ALL {
        let mut ota = OtaConfig::new();
        ota.auto_download = true;
        ota.chunk_size = 512;
        let link = Link::new(device_config(ota), |emu| {
            camera(emu);
            emu.assign_ota("Camera", true, package("v9", image.clone(), algorithm))
                .unwrap();
        });
        assert!(
            matches!(link.ota().last(), Some(OtaEvent::Verified(_))),
            "{algorithm}: {:?}",
            link.ota().last()
        );
        assert_eq!(link.image(), &image[..]);
    }
}

#[test]
fn a_wrong_checksum_is_reported_failed() {
    let image = firmware_image(5_000);
    let mut ota = OtaConfig::new();
    ota.auto_download = true;
    let mut link = Link::new(device_config(ota), |emu| {
        camera(emu);
        let mut p = package("v3", image.clone(), ChecksumAlgorithm::Crc32);
        p.checksum = "00000000".into();
        emu.assign_ota("Camera", true, p).unwrap();
    });
    let Some(OtaEvent::Failed { error, .. }) = link.ota().last().cloned() else {
        panic!("{:?}", link.ota());
    };
    assert!(matches!(error, OtaError::ChecksumMismatch { .. }));
    assert_eq!(
        link.states("Camera", "fw_state"),
        ["DOWNLOADING", "DOWNLOADED", "FAILED"]
    );
    let fw_error = &link.emu.latest_telemetry("Camera").unwrap()["fw_error"].value;
    assert!(
        fw_error
            .as_str()
            .unwrap()
            .starts_with("Checksum verification failed"),
        "{fw_error}"
    );
    // Not retried by itself.
    link.advance(Duration::from_secs(300));
    assert_eq!(link.states("Camera", "fw_state").len(), 3);
}

#[test]
fn a_download_cut_by_a_connection_loss_resumes_where_it_stopped() {
    let image = firmware_image(20_000);
    let mut ota = OtaConfig::new();
    ota.auto_download = true;
    ota.chunk_size = 2048;
    let setup = |emu: &mut Emulator| {
        camera(emu);
        emu.assign_ota(
            "Camera",
            true,
            package("v4", image.clone(), ChecksumAlgorithm::Sha512),
        )
        .unwrap();
    };
    let mut link = Link::paused_after(device_config(ota), setup, Some(4));
    assert_eq!(link.chunks_seen(), 4);
    // The network fails mid-download.
    let s = link.session.unwrap();
    link.emu.drop_session(s).unwrap();
    link.pause_after_chunks = None;
    link.settle();
    assert!(link
        .events
        .iter()
        .any(|e| matches!(e, Event::Disconnected { .. })));
    link.advance(Duration::from_secs(5));
    assert_eq!(link.image(), &image[..], "no chunk lost or repeated");
    assert!(matches!(link.ota().last(), Some(OtaEvent::Verified(_))));
    assert_eq!(
        link.ota()
            .iter()
            .filter(|e| matches!(e, OtaEvent::Started(_)))
            .count(),
        1
    );
    assert_eq!(link.conn.stats().ota_chunks, 10);
    assert_eq!(
        link.states("Camera", "fw_state"),
        ["DOWNLOADING", "DOWNLOADED", "VERIFIED"]
    );
}

#[test]
fn a_package_withdrawn_mid_download_stops_it_without_failing() {
    let image = firmware_image(9_000);
    let mut ota = OtaConfig::new();
    ota.auto_download = true;
    ota.chunk_size = 1024;
    let setup = |emu: &mut Emulator| {
        camera(emu);
        emu.assign_ota(
            "Camera",
            true,
            package("v5", image.clone(), ChecksumAlgorithm::Md5),
        )
        .unwrap();
    };
    let mut link = Link::paused_after(device_config(ota), setup, Some(2));
    link.pause_after_chunks = None;
    link.emu
        .delete_shared_attributes(
            "Camera",
            &[
                "fw_title".into(),
                "fw_version".into(),
                "fw_size".into(),
                "fw_checksum".into(),
                "fw_checksum_algorithm".into(),
            ],
        )
        .unwrap();
    link.settle();
    assert!(
        link.ota().iter().any(|e| matches!(
            e,
            OtaEvent::Withdrawn {
                interrupted: true,
                ..
            }
        )),
        "{:?}",
        link.ota()
    );
    assert!(!link
        .ota()
        .iter()
        .any(|e| matches!(e, OtaEvent::Verified(_) | OtaEvent::Failed { .. })));
    assert_eq!(link.states("Camera", "fw_state"), ["DOWNLOADING"]);
}
