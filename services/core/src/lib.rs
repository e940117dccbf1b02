//! Pure Nix binary-cache types for distributed-store: no I/O, no async.
//!
//! Everything here is checked against what the real Nix (2.8) writes; see the
//! tests in each module and `tests/` of this crate.
//!
//! - [`base32`]: nix-base32 encode/decode.
//! - [`Hash`](struct@Hash): digests in base16, nix-base32, base64 and SRI, compared by value.
//! - [`StorePath`], [`StorePathHash`]: validated `/nix/store/<hash>-<name>`.
//! - [`NarInfo`], [`fingerprint`], [`Compression`]: narinfo parse/render/sign.
//! - [`SecretKey`], [`PublicKey`], [`Signature`]: Nix's `name:base64` keys.
//! - [`nar`]: streaming NAR hash ([`NarHasher`]) and validating reader.
//! - [`nar_writer`]: NAR framing, push-style ([`NarWriter`]), byte-string names.
//! - [`Locator`]: where a NAR can be fetched; [`rendezvous_order`].
//! - [`CacheInfo`]: renders `/nix-cache-info`.
//!
//! Fuzzed by the targets in the repository's `fuzz/` (run `dev/fuzz`).
#![warn(missing_docs)]

pub mod base32;
pub mod cache_info;
pub mod hash;
pub mod locator;
pub mod nar;
pub mod nar_writer;
pub mod narinfo;
pub mod signing;
pub mod store_path;

pub use cache_info::CacheInfo;
pub use hash::{Hash, HashAlgo};
pub use locator::{rendezvous_order, FileFacts, FileLocator, Locator, LocatorError};
pub use nar::{NarError, NarHasher, NarReader, NarStats};
pub use nar_writer::{NarWriteError, NarWriter};
pub use narinfo::{fingerprint, Compression, NarInfo};
pub use signing::{PublicKey, SecretKey, Signature};
pub use store_path::{StorePath, StorePathHash, STORE_DIR};
