//! Backends registered from the config (`[backends.*]`): what is
//! configured is used, an unknown scheme is skipped, a setup error names
//! its key.

mod common;

use std::sync::Arc;

use common::*;
use ds_core::{Compression, FileFacts, Hash, Locator};
use ds_fetcher::Fetcher;
use ds_runtime::plugins::{BackendsSpec, CommandSpec, MirrorsSpec, S3Spec};

const BIG: u64 = 1 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_backends_fetch_and_unknown_schemes_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let nar = TestNar::new("registry", &contents(41, 200_000));
    let file = compress("zstd", &nar.bytes).await;
    let facts = FileFacts {
        compression: Compression::Zstd,
        file_hash: Some(Hash::sha256(&file)),
        file_size: Some(file.len() as u64),
    };
    let path = dir.path().join("x.nar.zst");
    std::fs::write(&path, &file).unwrap();
    let served = file.clone();
    let mirror = Server::start(move |r| {
        if r.path == "/nar/x.nar.zst" {
            Reply::bytes(r, &served)
        } else {
            Reply::status(404)
        }
    })
    .await;

    let backends = BackendsSpec {
        mirrors: Some(MirrorsSpec {
            urls: vec![mirror.url.clone()],
            lookup: None,
        }),
        command: Some(CommandSpec {
            // The value of an exec: locator is a file name here.
            command: vec!["/bin/cat".into()],
            deadline_ms: Some(1000),
        }),
        ..BackendsSpec::default()
    };
    let unknown = Locator::other("nosuchnet", "x", &facts).to_string();

    // exec: through the configured command (the unknown locator first).
    let f = configured(&dir.path().join("c1"), BIG, &backends).unwrap();
    let exec = Locator::other("exec", &path.display().to_string(), &facts).to_string();
    let fd = f
        .fetch(&nar.narinfo, &[unknown.clone(), exec], 0)
        .await
        .unwrap();
    assert!(read_all(fd).await == nar.bytes);

    // mirror: through the configured mirror.
    let f = configured(&dir.path().join("c2"), BIG, &backends).unwrap();
    let m = Locator::other("mirror", "nar/x.nar.zst", &facts).to_string();
    let fd = f
        .fetch(&nar.narinfo, &[unknown.clone(), m.clone()], 0)
        .await
        .unwrap();
    assert!(read_all(fd).await == nar.bytes);
    assert_eq!(mirror.requests(), 1);

    // Not configured: the built-in fetcher skips mirror: and exec: alike.
    let plain = Fetcher::new(
        config(&dir.path().join("c3"), BIG),
        Arc::new(RecordingMapper::default()),
        ds_runtime::service::Activity::new(),
    )
    .unwrap();
    assert!(plain.fetch(&nar.narinfo, &[unknown, m], 0).await.is_err());
    assert_eq!(mirror.requests(), 1);
}

#[tokio::test]
async fn an_unreadable_s3_credentials_file_is_an_error_naming_the_key() {
    let backends = BackendsSpec {
        s3: Some(S3Spec {
            bucket: "b".into(),
            endpoint: Some("http://127.0.0.1:9".into()),
            region: None,
            prefix: String::new(),
            credentials_file: Some("/nonexistent/ds-test-credentials".into()),
            lookup: None,
            publish: false,
        }),
        ..BackendsSpec::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let e = match configured(dir.path(), BIG, &backends) {
        Ok(_) => panic!("accepted a missing credentials file"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("backends.s3.credentialsFile"), "{e}");
}
