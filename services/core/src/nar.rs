//! NAR streaming hash and a validating NAR reader.
//!
//! [`NarReader`] is a pull parser over any [`std::io::Read`]: it checks the
//! full canonical grammar Nix writes (see `NIX-FACTS.md`), with bounded
//! memory (names and symlink targets are at most 4096 bytes and checked
//! before anything is allocated; file contents stream through a fixed
//! buffer) and bounded nesting (an explicit stack of at most
//! [`MAX_DEPTH`] directories, no recursion). Every malformed, truncated or
//! over-long input is an error, never a panic.

use crate::{Hash, HashAlgo};
use sha2::Digest as _;
use std::io::{ErrorKind, Read};

/// First string of every NAR.
pub const NAR_MAGIC: &str = "nix-archive-1";
/// Longest directory entry name accepted, in bytes.
pub const MAX_NAME_LEN: u64 = 4096;
/// Longest symlink target accepted, in bytes.
pub const MAX_TARGET_LEN: u64 = 4096;
/// Deepest directory nesting accepted (the root directory is depth 1).
pub const MAX_DEPTH: usize = 256;

/// SHA-256 and byte count over a NAR stream, fed in chunks.
#[derive(Clone, Default)]
pub struct NarHasher {
    sha256: sha2::Sha256,
    len: u64,
}

impl NarHasher {
    /// New hasher.
    pub fn new() -> Self {
        Self::default()
    }
    /// Feed bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.sha256.update(data);
        self.len += data.len() as u64;
    }
    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// True when nothing was fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// `(sha256, size)`.
    pub fn finish(self) -> (Hash, u64) {
        let hash = Hash {
            algo: HashAlgo::Sha256,
            digest: self.sha256.finalize().to_vec(),
        };
        (hash, self.len)
    }
}

impl std::io::Write for NarHasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A reader that feeds everything read through it into a [`NarHasher`].
pub struct HashingReader<R> {
    inner: R,
    hasher: NarHasher,
}

impl<R: Read> HashingReader<R> {
    /// Wrap `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: NarHasher::new(),
        }
    }
    /// The hasher so far.
    pub fn hasher(&self) -> &NarHasher {
        &self.hasher
    }
    /// The inner reader and the hasher.
    pub fn into_parts(self) -> (R, NarHasher) {
        (self.inner, self.hasher)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Why a NAR was rejected. Offsets count bytes from the start of the NAR.
#[derive(Debug, thiserror::Error)]
pub enum NarError {
    /// The input ended inside the archive.
    #[error("NAR is truncated: input ended at byte {0}")]
    Truncated(u64),
    /// The underlying reader failed.
    #[error("reading NAR: {0}")]
    Io(std::io::Error),
    /// A token other than the grammar allows here.
    #[error("NAR is malformed at byte {offset}: expected {expected}")]
    Unexpected {
        /// where the token starts
        offset: u64,
        /// what the grammar allows here
        expected: &'static str,
    },
    /// Padding after a string is not all zero bytes.
    #[error("NAR is malformed at byte {0}: non-zero padding")]
    BadPadding(u64),
    /// A name or symlink target longer than the limit.
    #[error("NAR is malformed at byte {offset}: {what} of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// where the string starts
        offset: u64,
        /// `"entry name"` or `"symlink target"`
        what: &'static str,
        /// the length the NAR claims
        len: u64,
        /// the limit
        max: u64,
    },
    /// Empty, `.`, `..`, or containing `/` or NUL.
    #[error("NAR is malformed at byte {offset}: invalid entry name {name:?}")]
    BadName {
        /// where the name starts
        offset: u64,
        /// the name (lossy UTF-8)
        name: String,
    },
    /// Directory entries not in strictly increasing bytewise order.
    #[error(
        "NAR is malformed at byte {offset}: entry {name:?} is not sorted after the previous one"
    )]
    Unsorted {
        /// where the name starts
        offset: u64,
        /// the name (lossy UTF-8)
        name: String,
    },
    /// Empty or containing NUL.
    #[error("NAR is malformed at byte {0}: invalid symlink target")]
    BadTarget(u64),
    /// More nested directories than [`MAX_DEPTH`].
    #[error("NAR nests directories deeper than {MAX_DEPTH} at byte {0}")]
    TooDeep(u64),
    /// Bytes after the end of the archive.
    #[error("NAR has trailing data after its end at byte {0}")]
    TrailingData(u64),
    /// `next` called again after an error.
    #[error("NAR reader used after an earlier error")]
    Poisoned,
}

