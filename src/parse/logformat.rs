//! nginx `log_format` definitions compiled into a line matcher.
//!
//! A definition such as `$remote_addr - $remote_user [$time_local] "$request" $status ...`
//! becomes a list of literals and variables. Matching walks the line once: each variable
//! ends where the literal after it begins (found with `memchr::memmem`), and a final
//! literal is matched at the end of the line, so a hostile last field (the user agent in
//! `combined`) cannot shift the fields before it. nginx escapes `"` inside values (`\x22`
//! with `escape=default`, `\"` with `escape=json`), so a quoted value never contains a raw
//! closing quote; with `escape=json` an escaped quote is skipped when looking for the end.

use nom::IResult;
use nom::Parser;
use nom::branch::alt;
use nom::bytes::complete::{escaped_transform, is_not, tag, take_while1};
use nom::character::complete::{char, multispace0, multispace1};
use nom::combinator::{map, opt, value};
use nom::multi::many1;
use nom::sequence::{delimited, preceded};

use std::cmp::Ordering;

use memchr::memmem;

use super::LineBytes;
use crate::error::{Error, Result};

/// The nginx variables logwarden understands; any other variable is matched and ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var {
    RemoteAddr,
    RemoteUser,
    TimeLocal,
    TimeIso8601,
    Msec,
    Request,
    RequestMethod,
    RequestUri,
    Uri,
    Args,
    Status,
    RequestTime,
    UserAgent,
    Referer,
    ForwardedFor,
    /// A header naming the client alone (`$http_x_real_ip`, `$http_cf_connecting_ip`...),
    /// or `$proxy_protocol_addr` beside `$remote_addr`: the client a proxy claims, read as
    /// an X-Forwarded-For of one address when the format logs none (see [`LogFormat::compile`]).
    ClientHeader,
    /// `$realip_remote_addr`: the address that connected, where nginx's realip module
    /// replaced `$remote_addr` with the client. The hop only when `$remote_addr` is not
    /// logged (see [`LogFormat::compile`]).
    RealipRemoteAddr,
    /// `$proxy_protocol_addr`: the client a PROXY protocol header named. The address of
    /// the line when neither `$remote_addr` nor `$realip_remote_addr` is logged, else a
    /// [`Var::ClientHeader`].
    ProxyProtocolAddr,
    Host,
    Other,
}

impl Var {
    fn from_name(name: &str) -> Var {
        match name {
            "remote_addr" => Var::RemoteAddr,
            "realip_remote_addr" => Var::RealipRemoteAddr,
            "proxy_protocol_addr" => Var::ProxyProtocolAddr,
            "remote_user" => Var::RemoteUser,
            "time_local" => Var::TimeLocal,
            "time_iso8601" => Var::TimeIso8601,
            "msec" => Var::Msec,
            "request" => Var::Request,
            "request_method" => Var::RequestMethod,
            "request_uri" => Var::RequestUri,
            "uri" | "document_uri" => Var::Uri,
            "args" | "query_string" => Var::Args,
            "status" => Var::Status,
            "request_time" => Var::RequestTime,
            "http_user_agent" => Var::UserAgent,
            "http_referer" => Var::Referer,
            "http_x_forwarded_for" | "proxy_add_x_forwarded_for" => Var::ForwardedFor,
            "http_x_real_ip" | "http_cf_connecting_ip" | "http_true_client_ip" | "http_fastly_client_ip" => {
                Var::ClientHeader
            }
            "host" | "http_host" | "server_name" => Var::Host,
            _ => Var::Other,
        }
    }
}

/// How nginx escaped variable values in this format (`log_format ... escape=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escape {
    /// `"`, `\` and bytes outside printable ASCII as `\xHH`.
    Default,
    /// JSON string escaping.
    Json,
    /// Nothing escaped.
    None,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Item {
    Literal(Vec<u8>),
    Var(Var),
}

/// A compiled `log_format`.
#[derive(Clone, Debug)]
pub struct LogFormat {
    /// The format's name (`combined`, or the name given in the config).
    pub name: String,
    /// How values are escaped.
    pub escape: Escape,
    items: Vec<Item>,
    /// A prebuilt substring searcher per literal (by item index), so matching a line
    /// never builds one.
    finders: Vec<Option<memmem::Finder<'static>>>,
    /// How many `"` the literals hold: a line with no more than that has none inside a
    /// value, which spares a search per value.
    literal_quotes: usize,
    /// Whether the format begins with [`COMBINED_HEAD`] (`combined`, `main`, ingress-nginx
    /// and most custom formats do), so its head can be matched without the item loop.
    combined_head: bool,
    /// When the format is the head, one variable and a closing literal (`combined`
    /// itself: `"$http_user_agent"`), those two: the value is what lies between the head
    /// and the literal at the end of the line, with no item loop (~120 instructions a
    /// line of `combined`).
    head_tail: Option<(Var, Vec<u8>)>,
}

