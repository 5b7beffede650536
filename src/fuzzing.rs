//! Fuzz harnesses, shared by the cargo-fuzz targets under `fuzz/` and by the ordinary test
//! suite, which replays the checked-in corpus (`fuzz/corpus/<target>/`) through the same
//! functions. Each harness feeds arbitrary bytes to one stage and checks what must hold for
//! any input, beyond not panicking. Not part of the stable API.

use std::io::Cursor;
use std::sync::{Arc, OnceLock};

use crate::client::{ClientKey, ClientPolicy, SparePolicy};
use crate::decide::{Thresholds, decide};
use crate::detect::RuleSet;
use crate::framing::{BufferPool, FramingConfig, frame_source};
use crate::parse::logformat::{Escape, LogFormat, from_nginx_conf};
use crate::pipeline::{ScanConfig, Worker};
use crate::remedy::blocklist::{Collapse, CurrentConfigMap, guarded_patch, merge, merge_patch};

/// A harness: takes any bytes, panics when an invariant breaks.
pub type Harness = fn(&[u8]);

/// The fuzz targets, by name.
pub const TARGETS: [(&str, Harness); 6] = [
    ("scan", scan),
    ("log_format", log_format),
    ("configmap", configmap),
    ("rules", rules),
    ("sql_literal", sql_literal),
    ("loki_response", loki_response),
];

fn config() -> &'static ScanConfig {
    static CONFIG: OnceLock<ScanConfig> = OnceLock::new();
    CONFIG.get_or_init(|| ScanConfig {
        framing: FramingConfig { chunk_bytes: 4096, max_line_bytes: 2048, eager: false },
        policy: Arc::new(ClientPolicy {
            trusted_proxies: crate::client::Ranges::new(["10.0.0.0/8".parse().unwrap()]),
            ipv6_prefix: 64,
        }),
        limits: crate::aggregate::bounded::Limits { clients: 8, light: 8, accounts: 8, ..Default::default() },
        ..ScanConfig::new(Arc::new(RuleSet::builtin().expect("built-in rules compile")))
    })
}

/// Frames, unwraps, parses, detects and aggregates `data` (with tiny memory limits so the
/// folding paths run), decides, and renders the text and JSON reports: every line is
/// accounted for, and the JSON document reads back.
pub fn scan(data: &[u8]) {
    let config = config();
    let mut worker = Worker::new(config);
    // Request times kept (in a table of 4 KiB, so it drops series) or not, by the first byte.
    let keep_times = data.first().is_some_and(|b| b & 1 == 1);
    worker.agg.request_times = keep_times.then(|| crate::aggregate::requests::RequestTimes::new(4096));
    let pool = BufferPool::new();
    // Every frame stands for at least one input byte (one more for a read error), so this
    // channel never blocks; sized to the input, not preallocated for 65,536 frames.
    let (tx, rx) = std::sync::mpsc::sync_channel(data.len() + 2);
    let _ = frame_source("fuzz".into(), Cursor::new(data), config.framing, &pool, &tx);
    drop(tx);
    for frame in rx {
        worker.process(frame, &pool);
    }
    let stats = &worker.agg.stats;
    assert_eq!(stats.lines, stats.parsed + stats.unparsed, "every line is parsed or unparsed");
    let spare = SparePolicy::default();
    let thresholds = Thresholds {
        window: 60,
        client_4xx: 2,
        client_auth_failures: 2,
        account_auth_failures: 2,
        client_request_rate: Some(30),
    };
    let report = decide(worker.agg, &thresholds, &spare, &config.rules);
    let mut text = Vec::new();
    crate::report::terminal::write_text(
        &mut text,
        &report,
        crate::report::terminal::TextOptions { color: false, top: 5 },
    )
    .expect("writing to memory");
    assert!(!text.contains(&0x1b), "an escape byte reached the terminal text");
    let mut json = Vec::new();
    crate::report::write_json(&mut json, &report).expect("writing to memory");
    let back: crate::decide::ScanReport = serde_json::from_slice(&json).expect("the document reads back");
    assert_eq!(back.blocklist, report.blocklist);
    bundle_texts(&report);
}

/// The bundle's report.md and SQL for `report`: no log line may add an HTML tag to the
/// Markdown, and the SQL scripts hold no control character but newlines.
fn bundle_texts(report: &crate::decide::ScanReport) {
    let scripts = crate::remedy::sql::lock_scripts(
        &Default::default(),
        "lw-fuzz",
        &report.lock_accounts,
        report.account_case,
    )
    .expect("default target");
    for script in [&scripts.lock, &scripts.unlock] {
        assert!(!script.chars().any(|c| c.is_control() && c != '\n'), "a control character in the SQL");
    }
    let plan = crate::remedy::BundlePlan {
        bundle_id: "lw-fuzz".into(),
        added: report.blocklist.clone(),
        already_blocked: Vec::new(),
        lock_names: scripts.locked.len(),
        locked: scripts.locked,
        refused: scripts.refused,
        malformed: Vec::new(),
        blocklist_note: "fuzz".into(),
        files: Vec::new(),
    };
    let md = crate::remedy::markdown::render(report, &plan);
    // Inside a fence (longer than any backtick run in it) text is shown as is; outside,
    // a tag from a log line would be rendered.
    assert!(
        !outside_fences(&md).any(|line| line.contains("<script") || line.contains("<img")),
        "log text became HTML in report.md"
    );
}

