//! The D-Bus object `org.distributedstore.Mapper1` and the start-up that
//! wires index, peers, mappers and background tasks together.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ds_core::StorePathHash;
use ds_dbus::{Announcement, MapperError, PeerStatus};
use ds_runtime::service::Activity;
use ds_runtime::Config;
use ds_store::LocalStore;
use zbus::interface;

use crate::announce::{AnnounceJson, DEFAULT_LOG_ENTRIES};
use crate::discovery::Discovery;
use crate::fleet::{FleetMapper, PeerMapper};
use crate::index::{Index, IndexError};
use crate::local::LocalPaths;
use crate::mapper::{Mapper, Ordered, Scope};
use crate::peers::{poll_loop, Peers};
use crate::upstream::UpstreamMapper;

/// How long a found answer is reused.
pub const POSITIVE_TTL: Duration = Duration::from_secs(60);
/// How long a miss is reused (a burst of Nix queries must not fan out
/// repeatedly, but a path a peer gains shows up quickly).
pub const NEGATIVE_TTL: Duration = Duration::from_millis(1500);
/// How long a `SetFetching(true)` counts without a `false`.
pub const INFLIGHT_TTL: Duration = Duration::from_secs(600);
/// Interval of the incremental local-store scan.
pub const LOCAL_SCAN_INTERVAL: Duration = Duration::from_secs(1);
const CACHE_MAX: usize = 20_000;

type Answer = Result<(String, Vec<String>), String>;

/// The mapper service: index, peers, the mapper stack, counters.
pub struct MapperService {
    local: Arc<LocalPaths>,
    peers: Arc<Peers>,
    index: Arc<Index>,
    mapper: Arc<dyn Mapper>,
    local_mapper: Arc<dyn Mapper>,
    inflight: Mutex<HashMap<String, Instant>>,
    cache: Mutex<HashMap<(String, bool), (Instant, Answer)>>,
    found: AtomicU64,
    not_found: AtomicU64,
    activity: Activity,
}

impl MapperService {
    /// Open the index in `config.state_directory` and build the mappers;
    /// no background task yet (see [`MapperService::spawn_tasks`]).
    pub fn open(config: &Config, activity: Activity) -> Result<Arc<Self>, IndexError> {
        let (index, mut loaded) = Index::open(&config.state_directory)?;
        let index = Arc::new(index);
        let local = Arc::new(LocalPaths::new(
            index.clone(),
            &mut loaded,
            DEFAULT_LOG_ENTRIES,
        ));
        let peers = Arc::new(Peers::new(
            &config.peers,
            local.epoch(),
            std::mem::take(&mut loaded.peers),
        ));
        let client = crate::http::client();
        let keys = config.trusted_keys();
        let upstream = Arc::new(UpstreamMapper::new(
            client.clone(),
            config.upstreams.iter().map(|u| u.url.clone()).collect(),
            keys.clone(),
            config.upstream_timeout,
        ));
        let peer_mapper = Arc::new(PeerMapper::new(
            client,
            peers.clone(),
            keys,
            config.peer_timeout,
        ));
        let fleet_deadline = config.peer_timeout.max(config.upstream_timeout);
        let fleet = Arc::new(FleetMapper::new(
            local.epoch().to_string(),
            peers.clone(),
            peer_mapper,
            upstream,
            fleet_deadline,
        ));
        let stacks = crate::stack::build(config, fleet, fleet_deadline);
        Ok(Arc::new(
            Self::with_mapper(local, peers, index, Arc::new(stacks.full), activity)
                .with_local_mapper(Arc::new(stacks.local)),
        ))
    }

    /// Replace the mapper that answers [`MapperService::resolve_local`]
    /// (the HTTP lookup route): folder and command mappers only.
    pub fn with_local_mapper(mut self, mapper: Arc<dyn Mapper>) -> Self {
        self.local_mapper = mapper;
        self
    }

    /// Lookup from this node's own index only (folder and command mappers;
    /// no peers, no upstreams, no remote mappers), for the read-only HTTP
    /// lookup route: a node asked by another never fans out, so mappers
    /// that list each other cannot loop. Not cached (these are local reads).
    pub async fn resolve_local(&self, hash: &str) -> Result<(String, Vec<String>), MapperError> {
        let _busy = self.activity.busy();
        let parsed = StorePathHash::parse(hash)
            .map_err(|e| MapperError::InvalidArgs(format!("{hash:?}: {e}")))?;
        match self.local_mapper.lookup(&parsed, Scope::Fleet).await {
            Ok(Some(m)) => Ok((
                m.narinfo.render(),
                m.locators.iter().map(|l| l.to_string()).collect(),
            )),
            Ok(None) => Err(MapperError::NotFound(format!(
                "this node's index does not have {hash}"
            ))),
            Err(e) => Err(MapperError::NotFound(format!("{hash}: {e}"))),
        }
    }

