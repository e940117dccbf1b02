//! Test helpers: real NARs, a small HTTP/1.1 server on 127.0.0.1 that can
//! misbehave on demand, a fetcher in a temporary directory.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ds_core::{Hash, NarInfo};
use ds_fetcher::{Fetcher, FetcherConfig, MapperLink};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A NAR of a single regular file with `contents`.
pub fn nar_of(contents: &[u8]) -> Vec<u8> {
    fn s(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(b);
        out.resize(out.len() + (8 - b.len() % 8) % 8, 0);
    }
    let mut out = Vec::new();
    for t in ["nix-archive-1", "(", "type", "regular", "contents"] {
        s(&mut out, t.as_bytes());
    }
    s(&mut out, contents);
    s(&mut out, b")");
    out
}

/// Deterministic, poorly compressible-ish contents of `len` bytes.
pub fn contents(seed: u8, len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ seed as u32;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Half random, half text: something for the compressors to do.
            if i % 2 == 0 {
                (x & 0xff) as u8
            } else {
                b'a' + (i % 26) as u8
            }
        })
        .collect()
}

/// A test NAR with its narinfo.
pub struct TestNar {
    pub bytes: Vec<u8>,
    pub narinfo: String,
    pub hash32: String,
    pub narhash32: String,
}

impl TestNar {
    pub fn new(name: &str, contents: &[u8]) -> TestNar {
        let bytes = nar_of(contents);
        let path_hash = Hash::sha256(name.as_bytes());
        let hash32 = ds_core::base32::encode(&path_hash.digest[..20]);
        let nar_hash = Hash::sha256(&bytes);
        let narhash32 = ds_core::base32::encode(&nar_hash.digest);
        let narinfo = format!(
            "StorePath: /nix/store/{hash32}-{name}\nURL: nar/{narhash32}.nar\nCompression: none\nNarHash: {}\nNarSize: {}\nReferences: \n",
            nar_hash.to_nix32_string(),
            bytes.len()
        );
        NarInfo::parse(&narinfo).expect("test narinfo parses");
        TestNar {
            bytes,
            narinfo,
            hash32,
            narhash32,
        }
    }

    /// The path a peer serves it at.
    pub fn peer_path(&self) -> String {
        format!("/nar/{}-{}.nar", self.hash32, self.narhash32)
    }
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Req {
    pub path: String,
    /// Lower-case names.
    pub headers: HashMap<String, String>,
}

impl Req {
    /// Start of `Range: bytes=N-`, if any.
    pub fn range_start(&self) -> Option<u64> {
        self.headers
            .get("range")?
            .strip_prefix("bytes=")?
            .strip_suffix('-')?
            .parse()
            .ok()
    }
}

/// What the server answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Content-Length sent (defaults to the length of all parts).
    pub content_length: Option<u64>,
    /// Body parts, each after a delay; the connection closes after the last.
    pub parts: Vec<(Duration, Vec<u8>)>,
    /// Never answer at all.
    pub hang: bool,
    /// Send no Content-Length: the body ends when the connection closes
    /// (so a body longer than NarSize is not cut short by the client).
    pub no_length: bool,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![],
            content_length: None,
            parts: vec![],
            hang: false,
            no_length: false,
        }
    }

    pub fn hang() -> Reply {
        Reply {
            hang: true,
            ..Reply::status(200)
        }
    }

    /// `data` (honouring `Range: bytes=N-`) in one part.
    pub fn bytes(req: &Req, data: &[u8]) -> Reply {
        match req.range_start() {
            Some(start) if (start as usize) <= data.len() => Reply {
                status: 206,
                headers: vec![(
                    "Content-Range".into(),
                    format!(
                        "bytes {start}-{}/{}",
                        data.len().saturating_sub(1),
                        data.len()
                    ),
                )],
                content_length: None,
                parts: vec![(Duration::ZERO, data[start as usize..].to_vec())],
                hang: false,
                no_length: false,
            },
            _ => Reply {
                parts: vec![(Duration::ZERO, data.to_vec())],
                ..Reply::status(200)
            },
        }
    }

    /// Like [`Reply::bytes`], but promises the full length and dies after
    /// `send` bytes of the body.
    pub fn dies_after(req: &Req, data: &[u8], send: usize) -> Reply {
        let mut r = Reply::bytes(req, data);
        let body = r.parts[0].1.clone();
        r.content_length = Some(body.len() as u64);
        r.parts = vec![(Duration::ZERO, body[..send.min(body.len())].to_vec())];
        r
    }

    /// Like [`Reply::bytes`], in two parts with a pause after `first` bytes.
    pub fn dripping(req: &Req, data: &[u8], first: usize, pause: Duration) -> Reply {
        let mut r = Reply::bytes(req, data);
        let body = r.parts[0].1.clone();
        let first = first.min(body.len());
        r.parts = vec![
            (Duration::ZERO, body[..first].to_vec()),
            (pause, body[first..].to_vec()),
        ];
        r
    }

    /// Like [`Reply::bytes`]: `first` bytes at once, then the rest one
    /// byte every `every` (a peer that drips).
    pub fn trickle(req: &Req, data: &[u8], first: usize, every: Duration) -> Reply {
        let mut r = Reply::bytes(req, data);
        let body = r.parts[0].1.clone();
        let first = first.min(body.len());
        r.parts = std::iter::once((Duration::ZERO, body[..first].to_vec()))
            .chain(body[first..].iter().map(|b| (every, vec![*b])))
            .collect();
        r
    }
}

