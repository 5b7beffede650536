//! The JSON Loki answers `query_range` with, read into entries (log queries) and series
//! (metric queries).
//!
//! Log queries answer `{"status":"success","data":{"resultType":"streams","result":[{"stream":
//! {labels},"values":[["<ns>","<line>"], ...]}]}}`. Timestamps are strings of integer
//! nanoseconds. With the `X-Loki-Response-Encoding-Flags: categorize-labels` request header,
//! Loki 3 adds a third element per value (`{"structuredMetadata":{...},"parsed":{...}}`) and
//! keeps structured metadata out of the stream labels; older servers ignore the header and
//! send two elements. Both shapes are read; the third element is not needed for detection.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, SeqAccess, Visitor};

use super::paging::Entry;

#[derive(Deserialize)]
struct Envelope {
    status: String,
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct Stream {
    stream: BTreeMap<String, String>,
    values: Vec<Value>,
}

/// One `[ts, line, metadata?]` value.
struct Value {
    ts: i64,
    line: String,
}

/// One series of a metric (`vector`) answer: its labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Deserialize)]
struct MatrixItem {
    metric: BTreeMap<String, String>,
    values: Vec<(f64, String)>,
}

/// The answer could not be read as Loki's documented shape.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

/// Reads a log query's answer into entries, interning each stream's label string.
pub fn decode_streams(body: &[u8]) -> Result<Vec<Entry>, DecodeError> {
    let result = result_of(body, "streams")?;
    let streams: Vec<Stream> =
        serde_json::from_value(result).map_err(|e| DecodeError(format!("streams: {e}")))?;
    let mut entries = Vec::with_capacity(streams.iter().map(|s| s.values.len()).sum());
    for s in streams {
        let labels: Arc<str> = label_string(&s.stream).into();
        entries.extend(s.values.into_iter().map(|v| Entry {
            stream: labels.clone(),
            ts: v.ts,
            line: v.line,
        }));
    }
    Ok(entries)
}

/// Reads a metric range query's answer (`resultType: matrix`): each series with the
/// largest of its values.
pub fn decode_matrix(body: &[u8]) -> Result<Vec<Sample>, DecodeError> {
    let result = result_of(body, "matrix")?;
    let items: Vec<MatrixItem> =
        serde_json::from_value(result).map_err(|e| DecodeError(format!("matrix: {e}")))?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let mut max = f64::NEG_INFINITY;
        for (_, v) in &item.values {
            max = max.max(v.parse().map_err(|_| DecodeError(format!("sample value {v:?}")))?);
        }
        out.push(Sample { labels: item.metric, value: max });
    }
    Ok(out)
}

fn result_of(body: &[u8], want: &str) -> Result<serde_json::Value, DecodeError> {
    let env: Envelope =
        serde_json::from_slice(body).map_err(|e| DecodeError(format!("not a Loki answer: {e}")))?;
    if env.status != "success" {
        return Err(DecodeError(format!("status {:?}: {}", env.status, env.error.unwrap_or_default())));
    }
    let data = env.data.ok_or_else(|| DecodeError("no data".into()))?;
    if data.result_type != want {
        return Err(DecodeError(format!(
            "the query returns {} where {want} were expected (a log query such as {{app=\"nginx\"}} |= \"x\" \
             returns streams; a metric query such as count_over_time(...) returns a vector)",
            data.result_type
        )));
    }
    Ok(data.result)
}

/// The canonical label string, as LogQL writes a selector: `{app="nginx", pod="x"}`.
pub fn label_string(labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("[\"<nanoseconds>\", \"<line>\"] with an optional metadata object")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let ts: String = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let ts = ts
            .parse()
            .map_err(|_| de::Error::custom(format!("timestamp {ts:?} is not integer nanoseconds")))?;
        let line: String = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(1, &self))?;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value { ts, line })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_two_and_three_element_values() {
        let body = br#"{"status":"success","data":{"resultType":"streams","result":[
            {"stream":{"pod":"a","app":"nginx"},"values":[["1700000000000000001","x"],
             ["1700000000000000002","y",{"structuredMetadata":{"detected_level":"info"}}]]}],
            "stats":{}}}"#;
        let entries = decode_streams(body).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(&*entries[0].stream, r#"{app="nginx", pod="a"}"#);
        assert_eq!((entries[1].ts, entries[1].line.as_str()), (1_700_000_000_000_000_002, "y"));
    }

    #[test]
    fn a_metric_answer_to_a_log_query_is_named() {
        let body = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        let err = decode_streams(body).unwrap_err().to_string();
        assert!(err.contains("returns matrix"), "{err}");
    }

    #[test]
    fn float_timestamps_are_refused() {
        let body = br#"{"status":"success","data":{"resultType":"streams","result":[
            {"stream":{},"values":[["1700000000.5","x"]]}]}}"#;
        assert!(decode_streams(body).is_err());
    }

    #[test]
    fn reads_a_matrix_as_each_series_maximum() {
        let body = br#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"remote_addr":"203.0.113.9"},"values":[[1700000000,"42"],[1700000060,"61"]]}]}}"#;
        let got = decode_matrix(body).unwrap();
        assert_eq!(got[0].value, 61.0);
        assert_eq!(got[0].labels["remote_addr"], "203.0.113.9");
    }
}