/// Counts from a complete NAR.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NarStats {
    /// Regular files (executable or not).
    pub files: u64,
    /// Regular files with the executable bit.
    pub executables: u64,
    /// Directories, the root included if it is one.
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Total NAR bytes (narinfo `NarSize`).
    pub nar_size: u64,
    /// Sum of regular files' content lengths.
    pub content_size: u64,
}

/// One step of a NAR, in archive order.
///
/// A directory is `DirectoryStart`, then per entry `EntryStart`, the entry's
/// node (one `Regular`/`Symlink`, or a nested directory), `EntryEnd`; then
/// `DirectoryEnd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NarEvent {
    /// A regular file; its contents can be read with
    /// [`NarReader::read_contents`] before the next call to `next`.
    Regular {
        /// the executable marker was present
        executable: bool,
        /// content length in bytes
        size: u64,
    },
    /// A symlink.
    Symlink {
        /// the target, 1..=4096 bytes without NUL
        target: Vec<u8>,
    },
    /// A directory begins.
    DirectoryStart,
    /// An entry of the current directory begins.
    EntryStart {
        /// the entry name (validated, sorted after its predecessor)
        name: Vec<u8>,
    },
    /// The entry begun by the matching `EntryStart` ends.
    EntryEnd,
    /// The current directory ends.
    DirectoryEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Magic,
    Node,
    Contents { remaining: u64, pad: usize },
    AfterNode,
    DirBody,
    Done,
    Failed,
}

/// A streaming, validating NAR parser. Give it a buffered reader
/// (`BufReader`): it reads in small pieces.
pub struct NarReader<R> {
    inner: R,
    state: State,
    /// One slot per open directory: the previous entry name in it.
    dirs: Vec<Vec<u8>>,
    pos: u64,
    stats: NarStats,
    check_eof: bool,
    scratch: Vec<u8>,
}

