//! Parsing: one line (wrappers already removed) to one [`Record`]. Each format has its own
//! module; [`Parser`] picks the format per source, caching the last one that worked so
//! that detection costs nothing while a source keeps its format, and re-detecting when an
//! interleaved stream (`kubectl logs --all-containers`) switches.

pub mod access;
pub mod backend;
pub mod error_log;
pub mod logformat;
pub mod nginx_conf;

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use logformat::{Escape, LogFormat};

/// What kind of log a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// One HTTP request answered by nginx or ingress-nginx.
    Access,
    /// An nginx error log entry.
    ErrorLog,
    /// An application's own log line.
    Backend,
}

/// What an nginx error log entry reports, for the entries logwarden acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorLogEvent {
    /// `user "x" was not found in "..."` or `user "x": password mismatch`.
    BasicAuthFailure,
    /// `no user/password was provided for basic authentication`.
    BasicAuthMissing,
    /// `limiting requests, excess: ...`.
    RateLimited,
    /// `access forbidden by rule`.
    Forbidden,
    /// Anything else.
    Other,
}

/// One parsed log line. Text fields are decoded (nginx escapes undone) and may hold any
/// bytes an attacker sent, lossily converted to UTF-8.
#[derive(Debug, Default)]
pub struct Record<'a> {
    pub kind: Option<RecordKind>,
    /// Event time, Unix seconds.
    pub time: Option<i64>,
    /// The address that connected (`$remote_addr`, `client:`, a JSON `client_ip`...).
    pub remote_addr: Option<IpAddr>,
    /// The X-Forwarded-For header as logged, or where none is, a header naming the client
    /// alone (X-Real-IP, CF-Connecting-IP...): untrusted until the client resolver says so.
    pub forwarded_for: Option<Cow<'a, str>>,
    /// The account named by the line (`$remote_user`, basic-auth user, JSON `user`...).
    pub user: Option<Cow<'a, str>>,
    pub method: Option<Cow<'a, str>>,
    /// Path with query string, as requested.
    pub path: Option<Cow<'a, str>>,
    pub status: Option<u16>,
    /// Seconds, where `$request_time` is logged.
    pub request_time: Option<f64>,
    pub user_agent: Option<Cow<'a, str>>,
    /// An application's event name (`event`, `action`, ...).
    pub event: Option<Cow<'a, str>>,
    /// A second, different event name from another of those keys (`"action": "login"`
    /// beside `"event": "auth.failed"`): a rule's `event` condition holds for either.
    pub other_event: Option<Cow<'a, str>>,
    /// An application's or the error log's message text.
    pub message: Option<Cow<'a, str>>,
    /// Log level, lower-cased.
    pub level: Option<Cow<'a, str>>,
    pub error_event: Option<ErrorLogEvent>,
    /// A JSON or logfmt line shaped as an access record (a status and a request) whose
    /// client field held no usable address (empty, not an address, or two fields naming
    /// two): read as an application line, so the report must say no client was counted.
    pub client_unreadable: bool,
}

/// The formats logwarden reads.
#[derive(Clone, Debug)]
pub enum Format {
    /// An nginx access log with a known `log_format`.
    Access(Arc<LogFormat>),
    /// Access log lines written as JSON objects.
    JsonAccess,
    /// nginx's error log.
    ErrorLog,
    /// Application logs as JSON objects.
    BackendJson,
    /// Application logs as `key=value` pairs.
    Logfmt,
    /// Application logs as free text.
    PlainText,
    /// A `combined` line with more fields after the user agent, of a `log_format` that is
    /// not known: those are not read. Tried only when no other structured format reads
    /// the line, and never remembered for its source, so the formats that read such
    /// lines whole (`main`, ingress-nginx, a `--log-format`) always come first.
    CombinedExtra,
}

impl Format {
    /// The name used in `--format` and in reports.
    pub fn name(&self) -> &str {
        match self {
            Format::Access(f) => &f.name,
            Format::JsonAccess => "json-access",
            Format::ErrorLog => "nginx-error",
            Format::BackendJson => "backend-json",
            Format::Logfmt => "logfmt",
            Format::PlainText => "plain",
            Format::CombinedExtra => COMBINED_EXTRA,
        }
    }

