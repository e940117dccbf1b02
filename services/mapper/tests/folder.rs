//! The folder index: the YAML format (deterministic, round trip, hand
//! edits, malformed input), the FolderMapper (trust, re-scan, 30,000
//! entries) and the ordered stack built over real folder mappers.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{hash_part, key};
use ds_core::{Hash, Locator, NarInfo, SecretKey, StorePathHash};
use ds_mapper::folder::{self, Entry, FolderMapper, Written};
use ds_mapper::{Mapper, Mapping, Ordered, Scope};
use futures::future::BoxFuture;

/// A FileHash derived from `i` (distinct from NarHashes).
fn file_hash(i: u32) -> Hash {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&i.to_le_bytes());
    b[31] = 0xf1;
    Hash::from_digest(ds_core::HashAlgo::Sha256, &b).unwrap()
}

/// An entry for path `i`, signed by `k` (unsigned when `None`).
fn entry(i: u32, k: Option<&SecretKey>) -> Entry {
    let fh = file_hash(i).to_nix32_string();
    let text = format!(
        "StorePath: /nix/store/{h}-pkg-{i}\nURL: nar/{d}.nar.zst\nCompression: zstd\nFileHash: {fh}\nFileSize: {fs}\nNarHash: {nh}\nNarSize: 4096\nReferences: {r2}-dep-b {r1}-dep-a {h}-pkg-{i}\nDeriver: {r1}-pkg-{i}.drv\n",
        h = hash_part(i),
        d = fh.trim_start_matches("sha256:"),
        fs = 1000 + i,
        nh = common::nar_hash(i),
        r1 = hash_part(i + 1_000_000),
        r2 = hash_part(i + 2_000_000),
    );
    let mut narinfo = NarInfo::parse(&text).unwrap();
    if let Some(k) = k {
        narinfo.sign(k);
    }
    let facts = ds_core::FileFacts {
        compression: ds_core::Compression::Zstd,
        file_hash: narinfo.file_hash.clone(),
        file_size: narinfo.file_size,
    };
    Entry {
        locators: vec![
            Locator::other("ipfs", &format!("bafy{i}"), &facts),
            Locator::parse(&format!(
                "file:https://cache.example/nar/{}.nar.zst#compression=zstd",
                i
            ))
            .unwrap(),
        ],
        narinfo,
    }
}

fn sph(i: u32) -> StorePathHash {
    StorePathHash::parse(&hash_part(i)).unwrap()
}

#[test]
fn render_is_deterministic_and_round_trips() {
    let k = key("trusted-1", 1);
    let e = entry(7, Some(&k));
    let text = folder::render(&e).unwrap();
    // Same facts in another order render the same bytes.
    let mut shuffled = e.clone();
    shuffled.locators.reverse();
    shuffled.narinfo.references.reverse();
    assert_eq!(folder::render(&shuffled).unwrap(), text);
    let keys: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('#'))
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "storePath",
            "url",
            "compression",
            "fileHash",
            "fileSize",
            "narHash",
            "narSize",
            "deriver",
            "references",
            "sigs",
            "locators"
        ]
    );
    assert!(text.starts_with(folder::HEADER));
    // One item per line, lists sorted.
    let refs: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "references:")
        .skip(1)
        .take_while(|l| l.starts_with("  - "))
        .collect();
    assert_eq!(refs.len(), 3);
    let mut sorted = refs.clone();
    sorted.sort();
    assert_eq!(refs, sorted);
    let back = folder::parse(&text).unwrap();
    assert_eq!(back.narinfo, e.narinfo);
    let mut locs: Vec<String> = e.locators.iter().map(|l| l.to_string()).collect();
    locs.sort();
    assert_eq!(
        back.locators
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>(),
        locs
    );
    assert_eq!(folder::render(&back).unwrap(), text);
}

#[test]
fn hand_edits_parse() {
    let k = key("trusted-1", 1);
    let e = entry(3, Some(&k));
    let n = &e.narinfo;
    // Quoted scalars, comments, blank lines, another key order, flow `[]`,
    // an unknown key, deeper list indentation.
    let text = format!(
        "---\n# hand-written\nnarSize: {ns}\nstorePath: \"{sp}\"\n\nurl: '{url}'\ncompression: zstd   # comment\nfileHash: {fh}\nnarHash: {nh}\nfuture: 1\nreferences: []\nsigs:\n    - \"{sig}\"\nlocators:\n    - ipfs:bafyX\n",
        ns = n.nar_size,
        sp = n.store_path.to_absolute(),
        url = n.url,
        fh = n.file_hash.as_ref().unwrap().to_nix32_string(),
        nh = n.nar_hash.to_nix32_string(),
        sig = n.sigs[0],
    );
    let back = folder::parse(&text).unwrap();
    assert_eq!(back.narinfo.store_path, n.store_path);
    assert!(back.narinfo.references.is_empty());
    assert_eq!(back.narinfo.sigs, n.sigs);
    assert_eq!(back.locators, vec![Locator::parse("ipfs:bafyX").unwrap()]);
    // A value that needs quoting is quoted on render and reads back.
    let mut odd = e.clone();
    odd.narinfo.ca =
        Some("text:sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s".into());
    odd.narinfo.url = "nar/x: y #z.nar".into();
    let t = folder::render(&odd).unwrap();
    assert!(t.contains("url: \"nar/x: y #z.nar\""), "{t}");
    assert_eq!(folder::parse(&t).unwrap().narinfo, odd.narinfo);
}

