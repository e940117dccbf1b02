//! `org.distributedstore.Proxy1`: read-only status for `busctl` and
//! `distributed-store status`.

use std::sync::Arc;
use std::time::Instant;

use zbus::interface;

use crate::metrics::Metrics;
use crate::signing::SignerClient;

/// The D-Bus object.
pub struct Status {
    /// The counters (Prometheus), read, never kept twice.
    pub metrics: Arc<Metrics>,
    /// Listening addresses.
    pub listen: String,
    /// Store served.
    pub store: String,
    /// For the public key.
    pub signer: Arc<SignerClient>,
    /// Start time.
    pub started: Instant,
}

#[interface(name = "org.distributedstore.Proxy1")]
impl Status {
    /// Addresses served.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn listen(&self) -> String {
        self.listen.clone()
    }
    /// Store served.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn store(&self) -> String {
        self.store.clone()
    }
    /// This node's public key (asks the signer; empty without a key).
    #[zbus(property(emits_changed_signal = "false"))]
    async fn public_key(&self) -> String {
        self.signer.public_key().await.unwrap_or_default()
    }
    /// HTTP requests answered.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn requests(&self) -> u64 {
        self.metrics.requests_answered.get()
    }
    /// narinfo answered from the local store.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn narinfo_hits(&self) -> u64 {
        self.metrics.narinfo_hits.get()
    }
    /// narinfo answered from peers or upstream (through the mapper).
    #[zbus(property(emits_changed_signal = "false"))]
    async fn narinfo_remote(&self) -> u64 {
        self.metrics.narinfo_remote.get()
    }
    /// narinfo answered 404.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn narinfo_misses(&self) -> u64 {
        self.metrics.narinfo_misses.get()
    }
    /// NAR bytes sent.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn nar_bytes_sent(&self) -> u64 {
        self.metrics.nar_bytes.get()
    }
    /// Seconds since start.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
    /// Version of the proxy.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_string()
    }
}
