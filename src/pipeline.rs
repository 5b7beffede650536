//! The pipeline: sources → framing → unwrapping → parsing → detection → aggregation.
//! One reader thread frames every input into pooled chunks of whole lines (and, for
//! gzip, decompresses: a stage of its own, so parsing never waits behind inflate);
//! workers parse chunks in parallel, each into its own [`Aggregator`], merged at the end.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use rayon::prelude::*;
use serde::Serialize;

use crate::aggregate::requests::{RequestTimes, SharedRequestTimes};
use crate::aggregate::shared::SharedLights;
use crate::aggregate::{Aggregator, LineRef, ReadError};
use crate::aggregate::{Seen, UnparsedReason};
use crate::client::ClientPolicy;
use crate::detect::{Hit, RuleSet};
use crate::error::{Error, Result};
use crate::framing::{BufferPool, Chunk, Frame, FramingConfig, frame_source};
use crate::parse::{Parser, Record};
use crate::source::{Counting, Input};
use crate::wrapper::{PartialJoiner, unwrap};

/// How a scan reads and interprets its input; built once from the command line.
pub struct ScanConfig {
    pub framing: FramingConfig,
    /// Parsing threads.
    pub threads: usize,
    /// The format parser every worker clones.
    pub parser: Parser,
    pub policy: Arc<ClientPolicy>,
    /// The detection rules.
    pub rules: Arc<RuleSet>,
    /// `match --explain`: include the fields rules saw.
    pub explain: bool,
    /// Bytes read so far, for a progress display.
    pub bytes_read: Arc<AtomicU64>,
    /// Clients and accounts kept exactly, for all workers together.
    pub limits: crate::aggregate::bounded::Limits,
    /// The memory summary's sketch, shared by the workers.
    pub summary: crate::aggregate::bounded::Summary,
    /// Only lines of these event times are counted (`--since`, `--from`, `--to` on files
    /// and stdin); the others are read, counted as outside it, and go no further.
    pub time_range: Option<crate::time::TimeRange>,
    /// How account names are told apart (`--account-case`).
    pub account_case: crate::aggregate::AccountCase,
    /// Keep every client's request times (`--max-request-rate`; see
    /// [`Aggregator::request_times`]), within `limits.request_bytes`.
    pub request_times: bool,
}

impl ScanConfig {
    /// A scan with `rules` and otherwise the command line's defaults: one thread, every
    /// format detected, no trusted proxy, the default memory bound, no time range, no
    /// request times. Callers set what differs: `ScanConfig { threads: 2, ..ScanConfig::new(rules) }`.
    pub fn new(rules: Arc<RuleSet>) -> ScanConfig {
        ScanConfig {
            framing: FramingConfig::default(),
            threads: 1,
            parser: Parser::detecting(&[]),
            policy: Arc::new(ClientPolicy::default()),
            rules,
            explain: false,
            bytes_read: Default::default(),
            limits: Default::default(),
            summary: Default::default(),
            time_range: None,
            account_case: Default::default(),
            request_times: false,
        }
    }
}

/// A line that matched a detection, as `logwarden match` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct MatchLine {
    pub source: String,
    /// 1-based line number within its source.
    pub line: u64,
    pub rule: String,
    pub ip: Option<String>,
    pub user: Option<String>,
    /// With `--explain`: the rule's description and the fields it was judged on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explain: Option<Explain>,
}

/// What a rule saw of a line.
#[derive(Clone, Debug, Serialize)]
pub struct Explain {
    pub description: String,
    pub kind: Option<crate::parse::RecordKind>,
    pub time: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub status: Option<u16>,
    pub user_agent: Option<String>,
    pub event: Option<String>,
    pub message: Option<String>,
    /// What the rule's regex captured, when it has one.
    pub captured_user: Option<String>,
    pub captured_ip: Option<String>,
}

