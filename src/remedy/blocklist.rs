//! The blocklist: what is blocked now, merged with what is proposed, as a ConfigMap patch
//! that a human applies. The runbook's hand-written patch replaced the whole value and
//! silently unblocked everyone blocked before; here the new value is always the union of
//! the live value and the proposals, every entry validated and normalised, and the apply
//! step refuses to run against a ConfigMap that changed since it was read.

use std::collections::BTreeSet;

use ipnet::IpNet;
use serde::Serialize;
use serde_json::{Value, json};

use crate::client::{ClientKey, Ranges};

/// Kubernetes refuses a ConfigMap whose data exceeds 1 MiB.
pub const CONFIGMAP_LIMIT: usize = 1 << 20;

/// Where the blocklist lives and how it is written.
#[derive(Clone, Debug, Serialize)]
pub struct BlocklistTarget {
    pub namespace: String,
    pub configmap: String,
    pub key: String,
    /// The deployment to restart after the patch; `None` when the controller reloads
    /// the ConfigMap by itself (ingress-nginx does).
    pub restart: Option<String>,
}

impl BlocklistTarget {
    /// The runbook's ConfigMap: `nginx-config`, key `blocked-ips`, then a rollout restart.
    pub fn runbook(namespace: &str) -> Self {
        BlocklistTarget {
            namespace: namespace.into(),
            configmap: "nginx-config".into(),
            key: "blocked-ips".into(),
            restart: Some("nginx".into()),
        }
    }

    /// The ingress-nginx controller's ConfigMap and its `block-cidrs` key.
    pub fn ingress_nginx(namespace: &str) -> Self {
        BlocklistTarget {
            namespace: namespace.into(),
            configmap: "ingress-nginx-controller".into(),
            key: "block-cidrs".into(),
            restart: None,
        }
    }
}

/// The live ConfigMap as `kubectl get configmap NAME -o json` prints it.
#[derive(Clone, Debug)]
pub struct CurrentConfigMap {
    /// The whole object, for size checks.
    pub object: Value,
    /// The blocklist key's value, when present.
    pub value: Option<String>,
    pub resource_version: Option<String>,
}

impl CurrentConfigMap {
    /// Reads `kubectl get configmap -o json` output and takes `key` from it.
    pub fn parse(json_text: &str, key: &str) -> Result<CurrentConfigMap, String> {
        let object: Value = serde_json::from_str(json_text).map_err(|e| {
            format!("not JSON ({e}); pass the output of `kubectl get configmap NAME -o json`")
        })?;
        if object.get("kind").and_then(Value::as_str) != Some("ConfigMap") {
            return Err("not a ConfigMap (its \"kind\" is not \"ConfigMap\")".into());
        }
        let value = match object.pointer(&format!("/data/{}", escape_pointer(key))) {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => return Err(format!("data.{key} is not a string: {other}")),
        };
        let resource_version =
            object.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(str::to_string);
        Ok(CurrentConfigMap { object, value, resource_version })
    }
}

/// One entry of the live value that is not an address or CIDR: kept exactly as it was.
#[derive(Clone, Debug, Serialize)]
pub struct MalformedEntry {
    pub entry: String,
    pub why: String,
}

/// The merged blocklist and what it changes.
#[derive(Clone, Debug, Serialize)]
pub struct MergedBlocklist {
    /// The value before (`None`: the key did not exist).
    pub previous: Option<String>,
    /// The value to write.
    pub value: String,
    /// Proposals that were not blocked before.
    pub added: Vec<String>,
    /// Proposals already covered by an entry of the live value.
    pub already_blocked: Vec<(String, String)>,
    /// Live entries that are not addresses; kept verbatim, at the end.
    pub malformed: Vec<MalformedEntry>,
}

/// How entries may be merged.
#[derive(Clone, Copy, Debug)]
pub struct Collapse {
    /// Merge neighbours into CIDRs.
    pub enabled: bool,
    /// Never broader than these prefix lengths.
    pub max_v4: u8,
    pub max_v6: u8,
}

