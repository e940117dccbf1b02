//! Read-only access to Nix's SQLite database (`nix/var/nix/db/db.sqlite`).
//!
//! Nix writes the database in WAL mode while we read it. SQLite supports
//! that for a reader without write permission as long as the `-wal` and
//! `-shm` files exist (SQLite ≥ 3.22); it then maps the `-shm` read-only and
//! takes only shared locks, which is as safe as a normal reader. Nix deletes
//! both files when its last connection closes, unless another connection
//! still holds the database open: so every connection we keep in the pool
//! pins them, and `LocalStore::open` fails with an explanation when they are
//! missing and we cannot create them. See `docs/store-access.md`.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use ds_core::{Hash, HashAlgo, Signature, StorePath, StorePathHash, STORE_DIR};
use rusqlite::{ffi, Connection, OpenFlags, OptionalExtension};

use crate::{PathInfo, StoreError};

/// How long a query waits for a lock held by a Nix writer (WAL recovery,
/// checkpoint) before failing. Readers never wait for ordinary writes.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections open at most. A query beyond that waits for one to be
/// handed back (queries take microseconds) instead of opening and closing
/// a connection of its own: with a pool that opened more under load and
/// kept only 4, opening, schema parsing and closing were ~20% of the
/// proxy's CPU at 16 concurrent lookups (docs/benchmarks.md).
const MAX_CONNECTIONS: usize = 16;

/// Path and pooled read-only connections to one Nix database.
pub(crate) struct Db {
    path: PathBuf,
    pool: Mutex<Pool>,
    returned: Condvar,
}

struct Pool {
    idle: Vec<Connection>,
    /// Connections open (idle or in use).
    open: usize,
}

/// One row of `ValidPaths` as stored, before parsing.
struct Row {
    id: i64,
    path: String,
    hash: String,
    deriver: Option<String>,
    nar_size: Option<i64>,
    sigs: Option<String>,
    ca: Option<String>,
    ultimate: Option<i64>,
}

impl Db {
    /// Open `path` read-only and check, with a first read, that it is a Nix
    /// database we can read safely. The connection is kept (it pins the
    /// `-wal`/`-shm` files, see the module doc).
    pub(crate) fn open(path: PathBuf) -> Result<Self, StoreError> {
        // A clear "No such file" / "Permission denied" naming the file
        // before SQLite's vaguer "unable to open database file".
        File::open(&path).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        let db = Db {
            path,
            pool: Mutex::new(Pool {
                idle: Vec::new(),
                open: 0,
            }),
            returned: Condvar::new(),
        };
        let conn = db.take()?;
        let has_table: Option<i64> = conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ValidPaths'",
                [],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| db.query_error(e))?;
        if has_table.is_none() {
            return Err(db.error(
                ffi::SQLITE_NOTADB,
                "not a Nix store database (it has no ValidPaths table)".into(),
            ));
        }
        db.put_back(conn);
        Ok(db)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn connect(&self) -> Result<Connection, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            Connection::open_with_flags(&self.path, flags).map_err(|e| self.query_error(e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| self.query_error(e))?;
        Ok(conn)
    }

    fn take(&self) -> Result<Connection, StoreError> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(conn) = pool.idle.pop() {
                return Ok(conn);
            }
            if pool.open < MAX_CONNECTIONS {
                pool.open += 1;
                drop(pool);
                let conn = self.connect();
                if conn.is_err() {
                    self.pool.lock().unwrap_or_else(|e| e.into_inner()).open -= 1;
                    self.returned.notify_one();
                }
                return conn;
            }
            pool = self.returned.wait(pool).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn put_back(&self, conn: Connection) {
        self.pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .idle
            .push(conn);
        self.returned.notify_one();
    }

