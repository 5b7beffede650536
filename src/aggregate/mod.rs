//! Aggregation: records to per-client and per-account evidence. An [`Aggregator`] is
//! owned by one worker and merged with the others at the end; every structure in it
//! merges commutatively, so the result never depends on line order or on how the
//! input was cut into chunks.

pub mod bounded;
pub mod dense;
pub mod requests;
pub mod shared;
pub mod topk;
pub mod window;

use compact_str::CompactString;
use litemap::LiteMap;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Hash maps keyed by attacker-chosen values use foldhash: fast, and seeded per process
/// so that colliding keys cannot be precomputed.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

use serde::Serialize;

use crate::client::{ClientKey, ClientPolicy};
use crate::detect::{Counts, Hit, RuleId, RuleSet};
use crate::parse::{Record, RecordKind};
use bounded::{Light, LightEvent, Limits, Summary};
use shared::SharedLights;
use topk::TopK;
use window::{DistinctTimes, EventTimes};

/// How many evidence lines are kept per client or account, and unparsed lines per scan.
pub const SAMPLES: usize = 3;
/// How many unparsed lines are kept to show.
pub const UNPARSED_SAMPLES: usize = 5;
/// Distinct clients remembered per account before counting stops growing the set.
pub const ACCOUNT_CLIENTS: usize = 1024;
/// Requests slower than this (seconds) count as slow in the incident summary.
pub const SLOW_REQUEST_SECONDS: f64 = 5.0;
/// Evidence text is cut to this many characters.
const SAMPLE_CHARS: usize = 400;

/// A full client record in its table: the record, its box and its key's slot.
const RECORD_BYTES: usize = std::mem::size_of::<ClientStats>() + 64;
/// An account record in its table, the same way (its name is counted apart).
const ACCOUNT_BYTES: usize = std::mem::size_of::<AccountStats>() + 64;

/// Bytes a record's [`LiteMap`] of `len` entries holds: entries are inserted one at a
/// time, so its vector's capacity doubles from four (`Vec`'s least for entries this size).
fn small_map_bytes<K, V>(len: usize) -> usize {
    let capacity = if len == 0 { 0 } else { len.next_power_of_two().max(4) };
    capacity * std::mem::size_of::<(K, V)>()
}

/// One parsed line on its way into the aggregates.
pub struct Seen<'s, 'r> {
    /// The source counted in the stats (a pod/container, or the input).
    pub source: &'s str,
    /// Where the line stands in its input.
    pub at: LineRef<'s>,
    /// The format that read it.
    pub format: &'s str,
    /// The line as read, for evidence.
    pub raw: &'s [u8],
    pub record: &'s Record<'r>,
    /// The rules it hit.
    pub hits: &'s [Hit],
}

/// A hash that is the same in every worker of this process (so distinct counts merge),
/// and seeded per process (so colliding values cannot be precomputed).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    process_hasher().hash_one(bytes)
}

/// An account's key in the sketch: its realm, a NUL and its name, through the process's
/// seeded hasher as [`stable_hash`] uses, without building the joined text (a spray of
/// one-off names folds thousands at a time).
fn account_hash(realm: &str, user: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = process_hasher().build_hasher();
    h.write(realm.as_bytes());
    h.write_u8(0);
    h.write(user.as_bytes());
    h.finish()
}

/// The hasher behind [`stable_hash`] and [`client_hash`], with the process's seed.
fn process_hasher() -> foldhash::fast::FixedState {
    use std::hash::BuildHasher;
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| std::collections::hash_map::RandomState::new().hash_one(0u8));
    foldhash::fast::FixedState::with_seed(seed)
}

/// A client's age for folding: last seen, then an order of keys that is the same in every
/// run, so that which of equals is folded (and so the report) does not change from one
/// run of a scan to the next.
fn age(key: &ClientKey, last_seen: Option<i64>) -> bounded::Age {
    (last_seen.unwrap_or(i64::MIN), tie_order(key))
}

/// [`age`] for an account (its name's [`tie_order`] kept in the record).
fn account_age(a: &AccountStats) -> bounded::Age {
    (a.last_seen.unwrap_or(i64::MIN), a.tie)
}

/// A fixed order of keys for folding's ties. The per-process key of [`stable_hash`] made
/// the accounts folded at a tie, and so the accounts reported, differ from run to run.
fn tie_order<K: std::hash::Hash + ?Sized>(key: &K) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(7).hash_one(key)
}

/// A client's hash for the sketch and for distinct counts, like [`stable_hash`] but of
/// the key's one integer (see its `Hash`): writing the key as text first cost ~1,400
/// instructions, paid for every failed login and every new client once folding began.
fn client_hash(key: ClientKey) -> u64 {
    use std::hash::BuildHasher;
    process_hasher().hash_one(key)
}

/// The sketch's bound on what `key` had when it was folded before (0 when nothing was).
fn folded_before(summary: &Summary, key: ClientKey) -> u64 {
    if summary.clients.max_evidence > 0 { summary.estimate(client_hash(key)) } else { 0 }
}

/// [`folded_before`] for the account of `hash` ([`account_hash`]).
fn account_folded_before(summary: &Summary, hash: u64) -> u64 {
    if summary.folds_accounts() { summary.account_estimate(hash) } else { 0 }
}

/// Whether `user` names an account: not empty and not a placeholder of dashes (nginx's
/// `-` for no remote user; Nextcloud's `--` for a request made before any login, whose
/// message names the account tried).
fn names_account(user: &&str) -> bool {
    user.bytes().any(|b| b != b'-')
}

/// How account names read from log lines are told apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountCase {
    /// `Admin`, `ADMIN` and `admin` are one account, as most applications' logins and
    /// every e-mail address treat them. Counted apart, an attacker who spreads guesses
    /// over a name's spellings stays under the per-account threshold with each.
    #[default]
    Insensitive,
    /// Names are compared as logged (an application whose `Bob` and `bob` are two people).
    Sensitive,
}

impl AccountCase {
    /// The name `user` is counted under: itself, or (case-insensitive) lower-cased. Only
    /// lines with a failed login get here, so the allocation of a mixed-case name is rare.
    pub fn key<'u>(self, user: &'u str) -> std::borrow::Cow<'u, str> {
        match self {
            AccountCase::Sensitive => user.into(),
            AccountCase::Insensitive if user.is_ascii() && !user.bytes().any(|b| b.is_ascii_uppercase()) => {
                user.into()
            }
            AccountCase::Insensitive if user.is_ascii() => user.to_ascii_lowercase().into(),
            // Not `is_uppercase` alone: a title-case letter (`ǅ`) also lower-cases.
            AccountCase::Insensitive => match user.to_lowercase() {
                lower if lower == user => user.into(),
                lower => lower.into(),
            },
        }
    }
}

/// The account a line names, and the realm a failed login against it counts in (one per
/// line): the record's own user field, else a rule's capture. The realm is that of the
/// rule that captured the name when it counts accounts (its pattern read the name, and
/// knows whose accounts they are), else of the first rule that does.
fn failed_account<'s>(seen: &'s Seen<'_, '_>, rules: &'s RuleSet) -> (Option<&'s str>, Option<&'s str>) {
    let counts = |h: &Hit| {
        let r = rules.rule(h.rule);
        (r.auth_failure && matches!(r.counts, Counts::Account | Counts::Both)).then_some(r.realm.as_str())
    };
    let first_counting = || seen.hits.iter().find_map(counts);
    if let Some(user) = seen.record.user.as_deref().filter(names_account) {
        return (Some(user), first_counting());
    }
    let captured = seen.hits.iter().find_map(|h| h.user.as_deref().filter(names_account).map(|u| (u, h)));
    match captured {
        Some((user, hit)) => (Some(user), counts(hit).or_else(first_counting)),
        None => (None, None),
    }
}

/// Whether `record` carried an X-Forwarded-For (or a header naming the client, see
/// [`Record::forwarded_for`]) naming another address than the hop that
/// sent it, from a hop that is not a trusted proxy, so that the hop itself is the client
/// ([`ClientPolicy::resolve`]). Behind nginx's realip module `$remote_addr` is already the
/// header's last address: that client forwarded for no one.
fn forwarded_unbelieved(record: &Record<'_>, policy: &ClientPolicy) -> bool {
    let (Some(xff), Some(remote)) = (record.forwarded_for.as_deref(), record.remote_addr) else {
        return false;
    };
    let last = xff.rsplit(',').next().unwrap_or(xff).trim();
    crate::parse::parse_ip(last.as_bytes()).is_some_and(|hop| hop != remote) && !policy.is_trusted(remote)
}

/// Whether a line counts as evidence against its client: a rule hit or a 4xx answer.
fn is_evidence(seen: &Seen<'_, '_>) -> bool {
    let r = seen.record;
    !seen.hits.is_empty() || (r.kind == Some(RecordKind::Access) && r.status.is_some_and(is_4xx))
}

/// A 4xx answer counted as evidence against a client. Not 499: that is nginx's note that
/// the client closed the connection before the answer, which a slow or failing upstream
/// makes every patient client do (an API poller got a 499 every few seconds of an outage,
/// and crossed the 4xx threshold for it). It is counted in the incident instead.
fn is_4xx(status: u16) -> bool {
    (400..500).contains(&status) && status != CLOSED_BY_CLIENT
}

/// nginx's status for a request whose client closed the connection before the answer.
pub const CLOSED_BY_CLIENT: u16 = 499;

/// Where a line came from.
#[derive(Clone, Copy, Debug)]
pub struct LineRef<'s> {
    /// Shared with the samples taken from it (see [`Sample::source`]).
    pub source: &'s Arc<str>,
    pub line: u64,
}

/// One line kept as evidence or as an example of what could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct Sample {
    /// Event time, when the line had one (sorts first, so the earliest are kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<i64>,
    /// The source's name, shared: under a spray nearly every line is a sample of a new
    /// client or account, and a copy of the name was an allocation of each.
    pub source: Arc<str>,
    pub line: u64,
    pub text: Box<str>,
}

impl Sample {
    fn new(at: LineRef<'_>, time: Option<i64>, raw: &[u8]) -> Sample {
        // A spray of one-off clients builds a sample for nearly every line.
        let text = crate::parse::line_text(raw);
        Sample { time, source: Arc::clone(at.source), line: at.line, text: shortened(&text) }
    }
}

/// The first [`SAMPLE_CHARS`] characters of `text`, with an ellipsis when it was cut.
fn shortened(text: &str) -> Box<str> {
    // No more bytes than that means no more characters either: nothing to count.
    if text.len() <= SAMPLE_CHARS {
        return text.into();
    }
    match text.char_indices().nth(SAMPLE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]).into(),
        None => text.into(),
    }
}

/// Kept samples, sorted, the first held in place: under a spray nearly every record is
/// made for one line and soon folded, and a list of its own was an allocation and a free
/// of each.
pub type Samples = smallvec::SmallVec<[Sample; 1]>;

/// Bytes `v` holds outside itself: none while its items fit in place.
pub(crate) fn spilled_bytes<A: smallvec::Array>(v: &smallvec::SmallVec<A>) -> usize {
    if v.spilled() { v.capacity() * std::mem::size_of::<A::Item>() } else { 0 }
}

/// Offers the line at `at` as a sample, building it only when it would be kept (most
/// evidence lines of a busy client are not).
fn offer_sample(samples: &mut Samples, n: usize, at: LineRef<'_>, time: Option<i64>, raw: &[u8]) {
    let later = |last: &Sample| (last.time, &*last.source, last.line) <= (time, &**at.source, at.line);
    if samples.len() >= n && samples.last().is_some_and(later) {
        return;
    }
    keep_sample(samples, n, Sample::new(at, time, raw));
}

/// Keeps the `n` smallest samples, so the kept set does not depend on arrival order.
fn keep_sample(samples: &mut Samples, n: usize, sample: Sample) {
    if samples.len() >= n && samples.last().is_some_and(|last| *last <= sample) {
        return;
    }
    if samples.len() == samples.inline_size() && !samples.spilled() {
        // Leaving the record: room for all `n` at once.
        samples.reserve_exact(n.saturating_sub(samples.len()));
    }
    let at = samples.partition_point(|s| *s < sample);
    samples.insert(at, sample);
    samples.truncate(n);
}

/// Bytes a record's samples hold outside it: [`keep_sample`] reserves the whole list
/// when it leaves the record.
fn samples_bytes(samples: &Samples) -> usize {
    // Not the source's name: it is shared.
    let text = samples.iter().map(|s| s.text.len()).sum::<usize>();
    spilled_bytes(samples) + text
}

fn merge_samples(into: &mut Samples, from: Samples, n: usize) {
    for s in from {
        keep_sample(into, n, s);
    }
}

/// Why a line was counted as unparsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnparsedReason {
    /// Nothing on the line.
    Empty,
    /// Longer than `--max-line-bytes`.
    Oversized,
    /// No format read it (or, for an error log entry, its client was ambiguous).
    Unrecognized,
}

impl UnparsedReason {
    /// The name used in `stats.unparsed_by_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            UnparsedReason::Empty => "empty",
            UnparsedReason::Oversized => "oversized",
            UnparsedReason::Unrecognized => "unrecognized",
        }
    }
}

/// Counts for one source (a file, stdin, or a pod/container in a kubectl stream).
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct SourceStats {
    pub lines: u64,
    pub parsed: u64,
    pub unparsed: u64,
    /// Lines read per format name.
    pub formats: BTreeMap<String, u64>,
}

