//! The `logwarden` command line. All logic lives in the library; this file turns
//! arguments into a validated configuration, runs the scan and maps outcomes to exit
//! codes: 0 success (findings or not), 1 findings with `--fail-on-findings`, 2 error.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

use logwarden::aggregate::AccountCase;
use logwarden::client::{ClientPolicy, Ranges, SparePolicy};
use logwarden::decide::{ScanReport, Thresholds, decide};
use logwarden::detect::RuleSet;
use logwarden::follow::{Announcement, FollowOptions, Redraw, follow};
use logwarden::framing::FramingConfig;
use logwarden::parse::logformat::{Escape, LogFormat, from_nginx_conf};
use logwarden::parse::{self, FORMAT_NAMES};
use logwarden::pipeline::{self, ScanConfig};
use logwarden::remedy::blocklist::{BlocklistTarget, Collapse, CurrentConfigMap};
use logwarden::remedy::sql::LockTarget;
use logwarden::remedy::{RemedyConfig, write_bundle};
use logwarden::report::{self, terminal};
use logwarden::time::parse_duration;
use std::sync::atomic::AtomicBool;

mod loki_cli;

#[derive(Parser)]
#[command(
    name = "logwarden",
    version,
    about = "Find the clients and accounts behind an attack in nginx and application logs, and propose what to block and lock."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Scan logs and propose clients to block and accounts to lock.
    Scan(Box<ScanArgs>),
    /// Print one JSON object per input line that matched a detection.
    Match(MatchArgs),
    /// Rewrite a review bundle from a saved (possibly hand-edited) report.json.
    Emit(EmitArgs),
    /// List the detection rules, or check their examples.
    #[command(subcommand)]
    Patterns(PatternsCommand),
}

#[derive(Subcommand)]
enum PatternsCommand {
    /// Show every rule (built-in, plus --patterns directories).
    List {
        /// Also load the rules in this directory (repeatable; a rule with the same id overrides).
        #[arg(long, value_name = "DIR")]
        patterns: Vec<PathBuf>,
    },
    /// Check every rule's examples and counterexamples (the built-in rules, or only DIR's).
    Test {
        /// A directory of rule files to check instead of the built-in set.
        dir: Option<PathBuf>,
    },
}

