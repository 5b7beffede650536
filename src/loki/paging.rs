//! Exact paging over `/loki/api/v1/query_range`: which window to ask for next, and which
//! entries of a page are new. Pure logic, no I/O, so every boundary case is a unit test.
//!
//! Loki answers a range with at most `limit` entries, taken in direction order from the
//! merge of all streams. A page shorter than the limit is the last. After a full page whose
//! last timestamp is `T`, the entries at `T` may continue on the next page, so the next
//! request starts at `T` again (forward: `start=T`; backward: `end=T+1ns`, because `end`
//! is exclusive) and exactly the entries already taken at `T` are dropped: as a multiset of
//! (stream labels, timestamp, line), since Loki keeps two identical lines at one timestamp
//! unless they arrive back to back. A full page that is all one timestamp cannot move the
//! cursor; then the whole nanosecond `[T, T+1)` is asked for at the server's maximum limit,
//! and if even that is full the window is reported as unreadable rather than skipped.
//!
//! Loki refuses a range longer than its `max_query_length` (721h by default: "the query
//! time range exceeds the limit", 400), so a longer window is asked for in spans of at
//! most that length, each read to its end before the next; a short page ends its span,
//! not the window.

use std::collections::HashMap;
use std::sync::Arc;

/// The order Loki returns entries in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Forward,
    Backward,
}

impl Direction {
    /// The query parameter value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Backward => "backward",
        }
    }
}

/// One log entry as Loki returned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The stream's labels, canonical (`{a="1", b="2"}`, sorted), shared by its entries.
    pub stream: Arc<str>,
    /// Nanoseconds since the Unix epoch.
    pub ts: i64,
    pub line: String,
}

/// One `query_range` call: `start` inclusive, `end` exclusive, nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    pub start: i64,
    pub end: i64,
    pub limit: usize,
    pub direction: Direction,
}

/// Paging cannot go on without skipping lines.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PagingError {
    #[error(
        "more than {limit} entries share the timestamp {ts} ns; Loki cannot page inside one \
         nanosecond, so raise max_entries_limit_per_query and --loki-max-entries"
    )]
    TooManyAtOneTimestamp { ts: i64, limit: usize },
}

/// Walks one query's window page by page.
#[derive(Debug)]
pub struct Pager {
    start: i64,
    end: i64,
    limit: usize,
    /// The largest limit the server accepts, for reading one crowded nanosecond whole.
    burst_limit: usize,
    direction: Direction,
    /// Forward: the next `start`; backward: the next `end`.
    cursor: i64,
    /// Entries already taken at the boundary timestamp.
    boundary: Option<Boundary>,
    /// The next request reads the boundary nanosecond whole.
    burst: bool,
    /// The longest range one request may span (Loki's `max_query_length`), nanoseconds.
    max_span: i64,
    done: bool,
}

#[derive(Debug)]
struct Boundary {
    ts: i64,
    seen: HashMap<(Arc<str>, String), u32>,
}

impl Pager {
    /// A pager over `[start, end)` asking for `limit` entries per page, reading a crowded
    /// nanosecond with up to `burst_limit` (the server's `max_entries_limit_per_query`).
    pub fn new(start: i64, end: i64, limit: usize, burst_limit: usize, direction: Direction) -> Pager {
        let cursor = if direction == Direction::Forward { start } else { end };
        let limit = limit.max(1);
        let burst_limit = burst_limit.max(limit);
        Pager {
            start,
            end,
            limit,
            burst_limit,
            direction,
            cursor,
            boundary: None,
            burst: false,
            max_span: i64::MAX,
            done: start >= end,
        }
    }

    /// The same pager asking for ranges of at most `span` nanoseconds (at least one).
    pub fn spanning_at_most(self, span: i64) -> Pager {
        Pager { max_span: span.max(1), ..self }
    }

    /// The next call to make, or `None` once the window has been read.
    pub fn next_request(&self) -> Option<PageRequest> {
        if self.done {
            return None;
        }
        let (start, end, limit) = match (self.burst, &self.boundary) {
            (true, Some(b)) => (b.ts, b.ts + 1, self.burst_limit),
            _ if self.direction == Direction::Forward => {
                (self.cursor, self.end.min(self.cursor.saturating_add(self.max_span)), self.limit)
            }
            _ => (self.start.max(self.cursor.saturating_sub(self.max_span)), self.cursor, self.limit),
        };
        Some(PageRequest { start, end, limit, direction: self.direction })
    }

    /// The part of the window read completely so far, `[from, to)`.
    pub fn covered(&self) -> (i64, i64) {
        match (self.done, self.direction) {
            (true, _) => (self.start, self.end),
            (false, Direction::Forward) => (self.start, self.cursor),
            (false, Direction::Backward) => (self.cursor, self.end),
        }
    }

