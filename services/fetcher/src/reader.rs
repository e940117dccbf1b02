//! Copying a NAR (cached, or still downloading) into a caller's pipe.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use ds_runtime::service::BusyGuard;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

/// How a download is doing, published to its readers.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    /// Bytes written to the partial file so far (from byte 0).
    pub written: u64,
    /// Bumped when the download starts over from byte 0 (the bytes so far
    /// failed verification): a reader that passed any on must give up.
    pub generation: u64,
    /// Running, verified, or failed (with the reason).
    pub status: Status,
}

/// The state of a download.
#[derive(Debug, Clone)]
pub(crate) enum Status {
    Running,
    Done,
    Failed(Arc<str>),
}

impl Progress {
    /// A NAR that is complete and verified.
    pub fn done(size: u64) -> Progress {
        Progress {
            written: size,
            generation: 0,
            status: Status::Done,
        }
    }

    /// Bytes a reader may pass on. The last byte is withheld until the
    /// whole NAR verified: a reader never sees a full-length bad NAR, only a
    /// short one, which it must treat as failed.
    pub fn available(&self, nar_size: u64) -> u64 {
        match self.status {
            Status::Done => nar_size,
            _ => self.written.min(nar_size.saturating_sub(1)),
        }
    }
}

const CHUNK: usize = 256 * 1024;

/// Copy `file` from `offset` to `pipe` as `progress` allows, then close the
/// pipe: at NarSize when the NAR verified, early when it failed. A reader
/// that goes away (EPIPE) ends this task only; the download goes on.
///
/// With `verified_only`, nothing is copied before the whole NAR verified:
/// a failed source is then invisible to this reader, since the download
/// starts over from other sources before anything was passed on.
pub(crate) async fn serve(
    file: Arc<std::fs::File>,
    nar_size: u64,
    offset: u64,
    verified_only: bool,
    mut progress: watch::Receiver<Progress>,
    mut pipe: tokio::net::unix::pipe::Sender,
    _busy: BusyGuard,
) {
    let mut pos = offset;
    let mut buf = vec![0u8; CHUNK];
    let mut generation = progress.borrow().generation;
    loop {
        let (avail, status, current) = {
            let p = progress.borrow_and_update();
            let avail = match (&p.status, verified_only) {
                (Status::Done, _) => nar_size,
                (_, true) => pos,
                _ => p.available(nar_size),
            };
            (avail, p.status.clone(), p.generation)
        };
        if let Status::Failed(_) = status {
            return;
        }
        if current != generation {
            // The bytes this reader passed on were of a failed attempt.
            if pos > offset {
                return;
            }
            // It passed nothing on yet: it follows the new attempt (and
            // must not take that attempt's bytes for the failed one's).
            generation = current;
        }
        while pos < avail {
            let n = ((avail - pos) as usize).min(CHUNK);
            let f = file.clone();
            let read = tokio::task::spawn_blocking(move || {
                let r = f.read_at(&mut buf[..n], pos);
                (r, buf)
            })
            .await;
            let (result, b) = match read {
                Ok(x) => x,
                Err(_) => return,
            };
            buf = b;
            let got = match result {
                Ok(0) | Err(_) => {
                    tracing::warn!(
                        pos,
                        "NAR file shorter than its progress says; closing the reader"
                    );
                    return;
                }
                Ok(got) => got,
            };
            if pipe.write_all(&buf[..got]).await.is_err() {
                // The reader went away: nothing more to do for it.
                return;
            }
            pos += got as u64;
        }
        if matches!(status, Status::Done) && pos >= nar_size {
            return;
        }
        if progress.changed().await.is_err() {
            // The download ended; its last word is in the channel. Only
            // a verified NAR is finished off.
            let p = progress.borrow().clone();
            if !matches!(p.status, Status::Done) || pos >= nar_size {
                return;
            }
        }
    }
}