#[derive(Args)]
struct EmitArgs {
    /// The scan document to emit from (report.json of a bundle, or `scan --output json`).
    #[arg(long, value_name = "FILE")]
    from: PathBuf,
    /// Allow blocking private, loopback, link-local and shared addresses written into
    /// the document's blocklist.
    #[arg(long)]
    block_private: bool,
    #[command(flatten)]
    remedy: RemedyArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum Preset {
    /// ConfigMap nginx-config, key blocked-ips, then `kubectl rollout restart deployment/nginx`.
    Runbook,
    /// The ingress-nginx controller ConfigMap (ingress-nginx-controller, key block-cidrs).
    IngressNginx,
}

/// Options of the review bundle (`--out`).
#[derive(Args)]
struct RemedyArgs {
    /// Write the review bundle (report, blocklist patch, account-lock SQL, rollbacks) here.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Which ConfigMap holds the blocklist.
    #[arg(long, requires = "out", value_enum, default_value = "runbook")]
    preset: Preset,
    /// Namespace of the ConfigMap (and deployment).
    #[arg(long, requires = "out", default_value = "default")]
    namespace: String,
    /// ConfigMap name (overrides the preset).
    #[arg(long, requires = "out")]
    configmap: Option<String>,
    /// ConfigMap key holding the comma-separated list (overrides the preset).
    #[arg(long, requires = "out")]
    configmap_key: Option<String>,
    /// Deployment to restart after patching (overrides the preset).
    #[arg(long, requires = "out")]
    deployment: Option<String>,
    /// Do not restart anything after patching.
    #[arg(long, requires = "out")]
    no_restart: bool,
    /// The live ConfigMap, as `kubectl get configmap NAME -o json` prints it (`-`: stdin).
    #[arg(long, requires = "out", value_name = "FILE")]
    current: Option<PathBuf>,
    /// Without --current, write a patch that replaces the value anyway.
    #[arg(long, requires = "out")]
    replace: bool,
    /// Merge neighbouring entries into CIDRs (never broader than the bounds below).
    #[arg(long, requires = "out")]
    collapse: bool,
    /// Broadest IPv4 range --collapse may write.
    #[arg(long, requires = "out", default_value_t = 24, value_parser = clap::value_parser!(u8).range(8..=32))]
    collapse_max_v4: u8,
    /// Broadest IPv6 range --collapse may write.
    #[arg(long, requires = "out", default_value_t = 48, value_parser = clap::value_parser!(u8).range(16..=128))]
    collapse_max_v6: u8,
    /// Table of accounts (schema-qualified allowed).
    #[arg(long, requires = "out", default_value = "users")]
    users_table: String,
    /// Column holding the account name.
    #[arg(long, requires = "out", default_value = "username")]
    user_column: String,
    /// Boolean column that locks the account.
    #[arg(long, requires = "out", default_value = "account_locked")]
    lock_column: String,
    /// Table where the lock records what it changed (created if missing).
    #[arg(long, requires = "out", default_value = "logwarden_account_locks")]
    lock_record_table: String,
    /// Also insert an `account_takeover` row per locked account into --events-table.
    #[arg(long, requires = "out")]
    record_events: bool,
    /// Table for --record-events (columns event_type, username, details).
    #[arg(long, requires = "out", default_value = "security_events")]
    events_table: String,
}

#[derive(Args)]
struct InputArgs {
    /// Files to read (plain or gzip); none or `-` reads standard input.
    paths: Vec<PathBuf>,
    /// Read every line in this format instead of detecting it.
    #[arg(long, value_name = "NAME", help = format!("Read every line in this format instead of detecting it: {FORMAT_NAMES}"))]
    format: Option<String>,
    /// A custom nginx log_format definition, e.g. '$remote_addr [$time_local] "$request" $status'.
    #[arg(long, value_name = "DEFINITION")]
    log_format: Option<String>,
    /// How values in --log-format are escaped (nginx's `escape=` parameter).
    #[arg(long, value_enum, default_value = "default")]
    log_escape: EscapeArg,
    /// Read the log_format named by --log-format-name from this nginx configuration and
    /// the files it includes.
    #[arg(long, value_name = "FILE", requires = "log_format_name")]
    nginx_conf: Option<PathBuf>,
    /// The log_format to take from --nginx-conf.
    #[arg(long, value_name = "NAME", requires = "nginx_conf")]
    log_format_name: Option<String>,
    /// Believe X-Forwarded-For, X-Real-IP and the like only from these hops (repeatable CIDR).
    #[arg(long, value_name = "CIDR")]
    trusted_proxy: Vec<IpNet>,
    /// Group IPv6 clients per this prefix length.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u8).range(1..=128))]
    ipv6_prefix: u8,
    /// Parsing threads (default: all cores, at most one per 50 MiB of --max-memory: each
    /// thread keeps its own record of every client it sees, within its share of the bound).
    #[arg(long)]
    threads: Option<usize>,
    /// Lines longer than this many bytes are skipped and counted.
    #[arg(long, default_value_t = 1 << 20)]
    max_line_bytes: usize,
    /// Also load the rules in this directory (repeatable; a rule with the same id overrides).
    #[arg(long, value_name = "DIR")]
    patterns: Vec<PathBuf>,
    /// Keep memory near this many MiB however many clients and accounts appear and however
    /// much each holds: beyond the limit, those with the least evidence are folded into an
    /// approximate summary (reported when used).
    #[arg(long, value_name = "MIB", default_value_t = 200, value_parser = clap::value_parser!(u64).range(64..))]
    max_memory: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum EscapeArg {
    Default,
    Json,
    None,
}

#[derive(Args)]
struct ScanArgs {
    #[command(flatten)]
    input: InputArgs,
    /// Sliding window for every threshold (e.g. 90s, 10m, 1h).
    #[arg(long, default_value = "10m")]
    window: String,
    /// 4xx answers to one client within the window that propose a block. At least 1: 0
    /// would propose every client.
    #[arg(long, default_value_t = Thresholds::default().client_4xx, value_parser = clap::value_parser!(u64).range(1..))]
    max_4xx: u64,
    /// Failed logins from one client within the window that propose a block.
    #[arg(long, default_value_t = Thresholds::default().client_auth_failures, value_parser = clap::value_parser!(u64).range(1..))]
    max_auth_failures: u64,
    /// Failed logins against one account within the window that propose a lock.
    #[arg(long, default_value_t = Thresholds::default().account_auth_failures, value_parser = clap::value_parser!(u64).range(1..))]
    max_account_failures: u64,
    /// Requests a minute from one client, over its busiest --window (100 a minute: 1000
    /// requests in 10 minutes), that propose a block: a flood. Off by default. Keeps every
    /// client's request times, in a quarter of --max-memory. Not with --pushdown-query
    /// (which reads only the lines of clients with 4xx answers).
    #[arg(long, value_name = "PER_MINUTE", value_parser = clap::value_parser!(u64).range(1..),
          conflicts_with = "pushdown_queries")]
    max_request_rate: Option<u64>,
    /// Whether `Admin` and `admin` are one account (insensitive: counted together, and
    /// locked by `lower(name)`) or two (sensitive: as logged). Match your application's login.
    /// htpasswd users (nginx-basic-auth) are always compared as logged.
    #[arg(long, value_enum, default_value = "insensitive")]
    account_case: AccountCaseArg,
    /// Never propose blocking these (repeatable CIDR).
    #[arg(long, value_name = "CIDR")]
    allow: Vec<IpNet>,
    /// Never propose blocking the addresses or CIDRs in this file (one per line, # comments).
    #[arg(long, value_name = "FILE")]
    allow_file: Vec<PathBuf>,
    /// Allow proposing private, loopback, link-local and shared addresses.
    #[arg(long)]
    block_private: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    output: OutputArg,
    /// Rows per table in text output.
    #[arg(long, default_value_t = 20)]
    top: usize,
    /// Exit with 1 when anything is proposed.
    #[arg(long)]
    fail_on_findings: bool,
    /// Keep reading a live stream: announce each proposal when its threshold is crossed,
    /// print the summary on Ctrl-C, SIGTERM or end of input. Files are read from their
    /// start, then followed as `tail -F -n +1` follows them, through logrotate's moves and
    /// truncations.
    #[arg(long)]
    follow: bool,
    /// With --follow on a terminal: redraw the summary this often.
    #[arg(long, default_value = "10s", requires = "follow")]
    interval: String,
    #[command(flatten)]
    remedy: RemedyArgs,
    #[command(flatten)]
    loki: loki_cli::LokiArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum AccountCaseArg {
    Insensitive,
    Sensitive,
}

impl From<AccountCaseArg> for AccountCase {
    fn from(arg: AccountCaseArg) -> AccountCase {
        match arg {
            AccountCaseArg::Insensitive => AccountCase::Insensitive,
            AccountCaseArg::Sensitive => AccountCase::Sensitive,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputArg {
    Text,
    Json,
    Ndjson,
}

#[derive(Args)]
struct MatchArgs {
    #[command(flatten)]
    input: InputArgs,
    /// Output format (ndjson only, for now).
    #[arg(long, value_enum, default_value = "ndjson")]
    output: MatchOutput,
    /// Add the rule's description and the fields it was judged on.
    #[arg(long)]
    explain: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum MatchOutput {
    Ndjson,
}

fn main() -> ExitCode {
    match run(parse_command_line()) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("logwarden: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The command line, as `Cli::parse` reads it, and where the Loki tenant came from: an
/// environment variable set for every run may name one where no Loki is read, an option
/// typed on the command line may not.
fn parse_command_line() -> Cli {
    use clap::{CommandFactory, FromArgMatches, parser::ValueSource};
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let (Command::Scan(args), Some(m)) = (&mut cli.command, matches.subcommand_matches("scan")) {
        args.loki.tenant_typed = m.value_source("loki_tenant") == Some(ValueSource::CommandLine);
    }
    cli
}

/// A closed pipe (`| head`) is how a reader says it has seen enough.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Scan(args) => run_scan(*args),
        Command::Match(args) => run_match(args),
        Command::Emit(args) => run_emit(args),
        Command::Patterns(cmd) => run_patterns(cmd),
    }
}

fn scan_config(input: &InputArgs) -> anyhow::Result<ScanConfig> {
    let custom = custom_formats(input)?;
    let parser = match &input.format {
        Some(name) => parse::Parser::forced(
            parse::format_by_name(name, &custom)
                .with_context(|| format!("--format {name:?}: unknown format; use one of: {FORMAT_NAMES}"))?,
        ),
        None => parse::Parser::detecting(&custom),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = input.threads.unwrap_or_else(|| default_threads(cores, input.max_memory));
    if threads == 0 {
        bail!("--threads: must be at least 1");
    }
    if input.max_line_bytes < 1024 {
        bail!("--max-line-bytes: must be at least 1024");
    }
    let rules = RuleSet::with_dirs(&input.patterns).map_err(|e| anyhow::anyhow!("rules: {e}"))?;
    Ok(ScanConfig {
        framing: FramingConfig { max_line_bytes: input.max_line_bytes, ..FramingConfig::default() },
        threads,
        parser,
        policy: Arc::new(ClientPolicy {
            trusted_proxies: Ranges::new(input.trusted_proxy.iter().copied()),
            ipv6_prefix: input.ipv6_prefix,
        }),
        limits: logwarden::aggregate::bounded::Limits::for_memory(
            usize::try_from(input.max_memory).unwrap_or(usize::MAX).saturating_mul(1 << 20),
        ),
        ..ScanConfig::new(Arc::new(rules))
    })
}

/// MiB of `--max-memory` each thread of the default count gets at least.
const MIB_PER_DEFAULT_THREAD: u64 = 50;

/// Threads when `--threads` is not given: one per core, but no more than leaves each
/// `MIB_PER_DEFAULT_THREAD` of the memory bound. The bound is shared by the threads, and
/// an attacking client has a full record in every thread that sees it: under the default
/// 200 MiB, eight threads proposed 567 addresses of a 5,000-address botnet that four
/// proposed whole (`benches/gen_hostile.py botnet 5000 12`).
fn default_threads(cores: usize, max_memory_mib: u64) -> usize {
    let by_memory = usize::try_from(max_memory_mib / MIB_PER_DEFAULT_THREAD).unwrap_or(usize::MAX);
    cores.min(by_memory).max(1)
}

fn custom_formats(input: &InputArgs) -> anyhow::Result<Vec<Arc<LogFormat>>> {
    let mut formats = Vec::new();
    if let Some(def) = &input.log_format {
        let escape = match input.log_escape {
            EscapeArg::Default => Escape::Default,
            EscapeArg::Json => Escape::Json,
            EscapeArg::None => Escape::None,
        };
        formats.push(Arc::new(LogFormat::compile("custom", def, escape)?));
    }
    if let (Some(conf), Some(name)) = (&input.nginx_conf, &input.log_format_name) {
        let config =
            parse::nginx_conf::read(conf).with_context(|| format!("--nginx-conf {}", conf.display()))?;
        let format = from_nginx_conf(&config.text, name).with_context(|| {
            let unread = match config.unread.as_slice() {
                [] => String::new(),
                files => format!(" (includes not read: {})", files.join(", ")),
            };
            format!("--nginx-conf {} and the files it includes{unread}", conf.display())
        })?;
        formats.push(Arc::new(format));
    }
    Ok(formats)
}

fn spare_policy(args: &ScanArgs) -> anyhow::Result<SparePolicy> {
    let mut allow = args.allow.clone();
    for file in &args.allow_file {
        allow.extend(read_allow_file(file)?);
    }
    Ok(SparePolicy {
        allow: Ranges::new(allow),
        trusted_proxies: Ranges::new(args.input.trusted_proxy.iter().copied()),
        block_private: args.block_private,
    })
}

fn read_allow_file(path: &PathBuf) -> anyhow::Result<Vec<IpNet>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--allow-file {}", path.display()))?;
    let mut nets = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let key: logwarden::client::ClientKey = entry
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--allow-file {}:{}: {e}", path.display(), i + 1))?;
        nets.push(key.0);
    }
    Ok(nets)
}

fn run_scan(args: ScanArgs) -> anyhow::Result<ExitCode> {
    let window = parse_duration(&args.window).with_context(|| {
        format!("--window {:?}: expected a duration such as 90s, 10m, 2h or 1d", args.window)
    })?;
    let thresholds = Thresholds {
        window,
        client_4xx: args.max_4xx,
        client_auth_failures: args.max_auth_failures,
        account_auth_failures: args.max_account_failures,
        client_request_rate: args.max_request_rate,
    };
    let spare = spare_policy(&args)?;
    let mut config = scan_config(&args.input)?;
    config.account_case = args.account_case.into();
    if thresholds.client_request_rate.is_some() {
        config.request_times = true;
        config.limits = config.limits.with_request_times();
    }
    // A compact entry's events are 4xx answers and failed logins, so the lower bar caps them.
    config.limits = config.limits.below_threshold(thresholds.client_4xx.min(thresholds.client_auth_failures));
    let reads_stdin = args.input.paths.is_empty() || args.input.paths.iter().any(|p| p.as_os_str() == "-");
    if reads_stdin && args.remedy.current.as_deref().is_some_and(|p| p.as_os_str() == "-") {
        bail!("--current -: standard input already carries the logs; save the ConfigMap to a file");
    }
    let remedy =
        args.remedy.out.is_some().then(|| remedy_config(&args.remedy, args.block_private)).transpose()?;
    let local = loki_cli::LocalRules::new(&thresholds, &config.rules, !args.input.trusted_proxy.is_empty());
    let loki = args.loki.build(&args.input.paths, &local)?;
    if loki.is_none() {
        config.time_range = args.loki.file_time_range()?;
    }
    if loki.is_some() && args.follow {
        bail!("--follow reads a live stream; with --loki, run on a schedule with --state instead");
    }
    let mut loki_outcome = None;
    let report = if let Some(loki) = loki {
        let (agg, outcome) = pipeline::scan_loki(loki, &config)?;
        let mut report = decide(agg, &thresholds, &spare, &config.rules);
        report.loki = outcome.coverage.clone();
        loki_outcome = Some(outcome);
        report
    } else if args.follow {
        run_follow(&args, pipeline::open_inputs(&args.input.paths)?, &config, thresholds, spare)?
    } else {
        let inputs = pipeline::open_inputs(&args.input.paths)?;
        let progress = Progress::start(&args.input.paths, config.bytes_read.clone());
        let agg = pipeline::scan(inputs, &config);
        progress.finish();
        decide(agg?, &thresholds, &spare, &config.rules)
    };
    let mut report = report;
    if let Some(current) = remedy.as_ref().and_then(|r| r.current.as_ref()) {
        logwarden::remedy::mark_already_blocked(&mut report, current);
    }
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    match args.output {
        OutputArg::Text => {
            let color = stdout_is_color();
            terminal::write_text(&mut out, &report, terminal::TextOptions { color, top: args.top })?
        }
        OutputArg::Json => report::write_json(&mut out, &report)?,
        OutputArg::Ndjson => report::write_ndjson(&mut out, &report)?,
    }
    out.flush()?;
    if let Some(outcome) = loki_outcome.as_ref().filter(|o| !o.complete()) {
        say_incomplete(outcome);
        return Ok(ExitCode::from(2));
    }
    if let (Some(dir), Some(cfg)) = (&args.remedy.out, &remedy) {
        write_bundle_and_say(dir, &report, cfg)?;
    }
    // Only after the bundle is on disk: a run that dies before it is repeated in full.
    if let (Some(path), Some(state)) = (&args.loki.state, loki_outcome.and_then(|o| o.next_state)) {
        state.save(path)?;
    }
    let findings = !report.blocklist.is_empty()
        || !report.lock_accounts.is_empty()
        || !report.follow_proposals.is_empty();
    Ok(if args.fail_on_findings && findings { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Tells which part of which query was not read, and that nothing was written.
fn say_incomplete(outcome: &logwarden::loki::LokiOutcome) {
    if let Some(refused) = &outcome.refused {
        eprintln!("logwarden: Loki refused {refused}");
    }
    for c in outcome.coverage.iter().filter(|c| !c.complete) {
        if let Some(m) = &c.missing {
            eprintln!(
                "logwarden: query {:?}: [{}, {}) was not read ({} to {} ns): {}",
                c.query, m.from, m.to, m.from_ns, m.to_ns, m.reason
            );
        }
    }
    eprintln!("logwarden: the window was not read completely; no bundle written, --state not advanced");
}

fn run_follow(
    args: &ScanArgs,
    inputs: Vec<logwarden::source::Input>,
    config: &ScanConfig,
    thresholds: Thresholds,
    spare: SparePolicy,
) -> anyhow::Result<ScanReport> {
    let interval = parse_duration(&args.interval)
        .with_context(|| format!("--interval {:?}: expected a duration such as 5s or 1m", args.interval))?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing the Ctrl-C/SIGTERM handler")?;
    }
    let redraw_on_tty = args.output == OutputArg::Text && io::stdout().is_terminal();
    let top = args.top;
    let color = stdout_is_color();
    let redraw: Option<Redraw> = redraw_on_tty.then(|| {
        Box::new(move |report: &logwarden::decide::ScanReport, made: &[Announcement]| {
            let mut report = report.clone();
            report.follow_proposals = made.to_vec();
            let mut out = io::stdout().lock();
            write!(out, "\x1b[H\x1b[2J")?;
            terminal::write_text(&mut out, &report, terminal::TextOptions { color, top })?;
            out.flush()
        }) as Box<dyn FnMut(&_, &[_]) -> io::Result<()>>
    });
    let opts = FollowOptions {
        thresholds: thresholds.clone(),
        spare: spare.clone(),
        interval: std::time::Duration::from_secs(interval as u64),
        redraw,
        ndjson: args.output == OutputArg::Ndjson,
    };
    let (agg, made) = follow(inputs, config, opts, stop, &mut io::stdout())?;
    let mut report = decide(agg, &thresholds, &spare, &config.rules);
    report.follow_proposals = made;
    Ok(report)
}

/// A progress bar on stderr for long inputs, only when stderr is a terminal: it appears
/// after a second, so short scans print nothing extra.
struct Progress {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(paths: &[PathBuf], bytes: Arc<std::sync::atomic::AtomicU64>) -> Progress {
        let done = Arc::new(AtomicBool::new(false));
        if !io::stderr().is_terminal() {
            return Progress { done, thread: None };
        }
        let total: Option<u64> = paths
            .iter()
            .map(|p| std::fs::metadata(p).ok().filter(|m| m.is_file()).map(|m| m.len()))
            .sum::<Option<u64>>()
            .filter(|t| *t > 0);
        let flag = done.clone();
        let thread = std::thread::spawn(move || {
            use std::sync::atomic::Ordering::Relaxed;
            let started = std::time::Instant::now();
            while !flag.load(Relaxed) && started.elapsed() < std::time::Duration::from_secs(1) {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let bar = match total {
                Some(t) => indicatif::ProgressBar::new(t).with_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .expect("valid template"),
                ),
                None => indicatif::ProgressBar::new_spinner().with_style(
                    indicatif::ProgressStyle::with_template("{spinner} {bytes} read, {bytes_per_sec}")
                        .expect("valid template"),
                ),
            };
            while !flag.load(Relaxed) {
                // Decompressed gzip can exceed the file size: keep the bar within its length.
                bar.set_position(total.map_or(bytes.load(Relaxed), |t| bytes.load(Relaxed).min(t)));
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            bar.finish_and_clear();
        });
        Progress { done, thread: Some(thread) }
    }

    fn finish(mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn remedy_config(args: &RemedyArgs, block_private: bool) -> anyhow::Result<RemedyConfig> {
    let mut target = match args.preset {
        Preset::Runbook => BlocklistTarget::runbook(&args.namespace),
        Preset::IngressNginx => BlocklistTarget::ingress_nginx(&args.namespace),
    };
    if let Some(name) = &args.configmap {
        target.configmap = name.clone();
    }
    if let Some(key) = &args.configmap_key {
        target.key = key.clone();
    }
    if let Some(d) = &args.deployment {
        target.restart = Some(d.clone());
    }
    if args.no_restart {
        target.restart = None;
    }
    let current = args.current.as_ref().map(|p| read_current(p, &target.key)).transpose()?;
    let lock = LockTarget {
        table: args.users_table.clone(),
        user_column: args.user_column.clone(),
        lock_column: args.lock_column.clone(),
        record_table: args.lock_record_table.clone(),
        events_table: args.record_events.then(|| args.events_table.clone()),
    };
    let collapse =
        Collapse { enabled: args.collapse, max_v4: args.collapse_max_v4, max_v6: args.collapse_max_v6 };
    Ok(RemedyConfig { target, current, replace: args.replace, collapse, lock, block_private }.build()?)
}

fn read_current(path: &std::path::Path, key: &str) -> anyhow::Result<CurrentConfigMap> {
    let text = if path.as_os_str() == "-" {
        io::read_to_string(io::stdin()).context("--current -: reading standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("--current {}", path.display()))?
    };
    CurrentConfigMap::parse(&text, key).map_err(|e| anyhow::anyhow!("--current {}: {e}", path.display()))
}

fn write_bundle_and_say(
    dir: &std::path::Path,
    report: &ScanReport,
    cfg: &RemedyConfig,
) -> anyhow::Result<()> {
    let plan = write_bundle(dir, report, cfg)?;
    eprintln!(
        "logwarden: review bundle {} written to {} ({} files)",
        plan.bundle_id,
        dir.display(),
        plan.files.len()
    );
    eprintln!("logwarden: {}", plan.blocklist_note);
    if !plan.refused.is_empty() {
        eprintln!(
            "logwarden: {} account name(s) could not be written as SQL; see report.md",
            plan.refused.len()
        );
    }
    Ok(())
}

fn run_emit(args: EmitArgs) -> anyhow::Result<ExitCode> {
    let Some(dir) = args.remedy.out.clone() else {
        bail!("emit: --out DIR is required (where to write the bundle)");
    };
    let cfg = remedy_config(&args.remedy, args.block_private)?;
    let text =
        std::fs::read_to_string(&args.from).with_context(|| format!("--from {}", args.from.display()))?;
    let report: ScanReport = serde_json::from_str(&text).with_context(|| {
        format!(
            "--from {}: not a logwarden scan document (report.json, or `scan --output json`)",
            args.from.display()
        )
    })?;
    write_bundle_and_say(&dir, &report, &cfg)?;
    Ok(ExitCode::SUCCESS)
}

fn run_patterns(cmd: PatternsCommand) -> anyhow::Result<ExitCode> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    match cmd {
        PatternsCommand::List { patterns } => {
            let set = RuleSet::with_dirs(&patterns)?;
            for r in set.rules() {
                let threshold = match (r.threshold, r.window) {
                    (Some(n), Some(w)) => format!("{n} in {}", logwarden::decide::human_window(w)),
                    (Some(n), None) => format!("{n} in the scan window"),
                    (None, _) => "report only".to_string(),
                };
                let inputs: Vec<String> = r.inputs.iter().map(|i| format!("{i:?}").to_lowercase()).collect();
                writeln!(
                    out,
                    "{:<28} {:<7} {:<8} {:<22} {}",
                    r.id,
                    format!("{:?}", r.severity).to_lowercase(),
                    inputs.join(","),
                    threshold,
                    r.description
                )?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        PatternsCommand::Test { dir } => {
            let set = match &dir {
                Some(d) => RuleSet::from_dir(d),
                None => RuleSet::builtin(),
            };
            let set = Arc::new(set.map_err(|e| anyhow::anyhow!("{e}"))?);
            let failures = logwarden::detect::check::check_examples(&set);
            let examples: usize =
                set.rules().iter().map(|r| r.examples.len() + r.counterexamples.len()).sum();
            for f in &failures {
                writeln!(out, "{f}")?;
            }
            let (passed, failed) = (examples - failures.len().min(examples), failures.len());
            writeln!(out, "patterns: {passed} passed, {failed} failed ({} rules)", set.rules().len())?;
            out.flush()?;
            Ok(if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
    }
}

fn stdout_is_color() -> bool {
    io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn run_match(args: MatchArgs) -> anyhow::Result<ExitCode> {
    let MatchOutput::Ndjson = args.output;
    let mut config = scan_config(&args.input)?;
    config.explain = args.explain;
    let inputs = pipeline::open_inputs(&args.input.paths)?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    pipeline::scan_matches(inputs, &config, |found| {
        for m in found {
            serde_json::to_writer(&mut out, m).map_err(io::Error::from).map_err(logwarden::Error::Output)?;
            writeln!(out).map_err(logwarden::Error::Output)?;
        }
        Ok(())
    })?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::default_threads;

    /// Every option of every command says what it does in `--help`: one without a line
    /// (`--loki-password-file` was one) leaves a reader at 3 a.m. to guess.
    #[test]
    fn every_option_has_help() {
        fn check(cmd: &clap::Command, path: &str) {
            for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
                let has =
                    arg.get_help().or(arg.get_long_help()).is_some_and(|h| !h.to_string().trim().is_empty());
                assert!(has, "{path} --{} has no help", arg.get_id());
            }
            for sub in cmd.get_subcommands() {
                check(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        let mut cli = <super::Cli as clap::CommandFactory>::command();
        cli.build();
        check(&cli, "logwarden");
    }

    #[test]
    fn default_threads_leave_each_a_share_of_the_memory_bound() {
        assert_eq!(default_threads(2, 200), 2);
        assert_eq!(default_threads(16, 200), 4);
        assert_eq!(default_threads(16, 800), 16);
        assert_eq!(default_threads(64, 384), 7);
        assert_eq!(default_threads(8, 64), 1, "the least bound still scans");
        assert_eq!(default_threads(1, 1 << 20), 1);
    }
}
