//! The mapper stack built from the config: the fleet (local index, peers,
//! upstreams) first, then the imported folder (`<stateDirectory>/index`),
//! then each `[[mappers]]` entry in order, then the
//! mappers of backends that answer narinfo lookups; each layer has its own
//! deadline and the first answer in that order wins ([`Ordered`]).

use std::sync::Arc;
use std::time::Duration;

use ds_core::PublicKey;
use ds_runtime::plugins::MapperSpec;
use ds_runtime::Config;

use crate::command::CommandMapper;
use crate::fleet::SLACK;
use crate::folder::FolderMapper;
use crate::mapper::{Mapper, Ordered};
use crate::remote::RemoteMapper;

/// Default deadline of a folder mapper lookup.
pub const FOLDER_DEADLINE: Duration = Duration::from_millis(200);
/// Default deadline of an HTTP mapper lookup.
pub const HTTP_DEADLINE: Duration = Duration::from_millis(500);
/// Default deadline of a command mapper lookup.
pub const COMMAND_DEADLINE: Duration = Duration::from_millis(1000);

/// The folder under `stateDirectory` that `distributed-store index import`
/// fills; always read (a missing folder is an empty index).
pub const IMPORT_DIR: &str = "index";

/// The two stacks a mapper service answers from.
pub struct Stacks {
    /// Everything (what the local Nix client gets through `Lookup`).
    pub full: Ordered,
    /// This node's own index only (folder and command mappers): what the
    /// HTTP lookup route serves to other nodes (`LookupLocal`).
    pub local: Ordered,
}

/// One configured mapper, with its deadline, and whether it may answer
/// other nodes (the HTTP mapper may not: that could loop).
pub fn configured(
    spec: &MapperSpec,
    keys: &[PublicKey],
    client: &reqwest::Client,
) -> (Arc<dyn Mapper>, Duration, bool) {
    let ms = |v: &Option<u64>, d: Duration| v.map(Duration::from_millis).unwrap_or(d);
    match spec {
        MapperSpec::Folder { path, deadline_ms } => (
            Arc::new(FolderMapper::open(path, keys.to_vec())),
            ms(deadline_ms, FOLDER_DEADLINE),
            true,
        ),
        MapperSpec::Http { url, deadline_ms } => {
            let d = ms(deadline_ms, HTTP_DEADLINE);
            (
                Arc::new(RemoteMapper::new(client.clone(), url, keys.to_vec(), d)),
                d,
                false,
            )
        }
        MapperSpec::Command {
            command,
            deadline_ms,
        } => (
            Arc::new(CommandMapper::start(command.clone(), keys.to_vec())),
            ms(deadline_ms, COMMAND_DEADLINE),
            true,
        ),
    }
}

/// Build both stacks. `fleet` bounds itself by `fleet_deadline` (plus
/// slack); must run inside a tokio runtime (command mappers start here).
pub fn build(config: &Config, fleet: Arc<dyn Mapper>, fleet_deadline: Duration) -> Stacks {
    let keys = config.trusted_keys();
    let client = crate::http::client();
    let mut full = Ordered::new().push(fleet, fleet_deadline + SLACK * 2);
    let mut local = Ordered::new();
    // Imported entries first among the configured mappers: what the
    // operator imported on purpose.
    let imported: Arc<dyn Mapper> = Arc::new(FolderMapper::open(
        &config.state_directory.join(IMPORT_DIR),
        keys.clone(),
    ));
    full = full.push(imported.clone(), FOLDER_DEADLINE);
    local = local.push(imported, FOLDER_DEADLINE);
    for spec in &config.mappers {
        let (m, deadline, shareable) = configured(spec, &keys, &client);
        full = full.push(m.clone(), deadline);
        if shareable {
            local = local.push(m, deadline);
        }
    }
    // Backends that also answer narinfo lookups, last: they are binary
    // caches like the upstreams, asked under the upstream deadline.
    if let Some(spec) = config
        .backends
        .mirrors
        .as_ref()
        .filter(|m| m.lookup != Some(false))
    {
        let m = crate::mirrors::MirrorsMapper::new(
            spec,
            client.clone(),
            config.upstream_timeout,
            keys.clone(),
        );
        full = full.push(Arc::new(m), config.upstream_timeout + SLACK);
    }
    if let Some(spec) = config
        .backends
        .s3
        .as_ref()
        .filter(|s| s.lookup != Some(false))
    {
        match crate::s3::S3Mapper::new(spec, keys.clone(), config.upstream_timeout) {
            Ok(m) => full = full.push(Arc::new(m), config.upstream_timeout + SLACK),
            Err(e) => tracing::error!("[backends.s3]: no narinfo lookups from the bucket: {e}"),
        }
    }
    tracing::info!(full = full.name(), local = local.name(), "mapper stacks");
    Stacks { full, local }
}
