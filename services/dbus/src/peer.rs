//! The peer protocol that travels over HTTP between nodes, next to the
//! D-Bus API on each node: one definition for the proxy (which serves it),
//! the mapper (which polls peers) and the fetcher (which downloads from them).

use serde::{Deserialize, Serialize};

use crate::Announcement;

/// Path of the announcement on a proxy (`?epoch=E&since=V`).
pub const ANNOUNCE_PATH: &str = "/_ds/v1/announce";

/// Header marking a request from another node: `peer` (answer only from
/// what you hold or are fetching) or `lead` (you were chosen to fetch this
/// NAR from your upstream for the fleet). Either way, never ask further
/// peers: no relaying.
pub const HOP_HEADER: &str = "X-Distributed-Store-Hop";

/// The JSON body of `GET /_ds/v1/announce`, as the proxy serves it and the
/// mapper reads it from peers:
/// `{"epoch":"..","version":N,"full":bool,"added":[..],"removed":[..],"inflight":[..]}`.
/// Items are store path hash parts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AnnounceJson {
    /// The sender's index epoch (its node identity).
    pub epoch: String,
    /// The sender's version after these changes.
    pub version: u64,
    /// `added` is everything held; the receiver replaces what it knew.
    #[serde(default)]
    pub full: bool,
    /// Paths gained since the asked version (everything, when `full`).
    #[serde(default)]
    pub added: Vec<String>,
    /// Paths lost since the asked version.
    #[serde(default)]
    pub removed: Vec<String>,
    /// NARs being fetched now (always the complete set).
    #[serde(default)]
    pub inflight: Vec<String>,
}

impl From<Announcement> for AnnounceJson {
    fn from(a: Announcement) -> Self {
        let (epoch, version, full, added, removed, inflight) = a;
        AnnounceJson {
            epoch,
            version,
            full,
            added,
            removed,
            inflight,
        }
    }
}

impl From<AnnounceJson> for Announcement {
    fn from(a: AnnounceJson) -> Self {
        (a.epoch, a.version, a.full, a.added, a.removed, a.inflight)
    }
}
