//! The on-disk index (`{stateDirectory}/index.redb`): the local store's
//! paths and what each peer announced, plus the epoch and versions, so a
//! restart resumes with an incremental scan and a delta per peer.
//!
//! redb commits are atomic: a crash leaves the last committed state. The
//! hot sets (hash parts) are mirrored in memory by the callers; this module
//! only persists and reloads.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use redb::{Database, MultimapTableDefinition, ReadableDatabase, ReadableTable, TableDefinition};

/// File name of the index inside the state directory.
pub const INDEX_FILE: &str = "index.redb";

const META_STR: TableDefinition<&str, &str> = TableDefinition::new("meta_str");
const META_NUM: TableDefinition<&str, u64> = TableDefinition::new("meta_num");
/// hash part → (store path, NarHash, NarSize, Nix DB id)
const LOCAL: TableDefinition<&str, (&str, &str, u64, i64)> = TableDefinition::new("local");
/// peer URL → (epoch, version)
const PEERS: TableDefinition<&str, (&str, u64)> = TableDefinition::new("peers");
/// peer URL → hash parts it announced
const PEER_PATHS: MultimapTableDefinition<&str, &str> = MultimapTableDefinition::new("peer_paths");

/// Errors of the index file.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The state directory could not be created.
    #[error("creating the state directory {path}: {source}")]
    Dir {
        /// directory
        path: PathBuf,
        /// cause
        #[source]
        source: std::io::Error,
    },
    /// redb failed (open, transaction, table, commit).
    #[error("index {path}: {source}")]
    Db {
        /// file
        path: PathBuf,
        /// cause
        #[source]
        source: Box<redb::Error>,
    },
}

/// A local path row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRow {
    /// Hash part (key).
    pub hash: String,
    /// Full store path.
    pub path: String,
    /// NarHash (`sha256:<nix32>`).
    pub nar_hash: String,
    /// NarSize.
    pub nar_size: u64,
    /// `ValidPaths.id`.
    pub id: i64,
}

/// What was persisted, loaded at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// This node's epoch.
    pub epoch: String,
    /// Local change version.
    pub version: u64,
    /// Highest Nix DB id indexed.
    pub last_id: i64,
    /// Local paths: hash part → id.
    pub local: HashMap<String, i64>,
    /// Per peer URL: (epoch, version, hash parts).
    pub peers: HashMap<String, (String, u64, HashSet<String>)>,
}

/// The redb index.
pub struct Index {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("path", &self.path).finish()
    }
}

fn new_epoch() -> String {
    let mut bytes = [0u8; 16];
    // The epoch only needs to be unique per index; fall back to time and pid
    // rather than refusing to start when the OS RNG is unavailable.
    if getrandom::getrandom(&mut bytes).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes[..16].copy_from_slice(&(t ^ u128::from(std::process::id()) << 64).to_le_bytes());
    }
    ds_core::base32::encode(&bytes)
}

