//! The command line's Loki options (`scan --loki`), checked once and turned into a
//! [`LokiScan`]. Part of the binary, not the library.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use logwarden::decide::Thresholds;
use logwarden::detect::{AggregateKind, RuleSet};
use logwarden::loki::api::{Auth, ClientConfig, RetryPolicy};
use logwarden::loki::paging::Direction;
use logwarden::loki::state::ScanState;
use logwarden::loki::{LokiScan, PushdownSpec, QueryWindow, parse_time_ns};

/// What push-down must not miss of the local decision: the 4xx threshold, and the rules
/// whose evidence is 4xx answers (a client on N distinct 4xx paths drew at least N 4xx).
pub struct LocalRules {
    /// The longest of their windows, seconds.
    pub window_s: i64,
    /// The lowest of their thresholds.
    pub client_4xx: u64,
    /// `--trusted-proxy` was given: clients come from X-Forwarded-For.
    pub trusted_proxies: bool,
}

impl LocalRules {
    pub fn new(t: &Thresholds, rules: &RuleSet, trusted_proxies: bool) -> LocalRules {
        let four_xx =
            rules.rules().iter().filter(|r| r.aggregate == Some(AggregateKind::ClientDistinct4xxPaths));
        let (mut window_s, mut client_4xx) = (t.window, t.client_4xx);
        for rule in four_xx {
            if let Some(n) = rule.threshold {
                client_4xx = client_4xx.min(u64::from(n));
                window_s = window_s.max(rule.window.unwrap_or(t.window));
            }
        }
        LocalRules { window_s, client_4xx, trusted_proxies }
    }
}
use logwarden::time::{TimeRange, parse_duration};

#[derive(Args)]
pub struct LokiArgs {
    /// Read from Grafana Loki at this base URL instead of files or stdin.
    #[arg(long, value_name = "URL", env = "LOGWARDEN_LOKI_URL", help_heading = "Loki")]
    pub loki: Option<String>,
    /// LogQL log query, e.g. '{namespace="web", container="nginx"}' (repeatable).
    #[arg(long = "query", value_name = "LOGQL", requires = "loki", help_heading = "Loki")]
    queries: Vec<String>,
    /// Count 4xx per client inside Loki for this nginx access-log selector (combined/main
    /// shape) and read only the lines of clients that may cross --max-4xx (repeatable).
    #[arg(long = "pushdown-query", value_name = "LOGQL", requires = "loki", help_heading = "Loki")]
    pushdown_queries: Vec<String>,
    /// With --pushdown-query: the largest gap between Loki's timestamp of a line and the
    /// time written in it; the count's range is widened by it so no client is missed.
    #[arg(long, requires = "pushdown_queries", default_value = "1m", help_heading = "Loki")]
    pushdown_slack: String,
    /// Only the last DURATION (e.g. 15m, 1h): by each line's own time in files and stdin
    /// (default: all), by Loki's time with --loki (default 1h, as Loki's own).
    #[arg(long, value_name = "DURATION", conflicts_with = "from", help_heading = "Time range")]
    since: Option<String>,
    /// Only from this time: RFC 3339, Unix seconds or Unix nanoseconds.
    #[arg(long, value_name = "TIME", help_heading = "Time range")]
    from: Option<String>,
    /// Only before this time (exclusive; default: now with --loki, else no end).
    #[arg(long, value_name = "TIME", help_heading = "Time range")]
    to: Option<String>,
    /// Tenant (X-Scope-OrgID) of a multi-tenant Loki.
    #[arg(long, value_name = "ID", env = "LOGWARDEN_LOKI_TENANT", help_heading = "Loki")]
    loki_tenant: Option<String>,
    /// `--loki-tenant` was on the command line, not only in the environment.
    #[arg(skip)]
    pub tenant_typed: bool,
    /// Send the token in this file as `Authorization: Bearer`.
    #[arg(long, requires = "loki", value_name = "FILE", conflicts_with = "loki_user", help_heading = "Loki")]
    loki_token_file: Option<PathBuf>,
    /// Basic-auth user (password from --loki-password-file).
    #[arg(
        long,
        requires = "loki",
        value_name = "USER",
        requires = "loki_password_file",
        help_heading = "Loki"
    )]
    loki_user: Option<String>,
    /// The basic-auth password, read from this file (one line; a password is never an
    /// argument, which `ps` would show).
    #[arg(long, value_name = "FILE", requires = "loki_user", help_heading = "Loki")]
    loki_password_file: Option<PathBuf>,
    /// Also trust the CA certificates in this PEM file.
    #[arg(long, requires = "loki", value_name = "FILE", help_heading = "Loki")]
    loki_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, requires = "loki", value_name = "FILE", requires = "loki_key", help_heading = "Loki")]
    loki_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long, value_name = "FILE", requires = "loki_cert", help_heading = "Loki")]
    loki_key: Option<PathBuf>,
    /// Entries per request.
    #[arg(long, requires = "loki", default_value_t = 1000, help_heading = "Loki")]
    loki_page_size: usize,
    /// The server's max_entries_limit_per_query (Loki's default 5000): the largest page
    /// it answers, used to read a nanosecond shared by many entries.
    #[arg(long, requires = "loki", default_value_t = 5000, help_heading = "Loki")]
    loki_max_entries: usize,
    /// The server's max_query_length (Loki's default 721h): a longer window, such as a
    /// scheduled scan's after its CronJob was suspended for weeks, is read in spans of
    /// at most this, which Loki would otherwise refuse.
    #[arg(long, requires = "loki", default_value = "721h", help_heading = "Loki")]
    loki_max_query_length: String,
    /// The order pages are read in (Loki's `direction`). Either way every entry of the
    /// window is read once; backward reads the newest first.
    #[arg(long, requires = "loki", value_enum, default_value = "forward", help_heading = "Loki")]
    loki_direction: DirectionArg,
    /// Attempts per request for 429, 5xx and network failures.
    #[arg(long, requires = "loki", default_value_t = 5, help_heading = "Loki")]
    loki_attempts: u32,
    /// First retry delay (doubles per retry, with jitter, up to 30s).
    #[arg(long, requires = "loki", default_value = "1s", help_heading = "Loki")]
    loki_backoff: String,
    /// Timeout of one request.
    #[arg(long, requires = "loki", default_value = "60s", help_heading = "Loki")]
    loki_request_timeout: String,
    /// Timeout of the whole read.
    #[arg(long, requires = "loki", default_value = "30m", help_heading = "Loki")]
    loki_timeout: String,
    /// Scheduled runs: continue each query where the last complete run ended, and record
    /// where this one ends (written atomically, only when the run succeeded).
    #[arg(long, value_name = "FILE", requires = "loki", help_heading = "Loki")]
    pub state: Option<PathBuf>,
    /// With --state: read again this far before the last end, for lines that reach Loki
    /// late; what was counted before is recognised and skipped.
    #[arg(long, requires = "state", default_value = "5m", help_heading = "Loki")]
    state_overlap: String,
    /// With --state: read at most this far past where the last run ended, and leave the
    /// rest to the next runs (each completes its part, writes its bundle and moves the
    /// state on). After a long pause, a run that must read the whole gap may not finish
    /// within --loki-timeout, and then no run ever does. Off by default.
    #[arg(long, value_name = "DURATION", requires = "state", help_heading = "Loki")]
    state_catch_up: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum DirectionArg {
    Forward,
    Backward,
}

