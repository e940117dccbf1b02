//! `mirror:` locators: a NAR file at a path relative to any of a list of
//! HTTP mirrors (`[backends.mirrors] urls = [...]`), e.g.
//! `mirror:nar/1abc….nar.xz#compression=xz&fileHash=…&fileSize=…`.
//!
//! Each fetch starts at the next mirror (round-robin, to spread the load)
//! and skips mirrors in backoff. A mirror that fails (no answer, an HTTP
//! error, a broken transfer, bad bytes) goes into backoff (doubling from
//! [`MirrorPool::with_backoff`]'s base up to its maximum); once the backoff
//! has passed it is tried again, and one success clears it. Within one
//! fetch a failing mirror hands over to the next one, which continues the
//! file at the byte reached (Range), through [`crate::nar_file`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ds_core::{Locator, NarInfo};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use crate::backend::{Backend, BackendError, ByteStream, Opened};
use crate::http::get_file;
use crate::nar_file::{self, FileBytes, FileSource};

/// Backoff of a mirror after its first failure (doubled per further failure).
pub const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest backoff.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Default)]
struct Health {
    failures: u32,
    down_until: Option<Instant>,
    last_error: Option<String>,
}

/// How one mirror is doing ([`MirrorPool::health`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorHealth {
    /// The mirror's base URL.
    pub url: String,
    /// Failures since its last success.
    pub failures: u32,
    /// Time left before it is tried again (None: in use).
    pub backoff_left: Option<Duration>,
    /// What went wrong last.
    pub last_error: Option<String>,
}

/// The mirrors with their health, shared by every fetch.
pub struct MirrorPool {
    urls: Vec<String>,
    next: AtomicUsize,
    health: Mutex<Vec<Health>>,
    base: Duration,
    max: Duration,
}

impl MirrorPool {
    /// Mirrors at `urls` (base URLs), with the default backoff.
    pub fn new(urls: Vec<String>) -> Self {
        Self::with_backoff(urls, BACKOFF_BASE, BACKOFF_MAX)
    }

    /// Mirrors with a backoff of `base` after a first failure, doubling up
    /// to `max`.
    pub fn with_backoff(urls: Vec<String>, base: Duration, max: Duration) -> Self {
        let urls: Vec<String> = urls
            .into_iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect();
        MirrorPool {
            health: Mutex::new(vec![Health::default(); urls.len()]),
            urls,
            next: AtomicUsize::new(0),
            base,
            max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Health>> {
        // A panic while holding the lock leaves plain counters: still usable.
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The mirrors to try for one fetch, as indices: starting at the next
    /// one in turn, those in backoff left out.
    pub fn order(&self) -> Vec<usize> {
        let n = self.urls.len();
        if n == 0 {
            return Vec::new();
        }
        let first = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = Instant::now();
        let health = self.lock();
        (0..n)
            .map(|k| (first + k) % n)
            .filter(|&i| health[i].down_until.is_none_or(|t| t <= now))
            .collect()
    }

    /// The base URL of mirror `i`.
    pub fn url(&self, i: usize) -> &str {
        &self.urls[i]
    }

    /// Mirror `i` failed: back off.
    pub fn failed(&self, i: usize, why: &str) {
        let mut health = self.lock();
        let h = &mut health[i];
        h.failures = h.failures.saturating_add(1);
        let factor = 1u32 << (h.failures - 1).min(16);
        let backoff = self.base.saturating_mul(factor).min(self.max);
        h.down_until = Some(Instant::now() + backoff);
        h.last_error = Some(why.to_string());
        tracing::info!(mirror = %self.urls[i], failures = h.failures, "mirror failed ({why}); skipped for {backoff:?}");
    }

    /// Mirror `i` delivered a whole file.
    pub fn succeeded(&self, i: usize) {
        let mut health = self.lock();
        health[i] = Health::default();
    }

    /// Every mirror's state, in config order.
    pub fn health(&self) -> Vec<MirrorHealth> {
        let now = Instant::now();
        self.lock()
            .iter()
            .zip(&self.urls)
            .map(|(h, url)| MirrorHealth {
                url: url.clone(),
                failures: h.failures,
                backoff_left: h.down_until.and_then(|t| t.checked_duration_since(now)),
                last_error: h.last_error.clone(),
            })
            .collect()
    }
}

/// Check a `mirror:` path: relative, no `..`, no scheme, nothing odd.
fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains("://")
        && !path.split('/').any(|seg| seg == ".." || seg == ".")
        && !path.contains(|c: char| c.is_whitespace() || c.is_control() || c == '?')
}

/// The backend for `mirror:` locators.
pub struct MirrorsBackend {
    client: reqwest::Client,
    pool: Arc<MirrorPool>,
    deadline: Duration,
}

impl MirrorsBackend {
    /// Fetch through `pool` with `client`; `deadline` is the first-byte
    /// deadline of a fetch (as for upstream files).
    pub fn new(client: reqwest::Client, pool: Arc<MirrorPool>, deadline: Duration) -> Self {
        MirrorsBackend {
            client,
            pool,
            deadline,
        }
    }

    /// The shared pool (health state).
    pub fn pool(&self) -> &Arc<MirrorPool> {
        &self.pool
    }
}

impl Backend for MirrorsBackend {
    fn schemes(&self) -> &'static [&'static str] {
        &["mirror"]
    }

    fn handles(&self, locator: &Locator) -> bool {
        nar_file::handles_file(locator, valid_path)
    }

    fn deadline(&self, _locator: &Locator) -> Duration {
        self.deadline
    }

    fn open(
        &self,
        locator: &Locator,
        _nar: &NarInfo,
        offset: u64,
    ) -> BoxFuture<'static, Result<Opened, BackendError>> {
        let (path, facts) = match nar_file::locator_file(locator, valid_path, "a mirror") {
            Ok(parts) => parts,
            Err(e) => return futures::future::ready(Err(e)).boxed(),
        };
        let order = self.pool.order();
        if order.is_empty() {
            let e = BackendError::Transport("every mirror is in backoff".into());
            return futures::future::ready(Err(e)).boxed();
        }
        let current = Arc::new(AtomicUsize::new(usize::MAX));
        let source = MirrorFile {
            client: self.client.clone(),
            pool: self.pool.clone(),
            path,
            order,
            tried: 0,
            current: current.clone(),
        };
        let pool = self.pool.clone();
        async move {
            let opened = nar_file::nar_from_file(Box::new(source), facts, offset).await?;
            Ok(Opened {
                stream: watch(opened.stream, pool, current),
                start: opened.start,
            })
        }
        .boxed()
    }
}

