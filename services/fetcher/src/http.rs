//! The built-in HTTP backends: distributed-store peers (`peer:`, `lead:`)
//! and binary-cache NAR files (`file:`), over one shared reqwest client.

use std::time::Duration;

use bytes::Bytes;
use ds_core::{Compression, FileLocator, Hash, HashAlgo, Locator, NarInfo};
use futures::{FutureExt, StreamExt, TryStreamExt};
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use sha2::Digest;

use async_compression::tokio::bufread::{BzDecoder, XzDecoder, ZstdDecoder};

use crate::backend::{Backend, BackendError, ByteStream, Opened};

/// Header telling a peer how it is being asked: `peer` (serve what you hold
/// or are fetching) or `lead` (fetch it from your upstream for the fleet).
pub use ds_dbus::peer::HOP_HEADER;

/// How many times a `file:` transfer that breaks is resumed with a Range
/// request to the same URL before the source counts as failed.
const FILE_RESUMES: u32 = 2;

/// The shared HTTP client: rustls, no proxy from the environment (peers are
/// on the LAN), connections pooled across backends.
pub fn client(connect_timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .no_proxy()
        .user_agent(concat!(
            "distributed-store-fetcher/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
}

/// nix-base32 of a NarHash digest: the name of a NAR in URLs and the cache.
pub fn narhash32(hash: &Hash) -> String {
    ds_core::base32::encode(&hash.digest)
}

fn transport(e: reqwest::Error) -> BackendError {
    BackendError::Transport(e.to_string())
}

/// `Content-Range: bytes <start>-<end>/<total>` → start.
fn content_range_start(resp: &reqwest::Response) -> Option<u64> {
    let v = resp.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.trim().strip_prefix("bytes ")?;
    let (start, _) = rest.split_once('-')?;
    start.trim().parse().ok()
}

/// Check the status of an answer to a request from `offset`: returns where
/// the body starts (`offset` for a matching 206, 0 for a 200).
fn body_start(resp: &reqwest::Response, offset: u64, url: &str) -> Result<u64, BackendError> {
    match resp.status() {
        StatusCode::OK => Ok(0),
        StatusCode::PARTIAL_CONTENT if offset > 0 => match content_range_start(resp) {
            Some(start) if start == offset => Ok(offset),
            other => Err(BackendError::Refused(format!(
                "{url}: asked for bytes {offset}-, got Content-Range starting at {other:?}"
            ))),
        },
        status => Err(BackendError::Refused(format!("{url}: HTTP {status}"))),
    }
}

/// `peer:` and `lead:` locators: `GET {base}/nar/{hash}-{narhash}.nar`,
/// uncompressed, with Range.
pub struct PeerBackend {
    client: reqwest::Client,
    peer_timeout: Duration,
    upstream_timeout: Duration,
}

impl PeerBackend {
    /// A peer backend; a `lead:` source gets `peer_timeout +
    /// upstream_timeout` for its first byte (the leader may be waiting on its
    /// own upstream).
    pub fn new(
        client: reqwest::Client,
        peer_timeout: Duration,
        upstream_timeout: Duration,
    ) -> Self {
        PeerBackend {
            client,
            peer_timeout,
            upstream_timeout,
        }
    }
}

impl Backend for PeerBackend {
    fn schemes(&self) -> &'static [&'static str] {
        &["peer", "lead"]
    }

    fn handles(&self, locator: &Locator) -> bool {
        matches!(locator, Locator::Peer(_) | Locator::Lead(_))
    }

    fn deadline(&self, locator: &Locator) -> Duration {
        match locator {
            Locator::Lead(_) => self.peer_timeout + self.upstream_timeout,
            _ => self.peer_timeout,
        }
    }

    fn open(
        &self,
        locator: &Locator,
        nar: &NarInfo,
        offset: u64,
    ) -> futures::future::BoxFuture<'static, Result<Opened, BackendError>> {
        let (base, hop) = match locator {
            Locator::Peer(b) => (b.clone(), "peer"),
            Locator::Lead(b) => (b.clone(), "lead"),
            other => {
                let e = BackendError::Unsupported(format!("{other} is not a peer locator"));
                return futures::future::ready(Err(e)).boxed();
            }
        };
        let url = format!(
            "{base}/nar/{}-{}.nar",
            nar.store_path.hash().as_str(),
            narhash32(&nar.nar_hash)
        );
        let client = self.client.clone();
        let nar_size = nar.nar_size;
        async move {
            let mut req = client.get(&url).header(HOP_HEADER, hop);
            if offset > 0 {
                req = req.header(RANGE, format!("bytes={offset}-"));
            }
            let resp = req.send().await.map_err(transport)?;
            let start = body_start(&resp, offset, &url)?;
            if let Some(len) = resp.content_length() {
                if len > nar_size - start {
                    return Err(BackendError::BadData(format!(
                        "{url}: Content-Length {len} exceeds the {} bytes left of NarSize {nar_size}",
                        nar_size - start
                    )));
                }
            }
            let stream: ByteStream = resp.bytes_stream().map_err(transport).boxed();
            Ok(Opened { stream, start })
        }
        .boxed()
    }
}

/// Decompressors the file backend knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    None,
    Xz,
    Zstd,
    Bzip2,
}

fn codec(c: &Compression) -> Option<Codec> {
    match c {
        Compression::None => Some(Codec::None),
        Compression::Xz => Some(Codec::Xz),
        Compression::Zstd => Some(Codec::Zstd),
        Compression::Other(name) if name == "bzip2" => Some(Codec::Bzip2),
        Compression::Other(_) => None,
    }
}

/// `file:` locators: a NAR file of a binary cache (upstream or mirror),
/// decompressed while it streams; the file's hash and size are checked when
/// the locator carries them; a broken transfer resumes with Range.
pub struct FileBackend {
    client: reqwest::Client,
    upstream_timeout: Duration,
}

