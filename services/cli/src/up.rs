//! `distributed-store up`: the suite on this machine without systemd.
//!
//! Starts a private `dbus-daemon` whose configuration is the system bus's
//! default-deny policy plus the repo's own policy file and D-Bus activation
//! file (the very files systemd and NixOS install), then the proxy, waits
//! for the proxy's `READY=1` (real sd-notify, on a socket of ours), starts
//! the D-Bus-activated services, prints the substituter URL and public key,
//! and on Ctrl-C or SIGTERM stops everything it started.
//!
//! One tokio runtime, `tokio::process` children. The signal handlers are
//! installed before anything starts, and start-up itself is a future that a
//! signal cancels: an early SIGTERM stops what has started so far, at once.
//! Nothing is ever signalled by a bare PID that could have been reused: the
//! bus and the proxy are our unreaped children, and so are the services the
//! bus activated, because `up` is their subreaper (see [`stop_adopted`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use ds_runtime::Config;
use rustix::process::{Pid, PidfdFlags, Signal};
use tokio::io::AsyncBufReadExt;
use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};

/// The repo's D-Bus policy, compiled in (same file the packages install).
pub const POLICY: &str = include_str!("../../../dist/dbus-1/system.d/org.distributedstore.conf");
/// The repo's D-Bus activation file for the signer (`@bindir@` placeholder).
pub const SIGNER_ACTIVATION: &str =
    include_str!("../../../dist/dbus-1/system-services/org.distributedstore.Signer1.service");
/// The repo's D-Bus activation file for the mapper.
pub const MAPPER_ACTIVATION: &str =
    include_str!("../../../dist/dbus-1/system-services/org.distributedstore.Mapper1.service");
/// The repo's D-Bus activation file for the fetcher.
pub const FETCHER_ACTIVATION: &str =
    include_str!("../../../dist/dbus-1/system-services/org.distributedstore.Fetcher1.service");

/// The D-Bus-activated services: (bus name, activation file name, file).
const ACTIVATED: [(&str, &str, &str); 3] = [
    (
        ds_dbus::SIGNER_NAME,
        "org.distributedstore.Signer1.service",
        SIGNER_ACTIVATION,
    ),
    (
        ds_dbus::MAPPER_NAME,
        "org.distributedstore.Mapper1.service",
        MAPPER_ACTIVATION,
    ),
    (
        ds_dbus::FETCHER_NAME,
        "org.distributedstore.Fetcher1.service",
        FETCHER_ACTIVATION,
    ),
];

/// How long the proxy gets to report READY.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Options of `up`.
pub struct UpOptions {
    /// Config file (None: defaults).
    pub config: Option<PathBuf>,
    /// Runtime dir for the bus and sockets (None: a fresh temp dir, removed at exit).
    pub runtime_dir: Option<PathBuf>,
    /// Directory of the service binaries (None: next to this executable).
    pub bindir: Option<PathBuf>,
}

/// Bus configuration: Debian's system.conf default policy plus our files.
pub fn bus_config(socket: &Path, policy_dir: &Path, service_dir: &Path) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <servicedir>{service_dir}</servicedir>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus" send_member="UpdateActivationEnvironment"/>
  </policy>
  <includedir>{policy_dir}</includedir>
</busconfig>
"#,
        socket = socket.display(),
        policy_dir = policy_dir.display(),
        service_dir = service_dir.display(),
    )
}

/// How long a child gets between SIGTERM and SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What `up` started, stopped in reverse order by [`Suite::stop`] however
/// `up` ends (ready and signalled, failed half-way, or signalled half-way).
#[derive(Default)]
struct Suite {
    bus: Option<Child>,
    proxy: Option<Child>,
    /// The temporary runtime dir, removed after everything stopped.
    tmp: Option<tempfile::TempDir>,
}

impl Suite {
    async fn stop(&mut self) {
        if let Some(p) = self.proxy.as_mut() {
            stop_child("distributed-store-proxy", p).await;
        }
        if let Some(bus) = self.bus.as_mut() {
            // The services first, while the bus still serves them.
            let bus_pid = bus.id();
            stop_adopted(bus_pid).await;
            stop_child("dbus-daemon", bus).await;
        }
        // Whatever the bus left behind (a service still starting) was
        // re-parented to us when the bus exited.
        stop_adopted(None).await;
        drop(self.tmp.take());
    }
}

