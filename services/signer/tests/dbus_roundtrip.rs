//! `org.distributedstore.Signer1` round trip: the real [`Signer`] (a real
//! ed25519 key, a Nix-schema SQLite store) served on a peer-to-peer D-Bus
//! connection, every member called through the real `ds_dbus::Signer1Proxy`,
//! every typed error made to happen, and the drift check of
//! `ds_dbus::testing` (server introspection = the table below = the client
//! trait's members = what the client exchanged).

use std::sync::Arc;

use ds_core::{PublicKey, SecretKey, Signature, StorePath};
use ds_dbus::testing::{assert_no_drift, serve_p2p, P2p, WireLog};
use ds_dbus::{Signer1Proxy, SignerError, SIGNER_NAME, SIGNER_PATH};
use ds_runtime::config::SignPaths;
use ds_runtime::service::Activity;
use ds_signer::Signer;
use ds_store::{LocalStore, StoreUri};

/// Every member of `org.distributedstore.Signer1`, as the client proxy
/// (`ds_dbus::Signer1`) declares it.
const SIGNER1: &[&str] = &[
    "method Sign(s) -> s",
    "property PublicKey s read",
    "property SignaturesIssued t read",
    "property RequestsRefused t read",
    "property Store s read",
];

/// Built here (`ultimate`), with a reference to `DEP`.
const BUILT: &str = "/nix/store/0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a-built";
/// Substituted (not `ultimate`).
const DEP: &str = "/nix/store/1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b-dep";
/// Nowhere.
const ABSENT: &str = "/nix/store/2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c-absent";
const NAR_HASH: &str = "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s";

/// A chroot store `dir/root` whose database (Nix's schema) holds `BUILT`
/// (ultimate, referring to `DEP`) and `DEP` (substituted).
fn store(dir: &std::path::Path) -> (StoreUri, std::path::PathBuf) {
    let uri = StoreUri::Chroot(dir.join("root"));
    let db = uri.db_path();
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(ds_store::NIX_SCHEMA).unwrap();
    conn.execute_batch(&format!(
        "INSERT INTO ValidPaths (id, path, hash, registrationTime, narSize, ultimate) \
           VALUES (1, '{BUILT}', '{NAR_HASH}', 0, 4242, 1);
         INSERT INTO ValidPaths (id, path, hash, registrationTime, narSize, ultimate) \
           VALUES (2, '{DEP}', '{NAR_HASH}', 0, 120, 0);
         INSERT INTO Refs (referrer, reference) VALUES (1, 2);"
    ))
    .unwrap();
    (uri, db)
}

fn signer(key: Option<SecretKey>, store: Arc<LocalStore>) -> Signer {
    Signer::new(
        key,
        store,
        "local?root=test".into(),
        SignPaths::Built,
        Activity::new(),
    )
}

async fn client(p2p: &P2p) -> Signer1Proxy<'static> {
    Signer1Proxy::builder(&p2p.client)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signer1_round_trip_every_member_and_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (uri, db) = store(tmp.path());
    let store = Arc::new(LocalStore::open(&uri).unwrap());
    let key = SecretKey::from_seed("fleet-1", [7; 32]);
    let p2p = serve_p2p(SIGNER_PATH, signer(Some(key.clone()), store.clone()))
        .await
        .unwrap();
    let wire = WireLog::start(&p2p, SIGNER_NAME);
    let proxy = client(&p2p).await;

    // Properties before any call.
    let public = PublicKey::parse(&proxy.public_key().await.unwrap()).unwrap();
    assert_eq!(public.to_string(), key.public().to_string());
    assert_eq!(proxy.store().await.unwrap(), "local?root=test");
    assert_eq!(proxy.signatures_issued().await.unwrap(), 0);
    assert_eq!(proxy.requests_refused().await.unwrap(), 0);

    // A path built here: the signature verifies with the public key the
    // client read, over the fingerprint of the store's own facts.
    let sig = Signature::parse(&proxy.sign(BUILT).await.unwrap()).unwrap();
    let info = store
        .path_info(StorePath::parse(BUILT).unwrap().hash())
        .unwrap()
        .unwrap();
    assert_eq!(info.references.len(), 1, "the fixture has its reference");
    let fp = ds_core::fingerprint(&info.path, &info.nar_hash, 4242, &info.references);
    assert!(public.verify(fp.as_bytes(), &sig), "{fp} / {sig}");
    assert!(
        !public.verify(
            ds_core::fingerprint(&info.path, &info.nar_hash, 4243, &info.references).as_bytes(),
            &sig
        ),
        "and only that fingerprint"
    );
    assert_eq!(proxy.signatures_issued().await.unwrap(), 1);

    // Each refusal, with the error the client maps, counted once.
    let refused = [
        ("not a store path", "InvalidPath"),
        (ABSENT, "PathNotValid"),
        (DEP, "NotBuiltHere"),
    ];
    for (n, (arg, want)) in refused.iter().enumerate() {
        let got = proxy.sign(arg).await;
        let ok = matches!(
            (&got, *want),
            (Err(SignerError::InvalidPath(_)), "InvalidPath")
                | (Err(SignerError::PathNotValid(_)), "PathNotValid")
                | (Err(SignerError::NotBuiltHere(_)), "NotBuiltHere")
        );
        assert!(ok, "Sign({arg:?}): want {want}, got {got:?}");
        assert_eq!(proxy.requests_refused().await.unwrap(), n as u64 + 1);
    }
    assert_eq!(proxy.signatures_issued().await.unwrap(), 1);

    // The store breaks under the signer (its database loses ValidPaths,
    // as a foreign or half-migrated database would): Store.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("DROP TABLE Refs; DROP TABLE ValidPaths;")
        .unwrap();
    match proxy.sign(BUILT).await {
        Err(SignerError::Store(msg)) => assert!(!msg.is_empty()),
        other => panic!("Sign on a broken store: {other:?}"),
    }

    // A signer without a key: NoKey, and an empty PublicKey.
    let keyless = serve_p2p(SIGNER_PATH, signer(None, store.clone()))
        .await
        .unwrap();
    let keyless_wire = WireLog::start(&keyless, SIGNER_NAME);
    let keyless_proxy = client(&keyless).await;
    assert_eq!(keyless_proxy.public_key().await.unwrap(), "");
    match keyless_proxy.sign(BUILT).await {
        Err(SignerError::NoKey(msg)) => assert!(msg.contains("key")),
        other => panic!("Sign without a key: {other:?}"),
    }

    assert_no_drift(&p2p, SIGNER_PATH, SIGNER_NAME, "Signer1", SIGNER1, &wire).await;
    let mut errors = wire.errors().await;
    errors.extend(keyless_wire.errors().await);
    let e = |v: &str| format!("Sign org.distributedstore.Signer1.Error.{v}");
    let want: std::collections::BTreeSet<String> = [
        "InvalidPath",
        "PathNotValid",
        "NotBuiltHere",
        "Store",
        "NoKey",
    ]
    .iter()
    .map(|v| e(v))
    .collect();
    assert_eq!(
        errors, want,
        "every typed error of Signer1 seen on the wire"
    );
}
