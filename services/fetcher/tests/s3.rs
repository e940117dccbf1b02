//! The S3 backend and publisher against a real S3-compatible server
//! (`s3s-fs`, started here on 127.0.0.1): publish, fetch (whole and from an
//! offset), wrong bytes in the bucket, a missing object.
//!
//! `s3s-fs` is found at `$DS_S3S_FS`, else
//! `/var/cache/distributed-store-test/bin/s3s-fs`, else on `PATH`; install it
//! with `cargo install s3s-fs@0.14.1 --locked --features binary --root
//! /var/cache/distributed-store-test`.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ds_core::{Compression, FileFacts, Hash, NarInfo};
use ds_fetcher::s3::{S3Backend, S3Publisher};
use ds_fetcher::{FetchError, Fetcher, Publisher, Registry};
use ds_runtime::plugins::S3Spec;
use object_store::ObjectStore;

const BIG: u64 = 1 << 30;
const BUCKET: &str = "nix-cache";
const ACCESS: &str = "ds-test-access";
const SECRET: &str = "ds-test-secret-key";

fn s3s_fs() -> PathBuf {
    if let Some(p) = std::env::var_os("DS_S3S_FS") {
        return p.into();
    }
    let cached = PathBuf::from("/var/cache/distributed-store-test/bin/s3s-fs");
    if cached.exists() {
        return cached;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.exists());
    on_path.unwrap_or_else(|| {
        panic!(
            "the S3-compatible test server s3s-fs is missing: install it with \
             `cargo install s3s-fs@0.14.1 --locked --features binary --root \
             /var/cache/distributed-store-test` or set DS_S3S_FS"
        )
    })
}

/// A running s3s-fs, killed (by its PID) on drop.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
    root: tempfile::TempDir,
    creds: PathBuf,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn s3_server() -> S3Server {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join(BUCKET)).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = std::process::Command::new(s3s_fs())
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS, "--secret-key", SECRET])
        .arg(root.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start s3s-fs");
    let creds = root.path().join("credentials");
    std::fs::write(
        &creds,
        format!("AWS_ACCESS_KEY_ID={ACCESS}\nAWS_SECRET_ACCESS_KEY={SECRET}\n"),
    )
    .unwrap();
    let server = S3Server {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
        root,
        creds,
    };
    let t = std::time::Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "s3s-fs did not listen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server
}

impl S3Server {
    fn spec(&self, prefix: &str) -> S3Spec {
        S3Spec {
            bucket: BUCKET.into(),
            endpoint: Some(self.endpoint.clone()),
            region: None,
            prefix: prefix.into(),
            credentials_file: Some(self.creds.clone()),
            lookup: None,
            publish: true,
        }
    }

    /// A raw client on the same bucket (to overwrite objects).
    fn raw(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_access_key_id(ACCESS)
            .with_secret_access_key(SECRET)
            .build()
            .unwrap()
    }
}

fn key_pair() -> ds_core::SecretKey {
    ds_core::SecretKey::from_seed("s3-test-1", [5; 32])
}

fn fetcher(dir: &std::path::Path, spec: &S3Spec) -> Fetcher {
    let mut registry = Registry::new();
    registry.register(Arc::new(
        S3Backend::new(spec, Duration::from_secs(2)).unwrap(),
    ));
    Fetcher::with_registry(
        config(dir, BIG),
        registry,
        Arc::new(RecordingMapper::default()),
        ds_runtime::service::Activity::new(),
    )
    .unwrap()
}

