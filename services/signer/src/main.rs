//! `distributed-store-signer`: see the crate docs of `ds_signer`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ds_runtime::service;
use ds_signer::{key_source, load_key, Signer};

/// Holds the binary-cache signing key and signs paths valid in the local
/// store for the proxy, over D-Bus (org.distributedstore.Signer1 on the
/// system bus; DBUS_SYSTEM_BUS_ADDRESS selects another bus).
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    service: ds_runtime::args::ServiceArgs,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    ds_runtime::logging::init("distributed-store-signer");
    let args = Args::parse();
    let config = args.service.load_config()?;
    if args.service.prepare_store {
        return ds_runtime::prepare_store(&config);
    }
    let mut signals = service::Signals::install()?;
    let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    // Credential first, then privateKeyFile, then the documented default
    // place: a key put at /etc/distributed-store/signing-key (as
    // docs/operating.md says) is used even where no LoadCredential= brings
    // it, e.g. under `distributed-store up`.
    let configured = ds_runtime::config::key_file_or_default(
        config.private_key_file.as_deref(),
        std::path::Path::new(ds_runtime::config::DEFAULT_PRIVATE_KEY_FILE),
    );
    let key = match key_source(creds.as_deref(), configured.as_deref()) {
        Some(p) => {
            let key = load_key(&p)?;
            tracing::info!(key = %key.public(), "loaded signing key from {}", p.display());
            Some(key)
        }
        None => {
            tracing::warn!("no signing key configured: Sign requests will fail with NoKey");
            None
        }
    };
    let store =
        Arc::new(ds_store::LocalStore::open(&config.store).context("opening the local Nix store")?);
    let store_name = ds_runtime::config::store_display(&config.store);
    let activity = service::Activity::new();
    tracing::info!(sign_paths = ?config.sign_paths, "signing policy (config signPaths)");
    let signer = Signer::new(key, store, store_name, config.sign_paths, activity.clone());
    let conn = service::own_name(ds_dbus::SIGNER_NAME, ds_dbus::SIGNER_PATH, signer).await?;
    service::ready("signing");
    tracing::info!("serving {} on the system bus", ds_dbus::SIGNER_NAME);
    let idle = Duration::from_secs(config.idle_exit_sec);
    service::wait_for_stop(&mut signals, &activity, idle, Some(&conn)).await;
    Ok(())
}
