//! The proxy: the Nix binary-cache HTTP protocol over the local store.
//!
//! Routes: `/nix-cache-info`, `/<hash>.narinfo` (GET, HEAD),
//! `/nar/<hash>-<narhash>.nar[.zst|.xz]` (GET, HEAD; Range when
//! uncompressed), `/metrics`. NARs are generated from the store on the fly,
//! verified against the database while streaming and compressed on the fly,
//! chunk by chunk on a bounded blocking pool (see [`blocking`]).
//! narinfo files carry the signatures stored with the path plus this node's
//! own (from the signer over D-Bus, once per fingerprint).

pub mod blocking;
pub mod body;
pub mod error;
pub mod fleet;
pub mod lookup;
pub mod metrics;
pub mod route;
pub mod sendfile;
pub mod server;
pub mod signing;
pub mod status;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use ds_core::{CacheInfo, NarInfo, Signature, StorePathHash};
use ds_runtime::config::{NarCompression, SignPaths};
use ds_runtime::Config;
use ds_store::{LocalStore, Lookup, PathInfo};
use futures::StreamExt;

pub use crate::error::ProxyError;
use crate::fleet::{FetchError, Fleet, Hop, Resolved};
use crate::metrics::{Metrics, RequestLabels, RouteLabels};
use crate::route::Route;
use crate::signing::SignerClient;

/// `Retry-After` (seconds) of a narinfo answered 503 because this node's
/// signature could not be had: the signer back-off.
const SIGNER_RETRY_AFTER: u32 = signing::BACKOFF.as_secs() as u32;

/// Everything a request handler needs.
pub struct App {
    /// Validated config.
    pub config: Config,
    /// The local store.
    pub store: Arc<LocalStore>,
    /// This node's signatures.
    pub signer: Arc<SignerClient>,
    /// The mapper and the fetcher (paths this store lacks).
    pub fleet: Arc<Fleet>,
    /// Prometheus metrics, also read by the D-Bus status object.
    pub metrics: Arc<Metrics>,
    cache_info: String,
}

type Answer = Result<Response<Body>, ProxyError>;

impl App {
    /// Build the app state.
    pub fn new(
        config: Config,
        store: Arc<LocalStore>,
        signer: Arc<SignerClient>,
        fleet: Arc<Fleet>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let cache_info = CacheInfo {
            store_dir: ds_core::STORE_DIR.to_string(),
            want_mass_query: config.want_mass_query,
            priority: config.priority,
        }
        .render();
        App {
            config,
            store,
            signer,
            fleet,
            metrics,
            cache_info,
        }
    }

    /// Handle one request (the whole HTTP API).
    pub async fn handle(self: Arc<Self>, req: Request<Body>) -> Response<Body> {
        let started = Instant::now();
        // The head only: a body is never read (GET and HEAD have none).
        let (req, _) = req.into_parts();
        if let Some(r) = lookup::handle(&self, &req.method, req.uri.path()).await {
            self.count(lookup::LABEL, r.status().as_u16(), started);
            return r;
        }
        let route = route::parse(req.uri.path());
        let label = route.label();
        let response = self
            .dispatch(&req, route)
            .await
            .unwrap_or_else(ProxyError::into_response);
        let status = response.status().as_u16();
        self.count(label, status, started);
        if req.method == Method::HEAD {
            // The length GET would send, without the body.
            let (mut parts, body) = response.into_parts();
            if !parts.headers.contains_key(header::CONTENT_LENGTH) {
                if let Some(n) = hyper::body::Body::size_hint(&body).exact() {
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                }
            }
            return Response::from_parts(parts, Body::empty());
        }
        response
    }

    /// Count one answered request: by route and status, and its latency.
    fn count(&self, route: &'static str, status: u16, started: Instant) {
        self.metrics.requests_answered.inc();
        self.metrics
            .requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
        self.metrics
            .latency
            .get_or_create(&RouteLabels { route })
            .observe(started.elapsed().as_secs_f64());
    }

