//! The open `/_ds/v1/lookup/<hash>` route under a flood (issue 8; the cap
//! of 32 `LookupLocal` calls in flight, lookup.rs).
//!
//! The real proxy and the real mapper on a private dbus-daemon serve a Nix
//! store. A few hundred keep-alive connections ask the route for made-up
//! hashes for a bounded time (each one a store miss and then a D-Bus
//! `LookupLocal` round trip to the mapper: the expensive case). Meanwhile a
//! normal client keeps fetching a narinfo hit, a narinfo miss (which goes
//! to the mapper over the same D-Bus connection as the flood) and the route
//! for a hash the node holds. Checks: the normal client never sees a 5xx
//! or a wrong status and its latency stays bounded; the flood is answered
//! 404 (callers past the cap wait their turn, each call bounded by
//! `LOCAL_DEADLINE`; nothing answers 503); the proxy never logs a failed
//! fleet lookup (dbus-daemon's limit of 128 pending replies was not hit);
//! afterwards both processes are alive and answering.
//!
//! Needs `target/release/distributed-store-mapper` (`cargo build --release
//! -p ds-mapper`), `dbus-daemon`, root and Nix (skipped without Nix).

mod common;
use common::*;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Flooding connections (each one keep-alive request after another).
const FLOOD_CONNECTIONS: usize = 300;
/// The flood stops after this long ...
const FLOOD_FOR: Duration = Duration::from_secs(6);
/// ... or after this many requests, whichever comes first.
const FLOOD_MAX_REQUESTS: u64 = 200_000;
/// Generous bound on one request of the normal client while the flood runs.
const NORMAL_MAX: Duration = Duration::from_secs(2);

/// A `[[mappers]] type = "command"` program (JSON lines, docs/backends.md)
/// that knows nothing, appends each hash it is asked about to argv[1] and
/// takes argv[2] seconds per lookup, one at a time.
const COMMAND_MAPPER: &str = r#"#!/usr/bin/env python3
import json, sys, time
seen = open(sys.argv[1], "a", buffering=1)
delay = float(sys.argv[2])
for line in sys.stdin:
    q = json.loads(line)
    if delay:
        time.sleep(delay)
    seen.write(q.get("hash", "") + "\n")
    sys.stdout.write(json.dumps({"id": q.get("id"), "found": False}) + "\n")
    sys.stdout.flush()
"#;

/// A made-up store path hash (nix-base32, 32 characters) from a xorshift state.
fn made_up_hash(state: &mut u64) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    (0..32)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            ALPHABET[(*state % 32) as usize] as char
        })
        .collect()
}

/// One GET on a keep-alive connection; the status, after reading the body
/// (the route's answers are small and carry a Content-Length).
async fn keepalive_get(s: &mut BufReader<TcpStream>, path: &str) -> std::io::Result<u16> {
    s.get_mut()
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: flood\r\n\r\n").as_bytes())
        .await?;
    let mut status = None;
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if s.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if status.is_none() {
            status = line.split(' ').nth(1).and_then(|c| c.parse().ok());
        } else if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    status.ok_or_else(|| std::io::ErrorKind::InvalidData.into())
}

/// Counts of the flood's answers.
#[derive(Default)]
struct FloodCounts {
    sent: AtomicU64,
    s404: AtomicU64,
    s503: AtomicU64,
    other: AtomicU64,
    io_errors: AtomicU64,
}

