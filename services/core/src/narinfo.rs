//! narinfo files: parse, render, fingerprint.

use crate::{Hash, Signature, StorePath};

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
        todo!()
    }
    /// Parse a name (`none`, `xz`, `zstd`, others kept verbatim). Empty = none? No: `""` is an error elsewhere.
    pub fn from_name(s: &str) -> Compression {
        todo!("{s}")
    }
    /// File extension after `.nar` (`""`, `.xz`, `.zst`, …).
    pub fn extension(&self) -> &str {
        todo!()
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
    pub fn parse(s: &str) -> Result<NarInfo, NarInfoError> {
        todo!("{s}")
    }
    /// Render in Nix's field order.
    pub fn render(&self) -> String {
        todo!()
    }
    /// The signed fingerprint of this path.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.store_path, &self.nar_hash, self.nar_size, &self.references)
    }
}

/// `1;<path>;<narhash nix32>;<narsize>;<refs full paths, comma-separated>`
pub fn fingerprint(path: &StorePath, nar_hash: &Hash, nar_size: u64, references: &[StorePath]) -> String {
    todo!("{path}{nar_hash}{nar_size}{references:?}")
}
