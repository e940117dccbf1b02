//! Hashes as Nix writes them: `sha256:<nix-base32>`; also read base16 and SRI.
//! Compared by value, never by text.

/// Hash algorithms Nix uses in narinfo files and the store database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlgo {
    /// 16 bytes.
    Md5,
    /// 20 bytes.
    Sha1,
    /// 32 bytes.
    Sha256,
    /// 64 bytes.
    Sha512,
}

impl HashAlgo {
    /// Name as in `sha256:`.
    pub fn name(self) -> &'static str {
        todo!()
    }
    /// Digest length in bytes.
    pub fn len(self) -> usize {
        todo!()
    }
}

/// Errors parsing a hash string.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HashError {
    /// e.g. `blake3:`
    #[error("unknown hash algorithm {0:?}")]
    UnknownAlgo(String),
    /// missing `algo:` / `algo-` prefix
    #[error("hash {0:?} has no algorithm prefix")]
    NoAlgo(String),
    /// length fits no encoding
    #[error("hash {0:?} has a wrong length for its algorithm")]
    BadLength(String),
    /// bad digits
    #[error("hash {0:?} is not valid base16, nix-base32 or base64")]
    BadEncoding(String),
}

/// A digest with its algorithm.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Hash {
    /// Algorithm.
    pub algo: HashAlgo,
    /// Raw digest bytes (length = `algo.len()`).
    pub digest: Vec<u8>,
}

impl Hash {
    /// Parse `algo:<base16|nix-base32|base64>` or SRI `algo-<base64>`.
    pub fn parse(s: &str) -> Result<Hash, HashError> {
        todo!("{s}")
    }
    /// `sha256:<nix-base32>`, as Nix writes narinfo fields.
    pub fn to_nix32_string(&self) -> String {
        todo!()
    }
    /// `sha256:<base16>`, as Nix's database stores `ValidPaths.hash`.
    pub fn to_base16_string(&self) -> String {
        todo!()
    }
    /// SHA-256 of `data`.
    pub fn sha256(data: &[u8]) -> Hash {
        todo!("{data:?}")
    }
}

/// Displays as `to_nix32_string`.
impl std::fmt::Display for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_nix32_string())
    }
}

impl std::fmt::Debug for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hash({})", self.to_nix32_string())
    }
}
