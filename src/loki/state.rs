//! `--state FILE`: what scheduled scans remember between runs. Per query, the end of the
//! last window read completely, and a fingerprint of every entry read in the overlap
//! before that end; the next run starts `overlap` earlier (late lines arrive in Loki after
//! their timestamp) and skips exactly the entries it fingerprinted, so consecutive runs
//! neither skip nor double count.
//!
//! Fingerprints are 128-bit SipHash-1-3 of (stream labels, timestamp, line) under a random
//! key kept in the file: log lines are written by attackers, and an unkeyed hash would let
//! one craft a line that collides with one already counted and so is skipped.
//!
//! The file is replaced atomically (a temporary file in the same directory, flushed to
//! disk, renamed over the old one, the directory flushed), so a crash at any point leaves
//! either the old state or the new one, never a torn file.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use siphasher::sip128::{Hasher128, SipHasher13};

use super::paging::Entry;

const VERSION: u32 = 1;

/// The whole state file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanState {
    pub version: u32,
    /// The fingerprint key, 32 hex digits.
    key: String,
    /// Per LogQL query, as given on the command line.
    pub queries: BTreeMap<String, QueryState>,
}

/// What one query has been read up to.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueryState {
    /// Nanoseconds: everything before was read completely.
    pub end_ns: i64,
    /// Fingerprints (32 hex digits) of the entries read in `[end_ns - overlap, end_ns)`.
    pub overlap: Vec<String>,
}

/// The state file is unusable; the message names the file and the fix.
#[derive(Debug, thiserror::Error)]
#[error("--state {path}: {message}")]
pub struct StateError {
    pub path: PathBuf,
    pub message: String,
}

impl ScanState {
    /// A fresh state with a new random key.
    pub fn new() -> ScanState {
        let k = |salt: u64| std::collections::hash_map::RandomState::new().hash_one(salt);
        ScanState { version: VERSION, key: format!("{:016x}{:016x}", k(1), k(2)), queries: BTreeMap::new() }
    }

    /// Reads `path`; a missing file is a first run.
    pub fn load(path: &Path) -> Result<ScanState, StateError> {
        let err = |message: String| StateError { path: path.to_path_buf(), message };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ScanState::new()),
            Err(e) => return Err(err(e.to_string())),
        };
        let state: ScanState = serde_json::from_str(&text).map_err(|e| {
            err(format!(
                "{e}; the file is not a logwarden state file (move it away to start again from --since)"
            ))
        })?;
        if state.version != VERSION || state.fingerprinter().is_none() {
            return Err(err(format!("version {} or key not understood by this logwarden", state.version)));
        }
        Ok(state)
    }

    /// Replaces `path` atomically with this state.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let err = |e: std::io::Error| StateError { path: path.to_path_buf(), message: e.to_string() };
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
        serde_json::to_writer_pretty(&mut tmp, self).map_err(|e| err(e.into()))?;
        tmp.write_all(b"\n").map_err(err)?;
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(path).map_err(|e| err(e.error))?;
        // The rename is durable only once the directory entry is.
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)
    }

    /// The fingerprint function of this state's key.
    pub fn fingerprinter(&self) -> Option<Fingerprinter> {
        let key = u128::from_str_radix(&self.key, 16).ok().filter(|_| self.key.len() == 32)?;
        Some(Fingerprinter { k0: (key >> 64) as u64, k1: key as u64 })
    }
}

impl Default for ScanState {
    fn default() -> Self {
        ScanState::new()
    }
}

/// Keyed fingerprints of entries.
#[derive(Clone, Copy, Debug)]
pub struct Fingerprinter {
    k0: u64,
    k1: u64,
}

impl Fingerprinter {
    /// The fingerprint of one entry.
    pub fn of(&self, e: &Entry) -> u128 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        // Length prefixes keep (labels, line) pairs from running into each other.
        h.write_u64(e.stream.len() as u64);
        h.write(e.stream.as_bytes());
        h.write_i64(e.ts);
        h.write_u64(e.line.len() as u64);
        h.write(e.line.as_bytes());
        h.finish128().as_u128()
    }
}

