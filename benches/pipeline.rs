//! Throughput of each pipeline stage on a realistic nginx `combined` corpus (the bundled
//! incident's access log, repeated to about 8 MB). `cargo bench --bench pipeline`; under
//! `cargo test --all-targets` each benchmark runs once, as a smoke test.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use logwarden::client::ClientPolicy;
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
        bytes_read: Default::default(),
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
        b.iter(|| {
            data.split(|&x| x == b'\n')
                .filter_map(|l| access::parse_with_format(&format, l))
                .count()
        })
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

criterion_group!(benches, stages);
criterion_main!(benches);
