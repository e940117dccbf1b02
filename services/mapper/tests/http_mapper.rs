//! The HTTP mapper over real HTTP between two real mappers: node A is the
//! real `distributed-store-mapper` and `distributed-store-proxy` binaries on
//! a private dbus-daemon, with a folder mapper and (to prove there is no
//! loop) an HTTP mapper pointing at itself; node B is a `RemoteMapper`
//! asking A's `GET /_ds/v1/lookup/<hash>`. Needs `cargo build --release -p
//! ds-proxy` first (the proxy binary is another crate's).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{hash_part, key};
use ds_core::{Hash, NarInfo, SecretKey, StorePathHash};
use ds_mapper::folder::{self, Entry};
use ds_mapper::remote::RemoteMapper;
use ds_mapper::{Mapper, Scope};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn entry(i: u32, k: &SecretKey) -> Entry {
    let mut b = [7u8; 32];
    b[..4].copy_from_slice(&i.to_le_bytes());
    let fh = Hash::from_digest(ds_core::HashAlgo::Sha256, &b).unwrap();
    let mut n = NarInfo::parse(&format!(
        "StorePath: /nix/store/{}-x{i}\nURL: nar/a.nar.zst\nCompression: zstd\nFileHash: {}\nFileSize: 10\nNarHash: {}\nNarSize: 20\nReferences: \n",
        hash_part(i),
        fh.to_nix32_string(),
        common::nar_hash(i)
    ))
    .unwrap();
    n.sign(k);
    let facts = ds_core::FileFacts {
        compression: ds_core::Compression::Zstd,
        file_hash: Some(fh),
        file_size: Some(10),
    };
    Entry {
        narinfo: n,
        locators: vec![ds_core::Locator::other("ipfs", &format!("bafy{i}"), &facts)],
    }
}

