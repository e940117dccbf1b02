//! Shared by the proxy's integration tests: a private daemonless Nix store
//! (Debian nix-bin 2.8, root: a chroot store `local?root=DIR/root`, toy
//! derivations built offline with the sandbox's `/bin/sh` = static busybox),
//! the real proxy binary serving it on 127.0.0.1, and a raw HTTP/1.1 client
//! (so that what the tests see is the bytes on the wire).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod load;
#[allow(unused_imports)] // not every test uses the load helpers
pub use load::*;

/// A child process that is killed and reaped when dropped.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A private `dbus-daemon` (the session policy lets anyone own any name)
/// and its address, for `DBUS_SYSTEM_BUS_ADDRESS`.
pub fn private_bus() -> (Kill, String) {
    let mut daemon = Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--print-address=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dbus-daemon");
    let out = daemon.stdout.take().expect("dbus-daemon stdout");
    let daemon = Kill(daemon);
    let mut bus = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut bus).unwrap();
    (daemon, bus.trim().to_string())
}

/// Another of the workspace's binaries, next to the proxy's in the same
/// target directory (`cargo build --release -p <krate>` builds it).
pub fn sibling_bin(name: &str, krate: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_distributed-store-proxy")).with_file_name(name);
    assert!(
        p.exists(),
        "{} missing: cargo build --release -p {krate}",
        p.display()
    );
    p
}

/// Return from the test with a note when Nix is not installed or we are not root.
#[macro_export]
macro_rules! require_nix {
    () => {
        if !$crate::common::nix_available() {
            eprintln!("skipping: needs root and nix-store (Debian: apt-get install nix-bin busybox-static)");
            return;
        }
    };
}

pub fn nix_available() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    root && Command::new("nix-store")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

const FIXTURE: &str = r#"
{ salt ? "", bigMiB ? 16 }:
let
  mk = name: script: derivation {
    inherit name salt;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
  };
  leaf = mk "px-leaf" ''echo "leaf data ${salt}" > $out'';
  big = mk "px-big" ''
    mkdir -p $out/sub
    head -c 300000 /dev/urandom > $out/a
    head -c ${toString (bigMiB * 1048576)} /dev/urandom > $out/blob
    echo small > $out/sub/z
    ln -s blob $out/link
  '';
in { inherit leaf big; }
"#;

/// One private store in a temporary directory (removed on drop).
pub struct NixEnv {
    dir: tempfile::TempDir,
}

