//! ds-core against files written by the real Nix 2.8 (`tests/data/`, made by
//! `tests/data/regen.sh`): keys, narinfo files from `nix copy` with three
//! compressions, signatures from `nix store sign`, `nix path-info --json`,
//! and NARs from `nix-store --dump`.

use ds_core::nar::{self, NarError, NarEvent, NarReader};
use ds_core::{CacheInfo, Compression, Hash, NarInfo, PublicKey, SecretKey, StorePath};
use std::path::{Path, PathBuf};

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}
fn read(rel: &str) -> Vec<u8> {
    std::fs::read(data(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}
fn read_str(rel: &str) -> String {
    String::from_utf8(read(rel)).unwrap()
}

/// `KEY=VALUE` lines of paths.env.
fn paths_env(key: &str) -> StorePath {
    let env = read_str("paths.env");
    let line = env
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} not in paths.env"));
    StorePath::parse(line).unwrap()
}

struct Keys {
    secret: Vec<(String, SecretKey)>,
    public: Vec<PublicKey>,
    wrong: PublicKey,
}
fn keys() -> Keys {
    let mut secret = Vec::new();
    let mut public = Vec::new();
    for n in ["key1", "key2"] {
        let sk = SecretKey::parse(&read_str(&format!("{n}.sec"))).unwrap();
        secret.push((sk.name.clone(), sk));
        public.push(PublicKey::parse(&read_str(&format!("{n}.pub"))).unwrap());
    }
    let wrong = PublicKey::parse(&read_str("wrong1.pub")).unwrap();
    Keys {
        secret,
        public,
        wrong,
    }
}

/// Every `(compression dir, narinfo file name, text)`.
fn narinfos() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for c in ["none", "xz", "zstd"] {
        let dir = data(&format!("cache-{c}"));
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".narinfo"))
            .collect();
        names.sort();
        assert_eq!(names.len(), 4, "{dir:?}");
        for n in names {
            let text = read_str(&format!("cache-{c}/{n}"));
            out.push((c.to_owned(), n, text));
        }
    }
    out
}

#[test]
fn key_files_are_byte_identical() {
    for n in ["key1", "key2"] {
        let file = read_str(&format!("{n}.sec"));
        // Nix writes no trailing newline
        assert!(!file.ends_with('\n'));
        let sk = SecretKey::parse(&file).unwrap();
        assert_eq!(sk.to_file_string(), file);
        assert_eq!(sk.public().to_string(), read_str(&format!("{n}.pub")));
        // surrounding whitespace, as after `echo ... > key`
        let padded = format!("\n {file}\n");
        assert_eq!(SecretKey::parse(&padded).unwrap().to_file_string(), file);
    }
    let k = keys();
    assert_eq!(k.wrong.name, k.public[0].name);
    assert_ne!(k.wrong, k.public[0]);
}

#[test]
fn narinfo_render_is_byte_identical() {
    let all = narinfos();
    for (c, name, text) in &all {
        let ni = NarInfo::parse(text).unwrap_or_else(|e| panic!("{c}/{name}: {e}"));
        assert_eq!(&ni.render(), text, "{c}/{name}");
        assert_eq!(NarInfo::parse(&ni.render()).unwrap(), ni);
        assert_eq!(format!("{}.narinfo", ni.store_path.hash()), *name);
        assert_eq!(ni.compression.as_str(), c);
        assert_eq!(ni.compression, Compression::from_name(c));
        assert!(ni
            .url
            .ends_with(&format!(".nar{}", ni.compression.extension())));
    }
    // the fixtures cover every narinfo feature
    let app = paths_env("APP");
    let ca = paths_env("CA");
    let leaf = paths_env("LEAF");
    let find = |c: &str, p: &StorePath| {
        let (_, _, text) = all
            .iter()
            .find(|(cc, n, _)| cc == c && n.starts_with(p.hash().as_str()))
            .unwrap();
        NarInfo::parse(text).unwrap()
    };
    let app_ni = find("zstd", &app);
    assert_eq!(app_ni.references.len(), 2);
    assert!(app_ni.deriver.is_some());
    assert_eq!(app_ni.sigs.len(), 2);
    let ca_ni = find("xz", &ca);
    assert!(ca_ni.ca.as_deref().unwrap().starts_with("fixed:r:sha256:"));
    assert!(ca_ni.deriver.is_none());
    let leaf_text = &all
        .iter()
        .find(|(c, n, _)| c == "none" && n.starts_with(leaf.hash().as_str()))
        .unwrap()
        .2;
    assert!(leaf_text.contains("\nReferences: \n"));
}

