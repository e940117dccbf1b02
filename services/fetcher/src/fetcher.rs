//! The fetcher proper: coalesced downloads, the cache, readers, counters.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ds_core::{HashAlgo, Locator, NarInfo};
use ds_runtime::service::Activity;
use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::backend::Registry;
use crate::cache::Cache;
use crate::download::{self, Failure, Source};
use crate::http::{narhash32, FileBackend, PeerBackend};
use crate::reader::{self, Progress, Status};
use ds_runtime::plugins::BackendsSpec;

/// Settings of a fetcher (from the shared config, see
/// [`FetcherConfig::from_config`]).
#[derive(Debug, Clone)]
pub struct FetcherConfig {
    /// `cacheDirectory`.
    pub cache_directory: PathBuf,
    /// `cacheSize` in bytes.
    pub cache_size: u64,
    /// `peerTimeoutMs`: first-byte deadline of a peer.
    pub peer_timeout: Duration,
    /// `upstreamTimeoutMs`: first-byte deadline of an upstream file.
    pub upstream_timeout: Duration,
    /// Lower bound of the stall limit (no bytes for that long aborts a
    /// source; otherwise four times the source's first-byte deadline).
    pub min_stall: Duration,
}

impl FetcherConfig {
    /// The fetcher's part of the shared config.
    pub fn from_config(c: &ds_runtime::Config) -> Self {
        FetcherConfig {
            cache_directory: c.cache_directory.clone(),
            cache_size: c.cache_size,
            peer_timeout: c.peer_timeout,
            upstream_timeout: c.upstream_timeout,
            min_stall: Duration::from_secs(5),
        }
    }
}

/// Where the fetcher tells the mapper what it sees. Calls are fire and
/// forget: a fetch never waits for the mapper.
pub trait MapperLink: Send + Sync {
    /// A peer (base URL) served bad data.
    fn report_bad(&self, peer: &str, reason: &str);
    /// A download of the NAR of store path hash part `hash32` started or ended.
    fn set_fetching(&self, hash32: &str, fetching: bool);
    /// The upstream caches' locators for store path hash part `hash32`
    /// (the mapper's `Lookup(hash, upstream_only)`): the last resort of a
    /// download whose sources all failed. Empty when there are none.
    fn upstream_locators(&self, hash32: &str) -> BoxFuture<'static, Vec<String>>;
}

/// A [`MapperLink`] that tells nobody.
pub struct NoMapper;

impl MapperLink for NoMapper {
    fn report_bad(&self, _peer: &str, _reason: &str) {}
    fn set_fetching(&self, _hash32: &str, _fetching: bool) {}
    fn upstream_locators(&self, _hash32: &str) -> BoxFuture<'static, Vec<String>> {
        Box::pin(async { Vec::new() })
    }
}

/// Why a fetch was refused.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Not cached, not in flight, and nothing to fetch it from.
    #[error("{0}")]
    NotFound(String),
    /// Every source failed, or the bytes failed verification.
    #[error("{0}")]
    Failed(String),
    /// Bad narinfo, locator or offset.
    #[error("{0}")]
    InvalidArgs(String),
}

/// Counters since start.
#[derive(Default)]
pub(crate) struct Stats {
    bytes_fetched: Mutex<HashMap<String, u64>>,
    fetches_failed: AtomicU64,
    verification_failures: AtomicU64,
}

