//! The fetcher: gets the NAR of a store path through pluggable backends,
//! verifies it while it streams, and keeps a bounded content-addressed
//! cache. It serves `org.distributedstore.Fetcher1` on D-Bus; callers (the
//! proxy) get the read end of a pipe, never bytes inside D-Bus messages.
//!
//! - [`backend`]: the [`Backend`] trait and [`Registry`]: one implementation
//!   per kind of locator (peers and binary-cache files are built in: [`http`]).
//! - [`Fetcher`]: coalesced downloads (one per NarHash, joined by later
//!   callers), hedging and resumption across sources, verification, cache.
//! - [`mirrors`], [`s3`], [`exec`]: `mirror:`, `s3:` and `exec:` backends
//!   (and the S3 publisher), registered from `[backends.*]` by [`registry`].
//! - [`nar_file`]: NAR *file* bytes (any network) → checked, decompressed
//!   NAR bytes; the layer every file-locator backend shares.
//! - [`cache`]: the on-disk layout and LRU eviction.
//! - [`dbus`]: the D-Bus object and the (best-effort) link to the mapper.
//!
//! See docs/fetcher.md.

pub mod backend;
pub mod bittorrent;
pub mod cache;
pub mod dbus;
mod download;
pub mod exec;
mod fetcher;
pub mod http;
pub mod ipfs;
pub mod mirrors;
pub mod nar_file;
mod reader;
pub mod s3;

pub use backend::{Backend, BackendError, ByteStream, Opened, Publisher, Registry};
pub use dbus::{DbusMapper, FetcherObject};
/// The backends a fetcher gets from the config (built-in + `[backends.*]`).
pub use fetcher::registry;
pub use fetcher::{
    FetchError, Fetcher, FetcherConfig, FetcherStatus, MapperLink, NarPipe, NoMapper,
};
