//! This node's signatures, obtained from the signer over D-Bus once per
//! fingerprint and kept (signing on every narinfo request would cost a
//! large share of narinfo throughput).
//!
//! The signer's answers are cached by the fingerprint a signature covers
//! (`1;path;NarHash;NarSize;references`, what Nix verifies): a path deleted
//! and registered again with other contents, size or references has another
//! fingerprint and is asked about again, so a cached signature can never be
//! served for contents it did not sign. Cached answers: a signature, or
//! `NotBuiltHere` (a path this machine did not build, under the default
//! `signPaths = "built"`), a normal answer, not a signer fault.
//!
//! A signer that fails or does not answer in time is an error
//! ([`SignError`]), and the caller answers 503 rather than a narinfo
//! without this node's signature (see `App::own_signature`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ds_core::{Signature, StorePath};
use ds_dbus::{Signer1Proxy, SignerError};
use zbus::proxy::CacheProperties;

/// How long a signer call may take (the first one includes D-Bus activation).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failure, answer narinfo that need our signature 503 for this
/// long before asking the signer again; also the `Retry-After` of those
/// 503s, so a client that waits as told finds the signer asked again (a
/// longer back-off kept built paths 503 for 20 s after the signer was back,
/// `tests/e2e/signer-down.sh`). One failing call per 5 s at most.
pub const BACKOFF: Duration = Duration::from_secs(5);
/// Bound on cached answers (cleared when full).
const CACHE_MAX: usize = 200_000;
/// How long a `NotBuiltHere` answer is kept. Bounded so that a path deleted
/// and rebuilt here with the same NarHash (now built here), or a signer
/// restarted with `signPaths = "all"`, is signed without restarting the proxy.
const NOT_BUILT_TTL: Duration = Duration::from_secs(600);

/// What the signer answered for one fingerprint.
#[derive(Debug, Clone)]
enum Answer {
    Signed(Signature),
    NotBuiltHere { until: Instant },
}

/// Cache key: the fingerprint the signature covers.
type Key = String;

/// Why there is no signature although one is expected.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SignError {
    /// No D-Bus connection.
    #[error("no D-Bus connection to the signer")]
    NoBus,
    /// The signer failed, answered garbage or timed out.
    #[error("{0}")]
    Failed(String),
    /// A recent failure: the signer is left alone for a while.
    #[error("the signer failed recently; not asking again for {0:?}")]
    BackingOff(Duration),
}

/// Client of the signer with a signature cache.
pub struct SignerClient {
    conn: Option<zbus::Connection>,
    enabled: bool,
    cache: Mutex<HashMap<Key, Answer>>,
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

