//! An in-process HTTP server that answers like Grafana Loki's query API, for tests: Loki
//! itself cannot be installed here. Each behaviour follows Loki's HTTP API documentation
//! (`GET /loki/api/v1/query_range`, `GET /loki/api/v1/query`) or its code, as noted where
//! it is implemented. Faults (429/5xx, slow answers, dropped connections) are scripted per
//! test; every request is logged for the test to inspect.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One stream: its labels and entries `(ns, line, structured metadata)`.
#[derive(Clone, Debug, Default)]
pub struct FakeStream {
    pub labels: BTreeMap<String, String>,
    pub entries: Vec<(i64, String, BTreeMap<String, String>)>,
}

impl FakeStream {
    pub fn new(labels: &[(&str, &str)]) -> FakeStream {
        FakeStream {
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            entries: Vec::new(),
        }
    }

    pub fn push(&mut self, ts: i64, line: &str) {
        self.entries.push((ts, line.to_string(), BTreeMap::new()));
    }
}

/// A scripted failure for one request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and text/plain body (Loki's error answers are text/plain).
    Status(u16, &'static str),
    /// 429 with `Retry-After: secs`.
    RetryAfter(u64),
    /// Close the connection without answering.
    Drop,
    /// Answer only after this long (longer than the client's timeout: a timeout).
    Slow(Duration),
}

/// What the server holds and how it behaves; tests change it between runs.
pub struct Shared {
    pub streams: Vec<FakeStream>,
    /// `max_entries_limit_per_query` (Loki's default: 5000).
    pub max_entries: usize,
    /// `max_query_length`, nanoseconds (Loki's default: 721h; `None`: no limit, as `0`).
    pub max_query_length: Option<i64>,
    /// Multi-tenant: requests without this `X-Scope-OrgID` get 401 `no org id`.
    pub tenant: Option<String>,
    /// Faults for the next query requests, in order.
    pub faults: VecDeque<Fault>,
    /// A fault for every query_range request whose window reaches at or past this ns.
    pub fail_from: Option<(i64, Fault)>,
    /// Behave like Loki 2: ignore `categorize-labels`, merge metadata into labels.
    pub legacy: bool,
    /// Orders entries that share a timestamp; Loki does not promise an order.
    pub tie_salt: u64,
    /// Every request: path, decoded query parameters and lower-cased headers.
    pub log: Vec<Logged>,
}

#[derive(Clone, Debug)]
pub struct Logged {
    pub path: String,
    pub params: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
}

pub struct FakeLoki {
    pub url: String,
    pub shared: Arc<Mutex<Shared>>,
}

impl FakeLoki {
    pub fn start(streams: Vec<FakeStream>) -> FakeLoki {
        FakeLoki::start_with(streams, None)
    }

    /// The same server behind TLS (rustls) with `config`.
    pub fn start_tls(streams: Vec<FakeStream>, config: Arc<rustls::ServerConfig>) -> FakeLoki {
        FakeLoki::start_with(streams, Some(config))
    }

    fn start_with(streams: Vec<FakeStream>, tls: Option<Arc<rustls::ServerConfig>>) -> FakeLoki {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Mutex::new(Shared {
            streams,
            max_entries: 5000,
            max_query_length: Some(721 * 3_600_000_000_000),
            tenant: None,
            faults: VecDeque::new(),
            fail_from: None,
            legacy: false,
            tie_salt: 0x5eed,
            log: Vec::new(),
        }));
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                let _ = conn.set_nodelay(true);
                match &tls {
                    None => std::thread::spawn(move || serve(conn, &s)),
                    Some(config) => {
                        let tls = rustls::ServerConnection::new(config.clone()).unwrap();
                        std::thread::spawn(move || serve(rustls::StreamOwned::new(tls, conn), &s))
                    }
                };
            }
        });
        FakeLoki { url, shared }
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut Shared) -> T) -> T {
        f(&mut self.shared.lock().unwrap())
    }

    /// The logged query_range requests.
    pub fn range_requests(&self) -> Vec<Logged> {
        self.with(|s| s.log.iter().filter(|l| l.path == "/loki/api/v1/query_range").cloned().collect())
    }
}

struct Request {
    path: String,
    params: BTreeMap<String, String>,
    headers: BTreeMap<String, String>,
}

