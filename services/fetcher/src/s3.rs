//! S3 and S3-compatible stores (`[backends.s3]`), through the
//! `object_store` crate (AWS signing, path-style requests for custom
//! endpoints, rustls; the same reqwest 0.12 as the rest of the fetcher).
//!
//! The bucket holds a binary cache below `prefix`: `nar/<FileHash>.nar[.ext]`
//! and `<hash>.narinfo`, so Nix itself could use the bucket
//! (`s3://bucket?endpoint=…`).
//!
//! - [`S3Backend`]: `s3:<key relative to prefix>#facts` locators, read with
//!   ranged GETs (a broken transfer resumes at the byte reached), through
//!   [`crate::nar_file`].
//! - [`S3Publisher`]: uploads a NAR file and its narinfo (the
//!   [`crate::Publisher`] of this network).

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ds_core::{FileFacts, Locator, NarInfo};
use ds_runtime::plugins::S3Spec;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, PutPayload, RetryConfig};

use crate::backend::{Backend, BackendError, ByteStream, Opened, Publisher};
use crate::nar_file::{self, FileBytes, FileSource};

/// Files up to this size are uploaded with one PUT; larger ones in parts.
const SINGLE_PUT: u64 = 16 << 20;

pub use ds_runtime::s3::S3SetupError;

/// The bucket of a spec, with its key prefix.
#[derive(Clone)]
struct Bucket {
    store: Arc<AmazonS3>,
    prefix: String,
    name: String,
}

impl Bucket {
    fn open(spec: &S3Spec, timeout: Duration) -> Result<Bucket, S3SetupError> {
        let b = ds_runtime::s3::builder(spec)?
            .with_retry(RetryConfig {
                // The fetcher has its own failover; do not sit in retries.
                max_retries: 1,
                retry_timeout: timeout,
                ..RetryConfig::default()
            })
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_connect_timeout(timeout)
                    .with_allow_http(true),
            );
        let store = b.build().map_err(|e| S3SetupError::Client(e.to_string()))?;
        Ok(Bucket {
            store: Arc::new(store),
            prefix: spec.prefix.trim_matches('/').to_string(),
            name: spec.bucket.clone(),
        })
    }

    fn path(&self, key: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        }
    }
}

/// Check an `s3:` key: relative, no `..`, nothing odd.
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('/')
        && !key
            .split('/')
            .any(|s| s.is_empty() || s == ".." || s == ".")
        && !key.contains(|c: char| c.is_whitespace() || c.is_control())
}

fn store_error(key: &str, e: object_store::Error) -> BackendError {
    match e {
        object_store::Error::NotFound { .. } => {
            BackendError::Refused(format!("s3:{key}: no such object"))
        }
        other => BackendError::Transport(format!("s3:{key}: {other}")),
    }
}

/// The backend for `s3:` locators.
pub struct S3Backend {
    bucket: Bucket,
    deadline: Duration,
}

impl S3Backend {
    /// A backend reading the bucket of `spec`; `deadline` is the first-byte
    /// deadline (also the connect timeout).
    pub fn new(spec: &S3Spec, deadline: Duration) -> Result<Self, S3SetupError> {
        Ok(S3Backend {
            bucket: Bucket::open(spec, deadline)?,
            deadline,
        })
    }
}

impl Backend for S3Backend {
    fn schemes(&self) -> &'static [&'static str] {
        &["s3"]
    }

    fn handles(&self, locator: &Locator) -> bool {
        nar_file::handles_file(locator, valid_key)
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
        let (key, facts) = match nar_file::locator_file(locator, valid_key, "an s3") {
            Ok(parts) => parts,
            Err(e) => return futures::future::ready(Err(e)).boxed(),
        };
        let source = S3File {
            bucket: self.bucket.clone(),
            key,
        };
        nar_file::nar_from_file(Box::new(source), facts, offset)
    }
}

/// One object, read with ranged GETs.
struct S3File {
    bucket: Bucket,
    key: String,
}

