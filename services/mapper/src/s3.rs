//! The S3 mapper (`[backends.s3]` with `lookup`, on by default): reads
//! `<prefix>/<hash>.narinfo` from the bucket (the binary-cache layout the
//! fetcher's S3 publisher writes) and answers with the `s3:` locator of the
//! file it names (`s3:<URL of the narinfo>#compression=…&fileHash=…&fileSize=…`).

use std::sync::Arc;
use std::time::Duration;

use ds_core::{FileFacts, Locator, NarInfo, PublicKey, StorePathHash};
use ds_runtime::plugins::S3Spec;
use futures::future::BoxFuture;
use object_store::aws::AmazonS3;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, RetryConfig};

use crate::http::MAX_NARINFO_BYTES;
use crate::mapper::{MapError, Mapper, Mapping, Scope};

/// Narinfo lookups in an S3 bucket.
pub struct S3Mapper {
    store: Arc<AmazonS3>,
    prefix: String,
    keys: Vec<PublicKey>,
    timeout: Duration,
    name: String,
}

impl S3Mapper {
    /// A mapper over the bucket of `spec`, trusting narinfos signed by one
    /// of `keys`; one lookup takes at most `timeout`. Errors name the
    /// config key (`backends.s3…`).
    pub fn new(spec: &S3Spec, keys: Vec<PublicKey>, timeout: Duration) -> Result<Self, String> {
        let b = ds_runtime::s3::builder(spec)
            .map_err(|e| e.to_string())?
            .with_retry(RetryConfig {
                max_retries: 0,
                retry_timeout: timeout,
                ..RetryConfig::default()
            })
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_timeout(timeout)
                    .with_allow_http(true),
            );
        let store = b.build().map_err(|e| format!("backends.s3: {e}"))?;
        Ok(S3Mapper {
            store: Arc::new(store),
            prefix: spec.prefix.trim_matches('/').to_string(),
            keys,
            timeout,
            name: format!("s3:{}", spec.bucket),
        })
    }

    async fn query(&self, hash: &StorePathHash) -> Result<Option<Mapping>, String> {
        let key = if self.prefix.is_empty() {
            format!("{hash}.narinfo")
        } else {
            format!("{}/{hash}.narinfo", self.prefix)
        };
        let got = match self.store.get(&ObjectPath::from(key.as_str())).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(format!("{key}: {e}")),
        };
        if got.meta.size > MAX_NARINFO_BYTES as u64 {
            return Err(format!("{key}: {} bytes, too large", got.meta.size));
        }
        let body = got.bytes().await.map_err(|e| format!("{key}: {e}"))?;
        let text = std::str::from_utf8(&body).map_err(|_| format!("{key}: not UTF-8"))?;
        let mut info = NarInfo::parse(text).map_err(|e| format!("{key}: {e}"))?;
        if info.store_path.hash() != hash {
            return Err(format!("{key}: narinfo of another path"));
        }
        if !info.is_trusted(&self.keys) {
            return Err(format!("{key}: no signature this node trusts"));
        }
        let path = info.url.trim_start_matches('/');
        if path.is_empty() || path.contains("://") || path.contains('#') {
            return Err(format!(
                "{key}: URL {:?} is not a key in the bucket",
                info.url
            ));
        }
        let facts = FileFacts {
            compression: info.compression.clone(),
            file_hash: info.file_hash.clone(),
            file_size: info.file_size,
        };
        let locator = Locator::other("s3", path, &facts);
        info.retain_trusted_sigs(&self.keys);
        Ok(Some(Mapping {
            narinfo: info,
            locators: vec![locator],
        }))
    }
}

impl Mapper for S3Mapper {
    fn name(&self) -> &str {
        &self.name
    }

    fn lookup<'a>(
        &'a self,
        hash: &'a StorePathHash,
        _scope: Scope,
    ) -> BoxFuture<'a, Result<Option<Mapping>, MapError>> {
        Box::pin(async move {
            let work = self.query(hash);
            match tokio::time::timeout(self.timeout, work).await {
                Ok(Ok(m)) => Ok(m),
                Ok(Err(reason)) => Err(MapError {
                    mapper: self.name.clone(),
                    reason,
                }),
                Err(_) => Err(MapError {
                    mapper: self.name.clone(),
                    reason: format!("no answer within {:?}", self.timeout),
                }),
            }
        })
    }
}
