//! `distributed-store index`: write, import and summarise folder indexes
//! (the nss-mapper layout, `docs/index-format.md`).
//!
//! - `export DIR`: one entry per NAR file for the selected paths of a local
//!   store. A path that an upstream cache has gets that cache's file facts
//!   and a `file:` locator, from its narinfo (many requests in parallel),
//!   without reading the NAR. With publishers (`--publish ipfs,…`) the NAR
//!   file is generated from the store (compressed per `--compression`),
//!   hashed while written, and handed to each publisher, whose locators are
//!   recorded. Entries whose bytes did not change are not rewritten;
//!   entries of paths no longer selected are deleted only with `--prune`.
//! - `import SRC`: copy the valid entries of a folder into this node's
//!   import folder (`<stateDirectory>/index`), which the mapper always reads.
//! - `stats DIR`: what a folder holds.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ds_core::{Compression, FileFacts, Hash, HashAlgo, Locator, NarInfo, StorePath};
use ds_fetcher::backend::Publisher;
use ds_mapper::folder::{self, Entry, Written};
use ds_runtime::Config;
use ds_store::{LocalStore, PathInfo, StoreUri};
use futures::stream::{self, StreamExt};
use sha2::{Digest, Sha256};

/// What `index export` is asked to do.
#[derive(Clone)]
pub struct ExportOptions {
    /// The folder to write.
    pub dir: PathBuf,
    /// Config file (upstreams, trusted keys, backends, store).
    pub config: Option<PathBuf>,
    /// Store to index instead of the config's (`local`, `local?root=DIR`).
    pub store: Option<String>,
    /// Only these paths (full store paths).
    pub paths: Vec<String>,
    /// Only the closures of these paths.
    pub closure: Vec<String>,
    /// Name patterns (`*`, `?`) a path must match one of (all when empty).
    pub include: Vec<String>,
    /// Name patterns that exclude a path.
    pub exclude: Vec<String>,
    /// Compression of the NAR files generated for publishers.
    pub compression: Compression,
    /// Publishers to call (`ipfs`, `bittorrent`, `s3`).
    pub publish: Vec<String>,
    /// Delete entries of paths not selected by this run.
    pub prune: bool,
    /// Parallel narinfo requests / NAR generations.
    pub jobs: usize,
    /// Publishers given by a library caller, called after the `--publish` ones.
    pub extra_publishers: Vec<Arc<dyn Publisher>>,
}

/// What an export did.
#[derive(Debug, Clone, Default)]
pub struct ExportReport {
    /// Paths in the store.
    pub store_paths: usize,
    /// Paths selected.
    pub selected: usize,
    /// Entries written (new or changed).
    pub written: usize,
    /// Entries already up to date.
    pub unchanged: usize,
    /// Entries deleted (`--prune`).
    pub pruned: usize,
    /// Paths found at an upstream (file facts from its narinfo).
    pub upstream: usize,
    /// Paths whose NAR file was generated and published.
    pub published: usize,
    /// Paths with no locator (not at an upstream, nothing to publish to).
    pub skipped: usize,
    /// Publisher or store failures (logged).
    pub failed: usize,
    /// Bytes of NAR read and file bytes hashed.
    pub nar_bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl std::fmt::Display for ExportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-6);
        writeln!(
            f,
            "store paths {}, selected {}, from upstream {}, published {}, no locator {}, failed {}",
            self.store_paths,
            self.selected,
            self.upstream,
            self.published,
            self.skipped,
            self.failed
        )?;
        writeln!(
            f,
            "entries written {}, unchanged {}, pruned {}",
            self.written, self.unchanged, self.pruned
        )?;
        write!(
            f,
            "{:.2} s, {:.0} paths/s, {:.1} MB/s of NAR",
            secs,
            self.selected as f64 / secs,
            self.nar_bytes as f64 / 1e6 / secs
        )
    }
}

fn load_config(path: &Option<PathBuf>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p).with_context(|| format!("loading {}", p.display()))?,
        // As the services do: the system config when there is one, else the defaults.
        None => {
            let default = Path::new(ds_runtime::config::DEFAULT_PATH);
            Config::load_or_default(default, default).context("loading the default config")?
        }
    })
}

