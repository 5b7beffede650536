//! A bounded "most frequent values" counter (space-saving): it keeps at most `capacity`
//! values, so an attacker who sends a million distinct paths costs a fixed amount of
//! memory. Counts are exact while fewer than `capacity` distinct values were seen; past
//! that a newcomer replaces the smallest entry and inherits its count, so a reported
//! count may overestimate by at most the evicted entry's count (flagged by `approximate`).

use compact_str::CompactString;

use super::stable_hash;

/// Counts values, keeping the heaviest `capacity` of them.
#[derive(Clone, Debug)]
pub struct TopK {
    capacity: usize,
    /// `(hash, value, count)`, keyed by the value's [`stable_hash`]: counting a value seen
    /// before compares 8-byte hashes and no text (user agents are long, and a busy client
    /// repeats its own). A plain vector, scanned: a client's lists hold at most 32, and a
    /// hash table for them took twice the room (every client with evidence has three).
    /// Two values with one 64-bit keyed hash would share a count; the key is secret and
    /// per process, so that cannot be aimed at. Short values are stored inline.
    entries: Vec<(u64, CompactString, u64)>,
    /// Whether any value was ever evicted.
    pub approximate: bool,
}

impl TopK {
    /// A counter that keeps at most `capacity` values.
    pub fn new(capacity: usize) -> Self {
        TopK { capacity, entries: Vec::new(), approximate: false }
    }

    /// Counts one occurrence of `value`.
    pub fn add(&mut self, value: &str) {
        self.add_n(value, 1);
    }

    fn add_n(&mut self, value: &str, n: u64) {
        let key = stable_hash(value.as_bytes());
        if let Some(e) = self.entries.iter_mut().find(|e| e.0 == key) {
            e.2 += n;
            return;
        }
        if self.entries.len() < self.capacity {
            self.entries.push((key, CompactString::new(value), n));
            return;
        }
        self.approximate = true;
        let min = self.smallest();
        let inherited = self.entries[min].2;
        self.entries[min] = (key, CompactString::new(value), inherited + n);
    }

    /// Where the entry to evict is: the smallest count; ties break on the value so the
    /// result does not depend on arrival order (text compared only among the ties).
    fn smallest(&self) -> usize {
        let least = self.entries.iter().map(|e| e.2).min().expect("full counter is not empty");
        let tied = self.entries.iter().enumerate().filter(|(_, e)| e.2 == least);
        tied.max_by(|a, b| a.1.1.cmp(&b.1.1)).map_or(0, |(i, _)| i)
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: TopK) {
        self.approximate |= other.approximate;
        let mut entries = other.entries;
        entries.sort_unstable_by(|a, b| b.2.cmp(&a.2).then_with(|| a.1.cmp(&b.1)));
        for (_, value, n) in entries {
            self.add_n(&value, n);
        }
    }

    /// The `n` heaviest values, heaviest first, ties by value.
    pub fn top(&self, n: usize) -> Vec<(String, u64)> {
        let mut all: Vec<_> = self.entries.iter().map(|(_, k, v)| (k.to_string(), *v)).collect();
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// How many distinct values are held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
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