impl MatchLine {
    fn new(
        source: &str,
        line: u64,
        record: &Record<'_>,
        hit: &Hit,
        rules: &RuleSet,
        policy: &ClientPolicy,
        explain: bool,
    ) -> MatchLine {
        let rule = rules.rule(hit.rule);
        let ip = record.remote_addr.or(hit.ip).map(|ip| policy.resolve(ip, record.forwarded_for.as_deref()));
        let owned = |v: &Option<std::borrow::Cow<'_, str>>| v.as_deref().map(str::to_string);
        MatchLine {
            source: source.to_string(),
            line,
            rule: rule.id.clone(),
            ip: ip.map(|ip| ip.to_string()),
            user: owned(&record.user).or_else(|| hit.user.clone()),
            explain: explain.then(|| Explain {
                description: rule.description.clone(),
                kind: record.kind,
                time: record.time.map(crate::time::format_rfc3339),
                method: owned(&record.method),
                path: owned(&record.path),
                status: record.status,
                user_agent: owned(&record.user_agent),
                event: owned(&record.event),
                message: owned(&record.message),
                captured_user: hit.user.clone(),
                captured_ip: hit.ip.map(|ip| ip.to_string()),
            }),
        }
    }
}

/// Parses and counts chunks; one per parsing thread.
pub struct Worker {
    parser: Parser,
    policy: Arc<ClientPolicy>,
    joiner: PartialJoiner,
    max_line_bytes: usize,
    /// What has been learned so far.
    pub agg: Aggregator,
    /// Collected matches, when the worker serves `logwarden match`.
    pub matches: Option<Vec<MatchLine>>,
    rules: Arc<RuleSet>,
    explain: bool,
    time_range: Option<crate::time::TimeRange>,
    /// Reused for every line's rule hits.
    hits: Vec<Hit>,
    prefilter_memo: crate::detect::PrefilterMemo,
}

impl Worker {
    /// A worker with a fresh format cache.
    pub fn new(config: &ScanConfig) -> Worker {
        let limits = config.limits.share(config.threads);
        Worker {
            parser: config.parser.fresh(),
            policy: config.policy.clone(),
            joiner: PartialJoiner::default(),
            max_line_bytes: config.framing.max_line_bytes,
            agg: Aggregator {
                limits,
                summary: config.summary.sharing(),
                account_case: config.account_case,
                request_times: config.request_times.then(|| RequestTimes::new(limits.request_bytes)),
                ..Aggregator::default()
            },
            matches: None,
            rules: config.rules.clone(),
            explain: config.explain,
            time_range: config.time_range,
            hits: Vec::new(),
            prefilter_memo: crate::detect::PrefilterMemo::new(),
        }
    }

    /// Handles one frame, returning its buffer to `pool`.
    pub fn process(&mut self, frame: Frame, pool: &BufferPool) {
        match frame {
            Frame::Lines(chunk) => {
                // The reader's own count (which also covers skipped oversized lines)
                // replaces this when a scan reaches the end of its input.
                self.agg.stats.bytes += chunk.data.len() as u64;
                self.process_chunk(&chunk);
                pool.give(chunk.data);
            }
            Frame::Oversized { source, line } => self.agg.oversized(LineRef { source: &source, line }),
            Frame::ReadError { source, message } => {
                self.agg.stats.read_errors.push(ReadError { source: source.to_string(), error: message })
            }
        }
    }

    fn process_chunk(&mut self, chunk: &Chunk) {
        for (line_no, line) in (chunk.first_line..).zip(whole_lines(&chunk.data)) {
            // Framing skips long lines it cannot hold; one that fit in a buffer is
            // caught here, so the limit is the same wherever a line falls.
            if line.len() > self.max_line_bytes {
                self.agg.oversized(LineRef { source: &chunk.source, line: line_no });
            } else {
                self.process_line(&chunk.source, line_no, trim_eol(line));
            }
        }
        // Framing never cuts inside a partial line, so leftovers mean the input ended.
        self.agg.stats.unfinished_partial_lines += self.joiner.unfinished() as u64;
        self.agg.settle();
    }