/// The separators of the first fourteen items of `combined`, in order, each with the
/// index of the byte searched for to find it (its quote, when it has one: a time holds
/// spaces, a byte count none), and the variable that ends where the separator begins:
/// `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
/// "$http_referer" "`.
const COMBINED_HEAD: [(&[u8], usize, Var); 7] = [
    (b" - ", 0, Var::RemoteAddr),
    (b" [", 0, Var::RemoteUser),
    (b"] \"", 2, Var::TimeLocal),
    (b"\" ", 0, Var::Request),
    (b" ", 0, Var::Status),
    (b" \"", 1, Var::Other),
    (b"\" \"", 0, Var::Referer),
];

/// How many of a format's items [`COMBINED_HEAD`] covers: each variable and the
/// separator after it.
const HEAD_ITEMS: usize = 2 * COMBINED_HEAD.len();

/// What the number of quotes in a line tells about matching a format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quotes {
    /// The line cannot have the format's shape.
    Impossible,
    /// Every quote is one of the format's literals.
    OnlyLiterals,
    /// Each value must be checked.
    Unknown,
}

/// The raw (still escaped) value of each variable in one line, by position. Inline up
/// to 24 variables (ingress-nginx logs 17), so matching a line allocates nothing.
pub type Captures<'a> = smallvec::SmallVec<[(Var, &'a [u8]); 24]>;

/// What [`LogFormat::capture_into`] found in a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Matched<'a> {
    /// The line does not have the format's shape.
    No,
    /// It does; every value is in the captures.
    Items,
    /// It does; the values of [`COMBINED_HEAD`] are here, the rest in the captures.
    Head(CombinedHead<'a>),
}

/// The raw values of the first seven variables of `combined` (and of every format that
/// begins like it): `$remote_addr`, `$remote_user`, `$time_local`, `$request`, `$status`,
/// `$body_bytes_sent`, `$http_referer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CombinedHead<'a> {
    /// In [`COMBINED_HEAD`]'s order.
    pub values: [&'a [u8]; COMBINED_HEAD.len()],
}

impl<'a> CombinedHead<'a> {
    /// Each value with its variable, as the item loop would capture them.
    pub fn captures(&self) -> impl Iterator<Item = (Var, &'a [u8])> + '_ {
        COMBINED_HEAD.iter().zip(self.values).map(|(&(_, _, var), value)| (var, value))
    }
}

/// nginx's built-in `combined` format.
pub const COMBINED: &str = r#"$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent""#;
/// The `main` format of nginx's stock nginx.conf and the official Docker image.
pub const MAIN: &str = r#"$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" "$http_x_forwarded_for""#;
/// ingress-nginx's default `log-format-upstream` (its `upstreaminfo` format).
pub const INGRESS: &str = r#"$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_length $request_time [$proxy_upstream_name] [$proxy_alternative_upstream_name] $upstream_addr $upstream_response_length $upstream_response_time $upstream_status $req_id"#;

impl LogFormat {
    /// Compiles a `log_format` string (the concatenated quoted parts of its definition).
    pub fn compile(name: &str, definition: &str, escape: Escape) -> Result<LogFormat> {
        let err = |message: &str| Error::LogFormat { name: name.to_string(), message: message.to_string() };
        let Some(items) = with_hop(tokenize(definition)) else {
            return Err(err(
                "has no $remote_addr (or $realip_remote_addr, $proxy_protocol_addr): logwarden needs the \
                 address that connected; a client header such as $http_x_real_ip is believed only from a \
                 --trusted-proxy, so it cannot stand in for it",
            ));
        };
        if !items.iter().any(|i| matches!(i, Item::Var(Var::Status))) {
            return Err(err("has no $status: logwarden needs the response status"));
        }
        let finders = items
            .iter()
            .map(|i| match i {
                Item::Literal(lit) => Some(memmem::Finder::new(lit).into_owned()),
                Item::Var(_) => None,
            })
            .collect();
        let literal_quotes = items
            .iter()
            .map(|i| match i {
                Item::Literal(lit) => LineBytes::of(lit).quotes,
                Item::Var(_) => 0,
            })
            .sum();
        let head = &tokenize(COMBINED)[..HEAD_ITEMS];
        // The head alone would end with a literal anchored at the end of the line.
        let combined_head = escape == Escape::Default && items.len() > head.len() && items.starts_with(head);
        let head_tail = match &items[head.len().min(items.len())..] {
            [Item::Var(var), Item::Literal(end)] if combined_head => Some((*var, end.clone())),
            _ => None,
        };
        Ok(LogFormat {
            name: name.to_string(),
            escape,
            items,
            finders,
            literal_quotes,
            combined_head,
            head_tail,
        })
    }

