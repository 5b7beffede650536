//! The pipeline: sources → framing → unwrapping → parsing → detection → aggregation.
//! One reader thread frames every input into pooled chunks of whole lines (and, for
//! gzip, decompresses: a stage of its own, so parsing never waits behind inflate);
//! workers parse chunks in parallel, each into its own [`Aggregator`], merged at the end.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};

use rayon::prelude::*;
use serde::Serialize;

use crate::aggregate::{Aggregator, LineRef, ReadError};
use crate::client::ClientPolicy;
use crate::detect::{RULES, detect};
use crate::error::{Error, Result};
use crate::framing::{BufferPool, Chunk, Frame, FramingConfig, frame_source};
use crate::parse::{Parser, Record};
use crate::source::Input;
use crate::wrapper::{PartialJoiner, unwrap};

/// How a scan reads and interprets its input; built once from the command line.
pub struct ScanConfig {
    pub framing: FramingConfig,
    /// Parsing threads.
    pub threads: usize,
    /// The format parser every worker clones.
    pub parser: Parser,
    pub policy: Arc<ClientPolicy>,
    /// Bytes read so far, for a progress display.
    pub bytes_read: Arc<AtomicU64>,
}

/// A line that matched a detection, as `logwarden match` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct MatchLine {
    pub source: String,
    /// 1-based line number within its source.
    pub line: u64,
    pub rule: &'static str,
    pub ip: Option<String>,
    pub user: Option<String>,
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
}

impl Worker {
    /// A worker with a fresh format cache.
    pub fn new(config: &ScanConfig) -> Worker {
        Worker {
            parser: config.parser.fresh(),
            policy: config.policy.clone(),
            joiner: PartialJoiner::default(),
            max_line_bytes: config.framing.max_line_bytes,
            agg: Aggregator::default(),
            matches: None,
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
            Frame::Oversized { source, line } => self.agg.oversized(LineRef {
                source: &source,
                line,
            }),
            Frame::ReadError { source, message } => self.agg.stats.read_errors.push(ReadError {
                source: source.to_string(),
                error: message,
            }),
        }
    }

    fn process_chunk(&mut self, chunk: &Chunk) {
        let lines = chunk.data.split_inclusive(|&b| b == b'\n');
        for (line_no, line) in (chunk.first_line..).zip(lines) {
            // Framing skips long lines it cannot hold; one that fit in a buffer is
            // caught here, so the limit is the same wherever a line falls.
            if line.len() > self.max_line_bytes {
                self.agg.oversized(LineRef {
                    source: &chunk.source,
                    line: line_no,
                });
            } else {
                self.process_line(&chunk.source, line_no, trim_eol(line));
            }
        }
        // Framing never cuts inside a partial line, so leftovers mean the input ended.
        self.agg.stats.unfinished_partial_lines += self.joiner.unfinished() as u64;
    }

    fn process_line(&mut self, input: &str, line_no: u64, raw: &[u8]) {
        let at = LineRef {
            source: input,
            line: line_no,
        };
        if raw.is_empty() {
            self.agg.unparsed(input, at, b"(empty line)");
            return;
        }
        let wrapped = unwrap(raw);
        if wrapped.partial {
            self.joiner.push(wrapped.stream, &wrapped.payload);
            return;
        }
        let payload = self.joiner.complete(wrapped.stream, wrapped.payload);
        let source_name = wrapped.prefix.map(String::from_utf8_lossy);
        let stats_source = source_name.as_deref().unwrap_or(input);
        let cache_key = wrapped.prefix.unwrap_or(input.as_bytes());
        let Some((record, format)) = self.read_record(cache_key, &payload, wrapped.unstripped, wrapped.time)
        else {
            self.agg.unparsed(stats_source, at, raw);
            return;
        };
        let rule = detect(&record);
        if let (Some(matches), Some(rule)) = (self.matches.as_mut(), rule) {
            matches.push(MatchLine {
                source: input.to_string(),
                line: line_no,
                rule: RULES[rule as usize].id,
                ip: record.remote_addr.map(|ip| {
                    self.policy
                        .resolve(ip, record.forwarded_for.as_deref())
                        .to_string()
                }),
                user: record.user.as_deref().map(str::to_string),
            });
        }
        let format = self.parser.format(format).name();
        self.agg
            .observe(stats_source, at, format, raw, &record, rule, &self.policy);
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
    ) -> Option<(Record<'a>, usize)> {
        if let Some((mut record, i)) = self.parser.parse_structured(source, payload) {
            record.time = record.time.or(wrapper_time);
            return Some((record, i));
        }
        if let Some(found) = unstripped.and_then(|whole| self.parser.parse_structured(source, whole)) {
            return Some(found);
        }
        if let Some((mut record, i)) = self.parser.parse_plain(payload) {
            record.time = record.time.or(wrapper_time);
            return Some((record, i));
        }
        unstripped.and_then(|whole| self.parser.parse_plain(whole))
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
            let reader = Counting {
                inner: input.reader,
                counter: counter.clone(),
            };
            match frame_source(input.name.into(), reader, framing, &pool, &tx) {
                Ok(n) => bytes += n,
                Err(_abandoned) => break,
            }
        }
        bytes
    });
    (rx, handle)
}

/// Counts the bytes that pass through, for progress.
struct Counting<R> {
    inner: R,
    counter: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Scans `inputs` to their end with `config.threads` parsing threads.
pub fn scan(inputs: Vec<Input>, config: &ScanConfig) -> Result<Aggregator> {
    let pool = BufferPool::new();
    let (rx, reader) = spawn_reader(
        inputs,
        config,
        config.framing,
        pool.clone(),
        config.threads * 2 + 2,
    );
    let threads = rayon::ThreadPoolBuilder::new()
        .num_threads(config.threads)
        .build()
        .map_err(|e| Error::option("--threads", e.to_string()))?;
    let mut agg = threads.install(|| {
        rx.into_iter()
            .par_bridge()
            .fold(
                || Worker::new(config),
                |mut w, frame| {
                    w.process(frame, &pool);
                    w
                },
            )
            .map(|w| w.agg)
            .reduce(Aggregator::default, |mut a, b| {
                a.merge(b);
                a
            })
    });
    agg.stats.bytes = reader.join().unwrap_or(agg.stats.bytes);
    Ok(agg)
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