impl Default for Collapse {
    fn default() -> Self {
        Collapse { enabled: false, max_v4: 24, max_v6: 48 }
    }
}

/// Merges `proposed` into the live `previous` value (comma-separated entries).
pub fn merge(previous: Option<&str>, proposed: &[ClientKey], collapse: Collapse) -> MergedBlocklist {
    let (existing, malformed) = live_entries(previous);
    let (mut added, mut already_blocked) = (Vec::new(), Vec::new());
    let coverage = Coverage::new(&existing);
    let mut all = existing.clone();
    for key in proposed {
        match coverage.entry_for(key) {
            Some(cover) => already_blocked.push((key.to_string(), cover)),
            None => {
                if all.insert(key.0) {
                    added.push(key.to_string());
                }
            }
        }
    }
    let nets: Vec<IpNet> =
        if collapse.enabled { collapse_nets(&all, collapse) } else { all.into_iter().collect() };
    let mut entries: Vec<String> = nets.iter().map(show).collect();
    entries.extend(malformed.iter().map(|m| m.entry.clone()));
    MergedBlocklist {
        previous: previous.map(str::to_string),
        value: entries.join(","),
        added,
        already_blocked,
        malformed,
    }
}

/// The valid entries of a live value (normalised), and the malformed ones as written.
pub fn live_entries(value: Option<&str>) -> (BTreeSet<IpNet>, Vec<MalformedEntry>) {
    let mut valid = BTreeSet::new();
    let mut malformed = Vec::new();
    for raw in value.unwrap_or("").split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match parse_entry(raw) {
            Ok(net) => {
                valid.insert(net);
            }
            Err(why) => malformed.push(MalformedEntry { entry: raw.to_string(), why }),
        }
    }
    (valid, malformed)
}

/// The live entries to look up what already blocks a client: those no other entry
/// holds, in address order. Built once per live value, so that checking every proposal
/// is a search each instead of a pass over the live value each (20,000 proposals against
/// 20,000 live entries took over a minute in a debug build that way).
pub struct Coverage(Ranges);

impl Coverage {
    /// The index of `live`, the valid entries as [`live_entries`] reads them.
    pub fn new(live: &BTreeSet<IpNet>) -> Coverage {
        Coverage(Ranges::new(live.iter().copied()))
    }

    /// The live entry that already blocks `key`, as written in reports: the broadest
    /// one when entries nest.
    pub fn entry_for(&self, key: &ClientKey) -> Option<String> {
        self.0.holder(&key.0).map(show)
    }
}

/// An address or CIDR, normalised (host bits cleared, IPv4-mapped folded to IPv4).
pub(crate) fn parse_entry(raw: &str) -> Result<IpNet, String> {
    normalise(raw.parse()?)
}

/// `key` as a blocklist holds it: an IPv4-mapped IPv6 range read as the IPv4 range it
/// is; a range that covers every address is refused, checked after that reading
/// (`::ffff:0:0/96` is every IPv4 address).
pub(crate) fn normalise(key: ClientKey) -> Result<IpNet, String> {
    let net = match key.0 {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(v4.into(), v6.prefix_len() - 96).map_err(|e| e.to_string())?,
            None => key.0,
        },
        net => net,
    };
    if net.prefix_len() == 0 {
        return Err("a range that covers every address; never written by logwarden".into());
    }
    Ok(net)
}

/// A single address without `/32` or `/128`.
fn show(net: &IpNet) -> String {
    ClientKey(*net).to_string()
}

