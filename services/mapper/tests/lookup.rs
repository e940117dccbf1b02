//! Lookup composition against real HTTP servers on 127.0.0.1, peer states,
//! and the D-Bus round trip through the real Mapper1Proxy on a private dbus-daemon.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{announce_json, hash_part, key, narinfo, serve};
use ds_core::{rendezvous_order, Locator, NarInfo};
use ds_mapper::peers::{poll_once, validate, PeerState, Peers};
use ds_mapper::service::DbusObject;
use ds_mapper::{AnnounceJson, MapperService};
use ds_runtime::service::Activity;

const PEER_MS: u64 = 300;

fn config(state: &std::path::Path, peers: &[String], upstreams: &[String]) -> ds_runtime::Config {
    let q = |v: &[String]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = format!(
        "stateDirectory = {:?}\npeers = [{}]\nupstreams = [{}]\ntrustedPublicKeys = [{:?}]\npeerTimeoutMs = {PEER_MS}\nupstreamTimeoutMs = 600\n",
        state.display().to_string(),
        q(peers),
        q(upstreams),
        key("trusted-1", 1).public().to_string()
    );
    ds_runtime::Config::parse(&text, None).unwrap()
}

async fn wait_up(svc: &MapperService, url: &str) {
    for _ in 0..100 {
        if svc.peers().state(url) == Some(PeerState::Up) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never came up: {:?}", svc.peers().status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_composition() {
    let trusted = key("trusted-1", 1);
    let untrusted = key("evil-1", 9);
    let (a, b, c, d) = (hash_part(1), hash_part(2), hash_part(3), hash_part(4));

    // Upstream 1: A (trusted), B (a narinfo for A's path: must be ignored),
    // C and D (trusted). Upstream 2: A signed by an untrusted key.
    let (a1, b1, c1, d1) = (a.clone(), b.clone(), c.clone(), d.clone());
    let tk = trusted.clone();
    let up1 = serve(move |p: &str| {
        let body = if p == format!("/{a1}.narinfo") || p == format!("/{b1}.narinfo") {
            narinfo(&a1, "a", 1, &tk)
        } else if p == format!("/{c1}.narinfo") {
            narinfo(&c1, "c", 3, &tk)
        } else if p == format!("/{d1}.narinfo") {
            narinfo(&d1, "d", 4, &tk)
        } else {
            return Some((404, String::new()));
        };
        Some((200, body))
    })
    .await;
    let a2 = a.clone();
    let up2 = serve(move |p: &str| {
        if p == format!("/{a2}.narinfo") {
            Some((200, narinfo(&a2, "a", 1, &untrusted)))
        } else {
            Some((404, String::new()))
        }
    })
    .await;

    // Peer 1 holds A and serves it; peer 2 announces C but black-holes
    // narinfo queries; peer 3 holds nothing.
    let (a3, tk3) = (a.clone(), trusted.clone());
    let p1 = serve(move |p: &str| {
        if p.starts_with("/_ds/v1/announce") {
            Some((200, announce_json("peeroneepoch", &[&a3], &[])))
        } else if p == format!("/{a3}.narinfo") {
            Some((200, narinfo(&a3, "a", 1, &tk3)))
        } else {
            Some((404, String::new()))
        }
    })
    .await;
    let c4 = c.clone();
    let p2 = serve(move |p: &str| {
        if p.starts_with("/_ds/v1/announce") {
            Some((200, announce_json("peertwoepoch", &[&c4], &[])))
        } else {
            None
        }
    })
    .await;
    let p3 = serve(move |p: &str| {
        if p.starts_with("/_ds/v1/announce") {
            Some((200, announce_json("peerthreeepoch", &[], &[])))
        } else {
            Some((404, String::new()))
        }
    })
    .await;

    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        tmp.path(),
        &[p1.clone(), p2.clone(), p3.clone()],
        &[up1.clone(), up2.clone()],
    );
    let svc = MapperService::open(&cfg, Activity::new()).unwrap();
    let _tasks = svc.spawn_tasks(None, cfg.peer_timeout);
    for p in [&p1, &p2, &p3] {
        wait_up(&svc, p).await;
    }
    let me = svc.local().epoch().to_string();

    // Upstream only: upstream 1's narinfo and file; the untrusted copy adds nothing.
    let (text, locs) = svc.resolve(&a, true).await.unwrap();
    let info = NarInfo::parse(&text).unwrap();
    assert_eq!(info.store_path.hash().as_str(), a);
    assert_eq!(info.sigs.len(), 1);
    assert_eq!(locs.len(), 1, "{locs:?}");
    assert!(locs[0].starts_with(&format!("file:{up1}/nar/1.nar.xz#compression=xz")));
    // A narinfo for another path is ignored.
    assert!(svc.resolve(&b, true).await.is_err());
    assert!(svc.resolve(&hash_part(99), true).await.is_err());
    assert!(svc.resolve("not-a-hash", true).await.is_err());

    // Fleet: peer 1 holds A: it comes first.
    let t = Instant::now();
    let (_, locs) = svc.resolve(&a, false).await.unwrap();
    eprintln!("fleet lookup of a held path: {:?}, {locs:?}", t.elapsed());
    assert_eq!(locs[0], format!("peer:{p1}"));

    // C: the announced holder black-holes; the answer (from upstream) costs
    // no more than the peer timeout plus slack.
    let t = Instant::now();
    let (text, locs) = svc.resolve(&c, false).await.unwrap();
    let took = t.elapsed();
    eprintln!("fleet lookup with a black-holed holder: {took:?}, {locs:?}");
    assert!(took < Duration::from_millis(PEER_MS + 400), "{took:?}");
    assert_eq!(NarInfo::parse(&text).unwrap().store_path.hash().as_str(), c);
    assert!(!locs.iter().any(|l| l == &format!("peer:{p2}")));

    // D: nobody announced it; fan-out misses; the rendezvous chain over
    // {me, peer1, peer2, peer3} decides: lead: for peers ranked above me,
    // then my upstream file, then nothing.
    let (text, locs) = svc.resolve(&d, false).await.unwrap();
    let info = NarInfo::parse(&text).unwrap();
    let ids = [
        me.as_str(),
        "peeroneepoch",
        "peertwoepoch",
        "peerthreeepoch",
    ];
    let url_of = |id: &str| match id {
        "peeroneepoch" => p1.clone(),
        "peertwoepoch" => p2.clone(),
        _ => p3.clone(),
    };
    let mut expected = Vec::new();
    for id in rendezvous_order(&info.nar_hash.digest, &ids) {
        if id == me {
            expected.push(format!("file:{up1}/nar/4.nar.xz"));
            break;
        }
        expected.push(format!("lead:{}", url_of(id)));
    }
    assert_eq!(locs.len(), expected.len(), "{locs:?} vs {expected:?}");
    for (l, e) in locs.iter().zip(&expected) {
        assert!(l.starts_with(e.as_str()), "{locs:?} vs {expected:?}");
    }
    // Misses are counted; answers cached.
    let (found, missed) = (
        svc.resolve(&d, false).await.is_ok(),
        svc.resolve(&hash_part(98), false).await.is_err(),
    );
    assert!(found && missed);

    // Quarantine: peer 1 is no longer offered.
    assert!(svc.peers().quarantine(&p1));
    let (_, locs) = {
        // The cache still holds the earlier answer (ReportBad over D-Bus clears it).
        let fresh = MapperService::with_mapper(
            svc.local().clone(),
            svc.peers().clone(),
            Arc::new(
                ds_mapper::index::Index::open(&tmp.path().join("other"))
                    .unwrap()
                    .0,
            ),
            Arc::new(ds_mapper::Ordered::new()),
            Activity::new(),
        );
        assert!(
            fresh.resolve(&a, false).await.is_err(),
            "empty stack finds nothing"
        );
        svc.resolve(&hash_part(1), true).await.unwrap()
    };
    assert!(!locs.iter().any(|l| l.starts_with("peer:")));
    assert_eq!(svc.peers().state(&p1), Some(PeerState::Quarantined));
    assert!(!svc.peers().live().iter().any(|(u, _)| *u == p1));
}