impl FileBackend {
    /// A file backend with first-byte deadline `upstream_timeout`.
    pub fn new(client: reqwest::Client, upstream_timeout: Duration) -> Self {
        FileBackend {
            client,
            upstream_timeout,
        }
    }
}

impl Backend for FileBackend {
    fn schemes(&self) -> &'static [&'static str] {
        &["file"]
    }

    fn handles(&self, locator: &Locator) -> bool {
        matches!(locator, Locator::File(f) if codec(&f.compression).is_some())
    }

    fn deadline(&self, _locator: &Locator) -> Duration {
        self.upstream_timeout
    }

    fn open(
        &self,
        locator: &Locator,
        _nar: &NarInfo,
        offset: u64,
    ) -> futures::future::BoxFuture<'static, Result<Opened, BackendError>> {
        let file = match locator {
            Locator::File(f) => f.clone(),
            other => {
                let e = BackendError::Unsupported(format!("{other} is not a file locator"));
                return futures::future::ready(Err(e)).boxed();
            }
        };
        let client = self.client.clone();
        async move {
            let codec = codec(&file.compression).ok_or_else(|| {
                BackendError::Unsupported(format!(
                    "compression {} of {}",
                    file.compression.as_str(),
                    file.url
                ))
            })?;
            // An uncompressed file seeks like the NAR itself.
            let want = if codec == Codec::None { offset } else { 0 };
            let mut body = FileBody::new(client, file);
            let start = body.start(want).await?;
            let compressed: ByteStream = futures::stream::unfold(body, |mut b| async move {
                b.next_chunk().await.map(|r| (r, b))
            })
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

/// The compressed bytes of one file, across resumed requests, checked
/// against the file facts of the locator.
struct FileBody {
    client: reqwest::Client,
    file: FileLocator,
    body: Option<futures::stream::BoxStream<'static, reqwest::Result<Bytes>>>,
    /// File offset of the next byte.
    pos: u64,
    /// Hash of the file from byte 0 (None when the first request did not
    /// start at 0: then only NarHash checks the bytes).
    sha: Option<sha2::Sha256>,
    resumes_left: u32,
    finished: bool,
}

impl FileBody {
    fn new(client: reqwest::Client, file: FileLocator) -> Self {
        FileBody {
            client,
            file,
            body: None,
            pos: 0,
            sha: None,
            resumes_left: FILE_RESUMES,
            finished: false,
        }
    }

    /// Request the file from `offset`; returns where the body starts.
    async fn request(&mut self, offset: u64) -> Result<u64, BackendError> {
        let mut req = self.client.get(&self.file.url);
        if offset > 0 {
            req = req.header(RANGE, format!("bytes={offset}-"));
        }
        let resp = req.send().await.map_err(transport)?;
        let start = body_start(&resp, offset, &self.file.url)?;
        if let (Some(len), Some(size)) = (resp.content_length(), self.file.file_size) {
            if start + len > size {
                return Err(BackendError::BadData(format!(
                    "{}: {len} bytes from {start} exceed FileSize {size}",
                    self.file.url
                )));
            }
        }
        self.body = Some(resp.bytes_stream().boxed());
        Ok(start)
    }

    /// The first request.
    async fn start(&mut self, offset: u64) -> Result<u64, BackendError> {
        let start = self.request(offset).await?;
        self.pos = start;
        if start == 0 {
            self.sha = Some(sha2::Sha256::new());
        }
        Ok(start)
    }

    fn check_end(&mut self) -> Result<(), BackendError> {
        if let Some(size) = self.file.file_size {
            if self.pos != size {
                return Err(BackendError::BadData(format!(
                    "{}: file ended at {} bytes, FileSize is {size}",
                    self.file.url, self.pos
                )));
            }
        }
        if let (Some(sha), Some(want)) = (self.sha.take(), &self.file.file_hash) {
            if want.algo == HashAlgo::Sha256 && sha.finalize().as_slice() != want.digest.as_slice()
            {
                return Err(BackendError::BadData(format!(
                    "{}: FileHash mismatch",
                    self.file.url
                )));
            }
        }
        Ok(())
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
                        self.finished = true;
                        return Some(Err(BackendError::Refused(format!(
                            "{}: cannot resume at byte {pos} (no Range support)",
                            self.file.url
                        ))));
                    }
                    Err(e) => {
                        self.finished = true;
                        return Some(Err(e));
                    }
                }
            };
            match body.next().await {
                Some(Ok(chunk)) => {
                    self.pos += chunk.len() as u64;
                    if let Some(size) = self.file.file_size {
                        if self.pos > size {
                            self.finished = true;
                            return Some(Err(BackendError::BadData(format!(
                                "{}: more than FileSize {size} bytes",
                                self.file.url
                            ))));
                        }
                    }
                    if let Some(sha) = self.sha.as_mut() {
                        sha.update(&chunk);
                    }
                    return Some(Ok(chunk));
                }
                Some(Err(e)) if self.resumes_left > 0 => {
                    self.resumes_left -= 1;
                    tracing::info!(url = %self.file.url, pos = self.pos, "transfer broke ({e}); resuming with Range");
                    self.body = None;
                }
                Some(Err(e)) => {
                    self.finished = true;
                    return Some(Err(transport(e)));
                }
                None => {
                    self.finished = true;
                    return self.check_end().err().map(Err);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs() {
        assert_eq!(codec(&Compression::from_name("bzip2")), Some(Codec::Bzip2));
        assert_eq!(codec(&Compression::from_name("zstd")), Some(Codec::Zstd));
        assert_eq!(codec(&Compression::from_name("br")), None);
    }
}
