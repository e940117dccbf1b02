//! NAR serialization of store paths, generated from the file system on the
//! fly with `nix-nar`'s encoder over a file-system view that never follows
//! symbolic links.

use std::cmp::min;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use camino::{Utf8Path, Utf8PathBuf};
use ds_core::nar::NarHasher;
use ds_core::Hash;
use futures::Stream;
use nix_nar::{Encoder, FileSystem, FileSystemMetadata, NarError};
use tokio::sync::mpsc;

use crate::{LocalStore, StoreError};
use ds_core::StorePath;

/// Size of the chunks a NAR stream yields, and of the reader's buffer.
pub const NAR_CHUNK_SIZE: usize = 64 * 1024;

/// Chunks buffered between the blocking producer and the consumer; once
/// full, the producer waits (back-pressure from a slow client).
const CHANNEL_DEPTH: usize = 4;

/// nix-nar writes each header (up to a 4095-byte symlink target plus a
/// 255-byte name and framing) whole: either straight into a caller buffer of
/// at least 1024 bytes, or into an internal one of this size. Our calls pass
/// buffers of [`NAR_CHUNK_SIZE`] or of less than [`SMALL_READ`] bytes.
const ENCODER_BUFFER: usize = 8 * 1024 + 1024;
const SMALL_READ: usize = 1023;

/// Nix records only the owner's execute bit (`S_IXUSR`).
const OWNER_EXEC: u32 = 0o100;

/// nix-nar's view of the store's files: `lstat`, never `stat`, so that a
/// symlink inside a store path is serialized as a link (even one pointing
/// outside a chroot store), and files opened with `O_NOFOLLOW`. Paths come
/// only from the top-level path plus names read from directories.
struct StoreFs {
    /// Set while the reader discards output (`nar_reader_from`): file
    /// contents are then counted, not read.
    discard: Arc<AtomicBool>,
}

struct StoreFile {
    file: File,
    pos: u64,
    len: u64,
    seek_needed: bool,
    discard: Arc<AtomicBool>,
}

fn invalid_data(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl FileSystem for StoreFs {
    type File = StoreFile;

    fn metadata(&self, path: &Utf8Path) -> io::Result<FileSystemMetadata> {
        let meta = std::fs::symlink_metadata(path)?;
        let kind = meta.file_type();
        if kind.is_dir() {
            Ok(FileSystemMetadata::Directory)
        } else if kind.is_symlink() {
            let target = std::fs::read_link(path)?;
            let target_path = Utf8PathBuf::from_path_buf(target).map_err(|t| {
                invalid_data(format!(
                    "symlink {path}: target {t:?} is not UTF-8, which nix-nar cannot encode"
                ))
            })?;
            Ok(FileSystemMetadata::Symlink { target_path })
        } else if kind.is_file() {
            Ok(FileSystemMetadata::File {
                executable: meta.mode() & OWNER_EXEC != 0,
                length: meta.len(),
            })
        } else {
            Err(invalid_data(format!(
                "{path}: unsupported file type (a NAR holds only regular files, directories and symlinks)"
            )))
        }
    }

    fn read_dir(&self, path: &Utf8Path) -> io::Result<Vec<String>> {
        std::fs::read_dir(path)?
            .map(|entry| {
                entry?.file_name().into_string().map_err(|name| {
                    invalid_data(format!(
                        "{path}: file name {name:?} is not UTF-8, which nix-nar cannot encode"
                    ))
                })
            })
            .collect()
    }

    fn open(&self, path: &Utf8Path) -> io::Result<StoreFile> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(invalid_data(format!("{path}: no longer a regular file")));
        }
        Ok(StoreFile {
            file,
            pos: 0,
            len: meta.len(),
            seek_needed: false,
            discard: self.discard.clone(),
        })
    }
}

impl Read for StoreFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Never more than the size announced in the NAR header, so a file
        // that grew cannot corrupt the framing (the hash check catches it).
        let want = usize::try_from(min(buf.len() as u64, self.len - self.pos)).unwrap_or(buf.len());
        if self.discard.load(Ordering::Relaxed) {
            // The reader throws these bytes away: account for them only.
            self.pos += want as u64;
            self.seek_needed = true;
            return Ok(want);
        }
        if self.seek_needed {
            self.file.seek(SeekFrom::Start(self.pos))?;
            self.seek_needed = false;
        }
        let n = self.file.read(&mut buf[..want])?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Blocking NAR reader: nix-nar's encoder behind a [`NAR_CHUNK_SIZE`]
