//! The upstream mapper: asks every configured binary cache in parallel.

use std::time::Duration;

use ds_core::{FileLocator, Locator, NarInfo, PublicKey, StorePathHash};
use futures::future::{join_all, BoxFuture};

use crate::http::fetch_narinfo;
use crate::mapper::{MapError, Mapper, Mapping, Scope};

/// Upstream binary caches (e.g. cache.nixos.org).
pub struct UpstreamMapper {
    client: reqwest::Client,
    urls: Vec<String>,
    keys: Vec<PublicKey>,
    timeout: Duration,
}

/// The absolute URL of a narinfo's `URL:` relative to its cache.
pub fn file_url(base: &str, url: &str) -> String {
    if url.starts_with("http://") || url.starts_with("https://") {
        url.to_string()
    } else {
        format!(
            "{}/{}",
            base.trim_end_matches('/'),
            url.trim_start_matches('/')
        )
    }
}

/// The `file:` locator of a narinfo served by the cache at `base`.
pub fn file_locator(base: &str, info: &NarInfo) -> Locator {
    Locator::File(FileLocator {
        url: file_url(base, &info.url),
        compression: info.compression.clone(),
        file_hash: info.file_hash.clone(),
        file_size: info.file_size,
    })
}

impl UpstreamMapper {
    /// Caches at `urls` (base URLs), trusting `keys`, each asked within `timeout`.
    pub fn new(
        client: reqwest::Client,
        urls: Vec<String>,
        keys: Vec<PublicKey>,
        timeout: Duration,
    ) -> Self {
        UpstreamMapper {
            client,
            urls,
            keys,
            timeout,
        }
    }

    /// Ask every upstream (in parallel, each within the timeout): the first
    /// trusted narinfo in config order, and the file locator of every
    /// upstream whose narinfo has the same NarHash.
    pub async fn query(&self, hash: &StorePathHash) -> Option<Mapping> {
        let answers = join_all(self.urls.iter().map(|u| async move {
            let r = fetch_narinfo(&self.client, u, hash, self.timeout, None, &self.keys).await;
            if let Err(e) = &r {
                tracing::debug!(upstream = %u, %hash, "no narinfo: {e}");
            }
            (u, r.ok())
        }))
        .await;
        let mut first: Option<NarInfo> = None;
        let mut locators = Vec::new();
        for (base, info) in answers {
            let Some(info) = info else { continue };
            let first = first.get_or_insert_with(|| info.clone());
            if first.nar_hash == info.nar_hash {
                locators.push(file_locator(base, &info));
            }
        }
        let mut narinfo = first?;
        narinfo.retain_trusted_sigs(&self.keys);
        Some(Mapping { narinfo, locators })
    }
}

impl Mapper for UpstreamMapper {
    fn name(&self) -> &str {
        "upstream"
    }

    fn lookup<'a>(
        &'a self,
        hash: &'a StorePathHash,
        _scope: Scope,
    ) -> BoxFuture<'a, Result<Option<Mapping>, MapError>> {
        Box::pin(async move { Ok(self.query(hash).await) })
    }
}
