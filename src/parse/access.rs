//! Access log records from a compiled `log_format`: the captured values are decoded into
//! a [`Record`]. A line that matches the format's shape but has no valid status or client
//! address is not an access record (it is reported as unparsed).

use super::logformat::{CombinedHead, Escape, LogFormat, Matched, Var};
use super::{LineBytes, LineText, Record, RecordKind, parse_ip, text};
use crate::time;

/// Parses `line` with `format`.
pub fn parse_with_format<'a>(format: &LogFormat, line: &'a [u8]) -> Option<Record<'a>> {
    let mut record = Record::default();
    parse_into(format, line, &mut record).then_some(record)
}

/// Parses `line` with `format` into `record`, which must be empty (default); false when
/// the line is not such a record, and then `record` may hold part of it. The hot path:
/// a record is several hundred bytes, and filling it in place saves moving it.
pub fn parse_into<'a>(format: &LogFormat, line: &'a [u8], record: &mut Record<'a>) -> bool {
    fill(format, line, record).is_some()
}

fn fill<'a>(format: &LogFormat, line: &'a [u8], record: &mut Record<'a>) -> Option<()> {
    let mut caps = super::logformat::Captures::new();
    let bytes = LineBytes::of(line);
    let matched = format.capture_into(line, &bytes, &mut caps);
    if matched == Matched::No {
        return None;
    }
    record.kind = Some(RecordKind::Access);
    let line = LineText::scanned(line, format.escape, &bytes);
    if let Matched::Head(head) = matched {
        apply_head(record, &head, &line, format.escape)?;
    }
    let mut uri: Option<&[u8]> = None;
    let mut args: Option<&[u8]> = None;
    for &(var, raw) in &caps {
        match var {
            Var::Uri | Var::Args if is_empty(raw) => {}
            Var::Uri => uri = Some(raw),
            Var::Args => args = Some(raw),
            _ => apply(record, var, raw, &line, format.escape)?,
        }
    }
    if record.path.is_none() {
        record.path = uri.map(|u| join_uri_args(&line, u, args, format.escape));
    }
    (record.remote_addr.is_some() && record.status.is_some()).then_some(())
}

/// Parses a line that begins as `combined` and goes on with fields that are not read
/// ([`super::logformat::match_combined_with_extra`]) into `record` (empty; false when the
/// line is not such a record).
pub fn parse_combined_extra_into<'a>(line: &'a [u8], record: &mut Record<'a>) -> bool {
    fill_combined_extra(line, record).is_some()
}

fn fill_combined_extra<'a>(line: &'a [u8], record: &mut Record<'a>) -> Option<()> {
    let (head, user_agent) = super::logformat::match_combined_with_extra(line)?;
    record.kind = Some(RecordKind::Access);
    let text = LineText::new(line, Escape::Default);
    apply_head(record, &head, &text, Escape::Default)?;
    apply(record, Var::UserAgent, user_agent, &text, Escape::Default)?;
    (record.remote_addr.is_some() && record.status.is_some()).then_some(())
}

/// Stores the values of the combined head, each with its variable known here, so the
/// compiler drops the dispatch on it. `$body_bytes_sent` and `$http_referer` are not kept.
/// Inlined into both callers, as `match_combined_head` is.
#[inline(always)]
fn apply_head<'a>(
    record: &mut Record<'a>,
    head: &CombinedHead<'a>,
    line: &LineText<'a>,
    escape: Escape,
) -> Option<()> {
    let [addr, user, time, request, status, _, _] = head.values;
    apply(record, Var::RemoteAddr, addr, line, escape)?;
    apply(record, Var::RemoteUser, user, line, escape)?;
    apply(record, Var::TimeLocal, time, line, escape)?;
    apply(record, Var::Request, request, line, escape)?;
    apply(record, Var::Status, status, line, escape)
}

/// nginx logs `-` for an empty value.
fn is_empty(raw: &[u8]) -> bool {
    raw.is_empty() || raw == b"-"
}

