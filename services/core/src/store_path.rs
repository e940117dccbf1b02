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

/// The 32-character hash part of a store path, validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePathHash(String);

impl StorePathHash {
    /// Validate a 32-char nix-base32 string.
    pub fn parse(s: &str) -> Result<Self, StorePathError> {
        todo!("{s}")
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
    pub fn parse(s: &str) -> Result<Self, StorePathError> {
        todo!("{s}")
    }
    /// Parse a basename `<hash>-<name>` (as in narinfo `References:`).
    pub fn from_basename(s: &str) -> Result<Self, StorePathError> {
        todo!("{s}")
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
