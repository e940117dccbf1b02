//! The local part of the index against a database with Nix's schema.

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::{hash_part, nar_hash, synthetic_store};
use ds_mapper::index::Index;
use ds_mapper::local::LocalPaths;
use ds_store::LocalStore;

#[test]
fn full_scan_of_30k_paths_then_incremental_then_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let uri = synthetic_store(&tmp.path().join("store"), 30_000);
    eprintln!(
        "built a 30,000-row ValidPaths database in {:?}",
        t0.elapsed()
    );
    let store = LocalStore::open(&uri).unwrap();
    let state = tmp.path().join("state/sub");

    let (index, mut loaded) = Index::open(&state).unwrap();
    let epoch = loaded.epoch.clone();
    assert!(!epoch.is_empty());
    let local = LocalPaths::new(Arc::new(index), &mut loaded, 100_000);
    let t = Instant::now();
    let st = local.update(&store).unwrap();
    let took = t.elapsed();
    eprintln!("MAPPER-30K: indexed 30,000 paths (full scan, one redb transaction) in {took:?}");
    assert!(st.full && st.added == 30_000, "{st:?}");
    assert_eq!(local.len(), 30_000);
    assert!(took.as_secs() < 10, "30k paths took {took:?}");
    let v1 = local.version();

    // Nothing changed: no new version, and a quick no-op.
    let t = Instant::now();
    assert_eq!(local.update(&store).unwrap().added, 0);
    eprintln!("MAPPER-30K: no-op incremental update in {:?}", t.elapsed());
    assert_eq!(local.version(), v1);

    // Nix registers 2 paths and garbage-collects 3.
    let conn = rusqlite::Connection::open(uri.db_path()).unwrap();
    for i in [40_000u32, 40_001] {
        conn.execute(
            "INSERT INTO ValidPaths (path, hash, registrationTime, narSize) VALUES (?1, ?2, 0, 1)",
            rusqlite::params![format!("/nix/store/{}-new", hash_part(i)), nar_hash(i)],
        )
        .unwrap();
    }
    conn.execute("DELETE FROM ValidPaths WHERE id IN (1, 2, 3)", [])
        .unwrap();
    let t = Instant::now();
    let st = local.update(&store).unwrap();
    eprintln!(
        "MAPPER-30K: incremental update with deletions in {:?}",
        t.elapsed()
    );
    assert_eq!((st.added, st.removed, st.full), (2, 3, false));
    assert_eq!(local.len(), 29_999);
    assert!(!local.contains(&hash_part(0)) && local.contains(&hash_part(40_000)));

    // The delta since v1 is exactly that; a stranger gets everything.
    let a = local.announce(&epoch, v1, vec![]);
    assert!(!a.full);
    let mut added = vec![hash_part(40_000), hash_part(40_001)];
    added.sort();
    let mut removed = vec![hash_part(0), hash_part(1), hash_part(2)];
    removed.sort();
    assert_eq!((a.added, a.removed), (added, removed));
    let full = local.announce("other-epoch", v1, vec!["x".into()]);
    assert!(full.full && full.added.len() == 29_999 && full.inflight == ["x"]);
    let v2 = local.version();
    drop(local);

    // Restart: same epoch and version, nothing rescanned.
    let (index, mut loaded) = Index::open(&state).unwrap();
    assert_eq!((loaded.epoch.clone(), loaded.version), (epoch.clone(), v2));
    assert_eq!(loaded.local.len(), 29_999);
    let row = index.local(&hash_part(40_000)).unwrap().unwrap();
    assert!(row.path.ends_with("-new") && row.nar_hash == nar_hash(40_000));
    let local = LocalPaths::new(Arc::new(index), &mut loaded, 100_000);
    let st = local.update(&store).unwrap();
    assert_eq!((st.added, st.removed, st.full), (0, 0, false));
    // A peer at v2 gets an empty delta; one at v1 (before the restart) a full list.
    let a = local.announce(&epoch, v2, vec![]);
    assert!(!a.full && a.added.is_empty());
    assert!(local.announce(&epoch, v1, vec![]).full);
}

#[test]
fn real_nix_store_if_available() {
    let ok = std::process::Command::new("nix-store")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipping: nix-store is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let file = tmp.path().join("hello.txt");
    std::fs::write(&file, "hello mapper\n").unwrap();
    let out = std::process::Command::new("nix-store")
        .arg("--store")
        .arg(format!("local?root={}", root.display()))
        .arg("--add")
        .arg(&file)
        .env("NIX_CONFIG", "sandbox = false\nbuild-users-group =")
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!(
            "skipping: nix-store --add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let hash = &path["/nix/store/".len().."/nix/store/".len() + 32];
    let store = LocalStore::open(&ds_store::StoreUri::Chroot(root)).unwrap();
    let (index, mut loaded) = Index::open(&tmp.path().join("state")).unwrap();
    let local = LocalPaths::new(Arc::new(index), &mut loaded, 100);
    local.update(&store).unwrap();
    assert!(local.contains(hash), "{path} not indexed");
}