/// Now, in Unix nanoseconds.
fn now_ns() -> anyhow::Result<i64> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).context("the clock is before 1970")?;
    i64::try_from(now.as_nanos()).context("the clock is past 2262")
}

/// A time option's value in Unix nanoseconds.
fn time_arg(s: &str, opt: &str) -> anyhow::Result<i64> {
    parse_time_ns(s).with_context(|| format!("{opt} {s:?}: expected RFC 3339, Unix seconds or nanoseconds"))
}

fn check_order(start: i64, end: i64) -> anyhow::Result<()> {
    if start >= end {
        bail!("the window is empty: --from (or --to minus --since) must be before --to");
    }
    Ok(())
}

impl LokiArgs {
    /// Checks the options and builds the read; `None` without `--loki`.
    pub fn build(&self, paths: &[PathBuf], local: &LocalRules) -> anyhow::Result<Option<LokiScan>> {
        let Some(url) = &self.loki else {
            if self.tenant_typed {
                bail!(
                    "--loki-tenant names a tenant of the Loki that --loki (or LOGWARDEN_LOKI_URL) reads; without it the scan reads files or stdin, which have no tenant"
                );
            }
            return Ok(None);
        };
        if !paths.is_empty() {
            bail!("--loki reads from Loki; give either --loki or files, not both");
        }
        let all = self.queries.iter().chain(&self.pushdown_queries);
        if self.queries.len() + self.pushdown_queries.len() == 0 || all.clone().any(|q| q.trim().is_empty()) {
            bail!("--loki needs at least one --query, e.g. --query '{{container=\"nginx\"}}'");
        }
        if !self.pushdown_queries.is_empty() {
            self.check_pushdown(local)?;
        }
        if self.loki_page_size == 0 || self.loki_page_size > self.loki_max_entries {
            bail!(
                "--loki-page-size {}: must be between 1 and --loki-max-entries ({}); Loki refuses a larger limit",
                self.loki_page_size,
                self.loki_max_entries
            );
        }
        let (start, end) = self.window()?;
        let windows = self.queries.iter().map(|q| QueryWindow { query: q.clone(), start, end }).collect();
        let state = self.state.as_ref().map(|p| ScanState::load(p)).transpose()?;
        let overlap = duration(&self.state_overlap, "--state-overlap")?;
        let slack = duration(&self.pushdown_slack, "--pushdown-slack")?;
        let pushdown = self
            .pushdown_queries
            .iter()
            .map(|q| PushdownSpec {
                selector: q.clone(),
                start,
                end,
                window_s: local.window_s,
                threshold: local.client_4xx,
                slack_s: slack.as_secs() as i64,
            })
            .collect();
        Ok(Some(LokiScan {
            client: self.client(url)?,
            windows,
            page_size: self.loki_page_size,
            max_entries: self.loki_max_entries,
            max_query_length: nanos(duration(&self.loki_max_query_length, "--loki-max-query-length")?),
            direction: match self.loki_direction {
                DirectionArg::Forward => Direction::Forward,
                DirectionArg::Backward => Direction::Backward,
            },
            state,
            overlap_ns: nanos(overlap),
            catch_up_ns: self
                .state_catch_up
                .as_deref()
                .map(|d| duration(d, "--state-catch-up").map(nanos))
                .transpose()?,
            pushdown,
        }))
    }