/// For `skip_serializing_if`: a count of zero is left out of the document.
pub(crate) fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Scan-wide counts: every line is accounted for.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Stats {
    pub lines: u64,
    pub parsed: u64,
    pub unparsed: u64,
    pub bytes: u64,
    /// Lines longer than the limit (also counted in `unparsed`).
    pub oversized: u64,
    /// Partial container lines whose end never arrived.
    pub unfinished_partial_lines: u64,
    /// Parsed records that carried no event time.
    pub untimed: u64,
    /// Detections on records with no client address.
    pub unattributed_detections: u64,
    /// The latest event time seen (Unix seconds), of the lines counted.
    pub last_event_time: Option<i64>,
    /// Parsed lines whose event time is outside `--since`/`--from`/`--to`: read, and in
    /// no count but this one and `lines`, `parsed` and their source's.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub outside_time_range: u64,
    /// JSON or logfmt lines shaped as access records whose client field held no usable
    /// address (see [`Record::client_unreadable`]): read as application lines.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub access_without_client: u64,
    /// Clients whose request times were dropped to stay within `--max-memory` (see
    /// [`requests`]): their busiest windows are lower bounds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub request_times_dropped: u64,
    /// Under `--follow`: parsed lines whose event time was already before what the
    /// last check kept (see [`Aggregator::late_before`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub late_lines: u64,
    pub sources: BTreeMap<String, SourceStats>,
    /// `unparsed`, by why: `empty`, `oversized`, `unrecognized`.
    #[serde(default)]
    pub unparsed_by_reason: BTreeMap<String, u64>,
    pub unparsed_samples: Samples,
    /// Inputs that could not be read to their end, with the reason.
    pub read_errors: Vec<ReadError>,
    /// Set when clients or accounts were folded into the approximate summary to stay
    /// within `--max-memory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_summary: Option<MemorySummary>,
}

impl Stats {
    /// The notes both reports print about how the scan read its input, each with its
    /// heading, in order: the terminal and `report.md` say the same.
    pub fn reading_notes(&self) -> Vec<(&'static str, String)> {
        let notes = [
            ("Time range", self.time_range_note()),
            ("Unattributed", self.unattributed_note()),
            ("No client address", self.access_without_client_note()),
            ("Extra fields", self.extra_fields_note()),
            ("Request times", self.request_times_note()),
            ("Late lines", self.late_lines_note()),
        ];
        notes.into_iter().filter_map(|(heading, note)| note.map(|n| (heading, n))).collect()
    }

    /// What the reports say of lines left out by `--since`, `--from` or `--to`: a scan of
    /// a week of rotated logs for the last hour must not read as one of a quiet week.
    fn time_range_note(&self) -> Option<String> {
        let n = self.outside_time_range;
        (n > 0).then(|| {
            format!(
                "{n} parsed line(s) had an event time outside --since/--from/--to and were not counted; lines \
                 without a time were"
            )
        })
    }

    /// What the reports say of access-shaped JSON or logfmt lines with an unusable client
    /// field: a format that logs `"remote_addr": "$proxy_protocol_addr"` without PROXY
    /// protocol writes `""` on every line, and a scan of a scanner's probes must not read
    /// as a quiet scan.
    fn access_without_client_note(&self) -> Option<String> {
        let n = self.access_without_client;
        (n > 0).then(|| {
            format!(
                "{n} line(s) had a status and a request but a client field with no usable address (empty, such \
                 as $proxy_protocol_addr without PROXY protocol, not an address, or two fields naming two), so \
                 they were read as application lines and counted for no client"
            )
        })
    }

    /// What the reports say of lines read as `combined` with more fields after it
    /// ([`crate::parse::Format::CombinedExtra`]): one of those may have been the client.
    fn extra_fields_note(&self) -> Option<String> {
        let extra = crate::parse::COMBINED_EXTRA;
        let n: u64 = self.sources.values().filter_map(|s| s.formats.get(extra)).sum();
        (n > 0).then(|| {
            format!(
                "{n} line(s) were read as combined followed by fields of a log_format logwarden was not given \
                 (format {extra}); those fields were not read. If one of them names the client (X-Forwarded-For \
                 behind a proxy), give the log_format (--log-format, or --nginx-conf and --log-format-name)"
            )
        })
    }

    /// What the reports say of request times dropped to stay within the memory bound: a
    /// flood may then be counted short, and a scan that proposed none must say so.
    fn request_times_note(&self) -> Option<String> {
        let n = self.request_times_dropped;
        (n > 0).then(|| {
            format!(
                "the request times of {n} client(s) with the fewest requests were dropped to stay within --max-memory, \
                 so their busiest windows count only the requests after that: a flood may be counted short \
                 (raise --max-memory to keep them all)"
            )
        })
    }

    /// What the reports say of lines that came in already too old to be kept under
    /// `--follow`: a source whose clock or time zone is off looks like a quiet one.
    fn late_lines_note(&self) -> Option<String> {
        let n = self.late_lines;
        (n > 0).then(|| {
            format!(
                "{n} line(s) arrived with an event time more than --window before most clients' latest, so their \
                 evidence counted only until the next check and a threshold they would cross may not have been \
                 announced: is a source's clock or time zone off, or its backlog read behind the others?"
            )
        })
    }

    /// What the reports say of detections that named no client, when there were any:
    /// a scan with none proposed must not read as a scan that found no attacker.
    fn unattributed_note(&self) -> Option<String> {
        let n = self.unattributed_detections;
        (n > 0).then(|| {
            format!(
                "{n} line(s) with a detection named no client address (no address field, or one that is not a \
                 single address, such as a whole X-Forwarded-For list), so no client was counted or proposed \
                 for them; the accounts they named were counted"
            )
        })
    }
}

/// What had to be summarised to stay within the memory bound.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MemorySummary {
    /// Folded into the approximate sketch.
    pub clients: bounded::Folded,
    pub accounts: bounded::Folded,
    /// Evidence was folded, so a client or account may be missing from the proposals
    /// (what [`MemorySummary::lost_evidence`] says, for a reader of the document).
    #[serde(default)]
    pub proposals_may_be_missing: bool,
}

impl MemorySummary {
    /// The report's account of `summary`, when it was used.
    pub fn of(summary: &Summary) -> Option<MemorySummary> {
        summary.used().then(|| {
            let (clients, accounts) = (summary.clients.clone(), summary.accounts.clone());
            let mut m = MemorySummary { clients, accounts, proposals_may_be_missing: false };
            m.proposals_may_be_missing = m.lost_evidence();
            m
        })
    }

    /// Whether anything a decision counts was folded, so that a client or account may
    /// be missing from the proposals.
    pub fn lost_evidence(&self) -> bool {
        self.clients.max_evidence > 0 || self.accounts.max_evidence > 0
    }

    /// What was summarised and what that means for the proposals, in one sentence for
    /// the terminal and the review bundle's report.
    pub fn describe(&self) -> String {
        let (c, a) = (&self.clients, &self.accounts);
        let what = format!(
            "to stay within --max-memory, {} clients (most evidence {}) and {} accounts (most failures {}) were summarised",
            c.entries, c.max_evidence, a.entries, a.max_evidence
        );
        if !self.lost_evidence() {
            return format!("{what}; none had evidence, so no decision changed");
        }
        // A folded entry's evidence is only an estimate, never counted toward a
        // threshold: an attack spread over more addresses than the bound holds is
        // under-counted, and the reader must know the list is not the whole attack.
        format!(
            "{what}, so proposals may be missing: evidence counted before a fold no longer counts toward any \
             threshold (one that came back is marked folded_evidence). Rerun with a larger --max-memory, or \
             with fewer --threads (each thread keeps its own record of every client it sees)"
        )
    }
}

/// An input that failed part-way: lines before the failure were scanned.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ReadError {
    pub source: String,
    pub error: String,
}

/// Evidence about one client.
#[derive(Clone, Debug)]
pub struct ClientStats {
    pub requests: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub statuses: LiteMap<u16, u64>,
    pub auth_failures: u64,
    pub rules: LiteMap<RuleId, u64>,
    pub first_seen: Option<i64>,
    pub last_seen: Option<i64>,
    pub paths: TopK,
    pub user_agents: TopK,
    pub accounts: TopK,
    pub times_4xx: EventTimes,
    pub times_auth: EventTimes,
    pub times_rules: LiteMap<RuleId, EventTimes>,
    /// Its requests' times, when the scan kept them ([`Aggregator::request_times`]):
    /// given to the record when it is judged, for the busiest window of a flood.
    pub times_requests: Option<Box<EventTimes>>,
    /// Accounts failed on, with times (credential stuffing).
    pub auth_accounts: DistinctTimes,
    /// Paths answered 4xx, with times (probing).
    pub paths_4xx: DistinctTimes,
    pub samples: Samples,
    /// Evidence this client had when it was folded into the summary before (an upper
    /// bound; 0 when never folded).
    pub folded_evidence: u64,
    /// Its lines that carried an X-Forwarded-For address, which was not believed because
    /// the client is not a `--trusted-proxy`: counted from its full record on (a lower
    /// bound). Such a client may be the user's own proxy or load balancer, and blocking
    /// it would block everyone behind it; or an attacker forging the header.
    pub forwarded_lines: u64,
    /// The table's units this record was last charged (see [`bounded::units`]).
    charged: usize,
}

impl Default for ClientStats {
    fn default() -> Self {
        ClientStats {
            requests: 0,
            status_4xx: 0,
            status_5xx: 0,
            statuses: LiteMap::new(),
            auth_failures: 0,
            rules: LiteMap::new(),
            first_seen: None,
            last_seen: None,
            paths: TopK::new(32),
            user_agents: TopK::new(16),
            accounts: TopK::new(16),
            times_4xx: EventTimes::default(),
            times_auth: EventTimes::default(),
            times_rules: LiteMap::new(),
            times_requests: None,
            auth_accounts: DistinctTimes::default(),
            paths_4xx: DistinctTimes::default(),
            samples: Samples::new(),
            folded_evidence: 0,
            forwarded_lines: 0,
            charged: 0,
        }
    }
}

impl ClientStats {
    /// What decisions use: 4xx answers, failed logins and rule hits.
    pub fn evidence(&self) -> u64 {
        self.status_4xx + self.auth_failures + self.rules.values().sum::<u64>()
    }

    /// Counts one request; returns whether it is evidence (a 4xx), and whether a list
    /// or map of this record took a new value (see [`ClientStats::observe`]).
    fn observe_request(&mut self, record: &Record<'_>) -> (bool, bool) {
        let mut grew = self.count_request(record.status);
        let path = record.path.as_deref().map(endpoint);
        if let Some(p) = path {
            grew |= self.paths.add(p);
        }
        if let Some(ua) = &record.user_agent {
            grew |= self.user_agents.add(ua);
        }
        if !record.status.is_some_and(is_4xx) {
            return (false, grew);
        }
        self.count_4xx(record.time, Some(path_hash(path)));
        (true, grew)
    }

    /// Counts a request answered with `status`, as [`Light::request`] does; returns
    /// whether the status is new to this record.
    fn count_request(&mut self, status: Option<u16>) -> bool {
        self.requests += 1;
        let Some(status) = status else { return false };
        let known = self.statuses.len();
        *self.statuses.entry(status).or_default() += 1;
        self.status_5xx += u64::from(status >= 500);
        self.statuses.len() != known
    }

    /// Counts a line that is no evidence, as a light entry counts it (no top lists);
    /// returns whether the record may hold more bytes (a new status).
    fn count_quiet(&mut self, q: &QuietLine) -> bool {
        merge_seen(&mut self.first_seen, &mut self.last_seen, q.time, q.time);
        q.access && self.count_request(q.status)
    }

    /// Counts a 4xx answer at `time` for the path hashed `path` (see [`path_hash`]).
    fn count_4xx(&mut self, time: Option<i64>, path: Option<u64>) {
        self.status_4xx += 1;
        self.times_4xx.add(time);
        if let Some(p) = path {
            self.paths_4xx.add(time, p);
        }
    }

    /// Bytes this record holds, its map slot and everything it points to included: what
    /// its table is charged for it. Counted from capacities, not guessed per record, so
    /// that an attacker who fills every list and series is charged for all of it.
    pub fn bytes(&self) -> usize {
        let lists = self.paths.heap_bytes() + self.user_agents.heap_bytes() + self.accounts.heap_bytes();
        let series = self.times_4xx.heap_bytes() + self.times_auth.heap_bytes();
        let sets = self.paths_4xx.heap_bytes() + self.auth_accounts.heap_bytes();
        let rules = self.times_rules.values().map(EventTimes::heap_bytes).sum::<usize>()
            + small_map_bytes::<RuleId, EventTimes>(self.times_rules.len());
        let maps = small_map_bytes::<u16, u64>(self.statuses.len())
            + small_map_bytes::<RuleId, u64>(self.rules.len());
        RECORD_BYTES + lists + series + sets + rules + maps + samples_bytes(&self.samples)
    }

    /// Charges this record what it holds now; returns the change in units.
    fn recharge(&mut self) -> isize {
        let bytes = self.bytes();
        bounded::recharge(&mut self.charged, bytes)
    }

