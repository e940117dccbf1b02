//! systemd integration: readiness and watchdog via `sd_notify`, socket
//! activation via `LISTEN_FDS`. Every function is a no-op outside systemd.

use std::os::fd::FromRawFd;
use std::time::Duration;

use sd_notify::NotifyState;

/// Tell systemd we are ready (Type=notify), with a status line.
pub fn notify_ready(status: &str) {
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]) {
        tracing::warn!("sd_notify READY failed: {e}");
    }
}

/// Tell systemd we are stopping.
pub fn notify_stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// Update the status line shown by `systemctl status`.
pub fn notify_status(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Status(status)]);
}

/// If systemd asked for a watchdog (`WATCHDOG_USEC`), ping it at half the
/// interval from a background task for as long as the runtime lives. The
/// ping runs on the same runtime as the service, so a wedged runtime stops it.
pub fn spawn_watchdog() {
    if let Some(interval) = sd_notify::watchdog_enabled() {
        let period = (interval / 2).max(Duration::from_millis(100));
        tracing::debug!(?period, "systemd watchdog enabled");
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            }
        });
    }
}

/// Listening TCP sockets passed by systemd (`.socket` unit or
/// `systemd-socket-activate`), or an empty vector when not socket-activated.
/// The environment variables are consumed so children do not inherit them.
pub fn take_listeners() -> std::io::Result<Vec<std::net::TcpListener>> {
    let fds: Vec<_> = match sd_notify::listen_fds() {
        Ok(fds) => fds.collect(),
        Err(e) => {
            return Err(std::io::Error::other(format!(
                "invalid LISTEN_FDS/LISTEN_PID from systemd: {e}"
            )));
        }
    };
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        // SAFETY-free: std::env::remove_var is safe on edition 2021 and we are
        // single-threaded here (called before the runtime starts workers).
        std::env::remove_var(var);
    }
    let mut out = Vec::new();
    for fd in fds {
        // SAFETY: systemd passed us ownership of these descriptors, and
        // listen_fds() verified LISTEN_PID is our pid.
        let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        l.set_nonblocking(true)?;
        out.push(l);
    }
    Ok(out)
}
