//! BitTorrent through an external engine (aria2, driven over its JSON-RPC).
//!
//! `btih:<40-hex info-hash>#compression=…&fileHash=…&fileSize=…[&tr=<tracker>]…`
//! names a single-file torrent whose one file is a NAR *file*. Trackers come
//! from the locator's `tr` facts (percent-encoded) and from the config.
//!
//! [`BitTorrentBackend`] adds the magnet to the engine, which downloads into
//! `downloadDirectory/<info-hash>/` and checks every piece against the
//! torrent's SHA-1s (a seeder sending corrupt pieces gets them rejected by
//! the engine). The backend waits for the download to complete, with a stall
//! detector (no progress for the stall limit ⇒ `Transport`), then reads the
//! file through [`crate::nar_file`] (FileSize, FileHash, decompression), so
//! a torrent with other content than the locator's facts is `BadData`.
//! Waiting for completion is the simple correct choice: pieces arrive out of
//! order, so streaming while downloading would need per-piece progress from
//! the engine. The download is removed once read, unless `publish` is set
//! (then the node keeps seeding what it fetched).
//!
//! [`TorrentPublisher`] makes the torrent for a NAR file (bencode + SHA-1
//! pieces: [`make_torrent`]), adds it to the engine seeding from where the
//! file is, and returns the `btih:` locator.
//!
//! Only aria2 is supported as the engine: Transmission 3.00 (Debian 12)
//! refuses peers on 127.0.0.0/8, which rules it out for loopback swarms.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use ds_core::{FileFacts, Locator, NarInfo};
use ds_runtime::plugins::BitTorrentSpec;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use serde_json::{json, Value};
use sha1::Digest;

use crate::backend::{Backend, BackendError, ByteStream, Opened, Publisher};
use crate::nar_file::{self, FileBytes, FileSource};

/// Default time a download may take before the fetcher hedges to the next
/// source (the whole torrent must arrive before the first byte flows).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

/// Default stall limit: no new verified bytes for this long aborts.
pub const DEFAULT_STALL: Duration = Duration::from_secs(20);

/// How often the engine is polled for progress.
const POLL: Duration = Duration::from_millis(200);

// ------------------------------------------------------------------ bencode

/// A bencoded value (only what a torrent needs).
enum Ben {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Ben>),
    /// Keys sorted as raw bytes, as bencode requires.
    Dict(BTreeMap<Vec<u8>, Ben>),
}

