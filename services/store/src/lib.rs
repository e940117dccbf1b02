//! Read-only access to a local Nix store: the system store (`/nix/store`,
//! database `/nix/var/nix/db/db.sqlite`) or a chroot store
//! `local?root=DIR` (files in `DIR/nix/store`, logical store dir stays
//! `/nix/store`). See `docs/store-access.md` for why we read the SQLite
//! database read-only instead of speaking the daemon protocol.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use ds_core::{Hash, Signature, StorePath, StorePathHash};
use futures::Stream;

mod db;
mod lookup;
mod nar;
pub mod region;
mod scan;
mod uri;

pub use lookup::{Lookup, LOOKUP_CAPACITY, VERSION_REUSE};
pub use nar::{BATCH_CHUNKS, NAR_CHUNK_SIZE, VERIFIED_CAPACITY};
pub use scan::{ScanSummary, ScannedPath, NIX_SCHEMA};

/// Errors from the local store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Bad store URI (holds the URI as given; the message says why).
    #[error("unsupported store {0:?}: {why}", why = uri::explain(.0))]
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
    /// Parse a Nix store URI: `""` or `local` is the system store,
    /// `local?root=/abs/dir` a chroot store (the value may be
    /// percent-encoded, as Nix allows). Everything else is refused with a
    /// message saying why: other store types (`daemon`, `auto`, `ssh://`,
    /// ...), other parameters, a relative root, a bare directory.
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        uri::parse(s)
    }

    /// The root directory the logical `/nix` lives under: `/` for the
    /// system store.
    pub fn root(&self) -> &Path {
        match self {
            StoreUri::System => Path::new("/"),
            StoreUri::Chroot(dir) => dir,
        }
    }

    /// The Nix database of this store: `ROOT/nix/var/nix/db/db.sqlite`.
    pub fn db_path(&self) -> PathBuf {
        self.root().join("nix/var/nix/db/db.sqlite")
    }
}

/// Converts to an I/O error for stream consumers, keeping the kind of an
/// underlying I/O error (e.g. `NotFound`) and the message with its path.
impl From<StoreError> for io::Error {
    fn from(e: StoreError) -> io::Error {
        let kind = match &e {
            StoreError::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
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
    /// Built on this machine: Nix's `ValidPaths.ultimate` is 1 only for a
    /// path a local build produced; substituted (`nix copy --from`,
    /// `nix-store -r`), imported (`nix-store --import`) and added
    /// (`nix-store --add`, `.drv` files) paths have NULL. See
    /// `docs/store-access.md`.
    pub ultimate: bool,
}

/// An open local store. `Send + Sync`; methods block (call from
/// `spawn_blocking` in async code), except [`LocalStore::nar_stream`], which
/// does that itself.
///
/// Reads the Nix database read-only through a small pool of SQLite
/// connections and the store's files directly; no nix-daemon involved.
pub struct LocalStore {
    uri: StoreUri,
    /// Physical directory of the logical `/nix/store`.
    store_dir: PathBuf,
    db: db::Db,
    lookups: lookup::LookupCache,
    verified: Arc<nar::VerifiedCache>,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("uri", &self.uri)
            .field("db", &self.db.path())
            .finish_non_exhaustive()
    }
}

impl LocalStore {
    /// Open read-only. Fails if the database is absent or unreadable, is not
    /// a Nix database, or cannot be read safely by this user (WAL mode with
    /// its `-wal`/`-shm` files missing: the error says what to do, see
    /// [`LocalStore::ensure_wal_files`] and `docs/store-access.md`).
    ///
    /// While open, the store keeps at least one database connection, which
    /// keeps Nix from deleting the `-wal`/`-shm` files.
    pub fn open(uri: &StoreUri) -> Result<Self, StoreError> {
        let db = db::Db::open(uri.db_path())?;
        let lookups = lookup::LookupCache::open(db.path())?;
        Ok(LocalStore {
            uri: uri.clone(),
            store_dir: uri.root().join("nix/store"),
            db,
            lookups,
            verified: Arc::default(),
        })
    }