const SCRATCH_LEN: usize = 64 * 1024;

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl<R: Read> NarReader<R> {
    /// A reader that requires the input to end right after the archive.
    pub fn new(inner: R) -> Self {
        NarReader {
            inner,
            state: State::Magic,
            dirs: Vec::new(),
            pos: 0,
            stats: NarStats::default(),
            check_eof: true,
            scratch: Vec::new(),
        }
    }

    /// A reader for a NAR embedded in a longer stream: it stops after the
    /// archive's last byte and leaves the rest unread.
    pub fn embedded(inner: R) -> Self {
        NarReader {
            check_eof: false,
            ..Self::new(inner)
        }
    }

    /// Counts so far (complete once `next` returned `None`); `nar_size` is
    /// the number of bytes consumed.
    pub fn stats(&self) -> &NarStats {
        &self.stats
    }

    /// Number of directories currently open.
    pub fn depth(&self) -> usize {
        self.dirs.len()
    }

    /// The inner reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Give back the inner reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Read and validate the rest of the archive.
    pub fn finish(mut self) -> Result<NarStats, NarError> {
        while self.next()?.is_some() {}
        Ok(self.stats)
    }

    /// Read up to `buf.len()` bytes of the current regular file's contents.
    /// Returns 0 at the end of the contents, or when not inside a file.
    pub fn read_contents(&mut self, buf: &mut [u8]) -> Result<usize, NarError> {
        let State::Contents { remaining, pad } = self.state else {
            return Ok(0);
        };
        let want = buf
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = loop {
            match self.inner.read(&mut buf[..want]) {
                Ok(0) => return Err(self.fail(NarError::Truncated(self.pos))),
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.fail(NarError::Io(e))),
            }
        };
        self.pos += n as u64;
        self.stats.nar_size = self.pos;
        self.state = State::Contents {
            remaining: remaining - n as u64,
            pad,
        };
        Ok(n)
    }

    /// The next event, or `None` after the archive's end (and, for
    /// [`NarReader::new`], after checking that the input ends there).
    #[allow(clippy::should_implement_trait)] // fallible, not an Iterator
    pub fn next(&mut self) -> Result<Option<NarEvent>, NarError> {
        let result = self.step();
        self.stats.nar_size = self.pos;
        result.map_err(|e| self.fail(e))
    }

    fn fail(&mut self, e: NarError) -> NarError {
        self.state = State::Failed;
        e
    }

    fn step(&mut self) -> Result<Option<NarEvent>, NarError> {
        loop {
            match self.state {
                State::Failed => return Err(NarError::Poisoned),
                State::Done => return Ok(None),
                State::Magic => {
                    self.expect(NAR_MAGIC, "the NAR magic \"nix-archive-1\"")?;
                    self.state = State::Node;
                }
                State::Node => return self.node().map(Some),
                State::Contents { remaining, pad } => {
                    self.skip(remaining)?;
                    self.padding(pad)?;
                    self.expect(")", "\")\" after file contents")?;
                    self.state = State::AfterNode;
                }
                State::AfterNode => {
                    if self.dirs.is_empty() {
                        if self.check_eof {
                            self.eof()?;
                        }
                        self.state = State::Done;
                        return Ok(None);
                    }
                    self.expect(")", "\")\" closing a directory entry")?;
                    self.state = State::DirBody;
                    return Ok(Some(NarEvent::EntryEnd));
                }
                State::DirBody => return self.dir_body().map(Some),
            }
        }
    }

    fn node(&mut self) -> Result<NarEvent, NarError> {
        self.expect("(", "\"(\" opening a node")?;
        self.expect("type", "\"type\"")?;
        const TYPES: &str = "\"regular\", \"symlink\" or \"directory\"";
        let (tok, len) = self.small_token(TYPES)?;
        match &tok[..len] {
            b"regular" => {
                const AFTER: &str = "\"executable\" or \"contents\"";
                let (tok, len) = self.small_token(AFTER)?;
                let executable = match &tok[..len] {
                    b"executable" => {
                        self.expect("", "\"\" (the executable marker's empty value)")?;
                        self.expect("contents", "\"contents\"")?;
                        true
                    }
                    b"contents" => false,
                    _ => return Err(self.unexpected_here(len, AFTER)),
                };
                let size = self.u64()?;
                self.stats.files += 1;
                self.stats.executables += u64::from(executable);
                self.stats.content_size = self.stats.content_size.saturating_add(size);
                self.state = State::Contents {
                    remaining: size,
                    pad: pad_len(size),
                };
                Ok(NarEvent::Regular { executable, size })
            }
            b"symlink" => {
                self.expect("target", "\"target\"")?;
                let offset = self.pos;
                let target = self.string(MAX_TARGET_LEN, "symlink target")?;
                if target.is_empty() || target.contains(&0) {
                    return Err(NarError::BadTarget(offset));
                }
                self.expect(")", "\")\" after the symlink target")?;
                self.stats.symlinks += 1;
                self.state = State::AfterNode;
                Ok(NarEvent::Symlink { target })
            }
            b"directory" => {
                if self.dirs.len() >= MAX_DEPTH {
                    return Err(NarError::TooDeep(self.pos));
                }
                self.dirs.push(Vec::new());
                self.stats.dirs += 1;
                self.state = State::DirBody;
                Ok(NarEvent::DirectoryStart)
            }
            _ => Err(self.unexpected_here(len, TYPES)),
        }
    }

    fn dir_body(&mut self) -> Result<NarEvent, NarError> {
        const WANT: &str = "\"entry\" or \")\" in a directory";
        let (tok, len) = self.small_token(WANT)?;
        match &tok[..len] {
            b")" => {
                self.dirs.pop();
                self.state = State::AfterNode;
                Ok(NarEvent::DirectoryEnd)
            }
            b"entry" => {
                self.expect("(", "\"(\" opening an entry")?;
                self.expect("name", "\"name\"")?;
                let offset = self.pos;
                let name = self.string(MAX_NAME_LEN, "entry name")?;
                if name.is_empty()
                    || name == b"."
                    || name == b".."
                    || name.contains(&b'/')
                    || name.contains(&0)
                {
                    return Err(NarError::BadName {
                        offset,
                        name: lossy(&name),
                    });
                }
                let prev = self.dirs.last_mut().ok_or(NarError::Poisoned)?;
                // the first entry's predecessor is "", smaller than any name
                if name.as_slice() <= prev.as_slice() {
                    return Err(NarError::Unsorted {
                        offset,
                        name: lossy(&name),
                    });
                }
                prev.clear();
                prev.extend_from_slice(&name);
                self.expect("node", "\"node\"")?;
                self.state = State::Node;
                Ok(NarEvent::EntryStart { name })
            }
            _ => Err(self.unexpected_here(len, WANT)),
        }
    }

    // ---- byte level ----

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), NarError> {
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.pos += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Err(NarError::Truncated(self.pos)),
            Err(e) => Err(NarError::Io(e)),
        }
    }

    fn u64(&mut self) -> Result<u64, NarError> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn padding(&mut self, pad: usize) -> Result<(), NarError> {
        let mut b = [0u8; 8];
        let offset = self.pos;
        self.read_exact(&mut b[..pad])?;
        if b[..pad].iter().any(|&x| x != 0) {
            return Err(NarError::BadPadding(offset));
        }
        Ok(())
    }

    /// A string of at most 16 bytes (a keyword), on the stack.
    fn small_token(&mut self, expected: &'static str) -> Result<([u8; 16], usize), NarError> {
        let offset = self.pos;
        let len = self.u64()?;
        if len > 16 {
            return Err(NarError::Unexpected { offset, expected });
        }
        let len = len as usize;
        let mut tok = [0u8; 16];
        self.read_exact(&mut tok[..len])?;
        self.padding(pad_len(len as u64))?;
        Ok((tok, len))
    }

    /// The error for a token of `len` bytes that just ended.
    fn unexpected_here(&self, len: usize, expected: &'static str) -> NarError {
        let token_bytes = 8 + len as u64 + pad_len(len as u64) as u64;
        NarError::Unexpected {
            offset: self.pos - token_bytes,
            expected,
        }
    }

    fn expect(&mut self, lit: &'static str, expected: &'static str) -> Result<(), NarError> {
        let offset = self.pos;
        let (tok, len) = self.small_token(expected)?;
        if &tok[..len] != lit.as_bytes() {
            return Err(NarError::Unexpected { offset, expected });
        }
        Ok(())
    }

    /// A length-checked string: the length is compared with `max` before
    /// anything is allocated.
    fn string(&mut self, max: u64, what: &'static str) -> Result<Vec<u8>, NarError> {
        let offset = self.pos;
        let len = self.u64()?;
        if len > max {
            return Err(NarError::TooLong {
                offset,
                what,
                len,
                max,
            });
        }
        let mut buf = vec![0u8; len as usize];
        self.read_exact(&mut buf)?;
        self.padding(pad_len(len))?;
        Ok(buf)
    }

    fn skip(&mut self, mut remaining: u64) -> Result<(), NarError> {
        if remaining == 0 {
            return Ok(());
        }
        if self.scratch.is_empty() {
            self.scratch = vec![0u8; SCRATCH_LEN];
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = (|| {
            while remaining > 0 {
                let n = scratch
                    .len()
                    .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                let got = match self.inner.read(&mut scratch[..n]) {
                    Ok(0) => return Err(NarError::Truncated(self.pos)),
                    Ok(got) => got,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(NarError::Io(e)),
                };
                self.pos += got as u64;
                remaining -= got as u64;
            }
            Ok(())
        })();
        self.scratch = scratch;
        result
    }

    fn eof(&mut self) -> Result<(), NarError> {
        let mut b = [0u8; 1];
        loop {
            match self.inner.read(&mut b) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(NarError::TrailingData(self.pos)),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(NarError::Io(e)),
            }
        }
    }
}