impl Ben {
    fn str(s: &str) -> Ben {
        Ben::Bytes(s.as_bytes().to_vec())
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Ben::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Ben::Bytes(b) => {
                out.extend_from_slice(format!("{}:", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Ben::List(l) => {
                out.push(b'l');
                l.iter().for_each(|v| v.encode(out));
                out.push(b'e');
            }
            Ben::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    Ben::Bytes(k.clone()).encode(out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }
}

/// A single-file torrent.
pub struct Torrent {
    /// The bencoded metainfo (`.torrent` file contents).
    pub metainfo: Vec<u8>,
    /// SHA-1 of the bencoded info dictionary, lower-case hex.
    pub info_hash: String,
}

/// Piece length for a file of `size` bytes: at least 256 KiB, growing in
/// powers of two to keep the piece list around 1500 entries at most.
fn piece_length(size: u64) -> u64 {
    let mut len = 256 * 1024;
    while size / len > 1500 && len < 16 * 1024 * 1024 {
        len *= 2;
    }
    len
}

/// Make the single-file torrent for `path` (named after the file, so an
/// engine seeds it from the file's directory), announcing to `trackers`.
/// Deterministic: the same file and trackers give the same info-hash.
pub fn make_torrent(path: &Path, trackers: &[String]) -> std::io::Result<Torrent> {
    use std::io::Read;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::other(format!("{}: no file name", path.display())))?
        .to_string();
    let mut f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    let plen = piece_length(size);
    let mut pieces = Vec::with_capacity((size / plen + 1) as usize * 20);
    let mut buf = vec![0u8; plen as usize];
    loop {
        // Fill a whole piece (read may return less).
        let mut got = 0;
        while got < buf.len() {
            let n = f.read(&mut buf[got..])?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if got == 0 {
            break;
        }
        pieces.extend_from_slice(&sha1::Sha1::digest(&buf[..got]));
        if got < buf.len() {
            break;
        }
    }
    let mut info = BTreeMap::new();
    info.insert(b"length".to_vec(), Ben::Int(size as i64));
    info.insert(b"name".to_vec(), Ben::str(&name));
    info.insert(b"piece length".to_vec(), Ben::Int(plen as i64));
    info.insert(b"pieces".to_vec(), Ben::Bytes(pieces));
    let info = Ben::Dict(info);
    let mut info_bytes = Vec::new();
    info.encode(&mut info_bytes);
    let info_hash = hex(&sha1::Sha1::digest(&info_bytes));

    let mut top = BTreeMap::new();
    if let Some(first) = trackers.first() {
        top.insert(b"announce".to_vec(), Ben::str(first));
        let tiers = trackers
            .iter()
            .map(|t| Ben::List(vec![Ben::str(t)]))
            .collect();
        top.insert(b"announce-list".to_vec(), Ben::List(tiers));
    }
    top.insert(b"created by".to_vec(), Ben::str("distributed-store"));
    top.insert(b"info".to_vec(), info);
    let mut metainfo = Vec::new();
    Ben::Dict(top).encode(&mut metainfo);
    Ok(Torrent {
        metainfo,
        info_hash,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ------------------------------------------------------------ URL escaping

/// Percent-encode everything but unreserved characters (RFC 3986).
fn pct_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn pct_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The `btih:` locator for a torrent: the file facts, then one `tr` fact
/// per tracker (ignored by readers that do not know it).
pub fn locator(info_hash: &str, facts: &FileFacts, trackers: &[String]) -> Locator {
    let mut loc = Locator::other("btih", info_hash, facts);
    if let Locator::Other { value, .. } = &mut loc {
        for t in trackers {
            value.push_str("&tr=");
            value.push_str(&pct_encode(t));
        }
    }
    loc
}

/// Info-hash (lower-case), file facts and trackers of a `btih:` locator.
fn parse_locator(locator: &Locator) -> Result<(String, FileFacts, Vec<String>), String> {
    let (hash, facts) = match locator.other_parts() {
        Some(Ok(parts)) => parts,
        Some(Err(e)) => return Err(e.to_string()),
        None => return Err(format!("{locator} is not a btih: locator")),
    };
    if locator.scheme() != "btih"
        || hash.len() != 40
        || !hash.chars().all(|c| c.is_ascii_hexdigit())
    {
        return Err(format!("{locator}: expected btih:<40 hex digits>"));
    }
    let mut trackers = Vec::new();
    if let Locator::Other { value, .. } = locator {
        let fragment = value.split_once('#').map(|(_, f)| f).unwrap_or("");
        for kv in fragment.split('&') {
            if let Some(t) = kv.strip_prefix("tr=") {
                let t = pct_decode(t).ok_or_else(|| format!("{locator}: bad tr={t}"))?;
                trackers.push(t);
            }
        }
    }
    Ok((hash.to_ascii_lowercase(), facts, trackers))
}

// ------------------------------------------------------------- aria2 RPC

/// A client of aria2's JSON-RPC (`/jsonrpc`).
#[derive(Clone)]
struct Aria2 {
    client: reqwest::Client,
    url: String,
    /// `token:<secret>` when `--rpc-secret` is set.
    token: Option<String>,
}

impl Aria2 {
    fn new(spec: &BitTorrentSpec) -> Result<Aria2, BackendError> {
        match spec.engine.as_str() {
            "aria2" => {}
            "transmission" => {
                return Err(BackendError::Unsupported(
                    "backends.bittorrent.engine: \"transmission\" is not supported (Transmission 3.00 refuses loopback peers); use \"aria2\"".into(),
                ))
            }
            other => {
                return Err(BackendError::Unsupported(format!(
                    "backends.bittorrent.engine: unknown engine {other:?} (supported: \"aria2\")"
                )))
            }
        }
        if !(spec.rpc.starts_with("http://") || spec.rpc.starts_with("https://")) {
            return Err(BackendError::Unsupported(format!(
                "backends.bittorrent.rpc: {:?} is not an http(s) URL (aria2: http://127.0.0.1:6800/jsonrpc)",
                spec.rpc
            )));
        }
        let token = match &spec.rpc_secret_file {
            Some(p) => {
                let s = std::fs::read_to_string(p).map_err(|e| {
                    BackendError::Unsupported(format!(
                        "backends.bittorrent.rpcSecretFile {}: {e}",
                        p.display()
                    ))
                })?;
                Some(format!("token:{}", s.trim()))
            }
            None => None,
        };
        let client = crate::http::client(Duration::from_secs(2))
            .map_err(|e| BackendError::Unsupported(format!("building the HTTP client: {e}")))?;
        Ok(Aria2 {
            client,
            url: spec.rpc.clone(),
            token,
        })
    }

    /// Call `method` with `params` (the secret token is put first).
    async fn call(&self, method: &str, params: Vec<Value>) -> Result<Value, BackendError> {
        let mut all = Vec::with_capacity(params.len() + 1);
        if let Some(t) = &self.token {
            all.push(Value::String(t.clone()));
        }
        all.extend(params);
        let body = json!({"jsonrpc": "2.0", "id": "ds", "method": method, "params": all});
        let resp = self
            .client
            .post(&self.url)
            .timeout(Duration::from_secs(10))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| BackendError::Transport(format!("aria2 {method}: {e}")))?;
        let raw = resp
            .bytes()
            .await
            .map_err(|e| BackendError::Transport(format!("aria2 {method}: {e}")))?;
        let v: Value = serde_json::from_slice(&raw)
            .map_err(|e| BackendError::Refused(format!("aria2 {method}: not JSON-RPC: {e}")))?;
        if let Some(err) = v.get("error") {
            let msg = err.get("message").and_then(Value::as_str).unwrap_or("?");
            return Err(BackendError::Refused(format!("aria2 {method}: {msg}")));
        }
        Ok(v.get("result").cloned().unwrap_or(Value::Null))
    }

    async fn status(&self, gid: &str) -> Result<Value, BackendError> {
        let keys = [
            "gid",
            "status",
            "followedBy",
            "completedLength",
            "totalLength",
            "errorMessage",
            "errorCode",
            "seeder",
            "files",
        ];
        self.call("aria2.tellStatus", vec![json!(gid), json!(keys)])
            .await
    }

    /// Whether the engine has a running or waiting download of `info_hash`.
    async fn has(&self, info_hash: &str) -> Result<bool, BackendError> {
        Ok(self.find(info_hash).await?.is_some())
    }

    /// The gid of a running or waiting download of `info_hash`, if any.
    async fn find(&self, info_hash: &str) -> Result<Option<String>, BackendError> {
        let keys = json!(["gid", "infoHash"]);
        let active = self.call("aria2.tellActive", vec![keys.clone()]).await?;
        let waiting = self
            .call("aria2.tellWaiting", vec![json!(0), json!(1000), keys])
            .await?;
        Ok([active, waiting]
            .iter()
            .filter_map(Value::as_array)
            .flatten()
            .find(|d| text(d, "infoHash").eq_ignore_ascii_case(info_hash))
            .map(|d| text(d, "gid").to_string()))
    }

    /// Forget a download (stopping it first if it still runs); errors are
    /// logged only: this is cleanup.
    async fn forget(&self, gid: &str) {
        let _ = self.call("aria2.forceRemove", vec![json!(gid)]).await;
        // removeDownloadResult only works once the download has stopped.
        for _ in 0..20 {
            if self
                .call("aria2.removeDownloadResult", vec![json!(gid)])
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::debug!(gid, "aria2: could not remove the download result");
    }
}

fn num(v: &Value, key: &str) -> u64 {
    v.get(key)
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

// ----------------------------------------------------------------- backend

/// Fetches `btih:` locators through an aria2 engine.
pub struct BitTorrentBackend {
    aria2: Aria2,
    trackers: Vec<String>,
    download_directory: PathBuf,
    /// Keep seeding what was fetched.
    seed: bool,
    deadline: Duration,
    stall: Duration,
}

impl BitTorrentBackend {
    /// A backend for `[backends.bittorrent]` (engine `aria2`; the download
    /// directory is required, since the fetcher reads the files from it).
    pub fn new(spec: &BitTorrentSpec) -> Result<BitTorrentBackend, BackendError> {
        let download_directory = spec.download_directory.clone().ok_or_else(|| {
            BackendError::Unsupported(
                "backends.bittorrent.downloadDirectory is required to fetch (the fetcher reads the engine's files from it)".into(),
            )
        })?;
        Ok(BitTorrentBackend {
            aria2: Aria2::new(spec)?,
            trackers: spec.trackers.clone(),
            download_directory,
            seed: spec.publish,
            deadline: DEFAULT_DEADLINE,
            stall: DEFAULT_STALL,
        })
    }

    /// Use `deadline` (whole download) and `stall` (no progress) limits
    /// instead of [`DEFAULT_DEADLINE`] and [`DEFAULT_STALL`].
    pub fn with_limits(mut self, deadline: Duration, stall: Duration) -> BitTorrentBackend {
        self.deadline = deadline;
        self.stall = stall;
        self
    }
}

impl Backend for BitTorrentBackend {
    fn schemes(&self) -> &'static [&'static str] {
        &["btih"]
    }

    fn handles(&self, locator: &Locator) -> bool {
        matches!(parse_locator(locator), Ok((_, f, _)) if nar_file::supported(&f.compression))
    }

    fn deadline(&self, _locator: &Locator) -> Duration {
        self.deadline
    }

    fn open(
        &self,
        locator: &Locator,
        _nar: &NarInfo,
        offset: u64,
    ) -> BoxFuture<'static, Result<Opened, BackendError>> {
        let (hash, facts, mut trackers) = match parse_locator(locator) {
            Ok(p) => p,
            Err(e) => return futures::future::ready(Err(BackendError::Unsupported(e))).boxed(),
        };
        for t in &self.trackers {
            if !trackers.contains(t) {
                trackers.push(t.clone());
            }
        }
        let job = Download {
            aria2: self.aria2.clone(),
            dir: self.download_directory.join(&hash),
            hash,
            trackers,
            seed: self.seed,
            stall: self.stall,
        };
        async move {
            let done = job.run().await?;
            nar_file::nar_from_file(Box::new(done), facts, offset).await
        }
        .boxed()
    }
}

/// One torrent download through the engine.
struct Download {
    aria2: Aria2,
    hash: String,
    trackers: Vec<String>,
    dir: PathBuf,
    seed: bool,
    stall: Duration,
}

impl Download {
    /// Add the magnet and wait until the file is complete; the
    /// [`Downloaded`] cleans up when dropped.
    async fn run(self) -> Result<Downloaded, BackendError> {
        let mut magnet = format!("magnet:?xt=urn:btih:{}", self.hash);
        for t in &self.trackers {
            magnet.push_str("&tr=");
            magnet.push_str(&pct_encode(t));
        }
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| BackendError::Transport(format!("{}: {e}", self.dir.display())))?;
        let dir = self.dir.to_string_lossy().into_owned();
        // Seed forever when publishing, else stop the moment it completes.
        let seeding = if self.seed {
            json!({"dir": dir, "seed-ratio": "0.0", "follow-torrent": "mem"})
        } else {
            json!({"dir": dir, "seed-time": "0", "follow-torrent": "mem"})
        };
        // The engine may have it already (seeding what this node published
        // or fetched before, or another fetch in progress): use that one,
        // and leave it alone afterwards (aria2 refuses a second download of
        // the same info-hash).
        let (mut gid, ours) = match self.aria2.find(&self.hash).await? {
            Some(gid) => (gid, false),
            None => {
                let first = self
                    .aria2
                    .call("aria2.addUri", vec![json!([magnet]), seeding])
                    .await?;
                (first.as_str().unwrap_or_default().to_string(), true)
            }
        };
        // Everything from here on removes our download on failure.
        let mut guard = Downloaded {
            aria2: self.aria2.clone(),
            gids: vec![gid.clone()],
            path: PathBuf::new(),
            dir: self.dir.clone(),
            keep: self.seed,
            ours,
        };
        let mut best = 0u64;
        let mut last_progress = Instant::now();
        loop {
            let st = self.aria2.status(&gid).await?;
            // The magnet's metadata download is followed by the real one.
            if let Some(next) = st
                .get("followedBy")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .and_then(Value::as_str)
            {
                gid = next.to_string();
                guard.gids.push(gid.clone());
                last_progress = Instant::now();
                best = 0;
                continue;
            }
            let status = text(&st, "status");
            let total = num(&st, "totalLength");
            let done = num(&st, "completedLength");
            let path = st
                .get("files")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .map(|f| text(f, "path").to_string())
                .unwrap_or_default();
            let is_metadata = path.is_empty() || path.starts_with("[METADATA]");
            let complete =
                status == "complete" || (status == "active" && text(&st, "seeder") == "true");
            if complete && !is_metadata && total > 0 && done == total {
                guard.path = PathBuf::from(path);
                return Ok(guard);
            }
            if status == "error" || status == "removed" {
                return Err(BackendError::Transport(format!(
                    "btih:{}: engine says {status}: {}",
                    self.hash,
                    text(&st, "errorMessage")
                )));
            }
            if done > best {
                best = done;
                last_progress = Instant::now();
            } else if last_progress.elapsed() >= self.stall {
                let queued = if status == "waiting" {
                    " (queued by the engine: raise aria2's --max-concurrent-downloads, seeds count against it)"
                } else {
                    ""
                };
                return Err(BackendError::Transport(format!(
                    "btih:{}: no progress for {:?} ({done} of {total} bytes verified){queued}",
                    self.hash, self.stall
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// A completed download: reads the file, and removes the download (and its
/// directory) from the engine when dropped, unless it keeps seeding.
struct Downloaded {
    aria2: Aria2,
    gids: Vec<String>,
    path: PathBuf,
    dir: PathBuf,
    keep: bool,
    /// Added by this fetch (not found in the engine already).
    ours: bool,
}

impl Drop for Downloaded {
    fn drop(&mut self) {
        if !self.ours || (self.keep && !self.path.as_os_str().is_empty()) {
            return;
        }
        let (aria2, gids, dir) = (
            self.aria2.clone(),
            std::mem::take(&mut self.gids),
            self.dir.clone(),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for g in gids.iter().rev() {
                    aria2.forget(g).await;
                }
                let _ = tokio::fs::remove_dir_all(&dir).await;
            });
        }
    }
}

impl FileSource for Downloaded {
    fn open_at(&mut self, file_offset: u64) -> BoxFuture<'_, Result<FileBytes, BackendError>> {
        async move {
            use tokio::io::AsyncSeekExt;
            let mut f = tokio::fs::File::open(&self.path)
                .await
                .map_err(|e| BackendError::Transport(format!("{}: {e}", self.path.display())))?;
            let len = f
                .metadata()
                .await
                .map_err(|e| BackendError::Transport(format!("{}: {e}", self.path.display())))?
                .len();
            f.seek(std::io::SeekFrom::Start(file_offset))
                .await
                .map_err(|e| BackendError::Transport(format!("{}: {e}", self.path.display())))?;
            let stream: ByteStream = tokio_util::io::ReaderStream::new(f)
                .map_err(|e| BackendError::Transport(e.to_string()))
                .boxed();
            Ok(FileBytes {
                start: file_offset,
                stream,
                len: Some(len.saturating_sub(file_offset)),
            })
        }
        .boxed()
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("btih file {}", self.path.display())
    }
}

// --------------------------------------------------------------- publisher

/// Makes torrents for NAR files and seeds them through aria2.
pub struct TorrentPublisher {
    aria2: Aria2,
    trackers: Arc<Vec<String>>,
    /// Where seeded files are kept (`<downloadDirectory>/seed`): the file a
    /// caller hands over may be temporary (the indexer deletes its
    /// generated NAR files), and a seeder must keep serving it.
    seed_dir: Option<PathBuf>,
}

impl TorrentPublisher {
    /// A publisher for `[backends.bittorrent]`.
    pub fn new(spec: &BitTorrentSpec) -> Result<TorrentPublisher, BackendError> {
        Ok(TorrentPublisher {
            aria2: Aria2::new(spec)?,
            trackers: Arc::new(spec.trackers.clone()),
            seed_dir: spec.download_directory.as_ref().map(|d| d.join("seed")),
        })
    }
}

impl Publisher for TorrentPublisher {
    fn scheme(&self) -> &'static str {
        "btih"
    }

    fn publish(
        &self,
        file: PathBuf,
        facts: FileFacts,
        _nar: &NarInfo,
    ) -> BoxFuture<'static, Result<Locator, BackendError>> {
        let (aria2, trackers) = (self.aria2.clone(), self.trackers.clone());
        let seed_dir = self.seed_dir.clone();
        async move {
            // Keep our own copy to seed from, named by the file (its
            // FileHash names it).
            let file = match (&seed_dir, file.file_name()) {
                (Some(dir), Some(name)) => {
                    let kept = dir.join(name);
                    let (from, to) = (file.clone(), kept.clone());
                    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                        std::fs::create_dir_all(to.parent().unwrap_or(&to))?;
                        if to.exists() {
                            return Ok(());
                        }
                        // A copy, not a hard link: a new file in the
                        // engine's (setgid) directory gets its group, so
                        // the engine can read it; a link would keep ours.
                        let tmp = to.with_extension("partial");
                        std::fs::copy(&from, &tmp)?;
                        std::fs::rename(&tmp, &to)
                    })
                    .await
                    .map_err(|e| BackendError::Transport(format!("keeping the seed file: {e}")))?
                    .map_err(|e| {
                        BackendError::Transport(format!("keeping {} to seed: {e}", kept.display()))
                    })?;
                    kept
                }
                _ => file,
            };
            let path = file.clone();
            let tr = trackers.clone();
            // Hashing the pieces reads the whole file: off the runtime.
            let torrent = tokio::task::spawn_blocking(move || make_torrent(&path, &tr))
                .await
                .map_err(|e| BackendError::Transport(format!("making the torrent: {e}")))?
                .map_err(|e| BackendError::Unsupported(format!("{}: {e}", file.display())))?;
            let dir = file
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|| ".".into());
            // Publishing the same file twice: already seeding.
            if aria2.has(&torrent.info_hash).await? {
                return Ok(locator(&torrent.info_hash, &facts, &trackers));
            }
            let b64 = base64::engine::general_purpose::STANDARD.encode(&torrent.metainfo);
            // Seed from where the file is, after checking it, forever.
            let opts = json!({"dir": dir, "check-integrity": "true", "seed-ratio": "0.0"});
            let gid = aria2
                .call("aria2.addTorrent", vec![json!(b64), json!([]), opts])
                .await?;
            let gid = gid.as_str().unwrap_or_default().to_string();
            // Wait until the engine has checked the file and seeds it.
            let t = Instant::now();
            loop {
                let st = aria2.status(&gid).await?;
                let total = num(&st, "totalLength");
                if text(&st, "seeder") == "true"
                    && total > 0
                    && num(&st, "completedLength") == total
                {
                    break;
                }
                // Error 12: added concurrently by someone else; it seeds.
                if text(&st, "status") == "error" && text(&st, "errorCode") == "12" {
                    aria2.forget(&gid).await;
                    break;
                }
                if matches!(text(&st, "status"), "error" | "removed" | "complete") {
                    let e = format!(
                        "btih:{}: engine cannot seed {}: {} {}",
                        torrent.info_hash,
                        file.display(),
                        text(&st, "status"),
                        text(&st, "errorMessage")
                    );
                    aria2.forget(&gid).await;
                    return Err(BackendError::Refused(e));
                }
                if t.elapsed() > Duration::from_secs(120) {
                    aria2.forget(&gid).await;
                    return Err(BackendError::Transport(format!(
                        "btih:{}: engine did not start seeding within 120 s",
                        torrent.info_hash
                    )));
                }
                tokio::time::sleep(POLL).await;
            }
            Ok(locator(&torrent.info_hash, &facts, &trackers))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ds_core::{Compression, Hash};

    #[test]
    fn bencode_is_canonical() {
        let mut d = BTreeMap::new();
        d.insert(b"zz".to_vec(), Ben::Int(-3));
        d.insert(
            b"a".to_vec(),
            Ben::List(vec![Ben::str("spam"), Ben::Int(0)]),
        );
        let mut out = Vec::new();
        Ben::Dict(d).encode(&mut out);
        assert_eq!(out, b"d1:al4:spami0ee2:zzi-3ee".to_vec());
    }

    #[test]
    fn torrent_of_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.nar.xz");
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&p, &data).expect("write");
        let t = make_torrent(&p, &["http://127.0.0.1:1/announce".into()]).expect("torrent");
        assert_eq!(t.info_hash.len(), 40);
        // 600 000 bytes in 256 KiB pieces: 3 pieces, 60 bytes of SHA-1s.
        let pieces: Vec<u8> = data
            .chunks(256 * 1024)
            .flat_map(|c| sha1::Sha1::digest(c).to_vec())
            .collect();
        let mut info =
            b"d6:lengthi600000e4:name8:x.nar.xz12:piece lengthi262144e6:pieces60:".to_vec();
        info.extend_from_slice(&pieces);
        info.push(b'e');
        assert_eq!(t.info_hash, hex(&sha1::Sha1::digest(&info)));
        let needle = b"4:info";
        assert!(t.metainfo.windows(needle.len()).any(|w| w == needle));
        // Deterministic.
        let again = make_torrent(&p, &["http://127.0.0.1:1/announce".into()]).expect("torrent");
        assert_eq!(again.metainfo, t.metainfo);
        assert_eq!(piece_length(100 << 30), 16 << 20);
    }

    #[test]
    fn locators_round_trip_with_trackers() {
        let facts = FileFacts {
            compression: Compression::Xz,
            file_hash: Some(Hash::sha256(b"f")),
            file_size: Some(7),
        };
        let tr = vec!["http://127.0.0.1:6969/announce?a=1&b=2".to_string()];
        let h = "0123456789abcdef0123456789ABCDEF01234567";
        let loc = locator(h, &facts, &tr);
        let back = Locator::parse(&loc.to_string()).expect("parses");
        let (hash, f, t) = parse_locator(&back).expect("btih");
        assert_eq!(hash, h.to_ascii_lowercase());
        assert_eq!(f, facts);
        assert_eq!(t, tr);
        assert!(parse_locator(&Locator::parse("btih:abc#compression=xz").expect("p")).is_err());
        assert!(parse_locator(&Locator::parse("ipfs:abc").expect("p")).is_err());
    }

    #[test]
    fn engine_and_keys_are_checked() {
        let mut spec = BitTorrentSpec {
            engine: "transmission".into(),
            rpc: "http://127.0.0.1:9091/transmission/rpc".into(),
            rpc_secret_file: None,
            trackers: vec![],
            download_directory: Some("/tmp".into()),
            publish: false,
        };
        let e = BitTorrentBackend::new(&spec).err().map(|e| e.to_string());
        assert!(
            e.as_deref()
                .unwrap_or("")
                .contains("backends.bittorrent.engine"),
            "{e:?}"
        );
        spec.engine = "aria2".into();
        spec.download_directory = None;
        let e = BitTorrentBackend::new(&spec).err().map(|e| e.to_string());
        assert!(
            e.as_deref().unwrap_or("").contains("downloadDirectory"),
            "{e:?}"
        );
        spec.rpc = "127.0.0.1:6800".into();
        let e = TorrentPublisher::new(&spec).err().map(|e| e.to_string());
        assert!(
            e.as_deref()
                .unwrap_or("")
                .contains("backends.bittorrent.rpc"),
            "{e:?}"
        );
    }
}
