//! NAR serialization of store paths, generated from the file system on the
//! fly by our own writer (`ds_core::nar_writer`).
//!
//! A stream first walks the path once ([`Plan::walk`]): `lstat` of every
//! entry (symlinks are never followed), directory names as byte strings
//! sorted bytewise as Nix sorts them, and the NAR framing rendered into one
//! in-memory buffer. The plan knows the NAR offset of every piece (framing
//! or file contents) from sizes alone, so a stream from an offset opens the
//! one file the offset falls in and seeks: "count, don't read".
//!
//! Production is pull-based ([`NarGen::batch`]): each poll of an empty
//! stream runs one short blocking step (`spawn_blocking`) that produces at
//! most [`BATCH_CHUNKS`] chunks and returns. Once nothing is left to hash
//! (a verified-cache hit), a chunk whose file is in the dentry and page
//! caches is produced right on the polling task instead
//! ([`NarGen::try_chunk_nowait`]): no hand-off at all. A client that stops
//! reading holds an open file and a few buffers, never a thread.
//!
//! The walk also yields a fingerprint of the tree's metadata, used by the
//! verified-NAR cache ([`VerifiedCache`], see `docs/store-access.md`).

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use ds_core::nar::{NarEvent, NarHasher};
use ds_core::{Hash, NarWriter, StorePath};
use futures::Stream;

use crate::{LocalStore, StoreError};

/// Size of the chunks a NAR stream yields (the last one may be shorter).
pub const NAR_CHUNK_SIZE: usize = 64 * 1024;

/// Chunks produced per blocking step. One hand-off to the blocking pool
/// per 256 KiB keeps the thread hops cheap (a hop per 64 KiB chunk cost
/// about 6% in profiles) while a stalled client holds at most this much.
pub const BATCH_CHUNKS: usize = 4;

/// Chunks produced per blocking step at most, output or not: bounds how
/// long one step holds a blocking thread (4 MiB: a few milliseconds).
const DISCARD_STEP: usize = 64;

/// Verified NARs remembered (least recently used dropped first).
pub const VERIFIED_CAPACITY: usize = 4096;

/// An entry whose ctime is this close to (or after) the walk's start is
/// not remembered as verified: a change in the same timestamp tick as an
/// earlier one could leave ctime unchanged ("racy clean", as in git).
const RACY_WINDOW: Duration = Duration::from_secs(1);

/// Nix records only the owner's execute bit (`S_IXUSR`).
const OWNER_EXEC: u32 = 0o100;

