//! Decisions: from evidence to proposals. A client is proposed for blocking, or an
//! account for locking, only when a count inside a sliding window of event time crosses
//! its threshold (fail2ban's findtime/maxretry), never on a windowless total, and never
//! for a spared address. 5xx answers are the server's failure and never count against a
//! client. The result is the scan document that every output format renders.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::aggregate::bounded::Light;
use crate::aggregate::requests::RequestTimes;
use crate::aggregate::{AccountCase, Aggregator, ClientStats, IncidentStats, Sample, Stats};
use crate::client::{ClientKey, SparePolicy};
use crate::detect::{APP_REALM, AggregateKind, RuleSet};
use crate::time::format_rfc3339;

/// Thresholds for proposals, all counted within `window` seconds of event time.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Thresholds {
    /// The sliding window, in seconds.
    pub window: i64,
    /// 4xx answers to one client.
    pub client_4xx: u64,
    /// Failed logins from one client.
    pub client_auth_failures: u64,
    /// Failed logins against one account.
    pub account_auth_failures: u64,
    /// Requests a minute from one client over the busiest window (see
    /// [`requests_in_window`]): a flood. Off unless given (`--max-request-rate`): how many
    /// requests are too many is the site's to say, and an office behind one address, a
    /// monitor or a partner's integration is busy without attacking. Judged where the scan
    /// kept request times ([`Aggregator::request_times`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_request_rate: Option<u64>,
}

impl Default for Thresholds {
    /// 10 minutes and 5 failed logins are fail2ban's defaults for its nginx-http-auth
    /// jail. 60 4xx in 10 minutes is one every 10 s sustained: far above a browser
    /// hitting a few broken links, far below any scanner. 10 failures against one
    /// account is twice the per-client bar, because several honest users may share one.
    fn default() -> Self {
        Thresholds {
            window: 600,
            client_4xx: 60,
            client_auth_failures: 5,
            account_auth_failures: 10,
            client_request_rate: None,
        }
    }
}

/// A proposal is shown at most this many clients deep in the document.
pub const REPORT_CLIENTS: usize = 1000;

/// One client in the scan document.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientReport {
    pub ip: ClientKey,
    pub requests: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub auth_failures: u64,
    pub rules: BTreeMap<String, u64>,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    /// The busiest window's counts, for the reasons and for sorting.
    pub window_4xx: u64,
    pub window_auth_failures: u64,
    /// The window counts are lower bounds: the client's times were kept in buckets
    /// coarser than a second (see [`crate::aggregate::window`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub window_at_least: bool,
    pub block: bool,
    pub reasons: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spared: Option<String>,
    /// Top paths and user agents count the client's requests from the piece of evidence
    /// that gave it a full record on (its fifth 4xx answer or failed login, or its first
    /// other rule hit): a client with less is counted in compact form, without them (see
    /// [`crate::aggregate::bounded`]); so are its samples. Accounts count every failed
    /// login, the compact entry's included.
    pub accounts: Vec<(String, u64)>,
    pub top_paths: Vec<(String, u64)>,
    pub top_user_agents: Vec<(String, u64)>,
    pub samples: Vec<Sample>,
    /// Evidence this client had before it was folded into the memory summary and came
    /// back (an upper bound): its exact counts may miss up to this many events.
    #[serde(default, skip_serializing_if = "crate::aggregate::is_zero")]
    pub folded_evidence: u64,
    /// Lines of its that carried an X-Forwarded-For address not believed (it is not a
    /// `--trusted-proxy`), counted from its full record on.
    #[serde(default, skip_serializing_if = "crate::aggregate::is_zero")]
    pub forwarded_lines: u64,
    /// The search engine's crawler its user agents claim to be (see [`CRAWLERS`]), from
    /// its full record on: a claim anyone can make, never checked here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims_crawler: Option<String>,
}

impl ClientReport {
    /// Whether anything about this client is worth a reader's attention.
    pub fn has_evidence(&self) -> bool {
        self.status_4xx > 0 || self.auth_failures > 0 || !self.rules.is_empty()
    }
}

/// What a scan document without `account_case` was counted with.
fn names_as_logged() -> AccountCase {
    AccountCase::Sensitive
}

/// One account in the scan document.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccountReport {
    /// The name failed logins were counted under: lower-cased when
    /// [`ScanReport::account_case`] is insensitive.
    pub user: String,
    /// How lines spelled it, most first, when any spelled it otherwise than `user`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spellings: Vec<(String, u64)>,
    /// `app` (the application's accounts) or `nginx-basic-auth` (htpasswd users).
    pub realm: String,
    pub auth_failures: u64,
    /// Distinct clients that failed on this account.
    pub ips: usize,
    /// `ips` is a lower bound: more clients were seen than remembered.
    pub ips_at_least: bool,
    pub clients: Vec<ClientKey>,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    pub window_auth_failures: u64,
    /// `window_auth_failures` is a lower bound (times kept in coarser buckets).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub window_at_least: bool,
    pub lock: bool,
    pub reasons: Vec<String>,
    pub samples: Vec<Sample>,
    /// Failed logins this account had before it was folded into the memory summary and
    /// came back (an upper bound): its exact counts may miss up to this many.
    #[serde(default, skip_serializing_if = "crate::aggregate::is_zero")]
    pub folded_evidence: u64,
}

/// An address that crossed a threshold but will not be blocked.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spared {
    pub ip: ClientKey,
    pub reason: String,
}

