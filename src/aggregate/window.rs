//! Event times for sliding-window thresholds. Lines arrive in any order (`kubectl logs`
//! groups output per container, files are read in any order), so times are collected as
//! per-second counts, kept sorted and merged lazily, and the busiest window is found by
//! a two-pointer sweep. The answer depends only on the multiset of times, never on order.

/// Per-second event counts.
#[derive(Clone, Debug, Default)]
pub struct EventTimes {
    /// `(second, count)`; the first `sorted` entries are sorted and unique.
    entries: Vec<(i64, u32)>,
    sorted: usize,
    /// Events that carried no time at all.
    pub untimed: u64,
}

impl EventTimes {
    /// Records one event at `time` (or one untimed event).
    pub fn add(&mut self, time: Option<i64>) {
        let Some(t) = time else {
            self.untimed += 1;
            return;
        };
        if let Some(last) = self.entries.last_mut().filter(|l| l.0 == t) {
            last.1 = last.1.saturating_add(1);
            return;
        }
        self.entries.push((t, 1));
        if self.entries.len() > 2 * self.sorted + 64 {
            self.compact();
        }
    }

    /// Sorts and merges equal seconds.
    fn compact(&mut self) {
        self.entries.sort_unstable_by_key(|e| e.0);
        self.entries.dedup_by(|next, kept| {
            let same = next.0 == kept.0;
            if same {
                kept.1 = kept.1.saturating_add(next.1);
            }
            same
        });
        self.sorted = self.entries.len();
    }

    /// Adds every event of `other`.
    pub fn merge(&mut self, other: EventTimes) {
        self.untimed += other.untimed;
        self.entries.extend(other.entries);
        self.compact();
    }

    /// The most events in any window of `window` seconds, `[t, t + window)`, plus the
    /// untimed events (which could have happened in any window), and where it starts.
    pub fn busiest(&mut self, window: i64) -> (u64, Option<i64>) {
        self.compact();
        let (mut best, mut start_at, mut sum, mut lo) = (0u64, None, 0u64, 0usize);
        for hi in 0..self.entries.len() {
            sum += u64::from(self.entries[hi].1);
            while self.entries[hi].0 - self.entries[lo].0 >= window {
                sum -= u64::from(self.entries[lo].1);
                lo += 1;
            }
            if sum > best {
                (best, start_at) = (sum, Some(self.entries[lo].0));
            }
        }
        (best + self.untimed, start_at)
    }

    /// Drops events before `cutoff` (for `--follow`, so memory stays flat).
    pub fn evict_before(&mut self, cutoff: i64) {
        self.compact();
        let keep_from = self.entries.partition_point(|e| e.0 < cutoff);
        self.entries.drain(..keep_from);
        self.sorted = self.entries.len();
    }

    /// Total timed events.
    pub fn total(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.1)).sum::<u64>() + self.untimed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_out_events_stay_below_a_burst() {
        let mut spread = EventTimes::default();
        // 40 events over four hours: one every six minutes.
        for i in 0..40 {
            spread.add(Some(i * 360));
        }
        assert_eq!(spread.busiest(600).0, 2);
        let mut burst = EventTimes::default();
        for i in 0..40 {
            burst.add(Some(10_000 + i * 5));
        }
        assert_eq!(burst.busiest(600), (40, Some(10_000)));
    }

    #[test]
    fn order_does_not_matter() {
        let times: Vec<i64> = (0..500).map(|i| (i * 7919) % 3000).collect();
        let mut a = EventTimes::default();
        let mut b = EventTimes::default();
        times.iter().for_each(|t| a.add(Some(*t)));
        times.iter().rev().for_each(|t| b.add(Some(*t)));
        assert_eq!(a.busiest(60), b.busiest(60));
    }

    #[test]
    fn window_is_half_open() {
        let mut e = EventTimes::default();
        e.add(Some(0));
        e.add(Some(600));
        assert_eq!(e.busiest(600).0, 1);
        assert_eq!(e.busiest(601).0, 2);
    }
}

/// Timed values (hashed) for "how many distinct values in any window" questions:
/// distinct accounts one client failed on, distinct clients failing on one account,
/// distinct paths answered 4xx. Bounded: at most [`DistinctTimes::CAP`] (second, value)
/// pairs are kept per key; past that new pairs are dropped and `capped` is set (by then
/// the key has long crossed any sensible threshold).
#[derive(Clone, Debug, Default)]
pub struct DistinctTimes {
    entries: Vec<(i64, u64)>,
    sorted: usize,
    /// Pairs were dropped at the cap.
    pub capped: bool,
    /// How many times the pairs were sorted (tests check that a full set is not re-sorted).
    #[cfg(test)]
    compactions: usize,
}

