//! narinfo files: parse, render, fingerprint.

use crate::{Hash, HashAlgo, PublicKey, SecretKey, Signature, StorePath};

/// NAR file compression as named in narinfo `Compression:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Compression {
    /// `none`
    None,
    /// `xz`
    Xz,
    /// `zstd`
    Zstd,
    /// `bzip2`, `br`, `gzip`, … kept as written.
    Other(String),
}

impl Compression {
    /// Name as written in narinfo.
    pub fn as_str(&self) -> &str {
        match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Other(name) => name,
        }
    }
    /// Parse a name (`none`, `xz`, `zstd`, others kept verbatim).
    ///
    /// `""` becomes `Other("")`; [`NarInfo::parse`] maps an empty or absent
    /// `Compression:` to `bzip2` first, as Nix does.
    pub fn from_name(s: &str) -> Compression {
        match s {
            "none" => Compression::None,
            "xz" => Compression::Xz,
            "zstd" => Compression::Zstd,
            other => Compression::Other(other.to_owned()),
        }
    }
    /// File extension after `.nar` (`""`, `.xz`, `.zst`, …).
    ///
    /// `bzip2` gives `.bz2`, `gzip` `.gz`, and `br`, `lzip`, `lz4` their own
    /// name. Any other name gives `""` (as Nix names such NAR files): the
    /// extension is only cosmetic, clients fetch the narinfo's `URL:`.
    pub fn extension(&self) -> &str {
        match self {
            Compression::None => "",
            Compression::Xz => ".xz",
            Compression::Zstd => ".zst",
            Compression::Other(name) => match name.as_str() {
                "bzip2" => ".bz2",
                "gzip" => ".gz",
                "br" => ".br",
                "lzip" => ".lzip",
                "lz4" => ".lz4",
                _ => "",
            },
        }
    }
}

/// Errors parsing narinfo text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NarInfoError {
    /// A line without `: `.
    #[error("narinfo line {0}: expected 'Key: value'")]
    BadLine(usize),
    /// Required field absent.
    #[error("narinfo lacks required field {0}")]
    Missing(&'static str),
    /// Field given twice (other than Sig).
    #[error("narinfo field {0} appears twice")]
    Duplicate(String),
    /// Field value invalid.
    #[error("narinfo field {field}: {reason}")]
    BadValue {
        /// field name
        field: &'static str,
        /// why
        reason: String,
    },
}

/// A parsed narinfo. Unknown keys are ignored on parse (as Nix does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    /// `StorePath:`
    pub store_path: StorePath,
    /// `URL:` relative to the cache root.
    pub url: String,
    /// `Compression:` (Nix defaults to bzip2 when absent).
    pub compression: Compression,
    /// `FileHash:`
    pub file_hash: Option<Hash>,
    /// `FileSize:`
    pub file_size: Option<u64>,
    /// `NarHash:`
    pub nar_hash: Hash,
    /// `NarSize:`
    pub nar_size: u64,
    /// `References:` (sorted when rendered).
    pub references: Vec<StorePath>,
    /// `Deriver:` (basename in the file).
    pub deriver: Option<StorePath>,
    /// `Sig:` lines.
    pub sigs: Vec<Signature>,
    /// `CA:`
    pub ca: Option<String>,
}

