//! Bounded memory when an attacker sprays addresses or account names, or grows a few
//! records to their caps. The exact tables hold at most a configured number of units of
//! [`BYTES_PER_ENTRY`], each record charged for what it holds ([`units`]); when one
//! outgrows its limit, the entries with the least evidence (and of those, the oldest) are
//! folded into an approximate summary (a count-min sketch of their evidence) until the
//! table is back to three quarters full.
//!
//! Every client starts as a [`Light`] entry, which also keeps its first [`LIGHT_EVENTS`]
//! pieces of evidence exactly: 4xx answers (time and path) and failed logins (time, rule
//! and account); it gets a full record with the next piece of evidence or its first other
//! rule hit. Most clients of ordinary traffic draw a stray 404 or two (a favicon, a stale
//! link): giving each a full record at its first made that record, its top lists and their
//! cache misses most of a scan's time; so did a full record for each address of a botnet
//! spraying passwords, one or two failed logins each (three times the time per line: see
//! the performance log). A full record thus always holds more than a light entry can, and
//! a folded one goes to the sketch; light entries are folded into it too when their own
//! table is full. Keeping a client's first events exactly means a sprayed stream can
//! interleave an attacker's requests with hundreds of thousands of one-off addresses and
//! the attacker's count still comes out exact: the one-offs hold one event each and go
//! first.
//!
//! Evidence decides who stays: a client with no 4xx, failed login or rule hit carries
//! nothing a decision needs and goes first, so ordinary traffic never changes a proposal.
//! Under spraying, a client is only folded while at least the table's capacity of
//! clients has more evidence than it, so anyone who crosses a threshold is still counted
//! exactly unless an attacker can afford that many stronger decoys. Whenever the summary
//! is used, the report says so, with the most evidence any folded entry had; a client that
//! returns after being folded carries the sketch's estimate of what it had before.

use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::detect::RuleId;

/// Units of [`BYTES_PER_ENTRY`] kept exactly, per table (light entries: entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub clients: usize,
    /// Clients without a full record, in compact form.
    pub light: usize,
    pub accounts: usize,
    /// Pieces of evidence a compact entry keeps as events, at most [`LIGHT_EVENTS`]: fewer
    /// when a threshold is that low ([`Limits::below_threshold`]).
    pub light_events: usize,
    /// Bytes of request times (see [`super::requests`]), kept only by a scan that judges
    /// request rates ([`Limits::with_request_times`]).
    pub request_bytes: usize,
}

/// Evidence events a [`Light`] entry keeps exactly. Four: on the 1 GB benchmark corpus
/// under the default memory bound, two sent about 10,000 clients with three 4xx answers into
/// the approximate sketch.
pub const LIGHT_EVENTS: usize = 4;
/// Estimated bytes of one light entry that holds evidence: 112 in its table with its key,
/// 16 in the table's index, the table's spare room and the copy made while it grows
/// ([`super::dense`]), and 208 behind its pointer (the
/// events, and the names of failed logins). Sprays of one-off addresses peaked at ~650
/// bytes an entry (RSS over entries, one event each), and 256 let such a spray take more
/// than twice the light quarter of `--max-memory`. A quiet entry holds far less, and so
/// does one whose only evidence is one 4xx answer, which it keeps in line.
pub const BYTES_PER_LIGHT: usize = 512;

/// The unit a full record is charged in, and the least it is charged: an ordinary record,
/// map overhead and allocator included, measured on this machine at about 1.7 KB for a
/// client seen once, up to about 4 KB for a busy one with its top paths and agents; 4 KB
/// keeps the default bound on both the 10-million-address spray and the 1 GB ordinary
/// corpus of the benchmarks. A record holding more is charged more (see [`units`]).
pub const BYTES_PER_ENTRY: usize = 4096;
/// Memory that does not grow with entries: buffers, rules, sketches, the runtime.
pub const FIXED_BYTES: usize = 40 << 20;

impl Limits {
    /// No limit (library default; the command line always sets one).
    pub const UNBOUNDED: Limits = Limits {
        clients: usize::MAX,
        light: usize::MAX,
        accounts: usize::MAX,
        light_events: LIGHT_EVENTS,
        request_bytes: usize::MAX,
    };

    /// Limits that keep a scan near `bytes` of memory: of what is left after the fixed
    /// part, half for full client records, a quarter for light ones, a quarter for accounts.
    pub fn for_memory(bytes: usize) -> Limits {
        let room = bytes.saturating_sub(FIXED_BYTES);
        Limits {
            clients: (room / 2 / BYTES_PER_ENTRY).max(64),
            light: (room / 4 / BYTES_PER_LIGHT).max(64),
            accounts: (room / 4 / BYTES_PER_ENTRY).max(64),
            light_events: LIGHT_EVENTS,
            request_bytes: room / 4,
        }
    }

    /// These limits for a scan that keeps request times: a quarter of the room for them,
    /// taken from the others in proportion, so that the scan stays near its bound.
    pub fn with_request_times(self) -> Limits {
        let three_quarters = |n: usize| if n == usize::MAX { n } else { (n / 4 * 3).max(64) };
        Limits {
            clients: three_quarters(self.clients),
            light: three_quarters(self.light),
            accounts: three_quarters(self.accounts),
            ..self
        }
    }

    /// These limits, with compact entries keeping fewer events than `threshold` (the
    /// lower of the 4xx and failed-login thresholds): the event that crosses it then lands
    /// in a full record, which keeps its line as a sample (a compact entry keeps no
    /// lines), so no client is proposed without evidence to show.
    pub fn below_threshold(self, threshold: u64) -> Limits {
        let below = usize::try_from(threshold.saturating_sub(1)).unwrap_or(usize::MAX);
        Limits { light_events: self.light_events.min(below), ..self }
    }