/// A client that an entry of the live blocklist already covers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AlreadyBlocked {
    pub ip: ClientKey,
    /// The live entry that covers it.
    pub by: String,
}

/// The runbook's symptoms.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IncidentReport {
    pub requests: u64,
    pub status_5xx: u64,
    /// Minutes in which more than 5% of answers were 5xx.
    pub minutes_over_5pct_5xx: Vec<MinuteReport>,
    pub timed_requests: u64,
    pub slow_requests: u64,
    pub slow_threshold_seconds: f64,
    pub top_slow_endpoints: Vec<(String, u64)>,
    pub top_5xx_endpoints: Vec<(String, u64)>,
    /// Requests the client closed before the answer (nginx's 499): never evidence against
    /// the client, and a sign of a slow upstream.
    #[serde(default)]
    pub status_499: u64,
    #[serde(default)]
    pub top_499_endpoints: Vec<(String, u64)>,
    /// Lines with a failed-login detection, the clients and accounts (of any realm) they
    /// came from and named, and the minute with the most: a botnet that stays under every
    /// per-client and per-account threshold shows here. Clients and accounts are those
    /// the bounded tables held (`stats.memory_summary` says when some were folded).
    #[serde(default)]
    pub failed_logins: u64,
    #[serde(default)]
    pub failed_login_clients: u64,
    #[serde(default)]
    pub failed_login_accounts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busiest_failed_login_minute: Option<FailedLoginMinute>,
    /// The networks (IPv4 /24, IPv6 /48) of two or more clients with failed logins, most
    /// failed logins first (at most five): where a botnet keeps every address under the
    /// threshold, its addresses often share a few networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_login_networks: Vec<NetworkCount>,
    /// The clients that sent the most requests (at most five), whatever they were
    /// answered: a flood answered 503 by `limit_req` or by a failing upstream counts
    /// against no client, and the reader must still see who sent it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub busiest_clients: Vec<BusyClient>,
}

/// A client among those that sent the most requests.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BusyClient {
    pub ip: ClientKey,
    pub requests: u64,
    /// Its share of the requests of every client, rounded to 0.001.
    pub share: f64,
    pub status_5xx: u64,
}

/// Failed logins from the clients of one network.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetworkCount {
    pub network: String,
    pub clients: u64,
    pub failed_logins: u64,
}

/// The minute with the most failed logins.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailedLoginMinute {
    pub minute: String,
    pub failed_logins: u64,
}

/// One minute of traffic.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MinuteReport {
    pub minute: String,
    pub requests: u64,
    pub status_5xx: u64,
    pub rate_5xx: f64,
}

/// A detection's id and meaning, for readers of the document.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RuleReport {
    pub id: String,
    pub description: String,
}

/// The whole scan document (`--output json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScanReport {
    pub stats: Stats,
    pub thresholds: Thresholds,
    pub ips: Vec<ClientReport>,
    /// Clients left out of `ips`, which holds the first 1000 (proposals first, then by
    /// the busiest window's failed logins and 4xx, then by requests).
    pub ips_omitted: usize,
    pub accounts: Vec<AccountReport>,
    /// How account names were told apart, and so how `account-lock.sql` finds them. A
    /// document from before this field counted names as logged.
    #[serde(default = "names_as_logged")]
    pub account_case: AccountCase,
    pub blocklist: Vec<String>,
    pub lock_accounts: Vec<String>,
    pub spared: Vec<Spared>,
    /// Clients over a threshold that the live blocklist (`--current`) already blocks:
    /// blocked clients keep producing 403s, which must not look like a new attack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub already_blocked: Vec<AlreadyBlocked>,
    pub incident: IncidentReport,
    pub rules: Vec<RuleReport>,
    /// With `--follow`: every proposal announced during the run, including those whose
    /// evidence has since been evicted from the window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub follow_proposals: Vec<crate::follow::Announcement>,
    /// With `--loki`: what was read of each query's window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loki: Vec<crate::loki::QueryCoverage>,
}

/// Who the failed logins came from and named, as the bounded tables held them.
struct Failing {
    clients: u64,
    accounts: u64,
    networks: Vec<NetworkCount>,
}

/// How many clients (full records and compact entries) and accounts of any realm held a
/// failed login, and the networks with the most.
fn failing_clients_and_accounts(agg: &Aggregator) -> Failing {
    let records = agg.clients.iter().map(|(k, c)| (*k, c.auth_failures));
    let light =
        agg.light.iter().map(|(k, l)| (*k, l.events().iter().filter(|e| e.is_failed_login()).count() as u64));
    let failing: Vec<(ClientKey, u64)> = records.chain(light).filter(|(_, n)| *n > 0).collect();
    let accounts =
        agg.accounts.values().flat_map(|users| users.values()).filter(|a| a.auth_failures > 0).count();
    Failing { clients: failing.len() as u64, accounts: accounts as u64, networks: busiest_networks(&failing) }
}

/// How many clients [`IncidentReport::busiest_clients`] names.
const BUSIEST_CLIENTS: usize = 5;