    /// Counts one line of this client's. Returns whether the record may hold more bytes
    /// than it was charged for: only evidence or a new value in a list or map can add
    /// any ([`ClientStats::bytes`] counts capacities), so the table need not weigh it
    /// again after each quiet line, which read a dozen of its fields (most lines of a
    /// busy client are quiet).
    fn observe(&mut self, seen: &Seen<'_, '_>, user: Option<&str>, rules: &RuleSet) -> bool {
        let record = seen.record;
        let time = record.time;
        merge_seen(&mut self.first_seen, &mut self.last_seen, time, time);
        let (mut evidence, mut grew) = (!seen.hits.is_empty(), false);
        if record.kind == Some(RecordKind::Access) {
            let (is_4xx, new_value) = self.observe_request(record);
            (evidence, grew) = (evidence | is_4xx, new_value);
        }
        let mut auth = false;
        for hit in seen.hits {
            let rule = rules.rule(hit.rule);
            *self.rules.entry(hit.rule).or_default() += 1;
            auth |= rule.auth_failure && matches!(rule.counts, Counts::Client | Counts::Both);
            if rule.threshold.is_some() && rule.aggregate.is_none() {
                self.times_rules.entry(hit.rule).or_default().add(time);
            }
        }
        if auth {
            self.observe_auth_failure(time, user);
        }
        if evidence {
            offer_sample(&mut self.samples, SAMPLES, seen.at, time, seen.raw);
        }
        evidence || grew
    }

    fn observe_auth_failure(&mut self, time: Option<i64>, user: Option<&str>) {
        self.auth_failures += 1;
        self.times_auth.add(time);
        let hash = user.map(|u| stable_hash(u.as_bytes()));
        if let (Some(user), Some(hash)) = (user, hash) {
            self.accounts.add(user);
            self.auth_accounts.add(time, hash);
        }
    }

    /// Rebuilds the counts and windows of a light entry (it holds no top lists or samples).
    pub fn from_light(l: Light) -> ClientStats {
        let mut c = ClientStats::default();
        c.absorb(l);
        c
    }

    /// Two light entries of one client that together hold too much to stay light.
    fn from_lights((a, b): (Light, Light)) -> Box<ClientStats> {
        let mut c = ClientStats::from_light(a);
        c.absorb(b);
        Box::new(c)
    }

    /// Adds a light entry's counts and events to this record.
    fn absorb(&mut self, l: Light) {
        self.requests += l.requests;
        for (status, n) in l.statuses() {
            *self.statuses.entry(status).or_default() += n;
            self.status_5xx += if status >= 500 { n } else { 0 };
        }
        self.folded_evidence = self.folded_evidence.max(l.folded());
        merge_seen(&mut self.first_seen, &mut self.last_seen, l.first_seen(), l.last_seen());
        let mut users = l.failed_login_users().iter();
        for e in l.events() {
            match e.rule() {
                None => self.count_4xx(e.time(), e.value()),
                Some(rule) => {
                    // Only events that named an account have one in `users`, in order.
                    let user = e.value().and_then(|_| users.next()).map(|u| u.as_str());
                    *self.rules.entry(rule).or_default() += 1;
                    self.observe_auth_failure(e.time(), user);
                }
            }
        }
    }

    fn merge(&mut self, o: ClientStats) {
        self.requests += o.requests;
        self.status_4xx += o.status_4xx;
        self.status_5xx += o.status_5xx;
        add_record_counts(&mut self.statuses, o.statuses);
        self.auth_failures += o.auth_failures;
        add_record_counts(&mut self.rules, o.rules);
        merge_seen(&mut self.first_seen, &mut self.last_seen, o.first_seen, o.last_seen);
        self.paths.merge(o.paths);
        self.user_agents.merge(o.user_agents);
        self.accounts.merge(o.accounts);
        self.times_4xx.merge(o.times_4xx);
        self.times_auth.merge(o.times_auth);
        for (rule, times) in o.times_rules {
            self.times_rules.entry(rule).or_default().merge(times);
        }
        self.auth_accounts.merge(o.auth_accounts);
        self.paths_4xx.merge(o.paths_4xx);
        merge_samples(&mut self.samples, o.samples, SAMPLES);
        self.folded_evidence = self.folded_evidence.max(o.folded_evidence);
        self.forwarded_lines += o.forwarded_lines;
    }
}

/// Evidence about one account.
#[derive(Clone, Debug, Default)]
pub struct AccountStats {
    pub auth_failures: u64,
    /// Distinct clients that failed on this account (at most [`ACCOUNT_CLIENTS`]).
    pub clients: AccountClients,
    /// More distinct clients were seen than are remembered.
    pub clients_overflow: bool,
    pub first_seen: Option<i64>,
    pub last_seen: Option<i64>,
    pub times: EventTimes,
    /// Clients failing on it, with times (distributed brute force).
    pub client_times: DistinctTimes,
    pub samples: Samples,
    /// Failed logins this account had when it was folded into the summary before (an
    /// upper bound; 0 when never folded), as [`ClientStats::folded_evidence`].
    pub folded_evidence: u64,
    /// The table's units this record was last charged (see [`bounded::units`]).
    charged: usize,
    /// The name's [`tie_order`], taken once: a fold asked it of every account at the
    /// boundary level, and hashing each name read it from the heap (under a spray of
    /// one-off names, all ~10,000 accounts, at every fold).
    tie: u64,
    /// Its [`account_hash`], the sketch's key, taken once for the same reason: a fold
    /// hashed every folded name again.
    hash: u64,
    /// How the name was logged, with counts, once a line spelled it otherwise than the
    /// name it is counted under (see [`AccountCase`]); `None` while every line spelled it
    /// so, which is most accounts: a list for each would weigh on a spray of names.
    pub spellings: Option<Box<TopK>>,
}

/// The most spellings of one account name an account record keeps.
const SPELLINGS: usize = 8;

/// The spellings of an account held under `name` with `failures` failed logins: its
/// `list`, or, without one, `name` itself as every line spelled it.
fn spellings_of(list: Option<Box<TopK>>, name: &str, failures: u64) -> TopK {
    list.map_or_else(
        || {
            let mut one = TopK::new(SPELLINGS);
            if failures > 0 {
                one.add_n(name, failures);
            }
            one
        },
        |list| *list,
    )
}

impl AccountStats {
    /// A new record of the account `user`, whose [`account_hash`] is `hash`, with
    /// `folded_evidence`.
    fn new(user: &str, hash: u64, folded_evidence: u64) -> AccountStats {
        AccountStats { folded_evidence, tie: tie_order(user), hash, ..AccountStats::default() }
    }

    /// Where this account stands when its table is folded: its failed logins, and one
    /// more if it was folded before. An account attacked less often than a spray of
    /// one-off names turns the table over comes back, and so outranks the one-offs and
    /// stays (see `bounded::FoldedNames`). One level, not its estimate: ranked by their
    /// estimated totals, accounts under equal attack unseated each other in turn and none
    /// kept its history exactly.
    fn fold_rank(&self) -> u64 {
        self.auth_failures + u64::from(self.folded_evidence > 0)
    }

    /// Bytes this record holds in its table under `name`, as [`ClientStats::bytes`].
    pub fn bytes(&self, name: &str) -> usize {
        let series = self.times.heap_bytes() + self.client_times.heap_bytes();
        let clients = self.clients.heap_bytes();
        let spellings = self.spellings.as_ref().map_or(0, |s| std::mem::size_of::<TopK>() + s.heap_bytes());
        ACCOUNT_BYTES + name.len() + series + clients + spellings + samples_bytes(&self.samples)
    }

    /// Counts one more failed login logged as `logged` against this account, counted
    /// under `name` (already in `auth_failures`).
    fn add_spelling(&mut self, name: &str, logged: &str) {
        if self.spellings.is_none() && logged == name {
            return;
        }
        let before = self.auth_failures - 1;
        self.spellings_or_as(name, before).add(logged);
    }

    /// The spellings, made on first need: until then, each of `so_far` failed logins
    /// spelled the name as `name`.
    fn spellings_or_as(&mut self, name: &str, so_far: u64) -> &mut TopK {
        self.spellings.get_or_insert_with(|| Box::new(spellings_of(None, name, so_far)))
    }

    /// The logged spellings of `name` and how often each was seen, when any differed from
    /// it; most first.
    pub fn spelled(&self) -> Vec<(String, u64)> {
        self.spellings.as_ref().map_or_else(Vec::new, |s| s.top(SPELLINGS))
    }

    /// Charges this record, held under `name`, what it holds now; returns the change.
    fn recharge(&mut self, name: &str) -> isize {
        let bytes = self.bytes(name);
        bounded::recharge(&mut self.charged, bytes)
    }

    fn add_client(&mut self, key: ClientKey) {
        if !self.clients.insert(key, ACCOUNT_CLIENTS) {
            self.clients_overflow = true;
        }
    }

    /// Adds `o`, the same account's record from another part of the scan, held under
    /// `name`.
    fn merge(&mut self, name: &str, mut o: AccountStats) {
        if self.spellings.is_some() || o.spellings.is_some() {
            let theirs = spellings_of(o.spellings.take(), name, o.auth_failures);
            self.spellings_or_as(name, self.auth_failures).merge(theirs);
        }
        self.auth_failures += o.auth_failures;
        self.clients_overflow |= o.clients_overflow;
        for key in o.clients {
            self.add_client(key);
        }
        merge_seen(&mut self.first_seen, &mut self.last_seen, o.first_seen, o.last_seen);
        self.times.merge(o.times);
        self.client_times.merge(o.client_times);
        merge_samples(&mut self.samples, o.samples, SAMPLES);
        self.folded_evidence = self.folded_evidence.max(o.folded_evidence);
    }
}

/// The distinct clients of an account, in order, without bound of their own (the caller
/// passes one). A sorted vector whose first key is held in place, not a `BTreeSet`: under
/// a spray of one-off names every failed login makes an account record, and a tree's
/// node (about 200 bytes) was an allocation and, at the next fold, a free for each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountClients(smallvec::SmallVec<[ClientKey; 1]>);

impl AccountClients {
    /// Adds `key` if it is new and fewer than `most` are held; false when a new key did
    /// not fit.
    pub fn insert(&mut self, key: ClientKey, most: usize) -> bool {
        match self.0.binary_search(&key) {
            Ok(_) => true,
            Err(_) if self.0.len() >= most => false,
            Err(at) => {
                self.0.insert(at, key);
                true
            }
        }
    }

    pub fn contains(&self, key: &ClientKey) -> bool {
        self.0.binary_search(key).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys in ascending order.
    pub fn iter(&self) -> std::slice::Iter<'_, ClientKey> {
        self.0.iter()
    }

    /// Bytes held outside the record.
    fn heap_bytes(&self) -> usize {
        spilled_bytes(&self.0)
    }
}

impl IntoIterator for AccountClients {
    type Item = ClientKey;
    type IntoIter = smallvec::IntoIter<[ClientKey; 1]>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// The runbook's symptoms: 5xx over time, slow requests, where the errors are.
#[derive(Clone, Debug)]
pub struct IncidentStats {
    /// Per minute (Unix seconds / 60): requests and 5xx answers. The minute lines are
    /// arriving in is counted in `current` and added here when another begins: lines
    /// come in time order, and a table lookup per line cost more than the counting.
    minutes: HashMap<i64, (u64, u64)>,
    current: Option<(i64, (u64, u64))>,
    /// Requests that logged a `$request_time`.
    pub timed_requests: u64,
    pub slow_requests: u64,
    pub slow_paths: TopK,
    pub paths_5xx: TopK,
    /// Requests the client closed before the answer ([`CLOSED_BY_CLIENT`]), and their
    /// endpoints: where `$request_time` is not logged, what clients gave up waiting on.
    pub closed_by_client: u64,
    pub paths_closed: TopK,
    /// Lines with a failed-login detection, and per minute (Unix seconds / 60) those that
    /// had a time: a credential-stuffing botnet below every per-client and per-account
    /// threshold still shows as a rise here.
    pub failed_logins: u64,
    pub failed_login_minutes: HashMap<i64, u64>,
}

impl Default for IncidentStats {
    fn default() -> Self {
        IncidentStats {
            minutes: HashMap::default(),
            current: None,
            timed_requests: 0,
            slow_requests: 0,
            slow_paths: TopK::new(256),
            paths_5xx: TopK::new(256),
            closed_by_client: 0,
            paths_closed: TopK::new(256),
            failed_logins: 0,
            failed_login_minutes: HashMap::default(),
        }
    }
}

impl IncidentStats {
    fn observe(&mut self, record: &Record<'_>) {
        let status = record.status.unwrap_or(0);
        let path = || record.path.as_deref().map_or("-", endpoint);
        if let Some(t) = record.time {
            let m = self.minute(t.div_euclid(60));
            m.0 += 1;
            m.1 += u64::from(status >= 500);
        }
        if status >= 500 {
            self.paths_5xx.add(path());
        } else if status == CLOSED_BY_CLIENT {
            self.closed_by_client += 1;
            self.paths_closed.add(path());
        }
        if let Some(rt) = record.request_time {
            self.timed_requests += 1;
            if rt > SLOW_REQUEST_SECONDS {
                self.slow_requests += 1;
                self.slow_paths.add(path());
            }
        }
    }

    /// Counts a line with a failed-login detection at `time`.
    fn failed_login(&mut self, time: Option<i64>) {
        self.failed_logins += 1;
        if let Some(t) = time {
            *self.failed_login_minutes.entry(t.div_euclid(60)).or_default() += 1;
        }
    }

    /// The counts of `minute`, which becomes the current one.
    fn minute(&mut self, minute: i64) -> &mut (u64, u64) {
        if self.current.is_none_or(|(m, _)| m != minute) {
            self.flush();
            self.current = Some((minute, (0, 0)));
        }
        &mut self.current.as_mut().expect("set above").1
    }

    /// Adds the current minute's counts to the table.
    fn flush(&mut self) {
        if let Some((minute, counts)) = self.current.take() {
            self.add(minute, counts);
        }
    }