async fn flood_connection(
    addr: std::net::SocketAddr,
    seed: u64,
    stop: Arc<AtomicBool>,
    counts: Arc<FloodCounts>,
) {
    let mut state = seed | 1;
    let mut conn: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::Relaxed) {
        if counts.sent.fetch_add(1, Ordering::Relaxed) >= FLOOD_MAX_REQUESTS {
            break;
        }
        let s = match conn.as_mut() {
            Some(s) => s,
            None => match TcpStream::connect(addr).await {
                Ok(t) => conn.insert(BufReader::new(t)),
                Err(_) => {
                    counts.io_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            },
        };
        let path = format!("/_ds/v1/lookup/{}", made_up_hash(&mut state));
        match keepalive_get(s, &path).await {
            Ok(404) => counts.s404.fetch_add(1, Ordering::Relaxed),
            Ok(503) => counts.s503.fetch_add(1, Ordering::Relaxed),
            Ok(_) => counts.other.fetch_add(1, Ordering::Relaxed),
            Err(_) => {
                conn = None;
                counts.io_errors.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The two cases share the machine's 2 cores badly: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(case: Case) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(flood(case));
}

/// A fast local mapper: the flood is as fast as D-Bus and the mapper go
/// (dbus-daemon's 128 pending replies per connection is what the cap of 32
/// protects).
#[test]
fn lookup_flood_fast_local_mapper() {
    run(Case {
        mapper_delay_ms: 0,
        min_answers: 2_000,
    });
}

/// A slow local mapper (a serial command plugin taking 5 ms per lookup):
/// flood and normal misses queue in the same plugin; with at most 32 flood
/// calls in flight, a normal miss waits for at most ~32 x 5 ms.
#[test]
fn lookup_flood_slow_local_mapper() {
    run(Case {
        mapper_delay_ms: 5,
        min_answers: 300,
    });
}

struct Case {
    /// What the command mapper sleeps per lookup (it answers one at a time).
    mapper_delay_ms: u64,
    /// At least this many flood answers (else it was no flood).
    min_answers: u64,
}

async fn flood(case: Case) {
    require_nix!();
    let delay_ms = case.mapper_delay_ms;
    eprintln!("== command mapper taking {delay_ms} ms per lookup");
    let mapper_bin = sibling_bin("distributed-store-mapper", "ds-mapper");
    let env = NixEnv::new();
    let leaf = env.build("leaf", 1);

    let (_daemon, bus) = private_bus();

    // A command mapper (docs/backends.md) that knows nothing and writes
    // down every hash it is asked about: the evidence that each flood
    // request went through `LookupLocal` to the mapper and its plugins
    // (the expensive path), not a shortcut.
    let seen = env.dir().join("command-mapper.seen");
    let script = env.dir().join("command-mapper.py");
    std::fs::write(&script, COMMAND_MAPPER).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // No upstreams, no peers, no discovery: nothing leaves this machine.
    let config = env.dir().join("mapper.toml");
    std::fs::write(
        &config,
        format!(
            "store = \"local?root={}\"\nstateDirectory = \"{}\"\ncacheDirectory = \"{}\"\n\
             upstreams = []\ndiscovery = false\n\
             [[mappers]]\ntype = \"command\"\ncommand = [\"{}\", \"{}\", \"{}\"]\n",
            env.root().display(),
            env.dir().join("state").display(),
            env.dir().join("cache").display(),
            script.display(),
            seen.display(),
            delay_ms as f64 / 1000.0,
        ),
    )
    .unwrap();
    let mapper_log = env.dir().join("mapper.log");
    let mapper = Command::new(&mapper_bin)
        .arg("--config")
        .arg(&config)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&mapper_log).unwrap())
        .spawn()
        .expect("starting the mapper");
    let mut mapper = Kill(mapper);
    let proxy = Proxy::start(&env.root(), "upstreams = []", Some(&bus));

    // Wait for the mapper on the bus.
    let conn = zbus::connection::Builder::address(bus.as_str())
        .unwrap()
        .build()
        .await
        .expect("connecting to the private bus");
    let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
    let mapper_name = zbus::names::BusName::try_from(ds_dbus::MAPPER_NAME).unwrap();
    let mut on_bus = false;
    for _ in 0..100 {
        if dbus
            .name_has_owner(mapper_name.clone())
            .await
            .unwrap_or(false)
        {
            on_bus = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        on_bus,
        "mapper never appeared on the bus:\n{}",
        std::fs::read_to_string(&mapper_log).unwrap_or_default()
    );

    let hit = format!("/{}.narinfo", hash_part(&leaf));
    let known = format!("/_ds/v1/lookup/{}", hash_part(&leaf));
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    // Before the flood: the expected answers.
    assert_eq!(get(proxy.addr, &hit, &[]).await.status, 200);
    assert_eq!(get(proxy.addr, &known, &[]).await.status, 200);
    let miss = format!("/{}.narinfo", made_up_hash(&mut seed));
    assert_eq!(get(proxy.addr, &miss, &[]).await.status, 404);

    // The flood.
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(FloodCounts::default());
    let started = Instant::now();
    let flooders: Vec<_> = (0..FLOOD_CONNECTIONS)
        .map(|i| {
            tokio::spawn(flood_connection(
                proxy.addr,
                seed.wrapping_mul(i as u64 + 2),
                stop.clone(),
                counts.clone(),
            ))
        })
        .collect();

    // The normal client, one request at a time, each on a new connection
    // (as a Nix client opening a connection would see it).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut took: Vec<(&str, Duration)> = Vec::new();
    let mut wrong = Vec::new();
    while started.elapsed() < FLOOD_FOR - Duration::from_millis(500) {
        let miss = format!("/{}.narinfo", made_up_hash(&mut seed));
        for (kind, path, want) in [
            ("narinfo hit", hit.as_str(), 200),
            ("narinfo miss", miss.as_str(), 404),
            ("lookup known", known.as_str(), 200),
        ] {
            let t = Instant::now();
            let status =
                match tokio::time::timeout(Duration::from_secs(10), get(proxy.addr, path, &[]))
                    .await
                {
                    Ok(r) => r.status,
                    Err(_) => 0,
                };
            took.push((kind, t.elapsed()));
            if status != want {
                wrong.push(format!("{kind} {path}: {status} (want {want})"));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let normal_done = started.elapsed();
    let sent_meanwhile = counts.sent.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        let _ = tokio::time::timeout(Duration::from_secs(10), f).await;
    }
    let flood_time = started.elapsed();

    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let answered = load(&counts.s404) + load(&counts.s503) + load(&counts.other);
    eprintln!(
        "flood: {FLOOD_CONNECTIONS} connections, {answered} answers in {flood_time:.2?} \
         ({:.0}/s): 404 x{}, 503 x{}, other x{}, I/O errors x{}",
        answered as f64 / flood_time.as_secs_f64(),
        load(&counts.s404),
        load(&counts.s503),
        load(&counts.other),
        load(&counts.io_errors)
    );
    for kind in ["narinfo hit", "narinfo miss", "lookup known"] {
        let mut d: Vec<Duration> = took
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, d)| *d)
            .collect();
        d.sort();
        eprintln!(
            "normal client during the flood, {kind}: n {}, p50 {:.2?}, p99 {:.2?}, max {:.2?}",
            d.len(),
            percentile(&d, 0.5),
            percentile(&d, 0.99),
            d[d.len() - 1]
        );
    }
    eprintln!("normal client ran for {normal_done:.2?}");

    assert!(
        sent_meanwhile < FLOOD_MAX_REQUESTS,
        "the flood ended (request cap) before the normal client was done"
    );
    assert!(wrong.is_empty(), "normal client got: {wrong:#?}");
    let worst = took.iter().map(|(_, d)| *d).max().unwrap_or_default();
    assert!(
        worst < NORMAL_MAX,
        "a normal request took {worst:?} during the flood (limit {NORMAL_MAX:?})"
    );
    if delay_ms > 0 {
        // The plugin answers in order: a normal miss queues behind the flood
        // calls in flight, at most 32 of them (~32 x delay). Without the cap
        // it would be behind all 300 flood connections (~300 x delay).
        let limit = Duration::from_millis(48 * delay_ms + 150);
        let worst_miss = took
            .iter()
            .filter(|(k, _)| *k == "narinfo miss")
            .map(|(_, d)| *d)
            .max()
            .unwrap_or_default();
        assert!(
            worst_miss < limit,
            "a normal miss took {worst_miss:?} behind the flood (limit {limit:?})"
        );
    }
    assert!(
        took.len() >= 20,
        "the normal client made {} requests",
        took.len()
    );
    assert!(
        answered >= case.min_answers,
        "the flood got only {answered} answers: not a flood"
    );
    // Unknown hashes are 404: callers past the cap wait for a slot (bounded
    // by LOCAL_DEADLINE per call ahead); nothing is refused with 503.
    assert_eq!(load(&counts.other), 0, "flood answers other than 404/503");
    assert_eq!(load(&counts.s503), 0, "flood answered 503");
    assert_eq!(load(&counts.io_errors), 0, "flood connections failed");
    // Every flood request reached the mapper's plugins through LookupLocal.
    let asked = std::fs::read_to_string(&seen).unwrap_or_default();
    let asked = asked
        .lines()
        .collect::<std::collections::HashSet<_>>()
        .len() as u64;
    eprintln!("command mapper asked about {asked} distinct hashes");
    assert!(
        asked >= load(&counts.s404),
        "only {asked} lookups reached the mapper's command plugin for {} flood answers",
        load(&counts.s404)
    );
    let log = proxy.log_text();
    for bad in [
        "mapper lookup failed",
        "mapper did not answer",
        "lookup: mapper",
    ] {
        let n = log.matches(bad).count();
        assert_eq!(n, 0, "proxy log: {n} x '{bad}'");
    }

    // Afterwards: both alive and answering, the mapper directly on D-Bus too.
    assert!(
        mapper.0.try_wait().ok().flatten().is_none(),
        "the mapper exited"
    );
    assert_eq!(get(proxy.addr, &hit, &[]).await.status, 200);
    assert_eq!(get(proxy.addr, &known, &[]).await.status, 200);
    let miss = format!("/{}.narinfo", made_up_hash(&mut seed));
    assert_eq!(get(proxy.addr, &miss, &[]).await.status, 404);
    // The route is counted in the proxy's metrics like every other one.
    let metrics =
        String::from_utf8_lossy(&get(proxy.addr, "/metrics", &[]).await.body).into_owned();
    let counted: u64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("distributed_store_proxy_requests_total{")
                && l.contains("route=\"lookup\"")
                && l.contains("status=\"404\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        counted >= load(&counts.s404),
        "/metrics counts {counted} lookup 404s for {} flood answers",
        load(&counts.s404)
    );
    let m = ds_dbus::Mapper1Proxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let t = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        m.lookup_local(&made_up_hash(&mut seed)),
    )
    .await
    .expect("the mapper answers LookupLocal after the flood");
    assert!(
        matches!(r, Err(ds_dbus::MapperError::NotFound(_))),
        "LookupLocal of a made-up hash: {r:?}"
    );
    eprintln!(
        "mapper LookupLocal after the flood: NotFound in {:?}",
        t.elapsed()
    );
}
