//! `distributed-store index` against a synthetic Nix store (a real Nix-schema
//! SQLite database, 30,000 paths with references and signatures) and a real
//! upstream HTTP server on 127.0.0.1: metadata-only export speed, the
//! incremental re-export, filters, prune, import, stats, and the NAR-hashing
//! path (files generated from a chroot store, hashed while written,
//! checked against `sha256sum`).
//!
//! `cargo test --release -p ds-cli --test index -- --nocapture` prints the
//! MEASURE lines (DS_INDEX_BENCH_PATHS changes the store size).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ds_cli::index::{export, import, stats, ExportOptions};
use ds_core::{base32, Compression, FileFacts, Hash, Locator, NarInfo, SecretKey, StorePath};
use ds_fetcher::backend::{BackendError, Publisher};
use ds_mapper::folder::{self, FolderMapper};
use futures::future::BoxFuture;

fn hash_part(i: u32) -> String {
    let mut b = [0u8; 20];
    b[..4].copy_from_slice(&i.to_le_bytes());
    b[19] = 0x33;
    base32::encode(&b)
}

fn sha(i: u32, salt: u8) -> Hash {
    let mut b = [salt; 32];
    b[..4].copy_from_slice(&i.to_le_bytes());
    Hash::from_digest(ds_core::HashAlgo::Sha256, &b).unwrap()
}

fn path(i: u32) -> String {
    format!("/nix/store/{}-pkg{i}-1.0", hash_part(i))
}

