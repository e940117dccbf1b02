//! `org.distributedstore.Fetcher1` round trip: the real [`FetcherObject`]
//! (a fetcher with its cache in a temporary directory, peers that are real
//! HTTP servers on 127.0.0.1) served on a peer-to-peer D-Bus connection,
//! every member called through the real `ds_dbus::Fetcher1Proxy` (the file
//! descriptors travel over the p2p socket), every typed error made to
//! happen, and the drift check of `ds_dbus::testing`.

mod common;

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ds_dbus::testing::{assert_no_drift, serve_p2p, WireLog};
use ds_dbus::{Fetcher1Proxy, FetcherError, FETCHER_NAME, FETCHER_PATH};
use ds_fetcher::FetcherObject;

/// Every member of `org.distributedstore.Fetcher1`, as the client proxy
/// (`ds_dbus::Fetcher1`) declares it.
const FETCHER1: &[&str] = &[
    "method Fetch(sast) -> h",
    "method FetchVerified(sas) -> h",
    "method Held(s) -> s",
    "property CacheBytes t read",
    "property CacheMaxBytes t read",
    "property CacheEntries t read",
    "property InFlight u read",
    "property BytesFetched a{st} read",
    "property FetchesFailed t read",
    "property VerificationFailures t read",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetcher1_round_trip_every_member_and_error() {
    let tmp = tempfile::tempdir().unwrap();
    let nar = Arc::new(TestNar::new("roundtrip", &contents(40, 300_000)));
    let slow_nar = Arc::new(TestNar::new("roundtrip-slow", &contents(41, 100_000)));
    let n = nar.clone();
    let peer = Server::start(move |r| Reply::bytes(r, &n.bytes)).await;
    let mut bad = nar.bytes.clone();
    bad[5000] ^= 0xff;
    let liar = Server::start(move |r| Reply::bytes(r, &bad)).await;
    let broken = Server::start(|_| Reply::status(500)).await;
    // Sends 4 KiB, then the rest after a pause: a fetch in flight.
    let s = slow_nar.clone();
    let slow =
        Server::start(move |r| Reply::dripping(r, &s.bytes, 4096, Duration::from_millis(800)))
            .await;

    let (fetcher, _mapper) = fetcher(&tmp.path().join("cache"), 1 << 30);
    let p2p = serve_p2p(FETCHER_PATH, FetcherObject::new(fetcher))
        .await
        .unwrap();
    let wire = WireLog::start(&p2p, FETCHER_NAME);
    let proxy = Fetcher1Proxy::builder(&p2p.client)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let fd = |f: zbus::zvariant::OwnedFd| OwnedFd::from(f);

    assert_eq!(proxy.cache_max_bytes().await.unwrap(), 1 << 30);
    assert_eq!(proxy.cache_entries().await.unwrap(), 0);
    assert_eq!(proxy.cache_bytes().await.unwrap(), 0);
    assert!(proxy.bytes_fetched().await.unwrap().is_empty());

    // Unknown: NotFound from Held and from a Fetch without locators.
    assert!(matches!(
        proxy.held(&nar.hash32).await,
        Err(FetcherError::NotFound(_))
    ));
    assert!(matches!(
        proxy.fetch(&nar.narinfo, vec![], 0).await,
        Err(FetcherError::NotFound(_))
    ));
    // Malformed: a narinfo, a locator, an offset past the end.
    assert!(matches!(
        proxy.fetch_verified("not a narinfo", vec![]).await,
        Err(FetcherError::InvalidArgs(_))
    ));
    assert!(matches!(
        proxy
            .fetch(&nar.narinfo, vec!["no-such-scheme".into()], 0)
            .await,
        Err(FetcherError::InvalidArgs(_))
    ));
    assert!(matches!(
        proxy
            .fetch(&nar.narinfo, vec![], nar.bytes.len() as u64 + 1)
            .await,
        Err(FetcherError::InvalidArgs(_))
    ));
    // Every source fails: Failed, counted.
    match proxy
        .fetch(&nar.narinfo, vec![format!("peer:{}", broken.url)], 0)
        .await
    {
        Err(FetcherError::Failed(msg)) => assert!(!msg.is_empty()),
        other => panic!("Fetch from a failing peer only: {other:?}"),
    }
    assert_eq!(proxy.fetches_failed().await.unwrap(), 1);

    // A lying peer, then an honest one: the verified pipe carries the NAR,
    // the lie is counted.
    let got = read_all(fd(proxy
        .fetch_verified(
            &nar.narinfo,
            vec![format!("peer:{}", liar.url), format!("peer:{}", peer.url)],
        )
        .await
        .unwrap()))
    .await;
    assert_eq!(got, nar.bytes);
    assert_eq!(proxy.verification_failures().await.unwrap(), 1);
    assert_eq!(proxy.cache_entries().await.unwrap(), 1);
    assert_eq!(proxy.cache_bytes().await.unwrap(), nar.bytes.len() as u64);
    assert_eq!(proxy.held(&nar.hash32).await.unwrap(), nar.narinfo);
    // Held now: Fetch from an offset without a locator.
    let tail = read_all(fd(proxy.fetch(&nar.narinfo, vec![], 1000).await.unwrap())).await;
    assert_eq!(tail, &nar.bytes[1000..]);

    // A download in progress is InFlight, and Held while it runs.
    let pipe = proxy
        .fetch(&slow_nar.narinfo, vec![format!("peer:{}", slow.url)], 0)
        .await
        .unwrap();
    assert_eq!(proxy.in_flight().await.unwrap(), 1);
    assert_eq!(
        proxy.held(&slow_nar.hash32).await.unwrap(),
        slow_nar.narinfo
    );
    assert_eq!(read_all(fd(pipe)).await, slow_nar.bytes);
    let mut in_flight = 1;
    for _ in 0..100 {
        in_flight = proxy.in_flight().await.unwrap();
        if in_flight == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(in_flight, 0);
    let by_scheme = proxy.bytes_fetched().await.unwrap();
    assert!(
        by_scheme.get("peer").copied().unwrap_or(0)
            >= (nar.bytes.len() + slow_nar.bytes.len()) as u64,
        "{by_scheme:?}"
    );
    assert_eq!(proxy.cache_entries().await.unwrap(), 2);

    assert_no_drift(
        &p2p,
        FETCHER_PATH,
        FETCHER_NAME,
        "Fetcher1",
        FETCHER1,
        &wire,
    )
    .await;
    let want: BTreeSet<String> = [
        "Held org.distributedstore.Fetcher1.Error.NotFound",
        "Fetch org.distributedstore.Fetcher1.Error.NotFound",
        "FetchVerified org.distributedstore.Fetcher1.Error.InvalidArgs",
        "Fetch org.distributedstore.Fetcher1.Error.InvalidArgs",
        "Fetch org.distributedstore.Fetcher1.Error.Failed",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(wire.errors().await, want);
}