    /// For a privileged helper run before an unprivileged reader starts
    /// (e.g. systemd `ExecStartPre=+`): create the database's missing
    /// `-wal`/`-shm` files, empty, with the owner and mode of the database
    /// file, as SQLite itself would; existing files are left alone, so this is
    /// safe while Nix runs. Does nothing for a database not in WAL mode.
    /// Returns whether it created a file.
    pub fn ensure_wal_files(uri: &StoreUri) -> Result<bool, StoreError> {
        db::ensure_wal_files(&uri.db_path())
    }

    /// The store this was opened from.
    pub fn uri(&self) -> &StoreUri {
        &self.uri
    }

    /// The database file read.
    pub fn db_path(&self) -> &Path {
        self.db.path()
    }

    /// Metadata of the valid path with this hash part; `None` if not valid here.
    ///
    /// Signatures the database holds that do not parse are skipped with a
    /// warning; an unparsable path, reference or hash is
    /// [`StoreError::Corrupt`].
    pub fn path_info(&self, hash: &StorePathHash) -> Result<Option<PathInfo>, StoreError> {
        self.db.path_info(hash)
    }

    /// Like [`LocalStore::path_info`], answered from a cache (hits and
    /// misses) while the database is unchanged (`PRAGMA data_version`,
    /// checked on every call: a path Nix registers or deletes is seen at the
    /// next lookup). Blocks on a cache miss (one indexed query). The
    /// returned [`Lookup`] has slots for text rendered from it (a narinfo),
    /// which live exactly as long as the cached answer. New (issue 8).
    pub fn lookup(&self, hash: &StorePathHash) -> Result<Arc<Lookup>, StoreError> {
        let version = self.lookups.current();
        if let Some(hit) = version.and_then(|v| self.lookups.get(v, hash)) {
            return Ok(hit);
        }
        let info = self.db.path_info(hash)?;
        Ok(match version {
            Some(v) => self.lookups.put(v, hash.clone(), info),
            None => Arc::new(Lookup::new(info)),
        })
    }

    /// The cached answer of [`LocalStore::lookup`] if there is a valid one,
    /// without ever querying: cheap enough (one `PRAGMA data_version`, a
    /// few microseconds, never waiting for a lock) to call on an async
    /// worker; on `None` call [`LocalStore::lookup`] in `spawn_blocking`.
    /// New (issue 8).
    pub fn lookup_cached(&self, hash: &StorePathHash) -> Option<Arc<Lookup>> {
        let version = self.lookups.current()?;
        self.lookups.get(version, hash)
    }

    /// Entries in the lookup cache (for metrics and tests).
    pub fn lookup_cache_len(&self) -> usize {
        self.lookups.len()
    }

    /// Where the path's files physically are: `ROOT/nix/store/<hash>-<name>`.
    pub fn physical_path(&self, path: &StorePath) -> PathBuf {
        self.store_dir.join(path.basename())
    }

    /// A blocking reader producing the path's NAR serialization, generated
    /// from the file system on the fly (never buffered whole).
    ///
    /// Symlinks are serialized as links, never followed; names and targets
    /// are byte strings (a name that is not UTF-8 is served as Nix dumps
    /// it). Any I/O error, or a file that shrinks while read, fails the
    /// read: the output is then truncated, never silently wrong. Does not
    /// check that the path is valid: ask [`LocalStore::path_info`] first.
    pub fn nar_reader(&self, path: &StorePath) -> Result<Box<dyn io::Read + Send>, StoreError> {
        self.nar_reader_from(path, 0)
    }

    /// Like [`LocalStore::nar_reader`], without the first `offset` bytes
    /// (for HTTP range requests). File contents before `offset` are not
    /// read, only the directory structure is walked. An offset at or past
    /// the end gives an empty reader.
    pub fn nar_reader_from(
        &self,
        path: &StorePath,
        offset: u64,
    ) -> Result<Box<dyn io::Read + Send>, StoreError> {
        Ok(Box::new(nar::NarReader::new(self.nar_gen(
            path.clone(),
            offset,
            None,
        )?)))
    }

