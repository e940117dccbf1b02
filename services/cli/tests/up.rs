//! `distributed-store up` as a real process: a real dbus-daemon, the real
//! proxy, signer, mapper and fetcher (the release binaries next to the
//! `distributed-store` under test: `cargo build --release -p ds-proxy -p
//! ds-signer -p ds-mapper -p ds-fetcher` first), an empty chroot Nix store
//! made with `nix-store --init`, loopback only.
//!
//! What is proved: a SIGTERM at any point of start-up stops `up` promptly
//! and leaves no process behind (bus, proxy, activated services), and
//! `up` does not change the mode of a `--runtime-dir` that already exists.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bindir() -> PathBuf {
    let cli = PathBuf::from(env!("CARGO_BIN_EXE_distributed-store"));
    let dir = cli.parent().expect("bin dir").to_path_buf();
    for b in [
        "distributed-store-proxy",
        "distributed-store-signer",
        "distributed-store-mapper",
        "distributed-store-fetcher",
    ] {
        assert!(
            dir.join(b).is_file(),
            "{b} missing in {}: cargo build --release -p ds-proxy -p ds-signer -p ds-mapper -p ds-fetcher",
            dir.display()
        );
    }
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A work dir with an empty chroot store and a config for it.
fn setup() -> (tempfile::TempDir, PathBuf) {
    let w = tempfile::Builder::new()
        .prefix("ds-up-test.")
        .tempdir()
        .unwrap();
    let store = w.path().join("store");
    let st = Command::new("nix-store")
        .arg("--init")
        .env("NIX_REMOTE", format!("local?root={}", store.display()))
        .stderr(Stdio::null())
        .status()
        .expect("nix-store (Debian: nix-bin) runs");
    assert!(st.success(), "nix-store --init");
    let config = w.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{}\"\nstore = \"local?root={}\"\ndiscovery = false\n",
            free_port(),
            store.display()
        ),
    )
    .unwrap();
    (w, config)
}

fn spawn_up(w: &Path, config: &Path, run: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_distributed-store"))
        .arg("up")
        .arg("--config")
        .arg(config)
        .arg("--runtime-dir")
        .arg(run)
        .arg("--bindir")
        .arg(bindir())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(w.join("up.out")).unwrap())
        .stderr(std::fs::File::create(w.join("up.err")).unwrap())
        .spawn()
        .expect("spawn distributed-store up")
}

fn wait_for(path: &Path, up: &mut Child, timeout: Duration) {
    let t = Instant::now();
    while !path.exists() {
        if let Ok(Some(s)) = up.try_wait() {
            panic!("up exited ({s}) before {} appeared", path.display());
        }
        assert!(t.elapsed() < timeout, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn sigterm(child: &Child) {
    // The child is ours and not yet reaped: its PID is not reusable.
    let pid = rustix::process::Pid::from_child(child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
}

fn wait_exit(up: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = up.try_wait().unwrap() {
            return s;
        }
        if t.elapsed() > timeout {
            let _ = up.kill();
            let _ = up.wait();
            panic!("up did not exit within {timeout:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes whose command line or environment names `dir` (everything
/// `up` starts gets the run dir in one or the other: the bus its
/// `--config-file`, the services `DISTRIBUTED_STORE_CONFIG`).
fn processes_naming(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        for f in ["cmdline", "environ"] {
            if let Ok(b) = std::fs::read(e.path().join(f)) {
                if String::from_utf8_lossy(&b).contains(&needle) {
                    let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                    found.push(format!(
                        "{name}: {}",
                        String::from_utf8_lossy(&cmd).replace('\0', " ")
                    ));
                    break;
                }
            }
        }
    }
    found
}

/// (pid, parent pid, program) of every process naming `dir`.
fn family(dir: &Path) -> Vec<(u32, u32, String)> {
    processes_naming(dir)
        .iter()
        .filter_map(|line| {
            let pid: u32 = line.split(':').next()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // comm may hold spaces: the fields after its closing paren.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            Some((pid, ppid, exe.file_name()?.to_string_lossy().to_string()))
        })
        .collect()
}

fn assert_nothing_left(run: &Path) {
    // Give the kernel a moment to reap what exited with its parent.
    let t = Instant::now();
    loop {
        let left = processes_naming(run);
        if left.is_empty() {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "left running after up exited: {left:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM when `trigger` appears in the run dir; `up` must exit 0 within
/// a few seconds, not claim to be up when signalled before that, and leave
/// nothing running.
fn sigterm_at(trigger: &str, expect_up_printed: bool) {
    let (w, config) = setup();
    let run = w.path().join("run");
    let mut up = spawn_up(w.path(), &config, &run);
    wait_for(&run.join(trigger), &mut up, Duration::from_secs(90));
    if expect_up_printed {
        // Every service runs as a child of `up` (dbus-daemon double-forks
        // what it activates; `up` is their subreaper), so `up` stops them
        // through PIDs that cannot have been reused.
        let fam = family(&run);
        for svc in ["signer", "mapper", "fetcher", "proxy"] {
            let name = format!("distributed-store-{svc}");
            let p = fam.iter().find(|(_, _, exe)| *exe == name);
            let (pid, ppid, _) = p.unwrap_or_else(|| panic!("{name} not running: {fam:?}"));
            assert_eq!(
                *ppid,
                up.id(),
                "{name} ({pid}) is not a child of up: {fam:?}"
            );
        }
    }
    sigterm(&up);
    let t = Instant::now();
    let status = wait_exit(&mut up, Duration::from_secs(30));
    let took = t.elapsed();
    let out = std::fs::read_to_string(w.path().join("up.out")).unwrap();
    let err = std::fs::read_to_string(w.path().join("up.err")).unwrap();
    assert!(status.success(), "{trigger}: exit {status}\n{out}\n{err}");
    assert!(out.contains("stopped"), "{trigger}: {out}");
    assert_eq!(
        out.contains("distributed-store is up"),
        expect_up_printed,
        "{trigger}: a SIGTERM during start-up must cancel it:\n{out}"
    );
    assert!(
        took < Duration::from_secs(12),
        "{trigger}: took {took:?} to stop"
    );
    assert_nothing_left(&run);
}

#[test]
fn sigterm_while_the_bus_starts_stops_everything() {
    sigterm_at("bus.conf", false);
}

#[test]
fn sigterm_while_the_proxy_starts_stops_everything() {
    sigterm_at("notify.sock", false);
}

#[test]
fn sigterm_when_up_stops_every_service_it_started() {
    sigterm_at("up.env", true);
}

#[test]
fn an_existing_runtime_dir_keeps_its_mode() {
    let (w, config) = setup();
    let run = w.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut up = spawn_up(w.path(), &config, &run);
    wait_for(&run.join("up.env"), &mut up, Duration::from_secs(90));
    let mode = std::fs::metadata(&run).unwrap().permissions().mode() & 0o7777;
    sigterm(&up);
    assert!(wait_exit(&mut up, Duration::from_secs(30)).success());
    assert_eq!(
        mode, 0o700,
        "up changed the mode of an existing --runtime-dir"
    );
    // A run dir up creates itself is 0755 (services of other users reach the bus).
    let (w2, config2) = setup();
    let fresh = w2.path().join("a/b/run");
    let mut up = spawn_up(w2.path(), &config2, &fresh);
    wait_for(&fresh.join("up.env"), &mut up, Duration::from_secs(90));
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o7777;
    sigterm(&up);
    assert!(wait_exit(&mut up, Duration::from_secs(30)).success());
    assert_eq!(mode, 0o755);
}
