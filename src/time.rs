//! Event-time parsing for the timestamp shapes that web servers and applications write.
//!
//! Everything becomes Unix seconds (`i64`, UTC). Decisions use one-second resolution
//! because nginx's `$time_local` has no finer grain. The parsers are hand-written because
//! they run once per line on the hot path; each one rejects rather than guesses.

/// Parses nginx's `$time_local`: `10/Oct/2000:13:55:36 -0700`.
pub fn parse_time_local(s: &[u8]) -> Option<i64> {
    use std::cell::Cell;
    // Consecutive lines of a busy log mostly share their second: remember the last one
    // this thread read. As integers, each read back in the width it was written: a copy
    // of a whole `([u8; 26], Option<i64>)` was read in other widths than it was stored
    // in, which the processor cannot forward from its store buffer (perf: this compare
    // was the hottest spot of a `combined` line's parsing, 9% of it).
    thread_local! {
        static HEAD: Cell<u128> = const { Cell::new(0) };
        static TAIL: Cell<(u64, u16)> = const { Cell::new((0, 0)) };
        /// The value of the remembered time; [`NOT_REMEMBERED`] when there is none.
        static VALUE: Cell<i64> = const { Cell::new(NOT_REMEMBERED) };
    }
    const NOT_REMEMBERED: i64 = i64::MIN;
    let Ok(key) = <[u8; 26]>::try_from(s) else { return read_time_local(s) };
    let head = u128::from_le_bytes(key[..16].try_into().expect("16 of 26 bytes"));
    let tail = (
        u64::from_le_bytes(key[16..24].try_into().expect("8 of 26 bytes")),
        u16::from_le_bytes([key[24], key[25]]),
    );
    let value = VALUE.get();
    if value != NOT_REMEMBERED && HEAD.get() == head && TAIL.get() == tail {
        return Some(value);
    }
    let value = read_time_local(s);
    HEAD.set(head);
    TAIL.set(tail);
    VALUE.set(value.unwrap_or(NOT_REMEMBERED));
    value
}

fn read_time_local(s: &[u8]) -> Option<i64> {
    if s.len() < 20 || s[2] != b'/' || s[6] != b'/' || s[11] != b':' {
        return None;
    }
    let day = digits(&s[0..2])?;
    let month = month_number(&s[3..6])?;
    let year = digits(&s[7..11])?;
    let secs = clock(&s[12..20])?;
    let offset = match s.len() {
        20 => 0,
        26 if s[20] == b' ' => numeric_offset(&s[21..26])?,
        _ => return None,
    };
    Some(civil_seconds(year, month, day)? + secs - offset)
}

/// Parses RFC 3339 / ISO 8601 date-times: `2024-01-15T10:23:45Z`, with an optional
/// fraction (dropped), a `Z` or `±hh:mm`/`±hhmm` offset, or no offset (taken as UTC).
/// A space instead of `T` is accepted, as many application loggers write it.
pub fn parse_rfc3339(s: &[u8]) -> Option<i64> {
    if s.len() < 19 || s[4] != b'-' || s[7] != b'-' || !matches!(s[10], b'T' | b't' | b' ') {
        return None;
    }
    let year = digits(&s[0..4])?;
    let month = digits(&s[5..7])?;
    let day = digits(&s[8..10])?;
    let secs = clock(&s[11..19])?;
    let mut rest = &s[19..];
    if let Some(after_dot) = rest.strip_prefix(b".").or_else(|| rest.strip_prefix(b",")) {
        let n = after_dot.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        rest = &after_dot[n..];
    }
    let offset = match rest {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] | [sign @ (b'+' | b'-'), h1, h2, m1, m2] => {
            numeric_offset(&[*sign, *h1, *h2, *m1, *m2])?
        }
        _ => return None,
    };
    Some(civil_seconds(year, month, day)? + secs - offset)
}

