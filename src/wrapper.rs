//! Wrappers: what Kubernetes and container runtimes put around an application's line.
//! They are stripped before parsing and kept as the record's source and time:
//!
//! - `kubectl logs --prefix`: `[pod/NAME/CONTAINER] line`
//! - `kubectl logs --timestamps`: `2024-01-15T10:23:45.123456789Z line` (both: prefix first)
//! - CRI node logs: `<RFC3339Nano> stdout|stderr F|P line`; `P` marks a partial line whose
//!   rest follows in later `P`/`F` lines of the same stream (containerd writes `Z`
//!   times of variable width, CRI-O writes `+00:00` offsets: both parse).
//! - Docker json-file: `{"log":"line\n","stream":"stdout","time":"..."}`; a `log` value
//!   without its trailing newline is a partial line.
//! - syslog, as nginx sends it (`access_log syslog:...`) and rsyslog or journald write it:
//!   `[<PRI>]Nov 30 07:00:00 HOST TAG[PID]: line` (no year: the line's own time counts),
//!   and with an RFC 3339 time that has a numeric offset (rsyslog's file format,
//!   `journalctl -o short-iso`). `HOST TAG` becomes the source. kubectl's timestamps end
//!   in `Z`, so a kubectl line whose payload reads `main: started` is not taken for one.

use std::borrow::Cow;

use crate::time::parse_rfc3339;

/// Which wrapper a line came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WrapperKind {
    None,
    Kubectl,
    Cri,
    Docker,
    Syslog,
}

/// Which output stream of a container a CRI or Docker line belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A line with its wrappers taken off.
#[derive(Debug)]
pub struct Unwrapped<'a> {
    /// `pod/NAME/CONTAINER` from `kubectl logs --prefix`, or a syslog line's `HOST TAG`:
    /// the line's source.
    pub prefix: Option<&'a [u8]>,
    /// The wrapper's timestamp, when it had one.
    pub time: Option<i64>,
    /// The container stream, for CRI and Docker lines.
    pub stream: Option<Stream>,
    /// The line continues in a later line of the same stream.
    pub partial: bool,
    /// What is left: the application's own line (or this piece of it).
    pub payload: Cow<'a, [u8]>,
    /// The outermost wrapper recognised.
    pub kind: WrapperKind,
    /// When a leading timestamp was taken for `kubectl logs --timestamps`, the line as it
    /// was before: a format that itself starts with a time (`$time_iso8601 ...`) looks
    /// the same, so the parser gets to try both.
    pub unstripped: Option<&'a [u8]>,
}

/// Takes every recognised wrapper off `line`. Lines without wrappers come back unchanged.
pub fn unwrap(line: &[u8]) -> Unwrapped<'_> {
    let (prefix, rest) = split_prefix(line);
    let mut out = Unwrapped {
        prefix,
        time: None,
        stream: None,
        partial: false,
        payload: Cow::Borrowed(rest),
        kind: if prefix.is_some() { WrapperKind::Kubectl } else { WrapperKind::None },
        unstripped: None,
    };
    if rest.starts_with(b"{\"log\":\"") {
        unwrap_docker(rest, &mut out);
    } else if let Some((source, payload)) = split_syslog_3164(rest) {
        (out.kind, out.prefix, out.payload) = (WrapperKind::Syslog, Some(source), Cow::Borrowed(payload));
    } else if let Some((time, after)) = split_timestamp(rest) {
        out.time = Some(time);
        match split_cri(after) {
            Some((stream, partial, payload)) => {
                out.kind = WrapperKind::Cri;
                out.stream = Some(stream);
                out.partial = partial;
                out.payload = Cow::Borrowed(payload);
            }
            // kubectl writes UTC as `Z`; syslog writers, an offset.
            None if !rest[..rest.len() - after.len() - 1].ends_with(b"Z")
                && let Some((source, payload)) = split_syslog_source(after) =>
            {
                (out.kind, out.prefix, out.payload) =
                    (WrapperKind::Syslog, Some(source), Cow::Borrowed(payload));
            }
            None => {
                out.kind = WrapperKind::Kubectl;
                out.payload = Cow::Borrowed(after);
                out.unstripped = Some(rest);
            }
        }
    }
    out
}

