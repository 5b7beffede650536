//! The rule set against traffic: every built-in rule's examples behave (`patterns test`),
//! a realistic benign corpus proposes nothing, and each attack family planted in that
//! traffic is found by its rule with the right action (block the client, lock the account).

mod support;

use std::sync::Arc;

use serde_json::Value;

use logwarden::detect::RuleSet;
use logwarden::detect::check::check_examples;
use support::{logwarden, ok};

#[test]
fn every_builtin_rule_has_examples_that_behave() {
    let set = Arc::new(RuleSet::builtin().unwrap());
    let failures = check_examples(&set);
    assert!(failures.is_empty(), "{}", failures.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("\n"));
    for rule in set.rules() {
        assert!(!rule.examples.is_empty() && !rule.counterexamples.is_empty(), "{} lacks examples", rule.id);
    }
    let out = ok(logwarden().args(["patterns", "test"]).output().unwrap(), "patterns test");
    assert!(out.contains(" 0 failed"), "{out}");
}

/// xorshift64*: a small deterministic generator, so the corpus is the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, list: &[&'a str]) -> &'a str {
        list[self.below(list.len() as u64) as usize]
    }
}

const T0: u64 = 1_705_309_200; // 2024-01-15T09:00:00Z

fn clock(t: u64) -> (u64, u64, u64) {
    let s = t - T0;
    (9 + s / 3600, s / 60 % 60, s % 60)
}

fn access(ip: &str, t: u64, method: &str, target: &str, status: u16, ua: &str) -> String {
    let (h, m, s) = clock(t);
    format!(
        "{ip} - - [15/Jan/2024:{h:02}:{m:02}:{s:02} +0000] \"{method} {target} HTTP/1.1\" {status} 512 \"-\" \"{ua}\"\n"
    )
}

fn backend(ip: &str, t: u64, event: &str, user: &str) -> String {
    let (h, m, s) = clock(t);
    format!(
        "{{\"ts\":\"2024-01-15T{h:02}:{m:02}:{s:02}Z\",\"level\":\"info\",\"event\":\"{event}\",\"user\":\"{user}\",\"client_ip\":\"{ip}\"}}\n"
    )
}

fn error_line(ip: &str, t: u64, message: &str) -> String {
    let (h, m, s) = clock(t);
    format!(
        "2024/01/15 {h:02}:{m:02}:{s:02} [error] 29#29: *1 {message}, client: {ip}, server: shop.example.com, request: \"GET /admin/ HTTP/1.1\", host: \"shop.example.com\"\n"
    )
}

const BROWSERS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
];