/// The clients (full records and compact entries) that sent the most requests, most
/// first, then in address order. A heap of the few kept so far, not a list of every
/// client (a scan may hold hundreds of thousands); a client enters it only when it beats
/// the least kept, and only the few kept are asked for their 5xx: pushing every client
/// and counting every compact entry's statuses cost ~280 instructions a client.
fn busiest_clients(agg: &Aggregator) -> Vec<BusyClient> {
    use std::cmp::Reverse;
    let records = agg.clients.iter().map(|(k, c)| (c.requests, Reverse(*k)));
    let light = agg.light.iter().map(|(k, l)| (l.requests, Reverse(*k)));
    let (mut total, mut top) = (0u64, std::collections::BinaryHeap::new());
    for entry in records.chain(light) {
        total += entry.0;
        if top.len() < BUSIEST_CLIENTS {
            top.push(Reverse(entry));
        } else if top.peek().is_some_and(|Reverse(least)| entry > *least) {
            top.pop();
            top.push(Reverse(entry));
        }
    }
    let share = |n: u64| (n as f64 / total.max(1) as f64 * 1000.0).round() / 1000.0;
    let mut busiest: Vec<_> = top.into_iter().map(|Reverse(entry)| entry).filter(|e| e.0 > 0).collect();
    busiest.sort_by(|a, b| b.cmp(a));
    let busy = |(requests, Reverse(ip))| BusyClient {
        ip,
        requests,
        share: share(requests),
        status_5xx: status_5xx(agg, &ip),
    };
    busiest.into_iter().map(busy).collect()
}

/// The 5xx answers to `key`, from its full record or its compact entry.
fn status_5xx(agg: &Aggregator, key: &ClientKey) -> u64 {
    let light = || agg.light.get(key).map(|l| l.statuses().filter(|(s, _)| *s >= 500).map(|(_, n)| n).sum());
    agg.clients.get(key).map(|c| c.status_5xx).or_else(light).unwrap_or(0)
}

/// Networks a block of addresses is usually handed out in, for [`NetworkCount`].
const NETWORK_V4: u8 = 24;
const NETWORK_V6: u8 = 48;

/// The networks of two or more of `clients` (each with its failed logins), most failed
/// logins first, then in address order; at most five.
fn busiest_networks(clients: &[(ClientKey, u64)]) -> Vec<NetworkCount> {
    let mut by_net: std::collections::BTreeMap<ipnet::IpNet, (u64, u64)> = Default::default();
    for (key, n) in clients {
        let prefix = if key.0.addr().is_ipv4() { NETWORK_V4 } else { NETWORK_V6 };
        let net =
            ipnet::IpNet::new(key.0.addr(), prefix.min(key.0.prefix_len())).expect("a valid prefix").trunc();
        let entry = by_net.entry(net).or_default();
        (entry.0, entry.1) = (entry.0 + 1, entry.1 + n);
    }
    let mut nets: Vec<_> = by_net.into_iter().filter(|(_, (clients, _))| *clients >= 2).collect();
    nets.sort_by(|a, b| b.1.1.cmp(&a.1.1).then_with(|| a.0.cmp(&b.0)));
    nets.truncate(5);
    nets.into_iter()
        .map(|(net, (clients, failed_logins))| NetworkCount {
            network: net.to_string(),
            clients,
            failed_logins,
        })
        .collect()
}

/// The least evidence on which any client threshold can fire.
fn lowest_client_threshold(t: &Thresholds, rules: &RuleSet) -> u64 {
    let rule_thresholds = rules.rules().iter().filter_map(|r| r.threshold.map(u64::from));
    rule_thresholds.chain([t.client_4xx, t.client_auth_failures]).min().unwrap_or(1).max(1)
}

/// Turns what a scan learned into proposals.
pub fn decide(
    mut agg: Aggregator,
    thresholds: &Thresholds,
    spare: &SparePolicy,
    rules: &RuleSet,
) -> ScanReport {
    agg.settle();
    // Light entries hold at most a few events (`LIGHT_EVENTS`, fewer than the 4xx and
    // failed-login thresholds when a scan sets its limits with `Limits::below_threshold`):
    // judged only when a threshold is that low. The rest (most clients: they never sent any
    // evidence) can cross no threshold; only the few the report lists get a full record.
    let lowest = lowest_client_threshold(thresholds, rules);
    let failing = failing_clients_and_accounts(&agg);
    let busiest = busiest_clients(&agg);
    let mut times = agg.request_times.take();
    let mut judged_light =
        |key: &ClientKey, l: &Light| l.evidence() >= lowest || over_rate(times.as_mut(), key, thresholds);
    let (heavy, quiet): (Vec<_>, Vec<_>) = agg.light.into_iter().partition(|(k, l)| judged_light(k, l));
    let heavy = heavy.into_iter().map(|(key, l)| (key, Box::new(ClientStats::from_light(l))));
    let mut judge_timed = |key: ClientKey, mut c: Box<ClientStats>| {
        c.times_requests = times.as_mut().and_then(|t| t.take(&key)).map(Box::new);
        judge(key, c, thresholds, spare, rules)
    };
    let mut judged: Vec<Judged> =
        agg.clients.into_iter().chain(heavy).map(|(k, c)| judge_timed(k, c)).collect();
    let quiet_total = quiet.len();
    let listed = most_notable_quiet(quiet, thresholds);
    let quiet_omitted = quiet_total - listed.len();
    let listed = listed.into_iter().map(|(key, l)| (key, Box::new(ClientStats::from_light(l))));
    judged.extend(listed.map(|(k, c)| judge_timed(k, c)));
    judged.sort_by(|a, b| b.rank().cmp(&a.rank()).then_with(|| a.key.cmp(&b.key)));
    let blocklist = judged.iter().filter(|j| j.block()).map(|j| j.key.to_string()).collect();
    let spared =
        judged.iter().filter_map(|j| j.spared.clone().map(|reason| Spared { ip: j.key, reason })).collect();
    let ips_omitted = judged.len().saturating_sub(REPORT_CLIENTS) + quiet_omitted;
    // Full reports (top lists, samples) only for the clients the document shows.
    let unlisted = judged.split_off(judged.len().min(REPORT_CLIENTS));
    drop_elsewhere(unlisted);
    let ips: Vec<ClientReport> = judged.into_iter().map(|j| client_report(j, rules)).collect();
    let mut accounts: Vec<AccountReport> = agg
        .accounts
        .into_iter()
        .flat_map(|(realm, users)| users.into_iter().map(move |(user, a)| (realm.clone(), user.into(), a)))
        .map(|(realm, user, a)| account_report(&realm, user, a, thresholds, rules))
        .collect();
    accounts.sort_by(|a, b| {
        (b.lock, b.window_auth_failures, b.auth_failures)
            .cmp(&(a.lock, a.window_auth_failures, a.auth_failures))
            .then_with(|| (&a.realm, &a.user).cmp(&(&b.realm, &b.user)))
    });
    let lock_accounts = accounts.iter().filter(|a| a.lock).map(|a| a.user.clone()).collect();
    let mut stats = agg.stats;
    stats.memory_summary = crate::aggregate::MemorySummary::of(&agg.summary);
    stats.request_times_dropped += times.map_or(0, |t| t.dropped);
    ScanReport {
        stats,
        thresholds: thresholds.clone(),
        ips,
        ips_omitted,
        accounts,
        account_case: agg.account_case,
        blocklist,
        lock_accounts,
        spared,
        incident: incident_report(agg.incident, failing, busiest),
        rules: rules
            .rules()
            .iter()
            .map(|r| RuleReport { id: r.id.to_string(), description: r.description.to_string() })
            .collect(),
        follow_proposals: Vec::new(),
        loki: Vec::new(),
        already_blocked: Vec::new(),
    }
}

