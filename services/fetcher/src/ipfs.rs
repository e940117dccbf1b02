//! IPFS: `ipfs:<CID>#compression=…&fileHash=…&fileSize=…` locators name a
//! NAR *file* added to IPFS. [`IpfsBackend`] reads it through an IPFS node's
//! RPC API (`POST /api/v0/cat?arg=<cid>&offset=N`, the kubo RPC, which
//! resumes at a byte offset; the node fetches and verifies the blocks
//! itself), or, when no RPC API is configured, through an HTTP gateway
//! (`GET /ipfs/<cid>` with Range). Either way the bytes then go through
//! [`crate::nar_file`]: FileSize and FileHash are checked, the file is
//! decompressed, and the fetcher checks NarHash, so a node or gateway that
//! returns the wrong bytes is caught (`BadData`), never trusted.
//!
//! [`IpfsPublisher`] is the publishing side: it adds a NAR file to the
//! node (`POST /api/v0/add?pin=true&cid-version=1&raw-leaves=true`) and
//! returns the `ipfs:` locator with the file's facts.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use ds_core::{FileFacts, Locator, NarInfo};
use ds_runtime::plugins::IpfsSpec;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};

use crate::backend::{Backend, BackendError, ByteStream, Opened, Publisher};
use crate::nar_file::{self, FileBytes, FileSource};

/// Default first-byte deadline: an IPFS node may have to find the blocks
/// on another node before the first byte.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// How long connecting to the RPC API or gateway may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the backend reads from.
#[derive(Debug, Clone)]
enum Endpoint {
    /// kubo RPC base URL.
    Rpc(String),
    /// HTTP gateway base URL.
    Gateway(String),
}

/// Fetches `ipfs:` locators through an IPFS node's RPC API or a gateway.
pub struct IpfsBackend {
    client: reqwest::Client,
    endpoint: Endpoint,
    deadline: Duration,
}

fn base(url: &str, key: &str) -> Result<String, BackendError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(BackendError::Unsupported(format!(
            "backends.ipfs.{key}: {url:?} is not an http(s) URL"
        )));
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn client() -> Result<reqwest::Client, BackendError> {
    crate::http::client(CONNECT_TIMEOUT)
        .map_err(|e| BackendError::Unsupported(format!("building the HTTP client: {e}")))
}

fn transport(e: reqwest::Error) -> BackendError {
    BackendError::Transport(e.to_string())
}

/// A CID as it may appear in a locator or a URL: base32/base58 characters
/// only, so it can go into a query string unescaped.
fn valid_cid(cid: &str) -> bool {
    !cid.is_empty() && cid.len() <= 128 && cid.chars().all(|c| c.is_ascii_alphanumeric())
}

impl IpfsBackend {
    /// A backend for `[backends.ipfs]`: the RPC API when `api` is set (the
    /// preferred way), else the gateway. Neither set is an error naming the
    /// keys.
    pub fn new(spec: &IpfsSpec) -> Result<IpfsBackend, BackendError> {
        let endpoint = match (&spec.api, &spec.gateway) {
            (Some(api), _) => Endpoint::Rpc(base(api, "api")?),
            (None, Some(gw)) => Endpoint::Gateway(base(gw, "gateway")?),
            (None, None) => {
                return Err(BackendError::Unsupported(
                    "backends.ipfs: set `api` (kubo RPC URL) or `gateway`".into(),
                ))
            }
        };
        Ok(IpfsBackend {
            client: client()?,
            endpoint,
            deadline: DEFAULT_DEADLINE,
        })
    }

    /// Use `deadline` as the first-byte deadline instead of [`DEFAULT_DEADLINE`].
    pub fn with_deadline(mut self, deadline: Duration) -> IpfsBackend {
        self.deadline = deadline;
        self
    }
}

impl Backend for IpfsBackend {
    fn schemes(&self) -> &'static [&'static str] {
        &["ipfs"]
    }

    fn handles(&self, locator: &Locator) -> bool {
        locator.scheme() == "ipfs" && nar_file::handles_file(locator, valid_cid)
    }

    fn deadline(&self, _locator: &Locator) -> Duration {
        self.deadline
    }

    fn open(
        &self,
        locator: &Locator,
        _nar: &NarInfo,
        offset: u64,
    ) -> BoxFuture<'static, Result<Opened, BackendError>> {
        let (cid, facts) = match locator.other_parts() {
            Some(Ok((cid, facts))) if valid_cid(cid) => (cid.to_string(), facts),
            Some(Err(e)) => {
                return futures::future::ready(Err(BackendError::Unsupported(e.to_string())))
                    .boxed()
            }
            _ => {
                let e =
                    BackendError::Unsupported(format!("{locator} is not an ipfs:<CID> locator"));
                return futures::future::ready(Err(e)).boxed();
            }
        };
        let source = IpfsFile {
            client: self.client.clone(),
            endpoint: self.endpoint.clone(),
            cid,
        };
        nar_file::nar_from_file(Box::new(source), facts, offset)
    }
}

/// One file in IPFS, read through the RPC API or a gateway.
struct IpfsFile {
    client: reqwest::Client,
    endpoint: Endpoint,
    cid: String,
}

