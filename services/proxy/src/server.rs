//! The HTTP server: listeners (socket-activated or bound), a bound on
//! concurrent connections, header size/time limits, graceful shutdown on
//! SIGTERM, optional exit when idle, systemd readiness and watchdog.

use std::convert::Infallible;
use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::signing::SignerClient;
use crate::status::Status;
use crate::App;

/// Largest request head (request line + headers) accepted; larger gets 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Time a client has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time in-flight responses get to finish after SIGTERM.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Connect to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` selects another).
/// The proxy works without D-Bus, unsigned and without status.
async fn connect_bus() -> Option<zbus::Connection> {
    let attempt = async { zbus::connection::Builder::system()?.build().await };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(conn)) => Some(conn),
        Ok(Err(e)) => {
            tracing::warn!("D-Bus: no system bus ({e}); running without signer and status");
            None
        }
        Err(_) => {
            tracing::warn!(
                "D-Bus: system bus did not answer in 5s; running without signer and status"
            );
            None
        }
    }
}

/// Publish `org.distributedstore.Proxy1` (when the policy lets us own it).
async fn publish_status(conn: &zbus::Connection, status: Status) {
    let result = async {
        conn.object_server().at(ds_dbus::PROXY_PATH, status).await?;
        conn.request_name(ds_dbus::PROXY_NAME).await
    };
    if let Err(e) = result.await {
        tracing::warn!("D-Bus: cannot publish {}: {e}", ds_dbus::PROXY_NAME);
    }
}

/// Run the proxy until SIGTERM/SIGINT (or idle exit).
pub async fn run(
    config: ds_runtime::Config,
    std_listeners: Vec<StdListener>,
) -> anyhow::Result<()> {
    let mut signals = ds_runtime::service::Signals::install()?;
    let activated = !std_listeners.is_empty();
    let std_listeners = if activated {
        std_listeners
    } else {
        let l = StdListener::bind(config.listen)
            .with_context(|| format!("binding {}", config.listen))?;
        l.set_nonblocking(true)?;
        vec![l]
    };
    let addrs: Vec<String> = std_listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .collect();
    let store_name = ds_runtime::config::store_display(&config.store);
    let store = Arc::new(
        ds_store::LocalStore::open(&config.store)
            .with_context(|| format!("opening the local Nix store {store_name}"))?,
    );

    let stats = Arc::new(crate::status::Stats::default());
    let wants_signing = config.private_key_file.is_some();
    let conn = connect_bus().await;
    let signer = Arc::new(SignerClient::new(conn.clone(), wants_signing));
    if let Some(conn) = &conn {
        let status = Status {
            stats: stats.clone(),
            listen: addrs.join(","),
            store: store_name.clone(),
            signer: signer.clone(),
            started: Instant::now(),
        };
        publish_status(conn, status).await;
    }
    if wants_signing && conn.is_none() {
        tracing::warn!("privateKeyFile is set but D-Bus is unavailable: narinfo will carry stored signatures only");
    }

    // A lookup asks peers and upstreams in parallel under their deadlines;
    // this bound only guards against a wedged mapper.
    let lookup_deadline =
        config.peer_timeout.max(config.upstream_timeout) * 2 + Duration::from_secs(1);
    let fleet = Arc::new(crate::fleet::Fleet::new(
        conn.clone(),
        config.trusted_keys(),
        lookup_deadline,
    ));
    let app = Arc::new(App::new(config, store, signer, fleet, stats));
    let limit = Arc::new(Semaphore::new(app.config.max_connections));
    let activity = ds_runtime::service::Activity::new();
    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let mut accept_tasks = Vec::new();
    for l in std_listeners {
        let listener = TcpListener::from_std(l)?;
        let app = app.clone();
        let limit = limit.clone();
        let activity = activity.clone();
        let graceful = graceful.clone();
        let mut stop = stop_rx.clone();
        accept_tasks.push(tokio::spawn(async move {
            loop {
                // Take a connection slot first: past maxConnections, new
                // connections wait in the kernel backlog instead of piling up here.
                let permit = tokio::select! {
                    p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                    _ = stop.changed() => return,
                };
                let (stream, _peer) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(s) => s,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = stop.changed() => return,
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let busy = activity.busy();
                let touch = activity.clone();
                let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let app = app.clone();
                    touch.touch();
                    async move { Ok::<_, Infallible>(app.handle(req.map(Body::new)).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT)
                    .max_buf_size(MAX_HEAD_BYTES)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service);
                let fut = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = fut.await {
                        tracing::debug!("connection ended: {e}");
                    }
                    drop(busy);
                    drop(permit);
                });
            }
        }));
    }

    ds_runtime::service::ready(&format!("serving {} on {}", store_name, addrs.join(", ")));
    tracing::info!(
        listen = %addrs.join(","),
        socket_activated = activated,
        store = %store_name,
        signing = wants_signing,
        "distributed-store proxy ready"
    );

    let idle = Duration::from_secs(app.config.idle_exit_sec);
    // The proxy outlives its bus (it serves HTTP without D-Bus), so the bus
    // closing is not a reason to stop.
    ds_runtime::service::wait_for_stop(&mut signals, &activity, idle, None).await;
    let _ = stop_tx.send(true);
    for t in accept_tasks {
        let _ = t.await;
    }
    // The accept tasks are gone, so this is the last reference.
    if let Ok(graceful) = Arc::try_unwrap(graceful) {
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
        }
    }
    drop(conn);
    Ok(())
}