/// Frees `garbage` on a thread of its own. The clients a report does not list hold
/// thousands of small allocations (top lists, samples, windows); freeing them took ~35 ms
/// of a 300 MB scan's serial tail, during which the report could already be written.
fn drop_elsewhere<T: Send + 'static>(garbage: T) {
    // Under cargo-fuzz (`--cfg fuzzing`) the leak check after each input counted a
    // detached thread that had not ended yet (its handle, name and thread-local
    // bookkeeping) as leaked: there, free in place.
    if cfg!(fuzzing) {
        return drop(garbage);
    }
    // When no thread can be started, the closure and what it holds are dropped here.
    let _ = std::thread::Builder::new().name("drop".into()).spawn(move || drop(garbage));
}

/// The busiest window of `l`'s failed logins (`failed: true`) or 4xx answers, as its
/// record would count them ([`client_verdict`]'s `window_auth_failures`, `window_4xx`).
fn light_window(l: &Light, window: i64, failed: bool) -> u64 {
    let mut times = crate::aggregate::window::EventTimes::default();
    l.events().iter().filter(|e| e.is_failed_login() == failed).for_each(|e| times.add(e.time()));
    times.busiest(window).0
}

/// The quiet light entries that could make the report's list: the [`REPORT_CLIENTS`]
/// first in its order (see [`Judged::rank`]; none of them can be proposed or spared).
fn most_notable_quiet(quiet: Vec<(ClientKey, Light)>, t: &Thresholds) -> Vec<(ClientKey, Light)> {
    if quiet.len() <= REPORT_CLIENTS {
        return quiet;
    }
    // A light entry holds no other rule hits or top lists: of its verdict only the busiest
    // windows of its failed logins and 4xx answers can be other than zero. Counted from
    // its events alone: a record and a verdict built for each of tens of thousands of
    // quiet clients were most of a scan's serial tail.
    let rank = |l: &Light| (light_window(l, t.window, true), light_window(l, t.window, false), l.requests);
    let mut ranked: Vec<((u64, u64, u64), ClientKey, Light)> =
        quiet.into_iter().map(|(k, l)| (rank(&l), k, l)).collect();
    ranked.select_nth_unstable_by(REPORT_CLIENTS, |a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    ranked.truncate(REPORT_CLIENTS);
    ranked.into_iter().map(|(_, k, l)| (k, l)).collect()
}

/// A client with its verdict, before its report is built.
struct Judged {
    key: ClientKey,
    stats: Box<crate::aggregate::ClientStats>,
    verdict: Verdict,
    spared: Option<String>,
}

impl Judged {
    fn block(&self) -> bool {
        !self.verdict.reasons.is_empty() && self.spared.is_none()
    }

    /// Proposals first, then spared clients over a threshold, then by the busiest
    /// window's failed logins and 4xx, then by requests.
    fn rank(&self) -> (bool, bool, u64, u64, u64) {
        let v = &self.verdict;
        (self.block(), self.spared.is_some(), v.window_auth_failures, v.window_4xx, self.stats.requests)
    }
}

fn judge(
    key: ClientKey,
    mut c: Box<crate::aggregate::ClientStats>,
    t: &Thresholds,
    spare: &SparePolicy,
    rules: &RuleSet,
) -> Judged {
    // Aggregate rules look at failed logins and 4xx, which also set these counters; a
    // flood may have neither.
    let has_evidence = c.status_4xx > 0 || c.auth_failures > 0 || !c.times_rules.is_empty();
    let has_evidence = has_evidence || t.client_request_rate.is_some();
    let mut verdict = if has_evidence { client_verdict(&mut c, t, rules) } else { Verdict::default() };
    let over = !verdict.reasons.is_empty();
    let mut spared = over.then(|| spare.spare_reason(&key)).flatten();
    // A spared client is told only that it may be a proxy of yours; a proposal is read
    // with every note a live announcement carries.
    match &mut spared {
        Some(why) => {
            if let Some(note) = forwarded_note(c.forwarded_lines) {
                *why = format!("{why}; {note}");
            }
        }
        None if over => verdict.reasons.extend(proposal_notes(&c)),
        None => {}
    }
    Judged { key, stats: c, verdict, spared }
}

/// What a client over a threshold that sent X-Forwarded-For (not believed: it is not a
/// `--trusted-proxy`) must be read with: it may be the user's own proxy or load balancer,
/// every client behind it counted as it. Said, not decided: an attacker can send the
/// header too, and one that did would otherwise never be proposed.
fn forwarded_note(lines: u64) -> Option<String> {
    (lines > 0).then(|| {
        format!(
            "it sent X-Forwarded-For or a header naming the client (X-Real-IP, CF-Connecting-IP...) on {lines} \
             line(s): if it is a proxy or load balancer of yours, pass \
             --trusted-proxy with its address or range to count the clients behind it (blocking it blocks them all)"
        )
    })
}

/// Search engines' crawlers a user agent may claim, each with the domains a real one's
/// address resolves back to (the way each vendor documents to verify its crawler).
const CRAWLERS: [(&str, &str); 5] = [
    ("Googlebot", "googlebot.com, google.com or googleusercontent.com"),
    ("bingbot", "search.msn.com"),
    ("Applebot", "applebot.apple.com"),
    ("YandexBot", "yandex.ru, yandex.net or yandex.com"),
    ("Baiduspider", "baidu.com or baidu.jp"),
];

/// What a proposed client whose user agent names a search engine's crawler must be read
/// with. A real crawler following the links a deploy broke gets 404s at a scanner's
/// rate, and blocking it drops the site from the search index; but the header is the
/// client's to write and scanners often claim to be Googlebot, so it is said, not
/// decided (as [`forwarded_note`]).
fn crawler_note(c: &crate::aggregate::ClientStats) -> Option<String> {
    let (name, domains) = claimed_crawler(c)?;
    Some(format!(
        "its user agent claims to be {name}: a real one's address resolves back to {domains} (`host` of \
         the address, then `host` of the name it gives); scanners claim it too, so check before blocking"
    ))
}

/// The notes a proposal of `c` is read with ([`forwarded_note`], [`crawler_note`]), in a
/// scan's document ([`judge`]) and in a live announcement alike.
pub(crate) fn proposal_notes(c: &crate::aggregate::ClientStats) -> impl Iterator<Item = String> {
    forwarded_note(c.forwarded_lines).into_iter().chain(crawler_note(c))
}

/// The crawler of [`CRAWLERS`] (and the domains that verify it) that a user agent of `c`'s
/// top list names.
fn claimed_crawler(c: &crate::aggregate::ClientStats) -> Option<(&'static str, &'static str)> {
    let claims = |name: &str| c.user_agents.values().any(|ua| ua.contains(name));
    CRAWLERS.iter().copied().find(|(name, _)| claims(name))
}

/// What the thresholds say about one client or account.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    /// One sentence per crossed threshold; empty when none was crossed.
    pub reasons: Vec<String>,
    /// The busiest window's 4xx answers (clients only).
    pub window_4xx: u64,
    /// The busiest window's failed logins.
    pub window_auth_failures: u64,
    /// The two counts above are lower bounds.
    pub window_at_least: bool,
    /// The largest count behind any crossed threshold.
    pub evidence: u64,
}