    /// Matches a whole line; `None` when the line does not have this format's shape.
    pub fn captures<'a>(&self, line: &'a [u8]) -> Option<Captures<'a>> {
        let mut caps = Captures::new();
        match self.capture_into(line, &LineBytes::of(line), &mut caps) {
            Matched::No => None,
            Matched::Items => Some(caps),
            Matched::Head(head) => {
                caps.insert_many(0, head.captures());
                Some(caps)
            }
        }
    }

    /// [`LogFormat::captures`] into `caps` (cleared first), given what a pass over the
    /// line found (`bytes`, of `line`). The hot path: when the combined head's shortcut
    /// matched, its values come back apart ([`Matched::Head`]) and `caps` holds only the
    /// values after it, so neither is pushed and then looked up by variable again.
    pub fn capture_into<'a>(
        &self,
        line: &'a [u8],
        bytes: &LineBytes<'_>,
        caps: &mut Captures<'a>,
    ) -> Matched<'a> {
        caps.clear();
        let quote_free = match self.quotes(bytes) {
            Quotes::Impossible => return Matched::No,
            quotes => quotes == Quotes::OnlyLiterals,
        };
        if quote_free
            && self.combined_head
            && let Some((head, pos)) = match_combined_head(line)
        {
            let rest = match &self.head_tail {
                Some((var, end)) => tail_value(line, pos, end).map(|value| caps.push((*var, value))),
                None => self.match_items_from(line, caps, true, pos, HEAD_ITEMS),
            };
            return if rest.is_some() { Matched::Head(head) } else { Matched::No };
        }
        match self.match_items(line, caps, quote_free) {
            Some(()) => Matched::Items,
            None => Matched::No,
        }
    }

    /// [`LogFormat::captures`] by the item loop alone, never the combined head's
    /// shortcut: the reference the shortcut is tested against.
    #[cfg(test)]
    pub fn captures_by_item_loop<'a>(&self, line: &'a [u8]) -> Option<Captures<'a>> {
        let mut caps = Captures::new();
        self.match_items(line, &mut caps, self.quotes_only_in_literals(&LineBytes::of(line))).map(|()| caps)
    }

    /// [`LogFormat::captures`] checking every value for quotes, as when a line has more
    /// than the literals: the reference the shortcut is tested against.
    #[cfg(test)]
    pub fn captures_checking_each_value<'a>(&self, line: &'a [u8]) -> Option<Captures<'a>> {
        let mut caps = Captures::new();
        self.match_items(line, &mut caps, false).map(|()| caps)
    }

    /// Whether every `"` of `line` must belong to the format's literals, so no value holds
    /// one and (with `escape=json`) none is escaped: one counting pass over the line in
    /// place of a search per value.
    #[cfg(test)]
    fn quotes_only_in_literals(&self, bytes: &LineBytes<'_>) -> bool {
        self.quotes(bytes) == Quotes::OnlyLiterals
    }

    /// What the count of quotes in a line (`bytes`) tells. Exact, never a guess: the literals
    /// appear in a matching line as they are, and nginx escapes every quote in a value
    /// (`\x22`; `\"` with `escape=json`, which keeps the quote byte), so a line with fewer
    /// quotes than the literals (or, with `escape=default`, any other number) cannot match.
    fn quotes(&self, bytes: &LineBytes<'_>) -> Quotes {
        let n = match self.escape {
            Escape::None => return Quotes::Unknown,
            Escape::Default | Escape::Json => bytes.quotes,
        };
        match (self.escape, n.cmp(&self.literal_quotes)) {
            (_, Ordering::Less) | (Escape::Default, Ordering::Greater) => Quotes::Impossible,
            (Escape::Json, Ordering::Equal) if bytes.backslash => Quotes::Unknown,
            (_, Ordering::Equal) => Quotes::OnlyLiterals,
            _ => Quotes::Unknown,
        }
    }

    fn match_items<'a>(&self, line: &'a [u8], caps: &mut Captures<'a>, quote_free: bool) -> Option<()> {
        self.match_items_from(line, caps, quote_free, 0, 0)
    }

    /// Matches the items from item `i` on, at byte `pos` of the line, just after a
    /// literal (or at the start).
    fn match_items_from<'a>(
        &self,
        line: &'a [u8],
        caps: &mut Captures<'a>,
        quote_free: bool,
        mut pos: usize,
        mut i: usize,
    ) -> Option<()> {
        // Set when a variable's end was found by finding the literal after it there.
        let mut literal_found = false;
        while i < self.items.len() {
            match &self.items[i] {
                Item::Literal(lit) => {
                    if !literal_found && !starts_with(&line[pos..], lit) {
                        return None;
                    }
                    pos += lit.len();
                    literal_found = false;
                }
                Item::Var(var) => {
                    let end = self.var_end(line, pos, i, quote_free)?;
                    let value = &line[pos..end];
                    if !quote_free && !self.may_hold(value) {
                        return None;
                    }
                    caps.push((*var, value));
                    pos = end;
                    literal_found = matches!(self.items.get(i + 1), Some(Item::Literal(_)));
                }
            }
            i += 1;
        }
        (pos == line.len()).then_some(())
    }

    /// Where the variable at item `i`, starting at `pos`, ends.
    fn var_end(&self, line: &[u8], pos: usize, i: usize, quote_free: bool) -> Option<usize> {
        match self.items.get(i + 1) {
            None => Some(line.len()),
            Some(Item::Literal(lit)) if i + 2 == self.items.len() => {
                // The format ends with this literal: anchor it at the end of the line.
                closing_literal_at(line, pos, lit)
            }
            Some(Item::Literal(lit)) => {
                self.find_literal(&line[pos..], lit, i + 1, quote_free).map(|p| pos + p)
            }
            // Two variables with nothing between (`$host$request_uri`): the second starts
            // at the first `/` when it is a URI, else at the next space.
            Some(Item::Var(next)) => {
                let stop = if matches!(next, Var::RequestUri | Var::Uri) { b'/' } else { b' ' };
                Some(memchr::memchr(stop, &line[pos..]).map_or(line.len(), |p| pos + p))
            }
        }
    }

    /// nginx escapes `"` in every value (`\x22`, or `\"` with `escape=json`), so a raw
    /// quote means the line has another shape. This keeps formats that share a prefix
    /// (`combined` and `main`) from reading each other's lines.
    fn may_hold(&self, value: &[u8]) -> bool {
        match self.escape {
            Escape::None => true,
            Escape::Default => memchr::memchr(b'"', value).is_none(),
            Escape::Json => memchr::memchr_iter(b'"', value).all(|p| escaped_at(value, p)),
        }
    }

    fn find_literal(&self, hay: &[u8], lit: &[u8], item: usize, quote_free: bool) -> Option<usize> {
        let mut from = 0;
        loop {
            let p = from + self.find_from(&hay[from..], lit, item)?;
            if quote_free || self.escape != Escape::Json || lit[0] != b'"' || !escaped_at(hay, p) {
                return Some(p);
            }
            from = p + 1;
        }
    }

    /// The first occurrence of `lit` in `hay`. Separators between variables are short
    /// (`" "`, `] "`): a memchr for their first byte then a compare costs less than a
    /// substring search's set-up; long ones use the prebuilt searcher.
    fn find_from(&self, hay: &[u8], lit: &[u8], item: usize) -> Option<usize> {
        if lit.len() > 4 {
            return self.finders[item].as_ref()?.find(hay);
        }
        let mut from = 0;
        loop {
            let p = from + memchr::memchr(lit[0], &hay[from..])?;
            if starts_with(&hay[p..], lit) {
                return Some(p);
            }
            from = p + 1;
        }
    }

    /// The variables this format logs, in order.
    pub fn vars(&self) -> impl Iterator<Item = Var> + '_ {
        self.items.iter().filter_map(|i| match i {
            Item::Var(v) => Some(*v),
            Item::Literal(_) => None,
        })
    }
}

