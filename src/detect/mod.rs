//! Detection: what a record means for security, decided by rules loaded from
//! `patterns/*.toml` (built in, extended or overridden with `--patterns DIR`).
//!
//! All single-line rules compile into one [`RuleSet`]: one Aho-Corasick pass over the
//! line finds the literals of every rule (ASCII case-insensitive), each literal mapped
//! back to the rules that own it; a rule's regex and field conditions run only for rules
//! whose literals hit. Rules without literals test parsed fields directly. The prefilter
//! may say "maybe", never "no": `patterns test` checks it against every rule's examples.
//! Aggregate rules (credential stuffing, distributed brute force, probing) are judged
//! over many events, at decision time.

pub mod check;
pub mod rules;

use std::borrow::Cow;
use std::net::IpAddr;
use std::path::Path;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use percent_encoding::percent_decode_str;

use crate::parse::{Record, RecordKind, parse_ip};
pub use rules::{AggregateKind, Counts, Rule, RuleError, Severity};

include!(concat!(env!("OUT_DIR"), "/builtin_patterns.rs"));

/// The application's own accounts (what `account-lock.sql` locks).
pub const APP_REALM: &str = "app";
/// Users of nginx `auth_basic` (an htpasswd file).
pub const BASIC_AUTH_REALM: &str = "nginx-basic-auth";

/// Index of a rule in its [`RuleSet`].
pub type RuleId = u16;

/// A rule that matched a line, with what its regex captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub rule: RuleId,
    pub user: Option<String>,
    pub ip: Option<IpAddr>,
}

/// Every rule, compiled into one matcher.
pub struct RuleSet {
    rules: Vec<Rule>,
    /// Every single-line rule's literals, searched in the whole line: one automaton per
    /// record kind ([`kind_index`]) over the rules that read it, so an error or backend
    /// line is neither searched for, nor answered with, the literals of access rules (a
    /// JSON line is full of the `"` that SQL injection looks for in a path).
    line: [Prefilter; 3],
    /// For access records: the literals of rules that only read the method, path and user
    /// agent, searched in those values, decoded, because that is what the rules read
    /// (nginx logs a `"` in the request as `\x22`, a JSON encoder may write `<` as
    /// `\u003c`), and per worker remembered per distinct value. One automaton per field
    /// ([`RecordField`]), over the literals of the rules that read it: the `"` SQL
    /// injection looks for in a path is not searched for in every user agent...
    fields: [Prefilter; 3],
    /// ...and of the other rules that read access records, searched in the whole line.
    access_line: Prefilter,
    /// For backend records: the literals of rules whose only text condition is on the
    /// message, searched in the decoded message (a tenth of a JSON line) and left out
    /// of the backend line's automaton.
    backend_message: Prefilter,
    /// Single-line rules without literals, evaluated on every record of their inputs:
    /// by record kind ([`kind_index`]), so a record never tries a rule for other inputs.
    field_rules: [Vec<RuleId>; 3],
}

/// Every record kind, in the order of per-kind tables.
const KINDS: [RecordKind; 3] = [RecordKind::Access, RecordKind::ErrorLog, RecordKind::Backend];

/// Whether `rule` reads records of `kind`.
fn reads(rule: &Rule, kind: RecordKind) -> bool {
    rule.inputs.iter().any(|i| i.accepts(kind))
}

/// The slot of `kind` in per-kind tables ([`KINDS`]).
fn kind_index(kind: RecordKind) -> usize {
    match kind {
        RecordKind::Access => 0,
        RecordKind::ErrorLog => 1,
        RecordKind::Backend => 2,
    }
}

/// One Aho-Corasick automaton over some rules' literals, each literal mapped back to the
/// rules that own it.
#[derive(Default)]
struct Prefilter {
    ac: Option<AhoCorasick>,
    owners: Vec<Vec<RuleId>>,
    /// Whether every literal has the same owners: then whether any literal occurs is the
    /// whole answer, and the search can stop at the first (an overlapping search for
    /// every occurrence walked each byte of a line through the automaton, ~20
    /// instructions a byte, where a plain search lets the automaton skip ahead).
    one_owner_set: bool,
    /// For request targets: the prefilters of a target that must be decoded. nginx
    /// serves `/wp-%6cogin.php` as `/wp-login.php`, and rules that read the path, query or
    /// URI read it decoded ([`decoded_target`]), so their literals are searched in the
    /// decoded target; the literals of the other rules (those that read no field by text)
    /// are searched as logged.
    encoded: Option<Box<EncodedTargets>>,
}

/// [`Prefilter::encoded`]: one automaton per form of the target.
struct EncodedTargets {
    as_logged: Prefilter,
    decoded: Prefilter,
    /// Whether the target's own prefilter holds every literal with its spaces also spelled
    /// `+` ([`plus_spellings`]): then a target with a `+` and no `%`, which decodes to
    /// itself with the query's `+` as spaces, is searched as logged, with no decoding.
    plus_spelled: bool,
}

impl EncodedTargets {
    /// Whether `target` must be decoded to be searched.
    fn must_decode(&self, target: &[u8]) -> bool {
        match self.plus_spelled {
            true => memchr::memchr(b'%', target).is_some(),
            false => memchr::memchr2(b'%', b'+', target).is_some(),
        }
    }
}

/// The most spaces a literal may hold to be searched in all its `+` spellings (two to the
/// power of its spaces).
const MOST_SPELLED_SPACES: u32 = 4;

