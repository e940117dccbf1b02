//! The mapper: the index of where NARs can be had, served on D-Bus as
//! `org.distributedstore.Mapper1` (see `docs/mapper.md`).
//!
//! - [`index`]: the redb file (local paths, peers' announcements, epoch).
//! - [`local`]: keeping the local store's paths current (full scan once,
//!   then incremental every second).
//! - [`announce`]: the announcement JSON ([`announce::AnnounceJson`], also
//!   used by the proxy) and the change log behind deltas.
//! - [`peers`]: peer states and polling.
//! - [`discovery`]: LAN peers via mDNS/DNS-SD (config `discovery`).
//! - [`mapper`]: the [`mapper::Mapper`] trait and [`mapper::Stack`].
//! - [`upstream`], [`fleet`]: the upstream and peer mappers and their
//!   composition with the rendezvous chain.
//! - [`service`]: the D-Bus object.

pub mod announce;
pub mod discovery;
pub mod fleet;
pub mod http;
pub mod index;
pub mod local;
pub mod mapper;
pub mod mirrors;
pub mod peers;
pub mod service;
pub mod upstream;

pub use announce::AnnounceJson;
pub use mapper::{Mapper, Mapping, Scope, Stack};
pub use service::MapperService;