impl DistinctTimes {
    /// The most (second, value) pairs kept.
    pub const CAP: usize = 16_384;

    /// Records `value` (a hash) seen at `time`; untimed values are not counted.
    pub fn add(&mut self, time: Option<i64>, value: u64) {
        let Some(t) = time else { return };
        if self.entries.last() == Some(&(t, value)) {
            return;
        }
        if self.entries.len() >= Self::CAP && !self.make_room() {
            self.capped = true;
            return;
        }
        self.entries.push((t, value));
        if self.entries.len() > 2 * self.sorted + 64 {
            self.compact();
        }
    }

    /// Whether compacting a full set freed room. A set that is already compact is not
    /// sorted again: a scanner from one address sends thousands of distinct 4xx paths,
    /// and re-sorting 16k pairs for each of its lines past the cap made a scan of such a
    /// client several times slower.
    fn make_room(&mut self) -> bool {
        if self.sorted < self.entries.len() {
            self.compact();
        }
        self.entries.len() < Self::CAP
    }

    fn compact(&mut self) {
        self.entries.sort_unstable();
        self.entries.dedup();
        self.sorted = self.entries.len();
        #[cfg(test)]
        {
            self.compactions += 1;
        }
    }

    /// Adds every pair of `other`.
    pub fn merge(&mut self, other: DistinctTimes) {
        self.capped |= other.capped;
        self.entries.extend(other.entries);
        self.compact();
        if self.entries.len() > Self::CAP {
            // Keep the earliest pairs, so the kept set does not depend on merge order.
            self.entries.truncate(Self::CAP);
            self.capped = true;
        }
    }

    /// The most distinct values inside any window of `window` seconds, and its start.
    pub fn most_distinct(&mut self, window: i64) -> (u64, Option<i64>) {
        self.compact();
        let mut counts: std::collections::HashMap<u64, u32> = std::collections::HashMap::new();
        let (mut best, mut start, mut lo) = (0usize, None, 0usize);
        for hi in 0..self.entries.len() {
            *counts.entry(self.entries[hi].1).or_default() += 1;
            while self.entries[hi].0 - self.entries[lo].0 >= window {
                let v = self.entries[lo].1;
                let c = counts.get_mut(&v).expect("counted on entry");
                *c -= 1;
                if *c == 0 {
                    counts.remove(&v);
                }
                lo += 1;
            }
            if counts.len() > best {
                (best, start) = (counts.len(), Some(self.entries[lo].0));
            }
        }
        (best as u64, start)
    }

    /// Drops pairs before `cutoff`.
    pub fn evict_before(&mut self, cutoff: i64) {
        self.compact();
        let keep_from = self.entries.partition_point(|e| e.0 < cutoff);
        self.entries.drain(..keep_from);
        self.sorted = self.entries.len();
    }
}

#[cfg(test)]
mod distinct_tests {
    use super::*;

    #[test]
    fn distinct_values_in_the_busiest_window() {
        let mut d = DistinctTimes::default();
        for i in 0..12u64 {
            d.add(Some(100 + i as i64), i % 10);
        }
        d.add(Some(10_000), 99);
        assert_eq!(d.most_distinct(600), (10, Some(100)));
        assert_eq!(d.most_distinct(5).0, 5);
    }

    #[test]
    fn a_full_set_is_not_sorted_again_for_every_dropped_pair() {
        let mut d = DistinctTimes::default();
        let cap = DistinctTimes::CAP as u64;
        for v in 0..cap {
            d.add(Some(1_000), v);
        }
        assert!(!d.capped);
        let before = d.compactions;
        for v in cap..cap + 5_000 {
            d.add(Some(1_001), v);
        }
        assert!(d.capped);
        // One sort to find the set full, none for the rest of the dropped pairs.
        assert!(d.compactions <= before + 1, "{} sorts for 5000 dropped pairs", d.compactions - before);
        assert_eq!(d.most_distinct(60).0, cap);
    }

    #[test]
    fn merge_order_does_not_matter() {
        let mut a = DistinctTimes::default();
        let mut b = DistinctTimes::default();
        let mut whole = DistinctTimes::default();
        for i in 0..50i64 {
            let (t, v) = (i * 37 % 500, (i * 13 % 17) as u64);
            if i % 2 == 0 {
                a.add(Some(t), v)
            } else {
                b.add(Some(t), v)
            }
            whole.add(Some(t), v);
        }
        a.merge(b);
        assert_eq!(a.most_distinct(60), whole.most_distinct(60));
    }
}
