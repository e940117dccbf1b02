//! The BitTorrent backend and publisher against a real swarm on 127.0.0.1:
//! Debian's opentracker and three aria2 engines (one seeder, two leechers,
//! each its own process, directory and ports), started by
//! tests/backends/servers.sh. No DHT, LPD or PEX: peers come from the
//! tracker alone.

mod common;
mod servers;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{compress, contents, read_all, TestNar};
use ds_core::{Compression, FileFacts, Hash, Locator, NarInfo};
use ds_fetcher::bittorrent::{locator, make_torrent, BitTorrentBackend, TorrentPublisher};
use ds_fetcher::{Backend, BackendError, Publisher};
use ds_runtime::plugins::{BackendsSpec, BitTorrentSpec};
use futures::StreamExt;
use servers::Servers;

fn spec(s: &Servers, who: &str, publish: bool) -> BitTorrentSpec {
    BitTorrentSpec {
        engine: "aria2".into(),
        rpc: s.get(&format!("BT_{who}_RPC")),
        rpc_secret_file: None,
        trackers: vec![s.get("BT_TRACKER")],
        download_directory: Some(PathBuf::from(s.get(&format!("BT_{who}_DIR")))),
        publish,
    }
}

/// A NAR compressed with xz, written into `dir`: (nar, file, facts).
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

/// Whitelist the torrent of `file` at the tracker, then publish it from the
/// seeder.
async fn publish(s: &Servers, file: &Path, facts: &FileFacts, nar: &TestNar) -> Locator {
    let t = make_torrent(file, &[s.get("BT_TRACKER")]).expect("torrent");
    s.run("allow", &[&t.info_hash]);
    let publisher = TorrentPublisher::new(&spec(s, "SEEDER", true)).expect("publisher");
    let narinfo = NarInfo::parse(&nar.narinfo).expect("narinfo");
    let loc = publisher
        .publish(file.to_path_buf(), facts.clone(), &narinfo)
        .await
        .expect("publish");
    assert!(
        loc.to_string()
            .starts_with(&format!("btih:{}#", t.info_hash)),
        "{loc}"
    );
    loc
}

async fn collect(
    b: &BitTorrentBackend,
    loc: &Locator,
    nar: &TestNar,
) -> Result<Vec<u8>, BackendError> {
    let narinfo = NarInfo::parse(&nar.narinfo).expect("narinfo");
    let opened = b.open(loc, &narinfo, 0).await?;
    assert_eq!(opened.start, 0);
    let mut out = Vec::new();
    let mut s = opened.stream;
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c?);
    }
    Ok(out)
}

/// One seeder publishes a NAR file; two leechers fetch it at the same time
/// through the tracker: one through the backend, one through a whole
/// fetcher (NarHash verified, cached). Both get the exact NAR; publishing
/// again gives the same locator; a leecher without `publish` removes the
/// download from its engine afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeder_and_two_leechers() {
    let Some(s) = Servers::start("bt") else {
        return;
    };
    let seed_dir = PathBuf::from(s.get("BT_SEEDER_DIR"));
    // DS_BT_NAR_MB=<n> for a measurement with a bigger NAR (default 3).
    let mb: usize = std::env::var("DS_BT_NAR_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let t0 = Instant::now();
    let (nar, file, facts) = nar_file(&seed_dir, "bt-swarm", 1, mb * 1_000_000).await;
    let loc = publish(&s, &file, &facts, &nar).await;
    eprintln!(
        "made and published the torrent of {} bytes in {:?}",
        facts.file_size.unwrap_or(0),
        t0.elapsed()
    );
    let narinfo = NarInfo::parse(&nar.narinfo).expect("narinfo");
    let again = TorrentPublisher::new(&spec(&s, "SEEDER", true))
        .expect("publisher")
        .publish(file.clone(), facts.clone(), &narinfo)
        .await
        .expect("publish twice");
    assert_eq!(again, loc, "publishing twice gives the same locator");

    let l1 = BitTorrentBackend::new(&spec(&s, "LEECHER1", false))
        .expect("backend")
        .with_limits(Duration::from_secs(60), Duration::from_secs(15));
    // Leecher 2 goes through a fetcher set up from the config, as the
    // service does ([backends.bittorrent]).
    let backends = BackendsSpec {
        bittorrent: Some(spec(&s, "LEECHER2", false)),
        ..BackendsSpec::default()
    };
    let cache = tempfile::tempdir().expect("tempdir");
    let fetcher = common::configured(cache.path(), 1 << 30, &backends).expect("fetcher");

    let t = Instant::now();
    let via_backend = collect(&l1, &loc, &nar);
    let loc_s = loc.to_string();
    let via_fetcher = async {
        let pipe = fetcher
            .fetch(&nar.narinfo, std::slice::from_ref(&loc_s), 0)
            .await
            .expect("fetch");
        read_all(pipe).await
    };
    let (a, b) = tokio::join!(via_backend, via_fetcher);
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "two leechers got {} bytes of NAR ({} bytes xz) each in {secs:.2} s ({:.1} MB/s of file per leecher)",
        nar.bytes.len(),
        facts.file_size.unwrap_or(0),
        facts.file_size.unwrap_or(0) as f64 / 1e6 / secs
    );
    assert!(
        a.as_ref().map(|a| a == &nar.bytes).unwrap_or(false),
        "leecher 1: {:?}",
        a.err()
    );
    assert!(b == nar.bytes, "leecher 2 (fetcher) got {} bytes", b.len());

    // The seeder fetching what it seeds: the engine's existing download is
    // used (not added twice) and left seeding.
    let own = BitTorrentBackend::new(&spec(&s, "SEEDER", true)).expect("backend");
    for round in 0..2 {
        let got = collect(&own, &loc, &nar).await;
        assert!(
            got.as_ref().map(|g| g == &nar.bytes).unwrap_or(false),
            "seeder's own fetch {round}: {:?}",
            got.err()
        );
    }
    assert!(file.exists(), "the seeded file stays");

    // Not publishing: the download is removed once read.
    let l1_dir = PathBuf::from(s.get("BT_LEECHER1_DIR"));
    let hash = loc_s["btih:".len().."btih:".len() + 40].to_string();
    common::wait_until("leecher 1 cleans up", Duration::from_secs(10), || {
        !l1_dir.join(&hash).exists()
    })
    .await;
}

