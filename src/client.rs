//! Who the client is, and whether it may ever be proposed for blocking.
//!
//! The client is `$remote_addr` unless that hop is a configured trusted proxy; then
//! X-Forwarded-For is walked from the right, skipping trusted hops, the way nginx's realip
//! module does with `real_ip_recursive on`. An X-Forwarded-For from any other hop is the
//! client's own claim and is never believed. A header naming the client alone (X-Real-IP,
//! CF-Connecting-IP, True-Client-IP, a PROXY protocol address beside `$remote_addr`) is
//! read as an X-Forwarded-For of one address where the line logs none. IPv6 clients are grouped per prefix (/64 by
//! default: one host usually owns a whole /64, and rotating within it is free).

use std::fmt;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Serialize, Serializer};

use crate::parse::parse_ip;

/// The unit logwarden counts and blocks: an IPv4 address or an IPv6 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientKey(pub IpNet);

impl Ord for ClientKey {
    /// The network's own order (IPv4 before IPv6, then the address, then the prefix),
    /// compared as integers: an account's clients are kept sorted and searched by it for
    /// every failed login, and the derived order, through `IpNet`'s enum and each address's
    /// octets, was an out-of-line call of several branches per step.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.order().cmp(&other.order())
    }
}

impl PartialOrd for ClientKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::hash::Hash for ClientKey {
    /// One integer per key, where the derived hash made four writes (the variant, the
    /// address's length and bytes, the prefix): keys are hashed twice for every line.
    /// Equal keys write equal integers, so this agrees with `Eq`.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self.0 {
            IpNet::V4(n) => state.write_u64(u64::from(n.addr().to_bits()) << 8 | u64::from(n.prefix_len())),
            IpNet::V6(n) => state.write_u128(n.addr().to_bits() ^ u128::from(n.prefix_len())),
        }
    }
}

impl ClientKey {
    /// The key [`Ord`] compares: the family, the address's bits, the prefix.
    fn order(&self) -> (bool, u128, u8) {
        match self.0 {
            IpNet::V4(n) => (false, u128::from(n.addr().to_bits()), n.prefix_len()),
            IpNet::V6(n) => (true, n.addr().to_bits(), n.prefix_len()),
        }
    }

    /// The network address (the IPv4 address itself).
    pub fn addr(&self) -> IpAddr {
        self.0.network()
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.prefix_len() == self.0.max_prefix_len() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl Serialize for ClientKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ClientKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for ClientKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .map(|n| ClientKey(n.trunc()))
            .map_err(|e| format!("{s:?} is not an IP address or CIDR: {e}"))
    }
}

/// Address ranges a policy names (trusted proxies, the allowlist, a live blocklist),
/// kept as the outermost ones in address order, so that asking which holds an address
/// is one binary search instead of a pass over the list: behind a CDN, its two dozen
/// ranges as trusted proxies searched one by one cost ~1,100 instructions a line, a
/// third of a scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ranges {
    nets: Vec<IpNet>,
    /// The same ranges as first and last address, per family: every line asks whether
    /// its hop is a trusted proxy, and comparing `IpNet`s (an enum, addresses compared
    /// as byte arrays) made that search ~290 instructions a line for two dozen ranges.
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl Ranges {
    /// `nets`, host bits cleared, without those inside another. In address order a
    /// range comes before every range inside it, and those follow it without a gap, so
    /// each is checked against the last one kept.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Ranges {
        let mut nets: Vec<IpNet> = nets.into_iter().map(|n| n.trunc()).collect();
        nets.sort_unstable();
        let mut kept: Vec<IpNet> = Vec::with_capacity(nets.len());
        for net in nets {
            if !kept.last().is_some_and(|last| last.contains(&net)) {
                kept.push(net);
            }
        }
        let mut ranges = Ranges { nets: kept, ..Ranges::default() };
        for net in &ranges.nets {
            match net {
                IpNet::V4(n) => ranges.v4.push((n.network().to_bits(), n.broadcast().to_bits())),
                IpNet::V6(n) => ranges.v6.push((n.network().to_bits(), n.broadcast().to_bits())),
            }
        }
        ranges
    }

    /// The ranges, in address order, none inside another.
    pub fn iter(&self) -> impl Iterator<Item = &IpNet> {
        self.nets.iter()
    }

    /// Whether a range holds `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => in_spans(&self.v4, a.to_bits()),
            IpAddr::V6(a) => in_spans(&self.v6, a.to_bits()),
        }
    }

    /// The range that holds `net`. The ranges are disjoint, so the only one that can is
    /// the last at or before it in address order.
    pub fn holder(&self, net: &IpNet) -> Option<&IpNet> {
        let after = self.nets.partition_point(|e| e <= net);
        after.checked_sub(1).map(|i| &self.nets[i]).filter(|e| e.contains(net))
    }

    /// A range that shares an address with `net`: the one holding it, else the first of
    /// those inside it (which follow it in address order).
    pub fn overlapping(&self, net: &IpNet) -> Option<&IpNet> {
        let inside = || self.nets.get(self.nets.partition_point(|e| e < net)).filter(|e| net.contains(*e));
        self.holder(net).or_else(inside)
    }
}