/// Two hours of normal traffic: browsers (with the odd broken link and apostrophe in a
/// search), API clients, health checks, an uptime monitor, crawlers that read robots.txt,
/// an office behind one NAT address whose users sometimes mistype a password.
fn benign() -> (String, String, String) {
    let mut r = Rng(0x5eed);
    let (mut acc, mut app, mut err) = (String::new(), String::new(), String::new());
    let pages = [
        "/",
        "/products",
        "/products/42",
        "/cart",
        "/static/app.js",
        "/static/app.css",
        "/favicon.ico",
        "/search?q=rock+and+roll",
        "/search?q=o%27reilly+books",
        "/search?q=a%3Cb",
        "/blog/backup-strategies",
        "/products/environment-friendly",
        "/docs/javascript-guide",
        "/about",
    ];
    for i in 0..6000u64 {
        let t = T0 + r.below(7200);
        let ip = format!("198.51.100.{}", 10 + r.below(200));
        let page = r.pick(&pages);
        let status = if r.below(100) < 3 { 404 } else { 200 };
        acc.push_str(&access(&ip, t, "GET", page, status, r.pick(&BROWSERS)));
        if i % 50 == 0 {
            acc.push_str(&access(&ip, t, "GET", &format!("/old-link-{i}"), 404, r.pick(&BROWSERS)));
        }
    }
    for i in 0..1500u64 {
        let t = T0 + r.below(7200);
        let ip = format!("2001:db8:77:{:x}::1", r.below(40));
        let (method, target, status) = match i % 5 {
            0 => ("POST", "/api/orders", 201),
            1 => ("GET", "/api/me", if r.below(50) == 0 { 401 } else { 200 }),
            _ => ("GET", "/api/items?page=2", 200),
        };
        acc.push_str(&access(&ip, t, method, target, status, "okhttp/4.12.0"));
    }
    for t in (T0..T0 + 7200).step_by(10) {
        acc.push_str(&access("10.0.0.7", t, "GET", "/healthz", 200, "kube-probe/1.28"));
    }
    for t in (T0..T0 + 7200).step_by(60) {
        acc.push_str(&access("192.0.2.200", t, "HEAD", "/", 200, "UptimeRobot/2.0"));
    }
    for (n, bot) in ["Googlebot/2.1 (+http://www.google.com/bot.html)", "bingbot/2.0"].iter().enumerate() {
        let ip = format!("192.0.2.{}", 150 + n);
        acc.push_str(&access(&ip, T0 + 5, "GET", "/robots.txt", 200, bot));
        for k in 0..300u64 {
            let status = if k % 40 == 0 { 404 } else { 200 };
            acc.push_str(&access(&ip, T0 + 10 + k * 20, "GET", &format!("/products/{k}"), status, bot));
        }
    }
    for k in 0..400u64 {
        let t = T0 + k * 18;
        let user = format!("staff{}@example.com", k % 50);
        let typo = k % 37 == 0;
        acc.push_str(&access("203.0.113.10", t, "POST", "/login", if typo { 401 } else { 302 }, BROWSERS[0]));
        app.push_str(&backend("203.0.113.10", t, if typo { "auth.failed" } else { "auth.succeeded" }, &user));
    }
    // Someone mistypes three times, then gets in.
    for k in 0..3 {
        app.push_str(&backend("198.51.100.77", T0 + 3000 + k * 20, "auth.failed", "erin@example.com"));
        acc.push_str(&access("198.51.100.77", T0 + 3000 + k * 20, "POST", "/login", 401, BROWSERS[1]));
    }
    app.push_str(&backend("198.51.100.77", T0 + 3080, "auth.succeeded", "erin@example.com"));
    // A browser's first request to the basic-auth area, then success.
    err.push_str(&error_line(
        "198.51.100.60",
        T0 + 100,
        "no user/password was provided for basic authentication",
    ));
    (acc, app, err)
}

fn scan(files: &[(&str, String)]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = logwarden();
    cmd.args(["scan", "--output", "json"]);
    for (name, content) in files {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        cmd.arg(path);
    }
    serde_json::from_str(&ok(cmd.output().unwrap(), "scan")).unwrap()
}

#[test]
fn benign_traffic_proposes_nothing() {
    let (acc, app, err) = benign();
    let doc = scan(&[("access.log", acc), ("app.log", app), ("error.log", err)]);
    assert!(doc["stats"]["lines"].as_u64().unwrap() > 9000);
    assert_eq!(doc["stats"]["unparsed"], 0);
    assert_eq!(doc["blocklist"], serde_json::json!([]), "benign clients proposed: {:#}", doc["ips"][0]);
    assert_eq!(doc["lock_accounts"], serde_json::json!([]));
    assert_eq!(doc["spared"], serde_json::json!([]), "nothing even crosses a threshold");
}

/// Plants `attack` (access, app, error lines) into the benign corpus and scans it.
fn with_attack(attack: (&str, &str, &str)) -> Value {
    let (mut acc, mut app, mut err) = benign();
    acc.push_str(attack.0);
    app.push_str(attack.1);
    err.push_str(attack.2);
    scan(&[("access.log", acc), ("app.log", app), ("error.log", err)])
}