    /// Our signature over `fingerprint` (of `path` as the local store holds
    /// it: [`ds_core::fingerprint`]), from the cache or the signer.
    /// `Ok(None)` when this node has no key or did not build the path
    /// (`NotBuiltHere`, cached; logged at debug level only) or the path
    /// vanished meanwhile; `Err` when the signer failed, did not answer in
    /// [`CALL_TIMEOUT`], or failed within the last [`BACKOFF`].
    pub async fn sign(
        &self,
        path: &StorePath,
        fingerprint: String,
    ) -> Result<Option<Signature>, SignError> {
        if !self.enabled {
            return Ok(None);
        }
        if self.conn.is_none() {
            return Err(SignError::NoBus);
        }
        let cached = self
            .cache
            .lock()
            .ok()
            .and_then(|c| c.get(&fingerprint).cloned());
        match cached {
            Some(Answer::Signed(sig)) => return Ok(Some(sig)),
            Some(Answer::NotBuiltHere { until }) if Instant::now() < until => return Ok(None),
            _ => {}
        }
        if let Some(until) = self.down_until.lock().ok().and_then(|d| *d) {
            let now = Instant::now();
            if now < until {
                return Err(SignError::BackingOff(until - now));
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
            Ok(Err(SignerError::NotBuiltHere(e))) => {
                // Policy, not failure: the path keeps the signatures it came with.
                tracing::debug!(path = %path, "signer: {e}");
                let until = Instant::now() + NOT_BUILT_TTL;
                self.remember(fingerprint, Answer::NotBuiltHere { until });
                return Ok(None);
            }
            Ok(Err(SignerError::PathNotValid(e))) => {
                // The path vanished between our lookup and the signer's: not a signer fault.
                tracing::info!(path = %path, "signer: {e}");
                return Ok(None);
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("signer did not answer within {CALL_TIMEOUT:?}")),
        };
        match sig {
            Ok(sig) => {
                self.remember(fingerprint, Answer::Signed(sig.clone()));
                Ok(Some(sig))
            }
            Err(e) => {
                tracing::warn!(path = %path, "no signature from the signer: {e}");
                if let Ok(mut d) = self.down_until.lock() {
                    *d = Some(Instant::now() + BACKOFF);
                }
                Err(SignError::Failed(e))
            }
        }
    }

    fn remember(&self, key: Key, answer: Answer) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(key, answer);
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

#[cfg(test)]
mod tests {
    //! The client against a fake `Signer1` on a private dbus-daemon: what is
    //! asked, what is cached, when it backs off.

    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    const BUILT: &str = "/nix/store/0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a-built";
    const SUBSTITUTED: &str = "/nix/store/1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b-substituted";
    const BROKEN: &str = "/nix/store/2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c-broken";

    /// Answers like the real signer under `signPaths = "built"`; counts calls.
    struct FakeSigner {
        calls: Arc<AtomicU64>,
    }

    #[zbus::interface(name = "org.distributedstore.Signer1")]
    impl FakeSigner {
        async fn sign(&self, store_path: &str) -> Result<String, SignerError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            match store_path {
                BUILT => Ok(format!("fleet-1:{}", "A".repeat(86) + "==")),
                SUBSTITUTED => Err(SignerError::NotBuiltHere(format!(
                    "{store_path}: not built"
                ))),
                _ => Err(SignerError::Store("database locked".into())),
            }
        }
    }

    struct Daemon(std::process::Child);
    impl Drop for Daemon {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// The fingerprint of `path` with a NarHash of `c`s, NarSize `size`.
    fn fp(path: &StorePath, c: char, size: u64) -> String {
        // The first of 52 nix-base32 digits holds only the top bit.
        let hash = ds_core::Hash::parse(&format!("sha256:0{}", c.to_string().repeat(51))).unwrap();
        ds_core::fingerprint(path, &hash, size, &[])
    }
    #[tokio::test]
    async fn answers_are_cached_per_fingerprint_and_failures_back_off() {
        let Ok(mut child) = std::process::Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            eprintln!("skipping: dbus-daemon is not installed");
            return;
        };
        let mut line = String::new();
        let out = child.stdout.take().unwrap();
        let daemon = Daemon(child);
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).unwrap();
        let addr = line.trim();
        let calls = Arc::new(AtomicU64::new(0));
        let fake = FakeSigner {
            calls: calls.clone(),
        };
        let _server = zbus::connection::Builder::address(addr)
            .unwrap()
            .name(ds_dbus::SIGNER_NAME)
            .unwrap()
            .serve_at(ds_dbus::SIGNER_PATH, fake)
            .unwrap()
            .build()
            .await
            .unwrap();
        let conn = zbus::connection::Builder::address(addr)
            .unwrap()
            .build()
            .await
            .unwrap();
        let client = SignerClient::new(Some(conn), true);
        let calls = || calls.load(Ordering::Relaxed);
        let (built, subst) = (
            StorePath::parse(BUILT).unwrap(),
            StorePath::parse(SUBSTITUTED).unwrap(),
        );

        // NotBuiltHere: no signature, asked once per fingerprint.
        assert_eq!(client.sign(&subst, fp(&subst, 'a', 1)).await.unwrap(), None);
        assert_eq!(client.sign(&subst, fp(&subst, 'a', 1)).await.unwrap(), None);
        assert_eq!(calls(), 1, "the refusal is cached");
        // ... and it is no fault: the signer is asked for the next path at once.
        let sig = client
            .sign(&built, fp(&built, 'a', 1))
            .await
            .unwrap()
            .expect("signed");
        assert_eq!(sig.key_name, "fleet-1");
        assert_eq!(
            client.sign(&built, fp(&built, 'a', 1)).await.unwrap(),
            Some(sig)
        );
        assert_eq!(calls(), 2, "the signature is cached");
        // The same path registered again with another NarHash, or only
        // another NarSize: another fingerprint, asked again.
        assert!(client
            .sign(&built, fp(&built, 'b', 1))
            .await
            .unwrap()
            .is_some());
        assert_eq!(calls(), 3);
        assert!(client
            .sign(&built, fp(&built, 'b', 2))
            .await
            .unwrap()
            .is_some());
        assert_eq!(calls(), 4);
        assert_eq!(client.sign(&subst, fp(&subst, 'b', 1)).await.unwrap(), None);
        assert_eq!(calls(), 5);

        // A real failure is an error, and backs off: nothing is asked during BACKOFF.
        let broken = StorePath::parse(BROKEN).unwrap();
        assert!(matches!(
            client.sign(&broken, fp(&broken, 'a', 1)).await,
            Err(SignError::Failed(_))
        ));
        assert_eq!(calls(), 6);
        assert!(matches!(
            client.sign(&subst, fp(&subst, 'c', 1)).await,
            Err(SignError::BackingOff(_))
        ));
        assert_eq!(calls(), 6, "backing off after a signer failure");
        // Cached answers are still served while backing off.
        assert!(client
            .sign(&built, fp(&built, 'a', 1))
            .await
            .unwrap()
            .is_some());
        drop(daemon);
    }
}
