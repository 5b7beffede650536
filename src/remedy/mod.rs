//! Remediation artifacts: the review bundle. logwarden never applies anything; it writes
//! what a human reviews and applies, each with its way back:
//!
//! | file | what |
//! |---|---|
//! | `report.md`, `report.json` | the evidence, and the scan document (`emit --from` input) |
//! | `blocklist.patch.json` | the merge patch: the union of the live value and the proposals |
//! | `blocklist.guard.json`, `apply-blocklist.sh` | the guarded JSON patch and the command that applies it |
//! | `rollback-blocklist.patch.json`, `rollback-blocklist.guard.json`, `rollback-blocklist.sh` | the way back |
//! | `blocklist.nginx.conf`, `blocklist-rollback.nginx.conf` | the same list as an nginx include |
//! | `account-lock.sql`, `account-unlock.sql` | account locks and their exact undo |
//! | `README.md` | how to apply and how to undo |

pub mod blocklist;
pub mod markdown;
pub mod sql;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Serialize;

use crate::client::{ClientKey, Ranges};
use crate::decide::{AccountReport, ScanReport};
use crate::error::{Error, Result};
use blocklist::{BlocklistTarget, Collapse, CurrentConfigMap, MalformedEntry, MergedBlocklist};
use sql::{LockTarget, RefusedName};

/// Everything that shapes the bundle, validated once by [`RemedyConfig::build`].
#[derive(Clone, Debug)]
pub struct RemedyConfig {
    pub target: BlocklistTarget,
    pub current: Option<CurrentConfigMap>,
    /// Write a patch that replaces the value without knowing it.
    pub replace: bool,
    pub collapse: Collapse,
    pub lock: LockTarget,
    /// Private, loopback, link-local and shared ranges may be in the blocklist (a scan's
    /// `--block-private`); otherwise such an entry in a hand-edited report is refused.
    pub block_private: bool,
}

impl RemedyConfig {
    /// Checks names that end up in shell commands and SQL before anything is written.
    pub fn build(self) -> Result<RemedyConfig> {
        for (option, name) in
            [("--namespace", &self.target.namespace), ("--configmap", &self.target.configmap)]
        {
            check_k8s_name(option, name)?;
        }
        if let Some(d) = &self.target.restart {
            check_k8s_name("--deployment", d)?;
        }
        if self.target.key.is_empty()
            || !self.target.key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(Error::option(
                "--configmap-key",
                "a ConfigMap key is letters, digits, '-', '_' and '.'",
            ));
        }
        sql::lock_scripts(&self.lock, "check", &[], Default::default())
            .map_err(|m| Error::option("--users-table", m))?;
        Ok(self)
    }
}

/// DNS-1123 names, as Kubernetes requires for namespaces, ConfigMaps and deployments.
fn check_k8s_name(option: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.']);
    match ok {
        true => Ok(()),
        false => Err(Error::option(
            option,
            format!("{name:?} is not a Kubernetes name (lower-case letters, digits, '-', '.')"),
        )),
    }
}

/// Takes clients that the live blocklist already covers out of the proposals: they are
/// listed in `already_blocked` instead, and their report says by which entry.
pub fn mark_already_blocked(report: &mut ScanReport, current: &CurrentConfigMap) {
    // The same reading of the live value as the merge, so the report and the patch agree
    // on what is already blocked (a malformed entry, such as 0.0.0.0/0, blocks nothing).
    let (live, _) = blocklist::live_entries(current.value.as_deref());
    let coverage = blocklist::Coverage::new(&live);
    for client in report.ips.iter_mut().filter(|c| c.block) {
        if let Some(by) = coverage.entry_for(&client.ip) {
            client.block = false;
            client.reasons.push(format!("already blocked by the live entry {by}"));
            report.already_blocked.push(crate::decide::AlreadyBlocked { ip: client.ip, by });
        }
    }
    let blocked: std::collections::HashSet<String> =
        report.already_blocked.iter().map(|a| a.ip.to_string()).collect();
    report.blocklist.retain(|ip| !blocked.contains(ip));
}

