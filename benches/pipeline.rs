//! Throughput of each pipeline stage on a realistic nginx `combined` corpus (the bundled
//! incident's access log, repeated to about 8 MB). `cargo bench --bench pipeline`; under
//! `cargo test --all-targets` each benchmark runs once, as a smoke test.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

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
    ScanConfig {
        framing: FramingConfig::default(),
        threads,
        parser: Parser::detecting(&[]),
        policy: Arc::new(ClientPolicy::default()),
        rules: Arc::new(RuleSet::builtin().unwrap()),
        explain: false,
        bytes_read: Default::default(),
        limits: Default::default(),
        summary: Default::default(),
    }
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

/// Aggregation alone: parsed and detected records into per-client and per-account evidence.
fn aggregation(c: &mut Criterion) {
    let data = corpus();
    let set = RuleSet::builtin().unwrap();
    let policy = ClientPolicy::default();
    let records: Vec<_> = parsed_lines(&data)
        .into_iter()
        .map(|(l, r)| {
            let mut hits = Vec::new();
            set.detect(l, &r, &mut hits);
            (l, r, hits)
        })
        .collect();
    let mut g = c.benchmark_group("aggregation");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("observe", |b| {
        b.iter(|| {
            let mut agg = Aggregator::default();
            for (n, (raw, record, hits)) in records.iter().enumerate() {
                let at = LineRef { source: "b", line: n as u64 + 1 };
                let seen = Seen { source: "b", at, format: "combined", raw, record, hits };
                agg.observe(&seen, &set, &policy);
            }
            black_box(agg.clients.len())
        })
    });
    g.finish();
}

criterion_group!(benches, stages, rules, formats, aggregation);
criterion_main!(benches);
