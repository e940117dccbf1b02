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
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    enum State {
        NotStarted(Arc<LocalStore>, StorePath, u64),
        Running(mpsc::Receiver<io::Result<Bytes>>),
    }
    futures::stream::unfold(State::NotStarted(store, path, offset), |state| async move {
        let mut rx = match state {
            // Started on first poll, so an unpolled stream costs nothing.
            State::NotStarted(store, path, offset) => {
                let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
                tokio::task::spawn_blocking(move || produce(&store, &path, offset, &tx));
                rx
            }
            State::Running(rx) => rx,
        };
        let item = rx.recv().await?;
        Some((item, State::Running(rx)))
    })
}

/// Runs on a blocking thread; stops as soon as the consumer goes away.
fn produce(
    store: &LocalStore,
    path: &StorePath,
    offset: u64,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) {
    let mut reader = match store.nar_reader_from(path, offset) {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.blocking_send(Err(e.into()));
            return;
        }
    };
    loop {
        let mut chunk = BytesMut::zeroed(NAR_CHUNK_SIZE);
        let (filled, error) = read_full(&mut reader, &mut chunk);
        chunk.truncate(filled);
        if filled > 0 && tx.blocking_send(Ok(chunk.freeze())).is_err() {
            return;
        }
        if let Some(e) = error {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        if filled < NAR_CHUNK_SIZE {
            return;
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