/// What the bundle holds, for its README, report.md and the command's own summary.
#[derive(Clone, Debug, Serialize)]
pub struct BundlePlan {
    pub bundle_id: String,
    /// Proposals not blocked before.
    pub added: Vec<String>,
    pub already_blocked: Vec<(String, String)>,
    /// Accounts written into `account-lock.sql`.
    pub locked: Vec<String>,
    /// Names it looks for: those accounts and the spellings the logs gave them.
    pub lock_names: usize,
    pub refused: Vec<RefusedName>,
    pub malformed: Vec<MalformedEntry>,
    /// What happened to the ConfigMap patch, in one sentence.
    pub blocklist_note: String,
    /// Files written, in order.
    pub files: Vec<String>,
}

/// Computes every artifact, checks limits, then writes the bundle into `dir`.
pub fn write_bundle(dir: &Path, report: &ScanReport, cfg: &RemedyConfig) -> Result<BundlePlan> {
    let report_json =
        serde_json::to_string_pretty(report).map_err(|e| Error::option("report", e.to_string()))? + "\n";
    let bundle_id = format!("lw-{:016x}", fnv1a(report_json.as_bytes()));
    let proposed = proposed_keys(report, cfg.block_private)?;
    let current_value = cfg.current.as_ref().and_then(|c| c.value.as_deref());
    let merged = blocklist::merge(current_value, &proposed, cfg.collapse);
    let patch = patch_decision(cfg, &merged, proposed.is_empty());
    if patch.is_ok() {
        let size = blocklist::configmap_data_size(cfg.current.as_ref(), &cfg.target.key, &merged.value);
        if size > blocklist::CONFIGMAP_LIMIT {
            return Err(Error::option(
                "--current",
                format!(
                    "the ConfigMap would hold {size} bytes, over Kubernetes' 1 MiB limit; nothing was written \
                     (use --collapse, or serve blocklist.nginx.conf as a geo map instead)"
                ),
            ));
        }
    }
    check_lock_realms(report)?;
    let scripts = sql::lock_scripts(&cfg.lock, &bundle_id, &lock_names(report), report.account_case)
        .map_err(|m| Error::option("--users-table", m))?;
    let mut plan = BundlePlan {
        bundle_id: bundle_id.clone(),
        added: merged.added.clone(),
        already_blocked: report
            .already_blocked
            .iter()
            .map(|a| (a.ip.to_string(), a.by.clone()))
            .chain(merged.already_blocked.iter().cloned())
            .collect(),
        locked: written_accounts(report, &scripts.locked),
        lock_names: scripts.locked.len(),
        refused: scripts.refused.clone(),
        malformed: merged.malformed.clone(),
        blocklist_note: match &patch {
            Ok(()) => format!(
                "{} written: {} new entr(y/ies) merged into the live value",
                file::PATCH,
                merged.added.len()
            ),
            Err(why) => why.clone(),
        },
        files: Vec::new(),
    };
    let mut files: Vec<(&str, String)> = vec![(file::REPORT_JSON, report_json)];
    if patch.is_ok() {
        files.extend(configmap_files(cfg, &merged, &bundle_id));
    }
    files.push((file::NGINX_INCLUDE, blocklist::nginx_include(&merged.value)));
    if cfg.current.is_some() {
        files.push((file::NGINX_ROLLBACK, blocklist::nginx_include(current_value.unwrap_or(""))));
    }
    files.push((file::LOCK_SQL, scripts.lock));
    files.push((file::UNLOCK_SQL, scripts.unlock));
    plan.files = files
        .iter()
        .map(|(n, _)| n.to_string())
        .chain([file::REPORT_MD.into(), file::README.into()])
        .collect();
    files.push((file::REPORT_MD, markdown::render(report, &plan)));
    files.push((file::README, bundle_readme(cfg, &plan, patch.is_ok())));
    write_files(dir, &files)?;
    Ok(plan)
}