    /// Parses one line in this format into `out`, which must be empty (default); on
    /// failure `out` is left empty.
    pub fn parse_into<'a>(&self, line: &'a [u8], out: &mut Record<'a>) -> bool {
        let parsed = match self {
            Format::Access(f) => access::parse_into(f, line, out),
            // In place, as access lines are: a record is several hundred bytes.
            Format::JsonAccess => backend::parse_json_into(line, out) == Some(RecordKind::Access),
            Format::BackendJson => backend::parse_json_into(line, out) == Some(RecordKind::Backend),
            Format::Logfmt => backend::parse_logfmt_into(line, out).is_some(),
            Format::ErrorLog => error_log::parse(line).map(|r| *out = r).is_some(),
            Format::PlainText => backend::parse_plain(line).map(|r| *out = r).is_some(),
            Format::CombinedExtra => access::parse_combined_extra_into(line, out),
        };
        if !parsed {
            *out = Record::default();
        }
        parsed
    }

    /// Parses one line in this format.
    pub fn parse<'a>(&self, line: &'a [u8]) -> Option<Record<'a>> {
        let mut record = Record::default();
        self.parse_into(line, &mut record).then_some(record)
    }
}

/// The built-in access formats, most specific first so that detection settles on the
/// richest one (an ingress line also starts like a `combined` line).
pub fn builtin_access_formats() -> Vec<Arc<LogFormat>> {
    [("ingress-nginx", logformat::INGRESS), ("main", logformat::MAIN), ("combined", logformat::COMBINED)]
        .into_iter()
        .map(|(name, def)| Arc::new(LogFormat::compile(name, def, Escape::Default).expect("built-in format")))
        .collect()
}

/// Resolves a `--format` name to a format; custom formats are matched by their name.
pub fn format_by_name(name: &str, custom: &[Arc<LogFormat>]) -> Option<Format> {
    let access = custom.iter().cloned().chain(builtin_access_formats());
    if let Some(f) = access.into_iter().find(|f| f.name == name) {
        return Some(Format::Access(f));
    }
    Some(match name {
        "json-access" => Format::JsonAccess,
        "nginx-error" => Format::ErrorLog,
        "backend-json" => Format::BackendJson,
        "logfmt" => Format::Logfmt,
        "plain" => Format::PlainText,
        COMBINED_EXTRA => Format::CombinedExtra,
        _ => return None,
    })
}

/// The names `--format` accepts.
pub const FORMAT_NAMES: &str = "combined, main, ingress-nginx, combined+extra, json-access, nginx-error, backend-json, logfmt, plain, or the name of a --log-format";

/// The name of [`Format::CombinedExtra`] in `--format` and in reports.
pub const COMBINED_EXTRA: &str = "combined+extra";

/// Picks and applies a format per source. The answer for a line never depends on what
/// came before it: formats are tried most specific first, and no two structured formats
/// accept the same line (an nginx value never holds a raw `"`, which keeps `combined`
/// from swallowing `main`), so the per-source cache only saves time. The one that does
/// overlap, [`Format::CombinedExtra`], is tried after all the others and never cached.
pub struct Parser {
    candidates: Arc<Vec<Format>>,
    forced: bool,
    cache: HashMap<Box<[u8]>, usize>,
    /// The source and format of the last line read: most lines come from the same
    /// source as the one before, and comparing names is cheaper than hashing one.
    last: Option<(Box<[u8]>, usize)>,
}

impl Parser {
    /// A parser that detects among `custom` formats, then the built-in ones.
    pub fn detecting(custom: &[Arc<LogFormat>]) -> Parser {
        let mut candidates: Vec<Format> = custom.iter().cloned().map(Format::Access).collect();
        candidates.extend(builtin_access_formats().into_iter().map(Format::Access));
        candidates.extend([
            Format::JsonAccess,
            Format::BackendJson,
            Format::ErrorLog,
            Format::Logfmt,
            Format::PlainText,
            Format::CombinedExtra,
        ]);
        Parser { candidates: Arc::new(candidates), forced: false, cache: HashMap::new(), last: None }
    }

    /// A parser that only ever tries `format`.
    pub fn forced(format: Format) -> Parser {
        Parser { candidates: Arc::new(vec![format]), forced: true, cache: HashMap::new(), last: None }
    }

    /// A parser with the same formats and an empty cache, for another worker.
    pub fn fresh(&self) -> Parser {
        Parser { candidates: self.candidates.clone(), forced: self.forced, cache: HashMap::new(), last: None }
    }

