//! Bounded blocking work for response bodies.
//!
//! Producing a local NAR (the store's pull-based streams, one short
//! `spawn_blocking` step per poll) and compressing it block, so they run on
//! Tokio's blocking pool, a step at a time. A step holds a permit of
//! [`WORK_PERMITS`] only while it runs, never while the client has not
//! taken the previous chunk: a client that stops reading
//! pins no thread and no permit, however many such clients there are. The
//! bound keeps body work from ever occupying the whole blocking pool (512
//! threads), which the store lookups behind every narinfo share.

use tokio::sync::Semaphore;

/// Blocking body work (a NAR chunk read, a compression step) running at
/// once, across all responses: well under Tokio's 512 blocking threads, and
/// enough to keep every core busy.
pub const WORK_PERMITS: usize = 64;

static WORK: Semaphore = Semaphore::const_new(WORK_PERMITS);

/// Run `f` on the blocking pool under a [`WORK_PERMITS`] permit. The permit
/// moves into the blocking task, so it is released when `f` returns even if
/// the caller (a response whose client went away) was dropped meanwhile.
pub async fn run<F, R>(f: F) -> std::io::Result<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let permit = WORK
        .acquire()
        .await
        .map_err(|_| std::io::Error::other("blocking work pool closed"))?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f()
    })
    .await
    .map_err(|e| std::io::Error::other(format!("blocking work failed: {e}")))
}

/// A permit for blocking work that runs elsewhere (a store stream's own
/// `spawn_blocking` step, see [`crate::body::bounded`]); `None` only if the
/// pool were closed, which it never is.
pub async fn acquire() -> Option<tokio::sync::SemaphorePermit<'static>> {
    WORK.acquire().await.ok()
}

/// Permits free right now (for tests and metrics).
pub fn available() -> usize {
    WORK.available_permits()
}
