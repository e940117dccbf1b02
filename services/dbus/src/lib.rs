//! D-Bus API of distributed-store: bus names, object paths, typed errors and
//! client proxies, shared by the services (servers) and their clients.
//!
//! Names are versioned (`…1`): an incompatible change gets a new name.
//! Every service is on the system bus in production and on a private bus
//! with the same policy in tests (`distributed-store up`).

use zbus::proxy;

pub mod peer;
#[cfg(feature = "testing")]
pub mod testing;

/// Signer: bus name, also the interface name.
pub const SIGNER_NAME: &str = "org.distributedstore.Signer1";
/// Signer object path.
pub const SIGNER_PATH: &str = "/org/distributedstore/Signer1";
/// Proxy status: bus name, also the interface name.
pub const PROXY_NAME: &str = "org.distributedstore.Proxy1";
/// Proxy object path.
pub const PROXY_PATH: &str = "/org/distributedstore/Proxy1";

/// Typed errors of `org.distributedstore.Signer1`. On the wire they are
/// `org.distributedstore.Signer1.Error.<Variant>`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.distributedstore.Signer1.Error")]
pub enum SignerError {
    /// Transport-level error (not sent by the service itself).
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The argument is not a store path (`/nix/store/<hash>-<name>`).
    InvalidPath(String),
    /// The path is not valid in the local store: the signer signs only what
    /// this machine has.
    PathNotValid(String),
    /// No private key is configured.
    NoKey(String),
    /// The local store could not be read.
    Store(String),
    /// The path is valid here but this machine did not build it (it was
    /// substituted, imported or added), and the signer is configured to sign
    /// only what it built (`signPaths = "built"`, the default). A normal
    /// answer, not a failure: serve the path with the signatures it has.
    NotBuiltHere(String),
}

/// Client side of `org.distributedstore.Signer1`.
#[proxy(
    interface = "org.distributedstore.Signer1",
    default_service = "org.distributedstore.Signer1",
    default_path = "/org/distributedstore/Signer1"
)]
pub trait Signer1 {
    /// Sign a path valid in the local store. Returns the narinfo `Sig:`
    /// value (`keyname:base64`). The signer computes the fingerprint from
    /// its own store lookup; callers cannot choose what is signed.
    fn sign(&self, store_path: &str) -> Result<String, SignerError>;

    /// Public key in `trusted-public-keys` form (`name:base64`).
    #[zbus(property)]
    fn public_key(&self) -> zbus::Result<String>;

    /// Signatures issued since start.
    #[zbus(property)]
    fn signatures_issued(&self) -> zbus::Result<u64>;

    /// Sign requests refused (invalid or unknown paths) since start.
    #[zbus(property)]
    fn requests_refused(&self) -> zbus::Result<u64>;

    /// Store the signer reads (`local` or `local?root=…`).
    #[zbus(property)]
    fn store(&self) -> zbus::Result<String>;
}

/// Client side of `org.distributedstore.Proxy1` (status, read-only).
#[proxy(
    interface = "org.distributedstore.Proxy1",
    default_service = "org.distributedstore.Proxy1",
    default_path = "/org/distributedstore/Proxy1"
)]
pub trait Proxy1 {
    /// Addresses served, comma-separated (`127.0.0.1:5496`).
    #[zbus(property)]
    fn listen(&self) -> zbus::Result<String>;
    /// Store served.
    #[zbus(property)]
    fn store(&self) -> zbus::Result<String>;
    /// Public key of this node's signer, or empty when unsigned.
    #[zbus(property)]
    fn public_key(&self) -> zbus::Result<String>;
    /// HTTP requests answered since start.
    #[zbus(property)]
    fn requests(&self) -> zbus::Result<u64>;
    /// narinfo requests answered from the local store.
    #[zbus(property)]
    fn narinfo_hits(&self) -> zbus::Result<u64>;
    /// narinfo requests answered from peers or upstream (through the mapper).
    #[zbus(property)]
    fn narinfo_remote(&self) -> zbus::Result<u64>;
    /// narinfo requests answered 404.
    #[zbus(property)]
    fn narinfo_misses(&self) -> zbus::Result<u64>;
    /// NAR bytes sent (after compression).
    #[zbus(property)]
    fn nar_bytes_sent(&self) -> zbus::Result<u64>;
    /// Seconds since the service started.
    #[zbus(property)]
    fn uptime_seconds(&self) -> zbus::Result<u64>;
    /// Crate version.
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
}

