//! The proxy: the Nix binary-cache HTTP protocol over the local store.
//!
//! Routes: `/nix-cache-info`, `/<hash>.narinfo` (GET, HEAD),
//! `/nar/<hash>-<narhash>.nar[.zst|.xz]` (GET, HEAD; Range when
//! uncompressed), `/metrics`. NARs are generated from the store on the fly,
//! verified against the database while streaming and compressed on the fly.
//! narinfo files carry the signatures stored with the path plus this node's
//! own (from the signer over D-Bus, once per path).

pub mod body;
pub mod fleet;
pub mod metrics;
pub mod route;
pub mod server;
pub mod signing;
pub mod status;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use ds_core::{CacheInfo, NarInfo, StorePathHash};
use ds_runtime::config::NarCompression;
use ds_runtime::Config;
use ds_store::{LocalStore, PathInfo};
use futures::StreamExt;

use crate::fleet::{FetchError, Fleet, Hop, Resolved};
use crate::metrics::{Metrics, RequestLabels, RouteLabels};
use crate::route::Route;
use crate::signing::SignerClient;
use crate::status::Stats;

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
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Counters for D-Bus status.
    pub stats: Arc<Stats>,
    cache_info: String,
}

impl App {
    /// Build the app state.
    pub fn new(
        config: Config,
        store: Arc<LocalStore>,
        signer: Arc<SignerClient>,
        fleet: Arc<Fleet>,
        stats: Arc<Stats>,
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
            metrics: Metrics::new(),
            stats,
            cache_info,
        }
    }

    /// Handle one request (the whole HTTP API).
    pub async fn handle(self: Arc<Self>, req: Request<Body>) -> Response<Body> {
        let started = Instant::now();
        let route = route::parse(req.uri().path());
        let label = route.label();
        let hop = Hop::from_header(
            req.headers()
                .get(fleet::HOP_HEADER)
                .map(HeaderValue::as_bytes),
        );
        let response = match (req.method(), route) {
            (_, Route::Bad(reason)) => {
                text(StatusCode::BAD_REQUEST, format!("bad request: {reason}\n"))
            }
            (m, _) if m != Method::GET && m != Method::HEAD => {
                let mut r = text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "this cache is read-only: GET and HEAD only\n".into(),
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                r
            }
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
            (_, Route::NotFound) => not_found(),
            (_, Route::Announce) => self.announce(req.uri().query().unwrap_or("")).await,
            (_, Route::NarInfo(hash)) => self.narinfo(hash, hop).await,
            (
                m,
                Route::Nar {
                    hash,
                    nar_hash,
                    compression,
                },
            ) => {
                self.nar(
                    hash,
                    &nar_hash,
                    compression,
                    req.headers(),
                    m == Method::HEAD,
                    hop,
                )
                .await
            }
        };
        let status = response.status().as_u16();
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                route: label,
                status,
            })
            .inc();
        self.metrics
            .latency
            .get_or_create(&RouteLabels { route: label })
            .observe(started.elapsed().as_secs_f64());
        if req.method() == Method::HEAD {
            let (parts, _) = response.into_parts();
            return Response::from_parts(parts, Body::empty());
        }
        response
    }

    async fn lookup(&self, hash: StorePathHash) -> Result<Option<PathInfo>, Response<Body>> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.path_info(&hash)).await {
            Ok(Ok(info)) => Ok(info),
            Ok(Err(e)) => {
                tracing::error!("store lookup failed: {e}");
                Err(text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("local store lookup failed: {e}\n"),
                ))
            }
            Err(e) => Err(text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("lookup task failed: {e}\n"),
            )),
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

    async fn narinfo(&self, hash: StorePathHash, hop: Hop) -> Response<Body> {
        let info = match self.lookup(hash.clone()).await {
            Ok(Some(info)) => info,
            Ok(None) => {
                let Some(r) = self.remote(&hash, hop).await else {
                    self.stats.narinfo_misses.fetch_add(1, Ordering::Relaxed);
                    return not_found();
                };
                self.stats.narinfo_remote.fetch_add(1, Ordering::Relaxed);
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
            }
            Err(r) => return r,
        };
        self.stats.narinfo_hits.fetch_add(1, Ordering::Relaxed);
        let mut sigs = info.sigs.clone();
        if let Some(sig) = self.signer.sign_info(&info.path, &info.nar_hash).await {
            if !sigs.contains(&sig) {
                sigs.push(sig);
            }
        }
        let compression = self.offered_compression(hop);
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
        typed(StatusCode::OK, "text/x-nix-narinfo", narinfo.render())
    }

    async fn nar(
        &self,
        hash: StorePathHash,
        nar_hash32: &str,
        compression: NarCompression,
        headers: &HeaderMap,
        head_only: bool,
        hop: Hop,
    ) -> Response<Body> {
        let info = match self.lookup(hash.clone()).await {
            Ok(Some(info)) => info,
            Ok(None) => {
                return self
                    .remote_nar(hash, nar_hash32, compression, headers, head_only, hop)
                    .await
            }
            Err(r) => return r,
        };
        // The URL names the NAR it was issued for: a path rebuilt with other
        // contents since is not that NAR.
        if ds_core::base32::encode(&info.nar_hash.digest) != nar_hash32 {
            return not_found();
        }
        let size = info.nar_size;
        let range = if compression == NarCompression::None {
            match headers.get(header::RANGE).map(|v| parse_range(v, size)) {
                None => None,
                Some(Ok(r)) => Some(r),
                Some(Err(())) => return unsatisfiable(size),
            }
        } else {
            None
        };
        let mut builder = nar_builder(compression == NarCompression::None);
        if head_only {
            return nar_head(builder, compression, size);
        }
        let stream = match range {
            Some((start, end)) => {
                builder = builder
                    .status(StatusCode::PARTIAL_CONTENT)
                    .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"))
                    .header(header::CONTENT_LENGTH, end - start + 1);
                // The store skips file contents before `start` without reading them.
                let from = Box::pin(self.store.clone().nar_stream_from(info.path.clone(), start));
                body::limit(from, end - start + 1)
            }
            None => {
                // Hashed on the producing thread; a mismatch ends the body with an error.
                let verified: body::ByteStream = Box::pin(self.store.clone().nar_stream_verified(
                    info.path.clone(),
                    info.nar_hash.clone(),
                    size,
                ));
                if compression == NarCompression::None {
                    builder = builder
                        .status(StatusCode::OK)
                        .header(header::CONTENT_LENGTH, size);
                } else {
                    builder = builder.status(StatusCode::OK);
                }
                body::compress(verified, compression)
            }
        };
        self.nar_body(builder, stream)
    }

    /// A NAR response with `stream` as its body, counted as it goes out.
    fn nar_body(
        &self,
        builder: axum::http::response::Builder,
        stream: body::ByteStream,
    ) -> Response<Body> {
        let stats = self.stats.clone();
        let nar_bytes = self.metrics.nar_bytes.clone();
        let count = move |n: u64| {
            stats.nar_bytes_sent.fetch_add(n, Ordering::Relaxed);
            nar_bytes.inc_by(n);
        };
        builder
            .body(Body::from_stream(body::counted(stream, count)))
            .unwrap_or_else(|_| internal())
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
) -> Response<Body> {
    let builder = if compression == NarCompression::None {
        builder.header(header::CONTENT_LENGTH, size)
    } else {
        builder
    };
    builder
        .status(StatusCode::OK)
        .body(Body::empty())
        .unwrap_or_else(|_| internal())
}