/// `lit` with each of its spaces either kept or spelled `+`, as a query may spell it;
/// `None` when it holds more than [`MOST_SPELLED_SPACES`].
fn plus_spellings(lit: &str) -> Option<Vec<String>> {
    let spaces = lit.matches(' ').count() as u32;
    let spelled = |mask: u32| {
        let mut seen = 0;
        let mut spell = |c: char| match c {
            ' ' => {
                seen += 1;
                if mask >> (seen - 1) & 1 == 1 { '+' } else { ' ' }
            }
            c => c,
        };
        lit.chars().map(&mut spell).collect()
    };
    (spaces <= MOST_SPELLED_SPACES).then(|| (0..1u32 << spaces).map(spelled).collect())
}

impl Prefilter {
    fn build<'r>(rules: impl Iterator<Item = (RuleId, &'r Rule)>) -> Result<Prefilter, RuleError> {
        Self::build_spelled(rules, |lit| Some(vec![lit.to_string()])).map(|(p, _)| p)
    }

    /// A prefilter of each literal's spellings by `spell`, and whether every literal had
    /// them (a literal `spell` gives none of is searched as it is).
    fn build_spelled<'r>(
        rules: impl Iterator<Item = (RuleId, &'r Rule)>,
        spell: impl Fn(&str) -> Option<Vec<String>>,
    ) -> Result<(Prefilter, bool), RuleError> {
        let mut literals: Vec<String> = Vec::new();
        let mut owners: Vec<Vec<RuleId>> = Vec::new();
        let mut all_spelled = true;
        for (id, rule) in rules {
            for lit in &rule.literals {
                let spellings = spell(lit);
                all_spelled &= spellings.is_some();
                for lit in spellings.unwrap_or_else(|| vec![lit.clone()]) {
                    match literals.iter().position(|l| *l == lit) {
                        Some(at) => owners[at].push(id),
                        None => {
                            literals.push(lit);
                            owners.push(vec![id]);
                        }
                    }
                }
            }
        }
        // A full DFA: overlapping search (every literal at every position, so the
        // prefilter never misses one) is fastest on it, and the sets are small.
        let ac = (!literals.is_empty())
            .then(|| {
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::Standard)
                    .kind(Some(AhoCorasickKind::DFA))
                    .build(&literals)
                    .map_err(|e| RuleError { file: "patterns".into(), line: 1, message: e.to_string() })
            })
            .transpose()?;
        let one_owner_set = owners.windows(2).all(|w| w[0] == w[1]);
        Ok((Prefilter { ac, owners, one_owner_set, encoded: None }, all_spelled))
    }

    /// This prefilter, with `encoded` for the targets it must decode.
    fn with_encoded(self, encoded: EncodedTargets) -> Prefilter {
        Prefilter { encoded: Some(Box::new(encoded)), ..self }
    }

    /// Appends the rules whose literals occur in `text` (unsorted, maybe repeated).
    fn candidates(&self, text: &[u8], out: &mut Vec<RuleId>) {
        match &self.encoded {
            Some(e) if e.must_decode(text) => {
                e.as_logged.search(text, out);
                SCRATCH.with_borrow_mut(|decoded| match decode_target_into(text, decoded) {
                    true => e.decoded.search(decoded, out),
                    false => e.decoded.search(decoded_target(&String::from_utf8_lossy(text)).as_bytes(), out),
                });
            }
            _ => self.search(text, out),
        }
    }

    /// The search of one text. Inlined: `candidates` calls it for nearly every field value
    /// the memo has not seen, and the call cost ~17 instructions each (the worker on 20 MB,
    /// one thread: 463.7M -> 461.0M).
    #[inline(always)]
    fn search(&self, text: &[u8], out: &mut Vec<RuleId>) {
        let Some(ac) = &self.ac else { return };
        if self.one_owner_set {
            if ac.is_match(text) {
                out.extend_from_slice(&self.owners[0]);
            }
            return;
        }
        for m in ac.find_overlapping_iter(text) {
            out.extend_from_slice(&self.owners[m.pattern().as_usize()]);
        }
    }
}

/// Whether a rule's literals may be searched in an access record's request and user agent
/// alone: it reads access records only, and only through their fields (no whole-line regex).
fn reads_access_fields_only(rule: &Rule) -> bool {
    rule.regex.is_none() && rule.inputs.iter().all(|i| *i == rules::InputKind::Access)
}

/// Whether a rule reads the request target by text (its path, query or URI, all decoded).
fn reads_target(rule: &Rule) -> bool {
    let w = &rule.when;
    w.path.is_some() || w.query.is_some() || w.uri.is_some()
}

/// Whether a rule's literals may be searched in a backend record's message alone: it
/// reads backend records only, through a message condition and no other text (no
/// whole-line regex, no event), so it cannot match a record whose message lacks them.
fn reads_backend_message_only(rule: &Rule) -> bool {
    let w = &rule.when;
    rule.regex.is_none()
        && rule.inputs.iter().all(|i| *i == rules::InputKind::Backend)
        && w.message.is_some()
        && w.event.is_none()
}

/// The text fields of an access record that field-only rules' literals are searched in.
#[derive(Clone, Copy)]
enum RecordField {
    Method,
    Path,
    UserAgent,
}

