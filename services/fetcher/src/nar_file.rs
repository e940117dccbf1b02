//! The shared "NAR file → NAR" layer: every backend whose locators name a
//! NAR *file* (`file:`, `mirror:`, `s3:`, `exec:`, `ipfs:`, `btih:`, …) gets
//! raw file bytes from its network through a [`FileSource`] and hands them to
//! [`nar_from_file`], which
//!
//! - checks the file against its [`FileFacts`]: more bytes than `fileSize`,
//!   a short file, or a `fileHash` mismatch at the end are
//!   [`BackendError::BadData`] (the hash is only checked when the file was
//!   read from byte 0);
//! - decompresses it while it streams (`none`, `xz`, `zstd`, `bzip2`;
//!   undecodable bytes are `BadData`); after the decoder ends, the rest of the
//!   file is still read so the size and hash are checked to the end;
//! - resumes a transfer that breaks with a [`BackendError::Transport`] error
//!   by calling [`FileSource::open_at`] again at the file offset reached (up
//!   to [`FileSource::resumes`] times), if the source [can
//!   seek](FileSource::can_seek); a source may use this to fail over (the
//!   mirrors backend continues on the next mirror);
//! - seeks in the NAR only for uncompressed files on seekable sources:
//!   [`Opened::start`] is then the requested offset, otherwise 0 (the fetcher
//!   skips the bytes before its offset; NarHash is checked by the fetcher in
//!   every case).
//!
//! A new backend implements [`FileSource`] for one fetch and returns
//! `nar_from_file(Box::new(source), facts, offset)` from
//! [`crate::Backend::open`]; [`supported`] tells [`crate::Backend::handles`]
//! whether the compression can be decoded.

use bytes::Bytes;
use ds_core::{Compression, FileFacts, HashAlgo};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use sha2::Digest;

use async_compression::tokio::bufread::{BzDecoder, XzDecoder, ZstdDecoder};

use crate::backend::{BackendError, ByteStream, Opened};

/// Default number of resumes after a broken transfer ([`FileSource::resumes`]).
pub const DEFAULT_RESUMES: u32 = 2;

/// Raw bytes of a NAR file as a [`FileSource`] delivers them.
pub struct FileBytes {
    /// File offset of the first byte of `stream`: the offset asked for, or 0
    /// when the source ignored it (e.g. an HTTP 200 answering a Range
    /// request). Anything else is refused by [`nar_from_file`].
    pub start: u64,
    /// The bytes from `start` on. A [`BackendError::Transport`] item means
    /// the transfer broke and may be resumed; other errors end the fetch.
    pub stream: ByteStream,
    /// How many bytes the source announced (e.g. Content-Length), if it did:
    /// checked against `fileSize` before any byte is read.
    pub len: Option<u64>,
}

/// Where the bytes of one NAR file come from, for one fetch. Implemented by
/// each backend (an HTTP URL, a set of mirrors, an S3 object, a child
/// process's stdout, an IPFS CID, a torrent, …).
pub trait FileSource: Send + 'static {
    /// Start delivering the file from `file_offset` (0 on the first call
    /// unless the file is uncompressed and the fetch resumes; later calls
    /// resume a broken transfer at the offset reached). Resolves once the
    /// source answered, before the body streams.
    fn open_at(&mut self, file_offset: u64) -> BoxFuture<'_, Result<FileBytes, BackendError>>;

    /// Whether [`Self::open_at`] can start at an offset other than 0. A
    /// source that cannot (a pipe) is opened once, at 0, and never resumed.
    fn can_seek(&self) -> bool;

    /// How many times a broken transfer is resumed before the fetch fails
    /// (default [`DEFAULT_RESUMES`]).
    fn resumes(&self) -> u32 {
        DEFAULT_RESUMES
    }

    /// What to call the source in errors and logs (a URL, `s3:key`, …).
    fn describe(&self) -> String;
}

/// Decompressors this layer knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    None,
    Xz,
    Zstd,
    Bzip2,
}