/// Match `name` against a glob with `*` (any run) and `?` (one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The selected paths' infos: all valid paths, or the listed ones, or
/// their closures; then the name filters.
fn select(store: &LocalStore, o: &ExportOptions) -> anyhow::Result<(usize, Vec<PathInfo>)> {
    let all = store.scan_since(0).context("reading the store database")?;
    let total = all.len();
    let info = |p: &StorePath| -> anyhow::Result<PathInfo> {
        store
            .path_info(p.hash())?
            .filter(|i| i.path == *p)
            .with_context(|| format!("{p} is not valid in the store"))
    };
    let mut out: Vec<PathInfo> = Vec::new();
    if o.paths.is_empty() && o.closure.is_empty() {
        for s in &all {
            if let Some(i) = store.path_info(s.path.hash())? {
                out.push(i);
            }
        }
    } else {
        let mut seen: HashSet<StorePath> = HashSet::new();
        for p in &o.paths {
            let p = StorePath::parse(p).with_context(|| format!("--paths {p}"))?;
            if seen.insert(p.clone()) {
                out.push(info(&p)?);
            }
        }
        let mut queue: VecDeque<StorePath> = VecDeque::new();
        for p in &o.closure {
            queue.push_back(StorePath::parse(p).with_context(|| format!("--closure {p}"))?);
        }
        while let Some(p) = queue.pop_front() {
            if !seen.insert(p.clone()) {
                continue;
            }
            let i = info(&p)?;
            queue.extend(i.references.iter().cloned());
            out.push(i);
        }
    }
    out.retain(|i| {
        let name = i.path.name();
        (o.include.is_empty() || o.include.iter().any(|g| glob_match(g, name)))
            && !o.exclude.iter().any(|g| glob_match(g, name))
    });
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((total, out))
}

/// The publishers named in `--publish`, from `[backends.*]`.
fn publishers(config: &Config, names: &[String]) -> anyhow::Result<Vec<Arc<dyn Publisher>>> {
    let mut out: Vec<Arc<dyn Publisher>> = Vec::new();
    for name in names {
        let missing = || anyhow::anyhow!("--publish {name}: [backends.{name}] is not configured");
        match name.as_str() {
            "ipfs" => {
                let spec = config.backends.ipfs.as_ref().ok_or_else(missing)?;
                let p = ds_fetcher::ipfs::IpfsPublisher::new(spec)
                    .map_err(|e| anyhow::anyhow!("ipfs publisher: {e}"))?;
                out.push(Arc::new(p));
            }
            "bittorrent" => {
                let spec = config.backends.bittorrent.as_ref().ok_or_else(missing)?;
                let p = ds_fetcher::bittorrent::TorrentPublisher::new(spec)
                    .map_err(|e| anyhow::anyhow!("bittorrent publisher: {e}"))?;
                out.push(Arc::new(p));
            }
            "s3" => {
                let spec = config.backends.s3.as_ref().ok_or_else(missing)?;
                let p = ds_fetcher::s3::S3Publisher::new(spec)
                    .map_err(|e| anyhow::anyhow!("s3 publisher: {e}"))?;
                out.push(Arc::new(p));
            }
            other => bail!("--publish {other}: unknown (ipfs, bittorrent, s3)"),
        }
    }
    Ok(out)
}

/// The narinfo facts of a local path (no file facts yet).
fn local_narinfo(i: &PathInfo) -> NarInfo {
    NarInfo {
        store_path: i.path.clone(),
        url: String::new(),
        compression: Compression::None,
        file_hash: None,
        file_size: None,
        nar_hash: i.nar_hash.clone(),
        nar_size: i.nar_size,
        references: i.references.clone(),
        deriver: i.deriver.clone(),
        sigs: i.sigs.clone(),
        ca: i.ca.clone(),
    }
}

fn ctx_keys(config: &Config) -> Vec<ds_core::PublicKey> {
    config.trusted_keys()
}

