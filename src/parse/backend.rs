//! Application logs: JSON objects, logfmt and plain text. The same field names are
//! recognised in JSON and logfmt (the common spellings of client address, account,
//! time, level, message and event), so a team can switch encoders without losing
//! detection. A JSON object shaped like an access log (a status plus a request or path)
//! becomes an access record: nginx's `escape=json` formats and many ingress setups log so.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

use super::access::parse_status;
use super::{Record, RecordKind, parse_ip, text};
use crate::time;

/// Which record slot a field name fills.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Client,
    ForwardedFor,
    /// A header naming the client alone (X-Real-IP, CF-Connecting-IP...): read as an
    /// X-Forwarded-For of one address when the line has none.
    ClientHeader,
    User,
    Time,
    /// A field that may hold the event's time or another date (`date`, `datetime`): the
    /// time only when no [`Slot::Time`] field gave one (see [`Fields::fall_back`]).
    LooseTime,
    Level,
    Message,
    Event,
    Status,
    Method,
    Path,
    /// A query string logged apart from the path (nginx's `$args`).
    Query,
    Request,
    /// A request target with its query (ECS's `url.original`): the path only when no
    /// path or request field gave one (see [`Fields::fall_back`]).
    Target,
    UserAgent,
    RequestTime,
    /// ECS's `event.outcome`: `failure` joins `event.action` (see [`Fields::finish`]).
    Outcome,
    /// ECS's `event.category`, an array: `authentication` with a failed outcome is a
    /// failed login, whatever the action is called (see [`Fields::finish`]).
    Category,
}

/// What a JSON key is to the reader: the field it fills, if any, and whether an object
/// under it holds fields (read as dotted keys, see [`FieldSeed`]).
#[derive(Clone, Copy)]
struct Role {
    slot: Option<Slot>,
    object: bool,
}

/// The role of a key, flat or dotted, in one table (three lookups in turn measured the
/// same within half a percent of a JSON access scan's parsing, and read less plainly).
/// Dotted names are fields of nested objects, and the same names written flat: Elastic
/// Common Schema (`client.ip`, `user.name`, `http.response.status_code`...) and Node's
/// pino and bunyan request logs (`req.method`, `res.statusCode`).
fn role_of(key: &str) -> Option<Role> {
    use Slot::*;
    let (slot, object) = match key {
        // Objects of fields; the first ones are also a field when their value is a scalar.
        "client" => (Some(Client), true),
        "user" => (Some(User), true),
        "event" => (Some(Event), true),
        "error" => (Some(Message), true),
        "url" => (Some(Path), true),
        "user_agent" => (Some(UserAgent), true),
        "source" | "log" | "http" | "req" | "res" | "response" | "http.request" | "http.response"
        | "req.headers" => (None, true),
        "client_ip" | "clientip" | "clientIp" | "client_addr" | "remote_addr" | "remoteAddr"
        | "remote_ip" | "remoteip" | "remoteIp" | "ip" | "src_ip" | "source_ip" | "sourceIp"
        | "client.ip" | "client.address" | "source.ip" | "source.address" | "req.remoteAddress"
        | "req.ip" => (Some(Client), false),
        "http_x_forwarded_for"
        | "x_forwarded_for"
        | "x-forwarded-for"
        | "forwarded_for"
        | "xff"
        | "x-forward-for"
        | "req.headers.x-forwarded-for" => (Some(ForwardedFor), false),
        "http_x_real_ip"
        | "x_real_ip"
        | "x-real-ip"
        | "real_ip"
        | "realIp"
        | "http_cf_connecting_ip"
        | "cf_connecting_ip"
        | "cf-connecting-ip"
        | "http_true_client_ip"
        | "true_client_ip"
        | "true-client-ip" => (Some(ClientHeader), false),
        "username" | "user_name" | "userName" | "login" | "account" | "email" | "user_email"
        | "remote_user" | "user.name" | "user.email" => (Some(User), false),
        "ts" | "time" | "timestamp" | "@timestamp" | "time_iso8601" | "time_local" | "msec" => {
            (Some(Time), false)
        }
        // An application may log a date of its own (a form's, a header's) beside the
        // event's time, and keys are applied in a map's order, where `date` comes first.
        "date" | "datetime" => (Some(LooseTime), false),
        "level" | "severity" | "lvl" | "loglevel" | "log_level" | "log.level" => (Some(Level), false),
        "msg" | "message" | "err" | "error.message" => (Some(Message), false),
        "event_type" | "eventType" | "action" | "event.action" => (Some(Event), false),
        "event.outcome" => (Some(Outcome), false),
        // An array, so read as an object's value is (through `FieldSeed`, which reads it).
        "event.category" => (Some(Category), true),
        "status"
        | "status_code"
        | "statusCode"
        | "response_code"
        | "http_status"
        | "http.response.status_code"
        | "res.statusCode"
        | "response.statusCode"
        | "response.status_code" => (Some(Status), false),
        "method" | "request_method" | "http_method" | "http.request.method" | "req.method" => {
            (Some(Method), false)
        }
        "request_uri" | "uri" | "path" | "request_path" | "url.path" | "req.url" => (Some(Path), false),
        // Holds the query `url.query` holds too, so it is only a fallback, never joined.
        "url.original" => (Some(Target), false),
        "request" => (Some(Request), false),
        // Not a bare `query`: applications log their database queries under it.
        "args" | "query_string" | "request_query" | "querystring" | "url.query" => (Some(Query), false),
        "http_user_agent"
        | "userAgent"
        | "ua"
        | "agent"
        | "user_agent.original"
        | "req.headers.user-agent" => (Some(UserAgent), false),
        "request_time" => (Some(RequestTime), false),
        _ => return None,
    };
    Some(Role { slot, object })
}

/// Fields gathered from a JSON object or logfmt pairs into the record they become, in
/// place: a record is several hundred bytes, and moving it out of here and into the
/// caller's was a tenth of a JSON access scan.
struct Fields<'r, 'a> {
    record: &'r mut Record<'a>,
    status_seen: bool,
    request_seen: bool,
    /// Two client fields named different addresses (see [`Fields::set_client`]).
    clients_differ: bool,
    /// `record.forwarded_for` came from a one-address client header, which an
    /// X-Forwarded-For field replaces (as [`crate::parse::logformat::Var::ClientHeader`]).
    forwarded_from_header: bool,
    /// A query string logged apart from the path (`"path": "$uri", "args": "$args"`),
    /// joined to a path field when the line ends (a whole request holds its own).
    query: Option<Cow<'a, str>>,
    /// `record.path` came from a path field, not from a whole request.
    path_field: bool,
    /// Values taken only when no other field gave one (few lines have any).
    fallbacks: Option<Fallbacks<'a>>,
    /// A client field was logged without a usable address (see
    /// [`Record::client_unreadable`]).
    client_field_unusable: bool,
    /// ECS's `event.outcome` said `failure`.
    failed: bool,
    /// ECS's `event.category` held `authentication`.
    authentication: bool,
}

impl<'r, 'a> Fields<'r, 'a> {
    /// Fills `record`, which must be empty (default).
    fn new(record: &'r mut Record<'a>) -> Self {
        Fields {
            record,
            status_seen: false,
            request_seen: false,
            clients_differ: false,
            forwarded_from_header: false,
            query: None,
            path_field: false,
            fallbacks: None,
            client_field_unusable: false,
            failed: false,
            authentication: false,
        }
    }

    /// Fills the slot for `key`; the first value for a slot wins.
    fn set(&mut self, key: &str, value: Cow<'a, str>) {
        if let Some(slot) = role_of(key).and_then(|role| role.slot) {
            self.set_slot(slot, value);
        }
    }