/// Matches [`COMBINED_HEAD`] at the start of a line whose only quotes are the format's
/// own, and returns its values and where the user agent starts. Each separator is looked
/// for once, at its first candidate: `None` means "not decided here", never "no match",
/// and the item loop then decides. Where it answers, the answer is the item loop's
/// (property-tested). Inlined into both callers: the hot one (every `combined` line) lost
/// ~40 instructions a line to the call when the second ([`match_combined_with_extra`])
/// came.
#[inline(always)]
fn match_combined_head(line: &[u8]) -> Option<(CombinedHead<'_>, usize)> {
    // Written out item by item: each call then compares a separator of known length,
    // unrolled, instead of looping over the bytes of one that could be any length.
    let mut at = 0;
    let values = [
        head_item(line, &mut at, COMBINED_HEAD[0])?,
        head_item(line, &mut at, COMBINED_HEAD[1])?,
        head_item(line, &mut at, COMBINED_HEAD[2])?,
        head_item(line, &mut at, COMBINED_HEAD[3])?,
        head_item(line, &mut at, COMBINED_HEAD[4])?,
        head_item(line, &mut at, COMBINED_HEAD[5])?,
        head_item(line, &mut at, COMBINED_HEAD[6])?,
    ];
    Some((CombinedHead { values }, at))
}

/// `items` with one variable as the address that connected ([`Var::RemoteAddr`]):
/// `$remote_addr`, else `$realip_remote_addr`, else `$proxy_protocol_addr`; `None` when
/// none is logged. Behind the realip module `$remote_addr` is the client nginx believed
/// and `$realip_remote_addr` the hop it believed it from, so with both logged the client
/// is `$remote_addr` (the last one logged was taken before, and a format logging the hop
/// second blocked the load balancer). A PROXY protocol address beside `$remote_addr` is
/// the client the balancer claims, believed as X-Forwarded-For is.
fn with_hop(mut items: Vec<Item>) -> Option<Vec<Item>> {
    let logged = |var: Var| items.contains(&Item::Var(var));
    let hop =
        [Var::RemoteAddr, Var::RealipRemoteAddr, Var::ProxyProtocolAddr].into_iter().find(|&v| logged(v))?;
    for item in &mut items {
        let Item::Var(var) = item else { continue };
        *var = match *var {
            v if v == hop => Var::RemoteAddr,
            Var::ProxyProtocolAddr => Var::ClientHeader,
            Var::RealipRemoteAddr => Var::Other,
            v => v,
        };
    }
    Some(items)
}