/// SIGTERM a child of ours, wait up to [`STOP_TIMEOUT`], then SIGKILL.
/// Safe against PID reuse: `id()` is `Some` only while tokio has not reaped
/// the child, and an unreaped child's PID cannot be reused.
async fn stop_child(name: &str, child: &mut Child) {
    let Some(pid) = child.id().and_then(|id| Pid::from_raw(id as i32)) else {
        return; // already reaped
    };
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = rustix::process::kill_process(pid, Signal::TERM);
    if tokio::time::timeout(STOP_TIMEOUT, child.wait())
        .await
        .is_err()
    {
        eprintln!("{name} did not stop within {STOP_TIMEOUT:?} after SIGTERM; killing it");
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

/// PIDs listed as children of `pid` (all its threads), from
/// `/proc/PID/task/*/children`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// Every descendant of `pid`, deepest last.
fn descendants_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children_of(p) {
            if !out.contains(&c) {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

/// Stop every process the bus started: SIGTERM, wait up to
/// [`STOP_TIMEOUT`], SIGKILL, reap.
///
/// dbus-daemon double-forks the services it activates, so they would end
/// up children of init, with PIDs anyone could get once they exit. `up`
/// is a child subreaper (see [`up`]), so they are re-parented to `up`
/// instead: our children, whose PIDs stay theirs until we reap them. The
/// only ones not (yet) ours are those still under the bus (`bus_pid`)
/// half-way through activation; for them the pidfd is kept only if the
/// process is still under the bus or ours after it was opened: then it
/// names that process or, if it died and its PID went to another process
/// of ours in between, an exited one (signalling that is a harmless
/// ESRCH). A stranger's process is never signalled.
async fn stop_adopted(bus_pid: Option<u32>) {
    let me = std::process::id();
    let ours = |bus: Option<u32>| {
        let mut v: Vec<u32> = children_of(me)
            .into_iter()
            .filter(|p| Some(*p) != bus)
            .collect();
        if let Some(b) = bus {
            v.extend(descendants_of(b));
        }
        v
    };
    let mut fds: Vec<(u32, OwnedFd)> = Vec::new();
    for pid in ours(bus_pid) {
        if let Some(fd) = Pid::from_raw(pid as i32)
            .and_then(|p| rustix::process::pidfd_open(p, PidfdFlags::empty()).ok())
        {
            fds.push((pid, fd));
        }
    }
    let still = ours(bus_pid);
    fds.retain(|(pid, _)| still.contains(pid));
    for (_, fd) in &fds {
        let _ = rustix::process::pidfd_send_signal(fd, Signal::TERM);
    }
    for (pid, fd) in fds {
        // A pidfd turns readable when its process exits; poll(2) on a
        // blocking thread (tokio's AsyncFd registration is `unsafe` now).
        let _ = tokio::task::spawn_blocking(move || {
            let t = rustix::event::Timespec {
                tv_sec: STOP_TIMEOUT.as_secs() as _,
                tv_nsec: 0,
            };
            let mut pfd = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            let n = loop {
                match rustix::event::poll(&mut pfd, Some(&t)) {
                    Err(rustix::io::Errno::INTR) => continue,
                    r => break r.unwrap_or(0),
                }
            };
            if n == 0 {
                eprintln!("process {pid} (started by the bus) did not stop within {STOP_TIMEOUT:?} after SIGTERM; killing it");
                let _ = rustix::process::pidfd_send_signal(&fd, Signal::KILL);
            }
            // Reap it if it is ours (ECHILD if it is not: nothing to do).
            let _ = rustix::process::waitid(
                rustix::process::WaitId::PidFd(std::os::fd::AsFd::as_fd(&fd)),
                rustix::process::WaitIdOptions::EXITED,
            );
        })
        .await;
    }
}

fn find_bindir(opt: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = match opt {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .context("locating the directory of this executable")?,
    };
    for b in [
        "distributed-store-proxy",
        "distributed-store-signer",
        "distributed-store-mapper",
        "distributed-store-fetcher",
    ] {
        if !dir.join(b).is_file() {
            bail!(
                "{} not found in {} (build with `cargo build --release`, or pass --bindir)",
                b,
                dir.display()
            );
        }
    }
    Ok(dir)
}

/// URL a local Nix should use for a listen address (wildcards → loopback).
pub fn substituter_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    match ip {
        IpAddr::V6(v) => format!("http://[{v}]:{}", listen.port()),
        IpAddr::V4(v) => format!("http://{v}:{}", listen.port()),
    }
}

/// Run the suite in the foreground until Ctrl-C / SIGTERM, on one
/// current-thread tokio runtime.
pub fn up(opts: UpOptions) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(up_async(opts))
}

async fn up_async(opts: UpOptions) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Handlers first: from here on a SIGTERM or Ctrl-C cancels start-up
    // wherever it is, and what already started is stopped below.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // Services the bus activates (and double-forks) become our children
    // when their parent exits, not init's: see [`stop_adopted`].
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .context("prctl(PR_SET_CHILD_SUBREAPER)")?;
    let mut suite = Suite::default();
    let result = tokio::select! {
        r = run(opts, &mut suite) => r,
        _ = term.recv() => Ok(()),
        _ = int.recv() => Ok(()),
    };
    suite.stop().await;
    result.map(|()| println!("stopped"))
}

/// Start everything, tell the user, and wait for the proxy to exit (which
/// is an error: only a signal ends `up` normally, by cancelling this).
async fn run(opts: UpOptions, suite: &mut Suite) -> anyhow::Result<()> {
    // 1. Everything that can be wrong in the config is reported before anything starts.
    let config = match &opts.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let config_path = match &opts.config {
        Some(p) => Some(std::fs::canonicalize(p)?),
        None => None,
    };
    if let Some(k) = &config.private_key_file {
        std::fs::File::open(k).with_context(|| format!("privateKeyFile {}", k.display()))?;
    }
    let bindir = find_bindir(opts.bindir)?;
    let dbus_daemon = which("dbus-daemon")
        .context("dbus-daemon not found (Debian: apt-get install dbus-daemon)")?;

    // 2. Runtime dir with the bus config, our policy and activation file.
    // A directory the user named and that exists is used as it is: its
    // mode is theirs (other users' services need to reach the bus socket
    // in it, which is their call). One we create is 0755 for that reason.
    let dir = match opts.runtime_dir {
        Some(d) => {
            if !d.is_dir() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&d)
                    .with_context(|| format!("creating --runtime-dir {}", d.display()))?;
            }
            std::fs::canonicalize(&d)?
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("distributed-store-up.")
                .tempdir()?;
            let p = t.path().to_path_buf();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
            suite.tmp = Some(t);
            p
        }
    };
    let policy_dir = dir.join("system.d");
    let service_dir = dir.join("system-services");
    std::fs::create_dir_all(&policy_dir)?;
    std::fs::create_dir_all(&service_dir)?;
    std::fs::write(policy_dir.join("org.distributedstore.conf"), POLICY)?;
    for (_, file, text) in ACTIVATED {
        std::fs::write(
            service_dir.join(file),
            text.replace("@bindir@", &bindir.display().to_string()),
        )?;
    }
    let socket = dir.join("bus.sock");
    let _ = std::fs::remove_file(&socket);
    let bus_conf = dir.join("bus.conf");
    std::fs::write(&bus_conf, bus_config(&socket, &policy_dir, &service_dir))?;
    let bus_address = format!("unix:path={}", socket.display());
    let effective = effective_config(config_path.as_deref(), &dir)?;
    let listen = Config::load(&effective)?.listen;

    // 3. The bus. Activated services inherit its environment.
    let env: [(&str, String); 2] = [
        ("DBUS_SYSTEM_BUS_ADDRESS", bus_address.clone()),
        ("DISTRIBUTED_STORE_CONFIG", effective.display().to_string()),
    ];
    let mut cmd = Command::new(&dbus_daemon);
    cmd.arg(format!("--config-file={}", bus_conf.display()))
        .arg("--nofork")
        .arg("--print-address=1")
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .envs(env.iter().map(|(k, v)| (k, v)));
    let bus = suite
        .bus
        .insert(cmd.spawn().context("starting dbus-daemon")?);
    let stdout = bus.stdout.take().context("dbus-daemon stdout")?;
    let mut line = String::new();
    tokio::io::BufReader::new(stdout)
        .read_line(&mut line)
        .await?;
    if line.trim().is_empty() {
        bail!("dbus-daemon exited before listening (see its messages above)");
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;

    // 4. The proxy, with NOTIFY_SOCKET pointing at us.
    let notify_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path)?;
    let mut cmd = Command::new(bindir.join("distributed-store-proxy"));
    cmd.env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .envs(env.iter().map(|(k, v)| (k, v)));
    let proxy = suite
        .proxy
        .insert(cmd.spawn().context("starting the proxy")?);
    tokio::time::timeout(READY_TIMEOUT, wait_ready(&notify, proxy))
        .await
        .map_err(|_| {
            anyhow::anyhow!("the proxy did not report READY within {READY_TIMEOUT:?}")
        })??;
    // All four run from the start: the mapper indexes the store and polls
    // peers before anyone asks, and a broken fetcher or signer shows now,
    // not at the first request. (D-Bus activation would start them anyway.)
    let conn = crate::status::connect(Some(&bus_address)).await?;
    for (name, _, _) in ACTIVATED {
        if let Err(e) = start_service(&conn, name).await {
            bail!("{name} did not start: {e:#}");
        }
    }

    // 5. Tell the user what to do.
    let url = substituter_url(listen);
    let key = signer_public_key(&conn).await;
    let env_file = dir.join("up.env");
    std::fs::write(
        &env_file,
        format!("DBUS_SYSTEM_BUS_ADDRESS={bus_address}\nDISTRIBUTED_STORE_URL={url}\nDISTRIBUTED_STORE_PUBLIC_KEY={}\n", key.clone().unwrap_or_default()),
    )?;
    println!("distributed-store is up");
    println!("  substituter:  {url}");
    match key {
        Some(k) => println!("  public key:   {k}"),
        None => println!(
            "  public key:   (none: no privateKeyFile; narinfo carries the stored signatures only)"
        ),
    }
    println!("  bus:          {bus_address}");
    println!("  status:       DBUS_SYSTEM_BUS_ADDRESS={bus_address} distributed-store status");
    println!("  use it:       nix-store -r PATH --option substituters {url} --option trusted-public-keys '<key>'");
    println!("Ctrl-C stops everything.");

    // 6. Wait: only the proxy's exit ends this by itself.
    let status = proxy.wait().await?;
    bail!("the proxy exited unexpectedly ({status})")
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Wait for `READY=1` on the notify socket, or fail if the proxy exits first.
async fn wait_ready(notify: &UnixDatagram, proxy: &mut Child) -> anyhow::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            status = proxy.wait() => {
                bail!("the proxy exited during start-up ({}); see its messages above", status?);
            }
            n = notify.recv(&mut buf) => {
                let msg = String::from_utf8_lossy(&buf[..n?]);
                if msg.lines().any(|l| l == "READY=1") {
                    return Ok(());
                }
            }
        }
    }
}

