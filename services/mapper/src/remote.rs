//! The HTTP mapper: another node's (or any service's) mapper, read-only,
//! at `GET <url>/_ds/v1/lookup/<hash>` → `{"narinfo": "…", "locators": […]}`
//! (404 when unknown). A node answers that route from its local index and
//! folder/command mappers only, never by asking its own peers or upstreams,
//! so two nodes that list each other cannot loop.

use std::time::Duration;

use ds_core::{Locator, NarInfo, PublicKey, StorePathHash};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::http::{get_capped, MAX_NARINFO_BYTES};
use crate::mapper::{MapError, Mapper, Mapping, Scope};

/// The route, below a node's base URL.
pub const LOOKUP_PATH: &str = "/_ds/v1/lookup/";

/// The JSON body of a lookup answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupJson {
    /// The narinfo text.
    pub narinfo: String,
    /// Locator strings, best first.
    pub locators: Vec<String>,
    /// The answering node holds the path in its store (so
    /// `peer:<its url>` is one more locator).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

/// A [`Mapper`] asking a remote `/_ds/v1/lookup/` within a deadline.
pub struct RemoteMapper {
    client: reqwest::Client,
    url: String,
    name: String,
    keys: Vec<PublicKey>,
    timeout: Duration,
}

impl RemoteMapper {
    /// The mapper at base URL `url`, trusting `keys`, asked within `timeout`.
    pub fn new(
        client: reqwest::Client,
        url: &str,
        keys: Vec<PublicKey>,
        timeout: Duration,
    ) -> Self {
        let url = url.trim_end_matches('/').to_string();
        RemoteMapper {
            client,
            name: format!("http:{url}"),
            url,
            keys,
            timeout,
        }
    }

    /// Ask; `Ok(None)` on 404, `Err` on anything else that is not a valid,
    /// trusted answer for this path.
    pub async fn query(&self, hash: &StorePathHash) -> Result<Option<Mapping>, MapError> {
        let err = |reason: String| MapError {
            mapper: self.name.clone(),
            reason,
        };
        let url = format!("{}{LOOKUP_PATH}{hash}", self.url);
        // A narinfo plus locators: the narinfo cap with room for locators.
        let (status, body) = get_capped(
            &self.client,
            &url,
            self.timeout,
            2 * MAX_NARINFO_BYTES,
            None,
        )
        .await
        .map_err(|e| err(e.to_string()))?;
        match status {
            200 => {}
            404 => return Ok(None),
            s => return Err(err(format!("HTTP status {s}"))),
        }
        let answer: LookupJson =
            serde_json::from_slice(&body).map_err(|e| err(format!("bad JSON: {e}")))?;
        let mut narinfo = NarInfo::parse(&answer.narinfo).map_err(|e| err(e.to_string()))?;
        if narinfo.store_path.hash() != hash {
            return Err(err(format!(
                "answer is for {}",
                narinfo.store_path.to_absolute()
            )));
        }
        if !narinfo.is_trusted(&self.keys) {
            return Err(err("answer has no signature this node trusts".into()));
        }
        narinfo.retain_trusted_sigs(&self.keys);
        let mut locators = Vec::new();
        if answer.held {
            locators.push(Locator::Peer(self.url.clone()));
        }
        for l in &answer.locators {
            match Locator::parse(l) {
                Ok(l) => locators.push(l),
                Err(e) => tracing::debug!(mapper = %self.name, "locator ignored: {e}"),
            }
        }
        Ok(Some(Mapping { narinfo, locators }))
    }
}

impl Mapper for RemoteMapper {
    fn name(&self) -> &str {
        &self.name
    }

    fn lookup<'a>(
        &'a self,
        hash: &'a StorePathHash,
        _scope: Scope,
    ) -> BoxFuture<'a, Result<Option<Mapping>, MapError>> {
        Box::pin(self.query(hash))
    }
}