    /// Parses `line` from `source`; returns the record and the format that read it.
    pub fn parse<'a>(&mut self, source: &[u8], line: &'a [u8]) -> Option<(Record<'a>, &Format)> {
        let (record, i) = self.parse_structured(source, line).or_else(|| self.parse_plain(line))?;
        Some((record, &self.candidates[i]))
    }

    /// The format at index `i`, as returned by the `parse_*` methods.
    pub fn format(&self, i: usize) -> &Format {
        &self.candidates[i]
    }

    /// Parses `line` with a structured format (anything but plain text): the cached one
    /// for `source` first, then every candidate in order. Structured formats are mutually
    /// exclusive, so the cache changes the cost, never the answer.
    pub fn parse_structured<'a>(&mut self, source: &[u8], line: &'a [u8]) -> Option<(Record<'a>, usize)> {
        let mut record = Record::default();
        let i = self.parse_structured_into(source, line, &mut record)?;
        Some((record, i))
    }

    /// [`Parser::parse_structured`] into `out` (which must be empty; left empty when no
    /// format reads the line); returns the format's index.
    pub fn parse_structured_into<'a>(
        &mut self,
        source: &[u8],
        line: &'a [u8],
        out: &mut Record<'a>,
    ) -> Option<usize> {
        let cached = match &self.last {
            Some((name, i)) if same_bytes(name, source) => Some(*i),
            _ => self.cache.get(source).copied(),
        };
        if let Some(i) = cached
            && self.candidates[i].parse_into(line, out)
        {
            return Some(i);
        }
        let found = self
            .candidates
            .iter()
            .enumerate()
            .filter(|(i, f)| Some(*i) != cached && !matches!(f, Format::PlainText | Format::CombinedExtra))
            .find(|(_, f)| f.parse_into(line, out));
        let Some((i, _)) = found else { return self.parse_combined_extra(line, out) };
        self.cache.insert(source.into(), i);
        self.last = Some((source.into(), i));
        Some(i)
    }

    /// Parses `line` as [`Format::CombinedExtra`], when that is among the candidates: the
    /// last structured reading, after every other format said no.
    fn parse_combined_extra<'a>(&self, line: &'a [u8], out: &mut Record<'a>) -> Option<usize> {
        let i = self.candidates.iter().position(|f| matches!(f, Format::CombinedExtra))?;
        self.candidates[i].parse_into(line, out).then_some(i)
    }

    /// Parses `line` as plain text, when plain text is among the candidates. Plain text
    /// accepts almost anything, so it is only ever the last resort.
    pub fn parse_plain<'a>(&self, line: &'a [u8]) -> Option<(Record<'a>, usize)> {
        let i = self.candidates.iter().position(|f| matches!(f, Format::PlainText))?;
        Some((self.candidates[i].parse(line)?, i))
    }
}

/// Lossy UTF-8 for text fields: borrowed when valid. `from_utf8` first, because its
/// ASCII fast path is several times quicker than the lossy decoder on the common case.
pub fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Lossy UTF-8 for a whole line (a sample of it): borrowed when valid, checked with
/// [`utf8`]'s vectorised check, which pays off on a line's length.
pub fn line_text(bytes: &[u8]) -> Cow<'_, str> {
    utf8(bytes).map_or_else(|| String::from_utf8_lossy(bytes), Cow::Borrowed)
}

/// A whole line as text when it is valid UTF-8: `std::str::from_utf8`'s answer, from the
/// simdutf8 crate's vectorised check, which on a line's mostly ASCII bytes takes half the
/// standard check's instructions. Short values keep the standard check, which starts
/// faster (with simdutf8 for every value, JSON access lines cost 2% more).
pub fn utf8(bytes: &[u8]) -> Option<&str> {
    simdutf8::basic::from_utf8(bytes).ok()
}

/// Two parts of `text` cut by `split`, borrowed from the line where `text` is (copied
/// where it was decoded); `text` itself back when `split` finds no such parts.
pub fn split_text<'a>(
    text: Cow<'a, str>,
    split: impl Fn(&str) -> Option<(&str, &str)>,
) -> Result<(Cow<'a, str>, Cow<'a, str>), Cow<'a, str>> {
    match text {
        Cow::Borrowed(s) => split(s).map(|(a, b)| (a.into(), b.into())).ok_or(text),
        Cow::Owned(s) => match split(&s) {
            Some((a, b)) => Ok((a.to_owned().into(), b.to_owned().into())),
            None => Err(s.into()),
        },
    }
}

