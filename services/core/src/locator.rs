//! Locators: where the bytes of a NAR can be had.
//!
//! The mapper answers "which NAR is this store path, and where can it be
//! fetched"; the fetcher takes that list and gets the bytes through the
//! backend that understands each locator. A locator is a value, written as
//! one string so it travels over D-Bus, in config files and in index exports
//! unchanged, and so `busctl` shows something a person can read:
//!
//! | string | meaning |
//! |---|---|
//! | `peer:http://10.0.0.2:5496` | a distributed-store peer that holds the path, or is fetching it now; its `/nar/<hash>-<narhash>.nar` is the uncompressed NAR, with Range |
//! | `lead:http://10.0.0.2:5496` | the peer chosen (rendezvous hashing) to fetch the NAR from its upstream for the fleet; asked with `X-Distributed-Store-Hop: lead` |
//! | `file:https://cache.nixos.org/nar/x.nar.xz#compression=xz&fileHash=sha256:…&fileSize=123` | a binary-cache NAR file (upstream, mirror); the fragment carries the file facts of the narinfo it came from |
//! | `ipfs:bafy…`, `btih:…`, `s3://bucket/key`, `exec:…` | other networks: kept as [`Locator::Other`] until a backend for the scheme is configured |
//!
//! Unknown schemes are kept rather than refused, so that a mapper can carry
//! locators for a backend this build has and another node lacks.

use std::fmt;

use crate::{Compression, Hash};

/// Where a NAR can be fetched.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Locator {
    /// A peer proxy (base URL) that holds the path or is fetching it.
    Peer(String),
    /// A peer (base URL) that fetches the NAR from its upstream on the
    /// fleet's behalf and streams it while it downloads.
    Lead(String),
    /// A NAR file of a binary cache.
    File(FileLocator),
    /// A locator for a backend this code does not know (`scheme:value`).
    Other {
        /// The part before the first `:`.
        scheme: String,
        /// The rest.
        value: String,
    },
}

/// A NAR file in a binary cache: its URL and the file facts from the
/// narinfo that named it (compression, hash and size of the file as served).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileLocator {
    /// Absolute http(s) URL of the file.
    pub url: String,
    /// How the file is compressed.
    pub compression: Compression,
    /// SHA-256 of the file as served, when the narinfo had it.
    pub file_hash: Option<Hash>,
    /// Size of the file as served, when the narinfo had it.
    pub file_size: Option<u64>,
}

/// Facts about a NAR file that travel in a locator's `#fragment`
/// (`compression`, `fileHash`, `fileSize`): what a backend needs to turn the
/// file into the NAR and to check the file before decompressing it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileFacts {
    /// How the file is compressed.
    pub compression: Compression,
    /// SHA-256 of the file, when known.
    pub file_hash: Option<Hash>,
    /// Size of the file, when known.
    pub file_size: Option<u64>,
}

impl Default for FileFacts {
    fn default() -> Self {
        FileFacts {
            compression: Compression::None,
            file_hash: None,
            file_size: None,
        }
    }
}

/// Parse `compression=…&fileHash=…&fileSize=…` (unknown keys ignored: later
/// versions may add facts).
fn parse_facts(fragment: &str) -> Result<FileFacts, String> {
    let mut f = FileFacts::default();
    for kv in fragment.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "compression" => f.compression = Compression::from_name(v),
            "fileHash" => f.file_hash = Some(Hash::parse(v).map_err(|e| format!("fileHash: {e}"))?),
            "fileSize" => f.file_size = Some(v.parse().map_err(|_| format!("fileSize {v:?}"))?),
            _ => {}
        }
    }
    Ok(f)
}

/// Errors parsing a locator string.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LocatorError {
    /// No `scheme:` prefix.
    #[error("locator {0:?} has no scheme (expected e.g. peer:http://host:port)")]
    NoScheme(String),
    /// A peer/lead/file locator whose URL is not http(s).
    #[error("locator {0:?}: not an http:// or https:// URL")]
    BadUrl(String),
    /// A bad `fileHash`/`fileSize`/`compression` in a file locator.
    #[error("locator {locator:?}: {reason}")]
    BadField {
        /// the locator
        locator: String,
        /// why
        reason: String,
    },
}

fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"));
    matches!(rest, Some(r) if !r.is_empty() && !r.starts_with('/'))
        && !s.contains(|c: char| c.is_whitespace() || c.is_control())
}