    /// [`Fields::set`] for a JSON value: a number read straight into a numeric field,
    /// anything else as its text (which, for a number, is what this spares).
    fn set_scalar(&mut self, slot: Slot, value: Scalar<'a>) {
        let r = &mut *self.record;
        match (slot, value) {
            (Slot::Status, Scalar::Unsigned(n)) => {
                if r.status.is_none() {
                    // What `parse_status` accepts of a number's text: 100 to 599.
                    r.status = (100..=599).contains(&n).then_some(n as u16);
                    self.status_seen = r.status.is_some();
                }
            }
            // As the text would parse: an integer rounds as `as` does, and a float's
            // shortest text reads back as the same float.
            (Slot::RequestTime, Scalar::Unsigned(n)) => r.request_time = Some(n as f64),
            (Slot::RequestTime, Scalar::Signed(n)) => r.request_time = Some(n as f64),
            (Slot::RequestTime, Scalar::Float(v)) => r.request_time = Some(v),
            (slot, value) => {
                if let Some(text) = value.into_text() {
                    self.set_slot(slot, text);
                }
            }
        }
    }

    fn set_slot(&mut self, slot: Slot, value: Cow<'a, str>) {
        let r = &mut *self.record;
        let empty = value.is_empty() || value == "-";
        match slot {
            Slot::Client if empty => self.client_field_unusable = true,
            _ if empty => {}
            Slot::Client => self.set_client(&value),
            Slot::ForwardedFor if r.forwarded_for.is_none() || self.forwarded_from_header => {
                (r.forwarded_for, self.forwarded_from_header) = (Some(value), false);
            }
            Slot::ClientHeader if r.forwarded_for.is_none() => {
                (r.forwarded_for, self.forwarded_from_header) = (Some(value), true);
            }
            Slot::User if r.user.is_none() => r.user = Some(value),
            Slot::Time if r.time.is_none() => r.time = time::parse_any(value.as_bytes()),
            Slot::LooseTime => {
                let f = self.fallbacks.get_or_insert_default();
                f.time = f.time.or_else(|| time::parse_any(value.as_bytes()));
            }
            Slot::Level if r.level.is_none() => r.level = Some(lowercase(value)),
            Slot::Message if r.message.is_none() => r.message = Some(value),
            Slot::Event if r.event.is_none() => r.event = Some(value),
            Slot::Event if r.other_event.is_none() && r.event.as_ref() != Some(&value) => {
                r.other_event = Some(value)
            }
            Slot::Status if r.status.is_none() => {
                r.status = parse_status(value.as_bytes());
                self.status_seen = r.status.is_some();
            }
            Slot::Method if r.method.is_none() => r.method = Some(value),
            Slot::Path if r.path.is_none() => {
                r.path = Some(value);
                (self.request_seen, self.path_field) = (true, true);
            }
            Slot::Query if self.query.is_none() => self.query = Some(value),
            Slot::Target => _ = self.fallbacks.get_or_insert_default().target.get_or_insert(value),
            Slot::Request => self.set_request(value),
            Slot::UserAgent if r.user_agent.is_none() => r.user_agent = Some(value),
            Slot::RequestTime => r.request_time = value.parse().ok(),
            Slot::Outcome => self.failed = value.eq_ignore_ascii_case("failure"),
            Slot::Category => self.authentication |= is_authentication(&value),
            _ => {}
        }
    }

    /// Takes a client field's address, unless another client field named a different
    /// one: then the line names no client. A logfmt line written by `printf` with a user
    /// name of `x ip=198.51.100.9` holds two `ip=` pairs, and the first one is the
    /// attacker's: taking either would let the line's author choose who is blocked.
    fn set_client(&mut self, value: &str) {
        let Some(ip) = parse_ip(value.as_bytes()) else {
            self.client_field_unusable = true;
            return;
        };
        let r = &mut *self.record;
        match r.remote_addr {
            _ if self.clients_differ => {}
            None => r.remote_addr = Some(ip),
            Some(first) if first != ip => (self.clients_differ, r.remote_addr) = (true, None),
            Some(_) => {}
        }
    }

    fn set_request(&mut self, request: Cow<'a, str>) {
        let Ok((method, path)) = super::split_text(request, super::request_words) else { return };
        self.record.method.get_or_insert(method);
        self.record.path = Some(path);
        (self.request_seen, self.path_field) = (true, false);
    }

    /// Decides the record's kind: an access record has a status, a request and a client.
    fn finish(mut self) -> RecordKind {
        if let Some(fallbacks) = self.fallbacks.take() {
            self.fall_back(fallbacks);
        }
        if let (true, Some(query), Some(path)) = (self.path_field, &self.query, &self.record.path) {
            self.record.path = Some(format!("{path}?{query}").into());
        }
        self.name_failed_event();
        let shaped = self.status_seen && self.request_seen;
        let access = shaped && self.record.remote_addr.is_some();
        self.record.client_unreadable =
            shaped && !access && (self.client_field_unusable || self.clients_differ);
        let kind = if access { RecordKind::Access } else { RecordKind::Backend };
        self.record.kind = Some(kind);
        kind
    }
}

/// Values a line may hold that are taken only when no other field gave one.
#[derive(Default)]
struct Fallbacks<'a> {
    /// A request target with its query ([`Slot::Target`]).
    target: Option<Cow<'a, str>>,
    /// A time from a [`Slot::LooseTime`] field.
    time: Option<i64>,
}

impl<'a> Fields<'_, 'a> {
    /// Takes each fallback whose field no other gave.
    fn fall_back(&mut self, f: Fallbacks<'a>) {
        self.record.time = self.record.time.or(f.time);
        // ECS shippers that parse the request less log only `url.original`.
        if let (None, Some(target)) = (&self.record.path, f.target) {
            (self.record.path, self.request_seen, self.path_field) = (Some(target), true, false);
        }
    }
}

impl Fields<'_, '_> {
    /// ECS logs a failed login as an event that failed (`event.outcome: failure`). Of
    /// the category `authentication` it is a failed login whatever its action is called
    /// (`user.session.start` in Okta's, `logon-failed` in Windows', or none): read as the
    /// event `authentication.failure`. Otherwise the action that failed is read as one
    /// event name (`user_login.failure`), which the rules match as any other. An action
    /// without a failed outcome, or one that already says it failed, is kept.
    fn name_failed_event(&mut self) {
        let r = &mut *self.record;
        match (self.failed, &r.event) {
            (false, _) => {}
            (true, _) if self.authentication => r.event = Some(AUTHENTICATION_FAILURE.into()),
            (true, Some(action)) if !says_failed(action) => {
                r.event = Some(format!("{action}.failure").into())
            }
            (true, _) => {}
        }
    }
}

/// The event a failed ECS authentication reads as (see [`Fields::name_failed_event`]).
const AUTHENTICATION_FAILURE: &str = "authentication.failure";

/// Whether an ECS `event.category` value is `authentication`.
fn is_authentication(category: &str) -> bool {
    category.eq_ignore_ascii_case("authentication")
}

/// Whether an event name already says it failed (`auth.failed`, `LOGIN_ERROR`).
fn says_failed(event: &str) -> bool {
    let lower = event.to_ascii_lowercase();
    ["fail", "error", "denied", "reject", "invalid"].iter().any(|word| lower.contains(word))
}

/// Parses a JSON object line (access-shaped or not).
pub fn parse_json(line: &[u8]) -> Option<Record<'_>> {
    let mut record = Record::default();
    parse_json_into(line, &mut record).map(|_| record)
}