    async fn dispatch(&self, req: &axum::http::request::Parts, route: Route) -> Answer {
        let hop = Hop::from_header(
            req.headers
                .get(fleet::HOP_HEADER)
                .map(HeaderValue::as_bytes),
        );
        match (&req.method, route) {
            (_, Route::Bad(reason)) => Err(ProxyError::BadRequest(reason)),
            (m, _) if m != Method::GET && m != Method::HEAD => Err(ProxyError::MethodNotAllowed),
            (_, Route::CacheInfo) => typed(
                StatusCode::OK,
                "text/x-nix-cache-info",
                self.cache_info.clone(),
            ),
            (_, Route::Metrics) => typed(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics.encode(),
            ),
            (_, Route::NotFound) => Err(ProxyError::NotFound),
            (_, Route::Announce) => self.announce(req.uri.query().unwrap_or("")).await,
            (_, Route::NarInfo(hash)) => self.narinfo(hash, hop).await,
            (
                m,
                Route::Nar {
                    hash,
                    nar_hash,
                    compression,
                },
            ) => {
                let head_only = m == Method::HEAD;
                self.nar(hash, &nar_hash, compression, &req.headers, head_only, hop)
                    .await
            }
        }
    }

    /// The store's answer for `hash`: from the store's lookup cache on the
    /// async worker when the database is unchanged (no thread hand-off, no
    /// query), else one query on the blocking pool.
    async fn lookup(&self, hash: StorePathHash) -> Result<Arc<Lookup>, ProxyError> {
        if let Some(hit) = self.store.lookup_cached(&hash) {
            return Ok(hit);
        }
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.lookup(&hash)).await {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(e)) => Err(ProxyError::Internal(format!("store lookup failed: {e}"))),
            Err(e) => Err(ProxyError::Internal(format!("lookup task failed: {e}"))),
        }
    }

    /// A path this store lacks, resolved as `hop` allows: a client gets
    /// the whole fleet (mapper: peers, then upstream); a peer only what our
    /// fetcher holds or is fetching; a lead request also our upstreams.
    async fn remote(&self, hash: &StorePathHash, hop: Hop) -> Option<Arc<Resolved>> {
        match hop {
            Hop::Client => self.fleet.resolve(hash, false).await,
            Hop::Peer => self.fleet.held(hash).await,
            Hop::Lead => match self.fleet.held(hash).await {
                Some(r) => Some(r),
                None => self.fleet.resolve(hash, true).await,
            },
        }
    }

    /// Compression of the NARs we offer: peers get uncompressed NARs
    /// (a LAN; and Range works on them), clients what the config says.
    fn offered_compression(&self, hop: Hop) -> NarCompression {
        match hop {
            Hop::Client => self.config.compression,
            _ => NarCompression::None,
        }
    }

    /// This node's signature for a local path, when one is expected.
    ///
    /// Expected: this node signs (a key and the signer on the bus), the
    /// path is input-addressed (a CA path needs no signature) and the
    /// signer's rule (`signPaths`) covers it. Then a signer that is down or
    /// slow is an error (503): a narinfo without our signature would be
    /// kept by Nix for 30 days and refused by clients that trust only the
    /// fleet key, while a 5xx is not remembered (see docs/architecture.md).
    async fn own_signature(&self, info: &PathInfo) -> Result<Option<Signature>, ProxyError> {
        let covered = match self.config.sign_paths {
            SignPaths::Built => info.ultimate,
            SignPaths::All => true,
        };
        if !self.signer.enabled() || info.ca.is_some() || !covered {
            return Ok(None);
        }
        let fingerprint =
            ds_core::fingerprint(&info.path, &info.nar_hash, info.nar_size, &info.references);
        self.signer
            .sign(&info.path, fingerprint)
            .await
            .map_err(|e| ProxyError::Unavailable {
                detail: format!(
                    "narinfo of {}: no signature from the signer ({e}); answering 503 instead of a narinfo without it",
                    info.path
                ),
                retry_after: SIGNER_RETRY_AFTER,
            })
    }

    async fn narinfo(&self, hash: StorePathHash, hop: Hop) -> Answer {
        let found = self.lookup(hash.clone()).await?;
        let compression = self.offered_compression(hop);
        // The rendered narinfo, kept with the store's cached answer (so it
        // lives exactly as long as the database is unchanged): a hit needs
        // neither the signer nor rendering. Only a complete answer is kept
        // (a signer failure is an error above, never cached).
        let variant = compression as u32;
        if let Some(text) = found.rendered(variant) {
            self.metrics.narinfo_hits.inc();
            return Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "text/x-nix-narinfo")
                .body(Body::from(text))
                .map_err(|e| ProxyError::Internal(format!("building a response: {e}")));
        }
        let Some(info) = found.info.clone() else {
            let Some(r) = self.remote(&hash, hop).await else {
                self.metrics.narinfo_misses.inc();
                return Err(ProxyError::NotFound);
            };
            self.metrics.narinfo_remote.inc();
            // URL, Compression, FileHash and FileSize are outside the
            // signed fingerprint: they describe how *we* serve the NAR.
            let compression = self.offered_compression(hop);
            let mut narinfo = r.narinfo.clone();
            let nar_hash32 = ds_core::base32::encode(&narinfo.nar_hash.digest);
            let uncompressed = compression == NarCompression::None;
            narinfo.url = route::nar_url(&hash, &nar_hash32, compression);
            narinfo.compression = compression.to_core();
            narinfo.file_hash = uncompressed.then(|| narinfo.nar_hash.clone());
            narinfo.file_size = uncompressed.then_some(narinfo.nar_size);
            return typed(StatusCode::OK, "text/x-nix-narinfo", narinfo.render());
        };
        let mut sigs = info.sigs.clone();
        if let Some(sig) = self.own_signature(&info).await? {
            if !sigs.contains(&sig) {
                sigs.push(sig);
            }
        }
        self.metrics.narinfo_hits.inc();
        let nar_hash32 = ds_core::base32::encode(&info.nar_hash.digest);
        let uncompressed = compression == NarCompression::None;
        let narinfo = NarInfo {
            url: route::nar_url(info.path.hash(), &nar_hash32, compression),
            compression: compression.to_core(),
            file_hash: uncompressed.then(|| info.nar_hash.clone()),
            file_size: uncompressed.then_some(info.nar_size),
            store_path: info.path,
            nar_hash: info.nar_hash,
            nar_size: info.nar_size,
            references: info.references,
            deriver: info.deriver,
            sigs,
            ca: info.ca,
        };
        let text = bytes::Bytes::from(narinfo.render());
        found.set_rendered(variant, text.clone());
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/x-nix-narinfo")
            .body(Body::from(text))
            .map_err(|e| ProxyError::Internal(format!("building a response: {e}")))
    }

    /// A NAR: local ones are produced, verified and compressed step by step
    /// as the client takes them, on the bounded blocking pool
    /// ([`body::bounded`], [`body::compress`]).
    ///
    /// Uncompressed NARs, whole or Range, come from
    /// `LocalStore::nar_stream_for_socket`: verified over the whole NAR
    /// (for a Range the prefix and the rest are read and hashed but not
    /// sent), unless the store verified this very tree before and it is
    /// unchanged: then only the wanted bytes are produced, long files as
    /// file regions that the socket sends with `sendfile`
    /// ([`sendfile::SendFile`]). The last piece of a range leaves only once
    /// the whole NAR matched its NarHash ([`body::window`]). So no sequence
    /// of requests (a full GET cut before its last chunk, then a
    /// `Range: bytes=N-` resumption) ever completes a bad NAR.
    async fn nar(
        &self,
        hash: StorePathHash,
        nar_hash32: &str,
        compression: NarCompression,
        headers: &HeaderMap,
        head_only: bool,
        hop: Hop,
    ) -> Answer {
        let Some(info) = self.lookup(hash.clone()).await?.info.clone() else {
            return self
                .remote_nar(hash, nar_hash32, compression, headers, head_only, hop)
                .await;
        };
        // The URL names the NAR it was issued for: a path rebuilt with other
        // contents since is not that NAR.
        if ds_core::base32::encode(&info.nar_hash.digest) != nar_hash32 {
            return Err(ProxyError::NotFound);
        }
        let size = info.nar_size;
        let uncompressed = compression == NarCompression::None;
        let range = match headers.get(header::RANGE) {
            Some(v) if uncompressed => {
                Some(parse_range(v, size).map_err(|()| ProxyError::RangeNotSatisfiable { size })?)
            }
            _ => None,
        };
        let mut builder = nar_builder(uncompressed);
        if head_only {
            return nar_head(builder, compression, size);
        }
        let stream = match range {
            Some((start, end)) => {
                builder = builder
                    .status(StatusCode::PARTIAL_CONTENT)
                    .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"))
                    .header(header::CONTENT_LENGTH, end - start + 1);
                // Verified over the whole NAR by the store, or, when it
                // verified this unchanged tree before, read from `start` to
                // `end` only (a 1-byte range costs one byte, not the NAR).
                let from = self.store.clone().nar_stream_for_socket(
                    info.path.clone(),
                    info.nar_hash.clone(),
                    size,
                    start,
                    end + 1,
                );
                body::window(body::bounded(Box::pin(from)), 0, end - start)
            }
            None => {
                builder = builder.status(StatusCode::OK);
                if uncompressed {
                    builder = builder.header(header::CONTENT_LENGTH, size);
                }
                let store = self.store.clone();
                let (path, nar_hash) = (info.path.clone(), info.nar_hash.clone());
                if uncompressed {
                    // Straight to the socket: file regions are fine (sendfile).
                    let whole = store.nar_stream_for_socket(path, nar_hash, size, 0, size);
                    body::bounded(Box::pin(whole))
                } else {
                    let whole = store.nar_stream_verified(path, nar_hash, size);
                    body::compress(body::bounded(Box::pin(whole)), compression)
                }
            }
        };
        self.nar_body(builder, stream)
    }

    /// A NAR response with `stream` as its body, counted as it goes out.
    fn nar_body(&self, builder: axum::http::response::Builder, stream: body::ByteStream) -> Answer {
        let metrics = self.metrics.clone();
        let count = move |n: u64| {
            metrics.nar_bytes.inc_by(n);
        };
        builder
            .body(Body::from_stream(body::counted(stream, count)))
            .map_err(|e| ProxyError::Internal(format!("building a NAR response: {e}")))
    }
}

