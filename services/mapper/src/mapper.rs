//! The `Mapper` trait: one source of "which NAR is this path, and where can
//! it be had". Mappers stack: [`Stack`] asks several at once, each under
//! its own deadline, and the first answer wins. The built-in ones are
//! [`crate::upstream::UpstreamMapper`], [`crate::fleet::PeerMapper`] and
//! their composition [`crate::fleet::FleetMapper`]; a folder, HTTP or
//! external-program mapper is one more `impl Mapper` put in a `Stack`.

use std::sync::Arc;
use std::time::Duration;

use ds_core::{Locator, NarInfo, StorePathHash};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};

/// Who is asking, which decides what may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Only the upstream caches (a leader fetching for the fleet).
    Upstream,
    /// Everything: peers, then upstreams (the local Nix client).
    Fleet,
}

/// An answer: a trusted narinfo and the NAR's locators in preference order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The narinfo (only signatures this node trusts kept).
    pub narinfo: NarInfo,
    /// Where to fetch the NAR, best first.
    pub locators: Vec<Locator>,
}

/// A source failed in a way worth logging (a miss is `Ok(None)`).
#[derive(Debug, thiserror::Error)]
#[error("mapper {mapper}: {reason}")]
pub struct MapError {
    /// The mapper's name.
    pub mapper: String,
    /// What went wrong.
    pub reason: String,
}

/// A source of mappings.
pub trait Mapper: Send + Sync {
    /// Short name for logs (`upstream`, `peers`, `folder:/srv/map`, …).
    fn name(&self) -> &str;
    /// Resolve a hash part; `Ok(None)` when this source does not know it.
    /// Must bound its own time (an [`Ordered`] stack also enforces a deadline).
    fn lookup<'a>(
        &'a self,
        hash: &'a StorePathHash,
        scope: Scope,
    ) -> BoxFuture<'a, Result<Option<Mapping>, MapError>>;
}

/// Several mappers asked at once, answered in *priority* order: the answer
/// of layer `i` is taken once every layer before it has missed (or passed
/// its deadline), so a fast folder never overrides the fleet, yet a slow
/// fleet miss does not delay it beyond the fleet's deadline. Locators of
/// later layers that already answered with the same NarHash are appended
/// (deduplicated): the IPFS CID from a folder joins the fleet's peers.
#[derive(Default)]
pub struct Ordered {
    layers: Vec<(Arc<dyn Mapper>, Duration)>,
    name: String,
}

impl Ordered {
    /// An empty stack (answers nothing).
    pub fn new() -> Self {
        Ordered {
            layers: Vec::new(),
            name: "ordered()".into(),
        }
    }

    /// Add a mapper (lowest priority so far) with its deadline.
    pub fn push(mut self, mapper: Arc<dyn Mapper>, deadline: Duration) -> Self {
        self.layers.push((mapper, deadline));
        self.name = format!(
            "ordered({})",
            self.layers
                .iter()
                .map(|(m, _)| m.name())
                .collect::<Vec<_>>()
                .join(",")
        );
        self
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// True without layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl Mapper for Ordered {
    fn name(&self) -> &str {
        &self.name
    }

    fn lookup<'a>(
        &'a self,
        hash: &'a StorePathHash,
        scope: Scope,
    ) -> BoxFuture<'a, Result<Option<Mapping>, MapError>> {
        Box::pin(async move {
            let mut pending: FuturesUnordered<_> = self
                .layers
                .iter()
                .enumerate()
                .map(|(i, (m, deadline))| async move {
                    let r = match tokio::time::timeout(*deadline, m.lookup(hash, scope)).await {
                        Ok(Ok(r)) => r,
                        Ok(Err(e)) => {
                            tracing::info!(%hash, "{e}");
                            None
                        }
                        Err(_) => {
                            tracing::debug!(mapper = m.name(), %hash, "no answer within {deadline:?}");
                            None
                        }
                    };
                    (i, r)
                })
                .collect();
            // None: still running; Some(r): finished with r.
            let mut done: Vec<Option<Option<Mapping>>> = vec![None; self.layers.len()];
            while let Some((i, r)) = pending.next().await {
                done[i] = Some(r);
                // The first layer that is not a finished miss decides.
                let Some(first) = done.iter().position(|d| !matches!(d, Some(None))) else {
                    return Ok(None);
                };
                let Some(Some(winner)) = &done[first] else {
                    continue;
                };
                let mut answer = winner.clone();
                for later in done[first + 1..].iter().flatten().flatten() {
                    if later.narinfo.nar_hash != answer.narinfo.nar_hash {
                        continue;
                    }
                    for l in &later.locators {
                        if !answer.locators.contains(l) {
                            answer.locators.push(l.clone());
                        }
                    }
                }
                return Ok(Some(answer));
            }
            Ok(None)
        })
    }
}