impl Stats {
    pub(crate) fn count_verification_failure(&self) {
        self.verification_failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// A snapshot of the fetcher's state (what the D-Bus properties show).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetcherStatus {
    /// Bytes in the cache.
    pub cache_bytes: u64,
    /// Cache size limit.
    pub cache_max_bytes: u64,
    /// NARs in the cache.
    pub cache_entries: u64,
    /// Downloads in progress.
    pub in_flight: u32,
    /// Bytes received by locator scheme.
    pub bytes_fetched: HashMap<String, u64>,
    /// Downloads that ended without a verified NAR.
    pub fetches_failed: u64,
    /// Sources that served bad bytes (wrong hash, too long, too short).
    pub verification_failures: u64,
}

/// A download in progress, shared by the readers that joined it.
struct Download {
    narinfo_text: String,
    hash32: String,
    nar_size: u64,
    file: Arc<std::fs::File>,
    progress: watch::Receiver<Progress>,
}

pub(crate) struct Inner {
    pub(crate) config: FetcherConfig,
    registry: Registry,
    cache: Mutex<Cache>,
    /// By nix-base32 NarHash.
    inflight: Mutex<HashMap<String, Arc<Download>>>,
    pub(crate) stats: Stats,
    pub(crate) mapper: Arc<dyn MapperLink>,
    activity: Activity,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the whole service down with it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Inner {
    /// Sources for locator strings: those a backend handles (others are
    /// skipped, logged), malformed ones dropped.
    pub(crate) fn sources_for(&self, locators: &[String]) -> Vec<Source> {
        locators
            .iter()
            .filter_map(|l| match Locator::parse(l) {
                Ok(locator) => match self.registry.for_locator(&locator) {
                    Some(backend) => Some(Source { locator, backend }),
                    None => {
                        tracing::debug!(%locator, "no backend for this locator; skipped");
                        None
                    }
                },
                Err(e) => {
                    tracing::warn!("ignoring a locator: {e}");
                    None
                }
            })
            .collect()
    }

    pub(crate) fn count_bytes(&self, scheme: &str, n: u64) {
        *lock(&self.stats.bytes_fetched)
            .entry(scheme.to_string())
            .or_default() += n;
    }
}

/// Gets NARs, verifies them, caches them. Cheap to clone.
#[derive(Clone)]
pub struct Fetcher {
    inner: Arc<Inner>,
}

/// What a fetch hands back: the read end of a pipe carrying the NAR from
/// the requested offset (in blocking mode, ready to pass to another process).
pub type NarPipe = std::os::fd::OwnedFd;

/// The backends of a fetcher: the built-in ones (`peer:`, `lead:`, `file:`)
/// and every one configured in `backends`. Settings were checked when the
/// config was loaded; what can only fail here (an unreadable S3 credentials
/// file) is an error naming the key. A locator whose scheme has no backend
/// here is skipped at fetch time (logged).
pub fn registry(config: &FetcherConfig, backends: &BackendsSpec) -> anyhow::Result<Registry> {
    use anyhow::Context;
    let client = crate::http::client(config.peer_timeout.max(config.upstream_timeout))?;
    let mut registry = Registry::new();
    registry.register(Arc::new(PeerBackend::new(
        client.clone(),
        config.peer_timeout,
        config.upstream_timeout,
    )));
    registry.register(Arc::new(FileBackend::new(
        client.clone(),
        config.upstream_timeout,
    )));
    if let Some(m) = &backends.mirrors {
        let pool = Arc::new(crate::mirrors::MirrorPool::new(m.urls.clone()));
        registry.register(Arc::new(crate::mirrors::MirrorsBackend::new(
            client.clone(),
            pool,
            config.upstream_timeout,
        )));
    }
    if let Some(s3) = &backends.s3 {
        let backend = crate::s3::S3Backend::new(s3, config.upstream_timeout)
            .context("setting up the S3 backend")?;
        registry.register(Arc::new(backend));
    }
    if let Some(c) = &backends.command {
        let deadline = c
            .deadline_ms
            .map(Duration::from_millis)
            .unwrap_or(crate::exec::DEFAULT_DEADLINE);
        registry.register(Arc::new(crate::exec::CommandBackend::new(
            c.command.clone(),
            deadline,
        )));
    }
    if let Some(i) = &backends.ipfs {
        let backend = crate::ipfs::IpfsBackend::new(i).context("setting up the IPFS backend")?;
        registry.register(Arc::new(backend));
    }
    if let Some(b) = &backends.bittorrent {
        let backend = crate::bittorrent::BitTorrentBackend::new(b)
            .context("setting up the BitTorrent backend")?;
        registry.register(Arc::new(backend));
    }
    tracing::info!(
        mirrors = backends.mirrors.is_some(),
        s3 = backends.s3.is_some(),
        command = backends.command.is_some(),
        ipfs = backends.ipfs.is_some(),
        bittorrent = backends.bittorrent.is_some(),
        "backends: peer, lead, file and the configured ones"
    );
    Ok(registry)
}

impl Fetcher {
    /// A fetcher with the built-in backends (`peer:`, `lead:`, `file:`).
    pub fn new(
        config: FetcherConfig,
        mapper: Arc<dyn MapperLink>,
        activity: Activity,
    ) -> anyhow::Result<Fetcher> {
        Self::with_backends(config, &BackendsSpec::default(), mapper, activity)
    }