/// The headers every NAR response has; `ranged`: Range is honoured.
fn nar_builder(ranged: bool) -> axum::http::response::Builder {
    let builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/x-nix-nar")
        .header(header::CACHE_CONTROL, "public, max-age=31536000, immutable");
    if ranged {
        builder.header(header::ACCEPT_RANGES, "bytes")
    } else {
        builder
    }
}

/// The answer to HEAD for a NAR (its length when uncompressed).
fn nar_head(
    builder: axum::http::response::Builder,
    compression: NarCompression,
    size: u64,
) -> Answer {
    let builder = if compression == NarCompression::None {
        builder.header(header::CONTENT_LENGTH, size)
    } else {
        builder
    };
    builder
        .status(StatusCode::OK)
        .body(Body::empty())
        .map_err(|e| ProxyError::Internal(format!("building a HEAD response: {e}")))
}

impl App {
    /// A NAR this store lacks: through the fetcher (from a peer, the
    /// fleet's lead node or upstream), verified here too.
    ///
    /// Range is offered to peers only, and like a local Range it is cut
    /// from the whole NAR verified here ([`body::window`]): the fetcher's
    /// pipe is opened at 0, the prefix hashed, the range's last piece held
    /// until the NarHash matched. A client's Range request gets the whole
    /// NAR (200), verified before its last chunk leaves.
    async fn remote_nar(
        &self,
        hash: StorePathHash,
        nar_hash32: &str,
        compression: NarCompression,
        headers: &HeaderMap,
        head_only: bool,
        hop: Hop,
    ) -> Answer {
        let Some(r) = self.remote(&hash, hop).await else {
            return Err(ProxyError::NotFound);
        };
        if ds_core::base32::encode(&r.narinfo.nar_hash.digest) != nar_hash32 {
            return Err(ProxyError::NotFound);
        }
        let size = r.narinfo.nar_size;
        let ranged = hop != Hop::Client && compression == NarCompression::None;
        let range = match headers.get(header::RANGE) {
            Some(v) if ranged => {
                Some(parse_range(v, size).map_err(|()| ProxyError::RangeNotSatisfiable { size })?)
            }
            _ => None,
        };
        let mut builder = nar_builder(ranged);
        if head_only {
            return nar_head(builder, compression, size);
        }
        let verified = hop == Hop::Client && r.verify_before_serving();
        let unavailable = |detail: String| ProxyError::Unavailable {
            detail,
            retry_after: 1,
        };
        let pipe = match self.fleet.open(&r, 0, hop == Hop::Peer, verified).await {
            Ok(p) => p,
            Err(FetchError::NotFound) => return Err(ProxyError::NotFound),
            Err(FetchError::Unavailable(e)) => {
                return Err(unavailable(format!(
                    "NAR of {} unavailable: {e}",
                    r.narinfo.store_path
                )))
            }
        };
        let mut raw: body::ByteStream =
            Box::pin(tokio_util::io::ReaderStream::with_capacity(pipe, 64 * 1024));
        if verified {
            // Nothing flows until the NAR verified; an empty pipe means
            // every source failed: answer that cleanly (Nix retries a 503)
            // instead of starting a body that cannot be finished.
            let first = match tokio::time::timeout(KEEPALIVE_AFTER, raw.next()).await {
                Ok(first) => first,
                Err(_) if compression == NarCompression::Zstd => {
                    // Still downloading: start the response now, with zstd
                    // frames that carry nothing, so that the client does
                    // not give up on a silent transfer (Nix's
                    // stalled-download-timeout) while a large NAR comes
                    // from a peer or the fleet's lead node.
                    tracing::info!(
                        path = %r.narinfo.store_path,
                        "NAR not verified after {KEEPALIVE_AFTER:?}: keeping the transfer alive"
                    );
                    let (hash, size) = (r.narinfo.nar_hash.clone(), size);
                    let stream = body::keepalive_until_first(raw, KEEPALIVE_EVERY, move |s| {
                        body::compress(body::verified(s, hash, size), NarCompression::Zstd)
                    });
                    return self.nar_body(builder.status(StatusCode::OK), stream);
                }
                Err(_) => raw.next().await,
            };
            match first {
                Some(Ok(first)) => raw = Box::pin(futures::stream::iter([Ok(first)]).chain(raw)),
                _ => {
                    return Err(unavailable(format!(
                        "NAR of {} failed on every source",
                        r.narinfo.store_path
                    )))
                }
            }
        }
        let whole = body::verified(raw, r.narinfo.nar_hash.clone(), size);
        let stream = match range {
            Some((start, end)) => {
                builder = builder
                    .status(StatusCode::PARTIAL_CONTENT)
                    .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"))
                    .header(header::CONTENT_LENGTH, end - start + 1);
                body::window(whole, start, end)
            }
            None => {
                builder = builder.status(StatusCode::OK);
                if compression == NarCompression::None {
                    builder = builder.header(header::CONTENT_LENGTH, size);
                }
                body::compress(whole, compression)
            }
        };
        self.nar_body(builder, stream)
    }