    /// One worker's share, so that all workers together stay within the limits.
    pub fn share(self, workers: usize) -> Limits {
        let w = workers.max(1);
        Limits {
            clients: (self.clients / w).max(16),
            light: (self.light / w).max(16),
            accounts: (self.accounts / w).max(16),
            light_events: self.light_events,
            request_bytes: self.request_bytes / w,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::UNBOUNDED
    }
}

/// What the summary holds for one kind of entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Folded {
    /// Entries folded into the summary (an entry folded twice counts twice).
    pub entries: u64,
    /// The most evidence any folded entry had (4xx + failed logins + rule hits for a
    /// client; failed logins for an account). 0: nothing a decision uses was lost.
    pub max_evidence: u64,
}

/// The approximate summary of folded entries. Workers of one scan share one sketch, and
/// one filter each of the clients and of the accounts folded with evidence.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub clients: Folded,
    pub accounts: Folded,
    sketch: Arc<CountMin>,
    /// Asked before the sketch when a client appears. Under a spray of one-off
    /// addresses, a million folded with one 4xx each leave about half the new addresses
    /// with all four of their cells above zero: 432 of the 1,000 clients listed after
    /// such a spray showed a `folded_evidence` of noise (2 with the filter), and each
    /// such entry took a box to hold it.
    folded_clients: Arc<FoldedNames<CLIENT_HASHES>>,
    folded_accounts: Arc<FoldedNames<7>>,
}

impl Summary {
    /// Whether anything was folded.
    pub fn used(&self) -> bool {
        self.clients.entries > 0 || self.accounts.entries > 0
    }

    /// Records a folded client (`key_hash`: its stable hash) with `evidence`.
    pub fn fold_client(&mut self, key_hash: u64, evidence: u64) {
        self.clients.entries += 1;
        self.clients.max_evidence = self.clients.max_evidence.max(evidence);
        if evidence > 0 {
            self.sketch.add(key_hash, evidence);
            self.folded_clients.insert(key_hash);
        }
    }

    /// Records a folded account with `failures`.
    pub fn fold_account(&mut self, key_hash: u64, failures: u64) {
        self.accounts.entries += 1;
        self.accounts.max_evidence = self.accounts.max_evidence.max(failures);
        if failures > 0 {
            self.sketch.add(key_hash, failures);
            self.folded_accounts.insert(key_hash);
        }
    }

    /// An upper bound of the failed logins folded for the account `key_hash`: 0 when it
    /// was never folded with any (as far as a filter of folded names tells, which can
    /// say "folded" of a name that was not, never "not folded" of one that was).
    pub fn account_estimate(&self, key_hash: u64) -> u64 {
        self.estimate_if_in(&self.folded_accounts, key_hash)
    }

    /// Whether any worker of the scan has folded an account with failures yet.
    pub fn folds_accounts(&self) -> bool {
        self.folded_accounts.filter.get().is_some()
    }

    /// An upper bound of the evidence folded for the client `key_hash`: 0 when it was
    /// never folded with any (as far as the filter of folded clients tells, as for
    /// accounts).
    pub fn estimate(&self, key_hash: u64) -> u64 {
        self.estimate_if_in(&self.folded_clients, key_hash)
    }

    /// The sketch's estimate for `key_hash` when `folded` holds it, else 0.
    fn estimate_if_in<const H: u32>(&self, folded: &FoldedNames<H>, key_hash: u64) -> u64 {
        if folded.contains(key_hash) { self.sketch.estimate(key_hash) } else { 0 }
    }

    /// A summary that shares this one's sketch and filters (for another worker of the
    /// same scan).
    pub fn sharing(&self) -> Summary {
        Summary {
            clients: Folded::default(),
            accounts: Folded::default(),
            sketch: self.sketch.clone(),
            folded_clients: self.folded_clients.clone(),
            folded_accounts: self.folded_accounts.clone(),
        }
    }

    /// Whether both summaries add to one sketch.
    pub fn shares_sketch_with(&self, o: &Summary) -> bool {
        Arc::ptr_eq(&self.sketch, &o.sketch)
    }

    pub fn merge(&mut self, o: Summary) {
        for (mine, theirs) in [(&mut self.clients, o.clients), (&mut self.accounts, o.accounts)] {
            mine.entries += theirs.entries;
            mine.max_evidence = mine.max_evidence.max(theirs.max_evidence);
        }
        if !Arc::ptr_eq(&self.sketch, &o.sketch) {
            self.sketch.merge(&o.sketch);
        }
        if !Arc::ptr_eq(&self.folded_clients, &o.folded_clients) {
            self.folded_clients.merge(&o.folded_clients);
        }
        if !Arc::ptr_eq(&self.folded_accounts, &o.folded_accounts) {
            self.folded_accounts.merge(&o.folded_accounts);
        }
    }
}

/// Which entries a fold removes: all with less evidence than `level`, and of those at
/// `level` the oldest (by last seen, then an arbitrary fixed order; see [`rank`]) up to
/// the number needed. Keeping the newest at the boundary is what lets a returning
/// attacker survive a spray.
#[derive(Clone, Copy, Debug)]
pub struct FoldPlan {
    level: u64,
    cutoff: Rank,
}

/// An entry's age for folding: when it was last seen, then a tie-break.
pub type Age = (i64, u64);

/// An entry's place in a fold at its level: its [`Age`] with the time to the minute (see
/// [`rank`]).
pub type Rank = Age;

/// The [`Rank`] of an entry at its level: its [`Age`] with the time to the minute.
/// Attackers in lockstep sit on one level and are seen every round. To the second, which
/// of them was older depended on where a fold fell within a round, so each fold unseated
/// records that had kept their history, and they came back with none: first found with
/// heavy attackers on the last level; a botnet of 22,000 addresses, twelve failed logins
/// each, under the default bound on one thread proposed 11,707 of them with the seconds
/// kept below the last level, 15,311 without. To the minute they tie, and the fixed order
/// keeps the same ones on every fold and on every worker. (The least evidence first kept
/// more whole on one thread, but on two none: each worker has part of a client's lines,
/// so their rankings differed, and a client kept on one was folded on the other.)
pub fn rank((time, tie): Age) -> Rank {
    (time.div_euclid(60), tie)
}