    /// Assemble from parts (tests, or a caller with its own mapper stack).
    pub fn with_mapper(
        local: Arc<LocalPaths>,
        peers: Arc<Peers>,
        index: Arc<Index>,
        mapper: Arc<dyn Mapper>,
        activity: Activity,
    ) -> Self {
        MapperService {
            local,
            peers,
            index,
            mapper,
            local_mapper: Arc::new(Ordered::new()),
            inflight: Mutex::new(HashMap::new()),
            cache: Mutex::new(HashMap::new()),
            found: AtomicU64::new(0),
            not_found: AtomicU64::new(0),
            activity,
        }
    }

    /// The local paths (epoch, count, announcements).
    pub fn local(&self) -> &Arc<LocalPaths> {
        &self.local
    }

    /// The peers.
    pub fn peers(&self) -> &Arc<Peers> {
        &self.peers
    }

    /// Start the background work: the local-store scan (a full one for a
    /// fresh index, then every second an incremental one) when a store is
    /// given, and one poller per configured peer (discovered ones get theirs
    /// from [`MapperService::start_discovery`]). They run as long as the runtime.
    pub fn spawn_tasks(
        &self,
        store: Option<Arc<LocalStore>>,
        peer_timeout: Duration,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        if let Some(store) = store {
            let local = self.local.clone();
            tasks.push(tokio::spawn(async move {
                // An empty store looks "fresh" on every round: log the scan once.
                let mut first = true;
                loop {
                    let (l, s) = (local.clone(), store.clone());
                    let started = Instant::now();
                    let result = tokio::task::spawn_blocking(move || l.update(&s)).await;
                    let logged_full = std::mem::replace(&mut first, false);
                    match result {
                        Ok(Ok(st)) if st.full && logged_full => tracing::info!(
                            paths = st.added,
                            "indexed the local store in {:?}",
                            started.elapsed()
                        ),
                        Ok(Ok(st)) if st.full || st.added + st.removed > 0 => tracing::debug!(
                            added = st.added,
                            removed = st.removed,
                            "local store changed"
                        ),
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::warn!("updating the local index: {e}"),
                        Err(e) => tracing::warn!("local index task: {e}"),
                    }
                    tokio::time::sleep(LOCAL_SCAN_INTERVAL).await;
                }
            }));
        }
        let client = crate::http::client();
        for url in self.peers.urls() {
            tasks.push(tokio::spawn(poll_loop(
                client.clone(),
                self.peers.clone(),
                self.index.clone(),
                url.clone(),
                peer_timeout,
            )));
        }
        tasks
    }

    /// Start LAN discovery when config `discovery` is on: advertise this
    /// node at the proxy's `listen` port and poll every peer found. `None`
    /// when it is off (then no mDNS socket is opened) or could not start
    /// (logged; configured peers still work).
    pub fn start_discovery(&self, config: &Config) -> Option<Discovery> {
        if !config.discovery {
            tracing::info!("discovery is off: peers come from config only");
            return None;
        }
        match Discovery::start(
            config.listen,
            self.local.epoch(),
            self.peers.clone(),
            self.index.clone(),
            config.peer_timeout,
        ) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::error!("discovery not started: {e}");
                None
            }
        }
    }

    /// Lookup as the D-Bus method does (with the short-lived cache).
    pub async fn resolve(
        &self,
        hash: &str,
        upstream_only: bool,
    ) -> Result<(String, Vec<String>), MapperError> {
        let _busy = self.activity.busy();
        let parsed = StorePathHash::parse(hash)
            .map_err(|e| MapperError::InvalidArgs(format!("{hash:?}: {e}")))?;
        let key = (hash.to_string(), upstream_only);
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .get(&key)
                .filter(|(until, _)| *until > Instant::now())
                .map(|(_, a)| a.clone())
        };
        let answer = match cached {
            Some(a) => a,
            None => {
                let scope = if upstream_only {
                    Scope::Upstream
                } else {
                    Scope::Fleet
                };
                let answer: Answer = match self.mapper.lookup(&parsed, scope).await {
                    Ok(Some(m)) => Ok((
                        m.narinfo.render(),
                        m.locators.iter().map(|l| l.to_string()).collect(),
                    )),
                    Ok(None) => Err(format!("no trusted source has {hash}")),
                    Err(e) => Err(format!("{hash}: {e}")),
                };
                let ttl = if answer.is_ok() {
                    POSITIVE_TTL
                } else {
                    NEGATIVE_TTL
                };
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= CACHE_MAX {
                    let now = Instant::now();
                    cache.retain(|_, (until, _)| *until > now);
                    if cache.len() >= CACHE_MAX {
                        cache.clear();
                    }
                }
                cache.insert(key, (Instant::now() + ttl, answer.clone()));
                answer
            }
        };
        match answer {
            Ok(a) => {
                self.found.fetch_add(1, Ordering::Relaxed);
                Ok(a)
            }
            Err(e) => {
                self.not_found.fetch_add(1, Ordering::Relaxed);
                Err(MapperError::NotFound(e))
            }
        }
    }

    /// Hash parts reported in flight (expired ones dropped).
    pub fn inflight(&self) -> Vec<String> {
        let now = Instant::now();
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, since| now.duration_since(*since) < INFLIGHT_TTL);
        map.keys().cloned().collect()
    }

    /// The announcement for `(epoch, since)`.
    pub fn announcement(&self, epoch: &str, since: u64) -> AnnounceJson {
        self.local.announce(epoch, since, self.inflight())
    }
}