/// [`parse_json`] into `out`, which must be empty (default); the record's kind, or
/// `None` (and then `out` may hold part of the line) when the line is no JSON object.
pub fn parse_json_into<'a>(line: &'a [u8], out: &mut Record<'a>) -> Option<RecordKind> {
    if line.first() != Some(&b'{') {
        return None;
    }
    let mut pairs = JsonPairs::new();
    // A line that is UTF-8 throughout (one vectorised check) is read as text, which spares
    // the reader a check of every string it borrows; any other line as bytes, which
    // checks only the strings it reads, as before, so a bad byte in a field nobody reads
    // does not stop the line from being read.
    match super::utf8(line) {
        Some(text) => read_pairs(serde_json::Deserializer::from_str(text), &mut pairs)?,
        None => read_pairs(serde_json::Deserializer::from_slice(line), &mut pairs)?,
    }
    // The order and the duplicates of a key-sorted map: fields are filled in key order,
    // and of a repeated key the last value counts. Order only matters between keys that
    // fill the same fields, so a line without such keys (the usual one) is not sorted.
    if fills_overlap(&pairs) {
        pairs.sort_by(|a, b| a.0.cmp(&b.0).then(a.3.cmp(&b.3)));
    }
    let mut fields = Fields::new(out);
    let mut pairs = pairs.into_iter().peekable();
    while let Some((key, slot, value, top)) = pairs.next() {
        let repeated = pairs.peek().is_some_and(|next| next.0 == key && next.3 == top);
        if let (false, Some(value)) = (repeated, value) {
            fields.set_scalar(slot, value);
        }
    }
    Some(fields.finish())
}

/// Whether two of `pairs` fill the same record fields (a repeated key, or two spellings
/// of one field, or a request and a path), so the order they are applied in matters.
fn fills_overlap(pairs: &[JsonPair<'_>]) -> bool {
    let mut seen = 0u32;
    for (_, slot, _, _) in pairs {
        // A request line fills the method and the path.
        let bit = match slot {
            Slot::Method | Slot::Path | Slot::Request => 1 << Slot::Request as u32,
            other => 1 << *other as u32,
        };
        if seen & bit != 0 {
            return true;
        }
        seen |= bit;
    }
    false
}

/// A JSON object's top-level pairs that name a record field, in document order, strings
/// borrowed from the line when they hold no escape; a value that is no string, number or
/// boolean is `None`; other keys' values are skipped unread. Read straight into this
/// list: a `serde_json::Map` of `Value`s allocated every key and value. Inline: a line
/// names a handful of fields, and a vector grew twice or three times for every line.
type JsonPairs<'a> = smallvec::SmallVec<[JsonPair<'a>; 8]>;

/// A key that names a field, the field, its value when it is a scalar, and the length of
/// the line's own key it was read under (`event` for `event.outcome` in `"event":
/// {"outcome": ...}`). A map holds that and `"event.outcome"` as two keys, the shorter
/// first: so of two pairs of one dotted key, the one from the shorter key is applied
/// first, and only one from the same key is a repeat. Keys with a role are short
/// ([`role_of`]), so the length fits.
type JsonPair<'a> = (Cow<'a, str>, Slot, Option<Scalar<'a>>, u8);

/// Reads one JSON object's pairs from `reader` into `pairs`; `None` when the text is no
/// single object (nothing but whitespace may follow it, as `serde_json::from_slice` has it).
fn read_pairs<'de, R: serde_json::de::Read<'de>>(
    mut reader: serde_json::Deserializer<R>,
    pairs: &mut JsonPairs<'de>,
) -> Option<()> {
    serde::de::DeserializeSeed::deserialize(PairsInto(pairs), &mut reader).ok()?;
    reader.end().ok()
}

/// Reads an object's pairs into a list the caller holds: the list is half a kilobyte
/// inline, and returning it through serde's results moved it two or three times a line.
struct PairsInto<'p, 'de>(&'p mut JsonPairs<'de>);

impl<'de> serde::de::DeserializeSeed<'de> for PairsInto<'_, 'de> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for PairsInto<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Set once an object's fields were read: only then can a repeated key have left
        // any behind (most lines hold no object a field is read from).
        let mut nested = false;
        while let Some(JsonText(key)) = map.next_key::<JsonText<'de>>()? {
            let Some(Role { slot, object }) = role_of(&key) else {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            };
            let top = key.len() as u8;
            if nested {
                // Of a repeated key the last value counts, an object's fields with it.
                let under = |k: &str| k.strip_prefix(key.as_ref()).is_some_and(|rest| rest.starts_with('.'));
                self.0.retain(|(k, _, _, t)| *t != top || !under(k));
            }
            if let (Some(slot), false) = (slot, object) {
                let JsonScalar(value) = map.next_value()?;
                self.0.push((key, slot, value, top));
                continue;
            }
            let before = self.0.len();
            map.next_value_seed(FieldSeed { pairs: &mut *self.0, key, slot, depth: 1, top })?;
            nested |= self.0.len() > before + usize::from(slot.is_some());
        }
        Ok(())
    }
}

/// How deep [`FieldSeed`] reads nested objects: `http.response.status_code`,
/// `req.headers.user-agent`.
const NESTED_DEPTH: u8 = 3;

/// The value of `key`, which may be a field ([`role_of`] gives `slot`) or an object of
/// fields (`"client": {"ip": ...}` for `client.ip`), or one of either in different
/// loggers (`"user": "bob"` and `"user": {"name": "bob"}`).
struct FieldSeed<'p, 'de> {
    pairs: &'p mut JsonPairs<'de>,
    key: Cow<'de, str>,
    slot: Option<Slot>,
    depth: u8,
    /// The length of the line's own key this value is under (see [`JsonPair`]).
    top: u8,
}