/// The rank above every entry's: a plan that folds all at its level.
const ALL: Rank = (i64::MAX, u64::MAX);

impl FoldPlan {
    /// Plans a fold of `entries` (evidence, entry) from `len` down to `target`, in two
    /// passes; `age` is asked only of the entries at the level.
    pub fn new<T>(
        entries: impl Iterator<Item = (u64, T)> + Clone,
        age: impl Fn(&T) -> Age,
        len: usize,
        target: usize,
    ) -> FoldPlan {
        let histogram = histogram(entries.clone().map(|e| (e.0, 1)));
        let level = level_of(&histogram, len, target);
        let ranks = entries.filter(|e| at_level(e.0, level)).map(|e| rank(age(&e.1))).collect();
        FoldPlan::at_level(level, below(&histogram, level), ranks, len, target)
    }

    /// The plan once the level is known: `below` entries have less evidence, `ranks` are
    /// those of the entries at the level.
    pub fn at_level(level: u64, below: usize, mut ranks: Vec<Rank>, len: usize, target: usize) -> FoldPlan {
        let need = len.saturating_sub(target).saturating_sub(below);
        let cutoff = if need >= ranks.len() { ALL } else { *ranks.select_nth_unstable(need).1 };
        FoldPlan { level, cutoff }
    }

    /// [`FoldPlan::new`] for entries of different weights (evidence, weight, entry), from
    /// a total weight `total` down to `target`: at the level, the oldest go first until
    /// their weight is what must go. `age` is asked only of the entries at the level.
    pub fn weighted<T>(
        entries: impl Iterator<Item = (u64, usize, T)> + Clone,
        age: impl Fn(&T) -> Age,
        total: usize,
        target: usize,
    ) -> FoldPlan {
        let histogram = histogram(entries.clone().map(|e| (e.0, e.1)));
        let level = level_of(&histogram, total, target);
        let below = below(&histogram, level);
        let mut at: Vec<(Rank, usize)> =
            entries.filter(|e| at_level(e.0, level)).map(|e| (rank(age(&e.2)), e.1)).collect();
        let need = total.saturating_sub(target).saturating_sub(below);
        if at.iter().all(|&(_, w)| w == 1) {
            // The usual case (a spray of one-off records at the level): no sort needed.
            let ranks = at.into_iter().map(|(rank, _)| rank).collect();
            return FoldPlan::at_level(level, 0, ranks, need, 0);
        }
        at.sort_unstable();
        let mut folded = 0;
        let first_kept = at.iter().position(|&(_, w)| {
            let kept = folded >= need;
            folded += w;
            kept
        });
        let cutoff = first_kept.map_or(ALL, |i| at[i].0);
        FoldPlan { level, cutoff }
    }

    /// Whether the entry with `evidence` and `age` is folded.
    pub fn folds(&self, evidence: u64, age: Age) -> bool {
        self.folds_by(evidence, || age)
    }

    /// [`FoldPlan::folds`], asking `age` only when the evidence is at the level.
    pub fn folds_by(&self, evidence: u64, age: impl FnOnce() -> Age) -> bool {
        // As the histogram counts it: past the last level, all is one level.
        let level = evidence.min(LEVELS as u64 - 1);
        level < self.level || (level == self.level && rank(age()) < self.cutoff)
    }
}

/// The smallest evidence level `l` such that dropping every entry with evidence `<= l`
/// brings the entries' total weight, `total`, down to `target` or below. `entries` are
/// (evidence, weight): a full record weighs its [`units`], a light entry one.
pub fn fold_level(entries: impl Iterator<Item = (u64, usize)>, total: usize, target: usize) -> u64 {
    level_of(&histogram(entries), total, target)
}

/// The total weight of `entries` (evidence, weight) at each evidence level.
fn histogram(entries: impl Iterator<Item = (u64, usize)>) -> [usize; LEVELS] {
    let mut histogram = [0; LEVELS];
    entries.for_each(|(s, w)| count_level(&mut histogram, s, w));
    histogram
}

/// Evidence levels told apart when folding; more evidence than this counts as this.
pub const LEVELS: usize = 256;

/// Counts an entry with `score` and `weight` in a histogram for [`level_of`].
pub fn count_level(histogram: &mut [usize; LEVELS], score: u64, weight: usize) {
    histogram[(score as usize).min(LEVELS - 1)] += weight;
}

/// [`fold_level`] from a histogram of the weights at each score.
pub fn level_of(histogram: &[usize; LEVELS], total: usize, target: usize) -> u64 {
    let need = total.saturating_sub(target);
    let mut dropped = 0;
    for (level, n) in histogram.iter().enumerate() {
        dropped += n;
        if dropped >= need {
            return level as u64;
        }
    }
    u64::MAX
}

/// The weight of the entries of `histogram` with less evidence than `level`.
pub fn below(histogram: &[usize; LEVELS], level: u64) -> usize {
    histogram.iter().take(usize::try_from(level).unwrap_or(LEVELS)).sum()
}

/// Whether `evidence` falls on `level` of the folding histogram (the last level holds
/// all evidence from there on).
fn at_level(evidence: u64, level: u64) -> bool {
    evidence.min(LEVELS as u64 - 1) == level
}

/// How many entries of [`BYTES_PER_ENTRY`] a record holding `bytes` is charged as in its
/// table: at least one, and one more for each further [`BYTES_PER_ENTRY`] begun. The
/// tables' limits count these units, so a record an attacker has grown to its caps (long
/// series, full lists) takes the room of the entries it could have been.
pub fn units(bytes: usize) -> usize {
    bytes.div_ceil(BYTES_PER_ENTRY).max(1)
}

/// Charges a record that holds `bytes` now and was charged `*charged` units: sets
/// `*charged` to its [`units`] and returns the change, for its table's total.
pub fn recharge(charged: &mut usize, bytes: usize) -> isize {
    let was = std::mem::replace(charged, units(bytes));
    *charged as isize - was as isize
}