    /// Adds requests and 5xx answers to `minute`'s counts in the table.
    fn add(&mut self, minute: i64, (requests, status_5xx): (u64, u64)) {
        let m = self.minutes.entry(minute).or_default();
        m.0 += requests;
        m.1 += status_5xx;
    }

    /// Takes the requests and 5xx answers per minute (Unix seconds / 60).
    pub fn take_minutes(&mut self) -> HashMap<i64, (u64, u64)> {
        self.flush();
        std::mem::take(&mut self.minutes)
    }

    /// Drops the minutes before `minute`.
    fn retain_from(&mut self, minute: i64) {
        self.flush();
        self.minutes.retain(|m, _| *m >= minute);
        self.failed_login_minutes.retain(|m, _| *m >= minute);
    }

    fn merge(&mut self, mut o: IncidentStats) {
        self.flush();
        o.flush();
        for (minute, counts) in o.minutes {
            self.add(minute, counts);
        }
        self.timed_requests += o.timed_requests;
        self.slow_requests += o.slow_requests;
        self.slow_paths.merge(o.slow_paths);
        self.paths_5xx.merge(o.paths_5xx);
        self.closed_by_client += o.closed_by_client;
        self.paths_closed.merge(o.paths_closed);
        self.failed_logins += o.failed_logins;
        for (minute, n) in o.failed_login_minutes {
            *self.failed_login_minutes.entry(minute).or_default() += n;
        }
    }
}

/// A path without its query string, for grouping endpoints.
pub fn endpoint(path: &str) -> &str {
    // `?` is ASCII, so the cut is a char boundary.
    crate::parse::near_byte(b'?', path.as_bytes()).map_or(path, |end| &path[..end])
}

/// Everything one scan has learned.
#[derive(Clone, Debug, Default)]
pub struct Aggregator {
    pub stats: Stats,
    /// Boxed: the map rehashes as clients arrive, and moving a pointer is cheaper than
    /// moving the whole record.
    pub clients: HashMap<ClientKey, Box<ClientStats>>,
    /// Clients without a full record, in compact form (see [`bounded`]).
    pub light: dense::DenseTable<ClientKey, Light>,
    /// When set, light entries live there instead of in `light`: one table for all the
    /// workers of a scan (see [`shared`]), handed back by [`Aggregator::absorb_lights`].
    pub shared_light: Option<Arc<shared::SharedLights>>,
    /// Per realm (see [`crate::detect::Rule::realm`]), per user name. Names of up to 24
    /// bytes are held in place: a spray of one-off names made an allocation of each, and a
    /// fold freed it, reading the heap for each.
    pub accounts: BTreeMap<String, dense::DenseTable<CompactString, AccountStats>>,
    pub incident: IncidentStats,
    /// How many units of clients and accounts are kept exactly.
    pub limits: Limits,
    /// The units `clients` is charged: the sum of its records' (see [`bounded::units`]).
    pub(crate) client_units: usize,
    /// The units `accounts` is charged.
    pub(crate) account_units: usize,
    /// What was folded out of the exact tables to stay within `limits`.
    pub summary: Summary,
    /// How account names are told apart. Every part of one scan holds the same.
    pub account_case: AccountCase,
    /// Every client's request times, when the scan judges request rates
    /// (`--max-request-rate`; see [`requests`]).
    pub request_times: Option<requests::RequestTimes>,
    /// Under `--follow`, what the last check evicted before: a line older than this is
    /// counted in `stats.late_lines`.
    pub late_before: Option<i64>,
    /// Parsed lines not yet in `stats.sources` (see [`Aggregator::settle`]).
    pub(crate) runs: Vec<ParsedRun>,
    /// Quiet lines of clients without a full record, not yet counted (see
    /// [`QuietLine`]).
    pub(crate) quiet: Vec<QuietLine>,
    /// `quiet` grouped by shard, kept between batches (see [`group_by_shard`]).
    pub(crate) quiet_by_shard: Vec<QuietLine>,
    /// Full records made so far (wrapping): a quiet line held back when no record had
    /// been made since needs no look in `clients` when it is counted (see
    /// [`QuietLine::records_made`]).
    pub(crate) records_made: u32,
}

/// A line that is no evidence, from a client without a full record: it changes only
/// counts that do not depend on order (requests, statuses, first and last seen), so it is
/// counted later, with others, in [`Aggregator::settle`]. Counted one at a time, each
/// such line waited for its client's entry to come from main memory (the table outgrows
/// the caches) with the line's other work done; counted in a batch, the processor fetches
/// several entries at once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QuietLine {
    key: ClientKey,
    time: Option<i64>,
    status: Option<u16>,
    access: bool,
    /// The shard of the table shared by the workers that holds `key`, once sorted by it.
    shard: u8,
    /// [`Aggregator::records_made`] when the line was held, when its client had no full
    /// record. Unchanged when it is counted, its client still has none, and the lookup
    /// in `clients` that would say so (a hash table miss, for half the lines of a scan)
    /// is skipped.
    records_made: u32,
}

/// Copies `quiet` into `out` grouped by shard (their `shard`, set), in shard order and each
/// shard's lines in their order: a counting sort, two passes over a batch where sorting
/// it compared each line about eleven times (1.4% of a two-thread scan in perf).
fn group_by_shard(quiet: &[QuietLine], out: &mut Vec<QuietLine>) {
    let mut next = [0usize; shared::SHARDS];
    quiet.iter().for_each(|q| next[usize::from(q.shard)] += 1);
    let mut start = 0;
    for slot in next.iter_mut() {
        (*slot, start) = (start, start + *slot);
    }
    out.clear();
    out.extend_from_slice(quiet);
    for q in quiet {
        let at = &mut next[usize::from(q.shard)];
        out[*at] = *q;
        *at += 1;
    }
}

impl QuietLine {
    fn of(key: ClientKey, record: &Record<'_>, records_made: u32) -> QuietLine {
        let access = record.kind == Some(RecordKind::Access);
        QuietLine { key, time: record.time, status: record.status, access, shard: 0, records_made }
    }

    /// Counts this line in a light entry.
    fn count(&self, l: &mut Light) {
        l.seen(self.time);
        if self.access {
            l.request(self.status);
        }
    }
}

/// Quiet lines held at most before they are counted: a bound on the buffer whatever the
/// line length, small enough to stay in cache.
const QUIET_BATCH: usize = 2048;

/// Parsed lines from one source in one format, not yet in `stats.sources`. Counting a
/// line against a pending run costs two short compares instead of the two map lookups
/// (source, then format) it replaces: 1.3% fewer worker instructions on `combined`.
#[derive(Clone, Debug)]
pub(crate) struct ParsedRun {
    source: String,
    format: String,
    lines: u64,
}

/// Pending runs kept at most: enough for the pods and containers of an interleaved
/// `kubectl logs --prefix` stream, few enough to scan on every line.
const PENDING_RUNS: usize = 8;

impl Aggregator {
    /// Counts a line of `source` that was read but not parsed, by `reason`, keeping the
    /// first few to show (`at` is where the line stands in its input).
    pub fn unparsed(&mut self, source: &str, at: LineRef<'_>, raw: &[u8], reason: UnparsedReason) {
        self.stats.lines += 1;
        self.stats.unparsed += 1;
        *self.stats.unparsed_by_reason.entry(reason.as_str().to_string()).or_default() += 1;
        let source = self.source(source);
        source.lines += 1;
        source.unparsed += 1;
        offer_sample(&mut self.stats.unparsed_samples, UNPARSED_SAMPLES, at, None, raw);
    }

    /// Counts a line that was too long to read.
    pub fn oversized(&mut self, at: LineRef<'_>) {
        let what = b"(line longer than the limit; skipped)";
        self.unparsed(at.source, at, what, UnparsedReason::Oversized);
        self.stats.oversized += 1;
    }

    fn source(&mut self, name: &str) -> &mut SourceStats {
        if !self.stats.sources.contains_key(name) {
            self.stats.sources.insert(name.to_string(), SourceStats::default());
        }
        self.stats.sources.get_mut(name).expect("inserted above")
    }

    /// Counts a parsed record and the rules it hit.
    pub fn observe(&mut self, seen: &Seen<'_, '_>, rules: &RuleSet, policy: &ClientPolicy) {
        let record = seen.record;
        self.count_parsed(seen.source, seen.format, record.time);
        // A client named only by a rule's capture (free text) counts as well.
        let remote = record.remote_addr.or_else(|| seen.hits.iter().find_map(|h| h.ip));
        let key = remote.map(|ip| policy.key(policy.resolve(ip, record.forwarded_for.as_deref())));
        if record.kind == Some(RecordKind::Access) {
            self.incident.observe(record);
        }
        self.stats.access_without_client += u64::from(record.client_unreadable);
        if seen.hits.iter().any(|h| rules.rule(h.rule).auth_failure) {
            self.incident.failed_login(record.time);
        }
        let (logged, counting) = failed_account(seen, rules);
        // htpasswd compares names exactly: its `Admin` and `admin` are two users.
        let case = match counting {
            Some(crate::detect::BASIC_AUTH_REALM) => AccountCase::Sensitive,
            _ => self.account_case,
        };
        let name = logged.map(|u| case.key(u));
        let user = name.as_deref();
        if let (Some(times), Some(key), Some(RecordKind::Access)) =
            (&mut self.request_times, key, record.kind)
        {
            times.add(key, record.time);
        }
        match key {
            Some(key) => self.observe_client(key, seen, user, rules, forwarded_unbelieved(record, policy)),
            None if !seen.hits.is_empty() => self.stats.unattributed_detections += 1,
            None => {}
        }
        if let (Some(user), Some(logged), Some(realm)) = (user, logged, counting) {
            self.observe_account(realm, user, logged, key, seen);
        }
    }

    /// Counts a parsed line whose event time is outside the scan's time range (see
    /// [`crate::pipeline::ScanConfig::time_range`]): read, and in no aggregate.
    pub fn outside_time_range(&mut self, source: &str, format: &str) {
        self.stats.outside_time_range += 1;
        self.count_parsed_line(source, format);
    }

    fn count_parsed(&mut self, source: &str, format: &str, time: Option<i64>) {
        self.stats.untimed += u64::from(time.is_none());
        self.stats.late_lines += u64::from(matches!((time, self.late_before), (Some(t), Some(c)) if t < c));
        self.stats.last_event_time = self.stats.last_event_time.max(time);
        self.count_parsed_line(source, format);
    }

    /// Counts a parsed line in `lines`, `parsed` and its source's run.
    fn count_parsed_line(&mut self, source: &str, format: &str) {
        self.stats.lines += 1;
        self.stats.parsed += 1;
        let same = |a: &str, b: &str| crate::parse::same_bytes(a.as_bytes(), b.as_bytes());
        if let Some(run) = self.runs.iter_mut().find(|r| same(&r.format, format) && same(&r.source, source)) {
            run.lines += 1;
            return;
        }
        if self.runs.len() == PENDING_RUNS {
            self.settle();
        }
        self.runs.push(ParsedRun { source: source.to_string(), format: format.to_string(), lines: 1 });
    }

    /// Adds the pending runs of parsed lines to `stats.sources`. The pipeline's workers
    /// settle after every chunk, and merging and deciding settle first; a caller that
    /// reads `stats.sources`, `clients` or `light` of an aggregator it fed itself settles
    /// before. Also counts the held quiet lines (see [`QuietLine`]) and requests (see
    /// [`requests::RequestTimes::flush`]).
    pub fn settle(&mut self) {
        self.count_quiet();
        if let Some(times) = &mut self.request_times {
            times.flush();
        }
        for run in std::mem::take(&mut self.runs) {
            let source = self.source(&run.source);
            source.lines += run.lines;
            source.parsed += run.lines;
            *source.formats.entry(run.format).or_default() += run.lines;
        }
    }

    /// The record of `key`, created (and the table kept within its limit) if new.
    fn client(&mut self, key: ClientKey) -> &mut ClientStats {
        // One hash lookup on the hot path; the extra check only when the table is full.
        if self.client_units >= self.limits.clients && !self.clients.contains_key(&key) {
            self.fold_clients();
        }
        let (light, shared, summary) = (&mut self.light, &self.shared_light, &mut self.summary);
        let made = &mut self.records_made;
        self.clients.entry(key).or_insert_with(|| {
            *made = made.wrapping_add(1);
            let taken = match shared {
                Some(shared) => hand_shared_to_record(shared, summary, key),
                None => light.remove(&key).unwrap_or_else(|| new_light(summary, key)),
            };
            Box::new(ClientStats::from_light(taken))
        })
    }

    /// Counts a line from a client without a full record in its light entry, when that
    /// holds all the line changes: a line that is no evidence (held back, see
    /// [`QuietLine`]), or one of the first [`bounded::LIGHT_EVENTS`] 4xx answers and
    /// failed logins. Another rule hit, or evidence beyond those, needs a record.
    fn observe_light(
        &mut self,
        key: ClientKey,
        seen: &Seen<'_, '_>,
        user: Option<&str>,
        rules: &RuleSet,
    ) -> Taken {
        let record = seen.record;
        if !is_evidence(seen) {
            self.hold_quiet(QuietLine::of(key, record, self.records_made));
            return Taken::Light;
        }
        let Some(evidence) = LightEvidence::of(seen, user, rules) else { return Taken::NeedsRecord };
        let most = self.limits.light_events;
        if let Some(shared) = &self.shared_light {
            let count = |l: &mut Light| evidence.count(l, most);
            return observe_light_shared(shared, &mut self.summary, key, count);
        }
        evidence.count(self.light_entry(key), most)
    }

