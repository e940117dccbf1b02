//! The mirrors mapper (`[backends.mirrors]` with `lookup`, on by default):
//! asks the HTTP mirrors for `<hash>.narinfo` and answers with `mirror:`
//! locators (`mirror:<URL of the narinfo>#compression=…&fileHash=…&fileSize=…`),
//! which the fetcher's mirrors backend resolves against whichever mirror is
//! healthy at fetch time.
//!
//! Mirrors hold the same files, so one answer is enough: a lookup starts at
//! the next mirror in turn (round-robin) and, when it has not answered
//! within a quarter of the timeout, asks the following one too (hedging);
//! the first trusted narinfo wins. A mirror that fails to answer (transport
//! error, timeout, 5xx, an invalid or untrusted narinfo) is skipped for a
//! backoff period; a 404 is a plain miss.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ds_core::{FileFacts, Locator, NarInfo, PublicKey, StorePathHash};
use ds_runtime::plugins::MirrorsSpec;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};

use crate::http::{fetch_narinfo, QueryError};
use crate::mapper::{MapError, Mapper, Mapping, Scope};

/// How long a mirror that failed to answer is skipped.
pub const BACKOFF: Duration = Duration::from_secs(10);

/// Narinfo lookups on HTTP mirrors.
pub struct MirrorsMapper {
    client: reqwest::Client,
    urls: Vec<String>,
    keys: Vec<PublicKey>,
    timeout: Duration,
    backoff: Duration,
    next: AtomicUsize,
    down_until: Mutex<Vec<Option<Instant>>>,
}

/// The `mirror:` locator of a narinfo, if its `URL:` is relative (an
/// absolute URL names one server, not a path every mirror has).
pub fn mirror_locator(info: &NarInfo) -> Option<Locator> {
    let path = info.url.trim_start_matches('/');
    if path.is_empty() || path.contains("://") || path.contains('#') {
        return None;
    }
    let facts = FileFacts {
        compression: info.compression.clone(),
        file_hash: info.file_hash.clone(),
        file_size: info.file_size,
    };
    Some(Locator::other("mirror", path, &facts))
}

impl MirrorsMapper {
    /// A mapper over the mirrors of `spec`, trusting narinfos signed by one
    /// of `keys`; one mirror's answer is waited for at most `timeout`.
    pub fn new(
        spec: &MirrorsSpec,
        client: reqwest::Client,
        timeout: Duration,
        keys: Vec<PublicKey>,
    ) -> Self {
        Self::with_backoff(spec, client, timeout, keys, BACKOFF)
    }

    /// Like [`MirrorsMapper::new`] with another backoff (tests).
    pub fn with_backoff(
        spec: &MirrorsSpec,
        client: reqwest::Client,
        timeout: Duration,
        keys: Vec<PublicKey>,
        backoff: Duration,
    ) -> Self {
        let urls: Vec<String> = spec
            .urls
            .iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect();
        MirrorsMapper {
            down_until: Mutex::new(vec![None; urls.len()]),
            client,
            urls,
            keys,
            timeout,
            backoff,
            next: AtomicUsize::new(0),
        }
    }

    fn order(&self) -> Vec<usize> {
        let n = self.urls.len();
        if n == 0 {
            return Vec::new();
        }
        let first = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = Instant::now();
        let down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        (0..n)
            .map(|k| (first + k) % n)
            .filter(|&i| down[i].is_none_or(|t| t <= now))
            .collect()
    }

    fn mark(&self, i: usize, failed: bool) {
        let mut down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        down[i] = failed.then(|| Instant::now() + self.backoff);
    }

    /// Mirrors currently skipped (base URLs).
    pub fn skipped(&self) -> Vec<String> {
        let now = Instant::now();
        let down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        down.iter()
            .zip(&self.urls)
            .filter(|(d, _)| d.is_some_and(|t| t > now))
            .map(|(_, u)| u.clone())
            .collect()
    }

    async fn ask(&self, i: usize, hash: &StorePathHash) -> Option<NarInfo> {
        let url = &self.urls[i];
        match fetch_narinfo(&self.client, url, hash, self.timeout, None, &self.keys).await {
            Ok(info) => {
                self.mark(i, false);
                Some(info)
            }
            Err(QueryError::Status(404)) => {
                self.mark(i, false);
                None
            }
            Err(e) => {
                tracing::info!(mirror = %url, %hash, "mirror failed to answer ({e}); skipped for {:?}", self.backoff);
                self.mark(i, true);
                None
            }
        }
    }
}

impl Mapper for MirrorsMapper {
    fn name(&self) -> &str {
        "mirrors"
    }

    fn lookup<'a>(
        &'a self,
        hash: &'a StorePathHash,
        _scope: Scope,
    ) -> BoxFuture<'a, Result<Option<Mapping>, MapError>> {
        Box::pin(async move {
            let hedge = self.timeout / 4;
            let mut order = self.order().into_iter();
            let mut pending = FuturesUnordered::new();
            if let Some(i) = order.next() {
                pending.push(self.ask(i, hash));
            }
            loop {
                if pending.is_empty() {
                    match order.next() {
                        Some(i) => pending.push(self.ask(i, hash)),
                        None => return Ok(None),
                    }
                }
                let next = tokio::time::timeout(hedge, pending.next()).await;
                match next {
                    // No answer yet: ask the next mirror as well.
                    Err(_) => {
                        if let Some(i) = order.next() {
                            pending.push(self.ask(i, hash));
                        }
                    }
                    Ok(Some(Some(mut narinfo))) => {
                        let Some(locator) = mirror_locator(&narinfo) else {
                            continue;
                        };
                        narinfo.retain_trusted_sigs(&self.keys);
                        return Ok(Some(Mapping {
                            narinfo,
                            locators: vec![locator],
                        }));
                    }
                    Ok(Some(None)) | Ok(None) => {}
                }
            }
        })
    }
}
