//! The external-program mapper against a real program (a Python script
//! speaking the JSON-lines protocol of docs/backends.md): answers, misses,
//! garbage and oversized lines, untrusted and wrong-path answers, a program
//! that never answers (deadline), one that crashes (restart with backoff)
//! and one that cannot start.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{hash_part, key, narinfo};
use ds_core::StorePathHash;
use ds_mapper::command::CommandMapper;
use ds_mapper::{Mapper, Ordered, Scope};

const SCRIPT: &str = r##"
import json, os, sys, time
d = sys.argv[1]
with open(os.path.join(d, "starts"), "a") as f:
    f.write("start\n")
for line in sys.stdin:
    try:
        req = json.loads(line)
    except Exception:
        continue
    h, i = req.get("hash"), req.get("id")
    act = ""
    p = os.path.join(d, h + ".act")
    if os.path.exists(p):
        act = open(p).read().strip()
    if act == "crash":
        os.remove(p)
        sys.exit(3)
    if act == "silent":
        continue
    if act == "garbage":
        print("this is not json")
        print("{\"id\": \"x\"}")
        print("x" * (3 << 20))
    n = os.path.join(d, h + ".narinfo")
    if os.path.exists(n):
        print(json.dumps({"id": i, "narinfo": open(n).read(),
                          "locators": ["ipfs:bafy" + h + "#compression=none", "not a locator"]}))
    else:
        print(json.dumps({"id": i, "found": False}))
    sys.stdout.flush()
"##;

fn sph(s: &str) -> StorePathHash {
    StorePathHash::parse(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_mapper_protocol_failures_and_restart() {
    let trusted = key("trusted-1", 1);
    let stranger = key("stranger-1", 7);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let script = d.join("mapper.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let (h1, h2, h3, h4, h5, h6) = (
        hash_part(1),
        hash_part(2),
        hash_part(3),
        hash_part(4),
        hash_part(5),
        hash_part(6),
    );
    std::fs::write(
        d.join(format!("{h1}.narinfo")),
        narinfo(&h1, "one", 1, &trusted),
    )
    .unwrap();
    // Garbage first, then the answer.
    std::fs::write(
        d.join(format!("{h2}.narinfo")),
        narinfo(&h2, "two", 2, &trusted),
    )
    .unwrap();
    std::fs::write(d.join(format!("{h2}.act")), "garbage").unwrap();
    // Signed by a key this node does not trust.
    std::fs::write(
        d.join(format!("{h3}.narinfo")),
        narinfo(&h3, "three", 3, &stranger),
    )
    .unwrap();
    // An answer for another path.
    std::fs::write(
        d.join(format!("{h4}.narinfo")),
        narinfo(&h1, "one", 1, &trusted),
    )
    .unwrap();
    std::fs::write(d.join(format!("{h5}.act")), "silent").unwrap();

    let m = Arc::new(CommandMapper::start(
        vec![
            "/usr/bin/python3".into(),
            script.display().to_string(),
            d.display().to_string(),
        ],
        vec![trusted.public()],
    ));
    let stack = Ordered::new().push(m.clone(), Duration::from_millis(1500));

    let got = stack
        .lookup(&sph(&h1), Scope::Fleet)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.narinfo.store_path.hash().as_str(), h1);
    assert_eq!(got.locators.len(), 1, "the bad locator is dropped");
    assert_eq!(got.locators[0].scheme(), "ipfs");
    assert!(stack
        .lookup(&sph(&h6), Scope::Fleet)
        .await
        .unwrap()
        .is_none());
    let got = stack.lookup(&sph(&h2), Scope::Fleet).await.unwrap();
    assert!(got.is_some(), "garbage and a 3 MiB line before the answer");
    assert!(stack
        .lookup(&sph(&h3), Scope::Fleet)
        .await
        .unwrap()
        .is_none());
    assert!(stack
        .lookup(&sph(&h4), Scope::Fleet)
        .await
        .unwrap()
        .is_none());

    // Never answered: a miss at the deadline, and the program still works.
    let short = Ordered::new().push(m.clone(), Duration::from_millis(300));
    let t = Instant::now();
    assert!(short
        .lookup(&sph(&h5), Scope::Fleet)
        .await
        .unwrap()
        .is_none());
    assert!(t.elapsed() < Duration::from_millis(600));
    // Concurrent lookups are matched by id.
    let (s1, s6, s2) = (sph(&h1), sph(&h6), sph(&h2));
    let (a, b, c) = tokio::join!(
        stack.lookup(&s1, Scope::Fleet),
        stack.lookup(&s6, Scope::Fleet),
        stack.lookup(&s2, Scope::Fleet)
    );
    assert!(a.unwrap().is_some() && b.unwrap().is_none() && c.unwrap().is_some());

    // The program crashes: that lookup misses at once (not at the deadline),
    // and it is restarted.
    std::fs::write(d.join(format!("{h6}.act")), "crash").unwrap();
    let t = Instant::now();
    assert!(stack
        .lookup(&sph(&h6), Scope::Fleet)
        .await
        .unwrap()
        .is_none());
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    let mut back = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if stack
            .lookup(&sph(&h1), Scope::Fleet)
            .await
            .unwrap()
            .is_some()
        {
            back = true;
            break;
        }
    }
    assert!(back, "not restarted");
    let starts = std::fs::read_to_string(d.join("starts")).unwrap();
    assert_eq!(starts.lines().count(), 2);
    drop(stack);
    drop(short);
    drop(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_mapper_that_cannot_start() {
    let m = CommandMapper::start(
        vec!["/nonexistent/mapper".into()],
        vec![key("trusted-1", 1).public()],
    );
    let stack = Ordered::new().push(Arc::new(m), Duration::from_millis(500));
    let t = Instant::now();
    assert!(stack
        .lookup(&sph(&hash_part(1)), Scope::Fleet)
        .await
        .unwrap()
        .is_none());
    assert!(t.elapsed() < Duration::from_millis(700));
}
