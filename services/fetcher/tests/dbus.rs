//! `org.distributedstore.Fetcher1` through a private dbus-daemon and the
//! real client proxy: the fd that comes back carries the NAR.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ds_dbus::{Fetcher1Proxy, FetcherError};
use ds_fetcher::FetcherObject;

/// A dbus-daemon on a socket in `dir`, killed on drop.
struct Bus {
    child: Child,
    address: String,
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn private_bus(dir: &std::path::Path) -> Bus {
    let socket = dir.join("bus");
    let conf = dir.join("bus.conf");
    std::fs::write(
        &conf,
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow own="*"/>
    <allow user="*"/>
  </policy>
</busconfig>
"#,
            socket.display()
        ),
    )
    .unwrap();
    let child = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", conf.display()))
        .arg("--nofork")
        .stdout(Stdio::null())
        .spawn()
        .expect("dbus-daemon");
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Bus {
        child,
        address: format!("unix:path={}", socket.display()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_over_dbus_returns_a_pipe_with_the_nar() {
    let tmp = tempfile::tempdir().unwrap();
    let bus = private_bus(tmp.path());
    let nar = Arc::new(TestNar::new("over-dbus", &contents(30, 200_000)));
    let n = nar.clone();
    let peer = Server::start(move |r| Reply::bytes(r, &n.bytes)).await;
    let cache = tmp.path().join("cache");
    let (fetcher, _) = fetcher(&cache, 1 << 30);
    let _server = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .serve_at(ds_dbus::FETCHER_PATH, FetcherObject::new(fetcher))
        .unwrap()
        .name(ds_dbus::FETCHER_NAME)
        .unwrap()
        .build()
        .await
        .unwrap();
    let client = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let proxy = Fetcher1Proxy::builder(&client)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();

    match proxy.held(&nar.hash32).await {
        Err(FetcherError::NotFound(_)) => {}
        other => panic!("{other:?}"),
    }
    match proxy.fetch(&nar.narinfo, vec![], 0).await {
        Err(FetcherError::NotFound(_)) => {}
        other => panic!("{other:?}"),
    }
    match proxy
        .fetch(&nar.narinfo, vec![], nar.bytes.len() as u64 + 1)
        .await
    {
        Err(FetcherError::InvalidArgs(_)) => {}
        other => panic!("{other:?}"),
    }

    let fd = proxy
        .fetch(&nar.narinfo, vec![format!("peer:{}", peer.url)], 0)
        .await
        .unwrap();
    let got = read_all(std::os::fd::OwnedFd::from(fd)).await;
    assert_eq!(got, nar.bytes);

    let fd = proxy.fetch(&nar.narinfo, vec![], 4096).await.unwrap();
    assert_eq!(
        read_all(std::os::fd::OwnedFd::from(fd)).await,
        &nar.bytes[4096..]
    );
    assert_eq!(proxy.held(&nar.hash32).await.unwrap(), nar.narinfo);
    assert_eq!(proxy.cache_entries().await.unwrap(), 1);
    assert_eq!(proxy.cache_bytes().await.unwrap(), nar.bytes.len() as u64);
    assert_eq!(proxy.cache_max_bytes().await.unwrap(), 1 << 30);
    assert_eq!(proxy.in_flight().await.unwrap(), 0);
    assert_eq!(
        proxy.bytes_fetched().await.unwrap().get("peer"),
        Some(&(nar.bytes.len() as u64))
    );
    assert_eq!(proxy.fetches_failed().await.unwrap(), 0);
    assert_eq!(proxy.verification_failures().await.unwrap(), 0);
    assert_eq!(peer.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_verified_over_dbus_gets_past_a_lying_peer() {
    let tmp = tempfile::tempdir().unwrap();
    let bus = private_bus(tmp.path());
    let nar = Arc::new(TestNar::new("verified-over-dbus", &contents(31, 200_000)));
    let mut bad = nar.bytes.clone();
    bad[1000] ^= 0xff;
    let liar = Server::start(move |r| Reply::bytes(r, &bad)).await;
    let n = nar.clone();
    let peer = Server::start(move |r| Reply::bytes(r, &n.bytes)).await;
    let cache = tmp.path().join("cache");
    let (fetcher, mapper) = fetcher(&cache, 1 << 30);
    let _server = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .serve_at(ds_dbus::FETCHER_PATH, FetcherObject::new(fetcher))
        .unwrap()
        .name(ds_dbus::FETCHER_NAME)
        .unwrap()
        .build()
        .await
        .unwrap();
    let client = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let proxy = Fetcher1Proxy::builder(&client)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();

    match proxy.fetch_verified("not a narinfo", vec![]).await {
        Err(FetcherError::InvalidArgs(_)) => {}
        other => panic!("{other:?}"),
    }
    let fd = proxy
        .fetch_verified(
            &nar.narinfo,
            vec![format!("peer:{}", liar.url), format!("peer:{}", peer.url)],
        )
        .await
        .unwrap();
    assert_eq!(read_all(std::os::fd::OwnedFd::from(fd)).await, nar.bytes);
    assert_eq!(proxy.verification_failures().await.unwrap(), 1);
    assert_eq!(proxy.fetches_failed().await.unwrap(), 0);
    assert_eq!(proxy.cache_entries().await.unwrap(), 1);
    assert_eq!(mapper.bad.lock().unwrap()[0].0, liar.url);
    // Held now: served verified from the cache without a locator.
    let fd = proxy.fetch_verified(&nar.narinfo, vec![]).await.unwrap();
    assert_eq!(read_all(std::os::fd::OwnedFd::from(fd)).await, nar.bytes);
    assert_eq!(peer.requests(), 1);
}