/// Parses the nginx error log's `2024/01/15 10:23:45` (server local time, taken as UTC).
pub fn parse_error_log_time(s: &[u8]) -> Option<i64> {
    if s.len() != 19 || s[4] != b'/' || s[7] != b'/' || s[10] != b' ' {
        return None;
    }
    let secs = clock(&s[11..19])?;
    Some(civil_seconds(digits(&s[0..4])?, digits(&s[5..7])?, digits(&s[8..10])?)? + secs)
}

/// Parses Unix epoch time as nginx's `$msec` writes it (`1700000000.123`), or as
/// milliseconds/nanoseconds when the integer part is too large to be seconds.
pub fn parse_epoch(s: &[u8]) -> Option<i64> {
    let int_len = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if int_len == 0 || int_len > 19 {
        return None;
    }
    let tail = &s[int_len..];
    if !(tail.is_empty() || (tail[0] == b'.' && tail[1..].iter().all(u8::is_ascii_digit))) {
        return None;
    }
    let n: i64 = std::str::from_utf8(&s[..int_len]).ok()?.parse().ok()?;
    Some(epoch_to_seconds(n))
}

/// Scales an integer epoch to seconds by its magnitude (s, ms, µs, ns).
pub fn epoch_to_seconds(n: i64) -> i64 {
    match n {
        n if n < 100_000_000_000 => n,
        n if n < 100_000_000_000_000 => n / 1_000,
        n if n < 100_000_000_000_000_000 => n / 1_000_000,
        n => n / 1_000_000_000,
    }
}

/// Tries every shape this module knows, for fields whose format is not fixed
/// (JSON and logfmt application logs).
pub fn parse_any(s: &[u8]) -> Option<i64> {
    parse_rfc3339(s)
        .or_else(|| parse_time_local(s))
        .or_else(|| parse_epoch(s).filter(|t| PLAUSIBLE_EPOCH.contains(t)))
        .or_else(|| parse_error_log_time(s))
}

/// The Unix seconds (2000 to 2100) a number in an application's time field is read as a
/// time in: outside, it is a duration (`"time": 0.25`) or a count, which as a time put
/// every event of a log in 1970, seconds apart.
const PLAUSIBLE_EPOCH: std::ops::Range<i64> = 946_684_800..4_102_444_800;

