//! Parsing of the store URIs we accept: `local` and `local?root=DIR`.

use std::path::PathBuf;

use crate::{StoreError, StoreUri};

pub(crate) fn parse(s: &str) -> Result<StoreUri, StoreError> {
    let bad = || StoreError::BadUri(s.to_string());
    let (scheme, query) = match s.split_once('?') {
        Some((scheme, query)) => (scheme, Some(query)),
        None => (s, None),
    };
    if !(scheme.is_empty() || scheme == "local") {
        return Err(bad());
    }
    let Some(query) = query else {
        return Ok(StoreUri::System);
    };
    let mut root = None;
    for param in query.split('&').filter(|p| !p.is_empty()) {
        match param.split_once('=') {
            Some(("root", value)) if root.is_none() => {
                root = Some(percent_decode(value).ok_or_else(bad)?);
            }
            _ => return Err(bad()),
        }
    }
    match root {
        // `local?` with no parameters is still the system store.
        None => Ok(StoreUri::System),
        Some(dir) if dir.starts_with('/') => Ok(StoreUri::Chroot(PathBuf::from(dir))),
        Some(_) => Err(bad()),
    }
}

/// Nix percent-decodes query values (`local?root=/my%20dir`).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Why `s` was rejected, for `StoreError::BadUri`'s message.
pub(crate) fn explain(s: &str) -> String {
    const USE: &str =
        "use \"local\" or omit it (system store), or \"local?root=/absolute/dir\" (chroot store)";
    let (scheme, query) = s.split_once('?').unwrap_or((s, ""));
    let kind = scheme.split_once("://").map_or(scheme, |(kind, _)| kind);
    let why = if s.starts_with('/') {
        format!("a bare directory is not accepted here, write \"local?root={s}\"")
    } else if kind == "daemon" || kind == "unix" || kind == "auto" {
        "the nix-daemon protocol is not supported: this service reads the Nix database \
         read-only and needs no daemon (see docs/store-access.md)"
            .to_string()
    } else if scheme.contains("://") || !(scheme.is_empty() || scheme == "local") {
        format!("store type {kind:?} is not supported (only local stores can be served)")
    } else {
        let bad_param = query
            .split('&')
            .find(|p| !p.is_empty() && !p.starts_with("root="));
        match bad_param {
            Some(p) => format!("parameter {p:?} is not supported (only root=)"),
            None if query.matches("root=").count() > 1 => "root= is given twice".to_string(),
            None if query.contains('%') && parse(s).is_err() => {
                "root= has a bad percent-encoding or is not UTF-8".to_string()
            }
            None => "root= must be an absolute directory".to_string(),
        }
    };
    format!("{why}; {USE}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system() {
        assert_eq!(parse("").unwrap(), StoreUri::System);
        assert_eq!(parse("local").unwrap(), StoreUri::System);
        assert_eq!(parse("local?").unwrap(), StoreUri::System);
    }

    #[test]
    fn chroot() {
        assert_eq!(
            parse("local?root=/var/lib/x").unwrap(),
            StoreUri::Chroot("/var/lib/x".into())
        );
        assert_eq!(
            parse("local?root=/my%20dir").unwrap(),
            StoreUri::Chroot("/my dir".into())
        );
        assert_eq!(parse("?root=/r").unwrap(), StoreUri::Chroot("/r".into()));
    }

    #[test]
    fn rejected_with_reason() {
        for (uri, needle) in [
            ("daemon", "nix-daemon protocol"),
            ("auto", "nix-daemon protocol"),
            (
                "unix:///nix/var/nix/daemon-socket/socket",
                "nix-daemon protocol",
            ),
            ("ssh://host", "store type \"ssh\""),
            ("ssh-ng://host", "not supported"),
            ("https://cache.nixos.org", "not supported"),
            ("/tmp/store", "local?root=/tmp/store"),
            ("local?root=relative/dir", "absolute"),
            ("local?root=", "absolute"),
            ("local?root=/a&store=/b", "\"store=/b\""),
            ("local?read-only=true", "\"read-only=true\""),
            ("local?root=/a&root=/b", "twice"),
            ("local?root=/a%zz", "percent"),
        ] {
            let err = parse(uri).expect_err(uri);
            let msg = err.to_string();
            assert!(
                matches!(err, StoreError::BadUri(ref s) if s == uri),
                "{uri}: {err:?}"
            );
            assert!(msg.contains(needle), "{uri}: {msg}");
            assert!(msg.contains("local?root="), "{uri}: {msg}");
        }
    }
}
