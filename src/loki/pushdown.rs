//! `--pushdown`: let Loki's queriers count, and pull raw lines only for the clients that
//! may have crossed a threshold.
//!
//! For each `--pushdown-query` (nginx access logs in the combined/main shape), one LogQL
//! metric query over the scan window counts 4xx answers per client address:
//!
//! ```text
//! sum by (remote_addr) (count_over_time({sel} | pattern `<remote_addr> - <_> [<_>] "<_>" <status> <_>`
//!     | status=~"4([0-8][0-9]|9[0-8])" [RANGE])) >= N
//! ```
//!
//! Facts this shape rests on (Loki docs, LogQL metric queries and the HTTP API):
//! - a range vector at evaluation time `t` covers `(t - RANGE, t]`; `query_range` evaluates
//!   at `start`, `start + step`, ... up to `end`. So with `RANGE = window + step + slack`
//!   every sliding window of the local engine lies inside some evaluated range: no client
//!   that crossed the threshold can be missed (more may be named; the exact check runs
//!   locally on their raw lines). `slack` absorbs the gap between Loki's entry timestamp
//!   and the time written in the line.
//! - 499 (the client closed the connection) is left out, as the local count leaves it; a
//!   label matcher's regex is fully anchored, so `4([0-8][0-9]|9[0-8])` is 400 to 498.
//! - a numeric label filter (`status >= 400`) fails the whole query on a non-numeric value
//!   (`-` in a malformed line); a regex match on the string does not.
//! - `max_query_series` (default 500) refuses answers with more series, so the threshold
//!   filter `>= N` is applied inside Loki; a refusal is reported, never read as "none".
//! - a query may return at most 11,000 points per series, which bounds the step.
//!
//! Candidates are validated as IP addresses before they are written into the follow-up
//! log query (a label value comes from log text), then read in batches with an RE2 line
//! filter anchored at the start of the line.

use std::net::IpAddr;

/// Points per series Loki answers at most.
const MAX_POINTS: i64 = 11_000;
/// Candidates per follow-up log query, to keep the regex and the URL small.
const BATCH: usize = 50;

/// The metric query for one access-log selector.
#[derive(Clone, Debug, PartialEq)]
pub struct CountQuery {
    /// The log selector it counts, as given.
    pub selector: String,
    /// The LogQL metric query.
    pub logql: String,
    /// Evaluation step, nanoseconds.
    pub step_ns: i64,
    /// Evaluate from `start`...
    pub start_ns: i64,
    /// ...to `end` inclusive (one step past the window, see the module notes).
    pub end_ns: i64,
}

/// Builds the 4xx-per-client count for `selector` over `[start, end)`.
///
/// `window_s` is the local sliding window, `threshold` its 4xx threshold, `slack_s` the
/// allowed gap between Loki's timestamp and the line's own.
pub fn count_4xx(
    selector: &str,
    start: i64,
    end: i64,
    window_s: i64,
    threshold: u64,
    slack_s: i64,
) -> CountQuery {
    let span_s = ((end - start) / 1_000_000_000).max(1);
    // Enough points to keep the range close to the window, few enough for Loki's limit.
    let step_s = (window_s / 10).max(span_s / (MAX_POINTS - 10) + 1).max(1);
    let range_s = window_s + step_s + slack_s;
    let logql = format!(
        "sum by (remote_addr) (count_over_time({} | pattern `<remote_addr> - <_> [<_>] \"<_>\" <status> <_>` \
         | status=~\"4([0-8][0-9]|9[0-8])\" [{range_s}s])) >= {threshold}",
        selector.trim()
    );
    let step_ns = step_s * 1_000_000_000;
    CountQuery { selector: selector.to_string(), logql, step_ns, start_ns: start, end_ns: end + step_ns }
}

/// Keeps the label values that are IP addresses, in their canonical text; the rest are
/// returned apart so the caller can report them.
pub fn valid_candidates(values: impl IntoIterator<Item = String>) -> (Vec<IpAddr>, Vec<String>) {
    let mut ips = Vec::new();
    let mut rejected = Vec::new();
    for v in values {
        match v.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => rejected.push(v),
        }
    }
    ips.sort();
    ips.dedup();
    (ips, rejected)
}

