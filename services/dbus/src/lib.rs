//! D-Bus API of distributed-store: bus names, object paths, typed errors and
//! client proxies, shared by the services (servers) and their clients.
//!
//! Names are versioned (`…1`): an incompatible change gets a new name.
//! Every service is on the system bus in production and on a private bus
//! with the same policy in tests (`distributed-store up`).

use zbus::proxy;

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
