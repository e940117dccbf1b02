//! What the proxy asks the rest of the suite for paths the local store does
//! not have: the mapper (which narinfo, and where its NAR can be had) and
//! the fetcher (the NAR's bytes, through a pipe it hands over). Both over
//! D-Bus; bulk bytes never travel on the bus.
//!
//! Requests from other distributed-store nodes carry
//! `X-Distributed-Store-Hop`; they are answered only from what this node
//! holds or is fetching (`peer`), or — for the node chosen to fetch a NAR
//! for the fleet — from the upstream caches (`lead`), never from other
//! peers: no relay loops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ds_core::{NarInfo, PublicKey, StorePathHash};
use ds_dbus::{Fetcher1Proxy, FetcherError, Mapper1Proxy, MapperError};
use zbus::proxy::CacheProperties;

/// Request header that marks a request from another distributed-store node.
pub use ds_dbus::peer::HOP_HEADER;

/// Who is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// The local Nix (or any plain client): full resolution.
    Client,
    /// A peer: only what this node holds or is fetching.
    Peer,
    /// A peer that chose this node to fetch from upstream for the fleet.
    Lead,
}

impl Hop {
    /// From the request header (absent: a client; unknown values: a peer,
    /// the most restrictive answer).
    pub fn from_header(v: Option<&[u8]>) -> Hop {
        match v {
            None => Hop::Client,
            Some(b"lead") => Hop::Lead,
            Some(_) => Hop::Peer,
        }
    }
}

/// A path resolved by the mapper: a narinfo this node trusts and the
/// locators of its NAR.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The narinfo as the source signed it (only trusted signatures kept).
    pub narinfo: NarInfo,
    /// Its text, as handed to the fetcher.
    pub text: String,
    /// Locator strings in preference order.
    pub locators: Vec<String>,
}

impl Resolved {
    /// Whether a client must get this NAR only once it verified as a whole:
    /// when it comes from peers. Nix does not retry a NAR transfer that broke
    /// half-way, so a lying peer must be replaced by another source before a
    /// byte reaches the client. Straight from an upstream cache (the trust
    /// root; there is nobody better to ask) it streams through, so that a
    /// large NAR on a slow uplink does not trip Nix's
    /// `stalled-download-timeout` while it downloads.
    pub fn verify_before_serving(&self) -> bool {
        !self
            .locators
            .first()
            .is_some_and(|l| l.starts_with("file:"))
    }
}

/// How long a resolution is reused for the NAR request that follows it.
const RESOLVED_TTL: Duration = Duration::from_secs(600);
/// Bound on remembered resolutions (cleared when full).
const RESOLVED_MAX: usize = 100_000;

/// How long a "not found" from the mapper is reused. The mapper keeps its
/// own misses for 1.5 s; repeating that here saves the D-Bus round trip
/// per request when a client (or an attacker) asks again and again for
/// paths nobody has. A path that appears meanwhile is found at most this
/// much later.
const MISS_TTL: Duration = Duration::from_secs(1);

/// Remembered resolutions: (path, upstream only) → (when, what).
type ResolvedCache = HashMap<(StorePathHash, bool), (Instant, Arc<Resolved>)>;

/// Why a NAR could not be had.
#[derive(Debug)]
pub enum FetchError {
    /// Nobody has it (404).
    NotFound,
    /// Every source failed, or the fetcher is unavailable (503: Nix retries).
    Unavailable(String),
}

/// Client of the mapper and the fetcher.
pub struct Fleet {
    conn: Option<zbus::Connection>,
    trusted: Vec<PublicKey>,
    lookup_deadline: Duration,
    resolved: Mutex<ResolvedCache>,
    missed: Mutex<HashMap<(StorePathHash, bool), Instant>>,
    lookups: tokio::sync::Semaphore,
    opens: tokio::sync::Semaphore,
}

/// Mapper lookups in flight at once, at most (Nix itself uses up to 25
/// connections per substituter).
const MAX_CONCURRENT_LOOKUPS: usize = 64;
/// Fetch calls waiting for their first byte at once, at most: more would
/// exceed dbus-daemon's pending replies per connection (128 on the system
/// bus) and fail; past this they wait their turn here instead.
const MAX_CONCURRENT_OPENS: usize = 64;

