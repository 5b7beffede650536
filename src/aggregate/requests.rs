//! Every client's request times, for request rates over a window (`--max-request-rate`).
//! A compact entry counts a client's requests but keeps no times, and a full record is
//! made only for evidence, so the times of a flood of plain `200`s would be nowhere: they
//! are kept here, one series per client, beside whichever entry counts the client. Only a
//! scan that judges request rates keeps them: the cost is a lookup per line, made in
//! batches ([`BATCH`]). Under `--follow`, times older than the window are dropped.
//!
//! Series are [`EventTimes`]: per-second counts, coarsened past their cap, whose busiest
//! window depends only on the set of times, so that the parts of a scan merge exactly.
//! The table is bounded in bytes: when full, the series with the fewest requests are
//! dropped, down to 3/4 of the bound. A client that floods after its series was dropped
//! gets a new one, which holds the flood; only its earlier times are lost, so a window's
//! count is a lower bound, and the scan says how many series were dropped. On several
//! threads the workers share one table ([`SharedRequestTimes`]), so each client's series
//! is held once.

use std::sync::{Arc, Mutex, PoisonError};

use super::dense::DenseTable;
use super::shared::{SHARDS, shard_of};
use super::window::EventTimes;
use crate::client::ClientKey;

/// Bytes a series is charged besides its heap: its key, its index slot and the table's
/// spare room.
const ENTRY_BYTES: usize = std::mem::size_of::<(ClientKey, EventTimes)>() * 2;

/// Requests held before they are counted: counted one at a time, each waited for its
/// client's series to come from main memory (the table outgrows the caches; the lookup
/// was a seventh of a one-thread scan in perf); counted in a batch, the lookups of the
/// lines ahead are asked for first (see [`DenseTable::prefetch_ahead`]).
const BATCH: usize = 2048;

/// Request times per client, within a bound in bytes (which a batch may pass until it is
/// counted).
#[derive(Clone, Debug)]
pub struct RequestTimes {
    series: DenseTable<ClientKey, EventTimes>,
    /// Requests not yet counted in `series` (see [`BATCH`]).
    pending: Vec<(ClientKey, Option<i64>)>,
    /// Bytes the series are charged ([`ENTRY_BYTES`] each plus their heap).
    bytes: usize,
    limit: usize,
    /// Series dropped to stay within the bound.
    pub dropped: u64,
    /// When set, the requests go there instead of into `series`: one table for all the
    /// workers of a scan, handed back by [`SharedRequestTimes::drain`].
    pub shared: Option<Arc<SharedRequestTimes>>,
}

impl RequestTimes {
    /// An empty table that holds at most about `limit` bytes.
    pub fn new(limit: usize) -> RequestTimes {
        RequestTimes {
            series: DenseTable::default(),
            pending: Vec::new(),
            bytes: 0,
            limit,
            dropped: 0,
            shared: None,
        }
    }

    /// Counts a request of `key`'s at `time` (in a batch: see [`RequestTimes::flush`]).
    pub fn add(&mut self, key: ClientKey, time: Option<i64>) {
        self.pending.push((key, time));
        if self.pending.len() >= BATCH {
            self.flush();
        }
    }

    /// Counts the requests held back. Every reading of the series does this first; the
    /// pipeline's workers also do after every chunk ([`super::Aggregator::settle`]).
    pub fn flush(&mut self) {
        if let Some(shared) = &self.shared {
            shared.add_all(&self.pending);
            self.pending.clear();
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        for (i, &(key, time)) in pending.iter().enumerate() {
            self.series.prefetch_ahead(&pending, i, |p| p.0);
            let len = self.series.len();
            let series = self.series.get_or_insert_with(key, EventTimes::default);
            let held = series.heap_bytes();
            series.add(time);
            let now = series.heap_bytes();
            let entry = if self.series.len() > len { ENTRY_BYTES } else { 0 };
            self.bytes = (self.bytes + entry + now).saturating_sub(held);
        }
        self.pending = pending;
        self.pending.clear();
        if self.bytes > self.limit {
            self.shrink();
        }
    }

    /// Adds every series of `other`, and its bound to this one's (the parts of one scan
    /// share the scan's bound).
    pub fn merge(&mut self, mut other: RequestTimes) {
        self.flush();
        other.flush();
        self.limit = self.limit.saturating_add(other.limit);
        self.dropped += other.dropped;
        for (key, times) in other.series {
            self.series.get_or_insert_with(key, EventTimes::default).merge(times);
        }
        self.bytes = self.held_bytes();
        if self.bytes > self.limit {
            self.shrink();
        }
    }

    /// Takes out the series of `key`.
    pub fn take(&mut self, key: &ClientKey) -> Option<EventTimes> {
        self.flush();
        let series = self.series.remove(key)?;
        self.bytes -= ENTRY_BYTES + series.heap_bytes();
        Some(series)
    }

    /// The series of `key`.
    pub fn get_mut(&mut self, key: &ClientKey) -> Option<&mut EventTimes> {
        self.flush();
        self.series.get_mut(key)
    }

    /// Every client's series.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&ClientKey, &mut EventTimes)> + '_ {
        self.flush();
        self.series.iter_mut()
    }

    /// Drops the times before `cutoff` (for `--follow`, so memory stays flat), and the
    /// series left empty.
    pub fn evict_before(&mut self, cutoff: i64) {
        self.flush();
        self.series.retain(|_, s| {
            s.evict_before(cutoff);
            s.total() > 0
        });
        self.bytes = self.held_bytes();
    }

    /// Bytes the series hold now ([`ENTRY_BYTES`] each plus their heap): what they are
    /// charged after a merge or an eviction, which change many at once.
    fn held_bytes(&self) -> usize {
        self.series.values().map(|s| ENTRY_BYTES + s.heap_bytes()).sum()
    }

