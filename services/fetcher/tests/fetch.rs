//! The fetcher against real HTTP servers on 127.0.0.1, with real NARs.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ds_fetcher::FetchError;

const BIG: u64 = 1 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_nar_from_a_peer_is_streamed_cached_and_held() {
    let nar = Arc::new(TestNar::new("hello", &contents(1, 100_000)));
    let n = nar.clone();
    let peer = Server::start(move |r| {
        if r.path == n.peer_path() {
            Reply::bytes(r, &n.bytes)
        } else {
            Reply::status(404)
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (f, mapper) = fetcher(dir.path(), BIG);
    assert!(matches!(f.held(&nar.hash32), Err(FetchError::NotFound(_))));
    let fd = f
        .fetch(&nar.narinfo, &[format!("peer:{}", peer.url)], 0)
        .await
        .unwrap();
    assert_eq!(read_all(fd).await, nar.bytes);
    let log = peer.requests_log();
    assert_eq!(log.len(), 1);
    assert_eq!(
        log[0]
            .headers
            .get("x-distributed-store-hop")
            .map(String::as_str),
        Some("peer")
    );
    assert_eq!(log[0].headers.get("range"), None);
    let st = f.status();
    assert_eq!(st.cache_entries, 1);
    assert_eq!(st.cache_bytes, nar.bytes.len() as u64);
    assert_eq!(st.in_flight, 0);
    assert_eq!(
        st.bytes_fetched.get("peer"),
        Some(&(nar.bytes.len() as u64))
    );
    assert_eq!(f.held(&nar.hash32).unwrap(), nar.narinfo);
    assert!(dir
        .path()
        .join(format!("nar/{}.nar", nar.narhash32))
        .exists());
    assert!(mapper.bad.lock().unwrap().is_empty());
    // The mapper heard about the download starting and ending.
    assert_eq!(
        *mapper.fetching.lock().unwrap(),
        vec![(nar.hash32.clone(), true), (nar.hash32.clone(), false)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lead_locator_says_lead() {
    let nar = Arc::new(TestNar::new("lead", &contents(2, 5000)));
    let n = nar.clone();
    let peer = Server::start(move |r| Reply::bytes(r, &n.bytes)).await;
    let dir = tempfile::tempdir().unwrap();
    let (f, _) = fetcher(dir.path(), BIG);
    let fd = f
        .fetch(&nar.narinfo, &[format!("lead:{}", peer.url)], 0)
        .await
        .unwrap();
    assert_eq!(read_all(fd).await, nar.bytes);
    let log = peer.requests_log();
    assert_eq!(log[0].path, nar.peer_path());
    assert_eq!(
        log[0]
            .headers
            .get("x-distributed-store-hop")
            .map(String::as_str),
        Some("lead")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sources_in_every_compression() {
    let dir = tempfile::tempdir().unwrap();
    let (f, _) = fetcher(dir.path(), BIG);
    for (i, kind) in ["none", "xz", "zstd", "bzip2"].into_iter().enumerate() {
        let nar = TestNar::new(&format!("file-{kind}"), &contents(10 + i as u8, 300_000));
        let file = Arc::new(compress(kind, &nar.bytes).await);
        let file_hash = ds_core::Hash::sha256(&file);
        let fl = file.clone();
        let server = Server::start(move |r| Reply::bytes(r, &fl)).await;
        let locator = format!(
            "file:{}/nar/x.nar#compression={kind}&fileHash={}&fileSize={}",
            server.url,
            file_hash.to_nix32_string(),
            file.len()
        );
        let fd = f.fetch(&nar.narinfo, &[locator], 0).await.unwrap();
        assert_eq!(read_all(fd).await, nar.bytes, "{kind}");
        assert_eq!(f.held(&nar.hash32).unwrap(), nar.narinfo);
    }
    let st = f.status();
    assert_eq!(st.cache_entries, 4);
    assert_eq!(st.verification_failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_with_wrong_file_hash_fails() {
    let nar = TestNar::new("filehash", &contents(3, 50_000));
    let file = Arc::new(compress("zstd", &nar.bytes).await);
    let fl = file.clone();
    let server = Server::start(move |r| Reply::bytes(r, &fl)).await;
    let locator = format!(
        "file:{}/nar/x.nar.zst#compression=zstd&fileHash={}&fileSize={}",
        server.url,
        ds_core::Hash::sha256(b"something else").to_nix32_string(),
        file.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let (f, _) = fetcher(dir.path(), BIG);
    let got = match f.fetch(&nar.narinfo, &[locator], 0).await {
        Ok(fd) => read_all(fd).await,
        Err(FetchError::Failed(_)) => vec![],
        Err(e) => panic!("{e:?}"),
    };
    assert!(got.len() < nar.bytes.len());
    assert_eq!(f.status().cache_entries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_transfer_that_breaks_resumes_inside_the_backend() {
    let nar = TestNar::new("resume-file", &contents(4, 400_000));
    let file = Arc::new(compress("xz", &nar.bytes).await);
    let fl = file.clone();
    let server = Server::start(move |r| {
        if r.range_start().is_none() {
            Reply::dies_after(r, &fl, fl.len() / 3)
        } else {
            Reply::bytes(r, &fl)
        }
    })
    .await;
    let locator = format!(
        "file:{}/nar/x.nar.xz#compression=xz&fileHash={}&fileSize={}",
        server.url,
        ds_core::Hash::sha256(&file).to_nix32_string(),
        file.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let (f, _) = fetcher(dir.path(), BIG);
    let fd = f.fetch(&nar.narinfo, &[locator], 0).await.unwrap();
    assert_eq!(read_all(fd).await, nar.bytes);
    let log = server.requests_log();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].range_start(), Some((file.len() / 3) as u64));
    assert_eq!(f.status().cache_entries, 1);
}

/// Run one fetch from a single peer answering `reply`; returns the bytes
/// read, the fetcher and the mapper.
async fn fetch_from_one_bad_peer(
    nar: &TestNar,
    reply: impl Fn(&Req) -> Reply + Send + Sync + 'static,
) -> (
    Vec<u8>,
    ds_fetcher::Fetcher,
    Arc<RecordingMapper>,
    Server,
    tempfile::TempDir,
) {
    let peer = Server::start(reply).await;
    let dir = tempfile::tempdir().unwrap();
    let (f, mapper) = fetcher(dir.path(), BIG);
    let got = match f
        .fetch(&nar.narinfo, &[format!("peer:{}", peer.url)], 0)
        .await
    {
        Ok(fd) => read_all(fd).await,
        Err(FetchError::Failed(_)) => vec![],
        Err(e) => panic!("{e:?}"),
    };
    // A streaming reader closes as soon as the bytes it passed on failed
    // verification, which may be before the download (starting over
    // without the peer, asking for the upstream fallback) has ended.
    wait_until("the download to end", Duration::from_secs(10), || {
        f.status().in_flight == 0
    })
    .await;
    (got, f, mapper, peer, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_of_the_right_length_close_the_pipe_short() {
    let nar = TestNar::new("wrong", &contents(5, 200_000));
    let mut bad = nar.bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    let (got, f, mapper, peer, dir) =
        fetch_from_one_bad_peer(&nar, move |r| Reply::bytes(r, &bad)).await;
    assert!(
        got.len() < nar.bytes.len(),
        "a full-length bad NAR was passed on"
    );
    let st = f.status();
    assert_eq!(st.verification_failures, 1);
    assert_eq!(st.fetches_failed, 1);
    assert_eq!(st.cache_entries, 0);
    assert_eq!(st.in_flight, 0);
    assert!(matches!(f.held(&nar.hash32), Err(FetchError::NotFound(_))));
    assert_eq!(
        std::fs::read_dir(dir.path().join("partial"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("nar")).unwrap().count(),
        0
    );
    let bad = mapper.bad.lock().unwrap().clone();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].0, peer.url);
    // The next fetch starts afresh (the failed download is gone).
    drop(peer);
    assert!(matches!(
        f.fetch(&nar.narinfo, &[], 0).await,
        Err(FetchError::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nar_too_long_fails() {
    let nar = TestNar::new("long", &contents(6, 20_000));
    let mut long = nar.bytes.clone();
    long.extend_from_slice(&[0u8; 64]);
    let (got, f, mapper, _peer, _dir) =
        fetch_from_one_bad_peer(&nar, move |r| Reply::bytes(r, &long)).await;
    assert!(got.len() < nar.bytes.len());
    let st = f.status();
    assert!(st.verification_failures >= 1);
    assert_eq!(st.fetches_failed, 1);
    assert_eq!(st.cache_entries, 0);
    assert_eq!(mapper.bad.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nar_too_short_fails() {
    let nar = TestNar::new("short", &contents(7, 20_000));
    let short = nar.bytes[..nar.bytes.len() - 16].to_vec();
    let (got, f, mapper, _peer, _dir) =
        fetch_from_one_bad_peer(&nar, move |r| Reply::bytes(r, &short)).await;
    assert!(got.len() < nar.bytes.len());
    let st = f.status();
    assert_eq!(st.fetches_failed, 1);
    assert_eq!(st.cache_entries, 0);
    assert_eq!(mapper.bad.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_dies_midway_is_continued_from_the_next_with_range() {
    let nar = Arc::new(TestNar::new("midway", &contents(8, 300_000)));
    let half = nar.bytes.len() / 2;
    let n = nar.clone();
    let dying = Server::start(move |r| Reply::dies_after(r, &n.bytes, half)).await;
    let n = nar.clone();
    let good = Server::start(move |r| Reply::bytes(r, &n.bytes)).await;
    let dir = tempfile::tempdir().unwrap();
    let (f, mapper) = fetcher(dir.path(), BIG);
    let fd = f
        .fetch(
            &nar.narinfo,
            &[format!("peer:{}", dying.url), format!("peer:{}", good.url)],
            0,
        )
        .await
        .unwrap();
    assert_eq!(read_all(fd).await, nar.bytes);
    let log = good.requests_log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].range_start(), Some(half as u64), "{log:?}");
    let st = f.status();
    assert_eq!(st.cache_entries, 1);
    assert_eq!(st.verification_failures, 0);
    assert_eq!(
        st.bytes_fetched.get("peer"),
        Some(&(nar.bytes.len() as u64))
    );
    // A broken connection is not bad data.
    assert!(mapper.bad.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_never_answers_is_hedged_within_the_deadline() {
    let nar = Arc::new(TestNar::new("hang", &contents(9, 50_000)));
    let silent = Server::start(|_| Reply::hang()).await;
    let n = nar.clone();
    let good = Server::start(move |r| Reply::bytes(r, &n.bytes)).await;
    let dir = tempfile::tempdir().unwrap();
    let (f, _) = fetcher(dir.path(), BIG);
    let t = Instant::now();
    let fd = f
        .fetch(
            &nar.narinfo,
            &[format!("peer:{}", silent.url), format!("peer:{}", good.url)],
            0,
        )
        .await
        .unwrap();
    let first = t.elapsed();
    assert_eq!(read_all(fd).await, nar.bytes);
    // peerTimeoutMs is 300: the second source starts then, not after the
    // 2 s stall limit.
    assert!(
        first >= Duration::from_millis(250) && first < Duration::from_millis(1200),
        "{first:?}"
    );
    assert_eq!(silent.requests(), 1);
    assert_eq!(good.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_source_failing_is_a_failed_error() {
    let nar = TestNar::new("none-left", &contents(11, 1000));
    let gone = Server::start(|_| Reply::status(404)).await;
    let dir = tempfile::tempdir().unwrap();
    let (f, _) = fetcher(dir.path(), BIG);
    let r = f
        .fetch(&nar.narinfo, &[format!("peer:{}", gone.url)], 0)
        .await;
    match r {
        Err(FetchError::Failed(m)) => assert!(m.contains("404"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.status().fetches_failed, 1);
    assert_eq!(f.status().verification_failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetches_share_one_download_and_a_joiner_gets_its_suffix() {
    let nar = Arc::new(TestNar::new("shared", &contents(12, 500_000)));
    let n = nar.clone();
    let peer =
        Server::start(move |r| Reply::dripping(r, &n.bytes, 100_000, Duration::from_millis(400)))
            .await;
    let dir = tempfile::tempdir().unwrap();
    let (f, _) = fetcher(dir.path(), BIG);
    let loc = vec![format!("peer:{}", peer.url)];
    let (a, b) = tokio::join!(
        f.fetch(&nar.narinfo, &loc, 0),
        f.fetch(&nar.narinfo, &loc, 0)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    // A third caller joins mid-download, from an offset.
    let c = f.fetch(&nar.narinfo, &loc, 1234).await.unwrap();
    assert_eq!(f.status().in_flight, 1);
    let (a, b, c) = tokio::join!(read_all(a), read_all(b), read_all(c));
    assert_eq!(a, nar.bytes);
    assert_eq!(b, nar.bytes);
    assert_eq!(c, &nar.bytes[1234..]);
    assert_eq!(peer.requests(), 1);
    // An offset past the end is refused; at the end, an empty stream.
    assert!(matches!(
        f.fetch(&nar.narinfo, &loc, nar.bytes.len() as u64 + 1)
            .await,
        Err(FetchError::InvalidArgs(_))
    ));
    let end = f
        .fetch(&nar.narinfo, &[], nar.bytes.len() as u64)
        .await
        .unwrap();
    assert!(read_all(end).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_locators_serve_only_what_is_held() {
    let nar = Arc::new(TestNar::new("held", &contents(13, 30_000)));
    let n = nar.clone();
    let peer = Server::start(move |r| Reply::bytes(r, &n.bytes)).await;
    let dir = tempfile::tempdir().unwrap();
    let (f, _) = fetcher(dir.path(), BIG);
    assert!(matches!(
        f.fetch(&nar.narinfo, &[], 0).await,
        Err(FetchError::NotFound(_))
    ));
    let fd = f
        .fetch(&nar.narinfo, &[format!("peer:{}", peer.url)], 0)
        .await
        .unwrap();
    assert_eq!(read_all(fd).await, nar.bytes);
    let fd = f.fetch(&nar.narinfo, &[], 100).await.unwrap();
    assert_eq!(read_all(fd).await, &nar.bytes[100..]);
    assert_eq!(peer.requests(), 1);
    // Bad arguments.
    assert!(matches!(
        f.fetch("not a narinfo", &[], 0).await,
        Err(FetchError::InvalidArgs(_))
    ));
    assert!(matches!(
        f.fetch(&nar.narinfo, &["nonsense".into()], 0).await,
        Err(FetchError::InvalidArgs(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_recently_used_nars_are_evicted_and_the_cache_survives_a_restart() {
    let nars: Vec<Arc<TestNar>> = (0..3)
        .map(|i| Arc::new(TestNar::new(&format!("lru{i}"), &contents(20 + i, 40_000))))
        .collect();
    let all = nars.clone();
    let peer = Server::start(
        move |r| match all.iter().find(|n| n.peer_path() == r.path) {
            Some(n) => Reply::bytes(r, &n.bytes),
            None => Reply::status(404),
        },
    )
    .await;
    let size = nars[0].bytes.len() as u64;
    let dir = tempfile::tempdir().unwrap();
    let loc = vec![format!("peer:{}", peer.url)];
    {
        // Room for two and a half.
        let (f, _) = fetcher(dir.path(), size * 5 / 2);
        for n in &nars[..2] {
            let fd = f.fetch(&n.narinfo, &loc, 0).await.unwrap();
            assert_eq!(read_all(fd).await, n.bytes);
        }
        // Use the first again: the second is now the least recently used.
        let fd = f.fetch(&nars[0].narinfo, &[], 0).await.unwrap();
        assert_eq!(read_all(fd).await, nars[0].bytes);
        let fd = f.fetch(&nars[2].narinfo, &loc, 0).await.unwrap();
        assert_eq!(read_all(fd).await, nars[2].bytes);
        let st = f.status();
        assert_eq!(st.cache_entries, 2);
        assert_eq!(st.cache_bytes, 2 * size);
        assert!(f.held(&nars[0].hash32).is_ok());
        assert!(matches!(
            f.held(&nars[1].hash32),
            Err(FetchError::NotFound(_))
        ));
        assert!(f.held(&nars[2].hash32).is_ok());
        assert!(matches!(
            f.fetch(&nars[1].narinfo, &[], 0).await,
            Err(FetchError::NotFound(_))
        ));
    }
    // A leftover partial download is removed on start; the cache is kept.
    std::fs::write(dir.path().join("partial/junk.nar"), b"x").unwrap();
    let (f, _) = fetcher(dir.path(), size * 5 / 2);
    assert_eq!(
        std::fs::read_dir(dir.path().join("partial"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(f.status().cache_entries, 2);
    assert_eq!(f.held(&nars[2].hash32).unwrap(), nars[2].narinfo);
    let fd = f.fetch(&nars[0].narinfo, &[], 0).await.unwrap();
    assert_eq!(read_all(fd).await, nars[0].bytes);
    // A NAR larger than the whole cache is streamed but not kept.
    let small_dir = tempfile::tempdir().unwrap();
    let (small, _) = fetcher(small_dir.path(), size / 2);
    let fd = small.fetch(&nars[1].narinfo, &loc, 0).await.unwrap();
    assert_eq!(read_all(fd).await, nars[1].bytes);
    assert_eq!(small.status().cache_entries, 0);
}
