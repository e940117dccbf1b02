//! The TOML config file shared by all services. Keys are the NixOS module's
//! `settings` names (camelCase). Unknown keys and bad values are errors that
//! name the key, reported before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::plugins::{BackendsSpec, MapperSpec};
use ds_core::PublicKey;
use ds_store::StoreUri;
use serde::Deserialize;

/// Default config file location.
pub const DEFAULT_PATH: &str = "/etc/distributed-store/config.toml";
/// Default TCP port of the proxy.
pub const DEFAULT_PORT: u16 = 5496;

/// Errors loading the config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// File unreadable.
    #[error("config file {path}: {source}")]
    Read {
        /// file
        path: PathBuf,
        /// cause
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, unknown key or wrong type (toml names the key).
    #[error("config file {path}: {message}")]
    Parse {
        /// file
        path: PathBuf,
        /// toml's message, which names the key and line
        message: String,
    },
    /// A value of the right type but not acceptable.
    #[error("config file {path}: key `{key}`: {reason}")]
    Invalid {
        /// file
        path: PathBuf,
        /// the offending key
        key: String,
        /// why
        reason: String,
    },
}

/// NAR compression the proxy advertises and produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NarCompression {
    /// Uncompressed; allows HTTP Range.
    None,
    /// zstd (fast; the default).
    #[default]
    Zstd,
    /// xz (small, slow to produce).
    Xz,
}

impl NarCompression {
    /// Corresponding narinfo compression.
    pub fn to_core(self) -> ds_core::Compression {
        match self {
            NarCompression::None => ds_core::Compression::None,
            NarCompression::Zstd => ds_core::Compression::Zstd,
            NarCompression::Xz => ds_core::Compression::Xz,
        }
    }
}

/// An upstream binary cache (fallback), with the keys it signs with:
/// either a URL string or a table `{ url, publicKeys }`.
///
/// Deserialized by hand rather than `#[serde(untagged)]`: an untagged enum
/// swallows the inner error, so a misspelled key in the table form was
/// either accepted or reported as "did not match any variant" without
/// naming the key. Here the table form refuses unknown keys by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamSpec {
    /// Just a URL.
    Url(String),
    /// A URL plus keys.
    Full {
        /// Cache URL.
        url: String,
        /// Keys to trust for this upstream (added to `trustedPublicKeys`).
        public_keys: Vec<String>,
    },
}

/// The table form of an upstream, unknown keys refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UpstreamTable {
    url: String,
    #[serde(default)]
    public_keys: Vec<String>,
}