    /// What push-down cannot express is refused rather than silently answered wrong.
    fn check_pushdown(&self, local: &LocalRules) -> anyhow::Result<()> {
        if local.trusted_proxies {
            bail!(
                "--pushdown-query counts by the connecting address and cannot walk X-Forwarded-For; \
                 without push-down (--query), --trusted-proxy is honoured"
            );
        }
        if self.state.is_some() {
            bail!(
                "--pushdown-query with --state is not supported yet; schedule push-down scans with --since"
            );
        }
        Ok(())
    }

    /// `[start, end)` in nanoseconds.
    fn window(&self) -> anyhow::Result<(i64, i64)> {
        let end = self.end_ns()?.unwrap_or(now_ns()?);
        let start = self.start_ns(end, Some("1h"))?.expect("a default --since is given");
        check_order(start, end)?;
        Ok((start, end))
    }

    /// The event times a scan of files or stdin counts: `None` without `--since`, `--from`
    /// or `--to`. `--since` counts back from `--to`, else from now.
    pub fn file_time_range(&self) -> anyhow::Result<Option<TimeRange>> {
        let end_ns = self.end_ns()?;
        let start_ns = self.start_ns(end_ns.map_or_else(now_ns, Ok)?, None)?;
        if let (Some(start), Some(end)) = (start_ns, end_ns) {
            check_order(start, end)?;
        }
        Ok((start_ns.is_some() || end_ns.is_some()).then_some(TimeRange { start_ns, end_ns }))
    }

    /// `--to`, in nanoseconds.
    fn end_ns(&self) -> anyhow::Result<Option<i64>> {
        self.to.as_deref().map(|t| time_arg(t, "--to")).transpose()
    }

    /// `--from`, else `--since` (or `default_since`) back from `end`.
    fn start_ns(&self, end: i64, default_since: Option<&str>) -> anyhow::Result<Option<i64>> {
        if let Some(f) = &self.from {
            return time_arg(f, "--from").map(Some);
        }
        let Some(since) = self.since.as_deref().or(default_since) else { return Ok(None) };
        let since = duration(since, "--since")?;
        Ok(Some(end.saturating_sub(nanos(since))))
    }

    fn client(&self, url: &str) -> anyhow::Result<ClientConfig> {
        let read_secret = |p: &PathBuf, opt: &str| {
            std::fs::read_to_string(p)
                .with_context(|| format!("{opt} {}", p.display()))
                .map(|s| s.trim().to_string())
        };
        let auth = match (&self.loki_token_file, &self.loki_user, &self.loki_password_file) {
            (Some(t), _, _) => Auth::Bearer(read_secret(t, "--loki-token-file")?),
            (None, Some(user), Some(pw)) => {
                Auth::Basic { user: user.clone(), password: read_secret(pw, "--loki-password-file")? }
            }
            _ => Auth::None,
        };
        let timeout = duration(&self.loki_timeout, "--loki-timeout")?;
        Ok(ClientConfig {
            url: url.to_string(),
            tenant: self.loki_tenant.clone(),
            auth,
            ca: self.loki_ca.clone(),
            client_cert: self.loki_cert.clone().zip(self.loki_key.clone()),
            retry: RetryPolicy {
                attempts: self.loki_attempts.max(1),
                backoff: duration(&self.loki_backoff, "--loki-backoff")?,
                max_backoff: Duration::from_secs(30),
                deadline: Instant::now() + timeout,
            },
            request_timeout: duration(&self.loki_request_timeout, "--loki-request-timeout")?,
        })
    }
}

/// `d` in nanoseconds, saturating.
fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// A duration such as `250ms`, `90s`, `10m`, `2h`, `1d`.
fn duration(s: &str, opt: &str) -> anyhow::Result<Duration> {
    let parsed = match s.strip_suffix("ms") {
        Some(ms) => ms.parse::<u64>().ok().filter(|&n| n > 0).map(Duration::from_millis),
        None => parse_duration(s).map(|secs| Duration::from_secs(secs as u64)),
    };
    parsed.with_context(|| format!("{opt} {s:?}: expected a duration such as 250ms, 90s, 10m or 2h"))
}
