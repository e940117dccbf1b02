//! This node's signatures, obtained from the signer over D-Bus once per path
//! and kept (signing on every narinfo request would cost a large share of
//! narinfo throughput).
//!
//! The signer's answers are cached per (store path, NarHash): a signature,
//! or `NotBuiltHere` (a path this machine did not build, under the default
//! `signPaths = "built"`). The latter is a normal answer, not a signer fault:
//! the narinfo is served with the signatures the path came with, without a
//! warning and without backing off from the signer. A path rebuilt with
//! another NarHash is asked about again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ds_core::{Hash, Signature, StorePath};
use ds_dbus::{Signer1Proxy, SignerError};
use zbus::proxy::CacheProperties;

/// How long a signer call may take (the first one includes D-Bus activation).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failure, serve without our signature for this long before trying again.
const BACKOFF: Duration = Duration::from_secs(30);
/// Bound on cached answers (cleared when full).
const CACHE_MAX: usize = 200_000;
/// How long a `NotBuiltHere` answer is kept. Bounded so that a path deleted
/// and rebuilt here with the same NarHash (now built here), or a signer
/// restarted with `signPaths = "all"`, is signed without restarting the proxy.
const NOT_BUILT_TTL: Duration = Duration::from_secs(600);

/// What the signer answered for one (path, NarHash).
#[derive(Debug, Clone)]
enum Answer {
    Signed(Signature),
    NotBuiltHere { until: Instant },
}

/// Cache key: the path and its NarHash (a path rebuilt with other contents
/// is asked again).
type Key = (StorePath, Hash);

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

    /// Our signature for a path valid in the local store with this NarHash
    /// (`ds_store::PathInfo::{path, nar_hash}`), from the cache or the
    /// signer. `None` when this node has no key, did not build the path
    /// (`NotBuiltHere`, cached; logged at debug level only), or the signer
    /// is unavailable (logged; the signer is left alone for a while).
    pub async fn sign_info(&self, path: &StorePath, nar_hash: &Hash) -> Option<Signature> {
        self.sign_keyed((path.clone(), nar_hash.clone())).await
    }

    async fn sign_keyed(&self, key: Key) -> Option<Signature> {
        if !self.enabled() {
            return None;
        }
        let path = &key.0;
        let cached = self.cache.lock().ok()?.get(&key).cloned();
        match cached {
            Some(Answer::Signed(sig)) => return Some(sig),
            Some(Answer::NotBuiltHere { until }) if Instant::now() < until => return None,
            _ => {}
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
            Ok(Err(SignerError::NotBuiltHere(e))) => {
                // Policy, not failure: the path keeps the signatures it came with.
                tracing::debug!(path = %path, "signer: {e}");
                let until = Instant::now() + NOT_BUILT_TTL;
                self.remember(key, Answer::NotBuiltHere { until });
                return None;
            }
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
                self.remember(key, Answer::Signed(sig.clone()));
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

    fn hash(c: char) -> Hash {
        // The first of 52 nix-base32 digits holds only the top bit.
        Hash::parse(&format!("sha256:0{}", c.to_string().repeat(51))).unwrap()
    }

    #[tokio::test]
    async fn not_built_here_is_cached_per_path_and_nar_hash_without_backoff() {
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

        // NotBuiltHere: no signature, asked once per (path, NarHash).
        assert_eq!(client.sign_info(&subst, &hash('a')).await, None);
        assert_eq!(client.sign_info(&subst, &hash('a')).await, None);
        assert_eq!(calls(), 1, "the refusal is cached");
        // ... and it is no fault: the signer is asked for the next path at once.
        let sig = client.sign_info(&built, &hash('a')).await.expect("signed");
        assert_eq!(sig.key_name, "fleet-1");
        assert_eq!(client.sign_info(&built, &hash('a')).await, Some(sig));
        assert_eq!(calls(), 2, "the signature is cached");
        // The same path with another NarHash (rebuilt): asked again.
        assert_eq!(client.sign_info(&subst, &hash('b')).await, None);
        assert_eq!(calls(), 3);

        // A real failure backs off: nothing is asked during BACKOFF.
        let broken = StorePath::parse(BROKEN).unwrap();
        assert_eq!(client.sign_info(&broken, &hash('a')).await, None);
        assert_eq!(calls(), 4);
        assert_eq!(client.sign_info(&subst, &hash('c')).await, None);
        assert_eq!(calls(), 4, "backing off after a signer failure");
        // Cached answers are still served while backing off.
        assert!(client.sign_info(&built, &hash('a')).await.is_some());
        drop(daemon);
    }
}
