//! How a download gets past sources that lie, die or drip: `fetch_verified`
//! (nothing before the whole NAR verified), starting over without the
//! peers that sent bad bytes, the upstream fallback asked of the mapper,
//! and the progress window. Real NARs, real HTTP servers on 127.0.0.1.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ds_fetcher::FetchError;

const BIG: u64 = 1 << 30;

/// The cached copy of `nar` in the cache directory `dir`.
fn cached(dir: &std::path::Path, nar: &TestNar) -> Option<Vec<u8>> {
    std::fs::read(dir.join(format!("nar/{}.nar", nar.narhash32))).ok()
}

/// A peer that serves `nar`'s bytes (at its peer path) with `reply`.
async fn peer_serving(
    nar: &Arc<TestNar>,
    reply: impl Fn(&Req, &[u8]) -> Reply + Send + Sync + 'static,
) -> Server {
    let n = nar.clone();
    Server::start(move |r| {
        if r.path == n.peer_path() {
            reply(r, &n.bytes)
        } else {
            Reply::status(404)
        }
    })
    .await
}

/// An upstream cache serving `nar` uncompressed, and its `file:` locator.
async fn upstream_serving(nar: &Arc<TestNar>) -> (Server, String) {
    let n = nar.clone();
    let server = Server::start(move |r| Reply::bytes(r, &n.bytes)).await;
    let locator = format!(
        "file:{}/nar/{}.nar#compression=none",
        server.url, nar.narhash32
    );
    (server, locator)
}