/// A client in compact form: its counts, and each evidence event exactly. Every client
/// starts as one, and only gets a full record (top lists, samples, windows) with its
/// fifth piece of evidence (4xx answers and failed logins together) or first other rule
/// hit: most clients never send that much, and counting their requests this way costs one
/// small entry instead of a full record.
///
/// There is one per distinct client, so its size is the scan's memory: 88 bytes, with
/// room inline for the first four status codes a client is answered with (an ordinary
/// visitor gets two or three) and for one 4xx answer (a sprayed address sends one), and
/// everything rarer behind one pointer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Light {
    pub requests: u64,
    /// First and last event time, [`NO_TIME`] when none was seen (two `Option<i64>`
    /// would take 32 bytes instead of 16).
    first: i64,
    last: i64,
    /// Status codes (0: free slot) and their counts. A fifth code, or a count that
    /// outgrows `u32`, moves to `rare`; a code is in one place only.
    codes: [u16; INLINE_STATUSES],
    counts: [u32; INLINE_STATUSES],
    /// [`Light::fold_rank`], kept in step with the events and the mark by every change to
    /// either ([`Light::restand`]). Folding reads the rank of every entry in two or three
    /// passes, and following the pointer for it was a cache miss each time: those passes
    /// were 30% of the time of a scan of a million one-off 404s.
    rank: u8,
    /// The one evidence event of an entry that has nothing behind `rare` (then always
    /// `None`: events are in one place). A spray of one-off addresses gave every entry a
    /// `rare` part for its one 404, allocated, and freed by the fold soon after, on two
    /// threads often by the other worker (glibc's arena lock; perf: the allocator and
    /// the fold's miss on each freed part were a fifth of such a scan).
    lone: Option<LightEvent>,
    rare: Option<Box<Rare>>,
}

const INLINE_STATUSES: usize = 4;
/// The fold rank of a mark: above any count of events.
const MARK_RANK: u8 = LIGHT_EVENTS as u8 + 1;
/// The stored form of "no time" in a [`Light`] entry; no log carries this instant.
const NO_TIME: i64 = i64::MIN;

/// What few light entries hold: more status codes, evidence events, folding history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Rare {
    statuses: Vec<(u16, u64)>,
    events: LightEvents,
    /// The accounts of the failed logins among `events` that named one, in their order:
    /// a full record made from this entry lists them among the accounts tried. The first
    /// inline (a sprayed address fails once), and a name of up to 24 bytes in place.
    users: smallvec::SmallVec<[CompactString; 1]>,
    /// The sketch's bound on evidence folded before (see `ClientStats::folded_evidence`).
    folded: u64,
    /// A worker of the scan holds a full record of this client (see
    /// [`Light::hand_to_record`]): its evidence goes to a record, never here.
    mark: Option<Mark>,
}

/// The mark of a client that a worker gave a full record ([`Light::hand_to_record`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mark {
    /// When the client was last seen as the mark was left: its age when folding. Apart
    /// from the entry's own times, which are those of lines counted since.
    last_seen: Option<i64>,
}

/// At most [`LIGHT_EVENTS`] evidence events, inline: one allocation less per client
/// that has any.
pub type LightEvents = smallvec::SmallVec<[LightEvent; LIGHT_EVENTS]>;

/// One evidence event of a light entry: a 4xx answer with its path's hash, or a failed
/// login with its rule and its account's hash. 24 bytes (with `Option`s for both, 40), as
/// a light entry holds up to [`LIGHT_EVENTS`] of them. Other rule hits give a client a full
/// record at once, so they are never light events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LightEvent {
    /// The rule that found a failed login; `None` for a 4xx answer.
    rule: Option<RuleId>,
    has_value: bool,
    /// [`NO_TIME`] when the line had no time.
    time: i64,
    value: u64,
}

impl LightEvent {
    /// A 4xx answer at `time` with the hash of its path.
    pub fn new(time: Option<i64>, value: Option<u64>) -> LightEvent {
        let time = time.unwrap_or(NO_TIME);
        LightEvent { rule: None, has_value: value.is_some(), time, value: value.unwrap_or(0) }
    }

    /// A failed login found by `rule` at `time`, with the hash of its account's name.
    pub fn failed_login(rule: RuleId, time: Option<i64>, account: Option<u64>) -> LightEvent {
        LightEvent { rule: Some(rule), ..LightEvent::new(time, account) }
    }

    /// The rule of a failed login; `None` for a 4xx answer.
    pub fn rule(&self) -> Option<RuleId> {
        self.rule
    }

    /// Whether this is a failed login (else a 4xx answer).
    pub fn is_failed_login(&self) -> bool {
        self.rule.is_some()
    }

    pub fn time(&self) -> Option<i64> {
        (self.time != NO_TIME).then_some(self.time)
    }

    /// The path's hash (a 4xx answer) or the account's (a failed login), when there was one.
    pub fn value(&self) -> Option<u64> {
        self.has_value.then_some(self.value)
    }
}

impl Default for Light {
    fn default() -> Self {
        Light::new(0)
    }
}

impl Light {
    /// An entry with no requests; `folded` is the sketch's bound on evidence folded before.
    pub fn new(folded: u64) -> Light {
        let rare = (folded > 0).then(|| Box::new(Rare { folded, ..Rare::default() }));
        let (codes, counts) = ([0; INLINE_STATUSES], [0; INLINE_STATUSES]);
        Light { requests: 0, first: NO_TIME, last: NO_TIME, codes, counts, rank: 0, lone: None, rare }
    }

    /// An entry holding these counts and evidence events.
    pub fn with_events(
        requests: u64,
        statuses: impl IntoIterator<Item = (u16, u64)>,
        seen: (Option<i64>, Option<i64>),
        events: impl IntoIterator<Item = LightEvent>,
        folded: u64,
    ) -> Light {
        let mut l = Light::new(folded);
        l.requests = requests;
        statuses.into_iter().for_each(|(status, n)| l.add_status(status, n));
        l.merge_seen(seen.0, seen.1);
        let rare = l.rare_mut();
        rare.events = events.into_iter().collect();
        l.restand();
        l
    }

