//! Compact client entries shared by the workers of one scan. Chunks go to whichever
//! worker is free, and a client's lines are spread over the whole input, so each worker
//! sees nearly every client: with a table per worker, every quiet client was held once
//! per worker, and on two threads those tables were a quarter of the peak. One table, in
//! shards behind locks, holds each client once. A worker locks one shard per 4xx line from
//! a client without a full record, and one per shard for each batch of its quiet lines
//! ([`SharedLights::update_sorted`]); the other worker is on another shard most of the time.
//!
//! Entries here are only ever combined, never judged: when the scan ends they are handed
//! to the merged result ([`SharedLights::drain_into`]), which adds each to its client's full
//! record where one exists.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::age;
use super::bounded::{self, FoldPlan, Light};
use super::dense::DenseTable;
use crate::client::ClientKey;

/// Enough shards that two workers rarely want the same one at once (and few enough to
/// number in a byte).
pub const SHARDS: usize = 64;

/// The shard that holds `key`: the address's bytes folded together, cheaper than the
/// keyed hash the shard's map computes next anyway. Addresses chosen to share a shard
/// cost time, not memory.
pub fn shard_of(key: &ClientKey) -> usize {
    let i = match key.0 {
        ipnet::IpNet::V4(n) => n.addr().octets().iter().fold(0, |h, b| h ^ b),
        ipnet::IpNet::V6(n) => n.addr().octets().iter().fold(0, |h, b| h ^ b),
    };
    usize::from(i) % SHARDS
}

/// One shard on cache lines of its own: two workers locking neighbouring shards would
/// otherwise pass one line back and forth on every quiet line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(Mutex<DenseTable<ClientKey, Light>>);

/// The light entries of all workers of one scan, at most `limit` of them.
#[derive(Debug)]
pub struct SharedLights {
    shards: Box<[Shard]>,
    len: AtomicUsize,
    limit: usize,
    /// Held by the worker that is folding, so that two do not fold at once (each would
    /// fold a quarter, together half).
    folding: Mutex<()>,
}

impl SharedLights {
    /// An empty table that holds at most `limit` entries.
    pub fn new(limit: usize) -> SharedLights {
        let shards = (0..SHARDS).map(|_| Shard::default()).collect();
        SharedLights { shards, len: AtomicUsize::new(0), limit, folding: Mutex::new(()) }
    }

