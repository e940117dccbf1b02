//! NAR file contents sent with `sendfile` on a verified-cache hit
//! (`ds_store::region`, `ds_proxy::sendfile`), against a real Nix store and
//! the real proxy: the same bytes as `nix-store --dump` for whole NARs and
//! ranges, counted in `/metrics`, and a store file changed while its NAR is
//! being sent never completes the transfer.

mod common;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `distributed_store_proxy_nar_bytes_sendfile_total` from `/metrics`.
async fn sendfile_bytes(proxy: &Proxy) -> u64 {
    let m = get(proxy.addr, "/metrics", &[]).await;
    String::from_utf8_lossy(&m.body)
        .lines()
        .find_map(|l| l.strip_prefix("distributed_store_proxy_nar_bytes_sendfile_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the sendfile counter in /metrics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_hits_go_out_by_sendfile_and_a_change_mid_transfer_cuts_it() {
    require_nix!();
    let env = NixEnv::new();
    let big = env.build("big", 24);
    let nar = env.dump(&big);
    let size = nar.len();
    // Files changed within the last second are not remembered as verified
    // ("racy clean"): let the fresh build age past that.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let proxy = Proxy::start(&env.root(), "compression = \"none\"", None);
    let url = proxy.nar_url(&big).await;

    // The first GET hashes the NAR (nothing by sendfile), the next ones are
    // hits: the 24 MiB blob goes by sendfile, the bytes are the same.
    let first = get(proxy.addr, &url, &[]).await;
    assert_eq!((first.status, first.complete), (200, true));
    assert!(first.body == nar);
    assert_eq!(sendfile_bytes(&proxy).await, 0, "a miss is read and hashed");
    let hit = get(proxy.addr, &url, &[]).await;
    assert_eq!((hit.status, hit.complete), (200, true));
    assert!(
        hit.body == nar,
        "a hit sent by sendfile equals nix-store --dump"
    );
    let after_hit = sendfile_bytes(&proxy).await;
    assert!(
        after_hit >= 24 * 1024 * 1024 - 1,
        "the blob went by sendfile ({after_hit} bytes)"
    );
    for (a, b) in [(100, 5_000_000), (3_000_000, size - 1), (0, 99)] {
        let spec = format!("bytes={a}-{b}");
        let r = get(proxy.addr, &url, &[("Range", spec.as_str())]).await;
        assert_eq!((r.status, r.complete), (206, true), "{spec}");
        assert!(r.body == nar[a..=b], "{spec}: exact bytes");
    }
    assert!(sendfile_bytes(&proxy).await > after_hit, "ranges too");

    // A client that reads slowly; the blob changes under the transfer
    // (touched: new mtime and ctime, same bytes, as any write would). The
    // rest is never sent: the transfer does not complete.
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let req = format!("GET {url} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = vec![0u8; 64 * 1024];
    s.read_exact(&mut got).await.unwrap();
    let blob = env.physical(&big).join("blob");
    let mut perms = std::fs::metadata(&blob).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&blob, perms).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&blob)
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    let mut rest = Vec::new();
    let clean = tokio::time::timeout(std::time::Duration::from_secs(20), s.read_to_end(&mut rest))
        .await
        .expect("the connection ends")
        .is_ok();
    got.extend_from_slice(&rest);
    let body_at = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let body = got.len() - body_at;
    assert!(
        body < size,
        "a NAR whose file changed mid-transfer never completes ({body} of {size} bytes, clean close {clean})"
    );
    assert!(
        proxy.log_text().contains("changed while being served"),
        "the proxy logs why it cut the transfer"
    );
}
