//! The D-Bus face of the fetcher: `org.distributedstore.Fetcher1`, and the
//! mapper as seen from here (a client of `org.distributedstore.Mapper1`).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ds_dbus::FetcherError;
use zbus::interface;

use crate::fetcher::{FetchError, Fetcher, MapperLink};

impl From<FetchError> for FetcherError {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::NotFound(m) => FetcherError::NotFound(m),
            FetchError::Failed(m) => FetcherError::Failed(m),
            FetchError::InvalidArgs(m) => FetcherError::InvalidArgs(m),
        }
    }
}

/// The D-Bus object `org.distributedstore.Fetcher1`.
pub struct FetcherObject {
    fetcher: Fetcher,
}

impl FetcherObject {
    /// Serve `fetcher`.
    pub fn new(fetcher: Fetcher) -> Self {
        FetcherObject { fetcher }
    }
}

#[interface(name = "org.distributedstore.Fetcher1")]
impl FetcherObject {
    /// Start or join fetching a NAR; the read end of a pipe carrying it
    /// from `offset` (closed early when the NAR fails).
    async fn fetch(
        &self,
        narinfo: &str,
        locators: Vec<String>,
        offset: u64,
    ) -> Result<zbus::zvariant::OwnedFd, FetcherError> {
        let fd = self.fetcher.fetch(narinfo, &locators, offset).await?;
        Ok(zbus::zvariant::OwnedFd::from(fd))
    }

    /// Like `Fetch` from byte 0, but the pipe carries nothing until the
    /// whole NAR verified (what a Nix client is given).
    async fn fetch_verified(
        &self,
        narinfo: &str,
        locators: Vec<String>,
    ) -> Result<zbus::zvariant::OwnedFd, FetcherError> {
        let fd = self.fetcher.fetch_verified(narinfo, &locators).await?;
        Ok(zbus::zvariant::OwnedFd::from(fd))
    }

    /// The narinfo of a NAR held (cached or in flight) for a store path
    /// hash part.
    async fn held(&self, hash: &str) -> Result<String, FetcherError> {
        Ok(self.fetcher.held(hash)?)
    }

    /// Bytes in the cache.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn cache_bytes(&self) -> u64 {
        self.fetcher.status().cache_bytes
    }

    /// Cache size limit in bytes.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn cache_max_bytes(&self) -> u64 {
        self.fetcher.status().cache_max_bytes
    }

    /// NARs in the cache.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn cache_entries(&self) -> u64 {
        self.fetcher.status().cache_entries
    }

    /// NARs being fetched now.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn in_flight(&self) -> u32 {
        self.fetcher.status().in_flight
    }

    /// Bytes received from sources since start, by locator scheme.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn bytes_fetched(&self) -> HashMap<String, u64> {
        self.fetcher.status().bytes_fetched
    }

    /// Downloads that ended without a verified NAR since start.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn fetches_failed(&self) -> u64 {
        self.fetcher.status().fetches_failed
    }

    /// Sources that served bytes failing verification since start.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn verification_failures(&self) -> u64 {
        self.fetcher.status().verification_failures
    }
}

/// How long a call to the mapper may take; it runs in the background, so
/// this only bounds the task.
const MAPPER_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The mapper over D-Bus, best effort: calls run in background tasks and
/// failures are logged at debug level. The connection is set once the
/// service owns its name ([`DbusMapper::connect`]); before that, calls are
/// dropped.
#[derive(Default)]
pub struct DbusMapper {
    conn: OnceLock<zbus::Connection>,
}

impl DbusMapper {
    /// A link with no connection yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Use `conn` (the service's own bus connection) for calls from now on.
    pub fn connect(&self, conn: zbus::Connection) {
        let _ = self.conn.set(conn);
    }

    fn call<F, Fut>(&self, what: &'static str, f: F)
    where
        F: FnOnce(ds_dbus::Mapper1Proxy<'static>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), ds_dbus::MapperError>> + Send,
    {
        let Some(conn) = self.conn.get().cloned() else {
            return;
        };
        tokio::spawn(async move {
            let call = async {
                let proxy = ds_dbus::Mapper1Proxy::builder(&conn)
                    .cache_properties(zbus::proxy::CacheProperties::No)
                    .build()
                    .await
                    .map_err(ds_dbus::MapperError::ZBus)?;
                f(proxy).await
            };
            match tokio::time::timeout(MAPPER_CALL_TIMEOUT, call).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("mapper {what}: {e}"),
                Err(_) => tracing::debug!("mapper {what}: timed out"),
            }
        });
    }
}

impl MapperLink for DbusMapper {
    fn report_bad(&self, peer: &str, reason: &str) {
        let (peer, reason) = (peer.to_string(), reason.to_string());
        tracing::warn!(peer, "peer served bad data: {reason}");
        self.call("ReportBad", move |m| async move {
            m.report_bad(&peer, &reason).await
        });
    }

    fn set_fetching(&self, hash32: &str, fetching: bool) {
        let hash = hash32.to_string();
        self.call("SetFetching", move |m| async move {
            m.set_fetching(&hash, fetching).await
        });
    }

    fn upstream_locators(&self, hash32: &str) -> futures::future::BoxFuture<'static, Vec<String>> {
        let conn = self.conn.get().cloned();
        let hash = hash32.to_string();
        Box::pin(async move {
            let Some(conn) = conn else {
                return Vec::new();
            };
            let lookup = async {
                let proxy = ds_dbus::Mapper1Proxy::builder(&conn)
                    .cache_properties(zbus::proxy::CacheProperties::No)
                    .build()
                    .await
                    .map_err(ds_dbus::MapperError::ZBus)?;
                proxy.lookup(&hash, true).await
            };
            match tokio::time::timeout(MAPPER_CALL_TIMEOUT, lookup).await {
                Ok(Ok((_, locators))) => locators,
                Ok(Err(e)) => {
                    tracing::debug!(hash, "no upstream fallback: {e}");
                    Vec::new()
                }
                Err(_) => Vec::new(),
            }
        })
    }
}