impl Verdict {
    fn check(&mut self, count: u64, threshold: u64, what: impl FnOnce() -> String) {
        if count >= threshold {
            self.reasons.push(what());
            self.evidence = self.evidence.max(count);
        }
    }
}

/// How a reason words a window count that is a lower bound (a series kept in buckets
/// coarser than a second, or one that dropped values at its cap; see
/// [`crate::aggregate::window`]).
pub(crate) fn at_least(coarse: bool) -> &'static str {
    if coarse { "at least " } else { "" }
}

/// Checks every client threshold against the busiest window of `c`: the scan's own
/// (4xx, failed logins), each rule's, and the aggregate rules' distinct counts.
pub fn client_verdict(c: &mut crate::aggregate::ClientStats, t: &Thresholds, rules: &RuleSet) -> Verdict {
    let window = human_window(t.window);
    let mut v = Verdict::default();
    let (n, start) = c.times_4xx.busiest(t.window);
    let least = at_least(c.times_4xx.is_coarse());
    v.window_at_least = c.times_4xx.is_coarse() || c.times_auth.is_coarse();
    v.window_4xx = n;
    v.check(n, t.client_4xx, || {
        format!("{least}{n} 4xx answers within {window}{} (threshold {})", since(start), t.client_4xx)
    });
    let (n, start) = c.times_auth.busiest(t.window);
    let least = at_least(c.times_auth.is_coarse());
    v.window_auth_failures = n;
    v.check(n, t.client_auth_failures, || {
        format!(
            "{least}{n} failed logins within {window}{} (threshold {})",
            since(start),
            t.client_auth_failures
        )
    });
    check_rate(&mut v, t, c);
    for (id, times) in c.times_rules.iter_mut() {
        let rule = rules.rule(*id);
        let (Some(threshold), w) = (rule.threshold, rule.window.unwrap_or(t.window)) else { continue };
        let (n, start) = times.busiest(w);
        let least = at_least(times.is_coarse());
        v.check(n, u64::from(threshold), || {
            format!(
                "{least}{n} × {} within {}{} (threshold {threshold})",
                rule.id,
                human_window(w),
                since(start)
            )
        });
    }
    for rule in rules.rules() {
        let (Some(threshold), w) = (rule.threshold, rule.window.unwrap_or(t.window)) else { continue };
        let (distinct, what) = match rule.aggregate {
            Some(AggregateKind::ClientDistinctAccounts) => {
                (&mut c.auth_accounts, "distinct accounts with failed logins")
            }
            Some(AggregateKind::ClientDistinct4xxPaths) => (&mut c.paths_4xx, "distinct paths answered 4xx"),
            _ => continue,
        };
        let (n, start) = distinct.most_distinct(w);
        let least = at_least(distinct.is_coarse());
        v.check(n, u64::from(threshold), || {
            format!(
                "{}: {least}{n} {what} within {}{} (threshold {threshold})",
                rule.id,
                human_window(w),
                since(start)
            )
        });
    }
    v
}