#[test]
fn nix_signatures_verify_and_ours_are_identical() {
    let k = keys();
    let mut checked = 0;
    for (c, name, text) in narinfos() {
        let ni = NarInfo::parse(&text).unwrap();
        let fp = ni.fingerprint();
        assert!(!ni.sigs.is_empty(), "{c}/{name}");
        for sig in &ni.sigs {
            let pk = k.public.iter().find(|p| p.name == sig.key_name).unwrap();
            assert!(pk.verify(fp.as_bytes(), sig), "{c}/{name}: {sig}");
            // same key name, other key
            if k.wrong.name == sig.key_name {
                assert!(!k.wrong.verify(fp.as_bytes(), sig));
            }
            // the other key does not verify it, even renamed
            let other = k.public.iter().find(|p| p.name != sig.key_name).unwrap();
            assert!(!other.verify(fp.as_bytes(), sig));
            // tampered fingerprint
            let size = format!(";{};", ni.nar_size);
            let tampered = fp.replacen(&size, &format!(";{};", ni.nar_size + 1), 1);
            assert_ne!(tampered, fp);
            assert!(!pk.verify(tampered.as_bytes(), sig));
            // ed25519 is deterministic: our signature is Nix's
            let sk = &k.secret.iter().find(|(n, _)| *n == sig.key_name).unwrap().1;
            assert_eq!(&sk.sign(fp.as_bytes()), sig, "{c}/{name}");
            checked += 1;
        }
        assert!(k.public.iter().any(|pk| ni.verify(pk)));
    }
    assert_eq!(checked, 3 * 5);
}

#[test]
fn file_hashes_and_nar_hashes_match_the_files() {
    for (c, name, text) in narinfos() {
        let ni = NarInfo::parse(&text).unwrap();
        let file = read(&format!("cache-{c}/{}", ni.url));
        assert_eq!(ni.file_size, Some(file.len() as u64), "{c}/{name}");
        assert_eq!(ni.file_hash, Some(Hash::sha256(&file)), "{c}/{name}");
        if ni.compression == Compression::None {
            let (stats, hash) = nar::validate_hashed(&file[..]).unwrap();
            assert_eq!(hash, ni.nar_hash, "{name}");
            assert_eq!(stats.nar_size, ni.nar_size, "{name}");
        }
    }
    assert_eq!(
        CacheInfo {
            store_dir: "/nix/store".into(),
            want_mass_query: true,
            priority: 40
        }
        .render()
        .lines()
        .next()
        .unwrap(),
        read_str("cache-none/nix-cache-info").trim_end()
    );
}

/// The raw text of `"key":<value>` in one flat JSON object (the fixture has
/// no escapes and no nesting beyond string arrays).
fn json_field<'a>(obj: &'a str, key: &str) -> Option<&'a str> {
    let start = obj.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &obj[start..];
    let end = match rest.as_bytes()[0] {
        b'"' => rest[1..].find('"')? + 2,
        b'[' => rest.find(']')? + 1,
        _ => rest.find([',', '}']).unwrap_or(rest.len()),
    };
    Some(&rest[..end])
}
fn json_strings(v: &str) -> Vec<String> {
    v.trim_matches(['[', ']'])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_matches('"').to_owned())
        .collect()
}

#[test]
fn path_info_json_agrees_with_narinfo() {
    let json = read_str("path-info.json");
    let objects: Vec<&str> = json.trim().trim_matches(['[', ']']).split("},{").collect();
    assert_eq!(objects.len(), 4);
    let all = narinfos();
    for obj in objects {
        let path = StorePath::parse(json_field(obj, "path").unwrap().trim_matches('"')).unwrap();
        let (_, _, text) = all
            .iter()
            .find(|(c, n, _)| c == "none" && n.starts_with(path.hash().as_str()))
            .unwrap();
        let ni = NarInfo::parse(text).unwrap();
        // narHash is SRI here, nix-base32 in the narinfo: equal by value
        let sri = json_field(obj, "narHash").unwrap().trim_matches('"');
        assert!(sri.starts_with("sha256-"));
        assert_eq!(Hash::parse(sri).unwrap(), ni.nar_hash);
        assert_eq!(ni.nar_hash.to_sri_string(), sri);
        assert_eq!(json_field(obj, "narSize").unwrap(), ni.nar_size.to_string());
        let refs = json_strings(json_field(obj, "references").unwrap());
        let ours: Vec<String> = ni.references.iter().map(|r| r.to_absolute()).collect();
        assert_eq!(refs, ours);
        let sigs = json_strings(json_field(obj, "signatures").unwrap());
        let ours: Vec<String> = ni.sigs.iter().map(|s| s.to_string()).collect();
        assert_eq!(sigs, ours);
        let deriver = json_field(obj, "deriver").map(|d| d.trim_matches('"').to_owned());
        assert_eq!(deriver, ni.deriver.as_ref().map(|d| d.to_absolute()));
        let ca = json_field(obj, "ca").map(|d| d.trim_matches('"').to_owned());
        assert_eq!(ca, ni.ca);
    }
}

