//! The HTTP mirrors backend (`mirror:` locators) and the mirrors mapper,
//! against real HTTP servers on 127.0.0.1: one mirror down, one serving
//! corrupt bytes, one good.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ds_core::{Hash, NarInfo, SecretKey, StorePathHash};
use ds_fetcher::mirrors::{MirrorPool, MirrorsBackend};
use ds_fetcher::{FetchError, Fetcher, Registry};
use ds_mapper::mirrors::MirrorsMapper;
use ds_mapper::{Mapper, Scope};

const BIG: u64 = 1 << 30;

/// A NAR, its xz file and a signed narinfo naming it as `nar/<filehash>.nar.xz`.
struct Published {
    nar: TestNar,
    file: Arc<Vec<u8>>,
    narinfo: String,
    file_path: String,
    key: SecretKey,
}

async fn published(name: &str, len: usize) -> Published {
    let nar = TestNar::new(name, &contents(7, len));
    let file = Arc::new(compress("xz", &nar.bytes).await);
    let fh = Hash::sha256(&file);
    let file_path = format!("nar/{}.nar.xz", ds_core::base32::encode(&fh.digest));
    let mut info = NarInfo::parse(&nar.narinfo).unwrap();
    info.url = file_path.clone();
    info.compression = ds_core::Compression::Xz;
    info.file_hash = Some(fh);
    info.file_size = Some(file.len() as u64);
    let key = SecretKey::from_seed("mirror-test-1", [7; 32]);
    info.sign(&key);
    Published {
        narinfo: info.render(),
        nar,
        file,
        file_path,
        key,
    }
}

impl Published {
    fn locator(&self) -> String {
        let info = NarInfo::parse(&self.narinfo).unwrap();
        ds_mapper::mirrors::mirror_locator(&info)
            .unwrap()
            .to_string()
    }
}

/// A mirror serving `p` (narinfo and file), with `file` as the file bytes.
async fn mirror(p: &Published, file: Vec<u8>) -> Server {
    let (narinfo_path, narinfo) = (format!("/{}.narinfo", p.nar.hash32), p.narinfo.clone());
    let file_path = format!("/{}", p.file_path);
    Server::start(move |r| {
        if r.path == narinfo_path {
            Reply::bytes(r, narinfo.as_bytes())
        } else if r.path == file_path {
            Reply::bytes(r, &file)
        } else {
            Reply::status(404)
        }
    })
    .await
}

/// A URL nobody listens on.
async fn dead_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

fn fetcher_over(dir: &std::path::Path, pool: Arc<MirrorPool>) -> (Fetcher, Arc<RecordingMapper>) {
    let client = ds_fetcher::http::client(Duration::from_secs(2)).unwrap();
    let mut registry = Registry::new();
    registry.register(Arc::new(MirrorsBackend::new(
        client.clone(),
        pool,
        Duration::from_secs(2),
    )));
    registry.register(Arc::new(ds_fetcher::http::FileBackend::new(
        client,
        Duration::from_secs(2),
    )));
    let mapper = Arc::new(RecordingMapper::default());
    let f = Fetcher::with_registry(
        config(dir, BIG),
        registry,
        mapper.clone(),
        ds_runtime::service::Activity::new(),
    )
    .unwrap();
    (f, mapper)
}