/// A line that begins as `combined` and goes on, after a space, with fields of a
/// `log_format` that is not known (`$request_time`, upstream timings...): the head's values
/// and the user agent, as `combined` reads the line up to the user agent's closing quote
/// (property-tested). With nginx's default escaping no value holds a raw `"` (it is
/// written `\x22`), so the user agent ends at the first `"` after it opens and nothing
/// after it can move the fields before it; a line with a raw `"` in the head is not read.
/// `None` also where the head's shortcut does not decide.
pub fn match_combined_with_extra(line: &[u8]) -> Option<(CombinedHead<'_>, &[u8])> {
    const HEAD_QUOTES: usize = 5;
    let (head, ua_start) = match_combined_head(line)?;
    if memchr::memchr_iter(b'"', &line[..ua_start]).count() != HEAD_QUOTES {
        return None;
    }
    let ua_end = ua_start + memchr::memchr(b'"', &line[ua_start..])?;
    match &line[ua_end + 1..] {
        [b' ', _, ..] => Some((head, &line[ua_start..ua_end])),
        _ => None,
    }
}

/// The value from `pos` to the literal `end` closing the line, as the item loop reads a
/// last variable.
fn tail_value<'a>(line: &'a [u8], pos: usize, end: &[u8]) -> Option<&'a [u8]> {
    closing_literal_at(line, pos, end).map(|stop| &line[pos..stop])
}

/// Where the literal `lit` that ends a format starts in `line`: anchored at the end of
/// the line, at or after `pos`, so a hostile last value cannot shift the fields before it.
fn closing_literal_at(line: &[u8], pos: usize, lit: &[u8]) -> Option<usize> {
    let start = line.len().checked_sub(lit.len()).filter(|&start| start >= pos)?;
    starts_with(&line[start..], lit).then_some(start)
}

/// One variable's value in [`COMBINED_HEAD`] and the separator after it, from `at` on.
#[inline(always)]
fn head_item<'a>(line: &'a [u8], at: &mut usize, item: (&[u8], usize, Var)) -> Option<&'a [u8]> {
    let (separator, key, _) = item;
    let start = first_candidate(line, *at, separator, key)?;
    let value = &line[*at..start];
    *at = start + separator.len();
    Some(value)
}

/// Where `separator` first occurs at or after `from`, if at the first place its byte
/// `key` occurs: any occurrence has that byte at or after `from + key`, so none can come
/// before. `None` when the separator is not at that first place. A lone `-` (nginx's
/// empty value) is checked without a search: no separator begins with `-`.
#[inline(always)]
fn first_candidate(line: &[u8], from: usize, separator: &[u8], key: usize) -> Option<usize> {
    let rest = line.get(from..)?;
    if rest.first() == Some(&b'-') && starts_with(&rest[1..], separator) {
        return Some(from + 1);
    }
    let start = from + super::near_byte(separator[key], rest.get(key..)?)?;
    starts_with(&line[start..], separator).then_some(start)
}

/// Whether the byte at `p` is preceded by an odd number of backslashes.
fn escaped_at(hay: &[u8], p: usize) -> bool {
    hay[..p].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1
}

fn tokenize(definition: &str) -> Vec<Item> {
    let bytes = definition.as_bytes();
    let mut items = Vec::new();
    let mut literal = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if let Some((name, len)) = variable_at(&bytes[i..]) {
            if !literal.is_empty() {
                items.push(Item::Literal(std::mem::take(&mut literal)));
            }
            items.push(Item::Var(Var::from_name(name)));
            i += len;
        } else {
            literal.push(bytes[i]);
            i += 1;
        }
    }
    if !literal.is_empty() {
        items.push(Item::Literal(literal));
    }
    items
}

/// `$name` or `${name}` at the start of `s`: the name and the bytes it spans.
fn variable_at(s: &[u8]) -> Option<(&str, usize)> {
    let rest = s.strip_prefix(b"$")?;
    let (braced, rest) = match rest.strip_prefix(b"{") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let n = rest.iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').count();
    if n == 0 || (braced && rest.get(n) != Some(&b'}')) {
        return None;
    }
    let name = std::str::from_utf8(&rest[..n]).ok()?;
    Some((name, 1 + n + if braced { 2 } else { 0 }))
}

