//! The bounded, content-addressed NAR cache on disk.
//!
//! ```text
//! {cacheDirectory}/nar/<narhash32>.nar           verified NARs only
//! {cacheDirectory}/narinfo/<hash32>.narinfo      the narinfo each was fetched for
//! {cacheDirectory}/partial/<narhash32>.nar       downloads in progress (deleted on start)
//! ```
//!
//! A file reaches `nar/` only by a rename after its NarSize and NarHash
//! checked out, so what is found there on start is trusted. Recency is
//! tracked in memory (LRU); on start the files' mtimes seed the order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ds_core::NarInfo;

/// One cached NAR.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Size in bytes.
    pub size: u64,
    /// Store path hash part it was fetched for, when its narinfo is known.
    pub hash32: Option<String>,
    /// LRU clock value of the last use.
    last_use: u64,
}

/// The cache index (in memory) and its directories.
#[derive(Debug)]
pub struct Cache {
    root: PathBuf,
    max_bytes: u64,
    bytes: u64,
    clock: u64,
    /// By nix-base32 NarHash.
    entries: HashMap<String, Entry>,
    /// Store path hash part → nix-base32 NarHash.
    by_path: HashMap<String, String>,
}

impl Cache {
    /// Open (creating the directories) and index what `root` holds;
    /// leftovers of interrupted downloads are deleted.
    pub fn open(root: &Path, max_bytes: u64) -> std::io::Result<Cache> {
        for dir in ["nar", "narinfo", "partial"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        for e in std::fs::read_dir(root.join("partial"))? {
            let e = e?;
            if let Err(err) = std::fs::remove_file(e.path()) {
                tracing::warn!("cannot delete leftover {}: {err}", e.path().display());
            }
        }
        let mut cache = Cache {
            root: root.to_path_buf(),
            max_bytes,
            bytes: 0,
            clock: 0,
            entries: HashMap::new(),
            by_path: HashMap::new(),
        };
        let mut found = Vec::new();
        for e in std::fs::read_dir(root.join("nar"))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(narhash32) = name.strip_suffix(".nar") else {
                continue;
            };
            let meta = e.metadata()?;
            if !meta.is_file() {
                continue;
            }
            let mtime = meta.modified().ok();
            found.push((mtime, narhash32.to_string(), meta.len()));
        }
        found.sort();
        for (_, narhash32, size) in found {
            cache.clock += 1;
            cache.bytes += size;
            let entry = Entry {
                size,
                hash32: None,
                last_use: cache.clock,
            };
            cache.entries.insert(narhash32, entry);
        }
        for e in std::fs::read_dir(root.join("narinfo"))? {
            let e = e?;
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let Ok(info) = NarInfo::parse(&text) else {
                continue;
            };
            let narhash32 = crate::http::narhash32(&info.nar_hash);
            let hash32 = info.store_path.hash().as_str().to_string();
            match cache.entries.get_mut(&narhash32) {
                Some(entry) => {
                    entry.hash32 = Some(hash32.clone());
                    cache.by_path.insert(hash32, narhash32);
                }
                None => {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        // A smaller cacheSize than last time applies at once.
        cache.evict_for(0);
        Ok(cache)
    }

    /// Path of the verified NAR file.
    pub fn nar_path(&self, narhash32: &str) -> PathBuf {
        self.root.join("nar").join(format!("{narhash32}.nar"))
    }

    /// Path of a download in progress.
    pub fn partial_path(&self, narhash32: &str) -> PathBuf {
        self.root.join("partial").join(format!("{narhash32}.nar"))
    }

    /// Path of the narinfo stored for a store path hash part.
    pub fn narinfo_path(&self, hash32: &str) -> PathBuf {
        self.root.join("narinfo").join(format!("{hash32}.narinfo"))
    }

    /// Look up a NAR and mark it used.
    pub fn touch(&mut self, narhash32: &str) -> Option<Entry> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.entries.get_mut(narhash32)?;
        entry.last_use = clock;
        Some(entry.clone())
    }

    /// The NarHash (nix-base32) cached for a store path hash part.
    pub fn narhash_for(&self, hash32: &str) -> Option<&str> {
        self.by_path.get(hash32).map(String::as_str)
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Size limit.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// NARs held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Take a verified download: `partial` is renamed into `nar/` and the
    /// narinfo stored, after evicting least recently used entries to make
    /// room. Returns false (and deletes `partial`) when the NAR is larger
    /// than the whole cache: it was streamed, it is not kept.
    pub fn insert(
        &mut self,
        narhash32: &str,
        size: u64,
        partial: &Path,
        info: &NarInfo,
        narinfo_text: &str,
    ) -> std::io::Result<bool> {
        if size > self.max_bytes {
            std::fs::remove_file(partial)?;
            return Ok(false);
        }
        self.evict_for(size);
        std::fs::rename(partial, self.nar_path(narhash32))?;
        let hash32 = info.store_path.hash().as_str().to_string();
        std::fs::write(self.narinfo_path(&hash32), narinfo_text)?;
        self.clock += 1;
        if let Some(old) = self.entries.insert(
            narhash32.to_string(),
            Entry {
                size,
                hash32: Some(hash32.clone()),
                last_use: self.clock,
            },
        ) {
            self.bytes -= old.size;
        }
        self.bytes += size;
        self.by_path.insert(hash32, narhash32.to_string());
        Ok(true)
    }

    /// Evict least recently used entries until `incoming` more bytes fit.
    /// Readers that have a file open keep reading it (unlinked files live
    /// on until closed).
    fn evict_for(&mut self, incoming: u64) {
        while self.bytes + incoming > self.max_bytes {
            let Some(victim) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_use)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.remove(&victim);
        }
    }

    fn remove(&mut self, narhash32: &str) {
        let Some(entry) = self.entries.remove(narhash32) else {
            return;
        };
        self.bytes -= entry.size;
        tracing::debug!(
            nar = narhash32,
            size = entry.size,
            "evicting from the cache"
        );
        if let Err(e) = std::fs::remove_file(self.nar_path(narhash32)) {
            tracing::warn!("cannot delete cached NAR {narhash32}: {e}");
        }
        if let Some(hash32) = entry.hash32 {
            if self.by_path.get(&hash32).map(String::as_str) == Some(narhash32) {
                self.by_path.remove(&hash32);
                let _ = std::fs::remove_file(self.narinfo_path(&hash32));
            }
        }
    }
}