    /// Takes the answer to [`Pager::next_request`] (entries of all streams, in any order)
    /// and returns the entries not taken before, in direction order.
    pub fn accept(&mut self, mut entries: Vec<Entry>) -> Result<Vec<Entry>, PagingError> {
        let request = self.next_request().expect("accept follows a request");
        let full = entries.len() >= request.limit;
        // A server that strays outside the window is not trusted with the lines it adds;
        // the requests that own those nanoseconds read them.
        entries.retain(|e| (request.start..request.end).contains(&e.ts));
        self.sort(&mut entries);
        let span = entries.first().zip(entries.last()).map(|(a, b)| (a.ts, b.ts));
        let fresh = self.drop_seen(entries);
        match span {
            _ if self.burst => self.after_burst(full, request.start)?,
            Some((first, last)) if full => self.after_full_page(first, last, &fresh),
            _ => self.after_short_page(request),
        }
        Ok(fresh)
    }

    fn sort(&self, entries: &mut [Entry]) {
        match self.direction {
            Direction::Forward => entries.sort_by_key(|e| e.ts),
            Direction::Backward => entries.sort_by_key(|e| std::cmp::Reverse(e.ts)),
        }
    }

    /// Removes entries taken before at the boundary timestamp, each occurrence once.
    fn drop_seen(&mut self, entries: Vec<Entry>) -> Vec<Entry> {
        let Some(b) = self.boundary.as_ref() else { return entries };
        // Count down a copy: the boundary keeps every entry taken at its timestamp.
        let mut unmatched = b.seen.clone();
        let mut fresh = Vec::with_capacity(entries.len());
        for e in entries {
            let seen =
                (e.ts == b.ts).then(|| unmatched.get_mut(&(e.stream.clone(), e.line.clone()))).flatten();
            match seen {
                Some(n) if *n > 0 => *n -= 1,
                _ => fresh.push(e),
            }
        }
        fresh
    }

    /// After a full page: resume at its last timestamp, remembering what was taken there;
    /// a page that never left one timestamp reads that nanosecond whole next.
    fn after_full_page(&mut self, first: i64, last: i64, fresh: &[Entry]) {
        if self.boundary.as_ref().is_none_or(|b| b.ts != last) {
            self.boundary = Some(Boundary { ts: last, seen: HashMap::new() });
        }
        self.remember(fresh.iter().filter(|e| e.ts == last));
        self.burst = first == last;
        if !self.burst {
            self.cursor = if self.direction == Direction::Forward { last } else { last + 1 };
        }
    }

    /// After a page shorter than the limit: its whole range was read, which ends the
    /// window unless the range was cut short of it (see [`Pager::spanning_at_most`]).
    fn after_short_page(&mut self, request: PageRequest) {
        self.boundary = None;
        self.cursor = if self.direction == Direction::Forward { request.end } else { request.start };
        self.done = self.cursor == if self.direction == Direction::Forward { self.end } else { self.start };
    }

