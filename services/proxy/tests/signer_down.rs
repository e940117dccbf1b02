//! A narinfo that needs this node's signature is never answered without
//! it (issue 8, item 4): with the real signer on a private dbus-daemon, a
//! path built here is signed; with the signer stopped, such a narinfo is a
//! 503 with Retry-After (not remembered by Nix), while a content-addressed
//! path, which needs no signature, is still answered.
//!
//! Needs `target/release/distributed-store-signer` (`cargo build --release
//! -p ds-signer`) and `dbus-daemon`.

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signer_down_means_503_not_an_unsigned_narinfo() {
    require_nix!();
    let env = NixEnv::new();
    let leaf = env.build("leaf", 1);
    let big = env.build("big", 1);
    let ca = env.add_file("ca.txt", b"content-addressed\n");
    let mut node = SignedProxy::start(&env, "");
    let key_name = node
        .public_key
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let proxy = &node.proxy;

    // Signer up: a path built here carries our signature (the signer may
    // still be starting: signed_narinfo retries).
    let narinfo = |p: &str| format!("/{}.narinfo", hash_part(p));
    let signed = node.signed_narinfo(&leaf).await;
    assert!(
        signed.contains(&format!("Sig: {key_name}:")),
        "signed narinfo: {signed}"
    );

    // Signer gone: a built path not signed before is 503 + Retry-After,
    // never a narinfo without our signature.
    let _ = node.signer.0.kill();
    let _ = node.signer.0.wait();
    let r = get(proxy.addr, &narinfo(&big), &[]).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("retry-after").is_some());
    assert_eq!(String::from_utf8_lossy(&r.body), "Service Unavailable\n");
    // ... again while backing off from the signer.
    assert_eq!(get(proxy.addr, &narinfo(&big), &[]).await.status, 503);
    // The signature already had is still served; a CA path needs none.
    let r = get(proxy.addr, &narinfo(&leaf), &[]).await;
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains(&format!("Sig: {key_name}:")));
    let r = get(proxy.addr, &narinfo(&ca), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(proxy.log_text().contains("answering 503"));
}
