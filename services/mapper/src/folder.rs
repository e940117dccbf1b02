//! The folder index (nss-mapper layout, `docs/index-format.md`): one YAML
//! file per NAR file at `DIR/<c>/<sha>.yaml`, where `<sha>` is the nix-base32
//! SHA-256 of the NAR file as served (the narinfo's `FileHash`) and `<c>` its
//! first character. Each holds the NAR's locators and the narinfo facts that
//! check them, so a folder alone answers a narinfo request.
//!
//! The format is written by [`render`] (deterministic: fixed key order,
//! sorted lists, one item per line, no timestamps, so an index diffs well in
//! git) and read by [`parse`], a small parser for exactly this schema: a
//! malformed file is one entry ignored and logged, never a crash.
//! [`FolderMapper`] answers lookups by store path hash from an in-memory
//! map built by scanning the folder, re-scanned when it changes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ds_core::{Hash, Locator, NarInfo, PublicKey, StorePathHash};
use futures::future::BoxFuture;

use crate::mapper::{MapError, Mapper, Mapping, Scope};

/// Largest entry file read (a narinfo with thousands of references is a
/// few hundred KiB).
pub const MAX_ENTRY_BYTES: u64 = 1 << 20;
/// Longest a scan result is trusted without checking the folder's mtimes.
pub const RESCAN_CHECK: Duration = Duration::from_secs(5);
/// First line of every entry: names the format and its version.
pub const HEADER: &str = "# distributed-store index entry v1";

/// Why an entry could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// The narinfo has no FileHash: nothing to key the entry by.
    #[error("{0}: no FileHash, cannot be indexed")]
    NoFileHash(String),
    /// The YAML does not follow the schema.
    #[error("line {line}: {reason}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The facts do not make a valid narinfo / locator.
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// One index entry: a NAR file's narinfo facts and where it can be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The narinfo (FileHash present).
    pub narinfo: NarInfo,
    /// Locators, kept sorted by their string form on render.
    pub locators: Vec<Locator>,
}

/// Characters a value may hold unquoted: enough for store paths, hashes,
/// signatures (base64), URLs and locators, and never YAML-significant in
/// the places we put them (no `": "`, no `" #"`, no leading indicator).
fn plain_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/:._-+=,@#?&~%()".contains(&b))
        && !s.contains(": ")
        && !s.ends_with(':')
        && !s.starts_with(|c: char| "-?:,#&%@".contains(c))
}

/// A scalar as YAML: plain when safe, else a double-quoted string (JSON
/// escaping, which is valid YAML).
fn scalar(s: &str) -> String {
    if plain_ok(s) {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
    }
}

/// The nix-base32 FileHash digest that names the entry.
pub fn entry_name(file_hash: &Hash) -> String {
    let s = file_hash.to_nix32_string();
    s.split_once(':').map(|(_, d)| d.to_string()).unwrap_or(s)
}

/// `DIR/<c>/<sha>.yaml` for a FileHash.
pub fn entry_path(dir: &Path, file_hash: &Hash) -> PathBuf {
    let name = entry_name(file_hash);
    let first = name.chars().next().unwrap_or('0').to_string();
    dir.join(first).join(format!("{name}.yaml"))
}

/// Render an entry (see the module docs for the guarantees).
pub fn render(entry: &Entry) -> Result<String, FolderError> {
    let n = &entry.narinfo;
    let file_hash = n
        .file_hash
        .as_ref()
        .ok_or_else(|| FolderError::NoFileHash(n.store_path.to_absolute()))?;
    let mut out = String::with_capacity(1024);
    let mut kv = |k: &str, v: &str| {
        let _ = writeln!(out, "{k}: {}", scalar(v));
    };
    kv("storePath", &n.store_path.to_absolute());
    kv("url", &n.url);
    kv("compression", n.compression.as_str());
    kv("fileHash", &file_hash.to_nix32_string());
    if let Some(s) = n.file_size {
        kv("fileSize", &s.to_string());
    }
    kv("narHash", &n.nar_hash.to_nix32_string());
    kv("narSize", &n.nar_size.to_string());
    if let Some(d) = &n.deriver {
        kv("deriver", &d.basename());
    }
    if let Some(ca) = &n.ca {
        kv("ca", ca);
    }
    let mut list = |k: &str, mut items: Vec<String>| {
        items.sort();
        items.dedup();
        if items.is_empty() {
            let _ = writeln!(out, "{k}: []");
        } else {
            let _ = writeln!(out, "{k}:");
            for i in items {
                let _ = writeln!(out, "  - {}", scalar(&i));
            }
        }
    };
    list(
        "references",
        n.references.iter().map(|r| r.basename()).collect(),
    );
    list("sigs", n.sigs.iter().map(|s| s.to_string()).collect());
    list(
        "locators",
        entry.locators.iter().map(|l| l.to_string()).collect(),
    );
    Ok(format!("{HEADER}\n{out}"))
}