impl RecordField {
    const ALL: [RecordField; 3] = [RecordField::Method, RecordField::Path, RecordField::UserAgent];

    /// The field's value in `record`.
    fn of<'r>(self, record: &'r Record<'_>) -> Option<&'r str> {
        match self {
            RecordField::Method => record.method.as_deref(),
            RecordField::Path => record.path.as_deref(),
            RecordField::UserAgent => record.user_agent.as_deref(),
        }
    }

    /// Whether `rule`'s literals are looked for in this field: the fields its conditions
    /// read, or all three for a rule that reads none of them by text (its literals may be
    /// anywhere in the request, like the raw bytes of `non-http-bytes`).
    fn searched_for(self, rule: &Rule) -> bool {
        let w = &rule.when;
        let reads = [!w.method.is_empty(), reads_target(rule), w.user_agent.is_some()];
        !reads.contains(&true) || reads[self as usize]
    }
}

/// A worker's memory of which rules' literals occur in recently seen field values: user
/// agents and request lines repeat, and a hash and a compare cost far less than searching
/// them again. Direct-mapped; the whole value is compared, so the answer is always exact.
pub struct PrefilterMemo {
    /// Values of up to [`ShortSlot::VALUE`] bytes (methods, most paths), each remembered
    /// with its answer in one cache line: a copy on the heap was a cache miss of its own,
    /// after the slot's, on most lines (perf: `memcmp` 6% of a one-thread scan, now 3%).
    short: Vec<ShortSlot>,
    /// Longer values (user agents, long paths), up to [`PrefilterMemo::MAX_VALUE`] bytes.
    slots: Vec<MemoSlot>,
    /// The candidate list of the line being checked, kept for the next line: a fresh
    /// vector per line cost an allocation on every line with any candidate.
    candidates: Vec<RuleId>,
}

/// A remembered short value and its rules, in one cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct ShortSlot {
    hash: u64,
    /// Which field's prefilter answered, or [`ShortSlot::EMPTY`].
    field: u8,
    len: u8,
    rules_len: u8,
    rules: [RuleId; ShortSlot::RULES],
    value: [u8; ShortSlot::VALUE],
}

const _: () = assert!(std::mem::size_of::<ShortSlot>() == 64);

impl ShortSlot {
    const EMPTY: u8 = u8::MAX;
    /// A value with more candidate rules than this is searched every time.
    const RULES: usize = 4;
    /// What is left of the cache line for the value.
    const VALUE: usize = 64 - 8 - 3 - 1 - 2 * ShortSlot::RULES;
    const UNUSED: ShortSlot = ShortSlot {
        hash: 0,
        field: Self::EMPTY,
        len: 0,
        rules_len: 0,
        rules: [0; Self::RULES],
        value: [0; Self::VALUE],
    };

    fn holds(&self, hash: u64, field: u8, value: &[u8]) -> bool {
        let held = &self.value[..self.len as usize];
        self.hash == hash && self.field == field && crate::parse::same_bytes(held, value)
    }

    fn rules(&self) -> &[RuleId] {
        &self.rules[..self.rules_len as usize]
    }

    /// Remembers `value`'s `rules`, or empties the slot when they do not fit.
    fn fill(&mut self, hash: u64, field: u8, value: &[u8], rules: &[RuleId]) {
        if rules.len() > Self::RULES {
            self.field = Self::EMPTY;
            return;
        }
        (self.hash, self.field, self.len, self.rules_len) =
            (hash, field, value.len() as u8, rules.len() as u8);
        self.value[..value.len()].copy_from_slice(value);
        self.rules[..rules.len()].copy_from_slice(rules);
    }
}

#[derive(Default)]
struct MemoSlot {
    hash: u64,
    /// Which field's prefilter answered (one value may stand in two fields).
    field: u8,
    value: Vec<u8>,
    rules: Vec<RuleId>,
}

impl PrefilterMemo {
    const SLOTS: usize = 4096;
    /// Longer values are searched every time rather than copied.
    const MAX_VALUE: usize = 512;

    pub fn new() -> PrefilterMemo {
        PrefilterMemo {
            short: vec![ShortSlot::UNUSED; Self::SLOTS],
            slots: (0..Self::SLOTS).map(|_| MemoSlot::default()).collect(),
            candidates: Vec::new(),
        }
    }

    /// Appends the rules of `prefilter` whose literals occur in `value`.
    fn candidates(&mut self, field: RecordField, prefilter: &Prefilter, value: &[u8], out: &mut Vec<RuleId>) {
        if value.len() > Self::MAX_VALUE {
            return prefilter.candidates(value, out);
        }
        let (hash, field) = (crate::aggregate::stable_hash(value), field as u8);
        let at = Self::slot_at(hash, field);
        if value.len() <= ShortSlot::VALUE {
            return self.short_candidates(at, (hash, field), prefilter, value, out);
        }
        let slot = &mut self.slots[at];
        if slot.hash != hash || slot.field != field || slot.value != value {
            (slot.hash, slot.field) = (hash, field);
            slot.value.clear();
            slot.value.extend_from_slice(value);
            slot.rules.clear();
            prefilter.candidates(value, &mut slot.rules);
        }
        out.extend_from_slice(&slot.rules);
    }

    /// The slot (in either tier) of a value hashed `hash` in field `field`.
    fn slot_at(hash: u64, field: u8) -> usize {
        (hash as usize).wrapping_add(field as usize) % Self::SLOTS
    }

