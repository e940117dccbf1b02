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

use std::process::{Command, Stdio};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signer_down_means_503_not_an_unsigned_narinfo() {
    require_nix!();
    let signer_bin = sibling_bin("distributed-store-signer", "ds-signer");
    let env = NixEnv::new();
    let leaf = env.build("leaf", 1);
    let big = env.build("big", 1);
    let ca = env.add_file("ca.txt", b"content-addressed\n");
    let (sec, public) = (env.dir().join("key.sec"), env.dir().join("key.pub"));
    env.run(
        "nix-store",
        &[
            "--generate-binary-cache-key",
            "px-test-1",
            sec.to_str().unwrap(),
            public.to_str().unwrap(),
        ],
    );

    let (_daemon, bus) = private_bus();

    let config = env.dir().join("signer.toml");
    std::fs::write(
        &config,
        format!(
            "store = \"local?root={}\"\nprivateKeyFile = \"{}\"\ndiscovery = false\n",
            env.root().display(),
            sec.display()
        ),
    )
    .unwrap();
    let signer = Command::new(&signer_bin)
        .arg("--config")
        .arg(&config)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus)
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the signer");
    let mut signer = Kill(signer);
    let proxy = Proxy::start(
        &env.root(),
        &format!("privateKeyFile = \"{}\"", sec.display()),
        Some(&bus),
    );

    // Signer up: a path built here carries our signature (the signer may
    // still be starting: retry a few times).
    let narinfo = |p: &str| format!("/{}.narinfo", hash_part(p));
    let mut signed = String::new();
    for _ in 0..50 {
        let r = get(proxy.addr, &narinfo(&leaf), &[]).await;
        if r.status == 200 {
            signed = String::from_utf8(r.body).unwrap();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        signed.contains("Sig: px-test-1:"),
        "signed narinfo: {signed}"
    );

    // Signer gone: a built path not signed before is 503 + Retry-After,
    // never a narinfo without our signature.
    let _ = signer.0.kill();
    let _ = signer.0.wait();
    let r = get(proxy.addr, &narinfo(&big), &[]).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("retry-after").is_some());
    assert_eq!(String::from_utf8_lossy(&r.body), "Service Unavailable\n");
    // ... again while backing off from the signer.
    assert_eq!(get(proxy.addr, &narinfo(&big), &[]).await.status, 503);
    // The signature already had is still served; a CA path needs none.
    let r = get(proxy.addr, &narinfo(&leaf), &[]).await;
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("Sig: px-test-1:"));
    let r = get(proxy.addr, &narinfo(&ca), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(proxy.log_text().contains("answering 503"));
}