/// Lossy UTF-8 for an owned or borrowed byte value.
pub fn text_cow(bytes: Cow<'_, [u8]>) -> Cow<'_, str> {
    match bytes {
        Cow::Borrowed(b) => text(b),
        Cow::Owned(v) => match String::from_utf8(v) {
            Ok(s) => Cow::Owned(s),
            Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
        },
    }
}

/// What one pass over a line's bytes tells its parser: how many `"` it holds, whether it
/// holds a `\`, and the line as text when every byte is ASCII. One vectorised pass where
/// counting the quotes, searching for a backslash and checking UTF-8 were three: ~250
/// instructions of a `combined` line's ~1,650 to parse (callgrind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineBytes<'a> {
    pub quotes: usize,
    pub backslash: bool,
    /// The line, when it is all ASCII (so valid UTF-8, with no check of its own).
    pub ascii: Option<&'a str>,
}

impl<'a> LineBytes<'a> {
    /// Reads `line` once.
    pub fn of(line: &'a [u8]) -> LineBytes<'a> {
        let (mut quotes, mut backslash, mut high) = (0usize, 0u8, 0u8);
        // Byte-wide sums over blocks of 255, which the compiler turns into vector
        // compares (a `usize` sum per byte stays scalar).
        for block in line.chunks(255) {
            let (q, b, h) = block.iter().fold((0u8, 0u8, 0u8), |(q, b, h), &x| {
                (q + u8::from(x == b'"'), b | u8::from(x == b'\\'), h | x)
            });
            quotes += usize::from(q);
            (backslash, high) = (backslash | b, high | h);
        }
        // SAFETY: `high` is every byte of `line` or-ed together, so below 0x80 no byte has
        // its high bit set: all are ASCII, and ASCII is valid UTF-8.
        let ascii = (high < 0x80).then(|| unsafe { std::str::from_utf8_unchecked(line) });
        LineBytes { quotes, backslash: backslash != 0, ascii }
    }
}

/// A line whose values are decoded: when the whole line is valid UTF-8 and holds no
/// escape, each value is a slice of it, with no decoding or validation of its own. Values
/// end at ASCII separators, and an ASCII byte is always a char boundary in valid UTF-8.
pub struct LineText<'a> {
    line: &'a [u8],
    /// The whole line, when it is valid UTF-8.
    utf8: Option<&'a str>,
    /// Whether nothing in the line can be escaped (no `\`, or `escape=none`).
    unescaped: bool,
}

impl<'a> LineText<'a> {
    /// Checks `line` once: one pass over its bytes, and a UTF-8 check if any is not ASCII.
    pub fn new(line: &'a [u8], escape: logformat::Escape) -> LineText<'a> {
        Self::scanned(line, escape, &LineBytes::of(line))
    }

    /// [`LineText::new`] with the line's bytes read already (`bytes`, of `line`).
    pub fn scanned(line: &'a [u8], escape: logformat::Escape, bytes: &LineBytes<'a>) -> LineText<'a> {
        let unescaped = escape == logformat::Escape::None || !bytes.backslash;
        LineText { line, utf8: bytes.ascii.or_else(|| utf8(line)), unescaped }
    }

