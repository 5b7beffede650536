//! Event times for sliding-window thresholds. Lines arrive in any order (`kubectl logs`
//! groups output per container, files are read in any order), so times are collected as
//! per-second counts, kept sorted and merged lazily, and the busiest window is found by
//! a two-pointer sweep. The answer depends only on the multiset of times, never on order.
//!
//! Memory depends on how many entries a series may hold, never on how long the logs
//! run: a series that outgrows its cap (a client failing once a second for days) counts
//! in buckets of two seconds, then four, and so on. A window's count is then a lower
//! bound: only buckets wholly inside the window are summed, so nothing is counted that
//! the window might not hold, and [`EventTimes::is_coarse`] says so.

/// Bucket starts for a resolution of `1 << shift` seconds (the floor, for any sign).
fn bucket(t: i64, shift: u32) -> i64 {
    (t >> shift) << shift
}

/// Moves `entries`, bucketed at `*shift`, to the coarser `to` (nothing when `to` is not
/// coarser); returns whether it did.
fn rebucket<T>(entries: &mut [(i64, T)], shift: &mut u32, to: u32) -> bool {
    if to <= *shift {
        return false;
    }
    *shift = to;
    entries.iter_mut().for_each(|e| e.0 = bucket(e.0, to));
    true
}

/// How far apart two bucket starts may be for both buckets (each `1 << shift` seconds)
/// to lie inside one window of `window` seconds; `None` when one bucket is longer.
fn reach(window: i64, shift: u32) -> Option<i64> {
    let reach = window - (1i64 << shift);
    (reach >= 0).then_some(reach)
}

/// The entries of a series: `(bucket start, value)`. The first is held in place, so a
/// record with one event (a one-off name in a spray of failed logins, each making an
/// account record) allocates nothing for it, and a fold frees nothing.
type Entries<T> = smallvec::SmallVec<[(i64, T); 1]>;

/// Drops the entries of buckets that end by `cutoff` (a bucket reaching past it stays);
/// `entries` are sorted. Room left mostly empty is given back: under `--follow` a client
/// busy hours ago would otherwise hold (and be charged for) its peak for as long as it
/// stays.
fn drop_before<T>(entries: &mut Entries<T>, shift: u32, cutoff: i64) {
    let width = 1i64 << shift;
    let keep_from = entries.partition_point(|e| e.0 + width <= cutoff);
    entries.drain(..keep_from);
    if entries.capacity() > 4 * entries.len().max(16) {
        // `grow` to a smaller capacity than held reallocates down (or back in place).
        entries.grow(2 * entries.len());
    }
}

/// Per-second event counts, coarsened past [`EventTimes::CAP`] entries.
#[derive(Clone, Debug, Default)]
pub struct EventTimes {
    /// `(bucket start, count)`; the first `sorted` entries are sorted and unique.
    entries: Entries<u32>,
    sorted: usize,
    /// Each entry covers `1 << shift` seconds (0 until the series outgrew its cap).
    shift: u32,
    /// Events that carried no time at all.
    pub untimed: u64,
}

impl EventTimes {
    /// The most entries a series keeps once compacted (16 KiB; between compactions it
    /// may hold twice that, 32 KiB). The buckets are the finest that fit the cap, so they depend
    /// on the set of times and not on the order they came in: a day at one event a second
    /// counts in 128-second buckets (two fit in the default 5-minute rule windows, four
    /// in the 10-minute scan window), three hours in 16-second ones.
    pub const CAP: usize = 1024;

    /// Records one event at `time` (or one untimed event).
    pub fn add(&mut self, time: Option<i64>) {
        let Some(t) = time else {
            self.untimed += 1;
            return;
        };
        let t = bucket(t, self.shift);
        if let Some(last) = self.entries.last_mut().filter(|l| l.0 == t) {
            last.1 = last.1.saturating_add(1);
            return;
        }
        self.entries.push((t, 1));
        // The second bound keeps the vector within twice the cap (its capacity too).
        if self.entries.len() > 2 * self.sorted + 64 || self.entries.len() >= 2 * Self::CAP {
            self.compact();
        }
    }

    /// Sorts and merges equal buckets, coarsening until the series fits its cap.
    fn compact(&mut self) {
        self.entries.sort_unstable_by_key(|e| e.0);
        self.merge_equal();
        while self.entries.len() > Self::CAP {
            // Flooring keeps the order, so neighbours only need adding up.
            let coarser = self.shift + 1;
            rebucket(&mut self.entries, &mut self.shift, coarser);
            self.merge_equal();
        }
    }

