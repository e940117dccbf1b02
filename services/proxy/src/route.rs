//! Request paths of the binary-cache protocol, parsed strictly.
//!
//! Parsing happens on the raw (still percent-encoded) path so that an
//! encoded slash or dot can never smuggle a traversal past the checks: we
//! never decode, and any `%` is rejected, since no valid name needs one.

use ds_core::{base32, StorePathHash};
use ds_runtime::config::NarCompression;

/// Longest request path we look at; anything longer is malformed.
pub const MAX_PATH: usize = 512;

/// A parsed request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/nix-cache-info`
    CacheInfo,
    /// `/<hash>.narinfo`
    NarInfo(StorePathHash),
    /// `/nar/<hash>-<narhash>.nar[.zst|.xz]`
    Nar {
        /// store path hash part
        hash: StorePathHash,
        /// nix-base32 SHA-256 of the NAR the URL was issued for
        nar_hash: String,
        /// compression requested by the file extension
        compression: NarCompression,
    },
    /// `/metrics`
    Metrics,
    /// `/_ds/v1/announce` (peer protocol: what this node holds)
    Announce,
    /// Well-formed, but nothing we serve (`/log/…`, `/<hash>.ls`, …): 404.
    NotFound,
    /// Malformed: 400 with the reason.
    Bad(&'static str),
}

impl Route {
    /// Label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Route::CacheInfo => "nix-cache-info",
            Route::NarInfo(_) => "narinfo",
            Route::Nar { .. } => "nar",
            Route::Metrics => "metrics",
            Route::Announce => "announce",
            Route::NotFound => "other",
            Route::Bad(_) => "bad",
        }
    }
}

/// Length of a nix-base32 SHA-256.
const NAR_HASH_LEN: usize = 52;

fn hash_part(s: &str) -> Result<StorePathHash, &'static str> {
    if s.len() != 32 {
        return Err("store path hash must be 32 characters");
    }
    StorePathHash::parse(s).map_err(|_| "store path hash is not nix-base32")
}

/// Parse a raw request path (without query string).
pub fn parse(path: &str) -> Route {
    if path.len() > MAX_PATH {
        return Route::Bad("request path too long");
    }
    if path.contains('%') {
        return Route::Bad("percent-encoded characters are not allowed in cache paths");
    }
    if path.contains('\\') || path.contains("//") {
        return Route::Bad("malformed path");
    }
    if path.split('/').any(|seg| seg == ".." || seg == ".") {
        return Route::Bad("path traversal ('.' or '..' segments) is not allowed");
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Route::Bad("path must start with '/'");
    };
    match rest {
        "nix-cache-info" => return Route::CacheInfo,
        "metrics" => return Route::Metrics,
        p if Some(p) == ds_dbus::peer::ANNOUNCE_PATH.strip_prefix('/') => return Route::Announce,
        _ => {}
    }
    if let Some(file) = rest.strip_prefix("nar/") {
        return parse_nar(file);
    }
    if let Some(stem) = rest.strip_suffix(".narinfo") {
        if stem.contains('/') {
            return Route::Bad("narinfo requests are /<hash>.narinfo");
        }
        return match hash_part(stem) {
            Ok(h) => Route::NarInfo(h),
            Err(e) => Route::Bad(e),
        };
    }
    Route::NotFound
}