/// Every report the mapper got names `peer`, and there is at least one.
fn only_reported(mapper: &RecordingMapper, peer: &Server) {
    let bad = mapper.bad.lock().unwrap().clone();
    assert!(!bad.is_empty(), "the lying peer was not reported");
    assert!(bad.iter().all(|(p, _)| *p == peer.url), "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_from_a_peer_start_over_and_verified_readers_get_the_good_nar() {
    let nar = Arc::new(TestNar::new("lie-wrong", &contents(40, 300_000)));
    let mut bad = nar.bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    let bad = Arc::new(bad);
    // Both pause after the first 100 kB: the streaming reader surely passed
    // bytes of the lie on, and a later fetch can join the second attempt.
    let b = bad.clone();
    let liar =
        Server::start(move |r| Reply::dripping(r, &b, 100_000, Duration::from_millis(300))).await;
    let good = peer_serving(&nar, |r, d| {
        Reply::dripping(r, d, 100_000, Duration::from_millis(300))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (f, mapper) = fetcher(dir.path(), BIG);
    let locs = vec![format!("peer:{}", liar.url), format!("peer:{}", good.url)];

    let (verified, streaming) = tokio::join!(
        f.fetch_verified(&nar.narinfo, &locs),
        f.fetch(&nar.narinfo, &locs, 0)
    );
    let verified = tokio::spawn(read_all(verified.unwrap()));
    let streaming = tokio::spawn(read_all(streaming.unwrap()));

    // The start-over: the honest peer is asked (from byte 0) only then.
    wait_until("the start-over", Duration::from_secs(10), || {
        good.requests() >= 1
    })
    .await;
    assert_eq!(good.requests_log()[0].range_start(), None);
    assert_eq!(f.status().in_flight, 1, "the second attempt is running");
    // A fetch started now joins the second attempt and gets the good NAR.
    let later = f.fetch(&nar.narinfo, &locs, 0).await.unwrap();
    let later = tokio::spawn(read_all(later));

    assert_eq!(verified.await.unwrap(), nar.bytes);
    let streamed = streaming.await.unwrap();
    assert!(
        !streamed.is_empty() && streamed.len() < nar.bytes.len(),
        "the streaming reader passed on bytes of the lie: it must close early, got {} of {}",
        streamed.len(),
        nar.bytes.len()
    );
    assert_eq!(streamed, bad[..streamed.len()]);
    assert_eq!(later.await.unwrap(), nar.bytes);

    only_reported(&mapper, &liar);
    assert_eq!(liar.requests(), 1, "the liar is not asked again");
    assert_eq!(good.requests(), 1);
    let st = f.status();
    assert_eq!(st.verification_failures, 1);
    assert_eq!(st.fetches_failed, 0);
    assert_eq!(st.cache_entries, 1);
    assert_eq!(st.in_flight, 0);
    assert_eq!(cached(dir.path(), &nar).as_deref(), Some(&nar.bytes[..]));
    assert_eq!(f.held(&nar.hash32).unwrap(), nar.narinfo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_the_nar_of_another_path_is_replaced_before_a_verified_reader_sees_it() {
    let nar = Arc::new(TestNar::new("lie-other", &contents(41, 200_000)));
    // Another path's NAR, shorter: it ends early, the next source carries
    // on from there, and the whole does not verify.
    let other = Arc::new(TestNar::new("other", &contents(42, 120_000)));
    let o = other.clone();
    let liar = Server::start(move |r| Reply::bytes(r, &o.bytes)).await;
    let (upstream, file) = upstream_serving(&nar).await;
    let dir = tempfile::tempdir().unwrap();
    let (f, mapper) = fetcher(dir.path(), BIG);
    let locs = vec![format!("peer:{}", liar.url), file];
    let fd = f.fetch_verified(&nar.narinfo, &locs).await.unwrap();
    assert_eq!(read_all(fd).await, nar.bytes);

    only_reported(&mapper, &liar);
    assert_eq!(liar.requests(), 1);
    // Once to carry on where the liar ended, once from byte 0.
    let log = upstream.requests_log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0].range_start(), Some(other.bytes.len() as u64));
    assert_eq!(log[1].range_start(), None);
    let st = f.status();
    assert!(st.verification_failures >= 1);
    assert_eq!(st.fetches_failed, 0);
    assert_eq!(st.cache_entries, 1);
    assert_eq!(cached(dir.path(), &nar).as_deref(), Some(&nar.bytes[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nar_too_long_from_a_peer_is_replaced_before_a_verified_reader_sees_it() {
    let nar = Arc::new(TestNar::new("lie-long", &contents(43, 150_000)));
    // The right NAR and then some, with no Content-Length to give it away.
    let liar = peer_serving(&nar, |r, d| {
        let mut long = d.to_vec();
        long.extend_from_slice(&[0u8; 4096]);
        Reply {
            no_length: true,
            ..Reply::dripping(r, &long, 50_000, Duration::from_millis(100))
        }
    })
    .await;
    let good = peer_serving(&nar, Reply::bytes).await;
    let dir = tempfile::tempdir().unwrap();
    let (f, mapper) = fetcher(dir.path(), BIG);
    let locs = vec![format!("peer:{}", liar.url), format!("peer:{}", good.url)];
    let fd = f.fetch_verified(&nar.narinfo, &locs).await.unwrap();
    assert_eq!(read_all(fd).await, nar.bytes);

    only_reported(&mapper, &liar);
    assert_eq!(good.requests(), 1);
    assert_eq!(good.requests_log()[0].range_start(), None);
    let st = f.status();
    assert!(st.verification_failures >= 1);
    assert_eq!(st.fetches_failed, 0);
    assert_eq!(st.cache_entries, 1);
    assert_eq!(cached(dir.path(), &nar).as_deref(), Some(&nar.bytes[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_source_lies_the_verified_pipe_closes_empty() {
    let nar = Arc::new(TestNar::new("all-lie", &contents(44, 100_000)));
    let lie = |r: &Req, d: &[u8]| {
        let mut bad = d.to_vec();
        let last = bad.len() - 100;
        bad[last] ^= 0x55;
        Reply::dripping(r, &bad, 30_000, Duration::from_millis(100))
    };
    let liar1 = peer_serving(&nar, lie).await;
    let liar2 = peer_serving(&nar, lie).await;
    let dir = tempfile::tempdir().unwrap();
    let (f, mapper) = fetcher(dir.path(), BIG);
    let locs = vec![format!("peer:{}", liar1.url), format!("peer:{}", liar2.url)];
    let fd = f.fetch_verified(&nar.narinfo, &locs).await.unwrap();
    assert!(read_all(fd).await.is_empty(), "a lie reached the reader");

    assert_eq!(liar1.requests(), 1);
    assert_eq!(liar2.requests(), 1);
    let bad: Vec<String> = mapper
        .bad
        .lock()
        .unwrap()
        .iter()
        .map(|b| b.0.clone())
        .collect();
    assert!(
        bad.contains(&liar1.url) && bad.contains(&liar2.url),
        "{bad:?}"
    );
    // The upstream caches were asked as a last resort (there were none).
    assert_eq!(
        *mapper.upstream_asked.lock().unwrap(),
        vec![nar.hash32.clone()]
    );
    let st = f.status();
    assert_eq!(st.fetches_failed, 1);
    assert_eq!(st.verification_failures, 2);
    assert_eq!(st.cache_entries, 0);
    assert_eq!(st.in_flight, 0);
    assert_eq!(cached(dir.path(), &nar), None);
    assert_eq!(
        std::fs::read_dir(dir.path().join("partial"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_404s_falls_back_to_the_upstream_the_mapper_names() {
    let nar = Arc::new(TestNar::new("fallback-404", &contents(45, 80_000)));
    let gone = Server::start(|_| Reply::status(404)).await;
    let (upstream, file) = upstream_serving(&nar).await;
    let dir = tempfile::tempdir().unwrap();
    let (f, mapper) = fetcher(dir.path(), BIG);
    *mapper.upstream.lock().unwrap() = vec![file];
    let fd = f
        .fetch_verified(&nar.narinfo, &[format!("peer:{}", gone.url)])
        .await
        .unwrap();
    assert_eq!(read_all(fd).await, nar.bytes);

    assert_eq!(gone.requests(), 1);
    let log = upstream.requests_log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].path, format!("/nar/{}.nar", nar.narhash32));
    assert_eq!(
        *mapper.upstream_asked.lock().unwrap(),
        vec![nar.hash32.clone()]
    );
    // A 404 is not a lie.
    assert!(mapper.bad.lock().unwrap().is_empty());
    let st = f.status();
    assert_eq!(st.fetches_failed, 0);
    assert_eq!(st.verification_failures, 0);
    assert_eq!(
        st.bytes_fetched.get("file"),
        Some(&(nar.bytes.len() as u64))
    );
    assert_eq!(cached(dir.path(), &nar).as_deref(), Some(&nar.bytes[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_dies_midway_is_continued_from_the_upstream_at_the_byte_reached() {
    let nar = Arc::new(TestNar::new("fallback-midway", &contents(46, 300_000)));
    let half = nar.bytes.len() / 2;
    let dying = peer_serving(&nar, move |r, d| Reply::dies_after(r, d, half)).await;
    let (upstream, file) = upstream_serving(&nar).await;
    let dir = tempfile::tempdir().unwrap();
    let (f, mapper) = fetcher(dir.path(), BIG);
    *mapper.upstream.lock().unwrap() = vec![file];
    let locs = vec![format!("peer:{}", dying.url)];
    // A streaming reader passes the peer's half on, then the upstream's.
    let (streaming, verified) = tokio::join!(
        f.fetch(&nar.narinfo, &locs, 0),
        f.fetch_verified(&nar.narinfo, &locs)
    );
    let (streamed, verified) =
        tokio::join!(read_all(streaming.unwrap()), read_all(verified.unwrap()));
    assert_eq!(streamed, nar.bytes);
    assert_eq!(verified, nar.bytes);

    let log = upstream.requests_log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].range_start(), Some(half as u64), "{log:?}");
    assert!(mapper.bad.lock().unwrap().is_empty());
    let st = f.status();
    assert_eq!(st.fetches_failed, 0);
    assert_eq!(st.bytes_fetched.get("peer"), Some(&(half as u64)));
    assert_eq!(
        st.bytes_fetched.get("file"),
        Some(&((nar.bytes.len() - half) as u64))
    );
    assert_eq!(cached(dir.path(), &nar).as_deref(), Some(&nar.bytes[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripping_peer_is_dropped_after_one_stall_period() {
    let nar = Arc::new(TestNar::new("drip", &contents(47, 100_000)));
    let first = 20_000;
    let drip = peer_serving(&nar, move |r, d| {
        Reply::trickle(r, d, first, Duration::from_millis(200))
    })
    .await;
    let good = peer_serving(&nar, Reply::bytes).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), BIG);
    config.peer_timeout = Duration::from_millis(250);
    config.min_stall = Duration::from_secs(1);
    let (f, mapper) = fetcher_with(config);
    let locs = vec![format!("peer:{}", drip.url), format!("peer:{}", good.url)];
    let t = Instant::now();
    let fd = f.fetch(&nar.narinfo, &locs, 0).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), read_all(fd))
        .await
        .expect("the dripping peer was never dropped");
    let took = t.elapsed();
    assert_eq!(got, nar.bytes);
    // One stall period (1 s: 4 × 250 ms, and min_stall) and the
    // rest from the second peer; the drip alone would take hours.
    assert!(took < Duration::from_millis(2500), "{took:?}");
    assert!(took >= Duration::from_millis(900), "{took:?}");

    let log = good.requests_log();
    // (Under load the drip's first bytes may be slower than the deadline:
    // then the second peer was hedged from byte 0 and lost; what counts is
    // that it was asked again from the byte the drip reached.)
    assert!(!log.is_empty() && log.len() <= 2, "{log:?}");
    let from = log[log.len() - 1]
        .range_start()
        .expect("continued with a Range");
    assert!(
        from >= first as u64 && from < first as u64 + 20,
        "continued at {from}"
    );
    // Slow is not a lie.
    assert!(mapper.bad.lock().unwrap().is_empty());
    let st = f.status();
    assert_eq!(st.fetches_failed, 0);
    assert_eq!(st.verification_failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_reader_that_passed_nothing_before_a_start_over_gets_the_good_nar() {
    // A reader joins at an offset the first attempt never got past (its
    // last chunk was too long), so it passed nothing of the lie on; it must
    // then be served the second attempt to the end.
    let nar = Arc::new(TestNar::new("join-offset", &contents(48, 2_000)));
    let size = nar.bytes.len();
    let offset = size - 10;
    let liar = peer_serving(&nar, move |_r, d| {
        let mut long = d.to_vec();
        long.extend_from_slice(&[0u8; 64]);
        Reply {
            no_length: true,
            parts: vec![
                (Duration::ZERO, long[..offset].to_vec()),
                (Duration::from_millis(400), long[offset..].to_vec()),
            ],
            ..Reply::status(200)
        }
    })
    .await;
    let good = peer_serving(&nar, move |r, d| {
        Reply::dripping(r, d, offset + 5, Duration::from_millis(300))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (f, mapper) = fetcher(dir.path(), BIG);
    let locs = vec![format!("peer:{}", liar.url), format!("peer:{}", good.url)];
    let fd = f.fetch(&nar.narinfo, &locs, offset as u64).await.unwrap();
    assert_eq!(read_all(fd).await, &nar.bytes[offset..]);
    only_reported(&mapper, &liar);
    assert_eq!(f.status().fetches_failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_starts_over_at_most_three_times() {
    let nar = Arc::new(TestNar::new("many-liars", &contents(50, 50_000)));
    let lie = |r: &Req, d: &[u8]| {
        let mut bad = d.to_vec();
        bad[100] ^= 0x01;
        Reply::bytes(r, &bad)
    };
    let mut liars = Vec::new();
    for _ in 0..4 {
        liars.push(peer_serving(&nar, lie).await);
    }
    let honest = peer_serving(&nar, Reply::bytes).await;
    let locs = |n: usize| -> Vec<String> {
        liars[..n]
            .iter()
            .chain([&honest])
            .map(|s| format!("peer:{}", s.url))
            .collect()
    };

    // Three liars first: three start-overs, the fourth attempt verifies.
    let dir = tempfile::tempdir().unwrap();
    let (f, _) = fetcher(dir.path(), BIG);
    let fd = f.fetch_verified(&nar.narinfo, &locs(3)).await.unwrap();
    assert_eq!(read_all(fd).await, nar.bytes);
    assert_eq!(f.status().verification_failures, 3);
    assert_eq!(honest.requests(), 1);

    // Four: the download gives up before it gets to the honest one.
    let dir = tempfile::tempdir().unwrap();
    let (f, mapper) = fetcher(dir.path(), BIG);
    let got = match f.fetch_verified(&nar.narinfo, &locs(4)).await {
        Ok(fd) => read_all(fd).await,
        // The whole download may fail before the call sees a first byte.
        Err(FetchError::Failed(_)) => vec![],
        Err(e) => panic!("{e:?}"),
    };
    assert!(got.is_empty(), "a lie reached the reader");
    assert_eq!(honest.requests(), 1);
    let st = f.status();
    assert_eq!(st.fetches_failed, 1);
    assert_eq!(st.verification_failures, 4);
    let bad: Vec<String> = mapper
        .bad
        .lock()
        .unwrap()
        .iter()
        .map(|b| b.0.clone())
        .collect();
    for l in &liars {
        assert!(bad.contains(&l.url), "{bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_from_a_file_source_start_over_with_the_next_source() {
    // A corrupt mirror or upstream file (same length, one byte flipped, no
    // FileHash to catch it early): the NarHash check fails at the end, the
    // download starts over without that source and the next one delivers.
    // Nothing is reported to the mapper: only peers are.
    let nar = Arc::new(TestNar::new("file-lie", &contents(41, 200_000)));
    let mut bad = nar.bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    let bad = Arc::new(bad);
    let b = bad.clone();
    let liar = Server::start(move |r| Reply::bytes(r, &b)).await;
    let (good, good_locator) = upstream_serving(&nar).await;
    let dir = tempfile::tempdir().unwrap();
    let (f, mapper) = fetcher(dir.path(), BIG);
    let locs = vec![
        format!("file:{}/nar/x.nar#compression=none", liar.url),
        good_locator,
    ];
    let verified = f.fetch_verified(&nar.narinfo, &locs).await.unwrap();
    assert_eq!(read_all(verified).await, nar.bytes);
    assert_eq!(liar.requests(), 1);
    assert_eq!(good.requests(), 1);
    assert_eq!(good.requests_log()[0].range_start(), None, "from byte 0");
    assert!(mapper.bad.lock().unwrap().is_empty());
    wait_until("the good NAR cached", Duration::from_secs(5), || {
        cached(dir.path(), &nar).as_deref() == Some(&nar.bytes[..])
    })
    .await;
    assert_eq!(f.status().verification_failures, 1);
}
