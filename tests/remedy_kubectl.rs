//! The blocklist patch applied by a real kubectl, offline (`kubectl patch --local`): the
//! result is the union of old and new entries, the rollback restores the old value byte
//! for byte, and the guarded patch refuses a ConfigMap that changed in between.

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::{INCIDENT, incident_bundle, kubectl, logwarden, ok};

fn configmap_yaml(dir: &Path, name: &str, data: &str) -> PathBuf {
    let path = dir.join(name);
    let yaml = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: nginx-config\n  namespace: web\n  resourceVersion: \"4711\"\n{data}"
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

/// `kubectl patch --local -f FILE --type TYPE --patch-file PATCH -o json`.
fn patch(file: &Path, kind: &str, patch_file: &Path) -> Result<Value, String> {
    let out = kubectl()
        .args(["patch", "--local", "-o", "json", "--type", kind, "-f"])
        .arg(file)
        .arg("--patch-file")
        .arg(patch_file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // kubectl prints a failed JSON patch test on stderr; the exit code is not reliable.
    if !out.status.success() || stderr.contains("error") {
        return Err(stderr);
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

/// What `kubectl get configmap -o json` would print for the file.
fn as_json(dir: &Path, file: &Path) -> PathBuf {
    let empty = dir.join("empty-patch.json");
    std::fs::write(&empty, "{}").unwrap();
    let json = patch(file, "merge", &empty).unwrap();
    let path = dir.join("current.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    path
}

fn value(doc: &Value) -> &str {
    doc["data"]["blocked-ips"].as_str().unwrap()
}

#[test]
fn merge_patch_unions_and_rollback_restores_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let old = "5.6.7.8, 192.0.2.66,garbage-entry,1.2.3.4";
    let cm = configmap_yaml(
        dir.path(),
        "cm.yaml",
        &format!("data:\n  blocked-ips: \"{old}\"\n  other-key: kept\n"),
    );
    let current = as_json(dir.path(), &cm);
    let b = incident_bundle(dir.path(), &["--current", current.to_str().unwrap()]).dir;

    let patched = patch(&cm, "merge", &b.join("blocklist.patch.json")).unwrap();
    let entries: Vec<&str> = value(&patched).split(',').collect();
    for kept in ["5.6.7.8", "192.0.2.66", "garbage-entry", "1.2.3.4"] {
        assert!(entries.contains(&kept), "{kept} was dropped: {entries:?}");
    }
    for new in ["198.51.100.23", "203.0.113.77"] {
        assert!(entries.contains(&new), "{new} missing: {entries:?}");
    }
    assert_eq!(
        entries.iter().filter(|e| **e == "192.0.2.66").count(),
        1,
        "already blocked is not added twice"
    );
    assert_eq!(patched["data"]["other-key"], "kept");

    let guarded = patch(&cm, "json", &b.join("blocklist.guard.json")).unwrap();
    assert_eq!(guarded, patched, "the guarded patch gives the same result");

    let patched_file = dir.path().join("patched.json");
    std::fs::write(&patched_file, serde_json::to_string(&patched).unwrap()).unwrap();
    let rolled = patch(&patched_file, "merge", &b.join("rollback-blocklist.patch.json")).unwrap();
    assert_eq!(value(&rolled), old, "rollback restores the old value byte for byte");
    let rolled_guarded = patch(&patched_file, "json", &b.join("rollback-blocklist.guard.json")).unwrap();
    assert_eq!(value(&rolled_guarded), old);
}

#[test]
fn collapse_keeps_the_operators_broad_entries_as_written() {
    // Two adjacent live /16s aggregate to a /15 that no entry named; --collapse once
    // split that into 512 /24s in the patch.
    let dir = tempfile::tempdir().unwrap();
    let old = "10.0.0.0/16,10.1.0.0/16,2001:db8::/33,2001:db8:8000::/33";
    let cm = configmap_yaml(dir.path(), "cm.yaml", &format!("data:\n  blocked-ips: \"{old}\"\n"));
    let current = as_json(dir.path(), &cm);
    let b = incident_bundle(dir.path(), &["--current", current.to_str().unwrap(), "--collapse"]).dir;

    let patched = patch(&cm, "merge", &b.join("blocklist.patch.json")).unwrap();
    let entries: Vec<&str> = value(&patched).split(',').collect();
    for kept in old.split(',') {
        assert!(entries.contains(&kept), "{kept} was not kept as written: {entries:?}");
    }
    for new in ["198.51.100.23", "203.0.113.77"] {
        assert!(entries.contains(&new), "{new} missing: {entries:?}");
    }
    assert!(entries.len() < 10, "collapsing lengthened the list: {} entries", entries.len());
    let rolled = patch(&cm, "json", &b.join("blocklist.guard.json")).unwrap();
    assert_eq!(rolled, patched, "the guarded patch gives the same result");
}

#[test]
fn the_guard_refuses_a_configmap_that_changed_in_between() {
    let dir = tempfile::tempdir().unwrap();
    let cm = configmap_yaml(dir.path(), "cm.yaml", "data:\n  blocked-ips: \"1.2.3.4\"\n");
    let current = as_json(dir.path(), &cm);
    let b = incident_bundle(dir.path(), &["--current", current.to_str().unwrap()]).dir;
    // Someone else blocked an address after logwarden read the ConfigMap.
    let changed = configmap_yaml(dir.path(), "changed.yaml", "data:\n  blocked-ips: \"1.2.3.4,9.9.9.9\"\n");
    let refused = patch(&changed, "json", &b.join("blocklist.guard.json"));
    assert!(refused.is_err(), "the guarded patch applied to a changed ConfigMap: {refused:?}");
    let script = std::fs::read_to_string(b.join("apply-blocklist.sh")).unwrap();
    assert!(script.contains("--patch-file blocklist.guard.json"), "{script}");
    let syntax =
        std::process::Command::new("sh").arg("-n").arg(b.join("apply-blocklist.sh")).status().unwrap();
    assert!(syntax.success());
}

#[test]
fn a_missing_key_is_added_and_removed_again() {
    let dir = tempfile::tempdir().unwrap();
    let cm = configmap_yaml(dir.path(), "cm.yaml", "data:\n  unrelated: x\n");
    let current = as_json(dir.path(), &cm);
    let b = incident_bundle(dir.path(), &["--current", current.to_str().unwrap()]).dir;
    let patched = patch(&cm, "json", &b.join("blocklist.guard.json")).unwrap();
    assert!(value(&patched).contains("198.51.100.23"));
    let patched_file = dir.path().join("patched.json");
    std::fs::write(&patched_file, serde_json::to_string(&patched).unwrap()).unwrap();
    let rolled = patch(&patched_file, "merge", &b.join("rollback-blocklist.patch.json")).unwrap();
    assert_eq!(rolled["data"], serde_json::json!({"unrelated": "x"}));
}

#[test]
fn without_current_no_patch_is_written_and_the_reason_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let support::Bundle { dir: b, stderr: said, .. } = incident_bundle(dir.path(), &[]);
    assert!(!b.join("blocklist.patch.json").exists());
    assert!(said.contains("without --current"), "{said}");
    assert!(std::fs::read_to_string(b.join("README.md")).unwrap().contains("without --current"));
    let dir2 = tempfile::tempdir().unwrap();
    let b2 = incident_bundle(dir2.path(), &["--replace"]).dir;
    let patch: Value =
        serde_json::from_str(&std::fs::read_to_string(b2.join("blocklist.patch.json")).unwrap()).unwrap();
    assert_eq!(value(&patch), "192.0.2.66,198.51.100.23,203.0.113.77");
}

/// The incident's report, from a bundle written under `dir`.
fn incident_report(dir: &std::path::Path) -> Value {
    let b = incident_bundle(dir, &["--replace"]).dir;
    serde_json::from_str(&std::fs::read_to_string(b.join("report.json")).unwrap()).unwrap()
}

/// `emit --replace` of `report` with its blocklist set to `blocklist`, into `dir/out`:
/// the exit code and what it said.
fn emit_edited(
    dir: &std::path::Path,
    report: &mut Value,
    blocklist: &[&str],
    extra: &[&str],
    out: &str,
) -> (Option<i32>, String) {
    report["blocklist"] = serde_json::json!(blocklist);
    let edited = dir.join("edited.json");
    std::fs::write(&edited, serde_json::to_string(&report).unwrap()).unwrap();
    let run = logwarden()
        .args(["emit", "--replace", "--from"])
        .arg(&edited)
        .arg("--out")
        .arg(dir.join(out))
        .args(extra)
        .output()
        .unwrap();
    (run.status.code(), String::from_utf8_lossy(&run.stderr).into_owned())
}

fn patch_value(bundle: &std::path::Path) -> String {
    let text = std::fs::read_to_string(bundle.join("blocklist.patch.json")).unwrap();
    value(&serde_json::from_str(&text).unwrap()).to_string()
}

#[test]
fn emit_rewrites_the_bundle_from_an_edited_report() {
    let dir = tempfile::tempdir().unwrap();
    let mut report = incident_report(dir.path());
    // The reviewer decides against one block.
    let (code, said) = emit_edited(dir.path(), &mut report, &["198.51.100.23"], &[], "bundle2");
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(patch_value(&dir.path().join("bundle2")), "198.51.100.23");
}

/// A reviewer's edit is refused, with what to change and nothing written, where it would
/// block every address, more than it says (host bits past the prefix), a client the
/// report spares, or addresses a scan never proposes (without `--block-private`).
#[test]
fn emit_refuses_edits_that_block_more_than_they_say_or_what_is_spared() {
    let dir = tempfile::tempdir().unwrap();
    let mut report = incident_report(dir.path());
    assert_eq!(report["spared"][0]["ip"], "10.0.0.5", "the incident spares its proxy");
    for (entry, extra, says) in [
        ("0.0.0.0/0", &[][..], "covers every address"),
        ("::ffff:0:0/96", &["--block-private"][..], "covers every address"),
        ("2001:db8::/16", &[][..], "would block 2001::/16"),
        ("192.168.1.1", &[][..], "--block-private"),
        ("10.0.0.0/8", &["--block-private"][..], "would block 10.0.0.5, which this report spares"),
        ("10.0.0.5", &["--block-private"][..], "10.0.0.5 is a client this report spares"),
        ("::ffff:10.0.0.5", &["--block-private"][..], "::ffff:10.0.0.5 is a client this report spares"),
    ] {
        let (code, said) = emit_edited(dir.path(), &mut report, &["198.51.100.23", entry], extra, "refused");
        assert_eq!(code, Some(2), "{entry}: {said}");
        assert!(said.contains(says), "{entry}: {said}");
        assert!(!dir.path().join("refused").exists(), "{entry}: nothing is written");
    }
    let allowed = ["198.51.100.23", "192.168.1.1"];
    let (code, said) = emit_edited(dir.path(), &mut report, &allowed, &["--block-private"], "allowed");
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(patch_value(&dir.path().join("allowed")), "192.168.1.1,198.51.100.23");
}

#[test]
fn the_configmap_size_limit_is_checked_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let big = "x".repeat(1 << 20);
    let cm = configmap_yaml(
        dir.path(),
        "cm.yaml",
        &format!("data:\n  blocked-ips: \"1.2.3.4\"\n  huge: \"{big}\"\n"),
    );
    let current = as_json(dir.path(), &cm);
    let out = logwarden()
        .args(["scan", "--namespace", "web", "--current", current.to_str().unwrap(), "--out"])
        .arg(dir.path().join("bundle"))
        .args(INCIDENT)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 MiB"));
    assert!(!dir.path().join("bundle").exists(), "nothing is written when a limit fails");
}

#[test]
fn the_ingress_nginx_preset_patches_block_cidrs_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("bundle");
    let out = logwarden()
        .args(["scan", "--preset", "ingress-nginx", "--namespace", "ingress-nginx", "--replace", "--out"])
        .arg(&b)
        .args(INCIDENT)
        .output()
        .unwrap();
    ok(out, "scan --preset ingress-nginx");
    let patch: Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("blocklist.patch.json")).unwrap()).unwrap();
    assert!(patch["data"]["block-cidrs"].as_str().unwrap().contains("198.51.100.23"));
    let script = std::fs::read_to_string(b.join("apply-blocklist.sh")).unwrap();
    assert!(script.contains("'ingress-nginx-controller' --namespace 'ingress-nginx'"), "{script}");
    assert!(!script.contains("rollout restart"), "the controller reloads the ConfigMap by itself");
}

#[test]
fn clients_already_blocked_are_not_proposed_again() {
    let dir = tempfile::tempdir().unwrap();
    let cm = configmap_yaml(dir.path(), "cm.yaml", "data:\n  blocked-ips: \"192.0.2.0/24\"\n");
    let current = as_json(dir.path(), &cm);
    let bundle = incident_bundle(dir.path(), &["--current", current.to_str().unwrap()]);
    let doc: Value = serde_json::from_str(&bundle.stdout).unwrap();
    assert!(
        !doc["blocklist"].as_array().unwrap().iter().any(|ip| ip == "192.0.2.66"),
        "{}",
        doc["blocklist"]
    );
    assert_eq!(doc["already_blocked"][0]["ip"], "192.0.2.66");
    assert_eq!(doc["already_blocked"][0]["by"], "192.0.2.0/24");
}