    /// [`PrefilterMemo::candidates`] of a value that fits a [`ShortSlot`], at slot `at`.
    fn short_candidates(
        &mut self,
        at: usize,
        (hash, field): (u64, u8),
        prefilter: &Prefilter,
        value: &[u8],
        out: &mut Vec<RuleId>,
    ) {
        let slot = &mut self.short[at];
        if slot.holds(hash, field, value) {
            return out.extend_from_slice(slot.rules());
        }
        let before = out.len();
        prefilter.candidates(value, out);
        slot.fill(hash, field, value, &out[before..]);
    }
}

impl Default for PrefilterMemo {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet").field("rules", &self.rules.len()).finish()
    }
}

impl RuleSet {
    /// The built-in rules.
    pub fn builtin() -> Result<RuleSet, RuleError> {
        Self::from_files(BUILTIN.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect())
    }

    /// The built-in rules, extended (and, for equal ids, overridden) by each directory's
    /// `*.toml` files in turn.
    pub fn with_dirs(dirs: &[impl AsRef<Path>]) -> Result<RuleSet, RuleError> {
        let mut files: Vec<(String, String)> =
            BUILTIN.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect();
        for dir in dirs {
            files.extend(read_dir(dir.as_ref())?);
        }
        Self::from_files(files)
    }

    /// Only the rules in `dir` (for `patterns test DIR`).
    pub fn from_dir(dir: &Path) -> Result<RuleSet, RuleError> {
        Self::from_files(read_dir(dir)?)
    }

    fn from_files(files: Vec<(String, String)>) -> Result<RuleSet, RuleError> {
        let mut rules: Vec<Rule> = Vec::new();
        for (name, text) in &files {
            let mut seen_here = std::collections::HashSet::new();
            for rule in rules::compile_file(name, text)? {
                if !seen_here.insert(rule.id.clone()) {
                    return Err(RuleError {
                        file: name.clone(),
                        line: rule.line,
                        message: format!("duplicate rule id {:?} in this file; ids must be unique", rule.id),
                    });
                }
                // A later file with the same id overrides the earlier rule.
                match rules.iter().position(|r| r.id == rule.id) {
                    Some(i) => rules[i] = rule,
                    None => rules.push(rule),
                }
            }
        }
        Self::compile(rules)
    }

    fn compile(rules: Vec<Rule>) -> Result<RuleSet, RuleError> {
        if rules.len() > RuleId::MAX as usize {
            return Err(RuleError { file: "patterns".into(), line: 1, message: "too many rules".into() });
        }
        let single =
            || rules.iter().enumerate().filter(|(_, r)| r.aggregate.is_none()).map(|(i, r)| (i as RuleId, r));
        let field_rules = KINDS.map(|kind| {
            single().filter(|(_, r)| r.literals.is_empty() && reads(r, kind)).map(|(i, _)| i).collect()
        });
        let line_of = |kind| {
            Prefilter::build(single().filter(|(_, r)| reads(r, kind) && !reads_backend_message_only(r)))
        };
        let line = [line_of(KINDS[0])?, line_of(KINDS[1])?, line_of(KINDS[2])?];
        let in_field = |f: RecordField, r: &Rule| reads_access_fields_only(r) && f.searched_for(r);
        let field = |f: RecordField| Prefilter::build(single().filter(|(_, r)| in_field(f, r)));
        let target = |decoded: bool| {
            Prefilter::build(
                single().filter(|(_, r)| in_field(RecordField::Path, r) && reads_target(r) == decoded),
            )
        };
        let (path, plus_spelled) = Prefilter::build_spelled(
            single().filter(|(_, r)| in_field(RecordField::Path, r)),
            plus_spellings,
        )?;
        let encoded = EncodedTargets { as_logged: target(false)?, decoded: target(true)?, plus_spelled };
        let fields =
            [field(RecordField::Method)?, path.with_encoded(encoded), field(RecordField::UserAgent)?];
        let access_line = Prefilter::build(
            single().filter(|(_, r)| reads(r, RecordKind::Access) && !reads_access_fields_only(r)),
        )?;
        let backend_message = Prefilter::build(single().filter(|(_, r)| reads_backend_message_only(r)))?;
        Ok(RuleSet { rules, line, fields, access_line, backend_message, field_rules })
    }

    /// All rules, indexed by [`RuleId`].
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// One rule.
    pub fn rule(&self, id: RuleId) -> &Rule {
        &self.rules[id as usize]
    }

    /// Every regex of every rule (its own and its field conditions), for the naive
    /// "every regex on every line" baseline of the benchmarks.
    pub fn regexes(&self) -> Vec<&regex::Regex> {
        let mut out = Vec::new();
        for r in &self.rules {
            let w = &r.when;
            out.extend(r.regex.iter());
            for re in [&w.path, &w.query, &w.uri, &w.user_agent, &w.event, &w.message] {
                out.extend(re.iter());
            }
        }
        out
    }

    /// Looks a rule up by its id.
    pub fn find(&self, id: &str) -> Option<RuleId> {
        self.rules.iter().position(|r| r.id == id).map(|i| i as RuleId)
    }