async fn signer_public_key(conn: &zbus::Connection) -> Option<String> {
    let p = ds_dbus::Signer1Proxy::builder(conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .ok()?;
    tokio::time::timeout(Duration::from_secs(30), p.public_key())
        .await
        .ok()?
        .ok()
        .filter(|k| !k.is_empty())
}

/// D-Bus-activate `name` now (StartServiceByName) and wait for it.
async fn start_service(conn: &zbus::Connection, name: &str) -> anyhow::Result<()> {
    let dbus = zbus::fdo::DBusProxy::new(conn).await?;
    let name = zbus::names::WellKnownName::try_from(name)?;
    tokio::time::timeout(READY_TIMEOUT, dbus.start_service_by_name(name, 0))
        .await
        .context("timed out")??;
    Ok(())
}

/// `listen` of `up` when the config sets none: loopback only.
pub const UP_DEFAULT_LISTEN: &str = "127.0.0.1:5496";

/// The config the services read: the user's file, with `stateDirectory`
/// and `cacheDirectory` defaulting to the runtime dir instead of
/// /var/lib and /var/cache (a development or test node should not write
/// to the system's directories unless told to), and `listen` to
/// [`UP_DEFAULT_LISTEN`].
fn effective_config(user: Option<&Path>, dir: &Path) -> anyhow::Result<PathBuf> {
    let text = match user {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => String::new(),
    };
    let table: toml::Table = toml::from_str(&text).context("config")?;
    let mut head = String::new();
    for (key, sub) in [("stateDirectory", "state"), ("cacheDirectory", "cache")] {
        if !table.contains_key(key) {
            let v = toml::Value::String(dir.join(sub).display().to_string());
            head.push_str(&format!("{key} = {v}\n"));
        }
    }
    // A development node is not exposed to the network unless asked: the
    // services' default (all interfaces, for a fleet member) becomes
    // loopback here, matching the URL `up` prints.
    if !table.contains_key("listen") {
        head.push_str(&format!("listen = \"{UP_DEFAULT_LISTEN}\"\n"));
    }
    // Prepended: keys after a [table] header would belong to that table.
    let out = dir.join("config.toml");
    std::fs::write(
        &out,
        format!("# written by distributed-store up\n{head}{text}"),
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            substituter_url("0.0.0.0:5496".parse().unwrap()),
            "http://127.0.0.1:5496"
        );
        assert_eq!(
            substituter_url("[::]:5496".parse().unwrap()),
            "http://127.0.0.1:5496"
        );
        assert_eq!(
            substituter_url("10.0.0.2:80".parse().unwrap()),
            "http://10.0.0.2:80"
        );
        assert_eq!(
            substituter_url("[::1]:80".parse().unwrap()),
            "http://[::1]:80"
        );
    }

    #[test]
    fn effective_config_keeps_user_keys_and_defaults_dirs_to_the_runtime_dir() {
        let d = tempfile::tempdir().unwrap();
        let user = d.path().join("user.toml");
        std::fs::write(
            &user,
            "cacheDirectory = \"/srv/c\"\n[[upstreams]]\nurl = \"http://u:1\"\n",
        )
        .unwrap();
        let out = effective_config(Some(&user), d.path()).unwrap();
        let c = Config::load(&out).unwrap();
        assert_eq!(c.state_directory, d.path().join("state"));
        assert_eq!(c.cache_directory, PathBuf::from("/srv/c"));
        assert_eq!(c.upstreams.len(), 1);
        let c = Config::load(&effective_config(None, d.path()).unwrap()).unwrap();
        assert_eq!(c.cache_directory, d.path().join("cache"));
    }

    #[test]
    fn up_listens_on_loopback_unless_listen_is_set() {
        let d = tempfile::tempdir().unwrap();
        let c = Config::load(&effective_config(None, d.path()).unwrap()).unwrap();
        assert!(c.listen.ip().is_loopback(), "{}", c.listen);
        assert_eq!(c.listen.port(), ds_runtime::config::DEFAULT_PORT);
        let user = d.path().join("user.toml");
        std::fs::write(&user, "[backends.mirrors]\nurls = [\"http://m:1\"]\n").unwrap();
        let c = Config::load(&effective_config(Some(&user), d.path()).unwrap()).unwrap();
        assert!(c.listen.ip().is_loopback(), "{}", c.listen);
        assert!(
            c.backends.mirrors.is_some(),
            "the user's tables stay tables"
        );
        std::fs::write(&user, "listen = \"[::]:6000\"\n").unwrap();
        let c = Config::load(&effective_config(Some(&user), d.path()).unwrap()).unwrap();
        assert_eq!(
            c.listen,
            "[::]:6000".parse().unwrap(),
            "an explicit listen is kept"
        );
    }

    #[test]
    fn activation_file_has_placeholder() {
        assert!(SIGNER_ACTIVATION.contains("Exec=@bindir@/distributed-store-signer"));
        assert!(POLICY.contains("send_member=\"Sign\""));
    }
}