/// Mapper: bus name, also the interface name.
pub const MAPPER_NAME: &str = "org.distributedstore.Mapper1";
/// Mapper object path.
pub const MAPPER_PATH: &str = "/org/distributedstore/Mapper1";
/// Fetcher: bus name, also the interface name.
pub const FETCHER_NAME: &str = "org.distributedstore.Fetcher1";
/// Fetcher object path.
pub const FETCHER_PATH: &str = "/org/distributedstore/Fetcher1";

/// Typed errors of `org.distributedstore.Mapper1`
/// (`org.distributedstore.Mapper1.Error.<Variant>` on the wire).
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.distributedstore.Mapper1.Error")]
pub enum MapperError {
    /// Transport-level error (not sent by the service itself).
    #[zbus(error)]
    ZBus(zbus::Error),
    /// No source this node trusts has the path (within the deadline).
    NotFound(String),
    /// An argument is malformed (not a store path hash part, bad peer URL, …).
    InvalidArgs(String),
}

/// One peer as the mapper sees it: `(url, state, source, seconds since the
/// last successful contact or -1 when never, paths it announced)`.
/// `state` is `up`, `down` (unreachable; probed in the background) or
/// `quarantined` (served bad data); `source` is `config` or `mdns`.
pub type PeerStatus = (String, String, String, i64, u64);

/// An announcement: what a node holds, as a change since a version.
/// `(epoch, version, full, added, removed, inflight)`: when `full`, `added`
/// is everything held and the receiver replaces what it knew; `inflight`
/// (always complete) are NARs being fetched right now. Items are store path
/// hash parts.
pub type Announcement = (String, u64, bool, Vec<String>, Vec<String>, Vec<String>);

/// Client side of `org.distributedstore.Mapper1`: the index of where NARs
/// can be had (local store, peers, upstreams).
#[proxy(
    interface = "org.distributedstore.Mapper1",
    default_service = "org.distributedstore.Mapper1",
    default_path = "/org/distributedstore/Mapper1"
)]
pub trait Mapper1 {
    /// Resolve a store path hash part (32 nix-base32 characters) that is
    /// not in the local store: a narinfo carrying a signature this node
    /// trusts (or a CA path), and the locators of its NAR in preference
    /// order (see `ds_core::Locator`). With `upstream_only`, only the
    /// upstream caches are asked and only their files are returned (what a
    /// node chosen to fetch for the fleet uses). Bounded by the configured
    /// deadlines; `NotFound` when no trusted source answers in time.
    fn lookup(&self, hash: &str, upstream_only: bool)
        -> Result<(String, Vec<String>), MapperError>;

    /// Resolve from this node's own index only (folder and command mappers;
    /// never peers, upstreams or remote mappers): what the proxy serves
    /// other nodes at `GET /_ds/v1/lookup/<hash>`. `NotFound` when unknown.
    fn lookup_local(&self, hash: &str) -> Result<(String, Vec<String>), MapperError>;

    /// This node's announcement since `(epoch, since)` (what `GET
    /// /_ds/v1/announce` serves to peers). A different epoch, or a version
    /// too old for the kept change log, gives a full list.
    fn announce(&self, epoch: &str, since: u64) -> Result<Announcement, MapperError>;

    /// The fetcher reports a peer that served bad data (wrong hash, wrong
    /// size, truncated, not a NAR): quarantined for a while.
    fn report_bad(&self, peer: &str, reason: &str) -> Result<(), MapperError>;

    /// The fetcher reports that it started (`true`) or ended (`false`)
    /// fetching the NAR of a store path (hash part): announced to peers.
    fn set_fetching(&self, hash: &str, fetching: bool) -> Result<(), MapperError>;

