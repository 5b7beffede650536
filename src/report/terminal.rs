//! The human summary: proposals first (what to do), then evidence, then what could not be
//! read. Colour only when asked for (a TTY without `NO_COLOR`).

use std::io::{self, Write};

use super::terminal_safe;
use crate::decide::{AccountReport, ScanReport, human_window};

/// Terminal rendering options.
#[derive(Clone, Copy, Debug)]
pub struct TextOptions {
    pub color: bool,
    /// Rows per table.
    pub top: usize,
}

struct Painter(bool);

impl Painter {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.0 { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() }
    }
    fn head(&self, s: &str) -> String {
        self.paint("1", s)
    }
    fn alert(&self, s: &str) -> String {
        self.paint("1;31", s)
    }
    fn dim(&self, s: &str) -> String {
        self.paint("2", s)
    }
}

/// Writes the summary.
pub fn write_text(out: &mut impl Write, r: &ScanReport, opts: TextOptions) -> io::Result<()> {
    let p = Painter(opts.color);
    write_header(out, r, &p)?;
    write_follow_proposals(out, r, &p)?;
    write_blocks(out, r, &p, opts.top)?;
    write_accounts(out, r, &p, opts.top)?;
    write_spared(out, r, &p, opts.top)?;
    write_already_blocked(out, r, &p, opts.top)?;
    write_watchlist(out, r, &p, opts.top)?;
    write_incident(out, r, &p)?;
    write_unparsed(out, r, &p)
}

fn write_header(out: &mut impl Write, r: &ScanReport, p: &Painter) -> io::Result<()> {
    let s = &r.stats;
    writeln!(
        out,
        "{} {} lines ({} parsed, {} unparsed) from {} source(s), {} bytes; window {}",
        p.head("logwarden scan:"),
        s.lines,
        s.parsed,
        s.unparsed,
        s.sources.len(),
        s.bytes,
        human_window(r.thresholds.window)
    )?;
    for e in &s.read_errors {
        writeln!(
            out,
            "{} {}: {} (lines before the error were scanned)",
            p.alert("read error:"),
            terminal_safe(&e.source),
            terminal_safe(&e.error)
        )?;
    }
    if let Some(m) = &s.memory_summary {
        writeln!(out, "{} {}", p.alert("memory bound:"), m.describe())?;
    }
    for (heading, note) in s.reading_notes() {
        writeln!(out, "{} {note}", p.alert(&format!("{}:", heading.to_lowercase())))?;
    }
    write_loki_coverage(out, r, p)
}

/// One line per Loki query: the window read, or the part that was not.
fn write_loki_coverage(out: &mut impl Write, r: &ScanReport, p: &Painter) -> io::Result<()> {
    for c in &r.loki {
        let query = terminal_safe(&c.query);
        let counts =
            format!("{} entries in {} pages, {} counted before", c.entries, c.pages, c.already_counted);
        match &c.missing {
            None => writeln!(out, "loki {query}: [{}, {}) read completely; {counts}", c.from, c.to)?,
            Some(m) => writeln!(
                out,
                "{} {query}: [{}, {}) NOT READ: {}; {counts}",
                p.alert("loki"),
                m.from,
                m.to,
                terminal_safe(&m.reason)
            )?,
        }
        if let Some(rest) = &c.left_to_next_run {
            writeln!(
                out,
                "loki {query}: [{}, {}) left to the next runs (--state-catch-up)",
                rest.from, rest.to
            )?;
        }
    }
    Ok(())
}

fn write_follow_proposals(out: &mut impl Write, r: &ScanReport, p: &Painter) -> io::Result<()> {
    if r.follow_proposals.is_empty() {
        return Ok(());
    }
    writeln!(out, "\n{}", p.head(&format!("Proposals made while following ({})", r.follow_proposals.len())))?;
    for a in &r.follow_proposals {
        writeln!(out, "  {}", a.line())?;
    }
    Ok(())
}

fn write_blocks(out: &mut impl Write, r: &ScanReport, p: &Painter, top: usize) -> io::Result<()> {
    let blocks: Vec<_> = r.ips.iter().filter(|c| c.block).collect();
    writeln!(out, "\n{}", p.head(&format!("Clients proposed for blocking ({})", blocks.len())))?;
    if blocks.is_empty() {
        return writeln!(out, "  none");
    }
    writeln!(out, "  {:<40} {:>8} {:>6} {:>6} {:>9}  why", "client", "requests", "4xx", "5xx", "auth-fail")?;
    for c in blocks.iter().take(top) {
        writeln!(
            out,
            "  {:<40} {:>8} {:>6} {:>6} {:>9}  {}",
            p.alert(&c.ip.to_string()),
            c.requests,
            c.status_4xx,
            c.status_5xx,
            c.auth_failures,
            terminal_safe(&c.reasons.join("; "))
        )?;
    }
    more(out, blocks.len(), top)
}