    fn shard(&self, key: &ClientKey) -> MutexGuard<'_, DenseTable<ClientKey, Light>> {
        self.lock(shard_of(key))
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, DenseTable<ClientKey, Light>> {
        // A worker that panicked leaves whole entries: each update is one call.
        self.shards[shard].0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Entries held (a snapshot: other workers may change it).
    pub fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies `f` to the entry of `key`, created by `new` if absent; false, with nothing
    /// done, when it is absent and `bounded` and the table is full (the caller folds, then
    /// updates unbounded: the limit is kept by folding, never by losing a line).
    pub fn update(
        &self,
        key: ClientKey,
        new: impl FnOnce() -> Light,
        f: impl FnOnce(&mut Light),
        bounded: bool,
    ) -> bool {
        let mut shard = self.shard(&key);
        if let Some(l) = shard.get_mut(&key) {
            f(l);
            return true;
        }
        if bounded && self.len() >= self.limit {
            return false;
        }
        let mut l = new();
        f(&mut l);
        shard.insert(key, l);
        self.len.fetch_add(1, Relaxed);
        true
    }

    /// [`SharedLights::update`] (bounded) for each of `items`, which are sorted by the
    /// shard of their `key` ([`shard_of`]): one lock per shard they fall in. `Err(i)` when
    /// `items[i]` is absent and the table is full; the items before it were applied, it
    /// and those after it were not.
    pub fn update_sorted<T>(
        &self,
        items: &[T],
        key: impl Fn(&T) -> ClientKey,
        new: impl Fn(ClientKey) -> Light,
        f: impl Fn(&T, &mut Light),
    ) -> Result<(), usize> {
        let mut start = 0;
        while start < items.len() {
            let i = shard_of(&key(&items[start]));
            let end = start + items[start..].iter().take_while(|t| shard_of(&key(t)) == i).count();
            let mut shard = self.lock(i);
            let run = &items[start..end];
            for (n, item) in run.iter().enumerate() {
                shard.prefetch_ahead(run, n, &key);
                let k = key(item);
                if let Some(l) = shard.get_mut(&k) {
                    f(item, l);
                    continue;
                }
                if self.len() >= self.limit {
                    return Err(start + n);
                }
                let mut l = new(k);
                f(item, &mut l);
                shard.insert(k, l);
                self.len.fetch_add(1, Relaxed);
            }
            start = end;
        }
        Ok(())
    }

    /// Folds the entries with the least evidence (then the oldest), down to 3/4 of the
    /// limit, handing each to `folded`. Does nothing while another worker folds. The marks
    /// of clients with full records rank above every light entry ([`Light::fold_rank`]).
    pub fn fold(&self, mut folded: impl FnMut(ClientKey, &Light)) {
        let Ok(_alone) = self.folding.try_lock() else { return };
        let target = self.limit / 4 * 3;
        // Two passes, a shard at a time, instead of a list of every entry (4 MB at the
        // default limit, while the table is at its fullest). Entries that change between
        // the passes only move the fold a little off 3/4.
        let (mut histogram, mut len) = ([0; bounded::LEVELS], 0);
        self.each(|_, l| {
            bounded::count_level(&mut histogram, l.fold_rank(), 1);
            len += 1;
        });
        let level = bounded::level_of(&histogram, len, target);
        let mut ranks = Vec::new();
        self.each(|key, l| {
            if l.fold_rank() == level {
                ranks.push(bounded::rank(age(key, l.fold_time())));
            }
        });
        let plan = FoldPlan::at_level(level, bounded::below(&histogram, level), ranks, len, target);
        for shard in self.shards.iter() {
            let mut shard = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
            shard.retain(|key, l| {
                let keep = !plan.folds_by(l.fold_rank(), || age(key, l.fold_time()));
                if !keep {
                    folded(*key, l);
                    self.len.fetch_sub(1, Relaxed);
                }
                keep
            });
        }
    }

    /// Calls `f` with every entry, a shard at a time.
    fn each(&self, mut f: impl FnMut(&ClientKey, &Light)) {
        for shard in self.shards.iter() {
            shard.0.lock().unwrap_or_else(PoisonError::into_inner).iter().for_each(|(k, l)| f(k, l));
        }
    }

    /// Takes every entry out (marks as [`Light::unmarked`]), a shard at a time, each
    /// shard's table freed before the next is read (the entries are on their way into
    /// another table: both at once would be the peak of a scan).
    pub fn drain_into(&self, mut f: impl FnMut(ClientKey, Light)) {
        for shard in self.shards.iter() {
            let taken = std::mem::take(&mut *shard.0.lock().unwrap_or_else(PoisonError::into_inner));
            self.len.fetch_sub(taken.len(), Relaxed);
            taken.into_iter().filter_map(|(k, l)| Some((k, l.unmarked()?))).for_each(|(k, l)| f(k, l));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::bounded::LightEvent;

    fn key(i: u32) -> ClientKey {
        ClientKey(ipnet::IpNet::from(std::net::IpAddr::from(i.to_be_bytes())))
    }

    fn count(l: &mut Light) {
        l.request(Some(200));
    }

    #[test]
    fn two_workers_count_every_line_of_shared_clients() {
        let table = SharedLights::new(usize::MAX);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    (0..20_000)
                        .for_each(|i| assert!(table.update(key(i % 1000), Light::default, count, true)))
                });
            }
        });
        assert_eq!(table.len(), 1000);
        let mut total = 0;
        table.drain_into(|_, l| total += l.requests);
        assert_eq!((total, table.len()), (40_000, 0));
    }

    #[test]
    fn sorted_updates_stop_at_the_first_entry_a_full_table_cannot_take() {
        let table = SharedLights::new(3);
        let mut keys: Vec<ClientKey> = (0..6).map(key).chain([key(0), key(0)]).collect();
        keys.sort_by_key(shard_of);
        let full = table.update_sorted(&keys, |k| *k, |_| Light::default(), |_, l| count(l)).unwrap_err();
        // Every key before `full` was counted, `full` itself (absent: the table is full) not.
        assert!(!keys[..full].contains(&keys[full]));
        assert_eq!(table.len(), 3);
        let mut counted = 0;
        table.drain_into(|_, l| counted += l.requests);
        assert_eq!(counted, full as u64);
        let unbounded = SharedLights::new(usize::MAX);
        assert_eq!(unbounded.update_sorted(&keys, |k| *k, |_| Light::default(), |_, l| count(l)), Ok(()));
        let mut counted = 0;
        unbounded.drain_into(|_, l| counted += l.requests);
        assert_eq!(counted, 8);
    }

    #[test]
    fn a_full_table_asks_for_a_fold_and_folds_the_least_evidence() {
        let table = SharedLights::new(8);
        let event = LightEvent::new(Some(1), None);
        for i in 0..8 {
            let evidence = if i == 0 { vec![event] } else { vec![] };
            let new = || Light::with_events(1, [(200, 1)], (Some(1), Some(1)), evidence, 0);
            assert!(table.update(key(i), new, |_| {}, true));
        }
        assert!(!table.update(key(99), Light::default, count, true), "full: the caller folds first");
        let mut folded = Vec::new();
        table.fold(|k, l| folded.push((k, l.evidence())));
        assert_eq!(folded.len(), 2, "down to 3/4 of the limit");
        assert!(folded.iter().all(|(k, e)| *e == 0 && *k != key(0)), "the client with evidence stays");
        assert!(table.update(key(99), Light::default, count, true));
    }
}