/// Stores one variable's value, unless nginx logged it as empty; `None` when a value that
/// must be valid is not.
#[inline(always)]
fn apply<'a>(
    record: &mut Record<'a>,
    var: Var,
    raw: &'a [u8],
    line: &LineText<'a>,
    escape: Escape,
) -> Option<()> {
    if is_empty(raw) {
        return Some(());
    }
    let decoded = || line.decode(raw, escape);
    match var {
        Var::RemoteAddr => record.remote_addr = Some(parse_ip(raw)?),
        Var::Status => record.status = Some(parse_status(raw)?),
        Var::TimeLocal => record.time = time::parse_time_local(raw),
        Var::TimeIso8601 => record.time = time::parse_rfc3339(raw),
        Var::Msec => record.time = time::parse_epoch(raw),
        Var::Request => split_request(record, decoded()),
        Var::RequestMethod => record.method = Some(decoded()),
        Var::RequestUri => record.path = Some(decoded()),
        Var::RemoteUser => record.user = Some(decoded()),
        Var::UserAgent => record.user_agent = Some(decoded()),
        // X-Forwarded-For, when logged, is walked instead of a one-address header: behind
        // two trusted hops it holds the client where X-Real-IP holds the first hop.
        Var::ForwardedFor => record.forwarded_for = Some(decoded()),
        Var::ClientHeader => _ = record.forwarded_for.get_or_insert_with(decoded),
        Var::RequestTime => record.request_time = text(raw).parse().ok(),
        // The last two never reach here: `LogFormat::compile` gives them their roles.
        Var::Uri
        | Var::Args
        | Var::Referer
        | Var::Host
        | Var::Other
        | Var::RealipRemoteAddr
        | Var::ProxyProtocolAddr => {}
    }
    Some(())
}

/// A status is three digits, 100 to 599 (nginx also logs 499 and 444).
pub fn parse_status(raw: &[u8]) -> Option<u16> {
    match raw {
        [a @ b'1'..=b'5', b, c] if b.is_ascii_digit() && c.is_ascii_digit() => {
            Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => None,
    }
}

/// Splits `$request` (`METHOD URI PROTOCOL`). A malformed request line (TLS bytes sent
/// to a plain port, an empty request) keeps its text as the path so rules can see it.
fn split_request<'a>(record: &mut Record<'a>, request: std::borrow::Cow<'a, str>) {
    match super::split_text(request, split_http) {
        Ok((m, t)) => (record.method, record.path) = (Some(m), Some(t)),
        Err(whole) => record.path = Some(whole),
    }
}

/// `METHOD TARGET[ PROTOCOL]` with an upper-case method, or `None`.
fn split_http(s: &str) -> Option<(&str, &str)> {
    let (method, target) = super::request_words(s)?;
    let valid = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase()) && !target.is_empty();
    valid.then_some((method, target))
}

