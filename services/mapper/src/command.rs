//! The external-program mapper: a long-running child process that answers
//! lookups as JSON lines (protocol in `docs/backends.md`, "External
//! programs"):
//!
//! ```text
//! → {"op":"lookup","hash":"<32 nix-base32 chars>","id":7}
//! ← {"id":7,"narinfo":"StorePath: …\n…","locators":["ipfs:…#…"]}
//! ← {"id":7,"found":false}
//! ```
//!
//! Requests are pipelined (answers may come in any order, matched by `id`).
//! A lookup not answered within the deadline is a miss. Lines longer than
//! [`MAX_LINE`] or not JSON are ignored; an answer must be a narinfo for the
//! asked path with a trusted signature, like every other source. The child
//! is restarted with exponential backoff when it exits; while it is down,
//! lookups miss at once.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ds_core::{Locator, NarInfo, PublicKey, StorePathHash};
use futures::future::BoxFuture;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use crate::mapper::{MapError, Mapper, Mapping, Scope};

/// Longest answer line read (a narinfo is at most 1 MiB, plus locators).
pub const MAX_LINE: usize = 2 << 20;
/// First restart delay; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest restart delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A child that ran this long resets the backoff.
const STABLE: Duration = Duration::from_secs(30);
/// Requests queued for the child, at most (more miss at once).
const QUEUE: usize = 256;

type Reply = Option<(String, Vec<String>)>;
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>;

#[derive(Deserialize)]
struct Answer {
    id: u64,
    #[serde(default)]
    found: Option<bool>,
    #[serde(default)]
    narinfo: Option<String>,
    #[serde(default)]
    locators: Vec<String>,
}

/// A [`Mapper`] backed by an external program (config `[[mappers]]`
/// `type = "command"`).
pub struct CommandMapper {
    name: String,
    keys: Vec<PublicKey>,
    next_id: AtomicU64,
    pending: Pending,
    requests: mpsc::Sender<String>,
    up: Arc<std::sync::atomic::AtomicBool>,
}

impl CommandMapper {
    /// Start `argv` (program first) and keep it running (restarts with
    /// backoff) as long as the returned mapper lives. Must be called inside
    /// a tokio runtime.
    pub fn start(argv: Vec<String>, keys: Vec<PublicKey>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let name = format!("command:{}", argv.first().cloned().unwrap_or_default());
        tokio::spawn(supervise(argv, rx, pending.clone(), up.clone()));
        CommandMapper {
            name,
            keys,
            next_id: AtomicU64::new(1),
            pending,
            requests: tx,
            up,
        }
    }

    /// Whether the child is running now.
    pub fn is_running(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Ask the program; `None` on a miss, a dead child or a bad answer.
    /// The caller bounds the time (the [`crate::Ordered`] deadline).
    pub async fn query(&self, hash: &StorePathHash) -> Option<Mapping> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().ok()?.insert(id, tx);
        // Removes the pending slot however this future ends (answer,
        // deadline drop): no leak of senders for unanswered ids.
        let _cleanup = Cleanup(self.pending.clone(), id);
        let line = serde_json::json!({"op": "lookup", "hash": hash.as_str(), "id": id}).to_string();
        if self.requests.try_send(line).is_err() {
            tracing::debug!(mapper = %self.name, "request queue full or child gone");
            return None;
        }
        let (text, locators) = rx.await.ok()??;
        let mut narinfo = match NarInfo::parse(&text) {
            Ok(n) => n,
            Err(e) => {
                tracing::info!(mapper = %self.name, %hash, "bad narinfo from the program: {e}");
                return None;
            }
        };
        if narinfo.store_path.hash() != hash {
            tracing::info!(mapper = %self.name, %hash, "answer is for another path");
            return None;
        }
        if !narinfo.is_trusted(&self.keys) {
            tracing::info!(mapper = %self.name, %hash, "answer has no trusted signature");
            return None;
        }
        narinfo.retain_trusted_sigs(&self.keys);
        let locators = locators
            .iter()
            .filter_map(|l| match Locator::parse(l) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::info!(mapper = %self.name, "locator ignored: {e}");
                    None
                }
            })
            .collect();
        Some(Mapping { narinfo, locators })
    }
}

struct Cleanup(Pending, u64);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(mut p) = self.0.lock() {
            p.remove(&self.1);
        }
    }
}

impl Mapper for CommandMapper {
    fn name(&self) -> &str {
        &self.name
    }

    fn lookup<'a>(
        &'a self,
        hash: &'a StorePathHash,
        _scope: Scope,
    ) -> BoxFuture<'a, Result<Option<Mapping>, MapError>> {
        Box::pin(async move { Ok(self.query(hash).await) })
    }
}

