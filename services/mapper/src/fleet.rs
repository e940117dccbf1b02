//! The peer mapper (what peers announced, or a hedged fan-out when none
//! did) and the fleet mapper that composes it with the upstream mapper and
//! adds the rendezvous chain of leaders.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ds_core::{rendezvous_order, Hash, Locator, NarInfo, PublicKey, StorePathHash};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};

use crate::http::fetch_narinfo;
use crate::mapper::{MapError, Mapper, Mapping, Scope};
use crate::peers::Peers;
use crate::upstream::UpstreamMapper;

/// Extra time allowed past a deadline for scheduling and parsing.
pub const SLACK: Duration = Duration::from_millis(150);

/// Narinfo from peers: first those that announced the path (held or in
/// flight); when none did, every live peer at once (it may have gained the
/// path since the last poll). Peer queries carry `X-Distributed-Store-Hop:
/// peer`, so a peer answers only from what it holds (no relaying).
pub struct PeerMapper {
    client: reqwest::Client,
    peers: Arc<Peers>,
    keys: Vec<PublicKey>,
    timeout: Duration,
}

impl PeerMapper {
    /// Peers in `peers`, trusting `keys`, each asked within `timeout`.
    pub fn new(
        client: reqwest::Client,
        peers: Arc<Peers>,
        keys: Vec<PublicKey>,
        timeout: Duration,
    ) -> Self {
        PeerMapper {
            client,
            peers,
            keys,
            timeout,
        }
    }

    /// Ask the peers; answers on the first trusted narinfo. Locators:
    /// `peer:` for holders (announced, or that answered), then for peers
    /// fetching it now; peers whose narinfo has another NarHash are left out.
    pub async fn query(&self, hash: &StorePathHash) -> Option<Mapping> {
        let (held, inflight) = self.peers.holders(hash.as_str());
        let fanout = held.is_empty() && inflight.is_empty();
        let targets: Vec<String> = if fanout {
            self.peers.live().into_iter().map(|(u, _)| u).collect()
        } else {
            held.iter().chain(inflight.iter()).cloned().collect()
        };
        if targets.is_empty() {
            return None;
        }
        let mut pending: FuturesUnordered<_> = targets
            .iter()
            .map(|u| async move {
                let r = fetch_narinfo(
                    &self.client,
                    u,
                    hash,
                    self.timeout,
                    Some("peer"),
                    &self.keys,
                )
                .await;
                (u.clone(), r)
            })
            .collect();
        let deadline = tokio::time::sleep(self.timeout + SLACK);
        tokio::pin!(deadline);
        let mut answers: HashMap<String, Hash> = HashMap::new();
        let mut first: Option<(String, NarInfo)> = None;
        while first.is_none() {
            tokio::select! {
                next = pending.next() => match next {
                    Some((u, Ok(info))) => {
                        answers.insert(u.clone(), info.nar_hash.clone());
                        first = Some((u, info));
                    }
                    Some((u, Err(e))) => {
                        tracing::debug!(peer = %u, %hash, "no narinfo: {e}");
                    }
                    None => break,
                },
                _ = &mut deadline => break,
            }
        }
        let (answered_by, mut narinfo) = first?;
        let same = |u: &String| answers.get(u).is_none_or(|h| *h == narinfo.nar_hash);
        let mut locators: Vec<Locator> = vec![Locator::Peer(answered_by.clone())];
        let holders = if fanout { Vec::new() } else { held };
        for u in holders.iter().chain(inflight.iter()) {
            if *u != answered_by && same(u) {
                locators.push(Locator::Peer(u.clone()));
            }
        }
        // The peer that answered goes with its group: a holder first, one
        // that is still fetching after the holders.
        if inflight.contains(&answered_by) {
            locators.remove(0);
            let at = holders.len().min(locators.len());
            locators.insert(at, Locator::Peer(answered_by));
        }
        narinfo.retain_trusted_sigs(&self.keys);
        Some(Mapping { narinfo, locators })
    }
}

impl Mapper for PeerMapper {
    fn name(&self) -> &str {
        "peers"
    }