    /// `GET /_ds/v1/announce?epoch=E&since=V`: what this node holds, for peers.
    async fn announce(&self, query: &str) -> Answer {
        let mut epoch = "";
        let mut since = 0u64;
        for kv in query.split('&') {
            match kv.split_once('=') {
                Some(("epoch", v)) => epoch = v,
                Some(("since", v)) => match v.parse() {
                    Ok(n) => since = n,
                    Err(_) => return Err(ProxyError::BadRequest("bad since")),
                },
                _ => {}
            }
        }
        if epoch.len() > 128 || !epoch.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(ProxyError::BadRequest("bad epoch"));
        }
        match self.fleet.announce(epoch, since).await {
            Some(json) => typed(StatusCode::OK, "application/json", json),
            None => Err(ProxyError::Unavailable {
                detail: "announce: the mapper is unavailable".into(),
                retry_after: 1,
            }),
        }
    }
}

/// A verified NAR not ready after this long starts its response with
/// keep-alive frames (zstd only; see `body::keepalive_until_first`).
const KEEPALIVE_AFTER: std::time::Duration = std::time::Duration::from_secs(20);
/// Interval of those frames (Nix gives up after 300 s without data).
const KEEPALIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(20);

/// Parse a single `bytes=a-b` / `bytes=a-` / `bytes=-n` range; `Err` when
/// unsatisfiable or malformed (multiple ranges are not supported: Nix never
/// sends them).
fn parse_range(v: &HeaderValue, size: u64) -> Result<(u64, u64), ()> {
    let s = v.to_str().map_err(|_| ())?.trim();
    let spec = s.strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') || size == 0 {
        return Err(());
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size - 1)
        }
        (a, "") => (a.parse().map_err(|_| ())?, size - 1),
        (a, b) => {
            let (a, b): (u64, u64) = (a.parse().map_err(|_| ())?, b.parse().map_err(|_| ())?);
            (a, b.min(size - 1))
        }
    };
    if start > end || start >= size {
        return Err(());
    }
    Ok((start, end))
}

fn typed(status: StatusCode, content_type: &'static str, body: String) -> Answer {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .map_err(|e| ProxyError::Internal(format!("building a response: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(parse_range(&v("bytes=0-9"), 100), Ok((0, 9)));
        assert_eq!(parse_range(&v("bytes=90-"), 100), Ok((90, 99)));
        assert_eq!(parse_range(&v("bytes=-10"), 100), Ok((90, 99)));
        assert_eq!(parse_range(&v("bytes=50-1000"), 100), Ok((50, 99)));
        assert_eq!(parse_range(&v("bytes=-1000"), 100), Ok((0, 99)));
        for bad in [
            "bytes=100-",
            "bytes=5-2",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=a-b",
            "bytes=-0",
        ] {
            assert_eq!(
                parse_range(&HeaderValue::from_str(bad).unwrap(), 100),
                Err(()),
                "{bad}"
            );
        }
    }
}