fn proxy_bin() -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/release/distributed-store-proxy");
    assert!(
        p.exists(),
        "{} missing: run `cargo build --release -p ds-proxy` first",
        p.display()
    );
    p
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_over_http() {
    let trusted = key("trusted-1", 1);
    let only_a = key("only-a-1", 2);
    let stranger = key("stranger-1", 3);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let store = d.join("store");
    common::synthetic_store(&store, 0);
    let idx = d.join("folder");
    folder::write_entry(&idx, &entry(1, &trusted)).unwrap();
    folder::write_entry(&idx, &entry(2, &stranger)).unwrap();
    folder::write_entry(&idx, &entry(3, &only_a)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let a_url = format!("http://127.0.0.1:{port}");
    let cfg = d.join("a.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"listen = "127.0.0.1:{port}"
store = "local?root={store}"
stateDirectory = "{state}"
cacheDirectory = "{cache}"
upstreams = []
discovery = false
trustedPublicKeys = ["{k1}", "{k2}"]
[[mappers]]
type = "folder"
path = "{idx}"
[[mappers]]
type = "http"
url = "{a_url}"
deadlineMs = 2000
"#,
            store = store.display(),
            state = d.join("state").display(),
            cache = d.join("cache").display(),
            k1 = trusted.public(),
            k2 = only_a.public(),
            idx = idx.display(),
        ),
    )
    .unwrap();

    let mut daemon = Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--print-address=1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("dbus-daemon (Debian package dbus) is needed");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(daemon.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _daemon = Kill(daemon);
    let bus = line.trim().to_string();
    let spawn = |bin: &std::path::Path| {
        Kill(
            Command::new(bin)
                .arg("--config")
                .arg(&cfg)
                .env("DBUS_SYSTEM_BUS_ADDRESS", &bus)
                .env_remove("JOURNAL_STREAM")
                .env_remove("NOTIFY_SOCKET")
                .env_remove("LISTEN_FDS")
                .spawn()
                .unwrap(),
        )
    };
    let _mapper = spawn(std::path::Path::new(env!(
        "CARGO_BIN_EXE_distributed-store-mapper"
    )));
    let _proxy = spawn(&proxy_bin());
    let mut up = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "A's proxy did not start");
    // Wait until A's mapper is on the bus (a lookup of entry 1 answers).
    let h1 = hash_part(1);
    let mut ok = false;
    for _ in 0..100 {
        if get(&format!("{a_url}/_ds/v1/lookup/{h1}")).await.0 == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "A never answered the lookup of a folder entry");

    // The route itself.
    let (s, body) = get(&format!("{a_url}/_ds/v1/lookup/{h1}")).await;
    assert_eq!(s, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(json["narinfo"].as_str().unwrap().contains(&h1));
    assert!(json["locators"][0]
        .as_str()
        .unwrap()
        .starts_with("ipfs:bafy1#"));
    assert_eq!(get(&format!("{a_url}/_ds/v1/lookup/nothex")).await.0, 400);
    // Untrusted at A: not answered.
    assert_eq!(
        get(&format!("{a_url}/_ds/v1/lookup/{}", hash_part(2)))
            .await
            .0,
        404
    );

    // B: a real RemoteMapper trusting only `trusted`.
    let b = RemoteMapper::new(
        ds_mapper::http::client(),
        &a_url,
        vec![trusted.public()],
        Duration::from_secs(2),
    );
    let sph = |i| StorePathHash::parse(&hash_part(i)).unwrap();
    let m = b.lookup(&sph(1), Scope::Fleet).await.unwrap().unwrap();
    assert_eq!(m.locators[0].scheme(), "ipfs");
    assert!(b.lookup(&sph(2), Scope::Fleet).await.unwrap().is_none());
    // A trusts only-a, B does not: B refuses A's answer.
    assert!(b.lookup(&sph(3), Scope::Fleet).await.is_err());
    // Unknown: 404 fast although A's own stack has an HTTP mapper pointing
    // at A (the lookup route never fans out: no loop).
    let t = Instant::now();
    assert!(b.lookup(&sph(99), Scope::Fleet).await.unwrap().is_none());
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // A's narinfo route for its clients goes through the full stack (the
    // folder answers), and an unknown path is a 404 within the deadlines.
    let (s, body) = get(&format!("{a_url}/{h1}.narinfo")).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("Sig: trusted-1:"));
    let t = Instant::now();
    assert_eq!(
        get(&format!("{a_url}/{}.narinfo", hash_part(98))).await.0,
        404
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // A remote that is down: an error within the deadline, not a hang.
    let dead = RemoteMapper::new(
        ds_mapper::http::client(),
        "http://127.0.0.1:9",
        vec![trusted.public()],
        Duration::from_millis(300),
    );
    assert!(dead.lookup(&sph(1), Scope::Fleet).await.is_err());
}

/// Every way a remote lookup answer can be wrong, from a real HTTP server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_answers_that_are_refused() {
    let trusted = key("trusted-1", 1);
    let good = common::narinfo(&hash_part(1), "one", 1, &trusted);
    let other_path = common::narinfo(&hash_part(2), "two", 2, &trusted);
    let t2 = trusted.clone();
    let url = common::serve(move |p: &str| {
        let h = p.rsplit('/').next().unwrap_or("");
        let i = (1..20).find(|&i| hash_part(i) == h)?;
        let json = |n: &str, locs: &str| {
            format!(
                "{{\"narinfo\":{},\"locators\":{locs}}}",
                serde_json::to_string(n).unwrap()
            )
        };
        Some(match i {
            1 => (200, json(&good, "[\"ipfs:x\",\"bad locator\"]")),
            3 => (500, "oops".into()),
            4 => (200, "not json".into()),
            5 => (200, json(&other_path, "[]")),
            6 => (200, json("StorePath: nonsense", "[]")),
            7 => (200, format!("{{\"narinfo\":\"{}\"}}", "x".repeat(3 << 20))),
            8 => (
                200,
                json(&common::narinfo(&hash_part(8), "h", 8, &t2), "[]")
                    .replace("\"locators\":[]", "\"held\":true,\"locators\":[]"),
            ),
            9 => return None, // never answers
            _ => (404, String::new()),
        })
    })
    .await;
    let m = RemoteMapper::new(
        ds_mapper::http::client(),
        &url,
        vec![trusted.public()],
        Duration::from_millis(400),
    );
    let sph = |i| StorePathHash::parse(&hash_part(i)).unwrap();
    let got = m.lookup(&sph(1), Scope::Fleet).await.unwrap().unwrap();
    assert_eq!(got.locators.len(), 1, "the bad locator is dropped");
    assert!(
        m.lookup(&sph(10), Scope::Fleet).await.unwrap().is_none(),
        "404 is a miss"
    );
    for i in [3, 4, 5, 6, 7] {
        assert!(
            m.lookup(&sph(i), Scope::Fleet).await.is_err(),
            "case {i} accepted"
        );
    }
    // held: the remote itself is the first locator.
    let got = m.lookup(&sph(8), Scope::Fleet).await.unwrap().unwrap();
    assert_eq!(got.locators, vec![ds_core::Locator::Peer(url.clone())]);
    let t = Instant::now();
    assert!(m.lookup(&sph(9), Scope::Fleet).await.is_err());
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
}