impl Locator {
    /// Parse the string form (see the module docs).
    pub fn parse(s: &str) -> Result<Locator, LocatorError> {
        let (scheme, value) = s
            .split_once(':')
            .filter(|(scheme, _)| {
                !scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            })
            .ok_or_else(|| LocatorError::NoScheme(s.to_string()))?;
        let url = |v: &str| {
            if is_http_url(v) {
                Ok(v.trim_end_matches('/').to_string())
            } else {
                Err(LocatorError::BadUrl(s.to_string()))
            }
        };
        match scheme {
            "peer" => Ok(Locator::Peer(url(value)?)),
            "lead" => Ok(Locator::Lead(url(value)?)),
            "file" => {
                let (u, fragment) = value.split_once('#').unwrap_or((value, ""));
                if !is_http_url(u) {
                    return Err(LocatorError::BadUrl(s.to_string()));
                }
                let bad = |reason: String| LocatorError::BadField {
                    locator: s.to_string(),
                    reason,
                };
                let facts = parse_facts(fragment).map_err(bad)?;
                let f = FileLocator {
                    url: u.to_string(),
                    compression: facts.compression,
                    file_hash: facts.file_hash,
                    file_size: facts.file_size,
                };
                Ok(Locator::File(f))
            }
            _ => Ok(Locator::Other {
                scheme: scheme.to_string(),
                value: value.to_string(),
            }),
        }
    }

    /// Build a locator for another network (`ipfs`, `btih`, `s3`, `mirror`,
    /// `exec`, …) whose bytes are a NAR *file* with the given facts: the
    /// string form is `scheme:value#compression=…&fileHash=…&fileSize=…`.
    /// `value` must not contain `#`.
    pub fn other(scheme: &str, value: &str, facts: &FileFacts) -> Locator {
        let mut v = format!("{value}#compression={}", facts.compression.as_str());
        if let Some(h) = &facts.file_hash {
            v.push_str(&format!("&fileHash={}", h.to_nix32_string()));
        }
        if let Some(n) = facts.file_size {
            v.push_str(&format!("&fileSize={n}"));
        }
        Locator::Other {
            scheme: scheme.to_string(),
            value: v,
        }
    }

    /// For a [`Locator::Other`]: the part of the value before `#` (the CID,
    /// info-hash, key, …) and the file facts after it. Without a fragment
    /// the file is taken as an uncompressed NAR with unknown hash and size.
    /// `None` for peer/lead/file locators.
    pub fn other_parts(&self) -> Option<Result<(&str, FileFacts), LocatorError>> {
        let Locator::Other { scheme, value } = self else {
            return None;
        };
        let (v, fragment) = value.split_once('#').unwrap_or((value, ""));
        Some(
            parse_facts(fragment)
                .map(|f| (v, f))
                .map_err(|reason| LocatorError::BadField {
                    locator: format!("{scheme}:{value}"),
                    reason,
                }),
        )
    }

    /// The scheme (`peer`, `lead`, `file`, …): which backend handles it.
    pub fn scheme(&self) -> &str {
        match self {
            Locator::Peer(_) => "peer",
            Locator::Lead(_) => "lead",
            Locator::File(_) => "file",
            Locator::Other { scheme, .. } => scheme,
        }
    }
}

impl fmt::Display for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Locator::Peer(u) => write!(f, "peer:{u}"),
            Locator::Lead(u) => write!(f, "lead:{u}"),
            Locator::File(file) => {
                write!(
                    f,
                    "file:{}#compression={}",
                    file.url,
                    file.compression.as_str()
                )?;
                if let Some(h) = &file.file_hash {
                    write!(f, "&fileHash={}", h.to_nix32_string())?;
                }
                if let Some(n) = file.file_size {
                    write!(f, "&fileSize={n}")?;
                }
                Ok(())
            }
            Locator::Other { scheme, value } => write!(f, "{scheme}:{value}"),
        }
    }
}

impl std::str::FromStr for Locator {
    type Err = LocatorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Locator::parse(s)
    }
}

