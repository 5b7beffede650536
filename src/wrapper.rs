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

use std::borrow::Cow;

use crate::time::parse_rfc3339;

/// Which wrapper a line came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WrapperKind {
    None,
    Kubectl,
    Cri,
    Docker,
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
    /// `pod/NAME/CONTAINER` from `kubectl logs --prefix`.
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
    } else if let Some((time, after)) = split_timestamp(rest) {
        out.time = Some(time);
        match split_cri(after) {
            Some((stream, partial, payload)) => {
                out.kind = WrapperKind::Cri;
                out.stream = Some(stream);
                out.partial = partial;
                out.payload = Cow::Borrowed(payload);
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