    /// `raw` (a part of the line) decoded as nginx escaped it with `escape`, lossy where
    /// it is not UTF-8. Only a value that holds a `\` (of a line that may) is decoded.
    pub fn decode(&self, raw: &'a [u8], escape: logformat::Escape) -> Cow<'a, str> {
        let plain = self.unescaped || memchr::memchr(b'\\', raw).is_none();
        match self.utf8.filter(|_| plain).and_then(|s| self.slice_of(s, raw)) {
            Some(value) => Cow::Borrowed(value),
            None => text_cow(logformat::unescape(raw, escape)),
        }
    }

    /// `raw`, a part of the line, as a part of its text.
    fn slice_of(&self, text: &'a str, raw: &[u8]) -> Option<&'a str> {
        let start = (raw.as_ptr() as usize).wrapping_sub(self.line.as_ptr() as usize);
        text.get(start..start.checked_add(raw.len())?)
    }
}

/// The first `needle` in `hay`, as `memchr::memchr`. The separators of a log line are
/// mostly a few bytes away (a status, a byte count, an address, a time, the end of a
/// method), closer than memchr's call and set-up are worth: the first 32 bytes are
/// searched inline, eight at a time, and only a farther byte is left to memchr.
#[inline(always)]
pub fn near_byte(needle: u8, hay: &[u8]) -> Option<usize> {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut words = hay.chunks_exact(8);
    for (k, word) in words.by_ref().take(4).enumerate() {
        let x = u64::from_le_bytes(word.try_into().expect("chunks of 8")) ^ (LOW * u64::from(needle));
        // The lowest zero byte of `x` sets its high bit here (borrows only reach higher).
        let zero = x.wrapping_sub(LOW) & !x & HIGH;
        if zero != 0 {
            return Some(8 * k + (zero.trailing_zeros() / 8) as usize);
        }
    }
    if hay.len() > 32 {
        return memchr::memchr(needle, &hay[32..]).map(|p| p + 32);
    }
    let tail = hay.len() - words.remainder().len();
    words.remainder().iter().position(|&b| b == needle).map(|p| p + tail)
}

/// `a == b`, compared in place a word at a time for up to 64 bytes. `==` on slices calls
/// `memcmp`, whose call and set-up cost more than the compare itself for what is compared
/// on every line (a source's and a format's name, a method, a short path): six calls a
/// line of `combined`. Longer slices still use `==`. (A format's own separators, of one
/// to three bytes, are compared byte by byte in `logformat`.)
#[inline(always)]
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    // Reads of a word from the start and to the end (overlapping when the slices are
    // shorter than two words; two such pairs from 33 bytes on) cover every byte.
    match n {
        0..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        4..=7 => word_differ::<4>(a, b, 0) | word_differ::<4>(a, b, n - 4) == 0,
        8..=16 => word_differ::<8>(a, b, 0) | word_differ::<8>(a, b, n - 8) == 0,
        17..=32 => wide_differ(a, b, 0) | wide_differ(a, b, n - 16) == 0,
        33..=64 => {
            let starts = wide_differ(a, b, 0) | wide_differ(a, b, 16);
            starts | wide_differ(a, b, n - 32) | wide_differ(a, b, n - 16) == 0
        }
        _ => a == b,
    }
}

/// The bits that differ between the `W` bytes (at most 8) of `a` and of `b` from `i`.
#[inline(always)]
fn word_differ<const W: usize>(a: &[u8], b: &[u8], i: usize) -> u64 {
    let (mut x, mut y) = ([0u8; 8], [0u8; 8]);
    x[..W].copy_from_slice(&a[i..i + W]);
    y[..W].copy_from_slice(&b[i..i + W]);
    u64::from_le_bytes(x) ^ u64::from_le_bytes(y)
}

/// The bits that differ between the 16 bytes of `a` and of `b` from `i`.
#[inline(always)]
fn wide_differ(a: &[u8], b: &[u8], i: usize) -> u128 {
    let x = u128::from_le_bytes(a[i..i + 16].try_into().expect("16 bytes"));
    x ^ u128::from_le_bytes(b[i..i + 16].try_into().expect("16 bytes"))
}

/// The first two space-separated words of a request line (`METHOD TARGET[ PROTOCOL]`),
/// unchecked; `None` without a space.
pub fn request_words(request: &str) -> Option<(&str, &str)> {
    // Byte searches: a space is ASCII, so every cut is a char boundary.
    let space = near_byte(b' ', request.as_bytes())?;
    let (method, rest) = (&request[..space], &request[space + 1..]);
    let target = near_byte(b' ', rest.as_bytes()).map_or(rest, |end| &rest[..end]);
    Some((method, target))
}

/// The first place `pair` occurs in `hay`, as `memchr::memmem::find`: a search for its
/// first byte and a compare of the second. `memmem::find` builds a searcher on every call,
/// which cost more than the search itself on a log line (3.5% of a `kubectl --prefix` scan).
pub fn find_pair(hay: &[u8], pair: [u8; 2]) -> Option<usize> {
    memchr::memchr_iter(pair[0], hay).find(|&p| hay.get(p + 1) == Some(&pair[1]))
}

/// Parses an IP address as logs write it: plain, in brackets, or with a port, and folds
/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`, as dual-stack listeners log it) to IPv4.
pub fn parse_ip(s: &[u8]) -> Option<IpAddr> {
    if let Some(v4) = dotted_quad(s) {
        return Some(IpAddr::V4(v4));
    }
    if let Some(v6) = hex_groups(s) {
        return Some(canonical_ip(IpAddr::V6(v6)));
    }
    let s = std::str::from_utf8(s).ok()?.trim();
    let ip = s.parse::<IpAddr>().ok().or_else(|| strip_port(s).and_then(|h| h.parse().ok()))?;
    Some(canonical_ip(ip))
}

/// The common case of [`parse_ip`] without the general parser: exactly four decimal
/// octets, each 0 to 255 without a leading zero (the standard parser's rules). `None`
/// only means "not this shape"; the general parser then decides.
fn dotted_quad(s: &[u8]) -> Option<std::net::Ipv4Addr> {
    // Octet by octet, each read without a loop: the byte loop this replaced checked for
    // a leading zero at every digit (~170 instructions an address; every line has one).
    let mut octets = [0u8; 4];
    let mut rest = s;
    for (k, octet) in octets.iter_mut().enumerate() {
        let (value, len) = decimal_octet(rest)?;
        (*octet, rest) = (value, &rest[len..]);
        if k < 3 {
            rest = rest.strip_prefix(b".")?;
        }
    }
    rest.is_empty().then(|| octets.into())
}

/// One to three digits at the start of `s`, 0 to 255, the standard parser's way: a `0`
/// is a whole octet (a digit after it is then not a separator, and the caller fails).
fn decimal_octet(s: &[u8]) -> Option<(u8, usize)> {
    let digit = |i: usize| s.get(i).filter(|b| b.is_ascii_digit()).map(|b| u16::from(b - b'0'));
    let a = digit(0)?;
    let Some(b) = digit(1).filter(|_| a != 0) else { return Some((a as u8, 1)) };
    let Some(c) = digit(2) else { return Some(((a * 10 + b) as u8, 2)) };
    let value = a * 100 + b * 10 + c;
    u8::try_from(value).ok().map(|v| (v, 3))
}

/// The common IPv6 shapes without the general parser: one to eight groups of one to four
/// hex digits, with at most one `::` standing for at least one zero group. `None` only
/// means "not this shape" (an embedded IPv4 tail, brackets, a port): the general parser
/// then decides. The standard parser cost ~1,000 instructions more per address.
fn hex_groups(s: &[u8]) -> Option<std::net::Ipv6Addr> {
    let mut groups = [0u16; 8];
    let (mut n, mut gap, mut i) = (0, None, 0);
    if s.starts_with(b"::") {
        (gap, i) = (Some(0), 2);
    }
    while i < s.len() {
        let (value, digits) = hex_group(&s[i..])?;
        *groups.get_mut(n)? = value;
        (n, i) = (n + 1, i + digits);
        match &s[i..] {
            [] => break,
            [b':', b':', ..] if gap.is_none() => (gap, i) = (Some(n), i + 2),
            [b':', _, ..] => i += 1,
            _ => return None,
        }
    }
    match gap {
        None => (n == 8).then(|| groups.into()),
        Some(at) if n < 8 => {
            // The groups after the gap move to the end; the gap's groups are zero.
            let mut out = [0u16; 8];
            out[..at].copy_from_slice(&groups[..at]);
            out[8 - (n - at)..].copy_from_slice(&groups[at..n]);
            Some(out.into())
        }
        Some(_) => None,
    }
}

/// One to four hex digits at the start of `s` (the standard parser's limit): the value
/// and how many there were. A fifth digit is left for the caller to reject.
fn hex_group(s: &[u8]) -> Option<(u16, usize)> {
    let digits = s.iter().take(4).map_while(|&b| char::from(b).to_digit(16));
    let (value, n) = digits.fold((0u16, 0), |(v, n), d| (v << 4 | d as u16, n + 1));
    (n > 0).then_some((value, n))
}

/// Folds an IPv4-mapped IPv6 address to IPv4; other addresses are returned unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn strip_port(s: &str) -> Option<&str> {
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']').map(|(h, _)| h);
    }
    let (host, port) = s.rsplit_once(':')?;
    (port.bytes().all(|b| b.is_ascii_digit()) && !host.contains(':')).then_some(host)
}

/// Test input: up to `count` pieces drawn from `pieces`, joined. Parsers' property tests
/// build hostile lines this way from the separators and escapes they must get right.
#[cfg(test)]
pub(crate) fn joined_pieces(
    pieces: Vec<&'static [u8]>,
    count: std::ops::Range<usize>,
) -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::strategy::Strategy;
    proptest::collection::vec(proptest::sample::select(pieces), count).prop_map(|p| p.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The inline search answers as memchr does, wherever the byte is or is not.
        #[test]
        fn near_byte_finds_what_memchr_finds(hay in proptest::collection::vec(0u8..40, 0..90), needle in 0u8..41) {
            proptest::prop_assert_eq!(near_byte(needle, &hay), memchr::memchr(needle, &hay));
        }
    }

    proptest::proptest! {
        /// The word-at-a-time compare answers as `==` does at every length (each of its
        /// read widths, and `==` beyond 64 bytes), and sees a change at any byte.
        #[test]
        fn same_bytes_agrees_with_slice_equality(
            a in proptest::collection::vec(0u8..3, 0..80),
            b in proptest::collection::vec(0u8..3, 0..80),
            flip in 0usize..80,
        ) {
            proptest::prop_assert_eq!(same_bytes(&a, &b), a == b);
            // Equal slices of every length, and the same with one byte changed anywhere.
            proptest::prop_assert!(same_bytes(&a, &a.clone()));
            if !a.is_empty() {
                let mut changed = a.clone();
                changed[flip % a.len()] ^= 1;
                proptest::prop_assert!(!same_bytes(&a, &changed));
            }
        }
    }

    proptest::proptest! {
        /// The pair search answers as memmem does, overlapping and repeated bytes included.
        #[test]
        fn find_pair_finds_what_memmem_finds(hay in proptest::collection::vec(0u8..4, 0..60), a in 0u8..4, b in 0u8..4) {
            proptest::prop_assert_eq!(find_pair(&hay, [a, b]), memchr::memmem::find(&hay, &[a, b]));
        }
    }

    proptest::proptest! {
        /// The one pass over a line counts its quotes, sees its backslashes and takes it as
        /// text exactly when byte-by-byte checks do, across the 255-byte blocks it sums in.
        #[test]
        fn one_pass_over_a_line_agrees_with_separate_checks(
            line in joined_pieces(vec![&b"a"[..], b"\"", b"\\", b"\xc3\xa9", b"\xff", b"\x7f", b"\x80"], 0..700),
        ) {
            let bytes = LineBytes::of(&line);
            proptest::prop_assert_eq!(bytes.quotes, line.iter().filter(|&&b| b == b'"').count());
            proptest::prop_assert_eq!(bytes.backslash, line.contains(&b'\\'));
            let text = std::str::from_utf8(&line).ok().filter(|_| line.is_ascii());
            proptest::prop_assert_eq!(bytes.ascii, text);
        }
    }

    #[test]
    fn a_line_with_any_high_byte_is_not_taken_as_ascii() {
        for line in [&b"\x80"[..], b"\x80\x80", b"\xff", b"\x7f\xc0"] {
            assert_eq!(LineBytes::of(line).ascii, None, "{line:?}");
        }
        assert_eq!(LineBytes::of(b"\x7f\"\"").ascii, Some("\x7f\"\""));
    }

    #[test]
    fn ip_shapes() {
        assert_eq!(parse_ip(b"1.2.3.4"), "1.2.3.4".parse().ok());
        assert_eq!(parse_ip(b"1.2.3.4:5555"), "1.2.3.4".parse().ok());
        assert_eq!(parse_ip(b"::ffff:1.2.3.4"), "1.2.3.4".parse().ok());
        assert_eq!(parse_ip(b"[2001:db8::1]:443"), "2001:db8::1".parse().ok());
        assert_eq!(parse_ip(b"2001:db8::1"), "2001:db8::1".parse().ok());
        assert_eq!(parse_ip(b"1.2.3"), None);
        assert_eq!(parse_ip(b"1234567"), None);
        assert_eq!(parse_ip(b"-"), None);
    }

    proptest::proptest! {
        /// The dotted-quad shortcut agrees with the standard parser on every input: on
        /// addresses, on digits and dots in any order, and on the bytes a word-at-a-time
        /// test could mistake for them (a digit or dot with its high bit set, the bytes
        /// either side of the digits, a zero byte).
        #[test]
        fn the_ipv4_shortcut_agrees_with_the_standard_parser(s in ipv4_like_bytes()) {
            let standard = std::str::from_utf8(&s).ok().and_then(|s| s.parse::<std::net::Ipv4Addr>().ok());
            proptest::prop_assert_eq!(dotted_quad(&s), standard);
        }
    }

    /// Byte strings shaped like dotted quads, or nearly.
    fn ipv4_like_bytes() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let tricky = prop_oneof![
            Just(b'/'),
            Just(b':'),
            Just(0u8),
            Just(0xAE),
            Just(0xB0),
            Just(0xB9),
            Just(b'.' + 1)
        ];
        let byte = prop_oneof![8 => b'0'..=b'9', 3 => Just(b'.'), 1 => tricky];
        prop_oneof![
            proptest::collection::vec(byte, 0..18),
            "([0-9]{1,3}\\.){3}[0-9]{1,3}".prop_map(String::into_bytes),
            proptest::array::uniform4(any::<u8>())
                .prop_map(|o| std::net::Ipv4Addr::from(o).to_string().into_bytes()),
        ]
    }

    /// IPv6 addresses as logs write them: compressed (the standard display), full, upper
    /// case, with leading zeros.
    fn ipv6_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let group = prop_oneof![Just(0u16), Just(1u16), any::<u16>()];
        (proptest::array::uniform8(group), 0..4u8).prop_map(|(g, style)| {
            let ip = std::net::Ipv6Addr::from(g);
            match style {
                0 => ip.to_string(),
                1 => g.map(|x| format!("{x:x}")).join(":"),
                2 => g.map(|x| format!("{x:04X}")).join(":"),
                _ => ip.to_string().to_uppercase(),
            }
        })
    }

    proptest::proptest! {
        /// The IPv6 shortcut agrees with the standard parser wherever it answers, and
        /// answers for every address written without an IPv4 tail.
        #[test]
        fn the_ipv6_shortcut_agrees_with_the_standard_parser(s in ipv6_text()) {
            let fast = hex_groups(s.as_bytes());
            proptest::prop_assert_eq!(fast, s.parse().ok());
            proptest::prop_assert!(fast.is_some() || s.contains('.'));
        }

        /// On arbitrary text of the address alphabet, the shortcut never accepts what the
        /// standard parser rejects, nor reads it differently.
        #[test]
        fn the_ipv6_shortcut_never_disagrees(s in "[0-9a-fA-F:.]{0,44}|([0-9a-f]{0,5}:{1,3}){1,9}[0-9a-f]{0,5}") {
            if let Some(ip) = hex_groups(s.as_bytes()) {
                proptest::prop_assert_eq!(Some(ip), s.parse().ok());
            }
        }
    }

    #[test]
    fn ipv6_shapes_the_shortcut_leaves_to_the_standard_parser() {
        for s in [
            "::ffff:1.2.3.4",
            "1:2:3:4:5:6:7:8:9",
            "1::2::3",
            "12345::",
            "1:2:3:4:5:6:7:8::",
            ":1::",
            "1:",
            "",
            "[::1]",
        ] {
            assert_eq!(hex_groups(s.as_bytes()), None, "{s}");
        }
        for s in
            ["::", "::1", "1::", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8", "fe80::1:2", "2001:DB8:0:0:0:0:0:1"]
        {
            assert_eq!(hex_groups(s.as_bytes()), s.parse().ok(), "{s}");
            assert!(hex_groups(s.as_bytes()).is_some(), "{s}");
        }
    }

    #[test]
    fn detection_prefers_the_richest_access_format() {
        let mut p = Parser::detecting(&[]);
        let ingress = br#"1.2.3.4 - - [15/Jan/2024:10:23:45 +0000] "GET / HTTP/1.1" 200 5 "-" "ua" 100 0.005 [default-web-80] [] 10.0.0.5:80 5 0.004 200 abc123"#;
        let (_, f) = p.parse(b"s", ingress).unwrap();
        assert_eq!(f.name(), "ingress-nginx");
        let combined = br#"1.2.3.4 - - [15/Jan/2024:10:23:45 +0000] "GET / HTTP/1.1" 200 5 "-" "ua""#;
        let (_, f) = p.parse(b"s", combined).unwrap();
        assert_eq!(f.name(), "combined");
    }
}