impl Fleet {
    /// `trusted`: the keys a narinfo must be signed with to be offered;
    /// `lookup_deadline`: the longest a mapper lookup may take.
    pub fn new(
        conn: Option<zbus::Connection>,
        trusted: Vec<PublicKey>,
        lookup_deadline: Duration,
    ) -> Self {
        Fleet {
            conn,
            trusted,
            lookup_deadline,
            resolved: Mutex::new(HashMap::new()),
            missed: Mutex::new(HashMap::new()),
            lookups: tokio::sync::Semaphore::new(MAX_CONCURRENT_LOOKUPS),
            opens: tokio::sync::Semaphore::new(MAX_CONCURRENT_OPENS),
        }
    }

    /// The D-Bus connection to the suite, if any (the lookup route calls
    /// the mapper's `LookupLocal` on it).
    pub fn connection(&self) -> Option<&zbus::Connection> {
        self.conn.as_ref()
    }

    async fn mapper(&self) -> Option<Mapper1Proxy<'static>> {
        let conn = self.conn.as_ref()?;
        Mapper1Proxy::builder(conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .ok()
    }

    async fn fetcher(&self) -> Option<Fetcher1Proxy<'static>> {
        let conn = self.conn.as_ref()?;
        Fetcher1Proxy::builder(conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .ok()
    }

