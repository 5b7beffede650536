//! Reading Grafana Loki, against an in-process server that follows Loki's documented query
//! API (tests/support/fake_loki.rs): exact paging line by line, faults and retries, tenant,
//! gzip, both value shapes, scheduled runs with a state file, and the same proposals as
//! from stdin.

mod support;

use std::collections::BTreeMap;
use std::process::Output;
use std::time::{Duration, Instant};

use logwarden::framing::Frame;
use logwarden::loki::api::{Auth, ClientConfig, RetryPolicy};
use logwarden::loki::paging::Direction;
use logwarden::loki::{LokiOutcome, LokiScan, QueryWindow};
use support::fake_loki::{FakeLoki, FakeStream, Fault};
use support::{INCIDENT, logwarden};

const BASE: i64 = 1_700_000_000_000_000_000;
const SEC: i64 = 1_000_000_000;

/// 20,000 lines in three streams, about 60 per second, so that many entries share one
/// timestamp at every page boundary; some lines repeat within a stream and nanosecond.
fn crowded_streams() -> Vec<FakeStream> {
    let mut streams = vec![
        FakeStream::new(&[("app", "web"), ("pod", "nginx-a")]),
        FakeStream::new(&[("app", "web"), ("pod", "nginx-b")]),
        FakeStream::new(&[("app", "web"), ("pod", "api-0")]),
    ];
    for i in 0..20_000i64 {
        let ts = BASE + (i / 60) * SEC;
        let s = (i % 3) as usize;
        // Every 97th line repeats an earlier line of its stream at the same timestamp.
        let n = if i % 97 == 0 && i % 60 > 5 { i - 3 } else { i };
        streams[s].push(ts, &format!("203.0.113.{} - - line {n}", n % 250));
    }
    streams
}

fn expected(streams: &[FakeStream]) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = streams
        .iter()
        .flat_map(|s| {
            let key = support::fake_loki::label_string(&s.labels);
            s.entries.iter().map(move |(_, line, _)| (key.clone(), line.clone()))
        })
        .collect();
    all.sort();
    all
}

fn client(url: &str) -> ClientConfig {
    ClientConfig {
        url: url.to_string(),
        tenant: None,
        auth: Auth::None,
        ca: None,
        client_cert: None,
        retry: RetryPolicy {
            attempts: 4,
            backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
            deadline: Instant::now() + Duration::from_secs(120),
        },
        request_timeout: Duration::from_secs(10),
    }
}

fn window_scan(url: &str, page_size: usize, direction: Direction) -> LokiScan {
    LokiScan {
        client: client(url),
        windows: vec![QueryWindow { query: "{app=\"web\"}".into(), start: BASE, end: BASE + 400 * SEC }],
        page_size,
        max_entries: 5000,
        max_query_length: 721 * 3600 * SEC,
        direction,
        state: None,
        overlap_ns: 0,
        catch_up_ns: None,
        pushdown: Vec::new(),
    }
}

/// Every line the scan would parse, with its source, sorted.
fn read_lines(scan: LokiScan) -> (Vec<(String, String)>, LokiOutcome) {
    let (rx, handle) = scan.spawn(4).unwrap();
    let mut lines = Vec::new();
    for frame in rx {
        if let Frame::Lines(chunk) = frame {
            let text = String::from_utf8(chunk.data).unwrap();
            lines.extend(text.lines().map(|l| (chunk.source.to_string(), l.to_string())));
        }
    }
    lines.sort();
    (lines, handle.join().unwrap())
}