    /// The prefilter's "maybe" for `record`, read from `line` (sorted, unique): for an
    /// access record, the field-only rules whose literals occur in its method, path or
    /// user agent and the other access rules whose literals occur in the line; otherwise
    /// the rules whose literals occur anywhere in the line.
    pub fn candidates_for(&self, line: &[u8], record: &Record<'_>) -> Vec<RuleId> {
        self.candidates_with(line, record, None)
    }

    fn candidates_with(
        &self,
        line: &[u8],
        record: &Record<'_>,
        memo: Option<&mut PrefilterMemo>,
    ) -> Vec<RuleId> {
        let mut out = Vec::new();
        self.candidates_into(line, record, memo, &mut out);
        out
    }

    /// [`RuleSet::candidates_with`] into `out` (empty), sorted and without repeats.
    fn candidates_into(
        &self,
        line: &[u8],
        record: &Record<'_>,
        memo: Option<&mut PrefilterMemo>,
        out: &mut Vec<RuleId>,
    ) {
        if record.kind == Some(RecordKind::Access) {
            self.field_candidates(record, memo, out);
            self.access_line.candidates(line, out);
        } else if let Some(kind) = record.kind {
            self.line[kind_index(kind)].candidates(line, out);
            if let (RecordKind::Backend, Some(message)) = (kind, &record.message) {
                self.backend_message.candidates(message.as_bytes(), out);
            }
        }
        if out.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
    }

    /// Appends the field-only rules whose literals occur in the fields of `record` they read.
    fn field_candidates(&self, record: &Record<'_>, memo: Option<&mut PrefilterMemo>, out: &mut Vec<RuleId>) {
        let values = RecordField::ALL.into_iter().filter_map(|f| Some((f, f.of(record)?.as_bytes())));
        match memo {
            Some(memo) => values.for_each(|(f, v)| memo.candidates(f, &self.fields[f as usize], v, out)),
            None => values.for_each(|(f, v)| self.fields[f as usize].candidates(v, out)),
        }
    }

    /// Appends to `hits` every single-line rule that `record` (read from `line`) matches.
    pub fn detect(&self, line: &[u8], record: &Record<'_>, hits: &mut Vec<Hit>) {
        self.detect_with(line, record, None, hits)
    }

    /// [`RuleSet::detect`], remembering field values' prefilter answers in `memo`.
    pub fn detect_memo(
        &self,
        line: &[u8],
        record: &Record<'_>,
        memo: &mut PrefilterMemo,
        hits: &mut Vec<Hit>,
    ) {
        self.detect_with(line, record, Some(memo), hits)
    }

    fn detect_with(
        &self,
        line: &[u8],
        record: &Record<'_>,
        mut memo: Option<&mut PrefilterMemo>,
        hits: &mut Vec<Hit>,
    ) {
        let Some(kind) = record.kind else { return };
        let mut fields = Fields::new(record);
        let start = hits.len();
        let mut candidates = memo.as_mut().map(|m| std::mem::take(&mut m.candidates)).unwrap_or_default();
        candidates.clear();
        self.candidates_into(line, record, memo.as_deref_mut(), &mut candidates);
        for id in candidates.iter().copied().chain(self.field_rules[kind_index(kind)].iter().copied()) {
            if let Some(hit) = self.evaluate(id, kind, line, &mut fields) {
                hits.push(hit);
            }
        }
        if let Some(m) = memo {
            m.candidates = candidates;
        }
        if hits.len() - start > 1 {
            hits[start..].sort_by_key(|h| h.rule);
        }
    }

    /// Evaluates one rule without the prefilter (for checking the prefilter itself).
    pub fn detect_unfiltered(&self, line: &[u8], record: &Record<'_>, id: RuleId, hits: &mut Vec<Hit>) {
        let Some(kind) = record.kind else { return };
        hits.extend(self.evaluate(id, kind, line, &mut Fields::new(record)));
    }

    fn evaluate(&self, id: RuleId, kind: RecordKind, line: &[u8], f: &mut Fields<'_, '_>) -> Option<Hit> {
        let rule = &self.rules[id as usize];
        if !reads(rule, kind) || !conditions_hold(rule, f) {
            return None;
        }
        let mut hit = Hit { rule: id, user: None, ip: None };
        if let Some(re) = &rule.regex {
            // A whole line: the vectorised check pays off on its length.
            let text = crate::parse::line_text(line);
            let caps = re.captures(&text)?;
            hit.user = caps.name("user").map(|m| m.as_str().to_string());
            hit.ip = caps.name("ip").and_then(|m| parse_ip(m.as_str().as_bytes()));
        }
        Some(hit)
    }
}

fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, RuleError> {
    let err = |message: String| RuleError { file: dir.display().to_string(), line: 0, message };
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| err(format!("cannot read the patterns directory: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).map_err(|e| err(format!("{}: {e}", p.display())))?;
            Ok((p.display().to_string(), text))
        })
        .collect()
}

/// Record fields as rules see them; decoded forms are computed once, on first use.
struct Fields<'r, 'a> {
    record: &'r Record<'a>,
    path: Option<Option<String>>,
    query: Option<Option<String>>,
    uri: Option<Option<String>>,
}

impl<'r, 'a> Fields<'r, 'a> {
    fn new(record: &'r Record<'a>) -> Self {
        Fields { record, path: None, query: None, uri: None }
    }

    /// The path without its query, percent-decoded (twice, for double encoding).
    fn path(&mut self) -> Option<&str> {
        let record = self.record;
        self.path
            .get_or_insert_with(|| {
                record.path.as_deref().map(|p| decode(p.split('?').next().unwrap_or(p), false))
            })
            .as_deref()
    }

