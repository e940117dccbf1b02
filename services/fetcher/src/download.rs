//! One download: sources in preference order, hedged on a slow first byte,
//! continued from the next source where one broke, verified as a whole.

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ds_core::{Locator, NarHasher, NarInfo};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::{timeout, Instant};

use crate::backend::{Backend, BackendError, ByteStream};
use crate::fetcher::Inner;
use crate::reader::Progress;

/// A source that can be tried: the locator and the backend for it.
pub(crate) struct Source {
    pub locator: Locator,
    pub backend: Arc<dyn Backend>,
}

impl Source {
    /// Base URL of a peer source (`peer:` or `lead:`), which the mapper is
    /// told about when it serves bad data.
    fn peer_url(&self) -> Option<&str> {
        match &self.locator {
            Locator::Peer(u) | Locator::Lead(u) => Some(u),
            _ => None,
        }
    }
}

/// Why a download failed.
pub(crate) enum Failure {
    /// Every source failed (errors listed).
    Exhausted(String),
    /// The bytes failed verification (size or hash).
    Verification(String),
}

/// A source that answered and delivered its first useful byte(s).
struct Winner {
    idx: usize,
    stream: ByteStream,
    first: Bytes,
}

/// Stall limit of a source: no bytes for this long aborts it. Generous
/// against the first-byte deadline: a peer may itself be waiting on its
/// upstream mid-stream.
fn stall(inner: &Inner, deadline: Duration) -> Duration {
    (deadline * 4).max(inner.config.min_stall)
}

/// Open source `idx` at `pos` and read up to its first byte at `pos`
/// (discarding what a source that cannot seek sends before it).
async fn first_bytes(
    inner: Arc<Inner>,
    source_locator: Locator,
    backend: Arc<dyn Backend>,
    nar: Arc<NarInfo>,
    idx: usize,
    pos: u64,
) -> (usize, Result<Winner, BackendError>) {
    let limit = stall(&inner, backend.deadline(&source_locator));
    let result = async {
        let opened = timeout(limit, backend.open(&source_locator, &nar, pos))
            .await
            .map_err(|_| BackendError::Transport(format!("no answer within {limit:?}")))??;
        if opened.start > pos {
            return Err(BackendError::Refused(format!(
                "asked for byte {pos}, got a stream from {}",
                opened.start
            )));
        }
        let mut stream = opened.stream;
        let mut skip = pos - opened.start;
        loop {
            let chunk = timeout(limit, stream.next())
                .await
                .map_err(|_| BackendError::Transport(format!("no bytes within {limit:?}")))?;
            let mut chunk = match chunk {
                Some(c) => c?,
                None => {
                    return Err(BackendError::BadData(format!(
                        "ended before byte {pos} (NarSize {})",
                        nar.nar_size
                    )))
                }
            };
            inner.count_bytes(source_locator.scheme(), chunk.len() as u64);
            if skip > 0 {
                let n = skip.min(chunk.len() as u64);
                skip -= n;
                chunk = chunk.slice(n as usize..);
            }
            if !chunk.is_empty() {
                return Ok(Winner {
                    idx,
                    stream,
                    first: chunk,
                });
            }
        }
    }
    .await;
    (idx, result)
}

/// A source must deliver at least this much per stall period once it
/// streams: a peer that drips a byte now and then is as bad as a dead one.
const MIN_PROGRESS: u64 = 64 * 1024;
/// Starts over from byte 0 after a verification failure, at most.
const MAX_RESTARTS: u32 = 3;

