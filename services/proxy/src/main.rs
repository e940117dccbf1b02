//! `distributed-store-proxy`: see the crate docs of `ds_proxy`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use ds_runtime::Config;

/// Serves this machine's Nix store over the binary-cache HTTP protocol
/// (socket-activated by systemd, or binding `listen` from the config).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Config file (TOML); missing file = defaults.
    #[arg(long, env = "DISTRIBUTED_STORE_CONFIG", default_value = ds_runtime::config::DEFAULT_PATH)]
    config: PathBuf,
    /// Prepare the store for unprivileged reading and exit: create the Nix
    /// database's missing `-wal`/`-shm` files (root only; the units run this
    /// as `ExecStartPre=+`). See docs/store-access.md.
    #[arg(long)]
    prepare_store: bool,
}

fn main() -> anyhow::Result<()> {
    ds_runtime::logging::init("distributed-store-proxy");
    let args = Args::parse();
    let config = if args.config.exists() {
        Config::load(&args.config)?
    } else {
        tracing::warn!("config {} not found; using defaults", args.config.display());
        Config::default()
    };
    if args.prepare_store {
        return ds_runtime::prepare_store(&config);
    }
    // Before the runtime starts threads: this consumes LISTEN_FDS & co.
    let listeners = ds_runtime::systemd::take_listeners().context("socket activation")?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ds-proxy")
        .build()?
        .block_on(ds_proxy::server::run(config, listeners))
}
