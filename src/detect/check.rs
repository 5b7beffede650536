//! `patterns test`: every rule's examples must match it and its counterexamples must not.
//! For single-line rules the prefilter is checked on its own too: it may say "maybe" to a
//! line the rule rejects, never "no" to a line the rule accepts. Aggregate rules'
//! examples are blocks of lines, scanned whole.

use std::sync::Arc;

use serde::Serialize;

use super::{Hit, RuleId, RuleSet};
use crate::client::SparePolicy;
use crate::decide::{Thresholds, decide};
use crate::parse::Parser;
use crate::pipeline::{ScanConfig, scan};
use crate::source::Input;
use crate::wrapper::unwrap;

/// An example that does not behave.
#[derive(Clone, Debug, Serialize)]
pub struct ExampleFailure {
    pub file: String,
    pub line: usize,
    pub rule: String,
    pub message: String,
}

impl std::fmt::Display for ExampleFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: rule {}: {}", self.file, self.line, self.rule, self.message)
    }
}

/// Checks every rule of `set`; returns what failed (empty when all is well).
pub fn check_examples(set: &Arc<RuleSet>) -> Vec<ExampleFailure> {
    let mut failures = Vec::new();
    let mut parser = Parser::detecting(&[]);
    for (i, rule) in set.rules().iter().enumerate() {
        let id = i as RuleId;
        let mut fail = |message: String| {
            failures.push(ExampleFailure {
                file: rule.file.clone(),
                line: rule.line,
                rule: rule.id.clone(),
                message,
            })
        };
        for (example, want) in
            rule.examples.iter().map(|e| (e, true)).chain(rule.counterexamples.iter().map(|e| (e, false)))
        {
            let outcome = match rule.aggregate {
                Some(_) => aggregate_fires(set, &rule.id, example).map(|m| (m, false)),
                None => single_line(set, &mut parser, id, example),
            };
            match outcome {
                Ok((true, true)) => fail(format!(
                    "the prefilter says no to a line the rule matches: add a literal that occurs in it: {}",
                    short(example)
                )),
                Ok((true, _)) if !want => fail(format!("counterexample matches: {}", short(example))),
                Ok((false, _)) if want => fail(format!("example does not match: {}", short(example))),
                Ok(_) => {}
                Err(why) if want => fail(format!("{why}: {}", short(example))),
                // A counterexample logwarden cannot even parse cannot match.
                Err(_) => {}
            }
        }
    }
    failures
}

/// Whether `rule` matches the line, and whether the prefilter wrongly says no to it;
/// errors say why the example is unusable.
fn single_line(
    set: &RuleSet,
    parser: &mut Parser,
    rule: RuleId,
    example: &str,
) -> Result<(bool, bool), String> {
    let wrapped = unwrap(example.as_bytes());
    let payload = wrapped.payload;
    let (record, _) = parser.parse(b"example", &payload).ok_or("not a line logwarden can parse")?;
    let mut alone: Vec<Hit> = Vec::new();
    set.detect_unfiltered(&payload, &record, rule, &mut alone);
    let matches = !alone.is_empty();
    let prefilter_no =
        !set.rule(rule).literals.is_empty() && !set.candidates_for(&payload, &record).contains(&rule);
    Ok((matches, matches && prefilter_no))
}

/// Whether scanning the block of lines gives a reason naming the rule.
fn aggregate_fires(set: &Arc<RuleSet>, rule_id: &str, block: &str) -> Result<bool, String> {
    let config = ScanConfig::new(set.clone());
    let input = Input::from_reader("example", std::io::Cursor::new(block.as_bytes().to_vec()));
    let agg = scan(vec![input], &config).map_err(|e| e.to_string())?;
    if agg.stats.unparsed > 0 {
        return Err(format!("{} line(s) of the example block do not parse", agg.stats.unparsed));
    }
    let spare = SparePolicy { block_private: true, ..SparePolicy::default() };
    let report = decide(agg, &Thresholds::default(), &spare, set);
    let prefix = format!("{rule_id}:");
    let named = |reasons: &[String]| reasons.iter().any(|r| r.starts_with(&prefix));
    Ok(report.ips.iter().any(|c| named(&c.reasons)) || report.accounts.iter().any(|a| named(&a.reasons)))
}

fn short(s: &str) -> String {
    let one_line = s.trim().replace('\n', " ⏎ ");
    match one_line.char_indices().nth(160) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}
