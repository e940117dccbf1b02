//! Clients that stop reading must not hang the proxy (issue 8, item 1).
//!
//! 600 clients GET a large local NAR (half uncompressed, half zstd) and
//! stop reading, more than Tokio's 512 blocking threads. While they stall, a
//! fresh client's narinfo answers fast and a fresh full NAR download
//! completes; after `WRITE_STALL_TIMEOUT` the stalled connections are closed.

mod common;
use common::*;

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STALLED: usize = 600;

/// A client that sends its request, reads the first bytes, then stops
/// reading (a 4 KiB receive buffer, so the server's writes block soon).
async fn stalled_client(addr: std::net::SocketAddr, path: String) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut first = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read(&mut first)).await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_readers_do_not_hang_the_proxy() {
    require_nix!();
    let env = NixEnv::new();
    let big = env.build("big", 24);
    let leaf = env.build("leaf", 24);
    let size = env.dump(&big).len();
    let proxy = Proxy::start(&env.root(), "compression = \"zstd\"", None);
    let zst = proxy.nar_url(&big).await;
    let plain = zst.trim_end_matches(".zst").to_string();

    let started = Instant::now();
    let clients = futures::future::join_all((0..STALLED).map(|i| {
        let path = if i % 2 == 0 {
            plain.clone()
        } else {
            zst.clone()
        };
        stalled_client(proxy.addr, path)
    }))
    .await;
    eprintln!(
        "{STALLED} stalled readers connected in {:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A fresh client: narinfo answers fast.
    let narinfo = format!("/{}.narinfo", hash_part(&leaf));
    let mut took = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(10), get(proxy.addr, &narinfo, &[]))
            .await
            .expect("narinfo answered within 10 s while readers stall");
        assert_eq!(r.status, 200);
        took.push(t.elapsed());
    }
    took.sort();
    let p50 = took[took.len() / 2];
    eprintln!(
        "narinfo with {STALLED} stalled readers: p50 {p50:?}, max {:?}",
        took[took.len() - 1]
    );
    assert!(p50 < Duration::from_millis(100), "narinfo p50 {p50:?}");

    // A fresh full NAR download completes.
    let t = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(20), get(proxy.addr, &plain, &[]))
        .await
        .expect("a fresh NAR download finished within 20 s");
    assert_eq!((r.status, r.complete, r.body.len()), (200, true, size));
    eprintln!("fresh {size}-byte NAR in {:?}", t.elapsed());

    // After the deadline, every stalled connection is closed by the proxy:
    // draining one now reaches its end, before the whole NAR.
    let wait = ds_proxy::server::WRITE_STALL_TIMEOUT + Duration::from_secs(8);
    tokio::time::sleep(wait.saturating_sub(started.elapsed())).await;
    let drained = futures::future::join_all(clients.into_iter().map(|mut s| async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        let ended = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => total += n,
                }
            }
        })
        .await
        .is_ok();
        (ended, total)
    }))
    .await;
    let open = drained.iter().filter(|(ended, _)| !ended).count();
    assert_eq!(
        open, 0,
        "{open} stalled connections still open after the deadline"
    );
    assert!(
        drained.iter().all(|(_, n)| *n < size + 1024),
        "no stalled client got the whole NAR"
    );
    assert!(proxy.log_text().len() < 10_000_000);
}