/// Log queries that read the raw lines of `candidates` from `selector`, in batches.
pub fn evidence_queries(selector: &str, candidates: &[IpAddr]) -> Vec<String> {
    candidates
        .chunks(BATCH)
        .map(|batch| {
            // Addresses are validated, so only `.` needs escaping; a backquoted LogQL
            // string takes the RE2 pattern as is.
            let alts: Vec<String> = batch.iter().map(|ip| ip.to_string().replace('.', "\\.")).collect();
            format!("{} |~ `^(?:{}) `", selector.trim(), alts.join("|"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_covers_every_sliding_window() {
        let q = count_4xx("{app=\"nginx\"}", 0, 3_600_000_000_000, 600, 60, 60);
        assert_eq!(q.step_ns, 60_000_000_000);
        assert!(q.logql.contains("[720s]"), "{}", q.logql);
        assert!(q.logql.ends_with(">= 60"));
        // 499 is the client giving up, never evidence (see `aggregate::is_4xx`).
        assert!(q.logql.contains("status=~\"4([0-8][0-9]|9[0-8])\""));
        assert_eq!(q.end_ns, 3_660_000_000_000);
    }

    #[test]
    fn long_windows_stay_under_the_point_limit() {
        let week = 7 * 86_400 * 1_000_000_000i64;
        let q = count_4xx("{a=\"b\"}", 0, week, 60, 5, 0);
        assert!((q.end_ns - q.start_ns) / q.step_ns < MAX_POINTS);
    }

    /// Two events 599 s apart cross a threshold of 2 in a 600 s window, but no 600 s range
    /// on a 60 s grid holds both: the range must be widened by the step.
    #[test]
    fn a_window_between_grid_points_is_still_covered() {
        let q = count_4xx("{a=\"b\"}", 0, 3_600_000_000_000, 600, 2, 0);
        let range_ns = 660 * 1_000_000_000;
        assert!(q.logql.contains("[660s]"), "{}", q.logql);
        let events = [30_000_000_000i64, 629_000_000_000];
        let hit = (0..)
            .map(|k| k * q.step_ns)
            .take_while(|t| *t <= q.end_ns)
            .any(|t| events.iter().all(|e| *e > t - range_ns && *e <= t));
        assert!(hit);
    }

    proptest::proptest! {
        /// Whenever `threshold` events fall in some window of the line's own time, some
        /// evaluated point counts at least that many by Loki's (later, by up to `slack`)
        /// timestamps: push-down never misses a client the local check would flag.
        #[test]
        fn no_crossing_is_missed(
            mut events in proptest::collection::vec((0i64..3_600, 0i64..60), 1..200),
            window in 10i64..900,
            threshold in 1u64..20,
        ) {
            events.sort();
            let (start, end) = (0, 3_600 * 1_000_000_000);
            // The scan reads what Loki stamped inside [start, end): a line stamped after
            // the end (its own time inside, its delay past it) is not read locally either.
            events.retain(|(line, delay)| (line + delay) * 1_000_000_000 < end);
            let q = count_4xx("{a=\"b\"}", start, end, window, threshold, 60);
            let range: i64 = q.logql.rsplit('[').next().unwrap().split('s').next().unwrap().parse().unwrap();
            let crossed = events.iter().any(|(t0, _)| {
                events.iter().filter(|(t, _)| (*t0..t0 + window).contains(t)).count() as u64 >= threshold
            });
            let found = (0..)
                .map(|k| q.start_ns + k * q.step_ns)
                .take_while(|t| *t <= q.end_ns)
                .any(|t| {
                    let count = events
                        .iter()
                        .map(|(line, delay)| (line + delay) * 1_000_000_000)
                        .filter(|ts| *ts > t - range * 1_000_000_000 && *ts <= t)
                        .count();
                    count as u64 >= threshold
                });
            proptest::prop_assert!(!crossed || found);
        }
    }

    #[test]
    fn only_addresses_reach_the_follow_up_query() {
        let (ips, rejected) = valid_candidates(["10.0.0.1".into(), "x) |= `".into(), "2001:db8::1".into()]);
        assert_eq!(rejected, ["x) |= `"]);
        let q = evidence_queries("{a=\"b\"}", &ips);
        assert_eq!(q, ["{a=\"b\"} |~ `^(?:10\\.0\\.0\\.1|2001:db8::1) `"]);
    }
}