fn parse_nar(file: &str) -> Route {
    if file.contains('/') {
        return Route::Bad("NAR file names contain no '/'");
    }
    let (stem, compression) = if let Some(s) = file.strip_suffix(".nar.zst") {
        (s, NarCompression::Zstd)
    } else if let Some(s) = file.strip_suffix(".nar.xz") {
        (s, NarCompression::Xz)
    } else if let Some(s) = file.strip_suffix(".nar") {
        (s, NarCompression::None)
    } else if file.contains(".nar.") {
        return Route::NotFound; // a compression we do not produce
    } else {
        return Route::Bad("NAR file names end in .nar, .nar.zst or .nar.xz");
    };
    let Some((hash, nar_hash)) = stem.split_once('-') else {
        return Route::Bad("NAR file names are <store hash>-<nar hash>.nar[.ext]");
    };
    let hash = match hash_part(hash) {
        Ok(h) => h,
        Err(e) => return Route::Bad(e),
    };
    if nar_hash.len() != NAR_HASH_LEN || !base32::is_valid(nar_hash) {
        return Route::Bad("NAR hash in the file name must be 52 nix-base32 characters");
    }
    Route::Nar {
        hash,
        nar_hash: nar_hash.to_string(),
        compression,
    }
}

/// The NAR URL (relative to the cache root) we put in narinfo files.
pub fn nar_url(hash: &StorePathHash, nar_hash_nix32: &str, compression: NarCompression) -> String {
    let ext = match compression {
        NarCompression::None => "",
        NarCompression::Zstd => ".zst",
        NarCompression::Xz => ".xz",
    };
    format!("nar/{hash}-{nar_hash_nix32}.nar{ext}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0c7z1ylqz4f0dd6il8b1ibwx9a4mkbp2";
    const NH: &str = "1dzhhhv0rk4f8d0g4ynwjzwgp3wzb2f0svyn2v8jk0ffzalcxsrj";

    #[test]
    fn good_routes() {
        assert_eq!(parse("/nix-cache-info"), Route::CacheInfo);
        assert_eq!(parse("/metrics"), Route::Metrics);
        assert_eq!(parse("/_ds/v1/announce"), Route::Announce);
        assert_eq!(parse("/_ds/v1/other"), Route::NotFound);
        assert!(matches!(parse(&format!("/{H}.narinfo")), Route::NarInfo(h) if h.as_str() == H));
        for (ext, c) in [
            ("", NarCompression::None),
            (".zst", NarCompression::Zstd),
            (".xz", NarCompression::Xz),
        ] {
            let r = parse(&format!("/nar/{H}-{NH}.nar{ext}"));
            assert_eq!(
                r,
                Route::Nar {
                    hash: StorePathHash::parse(H).unwrap(),
                    nar_hash: NH.into(),
                    compression: c
                }
            );
            let url = nar_url(&StorePathHash::parse(H).unwrap(), NH, c);
            assert_eq!(parse(&format!("/{url}")), r, "nar_url round-trips");
        }
        assert_eq!(parse("/log/abc.drv"), Route::NotFound);
        assert_eq!(parse(&format!("/{H}.ls")), Route::NotFound);
        assert_eq!(parse(&format!("/nar/{H}-{NH}.nar.bz2")), Route::NotFound);
    }

    #[test]
    fn hostile_routes() {
        let bad = [
            "/../etc/passwd".to_string(),
            "/nar/../../etc/passwd".into(),
            "/nar/%2e%2e%2fetc%2fpasswd".into(),
            format!("/{H}%2F.narinfo"),
            format!("/nar/{H}-{NH}%2f.nar"),
            format!("/{}.narinfo", &H[..31]),
            format!("/{H}a.narinfo"),
            "/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo".into(),
            "/0C7Z1YLQZ4F0DD6IL8B1IBWX9A4MKBP2.narinfo".into(),
            format!("/nar/{H}.nar"),
            format!("/nar/{H}-{}.nar", &NH[..51]),
            format!("/nar/{H}-{NH}"),
            format!("/x/../{H}.narinfo"),
            format!("//{H}.narinfo"),
            format!("/./{H}.narinfo"),
            format!("/a\\b/{H}.narinfo"),
            format!("/{}", "a".repeat(600)),
            "nix-cache-info".into(),
        ];
        for p in bad {
            assert!(
                matches!(parse(&p), Route::Bad(_)),
                "{p} must be rejected, got {:?}",
                parse(&p)
            );
        }
    }
}
