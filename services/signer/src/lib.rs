//! The signer: the only process that holds the binary-cache private key.
//!
//! It serves `org.distributedstore.Signer1` on the system bus. `Sign` takes a
//! store path, looks it up in the local store itself and signs the
//! fingerprint it computes from the store's own facts, so a caller can never
//! get an arbitrary message signed.
//!
//! By default (`signPaths = "built"`) it signs only paths this machine built
//! (Nix's `ultimate` flag): a path substituted from a source only this node
//! trusts, or imported without any signature check, is refused with
//! `NotBuiltHere` instead of being vouched for with the fleet key.
//! `signPaths = "all"` signs every valid path. The D-Bus policy
//! (`dist/dbus-1/system.d/org.distributedstore.conf`) lets only the proxy's
//! user call it.
//!
//! The key comes from `$CREDENTIALS_DIRECTORY/signing-key` (systemd
//! `LoadCredential=`) or from `privateKeyFile` in the config. It is never
//! logged and never sent over the bus.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ds_runtime::config::SignPaths;
use ds_runtime::service::Activity;

use ds_core::{SecretKey, StorePath};
use ds_dbus::SignerError;
use ds_store::LocalStore;
use zbus::interface;

/// Name of the credential the unit passes with `LoadCredential=`.
pub const CREDENTIAL_NAME: &str = "signing-key";

/// Errors loading the key. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyLoadError {
    /// The file could not be read.
    #[error("cannot read signing key {path}: {source}")]
    Read {
        /// file
        path: PathBuf,
        /// cause
        #[source]
        source: std::io::Error,
    },
    /// The contents are not a Nix secret key. The parser's own message is
    /// deliberately dropped: it could quote the secret.
    #[error("signing key {0} is not a Nix secret key (expected name:base64 of 64 bytes, as written by `nix-store --generate-binary-cache-key` or `distributed-store keygen`)")]
    Invalid(PathBuf),
}

/// Where the key comes from: the systemd credential first, then the
/// configured file. `None` when neither is present.
pub fn key_source(credentials_dir: Option<&Path>, configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = credentials_dir {
        let p = dir.join(CREDENTIAL_NAME);
        if p.exists() {
            return Some(p);
        }
    }
    configured.map(Path::to_path_buf)
}

/// Read and parse a secret key file.
pub fn load_key(path: &Path) -> Result<SecretKey, KeyLoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyLoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    SecretKey::parse(&text).map_err(|_| KeyLoadError::Invalid(path.to_path_buf()))
}

/// The D-Bus object `org.distributedstore.Signer1`.
pub struct Signer {
    key: Option<SecretKey>,
    public_key: String,
    store: Arc<LocalStore>,
    store_name: String,
    sign_paths: SignPaths,
    issued: AtomicU64,
    refused: AtomicU64,
    activity: Activity,
}

impl Signer {
    /// A signer over `store`; without a key every `Sign` fails with `NoKey`.
    /// `sign_paths` (config `signPaths`) says which valid paths it signs.
    /// `activity` is touched on every call (for idle exit).
    pub fn new(
        key: Option<SecretKey>,
        store: Arc<LocalStore>,
        store_name: String,
        sign_paths: SignPaths,
        activity: Activity,
    ) -> Self {
        let public_key = key
            .as_ref()
            .map(|k| k.public().to_string())
            .unwrap_or_default();
        Signer {
            key,
            public_key,
            store,
            store_name,
            sign_paths,
            issued: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            activity,
        }
    }

    /// Sign `store_path` if it is valid in the local store and, under
    /// [`SignPaths::Built`], was built here: returns the narinfo `Sig:` value.
    /// Every refusal (including `NotBuiltHere`) counts in `RequestsRefused`.
    pub async fn sign_path(&self, store_path: &str) -> Result<String, SignerError> {
        let _busy = self.activity.busy();
        let result = self.sign_inner(store_path).await;
        match &result {
            Ok(_) => self.issued.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                tracing::info!(path = store_path, "refused to sign: {e}");
                self.refused.fetch_add(1, Ordering::Relaxed)
            }
        };
        result
    }

    async fn sign_inner(&self, store_path: &str) -> Result<String, SignerError> {
        let key = self.key.as_ref().ok_or_else(|| {
            SignerError::NoKey(
                "no signing key is configured (privateKeyFile / LoadCredential signing-key)".into(),
            )
        })?;
        let path =
            StorePath::parse(store_path).map_err(|e| SignerError::InvalidPath(e.to_string()))?;
        let store = self.store.clone();
        let hash = path.hash().clone();
        let info = tokio::task::spawn_blocking(move || store.path_info(&hash))
            .await
            .map_err(|e| SignerError::Store(format!("store lookup task failed: {e}")))?
            .map_err(|e| SignerError::Store(e.to_string()))?;
        let info = match info {
            Some(info) if info.path == path => info,
            _ => {
                return Err(SignerError::PathNotValid(format!(
                    "{store_path} is not valid in the local store {}",
                    self.store_name
                )))
            }
        };
        if self.sign_paths == SignPaths::Built && !info.ultimate {
            return Err(SignerError::NotBuiltHere(format!(
                "{store_path} was not built on this machine (substituted, imported or added to {}); \
                 it keeps the signatures it came with (signPaths = \"built\"; \"all\" signs it)",
                self.store_name
            )));
        }
        let fp = ds_core::fingerprint(&info.path, &info.nar_hash, info.nar_size, &info.references);
        Ok(key.sign(fp.as_bytes()).to_string())
    }
}

#[interface(name = "org.distributedstore.Signer1")]
impl Signer {
    /// Sign a path valid in the local store (and built here, unless
    /// `signPaths = "all"`); returns `keyname:base64`.
    async fn sign(&self, store_path: &str) -> Result<String, SignerError> {
        self.sign_path(store_path).await
    }

    /// Public key (`name:base64`), empty when no key is configured.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn public_key(&self) -> String {
        self.public_key.clone()
    }

    /// Signatures issued since start.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn signatures_issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }

    /// Requests refused since start.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn requests_refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Store read by the signer.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn store(&self) -> String {
        self.store_name.clone()
    }
}