impl NarInfo {
    /// Parse narinfo text.
    ///
    /// Accepts what Nix writes: `Key: value` lines, an empty `References: `,
    /// `Deriver: unknown-deriver` (= none), hashes in any encoding. Unknown
    /// keys are ignored; blank lines are skipped; the final newline is
    /// optional. Stricter than Nix: a known field may not appear twice
    /// (except `Sig`), and every `Sig:` must be a well-formed signature.
    /// References are sorted and deduplicated (Nix keeps them in a set).
    pub fn parse(s: &str) -> Result<NarInfo, NarInfoError> {
        let mut seen: Vec<&'static str> = Vec::new();
        let mut store_path = None;
        let mut url = None;
        let mut compression = None;
        let mut file_hash = None;
        let mut file_size = None;
        let mut nar_hash = None;
        let mut nar_size = None;
        let mut references = Vec::new();
        let mut deriver = None;
        let mut sigs = Vec::new();
        let mut ca = None;

        for (i, line) in s.split_terminator('\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let (key, value) = line.split_once(':').ok_or(NarInfoError::BadLine(i + 1))?;
            let value = match value.strip_prefix(' ') {
                Some(v) => v,
                None if value.is_empty() => value,
                None => return Err(NarInfoError::BadLine(i + 1)),
            };
            let Some(field) = FIELDS.iter().copied().find(|f| *f == key) else {
                continue; // unknown key: ignored, as Nix does
            };
            if field != "Sig" {
                if seen.contains(&field) {
                    return Err(NarInfoError::Duplicate(field.to_owned()));
                }
                seen.push(field);
            }
            let bad = |reason: String| NarInfoError::BadValue { field, reason };
            match field {
                "StorePath" => {
                    store_path = Some(StorePath::parse(value).map_err(|e| bad(e.to_string()))?)
                }
                "URL" => {
                    if value.is_empty() {
                        return Err(bad("empty".into()));
                    }
                    url = Some(value.to_owned());
                }
                // Nix: an empty Compression means the historical default
                "Compression" if value.is_empty() => compression = Some(bzip2()),
                "Compression" => compression = Some(Compression::from_name(value)),
                "FileHash" => file_hash = Some(Hash::parse(value).map_err(|e| bad(e.to_string()))?),
                "FileSize" => {
                    file_size = Some(parse_u64(value).ok_or_else(|| bad(not_number(value)))?)
                }
                "NarHash" => nar_hash = Some(Hash::parse(value).map_err(|e| bad(e.to_string()))?),
                "NarSize" => match parse_u64(value) {
                    Some(0) => {
                        return Err(bad("NAR size 0 (Nix treats the file as corrupt)".into()))
                    }
                    Some(n) => nar_size = Some(n),
                    None => return Err(bad(not_number(value))),
                },
                "References" => {
                    for r in value.split(' ').filter(|r| !r.is_empty()) {
                        references
                            .push(StorePath::from_basename(r).map_err(|e| bad(e.to_string()))?);
                    }
                    references.sort();
                    references.dedup();
                }
                "Deriver" if value == "unknown-deriver" => {}
                "Deriver" => {
                    deriver = Some(StorePath::from_basename(value).map_err(|e| bad(e.to_string()))?)
                }
                "Sig" => sigs.push(Signature::parse(value).map_err(|e| bad(e.to_string()))?),
                "CA" => {
                    check_ca(value).map_err(bad)?;
                    ca = Some(value.to_owned());
                }
                _ => unreachable!("every name in FIELDS is handled"),
            }
        }
        Ok(NarInfo {
            store_path: store_path.ok_or(NarInfoError::Missing("StorePath"))?,
            url: url.ok_or(NarInfoError::Missing("URL"))?,
            compression: compression.unwrap_or_else(bzip2),
            file_hash,
            file_size,
            nar_hash: nar_hash.ok_or(NarInfoError::Missing("NarHash"))?,
            nar_size: nar_size.ok_or(NarInfoError::Missing("NarSize"))?,
            references,
            deriver,
            sigs,
            ca,
        })
    }
    /// Render in Nix's field order.
    ///
    /// Hashes are written as `algo:<nix-base32>`, references sorted and
    /// deduplicated, `Sig:` lines in the order of `sigs` (Nix writes them
    /// sorted). `FileHash`/`FileSize`/`Deriver`/`CA` are left out when
    /// absent. Byte-identical to Nix's `NarInfo::to_string` for what Nix
    /// itself writes.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(512);
        // Writing to a String cannot fail.
        let _ = writeln!(out, "StorePath: {}", self.store_path);
        let _ = writeln!(out, "URL: {}", self.url);
        let _ = writeln!(out, "Compression: {}", self.compression.as_str());
        if let Some(h) = &self.file_hash {
            let _ = writeln!(out, "FileHash: {}", h.to_nix32_string());
        }
        if let Some(n) = self.file_size {
            let _ = writeln!(out, "FileSize: {n}");
        }
        let _ = writeln!(out, "NarHash: {}", self.nar_hash.to_nix32_string());
        let _ = writeln!(out, "NarSize: {}", self.nar_size);
        out.push_str("References: ");
        for (i, r) in self.sorted_references().iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(&r.basename());
        }
        out.push('\n');
        if let Some(d) = &self.deriver {
            let _ = writeln!(out, "Deriver: {}", d.basename());
        }
        for sig in &self.sigs {
            let _ = writeln!(out, "Sig: {sig}");
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(out, "CA: {ca}");
        }
        out
    }
    /// The signed fingerprint of this path.
    pub fn fingerprint(&self) -> String {
        // Nix signs its reference *set*: sorted and without duplicates.
        fingerprint(
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.sorted_references(),
        )
    }
    /// True iff some `Sig:` is a valid signature by `key` over the fingerprint.
    pub fn verify(&self, key: &PublicKey) -> bool {
        let fp = self.fingerprint();
        self.sigs.iter().any(|sig| key.verify(fp.as_bytes(), sig))
    }
    /// Whether a client trusting `keys` would accept this narinfo: some
    /// `Sig:` verifies with one of them, or the path is content-addressed
    /// (`CA:`; Nix then checks the content against the name itself).
    pub fn is_trusted(&self, keys: &[PublicKey]) -> bool {
        if self.ca.is_some() {
            return true;
        }
        let fp = self.fingerprint();
        self.sigs
            .iter()
            .any(|sig| keys.iter().any(|k| k.verify(fp.as_bytes(), sig)))
    }
    /// Keep only the signatures that verify with one of `keys` (a relayed
    /// narinfo carries no signature a client could not check).
    pub fn retain_trusted_sigs(&mut self, keys: &[PublicKey]) {
        let fp = self.fingerprint();
        self.sigs
            .retain(|sig| keys.iter().any(|k| k.verify(fp.as_bytes(), sig)));
    }
    /// Sign with `key`, replacing an earlier signature by a key of the same name.
    pub fn sign(&mut self, key: &SecretKey) {
        let sig = key.sign(self.fingerprint().as_bytes());
        self.sigs.retain(|s| s.key_name != key.name);
        self.sigs.push(sig);
    }
    /// References sorted and deduplicated, as Nix keeps them.
    fn sorted_references(&self) -> Vec<StorePath> {
        let mut refs = self.references.clone();
        refs.sort();
        refs.dedup();
        refs
    }
}

