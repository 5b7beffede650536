//! Throughput of each pipeline stage on a realistic nginx `combined` corpus (the bundled
//! incident's access log, repeated to about 8 MB). `cargo bench --bench pipeline`; under
//! `cargo test --all-targets` each benchmark runs once, as a smoke test.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use logwarden::aggregate::bounded::Limits;
use logwarden::aggregate::{Aggregator, LineRef, Seen};
use logwarden::client::ClientPolicy;
use logwarden::detect::RuleSet;
use logwarden::framing::{FramingConfig, frame_all};
use logwarden::parse::logformat::{COMBINED, Escape, LogFormat};
use logwarden::parse::{Parser, access};
use logwarden::pipeline::{ScanConfig, scan};
use logwarden::source::Input;

fn corpus() -> Vec<u8> {
    let one = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/incident/nginx-access.log"))
        .unwrap();
    one.repeat((8 << 20) / one.len() + 1)
}

fn config(threads: usize) -> ScanConfig {
    ScanConfig { threads, ..ScanConfig::new(Arc::new(RuleSet::builtin().unwrap())) }
}

fn stages(c: &mut Criterion) {
    let data = corpus();
    let mut g = c.benchmark_group("combined");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("framing", |b| {
        b.iter(|| black_box(frame_all("b", &data[..], FramingConfig::default()).len()))
    });
    let format = Arc::new(LogFormat::compile("combined", COMBINED, Escape::Default).unwrap());
    g.bench_function("parse", |b| {
        b.iter(|| data.split(|&x| x == b'\n').filter_map(|l| access::parse_with_format(&format, l)).count())
    });
    for threads in [1, 2] {
        g.bench_function(format!("scan/{threads}-threads"), |b| {
            b.iter(|| {
                let input = Input::from_reader("b", std::io::Cursor::new(data.clone()));
                black_box(scan(vec![input], &config(threads)).unwrap().stats.parsed)
            })
        });
    }
    g.finish();
}

/// Every line of `data` that parses, with its record.
fn parsed_lines(data: &[u8]) -> Vec<(&[u8], logwarden::parse::Record<'_>)> {
    let mut parser = Parser::detecting(&[]);
    let lines = data.split(|&b| b == b'\n').filter(|l| !l.is_empty());
    lines.filter_map(|l| parser.parse(b"b", l).map(|(r, _)| (l, r))).collect()
}

/// The full rule set through the prefilter, against evaluating every rule (its regexes
/// and conditions) on every line.
fn rules(c: &mut Criterion) {
    let data = corpus();
    let set = RuleSet::builtin().unwrap();
    let records = parsed_lines(&data);
    let mut g = c.benchmark_group("rules");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("prefiltered", |b| {
        b.iter(|| {
            let mut hits = Vec::new();
            for (line, record) in &records {
                set.detect(line, record, &mut hits);
            }
            black_box(hits.len())
        })
    });
    // As a scan worker does: field values' answers remembered across lines.
    let mut memo = logwarden::detect::PrefilterMemo::new();
    g.bench_function("prefiltered-remembered", |b| {
        b.iter(|| {
            let mut hits = Vec::new();
            for (line, record) in &records {
                set.detect_memo(line, record, &mut memo, &mut hits);
            }
            black_box(hits.len())
        })
    });
    let regexes = set.regexes();
    g.bench_function("every-regex-every-line", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for (line, _) in &records {
                let text = String::from_utf8_lossy(line);
                n += regexes.iter().filter(|re| re.is_match(&text)).count();
            }
            black_box(n)
        })
    });
    g.bench_function("every-rule-every-line", |b| {
        b.iter(|| {
            let mut hits = Vec::new();
            for (line, record) in &records {
                for id in 0..set.rules().len() as u16 {
                    set.detect_unfiltered(line, record, id, &mut hits);
                }
            }
            black_box(hits.len())
        })
    });
    g.finish();
}

/// The whole scan on one thread for each format and wrapper, from the bundled fixtures
/// repeated to about 4 MB: the same order of speed is expected of every shape.
fn formats(c: &mut Criterion) {
    let mut g = c.benchmark_group("formats");
    g.sample_size(10);
    for name in [
        "combined",
        "access-json",
        "ingress-nginx",
        "nginx-error",
        "backend-json",
        "logfmt",
        "plain",
        "kubectl-prefix-timestamps",
        "cri-containerd",
        "docker-json",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/formats/{name}.log"));
        let one = std::fs::read(path).unwrap();
        let data = one.repeat((4 << 20) / one.len() + 1);
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let input = Input::from_reader("b", std::io::Cursor::new(data.clone()));
                black_box(scan(vec![input], &config(1)).unwrap().stats.parsed)
            })
        });
    }
    g.finish();
}

