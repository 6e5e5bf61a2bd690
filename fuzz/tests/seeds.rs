//! The committed seed corpora (`fuzz/seeds/<target>/`) are what `gateway_fuzz::seeds::all`
//! generates. `FUZZ_WRITE_SEEDS=1 cargo test --manifest-path fuzz/Cargo.toml` rewrites them.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

#[test]
fn committed_seeds_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let seeds = gateway_fuzz::seeds::all();
    let write = std::env::var_os("FUZZ_WRITE_SEEDS").is_some();
    let mut by_target: BTreeMap<&str, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    for (target, name, bytes) in seeds {
        // Every seed runs clean through its target.
        match target {
            "decode" => gateway_fuzz::decode::run(&bytes),
            "connection" => gateway_fuzz::connection::run(&bytes),
            "payload" => gateway_fuzz::payload::run(&bytes),
            "emulator" => gateway_fuzz::emulator::run(&bytes),
            other => panic!("unknown target {other}"),
        }
        by_target.entry(target).or_default().push((name, bytes));
    }
    for (target, files) in by_target {
        let dir = root.join(target);
        if write {
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
        }
        let mut names: Vec<String> = Vec::new();
        for (name, bytes) in files {
            let path = dir.join(&name);
            if write {
                fs::write(&path, &bytes).unwrap();
            } else {
                let on_disk = fs::read(&path).unwrap_or_default();
                assert!(
                    on_disk == bytes,
                    "{} is stale: rerun with FUZZ_WRITE_SEEDS=1",
                    path.display()
                );
            }
            names.push(name);
        }
        let mut present: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        present.sort();
        names.sort();
        assert_eq!(present, names, "{}: files not generated", dir.display());
    }
}