/// The lines of `md` that are not inside a fenced code block.
fn outside_fences(md: &str) -> impl Iterator<Item = &str> {
    let mut fence: Option<usize> = None;
    md.lines().filter(move |line| {
        let ticks = line.chars().take_while(|c| *c == '`').count();
        match fence {
            Some(n) if ticks >= n && line.trim_end_matches('`').is_empty() => {
                fence = None;
                false
            }
            Some(_) => false,
            None if ticks >= 3 => {
                fence = Some(ticks);
                false
            }
            None => true,
        }
    })
}

/// Compiles the first line as a `log_format` (escape chosen by the first byte) and applies
/// it to the rest; reads the whole input as an nginx configuration too.
pub fn log_format(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (definition, rest) = text.split_once('\n').unwrap_or((&text, ""));
    let escape = match data.first().map(|b| b % 3) {
        Some(0) => Escape::Default,
        Some(1) => Escape::Json,
        _ => Escape::None,
    };
    if let Ok(format) = LogFormat::compile("fuzz", definition, escape) {
        for line in rest.lines() {
            let _ = format.captures(line.as_bytes());
        }
    }
    let _ = from_nginx_conf(&text, "main");
}

/// Reads the input as a live ConfigMap and merges a proposal into it: the patch is JSON
/// whose value, read back, is exactly the merged list, nothing broader than the collapse
/// bounds is ever added, and the list never has more entries than the live value and the
/// proposals together (collapsing once split merged broad entries into millions).
pub fn configmap(data: &[u8]) {
    let Ok(current) = CurrentConfigMap::parse(&String::from_utf8_lossy(data), "blocked-ips") else { return };
    let proposed =
        [ClientKey("203.0.113.7/32".parse().unwrap()), ClientKey("2001:db8::/64".parse().unwrap())];
    let collapse = Collapse { enabled: data.len().is_multiple_of(2), max_v4: 24, max_v6: 48 };
    let merged = merge(current.value.as_deref(), &proposed, collapse);
    let patch = merge_patch("blocked-ips", Some(&merged.value));
    let text = serde_json::to_string(&patch).expect("a patch serialises");
    let back: serde_json::Value = serde_json::from_str(&text).expect("the patch is JSON");
    assert_eq!(back["data"]["blocked-ips"].as_str(), Some(merged.value.as_str()));
    let _ = guarded_patch("blocked-ips", Some(&current), &merged.value);
    for added in &merged.added {
        let net: ipnet::IpNet =
            added.parse().or_else(|_| added.parse::<std::net::IpAddr>().map(Into::into)).unwrap();
        assert!(net.prefix_len() >= if net.addr().is_ipv4() { 24 } else { 48 }, "{added} is too broad");
    }
    for malformed in &merged.malformed {
        assert!(merged.value.contains(&malformed.entry), "a malformed live entry was rewritten");
    }
    let count = |v: &str| v.split(',').filter(|e| !e.trim().is_empty()).count();
    let live = current.value.as_deref().map_or(0, count);
    assert!(count(&merged.value) <= live + proposed.len(), "the merged list grew past its inputs");
}

/// Compiles the input as a rule file; a file that compiles has rules with ids.
pub fn rules(data: &[u8]) {
    if let Ok(rules) = crate::detect::rules::compile_file("fuzz.toml", &String::from_utf8_lossy(data)) {
        assert!(rules.iter().all(|r| !r.id.is_empty()));
    }
}

/// Quotes the input as an SQL literal: reading the literal back the way PostgreSQL does
/// (a plain literal with standard_conforming_strings on, or an escape string) gives the
/// input, so nothing can break out; and no control character is left in it.
pub fn sql_literal(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(quoted) = crate::remedy::sql::quote_literal(&text) else { return };
    assert!(!quoted.chars().any(char::is_control), "a control character in the literal");
    let (escape_string, rest) = match quoted.strip_prefix("E'") {
        Some(rest) => (true, rest),
        None => (false, quoted.strip_prefix('\'').expect("quoted")),
    };
    let inner = rest.strip_suffix('\'').expect("quoted");
    let mut back = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => assert_eq!(chars.next(), Some('\''), "a lone quote would end the literal"),
            '\\' if escape_string => match chars.next() {
                Some('\\') => {}
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).collect();
                    let code = u32::from_str_radix(&hex, 16).expect("four hex digits after \\u");
                    back.push(char::from_u32(code).expect("a character"));
                    continue;
                }
                other => panic!("an escape PostgreSQL reads differently: \\{other:?}"),
            },
            _ => {}
        }
        back.push(c);
    }
    assert_eq!(back, text);
}

/// Reads the input as a Loki answer.
pub fn loki_response(data: &[u8]) {
    let _ = crate::loki::response::decode_streams(data);
    let _ = crate::loki::response::decode_matrix(data);
}
