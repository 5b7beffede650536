//! A bounded "most frequent values" counter (space-saving): it keeps at most `capacity`
//! values, so an attacker who sends a million distinct paths costs a fixed amount of
//! memory. Counts are exact while fewer than `capacity` distinct values were seen; past
//! that a newcomer replaces the smallest entry and inherits its count, so a reported
//! count may overestimate by at most the evicted entry's count (flagged by `approximate`).
//! Values are told apart by all their bytes but stored by their first [`VALUE_BYTES`], so
//! an attacker's megabyte-long path or user agent costs a list no more than a long URL.

use compact_str::CompactString;

use super::stable_hash;

/// The most bytes of a value a list stores (cut at a character boundary, with `…`): enough
/// to show any real path or user agent, and it bounds a list's memory by its capacity.
pub const VALUE_BYTES: usize = 256;
/// Bytes a value holds in the entry itself (compact_str's inline room on 64-bit targets).
const INLINE_BYTES: usize = 24;

/// Counts values, keeping the heaviest `capacity` of them.
#[derive(Clone, Debug)]
pub struct TopK {
    capacity: usize,
    /// Each value's [`stable_hash`], its key: counting a value seen before compares
    /// 8-byte hashes and no text (user agents are long, and a busy client repeats its
    /// own). A plain vector, scanned: a client's lists hold at most 32, and a hash table
    /// for them took twice the room (every client with evidence has three). Apart from
    /// the values and counts, so that the scan reads 8 bytes an entry instead of 40.
    /// Two values with one 64-bit keyed hash would share a count; the key is secret and
    /// per process, so that cannot be aimed at.
    keys: Vec<u64>,
    /// The value at the same index of `keys`, as stored (short ones inline), and its
    /// count. One vector for both: each is an allocation of its own per list, and a
    /// scan's many records each hold three lists.
    entries: Vec<(CompactString, u64)>,
    /// The entries tied at the smallest count `least`, in eviction order (the next victim
    /// last), so that a spray of distinct values does not compare every tied value's
    /// text for each eviction. Counts only grow and a newcomer starts above `least`, so
    /// the tie only shrinks: an index whose count moved on is stale and skipped.
    victims: Vec<u16>,
    least: u64,
    /// Bytes the stored values hold outside their entries.
    value_bytes: usize,
    /// Whether any value was ever evicted.
    pub approximate: bool,
}

impl TopK {
    /// A counter that keeps at most `capacity` values.
    pub fn new(capacity: usize) -> Self {
        assert!(capacity <= usize::from(u16::MAX), "a top list holds at most 65535 values");
        TopK {
            capacity,
            keys: Vec::new(),
            entries: Vec::new(),
            victims: Vec::new(),
            least: 0,
            value_bytes: 0,
            approximate: false,
        }
    }

    /// Counts one occurrence of `value`.
    /// Returns whether it was not held (then the list's bytes may have changed).
    pub fn add(&mut self, value: &str) -> bool {
        self.add_n(value, 1)
    }

    /// Counts `n` occurrences of `value`, as [`TopK::add`].
    pub fn add_n(&mut self, value: &str, n: u64) -> bool {
        let key = stable_hash(value.as_bytes());
        let held = self.count_held(key, n);
        if !held {
            self.insert(key, stored(value), n);
        }
        !held
    }

    /// Adds `n` to the entry of `key`; false when there is none.
    fn count_held(&mut self, key: u64, n: u64) -> bool {
        let held = self.position(key);
        held.map(|i| self.entries[i].1 += n).is_some()
    }

    /// Where `key` is held. Every key is compared, without stopping at the one found:
    /// where a value sits in the list is what a branch predictor cannot know, and the
    /// missed guess at an early exit cost more than the compares after it (compiled to
    /// conditional moves, four keys a step). One thread, 1 GB: ~4% less wall time.
    fn position(&self, key: u64) -> Option<usize> {
        let found =
            self.keys.iter().enumerate().fold(usize::MAX, |at, (i, k)| if *k == key { i } else { at });
        (found != usize::MAX).then_some(found)
    }

    /// Adds an entry for `key` (`value` as stored), evicting one when full.
    fn insert(&mut self, key: u64, value: CompactString, n: u64) {
        self.value_bytes += outside_bytes(&value);
        if self.keys.len() < self.capacity {
            self.keys.push(key);
            self.entries.push((value, n));
            return;
        }
        self.approximate = true;
        let min = self.victim();
        self.keys[min] = key;
        self.entries[min].1 += n;
        let evicted = std::mem::replace(&mut self.entries[min].0, value);
        self.value_bytes -= outside_bytes(&evicted);
    }