/// The proposals of a (possibly hand-edited) report, validated: what a reviewer wrote
/// into the blocklist is refused, with what to change, where it would block more than
/// it says or what a scan never proposes.
fn proposed_keys(report: &ScanReport, block_private: bool) -> Result<Vec<ClientKey>> {
    let spared = Ranges::new(report.spared.iter().map(|s| s.ip.0));
    let check = |entry: &String| {
        let key = written_key(entry)?;
        let conflict = spared_conflict(report, &spared, entry, &key)
            .or_else(|| (!block_private).then(|| special_conflict(entry, &key)).flatten());
        conflict.map_or(Ok(key), Err)
    };
    report
        .blocklist
        .iter()
        .map(|entry| check(entry).map_err(|e| Error::option("report blocklist", e)))
        .collect()
}

/// The names account-lock.sql looks for: each of `lock_accounts` and, when names were
/// counted ignoring case, every spelling the logs gave it. `lower()` alone finds only
/// what the database's own locale lower-cases (ASCII alone under the C locale), so a
/// spelling as logged (`ÅSA`) must be found as itself.
fn lock_names(report: &ScanReport) -> Vec<String> {
    let app = |a: &&AccountReport| a.realm == crate::detect::APP_REALM;
    let spelled: HashMap<&str, &AccountReport> =
        report.accounts.iter().filter(app).map(|a| (a.user.as_str(), a)).collect();
    let mut seen = HashSet::new();
    let mut names = Vec::new();
    for name in &report.lock_accounts {
        let spellings =
            spelled.get(name.as_str()).into_iter().flat_map(|a| a.spellings.iter().map(|(s, _)| s));
        for n in std::iter::once(name).chain(spellings) {
            if seen.insert(n.as_str()) {
                names.push(n.clone());
            }
        }
    }
    names
}

/// The proposed accounts whose names were written into the lock (`written`, which also
/// holds their spellings), in the report's order.
fn written_accounts(report: &ScanReport, written: &[String]) -> Vec<String> {
    let written: HashSet<&str> = written.iter().map(String::as_str).collect();
    report.lock_accounts.iter().filter(|name| written.contains(name.as_str())).cloned().collect()
}

/// Refuses a (hand-edited) `lock_accounts` entry that the report knows only as an account
/// of another realm than the application's: account-lock.sql changes the users table,
/// where a Keycloak or htpasswd account is not, and the application may have an account
/// of the same name that nobody attacked. A name the report does not list is the
/// reviewer's to add.
fn check_lock_realms(report: &ScanReport) -> Result<()> {
    for name in &report.lock_accounts {
        let realms = || report.accounts.iter().filter(|a| a.user == *name).map(|a| a.realm.as_str());
        if realms().any(|r| r == crate::detect::APP_REALM) {
            continue;
        }
        if let Some(realm) = realms().next() {
            return Err(Error::option(
                "report lock_accounts",
                format!(
                    "{name:?} is an account of realm {realm} in this report, not of the application: \
                     account-lock.sql would lock the application's account of that name instead; lock it in \
                     {realm} itself and remove it from lock_accounts"
                ),
            ));
        }
    }
    Ok(())
}

/// Why `entry` (read as `key`) must not be blocked when the report spares a client it holds.
fn spared_conflict(report: &ScanReport, spared: &Ranges, entry: &str, key: &ClientKey) -> Option<String> {
    let net = spared.overlapping(&key.0)?;
    let s = report.spared.iter().find(|s| s.ip.0 == *net)?;
    let what = if s.ip == *key { "is a client".to_string() } else { format!("would block {}, which", s.ip) };
    Some(format!("{entry} {what} this report spares ({}): remove it from one of the two lists", s.reason))
}

