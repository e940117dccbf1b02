//! This node's signatures, obtained from the signer over D-Bus once per path
//! and kept (signing on every narinfo request would cost a large share of
//! narinfo throughput).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ds_core::{Signature, StorePath, StorePathHash};
use ds_dbus::{Signer1Proxy, SignerError};
use zbus::proxy::CacheProperties;

/// How long a signer call may take (the first one includes D-Bus activation).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failure, serve without our signature for this long before trying again.
const BACKOFF: Duration = Duration::from_secs(30);
/// Bound on cached signatures (cleared when full).
const CACHE_MAX: usize = 200_000;

/// Client of the signer with a signature cache.
pub struct SignerClient {
    conn: Option<zbus::Connection>,
    enabled: bool,
    cache: Mutex<HashMap<StorePathHash, (StorePath, Signature)>>,
    down_until: Mutex<Option<Instant>>,
}

impl SignerClient {
    /// `enabled`: whether this node has a key (config `privateKeyFile`).
    pub fn new(conn: Option<zbus::Connection>, enabled: bool) -> Self {
        SignerClient {
            conn,
            enabled,
            cache: Mutex::new(HashMap::new()),
            down_until: Mutex::new(None),
        }
    }

    /// Whether signatures are expected at all.
    pub fn enabled(&self) -> bool {
        self.enabled && self.conn.is_some()
    }

    async fn proxy(&self) -> zbus::Result<Signer1Proxy<'static>> {
        let conn = self
            .conn
            .as_ref()
            .ok_or_else(|| zbus::Error::Failure("no D-Bus connection".into()))?;
        Signer1Proxy::builder(conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
    }

    /// Our signature for `path`, from the cache or the signer. `None` when
    /// this node has no key or the signer is unavailable (logged).
    pub async fn sign(&self, path: &StorePath) -> Option<Signature> {
        if !self.enabled() {
            return None;
        }
        if let Some((p, sig)) = self.cache.lock().ok()?.get(path.hash()) {
            if p == path {
                return Some(sig.clone());
            }
        }
        if let Some(until) = *self.down_until.lock().ok()? {
            if Instant::now() < until {
                return None;
            }
        }
        let result = tokio::time::timeout(CALL_TIMEOUT, async {
            let proxy = self.proxy().await.map_err(SignerError::ZBus)?;
            proxy.sign(&path.to_absolute()).await
        })
        .await;
        let sig = match result {
            Ok(Ok(s)) => Signature::parse(&s)
                .map_err(|e| format!("signer returned an invalid signature: {e}")),
            Ok(Err(SignerError::PathNotValid(e))) => {
                // The path vanished between our lookup and the signer's: not a signer fault.
                tracing::info!(path = %path, "signer: {e}");
                return None;
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("signer did not answer within {CALL_TIMEOUT:?}")),
        };
        match sig {
            Ok(sig) => {
                if let Ok(mut cache) = self.cache.lock() {
                    if cache.len() >= CACHE_MAX {
                        cache.clear();
                    }
                    cache.insert(path.hash().clone(), (path.clone(), sig.clone()));
                }
                Some(sig)
            }
            Err(e) => {
                tracing::warn!(path = %path, "serving without this node's signature: {e}");
                if let Ok(mut d) = self.down_until.lock() {
                    *d = Some(Instant::now() + BACKOFF);
                }
                None
            }
        }
    }

    /// The signer's public key, if this node signs.
    pub async fn public_key(&self) -> Option<String> {
        if !self.enabled() {
            return None;
        }
        let proxy = self.proxy().await.ok()?;
        tokio::time::timeout(CALL_TIMEOUT, proxy.public_key())
            .await
            .ok()?
            .ok()
    }
}
