//! Pure Nix binary-cache types for distributed-store: no I/O, no async.
//!
//! Everything here is checked against what the real Nix (2.8) writes; see the
//! tests in each module and `tests/` of this crate.

pub mod base32;
pub mod cache_info;
pub mod hash;
pub mod nar;
pub mod narinfo;
pub mod signing;
pub mod store_path;

pub use cache_info::CacheInfo;
pub use hash::{Hash, HashAlgo};
pub use narinfo::{fingerprint, Compression, NarInfo};
pub use signing::{PublicKey, SecretKey, Signature};
pub use store_path::{StorePath, StorePathHash, STORE_DIR};
