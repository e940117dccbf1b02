//! Command-line arguments shared by the services (proxy, signer).

use std::path::PathBuf;

use crate::Config;

/// Arguments every service takes.
#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    /// Config file (TOML). Missing at the default location: the defaults;
    /// missing anywhere else, unreadable or invalid: an error.
    #[arg(long, env = "DISTRIBUTED_STORE_CONFIG", default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Prepare the store for unprivileged reading and exit: create the Nix
    /// database's missing `-wal`/`-shm` files (root only; the units run this
    /// as `ExecStartPre=+`). See docs/store-access.md.
    #[arg(long)]
    pub prepare_store: bool,
}

impl ServiceArgs {
    /// Load the config file. Only a missing file at the default location
    /// means the defaults (with a warning); a file that is unreadable, a
    /// directory, invalid, or named explicitly and missing is an error
    /// (see [`Config::load_or_default`]).
    pub fn load_config(&self) -> Result<Config, crate::ConfigError> {
        Config::load_or_default(
            &self.config,
            std::path::Path::new(crate::config::DEFAULT_PATH),
        )
    }
}