impl<'de> Deserialize<'de> for UpstreamSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UpstreamSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a URL string or a table { url, publicKeys }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<UpstreamSpec, E> {
                Ok(UpstreamSpec::Url(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<UpstreamSpec, A::Error> {
                let t =
                    UpstreamTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(UpstreamSpec::Full {
                    url: t.url,
                    public_keys: t.public_keys,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Raw file contents (private: validated into [`Config`]).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    listen: Option<String>,
    store: Option<String>,
    private_key_file: Option<PathBuf>,
    #[serde(default)]
    trusted_public_keys: Vec<String>,
    #[serde(default)]
    upstreams: Vec<UpstreamSpec>,
    #[serde(default)]
    peers: Vec<String>,
    priority: Option<u32>,
    want_mass_query: Option<bool>,
    compression: Option<NarCompression>,
    idle_exit_sec: Option<u64>,
    max_connections: Option<usize>,
    state_directory: Option<PathBuf>,
    cache_directory: Option<PathBuf>,
    cache_size: Option<ByteSize>,
    peer_timeout_ms: Option<u64>,
    upstream_timeout_ms: Option<u64>,
    sign_paths: Option<SignPaths>,
    discovery: Option<bool>,
    #[serde(default)]
    mappers: Vec<MapperSpec>,
    #[serde(default)]
    backends: BackendsSpec,
}

/// Which paths the signer signs with this node's key (`signPaths`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SignPaths {
    /// Only paths this machine built (Nix marks them `ultimate`): a path
    /// that came from a source only this node trusts is not laundered into
    /// the fleet key. The default.
    #[default]
    Built,
    /// Every path valid in the local store.
    All,
}

/// A size in bytes, written as a number or a string with a K/M/G/T suffix
/// (powers of 1024): `cacheSize = "10G"` or `cacheSize = 10737418240`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum ByteSize {
    Bytes(u64),
    Text(String),
}

/// Parse `"10G"`, `"512M"`, `"1048576"`, `"1.5G"` into bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return None,
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some((v * mult as f64) as u64)
}

/// An upstream cache, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Base URL without trailing slash.
    pub url: String,
    /// Keys it signs with.
    pub public_keys: Vec<PublicKey>,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the file came from (for messages); None for defaults.
    pub path: Option<PathBuf>,
    /// `listen`: address the proxy binds when not socket-activated.
    pub listen: SocketAddr,
    /// `store`: which local store to serve.
    pub store: StoreUri,
    /// `privateKeyFile`: the signer's key (read by the signer only).
    pub private_key_file: Option<PathBuf>,
    /// `trustedPublicKeys`.
    pub trusted_public_keys: Vec<PublicKey>,
    /// `upstreams`.
    pub upstreams: Vec<Upstream>,
    /// `peers`: base URLs of other proxies.
    pub peers: Vec<String>,
    /// `priority` in /nix-cache-info.
    pub priority: u32,
    /// `wantMassQuery` in /nix-cache-info.
    pub want_mass_query: bool,
    /// `compression` of served NARs.
    pub compression: NarCompression,
    /// `idleExitSec`: exit after this long without requests (0 = never).
    pub idle_exit_sec: u64,
    /// `maxConnections`: concurrent connections served; more wait in the backlog.
    pub max_connections: usize,
    /// `stateDirectory`: where the mapper keeps its index.
    pub state_directory: PathBuf,
    /// `cacheDirectory`: where the fetcher keeps NARs.
    pub cache_directory: PathBuf,
    /// `cacheSize`: bound on the fetcher's cache, in bytes.
    pub cache_size: u64,
    /// `peerTimeoutMs`: deadline for a peer to connect and answer (narinfo,
    /// announcement, first NAR bytes, and each stall while a NAR streams).
    pub peer_timeout: std::time::Duration,
    /// `upstreamTimeoutMs`: the same for upstream caches.
    pub upstream_timeout: std::time::Duration,
    /// `signPaths`: which paths the signer signs.
    pub sign_paths: SignPaths,
    /// `discovery`: find peers on the LAN with mDNS/DNS-SD (and announce
    /// this node), besides the static `peers`.
    pub discovery: bool,
    /// Extra mappers (`[[mappers]]`), asked after the local index and the
    /// fleet, in order (see [`crate::plugins`]).
    pub mappers: Vec<MapperSpec>,
    /// Optional backends (`[backends.*]`, see [`crate::plugins`]).
    pub backends: BackendsSpec,
}

/// Where the signer looks for its key when neither the systemd credential
/// `signing-key` nor `privateKeyFile` gives one (the file the units'
/// `LoadCredential=signing-key:` points at, docs/operating.md).
pub const DEFAULT_PRIVATE_KEY_FILE: &str = "/etc/distributed-store/signing-key";

/// The key file the signer should read when no systemd credential is
/// present: `privateKeyFile` if set, else `default` if a file is there
/// (anything else there, e.g. a directory, is returned too so that loading
/// it fails loudly instead of running unsigned), else `None`.
pub fn key_file_or_default(configured: Option<&Path>, default: &Path) -> Option<PathBuf> {
    match configured {
        Some(p) => Some(p.to_path_buf()),
        // symlink_metadata: a dangling symlink at the default place is
        // also "something there" (and then an error when read).
        None => default
            .symlink_metadata()
            .is_ok()
            .then(|| default.to_path_buf()),
    }
}

/// Default `stateDirectory` (systemd `StateDirectory=distributed-store`).
pub const DEFAULT_STATE_DIRECTORY: &str = "/var/lib/distributed-store";
/// Default `cacheDirectory` (systemd `CacheDirectory=distributed-store`).
pub const DEFAULT_CACHE_DIRECTORY: &str = "/var/cache/distributed-store";
/// Default `cacheSize`: 10 GiB.
pub const DEFAULT_CACHE_SIZE: u64 = 10 << 30;
/// Default `peerTimeoutMs`: a LAN peer answers in well under this.
pub const DEFAULT_PEER_TIMEOUT_MS: u64 = 300;
/// Default `upstreamTimeoutMs`: a WAN cache with a pooled connection.
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 800;

impl Config {
    /// Every key a narinfo may be signed with for this node to offer it:
    /// `trustedPublicKeys` plus each upstream's `publicKeys`.
    pub fn trusted_keys(&self) -> Vec<PublicKey> {
        let mut keys = self.trusted_public_keys.clone();
        for u in &self.upstreams {
            for k in &u.public_keys {
                if !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
        keys
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::from_raw(RawConfig::default(), None).expect("defaults are valid")
    }
}

/// The store as written in config (`local`, `local?root=DIR`).
pub fn store_display(store: &StoreUri) -> String {
    match store {
        StoreUri::System => "local".to_string(),
        StoreUri::Chroot(dir) => format!("local?root={}", dir.display()),
    }
}

fn check_url(path: &Option<PathBuf>, key: &str, url: &str) -> Result<String, ConfigError> {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() > "http://".len() + 1
        && !url.contains(char::is_whitespace);
    if ok {
        Ok(url.trim_end_matches('/').to_string())
    } else {
        Err(invalid(
            path,
            key,
            format!("{url:?} is not an http:// or https:// URL"),
        ))
    }
}

/// Validate `mappers` and `backends`: URLs, absolute paths, non-empty
/// commands (the types already refused unknown fields and types).
fn check_plugins(
    path: &Option<PathBuf>,
    mappers: &[MapperSpec],
    backends: &BackendsSpec,
) -> Result<(), ConfigError> {
    let abs = |key: &str, p: &Path| {
        if p.is_absolute() {
            Ok(())
        } else {
            Err(invalid(
                path,
                key,
                format!("{} must be an absolute path", p.display()),
            ))
        }
    };
    let command = |key: &str, argv: &[String]| match argv.first() {
        Some(p) if Path::new(p).is_absolute() => Ok(()),
        Some(p) => Err(invalid(
            path,
            key,
            format!("{p:?}: the program must be an absolute path"),
        )),
        None => Err(invalid(path, key, "must name a program".into())),
    };
    for m in mappers {
        match m {
            MapperSpec::Folder { path: p, .. } => abs("mappers.path", p)?,
            MapperSpec::Http { url, .. } => {
                check_url(path, "mappers.url", url)?;
            }
            MapperSpec::Command { command: argv, .. } => command("mappers.command", argv)?,
        }
    }
    if let Some(m) = &backends.mirrors {
        if m.urls.is_empty() {
            return Err(invalid(
                path,
                "backends.mirrors.urls",
                "must list at least one URL".into(),
            ));
        }
        for u in &m.urls {
            check_url(path, "backends.mirrors.urls", u)?;
        }
    }
    if let Some(i) = &backends.ipfs {
        if i.api.is_none() && i.gateway.is_none() {
            return Err(invalid(
                path,
                "backends.ipfs",
                "needs api (kubo RPC) or gateway".into(),
            ));
        }
        for u in i.api.iter().chain(i.gateway.iter()) {
            check_url(path, "backends.ipfs", u)?;
        }
    }
    if let Some(b) = &backends.bittorrent {
        if !matches!(b.engine.as_str(), "transmission" | "aria2") {
            return Err(invalid(
                path,
                "backends.bittorrent.engine",
                format!("{:?}: expected \"transmission\" or \"aria2\"", b.engine),
            ));
        }
        check_url(path, "backends.bittorrent.rpc", &b.rpc)?;
        for t in &b.trackers {
            if !(t.starts_with("http://") || t.starts_with("https://") || t.starts_with("udp://")) {
                return Err(invalid(
                    path,
                    "backends.bittorrent.trackers",
                    format!("{t:?} is not an http://, https:// or udp:// announce URL"),
                ));
            }
        }
        if let Some(d) = &b.download_directory {
            abs("backends.bittorrent.downloadDirectory", d)?;
        }
        if let Some(f) = &b.rpc_secret_file {
            abs("backends.bittorrent.rpcSecretFile", f)?;
        }
    }
    if let Some(s3) = &backends.s3 {
        if s3.bucket.is_empty() {
            return Err(invalid(
                path,
                "backends.s3.bucket",
                "must not be empty".into(),
            ));
        }
        if let Some(e) = &s3.endpoint {
            check_url(path, "backends.s3.endpoint", e)?;
        }
        if let Some(f) = &s3.credentials_file {
            abs("backends.s3.credentialsFile", f)?;
        }
    }
    if let Some(c) = &backends.command {
        command("backends.command.command", &c.command)?;
    }
    Ok(())
}

fn invalid(path: &Option<PathBuf>, key: &str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        path: path.clone().unwrap_or_else(|| PathBuf::from("<defaults>")),
        key: key.to_string(),
        reason,
    }
}

impl Config {
    /// The services' rule for their config file: a file that is there is
    /// loaded, and anything wrong with it is an error (unreadable,
    /// permission denied, a directory, invalid). Only when `path` is the
    /// default location (`default_path`, i.e. nobody asked for a file) and
    /// nothing is there at all do the defaults apply, with a warning. A file
    /// somebody named that does not exist is an error too: a typo in
    /// `DISTRIBUTED_STORE_CONFIG` or `--config` must not start a node with
    /// the defaults.
    pub fn load_or_default(path: &Path, default_path: &Path) -> Result<Config, ConfigError> {
        match std::fs::metadata(path) {
            Ok(_) => Config::load(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path == default_path => {
                tracing::warn!("config {} not found; using defaults", path.display());
                Ok(Config::default())
            }
            // Not-found of a named file, EACCES on a parent directory,
            // ENOTDIR, ELOOP, …: `exists()` would have said "no file" to all
            // of these and the node would have run on defaults.
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Load and validate a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, Some(path))
    }

    /// Parse and validate TOML text.
    pub fn parse(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("<string>")),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        Config::from_raw(raw, path.map(Path::to_path_buf))
    }