/// The first upstream narinfo for `info` with the same NarHash: its file
/// facts and the `file:` locator.
async fn from_upstream(
    client: &reqwest::Client,
    config: &Config,
    info: &PathInfo,
) -> Option<(NarInfo, Locator)> {
    for u in &config.upstreams {
        // A narinfo this node trusts (so its file facts are not made up by
        // whoever answers at that address); the signatures recorded come
        // from our own database, which holds what the upstream signed.
        match ds_mapper::http::fetch_narinfo(
            client,
            &u.url,
            info.path.hash(),
            config.upstream_timeout,
            None,
            &ctx_keys(config),
        )
        .await
        {
            Ok(n) if n.nar_hash == info.nar_hash && n.file_hash.is_some() => {
                let loc = ds_mapper::upstream::file_locator(&u.url, &n);
                return Some((n, loc));
            }
            Ok(_) => {
                tracing::debug!(path = %info.path, upstream = %u.url, "different NAR upstream")
            }
            Err(e) => tracing::debug!(path = %info.path, upstream = %u.url, "{e}"),
        }
    }
    None
}

/// Write the NAR file of `path` to `out`, compressed, and return its
/// SHA-256 and size (hashed while written: the file is read once) and the
/// NAR's size.
///
/// One synchronous encoder, fed in order and finished once, no flushes in
/// between: the same NAR gives the same file bytes on every run, so a
/// re-export finds the same FileHash and changes nothing (an index in git
/// stays diff-free).
async fn make_nar_file(
    store: Arc<LocalStore>,
    path: StorePath,
    compression: Compression,
    out: &Path,
) -> anyhow::Result<(Hash, u64, u64)> {
    /// Counts and hashes what goes to the file.
    struct Hashing<W> {
        inner: W,
        hasher: Sha256,
        size: u64,
    }
    impl<W: std::io::Write> std::io::Write for Hashing<W> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = self.inner.write(buf)?;
            self.hasher.update(&buf[..n]);
            self.size += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }
    let out = out.to_path_buf();
    tokio::task::spawn_blocking(move || -> anyhow::Result<(Hash, u64, u64)> {
        use std::io::Write as _;
        let mut nar = store.nar_reader(&path)?;
        let file =
            std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
        let mut w = Hashing {
            inner: std::io::BufWriter::with_capacity(256 * 1024, file),
            hasher: Sha256::new(),
            size: 0,
        };
        let nar_bytes = match compression {
            Compression::None => std::io::copy(&mut nar, &mut w)?,
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(&mut w, 3)?;
                let n = std::io::copy(&mut nar, &mut e)?;
                e.finish()?;
                n
            }
            Compression::Xz => {
                let mut e = liblzma::write::XzEncoder::new(&mut w, 6);
                let n = std::io::copy(&mut nar, &mut e)?;
                e.finish()?;
                n
            }
            other => bail!("--compression {}: use none, zstd or xz", other.as_str()),
        };
        w.flush()?;
        let Hashing { hasher, size, .. } = w;
        let hash = Hash::from_digest(HashAlgo::Sha256, &hasher.finalize())
            .context("sha256 digest length")?;
        Ok((hash, size, nar_bytes))
    })
    .await
    .context("NAR file task")?
}