/// Checks the account threshold, and the aggregate account rules, against `a`.
pub fn account_verdict(a: &mut crate::aggregate::AccountStats, t: &Thresholds, rules: &RuleSet) -> Verdict {
    let (n, start) = a.times.busiest(t.window);
    let coarse = a.times.is_coarse();
    let least = at_least(coarse);
    let mut v = Verdict { window_auth_failures: n, window_at_least: coarse, ..Verdict::default() };
    v.check(n, t.account_auth_failures, || {
        format!(
            "{least}{n} failed logins within {}{} from {}{} client(s) (threshold {})",
            human_window(t.window),
            since(start),
            // Past the remembered set, a count of it would read as exact.
            if a.clients_overflow { "at least " } else { "" },
            a.clients.len(),
            t.account_auth_failures
        )
    });
    for rule in rules.rules().iter().filter(|r| r.aggregate == Some(AggregateKind::AccountDistinctClients)) {
        let (Some(threshold), w) = (rule.threshold, rule.window.unwrap_or(t.window)) else { continue };
        let (n, start) = a.client_times.most_distinct(w);
        let least = at_least(a.client_times.is_coarse());
        v.check(n, u64::from(threshold), || {
            format!(
                "{}: failed logins from {least}{n} distinct clients within {}{} (threshold {threshold})",
                rule.id,
                human_window(w),
                since(start)
            )
        });
    }
    v
}

fn client_report(j: Judged, rules: &RuleSet) -> ClientReport {
    let block = j.block();
    let Judged { key: ip, stats: c, verdict, spared } = j;
    let Verdict { reasons, window_4xx, window_auth_failures: window_auth, window_at_least, .. } = verdict;
    let claims_crawler = claimed_crawler(&c).map(|(name, _)| name.to_string());
    ClientReport {
        ip,
        requests: c.requests,
        status_4xx: c.status_4xx,
        status_5xx: c.status_5xx,
        statuses: c.statuses.into_iter().collect(),
        auth_failures: c.auth_failures,
        rules: c.rules.iter().map(|(r, n)| (rules.rule(*r).id.clone(), *n)).collect(),
        first_seen: c.first_seen.map(format_rfc3339),
        last_seen: c.last_seen.map(format_rfc3339),
        window_4xx,
        window_auth_failures: window_auth,
        window_at_least,
        block,
        reasons,
        spared,
        accounts: c.accounts.top(5),
        top_paths: c.paths.top(5),
        top_user_agents: c.user_agents.top(3),
        samples: c.samples.into_vec(),
        folded_evidence: c.folded_evidence,
        forwarded_lines: c.forwarded_lines,
        claims_crawler,
    }
}

/// Why an account of another realm than the application's is not locked, and where to
/// look instead.
fn not_locked_note(realm: &str) -> String {
    let review = match realm {
        "nginx-basic-auth" => "review the htpasswd entry".to_string(),
        other => format!("its accounts are not in the users table; review it in {other} itself"),
    };
    format!("{realm} user: not locked by logwarden; {review}")
}

fn account_report(
    realm: &str,
    user: String,
    mut a: crate::aggregate::AccountStats,
    t: &Thresholds,
    rules: &RuleSet,
) -> AccountReport {
    let verdict = account_verdict(&mut a, t, rules);
    let Verdict { mut reasons, window_auth_failures: window_auth, window_at_least, .. } = verdict;
    // Only the application's accounts can be locked; an htpasswd user or an identity
    // provider's account is reported so that someone reviews it where it lives.
    let lock = !reasons.is_empty() && realm == APP_REALM;
    if !reasons.is_empty() && !lock {
        reasons.push(not_locked_note(realm));
    }
    AccountReport {
        spellings: a.spelled(),
        user,
        realm: realm.to_string(),
        auth_failures: a.auth_failures,
        ips: a.clients.len(),
        ips_at_least: a.clients_overflow,
        clients: a.clients.iter().take(20).copied().collect(),
        first_seen: a.first_seen.map(format_rfc3339),
        last_seen: a.last_seen.map(format_rfc3339),
        window_auth_failures: window_auth,
        window_at_least,
        lock,
        reasons,
        samples: a.samples.into_vec(),
        folded_evidence: a.folded_evidence,
    }
}