fn write_accounts(out: &mut impl Write, r: &ScanReport, p: &Painter, top: usize) -> io::Result<()> {
    let locks: Vec<_> = r.accounts.iter().filter(|a| a.lock).collect();
    writeln!(out, "\n{}", p.head(&format!("Accounts proposed for locking ({})", locks.len())))?;
    for a in locks.iter().take(top) {
        writeln!(out, "  {:<32} {}", p.alert(&terminal_safe(&a.user)), terminal_safe(&a.reasons.join("; ")))?;
        write_spellings(out, a, p)?;
    }
    let basic: Vec<_> = r.accounts.iter().filter(|a| !a.lock && !a.reasons.is_empty()).collect();
    for a in basic.iter().take(top) {
        writeln!(out, "  {:<32} {}", terminal_safe(&a.user), terminal_safe(&a.reasons.join("; ")))?;
    }
    if locks.is_empty() {
        writeln!(out, "  none")?;
    }
    let watched: Vec<_> = r.accounts.iter().filter(|a| a.reasons.is_empty()).collect();
    if !watched.is_empty() {
        writeln!(
            out,
            "  {}",
            p.dim(&format!("{} more account(s) with failed logins below the threshold:", watched.len()))
        )?;
        for a in watched.iter().take(top.min(5)) {
            let user = format!("{} [{}]", terminal_safe(&a.user), a.realm);
            let more = if a.ips_at_least { "+" } else { "" };
            writeln!(out, "    {user:<40} {} failed, {}{more} client(s)", a.auth_failures, a.ips)?;
        }
    }
    more(out, locks.len(), top)
}

/// How the logs spelled an account counted under one name (`--account-case insensitive`).
fn write_spellings(out: &mut impl Write, a: &AccountReport, p: &Painter) -> io::Result<()> {
    if a.spellings.is_empty() {
        return Ok(());
    }
    let spelled: Vec<String> =
        a.spellings.iter().map(|(s, n)| format!("{} x{n}", terminal_safe(s))).collect();
    writeln!(out, "    {}", p.dim(&format!("spelled: {}", spelled.join(", "))))
}

fn write_spared(out: &mut impl Write, r: &ScanReport, p: &Painter, top: usize) -> io::Result<()> {
    if r.spared.is_empty() {
        return Ok(());
    }
    writeln!(out, "\n{}", p.head(&format!("Over a threshold but spared ({})", r.spared.len())))?;
    for s in r.spared.iter().take(top) {
        writeln!(out, "  {:<40} {}", s.ip.to_string(), terminal_safe(&s.reason))?;
    }
    more(out, r.spared.len(), top)
}

fn write_already_blocked(out: &mut impl Write, r: &ScanReport, p: &Painter, top: usize) -> io::Result<()> {
    if r.already_blocked.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "\n{}",
        p.head(&format!("Over a threshold but already blocked ({})", r.already_blocked.len()))
    )?;
    for a in r.already_blocked.iter().take(top) {
        writeln!(out, "  {:<40} by the live entry {}", a.ip.to_string(), terminal_safe(&a.by))?;
    }
    more(out, r.already_blocked.len(), top)
}

fn write_watchlist(out: &mut impl Write, r: &ScanReport, p: &Painter, top: usize) -> io::Result<()> {
    let watch: Vec<_> = r.ips.iter().filter(|c| !c.block && c.spared.is_none() && c.has_evidence()).collect();
    if watch.is_empty() {
        return Ok(());
    }
    writeln!(out, "\n{}", p.head("Other clients with errors or failed logins (below thresholds)"))?;
    for c in watch.iter().take(top.min(10)) {
        writeln!(
            out,
            "  {:<40} {:>6} requests, {:>5} 4xx (busiest {}: {}{}), {} failed logins",
            c.ip.to_string(),
            c.requests,
            c.status_4xx,
            human_window(r.thresholds.window),
            crate::decide::at_least(c.window_at_least),
            c.window_4xx,
            c.auth_failures
        )?;
    }
    more(out, watch.len(), top.min(10))
}

