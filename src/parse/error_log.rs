//! nginx error log entries:
//! `2024/01/15 10:23:45 [error] 31#31: *7 user "bob": password mismatch, client: 203.0.113.5, server: example.com, request: "GET /admin HTTP/1.1", host: "example.com"`.
//!
//! The user name, the request and the referrer in such an entry are the attacker's text
//! and nginx writes them unescaped, so a user name may itself contain
//! `, client: 6.6.6.6, server: ...`. An entry with more than one plausible `client:` is
//! therefore not attributed to anyone: it is left unparsed (counted and shown), never
//! used to blame an address the attacker chose.

use std::borrow::Cow;
use std::sync::LazyLock;

use memchr::memmem;

use super::{ErrorLogEvent, Record, RecordKind, parse_ip, text};
use crate::time::parse_error_log_time;

/// Parses one error log line.
pub fn parse(line: &[u8]) -> Option<Record<'_>> {
    if line.len() < 22 || line[19] != b' ' || line[20] != b'[' {
        return None;
    }
    let time = parse_error_log_time(&line[..19])?;
    let level_end = 21 + memchr::memchr(b']', &line[21..])?;
    let message = skip_ids(line.get(level_end + 2..)?);
    let mut record = Record {
        kind: Some(RecordKind::ErrorLog),
        time: Some(time),
        level: Some(text(&line[21..level_end])),
        ..Record::default()
    };
    let client_at = match client_positions(message).as_slice() {
        [] => None,
        [one] => Some(*one),
        _ => return None,
    };
    let text_end = client_at.map_or(message.len(), |(at, _)| at);
    record.remote_addr = client_at.map(|(_, ip)| ip);
    classify(&mut record, &message[..text_end]);
    if let Some((at, _)) = client_at {
        request_of(&mut record, &message[at..]);
    }
    record.message = Some(text(&message[..text_end]));
    Some(record)
}

/// Skips `PID#TID: ` and an optional `*CID ` connection number.
fn skip_ids(s: &[u8]) -> &[u8] {
    let after_pid = match super::find_pair(s, *b": ") {
        Some(p) if s[..p].iter().all(|b| b.is_ascii_digit() || *b == b'#') => &s[p + 2..],
        _ => s,
    };
    match after_pid.strip_prefix(b"*") {
        Some(rest) => {
            let n = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            rest.get(n + 1..).filter(|_| n > 0 && rest.get(n) == Some(&b' ')).unwrap_or(after_pid)
        }
        None => after_pid,
    }
}

/// Every `, client: IP` followed by `, server: ` (or the end): where it starts and the IP.
fn client_positions(message: &[u8]) -> Vec<(usize, std::net::IpAddr)> {
    const CLIENT: &[u8] = b", client: ";
    // Built once: `memmem::find_iter` builds a searcher on every call.
    static FINDER: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(CLIENT));
    FINDER
        .find_iter(message)
        .filter_map(|at| {
            let rest = &message[at + CLIENT.len()..];
            let end = memchr::memchr(b',', rest).unwrap_or(rest.len());
            let followed_ok = end == rest.len() || rest[end..].starts_with(b", server: ");
            let ip = parse_ip(&rest[..end]).filter(|_| followed_ok)?;
            Some((at, ip))
        })
        .collect()
}

fn classify<'a>(record: &mut Record<'a>, text_part: &'a [u8]) {
    let (event, user) = if let Some(user) = quoted_user(text_part, b"\" was not found in \"") {
        (ErrorLogEvent::BasicAuthFailure, Some(user))
    } else if let Some(user) = quoted_user(text_part, b"\": password mismatch") {
        (ErrorLogEvent::BasicAuthFailure, Some(user))
    } else if memmem::find(text_part, b"no user/password was provided for basic authentication").is_some() {
        (ErrorLogEvent::BasicAuthMissing, None)
    } else if text_part.starts_with(b"limiting requests, excess:") {
        (ErrorLogEvent::RateLimited, None)
    } else if memmem::find(text_part, b"access forbidden by rule").is_some() {
        (ErrorLogEvent::Forbidden, None)
    } else {
        (ErrorLogEvent::Other, None)
    };
    record.error_event = Some(event);
    record.user = user;
}

/// `user "NAME"<terminator>`: the name ends at the last terminator, since the name is
/// the attacker's text and may contain the terminator itself.
fn quoted_user<'a>(text_part: &'a [u8], terminator: &[u8]) -> Option<Cow<'a, str>> {
    let rest = text_part.strip_prefix(b"user \"")?;
    let end = memmem::rfind(rest, terminator)?;
    Some(text(&rest[..end]))
}

/// `, request: "METHOD PATH PROTO"` after the client.
fn request_of<'a>(record: &mut Record<'a>, tail: &'a [u8]) {
    const REQUEST: &[u8] = b", request: \"";
    static FINDER: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(REQUEST));
    let Some(at) = FINDER.find(tail) else {
        return;
    };
    let rest = &tail[at + REQUEST.len()..];
    let request = &rest[..memchr::memchr(b'"', rest).unwrap_or(rest.len())];
    let mut parts = request.splitn(3, |&b| b == b' ');
    if let (Some(m), Some(p)) = (parts.next(), parts.next()) {
        record.method = Some(text(m));
        record.path = Some(text(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_mismatch() {
        let line = br#"2024/01/15 10:23:45 [error] 31#31: *7 user "bob": password mismatch, client: 203.0.113.5, server: example.com, request: "GET /admin HTTP/1.1", host: "example.com""#;
        let r = parse(line).unwrap();
        assert_eq!(r.error_event, Some(ErrorLogEvent::BasicAuthFailure));
        assert_eq!(r.user.as_deref(), Some("bob"));
        assert_eq!(r.remote_addr, "203.0.113.5".parse().ok());
        assert_eq!(r.path.as_deref(), Some("/admin"));
        assert_eq!(r.time, Some(1705314225));
    }

    #[test]
    fn user_not_found_and_others() {
        let nf = br#"2024/01/15 10:23:45 [error] 31#31: *7 user "root" was not found in "/etc/nginx/.htpasswd", client: 198.51.100.2, server: _, request: "GET / HTTP/1.1", host: "x""#;
        let r = parse(nf).unwrap();
        assert_eq!((r.error_event, r.user.as_deref()), (Some(ErrorLogEvent::BasicAuthFailure), Some("root")));
        let lr = br#"2024/01/15 10:23:45 [error] 31#31: *9 limiting requests, excess: 10.500 by zone "one", client: 198.51.100.3, server: _, request: "GET / HTTP/1.1", host: "x""#;
        assert_eq!(parse(lr).unwrap().error_event, Some(ErrorLogEvent::RateLimited));
        let fb = br#"2024/01/15 10:23:45 [error] 31#31: *9 access forbidden by rule, client: 198.51.100.4, server: _, request: "GET /admin HTTP/1.1", host: "x""#;
        assert_eq!(parse(fb).unwrap().error_event, Some(ErrorLogEvent::Forbidden));
        let other = b"2024/01/15 10:23:45 [notice] 1#1: start worker processes";
        let r = parse(other).unwrap();
        assert_eq!((r.error_event, r.remote_addr), (Some(ErrorLogEvent::Other), None));
    }

    #[test]
    fn a_user_name_forging_a_client_is_not_attributed() {
        let line = br#"2024/01/15 10:23:45 [error] 31#31: *7 user "x": password mismatch, client: 6.6.6.6, server: y": password mismatch, client: 203.0.113.5, server: example.com, request: "GET / HTTP/1.1", host: "e""#;
        assert!(parse(line).is_none());
    }
}