impl Index {
    /// Open (or create, with its directory) `dir/index.redb` and load it.
    pub fn open(dir: &Path) -> Result<(Index, Loaded), IndexError> {
        std::fs::create_dir_all(dir).map_err(|source| IndexError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(INDEX_FILE);
        let db = Database::create(&path).map_err(|e| IndexError::Db {
            path: path.clone(),
            source: Box::new(e.into()),
        })?;
        let index = Index { db, path };
        let loaded = index.load().map_err(|e| index.err(e))?;
        Ok((index, loaded))
    }

    fn err(&self, e: redb::Error) -> IndexError {
        IndexError::Db {
            path: self.path.clone(),
            source: Box::new(e),
        }
    }

    /// The index file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the file in bytes.
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    fn load(&self) -> Result<Loaded, redb::Error> {
        // Create the tables (and the epoch) once, in one transaction.
        let tx = self.db.begin_write()?;
        let epoch = {
            let mut meta = tx.open_table(META_STR)?;
            let existing = meta.get("epoch")?.map(|v| v.value().to_string());
            match existing {
                Some(e) => e,
                None => {
                    let e = new_epoch();
                    meta.insert("epoch", e.as_str())?;
                    e
                }
            }
        };
        tx.open_table(META_NUM)?;
        tx.open_table(LOCAL)?;
        tx.open_table(PEERS)?;
        tx.open_multimap_table(PEER_PATHS)?;
        tx.commit()?;

        let rx = self.db.begin_read()?;
        let nums = rx.open_table(META_NUM)?;
        let num = |k: &str| -> Result<u64, redb::Error> {
            Ok(nums.get(k)?.map(|v| v.value()).unwrap_or(0))
        };
        let mut loaded = Loaded {
            epoch,
            version: num("version")?,
            last_id: num("last_id")? as i64,
            ..Loaded::default()
        };
        for row in rx.open_table(LOCAL)?.iter()? {
            let (k, v) = row?;
            loaded.local.insert(k.value().to_string(), v.value().3);
        }
        let paths = rx.open_multimap_table(PEER_PATHS)?;
        for row in rx.open_table(PEERS)?.iter()? {
            let (k, v) = row?;
            let url = k.value().to_string();
            let (epoch, version) = v.value();
            let mut set = HashSet::new();
            for h in paths.get(url.as_str())? {
                set.insert(h?.value().to_string());
            }
            loaded.peers.insert(url, (epoch.to_string(), version, set));
        }
        Ok(loaded)
    }

    /// Persist a batch of local changes and the new cursor, atomically.
    pub fn apply_local(
        &self,
        added: &[LocalRow],
        removed: &[String],
        last_id: i64,
        version: u64,
    ) -> Result<(), IndexError> {
        let run = || -> Result<(), redb::Error> {
            let tx = self.db.begin_write()?;
            {
                let mut local = tx.open_table(LOCAL)?;
                for h in removed {
                    local.remove(h.as_str())?;
                }
                for r in added {
                    local.insert(
                        r.hash.as_str(),
                        (r.path.as_str(), r.nar_hash.as_str(), r.nar_size, r.id),
                    )?;
                }
                let mut meta = tx.open_table(META_NUM)?;
                meta.insert("last_id", last_id.max(0) as u64)?;
                meta.insert("version", version)?;
            }
            tx.commit()?;
            Ok(())
        };
        run().map_err(|e| self.err(e))
    }

    /// A local row by hash part.
    pub fn local(&self, hash: &str) -> Result<Option<LocalRow>, IndexError> {
        let run = || -> Result<Option<LocalRow>, redb::Error> {
            let rx = self.db.begin_read()?;
            let t = rx.open_table(LOCAL)?;
            let row = t.get(hash)?.map(|v| {
                let (path, nar_hash, nar_size, id) = v.value();
                LocalRow {
                    hash: hash.to_string(),
                    path: path.to_string(),
                    nar_hash: nar_hash.to_string(),
                    nar_size,
                    id,
                }
            });
            Ok(row)
        };
        run().map_err(|e| self.err(e))
    }

    /// Persist a peer's announcement: its cursor and holdings (replaced when
    /// `full`, else changed by `added`/`removed`).
    pub fn apply_peer(
        &self,
        url: &str,
        epoch: &str,
        version: u64,
        full: bool,
        added: &[String],
        removed: &[String],
    ) -> Result<(), IndexError> {
        let run = || -> Result<(), redb::Error> {
            let tx = self.db.begin_write()?;
            {
                let mut paths = tx.open_multimap_table(PEER_PATHS)?;
                if full {
                    paths.remove_all(url)?;
                }
                for h in removed {
                    paths.remove(url, h.as_str())?;
                }
                for h in added {
                    paths.insert(url, h.as_str())?;
                }
                tx.open_table(PEERS)?.insert(url, (epoch, version))?;
            }
            tx.commit()?;
            Ok(())
        };
        run().map_err(|e| self.err(e))
    }
}
