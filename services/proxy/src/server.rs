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
/// A connection whose client has accepted no byte of a pending write for
/// this long is closed, and everything its response held (body stream,
/// connection slot) is freed: a client that stops reading cannot keep a
/// slot of `maxConnections` forever. Nix itself gives up on a transfer
/// after 300 s without data; 30 s of a full socket buffer is no slow link,
/// it is a client that stopped. (Linux wakes a blocked writer once a part
/// of the send buffer is free, so how slow a reader may be depends on the
/// buffer the kernel sized for the connection. Measured on loopback with a
/// client reading with a 4 KiB receive buffer: the longest wait between
/// writes was 11 s at ~6 KB/s, 22 s at ~3 KB/s, 44 s at ~1.5 KB/s, so a
/// reader slower than about 2 KB/s is cut; `tests/drip_readers.rs`.)
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
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

    let metrics = Arc::new(crate::metrics::Metrics::new());
    // The signer's key: `privateKeyFile`, else the documented default path
    // (the signer reads the same; the proxy only needs to know one exists
    // to expect signatures, it never reads it).
    let wants_signing = ds_runtime::config::key_file_or_default(
        config.private_key_file.as_deref(),
        std::path::Path::new(ds_runtime::config::DEFAULT_PRIVATE_KEY_FILE),
    )
    .is_some();
    let conn = connect_bus().await;
    let signer = Arc::new(SignerClient::new(conn.clone(), wants_signing));
    if let Some(conn) = &conn {
        let status = Status {
            metrics: metrics.clone(),
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
    let app = Arc::new(App::new(config, store, signer, fleet, metrics));
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
                let stream =
                    crate::sendfile::SendFile::new(stream, app.metrics.nar_bytes_sendfile.clone());
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
                    // Body buffers reach the socket as yielded, so NAR file
                    // regions go out with sendfile (crate::sendfile).
                    .writev(true)
                    .serve_connection(
                        TokioIo::new(StallGuard::new(stream, WRITE_STALL_TIMEOUT)),
                        service,
                    );
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

/// A connection's IO with a progress deadline on writes: a write (or flush)
/// that stays pending, the client accepting no byte, for `limit` fails with
/// `TimedOut`, which ends the connection. Hyper has no write timeout; the
/// body stream cannot have one either, since hyper stops polling it while
/// the socket is full. The timer starts when a write first finds the socket
/// full and is cleared by any progress.
pub struct StallGuard<T> {
    inner: T,
    limit: Duration,
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<T> StallGuard<T> {
    /// Guard `inner` with a progress deadline of `limit`.
    pub fn new(inner: T, limit: Duration) -> Self {
        StallGuard {
            inner,
            limit,
            stalled: None,
        }
    }

    /// After the inner IO returned `poll`: clear the timer on progress, arm
    /// it on the first pending, fail once it fired.
    fn watch<R>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        poll: std::task::Poll<std::io::Result<R>>,
    ) -> std::task::Poll<std::io::Result<R>> {
        use std::task::Poll;
        match poll {
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match std::future::Future::poll(timer.as_mut(), cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the client accepted no data for {limit:?}"),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for StallGuard<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for StallGuard<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, poll)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = std::pin::Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let poll = std::pin::Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, poll)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let poll = std::pin::Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A peer that stops reading: writes fail after the limit, not before;
    /// a peer that reads keeps the connection however long it takes.
    #[tokio::test]
    async fn stalled_writes_fail_after_the_limit() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut guard = StallGuard::new(server, Duration::from_millis(500));
        let chunk = vec![7u8; 64 * 1024];
        let started = Instant::now();
        let err = loop {
            if let Err(e) = guard.write_all(&chunk).await {
                break e;
            }
        };
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(500), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        drop(client);

        // A steady reader: 2 s of writes through a 1 s limit. (The kernel
        // wakes a blocked writer once a third of the send buffer is free,
        // so "progress" comes in steps of up to ~1.3 MiB on loopback.)
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0usize;
            loop {
                tokio::time::sleep(Duration::from_millis(2)).await;
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n,
                }
            }
        });
        let mut guard = StallGuard::new(server, Duration::from_secs(1));
        let started = Instant::now();
        let mut sent = 0usize;
        while started.elapsed() < Duration::from_secs(2) {
            guard
                .write_all(&chunk)
                .await
                .expect("a reading client is never cut");
            sent += chunk.len();
        }
        guard.shutdown().await.unwrap();
        drop(guard);
        assert_eq!(reader.await.unwrap(), sent);
    }
}
