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

use logwarden::client::{ClientPolicy, SparePolicy};
use logwarden::decide::{Thresholds, decide};
use logwarden::follow::{Announcement, FollowOptions, Redraw, follow};
use logwarden::framing::FramingConfig;
use logwarden::parse::logformat::{Escape, LogFormat, from_nginx_conf};
use logwarden::parse::{self, FORMAT_NAMES};
use logwarden::pipeline::{self, ScanConfig};
use logwarden::report::{self, terminal};
use logwarden::time::parse_duration;
use std::sync::atomic::AtomicBool;

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
    Scan(ScanArgs),
    /// Print one JSON object per input line that matched a detection.
    Match(MatchArgs),
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
    /// Read the log_format named by --log-format-name from this nginx configuration.
    #[arg(long, value_name = "FILE", requires = "log_format_name")]
    nginx_conf: Option<PathBuf>,
    /// The log_format to take from --nginx-conf.
    #[arg(long, value_name = "NAME", requires = "nginx_conf")]
    log_format_name: Option<String>,
    /// Believe X-Forwarded-For only from these hops (repeatable CIDR).
    #[arg(long, value_name = "CIDR")]
    trusted_proxy: Vec<IpNet>,
    /// Group IPv6 clients per this prefix length.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u8).range(1..=128))]
    ipv6_prefix: u8,
    /// Parsing threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Lines longer than this many bytes are skipped and counted.
    #[arg(long, default_value_t = 1 << 20)]
    max_line_bytes: usize,
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
    /// 4xx answers to one client within the window that propose a block.
    #[arg(long, default_value_t = Thresholds::default().client_4xx)]
    max_4xx: u64,
    /// Failed logins from one client within the window that propose a block.
    #[arg(long, default_value_t = Thresholds::default().client_auth_failures)]
    max_auth_failures: u64,
    /// Failed logins against one account within the window that propose a lock.
    #[arg(long, default_value_t = Thresholds::default().account_auth_failures)]
    max_account_failures: u64,
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
    /// print the summary on Ctrl-C, SIGTERM or end of input.
    #[arg(long)]
    follow: bool,
    /// With --follow on a terminal: redraw the summary this often.
    #[arg(long, default_value = "10s", requires = "follow")]
    interval: String,
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
}

#[derive(Clone, Copy, ValueEnum)]
enum MatchOutput {
    Ndjson,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("logwarden: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A closed pipe (`| head`) is how a reader says it has seen enough.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Scan(args) => run_scan(args),
        Command::Match(args) => run_match(args),
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
    let threads = input
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 {
        bail!("--threads: must be at least 1");
    }
    if input.max_line_bytes < 1024 {
        bail!("--max-line-bytes: must be at least 1024");
    }
    Ok(ScanConfig {
        framing: FramingConfig {
            max_line_bytes: input.max_line_bytes,
            ..FramingConfig::default()
        },
        threads,
        parser,
        policy: Arc::new(ClientPolicy {
            trusted_proxies: input.trusted_proxy.clone(),
            ipv6_prefix: input.ipv6_prefix,
        }),
        bytes_read: Default::default(),
    })
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
        let text =
            std::fs::read_to_string(conf).with_context(|| format!("--nginx-conf {}", conf.display()))?;
        formats.push(Arc::new(
            from_nginx_conf(&text, name).with_context(|| format!("--nginx-conf {}", conf.display()))?,
        ));
    }
    Ok(formats)
}

fn spare_policy(args: &ScanArgs) -> anyhow::Result<SparePolicy> {
    let mut allow = args.allow.clone();
    for file in &args.allow_file {
        allow.extend(read_allow_file(file)?);
    }
    Ok(SparePolicy {
        allow,
        trusted_proxies: args.input.trusted_proxy.clone(),
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
        format!(
            "--window {:?}: expected a duration such as 90s, 10m, 2h or 1d",
            args.window
        )
    })?;
    let thresholds = Thresholds {
        window,
        client_4xx: args.max_4xx,
        client_auth_failures: args.max_auth_failures,
        account_auth_failures: args.max_account_failures,
    };
    let spare = spare_policy(&args)?;
    let config = scan_config(&args.input)?;
    let inputs = pipeline::open_inputs(&args.input.paths)?;
    let report = if args.follow {
        run_follow(&args, inputs, &config, thresholds, spare)?
    } else {
        let progress = Progress::start(&args.input.paths, config.bytes_read.clone());
        let agg = pipeline::scan(inputs, &config);
        progress.finish();
        decide(agg?, &thresholds, &spare)
    };
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
    let findings = !report.blocklist.is_empty()
        || !report.lock_accounts.is_empty()
        || !report.follow_proposals.is_empty();
    Ok(if args.fail_on_findings && findings {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn run_follow(
    args: &ScanArgs,
    inputs: Vec<logwarden::source::Input>,
    config: &ScanConfig,
    thresholds: Thresholds,
    spare: SparePolicy,
) -> anyhow::Result<logwarden::decide::ScanReport> {
    let interval = parse_duration(&args.interval).with_context(|| {
        format!(
            "--interval {:?}: expected a duration such as 5s or 1m",
            args.interval
        )
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing the Ctrl-C/SIGTERM handler")?;
    }
    let redraw_on_tty = args.output == OutputArg::Text && io::stdout().is_terminal();
    let top = args.top;
    let color = stdout_is_color();
    let redraw: Option<Redraw> = redraw_on_tty.then(|| {
        Box::new(
            move |report: &logwarden::decide::ScanReport, made: &[Announcement]| {
                let mut report = report.clone();
                report.follow_proposals = made.to_vec();
                let mut out = io::stdout().lock();
                write!(out, "\x1b[H\x1b[2J")?;
                terminal::write_text(&mut out, &report, terminal::TextOptions { color, top })?;
                out.flush()
            },
        ) as Box<dyn FnMut(&_, &[_]) -> io::Result<()>>
    });
    let opts = FollowOptions {
        thresholds: thresholds.clone(),
        spare: spare.clone(),
        interval: std::time::Duration::from_secs(interval as u64),
        redraw,
        ndjson: args.output == OutputArg::Ndjson,
    };
    let (agg, made) = follow(inputs, config, opts, stop, &mut io::stdout())?;
    let mut report = decide(agg, &thresholds, &spare);
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
        Progress {
            done,
            thread: Some(thread),
        }
    }

    fn finish(mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn stdout_is_color() -> bool {
    io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn run_match(args: MatchArgs) -> anyhow::Result<ExitCode> {
    let MatchOutput::Ndjson = args.output;
    let config = scan_config(&args.input)?;
    let inputs = pipeline::open_inputs(&args.input.paths)?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    pipeline::scan_matches(inputs, &config, |found| {
        for m in found {
            serde_json::to_writer(&mut out, m)
                .map_err(io::Error::from)
                .map_err(logwarden::Error::Output)?;
            writeln!(out).map_err(logwarden::Error::Output)?;
        }
        Ok(())
    })?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