/// buffer (the encoder needs large buffers, see [`ENCODER_BUFFER`]), with an
/// optional number of leading bytes to skip.
pub(crate) struct NarReader {
    enc: Encoder<StoreFs>,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    skip: u64,
    discard: Arc<AtomicBool>,
}

impl NarReader {
    pub(crate) fn new(physical: &Path, skip: u64) -> Result<Self, StoreError> {
        let io_err = |source| StoreError::Io {
            path: physical.to_path_buf(),
            source,
        };
        // Fail now, with the path, rather than on the first read.
        std::fs::symlink_metadata(physical).map_err(io_err)?;
        let discard = Arc::new(AtomicBool::new(false));
        let enc = Encoder::builder(physical)
            .internal_buffer_size(ENCODER_BUFFER)
            .filesystem(StoreFs {
                discard: discard.clone(),
            })
            .build()
            .map_err(|e| match e {
                NarError::IoError(e) => io_err(e),
                other => io_err(invalid_data(other.to_string())),
            })?;
        Ok(NarReader {
            enc,
            buf: vec![0; NAR_CHUNK_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
            skip,
            discard,
        })
    }

    /// Generate and drop the first `skip` bytes. Headers are produced as
    /// usual, file contents are only counted (no reads), so skipping into a
    /// large NAR costs little more than walking its directories.
    fn skip_now(&mut self) -> io::Result<()> {
        while self.skip > 0 {
            let len = match usize::try_from(self.skip) {
                Ok(s) if s < NAR_CHUNK_SIZE => min(s, SMALL_READ),
                _ => NAR_CHUNK_SIZE,
            };
            self.discard.store(true, Ordering::Relaxed);
            let result = self.enc.read(&mut self.buf[..len]);
            self.discard.store(false, Ordering::Relaxed);
            match result? {
                // Offset at or past the end: nothing left to read.
                0 => self.skip = 0,
                n => self.skip -= n as u64,
            }
        }
        Ok(())
    }
}

impl Read for NarReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        self.skip_now()?;
        if self.start == self.end {
            if out.len() >= NAR_CHUNK_SIZE {
                return self.enc.read(out);
            }
            self.end = self.enc.read(&mut self.buf)?;
            self.start = 0;
        }
        let n = min(out.len(), self.end - self.start);
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

/// The async NAR stream behind [`LocalStore::nar_stream_from`].
pub(crate) fn stream(
    store: Arc<LocalStore>,
    path: StorePath,
    offset: u64,
    expect: Option<(Hash, u64)>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    enum State {
        NotStarted(Arc<LocalStore>, StorePath, u64, Option<(Hash, u64)>),
        Running(mpsc::Receiver<io::Result<Bytes>>),
    }
    futures::stream::unfold(
        State::NotStarted(store, path, offset, expect),
        |state| async move {
            let mut rx = match state {
                // Started on first poll, so an unpolled stream costs nothing.
                State::NotStarted(store, path, offset, expect) => {
                    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
                    tokio::task::spawn_blocking(move || match expect {
                        None => produce(&store, &path, offset, &mut |item| {
                            // The end marker is not data.
                            matches!(&item, Ok(b) if b.is_empty()) || tx.blocking_send(item).is_ok()
                        }),
                        Some((hash, size)) => {
                            let mut verifier = Verifier::new(hash, size);
                            produce(&store, &path, 0, &mut |item| {
                                verifier
                                    .push(item)
                                    .into_iter()
                                    .all(|out| tx.blocking_send(out).is_ok())
                            });
                        }
                    });
                    rx
                }
                State::Running(rx) => rx,
            };
            let item = rx.recv().await?;
            Some((item, State::Running(rx)))
        },
    )
}

/// Runs on a blocking thread and hands each item to `send`, then, after the
/// last chunk, an empty chunk as the end marker (see [`Verifier`]); stops as
/// soon as `send` says the consumer went away.
fn produce(
    store: &LocalStore,
    path: &StorePath,
    offset: u64,
    send: &mut dyn FnMut(io::Result<Bytes>) -> bool,
) {
    let mut reader = match store.nar_reader_from(path, offset) {
        Ok(r) => r,
        Err(e) => {
            send(Err(e.into()));
            return;
        }
    };
    loop {
        let mut chunk = BytesMut::zeroed(NAR_CHUNK_SIZE);
        let (filled, error) = read_full(&mut reader, &mut chunk);
        chunk.truncate(filled);
        if filled > 0 && !send(Ok(chunk.freeze())) {
            return;
        }
        if let Some(e) = error {
            send(Err(e));
            return;
        }
        if filled < NAR_CHUNK_SIZE {
            send(Ok(Bytes::new()));
            return;
        }
    }
}

/// Checks a NAR stream against the database's NarHash and NarSize on the
/// producing thread (so hashing runs in parallel with the socket writes).
/// It holds back the last chunk until the hash is checked: on a mismatch
/// the consumer gets an error instead of it, never a complete bad NAR.
/// Empty chunks are not data: the producer sends one as its end marker.
pub(crate) struct Verifier {
    hasher: NarHasher,
    held: Option<Bytes>,
    expected: Hash,
    expected_size: u64,
    done: bool,
}

impl Verifier {
    pub(crate) fn new(expected: Hash, expected_size: u64) -> Self {
        Verifier {
            hasher: NarHasher::new(),
            held: None,
            expected,
            expected_size,
            done: false,
        }
    }