fn write_incident(out: &mut impl Write, r: &ScanReport, p: &Painter) -> io::Result<()> {
    let i = &r.incident;
    if i.requests == 0 && i.failed_logins == 0 {
        return Ok(());
    }
    writeln!(out, "\n{}", p.head("Incident"))?;
    if i.requests > 0 {
        let pct = i.status_5xx as f64 * 100.0 / i.requests as f64;
        writeln!(out, "  {} requests, {} answered 5xx ({pct:.1}%)", i.requests, i.status_5xx)?;
    }
    if let (Some(first), Some(last)) = (i.minutes_over_5pct_5xx.first(), i.minutes_over_5pct_5xx.last()) {
        writeln!(
            out,
            "  {} minute(s) above 5% 5xx, from {} to {}",
            i.minutes_over_5pct_5xx.len(),
            first.minute,
            last.minute
        )?;
    }
    if !i.top_5xx_endpoints.is_empty() {
        writeln!(out, "  top 5xx endpoints: {}", pairs(&i.top_5xx_endpoints, 5))?;
    }
    write_busiest_clients(out, i)?;
    write_failed_logins(out, i)?;
    if i.status_499 > 0 {
        writeln!(
            out,
            "  {} closed by the client before the answer (499), most on: {}",
            i.status_499,
            pairs(&i.top_499_endpoints, 5)
        )?;
    }
    if i.timed_requests > 0 {
        writeln!(
            out,
            "  {} of {} timed requests slower than {}s",
            i.slow_requests, i.timed_requests, i.slow_threshold_seconds
        )?;
        if !i.top_slow_endpoints.is_empty() {
            writeln!(out, "  slowest endpoints: {}", pairs(&i.top_slow_endpoints, 5))?;
        }
    }
    Ok(())
}

/// Who sent the most requests, whatever they were answered: a flood answered 503 counts
/// against no client, and this is where it shows.
fn write_busiest_clients(out: &mut impl Write, i: &crate::decide::IncidentReport) -> io::Result<()> {
    if i.busiest_clients.is_empty() {
        return Ok(());
    }
    let show = |c: &crate::decide::BusyClient| {
        format!("{} ({} requests, {:.1}%, {} 5xx)", c.ip, c.requests, c.share * 100.0, c.status_5xx)
    };
    let top: Vec<String> = i.busiest_clients.iter().take(3).map(show).collect();
    writeln!(out, "  busiest clients: {}", top.join(", "))
}

/// The incident's failed logins, whoever crossed a threshold: a botnet that kept every
/// address and account under them shows only here.
fn write_failed_logins(out: &mut impl Write, i: &crate::decide::IncidentReport) -> io::Result<()> {
    if i.failed_logins == 0 {
        return Ok(());
    }
    let busiest = i.busiest_failed_login_minute.as_ref();
    let peak =
        busiest.map(|b| format!("; busiest minute {} ({})", b.minute, b.failed_logins)).unwrap_or_default();
    writeln!(
        out,
        "  {} failed logins from {} client(s) against {} account(s){peak}",
        i.failed_logins, i.failed_login_clients, i.failed_login_accounts
    )?;
    if i.failed_login_networks.is_empty() {
        return Ok(());
    }
    let nets: Vec<String> = i
        .failed_login_networks
        .iter()
        .map(|n| format!("{} ({} clients, {})", n.network, n.clients, n.failed_logins))
        .collect();
    writeln!(out, "  failed logins most from: {}", nets.join(", "))
}

fn write_unparsed(out: &mut impl Write, r: &ScanReport, p: &Painter) -> io::Result<()> {
    let s = &r.stats;
    if s.unparsed == 0 {
        return Ok(());
    }
    writeln!(
        out,
        "\n{}",
        p.head(&format!("Unparsed lines: {} (first {} shown)", s.unparsed, s.unparsed_samples.len()))
    )?;
    let reasons: Vec<String> = s.unparsed_by_reason.iter().map(|(r, n)| format!("{r}: {n}")).collect();
    writeln!(out, "  by reason: {}", reasons.join(", "))?;
    if s.oversized > 0 {
        writeln!(out, "  {} line(s) longer than the limit were skipped (--max-line-bytes)", s.oversized)?;
    }
    for sample in &s.unparsed_samples {
        writeln!(
            out,
            "  {}:{}: {}",
            terminal_safe(&sample.source),
            sample.line,
            terminal_safe(&sample.text)
        )?;
    }
    writeln!(out, "  {}", p.dim("(use --format or --log-format if these are a format logwarden should read)"))
}

fn pairs(list: &[(String, u64)], n: usize) -> String {
    list.iter().take(n).map(|(k, v)| format!("{} ({v})", terminal_safe(k))).collect::<Vec<_>>().join(", ")
}

fn more(out: &mut impl Write, total: usize, shown: usize) -> io::Result<()> {
    if total > shown {
        writeln!(out, "  … and {} more (--top, or --output json for all)", total - shown)?;
    }
    Ok(())
}