fn client<'a>(doc: &'a Value, ip: &str) -> &'a Value {
    doc["ips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["ip"] == ip)
        .unwrap_or_else(|| panic!("{ip} not in the report"))
}

fn assert_blocked_by(doc: &Value, ip: &str, needle: &str) {
    let c = client(doc, ip);
    assert_eq!(c["block"], true, "{ip} not blocked: {c:#}");
    let reasons = c["reasons"].to_string();
    assert!(reasons.contains(needle), "{ip}: no {needle:?} in {reasons}");
    assert_eq!(doc["blocklist"], serde_json::json!([ip]), "only the attacker is proposed");
    assert_eq!(doc["lock_accounts"], serde_json::json!([]), "a client attack locks no account");
}

fn repeat(n: u64, line: impl Fn(u64) -> String) -> String {
    (0..n).map(line).collect()
}

#[test]
fn each_attack_family_is_found_with_its_rule_and_the_right_action() {
    let ip = "203.0.113.66";
    let t = T0 + 4000;
    let ua = BROWSERS[2];
    let cases: Vec<(&str, String, String, String)> = vec![
        (
            "failed logins",
            String::new(),
            String::new(),
            repeat(8, |k| error_line(ip, t + k, &format!("user \"admin{k}\": password mismatch"))),
        ),
        (
            "nginx-limit-req",
            String::new(),
            String::new(),
            repeat(40, |k| error_line(ip, t + k, "limiting requests, excess: 10.000 by zone \"login\"")),
        ),
        (
            "nginx-access-forbidden",
            String::new(),
            String::new(),
            repeat(25, |k| error_line(ip, t + k, "access forbidden by rule")),
        ),
        (
            "http-malformed-request",
            repeat(12, |k| format!("{ip} - - [15/Jan/2024:10:06:{:02} +0000] \"\" 400 0 \"-\" \"-\"\n", k)),
            String::new(),
            String::new(),
        ),
        (
            "non-http-bytes",
            repeat(12, |k| {
                format!(
                    "{ip} - - [15/Jan/2024:10:06:{:02} +0000] \"\\x16\\x03\\x01\\x00\\xA5\" 400 157 \"-\" \"-\"\n",
                    k
                )
            }),
            String::new(),
            String::new(),
        ),
        (
            "vulnerability-probe",
            repeat(6, |k| {
                access(
                    ip,
                    t + k,
                    "GET",
                    ["/.env", "/.git/config", "/wp-login.php", "/xmlrpc.php", "/phpmyadmin/", "/backup.sql"]
                        [k as usize],
                    404,
                    ua,
                )
            }),
            String::new(),
            String::new(),
        ),
        (
            "path-traversal",
            repeat(3, |k| access(ip, t + k, "GET", "/download?file=%2e%2e%2f%2e%2e%2fetc%2fpasswd", 404, ua)),
            String::new(),
            String::new(),
        ),
        (
            "sql-injection",
            repeat(3, |k| access(ip, t + k, "GET", "/products?id=1%27%20OR%201=1--", 200, ua)),
            String::new(),
            String::new(),
        ),
        (
            "xss-attempt",
            repeat(3, |k| access(ip, t + k, "GET", "/search?q=%3Cscript%3Ealert(1)%3C/script%3E", 200, ua)),
            String::new(),
            String::new(),
        ),
        (
            "scanner-user-agent",
            repeat(3, |k| access(ip, t + k, "GET", "/", 200, "Mozilla/5.00 (Nikto/2.5.0) (Evasions:None)")),
            String::new(),
            String::new(),
        ),
        (
            "login-brute-force",
            repeat(12, |k| access(ip, t + k * 10, "POST", "/login", 401, "python-requests/2.31.0")),
            String::new(),
            String::new(),
        ),
        (
            "http-probing",
            repeat(12, |k| access(ip, t + k * 3, "GET", &format!("/guess-{k}"), 404, ua)),
            String::new(),
            String::new(),
        ),
        (
            "credential-stuffing",
            String::new(),
            repeat(12, |k| backend(ip, t + k * 5, "auth.failed", &format!("victim{k}@example.com"))),
            String::new(),
        ),
        (
            "failed logins",
            String::new(),
            repeat(6, |k| {
                let (h, m, s) = clock(t + k);
                format!("2024-01-15 {h:02}:{m:02}:{s:02},123 WARN auth failed for user bob from {ip}\n")
            }),
            String::new(),
        ),
    ];
    for (needle, acc, app, err) in &cases {
        let doc = with_attack((acc, app, err));
        assert_blocked_by(&doc, ip, needle);
    }
}

