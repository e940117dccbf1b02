//! Plumbing shared by every distributed-store service: the one TOML config
//! file, logging (journald under systemd, stderr otherwise), systemd
//! readiness/watchdog notification, socket activation, and the life of a
//! service (D-Bus name, ready, stop on signal / idle / bus gone).

pub mod args;
pub mod config;
pub mod logging;
pub mod plugins;
#[cfg(feature = "s3")]
pub mod s3;
pub mod service;
pub mod systemd;

pub use config::{Config, ConfigError};

/// `--prepare-store`: as root, before an unprivileged service opens the
/// store, create the Nix database's missing `-wal`/`-shm` files (SQLite
/// needs them to exist to read a WAL database without write access; Nix
/// deletes them when its last process closes the database).
pub fn prepare_store(config: &Config) -> anyhow::Result<()> {
    let created = ds_store::LocalStore::ensure_wal_files(&config.store)?;
    if created {
        tracing::info!("created the store database's -wal/-shm files for read-only access");
    }
    Ok(())
}
