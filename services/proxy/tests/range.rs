//! Range on local NARs against a real Nix store and the real proxy: exact
//! bytes (compared with `nix-store --dump`), and never the withheld tail of
//! a damaged NAR, however the client resumes (docs/architecture.md, "a
//! client never receives a complete bad NAR").

mod common;
use common::*;

fn range(spec: &str) -> [(&'static str, String); 1] {
    [("Range", spec.to_string())]
}

async fn get_range(proxy: &Proxy, url: &str, spec: &str) -> Resp {
    let h = range(spec);
    get(proxy.addr, url, &[(h[0].0, h[0].1.as_str())]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_returns_exact_bytes_and_never_the_tail_of_a_bad_nar() {
    require_nix!();
    let env = NixEnv::new();
    let big = env.build("big", 2);
    let nar = env.dump(&big);
    let size = nar.len();
    let proxy = Proxy::start(&env.root(), "compression = \"none\"", None);
    let url = proxy.nar_url(&big).await;

    // A good path: the whole NAR, and ranges from the start, the middle
    // (crossing chunk boundaries), open-ended and suffix ranges.
    let full = get(proxy.addr, &url, &[]).await;
    assert_eq!((full.status, full.complete), (200, true));
    assert!(full.body == nar, "the served NAR equals nix-store --dump");
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
    for (spec, a, b) in [
        ("bytes=0-99".to_string(), 0, 99),
        ("bytes=131000-400000".to_string(), 131000, 400000),
        (format!("bytes={}-", size / 2 + 7), size / 2 + 7, size - 1),
        ("bytes=-100".to_string(), size - 100, size - 1),
        (format!("bytes=1000-{}", size * 2), 1000, size - 1),
    ] {
        let r = get_range(&proxy, &url, &spec).await;
        assert_eq!((r.status, r.complete), (206, true), "{spec}");
        assert!(r.body == nar[a..=b], "{spec}: exact bytes");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {a}-{b}/{size}").as_str()),
            "{spec}"
        );
    }
    let r = get_range(&proxy, &url, &format!("bytes={size}-")).await;
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{size}").as_str())
    );

    // Damage one byte of the blob (same size): the database's NarHash no
    // longer matches the files.
    let blob = env.physical(&big).join("blob");
    let mut data = std::fs::read(&blob).unwrap();
    data[1_500_000] ^= 0xff;
    std::fs::write(&blob, &data).unwrap();

    let cut = get(proxy.addr, &url, &[]).await;
    assert!(!cut.complete, "a full GET of the damaged NAR is cut");
    assert!(cut.body.len() < size);
    // Resume from where it stopped, as curl -C - and Nix do: the withheld
    // tail must not come out either.
    let resumed = get_range(&proxy, &url, &format!("bytes={}-", cut.body.len())).await;
    assert!(
        !resumed.complete,
        "a resumed transfer of a bad NAR must not complete (status {}, {} bytes)",
        resumed.status,
        resumed.body.len()
    );
    let mut joined = cut.body.clone();
    joined.extend_from_slice(&resumed.body);
    assert!(
        joined.len() < size,
        "prefix + resumption never make the whole NAR"
    );
    // No range completes, whether it covers the damage or not: each is cut
    // from a stream verified over the whole NAR.
    for spec in ["bytes=-100", "bytes=0-99", "bytes=2000000-2000099"] {
        let r = get_range(&proxy, &url, spec).await;
        assert!(
            !r.complete,
            "{spec}: status {} {} bytes",
            r.status,
            r.body.len()
        );
    }
    assert!(proxy.log_text().contains("do not match the Nix database"));
}
