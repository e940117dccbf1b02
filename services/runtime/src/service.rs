//! The life of a service, written once for all of them: owning its D-Bus
//! name, telling systemd it is ready (and pinging the watchdog), and
//! waiting for the reason to stop — SIGTERM, Ctrl-C, the bus going away, or
//! `idleExitSec` without activity (socket or D-Bus activation starts it
//! again on the next request).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

// tokio's Instant: the same clock as tokio's timers (and pausable in tests).
use tokio::time::Instant;

use anyhow::Context;

/// When a service was last used, and how much it is doing right now. Cheap
/// to clone; every clone sees the same counters.
#[derive(Clone, Debug)]
pub struct Activity {
    inner: Arc<ActivityInner>,
}

#[derive(Debug)]
struct ActivityInner {
    started: Instant,
    last_ms: AtomicU64,
    busy: AtomicUsize,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    /// Start counting now.
    pub fn new() -> Self {
        Activity {
            inner: Arc::new(ActivityInner {
                started: Instant::now(),
                last_ms: AtomicU64::new(0),
                busy: AtomicUsize::new(0),
            }),
        }
    }

    /// Record a use (a request, a method call).
    pub fn touch(&self) {
        let ms = self.inner.started.elapsed().as_millis() as u64;
        self.inner.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Mark work in progress until the guard drops (a connection, a
    /// download): a busy service never exits for idleness.
    pub fn busy(&self) -> BusyGuard {
        self.touch();
        self.inner.busy.fetch_add(1, Ordering::Relaxed);
        BusyGuard {
            activity: self.clone(),
        }
    }

    /// Work in progress now.
    pub fn busy_count(&self) -> usize {
        self.inner.busy.load(Ordering::Relaxed)
    }

    /// Time since the last use (or since start), zero while busy.
    pub fn idle_for(&self) -> Duration {
        if self.busy_count() > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.inner.last_ms.load(Ordering::Relaxed));
        self.inner.started.elapsed().saturating_sub(last)
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// Resolves once idle for `limit` (never, for zero).
    pub async fn idle(&self, limit: Duration) {
        if limit.is_zero() {
            std::future::pending::<()>().await;
        }
        loop {
            let idle = self.idle_for();
            if idle >= limit {
                return;
            }
            let wait = (limit - idle).min(Duration::from_secs(1));
            tokio::time::sleep(wait + Duration::from_millis(20)).await;
        }
    }
}

/// Work in progress; see [`Activity::busy`].
#[derive(Debug)]
pub struct BusyGuard {
    activity: Activity,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.activity.touch();
        self.activity.inner.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a service stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// SIGTERM (systemd stop, `up` stopping it).
    Terminated,
    /// SIGINT (Ctrl-C in a terminal).
    Interrupted,
    /// Idle for `idleExitSec`.
    Idle,
    /// The D-Bus connection closed (the bus went away).
    BusClosed,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopReason::Terminated => "SIGTERM",
            StopReason::Interrupted => "interrupted",
            StopReason::Idle => "idle (activation starts it again on demand)",
            StopReason::BusClosed => "the bus connection closed",
        })
    }
}

/// Connect to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` selects another),
/// serve `object` at `path` and own `name`. Fails when the bus is
/// unreachable or the policy does not let us own the name.
pub async fn own_name<I: zbus::object_server::Interface>(
    name: &'static str,
    path: &'static str,
    object: I,
) -> anyhow::Result<zbus::Connection> {
    zbus::connection::Builder::system()
        .context("system bus")?
        .serve_at(path, object)?
        .name(name)?
        .build()
        .await
        .with_context(|| format!("connecting to the system bus and owning {name}"))
}

/// Signal handlers, installed as early as possible so that a signal during
/// start-up is not lost (it is seen by [`Signals::wait`] later).
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Install handlers for SIGTERM and SIGINT (inside a tokio runtime).
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

/// Tell systemd the service is ready (with a status line) and keep its
/// watchdog fed for as long as the runtime lives.
pub fn ready(status: &str) {
    crate::systemd::notify_ready(status);
    crate::systemd::spawn_watchdog();
}

/// Wait for the reason to stop: a signal, `idle_exit` without activity
/// (zero: never), or the bus connection closing (when `bus` is given). Then
/// tell systemd we are stopping and log why.
pub async fn wait_for_stop(
    signals: &mut Signals,
    activity: &Activity,
    idle_exit: Duration,
    bus: Option<&zbus::Connection>,
) -> StopReason {
    let closed = async {
        match bus {
            Some(conn) => bus_closed(conn).await,
            None => std::future::pending().await,
        }
    };
    let reason = tokio::select! {
        _ = signals.term.recv() => StopReason::Terminated,
        _ = signals.int.recv() => StopReason::Interrupted,
        _ = activity.idle(idle_exit) => StopReason::Idle,
        _ = closed => StopReason::BusClosed,
    };
    crate::systemd::notify_stopping();
    match reason {
        StopReason::Idle => tracing::info!("idle for {idle_exit:?}: exiting ({reason})"),
        _ => tracing::info!("stopping: {reason}"),
    }
    reason
}

/// Resolves when the connection to the bus is gone (e.g. `distributed-store
/// up` stopped its private bus).
async fn bus_closed(conn: &zbus::Connection) {
    use futures::StreamExt;
    let Ok(dbus) = zbus::fdo::DBusProxy::new(conn).await else {
        return;
    };
    let Ok(mut changes) = dbus.receive_name_owner_changed().await else {
        return;
    };
    while changes.next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_quiet_and_for_busy_work() {
        let a = Activity::new();
        let limit = Duration::from_secs(5);
        let guard = a.busy();
        // Busy: never idle, however long.
        assert!(tokio::time::timeout(Duration::from_secs(60), a.idle(limit))
            .await
            .is_err());
        drop(guard);
        let t = tokio::time::Instant::now();
        a.idle(limit).await;
        let waited = t.elapsed();
        assert!(
            waited >= limit && waited < limit + Duration::from_secs(2),
            "{waited:?}"
        );
        // A touch restarts the clock.
        a.touch();
        assert!(a.idle_for() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn zero_means_never() {
        let a = Activity::new();
        assert!(
            tokio::time::timeout(Duration::from_millis(100), a.idle(Duration::ZERO))
                .await
                .is_err()
        );
    }
}