/// HTTP/1.1 with keep-alive: one request after another on the connection.
fn serve(conn: impl Read + Write, shared: &Mutex<Shared>) {
    let mut reader = BufReader::new(conn);
    while let Some(req) = read_request(&mut reader) {
        let Some(resp) = answer(&req, shared) else { return };
        let gzip = req.headers.get("accept-encoding").is_some_and(|v| v.contains("gzip"));
        if write_response(reader.get_mut(), resp, gzip).is_err() {
            return;
        }
    }
}

/// The path and query of a request target. A client sends a request for a forward proxy
/// in absolute form (`GET http://host:port/path?query`, RFC 9112 section 3.2.2), so the
/// server can stand in for a proxy in front of Loki as well as for Loki.
fn origin_form(target: &str) -> &str {
    match target.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("/", |p| &rest[p..]),
        None => target,
    }
}

fn read_request(reader: &mut BufReader<impl Read>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let target = origin_form(line.split_whitespace().nth(1)?).to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let params = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect();
    Some(Request { path: path.to_string(), params, headers })
}

/// `application/x-www-form-urlencoded`: `+` is a space, then percent-decoding.
fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
}

/// One HTTP answer.
pub struct Resp {
    status: u16,
    ctype: &'static str,
    headers: Vec<String>,
    body: Vec<u8>,
}

