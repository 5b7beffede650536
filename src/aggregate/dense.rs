//! A hash table whose entries sit packed in one vector, found through a separate index
//! of small slots (linear probing), for the tables that folding keeps within
//! `--max-memory`: the compact client entries that every quiet line updates, and the
//! account records. Two things make it fit that job better than a general-purpose table:
//!
//! - A key's slot follows from its hash alone, so a batch of lines can ask for the slots
//!   of the lines ahead, and then for their entries, before it needs them
//!   ([`DenseTable::prefetch_slot`], [`DenseTable::prefetch_entry`]): the cache misses of
//!   several lines overlap instead of each line waiting for two in turn.
//! - Folding reads every entry three times (a spray of one-off addresses or account
//!   names folds every few thousand lines). Packed entries are read front to back with no
//!   empty room between them, and a fold removes entries by compacting the vector and
//!   building the index again, not by a deletion per entry.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};

/// A map from `K` to `V`: entries packed in insertion order (a removal moves the last
/// entry into the gap), an index at most half full.
#[derive(Clone, Debug)]
pub struct DenseTable<K, V> {
    entries: Vec<(K, V)>,
    /// [`EMPTY`], or a [`slot`]: the top 32 bits of the key's hash and the entry's
    /// position. A search compares a key only when the hash bits match, so looking up an
    /// absent key (every new client) reads no entry, as a rule.
    index: Vec<u64>,
    /// How many top bits of a hash give its home slot: the index has `1 << bits` slots.
    bits: u32,
    hasher: foldhash::fast::RandomState,
}

/// An index slot that holds no entry.
const EMPTY: u64 = 0;

/// How many lookups ahead [`DenseTable::prefetch_ahead`] asks for a key's slot.
pub const AHEAD: usize = 16;

/// The fewest slots an index that holds anything has.
const MIN_SLOTS: usize = 16;

/// The index slot of the entry at `pos` whose key hashes to `hash`. Positions count
/// from one, so that no slot is [`EMPTY`].
fn slot(hash: u64, pos: usize) -> u64 {
    let pos = u32::try_from(pos + 1).expect("fewer than 2^32 - 1 entries");
    (hash >> 32) << 32 | u64::from(pos)
}

/// The position of the entry in a full `slot`.
fn position(slot: u64) -> usize {
    (slot as u32 - 1) as usize
}

impl<K, V> Default for DenseTable<K, V> {
    fn default() -> Self {
        DenseTable {
            entries: Vec::new(),
            index: Vec::new(),
            bits: 0,
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl<K: Hash + Eq, V> DenseTable<K, V> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The slot where the search for a key with `hash` starts: its top bits, so that a
    /// full slot tells its own home without hashing the key again.
    fn home(&self, hash: u64) -> usize {
        // Never asked of an empty index, so `bits` is at least 4.
        (hash >> (64 - self.bits)) as usize
    }

    fn next(&self, at: usize) -> usize {
        (at + 1) & (self.index.len() - 1)
    }

    /// The slot of `key` and its entry's position (`Ok`), or the empty slot where it
    /// would go (`Err`). The index is never full, so the search ends. `Err(0)` when
    /// there is no index yet.
    fn find<Q>(&self, hash: u64, key: &Q) -> Result<(usize, usize), usize>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        if self.index.is_empty() {
            return Err(0);
        }
        let at =
            self.probe(hash, |s| s >> 32 == hash >> 32 && self.entries[position(s)].0.borrow() == key)?;
        Ok((at, position(self.index[at])))
    }

    /// The first full slot from the home of `hash` on for which `hit` is true (`Ok`), or
    /// the empty slot that ends the search (`Err`): every search of the index, so that
    /// they all stop where a lookup would. The index must not be empty.
    fn probe(&self, hash: u64, mut hit: impl FnMut(u64) -> bool) -> Result<usize, usize> {
        let mut at = self.home(hash);
        loop {
            match self.index[at] {
                EMPTY => return Err(at),
                s if hit(s) => return Ok(at),
                _ => at = self.next(at),
            }
        }
    }

    /// Asks for the index slot where the search for `key` starts to be brought into the
    /// cache. A hint: it changes nothing. Ask a few lines ahead of
    /// [`DenseTable::prefetch_entry`], which reads that slot.
    pub fn prefetch_slot(&self, key: &K) {
        if !self.index.is_empty() {
            prefetch(std::ptr::from_ref(&self.index[self.home(self.hash(key))]).cast());
        }
    }

    /// Asks for `key`'s entry to be brought into the cache, if the index names one. It
    /// reads the index but no entry: a plain read of the entry would have to complete
    /// before the processor retires it, and a few lines on it would stall there instead
    /// of in the lookup.
    pub fn prefetch_entry(&self, key: &K) {
        if self.index.is_empty() {
            return;
        }
        let hash = self.hash(key);
        if let Ok(at) = self.probe(hash, |s| s >> 32 == hash >> 32) {
            prefetch(std::ptr::from_ref(&self.entries[position(self.index[at])]).cast());
        }
    }

    /// Prefetches for a pass that looks up the keys of `items` in turn and is at the
    /// `i`th: the slot of the key [`AHEAD`] items on, and the entry of the key half as
    /// far on, whose slot was asked for that many items before. At the first item, the
    /// slots of the first [`AHEAD`] and then the entries of half as many are asked for
    /// at once: a pass over one shard's lines may be only a few dozen long, and without
    /// this its first lines would each wait for two misses in turn.
    pub fn prefetch_ahead<T>(&self, items: &[T], i: usize, key: impl Fn(&T) -> K) {
        if i == 0 {
            items.iter().take(AHEAD).for_each(|t| self.prefetch_slot(&key(t)));
            items.iter().take(AHEAD / 2).for_each(|t| self.prefetch_entry(&key(t)));
        }
        if let Some(t) = items.get(i + AHEAD) {
            self.prefetch_slot(&key(t));
        }
        if let Some(t) = items.get(i + AHEAD / 2) {
            self.prefetch_entry(&key(t));
        }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (_, pos) = self.find(self.hash(key), key).ok()?;
        Some(&self.entries[pos].1)
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (_, pos) = self.find(self.hash(key), key).ok()?;
        Some(&mut self.entries[pos].1)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.find(self.hash(key), key).is_ok()
    }

    /// The value of `key`, made by `new` if there is none.
    pub fn get_or_insert_with(&mut self, key: K, new: impl FnOnce() -> V) -> &mut V {
        let hash = self.hash(&key);
        let pos = match self.find(hash, &key) {
            Ok((_, pos)) => pos,
            Err(at) => self.push(hash, at, key, new()),
        };
        &mut self.entries[pos].1
    }

    /// Sets the value of `key`, returning the one it replaces.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let hash = self.hash(&key);
        match self.find(hash, &key) {
            Ok((_, pos)) => Some(std::mem::replace(&mut self.entries[pos].1, value)),
            Err(at) => {
                self.push(hash, at, key, value);
                None
            }
        }
    }