#[test]
fn peer_states_and_validation() {
    let peers = Peers::new(
        &["http://127.0.0.1:9/".to_string()],
        "me",
        Default::default(),
    );
    let u = "http://127.0.0.1:9";
    assert_eq!(peers.find("http://127.0.0.1:9/").as_deref(), Some(u));
    assert_eq!(peers.state(u), Some(PeerState::Down), "never contacted");
    let a = AnnounceJson {
        epoch: "them".into(),
        version: 4,
        full: true,
        added: vec![hash_part(1)],
        ..Default::default()
    };
    validate(&a, "", 0).unwrap();
    peers.apply(u, &a);
    assert_eq!(peers.state(u), Some(PeerState::Up));
    assert_eq!(peers.live(), vec![(u.to_string(), "them".to_string())]);
    assert_eq!(peers.holders(&hash_part(1)).0, vec![u.to_string()]);
    assert_eq!(peers.cursor(u), ("them".to_string(), 4));
    assert!(peers.quarantine_for(u, Duration::from_millis(100)));
    assert_eq!(peers.state(u), Some(PeerState::Quarantined));
    assert!(peers.live().is_empty() && peers.holders(&hash_part(1)).0.is_empty());
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(peers.state(u), Some(PeerState::Up), "quarantine expires");
    assert!(peers.mark_down(u));
    assert_eq!(peers.state(u), Some(PeerState::Down));
    let st = &peers.status()[0];
    assert_eq!((st.1.as_str(), st.2.as_str(), st.4), ("down", "config", 1));

    // Garbage is refused.
    let mut bad = a.clone();
    bad.added.push("../../etc/passwd".into());
    assert!(validate(&bad, "", 0).is_err());
    let mut delta = a.clone();
    delta.full = false;
    assert!(
        validate(&delta, "someone-else", 0).is_err(),
        "delta for another epoch"
    );
    assert!(
        validate(&delta, "them", 5).is_err(),
        "delta older than asked"
    );
    delta.epoch = "bad epoch!".into();
    assert!(validate(&delta, "bad epoch!", 0).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_garbage_and_dead_peers() {
    let garbage = serve(|_: &str| Some((200, "{not json".to_string()))).await;
    let hole = serve(|_: &str| None).await;
    let tmp = tempfile::tempdir().unwrap();
    let (index, _) = ds_mapper::index::Index::open(tmp.path()).unwrap();
    let index = Arc::new(index);
    let peers = Peers::new(&[garbage.clone(), hole.clone()], "me", Default::default());
    let client = ds_mapper::http::client();
    let timeout = Duration::from_millis(200);
    assert!(poll_once(&client, &peers, &index, &garbage, timeout)
        .await
        .is_err());
    let t = Instant::now();
    assert!(poll_once(&client, &peers, &index, &hole, timeout)
        .await
        .is_err());
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );

    // A good peer's announcement is persisted: a restart knows its holdings.
    let h = hash_part(5);
    let h2 = h.clone();
    let good = serve(move |_: &str| Some((200, announce_json("goodpeer", &[&h2], &[])))).await;
    let peers = Peers::new(std::slice::from_ref(&good), "me", Default::default());
    poll_once(&client, &peers, &index, &good, timeout)
        .await
        .unwrap();
    assert_eq!(peers.distinct_paths(), 1);
    assert!(peers.last_sync() > 0);
    drop(index);
    let (_, loaded) = ds_mapper::index::Index::open(tmp.path()).unwrap();
    let (epoch, version, held) = &loaded.peers[&good];
    assert_eq!((epoch.as_str(), *version), ("goodpeer", 1));
    assert!(held.contains(&h));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dbus_round_trip_private_bus() {
    let trusted = key("trusted-1", 1);
    let a = hash_part(1);
    let a1 = a.clone();
    let up = serve(move |p: &str| {
        if p == format!("/{a1}.narinfo") {
            Some((200, narinfo(&a1, "a", 1, &trusted)))
        } else {
            Some((404, String::new()))
        }
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &["http://127.0.0.1:9".to_string()], &[up]);
    let svc = MapperService::open(&cfg, Activity::new()).unwrap();

    // A private dbus-daemon (session config: anyone may own any name).
    if std::process::Command::new("dbus-daemon")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping: dbus-daemon is not installed");
        return;
    }
    let mut daemon = std::process::Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--print-address=1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(daemon.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line.trim().to_string();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _daemon = Kill(daemon);
    let _server = zbus::connection::Builder::address(addr.as_str())
        .unwrap()
        .name(ds_dbus::MAPPER_NAME)
        .unwrap()
        .serve_at(ds_dbus::MAPPER_PATH, DbusObject(svc.clone()))
        .unwrap()
        .build()
        .await
        .unwrap();
    let client = zbus::connection::Builder::address(addr.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let proxy = ds_dbus::Mapper1Proxy::builder(&client)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();

    let (text, locs) = proxy.lookup(&a, true).await.unwrap();
    assert!(text.contains(&a) && locs[0].starts_with("file:"));
    assert!(matches!(
        proxy.lookup("nope", false).await,
        Err(ds_dbus::MapperError::InvalidArgs(_))
    ));
    assert!(matches!(
        proxy.lookup(&hash_part(7), true).await,
        Err(ds_dbus::MapperError::NotFound(_))
    ));
    let ann = proxy.announce("", 0).await.unwrap();
    assert_eq!(ann.0, svc.local().epoch());
    assert!(ann.2, "a stranger gets a full list");
    proxy.set_fetching(&a, true).await.unwrap();
    assert_eq!(
        proxy.announce(&ann.0, ann.1).await.unwrap().5,
        vec![a.clone()]
    );
    proxy.set_fetching(&a, false).await.unwrap();
    assert!(proxy.announce(&ann.0, ann.1).await.unwrap().5.is_empty());
    assert!(matches!(
        proxy.report_bad("http://elsewhere:1", "x").await,
        Err(ds_dbus::MapperError::InvalidArgs(_))
    ));
    proxy
        .report_bad("http://127.0.0.1:9/", "bad hash")
        .await
        .unwrap();
    let peers = proxy.peers().await.unwrap();
    assert_eq!(peers[0].1, "quarantined");
    assert_eq!(
        proxy.lookups().await.unwrap(),
        (1, 1),
        "InvalidArgs is not a lookup"
    );
    assert_eq!(proxy.indexed_paths().await.unwrap(), 0);
    assert!(proxy.index_bytes().await.unwrap() > 0);
    assert_eq!(proxy.peer_paths().await.unwrap(), 0);
    assert_eq!(proxy.last_sync().await.unwrap(), 0);
    let _ = Locator::parse(&locs[0]).unwrap();
}