    /// Walk the path and set up a generator (blocking).
    pub(crate) fn nar_gen(
        &self,
        path: StorePath,
        offset: u64,
        verify: Option<(Hash, u64, u64, bool)>,
    ) -> Result<nar::NarGen, StoreError> {
        let expect = verify.map(|(nar_hash, nar_size, until, regions)| nar::Expect {
            nar_hash,
            nar_size,
            cache: self.verified.clone(),
            until,
            regions,
        });
        nar::NarGen::new(&self.physical_path(&path), path, offset, expect)
    }

    /// Whether the path's files are exactly those of a NAR this store
    /// verified in full against `nar_hash` (on an earlier
    /// [`LocalStore::nar_stream_verified`]) and unchanged since, going by
    /// every entry's `lstat` (device, inode, mode, size, mtime, ctime) and
    /// the names and targets. Blocking: walks the tree, reads no contents.
    /// See `docs/store-access.md` for what this does and does not cover.
    /// New (issue 8); [`LocalStore::nar_stream_verified_from`] makes this
    /// decision itself, at the moment it starts.
    pub fn verified_unchanged(
        &self,
        path: &StorePath,
        nar_hash: &Hash,
    ) -> Result<bool, StoreError> {
        let plan = nar::Plan::walk(&self.physical_path(path))?;
        Ok(self.verified.hit(path, nar_hash, &plan))
    }

    /// NARs currently remembered as verified (at most [`VERIFIED_CAPACITY`]).
    pub fn verified_len(&self) -> usize {
        self.verified.len()
    }

    /// The path's NAR as an async stream of chunks of [`NAR_CHUNK_SIZE`]
    /// bytes (the last one shorter). Pull-based: nothing runs before the
    /// first poll, and each poll that finds no chunk ready runs one short
    /// `spawn_blocking` step producing up to [`BATCH_CHUNKS`] chunks (so
    /// poll it inside a Tokio runtime). A consumer that stops polling holds
    /// an open file and at most that many chunks, never a thread. An error
    /// (including failing to open the path) is the stream's last item.
    pub fn nar_stream(
        self: Arc<Self>,
        path: StorePath,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        nar::stream(self, path, 0, None)
    }

    /// Like [`LocalStore::nar_stream`], checked against the database's
    /// `nar_hash`/`nar_size` (from [`LocalStore::path_info`]) on the
    /// producing side: a size mismatch fails at once; if the bytes do not
    /// hash right (a damaged or tampered store), the stream's last item is
    /// an error instead of the last chunk, so a consumer never receives a
    /// complete bad NAR. A NAR that checks out is remembered (see
    /// [`LocalStore::verified_unchanged`]); a later stream over an
    /// unchanged tree skips hashing and instead checks, after reading each
    /// file, that its metadata is still the walk's.
    pub fn nar_stream_verified(
        self: Arc<Self>,
        path: StorePath,
        nar_hash: Hash,
        nar_size: u64,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        nar::stream(self, path, 0, Some((nar_hash, nar_size, nar_size, false)))
    }

    /// Like [`LocalStore::nar_stream`], without the first `offset` bytes
    /// (see [`LocalStore::nar_reader_from`]). Not verified.
    pub fn nar_stream_from(
        self: Arc<Self>,
        path: StorePath,
        offset: u64,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        nar::stream(self, path, offset, None)
    }

    /// The NAR from `offset` on, verified like
    /// [`LocalStore::nar_stream_verified`], for HTTP Range: if the tree is
    /// verified and unchanged (decided when the stream starts) it skips to
    /// `offset` without reading; otherwise it reads and hashes the prefix
    /// too, outputs only the bytes from `offset`, and withholds the last
    /// chunk unless the whole NAR hashes right. Either way a sequence of
    /// Range requests can never assemble a complete bad NAR. New (issue 8).
    pub fn nar_stream_verified_from(
        self: Arc<Self>,
        path: StorePath,
        nar_hash: Hash,
        nar_size: u64,
        offset: u64,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        self.nar_stream_verified_range(path, nar_hash, nar_size, offset, nar_size)
    }

