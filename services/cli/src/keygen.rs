//! `distributed-store keygen NAME SECRET_FILE PUBLIC_FILE`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context};
use ds_core::SecretKey;

/// Generate a key pair from OS randomness and write both files (the secret
/// one with mode 0600). Existing files are never overwritten.
pub fn keygen(name: &str, secret: &Path, public: &Path) -> anyhow::Result<String> {
    if name.is_empty() || name.contains(':') || name.contains(char::is_whitespace) {
        bail!("key name {name:?} must be non-empty without ':' or spaces (e.g. \"myfleet-1\")");
    }
    for p in [secret, public] {
        if p.exists() {
            bail!("{} exists; refusing to overwrite a key", p.display());
        }
    }
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| anyhow::anyhow!("reading OS randomness: {e}"))?;
    let key = SecretKey::from_seed(name, seed);
    let pubkey = key.public().to_string();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(secret)
        .with_context(|| format!("creating {}", secret.display()))?;
    f.write_all(key.to_file_string().as_bytes())?;
    std::fs::write(public, &pubkey).with_context(|| format!("writing {}", public.display()))?;
    Ok(pubkey)
}