    /// Feed one producer item; returns what may go to the consumer now.
    pub(crate) fn push(&mut self, item: io::Result<Bytes>) -> Vec<io::Result<Bytes>> {
        if self.done {
            return vec![];
        }
        match item {
            Err(e) => {
                self.done = true;
                vec![Err(e)]
            }
            Ok(chunk) if chunk.is_empty() => {
                self.done = true;
                let (hash, size) = std::mem::take(&mut self.hasher).finish();
                if size == self.expected_size && hash == self.expected {
                    self.held.take().map(Ok).into_iter().collect()
                } else {
                    tracing::error!(
                        expected = %self.expected, got = %hash, size, expected_size = self.expected_size,
                        "store files do not match the Nix database: aborting the transfer"
                    );
                    vec![Err(invalid_data(
                        "NAR does not match NarHash/NarSize in the Nix database".into(),
                    ))]
                }
            }
            Ok(chunk) => {
                self.hasher.update(&chunk);
                if self.hasher.len() > self.expected_size {
                    self.done = true;
                    tracing::error!(
                        expected_size = self.expected_size,
                        "store files do not match the Nix database: NAR longer than NarSize"
                    );
                    return vec![Err(invalid_data(
                        "NAR is longer than NarSize in the Nix database".into(),
                    ))];
                }
                self.held.replace(chunk).map(Ok).into_iter().collect()
            }
        }
    }
}

/// Fill `buf` unless the reader ends or fails first.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (filled, Some(e)),
        }
    }
    (filled, None)
}

#[cfg(test)]
mod verifier_tests {
    use super::*;

    fn run(chunks: &[&'static [u8]], expected: &[u8], size: u64) -> Vec<io::Result<Bytes>> {
        let mut v = Verifier::new(Hash::sha256(expected), size);
        let mut out = vec![];
        for c in chunks {
            out.extend(v.push(Ok(Bytes::from_static(c))));
        }
        out.extend(v.push(Ok(Bytes::new())));
        out
    }

    fn data(items: &[io::Result<Bytes>]) -> Vec<u8> {
        items
            .iter()
            .filter_map(|i| i.as_ref().ok())
            .flat_map(|b| b.to_vec())
            .collect()
    }

    #[test]
    fn good_stream_passes_whole() {
        let out = run(&[b"hello", b" ", b"world"], b"hello world", 11);
        assert!(out.iter().all(|i| i.is_ok()));
        assert_eq!(data(&out), b"hello world");
    }

    #[test]
    fn same_size_other_bytes_withholds_the_last_chunk() {
        let out = run(&[b"hello", b" ", b"WORLD"], b"hello world", 11);
        assert_eq!(data(&out), b"hello ");
        assert!(out.last().unwrap().is_err());
    }

    #[test]
    fn longer_and_shorter_fail() {
        let out = run(&[b"hello", b" world!!"], b"hello world", 11);
        assert!(out.last().unwrap().is_err());
        assert!(data(&out).len() < 11);
        let out = run(&[b"hello"], b"hello world", 11);
        assert!(out.last().unwrap().is_err());
        assert!(data(&out).is_empty());
    }

    #[test]
    fn producer_error_passes_through() {
        let mut v = Verifier::new(Hash::sha256(b"x"), 1);
        let out = v.push(Err(io::Error::other("disk")));
        assert!(out[0].is_err());
        assert!(v.push(Ok(Bytes::from_static(b"x"))).is_empty());
    }
}
