//! account-lock.sql and account-unlock.sql against a real PostgreSQL, with account names
//! an attacker chose. The names reach the SQL the way they would in an incident: as
//! failed logins in an application log, scanned by the real binary.

mod support;

use std::path::Path;

use support::{Postgres, logwarden, ok};

const PWNED: &str = "/tmp/logwarden-sql-test-pwned";

fn hostile_names() -> Vec<String> {
    vec![
        "alice".into(),
        "x'); DROP TABLE users;--".into(),
        "a\\'b".into(),
        "\"quoted\"".into(),
        // A comment start, unquoted. (A name of dashes alone is a placeholder for none, as
        // nginx's `-`, and names no account.)
        "--admin".into(),
        "/*".into(),
        "emoji 🦀 ünïcödé".into(),
        format!("\\! touch {PWNED}"),
        "line1\nline2; \\! touch /tmp/x".into(),
        "tab\there\rhidden\u{1b}[2J\u{7}\u{85}'\\".into(),
        "semi;colon".into(),
        ":psqlvar :'v' :\"v\"".into(),
        "$$dollar$$".into(),
        "k".repeat(10 * 1024),
        "already-locked".into(),
        "null-lock".into(),
    ]
}

/// A backend log in which every name fails 12 logins within a minute.
fn attack_log(names: &[String]) -> String {
    let mut log = String::new();
    for (i, name) in
        names.iter().chain(["not-in-table".to_string(), "nul\0byte".to_string()].iter()).enumerate()
    {
        for n in 0..12 {
            let line = serde_json::json!({
                "ts": format!("2024-01-15T10:{:02}:{:02}Z", i % 60, n),
                "event": "auth.failed",
                "user": name,
                "client_ip": format!("203.0.113.{}", n + 1),
            });
            log.push_str(&line.to_string());
            log.push('\n');
        }
    }
    log
}

fn setup(pg: &Postgres, names: &[String]) {
    pg.sql(
        "CREATE TABLE users (id serial PRIMARY KEY, username text UNIQUE NOT NULL, account_locked boolean DEFAULT false);
         CREATE TABLE security_events (id serial, event_type text, username text, details text, created_at timestamptz DEFAULT now());",
    );
    let mut file = tempfile::NamedTempFile::new().unwrap();
    // Loaded with COPY-free parameterised inserts: psql's own quote_literal via a variable.
    for name in names.iter().chain(["bystander".to_string(), "bystander2".to_string()].iter()) {
        let locked = match name.as_str() {
            "already-locked" => "true",
            "null-lock" => "NULL",
            _ => "false",
        };
        use std::io::Write;
        // Dollar-quoting with a tag absent from every name keeps the fixture itself safe.
        writeln!(file, "INSERT INTO users (username, account_locked) VALUES ($tag${name}$tag$, {locked});")
            .unwrap();
    }
    ok(pg.psql().args(["-v", "ON_ERROR_STOP=1", "-f"]).arg(file.path()).output().unwrap(), "loading users");
}

fn snapshot(pg: &Postgres) -> String {
    pg.sql("SELECT id, md5(username), coalesce(account_locked::text, 'NULL') FROM users ORDER BY id")
}

fn locked_names(pg: &Postgres) -> Vec<String> {
    let out = pg.sql(
        "SELECT encode(convert_to(username, 'UTF8'), 'hex') FROM users WHERE account_locked ORDER BY id",
    );
    out.lines().map(|h| String::from_utf8(hex(h)).unwrap()).collect()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn bundle(dir: &Path, log: &str, extra: &[&str]) -> String {
    let logfile = dir.join("app.log");
    std::fs::write(&logfile, log).unwrap();
    let out = logwarden()
        .args(["scan", "--output", "json", "--out"])
        .arg(dir.join("bundle"))
        .args(extra)
        .arg(&logfile)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out, "logwarden scan --out");
    stderr
}

#[test]
fn lock_and_unlock_against_real_postgres() {
    let _ = std::fs::remove_file(PWNED);
    let names = hostile_names();
    let pg = Postgres::start();
    setup(&pg, &names);
    let before = snapshot(&pg);
    let work = tempfile::tempdir().unwrap();
    let said = bundle(work.path(), &attack_log(&names), &[]);
    assert!(said.contains("could not be written as SQL"), "the NUL name is refused and said so: {said}");
    let lock = work.path().join("bundle/account-lock.sql");
    let unlock = work.path().join("bundle/account-unlock.sql");
    let sql_text = std::fs::read_to_string(&lock).unwrap();
    assert!(!sql_text.contains("203.0.113"), "no log text in the SQL file");

    let out = pg.run_file(&lock);
    let printed = ok(out, "psql -f account-lock.sql");
    let mut expected: Vec<String> =
        names.iter().filter(|n| n.as_str() != "already-locked").cloned().collect();
    expected.push("already-locked".into());
    let mut got = locked_names(&pg);
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "exactly the proposed accounts are locked, plus the one locked before");
    assert!(printed.contains("alice"), "the lock prints what it changed: {printed}");
    let not_found = printed.split("not_found").nth(1).unwrap_or_default();
    assert!(
        not_found.contains("not-in-table") && !not_found.contains("alice"),
        "and what it found no row for: {printed}"
    );
    assert!(!Path::new(PWNED).exists(), "a name ran a shell command");
    assert_eq!(
        pg.sql("SELECT count(*) FROM users WHERE username LIKE 'bystander%' AND account_locked"),
        "0\n"
    );

    let after_first = snapshot(&pg);
    ok(pg.run_file(&lock), "second run");
    assert_eq!(snapshot(&pg), after_first, "running the lock twice changes nothing the second time");

    ok(pg.run_file(&unlock), "psql -f account-unlock.sql");
    assert_eq!(snapshot(&pg), before, "the unlock restores the original table, NULL and all");
    assert!(!Path::new(PWNED).exists());
}