    fn process_line(&mut self, input: &Arc<str>, line_no: u64, raw: &[u8]) {
        let at = LineRef { source: input, line: line_no };
        if raw.is_empty() {
            self.agg.unparsed(input, at, b"(empty line)", UnparsedReason::Empty);
            return;
        }
        let wrapped = unwrap(raw);
        if wrapped.partial {
            self.joiner.push(wrapped.stream, &wrapped.payload);
            return;
        }
        let payload = self.joiner.complete(wrapped.stream, wrapped.payload);
        let source_name = wrapped.prefix.map(crate::parse::text);
        let stats_source = source_name.as_deref().unwrap_or(input);
        let cache_key = wrapped.prefix.unwrap_or(input.as_bytes());
        let mut record = Record::default();
        let Some((format, text)) =
            self.read_record(cache_key, &payload, wrapped.unstripped, wrapped.time, &mut record)
        else {
            self.agg.unparsed(stats_source, at, raw, UnparsedReason::Unrecognized);
            return;
        };
        if self.time_range.is_some_and(|r| !r.holds(record.time)) {
            return self.agg.outside_time_range(stats_source, self.parser.format(format).name());
        }
        let mut hits = std::mem::take(&mut self.hits);
        hits.clear();
        self.rules.detect_memo(text, &record, &mut self.prefilter_memo, &mut hits);
        if let Some(matches) = self.matches.as_mut() {
            for hit in &hits {
                matches.push(MatchLine::new(
                    input,
                    line_no,
                    &record,
                    hit,
                    &self.rules,
                    &self.policy,
                    self.explain,
                ));
            }
        }
        let format = self.parser.format(format).name();
        let seen = Seen { source: stats_source, at, format, raw, record: &record, hits: &hits };
        self.agg.observe(&seen, &self.rules, &self.policy);
        self.hits = hits;
    }
}

/// The lines of `data`, each with its `\n` (the last may lack one): `split_inclusive`,
/// with the memchr crate's vectorised search, which is quicker at log-line distances.
fn whole_lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let newline = NewlineSearch::new();
    let mut start = 0;
    std::iter::from_fn(move || {
        let rest = data.get(start..).filter(|rest| !rest.is_empty())?;
        let len = newline.find(rest).map_or(rest.len(), |at| at + 1);
        start += len;
        Some(&rest[..len])
    })
}

/// The search for a line's end, chosen once per chunk. `memchr::memchr` chooses its
/// implementation on every call, through a function pointer, and framing searches once a
/// line: holding the AVX2 searcher took ~39 instructions a line off the worker.
struct NewlineSearch {
    #[cfg(target_arch = "x86_64")]
    avx2: Option<memchr::arch::x86_64::avx2::memchr::One>,
}

impl NewlineSearch {
    fn new() -> NewlineSearch {
        NewlineSearch {
            #[cfg(target_arch = "x86_64")]
            avx2: memchr::arch::x86_64::avx2::memchr::One::new(b'\n'),
        }
    }

    /// The first `\n` in `hay`.
    fn find(&self, hay: &[u8]) -> Option<usize> {
        #[cfg(target_arch = "x86_64")]
        if let Some(avx2) = &self.avx2 {
            return avx2.find(hay);
        }
        memchr::memchr(b'\n', hay)
    }
}

