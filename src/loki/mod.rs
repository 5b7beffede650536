//! Grafana Loki as a source. A reader thread pages through every `--query` over its window
//! ([`paging`] says exactly which window to ask for and which entries are new), turns each
//! page into chunks of whole lines per stream, and hands them to the same parsing stage as
//! files and stdin: the stream's labels become the record's source. The next page is
//! fetched while workers parse the previous one; memory is bounded by the page size and
//! the channel depth, not by the window.
//!
//! What was read is accounted per query ([`QueryCoverage`]): a window is covered only
//! when every page of it arrived. A page that fails after its retries, a crowded
//! nanosecond, or a refused query leave the rest of that window missing, and the scan says
//! which part of which query that is.

pub mod api;
pub mod paging;
pub mod pushdown;
pub mod response;
pub mod state;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use serde::{Deserialize, Serialize};

use crate::framing::{Chunk, Frame};
use api::{ClientConfig, FetchError, LokiClient};
use paging::{Direction, Entry, Pager};
use state::{Fingerprinter, OverlapFilter, OverlapRecorder, QueryState, ScanState};

/// One query over one window, as a scan will read it.
#[derive(Clone, Debug)]
pub struct QueryWindow {
    pub query: String,
    /// Nanoseconds, inclusive.
    pub start: i64,
    /// Nanoseconds, exclusive.
    pub end: i64,
}

/// How to read Loki; built once from the command line.
#[derive(Clone, Debug)]
pub struct LokiScan {
    pub client: ClientConfig,
    pub windows: Vec<QueryWindow>,
    /// Entries per page (`limit`).
    pub page_size: usize,
    /// The server's `max_entries_limit_per_query`: the largest page it answers.
    pub max_entries: usize,
    /// The server's `max_query_length`, nanoseconds: a longer window is read in spans
    /// of at most this ([`Pager::spanning_at_most`]).
    pub max_query_length: i64,
    pub direction: Direction,
    /// Scheduled runs: what was read before, and how far back to read again.
    pub state: Option<ScanState>,
    /// Nanoseconds re-read before each query's previous end, for late-arriving lines.
    pub overlap_ns: i64,
    /// With a state: read at most this far (ns) past each query's previous end, leaving
    /// the rest to the next runs (`--state-catch-up`).
    pub catch_up_ns: Option<i64>,
    /// Access-log selectors counted inside Loki ([`pushdown`]).
    pub pushdown: Vec<PushdownSpec>,
}

/// One `--pushdown-query`: count 4xx per client in Loki, then read only the candidates.
#[derive(Clone, Debug)]
pub struct PushdownSpec {
    pub selector: String,
    pub start: i64,
    pub end: i64,
    /// The local sliding window and 4xx threshold the count must not miss.
    pub window_s: i64,
    pub threshold: u64,
    /// Allowed gap between Loki's timestamp and the line's own, seconds.
    pub slack_s: i64,
}

/// What was read of one query's window.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QueryCoverage {
    pub query: String,
    pub from: String,
    pub to: String,
    pub from_ns: i64,
    pub to_ns: i64,
    /// Every entry of `[from, to)` was read.
    pub complete: bool,
    /// When not complete: the part not read, `[missing_from_ns, missing_to_ns)`, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<Missing>,
    pub pages: u64,
    pub entries: u64,
    /// Entries a previous run (`--state`) had already counted, skipped.
    pub already_counted: u64,
    /// The part of the window asked for that `--state-catch-up` left to the next runs,
    /// `[to, window end)`: not read, and not claimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_to_next_run: Option<Missing>,
}

/// The unread part of a window.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Missing {
    pub from: String,
    pub to: String,
    pub from_ns: i64,
    pub to_ns: i64,
    pub reason: String,
}

/// The end of a Loki read.
pub struct LokiOutcome {
    pub coverage: Vec<QueryCoverage>,
    /// Bytes of log lines handed to parsing.
    pub bytes: u64,
    /// The state to save if the scan's results are kept, with every window complete.
    pub next_state: Option<ScanState>,
    /// Loki refused a query; the scan cannot mean anything.
    pub refused: Option<String>,
}

