//! The review bundle for the bundled incident, checked in under tests/bundles/incident and
//! reviewed by eye. `LOGWARDEN_BLESS=1 cargo test --test bundle_golden` rewrites it.

mod support;

use std::path::Path;

use support::incident_bundle;

#[test]
fn the_incident_bundle_matches_the_reviewed_copy() {
    let dir = tempfile::tempdir().unwrap();
    // One thread: on more, which worker gives a client its full record first depends on
    // timing, and top lists and samples start at the record (see the README's output
    // table); counts and decisions agree on any number (tests/properties.rs).
    let args = ["--threads", "1", "--current", "fixtures/remedy/nginx-config.json"];
    let out = incident_bundle(dir.path(), &args).dir;
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bundles/incident");
    let mut names: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    if std::env::var_os("LOGWARDEN_BLESS").is_some() {
        let _ = std::fs::remove_dir_all(&golden);
        std::fs::create_dir_all(&golden).unwrap();
        for n in &names {
            std::fs::copy(out.join(n), golden.join(n)).unwrap();
        }
        return;
    }
    let mut expected: Vec<String> =
        std::fs::read_dir(&golden).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    expected.sort();
    assert_eq!(names, expected, "the bundle's files changed");
    for n in &names {
        let got = std::fs::read_to_string(out.join(n)).unwrap();
        let want = std::fs::read_to_string(golden.join(n)).unwrap();
        assert!(got == want, "{n} differs from tests/bundles/incident/{n}; review and bless");
    }
}