/// Whether a physical line is one piece of a longer logical line (framing must not cut
/// after it). Cheap: only looks at the line's head and, for Docker, one substring.
pub fn is_partial_line(line: &[u8]) -> bool {
    matches!(container_stream(line), Some((_, true)))
}

/// For a CRI or Docker json-file line: its stream, and whether it is partial.
pub fn container_stream(line: &[u8]) -> Option<(Stream, bool)> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.starts_with(b"{\"log\":\"") {
        let partial = memchr::memmem::find(line, b"\\n\",\"stream\"").is_none()
            && memchr::memmem::find(line, b"\\n\"}").is_none();
        let stream = match memchr::memmem::find(line, b"\"stream\":\"stderr\"") {
            Some(_) => Stream::Stderr,
            None => Stream::Stdout,
        };
        return Some((stream, partial));
    }
    let (_, after) = split_timestamp(line)?;
    split_cri(after).map(|(stream, partial, _)| (stream, partial))
}

fn split_prefix(line: &[u8]) -> (Option<&[u8]>, &[u8]) {
    if !line.starts_with(b"[pod/") {
        return (None, line);
    }
    match crate::parse::find_pair(line, *b"] ") {
        Some(end) if !line[1..end].contains(&b' ') => (Some(&line[1..end]), &line[end + 2..]),
        _ => (None, line),
    }
}

fn split_timestamp(line: &[u8]) -> Option<(i64, &[u8])> {
    if line.len() < 21 || !line[0].is_ascii_digit() || line[4] != b'-' || line[10] != b'T' {
        return None;
    }
    let end = memchr::memchr(b' ', &line[..line.len().min(40)])?;
    Some((parse_rfc3339(&line[..end])?, &line[end + 1..]))
}

/// The month abbreviations of an RFC 3164 syslog time.
const MONTHS: [&[u8; 3]; 12] =
    [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];

/// `[<PRI>]Mmm dd hh:mm:ss HOST TAG[PID]: ` at the start of `line`: the source (`HOST
/// TAG`) and the payload. The time has no year, so it is not kept.
fn split_syslog_3164(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let line = strip_priority(line);
    // The first byte rules out most lines (an address, a `{`, a year) at once.
    if !matches!(line.first(), Some(b'J' | b'F' | b'M' | b'A' | b'S' | b'O' | b'N' | b'D')) {
        return None;
    }
    let head = line.get(..16)?;
    let day_ok = matches!(head[4], b' ' | b'0'..=b'3') && head[5].is_ascii_digit();
    let clock_ok = head[9] == b':'
        && head[12] == b':'
        && [7, 8, 10, 11, 13, 14].iter().all(|&i| head[i].is_ascii_digit());
    let shaped =
        MONTHS.iter().any(|m| head[..3] == m[..]) && head[3] == b' ' && head[6] == b' ' && head[15] == b' ';
    (shaped && day_ok && clock_ok).then_some(())?;
    split_syslog_source(&line[16..])
}

/// A syslog priority, `<0>` to `<191>`, taken off the front of `line` if there is one.
fn strip_priority(line: &[u8]) -> &[u8] {
    let Some(rest) = line.strip_prefix(b"<") else { return line };
    let digits = rest.iter().take(4).take_while(|b| b.is_ascii_digit()).count();
    match rest.get(digits) {
        Some(b'>') if (1..=3).contains(&digits) => &rest[digits + 1..],
        _ => line,
    }
}