    /// Bytes `offset..until` of the NAR, verified like
    /// [`LocalStore::nar_stream_verified_from`]: on a verified-cache hit
    /// the stream ends at `until` (each file read is checked after reading;
    /// nothing past the range is read), otherwise it runs to the NAR's end
    /// so that the whole NAR is hashed, outputting everything from `offset`
    /// (the caller cuts the range). A small Range of a large NAR then costs
    /// what it sends, not the whole NAR.
    pub fn nar_stream_verified_range(
        self: Arc<Self>,
        path: StorePath,
        nar_hash: Hash,
        nar_size: u64,
        offset: u64,
        until: u64,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        nar::stream(self, path, offset, Some((nar_hash, nar_size, until, false)))
    }

    /// [`LocalStore::nar_stream_verified_range`] for a consumer that writes
    /// the chunks to a socket with [`region::send`]: on a verified-cache hit
    /// long file contents come as file regions, which `region::send` sends
    /// with `sendfile` and checks after sending ([`region`]). Any other
    /// consumer must use `nar_stream_verified_range`.
    pub fn nar_stream_for_socket(
        self: Arc<Self>,
        path: StorePath,
        nar_hash: Hash,
        nar_size: u64,
        offset: u64,
        until: u64,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        nar::stream(self, path, offset, Some((nar_hash, nar_size, until, true)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn store_is_send_sync() {
        assert_send_sync::<LocalStore>();
    }

    #[test]
    fn paths() {
        let chroot = StoreUri::Chroot("/srv/x".into());
        assert_eq!(
            chroot.db_path(),
            Path::new("/srv/x/nix/var/nix/db/db.sqlite")
        );
        assert_eq!(
            StoreUri::System.db_path(),
            Path::new("/nix/var/nix/db/db.sqlite")
        );
    }

    #[test]
    fn missing_db_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let uri = StoreUri::Chroot(dir.path().to_path_buf());
        let err = LocalStore::open(&uri).unwrap_err();
        assert!(
            matches!(err, StoreError::Io { ref path, .. } if *path == uri.db_path()),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("nix/var/nix/db/db.sqlite"),
            "{err}"
        );
    }

    #[test]
    fn not_a_nix_db() {
        let dir = tempfile::tempdir().unwrap();
        let uri = StoreUri::Chroot(dir.path().to_path_buf());
        std::fs::create_dir_all(uri.db_path().parent().unwrap()).unwrap();
        rusqlite::Connection::open(uri.db_path())
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let err = LocalStore::open(&uri).unwrap_err();
        assert!(
            err.to_string().contains("not a Nix store database"),
            "{err}"
        );
    }

    #[test]
    fn ensure_wal_files_only_for_wal_databases() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let uri = StoreUri::Chroot(dir.path().to_path_buf());
        let db = uri.db_path();
        std::fs::create_dir_all(db.parent().unwrap()).unwrap();
        let (wal, shm) = db::wal_files(&db);

        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("CREATE TABLE ValidPaths (x)").unwrap();
        drop(conn);
        assert!(
            !LocalStore::ensure_wal_files(&uri).unwrap(),
            "rollback-journal db"
        );
        assert!(!wal.exists() && !shm.exists());

        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "journal_mode", "wal").unwrap();
        drop(conn);
        assert!(!wal.exists(), "SQLite removes them on last close");
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(LocalStore::ensure_wal_files(&uri).unwrap());
        for f in [&wal, &shm] {
            let meta = std::fs::metadata(f).unwrap();
            assert_eq!((meta.permissions().mode() & 0o777, meta.len()), (0o640, 0));
        }
        assert!(!LocalStore::ensure_wal_files(&uri).unwrap());
        LocalStore::open(&uri).unwrap();
    }
}