#[test]
fn every_line_exactly_once_for_any_page_size_and_direction() {
    let streams = crowded_streams();
    let want = expected(&streams);
    let loki = FakeLoki::start(streams);
    for (page, direction) in [
        (1, Direction::Forward),
        (7, Direction::Backward),
        (7, Direction::Forward),
        (5000, Direction::Backward),
    ] {
        loki.with(|s| s.log.clear());
        let (got, outcome) = read_lines(window_scan(&loki.url, page, direction));
        assert!(outcome.complete(), "page {page}: {:?}", outcome.coverage);
        assert_eq!(got.len(), want.len(), "page size {page} {direction:?}");
        assert!(got == want, "page size {page} {direction:?}: lines differ");
        let requests = loki.range_requests();
        let limits: Vec<&str> = requests.iter().map(|r| r.params["limit"].as_str()).collect();
        assert!(limits.iter().all(|l| *l == page.to_string() || *l == "5000"), "{limits:?}");
        assert!(requests.iter().all(|r| r.params["direction"] == direction.as_str()));
        // Integer nanoseconds, never seconds or floats.
        assert!(requests.iter().all(|r| r.params["start"].len() == 19 && r.params["end"].len() == 19));
    }
}

#[test]
fn a_nanosecond_fuller_than_the_largest_page_is_reported_not_skipped() {
    let mut s = FakeStream::new(&[("app", "web")]);
    for i in 0..30 {
        s.push(BASE + 5 * SEC, &format!("same second {i}"));
    }
    let loki = FakeLoki::start(vec![s]);
    loki.with(|s| s.max_entries = 20);
    let mut scan = window_scan(&loki.url, 10, Direction::Forward);
    scan.max_entries = 20;
    let (_, outcome) = read_lines(scan);
    assert!(!outcome.complete());
    let missing = outcome.coverage[0].missing.clone().unwrap();
    assert_eq!((missing.from_ns, missing.to_ns), (BASE, BASE + 400 * SEC));
    assert!(missing.reason.contains("more than 20 entries share the timestamp"), "{}", missing.reason);
}

#[test]
fn transient_failures_are_retried_and_retry_after_is_honoured() {
    let loki = FakeLoki::start(crowded_streams());
    loki.with(|s| {
        s.faults.extend([
            Fault::Status(500, "rpc error: code = Unavailable\n"),
            Fault::Status(503, "upstream connect error\n"),
            Fault::Status(504, "Gateway Timeout\n"),
            Fault::Drop,
            Fault::RetryAfter(1),
        ])
    });
    let started = Instant::now();
    let mut scan = window_scan(&loki.url, 5000, Direction::Forward);
    scan.client.retry.attempts = 6;
    let (got, outcome) = read_lines(scan);
    assert!(outcome.complete(), "{:?}", outcome.coverage);
    assert_eq!(got.len(), 20_000);
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After: 1 was not waited for");
}

#[test]
fn a_slow_answer_times_out_and_is_retried() {
    let loki = FakeLoki::start(crowded_streams());
    // Generous against an ordinary page (a debug build on a busy machine takes a few
    // hundred milliseconds for one), far below the slow answer.
    loki.with(|s| s.faults.push_back(Fault::Slow(Duration::from_secs(6))));
    let mut scan = window_scan(&loki.url, 5000, Direction::Forward);
    scan.client.request_timeout = Duration::from_secs(2);
    let (got, outcome) = read_lines(scan);
    assert!(outcome.complete());
    assert_eq!(got.len(), 20_000);
    assert!(loki.range_requests().len() >= 2);
}

fn streams_of_incident() -> Vec<FakeStream> {
    // Shippers stamp at ingestion; a few lines share each nanosecond.
    support::incident_streams(&[], |i| BASE + (i as i64 / 4) * 1_000)
}