/// Exact aggregation (only ranges that are entirely blocked merge) of the entries no
/// broader than the bound, with any range that aggregation makes broader than the bound
/// split back into ranges of the bound; entries already broader are kept as written, and
/// whatever they cover is dropped. The result never has more entries than `nets`: each
/// range of the bound that aggregation made holds at least one narrower entry.
fn collapse_nets(nets: &BTreeSet<IpNet>, c: Collapse) -> Vec<IpNet> {
    let bound = |net: &IpNet| if matches!(net, IpNet::V4(_)) { c.max_v4 } else { c.max_v6 };
    // Broad entries are never merged with anything: two adjacent live /16s aggregate to
    // a /15 that no entry named, and splitting that back to the bound would write 512
    // entries for two (two adjacent IPv6 /2s, more than memory holds).
    let (broad, narrow): (Vec<IpNet>, Vec<IpNet>) = nets.iter().partition(|n| n.prefix_len() < bound(n));
    let broad = Ranges::new(broad);
    let covered = |net: &IpNet| broad.holder(net).is_some();
    let mut out: Vec<IpNet> = broad.iter().copied().collect();
    for net in IpNet::aggregate(&narrow) {
        if net.prefix_len() >= bound(&net) {
            out.extend(Some(net).filter(|n| !covered(n)));
        } else {
            let pieces = net.subnets(bound(&net)).expect("bound is longer than the prefix");
            out.extend(pieces.filter(|n| !covered(n)));
        }
    }
    out.sort_unstable();
    out
}

/// RFC 6901: `~` becomes `~0` and `/` becomes `~1`.
pub fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The merge patch (`kubectl patch --type merge`).
pub fn merge_patch(key: &str, value: Option<&str>) -> Value {
    json!({ "data": { key: value } })
}

/// The guarded JSON patch: fails unless the ConfigMap still has the value (and the
/// resourceVersion) that was read, then sets the new value.
pub fn guarded_patch(key: &str, current: Option<&CurrentConfigMap>, new_value: &str) -> Value {
    let path = format!("/data/{}", escape_pointer(key));
    let mut ops = Vec::new();
    if let Some(rv) = current.and_then(|c| c.resource_version.as_deref()) {
        ops.push(json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv}));
    }
    match current.and_then(|c| c.value.as_deref()) {
        Some(old) => {
            ops.push(json!({"op": "test", "path": path, "value": old}));
            ops.push(json!({"op": "replace", "path": path, "value": new_value}));
        }
        None if current.is_some_and(|c| c.object.get("data").is_some()) => {
            ops.push(json!({"op": "add", "path": path, "value": new_value}));
        }
        None => ops.push(json!({"op": "add", "path": "/data", "value": { key: new_value }})),
    }
    Value::Array(ops)
}

/// The guarded rollback: fails unless the value is still the one logwarden wrote, then
/// restores the previous value exactly (or removes the key that did not exist).
pub fn guarded_rollback(key: &str, merged: &MergedBlocklist) -> Value {
    let path = format!("/data/{}", escape_pointer(key));
    let restore = match &merged.previous {
        Some(old) => json!({"op": "replace", "path": path, "value": old}),
        None => json!({"op": "remove", "path": path}),
    };
    json!([{"op": "test", "path": path, "value": merged.value}, restore])
}

/// The size the ConfigMap would have with `new_value` under `key`, in bytes of its data.
pub fn configmap_data_size(current: Option<&CurrentConfigMap>, key: &str, new_value: &str) -> usize {
    let others: usize = current
        .and_then(|c| c.object.get("data"))
        .and_then(Value::as_object)
        .map(|data| {
            data.iter()
                .filter(|(k, _)| *k != key)
                .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
                .sum()
        })
        .unwrap_or(0);
    others + key.len() + new_value.len()
}