#[test]
fn nar_hash_of_dumped_tree_matches_nix_hash() {
    let bytes = read("tree.nar");
    assert!(bytes.len() < 50_000);
    let (stats, hash) = nar::validate_hashed(&bytes[..]).unwrap();
    assert_eq!(
        crate::Hash::to_nix32_string(&hash),
        format!("sha256:{}", read_str("tree.nar.sha256").trim())
    );
    assert_eq!(stats.nar_size, bytes.len() as u64);
    assert_eq!((stats.files, stats.executables), (6, 1));
    assert_eq!(stats.dirs, 7);
    assert_eq!(stats.symlinks, 2);
    // deep.txt, seven, eight, empty (0), run, B/x
    assert_eq!(stats.content_size, 5 + 7 + 8 + 19 + 6);

    // walk it: paths, order, executable bit, symlink targets, contents
    let mut r = NarReader::new(&bytes[..]);
    let mut path: Vec<String> = Vec::new();
    let mut seen = Vec::new();
    while let Some(ev) = r.next().unwrap() {
        match ev {
            NarEvent::EntryStart { name } => path.push(String::from_utf8(name).unwrap()),
            NarEvent::EntryEnd => {
                path.pop();
            }
            NarEvent::Regular { executable, size } => {
                let mut contents = vec![0; size as usize];
                let mut got = 0;
                while got < contents.len() {
                    got += r.read_contents(&mut contents[got..]).unwrap();
                }
                let c = String::from_utf8(contents).unwrap();
                seen.push(format!("{} {executable} {c:?}", path.join("/")));
            }
            NarEvent::Symlink { target } => seen.push(format!(
                "{} -> {}",
                path.join("/"),
                String::from_utf8(target).unwrap()
            )),
            NarEvent::DirectoryStart => seen.push(format!("{}/", path.join("/"))),
            NarEvent::DirectoryEnd => {}
        }
    }
    assert_eq!(
        seen,
        [
            "/",
            "B/",
            "B/x false \"upper\\n\"",
            "a/",
            "a/b/",
            "a/b/c/",
            "a/b/c/deep.txt false \"deep\\n\"",
            "a/eight false \"12345678\"",
            "a/empty false \"\"",
            "a/seven false \"1234567\"",
            "bin/",
            "bin/deep-link -> ../a/b/c/deep.txt",
            "bin/run true \"#!/bin/sh\\necho run\\n\"",
            "dangling -> /nowhere/at/all",
            "empty-dir/",
        ]
    );
}

#[test]
fn lone_file_and_symlink_nars() {
    let file = nar::validate(&read("lone-file.nar")[..]).unwrap();
    assert_eq!((file.files, file.dirs, file.symlinks), (1, 0, 0));
    let link = nar::validate(&read("lone-link.nar")[..]).unwrap();
    assert_eq!((link.files, link.dirs, link.symlinks), (0, 0, 1));
    // app.nar is what `nix copy` stored for APP
    let app = read("app.nar");
    let (_, hash) = nar::validate_hashed(&app[..]).unwrap();
    let text = read_str(&format!("cache-none/{}.narinfo", paths_env("APP").hash()));
    assert_eq!(hash, NarInfo::parse(&text).unwrap().nar_hash);
}

#[test]
fn every_truncation_of_real_nars_is_an_error() {
    for name in ["tree.nar", "app.nar", "lone-file.nar", "lone-link.nar"] {
        let bytes = read(name);
        for cut in 0..bytes.len() {
            match nar::validate(&bytes[..cut]) {
                Err(NarError::Truncated(_)) => {}
                other => panic!("{name} cut at {cut}: {other:?}"),
            }
        }
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0; 8]);
        assert!(matches!(
            nar::validate(&longer[..]),
            Err(NarError::TrailingData(_))
        ));
    }
}

#[test]
fn corrupted_real_nars_never_pass_unnoticed() {
    let bytes = read("tree.nar");
    let (_, good) = nar::validate_hashed(&bytes[..]).unwrap();
    let mut accepted = 0;
    for i in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = bytes.clone();
            bad[i] ^= flip;
            // a flip inside file contents (or a symlink target) leaves a valid
            // NAR with another hash; anything structural must be rejected
            if let Ok((_, hash)) = nar::validate_hashed(&bad[..]) {
                assert_ne!(hash, good);
                accepted += 1;
            }
        }
    }
    // only content and target bytes may flip and stay valid
    assert!(accepted > 0 && accepted < 3 * 200, "{accepted}");
}