/// One path's entries (one per NAR file: upstream's, our published one).
async fn index_one(ctx: &Ctx, info: PathInfo) -> (Vec<Entry>, bool, bool, bool, u64) {
    let (mut upstream, mut published, mut failed, mut nar_bytes) = (false, false, false, 0);
    let mut entries = Vec::new();
    if let Some((n, loc)) = from_upstream(&ctx.client, &ctx.config, &info).await {
        let mut narinfo = local_narinfo(&info);
        narinfo.url = n.url.clone();
        narinfo.compression = n.compression.clone();
        narinfo.file_hash = n.file_hash.clone();
        narinfo.file_size = n.file_size;
        entries.push(Entry {
            narinfo,
            locators: vec![loc],
        });
        upstream = true;
    }
    if !ctx.publishers.is_empty() {
        let tmp = ctx.work.join(format!("{}.nar", info.path.hash()));
        match make_nar_file(
            ctx.store.clone(),
            info.path.clone(),
            ctx.compression.clone(),
            &tmp,
        )
        .await
        {
            Ok((file_hash, file_size, n)) => {
                nar_bytes = n;
                let facts = FileFacts {
                    compression: ctx.compression.clone(),
                    file_hash: Some(file_hash.clone()),
                    file_size: Some(file_size),
                };
                let mut narinfo = local_narinfo(&info);
                narinfo.url = format!(
                    "nar/{}.nar{}",
                    folder::entry_name(&file_hash),
                    ctx.compression.extension()
                );
                narinfo.compression = ctx.compression.clone();
                narinfo.file_hash = Some(file_hash);
                narinfo.file_size = Some(file_size);
                let mut locators = Vec::new();
                for p in &ctx.publishers {
                    match p.publish(tmp.clone(), facts.clone(), &narinfo).await {
                        Ok(l) => locators.push(l),
                        Err(e) => {
                            failed = true;
                            tracing::warn!(path = %info.path, publisher = p.scheme(), "publishing failed: {e}");
                        }
                    }
                }
                if !locators.is_empty() {
                    published = true;
                    entries.push(Entry { narinfo, locators });
                }
            }
            Err(e) => {
                failed = true;
                tracing::warn!(path = %info.path, "generating the NAR file: {e:#}");
            }
        }
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    (entries, upstream, published, failed, nar_bytes)
}

struct Ctx {
    client: reqwest::Client,
    config: Config,
    store: Arc<LocalStore>,
    publishers: Vec<Arc<dyn Publisher>>,
    compression: Compression,
    work: PathBuf,
}

/// Run `index export`.
pub async fn export(o: &ExportOptions) -> anyhow::Result<ExportReport> {
    let started = Instant::now();
    let config = load_config(&o.config)?;
    let uri = match &o.store {
        Some(s) => StoreUri::parse(s).with_context(|| format!("--store {s}"))?,
        None => config.store.clone(),
    };
    let store = Arc::new(LocalStore::open(&uri).with_context(|| {
        format!(
            "opening the store {}",
            ds_runtime::config::store_display(&uri)
        )
    })?);
    let mut publishers = publishers(&config, &o.publish)?;
    publishers.extend(o.extra_publishers.iter().cloned());
    std::fs::create_dir_all(&o.dir).with_context(|| format!("creating {}", o.dir.display()))?;
    let s = store.clone();
    let opts = o.clone();
    let (store_paths, selected) = tokio::task::spawn_blocking(move || select(&s, &opts))
        .await
        .context("selecting paths")??;
    let work = tempfile::Builder::new()
        .prefix(".ds-export-")
        .tempdir_in(&o.dir)
        .context("work directory")?;
    let ctx = Arc::new(Ctx {
        client: ds_mapper::http::client(),
        config,
        store,
        publishers,
        compression: o.compression.clone(),
        work: work.path().to_path_buf(),
    });
    let mut report = ExportReport {
        store_paths,
        selected: selected.len(),
        ..Default::default()
    };
    let jobs = o.jobs.max(1);
    let mut results = stream::iter(selected.into_iter().map(|info| {
        let ctx = ctx.clone();
        async move { index_one(&ctx, info).await }
    }))
    .buffer_unordered(jobs);
    let mut keep: BTreeSet<PathBuf> = BTreeSet::new();
    let mut pending_writes = Vec::new();
    while let Some((entries, up, publ, failed, nar)) = results.next().await {
        report.upstream += up as usize;
        report.published += publ as usize;
        report.failed += failed as usize;
        report.nar_bytes += nar;
        if entries.is_empty() {
            report.skipped += 1;
        }
        pending_writes.extend(entries);
    }
    // Rendering and comparing files is blocking file work: off the runtime,
    // in a few threads.
    let dir = o.dir.clone();
    let chunks: Vec<Vec<Entry>> = {
        let n = pending_writes.len().div_ceil(4).max(1);
        pending_writes.chunks(n).map(|c| c.to_vec()).collect()
    };
    let mut handles = Vec::new();
    for chunk in chunks {
        let dir = dir.clone();
        handles.push(tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for e in chunk {
                out.push(folder::write_entry(&dir, &e));
            }
            out
        }));
    }
    for h in handles {
        for r in h.await.context("writing entries")? {
            let (path, w) = r?;
            keep.insert(path);
            match w {
                Written::Written => report.written += 1,
                Written::Unchanged => report.unchanged += 1,
            }
        }
    }
    if o.prune {
        for f in folder::entry_files(&o.dir)? {
            if !keep.contains(&f) {
                std::fs::remove_file(&f).with_context(|| format!("removing {}", f.display()))?;
                report.pruned += 1;
            }
        }
    }
    drop(work);
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Where `index import` puts entries for this node's mapper.
pub fn import_dir(config: &Config) -> PathBuf {
    config.state_directory.join(ds_mapper::stack::IMPORT_DIR)
}