/// `n` generated lines, the `i`-th written by `line` from `i`, its last three address
/// bytes and its minute and second within the hour.
fn generated(n: u32, line: impl Fn(u32, [u8; 3], (u32, u32)) -> String) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let [_, a, b, c] = i.to_be_bytes();
        out.extend_from_slice(line(i, [a, b, c], (i / 60 % 60, i % 60)).as_bytes());
    }
    out
}

/// One address probing distinct paths, every answer a 404: the shape of a directory
/// scanner, whose per-client lists and distinct-path windows fill up and stay full.
fn scanner_corpus() -> Vec<u8> {
    generated(100_000, |i, _, (min, sec)| {
        format!(
            "203.0.113.9 - - [15/Jan/2024:09:{min:02}:{sec:02} +0000] \"GET /probe/{i}.php HTTP/1.1\" 404 153 \"-\" \"scanner/1.0\"\n"
        )
    })
}

/// A password spray: 100,000 addresses, one failed login each, all on one account (the
/// application's JSON lines). Every address is a new client with evidence.
fn password_spray_corpus() -> Vec<u8> {
    generated(100_000, |_, [a, b, c], (min, sec)| {
        format!(
            "{{\"ts\":\"2024-01-15T10:{min:02}:{sec:02}Z\",\"event\":\"auth.failed\",\"user\":\"admin\",\"client_ip\":\"198.{a}.{b}.{c}\"}}\n"
        )
    })
}

/// Credential stuffing: 200,000 failed logins from one address, each on a new name,
/// about twenty times what the account table holds under the default `--max-memory`:
/// every line makes an account record, and the table is folded again and again.
fn credential_stuffing_corpus() -> Vec<u8> {
    generated(200_000, |i, _, (min, sec)| {
        format!(
            "{{\"ts\":\"2024-01-15T10:{min:02}:{sec:02}Z\",\"event\":\"auth.failed\",\"user\":\"u{i:07}\",\"client_ip\":\"203.0.113.9\"}}\n"
        )
    })
}

/// An address spray: 400,000 lines, each a 404 to a new address, about five times what
/// the compact table holds under the default `--max-memory`, so the table is folded
/// again and again as in a real one.
fn address_spray_corpus() -> Vec<u8> {
    generated(400_000, |i, [a, b, c], (min, sec)| {
        format!(
            "100.{a}.{b}.{c} - - [15/Jan/2024:09:{min:02}:{sec:02} +0000] \"GET /p{} HTTP/1.1\" 404 0 \"-\" \"spray\"\n",
            i % 7
        )
    })
}

/// Aggregation alone: parsed and detected records into per-client and per-account
/// evidence, for the incident corpus, one scanning client and a password spray (no
/// bound), and an address spray and credential stuffing under the default memory bound
/// (folding included).
fn aggregation(c: &mut Criterion) {
    let set = RuleSet::builtin().unwrap();
    let policy = ClientPolicy::default();
    let mut g = c.benchmark_group("aggregation");
    g.sample_size(10);
    let unbounded = Limits::UNBOUNDED;
    let bounded = Limits::for_memory(200 << 20);
    let cases = [
        ("observe", corpus(), unbounded),
        ("one-scanner", scanner_corpus(), unbounded),
        ("password-spray", password_spray_corpus(), unbounded),
        ("address-spray-bounded", address_spray_corpus(), bounded),
        ("credential-stuffing-bounded", credential_stuffing_corpus(), bounded),
    ];
    for (name, data, limits) in cases {
        let records = detected_lines(&data, &set);
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(name, |b| b.iter(|| black_box(observe_all(&records, &set, &policy, limits))));
    }
    g.finish();
}

type Detected<'a> = (&'a [u8], logwarden::parse::Record<'a>, Vec<logwarden::detect::Hit>);

fn detected_lines<'a>(data: &'a [u8], set: &RuleSet) -> Vec<Detected<'a>> {
    let detect = |(l, r)| {
        let mut hits = Vec::new();
        set.detect(l, &r, &mut hits);
        (l, r, hits)
    };
    parsed_lines(data).into_iter().map(detect).collect()
}

/// Feeds every record to a fresh aggregator within `limits`; returns how many clients it
/// holds.
fn observe_all(records: &[Detected<'_>], set: &RuleSet, policy: &ClientPolicy, limits: Limits) -> usize {
    let mut agg = Aggregator::default();
    agg.limits = limits;
    let source: std::sync::Arc<str> = "b".into();
    for (n, (raw, record, hits)) in records.iter().enumerate() {
        let at = LineRef { source: &source, line: n as u64 + 1 };
        let seen = Seen { source: "b", at, format: "combined", raw, record, hits };
        agg.observe(&seen, set, policy);
    }
    agg.settle();
    agg.clients.len()
}

criterion_group!(benches, stages, rules, formats, aggregation);
criterion_main!(benches);
