//! `distributed-store-signer`: see the crate docs of `ds_signer`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ds_runtime::systemd;
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
    let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let key = match key_source(creds.as_deref(), config.private_key_file.as_deref()) {
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
    let signer = Signer::new(key, store, store_name);
    let (started, last_used) = (signer.started(), signer.last_used());
    let conn = zbus::connection::Builder::system()
        .context("system bus")?
        .serve_at(ds_dbus::SIGNER_PATH, signer)?
        .name(ds_dbus::SIGNER_NAME)?
        .build()
        .await
        .context("connecting to the system bus and owning org.distributedstore.Signer1")?;
    systemd::notify_ready("signing");
    systemd::spawn_watchdog();
    tracing::info!("serving {} on the system bus", ds_dbus::SIGNER_NAME);

    let idle = config.idle_exit_sec;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let closed = async {
        // The bus going away (e.g. `distributed-store up` stopping its private
        // bus) ends the service too.
        let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
        let mut owner_changes = dbus.receive_name_owner_changed().await?;
        use futures::StreamExt;
        while owner_changes.next().await.is_some() {}
        anyhow::Ok(())
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
        _ = closed => tracing::info!("bus connection closed: stopping"),
        _ = idle_timer(idle, started, last_used) => tracing::info!("idle for {idle}s: exiting (D-Bus activation restarts it)"),
    }
    systemd::notify_stopping();
    Ok(())
}

async fn idle_timer(
    secs: u64,
    started: std::time::Instant,
    last_used: Arc<std::sync::atomic::AtomicU64>,
) {
    if secs == 0 {
        std::future::pending::<()>().await;
    }
    let limit = Duration::from_secs(secs);
    loop {
        let idle = Signer::idle_for(started, &last_used);
        if idle >= limit {
            return;
        }
        tokio::time::sleep(limit - idle + Duration::from_millis(50)).await;
    }
}