fn corrupt(file: &[u8]) -> Vec<u8> {
    let mut bad = file.to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    bad[mid + 1] ^= 0xff;
    bad
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_and_corrupt_mirrors_are_skipped_and_the_good_one_serves() {
    let p = published("mirrored", 400_000).await;
    let down = dead_url().await;
    let bad = mirror(&p, corrupt(&p.file)).await;
    let good = mirror(&p, p.file.to_vec()).await;
    let pool = Arc::new(MirrorPool::with_backoff(
        vec![down.clone(), bad.url.clone(), good.url.clone()],
        Duration::from_secs(60),
        Duration::from_secs(600),
    ));

    // The mapper finds the narinfo on a mirror and answers a mirror: locator.
    let spec = ds_runtime::plugins::MirrorsSpec {
        urls: vec![down.clone(), bad.url.clone(), good.url.clone()],
        lookup: None,
    };
    let mapper = MirrorsMapper::new(
        &spec,
        reqwest::Client::new(),
        Duration::from_secs(2),
        vec![p.key.public()],
    );
    let hash = StorePathHash::parse(&p.nar.hash32).unwrap();
    let m = mapper
        .lookup(&hash, Scope::Fleet)
        .await
        .unwrap()
        .expect("a mirror has the narinfo");
    assert_eq!(m.locators.len(), 1);
    assert_eq!(m.locators[0].to_string(), p.locator());
    assert_eq!(m.narinfo.sigs.len(), 1, "trusted signature kept");
    assert_eq!(
        mapper.skipped(),
        vec![down.clone()],
        "the dead mirror backs off"
    );

    // First fetch: the round starts at the dead mirror (connection
    // refused: the backend moves on to the next mirror) and reaches the
    // corrupt one, whose bytes fail the file checks: that fetch fails
    // (a `mirror:` locator is one source to the fetcher; its upstream
    // fallback is empty here) and nothing is cached.
    let dir = tempfile::tempdir().unwrap();
    let (f, _) = fetcher_over(dir.path(), pool.clone());
    let locators: Vec<String> = m.locators.iter().map(|l| l.to_string()).collect();
    match f.fetch_verified(&p.nar.narinfo, &locators).await {
        Ok(fd) => assert!(read_all(fd).await.is_empty(), "no unverified byte passed"),
        Err(FetchError::Failed(_)) => {}
        Err(e) => panic!("{e:?}"),
    }
    assert_eq!(f.status().cache_entries, 0);
    let h = pool.health();
    assert!(h[0].backoff_left.is_some(), "down mirror in backoff: {h:?}");
    assert!(
        h[1].backoff_left.is_some(),
        "corrupt mirror in backoff: {h:?}"
    );
    assert!(
        h[1].last_error
            .as_deref()
            .unwrap_or("")
            .contains("bad data"),
        "{h:?}"
    );
    assert_eq!(h[2].failures, 0, "{h:?}");

    // While they back off, fetches go to the good mirror only.
    let (bad_before, good_before) = (bad.requests(), good.requests());
    for _ in 0..3 {
        let fd = f.fetch_verified(&p.nar.narinfo, &locators).await.unwrap();
        assert!(
            read_all(fd).await == p.nar.bytes,
            "verified NAR from the good mirror"
        );
        // The second and third come from the cache.
    }
    assert_eq!(
        bad.requests(),
        bad_before,
        "a mirror in backoff is not asked"
    );
    assert_eq!(good.requests(), good_before + 1);
    assert_eq!(pool.health()[2].failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_breaks_midway_hands_over_to_the_next_with_range() {
    let p = published("handover", 600_000).await;
    let (fl, path) = (p.file.clone(), format!("/{}", p.file_path));
    let half = p.file.len() / 2;
    let breaking = Server::start(move |r| {
        if r.path == path {
            Reply::dies_after(r, &fl, half)
        } else {
            Reply::status(404)
        }
    })
    .await;
    let good = mirror(&p, p.file.to_vec()).await;
    let pool = Arc::new(MirrorPool::new(vec![
        breaking.url.clone(),
        good.url.clone(),
    ]));
    let dir = tempfile::tempdir().unwrap();
    let (f, _) = fetcher_over(dir.path(), pool.clone());
    let fd = f.fetch(&p.nar.narinfo, &[p.locator()], 0).await.unwrap();
    assert!(read_all(fd).await == p.nar.bytes);
    let ranges: Vec<Option<u64>> = good
        .requests_log()
        .iter()
        .map(|r| r.range_start())
        .collect();
    assert_eq!(
        ranges,
        vec![Some(half as u64)],
        "continued at the byte reached"
    );
    let h = pool.health();
    assert_eq!(h[0].failures, 1, "{h:?}");
    assert_eq!(h[1].failures, 0, "{h:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_mirror_fails_the_fetch_falls_back_upstream() {
    let p = published("all-bad", 200_000).await;
    let down = dead_url().await;
    let bad = mirror(&p, corrupt(&p.file)).await;
    let short = mirror(&p, p.file[..p.file.len() / 3].to_vec()).await;
    let pool = Arc::new(MirrorPool::new(vec![
        down,
        bad.url.clone(),
        short.url.clone(),
    ]));

    // No fallback: each fetch fails and puts the mirror that failed it
    // in backoff, until all are.
    let dir = tempfile::tempdir().unwrap();
    let (f, _) = fetcher_over(dir.path(), pool.clone());
    let mut rounds = 0;
    while pool.health().iter().any(|h| h.backoff_left.is_none()) {
        rounds += 1;
        assert!(rounds <= 3, "{:?}", pool.health());
        match f.fetch_verified(&p.nar.narinfo, &[p.locator()]).await {
            Ok(fd) => assert!(read_all(fd).await.is_empty(), "nothing unverified passed"),
            Err(FetchError::Failed(_)) => {}
            Err(e) => panic!("{e:?}"),
        }
        assert_eq!(f.status().cache_entries, 0);
    }
    assert!(bad.requests() >= 1 && short.requests() >= 1);

    // With every mirror in backoff and an upstream named by the mapper.
    let fl = p.file.clone();
    let upstream = Server::start(move |r| Reply::bytes(r, &fl)).await;
    let info = NarInfo::parse(&p.narinfo).unwrap();
    let file_locator = ds_mapper::upstream::file_locator(&upstream.url, &info);
    let dir = tempfile::tempdir().unwrap();
    let (f, mapper) = fetcher_over(dir.path(), pool);
    *mapper.upstream.lock().unwrap() = vec![file_locator.to_string()];
    let fd = f
        .fetch_verified(&p.nar.narinfo, &[p.locator()])
        .await
        .unwrap();
    assert!(read_all(fd).await == p.nar.bytes);
    assert_eq!(upstream.requests(), 1);
}

/// Throughput of a 100 MiB NAR from a mirror (run with `--ignored
/// --nocapture`; prints MB/s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_100_mib() {
    for kind in ["none", "zstd"] {
        let nar = TestNar::new(&format!("mirror-big-{kind}"), &contents(51, 100 << 20));
        let file = Arc::new(compress(kind, &nar.bytes).await);
        let fl = file.clone();
        let server = Server::start(move |r| Reply::bytes(r, &fl)).await;
        let facts = ds_core::FileFacts {
            compression: ds_core::Compression::from_name(kind),
            file_hash: Some(Hash::sha256(&file)),
            file_size: Some(file.len() as u64),
        };
        let locator = ds_core::Locator::other("mirror", "nar/x.nar", &facts).to_string();
        let pool = Arc::new(MirrorPool::new(vec![server.url.clone()]));
        let dir = tempfile::tempdir().unwrap();
        let (f, _) = fetcher_over(dir.path(), pool);
        let t = std::time::Instant::now();
        let fd = f.fetch_verified(&nar.narinfo, &[locator]).await.unwrap();
        assert!(read_all(fd).await.len() == nar.bytes.len());
        let mb = nar.bytes.len() as f64 / 1e6;
        println!(
            "mirror {kind}: fetch {:.0} MB/s ({mb:.0} MB NAR)",
            mb / t.elapsed().as_secs_f64()
        );
    }
}
