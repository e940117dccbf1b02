//! Store paths: `/nix/store/<32-char nix-base32 hash>-<name>`.

/// The logical store directory. Chroot stores keep this logical dir.
pub const STORE_DIR: &str = "/nix/store";

/// Errors parsing store paths and hash parts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StorePathError {
    /// Not under `/nix/store/`.
    #[error("{0:?} is not in the store directory /nix/store")]
    NotInStore(String),
    /// Hash part not 32 chars.
    #[error("store path hash {0:?} must be 32 characters")]
    BadHashLength(String),
    /// Hash part not nix-base32.
    #[error("store path hash {0:?} is not nix-base32")]
    BadHashChars(String),
    /// Missing `-name`.
    #[error("store path {0:?} has no name")]
    NoName(String),
    /// Bad name characters, leading dot, or longer than 211.
    #[error("store path name {0:?} is invalid")]
    BadName(String),
}

/// Length of the hash part in characters (20 bytes in nix-base32).
pub const HASH_LEN: usize = 32;

/// Longest store path name Nix accepts.
pub const MAX_NAME_LEN: usize = 211;

/// True for a valid store path name: 1..=211 characters of
/// `[A-Za-z0-9+._?=-]`, not starting with `.` (which also rules out `.`
/// and `..`).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c))
}

/// The 32-character hash part of a store path, validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePathHash(String);

impl StorePathHash {
    /// Validate a 32-char nix-base32 string.
    pub fn parse(s: &str) -> Result<Self, StorePathError> {
        if s.len() != HASH_LEN {
            return Err(StorePathError::BadHashLength(s.to_owned()));
        }
        if !crate::base32::is_valid(s) {
            return Err(StorePathError::BadHashChars(s.to_owned()));
        }
        Ok(StorePathHash(s.to_owned()))
    }
    /// The 32 characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for StorePathHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A store path under the logical store dir `/nix/store`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    hash: StorePathHash,
    name: String,
}

impl StorePath {
    /// Parse a full path `/nix/store/<hash>-<name>` (no trailing components).
    ///
    /// The path must be exactly `/nix/store/` plus a basename: no trailing
    /// slash, no `.`/`..` or further components, no doubled slashes.
    pub fn parse(s: &str) -> Result<Self, StorePathError> {
        let base = s
            .strip_prefix(STORE_DIR)
            .and_then(|rest| rest.strip_prefix('/'))
            .filter(|base| !base.contains('/'))
            .ok_or_else(|| StorePathError::NotInStore(s.to_owned()))?;
        Self::from_basename(base)
    }
    /// Parse a basename `<hash>-<name>` (as in narinfo `References:`).
    pub fn from_basename(s: &str) -> Result<Self, StorePathError> {
        let (hash, name) = match s.find('-') {
            Some(i) => (&s[..i], &s[i + 1..]),
            // the alphabet has no '-': without one there is no name
            None if s.len() == HASH_LEN => return Err(StorePathError::NoName(s.to_owned())),
            None => (s, ""),
        };
        let hash = StorePathHash::parse(hash)?;
        if name.is_empty() {
            return Err(StorePathError::NoName(s.to_owned()));
        }
        if !is_valid_name(name) {
            return Err(StorePathError::BadName(name.to_owned()));
        }
        Ok(StorePath {
            hash,
            name: name.to_owned(),
        })
    }
    /// Build from parts, validating the name.
    pub fn from_parts(hash: StorePathHash, name: &str) -> Result<Self, StorePathError> {
        if name.is_empty() {
            return Err(StorePathError::NoName(format!("{hash}-")));
        }
        if !is_valid_name(name) {
            return Err(StorePathError::BadName(name.to_owned()));
        }
        Ok(StorePath {
            hash,
            name: name.to_owned(),
        })
    }
    /// Hash part.
    pub fn hash(&self) -> &StorePathHash {
        &self.hash
    }
    /// Name part.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// `<hash>-<name>`.
    pub fn basename(&self) -> String {
        format!("{}-{}", self.hash, self.name)
    }
    /// `/nix/store/<hash>-<name>`.
    pub fn to_absolute(&self) -> String {
        format!("{STORE_DIR}/{}-{}", self.hash, self.name)
    }
}

