//! Framing: bytes to whole lines. A reader fills pooled buffers; each buffer handed on
//! holds a whole number of lines, and the partial tail is carried into the next buffer,
//! so nothing downstream ever sees half a line. This is the unit of parallel work.
//!
//! Two cases are explicit and counted rather than silently handled:
//! - a line longer than the configured limit is skipped up to its newline and reported
//!   as [`Frame::Oversized`] with its line number;
//! - a buffer never ends on a container runtime's partial line (CRI `P`, Docker json-file
//!   without `\n`), so the pieces of one logical line always reach the same worker.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};

use crate::wrapper::{container_stream, is_partial_line};

/// A block of whole lines from one source.
pub struct Chunk {
    /// The source's display name.
    pub source: Arc<str>,
    /// The 1-based number of the first line in `data` within its source.
    pub first_line: u64,
    /// Whole lines; the last may lack `\n` only at end of input.
    pub data: Vec<u8>,
}

/// What the framer hands to the parsing stage.
pub enum Frame {
    /// Whole lines to parse.
    Lines(Chunk),
    /// A line longer than the limit was skipped.
    Oversized { source: Arc<str>, line: u64 },
    /// Reading the source failed part-way (e.g. a truncated gzip); what came before was
    /// delivered, what came after was not read.
    ReadError { source: Arc<str>, message: String },
}

/// How framing cuts its input.
#[derive(Clone, Copy, Debug)]
pub struct FramingConfig {
    /// Target size of one chunk in bytes.
    pub chunk_bytes: usize,
    /// Lines longer than this are skipped and counted.
    pub max_line_bytes: usize,
    /// Hand on whole lines after every read instead of waiting for a full chunk
    /// (`--follow`: a live stream must not wait for a megabyte to arrive).
    pub eager: bool,
}

impl Default for FramingConfig {
    fn default() -> Self {
        FramingConfig { chunk_bytes: 1 << 20, max_line_bytes: 1 << 20, eager: false }
    }
}

/// A pool of reusable buffers, so steady-state framing allocates nothing.
#[derive(Clone)]
pub struct BufferPool {
    returned: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl BufferPool {
    /// An empty pool; buffers are created on demand and come back via [`BufferPool::give`].
    pub fn new() -> Self {
        BufferPool { returned: Arc::new(std::sync::Mutex::new(Vec::new())) }
    }

    /// A buffer with room for `capacity` bytes. A reused one keeps its old bytes: the
    /// framer tracks how much of it holds input and reads over the rest, so a chunk's
    /// memory is not zeroed again before each fill (1 MiB a chunk, a write of every byte
    /// the reader thread would otherwise do on top of the read).
    fn take(&self, capacity: usize) -> Vec<u8> {
        let reused = self.returned.lock().ok().and_then(|mut v| v.pop());
        let mut buf = reused.unwrap_or_default();
        buf.reserve(capacity.saturating_sub(buf.len()));
        buf
    }

    /// Returns a buffer once its lines have been consumed.
    pub fn give(&self, buf: Vec<u8>) {
        if let Ok(mut v) = self.returned.lock() {
            // Keep a handful: one per worker plus the one being filled.
            if v.len() < 16 {
                v.push(buf);
            }
        }
    }
}

impl Default for BufferPool {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads `reader` to its end, sending frames. Returns the number of bytes read, or
/// `Err` only when the receiver has gone away (the scan was abandoned).
pub fn frame_source(
    source: Arc<str>,
    mut reader: impl Read,
    config: FramingConfig,
    pool: &BufferPool,
    out: &SyncSender<Frame>,
) -> Result<u64, Abandoned> {
    let mut state = Framer { source, config, next_line: 1, bytes: 0 };
    let (mut buf, mut carried) = (pool.take(config.chunk_bytes), 0);
    loop {
        let eof = match state.fill(&mut reader, &mut buf, carried) {
            Ok(eof) => eof,
            Err(e) => {
                state.flush_tail(std::mem::take(&mut buf), out)?;
                let message = e.to_string();
                send(out, Frame::ReadError { source: state.source.clone(), message })?;
                return Ok(state.bytes);
            }
        };
        if eof {
            state.flush_tail(buf, out)?;
            return Ok(state.bytes);
        }
        (buf, carried) = state.cut(buf, pool, &mut reader, out)?;
    }
}

/// The receiving side hung up; stop reading.
#[derive(Debug)]
pub struct Abandoned;

struct Framer {
    source: Arc<str>,
    config: FramingConfig,
    next_line: u64,
    bytes: u64,
}

impl Framer {
    /// Reads after the first `carried` bytes of `buf` (input carried over; anything after
    /// them is stale) until it holds at least a chunk's worth, or end of input
    /// (`Ok(true)`). On return `buf` holds exactly the input read, carried bytes first.
    fn fill(&mut self, reader: &mut impl Read, buf: &mut Vec<u8>, carried: usize) -> io::Result<bool> {
        // A carried tail as large as a chunk is one long line: grow in steps until its
        // end (or the line limit) is reached.
        let target = if carried < self.config.chunk_bytes {
            self.config.chunk_bytes
        } else {
            carried + self.config.chunk_bytes.clamp(4096, 64 * 1024)
        };
        // Only bytes the buffer never held are zeroed (a reused chunk's are read over),
        // and once per fill: a pipe returns 64 KiB per read.
        let mut filled = carried;
        if buf.len() < target {
            buf.resize(target, 0);
        } else {
            buf.truncate(target);
        }
        while filled < target {
            let n = match reader.read(&mut buf[filled..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    buf.truncate(filled);
                    return Err(e);
                }
            };
            let start = filled;
            filled += n;
            self.bytes += n as u64;
            if n == 0 {
                buf.truncate(filled);
                return Ok(true);
            }
            if self.config.eager && memchr::memchr(b'\n', &buf[start..filled]).is_some() {
                break;
            }
        }
        buf.truncate(filled);
        Ok(false)
    }