/// An nginx include: `deny` lines for short lists, a `geo` map for long ones (nginx checks
/// each `deny` in turn, a `geo` map in one lookup).
pub fn nginx_include(value: &str) -> String {
    let entries: Vec<&str> = value.split(',').filter(|e| parse_entry(e).is_ok()).collect();
    let mut out = String::from("# Generated by logwarden. Include inside a server or location block.\n");
    if entries.len() <= 1000 {
        for e in &entries {
            out.push_str(&format!("deny {e};\n"));
        }
        return out;
    }
    out.push_str("# Put the geo block in the http context and, in the server block:\n");
    out.push_str("#     if ($logwarden_blocked) { return 403; }\n");
    out.push_str("geo $logwarden_blocked {\n    default 0;\n");
    for e in &entries {
        out.push_str(&format!("    {e} 1;\n"));
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> Vec<ClientKey> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn union_never_drops_what_was_blocked() {
        let m = merge(
            Some("5.6.7.8, 1.2.3.4,10.0.0.0/8"),
            &keys(&["9.9.9.9", "1.2.3.4", "10.1.2.3"]),
            Collapse::default(),
        );
        assert_eq!(m.value, "1.2.3.4,5.6.7.8,9.9.9.9,10.0.0.0/8");
        assert_eq!(m.added, vec!["9.9.9.9"]);
        assert_eq!(m.already_blocked.len(), 2);
    }

    #[test]
    fn malformed_entries_are_kept_verbatim_and_reported() {
        let m = merge(Some("1.2.3.4,not-an-ip,0.0.0.0/0"), &keys(&["2.2.2.2"]), Collapse::default());
        assert_eq!(m.value, "1.2.3.4,2.2.2.2,not-an-ip,0.0.0.0/0");
        assert_eq!(m.malformed.len(), 2);
    }

    #[test]
    fn collapse_is_exact_and_bounded() {
        let many: Vec<String> =
            (0..=255).map(|i| format!("198.51.100.{i}")).chain(["198.51.101.7".into()]).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let m = merge(None, &keys(&refs), Collapse { enabled: true, max_v4: 24, max_v6: 48 });
        assert_eq!(m.value, "198.51.100.0/24,198.51.101.7");
        let m = merge(None, &keys(&refs), Collapse { enabled: true, max_v4: 25, max_v6: 48 });
        assert_eq!(m.value, "198.51.100.0/25,198.51.100.128/25,198.51.101.7");
        let pair =
            merge(None, &keys(&["1.2.3.4", "1.2.3.6"]), Collapse { enabled: true, ..Collapse::default() });
        assert_eq!(pair.value, "1.2.3.4,1.2.3.6", "non-neighbours stay apart");
    }

    #[test]
    fn collapse_keeps_broad_live_entries_as_written() {
        // Adjacent live ranges broader than the bound aggregate to a range that was in
        // no entry; splitting that one into /24s (/48s) turned two entries into 512, two
        // /9s into 65,536, and two adjacent IPv6 /2s into more than memory holds.
        let c = Collapse { enabled: true, ..Collapse::default() };
        let m = merge(Some("10.0.0.0/16,10.1.0.0/16"), &keys(&["10.0.0.7", "192.0.2.1"]), c);
        assert_eq!(m.value, "10.0.0.0/16,10.1.0.0/16,192.0.2.1");
        assert!(m.added == vec!["192.0.2.1"] && m.already_blocked.len() == 1);
        let m = merge(Some("0.0.0.0/2,64.0.0.0/2,4000::/2,8000::/2"), &keys(&["203.0.113.9"]), c);
        assert_eq!(m.value, "0.0.0.0/2,64.0.0.0/2,203.0.113.9,4000::/2,8000::/2");
        // What collapsing makes broader than the bound is still split back to it, and
        // narrow entries inside a broad one are dropped as they were.
        let quarter: Vec<String> = (0..128).map(|i| format!("198.51.100.{i}")).collect();
        let refs: Vec<&str> = quarter.iter().map(String::as_str).collect();
        let c25 = Collapse { enabled: true, max_v4: 26, max_v6: 48 };
        let m = merge(Some("198.51.100.128/25,198.51.100.130,10.0.0.0/8,10.2.3.4"), &keys(&refs), c25);
        assert_eq!(m.value, "10.0.0.0/8,198.51.100.0/26,198.51.100.64/26,198.51.100.128/25");
        let m = merge(Some("10.0.0.5/8"), &keys(&["10.1.1.1", "10.2.2.2"]), c);
        assert_eq!(m.value, "10.0.0.0/8", "host bits are cleared before ranges are compared");
    }

    /// Ranges from `base` on, each `(host offset, prefix length)` with its host bits cleared.
    fn v4_nets(base: u32, entries: &BTreeSet<(u32, u8)>) -> impl Iterator<Item = IpNet> + '_ {
        entries.iter().map(move |&(host, len)| {
            IpNet::V4(ipnet::Ipv4Net::new((base + host).into(), len).unwrap().trunc())
        })
    }

    proptest::proptest! {
        /// Collapsing blocks exactly the addresses the entries block, with no more
        /// entries than there were, none broader than the bound unless it was written so.
        #[test]
        fn collapse_is_exact_and_never_grows(
            entries in proptest::collection::btree_set((0u32..4096, 18u8..=32), 1..40),
            bound in 20u8..=28,
        ) {
            let base = u32::from(std::net::Ipv4Addr::new(10, 0, 0, 0));
            let nets: BTreeSet<IpNet> = v4_nets(base, &entries).collect();
            let out = collapse_nets(&nets, Collapse { enabled: true, max_v4: bound, max_v6: 48 });
            proptest::prop_assert!(out.len() <= nets.len());
            for net in &out {
                proptest::prop_assert!(net.prefix_len() >= bound || nets.contains(net), "{} is too broad", net);
            }
            let blocks = |list: &[IpNet], a: u32| list.iter().any(|n| n.contains(&std::net::IpAddr::from(std::net::Ipv4Addr::from(a))));
            let input: Vec<IpNet> = nets.iter().copied().collect();
            for a in (base..base + (1 << 14)).step_by(7) {
                proptest::prop_assert_eq!(blocks(&out, a), blocks(&input, a), "{}", std::net::Ipv4Addr::from(a));
            }
        }
    }

    proptest::proptest! {
        /// The indexed lookup names the entry a pass over the live value names first (the
        /// broadest of nested ones), for addresses inside, beside and between entries.
        #[test]
        fn coverage_names_the_entry_a_pass_would(
            entries in proptest::collection::btree_set((0u32..4096, 18u8..=32), 0..40),
            hosts in proptest::collection::vec(0u32..(1 << 14), 1..40),
            v6 in proptest::bool::ANY,
        ) {
            let base = u32::from(std::net::Ipv4Addr::new(10, 0, 0, 0));
            let live: BTreeSet<IpNet> =
                v4_nets(base, &entries).chain(v6.then(|| "2001:db8::/32".parse().unwrap())).collect();
            let coverage = Coverage::new(&live);
            for host in hosts {
                let key = ClientKey(IpNet::from(std::net::IpAddr::from(std::net::Ipv4Addr::from(base + host))));
                let by_pass = live.iter().find(|e| e.contains(&key.0)).map(show);
                proptest::prop_assert_eq!(coverage.entry_for(&key), by_pass);
            }
        }
    }

    #[test]
    fn mapped_ipv6_entries_fold_to_ipv4() {
        let m = merge(Some("::ffff:1.2.3.4"), &keys(&["1.2.3.4"]), Collapse::default());
        assert_eq!(m.value, "1.2.3.4");
        assert!(m.added.is_empty());
    }

    #[test]
    fn a_malformed_live_entry_covers_nothing() {
        // The IPv4-mapped ::ffff:0:0/96 folds to 0.0.0.0/0: every address, like 0.0.0.0/0.
        let (live, malformed) = live_entries(Some("0.0.0.0/0,::ffff:0:0/96,192.0.2.0/24"));
        assert_eq!(malformed.len(), 2, "{malformed:?}");
        let coverage = Coverage::new(&live);
        assert_eq!(coverage.entry_for(&"203.0.113.9".parse().unwrap()), None);
        assert_eq!(coverage.entry_for(&"192.0.2.66".parse().unwrap()).as_deref(), Some("192.0.2.0/24"));
    }
}