/// Formats Unix seconds as RFC 3339 UTC, for reports.
pub fn format_rfc3339(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

fn digits(s: &[u8]) -> Option<i64> {
    s.iter().try_fold(0i64, |acc, &b| b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0')))
}

fn clock(s: &[u8]) -> Option<i64> {
    if s[2] != b':' || s[5] != b':' {
        return None;
    }
    let (h, m, sec) = (digits(&s[0..2])?, digits(&s[3..5])?, digits(&s[6..8])?);
    (h < 24 && m < 60 && sec < 61).then_some(h * 3600 + m * 60 + sec)
}

fn numeric_offset(s: &[u8]) -> Option<i64> {
    let sign = match s[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    Some(sign * (digits(&s[1..3])? * 3600 + digits(&s[3..5])? * 60))
}

fn month_number(s: &[u8]) -> Option<i64> {
    const MONTHS: [&[u8; 3]; 12] =
        [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];
    MONTHS.iter().position(|m| m[..] == *s).map(|i| i as i64 + 1)
}

/// Days-from-civil (proleptic Gregorian), after Howard Hinnant's algorithm.
fn civil_seconds(year: i64, month: i64, day: i64) -> Option<i64> {
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400)
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

/// Parses a duration such as `90s`, `10m`, `2h`, `1d` into seconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let n: i64 = s[..split].parse().ok()?;
    let unit = match &s[split..] {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(unit).filter(|&v| v > 0)
}

/// The event times a scan of files or stdin counts (`--since`, `--from`, `--to`): from
/// `start_ns` inclusive to `end_ns` exclusive, Unix nanoseconds, either end open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeRange {
    pub start_ns: Option<i64>,
    pub end_ns: Option<i64>,
}

impl TimeRange {
    /// Whether a line of event time `time` (Unix seconds, as records hold it) is inside.
    /// A line without a time is: it counts in every window, so it can only make a scan
    /// more cautious.
    pub fn holds(&self, time: Option<i64>) -> bool {
        let Some(t) = time else { return true };
        let ns = t.saturating_mul(1_000_000_000);
        self.start_ns.is_none_or(|s| ns >= s) && self.end_ns.is_none_or(|e| ns < e)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_time_range_holds_its_start_not_its_end_and_every_untimed_line() {
        let r = TimeRange { start_ns: Some(100_000_000_000), end_ns: Some(200_000_000_000) };
        assert!(r.holds(Some(100)) && r.holds(Some(199)) && r.holds(None));
        assert!(!r.holds(Some(99)) && !r.holds(Some(200)));
        let open = TimeRange { start_ns: None, end_ns: Some(0) };
        assert!(open.holds(Some(-1)) && !open.holds(Some(i64::MAX)));
    }

    use super::*;

    #[test]
    fn time_local_with_offset() {
        // 2000-10-10T20:55:36Z
        assert_eq!(parse_time_local(b"10/Oct/2000:13:55:36 -0700"), Some(971211336));
    }

    proptest::proptest! {
        /// The remembered last time never answers for another: runs of times that differ
        /// in any part of the key (day, year, second, offset) or do not parse at all read
        /// as they do without it.
        #[test]
        fn the_remembered_time_answers_only_for_itself(picks in proptest::collection::vec(0usize..8, 1..40)) {
            let times: [&[u8]; 8] = [
                b"10/Oct/2000:13:55:36 -0700",
                b"11/Oct/2000:13:55:36 -0700",
                b"10/Oct/2001:13:55:36 -0700",
                b"10/Oct/2000:13:55:37 -0700",
                b"10/Oct/2000:13:55:36 -0701",
                b"10/Oct/2000:13:55:36 +0700",
                b"10/Foo/2000:13:55:36 -0700",
                b"10/Oct/2000:13:55:36",
            ];
            for i in picks {
                proptest::prop_assert_eq!(parse_time_local(times[i]), read_time_local(times[i]), "{}", i);
            }
        }
    }

    #[test]
    fn rfc3339_shapes_agree() {
        let want = Some(971211336);
        assert_eq!(parse_rfc3339(b"2000-10-10T20:55:36Z"), want);
        assert_eq!(parse_rfc3339(b"2000-10-10T20:55:36.123456789Z"), want);
        assert_eq!(parse_rfc3339(b"2000-10-10T13:55:36-07:00"), want);
        assert_eq!(parse_rfc3339(b"2000-10-10 22:55:36+0200"), want);
        assert_eq!(parse_error_log_time(b"2000/10/10 20:55:36"), want);
        assert_eq!(parse_epoch(b"971211336.120"), want);
        assert_eq!(parse_epoch(b"971211336120"), want);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse_rfc3339(b"2000-13-10T20:55:36Z"), None);
        assert_eq!(parse_time_local(b"10/Foo/2000:13:55:36 -0700"), None);
        assert_eq!(parse_rfc3339(b"2000-10-10T20:55:36Zjunk"), None);
        assert_eq!(parse_epoch(b"12ab"), None);
    }

    /// A number in an application's time field is a time only between 2000 and 2100 (in
    /// seconds, or scaled from ms, µs or ns); a duration is none. nginx's `$msec` is read
    /// by `parse_epoch` itself, unfiltered.
    #[test]
    fn an_application_number_is_a_time_only_when_plausible() {
        assert_eq!(parse_any(b"0.25"), None);
        assert_eq!(parse_any(b"12"), None);
        assert_eq!(parse_any(b"1705312800"), Some(1_705_312_800));
        assert_eq!(parse_any(b"1705312800123"), Some(1_705_312_800));
        assert_eq!(parse_any(b"4102444800"), None);
        assert_eq!(parse_epoch(b"12"), Some(12));
    }

    #[test]
    fn formats_back() {
        assert_eq!(format_rfc3339(971211336), "2000-10-10T20:55:36Z");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m"), Some(600));
        assert_eq!(parse_duration("0m"), None);
        assert_eq!(parse_duration("10"), None);
    }
}
