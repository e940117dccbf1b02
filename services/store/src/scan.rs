//! Bulk reads of `ValidPaths` for an index kept next to the store (the
//! mapper): every path after a row id, the set of ids, and a cheap summary
//! to decide whether anything was deleted. One short read transaction each,
//! on a connection of its own (the mapper polls every second; the pool of
//! [`LocalStore`] serves the latency-sensitive lookups).

use std::time::Duration;

use ds_core::{Hash, StorePath};
use rusqlite::{Connection, OpenFlags};

use crate::{LocalStore, StoreError};

/// One valid path as the index needs it: row id, path, NarHash, NarSize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedPath {
    /// `ValidPaths.id`: grows with every registration, never reused.
    pub id: i64,
    /// The store path.
    pub path: StorePath,
    /// SHA-256 of its NAR.
    pub nar_hash: Hash,
    /// NAR size in bytes (0 when the database has none).
    pub nar_size: u64,
}

/// `(max id, row count)` of `ValidPaths`: when the count matches what an
/// index that followed every new id holds, nothing was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanSummary {
    /// Highest id (0 for an empty table).
    pub max_id: i64,
    /// Number of rows.
    pub count: u64,
}

impl LocalStore {
    fn scan_conn(&self) -> Result<Connection, StoreError> {
        let db = |source| StoreError::Db {
            path: self.db_path().to_path_buf(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(self.db_path(), flags).map_err(db)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db)?;
        Ok(conn)
    }

    fn db_err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Db {
            path: self.db_path().to_path_buf(),
            source,
        }
    }

    /// Every valid path with `id > after`, in id order. Rows that do not
    /// parse (a corrupt path or hash) are skipped with a warning: one bad
    /// row must not hide the rest of the store from the index.
    pub fn scan_since(&self, after: i64) -> Result<Vec<ScannedPath>, StoreError> {
        let conn = self.scan_conn()?;
        let mut stmt = conn
            .prepare("SELECT id, path, hash, narSize FROM ValidPaths WHERE id > ?1 ORDER BY id")
            .map_err(|e| self.db_err(e))?;
        let rows = stmt
            .query_map([after], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                ))
            })
            .map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, path, hash, size) = row.map_err(|e| self.db_err(e))?;
            let parsed = StorePath::parse(&path)
                .map_err(|e| e.to_string())
                .and_then(|p| {
                    Hash::parse(&hash)
                        .map(|h| (p, h))
                        .map_err(|e| e.to_string())
                });
            match parsed {
                Ok((path, nar_hash)) => out.push(ScannedPath {
                    id,
                    path,
                    nar_hash,
                    nar_size: size.and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                }),
                Err(e) => tracing::warn!(id, path, "skipping unparsable ValidPaths row: {e}"),
            }
        }
        Ok(out)
    }

    /// Every `ValidPaths.id`, ascending (to find deleted rows by difference).
    pub fn valid_ids(&self) -> Result<Vec<i64>, StoreError> {
        let conn = self.scan_conn()?;
        let mut stmt = conn
            .prepare("SELECT id FROM ValidPaths ORDER BY id")
            .map_err(|e| self.db_err(e))?;
        let ids = stmt
            .query_map([], |r| r.get::<_, i64>(0))
            .map_err(|e| self.db_err(e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.db_err(e))?;
        Ok(ids)
    }

    /// Highest id and row count, in one query.
    pub fn scan_summary(&self) -> Result<ScanSummary, StoreError> {
        let conn = self.scan_conn()?;
        conn.query_row(
            "SELECT COALESCE(MAX(id), 0), COUNT(*) FROM ValidPaths",
            [],
            |r| {
                Ok(ScanSummary {
                    max_id: r.get(0)?,
                    count: r.get::<_, i64>(1)?.max(0) as u64,
                })
            },
        )
        .map_err(|e| self.db_err(e))
    }
}

/// Nix's `ValidPaths`/`Refs` schema (as Nix 2.x creates it), for tests that
/// build a database without Nix.
pub const NIX_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer,
    sigs             text,
    ca               text
);
CREATE TABLE IF NOT EXISTS Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);
CREATE INDEX IF NOT EXISTS IndexReferrer ON Refs(referrer);
CREATE INDEX IF NOT EXISTS IndexReference ON Refs(reference);
";

#[cfg(test)]
mod tests {
    use crate::{LocalStore, StoreUri};

    #[test]
    fn scan_since_ids_and_summary() {
        let dir = tempfile::tempdir().unwrap();
        let uri = StoreUri::Chroot(dir.path().to_path_buf());
        std::fs::create_dir_all(uri.db_path().parent().unwrap()).unwrap();
        let conn = rusqlite::Connection::open(uri.db_path()).unwrap();
        conn.execute_batch(super::NIX_SCHEMA).unwrap();
        let h = "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s";
        for (i, p) in [
            "/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-a",
            "/nix/store/not-a-store-path",
            "/nix/store/01bgd045z0d4icpbc2yyz4gx48ak44la-b",
        ]
        .iter()
        .enumerate()
        {
            conn.execute(
                "INSERT INTO ValidPaths (path, hash, registrationTime, narSize) VALUES (?1, ?2, 0, ?3)",
                rusqlite::params![p, h, i as i64 + 10],
            )
            .unwrap();
        }
        let store = LocalStore::open(&uri).unwrap();
        let all = store.scan_since(0).unwrap();
        assert_eq!(all.len(), 2, "the corrupt row is skipped");
        assert_eq!((all[0].id, all[0].nar_size), (1, 10));
        assert_eq!(all[1].path.name(), "b");
        assert_eq!(store.scan_since(1).unwrap().len(), 1);
        assert_eq!(store.valid_ids().unwrap(), vec![1, 2, 3]);
        conn.execute("DELETE FROM ValidPaths WHERE id = 2", [])
            .unwrap();
        let s = store.scan_summary().unwrap();
        assert_eq!((s.max_id, s.count), (3, 2));
        assert_eq!(store.valid_ids().unwrap(), vec![1, 3]);
    }
}