    /// A fetcher with the built-in backends and those configured in
    /// `backends` (`[backends.*]`, see [`registry`]).
    pub fn with_backends(
        config: FetcherConfig,
        backends: &BackendsSpec,
        mapper: Arc<dyn MapperLink>,
        activity: Activity,
    ) -> anyhow::Result<Fetcher> {
        let registry = registry(&config, backends)?;
        Ok(Self::with_registry(config, registry, mapper, activity)?)
    }

    /// A fetcher with the given backends.
    pub fn with_registry(
        config: FetcherConfig,
        registry: Registry,
        mapper: Arc<dyn MapperLink>,
        activity: Activity,
    ) -> std::io::Result<Fetcher> {
        let cache = Cache::open(&config.cache_directory, config.cache_size)?;
        tracing::info!(
            entries = cache.len(),
            bytes = cache.bytes(),
            "cache {} opened",
            config.cache_directory.display()
        );
        Ok(Fetcher {
            inner: Arc::new(Inner {
                config,
                registry,
                cache: Mutex::new(cache),
                inflight: Mutex::new(HashMap::new()),
                stats: Stats::default(),
                mapper,
                activity,
            }),
        })
    }

    /// Start or join the download of the NAR of `narinfo` (see
    /// `Fetcher1.Fetch`): returns once bytes flow (or the NAR is cached),
    /// with the read end of a pipe carrying the NAR from `offset`.
    pub async fn fetch(
        &self,
        narinfo: &str,
        locators: &[String],
        offset: u64,
    ) -> Result<NarPipe, FetchError> {
        self.open(narinfo, locators, offset, false).await
    }

    /// Like [`Fetcher::fetch`] from byte 0, but the pipe carries nothing
    /// until the whole NAR verified (`Fetcher1.FetchVerified`): what a Nix
    /// client gets, since Nix does not retry a NAR transfer that failed
    /// half-way. A source that lies is then replaced by another before a
    /// byte is passed on; when every source fails, the pipe closes empty.
    pub async fn fetch_verified(
        &self,
        narinfo: &str,
        locators: &[String],
    ) -> Result<NarPipe, FetchError> {
        self.open(narinfo, locators, 0, true).await
    }