fn incident_report(
    mut i: IncidentStats,
    failing: Failing,
    busiest_clients: Vec<BusyClient>,
) -> IncidentReport {
    let busiest = i.failed_login_minutes.iter().max_by_key(|(m, n)| (**n, std::cmp::Reverse(**m)));
    let busiest_failed_login_minute =
        busiest.map(|(m, n)| FailedLoginMinute { minute: format_rfc3339(m * 60), failed_logins: *n });
    let mut minutes: Vec<_> = i.take_minutes().into_iter().collect();
    minutes.sort_unstable();
    let requests = minutes.iter().map(|m| m.1.0).sum();
    let status_5xx = minutes.iter().map(|m| m.1.1).sum();
    let over = minutes
        .iter()
        .filter(|(_, (r, e))| *e * 20 > *r)
        .map(|(m, (r, e))| MinuteReport {
            minute: format_rfc3339(m * 60),
            requests: *r,
            status_5xx: *e,
            rate_5xx: (*e as f64 / *r as f64 * 1000.0).round() / 1000.0,
        })
        .collect();
    IncidentReport {
        requests,
        status_5xx,
        minutes_over_5pct_5xx: over,
        timed_requests: i.timed_requests,
        slow_requests: i.slow_requests,
        slow_threshold_seconds: crate::aggregate::SLOW_REQUEST_SECONDS,
        top_slow_endpoints: i.slow_paths.top(10),
        top_5xx_endpoints: i.paths_5xx.top(10),
        status_499: i.closed_by_client,
        top_499_endpoints: i.paths_closed.top(10),
        failed_logins: i.failed_logins,
        failed_login_clients: failing.clients,
        failed_login_accounts: failing.accounts,
        busiest_failed_login_minute,
        failed_login_networks: failing.networks,
        busiest_clients,
    }
}

/// Whether a compact entry's request times cross the request rate (so that it is judged).
fn over_rate(times: Option<&mut RequestTimes>, key: &ClientKey, t: &Thresholds) -> bool {
    let (Some(limit), Some(series)) = (t.client_request_rate, times.and_then(|times| times.get_mut(key)))
    else {
        return false;
    };
    series.busiest(t.window).0 >= requests_in_window(limit, t.window)
}

/// Requests in a window of `window` seconds that make `per_minute` a minute, rounded up
/// (at least one): 100 a minute is 1,000 in 10 minutes, 150 in 90 seconds.
pub fn requests_in_window(per_minute: u64, window: i64) -> u64 {
    let window = u128::try_from(window.max(1)).unwrap_or(1);
    let n = (u128::from(per_minute) * window).div_ceil(60);
    u64::try_from(n).unwrap_or(u64::MAX).max(1)
}

/// Checks the request rate, when one is set, over the busiest window of the client's
/// request times, where the scan kept them.
fn check_rate(v: &mut Verdict, t: &Thresholds, c: &mut crate::aggregate::ClientStats) {
    if let (Some(limit), Some(times)) = (t.client_request_rate, c.times_requests.as_deref_mut()) {
        check_window_rate(v, t, limit, times);
    }
}

/// The verdict of a client's request times alone (for `--follow`, which checks them as
/// they come, apart from the client's other counts): empty without a request rate.
pub fn rate_verdict(times: &mut crate::aggregate::window::EventTimes, t: &Thresholds) -> Verdict {
    let mut v = Verdict::default();
    if let Some(limit) = t.client_request_rate {
        check_window_rate(&mut v, t, limit, times);
    }
    v
}

/// [`check_rate`] over the busiest window of `times`.
fn check_window_rate(
    v: &mut Verdict,
    t: &Thresholds,
    limit: u64,
    times: &mut crate::aggregate::window::EventTimes,
) {
    let (n, start) = times.busiest(t.window);
    let least = at_least(times.is_coarse());
    v.window_at_least |= times.is_coarse();
    let per_minute = u128::from(n) * 60 / u128::try_from(t.window.max(1)).unwrap_or(1);
    v.check(n, requests_in_window(limit, t.window), || {
        format!(
            "{least}{n} requests within {}{} ({least}{per_minute} a minute; threshold {limit} a minute)",
            human_window(t.window),
            since(start)
        )
    });
}

fn since(start: Option<i64>) -> String {
    start.map(|s| format!(" from {}", format_rfc3339(s))).unwrap_or_default()
}

