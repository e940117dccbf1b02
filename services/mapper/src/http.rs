//! Outbound HTTP: one reqwest (rustls) client, bounded bodies, narinfo
//! queries with the checks every answer must pass before it is used.

use std::time::Duration;

use ds_core::{NarInfo, PublicKey, StorePathHash};

use crate::announce::HOP_HEADER;

/// Largest narinfo accepted (they are a few hundred bytes; thousands of
/// references make a few hundred KiB).
pub const MAX_NARINFO_BYTES: usize = 1 << 20;

/// Errors of one query.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Connect, send or receive failed.
    #[error("{0}")]
    Transport(String),
    /// No answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A status other than 200.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The body exceeded the limit.
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    /// Not a narinfo / not valid.
    #[error("{0}")]
    Invalid(String),
    /// A narinfo for another store path.
    #[error("narinfo is for {0}, not the requested path")]
    WrongPath(String),
    /// No signature from a trusted key (and not content-addressed).
    #[error("narinfo has no signature this node trusts")]
    Untrusted,
}

/// The client used for peers and upstreams. Ignores proxy variables: peers
/// are on the LAN and a system proxy would only add a hop.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(concat!(
            "distributed-store-mapper/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// GET `url` within `timeout`, with the hop header when `hop` is given;
/// returns the status and at most `cap` bytes of body (more is an error).
pub async fn get_capped(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    cap: usize,
    hop: Option<&str>,
) -> Result<(u16, Vec<u8>), QueryError> {
    let work = async {
        let mut req = client.get(url).timeout(timeout);
        if let Some(h) = hop {
            req = req.header(HOP_HEADER, h);
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| QueryError::Transport(e.to_string()))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Ok((status, Vec::new()));
        }
        if resp.content_length().is_some_and(|n| n > cap as u64) {
            return Err(QueryError::TooLarge(cap));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| QueryError::Transport(e.to_string()))?
        {
            if body.len() + chunk.len() > cap {
                return Err(QueryError::TooLarge(cap));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    };
    // reqwest's timeout covers the request; this one also covers a server
    // that trickles the body.
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| QueryError::Timeout(timeout))?
}

/// `GET {base}/{hash}.narinfo`: a narinfo for exactly this path, carrying a
/// signature from one of `keys` (or content-addressed).
pub async fn fetch_narinfo(
    client: &reqwest::Client,
    base: &str,
    hash: &StorePathHash,
    timeout: Duration,
    hop: Option<&str>,
    keys: &[PublicKey],
) -> Result<NarInfo, QueryError> {
    let url = format!("{base}/{hash}.narinfo");
    let (status, body) = get_capped(client, &url, timeout, MAX_NARINFO_BYTES, hop).await?;
    if status != 200 {
        return Err(QueryError::Status(status));
    }
    let text = std::str::from_utf8(&body).map_err(|_| QueryError::Invalid("not UTF-8".into()))?;
    let info = NarInfo::parse(text).map_err(|e| QueryError::Invalid(e.to_string()))?;
    if info.store_path.hash() != hash {
        return Err(QueryError::WrongPath(info.store_path.to_absolute()));
    }
    if !info.is_trusted(keys) {
        return Err(QueryError::Untrusted);
    }
    Ok(info)
}
