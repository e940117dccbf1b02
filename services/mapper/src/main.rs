//! `distributed-store-mapper`: see the crate docs of `ds_mapper`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ds_runtime::service;

/// The index of where NARs can be had (local store, peers, upstreams),
/// over D-Bus (org.distributedstore.Mapper1 on the system bus;
/// DBUS_SYSTEM_BUS_ADDRESS selects another bus).
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    service: ds_runtime::args::ServiceArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ds_runtime::logging::init("distributed-store-mapper");
    let args = Args::parse();
    let config = args.service.load_config()?;
    if args.service.prepare_store {
        return ds_runtime::prepare_store(&config);
    }
    let mut signals = service::Signals::install()?;
    let activity = service::Activity::new();
    let mapper = ds_mapper::MapperService::open(&config, activity.clone())
        .context("opening the mapper index")?;
    // Without a readable store the mapper still resolves from peers and
    // upstreams; it just announces nothing.
    let store = match ds_store::LocalStore::open(&config.store) {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            tracing::error!("not indexing the local store: {e}");
            None
        }
    };
    let _tasks = mapper.spawn_tasks(store, config.peer_timeout);
    let discovery = mapper.start_discovery(&config);
    let object = ds_mapper::service::DbusObject(mapper.clone());
    let conn = service::own_name(ds_dbus::MAPPER_NAME, ds_dbus::MAPPER_PATH, object).await?;
    service::ready("mapping");
    tracing::info!(
        node = mapper.local().epoch(),
        "serving {} on the system bus",
        ds_dbus::MAPPER_NAME
    );
    let idle = Duration::from_secs(config.idle_exit_sec);
    service::wait_for_stop(&mut signals, &activity, idle, Some(&conn)).await;
    if let Some(d) = discovery {
        d.shutdown().await;
    }
    Ok(())
}