/// A torrent whose content is not the file the locator's facts describe
/// (another file published, its info-hash with the first file's facts):
/// the engine delivers it intact, the FileHash check refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_content_is_bad_data() {
    let Some(s) = Servers::start("bt") else {
        return;
    };
    let seed_dir = PathBuf::from(s.get("BT_SEEDER_DIR"));
    let (nar, _file, facts) = nar_file(&seed_dir, "bt-right", 2, 500_000).await;
    // Same size, other bytes: only the hash can tell.
    let xz = std::fs::read(&_file).expect("read");
    let mut other = xz.clone();
    let mid = other.len() / 2;
    other[mid] ^= 0x55;
    let other_file = seed_dir.join("other.nar.xz");
    std::fs::write(&other_file, &other).expect("write");
    let other_facts = FileFacts {
        file_hash: Some(Hash::sha256(&other)),
        ..facts.clone()
    };
    let other_loc = publish(&s, &other_file, &other_facts, &nar).await;
    let (hash, _) = other_loc.other_parts().expect("other").expect("parts");
    let lying = locator(hash, &facts, &[s.get("BT_TRACKER")]);

    let l1 = BitTorrentBackend::new(&spec(&s, "LEECHER1", false))
        .expect("backend")
        .with_limits(Duration::from_secs(30), Duration::from_secs(10));
    match collect(&l1, &lying, &nar).await {
        Err(e) => assert!(e.is_bad_data(), "{e}"),
        Ok(b) => panic!("accepted {} bytes of the wrong file", b.len()),
    }
}

/// The seeder's copy is corrupted after it started seeding: it serves bad
/// pieces, the leecher's engine rejects them (piece SHA-1), no progress is
/// made and the stall detector gives up with a transport error; no byte is
/// handed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_seeder_stalls_and_fails() {
    let Some(s) = Servers::start("bt") else {
        return;
    };
    let seed_dir = PathBuf::from(s.get("BT_SEEDER_DIR"));
    let (nar, file, facts) = nar_file(&seed_dir, "bt-corrupt", 3, 1_500_000).await;
    let loc = publish(&s, &file, &facts, &nar).await;
    // Flip one byte in every 64 KiB, in place, in the copy the publisher
    // seeds from (`<downloadDirectory>/seed/<name>`; the seeder keeps
    // serving from that same file).
    let seeded = seed_dir
        .join("seed")
        .join(file.file_name().expect("file name"));
    let mut bytes = std::fs::read(&seeded).expect("read the seeded copy");
    for i in (0..bytes.len()).step_by(64 * 1024) {
        bytes[i] ^= 0xff;
    }
    std::fs::write(&seeded, &bytes).expect("corrupt");

    let stall = Duration::from_secs(6);
    let l2 = BitTorrentBackend::new(&spec(&s, "LEECHER2", false))
        .expect("backend")
        .with_limits(Duration::from_secs(30), stall);
    let t = Instant::now();
    match collect(&l2, &loc, &nar).await {
        Err(BackendError::Transport(e)) => {
            eprintln!("corrupt seeder: {e} after {:?}", t.elapsed());
            assert!(t.elapsed() < stall * 4, "gave up after {:?}", t.elapsed());
        }
        Err(e) => panic!("expected a stall, got {e}"),
        Ok(b) => panic!("accepted {} bytes from a corrupt seeder", b.len()),
    }
}

/// An engine that is not there: a transport error at once, not a hang.
#[tokio::test]
async fn engine_down_is_a_transport_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let b = BitTorrentBackend::new(&BitTorrentSpec {
        engine: "aria2".into(),
        rpc: format!("http://127.0.0.1:{port}/jsonrpc"),
        rpc_secret_file: None,
        trackers: vec![],
        download_directory: Some(dir.path().to_path_buf()),
        publish: false,
    })
    .expect("backend");
    let nar = TestNar::new("bt-down", b"x");
    let loc = locator(
        "0123456789abcdef0123456789abcdef01234567",
        &FileFacts::default(),
        &[],
    );
    let t = Instant::now();
    match collect(&b, &loc, &nar).await {
        Err(BackendError::Transport(_)) => {}
        other => panic!(
            "expected a transport error, got {:?}",
            other.map(|v| v.len())
        ),
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // A config the backend cannot use fails the fetcher's setup, naming
    // the key.
    let backends = BackendsSpec {
        bittorrent: Some(BitTorrentSpec {
            engine: "transmission".into(),
            rpc: "http://127.0.0.1:9091/transmission/rpc".into(),
            rpc_secret_file: None,
            trackers: vec![],
            download_directory: Some(dir.path().to_path_buf()),
            publish: false,
        }),
        ..BackendsSpec::default()
    };
    let e = common::configured(&dir.path().join("cache"), 1 << 20, &backends)
        .err()
        .map(|e| format!("{e:#}"));
    assert!(
        e.as_deref()
            .unwrap_or("")
            .contains("backends.bittorrent.engine"),
        "{e:?}"
    );
}