type Handler = Arc<dyn Fn(&Req) -> Reply + Send + Sync>;

/// An HTTP server on 127.0.0.1 with a handler and a request log.
pub struct Server {
    pub url: String,
    pub log: Arc<Mutex<Vec<Req>>>,
    count: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub async fn start(handler: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let handler: Handler = Arc::new(handler);
        let (l, c) = (log.clone(), count.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (handler, log, count) = (handler.clone(), l.clone(), c.clone());
                tokio::spawn(async move {
                    let _ = serve_conn(sock, handler, log, count).await;
                });
            }
        });
        Server {
            url,
            log,
            count,
            task,
        }
    }

    /// Requests received.
    pub fn requests(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    pub fn requests_log(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }
}

async fn serve_conn(
    mut sock: tokio::net::TcpStream,
    handler: Handler,
    log: Arc<Mutex<Vec<Req>>>,
    count: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let path = first.split(' ').nth(1).unwrap_or_default().to_string();
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let req = Req { path, headers };
    count.fetch_add(1, Ordering::SeqCst);
    log.lock().unwrap().push(req.clone());
    let reply = handler(&req);
    if reply.hang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return Ok(());
    }
    let len = reply
        .content_length
        .unwrap_or_else(|| reply.parts.iter().map(|p| p.1.len() as u64).sum());
    let mut head = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", reply.status);
    if !reply.no_length {
        head.push_str(&format!("Content-Length: {len}\r\n"));
    }
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes()).await?;
    for (delay, part) in &reply.parts {
        tokio::time::sleep(*delay).await;
        sock.write_all(part).await?;
        sock.flush().await?;
    }
    sock.shutdown().await?;
    Ok(())
}

/// What the fetcher told the mapper.
#[derive(Default)]
pub struct RecordingMapper {
    pub bad: Mutex<Vec<(String, String)>>,
    pub fetching: Mutex<Vec<(String, bool)>>,
    /// What `upstream_locators` answers (the upstream fallback).
    pub upstream: Mutex<Vec<String>>,
    /// The hash parts `upstream_locators` was asked for.
    pub upstream_asked: Mutex<Vec<String>>,
}

impl MapperLink for RecordingMapper {
    fn report_bad(&self, peer: &str, reason: &str) {
        self.bad.lock().unwrap().push((peer.into(), reason.into()));
    }
    fn set_fetching(&self, hash32: &str, fetching: bool) {
        self.fetching
            .lock()
            .unwrap()
            .push((hash32.into(), fetching));
    }
    fn upstream_locators(&self, hash32: &str) -> futures::future::BoxFuture<'static, Vec<String>> {
        self.upstream_asked.lock().unwrap().push(hash32.into());
        let answer = self.upstream.lock().unwrap().clone();
        Box::pin(async move { answer })
    }
}

pub fn config(dir: &std::path::Path, cache_size: u64) -> FetcherConfig {
    FetcherConfig {
        cache_directory: dir.to_path_buf(),
        cache_size,
        peer_timeout: Duration::from_millis(300),
        upstream_timeout: Duration::from_millis(300),
        min_stall: Duration::from_secs(2),
    }
}

/// A fetcher set up from `[backends]` as the service does (a fresh
/// [`RecordingMapper`]); the error is the service's start-up error.
pub fn configured(
    dir: &std::path::Path,
    cache_size: u64,
    backends: &ds_runtime::plugins::BackendsSpec,
) -> anyhow::Result<Fetcher> {
    Fetcher::with_backends(
        config(dir, cache_size),
        backends,
        Arc::new(RecordingMapper::default()),
        ds_runtime::service::Activity::new(),
    )
}

pub fn fetcher(dir: &std::path::Path, cache_size: u64) -> (Fetcher, Arc<RecordingMapper>) {
    fetcher_with(config(dir, cache_size))
}

/// A fetcher with `config` and a recording mapper.
pub fn fetcher_with(config: FetcherConfig) -> (Fetcher, Arc<RecordingMapper>) {
    let mapper = Arc::new(RecordingMapper::default());
    let f = Fetcher::new(config, mapper.clone(), ds_runtime::service::Activity::new()).unwrap();
    (f, mapper)
}

/// Read a pipe to its end.
pub async fn read_all(fd: OwnedFd) -> Vec<u8> {
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::from(fd);
        let mut v = Vec::new();
        let _ = f.read_to_end(&mut v);
        v
    })
    .await
    .unwrap()
}

/// Compress with async-compression.
pub async fn compress(kind: &str, data: &[u8]) -> Vec<u8> {
    use async_compression::tokio::write::{BzEncoder, XzEncoder, ZstdEncoder};
    async fn run<W: tokio::io::AsyncWrite + Unpin>(mut w: W, data: &[u8]) -> W {
        w.write_all(data).await.unwrap();
        w.shutdown().await.unwrap();
        w
    }
    match kind {
        "none" => data.to_vec(),
        "xz" => run(XzEncoder::new(Vec::new()), data).await.into_inner(),
        "zstd" => run(ZstdEncoder::new(Vec::new()), data).await.into_inner(),
        "bzip2" => run(BzEncoder::new(Vec::new()), data).await.into_inner(),
        other => panic!("{other}"),
    }
}

/// Wait until `cond` holds, polling; panics after `limit`.
pub async fn wait_until(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let t = std::time::Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