/// What an import did.
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    /// Entries copied (new or changed).
    pub written: usize,
    /// Entries already there.
    pub unchanged: usize,
    /// Files refused (malformed, misnamed).
    pub invalid: usize,
    /// Entries without a signature from a trusted key (copied; the mapper
    /// will not answer them until the key is trusted).
    pub untrusted: usize,
}

/// Run `index import SRC` into `dest` (default: [`import_dir`]).
pub fn import(
    src: &Path,
    config: &Option<PathBuf>,
    dest: Option<&Path>,
) -> anyhow::Result<(PathBuf, ImportReport)> {
    let config = load_config(config)?;
    let dest = dest
        .map(Path::to_path_buf)
        .unwrap_or_else(|| import_dir(&config));
    let keys = config.trusted_keys();
    let mut report = ImportReport::default();
    let files = folder::entry_files(src).with_context(|| format!("reading {}", src.display()))?;
    for f in files {
        match folder::read_entry(&f) {
            Ok(e) => {
                if !e.narinfo.is_trusted(&keys) {
                    report.untrusted += 1;
                }
                // Re-rendered: the copy is in the canonical form.
                match folder::write_entry(&dest, &e)?.1 {
                    Written::Written => report.written += 1,
                    Written::Unchanged => report.unchanged += 1,
                }
            }
            Err(err) => {
                tracing::warn!(file = %f.display(), "not imported: {err}");
                report.invalid += 1;
            }
        }
    }
    Ok((dest, report))
}

/// Run `index stats DIR`: a printable summary.
pub fn stats(dir: &Path, config: &Option<PathBuf>) -> anyhow::Result<String> {
    let keys = match config {
        Some(_) => Some(load_config(config)?.trusted_keys()),
        None => None,
    };
    let files = folder::entry_files(dir).with_context(|| format!("reading {}", dir.display()))?;
    let (mut entries, mut invalid, mut untrusted) = (0usize, 0usize, 0usize);
    let (mut nar, mut file) = (0u64, 0u64);
    let mut paths: HashSet<String> = HashSet::new();
    let mut schemes: HashMap<String, usize> = HashMap::new();
    let mut compressions: HashMap<String, usize> = HashMap::new();
    for f in &files {
        match folder::read_entry(f) {
            Ok(e) => {
                entries += 1;
                paths.insert(e.narinfo.store_path.hash().as_str().to_string());
                nar += e.narinfo.nar_size;
                file += e.narinfo.file_size.unwrap_or(0);
                *compressions
                    .entry(e.narinfo.compression.as_str().to_string())
                    .or_default() += 1;
                for l in &e.locators {
                    *schemes.entry(l.scheme().to_string()).or_default() += 1;
                }
                if keys.as_ref().is_some_and(|k| !e.narinfo.is_trusted(k)) {
                    untrusted += 1;
                }
            }
            Err(_) => invalid += 1,
        }
    }
    let sorted = |m: HashMap<String, usize>| {
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort();
        v.iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = format!(
        "entries {entries} ({} store paths), invalid files {invalid}\nNAR bytes {nar}, file bytes {file}\nlocators: {}\ncompression: {}\n",
        paths.len(),
        sorted(schemes),
        sorted(compressions)
    );
    if keys.is_some() {
        out.push_str(&format!("without a trusted signature: {untrusted}\n"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("*", "hello-2.12"));
        assert!(glob_match("hello-*", "hello-2.12"));
        assert!(glob_match("*-2.1?", "hello-2.12"));
        assert!(!glob_match("hello", "hello-2.12"));
        assert!(glob_match("*lib*", "glibc-2.37"));
        assert!(!glob_match("*.drv", "glibc-2.37"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
    }
}