/// `600` → `10m`.
pub fn human_window(secs: i64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {

    /// A rate a minute is a count over the window, rounded up, never zero, and saturates.
    #[test]
    fn a_rate_a_minute_is_a_count_in_the_window() {
        assert_eq!(requests_in_window(100, 600), 1000);
        assert_eq!(requests_in_window(100, 90), 150);
        assert_eq!(requests_in_window(1, 30), 1);
        assert_eq!(requests_in_window(7, 0), 1);
        assert_eq!(requests_in_window(u64::MAX, i64::MAX), u64::MAX);
    }

    /// A client asking once a minute for three hours and 300 times in five minutes of
    /// them crosses 30 a minute over its busiest ten minutes (310 requests), though it
    /// averages under 3: proposed where its request times are kept, not where they are not.
    #[test]
    fn a_request_rate_is_judged_over_the_busiest_window_where_times_are_kept() {
        let rules = RuleSet::builtin().unwrap();
        let t = Thresholds { client_request_rate: Some(30), ..Thresholds::default() };
        for request_times in [true, false] {
            let times = request_times.then(|| RequestTimes::new(usize::MAX));
            let mut agg = Aggregator { request_times: times, ..Aggregator::default() };
            (0..180).for_each(|m| request(&mut agg, &rules, [203, 0, 113, 1], m * 60, 200, "/"));
            (0..300).for_each(|i| request(&mut agg, &rules, [203, 0, 113, 1], 3600 + i, 200, "/s"));
            let report = decide(agg, &t, &SparePolicy::default(), &rules);
            assert_eq!(
                report.blocklist == ["203.0.113.1"],
                request_times,
                "request times kept: {request_times}"
            );
        }
    }
    use super::*;
    use crate::aggregate::{LineRef, Seen};
    use crate::client::ClientPolicy;
    use crate::parse::{Record, RecordKind};

    fn request(agg: &mut Aggregator, rules: &RuleSet, ip: [u8; 4], t: i64, status: u16, path: &str) {
        let record = Record {
            kind: Some(RecordKind::Access),
            time: Some(t),
            remote_addr: Some(ip.into()),
            status: Some(status),
            path: Some(path.into()),
            ..Record::default()
        };
        let at = LineRef { source: &std::sync::Arc::from("s"), line: t as u64 };
        let seen = Seen { source: "s", at, format: "combined", raw: b"x", record: &record, hits: &[] };
        agg.observe(&seen, rules, &ClientPolicy::default());
    }

    #[test]
    fn quiet_clients_keep_exact_counts_and_are_ranked_without_full_records() {
        let rules = RuleSet::builtin().unwrap();
        let mut agg = Aggregator::default();
        // 1500 quiet clients, client i sending i % 7 + 1 requests.
        for i in 0..1500u32 {
            for n in 0..(i % 7 + 1) {
                request(&mut agg, &rules, [198, 18, (i >> 8) as u8, i as u8], i64::from(n), 200, "/");
            }
        }
        // An attacker: 10 quiet requests, then 70 404s, then 5 more quiet ones.
        let attacker = [203, 0, 113, 9];
        (0..10).for_each(|t| request(&mut agg, &rules, attacker, t, 200, "/"));
        (10..80).for_each(|t| request(&mut agg, &rules, attacker, t, 404, "/x"));
        (80..85).for_each(|t| request(&mut agg, &rules, attacker, t, 503, "/"));
        assert_eq!(agg.clients.len(), 1, "only the client with evidence has a full record");
        let report = decide(agg, &Thresholds::default(), &SparePolicy::default(), &rules);
        let first = &report.ips[0];
        assert_eq!(first.ip.to_string(), "203.0.113.9");
        assert_eq!((first.requests, first.status_4xx, first.status_5xx), (85, 70, 5));
        assert_eq!(first.statuses, BTreeMap::from([(200, 10), (404, 70), (503, 5)]));
        // Top lists count from the full record on: its first four 404s were light events.
        assert_eq!(first.top_paths, vec![("/x".to_string(), 66), ("/".to_string(), 5)]);
        assert!(first.block);
        // Then the busiest quiet clients, by requests: all with 7 come before any with 6.
        assert_eq!(report.ips.len(), REPORT_CLIENTS);
        assert_eq!(report.ips_omitted, 1501 - REPORT_CLIENTS);
        let sevens = (0..1500).filter(|i| i % 7 == 6).count();
        assert!(report.ips[1..=sevens].iter().all(|c| c.requests == 7 && c.statuses[&200] == 7));
        assert_eq!(report.ips[sevens + 1].requests, 6);
        assert!(report.stats.memory_summary.is_none(), "nothing was folded");
    }

    #[test]
    fn merging_either_way_round_gives_the_same_report() {
        let rules = RuleSet::builtin().unwrap();
        let fill = |agg: &mut Aggregator, offset: u8, n: u32| {
            for i in 0..n {
                let ip = [198, 18, offset, (i % 200) as u8];
                let status = if i % 3 == 0 { 404 } else { 200 };
                request(agg, &rules, ip, i64::from(i), status, "/p");
            }
        };
        let build = || {
            let (mut small, mut large) = (Aggregator::default(), Aggregator::default());
            fill(&mut small, 1, 50);
            fill(&mut large, 1, 900);
            fill(&mut large, 2, 400);
            (small, large)
        };
        let (mut small, large) = build();
        small.merge(large);
        let (small_b, mut large_b) = build();
        large_b.merge(small_b);
        let report = |agg| {
            serde_json::to_value(decide(agg, &Thresholds::default(), &SparePolicy::default(), &rules).ips)
                .unwrap()
        };
        assert_eq!(report(small), report(large_b));
    }
}

#[cfg(test)]
mod quiet_rank_tests {
    use super::*;
    use crate::aggregate::bounded::LightEvent;

    static RULES: std::sync::LazyLock<RuleSet> = std::sync::LazyLock::new(|| RuleSet::builtin().unwrap());

    proptest::proptest! {
        /// The quiet list's rank counts a light entry's busiest window as its record would.
        #[test]
        fn a_light_entry_is_ranked_by_the_windows_its_record_would_report(
            events in proptest::collection::vec(
                (proptest::option::weighted(0.9, 0i64..2_000), proptest::bool::ANY), 0..=4),
            window in 1i64..1_200,
        ) {
            let failed = RULES.find("backend-auth-failed").unwrap();
            let answers = events.iter().filter(|(_, login)| !login).count() as u64;
            let events = events.iter().map(|&(t, login)| match login {
                true => LightEvent::failed_login(failed, t, None),
                false => LightEvent::new(t, Some(7)),
            });
            let l = Light::with_events(answers, [(404, answers)], (None, None), events, 0);
            let t = Thresholds { window, ..Thresholds::default() };
            let v = client_verdict(&mut ClientStats::from_light(l.clone()), &t, &RULES);
            proptest::prop_assert_eq!(light_window(&l, window, false), v.window_4xx);
            proptest::prop_assert_eq!(light_window(&l, window, true), v.window_auth_failures);
        }
    }
}