    /// Adds up neighbouring entries of one bucket (the entries are sorted).
    fn merge_equal(&mut self) {
        self.entries.dedup_by(|next, kept| {
            let same = next.0 == kept.0;
            if same {
                kept.1 = kept.1.saturating_add(next.1);
            }
            same
        });
        self.sorted = self.entries.len();
    }

    /// Brings the series to buckets of at least `1 << shift` seconds (left unsorted).
    fn coarsen_to(&mut self, shift: u32) {
        if rebucket(&mut self.entries, &mut self.shift, shift) {
            self.sorted = 0;
        }
    }

    /// Adds every event of `other`.
    pub fn merge(&mut self, mut other: EventTimes) {
        self.untimed += other.untimed;
        let shift = self.shift.max(other.shift);
        self.coarsen_to(shift);
        other.coarsen_to(shift);
        self.entries.extend(other.entries);
        self.compact();
    }

    /// Whether the series counts in buckets longer than a second, so that window counts
    /// are lower bounds.
    pub fn is_coarse(&self) -> bool {
        self.shift > 0
    }

    /// Bytes the series holds outside itself (at most twice [`EventTimes::CAP`] entries).
    pub fn heap_bytes(&self) -> usize {
        super::spilled_bytes(&self.entries)
    }

    /// The most events in any window of `window` seconds, `[t, t + window)`, plus the
    /// untimed events (which could have happened in any window), and where it starts.
    /// Once coarse, only buckets wholly inside a window count toward it.
    pub fn busiest(&mut self, window: i64) -> (u64, Option<i64>) {
        self.compact();
        let Some(span) = reach(window, self.shift) else { return (self.untimed, None) };
        let (mut best, mut start_at, mut sum, mut lo) = (0u64, None, 0u64, 0usize);
        for hi in 0..self.entries.len() {
            sum += u64::from(self.entries[hi].1);
            while self.entries[hi].0 - self.entries[lo].0 > span {
                sum -= u64::from(self.entries[lo].1);
                lo += 1;
            }
            if sum > best {
                (best, start_at) = (sum, Some(self.entries[lo].0));
            }
        }
        (best + self.untimed, start_at)
    }

    /// Drops events before `cutoff` (for `--follow`, so memory stays flat); a bucket
    /// that reaches past it stays.
    pub fn evict_before(&mut self, cutoff: i64) {
        self.compact();
        drop_before(&mut self.entries, self.shift, cutoff);
        self.sorted = self.entries.len();
    }