impl<'de> FieldSeed<'_, 'de> {
    fn push<E>(self, value: Option<Scalar<'de>>) -> Result<(), E> {
        if let Some(slot) = self.slot {
            self.pairs.push((self.key, slot, value, self.top));
        }
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for FieldSeed<'_, 'de> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FieldSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<(), E> {
        self.push(Some(Scalar::Text(Cow::Borrowed(v))))
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.push(Some(Scalar::Text(Cow::Owned(v.to_owned()))))
    }

    fn visit_string<E>(self, v: String) -> Result<(), E> {
        self.push(Some(Scalar::Text(Cow::Owned(v))))
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.push(Some(Scalar::Unsigned(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.push(Some(Scalar::Signed(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.push(Some(Scalar::Float(v)))
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.push(Some(Scalar::Bool(v)))
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.push(None)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        // Of an array only ECS's categories are read, for the one that names a failed login.
        if self.slot != Some(Slot::Category) {
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            return self.push(None);
        }
        let mut authentication = false;
        while let Some(Category(named)) = seq.next_element::<Category>()? {
            authentication |= named;
        }
        self.push(authentication.then_some(Scalar::Text(Cow::Borrowed("authentication"))))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // An object where a field's value was expected is still that field's value, no
        // scalar: of a repeated key the last value counts, and this one reads as none.
        if let Some(slot) = self.slot {
            self.pairs.push((self.key.clone(), slot, None, self.top));
        }
        while let Some(JsonText(name)) = map.next_key::<JsonText<'de>>()? {
            let key = format!("{}.{name}", self.key);
            match role_of(&key) {
                Some(Role { slot, .. }) if self.depth < NESTED_DEPTH => {
                    let depth = self.depth + 1;
                    map.next_value_seed(FieldSeed {
                        pairs: &mut *self.pairs,
                        key: key.into(),
                        slot,
                        depth,
                        top: self.top,
                    })?;
                }
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// An element of ECS's `event.category`: whether it is `authentication`. A type of its
/// own, not a [`JsonScalar`]: read in a second place, that one was no longer inlined where
/// every field is read (+2.6% instructions on JSON access lines).
struct Category(bool);

impl<'de> serde::Deserialize<'de> for Category {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CategoryVisitor).map(Category)
    }
}

struct CategoryVisitor;

impl<'de> serde::de::Visitor<'de> for CategoryVisitor {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_str<E>(self, v: &str) -> Result<bool, E> {
        Ok(is_authentication(v))
    }

    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(false)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

/// A JSON string, borrowed when it can be.
struct JsonText<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for JsonText<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(ScalarVisitor).and_then(|v| match v {
            Some(Scalar::Text(text)) => Ok(JsonText(text)),
            _ => Err(serde::de::Error::custom("a key is a string")),
        })
    }
}

/// A string, number or boolean; `None` for anything else.
struct JsonScalar<'a>(Option<Scalar<'a>>);

impl<'de> serde::Deserialize<'de> for JsonScalar<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor).map(JsonScalar)
    }
}

/// A JSON string, number or boolean as read.
enum Scalar<'a> {
    Text(Cow<'a, str>),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Bool(bool),
}

impl<'a> Scalar<'a> {
    /// The value as text: numbers and booleans as `serde_json` prints them.
    fn into_text(self) -> Option<Cow<'a, str>> {
        match self {
            Scalar::Text(text) => Some(text),
            Scalar::Unsigned(n) => Some(n.to_string().into()),
            Scalar::Signed(n) => Some(n.to_string().into()),
            Scalar::Float(v) => serde_json::Number::from_f64(v).map(|n| n.to_string().into()),
            Scalar::Bool(b) => Some(b.to_string().into()),
        }
    }
}

struct ScalarVisitor;

impl<'de> serde::de::Visitor<'de> for ScalarVisitor {
    type Value = Option<Scalar<'de>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Scalar::Text(Cow::Borrowed(v))))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Scalar::Text(Cow::Owned(v.to_owned()))))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Some(Scalar::Text(Cow::Owned(v))))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(Scalar::Unsigned(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(Scalar::Signed(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(Scalar::Float(v)))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Some(Scalar::Bool(v)))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

/// Parses `key=value key="quoted value" ...`; needs at least two pairs, the first at the
/// start of the line, so prose with one `=` in it is not mistaken for logfmt.
pub fn parse_logfmt(line: &[u8]) -> Option<Record<'_>> {
    let mut record = Record::default();
    parse_logfmt_into(line, &mut record).map(|()| record)
}

/// [`parse_logfmt`] into `out`, which must be empty (default); `None` (and then `out`
/// may hold part of the line) when the line is no logfmt.
pub fn parse_logfmt_into<'a>(line: &'a [u8], out: &mut Record<'a>) -> Option<()> {
    let s = super::utf8(line)?;
    let mut fields = Fields::new(out);
    let mut pairs = 0;
    let mut rest = s.trim_start();
    // Each pair goes straight into its field: a line that turns out not to be logfmt
    // is dropped whole, so nothing needs collecting first.
    while !rest.is_empty() {
        let (key, value, after) = logfmt_pair(rest)?;
        fields.set(key, value);
        pairs += 1;
        rest = after.trim_start();
    }
    (pairs >= 2).then(|| {
        fields.finish();
    })
}

/// The `key=value` at the start of `s`, and what follows it.
fn logfmt_pair(s: &str) -> Option<(&str, Cow<'_, str>, &str)> {
    let eq = s.find('=')?;
    let key = &s[..eq];
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-@".contains(&b)) {
        return None;
    }
    let (value, after) = logfmt_value(&s[eq + 1..])?;
    Some((key, value, after))
}

/// A bare value runs to the next space; a quoted one to its closing quote, with `\"`,
/// `\\` and `\n` escapes as Go's logfmt encoders write them.
fn logfmt_value(s: &str) -> Option<(Cow<'_, str>, &str)> {
    let Some(body) = s.strip_prefix('"') else {
        let end = s.find(' ').unwrap_or(s.len());
        return Some((Cow::Borrowed(&s[..end]), &s[end..]));
    };
    // Most quoted values hold no escape: borrowed up to the closing quote.
    if let Some(end) = memchr::memchr2(b'"', b'\\', body.as_bytes())
        && body.as_bytes()[end] == b'"'
    {
        return Some((Cow::Borrowed(&body[..end]), &body[end + 1..]));
    }
    decode_quoted(body).map(|(value, rest)| (Cow::Owned(value), rest))
}

/// A quoted value after its opening quote, decoded a character at a time up to the
/// closing one, and what follows it.
fn decode_quoted(body: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &body[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

static PLAIN_TIME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\[?(\d{4}(?:-\d{2}-\d{2}|/\d{2}/\d{2})[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?)\]?\s")
        .unwrap()
});
static PLAIN_LEVEL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^\[?(trace|debug|info|notice|warn|warning|error|err|fatal|critical|crit)\]?:?(?:\s|$)")
        .unwrap()
});
static PLAIN_CLIENT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)(?:\bfrom|\bip|\bclient(?:_ip)?|\bremote(?:_addr)?|\baddr(?:ess)?)[=:]?\s*\[?"?([0-9A-Fa-f:.]{3,45})"#).unwrap()
});
static PLAIN_USER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!("{USER_PREFIX}{USER_NAME}")).unwrap());
/// What comes before a user name in free text, and the name. Only a name marked as one:
/// `user=`, `for user`, or quoted after a bare `user`. An unquoted word after `user` is as
/// often the message going on ("user does not exist", "user not found"), and an account
/// read from it would be proposed for locking.
const USER_PREFIX: &str = r#"(?i)(?:\b(?:user(?:name)?|account|login|email)[=:]\s*["']?|\bfor (?:invalid )?user\s+["']?|\buser\s+["'])"#;
const USER_NAME: &str = r#"([^\s"',;]+)"#;
/// [`USER_PREFIX`] alone, anchored: where the name of a [`PLAIN_USER`] match begins.
static PLAIN_USER_PREFIX: LazyLock<Regex> = LazyLock::new(|| Regex::new(&format!("^{USER_PREFIX}")).unwrap());

/// The leading timestamp of `s` (without its brackets) and the text after it and the
/// whitespace that ends it: [`PLAIN_TIME`]'s group and the rest, from a `find` instead of
/// the slower `captures`. Exact: the timestamp starts with a digit and ends with a digit
/// or `Z`, so the match is `[`, the timestamp, `]` and one whitespace character, each
/// bracket there or not, and taking them off leaves the group.
fn leading_time(s: &str) -> Option<(&str, &str)> {
    if !s.starts_with(|c: char| c.is_numeric() || c == '[') {
        return None;
    }
    let m = PLAIN_TIME.find(s)?;
    Some((unbracketed(without_last_char(m.as_str())), &s[m.end()..]))
}

/// The header Kubernetes components write with klog (`I0115 10:23:45.123456   7
/// controller.go:190] message`, the ingress-nginx controller's own lines among its access
/// log): the level its first letter stands for, and the message. Its time has no year, so
/// the line keeps the time `kubectl logs --timestamps` gave it, or none.
fn klog_header(s: &str) -> Option<(&'static str, &str)> {
    static KLOG: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^[IWEF]\d{4} \d{2}:\d{2}:\d{2}\.\d{6} +\d+ [^\s\]]+:\d+\] ").unwrap());
    let level = match s.as_bytes().first()? {
        b'I' => "info",
        b'W' => "warning",
        b'E' => "error",
        b'F' => "fatal",
        _ => return None,
    };
    KLOG.find(s).map(|m| (level, &s[m.end()..]))
}