    /// Check what a service handed us before offering it: it must parse,
    /// be the path asked for, and carry a signature we trust (or be CA).
    fn accept(&self, hash: &StorePathHash, text: &str, locators: Vec<String>) -> Option<Resolved> {
        let mut narinfo = match NarInfo::parse(text) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(%hash, "ignoring a malformed narinfo from the suite: {e}");
                return None;
            }
        };
        if narinfo.store_path.hash() != hash || !narinfo.is_trusted(&self.trusted) {
            tracing::warn!(%hash, "ignoring a narinfo that is not for this path or not trusted");
            return None;
        }
        narinfo.retain_trusted_sigs(&self.trusted);
        Some(Resolved {
            text: narinfo.render(),
            narinfo,
            locators,
        })
    }

    /// Resolve a path the local store lacks. `upstream_only`: what a lead
    /// request may use. `None`: not found (or the mapper is unavailable,
    /// which for Nix is the same: a miss, answered fast).
    pub async fn resolve(
        &self,
        hash: &StorePathHash,
        upstream_only: bool,
    ) -> Option<Arc<Resolved>> {
        let key = (hash.clone(), upstream_only);
        if let Some((at, r)) = self.resolved.lock().ok()?.get(&key) {
            if at.elapsed() < RESOLVED_TTL {
                return Some(r.clone());
            }
        }
        if let Some(at) = self.missed.lock().ok()?.get(&key) {
            if at.elapsed() < MISS_TTL {
                return None;
            }
        }
        // Each lookup may fan out to every peer and upstream: bound how many
        // run at once, so that a client asking for thousands of made-up
        // paths cannot turn this node into an amplifier. (Waiting here is
        // bounded by the lookup deadline of those ahead.)
        let _slot = self.lookups.acquire().await.ok()?;
        let mapper = self.mapper().await?;
        let answer = tokio::time::timeout(
            self.lookup_deadline,
            mapper.lookup(hash.as_str(), upstream_only),
        )
        .await;
        let (text, locators) = match answer {
            Ok(Ok(a)) => a,
            Ok(Err(MapperError::NotFound(_))) => {
                if let Ok(mut m) = self.missed.lock() {
                    if m.len() >= RESOLVED_MAX {
                        m.clear();
                    }
                    m.insert(key, Instant::now());
                }
                return None;
            }
            Ok(Err(e)) => {
                tracing::warn!(%hash, "mapper lookup failed: {e}");
                return None;
            }
            Err(_) => {
                tracing::warn!(%hash, "mapper did not answer within {:?}", self.lookup_deadline);
                return None;
            }
        };
        let r = Arc::new(self.accept(hash, &text, locators)?);
        if let Ok(mut m) = self.resolved.lock() {
            if m.len() >= RESOLVED_MAX {
                m.clear();
            }
            m.insert(key, (Instant::now(), r.clone()));
        }
        Some(r)
    }

    /// The narinfo of a NAR the fetcher holds or is fetching (what peers
    /// may be told about).
    pub async fn held(&self, hash: &StorePathHash) -> Option<Arc<Resolved>> {
        let fetcher = self.fetcher().await?;
        let text =
            match tokio::time::timeout(Duration::from_secs(5), fetcher.held(hash.as_str())).await {
                Ok(Ok(t)) => t,
                Ok(Err(FetcherError::NotFound(_))) => return None,
                Ok(Err(e)) => {
                    tracing::warn!(%hash, "fetcher Held failed: {e}");
                    return None;
                }
                Err(_) => return None,
            };
        self.accept(hash, &text, Vec::new()).map(Arc::new)
    }

    /// Open the NAR of `r` from byte `offset` through the fetcher: a pipe
    /// of uncompressed NAR bytes. With `held_only`, only what the fetcher
    /// holds or is fetching is served (peer requests).
    ///
    /// With `verified`, the pipe carries nothing until the whole NAR
    /// verified (see `Fetcher1.FetchVerified`; `offset` must be 0).
    pub async fn open(
        &self,
        r: &Resolved,
        offset: u64,
        held_only: bool,
        verified: bool,
    ) -> Result<tokio::net::unix::pipe::Receiver, FetchError> {
        let _slot = self
            .opens
            .acquire()
            .await
            .map_err(|_| FetchError::Unavailable("shutting down".into()))?;
        let fetcher = self
            .fetcher()
            .await
            .ok_or_else(|| FetchError::Unavailable("no D-Bus connection to the fetcher".into()))?;
        let locators = if held_only {
            Vec::new()
        } else {
            r.locators.clone()
        };
        // The first bytes may wait on a peer or upstream; the fetcher bounds
        // that with its own deadlines, this only guards against a wedged service.
        let fd = if verified {
            tokio::time::timeout(
                Duration::from_secs(60),
                fetcher.fetch_verified(&r.text, locators),
            )
            .await
        } else {
            tokio::time::timeout(
                Duration::from_secs(60),
                fetcher.fetch(&r.text, locators, offset),
            )
            .await
        };
        let fd = match fd {
            Ok(Ok(fd)) => fd,
            Ok(Err(FetcherError::NotFound(_))) => return Err(FetchError::NotFound),
            Ok(Err(e)) => return Err(FetchError::Unavailable(e.to_string())),
            Err(_) => {
                return Err(FetchError::Unavailable(
                    "fetcher did not answer in 60 s".into(),
                ))
            }
        };
        let fd: std::os::fd::OwnedFd = fd.into();
        tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
            .map_err(|e| FetchError::Unavailable(format!("fetcher handed over a bad fd: {e}")))
    }

    /// This node's announcement since `(epoch, since)`, as the JSON peers read.
    pub async fn announce(&self, epoch: &str, since: u64) -> Option<String> {
        let mapper = self.mapper().await?;
        let (epoch, version, full, added, removed, inflight) = match tokio::time::timeout(
            Duration::from_secs(10),
            mapper.announce(epoch, since),
        )
        .await
        {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                tracing::warn!("mapper Announce failed: {e}");
                return None;
            }
            Err(_) => return None,
        };
        serde_json::to_string(&ds_dbus::peer::AnnounceJson::from((
            epoch, version, full, added, removed, inflight,
        )))
        .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_header() {
        assert_eq!(Hop::from_header(None), Hop::Client);
        assert_eq!(Hop::from_header(Some(b"peer")), Hop::Peer);
        assert_eq!(Hop::from_header(Some(b"lead")), Hop::Lead);
        assert_eq!(Hop::from_header(Some(b"whatever")), Hop::Peer);
    }
}
