//! `scan --follow` on a live stream: proposals are announced once, when crossed, while
//! the stream is still open; SIGTERM and end of input both end with the summary.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_logwarden"))
        .args(["scan", "--follow"])
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn failed_login(second: u32, user: &str) -> String {
    format!(
        "{{\"ts\":\"2024-01-15T10:00:{second:02}Z\",\"event\":\"auth.failed\",\"user\":\"{user}\",\"client_ip\":\"198.51.100.23\"}}\n"
    )
}

/// Lines of stdout, delivered as they come.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for(rx: &mpsc::Receiver<String>, needle: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let line =
            rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| panic!("no {needle:?} in {seen:#?}"));
        let found = line.contains(needle);
        seen.push(line);
        if found {
            return seen;
        }
    }
}

#[test]
fn announces_a_block_once_while_the_stream_is_open_and_summarises_on_sigterm() {
    let mut child = spawn(&[]);
    let mut stdin = child.stdin.take().unwrap();
    let rx = lines_of(&mut child);
    for s in 0..3 {
        stdin.write_all(failed_login(s, "a").as_bytes()).unwrap();
    }
    stdin.flush().unwrap();
    // Below the threshold: nothing is announced.
    assert!(rx.recv_timeout(Duration::from_millis(1500)).is_err(), "announced below the threshold");
    for s in 3..6 {
        stdin.write_all(failed_login(s, "b").as_bytes()).unwrap();
    }
    stdin.flush().unwrap();
    let first = wait_for(&rx, "BLOCK 198.51.100.23");
    assert!(first.last().unwrap().starts_with("2024-01-15T10:00:0"), "{first:?}");
    // More evidence does not announce the same client again.
    for s in 6..20 {
        stdin.write_all(failed_login(s, &format!("user{s}")).as_bytes()).unwrap();
    }
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let rest = wait_for(&rx, "Proposals made while following (1)");
    assert!(rest.iter().all(|l| !l.contains("BLOCK 198.51.100.23") || l.starts_with("  ")), "{rest:#?}");
    let tail: Vec<String> = rx.iter().collect();
    assert!(tail.iter().any(|l| l.contains("Clients proposed for blocking (1)")), "{tail:#?}");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    drop(stdin);
}

/// A live announcement is read with the same notes as the scan's proposal: here, that
/// the client's user agent claims to be Googlebot and how to verify it.
#[test]
fn an_announcement_carries_the_notes_of_a_proposal() {
    let mut child = spawn(&["--output", "ndjson"]);
    let mut stdin = child.stdin.take().unwrap();
    let rx = lines_of(&mut child);
    let log = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/hostile/crawler.log"))
        .unwrap();
    stdin.write_all(log.as_bytes()).unwrap();
    drop(stdin);
    let lines: Vec<serde_json::Value> = rx.iter().map(|l| serde_json::from_str(&l).unwrap()).collect();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let google =
        lines.iter().find(|l| l["type"] == "proposal" && l["subject"] == "66.249.66.1").expect("announced");
    let reasons = google["reasons"].to_string();
    assert!(reasons.contains("claims to be Googlebot"), "{reasons}");
}

#[test]
fn end_of_input_ends_with_the_summary() {
    let mut child = spawn(&["--output", "ndjson"]);
    let mut stdin = child.stdin.take().unwrap();
    let rx = lines_of(&mut child);
    for s in 0..6 {
        stdin.write_all(failed_login(s, "x").as_bytes()).unwrap();
    }
    drop(stdin);
    let lines: Vec<serde_json::Value> = rx.iter().map(|l| serde_json::from_str(&l).unwrap()).collect();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let proposals: Vec<_> = lines.iter().filter(|l| l["type"] == "proposal").collect();
    assert_eq!(proposals.len(), 1, "{lines:#?}");
    assert_eq!(proposals[0]["action"], "block");
    assert_eq!(proposals[0]["subject"], "198.51.100.23");
    assert_eq!(lines.last().unwrap()["type"], "stats");
}

/// A flood of plain `200`s is announced by its request rate while the stream is open: its
/// 200 requests in one minute cross 10 a minute (100 in the ten-minute window); a
/// visitor's few requests do not.
#[test]
fn a_flood_is_announced_by_its_request_rate_while_the_stream_is_open() {
    let mut child = spawn(&["--max-request-rate", "10"]);
    let mut stdin = child.stdin.take().unwrap();
    let rx = lines_of(&mut child);
    let line = |ip: &str, s: u32| {
        format!(
            "{ip} - - [15/Jan/2024:10:00:{s:02} +0000] \"GET /search?q={s} HTTP/1.1\" 200 512 \"-\" \"x\"\n"
        )
    };
    for i in 0..200 {
        stdin.write_all(line("203.0.113.200", i % 60).as_bytes()).unwrap();
        if i % 20 == 0 {
            stdin.write_all(line("198.51.100.7", i % 60).as_bytes()).unwrap();
        }
    }
    stdin.flush().unwrap();
    let seen = wait_for(&rx, "BLOCK 203.0.113.200");
    let announced = seen.last().unwrap();
    assert!(announced.contains("200 requests within 10m"), "{announced}");
    assert!(!seen.iter().any(|l| l.contains("198.51.100.7")), "{seen:#?}");
    drop(stdin);
    let rest: Vec<String> = rx.iter().collect();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(!rest.iter().any(|l| l.contains("BLOCK 198.51.100.7")), "{rest:#?}");
}