/// A plain line's leading time: RFC 3339 (with `T` or a space), or with slashes as Go's
/// standard logger writes it (`2024/01/15 10:23:45`: Gitea's and many other Go
/// services'), which carries no offset and is taken as UTC, as the nginx error log's is.
fn plain_time(s: &[u8]) -> Option<i64> {
    let mut dashed = [0u8; 48];
    match s.get(4..8) {
        Some([b'/', _, _, b'/']) if s.len() <= dashed.len() => {
            dashed[..s.len()].copy_from_slice(s);
            (dashed[4], dashed[7]) = (b'-', b'-');
            time::parse_rfc3339(&dashed[..s.len()])
        }
        _ => time::parse_rfc3339(s),
    }
}

/// The leading level of `s` (as written) and the text after it: [`PLAIN_LEVEL`]'s group
/// and the rest, from a `find`. Exact as [`leading_time`]: a level word ends with a
/// letter, so after it come only `]`, `:` and one whitespace character, each optional.
fn leading_level(s: &str) -> Option<(&str, &str)> {
    let m = PLAIN_LEVEL.find(s)?;
    let mut group = m.as_str();
    if group.ends_with(char::is_whitespace) {
        group = without_last_char(group);
    }
    Some((unbracketed(group.strip_suffix(':').unwrap_or(group)), &s[m.end()..]))
}

