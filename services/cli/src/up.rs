//! `distributed-store up`: the suite on this machine without systemd.
//!
//! Starts a private `dbus-daemon` whose configuration is the system bus's
//! default-deny policy plus the repo's own policy file and D-Bus activation
//! file (the very files systemd and NixOS install), then the proxy, waits
//! for the proxy's `READY=1` (real sd-notify, on a socket of ours), prints
//! the substituter URL and public key, and on Ctrl-C or SIGTERM stops
//! everything it started, by PID.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ds_runtime::Config;

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

/// A child we started, stopped by PID on drop.
struct Guard {
    name: &'static str,
    child: Child,
}

impl Guard {
    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: plain kill(2) on the PID of a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{} did not stop within 10s after SIGTERM; killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
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

/// Run the suite in the foreground until Ctrl-C / SIGTERM.
pub fn up(opts: UpOptions) -> anyhow::Result<()> {
    // Handlers first: a SIGTERM during start-up must still stop what started.
    install_signal_handlers();
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
    let (dir, _tmp) = match opts.runtime_dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            (std::fs::canonicalize(&d)?, None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("distributed-store-up.")
                .tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
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

    // 3. The bus. Activated services inherit its environment.
    let mut env: Vec<(&str, String)> = vec![("DBUS_SYSTEM_BUS_ADDRESS", bus_address.clone())];
    let effective = effective_config(config_path.as_deref(), &dir)?;
    env.push(("DISTRIBUTED_STORE_CONFIG", effective.display().to_string()));
    let mut cmd = Command::new(&dbus_daemon);
    cmd.arg(format!("--config-file={}", bus_conf.display()))
        .arg("--nofork")
        .arg("--print-address=1")
        .stdout(Stdio::piped())
        .stdin(Stdio::null());
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let mut bus = Guard {
        name: "dbus-daemon",
        child: cmd.spawn().context("starting dbus-daemon")?,
    };
    let stdout = bus.child.stdout.take().context("dbus-daemon stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if line.trim().is_empty() {
        bail!("dbus-daemon exited before listening (see its messages above)");
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;

    // 4. The proxy, with NOTIFY_SOCKET pointing at us.
    let notify_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path)?;
    notify.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut cmd = Command::new(bindir.join("distributed-store-proxy"));
    cmd.env("NOTIFY_SOCKET", &notify_path).stdin(Stdio::null());
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let mut proxy = Guard {
        name: "distributed-store-proxy",
        child: cmd.spawn().context("starting the proxy")?,
    };
    wait_ready(&notify, &mut proxy.child)?;
    // All four run from the start: the mapper indexes the store and polls
    // peers before anyone asks, and a broken fetcher or signer shows now,
    // not at the first request. (D-Bus activation would start them anyway.)
    for (name, _, _) in ACTIVATED {
        if let Err(e) = start_service(&bus_address, name) {
            bail!("{name} did not start: {e:#}");
        }
    }

    // 5. Tell the user what to do.
    let url = substituter_url(config.listen);
    let key = if config.private_key_file.is_some() {
        signer_public_key(&bus_address)
    } else {
        None
    };
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

    // 6. Wait for a signal or an unexpected exit.
    let signals = wait_for_signal_or_exit(&mut proxy.child)?;
    let activated_pids: Vec<u32> = ACTIVATED
        .iter()
        .filter_map(|(name, _, _)| service_pid(&bus_address, name))
        .collect();
    proxy.stop();
    for pid in &activated_pids {
        // SAFETY: kill(2) on a service dbus-daemon spawned for this bus; it
        // exits on its own when the bus goes away, this just hurries it.
        unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
    }
    bus.stop();
    drop(_tmp);
    match signals {
        Stop::Signal => {
            println!("stopped");
            Ok(())
        }
        Stop::ProxyExited(status) => bail!("the proxy exited unexpectedly ({status})"),
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn wait_ready(notify: &UnixDatagram, proxy: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Some(status) = proxy.try_wait()? {
            bail!("the proxy exited during start-up ({status}); see its messages above");
        }
        match notify.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]);
                if msg.lines().any(|l| l == "READY=1") {
                    return Ok(());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    bail!("the proxy did not report READY within {READY_TIMEOUT:?}")
}

enum Stop {
    Signal,
    ProxyExited(std::process::ExitStatus),
}

static SIGNALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

fn wait_for_signal_or_exit(proxy: &mut Child) -> anyhow::Result<Stop> {
    loop {
        if SIGNALLED.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(Stop::Signal);
        }
        if let Some(status) = proxy.try_wait()? {
            return Ok(Stop::ProxyExited(status));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn block_on<F: std::future::Future>(f: F) -> Option<F::Output> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()
        .map(|rt| rt.block_on(f))
}

fn signer_public_key(bus: &str) -> Option<String> {
    block_on(async {
        let conn = crate::status::connect(Some(bus)).await.ok()?;
        let p = ds_dbus::Signer1Proxy::builder(&conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .ok()?;
        tokio::time::timeout(Duration::from_secs(30), p.public_key())
            .await
            .ok()?
            .ok()
    })
    .flatten()
    .filter(|k| !k.is_empty())
}

fn service_pid(bus: &str, name: &str) -> Option<u32> {
    block_on(async {
        let conn = crate::status::connect(Some(bus)).await.ok()?;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await.ok()?;
        let name = zbus::names::BusName::try_from(name).ok()?;
        dbus.get_connection_unix_process_id(name).await.ok()
    })
    .flatten()
}

/// D-Bus-activate `name` now (StartServiceByName) and wait for it.
fn start_service(bus: &str, name: &str) -> anyhow::Result<()> {
    block_on(async {
        let conn = crate::status::connect(Some(bus)).await?;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
        let name = zbus::names::WellKnownName::try_from(name)?;
        tokio::time::timeout(READY_TIMEOUT, dbus.start_service_by_name(name, 0))
            .await
            .context("timed out")??;
        anyhow::Ok(())
    })
    .context("no async runtime")?
}

/// The config the services read: the user's file, with `stateDirectory`
/// and `cacheDirectory` defaulting to the runtime dir instead of
/// /var/lib and /var/cache (a development or test node should not write
/// to the system's directories unless told to).
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
    fn activation_file_has_placeholder() {
        assert!(SIGNER_ACTIVATION.contains("Exec=@bindir@/distributed-store-signer"));
        assert!(POLICY.contains("send_member=\"Sign\""));
    }
}