    async fn open(
        &self,
        narinfo: &str,
        locators: &[String],
        offset: u64,
        verified_only: bool,
    ) -> Result<NarPipe, FetchError> {
        self.inner.activity.touch();
        let nar = NarInfo::parse(narinfo)
            .map_err(|e| FetchError::InvalidArgs(format!("narinfo: {e}")))?;
        if nar.nar_hash.algo != HashAlgo::Sha256 {
            return Err(FetchError::InvalidArgs(format!(
                "NarHash {} is not sha256",
                nar.nar_hash.to_nix32_string()
            )));
        }
        if offset > nar.nar_size {
            return Err(FetchError::InvalidArgs(format!(
                "offset {offset} is past NarSize {}",
                nar.nar_size
            )));
        }
        let locators = locators
            .iter()
            .map(|l| Locator::parse(l).map_err(|e| FetchError::InvalidArgs(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let sources: Vec<Source> = locators
            .into_iter()
            .filter_map(|locator| match self.inner.registry.for_locator(&locator) {
                Some(backend) => Some(Source { locator, backend }),
                None => {
                    tracing::debug!(%locator, "no backend for this locator; skipped");
                    None
                }
            })
            .collect();
        let key = narhash32(&nar.nar_hash);
        let (file, mut progress) = self.find_or_start(&key, nar, narinfo, sources)?;
        // Wait for the first byte, so that a caller learns of a NAR no
        // source can deliver as an error rather than an empty stream.
        loop {
            let p = progress.borrow_and_update().clone();
            match p.status {
                Status::Failed(why) => return Err(FetchError::Failed(why.to_string())),
                Status::Done => break,
                Status::Running if p.written > 0 => break,
                Status::Running => {}
            }
            if progress.changed().await.is_err() {
                let p = progress.borrow().clone();
                if let Status::Failed(why) = p.status {
                    return Err(FetchError::Failed(why.to_string()));
                }
                break;
            }
        }
        let (tx, rx) = tokio::net::unix::pipe::pipe()
            .map_err(|e| FetchError::Failed(format!("creating a pipe: {e}")))?;
        let fd = rx
            .into_blocking_fd()
            .map_err(|e| FetchError::Failed(format!("creating a pipe: {e}")))?;
        let busy = self.inner.activity.busy();
        let nar_size = file.1;
        tokio::spawn(reader::serve(
            file.0,
            nar_size,
            offset,
            verified_only,
            progress,
            tx,
            busy,
        ));
        Ok(fd)
    }

    /// The cached NAR, the in-flight download, or a new download.
    #[allow(clippy::type_complexity)]
    fn find_or_start(
        &self,
        key: &str,
        nar: NarInfo,
        narinfo_text: &str,
        sources: Vec<Source>,
    ) -> Result<((Arc<std::fs::File>, u64), watch::Receiver<Progress>), FetchError> {
        let mut inflight = lock(&self.inner.inflight);
        if let Some(d) = inflight.get(key) {
            if d.nar_size != nar.nar_size {
                return Err(FetchError::InvalidArgs(format!(
                    "NarSize {} disagrees with the download in flight for this NarHash ({})",
                    nar.nar_size, d.nar_size
                )));
            }
            return Ok(((d.file.clone(), d.nar_size), d.progress.clone()));
        }
        {
            let mut cache = lock(&self.inner.cache);
            if let Some(entry) = cache.touch(key) {
                if entry.size != nar.nar_size {
                    return Err(FetchError::InvalidArgs(format!(
                        "NarSize {} disagrees with the cached NAR of this NarHash ({} bytes)",
                        nar.nar_size, entry.size
                    )));
                }
                match std::fs::File::open(cache.nar_path(key)) {
                    Ok(f) => {
                        // The sender is dropped at once: a cached NAR is final.
                        let (_, rx) = watch::channel(Progress::done(entry.size));
                        return Ok(((Arc::new(f), entry.size), rx));
                    }
                    Err(e) => {
                        tracing::warn!("cached NAR {key} unreadable ({e}); fetching it again")
                    }
                }
            }
        }
        if sources.is_empty() {
            return Err(FetchError::NotFound(format!(
                "{} (NarHash {}) is neither cached nor being fetched, and no locator was given that a backend handles",
                nar.store_path,
                nar.nar_hash.to_nix32_string()
            )));
        }
        let partial = lock(&self.inner.cache).partial_path(key);
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)
            .map_err(|e| FetchError::Failed(format!("creating {}: {e}", partial.display())))?;
        let file = Arc::new(file);
        let (tx, rx) = watch::channel(Progress {
            written: 0,
            generation: 0,
            status: Status::Running,
        });
        let hash32 = nar.store_path.hash().as_str().to_string();
        let download = Arc::new(Download {
            narinfo_text: narinfo_text.to_string(),
            hash32: hash32.clone(),
            nar_size: nar.nar_size,
            file: file.clone(),
            progress: rx.clone(),
        });
        inflight.insert(key.to_string(), download);
        drop(inflight);
        let names: Vec<String> = sources.iter().map(|s| s.locator.to_string()).collect();
        tracing::info!(path = %nar.store_path, nar = key, sources = ?names, "download started");
        let inner = self.inner.clone();
        let key = key.to_string();
        let nar_size = nar.nar_size;
        let text = narinfo_text.to_string();
        let task_file = file.clone();
        tokio::spawn(async move {
            let _busy = inner.activity.busy();
            inner.mapper.set_fetching(&hash32, true);
            let nar = Arc::new(nar);
            let fallback = inner.mapper.upstream_locators(&hash32);
            let result = download::run(&inner, &nar, sources, fallback, &task_file, &tx).await;
            finish(&inner, &key, &nar, &text, &partial, result, &tx);
            inner.mapper.set_fetching(&hash32, false);
        });
        Ok(((file, nar_size), rx))
    }

    /// The narinfo of a NAR held (cached or in flight) for store path hash
    /// part `hash32`.
    pub fn held(&self, hash32: &str) -> Result<String, FetchError> {
        self.inner.activity.touch();
        if let Some(d) = lock(&self.inner.inflight)
            .values()
            .find(|d| d.hash32 == hash32)
        {
            return Ok(d.narinfo_text.clone());
        }
        let path = {
            let mut cache = lock(&self.inner.cache);
            let narhash = cache.narhash_for(hash32).map(str::to_string);
            match narhash {
                Some(n) => {
                    cache.touch(&n);
                    Some(cache.narinfo_path(hash32))
                }
                None => None,
            }
        };
        path.and_then(|p| std::fs::read_to_string(p).ok())
            .ok_or_else(|| FetchError::NotFound(format!("{hash32} is not held by this fetcher")))
    }

    /// Counters and cache state now.
    pub fn status(&self) -> FetcherStatus {
        let (cache_bytes, cache_max_bytes, cache_entries) = {
            let c = lock(&self.inner.cache);
            (c.bytes(), c.max_bytes(), c.len() as u64)
        };
        FetcherStatus {
            cache_bytes,
            cache_max_bytes,
            cache_entries,
            in_flight: lock(&self.inner.inflight).len() as u32,
            bytes_fetched: lock(&self.inner.stats.bytes_fetched).clone(),
            fetches_failed: self.inner.stats.fetches_failed.load(Ordering::Relaxed),
            verification_failures: self
                .inner
                .stats
                .verification_failures
                .load(Ordering::Relaxed),
        }
    }
}

/// Settle a download: cache a verified NAR, or throw the bytes away; take it
/// out of the in-flight table; tell the readers.
fn finish(
    inner: &Inner,
    key: &str,
    nar: &NarInfo,
    narinfo_text: &str,
    partial: &std::path::Path,
    result: Result<(), Failure>,
    tx: &watch::Sender<Progress>,
) {
    match result {
        Ok(()) => {
            {
                let mut cache = lock(&inner.cache);
                match cache.insert(key, nar.nar_size, partial, nar, narinfo_text) {
                    Ok(true) => tracing::info!(path = %nar.store_path, "NAR verified and cached"),
                    Ok(false) => tracing::info!(
                        path = %nar.store_path,
                        "NAR verified; larger than the whole cache, not kept"
                    ),
                    Err(e) => {
                        tracing::warn!(path = %nar.store_path, "NAR verified but not cached: {e}")
                    }
                }
            }
            lock(&inner.inflight).remove(key);
            tx.send_modify(|p| p.status = Status::Done);
        }
        Err(failure) => {
            let why = match failure {
                Failure::Exhausted(why) => format!("every source failed: {why}"),
                Failure::Verification(why) => why,
            };
            tracing::warn!(path = %nar.store_path, "download failed: {why}");
            inner.stats.fetches_failed.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = std::fs::remove_file(partial) {
                tracing::warn!("cannot delete {}: {e}", partial.display());
            }
            lock(&inner.inflight).remove(key);
            tx.send_modify(|p| p.status = Status::Failed(why.into()));
        }
    }
}
