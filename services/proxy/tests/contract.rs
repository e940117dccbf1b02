//! The HTTP contract of the proxy, against the real binary serving a real
//! Nix store: status codes, HEAD, 405, bad paths, traversal, Range/416,
//! nix-cache-info, metrics, and 500s that tell an anonymous client nothing
//! but the status phrase.

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_codes_head_and_bad_requests() {
    require_nix!();
    let env = NixEnv::new();
    let leaf = env.build("leaf", 1);
    let nar = env.dump(&leaf);
    let proxy = Proxy::start(&env.root(), "compression = \"zstd\"", None);
    let a = proxy.addr;

    let r = get(a, "/nix-cache-info", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/x-nix-cache-info"));
    assert!(String::from_utf8_lossy(&r.body).contains("StoreDir: /nix/store"));

    let narinfo = format!("/{}.narinfo", hash_part(&leaf));
    let r = get(a, &narinfo, &[]).await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body.clone()).unwrap();
    assert!(text.contains(&format!("StorePath: {leaf}")), "{text}");
    assert!(text.contains("Compression: zstd"), "{text}");
    let head = request(a, "HEAD", &narinfo, &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), r.header("content-length"));
    let missing = "/00000000000000000000000000000000.narinfo";
    assert_eq!(get(a, missing, &[]).await.status, 404);
    assert_eq!(request(a, "HEAD", missing, &[]).await.status, 404);

    // NARs: HEAD of the uncompressed NAR has its length and offers Range;
    // the compressed one does not offer Range.
    let nar_hash = text
        .lines()
        .find_map(|l| l.strip_prefix("URL: nar/"))
        .and_then(|u| u.strip_suffix(".nar.zst"))
        .expect("a .nar.zst URL")
        .to_string();
    let plain = format!("/nar/{nar_hash}.nar");
    let head = request(a, "HEAD", &plain, &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(nar.len().to_string().as_str())
    );
    assert_eq!(head.header("accept-ranges"), Some("bytes"));
    let zst = get(a, &format!("/nar/{nar_hash}.nar.zst"), &[]).await;
    assert_eq!((zst.status, zst.complete), (200, true));
    assert_eq!(zst.header("accept-ranges"), None);
    assert_eq!(
        zstd::stream::decode_all(&zst.body[..]).unwrap(),
        nar,
        "the zstd NAR decodes to nix-store --dump"
    );
    let r = get(a, &plain, &[("Range", "bytes=5-9")]).await;
    assert_eq!((r.status, &r.body[..]), (206, &nar[5..=9]));
    for bad in ["bytes=99999-", "bytes=5-2", "items=0-1", "bytes=0-1,3-4"] {
        let r = get(a, &plain, &[("Range", bad)]).await;
        assert_eq!(r.status, 416, "{bad}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes */{}", nar.len()).as_str())
        );
    }
    // A NAR URL whose NarHash is not the path's current one.
    let (h, _) = nar_hash.split_once('-').unwrap();
    let other = format!("/nar/{h}-{}.nar", "0".repeat(52));
    assert_eq!(get(a, &other, &[]).await.status, 404);

    // Writes: 405 with Allow.
    for m in ["POST", "PUT", "DELETE"] {
        let r = request(a, m, &narinfo, &[]).await;
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }
    // Malformed and hostile paths: 400; unknown but well-formed: 404.
    for bad in [
        "/../etc/passwd",
        "/nar/../../etc/passwd",
        "/nar/%2e%2e%2fetc%2fpasswd",
        "/abc.narinfo",
        "/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo",
        "//x.narinfo",
    ] {
        let r = get(a, bad, &[]).await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(
            String::from_utf8_lossy(&r.body).starts_with("Bad Request: "),
            "{bad}"
        );
    }
    assert_eq!(get(a, "/log/foo.drv", &[]).await.status, 404);

    let m = String::from_utf8(get(a, "/metrics", &[]).await.body).unwrap();
    assert!(
        m.contains("distributed_store_proxy_requests_answered_total"),
        "{m}"
    );
    assert!(
        m.contains("distributed_store_proxy_narinfo_misses_total 2"),
        "{m}"
    );
}

/// A store database that fails under the proxy: the client gets the bare
/// status phrase, the log gets the detail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_errors_tell_the_client_nothing() {
    require_nix!();
    let env = NixEnv::new();
    let leaf = env.build("leaf", 1);
    let proxy = Proxy::start(&env.root(), "", None);
    let narinfo = format!("/{}.narinfo", hash_part(&leaf));
    assert_eq!(get(proxy.addr, &narinfo, &[]).await.status, 200);
    // The row of the path no longer parses (a damaged database).
    let out = std::process::Command::new("sqlite3")
        .arg(env.db_file())
        .arg(format!(
            "UPDATE ValidPaths SET hash = 'sha256:not-a-hash' WHERE path = '{leaf}';"
        ))
        .output()
        .expect("sqlite3 (Debian: apt-get install sqlite3)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = get(proxy.addr, &narinfo, &[]).await;
    assert_eq!(r.status, 500);
    assert_eq!(String::from_utf8_lossy(&r.body), "Internal Server Error\n");
    let log = proxy.log_text();
    assert!(
        log.contains("not-a-hash") || log.contains(&leaf),
        "the detail is logged:\n{log}"
    );
}
