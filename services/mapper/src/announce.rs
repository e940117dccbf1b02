//! Announcements: what a node holds, as a change since a version.
//!
//! Every index has an `epoch` (a random string made with the index, also
//! the node's identity for rendezvous hashing) and a `version` that grows
//! with each batch of changes to the local store. A peer that knows
//! `(epoch, version)` asks for the changes since; one whose epoch differs,
//! or whose version is older than the kept [`ChangeLog`], gets the full list.

use std::collections::{HashMap, VecDeque};

// The wire format lives with the other shared contracts (ds_dbus::peer).
pub use ds_dbus::peer::{AnnounceJson, ANNOUNCE_PATH, HOP_HEADER};

/// One batch of local changes.
#[derive(Debug)]
struct Batch {
    version: u64,
    added: Vec<String>,
    removed: Vec<String>,
}

/// The recent local changes, bounded by a number of entries; older ones are
/// forgotten and a peer that still needs them gets the full list.
#[derive(Debug)]
pub struct ChangeLog {
    /// Oldest version a delta can start from.
    base: u64,
    version: u64,
    batches: VecDeque<Batch>,
    entries: usize,
    max_entries: usize,
}

/// Default bound of the change log (entries, i.e. added + removed items).
pub const DEFAULT_LOG_ENTRIES: usize = 100_000;

impl ChangeLog {
    /// An empty log at `version` (deltas start from there).
    pub fn new(version: u64, max_entries: usize) -> Self {
        ChangeLog {
            base: version,
            version,
            batches: VecDeque::new(),
            entries: 0,
            max_entries,
        }
    }

    /// Current version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Bump the version without keeping what changed (a full rescan): every
    /// peer gets a full list next.
    pub fn reset(&mut self) -> u64 {
        self.version += 1;
        self.base = self.version;
        self.batches.clear();
        self.entries = 0;
        self.version
    }

    /// Record a batch; returns the new version (unchanged for an empty batch).
    pub fn record(&mut self, added: Vec<String>, removed: Vec<String>) -> u64 {
        if added.is_empty() && removed.is_empty() {
            return self.version;
        }
        self.version += 1;
        self.entries += added.len() + removed.len();
        self.batches.push_back(Batch {
            version: self.version,
            added,
            removed,
        });
        while self.entries > self.max_entries {
            let Some(old) = self.batches.pop_front() else {
                break;
            };
            self.entries -= old.added.len() + old.removed.len();
            self.base = old.version;
        }
        self.version
    }

    /// Net changes after `since`, or `None` when the log does not reach back
    /// that far (or `since` is from the future): then a full list is due.
    pub fn delta(&self, since: u64) -> Option<(Vec<String>, Vec<String>)> {
        if since < self.base || since > self.version {
            return None;
        }
        // Last operation on an item wins: added-then-removed is removed.
        let mut net: HashMap<&str, bool> = HashMap::new();
        for b in self.batches.iter().filter(|b| b.version > since) {
            for r in &b.removed {
                net.insert(r, false);
            }
            for a in &b.added {
                net.insert(a, true);
            }
        }
        let mut added: Vec<String> = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        for (k, is_added) in net {
            if is_added {
                added.push(k.to_string());
            } else {
                removed.push(k.to_string());
            }
        }
        added.sort();
        removed.sort();
        Some((added, removed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ds_dbus::Announcement;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn deltas_and_full_fallback() {
        let mut log = ChangeLog::new(5, 4);
        assert_eq!(log.delta(5), Some((vec![], vec![])));
        assert_eq!(log.record(s(&["a", "b"]), vec![]), 6);
        assert_eq!(log.record(vec![], vec![]), 6, "empty batch: no version");
        assert_eq!(log.record(s(&["c"]), s(&["a"])), 7);
        assert_eq!(log.delta(5), Some((s(&["b", "c"]), s(&["a"]))));
        assert_eq!(log.delta(6), Some((s(&["c"]), s(&["a"]))));
        assert_eq!(log.delta(7), Some((vec![], vec![])));
        assert_eq!(log.delta(8), None, "future version");
        assert_eq!(log.delta(4), None, "before the log");
        // Re-added after removal: added.
        log.record(s(&["a"]), vec![]);
        // The bound of 4 entries dropped batch 6: deltas start at 6 now.
        assert_eq!(log.delta(5), None, "too old for the log");
        assert_eq!(log.delta(6), Some((s(&["a", "c"]), vec![])));
        assert_eq!(log.delta(7), Some((s(&["a"]), vec![])));
        assert_eq!(log.reset(), 9);
        assert_eq!(log.delta(8), None);
        assert_eq!(log.delta(9), Some((vec![], vec![])));
    }

    #[test]
    fn json_round_trip() {
        let a = AnnounceJson {
            epoch: "e1".into(),
            version: 3,
            full: true,
            added: s(&["x"]),
            removed: vec![],
            inflight: s(&["y"]),
        };
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(
            text,
            r#"{"epoch":"e1","version":3,"full":true,"added":["x"],"removed":[],"inflight":["y"]}"#
        );
        assert_eq!(serde_json::from_str::<AnnounceJson>(&text).unwrap(), a);
        let t: Announcement = a.clone().into();
        assert_eq!(AnnounceJson::from(t), a);
        // Missing lists default to empty.
        let b: AnnounceJson = serde_json::from_str(r#"{"epoch":"e","version":1}"#).unwrap();
        assert!(!b.full && b.added.is_empty());
    }
}