/// `HOST TAG: ` or `HOST TAG[PID]: ` at the start of `s`: `HOST TAG` (one slice) and what
/// follows the colon. A host is up to 255 bytes without spaces; a tag (a program name)
/// up to 48 letters, digits and `_-./`.
fn split_syslog_source(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let host = memchr::memchr(b' ', &s[..s.len().min(256)])?;
    if host == 0 || !s[..host].iter().all(u8::is_ascii_graphic) {
        return None;
    }
    let rest = &s[host + 1..];
    let tag = rest.iter().take(49).take_while(|b| b.is_ascii_alphanumeric() || b"_-./".contains(b)).count();
    if tag == 0 || tag > 48 {
        return None;
    }
    let mut after = &rest[tag..];
    if let Some(pid) = after.strip_prefix(b"[") {
        let digits = pid.iter().take_while(|b| b.is_ascii_digit()).count();
        after = pid.get(digits..).filter(|_| (1..=10).contains(&digits))?.strip_prefix(b"]")?;
    }
    let payload = after.strip_prefix(b": ")?;
    Some((&s[..host + 1 + tag], payload))
}

fn split_cri(after: &[u8]) -> Option<(Stream, bool, &[u8])> {
    let stream = match after.get(..7)? {
        b"stdout " => Stream::Stdout,
        b"stderr " => Stream::Stderr,
        _ => return None,
    };
    let partial = match after.get(7..9)? {
        b"F " => false,
        b"P " => true,
        _ => return None,
    };
    Some((stream, partial, &after[9..]))
}

#[derive(serde::Deserialize)]
struct DockerLine {
    log: String,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    time: Option<String>,
}

fn unwrap_docker(line: &[u8], out: &mut Unwrapped<'_>) {
    let Ok(doc) = serde_json::from_slice::<DockerLine>(line) else {
        return;
    };
    out.kind = WrapperKind::Docker;
    out.stream = Some(match doc.stream.as_deref() {
        Some("stderr") => Stream::Stderr,
        _ => Stream::Stdout,
    });
    out.time = doc.time.as_deref().and_then(|t| parse_rfc3339(t.as_bytes()));
    let mut log = doc.log.into_bytes();
    out.partial = !log.ends_with(b"\n");
    if !out.partial {
        log.pop();
    }
    out.payload = Cow::Owned(log);
}

/// Joins partial lines per stream: pieces are held until the line that completes them.
#[derive(Default)]
pub struct PartialJoiner {
    pending: Vec<(Option<Stream>, Vec<u8>)>,
}

impl PartialJoiner {
    /// Holds a piece of a partial line.
    pub fn push(&mut self, stream: Option<Stream>, piece: &[u8]) {
        match self.pending.iter_mut().find(|(s, _)| *s == stream) {
            Some((_, buf)) => buf.extend_from_slice(piece),
            None => self.pending.push((stream, piece.to_vec())),
        }
    }