    /// The light entry of `key`, created (and the table kept within its limit) if new.
    fn light_entry(&mut self, key: ClientKey) -> &mut Light {
        if self.light.len() >= self.limits.light && !self.light.contains_key(&key) {
            self.fold_light();
        }
        let summary = &self.summary;
        self.light.get_or_insert_with(key, || new_light(summary, key))
    }

    fn hold_quiet(&mut self, line: QuietLine) {
        self.quiet.push(line);
        if self.quiet.len() >= QUIET_BATCH {
            self.count_quiet();
        }
    }

    /// Counts the quiet lines held back (see [`QuietLine`]), each where its client is now:
    /// its full record if it has one by now, else its light entry.
    fn count_quiet(&mut self) {
        let mut quiet = std::mem::take(&mut self.quiet);
        let made = self.records_made;
        quiet.retain(|q| q.records_made == made || !self.count_quiet_in_record(q));
        match self.shared_light.clone() {
            Some(shared) => self.count_quiet_shared(&shared, &mut quiet),
            None => self.count_quiet_light(&quiet),
        }
        quiet.clear();
        self.quiet = quiet;
    }

    /// Counts `quiet` in the compact table, asking for the slots and entries of the lines
    /// ahead first (see [`dense`]).
    fn count_quiet_light(&mut self, quiet: &[QuietLine]) {
        for (i, q) in quiet.iter().enumerate() {
            self.light.prefetch_ahead(quiet, i, |q| q.key);
            q.count(self.light_entry(q.key));
        }
    }

    /// Counts `q` in its client's full record, if there is one.
    fn count_quiet_in_record(&mut self, q: &QuietLine) -> bool {
        let Some(c) = self.clients.get_mut(&q.key) else { return false };
        if c.count_quiet(q) {
            let grown = c.recharge();
            if grew_past(&mut self.client_units, grown, self.limits.clients) {
                self.fold_clients();
            }
        }
        true
    }

    /// Counts `quiet` in the table shared by the workers, a shard at a time: one lock per
    /// shard per batch instead of one per line. When the table is full, folds and goes on.
    fn count_quiet_shared(&mut self, shared: &SharedLights, quiet: &mut [QuietLine]) {
        // The shard once per line, not once per comparison.
        quiet.iter_mut().for_each(|q| q.shard = shared::shard_of(&q.key) as u8);
        let mut grouped = std::mem::take(&mut self.quiet_by_shard);
        group_by_shard(quiet, &mut grouped);
        self.count_grouped(shared, &grouped);
        self.quiet_by_shard = grouped;
    }

    /// [`Aggregator::count_quiet_shared`] for lines grouped by shard.
    fn count_grouped(&mut self, shared: &SharedLights, quiet: &[QuietLine]) {
        let mut rest = quiet;
        loop {
            let summary = &self.summary;
            let new = |key| new_light(summary, key);
            let Err(full) = shared.update_sorted(rest, |q| q.key, new, QuietLine::count) else { return };
            let q = rest[full];
            update_shared(shared, &mut self.summary, q.key, |l| q.count(l));
            rest = &rest[full + 1..];
        }
    }

    /// Folds the clients with the least evidence into the summary, down to 3/4 of the limit.
    fn fold_clients(&mut self) {
        let target = self.limits.clients / 4 * 3;
        // Least evidence first; at the boundary the oldest, so that attackers alike in
        // evidence (a botnet in lockstep) are not all folded at once.
        let entries = self.clients.iter().map(|(k, c)| (c.evidence(), c.charged, (k, c.last_seen)));
        let plan = bounded::FoldPlan::weighted(entries, |(k, seen)| age(k, *seen), self.client_units, target);
        let (summary, units) = (&mut self.summary, &mut self.client_units);
        // A full record holds more than a light entry can (a fifth 4xx or failed login, or
        // another rule hit: see `observe_light`), so a folded one goes to the sketch. Only
        // its own evidence: what it had before it was folded last is in the sketch already.
        self.clients.retain(|key, c| {
            let evidence = c.evidence();
            let keep = !plan.folds_by(evidence, || age(key, c.last_seen));
            if !keep {
                *units -= c.charged;
                summary.fold_client(client_hash(*key), evidence);
            }
            keep
        });
    }

    /// Takes the entries of the table shared by the workers of a scan into this
    /// aggregator (the scan's merged result), each added to its client's full record
    /// where there is one.
    pub fn absorb_lights(&mut self, shared: &shared::SharedLights) {
        self.shared_light = None;
        self.light.reserve(shared.len());
        shared.drain_into(|key, l| self.merge_light(key, l));
        // Light entries added to full records grew them.
        self.recount_clients();
        if self.light.len() > self.limits.light {
            self.fold_light();
        }
    }

    /// Folds the light entries with the least evidence into the sketch, down to 3/4.
    fn fold_light(&mut self) {
        let target = self.limits.light / 4 * 3;
        // The rank is in the entry itself: the passes read no entry's `rare`.
        let entries = self.light.iter().map(|(k, l)| (l.fold_rank(), (k, l.last_seen())));
        let plan = bounded::FoldPlan::new(entries, |(k, seen)| age(k, *seen), self.light.len(), target);
        let summary = &mut self.summary;
        self.light.retain(|key, l| {
            let keep = !plan.folds_by(l.fold_rank(), || age(key, l.last_seen()));
            if !keep {
                summary.fold_client(client_hash(*key), l.evidence());
            }
            keep
        });
    }

    /// Adds a light entry from another worker.
    fn merge_light(&mut self, key: ClientKey, l: Light) {
        if let Some(c) = self.clients.get_mut(&key) {
            c.absorb(l);
            return;
        }
        match self.light.remove(&key) {
            None => {
                self.light.insert(key, l);
            }
            Some(mut mine) => match mine.combine(l, self.limits.light_events) {
                Ok(()) => {
                    self.light.insert(key, mine);
                }
                Err(theirs) => {
                    self.records_made = self.records_made.wrapping_add(1);
                    self.clients.insert(key, ClientStats::from_lights((mine, theirs)));
                }
            },
        }
    }

    /// Counts a line of `key`'s; `forwarded`: it carried an X-Forwarded-For that was not
    /// believed, counted in a full record ([`ClientStats::forwarded_lines`]).
    fn observe_client(
        &mut self,
        key: ClientKey,
        seen: &Seen<'_, '_>,
        user: Option<&str>,
        rules: &RuleSet,
        forwarded: bool,
    ) {
        // One hash lookup for a client with a full record, the common case on a busy one.
        let c = match self.clients.get_mut(&key) {
            Some(c) => c,
            None => match self.observe_light(key, seen, user, rules) {
                Taken::Light => return,
                Taken::NeedsRecord => self.client(key),
            },
        };
        c.forwarded_lines += u64::from(forwarded);
        if c.observe(seen, user, rules) {
            let grown = c.recharge();
            if grew_past(&mut self.client_units, grown, self.limits.clients) {
                self.fold_clients();
            }
        }
    }

    /// Counts a failed login against `user` (the name it is counted under, see
    /// [`AccountCase::key`]), logged as `logged`.
    fn observe_account(
        &mut self,
        realm: &str,
        user: &str,
        logged: &str,
        key: Option<ClientKey>,
        seen: &Seen<'_, '_>,
    ) {
        let time = seen.record.time;
        if !self.accounts.get(realm).is_some_and(|users| users.contains_key(user)) {
            self.new_account(realm, user);
        }
        let a = self.accounts.get_mut(realm).and_then(|users| users.get_mut(user)).expect("made above");
        a.auth_failures += 1;
        a.times.add(time);
        a.add_spelling(user, logged);
        merge_seen(&mut a.first_seen, &mut a.last_seen, time, time);
        if let Some(key) = key {
            a.add_client(key);
            a.client_times.add(time, client_hash(key));
        }
        offer_sample(&mut a.samples, SAMPLES, seen.at, time, seen.raw);
        let grown = a.recharge(user);
        if grew_past(&mut self.account_units, grown, self.limits.accounts) {
            self.fold_accounts();
        }
    }

    /// Makes a record for an account the table lacks, folding the table first when full.
    fn new_account(&mut self, realm: &str, user: &str) {
        if self.account_units >= self.limits.accounts {
            self.fold_accounts();
        }
        let hash = account_hash(realm, user);
        let a = AccountStats::new(user, hash, account_folded_before(&self.summary, hash));
        match self.accounts.get_mut(realm) {
            Some(users) => users.insert(user.into(), a),
            None => self.accounts.entry(realm.to_string()).or_default().insert(user.into(), a),
        };
    }

    /// Charges every client record what it holds now (after records were merged, folded
    /// or trimmed in bulk), and the table their sum.
    fn recount_clients(&mut self) {
        self.client_units = self
            .clients
            .values_mut()
            .map(|c| {
                c.recharge();
                c.charged
            })
            .sum();
    }

    /// [`Aggregator::recount_clients`] for the accounts.
    fn recount_accounts(&mut self) {
        let records = self.accounts.values_mut().flat_map(|users| users.iter_mut());
        self.account_units = records
            .map(|(name, a)| {
                a.recharge(name);
                a.charged
            })
            .sum();
    }

    /// Folds the accounts with the fewest failed logins into the summary, down to 3/4 of
    /// the limit.
    fn fold_accounts(&mut self) {
        let target = self.limits.accounts / 4 * 3;
        // As for clients: least evidence first, and at the boundary the oldest, so an
        // account attacked now and then survives a spray of one-off names.
        let records = self.accounts.values().flat_map(|users| users.values());
        let entries = records.map(|a| (a.fold_rank(), a.charged, a));
        let plan = bounded::FoldPlan::weighted(entries, |a| account_age(a), self.account_units, target);
        let (summary, units) = (&mut self.summary, &mut self.account_units);
        for users in self.accounts.values_mut() {
            users.retain(|_, a| {
                let keep = !plan.folds_by(a.fold_rank(), || account_age(a));
                if !keep {
                    *units -= a.charged;
                    // Only its own failures: earlier ones are in the sketch already.
                    summary.fold_account(a.hash, a.auth_failures);
                }
                keep
            });
        }
    }

    /// Adds everything `other` has learned, staying within this aggregator's limits.
    pub fn merge(&mut self, mut other: Aggregator) {
        self.settle();
        other.settle();
        // The stricter bound on compact entries' events holds: a scan's reduction starts
        // from an empty aggregator with the default.
        self.limits.light_events = self.limits.light_events.min(other.limits.light_events);
        // Into the larger tables: the reduction starts from an empty aggregator, and
        // re-inserting a whole worker's tables into it held both copies at once (the peak
        // of a scan). Merging commutes, so which side holds the result does not matter.
        if self.clients.len() + self.light.len() < other.clients.len() + other.light.len() {
            self.records_made = self.records_made.wrapping_add(1);
            std::mem::swap(&mut self.clients, &mut other.clients);
            std::mem::swap(&mut self.light, &mut other.light);
            std::mem::swap(&mut self.accounts, &mut other.accounts);
        }
        self.merge_stats(other.stats);
        match (&mut self.request_times, other.request_times) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
        for (key, mut c) in other.clients {
            if let Some(l) = self.light.remove(&key) {
                c.absorb(l);
            }
            match self.clients.get_mut(&key) {
                Some(mine) => mine.merge(*c),
                None => {
                    self.records_made = self.records_made.wrapping_add(1);
                    self.clients.insert(key, c);
                }
            }
        }
        for (key, l) in other.light {
            self.merge_light(key, l);
        }
        for (realm, accounts) in other.accounts {
            let mine = self.accounts.entry(realm).or_default();
            for (user, a) in accounts {
                match mine.get_mut(&user) {
                    Some(m) => m.merge(&user, a),
                    None => {
                        mine.insert(user, a);
                    }
                }
            }
        }
        self.incident.merge(other.incident);
        self.summary.merge(other.summary);
        self.recount_clients();
        self.recount_accounts();
        if self.client_units > self.limits.clients {
            self.fold_clients();
        }
        if self.light.len() > self.limits.light {
            self.fold_light();
        }
        if self.account_units > self.limits.accounts {
            self.fold_accounts();
        }
    }

    fn merge_stats(&mut self, o: Stats) {
        let s = &mut self.stats;
        s.lines += o.lines;
        s.parsed += o.parsed;
        s.unparsed += o.unparsed;
        s.bytes += o.bytes;
        s.oversized += o.oversized;
        s.unfinished_partial_lines += o.unfinished_partial_lines;
        s.untimed += o.untimed;
        s.unattributed_detections += o.unattributed_detections;
        s.outside_time_range += o.outside_time_range;
        s.access_without_client += o.access_without_client;
        s.request_times_dropped += o.request_times_dropped;
        s.late_lines += o.late_lines;
        s.last_event_time = s.last_event_time.max(o.last_event_time);
        for (name, src) in o.sources {
            let mine = s.sources.entry(name).or_default();
            mine.lines += src.lines;
            mine.parsed += src.parsed;
            mine.unparsed += src.unparsed;
            add_counts(&mut mine.formats, src.formats);
        }
        add_counts(&mut s.unparsed_by_reason, o.unparsed_by_reason);
        merge_samples(&mut s.unparsed_samples, o.unparsed_samples, UNPARSED_SAMPLES);
        s.read_errors.extend(o.read_errors);
        s.read_errors.sort_by(|a, b| (&a.source, &a.error).cmp(&(&b.source, &b.error)));
    }
}

/// Last times sampled at most for [`Aggregator::eviction_reference`].
const REFERENCE_SAMPLE: usize = 10_001;