/// One line dated an hour ahead of the stream (a pod whose clock is wrong, or a time
/// field an application filled from a request) must not evict every other client's
/// evidence: a slow brute force after it, one failed login per check, is still
/// announced, and the line's own client is not.
#[test]
fn a_line_dated_far_ahead_does_not_blind_the_stream() {
    let mut child = spawn(&[]);
    let mut stdin = child.stdin.take().unwrap();
    let rx = lines_of(&mut child);
    let ahead = "{\"ts\":\"2024-01-15T11:00:00Z\",\"event\":\"page.view\",\"client_ip\":\"192.0.2.77\"}\n";
    stdin.write_all(ahead.as_bytes()).unwrap();
    for s in 0..6 {
        stdin.write_all(failed_login(s, "a").as_bytes()).unwrap();
        stdin.flush().unwrap();
        // Longer than a check's interval, so the stream is checked and evicted between
        // any two failed logins.
        std::thread::sleep(Duration::from_millis(700));
    }
    let seen = wait_for(&rx, "BLOCK 198.51.100.23");
    assert!(!seen.iter().any(|l| l.contains("192.0.2.77")), "{seen:#?}");
    drop(stdin);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// Lines that come in already older than what the checks keep (a source two hours
/// behind the others) are counted and said, not silently weighed for half a second.
#[test]
fn lines_older_than_what_is_kept_are_counted_as_late() {
    let mut child = spawn(&["--output", "ndjson"]);
    let mut stdin = child.stdin.take().unwrap();
    let rx = lines_of(&mut child);
    let view = |time: &str, ip: &str| {
        format!("{{\"ts\":\"2024-01-15T{time}Z\",\"event\":\"page.view\",\"client_ip\":\"{ip}\"}}\n")
    };
    for i in 1..=3 {
        stdin.write_all(view(&format!("10:00:0{i}"), &format!("192.0.2.{i}")).as_bytes()).unwrap();
    }
    stdin.flush().unwrap();
    // Time for a few checks (one each half second): they keep from 09:50 on.
    std::thread::sleep(Duration::from_millis(2000));
    for i in 1..=2 {
        stdin.write_all(view(&format!("08:00:0{i}"), &format!("198.51.100.{i}")).as_bytes()).unwrap();
    }
    stdin.write_all(view("09:55:00", "192.0.2.9").as_bytes()).unwrap();
    drop(stdin);
    let lines: Vec<serde_json::Value> = rx.iter().map(|l| serde_json::from_str(&l).unwrap()).collect();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let stats = lines.last().unwrap();
    assert_eq!((&stats["type"], &stats["late_lines"]), (&"stats".into(), &2.into()), "{stats}");
}

/// `scan --follow FILE` reads the file as `tail -F` does: lines appended later are read,
/// and so are those of the new file after logrotate moves the old one away, and those
/// written after a copytruncate. It ended at the file's end before.
#[test]
fn a_followed_file_is_read_as_it_grows_and_through_its_rotations() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let failures = |ip: &str, from: u32| -> String {
        (from..from + 3)
            .map(|s| {
                format!(
                    "{{\"ts\":\"2024-01-15T10:00:{s:02}Z\",\"event\":\"auth.failed\",\"user\":\"u{s}\",\"client_ip\":\"{ip}\"}}\n"
                )
            })
            .collect()
    };
    let append = |text: &str| {
        let mut f = std::fs::OpenOptions::new().append(true).create(true).open(&path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    };
    append(&failures("198.51.100.23", 0));
    let mut child = spawn(&[path.to_str().unwrap()]);
    let rx = lines_of(&mut child);
    // Three failed logins: below the threshold, and the file's end is not the scan's.
    assert!(rx.recv_timeout(Duration::from_millis(1200)).is_err(), "announced below the threshold");
    append(&failures("198.51.100.23", 3));
    wait_for(&rx, "BLOCK 198.51.100.23");
    // logrotate's create: the file moves away, a new one takes its name.
    std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
    append(&failures("203.0.113.9", 10));
    append(&failures("203.0.113.9", 13));
    wait_for(&rx, "BLOCK 203.0.113.9");
    // copytruncate: the same file, emptied, then written again.
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    append(&failures("192.0.2.10", 20));
    append(&failures("192.0.2.10", 23));
    wait_for(&rx, "BLOCK 192.0.2.10");
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let rest = wait_for(&rx, "Proposals made while following (3)");
    assert!(!rest.is_empty());
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
