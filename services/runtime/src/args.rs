//! Command-line arguments shared by the services (proxy, signer).

use std::path::PathBuf;

use crate::Config;

/// Arguments every service takes.
#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    /// Config file (TOML); a missing file means the defaults.
    #[arg(long, env = "DISTRIBUTED_STORE_CONFIG", default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Prepare the store for unprivileged reading and exit: create the Nix
    /// database's missing `-wal`/`-shm` files (root only; the units run this
    /// as `ExecStartPre=+`). See docs/store-access.md.
    #[arg(long)]
    pub prepare_store: bool,
}

impl ServiceArgs {
    /// Load the config file, or the defaults (with a warning) when it does
    /// not exist. A file that exists but is invalid is an error.
    pub fn load_config(&self) -> Result<Config, crate::ConfigError> {
        if self.config.exists() {
            Config::load(&self.config)
        } else {
            tracing::warn!("config {} not found; using defaults", self.config.display());
            Ok(Config::default())
        }
    }
}