impl Aggregator {
    /// The event time `--follow` evicts a window before: the median of the clients' and
    /// accounts' last times (of a sample of [`REFERENCE_SAMPLE`]), never past the newest
    /// time read. Not the newest itself: one line dated far ahead (a pod whose clock is
    /// wrong, a time field an application filled from a request) made every other
    /// client's evidence too old at each check, for as long as the stream ran, and
    /// nothing was announced again. A median moves only when most clients do.
    pub fn eviction_reference(&mut self) -> Option<i64> {
        self.count_quiet();
        let accounts = self.accounts.values().flat_map(|users| users.values().map(|a| a.last_seen));
        let n =
            self.clients.len() + self.light.len() + self.accounts.values().map(|u| u.len()).sum::<usize>();
        let last_times =
            self.clients.values().map(|c| c.last_seen).chain(self.light.values().map(|l| l.last_seen()));
        let mut sample: Vec<i64> =
            last_times.chain(accounts).step_by(n / REFERENCE_SAMPLE + 1).flatten().collect();
        let newest = self.stats.last_event_time;
        if sample.is_empty() {
            return newest;
        }
        let middle = (sample.len() - 1) / 2;
        let median = *sample.select_nth_unstable(middle).1;
        Some(newest.map_or(median, |n| n.min(median)))
    }

    /// Forgets evidence older than `cutoff` (event time), so that `--follow` runs for days
    /// in flat memory: window counts before it are dropped, and clients and accounts not
    /// seen since are removed. The incident's per-minute counts keep one day.
    pub fn evict_before(&mut self, cutoff: i64) {
        self.count_quiet();
        self.clients.retain(|_, c| {
            c.times_4xx.evict_before(cutoff);
            c.times_auth.evict_before(cutoff);
            c.times_rules.iter_mut().for_each(|(_, t)| t.evict_before(cutoff));
            c.auth_accounts.evict_before(cutoff);
            c.paths_4xx.evict_before(cutoff);
            c.last_seen.is_none_or(|t| t >= cutoff)
        });
        self.light.retain(|_, l| l.last_seen().is_none_or(|t| t >= cutoff));
        for users in self.accounts.values_mut() {
            users.retain(|_, a| {
                a.times.evict_before(cutoff);
                a.client_times.evict_before(cutoff);
                a.last_seen.is_none_or(|t| t >= cutoff)
            });
        }
        if let Some(times) = &mut self.request_times {
            times.evict_before(cutoff);
        }
        let day_ago = (cutoff - 86_400).div_euclid(60);
        self.incident.retain_from(day_ago);
        self.recount_clients();
        self.recount_accounts();
    }
}

/// Adds `grown` units to a table's total `units`; whether the table grew past `limit`.
fn grew_past(units: &mut usize, grown: isize, limit: usize) -> bool {
    *units = units.saturating_add_signed(grown);
    grown != 0 && *units > limit
}

/// [`Aggregator::observe_light`] into the table shared by the workers.
fn observe_light_shared(
    shared: &SharedLights,
    summary: &mut Summary,
    key: ClientKey,
    count: impl Fn(&mut Light) -> Taken,
) -> Taken {
    let mut taken = Taken::NeedsRecord;
    update_shared(shared, summary, key, |l| taken = count(l));
    taken
}

/// Applies `f` to the shared table's entry of `key`, created if new; when the table is
/// full, folds first.
fn update_shared(
    shared: &SharedLights,
    summary: &mut Summary,
    key: ClientKey,
    mut f: impl FnMut(&mut Light),
) {
    if !shared.update(key, || new_light(summary, key), &mut f, true) {
        fold_shared(shared, summary);
        // Another worker may fill the table again meanwhile: this line still counts.
        shared.update(key, || new_light(summary, key), &mut f, false);
    }
}

/// What the shared table holds of `key`, for the full record a worker gives it, leaving
/// the mark that it has one (see [`Light::hand_to_record`]; an entry is made for the mark
/// if there was none, with what the sketch says the client had before).
fn hand_shared_to_record(shared: &SharedLights, summary: &mut Summary, key: ClientKey) -> Light {
    let mut taken = Light::default();
    update_shared(shared, summary, key, |l| taken = l.hand_to_record());
    taken
}

/// A new light entry for `key`, with what the sketch says it had before (see
/// [`folded_before`]).
fn new_light(summary: &Summary, key: ClientKey) -> Light {
    Light::new(folded_before(summary, key))
}

/// Whether a client's light entry took a line ([`Aggregator::observe_light`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Taken {
    Light,
    NeedsRecord,
}

/// The evidence of a line that a light entry can hold.
#[derive(Clone, Copy)]
enum LightEvidence<'u> {
    /// A 4xx answer, with its status.
    Answer4xx(LightEvent, Option<u16>),
    /// A failed login on a line that is no request, with the account it named.
    FailedLogin(LightEvent, Option<&'u str>),
}

impl<'u> LightEvidence<'u> {
    /// The evidence of `seen` (an evidence line) as a light event, when it is one: a 4xx
    /// answer with no rule hit, or the one hit of a [`light_failed_login`] rule on a line
    /// that is no request. Anything else needs a full record.
    fn of(seen: &Seen<'_, '_>, user: Option<&'u str>, rules: &RuleSet) -> Option<LightEvidence<'u>> {
        let record = seen.record;
        match seen.hits {
            [] => Some(LightEvidence::Answer4xx(event_4xx(record), record.status)),
            [hit] if record.kind != Some(RecordKind::Access) && light_failed_login(rules.rule(hit.rule)) => {
                let account = user.map(|u| stable_hash(u.as_bytes()));
                Some(LightEvidence::FailedLogin(
                    LightEvent::failed_login(hit.rule, record.time, account),
                    user,
                ))
            }
            _ => None,
        }
    }

    /// Counts this in `l`, unless `l` holds `most` events already.
    fn count(self, l: &mut Light, most: usize) -> Taken {
        let taken = match self {
            LightEvidence::Answer4xx(event, status) => l.take_evidence(status, event, most),
            LightEvidence::FailedLogin(event, user) => l.take_failed_login(event, user, most),
        };
        if taken { Taken::Light } else { Taken::NeedsRecord }
    }
}

/// A rule whose hits a light entry can hold: a failed login counted against the client,
/// judged only by the scan's failed-login window (no threshold or aggregate of its own,
/// which would need the record's per-rule series), as a full record counts it
/// (`ClientStats::observe`).
fn light_failed_login(rule: &crate::detect::Rule) -> bool {
    let counted = matches!(rule.counts, Counts::Client | Counts::Both);
    rule.auth_failure && counted && rule.threshold.is_none() && rule.aggregate.is_none()
}

/// The evidence event of a 4xx answer, as a full record counts it (`observe_request`).
fn event_4xx(record: &Record<'_>) -> LightEvent {
    LightEvent::new(record.time, Some(path_hash(record.path.as_deref().map(endpoint))))
}

/// The hash a 4xx answer's endpoint is counted under in distinct-path windows, the same
/// for a light entry's event and a full record (a request without a path as the empty one).
fn path_hash(endpoint: Option<&str>) -> u64 {
    stable_hash(endpoint.unwrap_or("").as_bytes())
}

/// Folds the shared table's entries with the least evidence into `summary`.
fn fold_shared(shared: &SharedLights, summary: &mut Summary) {
    shared.fold(|k, l| summary.fold_client(client_hash(k), l.evidence()));
}

fn add_counts<K: Ord>(into: &mut BTreeMap<K, u64>, from: BTreeMap<K, u64>) {
    for (k, v) in from {
        *into.entry(k).or_default() += v;
    }
}

/// [`add_counts`] for a record's small maps.
fn add_record_counts<K: Ord>(into: &mut LiteMap<K, u64>, from: LiteMap<K, u64>) {
    for (k, v) in from {
        *into.entry(k).or_default() += v;
    }
}

fn merge_seen(first: &mut Option<i64>, last: &mut Option<i64>, of: Option<i64>, ol: Option<i64>) {
    *first = match (*first, of) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    *last = match (*last, ol) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_cut_at_a_number_of_characters_not_bytes() {
        let at = LineRef { source: &Arc::from("s"), line: 1 };
        // As many two-byte characters as a sample holds: twice the bytes, nothing cut.
        let whole = "é".repeat(SAMPLE_CHARS);
        assert_eq!(&*Sample::new(at, None, whole.as_bytes()).text, whole);
        let longer = format!("{whole}é");
        assert_eq!(&*Sample::new(at, None, longer.as_bytes()).text, format!("{whole}…"));
        let ascii = "a".repeat(SAMPLE_CHARS + 1);
        assert_eq!(Sample::new(at, None, ascii.as_bytes()).text.chars().count(), SAMPLE_CHARS + 1);
        assert!(Sample::new(at, None, ascii.as_bytes()).text.ends_with("a…"));
        // Invalid UTF-8 is replaced, not dropped.
        assert_eq!(&*Sample::new(at, None, b"bad \xff byte").text, "bad \u{fffd} byte");
    }

    #[test]
    fn samples_keep_the_smallest_regardless_of_order() {
        let mk = |line| Sample { time: Some(10), source: "s".into(), line, text: "".into() };
        let mut a = Samples::new();
        let mut b = Samples::new();
        for l in [5, 1, 9, 3, 7] {
            keep_sample(&mut a, 3, mk(l));
        }
        for l in [9, 7, 3, 1, 5] {
            keep_sample(&mut b, 3, mk(l));
        }
        assert_eq!(a, b);
        assert_eq!(a.iter().map(|s| s.line).collect::<Vec<_>>(), vec![1, 3, 5]);
    }

    #[test]
    fn runs_of_parsed_lines_reach_the_source_counts() {
        let (rules, policy) = (RuleSet::builtin().unwrap(), crate::client::ClientPolicy::default());
        let record = Record { kind: Some(RecordKind::Access), status: Some(200), ..Record::default() };
        let feed = |agg: &mut Aggregator, lines: &[(&str, &str)]| {
            for (source, format) in lines {
                let at = LineRef { source: &Arc::from(*source), line: 1 };
                let seen = Seen { source, at, format, raw: b"x", record: &record, hits: &[] };
                agg.observe(&seen, &rules, &policy);
            }
        };
        let (mut a, mut b) = (Aggregator::default(), Aggregator::default());
        // Runs of one line and of several, sources and formats changing alone and together.
        feed(
            &mut a,
            &[("p1", "combined"), ("p1", "combined"), ("p2", "combined"), ("p2", "json"), ("p1", "json")],
        );
        feed(&mut b, &[("p2", "json"), ("p2", "json"), ("p1", "combined")]);
        a.unparsed("p1", LineRef { source: &Arc::from("p1"), line: 9 }, b"?", UnparsedReason::Unrecognized);
        // Merging settles both sides; nothing was settled before.
        a.merge(b);
        let counts = |name: &str| {
            let s = &a.stats.sources[name];
            (s.lines, s.parsed, s.formats.clone().into_iter().collect::<Vec<_>>())
        };
        assert_eq!(counts("p1"), (5, 4, vec![("combined".into(), 3), ("json".into(), 1)]));
        assert_eq!(counts("p2"), (4, 4, vec![("combined".into(), 1), ("json".into(), 3)]));
        assert_eq!((a.stats.lines, a.stats.parsed), (9, 8));
        // More sources at once than runs are kept pending, and a run left open: settled
        // by whoever reads the counts, once.
        let many: Vec<String> = (0..2 * PENDING_RUNS + 1).map(|i| format!("q{i}")).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|s| (s.as_str(), "logfmt")).collect();
        feed(&mut a, &[&many[..], &many[..]].concat());
        a.settle();
        a.settle();
        for (source, _) in &many {
            assert_eq!(a.stats.sources[*source].formats["logfmt"], 2, "{source}");
        }
    }

    /// Feeds `lines` 404s from each of `clients` addresses, one per second each, every
    /// line a new path of `path_bytes`.
    fn feed_probes(agg: &mut Aggregator, clients: u8, lines: i64, path_bytes: usize) {
        let rules = RuleSet::builtin().unwrap();
        for t in 0..lines {
            for c in 0..clients {
                let path = format!("/{t}/{}", "a".repeat(path_bytes));
                line(agg, &rules, [198, 18, 0, c], t, 404, &path, &[]);
            }
        }
    }

    /// An aggregator limited to 64 units fed [`feed_probes`], checked to hold no more
    /// than its budget, counted afresh from every record.
    fn probed_within_budget(clients: u8, lines: i64, path_bytes: usize) -> Aggregator {
        let limits = Limits { clients: 64, light: 64, accounts: 64, ..Limits::default() };
        let mut agg = Aggregator { limits, ..Aggregator::default() };
        feed_probes(&mut agg, clients, lines, path_bytes);
        let (held, budget) =
            (agg.clients.values().map(|c| c.bytes()).sum::<usize>(), 64 * bounded::BYTES_PER_ENTRY);
        assert!(held <= budget, "{held} bytes held for a budget of {budget}");
        assert_eq!(agg.client_units, agg.clients.values().map(|c| c.charged).sum::<usize>());
        agg
    }

    #[test]
    fn persistent_attackers_are_charged_what_their_records_hold() {
        // 40 addresses probing for 1,500 seconds: each record grows its 4xx series and
        // distinct-path set to tens of KiB, far past the 4 KiB an entry is estimated at.
        let agg = probed_within_budget(40, 1_500, 8);
        assert!(agg.summary.clients.entries > 0, "the least active were folded");
        // Folding takes the oldest of equals first, not every record at a level: some
        // attackers keep their whole history (all would be folded again and again else).
        assert!(agg.clients.values().any(|c| c.evidence() == 1_500), "no record kept its history");
    }