/// Write the NAR compressed as `kind` to a file; its facts.
async fn nar_file(dir: &std::path::Path, nar: &TestNar, kind: &str) -> (PathBuf, FileFacts) {
    let file = compress(kind, &nar.bytes).await;
    let path = dir.join(format!("nar.{kind}"));
    std::fs::write(&path, &file).unwrap();
    let facts = FileFacts {
        compression: Compression::from_name(kind),
        file_hash: Some(Hash::sha256(&file)),
        file_size: Some(file.len() as u64),
    };
    (path, facts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_then_fetch_in_binary_cache_layout() {
    let server = s3_server().await;
    let spec = server.spec("cache");
    let work = tempfile::tempdir().unwrap();
    let nar = TestNar::new("s3-published", &contents(31, 500_000));
    let (file, facts) = nar_file(work.path(), &nar, "xz").await;
    let mut info = NarInfo::parse(&nar.narinfo).unwrap();
    info.sign(&key_pair());

    let publisher = S3Publisher::new(&spec).unwrap();
    assert_eq!(publisher.scheme(), "s3");
    let locator = publisher
        .publish(file.clone(), facts.clone(), &info)
        .await
        .unwrap();
    let (key, got_facts) = locator.other_parts().unwrap().unwrap();
    let fh = ds_core::base32::encode(&facts.file_hash.as_ref().unwrap().digest);
    assert_eq!(key, format!("nar/{fh}.nar.xz"));
    assert_eq!(got_facts, facts);
    // Publishing again is cheap and gives the same locator.
    let again = publisher.publish(file, facts.clone(), &info).await.unwrap();
    assert_eq!(again, locator);

    // The bucket is a binary cache: <hash>.narinfo names the file.
    let raw = server.raw();
    let narinfo_path = object_store::path::Path::from(format!("cache/{}.narinfo", nar.hash32));
    let text = raw.get(&narinfo_path).await.unwrap().bytes().await.unwrap();
    let published = NarInfo::parse(std::str::from_utf8(&text).unwrap()).unwrap();
    assert_eq!(published.url, key);
    assert_eq!(published.compression, Compression::Xz);
    assert_eq!(published.file_hash, facts.file_hash);
    assert_eq!(published.nar_hash, info.nar_hash);
    assert!(server.root.path().join(BUCKET).join("cache/nar").is_dir());

    // The S3 mapper finds it and answers the same locator.
    let mapper =
        ds_mapper::s3::S3Mapper::new(&spec, vec![key_pair().public()], Duration::from_secs(2))
            .unwrap();
    let hash = ds_core::StorePathHash::parse(&nar.hash32).unwrap();
    let m = ds_mapper::Mapper::lookup(&mapper, &hash, ds_mapper::Scope::Fleet)
        .await
        .unwrap()
        .expect("the bucket has the narinfo");
    assert_eq!(m.locators, vec![locator.clone()]);
    assert_eq!(m.narinfo.nar_hash, info.nar_hash);
    // Untrusted (another key): an error, not an answer.
    let other = ds_core::SecretKey::from_seed("other-1", [9; 32]).public();
    let strict = ds_mapper::s3::S3Mapper::new(&spec, vec![other], Duration::from_secs(2)).unwrap();
    assert!(
        ds_mapper::Mapper::lookup(&strict, &hash, ds_mapper::Scope::Fleet)
            .await
            .is_err()
    );
    // Unknown path: a miss.
    let absent = ds_core::StorePathHash::parse(&TestNar::new("absent", b"x").hash32).unwrap();
    assert!(
        ds_mapper::Mapper::lookup(&mapper, &absent, ds_mapper::Scope::Fleet)
            .await
            .unwrap()
            .is_none()
    );

    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(dir.path(), &spec);
    let fd = f
        .fetch_verified(&nar.narinfo, &[m.locators[0].to_string()])
        .await
        .unwrap();
    assert!(read_all(fd).await == nar.bytes);
    assert_eq!(f.status().cache_entries, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncompressed_object_is_read_from_an_offset_with_a_ranged_get() {
    let server = s3_server().await;
    let spec = server.spec("");
    let work = tempfile::tempdir().unwrap();
    let nar = TestNar::new("s3-ranged", &contents(32, 300_000));
    let (file, facts) = nar_file(work.path(), &nar, "none").await;
    let info = NarInfo::parse(&nar.narinfo).unwrap();
    let locator = S3Publisher::new(&spec)
        .unwrap()
        .publish(file, facts, &info)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(dir.path(), &spec);
    let offset = 123_457u64;
    let fd = f
        .fetch(&nar.narinfo, &[locator.to_string()], offset)
        .await
        .unwrap();
    assert!(read_all(fd).await == nar.bytes[offset as usize..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_in_the_bucket_are_bad_data_and_a_missing_object_fails() {
    let server = s3_server().await;
    let spec = server.spec("p");
    let work = tempfile::tempdir().unwrap();
    let nar = TestNar::new("s3-tampered", &contents(33, 300_000));
    let (file, facts) = nar_file(work.path(), &nar, "zstd").await;
    let info = NarInfo::parse(&nar.narinfo).unwrap();
    let locator = S3Publisher::new(&spec)
        .unwrap()
        .publish(file.clone(), facts, &info)
        .await
        .unwrap();
    let (key, _) = locator.other_parts().unwrap().unwrap();

    // Same length, two bytes flipped, written over the object.
    let mut bad = std::fs::read(&file).unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    bad[mid + 1] ^= 0x55;
    server
        .raw()
        .put(
            &object_store::path::Path::from(format!("p/{key}")),
            bad.into(),
        )
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(dir.path(), &spec);
    let failed = |r: Result<std::os::fd::OwnedFd, FetchError>| async move {
        match r {
            Ok(fd) => read_all(fd).await.is_empty(),
            Err(FetchError::Failed(_)) => true,
            Err(e) => panic!("{e:?}"),
        }
    };
    assert!(failed(f.fetch_verified(&nar.narinfo, &[locator.to_string()]).await).await);
    assert_eq!(f.status().cache_entries, 0);
    assert!(f.status().verification_failures >= 1, "counted as bad data");

    // The same check directly on the backend: the error is BadData.
    let backend = S3Backend::new(&spec, Duration::from_secs(2)).unwrap();
    let opened = ds_fetcher::Backend::open(&backend, &locator, &info, 0)
        .await
        .unwrap();
    let mut stream = opened.stream;
    let mut last = None;
    while let Some(item) = futures::StreamExt::next(&mut stream).await {
        if let Err(e) = item {
            last = Some(e);
            break;
        }
    }
    assert!(
        matches!(last, Some(ds_fetcher::BackendError::BadData(_))),
        "{last:?}"
    );

    // A key that is not there.
    let missing = ds_core::Locator::other("s3", "nar/nothing.nar", &FileFacts::default());
    assert!(failed(f.fetch_verified(&nar.narinfo, &[missing.to_string()]).await).await);
    assert!(matches!(
        ds_fetcher::Backend::open(&backend, &missing, &info, 0).await,
        Err(ds_fetcher::BackendError::Refused(_))
    ));
}

/// Throughput of publish + fetch of a 100 MiB NAR (run with `--ignored
/// --nocapture`; prints MB/s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_100_mib() {
    let server = s3_server().await;
    let spec = server.spec("");
    let work = tempfile::tempdir().unwrap();
    for kind in ["none", "zstd"] {
        let nar = TestNar::new(&format!("s3-big-{kind}"), &contents(50, 100 << 20));
        let (file, facts) = nar_file(work.path(), &nar, kind).await;
        let info = NarInfo::parse(&nar.narinfo).unwrap();
        let t = std::time::Instant::now();
        let locator = S3Publisher::new(&spec)
            .unwrap()
            .publish(file, facts, &info)
            .await
            .unwrap();
        let up = t.elapsed();
        let dir = tempfile::tempdir().unwrap();
        let f = fetcher(dir.path(), &spec);
        let t = std::time::Instant::now();
        let fd = f
            .fetch_verified(&nar.narinfo, &[locator.to_string()])
            .await
            .unwrap();
        assert!(read_all(fd).await.len() == nar.bytes.len());
        let down = t.elapsed();
        let mb = nar.bytes.len() as f64 / 1e6;
        println!(
            "s3 {kind}: publish {:.0} MB/s, fetch {:.0} MB/s ({mb:.0} MB NAR)",
            mb / up.as_secs_f64(),
            mb / down.as_secs_f64()
        );
    }
}