pub(crate) fn codec(c: &Compression) -> Option<Codec> {
    match c {
        Compression::None => Some(Codec::None),
        Compression::Xz => Some(Codec::Xz),
        Compression::Zstd => Some(Codec::Zstd),
        Compression::Other(name) if name == "bzip2" => Some(Codec::Bzip2),
        Compression::Other(_) => None,
    }
}

/// The value and file facts of a NAR-file locator (`scheme:value#facts`)
/// whose value passes `valid`; otherwise the `Unsupported` error every
/// NAR-file backend answers, "<locator> is not <what> locator".
pub fn locator_file(
    locator: &ds_core::Locator,
    valid: impl Fn(&str) -> bool,
    what: &str,
) -> Result<(String, FileFacts), BackendError> {
    match locator.other_parts() {
        Some(Ok((value, facts))) if valid(value) => Ok((value.to_string(), facts)),
        _ => Err(BackendError::Unsupported(format!(
            "{locator} is not {what} locator"
        ))),
    }
}

/// A NAR-file backend's `handles`: a `scheme:value#facts` locator whose
/// value passes `valid` and whose compression [`nar_from_file`] decodes.
pub fn handles_file(locator: &ds_core::Locator, valid: impl Fn(&str) -> bool) -> bool {
    matches!(locator.other_parts(), Some(Ok((value, facts)))
        if valid(value) && supported(&facts.compression))
}

/// Whether [`nar_from_file`] can decode a file compressed with `c`.
pub fn supported(c: &Compression) -> bool {
    codec(c).is_some()
}

/// Turn the NAR file that `source` delivers into uncompressed, checked NAR
/// bytes, from NAR byte `offset` on when the file is uncompressed and the
/// source seeks (see the module docs). Resolves once the source answered.
pub fn nar_from_file(
    source: Box<dyn FileSource>,
    facts: FileFacts,
    offset: u64,
) -> BoxFuture<'static, Result<Opened, BackendError>> {
    async move {
        let codec = codec(&facts.compression).ok_or_else(|| {
            BackendError::Unsupported(format!(
                "compression {} of {}",
                facts.compression.as_str(),
                source.describe()
            ))
        })?;
        // An uncompressed file seeks like the NAR itself.
        let want = if codec == Codec::None && source.can_seek() {
            offset
        } else {
            0
        };
        let mut body = FileBody::new(source, facts);
        let start = body.start(want).await?;
        let compressed: ByteStream =
            futures::stream::unfold(
                body,
                |mut b| async move { b.next_chunk().await.map(|r| (r, b)) },
            )
            .boxed();
        let stream = match codec {
            Codec::None => compressed,
            Codec::Xz => decode(compressed, XzDecoder::new, XzDecoder::into_inner),
            Codec::Zstd => decode(compressed, ZstdDecoder::new, ZstdDecoder::into_inner),
            Codec::Bzip2 => decode(compressed, BzDecoder::new, BzDecoder::into_inner),
        };
        Ok(Opened { stream, start })
    }
    .boxed()
}

/// Run `compressed` through a decoder; errors keep their kind across the
/// `io::Error` the decoder needs (a decode error is bad data). Once the
/// decoder is done, the rest of the file is still read, so that FileHash
/// and FileSize are checked to the end (the decoder stops at the end of its
/// frame and never sees the file end).
fn decode<D>(compressed: ByteStream, make: fn(Reader) -> D, unwrap: fn(D) -> Reader) -> ByteStream
where
    D: tokio::io::AsyncRead + Send + Unpin + 'static,
{
    use tokio::io::AsyncReadExt;
    let io: IoStream = compressed.map_err(std::io::Error::other).boxed();
    let decoder = make(tokio_util::io::StreamReader::new(io));
    futures::stream::unfold(Some(decoder), move |state| async move {
        let mut decoder = state?;
        let mut buf = bytes::BytesMut::with_capacity(64 * 1024);
        match decoder.read_buf(&mut buf).await {
            Ok(0) => {}
            Ok(_) => return Some((Ok(buf.freeze()), Some(decoder))),
            Err(e) => return Some((Err(from_io(e)), None)),
        }
        let mut rest = unwrap(decoder).into_inner();
        while let Some(item) = rest.next().await {
            if let Err(e) = item {
                return Some((Err(from_io(e)), None));
            }
        }
        None
    })
    .boxed()
}