fn join_uri_args<'a>(
    line: &LineText<'a>,
    uri: &'a [u8],
    args: Option<&'a [u8]>,
    escape: Escape,
) -> std::borrow::Cow<'a, str> {
    match args {
        None => line.decode(uri, escape),
        Some(a) => {
            let (u, a) = (line.decode(uri, escape), line.decode(a, escape));
            format!("{u}?{a}").into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::logformat::{COMBINED, MAIN, unescape};
    use std::sync::Arc;

    fn combined() -> Arc<LogFormat> {
        Arc::new(LogFormat::compile("combined", COMBINED, Escape::Default).unwrap())
    }

    #[test]
    fn combined_record() {
        let line = br#"203.0.113.7 - alice [15/Jan/2024:10:23:45 +0000] "POST /login?next=%2F HTTP/1.1" 401 12 "-" "Mozilla/5.0""#;
        let r = parse_with_format(&combined(), line).unwrap();
        assert_eq!(r.remote_addr, "203.0.113.7".parse().ok());
        assert_eq!(r.status, Some(401));
        assert_eq!(r.method.as_deref(), Some("POST"));
        assert_eq!(r.path.as_deref(), Some("/login?next=%2F"));
        assert_eq!(r.user.as_deref(), Some("alice"));
        assert_eq!(r.time, Some(1705314225));
    }

    #[test]
    fn malformed_request_keeps_its_text() {
        let line = br#"198.51.100.9 - - [15/Jan/2024:10:23:45 +0000] "\x16\x03\x01\x00\xA5" 400 157 "-" "-""#;
        let r = parse_with_format(&combined(), line).unwrap();
        assert_eq!(r.status, Some(400));
        assert!(r.method.is_none());
        assert!(r.path.as_deref().unwrap().starts_with('\u{16}'));
        let empty = br#"198.51.100.9 - - [15/Jan/2024:10:23:45 +0000] "" 400 0 "-" "-""#;
        assert_eq!(parse_with_format(&combined(), empty).unwrap().path, None);
    }

    /// Bytes of a value as an attacker or nginx might write them: quotes raw and escaped,
    /// backslashes, multi-byte and invalid UTF-8.
    fn hostile_value() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        crate::parse::joined_pieces(
            vec![
                &b"a"[..],
                b" ",
                b"/",
                b"\"",
                b"\\",
                b"\\x22",
                b"\\\"",
                b"\\u0022",
                b"\xc3\xa9",
                b"\xff",
                b"-",
            ],
            0..8,
        )
    }

    proptest::proptest! {
        /// The per-line shortcuts (counting quotes once instead of searching each value;
        /// slicing a plain line instead of decoding each value) give the same captures
        /// and the same text as checking and decoding every value.
        #[test]
        fn line_shortcuts_agree_with_checking_each_value(
            user in hostile_value(), request in hostile_value(), referer in hostile_value(), ua in hostile_value(),
        ) {
            let json = Arc::new(LogFormat::compile(
                "j", r#"{"ip":"$remote_addr","u":"$remote_user","r":"$request","s":$status,"ref":"$http_referer","ua":"$http_user_agent"}"#, Escape::Json,
            ).unwrap());
            for (format, shape) in [(combined(), &b"1.2.3.4 - U [15/Jan/2024:10:23:45 +0000] \"R\" 404 1 \"F\" \"A\""[..]), (json, br#"{"ip":"1.2.3.4","u":"U","r":"R","s":404,"ref":"F","ua":"A"}"#)] {
                let mut line = Vec::new();
                for &b in shape {
                    match b {
                        b'U' => line.extend_from_slice(&user),
                        b'R' => line.extend_from_slice(&request),
                        b'F' => line.extend_from_slice(&referer),
                        b'A' => line.extend_from_slice(&ua),
                        _ => line.push(b),
                    }
                }
                let fast = format.captures(&line);
                proptest::prop_assert_eq!(&fast, &format.captures_checking_each_value(&line));
                let text = LineText::new(&line, format.escape);
                for (_, raw) in fast.iter().flatten() {
                    let expected = crate::parse::text_cow(unescape(raw, format.escape));
                    proptest::prop_assert_eq!(text.decode(raw, format.escape), expected);
                }
            }
        }
    }

    fn custom(definition: &str) -> LogFormat {
        LogFormat::compile("custom", definition, Escape::Default).unwrap()
    }

    /// Behind nginx's realip module `$remote_addr` is the client and `$realip_remote_addr`
    /// the hop it came through; whichever is logged first, the client is `$remote_addr`.
    #[test]
    fn remote_addr_is_the_client_whichever_order_realip_logs_it_in() {
        let line = br#"198.51.100.23 (203.0.113.250) [15/Jan/2024:10:23:45 +0000] "GET / HTTP/1.1" 404"#;
        let first = custom(r#"$remote_addr ($realip_remote_addr) [$time_local] "$request" $status"#);
        let second = custom(r#"$realip_remote_addr ($remote_addr) [$time_local] "$request" $status"#);
        assert_eq!(parse_with_format(&first, line).unwrap().remote_addr, "198.51.100.23".parse().ok());
        assert_eq!(parse_with_format(&second, line).unwrap().remote_addr, "203.0.113.250".parse().ok());
        let alone = custom(r#"$realip_remote_addr [$time_local] "$request" $status"#);
        let line = br#"203.0.113.250 [15/Jan/2024:10:23:45 +0000] "GET / HTTP/1.1" 404"#;
        assert_eq!(parse_with_format(&alone, line).unwrap().remote_addr, "203.0.113.250".parse().ok());
    }

    /// A header naming the client alone is the proxy's claim, kept where X-Forwarded-For
    /// is kept; a logged X-Forwarded-For wins over it, in either order.
    #[test]
    fn a_client_header_is_a_forwarded_claim_unless_x_forwarded_for_is_logged() {
        let line = br#"172.70.1.1 [15/Jan/2024:10:23:45 +0000] "GET / HTTP/1.1" 404 "198.51.100.7" "-""#;
        for header in
            ["http_x_real_ip", "http_cf_connecting_ip", "http_true_client_ip", "http_fastly_client_ip"]
        {
            let f = custom(&format!(
                r#"$remote_addr [$time_local] "$request" $status "${header}" "$http_x_forwarded_for""#
            ));
            let r = parse_with_format(&f, line).unwrap();
            assert_eq!(
                (r.remote_addr, r.forwarded_for.as_deref()),
                ("172.70.1.1".parse().ok(), Some("198.51.100.7"))
            );
        }
        let both = br#"172.70.1.1 [15/Jan/2024:10:23:45 +0000] "GET / HTTP/1.1" 404 "198.51.100.7" "203.0.113.9, 10.0.0.1""#;
        let header_first = custom(
            r#"$remote_addr [$time_local] "$request" $status "$http_x_real_ip" "$http_x_forwarded_for""#,
        );
        let xff_first = custom(
            r#"$remote_addr [$time_local] "$request" $status "$http_x_forwarded_for" "$http_x_real_ip""#,
        );
        let swapped = br#"172.70.1.1 [15/Jan/2024:10:23:45 +0000] "GET / HTTP/1.1" 404 "203.0.113.9, 10.0.0.1" "198.51.100.7""#;
        for (f, line) in [(header_first, &both[..]), (xff_first, &swapped[..])] {
            assert_eq!(
                parse_with_format(&f, line).unwrap().forwarded_for.as_deref(),
                Some("203.0.113.9, 10.0.0.1")
            );
        }
    }

    /// `$proxy_protocol_addr` is the line's address alone, and the balancer's claim beside
    /// `$remote_addr`.
    #[test]
    fn a_proxy_protocol_address_beside_remote_addr_is_a_claim() {
        let line = br#"198.51.100.7 10.0.0.9 [15/Jan/2024:10:23:45 +0000] "GET / HTTP/1.1" 404"#;
        let both = custom(r#"$proxy_protocol_addr $remote_addr [$time_local] "$request" $status"#);
        let r = parse_with_format(&both, line).unwrap();
        assert_eq!(
            (r.remote_addr, r.forwarded_for.as_deref()),
            ("10.0.0.9".parse().ok(), Some("198.51.100.7"))
        );
        let alone = custom(r#"$proxy_protocol_addr $request_length [$time_local] "$request" $status"#);
        let r = parse_with_format(&alone, line).unwrap();
        assert_eq!((r.remote_addr, r.forwarded_for), ("198.51.100.7".parse().ok(), None));
    }

    #[test]
    fn a_format_with_only_a_client_header_says_why_it_is_not_enough() {
        let f = r#"$http_x_real_ip [$time_local] "$request" $status"#;
        let err = LogFormat::compile("custom", f, Escape::Default).unwrap_err().to_string();
        assert!(err.contains("$realip_remote_addr") && err.contains("--trusted-proxy"), "{err}");
    }

    #[test]
    fn main_keeps_forwarded_for_and_rejects_bad_values() {
        let f = Arc::new(LogFormat::compile("main", MAIN, Escape::Default).unwrap());
        let line = br#"10.0.0.2 - - [15/Jan/2024:10:23:45 +0000] "GET / HTTP/1.1" 200 1 "-" "ua" "203.0.113.5, 10.0.0.1""#;
        let r = parse_with_format(&f, line).unwrap();
        assert_eq!(r.forwarded_for.as_deref(), Some("203.0.113.5, 10.0.0.1"));
        let bad_status = br#"10.0.0.2 - - [15/Jan/2024:10:23:45 +0000] "GET / HTTP/1.1" 2000 1 "-" "ua" "-""#;
        assert!(parse_with_format(&f, bad_status).is_none());
        let bad_ip = br#"10.0.0.999 - - [15/Jan/2024:10:23:45 +0000] "GET / HTTP/1.1" 200 1 "-" "ua" "-""#;
        assert!(parse_with_format(&f, bad_ip).is_none());
    }
}