#[test]
fn distributed_brute_force_locks_the_account_and_blocks_no_client() {
    let app = repeat(12, |k| {
        backend(&format!("203.0.113.{}", 100 + k), T0 + 5000 + k * 20, "auth.failed", "admin")
    });
    let doc = with_attack(("", &app, ""));
    assert_eq!(doc["blocklist"], serde_json::json!([]));
    assert_eq!(doc["lock_accounts"], serde_json::json!(["admin"]));
    let admin = doc["accounts"].as_array().unwrap().iter().find(|a| a["user"] == "admin").unwrap();
    assert!(admin["reasons"].to_string().contains("distributed-brute-force"), "{admin:#}");
}

/// The prefilter may say "maybe", never "no": over every line of the fixtures, the hits
/// with the prefilter equal the hits of every rule evaluated on every line.
#[test]
fn the_prefilter_never_hides_a_match_in_the_fixtures() {
    use logwarden::detect::PrefilterMemo;
    use logwarden::parse::Parser;
    let set = RuleSet::builtin().unwrap();
    let mut parser = Parser::detecting(&[]);
    let mut memo = PrefilterMemo::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (mut checked, mut by_fields) = (0, 0);
    // Twice, so the second pass reads every field value's answer from the memo.
    for dir in ["fixtures/incident", "fixtures/formats", "fixtures/hostile", "fixtures/incident"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "log") {
                continue;
            }
            for line in std::fs::read(&path).unwrap().split(|&b| b == b'\n') {
                let u = logwarden::wrapper::unwrap(line);
                let Some((record, _)) = parser.parse(b"f", &u.payload) else { continue };
                let mut fast = Vec::new();
                set.detect(&u.payload, &record, &mut fast);
                let mut remembered = Vec::new();
                set.detect_memo(&u.payload, &record, &mut memo, &mut remembered);
                let mut naive = Vec::new();
                for id in 0..set.rules().len() as u16 {
                    set.detect_unfiltered(&u.payload, &record, id, &mut naive);
                }
                naive.retain(|h| set.rule(h.rule).aggregate.is_none());
                let shown = String::from_utf8_lossy(line);
                assert_eq!(fast, naive, "{}: {shown}", path.display());
                assert_eq!(remembered, naive, "{}: {shown}", path.display());
                checked += 1;
                by_fields += usize::from(record.kind == Some(logwarden::parse::RecordKind::Access));
            }
        }
    }
    assert!(checked > 8000 && by_fields > 6000, "{checked} lines, {by_fields} searched by field");
}

/// Where the request target of an access line (`"METHOD TARGET ...`) is.
fn request_target(line: &str) -> Option<std::ops::Range<usize>> {
    let request = line.find("] \"")? + 3;
    let method = line[request..].find(' ')?;
    if method == 0 || !line[request..request + method].bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let start = request + method + 1;
    Some(start..start + line[start..].find([' ', '"'])?)
}