    /// The start of the latest bucket that holds an event.
    pub fn latest(&self) -> Option<i64> {
        self.entries.iter().map(|e| e.0).max()
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

    /// The busiest window's count straight from the times (no buckets, no cap).
    fn exact_busiest(times: &[i64], window: i64) -> u64 {
        let mut sorted = times.to_vec();
        sorted.sort_unstable();
        let mut lo = 0;
        let mut best = 0;
        for hi in 0..sorted.len() {
            while sorted[hi] - sorted[lo] >= window {
                lo += 1;
            }
            best = best.max(hi + 1 - lo);
        }
        best as u64
    }

    #[test]
    fn a_series_running_for_days_stays_within_its_cap() {
        let mut e = EventTimes::default();
        for t in 0..100_000 {
            e.add(Some(t));
            assert!(e.entries.len() < 2 * EventTimes::CAP);
        }
        assert!(e.is_coarse());
        assert_eq!(e.total(), 100_000);
        // 128-second buckets: four fit inside ten minutes, so at least 512 of the 600.
        assert_eq!(e.busiest(600), (512, Some(0)));
        assert_eq!(e.shift, 7);
        assert!(e.entries.len() <= EventTimes::CAP);
        // A bucket longer than the window holds no whole window: nothing is claimed.
        assert_eq!(e.busiest(100).0, 0);
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(48))]
        #[test]
        fn coarse_counts_are_lower_bounds_that_do_not_depend_on_order(
            span in 4_000i64..200_000,
            offsets in proptest::collection::vec(0u32..1_000_000, 3_000..9_000),
            window in proptest::sample::select(vec![60i64, 300, 600, 3600]),
        ) {
            let times: Vec<i64> = offsets.iter().map(|o| 1_700_000_000 + i64::from(*o) % span).collect();
            let mut whole = EventTimes::default();
            times.iter().for_each(|t| whole.add(Some(*t)));
            let (first, second) = times.split_at(times.len() / 3);
            let (mut a, mut b) = (EventTimes::default(), EventTimes::default());
            second.iter().rev().for_each(|t| b.add(Some(*t)));
            first.iter().for_each(|t| a.add(Some(*t)));
            let (mut a_then_b, mut b_then_a) = (a.clone(), b);
            a_then_b.merge(b_then_a.clone());
            b_then_a.merge(a);
            let got = whole.busiest(window).0;
            proptest::prop_assert_eq!(a_then_b.busiest(window).0, got);
            proptest::prop_assert_eq!(b_then_a.busiest(window).0, got);
            proptest::prop_assert!(got <= exact_busiest(&times, window));
            // Events that fit in a window two buckets shorter are always counted whole.
            let width = 1i64 << whole.shift;
            if window - 2 * width + 2 >= 1 {
                proptest::prop_assert!(got >= exact_busiest(&times, window - 2 * width + 2));
            }
            proptest::prop_assert_eq!(whole.is_coarse(), whole.shift > 0);
            if !whole.is_coarse() {
                proptest::prop_assert_eq!(got, exact_busiest(&times, window));
            }
        }
    }

    #[test]
    fn merging_series_of_different_resolutions_aligns_them() {
        let mut coarse = EventTimes::default();
        (0..4_000).for_each(|t| coarse.add(Some(t)));
        coarse.compact();
        assert_eq!(coarse.shift, 2);
        let mut fine = EventTimes::default();
        [1, 5, 9].into_iter().for_each(|t| fine.add(Some(t)));
        let mut whole = coarse.clone();
        [1, 5, 9].into_iter().for_each(|t| whole.add(Some(t)));
        // Two 4-second buckets fit in 8 seconds: [0, 4) and [4, 8), five events each.
        assert_eq!(whole.busiest(8).0, 10);
        let mut other_way = fine.clone();
        other_way.merge(coarse.clone());
        coarse.merge(fine);
        assert_eq!(coarse.busiest(8).0, 10);
        assert_eq!(other_way.busiest(8).0, 10);
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
/// distinct paths answered 4xx. Bounded: at most [`DistinctTimes::CAP`] (bucket, value)
/// pairs are kept per key. A full set first counts in coarser buckets (up to
/// [`DistinctTimes::MAX_SHIFT`]), which merges a value repeated second after second;
/// past that new pairs are dropped and `capped` is set (by then the key has long crossed
/// any sensible threshold). Either way window counts become lower bounds.
#[derive(Clone, Debug, Default)]
pub struct DistinctTimes {
    entries: Entries<u64>,
    sorted: usize,
    /// Each pair's time is a bucket of `1 << shift` seconds.
    shift: u32,
    /// Pairs were dropped at the cap.
    pub capped: bool,
    /// How many times the pairs were sorted (tests check that a full set is not re-sorted).
    #[cfg(test)]
    compactions: usize,
}

impl DistinctTimes {
    /// The most (bucket, value) pairs kept (64 KiB): far more distinct values than any
    /// threshold asks for in one window.
    pub const CAP: usize = 4096;
    /// The coarsest buckets a full set moves to before it drops pairs: 32 seconds.
    pub const MAX_SHIFT: u32 = 5;

    /// Records `value` (a hash) seen at `time`; untimed values are not counted.
    pub fn add(&mut self, time: Option<i64>, value: u64) {
        // A set found full at its coarsest is frozen: pairs repeated out of turn would
        // otherwise free a slot at each sort, and fill it again, line after line.
        let (Some(t), false) = (time, self.capped) else { return };
        let pair = (bucket(t, self.shift), value);
        if self.entries.last() == Some(&pair) {
            return;
        }
        if self.entries.len() >= Self::CAP && !self.make_room() {
            self.capped = true;
            return;
        }
        // Bucketed again: making room may have coarsened the set.
        self.entries.push((bucket(t, self.shift), value));
        if self.entries.len() > 2 * self.sorted + 64 {
            self.compact();
        }
    }

    /// Whether compacting a full set, and then coarsening it, left room for a sixteenth
    /// of the cap; when it did not, the caller freezes the set. So a full set is sorted
    /// at most once per that many new pairs: a scanner from one address sends thousands
    /// of distinct 4xx paths, and re-sorting the whole set for each of its lines past the
    /// cap made a scan of such a client a hundred times slower.
    fn make_room(&mut self) -> bool {
        if self.sorted < self.entries.len() {
            self.compact();
        }
        let room = Self::CAP - Self::CAP / 16;
        while self.entries.len() >= room && self.shift < Self::MAX_SHIFT {
            self.coarsen_to(self.shift + 1);
            self.compact();
        }
        self.entries.len() < room
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

    /// Brings the pairs to buckets of at least `1 << shift` seconds (left unsorted).
    fn coarsen_to(&mut self, shift: u32) {
        if rebucket(&mut self.entries, &mut self.shift, shift) {
            self.sorted = 0;
        }
    }

    /// Adds every pair of `other`.
    pub fn merge(&mut self, mut other: DistinctTimes) {
        self.capped |= other.capped;
        let shift = self.shift.max(other.shift);
        self.coarsen_to(shift);
        other.coarsen_to(shift);
        self.entries.extend(other.entries);
        self.make_room();
        if self.entries.len() > Self::CAP {
            // Keep the earliest pairs, so the kept set does not depend on merge order.
            self.entries.truncate(Self::CAP);
            self.capped = true;
        }
    }

    /// Whether window counts are lower bounds: pairs were dropped or bucketed coarser
    /// than a second.
    pub fn is_coarse(&self) -> bool {
        self.capped || self.shift > 0
    }

    /// Bytes the set holds outside itself.
    pub fn heap_bytes(&self) -> usize {
        super::spilled_bytes(&self.entries)
    }

    /// The most distinct values inside any window of `window` seconds, and its start.
    /// Once coarse, only buckets wholly inside a window count toward it.
    pub fn most_distinct(&mut self, window: i64) -> (u64, Option<i64>) {
        // As coarse as the whole set needs, whatever order its pairs came in.
        self.make_room();
        let Some(span) = reach(window, self.shift) else { return (0, None) };
        let mut counts: std::collections::HashMap<u64, u32> = std::collections::HashMap::new();
        let (mut best, mut start, mut lo) = (0usize, None, 0usize);
        for hi in 0..self.entries.len() {
            *counts.entry(self.entries[hi].1).or_default() += 1;
            while self.entries[hi].0 - self.entries[lo].0 > span {
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

    /// Drops pairs before `cutoff`; a bucket that reaches past it stays.
    pub fn evict_before(&mut self, cutoff: i64) {
        self.compact();
        drop_before(&mut self.entries, self.shift, cutoff);
        self.sorted = self.entries.len();
    }
}

#[cfg(test)]
mod distinct_tests {
    use super::*;

    #[test]
    fn eviction_gives_back_the_room_of_what_it_dropped() {
        let (mut times, mut distinct) = (EventTimes::default(), DistinctTimes::default());
        for t in 0..3_000i64 {
            times.add(Some(t));
            distinct.add(Some(t), t as u64);
        }
        let peak = (times.heap_bytes(), distinct.heap_bytes());
        times.evict_before(2_990);
        distinct.evict_before(2_990);
        assert!(times.heap_bytes() * 8 < peak.0, "{} of {}", times.heap_bytes(), peak.0);
        assert!(distinct.heap_bytes() * 8 < peak.1, "{} of {}", distinct.heap_bytes(), peak.1);
        // What is left still counts.
        assert!(times.busiest(600).0 >= 10 && distinct.most_distinct(600).0 >= 1);
    }

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
        // One sort to find the set full and one per coarser bucket size it tries, none for
        // the rest of the dropped pairs.
        let most = before + 1 + DistinctTimes::MAX_SHIFT as usize;
        assert!(d.compactions <= most, "{} sorts for 5000 dropped pairs", d.compactions - before);
        assert_eq!(d.most_distinct(60).0, cap);
    }

    #[test]
    fn a_value_repeated_for_hours_does_not_crowd_out_a_later_burst() {
        let mut d = DistinctTimes::default();
        // The same 404 path once a second for over a day, then 50 new paths in 50 seconds.
        (0..100_000).for_each(|t| d.add(Some(t), 7));
        (0..50).for_each(|i| d.add(Some(200_000 + i), 100 + i as u64));
        assert!(!d.capped);
        assert!(d.is_coarse());
        assert_eq!(d.most_distinct(300).0, 50);
        assert!(d.entries.len() <= DistinctTimes::CAP);
    }

    #[test]
    fn pairs_repeated_out_of_turn_do_not_sort_a_full_set_each_time() {
        let mut d = DistinctTimes::default();
        let cap = DistinctTimes::CAP as u64;
        (0..cap - 1).for_each(|v| d.add(Some(1_000), v));
        let before = d.compactions;
        // Two values taking turns: never the same pair twice in a row, so only sorting
        // finds the repeats, and each sort frees the one slot the next pair takes.
        (0..5_000u64).for_each(|i| d.add(Some(1_001), i % 2));
        assert!(d.capped);
        let sorts = d.compactions - before;
        assert!(sorts <= 1 + DistinctTimes::MAX_SHIFT as usize, "{sorts} sorts for 5000 pairs");
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