/// Skips entries a previous run already counted.
#[derive(Debug)]
pub struct OverlapFilter {
    /// Entries at or after this were not read before.
    until_ns: i64,
    counted: HashMap<u128, u32>,
    fp: Fingerprinter,
}

impl OverlapFilter {
    /// From the previous run's state of a query (or nothing, for a first run).
    pub fn new(previous: Option<&QueryState>, fp: Fingerprinter) -> OverlapFilter {
        let mut counted = HashMap::new();
        for hex in previous.map(|p| p.overlap.as_slice()).unwrap_or_default() {
            if let Ok(f) = u128::from_str_radix(hex, 16) {
                *counted.entry(f).or_insert(0) += 1;
            }
        }
        OverlapFilter { until_ns: previous.map_or(i64::MIN, |p| p.end_ns), counted, fp }
    }

    /// Whether `e` was counted by the previous run (each fingerprint matches once).
    pub fn already_counted(&mut self, e: &Entry) -> bool {
        if e.ts >= self.until_ns || self.counted.is_empty() {
            return false;
        }
        match self.counted.get_mut(&self.fp.of(e)) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }
}

/// Collects the fingerprints of entries in `[from_ns, end_ns)` for the next run.
#[derive(Debug)]
pub struct OverlapRecorder {
    from_ns: i64,
    end_ns: i64,
    fp: Fingerprinter,
    seen: Vec<u128>,
}

impl OverlapRecorder {
    pub fn new(from_ns: i64, end_ns: i64, fp: Fingerprinter) -> OverlapRecorder {
        OverlapRecorder { from_ns, end_ns, fp, seen: Vec::new() }
    }

    /// Notes `e` if it lies in the overlap the next run will read again. Every entry read
    /// is noted, also those skipped as counted before: the next run reads them again.
    pub fn note(&mut self, e: &Entry) {
        if (self.from_ns..self.end_ns).contains(&e.ts) {
            self.seen.push(self.fp.of(e));
        }
    }

    /// The state to save once the window was read completely.
    pub fn finish(mut self) -> QueryState {
        self.seen.sort_unstable();
        QueryState { end_ns: self.end_ns, overlap: self.seen.iter().map(|f| format!("{f:032x}")).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ts: i64, line: &str) -> Entry {
        Entry { stream: "{app=\"nginx\"}".into(), ts, line: line.into() }
    }

    #[test]
    fn a_saved_state_reads_back_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut state = ScanState::new();
        state.queries.insert(
            "{app=\"nginx\"}".into(),
            QueryState { end_ns: 42, overlap: vec![format!("{:032x}", 7)] },
        );
        state.save(&path).unwrap();
        let back = ScanState::load(&path).unwrap();
        assert_eq!(back.queries, state.queries);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{\"version\":1,").unwrap();
        let err = ScanState::load(&path).unwrap_err().to_string();
        assert!(err.contains("state.json") && err.contains("--since"), "{err}");
    }

    #[test]
    fn overlap_skips_each_counted_entry_once_and_keeps_late_ones() {
        let fp = ScanState::new().fingerprinter().unwrap();
        let mut rec = OverlapRecorder::new(50, 100, fp);
        for e in [entry(40, "old"), entry(60, "a"), entry(60, "a"), entry(90, "b")] {
            rec.note(&e);
        }
        let state = rec.finish();
        assert_eq!(state.overlap.len(), 3);
        let mut filter = OverlapFilter::new(Some(&state), fp);
        let verdicts: Vec<bool> = [
            entry(60, "a"),
            entry(60, "a"),
            entry(60, "a"),
            entry(70, "late"),
            entry(90, "b"),
            entry(100, "b"),
        ]
        .iter()
        .map(|e| filter.already_counted(e))
        .collect();
        assert_eq!(verdicts, [true, true, false, false, true, false]);
    }

    #[test]
    fn fingerprints_depend_on_the_key() {
        let e = entry(1, "x");
        let a = ScanState::new().fingerprinter().unwrap();
        let b = ScanState::new().fingerprinter().unwrap();
        assert_ne!(a.of(&e), b.of(&e));
    }
}
