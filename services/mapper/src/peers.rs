//! Peers: what each configured peer announced, its state, and the
//! background polling that keeps both current.
//!
//! States: `up` (last poll succeeded), `down` (last poll failed or never
//! succeeded; probed with backoff 0.25 s, 0.5 s, 1 s, … 5 s) and
//! `quarantined` (the fetcher reported bad data: not used as a source and
//! not counted live for rendezvous for [`QUARANTINE`], though still polled).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ds_core::StorePathHash;
use ds_dbus::PeerStatus;

use crate::announce::{AnnounceJson, ANNOUNCE_PATH};
use crate::http::{get_capped, QueryError};
use crate::index::Index;

/// Time between polls of an up peer.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait between probes of a down peer.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// First probe interval of a peer that is down.
pub const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// How long a peer that served bad data is not used.
pub const QUARANTINE: Duration = Duration::from_secs(300);
/// Largest announcement body accepted.
pub const MAX_ANNOUNCE_BYTES: usize = 64 << 20;
/// Most items accepted in one list of an announcement.
pub const MAX_LIST_ITEMS: usize = 2_000_000;

/// A peer's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Answering.
    Up,
    /// Not answering (or never contacted yet).
    Down,
    /// Served bad data recently.
    Quarantined,
}

impl PeerState {
    /// As shown on D-Bus.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Up => "up",
            PeerState::Down => "down",
            PeerState::Quarantined => "quarantined",
        }
    }
}

/// Where a peer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    /// Config `peers`.
    #[default]
    Config,
    /// Found on the LAN with mDNS/DNS-SD (see [`crate::discovery`]).
    Mdns,
}

impl Source {
    /// As shown on D-Bus (the `source` field of the `Peers` property).
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Mdns => "mdns",
        }
    }
}

/// Most peers found by discovery that are kept at once (a noisy or hostile
/// LAN must not make us poll thousands of addresses).
pub const MAX_DISCOVERED: usize = 256;

#[derive(Debug)]
struct Peer {
    epoch: String,
    version: u64,
    held: HashSet<String>,
    inflight: HashSet<String>,
    up: bool,
    last_contact: Option<Instant>,
    quarantined_until: Option<Instant>,
    source: Source,
    /// Which poller owns this entry: a peer dropped and found again gets a
    /// new one, so the old poller stops.
    generation: u64,
    added: Instant,
    /// When its mDNS record went away (discovered peers only).
    gone_since: Option<Instant>,
}

impl Peer {
    fn new(source: Source, generation: u64) -> Self {
        Peer {
            epoch: String::new(),
            version: 0,
            held: HashSet::new(),
            inflight: HashSet::new(),
            up: false,
            last_contact: None,
            quarantined_until: None,
            source,
            generation,
            added: Instant::now(),
            gone_since: None,
        }
    }

    fn state(&self, now: Instant) -> PeerState {
        if self.quarantined_until.is_some_and(|t| t > now) {
            PeerState::Quarantined
        } else if self.up {
            PeerState::Up
        } else {
            PeerState::Down
        }
    }
}

/// What [`Peers::add_discovered`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// A new peer: start a poller with this generation.
    New(u64),
    /// Already known (configured, or discovered before): nothing to start.
    Known,
    /// Ourselves (by epoch).
    OurEpoch,
    /// [`MAX_DISCOVERED`] reached: ignored.
    Full,
}

type Restored = HashMap<String, (String, u64, HashSet<String>)>;

#[derive(Debug, Default)]
struct Inner {
    /// Every peer in display order: configured first, then discovered.
    order: Vec<String>,
    map: HashMap<String, Peer>,
    /// Persisted announcements of peers not (yet) present: a peer that is
    /// discovered again after a restart continues with a delta.
    restored: Restored,
    next_generation: u64,
}

/// All peers: the configured ones (fixed) and those discovery found.
#[derive(Debug)]
pub struct Peers {
    urls: Vec<String>,
    self_epoch: String,
    inner: Mutex<Inner>,
    last_sync: AtomicU64,
}

/// Normalise a peer URL as config does (no trailing slash).
pub fn normalise(url: &str) -> String {
    url.trim_end_matches('/').to_string()
}

