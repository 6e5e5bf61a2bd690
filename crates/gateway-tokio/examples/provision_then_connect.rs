//! Provision a device, connect with the credentials ThingsBoard issued, send telemetry, and
//! take a firmware update in chunks.
//!
//! ```sh
//! # Against an in-process emulator (no ThingsBoard needed):
//! cargo run -p gateway-tokio --example provision_then_connect
//! # Against a ThingsBoard whose device profile allows provisioning (plain MQTT):
//! cargo run -p gateway-tokio --example provision_then_connect -- HOST PORT KEY SECRET [NAME]
//! ```

use std::error::Error;

use bytes::Bytes;
use gateway_emulator::{
    EmulatorConfig, EmulatorHandle, OtaPackage, ProvisionProfile, ProvisionStrategy,
};
use gateway_tokio::gateway_proto::checksum::ChecksumAlgorithm;
use gateway_tokio::gateway_proto::payload::ProvisionRequest;
use gateway_tokio::gateway_proto::{Config, Event, OtaConfig, OtaEvent, Role};
use gateway_tokio::{connect, ClientEvent, ClientOptions};
use serde_json::{json, Map};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut emulator = None;
    let (host, port, key, secret, name) = match args.as_slice() {
        [host, port, key, secret, rest @ ..] => (
            host.clone(),
            port.parse::<u16>()?,
            key.clone(),
            secret.clone(),
            rest.first()
                .cloned()
                .unwrap_or_else(|| "rust-provisioned".into()),
        ),
        _ => {
            let emu = EmulatorHandle::start(EmulatorConfig::default()).await?;
            emu.add_provision_profile(ProvisionProfile {
                device_type: "sensor".into(),
                key: "DEMO_KEY".into(),
                secret: "DEMO_SECRET".into(),
                strategy: ProvisionStrategy::AllowCreateNew,
            });
            let addr = emu.addr();
            emulator = Some(emu);
            println!("started an emulator on {addr}");
            (
                addr.ip().to_string(),
                addr.port(),
                "DEMO_KEY".into(),
                "DEMO_SECRET".into(),
                "Sensor 1".into(),
            )
        }
    };

    // 1. A provisioning connection: one request, one answer, then it closes by itself.
    let request = ProvisionRequest::new(key, secret).with_device_name(&name);
    let options = ClientOptions::with_config(&host, port, Config::provisioning(request));
    let (_client, events) = connect(options).await?;
    let credentials = events
        .provisioned()
        .await
        .ok_or("the connection ended without an answer")??;
    println!("provisioned {name:?}: {credentials:?}");

    // 2. A normal session with those credentials.
    let mut config = credentials.to_config();
    config.role = Role::Device;
    config.ota = Some(OtaConfig::new());
    let (client, events) = connect(ClientOptions::with_config(&host, port, config)).await?;
    let mut values = Map::new();
    values.insert("temperature".into(), json!(21.5));
    client.telemetry(values).await?.await?;
    println!("telemetry delivered");

    // 3. With the emulator, assign a firmware package and take it.
    let Some(emu) = emulator else {
        client.close().await;
        return Ok(());
    };
    let image: Bytes = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    emu.assign_ota(
        &name,
        true,
        OtaPackage {
            title: "sensor-fw".into(),
            version: "v2".into(),
            checksum: ChecksumAlgorithm::Sha256.checksum(&image),
            checksum_algorithm: "SHA256".into(),
            data: image,
        },
    )?;
    let mut received = 0;
    while let Some(event) = events.recv().await {
        let ClientEvent::Proto(Event::Ota(ota)) = event else {
            continue;
        };
        match ota {
            OtaEvent::Available(package) => {
                println!("{package:?} is available; downloading");
                client.ota_download(package.kind).await?.await?;
            }
            OtaEvent::Chunk { data, .. } => received += data.len(),
            OtaEvent::Verified(package) => {
                println!("received {received} bytes, checksum verified; installing");
                client.ota_updating(package.kind).await?.await?;
                client
                    .ota_updated(package.kind, &package.title, &package.version)
                    .await?
                    .await?;
                break;
            }
            OtaEvent::Failed { error, .. } => return Err(error.into()),
            _ => {}
        }
    }
    let latest = emu.latest_telemetry(&name)?;
    println!(
        "the server sees fw_state {} and current_fw_version {}",
        latest["fw_state"].value, latest["current_fw_version"].value
    );
    client.close().await;
    emu.shutdown();
    Ok(())
}