/// Why `entry` (read as `key`) must not be blocked without `--block-private`, if it
/// holds addresses that are not the public Internet.
fn special_conflict(entry: &str, key: &ClientKey) -> Option<String> {
    let what = crate::client::special_overlap(&key.0)?;
    let (is, them) = if key.0.prefix_len() == key.0.max_prefix_len() {
        (format!("is a {what} address"), "it")
    } else {
        (format!("holds {what} addresses"), "them")
    };
    Some(format!(
        "{entry} {is}, which a scan never proposes (proxies and internal clients); pass --block-private to block {them}"
    ))
}

/// An entry as a reviewer wrote it: an address or a network address with its prefix,
/// read as the live list's entries are (IPv4-mapped IPv6 as the IPv4 it is, so that the
/// checks against spared clients see it). Host bits are refused, not cleared:
/// `2001:db8::/16` would block all of `2001::/16`.
fn written_key(entry: &str) -> std::result::Result<ClientKey, String> {
    let key: ClientKey = entry.parse()?;
    if let Ok(net) = entry.parse::<ipnet::IpNet>()
        && net != key.0
    {
        return Err(format!(
            "{entry} has bits set past its prefix, so it would block {}: write that, or a longer prefix",
            key.0
        ));
    }
    blocklist::normalise(key).map(ClientKey).map_err(|e| format!("{entry}: {e}"))
}

/// Whether a ConfigMap patch is written, or why not.
fn patch_decision(
    cfg: &RemedyConfig,
    merged: &MergedBlocklist,
    nothing_proposed: bool,
) -> Result<(), String> {
    if nothing_proposed {
        return Err("no ConfigMap patch: no client is proposed for blocking".into());
    }
    if cfg.current.is_none() && !cfg.replace {
        return Err(
            "no ConfigMap patch: without --current (the output of `kubectl get configmap NAME -o json`) \
                    a patch would replace the live value and unblock everyone already blocked; \
                    pass --current, or --replace if the value is known to be empty"
                .into(),
        );
    }
    if merged.added.is_empty() {
        return Err("no ConfigMap patch: every proposed client is already blocked".into());
    }
    Ok(())
}

fn configmap_files(
    cfg: &RemedyConfig,
    merged: &MergedBlocklist,
    bundle_id: &str,
) -> Vec<(&'static str, String)> {
    let key = &cfg.target.key;
    let pretty =
        |v: &serde_json::Value| serde_json::to_string_pretty(v).expect("JSON values serialise") + "\n";
    let guarded = cfg.current.is_some();
    let mut files = vec![
        (file::PATCH, pretty(&blocklist::merge_patch(key, Some(&merged.value)))),
        (file::ROLLBACK_PATCH, pretty(&blocklist::merge_patch(key, merged.previous.as_deref()))),
        (file::ROLLBACK_GUARD, pretty(&blocklist::guarded_rollback(key, merged))),
    ];
    if guarded {
        files
            .push((file::GUARD, pretty(&blocklist::guarded_patch(key, cfg.current.as_ref(), &merged.value))));
    }
    let apply_patch = match guarded {
        true => format!("--type json --patch-file {}", file::GUARD),
        false => format!("--type merge --patch-file {}", file::PATCH),
    };
    files.push((file::APPLY, script(cfg, bundle_id, &apply_patch, guarded)));
    files.push((
        file::ROLLBACK,
        script(cfg, bundle_id, &format!("--type json --patch-file {}", file::ROLLBACK_GUARD), true),
    ));
    files
}

fn script(cfg: &RemedyConfig, bundle_id: &str, patch: &str, guarded: bool) -> String {
    let t = &cfg.target;
    let guard = if guarded {
        "# Guarded: kubectl refuses the patch, and nothing changes, if the ConfigMap is not\n# exactly as logwarden read (or left) it.\n"
    } else {
        "# NOT guarded (--replace): this overwrites the live value. Check it first with\n#   kubectl get configmap --namespace NS NAME -o json\n"
    };
    let mut s = format!(
        "#!/bin/sh\n# Generated by logwarden (bundle {bundle_id}). Review report.md first.\n{guard}set -eu\ncd \"$(dirname \"$0\")\"\n\
         kubectl patch configmap {} --namespace {} {patch}\n",
        shell_quote(&t.configmap),
        shell_quote(&t.namespace)
    );
    if let Some(deployment) = &t.restart {
        s.push_str(&format!(
            "kubectl rollout restart deployment {} --namespace {}\n",
            shell_quote(deployment),
            shell_quote(&t.namespace)
        ));
    }
    s
}