    /// Run `f` on a pooled connection. The connection goes back to the pool
    /// even when `f` fails: a failed read leaves it usable.
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let conn = self.take()?;
        let result = f(&conn);
        self.put_back(conn);
        result.map_err(|e| self.query_error(e))
    }

    /// The valid path whose hash part is `hash`, with its references.
    pub(crate) fn path_info(&self, hash: &StorePathHash) -> Result<Option<PathInfo>, StoreError> {
        // `path` has a unique index; this range is exactly the paths that
        // start with "<hash>-" ('.' is the character after '-').
        let lower = format!("{STORE_DIR}/{hash}-");
        let upper = format!("{STORE_DIR}/{hash}.");
        let found = self.with_conn(|conn| {
            // One read transaction for both statements, so a concurrent
            // garbage collection cannot delete the Refs in between.
            let tx = conn.unchecked_transaction()?;
            let row = tx
                .prepare_cached(
                    "SELECT id, path, hash, deriver, narSize, sigs, ca, ultimate FROM ValidPaths \
                     WHERE path >= ?1 AND path < ?2 ORDER BY path LIMIT 1",
                )?
                .query_row([&lower, &upper], |r| {
                    Ok(Row {
                        id: r.get(0)?,
                        path: r.get(1)?,
                        hash: r.get(2)?,
                        deriver: r.get(3)?,
                        nar_size: r.get(4)?,
                        sigs: r.get(5)?,
                        ca: r.get(6)?,
                        ultimate: r.get(7)?,
                    })
                })
                .optional()?;
            let Some(row) = row else { return Ok(None) };
            let refs = tx
                .prepare_cached(
                    "SELECT v.path FROM Refs r JOIN ValidPaths v ON r.reference = v.id \
                     WHERE r.referrer = ?1",
                )?
                .query_map([row.id], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            // Read-only: ending the transaction either way is the same.
            drop(tx);
            Ok(Some((row, refs)))
        })?;
        found.map(|(row, refs)| parse_row(row, refs)).transpose()
    }

    fn error(&self, code: i32, message: String) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            source: rusqlite::Error::SqliteFailure(ffi::Error::new(code), Some(message)),
        }
    }

    /// Wrap a SQLite error; explain the one an unprivileged reader gets
    /// when the WAL files are missing, since SQLite's text ("attempt to
    /// write a readonly database") suggests the opposite of what happened.
    fn query_error(&self, e: rusqlite::Error) -> StoreError {
        let code = e.sqlite_error().map(|e| e.extended_code);
        let wal_trouble = e.sqlite_error_code() == Some(rusqlite::ErrorCode::CannotOpen)
            || matches!(
                code,
                Some(ffi::SQLITE_READONLY_DIRECTORY | ffi::SQLITE_READONLY_CANTINIT)
            );
        let (wal, shm) = wal_files(&self.path);
        if wal_trouble
            && (!wal.exists() || !shm.exists())
            && is_wal_mode(&self.path).unwrap_or(false)
        {
            return self.error(
                code.unwrap_or(ffi::SQLITE_CANTOPEN),
                format!(
                    "cannot be read safely by this user (uid {}): it is in WAL mode and {} / {} \
                     do not exist (Nix deletes them when its last process closes the database) \
                     and only the database's owner can create them. Create them before starting, \
                     e.g. as root `touch {} {}` (safe while Nix runs; ds-store's \
                     LocalStore::ensure_wal_files does the same); while this reader runs it keeps \
                     them in place. (SQLite said: {e})",
                    current_uid(),
                    wal.display(),
                    shm.display(),
                    wal.display(),
                    shm.display(),
                ),
            );
        }
        StoreError::Db {
            path: self.path.clone(),
            source: e,
        }
    }
}