    /// Evidence events held.
    pub fn evidence(&self) -> u64 {
        self.events().len() as u64
    }

    /// Where this entry stands when its table is folded: its evidence, or for the mark of
    /// a client with a full record ([`Light::hand_to_record`]), more than any light entry
    /// holds. The mark outranks the one-offs of a spray, however old its last line looks.
    pub fn fold_rank(&self) -> u64 {
        u64::from(self.rank)
    }

    /// Sets `rank` from the events and the mark, after a change to either.
    fn restand(&mut self) {
        let marked = self.rare.as_ref().is_some_and(|r| r.mark.is_some());
        let events = self.events().len();
        // `events` is at most LIGHT_EVENTS (a SmallVec that never spills): fits a u8.
        self.rank = if marked { MARK_RANK } else { events.min(LIGHT_EVENTS) as u8 };
    }

    /// The time this entry's age when folding counts from: when its client was last seen
    /// here, or when the mark was left if that is later.
    pub fn fold_time(&self) -> Option<i64> {
        if !self.is_recorded() {
            return self.last_seen();
        }
        let marked = self.rare.as_ref().and_then(|r| r.mark).and_then(|m| m.last_seen);
        self.last_seen().max(marked)
    }

    /// Whether this is the mark of a client with a full record.
    pub fn is_recorded(&self) -> bool {
        self.rank == MARK_RANK
    }

    /// Takes what this entry holds, for a full record a worker gives the client, and leaves
    /// in its place a mark (seen when the client was last seen) that the client has one.
    ///
    /// Why: in the table the workers share, the worker holding the record no longer touches
    /// the entry, which then looks idle although the client is busy, and a spray of
    /// one-off addresses folded the events another worker had put there meanwhile (an
    /// attacker came out short by one to three 4xx answers in a third of two-thread runs).
    /// With the mark, every worker gives the client a record at its next evidence.
    pub fn hand_to_record(&mut self) -> Light {
        let mut mark = Light::new(0);
        mark.rare_mut().mark = Some(Mark { last_seen: self.fold_time() });
        mark.restand();
        std::mem::replace(self, mark)
    }

    /// What this entry holds as a plain light entry: a mark's lines counted since it was
    /// left (requests, and the times of any line), unmarked; `None` for a mark that has
    /// counted none (its record has everything).
    pub fn unmarked(mut self) -> Option<Light> {
        let counted = self.requests > 0 || self.first != NO_TIME || self.last != NO_TIME;
        match &mut self.rare {
            Some(r) if r.mark.is_some() => {
                r.mark = None;
                self.restand();
                counted.then_some(self)
            }
            _ => Some(self),
        }
    }

    /// The evidence events, oldest first.
    pub fn events(&self) -> &[LightEvent] {
        self.rare.as_ref().map_or(self.lone.as_slice(), |r| &r.events)
    }

    /// Adds an evidence event: in line when the entry holds no other and nothing behind
    /// `rare`.
    fn push_event(&mut self, event: LightEvent) {
        if self.rare.is_none() && self.lone.is_none() {
            self.lone = Some(event);
        } else {
            self.rare_mut().events.push(event);
        }
    }

    /// The sketch's bound on evidence folded before.
    pub fn folded(&self) -> u64 {
        self.rare.as_ref().map_or(0, |r| r.folded)
    }

    pub fn first_seen(&self) -> Option<i64> {
        (self.first != NO_TIME).then_some(self.first)
    }

    pub fn last_seen(&self) -> Option<i64> {
        (self.last != NO_TIME).then_some(self.last)
    }

    /// Answers by status code, each code once.
    pub fn statuses(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        let inline = self.codes.iter().zip(&self.counts).filter(|(c, _)| **c != 0);
        let rare = self.rare.iter().flat_map(|r| r.statuses.iter().copied());
        inline.map(|(c, n)| (*c, u64::from(*n))).chain(rare)
    }

    /// Notes that the client was seen at `time`.
    pub fn seen(&mut self, time: Option<i64>) {
        self.merge_seen(time, time);
    }

    fn merge_seen(&mut self, first: Option<i64>, last: Option<i64>) {
        let (mut f, mut l) = (self.first_seen(), self.last_seen());
        super::merge_seen(&mut f, &mut l, first, last);
        (self.first, self.last) = (f.unwrap_or(NO_TIME), l.unwrap_or(NO_TIME));
    }

    /// Counts one request answered with `status` as the evidence `event` (a 4xx); false,
    /// with nothing counted, when this entry holds `most` events already (at most
    /// [`LIGHT_EVENTS`]) or is a mark: the client then needs a full record.
    pub fn take_evidence(&mut self, status: Option<u16>, event: LightEvent, most: usize) -> bool {
        if !self.has_room(most) {
            return false;
        }
        self.seen(event.time());
        self.request(status);
        self.push_event(event);
        self.restand();
        true
    }

    /// Counts a failed login (`event`, on a line that is no request) against `user`, as
    /// [`Light::take_evidence`] counts a 4xx answer: false, with nothing counted, when
    /// there is no room for it.
    pub fn take_failed_login(&mut self, event: LightEvent, user: Option<&str>, most: usize) -> bool {
        if !self.has_room(most) {
            return false;
        }
        self.seen(event.time());
        let rare = self.rare_mut();
        rare.events.push(event);
        rare.users.extend(user.map(CompactString::from));
        self.restand();
        true
    }

    /// Whether this entry can take another event: it holds fewer than `most` (at most
    /// [`LIGHT_EVENTS`]) and is no mark.
    fn has_room(&self, most: usize) -> bool {
        // A mark's rank is above LIGHT_EVENTS.
        usize::from(self.rank) < most.min(LIGHT_EVENTS)
    }