/// The D-Bus object: a handle on the shared [`MapperService`] (zbus takes
/// the object by value; the service is also used by the background tasks).
pub struct DbusObject(pub Arc<MapperService>);

#[interface(name = "org.distributedstore.Mapper1")]
impl DbusObject {
    /// Resolve a hash part not in the local store: narinfo and locators.
    async fn lookup(
        &self,
        hash: &str,
        upstream_only: bool,
    ) -> Result<(String, Vec<String>), MapperError> {
        self.0.resolve(hash, upstream_only).await
    }

    /// Resolve from this node's own index only (folder and command
    /// mappers): what `GET /_ds/v1/lookup/<hash>` serves to other nodes.
    async fn lookup_local(&self, hash: &str) -> Result<(String, Vec<String>), MapperError> {
        self.0.resolve_local(hash).await
    }

    /// This node's announcement since `(epoch, since)`.
    async fn announce(&self, epoch: &str, since: u64) -> Result<Announcement, MapperError> {
        self.0.activity.touch();
        Ok(self.0.announcement(epoch, since).into())
    }

    /// A peer served bad data: quarantine it.
    async fn report_bad(&self, peer: &str, reason: &str) -> Result<(), MapperError> {
        self.0.activity.touch();
        let url = self
            .0
            .peers
            .find(peer)
            .ok_or_else(|| MapperError::InvalidArgs(format!("{peer:?} is not a known peer")))?;
        self.0.peers.quarantine(&url);
        // Answers naming the peer must not be reused.
        self.0
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        tracing::warn!(peer = %url, reason, "peer quarantined for {:?}", crate::peers::QUARANTINE);
        Ok(())
    }

    /// The fetcher started or ended fetching a NAR (announced as in flight).
    async fn set_fetching(&self, hash: &str, fetching: bool) -> Result<(), MapperError> {
        self.0.activity.touch();
        StorePathHash::parse(hash)
            .map_err(|e| MapperError::InvalidArgs(format!("{hash:?}: {e}")))?;
        let mut map = self.0.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if fetching {
            map.insert(hash.to_string(), Instant::now());
        } else {
            map.remove(hash);
        }
        Ok(())
    }

    /// Paths of the local store in the index.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn indexed_paths(&self) -> u64 {
        self.0.local.len() as u64
    }

    /// Distinct paths peers announced.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn peer_paths(&self) -> u64 {
        self.0.peers.distinct_paths()
    }

    /// Peers with their state.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn peers(&self) -> Vec<PeerStatus> {
        self.0.peers.status()
    }

    /// Unix time of the last successful announcement exchange (0: never).
    #[zbus(property(emits_changed_signal = "false"))]
    async fn last_sync(&self) -> u64 {
        self.0.peers.last_sync()
    }

    /// Size of the index file.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn index_bytes(&self) -> u64 {
        self.0.index.file_bytes()
    }

    /// Lookups answered / not found since start.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn lookups(&self) -> (u64, u64) {
        (
            self.0.found.load(Ordering::Relaxed),
            self.0.not_found.load(Ordering::Relaxed),
        )
    }
}