impl App {
    /// A NAR this store lacks: through the fetcher (from a peer, the
    /// fleet's lead node or upstream), verified here too.
    ///
    /// Range is offered to peers only: they verify the whole NAR they
    /// assemble. A client's Range request gets the whole NAR (200), which
    /// we verify before its last chunk leaves: a resumed transfer must not
    /// hand a client the tail of a NAR that failed verification.
    async fn remote_nar(
        &self,
        hash: StorePathHash,
        nar_hash32: &str,
        compression: NarCompression,
        headers: &HeaderMap,
        head_only: bool,
        hop: Hop,
    ) -> Response<Body> {
        let Some(r) = self.remote(&hash, hop).await else {
            return not_found();
        };
        if ds_core::base32::encode(&r.narinfo.nar_hash.digest) != nar_hash32 {
            return not_found();
        }
        let size = r.narinfo.nar_size;
        let ranged = hop != Hop::Client && compression == NarCompression::None;
        let range = match headers.get(header::RANGE) {
            Some(v) if ranged => match parse_range(v, size) {
                Ok(r) => Some(r),
                Err(()) => return unsatisfiable(size),
            },
            _ => None,
        };
        let mut builder = nar_builder(ranged);
        if head_only {
            return nar_head(builder, compression, size);
        }
        let offset = range.map_or(0, |(start, _)| start);
        let verified = hop == Hop::Client && r.verify_before_serving();
        let pipe = match self
            .fleet
            .open(&r, offset, hop == Hop::Peer, verified)
            .await
        {
            Ok(p) => p,
            Err(FetchError::NotFound) => return not_found(),
            Err(FetchError::Unavailable(e)) => {
                tracing::warn!(path = %r.narinfo.store_path, "NAR unavailable: {e}");
                return unavailable();
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
                    tracing::warn!(path = %r.narinfo.store_path, "NAR failed on every source");
                    return unavailable();
                }
            }
        }
        let stream = match range {
            Some((start, end)) => {
                builder = builder
                    .status(StatusCode::PARTIAL_CONTENT)
                    .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"))
                    .header(header::CONTENT_LENGTH, end - start + 1);
                body::exact(raw, end - start + 1)
            }
            None => {
                builder = builder.status(StatusCode::OK);
                if compression == NarCompression::None {
                    builder = builder.header(header::CONTENT_LENGTH, size);
                }
                body::compress(
                    body::verified(raw, r.narinfo.nar_hash.clone(), size),
                    compression,
                )
            }
        };
        self.nar_body(builder, stream)
    }

    /// `GET /_ds/v1/announce?epoch=E&since=V`: what this node holds, for peers.
    async fn announce(&self, query: &str) -> Response<Body> {
        let mut epoch = "";
        let mut since = 0u64;
        for kv in query.split('&') {
            match kv.split_once('=') {
                Some(("epoch", v)) => epoch = v,
                Some(("since", v)) => match v.parse() {
                    Ok(n) => since = n,
                    Err(_) => return text(StatusCode::BAD_REQUEST, "bad since\n".into()),
                },
                _ => {}
            }
        }
        if epoch.len() > 128 || !epoch.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return text(StatusCode::BAD_REQUEST, "bad epoch\n".into());
        }
        match self.fleet.announce(epoch, since).await {
            Some(json) => typed(StatusCode::OK, "application/json", json),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the mapper is unavailable\n".into(),
            ),
        }
    }
}

/// A verified NAR not ready after this long starts its response with
/// keep-alive frames (zstd only; see `body::keepalive_until_first`).
const KEEPALIVE_AFTER: std::time::Duration = std::time::Duration::from_secs(20);
/// Interval of those frames (Nix gives up after 300 s without data).
const KEEPALIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(20);

fn unavailable() -> Response<Body> {
    let mut resp = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "NAR temporarily unavailable\n".into(),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

fn unsatisfiable(size: u64) -> Response<Body> {
    let mut r = text(
        StatusCode::RANGE_NOT_SATISFIABLE,
        "unsatisfiable range\n".into(),
    );
    r.headers_mut().insert(
        header::CONTENT_RANGE,
        HeaderValue::from_str(&format!("bytes */{size}"))
            .unwrap_or(HeaderValue::from_static("bytes */0")),
    );
    r
}

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

fn typed(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .unwrap_or_else(|_| internal())
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    typed(status, "text/plain; charset=utf-8", body)
}

fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "not found\n".into())
}

fn internal() -> Response<Body> {
    let mut r = Response::new(Body::from("internal error\n"));
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
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