/// Single-quotes a word for `sh`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn bundle_readme(cfg: &RemedyConfig, plan: &BundlePlan, patch: bool) -> String {
    let t = &cfg.target;
    let mut s = format!(
        "# Review bundle {}\n\nNothing here has been applied. Read `report.md` first.\n\n## Blocklist\n\n{}.\n\n",
        plan.bundle_id, plan.blocklist_note
    );
    if patch {
        s.push_str(&format!(
            "- Apply: `sh apply-blocklist.sh` (patches ConfigMap `{}` key `{}` in namespace `{}`{}).\n\
             - Undo: `sh rollback-blocklist.sh` restores the previous value exactly (it refuses if the value \
             changed since it was applied; `rollback-blocklist.patch.json` is the unguarded merge patch).\n",
            t.configmap,
            t.key,
            t.namespace,
            t.restart.as_deref().map(|d| format!(", then restarts deployment `{d}`")).unwrap_or_default()
        ));
    }
    s.push_str(
        "- Plain nginx: include `blocklist.nginx.conf` (undo: `blocklist-rollback.nginx.conf`, when the live value \
         was given with --current), then `nginx -t && nginx -s reload`.\n\n## Accounts\n\n",
    );
    let spellings = if plan.lock_names > plan.locked.len() {
        format!(" (found by {} names: their spellings in the logs too)", plan.lock_names)
    } else {
        String::new()
    };
    s.push_str(&format!(
        "- Lock: `psql -f account-lock.sql` locks {} account(s){spellings} not locked yet and records them in `{}` \
         under this bundle's id; it prints the accounts it changed. Running it twice changes nothing more.\n\
         - Undo: `psql -f account-unlock.sql` restores exactly the accounts the lock changed; an account that was \
         locked before stays locked.\n",
        plan.locked.len(),
        cfg.lock.record_table
    ));
    if !plan.refused.is_empty() {
        s.push_str(&format!(
            "- {} proposed name(s) could not be written as SQL: see report.md.\n",
            plan.refused.len()
        ));
    }
    s
}

/// Writes the bundle's files into `dir` as a whole. They go into a new directory beside it
/// first, synced, which is then renamed into place: a reader never finds a bundle half
/// written, or mixed with an earlier bundle's files (a stale `apply-blocklist.sh` beside a
/// report that proposes no patch). An existing `dir` is replaced only when it is empty or
/// holds nothing but bundle files, so no other file is ever removed.
fn write_files(dir: &Path, files: &[(&str, String)]) -> Result<()> {
    let fail = |message: String| Error::Bundle { path: dir.to_path_buf(), message };
    let replaced = replaceable(dir).map_err(fail)?;
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| fail(format!("creating {}: {e}", parent.display())))?;
    let staging = staging_builder(".logwarden-bundle-")
        .tempdir_in(parent)
        .map_err(|e| fail(format!("creating a directory in {}: {e}", parent.display())))?;
    for (name, content) in files {
        write_synced(&staging.path().join(name), content)
            .map_err(|e| fail(format!("writing {name}: {e}")))?;
    }
    // Written in full: from here the staging directory must outlive this function.
    let staged = staging.keep();
    put_in_place(&staged, dir, replaced, parent).map_err(|e| {
        let _ = std::fs::remove_dir_all(&staged);
        fail(e)
    })
}