impl Worker {
    /// Reads the record in `payload`. When a leading timestamp was taken off as
    /// `kubectl --timestamps`, the whole line (`unstripped`) may be the real shape (a
    /// `log_format` that starts with `$time_iso8601`), so both are tried, in an order that
    /// depends only on the line: a structured reading of the payload, then of the whole
    /// line, then plain text of either.
    fn read_record<'a>(
        &mut self,
        source: &[u8],
        payload: &'a [u8],
        unstripped: Option<&'a [u8]>,
        wrapper_time: Option<i64>,
        record: &mut Record<'a>,
    ) -> Option<(usize, &'a [u8])> {
        if let Some(i) = self.parser.parse_structured_into(source, payload, record) {
            record.time = record.time.or(wrapper_time);
            return Some((i, payload));
        }
        if let Some(whole) = unstripped
            && let Some(i) = self.parser.parse_structured_into(source, whole, record)
        {
            return Some((i, whole));
        }
        if let Some((plain, i)) = self.parser.parse_plain(payload) {
            *record = Record { time: plain.time.or(wrapper_time), ..plain };
            return Some((i, payload));
        }
        let whole = unstripped?;
        let (plain, i) = self.parser.parse_plain(whole)?;
        *record = plain;
        Some((i, whole))
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Opens every path up front, so a missing file fails the scan before any work.
pub fn open_inputs(paths: &[PathBuf]) -> Result<Vec<Input>> {
    if paths.is_empty() {
        return Ok(vec![Input::open(std::path::Path::new("-"))?]);
    }
    paths.iter().map(|p| Input::open(p)).collect()
}

/// Starts the reader thread: frames every input in turn into a bounded channel.
pub fn spawn_reader(
    inputs: Vec<Input>,
    config: &ScanConfig,
    framing: FramingConfig,
    pool: BufferPool,
    depth: usize,
) -> (Receiver<Frame>, std::thread::JoinHandle<u64>) {
    let (tx, rx) = sync_channel(depth);
    let counter = config.bytes_read.clone();
    let handle = std::thread::spawn(move || {
        let mut bytes = 0;
        for input in inputs {
            match frame_input(input, counter.clone(), framing, &pool, &tx) {
                Ok(n) => bytes += n,
                Err(_abandoned) => break,
            }
        }
        bytes
    });
    (rx, handle)
}

/// [`spawn_reader`] for `--follow`: each input read as `tail -F` reads a file
/// ([`Input::followed`]) on a thread of its own, since a followed file never ends and
/// the next input would never be read after it. The channel closes when every input
/// that can end (standard input, gzip) has ended and no file is followed.
pub fn spawn_followers(
    inputs: Vec<Input>,
    config: &ScanConfig,
    framing: FramingConfig,
    pool: BufferPool,
    depth: usize,
) -> Receiver<Frame> {
    let (tx, rx) = sync_channel(depth);
    for input in inputs.into_iter().map(Input::followed) {
        let (tx, pool, counter) = (tx.clone(), pool.clone(), config.bytes_read.clone());
        // A closed channel means the scan has stopped: nothing is left to do.
        std::thread::spawn(move || _ = frame_input(input, counter, framing, &pool, &tx));
    }
    rx
}

/// Frames `input` into `tx`, adding the bytes read to `counter` (for a progress display).
fn frame_input(
    input: Input,
    counter: Arc<AtomicU64>,
    framing: FramingConfig,
    pool: &BufferPool,
    tx: &SyncSender<Frame>,
) -> std::result::Result<u64, crate::framing::Abandoned> {
    let reader = Counting { inner: input.reader, counter };
    frame_source(input.name.into(), reader, framing, pool, tx)
}

/// Scans `inputs` to their end with `config.threads` parsing threads.
pub fn scan(inputs: Vec<Input>, config: &ScanConfig) -> Result<Aggregator> {
    let pool = BufferPool::new();
    // One chunk waiting per worker is enough: the reader frames far faster than workers
    // parse, and each chunk queued is a buffer (1 MiB by default) held.
    let (rx, reader) = spawn_reader(inputs, config, config.framing, pool.clone(), config.threads + 1);
    let mut agg = scan_frames(rx, &pool, config)?;
    agg.stats.bytes = reader.join().unwrap_or(agg.stats.bytes);
    Ok(agg)
}

/// Parses and counts every frame from `rx` on `config.threads` threads, merging what
/// each learned. The frames may come from files, stdin or Loki.
pub fn scan_frames(rx: Receiver<Frame>, pool: &BufferPool, config: &ScanConfig) -> Result<Aggregator> {
    let threads = rayon::ThreadPoolBuilder::new()
        .num_threads(config.threads)
        .build()
        .map_err(|e| Error::option("--threads", e.to_string()))?;
    // One table of quiet clients for all workers (each sees nearly every client); with
    // one worker its own table does the same without locks.
    let lights = (config.threads > 1).then(|| Arc::new(SharedLights::new(config.limits.light)));
    // Request times likewise: one table for all workers.
    let shared_times = (config.request_times && config.threads > 1)
        .then(|| Arc::new(SharedRequestTimes::new(config.limits.request_bytes)));
    let mut agg = threads.install(|| {
        rx.into_iter()
            .par_bridge()
            .fold(
                || {
                    let mut w = Worker::new(config);
                    w.agg.shared_light = lights.clone();
                    if let Some(times) = w.agg.request_times.as_mut() {
                        times.shared = shared_times.clone();
                    }
                    w
                },
                |mut w, frame| {
                    w.process(frame, pool);
                    w
                },
            )
            .map(|w| w.agg)
            // Sharing the workers' sketch: an empty aggregator with its own would copy
            // theirs into a new 8 MiB one at the first merge.
            .reduce(
                || Aggregator {
                    summary: config.summary.sharing(),
                    account_case: config.account_case,
                    ..Aggregator::default()
                },
                |mut a, b| {
                    a.merge(b);
                    a
                },
            )
    });
    if let Some(lights) = lights {
        agg.absorb_lights(&lights);
    }
    if let Some(times) = shared_times {
        // The merged result's own table is empty: its requests went to the shared one.
        agg.request_times.as_mut().into_iter().for_each(RequestTimes::flush);
        agg.request_times = Some(times.drain());
    }
    Ok(agg)
}

/// Scans what `loki` reads, exactly as if the lines came from stdin, one source per stream.
pub fn scan_loki(
    loki: crate::loki::LokiScan,
    config: &ScanConfig,
) -> Result<(Aggregator, crate::loki::LokiOutcome)> {
    let pool = BufferPool::new();
    let (rx, reader) = loki.spawn(config.threads * 2 + 2).map_err(|e| Error::option("--loki", e))?;
    let mut agg = scan_frames(rx, &pool, config)?;
    let outcome = reader.join().map_err(|_| Error::option("--loki", "the Loki reader failed"))?;
    agg.stats.bytes = outcome.bytes;
    Ok((agg, outcome))
}

/// Scans `inputs` in order on one worker, calling `each` with every chunk's matches.
pub fn scan_matches(
    inputs: Vec<Input>,
    config: &ScanConfig,
    mut each: impl FnMut(&[MatchLine]) -> Result<()>,
) -> Result<Aggregator> {
    let pool = BufferPool::new();
    let (rx, reader) = spawn_reader(inputs, config, config.framing, pool.clone(), 4);
    let mut worker = Worker::new(config);
    worker.matches = Some(Vec::new());
    for frame in rx {
        worker.process(frame, &pool);
        let found = worker.matches.as_mut().map(std::mem::take).unwrap_or_default();
        each(&found)?;
    }
    worker.agg.stats.bytes = reader.join().unwrap_or(worker.agg.stats.bytes);
    Ok(worker.agg)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// A chunk's lines are what `split_inclusive` gives: every byte once, each line
        /// with its `\n`, empty lines kept, and a last line without one.
        #[test]
        fn whole_lines_split_as_split_inclusive(
            data in proptest::collection::vec(proptest::sample::select(b"ab\n".to_vec()), 0..300),
        ) {
            let expected: Vec<&[u8]> = data.split_inclusive(|&b| b == b'\n').collect();
            // At most one line a byte, and one more: an iterator that stops advancing
            // then fails here instead of running on.
            let lines: Vec<&[u8]> = whole_lines(&data).take(data.len() + 1).collect();
            proptest::prop_assert_eq!(lines, expected);
        }
    }

    /// The sketch is 8 MiB: a scan that folds must end with the one its workers shared,
    /// not a copy made for each merge (three copies were a quarter of the peak of a 1 GB
    /// scan on one thread).
    #[test]
    fn merging_workers_keeps_one_sketch() {
        let config = ScanConfig {
            framing: FramingConfig { chunk_bytes: 4096, max_line_bytes: 2048, eager: false },
            threads: 2,
            limits: crate::aggregate::bounded::Limits {
                clients: 16,
                light: 16,
                accounts: 16,
                ..Default::default()
            },
            ..ScanConfig::new(Arc::new(RuleSet::builtin().expect("built-in rules compile")))
        };
        let lines: String = (0..3000)
            .map(|i| {
                format!(
                    "10.{}.{}.1 - - [15/Jan/2024:10:00:00 +0000] \"GET /x HTTP/1.1\" 404 1 \"-\" \"ua\"\n",
                    i / 250,
                    i % 250
                )
            })
            .collect();
        let pool = BufferPool::new();
        let (tx, rx) = sync_channel(1 << 12);
        frame_source("t".into(), std::io::Cursor::new(lines.into_bytes()), config.framing, &pool, &tx)
            .unwrap();
        drop(tx);
        let agg = scan_frames(rx, &pool, &config).unwrap();
        assert!(agg.summary.used(), "the limits are small enough to fold");
        assert!(agg.summary.shares_sketch_with(&config.summary));
    }
}