/// `value` in ASCII lower case, copied only when it has an upper-case letter.
fn lowercase(value: Cow<'_, str>) -> Cow<'_, str> {
    match value.bytes().any(|b| b.is_ascii_uppercase()) {
        true => value.to_ascii_lowercase().into(),
        false => value,
    }
}

/// [`PLAIN_USER`]'s group, from two `find`s instead of the slower `captures`: the match,
/// then its prefix alone at the match's start. Exact: the name cannot begin with what
/// the prefix may end with (whitespace, a quote), so the prefix's greedy end is the
/// only one after which the name can follow (property-tested against `captures`).
fn user_name(s: &str) -> Option<&str> {
    let m = PLAIN_USER.find(s)?;
    let prefix = PLAIN_USER_PREFIX.find(m.as_str())?;
    Some(&m.as_str()[prefix.end()..])
}

/// `s` without a leading `[` and a trailing `]`, each where there is one.
fn unbracketed(s: &str) -> &str {
    let s = s.strip_suffix(']').unwrap_or(s);
    s.strip_prefix('[').unwrap_or(s)
}

fn without_last_char(s: &str) -> &str {
    s.char_indices().next_back().map_or(s, |(i, _)| &s[..i])
}

/// Whether free text begins with an address and a space, as an access log line does
/// (`$remote_addr` first). Read as free text, such a line took its client from whatever
/// text named one, such as a user agent of `login failed ip=198.51.100.9`: an attacker
/// could have a bystander proposed for blocking. It is counted unparsed instead, with the
/// hint to give its `log_format`.
fn begins_with_address(s: &str) -> bool {
    s.split_once(' ').is_some_and(|(first, _)| parse_ip(first.as_bytes()).is_some())
}

/// The client a message names (`from 203.0.113.7`, `ip=...`, `client: ...`), when it names
/// one address outside quotes. A quoted value is what someone typed (`for user 'x from
/// 198.51.100.9'`), so an address named inside one is not the sender's. Text naming two
/// addresses names no client: which one is the sender cannot be told from free text, and
/// taking either would let the text's author choose who is blocked.
fn plain_client(rest: &str) -> Option<std::net::IpAddr> {
    let mut quotes = Quotes::default();
    let mut client = None;
    for c in PLAIN_CLIENT.captures_iter(rest) {
        if quotes.inside_at(rest, c.get(0).map_or(0, |m| m.start())) {
            continue;
        }
        let Some(ip) = parse_ip(c[1].trim_end_matches(['.', ':']).as_bytes()) else { continue };
        match client {
            None => client = Some(ip),
            Some(named) if named != ip => return None,
            Some(_) => {}
        }
    }
    client
}

/// Where free text stands in its quoted spans, read once from its start however many
/// places are asked about (in order): asking each from the start took a 150 KB line of
/// `' ip=...` pairs over a second.
#[derive(Default)]
struct Quotes {
    read: usize,
    double: bool,
    single: bool,
}

impl Quotes {
    /// Whether byte `at` (at or after the last asked) falls inside a quoted span: after an
    /// odd number of `"`, or of `'` that stand at a word's edge (an apostrophe inside a
    /// word, as in "couldn't", opens nothing).
    fn inside_at(&mut self, text: &str, at: usize) -> bool {
        let b = text.as_bytes();
        let word = |i: usize| b.get(i).is_some_and(|c| c.is_ascii_alphanumeric());
        let apostrophe = |i: usize| i > 0 && word(i - 1) && word(i + 1);
        for (i, &c) in b.iter().enumerate().take(at).skip(self.read) {
            match c {
                b'"' if !self.single => self.double = !self.double,
                b'\'' if !self.double && !apostrophe(i) => self.single = !self.single,
                _ => {}
            }
        }
        self.read = self.read.max(at);
        self.double || self.single
    }
}

/// Parses free text: an optional leading timestamp and level, then the message. A line
/// with neither a time, a level nor a client address is not recognised as a log line,
/// nor is one that begins with an address: that is an access log of a format not given
/// (see [`begins_with_address`]).
pub fn parse_plain(line: &[u8]) -> Option<Record<'_>> {
    let s = super::utf8(line)?;
    if begins_with_address(s) {
        return None;
    }
    let mut rest = s;
    let mut record = Record { kind: Some(RecordKind::Backend), ..Record::default() };
    if let Some((level, after)) = klog_header(rest) {
        (record.level, rest) = (Some(Cow::Borrowed(level)), after);
    }
    if let Some((time, after)) = leading_time(rest) {
        record.time = plain_time(time.as_bytes());
        rest = after;
    }
    if let Some((level, after)) = leading_level(rest) {
        record.level = Some(lowercase(Cow::Borrowed(level)));
        rest = after.trim_start();
    }
    record.remote_addr = plain_client(rest);
    record.user = user_name(rest).map(Cow::Borrowed);
    if record.time.is_none() && record.level.is_none() && record.remote_addr.is_none() {
        return None;
    }
    record.message = Some(text(rest.as_bytes()));
    Some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reading `parse_json` replaced (a `serde_json::Map` of `Value`s): the reference.
    fn parse_json_via_map(line: &[u8]) -> Option<Record<'static>> {
        if line.first() != Some(&b'{') {
            return None;
        }
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(line).ok()?;
        let mut record = Record::default();
        let mut fields = Fields::new(&mut record);
        let mut flat = Vec::new();
        for (key, value) in object {
            if let Some(role) = role_of(&key) {
                flatten(key, value, role.object, 1, &mut flat);
            }
        }
        for (key, value) in flat {
            fields.set(&key, value);
        }
        fields.finish();
        Some(record)
    }

    /// `value` under `key` as dotted keys and scalar texts, in key order: the fields
    /// [`role_of`] names of an object that holds fields (`object`; below the top,
    /// any), down to [`NESTED_DEPTH`].
    fn flatten(
        key: String,
        value: serde_json::Value,
        object: bool,
        depth: u8,
        out: &mut Vec<(String, Cow<'static, str>)>,
    ) {
        let text: Cow<'static, str> = match value {
            serde_json::Value::String(s) => s.into(),
            serde_json::Value::Number(n) => n.to_string().into(),
            serde_json::Value::Bool(b) => b.to_string().into(),
            // ECS's categories: an array, read for the one that names a failed login.
            serde_json::Value::Array(items) if role_of(&key).and_then(|r| r.slot) == Some(Slot::Category) => {
                if !items.iter().any(|v| v.as_str().is_some_and(is_authentication)) {
                    return;
                }
                "authentication".into()
            }
            serde_json::Value::Object(map) if object && depth < NESTED_DEPTH => {
                for (name, v) in map {
                    let full = format!("{key}.{name}");
                    if role_of(&full).is_some() {
                        flatten(full, v, true, depth + 1, out);
                    }
                }
                return;
            }
            _ => return,
        };
        out.push((key, text));
    }

    proptest::proptest! {
        // Many cases: a field's edge (a status of 600, a float status) is one pair in
        // hundreds, and should be met in every run.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        /// Same record as the map-based reading, whatever the keys' order, repeats, value
        /// types, escapes and nesting (and the same refusal of what is not one object).
        #[test]
        fn json_pairs_read_like_a_map(
            pairs in proptest::collection::vec((
                proptest::sample::select(vec![
                    "remote_addr", "client_ip", "status", "status_code", "request", "uri", "path",
                    "request_method", "request_time", "user", "level", "msg", "ts", "time_iso8601",
                    "http_user_agent", "event", "x", "client", "http", "source", "req",
                    "event.category", "event.outcome", "user.name", "http.request",
                    "url", "url.original", "url.query",
                ]),
                proptest::sample::select(vec![
                    r#""1.2.3.4""#, r#""GET /a HTTP/1.1""#, r#""a \"b\" \u00e9 \\""#, "404", "-1", "0.25", "1e3",
                    "404.0", "99", "600", "-0.0", "1.5e-7", "9007199254740993",
                    "18446744073709551615", "99999999999999999999", "true", "null", r#"{"a":[1,"x"]}"#, r#"[1,"x"]"#,
                    r#""""#, r#""-""#, r#""2024-01-15T10:23:45Z""#,
                    r#"{"ip":"5.6.7.8","name":"bob"}"#, r#"{"action":"user_login","outcome":"failure"}"#,
                    r#""failure""#, r#""Authentication""#, r#"["session","AUTHENTICATION"]"#, r#"["authentication\u0000"]"#,
                    r#"{"category":["authentication"],"outcome":"failure"}"#, r#"{"category":[["authentication"]]}"#,
                    r#"{"method":"POST"}"#, r#"{"original":"/o?q=1","query":"q=1","path":"/p"}"#,
                    r#"{"response":{"status_code":404},"request":{"method":"GET","x":{"y":1}}}"#,
                    r#"{"remoteAddress":"5.6.7.8","method":"POST","url":"/login","headers":{"user-agent":"x"}}"#,
                ]),
            ), 0..8),
            tail in proptest::sample::select(vec!["", " ", "x", "}"]),
        ) {
            let body: Vec<String> = pairs.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let line = format!("{{{}}}{tail}", body.join(","));
            let ours = format!("{:?}", parse_json(line.as_bytes()));
            proptest::prop_assert_eq!(ours, format!("{:?}", parse_json_via_map(line.as_bytes())));
        }
    }

    proptest::proptest! {
        /// A quoted value reads the same with or without the shortcut for values with no
        /// escape before their closing quote (the character-by-character decoding).
        #[test]
        fn quoted_logfmt_values_read_as_decoded_by_chars(
            pieces in proptest::collection::vec(proptest::sample::select(vec![
                "a", " ", "\"", "\\", "n", "t", "é", "=", "x y",
            ]), 0..10),
        ) {
            let body = pieces.concat();
            let ours = logfmt_value(&format!("\"{body}")).map(|(v, rest)| (v.into_owned(), rest.to_string()));
            let reference = decode_quoted(&body).map(|(v, rest)| (v, rest.to_string()));
            proptest::prop_assert_eq!(ours, reference);
        }
    }

    /// The leading time and level by `captures`: the reference for the `find` readings.
    fn leading_by_captures<'a>(re: &Regex, s: &'a str) -> Option<(&'a str, &'a str)> {
        re.captures(s).map(|c| (c.get(1).unwrap().as_str(), &s[c[0].len()..]))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        /// The leading time and level read with `find` are the regexes' groups, on text
        /// shaped like a timestamp and a level, each part there or not or replaced:
        /// brackets, colons, Unicode digits and whitespace.
        #[test]
        fn leading_time_and_level_are_the_regex_groups(
            slots in SLOTS.map(|choices| proptest::sample::select(choices.to_vec())),
        ) {
            let s = slots.concat();
            proptest::prop_assert_eq!(leading_time(&s), leading_by_captures(&PLAIN_TIME, &s));
            proptest::prop_assert_eq!(leading_level(&s), leading_by_captures(&PLAIN_LEVEL, &s));
            let level_first = &s[s.find(|c: char| c.is_alphabetic()).unwrap_or(s.len())..];
            proptest::prop_assert_eq!(leading_level(level_first), leading_by_captures(&PLAIN_LEVEL, level_first));
        }

        /// The user name read with two `find`s is [`PLAIN_USER`]'s group.
        #[test]
        fn user_name_is_the_regex_group(
            pieces in proptest::collection::vec(proptest::sample::select(vec![
                "user", "User", "username", "uſer", "account", "login", "email", "for ", "invalid ", "for invalid user",
                "=", ":", " ", "  ", "\t", "\"", "'", ",", ";", "bob", "a@b.c", "é", "x", "-", "name",
            ]), 0..10),
        ) {
            let s = pieces.concat();
            let by_captures = PLAIN_USER.captures(&s).map(|c| c.get(1).unwrap().as_str());
            proptest::prop_assert_eq!(user_name(&s), by_captures);
        }
    }

    /// The parts of a plain line's start, in order, each with its alternatives.
    const SLOTS: [&[&str]; 12] = [
        &["", "[", "x"],
        &["2024-01-15", "\u{663}024-01-15", "2024-1-15", "2024/01/15", "2024/01-15", ""],
        &["T", " ", "t"],
        &["10:23:45", "10:23"],
        &["", ",123", ".5", "."],
        &["", "Z", "+01:00", "-0500", "+1"],
        &["", "]", "]]"],
        &[" ", "\t", "\u{a0}", "\u{2028}", "", "x"],
        &["", "[", "é"],
        &["info", "WARN", "Error", "err", "crit", "critical", "warning", "warnings", ""],
        &["", "]", ":", "]:", "::"],
        &["", " ", "\u{a0}", "x", " rest"],
    ];

    #[test]
    fn json_backend_fields() {
        let r = parse_json(br#"{"ts":"2024-01-15T10:23:45Z","level":"WARN","event":"auth.failed","user":"bob","client_ip":"203.0.113.9","msg":"bad password"}"#).unwrap();
        assert_eq!(r.kind, Some(RecordKind::Backend));
        assert_eq!(r.user.as_deref(), Some("bob"));
        assert_eq!(r.remote_addr, "203.0.113.9".parse().ok());
        assert_eq!(r.event.as_deref(), Some("auth.failed"));
        assert_eq!(r.level.as_deref(), Some("warn"));
        assert_eq!(r.time, Some(1705314225));
    }

    #[test]
    fn json_access_shape() {
        let r = parse_json(br#"{"time_iso8601":"2024-01-15T10:23:45+00:00","remote_addr":"1.2.3.4","request":"GET /x HTTP/1.1","status":"404","http_user_agent":"ua"}"#).unwrap();
        assert_eq!(r.kind, Some(RecordKind::Access));
        assert_eq!((r.status, r.path.as_deref()), (Some(404), Some("/x")));
        let n = parse_json(br#"{"remote_addr":"1.2.3.4","uri":"/x","status":500}"#).unwrap();
        assert_eq!((n.kind, n.status), (Some(RecordKind::Access), Some(500)));
    }

    /// A header naming the client is kept as a one-address X-Forwarded-For, and an
    /// X-Forwarded-For field replaces it, before or after it.
    #[test]
    fn json_client_header_is_a_forwarded_claim_that_x_forwarded_for_replaces() {
        let forwarded =
            |json: &str| parse_json(json.as_bytes()).unwrap().forwarded_for.map(|f| f.into_owned());
        let head = r#"{"remote_addr":"172.70.1.1","uri":"/x","status":404"#;
        assert_eq!(
            forwarded(&format!(r#"{head},"cf_connecting_ip":"198.51.100.7"}}"#)).as_deref(),
            Some("198.51.100.7")
        );
        let xff = r#""x_forwarded_for":"203.0.113.9""#;
        for (a, b) in [(r#""x_real_ip":"198.51.100.7""#, xff), (xff, r#""x_real_ip":"198.51.100.7""#)] {
            assert_eq!(forwarded(&format!("{head},{a},{b}}}")).as_deref(), Some("203.0.113.9"));
        }
    }

    /// A query logged apart from the path (`"path": "$uri", "args": "$args"`) is joined to
    /// it, in either order; a whole request holds its own query, and wins.
    #[test]
    fn a_query_logged_apart_is_joined_to_its_path() {
        let path = |json: &str| parse_json(json.as_bytes()).unwrap().path.map(|p| p.into_owned());
        let head = r#"{"remote_addr":"203.0.113.9","status":200"#;
        for pairs in [r#""path":"/p","args":"id=1""#, r#""request_query":"id=1","path":"/p""#] {
            assert_eq!(path(&format!("{head},{pairs}}}")).as_deref(), Some("/p?id=1"));
        }
        assert_eq!(path(&format!(r#"{head},"path":"/p","args":""}}"#)).as_deref(), Some("/p"));
        let request = format!(r#"{head},"args":"x=1","request":"GET /r?id=2 HTTP/1.1"}}"#);
        assert_eq!(path(&request).as_deref(), Some("/r?id=2"));
        let app = r#"{"level":"info","path":"/api/users","query":"SELECT * FROM users WHERE id = $1"}"#;
        assert_eq!(path(app).as_deref(), Some("/api/users"));
    }

    /// The event's time comes from a time field, not from a `date` beside it (which an
    /// application may fill from a request: a brute force whose lines each carried a
    /// different `date` from 1910 on was in no window) nor from a duration logged as
    /// `time`; a `date` alone is the time.
    #[test]
    fn the_time_comes_from_a_time_field_before_a_date_or_a_duration() {
        let time = |json: &str| parse_json(json.as_bytes()).unwrap().time;
        let t = Some(1_705_312_801);
        assert_eq!(time(r#"{"time":"2024-01-15T10:00:01Z","date":"1910-01-01T00:00:00Z","msg":"x"}"#), t);
        assert_eq!(time(r#"{"datetime":"1910-01-01T00:00:00Z","ts":1705312801,"msg":"x"}"#), t);
        assert_eq!(time(r#"{"time":0.25,"timestamp":"2024-01-15T10:00:01Z","msg":"x"}"#), t);
        assert_eq!(time(r#"{"date":"2024-01-15T10:00:01Z","msg":"x"}"#), t);
        assert_eq!(logfmt_time("date=1910-01-01T00:00:00Z time=2024-01-15T10:00:01Z msg=x"), t);
    }

    fn logfmt_time(line: &str) -> Option<i64> {
        let mut record = Record::default();
        parse_logfmt_into(line.as_bytes(), &mut record);
        record.time
    }

    /// Two keys naming events with different names keep both: the first a map orders
    /// (`action`) as the event, the other beside it; the same name twice is one.
    #[test]
    fn a_second_event_name_is_kept_beside_the_first() {
        let r = parse_json(br#"{"event":"auth.failed","action":"login","user":"bob"}"#).unwrap();
        assert_eq!((r.event.as_deref(), r.other_event.as_deref()), (Some("login"), Some("auth.failed")));
        let same = parse_json(br#"{"event":"login","action":"login"}"#).unwrap();
        assert_eq!((same.event.as_deref(), same.other_event.as_deref()), (Some("login"), None));
    }

    /// ECS's `url.original` (the target with its query) is the path of a line that logs
    /// no other: whole, not joined to `url.query` again, and after any path or request
    /// field whatever the order.
    #[test]
    fn ecs_url_original_is_the_path_only_without_another() {
        let path = |json: &str| parse_json(json.as_bytes()).unwrap().path.map(|p| p.into_owned());
        let head = r#"{"source":{"ip":"203.0.113.9"},"http":{"response":{"status_code":404}}"#;
        let original = format!(r#"{head},"url":{{"original":"/.env?x=1","query":"x=1"}}}}"#);
        let record = parse_json(original.as_bytes()).unwrap();
        assert_eq!((record.kind, record.path.as_deref()), (Some(RecordKind::Access), Some("/.env?x=1")));
        for url in [
            r#"{"original":"/o?x=1","path":"/p","query":"x=1"}"#,
            r#"{"path":"/p","original":"/o?x=1","query":"x=1"}"#,
        ] {
            assert_eq!(path(&format!(r#"{head},"url":{url}}}"#)).as_deref(), Some("/p?x=1"));
        }
        let request = format!(r#"{head},"url.original":"/o","request":"GET /r HTTP/1.1"}}"#);
        assert_eq!(path(&request).as_deref(), Some("/r"));
    }

    /// An access-shaped line whose client field holds no usable address says so; a line
    /// with no client field at all (an application's own request log) does not.
    #[test]
    fn an_access_shaped_line_with_an_unusable_client_field_is_marked() {
        let unreadable = |json: &str| parse_json(json.as_bytes()).unwrap().client_unreadable;
        let request = r#""status":404,"path":"/.env""#;
        for client in [
            r#""remote_addr":"""#,
            r#""remote_addr":"-""#,
            r#""client_ip":"x""#,
            r#""ip":"1.2.3.4","client_ip":"5.6.7.8""#,
        ] {
            assert!(unreadable(&format!("{{{client},{request}}}")), "{client}");
        }
        assert!(!unreadable(&format!("{{{request}}}")));
        assert!(!unreadable(&format!(r#"{{"remote_addr":"1.2.3.4",{request}}}"#)));
        assert!(!unreadable(r#"{"remote_addr":"","msg":"no request here"}"#));
    }

    #[test]
    fn a_bad_byte_in_a_field_nobody_reads_does_not_hide_the_line() {
        // Read as text when the whole line is UTF-8, as bytes when it is not: the same
        // record either way, and a bad byte only fails the line in a field that is read.
        let good = br#"{"remote_addr":"1.2.3.4","request":"GET /x HTTP/1.1","status":404,"note":"ok"}"#;
        let bad: Vec<u8> = String::from_utf8_lossy(good).replace("ok", "o\\u00ff").into_bytes();
        let mut raw = good.to_vec();
        let at = raw.windows(2).position(|w| w == b"ok").unwrap();
        raw[at] = 0xff;
        for line in [&good[..], &bad[..], &raw[..]] {
            let r = parse_json(line).unwrap();
            assert_eq!(
                (r.kind, r.status, r.path.as_deref()),
                (Some(RecordKind::Access), Some(404), Some("/x"))
            );
        }
        let mut in_read_field = good.to_vec();
        let at = in_read_field.windows(2).position(|w| w == b"/x").unwrap();
        in_read_field[at + 1] = 0xff;
        assert!(parse_json(&in_read_field).is_none(), "a path that is no text is no JSON access record");
    }

    #[test]
    fn logfmt_pairs_and_quotes() {
        let r = parse_logfmt(br#"time=2024-01-15T10:23:45Z level=warn msg="auth failed: \"bad\" password" user=alice ip=198.51.100.7"#).unwrap();
        assert_eq!(r.message.as_deref(), Some(r#"auth failed: "bad" password"#));
        assert_eq!(r.user.as_deref(), Some("alice"));
        assert!(parse_logfmt(b"this is prose with a=b in it").is_none());
        assert!(parse_logfmt(b"a=1").is_none());
    }

    #[test]
    fn plain_text_shapes() {
        let r =
            parse_plain(b"2024-01-15 10:23:45,123 WARN auth failed for user bob from 203.0.113.7").unwrap();
        assert_eq!(r.time, Some(1705314225));
        assert_eq!(r.level.as_deref(), Some("warn"));
        assert_eq!(r.user.as_deref(), Some("bob"));
        assert_eq!(r.remote_addr, "203.0.113.7".parse().ok());
        assert!(parse_plain(b"just some words").is_none());
        let spoof = parse_plain(b"ERROR login failed user=1.1.1.1 from 203.0.113.8").unwrap();
        assert_eq!(spoof.remote_addr, "203.0.113.8".parse().ok());
    }

    #[test]
    fn only_a_word_marked_as_a_name_is_an_account() {
        let user = |line: &str| parse_plain(line.as_bytes()).unwrap().user.map(|u| u.into_owned());
        // The message going on after "user" is not a name.
        assert_eq!(user("WARN login failed: user does not exist, from 203.0.113.7"), None);
        assert_eq!(user("WARN authentication failed: user not found ip=203.0.113.7"), None);
        // A name marked as one is.
        assert_eq!(user(r#"WARN sign-in failed: user "carol" from 203.0.113.7"#).as_deref(), Some("carol"));
        assert_eq!(user("WARN sign-in failed: user 'carol' from 203.0.113.7").as_deref(), Some("carol"));
        assert_eq!(
            user("WARN Failed password for invalid user admin from 203.0.113.7").as_deref(),
            Some("admin")
        );
        assert_eq!(user("WARN login failed username: dave ip=203.0.113.7").as_deref(), Some("dave"));
    }

    #[test]
    fn free_text_never_takes_its_client_from_an_authors_choice() {
        // An access line of a format not given: its user agent names a bystander.
        let access = br#"203.0.113.54 [15/Jan/2024:09:00:00 +0000] "GET / HTTP/1.1" 200 "login failed ip=198.51.100.10""#;
        assert!(parse_plain(access).is_none());
        assert!(parse_plain(b"2001:db8::5 - - [15/Jan/2024:09:00:00 +0000] from 198.51.100.10").is_none());
        // An address inside a quoted value is what someone typed, not the sender.
        let typed = parse_plain(b"WARN login failed for user 'x from 198.51.100.11'").unwrap();
        assert_eq!(typed.remote_addr, None);
        let both =
            parse_plain(b"WARN login failed for user \"x from 198.51.100.11\" from 203.0.113.55").unwrap();
        assert_eq!(both.remote_addr, "203.0.113.55".parse().ok());
        let apostrophe = parse_plain(b"WARN couldn't sign in user 'bob' from 203.0.113.55").unwrap();
        assert_eq!(apostrophe.remote_addr, "203.0.113.55".parse().ok());
        // Two addresses named: which is the sender cannot be told.
        let two = parse_plain(b"WARN login failed for user x from 198.51.100.11 from 203.0.113.55").unwrap();
        assert_eq!(two.remote_addr, None);
        // The same address twice is one.
        let same = parse_plain(b"WARN login failed from 203.0.113.55 (client_ip=203.0.113.55)").unwrap();
        assert_eq!(same.remote_addr, "203.0.113.55".parse().ok());
    }

    #[test]
    fn two_client_fields_naming_different_addresses_name_no_client() {
        let client = |line: &[u8]| parse_logfmt(line).unwrap().remote_addr;
        let ip = |s: &str| s.parse().ok();
        // printf-written logfmt with an injected pair before the real one.
        assert_eq!(client(br#"level=warn msg="login failed" user=x ip=198.51.100.12 ip=203.0.113.56"#), None);
        assert_eq!(client(b"level=warn ip=198.51.100.12 client_ip=203.0.113.56 ip=198.51.100.12"), None);
        // The same address twice is one; a field that is no address does not count.
        assert_eq!(client(b"level=warn ip=203.0.113.56 remote_addr=203.0.113.56"), ip("203.0.113.56"));
        assert_eq!(
            client(br#"level=warn client_ip="203.0.113.5, 10.0.0.1" ip=203.0.113.56"#),
            ip("203.0.113.56")
        );
        let json = parse_json(br#"{"msg":"login failed","ip":"198.51.100.12","remote_addr":"203.0.113.56"}"#);
        assert_eq!(json.unwrap().remote_addr, None);
    }

    #[test]
    fn kubernetes_klog_lines_are_plain_text_with_their_level() {
        let line = br#"W0115 10:23:45.123456       7 controller.go:1214] Service "default/x" does not have any active Endpoint."#;
        let r = parse_plain(line).unwrap();
        assert_eq!((r.level.as_deref(), r.time), (Some("warning"), None));
        assert_eq!(r.message.as_deref(), Some(r#"Service "default/x" does not have any active Endpoint."#));
        // Its message is read as any other: a named client, a marked account.
        let auth =
            parse_plain(b"E0115 10:23:45.123456 1 auth.go:9] login failed for user=bob from 203.0.113.7")
                .unwrap();
        assert_eq!((auth.user.as_deref(), auth.remote_addr), (Some("bob"), "203.0.113.7".parse().ok()));
        // Not klog: another letter, or no `file:line]`.
        assert!(parse_plain(b"X0115 10:23:45.123456 7 controller.go:190] x").is_none());
        assert!(parse_plain(b"I0115 10:23:45.123456 7 no header here").is_none());
    }

    proptest::proptest! {
        /// Asked in order, the quote state read once answers as one read afresh for each
        /// place.
        #[test]
        fn quote_state_read_once_answers_as_afresh(
            text in proptest::collection::vec(proptest::sample::select(vec!["a", "'", "\"", " ", "n't", "x'y"]), 0..30),
            mut places in proptest::collection::vec(0usize..60, 0..8),
        ) {
            let text = text.concat();
            places.iter_mut().for_each(|p| *p = (*p).min(text.len()));
            places.sort_unstable();
            let mut once = Quotes::default();
            for &at in &places {
                proptest::prop_assert_eq!(once.inside_at(&text, at), Quotes::default().inside_at(&text, at));
            }
        }
    }

    #[test]
    fn the_go_loggers_slashed_date_is_read() {
        let r = parse_plain(b"2024/01/15 10:23:45 ...auth.go:201:SignInPost() [I] Failed authentication")
            .unwrap();
        assert_eq!(r.time, Some(1705314225));
        let fraction = parse_plain(b"2024/01/15 10:23:45.123456 WARN x").unwrap();
        assert_eq!(fraction.time, Some(1705314225));
        // Slashes and dashes are not mixed, and a slashed date longer than any time is
        // not read.
        assert_eq!(parse_plain(b"2024/01-15 10:23:45 WARN from 203.0.113.7").unwrap().time, None);
        assert_eq!(plain_time(format!("2024/01/15 10:23:45.{}", "1".repeat(60)).as_bytes()), None);
    }
}