/// Run the download to its end, writing the bytes to `file` and
/// publishing progress on `tx`. Peers that served bad data are reported to
/// the mapper on the way (on a hash mismatch: every peer that contributed).
///
/// When every source failed, `fallback` (the upstream caches, asked of the
/// mapper) is tried once, from the byte reached. When the whole NAR fails
/// verification, the download starts over from byte 0 without the peers
/// that contributed to it (readers that passed bytes on give up; readers
/// waiting for a verified NAR do not notice).
pub(crate) async fn run(
    inner: &Arc<Inner>,
    nar: &Arc<NarInfo>,
    mut sources: Vec<Source>,
    fallback: BoxFuture<'static, Vec<String>>,
    file: &Arc<std::fs::File>,
    tx: &watch::Sender<Progress>,
) -> Result<(), Failure> {
    let nar_size = nar.nar_size;
    let mut fallback = Some(fallback);
    let mut banned: BTreeSet<usize> = BTreeSet::new();
    let mut restarts = 0u32;
    'attempts: loop {
        let mut hasher = NarHasher::new();
        let mut pos = 0u64;
        let mut untried: BTreeSet<usize> =
            (0..sources.len()).filter(|i| !banned.contains(i)).collect();
        let mut errors: Vec<String> = Vec::new();
        let mut contributors: BTreeSet<usize> = BTreeSet::new();
        // On a verification failure: start over from byte 0 without the
        // sources that sent it (peers are also reported to the mapper),
        // then the upstream fallback. When peers contributed, they are the
        // suspects (the least trusted sources); otherwise every contributor
        // is: any backend may lie (a corrupt mirror, a bad object in a
        // bucket, wrong content behind a CID), so a bad NAR from one source
        // must not end the download while another could still deliver.
        macro_rules! start_over {
            ($reason:expr) => {{
                let reason: String = $reason;
                let peers: Vec<usize> = contributors
                    .iter()
                    .copied()
                    .filter(|i| sources[*i].peer_url().is_some())
                    .collect();
                for idx in &peers {
                    if let Some(peer) = sources[*idx].peer_url() {
                        inner.mapper.report_bad(peer, &reason);
                    }
                }
                let suspects: Vec<usize> = if peers.is_empty() {
                    contributors.iter().copied().collect()
                } else {
                    peers
                };
                restarts += 1;
                if suspects.is_empty() || restarts > MAX_RESTARTS {
                    return Err(Failure::Verification(reason));
                }
                tracing::warn!(path = %nar.store_path, "{reason}; starting over without the sources that sent it");
                banned.extend(suspects);
                tx.send_modify(|p| {
                    p.written = 0;
                    p.generation += 1;
                });
                continue 'attempts;
            }};
        }

        'sources: loop {
            // Phase 1: find a source that delivers, starting the next one
            // whenever the newest has not answered within its deadline.
            let mut pending = FuturesUnordered::new();
            let mut racing: BTreeSet<usize> = BTreeSet::new();
            let mut hedge_at: Option<Instant> = None;
            let winner = loop {
                let start_next =
                    pending.is_empty() || hedge_at.is_some_and(|t| Instant::now() >= t);
                if start_next {
                    if let Some(idx) = untried.pop_first() {
                        let src = &sources[idx];
                        let deadline = src.backend.deadline(&src.locator);
                        tracing::debug!(source = %src.locator, pos, "trying source");
                        pending.push(first_bytes(
                            inner.clone(),
                            src.locator.clone(),
                            src.backend.clone(),
                            nar.clone(),
                            idx,
                            pos,
                        ));
                        racing.insert(idx);
                        hedge_at = Some(Instant::now() + deadline);
                    } else if pending.is_empty() {
                        // Last resort: the upstream caches, once.
                        if let Some(more) = fallback.take() {
                            let known: BTreeSet<String> =
                                sources.iter().map(|s| s.locator.to_string()).collect();
                            let extra: Vec<String> = more
                                .await
                                .into_iter()
                                .filter(|l| !known.contains(l))
                                .collect();
                            let first_new = sources.len();
                            sources.extend(inner.sources_for(&extra));
                            if sources.len() > first_new {
                                tracing::info!(
                                    path = %nar.store_path,
                                    pos,
                                    "every source failed; trying the upstream caches"
                                );
                                untried.extend(first_new..sources.len());
                                continue;
                            }
                        }
                        return Err(Failure::Exhausted(if errors.is_empty() {
                            "no usable source".to_string()
                        } else {
                            errors.join("; ")
                        }));
                    } else {
                        hedge_at = None;
                    }
                }
                let hedge = async {
                    match hedge_at {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    Some((idx, result)) = pending.next() => match result {
                        Ok(w) => break w,
                        Err(e) => {
                            racing.remove(&idx);
                            fail_source(inner, &sources[idx], &e, &mut errors);
                        }
                    },
                    _ = hedge => {}
                }
            };
            // Slower sources that were still trying stay candidates for later.
            drop(pending);
            let Winner {
                idx,
                mut stream,
                first,
            } = winner;
            let src = &sources[idx];
            let scheme = src.locator.scheme().to_string();
            let limit = stall(inner, src.backend.deadline(&src.locator));
            racing.remove(&idx);
            untried.extend(racing);
            let mut next_chunk = Some(first);
            // Progress window: at least MIN_PROGRESS bytes every `limit`.
            let mut window_end = Instant::now() + limit;
            let mut window_bytes = 0u64;

            // Phase 2: stream from the winner.
            loop {
                let data = match next_chunk.take() {
                    Some(c) => c,
                    None => {
                        let next = tokio::time::timeout_at(window_end, stream.next()).await;
                        if Instant::now() >= window_end {
                            if window_bytes < MIN_PROGRESS && pos + window_bytes < nar_size {
                                let e = BackendError::Transport(format!(
                                    "too slow: {window_bytes} bytes in {limit:?} at byte {pos}"
                                ));
                                fail_source(inner, src, &e, &mut errors);
                                continue 'sources;
                            }
                            window_end = Instant::now() + limit;
                            window_bytes = 0;
                        }
                        match next {
                            Err(_) => continue,
                            Ok(None) => {
                                let e = BackendError::BadData(format!(
                                    "ended at byte {pos} of NarSize {nar_size}"
                                ));
                                fail_source(inner, src, &e, &mut errors);
                                continue 'sources;
                            }
                            Ok(Some(Err(e))) => {
                                fail_source(inner, src, &e, &mut errors);
                                continue 'sources;
                            }
                            Ok(Some(Ok(c))) => {
                                inner.count_bytes(&scheme, c.len() as u64);
                                c
                            }
                        }
                    }
                };
                if data.is_empty() {
                    continue;
                }
                window_bytes += data.len() as u64;
                contributors.insert(idx);
                if pos + data.len() as u64 > nar_size {
                    let e =
                        BackendError::BadData(format!("sent more than NarSize {nar_size} bytes"));
                    fail_source(inner, src, &e, &mut errors);
                    start_over!(format!("{}: {e}", src.locator));
                }
                let f = file.clone();
                let chunk = data.clone();
                let at = pos;
                let written = tokio::task::spawn_blocking(move || f.write_all_at(&chunk, at)).await;
                match written {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        return Err(Failure::Exhausted(format!("writing the cache file: {e}")))
                    }
                    Err(e) => {
                        return Err(Failure::Exhausted(format!("writing the cache file: {e}")))
                    }
                }
                hasher.update(&data);
                pos += data.len() as u64;
                tx.send_modify(|p| p.written = pos);
                if pos == nar_size {
                    // All bytes are here; a source that keeps sending is bad.
                    loop {
                        match timeout(limit, stream.next()).await {
                            Ok(Some(Ok(c))) if c.is_empty() => continue,
                            Ok(Some(Ok(c))) => {
                                inner.count_bytes(&scheme, c.len() as u64);
                                let e = BackendError::BadData(format!(
                                    "sent more than NarSize {nar_size} bytes"
                                ));
                                fail_source(inner, src, &e, &mut errors);
                                start_over!(format!("{}: {e}", src.locator));
                            }
                            // The source's own check at its end (FileHash, …).
                            Ok(Some(Err(e))) if e.is_bad_data() => {
                                fail_source(inner, src, &e, &mut errors);
                                start_over!(format!("{}: {e}", src.locator));
                            }
                            // Ended, or broke/stalled after the last byte: the
                            // bytes are complete either way.
                            _ => break 'sources,
                        }
                    }
                }
            }
        }

        let (hash, size) = hasher.finish();
        if size != nar_size || hash != nar.nar_hash {
            inner.stats.count_verification_failure();
            start_over!(format!(
                "NAR verification failed: got {size} bytes with {}, narinfo says {nar_size} bytes with {}",
                hash.to_nix32_string(),
                nar.nar_hash.to_nix32_string()
            ));
        }
        return Ok(());
    }
}

/// Log and count a source's failure; a peer that sent bad data is
/// reported to the mapper (quarantined there).
fn fail_source(inner: &Inner, src: &Source, e: &BackendError, errors: &mut Vec<String>) {
    tracing::info!(source = %src.locator, "source failed: {e}");
    errors.push(format!("{}: {e}", src.locator));
    if e.is_bad_data() {
        inner.stats.count_verification_failure();
        if let Some(peer) = src.peer_url() {
            inner.mapper.report_bad(peer, &e.to_string());
        }
    }
}
