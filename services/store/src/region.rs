//! File regions: NAR bytes that the socket writer sends with `sendfile`
//! straight from the page cache, instead of the store reading them into a
//! chunk and the writer copying the chunk into the socket (issue 8: those
//! two copies were most of the proxy's CPU for a NAR on one connection).
//!
//! A region is a [`Bytes`] whose memory is a read-only `mmap` of the file
//! range, registered here by address with the open file and the metadata
//! the walk saw. The HTTP layer hands the bytes on untouched (hyper queues
//! body buffers and writes them with `writev`; the proxy forces that
//! strategy), and the proxy's socket wrapper asks [`send`] for every buffer
//! it is given: a registered one goes out with `sendfile` from the file, and
//! after every `sendfile` the file's metadata is compared with the walk's,
//! the check a read chunk gets after its file's last byte. A change fails
//! the write, which ends the connection before any later byte.
//!
//! Only verified-cache hits make regions (nothing to hash), never the
//! stream's last byte (that one is read and checked by the store as
//! before), and only for a consumer that writes through [`send`]
//! ([`crate::LocalStore::nar_stream_for_socket`]). Any other reader of the
//! bytes still gets the file's contents (the mapping is real), only without
//! the check after sending.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::nar::EntryFacts;

/// Files at least this long from the current position are sent as a
/// region; shorter pieces are cheaper to copy than to map.
pub const REGION_MIN: u64 = 256 * 1024;

struct Info {
    file: File,
    path: PathBuf,
    /// File offset of the mapping's first byte.
    offset: u64,
    len: usize,
    facts: EntryFacts,
}

/// Start address → region, for every region alive.
static LIVE: Mutex<BTreeMap<usize, Arc<Info>>> = Mutex::new(BTreeMap::new());

/// How many regions are alive: with none, every buffer the socket writer
/// asks about (narinfo answers, headers) is answered without the lock.
static COUNT: AtomicUsize = AtomicUsize::new(0);

fn live() -> std::sync::MutexGuard<'static, BTreeMap<usize, Arc<Info>>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The owner behind a region's [`Bytes`]: the mapping, unregistered when
/// the last slice of it is dropped.
struct Region {
    map: memmap2::Mmap,
}

impl AsRef<[u8]> for Region {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if live().remove(&(self.map.as_ptr() as usize)).is_some() {
            COUNT.fetch_sub(1, Ordering::Release);
        }
    }
}

/// Map `len` bytes of `file` from `offset` as a registered region.
pub(crate) fn make(
    file: File,
    path: PathBuf,
    offset: u64,
    len: usize,
    facts: EntryFacts,
) -> io::Result<Bytes> {
    // SAFETY: a read-only shared mapping of a store file. Our code never
    // reads through it: the socket writer sends the range with `sendfile`
    // and only uses the address to find it here. A consumer that did read
    // it would read the page cache; the one hazard is a file truncated
    // under the mapping by root (SIGBUS on a read), which no read of ours
    // can meet since none happens.
    #[allow(unsafe_code)]
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(offset)
            .len(len)
            .map(&file)?
    };
    let start = map.as_ptr() as usize;
    COUNT.fetch_add(1, Ordering::Release);
    live().insert(
        start,
        Arc::new(Info {
            file,
            path,
            offset,
            len,
            facts,
        }),
    );
    Ok(Bytes::from_owner(Region { map }))
}

/// A buffer found to be (part of) a live region: what [`Found::send`]
/// needs, looked up once per buffer.
pub struct Found {
    info: Arc<Info>,
    /// File offset of the buffer's first byte.
    at: u64,
    len: usize,
}

/// The region `buf` lies in, if any.
pub fn lookup(buf: &[u8]) -> Option<Found> {
    if buf.is_empty() || COUNT.load(Ordering::Acquire) == 0 {
        return None;
    }
    let addr = buf.as_ptr() as usize;
    let map = live();
    let (start, info) = map.range(..=addr).next_back()?;
    let within = addr - start;
    (within + buf.len() <= info.len).then(|| Found {
        info: info.clone(),
        at: info.offset + within as u64,
        len: buf.len(),
    })
}

/// Whether `buf` is (part of) a live region.
pub fn is_region(buf: &[u8]) -> bool {
    lookup(buf).is_some()
}

/// Write `buf` to `socket` if it is a region ([`Found::send`]); `None`: not
/// a region, write it as usual.
pub fn send(socket: impl AsFd, buf: &[u8]) -> Option<io::Result<usize>> {
    lookup(buf).map(|found| found.send(socket))
}

impl Found {
    /// `sendfile` (some of) the buffer from its file to `socket`.
    /// `WouldBlock` when the socket is full. After bytes went out the file
    /// must still have the walk's metadata, else `InvalidData`: the caller
    /// fails the connection, so the bytes after these never leave.
    pub fn send(&self, socket: impl AsFd) -> io::Result<usize> {
        let info = &self.info;
        let mut pos = self.at;
        loop {
            match rustix::fs::sendfile(&socket, &info.file, Some(&mut pos), self.len) {
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => break Err(io::Error::from(e)),
                Ok(0) => {
                    break Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: file shrank while being served", info.path.display()),
                    ))
                }
                Ok(n) => {
                    let now = match info.file.metadata() {
                        Ok(m) => EntryFacts::of(&m),
                        Err(e) => break Err(e),
                    };
                    if now != info.facts {
                        tracing::error!(path = %info.path.display(), "store file changed while being served: cutting the transfer");
                        break Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{}: changed while being served", info.path.display()),
                        ));
                    }
                    break Ok(n);
                }
            }
        }
    }
}