impl LokiOutcome {
    /// Whether every window was read completely.
    pub fn complete(&self) -> bool {
        self.refused.is_none() && self.coverage.iter().all(|c| c.complete)
    }

    /// Adds one query's coverage; true when reading must stop (a refusal, or nobody
    /// listens any more).
    fn record(&mut self, (coverage, refused): (QueryCoverage, Option<String>), gone: bool) -> bool {
        if let Some(message) = refused {
            self.refused = Some(format!("query {:?}: {message}", coverage.query));
        }
        self.coverage.push(coverage);
        self.stopped(gone)
    }

    fn stopped(&self, gone: bool) -> bool {
        self.refused.is_some() || gone
    }
}

impl LokiScan {
    /// Starts the reader thread; frames arrive on the receiver, the outcome on join.
    pub fn spawn(
        self,
        depth: usize,
    ) -> Result<(Receiver<Frame>, std::thread::JoinHandle<LokiOutcome>), String> {
        let client = LokiClient::build(&self.client)?;
        let (tx, rx) = sync_channel(depth);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting the HTTP runtime: {e}"))?;
        let handle = std::thread::spawn(move || runtime.block_on(self.read_all(&client, &tx)));
        Ok((rx, handle))
    }

    async fn read_all(mut self, client: &LokiClient, tx: &SyncSender<Frame>) -> LokiOutcome {
        // Taken, not cloned: the overlap fingerprints can be many.
        let mut state = self.state.take();
        let fp = state.as_ref().and_then(ScanState::fingerprinter);
        let mut out = Output { tx, lines: HashMap::new(), bytes: 0, gone: false };
        let mut outcome = LokiOutcome { coverage: Vec::new(), bytes: 0, next_state: None, refused: None };
        let mut finished = Vec::new();
        for w in &self.windows {
            let previous = state.as_ref().and_then(|s| s.queries.get(&w.query));
            let mut reader = QueryReader::new(w, previous, fp, self.overlap_ns, self.catch_up_ns);
            let result = reader.read(&self, client, &mut out).await;
            finished.push((w.query.clone(), reader.recorder.take().map(OverlapRecorder::finish)));
            if outcome.record(reader.coverage_of(result), out.gone) {
                break;
            }
        }
        if !outcome.stopped(out.gone) {
            for spec in &self.pushdown {
                if self.push_down(spec, client, &mut out, &mut outcome).await {
                    break;
                }
            }
        }
        outcome.bytes = out.bytes;
        if let Some(s) = state.as_mut() {
            for (query, q) in finished {
                s.queries.insert(query, q.unwrap_or_default());
            }
        }
        outcome.next_state = state.filter(|_| outcome.complete());
        outcome
    }
}

impl LokiScan {
    /// Counts in Loki, then reads the candidates' lines; true when reading must stop.
    async fn push_down(
        &self,
        spec: &PushdownSpec,
        client: &LokiClient,
        out: &mut Output<'_>,
        outcome: &mut LokiOutcome,
    ) -> bool {
        let q = pushdown::count_4xx(
            &spec.selector,
            spec.start,
            spec.end,
            spec.window_s,
            spec.threshold,
            spec.slack_s,
        );
        let series = client.query_range_metric(&q.logql, q.start_ns, q.end_ns, q.step_ns).await;
        let (found, result) = match series {
            Ok(series) => (series, Ok(())),
            Err(e) => (Vec::new(), Err(e)),
        };
        // A label value that is not an address cannot be a client; its lines, if any,
        // would be unparsed as access lines anyway.
        let (candidates, _not_addresses) = pushdown::valid_candidates(
            found.into_iter().filter_map(|s| s.labels.get("remote_addr").cloned()),
        );
        let count = QueryWindow { query: q.logql.clone(), start: spec.start, end: spec.end };
        let mut counted = QueryReader::new(&count, None, None, 0, None);
        counted.entries = candidates.len() as u64;
        counted.pages = 1;
        counted.whole = result.is_ok();
        if outcome.record(counted.coverage_of(result), out.gone) {
            return true;
        }
        for query in pushdown::evidence_queries(&spec.selector, &candidates) {
            let w = QueryWindow { query, start: spec.start, end: spec.end };
            let mut reader = QueryReader::new(&w, None, None, 0, None);
            let result = reader.read(self, client, out).await;
            if outcome.record(reader.coverage_of(result), out.gone) {
                return true;
            }
        }
        false
    }
}

