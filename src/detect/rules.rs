//! Rule files: the TOML schema of `patterns/*.toml` and its compilation into [`Rule`]s.
//! Every problem is reported with the file, the line and what to change; unknown keys are
//! errors (`deny_unknown_fields`), so a typo never silently disables a condition.

use std::ops::RangeInclusive;

use regex::Regex;
use serde::Deserialize;
use toml::Spanned;

use crate::parse::{ErrorLogEvent, RecordKind};
use crate::time::parse_duration;

/// A rule file: `[[rule]]` tables.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(rename = "rule", default)]
    rules: Vec<RuleSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    id: Spanned<String>,
    description: String,
    inputs: Vec<InputKind>,
    #[serde(default)]
    severity: Severity,
    #[serde(default)]
    counts: Counts,
    #[serde(default)]
    auth_failure: bool,
    #[serde(default)]
    realm: Option<String>,
    #[serde(default)]
    threshold: Option<u32>,
    #[serde(default)]
    window: Option<Spanned<String>>,
    #[serde(default)]
    literals: Vec<String>,
    #[serde(default)]
    regex: Option<Spanned<String>>,
    #[serde(default)]
    when: WhenSpec,
    #[serde(default)]
    aggregate: Option<AggregateKind>,
    #[serde(default)]
    examples: Vec<String>,
    #[serde(default)]
    counterexamples: Vec<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WhenSpec {
    #[serde(default)]
    status: Vec<Spanned<StatusSpec>>,
    #[serde(default)]
    method: Vec<String>,
    path: Option<Spanned<String>>,
    query: Option<Spanned<String>>,
    uri: Option<Spanned<String>>,
    user_agent: Option<Spanned<String>>,
    event: Option<Spanned<String>>,
    message: Option<Spanned<String>>,
    #[serde(default)]
    level: Vec<String>,
    error_event: Option<ErrorEventSpec>,
    malformed_request: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StatusSpec {
    Code(u16),
    Text(String),
}

/// Which logs a rule reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputKind {
    Access,
    Error,
    Backend,
}

impl InputKind {
    /// Whether records of `kind` are this input.
    pub fn accepts(self, kind: RecordKind) -> bool {
        matches!(
            (self, kind),
            (InputKind::Access, RecordKind::Access)
                | (InputKind::Error, RecordKind::ErrorLog)
                | (InputKind::Backend, RecordKind::Backend)
        )
    }
}

/// How serious a hit is, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    Info,
    Low,
    #[default]
    Medium,
    High,
}

/// What a hit counts toward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Counts {
    #[default]
    Client,
    Account,
    Both,
}

/// Rules over many events rather than one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AggregateKind {
    /// One client failing logins on many distinct accounts (credential stuffing).
    ClientDistinctAccounts,
    /// One account failing from many distinct clients (distributed brute force).
    AccountDistinctClients,
    /// One client drawing 4xx answers on many distinct paths (probing).
    #[serde(rename = "client-distinct-4xx-paths")]
    ClientDistinct4xxPaths,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum ErrorEventSpec {
    BasicAuthFailure,
    BasicAuthMissing,
    RateLimited,
    Forbidden,
}

/// Conditions on parsed fields; all that are given must hold.
#[derive(Debug, Default)]
pub struct Conditions {
    pub status: Vec<RangeInclusive<u16>>,
    /// Upper-case methods.
    pub method: Vec<String>,
    /// On the percent-decoded path (without the query).
    pub path: Option<Regex>,
    /// On the percent-decoded query string.
    pub query: Option<Regex>,
    /// On the whole decoded request target (path, `?`, query).
    pub uri: Option<Regex>,
    pub user_agent: Option<Regex>,
    pub event: Option<Regex>,
    pub message: Option<Regex>,
    /// Lower-case levels.
    pub level: Vec<String>,
    pub error_event: Option<ErrorLogEvent>,
    /// `Some(true)`: the request line was not `METHOD TARGET PROTOCOL` (or empty).
    pub malformed_request: Option<bool>,
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub id: String,
    pub description: String,
    pub inputs: Vec<InputKind>,
    pub severity: Severity,
    pub counts: Counts,
    /// A hit is a failed login (counted per client and, with `counts`, per account).
    pub auth_failure: bool,
    /// Whose accounts: `app` (lockable with SQL) or another name (reported only).
    pub realm: String,
    /// Hits (or, for aggregate rules, distinct values) in the window that propose an action.
    pub threshold: Option<u32>,
    /// Overrides the scan's window for this rule, in seconds.
    pub window: Option<i64>,
    /// Prefilter keywords, lower-case; a line must contain one (ASCII case-insensitive).
    pub literals: Vec<String>,
    /// Runs on the line only after the prefilter; named captures `ip` and `user`.
    pub regex: Option<Regex>,
    pub when: Conditions,
    pub aggregate: Option<AggregateKind>,
    pub examples: Vec<String>,
    pub counterexamples: Vec<String>,
    /// Where the rule was defined, for messages.
    pub file: String,
    pub line: usize,
}

/// A rule file that could not be loaded, with where and what to change.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct RuleError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

/// Parses and compiles one rule file.
pub fn compile_file(file: &str, text: &str) -> Result<Vec<Rule>, RuleError> {
    let parsed: RuleFile = toml::from_str(text).map_err(|e| RuleError {
        file: file.to_string(),
        line: e.span().map_or(1, |s| line_of(text, s.start)),
        message: format!("{} (see patterns/README.md for the rule format)", e.message()),
    })?;
    parsed.rules.into_iter().map(|spec| compile_rule(file, text, spec)).collect()
}