/// Whether a span of `spans` (first and last address, disjoint, in order) holds `a`.
fn in_spans<T: Ord + Copy>(spans: &[(T, T)], a: T) -> bool {
    let after = spans.partition_point(|s| s.0 <= a);
    after.checked_sub(1).is_some_and(|i| spans[i].1 >= a)
}

/// How client addresses are resolved and grouped.
#[derive(Clone, Debug)]
pub struct ClientPolicy {
    /// Hops whose X-Forwarded-For is believed.
    pub trusted_proxies: Ranges,
    /// IPv6 clients are grouped per this prefix length.
    pub ipv6_prefix: u8,
}

impl Default for ClientPolicy {
    fn default() -> Self {
        ClientPolicy { trusted_proxies: Ranges::default(), ipv6_prefix: 64 }
    }
}

impl ClientPolicy {
    /// The client address of a request that arrived from `remote` with `forwarded_for`.
    pub fn resolve(&self, remote: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        if !self.is_trusted(remote) {
            return remote;
        }
        let Some(xff) = forwarded_for else { return remote };
        let mut client = remote;
        for hop in xff.rsplit(',') {
            match parse_ip(hop.as_bytes()) {
                Some(ip) => client = ip,
                // A malformed hop ends the walk: nothing left of it can be believed.
                None => break,
            }
            if !self.is_trusted(client) {
                break;
            }
        }
        client
    }

    /// Whether `ip` is a configured trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.contains(ip)
    }

    /// The counting unit for `ip`.
    pub fn key(&self, ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(v4) => ClientKey(IpNet::V4(Ipv4Net::new(v4, 32).expect("/32 is valid"))),
            IpAddr::V6(v6) => {
                let net = Ipv6Net::new(v6, self.ipv6_prefix).expect("prefix validated at build");
                ClientKey(IpNet::V6(net.trunc()))
            }
        }
    }
}

/// Which clients are never proposed for blocking.
#[derive(Clone, Debug, Default)]
pub struct SparePolicy {
    /// `--allow` and `--allow-file` entries.
    pub allow: Ranges,
    /// Trusted proxies are never blocked: blocking one blocks everyone behind it.
    pub trusted_proxies: Ranges,
    /// `--block-private`: private, loopback, link-local and shared ranges become blockable.
    pub block_private: bool,
}

impl SparePolicy {
    /// Why `key` must not be blocked, or `None` when it may be. A range named is the
    /// broadest of nested ones.
    pub fn spare_reason(&self, key: &ClientKey) -> Option<String> {
        if let Some(n) = self.allow.overlapping(&key.0) {
            return Some(format!("allowlisted ({n})"));
        }
        if let Some(n) = self.trusted_proxies.overlapping(&key.0) {
            return Some(format!("trusted proxy ({n})"));
        }
        if self.block_private {
            return None;
        }
        special_range(key.addr()).map(|r| format!("{r} address (use --block-private to allow blocking it)"))
    }
}