    /// Paths of the local store in the index.
    #[zbus(property)]
    fn indexed_paths(&self) -> zbus::Result<u64>;
    /// Distinct paths peers announced.
    #[zbus(property)]
    fn peer_paths(&self) -> zbus::Result<u64>;
    /// Peers with their state (see [`PeerStatus`]).
    #[zbus(property)]
    fn peers(&self) -> zbus::Result<Vec<PeerStatus>>;
    /// Unix time of the last successful announcement exchange with any peer (0: never).
    #[zbus(property)]
    fn last_sync(&self) -> zbus::Result<u64>;
    /// Size of the on-disk index in bytes.
    #[zbus(property)]
    fn index_bytes(&self) -> zbus::Result<u64>;
    /// Lookups answered / not found since start.
    #[zbus(property)]
    fn lookups(&self) -> zbus::Result<(u64, u64)>;
}

/// Typed errors of `org.distributedstore.Fetcher1`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.distributedstore.Fetcher1.Error")]
pub enum FetcherError {
    /// Transport-level error (not sent by the service itself).
    #[zbus(error)]
    ZBus(zbus::Error),
    /// Not cached, not being fetched, and no locator to fetch it from.
    NotFound(String),
    /// Every source failed; the message says which and why.
    Failed(String),
    /// An argument is malformed (narinfo, locator, offset past the end).
    InvalidArgs(String),
}

/// Client side of `org.distributedstore.Fetcher1`: gets NARs through the
/// backends, verifies them while they stream, keeps a bounded cache.
#[proxy(
    interface = "org.distributedstore.Fetcher1",
    default_service = "org.distributedstore.Fetcher1",
    default_path = "/org/distributedstore/Fetcher1"
)]
pub trait Fetcher1 {
    /// Start (or join) fetching the NAR of `narinfo` (text, as the mapper
    /// returned it) from `locators` (strings, preference order), and return
    /// the read end of a pipe that carries the uncompressed NAR from byte
    /// `offset` on. The bytes pass through while they download (a joiner
    /// gets the prefix fetched so far first); the writer closes the pipe
    /// early if the NAR fails verification or every source fails, so a
    /// reader that does not get NarSize − offset bytes must treat the NAR as
    /// failed. With no locators, only a cached or in-flight NAR is served
    /// (`NotFound` otherwise): what peers get.
    fn fetch(
        &self,
        narinfo: &str,
        locators: Vec<String>,
        offset: u64,
    ) -> Result<zbus::zvariant::OwnedFd, FetcherError>;

    /// Like `Fetch` from byte 0, but the pipe carries nothing until the
    /// whole NAR verified; if every source fails (or lies), it closes
    /// without a byte. What a Nix client is given: Nix does not retry a NAR
    /// transfer that broke half-way, so a lying source must be replaced by
    /// another before anything reaches it.
    fn fetch_verified(
        &self,
        narinfo: &str,
        locators: Vec<String>,
    ) -> Result<zbus::zvariant::OwnedFd, FetcherError>;

    /// The narinfo of a NAR this fetcher holds in its cache or is fetching
    /// now, for a store path hash part; `NotFound` otherwise.
    fn held(&self, hash: &str) -> Result<String, FetcherError>;

    /// Bytes in the cache.
    #[zbus(property)]
    fn cache_bytes(&self) -> zbus::Result<u64>;
    /// Cache size limit in bytes.
    #[zbus(property)]
    fn cache_max_bytes(&self) -> zbus::Result<u64>;
    /// NARs in the cache.
    #[zbus(property)]
    fn cache_entries(&self) -> zbus::Result<u64>;
    /// NARs being fetched now.
    #[zbus(property)]
    fn in_flight(&self) -> zbus::Result<u32>;
    /// Bytes received from sources since start, by locator scheme
    /// (`peer`, `lead`, `file`, …).
    #[zbus(property)]
    fn bytes_fetched(&self) -> zbus::Result<std::collections::HashMap<String, u64>>;
    /// Fetches that failed on every source since start.
    #[zbus(property)]
    fn fetches_failed(&self) -> zbus::Result<u64>;
    /// Sources that served bytes failing verification since start.
    #[zbus(property)]
    fn verification_failures(&self) -> zbus::Result<u64>;
}
