//! `distributed-store-proxy`: see the crate docs of `ds_proxy`.

use anyhow::Context;
use clap::Parser;

/// mimalloc instead of glibc's malloc: NAR chunks are allocated on blocking
/// threads and freed on the async workers, and glibc trims each thread's
/// arena back to the kernel (madvise) and faults the pages in again for
/// the next chunk: a third of the proxy's CPU went to page faults when
/// serving NARs (perf, `dev/bench` NAR cells).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Serves this machine's Nix store over the binary-cache HTTP protocol
/// (socket-activated by systemd, or binding `listen` from the config).
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    service: ds_runtime::args::ServiceArgs,
}

fn main() -> anyhow::Result<()> {
    ds_runtime::logging::init("distributed-store-proxy");
    let args = Args::parse();
    let config = args.service.load_config()?;
    if args.service.prepare_store {
        return ds_runtime::prepare_store(&config);
    }
    // Before the runtime starts threads: this consumes LISTEN_FDS & co.
    let listeners = ds_runtime::systemd::take_listeners().context("socket activation")?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ds-proxy")
        // The permit pool bounds blocking steps, not threads: Tokio starts a
        // thread whenever none is idle at the instant of a spawn, and a
        // burst of 500 new NAR streams took it to 145 threads (~1.3 MiB
        // each) for 64 permits. Past this cap, work queues instead; the
        // second half is for narinfo lookups and other blocking calls.
        .max_blocking_threads(2 * ds_proxy::blocking::WORK_PERMITS)
        .build()?
        .block_on(ds_proxy::server::run(config, listeners))
}