/// Ranges that are not the public Internet, and so not an attacker's own address, with
/// what they are.
const SPECIAL_RANGES: [(&str, &str); 15] = [
    ("127.0.0.0/8", "loopback"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("169.254.0.0/16", "link-local"),
    ("100.64.0.0/10", "shared (100.64.0.0/10)"),
    ("0.0.0.0/32", "non-unicast"),
    ("255.255.255.255/32", "non-unicast"),
    ("224.0.0.0/4", "non-unicast"),
    ("::1/128", "loopback"),
    ("fc00::/7", "unique local (fc00::/7)"),
    ("fe80::/10", "link-local"),
    ("::/128", "non-unicast"),
    ("ff00::/8", "non-unicast"),
    // IPv4-mapped addresses are folded to IPv4 before they are keyed; as a range
    // written by hand, this one would hold every private IPv4 address.
    ("::ffff:0:0/96", "IPv4-mapped"),
];

/// What `ip` is, when it is in a range that is not the public Internet.
fn special_range(ip: IpAddr) -> Option<&'static str> {
    special_overlap(&IpNet::from(ip))
}

/// What the first range that is not the public Internet and shares an address with
/// `net` is: a hand-written `10.0.0.0/7` holds private addresses, as `10.0.0.5` is one.
pub fn special_overlap(net: &IpNet) -> Option<&'static str> {
    static RANGES: std::sync::LazyLock<Vec<(IpNet, &str)>> = std::sync::LazyLock::new(|| {
        SPECIAL_RANGES.iter().map(|(range, what)| (range.parse().expect("a valid range"), *what)).collect()
    });
    RANGES.iter().find(|(range, _)| range.contains(net) || net.contains(range)).map(|(_, what)| *what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    proptest::proptest! {
        /// Keys sort as their networks do: reports list clients in the order they did.
        #[test]
        fn keys_order_as_their_networks(
            a in (proptest::num::u128::ANY, 0u8..=128, proptest::bool::ANY),
            b in (proptest::num::u128::ANY, 0u8..=128, proptest::bool::ANY),
        ) {
            let net = |(bits, prefix, v6): (u128, u8, bool)| -> IpNet {
                if v6 {
                    ipnet::Ipv6Net::new(std::net::Ipv6Addr::from_bits(bits), prefix).unwrap().into()
                } else {
                    // Half from few addresses, so equal ones with other prefixes occur.
                    let bits = if bits & 1 == 0 { (bits >> 64) as u32 } else { (bits >> 120) as u32 };
                    let addr = std::net::Ipv4Addr::from_bits(bits);
                    ipnet::Ipv4Net::new(addr, prefix % 33).unwrap().into()
                }
            };
            let (x, y) = (net(a), net(b));
            proptest::prop_assert_eq!(ClientKey(x).cmp(&ClientKey(y)), x.cmp(&y));
            proptest::prop_assert_eq!(ClientKey(x).cmp(&ClientKey(x)), std::cmp::Ordering::Equal);
        }
    }

    /// Networks from few addresses (so that they nest, share starts, and a single
    /// address is often one of them), both families, host bits often left set.
    fn nets() -> impl proptest::strategy::Strategy<Value = IpNet> {
        (
            0u32..6,
            0u8..=32,
            proptest::bool::ANY,
            proptest::prop_oneof![proptest::strategy::Just(0u32), proptest::num::u32::ANY],
        )
            .prop_map(|(base, prefix, v6, noise)| {
                let bits =
                    (0xc633_6400u32 + (base << 12)) ^ noise.checked_shr(u32::from(prefix)).unwrap_or(0);
                if v6 {
                    let addr = std::net::Ipv6Addr::from_bits(u128::from(bits) << 96);
                    Ipv6Net::new(addr, prefix * 4).unwrap().into()
                } else {
                    Ipv4Net::new(std::net::Ipv4Addr::from_bits(bits), prefix).unwrap().into()
                }
            })
    }

    use proptest::strategy::Strategy;

    proptest::proptest! {
        /// The search answers what a pass over every range answers: whether one holds an
        /// address, and whether one overlaps a network, naming a range that does and that
        /// no other holds.
        #[test]
        fn ranges_answer_as_a_pass_over_every_range(
            listed in proptest::collection::vec(nets(), 0..12), asked in nets(),
        ) {
            let ranges = Ranges::new(listed.iter().copied());
            let holds = listed.iter().any(|n| n.contains(&asked.addr()));
            proptest::prop_assert_eq!(ranges.contains(asked.addr()), holds);
            let overlap = |n: &IpNet| n.contains(&asked.trunc()) || asked.trunc().contains(n);
            let found = ranges.overlapping(&asked.trunc());
            proptest::prop_assert_eq!(found.is_some(), listed.iter().any(overlap));
            if let Some(f) = found {
                proptest::prop_assert!(overlap(f));
                proptest::prop_assert!(listed.iter().any(|n| n.trunc() == *f));
                proptest::prop_assert!(listed.iter().all(|n| !n.trunc().contains(f) || n.trunc() == *f));
            }
        }
    }

    #[test]
    fn untrusted_forwarded_for_is_ignored() {
        let p = ClientPolicy::default();
        assert_eq!(p.resolve(ip("203.0.113.5"), Some("6.6.6.6")), ip("203.0.113.5"));
    }

    #[test]
    fn trusted_hops_are_skipped_from_the_right() {
        let p =
            ClientPolicy { trusted_proxies: Ranges::new(["10.0.0.0/8".parse().unwrap()]), ipv6_prefix: 64 };
        // The client forged the leftmost entry; the proxy appended the real address.
        let xff = "6.6.6.6, 203.0.113.5, 10.0.0.7";
        assert_eq!(p.resolve(ip("10.0.0.1"), Some(xff)), ip("203.0.113.5"));
        assert_eq!(p.resolve(ip("10.0.0.1"), Some("garbage")), ip("10.0.0.1"));
        assert_eq!(p.resolve(ip("10.0.0.1"), Some("::ffff:198.51.100.1")), ip("198.51.100.1"));
    }

    /// Some load balancers write each hop with its port (Azure Application Gateway
    /// does), and nginx's realip module reads such hops (`ngx_parse_addr_port`): read as
    /// malformed, each would end the walk at the trusted proxy, whose traffic is never
    /// blocked.
    #[test]
    fn forwarded_hops_with_a_port_are_read() {
        let p =
            ClientPolicy { trusted_proxies: Ranges::new(["10.0.0.0/8".parse().unwrap()]), ipv6_prefix: 64 };
        assert_eq!(p.resolve(ip("10.0.0.1"), Some("198.51.100.7:61000, 10.0.0.9:443")), ip("198.51.100.7"));
        assert_eq!(p.resolve(ip("10.0.0.1"), Some("[2001:db8::5]:443")), ip("2001:db8::5"));
    }

    #[test]
    fn ipv6_grouped_per_prefix() {
        let p = ClientPolicy::default();
        let a = p.key(ip("2001:db8:1:2:aaaa::1"));
        let b = p.key(ip("2001:db8:1:2:bbbb::2"));
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_eq!(p.key(ip("192.0.2.1")).to_string(), "192.0.2.1");
    }

    /// What the standard library says of an address, as the ranges' names say it.
    fn std_says(ip: IpAddr) -> Option<&'static str> {
        match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                if v4.is_loopback() {
                    Some("loopback")
                } else if v4.is_private() {
                    Some("private (RFC 1918)")
                } else if v4.is_link_local() {
                    Some("link-local")
                } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                    Some("shared (100.64.0.0/10)")
                } else if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() {
                    Some("non-unicast")
                } else {
                    None
                }
            }
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => Some("IPv4-mapped"),
            IpAddr::V6(v6) => {
                let first = v6.segments()[0];
                if v6.is_loopback() {
                    Some("loopback")
                } else if first & 0xfe00 == 0xfc00 {
                    Some("unique local (fc00::/7)")
                } else if first & 0xffc0 == 0xfe80 {
                    Some("link-local")
                } else if v6.is_unspecified() || v6.is_multicast() {
                    Some("non-unicast")
                } else {
                    None
                }
            }
        }
    }

    proptest::proptest! {
        /// The table of special ranges names every address as the standard library's
        /// predicates do: addresses drawn at each range's edges (a base, its low bits
        /// varied) as well as anywhere.
        #[test]
        fn special_ranges_agree_with_the_standard_predicates(
            base in proptest::sample::select(vec![
                0u32, 0x0a00_0000, 0x0b00_0000, 0x6440_0000, 0x643f_ff00, 0x6480_0000, 0x7f00_0000,
                0x8000_0000, 0xa9fe_0000, 0xa9fd_ff00, 0xa9ff_0000, 0xac10_0000, 0xac0f_ff00, 0xac20_0000,
                0xc0a8_0000, 0xc0a7_ff00, 0xc0a9_0000, 0xdfff_ff00, 0xe000_0000, 0xefff_ff00, 0xf000_0000,
                0xffff_ff00,
            ]),
            v6_base in proptest::sample::select(vec![
                0u16, 0x2001, 0xfbff, 0xfc00, 0xfdff, 0xfe00, 0xfe7f, 0xfe80, 0xfebf, 0xfec0, 0xfeff, 0xff00,
            ]),
            low in proptest::num::u32::ANY, v6_rest in proptest::num::u128::ANY, pick in 0u8..4,
        ) {
            let v4 = std::net::Ipv4Addr::from_bits(base ^ (low & 0xff));
            let v6 = match pick {
                0 => std::net::Ipv6Addr::from_bits(u128::from(v6_base) << 112 | v6_rest >> 16),
                1 => std::net::Ipv6Addr::from_bits(v6_rest % 4),
                2 => v4.to_ipv6_mapped(),
                _ => std::net::Ipv6Addr::from_bits(v6_rest),
            };
            for ip in [IpAddr::V4(v4), IpAddr::V4(std::net::Ipv4Addr::from_bits(low)), IpAddr::V6(v6)] {
                proptest::prop_assert_eq!(special_range(ip), std_says(ip), "{}", ip);
            }
        }
    }

    #[test]
    fn special_ranges_overlap_hand_written_networks() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(special_overlap(&net("10.0.0.0/7")), Some("private (RFC 1918)"));
        assert_eq!(special_overlap(&net("0.0.0.0/1")), Some("loopback"));
        assert_eq!(special_overlap(&net("203.0.113.0/24")), None);
        assert_eq!(special_overlap(&net("2001:db8::/32")), None);
        assert_eq!(special_overlap(&net("::/1")), Some("loopback"));
    }

    #[test]
    fn spare_reasons() {
        let p = ClientPolicy::default();
        let spare =
            SparePolicy { allow: Ranges::new(["198.51.100.0/24".parse().unwrap()]), ..Default::default() };
        assert!(spare.spare_reason(&p.key(ip("198.51.100.4"))).unwrap().starts_with("allowlisted"));
        assert!(spare.spare_reason(&p.key(ip("10.1.2.3"))).is_some());
        assert!(spare.spare_reason(&p.key(ip("100.64.0.1"))).is_some());
        assert!(spare.spare_reason(&p.key(ip("fd00::1"))).is_some());
        assert!(spare.spare_reason(&p.key(ip("203.0.113.9"))).is_none());
        let open = SparePolicy { block_private: true, ..spare };
        assert!(open.spare_reason(&p.key(ip("10.1.2.3"))).is_none());
        assert!(open.spare_reason(&p.key(ip("198.51.100.4"))).is_some());
    }
}