#[test]
fn an_old_server_setting_does_not_change_what_the_names_mean() {
    let names = hostile_names();
    let pg = Postgres::start();
    setup(&pg, &names);
    // A server still on the pre-9.1 default, where backslashes escape inside literals.
    pg.sql("ALTER DATABASE postgres SET standard_conforming_strings = off");
    let before = snapshot(&pg);
    let work = tempfile::tempdir().unwrap();
    bundle(work.path(), &attack_log(&names), &[]);
    ok(
        pg.run_file(&work.path().join("bundle/account-lock.sql")),
        "lock with standard_conforming_strings off",
    );
    assert!(locked_names(&pg).contains(&"a\\'b".to_string()));
    assert!(locked_names(&pg).contains(&"x'); DROP TABLE users;--".to_string()));
    ok(pg.run_file(&work.path().join("bundle/account-unlock.sql")), "unlock");
    assert_eq!(snapshot(&pg), before);
    assert!(!Path::new(PWNED).exists());
}

#[test]
fn record_events_and_custom_names() {
    let names = vec!["carol".to_string(), "o'neil".to_string()];
    let pg = Postgres::start();
    pg.sql(
        "CREATE SCHEMA app;
         CREATE TABLE app.\"Accounts\" (login text PRIMARY KEY, disabled boolean NOT NULL DEFAULT false);
         INSERT INTO app.\"Accounts\" VALUES ('carol', false), ('o''neil', false), ('dave', false);
         CREATE TABLE audit_events (event_type text, username text, details text);",
    );
    let work = tempfile::tempdir().unwrap();
    bundle(
        work.path(),
        &attack_log(&names),
        &[
            "--users-table",
            "app.Accounts",
            "--user-column",
            "login",
            "--lock-column",
            "disabled",
            "--record-events",
            "--events-table",
            "audit_events",
        ],
    );
    ok(pg.run_file(&work.path().join("bundle/account-lock.sql")), "lock");
    assert_eq!(pg.sql("SELECT login FROM app.\"Accounts\" WHERE disabled ORDER BY login"), "carol\no'neil\n");
    assert_eq!(
        pg.sql("SELECT username FROM audit_events WHERE event_type = 'account_takeover' ORDER BY username"),
        "carol\no'neil\n"
    );
    ok(pg.run_file(&work.path().join("bundle/account-unlock.sql")), "unlock");
    assert_eq!(pg.sql("SELECT count(*) FROM app.\"Accounts\" WHERE disabled"), "0\n");
}

/// A brute force spread over a name's spellings. Counted as one account (the default
/// `--account-case insensitive`), the lock finds the row however the table spells the
/// name (`Admin` for `admin`, `ADMIN`), and a non-ASCII name as logged (`ÅSA`) even
/// though this cluster's C locale lower-cases ASCII alone. With `sensitive`, only a name
/// the table spells exactly as logged is locked.
#[test]
fn every_spelling_of_an_account_finds_its_row() {
    let names: Vec<String> = ["admin", "ADMIN", "ÅSA"].map(String::from).to_vec();
    let pg = Postgres::start();
    pg.sql(
        "CREATE TABLE users (username text PRIMARY KEY, account_locked boolean NOT NULL DEFAULT false);
         INSERT INTO users VALUES ('Admin', false), ('ÅSA', false), ('admin2', false), ('bystander', false);",
    );
    let locked = || pg.sql("SELECT username FROM users WHERE account_locked ORDER BY username");
    let work = tempfile::tempdir().unwrap();
    bundle(work.path(), &attack_log(&names), &[]);
    let lock = work.path().join("bundle/account-lock.sql");
    let printed = ok(pg.run_file(&lock), "lock ignoring case");
    assert_eq!(locked(), "Admin\nÅSA\n", "{printed}");
    let not_found = printed.split("not_found").nth(1).unwrap_or_default();
    assert!(
        !not_found.contains("admin") && !not_found.contains("ÅSA"),
        "found every proposed name: {printed}"
    );
    ok(pg.run_file(&work.path().join("bundle/account-unlock.sql")), "unlock");
    assert_eq!(locked(), "");

    let exact = tempfile::tempdir().unwrap();
    bundle(exact.path(), &attack_log(&names), &["--account-case", "sensitive"]);
    let printed = ok(pg.run_file(&exact.path().join("bundle/account-lock.sql")), "lock as logged");
    assert_eq!(locked(), "ÅSA\n", "{printed}");
    assert!(printed.split("not_found").nth(1).unwrap_or_default().contains("ADMIN"), "{printed}");
}