    /// Bytes the list holds outside itself: its entries and the values stored apart.
    pub fn heap_bytes(&self) -> usize {
        let entries =
            self.keys.capacity() * 8 + self.entries.capacity() * std::mem::size_of::<(CompactString, u64)>();
        entries + self.victims.capacity() * 2 + self.value_bytes
    }

    /// Where the entry to evict is: the smallest count; ties break on the value (the
    /// greatest goes first) so the choice does not depend on where values sit.
    fn victim(&mut self) -> usize {
        while let Some(i) = self.victims.pop().map(usize::from) {
            if self.entries[i].1 == self.least {
                return i;
            }
        }
        self.rank_victims();
        self.victims.pop().map_or(0, usize::from)
    }

    /// Finds the smallest count and orders the entries holding it for eviction.
    fn rank_victims(&mut self) {
        self.least = self.entries.iter().map(|e| e.1).min().expect("full counter is not empty");
        let tied = self.entries.iter().enumerate().filter(|(_, e)| e.1 == self.least);
        // `new` bounds the capacity, so every index fits.
        let mut keyed: Vec<(u128, u16)> = tied.map(|(i, e)| (order_prefix(&e.0), i as u16)).collect();
        let text = |i: u16| self.entries[usize::from(i)].0.as_str();
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| text(a.1).cmp(text(b.1))));
        self.victims.extend(keyed.into_iter().map(|(_, i)| i));
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: TopK) {
        self.approximate |= other.approximate;
        let mut entries: Vec<_> = other.into_entries().collect();
        entries.sort_unstable_by(|a, b| b.2.cmp(&a.2).then_with(|| a.1.cmp(&b.1)));
        // The keys are hashes of the whole values, which the stored ones may be cut from.
        for (key, value, n) in entries {
            if !self.count_held(key, n) {
                self.insert(key, value, n);
            }
        }
    }

    /// The `n` heaviest values, heaviest first, ties by value.
    pub fn top(&self, n: usize) -> Vec<(String, u64)> {
        let mut all: Vec<_> = self.entries.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// The values held (as stored), in no order.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(v, _)| v.as_str())
    }

    /// How many distinct values are held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The entries, taken apart: `(key, value, count)`.
    fn into_entries(self) -> impl Iterator<Item = (u64, CompactString, u64)> {
        self.keys.into_iter().zip(self.entries).map(|(key, (value, n))| (key, value, n))
    }
}

/// `value` as a list stores it: whole up to [`VALUE_BYTES`], else its start and `…`.
fn stored(value: &str) -> CompactString {
    if value.len() <= VALUE_BYTES {
        return CompactString::new(value);
    }
    let cut = (0..=VALUE_BYTES).rev().find(|&i| value.is_char_boundary(i)).unwrap_or(0);
    let mut s = CompactString::with_capacity(cut + '…'.len_utf8());
    s.push_str(&value[..cut]);
    s.push('…');
    s
}

/// Bytes of `value` allocated apart from the entry holding it.
fn outside_bytes(value: &CompactString) -> usize {
    if value.is_heap_allocated() { value.capacity().max(INLINE_BYTES) } else { 0 }
}