/// Read one line of at most `max` bytes; longer lines are consumed and
/// reported as `Some(None)`. `None` at end of file.
async fn read_line_bounded<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
) -> std::io::Result<Option<Option<Vec<u8>>>> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(if line.is_empty() && !too_long {
                None
            } else if too_long {
                Some(None)
            } else {
                Some(Some(line))
            });
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if !too_long {
            if line.len() + chunk.len() > max {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let n = done.unwrap_or(buf.len());
        r.consume(n);
        if done.is_some() {
            return Ok(Some(if too_long { None } else { Some(line) }));
        }
    }
}

/// Keep the child running; forward requests to its stdin and answers to
/// the waiting lookups. Ends when the mapper (the request sender) is dropped.
async fn supervise(
    argv: Vec<String>,
    mut requests: mpsc::Receiver<String>,
    pending: Pending,
    up: Arc<std::sync::atomic::AtomicBool>,
) {
    let Some((program, args)) = argv.split_first() else {
        tracing::error!("command mapper: empty command");
        return;
    };
    let mut backoff = MIN_BACKOFF;
    loop {
        let started = Instant::now();
        let child = tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn();
        match child {
            Ok(mut child) => {
                let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take())
                else {
                    tracing::error!(program, "command mapper: no pipes to the child");
                    return;
                };
                tracing::info!(program, pid = child.id(), "command mapper started");
                up.store(true, Ordering::Relaxed);
                let mut stdout = BufReader::new(stdout);
                let closed = loop {
                    tokio::select! {
                        req = requests.recv() => match req {
                            Some(mut line) => {
                                line.push('\n');
                                if let Err(e) = stdin.write_all(line.as_bytes()).await {
                                    tracing::warn!(program, "writing to the command mapper: {e}");
                                    break false;
                                }
                                let _ = stdin.flush().await;
                            }
                            None => break true,
                        },
                        line = read_line_bounded(&mut stdout, MAX_LINE) => match line {
                            Ok(Some(Some(l))) => deliver(program, &l, &pending),
                            Ok(Some(None)) => tracing::warn!(program, "command mapper: line longer than {MAX_LINE} bytes ignored"),
                            Ok(None) => break false,
                            Err(e) => {
                                tracing::warn!(program, "reading from the command mapper: {e}");
                                break false;
                            }
                        },
                    }
                };
                up.store(false, Ordering::Relaxed);
                // Whoever waits gets a miss now, not at their deadline.
                if let Ok(mut p) = pending.lock() {
                    p.clear();
                }
                let _ = child.start_kill();
                let status = child.wait().await;
                if closed {
                    return;
                }
                tracing::warn!(
                    program,
                    "command mapper exited ({status:?}); restarting in {backoff:?}"
                );
            }
            Err(e) => {
                tracing::error!(
                    program,
                    "cannot start the command mapper: {e}; retrying in {backoff:?}"
                )
            }
        }
        if started.elapsed() >= STABLE {
            backoff = MIN_BACKOFF;
        }
        // Requests arriving while down are dropped (their lookups miss).
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                r = requests.recv() => match r {
                    // A request while down is a miss at once.
                    Some(_) => if let Ok(mut p) = pending.lock() { p.clear() },
                    None => return,
                },
            }
        }
        if let Ok(mut p) = pending.lock() {
            p.clear();
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn deliver(program: &str, line: &[u8], pending: &Pending) {
    let answer: Answer = match serde_json::from_slice(line) {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(
                program,
                "command mapper: ignoring a line that is not an answer: {e}"
            );
            return;
        }
    };
    let Some(tx) = pending.lock().ok().and_then(|mut p| p.remove(&answer.id)) else {
        return;
    };
    let reply = match (answer.found, answer.narinfo) {
        (Some(false), _) | (_, None) => None,
        (_, Some(n)) => Some((n, answer.locators)),
    };
    let _ = tx.send(reply);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_lines() {
        let data: &[u8] = b"short\nxxxxxxxxxxxxxxxxxxxx\nok\ntail";
        let mut r = BufReader::with_capacity(4, data);
        assert_eq!(
            read_line_bounded(&mut r, 8).await.unwrap(),
            Some(Some(b"short".to_vec()))
        );
        assert_eq!(read_line_bounded(&mut r, 8).await.unwrap(), Some(None));
        assert_eq!(
            read_line_bounded(&mut r, 8).await.unwrap(),
            Some(Some(b"ok".to_vec()))
        );
        assert_eq!(
            read_line_bounded(&mut r, 8).await.unwrap(),
            Some(Some(b"tail".to_vec()))
        );
        assert_eq!(read_line_bounded(&mut r, 8).await.unwrap(), None);
    }
}
