//! The S3 client settings shared by the fetcher's S3 backend and the
//! mapper's S3 narinfo lookups (feature `s3`): one reading of
//! `[backends.s3]`, so the two cannot disagree on endpoint, region or
//! credentials. Each caller adds its own retry and timeout policy.

use object_store::aws::AmazonS3Builder;

use crate::plugins::S3Spec;

/// Why the S3 client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum S3SetupError {
    /// The credentials file could not be read or lacks a key.
    #[error("backends.s3.credentialsFile {path}: {reason}")]
    Credentials {
        /// the file
        path: std::path::PathBuf,
        /// why
        reason: String,
    },
    /// object_store refused the settings.
    #[error("backends.s3: {0}")]
    Client(String),
}

/// Read `AWS_ACCESS_KEY_ID=…` / `AWS_SECRET_ACCESS_KEY=…` (and optionally
/// `AWS_SESSION_TOKEN=…`) lines; `#` comments and blank lines ignored.
fn read_credentials(
    path: &std::path::Path,
) -> Result<(String, String, Option<String>), S3SetupError> {
    let bad = |reason: String| S3SetupError::Credentials {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| bad(format!("line without '=': {line:?}")))?;
        let v = v.trim().trim_matches('"').to_string();
        match k.trim() {
            "AWS_ACCESS_KEY_ID" => id = Some(v),
            "AWS_SECRET_ACCESS_KEY" => secret = Some(v),
            "AWS_SESSION_TOKEN" => token = Some(v),
            _ => {}
        }
    }
    match (id, secret) {
        (Some(i), Some(s)) => Ok((i, s, token)),
        _ => Err(bad(
            "needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into()
        )),
    }
}

/// A client builder for the bucket of `spec`: bucket, region (default
/// `us-east-1`), path-style requests to `endpoint` for S3-compatible
/// servers, credentials from `credentialsFile` or else the environment's
/// `AWS_*` variables.
pub fn builder(spec: &S3Spec) -> Result<AmazonS3Builder, S3SetupError> {
    let base = if spec.credentials_file.is_some() {
        AmazonS3Builder::new()
    } else {
        AmazonS3Builder::from_env()
    };
    let mut b = base
        .with_bucket_name(&spec.bucket)
        .with_region(spec.region.as_deref().unwrap_or("us-east-1"));
    if let Some(endpoint) = &spec.endpoint {
        b = b
            .with_endpoint(endpoint)
            .with_virtual_hosted_style_request(false);
    }
    if let Some(path) = &spec.credentials_file {
        let (id, secret, token) = read_credentials(path)?;
        b = b.with_access_key_id(id).with_secret_access_key(secret);
        if let Some(t) = token {
            b = b.with_token(t);
        }
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("creds");
        std::fs::write(
            &p,
            "# test\nAWS_ACCESS_KEY_ID=abc\nAWS_SECRET_ACCESS_KEY=\"s e\"\n",
        )
        .unwrap();
        let (i, s, t) = read_credentials(&p).unwrap();
        assert_eq!((i.as_str(), s.as_str(), t), ("abc", "s e", None));
        std::fs::write(&p, "AWS_ACCESS_KEY_ID=abc\n").unwrap();
        let e = read_credentials(&p).unwrap_err().to_string();
        assert!(e.contains("backends.s3.credentialsFile"), "{e}");
    }
}