/// nginx serves a target with any character percent-encoded as the decoded one, and the
/// rules read it decoded: for every access example of every rule, and every character of
/// its request target, the line with that character encoded (`%6c`, and `%256c` for
/// double encoding) gets the same hits with the prefilter as with every rule evaluated.
#[test]
fn a_percent_encoded_character_hides_no_match() {
    use logwarden::parse::{Parser, RecordKind};
    let set = RuleSet::builtin().unwrap();
    let mut parser = Parser::detecting(&[]);
    let (mut variants, mut hits) = (0, 0);
    for rule in set.rules() {
        for example in rule.examples.iter().flat_map(|e| e.lines()) {
            let Some(target) = request_target(example) else { continue };
            for at in target {
                let c = example.as_bytes()[at];
                if !c.is_ascii_alphanumeric() && !b"./-_".contains(&c) {
                    continue;
                }
                for encoded in [format!("%{c:02x}"), format!("%25{c:02x}")] {
                    let line = format!("{}{encoded}{}", &example[..at], &example[at + 1..]);
                    let Some((record, _)) = parser.parse(b"f", line.as_bytes()) else { continue };
                    if record.kind != Some(RecordKind::Access) {
                        continue;
                    }
                    let mut fast = Vec::new();
                    set.detect(line.as_bytes(), &record, &mut fast);
                    let mut naive = Vec::new();
                    for id in 0..set.rules().len() as u16 {
                        set.detect_unfiltered(line.as_bytes(), &record, id, &mut naive);
                    }
                    naive.retain(|h| set.rule(h.rule).aggregate.is_none());
                    assert_eq!(fast, naive, "rule {}: {line}", rule.id);
                    variants += 1;
                    hits += naive.len();
                }
            }
        }
    }
    assert!(variants > 1000 && hits > 1000, "{variants} encoded lines, {hits} hits");
}

#[test]
fn patterns_dirs_add_and_override_rules() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    std::fs::write(
        &log,
        [
            "203.0.113.90 - - [15/Jan/2024:10:00:00 +0000] \"GET /internal-admin/ HTTP/1.1\" 403 0 \"-\" \"curl/8.4.0\"\n",
            "203.0.113.90 - - [15/Jan/2024:10:00:05 +0000] \"GET /internal-admin/users HTTP/1.1\" 403 0 \"-\" \"curl/8.4.0\"\n",
            "192.0.2.66 - - [15/Jan/2024:10:06:40 +0000] \"GET / HTTP/1.1\" 200 153 \"-\" \"sqlmap/1.7.2#stable\"\n",
        ]
        .concat(),
    )
    .unwrap();
    let plain: Value = serde_json::from_str(&ok(
        logwarden().args(["scan", "--output", "json"]).arg(&log).output().unwrap(),
        "scan",
    ))
    .unwrap();
    assert_eq!(plain["blocklist"], serde_json::json!([]));
    let extra: Value = serde_json::from_str(&ok(
        logwarden()
            .args(["scan", "--output", "json", "--patterns", "tests/patterns-extra"])
            .arg(&log)
            .output()
            .unwrap(),
        "scan --patterns",
    ))
    .unwrap();
    let mut blocked: Vec<&str> =
        extra["blocklist"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    blocked.sort();
    assert_eq!(blocked, ["192.0.2.66", "203.0.113.90"]);
    let listed = ok(
        logwarden().args(["patterns", "list", "--patterns", "tests/patterns-extra"]).output().unwrap(),
        "list",
    );
    assert!(listed.contains("internal-admin-probe"));
    assert_eq!(listed.matches("scanner-user-agent").count(), 1, "the override replaces the built-in rule");
    let tested = ok(
        logwarden().args(["patterns", "test", "tests/patterns-extra"]).output().unwrap(),
        "patterns test DIR",
    );
    assert!(tested.contains("4 passed, 0 failed"), "{tested}");
}

#[test]
fn an_invalid_rule_is_rejected_with_its_file_and_line() {
    let out = logwarden().args(["patterns", "test", "tests/patterns-broken"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.toml:8") && err.contains("does not compile"), "{err}");
}
