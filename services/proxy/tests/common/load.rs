//! Helpers for the load tests (`drip_readers`, `cold_cache`): the proxy
//! with the real signer on a private dbus-daemon, the proxy's memory and
//! threads from `/proc`, a download compared byte for byte as it arrives,
//! percentiles.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{private_bus, sibling_bin, Kill, NixEnv, Proxy};

impl Proxy {
    /// The proxy's process id (for `/proc/PID/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The proxy as a node runs it: the real signer holding a fresh key, both
/// on a private dbus-daemon; narinfos of paths built here carry the key's
/// signature. Fields drop in reverse order of need: proxy, signer, bus.
pub struct SignedProxy {
    pub proxy: Proxy,
    /// The signer process (a test may stop it).
    pub signer: Kill,
    _bus: Kill,
    /// `name:base64` public key of the signer.
    pub public_key: String,
}

impl SignedProxy {
    /// Start the signer and the proxy (`extra` config lines) on `env`'s store.
    /// Needs `target/release/distributed-store-signer`.
    pub fn start(env: &NixEnv, extra: &str) -> SignedProxy {
        let signer_bin = sibling_bin("distributed-store-signer", "ds-signer");
        let (sec, public) = (env.dir().join("key.sec"), env.dir().join("key.pub"));
        env.run(
            "nix-store",
            &[
                "--generate-binary-cache-key",
                "px-load-1",
                sec.to_str().unwrap(),
                public.to_str().unwrap(),
            ],
        );
        let (bus_daemon, bus) = private_bus();
        let config = env.dir().join("signer.toml");
        std::fs::write(
            &config,
            format!(
                "store = \"local?root={}\"\nprivateKeyFile = \"{}\"\ndiscovery = false\n",
                env.root().display(),
                sec.display()
            ),
        )
        .unwrap();
        let signer = Command::new(&signer_bin)
            .arg("--config")
            .arg(&config)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus)
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the signer");
        let signer = Kill(signer);
        let proxy = Proxy::start(
            &env.root(),
            &format!("privateKeyFile = \"{}\"\n{extra}", sec.display()),
            Some(&bus),
        );
        SignedProxy {
            proxy,
            signer,
            _bus: bus_daemon,
            public_key: std::fs::read_to_string(&public).unwrap().trim().to_string(),
        }
    }

    /// Wait until the narinfo of `store_path` is answered with the signer's
    /// signature (the signer may still be starting); returns the narinfo.
    pub async fn signed_narinfo(&self, store_path: &str) -> String {
        let key_name = self.public_key.split(':').next().unwrap_or_default();
        let path = format!("/{}.narinfo", super::hash_part(store_path));
        let mut last = String::new();
        for _ in 0..100 {
            let r = super::get(self.proxy.addr, &path, &[]).await;
            last = String::from_utf8_lossy(&r.body).to_string();
            if r.status == 200 && last.contains(&format!("Sig: {key_name}:")) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no narinfo signed by {key_name} for {store_path}: {last}");
    }
}

/// What `/proc/PID/status` says about a process's memory and threads.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// Resident set size (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Number of threads (`Threads`).
    pub threads: u64,
}

/// Read `/proc/PID/status` (zeros if the process is gone).
pub fn proc_sample(pid: u32) -> ProcSample {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    ProcSample {
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
    }
}

/// Samples `/proc/PID/status` every `every` on a thread of its own until
/// dropped or [`Sampler::stop`]ped; keeps the maxima.
pub struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<ProcSample>>,
}

impl Sampler {
    pub fn start(pid: u32, every: Duration) -> Sampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut max = ProcSample::default();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let s = proc_sample(pid);
                max.rss_kib = max.rss_kib.max(s.rss_kib);
                max.threads = max.threads.max(s.threads);
                std::thread::sleep(every);
            }
            max
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop sampling; the maxima seen.
    pub fn stop(mut self) -> ProcSample {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A download checked as it arrives, without keeping the body.
#[derive(Debug)]
pub struct Checked {
    pub status: u16,
    /// Body bytes received.
    pub received: usize,
    /// Every body byte equal to `expected` at its offset, and no more bytes
    /// than `expected` has.
    pub equal: bool,
    /// The connection ended cleanly (not reset or timed out).
    pub clean: bool,
    pub took: Duration,
}

impl Checked {
    /// The whole NAR, every byte right.
    pub fn whole(&self, expected: &[u8]) -> bool {
        self.status == 200 && self.clean && self.equal && self.received == expected.len()
    }
}

/// GET `path` (`Connection: close`, uncompressed body with Content-Length)
/// and compare the body with `expected` chunk by chunk as it arrives.
pub async fn get_checked(addr: std::net::SocketAddr, path: &str, expected: &[u8]) -> Checked {
    let t = Instant::now();
    let mut out = Checked {
        status: 0,
        received: 0,
        equal: true,
        clean: false,
        took: Duration::ZERO,
    };
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        out.took = t.elapsed();
        return out;
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        out.took = t.elapsed();
        return out;
    }
    let mut buf = vec![0u8; 256 * 1024];
    let mut head = Vec::new();
    let mut in_body = false;
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) => {
                out.clean = true;
                break;
            }
            Ok(n) => n,
            Err(_) => break,
        };
        let data = &buf[..n];
        if !in_body {
            head.extend_from_slice(data);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            out.status = std::str::from_utf8(&head[..end])
                .ok()
                .and_then(|h| h.split(' ').nth(1))
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            in_body = true;
            let body_start = end + 4;
            let rest = head[body_start..].to_vec();
            compare(&mut out, &rest, expected);
            continue;
        }
        compare(&mut out, data, expected);
    }
    out.took = t.elapsed();
    out
}

fn compare(out: &mut Checked, data: &[u8], expected: &[u8]) {
    let at = out.received;
    let end = at + data.len();
    if end > expected.len() || expected[at..end] != *data {
        out.equal = false;
    }
    out.received = end;
}

/// The `p`-quantile (0.0..=1.0) of sorted durations (nearest rank).
pub fn quantile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Build the fixture's `big` attribute with its own `salt` (a distinct
/// store path per salt) holding `mib` MiB of random bytes.
pub fn build_big_salted(env: &NixEnv, salt: &str, mib: u32) -> String {
    let fixture = env.dir().join("fixture.nix");
    let out = env.run(
        "nix-build",
        &[
            fixture.to_str().unwrap(),
            "-A",
            "big",
            "--argstr",
            "salt",
            salt,
            "--arg",
            "bigMiB",
            &mib.to_string(),
            "--no-out-link",
            "--quiet",
        ],
    );
    String::from_utf8(out).unwrap().trim().to_string()
}
