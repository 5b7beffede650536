//! Emitters: how a scan document reaches its reader. `text` is the on-call summary for a
//! terminal; `json` is the whole document; `ndjson` is one record per line for `jq` and
//! log pipelines. Every string that came from a log is escaped before it reaches a
//! terminal, so a log line cannot drive the reader's terminal.

pub mod terminal;

use std::io::Write;

use serde::Serialize;

use crate::decide::ScanReport;

/// Writes the whole document as one JSON object.
pub fn write_json(out: &mut impl Write, report: &ScanReport) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, report)?;
    writeln!(out)
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum NdjsonRecord<'a> {
    Ip(&'a crate::decide::ClientReport),
    Account(&'a crate::decide::AccountReport),
    Spared(&'a crate::decide::Spared),
    Incident(&'a crate::decide::IncidentReport),
    Stats(&'a crate::aggregate::Stats),
}

/// Writes one JSON object per line: clients, accounts, spared addresses, the incident
/// summary and, last, the stats (so a reader that stops early still saw the findings).
pub fn write_ndjson(out: &mut impl Write, report: &ScanReport) -> std::io::Result<()> {
    let records = report
        .ips
        .iter()
        .map(NdjsonRecord::Ip)
        .chain(report.accounts.iter().map(NdjsonRecord::Account))
        .chain(report.spared.iter().map(NdjsonRecord::Spared))
        .chain([NdjsonRecord::Incident(&report.incident), NdjsonRecord::Stats(&report.stats)]);
    for record in records {
        serde_json::to_writer(&mut *out, &record)?;
        writeln!(out)?;
    }
    Ok(())
}

/// Escapes control characters (C0, DEL, C1, and so every ANSI escape sequence) as
/// `\xHH` / `\u{HHHH}`, and backslashes as `\\`, so the escaping cannot be forged.
pub fn terminal_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (0x80..0xa0).contains(&(c as u32)) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            // Bidirectional overrides can reorder what the reader sees.
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_inert() {
        assert_eq!(terminal_safe("a\x1b[31mred\x07"), "a\\x1b[31mred\\x07");
        assert_eq!(terminal_safe("tab\there\r\n"), "tab\\x09here\\x0d\\x0a");
        assert_eq!(terminal_safe("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(terminal_safe("x\\x1b"), "x\\\\x1b");
        assert_eq!(terminal_safe("ünïcödé ok"), "ünïcödé ok");
    }
}