fn invalid_data(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// What `lstat` says about one entry: if none of this changed, neither did
/// the entry (see `docs/store-access.md` for what that rests on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryFacts {
    dev: u64,
    ino: u64,
    mode: u32,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl EntryFacts {
    pub(crate) fn of(meta: &std::fs::Metadata) -> Self {
        EntryFacts {
            dev: meta.dev(),
            ino: meta.ino(),
            mode: meta.mode(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    fn append_to(&self, out: &mut Vec<u8>) {
        for word in [
            self.dev,
            self.ino,
            u64::from(self.mode),
            self.size,
            self.mtime.0 as u64,
            self.mtime.1 as u64,
            self.ctime.0 as u64,
            self.ctime.1 as u64,
        ] {
            out.extend_from_slice(&word.to_le_bytes());
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum PieceKind {
    /// `framing[start..end]`.
    Frame { start: usize },
    /// The contents of `files[idx]`.
    File { idx: usize },
}

#[derive(Debug, Clone, Copy)]
struct Piece {
    /// NAR offset of the piece's first byte.
    offset: u64,
    len: u64,
    kind: PieceKind,
}

#[derive(Debug)]
struct FileEntry {
    path: PathBuf,
    facts: EntryFacts,
}

/// One walk of a store path: the NAR's layout without file contents.
#[derive(Debug)]
pub(crate) struct Plan {
    framing: Vec<u8>,
    pieces: Vec<Piece>,
    files: Vec<FileEntry>,
    nar_size: u64,
    /// SHA-256 over the framing (names, targets, sizes, modes) and every
    /// entry's [`EntryFacts`].
    fingerprint: Hash,
    /// Some entry changed too recently to be remembered as verified.
    racy: bool,
}

struct Walker {
    w: NarWriter,
    framing: Vec<u8>,
    frame_start: usize,
    pieces: Vec<Piece>,
    files: Vec<FileEntry>,
    offset: u64,
    facts: Vec<u8>,
    newest_ctime: (i64, i64),
}

impl Walker {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn event(&mut self, path: &Path, ev: &NarEvent) -> Result<(), StoreError> {
        self.w
            .event(ev, &mut self.framing)
            .map_err(|e| Self::io(path)(invalid_data(e.to_string())))
    }

    /// Close the framing piece written since the last file.
    fn flush_frame(&mut self) {
        let end = self.framing.len();
        if end > self.frame_start {
            let len = (end - self.frame_start) as u64;
            self.pieces.push(Piece {
                offset: self.offset,
                len,
                kind: PieceKind::Frame {
                    start: self.frame_start,
                },
            });
            self.offset += len;
            self.frame_start = end;
        }
    }

    fn node(&mut self, path: &Path) -> Result<(), StoreError> {
        let meta = std::fs::symlink_metadata(path).map_err(Self::io(path))?;
        let facts = EntryFacts::of(&meta);
        facts.append_to(&mut self.facts);
        self.newest_ctime = self.newest_ctime.max(facts.ctime);
        let kind = meta.file_type();
        if kind.is_dir() {
            self.event(path, &NarEvent::DirectoryStart)?;
            let mut names = std::fs::read_dir(path)
                .map_err(Self::io(path))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<Vec<_>>>()
                .map_err(Self::io(path))?;
            // Nix sorts entries by their bytes (std::map<std::string>).
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for name in names {
                let name_bytes = name.as_bytes().to_vec();
                self.event(path, &NarEvent::EntryStart { name: name_bytes })?;
                self.node(&path.join(&name))?;
                self.event(path, &NarEvent::EntryEnd)?;
            }
            self.event(path, &NarEvent::DirectoryEnd)
        } else if kind.is_symlink() {
            let target = std::fs::read_link(path).map_err(Self::io(path))?;
            let target = target.as_os_str().as_bytes().to_vec();
            self.event(path, &NarEvent::Symlink { target })
        } else if kind.is_file() {
            let size = meta.len();
            let ev = NarEvent::Regular {
                executable: meta.mode() & OWNER_EXEC != 0,
                size,
            };
            self.event(path, &ev)?;
            self.flush_frame();
            self.pieces.push(Piece {
                offset: self.offset,
                len: size,
                kind: PieceKind::File {
                    idx: self.files.len(),
                },
            });
            self.offset += size;
            self.files.push(FileEntry {
                path: path.to_path_buf(),
                facts,
            });
            self.w
                .contents_done(size, &mut self.framing)
                .map_err(|e| Self::io(path)(invalid_data(e.to_string())))
        } else {
            Err(Self::io(path)(invalid_data(
                "unsupported file type (a NAR holds only regular files, directories and symlinks)"
                    .into(),
            )))
        }
    }
}

impl Plan {
    /// Walk `root` (blocking): `lstat` every entry, render the framing.
    pub(crate) fn walk(root: &Path) -> Result<Plan, StoreError> {
        let started = SystemTime::now();
        let mut w = Walker {
            w: NarWriter::new(),
            framing: Vec::with_capacity(1024),
            frame_start: 0,
            pieces: Vec::new(),
            files: Vec::new(),
            offset: 0,
            facts: Vec::new(),
            newest_ctime: (i64::MIN, 0),
        };
        w.node(root)?;
        w.flush_frame();
        let mut fp = std::mem::take(&mut w.facts);
        fp.extend_from_slice(&w.framing);
        let racy = match started.checked_sub(RACY_WINDOW) {
            Some(t) => {
                let t = t
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| (d.as_secs() as i64, i64::from(d.subsec_nanos())))
                    .unwrap_or((0, 0));
                w.newest_ctime >= t
            }
            None => true,
        };
        Ok(Plan {
            nar_size: w.offset,
            fingerprint: Hash::sha256(&fp),
            framing: w.framing,
            pieces: w.pieces,
            files: w.files,
            racy,
        })
    }

    /// Index of the piece holding NAR offset `pos` (`pieces.len()` at the end).
    fn piece_at(&self, pos: u64) -> usize {
        self.pieces.partition_point(|p| p.offset + p.len <= pos)
    }
}

/// (path, NarHash) → fingerprint of the tree that hashed to it, for the
/// last [`VERIFIED_CAPACITY`] NARs verified.
#[derive(Debug, Default)]
pub(crate) struct VerifiedCache {
    map: Mutex<HashMap<StorePath, Verified>>,
    tick: AtomicU64,
}

#[derive(Debug)]
struct Verified {
    nar_hash: Hash,
    fingerprint: Hash,
    used: u64,
}

impl VerifiedCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StorePath, Verified>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this walk matches what was verified for (path, nar_hash).
    pub(crate) fn hit(&self, path: &StorePath, nar_hash: &Hash, plan: &Plan) -> bool {
        let mut map = self.lock();
        match map.get_mut(path) {
            Some(v) if v.nar_hash == *nar_hash && v.fingerprint == plan.fingerprint => {
                v.used = self.tick.fetch_add(1, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    fn insert(&self, path: &StorePath, nar_hash: &Hash, fingerprint: Hash) {
        let mut map = self.lock();
        if map.len() >= VERIFIED_CAPACITY && !map.contains_key(path) {
            // O(n) only when a new NAR was just hashed in full: cheap next to that.
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, v)| v.used)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        let used = self.tick.fetch_add(1, Ordering::Relaxed);
        map.insert(
            path.clone(),
            Verified {
                nar_hash: nar_hash.clone(),
                fingerprint,
                used,
            },
        );
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// How a stream is checked against the database.
pub(crate) struct Expect {
    pub(crate) nar_hash: Hash,
    pub(crate) nar_size: u64,
    pub(crate) cache: Arc<VerifiedCache>,
    /// Bytes past this offset are not wanted (a Range's end + 1). Only a
    /// verified-cache hit stops there: otherwise the whole NAR is hashed.
    pub(crate) until: u64,
    /// On a verified-cache hit, long file contents may be yielded as file
    /// regions ([`crate::region`]) instead of read: only for a consumer
    /// that writes them with [`crate::region::send`].
    pub(crate) regions: bool,
}

struct Verify {
    expect: Expect,
    /// `None`: the walk matched a verified fingerprint, bytes are not hashed.
    hasher: Option<NarHasher>,
}

/// A pull-style NAR generator over one [`Plan`]; all methods block.
pub(crate) struct NarGen {
    plan: Plan,
    path: StorePath,
    /// NAR offset of the next byte produced.
    pos: u64,
    /// The stream ends here: the NAR's size, or on a verified-cache hit the
    /// end of the wanted range ([`Expect::until`]).
    stop: u64,
    /// Bytes before this offset are produced (for hashing) but not output.
    discard_until: u64,
    piece: usize,
    open: Option<File>,
    verify: Option<Verify>,
    /// Every file read so far still had the walk's metadata after reading.
    unchanged: bool,
    /// The chunk being filled: bytes up to `pos` that are not yet output
    /// (kept across a [`NarGen::try_chunk_nowait`] that would have blocked).
    pending: Vec<u8>,
}

impl NarGen {
    /// Walk the path and position at `offset`. With `expect`: check the
    /// size now and the hash while producing (starting at 0 unless the
    /// verified cache vouches for this tree).
    pub(crate) fn new(
        physical: &Path,
        path: StorePath,
        offset: u64,
        expect: Option<Expect>,
    ) -> Result<Self, StoreError> {
        let plan = Plan::walk(physical)?;
        let mut verify = None;
        let mut start = offset;
        let mut stop = plan.nar_size;
        if let Some(expect) = expect {
            if plan.nar_size != expect.nar_size {
                tracing::error!(
                    path = %path, expected_size = expect.nar_size, size = plan.nar_size,
                    "store files do not match the Nix database: NAR size differs"
                );
                return Err(StoreError::Io {
                    path: physical.to_path_buf(),
                    source: invalid_data(format!(
                        "NAR is {} bytes, the Nix database says NarSize {}",
                        plan.nar_size, expect.nar_size
                    )),
                });
            }
            let known = expect.cache.hit(&path, &expect.nar_hash, &plan);
            if known {
                // Bytes past the range are neither sent nor needed to vouch
                // for it: every file read is checked after reading.
                stop = expect.until.min(plan.nar_size);
            } else {
                start = 0;
            }
            verify = Some(Verify {
                hasher: (!known).then(NarHasher::new),
                expect,
            });
        }
        let start = start.min(stop);
        Ok(NarGen {
            piece: plan.piece_at(start),
            pos: start,
            stop,
            discard_until: offset,
            plan,
            path,
            open: None,
            verify,
            unchanged: true,
            pending: Vec::new(),
        })
    }

    pub(crate) fn is_done(&self) -> bool {
        self.pos >= self.stop
    }

    /// Produce up to `max` chunks of [`NAR_CHUNK_SIZE`] (fewer at the end).
    /// The chunk holding the NAR's last byte is returned only after the
    /// whole NAR checked out (hash, or unchanged metadata on a cache hit).
    /// While hashing a prefix that is not output (a verified Range on a
    /// cache miss) at most [`DISCARD_STEP`] chunks are produced per call,
    /// so the result may be empty before the end: call again.
    pub(crate) fn batch(&mut self, max: usize) -> io::Result<Vec<Bytes>> {
        let mut out = Vec::with_capacity(max);
        let mut produced = 0;
        while out.len() < max && produced < DISCARD_STEP && !self.is_done() {
            produced += 1;
            let start = self.pos - self.pending.len() as u64;
            let chunk = self.chunk(false)?;
            if let Some(h) = self.verify.as_mut().and_then(|v| v.hasher.as_mut()) {
                h.update(&chunk);
            }
            if self.is_done() {
                self.finish()?;
            }
            let end = self.pos;
            if end <= self.discard_until {
                continue;
            }
            let skip = self.discard_until.saturating_sub(start) as usize;
            out.push(if skip > 0 { chunk.slice(skip..) } else { chunk });
        }
        Ok(out)
    }

    /// The next chunk if it can be produced without blocking: no hashing
    /// left to do (a verified-cache hit, or no verification), nothing to
    /// discard, the file opened from the dentry cache (`RESOLVE_CACHED`)
    /// and its contents read from the page cache (`RWF_NOWAIT`). `None`:
    /// take a blocking step ([`NarGen::batch`]), which carries on from
    /// whatever this call already put in the chunk and reports any error.
    ///
    /// This keeps a cached NAR on the async worker that writes it to the
    /// socket, with no hand-off to the blocking pool and back per step
    /// (those hand-offs cost a fifth of the NAR throughput), while still
    /// producing one chunk per poll: a stalled client holds one chunk.
    pub(crate) fn try_chunk_nowait(&mut self) -> Option<io::Result<Bytes>> {
        let hashing = self.verify.as_ref().is_some_and(|v| v.hasher.is_some());
        if hashing || self.pos < self.discard_until || self.is_done() {
            return None;
        }
        match self.chunk(true) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => Some(Err(e)),
            Ok(chunk) => {
                if self.is_done() {
                    if let Err(e) = self.finish() {
                        return Some(Err(e));
                    }
                }
                Some(Ok(chunk))
            }
        }
    }

    /// All bytes produced: check them, remember a clean verification.
    fn finish(&mut self) -> io::Result<()> {
        let Some(v) = self.verify.as_mut() else {
            return Ok(());
        };
        match v.hasher.take() {
            None => {
                // Stopped inside a file (the end of a Range): check it as
                // if its last byte had been read.
                if let Some(PieceKind::File { idx }) =
                    self.plan.pieces.get(self.piece).map(|p| p.kind)
                {
                    self.close_file(idx)?;
                }
                if !self.unchanged {
                    return Err(invalid_data(format!(
                        "{}: files changed while being served",
                        self.path
                    )));
                }
                Ok(())
            }
            Some(h) => {
                let (hash, size) = h.finish();
                if hash != v.expect.nar_hash || size != v.expect.nar_size {
                    tracing::error!(
                        path = %self.path, expected = %v.expect.nar_hash, got = %hash,
                        "store files do not match the Nix database: aborting the transfer"
                    );
                    return Err(invalid_data(
                        "NAR does not match NarHash/NarSize in the Nix database".into(),
                    ));
                }
                if self.unchanged && !self.plan.racy {
                    v.expect.cache.insert(
                        &self.path,
                        &v.expect.nar_hash,
                        self.plan.fingerprint.clone(),
                    );
                }
                Ok(())
            }
        }
    }

    /// The next [`NAR_CHUNK_SIZE`] bytes (fewer at the end). `nowait`: fail
    /// with `WouldBlock` rather than wait for the disk; what was read so far
    /// stays in `pending` for the next call.
    fn chunk(&mut self, nowait: bool) -> io::Result<Bytes> {
        if self.pending.is_empty() {
            if let Some(region) = self.region(nowait)? {
                return Ok(region);
            }
        }
        let mut buf = std::mem::take(&mut self.pending);
        if buf.capacity() == 0 {
            // Exactly one chunk of capacity (Vec::with_capacity is exact),
            // not zeroed: file contents are read straight into it.
            buf = Vec::with_capacity(NAR_CHUNK_SIZE);
        }
        match self.fill(&mut buf, nowait) {
            // A short chunk (the framing before a file region, a NAR's
            // end) would keep its whole 64 KiB allocation alive for as long
            // as the client holds it: 500 stalled readers of regions held
            // ~32 MiB of nearly empty buffers. Copy it to its size instead.
            Ok(()) if buf.len() < NAR_CHUNK_SIZE / 4 => Ok(Bytes::copy_from_slice(&buf)),
            Ok(()) => Ok(Bytes::from(buf)),
            Err(e) => {
                self.pending = buf;
                Err(e)
            }
        }
    }

    fn fill(&mut self, buf: &mut Vec<u8>, nowait: bool) -> io::Result<()> {
        while buf.len() < NAR_CHUNK_SIZE && !self.is_done() {
            if !buf.is_empty() && self.region_here().is_some() {
                break; // the file goes out whole as the next chunk, a region
            }
            let piece = self.plan.pieces[self.piece];
            let within = self.pos - piece.offset;
            let room = (NAR_CHUNK_SIZE - buf.len()) as u64;
            let want = (piece.len - within).min(room).min(self.stop - self.pos) as usize;
            let n = match piece.kind {
                // An empty file: nothing to read, not even an open.
                _ if want == 0 => 0,
                PieceKind::Frame { start, .. } => {
                    let from = start + within as usize;
                    buf.extend_from_slice(&self.plan.framing[from..from + want]);
                    want
                }
                PieceKind::File { idx } => self.read_file(idx, within, want, buf, nowait)?,
            };
            self.pos += n as u64;
            if self.pos == piece.offset + piece.len {
                if let PieceKind::File { idx } = piece.kind {
                    self.close_file(idx)?;
                }
                self.piece += 1;
            }
        }
        Ok(())
    }

    fn read_file(
        &mut self,
        idx: usize,
        within: u64,
        want: usize,
        buf: &mut Vec<u8>,
        nowait: bool,
    ) -> io::Result<usize> {
        self.open_file(idx, nowait)?;
        let entry = &self.plan.files[idx];
        let Some(file) = self.open.as_ref() else {
            return Err(io::ErrorKind::NotFound.into());
        };
        let n = if nowait {
            read_cached(file, buf, within, want)?
        } else {
            read_at(file, buf, within, want)?
        };
        if n == 0 {
            // Never pad a shrunken file: the framing would lie.
            return Err(invalid_data(format!(
                "{}: file shrank while being served",
                entry.path.display()
            )));
        }
        Ok(n)
    }

    /// The rest of the current file as a region ([`crate::region`]), when
    /// regions are wanted, the verified cache vouched for the tree (nothing
    /// to hash), nothing is discarded, and at least
    /// [`crate::region::REGION_MIN`] bytes of the file are left before the
    /// stream's last byte, which is always read (and its file checked) here.
    /// The socket writer checks the file after sending the region.
    fn region(&mut self, nowait: bool) -> io::Result<Option<Bytes>> {
        let Some((idx, end)) = self.region_here() else {
            return Ok(None);
        };
        let piece = self.plan.pieces[self.piece];
        let within = self.pos - piece.offset;
        let len = end - self.pos;
        self.open_file(idx, nowait)?;
        let Some(file) = self.open.take() else {
            return Ok(None);
        };
        let entry = &self.plan.files[idx];
        let bytes =
            crate::region::make(file, entry.path.clone(), within, len as usize, entry.facts)?;
        self.pos = end;
        if self.pos == piece.offset + piece.len {
            self.piece += 1;
        }
        // The stream's last byte is never in a region: not done yet.
        Ok(Some(bytes))
    }

    /// If a region starts at `pos`: the file's index and the region's end.
    fn region_here(&self) -> Option<(usize, u64)> {
        let wanted = self
            .verify
            .as_ref()
            .is_some_and(|v| v.expect.regions && v.hasher.is_none());
        if !wanted || self.pos < self.discard_until || self.is_done() {
            return None;
        }
        let piece = self.plan.pieces.get(self.piece)?;
        let PieceKind::File { idx } = piece.kind else {
            return None;
        };
        let end = (piece.offset + piece.len).min(self.stop - 1);
        (end > self.pos && end - self.pos >= crate::region::REGION_MIN).then_some((idx, end))
    }

    /// Open `files[idx]` into `self.open` unless it is open; `nowait`: only
    /// from the dentry cache.
    fn open_file(&mut self, idx: usize, nowait: bool) -> io::Result<()> {
        if self.open.is_some() {
            return Ok(());
        }
        let entry = &self.plan.files[idx];
        let f = if nowait {
            open_cached(&entry.path)?
        } else {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&entry.path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", entry.path.display())))?
        };
        self.open = Some(f);
        Ok(())
    }

    /// After a file's last byte: did it keep the walk's metadata?
    fn close_file(&mut self, idx: usize) -> io::Result<()> {
        let entry = &self.plan.files[idx];
        let Some(f) = self.open.take() else {
            return Ok(()); // empty file: never opened
        };
        let now = EntryFacts::of(&f.metadata()?);
        if now != entry.facts {
            self.unchanged = false;
            // A cache hit skips hashing: then this is the only check.
            if self.verify.as_ref().is_some_and(|v| v.hasher.is_none()) {
                return Err(invalid_data(format!(
                    "{}: changed while being served",
                    entry.path.display()
                )));
            }
        }
        Ok(())
    }
}

/// Read up to `want` bytes of `file` at `offset` into `buf`'s spare
/// capacity, which is never zeroed (zeroing 64 KiB per chunk cost about 6%
/// of the proxy's CPU): rustix reads into uninitialised memory safely. The
/// read may fill all the spare capacity (a file that grew); bytes past
/// `want` are dropped, and the metadata check after the file's last byte
/// (`close_file`) or the hash catches the change.
fn read_at(file: &File, buf: &mut Vec<u8>, offset: u64, want: usize) -> io::Result<usize> {
    let before = buf.len();
    let n = loop {
        match rustix::io::pread(file, rustix::buffer::spare_capacity(buf), offset) {
            Ok(n) => break n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if n > want {
        buf.truncate(before + want);
        return Ok(want);
    }
    Ok(n)
}

/// [`read_at`] from the page cache only (`preadv2` with `RWF_NOWAIT`); a
/// short read is fine. Any failure, or nothing read, is `WouldBlock`: the
/// blocking step reads again and reports what is really wrong (a kernel or
/// file system without `RWF_NOWAIT` just always takes the blocking step).
fn read_cached(file: &File, buf: &mut Vec<u8>, offset: u64, want: usize) -> io::Result<usize> {
    let before = buf.len();
    // preadv2 takes initialised memory: zero only what this read may fill.
    buf.resize(before + want, 0);
    let got = loop {
        let mut slices = [io::IoSliceMut::new(&mut buf[before..])];
        match rustix::io::preadv2(
            file,
            &mut slices,
            offset,
            rustix::io::ReadWriteFlags::NOWAIT,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other,
        }
    };
    match got {
        Ok(n) if n > 0 => {
            buf.truncate(before + n);
            Ok(n)
        }
        _ => {
            buf.truncate(before);
            Err(io::ErrorKind::WouldBlock.into())
        }
    }
}

/// Open `path` only if every component is in the dentry cache
/// (`openat2` with `RESOLVE_CACHED`, Linux 5.12): opening then cannot wait
/// for the disk. Any failure is `WouldBlock` (see [`read_cached`]).
fn open_cached(path: &Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    rustix::fs::openat2(
        rustix::fs::CWD,
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::CACHED,
    )
    .map(File::from)
    .map_err(|_| io::ErrorKind::WouldBlock.into())
}

/// Blocking reader over [`NarGen`], for [`LocalStore::nar_reader_from`].
pub(crate) struct NarReader {
    gen: NarGen,
    ready: VecDeque<Bytes>,
}

impl NarReader {
    pub(crate) fn new(gen: NarGen) -> Self {
        NarReader {
            gen,
            ready: VecDeque::new(),
        }
    }
}

impl io::Read for NarReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(front) = self.ready.front_mut() {
                let n = out.len().min(front.len());
                out[..n].copy_from_slice(&front[..n]);
                let _ = front.split_to(n);
                if front.is_empty() {
                    self.ready.pop_front();
                }
                return Ok(n);
            }
            if self.gen.is_done() || out.is_empty() {
                return Ok(0);
            }
            self.ready.extend(self.gen.batch(1)?);
        }
    }
}

/// The async NAR stream behind [`LocalStore::nar_stream_from`] and friends.
/// Nothing runs before the first poll; each poll of an empty stream is one
/// `spawn_blocking` step that produces up to [`BATCH_CHUNKS`] chunks (the
/// first one also walks the tree). An error is the last item.
pub(crate) fn stream(
    store: Arc<LocalStore>,
    path: StorePath,
    offset: u64,
    verify: Option<(Hash, u64, u64, bool)>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    enum State {
        Start(
            Arc<LocalStore>,
            StorePath,
            u64,
            Option<(Hash, u64, u64, bool)>,
        ),
        Running(Box<NarGen>, VecDeque<Bytes>),
        Done,
    }
    futures::stream::unfold(
        State::Start(store, path, offset, verify),
        |state| async move {
            let mut state = state;
            loop {
                let step = match state {
                    State::Done => return None,
                    State::Running(gen, mut ready) => {
                        if let Some(c) = ready.pop_front() {
                            return Some((Ok(c), State::Running(gen, ready)));
                        }
                        if gen.is_done() {
                            return None;
                        }
                        let mut gen = gen;
                        match gen.try_chunk_nowait() {
                            Some(Ok(c)) => return Some((Ok(c), State::Running(gen, ready))),
                            Some(Err(e)) => return Some((Err(e), State::Done)),
                            None => {}
                        }
                        tokio::task::spawn_blocking(move || {
                            let mut gen = gen;
                            let chunks = gen.batch(BATCH_CHUNKS)?;
                            Ok::<_, io::Error>((gen, chunks))
                        })
                        .await
                    }
                    State::Start(store, path, offset, verify) => {
                        tokio::task::spawn_blocking(move || {
                            let mut gen = Box::new(store.nar_gen(path, offset, verify)?);
                            let chunks = gen.batch(BATCH_CHUNKS)?;
                            Ok::<_, io::Error>((gen, chunks))
                        })
                        .await
                    }
                };
                // An empty batch before the end (a hashed prefix): step again.
                state = match step {
                    Ok(Ok((gen, chunks))) => State::Running(gen, VecDeque::from(chunks)),
                    Ok(Err(e)) => return Some((Err(e), State::Done)),
                    Err(join) => {
                        return Some((
                            Err(io::Error::other(format!("NAR producer failed: {join}"))),
                            State::Done,
                        ))
                    }
                };
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const SP: &str = "/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-t";

    /// A tree with one file of three chunks, its NAR and hash.
    fn tree() -> (tempfile::TempDir, PathBuf, Vec<u8>, Hash) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("f"), vec![7u8; 3 * NAR_CHUNK_SIZE]).unwrap();
        let gen = NarGen::new(&root, StorePath::parse(SP).unwrap(), 0, None).unwrap();
        let mut nar = Vec::new();
        NarReader::new(gen).read_to_end(&mut nar).unwrap();
        let hash = Hash::sha256(&nar);
        (dir, root, nar, hash)
    }

    fn gen(root: &Path, hash: &Hash, size: u64, cache: &Arc<VerifiedCache>) -> NarGen {
        let expect = Expect {
            nar_hash: hash.clone(),
            nar_size: size,
            cache: cache.clone(),
            until: size,
            regions: false,
        };
        NarGen::new(root, StorePath::parse(SP).unwrap(), 0, Some(expect)).unwrap()
    }

    fn drain(g: &mut NarGen) -> io::Result<u64> {
        let mut n = 0;
        while !g.is_done() {
            n += g.batch(1)?.iter().map(|c| c.len() as u64).sum::<u64>();
        }
        Ok(n)
    }

    /// On a cache hit nothing is hashed: a file rewritten while it is
    /// being served must still fail the stream (fstat after reading).
    #[test]
    fn hit_fails_when_a_file_changes_mid_stream() {
        let (_dir, root, nar, hash) = tree();
        let cache = Arc::new(VerifiedCache::default());
        let path = StorePath::parse(SP).unwrap();
        cache.insert(&path, &hash, Plan::walk(&root).unwrap().fingerprint);
        let mut g = gen(&root, &hash, nar.len() as u64, &cache);
        assert!(g.verify.as_ref().unwrap().hasher.is_none(), "a hit");
        g.batch(1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(root.join("f"), vec![8u8; 3 * NAR_CHUNK_SIZE]).unwrap();
        let err = drain(&mut g).unwrap_err();
        assert!(
            err.to_string().contains("changed while being served"),
            "{err}"
        );
    }

    /// Send `chunks` through a socket pair as the proxy does (regions with
    /// `region::send`, the rest written), returning what the peer got and
    /// the first error.
    fn send_all(chunks: Vec<Bytes>) -> (Vec<u8>, Option<io::Error>) {
        use std::io::Write;
        let (mut tx, mut rx) = std::os::unix::net::UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            rx.read_to_end(&mut got).unwrap();
            got
        });
        let mut err = None;
        'all: for chunk in chunks {
            let mut at = 0;
            while at < chunk.len() {
                match crate::region::send(&tx, &chunk[at..]) {
                    Some(Ok(n)) => at += n,
                    Some(Err(e)) => {
                        err = Some(e);
                        break 'all;
                    }
                    None => {
                        tx.write_all(&chunk[at..]).unwrap();
                        at = chunk.len();
                    }
                }
            }
        }
        drop(tx);
        (reader.join().unwrap(), err)
    }

    /// On a hit with regions wanted, a long file goes out as a region (sent
    /// with `sendfile`, the same bytes), never the stream's last byte; a
    /// file changed after the region was made fails the send, so nothing
    /// after it leaves; Range ends and short files are read as before.
    #[test]
    fn regions_on_a_hit_send_the_same_bytes_and_check_after_sending() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        std::fs::create_dir(&root).unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(root.join("big"), &big).unwrap();
        std::fs::write(root.join("small"), b"short").unwrap();
        let path = StorePath::parse(SP).unwrap();
        let mut nar = Vec::new();
        NarReader::new(NarGen::new(&root, path.clone(), 0, None).unwrap())
            .read_to_end(&mut nar)
            .unwrap();
        let hash = Hash::sha256(&nar);
        let size = nar.len() as u64;
        let cache = Arc::new(VerifiedCache::default());
        let with_regions = |offset: u64, until: u64| {
            let expect = Expect {
                nar_hash: hash.clone(),
                nar_size: size,
                cache: cache.clone(),
                until,
                regions: true,
            };
            NarGen::new(&root, path.clone(), offset, Some(expect)).unwrap()
        };
        let chunks = |g: &mut NarGen| {
            let mut out = Vec::new();
            while !g.is_done() {
                out.extend(g.batch(1).unwrap());
            }
            out
        };

        // A miss hashes: no region.
        let mut g = with_regions(0, size);
        let miss = chunks(&mut g);
        assert!(miss.iter().all(|c| !crate::region::is_region(c)));
        cache.insert(&path, &hash, Plan::walk(&root).unwrap().fingerprint);

        // A hit: the big file is one region, the rest is read.
        let mut g = with_regions(0, size);
        let hit = chunks(&mut g);
        let regions: Vec<_> = hit.iter().filter(|c| crate::region::is_region(c)).collect();
        assert_eq!(regions.len(), 1, "one region for the big file");
        assert_eq!(regions[0].len(), big.len());
        assert!(
            !crate::region::is_region(hit.last().unwrap()),
            "the end is read"
        );
        let (got, err) = send_all(hit);
        assert!(err.is_none(), "{err:?}");
        assert!(got == nar, "the same NAR");

        // A Range from inside the big file: a region from there; a Range
        // ending inside it: its last byte is read, not sent from a region.
        for (offset, until) in [(1000, size), (200, 2_000_000)] {
            let mut g = with_regions(offset, until);
            let part = chunks(&mut g);
            assert!(part.iter().any(|c| crate::region::is_region(c)));
            assert!(!crate::region::is_region(part.last().unwrap()));
            let (got, err) = send_all(part);
            assert!(err.is_none(), "{err:?}");
            assert!(
                got == nar[offset as usize..until as usize],
                "{offset}..{until}"
            );
        }

        // Changed after the region was made, before it is sent: the send
        // fails, and nothing after the region leaves.
        let mut g = with_regions(0, size);
        let hit = chunks(&mut g);
        std::thread::sleep(Duration::from_millis(20));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(root.join("big"))
            .unwrap();
        f.set_modified(SystemTime::now()).unwrap();
        let (got, err) = send_all(hit);
        let err = err.expect("the send fails");
        assert!(
            err.to_string().contains("changed while being served"),
            "{err}"
        );
        assert!(got.len() < nar.len(), "the NAR never completes");
    }

    /// On a miss, a rewrite with the same bytes still hashes right (served)
    /// but is not remembered as verified; an undisturbed stream is.
    #[test]
    fn miss_remembers_only_an_undisturbed_tree() {
        let (_dir, root, nar, hash) = tree();
        let cache = Arc::new(VerifiedCache::default());
        let mut g = gen(&root, &hash, nar.len() as u64, &cache);
        g.batch(1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(root.join("f"), vec![7u8; 3 * NAR_CHUNK_SIZE]).unwrap();
        drain(&mut g).unwrap();
        assert_eq!(cache.len(), 0);
        // Fresh ctimes are "racy": wait them out, then it is remembered.
        std::thread::sleep(RACY_WINDOW + Duration::from_millis(100));
        let mut g = gen(&root, &hash, nar.len() as u64, &cache);
        assert_eq!(drain(&mut g).unwrap(), nar.len() as u64);
        assert_eq!(cache.len(), 1);
    }

    /// A verified Range on a miss hashes the prefix in bounded steps: an
    /// empty batch before the end is allowed, the suffix is exact.
    #[test]
    fn verified_range_far_into_a_large_nar() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("big");
        let data: Vec<u8> = (0..(DISCARD_STEP + 5) * NAR_CHUNK_SIZE)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&root, &data).unwrap();
        let mut nar = Vec::new();
        let plain = NarGen::new(&root, StorePath::parse(SP).unwrap(), 0, None).unwrap();
        NarReader::new(plain).read_to_end(&mut nar).unwrap();
        let cache = Arc::new(VerifiedCache::default());
        let offset = nar.len() as u64 - 100_000;
        let expect = Expect {
            nar_hash: Hash::sha256(&nar),
            nar_size: nar.len() as u64,
            cache,
            until: nar.len() as u64,
            regions: false,
        };
        let g = NarGen::new(&root, StorePath::parse(SP).unwrap(), offset, Some(expect)).unwrap();
        let mut got = Vec::new();
        NarReader::new(g).read_to_end(&mut got).unwrap();
        assert!(got == nar[offset as usize..]);
    }

    /// Drop `file`'s pages from the page cache; whether that worked (a
    /// page-cache-only read of it now would block).
    fn evict(file: &Path) -> bool {
        let f = File::open(file).unwrap();
        f.sync_all().unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        let mut buf = Vec::new();
        read_cached(&f, &mut buf, 0, 4096).is_err()
    }

    /// The no-hand-off path: never while hashing, and on a hit the same
    /// bytes whichever way each chunk is produced; a chunk whose file is
    /// not in the page cache is left half-filled (`WouldBlock`) and the
    /// blocking step carries on from there.
    #[test]
    fn nowait_chunks_only_on_a_hit_and_resume_in_a_blocking_step() {
        // Eviction needs a disk file system ($TMPDIR here is ext4; on tmpfs
        // the hand-over part is reported as not exercised).
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("a"), vec![1u8; 1000]).unwrap();
        std::fs::write(root.join("empty"), b"").unwrap();
        let big: Vec<u8> = (0..3 * NAR_CHUNK_SIZE + 17)
            .map(|i| (i % 253) as u8)
            .collect();
        std::fs::write(root.join("sub/big"), &big).unwrap();
        let mut nar = Vec::new();
        let plain = NarGen::new(&root, StorePath::parse(SP).unwrap(), 0, None).unwrap();
        NarReader::new(plain).read_to_end(&mut nar).unwrap();
        let hash = Hash::sha256(&nar);
        let cache = Arc::new(VerifiedCache::default());

        // A miss hashes: nothing without a blocking step.
        let mut g = gen(&root, &hash, nar.len() as u64, &cache);
        assert!(g.try_chunk_nowait().is_none(), "no shortcut while hashing");
        drain(&mut g).unwrap();
        std::thread::sleep(RACY_WINDOW + Duration::from_millis(100));
        let mut g = gen(&root, &hash, nar.len() as u64, &cache);
        drain(&mut g).unwrap();
        assert_eq!(cache.len(), 1, "verified and remembered");

        // A hit with every page cached: all chunks on the polling side.
        let mut g = gen(&root, &hash, nar.len() as u64, &cache);
        let mut got = Vec::new();
        while let Some(c) = g.try_chunk_nowait() {
            got.extend_from_slice(&c.unwrap());
        }
        assert!(g.is_done() && got == nar, "same bytes, no blocking step");

        // The big file evicted: the first chunk stops inside it, half filled.
        let evicted = evict(&root.join("sub/big"));
        let mut g = gen(&root, &hash, nar.len() as u64, &cache);
        let (mut got, mut blocked, mut carried) = (Vec::new(), 0, 0);
        while !g.is_done() {
            match g.try_chunk_nowait() {
                Some(c) => got.extend_from_slice(&c.unwrap()),
                None => {
                    blocked += 1;
                    carried += usize::from(!g.pending.is_empty());
                    for c in g.batch(1).unwrap() {
                        got.extend_from_slice(&c);
                    }
                }
            }
        }
        assert!(got == nar, "same bytes across the hand-over");
        if evicted {
            assert!(
                blocked > 0 && carried > 0,
                "blocked {blocked}, carried {carried}"
            );
        } else {
            eprintln!("this file system keeps evicted pages: hand-over not exercised");
        }
    }

    /// A Range on a verified-cache hit reads only what it sends: the stream
    /// ends at the range's end (inside a file too, whose metadata is then
    /// checked), while on a miss it runs to the NAR's end to hash it all.
    #[test]
    fn range_on_a_hit_stops_at_its_end() {
        let (_dir, root, nar, hash) = tree();
        let size = nar.len() as u64;
        let cache = Arc::new(VerifiedCache::default());
        let ranged = |offset: u64, until: u64| {
            let expect = Expect {
                nar_hash: hash.clone(),
                nar_size: size,
                cache: cache.clone(),
                until,
                regions: false,
            };
            NarGen::new(&root, StorePath::parse(SP).unwrap(), offset, Some(expect)).unwrap()
        };
        // A miss: everything from the offset, the whole NAR hashed.
        let mut g = ranged(200, 1200);
        let mut got = Vec::new();
        NarReader::new(ranged(200, 1200))
            .read_to_end(&mut got)
            .unwrap();
        assert!(got == nar[200..], "a miss outputs to the end");
        drain(&mut g).unwrap();
        assert_eq!(g.pos, size);

        cache.insert(
            &StorePath::parse(SP).unwrap(),
            &hash,
            Plan::walk(&root).unwrap().fingerprint,
        );
        for (offset, until) in [(200, 1200), (0, 1), (1000, size), (size - 5, size)] {
            let mut g = ranged(offset, until);
            assert!(g.verify.as_ref().unwrap().hasher.is_none(), "a hit");
            let mut got = Vec::new();
            while !g.is_done() {
                for c in g.batch(1).unwrap() {
                    got.extend_from_slice(&c);
                }
            }
            assert!(
                got == nar[offset as usize..until as usize],
                "{offset}..{until}"
            );
            assert_eq!(g.pos, until, "nothing read past the range");
        }

        // The file the range ends in changes while it is read: the range's
        // last chunk is refused, though the file's end was never reached.
        let until = 2 * NAR_CHUNK_SIZE as u64;
        let mut g = ranged(100, until);
        assert_eq!(g.batch(1).unwrap().len(), 1);
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(root.join("f"), vec![9u8; 3 * NAR_CHUNK_SIZE]).unwrap();
        let err = drain(&mut g).unwrap_err();
        assert!(
            err.to_string().contains("changed while being served"),
            "{err}"
        );
    }

    #[test]
    fn lru_drops_the_least_recently_used() {
        let (_dir, root, _nar, hash) = tree();
        let plan = Plan::walk(&root).unwrap();
        let cache = VerifiedCache::default();
        let paths: Vec<StorePath> = (0..=VERIFIED_CAPACITY)
            .map(|i| {
                StorePath::parse(&format!("/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-p{i}"))
                    .unwrap()
            })
            .collect();
        for p in &paths[..VERIFIED_CAPACITY] {
            cache.insert(p, &hash, plan.fingerprint.clone());
        }
        assert!(cache.hit(&paths[0], &hash, &plan), "touch the oldest");
        cache.insert(&paths[VERIFIED_CAPACITY], &hash, plan.fingerprint.clone());
        assert_eq!(cache.len(), VERIFIED_CAPACITY);
        assert!(cache.hit(&paths[0], &hash, &plan));
        assert!(
            !cache.hit(&paths[1], &hash, &plan),
            "least recently used dropped"
        );
    }
}