/// A synthetic store: `n` valid paths, each referring to up to 3 earlier
/// ones, signed by `key`; and the narinfos an upstream would serve for
/// them (keyed by hash part).
fn synthetic_store(root: &Path, n: u32, key: &SecretKey) -> HashMap<String, String> {
    let db = root.join("nix/var/nix/db/db.sqlite");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::create_dir_all(root.join("nix/store")).unwrap();
    let mut conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(ds_store::NIX_SCHEMA).unwrap();
    let mut narinfos = HashMap::new();
    let tx = conn.transaction().unwrap();
    {
        let mut vp = tx
            .prepare("INSERT INTO ValidPaths (id, path, hash, registrationTime, narSize, sigs) VALUES (?1, ?2, ?3, 0, ?4, ?5)")
            .unwrap();
        let mut refs = tx
            .prepare("INSERT INTO Refs (referrer, reference) VALUES (?1, ?2)")
            .unwrap();
        for i in 0..n {
            let r: Vec<u32> = [i / 2, i / 3, i / 5]
                .into_iter()
                .filter(|&j| j < i)
                .collect();
            let mut text = format!(
                "StorePath: {}\nURL: nar/{}.nar.xz\nCompression: xz\nFileHash: {}\nFileSize: {}\nNarHash: {}\nNarSize: {}\nReferences: {}\n",
                path(i),
                base32::encode(&sha(i, 2).digest),
                sha(i, 2).to_nix32_string(),
                500 + i,
                sha(i, 1).to_nix32_string(),
                1000 + i,
                r.iter()
                    .map(|&j| path(j).trim_start_matches("/nix/store/").to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            let mut info = NarInfo::parse(&text).unwrap();
            info.sign(key);
            text = info.render();
            let sig = info.sigs[0].to_string();
            vp.execute(rusqlite::params![
                i + 1,
                path(i),
                format!(
                    "sha256:{}",
                    sha(i, 1).to_base16_string().trim_start_matches("sha256:")
                ),
                1000 + i,
                sig
            ])
            .unwrap();
            let mut seen = Vec::new();
            for j in r {
                if !seen.contains(&j) {
                    seen.push(j);
                    refs.execute(rusqlite::params![i + 1, j + 1]).unwrap();
                }
            }
            narinfos.insert(hash_part(i), text);
        }
    }
    tx.commit().unwrap();
    narinfos
}

/// A real HTTP upstream (keep-alive, axum) serving `narinfos`.
async fn upstream(narinfos: HashMap<String, String>) -> String {
    use axum::extract::Path as P;
    let narinfos = Arc::new(narinfos);
    let app = axum::Router::new().route(
        "/{file}",
        axum::routing::get(move |P(file): P<String>| {
            let narinfos = narinfos.clone();
            async move {
                let hit = file
                    .strip_suffix(".narinfo")
                    .and_then(|h| narinfos.get(h).cloned());
                match hit {
                    Some(t) => (axum::http::StatusCode::OK, t),
                    None => (axum::http::StatusCode::NOT_FOUND, String::new()),
                }
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    format!("http://{addr}")
}

fn config(dir: &Path, upstream: &str, key: &SecretKey) -> PathBuf {
    let p = dir.join("config.toml");
    std::fs::write(
        &p,
        format!(
            "stateDirectory = {:?}\nupstreams = [{{ url = {upstream:?}, publicKeys = [{:?}] }}]\nupstreamTimeoutMs = 5000\n",
            dir.join("state").display().to_string(),
            key.public().to_string()
        ),
    )
    .unwrap();
    p
}

fn opts(dir: &Path, config: &Path, store: &Path) -> ExportOptions {
    ExportOptions {
        dir: dir.to_path_buf(),
        config: Some(config.to_path_buf()),
        store: Some(format!("local?root={}", store.display())),
        paths: vec![],
        closure: vec![],
        include: vec![],
        exclude: vec![],
        compression: Compression::Zstd,
        publish: vec![],
        prune: false,
        jobs: 64,
        extra_publishers: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_metadata_only_incremental_filters_import() {
    let n: u32 = std::env::var("DS_INDEX_BENCH_PATHS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30_000);
    let key = SecretKey::from_seed("upstream-1", [4; 32]);
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let t = Instant::now();
    let mut narinfos = synthetic_store(&store, n, &key);
    eprintln!(
        "MEASURE synthetic store of {n} paths made in {:?}",
        t.elapsed()
    );
    // The last path is not upstream: it has no locator, so no entry.
    narinfos.remove(&hash_part(n - 1));
    let up = upstream(narinfos).await;
    let cfg = config(tmp.path(), &up, &key);
    let out = tmp.path().join("index");

    let r = export(&opts(&out, &cfg, &store)).await.unwrap();
    eprintln!(
        "MEASURE index export, metadata only ({n} paths, narinfos from a loopback upstream):\n{r}"
    );
    assert_eq!(r.store_paths, n as usize);
    assert_eq!(r.selected, n as usize);
    assert_eq!(r.upstream, n as usize - 1);
    assert_eq!(r.skipped, 1);
    assert_eq!(r.written, n as usize - 1);
    assert!(r.elapsed < Duration::from_secs(60), "{:?}", r.elapsed);

    // The entries answer lookups with upstream's file facts and signature.
    let m = FolderMapper::open(&out, vec![key.public()]);
    assert_eq!(m.len(), n as usize - 1);
    let h = ds_core::StorePathHash::parse(&hash_part(7)).unwrap();
    let got = m.get(&h).unwrap();
    assert_eq!(got.narinfo.file_hash, Some(sha(7, 2)));
    assert_eq!(got.narinfo.references.len(), 3, "refs 7/2, 7/3, 7/5");
    match &got.locators[0] {
        Locator::File(f) => assert!(f.url.starts_with(&up) && f.file_hash == Some(sha(7, 2))),
        other => panic!("{other:?}"),
    }

    // Re-export: nothing rewritten (no file's mtime changes).
    let f7 = folder::entry_path(&out, &sha(7, 2));
    let before = std::fs::metadata(&f7).unwrap().modified().unwrap();
    let r = export(&opts(&out, &cfg, &store)).await.unwrap();
    eprintln!("MEASURE index re-export, nothing changed:\n{r}");
    assert_eq!((r.written, r.unchanged), (0, n as usize - 1));
    assert_eq!(std::fs::metadata(&f7).unwrap().modified().unwrap(), before);

    // Filters: a closure, names.
    let sub = tmp.path().join("sub");
    let mut o = opts(&sub, &cfg, &store);
    o.closure = vec![path(12)];
    let r = export(&o).await.unwrap();
    // 12 → 6, 4, 2 → 3, 2, 1 … → {12, 6, 4, 3, 2, 1, 0}
    assert_eq!(r.selected, 7, "{r}");
    let mut o = opts(&sub, &cfg, &store);
    o.include = vec!["pkg1?-*".into()];
    o.exclude = vec!["pkg13-*".into()];
    o.prune = true;
    let r = export(&o).await.unwrap();
    assert_eq!(r.selected, 9, "pkg10..pkg19 without pkg13: {r}");
    assert_eq!(r.pruned, 6, "the closure's entries except pkg12: {r}");
    assert_eq!(folder::entry_files(&sub).unwrap().len(), 9);
    // Unknown paths are an error naming them.
    let mut o = opts(&sub, &cfg, &store);
    o.paths = vec![format!("/nix/store/{}-nope", hash_part(n + 5))];
    let e = export(&o).await.err().unwrap();
    assert!(format!("{e:#}").contains("-nope"), "{e:#}");

    // Import into this node's folder (stateDirectory/index); garbage refused.
    std::fs::create_dir_all(sub.join("0")).unwrap();
    std::fs::write(sub.join("0/garbage.yaml"), "x: [").unwrap();
    std::fs::create_dir_all(sub.join("z")).unwrap();
    std::fs::write(sub.join("z/garbage.yaml"), "storePath: x\n").unwrap();
    let (dest, r) = import(&sub, &Some(cfg.clone()), None).unwrap();
    assert_eq!(dest, tmp.path().join("state/index"));
    assert_eq!((r.written, r.invalid, r.untrusted), (9, 2, 0));
    let (_, r) = import(&sub, &Some(cfg.clone()), None).unwrap();
    assert_eq!((r.written, r.unchanged), (0, 9));
    let s = stats(&dest, &Some(cfg.clone())).unwrap();
    assert!(s.contains("entries 9 (9 store paths)"), "{s}");
    assert!(s.contains("locators: file=9"), "{s}");
    assert!(s.contains("without a trusted signature: 0"), "{s}");
}

/// Publishes by copying the file into a folder (what a plain HTTP mirror
/// would serve); the exporter under test generates and hashes the file.
struct DirPublisher(PathBuf);

impl Publisher for DirPublisher {
    fn scheme(&self) -> &'static str {
        "mirror"
    }
    fn publish(
        &self,
        file: PathBuf,
        facts: FileFacts,
        nar: &NarInfo,
    ) -> BoxFuture<'static, Result<Locator, BackendError>> {
        let dest = self.0.join(nar.url.trim_start_matches("nar/"));
        Box::pin(async move {
            std::fs::copy(&file, &dest).map_err(|e| BackendError::Transport(e.to_string()))?;
            let name = dest.file_name().unwrap().to_string_lossy().to_string();
            Ok(Locator::other("mirror", &format!("nar/{name}"), &facts))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_generates_and_hashes_nar_files() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let key = SecretKey::from_seed("fleet-1", [5; 32]);
    // A few real store paths with contents (4 × 32 MiB of varied bytes).
    let n = 4u32;
    let mb: usize = std::env::var("DS_INDEX_BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    synthetic_store(&store, n, &key);
    let lstore = ds_store::LocalStore::open(&ds_store::StoreUri::Chroot(store.clone())).unwrap();
    let conn = rusqlite::Connection::open(store.join("nix/var/nix/db/db.sqlite")).unwrap();
    let mut raw = Vec::new();
    for i in 0..n {
        let p = store.join(path(i).trim_start_matches('/'));
        std::fs::create_dir_all(&p).unwrap();
        let mut x: u64 = 0x9e3779b97f4a7c15 ^ i as u64;
        let data: Vec<u8> = (0..mb * 1024 * 1024)
            .map(|k| {
                if k % 4096 == 0 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                }
                (x >> ((k % 8) * 8)) as u8 ^ (k / 4096) as u8
            })
            .collect();
        std::fs::write(p.join("data"), &data).unwrap();
        // The real NarHash/NarSize of what the store serializes.
        let sp = StorePath::parse(&path(i)).unwrap();
        let mut nar = Vec::new();
        std::io::Read::read_to_end(&mut lstore.nar_reader(&sp).unwrap(), &mut nar).unwrap();
        let h = Hash::sha256(&nar);
        let mut info = NarInfo::parse(&format!(
            "StorePath: {}\nURL: x\nCompression: none\nNarHash: {}\nNarSize: {}\nReferences: \n",
            path(i),
            h.to_nix32_string(),
            nar.len()
        ))
        .unwrap();
        info.sign(&key);
        conn.execute(
            "UPDATE ValidPaths SET hash = ?1, narSize = ?2, sigs = ?3 WHERE path = ?4",
            rusqlite::params![
                format!(
                    "sha256:{}",
                    h.to_base16_string().trim_start_matches("sha256:")
                ),
                nar.len() as i64,
                info.sigs[0].to_string(),
                path(i)
            ],
        )
        .unwrap();
        conn.execute("DELETE FROM Refs", []).unwrap();
        raw.push(nar);
    }
    drop(conn);
    let total: u64 = raw.iter().map(|n| n.len() as u64).sum();
    // No upstream: every locator comes from the publisher.
    let cfg = tmp.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "stateDirectory = {:?}\n",
            tmp.path().join("state").display().to_string()
        ),
    )
    .unwrap();
    let pubdir = tmp.path().join("pub");
    std::fs::create_dir_all(&pubdir).unwrap();
    for compression in [Compression::None, Compression::Zstd] {
        let out = tmp.path().join(format!("index-{}", compression.as_str()));
        let mut o = opts(&out, &cfg, &store);
        o.compression = compression.clone();
        o.extra_publishers = vec![Arc::new(DirPublisher(pubdir.clone()))];
        let r = export(&o).await.unwrap();
        eprintln!(
            "MEASURE index export hashing NARs ({} MB, compression {}):\n{r}",
            total / 1_000_000,
            compression.as_str()
        );
        assert_eq!(
            (r.published, r.written, r.failed),
            (n as usize, n as usize, 0),
            "{r}"
        );
        assert_eq!(r.nar_bytes, total);
        for e in folder::entry_files(&out).unwrap() {
            let e = folder::read_entry(&e).unwrap();
            let fh = e.narinfo.file_hash.clone().unwrap();
            let f = pubdir.join(e.narinfo.url.trim_start_matches("nar/"));
            // The published file's sha256sum is the recorded FileHash.
            let out = std::process::Command::new("sha256sum")
                .arg(&f)
                .output()
                .unwrap();
            let hex = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
            assert_eq!(format!("sha256:{hex}"), fh.to_base16_string());
            assert_eq!(
                std::fs::metadata(&f).unwrap().len(),
                e.narinfo.file_size.unwrap()
            );
            if compression == Compression::None {
                assert_eq!(fh, e.narinfo.nar_hash, "uncompressed: FileHash = NarHash");
            }
            assert_eq!(e.locators[0].scheme(), "mirror");
        }
    }
    // sha256sum over the same bytes, for comparison.
    let all = tmp.path().join("all.nar");
    std::fs::write(&all, raw.concat()).unwrap();
    let t = Instant::now();
    let ok = std::process::Command::new("sha256sum")
        .arg(&all)
        .output()
        .unwrap()
        .status
        .success();
    let secs = t.elapsed().as_secs_f64();
    assert!(ok);
    eprintln!(
        "MEASURE sha256sum over the same {} MB: {:.2} s, {:.1} MB/s",
        total / 1_000_000,
        secs,
        total as f64 / 1e6 / secs
    );
}
