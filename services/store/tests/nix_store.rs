//! ds-store against a real Nix (2.8) store: metadata equals
//! `nix path-info --json`, NARs are byte-identical to Nix's, reads work
//! while Nix writes, and an unprivileged user can read a root-owned store.
//! Each test builds its own private chroot store; tests skip (with the
//! reason printed) when `nix-store` is not installed.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{hash_of, Json, NixEnv};
use ds_core::{Hash, StorePath, StorePathHash};
use ds_store::{LocalStore, PathInfo, StoreError, StoreUri, NAR_CHUNK_SIZE};
use futures::StreamExt;

fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    r.read_to_end(&mut v).unwrap();
    v
}

fn nar_of(store: &LocalStore, path: &str) -> Vec<u8> {
    read_all(store.nar_reader(&StorePath::parse(path).unwrap()).unwrap())
}

/// Our `PathInfo` against one object of `nix path-info --json`.
fn assert_same_as_nix(info: &PathInfo, nix: &Json) {
    let path = nix.get("path").and_then(Json::str).unwrap();
    assert_eq!(info.path.to_string(), path);
    let nix_hash = Hash::parse(nix.get("narHash").and_then(Json::str).unwrap()).unwrap();
    assert_eq!(info.nar_hash, nix_hash, "{path}: narHash");
    assert_eq!(
        info.nar_size,
        nix.get("narSize").unwrap().u64(),
        "{path}: narSize"
    );
    let refs: Vec<String> = info.references.iter().map(|r| r.to_string()).collect();
    let mut nix_refs: Vec<String> = nix
        .get("references")
        .unwrap()
        .arr()
        .iter()
        .map(|r| r.str().unwrap().to_string())
        .collect();
    nix_refs.sort();
    assert_eq!(refs, nix_refs, "{path}: references");
    assert_eq!(
        info.deriver.as_ref().map(|d| d.to_string()),
        nix.get("deriver").and_then(Json::str).map(str::to_string),
        "{path}: deriver"
    );
    let sigs: BTreeSet<String> = info.sigs.iter().map(|s| s.to_string()).collect();
    let nix_sigs: BTreeSet<String> = nix
        .get("signatures")
        .map(|s| {
            s.arr()
                .iter()
                .map(|s| s.str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(sigs, nix_sigs, "{path}: signatures");
    assert_eq!(
        info.ca.as_deref(),
        nix.get("ca").and_then(Json::str),
        "{path}: ca"
    );
    // `nix path-info --json` writes `"ultimate": true` only when it is.
    assert_eq!(
        info.ultimate,
        nix.get("ultimate") == Some(&Json::Bool(true)),
        "{path}: ultimate"
    );
}

#[test]
fn path_info_matches_nix() {
    require_nix!();
    let env = NixEnv::new();
    let app = env.build("app");
    env.build("tree");
    env.build("link");
    let added = env.add_file("added.txt", b"content-addressed\n");
    let key = env.dir().join("key.sec");
    env.run(
        "nix-store",
        &[
            "--generate-binary-cache-key",
            "test-key-1",
            key.to_str().unwrap(),
            env.dir().join("key.pub").to_str().unwrap(),
        ],
    );
    env.run(
        "nix",
        &[
            "store",
            "sign",
            "--key-file",
            key.to_str().unwrap(),
            "-r",
            &app,
        ],
    );

    let store = LocalStore::open(&env.uri()).unwrap();
    let all = env.path_info_json(&["--all"]);
    // leaf, lib, app, tree, link, their .drv files, the added file
    assert!(all.arr().len() >= 11, "{all:?}");
    let mut seen_sigs = 0;
    let mut seen_ca = 0;
    for nix in all.arr() {
        let path = nix.get("path").and_then(Json::str).unwrap();
        let info = store.path_info(&hash_of(path)).unwrap().expect(path);
        assert_same_as_nix(&info, nix);
        seen_sigs += info.sigs.len();
        seen_ca += usize::from(info.ca.is_some());
    }
    assert_eq!(seen_sigs, 3, "app, lib, leaf signed once each");
    assert!(
        seen_ca >= 6,
        "5 .drv files (text:) and the added file (fixed:r:)"
    );
    let added_info = store.path_info(&hash_of(&added)).unwrap().unwrap();
    assert!(added_info.ca.unwrap().starts_with("fixed:r:sha256:"));
}

/// `ultimate` is what the signer's default (`signPaths = "built"`) rests
/// on: true for what `nix-build` built here, false for the same path
/// substituted into another store (`nix copy --from file://…`), imported
/// (`nix-store --import`) or added (`nix-store --add`), and for `.drv` files.
#[test]
fn ultimate_only_for_paths_built_here() {
    require_nix!();
    let builder = NixEnv::new();
    let app = builder.build("app");
    let added = builder.add_file("added.txt", b"not built\n");
    let key = builder.dir().join("key.sec");
    let pubkey = builder.dir().join("key.pub");
    builder.run(
        "nix-store",
        &[
            "--generate-binary-cache-key",
            "ult-1",
            key.to_str().unwrap(),
            pubkey.to_str().unwrap(),
        ],
    );
    let cache = builder.dir().join("cache");
    let to = format!("file://{}?secret-key={}", cache.display(), key.display());
    builder.run("nix", &["copy", "--to", &to, &app, &added]);
    // The closure: an import needs the references valid first.
    let closure = builder.run_str("nix-store", &["-qR", &app]);
    let mut export_args = vec!["--export"];
    export_args.extend(closure.lines());
    let exported = builder.run("nix-store", &export_args);

    let built = LocalStore::open(&builder.uri()).unwrap();
    let app_info = built.path_info(&hash_of(&app)).unwrap().unwrap();
    assert!(app_info.ultimate, "nix-build output is ultimate");
    let deriver = app_info.deriver.clone().expect("deriver recorded");
    let drv = built.path_info(deriver.hash()).unwrap().unwrap();
    assert!(!drv.ultimate, ".drv files are written, not built");
    let added_info = built.path_info(&hash_of(&added)).unwrap().unwrap();
    assert!(!added_info.ultimate, "nix-store --add is not a build");

    // The same paths substituted into a second store, signed by the builder.
    let substituter = NixEnv::new();
    let trusted = std::fs::read_to_string(&pubkey).unwrap();
    let from = format!("file://{}", cache.display());
    substituter.run(
        "nix",
        &[
            "copy",
            "--from",
            &from,
            "--option",
            "trusted-public-keys",
            trusted.trim(),
            &app,
            &added,
        ],
    );
    let substituted = LocalStore::open(&substituter.uri()).unwrap();
    for path in [&app, &added] {
        let info = substituted.path_info(&hash_of(path)).unwrap().unwrap();
        assert_eq!(
            (info.nar_hash.clone(), info.ultimate),
            (
                built.path_info(&hash_of(path)).unwrap().unwrap().nar_hash,
                false
            ),
            "{path}: same NAR, not ultimate once substituted"
        );
    }
    let app_sub = substituted.path_info(&hash_of(&app)).unwrap().unwrap();
    assert_eq!(app_sub.sigs.len(), 1, "keeps the builder's signature");

    // And imported (no signature check at all).
    let importer = NixEnv::new();
    let mut child = importer
        .cmd("nix-store")
        .arg("--import")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&exported).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "nix-store --import");
    let imported = LocalStore::open(&importer.uri()).unwrap();
    let info = imported.path_info(&hash_of(&app)).unwrap().unwrap();
    assert!(!info.ultimate, "nix-store --import is not a build");
    for nix in substituter.path_info_json(&["--all"]).arr() {
        let path = nix.get("path").and_then(Json::str).unwrap();
        assert_same_as_nix(
            &substituted.path_info(&hash_of(path)).unwrap().unwrap(),
            nix,
        );
    }
}

#[test]
fn unknown_hash_is_none() {
    require_nix!();
    let env = NixEnv::new();
    let leaf = env.build("leaf");
    let store = LocalStore::open(&env.uri()).unwrap();
    let hash = hash_of(&leaf);
    assert!(store.path_info(&hash).unwrap().is_some());
    // Neighbours of a valid hash, in both directions, and far away.
    let s = hash.as_str();
    let last = s.as_bytes()[31];
    for c in b"0123456789abcdfghijklmnpqrsvwxyz" {
        if *c == last {
            continue;
        }
        let other = format!("{}{}", &s[..31], *c as char);
        let other = StorePathHash::parse(&other).unwrap();
        assert_eq!(store.path_info(&other).unwrap(), None, "{other}");
    }
    let zeros = StorePathHash::parse(&"0".repeat(32)).unwrap();
    assert_eq!(store.path_info(&zeros).unwrap(), None);
}

#[test]
fn unparsable_signatures_are_skipped() {
    require_nix!();
    let env = NixEnv::new();
    let leaf = env.build("leaf");
    let key = env.dir().join("key.sec");
    env.run(
        "nix-store",
        &[
            "--generate-binary-cache-key",
            "k",
            key.to_str().unwrap(),
            env.dir().join("key.pub").to_str().unwrap(),
        ],
    );
    env.run(
        "nix",
        &["store", "sign", "--key-file", key.to_str().unwrap(), &leaf],
    );
    {
        // As if some tool had written junk next to the good signature.
        let db = rusqlite::Connection::open(env.uri().db_path()).unwrap();
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        db.execute(
            "UPDATE ValidPaths SET sigs = 'junk  nokey:notbase64 ' || sigs || ' k:c2hvcnQ=' WHERE path = ?1",
            [&leaf],
        )
        .unwrap();
    }
    let store = LocalStore::open(&env.uri()).unwrap();
    let info = store.path_info(&hash_of(&leaf)).unwrap().unwrap();
    assert_eq!(info.sigs.len(), 1, "{:?}", info.sigs);
    assert_eq!(info.sigs[0].key_name, "k");
}

#[test]
fn nar_is_identical_to_nix() {
    require_nix!();
    let env = NixEnv::new();
    let tree = env.build("tree");
    let leaf = env.build("leaf");
    let link = env.build("link");
    let app = env.build("app");
    let store = LocalStore::open(&env.uri()).unwrap();

    // The fixture has what it should: a symlink path, a file path, a tree.
    let phys = |p: &str| store.physical_path(&StorePath::parse(p).unwrap());
    assert!(phys(&link)
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(phys(&leaf).symlink_metadata().unwrap().is_file());
    assert!(phys(&tree).join("bin/run").metadata().unwrap().mode() & 0o100 != 0);
    assert!(phys(&tree)
        .join("a/b/link-up")
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(phys(&tree).join("big.txt").metadata().unwrap().len() > 2 * NAR_CHUNK_SIZE as u64);

    for path in [&tree, &leaf, &link, &app] {
        let ours = nar_of(&store, path);
        let nix = env.run("nix", &["store", "dump-path", path]);
        assert!(
            ours == nix,
            "{path}: NAR differs from `nix store dump-path` ({} vs {} bytes)",
            ours.len(),
            nix.len()
        );
        let nix_dump = env.run("nix-store", &["--dump", phys(path).to_str().unwrap()]);
        assert!(
            ours == nix_dump,
            "{path}: NAR differs from `nix-store --dump`"
        );
        let info = store.path_info(&hash_of(path)).unwrap().unwrap();
        assert_eq!(
            Hash::sha256(&ours),
            info.nar_hash,
            "{path}: sha256 of our NAR"
        );
        assert_eq!(ours.len() as u64, info.nar_size, "{path}: size of our NAR");
    }

    // Tiny reads must give the same bytes as big ones.
    let mut reader = store.nar_reader(&StorePath::parse(&tree).unwrap()).unwrap();
    let mut small = Vec::new();
    let mut buf = [0u8; 7];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        small.extend_from_slice(&buf[..n]);
    }
    assert!(small == nar_of(&store, &tree));
}

#[test]
fn nar_from_offset() {
    require_nix!();
    let env = NixEnv::new();
    let tree = env.build("tree");
    let store = LocalStore::open(&env.uri()).unwrap();
    let path = StorePath::parse(&tree).unwrap();
    let full = nar_of(&store, &tree);
    let len = full.len() as u64;
    for offset in [
        0,
        1,
        7,
        8,
        100,
        1023,
        1024,
        4096,
        65535,
        65536,
        65537,
        100_000,
        len - 1,
        len,
        len + 10,
    ] {
        let part = read_all(store.nar_reader_from(&path, offset).unwrap());
        let start = usize::try_from(offset.min(len)).unwrap();
        assert!(
            part == full[start..],
            "offset {offset} of {len}: {} bytes",
            part.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nar_stream_chunks_and_offsets() {
    require_nix!();
    let env = NixEnv::new();
    let tree = env.build("tree");
    let store = Arc::new(LocalStore::open(&env.uri()).unwrap());
    let path = StorePath::parse(&tree).unwrap();
    let full = nar_of(&store, &tree);

    let chunks: Vec<_> = store.clone().nar_stream(path.clone()).collect().await;
    let chunks: Vec<_> = chunks.into_iter().map(Result::unwrap).collect();
    assert!(chunks.len() >= 3, "tree NAR spans several chunks");
    let (last, whole) = chunks.split_last().unwrap();
    assert!(whole.iter().all(|c| c.len() == NAR_CHUNK_SIZE));
    assert!(!last.is_empty() && last.len() <= NAR_CHUNK_SIZE);
    assert!(chunks.concat() == full);

    for offset in [1u64, 65536, 70_000] {
        let got: Vec<_> = store
            .clone()
            .nar_stream_from(path.clone(), offset)
            .collect()
            .await;
        let got: Vec<u8> = got.into_iter().flat_map(|c| c.unwrap()).collect();
        assert!(got == full[offset as usize..], "offset {offset}");
    }

    // Dropping the stream early must not hang or fail anything.
    let mut s = Box::pin(store.clone().nar_stream(path.clone()));
    assert!(s.next().await.unwrap().is_ok());
    drop(s);

    // A path not on disk: the error is the stream's item, kind preserved.
    let missing = StorePath::parse("/nix/store/00000000000000000000000000000000-missing").unwrap();
    let items: Vec<_> = store.clone().nar_stream(missing.clone()).collect().await;
    assert_eq!(items.len(), 1);
    let err = items.into_iter().next().unwrap().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    match store.nar_reader(&missing) {
        Err(StoreError::Io { path, .. }) => {
            assert!(path.ends_with("00000000000000000000000000000000-missing"))
        }
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("reader for a missing path"),
    }
}

/// A file name that is not UTF-8 is served exactly as Nix dumps it (the
/// nix-nar encoder used before could not encode it at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_name_is_served() {
    require_nix!();
    let env = NixEnv::new();
    let bad = env.build("badname");
    let store = Arc::new(LocalStore::open(&env.uri()).unwrap());
    let path = StorePath::parse(&bad).unwrap();
    let info = store.path_info(path.hash()).unwrap().unwrap();
    let nix = env.run("nix", &["store", "dump-path", &bad]);
    let name_token = [1, 0, 0, 0, 0, 0, 0, 0, 0xff];
    assert!(
        nix.windows(9).any(|w| w == name_token),
        "Nix dumps the name"
    );
    assert!(nar_of(&store, &bad) == nix);
    let items: Vec<_> = store
        .clone()
        .nar_stream_verified(path, info.nar_hash, info.nar_size)
        .collect()
        .await;
    let got: Vec<u8> = items.into_iter().flat_map(|c| c.unwrap()).collect();
    assert!(got == nix);
}

/// Paths Nix adds while we read become visible, with Nix's metadata, and
/// reads never fail meanwhile.
#[test]
fn reads_while_nix_writes() {
    require_nix!();
    let env = Arc::new(NixEnv::new());
    let leaf = env.build("leaf");
    let store = Arc::new(LocalStore::open(&env.uri()).unwrap());

    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (env, done) = (env.clone(), done.clone());
        std::thread::spawn(move || {
            let mut added = Vec::new();
            for i in 0..25 {
                added.push(env.add_file(
                    &format!("f{i}"),
                    format!("file {i}\n").repeat(i * 50 + 1).as_bytes(),
                ));
            }
            env.build("tree");
            done.store(true, Ordering::SeqCst);
            added
        })
    };
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (store, done, leaf) = (store.clone(), done.clone(), leaf.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !done.load(Ordering::SeqCst) {
                    let info = store.path_info(&hash_of(&leaf)).unwrap().unwrap();
                    let nar = nar_of(&store, &leaf);
                    assert_eq!(Hash::sha256(&nar), info.nar_hash);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let added = writer.join().unwrap();
    let reads: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(reads > 0);
    let nix = env.path_info_json(&added.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(nix.arr().len(), added.len());
    for nix in nix.arr() {
        let path = nix.get("path").and_then(Json::str).unwrap();
        let info = store.path_info(&hash_of(path)).unwrap().expect(path);
        assert_same_as_nix(&info, nix);
        assert_eq!(Hash::sha256(&nar_of(&store, path)), info.nar_hash);
    }
}

// ---------------------------------------------------------------------------
// Unprivileged reader: the test binary re-runs itself as nobody (65534)
// through setpriv; `unprivileged_child` is the entry point it runs.

const CHILD_ENV: &str = "DS_STORE_TEST_CHILD_ROOT";

/// Not a test by itself: does nothing unless started by
/// `unprivileged_reader`. Opens the store given in the environment; on
/// failure prints `OPEN-ERROR <message>`. Otherwise prints `READY`, then for
/// each hash read from stdin waits (up to 30 s) for the path to be valid
/// and prints `INFO <path> <narHash> <narSize> <sha256 of our NAR> <refs>`.
#[test]
fn unprivileged_child() {
    let Some(root) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let store = match LocalStore::open(&StoreUri::Chroot(PathBuf::from(root))) {
        Ok(s) => s,
        Err(e) => {
            println!("OPEN-ERROR {e}");
            return;
        }
    };
    println!("READY uid={}", rustix::process::geteuid().as_raw());
    for line in std::io::stdin().lock().lines() {
        let hash = StorePathHash::parse(line.unwrap().trim()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let info = loop {
            match store.path_info(&hash) {
                Ok(Some(info)) => break info,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                other => panic!("{hash}: {other:?}"),
            }
        };
        let nar = read_all(store.nar_reader(&info.path).unwrap());
        let refs: Vec<_> = info.references.iter().map(|r| r.to_string()).collect();
        println!(
            "INFO {} {} {} {} {}",
            info.path,
            info.nar_hash.to_nix32_string(),
            info.nar_size,
            Hash::sha256(&nar).to_nix32_string(),
            refs.join(",")
        );
    }
}

struct Child {
    proc: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Child {
    /// Next line of ours (the test harness prints its own lines too).
    fn line(&mut self) -> String {
        loop {
            let mut l = String::new();
            assert!(
                self.out.read_line(&mut l).unwrap() > 0,
                "child exited early"
            );
            // With --nocapture, libtest may print "test name ... " first.
            for marker in ["OPEN-ERROR ", "READY", "INFO "] {
                if let Some(i) = l.find(marker) {
                    return l[i..].trim_end().to_string();
                }
            }
        }
    }

    fn ask(&mut self, path: &str) -> String {
        writeln!(self.proc.stdin.as_mut().unwrap(), "{}", hash_of(path)).unwrap();
        self.line()
    }
}

/// Run this test binary's `unprivileged_child` as nobody.
fn spawn_unprivileged(exe: &Path, env: &NixEnv) -> Child {
    let mut proc = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(exe)
        .args([
            "--exact",
            "unprivileged_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, env.root())
        .current_dir(env.dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("setpriv");
    let out = BufReader::new(proc.stdout.take().unwrap());
    Child { proc, out }
}

fn expected_line(env: &NixEnv, path: &str) -> String {
    let nix = env.path_info_json(&[path]);
    let nix = &nix.arr()[0];
    let hash = Hash::parse(nix.get("narHash").and_then(Json::str).unwrap()).unwrap();
    let mut refs: Vec<_> = nix
        .get("references")
        .unwrap()
        .arr()
        .iter()
        .map(|r| r.str().unwrap().to_string())
        .collect();
    refs.sort();
    format!(
        "INFO {path} {} {} {} {}",
        hash.to_nix32_string(),
        nix.get("narSize").unwrap().u64(),
        hash.to_nix32_string(),
        refs.join(",")
    )
    .trim_end()
    .to_string()
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// How the service runs on NixOS: as a user who can read the store and the
/// database (root-owned, 0644, in 0755 directories) but write nothing.
#[test]
fn unprivileged_reader() {
    require_nix!();
    if !common::is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipping: needs root and setpriv(1) to run a reader as nobody");
        return;
    }
    let env = NixEnv::new();
    let tree = env.build("tree");
    let app = env.build("app");
    let db_dir = env.db_dir();
    let db = db_dir.join("db.sqlite");
    let (wal, shm) = (db_dir.join("db.sqlite-wal"), db_dir.join("db.sqlite-shm"));
    for (p, mode) in [(&db_dir, 0o755), (&db, 0o644)] {
        let m = std::fs::metadata(p).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (0, mode), "{}", p.display());
    }
    // Nix deletes the WAL files when its last connection closes.
    assert!(!wal.exists() && !shm.exists(), "Nix left WAL files behind");

    // Copy of the test binary where nobody can surely run it.
    let exe = env.dir().join("test-bin");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();

    // 1. Without the WAL files a reader that cannot create them fails,
    //    with an error saying why and what to do.
    let mut child = spawn_unprivileged(&exe, &env);
    let line = child.line();
    assert!(line.starts_with("OPEN-ERROR "), "{line}");
    assert!(
        line.contains("db.sqlite-wal") && line.contains("ensure_wal_files"),
        "{line}"
    );
    assert!(child.proc.wait().unwrap().success());

    // 2. The privileged fix: create them (root, 0644, like the database).
    assert!(LocalStore::ensure_wal_files(&env.uri()).unwrap());
    assert!(
        !LocalStore::ensure_wal_files(&env.uri()).unwrap(),
        "idempotent"
    );
    for p in [&wal, &shm] {
        let m = std::fs::metadata(p).unwrap();
        assert_eq!(
            (m.uid(), m.mode() & 0o777, m.len()),
            (0, 0o644, 0),
            "{}",
            p.display()
        );
    }

    // 3. Now nobody reads, also while Nix writes, and sees new paths.
    let mut child = spawn_unprivileged(&exe, &env);
    assert_eq!(child.line(), "READY uid=65534");
    assert_eq!(child.ask(&tree), expected_line(&env, &tree));
    assert_eq!(child.ask(&app), expected_line(&env, &app));
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0;
            while !done.load(Ordering::SeqCst) && i < 200 {
                env.add_file(&format!("bg{i}"), format!("background {i}\n").as_bytes());
                i += 1;
            }
        });
        // Stops the writer even if an assertion below fails (the scope
        // joins it before the panic propagates).
        let _stop = StopOnDrop(&done);
        for i in 0..5 {
            let added = env.add_file(
                &format!("new{i}"),
                format!("new path {i}\n").repeat(1000).as_bytes(),
            );
            assert_eq!(child.ask(&added), expected_line(&env, &added));
        }
    });
    // Every Nix process has exited, but the reader's open connection kept
    // Nix from deleting the WAL files, so a new reader can start too.
    assert!(wal.exists() && shm.exists());
    let mut second = spawn_unprivileged(&exe, &env);
    assert_eq!(second.line(), "READY uid=65534");
    assert_eq!(second.ask(&tree), expected_line(&env, &tree));
    let leaf_added = env.add_file("late", b"late\n");
    assert_eq!(child.ask(&leaf_added), expected_line(&env, &leaf_added));
    for mut c in [child, second] {
        drop(c.proc.stdin.take());
        assert!(c.proc.wait().unwrap().success());
    }
}