    /// The query string, percent-decoded with `+` as a space.
    fn query(&mut self) -> Option<&str> {
        let record = self.record;
        self.query
            .get_or_insert_with(|| {
                record.path.as_deref().and_then(|p| p.split_once('?')).map(|(_, q)| decode(q, true))
            })
            .as_deref()
    }
}

impl Fields<'_, '_> {
    /// Decoded path and query together.
    fn uri(&mut self) -> Option<&str> {
        if self.uri.is_none() {
            let path = self.path().map(str::to_string);
            let query = self.query().map(str::to_string);
            self.uri = Some(path.map(|p| match query {
                Some(q) => format!("{p}?{q}"),
                None => p,
            }));
        }
        self.uri.as_ref().and_then(|u| u.as_deref())
    }
}

/// A request target as the rules read it: its path decoded as [`Fields::path`] and its
/// query as [`Fields::query`] (so every decoded value a rule reads is part of it).
fn decoded_target(target: &str) -> String {
    match target.split_once('?') {
        Some((path, query)) => format!("{}?{}", decode(path, false), decode(query, true)),
        None => decode(target, false),
    }
}

thread_local! {
    /// The buffer [`decode_target_into`] decodes into, reused from line to line.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`decoded_target`] into `out`, without an allocation per decoding pass; false when a
/// pass gave bytes that are not UTF-8, where `decoded_target`'s lossy conversions would
/// give other bytes (on UTF-8 they change nothing, so then `out` is its answer).
fn decode_target_into(target: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    let (path, query) = match memchr::memchr(b'?', target) {
        Some(at) => (&target[..at], Some(&target[at + 1..])),
        None => (target, None),
    };
    let path_exact = decode_part_into(path, false, out);
    let query_exact = query.is_none_or(|query| {
        out.push(b'?');
        decode_part_into(query, true, out)
    });
    path_exact && query_exact
}

/// [`decode`] of one part, appended to `out` as bytes; false when a pass gave bytes that
/// are not UTF-8.
fn decode_part_into(part: &[u8], plus_is_space: bool, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    percent_decode_into(part, plus_is_space, out);
    if out[start..].contains(&b'%') {
        let first = out.split_off(start);
        if std::str::from_utf8(&first).is_err() {
            return false;
        }
        percent_decode_into(&first, plus_is_space, out);
    }
    std::str::from_utf8(&out[start..]).is_ok()
}

/// One pass of [`decode`]: `+` as a space when asked, then `%XX` as its byte (a `%` not
/// followed by two hex digits stays, as `percent_decode_str` leaves it).
fn percent_decode_into(s: &[u8], plus_is_space: bool, out: &mut Vec<u8>) {
    // A byte at a time: targets are short, and a search for the next `%` or `+` cost
    // more in set-up than it saved.
    out.reserve(s.len());
    let hex = |j: usize| s.get(j).and_then(|&h| char::from(h).to_digit(16));
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        i += 1;
        match b {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => match (hex(i), hex(i + 1)) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            _ => out.push(b),
        }
    }
}

fn decode(s: &str, plus_is_space: bool) -> String {
    let once = |s: &str| -> String {
        let s: Cow<'_, str> = if plus_is_space { s.replace('+', " ").into() } else { s.into() };
        percent_decode_str(&s).decode_utf8_lossy().into_owned()
    };
    let first = once(s);
    if first.contains('%') { once(&first) } else { first }
}

