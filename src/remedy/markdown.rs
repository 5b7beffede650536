//! `report.md`: the evidence a reviewer reads before applying anything. Log text is the
//! attacker's text, so every value is rendered inert: inline values have Markdown and
//! HTML metacharacters escaped and control characters shown as `\xHH`; sample lines go
//! into fenced blocks whose fence is longer than any backtick run inside them.

use std::fmt::Write;

use crate::decide::{AccountReport, ClientReport, ScanReport};
use crate::report::terminal_safe;
use crate::time::format_rfc3339;

use super::BundlePlan;

/// Escapes text for inline Markdown: control characters first, then every character
/// that can start Markdown or HTML syntax, and the `://` and `www.` that would turn a
/// hostile URL into a live link.
pub fn inline(s: &str) -> String {
    let safe = terminal_safe(s);
    let mut out = String::with_capacity(safe.len());
    let mut chars = safe.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\\' | '`' | '*' | '_' | '[' | ']' | '#' | '!' | '|' | '~' => {
                out.push('\\');
                out.push(c);
            }
            ':' if chars.peek() == Some(&'/') => out.push_str("\\:"),
            '.' if out.ends_with("www") => out.push_str("\\."),
            c => out.push(c),
        }
    }
    out
}

/// A fenced block that its content cannot close.
pub fn fenced(lines: &[String]) -> String {
    let body: Vec<String> = lines.iter().map(|l| terminal_safe(l)).collect();
    let longest = body.iter().map(|l| longest_run(l, '`')).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    format!("{fence}text\n{}\n{fence}\n", body.join("\n"))
}

fn longest_run(s: &str, ch: char) -> usize {
    s.split(|c| c != ch).map(str::len).max().unwrap_or(0)
}

/// Renders the whole report.
pub fn render(report: &ScanReport, plan: &BundlePlan) -> String {
    let mut md = String::new();
    summary(&mut md, report, plan);
    for c in report.ips.iter().filter(|c| c.block) {
        client(&mut md, c);
    }
    for a in report.accounts.iter().filter(|a| a.lock || !a.reasons.is_empty()) {
        account(&mut md, a);
    }
    not_written(&mut md, report, plan);
    rules_used(&mut md, report);
    md
}

/// The rules named above, with what they mean.
fn rules_used(md: &mut String, r: &ScanReport) {
    let used: std::collections::BTreeSet<&str> =
        r.ips.iter().filter(|c| c.block).flat_map(|c| c.rules.keys().map(String::as_str)).collect();
    let described: Vec<_> = r.rules.iter().filter(|rule| used.contains(rule.id.as_str())).collect();
    if described.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Rules\n");
    for rule in described {
        let _ = writeln!(md, "- `{}`: {}", rule.id, inline(&rule.description));
    }
}

fn summary(md: &mut String, r: &ScanReport, plan: &BundlePlan) {
    let s = &r.stats;
    let _ = writeln!(md, "# logwarden review bundle `{}`\n", plan.bundle_id);
    let _ = writeln!(
        md,
        "Scanned {} lines ({} parsed, {} unparsed) from {} source(s); thresholds counted in a sliding window of {} seconds.\n",
        s.lines,
        s.parsed,
        s.unparsed,
        s.sources.len(),
        r.thresholds.window
    );
    if let Some(m) = &s.memory_summary {
        let weight = if m.lost_evidence() { "**Memory bound**" } else { "Memory bound" };
        let _ = writeln!(md, "{weight}: {}.\n", inline(&m.describe()));
    }
    for (heading, note) in s.reading_notes() {
        let _ = writeln!(md, "**{heading}**: {}.\n", inline(&note));
    }
    let _ = writeln!(md, "## Summary\n");
    let _ = writeln!(
        md,
        "- Clients proposed for blocking: **{}** (new: {})",
        r.blocklist.len(),
        plan.added.len()
    );
    let _ = writeln!(md, "- Already blocked, not proposed again: {}", plan.already_blocked.len());
    let _ = writeln!(md, "- Accounts proposed for locking: **{}**", plan.locked.len());
    let _ = writeln!(md, "- Spared (never blocked): {}", r.spared.len());
    let _ = writeln!(md, "- Blocklist: {}\n", inline(&plan.blocklist_note));
    if !r.spared.is_empty() {
        let _ = writeln!(md, "| spared | why |\n|---|---|");
        for sp in &r.spared {
            let _ = writeln!(md, "| {} | {} |", inline(&sp.ip.to_string()), inline(&sp.reason));
        }
        md.push('\n');
    }
    if !plan.already_blocked.is_empty() {
        let _ = writeln!(md, "| already blocked | by entry |\n|---|---|");
        for (ip, by) in &plan.already_blocked {
            let _ = writeln!(md, "| {} | {} |", inline(ip), inline(by));
        }
        md.push('\n');
    }
}

