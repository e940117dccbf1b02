//! systemd integration: readiness and watchdog via `sd_notify`, socket
//! activation via `LISTEN_FDS`. Every function is a no-op outside systemd.

use std::os::fd::{FromRawFd, OwnedFd};
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
/// Each descriptor is checked to be a listening TCP socket (see
/// [`tcp_listener`]): a `.socket` unit edited to `ListenDatagram=` or
/// `ListenStream=/run/x.sock` is an error at start, not a listener that
/// fails on its first `accept`.
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
        // std::env::remove_var is safe on edition 2021 and we are
        // single-threaded here (called before the runtime starts workers).
        std::env::remove_var(var);
    }
    let mut out = Vec::new();
    for fd in fds {
        // Unavoidable: taking ownership of a descriptor number we inherited
        // is what socket activation is; nothing safe can express it.
        #[allow(unsafe_code)]
        // SAFETY: systemd passed us ownership of these descriptors (fd 3 up
        // to 3+LISTEN_FDS), listen_fds() verified LISTEN_PID is our pid, and
        // each is taken exactly once here.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        out.push(tcp_listener(owned)?);
    }
    Ok(out)
}

/// Turn an inherited descriptor into a non-blocking TCP listener, after
/// checking that it is one: an IPv4/IPv6 stream socket in the listening
/// state. Anything else (a Unix socket, UDP, a connected TCP socket, a
/// file) is an error that says what it is.
pub fn tcp_listener(fd: OwnedFd) -> std::io::Result<std::net::TcpListener> {
    use rustix::net::{sockopt, AddressFamily, SocketType};
    let what = |e: rustix::io::Errno| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("inherited descriptor is not a socket ({e}); expected a listening TCP socket"),
        )
    };
    let family = sockopt::socket_domain(&fd).map_err(what)?;
    let kind = sockopt::socket_type(&fd).map_err(what)?;
    let wrong = |msg: String| {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "inherited socket is {msg}; the proxy needs a listening TCP socket (ListenStream=PORT or ADDRESS:PORT in the .socket unit)"
            ),
        ))
    };
    let family_name = match family {
        AddressFamily::INET => "AF_INET",
        AddressFamily::INET6 => "AF_INET6",
        AddressFamily::UNIX => return wrong("AF_UNIX (a Unix socket)".into()),
        other => return wrong(format!("of address family {}", other.as_raw())),
    };
    if kind != SocketType::STREAM {
        let k = if kind == SocketType::DGRAM {
            "SOCK_DGRAM (UDP)".to_string()
        } else {
            format!("of socket type {}", kind.as_raw())
        };
        return wrong(format!("{family_name} {k}"));
    }
    if !sockopt::socket_acceptconn(&fd).map_err(what)? {
        return wrong(format!(
            "{family_name} TCP but not listening (a connected or unbound socket)"
        ));
    }
    let l = std::net::TcpListener::from(fd);
    l.set_nonblocking(true)?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(fd: OwnedFd) -> String {
        tcp_listener(fd).unwrap_err().to_string()
    }

    #[test]
    fn inherited_sockets_are_checked_for_their_family() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = err(a.into());
        assert!(e.contains("AF_UNIX"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let ul = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        assert!(err(ul.into()).contains("AF_UNIX"));
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = err(udp.into());
        assert!(e.contains("UDP"), "{e}");
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let c = std::net::TcpStream::connect(addr).unwrap();
        let e = err(c.into());
        assert!(e.contains("not listening"), "{e}");
        let file = std::fs::File::open("/dev/null").unwrap();
        let e = err(file.into());
        assert!(e.contains("not a socket"), "{e}");
        // The real thing passes, non-blocking, and accepts.
        let ok = tcp_listener(l.into()).unwrap();
        assert_eq!(ok.local_addr().unwrap(), addr);
        let _c = std::net::TcpStream::connect(addr).unwrap();
        let v6 = std::net::TcpListener::bind("[::1]:0");
        if let Ok(v6) = v6 {
            tcp_listener(v6.into()).unwrap();
        }
    }
}
