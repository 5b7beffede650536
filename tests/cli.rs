//! The command line as a user meets it: exit codes, error messages, pipes, and what a
//! hostile line can do to the reader's terminal.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

fn logwarden() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_logwarden"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).env("NO_COLOR", "1");
    cmd
}

const INCIDENT: [&str; 3] = [
    "fixtures/incident/nginx-access.log",
    "fixtures/incident/nginx-error.log",
    "fixtures/incident/backend.log",
];

fn scan_json(args: &[&str], stdin: Option<Vec<u8>>) -> Value {
    let mut child = logwarden()
        .args(["scan", "--output", "json"])
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        std::thread::spawn(move || pipe.write_all(&data).unwrap());
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_missing_file_is_an_error_that_names_it() {
    let out = logwarden()
        .args(["scan", "fixtures/incident/nginx-access.log", "no/such/file.log"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no/such/file.log"), "{err}");
    // The system's reason, once.
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(out.stdout.is_empty(), "nothing is scanned when an input is missing");
    // A directory is named as one, with what to write instead.
    let out = logwarden().args(["scan", "fixtures/incident"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fixtures/incident is a directory: name the log files in it"), "{err}");
}

#[test]
fn bad_options_are_errors_that_say_what_to_write() {
    for (args, needle) in [
        (&["scan", "--window", "ten"][..], "--window"),
        (&["scan", "--format", "apache"][..], "unknown format"),
        (&["scan", "--log-format", "$request $status"][..], "remote_addr"),
        (&["scan", "--threads", "0"][..], "--threads"),
        // A threshold of 0 proposed every client (all 59 of the incident's access log).
        (&["scan", "--max-4xx", "0"][..], "--max-4xx"),
        (&["scan", "--max-auth-failures", "0"][..], "--max-auth-failures"),
        (&["scan", "--max-account-failures", "0"][..], "--max-account-failures"),
        // Options that shape only the review bundle or a Loki read were once accepted and
        // ignored without it: a patch asked for and never written.
        (&["scan", "--preset", "ingress-nginx"][..], "--out"),
        (&["scan", "--current", "configmap.json"][..], "--out"),
        (&["scan", "--collapse"][..], "--out"),
        (&["scan", "--loki-page-size", "10"][..], "--loki"),
        (&["scan", "--pushdown-slack", "2m"][..], "--loki"),
        // Typed, it is refused as the others are (the scan would wait on stdin for a
        // tenant it cannot use); from the environment, see below.
        (&["scan", "--loki-tenant", "team-a"][..], "--loki"),
    ] {
        let out = logwarden().args(args).stdin(Stdio::null()).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// A CronJob's environment may name the tenant for every run; a run over files is not
/// refused for it.
#[test]
fn a_tenant_from_the_environment_does_not_stop_a_scan_of_files() {
    let out =
        logwarden().args(["scan", INCIDENT[0]]).env("LOGWARDEN_LOKI_TENANT", "team-a").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn stdin_concatenation_proposes_what_the_paths_propose() {
    let by_paths = scan_json(&INCIDENT, None);
    let joined: Vec<u8> = INCIDENT.iter().flat_map(|p| std::fs::read(Path::new(p)).unwrap()).collect();
    let by_stdin = scan_json(&[], Some(joined));
    for key in ["blocklist", "lock_accounts", "spared"] {
        assert_eq!(by_paths[key], by_stdin[key], "{key}");
    }
    let counts = |doc: &Value| {
        let mut v: Vec<(String, u64, u64, u64)> = doc["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let n = |k: &str| c[k].as_u64().unwrap();
                (c["ip"].as_str().unwrap().to_string(), n("requests"), n("status_4xx"), n("auth_failures"))
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(counts(&by_paths), counts(&by_stdin));
    assert_eq!(by_paths["stats"]["parsed"], by_stdin["stats"]["parsed"]);
    assert!(!by_paths["blocklist"].as_array().unwrap().is_empty());
}

#[test]
fn a_closed_pipe_ends_quietly() {
    let line = "2024/01/15 10:23:45 [error] 31#31: *7 user \"bob\": password mismatch, client: 203.0.113.5, server: x, request: \"GET / HTTP/1.1\", host: \"x\"\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("error.log");
    std::fs::write(&path, line.repeat(200_000)).unwrap();
    let mut child = logwarden()
        .args(["match", path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    // The reader is dropped here: logwarden's next writes hit a closed pipe.
    let out = child.wait_with_output().unwrap();
    assert!(first.contains("\"rule\":\"nginx-basic-auth-failure\""), "{first}");
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn hostile_text_cannot_drive_the_terminal() {
    let hostile = b"\x1b]0;pwned\x07\x1b[2J not a log line \x9b31m\n".to_vec();
    let mut child = logwarden().args(["scan"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(&hostile).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(!out.stdout.contains(&0x1b), "raw ESC reached the terminal");
    assert!(!out.stdout.contains(&0x07), "raw BEL reached the terminal");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\\x1b]0;pwned\\x07"), "{text}");
}

#[test]
fn fail_on_findings_exit_codes() {
    let with = logwarden().args(["scan", "--fail-on-findings"]).args(INCIDENT).output().unwrap();
    assert_eq!(with.status.code(), Some(1));
    let without =
        logwarden().args(["scan", "--fail-on-findings", "fixtures/formats/combined.log"]).output().unwrap();
    assert_eq!(without.status.code(), Some(0));
    let plain = logwarden().args(["scan"]).args(INCIDENT).output().unwrap();
    assert_eq!(plain.status.code(), Some(0), "findings alone never fail a scan");
}

#[test]
fn ndjson_is_one_record_per_line() {
    let out = logwarden().args(["scan", "--output", "ndjson"]).args(INCIDENT).output().unwrap();
    let records: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.last().unwrap()["type"], "stats");
    assert!(records.iter().any(|r| r["type"] == "ip" && r["block"] == true));
    assert!(records.iter().any(|r| r["type"] == "account" && r["lock"] == true));
}

#[test]
fn a_client_proposed_at_a_low_4xx_threshold_comes_with_its_lines() {
    // Compact entries keep a client's first 4xx answers without their lines; at a
    // threshold that low, the answer that crosses it must land in a full record.
    let mut log = String::new();
    for i in 0..300 {
        let line = |ip: &str, status| {
            format!(
                "{ip} - - [14/Nov/2023:22:13:{:02} +0000] \"GET /p{i} HTTP/1.1\" {status} 0 \"-\" \"x\"\n",
                i % 60
            )
        };
        log.push_str(&line(&format!("198.51.100.{}", i % 200), 200));
        if i % 100 == 0 {
            log.push_str(&line("203.0.113.9", 404));
        }
    }
    proposed_with_lines(&log, "--max-4xx", "window_4xx");
}

/// Scans `log` on one and two threads with `threshold` at 3, and checks that 203.0.113.9
/// alone is proposed, with 3 in its busiest `window` and lines to show; its report, per run.
fn proposed_with_lines(log: &str, threshold: &str, window: &str) -> Vec<Value> {
    let run = |threads| {
        let doc = scan_json(&[threshold, "3", "--threads", threads], Some(log.to_string().into()));
        assert_eq!(doc["blocklist"], serde_json::json!(["203.0.113.9"]), "{threads} threads");
        let client = doc["ips"][0].clone();
        assert_eq!((client["ip"].as_str(), client[window].as_u64()), (Some("203.0.113.9"), Some(3)));
        assert!(!client["samples"].as_array().unwrap().is_empty(), "{threads} threads: {client}");
        client
    };
    ["1", "2"].into_iter().map(run).collect()
}

#[test]
fn a_client_proposed_at_a_low_failed_login_threshold_comes_with_its_lines() {
    // Compact entries keep a client's first failed logins without their lines too; the
    // lower of the 4xx and failed-login thresholds caps them.
    let mut log = String::new();
    for i in 0..300 {
        let line = |ip: &str, event| {
            format!(
                "{{\"ts\":\"2023-11-14T22:13:{:02}Z\",\"event\":\"{event}\",\"user\":\"u{i}\",\"client_ip\":\"{ip}\"}}\n",
                i % 60
            )
        };
        log.push_str(&line(&format!("198.51.100.{}", i % 200), "auth.succeeded"));
        if i % 100 == 0 {
            log.push_str(&line("203.0.113.9", "auth.failed"));
        }
    }
    for client in proposed_with_lines(&log, "--max-auth-failures", "window_auth_failures") {
        let tried: Vec<&str> =
            client["accounts"].as_array().unwrap().iter().map(|a| a[0].as_str().unwrap()).collect();
        assert_eq!(tried.len(), 3, "the compact entry's accounts are listed too: {client}");
    }
}

fn scan_into(out: &Path, extra: &[&str]) -> std::process::Output {
    logwarden()
        .args(["scan", "--output", "json", "--namespace", "web", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A bundle written again to the same `--out` is the new bundle alone: the first run's
/// ConfigMap patch and its apply script (made with `--current`) must not be left beside a
/// report that proposes no patch, where a reviewer would run them.
#[test]
fn a_bundle_written_over_another_keeps_none_of_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle");
    let first = scan_into(
        &out,
        &["--current", "fixtures/remedy/nginx-config.json", INCIDENT[0], INCIDENT[1], INCIDENT[2]],
    );
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(out.join("apply-blocklist.sh").exists());
    let second = scan_into(&out, &[INCIDENT[1]]);
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    for stale in [
        "apply-blocklist.sh",
        "blocklist.patch.json",
        "rollback-blocklist.sh",
        "blocklist-rollback.nginx.conf",
    ] {
        assert!(!out.join(stale).exists(), "{stale} of the first bundle is still there");
    }
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    let report: Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(
        report["stats"]["lines"],
        serde_json::from_slice::<Value>(&second.stdout).unwrap()["stats"]["lines"]
    );
    assert!(readme.contains("no ConfigMap patch"), "{readme}");
    // Nothing is left of the staging or of the bundle moved aside.
    assert_eq!(names_in(dir.path()), ["bundle"]);
    // Made as `mkdir` makes a directory (the umask decides), not private like a temporary one.
    let made = dir.path().join("made");
    std::fs::create_dir(&made).unwrap();
    let mode =
        |p: &Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions());
    assert_eq!(mode(&out), mode(&made));
}

/// `--out` naming a directory that holds anything but bundle files is refused before a
/// byte is written: the bundle replaces an earlier one whole, and must never remove a
/// file it did not write.
#[test]
fn a_bundle_is_never_written_over_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("notes");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("todo.txt"), "keep me\n").unwrap();
    std::fs::write(out.join("report.md"), "mine\n").unwrap();
    let run = scan_into(&out, &[INCIDENT[0]]);
    assert_eq!(run.status.code(), Some(2), "{}", String::from_utf8_lossy(&run.stderr));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("todo.txt") && err.contains("--out"), "{err}");
    assert_eq!(names_in(&out), ["report.md", "todo.txt"]);
    assert_eq!(std::fs::read_to_string(out.join("report.md")).unwrap(), "mine\n");
    assert_eq!(names_in(dir.path()), ["notes"]);
}

/// Detections on lines whose client field is not one address (here an application that
/// logs the whole X-Forwarded-For list) are said in the terminal and in `report.md`: a
/// scan that proposes no client must not read as one that found no attacker.
#[test]
fn detections_without_a_client_are_said_where_a_reviewer_reads() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let lines: String = (1..=12)
        .map(|s| {
            format!(
                "{{\"ts\":\"2024-01-15T10:00:{s:02}Z\",\"event\":\"auth.failed\",\"user\":\"bob\",\"client_ip\":\"203.0.113.5, 10.0.0.1\"}}\n"
            )
        })
        .collect();
    std::fs::write(&log, lines).unwrap();
    let out = logwarden().arg("scan").arg("--out").arg(dir.path().join("bundle")).arg(&log).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("unattributed: 12 line(s) with a detection named no client address"), "{text}");
    let md = std::fs::read_to_string(dir.path().join("bundle/report.md")).unwrap();
    assert!(md.contains("**Unattributed**: 12 line(s)"), "{md}");
    let doc = scan_json(&[log.to_str().unwrap()], None);
    assert_eq!(doc["stats"]["unattributed_detections"], 12);
}

/// Lines read as `combined` with fields after it that logwarden was not given a format
/// for are said where a reviewer reads: one of those fields may have been the client.
#[test]
fn lines_read_past_unknown_fields_are_said_where_a_reviewer_reads() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let log = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/formats/combined-extra.log");
    let out = logwarden().arg("scan").arg("--out").arg(&bundle).arg(&log).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("extra fields: 3 line(s) were read as combined followed by fields"), "{text}");
    let md = std::fs::read_to_string(bundle.join("report.md")).unwrap();
    assert!(md.contains("**Extra fields**: 3 line(s)"), "{md}");
    // A plain `combined` scan says nothing of the kind.
    let plain = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/formats/combined.log");
    let out = logwarden().arg("scan").arg(&plain).output().unwrap();
    assert!(!String::from_utf8(out.stdout).unwrap().contains("extra fields"));
}

/// A reviewer who adds an identity provider's account to `lock_accounts` is refused, with
/// nothing written: account-lock.sql would lock the application's account of that name.
/// An application account the report does not list is the reviewer's to add.
#[test]
fn emit_refuses_to_lock_another_realms_account_in_the_users_table() {
    let dir = tempfile::tempdir().unwrap();
    let log = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/formats/identity-providers.log");
    let scanned = dir.path().join("scanned");
    let run =
        logwarden().args(["scan", "--max-account-failures", "2", "--out"]).arg(&scanned).arg(&log).output();
    assert!(run.unwrap().status.success());
    let mut report: Value =
        serde_json::from_str(&std::fs::read_to_string(scanned.join("report.json")).unwrap()).unwrap();
    let emit = |report: &Value, out: &str| {
        let edited = dir.path().join("edited.json");
        std::fs::write(&edited, report.to_string()).unwrap();
        let run = logwarden()
            .args(["emit", "--from"])
            .arg(&edited)
            .arg("--out")
            .arg(dir.path().join(out))
            .output()
            .unwrap();
        (run.status.code(), String::from_utf8_lossy(&run.stderr).into_owned())
    };
    report["lock_accounts"] = serde_json::json!(["admin"]);
    let (code, said) = emit(&report, "refused");
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("\"admin\" is an account of realm keycloak"), "{said}");
    assert!(!dir.path().join("refused").exists());
    report["lock_accounts"] = serde_json::json!(["erin"]);
    let (code, said) = emit(&report, "allowed");
    assert_eq!(code, Some(0), "{said}");
    let sql = std::fs::read_to_string(dir.path().join("allowed/account-lock.sql")).unwrap();
    assert!(sql.contains("('erin')"), "{sql}");
}

/// A proposal whose user agent claims a search engine's crawler says how to verify the
/// claim; a client under every threshold is not given the advice, and neither is one with
/// no claim.
#[test]
fn a_proposed_client_claiming_a_crawler_says_how_to_check_it() {
    let doc = scan_json(&["fixtures/hostile/crawler.log"], None);
    let reasons = |ip: &str| -> String {
        let c = doc["ips"].as_array().unwrap().iter().find(|c| c["ip"] == ip).unwrap();
        c["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect::<Vec<_>>().join("; ")
    };
    for ip in ["66.249.66.1", "203.0.113.44"] {
        assert!(
            reasons(ip).contains("claims to be Googlebot") && reasons(ip).contains("googlebot.com"),
            "{ip}"
        );
    }
    for ip in ["198.51.100.61", "40.77.167.1"] {
        assert!(!reasons(ip).contains("claims to be"), "{ip}: {}", reasons(ip));
    }
}

/// `--since` on files counts back from now by each line's own time: the bundled incident
/// (January 2024) is all read and none of it counted, and the report says so. It was
/// once accepted and ignored, and the whole file was counted.
#[test]
fn since_on_files_counts_only_lines_of_that_last_stretch() {
    let doc = scan_json(&["--since", "1h", "fixtures/incident/nginx-access.log"], None);
    let stats = &doc["stats"];
    assert_eq!(stats["outside_time_range"], stats["parsed"], "{stats}");
    assert_eq!(doc["blocklist"], serde_json::json!([]));
    let piped = std::fs::read("fixtures/incident/nginx-access.log").unwrap();
    let doc = scan_json(&["--since", "2h", "--to", "2024-01-15T10:10:00Z"], Some(piped));
    assert_eq!(doc["blocklist"], serde_json::json!(["192.0.2.66", "198.51.100.23"]));
    let empty = logwarden()
        .args(["scan", "--from", "2024-01-15T10:10:00Z", "--to", "2024-01-15T10:00:00Z"])
        .arg("fixtures/incident/nginx-access.log")
        .output()
        .unwrap();
    assert_eq!(empty.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&empty.stderr).contains("window is empty"));
}

/// An account counted under one name from several spellings says how the logs spelled it
/// where a reviewer reads, since the lock finds each of them in the users table.
#[test]
fn an_account_spelled_several_ways_says_so_where_a_reviewer_reads() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let log = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hostile/account-case.log");
    let out = logwarden().arg("scan").arg("--out").arg(&bundle).arg(&log).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("spelled: ADMIN x4, AdMiN x4, Admin x4"), "{text}");
    let md = std::fs::read_to_string(bundle.join("report.md")).unwrap();
    assert!(md.contains("## Lock account admin (app)"), "{md}");
    assert!(md.contains("- spelled in the logs: ADMIN (4), AdMiN (4), Admin (4)"), "{md}");
    assert!(md.contains("- Accounts proposed for locking: **1**"), "{md}");
    let readme = std::fs::read_to_string(bundle.join("README.md")).unwrap();
    assert!(
        readme.contains("locks 1 account(s) (found by 8 names: their spellings in the logs too)"),
        "{readme}"
    );
    let sql = std::fs::read_to_string(bundle.join("account-lock.sql")).unwrap();
    for spelling in ["('admin')", "('ADMIN')", "('AdMiN')", "('admiN')"] {
        assert!(sql.contains(spelling), "{spelling} in {sql}");
    }
}
