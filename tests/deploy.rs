//! The manifests in `deploy/` are real: kubectl reads them (offline, `kubectl patch
//! --local`), and the CronJob's own command runs, as written, against the in-process Loki
//! (tests/support/fake_loki.rs) with its volumes as temporary directories. A flag renamed
//! in the CLI, a volume mounted under one name and declared under another, or a tenant the
//! scan does not send fails here rather than in a cluster at 3 a.m.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::fake_loki::{FakeLoki, FakeStream};
use support::kubectl;

/// Every object of `deploy/cronjob.yaml`, as kubectl decodes it.
fn manifest_objects() -> Vec<Value> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/cronjob.yaml");
    let out = kubectl()
        .args(["patch", "--local", "--type", "merge", "-p", "{}", "-o", "json", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl could not read {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::Deserializer::from_slice(&out.stdout).into_iter::<Value>().map(Result::unwrap).collect()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects.iter().find(|o| o["kind"] == kind).unwrap_or_else(|| panic!("deploy/cronjob.yaml has no {kind}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

/// The pod the CronJob runs, and its one container.
fn pod_of(cronjob: &Value) -> (&Value, &Value) {
    let pod = &cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "one container expected");
    (pod, &containers[0])
}

#[test]
fn the_cronjob_is_well_formed() {
    let objects = manifest_objects();
    let (claim, cronjob) = (of_kind(&objects, "PersistentVolumeClaim"), of_kind(&objects, "CronJob"));
    assert_eq!(cronjob["apiVersion"], "batch/v1");
    // Two runs must never share the state file.
    assert_eq!(cronjob["spec"]["concurrencyPolicy"], "Forbid");
    let (pod, container) = pod_of(cronjob);
    assert_eq!(pod["restartPolicy"], "Never");
    let volumes: BTreeMap<&str, &Value> =
        pod["volumes"].as_array().unwrap().iter().map(|v| (v["name"].as_str().unwrap(), v)).collect();
    for mount in container["volumeMounts"].as_array().unwrap() {
        let name = mount["name"].as_str().unwrap();
        assert!(volumes.contains_key(name), "volumeMount {name} has no volume");
    }
    let state = volumes.values().find_map(|v| v["persistentVolumeClaim"]["claimName"].as_str());
    assert_eq!(state, claim["metadata"]["name"].as_str(), "the state volume names the claim in the file");
    assert_eq!(claim["metadata"]["namespace"], cronjob["metadata"]["namespace"]);
    // The memory bound is pinned under the container's limit, and the threads with it:
    // the default thread count is the node's cores, each thread a share of the bound.
    let args = strings(&container["args"]).join(" ");
    let flag = |name: &str| -> u64 {
        let at = args.find(name).unwrap_or_else(|| panic!("the command sets {name}: {args}"));
        args[at + name.len()..].split_whitespace().next().unwrap().parse().unwrap()
    };
    let limit = container["resources"]["limits"]["memory"].as_str().unwrap();
    let limit_mib: u64 = limit.strip_suffix("Mi").expect("a limit in Mi").parse().unwrap();
    assert!(flag("--max-memory ") + 100 <= limit_mib, "--max-memory leaves room under {limit}");
    assert!(flag("--threads ") <= 4, "{args}");
}

/// Where each volume of the container is mounted, and a temporary directory for it.
fn volumes_as_dirs(container: &Value, root: &Path) -> Vec<(String, PathBuf)> {
    let mut mounts: Vec<(String, PathBuf)> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let dir = root.join(m["name"].as_str().unwrap());
            std::fs::create_dir_all(&dir).unwrap();
            (m["mountPath"].as_str().unwrap().to_string(), dir)
        })
        .collect();
    // Longest first, so that a mount inside another is rewritten before its parent.
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    mounts
}

/// The bundled incident as the CronJob's queries see it, stamped over the last ten minutes
/// (the command reads `--since 15m`).
fn web_streams() -> Vec<FakeStream> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    let start = now - 600 * 1_000_000_000;
    support::incident_streams(&[("namespace", "web")], |i| start + i as i64 * 1_000_000)
}

#[test]
fn the_cronjobs_command_scans_loki_and_writes_a_bundle_and_the_state() {
    let objects = manifest_objects();
    let (_, container) = pod_of(of_kind(&objects, "CronJob"));
    let env: BTreeMap<String, String> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].as_str().unwrap().to_string()))
        .collect();
    let tenant = env.get("LOGWARDEN_LOKI_TENANT").expect("the CronJob names its tenant").clone();
    let loki = FakeLoki::start(web_streams());
    // Requests without the tenant's X-Scope-OrgID are refused, as a multi-tenant Loki does.
    loki.with(|s| s.tenant = Some(tenant.clone()));

    let root = tempfile::tempdir().unwrap();
    let mounts = volumes_as_dirs(container, root.path());
    let secrets = &mounts.iter().find(|(path, _)| path.contains("secrets")).expect("a secret volume").1;
    std::fs::write(secrets.join("token"), "cron-token\n").unwrap();
    let mut words = strings(&container["command"]);
    words.extend(strings(&container["args"]));
    for word in &mut words {
        for (path, dir) in &mounts {
            *word = word.replace(path.as_str(), dir.to_str().unwrap());
        }
    }
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_logwarden")).parent().unwrap();
    let out = Command::new(&words[0])
        .args(&words[1..])
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
        .envs(&env)
        .env("LOGWARDEN_LOKI_URL", &loki.url)
        // `readOnlyRootFilesystem: true`: no temporary file may go anywhere but the volumes.
        .env("TMPDIR", root.path().join("read-only-root"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the CronJob's command failed: {stderr}");

    let requests = loki.range_requests();
    assert!(!requests.is_empty(), "no query reached Loki");
    for r in &requests {
        assert_eq!(r.headers["authorization"], "Bearer cron-token");
        assert_eq!(r.headers["x-scope-orgid"], tenant);
    }
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["loki"].as_array().unwrap().iter().all(|q| q["complete"] == true), "{}", doc["loki"]);
    let proposed: Vec<&str> =
        doc["blocklist"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(proposed.contains(&"198.51.100.23"), "{proposed:?}");

    let state_dir = &mounts.iter().find(|(path, _)| path.ends_with("/logwarden")).expect("a state volume").1;
    assert!(state_dir.join("state.json").is_file(), "no state file written");
    let bundles: Vec<PathBuf> =
        std::fs::read_dir(state_dir.join("bundles")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(bundles.len(), 1, "{bundles:?}");
    assert!(bundles[0].join("report.md").is_file(), "{:?} has no report.md", bundles[0]);
}
