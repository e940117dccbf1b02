//! `GET /_ds/v1/lookup/<hash>`: this node's mapper, read-only, for other
//! nodes' HTTP mappers (`ds_mapper::remote`). Answers
//! `{"narinfo": "…", "locators": […], "held": true?}` from what this node
//! knows *without asking anyone*: its own store (then `held`, and the asker
//! adds `peer:<this node>`), else the mapper's `LookupLocal` (folder and
//! command mappers). Never peers or upstreams: two nodes listing each other
//! as HTTP mappers cannot loop, and a lookup cannot be used to make this
//! node fetch. 404 when unknown, 400 for a malformed hash.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Response, StatusCode};
use ds_core::{NarInfo, StorePathHash};
use ds_dbus::{Mapper1Proxy, MapperError};
use ds_runtime::config::NarCompression;
use zbus::proxy::CacheProperties;

use crate::App;

/// The route prefix.
pub const PREFIX: &str = "/_ds/v1/lookup/";

/// The route's label in the proxy's metrics.
pub const LABEL: &str = "lookup";
/// Longest a `LookupLocal` call may take (folder reads, a local program).
pub const LOCAL_DEADLINE: Duration = Duration::from_secs(2);

fn answer(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn plain(status: StatusCode, msg: &str) -> Response<Body> {
    answer(status, "text/plain; charset=utf-8", format!("{msg}\n"))
}

/// Serve the route when `path` (raw, without query) is for it; `None` for
/// any other path.
pub async fn handle(app: &App, method: &Method, path: &str) -> Option<Response<Body>> {
    let rest = path.strip_prefix(PREFIX)?;
    if method != Method::GET && method != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "GET and HEAD only");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Some(r);
    }
    let Ok(hash) = StorePathHash::parse(rest).map_err(|_| ()).and_then(|h| {
        if rest.len() == 32 {
            Ok(h)
        } else {
            Err(())
        }
    }) else {
        return Some(plain(
            StatusCode::BAD_REQUEST,
            "bad request: expected /_ds/v1/lookup/<32-character store path hash>",
        ));
    };
    let found = match held(app, &hash).await {
        Some(narinfo) => Some((narinfo.render(), Vec::new(), true)),
        None => local_index(app, &hash).await.map(|(n, l)| (n, l, false)),
    };
    let head = method == Method::HEAD;
    Some(match found {
        Some((narinfo, locators, held)) => {
            let mut json = serde_json::json!({"narinfo": narinfo, "locators": locators});
            if held {
                json["held"] = serde_json::Value::Bool(true);
            }
            let mut r = answer(StatusCode::OK, "application/json", json.to_string());
            if head {
                *r.body_mut() = Body::empty();
            }
            r
        }
        None => plain(StatusCode::NOT_FOUND, "not in this node's index"),
    })
}

/// The narinfo of a path in the local store (its stored signatures plus
/// this node's own when it has one), as served to peers (uncompressed).
async fn held(app: &App, hash: &StorePathHash) -> Option<NarInfo> {
    let store = app.store.clone();
    let h = hash.clone();
    let info = match tokio::task::spawn_blocking(move || store.path_info(&h)).await {
        Ok(Ok(Some(info))) => info,
        Ok(Ok(None)) => return None,
        Ok(Err(e)) => {
            tracing::warn!(%hash, "lookup: local store: {e}");
            return None;
        }
        Err(e) => {
            tracing::warn!(%hash, "lookup: store task: {e}");
            return None;
        }
    };
    let nar_hash32 = ds_core::base32::encode(&info.nar_hash.digest);
    let mut narinfo = NarInfo {
        url: crate::route::nar_url(info.path.hash(), &nar_hash32, NarCompression::None),
        compression: ds_core::Compression::None,
        file_hash: Some(info.nar_hash.clone()),
        file_size: Some(info.nar_size),
        store_path: info.path,
        nar_hash: info.nar_hash,
        nar_size: info.nar_size,
        references: info.references,
        deriver: info.deriver,
        sigs: info.sigs,
        ca: info.ca,
    };
    if let Ok(Some(sig)) = app
        .signer
        .sign(&narinfo.store_path, narinfo.fingerprint())
        .await
    {
        if !narinfo.sigs.contains(&sig) {
            narinfo.sigs.push(sig);
        }
    }
    Some(narinfo)
}

/// `LookupLocal` calls in flight at once, at most: the route is open to
/// anyone on the network, and each call is a D-Bus round trip (dbus-daemon
/// refuses more than 128 pending replies per connection, which would also
/// fail this proxy's own fleet lookups). Past this, callers wait their turn
/// (each waits at most for the deadlines of those ahead).
static LOCAL_LOOKUPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(32);

/// The mapper's `LookupLocal`; `None` when unknown or the mapper is away.
async fn local_index(app: &App, hash: &StorePathHash) -> Option<(String, Vec<String>)> {
    let conn = app.fleet.connection()?;
    let _slot = LOCAL_LOOKUPS.acquire().await.ok()?;
    let call = async {
        let mapper = Mapper1Proxy::builder(conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(MapperError::ZBus)?;
        mapper.lookup_local(hash.as_str()).await
    };
    match tokio::time::timeout(LOCAL_DEADLINE, call).await {
        Ok(Ok(a)) => Some(a),
        Ok(Err(MapperError::NotFound(_))) => None,
        Ok(Err(e)) => {
            tracing::info!(%hash, "lookup: mapper: {e}");
            None
        }
        Err(_) => {
            tracing::info!(%hash, "lookup: mapper did not answer within {LOCAL_DEADLINE:?}");
            None
        }
    }
}