fn from_io(e: std::io::Error) -> BackendError {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<BackendError>())
        .cloned()
        .unwrap_or_else(|| BackendError::BadData(format!("decompressing: {e}")))
}

type Reader = tokio_util::io::StreamReader<IoStream, Bytes>;
type IoStream = futures::stream::BoxStream<'static, std::io::Result<Bytes>>;

/// The compressed bytes of one file, across resumed transfers, checked
/// against the file facts.
struct FileBody {
    source: Box<dyn FileSource>,
    facts: FileFacts,
    name: String,
    body: Option<ByteStream>,
    /// File offset of the next byte.
    pos: u64,
    /// Hash of the file from byte 0 (None when the first transfer did not
    /// start at 0: then only NarHash checks the bytes).
    sha: Option<sha2::Sha256>,
    resumes_left: u32,
    finished: bool,
}

impl FileBody {
    fn new(source: Box<dyn FileSource>, facts: FileFacts) -> Self {
        let resumes_left = if source.can_seek() {
            source.resumes()
        } else {
            0
        };
        FileBody {
            name: source.describe(),
            source,
            facts,
            body: None,
            pos: 0,
            sha: None,
            resumes_left,
            finished: false,
        }
    }

    /// Open the source at `offset`; returns where its bytes start.
    async fn request(&mut self, offset: u64) -> Result<u64, BackendError> {
        let got = self.source.open_at(offset).await?;
        if got.start != offset && got.start != 0 {
            return Err(BackendError::Refused(format!(
                "{}: asked for file bytes from {offset}, got bytes from {}",
                self.name, got.start
            )));
        }
        if let (Some(len), Some(size)) = (got.len, self.facts.file_size) {
            if got.start + len > size {
                return Err(BackendError::BadData(format!(
                    "{}: {len} bytes from {} exceed FileSize {size}",
                    self.name, got.start
                )));
            }
        }
        self.body = Some(got.stream);
        Ok(got.start)
    }

    /// The first transfer.
    async fn start(&mut self, offset: u64) -> Result<u64, BackendError> {
        let start = self.request(offset).await?;
        self.pos = start;
        if start == 0 {
            self.sha = Some(sha2::Sha256::new());
        }
        Ok(start)
    }

    fn check_end(&mut self) -> Result<(), BackendError> {
        if let Some(size) = self.facts.file_size {
            if self.pos != size {
                return Err(BackendError::BadData(format!(
                    "{}: file ended at {} bytes, FileSize is {size}",
                    self.name, self.pos
                )));
            }
        }
        if let (Some(sha), Some(want)) = (self.sha.take(), &self.facts.file_hash) {
            if want.algo == HashAlgo::Sha256 && sha.finalize().as_slice() != want.digest.as_slice()
            {
                return Err(BackendError::BadData(format!(
                    "{}: FileHash mismatch",
                    self.name
                )));
            }
        }
        Ok(())
    }

    fn fail(&mut self, e: BackendError) -> Option<Result<Bytes, BackendError>> {
        self.finished = true;
        self.body = None;
        Some(Err(e))
    }

