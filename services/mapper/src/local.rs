//! The local store's paths in the index: a full scan of a fresh index in
//! one write transaction, then incremental updates (new row ids; deleted
//! ids only when the row count says something was deleted).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use ds_store::LocalStore;

use crate::announce::{AnnounceJson, ChangeLog};
use crate::index::{Index, IndexError, Loaded, LocalRow};

/// Errors updating the local part of the index.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// Reading the Nix database failed.
    #[error("{0}")]
    Store(#[from] ds_store::StoreError),
    /// Writing the index failed.
    #[error("{0}")]
    Index(#[from] IndexError),
}

/// What one update changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UpdateStats {
    /// Paths added.
    pub added: usize,
    /// Paths removed.
    pub removed: usize,
    /// Whether this was the full scan of a fresh index.
    pub full: bool,
}

#[derive(Debug)]
struct State {
    /// hash part → Nix DB id of its current row
    hashes: HashMap<String, i64>,
    /// every id believed valid → hash part
    ids: HashMap<i64, String>,
    last_id: i64,
    log: ChangeLog,
}

/// The local paths (in memory, mirrored in the redb [`Index`]) and their
/// change log.
#[derive(Debug)]
pub struct LocalPaths {
    index: Arc<Index>,
    epoch: String,
    state: Mutex<State>,
}

impl LocalPaths {
    /// From what [`Index::open`] loaded (takes its local map).
    pub fn new(index: Arc<Index>, loaded: &mut Loaded, log_entries: usize) -> Self {
        let hashes = std::mem::take(&mut loaded.local);
        let ids = hashes.iter().map(|(h, id)| (*id, h.clone())).collect();
        LocalPaths {
            index,
            epoch: loaded.epoch.clone(),
            state: Mutex::new(State {
                hashes,
                ids,
                last_id: loaded.last_id,
                log: ChangeLog::new(loaded.version, log_entries),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This node's epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Paths indexed.
    pub fn len(&self) -> usize {
        self.lock().hashes.len()
    }

    /// Whether no path is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the local store has this hash part.
    pub fn contains(&self, hash: &str) -> bool {
        self.lock().hashes.contains_key(hash)
    }

    /// Current version.
    pub fn version(&self) -> u64 {
        self.lock().log.version()
    }

    /// The announcement for a peer that knows `(epoch, since)`.
    pub fn announce(&self, epoch: &str, since: u64, inflight: Vec<String>) -> AnnounceJson {
        let st = self.lock();
        let version = st.log.version();
        let delta = (epoch == self.epoch).then(|| st.log.delta(since)).flatten();
        match delta {
            Some((added, removed)) => AnnounceJson {
                epoch: self.epoch.clone(),
                version,
                full: false,
                added,
                removed,
                inflight,
            },
            None => AnnounceJson {
                epoch: self.epoch.clone(),
                version,
                full: true,
                added: st.hashes.keys().cloned().collect(),
                removed: Vec::new(),
                inflight,
            },
        }
    }

    /// Bring the index up to date with the store (blocking: run it in
    /// `spawn_blocking`). New rows are `id > last_id`; deleted rows are
    /// looked for only when the row count differs from what we hold.
    pub fn update(&self, store: &LocalStore) -> Result<UpdateStats, UpdateError> {
        let (last_id, fresh) = {
            let st = self.lock();
            (st.last_id, st.last_id == 0 && st.hashes.is_empty())
        };
        let rows = store.scan_since(last_id)?;
        let new_last_id = rows
            .iter()
            .map(|r| r.id)
            .max()
            .unwrap_or(last_id)
            .max(last_id);
        let summary = store.scan_summary()?;

        let mut st = self.lock();
        let mut added_rows = Vec::with_capacity(rows.len());
        let mut added = Vec::new();
        for r in rows {
            let hash = r.path.hash().as_str().to_string();
            st.ids.insert(r.id, hash.clone());
            if st.hashes.insert(hash.clone(), r.id).is_none() {
                added.push(hash.clone());
            }
            added_rows.push(LocalRow {
                hash,
                path: r.path.to_absolute(),
                nar_hash: r.nar_hash.to_string(),
                nar_size: r.nar_size,
                id: r.id,
            });
        }
        st.last_id = new_last_id;
        let mut removed = Vec::new();
        if summary.count != st.ids.len() as u64 {
            drop(st);
            // Rows were deleted (garbage collection): find which by difference.
            let valid: HashSet<i64> = store.valid_ids()?.into_iter().collect();
            st = self.lock();
            let gone: Vec<i64> = st
                .ids
                .keys()
                .copied()
                .filter(|id| !valid.contains(id))
                .collect();
            for id in gone {
                if let Some(hash) = st.ids.remove(&id) {
                    // A path deleted and registered again has a new id: keep it.
                    if st.hashes.get(&hash) == Some(&id) {
                        st.hashes.remove(&hash);
                        removed.push(hash);
                    }
                }
            }
        }
        let stats = UpdateStats {
            added: added.len(),
            removed: removed.len(),
            full: fresh,
        };
        if added_rows.is_empty() && removed.is_empty() && new_last_id == last_id {
            return Ok(stats);
        }
        let version = if fresh {
            st.log.reset()
        } else {
            st.log.record(added, removed.clone())
        };
        drop(st);
        self.index
            .apply_local(&added_rows, &removed, new_last_id, version)?;
        Ok(stats)
    }
}