fn conditions_hold(rule: &Rule, f: &mut Fields<'_, '_>) -> bool {
    let w = &rule.when;
    let r = f.record;
    let text_matches = |re: &Option<regex::Regex>, value: Option<&str>| {
        re.as_ref().is_none_or(|re| value.is_some_and(|v| re.is_match(v)))
    };
    (w.status.is_empty() || r.status.is_some_and(|s| w.status.iter().any(|range| range.contains(&s))))
        && (w.method.is_empty() || r.method.as_deref().is_some_and(|m| w.method.iter().any(|x| x == m)))
        && (w.level.is_empty() || r.level.as_deref().is_some_and(|l| w.level.iter().any(|x| x == l)))
        && w.error_event.is_none_or(|e| r.error_event == Some(e))
        && w.malformed_request.is_none_or(|want| r.method.is_none() == want)
        && text_matches(&w.user_agent, r.user_agent.as_deref())
        && (text_matches(&w.event, r.event.as_deref()) || text_matches(&w.event, r.other_event.as_deref()))
        && text_matches(&w.message, r.message.as_deref())
        && (w.path.is_none() || text_matches(&w.path, f.path()))
        && (w.query.is_none() || text_matches(&w.query, f.query()))
        && (w.uri.is_none() || text_matches(&w.uri, f.uri()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_rules_compile() {
        let set = RuleSet::builtin().unwrap();
        assert!(set.rules().len() >= 10);
        assert!(set.find("nginx-basic-auth-failure").is_some());
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let text = "[[rule]]\nid = \"x\"\ndescription = \"d\"\ninputs = [\"access\"]\nliterals = [\"a\"]\nregex = \"(\"\nexamples = [\"a\"]\ncounterexamples = [\"b\"]\n";
        let err = rules::compile_file("f.toml", text).unwrap_err();
        assert_eq!((err.file.as_str(), err.line), ("f.toml", 6));
        let unknown =
            "[[rule]]\nid = \"x\"\ndescription = \"d\"\ninputs = [\"access\"]\nwhen = { stauts = [401] }\n";
        let err = rules::compile_file("f.toml", unknown).unwrap_err();
        assert_eq!(err.line, 5, "{err}");
        assert!(err.message.contains("stauts"), "{err}");
        let zero = "[[rule]]\nid = \"z\"\ndescription = \"d\"\ninputs = [\"access\"]\nliterals = [\"a\"]\nthreshold = 0\nexamples = [\"a\"]\ncounterexamples = [\"b\"]\n";
        let err = rules::compile_file("f.toml", zero).unwrap_err();
        assert!(err.message.contains("threshold = 0"), "{err}");
    }

    /// Only a backend-only rule whose one text condition is the message has its literals
    /// searched in the message alone; a message that lacks them cannot match it.
    #[test]
    fn message_only_rules_are_searched_in_the_message() {
        let rule = |inputs: &str, when: &str, regex: &str| {
            let text = format!(
                "[[rule]]\nid = \"r\"\ndescription = \"d\"\ninputs = {inputs}\nliterals = [\"fail\"]\n{regex}when = {when}\nexamples = [\"fail\"]\ncounterexamples = [\"ok\"]\n"
            );
            rules::compile_file("f.toml", &text).unwrap().remove(0)
        };
        assert!(reads_backend_message_only(&rule(r#"["backend"]"#, "{ message = 'fail' }", "")));
        assert!(!reads_backend_message_only(&rule(
            r#"["backend"]"#,
            "{ message = 'fail', event = 'x' }",
            ""
        )));
        assert!(!reads_backend_message_only(&rule(r#"["backend", "error"]"#, "{ message = 'fail' }", "")));
        assert!(!reads_backend_message_only(&rule(
            r#"["backend"]"#,
            "{ message = 'fail' }",
            "regex = 'fail'\n"
        )));
        assert!(!reads_backend_message_only(&rule(r#"["backend"]"#, "{ level = ['warn'] }", "")));
        let set = RuleSet::builtin().unwrap();
        let id = set.rules().iter().position(|r| r.id == "backend-auth-failed-message").unwrap() as RuleId;
        let record = |message: &'static str| Record {
            kind: Some(RecordKind::Backend),
            message: Some(message.into()),
            ..Record::default()
        };
        let line = br#"{"event":"login","msg":"ok","note":"failed over"}"#;
        assert!(!set.candidates_for(line, &record("ok")).contains(&id));
        assert!(set.candidates_for(b"x", &record("Login failed")).contains(&id));
    }

    /// Six rules with a literal each (`l0`..`l5`), so one value can have any number of
    /// candidates, more than a [`ShortSlot`] keeps.
    fn six_literal_prefilter() -> Prefilter {
        let rules: Vec<Rule> = (0..6)
            .map(|i| {
                let text = format!(
                    "[[rule]]\nid = \"r{i}\"\ndescription = \"d\"\ninputs = [\"access\"]\nliterals = [\"l{i}\"]\nwhen = {{ path = 'l{i}' }}\nexamples = [\"l{i}\"]\ncounterexamples = [\"ok\"]\n"
                );
                rules::compile_file("f.toml", &text).unwrap().remove(0)
            })
            .collect();
        Prefilter::build(rules.iter().enumerate().map(|(i, r)| (i as RuleId, r))).unwrap()
    }

    proptest::proptest! {
        /// Whatever the values, their lengths (either side of a short slot's room and of
        /// the longest value remembered), their number of candidates and the slots they
        /// share, the memo answers what a search of the value answers.
        #[test]
        fn the_memo_answers_what_a_search_answers(
            pool in proptest::collection::vec(
                (proptest::collection::vec(0usize..8, 0..70), proptest::prop_oneof![0usize..50, 460usize..560]),
                1..40,
            ),
            asks in proptest::collection::vec((0usize..40, 0usize..3), 1..400),
        ) {
            let prefilter = six_literal_prefilter();
            let values: Vec<Vec<u8>> = pool
                .iter()
                .map(|(words, pad)| {
                    let mut v: Vec<u8> = words.iter().flat_map(|&w| if w < 6 { format!("l{w}") } else { "x".into() }.into_bytes()).collect();
                    v.resize(v.len() + pad, b'-');
                    v
                })
                .collect();
            let mut memo = PrefilterMemo::new();
            for (which, field) in asks {
                let value = &values[which % values.len()];
                let (mut remembered, mut searched) = (vec![99], vec![99]);
                memo.candidates(RecordField::ALL[field], &prefilter, value, &mut remembered);
                prefilter.candidates(value, &mut searched);
                proptest::prop_assert_eq!(remembered, searched);
            }
        }
    }

    /// A short value's answer is kept beside it; one with more candidates than a slot
    /// holds is searched every time and leaves its slot empty.
    #[test]
    fn short_values_are_remembered_unless_their_answer_does_not_fit() {
        let prefilter = six_literal_prefilter();
        let slot_of = |memo: &PrefilterMemo, value: &[u8]| {
            let hash = crate::aggregate::stable_hash(value);
            memo.short[PrefilterMemo::slot_at(hash, RecordField::Path as u8)]
        };
        let mut memo = PrefilterMemo::new();
        let (few, many) = (b"/l1/l2".as_slice(), b"/l0/l1/l2/l3/l4".as_slice());
        let mut out = Vec::new();
        memo.candidates(RecordField::Path, &prefilter, few, &mut out);
        assert_eq!(out, [1, 2]);
        assert!(slot_of(&memo, few).holds(crate::aggregate::stable_hash(few), RecordField::Path as u8, few));
        out.clear();
        memo.candidates(RecordField::Path, &prefilter, many, &mut out);
        assert_eq!(out, [0, 1, 2, 3, 4]);
        assert_eq!(slot_of(&memo, many).field, ShortSlot::EMPTY);
        let exact = vec![b'l'; ShortSlot::VALUE];
        memo.candidates(RecordField::Path, &prefilter, &exact, &mut Vec::new());
        assert!(slot_of(&memo, &exact).holds(
            crate::aggregate::stable_hash(&exact),
            RecordField::Path as u8,
            &exact
        ));
    }

    #[test]
    fn decoding_sees_through_encoding() {
        assert_eq!(decode("/a/%2e%2e%2f%2e%2e%2fetc/passwd", false), "/a/../../etc/passwd");
        assert_eq!(decode("%252e%252e%252f", false), "../");
        assert_eq!(decode("q=%27+OR+1%3D1", true), "q=' OR 1=1");
    }

    fn decoded_in_one_buffer(target: &str) -> Option<String> {
        let mut out = b"left over".to_vec();
        decode_target_into(target.as_bytes(), &mut out).then(|| String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_target_is_decoded_in_one_buffer_as_the_rules_decode_it() {
        let decoded = decoded_in_one_buffer;
        // The query is decoded twice (it held %25), so its %2B's plus is a space by then.
        assert_eq!(decoded("/wp-%6cogin.php?a=%2B+b&c=%252e%25").unwrap(), "/wp-login.php?a=  b&c=.%");
        assert_eq!(decoded("/a+b?c=%2B").unwrap(), "/a+b?c=+");
        assert_eq!(decoded("/%4").unwrap(), "/%4");
        assert_eq!(decoded("/caf%C3%A9?q=%E2%82%AC").unwrap(), "/café?q=€");
        assert_eq!(decoded("/%C3"), None);
        // The first pass's lone C3 is replaced before the second pass makes C3 A9 of it.
        assert_eq!(decoded("/%C3%25A9"), None);
    }

    #[test]
    fn a_literal_is_searched_in_each_plus_spelling_of_its_spaces() {
        assert_eq!(plus_spellings("union"), Some(vec!["union".to_string()]));
        assert_eq!(plus_spellings(" or ").unwrap(), [" or ", "+or ", " or+", "+or+"]);
        assert_eq!(plus_spellings("a b c d e").map(|s| s.len()), Some(16));
        assert_eq!(plus_spellings("a b c d e f"), None);
    }

    /// A rule whose literal holds `spaces` spaces, reading the decoded query.
    fn spaced_literal_rule(spaces: usize) -> RuleSet {
        let literal = vec!["drop"; spaces + 1].join(" ");
        let toml = format!(
            "[[rule]]\nid = \"spaced\"\ndescription = \"d\"\ninputs = [\"access\"]\nseverity = \"low\"\n\
             threshold = 1\nliterals = [\"{literal}\"]\nwhen = {{ query = '(?i){literal}' }}\n\
             examples = ['{example}']\ncounterexamples = ['{counterexample}']\n",
            example = access_line(&format!("/a?q={literal}")),
            counterexample = access_line("/a?q=drop"),
        );
        RuleSet::from_files(vec![("spaced.toml".into(), toml)]).unwrap()
    }

    fn access_line(target: &str) -> String {
        format!(r#"192.0.2.1 - - [15/Jan/2024:10:00:00 +0000] "GET {target} HTTP/1.1" 200 1 "-" "-""#)
    }

    #[test]
    fn a_query_spelling_spaces_as_plus_hides_no_match() {
        for spaces in [1, 4, 5] {
            let set = spaced_literal_rule(spaces);
            let query = vec!["DROP"; spaces + 1].join("+");
            let line = access_line(&format!("/a?q={query}"));
            let record = crate::parse::Parser::detecting(&[]).parse(b"f", line.as_bytes()).unwrap().0;
            let (mut fast, mut naive) = (Vec::new(), Vec::new());
            set.detect(line.as_bytes(), &record, &mut fast);
            set.detect_unfiltered(line.as_bytes(), &record, 0, &mut naive);
            assert_eq!((fast.len(), naive.len()), (1, 1), "{spaces} spaces: {line}");
        }
    }

    proptest::proptest! {
        /// Where the one-buffer decoding answers, it is `decoded_target`'s own; where it
        /// does not, `decoded_target` replaced bytes that were not UTF-8.
        #[test]
        fn one_buffer_decoding_agrees_with_the_rules_decoding(
            target in "([a-z/?=&+.%]|%[0-9a-fA-F]{0,2}|%25[0-9a-f]{2}|%[c-f][0-9a-f]|%[89ab][0-9a-f]|%2[bB]|é){0,14}",
        ) {
            match decoded_in_one_buffer(&target) {
                Some(fast) => proptest::prop_assert_eq!(fast, decoded_target(&target)),
                None => proptest::prop_assert!(decoded_target(&target).contains(char::REPLACEMENT_CHARACTER)),
            }
        }
    }
}