    /// The accounts of the failed logins among [`Light::events`] that named one, in order.
    pub fn failed_login_users(&self) -> &[CompactString] {
        self.rare.as_ref().map_or(&[], |r| &r.users)
    }

    /// Counts one request answered with `status` (which is not evidence).
    pub fn request(&mut self, status: Option<u16>) {
        self.requests += 1;
        if let Some(status) = status {
            self.add_status(status, 1);
        }
    }

    fn add_status(&mut self, status: u16, n: u64) {
        if let Some(i) = self.codes.iter().position(|c| *c == status && status != 0) {
            match u32::try_from(u64::from(self.counts[i]) + n) {
                Ok(sum) => self.counts[i] = sum,
                Err(_) => {
                    let moved = u64::from(self.counts[i]) + n;
                    (self.codes[i], self.counts[i]) = (0, 0);
                    add_status(&mut self.rare_mut().statuses, status, moved);
                }
            }
            return;
        }
        let in_rare = self.rare.as_ref().is_some_and(|r| r.statuses.iter().any(|(s, _)| *s == status));
        let free = self.codes.iter().position(|c| *c == 0);
        match (in_rare, free, u32::try_from(n)) {
            (false, Some(i), Ok(n)) if status != 0 => (self.codes[i], self.counts[i]) = (status, n),
            _ => add_status(&mut self.rare_mut().statuses, status, n),
        }
    }

    /// The out-of-line part, made if absent (taking the in-line event with it).
    fn rare_mut(&mut self) -> &mut Rare {
        let lone = &mut self.lone;
        self.rare.get_or_insert_with(|| {
            Box::new(Rare { events: lone.take().into_iter().collect(), ..Rare::default() })
        })
    }

    /// Adds `o` to this entry; `o` back, and this entry unchanged, when together they hold
    /// more than `most` events (at most [`LIGHT_EVENTS`]), too many to stay light.
    pub fn combine(&mut self, o: Light, most: usize) -> Result<(), Light> {
        if self.evidence() + o.evidence() > most.min(LIGHT_EVENTS) as u64 {
            return Err(o);
        }
        self.requests += o.requests;
        o.statuses().for_each(|(status, n)| self.add_status(status, n));
        self.merge_seen(o.first_seen(), o.last_seen());
        if let Some(theirs) = o.rare {
            let mine = self.rare_mut();
            mine.events.extend(theirs.events);
            mine.users.extend(theirs.users);
            mine.folded = mine.folded.max(theirs.folded);
        }
        if let Some(event) = o.lone {
            self.push_event(event);
        }
        self.restand();
        Ok(())
    }
}

fn add_status(statuses: &mut Vec<(u16, u64)>, status: u16, n: u64) {
    match statuses.iter_mut().find(|(s, _)| *s == status) {
        Some((_, count)) => *count += n,
        None => statuses.push((status, n)),
    }
}

/// The accounts (or the clients: see [`Summary`]) folded with evidence so far, as a
/// Bloom filter (2 MiB, allocated at the first fold). For accounts: a spray of one-off
/// names turns the account table over every few thousand names, so an account attacked
/// less often than that was folded at each of its failures and never reached a threshold
/// (one failure every 15,000 of 1,000,000 sprayed names: 67 failures, 12 within ten
/// minutes, not locked). The count-min sketch alone cannot tell it back: a million
/// folded entries leave most of its cells above zero. A name that comes back ranks one
/// level above its own failures when the table is folded again, so it outranks the
/// one-offs (a cache's "doorkeeper" against one-hit wonders), and carries the sketch's
/// estimate as its `folded_evidence`.
///
/// `HASHES` bits are set per key: each is an atomic write to a cache line of its own.
#[derive(Debug, Default)]
struct FoldedNames<const HASHES: u32> {
    filter: OnceLock<fastbloom::AtomicBloomFilter>,
}

/// 16 Mi bits, 7 hashes: about one false "folded" in 1,900 after a million folded names,
/// one in 50 after two million, one in 10 after three. Past that more and more new names
/// look folded and rank a level up with the ones that did come back, and the ranking
/// weakens towards what it was without the filter. Seven hashes rather than the eleven
/// that are best for a million names: fewer bits to set and test per name, and a lower
/// false rate past two million.
const FOLDED_NAME_BITS: usize = 1 << 24;
/// Clients are folded far more often than accounts (every one-off address of a spray
/// with a 4xx), and a false "folded" only shows as a `folded_evidence` bound on a report:
/// four hashes, about one false "folded" in 480 after a million.
const CLIENT_HASHES: u32 = 4;

impl<const HASHES: u32> FoldedNames<HASHES> {
    fn filter(&self) -> &fastbloom::AtomicBloomFilter {
        self.filter.get_or_init(|| {
            fastbloom::AtomicBloomFilter::with_num_bits(FOLDED_NAME_BITS).seed(&0).hashes(HASHES)
        })
    }

    /// Adds a name by its (process-seeded) hash.
    fn insert(&self, hash: u64) {
        self.filter().insert_hash(hash);
    }

    fn contains(&self, hash: u64) -> bool {
        self.filter.get().is_some_and(|f| f.contains_hash(hash))
    }

    fn merge(&self, o: &FoldedNames<HASHES>) {
        if let Some(theirs) = o.filter.get() {
            self.filter().union(theirs);
        }
    }
}

const DEPTH: usize = 4;
const WIDTH: usize = 1 << 19;

/// A count-min sketch (8 MiB, allocated at the first fold): estimates never undercount.
/// Counters are atomic so that the workers of one scan add to the same sketch.
#[derive(Debug, Default)]
struct CountMin {
    cells: OnceLock<Box<[AtomicU32]>>,
}

impl CountMin {
    fn cells(&self) -> &[AtomicU32] {
        self.cells.get_or_init(|| (0..DEPTH * WIDTH).map(|_| AtomicU32::new(0)).collect())
    }