    fn lookup<'a>(
        &'a self,
        hash: &'a StorePathHash,
        scope: Scope,
    ) -> BoxFuture<'a, Result<Option<Mapping>, MapError>> {
        Box::pin(async move {
            match scope {
                Scope::Upstream => Ok(None),
                Scope::Fleet => Ok(self.query(hash).await),
            }
        })
    }
}

/// Peers and upstreams together, plus the rendezvous chain: the leader for
/// a NAR (first live node in [`rendezvous_order`] of its NarHash) fetches it
/// upstream for the fleet; the others are given `lead:` locators in that
/// order down to this node, where the upstream `file:` locators come.
pub struct FleetMapper {
    node_id: String,
    peers: Arc<Peers>,
    peer_mapper: Arc<PeerMapper>,
    upstream: Arc<UpstreamMapper>,
    deadline: Duration,
}

impl FleetMapper {
    /// `node_id` is this node's epoch. `deadline` bounds a whole lookup
    /// (max(peer, upstream timeout) is a good value; slack is added).
    pub fn new(
        node_id: String,
        peers: Arc<Peers>,
        peer_mapper: Arc<PeerMapper>,
        upstream: Arc<UpstreamMapper>,
        deadline: Duration,
    ) -> Self {
        FleetMapper {
            node_id,
            peers,
            peer_mapper,
            upstream,
            deadline,
        }
    }

    /// Resolve for the local client (peers and upstreams, chain added).
    pub async fn query(&self, hash: &StorePathHash) -> Option<Mapping> {
        let peer_fut = self.peer_mapper.query(hash);
        let up_fut = self.upstream.query(hash);
        tokio::pin!(peer_fut, up_fut);
        let deadline = tokio::time::sleep(self.deadline + SLACK);
        tokio::pin!(deadline);
        let (mut peer_res, mut up_res) = (None, None);
        let (mut peer_done, mut up_done) = (false, false);
        while !(peer_done && up_done) {
            tokio::select! {
                r = &mut peer_fut, if !peer_done => {
                    peer_done = true;
                    peer_res = r;
                    // A holder answered: the result cannot get better.
                    if peer_res.is_some() { break; }
                }
                r = &mut up_fut, if !up_done => {
                    up_done = true;
                    up_res = r;
                }
                _ = &mut deadline => break,
            }
        }
        let upstream_missing = up_done && up_res.is_none();
        let (narinfo, mut locators) = match (peer_res, &up_res) {
            (Some(p), _) => (p.narinfo, p.locators),
            (None, Some(u)) => (u.narinfo.clone(), Vec::new()),
            (None, None) => return None,
        };
        let files: Vec<Locator> = up_res
            .filter(|u| u.narinfo.nar_hash == narinfo.nar_hash)
            .map(|u| u.locators)
            .unwrap_or_default();
        if !upstream_missing {
            self.chain(&narinfo.nar_hash, files, &mut locators);
        }
        Some(Mapping { narinfo, locators })
    }

    /// Append the rendezvous chain: `lead:` for each live peer ranked above
    /// this node, then this node's own upstream files.
    pub fn chain(&self, nar_hash: &Hash, files: Vec<Locator>, out: &mut Vec<Locator>) {
        let live = self.peers.live();
        let by_id: HashMap<&str, &str> =
            live.iter().map(|(u, e)| (e.as_str(), u.as_str())).collect();
        let mut nodes: Vec<&str> = vec![self.node_id.as_str()];
        nodes.extend(live.iter().map(|(_, e)| e.as_str()));
        for node in rendezvous_order(&nar_hash.digest, &nodes) {
            if node == self.node_id {
                out.extend(files);
                return;
            }
            if let Some(url) = by_id.get(node) {
                let lead = Locator::Lead(url.to_string());
                let already = out
                    .iter()
                    .any(|l| matches!(l, Locator::Peer(p) if p == url));
                if !already {
                    out.push(lead);
                }
            }
        }
    }
}

impl Mapper for FleetMapper {
    fn name(&self) -> &str {
        "fleet"
    }

    fn lookup<'a>(
        &'a self,
        hash: &'a StorePathHash,
        scope: Scope,
    ) -> BoxFuture<'a, Result<Option<Mapping>, MapError>> {
        Box::pin(async move {
            match scope {
                Scope::Upstream => Ok(self.upstream.query(hash).await),
                Scope::Fleet => Ok(self.query(hash).await),
            }
        })
    }
}