fn parse_row(row: Row, refs: Vec<String>) -> Result<PathInfo, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: row.path.clone(),
        reason,
    };
    let path = StorePath::parse(&row.path).map_err(|e| corrupt(e.to_string()))?;
    let nar_hash = Hash::parse(&row.hash).map_err(|e| corrupt(format!("hash: {e}")))?;
    if nar_hash.algo != HashAlgo::Sha256 {
        return Err(corrupt(format!("hash {:?} is not SHA-256", row.hash)));
    }
    let nar_size = match row.nar_size {
        Some(n) => u64::try_from(n).map_err(|_| corrupt(format!("narSize is negative: {n}")))?,
        // Nix itself reads NULL as 0; serving that would fail every client's check.
        None => return Err(corrupt("narSize is not recorded (a path registered by a very old Nix; `nix-store --verify --check-contents` fills it in)".into())),
    };
    let mut references = refs
        .iter()
        .map(|r| StorePath::parse(r).map_err(|e| corrupt(format!("reference {r:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    references.sort();
    let deriver = row.deriver.as_deref().filter(|d| !d.is_empty()).and_then(|d| {
        StorePath::parse(d)
            .map_err(|e| tracing::warn!(path = %row.path, deriver = d, "ignoring unparsable deriver: {e}"))
            .ok()
    });
    let sigs = row
        .sigs
        .as_deref()
        .unwrap_or("")
        .split_ascii_whitespace()
        .filter_map(|s| {
            Signature::parse(s)
                .map_err(|e| tracing::warn!(path = %row.path, sig = s, "ignoring unparsable signature: {e}"))
                .ok()
        })
        .collect();
    let ca = row.ca.filter(|c| !c.is_empty());
    // Nix reads the column the same way (`getInt(..) == 1`): NULL, which it
    // writes for substituted, imported and added paths, means "not built here".
    let ultimate = row.ultimate == Some(1);
    Ok(PathInfo {
        path,
        nar_hash,
        nar_size,
        references,
        deriver,
        sigs,
        ca,
        ultimate,
    })
}

pub(crate) fn wal_files(db: &Path) -> (PathBuf, PathBuf) {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let mut shm = db.as_os_str().to_owned();
    shm.push("-shm");
    (wal.into(), shm.into())
}

/// Whether the database file's header says WAL mode (file format versions
/// at offsets 18 and 19 are 2; 1 means rollback journal).
fn is_wal_mode(db: &Path) -> std::io::Result<bool> {
    let mut header = [0u8; 20];
    File::open(db)?.read_exact(&mut header)?;
    Ok(header[18] == 2 && header[19] == 2)
}

/// Create missing `-wal`/`-shm` files of a WAL-mode database the way SQLite
/// would (owner and mode of the database file), never touching existing
/// ones. Empty files are what SQLite itself starts from: the next writer
/// initialises the `-shm`, and an empty `-wal` holds no frames.
pub(crate) fn ensure_wal_files(db: &Path) -> Result<bool, StoreError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    if !is_wal_mode(db).map_err(io(db))? {
        return Ok(false);
    }
    let meta = std::fs::metadata(db).map_err(io(db))?;
    let (wal, shm) = wal_files(db);
    let mut created = false;
    for file in [&wal, &shm] {
        let result = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(meta.mode() & 0o777)
            .open(file);
        let f = match result {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(file)(e)),
        };
        created = true;
        // The umask may have narrowed the mode; readers need the database's.
        f.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o777))
            .map_err(io(file))?;
        if meta.uid() != current_uid() {
            std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid())).map_err(io(file))?;
        }
    }
    Ok(created)
}

fn current_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 32 threads querying at once share at most MAX_CONNECTIONS
    /// connections, all kept open afterwards (no churn), and all answer.
    #[test]
    fn concurrent_queries_share_a_bounded_pool() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(crate::NIX_SCHEMA).unwrap();
        let db = std::sync::Arc::new(Db::open(path).unwrap());
        let hash = StorePathHash::parse("00bgd045z0d4icpbc2yyz4gx48ak44la").unwrap();
        let threads: Vec<_> = (0..32)
            .map(|_| {
                let (db, hash) = (db.clone(), hash.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        assert!(db.path_info(&hash).unwrap().is_none());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let pool = db.pool.lock().unwrap();
        assert!(pool.open <= MAX_CONNECTIONS, "{} open", pool.open);
        assert_eq!(pool.idle.len(), pool.open);
    }
}