    /// Adds an entry for a key that is absent, whose search ended at slot `at`; returns
    /// its position.
    fn push(&mut self, hash: u64, at: usize, key: K, value: V) -> usize {
        let pos = self.entries.len();
        self.entries.push((key, value));
        if (pos + 1) * 2 > self.index.len() {
            // The index grows; `at` was a slot of the old one.
            self.rebuild((pos + 1) * 2);
        } else {
            self.index[at] = slot(hash, pos);
        }
        pos
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (at, pos) = self.find(self.hash(key), key).ok()?;
        self.clear_slot(at);
        let last = self.entries.len() - 1;
        if pos != last {
            // The last entry moves into the gap: its slot must say where it went.
            let moved = self.slot_of_position(last);
            self.index[moved] = slot(self.index[moved], pos);
        }
        Some(self.entries.swap_remove(pos).1)
    }

    /// The index slot that holds the entry at `pos`.
    fn slot_of_position(&self, pos: usize) -> usize {
        let hash = self.hash(&self.entries[pos].0);
        self.probe(hash, |s| position(s) == pos).expect("every entry has a slot on its search")
    }

    /// Empties slot `at` and closes the gap: the slots after it in its run move back if
    /// their search would otherwise stop at the gap (backward-shift deletion, so that no
    /// tombstones lengthen later searches).
    fn clear_slot(&mut self, at: usize) {
        self.index[at] = EMPTY;
        let mask = self.index.len() - 1;
        let (mut gap, mut next) = (at, self.next(at));
        while self.index[next] != EMPTY {
            // The slot may fill the gap if its search passes the gap on the way to it.
            let home = self.home(self.index[next]);
            if (next.wrapping_sub(home) & mask) >= (next.wrapping_sub(gap) & mask) {
                self.index[gap] = self.index[next];
                self.index[next] = EMPTY;
                gap = next;
            }
            next = self.next(next);
        }
    }

    /// Keeps the entries for which `keep` is true, asking each once, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        let before = self.entries.len();
        self.entries.retain_mut(|(k, v)| keep(k, v));
        if self.entries.len() != before {
            self.rebuild(self.index.len());
        }
    }

    /// Makes room for `more` entries, so that adding them grows neither the vector nor
    /// the index.
    pub fn reserve(&mut self, more: usize) {
        self.entries.reserve(more);
        let need = (self.entries.len() + more) * 2;
        if need > self.index.len() {
            self.rebuild(need);
        }
    }

    /// Builds the index again for the entries, with at least `slots` slots (a power of
    /// two, at least [`MIN_SLOTS`]).
    fn rebuild(&mut self, slots: usize) {
        let size = slots.next_power_of_two().max(MIN_SLOTS);
        self.bits = size.trailing_zeros();
        self.index.clear();
        self.index.resize(size, EMPTY);
        for pos in 0..self.entries.len() {
            let hash = self.hash(&self.entries[pos].0);
            let at = self.probe(hash, |_| false).expect_err("no full slot is a hit");
            self.index[at] = slot(hash, pos);
        }
    }

    /// The entries, in the table's order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + Clone + '_ {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> + Clone + '_ {
        self.entries.iter().map(|(_, v)| v)
    }

    /// The entries, in the table's order, their values to change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> + '_ {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> + '_ {
        self.entries.iter_mut().map(|(_, v)| v)
    }
}

