//! The external-program backend (`exec:` locators) with a real shell
//! script: good bytes, wrong bytes, a failing exit, a hang, endless output.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ds_core::{Compression, FileFacts, Hash, Locator};
use ds_fetcher::exec::CommandBackend;
use ds_fetcher::{FetchError, Fetcher, Registry};

const BIG: u64 = 1 << 30;

/// The script: `$1` is the test's directory, `$2` the locator value.
const SCRIPT: &str = r#"#!/bin/sh
dir="$1"
echo $$ > "$dir/pid.$2"
case "$2" in
  good) cat "$dir/file" ;;
  wrong) cat "$dir/other" ;;
  fail-midway) head -c 1000 "$dir/file"; echo "boom: disk on fire" >&2; exit 1 ;;
  fail-at-end) cat "$dir/file"; echo "late failure" >&2; exit 3 ;;
  hang) head -c 100 "$dir/file"; sleep 600 & echo $! > "$dir/pid.hang.sleep"; wait ;;
  huge) cat "$dir/file"; yes & echo $! > "$dir/pid.huge.yes"; wait ;;
  *) echo "unknown value $2" >&2; exit 2 ;;
esac
"#;

struct Setup {
    dir: tempfile::TempDir,
    nar: TestNar,
    facts: FileFacts,
    fetcher: Fetcher,
}

async fn setup(compression: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let nar = TestNar::new("exec-nar", &contents(21, 300_000));
    let file = compress(compression, &nar.bytes).await;
    let other = compress(
        compression,
        &TestNar::new("other", &contents(22, 300_000)).bytes,
    )
    .await;
    std::fs::write(dir.path().join("file"), &file).unwrap();
    std::fs::write(dir.path().join("other"), &other).unwrap();
    let script = dir.path().join("fetch-nar.sh");
    std::fs::write(&script, SCRIPT).unwrap();
    let facts = FileFacts {
        compression: Compression::from_name(compression),
        file_hash: Some(Hash::sha256(&file)),
        file_size: Some(file.len() as u64),
    };
    let argv = vec![
        "/bin/sh".to_string(),
        script.display().to_string(),
        dir.path().display().to_string(),
    ];
    let mut registry = Registry::new();
    registry.register(Arc::new(CommandBackend::new(
        argv,
        Duration::from_millis(300),
    )));
    let cache = dir.path().join("cache");
    let fetcher = Fetcher::with_registry(
        config(&cache, BIG),
        registry,
        Arc::new(RecordingMapper::default()),
        ds_runtime::service::Activity::new(),
    )
    .unwrap();
    Setup {
        dir,
        nar,
        facts,
        fetcher,
    }
}

impl Setup {
    fn locator(&self, value: &str, facts: &FileFacts) -> Vec<String> {
        vec![Locator::other("exec", value, facts).to_string()]
    }

    /// Fetch through `value`; the verified bytes (empty when it failed).
    async fn fetch(&self, value: &str, facts: &FileFacts) -> Vec<u8> {
        let loc = self.locator(value, facts);
        match self.fetcher.fetch_verified(&self.nar.narinfo, &loc).await {
            Ok(fd) => read_all(fd).await,
            Err(FetchError::Failed(_)) => Vec::new(),
            Err(e) => panic!("{e:?}"),
        }
    }

