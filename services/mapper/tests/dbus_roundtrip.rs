//! `org.distributedstore.Mapper1` round trip: the real [`MapperService`]
//! (its index on disk, a Nix-schema store scanned into it, an upstream and
//! a peer that are real HTTP servers on 127.0.0.1, an imported folder
//! entry) served on a peer-to-peer D-Bus connection, every member called
//! through the real `ds_dbus::Mapper1Proxy`, every typed error made to
//! happen, and the drift check of `ds_dbus::testing`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{announce_json, hash_part, key, narinfo, serve, synthetic_store};
use ds_core::{Locator, NarInfo};
use ds_dbus::testing::{assert_no_drift, serve_p2p, WireLog};
use ds_dbus::{Mapper1Proxy, MapperError, MAPPER_NAME, MAPPER_PATH};
use ds_mapper::folder::{self, Entry};
use ds_mapper::service::DbusObject;
use ds_mapper::MapperService;
use ds_runtime::service::Activity;

/// Every member of `org.distributedstore.Mapper1`, as the client proxy
/// (`ds_dbus::Mapper1`) declares it.
const MAPPER1: &[&str] = &[
    "method Lookup(sb) -> sas",
    "method LookupLocal(s) -> sas",
    // One structure, not six arguments: the server's return type is the
    // `Announcement` alias, which zbus's `#[interface]` does not split.
    "method Announce(st) -> (stbasasas)",
    "method ReportBad(ss) -> ",
    "method SetFetching(sb) -> ",
    "property IndexedPaths t read",
    "property PeerPaths t read",
    "property Peers a(sssxt) read",
    "property LastSync t read",
    "property IndexBytes t read",
    "property Lookups (tt) read",
];