/// Decodes a value as nginx escaped it. Borrowed when there is nothing to decode.
pub fn unescape(raw: &[u8], escape: Escape) -> std::borrow::Cow<'_, [u8]> {
    if escape == Escape::None || memchr::memchr(b'\\', raw).is_none() {
        return std::borrow::Cow::Borrowed(raw);
    }
    // Runs between backslashes are copied whole: a user agent has one or two escapes in
    // a hundred bytes.
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(p) = memchr::memchr(b'\\', rest) {
        out.extend_from_slice(&rest[..p]);
        let (byte, used) = match escape {
            Escape::Json => decode_json_escape(&rest[p..]),
            Escape::Default | Escape::None => decode_hex_escape(&rest[p..]),
        };
        out.push(byte);
        rest = &rest[p + used..];
    }
    out.extend_from_slice(rest);
    std::borrow::Cow::Owned(out)
}

/// `hay.starts_with(lit)` for the short separators of a format, without a call to
/// `memcmp` per separator per line.
#[inline(always)]
fn starts_with(hay: &[u8], lit: &[u8]) -> bool {
    hay.len() >= lit.len() && hay.iter().zip(lit).all(|(a, b)| a == b)
}

fn decode_hex_escape(s: &[u8]) -> (u8, usize) {
    match s {
        [b'\\', b'x', h, l, ..] => match (hex(*h), hex(*l)) {
            (Some(h), Some(l)) => (h << 4 | l, 4),
            _ => (b'\\', 1),
        },
        _ => (b'\\', 1),
    }
}

/// nginx's `escape=json` writes `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f` and `\u00XX`.
fn decode_json_escape(s: &[u8]) -> (u8, usize) {
    match s {
        [b'\\', b'u', b'0', b'0', h, l, ..] => match (hex(*h), hex(*l)) {
            (Some(h), Some(l)) => (h << 4 | l, 6),
            _ => (b'\\', 1),
        },
        [b'\\', c, ..] => match c {
            b'"' | b'\\' | b'/' => (*c, 2),
            b'n' => (b'\n', 2),
            b'r' => (b'\r', 2),
            b't' => (b'\t', 2),
            b'b' => (8, 2),
            b'f' => (12, 2),
            _ => (b'\\', 1),
        },
        _ => (b'\\', 1),
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Finds `log_format NAME [escape=...] 'part' 'part' ...;` in an nginx configuration.
pub fn from_nginx_conf(conf: &str, wanted: &str) -> Result<LogFormat> {
    let mut rest = conf;
    while let Some(p) = rest.find("log_format") {
        rest = &rest[p + "log_format".len()..];
        if let Ok((_, (name, escape, parts))) = log_format_directive(rest)
            && name == wanted
        {
            return LogFormat::compile(name, &parts.concat(), escape);
        }
    }
    Err(Error::LogFormat {
        name: wanted.to_string(),
        message: "no `log_format` directive with this name in the configuration \
                  (check --log-format-name against the nginx.conf given)"
            .to_string(),
    })
}

type Directive<'a> = (&'a str, Escape, Vec<String>);

fn log_format_directive(input: &str) -> IResult<&str, Directive<'_>> {
    let name = take_while1(|c: char| c.is_alphanumeric() || c == '_' || c == '-');
    let escape = alt((
        value(Escape::Default, tag("escape=default")),
        value(Escape::Json, tag("escape=json")),
        value(Escape::None, tag("escape=none")),
    ));
    let (rest, (_, name, escape, parts, _, _)) = (
        multispace1,
        name,
        opt(preceded(multispace1, escape)),
        many1(preceded(multispace0, quoted_part)),
        multispace0,
        char(';'),
    )
        .parse(input)?;
    Ok((rest, (name, escape.unwrap_or(Escape::Default), parts)))
}

/// One quoted piece of a directive, in single or double quotes, with `\` escapes.
fn quoted_part(input: &str) -> IResult<&str, String> {
    alt((quoted_with('\'', "\\'"), quoted_with('"', "\\\""))).parse(input)
}

