//! Measure the store's own NAR and lookup speed, without HTTP: every valid
//! path's NAR streamed verified (first pass: hashed; later passes: verified
//! cache hits), unverified, and narinfo lookups (database vs cache).
//!
//! ```text
//! cargo run --release -p ds-store --example nar-throughput -- --store URI [--passes N]
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use ds_store::{LocalStore, StoreUri};
use futures::StreamExt;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let mut uri = String::new();
    let mut passes = 3;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--store" => uri = args.next().unwrap_or_default(),
            "--passes" => passes = args.next().and_then(|n| n.parse().ok()).unwrap_or(3),
            _ => {
                eprintln!("usage: nar-throughput --store URI [--passes N]");
                return ExitCode::from(2);
            }
        }
    }
    let store = match StoreUri::parse(&uri).and_then(|u| LocalStore::open(&u)) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("nar-throughput: {e}");
            return ExitCode::FAILURE;
        }
    };
    let paths = match store.scan_since(0) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("nar-throughput: {e}");
            return ExitCode::FAILURE;
        }
    };
    let total: u64 = paths.iter().map(|p| p.nar_size).sum();
    println!("{} paths, {} NAR bytes", paths.len(), total);
    for pass in 0..passes + 1 {
        let verified = pass < passes;
        let t = Instant::now();
        let mut bytes = 0u64;
        for p in &paths {
            let s = if verified {
                store
                    .clone()
                    .nar_stream_verified(p.path.clone(), p.nar_hash.clone(), p.nar_size)
                    .boxed()
            } else {
                store.clone().nar_stream(p.path.clone()).boxed()
            };
            let mut s = s;
            while let Some(c) = s.next().await {
                match c {
                    Ok(c) => bytes += c.len() as u64,
                    Err(e) => {
                        eprintln!("nar-throughput: {}: {e}", p.path);
                        return ExitCode::FAILURE;
                    }
                }
            }
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{}: {:.0} MB/s ({} remembered as verified)",
            if verified {
                format!("verified pass {}", pass + 1)
            } else {
                "unverified".to_string()
            },
            bytes as f64 / secs / 1e6,
            store.verified_len()
        );
    }
    let rounds = 200;
    let t = Instant::now();
    for _ in 0..rounds {
        for p in &paths {
            let _ = store.path_info(p.path.hash());
        }
    }
    let db = t.elapsed().as_secs_f64() / (rounds * paths.len()) as f64;
    let t = Instant::now();
    for _ in 0..rounds {
        for p in &paths {
            let _ = store.lookup(p.path.hash());
        }
    }
    let cached = t.elapsed().as_secs_f64() / (rounds * paths.len()) as f64;
    println!(
        "lookup: path_info (database) {:.1} µs, lookup (cache) {:.1} µs",
        db * 1e6,
        cached * 1e6
    );
    ExitCode::SUCCESS
}