    fn from_raw(raw: RawConfig, path: Option<PathBuf>) -> Result<Config, ConfigError> {
        let listen = match raw.listen {
            None => SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 0], DEFAULT_PORT)),
            Some(s) => s.parse().map_err(|_| {
                invalid(&path, "listen", format!("{s:?} is not an address:port such as \"127.0.0.1:{DEFAULT_PORT}\" or \"[::]:{DEFAULT_PORT}\""))
            })?,
        };
        let store = match raw.store.as_deref() {
            None => StoreUri::System,
            Some(s) => StoreUri::parse(s).map_err(|e| invalid(&path, "store", e.to_string()))?,
        };
        if let Some(k) = &raw.private_key_file {
            if !k.is_absolute() {
                return Err(invalid(
                    &path,
                    "privateKeyFile",
                    format!("{} must be an absolute path", k.display()),
                ));
            }
        }
        let trusted_public_keys = raw
            .trusted_public_keys
            .iter()
            .map(|k| {
                PublicKey::parse(k)
                    .map_err(|e| invalid(&path, "trustedPublicKeys", format!("{k:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut upstreams = Vec::new();
        for u in raw.upstreams {
            let (url, keys) = match u {
                UpstreamSpec::Url(url) => (url, vec![]),
                UpstreamSpec::Full { url, public_keys } => (url, public_keys),
            };
            let url = check_url(&path, "upstreams", &url)?;
            let public_keys = keys
                .iter()
                .map(|k| {
                    PublicKey::parse(k)
                        .map_err(|e| invalid(&path, "upstreams.publicKeys", format!("{k:?}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            upstreams.push(Upstream { url, public_keys });
        }
        let peers = raw
            .peers
            .iter()
            .map(|p| check_url(&path, "peers", p))
            .collect::<Result<Vec<_>, _>>()?;
        let max_connections = raw.max_connections.unwrap_or(1024);
        if max_connections == 0 {
            return Err(invalid(
                &path,
                "maxConnections",
                "must be at least 1".into(),
            ));
        }
        let absolute = |key: &str, p: Option<PathBuf>, default: &str| match p {
            None => Ok(PathBuf::from(default)),
            Some(p) if p.is_absolute() => Ok(p),
            Some(p) => Err(invalid(
                &path,
                key,
                format!("{} must be an absolute path", p.display()),
            )),
        };
        let state_directory = absolute(
            "stateDirectory",
            raw.state_directory,
            DEFAULT_STATE_DIRECTORY,
        )?;
        let cache_directory = absolute(
            "cacheDirectory",
            raw.cache_directory,
            DEFAULT_CACHE_DIRECTORY,
        )?;
        let cache_size = match raw.cache_size {
            None => DEFAULT_CACHE_SIZE,
            Some(ByteSize::Bytes(n)) => n,
            Some(ByteSize::Text(t)) => parse_size(&t).ok_or_else(|| {
                invalid(
                    &path,
                    "cacheSize",
                    format!("{t:?} is not a size such as \"10G\", \"512M\" or a number of bytes"),
                )
            })?,
        };
        let ms = |key: &str, v: Option<u64>, default: u64| match v.unwrap_or(default) {
            0 => Err(invalid(&path, key, "must be at least 1".into())),
            n if n > 600_000 => Err(invalid(
                &path,
                key,
                "must be at most 600000 (10 minutes)".into(),
            )),
            n => Ok(std::time::Duration::from_millis(n)),
        };
        let peer_timeout = ms(
            "peerTimeoutMs",
            raw.peer_timeout_ms,
            DEFAULT_PEER_TIMEOUT_MS,
        )?;
        let upstream_timeout = ms(
            "upstreamTimeoutMs",
            raw.upstream_timeout_ms,
            DEFAULT_UPSTREAM_TIMEOUT_MS,
        )?;
        check_plugins(&path, &raw.mappers, &raw.backends)?;
        Ok(Config {
            mappers: raw.mappers,
            backends: raw.backends,
            sign_paths: raw.sign_paths.unwrap_or_default(),
            discovery: raw.discovery.unwrap_or(true),
            state_directory,
            cache_directory,
            cache_size,
            peer_timeout,
            upstream_timeout,
            path,
            listen,
            store,
            private_key_file: raw.private_key_file,
            trusted_public_keys,
            upstreams,
            peers,
            priority: raw.priority.unwrap_or(30),
            want_mass_query: raw.want_mass_query.unwrap_or(true),
            compression: raw.compression.unwrap_or_default(),
            idle_exit_sec: raw.idle_exit_sec.unwrap_or(0),
            max_connections,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugins() {
        let c = Config::parse(
            r#"
[[mappers]]
type = "folder"
path = "/srv/index"
[[mappers]]
type = "http"
url = "http://10.0.0.5:5496/"
deadlineMs = 300
[[mappers]]
type = "command"
command = ["/bin/mapper", "-x"]
[backends.mirrors]
urls = ["http://m1:8080", "https://m2/cache"]
[backends.ipfs]
api = "http://127.0.0.1:5001"
publish = true
[backends.s3]
bucket = "b"
endpoint = "http://127.0.0.1:9000"
[backends.command]
command = ["/bin/fetch"]
"#,
            None,
        )
        .unwrap();
        assert_eq!(c.mappers.len(), 3);
        assert!(matches!(
            &c.mappers[1],
            MapperSpec::Http {
                deadline_ms: Some(300),
                ..
            }
        ));
        assert_eq!(c.backends.mirrors.as_ref().unwrap().urls.len(), 2);
        assert!(c.backends.ipfs.as_ref().unwrap().publish);
        assert!(c.backends.bittorrent.is_none());
        let err = |text: &str| Config::parse(text, None).unwrap_err().to_string();
        assert!(err("[[mappers]]\ntype = \"gopher\"\n").contains("gopher"));
        assert!(err("[[mappers]]\ntype = \"folder\"\npath = \"rel\"\n").contains("mappers.path"));
        assert!(err("[backends.ipfs]\napi = \"http://x:1\"\npublsh = true\n").contains("publsh"));
        assert!(err("[backends.carrierpigeon]\n").contains("carrierpigeon"));
        assert!(err("[backends.mirrors]\nurls = [\"ftp://x\"]\n").contains("backends.mirrors.urls"));
        assert!(err("[backends.command]\ncommand = [\"fetch\"]\n").contains("absolute"));
        assert!(
            err("[backends.bittorrent]\nengine = \"utorrent\"\nrpc = \"http://x:1\"\n")
                .contains("engine")
        );
    }

    #[test]
    fn upstream_table_refuses_unknown_keys_by_name() {
        let e = err("upstreams = [{ url = \"http://u:1\", publicKey = [] }]");
        assert!(e.contains("publicKey"), "{e}");
        assert!(e.contains("/etc/ds.toml"), "{e}");
        let e = err("[[upstreams]]\nurl = \"http://u:1\"\npublickeys = []\n");
        assert!(e.contains("publickeys"), "{e}");
        let e = err("upstreams = [{ publicKeys = [] }]");
        assert!(e.contains("url"), "{e}");
        let e = err("upstreams = [42]");
        assert!(e.contains("URL string or a table"), "{e}");
        // Both good forms still parse.
        let c = Config::parse(
            &format!("upstreams = [\"http://a:1\", {{ url = \"http://b:1\", publicKeys = [\"{KEY}\"] }}]"),
            None,
        )
        .unwrap();
        assert_eq!(c.upstreams[0].url, "http://a:1");
        assert_eq!(c.upstreams[1].public_keys.len(), 1);
    }

    #[test]
    fn load_or_default_only_defaults_for_a_missing_default_file() {
        let d = tempfile::tempdir().unwrap();
        let default = d.path().join("config.toml");
        // Nothing at the default location, nothing asked for: defaults.
        let c = Config::load_or_default(&default, &default).unwrap();
        assert!(c.path.is_none());
        // A named file that is not there: an error, not the defaults.
        let named = d.path().join("typo.toml");
        let e = Config::load_or_default(&named, &default)
            .unwrap_err()
            .to_string();
        assert!(e.contains("typo.toml"), "{e}");
        // A directory where the file should be (even at the default path).
        std::fs::create_dir(&default).unwrap();
        let e = Config::load_or_default(&default, &default)
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.toml"), "{e}");
        // A path through a regular file (ENOTDIR): `exists()` says false.
        let file = d.path().join("file");
        std::fs::write(&file, "").unwrap();
        let through = file.join("config.toml");
        assert!(Config::load_or_default(&through, &through).is_err());
        // Permission denied: a file we cannot read, and a file in a
        // directory we cannot search. Root reads anything, so this part
        // only proves something for an unprivileged user; the check that
        // the mode took effect keeps it honest.
        use std::os::unix::fs::PermissionsExt;
        let secret = d.path().join("secret.toml");
        std::fs::write(&secret, "").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
        if std::fs::read(&secret).is_err() {
            assert!(Config::load_or_default(&secret, &secret).is_err());
            let locked = d.path().join("locked");
            std::fs::create_dir(&locked).unwrap();
            let inner = locked.join("config.toml");
            std::fs::write(&inner, "").unwrap();
            std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
            let e = Config::load_or_default(&inner, &inner)
                .unwrap_err()
                .to_string();
            std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
            assert!(e.contains("ermission denied"), "{e}");
        }
        // A real file is loaded.
        let good = d.path().join("good.toml");
        std::fs::write(&good, "priority = 7\n").unwrap();
        assert_eq!(
            Config::load_or_default(&good, &default).unwrap().priority,
            7
        );
    }

    #[test]
    fn key_at_the_default_location_is_used_when_none_is_configured() {
        let d = tempfile::tempdir().unwrap();
        let default = d.path().join("signing-key");
        let set = Path::new("/run/keys/k");
        assert_eq!(key_file_or_default(None, &default), None);
        assert_eq!(key_file_or_default(Some(set), &default), Some(set.into()));
        std::fs::write(&default, "k:x").unwrap();
        assert_eq!(key_file_or_default(None, &default), Some(default.clone()));
        assert_eq!(key_file_or_default(Some(set), &default), Some(set.into()));
        assert_eq!(
            DEFAULT_PRIVATE_KEY_FILE, "/etc/distributed-store/signing-key",
            "the path docs/operating.md and the units' LoadCredential= name"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10G"), Some(10 << 30));
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("1.5K"), Some(1536));
        assert_eq!(parse_size("42"), Some(42));
        for bad in ["", "G", "-1G", "1X", "ten"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    const KEY: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

    fn err(text: &str) -> String {
        Config::parse(text, Some(Path::new("/etc/ds.toml")))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults() {
        let c = Config::parse("", None).unwrap();
        assert_eq!(c.listen, "[::]:5496".parse().unwrap());
        assert_eq!(c.store, StoreUri::System);
        assert_eq!(c.compression, NarCompression::Zstd);
        assert_eq!(
            (c.priority, c.want_mass_query, c.idle_exit_sec),
            (30, true, 0)
        );
        assert!(c.private_key_file.is_none() && c.peers.is_empty() && c.upstreams.is_empty());
        assert_eq!(c.cache_size, DEFAULT_CACHE_SIZE);
        assert_eq!(c.state_directory, PathBuf::from(DEFAULT_STATE_DIRECTORY));
        assert_eq!(c.peer_timeout.as_millis(), 300);
        assert_eq!((c.sign_paths, c.discovery), (SignPaths::Built, true));
    }

    #[test]
    fn full_config() {
        let c = Config::parse(
            &format!(
                r#"
listen = "127.0.0.1:8080"
store = "local?root=/srv/store"
privateKeyFile = "/run/keys/ds.sec"
trustedPublicKeys = ["{KEY}"]
upstreams = ["https://cache.nixos.org/", {{ url = "http://mirror:80", publicKeys = ["{KEY}"] }}]
peers = ["http://build1:5496"]
priority = 10
wantMassQuery = false
compression = "xz"
idleExitSec = 60
maxConnections = 10
stateDirectory = "/srv/ds/state"
cacheDirectory = "/srv/ds/cache"
cacheSize = "2G"
peerTimeoutMs = 100
upstreamTimeoutMs = 5000
signPaths = "all"
discovery = false
"#
            ),
            None,
        )
        .unwrap();
        assert_eq!(c.listen.port(), 8080);
        assert_eq!(c.store, StoreUri::Chroot("/srv/store".into()));
        assert_eq!(c.trusted_public_keys.len(), 1);
        assert_eq!(c.upstreams[0].url, "https://cache.nixos.org");
        assert_eq!(c.upstreams[1].public_keys.len(), 1);
        assert_eq!(c.peers, vec!["http://build1:5496".to_string()]);
        assert_eq!(c.compression, NarCompression::Xz);
        assert_eq!(
            (
                c.priority,
                c.want_mass_query,
                c.idle_exit_sec,
                c.max_connections
            ),
            (10, false, 60, 10)
        );
        assert_eq!(c.state_directory, PathBuf::from("/srv/ds/state"));
        assert_eq!(c.cache_directory, PathBuf::from("/srv/ds/cache"));
        assert_eq!(c.cache_size, 2 << 30);
        assert_eq!(c.peer_timeout.as_millis(), 100);
        assert_eq!(c.upstream_timeout.as_millis(), 5000);
        assert_eq!((c.sign_paths, c.discovery), (SignPaths::All, false));
        assert_eq!(c.trusted_keys().len(), 1, "the same key twice counts once");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("bogus = 1", "bogus"),
            ("privateKeyFiles = \"/x\"", "privateKeyFiles"),
            ("listen = \"localhost\"", "listen"),
            ("listen = 5496", "listen"),
            ("store = \"daemon\"", "store"),
            ("store = \"local?root=relative\"", "store"),
            ("privateKeyFile = \"key.sec\"", "privateKeyFile"),
            ("trustedPublicKeys = [\"nocolon\"]", "trustedPublicKeys"),
            (
                "trustedPublicKeys = [\"k:not base64!\"]",
                "trustedPublicKeys",
            ),
            ("peers = [\"ftp://x\"]", "peers"),
            ("upstreams = [\"cache.nixos.org\"]", "upstreams"),
            ("compression = \"bzip2\"", "compression"),
            ("maxConnections = 0", "maxConnections"),
            ("priority = -1", "priority"),
            ("stateDirectory = \"state\"", "stateDirectory"),
            ("cacheDirectory = \"cache\"", "cacheDirectory"),
            ("cacheSize = \"10X\"", "cacheSize"),
            ("cacheSize = \"lots\"", "cacheSize"),
            ("peerTimeoutMs = 0", "peerTimeoutMs"),
            ("signPaths = \"some\"", "signPaths"),
            ("discovery = \"yes\"", "discovery"),
            ("upstreamTimeoutMs = 9999999", "upstreamTimeoutMs"),
        ];
        for (text, key) in cases {
            let e = err(text);
            assert!(e.contains(key), "{text:?}: error {e:?} does not name {key}");
            assert!(
                e.contains("/etc/ds.toml"),
                "{text:?}: error {e:?} does not name the file"
            );
        }
    }
}