fn compile_rule(file: &str, text: &str, spec: RuleSpec) -> Result<Rule, RuleError> {
    let at = |span: std::ops::Range<usize>, message: String| RuleError {
        file: file.to_string(),
        line: line_of(text, span.start),
        message,
    };
    let id_span = spec.id.span();
    let id = spec.id.into_inner();
    let valid_id = !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if !valid_id {
        return Err(at(id_span, format!("rule id {id:?} must be kebab-case (a-z, 0-9, '-')")));
    }
    if spec.inputs.is_empty() {
        return Err(at(
            id_span,
            format!("rule {id}: `inputs` must name at least one of access, error, backend"),
        ));
    }
    let regex = spec.regex.map(|r| compile_regex(&id, "regex", r, &at)).transpose()?;
    if let Some(re) = &regex {
        let bad: Vec<&str> = re.capture_names().flatten().filter(|n| !["ip", "user"].contains(n)).collect();
        if !bad.is_empty() {
            return Err(at(
                id_span,
                format!("rule {id}: named captures may only be `ip` and `user`, not {bad:?}"),
            ));
        }
    }
    let window = match spec.window {
        Some(w) => {
            let span = w.span();
            Some(parse_duration(w.get_ref()).ok_or_else(|| {
                at(
                    span,
                    format!("rule {id}: window {:?} is not a duration such as 90s, 10m or 1h", w.get_ref()),
                )
            })?)
        }
        None => None,
    };
    let when = compile_when(&id, spec.when, &at)?;
    let is_single = spec.aggregate.is_none();
    if is_single && spec.literals.is_empty() && regex.is_some() {
        return Err(at(id_span, format!("rule {id}: a regex needs `literals` for the prefilter")));
    }
    if spec.threshold == Some(0) {
        return Err(at(
            id_span,
            format!("rule {id}: `threshold = 0` would propose every client it saw; give 1 or more"),
        ));
    }
    if spec.aggregate.is_some() && spec.threshold.is_none() {
        return Err(at(id_span, format!("rule {id}: an aggregate rule needs a `threshold`")));
    }
    if spec.examples.is_empty() || spec.counterexamples.is_empty() {
        return Err(at(
            id_span,
            format!("rule {id}: give at least one `examples` line and one `counterexamples` line"),
        ));
    }
    Ok(Rule {
        id,
        description: spec.description,
        inputs: spec.inputs,
        severity: spec.severity,
        counts: spec.counts,
        auth_failure: spec.auth_failure,
        realm: spec.realm.unwrap_or_else(|| super::APP_REALM.to_string()),
        threshold: spec.threshold,
        window,
        literals: spec.literals.iter().map(|l| l.to_ascii_lowercase()).collect(),
        regex,
        when,
        aggregate: spec.aggregate,
        examples: spec.examples,
        counterexamples: spec.counterexamples,
        file: file.to_string(),
        line: line_of(text, id_span.start),
    })
}

type At<'a> = dyn Fn(std::ops::Range<usize>, String) -> RuleError + 'a;

fn compile_regex(id: &str, field: &str, s: Spanned<String>, at: &At<'_>) -> Result<Regex, RuleError> {
    let span = s.span();
    Regex::new(s.get_ref()).map_err(|e| at(span, format!("rule {id}: {field} does not compile: {e}")))
}

fn compile_when(id: &str, w: WhenSpec, at: &At<'_>) -> Result<Conditions, RuleError> {
    let re = |field: &str, s: Option<Spanned<String>>| s.map(|s| compile_regex(id, field, s, at)).transpose();
    let status = w
        .status
        .into_iter()
        .map(|s| {
            let span = s.span();
            status_range(s.get_ref()).ok_or_else(|| {
                at(
                    span,
                    format!(
                        "rule {id}: status must be a code (401), a class (\"4xx\") or a range (\"400-403\")"
                    ),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Conditions {
        status,
        method: w.method.iter().map(|m| m.to_ascii_uppercase()).collect(),
        path: re("when.path", w.path)?,
        query: re("when.query", w.query)?,
        uri: re("when.uri", w.uri)?,
        user_agent: re("when.user_agent", w.user_agent)?,
        event: re("when.event", w.event)?,
        message: re("when.message", w.message)?,
        level: w.level.iter().map(|l| l.to_ascii_lowercase()).collect(),
        error_event: w.error_event.map(|e| match e {
            ErrorEventSpec::BasicAuthFailure => ErrorLogEvent::BasicAuthFailure,
            ErrorEventSpec::BasicAuthMissing => ErrorLogEvent::BasicAuthMissing,
            ErrorEventSpec::RateLimited => ErrorLogEvent::RateLimited,
            ErrorEventSpec::Forbidden => ErrorLogEvent::Forbidden,
        }),
        malformed_request: w.malformed_request,
    })
}

fn status_range(s: &StatusSpec) -> Option<RangeInclusive<u16>> {
    match s {
        StatusSpec::Code(c) if (100..=599).contains(c) => Some(*c..=*c),
        StatusSpec::Code(_) => None,
        StatusSpec::Text(t) => {
            if let Some(class) =
                t.strip_suffix("xx").and_then(|c| c.parse::<u16>().ok()).filter(|c| (1..=5).contains(c))
            {
                return Some(class * 100..=class * 100 + 99);
            }
            let (a, b) = t.split_once('-')?;
            let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
            (100 <= a && a <= b && b <= 599).then_some(a..=b)
        }
    }
}