impl FileSource for IpfsFile {
    fn open_at(&mut self, file_offset: u64) -> BoxFuture<'_, Result<FileBytes, BackendError>> {
        async move {
            match &self.endpoint {
                Endpoint::Gateway(gw) => {
                    let url = format!("{gw}/ipfs/{}", self.cid);
                    crate::http::get_file(&self.client, &url, file_offset).await
                }
                Endpoint::Rpc(api) => {
                    let url = format!("{api}/api/v0/cat?arg={}&offset={file_offset}", self.cid);
                    let resp = self.client.post(&url).send().await.map_err(transport)?;
                    let status = resp.status();
                    if !status.is_success() {
                        // kubo answers errors as JSON {"Message": …}.
                        let body = resp.text().await.unwrap_or_default();
                        return Err(BackendError::Refused(format!(
                            "ipfs cat {}: HTTP {status}: {}",
                            self.cid,
                            body.trim()
                        )));
                    }
                    // kubo announces the file's length in X-Content-Length
                    // (no Content-Length on streamed output). Only trusted
                    // from byte 0: whether it counts the offset differs
                    // between versions, and the size is checked at the end
                    // anyway.
                    let len = resp
                        .headers()
                        .get("x-content-length")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .filter(|_| file_offset == 0);
                    let stream: ByteStream = resp.bytes_stream().map_err(transport).boxed();
                    Ok(FileBytes {
                        start: file_offset,
                        stream,
                        len,
                    })
                }
            }
        }
        .boxed()
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("ipfs:{}", self.cid)
    }
}

/// Adds NAR files to an IPFS node and returns their `ipfs:` locators.
pub struct IpfsPublisher {
    client: reqwest::Client,
    api: String,
}

impl IpfsPublisher {
    /// A publisher for `[backends.ipfs]`; needs `api` (a gateway cannot add).
    pub fn new(spec: &IpfsSpec) -> Result<IpfsPublisher, BackendError> {
        let api = spec.api.as_deref().ok_or_else(|| {
            BackendError::Unsupported("backends.ipfs.publish needs backends.ipfs.api".into())
        })?;
        Ok(IpfsPublisher {
            client: client()?,
            api: base(api, "api")?,
        })
    }

    /// Add the file at `file` (pinned, CIDv1, raw leaves: the same file
    /// always gets the same CID) and return its CID.
    pub async fn add(&self, file: PathBuf) -> Result<String, BackendError> {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.contains(['"', '\r', '\n']))
            .unwrap_or("nar")
            .to_string();
        let f = tokio::fs::File::open(&file)
            .await
            .map_err(|e| BackendError::Unsupported(format!("{}: {e}", file.display())))?;
        // multipart/form-data by hand: one part, streamed from the file.
        let boundary = format!("ds-{:016x}", rand_u64());
        let head = Bytes::from(format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        ));
        let tail = Bytes::from(format!("\r\n--{boundary}--\r\n"));
        let body = futures::stream::once(async move { Ok::<_, std::io::Error>(head) })
            .chain(tokio_util::io::ReaderStream::new(f))
            .chain(futures::stream::once(async move { Ok(tail) }));
        let url = format!(
            "{}/api/v0/add?pin=true&cid-version=1&raw-leaves=true&quieter=true&progress=false",
            self.api
        );
        let resp = self
            .client
            .post(&url)
            .header(
                reqwest::header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        let text = resp.text().await.map_err(transport)?;
        if !status.is_success() {
            return Err(BackendError::Refused(format!(
                "ipfs add: HTTP {status}: {}",
                text.trim()
            )));
        }
        // One JSON object per line; the last names the file.
        let cid = text
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| v.get("Hash").and_then(|h| h.as_str()).map(str::to_string))
            .filter(|c| valid_cid(c))
            .ok_or_else(|| BackendError::Refused(format!("ipfs add: no CID in {text:?}")))?;
        Ok(cid)
    }
}

/// A boundary that will not occur in the file by chance.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

impl Publisher for IpfsPublisher {
    fn scheme(&self) -> &'static str {
        "ipfs"
    }

    fn publish(
        &self,
        file: PathBuf,
        facts: FileFacts,
        _nar: &NarInfo,
    ) -> BoxFuture<'static, Result<Locator, BackendError>> {
        let this = IpfsPublisher {
            client: self.client.clone(),
            api: self.api.clone(),
        };
        async move {
            let cid = this.add(file).await?;
            Ok(Locator::other("ipfs", &cid, &facts))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(api: Option<&str>, gateway: Option<&str>) -> IpfsSpec {
        IpfsSpec {
            api: api.map(str::to_string),
            gateway: gateway.map(str::to_string),
            publish: false,
        }
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = IpfsBackend::new(&spec(None, None))
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref().unwrap_or("").contains("backends.ipfs"),
            "{e:?}"
        );
        let e = IpfsBackend::new(&spec(Some("127.0.0.1:5001"), None))
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref().unwrap_or("").contains("backends.ipfs.api"),
            "{e:?}"
        );
        let e = IpfsPublisher::new(&spec(None, Some("http://127.0.0.1:8080")))
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .unwrap_or("")
                .contains("needs backends.ipfs.api"),
            "{e:?}"
        );
    }

    #[test]
    fn handles_only_good_ipfs_locators() {
        let b = IpfsBackend::new(&spec(Some("http://127.0.0.1:5001/"), None)).expect("backend");
        let ok = Locator::parse("ipfs:bafkreigh2akiscaildc#compression=xz").expect("parses");
        assert!(b.handles(&ok));
        let odd = Locator::parse("ipfs:ba/fk?x=1#compression=xz").expect("parses");
        assert!(!b.handles(&odd), "a CID with URL characters is refused");
        let br = Locator::parse("ipfs:bafk#compression=br").expect("parses");
        assert!(!b.handles(&br), "undecodable compression");
        let bt = Locator::parse("btih:00#compression=xz").expect("parses");
        assert!(!b.handles(&bt));
    }
}