    #[test]
    fn long_values_are_charged_to_the_table() {
        // 16 addresses, each 48 distinct 4 KiB paths: top lists full of long values.
        let agg = probed_within_budget(16, 48, 4096);
        assert!(agg.clients.values().all(|c| c.paths.heap_bytes() < 32 * 400), "paths are stored cut");
    }

    #[test]
    fn accounts_under_distributed_attack_are_charged_what_they_hold() {
        // 12 accounts, each failed on by a new address every second for 1,500 seconds:
        // each record's client set and series grow far past the 4 KiB of an estimate.
        let (rules, mut agg) = (RuleSet::builtin().unwrap(), with_64_accounts());
        for t in 0..1_500u32 {
            for account in 0..12u32 {
                let ip = (t * 12 + account).to_be_bytes();
                failed_login(&mut agg, &rules, ip, i64::from(t), &format!("user{account}"));
            }
        }
        let held: usize = agg.accounts.values().flat_map(|u| u.iter()).map(|(n, a)| a.bytes(n)).sum();
        let budget = agg.limits.accounts * bounded::BYTES_PER_ENTRY;
        assert!(held <= budget, "{held} bytes held for a budget of {budget}");
        assert!(agg.summary.accounts.entries > 0);
        let kept = agg.accounts.values().flat_map(|u| u.values());
        assert!(kept.clone().any(|a| a.auth_failures == 1_500), "no account kept its history");
        assert_eq!(agg.account_units, kept.map(|a| a.charged).sum::<usize>());
    }

    /// An aggregator that keeps 64 units of accounts, and clients without bound.
    fn with_64_accounts() -> Aggregator {
        let limits = Limits { clients: 1 << 20, light: 1 << 20, accounts: 64, ..Limits::default() };
        Aggregator { limits, ..Aggregator::default() }
    }

    #[test]
    fn an_account_attacked_less_often_than_the_table_turns_over_comes_back_and_stays() {
        // 64 accounts kept, folded 16 at a time; one failure on `victim` every 150 lines of
        // one-off names, so each of its failures was folded before the next came.
        let (rules, mut agg) = (RuleSet::builtin().unwrap(), with_64_accounts());
        for n in 0..15_000u32 {
            let user = if n % 150 == 0 { "victim".to_string() } else { format!("u{n}") };
            failed_login(&mut agg, &rules, n.to_be_bytes(), i64::from(n), &user);
        }
        assert!(agg.summary.accounts.entries > 10_000, "the one-off names were folded");
        let victim = agg.accounts[crate::detect::APP_REALM].get("victim").expect("victim kept");
        // Its first failure was folded; back with it in `folded_evidence`, it outranked
        // the one-offs at every fold after that.
        assert_eq!((victim.auth_failures, victim.folded_evidence), (99, 1));
    }

    proptest::proptest! {
        /// A record is weighed again only when a line may have grown it (evidence, or a
        /// new value in a list or map), and that is exact: after every line its charge is
        /// what weighing it would give, and the table's total is the sum of the charges.
        #[test]
        fn a_record_is_charged_what_it_holds_after_every_line(
            lines in proptest::collection::vec((0usize..60, 0usize..6, 0usize..5), 1..300),
        ) {
            static RULES: std::sync::OnceLock<RuleSet> = std::sync::OnceLock::new();
            let rules = RULES.get_or_init(|| RuleSet::builtin().unwrap());
            let mut agg = Aggregator::default();
            let paths: Vec<String> = (0..60).map(|i| format!("/{i}/{}", "p".repeat(40 + 4 * i))).collect();
            let agents: Vec<String> = (0..6).map(|i| format!("agent-{i}-{}", "a".repeat(30 * i))).collect();
            let statuses = [200, 301, 404, 500, 503];
            // Five 404s first, so the client has a full record from then on.
            let opening = (0..5).map(|_| (0, 0, 2));
            for (t, (path, agent, status)) in opening.chain(lines).enumerate() {
                let record = Record {
                    kind: Some(RecordKind::Access),
                    time: Some(1_700_000_000 + t as i64),
                    remote_addr: Some(std::net::IpAddr::from([198, 18, 0, 9])),
                    status: Some(statuses[status]),
                    path: Some(paths[path].as_str().into()),
                    user_agent: Some(agents[agent].as_str().into()),
                    ..Record::default()
                };
                let at = LineRef { source: &Arc::from("s"), line: t as u64 };
                let seen = Seen { source: "s", at, format: "combined", raw: b"x", record: &record, hits: &[] };
                agg.observe(&seen, rules, &crate::client::ClientPolicy::default());
                agg.settle();
                for c in agg.clients.values() {
                    proptest::prop_assert_eq!(c.charged, bounded::units(c.bytes()));
                }
                proptest::prop_assert_eq!(agg.client_units, agg.clients.values().map(|c| c.charged).sum::<usize>());
            }
            proptest::prop_assert_eq!(agg.clients.len(), 1);
        }

        /// An account's clients are the set they replaced: the first `most` distinct keys,
        /// in order, each insert saying whether a new key was turned away.
        #[test]
        fn account_clients_keep_the_first_distinct_keys_in_order(
            keys in proptest::collection::vec(0u8..40, 0..120),
            most in 0usize..30,
        ) {
            let (mut clients, mut model) = (AccountClients::default(), std::collections::BTreeSet::new());
            for k in keys {
                let key = key_of([10, 0, 0, k]);
                let fits = model.contains(&key) || model.len() < most;
                if fits {
                    model.insert(key);
                }
                proptest::prop_assert_eq!(clients.insert(key, most), fits);
                proptest::prop_assert!(clients.contains(&key) == fits);
            }
            proptest::prop_assert_eq!(clients.len(), model.len());
            proptest::prop_assert!(clients.iter().eq(model.iter()));
            proptest::prop_assert!(clients.into_iter().eq(model.into_iter()));
        }
    }

    /// One line from `ip` at `t`: `status` for `path`, with `hits`.
    fn line(
        agg: &mut Aggregator,
        rules: &RuleSet,
        ip: [u8; 4],
        t: i64,
        status: u16,
        path: &str,
        hits: &[Hit],
    ) {
        let record = Record {
            kind: Some(RecordKind::Access),
            time: Some(1_700_000_000 + t),
            remote_addr: Some(std::net::IpAddr::from(ip)),
            status: Some(status),
            path: Some(path.to_string().into()),
            ..Record::default()
        };
        let at = LineRef { source: &Arc::from("s"), line: t as u64 };
        let seen = Seen { source: "s", at, format: "combined", raw: b"x", record: &record, hits };
        agg.observe(&seen, rules, &crate::client::ClientPolicy::default());
    }

    #[test]
    fn a_client_gets_a_full_record_at_its_fifth_4xx_or_first_rule_hit() {
        let rules = RuleSet::builtin().unwrap();
        let shared = Arc::new(SharedLights::new(1 << 20));
        for shared in [None, Some(shared)] {
            let mut agg = Aggregator { shared_light: shared.clone(), ..Aggregator::default() };
            let (a, b) = ([198, 18, 0, 1], [198, 18, 0, 2]);
            line(&mut agg, &rules, a, 0, 200, "/", &[]);
            (1..=4).for_each(|t| line(&mut agg, &rules, a, t, 404, &format!("/p{t}"), &[]));
            assert!(agg.clients.is_empty(), "four 404s are a light entry's events");
            line(&mut agg, &rules, a, 5, 404, "/p5", &[]);
            agg.settle();
            let key = crate::client::ClientPolicy::default().key(std::net::IpAddr::from(a));
            let c = agg.clients.get_mut(&key).unwrap();
            assert_eq!((c.requests, c.status_4xx, c.statuses[&404]), (6, 5, 5));
            assert_eq!(c.paths_4xx.most_distinct(600).0, 5, "the light events' paths count");
            assert_eq!(c.times_4xx.busiest(600).0, 5);
            if let Some(s) = &shared {
                assert_eq!(s.len(), 1, "the record took the shared entry over and left its mark");
                let mut handed = 0;
                s.drain_into(|_, _| handed += 1);
                assert_eq!(handed, 0, "a mark that holds no lines hands nothing on");
            }
            // Any other rule hit needs a record at once: a light entry keeps no such events.
            let hit = Hit { rule: rules.find("sql-injection").unwrap(), user: None, ip: None };
            line(&mut agg, &rules, b, 0, 200, "/?id=1' or 1=1", &[hit]);
            assert_eq!(agg.clients.len(), 2);
        }
    }

    /// A failed login from `ip` at `t` against `user`, on an application's line, as
    /// `backend-auth-failed` finds it.
    fn failed_login(agg: &mut Aggregator, rules: &RuleSet, ip: [u8; 4], t: i64, user: &str) {
        let record = Record {
            kind: Some(RecordKind::Backend),
            time: Some(1_700_000_000 + t),
            remote_addr: Some(std::net::IpAddr::from(ip)),
            user: Some(user.to_string().into()),
            ..Record::default()
        };
        let hit = Hit { rule: rules.find("backend-auth-failed").unwrap(), user: None, ip: None };
        let at = LineRef { source: &Arc::from("app"), line: t as u64 };
        let seen =
            Seen { source: "app", at, format: "backend-json", raw: b"x", record: &record, hits: &[hit] };
        agg.observe(&seen, rules, &crate::client::ClientPolicy::default());
    }

    /// Spellings of one name are one account (by default), each spelling counted, also
    /// when the parts of a scan that saw them are merged; a part that saw only the
    /// counted spelling holds no list and still adds its count to it.
    #[test]
    fn spellings_of_a_name_are_one_account_through_a_merge() {
        let rules = RuleSet::builtin().unwrap();
        let (mut a, mut b, mut c) = (Aggregator::default(), Aggregator::default(), Aggregator::default());
        for t in 0..3 {
            failed_login(&mut a, &rules, [198, 51, 100, 1], t, "admin");
            failed_login(&mut b, &rules, [198, 51, 100, 2], t, "Admin");
            failed_login(&mut c, &rules, [198, 51, 100, 3], t, "admin");
        }
        failed_login(&mut b, &rules, [198, 51, 100, 2], 4, "ADMIN");
        let account =
            |agg: &Aggregator| agg.accounts[crate::detect::APP_REALM].get("admin").cloned().unwrap();
        assert!(account(&a).spellings.is_none(), "no list while every line spelled it so");
        assert_eq!(account(&b).spelled(), [("Admin".to_string(), 3), ("ADMIN".to_string(), 1)]);
        a.merge(b);
        a.merge(c);
        let merged = account(&a);
        assert_eq!(merged.auth_failures, 10);
        let spelled = merged.spelled();
        assert_eq!(spelled, [("admin".to_string(), 6), ("Admin".to_string(), 3), ("ADMIN".to_string(), 1)]);

        assert_eq!(AccountCase::Insensitive.key("ǅURO Ölaf"), "ǆuro ölaf");
        assert!(matches!(AccountCase::Insensitive.key("ǆuro"), std::borrow::Cow::Borrowed(_)));
        let mut basic_auth = Aggregator::default();
        for user in ["Admin", "admin"] {
            let record = Record {
                kind: Some(RecordKind::ErrorLog),
                time: Some(1_700_000_000),
                remote_addr: Some([198, 51, 100, 2].into()),
                user: Some(user.into()),
                ..Record::default()
            };
            let hit = Hit { rule: rules.find("nginx-basic-auth-failure").unwrap(), user: None, ip: None };
            let at = LineRef { source: &Arc::from("error.log"), line: 1 };
            let seen =
                Seen { source: "e", at, format: "nginx-error", raw: b"x", record: &record, hits: &[hit] };
            basic_auth.observe(&seen, &rules, &crate::client::ClientPolicy::default());
        }
        assert_eq!(basic_auth.accounts[crate::detect::BASIC_AUTH_REALM].len(), 2, "htpasswd users as logged");
        let mut exact = Aggregator { account_case: AccountCase::Sensitive, ..Aggregator::default() };
        failed_login(&mut exact, &rules, [198, 51, 100, 2], 0, "Admin");
        failed_login(&mut exact, &rules, [198, 51, 100, 2], 1, "admin");
        assert_eq!(exact.accounts[crate::detect::APP_REALM].len(), 2);
    }

    /// The account's reason names how many clients failed on it, and says "at least"
    /// once more failed than the account remembers ([`ACCOUNT_CLIENTS`]).
    #[test]
    fn an_account_reason_counts_its_clients_as_a_lower_bound_past_the_cap() {
        let rules = RuleSet::builtin().unwrap();
        let reason = |clients: u32| {
            let mut agg = Aggregator::default();
            for i in 0..clients {
                failed_login(
                    &mut agg,
                    &rules,
                    [198, 18, (i >> 8) as u8, i as u8],
                    i64::from(i % 60),
                    "admin",
                );
            }
            let report = crate::decide::decide(
                agg,
                &crate::decide::Thresholds::default(),
                &crate::client::SparePolicy::default(),
                &rules,
            );
            report.accounts[0].reasons[0].clone()
        };
        assert!(reason(20).contains(" from 20 client(s)"), "{}", reason(20));
        let past = u32::try_from(ACCOUNT_CLIENTS).unwrap() + 100;
        assert!(reason(past).contains(" from at least 1024 client(s)"), "{}", reason(past));
    }