/// Account the end of a transfer to the mirror that delivered its last
/// bytes: bad data or a transport error that ended it is a failure, a clean
/// end a success (a stream dropped early is neither).
fn watch(stream: ByteStream, pool: Arc<MirrorPool>, current: Arc<AtomicUsize>) -> ByteStream {
    futures::stream::unfold(Some(stream), move |state| {
        let (pool, current) = (pool.clone(), current.clone());
        async move {
            let mut s = state?;
            let i = || current.load(Ordering::SeqCst);
            match s.next().await {
                Some(Ok(b)) => Some((Ok(b), Some(s))),
                Some(Err(e)) => {
                    if i() != usize::MAX && !matches!(e, BackendError::Unsupported(_)) {
                        pool.failed(i(), &e.to_string());
                    }
                    Some((Err(e), None))
                }
                None => {
                    if i() != usize::MAX {
                        pool.succeeded(i());
                    }
                    None
                }
            }
        }
    })
    .boxed()
}

/// One file through the mirrors of one fetch.
struct MirrorFile {
    client: reqwest::Client,
    pool: Arc<MirrorPool>,
    path: String,
    /// Mirrors to try, in order.
    order: Vec<usize>,
    /// How many of `order` were tried.
    tried: usize,
    /// The mirror delivering now (usize::MAX: none yet).
    current: Arc<AtomicUsize>,
}

impl FileSource for MirrorFile {
    fn open_at(&mut self, file_offset: u64) -> BoxFuture<'_, Result<FileBytes, BackendError>> {
        async move {
            // Called again: the transfer from the current mirror broke.
            let cur = self.current.swap(usize::MAX, Ordering::SeqCst);
            if cur != usize::MAX {
                self.pool.failed(cur, "transfer broke");
            }
            let mut last = None;
            while self.tried < self.order.len() {
                let i = self.order[self.tried];
                self.tried += 1;
                let url = format!("{}/{}", self.pool.url(i), self.path);
                match get_file(&self.client, &url, file_offset).await {
                    Ok(got) if got.start == file_offset || file_offset == 0 => {
                        self.current.store(i, Ordering::SeqCst);
                        return Ok(got);
                    }
                    Ok(got) => {
                        let e = BackendError::Refused(format!(
                            "{url}: asked for bytes from {file_offset}, got from {}",
                            got.start
                        ));
                        self.pool.failed(i, &e.to_string());
                        last = Some(e);
                    }
                    Err(e) => {
                        // A 404 is a miss of this mirror, still worth
                        // skipping it for a while: mirrors hold the same files.
                        self.pool.failed(i, &e.to_string());
                        last = Some(e);
                    }
                }
            }
            Err(last.unwrap_or_else(|| {
                BackendError::Transport(format!("{}: no mirror left to try", self.path))
            }))
        }
        .boxed()
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn resumes(&self) -> u32 {
        // One handover per mirror.
        self.order.len() as u32
    }

    fn describe(&self) -> String {
        format!("mirror:{}", self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(valid_path("nar/abc.nar.xz"));
        for p in [
            "",
            "/etc/passwd",
            "../x",
            "nar/../x",
            "http://x/y",
            "a b",
            "a?b",
        ] {
            assert!(!valid_path(p), "{p:?}");
        }
    }

    #[test]
    fn round_robin_and_backoff() {
        let pool = MirrorPool::with_backoff(
            vec!["http://a/".into(), "http://b".into(), "http://c".into()],
            Duration::from_secs(60),
            Duration::from_secs(600),
        );
        assert_eq!(pool.order(), vec![0, 1, 2]);
        assert_eq!(pool.order(), vec![1, 2, 0]);
        pool.failed(1, "x");
        assert_eq!(pool.order(), vec![2, 0]);
        assert_eq!(pool.order(), vec![0, 2]);
        let h = pool.health();
        assert_eq!(h[1].failures, 1);
        assert!(h[1].backoff_left.is_some());
        assert_eq!(h[0].url, "http://a");
        pool.succeeded(1);
        assert_eq!(pool.order(), vec![1, 2, 0]);
    }
}