fn client(md: &mut String, c: &ClientReport) {
    let _ = writeln!(md, "## Block {}\n", inline(&c.ip.to_string()));
    for reason in &c.reasons {
        let _ = writeln!(md, "- {}", inline(reason));
    }
    let statuses: Vec<String> = c.statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
    let _ = writeln!(
        md,
        "- requests {}, 4xx {}, 5xx {}, failed logins {}",
        c.requests, c.status_4xx, c.status_5xx, c.auth_failures
    );
    let _ = writeln!(md, "- status mix: {}", inline(&statuses.join(", ")));
    let rules: Vec<String> = c.rules.iter().map(|(r, n)| format!("{r} × {n}")).collect();
    if !rules.is_empty() {
        let _ = writeln!(md, "- detections: {}", inline(&rules.join(", ")));
    }
    seen(md, &c.first_seen, &c.last_seen);
    top(md, "accounts tried", &c.accounts);
    top(md, "top paths", &c.top_paths);
    top(md, "user agents", &c.top_user_agents);
    samples(md, &c.samples);
}

fn account(md: &mut String, a: &AccountReport) {
    let verb = if a.lock { "Lock account" } else { "Review account" };
    let _ = writeln!(md, "## {verb} {} ({})\n", inline(&a.user), inline(&a.realm));
    for reason in &a.reasons {
        let _ = writeln!(md, "- {}", inline(reason));
    }
    let _ = writeln!(
        md,
        "- failed logins {}, from {}{} distinct client(s)",
        a.auth_failures,
        a.ips,
        if a.ips_at_least { "+" } else { "" }
    );
    seen(md, &a.first_seen, &a.last_seen);
    top(md, "spelled in the logs", &a.spellings);
    let clients: Vec<String> = a.clients.iter().map(ToString::to_string).collect();
    let _ = writeln!(md, "- clients: {}", inline(&clients.join(", ")));
    samples(md, &a.samples);
}

fn seen(md: &mut String, first: &Option<String>, last: &Option<String>) {
    let (f, l) = (first.as_deref().unwrap_or("-"), last.as_deref().unwrap_or("-"));
    let _ = writeln!(md, "- first seen {}, last seen {}", inline(f), inline(l));
}

fn top(md: &mut String, what: &str, list: &[(String, u64)]) {
    if list.is_empty() {
        return;
    }
    let items: Vec<String> = list.iter().map(|(v, n)| format!("{} ({n})", inline(v))).collect();
    let _ = writeln!(md, "- {what}: {}", items.join(", "));
}

fn samples(md: &mut String, samples: &[crate::aggregate::Sample]) {
    if samples.is_empty() {
        md.push('\n');
        return;
    }
    let _ = writeln!(md, "\nSample lines:\n");
    let lines: Vec<String> = samples
        .iter()
        .map(|s| {
            format!("{}:{} {} {}", s.source, s.line, s.time.map(format_rfc3339).unwrap_or_default(), s.text)
        })
        .collect();
    md.push_str(&fenced(&lines));
    md.push('\n');
}

fn not_written(md: &mut String, r: &ScanReport, plan: &BundlePlan) {
    if plan.refused.is_empty() && plan.malformed.is_empty() && r.stats.read_errors.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Not written, for a human to decide\n");
    for n in &plan.refused {
        let _ = writeln!(md, "- account {}: {}", inline(&n.name), inline(&n.why));
    }
    for m in &plan.malformed {
        let _ =
            writeln!(md, "- live blocklist entry {} kept as it was: {}", inline(&m.entry), inline(&m.why));
    }
    for e in &r.stats.read_errors {
        let _ = writeln!(md, "- input {} was not read to its end: {}", inline(&e.source), inline(&e.error));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_inline_text_is_inert() {
        let s = inline("<script>alert(1)</script> [x](http://evil) **b** `c` | d\n# h");
        assert!(!s.contains('<') && !s.contains('\n'));
        assert!(s.contains("\\[x\\](http\\://evil)"), "{s}");
        assert!(s.contains("\\|"));
    }

    #[test]
    fn fences_outlast_backtick_runs() {
        let block = fenced(&["a ```` b".to_string()]);
        assert!(block.starts_with("`````text\n"));
        assert!(block.ends_with("\n`````\n"));
    }
}