fn pad_len(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

/// Validate a complete NAR (nothing may follow it) and count its contents.
pub fn validate<R: Read>(r: R) -> Result<NarStats, NarError> {
    NarReader::new(r).finish()
}

/// [`validate`], also returning the NAR's SHA-256 (narinfo `NarHash`).
pub fn validate_hashed<R: Read>(r: R) -> Result<(NarStats, Hash), NarError> {
    let mut reader = NarReader::new(HashingReader::new(r));
    while reader.next()?.is_some() {}
    let stats = *reader.stats();
    let (hash, _) = reader.into_inner().into_parts().1.finish();
    Ok((stats, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes NAR tokens, for building test archives.
    #[derive(Default)]
    struct W(Vec<u8>);
    impl W {
        fn s(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(&(b.len() as u64).to_le_bytes());
            self.0.extend_from_slice(b);
            self.0.resize(self.0.len() + pad_len(b.len() as u64), 0);
            self
        }
        fn ss(self, toks: &[&str]) -> Self {
            toks.iter().fold(self, |w, t| w.s(t.as_bytes()))
        }
        fn raw(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }
        fn file(self, contents: &[u8]) -> Self {
            self.ss(&["(", "type", "regular", "contents"])
                .s(contents)
                .ss(&[")"])
        }
    }
    fn nar() -> W {
        W::default().ss(&[NAR_MAGIC])
    }
    fn events(bytes: &[u8]) -> Result<Vec<NarEvent>, NarError> {
        let mut r = NarReader::new(bytes);
        let mut out = Vec::new();
        while let Some(ev) = r.next()? {
            out.push(ev);
        }
        Ok(out)
    }
    fn dir_with(entries: &[&[u8]]) -> Vec<u8> {
        let mut w = nar().ss(&["(", "type", "directory"]);
        for name in entries {
            w = w
                .ss(&["entry", "(", "name"])
                .s(name)
                .ss(&["node"])
                .file(b"x")
                .ss(&[")"]);
        }
        w.ss(&[")"]).0
    }

    #[test]
    fn hasher_streams() {
        let mut h = NarHasher::new();
        assert!(h.is_empty());
        h.update(b"hello ");
        std::io::Write::write_all(&mut h, b"world").unwrap();
        assert_eq!(h.len(), 11);
        let (hash, len) = h.finish();
        assert_eq!(len, 11);
        assert_eq!(hash, Hash::sha256(b"hello world"));
    }

    #[test]
    fn regular_file_and_contents() {
        let bytes = nar().file(b"hello").0;
        let mut r = NarReader::new(&bytes[..]);
        assert_eq!(
            r.next().unwrap(),
            Some(NarEvent::Regular {
                executable: false,
                size: 5
            })
        );
        let mut buf = [0u8; 3];
        assert_eq!(r.read_contents(&mut buf).unwrap(), 3);
        assert_eq!(&buf, b"hel");
        assert_eq!(r.read_contents(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"lo");
        assert_eq!(r.read_contents(&mut buf).unwrap(), 0);
        assert_eq!(r.next().unwrap(), None);
        assert_eq!(r.next().unwrap(), None);
        let stats = *r.stats();
        assert_eq!(stats.files, 1);
        assert_eq!(stats.content_size, 5);
        assert_eq!(stats.nar_size, bytes.len() as u64);
        let (stats, hash) = validate_hashed(&bytes[..]).unwrap();
        assert_eq!(stats.nar_size, bytes.len() as u64);
        assert_eq!(hash, Hash::sha256(&bytes));
    }

    #[test]
    fn executable_symlink_directory() {
        let bytes = nar()
            .ss(&["(", "type", "directory"])
            .ss(&[
                "entry",
                "(",
                "name",
                "bin",
                "node",
                "(",
                "type",
                "directory",
            ])
            .ss(&["entry", "(", "name", "run", "node"])
            .ss(&["(", "type", "regular", "executable", "", "contents"])
            .s(b"#!/bin/sh\n")
            .ss(&[")", ")"]) // file, entry
            .ss(&[")", ")"]) // dir bin, entry bin
            .ss(&[
                "entry", "(", "name", "link", "node", "(", "type", "symlink", "target", "bin/run",
                ")", ")",
            ])
            .ss(&[")"])
            .0;
        use NarEvent::*;
        assert_eq!(
            events(&bytes).unwrap(),
            vec![
                DirectoryStart,
                EntryStart {
                    name: b"bin".to_vec()
                },
                DirectoryStart,
                EntryStart {
                    name: b"run".to_vec()
                },
                Regular {
                    executable: true,
                    size: 10
                },
                EntryEnd,
                DirectoryEnd,
                EntryEnd,
                EntryStart {
                    name: b"link".to_vec()
                },
                Symlink {
                    target: b"bin/run".to_vec()
                },
                EntryEnd,
                DirectoryEnd,
            ]
        );
        let stats = validate(&bytes[..]).unwrap();
        assert_eq!(
            stats,
            NarStats {
                files: 1,
                executables: 1,
                dirs: 2,
                symlinks: 1,
                nar_size: bytes.len() as u64,
                content_size: 10
            }
        );
    }

    #[test]
    fn rejects_bad_framing() {
        let good = nar().file(b"hello").0;
        // wrong magic
        let bad = W::default().ss(&["nix-archive-2"]).file(b"x").0;
        assert!(matches!(
            validate(&bad[..]),
            Err(NarError::Unexpected { offset: 0, .. })
        ));
        // trailing data
        let mut bad = good.clone();
        bad.push(0);
        assert!(matches!(validate(&bad[..]), Err(NarError::TrailingData(_))));
        // ...which an embedded reader leaves alone
        let mut r = NarReader::embedded(&bad[..]);
        while r.next().unwrap().is_some() {}
        assert_eq!(r.into_inner(), &[0u8][..]);
        // non-zero padding after the contents
        let mut bad = good.clone();
        let pad_at = good.len() - 8 - 8 - 3;
        assert_eq!(&bad[pad_at - 5..pad_at], b"hello");
        bad[pad_at] = 1;
        assert!(matches!(validate(&bad[..]), Err(NarError::BadPadding(p)) if p == pad_at as u64));
        // non-zero padding after a keyword
        let mut bad = good.clone();
        bad[8 + 13] = b' '; // first padding byte after the magic
        assert!(matches!(validate(&bad[..]), Err(NarError::BadPadding(_))));
        // every other node type or order
        for bad in [
            nar().ss(&["(", "type", "fifo", ")"]).0,
            nar()
                .ss(&["(", "type", "regular", "executable", "x", "contents"])
                .s(b"")
                .ss(&[")"])
                .0,
            nar().ss(&["(", "type", "regular", "type", "regular"]).0,
            nar()
                .ss(&["(", "type", "regular", "contents"])
                .s(b"")
                .ss(&["executable", "", ")"])
                .0,
            nar().ss(&["(", "type", "symlink", ")"]).0,
            nar()
                .ss(&["(", "type", "directory", "entry", "(", "node"])
                .file(b"")
                .ss(&[")", ")"])
                .0,
            nar().ss(&["(", "type", "directory", "bogus", ")"]).0,
            nar().ss(&["type", "regular"]).0,
            nar().ss(&["(", ")"]).0,
        ] {
            assert!(
                matches!(validate(&bad[..]), Err(NarError::Unexpected { .. })),
                "{bad:?}"
            );
        }
        // an empty symlink target
        let bad = nar().ss(&["(", "type", "symlink", "target", "", ")"]).0;
        assert!(matches!(validate(&bad[..]), Err(NarError::BadTarget(_))));
        let bad = nar().ss(&["(", "type", "symlink", "target", "a\0b", ")"]).0;
        assert!(matches!(validate(&bad[..]), Err(NarError::BadTarget(_))));
    }

    #[test]
    fn directory_names_checked_and_sorted() {
        assert!(validate(&dir_with(&[b"B", b"a", b"a.txt", b"b", b"\xff"])[..]).is_ok());
        assert!(validate(&dir_with(&[])[..]).is_ok());
        for bad in [&b""[..], b".", b"..", b"a/b", b"/", b"a\0"] {
            let nar = dir_with(&[bad]);
            assert!(
                matches!(validate(&nar[..]), Err(NarError::BadName { .. })),
                "{bad:?}"
            );
        }
        for unsorted in [
            &[&b"b"[..], b"a"][..],
            &[b"a", b"a"],
            &[b"ab", b"a"],
            &[b"a", b"B"],
        ] {
            let nar = dir_with(unsorted);
            assert!(
                matches!(validate(&nar[..]), Err(NarError::Unsorted { .. })),
                "{unsorted:?}"
            );
        }
        // "..." and ".a" are fine names
        assert!(validate(&dir_with(&[b"...", b".a"])[..]).is_ok());
    }

    #[test]
    fn huge_lengths_are_not_allocated() {
        let hdr = nar().ss(&["(", "type", "directory", "entry", "(", "name"]);
        let bad = hdr.raw(&u64::MAX.to_le_bytes()).0;
        assert!(matches!(
            validate(&bad[..]),
            Err(NarError::TooLong { len: u64::MAX, .. })
        ));
        let bad = nar()
            .ss(&["(", "type", "symlink", "target"])
            .s(&[b'a'; 4097])
            .0;
        assert!(matches!(
            validate(&bad[..]),
            Err(NarError::TooLong { len: 4097, .. })
        ));
        let ok = nar()
            .ss(&["(", "type", "symlink", "target"])
            .s(&[b'a'; 4096])
            .ss(&[")"])
            .0;
        assert!(validate(&ok[..]).is_ok());
        // contents longer than the input: streamed, so simply truncated
        let bad = nar()
            .ss(&["(", "type", "regular", "contents"])
            .raw(&u64::MAX.to_le_bytes())
            .0;
        assert!(matches!(validate(&bad[..]), Err(NarError::Truncated(_))));
        // a keyword claiming a huge length
        let bad = nar().ss(&["("]).raw(&u64::MAX.to_le_bytes()).0;
        assert!(matches!(
            validate(&bad[..]),
            Err(NarError::Unexpected { .. })
        ));
    }

    fn nested(depth: usize) -> Vec<u8> {
        let mut w = nar().ss(&["(", "type", "directory"]);
        for _ in 1..depth {
            w = w.ss(&["entry", "(", "name", "d", "node", "(", "type", "directory"]);
        }
        for _ in 1..depth {
            w = w.ss(&[")", ")"]);
        }
        w.ss(&[")"]).0
    }

    #[test]
    fn depth_is_bounded() {
        let stats = validate(&nested(MAX_DEPTH)[..]).unwrap();
        assert_eq!(stats.dirs, MAX_DEPTH as u64);
        assert!(matches!(
            validate(&nested(MAX_DEPTH + 1)[..]),
            Err(NarError::TooDeep(_))
        ));
        // far deeper input: an error, no stack overflow
        assert!(matches!(
            validate(&nested(100_000)[..]),
            Err(NarError::TooDeep(_))
        ));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = dir_with(&[b"a", b"b"]);
        for cut in 0..bytes.len() {
            match validate(&bytes[..cut]) {
                Err(NarError::Truncated(at)) => assert!(at <= cut as u64),
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn poisoned_after_error() {
        let bad = nar().ss(&["(", "type", "fifo"]).0;
        let mut r = NarReader::new(&bad[..]);
        assert!(r.next().is_err());
        assert!(matches!(r.next(), Err(NarError::Poisoned)));
    }

    #[test]
    fn io_errors_pass_through() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk on fire"))
            }
        }
        assert!(matches!(validate(Broken), Err(NarError::Io(_))));
    }
}