/// Check an announcement from a peer we asked with `(epoch, since)`.
pub fn validate(a: &AnnounceJson, epoch: &str, since: u64) -> Result<(), String> {
    if a.epoch.is_empty()
        || a.epoch.len() > 128
        || !a
            .epoch
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "bad epoch {:?}",
            a.epoch.chars().take(40).collect::<String>()
        ));
    }
    if !a.full && (a.epoch != epoch || a.version < since) {
        return Err(format!(
            "a delta for epoch {} version {} when asked since {epoch} version {since}",
            a.epoch, a.version
        ));
    }
    for (name, list) in [
        ("added", &a.added),
        ("removed", &a.removed),
        ("inflight", &a.inflight),
    ] {
        if list.len() > MAX_LIST_ITEMS {
            return Err(format!("{name}: more than {MAX_LIST_ITEMS} items"));
        }
        if let Some(bad) = list.iter().find(|h| StorePathHash::parse(h).is_err()) {
            let bad: String = bad.chars().take(40).collect();
            return Err(format!("{name}: {bad:?} is not a store path hash part"));
        }
    }
    Ok(())
}

impl Peers {
    /// `urls` from config; `restored` from the index (epoch, version, holdings).
    pub fn new(urls: &[String], self_epoch: &str, mut restored: Restored) -> Self {
        let mut urls: Vec<String> = urls.iter().map(|u| normalise(u)).collect();
        let mut seen = HashSet::new();
        urls.retain(|u| seen.insert(u.clone()));
        let map = urls
            .iter()
            .map(|u| {
                let mut p = Peer::new(Source::Config, 0);
                if let Some((epoch, version, held)) = restored.remove(u) {
                    p.epoch = epoch;
                    p.version = version;
                    p.held = held;
                }
                (u.clone(), p)
            })
            .collect();
        Peers {
            inner: Mutex::new(Inner {
                order: urls.clone(),
                map,
                restored,
                next_generation: 1,
            }),
            urls,
            self_epoch: self_epoch.to_string(),
            last_sync: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Configured peer URLs.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Every peer URL now (configured, then discovered).
    pub fn all_urls(&self) -> Vec<String> {
        self.lock().order.clone()
    }

    /// The known peer URL matching `url` (trailing slash ignored).
    pub fn find(&self, url: &str) -> Option<String> {
        let n = normalise(url);
        self.lock().map.contains_key(&n).then_some(n)
    }

    /// A peer's state now.
    pub fn state(&self, url: &str) -> Option<PeerState> {
        let now = Instant::now();
        self.lock().map.get(url).map(|p| p.state(now))
    }

    /// Where a peer came from.
    pub fn source(&self, url: &str) -> Option<Source> {
        self.lock().map.get(url).map(|p| p.source)
    }

    /// The generation of a peer's entry (0 for configured peers); `None`
    /// once it is dropped. A poller stops when this is no longer its own.
    pub fn generation(&self, url: &str) -> Option<u64> {
        self.lock().map.get(url).map(|p| p.generation)
    }

    /// Add a peer found on the LAN as `url` announcing node id `id`.
    /// A URL that is configured stays "config"; one seen again is un-marked
    /// gone.
    pub fn add_discovered(&self, url: &str, id: &str) -> Added {
        if id == self.self_epoch {
            return Added::OurEpoch;
        }
        let url = normalise(url);
        let mut inner = self.lock();
        if let Some(p) = inner.map.get_mut(&url) {
            p.gone_since = None;
            return Added::Known;
        }
        let discovered = inner
            .map
            .values()
            .filter(|p| p.source == Source::Mdns)
            .count();
        if discovered >= MAX_DISCOVERED {
            return Added::Full;
        }
        let generation = inner.next_generation;
        inner.next_generation += 1;
        let mut p = Peer::new(Source::Mdns, generation);
        if let Some((epoch, version, held)) = inner.restored.remove(&url) {
            p.epoch = epoch;
            p.version = version;
            p.held = held;
        }
        inner.order.push(url.clone());
        inner.map.insert(url, p);
        Added::New(generation)
    }

    /// The mDNS record of a discovered peer went away: it is dropped by
    /// [`Peers::reap`] once it is also not up (a peer that still answers
    /// is kept; its record may just have expired early).
    pub fn mark_gone(&self, url: &str) {
        let mut inner = self.lock();
        if let Some(p) = inner.map.get_mut(url) {
            if p.source == Source::Mdns && p.gone_since.is_none() {
                p.gone_since = Some(Instant::now());
            }
        }
    }

    /// Drop discovered peers that are gone and not up, that have not
    /// answered for `down_for`, or whose epoch is that of a configured peer
    /// (the same node under another address). Returns the dropped URLs.
    pub fn reap(&self, down_for: Duration) -> Vec<String> {
        let now = Instant::now();
        let mut inner = self.lock();
        let configured: HashSet<String> = inner
            .map
            .values()
            .filter(|p| p.source == Source::Config && !p.epoch.is_empty())
            .map(|p| p.epoch.clone())
            .collect();
        let drop: Vec<String> = inner
            .map
            .iter()
            .filter(|(_, p)| p.source == Source::Mdns)
            .filter(|(_, p)| {
                let silent_since = p.last_contact.unwrap_or(p.added);
                (!p.up && (p.gone_since.is_some() || now.duration_since(silent_since) >= down_for))
                    || (!p.epoch.is_empty() && configured.contains(&p.epoch))
            })
            .map(|(u, _)| u.clone())
            .collect();
        for u in &drop {
            inner.map.remove(u);
        }
        inner.order.retain(|u| !drop.contains(u));
        drop
    }

    /// What to ask a peer for next: `(its epoch as we know it, version)`.
    pub fn cursor(&self, url: &str) -> (String, u64) {
        self.lock()
            .map
            .get(url)
            .map(|p| (p.epoch.clone(), p.version))
            .unwrap_or_default()
    }

    /// Status for D-Bus: configured peers in config order, then discovered.
    pub fn status(&self) -> Vec<PeerStatus> {
        let now = Instant::now();
        let inner = self.lock();
        inner
            .order
            .iter()
            .filter_map(|u| {
                let p = inner.map.get(u)?;
                let ago = p
                    .last_contact
                    .map(|t| now.duration_since(t).as_secs() as i64)
                    .unwrap_or(-1);
                Some((
                    u.clone(),
                    p.state(now).as_str().to_string(),
                    p.source.as_str().to_string(),
                    ago,
                    p.held.len() as u64,
                ))
            })
            .collect()
    }

    /// Live peers (up, not quarantined, epoch known and not ours): `(url, epoch)`.
    /// One URL per epoch (the first in order), so a node reachable under two
    /// addresses counts once for rendezvous.
    pub fn live(&self) -> Vec<(String, String)> {
        let now = Instant::now();
        let inner = self.lock();
        let mut epochs = HashSet::new();
        inner
            .order
            .iter()
            .filter_map(|u| {
                let p = inner.map.get(u)?;
                (p.state(now) == PeerState::Up
                    && !p.epoch.is_empty()
                    && p.epoch != self.self_epoch
                    && epochs.insert(p.epoch.clone()))
                .then(|| (u.clone(), p.epoch.clone()))
            })
            .collect()
    }

    /// Live peers that announced `hash`: `(holding it, fetching it now)`.
    pub fn holders(&self, hash: &str) -> (Vec<String>, Vec<String>) {
        let now = Instant::now();
        let inner = self.lock();
        let mut held = Vec::new();
        let mut inflight = Vec::new();
        for u in &inner.order {
            let Some(p) = inner.map.get(u) else { continue };
            if p.state(now) != PeerState::Up || p.epoch == self.self_epoch {
                continue;
            }
            if p.held.contains(hash) {
                held.push(u.clone());
            } else if p.inflight.contains(hash) {
                inflight.push(u.clone());
            }
        }
        (held, inflight)
    }

    /// Distinct hash parts announced by peers.
    pub fn distinct_paths(&self) -> u64 {
        let inner = self.lock();
        let mut all: HashSet<&str> = HashSet::new();
        for p in inner.map.values() {
            all.extend(p.held.iter().map(String::as_str));
        }
        all.len() as u64
    }

    /// Unix time of the last successful poll of any peer (0: never).
    pub fn last_sync(&self) -> u64 {
        self.last_sync.load(Ordering::Relaxed)
    }

    /// Mark a peer down; returns whether it was up before.
    pub fn mark_down(&self, url: &str) -> bool {
        let mut inner = self.lock();
        match inner.map.get_mut(url) {
            Some(p) => std::mem::replace(&mut p.up, false),
            None => false,
        }
    }

    /// Quarantine a peer for [`QUARANTINE`]; false for an unknown peer.
    pub fn quarantine(&self, url: &str) -> bool {
        self.quarantine_for(url, QUARANTINE)
    }

    /// Quarantine for `d` (tests use short ones).
    pub fn quarantine_for(&self, url: &str, d: Duration) -> bool {
        let mut inner = self.lock();
        match inner.map.get_mut(url) {
            Some(p) => {
                p.quarantined_until = Some(Instant::now() + d);
                true
            }
            None => false,
        }
    }

    /// Apply a validated announcement; the peer is up.
    pub fn apply(&self, url: &str, a: &AnnounceJson) {
        let mut inner = self.lock();
        let Some(p) = inner.map.get_mut(url) else {
            return;
        };
        if a.full {
            p.held = a.added.iter().cloned().collect();
        } else {
            for r in &a.removed {
                p.held.remove(r);
            }
            p.held.extend(a.added.iter().cloned());
        }
        p.inflight = a.inflight.iter().cloned().collect();
        p.epoch = a.epoch.clone();
        p.version = a.version;
        p.up = true;
        p.last_contact = Some(Instant::now());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.last_sync.store(now, Ordering::Relaxed);
    }
}

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// The request failed.
    #[error("{0}")]
    Query(#[from] QueryError),
    /// Not a valid announcement.
    #[error("bad announcement: {0}")]
    Invalid(String),
}

/// One poll of `url`: ask for changes since what we know, check, persist
/// and apply them.
pub async fn poll_once(
    client: &reqwest::Client,
    peers: &Peers,
    index: &Arc<Index>,
    url: &str,
    timeout: Duration,
) -> Result<(), PollError> {
    let (epoch, since) = peers.cursor(url);
    let q = format!("{url}{ANNOUNCE_PATH}?epoch={epoch}&since={since}");
    let (status, body) = get_capped(client, &q, timeout, MAX_ANNOUNCE_BYTES, Some("peer")).await?;
    if status != 200 {
        return Err(QueryError::Status(status).into());
    }
    let a: AnnounceJson =
        serde_json::from_slice(&body).map_err(|e| PollError::Invalid(e.to_string()))?;
    validate(&a, &epoch, since).map_err(PollError::Invalid)?;
    let unchanged = !a.full && a.added.is_empty() && a.removed.is_empty() && a.version == since;
    if !unchanged {
        let index = index.clone();
        let (u, e, v, full) = (url.to_string(), a.epoch.clone(), a.version, a.full);
        let (added, removed) = (a.added.clone(), a.removed.clone());
        let saved = tokio::task::spawn_blocking(move || {
            index.apply_peer(&u, &e, v, full, &added, &removed)
        })
        .await;
        match saved {
            Ok(Ok(())) => {}
            // Memory stays right; a restart then asks for a full list.
            Ok(Err(e)) => tracing::warn!(peer = url, "persisting announcement: {e}"),
            Err(e) => tracing::warn!(peer = url, "persisting announcement: {e}"),
        }
    }
    peers.apply(url, &a);
    Ok(())
}

/// Poll a configured peer for as long as the runtime lives (see
/// [`poll_peer`]).
pub async fn poll_loop(
    client: reqwest::Client,
    peers: Arc<Peers>,
    index: Arc<Index>,
    url: String,
    timeout: Duration,
) {
    poll_peer(client, peers, index, url, 0, timeout).await
}

/// Poll `url` every [`POLL_INTERVAL`] while up; on failure mark it down at
/// once and probe with backoff. Returns when the peer's entry is dropped or
/// is no longer of `generation` (a discovered peer that went away).
pub async fn poll_peer(
    client: reqwest::Client,
    peers: Arc<Peers>,
    index: Arc<Index>,
    url: String,
    generation: u64,
    timeout: Duration,
) {
    // Short first probes: nodes of a fleet often start together, and a peer
    // not yet seen is left out of the rendezvous order (a second upstream
    // download) until it is.
    let mut backoff = MIN_BACKOFF;
    while peers.generation(&url) == Some(generation) {
        match poll_once(&client, &peers, &index, &url, timeout).await {
            Ok(()) => {
                if backoff > MIN_BACKOFF {
                    tracing::info!(peer = %url, "peer is up");
                }
                backoff = MIN_BACKOFF;
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            Err(e) => {
                if peers.mark_down(&url) {
                    tracing::warn!(peer = %url, "peer is down: {e}");
                } else {
                    tracing::debug!(peer = %url, "peer still down: {e}");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    tracing::debug!(peer = %url, "peer dropped; not polling it any more");
}