impl NixEnv {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ds-proxy-test-")
            .tempdir()
            .expect("temp dir");
        for sub in [
            "root",
            "etc",
            "xdg/cache",
            "xdg/config",
            "xdg/data",
            "xdg/state",
        ] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("fixture.nix"), FIXTURE).unwrap();
        NixEnv { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn db_file(&self) -> PathBuf {
        self.root().join("nix/var/nix/db/db.sqlite")
    }

    /// Where a store path's files physically are.
    pub fn physical(&self, store_path: &str) -> PathBuf {
        self.root().join(store_path.trim_start_matches('/'))
    }

    pub fn cmd(&self, program: &str) -> Command {
        let d = self.dir.path();
        let mut c = Command::new(program);
        c.env(
            "NIX_REMOTE",
            format!("local?root={}", self.root().display()),
        )
        .env("NIX_CONF_DIR", d.join("etc"))
        .env("XDG_CACHE_HOME", d.join("xdg/cache"))
        .env("XDG_CONFIG_HOME", d.join("xdg/config"))
        .env("XDG_DATA_HOME", d.join("xdg/data"))
        .env("XDG_STATE_HOME", d.join("xdg/state"))
        .env(
            "NIX_CONFIG",
            "experimental-features = nix-command\n\
                 build-users-group =\n\
                 sandbox = true\n\
                 sandbox-paths = /bin/sh=/bin/busybox\n\
                 substituters =\n",
        )
        .stdin(Stdio::null());
        for var in ["http_proxy", "https_proxy", "all_proxy", "NIX_PATH"] {
            c.env_remove(var);
        }
        c
    }

    pub fn run(&self, program: &str, args: &[&str]) -> Vec<u8> {
        let out = self.cmd(program).args(args).output().expect(program);
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Build an attribute of the fixture (`big` has `big_mib` MiB in `blob`).
    pub fn build(&self, attr: &str, big_mib: u32) -> String {
        let fixture = self.dir.path().join("fixture.nix");
        let out = self.run(
            "nix-build",
            &[
                fixture.to_str().unwrap(),
                "-A",
                attr,
                "--arg",
                "bigMiB",
                &big_mib.to_string(),
                "--no-out-link",
                "--quiet",
            ],
        );
        String::from_utf8(out).unwrap().trim().to_string()
    }

    /// `nix-store --add` a file (a content-addressed path).
    pub fn add_file(&self, name: &str, contents: &[u8]) -> String {
        let src = self.dir.path().join("src").join(name);
        std::fs::create_dir_all(src.parent().unwrap()).unwrap();
        std::fs::write(&src, contents).unwrap();
        let out = self.run("nix-store", &["--add", src.to_str().unwrap()]);
        String::from_utf8(out).unwrap().trim().to_string()
    }

    /// The NAR as Nix serializes it (`nix store dump-path`, which reads the
    /// chroot store; `nix-store --dump` would read the host path).
    pub fn dump(&self, store_path: &str) -> Vec<u8> {
        self.run("nix", &["store", "dump-path", store_path])
    }
}

/// The 32-character hash part of a store path.
pub fn hash_part(store_path: &str) -> &str {
    &store_path["/nix/store/".len().."/nix/store/".len() + 32]
}

/// The real proxy binary on 127.0.0.1 (killed on drop).
pub struct Proxy {
    child: Child,
    pub addr: std::net::SocketAddr,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Serve `store_root` with `extra` config lines; D-Bus at `bus` (an
    /// address), or none (a socket path that does not exist).
    pub fn start(store_root: &Path, extra: &str, bus: Option<&str>) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{addr}\"\nstore = \"local?root={}\"\ndiscovery = false\n{extra}\n",
                store_root.display()
            ),
        )
        .unwrap();
        let log = dir.path().join("proxy.log");
        let no_bus = format!("unix:path={}/no-bus", dir.path().display());
        let child = Command::new(env!("CARGO_BIN_EXE_distributed-store-proxy"))
            .arg("--config")
            .arg(&config)
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus.unwrap_or(&no_bus))
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting the proxy");
        let mut proxy = Proxy {
            child,
            addr,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline || proxy.child.try_wait().ok().flatten().is_some() {
                panic!("proxy did not start:\n{}", proxy.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        proxy
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The NAR URL path (`/nar/…`) the narinfo of `store_path` names.
    pub async fn nar_url(&self, store_path: &str) -> String {
        let r = get(
            self.addr,
            &format!("/{}.narinfo", hash_part(store_path)),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let text = String::from_utf8(r.body).unwrap();
        let url = text
            .lines()
            .find_map(|l| l.strip_prefix("URL: "))
            .expect("URL line");
        format!("/{url}")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response as read off the wire.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body ended as announced (Content-Length reached, or the
    /// connection closed cleanly without one); false when cut.
    pub complete: bool,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on its own connection (`Connection: close`), read to the end.
pub async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Resp {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let clean = loop {
        let mut buf = vec![0u8; 256 * 1024];
        match s.read(&mut buf).await {
            Ok(0) => break true,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    parse(&raw, clean, method == "HEAD")
}

pub async fn get(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    request(addr, "GET", path, headers).await
}

fn parse(raw: &[u8], clean: bool, head: bool) -> Resp {
    // A body that fails at once can end the connection before the head
    // went out: status 0, nothing received.
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Resp {
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
            complete: false,
        };
    };
    let head_text = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut lines = head_text.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let resp_len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut complete = clean;
    if head {
        body.clear();
    } else if chunked {
        let (decoded, done) = dechunk(&body);
        body = decoded;
        complete = done;
    } else if let Some(n) = resp_len {
        complete = body.len() == n;
    }
    Resp {
        status,
        headers,
        body,
        complete,
    }
}

/// Decode a chunked body; `true` when the terminating chunk was seen.
fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            return (out, false);
        };
        raw = &raw[eol + 2..];
        if size == 0 {
            return (out, true);
        }
        if raw.len() < size + 2 {
            out.extend_from_slice(&raw[..raw.len().min(size)]);
            return (out, false);
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}