impl<K, V> IntoIterator for DenseTable<K, V> {
    type Item = (K, V);
    type IntoIter = std::vec::IntoIter<(K, V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

/// Asks the processor to bring the cache line at `p` in, without waiting for it.
#[cfg(target_arch = "x86_64")]
fn prefetch(p: *const i8) {
    // SAFETY: a prefetch is a hint. It reads nothing the program sees and cannot fault,
    // whatever the address; here it is always an element of the table's own vectors.
    unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p) }
}

#[cfg(not(target_arch = "x86_64"))]
fn prefetch(_: *const i8) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// One change to a table, for the property test.
    #[derive(Clone, Debug)]
    enum Op {
        Insert(u8, u32),
        Remove(u8),
        Add(u8),
        /// Keeps the entries whose value is not divisible by this.
        Retain(u32),
        Reserve(u8),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (any::<u8>(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            any::<u8>().prop_map(Op::Remove),
            any::<u8>().prop_map(Op::Add),
            (2u32..5).prop_map(Op::Retain),
            any::<u8>().prop_map(Op::Reserve),
        ]
    }

    /// Every full slot's search reaches it from its home without crossing an empty slot,
    /// and the slots name each entry once.
    fn index_is_whole<K: Hash + Eq, V>(table: &DenseTable<K, V>) -> Result<(), String> {
        let full: Vec<usize> = (0..table.index.len()).filter(|&at| table.index[at] != EMPTY).collect();
        let mut named: Vec<usize> = full.iter().map(|&at| position(table.index[at])).collect();
        named.sort_unstable();
        if named != (0..table.len()).collect::<Vec<_>>() {
            return Err(format!("slots name {named:?} for {} entries", table.len()));
        }
        for &at in &full {
            let hash = table.hash(&table.entries[position(table.index[at])].0);
            if table.index[at] >> 32 != hash >> 32 {
                return Err(format!("slot {at} has another key's hash"));
            }
            let mut probe = table.home(hash);
            while probe != at {
                if table.index[probe] == EMPTY {
                    return Err(format!("slot {at} is past an empty slot from its home"));
                }
                probe = table.next(probe);
            }
        }
        Ok(())
    }

    proptest::proptest! {
        /// The table holds what a `HashMap` given the same changes holds, after each one;
        /// retain asks every entry once. Keys are few, so runs form, wrap past the end
        /// of the index and are broken by removals.
        #[test]
        fn holds_what_a_hash_map_holds(ops in proptest::collection::vec(op(), 1..400)) {
            let mut table = DenseTable::default();
            let mut model = std::collections::HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => proptest::prop_assert_eq!(table.insert(k, v), model.insert(k, v)),
                    Op::Remove(k) => proptest::prop_assert_eq!(table.remove(&k), model.remove(&k)),
                    Op::Add(k) => {
                        *table.get_or_insert_with(k, || 0) += 1;
                        *model.entry(k).or_insert(0) += 1;
                    }
                    Op::Retain(d) => {
                        let mut asked = Vec::new();
                        table.retain(|k, v| { asked.push(*k); *v % d != 0 });
                        model.retain(|_, v| *v % d != 0);
                        asked.sort_unstable();
                        let before = asked.len();
                        asked.dedup();
                        proptest::prop_assert_eq!(asked.len(), before, "an entry asked twice");
                    }
                    Op::Reserve(n) => table.reserve(usize::from(n)),
                }
                proptest::prop_assert_eq!(table.len(), model.len());
                proptest::prop_assert_eq!(index_is_whole(&table), Ok(()));
                for k in 0..=u8::MAX {
                    table.prefetch_slot(&k);
                    table.prefetch_entry(&k);
                    proptest::prop_assert_eq!(table.get(&k), model.get(&k));
                    proptest::prop_assert_eq!(table.contains_key(&k), model.contains_key(&k));
                }
            }
            let mut held: Vec<(u8, u32)> = table.into_iter().collect();
            let mut expected: Vec<(u8, u32)> = model.into_iter().collect();
            held.sort_unstable();
            expected.sort_unstable();
            proptest::prop_assert_eq!(held, expected);
        }
    }

    /// Accounts are keyed by `CompactString` and looked up by `&str`: the two must hash
    /// alike, or every failed login would make a second record of its account.
    #[test]
    fn a_borrowed_key_finds_its_entry() {
        let mut table = DenseTable::default();
        table.insert(compact_str::CompactString::from("victim"), 1);
        assert_eq!(table.get("victim"), Some(&1));
        assert!(!table.contains_key("other"));
        assert_eq!(table.remove("victim"), Some(1));
        assert!(table.is_empty());
    }
}