    fn remember<'a>(&mut self, taken: impl Iterator<Item = &'a Entry>) {
        let Some(b) = self.boundary.as_mut() else { return };
        for e in taken {
            *b.seen.entry((e.stream.clone(), e.line.clone())).or_insert(0) += 1;
        }
    }

    /// After reading the boundary nanosecond whole: move past it, or give up if even the
    /// largest page could not hold it.
    fn after_burst(&mut self, full: bool, ts: i64) -> Result<(), PagingError> {
        if full {
            return Err(PagingError::TooManyAtOneTimestamp { ts, limit: self.burst_limit });
        }
        self.burst = false;
        self.boundary = None;
        self.cursor = if self.direction == Direction::Forward { ts + 1 } else { ts };
        self.done = if self.direction == Direction::Forward {
            self.cursor >= self.end
        } else {
            self.cursor <= self.start
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::hash::BuildHasher;

    /// Answers a request the way Loki's `query_range` does: entries in `[start, end)`,
    /// merged across streams in direction order, the first `limit` of them. Entries that
    /// share a timestamp come in an order Loki does not promise, here shuffled by `salt`.
    fn loki(all: &[Entry], r: PageRequest, salt: u64) -> Vec<Entry> {
        let mut hits: Vec<Entry> = all.iter().filter(|e| (r.start..r.end).contains(&e.ts)).cloned().collect();
        let tie = |e: &Entry| foldhash::fast::FixedState::with_seed(salt).hash_one((&e.stream, &e.line));
        hits.sort_by_key(|e| (e.ts, tie(e)));
        if r.direction == Direction::Backward {
            hits.reverse();
        }
        hits.truncate(r.limit);
        hits.reverse(); // the caller must not depend on the order within a page
        hits
    }

    fn read_all(
        all: &[Entry],
        limit: usize,
        burst: usize,
        dir: Direction,
        salt: u64,
    ) -> Result<Vec<Entry>, PagingError> {
        read_all_spanning(all, limit, burst, dir, salt, i64::MAX)
    }

    /// [`read_all`] from a Loki whose `max_query_length` is `max_span` (a longer request
    /// fails the test, as Loki refuses it).
    fn read_all_spanning(
        all: &[Entry],
        limit: usize,
        burst: usize,
        dir: Direction,
        salt: u64,
        max_span: i64,
    ) -> Result<Vec<Entry>, PagingError> {
        let mut pager = Pager::new(0, 1_000, limit, burst, dir).spanning_at_most(max_span);
        let mut out = Vec::new();
        let mut calls = 0;
        while let Some(r) = pager.next_request() {
            assert!(r.end - r.start <= max_span, "{r:?} spans more than {max_span}");
            out.extend(pager.accept(loki(all, r, salt.wrapping_add(calls)))?);
            calls += 1;
            assert!(calls < 100_000, "paging does not terminate");
        }
        assert_eq!(pager.covered(), (0, 1_000));
        Ok(out)
    }

    fn sorted(mut v: Vec<Entry>) -> Vec<(i64, Arc<str>, String)> {
        let mut keys: Vec<_> = v.drain(..).map(|e| (e.ts, e.stream, e.line)).collect();
        keys.sort();
        keys
    }

    fn entry(stream: &str, ts: i64, line: &str) -> Entry {
        Entry { stream: stream.into(), ts, line: line.into() }
    }

    #[test]
    fn page_of_one_walks_a_crowded_timestamp() {
        let all: Vec<Entry> = (0..20).map(|i| entry("{a=\"1\"}", 5 + i % 3, &format!("l{i}"))).collect();
        for dir in [Direction::Forward, Direction::Backward] {
            let got = read_all(&all, 1, 50, dir, 7).unwrap();
            assert_eq!(sorted(got), sorted(all.clone()));
        }
    }

    #[test]
    fn identical_lines_in_one_stream_and_timestamp_are_both_kept() {
        let all = vec![entry("{a=\"1\"}", 5, "x"), entry("{a=\"1\"}", 5, "y"), entry("{a=\"1\"}", 5, "x")];
        let got = read_all(&all, 2, 10, Direction::Forward, 1).unwrap();
        assert_eq!(sorted(got), sorted(all));
    }

    #[test]
    fn a_nanosecond_fuller_than_the_largest_page_is_an_error() {
        let all: Vec<Entry> = (0..6).map(|i| entry("{a=\"1\"}", 9, &format!("l{i}"))).collect();
        let err = read_all(&all, 2, 5, Direction::Forward, 3).unwrap_err();
        assert_eq!(err, PagingError::TooManyAtOneTimestamp { ts: 9, limit: 5 });
    }

    #[test]
    fn empty_window_needs_no_request() {
        assert_eq!(Pager::new(10, 10, 5, 5, Direction::Forward).next_request(), None);
    }

    #[test]
    fn covered_stops_before_an_unfinished_boundary() {
        let mut pager = Pager::new(0, 100, 2, 10, Direction::Forward);
        pager.accept(vec![entry("{}", 3, "a"), entry("{}", 7, "b")]).unwrap();
        assert_eq!(pager.covered(), (0, 7));
        let mut back = Pager::new(0, 100, 2, 10, Direction::Backward);
        back.accept(vec![entry("{}", 70, "a"), entry("{}", 30, "b")]).unwrap();
        assert_eq!(back.covered(), (31, 100));
        assert_eq!(
            back.next_request().unwrap(),
            PageRequest { start: 0, end: 31, limit: 2, direction: Direction::Backward }
        );
    }

    /// A window longer than the server's longest range is read in spans: every request
    /// within it, every entry once, in both directions; an empty span does not end it.
    #[test]
    fn a_window_longer_than_the_longest_range_is_read_in_spans() {
        let all = vec![entry("{}", 10, "a"), entry("{}", 620, "b"), entry("{}", 999, "c")];
        for dir in [Direction::Forward, Direction::Backward] {
            let got = read_all_spanning(&all, 5, 5, dir, 1, 300).unwrap();
            assert_eq!(sorted(got), sorted(all.clone()));
        }
        let mut pager = Pager::new(0, 1_000, 5, 5, Direction::Forward).spanning_at_most(300);
        pager.accept(Vec::new()).unwrap();
        assert_eq!(pager.covered(), (0, 300));
        assert_eq!(pager.next_request().map(|r| (r.start, r.end)), Some((300, 600)));
    }

    proptest! {
        #[test]
        fn every_entry_exactly_once(
            raw in proptest::collection::vec((0u8..3, 0i64..40, 0u8..6), 0..120),
            limit in 1usize..12,
            backward in any::<bool>(),
            salt in any::<u64>(),
            max_span in proptest::sample::select(vec![1i64, 7, 25, 26, 333, 999, 1_000, i64::MAX]),
        ) {
            let all: Vec<Entry> = raw.iter()
                .map(|&(s, ts, l)| entry(&format!("{{s=\"{s}\"}}"), ts * 25, &format!("line{l}")))
                .collect();
            let dir = if backward { Direction::Backward } else { Direction::Forward };
            let got = read_all_spanning(&all, limit, 200, dir, salt, max_span).unwrap();
            prop_assert_eq!(sorted(got), sorted(all));
        }
    }
}