    /// Sends the whole lines of `buf` and returns the buffer to fill next, with how
    /// many bytes at its start are input carried over (the unfinished tail).
    fn cut(
        &mut self,
        mut buf: Vec<u8>,
        pool: &BufferPool,
        reader: &mut impl Read,
        out: &SyncSender<Frame>,
    ) -> Result<(Vec<u8>, usize), Abandoned> {
        match cut_point(&buf) {
            Some(end) => {
                let mut next = pool.take(self.config.chunk_bytes);
                let tail = &buf[end..];
                if next.len() < tail.len() {
                    next.resize(tail.len(), 0);
                }
                next[..tail.len()].copy_from_slice(tail);
                let carried = tail.len();
                buf.truncate(end);
                self.send_lines(buf, out)?;
                Ok((next, carried))
            }
            None if buf.len() > self.config.max_line_bytes => {
                let rest = self.skip_oversized(buf, reader, out)?;
                let carried = rest.len();
                Ok((rest, carried))
            }
            // The line continues: keep filling the same buffer.
            None => {
                let carried = buf.len();
                Ok((buf, carried))
            }
        }
    }

    /// Discards the rest of an oversized logical line and carries what follows it.
    fn skip_oversized(
        &mut self,
        mut buf: Vec<u8>,
        reader: &mut impl Read,
        out: &SyncSender<Frame>,
    ) -> Result<Vec<u8>, Abandoned> {
        let line = self.next_line;
        send(out, Frame::Oversized { source: self.source.clone(), line })?;
        loop {
            if let Some(end) = first_logical_end(&buf) {
                self.next_line += newlines(&buf[..end]);
                buf.drain(..end);
                return Ok(buf);
            }
            // Keep an unfinished physical line only while it is short enough to judge
            // whether it is partial; a longer one is part of the oversized line anyway.
            let keep = match memchr::memrchr(b'\n', &buf) {
                Some(p) if buf.len() - p <= self.config.max_line_bytes => p + 1,
                _ => buf.len(),
            };
            self.next_line += newlines(&buf[..keep]);
            buf.drain(..keep);
            let carried = buf.len();
            let eof = self.fill(reader, &mut buf, carried).unwrap_or(true);
            if eof && first_logical_end(&buf).is_none() {
                // The stream ended inside the oversized line.
                self.next_line += newlines(&buf);
                buf.clear();
                return Ok(buf);
            }
        }
    }

    fn flush_tail(&mut self, buf: Vec<u8>, out: &SyncSender<Frame>) -> Result<(), Abandoned> {
        if buf.is_empty() {
            return Ok(());
        }
        self.send_lines(buf, out)
    }