/// Displays the absolute path.
impl std::fmt::Display for StorePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_absolute())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "xxbv38w7a09qr5qm0c8994a6mr8vxgxy";

    #[test]
    fn parses_full_paths_and_basenames() {
        let p = StorePath::parse(&format!("/nix/store/{H}-tb-app")).unwrap();
        assert_eq!(p.hash().as_str(), H);
        assert_eq!(p.name(), "tb-app");
        assert_eq!(p.basename(), format!("{H}-tb-app"));
        assert_eq!(p.to_absolute(), format!("/nix/store/{H}-tb-app"));
        assert_eq!(p.to_string(), p.to_absolute());
        assert_eq!(StorePath::from_basename(&p.basename()).unwrap(), p);
        // names may contain '-' and every allowed character
        let odd = format!("{H}-a-b+c._?=-1.0");
        assert_eq!(
            StorePath::from_basename(&odd).unwrap().name(),
            "a-b+c._?=-1.0"
        );
        let max = format!("{H}-{}", "x".repeat(211));
        assert!(StorePath::from_basename(&max).is_ok());
        assert_eq!(
            StorePath::from_parts(StorePathHash::parse(H).unwrap(), "tb-app").unwrap(),
            p
        );
    }

    #[test]
    fn rejects_bad_paths() {
        use StorePathError::*;
        let cases: Vec<(String, StorePathError)> = vec![
            (
                format!("/nix/store/{H}-x/"),
                NotInStore(format!("/nix/store/{H}-x/")),
            ),
            (
                format!("/nix/store/{H}-x/bin"),
                NotInStore(format!("/nix/store/{H}-x/bin")),
            ),
            (
                format!("/nix/store//{H}-x"),
                NotInStore(format!("/nix/store//{H}-x")),
            ),
            (
                format!("/nix/store2/{H}-x"),
                NotInStore(format!("/nix/store2/{H}-x")),
            ),
            (
                format!("/gnu/store/{H}-x"),
                NotInStore(format!("/gnu/store/{H}-x")),
            ),
            (
                format!("nix/store/{H}-x"),
                NotInStore(format!("nix/store/{H}-x")),
            ),
            ("/nix/store".into(), NotInStore("/nix/store".into())),
            ("/nix/store/".into(), BadHashLength("".into())),
            (format!("/nix/store/{H}"), NoName(H.into())),
            (format!("/nix/store/{H}-"), NoName(format!("{H}-"))),
            (format!("/nix/store/{H}-.."), BadName("..".into())),
            (format!("/nix/store/{H}-."), BadName(".".into())),
            (format!("/nix/store/{H}-.hidden"), BadName(".hidden".into())),
            (format!("/nix/store/{H}-a b"), BadName("a b".into())),
            (format!("/nix/store/{H}-é"), BadName("é".into())),
            (
                format!("/nix/store/{H}-{}", "x".repeat(212)),
                BadName("x".repeat(212)),
            ),
            ("/nix/store/abc-x".into(), BadHashLength("abc".into())),
            (format!("/nix/store/{H}0-x"), BadHashLength(format!("{H}0"))),
            (
                "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x".into(),
                BadHashChars("eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee".into()),
            ),
            (
                "/nix/store/XXBV38W7A09QR5QM0C8994A6MR8VXGXY-x".into(),
                BadHashChars("XXBV38W7A09QR5QM0C8994A6MR8VXGXY".into()),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(StorePath::parse(&input), Err(want), "{input}");
        }
        assert!(StorePath::from_basename(&format!("/nix/store/{H}-x")).is_err());
        assert!(StorePath::from_parts(StorePathHash::parse(H).unwrap(), "").is_err());
        assert!(StorePath::from_parts(StorePathHash::parse(H).unwrap(), "a/b").is_err());
    }

    #[test]
    fn hash_part() {
        assert_eq!(StorePathHash::parse(H).unwrap().to_string(), H);
        assert!(matches!(
            StorePathHash::parse(&H[1..]),
            Err(StorePathError::BadHashLength(_))
        ));
        let bad = H.replace('x', "u");
        assert_eq!(
            StorePathHash::parse(&bad),
            Err(StorePathError::BadHashChars(bad.clone()))
        );
    }

    #[test]
    fn orders_like_nix() {
        // Nix orders store paths by basename; with a fixed-length hash part
        // that is (hash, name) order.
        let a = StorePath::from_basename(&format!("{H}-a")).unwrap();
        let b = StorePath::from_basename(&format!("{H}-b")).unwrap();
        let c = StorePath::from_basename("00000000000000000000000000000000-z").unwrap();
        let mut v = vec![b.clone(), a.clone(), c.clone()];
        v.sort();
        assert_eq!(v, vec![c, a, b]);
    }
}