    /// Completes the logical line of `stream` with its final piece.
    pub fn complete<'a>(&mut self, stream: Option<Stream>, last: Cow<'a, [u8]>) -> Cow<'a, [u8]> {
        match self.pending.iter().position(|(s, _)| *s == stream) {
            Some(i) => {
                let (_, mut joined) = self.pending.swap_remove(i);
                joined.extend_from_slice(&last);
                Cow::Owned(joined)
            }
            None => last,
        }
    }

    /// Pieces whose final line never came (the input ended first).
    pub fn unfinished(&mut self) -> usize {
        std::mem::take(&mut self.pending).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// nginx's own syslog lines, rsyslog's two file formats and journalctl's: the
    /// payload and `HOST TAG` as the source; the time only where it has a year.
    #[test]
    fn syslog_headers_are_taken_off() {
        let access = "198.51.100.23 - - [15/Jan/2024:10:00:00 +0000] \"GET / HTTP/1.1\" 401 0 \"-\" \"x\"";
        for (line, source, time) in [
            (format!("<190>Jan 15 10:00:00 web1 nginx: {access}"), "web1 nginx", None),
            (format!("Jan 05 10:00:00 web1 nginx[1234]: {access}"), "web1 nginx", None),
            (
                format!("Jan  5 10:00:00 web-1.example.com nginx[1234]: {access}"),
                "web-1.example.com nginx",
                None,
            ),
            (
                format!("2024-01-15T10:00:00.123456+00:00 web1 nginx: {access}"),
                "web1 nginx",
                Some(1_705_312_800),
            ),
            (format!("2024-01-15T10:00:00+0000 web1 nginx[77]: {access}"), "web1 nginx", Some(1_705_312_800)),
        ] {
            let u = unwrap(line.as_bytes());
            assert_eq!(u.kind, WrapperKind::Syslog, "{line}");
            assert_eq!((u.prefix, u.time), (Some(source.as_bytes()), time), "{line}");
            assert_eq!(&*u.payload, access.as_bytes(), "{line}");
        }
        // Not syslog: a combined line, the error log, a kubectl timestamp (`Z`) before a
        // line that reads like a tag, a month name in prose.
        for line in [
            access,
            "2024/01/15 10:23:45 [error] 31#31: *7 open() failed",
            "2024-01-15T10:00:00.123456789Z main: started",
            "Jan 15 10:00:00 is when it failed",
            "Dec 15 10:00:00 web1 : empty tag",
        ] {
            assert_ne!(unwrap(line.as_bytes()).kind, WrapperKind::Syslog, "{line}");
        }
    }

    #[test]
    fn kubectl_prefix_and_timestamps() {
        let u = unwrap(b"[pod/web-1/nginx] 2024-01-15T10:23:45.123456789Z hello world");
        assert_eq!(u.prefix, Some(&b"pod/web-1/nginx"[..]));
        assert_eq!(u.time, Some(1705314225));
        assert_eq!(&*u.payload, b"hello world");
        assert_eq!(u.kind, WrapperKind::Kubectl);
    }

    #[test]
    fn cri_containerd_and_crio() {
        let u = unwrap(b"2024-01-15T10:23:45.1Z stdout F hello");
        assert_eq!((u.kind, u.partial, &*u.payload), (WrapperKind::Cri, false, &b"hello"[..]));
        let u = unwrap(b"2024-01-15T10:23:45.123456789+00:00 stderr P hel");
        assert_eq!(u.stream, Some(Stream::Stderr));
        assert!(u.partial);
        assert!(is_partial_line(b"2024-01-15T10:23:45.123456789+00:00 stderr P hel"));
        assert!(!is_partial_line(b"2024-01-15T10:23:45.1Z stdout F hello"));
    }

    #[test]
    fn docker_json_file() {
        let u = unwrap(br#"{"log":"hello \"x\"\n","stream":"stdout","time":"2024-01-15T10:23:45.5Z"}"#);
        assert_eq!(&*u.payload, br#"hello "x""#);
        assert!(!u.partial);
        let line = br#"{"log":"hel","stream":"stdout","time":"2024-01-15T10:23:45.5Z"}"#;
        assert!(unwrap(line).partial);
        assert!(is_partial_line(line));
    }

    #[test]
    fn plain_lines_pass_unchanged() {
        let line = b"1.2.3.4 - - [15/Jan/2024:10:23:45 +0000] \"GET / HTTP/1.1\" 200 1";
        let u = unwrap(line);
        assert_eq!((u.kind, &*u.payload), (WrapperKind::None, &line[..]));
        assert!(unwrap(b"[pod/a b] x").prefix.is_none());
    }

    #[test]
    fn joiner_joins_per_stream() {
        let mut j = PartialJoiner::default();
        j.push(Some(Stream::Stdout), b"ab");
        j.push(Some(Stream::Stderr), b"zz");
        j.push(Some(Stream::Stdout), b"cd");
        let out = j.complete(Some(Stream::Stdout), Cow::Borrowed(b"ef"));
        assert_eq!(&*out, b"abcdef");
        assert_eq!(j.unfinished(), 1);
    }
}