    fn send_lines(&mut self, data: Vec<u8>, out: &SyncSender<Frame>) -> Result<(), Abandoned> {
        let first_line = self.next_line;
        self.next_line += newlines(&data);
        if !data.ends_with(b"\n") {
            self.next_line += 1;
        }
        let chunk = Chunk { source: self.source.clone(), first_line, data };
        send(out, Frame::Lines(chunk))
    }
}

fn send(out: &SyncSender<Frame>, frame: Frame) -> Result<(), Abandoned> {
    out.send(frame).map_err(|_| Abandoned)
}

/// Where to cut `buf`: after the last line at which no container stream has a partial
/// line open (stdout and stderr interleave, so the line just before the cut is not enough).
fn cut_point(buf: &[u8]) -> Option<usize> {
    let mut end = memchr::memrchr(b'\n', buf)?;
    loop {
        if no_partial_open(&buf[..end]) {
            return Some(end + 1);
        }
        end = memchr::memrchr(b'\n', &buf[..end])?;
    }
}

/// Whether, at the end of `text`, each stream's latest line (within the last
/// [`PARTIAL_LOOKBACK`] lines) is complete.
fn no_partial_open(text: &[u8]) -> bool {
    let mut seen = [false; 2];
    for line in text.rsplit(|&b| b == b'\n').take(PARTIAL_LOOKBACK) {
        if let Some((stream, partial)) = container_stream(line) {
            let slot = &mut seen[stream as usize];
            if !*slot && partial {
                return false;
            }
            *slot = true;
            if seen == [true, true] {
                return true;
            }
        }
    }
    true
}

/// How far back a cut looks for an open partial line. Container runtimes split lines at
/// 16 KiB, so a logical line spans few physical ones; a piece older than this whose end
/// is cut off is counted in `unfinished_partial_lines`, never silently joined wrongly.
const PARTIAL_LOOKBACK: usize = 64;

/// The end (after its newline) of the first physical line that completes a logical line.
fn first_logical_end(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(pos) = memchr::memchr(b'\n', &buf[start..]) {
        let end = start + pos;
        if !is_partial_line(&buf[start..end]) {
            return Some(end + 1);
        }
        start = end + 1;
    }
    None
}

fn newlines(bytes: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', bytes).count() as u64
}

/// Collects every frame of one reader, for tests and small inputs.
pub fn frame_all(source: &str, reader: impl Read, config: FramingConfig) -> Vec<Frame> {
    let (tx, rx): (SyncSender<Frame>, Receiver<Frame>) = std::sync::mpsc::sync_channel(1 << 16);
    let _ = frame_source(source.into(), reader, config, &BufferPool::new(), &tx);
    drop(tx);
    rx.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(chunk: usize, max: usize) -> FramingConfig {
        FramingConfig { chunk_bytes: chunk, max_line_bytes: max, eager: false }
    }

    fn lines_of(frames: &[Frame]) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        for f in frames {
            if let Frame::Lines(c) = f {
                for (i, l) in c.data.split_inclusive(|&b| b == b'\n').enumerate() {
                    out.push((c.first_line + i as u64, l.to_vec()));
                }
            }
        }
        out
    }

    #[test]
    fn chunks_hold_whole_lines_and_numbers_continue() {
        let input = b"aaaa\nbb\ncccccc\nd".repeat(50);
        let frames = frame_all("t", &input[..], small(7, 1000));
        let lines = lines_of(&frames);
        let joined: Vec<u8> = lines.iter().flat_map(|(_, l)| l.clone()).collect();
        assert_eq!(joined, input);
        for (i, (n, _)) in lines.iter().enumerate() {
            assert_eq!(*n, i as u64 + 1);
        }
        for f in &frames {
            if let Frame::Lines(c) = f {
                assert!(c.data.ends_with(b"\n") || std::ptr::eq(f, frames.last().unwrap()));
            }
        }
    }

