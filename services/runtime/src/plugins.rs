//! Pluggable mappers and backends (`mappers`, `backends` in the config).
//!
//! ```toml
//! # Extra mappers, asked after the local index and the fleet, in order;
//! # the first answer wins, each within its deadline.
//! [[mappers]]
//! type = "folder"                       # an nss-mapper style folder (docs/index-format.md)
//! path = "/var/lib/distributed-store/index"
//! [[mappers]]
//! type = "http"                         # another node's (or service's) mapper over HTTP
//! url = "http://10.0.0.5:5496"
//! deadlineMs = 500
//! [[mappers]]
//! type = "command"                      # JSON lines on stdin/stdout (docs/backends.md)
//! command = ["/usr/local/bin/my-mapper", "--flag"]
//!
//! [backends.mirrors]                    # locators mirror:<relative path>#facts
//! urls = ["http://mirror1:8080", "https://mirror2.example/cache"]
//! [backends.ipfs]                       # locators ipfs:<CID>#facts
//! api = "http://127.0.0.1:5001"         # kubo RPC (fetch and publish)
//! gateway = "http://127.0.0.1:8080"     # trustless gateway (fetch), optional
//! publish = true
//! [backends.bittorrent]                 # locators btih:<info-hash hex>#facts
//! engine = "transmission"               # or "aria2"
//! rpc = "http://127.0.0.1:9091/transmission/rpc"
//! trackers = ["http://10.0.0.1:6969/announce"]
//! publish = true
//! [backends.s3]                         # locators s3:<key>#facts
//! bucket = "nix-cache"
//! endpoint = "http://127.0.0.1:9000"
//! region = "us-east-1"
//! credentialsFile = "/run/credentials/distributed-store-fetcher.service/s3"
//! publish = false
//! [backends.command]                    # locators exec:<opaque>#facts
//! command = ["/usr/local/bin/fetch-nar"]
//! ```
//!
//! Every locator of these backends names a NAR *file* (compressed or not);
//! its `#fragment` carries compression, fileHash and fileSize
//! ([`ds_core::Locator::other`]). Deserialisation refuses unknown fields, so a
//! misspelt key is an error naming it.

use std::path::PathBuf;

use serde::Deserialize;

/// One configured mapper (`[[mappers]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum MapperSpec {
    /// A folder in the nss-mapper layout: `DIR/<c>/<sha>.yaml`.
    Folder {
        /// The folder (absolute).
        path: PathBuf,
        /// Deadline for one lookup, in ms (default 200).
        #[serde(default, rename = "deadlineMs")]
        deadline_ms: Option<u64>,
    },
    /// Another node's mapper, read-only over HTTP (`/_ds/v1/lookup/<hash>`).
    Http {
        /// Base URL (http or https).
        url: String,
        /// Deadline for one lookup, in ms (default 500).
        #[serde(default, rename = "deadlineMs")]
        deadline_ms: Option<u64>,
    },
    /// An external program speaking JSON lines on stdin/stdout.
    Command {
        /// argv (absolute program path first).
        command: Vec<String>,
        /// Deadline for one lookup, in ms (default 1000).
        #[serde(default, rename = "deadlineMs")]
        deadline_ms: Option<u64>,
    },
}

/// `[backends]`: the optional networks. Absent section = backend off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendsSpec {
    /// HTTP mirrors (binary caches or plain NAR mirrors), round-robin.
    pub mirrors: Option<MirrorsSpec>,
    /// IPFS through kubo's RPC API and/or a trustless gateway.
    pub ipfs: Option<IpfsSpec>,
    /// BitTorrent through an external engine.
    pub bittorrent: Option<BitTorrentSpec>,
    /// S3 or an S3-compatible store, binary-cache layout.
    pub s3: Option<S3Spec>,
    /// An external program that writes a NAR file to stdout.
    pub command: Option<CommandSpec>,
}

/// `[backends.mirrors]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MirrorsSpec {
    /// Base URLs of the mirrors.
    pub urls: Vec<String>,
    /// Also use them as narinfo sources (a mapper over the mirrors);
    /// default true.
    #[serde(default)]
    pub lookup: Option<bool>,
}

/// `[backends.ipfs]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpfsSpec {
    /// kubo RPC base URL (e.g. `http://127.0.0.1:5001`).
    pub api: Option<String>,
    /// Trustless gateway base URL (e.g. `http://127.0.0.1:8080`).
    pub gateway: Option<String>,
    /// Add this node's NARs to the IPFS node and record their CIDs.
    #[serde(default)]
    pub publish: bool,
}

/// `[backends.bittorrent]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BitTorrentSpec {
    /// `transmission` or `aria2`.
    pub engine: String,
    /// The engine's RPC URL.
    pub rpc: String,
    /// Secret/token for the RPC, if any (aria2 `--rpc-secret`).
    #[serde(default)]
    pub rpc_secret_file: Option<PathBuf>,
    /// Tracker announce URLs put in torrents this node makes.
    #[serde(default)]
    pub trackers: Vec<String>,
    /// Where the engine writes downloads (must be readable by the fetcher).
    pub download_directory: Option<PathBuf>,
    /// Make torrents for this node's NARs and seed them.
    #[serde(default)]
    pub publish: bool,
}

/// `[backends.s3]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct S3Spec {
    /// Bucket name.
    pub bucket: String,
    /// Endpoint URL for S3-compatible servers (absent: AWS).
    pub endpoint: Option<String>,
    /// Region (default `us-east-1`).
    pub region: Option<String>,
    /// Key prefix inside the bucket (binary-cache layout below it).
    #[serde(default)]
    pub prefix: String,
    /// File with `AWS_ACCESS_KEY_ID=…` / `AWS_SECRET_ACCESS_KEY=…` lines.
    pub credentials_file: Option<PathBuf>,
    /// Also use the bucket's narinfos as a narinfo source; default true.
    #[serde(default)]
    pub lookup: Option<bool>,
    /// Upload this node's NARs and narinfos.
    #[serde(default)]
    pub publish: bool,
}

/// `[backends.command]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CommandSpec {
    /// argv (absolute program path first); the locator value is appended.
    pub command: Vec<String>,
    /// First-byte deadline in ms (default 2000).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
}
