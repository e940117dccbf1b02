//! The built-in HTTP backends: distributed-store peers (`peer:`, `lead:`)
//! and binary-cache NAR files (`file:`), over one shared reqwest client.

use std::time::Duration;

use ds_core::{FileFacts, Hash, Locator, NarInfo};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;

use crate::backend::{Backend, BackendError, ByteStream, Opened};
use crate::nar_file::{self, FileBytes, FileSource};

/// Header telling a peer how it is being asked: `peer` (serve what you hold
/// or are fetching) or `lead` (fetch it from your upstream for the fleet).
pub use ds_dbus::peer::HOP_HEADER;

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

/// `file:` locators: a NAR file of a binary cache (upstream or mirror),
/// through [`crate::nar_file`]: decompressed while it streams, the file's
/// hash and size checked when the locator carries them, a broken transfer
/// resumed with Range.
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
        matches!(locator, Locator::File(f) if nar_file::supported(&f.compression))
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
        let facts = FileFacts {
            compression: file.compression,
            file_hash: file.file_hash,
            file_size: file.file_size,
        };
        let source = HttpFile {
            client: self.client.clone(),
            url: file.url,
        };
        nar_file::nar_from_file(Box::new(source), facts, offset)
    }
}

/// One NAR file at an http(s) URL, read with Range requests.
struct HttpFile {
    client: reqwest::Client,
    url: String,
}

impl FileSource for HttpFile {
    fn open_at(&mut self, file_offset: u64) -> BoxFuture<'_, Result<FileBytes, BackendError>> {
        get_file(&self.client, &self.url, file_offset).boxed()
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}

/// `GET url` from file byte `offset` (a Range request when `offset > 0`):
/// the raw bytes for [`crate::nar_file`]; an HTTP error status is
/// [`BackendError::Refused`], a broken body [`BackendError::Transport`].
pub(crate) async fn get_file(
    client: &reqwest::Client,
    url: &str,
    offset: u64,
) -> Result<FileBytes, BackendError> {
    let mut req = client.get(url);
    if offset > 0 {
        req = req.header(RANGE, format!("bytes={offset}-"));
    }
    let resp = req.send().await.map_err(transport)?;
    let start = body_start(&resp, offset, url)?;
    let len = resp.content_length();
    let stream: ByteStream = resp.bytes_stream().map_err(transport).boxed();
    Ok(FileBytes { start, stream, len })
}