fn write_response(w: &mut impl Write, resp: Resp, gzip: bool) -> std::io::Result<()> {
    let Resp { status, ctype, mut headers, body } = resp;
    // Loki compresses only when the client asks (Accept-Encoding: gzip).
    let body = if gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&body)?;
        headers.push("Content-Encoding: gzip".into());
        enc.finish()?
    } else {
        body
    };
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    for h in headers {
        head.push_str(&h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    // One write: a head and a body in two small writes would wait on Nagle and delayed ACK.
    let mut all = head.into_bytes();
    all.extend_from_slice(&body);
    w.write_all(&all)?;
    w.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

pub type Answer = Option<Resp>;

pub fn text(status: u16, body: &str) -> Answer {
    Some(Resp {
        status,
        ctype: "text/plain; charset=utf-8",
        headers: Vec::new(),
        body: body.as_bytes().to_vec(),
    })
}

pub fn json(body: &serde_json::Value) -> Answer {
    Some(Resp {
        status: 200,
        ctype: "application/json; charset=UTF-8",
        headers: Vec::new(),
        body: serde_json::to_vec(body).unwrap(),
    })
}

fn answer(req: &Request, shared: &Mutex<Shared>) -> Answer {
    let fault = {
        let mut s = shared.lock().unwrap();
        s.log.push(Logged {
            path: req.path.clone(),
            params: req.params.clone(),
            headers: req.headers.clone(),
        });
        // Multi-tenant Loki answers 401 "no org id" to a request without X-Scope-OrgID.
        if let Some(t) = &s.tenant
            && req.headers.get("x-scope-orgid") != Some(t)
        {
            return text(401, "no org id\n");
        }
        let reaches = |from: i64| param_time(req, "end").is_some_and(|end| end > from);
        match &s.fail_from {
            Some((from, f)) if req.path.ends_with("query_range") && reaches(*from) => Some(f.clone()),
            _ => s.faults.pop_front(),
        }
    };
    match fault {
        Some(Fault::Status(code, body)) => return text(code, body),
        Some(Fault::RetryAfter(secs)) => {
            let mut a = text(429, "too many outstanding requests\n");
            a.as_mut().unwrap().headers.push(format!("Retry-After: {secs}"));
            return a;
        }
        Some(Fault::Drop) => return None,
        Some(Fault::Slow(d)) => std::thread::sleep(d),
        None => {}
    }
    match req.path.as_str() {
        "/loki/api/v1/query_range" => query_range(req, &shared.lock().unwrap()),
        _ => text(404, "404 page not found\n"),
    }
}

/// Loki's time parameters: RFC 3339, or a number. A number with a fraction is seconds
/// (kept to the millisecond); an integer of up to 10 digits is seconds, longer is ns.
pub fn parse_loki_time(v: &str) -> Option<i64> {
    if v.contains('.') {
        let secs: f64 = v.parse().ok()?;
        return Some((secs * 1000.0).round() as i64 * 1_000_000);
    }
    let n: i64 = v.parse().ok()?;
    Some(if v.trim_start_matches('-').len() <= 10 { n * 1_000_000_000 } else { n })
}

fn param_time(req: &Request, name: &str) -> Option<i64> {
    req.params.get(name).and_then(|v| parse_loki_time(v))
}

/// A selector of exact matchers, `{k="v", ...}`, optionally followed by `|= "text"`.
pub struct Selector {
    pub matchers: Vec<(String, String)>,
    pub contains: Vec<String>,
    /// `|~` filters (RE2; unanchored, as Loki applies them).
    pub matches: Vec<regex::Regex>,
}

pub fn parse_selector(q: &str) -> Result<Selector, String> {
    let q = q.trim();
    let close = q.find('}').ok_or("parse error : syntax error: unexpected end of input")?;
    let inner =
        q.strip_prefix('{').ok_or("parse error : queries require at least one regexp or equality matcher")?;
    let mut matchers = Vec::new();
    for m in inner[..close - 1].split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let (k, v) = m.split_once('=').ok_or(format!("parse error : unexpected {m:?}"))?;
        let v =
            v.trim().strip_prefix('"').and_then(|v| v.strip_suffix('"')).ok_or("parse error : bad value")?;
        matchers.push((k.trim().to_string(), v.to_string()));
    }
    if matchers.is_empty() {
        return Err("parse error : queries require at least one regexp or equality matcher".into());
    }
    let mut contains = Vec::new();
    let mut matches = Vec::new();
    let mut rest = q[close + 1..].trim();
    while let Some((op, r)) =
        rest.strip_prefix("|=").map(|r| ("=", r)).or(rest.strip_prefix("|~").map(|r| ("~", r)))
    {
        let r = r.trim();
        // A backquoted string is raw; this fake takes double-quoted ones without escapes.
        let quote = r
            .chars()
            .next()
            .filter(|c| *c == '"' || *c == '`')
            .ok_or("parse error : line filter needs a string")?;
        let end = r[1..].find(quote).ok_or("parse error : unterminated string")? + 1;
        let text = &r[1..end];
        if op == "=" {
            contains.push(text.to_string());
        } else {
            matches.push(regex::Regex::new(text).map_err(|e| format!("parse error : invalid regex: {e}"))?);
        }
        rest = r[end + 1..].trim();
    }
    if !rest.is_empty() {
        return Err(format!(
            "parse error : unexpected {rest:?} (this fake Loki knows selectors, |= and |~ only)"
        ));
    }
    Ok(Selector { matchers, contains, matches })
}

impl Selector {
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matchers.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    pub fn keeps(&self, line: &str) -> bool {
        self.contains.iter().all(|c| line.contains(c.as_str()))
            && self.matches.iter().all(|r| r.is_match(line))
    }
}

/// One selected entry: label string, labels, timestamp, line, metadata, tie order.
type Hit = (String, BTreeMap<String, String>, i64, String, BTreeMap<String, String>, u64);

fn query_range(req: &Request, s: &Shared) -> Answer {
    // Documented defaults: limit 100, direction backward, end now, start one hour before end.
    let limit: i64 = match req.params.get("limit").map(|l| l.parse()) {
        None => 100,
        Some(Ok(l)) => l,
        Some(Err(_)) => return text(400, "invalid limit\n"),
    };
    if limit <= 0 {
        return text(400, "limit must be a positive value\n");
    }
    // Never clamped: a limit above max_entries_limit_per_query is refused.
    if limit as usize > s.max_entries {
        return text(
            400,
            &format!(
                "max entries limit per query exceeded, limit > max_entries_limit_per_query ({limit} > {})\n",
                s.max_entries
            ),
        );
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    let end = param_time(req, "end").unwrap_or(now);
    let start = param_time(req, "start").unwrap_or(end - 3_600_000_000_000);
    if end <= start {
        return text(400, "end timestamp must not be before or equal to start time\n");
    }
    // Loki's query validation: a range longer than max_query_length is refused whole,
    // log and metric queries alike ("Query time range exceeds limit" in its errors guide).
    if let Some(max) = s.max_query_length.filter(|&max| end - start > max) {
        let hours = |ns: i64| format!("{}h0m0s", ns / 3_600_000_000_000);
        return text(
            400,
            &format!(
                "the query time range exceeds the limit (query length: {}, limit: {})\n",
                hours(end - start),
                hours(max)
            ),
        );
    }
    let backward = match req.params.get("direction").map(|d| d.to_ascii_lowercase()) {
        None => true,
        Some(d) if d == "backward" => true,
        Some(d) if d == "forward" => false,
        Some(d) => return text(400, &format!("invalid direction {d:?}\n")),
    };
    let query = req.params.get("query").map_or("", |q| q.as_str());
    if query.starts_with("sum ") {
        return crate::support::fake_loki_metric::query_range(req.params.get("step"), query, start, end, s);
    }
    let selector = match parse_selector(query) {
        Ok(sel) => sel,
        Err(e) => return text(400, &format!("{e}\n")),
    };
    let categorize = !s.legacy
        && req.headers.get("x-loki-response-encoding-flags").is_some_and(|v| v.contains("categorize-labels"));
    // Every selected entry in [start, end): start inclusive, end exclusive.
    let mut hits: Vec<Hit> = Vec::new();
    for st in s.streams.iter().filter(|st| selector.selects(&st.labels)) {
        let plain_key = label_string(&st.labels);
        for (ts, line, meta) in candidates(st, &selector, start, end, limit as usize, backward) {
            // Without categorize-labels, structured metadata is merged into the labels.
            let mut labels = st.labels.clone();
            let key = if categorize || meta.is_empty() {
                plain_key.clone()
            } else {
                labels.extend(meta.clone());
                label_string(&labels)
            };
            let tie = tie_order(s.tie_salt, &key, line);
            hits.push((key, labels, *ts, line.clone(), meta.clone(), tie));
        }
    }
    // The limit applies to the merge of all streams in direction order.
    hits.sort_by_key(|h| (h.2, h.5));
    if backward {
        hits.reverse();
    }
    hits.truncate(limit as usize);
    // The answer lists streams sorted by label string, each in direction order.
    let mut by_stream: BTreeMap<String, (BTreeMap<String, String>, Vec<serde_json::Value>)> = BTreeMap::new();
    for (key, labels, ts, line, meta, _) in hits {
        let slot = by_stream.entry(key).or_insert_with(|| (labels, Vec::new()));
        let mut value = vec![serde_json::json!(ts.to_string()), serde_json::json!(line)];
        if categorize {
            value.push(serde_json::json!({ "structuredMetadata": meta }));
        }
        slot.1.push(serde_json::Value::Array(value));
    }
    let result: Vec<serde_json::Value> = by_stream
        .into_values()
        .map(|(labels, values)| serde_json::json!({ "stream": labels, "values": values }))
        .collect();
    let mut data = serde_json::json!({ "resultType": "streams", "result": result, "stats": {} });
    if categorize {
        data["encodingFlags"] = serde_json::json!(["categorize-labels"]);
    }
    json(&serde_json::json!({ "status": "success", "data": data }))
}

/// The entries of `st` in `[start, end)` that can be among the first `limit` in direction
/// order: the first `limit`, and every further one sharing the last one's timestamp (the
/// tie order among streams decides which of those make the page).
fn candidates<'a>(
    st: &'a FakeStream,
    selector: &Selector,
    start: i64,
    end: i64,
    limit: usize,
    backward: bool,
) -> Vec<&'a (i64, String, BTreeMap<String, String>)> {
    let mut sorted: Vec<&(i64, String, BTreeMap<String, String>)> = st.entries.iter().collect();
    if !st.entries.is_sorted_by_key(|e| e.0) {
        sorted.sort_by_key(|e| e.0);
    }
    let lo = sorted.partition_point(|e| e.0 < start);
    let hi = sorted.partition_point(|e| e.0 < end);
    let range = &sorted[lo..hi];
    let ordered: Box<dyn Iterator<Item = &&(i64, String, BTreeMap<String, String>)>> =
        if backward { Box::new(range.iter().rev()) } else { Box::new(range.iter()) };
    let mut out = Vec::new();
    for e in ordered.filter(|e| selector.keeps(&e.1)) {
        if out.len() >= limit && out.last().is_some_and(|l: &&(i64, String, _)| l.0 != e.0) {
            break;
        }
        out.push(*e);
    }
    out
}

pub fn label_string(labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

fn tie_order(salt: u64, key: &str, line: &str) -> u64 {
    // FNV-1a over salt, labels and line: a fixed but arbitrary order for equal timestamps.
    let mut h = 0xcbf29ce484222325u64 ^ salt;
    for b in key.bytes().chain([0]).chain(line.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    h
}