fn scan_loki(loki: &FakeLoki, extra: &[&str]) -> Output {
    let page = if extra.contains(&"--loki-page-size") { &[][..] } else { &["--loki-page-size", "97"][..] };
    logwarden()
        .args(["scan", "--output", "json", "--loki", &loki.url])
        .args(["--query", "{container=\"nginx\"}", "--query", "{container=\"backend\"}"])
        .args(["--from", &BASE.to_string(), "--to", &(BASE + 3600 * SEC).to_string()])
        .args(["--loki-backoff", "5ms"])
        .args(page)
        .args(extra)
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn proposals(doc: &serde_json::Value) -> (serde_json::Value, serde_json::Value) {
    (doc["blocklist"].clone(), doc["lock_accounts"].clone())
}

#[test]
fn loki_and_stdin_give_the_same_proposals() {
    let loki = FakeLoki::start(streams_of_incident());
    let from_loki = json(&scan_loki(&loki, &[]));
    let mut stdin = Vec::new();
    for path in INCIDENT {
        stdin.extend(std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap());
    }
    let mut child = logwarden()
        .args(["scan", "--output", "json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &stdin).unwrap();
    let from_stdin = json(&child.wait_with_output().unwrap());
    assert!(!from_loki["blocklist"].as_array().unwrap().is_empty());
    assert_eq!(proposals(&from_loki), proposals(&from_stdin));
    assert_eq!(from_loki["stats"]["lines"], from_stdin["stats"]["lines"]);
    let coverage = from_loki["loki"].as_array().unwrap();
    assert_eq!(coverage.len(), 2);
    assert!(coverage.iter().all(|c| c["complete"] == true));
    // Streams are the sources: the report names where each sample came from.
    let text = from_loki.to_string();
    assert!(
        text.contains(r#"{container=\"nginx\", stream=\"stdout\"}"#),
        "sources are not the stream labels"
    );
}

#[test]
fn gzip_is_asked_for_and_read() {
    let loki = FakeLoki::start(streams_of_incident());
    json(&scan_loki(&loki, &[]));
    let requests = loki.range_requests();
    assert!(requests.iter().all(|r| r.headers.get("accept-encoding").is_some_and(|v| v.contains("gzip"))));
}

#[test]
fn two_element_values_of_an_older_loki_read_the_same() {
    let new = FakeLoki::start(streams_of_incident());
    let old = FakeLoki::start(streams_of_incident());
    old.with(|s| {
        s.legacy = true;
        // Structured metadata merged into labels splits nothing when it is constant.
        for st in &mut s.streams {
            for e in &mut st.entries {
                e.2.insert("detected_level".into(), "info".into());
            }
        }
    });
    assert_eq!(proposals(&json(&scan_loki(&new, &[]))), proposals(&json(&scan_loki(&old, &[]))));
    assert!(
        new.range_requests()
            .iter()
            .all(|r| r.headers["x-loki-response-encoding-flags"] == "categorize-labels")
    );
}

#[test]
fn a_multi_tenant_loki_needs_the_tenant() {
    let loki = FakeLoki::start(streams_of_incident());
    loki.with(|s| s.tenant = Some("team-web".into()));
    let out = scan_loki(&loki, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no org id") && err.contains("--loki-tenant"), "{err}");
    json(&scan_loki(&loki, &["--loki-tenant", "team-web"]));
}

#[test]
fn a_refused_limit_shows_lokis_own_message_and_exits_2() {
    let loki = FakeLoki::start(streams_of_incident());
    let out = scan_loki(&loki, &["--loki-page-size", "6000", "--loki-max-entries", "6000"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max entries limit per query exceeded"), "{err}");
    // Refused at once: a 400 is never retried.
    assert_eq!(loki.range_requests().len(), 1);
}

/// Loki refuses a range longer than its `max_query_length` (400, "the query time range
/// exceeds the limit"; 721h by default). Told the server's limit, a scan reads a longer
/// window in spans of at most that, every line once, and proposes what the same lines
/// packed into a few milliseconds give: a scheduled scan resumed after its CronJob was
/// suspended for weeks reads the gap instead of failing on it at every run.
#[test]
fn a_window_longer_than_lokis_max_query_length_is_read_in_spans() {
    let day = 86_400 * SEC;
    // One line a minute: the access log's lines cover nearly three days.
    let loki = FakeLoki::start(support::incident_streams(&[], |i| BASE + i as i64 * 60 * SEC));
    loki.with(|s| s.max_query_length = Some(day));
    let scan = |extra: &[&str]| {
        logwarden()
            .args(["scan", "--output", "json", "--loki", &loki.url, "--loki-page-size", "500"])
            .args(["--query", "{container=\"nginx\"}", "--query", "{container=\"backend\"}"])
            .args(["--from", &BASE.to_string(), "--to", &(BASE + 3 * day).to_string()])
            .args(["--loki-backoff", "5ms"])
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = scan(&[]);
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("the query time range exceeds the limit"), "{err}");
    assert!(err.contains("--loki-max-query-length"), "{err}");

    loki.with(|s| s.log.clear());
    let doc = json(&scan(&["--loki-max-query-length", "24h"]));
    for q in doc["loki"].as_array().unwrap() {
        assert_eq!(q["complete"], true, "{q}");
    }
    let read: u64 = doc["loki"].as_array().unwrap().iter().map(|q| q["entries"].as_u64().unwrap()).sum();
    assert_eq!(read, 3986 + 51 + 321);
    let spans: Vec<i64> = loki
        .range_requests()
        .iter()
        .map(|r| r.params["end"].parse::<i64>().unwrap() - r.params["start"].parse::<i64>().unwrap())
        .collect();
    assert!(spans.len() >= 6 && spans.iter().all(|&s| s <= day), "{spans:?}");
    let packed = json(&scan_loki(&FakeLoki::start(streams_of_incident()), &[]));
    assert_eq!(proposals(&doc), proposals(&packed));
}

#[test]
fn a_query_loki_cannot_parse_is_refused_with_its_message() {
    let loki = FakeLoki::start(streams_of_incident());
    let out = logwarden()
        .args(["scan", "--loki", &loki.url, "--query", "container=nginx", "--since", "1h"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("parse error"), "{err}");
}

#[test]
fn bearer_token_and_basic_auth_are_sent() {
    let loki = FakeLoki::start(streams_of_incident());
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    json(&scan_loki(&loki, &["--loki-token-file", token.to_str().unwrap()]));
    assert!(loki.range_requests().iter().all(|r| r.headers["authorization"] == "Bearer s3cret"));
    loki.with(|s| s.log.clear());
    json(&scan_loki(&loki, &["--loki-user", "ops", "--loki-password-file", token.to_str().unwrap()]));
    // base64("ops:s3cret")
    assert!(loki.range_requests().iter().all(|r| r.headers["authorization"] == "Basic b3BzOnMzY3JldA=="));
}

#[test]
fn a_failed_window_exits_2_names_the_gap_and_writes_no_bundle() {
    let loki = FakeLoki::start(streams_of_incident());
    let cut = BASE + 200 * 1_000;
    loki.with(|s| s.fail_from = Some((cut, Fault::Status(503, "too many outstanding requests\n"))));
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("bundle");
    let out = scan_loki(&loki, &["--loki-attempts", "3", "--out", out_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("{container=\\\"nginx\\\"}") && err.contains("was not read"), "{err}");
    assert!(err.contains("gave up after 3 attempt(s)"), "{err}");
    assert!(!out_dir.exists(), "a bundle was written for an incomplete window");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["loki"][0]["complete"], false);
}

/// Two streams of a CronJob's view: lines every second from `from` to `to` (seconds).
fn add_lines(loki: &FakeLoki, from: i64, to: i64, tag: &str) {
    loki.with(|s| {
        for t in from..to {
            for (i, st) in s.streams.iter_mut().enumerate() {
                st.push(
                    BASE + t * SEC,
                    &format!("198.51.100.{i} - - [{tag}] \"GET /x HTTP/1.1\" 404 0 \"-\" \"c\" {t}"),
                );
            }
        }
    });
}

fn scheduled(loki: &FakeLoki, state: &std::path::Path, to: i64) -> Output {
    scheduled_command(loki, state, to).output().unwrap()
}

/// The scheduled scan of the window up to `to` (seconds), not yet run.
fn scheduled_command(loki: &FakeLoki, state: &std::path::Path, to: i64) -> std::process::Command {
    let mut cmd = logwarden();
    cmd.args(["scan", "--output", "json", "--loki", &loki.url, "--query", "{app=\"web\"}"])
        .args(["--from", &BASE.to_string(), "--to", &(BASE + to * SEC).to_string()])
        .args(["--state", state.to_str().unwrap(), "--state-overlap", "30s"])
        .args(["--loki-backoff", "5ms", "--loki-attempts", "2", "--loki-page-size", "13"]);
    cmd
}

/// A first scheduled run over 100 s, then 100 s more of lines whose requests hang (from
/// 150 s on) far longer than any test waits; the state the first run saved.
fn first_run_then_a_hanging_loki(loki: &FakeLoki, state: &std::path::Path) -> Vec<u8> {
    add_lines(loki, 0, 100, "first");
    assert_eq!(lines_of(&scheduled(loki, state, 100)), 100);
    add_lines(loki, 100, 200, "second");
    loki.with(|s| s.fail_from = Some((BASE + 150 * SEC, Fault::Slow(Duration::from_secs(30)))));
    std::fs::read(state).unwrap()
}

fn lines_of(out: &Output) -> u64 {
    json(out)["stats"]["lines"].as_u64().unwrap()
}

/// A Loki with two pods' streams, after a first scheduled run over their first 100 s of
/// lines (the state file is `state.json` in the directory returned).
fn two_pods_after_a_first_run() -> (FakeLoki, tempfile::TempDir) {
    let loki = FakeLoki::start(vec![
        FakeStream::new(&[("app", "web"), ("pod", "a")]),
        FakeStream::new(&[("app", "web"), ("pod", "b")]),
    ]);
    let dir = tempfile::tempdir().unwrap();
    add_lines(&loki, 0, 100, "first");
    assert_eq!(lines_of(&scheduled(&loki, &dir.path().join("state.json"), 100)), 200);
    (loki, dir)
}

/// After a pause, `--state-catch-up` reads at most that far past the last run's end: each
/// run completes its part, saves the state and says what it left; the runs together read
/// every line once.
#[test]
fn scheduled_runs_catch_up_in_steps_and_read_every_line_once() {
    let (loki, dir) = two_pods_after_a_first_run();
    let state = dir.path().join("state.json");
    add_lines(&loki, 100, 400, "after a pause");
    let step = |to: i64| {
        let out = scheduled_command(&loki, &state, to).args(["--state-catch-up", "2m"]).output().unwrap();
        let doc = json(&out);
        let left = doc["loki"][0]["left_to_next_run"]["from_ns"].as_i64().map(|ns| (ns - BASE) / SEC);
        (doc["stats"]["lines"].as_u64().unwrap(), left)
    };
    assert_eq!(step(400), (240, Some(220)));
    // In the terminal, too: the rest of the window is named, not claimed.
    let text = logwarden()
        .args(["scan", "--loki", &loki.url, "--query", "{app=\"web\"}", "--state-catch-up", "2m"])
        .args(["--from", &BASE.to_string(), "--to", &(BASE + 400 * SEC).to_string()])
        .args(["--state", state.to_str().unwrap(), "--state-overlap", "30s", "--loki-page-size", "13"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&text.stdout);
    assert!(shown.contains("left to the next runs (--state-catch-up)"), "{shown}");
    assert!(shown.contains("240 lines"), "{shown}");
    assert_eq!(step(400), (120, None));
    assert_eq!(step(400), (0, None));
}

#[test]
fn scheduled_runs_neither_skip_nor_double_count_even_after_a_failed_run() {
    let (loki, dir) = two_pods_after_a_first_run();
    let state = dir.path().join("state.json");
    let after_first = std::fs::read(&state).unwrap();

    // Late lines for the end of the first window arrive, then new ones.
    add_lines(&loki, 90, 100, "late");
    add_lines(&loki, 100, 200, "second");
    loki.with(|s| s.fail_from = Some((BASE + 150 * SEC, Fault::Status(500, "internal error\n"))));
    let failed = scheduled(&loki, &state, 200);
    assert_eq!(failed.status.code(), Some(2));
    assert_eq!(std::fs::read(&state).unwrap(), after_first, "a failed run advanced the state");

    loki.with(|s| s.fail_from = None);
    // The late lines (20) and the second window (200), nothing counted twice.
    assert_eq!(lines_of(&scheduled(&loki, &state, 200)), 220);
    assert_eq!(lines_of(&scheduled(&loki, &state, 200)), 0);
    add_lines(&loki, 200, 210, "third");
    assert_eq!(lines_of(&scheduled(&loki, &state, 210)), 20);
    let saved: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(saved["queries"]["{app=\"web\"}"]["end_ns"], BASE + 210 * SEC);
}

/// `--loki-timeout` bounds the whole scan, a request in flight included: a Loki that
/// stops answering (every request of the window hangs far longer than the overall
/// timeout, well within the per-request one) ends the run soon after the deadline, as a
/// failed window that leaves the state where it was.
#[test]
fn the_overall_timeout_cuts_a_hanging_request_and_keeps_the_state() {
    let loki = FakeLoki::start(vec![FakeStream::new(&[("app", "web"), ("pod", "a")])]);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let after_first = first_run_then_a_hanging_loki(&loki, &state);
    let started = Instant::now();
    let out = scheduled_command(&loki, &state, 200)
        .args(["--loki-timeout", "2s", "--loki-request-timeout", "60s"])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--loki-timeout") && err.contains("was not read"), "{err}");
    // Far below the 30 s a hanging answer takes, with room for a slow machine.
    assert!(took < Duration::from_secs(20), "the run took {took:?}");
    assert_eq!(std::fs::read(&state).unwrap(), after_first, "a cut run advanced the state");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["loki"][0]["complete"], false);
}

/// A run killed in the middle (SIGKILL while a page is in flight, as when a CronJob's pod
/// is evicted), beside the leftover of a save that was cut short, changes nothing: the
/// state is the last complete run's, and the next run reads the whole window since.
#[test]
fn a_killed_run_leaves_the_state_of_the_last_complete_one() {
    let loki = FakeLoki::start(vec![FakeStream::new(&[("app", "web"), ("pod", "a")])]);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let after_first = first_run_then_a_hanging_loki(&loki, &state);
    // Counted before the run starts: its first request hangs, and no second one follows.
    let asked = loki.range_requests().len();
    let mut run = scheduled_command(&loki, &state, 200)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while loki.range_requests().len() == asked {
        assert!(started.elapsed() < Duration::from_secs(20), "the run never asked Loki");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    run.kill().unwrap();
    run.wait().unwrap();
    assert_eq!(std::fs::read(&state).unwrap(), after_first, "a killed run changed the state");
    // What a save cut short leaves: a temporary file beside the state, never renamed.
    std::fs::write(dir.path().join(".tmpCRASH1"), &after_first[..after_first.len() / 2]).unwrap();

    loki.with(|s| s.fail_from = None);
    assert_eq!(lines_of(&scheduled(&loki, &state, 200)), 100);
    assert_eq!(lines_of(&scheduled(&loki, &state, 200)), 0);
}

/// A scan of `loki.invalid` (a name that never resolves, RFC 6761) with the fake
/// server as the proxy: it can only succeed through the proxy.
fn scan_through_proxy(loki: &FakeLoki, no_proxy: Option<&str>) -> Output {
    let mut cmd = logwarden();
    for var in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HTTP_PROXY", &loki.url);
    if let Some(hosts) = no_proxy {
        cmd.env("NO_PROXY", hosts);
    }
    cmd.args(["scan", "--output", "json", "--loki", "http://loki.invalid:3100", "--query", "{app=\"web\"}"])
        .args(["--from", &BASE.to_string(), "--to", &(BASE + 10 * SEC).to_string()])
        .args(["--loki-attempts", "1", "--loki-timeout", "20s"])
        .output()
        .unwrap()
}

#[test]
fn the_proxy_comes_from_the_environment_and_no_proxy_is_honoured() {
    let loki = FakeLoki::start(vec![FakeStream::new(&[("app", "web")])]);
    add_lines(&loki, 0, 10, "proxied");
    let out = scan_through_proxy(&loki, None);
    assert_eq!(lines_of(&out), 10);
    let asked = loki.range_requests();
    assert!(!asked.is_empty());
    assert!(asked.iter().all(|r| r.headers.get("host").map(String::as_str) == Some("loki.invalid:3100")));

    let before = asked.len();
    let direct = scan_through_proxy(&loki, Some("loki.invalid"));
    assert_eq!(direct.status.code(), Some(2), "{}", String::from_utf8_lossy(&direct.stderr));
    assert_eq!(loki.range_requests().len(), before, "NO_PROXY did not keep the request from the proxy");
}

#[test]
fn a_damaged_state_file_stops_the_run() {
    let loki = FakeLoki::start(vec![FakeStream::new(&[("app", "web")])]);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    std::fs::write(&state, "{\"version\": 1, \"key\"").unwrap();
    let out = scheduled(&loki, &state, 10);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("state.json"));
    assert!(loki.range_requests().is_empty());
}

/// nginx's `$time_local` for Unix seconds, in UTC.
fn time_local(secs: i64) -> String {
    let iso = logwarden::time::format_rfc3339(secs); // 2023-11-14T22:13:20Z
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = months[iso[5..7].parse::<usize>().unwrap() - 1];
    format!("{}/{month}/{}:{} +0000", &iso[8..10], &iso[0..4], &iso[11..19])
}

/// An hour of access log: 250 quiet clients, and 4xx bursts from four more: 100 in five
/// minutes, 60 on one path spread over almost the whole window, 59 on distinct paths (short
/// of the 4xx threshold, over the probing rule's 10), and 12 on distinct paths.
fn access_hour() -> FakeStream {
    let mut s = FakeStream::new(&[("app", "nginx")]);
    let start = BASE / SEC;
    let mut push = |secs: i64, ip: &str, status: u16, n: i64, path: i64| {
        let line = format!(
            "{ip} - - [{}] \"GET /item/{path}?q=a%20b HTTP/1.1\" {status} 153 \"-\" \"Mozilla/5.0 (\\x22x\\x22)\"",
            time_local(secs)
        );
        // Loki's timestamp trails the line's own by up to 20 seconds (the shipper's delay).
        s.push(secs * SEC + (n % 20) * SEC + n % 1000, &line);
    };
    for n in 0..6000 {
        let ip = format!("198.51.100.{}", n % 250);
        push(start + n * 3600 / 6000, &ip, if n % 97 == 0 { 404 } else { 200 }, n, n);
    }
    for n in 0..100 {
        push(start + 600 + n * 3, "203.0.113.10", 404, n, n);
    }
    // Exactly the threshold on one path, spread over 590 s of a 600 s window: Loki's
    // timestamps (up to 19 s late) spread it wider than the window itself.
    for n in 0..60 {
        push(start + 1190 + n * 10, "203.0.113.20", 403, n, 0);
    }
    for n in 0..59 {
        push(start + 2400 + n * 5, "203.0.113.30", 404, n, n);
    }
    for n in 0..12 {
        push(start + 3000 + n * 20, "203.0.113.40", 404, n, n);
    }
    s
}

fn hour_scan(loki: &FakeLoki, mode: &str, extra: &[&str]) -> Output {
    logwarden()
        .args(["scan", "--output", "json", "--loki", &loki.url, mode, "{app=\"nginx\"}"])
        .args(["--from", &BASE.to_string(), "--to", &(BASE + 3700 * SEC).to_string()])
        .args(["--loki-backoff", "5ms", "--loki-attempts", "2"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn pushdown_proposes_what_the_full_read_proposes_from_a_fraction_of_the_lines() {
    let loki = FakeLoki::start(vec![access_hour()]);
    let full = json(&hour_scan(&loki, "--query", &[]));
    loki.with(|s| s.log.clear());
    let pushed = json(&hour_scan(&loki, "--pushdown-query", &[]));
    let mut blocked: Vec<String> = serde_json::from_value(full["blocklist"].clone()).unwrap();
    blocked.sort();
    assert_eq!(blocked, ["203.0.113.10", "203.0.113.20", "203.0.113.30", "203.0.113.40"]);
    assert_eq!(pushed["blocklist"], full["blocklist"]);
    let read = pushed["stats"]["lines"].as_u64().unwrap();
    assert!((231..300).contains(&read), "push-down read {read} lines of 6231");
    let metric = &loki.range_requests()[0].params["query"];
    assert!(
        metric.starts_with("sum by (remote_addr) (count_over_time({app=\"nginx\"} | pattern"),
        "{metric}"
    );
    // The probing rule's 10 distinct 4xx paths is the lowest 4xx-based threshold.
    assert!(metric.contains("status=~\"4([0-8][0-9]|9[0-8])\"") && metric.ends_with(">= 10"), "{metric}");
    // Evidence for each proposal is the client's own lines.
    let ips = pushed["ips"].as_array().unwrap();
    let first = ips.iter().find(|c| c["ip"] == "203.0.113.10").unwrap();
    assert_eq!(first["window_4xx"], 100);
}

#[test]
fn pushdown_too_many_series_is_an_error_not_an_empty_answer() {
    let mut s = FakeStream::new(&[("app", "nginx")]);
    for c in 0..501 {
        for n in 0..3 {
            let line = format!(
                "203.0.{}.{} - - [{}] \"GET /x HTTP/1.1\" 404 1 \"-\" \"-\"",
                c / 250,
                c % 250,
                time_local(BASE / SEC + n)
            );
            s.push(BASE + n * SEC, &line);
        }
    }
    let loki = FakeLoki::start(vec![s]);
    let out = hour_scan(&loki, "--pushdown-query", &["--max-4xx", "3"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("maximum number of series (500)"));
}

#[test]
fn pushdown_refuses_what_it_cannot_express() {
    let loki = FakeLoki::start(vec![access_hour()]);
    let out = hour_scan(&loki, "--pushdown-query", &["--trusted-proxy", "10.0.0.0/8"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("X-Forwarded-For"));
    assert!(loki.range_requests().is_empty());
}

/// A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, as PEM
/// files in `dir`; the server's rustls configuration, asking for a client certificate
/// signed by the CA when `mutual`.
fn pki(dir: &std::path::Path, mutual: bool) -> std::sync::Arc<rustls::ServerConfig> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names).unwrap().signed_by(&key, &issuer).unwrap();
        (cert, key)
    };
    let (server, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
    let (client, client_key) = leaf(vec!["logwarden".into()]);
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("client.pem"), client.pem()).unwrap();
    std::fs::write(dir.join("client.key"), client_key.serialize_pem()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if mutual {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    let chain: Vec<CertificateDer<'static>> = vec![server.der().clone()];
    std::sync::Arc::new(builder.with_single_cert(chain, key).unwrap())
}

#[test]
fn tls_with_a_custom_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let path = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    let loki = FakeLoki::start_tls(streams_of_incident(), pki(dir.path(), true));
    // The server's CA is not in the system's trust store: refused.
    let untrusted = scan_loki(&loki, &["--loki-attempts", "1"]);
    assert_eq!(untrusted.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&untrusted.stderr).contains("certificate"),
        "{}",
        String::from_utf8_lossy(&untrusted.stderr)
    );
    // Trusted, but the server asks for a client certificate.
    let anonymous = scan_loki(&loki, &["--loki-attempts", "1", "--loki-ca", &path("ca.pem")]);
    assert_eq!(anonymous.status.code(), Some(2));
    let mutual = scan_loki(
        &loki,
        &[
            "--loki-ca",
            &path("ca.pem"),
            "--loki-cert",
            &path("client.pem"),
            "--loki-key",
            &path("client.key"),
        ],
    );
    let doc = json(&mutual);
    assert!(!doc["blocklist"].as_array().unwrap().is_empty());
    assert!(loki.range_requests().len() >= 2);
}
