//! `distributed-store-fetcher`: see the crate docs of `ds_fetcher`.

use std::time::Duration;

use clap::Parser;

/// mimalloc instead of glibc's malloc, as in the proxy: the fetcher's NAR
/// chunks too are allocated on one thread and freed on another, which glibc
/// answers by trimming each thread's arena and faulting the pages in again.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use ds_fetcher::{DbusMapper, Fetcher, FetcherConfig, FetcherObject};
use ds_runtime::service;

/// Fetches NARs for the proxy from peers and binary caches, verifies them
/// while they stream and keeps a bounded cache, over D-Bus
/// (org.distributedstore.Fetcher1 on the system bus; DBUS_SYSTEM_BUS_ADDRESS
/// selects another bus).
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    service: ds_runtime::args::ServiceArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ds_runtime::logging::init("distributed-store-fetcher");
    let args = Args::parse();
    let config = args.service.load_config()?;
    let mut signals = service::Signals::install()?;
    let activity = service::Activity::new();
    let mapper = DbusMapper::new();
    let fetcher = Fetcher::with_backends(
        FetcherConfig::from_config(&config),
        &config.backends,
        mapper.clone(),
        activity.clone(),
    )?;
    let conn = service::own_name(
        ds_dbus::FETCHER_NAME,
        ds_dbus::FETCHER_PATH,
        FetcherObject::new(fetcher),
    )
    .await?;
    // The same connection calls the mapper (ReportBad, SetFetching).
    mapper.connect(conn.clone());
    service::ready("fetching");
    tracing::info!("serving {} on the system bus", ds_dbus::FETCHER_NAME);
    let idle = Duration::from_secs(config.idle_exit_sec);
    service::wait_for_stop(&mut signals, &activity, idle, Some(&conn)).await;
    Ok(())
}