    fn pid(&self, name: &str) -> i32 {
        std::fs::read_to_string(self.dir.path().join(format!("pid.{name}")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

/// Whether `pid` is a live (non-zombie) process.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim().chars().next());
            !matches!(state, Some('Z') | Some('X'))
        }
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_output_in_every_compression_is_verified_and_cached() {
    for kind in ["none", "xz", "zstd", "bzip2"] {
        let s = setup(kind).await;
        let got = s.fetch("good", &s.facts).await;
        assert!(got == s.nar.bytes, "{kind}");
        assert_eq!(s.fetcher.status().cache_entries, 1, "{kind}");
        assert!(!alive(s.pid("good")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_fail_the_file_hash_and_nothing_is_cached() {
    let s = setup("zstd").await;
    // The other file is about as large: FileSize or FileHash catches it.
    assert!(s.fetch("wrong", &s.facts).await.is_empty());
    // Without file facts, the fetcher's NarHash check catches it.
    let bare = FileFacts {
        compression: Compression::Zstd,
        file_hash: None,
        file_size: None,
    };
    assert!(s.fetch("wrong", &bare).await.is_empty());
    assert_eq!(s.fetcher.status().cache_entries, 0);
    assert!(s.fetcher.status().verification_failures >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_zero_exit_fails_even_after_complete_bytes() {
    let s = setup("none").await;
    assert!(s.fetch("fail-midway", &s.facts).await.is_empty());
    // All bytes right, then exit 3: still a failure.
    let bare = FileFacts {
        compression: Compression::None,
        file_hash: None,
        file_size: None,
    };
    assert!(s.fetch("fail-at-end", &bare).await.is_empty());
    assert_eq!(s.fetcher.status().cache_entries, 0);
    // And an unknown value (the script exits 2 at once).
    assert!(s.fetch("nonsense", &s.facts).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_command_is_killed_with_its_process_group() {
    let s = setup("none").await;
    let t = std::time::Instant::now();
    assert!(s.fetch("hang", &s.facts).await.is_empty());
    // Stall limit: max(4 × 300 ms, min_stall 2 s), plus slack.
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let (sh, sleep) = (s.pid("hang"), s.pid("hang.sleep"));
    wait_until(
        "the hanging script and its sleep are killed",
        Duration::from_secs(5),
        || !alive(sh) && !alive(sleep),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_output_is_cut_off_and_the_command_killed() {
    let s = setup("none").await;
    // More than FileSize: the file layer stops it.
    assert!(s.fetch("huge", &s.facts).await.is_empty());
    let (sh, yes) = (s.pid("huge"), s.pid("huge.yes"));
    wait_until("yes killed (FileSize)", Duration::from_secs(5), || {
        !alive(sh) && !alive(yes)
    })
    .await;
    // No FileSize: the fetcher's NarSize bound stops it.
    let bare = FileFacts {
        compression: Compression::None,
        file_hash: None,
        file_size: None,
    };
    assert!(s.fetch("huge", &bare).await.is_empty());
    let (sh, yes) = (s.pid("huge"), s.pid("huge.yes"));
    wait_until("yes killed (NarSize)", Duration::from_secs(5), || {
        !alive(sh) && !alive(yes)
    })
    .await;
    assert_eq!(s.fetcher.status().cache_entries, 0);
}

/// Throughput of a 100 MiB NAR through `cat` (run with `--ignored
/// --nocapture`; prints MB/s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_100_mib() {
    for kind in ["none", "zstd"] {
        let dir = tempfile::tempdir().unwrap();
        let nar = TestNar::new(&format!("exec-big-{kind}"), &contents(52, 100 << 20));
        let file = compress(kind, &nar.bytes).await;
        let path = dir.path().join("file");
        std::fs::write(&path, &file).unwrap();
        let facts = FileFacts {
            compression: Compression::from_name(kind),
            file_hash: Some(Hash::sha256(&file)),
            file_size: Some(file.len() as u64),
        };
        let mut registry = Registry::new();
        registry.register(Arc::new(CommandBackend::new(
            vec!["/bin/cat".into()],
            Duration::from_secs(2),
        )));
        let f = Fetcher::with_registry(
            config(&dir.path().join("cache"), BIG),
            registry,
            Arc::new(RecordingMapper::default()),
            ds_runtime::service::Activity::new(),
        )
        .unwrap();
        let loc = Locator::other("exec", &path.display().to_string(), &facts).to_string();
        let t = std::time::Instant::now();
        let fd = f.fetch_verified(&nar.narinfo, &[loc]).await.unwrap();
        assert!(read_all(fd).await.len() == nar.bytes.len());
        let mb = nar.bytes.len() as f64 / 1e6;
        println!(
            "exec {kind}: fetch {:.0} MB/s ({mb:.0} MB NAR)",
            mb / t.elapsed().as_secs_f64()
        );
    }
}
