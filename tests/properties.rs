//! Properties that must hold for any input and any way of reading it: the aggregates do
//! not depend on how the input is cut into chunks, on read sizes, on the number of
//! threads, or on whether it came from a file or stdin; and no byte sequence panics.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::Value;

use logwarden::client::SparePolicy;
use logwarden::decide::{Thresholds, decide};
use logwarden::framing::FramingConfig;
use logwarden::pipeline::{ScanConfig, scan};
use logwarden::source::Input;

fn fixture_corpus() -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut all = Vec::new();
    for dir in ["fixtures/incident", "fixtures/formats"] {
        let mut files: Vec<_> =
            std::fs::read_dir(root.join(dir)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "log")) {
            all.extend(std::fs::read(f).unwrap());
        }
    }
    all
}

/// A reader that hands out its bytes in pieces of the given sizes, as pipes do.
struct Choppy {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    turn: usize,
}

impl Read for Choppy {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = self.sizes[self.turn % self.sizes.len()].max(1);
        self.turn += 1;
        let n = want.min(buf.len()).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn config(chunk_bytes: usize, threads: usize) -> ScanConfig {
    ScanConfig {
        framing: FramingConfig { chunk_bytes, ..FramingConfig::default() },
        threads,
        ..ScanConfig::new(Arc::new(logwarden::detect::RuleSet::builtin().unwrap()))
    }
}

/// The scan document without the parts that are approximate by design: per-client top-k
/// lists may differ once a client has more distinct values than they hold.
fn document(input: Input, cfg: &ScanConfig) -> Value {
    let agg = scan(vec![input], cfg).unwrap();
    // With a request rate, so that it too is held to the same answer where request times
    // are kept: 3 a minute over the busiest ten minutes proposes clients of this corpus.
    let thresholds = Thresholds { client_request_rate: Some(3), ..Thresholds::default() };
    let report = decide(agg, &thresholds, &SparePolicy::default(), &cfg.rules);
    let doc = serde_json::to_value(&report).unwrap();
    without(doc, &["accounts", "top_paths", "top_user_agents"])
}

/// `doc` without the per-client fields `keys`.
fn without(mut doc: Value, keys: &[&str]) -> Value {
    for ip in doc["ips"].as_array_mut().unwrap() {
        for key in keys {
            ip.as_object_mut().unwrap().remove(*key);
        }
    }
    doc
}

/// `config` with every client's request times kept (`--max-request-rate`) or not.
fn timed(mut config: ScanConfig, request_times: bool) -> ScanConfig {
    config.request_times = request_times;
    config
}

/// The document of one thread reading the corpus whole, with request times or without.
fn baseline(request_times: bool) -> &'static Value {
    static BASE: [std::sync::OnceLock<Value>; 2] = [std::sync::OnceLock::new(), std::sync::OnceLock::new()];
    BASE[usize::from(request_times)].get_or_init(|| {
        let cfg = timed(config(1 << 20, 1), request_times);
        document(Input::from_reader("corpus", std::io::Cursor::new(fixture_corpus())), &cfg)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn chunking_reads_and_threads_do_not_change_the_answer(
        chunk in 16usize..20_000,
        sizes in prop::collection::vec(1usize..9000, 1..8),
        threads in 1usize..4,
        request_times in any::<bool>(),
    ) {
        let reader = Choppy { data: fixture_corpus(), pos: 0, sizes, turn: 0 };
        let doc = document(Input::from_reader("corpus", reader), &timed(config(chunk, threads), request_times));
        // On more than one thread, samples are left out: they come from a client's full
        // record, which starts with the piece of evidence after its first four 4xx
        // answers, and which line that is for the worker that builds the record depends
        // on how the chunks were shared out. Every count, window and decision is exact.
        let order_dependent: &[&str] = if threads > 1 { &["samples"] } else { &[] };
        let base = baseline(request_times).clone();
        let (doc, base) = (without(doc, order_dependent), without(base, order_dependent));
        prop_assert!(doc == base, "document differs for chunk {chunk}, threads {threads}, times {request_times}");
    }

    #[test]
    fn any_bytes_are_counted_and_never_panic(data in prop::collection::vec(any::<u8>(), 0..4000), chunk in 16usize..600) {
        let agg = scan(vec![Input::from_reader("fuzz", std::io::Cursor::new(data))], &config(chunk, 2)).unwrap();
        let s = &agg.stats;
        prop_assert_eq!(s.lines, s.parsed + s.unparsed);
    }

    #[test]
    fn log_shaped_garbage_never_panics(
        lines in prop::collection::vec(log_shaped_line(), 0..60),
        request_times in any::<bool>(),
    ) {
        let data = lines.join("\n").into_bytes();
        let cfg = timed(config(64, 2), request_times);
        let agg = scan(vec![Input::from_reader("fuzz", std::io::Cursor::new(data))], &cfg).unwrap();
        prop_assert_eq!(agg.stats.lines, agg.stats.parsed + agg.stats.unparsed);
    }
}

/// Real fixture lines with random damage: cut, spliced or sprinkled with hostile bytes.
fn log_shaped_line() -> impl Strategy<Value = String> {
    let corpus = String::from_utf8_lossy(&fixture_corpus()).into_owned();
    let lines: Vec<String> = corpus.lines().step_by(37).map(str::to_string).collect();
    (
        prop::sample::select(lines),
        0usize..400,
        prop::sample::select(vec![
            "",
            "\"",
            "\\x22",
            "\u{1b}[2J",
            "\0",
            "\r",
            "[pod/",
            "{\"log\":\"",
            " stdout P ",
            ", client: 6.6.6.6, server: x",
        ]),
    )
        .prop_map(|(line, cut, junk)| {
            let cut = line
                .char_indices()
                .map(|(i, _)| i)
                .find(|i| *i >= cut % (line.len() + 1))
                .unwrap_or(line.len());
            format!("{}{}{}", &line[..cut], junk, &line[cut..])
        })
}

#[test]
fn a_gzip_cut_short_is_reported_and_what_came_before_is_scanned() {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&fixture_corpus()).unwrap();
    let gz = enc.finish().unwrap();
    let cut = gz[..gz.len() / 2].to_vec();
    let agg =
        scan(vec![Input::from_reader("cut.gz", std::io::Cursor::new(cut))], &config(1 << 16, 2)).unwrap();
    assert_eq!(agg.stats.read_errors.len(), 1, "{:?}", agg.stats.read_errors);
    assert_eq!(agg.stats.read_errors[0].source, "cut.gz");
    assert!(agg.stats.lines > 100, "lines before the cut are scanned");
}