/// The first 16 bytes of `value`, zero-padded, as a number: two values compare as their
/// prefixes do unless those are equal, so sorting a tie compares text only for values
/// that share 16 bytes (a scanner's paths differ early; a call to memcmp per compare was
/// most of the sort).
fn order_prefix(value: &str) -> u128 {
    let mut bytes = [0u8; 16];
    let n = value.len().min(16);
    bytes[..n].copy_from_slice(&value.as_bytes()[..n]);
    u128::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_below_capacity_and_bounded_above() {
        let mut t = TopK::new(3);
        for v in ["a", "b", "a", "c", "a", "b"] {
            t.add(v);
        }
        assert_eq!(t.top(2), vec![("a".into(), 3), ("b".into(), 2)]);
        assert!(!t.approximate);
        // A heavy value survives any spray: space-saving keeps every value whose count
        // exceeds total / capacity.
        for i in 0..1000 {
            t.add(&format!("spray-{i}"));
            t.add("a");
        }
        assert_eq!(t.len(), 3);
        assert!(t.approximate);
        let (value, count) = t.top(1).remove(0);
        assert_eq!(value, "a");
        assert!(count >= 1003);
    }

    /// Space-saving as first written: a full scan for the smallest count and a text
    /// compare among all the tied entries on every eviction.
    fn reference(capacity: usize, values: &[String]) -> Vec<(String, u64)> {
        let mut entries: Vec<(String, u64)> = Vec::new();
        for v in values {
            if let Some(e) = entries.iter_mut().find(|e| &e.0 == v) {
                e.1 += 1;
            } else if entries.len() < capacity {
                entries.push((v.clone(), 1));
            } else {
                let least = entries.iter().map(|e| e.1).min().unwrap();
                let tied = entries.iter().enumerate().filter(|(_, e)| e.1 == least);
                let (i, _) = tied.max_by(|a, b| a.1.0.cmp(&b.1.0)).unwrap();
                entries[i] = (v.clone(), least + 1);
            }
        }
        entries.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        entries
    }

    proptest::proptest! {
        #[test]
        fn evicts_what_a_full_scan_would(
            capacity in 1usize..6,
            picks in proptest::collection::vec((0u8..12, 0u8..3), 0..300),
        ) {
            // Skewed values (a few heavy, many light) so that ties, hits on tied entries
            // and runs of evictions all happen; half share a prefix longer than 16 bytes.
            let value = |(v, w): &(u8, u8)| {
                let shared = if v % 2 == 0 { "/a/prefix/of/twenty/" } else { "" };
                format!("{shared}v{}", v >> w)
            };
            let values: Vec<String> = picks.iter().map(value).collect();
            let mut t = TopK::new(capacity);
            values.iter().for_each(|v| {
                t.add(v);
            });
            proptest::prop_assert_eq!(t.top(capacity), reference(capacity, &values));
        }
    }

    proptest::proptest! {
        #[test]
        fn prefixes_order_as_the_text_does(a in "[a\\x00-\\x02/]{0,20}", b in "[a\\x00-\\x02/]{0,20}") {
            if order_prefix(&a) != order_prefix(&b) {
                proptest::prop_assert_eq!(order_prefix(&a).cmp(&order_prefix(&b)), a.cmp(&b));
            }
        }
    }

    #[test]
    fn long_values_are_counted_whole_and_stored_cut() {
        let long = |tail: &str| format!("/{}{tail}", "é".repeat(200));
        let (a, b) = (long("a"), long("b"));
        let mut t = TopK::new(4);
        t.add(&a);
        t.add(&a);
        t.add(&b);
        let top = t.top(4);
        assert_eq!(top.len(), 2, "values sharing their stored start are still two");
        assert_eq!((top[0].1, top[1].1), (2, 1));
        assert!(top[0].0.ends_with('…') && top[0].0.len() <= VALUE_BYTES + '…'.len_utf8());
        assert!(a.starts_with(top[0].0.trim_end_matches('…')));
        // Merging carries the whole values' keys: the cut texts are not cut again, and
        // the same value from two lists is one entry.
        let mut other = TopK::new(4);
        other.add(&a);
        other.merge(t);
        assert_eq!(
            other.top(4),
            top.iter().map(|(v, n)| (v.clone(), n + u64::from(*n == 2))).collect::<Vec<_>>()
        );
    }

    #[test]
    fn memory_is_bounded_by_capacity_whatever_the_values() {
        let mut t = TopK::new(16);
        for i in 0..1000 {
            t.add(&format!("{i}{}", "x".repeat(100_000)));
        }
        let entry = std::mem::size_of::<(u64, CompactString, u64)>();
        assert!(t.heap_bytes() <= 16 * (entry + 2 + VALUE_BYTES + 8), "{}", t.heap_bytes());
        assert!(t.heap_bytes() >= 16 * VALUE_BYTES, "the stored values are counted");
        let mut short = TopK::new(16);
        (0..1000).for_each(|i| {
            short.add(&i.to_string());
        });
        assert!(short.heap_bytes() <= 16 * (entry + 2), "short values live in their entries");
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = TopK::new(8);
        let mut b = TopK::new(8);
        a.add("x");
        b.add("x");
        b.add("y");
        a.merge(b);
        assert_eq!(a.top(5), vec![("x".into(), 2), ("y".into(), 1)]);
    }
}