    #[test]
    fn failed_logins_wait_in_a_light_entry_and_reach_the_record_whole() {
        let rules = RuleSet::builtin().unwrap();
        let rule = rules.find("backend-auth-failed").unwrap();
        let shared = Arc::new(SharedLights::new(1 << 20));
        for shared in [None, Some(shared)] {
            let mut agg = Aggregator { shared_light: shared.clone(), ..Aggregator::default() };
            let a = [198, 18, 0, 1];
            line(&mut agg, &rules, a, 0, 404, "/login", &[]);
            (1..=3).for_each(|t| failed_login(&mut agg, &rules, a, t, if t == 2 { "root" } else { "admin" }));
            assert!(agg.clients.is_empty(), "a 404 and three failed logins are a light entry's events");
            failed_login(&mut agg, &rules, a, 4, "admin");
            agg.settle();
            let key = crate::client::ClientPolicy::default().key(std::net::IpAddr::from(a));
            let c = agg.clients.get_mut(&key).expect("the fifth piece of evidence makes a record");
            assert_eq!((c.requests, c.status_4xx, c.auth_failures, c.rules[&rule]), (1, 1, 4, 4));
            assert_eq!(c.times_auth.busiest(600).0, 4, "the light events' times count");
            assert_eq!(c.auth_accounts.most_distinct(600).0, 2, "and their accounts");
            assert_eq!(c.accounts.top(5), vec![("admin".to_string(), 3), ("root".to_string(), 1)]);
            assert_eq!((c.first_seen, c.last_seen), (Some(1_700_000_000), Some(1_700_000_004)));
            assert_eq!(
                c.samples.iter().map(|s| s.line).collect::<Vec<_>>(),
                vec![4],
                "the record's own line"
            );
        }
    }

    fn requests_of(agg: &Aggregator, ip: [u8; 4]) -> (u64, Option<i64>) {
        let key = crate::client::ClientPolicy::default().key(std::net::IpAddr::from(ip));
        match (agg.clients.get(&key), agg.light.get(&key)) {
            (Some(c), None) => (c.requests, c.first_seen),
            (None, Some(l)) => (l.requests, l.first_seen()),
            both => panic!("{ip:?}: a record and a light entry at once, or neither: {both:?}"),
        }
    }

    proptest::proptest! {
        /// Grouping keeps every line once, in shard order, each shard's in their order.
        #[test]
        fn quiet_lines_group_by_shard_in_order(shards in proptest::collection::vec(0u8..64, 0..300)) {
            let record = Record::default();
            let quiet: Vec<QuietLine> = shards.iter().enumerate().map(|(i, &shard)| {
                QuietLine { shard, time: Some(i as i64), ..QuietLine::of(key_of([10, 0, 0, 1]), &record, 0) }
            }).collect();
            let mut grouped = [quiet[0..quiet.len().min(3)].to_vec(), quiet.clone()].concat();
            group_by_shard(&quiet, &mut grouped);
            let mut expected = quiet.clone();
            expected.sort_by_key(|q| (q.shard, q.time));
            let order = |v: &[QuietLine]| v.iter().map(|q| (q.shard, q.time)).collect::<Vec<_>>();
            proptest::prop_assert_eq!(order(&grouped), order(&expected));
        }
    }

    #[test]
    fn quiet_lines_are_counted_where_their_client_is_when_settled() {
        let rules = RuleSet::builtin().unwrap();
        for shared in [None, Some(Arc::new(SharedLights::new(1 << 20)))] {
            let mut agg = Aggregator { shared_light: shared.clone(), ..Aggregator::default() };
            let (a, b) = ([198, 18, 0, 1], [198, 18, 0, 2]);
            // a's first line is quiet and held; its fifth 404 makes a record before that
            // line is counted: the record must get it.
            line(&mut agg, &rules, a, 0, 200, "/", &[]);
            (1..=5).for_each(|t| line(&mut agg, &rules, a, t, 404, &format!("/p{t}"), &[]));
            (0..3).for_each(|t| line(&mut agg, &rules, b, 10 + t, 302, "/", &[]));
            // The next quiet line of a goes straight to its record's client at settle too.
            line(&mut agg, &rules, a, 20, 200, "/", &[]);
            agg.settle();
            if let Some(s) = &shared {
                agg.absorb_lights(s);
            }
            assert_eq!(requests_of(&agg, a), (7, Some(1_700_000_000)));
            assert_eq!(
                agg.clients[&ClientKey(ipnet::IpNet::from(std::net::IpAddr::from(a)))].statuses[&200],
                2
            );
            assert_eq!(requests_of(&agg, b), (3, Some(1_700_000_010)));
        }
    }

    /// A worker's aggregator on `shared`.
    fn worker(shared: &Arc<SharedLights>) -> Aggregator {
        Aggregator { shared_light: Some(shared.clone()), ..Aggregator::default() }
    }

    fn key_of(ip: [u8; 4]) -> ClientKey {
        crate::client::ClientPolicy::default().key(std::net::IpAddr::from(ip))
    }

    #[test]
    fn a_client_with_a_record_on_one_worker_keeps_every_4xx_of_the_others_under_a_spray() {
        let rules = RuleSet::builtin().unwrap();
        let shared = Arc::new(SharedLights::new(64));
        let (mut a, mut b) = (worker(&shared), worker(&shared));
        let attacker = [203, 0, 113, 1];
        // Five 404s on worker a: a full record there, and its mark in the shared table.
        (0..5).for_each(|t| line(&mut a, &rules, attacker, t, 404, "/p", &[]));
        // One on worker b, then a spray of one-off addresses, all newer, that folds the
        // table many times over; the attacker's lines on a touch no shared entry.
        line(&mut b, &rules, attacker, 5, 404, "/p", &[]);
        let key = key_of(attacker);
        assert!(b.clients.contains_key(&key), "the mark sends evidence to a record");
        for i in 0..1_000u32 {
            let [_, _, c, d] = i.to_be_bytes();
            line(&mut b, &rules, [198, 18, c, d], 6 + i64::from(i), 404, "/", &[]);
            line(&mut a, &rules, attacker, 6 + i64::from(i), 200, "/", &[]);
        }
        assert!(b.summary.clients.entries > 0, "the spray folded the shared table");
        // The mark outlived the spray: a third worker's first 404 goes to a record too.
        let mut c = worker(&shared);
        line(&mut c, &rules, attacker, 6, 404, "/p", &[]);
        assert!(c.clients.contains_key(&key), "the mark was folded");
        a.merge(b);
        a.merge(c);
        a.absorb_lights(&shared);
        let c = a.clients.get_mut(&key).unwrap();
        assert_eq!((c.requests, c.status_4xx, c.times_4xx.busiest(600).0), (1_007, 7, 7));
    }

    #[test]
    fn merged_compact_entries_keep_the_stricter_bound_on_events() {
        let rules = RuleSet::builtin().unwrap();
        let limits = Limits { light_events: 2, ..Limits::default() };
        let client = [203, 0, 113, 9];
        let mut merged = Aggregator::default();
        for _ in 0..2 {
            let mut part = Aggregator { limits, ..Aggregator::default() };
            (0..2).for_each(|t| line(&mut part, &rules, client, t, 404, "/p", &[]));
            assert!(part.clients.is_empty(), "two 404s stay compact");
            // As a scan's reduction does: into an aggregator with the default bound.
            merged.merge(part);
        }
        assert!(merged.light.is_empty(), "four events together are past the bound of two");
        assert_eq!(merged.clients[&key_of(client)].status_4xx, 4);
    }

    #[test]
    fn a_mark_hands_on_every_line_counted_in_it() {
        let rules = RuleSet::builtin().unwrap();
        let shared = Arc::new(SharedLights::new(64));
        let (mut a, mut b) = (worker(&shared), worker(&shared));
        let client = [203, 0, 113, 20];
        let hit = Hit { rule: rules.find("sql-injection").unwrap(), user: None, ip: None };
        line(&mut a, &rules, client, 0, 200, "/?id=1' or 1=1", &[hit]);
        // A backend line with no evidence, later, on the other worker: it counts no
        // request, only that the client was seen then, and it lands in the mark.
        let record = Record {
            kind: Some(RecordKind::Backend),
            time: Some(1_700_000_001),
            remote_addr: Some(std::net::IpAddr::from(client)),
            ..Record::default()
        };
        let at = LineRef { source: &Arc::from("s"), line: 2 };
        let seen = Seen { source: "s", at, format: "json", raw: b"x", record: &record, hits: &[] };
        b.observe(&seen, &rules, &crate::client::ClientPolicy::default());
        b.settle();
        assert!(b.clients.is_empty());
        a.merge(b);
        a.absorb_lights(&shared);
        let c = &a.clients[&key_of(client)];
        assert_eq!((c.requests, c.first_seen, c.last_seen), (1, Some(1_700_000_000), Some(1_700_000_001)));
    }

    #[test]
    fn held_quiet_lines_are_bounded_and_a_full_shared_table_folds_and_goes_on() {
        let rules = RuleSet::builtin().unwrap();
        let shared = Arc::new(SharedLights::new(64));
        let mut agg = Aggregator { shared_light: Some(shared.clone()), ..Aggregator::default() };
        for i in 0..3 * QUIET_BATCH as u32 {
            let [_, _, c, d] = i.to_be_bytes();
            line(&mut agg, &rules, [198, 18, c, d], i64::from(i), 200, "/", &[]);
            assert!(agg.quiet.len() < QUIET_BATCH, "the held lines are counted once a batch is full");
        }
        agg.settle();
        assert!(agg.quiet.is_empty());
        assert!(shared.len() <= 64, "{} entries in a table of 64", shared.len());
        assert!(agg.summary.clients.entries > 0, "the table folded to make room");
        // Under no bound every held line is counted, in the shared table as in a private one.
        for shared in [None, Some(Arc::new(SharedLights::new(usize::MAX)))] {
            let mut agg = Aggregator { shared_light: shared.clone(), ..Aggregator::default() };
            (0..5_000u32)
                .for_each(|i| line(&mut agg, &rules, [198, 18, 0, (i % 300) as u8], 1, 200, "/", &[]));
            agg.settle();
            if let Some(s) = &shared {
                agg.absorb_lights(s);
            }
            assert_eq!(agg.light.values().map(|l| l.requests).sum::<u64>(), 5_000);
        }
    }

    #[test]
    fn eviction_keeps_memory_flat_over_days() {
        use crate::client::ClientPolicy;
        let policy = ClientPolicy::default();
        let rules = RuleSet::builtin().unwrap();
        let mut agg = Aggregator::default();
        let day = 86_400;
        for minute in 0..(3 * day / 60) {
            let t = minute * 60;
            let ip = std::net::IpAddr::from([203, 0, 113, (minute % 250) as u8]);
            let record = Record {
                kind: Some(RecordKind::Access),
                time: Some(t),
                remote_addr: Some(ip),
                status: Some(404),
                ..Record::default()
            };
            let at = LineRef { source: &Arc::from("s"), line: 1 };
            let seen = Seen { source: "s", at, format: "combined", raw: b"x", record: &record, hits: &[] };
            agg.observe(&seen, &rules, &policy);
            if minute % 60 == 0 {
                agg.evict_before(t - 600);
            }
        }
        // Only clients seen in the last window (plus the last hour before an eviction) stay.
        assert!(agg.clients.len() <= 70, "{} clients kept", agg.clients.len());
        assert!(
            agg.incident.clone().take_minutes().len() <= 24 * 60 + 60 + 10,
            "{} minutes kept",
            agg.incident.clone().take_minutes().len()
        );
        let entries: usize = agg.clients.values_mut().map(|c| c.times_4xx.busiest(600).0 as usize).sum();
        assert!(entries <= 70);
    }

    /// A 404 of `ip` at `time`, observed as the pipeline would.
    fn observe_404(agg: &mut Aggregator, rules: &RuleSet, ip: [u8; 4], time: i64) {
        let record = Record {
            kind: Some(RecordKind::Access),
            time: Some(time),
            remote_addr: Some(std::net::IpAddr::from(ip)),
            status: Some(404),
            ..Record::default()
        };
        let at = LineRef { source: &Arc::from("s"), line: 1 };
        let seen = Seen { source: "s", at, format: "combined", raw: b"x", record: &record, hits: &[] };
        agg.observe(&seen, rules, &crate::client::ClientPolicy::default());
    }

    /// `--follow` evicts relative to the median client's last time: a line an hour ahead
    /// (or a few) does not move it, it never passes the newest time, and evicting a
    /// window before it at every check still keeps memory flat (about two windows of
    /// one-off clients: the median lags the newest time by one).
    #[test]
    fn the_eviction_reference_ignores_a_few_lines_dated_ahead() {
        let rules = RuleSet::builtin().unwrap();
        let mut agg = Aggregator::default();
        assert_eq!(agg.eviction_reference(), None);
        (0..100u8).for_each(|i| observe_404(&mut agg, &rules, [203, 0, 113, i], 1_000 + i64::from(i)));
        (0..3u8).for_each(|i| observe_404(&mut agg, &rules, [192, 0, 2, i], 4_600));
        assert_eq!(agg.stats.last_event_time, Some(4_600));
        let reference = agg.eviction_reference().unwrap();
        assert!((1_000..1_100).contains(&reference), "{reference}");
        let mut one = Aggregator::default();
        observe_404(&mut one, &rules, [203, 0, 113, 1], 50);
        assert_eq!(one.eviction_reference(), Some(50));

        let mut follow = Aggregator::default();
        for minute in 0..(3 * 86_400 / 60) {
            observe_404(&mut follow, &rules, [198, 51, 100, (minute % 250) as u8], minute * 60);
            let reference = follow.eviction_reference().unwrap();
            assert!(reference <= minute * 60);
            follow.evict_before(reference - 600);
        }
        let kept = follow.clients.len() + follow.light.len();
        assert!((10..=25).contains(&kept), "{kept} clients kept");
    }
}
