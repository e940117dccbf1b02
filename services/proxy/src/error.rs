//! The proxy's one error type and its one mapping to an HTTP answer.
//!
//! Every failure a handler can meet is a [`ProxyError`]; [`ProxyError::into_response`]
//! is the only place that turns one into a status, headers and a body. The
//! body says only what the client may know: a malformed request is told
//! what is wrong with it; an internal failure (database path, uid, I/O
//! detail, remediation text) is logged here and answered with the bare
//! status phrase.

use axum::body::Body;
use axum::http::{header, HeaderValue, Response, StatusCode};

/// Everything that ends a request with an error status.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A malformed request (400); the reason is about the request and is sent.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// Nothing here by that name (404).
    #[error("not found")]
    NotFound,
    /// Not GET or HEAD (405, with `Allow`).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A Range outside the NAR (416, with `Content-Range: bytes */size`).
    #[error("unsatisfiable range (size {size})")]
    RangeNotSatisfiable {
        /// The NAR's size.
        size: u64,
    },
    /// Temporarily unable to answer correctly (503, with `Retry-After`);
    /// the detail is logged, not sent.
    #[error("unavailable: {detail}")]
    Unavailable {
        /// What is unavailable (logged).
        detail: String,
        /// Seconds the client should wait.
        retry_after: u32,
    },
    /// A failure of ours (500); the detail is logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NotFound => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ProxyError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The body an anonymous client gets: the status phrase, plus the
    /// reason for a malformed request.
    pub fn public_message(&self) -> String {
        let phrase = self.status().canonical_reason().unwrap_or("Error");
        match self {
            ProxyError::BadRequest(reason) => format!("{phrase}: {reason}\n"),
            ProxyError::MethodNotAllowed => {
                format!("{phrase}: this cache is read-only: GET and HEAD only\n")
            }
            _ => format!("{phrase}\n"),
        }
    }

    /// The response; internal detail goes to the log only.
    pub fn into_response(self) -> Response<Body> {
        match &self {
            ProxyError::Internal(detail) => tracing::error!("500: {detail}"),
            ProxyError::Unavailable { detail, .. } => tracing::warn!("503: {detail}"),
            _ => {}
        }
        let mut r = Response::new(Body::from(self.public_message()));
        *r.status_mut() = self.status();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match self {
            ProxyError::MethodNotAllowed => {
                h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            ProxyError::RangeNotSatisfiable { size } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    h.insert(header::CONTENT_RANGE, v);
                }
            }
            ProxyError::Unavailable { retry_after, .. } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            _ => {}
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_detail_is_not_sent() {
        let e = ProxyError::Internal("database /nix/var/nix/db/db.sqlite: uid 996".into());
        assert_eq!(e.public_message(), "Internal Server Error\n");
        let e = ProxyError::Unavailable {
            detail: "signer down".into(),
            retry_after: 5,
        };
        assert_eq!(e.public_message(), "Service Unavailable\n");
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "5");
    }
}