/// The names of a bundle's files, written by one place and recognised by another
/// ([`BUNDLE_FILES`]).
mod file {
    pub const REPORT_JSON: &str = "report.json";
    pub const REPORT_MD: &str = "report.md";
    pub const README: &str = "README.md";
    pub const PATCH: &str = "blocklist.patch.json";
    pub const GUARD: &str = "blocklist.guard.json";
    pub const APPLY: &str = "apply-blocklist.sh";
    pub const ROLLBACK_PATCH: &str = "rollback-blocklist.patch.json";
    pub const ROLLBACK_GUARD: &str = "rollback-blocklist.guard.json";
    pub const ROLLBACK: &str = "rollback-blocklist.sh";
    pub const NGINX_INCLUDE: &str = "blocklist.nginx.conf";
    pub const NGINX_ROLLBACK: &str = "blocklist-rollback.nginx.conf";
    pub const LOCK_SQL: &str = "account-lock.sql";
    pub const UNLOCK_SQL: &str = "account-unlock.sql";
}

/// The files a bundle may hold; a directory holding anything else is not one. A file
/// added to bundles must be named in [`file`] and listed here, or a bundle could not be
/// written over one that has it (tests/cli.rs writes a bundle with every file over another).
const BUNDLE_FILES: [&str; 13] = [
    file::REPORT_JSON,
    file::REPORT_MD,
    file::README,
    file::PATCH,
    file::GUARD,
    file::APPLY,
    file::ROLLBACK_PATCH,
    file::ROLLBACK_GUARD,
    file::ROLLBACK,
    file::NGINX_INCLUDE,
    file::NGINX_ROLLBACK,
    file::LOCK_SQL,
    file::UNLOCK_SQL,
];

/// Whether `dir` exists (and so is to be replaced); an error when it holds anything that
/// is not a bundle file.
fn replaceable(dir: &Path) -> std::result::Result<bool, String> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("{e} (--out names the directory to write the bundle to)")),
        Ok(entries) => entries,
    };
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if !is_file || !BUNDLE_FILES.iter().any(|f| name == *f) {
            return Err(format!(
                "exists and holds {name:?}, which is not a bundle file; nothing was written (choose a new --out, \
                 or empty this directory)"
            ));
        }
    }
    Ok(true)
}

/// Writes `content` to a new file at `path` and waits until it is on disk.
fn write_synced(path: &Path, content: &str) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    std::io::Write::write_all(&mut file, content.as_bytes())?;
    file.sync_all()
}

/// Renames the written bundle `staged` to `dir`, moving an earlier bundle there aside
/// first and removing it once the new one is in place.
fn put_in_place(staged: &Path, dir: &Path, replaced: bool, parent: &Path) -> std::result::Result<(), String> {
    let aside = if replaced {
        let aside = staging_builder(".logwarden-bundle-old-")
            .tempdir_in(parent)
            .map_err(|e| format!("making room for the earlier bundle: {e}"))?;
        // Renaming a directory onto an empty one replaces it.
        std::fs::rename(dir, aside.path()).map_err(|e| format!("moving the earlier bundle aside: {e}"))?;
        Some(aside.keep())
    } else {
        None
    };
    if let Err(e) = std::fs::rename(staged, dir) {
        if let Some(aside) = &aside {
            let _ = std::fs::rename(aside, dir);
        }
        return Err(format!("moving the new bundle into place: {e}"));
    }
    sync_dir(parent);
    if let Some(aside) = aside {
        let _ = std::fs::remove_dir_all(aside);
    }
    Ok(())
}

/// A directory beside the bundle's, made as `mkdir` would make it (the umask decides, as
/// for a directory created in place; a temporary directory is otherwise private).
fn staging_builder(prefix: &str) -> tempfile::Builder<'_, '_> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix);
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o777));
    builder
}

/// Makes a rename in `dir` durable, where the platform allows (best effort: the bundle is
/// complete either way, only whether it survives a crash of the machine is at stake).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// FNV-1a: a stable id for the bundle, derived from its report.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}
