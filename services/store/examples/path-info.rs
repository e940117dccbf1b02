//! Print what ds-store reads about store paths, as JSON close to
//! `nix path-info --json`; with `--nar`, also hash the NAR we generate.
//!
//! ```text
//! cargo run -p ds-store --example path-info -- [--store URI] [--nar] PATH|BASENAME|HASH...
//! ```
//!
//! Handy to check access as the service's user, e.g.
//! `setpriv --reuid=65534 --regid=65534 --clear-groups target/debug/examples/path-info --nar /nix/store/...`.

use std::io::Read;
use std::process::ExitCode;

use ds_core::nar::NarHasher;
use ds_core::{StorePath, StorePathHash};
use ds_store::{LocalStore, PathInfo, StoreUri};

fn main() -> ExitCode {
    let mut uri = String::new();
    let mut nar = false;
    let mut queries = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--store" => uri = args.next().unwrap_or_default(),
            "--nar" => nar = true,
            "-h" | "--help" => {
                println!("usage: path-info [--store URI] [--nar] PATH|BASENAME|HASH...");
                return ExitCode::SUCCESS;
            }
            _ => queries.push(arg),
        }
    }
    match run(&uri, nar, &queries) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(uri: &str, nar: bool, queries: &[String]) -> Result<String, Box<dyn std::error::Error>> {
    let store = LocalStore::open(&StoreUri::parse(uri)?)?;
    let mut out = Vec::new();
    for q in queries {
        let base = q.strip_prefix("/nix/store/").unwrap_or(q);
        let hash = StorePathHash::parse(base.get(..32).unwrap_or(base))?;
        out.push(match store.path_info(&hash)? {
            None => format!("{{\"path\":{},\"valid\":false}}", json_str(q)),
            Some(info) => {
                let nar = if nar {
                    Some(hash_nar(&store, &info.path)?)
                } else {
                    None
                };
                info_json(&info, nar)
            }
        });
    }
    Ok(format!("[{}]", out.join(",")))
}

fn hash_nar(store: &LocalStore, path: &StorePath) -> Result<String, Box<dyn std::error::Error>> {
    let mut reader = store.nar_reader(path)?;
    let mut hasher = NarHasher::new();
    let mut buf = vec![0; ds_store::NAR_CHUNK_SIZE];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let (hash, size) = hasher.finish();
    Ok(format!(
        "{{\"narHash\":{},\"narSize\":{size}}}",
        json_str(&hash.to_nix32_string())
    ))
}

fn info_json(info: &PathInfo, nar: Option<String>) -> String {
    let list = |items: Vec<String>| {
        let items: Vec<_> = items.iter().map(|s| json_str(s)).collect();
        format!("[{}]", items.join(","))
    };
    let opt = |s: Option<String>| s.map_or("null".to_string(), |s| json_str(&s));
    format!(
        "{{\"path\":{},\"valid\":true,\"narHash\":{},\"narSize\":{},\"references\":{},\"deriver\":{},\"signatures\":{},\"ca\":{},\"generatedNar\":{}}}",
        json_str(&info.path.to_string()),
        json_str(&info.nar_hash.to_nix32_string()),
        info.nar_size,
        list(info.references.iter().map(|r| r.to_string()).collect()),
        opt(info.deriver.as_ref().map(|d| d.to_string())),
        list(info.sigs.iter().map(|s| s.to_string()).collect()),
        opt(info.ca.clone()),
        nar.unwrap_or_else(|| "null".to_string()),
    )
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
