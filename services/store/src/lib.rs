//! Read-only access to a local Nix store: the system store (`/nix/store`,
//! database `/nix/var/nix/db/db.sqlite`) or a chroot store
//! `local?root=DIR` (files in `DIR/nix/store`, logical store dir stays
//! `/nix/store`). See `docs/store-access.md` for why we read the SQLite
//! database read-only instead of speaking the daemon protocol.

use std::path::PathBuf;

use ds_core::{Hash, Signature, StorePath, StorePathHash};

/// Errors from the local store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Bad store URI.
    #[error("unsupported store {0:?}: use \"local\" / omit it (system store) or \"local?root=DIR\"")]
    BadUri(String),
    /// Database could not be opened or queried.
    #[error("Nix database {path}: {source}")]
    Db {
        /// db file
        path: PathBuf,
        /// cause
        #[source]
        source: rusqlite::Error,
    },
    /// A row the database holds is not what Nix writes.
    #[error("Nix database has an invalid entry for {path}: {reason}")]
    Corrupt {
        /// store path as in the db
        path: String,
        /// why
        reason: String,
    },
    /// Reading store files.
    #[error("reading {path}: {source}")]
    Io {
        /// file
        path: PathBuf,
        /// cause
        #[source]
        source: std::io::Error,
    },
}

/// Which store to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUri {
    /// The system store: `/nix/store`, `/nix/var/nix/db`.
    System,
    /// `local?root=DIR`: physical files under DIR, logical dir /nix/store.
    Chroot(PathBuf),
}

impl StoreUri {
    /// Parse `local`, `auto`? no: `""`/`local` = system; `local?root=/abs/dir` = chroot.
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        todo!("{s}")
    }
}

/// Facts about a valid store path, as the Nix database records them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// The path.
    pub path: StorePath,
    /// SHA-256 of its NAR.
    pub nar_hash: Hash,
    /// NAR size in bytes.
    pub nar_size: u64,
    /// References (sorted).
    pub references: Vec<StorePath>,
    /// Deriver, if recorded.
    pub deriver: Option<StorePath>,
    /// Signatures stored with the path (e.g. upstream's).
    pub sigs: Vec<Signature>,
    /// Content address, if any (`fixed:r:sha256:…`, `text:sha256:…`).
    pub ca: Option<String>,
}

/// An open local store. `Send + Sync`; methods block (call from
/// `spawn_blocking` in async code).
pub struct LocalStore {
    _private: (),
}

impl LocalStore {
    /// Open read-only. Fails if the database is absent or unreadable.
    pub fn open(uri: &StoreUri) -> Result<Self, StoreError> {
        todo!("{uri:?}")
    }
    /// Metadata of the valid path with this hash part; `None` if not valid here.
    pub fn path_info(&self, hash: &StorePathHash) -> Result<Option<PathInfo>, StoreError> {
        todo!("{hash}")
    }
    /// Where the path's files physically are.
    pub fn physical_path(&self, path: &StorePath) -> PathBuf {
        todo!("{path}")
    }
    /// A blocking reader producing the path's NAR serialization, generated
    /// from the file system on the fly (never buffered whole).
    pub fn nar_reader(&self, path: &StorePath) -> Result<Box<dyn std::io::Read + Send>, StoreError> {
        todo!("{path}")
    }
}
