#![cfg(any(feature = "redis", feature = "nats"))]
//! Inputs the fuzz targets (`fuzz/`) once failed on, kept in `fuzz/regressions/<target>/`
//! and replayed by every `cargo test`, so a fixed crash stays fixed.

use std::path::Path;

type Target = fn(&[u8]);

#[test]
fn fuzz_regressions_stay_fixed() {
    let targets: &[(&str, Target)] =
        &[("engine_records", switchboard_engines::fuzz_engine_records)];
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions");
    for (target, run) in targets {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else {
            continue; // no regression for this target yet
        };
        for entry in entries {
            let path = entry.expect("a readable directory").path();
            let input = std::fs::read(&path).expect("a readable regression input");
            println!("{target}: {}", path.display());
            run(&input);
        }
    }
}