fn config(state: &std::path::Path, store: &std::path::Path, peer: &str, upstream: &str) -> String {
    format!(
        "stateDirectory = {:?}\nstore = {:?}\npeers = [{peer:?}]\nupstreams = [{upstream:?}]\n\
         trustedPublicKeys = [{:?}]\npeerTimeoutMs = 300\nupstreamTimeoutMs = 600\ndiscovery = false\n",
        state.display().to_string(),
        format!("local?root={}", store.display()),
        key("trusted-1", 1).public().to_string()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapper1_round_trip_every_member_and_error() {
    let trusted = key("trusted-1", 1);
    // Upstream has path 1; the peer announces path 2; the imported folder
    // holds path 3; the local store holds 5 others.
    let (up_hash, peer_hash, folder_hash) = (hash_part(1), hash_part(2), hash_part(3));
    let (h, k) = (up_hash.clone(), trusted.clone());
    let upstream = serve(move |p: &str| {
        if p == format!("/{h}.narinfo") {
            Some((200, narinfo(&h, "up", 1, &k)))
        } else {
            Some((404, String::new()))
        }
    })
    .await;
    let h = peer_hash.clone();
    let peer = serve(move |p: &str| {
        if p.starts_with("/_ds/v1/announce") {
            Some((200, announce_json("peerepoch", &[&h], &[])))
        } else {
            Some((404, String::new()))
        }
    })
    .await;

    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let mut info = NarInfo::parse(&narinfo(&folder_hash, "imported", 3, &trusted)).unwrap();
    info.sigs.clear();
    info.sign(&trusted);
    let facts = ds_core::FileFacts {
        compression: info.compression.clone(),
        file_hash: info.file_hash.clone(),
        file_size: info.file_size,
    };
    let locator = Locator::other("ipfs", "bafyroundtrip", &facts);
    folder::write_entry(
        &state.join(ds_mapper::stack::IMPORT_DIR),
        &Entry {
            narinfo: info,
            locators: vec![locator.clone()],
        },
    )
    .unwrap();
    let store_dir = tmp.path().join("store");
    let store_uri = synthetic_store(&store_dir, 5);
    let cfg =
        ds_runtime::Config::parse(&config(&state, &store_dir, &peer, &upstream), None).unwrap();
    let svc = MapperService::open(&cfg, Activity::new()).unwrap();
    let store = std::sync::Arc::new(ds_store::LocalStore::open(&store_uri).unwrap());
    let _tasks = svc.spawn_tasks(Some(store), cfg.peer_timeout);

    let p2p = serve_p2p(MAPPER_PATH, DbusObject(svc.clone()))
        .await
        .unwrap();
    let wire = WireLog::start(&p2p, MAPPER_NAME);
    let proxy = Mapper1Proxy::builder(&p2p.client)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();

    // The background work shows through the properties: the store scanned,
    // the peer's announcement taken.
    let mut ready = false;
    for _ in 0..200 {
        if proxy.indexed_paths().await.unwrap() == 5 && proxy.peer_paths().await.unwrap() == 1 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ready, "store scan and peer poll: {:?}", proxy.peers().await);
    assert!(proxy.last_sync().await.unwrap() > 0);
    assert!(proxy.index_bytes().await.unwrap() > 0);
    let peers = proxy.peers().await.unwrap();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(
        (
            peers[0].0.as_str(),
            peers[0].1.as_str(),
            peers[0].2.as_str()
        ),
        (peer.as_str(), "up", "config")
    );
    assert_eq!(peers[0].4, 1, "paths it announced");
    assert_eq!(proxy.lookups().await.unwrap(), (0, 0));

    // Lookup: the upstream's trusted narinfo and its file; an unknown hash
    // NotFound; a malformed one InvalidArgs (not counted as a lookup).
    let (text, locators) = proxy.lookup(&up_hash, true).await.unwrap();
    let found = NarInfo::parse(&text).unwrap();
    assert_eq!(found.store_path.hash().as_str(), up_hash);
    assert!(found.verify(&trusted.public()));
    assert!(
        locators[0].starts_with(&format!("file:{upstream}/nar/1.nar.xz")),
        "{locators:?}"
    );
    assert!(matches!(
        proxy.lookup(&hash_part(99), true).await,
        Err(MapperError::NotFound(_))
    ));
    assert!(matches!(
        proxy.lookup("not-a-hash", false).await,
        Err(MapperError::InvalidArgs(_))
    ));
    assert_eq!(proxy.lookups().await.unwrap(), (1, 1));

    // LookupLocal: the imported folder entry, with its locator; nothing else.
    let (text, locators) = proxy.lookup_local(&folder_hash).await.unwrap();
    assert_eq!(
        NarInfo::parse(&text).unwrap().store_path.hash().as_str(),
        folder_hash
    );
    assert_eq!(locators, vec![locator.to_string()]);
    assert!(matches!(
        proxy.lookup_local(&up_hash).await,
        Err(MapperError::NotFound(_))
    ));
    assert!(matches!(
        proxy.lookup_local("../etc").await,
        Err(MapperError::InvalidArgs(_))
    ));

    // Announce: a stranger gets the full list of the store's paths;
    // SetFetching shows in the next announcement's in-flight set.
    let (epoch, version, full, added, removed, inflight) = proxy.announce("", 0).await.unwrap();
    assert_eq!(epoch, svc.local().epoch());
    assert!(full && removed.is_empty() && inflight.is_empty());
    let mut added: Vec<_> = added;
    added.sort();
    let mut want: Vec<_> = (0..5).map(hash_part).collect();
    want.sort();
    assert_eq!(added, want);
    proxy.set_fetching(&up_hash, true).await.unwrap();
    assert_eq!(
        proxy.announce(&epoch, version).await.unwrap().5,
        vec![up_hash.clone()]
    );
    proxy.set_fetching(&up_hash, false).await.unwrap();
    assert!(proxy.announce(&epoch, version).await.unwrap().5.is_empty());
    assert!(matches!(
        proxy.set_fetching("bad hash", true).await,
        Err(MapperError::InvalidArgs(_))
    ));

    // ReportBad: an unknown peer is refused; the known one is quarantined.
    assert!(matches!(
        proxy.report_bad("http://127.0.0.1:1", "x").await,
        Err(MapperError::InvalidArgs(_))
    ));
    proxy.report_bad(&peer, "wrong NarHash").await.unwrap();
    assert_eq!(proxy.peers().await.unwrap()[0].1, "quarantined");

    assert_no_drift(&p2p, MAPPER_PATH, MAPPER_NAME, "Mapper1", MAPPER1, &wire).await;
    let e = |m: &str, v: &str| format!("{m} org.distributedstore.Mapper1.Error.{v}");
    let want: BTreeSet<String> = [
        e("Lookup", "NotFound"),
        e("Lookup", "InvalidArgs"),
        e("LookupLocal", "NotFound"),
        e("LookupLocal", "InvalidArgs"),
        e("SetFetching", "InvalidArgs"),
        e("ReportBad", "InvalidArgs"),
    ]
    .into_iter()
    .collect();
    assert_eq!(wire.errors().await, want);
}