    async fn next_chunk(&mut self) -> Option<Result<Bytes, BackendError>> {
        loop {
            if self.finished {
                return None;
            }
            let Some(body) = self.body.as_mut() else {
                // Resume where the broken transfer stopped.
                let pos = self.pos;
                match self.request(pos).await {
                    Ok(start) if start == pos => continue,
                    Ok(_) => {
                        let e = BackendError::Refused(format!(
                            "{}: cannot resume at byte {pos} (no range support)",
                            self.name
                        ));
                        return self.fail(e);
                    }
                    Err(e) => return self.fail(e),
                }
            };
            match body.next().await {
                Some(Ok(chunk)) => {
                    self.pos += chunk.len() as u64;
                    if let Some(size) = self.facts.file_size {
                        if self.pos > size {
                            let e = BackendError::BadData(format!(
                                "{}: more than FileSize {size} bytes",
                                self.name
                            ));
                            return self.fail(e);
                        }
                    }
                    if let Some(sha) = self.sha.as_mut() {
                        sha.update(&chunk);
                    }
                    return Some(Ok(chunk));
                }
                Some(Err(BackendError::Transport(e))) if self.resumes_left > 0 => {
                    self.resumes_left -= 1;
                    tracing::info!(source = %self.name, pos = self.pos, "transfer broke ({e}); resuming");
                    self.body = None;
                }
                Some(Err(e)) => return self.fail(e),
                None => {
                    self.finished = true;
                    self.body = None;
                    return self.check_end().err().map(Err);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ds_core::Hash;

    #[test]
    fn codecs() {
        assert_eq!(codec(&Compression::from_name("bzip2")), Some(Codec::Bzip2));
        assert_eq!(codec(&Compression::from_name("zstd")), Some(Codec::Zstd));
        assert_eq!(codec(&Compression::from_name("br")), None);
    }

    /// A file in memory, delivered in chunks; `break_at` makes the first
    /// transfer fail with a transport error after that many bytes.
    struct Mem {
        data: Bytes,
        break_at: Option<usize>,
        opens: Vec<u64>,
        seek: bool,
    }

    impl FileSource for Mem {
        fn open_at(&mut self, off: u64) -> BoxFuture<'_, Result<FileBytes, BackendError>> {
            self.opens.push(off);
            let start = if self.seek { off } else { 0 };
            let mut data = self.data.slice(start as usize..);
            let mut items: Vec<Result<Bytes, BackendError>> = Vec::new();
            if let Some(b) = self.break_at.take() {
                data = data.slice(..b.min(data.len()));
                items.push(Ok(data.clone()));
                items.push(Err(BackendError::Transport("cut".into())));
            } else {
                items.push(Ok(data.clone()));
            }
            let len = Some(data.len() as u64);
            let stream = futures::stream::iter(items).boxed();
            async move { Ok(FileBytes { start, stream, len }) }.boxed()
        }
        fn can_seek(&self) -> bool {
            self.seek
        }
        fn describe(&self) -> String {
            "mem".into()
        }
    }

    async fn collect(o: Opened) -> Result<Vec<u8>, BackendError> {
        let mut out = Vec::new();
        let mut s = o.stream;
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    fn facts(data: &[u8], compression: Compression) -> FileFacts {
        FileFacts {
            compression,
            file_hash: Some(Hash::sha256(data)),
            file_size: Some(data.len() as u64),
        }
    }

    #[tokio::test]
    async fn resumes_and_checks() {
        let data = Bytes::from((0..5000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let src = Mem {
            data: data.clone(),
            break_at: Some(1000),
            opens: vec![],
            seek: true,
        };
        let o = nar_from_file(Box::new(src), facts(&data, Compression::None), 0)
            .await
            .expect("opens");
        assert_eq!(o.start, 0);
        assert_eq!(collect(o).await.expect("resumed"), data.to_vec());

        // A pipe cannot resume: the break is the end.
        let src = Mem {
            data: data.clone(),
            break_at: Some(1000),
            opens: vec![],
            seek: false,
        };
        let o = nar_from_file(Box::new(src), facts(&data, Compression::None), 300)
            .await
            .expect("opens");
        assert_eq!(o.start, 0, "a pipe starts at 0");
        assert!(matches!(collect(o).await, Err(BackendError::Transport(_))));

        // Wrong hash → BadData at the end.
        let mut wrong = facts(&data, Compression::None);
        wrong.file_hash = Some(Hash::sha256(b"other"));
        let src = Mem {
            data: data.clone(),
            break_at: None,
            opens: vec![],
            seek: true,
        };
        let o = nar_from_file(Box::new(src), wrong, 0).await.expect("opens");
        assert!(matches!(collect(o).await, Err(BackendError::BadData(_))));

        // Announced length beyond FileSize → BadData before any byte.
        let mut small = facts(&data, Compression::None);
        small.file_size = Some(10);
        let src = Mem {
            data,
            break_at: None,
            opens: vec![],
            seek: true,
        };
        assert!(matches!(
            nar_from_file(Box::new(src), small, 0).await,
            Err(BackendError::BadData(_))
        ));
    }
}