    fn index(hash: u64) -> impl Iterator<Item = usize> {
        // Row hashes from one 64-bit hash (Kirsch-Mitzenmacher double hashing).
        let (h1, h2) = (hash as u32 as usize, (hash >> 32) as usize | 1);
        (0..DEPTH).map(move |i| i * WIDTH + h1.wrapping_add(i.wrapping_mul(h2)) % WIDTH)
    }

    fn add(&self, hash: u64, n: u64) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        let cells = self.cells();
        for i in CountMin::index(hash) {
            // Saturating: a counter that reached the top stays there.
            let _ = cells[i].fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_add(n)));
        }
    }

    fn estimate(&self, hash: u64) -> u64 {
        let Some(cells) = self.cells.get() else { return 0 };
        CountMin::index(hash).map(|i| u64::from(cells[i].load(Relaxed))).min().unwrap_or(0)
    }

    fn merge(&self, o: &CountMin) {
        let Some(theirs) = o.cells.get() else { return };
        for (a, b) in self.cells().iter().zip(theirs.iter()) {
            let b = b.load(Relaxed);
            let _ = a.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_add(b)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// A weighted plan folds what folding one entry at a time would: least evidence,
        /// then oldest, until the weight folded reaches what must go. Past the
        /// histogram's last level all evidence is one level, and "oldest" is to the
        /// minute ([`rank`]).
        #[test]
        fn weighted_plans_fold_the_least_and_oldest_first(
            entries in proptest::collection::vec((0u64..4, proptest::bool::ANY, 1usize..3), 1..60),
            target in 0usize..80,
        ) {
            // Each evidence either low or around the last level (253 to 258), and the times
            // minutes apart or seconds apart.
            let evidence = |e: u64, heavy: bool| if heavy { LEVELS as u64 - 3 + e } else { e };
            let entries: Vec<(u64, Age, usize)> = entries.iter().enumerate()
                .map(|(i, &(e, heavy, w))| (evidence(e, heavy), ((i * 7 % 13) as i64 * 50, i as u64), w))
                .collect();
            let total = entries.iter().map(|e| e.2).sum::<usize>();
            let plan = FoldPlan::weighted(entries.iter().map(|e| (e.0, e.2, e.1)), |age| *age, total, target);
            let mut order = entries.clone();
            order.sort_by_key(|e| (e.0.min(LEVELS as u64 - 1), rank(e.1)));
            let mut folded = 0;
            let expected: Vec<bool> = order.iter().map(|e| {
                let fold = folded < total.saturating_sub(target);
                folded += if fold { e.2 } else { 0 };
                fold
            }).collect();
            let actual: Vec<bool> = order.iter().map(|e| plan.folds(e.0, e.1)).collect();
            proptest::prop_assert_eq!(actual, expected);
        }
    }

    #[test]
    fn entries_seen_within_a_minute_tie() {
        assert!(rank((61, 9)) > rank((62, 1)), "within a minute, the fixed order decides");
        assert!(rank((59, 9)) < rank((60, 1)), "a minute earlier is older");
    }

    #[test]
    fn fold_level_drops_the_least_evidence_first() {
        let scores = [0, 0, 0, 5, 5, 9, 1, 1];
        assert_eq!(fold_level(scores.iter().map(|&s| (s, 1)), 8, 5), 0);
        assert_eq!(fold_level(scores.iter().map(|&s| (s, 1)), 8, 4), 1);
        assert_eq!(fold_level(scores.iter().map(|&s| (s, 1)), 8, 2), 5);
    }

    #[test]
    fn a_fold_keeps_the_newest_at_the_boundary_level() {
        let entries: Vec<(u64, Age)> =
            (0..10).map(|i| (1, (60 * i, 0))).chain([(0, (3000, 0)), (3, (0, 0))]).collect();
        let plan = FoldPlan::new(entries.iter().copied(), |age| *age, entries.len(), 6);
        let kept: Vec<_> = entries.iter().filter(|(e, a)| !plan.folds(*e, *a)).collect();
        assert_eq!(kept.len(), 6);
        assert!(
            kept.contains(&&(3, (0, 0)))
                && kept.contains(&&(1, (540, 0)))
                && !kept.contains(&&(0, (3000, 0)))
        );
    }

    #[test]
    fn the_sketch_never_undercounts_and_merges() {
        let mut a = Summary::default();
        let mut b = Summary::default();
        for k in 0..50_000u64 {
            a.fold_client(crate::aggregate::stable_hash(&k.to_le_bytes()), 1);
        }
        b.fold_client(crate::aggregate::stable_hash(b"x"), 7);
        a.merge(b);
        assert!(a.estimate(crate::aggregate::stable_hash(b"x")) >= 7);
        assert_eq!(a.clients.entries, 50_001);
        assert_eq!(a.clients.max_evidence, 7);
    }

    #[test]
    fn a_client_never_folded_reads_no_folded_evidence_after_a_spray() {
        // 600,000 folded one-offs put ~1.1 in each cell of the sketch: alone it reads a
        // bound above zero for about one new client in five. The filter answers first.
        let mut summary = Summary::default();
        let hash = |k: u64| crate::aggregate::stable_hash(&k.to_le_bytes());
        (0..600_000).for_each(|k| summary.fold_client(hash(k), 1));
        let noisy = (1_000_000..1_010_000).filter(|k| summary.estimate(hash(*k)) > 0).count();
        assert!(noisy < 50, "{noisy} of 10,000 clients never folded read as folded before");
        assert!((0..1_000).all(|k| summary.estimate(hash(k)) >= 1), "never under a folded client's own");
    }

    #[test]
    fn light_entries_combine_until_they_hold_too_much() {
        let one = |t| {
            let e = LightEvent::new(Some(t), Some(1));
            Light::with_events(1, [(404, 1)], (Some(t), Some(t)), vec![e], 0)
        };
        let mut two = one(5);
        two.combine(one(3), LIGHT_EVENTS).unwrap();
        assert_eq!(
            (two.requests, two.first_seen(), two.last_seen(), two.evidence()),
            (2, Some(3), Some(5), 2)
        );
        assert_eq!(two.statuses().collect::<Vec<_>>(), vec![(404, 2)]);
        let mut full = two;
        (2..LIGHT_EVENTS).for_each(|t| full.combine(one(t as i64), LIGHT_EVENTS).unwrap());
        assert_eq!(full.evidence(), LIGHT_EVENTS as u64);
        let theirs = full.combine(one(9), LIGHT_EVENTS).unwrap_err();
        assert_eq!((full.evidence(), theirs.evidence()), (LIGHT_EVENTS as u64, 1));
    }

    #[test]
    fn a_light_event_keeps_what_it_was_given() {
        for (time, value) in
            [(None, None), (Some(0), Some(0)), (Some(-5), Some(u64::MAX)), (Some(i64::MAX), None)]
        {
            let e = LightEvent::new(time, value);
            assert_eq!((e.time(), e.value()), (time, value));
        }
        assert!(std::mem::size_of::<LightEvent>() <= 24);
    }

    #[test]
    fn a_light_entry_is_small() {
        // One per distinct client: its size is what a spray of addresses costs. 56 bytes,
        // the fold rank's byte (in a padded eighth), and the one in-line event (24).
        assert!(std::mem::size_of::<Light>() <= 88, "{}", std::mem::size_of::<Light>());
    }

    proptest::proptest! {
        /// Status counts stay exact whatever the codes, their order and their sizes:
        /// past four codes, or past `u32` for one, they move out of line.
        #[test]
        fn light_status_counts_are_exact(
            adds in proptest::collection::vec((0u16..8, 0u64..3, proptest::bool::ANY), 0..60),
            split in 0usize..60,
        ) {
            let code = |c: u16| if c == 7 { 0 } else { 200 + c };
            let n = |small: u64, huge: bool| if huge { small + u64::from(u32::MAX) } else { small };
            let mut expected = std::collections::BTreeMap::<u16, u64>::new();
            let (mut a, mut b) = (Light::default(), Light::default());
            for (i, (c, small, huge)) in adds.iter().enumerate() {
                let side = if i < split { &mut a } else { &mut b };
                side.add_status(code(*c), n(*small, *huge));
                *expected.entry(code(*c)).or_default() += n(*small, *huge);
            }
            a.combine(b, LIGHT_EVENTS).unwrap();
            let both = a;
            let mut got = std::collections::BTreeMap::<u16, u64>::new();
            for (s, n) in both.statuses() {
                proptest::prop_assert!(got.insert(s, n).is_none(), "code {} listed twice", s);
            }
            expected.retain(|_, n| *n > 0);
            got.retain(|_, n| *n > 0);
            proptest::prop_assert_eq!(got, expected);
        }
    }

    /// One change to a light entry, for the rank's property test.
    #[derive(Clone, Debug)]
    enum Change {
        Answer(i64),
        FailedLogin(i64),
        Quiet(u16),
        HandToRecord,
        Unmark,
        Combine(u8),
    }

    fn change() -> impl proptest::strategy::Strategy<Value = Change> {
        use proptest::prelude::*;
        prop_oneof![
            (0i64..100).prop_map(Change::Answer),
            (0i64..100).prop_map(Change::FailedLogin),
            (200u16..600).prop_map(Change::Quiet),
            Just(Change::HandToRecord),
            Just(Change::Unmark),
            (0u8..3).prop_map(Change::Combine),
        ]
    }

    proptest::proptest! {
        /// Whatever changes an entry, it holds the events it took, in order (in line or
        /// behind `rare`), the names of its failed logins, and the rank its events and
        /// mark give: folding trusts the rank without reading `rare`.
        #[test]
        fn a_light_entry_keeps_its_events_and_rank_whatever_changes_it(
            changes in proptest::collection::vec(change(), 0..40),
        ) {
            let (mut l, mut events, mut users) = (Light::default(), Vec::new(), Vec::new());
            for c in changes {
                match c {
                    Change::Answer(t) => {
                        let e = LightEvent::new(Some(t), Some(1));
                        if l.take_evidence(Some(404), e, LIGHT_EVENTS) {
                            events.push(e);
                        }
                    }
                    Change::FailedLogin(t) => {
                        let e = LightEvent::failed_login(0, Some(t), None);
                        if l.take_failed_login(e, Some("a"), LIGHT_EVENTS) {
                            events.push(e);
                            users.push(CompactString::from("a"));
                        }
                    }
                    Change::Quiet(status) => l.request(Some(status)),
                    Change::HandToRecord => {
                        drop(l.hand_to_record());
                        events.clear();
                        users.clear();
                    }
                    // A mark holds no events; anything else comes back as it was.
                    Change::Unmark => l = l.clone().unmarked().unwrap_or_default(),
                    Change::Combine(n) => {
                        // One event stays in line, two go behind `rare`.
                        let mut other = Light::default();
                        (0..n).for_each(|i| {
                            other.take_evidence(Some(404), LightEvent::new(Some(i64::from(i)), None), LIGHT_EVENTS);
                        });
                        let theirs = other.events().to_vec();
                        if l.combine(other, LIGHT_EVENTS).is_ok() {
                            events.extend(theirs);
                        }
                    }
                }
                proptest::prop_assert_eq!(l.events(), &events[..]);
                proptest::prop_assert_eq!(l.failed_login_users(), &users[..]);
                let marked = l.rare.as_ref().is_some_and(|r| r.mark.is_some());
                let expected = if marked { u64::from(MARK_RANK) } else { events.len() as u64 };
                proptest::prop_assert_eq!(l.fold_rank(), expected);
            }
        }
    }

    #[test]
    fn memory_limits_scale() {
        let l = Limits::for_memory(200 << 20);
        // The default bound keeps the ~60,000 clients of the 1 GB benchmark corpus light.
        assert!(l.clients > 20_000 && l.clients < 100_000 && l.light > 75_000, "{l:?}");
        assert_eq!(l.share(2).clients, l.clients / 2);
    }
}