/// Rendezvous (highest-random-weight) order of `nodes` for `key`: every node
/// that sees the same set computes the same order, and removing a node only
/// moves the keys it was first for. Used to pick, without a coordinator, the
/// one node of a fleet that fetches a NAR from upstream for everyone (the
/// first live node in this order) and who takes over when it dies (the next).
pub fn rendezvous_order<'a>(key: &[u8], nodes: &[&'a str]) -> Vec<&'a str> {
    use sha2::{Digest, Sha256};
    let mut weighted: Vec<([u8; 32], &'a str)> = nodes
        .iter()
        .map(|n| {
            let mut h = Sha256::new();
            h.update(n.as_bytes());
            h.update([0]);
            h.update(key);
            (h.finalize().into(), *n)
        })
        .collect();
    weighted.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    weighted.dedup_by(|a, b| a.1 == b.1);
    weighted.into_iter().map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in [
            "peer:http://10.0.0.2:5496",
            "lead:https://build1.example:5496",
            "file:https://cache.nixos.org/nar/abc.nar.xz#compression=xz&fileHash=sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s&fileSize=123",
            "file:http://m/nar/abc.nar#compression=none",
            "ipfs:bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
            "btih:0123456789abcdef0123456789abcdef01234567",
            "s3://bucket/nar/abc.nar.zst",
        ] {
            let l = Locator::parse(s).unwrap();
            assert_eq!(l.to_string(), s, "{s}");
            assert_eq!(Locator::parse(&l.to_string()).unwrap(), l);
        }
        assert_eq!(
            Locator::parse("peer:http://h:1/").unwrap(),
            Locator::Peer("http://h:1".into())
        );
        assert_eq!(Locator::parse("s3://bucket/key").unwrap().scheme(), "s3");
    }

    #[test]
    fn file_facts() {
        let l = Locator::parse("file:http://u/nar/x.nar.zst#compression=zstd&fileSize=9&future=1")
            .unwrap();
        match l {
            Locator::File(f) => {
                assert_eq!(f.compression, Compression::Zstd);
                assert_eq!(f.file_size, Some(9));
                assert_eq!(f.file_hash, None);
                assert_eq!(f.url, "http://u/nar/x.nar.zst");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_facts() {
        let h = Hash::parse("sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s").unwrap();
        let facts = FileFacts {
            compression: Compression::Xz,
            file_hash: Some(h),
            file_size: Some(42),
        };
        let l = Locator::other("ipfs", "bafyabc", &facts);
        let s = l.to_string();
        assert_eq!(
            s,
            "ipfs:bafyabc#compression=xz&fileHash=sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s&fileSize=42"
        );
        let back = Locator::parse(&s).unwrap();
        let (v, f) = back.other_parts().unwrap().unwrap();
        assert_eq!((v, f), ("bafyabc", facts));
        let exec = Locator::parse("exec:x").unwrap();
        let (v, f) = exec.other_parts().unwrap().unwrap();
        assert_eq!((v, f), ("x", FileFacts::default()));
        assert!(Locator::parse("s3:k#fileSize=x")
            .unwrap()
            .other_parts()
            .unwrap()
            .is_err());
        assert!(Locator::parse("peer:http://h:1")
            .unwrap()
            .other_parts()
            .is_none());
    }

    #[test]
    fn rejects() {
        for s in [
            "",
            "nocolon",
            ":x",
            "peer:ftp://x",
            "peer:http://",
            "lead:http:///x",
            "peer:http://a b",
            "file:/etc/passwd",
            "file:http://u#fileSize=x",
            "file:http://u#fileHash=sha256:zz",
            "bad scheme:x",
        ] {
            assert!(Locator::parse(s).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn rendezvous_is_stable_and_minimal() {
        let nodes = ["http://a:1", "http://b:1", "http://c:1", "http://d:1"];
        let keys: Vec<Vec<u8>> = (0..200u32).map(|i| i.to_le_bytes().to_vec()).collect();
        let mut firsts = std::collections::HashMap::new();
        for k in &keys {
            let o = rendezvous_order(k, &nodes);
            assert_eq!(o.len(), 4);
            // Input order does not matter.
            let mut rev = nodes;
            rev.reverse();
            assert_eq!(rendezvous_order(k, &rev), o);
            *firsts.entry(o[0]).or_insert(0) += 1;
            // Removing the first node makes the second first; nothing else moves.
            let rest: Vec<&str> = nodes.iter().copied().filter(|n| *n != o[0]).collect();
            assert_eq!(rendezvous_order(k, &rest)[0], o[1]);
            // Removing another node does not change who is first.
            let rest: Vec<&str> = nodes.iter().copied().filter(|n| *n != o[3]).collect();
            assert_eq!(rendezvous_order(k, &rest)[0], o[0]);
        }
        // Spread over all nodes (200 keys, 4 nodes: each well above 20).
        assert_eq!(firsts.len(), 4);
        assert!(firsts.values().all(|&n| n > 20), "{firsts:?}");
    }
}
