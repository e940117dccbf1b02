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
//! - [`mapper`]: the [`mapper::Mapper`] trait and [`mapper::Ordered`] (mappers asked at once, answered in priority order).
//! - [`upstream`], [`fleet`]: the upstream and peer mappers and their
//!   composition with the rendezvous chain.
//! - [`folder`], [`remote`], [`command`]: the folder index (nss-mapper
//!   layout), another node's mapper over HTTP, an external program.
//! - [`stack`]: the mapper stack built from the config.
//! - [`service`]: the D-Bus object.

pub mod announce;
pub mod command;
pub mod discovery;
pub mod fleet;
pub mod folder;
pub mod http;
pub mod index;
pub mod local;
pub mod mapper;
pub mod mirrors;
pub mod peers;
pub mod remote;
pub mod s3;
pub mod service;
pub mod stack;
pub mod upstream;

pub use announce::AnnounceJson;
pub use mapper::{Mapper, Mapping, Ordered, Scope};
pub use service::MapperService;
