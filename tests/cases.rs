//! End-to-end cases as data: each `tests/cases/NAME.toml` names the arguments (and,
//! optionally, a file to pipe to stdin and the expected exit code); the expected output
//! is `tests/cases/NAME.expected.json`. A regression test is a new pair of files.
//!
//! For `scan --output json` the expected file holds a projection of the document (counts,
//! proposals, per-client and per-account totals), so cosmetic fields can change without
//! rewriting every case. For `match` it holds every output record.
//!
//! `LOGWARDEN_BLESS=1 cargo test --test cases` rewrites the expected files; review the
//! diff by eye before committing it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    description: String,
    args: Vec<String>,
    #[serde(default)]
    stdin: Option<PathBuf>,
    #[serde(default)]
    exit_code: i32,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(case: &Case) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_logwarden"));
    cmd.args(&case.args).current_dir(root()).env("NO_COLOR", "1");
    cmd.stdin(match &case.stdin {
        Some(p) => Stdio::from(std::fs::File::open(root().join(p)).expect("stdin file")),
        None => Stdio::null(),
    });
    let out = cmd.output().expect("run logwarden");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "logwarden panicked: {stderr}");
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).expect("utf-8 output"))
}

/// The stable part of a scan document.
pub fn project(doc: &Value) -> Value {
    let pick = |v: &Value, keys: &[&str]| -> Value {
        Value::Object(keys.iter().filter_map(|k| v.get(*k).map(|x| (k.to_string(), x.clone()))).collect())
    };
    let stats = &doc["stats"];
    json!({
        "stats": pick(stats, &["lines", "parsed", "unparsed", "unparsed_by_reason", "oversized", "unfinished_partial_lines", "untimed", "outside_time_range", "access_without_client", "unattributed_detections", "sources"]),
        "blocklist": doc["blocklist"],
        "lock_accounts": doc["lock_accounts"],
        "spared": doc["spared"],
        "ips": doc["ips"].as_array().unwrap().iter()
            .map(|c| pick(c, &["ip", "requests", "status_4xx", "status_5xx", "auth_failures", "rules", "first_seen", "last_seen", "block", "forwarded_lines", "claims_crawler"]))
            .collect::<Vec<_>>(),
        "accounts": doc["accounts"].as_array().unwrap().iter()
            .map(|a| pick(a, &["user", "spellings", "realm", "auth_failures", "ips", "lock"]))
            .collect::<Vec<_>>(),
        "incident": pick(&doc["incident"], &["requests", "status_5xx", "timed_requests", "slow_requests", "top_5xx_endpoints", "status_499", "top_499_endpoints", "failed_logins", "failed_login_clients", "failed_login_accounts", "busiest_failed_login_minute", "failed_login_networks", "busiest_clients"]),
    })
}

fn actual_value(case: &Case, stdout: &str) -> Value {
    if case.args.first().map(String::as_str) == Some("match") {
        return Value::Array(stdout.lines().map(|l| serde_json::from_str(l).expect("ndjson line")).collect());
    }
    project(&serde_json::from_str(stdout).expect("scan prints one JSON document"))
}

#[test]
fn every_case_matches_its_expected_output() {
    let dir = root().join("tests/cases");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 10, "the case directory lost its cases");
    let bless = std::env::var_os("LOGWARDEN_BLESS").is_some();
    let mut failures = Vec::new();
    for path in &names {
        let case: Case = toml::from_str(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (code, stdout) = run(&case);
        let expected_path = path.with_extension("expected.json");
        if code != case.exit_code {
            failures.push(format!("{}: exit code {code}, expected {}", path.display(), case.exit_code));
            continue;
        }
        let actual = actual_value(&case, &stdout);
        if bless {
            std::fs::write(&expected_path, serde_json::to_string_pretty(&actual).unwrap() + "\n").unwrap();
            continue;
        }
        let expected: Value = std::fs::read_to_string(&expected_path)
            .map(|t| serde_json::from_str(&t).expect("expected file is JSON"))
            .unwrap_or_else(|_| {
                panic!("{} missing: run with LOGWARDEN_BLESS=1 and review", expected_path.display())
            });
        if actual != expected {
            failures.push(format!(
                "{} ({}):\n--- expected\n{}\n--- actual\n{}",
                path.display(),
                case.description,
                serde_json::to_string_pretty(&expected).unwrap(),
                serde_json::to_string_pretty(&actual).unwrap()
            ));
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n\n"));
}