fn unquote(v: &str, line: usize) -> Result<String, FolderError> {
    let v = v.trim();
    if v.starts_with('"') {
        serde_json::from_str::<String>(v).map_err(|e| FolderError::Syntax {
            line,
            reason: format!("bad quoted string: {e}"),
        })
    } else if v.starts_with('\'') {
        // YAML single quotes: '' is a quote.
        v.strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .map(|v| v.replace("''", "'"))
            .ok_or_else(|| FolderError::Syntax {
                line,
                reason: "unterminated single-quoted string".into(),
            })
    } else {
        // A trailing comment (` #`) is not part of a plain scalar.
        Ok(v.split(" #").next().unwrap_or("").trim_end().to_string())
    }
}

/// Parse an entry. Accepts what [`render`] writes and the usual hand edits
/// (comments, blank lines, quoted or plain scalars, `- item` lists at any
/// indentation, `[]` for empty lists, keys in any order); unknown keys are
/// ignored (later versions may add facts). `storePath`, `url`, `fileHash`,
/// `narHash`, `narSize`, `references`, `sigs` and `locators` are required;
/// the facts must make a valid narinfo and every locator must parse.
pub fn parse(text: &str) -> Result<Entry, FolderError> {
    let mut scalars: HashMap<String, String> = HashMap::new();
    let mut lists: HashMap<String, Vec<String>> = HashMap::new();
    let mut current: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed == "---" {
            continue;
        }
        if let Some(item) =
            trimmed
                .strip_prefix("- ")
                .or(if trimmed == "-" { Some("") } else { None })
        {
            let key = current.as_ref().ok_or_else(|| FolderError::Syntax {
                line,
                reason: "list item outside a list".into(),
            })?;
            lists
                .entry(key.clone())
                .or_default()
                .push(unquote(item, line)?);
            continue;
        }
        if raw.starts_with(char::is_whitespace) {
            return Err(FolderError::Syntax {
                line,
                reason: "unexpected indentation".into(),
            });
        }
        let (k, v) = trimmed.split_once(':').ok_or_else(|| FolderError::Syntax {
            line,
            reason: "expected `key: value`".into(),
        })?;
        let k = k.trim().to_string();
        if !k.chars().all(|c| c.is_ascii_alphanumeric()) || k.is_empty() {
            return Err(FolderError::Syntax {
                line,
                reason: format!("bad key {k:?}"),
            });
        }
        if scalars.contains_key(&k) || lists.contains_key(&k) {
            return Err(FolderError::Syntax {
                line,
                reason: format!("{k} appears twice"),
            });
        }
        let v = v.trim();
        if v.is_empty() {
            lists.insert(k.clone(), Vec::new());
            current = Some(k);
        } else if v == "[]" {
            lists.insert(k, Vec::new());
            current = None;
        } else {
            scalars.insert(k, unquote(v, line)?);
            current = None;
        }
    }
    // Every key render writes unconditionally must be there: a truncated
    // or half-edited file is refused rather than read as fewer facts.
    for k in ["storePath", "url", "fileHash", "narHash", "narSize"] {
        if !scalars.contains_key(k) {
            return Err(FolderError::Invalid(format!("missing {k}")));
        }
    }
    for k in ["references", "sigs", "locators"] {
        if !lists.contains_key(k) {
            return Err(FolderError::Invalid(format!(
                "missing {k} (write `{k}: []` if empty)"
            )));
        }
    }
    // Build narinfo text and let the narinfo parser validate every field.
    let mut ni = String::new();
    let one_line = |k: &str, v: &str| -> Result<(), FolderError> {
        if v.contains('\n') || v.contains('\r') {
            Err(FolderError::Invalid(format!("{k}: newline in value")))
        } else {
            Ok(())
        }
    };
    for (key, name) in [
        ("storePath", "StorePath"),
        ("url", "URL"),
        ("compression", "Compression"),
        ("fileHash", "FileHash"),
        ("fileSize", "FileSize"),
        ("narHash", "NarHash"),
        ("narSize", "NarSize"),
        ("deriver", "Deriver"),
        ("ca", "CA"),
    ] {
        if let Some(v) = scalars.get(key) {
            one_line(key, v)?;
            let _ = writeln!(ni, "{name}: {v}");
        }
    }
    let refs = lists.get("references").cloned().unwrap_or_default();
    for r in &refs {
        one_line("references", r)?;
        if r.contains(' ') {
            return Err(FolderError::Invalid(format!("reference {r:?}")));
        }
    }
    let _ = writeln!(ni, "References: {}", refs.join(" "));
    for s in lists.get("sigs").into_iter().flatten() {
        one_line("sigs", s)?;
        let _ = writeln!(ni, "Sig: {s}");
    }
    let narinfo = NarInfo::parse(&ni).map_err(|e| FolderError::Invalid(e.to_string()))?;
    if narinfo.file_hash.is_none() {
        return Err(FolderError::NoFileHash(narinfo.store_path.to_absolute()));
    }
    let locators = lists
        .get("locators")
        .into_iter()
        .flatten()
        .map(|l| Locator::parse(l).map_err(|e| FolderError::Invalid(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Entry { narinfo, locators })
}

/// Read and parse one entry file, checking that its name is its FileHash.
pub fn read_entry(path: &Path) -> Result<Entry, FolderError> {
    use std::io::Read as _;
    let io = |source| FolderError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let mut text = String::new();
    f.take(MAX_ENTRY_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_ENTRY_BYTES {
        return Err(FolderError::Invalid(format!(
            "larger than {MAX_ENTRY_BYTES} bytes"
        )));
    }
    let entry = parse(&text)?;
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let expected = entry
        .narinfo
        .file_hash
        .as_ref()
        .map(entry_name)
        .unwrap_or_default();
    if name != expected {
        return Err(FolderError::Invalid(format!(
            "file name {name:?} is not its fileHash {expected:?}"
        )));
    }
    Ok(entry)
}

/// What [`write_entry`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The file already had exactly these bytes: untouched.
    Unchanged,
    /// Created or replaced.
    Written,
}

/// Write an entry under `dir` unless the file already holds the same bytes
/// (so a re-export leaves unchanged files, and their mtimes, alone).
/// Written through a temporary file and a rename: a reader never sees half.
pub fn write_entry(dir: &Path, entry: &Entry) -> Result<(PathBuf, Written), FolderError> {
    let text = render(entry)?;
    let fh = entry
        .narinfo
        .file_hash
        .as_ref()
        .ok_or_else(|| FolderError::NoFileHash(entry.narinfo.store_path.to_absolute()))?;
    let path = entry_path(dir, fh);
    write_if_changed(&path, text.as_bytes()).map(|w| (path, w))
}

/// Write `bytes` to `path` unless it already holds them.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<Written, FolderError> {
    let io = |source| FolderError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(old) = std::fs::read(path) {
        if old == bytes {
            return Ok(Written::Unchanged);
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let tmp = path.with_extension(format!("yaml.tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(Written::Written)
}

/// Every `*.yaml` file of a folder in the layout (`DIR/<c>/*.yaml`), sorted.
pub fn entry_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(dir)? {
        let sub = sub?;
        let name = sub.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.len() != 1 || !sub.file_type()?.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(sub.path())? {
            let f = f?;
            let p = f.path();
            if p.extension().is_some_and(|e| e == "yaml") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The modification times of the folder and its `<c>` subfolders: any
/// entry added, removed or renamed into place changes one of them.
fn folder_stamp(dir: &Path) -> Vec<(String, Option<SystemTime>)> {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut out = vec![(String::new(), mtime(dir))];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.len() == 1 {
                out.push((name, mtime(&e.path())));
            }
        }
    }
    out.sort();
    out
}

/// The result of scanning a folder.
#[derive(Debug, Default, Clone)]
pub struct ScanStats {
    /// Entries indexed.
    pub entries: usize,
    /// Files ignored (malformed, misnamed, unreadable).
    pub ignored: usize,
}

/// Scan a folder: store path hash → entry file. Malformed entries are
/// logged and skipped.
pub fn scan(dir: &Path) -> (HashMap<String, PathBuf>, ScanStats) {
    let mut map = HashMap::new();
    let mut stats = ScanStats::default();
    let files = match entry_files(dir) {
        Ok(f) => f,
        // Not there (yet): an empty index, not worth a warning.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (map, stats),
        Err(e) => {
            tracing::warn!(folder = %dir.display(), "cannot list the index folder: {e}");
            return (map, stats);
        }
    };
    for f in files {
        match read_entry(&f) {
            Ok(e) => {
                map.insert(e.narinfo.store_path.hash().as_str().to_string(), f);
                stats.entries += 1;
            }
            Err(e) => {
                tracing::warn!(file = %f.display(), "index entry ignored: {e}");
                stats.ignored += 1;
            }
        }
    }
    (map, stats)
}

struct State {
    map: HashMap<String, PathBuf>,
    stamp: Vec<(String, Option<SystemTime>)>,
    checked: Instant,
}

/// A [`Mapper`] over a folder index. Keeps only the small map of store
/// path hash → file in memory; the entry itself is read on lookup (it may
/// have been edited). Answers only entries with a signature from `keys`
/// (or content-addressed): a folder is shared data, not a trust root.
pub struct FolderMapper {
    dir: PathBuf,
    name: String,
    keys: Vec<PublicKey>,
    check: Duration,
    state: Arc<Mutex<State>>,
}

impl FolderMapper {
    /// Open `dir` (scanned now; a missing folder is an empty index that is
    /// picked up once it appears).
    pub fn open(dir: &Path, keys: Vec<PublicKey>) -> Self {
        let started = Instant::now();
        let stamp = folder_stamp(dir);
        let (map, stats) = scan(dir);
        tracing::info!(
            folder = %dir.display(),
            entries = stats.entries,
            ignored = stats.ignored,
            "folder index scanned in {:?}",
            started.elapsed()
        );
        FolderMapper {
            dir: dir.to_path_buf(),
            name: format!("folder:{}", dir.display()),
            keys,
            check: RESCAN_CHECK,
            state: Arc::new(Mutex::new(State {
                map,
                stamp,
                checked: Instant::now(),
            })),
        }
    }

    /// Check the folder for changes at most every `every` (default
    /// [`RESCAN_CHECK`]).
    pub fn with_check_interval(mut self, every: Duration) -> Self {
        self.check = every;
        self
    }

    /// Entries currently indexed.
    pub fn len(&self) -> usize {
        self.state.lock().map(|s| s.map.len()).unwrap_or(0)
    }

    /// True when no entry is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-scan when the folder changed (checked at most every check
    /// interval, or now with `force`). Blocking: call off the
    /// async threads.
    pub fn refresh(&self, force: bool) {
        let due = self
            .state
            .lock()
            .map(|s| force || s.checked.elapsed() >= self.check)
            .unwrap_or(true);
        if !due {
            return;
        }
        let stamp = folder_stamp(&self.dir);
        let same = self.state.lock().map(|s| s.stamp == stamp).unwrap_or(false);
        if same && !force {
            if let Ok(mut s) = self.state.lock() {
                s.checked = Instant::now();
            }
            return;
        }
        let (map, stats) = scan(&self.dir);
        tracing::debug!(folder = %self.dir.display(), entries = stats.entries, "folder index re-scanned");
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *s = State {
            map,
            stamp,
            checked: Instant::now(),
        };
    }

    /// Look up synchronously (reads one file).
    pub fn get(&self, hash: &StorePathHash) -> Option<Mapping> {
        self.refresh(false);
        let file = self
            .state
            .lock()
            .ok()
            .and_then(|s| s.map.get(hash.as_str()).cloned())?;
        let entry = match read_entry(&file) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(file = %file.display(), "index entry ignored: {e}");
                return None;
            }
        };
        let mut narinfo = entry.narinfo;
        if narinfo.store_path.hash() != hash {
            return None;
        }
        if !narinfo.is_trusted(&self.keys) {
            tracing::debug!(%hash, folder = %self.dir.display(), "entry has no trusted signature: ignored");
            return None;
        }
        narinfo.retain_trusted_sigs(&self.keys);
        Some(Mapping {
            narinfo,
            locators: entry.locators,
        })
    }
}

impl Mapper for FolderMapper {
    fn name(&self) -> &str {
        &self.name
    }

    fn lookup<'a>(
        &'a self,
        hash: &'a StorePathHash,
        _scope: Scope,
    ) -> BoxFuture<'a, Result<Option<Mapping>, MapError>> {
        Box::pin(async move {
            let me = FolderMapper {
                dir: self.dir.clone(),
                name: self.name.clone(),
                keys: self.keys.clone(),
                check: self.check,
                state: self.state.clone(),
            };
            let hash = hash.clone();
            tokio::task::spawn_blocking(move || me.get(&hash))
                .await
                .map_err(|e| MapError {
                    mapper: self.name.clone(),
                    reason: e.to_string(),
                })
        })
    }
}
