//! A cache of path lookups (hits and misses) keyed by the path's hash
//! part, valid while the Nix database is unchanged.
//!
//! Validity is checked with `PRAGMA data_version` on one kept read-only
//! connection: SQLite changes that number whenever another connection
//! committed (any Nix write: a registration, a deletion, a signature
//! added). The check reads no table, but it is a read transaction: a
//! shared lock taken and dropped with `fcntl` calls under one mutex,
//! which cost a tenth of the proxy's CPU at 60,000 narinfo requests/s. So
//! a reading is reused for [`VERSION_REUSE`] (1 ms): an answer reflects the
//! database as it was at most 1 ms before the request arrived, the same as
//! if the request had come 1 ms earlier, which no client can tell from
//! network delay. On a change the whole cache is dropped: simple and safe,
//! since on a serving machine writes are rare next to reads. Each entry
//! carries slots for text the caller rendered from it (a narinfo), which
//! die with the entry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ds_core::StorePathHash;
use rusqlite::{Connection, OpenFlags};

use crate::{PathInfo, StoreError};

/// Entries kept; past this the cache starts over (a flood of misses for
/// random hashes must not grow memory without bound).
pub const LOOKUP_CAPACITY: usize = 65536;

/// How long one reading of `PRAGMA data_version` is taken as current.
pub const VERSION_REUSE: Duration = Duration::from_millis(1);

/// One cached answer of [`crate::LocalStore::lookup`]: the path's metadata
/// (`None`: not valid here) and text rendered from it by the caller.
#[derive(Debug)]
pub struct Lookup {
    /// The database's answer when this was cached.
    pub info: Option<PathInfo>,
    rendered: Mutex<Vec<(u32, Bytes)>>,
}

impl Lookup {
    pub(crate) fn new(info: Option<PathInfo>) -> Self {
        Lookup {
            info,
            rendered: Mutex::new(Vec::new()),
        }
    }

    /// Text the caller rendered from this answer earlier under `variant`
    /// (its own numbering, e.g. one per compression offered). Dropped with
    /// the entry when the database changes, so it is never stale.
    pub fn rendered(&self, variant: u32) -> Option<Bytes> {
        let slots = self.rendered.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .find(|(v, _)| *v == variant)
            .map(|(_, b)| b.clone())
    }

    /// Remember text rendered from [`Lookup::info`] under `variant`
    /// (replacing an earlier one).
    pub fn set_rendered(&self, variant: u32, text: Bytes) {
        let mut slots = self.rendered.lock().unwrap_or_else(|e| e.into_inner());
        match slots.iter_mut().find(|(v, _)| *v == variant) {
            Some(slot) => slot.1 = text,
            None => slots.push((variant, text)),
        }
    }
}

struct Inner {
    /// `PRAGMA data_version` the entries are valid for.
    version: i64,
    map: HashMap<StorePathHash, Arc<Lookup>>,
}

pub(crate) struct LookupCache {
    /// Kept for `data_version`: the number is per connection, so it must
    /// always be the same one. Never waits for a lock (busy timeout 0): on
    /// contention the lookup just goes to the database.
    version_conn: Mutex<Connection>,
    inner: Mutex<Inner>,
    /// When `inner.version` was last read from the database: nanoseconds
    /// since `epoch`, plus one (0: to be read before any use).
    checked: AtomicU64,
    epoch: Instant,
}

impl LookupCache {
    pub(crate) fn open(db: &std::path::Path) -> Result<Self, StoreError> {
        let err = |source| StoreError::Db {
            path: db.to_path_buf(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(db, flags).map_err(err)?;
        conn.busy_timeout(std::time::Duration::ZERO).map_err(err)?;
        let version = data_version(&conn).map_err(err)?;
        Ok(LookupCache {
            version_conn: Mutex::new(conn),
            inner: Mutex::new(Inner {
                version,
                map: HashMap::new(),
            }),
            checked: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// The database's current version, dropping the entries if it moved.
    /// `None` if SQLite could not say right now (then nothing is trusted).
    /// A reading at most [`VERSION_REUSE`] old is reused.
    pub(crate) fn current(&self) -> Option<i64> {
        let since = |t: Instant| t.duration_since(self.epoch).as_nanos() as u64 + 1;
        let checked = self.checked.load(Ordering::Acquire);
        let reuse = VERSION_REUSE.as_nanos() as u64;
        if checked != 0 && since(Instant::now()).saturating_sub(checked) < reuse {
            return Some(self.inner.lock().unwrap_or_else(|e| e.into_inner()).version);
        }
        // Held until the entries match the version read, so that two
        // lookups cannot apply their readings out of order.
        let conn = self.version_conn.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let Ok(version) = data_version(&conn) else {
            // Nothing is trusted until a reading succeeds again.
            self.checked.store(0, Ordering::Release);
            return None;
        };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.version != version {
            inner.map.clear();
            inner.version = version;
        }
        // The reading is as old as the moment it started.
        self.checked.store(since(started), Ordering::Release);
        Some(version)
    }

    /// The entry for `hash` if cached at `version`.
    pub(crate) fn get(&self, version: i64, hash: &StorePathHash) -> Option<Arc<Lookup>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.version != version {
            return None;
        }
        inner.map.get(hash).cloned()
    }

    /// Cache `info`, read after `version` was current; kept only if no
    /// change was seen since (else a newer lookup already dropped it all).
    pub(crate) fn put(
        &self,
        version: i64,
        hash: StorePathHash,
        info: Option<PathInfo>,
    ) -> Arc<Lookup> {
        let entry = Arc::new(Lookup::new(info));
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.version == version {
            if inner.map.len() >= LOOKUP_CAPACITY {
                inner.map.clear();
            }
            inner.map.insert(hash, entry.clone());
        }
        entry
    }

    pub(crate) fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
    }
}

fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("PRAGMA data_version")?
        .query_row([], |r| r.get(0))
}
