//! Replays the checked-in fuzz corpus (`fuzz/corpus/<target>/`, seeds and every input a
//! fuzz run kept or found) through the same harnesses the cargo-fuzz targets run, so a
//! crash found once stays fixed. `fuzz/run.sh` runs the fuzzers themselves.

use std::path::Path;

use logwarden::fuzzing::TARGETS;

#[test]
fn every_corpus_input_passes_its_harness() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, harness) in TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "no corpus for {name}");
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            let outcome = std::panic::catch_unwind(|| harness(&data));
            assert!(outcome.is_ok(), "{name}: {} fails its harness", input.display());
        }
    }
}
