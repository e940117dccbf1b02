//! The extension point: a [`Backend`] gets the uncompressed bytes of a NAR
//! from one kind of locator. Peers and binary-cache files are built in
//! ([`crate::http`]); IPFS, BitTorrent, S3 or an external program are each
//! one more implementation registered in a [`Registry`] under their scheme.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ds_core::{Locator, NarInfo};
use futures::future::BoxFuture;
use futures::stream::BoxStream;

/// Uncompressed NAR bytes as they arrive from a source.
pub type ByteStream = BoxStream<'static, Result<Bytes, BackendError>>;

/// What [`Backend::open`] hands back: the bytes, and where they start.
pub struct Opened {
    /// Uncompressed NAR bytes from `start` on.
    pub stream: ByteStream,
    /// The NAR offset of the first byte of `stream`: the requested offset,
    /// or less (usually 0) when the source cannot seek; the fetcher then
    /// discards the bytes before the offset it asked for.
    pub start: u64,
}

/// Why a source failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// Connection, TLS, timeout or a broken transfer: the source may be
    /// fine another time; not reported as bad.
    #[error("transport: {0}")]
    Transport(String),
    /// The source answered something other than the bytes asked for
    /// (HTTP error status, wrong Content-Range, …).
    #[error("unexpected answer: {0}")]
    Refused(String),
    /// The source sent bytes that cannot be right (more than promised, a
    /// file hash or size mismatch, undecodable compression): a peer that does
    /// this is reported to the mapper.
    #[error("bad data: {0}")]
    BadData(String),
    /// This backend cannot handle the locator (unknown compression, …).
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl BackendError {
    /// True when the source itself is at fault (not the network).
    pub fn is_bad_data(&self) -> bool {
        matches!(self, BackendError::BadData(_))
    }
}

/// A way to get NAR bytes for some locators.
pub trait Backend: Send + Sync {
    /// The locator schemes this backend serves (`peer`, `file`, `ipfs`, …).
    fn schemes(&self) -> &'static [&'static str];

    /// Whether this backend can fetch from `locator` (a scheme it serves,
    /// and facts it supports, e.g. the compression of a file).
    fn handles(&self, locator: &Locator) -> bool;

    /// How long the source may take to deliver its first byte before the
    /// fetcher starts the next source in parallel (hedging). The stall
    /// limit (no bytes for that long aborts the source) derives from it.
    fn deadline(&self, locator: &Locator) -> Duration;

    /// Start getting the uncompressed NAR of `nar` from `locator`, from
    /// byte `offset` on if the source can seek (see [`Opened::start`]).
    /// Resolves once the source has answered (e.g. HTTP headers), before
    /// the body streams. The stream must end after NarSize − start bytes
    /// at most; the fetcher enforces the size and the hash anyway.
    fn open(
        &self,
        locator: &Locator,
        nar: &NarInfo,
        offset: u64,
    ) -> BoxFuture<'static, Result<Opened, BackendError>>;
}

/// Backends by scheme.
#[derive(Clone, Default)]
pub struct Registry {
    by_scheme: HashMap<&'static str, Arc<dyn Backend>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `backend` for every scheme it names (replacing earlier ones).
    pub fn register(&mut self, backend: Arc<dyn Backend>) {
        for scheme in backend.schemes() {
            self.by_scheme.insert(scheme, backend.clone());
        }
    }

    /// The backend for `locator`, if one is registered and handles it.
    pub fn for_locator(&self, locator: &Locator) -> Option<Arc<dyn Backend>> {
        self.by_scheme
            .get(locator.scheme())
            .filter(|b| b.handles(locator))
            .cloned()
    }
}

/// The publishing side of a network: make a NAR file available there and
/// say how to find it again. The indexer (`distributed-store index`) calls
/// every enabled publisher for each path it indexes and records the returned
/// locators (in the mapper's index and in folder exports), so other nodes can
/// fetch through the matching [`Backend`].
pub trait Publisher: Send + Sync {
    /// The locator scheme this publisher produces (`ipfs`, `btih`, `s3`, …).
    fn scheme(&self) -> &'static str;

    /// Publish the NAR file at `file` (compressed as `facts` says; `facts`
    /// also carries its FileHash and FileSize, always known here) for the
    /// store path of `nar`, and return the locator that fetches it back
    /// (built with [`Locator::other`]). Publishing the same file twice must
    /// be cheap and give the same locator.
    fn publish(
        &self,
        file: std::path::PathBuf,
        facts: ds_core::FileFacts,
        nar: &NarInfo,
    ) -> BoxFuture<'static, Result<Locator, BackendError>>;
}