impl FileSource for S3File {
    fn open_at(&mut self, file_offset: u64) -> BoxFuture<'_, Result<FileBytes, BackendError>> {
        async move {
            let opts = GetOptions {
                range: (file_offset > 0).then_some(GetRange::Offset(file_offset)),
                ..GetOptions::default()
            };
            let path = self.bucket.path(&self.key);
            let got = self
                .bucket
                .store
                .get_opts(&path, opts)
                .await
                .map_err(|e| store_error(&self.key, e))?;
            let Range { start, end } = got.range.clone();
            let key = self.key.clone();
            let stream: ByteStream = got
                .into_stream()
                .map_err(move |e| BackendError::Transport(format!("s3:{key}: {e}")))
                .boxed();
            Ok(FileBytes {
                start,
                stream,
                len: Some(end.saturating_sub(start)),
            })
        }
        .boxed()
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("s3:{}/{}", self.bucket.name, self.key)
    }
}

/// Uploads NAR files and narinfos to the bucket in binary-cache layout.
pub struct S3Publisher {
    bucket: Bucket,
}

impl S3Publisher {
    /// A publisher to the bucket of `spec`.
    pub fn new(spec: &S3Spec) -> Result<Self, S3SetupError> {
        Ok(S3Publisher {
            bucket: Bucket::open(spec, Duration::from_secs(30))?,
        })
    }
}

/// Upload `file` to `path` unless an object of the same size is there.
async fn upload(
    store: &AmazonS3,
    path: &ObjectPath,
    file: &std::path::Path,
    size: u64,
) -> Result<(), BackendError> {
    let transport = |e: object_store::Error| BackendError::Transport(format!("{path}: {e}"));
    match store.head(path).await {
        Ok(meta) if meta.size == size => return Ok(()),
        Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(transport(e)),
    }
    let io = |e: std::io::Error| BackendError::Unsupported(format!("{}: {e}", file.display()));
    if size <= SINGLE_PUT {
        let bytes = tokio::fs::read(file).await.map_err(io)?;
        store
            .put(path, PutPayload::from(bytes))
            .await
            .map_err(transport)?;
        return Ok(());
    }
    use tokio::io::AsyncReadExt;
    let upload = store.put_multipart(path).await.map_err(transport)?;
    let mut writer = object_store::WriteMultipart::new(upload);
    let mut f = tokio::fs::File::open(file).await.map_err(io)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        writer.wait_for_capacity(4).await.map_err(transport)?;
        writer.write(&buf[..n]);
    }
    writer.finish().await.map_err(transport)?;
    Ok(())
}

impl Publisher for S3Publisher {
    fn scheme(&self) -> &'static str {
        "s3"
    }

    fn publish(
        &self,
        file: PathBuf,
        facts: FileFacts,
        nar: &NarInfo,
    ) -> BoxFuture<'static, Result<Locator, BackendError>> {
        let bucket = self.bucket.clone();
        let mut info = nar.clone();
        async move {
            let (Some(hash), Some(size)) = (facts.file_hash.clone(), facts.file_size) else {
                return Err(BackendError::Unsupported(
                    "publishing needs the file's hash and size".into(),
                ));
            };
            let key = format!(
                "nar/{}.nar{}",
                ds_core::base32::encode(&hash.digest),
                facts.compression.extension()
            );
            upload(&bucket.store, &bucket.path(&key), &file, size).await?;
            // The narinfo names the uploaded file; the signatures stay
            // valid (they cover the path, NarHash, NarSize and references).
            info.url = key.clone();
            info.compression = facts.compression.clone();
            info.file_hash = Some(hash);
            info.file_size = Some(size);
            let narinfo_path = bucket.path(&format!("{}.narinfo", info.store_path.hash()));
            bucket
                .store
                .put(&narinfo_path, PutPayload::from(info.render().into_bytes()))
                .await
                .map_err(|e| BackendError::Transport(format!("{narinfo_path}: {e}")))?;
            Ok(Locator::other("s3", &key, &facts))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(valid_key("nar/abc.nar.xz"));
        for k in ["", "/x", "a//b", "../x", "a/./b", "a b"] {
            assert!(!valid_key(k), "{k:?}");
        }
    }
}