/// A string between two `quote`s; `stop` is the quote and the backslash.
fn quoted_with<'a>(
    quote: char,
    stop: &'static str,
) -> impl Parser<&'a str, Output = String, Error = nom::error::Error<&'a str>> {
    let body = escaped_transform(is_not(stop), '\\', nom::character::complete::anychar);
    delimited(char(quote), map(opt(body), Option::unwrap_or_default), char(quote))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decoding one byte at a time: the reference for [`unescape`]'s run copying.
    fn unescape_bytewise(raw: &[u8], escape: Escape) -> Vec<u8> {
        let (mut out, mut i) = (Vec::new(), 0);
        while i < raw.len() {
            let (byte, used) = match (raw[i], escape) {
                (b'\\', Escape::Default) => decode_hex_escape(&raw[i..]),
                (b'\\', Escape::Json) => decode_json_escape(&raw[i..]),
                (b, _) => (b, 1),
            };
            out.push(byte);
            i += used;
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn unescape_matches_bytewise_decoding(
            raw in crate::parse::joined_pieces(vec![
                &b"a"[..], b"\\", b"\\x22", b"\\x2", b"\\xZZ", b"\\\"", b"\\u0041", b"\\u00", b"\\n", b"\\q", b"\xff", b"x",
            ], 0..12),
        ) {
            for escape in [Escape::Default, Escape::Json, Escape::None] {
                proptest::prop_assert_eq!(&*unescape(&raw, escape), &unescape_bytewise(&raw, escape)[..]);
            }
        }
    }

    fn fmt(def: &str) -> LogFormat {
        LogFormat::compile("t", def, Escape::Default).unwrap()
    }

    fn value_of<'a>(caps: &Captures<'a>, var: Var) -> &'a [u8] {
        caps.iter().find(|(v, _)| *v == var).unwrap().1
    }

    /// A line of a combined-like format from hostile pieces, every field included.
    fn combined_like_line(
        pieces: std::ops::Range<usize>,
    ) -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        crate::parse::joined_pieces(
            vec![
                &b"-"[..],
                b" ",
                b" - ",
                b" [",
                b"] \"",
                b"\" ",
                b" \"",
                b"\" \"",
                b"\"",
                b"[",
                b"]",
                b"1.2.3.4",
                b"2001:db8::1",
                b"15/Jan/2024:10:23:45 +0000",
                b"GET / HTTP/1.1",
                b"404",
                b"12",
                b"\\x22",
                b"\\",
                b"\xff",
                b"a",
                b"-\"",
                b"- -",
            ],
            pieces,
        )
    }

    fn combined_shaped(fields: &[Vec<u8>]) -> Vec<u8> {
        let seps: [&[u8]; 8] = [b" - ", b" [", b"] \"", b"\" ", b" ", b" \"", b"\" \"", b"\""];
        fields.iter().zip(seps).flat_map(|(f, s)| f.iter().chain(s).copied()).collect()
    }

    proptest::proptest! {
        /// The combined head's shortcut captures what the item loop captures, on lines
        /// of random pieces and on lines of the right shape with hostile fields, for
        /// every format that begins with the head.
        #[test]
        fn combined_head_agrees_with_the_item_loop(
            random in combined_like_line(0..24),
            // Fields of few pieces: many lines then have only the format's quotes.
            fields in proptest::collection::vec(combined_like_line(0..3), 8),
            tail in combined_like_line(0..3),
        ) {
            let formats = [
                fmt(COMBINED),
                fmt(MAIN),
                fmt(INGRESS),
                fmt(r#"$remote_addr - $remote_user [$time_local] "$request" $status $bytes_sent "$http_referer" "$http_user_agent"#),
            ];
            let shaped = combined_shaped(&fields);
            let with_tail = [&shaped[..], b" \"", &tail, b"\""].concat();
            // The last quote not last: a line the head reads that must still fail.
            let trailing = [&shaped[..], &tail].concat();
            for format in &formats {
                proptest::prop_assert!(format.combined_head);
                for line in [&random, &shaped, &with_tail, &trailing] {
                    proptest::prop_assert_eq!(format.captures(line), format.captures_by_item_loop(line));
                }
            }
        }
    }

    proptest::proptest! {
        /// A line read as `combined` with extra fields is read as `combined` reads it up
        /// to the user agent's closing quote, on random lines and on `combined` lines of
        /// hostile fields followed by hostile extra fields.
        #[test]
        fn combined_with_extra_reads_the_combined_line_it_begins_with(
            random in combined_like_line(0..24),
            fields in proptest::collection::vec(combined_like_line(0..3), 8),
            extra in combined_like_line(1..4),
        ) {
            let with_extra = [&combined_shaped(&fields)[..], b" ", &extra].concat();
            for line in [&random, &with_extra] {
                let Some((head, ua)) = match_combined_with_extra(line) else { continue };
                let end = ua.as_ptr() as usize - line.as_ptr() as usize + ua.len() + 1;
                let mut ours = Captures::new();
                ours.insert_many(0, head.captures());
                ours.push((Var::UserAgent, ua));
                proptest::prop_assert_eq!(Some(ours), fmt(COMBINED).captures_by_item_loop(&line[..end]));
            }
        }
    }

    #[test]
    fn extra_fields_after_combined_are_read_past() {
        let timed = br#"203.0.113.7 - - [15/Jan/2024:10:23:45 +0000] "GET /a HTTP/1.1" 404 12 "-" "curl/8.0 \x22q\x22" rt=0.001 uct="0.000" urt="0.001""#;
        let (head, ua) = match_combined_with_extra(timed).unwrap();
        assert_eq!(head.values[0], b"203.0.113.7");
        assert_eq!(head.values[4], b"404");
        assert_eq!(ua, br#"curl/8.0 \x22q\x22"#);
        // A whole `combined` line has no extra fields; a raw quote in the head is not nginx's.
        let whole =
            br#"203.0.113.7 - - [15/Jan/2024:10:23:45 +0000] "GET /a HTTP/1.1" 404 12 "-" "curl/8.0""#;
        assert!(match_combined_with_extra(whole).is_none());
        assert!(match_combined_with_extra(&[&whole[..], b" "].concat()).is_none());
        let raw = br#"203.0.113.7 - - [15/Jan/2024:10:23:45 +0000] "GET /"a HTTP/1.1" 404 12 "-" "ua" 0.001"#;
        assert!(match_combined_with_extra(raw).is_none());
    }

    #[test]
    fn only_formats_beginning_with_the_head_take_the_shortcut() {
        assert!(COMBINED_HEAD.iter().all(|(sep, key, _)| sep[0] != b'-' && *key < sep.len()));
        let head_only = r#"$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" ""#;
        assert!(!fmt(head_only).combined_head);
        assert!(!fmt(r#"$remote_addr $status "$request""#).combined_head);
        assert!(!LogFormat::compile("j", COMBINED, Escape::Json).unwrap().combined_head);
        // Only a head with one closing variable after it reads its tail without the loop.
        assert_eq!(fmt(COMBINED).head_tail, Some((Var::UserAgent, b"\"".to_vec())));
        assert_eq!(fmt(MAIN).head_tail, None);
        assert_eq!(fmt(INGRESS).head_tail, None);
    }

    #[test]
    fn combined_line() {
        let line = br#"203.0.113.7 - bob [15/Jan/2024:10:23:45 +0000] "GET /a?b=1 HTTP/1.1" 404 12 "-" "curl/8.0 \x22quoted\x22""#;
        let caps = fmt(COMBINED).captures(line).unwrap();
        assert_eq!(value_of(&caps, Var::RemoteAddr), b"203.0.113.7");
        assert_eq!(value_of(&caps, Var::Status), b"404");
        assert_eq!(value_of(&caps, Var::Request), b"GET /a?b=1 HTTP/1.1");
        assert_eq!(&*unescape(value_of(&caps, Var::UserAgent), Escape::Default), br#"curl/8.0 "quoted""#);
    }

    #[test]
    fn a_user_agent_shaped_like_a_log_line_stays_one_field() {
        let line = br#"1.1.1.1 - - [15/Jan/2024:10:23:45 +0000] "GET / HTTP/1.1" 200 1 "-" "x\x22 500 1 \x22-\x22 \x229.9.9.9""#;
        let caps = fmt(COMBINED).captures(line).unwrap();
        assert_eq!(value_of(&caps, Var::RemoteAddr), b"1.1.1.1");
        assert_eq!(value_of(&caps, Var::Status), b"200");
        // Raw quotes cannot come from nginx: such a line is not `combined` at all.
        let raw =
            br#"1.1.1.1 - - [15/Jan/2024:10:23:45 +0000] "GET / HTTP/1.1" 200 1 "-" "x" 500 1 "-" "9.9.9.9""#;
        assert!(fmt(COMBINED).captures(raw).is_none());
    }

    #[test]
    fn combined_does_not_read_main_lines() {
        let line = br#"1.1.1.1 - - [15/Jan/2024:10:23:45 +0000] "GET / HTTP/1.1" 200 1 "-" "ua" "6.6.6.6""#;
        assert!(fmt(COMBINED).captures(line).is_none());
        assert!(fmt(MAIN).captures(line).is_some());
    }

    #[test]
    fn trailing_text_is_not_combined() {
        let line = br#"1.1.1.1 - - [15/Jan/2024:10:23:45 +0000] "GET / HTTP/1.1" 200 1 "-" "ua" 55 0.1"#;
        assert!(fmt(COMBINED).captures(line).is_none());
    }

    #[test]
    fn json_escape_skips_escaped_quotes() {
        let f = LogFormat::compile(
            "j",
            r#"{"ip":"$remote_addr","ua":"$http_user_agent","status":$status}"#,
            Escape::Json,
        )
        .unwrap();
        let line = br#"{"ip":"1.2.3.4","ua":"a \",\"status\":500} b","status":401}"#;
        let caps = f.captures(line).unwrap();
        assert_eq!(value_of(&caps, Var::Status), b"401");
        assert_eq!(&*unescape(value_of(&caps, Var::UserAgent), Escape::Json), br#"a ","status":500} b"#);
    }

    #[test]
    fn reads_format_from_nginx_conf() {
        let conf = r#"
            http {
                log_format  main  '$remote_addr - $remote_user [$time_local] "$request" '
                                  '$status $body_bytes_sent "$http_referer" '
                                  '"$http_user_agent" "$http_x_forwarded_for"';
                log_format api escape=json '{"addr":"$remote_addr","s":$status}';
            }"#;
        let main = from_nginx_conf(conf, "main").unwrap();
        assert_eq!(main.items, fmt(MAIN).items);
        let api = from_nginx_conf(conf, "api").unwrap();
        assert_eq!(api.escape, Escape::Json);
        assert!(from_nginx_conf(conf, "nope").is_err());
    }

    #[test]
    fn rejects_formats_without_client_or_status() {
        assert!(LogFormat::compile("x", "$status $request", Escape::Default).is_err());
        assert!(LogFormat::compile("x", "$remote_addr $request", Escape::Default).is_err());
    }
}