/// Reads one query's window page by page.
struct QueryReader<'w> {
    window: &'w QueryWindow,
    pager: Option<Pager>,
    skip: Option<OverlapFilter>,
    recorder: Option<OverlapRecorder>,
    /// Where reading starts: the window's start, or the previous run's end less the overlap.
    start: i64,
    /// Where reading stops: the window's end, or sooner when catching up.
    end: i64,
    pages: u64,
    entries: u64,
    already_counted: u64,
    /// Read in one answer rather than paged (a metric query).
    whole: bool,
}

impl<'w> QueryReader<'w> {
    /// A reader of `w`, continuing after `prev` (a previous run's state) less `overlap`,
    /// and then reading at most `catch_up` past the previous end.
    fn new(
        w: &'w QueryWindow,
        prev: Option<&QueryState>,
        fp: Option<Fingerprinter>,
        overlap: i64,
        catch_up: Option<i64>,
    ) -> Self {
        // A scheduled run continues where the last complete one ended, however long ago.
        let start = prev.map_or(w.start, |p| p.end_ns.saturating_sub(overlap)).min(w.end);
        let end = match (prev, catch_up) {
            (Some(p), Some(c)) => w.end.min(p.end_ns.saturating_add(c)).max(start),
            _ => w.end,
        };
        let skip = fp.map(|fp| OverlapFilter::new(prev, fp));
        let recorder = fp.map(|fp| OverlapRecorder::new(end.saturating_sub(overlap), end, fp));
        QueryReader {
            window: w,
            pager: None,
            skip,
            recorder,
            start,
            end,
            pages: 0,
            entries: 0,
            already_counted: 0,
            whole: false,
        }
    }

    async fn read(
        &mut self,
        scan: &LokiScan,
        client: &LokiClient,
        out: &mut Output<'_>,
    ) -> Result<(), FetchError> {
        let pager = self.pager.insert(
            Pager::new(self.start, self.end, scan.page_size, scan.max_entries, scan.direction)
                .spanning_at_most(scan.max_query_length),
        );
        while let Some(request) = pager.next_request() {
            let page = client.query_range(&self.window.query, request).await?;
            let fresh = pager.accept(page).map_err(|e| FetchError::Decode(e.to_string()))?;
            self.pages += 1;
            let mut kept = Vec::with_capacity(fresh.len());
            for e in fresh {
                if let Some(r) = self.recorder.as_mut() {
                    r.note(&e);
                }
                if self.skip.as_mut().is_some_and(|s| s.already_counted(&e)) {
                    self.already_counted += 1;
                } else {
                    kept.push(e);
                }
            }
            self.entries += kept.len() as u64;
            if !out.send(kept) {
                return Err(FetchError::GaveUp { attempts: 0, last: "the scan stopped reading".into() });
            }
        }
        Ok(())
    }

    /// The coverage of a finished read, and Loki's message if it refused the query.
    fn coverage_of(&self, result: Result<(), FetchError>) -> (QueryCoverage, Option<String>) {
        let refused = match &result {
            Err(FetchError::Refused { message, .. }) => Some(message.clone()),
            _ => None,
        };
        (self.coverage(result.err().map(|e| e.to_string())), refused)
    }