    /// A reader like a pipe: a few bytes per read, and now and then a read interrupted by
    /// a signal, which must be retried, not taken for the end of the input.
    struct Trickle<'a> {
        data: &'a [u8],
        reads: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.reads += 1;
            if self.reads.is_multiple_of(5) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            Ok(hand_out(&mut self.data, buf, 3))
        }
    }

    /// One read of a test reader: up to `max` bytes of `data` into `buf`, `data` advanced.
    fn hand_out(data: &mut &[u8], buf: &mut [u8], max: usize) -> usize {
        let n = buf.len().min(data.len()).min(max);
        buf[..n].copy_from_slice(&data[..n]);
        *data = &data[n..];
        n
    }

    #[test]
    fn short_and_interrupted_reads_lose_nothing() {
        let input = b"aaaa\nbb\ncccccc\nd".repeat(50);
        let frames = frame_all("t", Trickle { data: &input, reads: 0 }, small(64, 1000));
        let joined: Vec<u8> = lines_of(&frames).into_iter().flat_map(|(_, l)| l).collect();
        assert_eq!(joined, input);
    }

    /// A reader whose input breaks off with an error after `data`, handed out in reads
    /// of at most `step` bytes.
    struct BreaksOff<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for BreaksOff<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.data.is_empty() {
                return Err(io::Error::other("connection reset"));
            }
            Ok(hand_out(&mut self.data, buf, self.step))
        }
    }

    #[test]
    fn a_read_error_keeps_every_byte_read_before_it() {
        let input = b"first\nsecond\nthird, cut off".repeat(20);
        for (chunk, step) in [(64, 7), (64, 1000), (1 << 20, 13)] {
            let frames = frame_all("t", BreaksOff { data: &input, step }, small(chunk, 1000));
            let joined: Vec<u8> = lines_of(&frames).into_iter().flat_map(|(_, l)| l).collect();
            assert_eq!(joined, input, "chunk {chunk}, reads of {step}");
            let last = frames.last().expect("frames");
            assert!(matches!(last, Frame::ReadError { message, .. } if message == "connection reset"));
        }
    }

    #[test]
    fn oversized_line_is_counted_and_skipped() {
        let mut input = b"short\n".to_vec();
        input.extend(vec![b'x'; 200_000]);
        input.extend(b"\nafter\n");
        let frames = frame_all("t", &input[..], small(64, 1000));
        let over: Vec<u64> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::Oversized { line, .. } => Some(*line),
                _ => None,
            })
            .collect();
        assert_eq!(over, vec![2]);
        let lines = lines_of(&frames);
        assert_eq!(lines, vec![(1, b"short\n".to_vec()), (3, b"after\n".to_vec())]);
    }

    #[test]
    fn never_cuts_after_a_partial_cri_line() {
        let p = b"2024-01-15T10:00:00.000000001Z stdout P part-one-";
        let f = b"2024-01-15T10:00:00.000000002Z stdout F part-two\n";
        let mut input = Vec::new();
        for _ in 0..20 {
            input.extend_from_slice(p);
            input.push(b'\n');
            input.extend_from_slice(f);
        }
        for chunk in [10, 60, 100, 150] {
            for frame in frame_all("t", &input[..], small(chunk, 10_000)) {
                if let Frame::Lines(c) = frame {
                    let last = c.data[..c.data.len() - 1].rsplit(|&b| b == b'\n').next().unwrap();
                    assert!(!is_partial_line(last), "chunk {chunk} ends on a partial line");
                }
            }
        }
    }

    #[test]
    fn never_cuts_while_another_stream_has_a_partial_open() {
        let mut input = Vec::new();
        for _ in 0..30 {
            input.extend_from_slice(b"2024-01-15T10:00:00.1Z stdout P first-half-\n");
            input.extend_from_slice(b"2024-01-15T10:00:00.2Z stderr F an error line\n");
            input.extend_from_slice(b"2024-01-15T10:00:00.3Z stdout F second-half\n");
        }
        for chunk in [30, 50, 90, 130, 200] {
            for frame in frame_all("t", &input[..], small(chunk, 10_000)) {
                if let Frame::Lines(c) = frame {
                    assert!(c.data.ends_with(b"second-half\n"), "chunk {chunk} cut inside a partial line");
                }
            }
        }
    }

    /// What a frame says, its buffer aside: for comparing frame streams.
    fn described(frame: &Frame) -> String {
        match frame {
            Frame::Lines(c) => format!("lines {} {:?}", c.first_line, String::from_utf8_lossy(&c.data)),
            Frame::Oversized { line, .. } => format!("oversized {line}"),
            Frame::ReadError { message, .. } => format!("error {message}"),
        }
    }

    /// Frames `input` the way a scan does, every buffer given back to the pool as soon as
    /// its lines are taken, into a pool first stocked with buffers full of junk.
    fn framed_with_reused_buffers(input: &[u8], config: FramingConfig, junk: &[usize]) -> Vec<String> {
        let pool = BufferPool::new();
        junk.iter().for_each(|&n| pool.give(vec![b'#'; n]));
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let recycler = pool.clone();
        let taker = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for frame in rx {
                seen.push(described(&frame));
                if let Frame::Lines(c) = frame {
                    recycler.give(c.data);
                }
            }
            seen
        });
        let _ = frame_source("t".into(), Trickle { data: input, reads: 0 }, config, &pool, &tx);
        drop(tx);
        taker.join().unwrap()
    }

    proptest::proptest! {
        /// Reused buffers keep their old bytes (they are read over, not zeroed): whatever
        /// they held, the frames are those of buffers never used before.
        #[test]
        fn reused_buffers_frame_what_fresh_ones_do(
            lines in proptest::collection::vec((0usize..40, proptest::prelude::any::<bool>()), 0..60),
            chunk in 1usize..48,
            junk in proptest::collection::vec(0usize..200, 0..4),
        ) {
            let mut input = Vec::new();
            for (i, (len, newline)) in lines.iter().enumerate() {
                input.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, *len));
                if *newline || i + 1 < lines.len() {
                    input.push(b'\n');
                }
            }
            let config = small(chunk, 30);
            let fresh: Vec<String> =
                frame_all("t", Trickle { data: &input, reads: 0 }, config).iter().map(described).collect();
            proptest::prop_assert_eq!(framed_with_reused_buffers(&input, config, &junk), fresh);
        }
    }
}
