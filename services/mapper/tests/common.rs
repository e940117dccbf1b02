//! Shared test helpers: tiny HTTP servers on 127.0.0.1, signed narinfos,
//! synthetic Nix databases.
#![allow(dead_code)]

use std::sync::Arc;

use ds_core::{base32, NarInfo, SecretKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Handler: path-and-query → Some((status, body)), or None to never answer.
pub type Handler = Arc<dyn Fn(&str) -> Option<(u16, String)> + Send + Sync>;

/// Serve `handler` on 127.0.0.1 (one request per connection); returns the base URL.
pub async fn serve<F>(handler: F) -> String
where
    F: Fn(&str) -> Option<(u16, String)> + Send + Sync + 'static,
{
    let handler: Handler = Arc::new(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&buf).to_string();
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                match handler(&path) {
                    Some((status, body)) => {
                        let resp = format!(
                            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = sock.write_all(resp.as_bytes()).await;
                    }
                    // Black hole: hold the connection open, never answer.
                    None => tokio::time::sleep(std::time::Duration::from_secs(3600)).await,
                }
            });
        }
    });
    format!("http://{addr}")
}

/// A valid hash part derived from `i`.
pub fn hash_part(i: u32) -> String {
    let mut b = [0u8; 20];
    b[..4].copy_from_slice(&i.to_le_bytes());
    b[19] = 0x5a;
    base32::encode(&b)
}

/// A NarHash derived from `i`.
pub fn nar_hash(i: u32) -> String {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&i.to_le_bytes());
    format!("sha256:{}", base32::encode(&b))
}

pub fn key(name: &str, seed: u8) -> SecretKey {
    SecretKey::from_seed(name, [seed; 32])
}

/// A narinfo for `/nix/store/<hash>-<name>` with NarHash from `nar`, signed by `key`.
pub fn narinfo(hash: &str, name: &str, nar: u32, key: &SecretKey) -> String {
    let text = format!(
        "StorePath: /nix/store/{hash}-{name}\nURL: nar/{nar}.nar.xz\nCompression: xz\nFileHash: {}\nFileSize: 100\nNarHash: {}\nNarSize: 200\nReferences: \n",
        nar_hash(nar + 1000),
        nar_hash(nar)
    );
    let mut info = NarInfo::parse(&text).unwrap();
    info.sign(key);
    info.render()
}

/// An announcement body.
pub fn announce_json(epoch: &str, held: &[&str], inflight: &[&str]) -> String {
    serde_json::to_string(&ds_mapper::AnnounceJson {
        epoch: epoch.into(),
        version: 1,
        full: true,
        added: held.iter().map(|s| s.to_string()).collect(),
        removed: vec![],
        inflight: inflight.iter().map(|s| s.to_string()).collect(),
    })
    .unwrap()
}

/// A chroot-style store dir with a Nix-schema database holding `n` paths.
pub fn synthetic_store(dir: &std::path::Path, n: u32) -> ds_store::StoreUri {
    let uri = ds_store::StoreUri::Chroot(dir.to_path_buf());
    std::fs::create_dir_all(uri.db_path().parent().unwrap()).unwrap();
    let mut conn = rusqlite::Connection::open(uri.db_path()).unwrap();
    conn.execute_batch(ds_store::NIX_SCHEMA).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut st = tx
            .prepare("INSERT INTO ValidPaths (path, hash, registrationTime, narSize) VALUES (?1, ?2, 0, 123)")
            .unwrap();
        for i in 0..n {
            st.execute(rusqlite::params![
                format!("/nix/store/{}-p{i}", hash_part(i)),
                nar_hash(i)
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
    uri
}