    fn coverage(&self, error: Option<String>) -> QueryCoverage {
        let (from, to) = (self.start, self.end);
        let whole = if self.whole { (from, to) } else { (from, from) };
        let read = self.pager.as_ref().map_or(whole, Pager::covered);
        let missing = error.map(|reason| {
            let (mf, mt) = if read.0 > from { (from, read.0) } else { (read.1, to) };
            Missing { from: rfc3339_ns(mf), to: rfc3339_ns(mt), from_ns: mf, to_ns: mt, reason }
        });
        QueryCoverage {
            query: self.window.query.clone(),
            from: rfc3339_ns(from),
            to: rfc3339_ns(to),
            from_ns: from,
            to_ns: to,
            complete: missing.is_none(),
            missing,
            pages: self.pages,
            entries: self.entries,
            already_counted: self.already_counted,
            left_to_next_run: (to < self.window.end).then(|| Missing {
                from: rfc3339_ns(to),
                to: rfc3339_ns(self.window.end),
                from_ns: to,
                to_ns: self.window.end,
                reason: "--state-catch-up: the next runs read it".into(),
            }),
        }
    }
}

/// Turns entries into chunks of whole lines, one per stream, numbered per stream.
struct Output<'a> {
    tx: &'a SyncSender<Frame>,
    lines: HashMap<Arc<str>, u64>,
    bytes: u64,
    gone: bool,
}

impl Output<'_> {
    /// Sends `entries`; false once the parsing side has gone away.
    fn send(&mut self, entries: Vec<Entry>) -> bool {
        let mut by_stream: HashMap<Arc<str>, Vec<u8>> = HashMap::new();
        for e in entries {
            let buf = by_stream.entry(e.stream).or_default();
            buf.extend_from_slice(e.line.as_bytes());
            buf.push(b'\n');
        }
        let mut streams: Vec<_> = by_stream.into_iter().collect();
        streams.sort_by(|a, b| a.0.cmp(&b.0));
        for (source, data) in streams {
            let next = self.lines.entry(source.clone()).or_insert(1);
            let first_line = *next;
            *next += memchr::memchr_iter(b'\n', &data).count() as u64;
            self.bytes += data.len() as u64;
            if self.tx.send(Frame::Lines(Chunk { source, first_line, data })).is_err() {
                self.gone = true;
                return false;
            }
        }
        true
    }
}

/// Nanoseconds as RFC 3339 (to the second, as reports show times).
pub fn rfc3339_ns(ns: i64) -> String {
    crate::time::format_rfc3339(ns.div_euclid(1_000_000_000))
}

/// Parses a `--from`/`--to` time: RFC 3339, or Unix seconds, or Unix nanoseconds.
pub fn parse_time_ns(s: &str) -> Option<i64> {
    if let Ok(n) = s.parse::<i64>() {
        // The same rule Loki applies to its own parameters: up to 10 digits are seconds.
        return if s.trim_start_matches('-').len() <= 10 { n.checked_mul(1_000_000_000) } else { Some(n) };
    }
    let secs = crate::time::parse_rfc3339(s.as_bytes())?;
    let frac = fraction_ns(s);
    secs.checked_mul(1_000_000_000)?.checked_add(frac)
}

/// The nanoseconds of an RFC 3339 fraction (`.5` → 500000000), 0 without one.
fn fraction_ns(s: &str) -> i64 {
    let Some(dot) = s.get(19..).filter(|r| r.starts_with('.')) else { return 0 };
    let digits: String = dot[1..].chars().take_while(char::is_ascii_digit).take(9).collect();
    format!("{digits:0<9}").parse().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_every_shape() {
        assert_eq!(parse_time_ns("1700000000"), Some(1_700_000_000_000_000_000));
        assert_eq!(parse_time_ns("1700000000000000001"), Some(1_700_000_000_000_000_001));
        assert_eq!(parse_time_ns("2023-11-14T22:13:20Z"), Some(1_700_000_000_000_000_000));
        assert_eq!(parse_time_ns("2023-11-14T22:13:20.25Z"), Some(1_700_000_000_250_000_000));
        assert_eq!(parse_time_ns("yesterday"), None);
    }
}