#[test]
fn malformed_is_an_error_never_a_panic() {
    let k = key("trusted-1", 1);
    let good = folder::render(&entry(1, Some(&k))).unwrap();
    for bad in [
        String::new(),
        "storePath: /nix/store/x".into(),
        "- item\n".into(),
        "  indented: 1\n".into(),
        "noColon\n".into(),
        "narSize: 1\nnarSize: 2\n".into(),
        good.replace("fileHash", "fileHashX"),
        good.replace("narSize: 4096", "narSize: many"),
        good.replace("  - ipfs:", "  - no scheme "),
        good.replace("storePath: ", "storePath: \"unterminated"),
        format!("{good}\nlocators:\n  - x:y\n"),
        "url: \"a\\nStorePath: /nix/store/x\"\n".into(),
    ] {
        assert!(folder::parse(&bad).is_err(), "accepted:\n{bad}");
    }
    // Cheap fuzzing: every truncation and many byte flips of a valid entry.
    let bytes = good.as_bytes();
    for cut in 0..bytes.len() {
        let _ = folder::parse(&String::from_utf8_lossy(&bytes[..cut]));
    }
    let mut x: u32 = 12345;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let mut b = bytes.to_vec();
        let at = x as usize % b.len();
        b[at] = (x >> 8) as u8;
        let _ = folder::parse(&String::from_utf8_lossy(&b));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_mapper_trust_garbage_and_rescan() {
    let trusted = key("trusted-1", 1);
    let other = key("other-1", 9);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, w) = folder::write_entry(d, &entry(1, Some(&trusted))).unwrap();
    assert_eq!(w, Written::Written);
    // Re-writing the same entry leaves the file alone.
    let (p1, w) = folder::write_entry(d, &entry(1, Some(&trusted))).unwrap();
    assert_eq!(w, Written::Unchanged);
    assert!(p1.starts_with(
        d.join(
            folder::entry_name(&file_hash(1))
                .chars()
                .next()
                .unwrap()
                .to_string()
        )
    ));
    folder::write_entry(d, &entry(2, Some(&other))).unwrap();
    // Content-addressed: needs no signature.
    let mut ca = entry(3, None);
    ca.narinfo.ca = Some(format!("fixed:r:{}", common::nar_hash(3)));
    folder::write_entry(d, &ca).unwrap();
    // Garbage: random bytes, a truncated entry, an entry under another name,
    // an oversized file, a stray directory and file.
    std::fs::create_dir_all(d.join("z")).unwrap();
    std::fs::write(d.join("z/zzzz.yaml"), [0xff, 0x00, 0x13, 0x37]).unwrap();
    let good4 = folder::render(&entry(4, Some(&trusted))).unwrap();
    let p4 = folder::entry_path(d, &file_hash(4));
    std::fs::create_dir_all(p4.parent().unwrap()).unwrap();
    std::fs::write(&p4, &good4[..good4.len() / 3]).unwrap();
    std::fs::write(
        d.join("z/0000.yaml"),
        folder::render(&entry(5, Some(&trusted))).unwrap(),
    )
    .unwrap();
    std::fs::write(d.join("z/big.yaml"), vec![b'#'; 2 << 20]).unwrap();
    std::fs::write(d.join("README"), "not an entry").unwrap();

    let m = FolderMapper::open(d, vec![trusted.public()]).with_check_interval(Duration::ZERO);
    assert_eq!(m.len(), 3, "entries 1, 2 and 3 are well-formed");
    let got = m.lookup(&sph(1), Scope::Fleet).await.unwrap().unwrap();
    assert_eq!(got.narinfo.store_path.hash(), &sph(1));
    assert_eq!(got.locators.len(), 2);
    assert!(
        m.lookup(&sph(2), Scope::Fleet).await.unwrap().is_none(),
        "untrusted entry answered"
    );
    assert!(
        m.lookup(&sph(3), Scope::Fleet).await.unwrap().is_some(),
        "CA entry refused"
    );
    for i in [4, 5, 6] {
        assert!(m.lookup(&sph(i), Scope::Fleet).await.unwrap().is_none());
    }
    // A new entry appears (an import or a git pull): found without reopening.
    folder::write_entry(d, &entry(6, Some(&trusted))).unwrap();
    assert!(m.lookup(&sph(6), Scope::Fleet).await.unwrap().is_some());
    // An entry removed: gone.
    std::fs::remove_file(&p1).unwrap();
    assert!(m.lookup(&sph(1), Scope::Fleet).await.unwrap().is_none());
    // A missing folder is an empty index, picked up once it exists.
    let later = d.join("later");
    let m2 = FolderMapper::open(&later, vec![trusted.public()]).with_check_interval(Duration::ZERO);
    assert!(m2.is_empty());
    folder::write_entry(&later, &entry(7, Some(&trusted))).unwrap();
    assert!(m2.lookup(&sph(7), Scope::Fleet).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_thousand_entries() {
    let trusted = key("trusted-1", 1);
    let dir = tempfile::tempdir().unwrap();
    let n = 30_000u32;
    let t = Instant::now();
    for i in 0..n {
        folder::write_entry(dir.path(), &entry(i, Some(&trusted))).unwrap();
    }
    let write = t.elapsed();
    let t = Instant::now();
    let m = FolderMapper::open(dir.path(), vec![trusted.public()]);
    let open = t.elapsed();
    assert_eq!(m.len(), n as usize);
    let t = Instant::now();
    for i in (0..n).step_by(30) {
        assert!(m.get(&sph(i)).is_some());
    }
    let per_lookup = t.elapsed() / 1000;
    eprintln!(
        "MEASURE folder 30000 entries: write {write:?}, open (scan) {open:?}, lookup {per_lookup:?} each"
    );
    assert!(open < Duration::from_secs(20), "open took {open:?}");
}

/// A layer that answers after a delay (to order answers in time).
struct Delayed(Arc<dyn Mapper>, Duration, &'static str);

impl Mapper for Delayed {
    fn name(&self) -> &str {
        self.2
    }
    fn lookup<'a>(
        &'a self,
        hash: &'a StorePathHash,
        scope: Scope,
    ) -> BoxFuture<'a, Result<Option<Mapping>, ds_mapper::mapper::MapError>> {
        Box::pin(async move {
            tokio::time::sleep(self.1).await;
            self.0.lookup(hash, scope).await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_stack_priority_merge_and_deadlines() {
    let trusted = key("trusted-1", 1);
    let keys = vec![trusted.public()];
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A knows 1 and 2; B knows 1 (same NAR, its own locator) and 3.
    folder::write_entry(a.path(), &entry(1, Some(&trusted))).unwrap();
    folder::write_entry(a.path(), &entry(2, Some(&trusted))).unwrap();
    let mut b1 = entry(1, Some(&trusted));
    b1.locators = vec![Locator::parse("btih:0123456789abcdef0123456789abcdef01234567").unwrap()];
    folder::write_entry(b.path(), &b1).unwrap();
    folder::write_entry(b.path(), &entry(3, Some(&trusted))).unwrap();
    let fa: Arc<dyn Mapper> = Arc::new(FolderMapper::open(a.path(), keys.clone()));
    let fb: Arc<dyn Mapper> = Arc::new(FolderMapper::open(b.path(), keys.clone()));
    // A is first but slow (300 ms), B answers at once.
    let slow_a: Arc<dyn Mapper> =
        Arc::new(Delayed(fa.clone(), Duration::from_millis(300), "slow-a"));
    let stack = Ordered::new()
        .push(slow_a.clone(), Duration::from_secs(2))
        .push(fb.clone(), Duration::from_secs(2));
    // 1: A wins although B was faster; B's locator is merged after A's.
    let t = Instant::now();
    let m = stack.lookup(&sph(1), Scope::Fleet).await.unwrap().unwrap();
    assert!(t.elapsed() >= Duration::from_millis(290));
    assert_eq!(m.locators.len(), 3, "{:?}", m.locators);
    assert!(m.locators[0].scheme() == "file" || m.locators[0].scheme() == "ipfs");
    assert_eq!(m.locators[2].scheme(), "btih");
    // 3: A misses (after 300 ms), then B's answer is taken.
    let m = stack.lookup(&sph(3), Scope::Fleet).await.unwrap().unwrap();
    assert_eq!(m.narinfo.store_path.hash(), &sph(3));
    // Nobody: a miss.
    assert!(stack
        .lookup(&sph(99), Scope::Fleet)
        .await
        .unwrap()
        .is_none());
    // A's deadline (100 ms) passes: B's answer after that deadline, not 300 ms.
    let stack = Ordered::new()
        .push(slow_a, Duration::from_millis(100))
        .push(fb, Duration::from_secs(2));
    let t = Instant::now();
    let m = stack.lookup(&sph(1), Scope::Fleet).await.unwrap().unwrap();
    let took = t.elapsed();
    assert!(took < Duration::from_millis(250), "{took:?}");
    assert_eq!(m.locators[0].scheme(), "btih");
}

#[test]
fn the_documented_example_parses() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/index-format.md"
    ))
    .unwrap();
    let start = doc.find("```yaml\n").unwrap() + "```yaml\n".len();
    let end = start + doc[start..].find("```").unwrap();
    let e = folder::parse(&doc[start..end]).unwrap();
    assert_eq!(e.locators.len(), 2);
    assert_eq!(e.narinfo.references.len(), 2);
    // Already in canonical form: rendering gives the same bytes.
    assert_eq!(folder::render(&e).unwrap(), &doc[start..end]);
}