/// `1;<path>;<narhash nix32>;<narsize>;<refs full paths, comma-separated>`
///
/// References are joined in the order given; Nix signs them sorted (as
/// [`NarInfo::fingerprint`] does).
pub fn fingerprint(
    path: &StorePath,
    nar_hash: &Hash,
    nar_size: u64,
    references: &[StorePath],
) -> String {
    let refs: Vec<String> = references.iter().map(StorePath::to_absolute).collect();
    format!(
        "1;{path};{};{nar_size};{}",
        nar_hash.to_nix32_string(),
        refs.join(",")
    )
}

/// The fields `NarInfo::parse` knows; any other key is ignored.
const FIELDS: &[&str] = &[
    "StorePath",
    "URL",
    "Compression",
    "FileHash",
    "FileSize",
    "NarHash",
    "NarSize",
    "References",
    "Deriver",
    "Sig",
    "CA",
];

fn bzip2() -> Compression {
    Compression::Other("bzip2".to_owned())
}

/// Decimal digits only (no sign, no spaces), as Nix's `string2Int`.
fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn not_number(s: &str) -> String {
    format!("{s:?} is not a decimal number")
}

/// `text:sha256:<hash>` or `fixed:[r:]<algo>:<hash>`, as Nix 2.8 parses CA.
fn check_ca(value: &str) -> Result<(), String> {
    let (hash, want_sha256) = if let Some(h) = value.strip_prefix("text:") {
        (h, true)
    } else if let Some(rest) = value.strip_prefix("fixed:") {
        (rest.strip_prefix("r:").unwrap_or(rest), false)
    } else {
        return Err(format!(
            "{value:?} is neither text: nor fixed: content address"
        ));
    };
    let hash = Hash::parse(hash).map_err(|e| e.to_string())?;
    if want_sha256 && hash.algo != HashAlgo::Sha256 {
        return Err("text: content address must use sha256".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIB: &str = "/nix/store/nbbl1nn3g6c8r4mdrax2aisd6lsxxi94-tb-lib";
    const SAMPLE: &str = "StorePath: /nix/store/xxbv38w7a09qr5qm0c8994a6mr8vxgxy-tb-app
URL: nar/0id6xhadfgzqyh0ak82wlkf7dk181jxp8w775wzn4wimdv0s10m0.nar.xz
Compression: xz
FileHash: sha256:0id6xhadfgzqyh0ak82wlkf7dk181jxp8w775wzn4wimdv0s10m0
FileSize: 292
NarHash: sha256:1r6znnbim37yh1pwnv4x9zgny5chanmzwxvl8klygl9lixqir4pr
NarSize: 616
References: nbbl1nn3g6c8r4mdrax2aisd6lsxxi94-tb-lib q6q8wnwz17lrnkycs2w6cm9pzvaldy2g-tb-leaf
Deriver: 91d56q14qpdmrxkr7wssl4ykvhqxd9na-tb-app.drv
Sig: ds-core-test-1:9ttiJi4lym6LQHq5JkSukkde61cpTasGyIOymrSCEe2LYgcpyAl8rXYV1x3EnOFebHWPai1EjMmhDrz/imQKAw==
";

    fn sample() -> NarInfo {
        NarInfo::parse(SAMPLE).unwrap()
    }

    #[test]
    fn parse_render_roundtrip() {
        let ni = sample();
        assert_eq!(ni.store_path.name(), "tb-app");
        assert_eq!(ni.compression, Compression::Xz);
        assert_eq!(ni.file_size, Some(292));
        assert_eq!(ni.nar_size, 616);
        assert_eq!(ni.references.len(), 2);
        assert_eq!(ni.references[0].to_absolute(), LIB);
        assert_eq!(ni.deriver.as_ref().unwrap().name(), "tb-app.drv");
        assert_eq!(ni.sigs.len(), 1);
        assert_eq!(ni.ca, None);
        assert_eq!(ni.render(), SAMPLE);
        assert_eq!(NarInfo::parse(&ni.render()).unwrap(), ni);
    }

    #[test]
    fn fingerprint_format() {
        assert_eq!(
            sample().fingerprint(),
            "1;/nix/store/xxbv38w7a09qr5qm0c8994a6mr8vxgxy-tb-app;\
             sha256:1r6znnbim37yh1pwnv4x9zgny5chanmzwxvl8klygl9lixqir4pr;616;\
             /nix/store/nbbl1nn3g6c8r4mdrax2aisd6lsxxi94-tb-lib,\
             /nix/store/q6q8wnwz17lrnkycs2w6cm9pzvaldy2g-tb-leaf"
        );
        let ni = sample();
        // the free function keeps the order it is given
        let rev: Vec<_> = ni.references.iter().rev().cloned().collect();
        let fp = fingerprint(&ni.store_path, &ni.nar_hash, 616, &rev);
        assert!(fp.ends_with(&format!(";616;{},{LIB}", rev[0])));
        assert!(fingerprint(&ni.store_path, &ni.nar_hash, 1, &[]).ends_with(";1;"));
    }

    #[test]
    fn sign_and_verify() {
        let key = SecretKey::from_seed("k-1", [1; 32]);
        let mut ni = sample();
        assert!(!ni.verify(&key.public()));
        ni.sign(&key);
        ni.sign(&key); // replaces, does not pile up
        assert_eq!(ni.sigs.len(), 2);
        assert!(ni.verify(&key.public()));
        let reparsed = NarInfo::parse(&ni.render()).unwrap();
        assert!(reparsed.verify(&key.public()));
        // anything inside the fingerprint breaks it
        let mut tampered = ni.clone();
        tampered.nar_size += 1;
        assert!(!tampered.verify(&key.public()));
        let mut tampered = ni.clone();
        tampered.references.pop();
        assert!(!tampered.verify(&key.public()));
        // URL and compression are outside it
        let mut moved = ni.clone();
        moved.url = "nar/elsewhere.nar".into();
        moved.compression = Compression::None;
        assert!(moved.verify(&key.public()));
    }

    #[test]
    fn lenient_where_nix_is() {
        let ni = sample();
        // unknown keys, blank lines, no final newline, references out of order
        let text = SAMPLE
            .replace("Compression: xz\n", "Compression: xz\nSystem: x86_64-linux\n\n")
            .replace(
                "References: nbbl1nn3g6c8r4mdrax2aisd6lsxxi94-tb-lib q6q8wnwz17lrnkycs2w6cm9pzvaldy2g-tb-leaf",
                "References:  q6q8wnwz17lrnkycs2w6cm9pzvaldy2g-tb-leaf nbbl1nn3g6c8r4mdrax2aisd6lsxxi94-tb-lib",
            );
        let text = text.trim_end();
        assert_eq!(NarInfo::parse(text).unwrap(), ni);
        // NarHash in base16 or SRI: same value, rendered as nix32
        let hex = Hash::parse("sha256:1r6znnbim37yh1pwnv4x9zgny5chanmzwxvl8klygl9lixqir4pr")
            .unwrap()
            .to_base16_string();
        let text = SAMPLE.replace(
            "NarHash: sha256:1r6znnbim37yh1pwnv4x9zgny5chanmzwxvl8klygl9lixqir4pr",
            &format!("NarHash: {hex}"),
        );
        let parsed = NarInfo::parse(&text).unwrap();
        assert_eq!(parsed, ni);
        assert_eq!(parsed.render(), SAMPLE);
        // absent or empty Compression = bzip2; optional fields absent
        let minimal = "StorePath: /nix/store/q6q8wnwz17lrnkycs2w6cm9pzvaldy2g-tb-leaf\n\
                       URL: nar/x.nar.bz2\n\
                       NarHash: sha256:1risrl3151a30b1mvg2f2mnnw304ydhc8dr9d5vrqhlirh6r4dc7\n\
                       NarSize: 136\n\
                       Deriver: unknown-deriver\n";
        let m = NarInfo::parse(minimal).unwrap();
        assert_eq!(m.compression, Compression::Other("bzip2".into()));
        assert_eq!(m.compression.extension(), ".bz2");
        assert_eq!(
            (m.file_hash.clone(), m.file_size, m.deriver.clone()),
            (None, None, None)
        );
        assert!(m.references.is_empty() && m.sigs.is_empty());
        assert_eq!(
            m.render(),
            "StorePath: /nix/store/q6q8wnwz17lrnkycs2w6cm9pzvaldy2g-tb-leaf\n\
             URL: nar/x.nar.bz2\nCompression: bzip2\n\
             NarHash: sha256:1risrl3151a30b1mvg2f2mnnw304ydhc8dr9d5vrqhlirh6r4dc7\n\
             NarSize: 136\nReferences: \n"
        );
        assert_eq!(NarInfo::parse(&m.render()).unwrap(), m);
        let empty = minimal.replace("URL", "Compression: \nURL");
        assert_eq!(NarInfo::parse(&empty).unwrap().compression, m.compression);
        // "References:" with nothing at all after the colon
        let bare = format!("{minimal}References:\n");
        assert!(NarInfo::parse(&bare).unwrap().references.is_empty());
    }

    #[test]
    fn content_addressed() {
        let ca = "fixed:r:sha256:1w0ax7y1jl4gipwfh870p3wiip3zj81f5mhnr6h9zbzaw00y2b26";
        let text = format!("{SAMPLE}CA: {ca}\n");
        let ni = NarInfo::parse(&text).unwrap();
        assert_eq!(ni.ca.as_deref(), Some(ca));
        assert_eq!(ni.render(), text);
        for ok in [
            "fixed:sha256:1w0ax7y1jl4gipwfh870p3wiip3zj81f5mhnr6h9zbzaw00y2b26",
            "text:sha256:1w0ax7y1jl4gipwfh870p3wiip3zj81f5mhnr6h9zbzaw00y2b26",
            "fixed:r:sha1:cx2j60ggrnmqjrs54c0yzkdbi5kla8q1",
        ] {
            assert!(
                NarInfo::parse(&format!("{SAMPLE}CA: {ok}\n")).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "",
            "fixed:",
            "nar:sha256:x",
            "text:sha1:cx2j60ggrnmqjrs54c0yzkdbi5kla8q1",
        ] {
            let err = NarInfo::parse(&format!("{SAMPLE}CA: {bad}\n")).unwrap_err();
            assert!(
                matches!(err, NarInfoError::BadValue { field: "CA", .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn errors() {
        use NarInfoError::*;
        let without = |key: &str| {
            SAMPLE
                .lines()
                .filter(|l| !l.starts_with(key))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        };
        assert_eq!(
            NarInfo::parse(&without("StorePath")),
            Err(Missing("StorePath"))
        );
        assert_eq!(NarInfo::parse(&without("URL")), Err(Missing("URL")));
        assert_eq!(NarInfo::parse(&without("NarHash")), Err(Missing("NarHash")));
        assert_eq!(NarInfo::parse(&without("NarSize")), Err(Missing("NarSize")));
        assert_eq!(NarInfo::parse(""), Err(Missing("StorePath")));
        assert_eq!(
            NarInfo::parse(&format!("{SAMPLE}garbage\n")),
            Err(BadLine(11))
        );
        assert_eq!(NarInfo::parse("URL:x\n"), Err(BadLine(1)));
        assert_eq!(
            NarInfo::parse(&format!("{SAMPLE}NarSize: 616\n")),
            Err(Duplicate("NarSize".into()))
        );
        let field_of = |from: &str, to: &str| match NarInfo::parse(&SAMPLE.replace(from, to)) {
            Err(BadValue { field, .. }) => field,
            other => panic!("{from} -> {to}: {other:?}"),
        };
        assert_eq!(field_of("/nix/store/xx", "/nix/stor/xx"), "StorePath");
        assert_eq!(field_of("NarSize: 616", "NarSize: 0"), "NarSize");
        assert_eq!(field_of("NarSize: 616", "NarSize: -1"), "NarSize");
        assert_eq!(field_of("NarSize: 616", "NarSize: +616"), "NarSize");
        assert_eq!(field_of("FileSize: 292", "FileSize: 2 92"), "FileSize");
        assert_eq!(
            field_of("NarSize: 616", "NarSize: 99999999999999999999"),
            "NarSize"
        );
        assert_eq!(
            field_of("NarHash: sha256:1r6", "NarHash: sha256:1e6"),
            "NarHash"
        );
        assert_eq!(
            field_of("FileHash: sha256:0", "FileHash: sha256:"),
            "FileHash"
        );
        assert_eq!(field_of("-tb-lib ", "-.. "), "References");
        assert_eq!(field_of("-tb-lib ", "-tb-lib/x "), "References");
        assert_eq!(
            field_of("Deriver: 91d", "Deriver: /nix/store/91d"),
            "Deriver"
        );
        let url = "URL: nar/0id6xhadfgzqyh0ak82wlkf7dk181jxp8w775wzn4wimdv0s10m0.nar.xz";
        assert_eq!(field_of(url, "URL: "), "URL");
        // bad base64, wrong length, missing name in a Sig
        assert_eq!(field_of("imQKAw==", "imQKAw=!"), "Sig");
        assert_eq!(field_of("imQKAw==", "imQK"), "Sig");
        assert_eq!(field_of("Sig: ds-core-test-1:", "Sig: "), "Sig");
    }

    #[test]
    fn compression_names() {
        for (name, c, ext) in [
            ("none", Compression::None, ""),
            ("xz", Compression::Xz, ".xz"),
            ("zstd", Compression::Zstd, ".zst"),
            ("bzip2", Compression::Other("bzip2".into()), ".bz2"),
            ("br", Compression::Other("br".into()), ".br"),
            ("gzip", Compression::Other("gzip".into()), ".gz"),
            ("lz4", Compression::Other("lz4".into()), ".lz4"),
            ("lzip", Compression::Other("lzip".into()), ".lzip"),
            ("weird", Compression::Other("weird".into()), ""),
        ] {
            assert_eq!(Compression::from_name(name), c);
            assert_eq!(c.as_str(), name);
            assert_eq!(c.extension(), ext, "{name}");
        }
    }
}
