//! `org.distributedstore.Proxy1` round trip: the real status object
//! ([`Status`]) over the real app's counters — narinfo requests answered by
//! the real [`App`] from a Nix-schema store, signed by the real signer
//! (itself served on a second peer-to-peer connection) — served on a
//! peer-to-peer D-Bus connection, every property read through the real
//! `ds_dbus::Proxy1Proxy`, and the drift check of `ds_dbus::testing`.
//! Proxy1 has no methods, hence no errors.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use ds_core::{NarInfo, SecretKey};
use ds_dbus::testing::{assert_no_drift, serve_p2p, WireLog};
use ds_dbus::{Proxy1Proxy, PROXY_NAME, PROXY_PATH, SIGNER_PATH};
use ds_proxy::fleet::Fleet;
use ds_proxy::metrics::Metrics;
use ds_proxy::signing::SignerClient;
use ds_proxy::status::Status;
use ds_proxy::App;
use ds_runtime::config::SignPaths;
use ds_runtime::service::Activity;
use ds_store::{LocalStore, StoreUri};

/// Every member of `org.distributedstore.Proxy1`, as the client proxy
/// (`ds_dbus::Proxy1`) declares it.
const PROXY1: &[&str] = &[
    "property Listen s read",
    "property Store s read",
    "property PublicKey s read",
    "property Requests t read",
    "property NarinfoHits t read",
    "property NarinfoRemote t read",
    "property NarinfoMisses t read",
    "property NarBytesSent t read",
    "property UptimeSeconds t read",
    "property Version s read",
];

const BUILT: &str = "/nix/store/0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a-built";
const NAR_HASH: &str = "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s";

async fn get(app: &Arc<App>, path: &str) -> StatusCode {
    let req = Request::get(path).body(Body::empty()).unwrap();
    app.clone().handle(req).await.status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy1_round_trip_every_property() {
    // A store holding one path built here.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let uri = StoreUri::Chroot(root.clone());
    std::fs::create_dir_all(uri.db_path().parent().unwrap()).unwrap();
    let conn = rusqlite::Connection::open(uri.db_path()).unwrap();
    conn.execute_batch(ds_store::NIX_SCHEMA).unwrap();
    conn.execute_batch(&format!(
        "INSERT INTO ValidPaths (path, hash, registrationTime, narSize, ultimate) \
         VALUES ('{BUILT}', '{NAR_HASH}', 0, 4242, 1);"
    ))
    .unwrap();
    let store = Arc::new(LocalStore::open(&uri).unwrap());

    // The real signer on its own p2p connection; the proxy's signer client on the other end.
    let key = SecretKey::from_seed("fleet-1", [7; 32]);
    let signer = ds_signer::Signer::new(
        Some(key.clone()),
        store.clone(),
        "test".into(),
        SignPaths::Built,
        Activity::new(),
    );
    let signer_p2p = serve_p2p(SIGNER_PATH, signer).await.unwrap();
    let signer_client = Arc::new(SignerClient::new(Some(signer_p2p.client.clone()), true));

    let config = ds_runtime::Config::parse(
        &format!(
            "store = {:?}\ntrustedPublicKeys = [{:?}]\n",
            format!("local?root={}", root.display()),
            key.public().to_string()
        ),
        None,
    )
    .unwrap();
    let metrics = Arc::new(Metrics::new());
    let fleet = Arc::new(Fleet::new(None, vec![], std::time::Duration::from_secs(1)));
    let app = Arc::new(App::new(
        config,
        store,
        signer_client.clone(),
        fleet,
        metrics.clone(),
    ));
    let status = Status {
        metrics: metrics.clone(),
        listen: "127.0.0.1:5496".into(),
        store: "local?root=test".into(),
        signer: signer_client,
        started: Instant::now(),
    };
    let p2p = serve_p2p(PROXY_PATH, status).await.unwrap();
    let wire = WireLog::start(&p2p, PROXY_NAME);
    let proxy = Proxy1Proxy::builder(&p2p.client)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();

    assert_eq!(proxy.listen().await.unwrap(), "127.0.0.1:5496");
    assert_eq!(proxy.store().await.unwrap(), "local?root=test");
    assert_eq!(proxy.version().await.unwrap(), env!("CARGO_PKG_VERSION"));
    // Read from the signer through the proxy: the signer's real key.
    assert_eq!(proxy.public_key().await.unwrap(), key.public().to_string());
    assert!(proxy.uptime_seconds().await.unwrap() < 60);
    for (n, zero) in [
        proxy.requests().await,
        proxy.narinfo_hits().await,
        proxy.narinfo_misses().await,
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(zero.unwrap(), 0, "counter {n} before any request");
    }

    // Two hits (signed by the signer), one miss: each counter moves by what happened.
    let hash = &BUILT["/nix/store/".len()..][..32];
    assert_eq!(get(&app, &format!("/{hash}.narinfo")).await, StatusCode::OK);
    assert_eq!(get(&app, &format!("/{hash}.narinfo")).await, StatusCode::OK);
    let missing = "1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b";
    assert_eq!(
        get(&app, &format!("/{missing}.narinfo")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(proxy.requests().await.unwrap(), 3);
    assert_eq!(proxy.narinfo_hits().await.unwrap(), 2);
    assert_eq!(proxy.narinfo_misses().await.unwrap(), 1);
    // No mapper: nothing answered from the fleet, no NAR sent.
    assert_eq!(proxy.narinfo_remote().await.unwrap(), 0);
    assert_eq!(proxy.nar_bytes_sent().await.unwrap(), 0);
    // The narinfo the app served carries the signer's signature.
    let req = Request::get(format!("/{hash}.narinfo"))
        .body(Body::empty())
        .unwrap();
    let body = app.clone().handle(req).await.into_body();
    let text = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let info = NarInfo::parse(std::str::from_utf8(&text).unwrap()).unwrap();
    assert!(info.verify(&key.public()), "{info:?}");
    assert_eq!(proxy.narinfo_hits().await.unwrap(), 3);

    assert_no_drift(&p2p, PROXY_PATH, PROXY_NAME, "Proxy1", PROXY1, &wire).await;
    assert!(wire.errors().await.is_empty());
}