    /// Drops the series with the fewest requests (ties: the same order in every run, see
    /// [`super::tie_order`]) until the rest fit in 3/4 of the bound.
    fn shrink(&mut self) {
        let target = self.limit / 4 * 3;
        let mut least: Vec<((u64, u64), usize)> = self
            .series
            .iter()
            .map(|(k, s)| ((s.total(), super::tie_order(k)), ENTRY_BYTES + s.heap_bytes()))
            .collect();
        least.sort_unstable();
        let (mut freed, mut cutoff) = (0, None);
        for (rank, bytes) in least {
            if self.bytes - freed <= target {
                break;
            }
            (freed, cutoff) = (freed + bytes, Some(rank));
        }
        let Some(cutoff) = cutoff else { return };
        let before = self.series.len();
        self.series.retain(|k, s| (s.total(), super::tie_order(k)) > cutoff);
        self.dropped += (before - self.series.len()) as u64;
        self.bytes -= freed;
    }
}

/// The request times of all the workers of one scan, in shards behind locks (as the
/// compact entries are, see [`super::shared`]): each worker sees nearly every client, and
/// with a table each, every client's series was held once per worker and two threads
/// dropped 39,122 of the 300 MB corpus's under the default bound. Each shard is a
/// [`RequestTimes`] with its part of the bound; a worker locks each shard once per batch.
#[derive(Debug)]
pub struct SharedRequestTimes {
    shards: Box<[Mutex<RequestTimes>]>,
}

impl SharedRequestTimes {
    /// An empty table of about `limit` bytes in all.
    pub fn new(limit: usize) -> SharedRequestTimes {
        SharedRequestTimes {
            shards: (0..SHARDS).map(|_| Mutex::new(RequestTimes::new(limit / SHARDS))).collect(),
        }
    }

    /// Counts `requests`, a lock per shard they fall in.
    fn add_all(&self, requests: &[(ClientKey, Option<i64>)]) {
        let mut by_shard: Vec<Vec<(ClientKey, Option<i64>)>> = vec![Vec::new(); SHARDS];
        requests.iter().for_each(|r| by_shard[shard_of(&r.0)].push(*r));
        for (shard, batch) in self.shards.iter().zip(by_shard).filter(|(_, b)| !b.is_empty()) {
            // A worker that panicked leaves whole series: each batch is counted under the lock.
            let mut table = shard.lock().unwrap_or_else(PoisonError::into_inner);
            table.pending.extend_from_slice(&batch);
            table.flush();
        }
    }

    /// Takes every shard's series out, as one table with the whole bound.
    pub fn drain(&self) -> RequestTimes {
        let mut all = RequestTimes::new(0);
        for shard in self.shards.iter() {
            all.merge(std::mem::replace(
                &mut *shard.lock().unwrap_or_else(PoisonError::into_inner),
                RequestTimes::new(0),
            ));
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> ClientKey {
        ClientKey(ipnet::IpNet::from(std::net::IpAddr::from(i.to_be_bytes())))
    }

    /// Two parts' series merge into the series of all the requests.
    #[test]
    fn parts_merge_into_the_whole_series() {
        let (mut a, mut b, mut whole) =
            (RequestTimes::new(1 << 20), RequestTimes::new(1 << 20), RequestTimes::new(1 << 21));
        for t in 0..100 {
            let part = if t % 3 == 0 { &mut a } else { &mut b };
            part.add(key(1), Some(t));
            whole.add(key(1), Some(t));
        }
        a.merge(b);
        let (mut merged, mut all) = (a.take(&key(1)).unwrap(), whole.take(&key(1)).unwrap());
        assert_eq!(merged.busiest(60), all.busiest(60));
        assert_eq!(merged.busiest(60), (60, Some(0)));
        assert_eq!((a.bytes, a.dropped), (0, 0));
    }

    /// Two workers adding to one shared table: every request is counted once, and the
    /// drained table holds them all.
    #[test]
    fn workers_sharing_a_table_count_every_request_once() {
        let shared = Arc::new(SharedRequestTimes::new(1 << 30));
        std::thread::scope(|s| {
            for w in 0..2 {
                let shared = shared.clone();
                s.spawn(move || {
                    let mut mine = RequestTimes::new(0);
                    mine.shared = Some(shared);
                    (0..5000).for_each(|i| mine.add(key(i % 100), Some(i64::from(i * 2 + w))));
                    mine.flush();
                    assert_eq!(mine.series.len(), 0, "nothing stays with the worker");
                });
            }
        });
        let mut all = shared.drain();
        let counted: u64 = (0..100).map(|k| all.take(&key(k)).map_or(0, |s| s.total())).sum();
        assert_eq!((counted, all.dropped), (10_000, 0));
    }

    /// A spray of one-request clients stays within the bound; a client with many requests
    /// keeps its series, and the dropped ones are counted.
    #[test]
    fn a_spray_stays_within_the_bound_and_keeps_the_busiest() {
        let limit = 64 * ENTRY_BYTES;
        let mut table = RequestTimes::new(limit);
        (0..50).for_each(|t| table.add(key(0), Some(t)));
        (1..10_000).for_each(|i| table.add(key(i), Some(i64::from(i))));
        table.flush();
        assert!(table.bytes <= limit, "{} bytes held, bound {limit}", table.bytes);
        assert!(table.series.len() < 64 && table.dropped > 9_000);
        assert_eq!(table.get_mut(&key(0)).map(|s| s.total()), Some(50));
        assert_eq!(table.held_bytes(), table.bytes, "the charge is what the series hold");
    }
}
