//! `scan --follow`: a live stream (`kubectl logs -f ... | logwarden scan --follow`) never
//! ends, so proposals are announced as they happen: each block or lock is printed once,
//! when its threshold is first crossed, with its time, reasons and evidence count. Counts
//! older than the window are evicted, so memory stays flat over days. Files named on the
//! command line are followed as `tail -F` follows them ([`crate::source::Input::followed`]),
//! each on a reader thread of its own. A stop request (Ctrl-C, SIGTERM) or the end of
//! every input that can end ends the loop; the caller prints the summary.

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::aggregate::Aggregator;
use crate::client::{ClientKey, SparePolicy};
use crate::decide::{ScanReport, Thresholds, account_verdict, client_verdict, decide, rate_verdict};
use crate::detect::{APP_REALM, RuleSet};
use crate::framing::BufferPool;
use crate::pipeline::{ScanConfig, Worker, spawn_followers};
use crate::report::terminal_safe;
use crate::source::Input;
use crate::time::format_rfc3339;

/// How often thresholds are checked and old counts evicted.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// A proposal made while following.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Announcement {
    /// `block` or `lock`.
    pub action: String,
    /// The client or account.
    pub subject: String,
    /// Event time of the latest evidence when the threshold was found crossed.
    pub time: Option<String>,
    /// The count behind the crossed threshold.
    pub evidence: u64,
    pub reasons: Vec<String>,
}

impl Announcement {
    /// One line for a terminal or a log.
    pub fn line(&self) -> String {
        format!(
            "{} {} {} (evidence {}): {}",
            self.time.as_deref().unwrap_or("-"),
            self.action.to_uppercase(),
            terminal_safe(&self.subject),
            self.evidence,
            terminal_safe(&self.reasons.join("; "))
        )
    }
}

/// Redraws the summary from the current document and the proposals made so far.
pub type Redraw = Box<dyn FnMut(&ScanReport, &[Announcement]) -> std::io::Result<()>>;

/// What `--follow` needs besides the scan configuration.
pub struct FollowOptions {
    pub thresholds: Thresholds,
    pub spare: SparePolicy,
    /// Redraw the summary this often (only when `redraw` is given).
    pub interval: Duration,
    /// Called every `interval` with the current document (a terminal redraw).
    pub redraw: Option<Redraw>,
    /// Print announcements as NDJSON instead of text lines.
    pub ndjson: bool,
}

/// Follows `inputs` until they end or `stop` is set; returns what was learned and every
/// proposal made on the way.
pub fn follow(
    inputs: Vec<Input>,
    config: &ScanConfig,
    mut opts: FollowOptions,
    stop: Arc<AtomicBool>,
    out: &mut dyn Write,
) -> crate::Result<(Aggregator, Vec<Announcement>)> {
    let pool = BufferPool::new();
    let mut framing = config.framing;
    framing.eager = true;
    let rx = spawn_followers(inputs, config, framing, pool.clone(), 8);
    let mut worker = Worker::new(config);
    let mut state = Announcer::default();
    let (mut last_check, mut last_redraw) = (Instant::now(), Instant::now());
    loop {
        let ended = match rx.recv_timeout(CHECK_EVERY / 2) {
            Ok(frame) => {
                worker.process(frame, &pool);
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        let stopping = ended || stop.load(Ordering::Relaxed);
        if stopping || last_check.elapsed() >= CHECK_EVERY {
            state.check(&mut worker.agg, &opts, &config.rules, out)?;
            last_check = Instant::now();
        }
        if let Some(redraw) = opts.redraw.as_mut().filter(|_| last_redraw.elapsed() >= opts.interval) {
            let report = decide(worker.agg.clone(), &opts.thresholds, &opts.spare, &config.rules);
            redraw(&report, &state.made).map_err(crate::Error::Output)?;
            last_redraw = Instant::now();
        }
        if stopping {
            return Ok((worker.agg, state.made));
        }
    }
}

#[derive(Default)]
struct Announcer {
    clients: HashSet<ClientKey>,
    accounts: HashSet<String>,
    made: Vec<Announcement>,
}

impl Announcer {
    /// Announces every newly crossed threshold, then evicts what no window can reach.
    fn check(
        &mut self,
        agg: &mut Aggregator,
        opts: &FollowOptions,
        rules: &RuleSet,
        out: &mut dyn Write,
    ) -> crate::Result<()> {
        let t = &opts.thresholds;
        let mut new = Vec::new();
        for (key, c) in agg.clients.iter_mut() {
            if self.clients.contains(key) {
                continue;
            }
            let mut v = client_verdict(c, t, rules);
            if v.reasons.is_empty() || opts.spare.spare_reason(key).is_some() {
                continue;
            }
            v.reasons.extend(crate::decide::proposal_notes(c));
            self.clients.insert(*key);
            new.push(announcement("block", key.to_string(), c.last_seen, v));
        }
        // Request times are kept apart from the records (a flood may have none), so the
        // records' verdicts above hold no rate.
        for (key, times) in agg.request_times.iter_mut().flat_map(|t| t.iter_mut()) {
            if self.clients.contains(key) || opts.spare.spare_reason(key).is_some() {
                continue;
            }
            let v = rate_verdict(times, t);
            if !v.reasons.is_empty() {
                self.clients.insert(*key);
                new.push(announcement("block", key.to_string(), times.latest(), v));
            }
        }
        for (user, a) in agg.accounts.get_mut(APP_REALM).into_iter().flat_map(|users| users.iter_mut()) {
            if self.accounts.contains(user.as_str()) {
                continue;
            }
            let v = account_verdict(a, t, rules);
            if !v.reasons.is_empty() {
                self.accounts.insert(user.to_string());
                new.push(announcement("lock", user.to_string(), a.last_seen, v));
            }
        }
        for a in &new {
            write_announcement(out, a, opts.ndjson).map_err(crate::Error::Output)?;
        }
        self.made.extend(new);
        if let Some(cutoff) = agg.eviction_reference().map(|reference| reference - t.window) {
            agg.evict_before(cutoff);
            agg.late_before = Some(cutoff);
        }
        Ok(())
    }
}

fn announcement(
    action: &'static str,
    subject: String,
    time: Option<i64>,
    v: crate::decide::Verdict,
) -> Announcement {
    Announcement {
        action: action.to_string(),
        subject,
        time: time.map(format_rfc3339),
        evidence: v.evidence,
        reasons: v.reasons,
    }
}

fn write_announcement(out: &mut dyn Write, a: &Announcement, ndjson: bool) -> std::io::Result<()> {
    if ndjson {
        #[derive(Serialize)]
        struct Tagged<'a> {
            r#type: &'static str,
            #[serde(flatten)]
            a: &'a Announcement,
        }
        serde_json::to_writer(&mut *out, &Tagged { r#type: "proposal", a })?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", a.line())?;
    }
    out.flush()
}
