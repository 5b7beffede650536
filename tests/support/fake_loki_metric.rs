//! The fake Loki's metric queries: exactly the shape `--pushdown-query` sends,
//! `sum by (L) (count_over_time(SEL | pattern `P` | F=~"RE" [Ns])) >= T`, evaluated as Loki
//! documents it: at `start`, `start + step`, ... up to `end` inclusive, each point counting
//! the entries in `(t - N s, t]`; a `pattern` stage extracts labels (a capture runs to the
//! next literal; a line that does not fit gets none); a label matcher `=~` is a fully
//! anchored RE2 match; the comparison drops points below the threshold; an answer with more
//! than `max_query_series` (500) series is refused with 400.

use std::collections::BTreeMap;

use super::fake_loki::{Answer, Shared, json, parse_loki_time, parse_selector, text};

const MAX_SERIES: usize = 500;

struct MetricQuery {
    by: String,
    selector: String,
    pattern: Vec<Piece>,
    label: String,
    label_re: regex::Regex,
    range_ns: i64,
    threshold: f64,
}

enum Piece {
    Literal(String),
    Capture(String),
}

fn parse(q: &str) -> Result<MetricQuery, String> {
    let shape = regex::Regex::new(
        r#"^sum by \((\w+)\) \(count_over_time\((\{[^}]*\}) \| pattern `([^`]*)` \| (\w+)=~"([^"]*)" \[(\d+)s\]\)\) >= (\d+)$"#,
    )
    .unwrap();
    let c = shape.captures(q).ok_or_else(|| format!("parse error : this fake Loki does not know {q:?}"))?;
    Ok(MetricQuery {
        by: c[1].to_string(),
        selector: c[2].to_string(),
        pattern: pattern(&c[3]),
        label: c[4].to_string(),
        label_re: regex::Regex::new(&format!("^(?:{})$", &c[5])).map_err(|e| e.to_string())?,
        range_ns: c[6].parse::<i64>().unwrap() * 1_000_000_000,
        threshold: c[7].parse().unwrap(),
    })
}

fn pattern(p: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut rest = p;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('<')
            && let Some(end) = after.find('>')
        {
            pieces.push(Piece::Capture(after[..end].to_string()));
            rest = &after[end + 1..];
        } else {
            let end = rest[1..].find('<').map_or(rest.len(), |i| i + 1);
            pieces.push(Piece::Literal(rest[..end].to_string()));
            rest = &rest[end..];
        }
    }
    pieces
}

/// Loki's pattern parser: literals must follow in order; a capture takes what lies before
/// the next literal (or the rest of the line when it is last).
fn extract(pieces: &[Piece], line: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut at = 0;
    for (i, piece) in pieces.iter().enumerate() {
        match piece {
            Piece::Literal(l) => {
                if !line[at..].starts_with(l.as_str()) {
                    return None;
                }
                at += l.len();
            }
            Piece::Capture(name) => {
                let end = match pieces.get(i + 1) {
                    Some(Piece::Literal(next)) => at + line[at..].find(next.as_str())?,
                    _ => line.len(),
                };
                if name != "_" {
                    labels.insert(name.clone(), line[at..end].to_string());
                }
                at = end;
            }
        }
    }
    Some(labels)
}

pub fn query_range(step: Option<&String>, q: &str, start: i64, end: i64, s: &Shared) -> Answer {
    let query = match parse(q) {
        Ok(query) => query,
        Err(e) => return text(400, &format!("{e}\n")),
    };
    // `step` is a duration or a float number of seconds.
    let Some(step) = step.and_then(|v| parse_loki_time(v.trim_end_matches('s'))).filter(|s| *s > 0) else {
        return text(400, "invalid step\n");
    };
    let selector = parse_selector(&query.selector).unwrap();
    // Every entry that survives the stages, with its grouping label.
    let mut kept: Vec<(i64, String)> = Vec::new();
    for st in s.streams.iter().filter(|st| selector.selects(&st.labels)) {
        for (ts, line, _) in &st.entries {
            let Some(labels) = extract(&query.pattern, line) else { continue };
            let value = labels.get(&query.label).map_or("", |v| v.as_str());
            if query.label_re.is_match(value) {
                kept.push((*ts, labels.get(&query.by).cloned().unwrap_or_default()));
            }
        }
    }
    let mut series: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    let mut t = start;
    while t <= end {
        let mut counts: BTreeMap<&str, f64> = BTreeMap::new();
        for (ts, by) in &kept {
            if *ts > t - query.range_ns && *ts <= t {
                *counts.entry(by.as_str()).or_insert(0.0) += 1.0;
            }
        }
        for (by, n) in counts.into_iter().filter(|(_, n)| *n >= query.threshold) {
            let point = serde_json::json!([t as f64 / 1e9, n.to_string()]);
            series.entry(by.to_string()).or_default().push(point);
        }
        t += step;
    }
    if series.len() > MAX_SERIES {
        return text(400, &format!("maximum number of series ({MAX_SERIES}) reached for a single query\n"));
    }
    let result: Vec<serde_json::Value> = series
        .into_iter()
        .map(|(by, values)| serde_json::json!({ "metric": { query.by.clone(): by }, "values": values }))
        .collect();
    json(&serde_json::json!({ "status": "success", "data": { "resultType": "matrix", "result": result } }))
}
