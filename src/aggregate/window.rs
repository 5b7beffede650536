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
